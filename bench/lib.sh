# Shared by bench/load.sh and bench/pull.sh (sourced, not run).
#
# Sets: here (the checkout), work (BENCH_DIR, default bench/out), storectl (the
# release binary), img (the cached bench image: `storectl-fixture bench-image`,
# ~300 MB uncompressed in 3 gzip layers, one with ~6,000 files), scratch.
# Gives: now, median, fresh_fs, cleanup (also run on EXIT; a script with more
# to clean up calls it from its own trap).
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
target=${CARGO_TARGET_DIR:-$here/target}
work=${BENCH_DIR:-$here/bench/out}
[ "$(id -u)" = 0 ] || { echo "$0: run as root (loop mounts, layer ownership)" >&2; exit 1; }
mkdir -p "$work"
cargo build --release --quiet --manifest-path "$here/Cargo.toml" -p storectl -p storectl-fixtures
storectl="$target/release/storectl"
img="$work/image"
if [ ! -f "$img/.complete" ]; then
    rm -rf "$img"
    "$target/release/storectl-fixture" bench-image "$img"
    touch "$img/.complete"
fi

now() { date +%s.%N; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

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
