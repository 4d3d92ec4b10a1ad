#!/usr/bin/env bash
# Soak (issue 9, point 6): one writer loads, removes and re-loads images
# for DURATION while three reader hosts (each with its own root on a
# read-only bind mount of the share, and a `refresh --watch`) list, create
# containers on shared images, run them under runc, mount them and remove
# them. Prints the counts: reader errors, half images seen, containers
# broken (created fine, then failed to run or mount inside the grace
# period), races (an image gone between a reader's listing and its create:
# expected, not an error), events, and the debris left at the end.
#
# Usage: bench/soak.sh [DURATION_SECS]   (default 600; run as root)
# Environment: SOAK_GRACE (the share's grace period, default 30 s),
#              BENCH_DIR (default bench/out)
set -uo pipefail
duration=${1:-600}
grace=${SOAK_GRACE:-30}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
target=${CARGO_TARGET_DIR:-$here/target}
work=${BENCH_DIR:-$here/bench/out}
[ "$(id -u)" = 0 ] || { echo "$0: run as root (mounts, runc)" >&2; exit 1; }
for tool in runc umoci busybox; do
    command -v "$tool" >/dev/null || { echo "$0: $tool is missing (scripts/setup-debian.sh)" >&2; exit 1; }
done
cargo build --release --quiet --manifest-path "$here/Cargo.toml" -p storectl
storectl="$target/release/storectl"
dir="$work/soak"
cleanup() {
    for p in $(jobs -p); do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
    grep -o " $dir[^ ]*" /proc/self/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null
    rm -rf "$dir"
}
trap cleanup EXIT
rm -rf "$dir"; mkdir -p "$dir/share" "$dir/ro" "$dir/counts"

# Four busybox images (umoci), each with its own file on a shared base.
oci="$dir/oci"
umoci init --layout "$oci"
umoci new --image "$oci:base"
umoci unpack --image "$oci:base" "$dir/b" >/dev/null
mkdir -p "$dir/b/rootfs/bin" "$dir/b/rootfs/etc" "$dir/b/rootfs/tmp"
cp "$(command -v busybox)" "$dir/b/rootfs/bin/busybox"
for a in sh cat echo test sleep ls; do ln -s busybox "$dir/b/rootfs/bin/$a"; done
echo "root:x:0:0:root:/root:/bin/sh" >"$dir/b/rootfs/etc/passwd"
umoci repack --image "$oci:base" "$dir/b" >/dev/null; rm -rf "$dir/b"
tags=()
for t in a b c d; do
    umoci unpack --image "$oci:base" "$dir/u" >/dev/null
    echo "image $t" >"$dir/u/rootfs/etc/hello"
    umoci repack --image "$oci:$t" "$dir/u" >/dev/null; rm -rf "$dir/u"
    umoci config --image "$oci:$t" --config.cmd /bin/sh >/dev/null
    tags+=("$t")
done
umoci gc --layout "$oci"

"$storectl" --root "$dir/writer" init --shared "$dir/share" --role writer >/dev/null
sed -i "s/\"removed_layers_grace_secs\": *[0-9]*/\"removed_layers_grace_secs\": $grace/" "$dir/share/storectl-share.json"
mount --bind "$dir/share" "$dir/ro" && mount -o remount,bind,ro "$dir/ro"
for r in 1 2 3; do
    "$storectl" --root "$dir/r$r" init --shared "$dir/ro" --role reader --refresh-interval-ms 200 >/dev/null
done
count() { echo 1 >>"$dir/counts/$1"; }
total() { [ -f "$dir/counts/$1" ] && wc -l <"$dir/counts/$1" || echo 0; }
end=$(( $(date +%s) + duration ))

writer() {
    local i=0
    while [ "$(date +%s)" -lt "$end" ]; do
        local t=${tags[$((RANDOM % 4))]}
        if "$storectl" --root "$dir/writer" rmi "localhost/soak:$t" >/dev/null 2>"$dir/w.err"; then
            count writer-rmi
        elif grep -q "not known" "$dir/w.err"; then
            if "$storectl" --root "$dir/writer" load "$oci:$t" --name "localhost/soak:$t" -q >/dev/null 2>>"$dir/writer.log"; then
                count writer-load
            else count writer-error; fi
        else
            cat "$dir/w.err" >>"$dir/writer.log"; count writer-error
        fi
        i=$((i + 1))
        if [ $((i % 10)) = 0 ]; then
            "$storectl" --root "$dir/writer" gc >"$dir/gc.out" 2>>"$dir/writer.log" || count writer-error
            grep -c "^Deleted layer" "$dir/gc.out" | while read -r n; do for _ in $(seq 1 "$n"); do count gc-deleted; done; done
        fi
        sleep 0.$((RANDOM % 5))
    done
}

reader() {
    local r=$1 root="$dir/r$1" n=0
    "$storectl" --root "$root" refresh --watch --json >"$dir/events$r" 2>>"$dir/reader$r.log" &
    local watcher=$!
    while [ "$(date +%s)" -lt "$end" ]; do
        n=$((n + 1))
        if ! ls=$("$storectl" --root "$root" ls --json 2>>"$dir/reader$r.log"); then count reader-error; continue; fi
        count reader-ls
        # A half image: a listed image one of whose layers is not whole on the share.
        half=$(python3 -c '
import json, os, sys
n = 0
for i in json.loads(sys.argv[1]):
    for l in i["layers"]:
        d = os.path.join(sys.argv[2], "overlay", l)
        if not (os.path.isdir(os.path.join(d, "diff")) and os.path.isfile(os.path.join(d, "link"))):
            n += 1
print(n)' "$ls" "$dir/ro")
        for _ in $(seq 1 "$half"); do count half-image; done
        img=$(python3 -c 'import json,sys,random; l=json.loads(sys.argv[1]); print(random.choice(l)["id"] if l else "")' "$ls")
        [ -n "$img" ] || { sleep 0.2; continue; }
        if ! c=$("$storectl" --root "$root" create "$img" 2>"$dir/c$r.err"); then
            if grep -q "not known" "$dir/c$r.err"; then count race; else cat "$dir/c$r.err" >>"$dir/reader$r.log"; count reader-error; fi
            continue
        fi
        count container-created
        b="$dir/bundle$r"
        if "$storectl" --root "$root" bundle "$c" "$b" -- /bin/sh -c 'cat /etc/hello; echo ran > /tmp/ran' >/dev/null 2>>"$dir/reader$r.log" &&
            out=$(runc --root "$dir/runc$r" run -b "$b" "soak-$r-$n" </dev/null 2>>"$dir/reader$r.log") &&
            [[ "$out" == image* ]]; then
            count container-ran
        else
            count container-broken
        fi
        runc --root "$dir/runc$r" delete --force "soak-$r-$n" >/dev/null 2>&1
        "$storectl" --root "$root" umount "$c" >/dev/null 2>&1
        if p=$("$storectl" --root "$root" mount "$c" 2>>"$dir/reader$r.log") && [ "$(cat "$p/tmp/ran" 2>/dev/null)" = ran ]; then
            count container-mounted
        else
            count container-broken
        fi
        if "$storectl" --root "$root" rm --force "$c" >/dev/null 2>>"$dir/reader$r.log"; then
            count container-removed
        else count reader-error; fi
    done
    kill "$watcher" 2>/dev/null; wait "$watcher" 2>/dev/null
}

echo "soak: ${duration}s, grace ${grace}s, 1 writer, 3 readers"
writer & for r in 1 2 3; do reader "$r" & done
wait

# The end: every image removed, every waiting layer deleted: nothing left.
for t in "${tags[@]}"; do "$storectl" --root "$dir/writer" rmi "localhost/soak:$t" >/dev/null 2>&1; done
"$storectl" --root "$dir/writer" gc --grace 0 >/dev/null
debris=$(find "$dir/share" "$dir/writer" "$dir"/r[123] -name '.staging-*' -o -name '.trash-*' -o -name '.tmp-*' | wc -l)
left_layers=$(find "$dir/share/overlay" -mindepth 1 -maxdepth 1 -name '[0-9a-f]*' | wc -l)
left_containers=$(find "$dir"/r[123]/overlay-containers -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
orphans=0
for r in 1 2 3; do
    for d in "$dir/r$r/overlay"/[0-9a-f]*; do
        [ -d "$d" ] && [ ! -L "$d" ] && orphans=$((orphans + 1))
    done
done
events=$(cat "$dir"/events[123] 2>/dev/null | grep -c '"ImageRemovedInUse"' || true)
printf '%-22s %s\n' \
    "writer loads" "$(total writer-load)" "writer rmis" "$(total writer-rmi)" \
    "gc deleted layers" "$(total gc-deleted)" "writer errors" "$(total writer-error)" \
    "reader listings" "$(total reader-ls)" "reader errors" "$(total reader-error)" \
    "half images seen" "$(total half-image)" "races (image gone)" "$(total race)" \
    "containers created" "$(total container-created)" "  ran under runc" "$(total container-ran)" \
    "  mounted again" "$(total container-mounted)" "  removed" "$(total container-removed)" \
    "containers broken" "$(total container-broken)" "ImageRemovedInUse" "$events" \
    "debris at the end" "$debris" "layers left on share" "$left_layers" \
    "containers left" "$left_containers" "reader layer dirs" "$orphans"
for f in "$dir"/writer.log "$dir"/reader[123].log; do
    [ -s "$f" ] && { echo "--- $(basename "$f") (last lines)"; tail -5 "$f"; }
done
bad=$(( $(total writer-error) + $(total reader-error) + $(total half-image) + $(total container-broken) + debris + left_layers + left_containers + orphans ))
[ "$bad" = 0 ] && echo "soak: OK" || { echo "soak: FAILED ($bad)"; exit 1; }
