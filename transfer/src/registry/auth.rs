//! Credentials (explicit, docker `config.json`-style auth files, callbacks) and
//! the `WWW-Authenticate` challenge parser.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;

use super::error::{RegistryError, Result};

/// A username and password (or token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl Credentials {
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Credentials {
            username: username.into(),
            password: password.into(),
        }
    }

    /// Parse `user:password` (as `--creds` takes it). The password may contain `:`.
    pub fn parse(s: &str) -> Option<Self> {
        let (u, p) = s.split_once(':')?;
        (!u.is_empty()).then(|| Credentials::new(u, p))
    }

    /// The value of an `Authorization: Basic …` header.
    pub fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

impl fmt::Debug for Credentials {
    /// Never shows the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Asked for credentials when a registry challenges (`registry` is `host[:port]`,
/// e.g. `docker.io`, `127.0.0.1:5000`). Returning `None` means "no credentials":
/// the request goes on anonymously.
pub trait CredentialsProvider: Send + Sync {
    fn credentials(&self, registry: &str) -> Option<Credentials>;

    /// The same, told the realm of the registry's challenge when it sent one
    /// (a daemon passes it on to the client it asks). By default the realm
    /// is not used.
    fn credentials_for_realm(&self, registry: &str, realm: Option<&str>) -> Option<Credentials> {
        let _ = realm;
        self.credentials(registry)
    }
}

impl<F> CredentialsProvider for F
where
    F: Fn(&str) -> Option<Credentials> + Send + Sync,
{
    fn credentials(&self, registry: &str) -> Option<Credentials> {
        self(registry)
    }
}

/// The keys under which a docker-style auth file may hold a registry's entry.
pub(crate) fn registry_key_aliases(registry: &str) -> Vec<String> {
    if matches!(
        registry,
        "docker.io" | "index.docker.io" | "registry-1.docker.io"
    ) {
        vec![
            "docker.io".into(),
            "index.docker.io".into(),
            "registry-1.docker.io".into(),
        ]
    } else {
        vec![registry.to_string()]
    }
}

/// `https://index.docker.io/v1/` → `index.docker.io`; `quay.io/org/repo` stays.
fn normalize_auth_key(key: &str) -> String {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let k = k.trim_end_matches('/');
    // Docker's legacy keys carry an API version path (`/v1`, `/v2`).
    let k = k
        .strip_suffix("/v1")
        .or_else(|| k.strip_suffix("/v2"))
        .unwrap_or(k);
    k.to_string()
}

/// A parsed docker `config.json` / containers `auth.json`: the `auths` map,
/// keyed by registry host (or `host/namespace/repo`, the most specific wins),
/// and the credential helpers (`credHelpers` per registry, `credsStore` for
/// all).
///
/// Inline credentials are `auth` = base64 `user:password`, or `username` +
/// `password`. [`AuthFile::resolve`] asks a helper first, as docker does: the
/// registry's `credHelpers` entry, else `credsStore` (falling back to the
/// inline entry when the store has none) — `docker-credential-NAME get`
/// with the server on stdin. `identitytoken` entries (and helpers answering
/// with one) are not supported and are skipped.
#[derive(Debug, Clone, Default)]
pub struct AuthFile {
    /// Where it was read from (`None` when parsed from memory).
    pub path: Option<PathBuf>,
    entries: BTreeMap<String, Credentials>,
    /// Registry host → helper name (`credHelpers`).
    helpers: BTreeMap<String, String>,
    /// The helper for every registry (`credsStore`).
    store: Option<String>,
}

#[derive(serde::Deserialize)]
struct RawAuthFile {
    #[serde(default)]
    auths: HashMap<String, RawAuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: HashMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

/// Whether `name` may be a helper's name: it becomes part of a program name
/// (`docker-credential-NAME`), so no path characters.
fn valid_helper_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// What a helper names a registry by: Docker Hub's legacy URL, else the host.
fn helper_server(registry: &str) -> String {
    if registry_key_aliases(registry).len() > 1 {
        "https://index.docker.io/v1/".to_string()
    } else {
        registry.to_string()
    }
}

/// A helper's `get` answer (`{"ServerURL", "Username", "Secret"}`) as
/// credentials (pure). An identity token (`Username` `<token>`) is none.
pub fn parse_helper_output(stdout: &[u8]) -> Result<Option<Credentials>, String> {
    #[derive(serde::Deserialize)]
    struct Answer {
        #[serde(rename = "Username", default)]
        username: String,
        #[serde(rename = "Secret", default)]
        secret: String,
    }
    let a: Answer = serde_json::from_slice(stdout).map_err(|e| format!("not JSON: {e}"))?;
    if a.username.is_empty() || a.username == "<token>" {
        return Ok(None);
    }
    Ok(Some(Credentials::new(a.username, a.secret)))
}

/// How long a helper may take.
const HELPER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Run `docker-credential-NAME get` for `server`. A helper that is not
/// installed, or that has nothing for the server, gives none (with a
/// warning for the former).
pub fn run_helper(name: &str, server: &str) -> Result<Option<Credentials>> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let program = format!("docker-credential-{name}");
    let err = |reason: String| RegistryError::CredentialHelper {
        helper: program.clone(),
        reason,
    };
    let mut child = match Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!("credential helper {program} is not installed; going on without it");
            return Ok(None);
        }
        Err(e) => return Err(err(e.to_string())),
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(format!("{server}\n").as_bytes());
    }
    let deadline = std::time::Instant::now() + HELPER_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(err(format!("no answer in {}s", HELPER_TIMEOUT.as_secs())));
            }
            Err(e) => return Err(err(e.to_string())),
        }
    }
    let out = child.wait_with_output().map_err(|e| err(e.to_string()))?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        if text.to_ascii_lowercase().contains("credentials not found") {
            return Ok(None);
        }
        let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
        return Err(err(format!("{}: {line}", out.status)));
    }
    parse_helper_output(&out.stdout).map_err(err)
}

#[derive(serde::Deserialize)]
struct RawAuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

impl AuthFile {
    /// Parse the JSON text of an auth file (pure). Entries without usable
    /// credentials are skipped; an `auth` that is not base64 `user:password` is
    /// an error naming the registry key.
    pub fn parse(json: &[u8]) -> Result<Self, String> {
        let raw: RawAuthFile = serde_json::from_slice(json).map_err(|e| e.to_string())?;
        let mut entries = BTreeMap::new();
        for (key, entry) in raw.auths {
            let creds = match (&entry.auth, &entry.username, &entry.password) {
                (Some(a), _, _) if !a.is_empty() => {
                    let decoded = base64::engine::general_purpose::STANDARD
                        .decode(a.trim())
                        .map_err(|e| format!("auths[{key:?}].auth: not base64: {e}"))?;
                    let text = String::from_utf8(decoded)
                        .map_err(|_| format!("auths[{key:?}].auth: not UTF-8"))?;
                    Credentials::parse(&text).ok_or_else(|| {
                        format!("auths[{key:?}].auth: not of the form username:password")
                    })?
                }
                (_, Some(u), Some(p)) if !u.is_empty() => Credentials::new(u, p),
                _ => continue,
            };
            entries.insert(normalize_auth_key(&key), creds);
        }
        let mut helpers = BTreeMap::new();
        for (key, name) in raw.cred_helpers {
            if !valid_helper_name(&name) {
                return Err(format!(
                    "credHelpers[{key:?}]: {name:?} is not a helper name"
                ));
            }
            helpers.insert(normalize_auth_key(&key), name);
        }
        let store = match raw.creds_store.filter(|s| !s.is_empty()) {
            Some(s) if !valid_helper_name(&s) => {
                return Err(format!("credsStore: {s:?} is not a helper name"))
            }
            s => s,
        };
        Ok(AuthFile {
            path: None,
            entries,
            helpers,
            store,
        })
    }

    /// The credentials for `registry`: its credential helper's, else the
    /// `credsStore` helper's, else the inline entry (see [`AuthFile`]).
    pub fn resolve(&self, registry: &str) -> Result<Option<Credentials>> {
        self.resolve_with(registry, &run_helper)
    }

    /// [`resolve`](Self::resolve) with `run(helper, server)` standing for
    /// running a helper.
    pub fn resolve_with(
        &self,
        registry: &str,
        run: &dyn Fn(&str, &str) -> Result<Option<Credentials>>,
    ) -> Result<Option<Credentials>> {
        for host in registry_key_aliases(registry) {
            if let Some(h) = self.helpers.get(&host) {
                return run(h, &helper_server(registry));
            }
        }
        if let Some(store) = &self.store {
            if let Some(c) = run(store, &helper_server(registry))? {
                return Ok(Some(c));
            }
        }
        Ok(self.lookup(registry, None).cloned())
    }

    /// Read and parse `path`. A missing file is an empty auth file.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(AuthFile {
                    path: Some(path.to_path_buf()),
                    ..AuthFile::default()
                })
            }
            Err(e) => {
                return Err(RegistryError::AuthFile {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })
            }
        };
        let mut f = AuthFile::parse(&bytes).map_err(|reason| RegistryError::AuthFile {
            path: path.to_path_buf(),
            reason,
        })?;
        f.path = Some(path.to_path_buf());
        Ok(f)
    }

    /// Where the default auth file is: `$REGISTRY_AUTH_FILE`, else
    /// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
    pub fn default_path() -> Option<PathBuf> {
        default_path_from(|k| std::env::var_os(k))
    }

    /// Load the default auth file (empty when there is none).
    pub fn load_default() -> Result<Self> {
        match Self::default_path() {
            Some(p) => Self::load(&p),
            None => Ok(AuthFile::default()),
        }
    }

    /// The credentials for `registry` (`host[:port]`), optionally for the
    /// repository `repo` in it: the longest matching `host/namespace…` key wins.
    pub fn lookup(&self, registry: &str, repo: Option<&str>) -> Option<&Credentials> {
        for host in registry_key_aliases(registry) {
            if let Some(repo) = repo {
                let full = format!("{host}/{repo}");
                let mut cut = full.as_str();
                while cut.len() > host.len() {
                    if let Some(c) = self.entries.get(cut) {
                        return Some(c);
                    }
                    cut = &cut[..cut.rfind('/').unwrap_or(0)];
                }
            }
            if let Some(c) = self.entries.get(&host) {
                return Some(c);
            }
        }
        None
    }

    /// How many usable entries it has.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.helpers.is_empty() && self.store.is_none()
    }
}

impl CredentialsProvider for AuthFile {
    fn credentials(&self, registry: &str) -> Option<Credentials> {
        self.lookup(registry, None).cloned()
    }
}

fn default_path_from(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> Option<PathBuf> {
    if let Some(p) = var("REGISTRY_AUTH_FILE").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    if let Some(d) = var("DOCKER_CONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(d).join("config.json"));
    }
    var("HOME")
        .filter(|p| !p.is_empty())
        .map(|h| PathBuf::from(h).join(".docker/config.json"))
}

/// One challenge of a `WWW-Authenticate` header: a scheme (lowercased) and its
/// parameters (names lowercased).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: String,
    pub params: BTreeMap<String, String>,
}

impl Challenge {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }
}

/// Parse a `WWW-Authenticate` header value into its challenges (RFC 7235):
/// `Bearer realm="https://auth.io/token",service="reg",scope="repository:a:pull,push"`,
/// possibly several (`Basic realm="x", Bearer realm="y"`). Malformed parts are
/// skipped, never a panic.
pub fn parse_challenges(header: &str) -> Vec<Challenge> {
    let mut out: Vec<Challenge> = Vec::new();
    let mut p = Parser {
        s: header.as_bytes(),
        i: 0,
    };
    loop {
        p.skip_ws_and_commas();
        if p.done() {
            break;
        }
        let Some(word) = p.token() else {
            p.i += 1; // junk: skip a byte
            continue;
        };
        p.skip_ws();
        if p.peek() == Some(b'=') && !out.is_empty() {
            // `name=value` parameter of the current challenge.
            p.i += 1;
            p.skip_ws();
            let value = if p.peek() == Some(b'"') {
                p.quoted()
            } else {
                p.token().unwrap_or_default()
            };
            if let Some(c) = out.last_mut() {
                c.params.insert(word.to_ascii_lowercase(), value);
            }
        } else if p.peek() == Some(b'=') {
            // A parameter before any scheme: junk; skip its value.
            p.i += 1;
            p.skip_ws();
            if p.peek() == Some(b'"') {
                p.quoted();
            } else {
                p.token();
            }
        } else {
            out.push(Challenge {
                scheme: word.to_ascii_lowercase(),
                params: BTreeMap::new(),
            });
        }
    }
    out
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn done(&self) -> bool {
        self.i >= self.s.len()
    }
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }
    fn skip_ws_and_commas(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b',')) {
            self.i += 1;
        }
    }
    /// An RFC 7230 token (plus `/` so unquoted URLs and token68 values survive).
    fn token(&mut self) -> Option<String> {
        let start = self.i;
        while let Some(b) = self.peek() {
            let ok = b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/:".contains(&b);
            if !ok {
                break;
            }
            self.i += 1;
        }
        (self.i > start).then(|| String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }
    /// A quoted string starting at `"`; backslash escapes; an unterminated one
    /// runs to the end.
    fn quoted(&mut self) -> String {
        let mut out = Vec::new();
        self.i += 1;
        while let Some(b) = self.peek() {
            self.i += 1;
            match b {
                b'"' => break,
                b'\\' => {
                    if let Some(n) = self.peek() {
                        out.push(n);
                        self.i += 1;
                    }
                }
                _ => out.push(b),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(scheme: &str, params: &[(&str, &str)]) -> Challenge {
        Challenge {
            scheme: scheme.into(),
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn challenges() {
        let cases: Vec<(&str, Vec<Challenge>)> = vec![
            (
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
                vec![ch(
                    "bearer",
                    &[
                        ("realm", "https://auth.docker.io/token"),
                        ("service", "registry.docker.io"),
                        ("scope", "repository:library/busybox:pull"),
                    ],
                )],
            ),
            (
                r#"Basic realm="Registry Realm""#,
                vec![ch("basic", &[("realm", "Registry Realm")])],
            ),
            // Commas inside quotes, spaces around '=' and ',', case-insensitive names.
            (
                r#"bearer Realm = "http://127.0.0.1:1/t" , scope="repository:a/b:pull,push""#,
                vec![ch(
                    "bearer",
                    &[
                        ("realm", "http://127.0.0.1:1/t"),
                        ("scope", "repository:a/b:pull,push"),
                    ],
                )],
            ),
            // Several challenges in one header; unquoted values; escapes.
            (
                r#"Basic realm=x, Bearer realm="y\"z",error=insufficient_scope"#,
                vec![
                    ch("basic", &[("realm", "x")]),
                    ch(
                        "bearer",
                        &[("realm", "y\"z"), ("error", "insufficient_scope")],
                    ),
                ],
            ),
            ("Negotiate", vec![ch("negotiate", &[])]),
            ("", vec![]),
            // Junk never panics.
            (
                r#"Bearer realm="unterminated"#,
                vec![ch("bearer", &[("realm", "unterminated")])],
            ),
            ("Bearer ;;; realm=a", vec![ch("bearer", &[("realm", "a")])]),
        ];
        for (header, want) in cases {
            assert_eq!(parse_challenges(header), want, "{header}");
        }
        for junk in [
            "=",
            "\"",
            "\\",
            "=x, \"a",
            ",,,",
            "a=b=c",
            "B \"\\",
            "\u{e9}=\u{e9}",
        ] {
            let _ = parse_challenges(junk);
        }
    }

    #[test]
    fn auth_file() {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let json = format!(
            r#"{{
              "auths": {{
                "https://index.docker.io/v1/": {{"auth": "{}"}},
                "127.0.0.1:5000": {{"auth": "{}"}},
                "http://localhost:5001": {{"auth": "{}"}},
                "quay.io": {{"username": "qu", "password": "qp"}},
                "quay.io/org/special": {{"auth": "{}"}},
                "ghcr.io": {{"identitytoken": "tok"}},
                "empty.io": {{"auth": ""}}
              }},
              "credsStore": "desktop",
              "HttpHeaders": {{"X": "y"}}
            }}"#,
            b64("hub:hubpass"),
            b64("user:pa:ss"),
            b64("l:p"),
            b64("sp:sp"),
        );
        let f = AuthFile::parse(json.as_bytes()).unwrap();
        let get = |reg: &str, repo: Option<&str>| {
            f.lookup(reg, repo)
                .map(|c| format!("{}:{}", c.username, c.password))
        };
        let cases: &[(&str, Option<&str>, Option<&str>)] = &[
            ("docker.io", None, Some("hub:hubpass")),
            (
                "registry-1.docker.io",
                Some("library/x"),
                Some("hub:hubpass"),
            ),
            ("127.0.0.1:5000", None, Some("user:pa:ss")),
            ("127.0.0.1:5001", None, None),
            ("localhost:5001", None, Some("l:p")),
            ("quay.io", Some("org/other"), Some("qu:qp")),
            ("quay.io", Some("org/special"), Some("sp:sp")),
            ("quay.io", Some("org/special/sub"), Some("sp:sp")),
            ("ghcr.io", None, None),
            ("empty.io", None, None),
        ];
        for (reg, repo, want) in cases {
            assert_eq!(get(reg, *repo).as_deref(), *want, "{reg} {repo:?}");
        }
        assert_eq!(f.len(), 5);
        assert_eq!(
            f.credentials("127.0.0.1:5000"),
            Some(Credentials::new("user", "pa:ss"))
        );

        // Bad input reads clearly.
        let bad: &[(&str, &str)] = &[
            ("not json", "expected"),
            (
                r#"{"auths": {"x.io": {"auth": "%%%"}}}"#,
                "auths[\"x.io\"].auth: not base64",
            ),
            (
                &format!(
                    r#"{{"auths": {{"x.io": {{"auth": "{}"}}}}}}"#,
                    b64("nocolon")
                ),
                "not of the form username:password",
            ),
            (r#"{"auths": 5}"#, "invalid type"),
        ];
        for (text, want) in bad {
            let e = AuthFile::parse(text.as_bytes()).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
        assert!(AuthFile::parse(b"{}").unwrap().is_empty());
    }

    #[test]
    fn auth_file_location_and_load() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| std::ffi::OsString::from(v))
            }
        };
        type Vars = &'static [(&'static str, &'static str)];
        let cases: &[(Vars, Option<&str>)] = &[
            (
                &[("REGISTRY_AUTH_FILE", "/a.json"), ("HOME", "/h")],
                Some("/a.json"),
            ),
            (
                &[("DOCKER_CONFIG", "/d"), ("HOME", "/h")],
                Some("/d/config.json"),
            ),
            (&[("HOME", "/h")], Some("/h/.docker/config.json")),
            (
                &[("REGISTRY_AUTH_FILE", ""), ("HOME", "/h")],
                Some("/h/.docker/config.json"),
            ),
            (&[], None),
        ];
        for (vars, want) in cases {
            assert_eq!(
                default_path_from(env(vars)),
                want.map(PathBuf::from),
                "{vars:?}"
            );
        }

        let dir = tempfile::tempdir().unwrap();
        let missing = AuthFile::load(&dir.path().join("none.json")).unwrap();
        assert!(missing.is_empty());
        let p = dir.path().join("bad.json");
        std::fs::write(&p, "{").unwrap();
        let e = AuthFile::load(&p).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("credentials file {}: ", p.display())),
            "{e}"
        );
    }

    #[test]
    fn credential_helpers() {
        let f = AuthFile::parse(
            br#"{"auths": {"inline.io": {"username": "in", "password": "line"},
                          "both.io": {"username": "in", "password": "line"}},
                "credHelpers": {"helped.io": "one", "docker.io": "hub"},
                "credsStore": "store"}"#,
        )
        .unwrap();
        let asked = parking_lot::Mutex::new(Vec::new());
        let run = |helper: &str, server: &str| -> Result<Option<Credentials>> {
            asked.lock().push(format!("{helper} {server}"));
            Ok(match (helper, server) {
                ("one", "helped.io") => Some(Credentials::new("h", "1")),
                ("hub", "https://index.docker.io/v1/") => Some(Credentials::new("hub", "2")),
                ("store", "stored.io") => Some(Credentials::new("s", "3")),
                _ => None,
            })
        };
        let get = |reg: &str| f.resolve_with(reg, &run).unwrap().map(|c| c.username);
        assert_eq!(get("helped.io").as_deref(), Some("h"));
        assert_eq!(get("registry-1.docker.io").as_deref(), Some("hub"));
        assert_eq!(get("stored.io").as_deref(), Some("s"));
        // The store has none: the inline entry.
        assert_eq!(get("both.io").as_deref(), Some("in"));
        assert_eq!(get("nowhere.io"), None);
        assert_eq!(
            asked.lock().clone(),
            [
                "one helped.io",
                "hub https://index.docker.io/v1/",
                "store stored.io",
                "store both.io",
                "store nowhere.io"
            ]
        );
        assert!(!f.is_empty());
        for bad in [
            r#"{"credHelpers": {"x.io": "../evil"}}"#,
            r#"{"credsStore": "a/b"}"#,
        ] {
            let e = AuthFile::parse(bad.as_bytes()).unwrap_err();
            assert!(e.contains("is not a helper name"), "{bad}: {e}");
        }
        assert_eq!(
            parse_helper_output(br#"{"ServerURL":"x","Username":"u","Secret":"p"}"#),
            Ok(Some(Credentials::new("u", "p")))
        );
        assert_eq!(
            parse_helper_output(br#"{"ServerURL":"x","Username":"<token>","Secret":"t"}"#),
            Ok(None)
        );
        assert!(parse_helper_output(b"credentials not found").is_err());
        // A helper that is not installed: none.
        assert_eq!(run_helper("storectl-no-such-helper", "x.io").unwrap(), None);
    }

    #[test]
    fn credentials() {
        assert_eq!(
            Credentials::parse("u:p:q"),
            Some(Credentials::new("u", "p:q"))
        );
        assert_eq!(Credentials::parse(":p"), None);
        assert_eq!(Credentials::parse("nocolon"), None);
        assert_eq!(
            Credentials::new("Aladdin", "open sesame").basic_header(),
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
        assert!(!format!("{:?}", Credentials::new("u", "secret")).contains("secret"));
    }
}
