#!/bin/bash
# Self-check of the conformance suite, not of kvp11: run kvp11-conformance straight against
# SoftHSM2 on a token that holds the objects kvp11 would show (key pairs from
# tests/fixtures/mkenv.sh plus certificate objects with the same CKA_LABEL / CKA_ID, and the
# partner's certificate and public key).
#
# usage: softhsm-direct.sh OUTDIR SUITE_BINARY [SOFTHSM_MODULE] [-- SUITE ...]
# Without suite names it runs the suites whose expectations SoftHSM2 2.6 meets; the others
# check kvp11-specific promises (mechanism set, attribute policy) that SoftHSM2 does not make.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
[ $# -ge 2 ] || { echo "usage: $0 OUTDIR SUITE_BINARY [SOFTHSM_MODULE] [-- SUITE ...]" >&2; exit 2; }
out=$1
suite=$2
shift 2
softhsm=/usr/lib/softhsm/libsofthsm2.so
if [ $# -gt 0 ] && [ "$1" != -- ]; then softhsm=$1; shift; fi
[ "${1:-}" = -- ] && shift
for t in softhsm2-util pkcs11-tool openssl; do
  command -v "$t" >/dev/null 2>&1 || { echo "$t not installed: skipped"; exit 77; }
done
[ -f "$softhsm" ] || { echo "no SoftHSM2 module at $softhsm: skipped"; exit 77; }

SOFTHSM2_MODULE=$softhsm "$here/../fixtures/mkenv.sh" "$out" >/dev/null
# shellcheck disable=SC1091
. "$out/env.sh"
p11=(pkcs11-tool --module "$softhsm" --token-label kvp11-test --login --pin 1234)
for k in rsa2048:01 rsa3072:02 p256:03 p384:04; do
  IFS=: read -r name id <<<"$k"
  "${p11[@]}" --write-object "$out/certs/$name.pem" --type cert --label "$name" --id "$id" >/dev/null
done
openssl x509 -in "$out/certs/partner.pem" -pubkey -noout | openssl pkey -pubin -outform DER -out "$out/partner.pub.der"
"${p11[@]}" --write-object "$out/certs/partner.pem" --type cert --label partner --id 05 >/dev/null
"${p11[@]}" --write-object "$out/partner.pub.der" --type pubkey --label partner --id 05 >/dev/null

if [ $# -eq 0 ]; then
  set -- sessions objects-direct sign-direct crypt threads fork
fi
export KVP11_MODULE=$softhsm KVP11_TEST_TOKEN=kvp11-test KVP11_TEST_PIN=1234 \
  KVP11_TEST_KEYS="rsa2048 rsa3072 p256 p384" KVP11_TEST_PUBLIC=partner \
  KVP11_TEST_FEATURES="fork raw-rsa pss-any-params" KVP11_TEST_CERTDIR="$out/certs"
exec "$suite" "$@"
