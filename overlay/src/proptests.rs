//! Property tests of the layer applier and tar-split: any well-formed layer
//! round-trips byte for byte, and no input — random bytes or a valid layer
//! with bytes flipped — panics or writes outside `diff/`.

use std::io::Cursor;

use proptest::prelude::*;
use tar::EntryType;

use crate::testutil::{require_root, RawTar, Scratch};
use crate::{apply_tar, tarsplit, ApplyOptions};

/// One generated entry of a layer tree.
#[derive(Debug, Clone)]
enum Gen {
    File {
        content: Vec<u8>,
        mode: u32,
    },
    Dir,
    Symlink(String),
    /// A hardlink to the n-th earlier regular file (if there is one).
    Hardlink(usize),
}

fn gen_entry() -> impl Strategy<Value = Gen> {
    prop_oneof![
        4 => (proptest::collection::vec(any::<u8>(), 0..3000), 0o400u32..=0o7777)
            .prop_map(|(content, mode)| Gen::File { content, mode }),
        1 => Just(Gen::Dir),
        1 => "[a-z./]{1,40}".prop_map(Gen::Symlink),
        1 => (0usize..8).prop_map(Gen::Hardlink),
    ]
}

/// A tar of distinct paths `dN/eM` (each `dN/` first), with a long name now
/// and then, PAX xattrs and mtimes, and 0–2 extra zero blocks at the end.
fn build(entries: &[(u8, Gen, u64, bool)], extra_zero_blocks: usize) -> Vec<u8> {
    let mut t = RawTar::new();
    let mut dirs = std::collections::BTreeSet::new();
    let mut files: Vec<String> = Vec::new();
    for (i, (dir, g, mtime, long)) in entries.iter().enumerate() {
        let d = format!("d{}", dir % 4);
        if dirs.insert(d.clone()) {
            t.dir(&format!("{d}/"));
        }
        let stem = if *long {
            "n".repeat(120)
        } else {
            String::new()
        };
        let path = format!("{d}/{stem}e{i}");
        t.mtime = 1_500_000_000 + mtime % 100_000_000;
        match g {
            Gen::File { content, mode } => {
                if i % 3 == 0 {
                    t.pax(&[("SCHILY.xattr.user.prop", format!("v{i}").as_bytes())]);
                }
                t.entry_with(path.as_bytes(), EntryType::Regular, None, content, |h| {
                    h.set_mode(*mode)
                });
                files.push(path);
            }
            Gen::Dir => {
                t.dir(&format!("{path}/"));
            }
            Gen::Symlink(target) => {
                t.symlink(&path, target);
            }
            Gen::Hardlink(n) => match files.get(n % files.len().max(1)) {
                Some(target) if !files.is_empty() => {
                    let target = target.clone();
                    t.hardlink(&path, &target);
                }
                _ => {
                    t.file(&path, b"no file to link to yet");
                    files.push(path);
                }
            },
        }
    }
    let mut tar = t.finish();
    tar.resize(tar.len() + 512 * extra_zero_blocks, 0);
    tar
}

fn entries() -> impl Strategy<Value = Vec<(u8, Gen, u64, bool)>> {
    proptest::collection::vec(
        (
            any::<u8>(),
            gen_entry(),
            any::<u64>(),
            proptest::bool::weighted(0.1),
        ),
        0..24,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// apply → tar-split → reassemble gives back the very same bytes.
    #[test]
    #[ignore = "needs root"]
    fn apply_then_reassemble_is_the_identity(es in entries(), zeros in 0usize..3) {
        require_root("entries owned by root");
        let tar = build(&es, zeros);
        let s = Scratch::new();
        let mut split = Vec::new();
        let stats = apply_tar(&s.diff(), &mut Cursor::new(&tar), Some(&mut split), &ApplyOptions::default())
            .map_err(|e| TestCaseError::fail(format!("apply: {e}")))?;
        prop_assert_eq!(stats.tar_size, tar.len() as u64);
        let mut out = Vec::new();
        tarsplit::reassemble(&s.diff(), &mut Cursor::new(&split), &mut out)
            .map_err(|e| TestCaseError::fail(format!("reassemble: {e}")))?;
        prop_assert!(out == tar, "reassembled {} bytes, expected {}", out.len(), tar.len());
        s.assert_contained();
    }

    /// A valid layer with bytes overwritten: an error or a layer, never a
    /// panic, and never a write outside `diff/`.
    #[test]
    #[ignore = "needs root"]
    fn damaged_layers_never_escape(
        es in entries(),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..16),
    ) {
        require_root("entries owned by root");
        let mut tar = build(&es, 0);
        for (at, byte) in flips {
            let i = at % tar.len();
            tar[i] = byte;
        }
        let s = Scratch::new();
        let mut split = Vec::new();
        let _ = apply_tar(&s.diff(), &mut Cursor::new(&tar), Some(&mut split), &ApplyOptions::default());
        s.assert_contained();
    }

    /// Random bytes are not a layer: an error, never a panic.
    #[test]
    #[ignore = "needs root"]
    fn random_bytes_are_an_error(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        require_root("entries owned by root");
        let s = Scratch::new();
        let r = apply_tar(&s.diff(), &mut Cursor::new(&bytes), None, &ApplyOptions::default());
        prop_assert!(r.is_err() || bytes.iter().all(|&b| b == 0));
        s.assert_contained();
    }

    /// A tar-split line of any text parses or is refused, never panics.
    #[test]
    fn tar_split_lines_never_panic(line in ".{0,300}") {
        let _ = tarsplit::parse_line(&line);
    }
}
