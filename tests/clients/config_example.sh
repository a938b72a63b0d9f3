#!/usr/bin/env bash
# hsm-config/kvp11.conf.example stays a valid configuration: with its paths
# pointed into a scratch directory (and the HSM at the fixture's token), the
# kvp11 tool loads it and lists the (empty) registry; a copy with its PIN file
# made group-writable is refused, naming the key (group read is allowed for
# root's group or kvp11: docs/configuration.md).
set -euo pipefail
: "${KVP11_TOOL:?KVP11_TOOL must point to the kvp11 tool}"
: "${KVP11_SOURCE_DIR:?KVP11_SOURCE_DIR must point to the source tree}"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/kvp11-config-example.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

umask 077
printf '1234\n' >"$WORK/hsm.pin"
sed -e "s|^registry = .*|registry = $WORK/registry.db|" \
    -e "s|^pin_file = .*|pin_file = $WORK/hsm.pin|" \
    "$KVP11_SOURCE_DIR/hsm-config/kvp11.conf.example" >"$WORK/kvp11.conf"
grep -q "^registry = $WORK/registry.db\$" "$WORK/kvp11.conf" || fail "example has no 'registry =' line"
grep -q "^pin_file = $WORK/hsm.pin\$" "$WORK/kvp11.conf" || fail "example has no 'pin_file =' line"

if ! "$KVP11_TOOL" -c "$WORK/kvp11.conf" cert list >"$WORK/out" 2>&1; then
  cat "$WORK/out" >&2
  fail "kvp11 refuses the example configuration"
fi
echo "ok 1 - the example configuration loads"

chmod 660 "$WORK/hsm.pin"
if "$KVP11_TOOL" -c "$WORK/kvp11.conf" cert list >"$WORK/out" 2>&1; then
  fail "a group-writable pin_file was accepted"
fi
grep -q "pin_file" "$WORK/out" || { cat "$WORK/out" >&2; fail "the error does not name pin_file"; }
grep -Eq "kvp11.conf:[0-9]+" "$WORK/out" || { cat "$WORK/out" >&2; fail "the error does not name file and line"; }
echo "ok 2 - a group-writable pin_file is refused: $(head -n1 "$WORK/out")"
echo "PASS: config_example"
