#!/usr/bin/env bash
# tests/kv/fixture-register.sh /abs/DIR /path/to/kvp11 — register the emulator's keys as
# private certificates of account "kv" (kvp11 cert add --vault emu --key NAME), and check
# that the tool refuses a certificate whose public key differs from the vault key.
set -euo pipefail
die() { echo "fixture-register.sh: error: $*" >&2; exit 1; }
[ $# -eq 2 ] || die "usage: $0 /abs/DIR /path/to/kvp11"
DIR=${1%/}
TOOL=$2
CONF=$DIR/kvp11.conf
[ -f "$CONF" ] || die "$CONF missing (did kv/fixture-setup run?)"
rm -f "$DIR/registry.db" "$DIR/registry.db-wal" "$DIR/registry.db-shm"
for k in rsa2048 rsa3072 rsa4096 p256 p384 p521; do
  "$TOOL" -c "$CONF" cert add --name "$k" --type private --cert "$DIR/certs/$k.pem" \
    --account kv --vault emu --key "$k" || die "kvp11 cert add $k failed"
done
# a certificate that does not belong to the vault key must be refused
if "$TOOL" -c "$CONF" cert add --name mismatch --type private --cert "$DIR/certs/p256.pem" \
    --account kv --vault emu --key p384 2>"$DIR/mismatch.err"; then
  die "kvp11 cert add accepted a certificate whose key differs from the vault key"
fi
"$TOOL" -c "$CONF" cert list --account kv
echo "fixture-register.sh: 6 certificates registered in account kv"
