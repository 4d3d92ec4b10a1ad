//! The unix socket: created 0660, owned by root (or the daemon's user) and
//! the `--group`; every call's peer checked with `SO_PEERCRED` (root, the
//! daemon's own user, or a member of the group), so a socket whose mode was
//! loosened by hand still refuses strangers — with `PERMISSION_DENIED`
//! naming the uid.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use tonic::transport::server::{Router, UdsConnectInfo};
use tonic::{Request, Status};

use super::pb::runtime::v1::image_service_server::ImageServiceServer;
use super::pb::storectl::v1::events_server::EventsServer;
use super::pb::storectl::v1::images_server::ImagesServer;
use super::{cri, events, images, log, Daemon, MAX_MESSAGE};

/// `--group NAME|GID` → the gid (default: the daemon's own group).
pub fn resolve_group(group: Option<&str>) -> anyhow::Result<u32> {
    let Some(g) = group else {
        return Ok(rustix::process::getegid().as_raw());
    };
    if let Ok(n) = g.parse::<u32>() {
        return Ok(n);
    }
    let text = std::fs::read_to_string("/etc/group").context("reading /etc/group")?;
    group_gid(&text, g).with_context(|| format!("--group: no group {g:?} in /etc/group"))
}

/// The gid of `name` in the text of `/etc/group` (pure).
pub fn group_gid(etc_group: &str, name: &str) -> Option<u32> {
    etc_group.lines().find_map(|l| {
        let mut f = l.split(':');
        let (n, _, gid) = (f.next()?, f.next()?, f.next()?);
        (n == name).then(|| gid.parse().ok()).flatten()
    })
}

/// The supplementary groups in the text of `/proc/PID/status` (pure).
pub fn status_groups(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Create the socket at `path` (its directory too, 0755), 0660, group `gid`.
/// A stale socket (nobody answering) is replaced; a live one is an error.
pub fn bind(path: &Path, gid: u32) -> anyhow::Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
                .with_context(|| format!("chmod {}", dir.display()))?;
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) => {
            use std::os::unix::fs::FileTypeExt;
            if !m.file_type().is_socket() {
                anyhow::bail!("{} exists and is not a socket", path.display());
            }
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                anyhow::bail!(
                    "another daemon is serving on {} (stop it first)",
                    path.display()
                );
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing the stale socket {}", path.display()))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("{}", path.display())),
    }
    let std_listener = std::os::unix::net::UnixListener::bind(path)
        .with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("chmod 0660 {}", path.display()))?;
    rustix::fs::chown(
        path,
        Some(rustix::process::geteuid()),
        Some(rustix::fs::Gid::from_raw(gid)),
    )
    .with_context(|| format!("chown {}", path.display()))?;
    std_listener
        .set_nonblocking(true)
        .with_context(|| format!("{}", path.display()))?;
    tokio::net::UnixListener::from_std(std_listener).with_context(|| format!("{}", path.display()))
}

/// Whether the peer of `req` may use the daemon.
fn check_peer<T>(req: &Request<T>, gid: u32) -> Result<(), Status> {
    let cred = req
        .extensions()
        .get::<UdsConnectInfo>()
        .and_then(|i| i.peer_cred)
        .ok_or_else(|| Status::permission_denied("the peer's credentials are unknown"))?;
    let uid = cred.uid();
    if uid == 0 || uid == rustix::process::geteuid().as_raw() || cred.gid() == gid {
        return Ok(());
    }
    if let Some(pid) = cred.pid() {
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            if status_groups(&status).contains(&gid) {
                return Ok(());
            }
        }
    }
    log(format!(
        "refused uid {uid} (pid {}): not root and not in group {gid}",
        cred.pid()
            .map(|p| p.to_string())
            .unwrap_or_else(|| "?".into())
    ));
    Err(Status::permission_denied(format!(
        "uid {uid} may not use this daemon: only root and members of group {gid}"
    )))
}

/// The gRPC services, each call's peer checked.
pub fn grpc_server(
    daemon: Arc<Daemon>,
    gid: u32,
    listener: tokio::net::UnixListener,
) -> GrpcServer {
    let check = move |req: Request<()>| check_peer(&req, gid).map(|()| req);
    let images = ImagesServer::new(images::Service(Arc::clone(&daemon)))
        .max_decoding_message_size(MAX_MESSAGE);
    let events = EventsServer::new(events::Service(Arc::clone(&daemon)));
    let cri = ImageServiceServer::new(cri::Service(Arc::clone(&daemon)))
        .max_decoding_message_size(MAX_MESSAGE);
    let router = tonic::transport::Server::builder()
        .add_service(tonic::service::interceptor::InterceptedService::new(
            images, check,
        ))
        .add_service(tonic::service::interceptor::InterceptedService::new(
            events, check,
        ))
        .add_service(tonic::service::interceptor::InterceptedService::new(
            cri, check,
        ));
    GrpcServer { router, listener }
}

pub struct GrpcServer {
    router: Router,
    listener: tokio::net::UnixListener,
}

impl GrpcServer {
    pub async fn serve_with_incoming_shutdown(
        self,
        stop: tokio::sync::oneshot::Receiver<()>,
    ) -> Result<(), tonic::transport::Error> {
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(self.listener);
        self.router
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stop.await;
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_parse() {
        let etc = "root:x:0:\nstorectl:x:991:alice,bob\nbad line\nusers:x:100:\n";
        assert_eq!(group_gid(etc, "storectl"), Some(991));
        assert_eq!(group_gid(etc, "users"), Some(100));
        assert_eq!(group_gid(etc, "nope"), None);
        assert_eq!(group_gid("x:y:notanumber:\n", "x"), None);
        let status = "Name:\tcat\nUid:\t1000\t1000\t1000\t1000\nGroups:\t4 24 991 \nNgid:\t0\n";
        assert_eq!(status_groups(status), vec![4, 24, 991]);
        assert_eq!(status_groups("Groups:\n"), Vec::<u32>::new());
        assert_eq!(status_groups(""), Vec::<u32>::new());
    }
}
