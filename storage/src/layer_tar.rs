//! A stored layer's tar, rebuilt byte for byte from its `diff/` and its
//! tar-split metadata (what `save` and `push` in `storectl-transfer` write).

use std::fs::File;
use std::io::Write;

use flate2::read::GzDecoder;

use crate::digest::HashingWriter;
use crate::error::{Error, IoContext, Result};
use crate::meta::Layer;
use crate::Store;

impl Store {
    /// Rebuild layer `layer`'s tar into `out` from its diff and tar-split, and
    /// check it hashes to the layer's diffID. Returns the bytes written. On a
    /// mismatch the caller must discard what was written.
    pub fn write_layer_tar(&self, layer: &Layer, out: &mut dyn Write) -> Result<u64> {
        let split_path = self
            .layer_record_dir(layer)
            .join(format!("{}.tar-split.gz", layer.id));
        let file = File::open(&split_path).at(&split_path)?;
        let mut split = GzDecoder::new(std::io::BufReader::new(file));
        let mut w = HashingWriter::new(out);
        storectl_overlay::tarsplit::reassemble(
            &self.overlay_dir(layer).join("diff"),
            &mut split,
            &mut w,
        )
        .map_err(|source| Error::Layer {
            layer: layer.id.clone(),
            source,
        })?;
        let found = w.digest();
        let expected = layer.diff_digest.clone().unwrap_or_default();
        if found != expected {
            return Err(Error::DigestMismatch {
                what: format!(
                    "layer {} rebuilt from disk (run `storectl verify`)",
                    layer.id
                ),
                expected,
                found,
            });
        }
        Ok(w.count())
    }
}
