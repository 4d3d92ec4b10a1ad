//! `storectl refresh`: bring a reader up to date with the share.
//!
//! One-shot, it prints what changed since the last `refresh` on this root (the
//! ids it saw are remembered in the reader's own root, never on the share).
//! With `--watch` it runs the refresher in the foreground and prints events as
//! they happen until interrupted.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use storectl_remote::StoreEvent;
use storectl_storage::fsutil::write_atomic;

use crate::outln;
use crate::util::open_store_scanned;

/// The reader-local file with the shared images the last `refresh` saw.
const SEEN_FILE: &str = "refresh-seen.json";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print one JSON object per event.
    #[arg(long)]
    json: bool,
    /// Keep running and print events as they happen.
    #[arg(long)]
    watch: bool,
    /// List the share's directories instead of trusting this reader's saved
    /// view and the share's index (for changes made on the share without
    /// its writer).
    #[arg(long)]
    rescan: bool,
}

/// One event as a line: `+ image ID NAME…`, `~ image ID NAME…`, `- image ID`.
/// The fields are space-separated, so each must be one word: the library only
/// lets valid references through as names, and a field with whitespace in it
/// anyway has it escaped (`\u{20}`, and `\n` as every control character of
/// every line is), so no field can start a line or a field of its own.
fn event_line(e: &StoreEvent) -> Option<String> {
    let words = |names: &[String]| {
        names
            .iter()
            .map(|n| one_word(n))
            .collect::<Vec<_>>()
            .join(" ")
    };
    match e {
        StoreEvent::ImageAdded { id, names } => {
            Some(format!("+ image {} {}", one_word(id), words(names)))
        }
        StoreEvent::ImageUpdated { id, names } => {
            Some(format!("~ image {} {}", one_word(id), words(names)))
        }
        StoreEvent::ImageRemoved { id } => Some(format!("- image {}", one_word(id))),
        StoreEvent::ImageRemovedInUse {
            id,
            containers,
            layers_deleted_after,
            ..
        } => Some(format!(
            "! image {} in use by {} until {}",
            one_word(id),
            if containers.is_empty() {
                "its mount".to_string()
            } else {
                words(containers)
            },
            layers_deleted_after.as_deref().map_or("-".into(), one_word)
        )),
        // Layers only in JSON; the text form speaks of images.
        StoreEvent::LayerAdded { .. } | StoreEvent::LayerRemoved { .. } => None,
    }
}

/// `s` as one field of a line: control characters escaped as on every line
/// (`\n`, `\x1b`), other whitespace as `\u{20}`.
fn one_word(s: &str) -> Cow<'_, str> {
    let s = crate::output::escape_controls(s);
    if !s.chars().any(char::is_whitespace) {
        return s;
    }
    s.chars()
        .map(|c| {
            if c.is_whitespace() {
                format!("\\u{{{:x}}}", c as u32)
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

fn print_event(e: &StoreEvent, json: bool) -> anyhow::Result<()> {
    if json {
        crate::output::json(e, false)?;
        return Ok(());
    }
    if let Some(line) = event_line(e) {
        outln!("{line}");
    }
    Ok(())
}

pub fn run(root: &Path, args: Args) -> anyhow::Result<()> {
    let (store, refresher) = open_store_scanned(root)?;
    let refresher = refresher.with_context(|| {
        format!(
            "{} is not a reader of a share (run `storectl init --shared DIR --role reader`)",
            root.display()
        )
    })?;
    if args.rescan {
        refresher
            .full_scan_now()
            .context("listing the share's directories")?;
    }
    if args.watch {
        // The handler first: once the refresher thread runs, a SIGTERM must
        // already mean "stop cleanly".
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        ctrlc::set_handler(move || flag.store(true, std::sync::atomic::Ordering::SeqCst))
            .context("installing the interrupt handler")?;
        let events = refresher.subscribe();
        let _running = refresher.spawn();
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            match events.recv_timeout(Duration::from_millis(200)) {
                Ok(e) => {
                    print_event(&e, args.json)?;
                    crate::output::flush()?;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        return Ok(());
    }
    // One-shot: compare with what the last refresh saw.
    let seen_path = root.join(SEEN_FILE);
    let before: BTreeMap<String, Vec<String>> = std::fs::read(&seen_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let now: BTreeMap<String, Vec<String>> = store.with_state(|st| {
        st.images
            .values()
            .filter(|i| i.shared)
            .map(|i| (i.id.clone(), i.names.clone()))
            .collect()
    });
    for id in before.keys().filter(|id| !now.contains_key(*id)) {
        print_event(&StoreEvent::ImageRemoved { id: id.clone() }, args.json)?;
    }
    for (id, names) in &now {
        let e = match before.get(id) {
            None => StoreEvent::ImageAdded {
                id: id.clone(),
                names: names.clone(),
            },
            Some(old) if old != names => StoreEvent::ImageUpdated {
                id: id.clone(),
                names: names.clone(),
            },
            Some(_) => continue,
        };
        print_event(&e, args.json)?;
    }
    write_atomic(root, SEEN_FILE, &serde_json::to_vec(&now)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_cannot_forge_a_line_or_a_field() {
        let id = "a".repeat(64);
        let e = StoreEvent::ImageAdded {
            id: id.clone(),
            names: vec![
                "localhost/a:1".into(),
                format!("x\n+ image {} forged", "b".repeat(64)),
                "\u{1b}[2J\\".into(),
            ],
        };
        let line = event_line(&e).unwrap();
        assert_eq!(line.lines().count(), 1, "{line}");
        assert_eq!(
            line,
            format!(
                "+ image {id} localhost/a:1 x\\n+\\u{{20}}image\\u{{20}}{}\\u{{20}}forged \\x1b[2J\\",
                "b".repeat(64)
            )
        );
        assert_eq!(line.split(' ').count(), 3 + 3);
        let plain = StoreEvent::ImageUpdated {
            id: id.clone(),
            names: vec!["localhost/a:1".into(), "localhost/b:2".into()],
        };
        assert_eq!(
            event_line(&plain).unwrap(),
            format!("~ image {id} localhost/a:1 localhost/b:2")
        );
        assert_eq!(
            event_line(&StoreEvent::ImageRemoved { id: id.clone() }).unwrap(),
            format!("- image {id}")
        );
    }
}
