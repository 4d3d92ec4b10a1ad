//! Everything the CLI prints on standard output goes through one buffered
//! writer, and every string in it is safe for a terminal and for the line
//! formats:
//!
//! * text lines ([`line`], the `outln!` macro) have their control characters
//!   escaped (`\n` → `\\n`, ESC → `\\x1b`): a name read from a share cannot
//!   forge a line of `refresh` or send escape sequences to a terminal;
//! * JSON ([`json`]) is escaped by serde, plus DEL, the C1 controls and the
//!   bidirectional overrides, which serde leaves raw;
//! * a closed pipe (`storectl ls | head -1`) is [`OutputError::Closed`], which
//!   `main` turns into a quiet exit 0.
//!
//! The writer is flushed when the program ends ([`flush`] in `main`), after
//! each line of a long-running verb that must be seen at once (`refresh
//! --watch`, JSON progress), and before an error line goes to stderr.

use std::borrow::Cow;
use std::fmt::{self, Display, Write as _};
use std::io::{self, BufWriter, Stdout, Write};
use std::sync::LazyLock;

use parking_lot::Mutex;

/// Standard output could not be written.
#[derive(Debug)]
pub enum OutputError {
    /// The reader went away (EPIPE): stop quietly.
    Closed,
    /// Any other write error.
    Io(io::Error),
}

impl Display for OutputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OutputError::Closed => f.write_str("standard output is closed"),
            OutputError::Io(e) => write!(f, "writing to standard output: {e}"),
        }
    }
}

impl std::error::Error for OutputError {}

struct Out {
    w: BufWriter<Stdout>,
    closed: bool,
}

static STDOUT: LazyLock<Mutex<Out>> = LazyLock::new(|| {
    Mutex::new(Out {
        w: BufWriter::with_capacity(64 << 10, io::stdout()),
        closed: false,
    })
});

fn classify(out: &mut Out, e: io::Error) -> OutputError {
    if e.kind() == io::ErrorKind::BrokenPipe {
        out.closed = true;
        OutputError::Closed
    } else {
        OutputError::Io(e)
    }
}

/// Write `bytes` as they are (callers escape).
fn write_bytes(bytes: &[u8], flush: bool) -> Result<(), OutputError> {
    let mut out = STDOUT.lock();
    if out.closed {
        return Err(OutputError::Closed);
    }
    let mut result = out.w.write_all(bytes);
    if flush && result.is_ok() {
        result = out.w.flush();
    }
    result.map_err(|e| classify(&mut out, e))
}

/// Print one line, its control characters escaped.
pub fn line(text: impl Display) -> Result<(), OutputError> {
    let text = text.to_string();
    let mut s = match escape_controls(&text) {
        Cow::Borrowed(_) => text,
        Cow::Owned(escaped) => escaped,
    };
    s.push('\n');
    write_bytes(s.as_bytes(), false)
}

/// Print `value` as JSON (pretty or on one line), then a newline.
pub fn json(value: &impl serde::Serialize, pretty: bool) -> Result<(), OutputError> {
    let mut s = json_string(value, pretty);
    s.push('\n');
    write_bytes(s.as_bytes(), false)
}

/// `value` as JSON safe for a terminal (see [`escape_json`]).
pub fn json_string(value: &impl serde::Serialize, pretty: bool) -> String {
    let s = if pretty {
        serde_json::to_string_pretty(value)
    } else {
        serde_json::to_string(value)
    }
    .expect("a JSON value serializes");
    escape_json(&s).into_owned()
}

/// Flush what was printed.
pub fn flush() -> Result<(), OutputError> {
    let mut out = STDOUT.lock();
    if out.closed {
        return Err(OutputError::Closed);
    }
    let result = out.w.flush();
    result.map_err(|e| classify(&mut out, e))
}

/// A `Write` into the shared writer, flushed at each `flush` (progress
/// events on stdout). Write errors after a closed pipe are reported as EPIPE.
pub struct Sink;

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match write_bytes(buf, false) {
            Ok(()) => Ok(buf.len()),
            Err(OutputError::Closed) => Err(io::ErrorKind::BrokenPipe.into()),
            Err(OutputError::Io(e)) => Err(e),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match flush() {
            Ok(()) => Ok(()),
            Err(OutputError::Closed) => Err(io::ErrorKind::BrokenPipe.into()),
            Err(OutputError::Io(e)) => Err(e),
        }
    }
}

/// A verb that reported each of its failures itself (`rmi a b c`) returns
/// this: the program exits 1 without another line.
#[derive(Debug)]
pub struct Reported {
    pub failed: usize,
}

impl Display for Reported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed", self.failed)
    }
}

impl std::error::Error for Reported {}

/// Is this error (anywhere in its chain) standard output being closed?
pub fn is_closed(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|c| matches!(c.downcast_ref::<OutputError>(), Some(OutputError::Closed)))
}

/// Write `storectl: error: MESSAGE` on stderr, escaped, after flushing stdout
/// (so the two streams interleave in order on a terminal).
pub fn error_line(message: &str) {
    let _ = flush();
    let line = format!("storectl: error: {}\n", escape_controls(message));
    let _ = io::stderr().write_all(line.as_bytes());
}

/// A character that must not reach a terminal or a line format raw: the C0
/// and C1 controls, DEL, and the bidirectional overrides and isolates (which
/// reorder what a terminal shows).
fn is_unsafe(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` with every unsafe character escaped: `\n`, `\r`, `\t`, `\x1b`, `\u{202e}`.
pub fn escape_controls(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if is_unsafe(c) && (c as u32) < 0x100 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if is_unsafe(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// JSON text with the unsafe characters serde leaves raw (DEL, C1, bidi)
/// written as `\uXXXX`. They can only occur inside strings (the structure is
/// ASCII), where `\uXXXX` means the same character: the JSON value is unchanged.
pub fn escape_json(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_unsafe(c) && c != '\n' {
            let _ = write!(out, "\\u{:04x}", c as u32);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Print a line on stdout through the shared writer (escaped); `?` on failure.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::output::line(format_args!($($arg)*))?
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_escaped() {
        assert_eq!(escape_controls("plain ünïcode"), "plain ünïcode");
        assert_eq!(escape_controls("a\nb"), "a\\nb");
        assert_eq!(escape_controls("\x1b[2J"), "\\x1b[2J");
        assert_eq!(escape_controls("x\u{9b}y\u{7f}"), "x\\x9by\\x7f");
        assert_eq!(escape_controls("\u{202e}evil"), "\\u{202e}evil");
        assert_eq!(escape_controls("t\tr\r"), "t\\tr\\r");
    }

    #[test]
    fn json_stays_the_same_value() {
        let v = serde_json::json!({"name": "a\u{9b}b\u{1b}c\u{202e}d\ne"});
        let s = json_string(&v, true);
        assert!(s.chars().all(|c| c == '\n' || !is_unsafe(c)), "{s:?}");
        let back: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(back, v);
        assert!(s.contains("\\u009b") && s.contains("\\u202e"), "{s}");
    }
}
