//! Platforms (`os/arch[/variant]`) and picking a manifest from an OCI image
//! index or a Docker manifest list (pure functions).

use std::fmt;

use super::error::{RegistryError, Result};
use super::Descriptor;

/// An OCI platform. Build with [`Platform::parse`] or [`Platform::host`]; both
/// normalize (`x86_64` → `amd64`, `aarch64` → `arm64`, `armhf` → `arm/v7`, …).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
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
fn match_score(want: &Platform, candidate: &Platform) -> Option<u32> {
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

#[derive(serde::Deserialize)]
struct RawIndex {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

/// Pick the manifest for `want` from an OCI image index or Docker manifest
/// list (its JSON). An exact match wins; else the best compatible one (a lower
/// `arm` variant, …); ties go to the first listed. Entries without a platform
/// (or `unknown/unknown` attestations) never match.
pub fn pick_manifest(index_json: &[u8], want: &Platform) -> Result<Descriptor> {
    let index: RawIndex =
        serde_json::from_slice(index_json).map_err(|e| RegistryError::InvalidManifest {
            what: "image index".into(),
            reason: e.to_string(),
        })?;
    let want = want.clone().normalized();
    let mut best: Option<(u32, &Descriptor)> = None;
    for d in &index.manifests {
        let Some(p) = &d.platform else { continue };
        let p = p.clone().normalized();
        if let Some(score) = match_score(&want, &p) {
            if !matches!(best, Some((s, _)) if s >= score) {
                best = Some((score, d));
            }
        }
    }
    match best {
        Some((_, d)) => Ok(d.clone()),
        None => Err(RegistryError::NoMatchingPlatform {
            wanted: want.to_string(),
            available: index
                .manifests
                .iter()
                .filter_map(|d| d.platform.as_ref())
                .filter(|p| p.os != "unknown")
                .map(|p| p.to_string())
                .collect(),
        }),
    }
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

    fn index(platforms: &[&str]) -> Vec<u8> {
        let manifests: Vec<serde_json::Value> = platforms
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mut d = serde_json::json!({
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": format!("sha256:{:064x}", i),
                    "size": 100 + i,
                });
                if !p.is_empty() {
                    let parts: Vec<&str> = p.split('/').collect();
                    let mut plat = serde_json::json!({"os": parts[0], "architecture": parts[1]});
                    if let Some(v) = parts.get(2) {
                        plat["variant"] = serde_json::json!(v);
                    }
                    d["platform"] = plat;
                }
                d
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
            "manifests": manifests,
        }))
        .unwrap()
    }

    #[test]
    fn picks_manifest() {
        let typical = [
            "linux/amd64",
            "linux/arm/v5",
            "linux/arm/v6",
            "linux/arm/v7",
            "linux/arm64/v8",
            "linux/386",
            "unknown/unknown",
            "linux/s390x",
        ];
        // (list, wanted, index picked or None)
        let cases: &[(&[&str], &str, Option<usize>)] = &[
            (&typical, "linux/amd64", Some(0)),
            (&typical, "linux/arm64", Some(4)),
            (&typical, "linux/arm64/v8", Some(4)),
            (&typical, "linux/arm/v7", Some(3)),
            (&typical, "linux/arm", Some(3)),
            (&typical, "linux/arm/v6", Some(2)),
            (&typical, "linux/386", Some(5)),
            (&typical, "linux/s390x", Some(7)),
            (&typical, "linux/ppc64le", None),
            (&typical, "windows/amd64", None),
            // A lower arm variant serves a higher one, the highest wins.
            (&["linux/arm/v5", "linux/arm/v6"], "linux/arm/v7", Some(1)),
            (&["linux/arm/v7"], "linux/arm/v6", None),
            // amd64: v1 is the default; v3 needs a v3 host.
            (&["linux/amd64/v3", "linux/amd64"], "linux/amd64", Some(1)),
            (&["linux/amd64/v3"], "linux/amd64", None),
            (
                &["linux/amd64", "linux/amd64/v2"],
                "linux/amd64/v3",
                Some(1),
            ),
            // Aliases in the list are normalized too.
            (&["linux/aarch64"], "linux/arm64", Some(0)),
            (&["linux/x86_64"], "linux/amd64", Some(0)),
            // Entries without a platform never match; ties go to the first.
            (&["", "linux/amd64", "linux/amd64"], "linux/amd64", Some(1)),
            (&[], "linux/amd64", None),
        ];
        for (list, want, pick) in cases {
            let want_p = Platform::parse(want).unwrap();
            let got = pick_manifest(&index(list), &want_p);
            match (pick, got) {
                (Some(i), Ok(d)) => {
                    assert_eq!(d.digest, format!("sha256:{:064x}", i), "{list:?} {want}");
                    assert_eq!(d.size, 100 + *i as u64);
                }
                (None, Err(RegistryError::NoMatchingPlatform { wanted, available })) => {
                    assert_eq!(wanted, want_p.to_string());
                    assert!(!available.iter().any(|a| a.contains("unknown")));
                }
                (want_pick, got) => panic!("{list:?} {want}: want {want_pick:?}, got {got:?}"),
            }
        }
        let e = pick_manifest(&index(&typical), &Platform::parse("linux/mips64").unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "no manifest for platform linux/mips64 (available: linux/amd64, linux/arm/v5,"
            ),
            "{e}"
        );
        assert!(matches!(
            pick_manifest(b"{not json", &Platform::host()),
            Err(RegistryError::InvalidManifest { .. })
        ));
    }
}
