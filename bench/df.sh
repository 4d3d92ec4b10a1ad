#!/usr/bin/env bash
# Benchmark: `storectl df` is incremental (issue 9, point 5): on a store of
# 100 images it answers in under 50 ms, without walking the layers.
#
# A writer root over a share of N images (`storectl-fixture bench-share`,
# 3 layers each, 2 shared; default N=100) plus 5 containers with files in
# their writable layers. After one untimed `df` (which measures each layer
# once and keeps the figures in usage-cache.json), RUNS interleaved timed
# runs of `storectl df --json` (a whole process: opening the store, reading
# the cache, walking the containers' writable layers) and of the baseline
# `du -s -b` + `du -s --inodes` of the same trees (what a walk per call
# would cost). Prints every time, the medians and the ratio df/du, and
# checks df's figures against du's (within 1%).
#
# Usage: bench/df.sh [RUNS]   (default 9; run as root)
# Environment: STORECTL_BENCH_IMAGES (default 100), BENCH_DIR (default bench/out)
set -euo pipefail
runs=${1:-9}
images=${STORECTL_BENCH_IMAGES:-100}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
target=${CARGO_TARGET_DIR:-$here/target}
work=${BENCH_DIR:-$here/bench/out}
[ "$(id -u)" = 0 ] || { echo "$0: run as root (mounts)" >&2; exit 1; }
mkdir -p "$work"
cargo build --release --quiet --manifest-path "$here/Cargo.toml" -p storectl -p storectl-fixtures
storectl="$target/release/storectl"
fixture="$target/release/storectl-fixture"
now() { date +%s.%N; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

dir="$work/df-${images}i"
rm -rf "$dir"
mkdir -p "$dir"
trap 'rm -rf "$dir"' EXIT
"$storectl" --root "$dir/root" init --shared "$dir/share" --role writer >/dev/null
"$fixture" bench-share "$dir/share" --images "$images" >/dev/null
some=$("$storectl" --root "$dir/root" ls -q | head -5)
containers=()
for i in $some; do
    c=$("$storectl" --root "$dir/root" create "$i")
    containers+=("$dir/root/overlay/$c")
    d="$dir/root/overlay/$c/diff"
    mkdir -p "$d/data"
    for f in $(seq 1 200); do head -c $((f * 100)) /dev/zero >"$d/data/f$f"; done
done
"$storectl" --root "$dir/root" df --json >/dev/null   # measures each layer once
trees=("$dir/share/overlay"/[0-9a-f]*)

dfs=(); dus=()
for r in $(seq 1 "$runs"); do
    s=$(now); "$storectl" --root "$dir/root" df --json >"$dir/df.json"; e=$(now)
    dfs+=("$(echo "$e - $s" | bc)")
    s=$(now)
    du -s -c -b "${trees[@]}" "${containers[@]}" >/dev/null
    du -s -c --inodes "${trees[@]}" "${containers[@]}" >/dev/null
    e=$(now)
    dus+=("$(echo "$e - $s" | bc)")
    echo "run $r: df ${dfs[-1]}s, du ${dus[-1]}s"
done
md=$(median "${dfs[@]}"); mu=$(median "${dus[@]}")
printf 'storectl df --json (%s images, %s layers, %s containers): median %.1f ms\n' \
    "$images" "${#trees[@]}" "${#containers[@]}" "$(echo "$md * 1000" | bc)"
printf 'du -b + du --inodes of the same trees:               median %.1f ms\n' "$(echo "$mu * 1000" | bc)"
printf 'ratio df/du: %.3f\n' "$(echo "$md / $mu" | bc -l)"
# The figures agree with du.
want_b=$(du -s -c -b "${trees[@]}" | tail -1 | cut -f1)
want_i=$(du -s -c --inodes "${trees[@]}" | tail -1 | cut -f1)
python3 - "$dir/df.json" "$want_b" "$want_i" <<'PY'
import json, sys
df = json.load(open(sys.argv[1]))
share = [f for f in df["image_filesystems"] if f["source"] == "share"][0]
for name, got, want in [("bytes", share["used_bytes"], int(sys.argv[2])),
                        ("inodes", share["inodes_used"], int(sys.argv[3]))]:
    off = abs(got - want) / max(want, 1)
    print(f"share {name}: df {got}, du {want} ({off:.4%} apart)")
    assert off <= 0.01, "more than 1% apart"
PY
