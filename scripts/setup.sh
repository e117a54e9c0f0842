#!/usr/bin/env bash
# Installs what Nexus needs on a Debian/Ubuntu host: packages (with what the guest kernel build
# needs), vhost-device-vsock, cargo-nextest and schemathesis. Idempotent; needs root for apt (skipped
# with a note when not root).
set -euo pipefail
cd "$(dirname "$0")/.."

# The guest kernel build (crates/nexusd/src/assets/kernel_build.rs) needs a C toolchain and kbuild's
# tools: build-essential bc flex bison libelf-dev libssl-dev (and lz4, for the bzImage).
# The debian-rootfs provider (crates/nexusd/src/assets/mmdebstrap.rs) builds root filesystems with
# mmdebstrap into zstd-compressed tarballs: mmdebstrap zstd.
# The web UI's test drives headless Chromium (tests/ui.rs): chromium.
PACKAGES=(qemu-system-x86 tmux chromium btrfs-progs e2fsprogs busybox-static nftables cpio lz4 iproute2 systemd python3 python3-venv dnsmasq-base
  build-essential bc flex bison libelf-dev libssl-dev mmdebstrap zstd)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "setup: missing packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The web UI's xterm.js comes from npm, pinned by ui/package-lock.json; nexusd's build.rs embeds
# it when installed. node and npm from the distribution, unless some node (with npm) is there.
if ! command -v npm >/dev/null 2>&1; then
  if [[ $(id -u) -ne 0 ]]; then
    echo "setup: npm is missing (sudo apt-get install nodejs npm)" >&2
    exit 1
  fi
  echo "setup: installing nodejs npm"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi
# (Skipped when node_modules was installed from this very lockfile: a reinstall would make
# cargo rebuild nexusd.)
if ! cmp -s ui/package-lock.json ui/node_modules/.nexus-installed-lock 2>/dev/null; then
  echo "setup: npm ci --prefix ui (xterm.js for the web UI)"
  npm ci --prefix ui --no-audit --no-fund --loglevel=error >/dev/null
  cp ui/package-lock.json ui/node_modules/.nexus-installed-lock
fi

if ! command -v vhost-device-vsock >/dev/null 2>&1; then
  echo "setup: cargo install vhost-device-vsock 0.3.0"
  cargo install --quiet --locked vhost-device-vsock --version 0.3.0
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "setup: cargo install cargo-nextest"
  cargo install --quiet --locked cargo-nextest
fi
# schemathesis (PyPI, pinned) checks the API against its OpenAPI document (tests/schemathesis.rs),
# in its own venv so the system Python stays untouched.
SCHEMATHESIS_VERSION=4.32.5
VENV=${NEXUS_VENV:-/opt/nexus-venv}
if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  echo "setup: pip install schemathesis==$SCHEMATHESIS_VERSION into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi
# The official Python MCP SDK (PyPI `mcp`, pinned): the MCP client tests/mcp.rs drives nexusd with.
MCP_VERSION=2.3.0
if ! "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('mcp') != '$MCP_VERSION')" 2>/dev/null; then
  echo "setup: pip install mcp==$MCP_VERSION into $VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "mcp==$MCP_VERSION"
fi
# The official E2B SDK (PyPI `e2b`, pinned) in its own venv (its dependencies differ from the
# MCP SDK's): the client tests/e2b.rs drives nexusd's E2B listener with.
E2B_VERSION=2.63.0
E2B_VENV=${NEXUS_E2B_VENV:-/opt/nexus-e2b-venv}
if ! "$E2B_VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('e2b') != '$E2B_VERSION')" 2>/dev/null; then
  echo "setup: pip install e2b==$E2B_VERSION into $E2B_VENV"
  python3 -m venv "$E2B_VENV"
  "$E2B_VENV/bin/pip" install --quiet --disable-pip-version-check "e2b==$E2B_VERSION"
fi
# The guest kernel package is not fetched here: nexusd installs Debian's cloud kernel through its
# built-in `debian-package` provider (the host's apt) when a VM first needs it, or on
# `nexusctl kernel download`. (The test suite shares one copy instead: scripts/test.sh.)
