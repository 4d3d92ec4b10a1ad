//! A private tmux server for tests that look at what a terminal shows.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use storectl_fixtures::registry::stdout_of;

/// A private tmux server (its own socket), killed on drop.
pub struct Tmux {
    socket: String,
}

impl Tmux {
    pub fn new(tag: &str) -> Tmux {
        Tmux {
            socket: format!("storectl-test-{}-{tag}", std::process::id()),
        }
    }

    pub fn cmd(&self, args: &[&str]) -> String {
        stdout_of(
            Command::new("tmux")
                .args(["-L", &self.socket, "-f", "/dev/null"])
                .args(args),
        )
    }

    /// Run `script` in a detached `width`×50 session. Returns the pane when
    /// the script printed `EXIT=<code>`, and everything the pane received.
    pub fn run(&self, dir: &Path, width: u16, script: &str) -> (String, String) {
        let go = dir.join(format!("go-{width}"));
        let raw = dir.join(format!("raw-{width}.log"));
        let file = dir.join(format!("run-{width}.sh"));
        let body = format!(
            "while [ ! -e '{}' ]; do sleep 0.02; done\n{script}\necho \"EXIT=$?\"\nsleep 120\n",
            go.display()
        );
        std::fs::write(&file, body).unwrap();
        let w = width.to_string();
        let session = format!("w{width}");
        self.cmd(&[
            "new-session",
            "-d",
            "-s",
            &session,
            "-x",
            &w,
            "-y",
            "50",
            &format!("sh {}", file.display()),
        ]);
        let cols = self.cmd(&["display-message", "-p", "-t", &session, "#{pane_width}"]);
        assert_eq!(cols.trim(), w, "tmux pane width");
        self.cmd(&[
            "pipe-pane",
            "-t",
            &session,
            "-o",
            &format!("cat > '{}'", raw.display()),
        ]);
        std::fs::write(&go, "").unwrap();
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let pane = self.cmd(&["capture-pane", "-p", "-t", &session]);
            if pane.contains("EXIT=") {
                std::thread::sleep(Duration::from_millis(100)); // let pipe-pane's cat catch up
                let raw = std::fs::read(&raw).unwrap_or_default();
                return (pane, String::from_utf8_lossy(&raw).into_owned());
            }
            assert!(
                Instant::now() < deadline,
                "pull in tmux did not finish:\n{pane}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .stderr(Stdio::null())
            .status();
    }
}

/// `text` without CSI escape sequences (`ESC [ params letter`) and CRs.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' if chars.peek() == Some(&'[') => {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}
