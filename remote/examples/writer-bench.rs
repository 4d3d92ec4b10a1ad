//! Per-mutation cost of a long-lived writer (`bench/writer.sh` runs it): one
//! `Store` per root, opened once (as `storectl serve` or a library user
//! holds it, through `storectl_remote::open_store`: a writer's share hook), then the same image loaded and removed again, interleaved
//! between a writer on a big share and one on an empty share.
//!
//! ```text
//! writer-bench BIG_ROOT EMPTY_ROOT IMAGE RUNS
//! ```
//! Prints each run and the medians of load and rmi, and their ratios.
#![allow(clippy::print_stdout)]

use std::time::Instant;

use storectl_remote::open_store;
use storectl_storage::{LoadOptions, NoopReporter, StoreOptions};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [big, empty, image, runs] = args.as_slice() else {
        return Err("usage: writer-bench BIG_ROOT EMPTY_ROOT IMAGE RUNS".into());
    };
    let runs: usize = runs.parse()?;
    let opened = Instant::now();
    let big = open_store(StoreOptions::new(big))?;
    let open_big = opened.elapsed().as_secs_f64();
    let opened = Instant::now();
    let empty = open_store(StoreOptions::new(empty))?;
    let open_empty = opened.elapsed().as_secs_f64();
    println!(
        "library: opened the writers once: {} images in {open_big:.3} s, {} in {open_empty:.3} s",
        big.images().len(),
        empty.images().len()
    );
    let opts = LoadOptions::default();
    let mut times = [(Vec::new(), Vec::new()), (Vec::new(), Vec::new())];
    for run in 0..runs {
        let order = if run % 2 == 0 { [0, 1] } else { [1, 0] };
        for w in order {
            let store = if w == 0 { &big } else { &empty };
            let s = Instant::now();
            let img = store.load(image, &opts, &NoopReporter)?;
            times[w].0.push(s.elapsed().as_secs_f64());
            let s = Instant::now();
            store.remove_image(&img.id, false)?;
            times[w].1.push(s.elapsed().as_secs_f64());
        }
        println!(
            "library run {}: load {:.3} s / {:.3} s, rmi {:.3} s / {:.3} s (big / empty)",
            run + 1,
            times[0].0[run],
            times[1].0[run],
            times[0].1[run],
            times[1].1[run]
        );
    }
    let [(lb, rb), (le, re)] = times;
    let (lb, rb, le, re) = (median(lb), median(rb), median(le), median(re));
    println!("library, median over {runs} runs (one open Store per writer):");
    println!(
        "  load: big share {lb:.3} s, empty share {le:.3} s, ratio = {:.2}x (target <= 1.20x)",
        lb / le
    );
    println!(
        "  rmi:  big share {rb:.3} s, empty share {re:.3} s, ratio = {:.2}x",
        rb / re
    );
    Ok(())
}
