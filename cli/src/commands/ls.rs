//! `storectl ls`: list images.

use std::path::Path;

use serde_json::json;
use storectl_storage::{Image, Store};

use crate::util::{human_size, open_store_scanned, out, short_time};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print a JSON array instead of a table.
    #[arg(long)]
    json: bool,
    /// Also list each image's layers.
    #[arg(long)]
    layers: bool,
}

/// `docker.io/library/busybox:latest` → (`docker.io/library/busybox`, `latest`).
fn split_name(name: &str) -> (&str, &str) {
    let name = name.split('@').next().unwrap_or(name);
    match name.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (name, "<none>"),
    }
}

/// The store's images, newest first.
fn sorted_images(store: &Store) -> Vec<Image> {
    let mut images = store.images();
    images.sort_by(|a, b| b.created.cmp(&a.created).then(a.id.cmp(&b.id)));
    images
}

/// What `ls --json` prints (also `GET /images` of `storectl serve`).
pub fn images_json(store: &Store, with_layers: bool) -> anyhow::Result<serde_json::Value> {
    let mut list = Vec::new();
    for image in &sorted_images(store) {
        let layers = store.image_layers(image)?;
        let mut v = json!({
            "id": image.id,
            "names": image.names,
            "digest": image.digest,
            "created": image.created,
            "size": store.image_size(image),
            "layers": layers.iter().map(|l| l.id.as_str()).collect::<Vec<_>>(),
            "shared": image.shared,
        });
        if with_layers {
            v["layer_details"] = serde_json::to_value(&layers)?;
        }
        list.push(v);
    }
    Ok(serde_json::Value::Array(list))
}

pub fn run(root: &Path, args: Args) -> anyhow::Result<()> {
    let (store, refresher) = open_store_scanned(root)?;
    let show_source = refresher.is_some();
    if args.json {
        let list = images_json(&store, args.layers)?;
        out(serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    let images = sorted_images(&store);
    let source = |shared: bool| match (show_source, shared) {
        (false, _) => String::new(),
        (true, true) => "  shared".to_string(),
        (true, false) => "  local".to_string(),
    };
    out(format!(
        "{:<40} {:<16} {:<12} {:<19} {:>9}{}",
        "REPOSITORY",
        "TAG",
        "IMAGE ID",
        "CREATED",
        "SIZE",
        if show_source { "  SOURCE" } else { "" }
    ));
    for image in &images {
        let names: Vec<(&str, &str)> = if image.names.is_empty() {
            vec![("<none>", "<none>")]
        } else {
            image.names.iter().map(|n| split_name(n)).collect()
        };
        for (repo, tag) in names {
            out(format!(
                "{:<40} {:<16} {:<12} {:<19} {:>9}{}",
                repo,
                tag,
                &image.id[..12],
                short_time(image.created.as_deref()),
                human_size(store.image_size(image)),
                source(image.shared)
            ));
        }
        if args.layers {
            for layer in store.image_layers(image)? {
                out(format!(
                    "  layer {}  {:>9}  {}",
                    &layer.id[..12],
                    human_size(layer.diff_size.unwrap_or(0)),
                    layer.compressed_diff_digest.as_deref().unwrap_or("-")
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::split_name;

    #[test]
    fn names_split_at_the_tag() {
        assert_eq!(
            split_name("docker.io/library/a:1"),
            ("docker.io/library/a", "1")
        );
        assert_eq!(
            split_name("localhost:5000/a"),
            ("localhost:5000/a", "<none>")
        );
        assert_eq!(
            split_name("localhost:5000/a:v2"),
            ("localhost:5000/a", "v2")
        );
    }
}
