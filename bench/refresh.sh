#!/usr/bin/env bash
# Benchmark: the reader-side refresher (remote/benches/refresh.rs) on a share of
# 10,000 images / 30,000 layers, generated once and cached under bench/out/.
#
# Measures, medians over several runs, in one process:
#   a. a no-change tick (generation unchanged, no full rescan due)  target < 1 ms
#   b. a full rescan with nothing changed                          target < 500 ms
#      and the initial scan of a fresh reader (reported), beside the same
#      number of plain symlink(2) calls as its legacy links (the kernel's share)
#   f. the initial scan of a reader's next process, from the view the first
#      saved in its root (generation unchanged)                   target < 200 ms
#   c. publish of a 3-layer image by a writer thread → the reader's ImageAdded,
#      with a real refresher thread at the default 1 s interval   target: every sample < 1.5 s
#   d. heap the reader keeps per image after its initial scan     target < 4 KiB
#   e. a naive refresher (re-read and re-parse every record each tick, as iSulad
#      does) — the baseline of the printed ratios
# and prints a table (median, min..max, target, PASS/FAIL) and the ratios; the
# same figures go to bench/out/refresh.json. Times are reported, never asserted.
#
# Usage: bench/refresh.sh [extra args for cargo bench]
# Environment:
#   STORECTL_BENCH_IMAGES        images in the share (default 10000; 1000 for a quick run)
#   STORECTL_BENCH_RUNS          runs per metric (default 9; ticks: at least 15 × 1000 ticks;
#                                the initial scan: at most 3)
#   STORECTL_BENCH_LATENCY_RUNS  publish → ImageAdded samples (default 7)
#   STORECTL_BENCH_DIR           cache and output dir (default bench/out)
#   CARGO_TARGET_DIR             as usual
# The first run at a given size generates the share (about a minute at full
# size); later runs reuse it. `rm -rf bench/out/refresh-share-*` to regenerate.
# Reader roots (and the symlink baseline's dirs) are kept until every figure is
# taken, then deleted: about 0.4 GB each at full size, 2.2 GB in all (the
# initial scan takes at most 3 fresh readers).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
exec cargo bench -p storectl-remote --bench refresh "$@"
