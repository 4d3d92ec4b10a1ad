//! `storectl gc`: on a writer, delete the removed shared layers whose grace
//! period is over (docs/sharing.md, "Removing images readers use").

use std::path::Path;
use std::time::Duration;

use crate::outln;
use crate::util::open_store;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Delete the layers removed longer ago than this instead (e.g. 10m;
    /// 0 = every removed layer no image needs, now).
    #[arg(long, value_name = "DURATION", value_parser = crate::util::parse_duration)]
    grace: Option<Duration>,
}

pub fn run(root: &Path, args: Args) -> anyhow::Result<()> {
    let store = open_store(root)?;
    let report = store.gc(args.grace.map(|d| d.as_secs()))?;
    for id in &report.deleted {
        outln!("Deleted layer: {id}");
    }
    for (id, until) in &report.waiting {
        outln!("Waiting: {id} until {until}");
    }
    Ok(())
}
