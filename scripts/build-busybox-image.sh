#!/usr/bin/env bash
# Build a real two-layer image from Debian's busybox-static with umoci:
#   layer 1: /bin/busybox and its applet links, /etc/motd, /etc/remove-me
#   layer 2: deletes /etc/remove-me (a whiteout), adds /etc/hello
# Writes OUT/oci (OCI layout, tag "latest") and OUT/busybox.tar (docker-archive
# made by skopeo, named busybox:latest). Usage: build-busybox-image.sh OUT
set -euo pipefail
out=${1:?usage: build-busybox-image.sh OUTDIR}
busybox=$(command -v busybox || true)
[ -x /bin/busybox ] && busybox=/bin/busybox
for tool in umoci skopeo; do
    command -v "$tool" >/dev/null || { echo "$tool is not installed (scripts/setup-debian.sh)" >&2; exit 1; }
done
[ -n "$busybox" ] || { echo "busybox-static is not installed" >&2; exit 1; }
rm -rf "$out/oci" "$out/bundle" "$out/busybox.tar"
mkdir -p "$out"
umoci init --layout "$out/oci"
umoci new --image "$out/oci:latest"
umoci unpack --image "$out/oci:latest" "$out/bundle" >/dev/null
rootfs="$out/bundle/rootfs"
mkdir -p "$rootfs/bin" "$rootfs/etc" "$rootfs/tmp"
cp "$busybox" "$rootfs/bin/busybox"
for applet in sh ls cat echo; do ln -sf busybox "$rootfs/bin/$applet"; done
echo "storectl demo image" > "$rootfs/etc/motd"
echo "deleted by layer 2" > "$rootfs/etc/remove-me"
umoci repack --image "$out/oci:latest" "$out/bundle" >/dev/null
rm -rf "$out/bundle"
umoci unpack --image "$out/oci:latest" "$out/bundle" >/dev/null
rm "$out/bundle/rootfs/etc/remove-me"
echo "hello from layer 2" > "$out/bundle/rootfs/etc/hello"
umoci repack --image "$out/oci:latest" "$out/bundle" >/dev/null
rm -rf "$out/bundle"
umoci config --image "$out/oci:latest" --config.cmd /bin/sh >/dev/null
umoci gc --layout "$out/oci"
skopeo copy --quiet "oci:$out/oci:latest" "docker-archive:$out/busybox.tar:busybox:latest"
