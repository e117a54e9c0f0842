#!/usr/bin/env bash
# Downloads Debian's cloud kernel packages (the meta package and the versioned one holding
# boot/vmlinuz-* and the modules) into DIR: the copy the test suite's daemons share (`kernel_dir`).
# nexusd itself needs none: it installs the package through its debian-package provider.
set -euo pipefail
dir="${1:?usage: fetch-kernel.sh DIR}"
mkdir -p "$dir"
cd "$dir"
apt-get download linux-image-cloud-amd64 >&2
versioned="$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')"
[ -n "$versioned" ] || { echo "cannot resolve the versioned cloud kernel package" >&2; exit 1; }
apt-get download "$versioned" >&2
ls "$PWD"/linux-image-*-cloud-amd64_*.deb
