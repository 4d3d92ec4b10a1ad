//! Platforms (`os/arch[/variant]`) as the OCI spec and containerd name them,
//! and how well an image for one platform serves another (pure functions).
//! The one model of a platform: the registry client (storectl-transfer) and
//! the OCI layout reader both pick manifests with [`pick_best`].

use std::fmt;

use serde::{Deserialize, Serialize};

use super::spec::Descriptor;

/// An OCI platform. Build with [`Platform::parse`] or [`Platform::host`]; both
/// normalize (`x86_64` → `amd64`, `aarch64` → `arm64`, `armhf` → `arm/v7`, …).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Self {
        Platform {
            os: os.to_string(),
            architecture: architecture.to_string(),
            variant: variant.map(str::to_string),
        }
        .normalized()
    }

    /// The platform this process runs on: `linux` (the OS images are built
    /// for) and `std::env::consts::ARCH` in OCI terms.
    pub fn host() -> Self {
        Platform::new("linux", host_arch(std::env::consts::ARCH), None)
    }

    /// Parse `os/arch[/variant]`, or a bare `arch` (OS `linux`). Normalized.
    pub fn parse(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        };
        if !parts.iter().all(|p| ok(p)) {
            return Err(format!(
                "invalid platform {s:?}: expected os/arch[/variant], e.g. linux/arm64"
            ));
        }
        match parts.as_slice() {
            [arch] => Ok(Platform::new("linux", arch, None)),
            [os, arch] => Ok(Platform::new(os, arch, None)),
            [os, arch, variant] => Ok(Platform::new(os, arch, Some(variant))),
            _ => Err(format!(
                "invalid platform {s:?}: expected os/arch[/variant], e.g. linux/arm64"
            )),
        }
    }

    /// containerd's normalization of names and default variants.
    pub fn normalized(mut self) -> Self {
        self.os = self.os.to_ascii_lowercase();
        if self.os == "macos" {
            self.os = "darwin".into();
        }
        let arch = self.architecture.to_ascii_lowercase();
        let variant = self.variant.take().map(|v| v.to_ascii_lowercase());
        let (arch, variant) = match (arch.as_str(), variant.as_deref()) {
            ("i386" | "i686" | "x86", v) => ("386".to_string(), v.map(str::to_string)),
            ("x86_64" | "x86-64" | "amd64", Some("v1")) | ("x86_64" | "x86-64" | "amd64", None) => {
                ("amd64".to_string(), None)
            }
            ("x86_64" | "x86-64" | "amd64", v) => ("amd64".to_string(), v.map(str::to_string)),
            ("aarch64" | "arm64", Some("8" | "v8" | "v8.0") | None) => ("arm64".to_string(), None),
            ("aarch64" | "arm64", Some(v)) => ("arm64".to_string(), Some(vprefix(v))),
            ("armhf", _) => ("arm".to_string(), Some("v7".to_string())),
            ("armel", _) => ("arm".to_string(), Some("v6".to_string())),
            ("arm", None | Some("" | "7")) => ("arm".to_string(), Some("v7".to_string())),
            ("arm", Some(v)) => ("arm".to_string(), Some(vprefix(v))),
            (a, v) => (a.to_string(), v.map(str::to_string)),
        };
        self.architecture = arch;
        self.variant = variant.filter(|v| !v.is_empty());
        self
    }
}

fn vprefix(v: &str) -> String {
    if v.starts_with('v') {
        v.to_string()
    } else {
        format!("v{v}")
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// Rust's `std::env::consts::ARCH` in OCI (GOARCH) terms.
pub fn host_arch(rust_arch: &str) -> &str {
    match rust_arch {
        "x86_64" => "amd64",
        "x86" => "386",
        "aarch64" => "arm64",
        "arm" => "arm",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "powerpc64" => "ppc64",
        "mips64" if cfg!(target_endian = "little") => "mips64le",
        "mips" if cfg!(target_endian = "little") => "mipsle",
        "loongarch64" => "loong64",
        other => other, // s390x, riscv64, mips64 …
    }
}

/// The ordered "level" of a variant for architectures whose variants are
/// backwards compatible (`arm/v7` runs `arm/v6`; `amd64/v3` runs `amd64/v2`).
fn variant_level(arch: &str, variant: Option<&str>) -> Option<u32> {
    let num = |v: &str| -> Option<u32> { v.strip_prefix('v')?.split('.').next()?.parse().ok() };
    match (arch, variant) {
        ("amd64", None) => Some(1),
        ("arm64", None) => Some(8),
        ("arm", None) => Some(7),
        ("amd64" | "arm64" | "arm", Some(v)) => num(v),
        _ => None,
    }
}

/// How well `candidate` serves `want`: `None` when it cannot run there; a
/// higher score is a better match.
pub fn match_score(want: &Platform, candidate: &Platform) -> Option<u32> {
    if want.os != candidate.os || want.architecture != candidate.architecture {
        return None;
    }
    if want.variant == candidate.variant {
        return Some(1000);
    }
    let arch = want.architecture.as_str();
    match (
        variant_level(arch, want.variant.as_deref()),
        variant_level(arch, candidate.variant.as_deref()),
    ) {
        (Some(w), Some(c)) if c <= w => Some(c),
        (Some(_), _) => None,
        // Architectures without ordered variants: no wanted variant takes any.
        (None, _) if want.variant.is_none() => Some(candidate.variant.is_none() as u32),
        (None, _) => None,
    }
}

/// The entry of `manifests` that serves `want` best: an exact match wins,
/// else the best compatible one (a lower `arm` variant, …); ties go to the
/// first listed. Entries without a platform (or `unknown/unknown`
/// attestations) never match.
pub fn pick_best<'a>(manifests: &'a [Descriptor], want: &Platform) -> Option<&'a Descriptor> {
    let want = want.clone().normalized();
    let mut best: Option<(u32, &Descriptor)> = None;
    for d in manifests {
        let Some(p) = &d.platform else { continue };
        let p = p.clone().normalized();
        if let Some(score) = match_score(&want, &p) {
            if !matches!(best, Some((s, _)) if s >= score) {
                best = Some((score, d));
            }
        }
    }
    best.map(|(_, d)| d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_normalize() {
        let cases: &[(&str, &str)] = &[
            ("linux/amd64", "linux/amd64"),
            ("linux/x86_64", "linux/amd64"),
            ("linux/amd64/v1", "linux/amd64"),
            ("linux/amd64/v3", "linux/amd64/v3"),
            ("linux/aarch64", "linux/arm64"),
            ("linux/arm64/v8", "linux/arm64"),
            ("linux/arm64/8", "linux/arm64"),
            ("linux/arm64/v9", "linux/arm64/v9"),
            ("linux/arm", "linux/arm/v7"),
            ("linux/arm/6", "linux/arm/v6"),
            ("linux/armhf", "linux/arm/v7"),
            ("linux/armel", "linux/arm/v6"),
            ("Linux/i386", "linux/386"),
            ("arm64", "linux/arm64"),
            ("windows/amd64", "windows/amd64"),
            ("linux/s390x", "linux/s390x"),
            ("linux/riscv64", "linux/riscv64"),
        ];
        for (input, want) in cases {
            assert_eq!(
                Platform::parse(input).unwrap().to_string(),
                *want,
                "{input}"
            );
        }
        for bad in ["", "/", "linux/", "linux//v7", "a/b/c/d", "linux/am d64"] {
            let e = Platform::parse(bad).unwrap_err();
            assert!(e.contains("expected os/arch[/variant]"), "{bad}: {e}");
        }
        assert_eq!(host_arch("x86_64"), "amd64");
        assert_eq!(host_arch("aarch64"), "arm64");
        assert_eq!(host_arch("s390x"), "s390x");
        let host = Platform::host();
        assert_eq!(host.os, "linux");
        assert!(!host.architecture.is_empty());
    }
}
