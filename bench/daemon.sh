#!/usr/bin/env bash
# Benchmark: a pull through the daemon (`storectl --host unix://… pull`) against
# the same pull in-process (`storectl pull`), interleaved.
#
# The image is the generated bench image (~300 MB uncompressed in 3 gzip
# layers, one with ~6,000 files: bench/lib.sh), pushed once into Debian's
# `docker-registry` on a free 127.0.0.1 port. Per run, each on a freshly made,
# loop-mounted ext4 (bench/lib.sh):
#   * in-process: storectl --root SCRATCH/store pull -q REF
#   * daemon:     storectl serve --root SCRATCH/store --socket SCRATCH/d.sock is
#                 started (not timed: it is a long-running process), then
#                 storectl --host unix://SCRATCH/d.sock pull -q REF is timed —
#                 the gRPC stream, progress every 100 ms, the blocking-thread
#                 hop — and the daemon stopped.
# The order alternates between runs. Prints every time, the medians, and the
# ratio (target: daemon <= 1.10x in-process).
#
# Run as root (mounts). Needs docker-registry and skopeo.
# Usage: bench/daemon.sh [RUNS]   (default 5)
set -euo pipefail
runs=${1:-5}
for tool in docker-registry skopeo; do
    command -v "$tool" >/dev/null || { echo "bench/daemon.sh: $tool is not installed" >&2; exit 1; }
done
. "$(dirname "$0")/lib.sh"

regdir="$work/daemon-registry"
daemon_pid=
stop_daemon() {
    if [ -n "$daemon_pid" ]; then kill "$daemon_pid" 2>/dev/null || true; wait "$daemon_pid" 2>/dev/null || true; daemon_pid=; fi
}
trap 'stop_daemon; cleanup; stop_registry; rm -rf "$regdir"' EXIT
start_registry "$regdir"
ref="127.0.0.1:$port/bench:1"
skopeo --insecure-policy copy --quiet --dest-tls-verify=false "oci:$img/oci:latest" "docker://$ref"
echo "image: $(du -sh "$regdir/data" | cut -f1) in the registry (3 gzip layers); registry $ref"

declare -a t_local t_daemon
run_local() {
    fresh_fs
    local s e; s=$(now)
    "$storectl" --root "$scratch/store" pull -q "$ref" >/dev/null
    e=$(now); t_local+=("$(echo "$e - $s" | bc)")
}
run_daemon() {
    fresh_fs
    local sock="$scratch/d.sock"
    "$storectl" --root "$scratch/store" serve --socket "$sock" 2>"$work/daemon.log" &
    daemon_pid=$!
    for _ in $(seq 1 200); do [ -S "$sock" ] && break; sleep 0.05; done
    [ -S "$sock" ] || { echo "bench/daemon.sh: the daemon did not start" >&2; cat "$work/daemon.log" >&2; exit 1; }
    local s e; s=$(now)
    "$storectl" --host "unix://$sock" pull -q "$ref" >/dev/null
    e=$(now); t_daemon+=("$(echo "$e - $s" | bc)")
    stop_daemon
}
for i in $(seq 1 "$runs"); do
    if [ $((i % 2)) = 1 ]; then run_local; run_daemon; else run_daemon; run_local; fi
    echo "run $i: in-process ${t_local[-1]}s  through the daemon ${t_daemon[-1]}s"
done
cleanup

m_local=$(median "${t_local[@]}")
m_daemon=$(median "${t_daemon[@]}")
echo
echo "median over $runs runs:"
printf '  storectl pull (in-process)            %8.3f s\n' "$m_local"
printf '  storectl --host … pull (daemon)       %8.3f s\n' "$m_daemon"
printf '  daemon/in-process = %.2fx (target <= 1.10x)\n' "$(echo "$m_daemon / $m_local" | bc -l)"
