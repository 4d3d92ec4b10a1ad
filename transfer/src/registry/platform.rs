//! Picking a manifest from an OCI image index or a Docker manifest list
//! (pure). The platform model and matching are the store's
//! ([`storectl_storage::import::platform`]).

use storectl_storage::import::platform::pick_best;
use storectl_storage::import::spec::Index;

use super::error::{RegistryError, Result};
use super::{Descriptor, Platform};

/// Pick the manifest for `want` from an OCI image index or Docker manifest
/// list (its JSON): see [`pick_best`].
pub fn pick_manifest(index_json: &[u8], want: &Platform) -> Result<Descriptor> {
    let index: Index =
        serde_json::from_slice(index_json).map_err(|e| RegistryError::InvalidManifest {
            what: "image index".into(),
            reason: e.to_string(),
        })?;
    match pick_best(&index.manifests, want) {
        Some(d) => Ok(d.clone()),
        None => Err(RegistryError::NoMatchingPlatform {
            wanted: want.clone().normalized().to_string(),
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
