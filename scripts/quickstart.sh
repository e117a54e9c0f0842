#!/usr/bin/env bash
# Quick start: install what is missing, build, start nexusd on its embedded defaults (unless one
# is already running), create a VM and show it. Leaves the daemon running.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
echo "quickstart: building (release)"
cargo build --quiet --release -p nexusd -p nexusctl
BIN=$PWD/target/release
ctl() { "$BIN/nexusctl" "$@"; }

if ! ctl status >/dev/null 2>&1; then
  log=${TMPDIR:-/tmp}/nexusd-quickstart.log
  echo "quickstart: starting nexusd (log: $log)"
  nohup "$BIN/nexusd" >"$log" 2>&1 &
  for _ in $(seq 100); do ctl status >/dev/null 2>&1 && break; sleep 0.1; done
fi
ctl status

name=demo-$(date +%s)
ctl vm create "$name"
ctl vm list
echo "quickstart: done. Stop the daemon with: pkill -TERM -x nexusd"
