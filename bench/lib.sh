# Shared by the bench/*.sh scripts (sourced, not run).
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

# A docker-registry on a free loopback port with fresh storage in DIR: sets
# port and reg_pid; stop_registry stops it (call it from your EXIT trap).
reg_pid=
stop_registry() {
    if [ -n "$reg_pid" ]; then kill "$reg_pid" 2>/dev/null || true; wait "$reg_pid" 2>/dev/null || true; fi
}
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
start_registry() {
    local regdir=$1 started=0
    rm -rf "$regdir"; mkdir -p "$regdir"
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        port=$((20000 + RANDOM % 40000))
        port_free "$port" || continue
        printf 'version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: %s/data\nhttp:\n  addr: 127.0.0.1:%s\n' \
            "$regdir" "$port" >"$regdir/config.yml"
        docker-registry serve "$regdir/config.yml" >"$regdir/registry.log" 2>&1 &
        reg_pid=$!
        for _ in $(seq 1 100); do
            if ! port_free "$port"; then started=1; break; fi
            kill -0 "$reg_pid" 2>/dev/null || break
            sleep 0.1
        done
        [ "$started" = 1 ] && break
        stop_registry; reg_pid=
    done
    [ "$started" = 1 ] || { echo "$0: docker-registry did not start" >&2; cat "$regdir/registry.log" >&2; exit 1; }
}
