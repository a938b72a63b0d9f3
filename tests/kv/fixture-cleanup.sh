#!/usr/bin/env bash
# tests/kv/fixture-cleanup.sh /abs/DIR — stop the emulator started by fixture-setup.sh.
set -u
DIR=${1%/}
[ -f "$DIR/emu.pid" ] || exit 0
PID=$(cat "$DIR/emu.pid")
kill "$PID" 2>/dev/null || exit 0
for _ in $(seq 1 50); do
  kill -0 "$PID" 2>/dev/null || { rm -f "$DIR/emu.pid"; exit 0; }
  sleep 0.1
done
kill -9 "$PID" 2>/dev/null
rm -f "$DIR/emu.pid"
exit 0
