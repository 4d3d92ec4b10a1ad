//! Image references: `[domain[:port]/]path[:tag][@digest]`, normalized as docker does.
//!
//! ```
//! use storectl_storage::reference;
//! let r = reference::parse("busybox").unwrap();
//! assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
//! assert_eq!(r.familiar(), "busybox:latest");
//! assert_eq!(reference::normalize_name("foo/bar:1").unwrap(), "docker.io/foo/bar:1");
//! ```
//!
//! The grammar is that of `github.com/distribution/reference`:
//!
//! ```text
//! reference       := name [ ":" tag ] [ "@" digest ]
//! name            := [domain "/"] path-component ["/" path-component]*
//! domain          := host [":" port]
//! host            := domain-name | "[" ipv6 "]"
//! domain-name     := component ("." component)*,  component := [a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?
//! path-component  := [a-z0-9]+ (separator [a-z0-9]+)*,  separator := [_.] | "__" | "-"+
//! tag             := [\w][\w.-]{0,127}
//! digest          := "sha256:" 64 lowercase hex | "sha512:" 128 lowercase hex
//! ```
//!
//! A first component is a domain when it contains `.` or `:`, is `localhost`, or has
//! an uppercase letter; otherwise the domain is `docker.io`, and a single-component
//! path on `docker.io` gets the `library/` prefix.

use std::fmt;
use std::str::FromStr;

/// The registry short names normalize to.
pub const DEFAULT_DOMAIN: &str = "docker.io";
/// The legacy name of [`DEFAULT_DOMAIN`]; normalized to it.
pub const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
/// The namespace of docker's official images (`busybox` → `library/busybox`).
pub const OFFICIAL_REPO_PREFIX: &str = "library/";
/// The tag a reference with neither tag nor digest gets.
pub const DEFAULT_TAG: &str = "latest";
/// The longest a name (domain and path) may be.
pub const NAME_TOTAL_LENGTH_MAX: usize = 255;

/// Why a reference does not parse. The messages do not repeat the input, so a
/// caller can wrap them (`invalid image name "X": <message>`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("empty reference")]
    Empty,
    #[error("repository name must be lowercase")]
    Uppercase,
    #[error("repository name must have at most {NAME_TOTAL_LENGTH_MAX} characters")]
    NameTooLong,
    #[error("invalid domain {domain:?}")]
    InvalidDomain { domain: String },
    #[error("invalid repository path component {component:?}")]
    InvalidPathComponent { component: String },
    #[error("invalid tag {tag:?}: a tag is up to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'")]
    InvalidTag { tag: String },
    #[error("invalid digest {digest:?}: expected sha256:<64 lowercase hex> or sha512:<128 lowercase hex>")]
    InvalidDigest { digest: String },
    #[error("a bare 64-character hex string is an image id, not a repository name")]
    IdAsName,
}

/// A parsed, normalized image reference.
///
/// `domain` is never empty (`docker.io` by default) and `path` carries the
/// `library/` prefix for official images. `tag` and `digest` are as given;
/// [`Display`](fmt::Display) adds the default tag `latest` when both are absent.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    pub domain: String,
    pub path: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl Reference {
    /// `domain/path`, e.g. `docker.io/library/busybox`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// The tag, or `latest` when the reference has neither tag nor digest.
    pub fn tag_or_default(&self) -> Option<&str> {
        match (&self.tag, &self.digest) {
            (Some(t), _) => Some(t),
            (None, None) => Some(DEFAULT_TAG),
            (None, Some(_)) => None,
        }
    }

    /// What to ask a registry for: the digest when there is one, else the tag
    /// (or `latest`).
    pub fn registry_reference(&self) -> &str {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d,
            (None, Some(t)) => t,
            (None, None) => DEFAULT_TAG,
        }
    }

    /// The short form docker shows: `busybox:latest`, `foo/bar:1`,
    /// `quay.io/x/y@sha256:…` (the `docker.io/` and `library/` prefixes dropped).
    pub fn familiar(&self) -> String {
        let full = self.to_string();
        if self.domain != DEFAULT_DOMAIN {
            return full;
        }
        let rest = &full[DEFAULT_DOMAIN.len() + 1..];
        match rest.strip_prefix(OFFICIAL_REPO_PREFIX) {
            // `library/a/b` stays as is: only `library/<one component>` is official.
            Some(short) if !self.path[OFFICIAL_REPO_PREFIX.len()..].contains('/') => {
                short.to_string()
            }
            _ => rest.to_string(),
        }
    }
}

impl fmt::Display for Reference {
    /// The normalized full form: `domain/path[:tag][@digest]`, with `:latest`
    /// when neither tag nor digest was given.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.path)?;
        if let Some(t) = self.tag_or_default() {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s)
    }
}

/// Parse and normalize a reference (`busybox` → `docker.io/library/busybox`).
pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
    if s.is_empty() {
        return Err(ReferenceError::Empty);
    }
    if s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(ReferenceError::IdAsName);
    }
    let (rest, digest) = match s.split_once('@') {
        Some((r, d)) => {
            validate_digest(d)?;
            (r, Some(d.to_string()))
        }
        None => (s, None),
    };
    // A tag is after the last ':' that follows the last '/' (a ':' before it is a port).
    let last_slash = rest.rfind('/');
    let (name, tag) = match rest.rfind(':') {
        Some(i) if !matches!(last_slash, Some(j) if j > i) => (&rest[..i], Some(&rest[i + 1..])),
        _ => (rest, None),
    };
    if let Some(t) = tag {
        validate_tag(t)?;
    }
    if name.is_empty() {
        return Err(ReferenceError::Empty);
    }
    if name.len() > NAME_TOTAL_LENGTH_MAX {
        return Err(ReferenceError::NameTooLong);
    }
    let (domain, path) = split_domain(name);
    validate_domain(domain)?;
    for component in path.split('/') {
        validate_path_component(component)?;
    }
    let domain = if domain == LEGACY_DEFAULT_DOMAIN {
        DEFAULT_DOMAIN
    } else {
        domain
    };
    let path = if domain == DEFAULT_DOMAIN && !path.contains('/') {
        format!("{OFFICIAL_REPO_PREFIX}{path}")
    } else {
        path.to_string()
    };
    Ok(Reference {
        domain: domain.to_string(),
        path,
        tag: tag.map(str::to_string),
        digest,
    })
}

/// Parse and return the normalized full form: `domain/path:tag` (tag `latest`
/// when neither tag nor digest is given), with `@digest` when there is one.
pub fn normalize_name(s: &str) -> Result<String, ReferenceError> {
    Ok(parse(s)?.to_string())
}

/// Split `name` into (domain, path) the way docker does.
fn split_domain(name: &str) -> (&str, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            (first, rest)
        }
        _ => (DEFAULT_DOMAIN, name),
    }
}

fn validate_domain(domain: &str) -> Result<(), ReferenceError> {
    let bad = || ReferenceError::InvalidDomain {
        domain: domain.to_string(),
    };
    // Split off the port: after "]" for IPv6, else after the last ':'.
    let (host, port) = if let Some(v6) = domain.strip_prefix('[') {
        let (addr, after) = v6.split_once(']').ok_or_else(bad)?;
        if addr.is_empty() || !addr.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return Err(bad());
        }
        match after {
            "" => (None, None),
            p => (None, Some(p.strip_prefix(':').ok_or_else(bad)?)),
        }
    } else {
        match domain.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(domain), None),
        }
    };
    if let Some(p) = port {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
    }
    if let Some(h) = host {
        let ok = !h.is_empty()
            && h.split('.').all(|c| {
                !c.is_empty()
                    && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !c.starts_with('-')
                    && !c.ends_with('-')
            });
        if !ok {
            return Err(bad());
        }
    }
    Ok(())
}

fn validate_path_component(c: &str) -> Result<(), ReferenceError> {
    if c.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(ReferenceError::Uppercase);
    }
    let bad = || ReferenceError::InvalidPathComponent {
        component: c.to_string(),
    };
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return Err(bad());
    }
    // Between alphanumeric runs: exactly one of "_", ".", "__", or one or more "-".
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = matches!(sep, "_" | "." | "__") || sep.bytes().all(|x| x == b'-');
        if !ok {
            return Err(bad());
        }
    }
    Ok(())
}

fn validate_tag(t: &str) -> Result<(), ReferenceError> {
    let word = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
    let b = t.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 128
        && word(b[0])
        && b[1..].iter().all(|&x| word(x) || x == b'.' || x == b'-');
    if ok {
        Ok(())
    } else {
        Err(ReferenceError::InvalidTag { tag: t.to_string() })
    }
}

/// Check `d` is `sha256:<64 lowercase hex>` or `sha512:<128 lowercase hex>`.
pub fn validate_digest(d: &str) -> Result<(), ReferenceError> {
    let lower_hex = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let ok = match d.split_once(':') {
        Some(("sha256", h)) => lower_hex(h, 64),
        Some(("sha512", h)) => lower_hex(h, 128),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(ReferenceError::InvalidDigest {
            digest: d.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn parses_and_normalizes() {
        // input | domain | path | tag | digest | full | familiar; "-" is None, "@D" the digest D.
        let rows = [
            "busybox | docker.io | library/busybox | - | - | docker.io/library/busybox:latest | busybox:latest",
            "busybox:1.36 | docker.io | library/busybox | 1.36 | - | docker.io/library/busybox:1.36 | busybox:1.36",
            "foo/bar | docker.io | foo/bar | - | - | docker.io/foo/bar:latest | foo/bar:latest",
            "docker.io/busybox | docker.io | library/busybox | - | - | docker.io/library/busybox:latest | busybox:latest",
            "index.docker.io/library/busybox:x | docker.io | library/busybox | x | - | docker.io/library/busybox:x | busybox:x",
            "docker.io/library/a/b | docker.io | library/a/b | - | - | docker.io/library/a/b:latest | library/a/b:latest",
            "localhost/foo | localhost | foo | - | - | localhost/foo:latest | localhost/foo:latest",
            "localhost:5000/a/b:tag | localhost:5000 | a/b | tag | - | localhost:5000/a/b:tag | localhost:5000/a/b:tag",
            "127.0.0.1:5000/repo | 127.0.0.1:5000 | repo | - | - | 127.0.0.1:5000/repo:latest | 127.0.0.1:5000/repo:latest",
            "quay.io/x/y@D | quay.io | x/y | - | D | quay.io/x/y@D | quay.io/x/y@D",
            "busybox:1@D | docker.io | library/busybox | 1 | D | docker.io/library/busybox:1@D | busybox:1@D",
            "[::1]:5000/img:v1 | [::1]:5000 | img | v1 | - | [::1]:5000/img:v1 | [::1]:5000/img:v1",
            "Registry/img | Registry | img | - | - | Registry/img:latest | Registry/img:latest",
            "a-b__c_d/f--g.h:_T.a-g | docker.io | a-b__c_d/f--g.h | _T.a-g | - | docker.io/a-b__c_d/f--g.h:_T.a-g | a-b__c_d/f--g.h:_T.a-g",
        ];
        for row in rows {
            let row = row
                .replace("@D", &format!("@{D}"))
                .replace("| D |", &format!("| {D} |"));
            let f: Vec<&str> = row.split(" | ").collect();
            let opt = |s: &str| (s != "-").then(|| s.to_string());
            let (input, full, familiar) = (f[0], f[5], f[6]);
            let r = parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            let want = Reference {
                domain: f[1].into(),
                path: f[2].into(),
                tag: opt(f[3]),
                digest: opt(f[4]),
            };
            assert_eq!(r, want, "{input}");
            assert_eq!(r.to_string(), full, "{input}");
            assert_eq!(r.familiar(), familiar, "{input}");
            assert_eq!(normalize_name(input).unwrap(), full, "{input}");
            // Normalizing is idempotent, and the familiar form means the same.
            assert_eq!(normalize_name(full).unwrap(), full, "{input}");
            assert_eq!(normalize_name(familiar).unwrap(), full, "{input}");
        }
    }

    #[test]
    fn rejects_bad_input() {
        use ReferenceError as E;
        let pc = |c: &str| E::InvalidPathComponent {
            component: c.into(),
        };
        let dom = |d: &str| E::InvalidDomain { domain: d.into() };
        let tag = |t: &str| E::InvalidTag { tag: t.into() };
        let dig = |d: &str| E::InvalidDigest { digest: d.into() };
        let long = format!("a/{}", "b".repeat(260));
        let long_tag = format!("a:{}", "t".repeat(129));
        let upper_hex = "sha256:0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef";
        let upper_digest = format!("a@{upper_hex}");
        let id = &D["sha256:".len()..];
        let cases: Vec<(&str, ReferenceError)> = vec![
            ("", E::Empty),
            (":tag", E::Empty),
            ("Busybox", E::Uppercase),
            ("foo/Bar", E::Uppercase),
            ("a//b", pc("")),
            ("a/", pc("")),
            ("-a", pc("-a")),
            ("a_", pc("a_")),
            ("a___b", pc("a___b")),
            ("a._b", pc("a._b")),
            ("a b", pc("a b")),
            ("a:", tag("")),
            ("a:.x", tag(".x")),
            ("a:-x", tag("-x")),
            ("a:x/y", dom("a:x")),
            ("a:t@g", dig("g")),
            ("quay.io/x/y@", dig("")),
            ("a@sha256:abc", dig("sha256:abc")),
            (&upper_digest, dig(upper_hex)),
            ("a@md5:00", dig("md5:00")),
            ("host:po/x", dom("host:po")),
            ("-host.io/x", dom("-host.io")),
            ("host..io/x", dom("host..io")),
            ("[zz]:5000/x", dom("[zz]:5000")),
            ("[::1/x", dom("[::1")),
            (id, E::IdAsName),
            (&long, E::NameTooLong),
            (&long_tag, tag(&"t".repeat(129))),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input), Err(want), "{input}");
        }
        // The messages do not repeat the input and read clearly.
        assert_eq!(
            parse("Busybox").unwrap_err().to_string(),
            "repository name must be lowercase"
        );
    }

    #[test]
    fn registry_reference_and_name() {
        let r = parse("busybox").unwrap();
        assert_eq!(r.registry_reference(), "latest");
        assert_eq!(r.name(), "docker.io/library/busybox");
        let r = parse(&format!("x.io/a:t@{D}")).unwrap();
        assert_eq!(r.registry_reference(), D);
        assert_eq!(r.tag_or_default(), Some("t"));
        let r: Reference = format!("x.io/a@{D}").parse().unwrap();
        assert_eq!(r.tag_or_default(), None);
        assert_eq!(r.registry_reference(), D);
    }
}
