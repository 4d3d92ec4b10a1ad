//! `storectl ls`: list images.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::json;
use storectl_storage::{Image, Layer, Store};

use crate::outln;
use crate::output::{self, escape_controls};
use crate::util::{created_ago, human_size, now_secs, open_store_scanned, prefix};

/// How `ls` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Columns sized to their content, as `podman images`.
    Table,
    /// A JSON array (as `--json`).
    Json,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print a JSON array instead of a table (same as `--format json`).
    #[arg(long)]
    json: bool,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    /// Also list each image's layers.
    #[arg(long)]
    layers: bool,
    /// Show full image and layer ids.
    #[arg(long)]
    no_trunc: bool,
    /// Print only image ids, each once.
    #[arg(short, long, conflicts_with_all = ["json", "layers"])]
    quiet: bool,
}

/// What `ls` shows, read from a store or received from a daemon.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// Newest first.
    pub images: Vec<Listed>,
    /// Names a local and a shared image both have (the local one's).
    pub shadowed: BTreeSet<String>,
    /// The store is a reader of a share (the SOURCE column).
    pub reader: bool,
}

/// One image with its size and layers (base first).
#[derive(Debug, Clone)]
pub struct Listed {
    pub image: Image,
    pub size: u64,
    pub layers: Vec<Layer>,
}

/// The store's images, newest first, with their layers.
pub fn listing(store: &Store) -> anyhow::Result<Listing> {
    listing_with(store, true, true)
}

/// [`listing`], with each image's layers only when `with_layers` (a table
/// without `--layers` does not show them: 30,000 records not copied on a
/// reader of a 10,000-image share), and its big-data names, sizes and
/// digests only when `big_data` (`ls` shows none of them).
fn listing_with(store: &Store, with_layers: bool, big_data: bool) -> anyhow::Result<Listing> {
    // One look at the state: each image's chain is walked once, for its
    // layers and its size.
    let (images, shadowed) = store.with_state(|st| {
        let mut sorted: Vec<&Image> = st.images.values().collect();
        sorted.sort_by(|a, b| b.created.cmp(&a.created).then(a.id.cmp(&b.id)));
        let images = sorted
            .into_iter()
            .filter_map(|image| {
                let top = image.layer.as_deref().unwrap_or("");
                // One image without its layers (a reader's local image on a
                // shared layer that is not there) does not stop the listing.
                let Some(chain) = st.chain(top) else {
                    tracing::warn!(
                        "not listing image {}: layer {} of its chain is not present",
                        image.id,
                        st.missing_ancestor(top).unwrap_or(top)
                    );
                    return None;
                };
                let size = chain.iter().filter_map(|l| l.diff_size).sum();
                let layers = match with_layers {
                    true => chain.into_iter().rev().cloned().collect(),
                    false => Vec::new(),
                };
                let image = match big_data {
                    true => image.clone(),
                    false => Image {
                        id: image.id.clone(),
                        digest: image.digest.clone(),
                        names: image.names.clone(),
                        layer: image.layer.clone(),
                        created: image.created.clone(),
                        big_data_names: Vec::new(),
                        big_data_sizes: Default::default(),
                        big_data_digests: Default::default(),
                        shared: image.shared,
                    },
                };
                Some(Listed {
                    image,
                    size,
                    layers,
                })
            })
            .collect::<Vec<Listed>>();
        (images, st.shadowed_names())
    });
    Ok(Listing {
        images,
        shadowed,
        reader: store.layout().role() == storectl_storage::Role::Reader,
    })
}

/// `docker.io/library/busybox:latest` → (`docker.io/library/busybox`, `latest`).
fn split_name(name: &str) -> (&str, &str) {
    let name = name.split('@').next().unwrap_or(name);
    match name.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (name, "<none>"),
    }
}

/// What `ls --json` prints.
pub fn images_json(listing: &Listing, with_layers: bool) -> anyhow::Result<serde_json::Value> {
    let mut list = Vec::new();
    let shadowed = &listing.shadowed;
    for Listed {
        image,
        size,
        layers,
    } in &listing.images
    {
        let mut v = json!({
            "id": image.id,
            "names": image.names,
            "digest": image.digest,
            "created": image.created,
            "size": size,
            "layers": layers.iter().map(|l| l.id.as_str()).collect::<Vec<_>>(),
            "shared": image.shared,
        });
        if image.shared {
            // Names a local image of this reader also has: they resolve to it.
            let names: Vec<&String> = image
                .names
                .iter()
                .filter(|n| shadowed.contains(*n))
                .collect();
            v["shadowed_names"] = json!(names);
        }
        if with_layers {
            v["layer_details"] = serde_json::to_value(layers)?;
        }
        list.push(v);
    }
    Ok(serde_json::Value::Array(list))
}

/// One line of a table, cell by cell.
type Row = Vec<String>;

/// Rows of cells as columns sized to their content, two spaces apart (the
/// last column unpadded). Cells are escaped first, so widths are what a
/// terminal shows.
pub fn table(rows: &[Vec<String>]) -> Vec<String> {
    table_of(rows.iter())
}

/// [`table`] of borrowed rows (a big listing is not copied to be laid out).
fn table_of<'a>(rows: impl Iterator<Item = &'a Vec<String>> + Clone) -> Vec<String> {
    // Each cell escaped once (borrowed when it needs nothing) with its width.
    let cells: Vec<Vec<(std::borrow::Cow<'a, str>, usize)>> = rows
        .map(|r| {
            r.iter()
                .map(|c| {
                    let c = escape_controls(c);
                    let w = c.chars().count();
                    (c, w)
                })
                .collect()
        })
        .collect();
    let cols = cells.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|i| {
            cells
                .iter()
                .filter_map(|r| r.get(i))
                .map(|(_, w)| *w)
                .max()
                .unwrap_or(0)
        })
        .collect();
    cells
        .iter()
        .map(|r| {
            let mut line = String::with_capacity(widths.iter().sum::<usize>() + 2 * cols);
            for (i, (cell, w)) in r.iter().enumerate() {
                line.push_str(cell);
                if i + 1 != r.len() {
                    line.extend(std::iter::repeat_n(' ', widths[i] - w + 2));
                }
            }
            line
        })
        .collect()
}

/// An id as `ls` shows it: 12 hex digits, or `sha256:` and all of them.
fn show_id(id: &str, no_trunc: bool) -> String {
    if no_trunc {
        format!("sha256:{id}")
    } else {
        prefix(id, 12).to_string()
    }
}

/// A digest (`sha256:…`) as `ls --layers` shows it.
fn show_digest(digest: Option<&str>, no_trunc: bool) -> String {
    match digest {
        None => "-".into(),
        Some(d) if no_trunc => d.to_string(),
        Some(d) => prefix(d.strip_prefix("sha256:").unwrap_or(d), 12).to_string(),
    }
}

pub fn run(root: &Path, args: Args) -> anyhow::Result<()> {
    let (store, refresher) = open_store_scanned(root)?;
    let json = args.json || args.format == Format::Json;
    let listed = listing_with(&store, json || args.layers, false)?;
    render(&listed, &args)?;
    // The process ends here: freeing every record of a big share one by one
    // (tens of thousands on a reader) would only delay the exit.
    std::mem::forget((listed, refresher, store));
    Ok(())
}

/// `ls` through a daemon.
pub fn run_remote(c: &mut crate::daemon::client::Client, args: Args) -> anyhow::Result<()> {
    let req = crate::daemon::pb::storectl::v1::ListRequest {};
    let resp = c
        .runtime
        .block_on(c.images.list(req))
        .map_err(|s| c.status(s))?
        .into_inner();
    render(&crate::daemon::convert::listing_from_pb(&resp), &args)
}

/// Print `listing` as `args` ask.
pub fn render(listing: &Listing, args: &Args) -> anyhow::Result<()> {
    let show_source = listing.reader;
    if args.json || args.format == Format::Json {
        let list = images_json(listing, args.layers)?;
        output::json(&list, true)?;
        return Ok(());
    }
    if args.quiet {
        let mut seen = std::collections::HashSet::new();
        for Listed { image, .. } in &listing.images {
            if seen.insert(image.id.as_str()) {
                outln!("{}", show_id(&image.id, args.no_trunc));
            }
        }
        return Ok(());
    }
    let now = now_secs();
    let mut header: Vec<String> = ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"]
        .map(String::from)
        .into();
    if show_source {
        header.push("SOURCE".into());
    }
    // Image rows, each followed (with --layers) by its layers' lines.
    let mut blocks: Vec<(Vec<Row>, Vec<Row>)> = Vec::new();
    // A name a local and a shared image both have is the local one's.
    let shadowed = &listing.shadowed;
    for Listed {
        image,
        size,
        layers: image_layers,
    } in &listing.images
    {
        let names: Vec<(&str, &str, Option<&String>)> = if image.names.is_empty() {
            vec![("<none>", "<none>", None)]
        } else {
            image
                .names
                .iter()
                .map(|n| {
                    let (repo, tag) = split_name(n);
                    (repo, tag, Some(n))
                })
                .collect()
        };
        let rows = names
            .into_iter()
            .map(|(repo, tag, name)| {
                let mut row = vec![
                    repo.to_string(),
                    tag.to_string(),
                    show_id(&image.id, args.no_trunc),
                    created_ago(image.created.as_deref(), now),
                    human_size(*size),
                ];
                if show_source {
                    row.push(match image.shared {
                        true if name.is_some_and(|n| shadowed.contains(n)) => {
                            "shared (name shadowed by local)".into()
                        }
                        true => "shared".into(),
                        false => "local".into(),
                    });
                }
                row
            })
            .collect();
        let mut layers = Vec::new();
        if args.layers {
            for layer in image_layers {
                let mut row = vec![
                    "  layer".to_string(),
                    show_digest(Some(&layer.id), args.no_trunc),
                    human_size(layer.diff_size.unwrap_or(0)),
                    "diffID".into(),
                    show_digest(layer.diff_digest.as_deref(), args.no_trunc),
                ];
                // The blob it came in, when that was not the tar itself.
                if layer.compressed_diff_digest.is_some()
                    && layer.compressed_diff_digest != layer.diff_digest
                {
                    row.push("blob".into());
                    row.push(show_digest(
                        layer.compressed_diff_digest.as_deref(),
                        args.no_trunc,
                    ));
                    row.push(format!(
                        "{} compressed",
                        human_size(layer.compressed_size.unwrap_or(0))
                    ));
                }
                layers.push(row);
            }
        }
        blocks.push((rows, layers));
    }
    let image_lines =
        table_of(std::iter::once(&header).chain(blocks.iter().flat_map(|(r, _)| r.iter())));
    let mut layer_lines = table_of(blocks.iter().flat_map(|(_, l)| l.iter())).into_iter();
    let mut image_lines = image_lines.into_iter();
    outln!("{}", image_lines.next().unwrap_or_default());
    for (rows, layers) in &blocks {
        for _ in rows {
            outln!("{}", image_lines.next().unwrap_or_default());
        }
        for _ in layers {
            outln!("{}", layer_lines.next().unwrap_or_default());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{split_name, table};

    #[test]
    fn columns_fit_their_content() {
        let rows = vec![
            vec!["REPOSITORY".to_string(), "TAG".into(), "SIZE".into()],
            vec!["a".to_string(), "longer-tag".into(), "1 B".into()],
            vec!["é\x1b".to_string(), "x".into(), "2 B".into()],
        ];
        assert_eq!(
            table(&rows),
            vec![
                "REPOSITORY  TAG         SIZE",
                "a           longer-tag  1 B",
                "é\\x1b       x           2 B",
            ]
        );
    }

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
