#!/usr/bin/env bash
# Benchmark: a reader's one-shot commands cost a constant number of file-system
# operations on the share, whatever its size (issue 10, point 3).
#
# For each share size (default 1,000 and 10,000 images of 3 layers, generated
# once by `storectl-fixture bench-share` and cached under bench/out/, then given
# containers/storage's index by a writer's load + rmi), two reader roots:
#   fuse   wired to the share mounted through /work/shared/tools/slowfs.py (a
#          read-only FUSE passthrough that charges DELAY ms per operation and
#          counts every operation: the network-share stand-in);
#   local  wired to the share directory itself.
# Measured, as `storectl` processes from start to exit:
#   unchanged  `storectl ls` when `generation` is what the reader last validated
#              (its saved view stands: no entry on the share is touched);
#   +image     `storectl ls` after the writer loaded a 3-layer image (the index
#              is read; only the new ids are looked up on the share; the share's
#              grace period is 0, so the layers are new each time);
#   -image     `storectl ls` after the writer removed it;
#   refresh    `storectl refresh` (one-shot), unchanged: the refresher's start;
#   baseline   `storectl ls` with the saved view deleted: every record read, as
#              every one-shot command did before (local share only; counted
#              once: through FUSE it takes minutes at 10,000 images).
# For each: the median wall time over RUNS runs, then one more run counted two
# ways: operations that reached the FUSE share (slowfs's counter) and system
# calls on paths under the share (`strace -f -y`, filtered to the mount and the
# root's RO links). Targets: unchanged `ls` at most 50 share operations at every
# size and under 100 ms (its CPU time is printed too: on a shared machine the
# wall time depends on the other load). Times are printed, never asserted.
#
# Usage: bench/reader.sh [RUNS]   (default 5; run as root)
# Environment: STORECTL_BENCH_SIZES (default "1000 10000"),
#              STORECTL_BENCH_DELAY_MS (slowfs delay per operation, default 0.3),
#              BENCH_DIR (default bench/out)
set -euo pipefail
runs=${1:-5}
sizes=${STORECTL_BENCH_SIZES:-"1000 10000"}
delay=${STORECTL_BENCH_DELAY_MS:-0.3}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
target=${CARGO_TARGET_DIR:-$here/target}
work=${BENCH_DIR:-$here/bench/out}
slowfs=${SLOWFS:-/work/shared/tools/slowfs.py}
[ "$(id -u)" = 0 ] || { echo "$0: run as root (FUSE mounts, layer ownership)" >&2; exit 1; }
command -v strace >/dev/null || { echo "$0: strace is needed" >&2; exit 1; }
[ -x "$slowfs" ] || { echo "$0: $slowfs is needed (python3-fusepy)" >&2; exit 1; }
mkdir -p "$work"
cargo build --release --quiet --manifest-path "$here/Cargo.toml" -p storectl -p storectl-fixtures
storectl="$target/release/storectl"
fixture="$target/release/storectl-fixture"
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
ms() { echo "$1 * 1000" | bc -l | xargs printf '%.1f'; }

img="$work/reader-image"
if [ ! -f "$img/.complete" ]; then
    rm -rf "$img"
    "$fixture" demo-image "$img" >/dev/null
    touch "$img/.complete"
fi
image="$img/oci"

mounts=()
cleanup() {
    for m in "${mounts[@]}"; do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
}
trap cleanup EXIT

# Operations slowfs counted so far (it writes its counter every 0.5 s).
fuse_ops() {
    sleep 0.7
    /usr/bin/python3 -c 'import json,sys; print(sum(json.load(open(sys.argv[1])).values()))' "$1"
}

# System calls of `storectl ARGS…` on paths under the share: the mount (or
# share) path, and the root's RO links into it.
share_syscalls() {
    local share=$1; shift
    local log; log=$(mktemp)
    strace -f -y -o "$log" "$storectl" "$@" >/dev/null 2>&1
    grep -v 'resumed>' "$log" | grep -cE "${share}[/\">]|/RO[/\">]" || true
    rm -f "$log"
}

# `storectl ARGS…`'s wall time in seconds; its CPU time (user + system, all
# threads, from getrusage) is appended to $cpu_log. The clock runs around the
# process only (python's own start is not in it).
cpu_log=$(mktemp)
timed() {
    /usr/bin/python3 - "$cpu_log" "$storectl" "$@" <<'PY'
import resource, subprocess, sys, time
log, cmd = sys.argv[1], sys.argv[2:]
t = time.monotonic()
subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True)
wall = time.monotonic() - t
r = resource.getrusage(resource.RUSAGE_CHILDREN)
open(log, "a").write(f"{r.ru_utime + r.ru_stime}\n")
print(f"{wall:.6f}")
PY
}
# The median CPU time (s) of the runs logged since `cpu_mark`.
cpu_mark() { : >"$cpu_log"; }
cpu_median() { median $(cat "$cpu_log"); }

declare -A summary
for n in $sizes; do
    w="$work/reader-share-${n}i"
    if [ ! -f "$w/.complete" ]; then
        rm -rf "$w"
        mkdir -p "$w"
        "$storectl" --root "$w/writer" init --shared "$w/share" --role writer >/dev/null
        "$fixture" bench-share "$w/share" --images "$n" >/dev/null
        # The writer's first mutation writes containers/storage's index.
        id=$("$storectl" --root "$w/writer" load -q "$image" | tail -1)
        "$storectl" --root "$w/writer" rmi "$id" >/dev/null
        touch "$w/.complete"
    fi
    share="$w/share"
    # A removed image's layers go with it (no grace period): each run's load
    # publishes 3 new layers.
    /usr/bin/python3 - "$share/storectl-share.json" <<'PY'
import json, sys
p = sys.argv[1]
v = json.load(open(p))
v["removed_layers_grace_secs"] = 0
open(p, "w").write(json.dumps(v))
PY
    images=$(find "$share/overlay-images" -mindepth 1 -maxdepth 1 -type d -not -name '.*' | wc -l)
    layers=$(find "$share/overlay-layers" -mindepth 1 -maxdepth 1 -type d -not -name '.*' | wc -l)
    idx=$(( $(stat -c %s "$share/overlay-layers/layers.json") + $(stat -c %s "$share/overlay-images/images.json") ))

    mnt="$w/mnt"
    mkdir -p "$mnt"
    umount "$mnt" 2>/dev/null || true
    fuse="$w/reader-fuse"; local_root="$w/reader-local"
    rm -rf "$fuse" "$local_root"
    echo
    echo "== share: $images images, $layers layers ($share; index $((idx / 1024)) KiB); slowfs delay ${delay} ms"
    echo "   first scan of each fresh reader (not timed) …"
    # The fuse reader's first scan through a plain bind mount at the same
    # path (through slowfs it would take minutes); then slowfs replaces it.
    mount --bind "$share" "$mnt"
    mounts+=("$mnt")
    "$storectl" --root "$fuse" init --shared "$mnt" --role reader >/dev/null
    "$storectl" --root "$fuse" ls -q >/dev/null
    umount "$mnt"
    "$storectl" --root "$local_root" init --shared "$share" --role reader >/dev/null
    "$storectl" --root "$local_root" ls -q >/dev/null
    ops="$w/slowfs-ops.json"
    rm -f "$ops"
    "$slowfs" "$share" "$mnt" "$delay" "$ops" >"$w/slowfs.log" 2>&1 &
    for _ in $(seq 50); do mountpoint -q "$mnt" && [ -f "$ops" ] && break; sleep 0.2; done
    mountpoint -q "$mnt" || { echo "$0: slowfs did not mount $mnt (see $w/slowfs.log)" >&2; exit 1; }

    # The baseline: what every one-shot command did before the saved view.
    rm -f "$local_root/share-view"
    base_t=$(timed --root "$local_root" ls)
    rm -f "$local_root/share-view"
    base_sc=$(share_syscalls "$share" --root "$local_root" ls)

    declare -a t_un_f t_un_l t_add_f t_add_l t_rm_f t_rm_l t_ref_f t_ref_l c_un
    t_un_f=(); t_un_l=(); t_add_f=(); t_add_l=(); t_rm_f=(); t_rm_l=(); t_ref_f=(); t_ref_l=(); c_un=()
    for i in $(seq 1 "$runs"); do
        id=$("$storectl" --root "$w/writer" load -q "$image" | tail -1)
        t_add_f+=("$(timed --root "$fuse" ls)"); t_add_l+=("$(timed --root "$local_root" ls)")
        t_un_f+=("$(timed --root "$fuse" ls)")
        cpu_mark; t_un_l+=("$(timed --root "$local_root" ls)"); c_un+=("$(cpu_median)")
        t_ref_f+=("$(timed --root "$fuse" refresh)"); t_ref_l+=("$(timed --root "$local_root" refresh)")
        "$storectl" --root "$w/writer" rmi "$id" >/dev/null
        t_rm_f+=("$(timed --root "$fuse" ls)"); t_rm_l+=("$(timed --root "$local_root" ls)")
        "$storectl" --root "$fuse" refresh >/dev/null; "$storectl" --root "$local_root" refresh >/dev/null
        echo "   run $i: +image ls $(ms "${t_add_f[-1]}") ms, unchanged ls $(ms "${t_un_f[-1]}") ms, -image ls $(ms "${t_rm_f[-1]}") ms (fuse)"
    done

    # Counted runs (fuse root): FUSE operations and share syscalls.
    count() { # label, then storectl args
        local label=$1; shift
        local before after sc
        before=$(fuse_ops "$ops")
        "$storectl" "$@" >/dev/null
        after=$(fuse_ops "$ops")
        echo "$label $((after - before))"
    }
    id=$("$storectl" --root "$w/writer" load -q "$image" | tail -1)
    ops_add=$(count x --root "$fuse" ls | cut -d' ' -f2)
    ops_un=$(count x --root "$fuse" ls | cut -d' ' -f2)
    ops_ref=$(count x --root "$fuse" refresh | cut -d' ' -f2)
    "$storectl" --root "$w/writer" rmi "$id" >/dev/null
    ops_rm=$(count x --root "$fuse" ls | cut -d' ' -f2)
    id=$("$storectl" --root "$w/writer" load -q "$image" | tail -1)
    sc_add=$(share_syscalls "$mnt" --root "$fuse" ls)
    sc_un=$(share_syscalls "$mnt" --root "$fuse" ls)
    sc_ref=$(share_syscalls "$mnt" --root "$fuse" refresh)
    "$storectl" --root "$w/writer" rmi "$id" >/dev/null
    sc_rm=$(share_syscalls "$mnt" --root "$fuse" ls)

    printf '\n   %-34s %12s %12s %14s %14s\n' "one-shot command ($images images)" "fuse (ms)" "local (ms)" "fuse ops" "share syscalls"
    row() { printf '   %-34s %12s %12s %14s %14s\n' "$@"; }
    row "ls, generation unchanged" "$(ms "$(median "${t_un_f[@]}")")" "$(ms "$(median "${t_un_l[@]}")")" "$ops_un" "$sc_un"
    row "ls after the writer loaded 1 image" "$(ms "$(median "${t_add_f[@]}")")" "$(ms "$(median "${t_add_l[@]}")")" "$ops_add" "$sc_add"
    row "ls after the writer removed it" "$(ms "$(median "${t_rm_f[@]}")")" "$(ms "$(median "${t_rm_l[@]}")")" "$ops_rm" "$sc_rm"
    row "refresh, generation unchanged" "$(ms "$(median "${t_ref_f[@]}")")" "$(ms "$(median "${t_ref_l[@]}")")" "$ops_ref" "$sc_ref"
    row "baseline: ls without a saved view" "-" "$(ms "$base_t")" "-" "$base_sc"
    verdict="FAIL"
    [ "$sc_un" -le 50 ] && [ "$ops_un" -le 50 ] && verdict="PASS"
    echo "   unchanged ls: $sc_un share syscalls, $ops_un FUSE operations (target <= 50: $verdict);" \
         "$(echo "$base_sc / ($sc_un + 0.0001)" | bc)x fewer syscalls than the baseline;" \
         "CPU time (local, user + system) $(ms "$(median "${c_un[@]}")") ms"
    summary[$n]="$images images: unchanged ls ${sc_un} syscalls / ${ops_un} ops, $(ms "$(median "${t_un_l[@]}")") ms local ($(ms "$(median "${c_un[@]}")") ms CPU), $(ms "$(median "${t_un_f[@]}")") ms fuse; +image ${sc_add} syscalls / ${ops_add} ops; baseline ${base_sc} syscalls"
    umount "$mnt"
done
rm -f "$cpu_log"
echo
echo "summary (medians of $runs runs; slowfs delay ${delay} ms per operation; load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)):"
for n in $sizes; do echo "  ${summary[$n]}"; done
