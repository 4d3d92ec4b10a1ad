//! The layer store's per-layer work: removing a layer's files (never
//! through a reader's legacy link), and re-hashing a layer from its files
//! and tar-split.

use flate2::read::GzDecoder;

use super::pipeline::HashWriter;
use super::*;

/// The result of re-hashing one layer ([`Store::verify_layer`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerCheck {
    pub layer: String,
    /// The recorded diffID.
    pub expected: String,
    /// The digest of the rebuilt tar, or why it could not be rebuilt.
    pub found: std::result::Result<String, String>,
}

impl LayerCheck {
    pub fn ok(&self) -> bool {
        self.found.as_ref().is_ok_and(|f| *f == self.expected)
    }
}

impl Store {
    /// Remove a layer's record (and its legacy `RO` link), then its overlay dir.
    pub(super) fn remove_layer_files(&self, id: &str, shared: bool) -> Result<()> {
        if !self.publishes_shared() {
            // Only local entries, never through a legacy link to the share:
            // a reader's `overlay/<id> -> RO/<id>` is not its to delete through.
            let overlay = self.layout.overlay().join(id);
            let record = self.layers_dir().join(id);
            if shared || fs::symlink_metadata(&overlay).is_ok_and(|m| m.is_symlink()) {
                if crate::links::is_real_dir(&record) {
                    fsutil::remove_dir_atomic(&record)?;
                }
                return Ok(());
            }
        }
        if let Some(hook) = self.share_hook.as_ref().filter(|_| shared) {
            hook.removing_layer(id)?;
        }
        let record = self.layer_dir_of(id, shared);
        if record.exists() {
            fsutil::remove_dir_atomic(&record)?;
        }
        let link = self.layers_dir().join(id);
        if shared && fs::symlink_metadata(&link).is_ok() {
            fs::remove_file(&link).at(&link)?;
        }
        match self.driver.remove_layer(id) {
            Ok(()) | Err(storectl_overlay::Error::LayerUnknown(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Rebuild layer `id`'s tar from its diff and tar-split and hash it.
    pub fn verify_layer(&self, id: &str) -> Result<LayerCheck> {
        let layer = self.layer(id)?;
        let expected = layer.diff_digest.clone().unwrap_or_default();
        let split_path = self
            .layer_record_dir(&layer)
            .join(format!("{id}.tar-split.gz"));
        let found = (|| -> std::result::Result<String, String> {
            let file = fs::File::open(&split_path)
                .map_err(|e| format!("{}: {e}", split_path.display()))?;
            let mut split = GzDecoder::new(std::io::BufReader::new(file));
            let mut hasher = HashWriter(Sha256::new());
            storectl_overlay::tarsplit::reassemble(
                &self.overlay_dir(&layer).join("diff"),
                &mut split,
                &mut hasher,
            )
            .map_err(|e| e.to_string())?;
            Ok(format!("sha256:{}", hex::encode(hasher.0.finalize())))
        })();
        Ok(LayerCheck {
            layer: id.to_string(),
            expected,
            found,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{load, local};
    use super::*;

    #[test]
    fn a_layer_verifies_until_its_files_change() {
        let tmp = tempfile::tempdir().unwrap();
        let store = local(tmp.path());
        let image = load(&store, tmp.path(), "localhost/v:1", &[("f", "f\n")]);
        let top = image.layer.clone().unwrap();
        let check = store.verify_layer(&top).unwrap();
        assert!(check.ok(), "{check:?}");
        assert_eq!(
            Some(&check.expected),
            store.layer(&top).unwrap().diff_digest.as_ref()
        );
        // The tar-split knows each file's checksum: a changed file fails it.
        let file = store.layout.overlay().join(&top).join("diff/f");
        fs::write(&file, "g\n").unwrap();
        let check = store.verify_layer(&top).unwrap();
        assert!(!check.ok());
        assert!(
            check.found.as_ref().unwrap_err().contains("f:"),
            "{check:?}"
        );
        fs::remove_file(&file).unwrap();
        assert!(!store.verify_layer(&top).unwrap().ok());
    }

    #[test]
    fn a_layer_files_go_and_going_twice_is_no_error() {
        let tmp = tempfile::tempdir().unwrap();
        let store = local(tmp.path());
        let image = load(&store, tmp.path(), "localhost/v:1", &[("f", "f\n")]);
        let top = image.layer.clone().unwrap();
        store.remove_layer_files(&top, false).unwrap();
        assert!(!store.layers_dir().join(&top).exists());
        assert!(!store.layout.overlay().join(&top).exists());
        // Gone already: nothing to do.
        store.remove_layer_files(&top, false).unwrap();
    }
}
