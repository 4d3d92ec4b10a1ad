#!/usr/bin/env bash
# The main job: build storectl, build a real two-layer image from Debian's
# busybox-static, load it (OCI layout and docker-archive) into a local store
# under the working directory, list it, and run busybox from a mount.
# Usage: scripts/demo.sh [STORE_ROOT]   (default ./.storectl)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
root=${1:-$PWD/.storectl}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cargo build --release --quiet --manifest-path "$here/Cargo.toml" -p storectl
storectl="${CARGO_TARGET_DIR:-$here/target}/release/storectl"
"$here/scripts/build-busybox-image.sh" "$work/img"
echo "== load OCI layout $work/img/oci:busybox"
"$storectl" --root "$root" load "$work/img/oci:busybox" --name demo/busybox:oci
echo "== load docker-archive"
"$storectl" --root "$root" load "$work/img/busybox.tar"
echo "== ls (store root $root)"
"$storectl" --root "$root" ls
mnt=$("$storectl" --root "$root" mount demo/busybox:oci)
echo "== mounted at $mnt:"
chroot "$mnt" /bin/busybox cat /etc/hello
"$storectl" --root "$root" umount demo/busybox:oci >/dev/null
"$storectl" --root "$root" verify demo/busybox:oci
