//! The CRI's `runtime.v1.ImageService`, for kubelet
//! (`--image-service-endpoint unix://…`) and `crictl`.
//!
//! * Image ids are `sha256:<id>`; `repo_tags` are the image's names,
//!   `repo_digests` `repository@<manifest digest>` for each of them.
//! * `PullImage` shares a running pull of the same reference with our own
//!   `Images.Pull` clients; its `auth` (username/password, or `auth` =
//!   base64 `user:password`) answers the registry's challenge.
//! * `RemoveImage` removes by id with all names, and is idempotent.
//! * `ImageFsInfo`: `Store::disk_usage` (as `storectl df`): the local image
//!   layers, the share's apart (on a writer or reader), and the containers'
//!   layers, each with the mount point of its filesystem; kept incrementally.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use storectl_storage::meta::{Image, CONFIG};
use storectl_storage::Store;
use storectl_transfer::registry::Credentials;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use super::images::{op_client, store_status};
use super::ops::{CredSource, Op, OpReporter, Outcome};
use super::pb::runtime::v1 as cri;
use super::pb::storectl::v1 as pb;
use super::pb::storectl::v1::operation_message::Msg;
use super::{log, Daemon};

pub struct Service(pub Arc<Daemon>);

/// `sha256:<id>` → `<id>`; names pass through.
fn strip_id(s: &str) -> &str {
    match s.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 => hex,
        _ => s,
    }
}

/// The `User` of an image config as CRI wants it: a numeric uid, or a name (pure).
fn user_of(config: &[u8]) -> (Option<i64>, String) {
    let user = serde_json::from_slice::<serde_json::Value>(config)
        .ok()
        .and_then(|v| v["config"]["User"].as_str().map(str::to_string))
        .unwrap_or_default();
    let who = user.split(':').next().unwrap_or("");
    match who.parse::<i64>() {
        Ok(uid) => (Some(uid), String::new()),
        Err(_) => (None, who.to_string()),
    }
}

/// The repository part of a reference (`host/repo:tag` → `host/repo`).
fn repository(name: &str) -> &str {
    let name = name.split('@').next().unwrap_or(name);
    match name.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => repo,
        _ => name,
    }
}

fn cri_image(store: &Store, image: &Image) -> cri::Image {
    let config = store.image_big_data(image, CONFIG).unwrap_or_default();
    let (uid, username) = user_of(&config);
    let mut repo_digests: Vec<String> = Vec::new();
    if let Some(d) = &image.digest {
        for n in &image.names {
            let rd = format!("{}@{d}", repository(n));
            if !repo_digests.contains(&rd) {
                repo_digests.push(rd);
            }
        }
    }
    let id = format!("sha256:{}", image.id);
    cri::Image {
        id: id.clone(),
        repo_tags: image
            .names
            .iter()
            .filter(|n| !n.contains('@'))
            .cloned()
            .collect(),
        repo_digests,
        size: store.image_size(image).max(1),
        uid: uid.map(|value| cri::Int64Value { value }),
        username,
        spec: Some(cri::ImageSpec {
            image: id,
            ..Default::default()
        }),
        pinned: false,
        image_source: String::new(),
    }
}

/// The credentials in a CRI `AuthConfig`, if any.
fn auth_credentials(a: &cri::AuthConfig) -> Result<Option<Credentials>, Status> {
    if !a.username.is_empty() {
        return Ok(Some(Credentials::new(&a.username, &a.password)));
    }
    if !a.auth.is_empty() {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(a.auth.trim())
            .map_err(|e| Status::invalid_argument(format!("auth.auth is not base64: {e}")))?;
        let text = String::from_utf8(raw)
            .map_err(|_| Status::invalid_argument("auth.auth is not UTF-8"))?;
        return Credentials::parse(&text)
            .map(Some)
            .ok_or_else(|| Status::invalid_argument("auth.auth is not username:password"));
    }
    if !a.identity_token.is_empty() || !a.registry_token.is_empty() {
        return Err(Status::unimplemented(
            "identity_token and registry_token are not supported; send username and password",
        ));
    }
    Ok(None)
}

#[tonic::async_trait]
impl cri::image_service_server::ImageService for Service {
    async fn list_images(
        &self,
        req: Request<cri::ListImagesRequest>,
    ) -> Result<Response<cri::ListImagesResponse>, Status> {
        let want = req
            .into_inner()
            .filter
            .and_then(|f| f.image)
            .map(|s| s.image)
            .filter(|s| !s.is_empty());
        let images = self
            .0
            .blocking(move |d| {
                let images = match &want {
                    Some(name) => match d.store.resolve_image(strip_id(name)) {
                        Ok(i) => vec![i],
                        Err(_) => Vec::new(),
                    },
                    None => d.store.images(),
                };
                images
                    .iter()
                    .map(|i| cri_image(&d.store, i))
                    .collect::<Vec<_>>()
            })
            .await?;
        Ok(Response::new(cri::ListImagesResponse { images }))
    }

    async fn image_status(
        &self,
        req: Request<cri::ImageStatusRequest>,
    ) -> Result<Response<cri::ImageStatusResponse>, Status> {
        let r = req.into_inner();
        let name = r.image.map(|s| s.image).unwrap_or_default();
        if name.is_empty() {
            return Err(Status::invalid_argument("ImageStatus without an image"));
        }
        let resp = self
            .0
            .blocking(move |d| {
                let Ok(image) = d.store.resolve_image(strip_id(&name)) else {
                    return cri::ImageStatusResponse::default();
                };
                let mut info = HashMap::new();
                if r.verbose {
                    let config = d.store.image_big_data(&image, CONFIG).unwrap_or_default();
                    let config: serde_json::Value =
                        serde_json::from_slice(&config).unwrap_or_default();
                    let v = serde_json::json!({
                        "imageSpec": config,
                        "digest": image.digest,
                        "layers": image.layer,
                        "shared": image.shared,
                    });
                    info.insert("info".to_string(), v.to_string());
                }
                cri::ImageStatusResponse {
                    image: Some(cri_image(&d.store, &image)),
                    info,
                }
            })
            .await?;
        Ok(Response::new(resp))
    }

    async fn pull_image(
        &self,
        req: Request<cri::PullImageRequest>,
    ) -> Result<Response<cri::PullImageResponse>, Status> {
        let r = req.into_inner();
        let reference = r.image.map(|s| s.image).unwrap_or_default();
        let name = storectl_storage::reference::parse(&reference)
            .map_err(|e| Status::invalid_argument(format!("{reference:?}: {e}")))?
            .to_string();
        let creds = match &r.auth {
            Some(a) => auth_credentials(a)?,
            None => None,
        };
        let key = format!("{name}\0");
        let (op, new) = self.0.ops.pull(&key, || Op::new("pull", name.clone()));
        let (tx, mut rx) = mpsc::channel(16);
        let sub = op.subscribe(tx.clone(), CredSource::Fixed(creds));
        self.0.track(&op);
        tokio::spawn(Arc::clone(&op).stream_progress(sub, tx, !new));
        if new {
            let daemon = Arc::clone(&self.0);
            let op = Arc::clone(&op);
            let reference = reference.clone();
            tokio::spawn(async move {
                let op2 = Arc::clone(&op);
                let outcome = daemon
                    .blocking(move |d| {
                        let client = op_client(None, &op2);
                        let opts = storectl_transfer::PullOptions {
                            cancel: op2.cancel.clone(),
                            ..Default::default()
                        };
                        let reporter = storectl_storage::metrics::MetricsReporter::wrap(
                            "pull",
                            OpReporter(Arc::clone(&op2)),
                        );
                        let res = storectl_transfer::pull(
                            &d.store, &reference, &client, &opts, &reporter,
                        );
                        d.changed();
                        match res {
                            Ok(image) => Outcome::Done(pb::Result {
                                id: image.id,
                                names: image.names,
                                ..Default::default()
                            }),
                            Err(e) => Outcome::Failed(crate::one_line(
                                &anyhow::Error::new(e).context(format!("pulling {reference}")),
                            )),
                        }
                    })
                    .await
                    .unwrap_or_else(|s| Outcome::Failed(s.message().to_string()));
                match &outcome {
                    Outcome::Done(r) => log(format!("pull {} (CRI): done {}", op.what, r.id)),
                    Outcome::Failed(m) => log(format!("pull {} (CRI): {m}", op.what)),
                }
                op.finish(outcome);
            });
        }
        while let Some(msg) = rx.recv().await {
            match msg.ok().and_then(|m| m.msg) {
                Some(Msg::Result(r)) => {
                    return Ok(Response::new(cri::PullImageResponse {
                        image_ref: format!("sha256:{}", r.id),
                    }))
                }
                Some(Msg::Error(f)) => {
                    let status = if f.message.contains("not found") {
                        Status::not_found(f.message)
                    } else if f.message.contains("authentication") {
                        Status::unauthenticated(f.message)
                    } else {
                        Status::unknown(f.message)
                    };
                    return Err(status);
                }
                _ => {}
            }
        }
        Err(Status::internal("the pull ended without a result"))
    }

    async fn remove_image(
        &self,
        req: Request<cri::RemoveImageRequest>,
    ) -> Result<Response<cri::RemoveImageResponse>, Status> {
        let name = req.into_inner().image.map(|s| s.image).unwrap_or_default();
        if name.is_empty() {
            return Err(Status::invalid_argument("RemoveImage without an image"));
        }
        self.0
            .blocking(move |d| {
                let Ok(image) = d.store.resolve_image(strip_id(&name)) else {
                    return Ok(()); // already gone: idempotent
                };
                let res = d.store.remove_image(&image.id, true);
                d.changed();
                match res {
                    Ok(_) | Err(storectl_storage::Error::ImageUnknown { .. }) => Ok(()),
                    Err(e) => Err(store_status(&e)),
                }
            })
            .await??;
        Ok(Response::new(cri::RemoveImageResponse {}))
    }

    async fn image_fs_info(
        &self,
        _req: Request<cri::ImageFsInfoRequest>,
    ) -> Result<Response<cri::ImageFsInfoResponse>, Status> {
        let du = self
            .0
            .blocking(|d| d.store.disk_usage())
            .await?
            .map_err(|e| store_status(&e))?;
        let convert = |f: &storectl_storage::FsUsage| cri::FilesystemUsage {
            timestamp: f.timestamp.max(1),
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: f.mountpoint.to_string_lossy().into_owned(),
            }),
            used_bytes: Some(cri::UInt64Value {
                value: f.used_bytes,
            }),
            inodes_used: Some(cri::UInt64Value {
                value: f.inodes_used,
            }),
        };
        Ok(Response::new(cri::ImageFsInfoResponse {
            image_filesystems: du.image_filesystems.iter().map(convert).collect(),
            container_filesystems: du.container_filesystems.iter().map(convert).collect(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use storectl_storage::usage::mount_point;

    #[test]
    fn pure_helpers() {
        let id = "a".repeat(64);
        assert_eq!(strip_id(&format!("sha256:{id}")), id);
        assert_eq!(strip_id("busybox:latest"), "busybox:latest");
        assert_eq!(
            user_of(br#"{"config":{"User":"1000:100"}}"#),
            (Some(1000), "".into())
        );
        assert_eq!(
            user_of(br#"{"config":{"User":"nginx"}}"#),
            (None, "nginx".into())
        );
        assert_eq!(user_of(b"{}"), (None, "".into()));
        assert_eq!(repository("127.0.0.1:5000/a/b:v1"), "127.0.0.1:5000/a/b");
        assert_eq!(repository("127.0.0.1:5000/a"), "127.0.0.1:5000/a");
        let mi = "22 1 0:21 / / rw - ext4 /dev/sda1 rw\n\
                  30 22 0:25 / /var/lib rw - ext4 /dev/sdb rw\n\
                  31 22 0:26 / /var/lib\\040x rw - tmpfs t rw\n";
        assert_eq!(mount_point(mi, "/var/lib/storectl"), "/var/lib");
        assert_eq!(mount_point(mi, "/var/libx"), "/");
        assert_eq!(mount_point(mi, "/var/lib x/s"), "/var/lib x");
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let a = |u: &str, p: &str, auth: &str| cri::AuthConfig {
            username: u.into(),
            password: p.into(),
            auth: auth.into(),
            ..Default::default()
        };
        assert_eq!(
            auth_credentials(&a("u", "p", "")).unwrap(),
            Some(Credentials::new("u", "p"))
        );
        assert_eq!(
            auth_credentials(&a("", "", &b64("x:y:z"))).unwrap(),
            Some(Credentials::new("x", "y:z"))
        );
        assert_eq!(auth_credentials(&a("", "", "")).unwrap(), None);
        assert!(auth_credentials(&a("", "", "%%")).is_err());
    }
}
