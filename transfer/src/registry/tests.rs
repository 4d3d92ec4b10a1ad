//! Tests of the client against servers on 127.0.0.1: a real registry
//! (Debian's `docker-registry`, fed by `skopeo`), and a small scripted HTTP
//! server for what a real registry will not do on demand (bearer tokens,
//! connections that break mid-blob). A missing tool skips its test, saying why.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use storectl_fixtures::registry::{free_port, missing, skopeo, skopeo_copy, Registry};
use storectl_fixtures::{Compression, Entry, Image, Layer};

use super::*;

fn options() -> ClientOptions {
    ClientOptions {
        retry_backoff: Duration::from_millis(5),
        use_default_auth_file: false,
        ..ClientOptions::default()
    }
}

/// The tools a real-registry test needs, or `None` (with the reason printed).
fn tools(names: &[&str]) -> Option<()> {
    if let Some(n) = missing(names) {
        #[allow(clippy::print_stderr)]
        {
            eprintln!("skipping: {n} is not installed (apt-get install docker-registry skopeo apache2-utils)");
        }
        return None;
    }
    Some(())
}

/// Push `image` (written as an OCI layout) to `registry/repo:tag` with skopeo.
fn skopeo_push(reg: &Registry, image: &Image, repo: &str, tag: &str, creds: Option<&str>) {
    let layout = reg
        .dir
        .path()
        .join(format!("oci-{}", repo.replace('/', "-")));
    storectl_fixtures::write_oci_layout(&layout, std::slice::from_ref(image)).unwrap();
    let creds = creds.map(|c| format!("--dest-creds={c}"));
    let extra: Vec<&str> = creds.iter().map(String::as_str).collect();
    skopeo_copy(
        &layout,
        &image.tag().unwrap(),
        &reg.r(&format!("{repo}:{tag}")),
        &extra,
    );
}

fn skopeo_inspect(reg: &Registry, reference: &str, creds: Option<&str>) -> serde_json::Value {
    let creds = creds.map(|c| format!("--creds={c}"));
    let reference = format!("docker://{}", reg.r(reference));
    let mut args = vec!["inspect", "--tls-verify=false"];
    args.extend(creds.as_deref());
    args.push(&reference);
    serde_json::from_str(&skopeo(&args)).unwrap()
}

fn test_image(name: &str) -> Image {
    // Incompressible, so the chunked upload below really takes several chunks;
    // both layers gzip, so skopeo passes them (and the manifest) through as is.
    let big = storectl_fixtures::gen::Prng::new(7).bytes(400_000);
    Image::new(vec![
        Layer::new(
            vec![
                Entry::dir("etc"),
                Entry::file("etc/hello", "hello from a registry test\n"),
            ],
            Compression::Gzip,
        ),
        Layer::new(vec![Entry::file("data.bin", big)], Compression::Gzip),
    ])
    .named(name)
}

fn read_all(mut r: impl Read) -> std::io::Result<Vec<u8>> {
    let mut v = Vec::new();
    r.read_to_end(&mut v)?;
    Ok(v)
}

#[test]
fn real_registry_pull_and_push() {
    if tools(&["docker-registry", "skopeo"]).is_none() {
        return;
    }
    let reg = Registry::start(None);
    let image = test_image("localhost/regtest:v1");
    let built = image.build();
    skopeo_push(&reg, &image, "test/img", "v1", None);

    let client = RegistryClient::new(options());
    let repo = Repository::new(&reg.addr, "test/img");
    client.ping(&reg.addr).unwrap();

    // The manifest, by tag and by digest, with its digest verified.
    let m = client.get_manifest(&repo, "v1").unwrap();
    assert_eq!(m.media_type, spec::OCI_MANIFEST);
    assert_eq!(m.digest, storectl_storage::digest::sha256_digest(&m.bytes));
    assert_eq!(
        m.bytes,
        built.oci_manifest(),
        "skopeo kept the manifest as is"
    );
    let by_digest = client.get_manifest(&repo, &m.digest).unwrap();
    assert_eq!(by_digest, m);
    let d = client.resolve(&repo, "v1").unwrap();
    assert_eq!(
        (d.digest.as_str(), d.size),
        (m.digest.as_str(), m.bytes.len() as u64)
    );
    assert_eq!(d.media_type, spec::OCI_MANIFEST);
    assert_eq!(client.list_tags(&repo).unwrap(), vec!["v1".to_string()]);

    // Every blob, streamed and checked; a read from an offset; HEAD.
    let mut blobs: Vec<(String, Vec<u8>)> = built
        .layers
        .iter()
        .map(|l| (l.blob_digest.clone(), l.blob.clone()))
        .collect();
    blobs.push((built.config_digest.clone(), built.config.clone()));
    for (digest, bytes) in &blobs {
        let r = client.get_blob(&repo, digest, 0).unwrap();
        assert!(r.verifies());
        assert_eq!(r.size(), Some(bytes.len() as u64));
        assert!(&read_all(r).unwrap() == bytes, "{digest}");
        let tail = read_all(client.get_blob(&repo, digest, 7).unwrap()).unwrap();
        assert!(tail == bytes[7..], "{digest} from offset 7");
        assert_eq!(
            client.head_blob(&repo, digest).unwrap(),
            Some(bytes.len() as u64)
        );
    }
    let missing = storectl_storage::digest::sha256_digest(b"not there");
    assert_eq!(client.head_blob(&repo, &missing).unwrap(), None);
    match client.get_blob(&repo, &missing, 0) {
        Err(RegistryError::NotFound { what }) => {
            assert_eq!(what, format!("blob {missing} in {}/test/img", reg.addr))
        }
        other => panic!("{other:?}"),
    }
    match client.get_manifest(&repo, "nope") {
        Err(e @ RegistryError::NotFound { .. }) => {
            assert_eq!(
                e.to_string(),
                format!("manifest {}/test/img:nope not found", reg.addr)
            )
        }
        other => panic!("{other:?}"),
    }

    // An index over it: the platform picker finds the host's entry.
    let host = Platform::host();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": spec::OCI_INDEX,
        "manifests": [
            {"mediaType": spec::OCI_MANIFEST, "digest": m.digest, "size": m.bytes.len(),
             "platform": {"os": "linux", "architecture": "mips64le"}},
            {"mediaType": spec::OCI_MANIFEST, "digest": m.digest, "size": m.bytes.len(),
             "platform": host},
        ],
    }))
    .unwrap();
    let index_digest = client
        .put_manifest(&repo, "multi", &index, spec::OCI_INDEX)
        .unwrap();
    let (top, picked) = client.get_platform_manifest(&repo, "multi", &host).unwrap();
    let top = top.expect("an index");
    assert!(top.is_index());
    assert_eq!(top.digest, index_digest);
    assert_eq!(picked, m);
    match client.get_platform_manifest(&repo, "multi", &Platform::parse("windows/arm64").unwrap()) {
        Err(RegistryError::NoMatchingPlatform { available, .. }) => {
            assert_eq!(
                available,
                vec!["linux/mips64le".to_string(), host.to_string()]
            )
        }
        other => panic!("{other:?}"),
    }

    // Push with the client into another repo: a mount, a chunked upload, a
    // monolithic one, then the manifest; skopeo sees the result.
    let dest = Repository::new(&reg.addr, "pushed/img");
    let (l0, l1) = (&built.layers[0], &built.layers[1]);
    let mounted = client
        .push_blob(
            &dest,
            &l0.blob_digest,
            l0.blob.len() as u64,
            &mut std::io::empty(),
            &UploadOptions {
                mount_from: Some("test/img".into()),
                chunk_size: None,
            },
        )
        .unwrap();
    assert_eq!(mounted, BlobPushed::Mounted);
    let chunked = client
        .push_blob(
            &dest,
            &l1.blob_digest,
            l1.blob.len() as u64,
            &mut &l1.blob[..],
            &UploadOptions {
                mount_from: None,
                chunk_size: Some(300_000),
            },
        )
        .unwrap();
    assert_eq!(chunked, BlobPushed::Uploaded);
    let mono = client
        .push_blob(
            &dest,
            &built.config_digest,
            built.config.len() as u64,
            &mut &built.config[..],
            &UploadOptions::default(),
        )
        .unwrap();
    assert_eq!(mono, BlobPushed::Uploaded);
    let manifest = built.oci_manifest();
    let pushed = client
        .put_manifest(&dest, "v2", &manifest, spec::OCI_MANIFEST)
        .unwrap();
    assert_eq!(pushed, m.digest);
    let seen = skopeo_inspect(&reg, "pushed/img:v2", None);
    assert_eq!(seen["Digest"], serde_json::json!(m.digest));
    let layers: Vec<String> = built.layers.iter().map(|l| l.blob_digest.clone()).collect();
    assert_eq!(seen["Layers"], serde_json::json!(layers));

    // A blob whose bytes do not match its digest is refused by the registry.
    let wrong = storectl_storage::digest::sha256_digest(b"something else");
    let e = client
        .push_blob(
            &dest,
            &wrong,
            5,
            &mut &b"hello"[..],
            &UploadOptions::default(),
        )
        .unwrap_err();
    assert!(
        matches!(&e, RegistryError::Http { status: 400, body, .. } if body.contains("DIGEST_INVALID")),
        "{e}"
    );
    // A manifest pushed under a digest it does not have is refused here.
    assert!(matches!(
        client.put_manifest(&dest, &wrong, &manifest, spec::OCI_MANIFEST),
        Err(RegistryError::DigestMismatch { .. })
    ));
}

#[test]
fn real_registry_basic_auth() {
    if tools(&["docker-registry", "skopeo", "htpasswd"]).is_none() {
        return;
    }
    let reg = Registry::start(Some(("alice", "s3cret")));
    let image = test_image("localhost/authtest:v1");
    let built = image.build();
    skopeo_push(&reg, &image, "private/img", "v1", Some("alice:s3cret"));
    let repo = Repository::new(&reg.addr, "private/img");

    // Anonymous.
    let anon = RegistryClient::new(options());
    let e = anon.get_manifest(&repo, "v1").unwrap_err();
    assert!(
        matches!(
            &e,
            RegistryError::Unauthorized {
                had_credentials: false,
                ..
            }
        ),
        "{e}"
    );
    assert!(
        e.to_string().starts_with(&format!(
            "authentication to {} failed: credentials required",
            reg.addr
        )),
        "{e}"
    );

    // Wrong password: reads clearly.
    let wrong = RegistryClient::new(options()).with_credentials(Credentials::new("alice", "nope"));
    let e = wrong.get_manifest(&repo, "v1").unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "authentication to {} failed: wrong username or password",
            reg.addr
        )
    );
    assert!(matches!(
        wrong.ping(&reg.addr),
        Err(RegistryError::Unauthorized {
            had_credentials: true,
            ..
        })
    ));

    // From an auth file.
    let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
    let file = AuthFile::parse(
        format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, reg.addr).as_bytes(),
    )
    .unwrap();
    let client = RegistryClient::new(options()).with_auth_file(file);
    client.ping(&reg.addr).unwrap();
    let m = client.get_manifest(&repo, "v1").unwrap();
    assert!(m.bytes == built.oci_manifest());
    let l = &built.layers[1];
    assert!(read_all(client.get_blob(&repo, &l.blob_digest, 0).unwrap()).unwrap() == l.blob);

    // From a callback, asked once per registry, only when challenged.
    let asked = Arc::new(AtomicUsize::new(0));
    let a = asked.clone();
    let provider = move |registry: &str| {
        a.fetch_add(1, Ordering::SeqCst);
        Some(Credentials::new(
            if registry.starts_with("127.0.0.1:") {
                "alice"
            } else {
                "x"
            },
            "s3cret",
        ))
    };
    let client = RegistryClient::new(options()).with_credentials_provider(Arc::new(provider));
    assert_eq!(asked.load(Ordering::SeqCst), 0);
    client.get_manifest(&repo, "v1").unwrap();
    client.get_manifest(&repo, &m.digest).unwrap();
    assert_eq!(
        client.head_blob(&repo, &l.blob_digest).unwrap(),
        Some(l.blob.len() as u64)
    );
    assert_eq!(asked.load(Ordering::SeqCst), 1);

    // Push with credentials; skopeo (with them) sees it.
    let dest = Repository::new(&reg.addr, "private/copy");
    for (d, b) in built
        .layers
        .iter()
        .map(|l| (&l.blob_digest, &l.blob))
        .chain([(&built.config_digest, &built.config)])
    {
        client
            .push_blob(
                &dest,
                d,
                b.len() as u64,
                &mut &b[..],
                &UploadOptions::default(),
            )
            .unwrap();
    }
    client
        .put_manifest(&dest, "v1", &built.oci_manifest(), spec::OCI_MANIFEST)
        .unwrap();
    let seen = skopeo_inspect(&reg, "private/copy:v1", Some("alice:s3cret"));
    assert_eq!(seen["Digest"], serde_json::json!(m.digest));
}

// ---- a scripted HTTP server -------------------------------------------------

#[derive(Debug)]
struct Req {
    method: String,
    path: String,
    headers: HashMap<String, String>,
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Announce the whole body, send only this many bytes, then hang up.
    cut_after: Option<usize>,
}

impl Reply {
    fn new(status: u16, body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: body.into(),
            cut_after: None,
        }
    }
    fn header(mut self, k: &str, v: &str) -> Reply {
        self.headers.push((k.into(), v.into()));
        self
    }
}

type Handler = dyn Fn(&Req) -> Reply + Send + Sync;

/// Serves one request per connection (`Connection: close`) until dropped.
struct FakeServer {
    addr: String,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeServer {
    fn start(handler: Arc<Handler>) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                let _ = serve_one(&mut conn, &*handler);
            }
        });
        FakeServer {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_one(conn: &mut TcpStream, handler: &Handler) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut r = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
    );
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    std::io::copy(&mut r.by_ref().take(len as u64), &mut std::io::sink())?;
    let reply = handler(&Req {
        method,
        path,
        headers,
    });
    let mut out = format!("HTTP/1.1 {} X\r\nConnection: close\r\n", reply.status);
    if !reply
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-length"))
    {
        out.push_str(&format!("Content-Length: {}\r\n", reply.body.len()));
    }
    for (k, v) in &reply.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    conn.write_all(out.as_bytes())?;
    let n = reply
        .cut_after
        .unwrap_or(reply.body.len())
        .min(reply.body.len());
    conn.write_all(&reply.body[..n])?;
    conn.flush()?;
    conn.shutdown(std::net::Shutdown::Both)
}

#[test]
fn bearer_token_flow() {
    let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}"#.to_vec();
    let digest = storectl_storage::digest::sha256_digest(&manifest);
    let tokens = Arc::new(AtomicUsize::new(0));
    let realm = Arc::new(parking_lot::Mutex::new(String::new()));
    let (t, rl, m, d) = (
        tokens.clone(),
        realm.clone(),
        manifest.clone(),
        digest.clone(),
    );
    let server = FakeServer::start(Arc::new(move |req: &Req| {
        let auth = req
            .headers
            .get("authorization")
            .cloned()
            .unwrap_or_default();
        if req.path.starts_with("/token?") {
            assert_eq!(req.method, "GET");
            t.fetch_add(1, Ordering::SeqCst);
            assert_eq!(
                req.path,
                "/token?service=fake%20registry&scope=repository%3Aa%2Fb%3Apull"
            );
            let good = Credentials::new("bob", "pw").basic_header();
            return if auth == good {
                Reply::new(200, r#"{"token":"T-1","expires_in":300}"#)
            } else {
                Reply::new(401, "")
            };
        }
        if auth != "Bearer T-1" {
            let h = format!(
                r#"Bearer realm="{}",service="fake registry",scope="repository:a/b:pull""#,
                rl.lock()
            );
            return Reply::new(401, r#"{"errors":[{"code":"UNAUTHORIZED"}]}"#)
                .header("WWW-Authenticate", &h);
        }
        match req.path.as_str() {
            "/v2/a/b/manifests/v1" => Reply::new(200, m.clone())
                .header("Content-Type", spec::OCI_MANIFEST)
                .header("Docker-Content-Digest", &d),
            "/v2/a/b/manifests/lying" => Reply::new(200, m.clone())
                .header("Content-Type", spec::OCI_MANIFEST)
                .header(
                    "Docker-Content-Digest",
                    &storectl_storage::digest::sha256_digest(b"x"),
                ),
            _ => Reply::new(
                404,
                r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
            ),
        }
    }));
    *realm.lock() = format!("http://{}/token", server.addr);
    let repo = Repository::new(&server.addr, "a/b");

    let client = RegistryClient::new(options())
        .with_registry_credentials(&server.addr, Credentials::new("bob", "pw"));
    let got = client.get_manifest(&repo, "v1").unwrap();
    assert_eq!(
        (got.bytes, got.digest.as_str()),
        (manifest.clone(), digest.as_str())
    );
    client.get_manifest(&repo, "v1").unwrap();
    assert_eq!(
        tokens.load(Ordering::SeqCst),
        1,
        "the token is cached per scope"
    );
    match client.get_manifest(&repo, "lying") {
        Err(RegistryError::DigestMismatch { found, .. }) => assert_eq!(found, digest),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        client.get_manifest(&repo, "gone"),
        Err(RegistryError::NotFound { .. })
    ));

    let wrong = RegistryClient::new(options()).with_credentials(Credentials::new("bob", "bad"));
    let e = wrong.get_manifest(&repo, "v1").unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "authentication to {} failed: wrong username or password",
            server.addr
        )
    );
    let anon = RegistryClient::new(options());
    assert!(matches!(
        anon.get_manifest(&repo, "v1"),
        Err(RegistryError::Unauthorized {
            had_credentials: false,
            ..
        })
    ));
}

/// A blob server that breaks connections after `cut` bytes the first
/// `breaks` times, honours `Range` (unless `ignore_range`), and serves `served`.
fn flaky_blob_server(
    served: Vec<u8>,
    cut: usize,
    breaks: usize,
    ignore_range: bool,
) -> (FakeServer, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let server = FakeServer::start(Arc::new(move |req: &Req| {
        let n = c.fetch_add(1, Ordering::SeqCst);
        let start: usize = req
            .headers
            .get("range")
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut reply = if start > 0 && !ignore_range {
            Reply::new(206, served[start..].to_vec()).header(
                "Content-Range",
                &format!("bytes {start}-{}/{}", served.len() - 1, served.len()),
            )
        } else {
            Reply::new(200, served.clone())
        };
        if n < breaks {
            reply.cut_after = Some(cut);
        }
        reply
    }));
    (server, count)
}

#[test]
fn blob_download_resumes_with_range() {
    let blob: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let digest = storectl_storage::digest::sha256_digest(&blob);
    for ignore_range in [false, true] {
        let (server, requests) = flaky_blob_server(blob.clone(), 70_000, 2, ignore_range);
        let client = RegistryClient::new(options());
        let repo = Repository::new(&server.addr, "r");
        let mut r = client.get_blob(&repo, &digest, 0).unwrap();
        let got = read_all(&mut r).unwrap();
        assert!(got == blob, "ignore_range={ignore_range}");
        assert_eq!(r.resumes(), 2);
        assert_eq!(requests.load(Ordering::SeqCst), 3);
        assert_eq!(r.offset(), blob.len() as u64);
    }

    // Breaking more often than the retries allow is an error.
    let (server, _) = flaky_blob_server(blob.clone(), 1000, 100, false);
    let client = RegistryClient::new(ClientOptions {
        retries: 2,
        ..options()
    });
    let r = client
        .get_blob(&Repository::new(&server.addr, "r"), &digest, 0)
        .unwrap();
    let e = read_all(r).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");

    // Content that does not match the digest fails at EOF, as InvalidData.
    let mut bad = blob.clone();
    bad[12345] ^= 1;
    let (server, _) = flaky_blob_server(bad, 50_000, 1, false);
    let r = RegistryClient::new(options())
        .get_blob(&Repository::new(&server.addr, "r"), &digest, 0)
        .unwrap();
    let e = read_all(r).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
    let inner = e.into_inner().unwrap().downcast::<RegistryError>().unwrap();
    assert!(
        matches!(*inner, RegistryError::DigestMismatch { .. }),
        "{inner}"
    );
}

#[test]
fn transport_errors_are_clear() {
    let port = free_port(); // nothing listens there
    let client = RegistryClient::new(ClientOptions {
        retries: 1,
        ..options()
    });
    let e = client
        .get_manifest(&Repository::new(format!("127.0.0.1:{port}"), "x"), "latest")
        .unwrap_err();
    assert!(e.is_transient());
    assert!(
        e.to_string().starts_with(&format!(
            "cannot reach http://127.0.0.1:{port}/v2/x/manifests/latest: "
        )),
        "{e}"
    );

    // 5xx is retried, then reported with the registry's message.
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let server = FakeServer::start(Arc::new(move |_req: &Req| {
        c.fetch_add(1, Ordering::SeqCst);
        Reply::new(
            503,
            r#"{"errors":[{"code":"UNAVAILABLE","message":"try later"}]}"#,
        )
    }));
    let e = client
        .get_manifest(&Repository::new(&server.addr, "x"), "latest")
        .unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        e.to_string(),
        format!(
            "GET http://{}/v2/x/manifests/latest: HTTP 503: UNAVAILABLE: try later",
            server.addr
        )
    );
}

#[test]
fn retry_after_is_honoured_and_too_long_a_wait_is_not() {
    let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}"#.to_vec();
    let hits = Arc::new(AtomicUsize::new(0));
    let (h, m) = (hits.clone(), manifest.clone());
    // /v2/busy: 503 with `Retry-After: 0` twice, then the manifest.
    // /v2/later: 429 asking for an hour.
    let server = FakeServer::start(Arc::new(move |req: &Req| {
        let n = h.fetch_add(1, Ordering::SeqCst);
        if req.path.starts_with("/v2/later/") {
            return Reply::new(429, "slow down").header("Retry-After", "3600");
        }
        if n < 2 {
            return Reply::new(503, "busy").header("Retry-After", "0");
        }
        Reply::new(200, m.clone()).header("Content-Type", spec::OCI_MANIFEST)
    }));
    let client = RegistryClient::new(ClientOptions {
        plain_http: Some(true),
        retry_backoff: Duration::from_secs(3600), // Retry-After wins over it
        ..options()
    });
    let got = client
        .get_manifest(&Repository::new(&server.addr, "busy"), "v1")
        .unwrap();
    assert_eq!(got.bytes, manifest);
    assert_eq!(hits.load(Ordering::SeqCst), 3, "two retries");
    hits.store(10, Ordering::SeqCst);
    let e = client
        .get_manifest(&Repository::new(&server.addr, "later"), "v1")
        .unwrap_err();
    assert!(e.to_string().contains("HTTP 429"), "{e}");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        11,
        "not retried: the wait is too long"
    );
}
