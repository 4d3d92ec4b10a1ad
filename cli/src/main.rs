//! `storectl`: the command-line front end of the storectl image store.
//!
//! Rendering only: every verb is a thin layer over `storectl-storage` /
//! `storectl-transfer` / `storectl-remote`, in its own file under
//! `commands/`; with `--host` it runs through the daemon instead
//! (`daemon/`, which is also `storectl serve`). Argument errors are
//! clap's (usage on stderr, exit code 2); every other error prints as one
//! line on stderr (`storectl: error: …`, control characters escaped) with
//! exit code 1. Standard output goes through one buffered writer
//! ([`output`]); a closed pipe ends the program quietly with exit code 0.

// Doc comments on the clap arguments are the `--help` text, written for a
// terminal (`NAME[:TAG]`), not rustdoc links.
#![allow(rustdoc::broken_intra_doc_links)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

mod commands;
mod daemon;
mod output;
mod progress;
mod util;

/// A layered container image store with read-only sharing across hosts.
#[derive(Debug, Parser)]
#[command(name = "storectl", version, about, propagate_version = true)]
struct Cli {
    /// Store root (default: /var/lib/storectl as root, $XDG_DATA_HOME/storectl otherwise).
    #[arg(long, global = true, env = "STORECTL_ROOT")]
    root: Option<PathBuf>,

    /// How long a command that changes the store (load, pull, rmi, tag, …)
    /// waits for another writer's lock: 30s, 5m, 1h, 500ms, 0 (do not wait).
    /// Default: as long as it takes, as podman does.
    #[arg(long, global = true, env = "STORECTL_LOCK_TIMEOUT", value_name = "DURATION",
          value_parser = util::parse_duration)]
    lock_timeout: Option<std::time::Duration>,

    /// Run the verb through a daemon (`storectl serve`): unix:///PATH/TO/SOCKET.
    /// pull, push, load, save, tag, rmi, ls and inspect work this way.
    #[arg(long, global = true, env = "STORECTL_HOST", value_name = "unix://PATH")]
    host: Option<String>,

    #[command(subcommand)]
    command: commands::Command,
}

/// The default store root for this user.
fn default_root() -> PathBuf {
    if rustix::process::geteuid().is_root() {
        return PathBuf::from("/var/lib/storectl");
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    data.join("storectl")
}

/// The error and its causes on one line, `a: b: c`, leaving out a cause whose
/// text the line already holds (library errors often include their source).
pub(crate) fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.replace('\n', " ")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal: `2>file` and pipes get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .without_time()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("STORECTL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let root = cli.root.clone().unwrap_or_else(default_root);
    util::set_lock_timeout(cli.lock_timeout);
    let result = cli
        .command
        .run(&root, cli.host.as_deref().filter(|h| !h.is_empty()))
        .and_then(|()| output::flush().map_err(anyhow::Error::from));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `storectl ls | head -1`: the reader has what it wanted.
        Err(e) if output::is_closed(&e) => ExitCode::SUCCESS,
        // Each failure was reported as it happened (`rmi a b c`).
        Err(e) if e.is::<output::Reported>() => {
            let _ = output::flush();
            ExitCode::from(1)
        }
        Err(e) => {
            output::error_line(&one_line(&e));
            ExitCode::from(1)
        }
    }
}
