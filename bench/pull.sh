#!/usr/bin/env bash
# Benchmark: `storectl pull` against `skopeo copy … containers-storage:` of the
# same image from the same registry, interleaved.
#
# The image is the generated bench image (`storectl-fixture bench-image`: ~300 MB
# uncompressed in 3 gzip layers, one with ~6,000 files), pushed once with
# `skopeo copy` into Debian's `docker-registry` listening on a free 127.0.0.1
# port with its storage under $BENCH_DIR. Then, per run, each on a freshly
# made, loop-mounted ext4 (bench/lib.sh):
#   * storectl --root SCRATCH/store pull -q 127.0.0.1:PORT/bench:1
#   * skopeo copy --src-tls-verify=false docker://127.0.0.1:PORT/bench:1 \
#       containers-storage:[overlay@SCRATCH/cs/root+SCRATCH/cs/run]bench:1
#     (a per-run graph root and run root: the system store is never touched;
#     the overlay driver's private mounts are undone after each run).
# The order alternates between runs. Both download over loopback HTTP and
# decompress, digest and extract every layer; storectl's time includes its
# fsyncs before publishing, containers/storage does not fsync layer files.
# Prints every time, the medians, and the ratio (target: storectl <= 0.5x skopeo).
#
# Run as root (containers-storage overlay, mounts). Needs docker-registry and skopeo.
# Usage: bench/pull.sh [RUNS]   (default 5)
# Environment: CARGO_TARGET_DIR as usual; BENCH_DIR (default bench/out) holds the
# cached image (shared with bench/load.sh), the registry storage and the scratch dirs.
set -euo pipefail
runs=${1:-5}
for tool in docker-registry skopeo; do
    command -v "$tool" >/dev/null || { echo "bench/pull.sh: $tool is not installed" >&2; exit 1; }
done
. "$(dirname "$0")/lib.sh"

regdir="$work/pull-registry"
trap 'cleanup; stop_registry; rm -rf "$regdir"' EXIT
start_registry "$regdir"
ref="127.0.0.1:$port/bench:1"
skopeo --insecure-policy copy --quiet --dest-tls-verify=false "oci:$img/oci:latest" "docker://$ref"
echo "image: $(du -sh "$regdir/data" | cut -f1) in the registry (3 gzip layers)," \
     "$(for b in "$img"/layer*.tar.gz; do gzip -dc "$b" | wc -c; done | awk '{s+=$1} END {printf "%.0f MB", s/1e6}') uncompressed; registry $ref"

declare -a t_store t_skopeo
run_storectl() {
    fresh_fs
    local s e; s=$(now)
    "$storectl" --root "$scratch/store" pull -q "$ref" >/dev/null
    e=$(now); t_store+=("$(echo "$e - $s" | bc)")
}
run_skopeo() {
    fresh_fs; mkdir -p "$scratch/cs"
    local s e; s=$(now)
    skopeo --insecure-policy copy --quiet --src-tls-verify=false "docker://$ref" \
        "containers-storage:[overlay@$scratch/cs/root+$scratch/cs/run]bench:1"
    e=$(now); t_skopeo+=("$(echo "$e - $s" | bc)")
}
for i in $(seq 1 "$runs"); do
    if [ $((i % 2)) = 1 ]; then run_storectl; run_skopeo; else run_skopeo; run_storectl; fi
    echo "run $i: storectl pull ${t_store[-1]}s  skopeo copy → containers-storage ${t_skopeo[-1]}s"
done
cleanup

m_store=$(median "${t_store[@]}")
m_skopeo=$(median "${t_skopeo[@]}")
echo
echo "median over $runs runs:"
printf '  storectl pull                         %8.3f s\n' "$m_store"
printf '  skopeo copy → containers-storage      %8.3f s\n' "$m_skopeo"
printf '  storectl/skopeo = %.2fx (target <= 0.50x)\n' "$(echo "$m_store / $m_skopeo" | bc -l)"
