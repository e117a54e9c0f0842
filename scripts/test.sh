#!/usr/bin/env bash
# The test command: builds the static guest agent, then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -x scripts/build-agent.sh ]]; then
  NEXUS_AGENT_BIN=$(scripts/build-agent.sh | tail -n 1)
  export NEXUS_AGENT_BIN
fi
# The integration tests drive the real nexusctl binary, which nextest builds only for nexusctl's
# own tests: build every binary first.
cargo build --workspace --bins
exec cargo nextest run --workspace --no-fail-fast "$@"
