//! One file per verb.

use std::path::Path;

use clap::Subcommand;

mod info;
mod init;
mod inspect;
mod load;
mod ls;
mod mount;
mod pull;
mod push;
mod refresh;
mod registry_args;
mod rmi;
mod save;
mod serve;
mod tag;
mod verify;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List images.
    Ls(ls::Args),
    /// Show an image's metadata, layers and config as JSON.
    Inspect(inspect::Args),
    /// Load an image from an OCI layout directory or a docker-archive tarball.
    Load(load::Args),
    /// Mount an image read-only, nodev, nosuid and print the mount path.
    Mount(mount::Args),
    /// Unmount an image mounted with `storectl mount`.
    Umount(mount::UmountArgs),
    /// Give an image another name.
    Tag(tag::Args),
    /// Remove an image and the layers no other image needs.
    Rmi(rmi::Args),
    /// Re-hash layers from their files and tar-split metadata.
    Verify(verify::Args),
    /// Create a store root, optionally as the writer or a reader of a share.
    Init(init::Args),
    /// Show the store's role, share, intervals and counts.
    Info(info::Args),
    /// Pull an image from a registry.
    Pull(pull::Args),
    /// Push an image to a registry.
    Push(push::Args),
    /// Save an image as an OCI layout or a docker-archive.
    Save(save::Args),
    /// Bring a reader up to date with the share (`--watch` to keep following it).
    Refresh(refresh::Args),
    /// Serve Prometheus metrics (and a small HTTP API) until interrupted.
    Serve(serve::Args),
}

impl Command {
    pub fn run(self, root: &Path) -> anyhow::Result<()> {
        match self {
            Command::Ls(a) => ls::run(root, a),
            Command::Inspect(a) => inspect::run(root, a),
            Command::Load(a) => load::run(root, a),
            Command::Mount(a) => mount::run(root, a),
            Command::Umount(a) => mount::run_umount(root, a),
            Command::Tag(a) => tag::run(root, a),
            Command::Rmi(a) => rmi::run(root, a),
            Command::Verify(a) => verify::run(root, a),
            Command::Init(a) => init::run(root, a),
            Command::Info(a) => info::run(root, a),
            Command::Refresh(a) => refresh::run(root, a),
            Command::Pull(a) => pull::run(root, a),
            Command::Push(a) => push::run(root, a),
            Command::Save(a) => save::run(root, a),
            Command::Serve(a) => serve::run(root, a),
        }
    }
}
