//! Apply gzip/zstd/plain layer blobs one after another into fresh diff dirs,
//! the way a store loads them (sha256 of both streams, tar-split recorded),
//! and print the time. For comparing with `tar -xzf` of the same blobs.
//!
//! Usage: `apply_bench OUT_DIR BLOB...` (OUT_DIR must not exist).
#![allow(clippy::print_stdout)]

use std::io::{self, Read};
use std::time::Instant;

use sha2::{Digest, Sha256};

struct Hashing<R>(R, Sha256);

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.0.read(buf)?;
        self.1.update(&buf[..n]);
        Ok(n)
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (out, blobs) = args
        .split_first()
        .ok_or("usage: apply_bench OUT_DIR BLOB...")?;
    std::fs::create_dir(out)?;
    let start = Instant::now();
    for (i, blob) in blobs.iter().enumerate() {
        let t = Instant::now();
        let diff = std::path::Path::new(out).join(i.to_string());
        std::fs::create_dir(&diff)?;
        let file = io::BufReader::with_capacity(256 << 10, std::fs::File::open(blob)?);
        let mut compressed = Hashing(file, Sha256::new());
        let mut split = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let stats = {
            let (_, stream) =
                storectl_overlay::compression::decompress(Box::new(&mut compressed), None)?;
            let mut plain = Hashing(stream, Sha256::new());
            let stats = storectl_overlay::apply_tar(
                &diff,
                &mut plain,
                Some(&mut split),
                &Default::default(),
            )?;
            let _ = plain.1.finalize();
            stats
        };
        let _ = compressed.1.finalize();
        let split = split.finish()?;
        println!(
            "{blob}: {} entries, {} bytes, tar-split {} bytes, {:.3}s",
            stats.entries,
            stats.tar_size,
            split.len(),
            t.elapsed().as_secs_f64()
        );
    }
    println!("total {:.3}s", start.elapsed().as_secs_f64());
    Ok(())
}
