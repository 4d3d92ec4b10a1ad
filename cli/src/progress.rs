//! Rendering progress events.
//!
//! * `Terminal`: one line per blob, redrawn in place at most every 100 ms:
//!   `id  status  [=====>    ]  12.3 MB / 40.1 MB  8.2 MB/s` when the terminal
//!   is at least 110 columns wide, `id status 12.3MB/40.1MB` when narrower (the
//!   width is read again at every redraw, so a resize switches forms), and a
//!   summary line at the end.
//! * `Json`: one JSON object per event line (`{event, name, parents, progress, total}`).
//! * `Plain` (output is not a terminal): one line per finished blob.
//! * `Quiet`: nothing.

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use storectl_storage::{EventKind, ProgressEvent, Reporter};

use crate::util::human_size;

/// How `--progress` asked us to render.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// Bars on a terminal, plain lines otherwise.
    Auto,
    /// Bars (even when stderr is not a terminal).
    Tty,
    /// One line per finished layer.
    Plain,
    /// One JSON object per event, on stdout.
    Json,
    /// Nothing.
    None,
}

/// `--progress` and `--quiet`, shared by the verbs that move images.
#[derive(Debug, Clone, clap::Args)]
pub struct ProgressArgs {
    /// How to show progress.
    #[arg(long, value_enum, default_value = "auto")]
    progress: ProgressMode,
    /// Print only the result (image id, digest).
    #[arg(long, short)]
    quiet: bool,
}

impl ProgressArgs {
    pub fn mode(&self) -> ProgressMode {
        if self.quiet {
            ProgressMode::None
        } else {
            self.progress
        }
    }

    pub fn renderer(&self) -> Renderer {
        Renderer::new(self.mode())
    }

    /// Whether the result line goes to stdout (not with JSON events there).
    pub fn print_result(&self) -> bool {
        self.mode() != ProgressMode::Json
    }
}

/// The width from which the full bar form is used.
pub const WIDE: u16 = 110;
const REDRAW: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
struct Row {
    /// The blob's name (the key of its events).
    name: String,
    /// The layer id, shown when known (the name `ls --layers` and `verify` use).
    layer: Option<String>,
    /// Whether the bytes counted are compressed, when known.
    compressed: Option<bool>,
    event: EventKind,
    progress: u64,
    total: u64,
    started: Option<Instant>,
    rate: f64,
}

struct State {
    rows: Vec<Row>,
    index: HashMap<String, usize>,
    drawn_lines: usize,
    last_draw: Option<Instant>,
    started: Instant,
}

/// A [`Reporter`] that renders to the terminal or as lines.
pub struct Renderer {
    mode: ProgressMode,
    state: Mutex<State>,
    width: Box<dyn Fn() -> Option<u16> + Send + Sync>,
    out: Mutex<Box<dyn Write + Send>>,
}

/// The terminal width of stderr, if it is a terminal.
fn stderr_width() -> Option<u16> {
    let stderr = std::io::stderr();
    if !rustix::termios::isatty(&stderr) {
        return None;
    }
    rustix::termios::tcgetwinsize(&stderr)
        .ok()
        .map(|w| w.ws_col)
        .filter(|c| *c > 0)
}

/// `sha256:abcdef…` → `abcdef012345` (control characters escaped).
pub fn short_id(name: &str) -> String {
    let hex = name.strip_prefix("sha256:").unwrap_or(name);
    crate::output::escape_controls(crate::util::prefix(hex, 12)).into_owned()
}

impl Row {
    /// The row's id: the layer id when known, else the blob's name.
    fn id(&self) -> String {
        short_id(self.layer.as_deref().unwrap_or(&self.name))
    }
}

/// ` compressed` / ` uncompressed` after a size, or nothing when unknown.
fn size_label(compressed: Option<bool>) -> &'static str {
    match compressed {
        Some(true) => " compressed",
        Some(false) => " uncompressed",
        None => "",
    }
}

/// `1 layer`, `2 layers`.
fn layers(n: usize) -> String {
    if n == 1 {
        "1 layer".into()
    } else {
        format!("{n} layers")
    }
}

/// The summary line: layers written (only those) and already present, and
/// the bytes written, compressed or not (pure).
fn summary_line(verb: &str, rows: &[Row], secs: f64) -> String {
    let written: Vec<&Row> = rows
        .iter()
        .filter(|r| r.event == EventKind::Complete)
        .collect();
    let present = rows
        .iter()
        .filter(|r| r.event == EventKind::AlreadyExists)
        .count();
    let done = if verb == "Pushed" {
        "uploaded"
    } else {
        "written"
    };
    let mut line = format!("{verb}: {} {done}", layers(written.len()));
    if present > 0 {
        line.push_str(&format!(", {present} already present"));
    }
    let mut sizes = Vec::new();
    for kind in [Some(true), Some(false), None] {
        let rows: Vec<&&Row> = written.iter().filter(|r| r.compressed == kind).collect();
        if !rows.is_empty() {
            let bytes: u64 = rows.iter().map(|r| r.total).sum();
            sizes.push(format!("{}{}", human_size(bytes), size_label(kind)));
        }
    }
    if !sizes.is_empty() {
        line.push_str(&format!(" ({})", sizes.join(" + ")));
    }
    line.push_str(&format!(" in {secs:.1}s"));
    line
}

/// One row in the wide form (pure).
fn wide_line(row: &Row, width: u16) -> String {
    let status = row.event.as_str();
    let amounts = if row.total > 0 {
        format!("{} / {}", human_size(row.progress), human_size(row.total))
    } else {
        human_size(row.progress)
    };
    // The current rate while bytes move; a finished row keeps its average.
    let rate = if row.rate > 0.0 && row.event != EventKind::AlreadyExists {
        format!("{}/s", human_size(row.rate as u64))
    } else {
        String::new()
    };
    // id(12) + 2 + status(14) + 2 + [bar] + 2 + amounts(21) + 2 + rate(11) + label(13)
    let fixed = 12 + 2 + 14 + 2 + 2 + 2 + 21 + 2 + 11 + 13;
    let bar_width = (width as usize).saturating_sub(fixed + 1).clamp(10, 60);
    let filled = if row.total > 0 {
        ((row.progress.min(row.total) as f64 / row.total as f64) * bar_width as f64) as usize
    } else {
        0
    };
    let mut bar = "=".repeat(filled);
    if filled < bar_width {
        if filled > 0 {
            bar.pop();
            bar.push('>');
        }
        bar.push_str(&" ".repeat(bar_width - filled));
    }
    format!(
        "{:<12}  {:<14}  [{bar}]  {:>21}  {:>11}{}",
        row.id(),
        status,
        amounts,
        rate,
        size_label(row.compressed)
    )
}

/// One row in the compact form (pure).
fn compact_line(row: &Row) -> String {
    let c = |n: u64| human_size(n).replace(' ', "");
    if row.total > 0 {
        format!(
            "{} {} {}/{}",
            row.id(),
            row.event.as_str(),
            c(row.progress),
            c(row.total)
        )
    } else {
        format!("{} {} {}", row.id(), row.event.as_str(), c(row.progress))
    }
}

impl Renderer {
    /// A renderer for `mode` (`Auto` decides by whether stderr is a terminal).
    pub fn new(mode: ProgressMode) -> Renderer {
        let mode = match mode {
            ProgressMode::Auto if stderr_width().is_some() => ProgressMode::Tty,
            ProgressMode::Auto => ProgressMode::Plain,
            m => m,
        };
        let out: Box<dyn Write + Send> = match mode {
            ProgressMode::Json => Box::new(crate::output::Sink),
            _ => Box::new(std::io::stderr()),
        };
        Renderer::with_output(mode, out, Box::new(stderr_width))
    }

    /// A renderer writing to `out`, asking `width` for the terminal width.
    pub fn with_output(
        mode: ProgressMode,
        out: Box<dyn Write + Send>,
        width: Box<dyn Fn() -> Option<u16> + Send + Sync>,
    ) -> Renderer {
        Renderer {
            mode,
            state: Mutex::new(State {
                rows: Vec::new(),
                index: HashMap::new(),
                drawn_lines: 0,
                last_draw: None,
                started: Instant::now(),
            }),
            width,
            out: Mutex::new(out),
        }
    }

    fn write(&self, text: &str) {
        let mut out = self.out.lock();
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    }

    /// Redraw every row in place.
    fn draw(&self, state: &mut State) {
        let width = (self.width)().unwrap_or(80);
        let mut text = String::new();
        if state.drawn_lines > 0 {
            text.push_str(&format!("\x1b[{}A", state.drawn_lines));
        }
        for row in &state.rows {
            let line = if width >= WIDE {
                wide_line(row, width)
            } else {
                compact_line(row)
            };
            let line: String = line
                .chars()
                .take(width.saturating_sub(1) as usize)
                .collect();
            text.push_str("\r\x1b[2K");
            text.push_str(&line);
            text.push('\n');
        }
        state.drawn_lines = state.rows.len();
        state.last_draw = Some(Instant::now());
        self.write(&text);
    }

    /// Draw the final state and a summary line (`done`), or nothing more.
    pub fn finish(&self, summary: Option<&str>) {
        let mut state = self.state.lock();
        if self.mode == ProgressMode::Tty && !state.rows.is_empty() {
            self.draw(&mut state);
        }
        if let (Some(s), ProgressMode::Tty | ProgressMode::Plain) = (summary, self.mode) {
            let secs = state.started.elapsed().as_secs_f64();
            self.write(&format!("{}\n", summary_line(s, &state.rows, secs)));
        }
    }
}

impl Reporter for Renderer {
    fn report(&self, e: &ProgressEvent) {
        match self.mode {
            ProgressMode::None | ProgressMode::Auto => return,
            ProgressMode::Json => {
                let line = crate::output::json_string(e, false);
                self.write(&format!("{line}\n"));
                return;
            }
            _ => {}
        }
        if matches!(
            e.event,
            EventKind::Resolving | EventKind::Done | EventKind::Saved
        ) {
            return;
        }
        let mut state = self.state.lock();
        let i = match state.index.get(&e.name) {
            Some(&i) => i,
            None => {
                state.rows.push(Row {
                    name: e.name.clone(),
                    layer: None,
                    compressed: None,
                    event: EventKind::Waiting,
                    progress: 0,
                    total: e.total,
                    started: None,
                    rate: 0.0,
                });
                let i = state.rows.len() - 1;
                state.index.insert(e.name.clone(), i);
                i
            }
        };
        let finished = matches!(e.event, EventKind::Complete | EventKind::AlreadyExists);
        let row = &mut state.rows[i];
        let was_finished = matches!(row.event, EventKind::Complete | EventKind::AlreadyExists);
        row.event = e.event;
        row.total = e.total;
        if e.layer.is_some() {
            row.layer.clone_from(&e.layer);
        }
        if e.compressed.is_some() {
            row.compressed = e.compressed;
        }
        row.progress = if finished { e.total } else { e.progress };
        if matches!(e.event, EventKind::Downloading | EventKind::Extracting) {
            let started = *row.started.get_or_insert_with(Instant::now);
            let secs = started.elapsed().as_secs_f64();
            if secs > 0.05 {
                row.rate = row.progress as f64 / secs;
            }
        }
        match self.mode {
            ProgressMode::Plain if finished && !was_finished => {
                let line = format!(
                    "{} {} {}{}\n",
                    row.id(),
                    e.event.as_str(),
                    human_size(e.total),
                    size_label(row.compressed)
                );
                drop(state);
                self.write(&line);
            }
            ProgressMode::Tty => {
                let due = state.last_draw.is_none_or(|t| t.elapsed() >= REDRAW);
                if due {
                    self.draw(&mut state);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn ev(event: EventKind, name: &str, progress: u64, total: u64) -> ProgressEvent {
        ProgressEvent {
            event,
            name: name.into(),
            parents: vec![],
            progress,
            total,
            layer: None,
            compressed: None,
        }
    }

    fn row(progress: u64, total: u64) -> Row {
        Row {
            name: "sha256:0123456789abcdef".into(),
            layer: None,
            compressed: None,
            event: EventKind::Extracting,
            progress,
            total,
            started: None,
            rate: 2_000_000.0,
        }
    }

    #[test]
    fn wide_and_compact_forms() {
        let wide = wide_line(&row(50, 100), 160);
        assert!(wide.starts_with("0123456789ab  extracting"), "{wide}");
        assert!(wide.contains("[") && wide.contains(">") && wide.contains("50 B / 100 B"));
        assert!(wide.contains("2.00 MB/s"), "{wide}");
        assert!(wide.len() <= 160);
        assert_eq!(
            compact_line(&row(50, 100)),
            "0123456789ab extracting 50B/100B"
        );
        let full = wide_line(&row(100, 100), 120);
        assert!(!full.contains('>') && full.contains("===="), "{full}");
    }

    #[test]
    fn tty_redraws_one_line_per_layer_and_switches_on_resize() {
        let buf = Buf::default();
        let width = Arc::new(Mutex::new(160u16));
        let w = Arc::clone(&width);
        let r = Renderer::with_output(
            ProgressMode::Tty,
            Box::new(buf.clone()),
            Box::new(move || Some(*w.lock())),
        );
        r.report(&ev(EventKind::Waiting, "sha256:aaaa", 0, 10));
        r.report(&ev(EventKind::Waiting, "sha256:bbbb", 0, 20));
        *width.lock() = 80;
        r.report(&ev(EventKind::Complete, "sha256:aaaa", 10, 10));
        r.finish(Some("Loaded"));
        let text = String::from_utf8(buf.0.lock().clone()).unwrap();
        // The final frame (after the last cursor-up `ESC [ n A`) has one line per layer.
        let frame_start = text
            .match_indices("\x1b[")
            .filter(|(i, _)| {
                let rest = &text[i + 2..];
                let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
                digits > 0 && rest.as_bytes().get(digits) == Some(&b'A')
            })
            .map(|(i, _)| i)
            .last()
            .expect("a redraw moved the cursor up");
        let last = &text[frame_start..];
        let lines: Vec<&str> = last.lines().filter(|l| l.contains("\x1b[2K")).collect();
        assert_eq!(lines.len(), 2, "{last:?}");
        assert!(lines[0].ends_with("aaaa complete 10B/10B"), "{lines:?}");
        assert!(text.contains("["), "the wide form was drawn first");
        assert!(last.contains("Loaded: 1 layer written ("), "{last:?}");
    }

    #[test]
    fn plain_prints_each_finished_layer_once_and_json_every_event() {
        let buf = Buf::default();
        let r = Renderer::with_output(
            ProgressMode::Plain,
            Box::new(buf.clone()),
            Box::new(|| None),
        );
        r.report(&ev(EventKind::Extracting, "sha256:aaaa", 5, 10));
        r.report(&ev(EventKind::Complete, "sha256:aaaa", 10, 10));
        r.report(&ev(EventKind::Complete, "sha256:aaaa", 10, 10));
        r.report(&ev(EventKind::AlreadyExists, "sha256:bbbb", 0, 7));
        let text = String::from_utf8(buf.0.lock().clone()).unwrap();
        assert_eq!(text, "aaaa complete 10 B\nbbbb already exists 7 B\n");

        let buf = Buf::default();
        let r = Renderer::with_output(
            ProgressMode::Plain,
            Box::new(buf.clone()),
            Box::new(|| None),
        );
        // Rows are named by their layer id; sizes say if they are compressed;
        // the summary counts only the layers written.
        let with = |event, name: &str, layer: &str, compressed, total| ProgressEvent {
            layer: Some(layer.into()),
            compressed,
            ..ev(event, name, total, total)
        };
        r.report(&with(
            EventKind::Waiting,
            "sha256:blob1",
            "layer1",
            None,
            10,
        ));
        r.report(&with(
            EventKind::Complete,
            "sha256:blob1",
            "layer1",
            Some(true),
            10,
        ));
        r.report(&with(
            EventKind::AlreadyExists,
            "sha256:blob2",
            "layer2",
            None,
            7,
        ));
        r.report(&with(
            EventKind::Complete,
            "sha256:blob3",
            "layer3",
            Some(false),
            5,
        ));
        r.finish(Some("Loaded"));
        let text = String::from_utf8(buf.0.lock().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "layer1 complete 10 B compressed");
        assert_eq!(lines[1], "layer2 already exists 7 B");
        assert_eq!(lines[2], "layer3 complete 5 B uncompressed");
        assert!(
            lines[3].starts_with(
                "Loaded: 2 layers written, 1 already present (10 B compressed + 5 B uncompressed) in "
            ),
            "{text}"
        );

        let buf = Buf::default();
        let r = Renderer::with_output(ProgressMode::Json, Box::new(buf.clone()), Box::new(|| None));
        r.report(&ev(EventKind::Resolving, "x", 0, 0));
        r.report(&ev(EventKind::Extracting, "sha256:aaaa", 5, 10));
        let text = String::from_utf8(buf.0.lock().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["event"], "extracting");
        assert_eq!(lines[1]["progress"], 5);
    }
}
