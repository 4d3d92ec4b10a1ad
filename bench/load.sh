#!/usr/bin/env bash
# Benchmark: `storectl load` of a generated ~300 MB, 3-layer image (one layer
# with ~6,000 files) against, in the same run and interleaved:
#   * `tar -xzf` of the same three gzip blobs, one after another — compared with
#     storectl loading the OCI layout made of exactly those blobs;
#   * `podman load` of the image's docker-archive (when podman is installed) —
#     compared with storectl loading that same docker-archive.
# Every timed run writes to a freshly made, loop-mounted ext4 (bench/lib.sh). storectl's times
# include its fsync/syncfs before publishing; tar's and podman's do not sync
# (the targets are against those); an extra "info" line times each followed by
# `sync -f` of its filesystem, for a comparison at equal durability.
# Prints every time, the medians, and the ratios. Run as root.
# Usage: bench/load.sh [RUNS]   (default 5)
set -euo pipefail
runs=${1:-5}
. "$(dirname "$0")/lib.sh"
oci="$img/oci"
archive="$img/docker-archive.tar"
blobs=("$img"/layer*.tar.gz)
echo "image: $(du -sh "$oci" | cut -f1) compressed in ${#blobs[@]} layers;" \
     "$(for b in "${blobs[@]}"; do gzip -dc "$b" | wc -c; done | awk '{s+=$1} END {printf "%.0f MB", s/1e6}') uncompressed"

have_podman=0
command -v podman >/dev/null && have_podman=1

declare -a t_store t_store_da t_tar t_podman t_tar_sync t_podman_sync

for i in $(seq 1 "$runs"); do
    fresh_fs
    s=$(now); "$storectl" --root "$scratch/store" load -q "$oci" >/dev/null; e=$(now)
    t_store+=("$(echo "$e - $s" | bc)")

    fresh_fs
    s=$(now); "$storectl" --root "$scratch/store" load -q "$archive" >/dev/null; e=$(now)
    t_store_da+=("$(echo "$e - $s" | bc)")

    fresh_fs; mkdir -p "$scratch/tar"
    s=$(now)
    for b in "${blobs[@]}"; do
        d="$scratch/tar/$(basename "$b")"; mkdir -p "$d"; tar -xzf "$b" -C "$d"
    done
    e=$(now)
    t_tar+=("$(echo "$e - $s" | bc)")
    sync -f "$scratch"; e2=$(now)
    t_tar_sync+=("$(echo "$e2 - $s" | bc)")

    if [ "$have_podman" = 1 ]; then
        fresh_fs; mkdir -p "$scratch/podman"
        s=$(now)
        podman --root "$scratch/podman/root" --runroot "$scratch/podman/run" \
            --storage-driver overlay load -q -i "$archive" >/dev/null
        e=$(now)
        t_podman+=("$(echo "$e - $s" | bc)")
        sync -f "$scratch"; e2=$(now)
        t_podman_sync+=("$(echo "$e2 - $s" | bc)")
    fi
    echo "run $i: storectl(oci) ${t_store[-1]}s  tar -xzf ${t_tar[-1]}s  storectl(docker-archive) ${t_store_da[-1]}s${t_podman:+  podman ${t_podman[-1]}s}"
done

m_store=$(median "${t_store[@]}")
m_store_da=$(median "${t_store_da[@]}")
m_tar=$(median "${t_tar[@]}")
echo
echo "median over $runs runs:"
printf '  storectl load (OCI, gzip)       %8.3f s\n' "$m_store"
printf '  tar -xzf (same 3 blobs)         %8.3f s   storectl/tar    = %.2fx (target <= 1.00x)\n' "$m_tar" "$(echo "$m_store / $m_tar" | bc -l)"
m_tar_sync=$(median "${t_tar_sync[@]}")
printf '    info: tar -xzf + sync -f      %8.3f s   storectl/that   = %.2fx (as durable as storectl)\n' "$m_tar_sync" "$(echo "$m_store / $m_tar_sync" | bc -l)"
printf '  storectl load (docker-archive)  %8.3f s\n' "$m_store_da"
if [ "$have_podman" = 1 ]; then
    m_podman=$(median "${t_podman[@]}")
    printf '  podman load (same archive)      %8.3f s   storectl/podman = %.2fx (target <= 0.30x)\n' "$m_podman" "$(echo "$m_store_da / $m_podman" | bc -l)"
    m_podman_sync=$(median "${t_podman_sync[@]}")
    printf '    info: podman load + sync -f   %8.3f s   storectl/that   = %.2fx (as durable as storectl)\n' "$m_podman_sync" "$(echo "$m_store_da / $m_podman_sync" | bc -l)"
else
    echo "  podman load: skipped (podman is not installed)"
fi
