//! Rendering progress events: one bar per layer on a terminal, nothing when
//! stderr is not a terminal.

use std::collections::HashMap;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use parking_lot::Mutex;
use storectl_storage::{EventKind, ProgressEvent, Reporter};

/// Per-layer bars on stderr.
pub struct Bars {
    multi: MultiProgress,
    bars: Mutex<HashMap<String, ProgressBar>>,
}

fn short(name: &str) -> &str {
    let hex = name.strip_prefix("sha256:").unwrap_or(name);
    &hex[..hex.len().min(12)]
}

impl Bars {
    pub fn new() -> Bars {
        Bars {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10)),
            bars: Mutex::new(HashMap::new()),
        }
    }

    pub fn finish(&self) {
        for bar in self.bars.lock().values() {
            if !bar.is_finished() {
                bar.abandon();
            }
        }
    }
}

impl Reporter for Bars {
    fn report(&self, e: &ProgressEvent) {
        if matches!(e.event, EventKind::Resolving | EventKind::Done | EventKind::Saved) {
            return;
        }
        let mut bars = self.bars.lock();
        let bar = bars.entry(e.name.clone()).or_insert_with(|| {
            let bar = self.multi.add(ProgressBar::new(e.total));
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} {msg:<14} [{bar:40}] {bytes}/{total_bytes}",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar.set_prefix(short(&e.name).to_string());
            bar
        });
        bar.set_length(e.total);
        bar.set_position(e.progress);
        bar.set_message(e.event.as_str());
        if matches!(e.event, EventKind::Complete | EventKind::AlreadyExists) {
            bar.set_position(e.total);
            bar.finish();
        }
    }
}
