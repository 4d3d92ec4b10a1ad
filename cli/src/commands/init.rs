//! `storectl init`: create a store root, optionally wired to a share.

use std::path::{Path, PathBuf};

use anyhow::Context;
use storectl_storage::{Role, RootConfig};

use crate::outln;
use crate::util::open_store;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum RoleArg {
    Writer,
    Reader,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The share directory (an NFS mount, …) to publish to or read from.
    #[arg(long, requires = "role")]
    shared: Option<PathBuf>,
    /// This host's role on the share.
    #[arg(long, value_enum, requires = "shared")]
    role: Option<RoleArg>,
    /// How often a reader checks the share's generation, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    refresh_interval_ms: u64,
    /// How often a reader rescans the share even when nothing changed, in seconds.
    #[arg(long, default_value_t = 60)]
    full_rescan_secs: u64,
}

pub fn run(root: &Path, args: Args) -> anyhow::Result<()> {
    let config = RootConfig {
        refresh_interval_ms: args.refresh_interval_ms,
        full_rescan_secs: args.full_rescan_secs,
        ..RootConfig::default()
    };
    match (args.shared, args.role) {
        (Some(share), Some(role)) => {
            let role = match role {
                RoleArg::Writer => Role::Writer,
                RoleArg::Reader => Role::Reader,
            };
            let config =
                storectl_remote::share::init(root, &share, role, config).with_context(|| {
                    format!(
                        "setting up {} as {role} of {}",
                        root.display(),
                        share.display()
                    )
                })?;
            open_store(root)?;
            outln!(
                "{} is a {} of {}",
                root.display(),
                config.role,
                config.shared.as_deref().unwrap_or(&share).display()
            );
        }
        _ => {
            config.save(root)?;
            open_store(root)?;
            outln!("{} is a local store", root.display());
        }
    }
    Ok(())
}
