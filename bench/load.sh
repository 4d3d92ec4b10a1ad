#!/usr/bin/env bash
# Benchmark: `storectl load` of a generated ~300 MB, 3-layer image (one layer
# with ~6,000 files) against, in the same run and interleaved:
#   * `tar -xzf` of the same three gzip blobs, one after another — compared with
#     storectl loading the OCI layout made of exactly those blobs;
#   * `podman load` of the image's docker-archive (when podman is installed) —
#     compared with storectl loading that same docker-archive.
# Every tool starts from an empty directory after `sync`. storectl's times
# include its fsync/syncfs before publishing; tar's and podman's do not sync.
# Prints every time, the medians, and the ratios. Run as root.
# Usage: bench/load.sh [RUNS]   (default 5)
set -euo pipefail
runs=${1:-5}
here=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$here/target}
work=${BENCH_DIR:-$here/bench/out}
mkdir -p "$work"
cargo build --release --quiet --manifest-path "$here/Cargo.toml" -p storectl -p storectl-fixtures
storectl="$target/release/storectl"
img="$work/image"
if [ ! -f "$img/.complete" ]; then
    rm -rf "$img"
    "$target/release/storectl-fixture" bench-image "$img"
    touch "$img/.complete"
fi
oci="$img/oci"
archive="$img/docker-archive.tar"
blobs=("$img"/layer*.tar.gz)
echo "image: $(du -sh "$oci" | cut -f1) compressed in ${#blobs[@]} layers;" \
     "$(for b in "${blobs[@]}"; do gzip -dc "$b" | wc -c; done | awk '{s+=$1} END {printf "%.0f MB", s/1e6}') uncompressed"

have_podman=0
command -v podman >/dev/null && have_podman=1

now() { date +%s.%N; }
declare -a t_store t_store_da t_tar t_podman
# Every timed run writes to a freshly made ext4 filesystem (a loop-mounted
# image, made outside the timing): deleting the previous run's 6,000 files
# would otherwise slow the next run's file creation (ext4 skips recently
# deleted inodes), penalizing whichever tool runs next.
scratch="$work/scratch"
fsimage="$work/scratch.img"
cleanup() {
    if [ -d "$scratch" ]; then
        grep -o " $scratch[^ ]*" /proc/self/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
        rm -rf "$scratch"
    fi
    rm -f "$fsimage"
}
trap cleanup EXIT
fresh_fs() {
    cleanup
    truncate -s 4G "$fsimage"
    mkfs.ext4 -q -F "$fsimage"
    mkdir -p "$scratch"
    mount -o loop "$fsimage" "$scratch"
    sync
}

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

    if [ "$have_podman" = 1 ]; then
        fresh_fs; mkdir -p "$scratch/podman"
        s=$(now)
        podman --root "$scratch/podman/root" --runroot "$scratch/podman/run" \
            --storage-driver overlay load -q -i "$archive" >/dev/null
        e=$(now)
        t_podman+=("$(echo "$e - $s" | bc)")
    fi
    echo "run $i: storectl(oci) ${t_store[-1]}s  tar -xzf ${t_tar[-1]}s  storectl(docker-archive) ${t_store_da[-1]}s${t_podman:+  podman ${t_podman[-1]}s}"
done

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
m_store=$(median "${t_store[@]}")
m_store_da=$(median "${t_store_da[@]}")
m_tar=$(median "${t_tar[@]}")
echo
echo "median over $runs runs:"
printf '  storectl load (OCI, gzip)       %8.3f s\n' "$m_store"
printf '  tar -xzf (same 3 blobs)         %8.3f s   storectl/tar    = %.2fx (target <= 1.00x)\n' "$m_tar" "$(echo "$m_store / $m_tar" | bc -l)"
printf '  storectl load (docker-archive)  %8.3f s\n' "$m_store_da"
if [ "$have_podman" = 1 ]; then
    m_podman=$(median "${t_podman[@]}")
    printf '  podman load (same archive)      %8.3f s   storectl/podman = %.2fx (target <= 0.30x)\n' "$m_podman" "$(echo "$m_store_da / $m_podman" | bc -l)"
else
    echo "  podman load: skipped (podman is not installed)"
fi
