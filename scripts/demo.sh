#!/usr/bin/env bash
# The main job: build storectl, build a real two-layer image from Debian's
# busybox-static, load it (OCI layout and docker-archive) into a local store
# under the working directory, list it, and run busybox from a mount.
#
# It leaves in the working directory what the README's "Using storectl"
# examples name: busybox-oci/ (OCI layout, tag "latest"), busybox.tar
# (docker-archive named busybox:latest) and busybox.tar.gz, and the store
# .storectl/ holding the image as busybox (docker.io/library/busybox:latest)
# and demo/busybox:oci.
# Usage: scripts/demo.sh [STORE_ROOT]   (default ./.storectl)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
root=${1:-$PWD/.storectl}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cargo build --release --quiet --manifest-path "$here/Cargo.toml" -p storectl
storectl="${CARGO_TARGET_DIR:-$here/target}/release/storectl"
"$here/scripts/build-busybox-image.sh" "$work/img"
rm -rf busybox-oci busybox.tar busybox.tar.gz
cp -a "$work/img/oci" busybox-oci
cp "$work/img/busybox.tar" busybox.tar
gzip -k busybox.tar
echo "== load OCI layout ./busybox-oci:latest"
"$storectl" --root "$root" load ./busybox-oci:latest --name demo/busybox:oci
echo "== load docker-archive busybox.tar (named busybox:latest)"
"$storectl" --root "$root" load busybox.tar
echo "== ls (store root $root)"
"$storectl" --root "$root" ls
mnt=$("$storectl" --root "$root" mount demo/busybox:oci)
echo "== mounted at $mnt:"
chroot "$mnt" /bin/busybox cat /etc/hello
"$storectl" --root "$root" umount demo/busybox:oci >/dev/null
"$storectl" --root "$root" verify demo/busybox:oci
cat <<EOF

== next: the README's examples ("Using storectl") run from this directory with
# storectl on PATH (or: cargo install --path $here/cli):
export PATH="$(dirname "$storectl"):\$PATH"
# the demo's store (without it, storectl uses /var/lib/storectl as root):
export STORECTL_ROOT="$root"
storectl ls
EOF
