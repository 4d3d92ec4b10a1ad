//! `storectl create`, `storectl containers`, `storectl rm`: containers —
//! a writable layer over an image, always in this host's own root.

use std::path::Path;

use serde_json::json;
use storectl_storage::{Container, ContainerOptions, Store};

use crate::outln;
use crate::output::{self, Reported};
use crate::util::{created_ago, human_size, now_secs, open_store_scanned, prefix};

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// Image name, id or unique id prefix.
    image: String,
    /// The container's name (unique among this store's containers).
    #[arg(long)]
    name: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Print a JSON array instead of a table.
    #[arg(long)]
    json: bool,
    /// Show full ids.
    #[arg(long)]
    no_trunc: bool,
}

#[derive(Debug, clap::Args)]
pub struct RmArgs {
    /// Container names, ids or unique id prefixes.
    #[arg(required = true)]
    containers: Vec<String>,
    /// Unmount a mounted container before removing it.
    #[arg(short, long)]
    force: bool,
}

pub fn run_create(root: &Path, args: CreateArgs) -> anyhow::Result<()> {
    // On a reader, scan first: the image may be shared.
    let (store, _refresher) = open_store_scanned(root)?;
    let opts = ContainerOptions {
        name: args.name,
        ..ContainerOptions::default()
    };
    let c = store.create_container(&args.image, &opts)?;
    outln!("{}", c.id);
    Ok(())
}

/// One container as `containers --json` prints it (also the library's
/// figures: CRI's `writable_layer` bytes and inodes).
pub fn container_json(store: &Store, c: &Container) -> anyhow::Result<serde_json::Value> {
    let usage = store.container_usage(c)?;
    let image_names = store
        .resolve_image(&c.image)
        .map(|i| i.names)
        .unwrap_or_default();
    Ok(json!({
        "id": c.id,
        "names": c.names,
        "image": c.image,
        "image_names": image_names,
        "image_present": store.resolve_image(&c.image).is_ok(),
        "layer": c.layer,
        "created": c.created,
        "mounted": store.container_mounted(c),
        "mount_path": store.container_mount_path(c),
        "writable_layer": {"used_bytes": usage.bytes, "inodes_used": usage.inodes},
        // A shared image the writer removed: when its layers go.
        "image_layers_deleted_after": store
            .removals()
            .images
            .get(&c.image)
            .map(|r| r.delete_after.clone()),
    }))
}

pub fn run_list(root: &Path, args: ListArgs) -> anyhow::Result<()> {
    let (store, _refresher) = open_store_scanned(root)?;
    let mut all = store.containers()?;
    all.sort_by(|a, b| b.created.cmp(&a.created).then(a.id.cmp(&b.id)));
    if args.json {
        let list: anyhow::Result<Vec<_>> = all.iter().map(|c| container_json(&store, c)).collect();
        output::json(&list?, true)?;
        return Ok(());
    }
    let now = now_secs();
    let id = |s: &str| {
        if args.no_trunc {
            s.to_string()
        } else {
            prefix(s, 12).to_string()
        }
    };
    let mut rows = vec![[
        "CONTAINER ID",
        "IMAGE",
        "CREATED",
        "MOUNTED",
        "SIZE",
        "NAMES",
    ]
    .map(String::from)
    .to_vec()];
    for c in &all {
        let image = match store.resolve_image(&c.image) {
            Ok(i) => i.names.first().cloned().unwrap_or_else(|| id(&i.id)),
            Err(_) => format!("{} (removed)", id(&c.image)),
        };
        let size = store.container_usage(c)?.bytes;
        rows.push(vec![
            id(&c.id),
            image,
            created_ago(Some(&c.created), now),
            if store.container_mounted(c) {
                "yes"
            } else {
                "no"
            }
            .into(),
            human_size(size),
            c.names.join(","),
        ]);
    }
    for line in super::ls::table(&rows) {
        outln!("{}", line);
    }
    Ok(())
}

pub fn run_rm(root: &Path, args: RmArgs) -> anyhow::Result<()> {
    let (store, _refresher) = open_store_scanned(root)?;
    let mut failed = 0;
    for name in &args.containers {
        match store.remove_container(name, args.force) {
            Ok(c) => outln!("{}", c.id),
            Err(e) => {
                failed += 1;
                output::error_line(&crate::one_line(&e.into()));
            }
        }
    }
    if failed > 0 {
        return Err(Reported { failed }.into());
    }
    Ok(())
}
