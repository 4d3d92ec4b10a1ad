//! A synchronous client for the OCI distribution (v2) registry API.
//!
//! ```no_run
//! use storectl_storage::reference;
//! use storectl_transfer::registry::{ClientOptions, Platform, RegistryClient, Repository};
//! let r = reference::parse("127.0.0.1:5000/busybox:latest").unwrap();
//! let client = RegistryClient::new(ClientOptions::default());
//! let repo = Repository::from_reference(&r);
//! let top = client.get_manifest(&repo, r.registry_reference())?;
//! let manifest = if top.is_index() {
//!     let d = storectl_transfer::registry::pick_manifest(&top.bytes, &Platform::host())?;
//!     client.get_manifest(&repo, &d.digest)?
//! } else {
//!     top
//! };
//! let mut blob = client.get_blob(&repo, "sha256:…", 0)?; // impl Read, verified at EOF
//! std::io::copy(&mut blob, &mut std::io::sink()).unwrap();
//! # Ok::<(), storectl_transfer::registry::RegistryError>(())
//! ```
//!
//! * **Transport.** `ureq` with rustls. Plain HTTP is used for loopback
//!   registries (`127.0.0.0/8`, `::1`, `localhost`) unless
//!   [`ClientOptions::plain_http`] says otherwise; `docker.io` is reached at
//!   `registry-1.docker.io`.
//! * **Auth.** Anonymous first; on a `401` challenge, `Basic` (credentials sent
//!   on every request to that registry from then on) or `Bearer` (a token from
//!   the challenge's realm for the request's scopes, cached per scope until it
//!   expires). Credentials come, in order, from [`RegistryClient::with_credentials`]
//!   / [`RegistryClient::with_registry_credentials`], the auth file
//!   ([`AuthFile`]: `$REGISTRY_AUTH_FILE`, else `~/.docker/config.json`;
//!   its credential helpers, `credHelpers` and `credsStore`, included), and a
//!   [`CredentialsProvider`] callback — asked only when a registry challenges.
//! * **Retries** ([`retry`]): idempotent requests (GET, HEAD, and ones with
//!   an in-memory body) are retried on transport errors, 5xx and 429, after
//!   the registry's `Retry-After` (seconds or a date, up to a minute), else
//!   exponential backoff with jitter. A blob download that breaks mid-way
//!   resumes with `Range` ([`BlobReader`]), on the same policy.
//! * **Integrity.** Manifests are checked against the digest asked for, or the
//!   `Docker-Content-Digest` the registry sent; blobs read from offset 0 are
//!   checked at EOF.

mod auth;
mod blob;
mod error;
mod platform;
pub mod retry;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sha2::Digest as _;
use ureq::http;

pub use auth::{parse_challenges, AuthFile, Challenge, Credentials, CredentialsProvider};
pub use blob::BlobReader;
pub use error::{RegistryError, Result};
pub use platform::pick_manifest;
use retry::{retryable_error, retryable_status, Retry};
pub use storectl_storage::import::platform::{host_arch, Platform};
use storectl_storage::import::spec::{self, is_manifest_media_type};
pub use storectl_storage::import::spec::{is_index_media_type, Descriptor};

use storectl_storage::reference::{Reference, DEFAULT_DOMAIN};

/// The `Accept` header of manifest requests.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// The largest manifest accepted (containerd's limit).
pub const MAX_MANIFEST_SIZE: u64 = 4 << 20;

/// A manifest (or index) as received, with its media type and verified digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub bytes: Vec<u8>,
    pub media_type: String,
    pub digest: String,
}

impl Manifest {
    /// Whether this is an index / manifest list rather than an image manifest.
    pub fn is_index(&self) -> bool {
        is_index_media_type(&self.media_type)
    }
}

/// A repository in a registry: `registry` is `host[:port]` (as in a
/// [`Reference`]'s domain), `path` the repository path (`library/busybox`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Repository {
    pub registry: String,
    pub path: String,
}

impl Repository {
    pub fn new(registry: impl Into<String>, path: impl Into<String>) -> Self {
        Repository {
            registry: registry.into(),
            path: path.into(),
        }
    }

    pub fn from_reference(r: &Reference) -> Self {
        Repository::new(&r.domain, &r.path)
    }

    fn pull_scope(&self) -> String {
        format!("repository:{}:pull", self.path)
    }

    fn push_scope(&self) -> String {
        format!("repository:{}:pull,push", self.path)
    }
}

impl fmt::Display for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.path)
    }
}

/// How the client connects and retries.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Accept any TLS certificate (self-signed test registries).
    pub insecure_skip_tls_verify: bool,
    /// `Some(true)`: always plain HTTP; `Some(false)`: always HTTPS; `None`:
    /// plain HTTP for loopback registries only.
    pub plain_http: Option<bool>,
    pub user_agent: String,
    /// Time to establish a connection (including TLS).
    pub connect_timeout: Duration,
    /// Time from sending a request until the response headers arrive.
    pub response_timeout: Duration,
    /// Longest wait for any single read or write on the connection (a stalled
    /// transfer fails after this, and is then retried or resumed).
    pub io_timeout: Duration,
    /// How many times a failed idempotent request is retried, and how many
    /// times a broken blob download is resumed.
    pub retries: u32,
    /// The first retry's delay; doubled each time, at most 10 s.
    pub retry_backoff: Duration,
    /// Read credentials from the default auth file (see [`AuthFile::default_path`]).
    pub use_default_auth_file: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            insecure_skip_tls_verify: false,
            plain_http: None,
            user_agent: format!("storectl/{}", env!("CARGO_PKG_VERSION")),
            connect_timeout: Duration::from_secs(30),
            response_timeout: Duration::from_secs(120),
            io_timeout: Duration::from_secs(60),
            retries: 3,
            retry_backoff: Duration::from_millis(250),
            use_default_auth_file: true,
        }
    }
}

/// What [`RegistryClient::push_blob`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobPushed {
    /// Mounted from the source repository: no bytes sent.
    Mounted,
    /// Uploaded.
    Uploaded,
}

/// How to upload a blob.
#[derive(Debug, Clone, Default)]
pub struct UploadOptions {
    /// Try a cross-repository mount from this repository path (same registry) first.
    pub mount_from: Option<String>,
    /// Upload in `PATCH` chunks of this many bytes instead of one `PUT`.
    pub chunk_size: Option<u64>,
}

enum AuthScheme {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

#[derive(Default)]
struct AuthState {
    /// How each registry wants to be authenticated (after its first challenge).
    schemes: HashMap<String, AuthScheme>,
    /// Bearer tokens by (registry, scope key) with their expiry.
    tokens: HashMap<(String, String), (String, Instant)>,
    /// Credentials resolved per registry (`None`: there are none).
    creds: HashMap<String, Option<Credentials>>,
    /// The realm of each registry's last challenge (told to a provider).
    realms: HashMap<String, String>,
}

#[derive(Default)]
enum AuthFileState {
    #[default]
    NotLoaded,
    Loaded(AuthFile),
    Disabled,
}

#[derive(Default)]
struct CredConfig {
    any: Option<Credentials>,
    per_registry: HashMap<String, Credentials>,
    auth_file: AuthFileState,
    provider: Option<Arc<dyn CredentialsProvider>>,
}

struct Inner {
    agent: ureq::Agent,
    opts: ClientOptions,
    config: Mutex<CredConfig>,
    state: Mutex<AuthState>,
}

/// A registry client. Cheap to clone (shared connection pool and token cache);
/// usable from several threads.
#[derive(Clone)]
pub struct RegistryClient {
    inner: Arc<Inner>,
}

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryClient")
            .field("opts", &self.inner.opts)
            .finish_non_exhaustive()
    }
}

/// A request body.
enum ReqBody<'a> {
    None,
    Bytes(&'a [u8]),
    Reader(&'a mut dyn Read, u64),
}

struct Call<'a> {
    method: &'static str,
    url: String,
    registry: &'a str,
    scopes: Vec<String>,
    headers: Vec<(&'static str, String)>,
    body: ReqBody<'a>,
}

impl<'a> Call<'a> {
    /// A body-less request on `repo` needing only pull access.
    fn pull(method: &'static str, url: &str, repo: &'a Repository) -> Self {
        Call {
            method,
            url: url.to_string(),
            registry: &repo.registry,
            scopes: vec![repo.pull_scope()],
            headers: Vec::new(),
            body: ReqBody::None,
        }
    }
}

type Response = http::Response<ureq::Body>;

impl RegistryClient {
    pub fn new(opts: ClientOptions) -> Self {
        let tls = ureq::tls::TlsConfig::builder()
            .disable_verification(opts.insecure_skip_tls_verify)
            .build();
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .user_agent(opts.user_agent.as_str())
            .tls_config(tls)
            .timeout_connect(Some(opts.connect_timeout))
            .timeout_recv_response(Some(opts.response_timeout))
            .timeout_per_read(Some(opts.io_timeout))
            .timeout_per_write(Some(opts.io_timeout))
            .max_redirects(10)
            .build();
        let auth_file = if opts.use_default_auth_file {
            AuthFileState::NotLoaded
        } else {
            AuthFileState::Disabled
        };
        RegistryClient {
            inner: Arc::new(Inner {
                agent: config.into(),
                opts,
                config: Mutex::new(CredConfig {
                    auth_file,
                    ..CredConfig::default()
                }),
                state: Mutex::new(AuthState::default()),
            }),
        }
    }

    pub fn options(&self) -> &ClientOptions {
        &self.inner.opts
    }

    /// Use these credentials for every registry that challenges (unless one has
    /// its own from [`with_registry_credentials`](Self::with_registry_credentials)).
    pub fn with_credentials(self, creds: Credentials) -> Self {
        self.inner.config.lock().any = Some(creds);
        self.inner.state.lock().creds.clear();
        self
    }

    /// Use these credentials for `registry` (`host[:port]`).
    pub fn with_registry_credentials(self, registry: &str, creds: Credentials) -> Self {
        self.inner
            .config
            .lock()
            .per_registry
            .insert(registry.to_string(), creds);
        self.inner.state.lock().creds.clear();
        self
    }

    /// Use this auth file instead of the default one.
    pub fn with_auth_file(self, file: AuthFile) -> Self {
        self.inner.config.lock().auth_file = AuthFileState::Loaded(file);
        self.inner.state.lock().creds.clear();
        self
    }

    /// Ask `provider` when a registry challenges and no other source has credentials.
    pub fn with_credentials_provider(self, provider: Arc<dyn CredentialsProvider>) -> Self {
        self.inner.config.lock().provider = Some(provider);
        self.inner.state.lock().creds.clear();
        self
    }

    /// `scheme://host[:port]` for a registry.
    pub fn base_url(&self, registry: &str) -> String {
        let host = if registry == DEFAULT_DOMAIN || registry == "index.docker.io" {
            "registry-1.docker.io"
        } else {
            registry
        };
        let plain = self
            .inner
            .opts
            .plain_http
            .unwrap_or_else(|| is_loopback(registry));
        format!("{}://{host}", if plain { "http" } else { "https" })
    }

    fn repo_url(&self, repo: &Repository, rest: &str) -> String {
        format!("{}/v2/{}/{rest}", self.base_url(&repo.registry), repo.path)
    }

    // ---- credentials and tokens ------------------------------------------

    /// The credentials for `registry`, resolved once and cached.
    fn credentials_for(&self, registry: &str) -> Result<Option<Credentials>> {
        if let Some(c) = self.inner.state.lock().creds.get(registry) {
            return Ok(c.clone());
        }
        let (mut found, file, provider) = {
            let mut cfg = self.inner.config.lock();
            let found = cfg
                .per_registry
                .get(registry)
                .cloned()
                .or_else(|| cfg.any.clone());
            let mut file = None;
            if found.is_none() {
                if let AuthFileState::NotLoaded = cfg.auth_file {
                    cfg.auth_file = AuthFileState::Loaded(AuthFile::load_default()?);
                }
                if let AuthFileState::Loaded(f) = &cfg.auth_file {
                    file = Some(f.clone());
                }
            }
            (found, file, cfg.provider.clone())
        };
        // Helpers run without holding any lock.
        if let (None, Some(f)) = (&found, file) {
            found = f.resolve(registry)?;
        }
        // The callback is asked without holding any lock (it may prompt).
        let found = match (found, provider) {
            (Some(c), _) => Some(c),
            (None, Some(p)) => {
                let realm = self.inner.state.lock().realms.get(registry).cloned();
                p.credentials_for_realm(registry, realm.as_deref())
            }
            (None, None) => None,
        };
        tracing::debug!(
            registry,
            with_credentials = found.is_some(),
            "registry credentials resolved"
        );
        self.inner
            .state
            .lock()
            .creds
            .insert(registry.to_string(), found.clone());
        Ok(found)
    }

    fn had_credentials(&self, registry: &str) -> bool {
        matches!(self.inner.state.lock().creds.get(registry), Some(Some(_)))
    }

    fn scope_key(scopes: &[String]) -> String {
        let mut s = scopes.to_vec();
        s.sort();
        s.dedup();
        s.join(" ")
    }

    /// The `Authorization` header for a request, when the registry is known to
    /// want one. A bearer token not cached yet for these scopes is fetched now.
    fn auth_header(&self, registry: &str, scopes: &[String]) -> Result<Option<String>> {
        let key = (registry.to_string(), Self::scope_key(scopes));
        let bearer = {
            let state = self.inner.state.lock();
            match state.schemes.get(registry) {
                None => return Ok(None),
                Some(AuthScheme::Basic) => None,
                Some(AuthScheme::Bearer { realm, service }) => {
                    if let Some((tok, exp)) = state.tokens.get(&key) {
                        if *exp > Instant::now() {
                            return Ok(Some(format!("Bearer {tok}")));
                        }
                    }
                    Some((realm.clone(), service.clone()))
                }
            }
        };
        match bearer {
            None => Ok(self.credentials_for(registry)?.map(|c| c.basic_header())),
            Some((realm, service)) => {
                let tok = self.fetch_token(registry, &realm, service.as_deref(), scopes, scopes)?;
                Ok(Some(format!("Bearer {tok}")))
            }
        }
    }

    /// Learn from a `401`'s challenge how `registry` authenticates, and get
    /// what the retry needs (a token, or credentials for basic auth).
    fn handle_challenge(
        &self,
        registry: &str,
        url: &str,
        scopes: &[String],
        resp: &Response,
    ) -> Result<()> {
        let headers: Vec<String> = resp
            .headers()
            .get_all(http::header::WWW_AUTHENTICATE)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        let challenges: Vec<Challenge> = headers.iter().flat_map(|h| parse_challenges(h)).collect();
        tracing::debug!(registry, url, ?challenges, "registry challenged");
        if let Some(realm) = challenges
            .iter()
            .find_map(|c| c.param("realm").filter(|r| !r.is_empty()))
        {
            self.inner
                .state
                .lock()
                .realms
                .insert(registry.to_string(), realm.to_string());
        }
        if let Some(c) = challenges.iter().find(|c| c.scheme == "bearer") {
            let realm = c
                .param("realm")
                .filter(|r| !r.is_empty())
                .ok_or_else(|| RegistryError::InvalidResponse {
                    url: url.to_string(),
                    reason: "bearer challenge without a realm".into(),
                })?
                .to_string();
            let service = c.param("service").map(str::to_string);
            let mut all: Vec<String> = scopes.to_vec();
            if let Some(s) = c.param("scope") {
                all.extend(s.split(' ').filter(|s| !s.is_empty()).map(str::to_string));
            }
            self.inner.state.lock().schemes.insert(
                registry.to_string(),
                AuthScheme::Bearer {
                    realm: realm.clone(),
                    service: service.clone(),
                },
            );
            self.fetch_token(registry, &realm, service.as_deref(), &all, scopes)?;
            Ok(())
        } else if challenges.iter().any(|c| c.scheme == "basic") {
            self.inner
                .state
                .lock()
                .schemes
                .insert(registry.to_string(), AuthScheme::Basic);
            match self.credentials_for(registry)? {
                Some(_) => Ok(()),
                None => Err(RegistryError::Unauthorized {
                    registry: registry.to_string(),
                    had_credentials: false,
                }),
            }
        } else if headers.is_empty() {
            Err(RegistryError::Unauthorized {
                registry: registry.to_string(),
                had_credentials: self.had_credentials(registry),
            })
        } else {
            Err(RegistryError::UnsupportedAuth {
                registry: registry.to_string(),
                challenge: headers.join(", "),
            })
        }
    }

    /// Get a bearer token from `realm` for `scopes` (with basic credentials
    /// when there are any), and cache it for requests with `cache_scopes`.
    fn fetch_token(
        &self,
        registry: &str,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
        cache_scopes: &[String],
    ) -> Result<String> {
        let creds = self.credentials_for(registry)?;
        let mut url = realm.to_string();
        let mut sep = if url.contains('?') { '&' } else { '?' };
        if let Some(s) = service {
            url.push_str(&format!("{sep}service={}", query_escape(s)));
            sep = '&';
        }
        let mut sorted = scopes.to_vec();
        sorted.sort();
        sorted.dedup();
        for s in &sorted {
            url.push_str(&format!("{sep}scope={}", query_escape(s)));
            sep = '&';
        }
        let mut headers = Vec::new();
        if let Some(c) = &creds {
            headers.push(("Authorization", c.basic_header()));
        }
        tracing::debug!(registry, realm, scopes = ?sorted, with_credentials = creds.is_some(), "fetching registry token");
        let mut resp = self.send_with_retries("GET", &url, &headers, true)?;
        let status = resp.status().as_u16();
        match status {
            200 => {}
            401 | 403 => {
                return Err(RegistryError::Unauthorized {
                    registry: registry.to_string(),
                    had_credentials: creds.is_some(),
                })
            }
            _ => return Err(http_error("GET", &url, &mut resp)),
        }
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let body = read_limited(&mut resp, &url, 1 << 20)?;
        let t: TokenResponse =
            serde_json::from_slice(&body).map_err(|e| RegistryError::InvalidResponse {
                url: url.clone(),
                reason: format!("token response: {e}"),
            })?;
        let tok = t
            .token
            .filter(|t| !t.is_empty())
            .or(t.access_token.filter(|t| !t.is_empty()))
            .ok_or_else(|| RegistryError::InvalidResponse {
                url: url.clone(),
                reason: "token response without a token".into(),
            })?;
        // Expire a little early; the spec's default lifetime is 60 s.
        let life = t.expires_in.unwrap_or(60);
        let exp = Instant::now() + Duration::from_millis(life.saturating_mul(900));
        self.inner.state.lock().tokens.insert(
            (registry.to_string(), Self::scope_key(cache_scopes)),
            (tok.clone(), exp),
        );
        Ok(tok)
    }

    // ---- requests ---------------------------------------------------------

    /// A bare request (no registry auth), retried on transport errors and
    /// 5xx/429 when `idempotent`.
    fn send_with_retries(
        &self,
        method: &'static str,
        url: &str,
        headers: &[(&'static str, String)],
        idempotent: bool,
    ) -> Result<Response> {
        let mut retry = self.retry();
        loop {
            let mut b = http::Request::builder().method(method).uri(url);
            for (k, v) in headers {
                b = b.header(*k, v.as_str());
            }
            let req = b.body(()).map_err(|e| transport(url, e))?;
            match self.inner.agent.run(req) {
                Ok(r) => {
                    let status = r.status().as_u16();
                    if !retry.again(idempotent && retryable_status(status), retry_after(&r)) {
                        return Ok(r);
                    }
                    tracing::debug!(url, status, "retried");
                }
                Err(e) => {
                    if !retry.again(idempotent && retryable_error(&e), None) {
                        return Err(transport(url, e));
                    }
                    tracing::debug!(url, error = %e, "retried");
                }
            }
        }
    }

    /// A fresh retry budget (see [`retry`]).
    fn retry(&self) -> Retry {
        Retry::new(self.inner.opts.retries, self.inner.opts.retry_backoff)
    }

    /// Run a registry request: authentication (with one retry after a
    /// challenge), and retries of idempotent requests.
    fn execute(&self, mut call: Call<'_>) -> Result<Response> {
        let replayable = !matches!(call.body, ReqBody::Reader(..));
        // Everything with a replayable body may be retried but a PATCH (a
        // retried chunk could be appended twice).
        let idempotent = replayable && call.method != "PATCH";
        let mut retry = self.retry();
        let mut challenged = false;
        loop {
            let auth = self.auth_header(call.registry, &call.scopes)?;
            let mut b = http::Request::builder().method(call.method).uri(&call.url);
            for (k, v) in &call.headers {
                b = b.header(*k, v.as_str());
            }
            if let Some(a) = &auth {
                b = b.header("Authorization", a.as_str());
            }
            let result = match &mut call.body {
                ReqBody::None => b
                    .body(())
                    .map_err(|e| transport(&call.url, e))
                    .map(|r| self.inner.agent.run(r)),
                ReqBody::Bytes(bytes) => b
                    .header("Content-Length", bytes.len().to_string())
                    .body(*bytes)
                    .map_err(|e| transport(&call.url, e))
                    .map(|r| self.inner.agent.run(r)),
                ReqBody::Reader(reader, len) => {
                    let mut limited = reader.take(*len);
                    b.header("Content-Length", len.to_string())
                        .body(ureq::SendBody::from_reader(&mut limited))
                        .map_err(|e| transport(&call.url, e))
                        .map(|r| self.inner.agent.run(r))
                }
            }?;
            match result {
                Err(e) => {
                    if !retry.again(idempotent && retryable_error(&e), None) {
                        return Err(transport(&call.url, e));
                    }
                    tracing::debug!(url = call.url, error = %e, "retried");
                }
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    if status == 401 {
                        if challenged || !replayable {
                            return Err(RegistryError::Unauthorized {
                                registry: call.registry.to_string(),
                                had_credentials: self.had_credentials(call.registry),
                            });
                        }
                        challenged = true;
                        self.handle_challenge(call.registry, &call.url, &call.scopes, &resp)?;
                        continue;
                    }
                    if !retry.again(idempotent && retryable_status(status), retry_after(&resp)) {
                        return Ok(resp);
                    }
                    tracing::debug!(url = call.url, status, "retried");
                }
            }
        }
    }

    /// The error for an unexpected response.
    fn status_error(
        &self,
        method: &str,
        url: &str,
        registry: &str,
        what: impl FnOnce() -> String,
        resp: &mut Response,
    ) -> RegistryError {
        match resp.status().as_u16() {
            401 => RegistryError::Unauthorized {
                registry: registry.to_string(),
                had_credentials: self.had_credentials(registry),
            },
            403 => RegistryError::Denied {
                registry: registry.to_string(),
                what: what(),
            },
            404 => RegistryError::NotFound { what: what() },
            _ => http_error(method, url, resp),
        }
    }

    // ---- operations -------------------------------------------------------

    /// Check that `registry` speaks the v2 API and that the credentials (if it
    /// wants any) are accepted (`GET /v2/`, as `docker login` does).
    pub fn ping(&self, registry: &str) -> Result<()> {
        let url = format!("{}/v2/", self.base_url(registry));
        let mut resp = self.execute(Call {
            method: "GET",
            url: url.clone(),
            registry,
            scopes: Vec::new(),
            headers: Vec::new(),
            body: ReqBody::None,
        })?;
        match resp.status().as_u16() {
            200 => Ok(()),
            _ => Err(self.status_error(
                "GET",
                &url,
                registry,
                || format!("registry {registry}"),
                &mut resp,
            )),
        }
    }

    /// `GET` or `HEAD` a manifest by tag or digest; any status but 200 is an error.
    fn manifest_request(
        &self,
        method: &'static str,
        repo: &Repository,
        reference: &str,
    ) -> Result<(String, Response)> {
        let url = self.repo_url(repo, &format!("manifests/{reference}"));
        let mut resp = self.execute(Call {
            headers: vec![("Accept", MANIFEST_ACCEPT.to_string())],
            ..Call::pull(method, &url, repo)
        })?;
        if resp.status().as_u16() != 200 {
            return Err(self.status_error(
                method,
                &url,
                &repo.registry,
                || manifest_what(repo, reference),
                &mut resp,
            ));
        }
        Ok((url, resp))
    }

    /// Fetch a manifest or index by tag or digest. Its digest is verified
    /// against `reference` when that is a digest, and against the registry's
    /// `Docker-Content-Digest` when it sent one.
    pub fn get_manifest(&self, repo: &Repository, reference: &str) -> Result<Manifest> {
        let (url, mut resp) = self.manifest_request("GET", repo, reference)?;
        let header_digest = header_str(&resp, "docker-content-digest");
        let content_type = header_str(&resp, "content-type");
        if let Some(len) = header_str(&resp, "content-length").and_then(|l| l.parse::<u64>().ok()) {
            if len > MAX_MANIFEST_SIZE {
                return Err(RegistryError::InvalidResponse {
                    url,
                    reason: format!(
                        "manifest of {len} bytes is larger than the {MAX_MANIFEST_SIZE} allowed"
                    ),
                });
            }
        }
        let bytes = read_limited(&mut resp, &url, MAX_MANIFEST_SIZE)?;
        let what = || manifest_what(repo, reference);
        let digest = if is_digest(reference) {
            verify_digest(&bytes, reference, what)?;
            reference.to_string()
        } else {
            storectl_storage::digest::sha256_digest(&bytes)
        };
        if let Some(h) = header_digest.filter(|h| is_digest(h)) {
            verify_digest(&bytes, &h, what)?;
        }
        let media_type = manifest_media_type(content_type.as_deref(), &bytes);
        tracing::debug!(%repo, reference, %digest, media_type, size = bytes.len(), "fetched manifest");
        Ok(Manifest {
            bytes,
            media_type,
            digest,
        })
    }

    /// Fetch the image manifest for `platform`: when `reference` names an
    /// index, the matching entry is picked and fetched. Returns the index (if
    /// there was one) and the image manifest.
    pub fn get_platform_manifest(
        &self,
        repo: &Repository,
        reference: &str,
        platform: &Platform,
    ) -> Result<(Option<Manifest>, Manifest)> {
        let top = self.get_manifest(repo, reference)?;
        if !top.is_index() {
            return Ok((None, top));
        }
        let d = pick_manifest(&top.bytes, platform)?;
        let m = self.get_manifest(repo, &d.digest)?;
        if m.is_index() {
            return Err(RegistryError::InvalidManifest {
                what: format!("manifest {}", manifest_what(repo, &d.digest)),
                reason: "an index entry for a platform is itself an index".into(),
            });
        }
        Ok((Some(top), m))
    }

    /// The descriptor (media type, digest, size) of a manifest, by `HEAD` when
    /// the registry tells enough, else by fetching it.
    pub fn resolve(&self, repo: &Repository, reference: &str) -> Result<Descriptor> {
        let (_, resp) = self.manifest_request("HEAD", repo, reference)?;
        let digest = header_str(&resp, "docker-content-digest")
            .filter(|d| is_digest(d))
            .or_else(|| is_digest(reference).then(|| reference.to_string()));
        let media_type = header_str(&resp, "content-type")
            .map(|c| c.split(';').next().unwrap_or("").trim().to_string())
            .filter(|c| is_manifest_media_type(c));
        let size = header_str(&resp, "content-length").and_then(|l| l.parse::<u64>().ok());
        if let (Some(digest), Some(media_type), Some(size)) = (digest, media_type, size) {
            return Ok(Descriptor {
                media_type,
                digest,
                size,
                annotations: None,
                platform: None,
            });
        }
        let m = self.get_manifest(repo, reference)?;
        Ok(Descriptor {
            media_type: m.media_type,
            digest: m.digest,
            size: m.bytes.len() as u64,
            annotations: None,
            platform: None,
        })
    }

    /// The size of a blob, or `None` when the repository does not have it.
    pub fn head_blob(&self, repo: &Repository, digest: &str) -> Result<Option<u64>> {
        let url = self.repo_url(repo, &format!("blobs/{digest}"));
        let mut resp = self.execute(Call::pull("HEAD", &url, repo))?;
        match resp.status().as_u16() {
            200 => Ok(Some(
                header_str(&resp, "content-length")
                    .and_then(|l| l.parse().ok())
                    .unwrap_or(0),
            )),
            404 => Ok(None),
            _ => Err(self.status_error(
                "HEAD",
                &url,
                &repo.registry,
                || blob_what(repo, digest),
                &mut resp,
            )),
        }
    }

    /// Stream a blob from byte `offset`. A download that breaks is resumed
    /// with `Range` up to [`ClientOptions::retries`] times; read from offset 0,
    /// the content is checked against `digest` at EOF (a mismatch is an
    /// `io::ErrorKind::InvalidData` error wrapping
    /// [`RegistryError::DigestMismatch`]).
    pub fn get_blob(&self, repo: &Repository, digest: &str, offset: u64) -> Result<BlobReader> {
        BlobReader::open(self.clone(), repo.clone(), digest.to_string(), offset)
    }

    /// `GET` of a blob from `offset` (used by [`BlobReader`]).
    fn open_blob(
        &self,
        repo: &Repository,
        digest: &str,
        offset: u64,
    ) -> Result<(Response, String)> {
        let url = self.repo_url(repo, &format!("blobs/{digest}"));
        let mut headers = Vec::new();
        if offset > 0 {
            headers.push(("Range", format!("bytes={offset}-")));
        }
        let mut resp = self.execute(Call {
            headers,
            ..Call::pull("GET", &url, repo)
        })?;
        match resp.status().as_u16() {
            200 | 206 | 416 => Ok((resp, url)),
            _ => Err(self.status_error(
                "GET",
                &url,
                &repo.registry,
                || blob_what(repo, digest),
                &mut resp,
            )),
        }
    }

    /// Upload a blob of `size` bytes read from `reader`, which must hash to
    /// `digest`. With [`UploadOptions::mount_from`], a cross-repository mount
    /// is tried first (nothing is read when it works). Whether the blob is
    /// already there is the caller's business ([`head_blob`](Self::head_blob)).
    pub fn push_blob(
        &self,
        repo: &Repository,
        digest: &str,
        size: u64,
        reader: &mut dyn Read,
        opts: &UploadOptions,
    ) -> Result<BlobPushed> {
        let mut scopes = vec![repo.push_scope()];
        let mut url = self.repo_url(repo, "blobs/uploads/");
        if let Some(from) = &opts.mount_from {
            scopes.push(format!("repository:{from}:pull"));
            url.push_str(&format!(
                "?mount={}&from={}",
                query_escape(digest),
                query_escape(from)
            ));
        }
        let mut resp = self.execute(Call {
            method: "POST",
            url: url.clone(),
            registry: &repo.registry,
            scopes: scopes.clone(),
            headers: Vec::new(),
            body: ReqBody::Bytes(&[]),
        })?;
        let status = resp.status().as_u16();
        if status == 201 && opts.mount_from.is_some() {
            tracing::debug!(%repo, digest, from = opts.mount_from.as_deref(), "blob mounted");
            return Ok(BlobPushed::Mounted);
        }
        if status != 202 {
            return Err(self.status_error(
                "POST",
                &url,
                &repo.registry,
                || format!("repository {repo}"),
                &mut resp,
            ));
        }
        let mut location = self.location(&repo.registry, &url, &resp)?;
        let final_body = match opts.chunk_size {
            Some(chunk) if chunk > 0 => {
                let mut buf = vec![0u8; chunk.min(64 << 20) as usize];
                let mut sent = 0u64;
                while sent < size {
                    let want = (size - sent).min(buf.len() as u64) as usize;
                    reader
                        .read_exact(&mut buf[..want])
                        .map_err(|e| RegistryError::Io {
                            what: format!("reading blob {digest}"),
                            source: e,
                        })?;
                    let mut resp = self.execute(Call {
                        method: "PATCH",
                        url: location.clone(),
                        registry: &repo.registry,
                        scopes: scopes.clone(),
                        headers: vec![
                            ("Content-Type", "application/octet-stream".into()),
                            (
                                "Content-Range",
                                format!("{}-{}", sent, sent + want as u64 - 1),
                            ),
                        ],
                        body: ReqBody::Bytes(&buf[..want]),
                    })?;
                    if resp.status().as_u16() != 202 {
                        return Err(self.status_error(
                            "PATCH",
                            &location,
                            &repo.registry,
                            || blob_what(repo, digest),
                            &mut resp,
                        ));
                    }
                    location = self.location(&repo.registry, &location, &resp)?;
                    sent += want as u64;
                }
                ReqBody::Bytes(&[])
            }
            _ => ReqBody::Reader(reader, size),
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let put_url = format!("{location}{sep}digest={}", query_escape(digest));
        let mut resp = self.execute(Call {
            method: "PUT",
            url: put_url.clone(),
            registry: &repo.registry,
            scopes,
            headers: vec![("Content-Type", "application/octet-stream".into())],
            body: final_body,
        })?;
        if resp.status().as_u16() != 201 {
            return Err(self.status_error(
                "PUT",
                &put_url,
                &repo.registry,
                || blob_what(repo, digest),
                &mut resp,
            ));
        }
        if let Some(h) = header_str(&resp, "docker-content-digest") {
            if h != digest {
                return Err(RegistryError::DigestMismatch {
                    what: blob_what(repo, digest),
                    expected: digest.to_string(),
                    found: h,
                });
            }
        }
        tracing::debug!(%repo, digest, size, "blob uploaded");
        Ok(BlobPushed::Uploaded)
    }

    /// Upload a manifest under `reference` (a tag or its digest). Returns its digest.
    pub fn put_manifest(
        &self,
        repo: &Repository,
        reference: &str,
        bytes: &[u8],
        media_type: &str,
    ) -> Result<String> {
        let digest = storectl_storage::digest::sha256_digest(bytes);
        if is_digest(reference) {
            verify_digest(bytes, reference, || manifest_what(repo, reference))?;
        }
        let url = self.repo_url(repo, &format!("manifests/{reference}"));
        let mut resp = self.execute(Call {
            method: "PUT",
            url: url.clone(),
            registry: &repo.registry,
            scopes: vec![repo.push_scope()],
            headers: vec![("Content-Type", media_type.to_string())],
            body: ReqBody::Bytes(bytes),
        })?;
        if !matches!(resp.status().as_u16(), 200 | 201) {
            return Err(self.status_error(
                "PUT",
                &url,
                &repo.registry,
                || format!("repository {repo}"),
                &mut resp,
            ));
        }
        if let Some(h) = header_str(&resp, "docker-content-digest") {
            if h.starts_with("sha256:") && h != digest {
                return Err(RegistryError::DigestMismatch {
                    what: manifest_what(repo, reference),
                    expected: digest,
                    found: h,
                });
            }
        }
        tracing::debug!(%repo, reference, %digest, "manifest pushed");
        Ok(digest)
    }

    /// The tags of a repository (following `Link` pagination).
    pub fn list_tags(&self, repo: &Repository) -> Result<Vec<String>> {
        #[derive(serde::Deserialize)]
        struct Tags {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let mut url = self.repo_url(repo, "tags/list");
        let mut out = Vec::new();
        for _ in 0..1000 {
            let mut resp = self.execute(Call::pull("GET", &url, repo))?;
            if resp.status().as_u16() != 200 {
                return Err(self.status_error(
                    "GET",
                    &url,
                    &repo.registry,
                    || format!("repository {repo}"),
                    &mut resp,
                ));
            }
            let next = header_str(&resp, "link").and_then(|l| parse_link_next(&l));
            let body = read_limited(&mut resp, &url, 16 << 20)?;
            let t: Tags =
                serde_json::from_slice(&body).map_err(|e| RegistryError::InvalidResponse {
                    url: url.clone(),
                    reason: e.to_string(),
                })?;
            out.extend(t.tags.unwrap_or_default());
            match next {
                Some(n) => url = resolve_location(&self.base_url(&repo.registry), &url, &n),
                None => break,
            }
        }
        Ok(out)
    }

    /// The absolute `Location` of a response.
    fn location(&self, registry: &str, url: &str, resp: &Response) -> Result<String> {
        let loc = header_str(resp, "location").ok_or_else(|| RegistryError::InvalidResponse {
            url: url.to_string(),
            reason: "upload response without a Location".into(),
        })?;
        Ok(resolve_location(&self.base_url(registry), url, &loc))
    }
}

// ---- helpers (pure) --------------------------------------------------------

fn manifest_what(repo: &Repository, reference: &str) -> String {
    if is_digest(reference) {
        format!("manifest {repo}@{reference}")
    } else {
        format!("manifest {repo}:{reference}")
    }
}

fn blob_what(repo: &Repository, digest: &str) -> String {
    format!("blob {digest} in {repo}")
}

fn is_digest(s: &str) -> bool {
    storectl_storage::reference::validate_digest(s).is_ok()
}

/// The media type of a manifest: the `Content-Type` when it is a manifest
/// type, else the document's `mediaType`, else guessed from its shape.
fn manifest_media_type(content_type: Option<&str>, bytes: &[u8]) -> String {
    let ct = content_type
        .map(|c| c.split(';').next().unwrap_or("").trim())
        .unwrap_or("");
    if is_manifest_media_type(ct) {
        return ct.to_string();
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Probe>(bytes) {
        Ok(Probe {
            media_type: Some(m),
            ..
        }) if !m.is_empty() => m,
        Ok(Probe {
            manifests: Some(_), ..
        }) => spec::OCI_INDEX.to_string(),
        _ if !ct.is_empty() && ct != "application/json" && ct != "application/octet-stream" => {
            ct.to_string()
        }
        _ => spec::OCI_MANIFEST.to_string(),
    }
}

/// Check `bytes` hash to `digest` (sha256 or sha512).
fn verify_digest(bytes: &[u8], digest: &str, what: impl FnOnce() -> String) -> Result<()> {
    let found = match digest.split_once(':') {
        Some(("sha512", _)) => format!("sha512:{}", hex::encode(sha2::Sha512::digest(bytes))),
        _ => storectl_storage::digest::sha256_digest(bytes),
    };
    if found == digest {
        Ok(())
    } else {
        Err(RegistryError::DigestMismatch {
            what: what(),
            expected: digest.to_string(),
            found,
        })
    }
}

fn header_str(resp: &Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The `Retry-After` of a response, as a wait from now.
fn retry_after(resp: &Response) -> Option<Duration> {
    header_str(resp, "retry-after")
        .and_then(|v| retry::parse_retry_after(&v, std::time::SystemTime::now()))
}

fn transport(url: &str, e: impl std::error::Error + Send + Sync + 'static) -> RegistryError {
    RegistryError::Transport {
        url: url.to_string(),
        source: Box::new(e),
    }
}

fn read_limited(resp: &mut Response, url: &str, limit: u64) -> Result<Vec<u8>> {
    resp.body_mut()
        .with_config()
        .limit(limit)
        .read_to_vec()
        .map_err(|e| match e {
            ureq::Error::BodyExceedsLimit(_) => RegistryError::InvalidResponse {
                url: url.to_string(),
                reason: format!("response larger than {limit} bytes"),
            },
            e => transport(url, e),
        })
}

/// An `Http` error with a one-line snippet of the body: the registry's
/// `errors[].code: message` when it sent the standard JSON.
fn http_error(method: &str, url: &str, resp: &mut Response) -> RegistryError {
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .with_config()
        .limit(64 << 10)
        .lossy_utf8(true)
        .read_to_vec()
        .unwrap_or_default();
    RegistryError::Http {
        method: method.to_string(),
        status,
        url: url.to_string(),
        body: body_snippet(&body),
    }
}

fn body_snippet(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<ErrorEntry>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorEntry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    if let Ok(e) = serde_json::from_slice::<Errors>(body) {
        if !e.errors.is_empty() {
            return e
                .errors
                .iter()
                .map(|e| match (e.code.is_empty(), e.message.is_empty()) {
                    (false, false) => format!("{}: {}", e.code, e.message),
                    (false, true) => e.code.clone(),
                    _ => e.message.clone(),
                })
                .collect::<Vec<_>>()
                .join("; ");
        }
    }
    let text = String::from_utf8_lossy(body);
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &one_line[..i]),
        None => one_line,
    }
}

/// Whether a registry (`host[:port]`) is on a loopback address.
pub fn is_loopback(registry: &str) -> bool {
    if let Ok(ip) = registry.parse::<std::net::IpAddr>() {
        return ip.is_loopback();
    }
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        match registry.rsplit_once(':') {
            Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => registry,
        }
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Percent-encode a query value (everything but RFC 3986 unreserved characters).
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Resolve a `Location` (absolute, absolute-path, or relative) against the
/// request URL.
fn resolve_location(base: &str, request_url: &str, loc: &str) -> String {
    if loc.starts_with("http://") || loc.starts_with("https://") {
        loc.to_string()
    } else if loc.starts_with('/') {
        format!("{base}{loc}")
    } else {
        let path = request_url.split('?').next().unwrap_or(request_url);
        match path.rfind('/') {
            Some(i) => format!("{}/{loc}", &path[..i]),
            None => format!("{base}/{loc}"),
        }
    }
}

/// The `rel="next"` target of a `Link` header.
fn parse_link_next(link: &str) -> Option<String> {
    link.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        params
            .split(';')
            .any(|p| {
                let p = p.trim().replace(' ', "");
                p == "rel=\"next\"" || p == "rel=next"
            })
            .then(|| target.to_string())
    })
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn thread_safety() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>() {}
        send_sync::<RegistryClient>();
        send_sync::<RegistryError>();
        send::<BlobReader>();
    }

    #[test]
    fn loopback_detection() {
        let cases = [
            ("127.0.0.1:5000", true),
            ("127.1.2.3", true),
            ("localhost", true),
            ("LOCALHOST:80", true),
            ("[::1]:5000", true),
            ("[::1]", true),
            ("::1", true),
            ("10.0.0.1:5000", false),
            ("docker.io", false),
            ("localhost.example.com", false),
            ("[fe80::1]:5000", false),
        ];
        for (reg, want) in cases {
            assert_eq!(is_loopback(reg), want, "{reg}");
        }
        let c = RegistryClient::new(ClientOptions::default());
        assert_eq!(c.base_url("127.0.0.1:5000"), "http://127.0.0.1:5000");
        assert_eq!(c.base_url("docker.io"), "https://registry-1.docker.io");
        assert_eq!(c.base_url("quay.io"), "https://quay.io");
        let c = RegistryClient::new(ClientOptions {
            plain_http: Some(false),
            ..ClientOptions::default()
        });
        assert_eq!(c.base_url("127.0.0.1:5000"), "https://127.0.0.1:5000");
        let c = RegistryClient::new(ClientOptions {
            plain_http: Some(true),
            ..ClientOptions::default()
        });
        assert_eq!(c.base_url("reg.lan:5000"), "http://reg.lan:5000");
    }

    #[test]
    fn helpers() {
        assert_eq!(
            query_escape("repository:a/b:pull,push"),
            "repository%3Aa%2Fb%3Apull%2Cpush"
        );
        let cases = [
            (
                "http://h/v2/a/blobs/uploads/",
                "/v2/a/blobs/uploads/u?x=1",
                "http://h/v2/a/blobs/uploads/u?x=1",
            ),
            (
                "http://h/v2/a/blobs/uploads/",
                "https://s3/x",
                "https://s3/x",
            ),
            (
                "http://h/v2/a/blobs/uploads/?m=1",
                "u",
                "http://h/v2/a/blobs/uploads/u",
            ),
        ];
        for (req, loc, want) in cases {
            assert_eq!(resolve_location("http://h", req, loc), want);
        }
        assert_eq!(
            parse_link_next(r#"</v2/a/tags/list?last=b&n=2>; rel="next""#).as_deref(),
            Some("/v2/a/tags/list?last=b&n=2")
        );
        assert_eq!(parse_link_next(r#"</x>; rel="prev""#), None);
        assert_eq!(
            body_snippet(br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}"#),
            "MANIFEST_UNKNOWN: manifest unknown"
        );
        assert_eq!(body_snippet(b"  not\n found  "), "not found");
        assert_eq!(body_snippet(&[b'x'; 300]).chars().count(), 201);
        let m = |ct: Option<&str>, body: &str| manifest_media_type(ct, body.as_bytes());
        assert_eq!(m(Some(spec::DOCKER_LIST), "{}"), spec::DOCKER_LIST);
        assert_eq!(
            m(
                Some("application/vnd.oci.image.index.v1+json; charset=utf-8"),
                "{}"
            ),
            spec::OCI_INDEX
        );
        assert_eq!(
            m(
                Some("application/json"),
                r#"{"mediaType":"application/vnd.docker.distribution.manifest.v2+json"}"#
            ),
            spec::DOCKER_MANIFEST
        );
        assert_eq!(m(None, r#"{"manifests":[]}"#), spec::OCI_INDEX);
        assert_eq!(m(None, r#"{"layers":[]}"#), spec::OCI_MANIFEST);
        let d = storectl_storage::digest::sha256_digest(b"abc");
        assert!(verify_digest(b"abc", &d, || "x".into()).is_ok());
        match verify_digest(b"abd", &d, || "x".into()) {
            Err(RegistryError::DigestMismatch { expected, .. }) => assert_eq!(expected, d),
            other => panic!("{other:?}"),
        }
        let e = RegistryError::Unauthorized {
            registry: "127.0.0.1:5000".into(),
            had_credentials: true,
        };
        assert_eq!(
            e.to_string(),
            "authentication to 127.0.0.1:5000 failed: wrong username or password"
        );
    }
}
