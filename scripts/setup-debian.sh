#!/usr/bin/env bash
# Install the Debian packages storectl's demo, tests and benchmarks use.
# Run as root on Debian 12 (bookworm) or later. Idempotent.
set -euo pipefail
cd "$(dirname "$0")"
if [ "$(id -u)" -ne 0 ]; then
    echo "setup-debian.sh: run as root (storectl mounts overlayfs and creates device nodes)" >&2
    exit 1
fi
mapfile -t pkgs < <(grep -v '^#' debian-packages.txt | grep -v '^$')
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${missing[@]}"
fi
# Debian starts a registry service on install; the tests run their own.
if command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now docker-registry >/dev/null 2>&1 || true
fi
command -v cargo >/dev/null || { echo "setup-debian.sh: cargo (rustup) is required" >&2; exit 1; }
