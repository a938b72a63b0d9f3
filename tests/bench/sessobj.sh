#!/usr/bin/env bash
# tests/bench/sessobj.sh — what N session certificates cost a search.
#
#   tests/bench/sessobj.sh BUILD_DIR [N...]        (default N: 1000 10000)
#
# Not a CTest test: it prints figures (docs/performance.md, "Session objects").
# Writes a kvp11.conf with one account and no key store (no registry file:
# no token objects) in a temporary directory, then for each N runs
# kvp11-sessobj-probe: N C_CreateObject session certificates on one R/O
# session, then C_FindObjectsInit(CKO_CERTIFICATE) + C_FindObjects (1 and 100
# handles a call) + C_FindObjectsFinal over all of them, and
# C_GetAttributeValue(CKA_LABEL) of each (best of REPEAT).
#
# Environment: REPEAT=3.
set -euo pipefail

die() { echo "sessobj.sh: error: $*" >&2; exit 1; }

[ $# -ge 1 ] || die "usage: $0 BUILD_DIR [N...]"
BUILD=$(cd "$1" 2>/dev/null && pwd) || die "build directory '$1' not found"
shift
SIZES=${*:-1000 10000}
REPEAT=${REPEAT:-3}
SO=$BUILD/module/libkvp11.so
PROBE=$BUILD/tests/bench/kvp11-sessobj-probe
for f in "$SO" "$PROBE"; do [ -e "$f" ] || die "$f not built"; done

DIR=$(mktemp -d "${TMPDIR:-/tmp}/kvp11-sessobj.XXXXXX")
trap 'rm -rf "$DIR"' EXIT
cat >"$DIR/kvp11.conf" <<CONF
[global]
registry = $DIR/registry.db
log_level = error

[account bench]
label = sessobj bench
CONF
chmod 600 "$DIR/kvp11.conf"
export KVP11_CONF=$DIR/kvp11.conf
unset KVP11_REGISTRY

printf '%8s %10s %10s %11s %11s\n' N create_ms find1_ms find100_ms getattr_ms
for n in $SIZES; do
  out=$("$PROBE" "$SO" "sessobj bench" "$n" "$REPEAT") || die "probe failed at N=$n"
  val() { sed -n "s/^$1=//p" <<<"$out"; }
  printf '%8s %10s %10s %11s %11s\n' "$n" "$(val create_ms)" "$(val find1_ms)" \
    "$(val find100_ms)" "$(val getattr_ms)"
done
