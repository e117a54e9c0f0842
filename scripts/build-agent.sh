#!/usr/bin/env bash
# Builds the statically linked guest agent; prints the binary's path on the last line.
set -euo pipefail
cd "$(dirname "$0")/.."
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build -p nexus-agent --profile agent --target x86_64-unknown-linux-gnu >&2
echo "$target_dir/x86_64-unknown-linux-gnu/agent/nexus-agent"
