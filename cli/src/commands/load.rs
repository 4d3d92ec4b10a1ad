//! `storectl load`: import an OCI layout or a docker-archive.

use std::path::Path;

use storectl_storage::LoadOptions;

use crate::outln;
use crate::progress::ProgressArgs;
use crate::util::open_store_scanned;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// An OCI image layout directory or a docker-archive / OCI-archive tarball
    /// (plain, gzip or zstd), or `-` for a tarball on standard input
    /// (`docker save IMAGE | storectl load -`); `PATH:TAG` (or `-:TAG`) picks
    /// one image of several.
    #[arg(allow_hyphen_values = true)]
    path: String,
    /// Add the name NAME[:TAG] to the loaded image, whatever names the archive
    /// gives it (it does not pick an image: use PATH:TAG for that).
    #[arg(long)]
    name: Option<String>,
    /// Refuse a layer whose uncompressed tar is larger (e.g. 64M, 2G).
    #[arg(long, value_parser = parse_size)]
    max_layer_size: Option<u64>,
    /// Layers imported at once.
    #[arg(long, default_value_t = 3)]
    jobs: usize,
    #[command(flatten)]
    progress: ProgressArgs,
}

/// `123`, `64K`, `64M`, `2G`, `1T` (binary units) → bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let mult: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("unknown size unit in {s:?}")),
            };
            (&s[..i], mult)
        }
        _ => (s, 1),
    };
    let n: u64 = num.parse().map_err(|_| format!("not a size: {s:?}"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("size too large: {s:?}"))
}

pub fn run(root: &Path, args: Args) -> anyhow::Result<()> {
    // On a reader, scan first: layers on the share are not imported again.
    let (store, _refresher) = open_store_scanned(root)?;
    let opts = LoadOptions {
        name: args.name,
        max_layer_size: args.max_layer_size,
        jobs: args.jobs,
        ..LoadOptions::default()
    };
    let renderer = args.progress.renderer();
    let image = store.load(&args.path, &opts, &renderer);
    renderer.finish(image.as_ref().ok().map(|_| "Loaded"));
    let image = image?;
    if args.progress.print_result() {
        outln!("{}", image.id);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("10"), Ok(10));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert!(parse_size("x").is_err());
        assert!(parse_size("5Q").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
