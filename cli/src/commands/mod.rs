//! One file per verb.

use std::path::Path;

use clap::Subcommand;

pub(crate) mod bundle;
pub(crate) mod containers;
pub(crate) mod df;
pub(crate) mod gc;
pub(crate) mod info;
pub(crate) mod init;
pub(crate) mod inspect;
pub(crate) mod load;
pub(crate) mod ls;
pub(crate) mod mount;
pub(crate) mod pull;
pub(crate) mod push;
pub(crate) mod refresh;
pub(crate) mod registry_args;
pub(crate) mod rmi;
pub(crate) mod save;
pub(crate) mod tag;
pub(crate) mod verify;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List images.
    Ls(ls::Args),
    /// Show an image's metadata, layers and config as JSON.
    Inspect(inspect::Args),
    /// Load an image from an OCI layout directory or a docker-archive tarball.
    Load(load::Args),
    /// Mount a container read-write (or an image read-only, nodev, nosuid)
    /// and print the mount path.
    Mount(mount::Args),
    /// Unmount a container or image mounted with `storectl mount`.
    Umount(mount::UmountArgs),
    /// Create a container (a writable layer over an image); prints its id.
    Create(containers::CreateArgs),
    /// List containers.
    Containers(containers::ListArgs),
    /// Remove containers (a mounted one needs --force).
    Rm(containers::RmArgs),
    /// Disk usage of images and containers (CRI ImageFsInfo figures).
    Df(df::Args),
    /// On a writer: delete removed shared layers whose grace period is over.
    Gc(gc::Args),
    /// Write an OCI runtime bundle (DIR/config.json) for a container, for `runc run -b DIR`.
    Bundle(bundle::Args),
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
    /// Serve the gRPC API on a unix socket (and metrics) until interrupted.
    Serve(crate::daemon::Args),
}

impl Command {
    pub fn run(self, root: &Path, host: Option<&str>) -> anyhow::Result<()> {
        if let Some(host) = host {
            return self.run_remote(host);
        }
        match self {
            Command::Ls(a) => ls::run(root, a),
            Command::Inspect(a) => inspect::run(root, a),
            Command::Load(a) => load::run(root, a),
            Command::Mount(a) => mount::run(root, a),
            Command::Umount(a) => mount::run_umount(root, a),
            Command::Create(a) => containers::run_create(root, a),
            Command::Containers(a) => containers::run_list(root, a),
            Command::Rm(a) => containers::run_rm(root, a),
            Command::Bundle(a) => bundle::run(root, a),
            Command::Gc(a) => gc::run(root, a),
            Command::Df(a) => df::run(root, a),
            Command::Tag(a) => tag::run(root, a),
            Command::Rmi(a) => rmi::run(root, a),
            Command::Verify(a) => verify::run(root, a),
            Command::Init(a) => init::run(root, a),
            Command::Info(a) => info::run(root, a),
            Command::Refresh(a) => refresh::run(root, a),
            Command::Pull(a) => pull::run(root, a),
            Command::Push(a) => push::run(root, a),
            Command::Save(a) => save::run(root, a),
            Command::Serve(a) => crate::daemon::serve(root, a),
        }
    }

    /// Through the daemon at `host` (`--host`).
    fn run_remote(self, host: &str) -> anyhow::Result<()> {
        let verb = match &self {
            Command::Ls(_) => "ls",
            Command::Inspect(_) => "inspect",
            Command::Load(_) => "load",
            Command::Tag(_) => "tag",
            Command::Rmi(_) => "rmi",
            Command::Pull(_) => "pull",
            Command::Push(_) => "push",
            Command::Save(_) => "save",
            Command::Mount(_) => "mount",
            Command::Umount(_) => "umount",
            Command::Create(_) => "create",
            Command::Containers(_) => "containers",
            Command::Rm(_) => "rm",
            Command::Bundle(_) => "bundle",
            Command::Gc(_) => "gc",
            Command::Df(_) => "df",
            Command::Verify(_) => "verify",
            Command::Init(_) => "init",
            Command::Info(_) => "info",
            Command::Refresh(_) => "refresh",
            Command::Serve(_) => "serve",
        };
        let supported = matches!(
            self,
            Command::Ls(_)
                | Command::Inspect(_)
                | Command::Load(_)
                | Command::Tag(_)
                | Command::Rmi(_)
                | Command::Pull(_)
                | Command::Push(_)
                | Command::Save(_)
        );
        if !supported {
            anyhow::bail!(
                "storectl {verb} does not run through a daemon; run it without --host \
                 (and without STORECTL_HOST) on the daemon's host"
            );
        }
        let mut client = crate::daemon::client::Client::connect(host)?;
        match self {
            Command::Ls(a) => ls::run_remote(&mut client, a),
            Command::Inspect(a) => inspect::run_remote(&mut client, a),
            Command::Load(a) => load::run_remote(&mut client, a),
            Command::Tag(a) => tag::run_remote(&mut client, a),
            Command::Rmi(a) => rmi::run_remote(&mut client, a),
            Command::Pull(a) => pull::run_remote(&mut client, a),
            Command::Push(a) => push::run_remote(&mut client, a),
            Command::Save(a) => save::run_remote(&mut client, a),
            _ => unreachable!("checked above"),
        }
    }
}
