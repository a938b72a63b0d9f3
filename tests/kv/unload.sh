#!/usr/bin/env bash
# tests/kv/unload.sh KV_DIR MKENV TOOL MODULE HOST SUPP — unloading libkvp11.so is safe
# (issue 10 item 4): an HSM environment (tests/fixtures/mkenv.sh, SoftHSM2) plus the Key Vault
# emulator's vault and one registered Key Vault certificate in one configuration; then
# kv-unload-host signs on both backends, unloads the module and uses libcurl itself, under
# valgrind (any error fails). Exit 77 when valgrind or SoftHSM2 is missing.
set -euo pipefail
die() { echo "unload.sh: error: $*" >&2; exit 1; }
[ $# -eq 6 ] || die "usage: $0 KV_DIR MKENV TOOL MODULE HOST SUPP"
KV=$1 MKENV=$2 TOOL=$3 MODULE=$4 HOST=$5 SUPP=$6
command -v valgrind >/dev/null || { echo "valgrind missing: skipped"; exit 77; }
[ -f "$KV/kvp11.conf" ] || die "$KV/kvp11.conf missing (kv/fixture-setup)"
OUT=$(mktemp -d /tmp/kvp11-unload.XXXXXX)
trap 'rm -rf "$OUT"' EXIT
KVP11_TOOL=$TOOL bash "$MKENV" "$OUT/env" >"$OUT/mkenv.log" 2>&1 || {
  rc=$?; [ $rc -eq 77 ] && { echo "SoftHSM2 missing: skipped"; exit 77; }
  cat "$OUT/mkenv.log" >&2; die "mkenv.sh failed"; }
# shellcheck disable=SC1091
. "$OUT/env/env.sh"
# the vault of the Key Vault fixture and an account on it
{ echo; sed -n '/^\[vault emu\]/,/^\[account/p' "$KV/kvp11.conf" | sed '$d'
  printf '[account kv]\nlabel = kvp11 kv\n'; } >>"$KVP11_CONF"
"$TOOL" -c "$KVP11_CONF" cert add --name p256 --type private --cert "$KV/certs/p256.pem" \
  --account kv --vault emu --key p256 >/dev/null || die "registering the Key Vault certificate"
valgrind -q --error-exitcode=9 --suppressions="$SUPP" \
  "$HOST" "$MODULE" "https://127.0.0.1:$(cat "$KV/port")/_emu/health" "$KV/ca.pem" 2
