use std::path::PathBuf;

/// Errors of the registry client. Every variant names the registry, URL or
/// object it is about, so the message alone reads clearly.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry refused the credentials (or wanted some and had none).
    #[error(
        "authentication to {registry} failed: {}",
        if *had_credentials { "wrong username or password" } else { "credentials required (none configured for this registry)" }
    )]
    Unauthorized {
        registry: String,
        had_credentials: bool,
    },
    /// Authenticated, but not allowed (HTTP 403, or a token without the scope).
    #[error("access to {what} denied by {registry}")]
    Denied { registry: String, what: String },
    /// The manifest, blob or repository does not exist.
    #[error("{what} not found")]
    NotFound { what: String },
    /// What was received does not hash to the digest it should have.
    #[error("digest mismatch for {what}: expected {expected}, found {found}")]
    DigestMismatch {
        what: String,
        expected: String,
        found: String,
    },
    /// Any other unexpected HTTP status; `body` is a snippet of the response
    /// (the registry's error messages when it sent the standard JSON).
    #[error("{method} {url}: HTTP {status}{}", if body.is_empty() { String::new() } else { format!(": {body}") })]
    Http {
        method: String,
        status: u16,
        url: String,
        body: String,
    },
    /// The request did not get a response (connection refused, TLS, timeout, …).
    #[error("cannot reach {url}: {source}")]
    Transport {
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The registry answered with something this client cannot use.
    #[error("{url}: invalid response: {reason}")]
    InvalidResponse { url: String, reason: String },
    /// A manifest or index that does not parse.
    #[error("invalid {what}: {reason}")]
    InvalidManifest { what: String, reason: String },
    /// The registry asked for an authentication scheme this client does not speak.
    #[error("{registry} asks for unsupported authentication: {challenge:?}")]
    UnsupportedAuth { registry: String, challenge: String },
    /// No manifest in an index matches the wanted platform.
    #[error("no manifest for platform {wanted} (available: {})", if available.is_empty() { "none".to_string() } else { available.join(", ") })]
    NoMatchingPlatform {
        wanted: String,
        available: Vec<String>,
    },
    /// A credentials file that exists but does not parse.
    #[error("credentials file {path}: {reason}")]
    AuthFile { path: PathBuf, reason: String },
    /// A credential helper (`docker-credential-NAME get`) failed.
    #[error("credential helper {helper}: {reason}")]
    CredentialHelper { helper: String, reason: String },
    /// A local read (of a blob being pushed) failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

impl RegistryError {
    /// Whether retrying the same request may succeed (transport trouble, 5xx, 429).
    pub fn is_transient(&self) -> bool {
        match self {
            RegistryError::Transport { .. } => true,
            RegistryError::Http { status, .. } => *status == 429 || (500..600).contains(status),
            _ => false,
        }
    }
}

impl From<RegistryError> for std::io::Error {
    fn from(e: RegistryError) -> Self {
        let kind = match &e {
            RegistryError::DigestMismatch { .. } => std::io::ErrorKind::InvalidData,
            RegistryError::NotFound { .. } => std::io::ErrorKind::NotFound,
            RegistryError::Unauthorized { .. } | RegistryError::Denied { .. } => {
                std::io::ErrorKind::PermissionDenied
            }
            _ => std::io::ErrorKind::Other,
        };
        std::io::Error::new(kind, e)
    }
}
