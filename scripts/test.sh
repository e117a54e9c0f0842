#!/usr/bin/env bash
# The test command: builds the static guest agent, then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -x scripts/build-agent.sh ]]; then
  NEXUS_AGENT_BIN=$(scripts/build-agent.sh | tail -n 1)
  export NEXUS_AGENT_BIN
fi
# The VM tests' daemons share one guest kernel package (`kernel_dir`) rather than each installing
# its own through the debian-package provider (tests/assets_apt.rs covers that path).
KERNEL_DIR=${NEXUS_KERNEL_DIR:-/var/cache/nexus/kernel}
if ! ls "$KERNEL_DIR"/linux-image-*-cloud-amd64_*.deb >/dev/null 2>&1; then
  echo "test: fetching the guest kernel package into $KERNEL_DIR"
  scripts/fetch-kernel.sh "$KERNEL_DIR" >/dev/null 2>&1 || {
    apt-get update -qq
    scripts/fetch-kernel.sh "$KERNEL_DIR" >/dev/null
  }
fi
# The integration tests drive the real nexusctl binary, which nextest builds only for nexusctl's
# own tests: build every binary first.
cargo build --workspace --bins
exec cargo nextest run --workspace --no-fail-fast "$@"
