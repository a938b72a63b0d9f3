#!/usr/bin/env bash
# tests/tpm/conformance.sh [--login] SUITE_BINARY: the conformance suite's asymmetric part through
# libkvp11.so on the TPM fixture: init slots sessions (login states) objects (attributes, find,
# registry changes while initialized) sign crypt threads. Not "fork": that suite signs in the
# parent before forking, which tpm2-pkcs11 through tpm2-abrmd does not survive (docs/hsm.md;
# tpm/fork tests what works), and "destructive" tests nothing TPM-specific.
# --login: the same with the application's PIN passed through to tpm2-pkcs11 (the fixture's
# kvp11.conf without pin_file, KVP11_TEST_PIN=1234).
. "$(dirname "$0")/common.sh"
login=0
[ "${1:-}" = --login ] && { login=1; shift; }
[ $# -eq 1 ] || { echo "usage: $0 [--login] kvp11-conformance" >&2; exit 2; }
if [ $login = 1 ]; then
  W=${KVP11_TPM_TMP:-${TMPDIR:-/tmp}}/conformance-login
  mkdir -p "$W"
  sed -e '/^pin_file/d' -e "s|^log_file = .*|log_file = $W/kvp11.log|" "$KVP11_CONF" >"$W/kvp11.conf"
  export KVP11_CONF=$W/kvp11.conf KVP11_TEST_PIN=1234
fi
export KVP11_TEST_TOKEN="kvp11 default" KVP11_TEST_KEYS="rsa2048 rsa3072 p256 p384" \
  KVP11_TEST_PUBLIC=partner KVP11_TEST_FEATURES=raw-rsa KVP11_TEST_CERTDIR=$KVP11_ENV/certs \
  KVP11_TEST_LIVE_NAME=live-tpm
# shellcheck disable=SC2016 # expanded by the suite's shell
export KVP11_TEST_LIVE_ADD="$KVP11_TOOL"' -c $KVP11_CONF cert add --name $KVP11_LIVE_NAME --type public --cert $KVP11_LIVE_CERT >/dev/null'
# shellcheck disable=SC2016
export KVP11_TEST_LIVE_REMOVE="$KVP11_TOOL"' -c $KVP11_CONF cert remove $KVP11_LIVE_NAME >/dev/null'
exec "$1" init slots sessions objects sign crypt threads
