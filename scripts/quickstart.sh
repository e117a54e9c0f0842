#!/usr/bin/env bash
# Quick start: install what is missing, build, start nexusd on its embedded defaults (unless one
# is already running), boot a VM from the built-in image and run a command in it. Leaves the
# daemon and the VM running.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
echo "quickstart: building (release)"
cargo build --quiet --release -p nexusd -p nexusctl
AGENT=$(scripts/build-agent.sh 2>/dev/null | tail -n 1)
BIN=$PWD/target/release
ctl() { "$BIN/nexusctl" "$@"; }

if ! ctl status >/dev/null 2>&1; then
  log=${TMPDIR:-/tmp}/nexusd-quickstart.log
  echo "quickstart: starting nexusd (log: $log)"
  nohup "$BIN/nexusd" --agent-binary "$AGENT" >"$log" 2>&1 &
  for _ in $(seq 100); do ctl status >/dev/null 2>&1 && break; sleep 0.1; done
fi
ctl status

name=demo-$(date +%s)
echo "quickstart: creating and booting VM $name from the built-in image"
ctl vm create "$name" --image default --start
echo "quickstart: running 'uname -a' inside $name"
ctl vm exec "$name" -- uname -a
echo "quickstart: done. Try: $BIN/nexusctl vm exec $name -- sh -c 'cat /etc/os-release; df -h /'"
echo "            stop it:  $BIN/nexusctl vm stop $name; stop the daemon: pkill -TERM -x nexusd"
