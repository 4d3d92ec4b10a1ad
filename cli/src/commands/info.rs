//! `storectl info`: the store's role, share, intervals and counts.

use std::path::Path;

use serde_json::json;
use storectl_remote::ScanSource;

use crate::outln;
use crate::util::open_store_scanned;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(root: &Path, args: Args) -> anyhow::Result<()> {
    let (store, refresher) = open_store_scanned(root)?;
    let layout = store.layout();
    let cfg = &layout.config;
    let (images, layers) = store.with_state(|st| {
        let shared_images = st.images.shared_keys().count();
        let shared_layers = st.layers.shared_keys().count();
        (
            (st.images.len() - shared_images, shared_images),
            (st.layers.len() - shared_layers, shared_layers),
        )
    });
    let generation = storectl_storage::fsutil::read_small_file(&layout.generation(), 4096)
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let pending = refresher.as_ref().map(|r| r.stats().share.pending);
    // What this command's scan read: the reader's saved view, the share's
    // index, or its directories (and whether it meant to read less).
    let scan = refresher.as_ref().map(|r| {
        let stats = r.stats();
        let source = match stats.last_source {
            Some(ScanSource::View) => "view",
            Some(ScanSource::Index) => "index",
            Some(ScanSource::Directories) => "directories",
            None => "none",
        };
        (source, stats.fallbacks)
    });
    let v = json!({
        "root": store.root(),
        "role": cfg.role.to_string(),
        "shared": cfg.shared,
        "refresh_interval_ms": cfg.refresh_interval_ms,
        "full_rescan_secs": cfg.full_rescan_secs,
        "overlay_xattrs": cfg.overlay_xattrs,
        "generation": generation,
        "images": {"local": images.0, "shared": images.1},
        "layers": {"local": layers.0, "shared": layers.1},
        "pending_on_share": pending,
        "share_scan": scan.map(|(source, fallbacks)| json!({"source": source, "fallbacks": fallbacks})),
    });
    if args.json {
        crate::output::json(&v, true)?;
        return Ok(());
    }
    outln!("root:              {}", store.root().display());
    outln!("role:              {}", cfg.role);
    outln!(
        "overlay xattrs:    {}{}",
        cfg.overlay_xattrs,
        match cfg.overlay_xattrs {
            storectl_storage::XattrMode::Trusted => "",
            storectl_storage::XattrMode::User => " (user.overlay.*, userxattr mounts)",
        }
    );
    if let Some(share) = &cfg.shared {
        outln!("shared:            {}", share.display());
        outln!("refresh interval:  {} ms", cfg.refresh_interval_ms);
        outln!("full rescan:       {} s", cfg.full_rescan_secs);
    }
    outln!(
        "generation:        {}",
        if generation.is_empty() {
            "-"
        } else {
            &generation
        }
    );
    outln!("images:            {} local, {} shared", images.0, images.1);
    outln!("layers:            {} local, {} shared", layers.0, layers.1);
    if let Some(p) = pending {
        outln!("pending on share:  {p}");
    }
    if let Some((source, fallbacks)) = scan {
        let read = match source {
            "view" => "this reader's saved view (generation unchanged)",
            "index" => "the share's index",
            "directories" => "the share's directories",
            other => other,
        };
        let fell = if fallbacks > 0 {
            " (the index or view did not hold up)"
        } else {
            ""
        };
        outln!("share read from:   {read}{fell}");
    }
    Ok(())
}
