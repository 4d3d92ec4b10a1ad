#!/usr/bin/env bash
# Benchmark: a writer's cost must not grow with its share (issue 8, point 7).
#
# Two writer roots, each with its own share: one share holds 10,000 images
# (30,000 layers; generated once by `storectl-fixture bench-share` and cached
# under bench/out/), the other is empty. The same image (a generated 3-layer,
# ~40 MB image with 1,000 files) is loaded into each, interleaved, several runs
# (each followed by an untimed `rmi`), as `storectl load` processes from start
# to exit: opening the store, taking the lock, extracting, publishing. Prints
# every time, the medians and the ratio big/empty (target <= 1.20x), and the
# same for `rmi`. Both shares are on the same filesystem, warm.
#
# Then the same with one long-lived `Store` per writer (remote/examples/
# writer-bench.rs: the library, as `storectl serve` holds it): the cost of a
# mutation itself, without each process's opening read of the store. And
# last `storectl --host unix://… load` against a `storectl serve` per writer:
# the same, as a user types it with the writer run as a daemon.
#
# The filesystem matters: on an ext4 without a journal (this project's test
# machine's root) the kernel gives every new inode only after skipping the
# inodes freed in the last 1-6 minutes (`recently_deleted()`), and each run's
# untimed `rmi` frees the 1,000 files the next load makes again. In the big
# share's nearly full inode groups that scan is most of the load's time
# (perf: find_inode_bit/recently_deleted ~36% of the CPU samples). So by
# default both shares live on a journaled ext4 made for this bench (a
# sparse 16 GB image, bench/out/writer-fs.img, loop-mounted while the bench
# runs and kept with the cached share between runs): that measures storectl
# rather than that. BENCH_DIR=DIR measures on DIR's filesystem instead.
#
# Usage: bench/writer.sh [RUNS]   (default 15: the shared test machine's I/O stalls hit single runs; run as root)
# Environment: STORECTL_BENCH_IMAGES (default 10000), BENCH_DIR (default: the
# journaled ext4 above)
set -euo pipefail
runs=${1:-15}
images=${STORECTL_BENCH_IMAGES:-10000}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
target=${CARGO_TARGET_DIR:-$here/target}
[ "$(id -u)" = 0 ] || { echo "$0: run as root (layer ownership, xattrs, a loop mount)" >&2; exit 1; }
mounted=
pids=()
on_exit() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    if [ -n "$mounted" ]; then umount "$work" 2>/dev/null || umount -l "$work" 2>/dev/null || true; fi
}
trap on_exit EXIT
if [ -n "${BENCH_DIR:-}" ]; then
    work=$BENCH_DIR
    mkdir -p "$work"
else
    fsimage="$here/bench/out/writer-fs.img"
    work="$here/bench/out/writer-fs"
    mkdir -p "$work"
    if ! mountpoint -q "$work"; then
        if [ ! -f "$fsimage" ]; then
            truncate -s 16G "$fsimage"
            mkfs.ext4 -q -F -O has_journal "$fsimage"
        fi
        mount -o loop "$fsimage" "$work"
        mounted=1
    fi
fi
cargo build --release --quiet --manifest-path "$here/Cargo.toml" -p storectl -p storectl-fixtures
cargo build --release --quiet --manifest-path "$here/Cargo.toml" -p storectl-remote --example writer-bench
storectl="$target/release/storectl"
fixture="$target/release/storectl-fixture"
now() { date +%s.%N; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

img="$work/writer-image"
if [ ! -f "$img/.complete" ]; then
    rm -rf "$img"
    "$fixture" bench-image "$img" --files 1000 --size-mb 40 >/dev/null
    touch "$img/.complete"
fi
image="$img/oci"

# The big share: generated once, cached (the marker names its size).
big="$work/writer-share-${images}i"
if [ ! -f "$big/.complete" ]; then
    rm -rf "$big"
    mkdir -p "$big"
    "$storectl" --root "$big/root" init --shared "$big/share" --role writer >/dev/null
    "$fixture" bench-share "$big/share" --images "$images"
    touch "$big/.complete"
fi
empty="$work/writer-share-empty"
rm -rf "$empty"
mkdir -p "$empty"
"$storectl" --root "$empty/root" init --shared "$empty/share" --role writer >/dev/null
# rmi deletes the layers at once (no grace period: each load re-extracts).
for s in "$big/share" "$empty/share"; do
    sed -i 's/"removed_layers_grace_secs": *[0-9]*/"removed_layers_grace_secs": 0/' "$s/storectl-share.json"
    grep -q '"removed_layers_grace_secs": *0' "$s/storectl-share.json" ||
        sed -i 's/}$/,"removed_layers_grace_secs":0}/' "$s/storectl-share.json"
done

id=""
# Untimed warm-up: each writer's first write sweeps and repairs once (a new
# lock file), and leaves no image of ours behind from an interrupted run.
for w in "$big" "$empty"; do
    id=$("$storectl" --root "$w/root" load -q "$image" | tail -1)
    "$storectl" --root "$w/root" rmi "$id" >/dev/null
done
count=$(find "$big/share/overlay-images" -mindepth 1 -maxdepth 1 -not -name '.*' | wc -l)
echo "share: $count images ($big/share); image: $(du -sh "$image" | cut -f1) OCI layout, 3 layers"
fsdev=$(df --output=source "$work" | tail -1)
journal="no journal"
if dumpe2fs -h "$fsdev" 2>/dev/null | grep -q has_journal; then journal="journaled"; fi
echo "filesystem: $(df --output=fstype "$work" | tail -1) ($journal) on $fsdev"

declare -a t_big t_empty r_big r_empty
for i in $(seq 1 "$runs"); do
    order=("$big" "$empty")
    [ $((i % 2)) = 0 ] && order=("$empty" "$big")
    for w in "${order[@]}"; do
        sync
        s=$(now); "$storectl" --root "$w/root" load -q "$image" >/dev/null; e=$(now)
        t=$(echo "$e - $s" | bc)
        s=$(now); "$storectl" --root "$w/root" rmi "$id" >/dev/null; e=$(now)
        r=$(echo "$e - $s" | bc)
        if [ "$w" = "$big" ]; then t_big+=("$t"); r_big+=("$r"); else t_empty+=("$t"); r_empty+=("$r"); fi
    done
    echo "run $i: load into $images-image share ${t_big[-1]}s, into empty share ${t_empty[-1]}s;" \
         "rmi ${r_big[-1]}s / ${r_empty[-1]}s"
done

mb=$(median "${t_big[@]}"); me=$(median "${t_empty[@]}")
rb=$(median "${r_big[@]}"); re=$(median "${r_empty[@]}")
echo
echo "median over $runs runs:"
printf '  load into a %s-image share  %8.3f s\n' "$images" "$mb"
printf '  load into an empty share      %8.3f s   ratio = %.2fx (target <= 1.20x)\n' "$me" "$(echo "$mb / $me" | bc -l)"
printf '  rmi from the %s-image share %8.3f s\n' "$images" "$rb"
printf '  rmi from the empty share      %8.3f s   ratio = %.2fx\n' "$re" "$(echo "$rb / $re" | bc -l)"

echo
"$target/release/examples/writer-bench" "$big/root" "$empty/root" "$image" "$runs"

# Then `storectl --host unix://… load` against one `storectl serve` per
# writer (started untimed, as a long-running daemon): what a user of a big
# share's writer types when it runs as a daemon.
sock_big="$work/writer-big.sock"; sock_empty="$work/writer-empty.sock"
for pair in "$big:$sock_big" "$empty:$sock_empty"; do
    w=${pair%%:*}; s=${pair#*:}
    rm -f "$s"
    "$storectl" serve --root "$w/root" --socket "$s" 2>/dev/null &
    pids+=($!)
done
for s in "$sock_big" "$sock_empty"; do
    for _ in $(seq 100); do [ -S "$s" ] && break; sleep 0.1; done
    [ -S "$s" ] || { echo "$0: the daemon did not start ($s)" >&2; exit 1; }
done
declare -a d_big d_empty
for i in $(seq 1 "$runs"); do
    order=("$big:$sock_big" "$empty:$sock_empty")
    [ $((i % 2)) = 0 ] && order=("$empty:$sock_empty" "$big:$sock_big")
    for pair in "${order[@]}"; do
        w=${pair%%:*}; s=${pair#*:}
        sync
        t0=$(now); "$storectl" --host "unix://$s" load -q "$image" >/dev/null; t1=$(now)
        "$storectl" --host "unix://$s" rmi "$id" >/dev/null
        t=$(echo "$t1 - $t0" | bc)
        if [ "$w" = "$big" ]; then d_big+=("$t"); else d_empty+=("$t"); fi
    done
    echo "daemon run $i: load into $images-image share ${d_big[-1]}s, into empty share ${d_empty[-1]}s"
done
db=$(median "${d_big[@]}"); de=$(median "${d_empty[@]}")
echo "through storectl serve (--host), median over $runs runs:"
printf '  load: big share %.3f s, empty share %.3f s, ratio = %.2fx (target <= 1.20x)\n' "$db" "$de" "$(echo "$db / $de" | bc -l)"
