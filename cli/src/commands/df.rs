//! `storectl df`: disk usage of images and containers, as a CRI image
//! service reports it (`ImageFsInfo`, `ContainerStats.writable_layer`) and
//! per image shared vs unique size (as `podman system df -v`).

use std::path::Path;

use serde_json::json;
use storectl_storage::{DiskUsage, FsUsage};

use crate::outln;
use crate::util::{human_size, open_store_scanned, prefix};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print JSON (CRI field names).
    #[arg(long)]
    json: bool,
    /// Also list each image and container.
    #[arg(short, long)]
    verbose: bool,
}

fn fs_json(f: &FsUsage) -> serde_json::Value {
    json!({
        "timestamp": f.timestamp,
        "fs_id": {"mountpoint": f.mountpoint},
        "path": f.path,
        "used_bytes": f.used_bytes,
        "inodes_used": f.inodes_used,
        "source": f.source,
    })
}

/// What `df --json` prints.
pub fn df_json(du: &DiskUsage) -> serde_json::Value {
    json!({
        "image_filesystems": du.image_filesystems.iter().map(fs_json).collect::<Vec<_>>(),
        "container_filesystems": du.container_filesystems.iter().map(fs_json).collect::<Vec<_>>(),
        "images": du.images.iter().map(|i| json!({
            "id": i.id,
            "names": i.names,
            "size": i.size,
            "shared_size": i.shared_size,
            "unique_size": i.unique_size,
            "containers": i.containers,
            "shared": i.shared,
        })).collect::<Vec<_>>(),
        "containers": du.containers.iter().map(|c| json!({
            "id": c.id,
            "names": c.names,
            "image": c.image,
            "writable_layer": {
                "used_bytes": c.writable_layer.bytes,
                "inodes_used": c.writable_layer.inodes,
            },
        })).collect::<Vec<_>>(),
    })
}

pub fn run(root: &Path, args: Args) -> anyhow::Result<()> {
    let (store, _refresher) = open_store_scanned(root)?;
    let du = store.disk_usage()?;
    if args.json {
        crate::output::json(&df_json(&du), true)?;
        return Ok(());
    }
    let mut rows = vec![["TYPE", "WHERE", "SIZE", "INODES"]
        .map(String::from)
        .to_vec()];
    for (kind, list) in [
        ("images", &du.image_filesystems),
        ("containers", &du.container_filesystems),
    ] {
        for f in list {
            rows.push(vec![
                format!("{kind} ({})", f.source),
                f.path.display().to_string(),
                human_size(f.used_bytes),
                f.inodes_used.to_string(),
            ]);
        }
    }
    for line in super::ls::table(&rows) {
        outln!("{}", line);
    }
    if !args.verbose {
        return Ok(());
    }
    outln!("");
    let mut rows = vec![[
        "IMAGE ID",
        "NAME",
        "SIZE",
        "SHARED SIZE",
        "UNIQUE SIZE",
        "CONTAINERS",
    ]
    .map(String::from)
    .to_vec()];
    for i in &du.images {
        rows.push(vec![
            prefix(&i.id, 12).to_string(),
            i.names.first().cloned().unwrap_or_else(|| "<none>".into()),
            human_size(i.size),
            human_size(i.shared_size),
            human_size(i.unique_size),
            i.containers.to_string(),
        ]);
    }
    for line in super::ls::table(&rows) {
        outln!("{}", line);
    }
    outln!("");
    let mut rows = vec![["CONTAINER ID", "NAMES", "SIZE", "INODES"]
        .map(String::from)
        .to_vec()];
    for c in &du.containers {
        rows.push(vec![
            prefix(&c.id, 12).to_string(),
            c.names.join(","),
            human_size(c.writable_layer.bytes),
            c.writable_layer.inodes.to_string(),
        ]);
    }
    for line in super::ls::table(&rows) {
        outln!("{}", line);
    }
    Ok(())
}
