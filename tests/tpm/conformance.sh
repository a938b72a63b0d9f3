#!/usr/bin/env bash
# tests/tpm/conformance.sh SUITE_BINARY: the conformance suite's asymmetric part through
# libkvp11.so on the TPM fixture: init slots sessions objects (attributes, find, registry
# changes while initialized) sign crypt threads. Not "fork": a forked child cannot use
# tpm2-pkcs11 through tpm2-abrmd (docs/hsm.md), and "destructive" tests nothing TPM-specific.
. "$(dirname "$0")/common.sh"
[ $# -eq 1 ] || { echo "usage: $0 kvp11-conformance" >&2; exit 2; }
export KVP11_TEST_TOKEN="kvp11 default" KVP11_TEST_KEYS="rsa2048 rsa3072 p256 p384" \
  KVP11_TEST_PUBLIC=partner KVP11_TEST_FEATURES=raw-rsa KVP11_TEST_CERTDIR=$KVP11_ENV/certs \
  KVP11_TEST_LIVE_NAME=live-tpm
# shellcheck disable=SC2016 # expanded by the suite's shell
export KVP11_TEST_LIVE_ADD="$KVP11_TOOL"' -c $KVP11_CONF cert add --name $KVP11_LIVE_NAME --type public --cert $KVP11_LIVE_CERT >/dev/null'
# shellcheck disable=SC2016
export KVP11_TEST_LIVE_REMOVE="$KVP11_TOOL"' -c $KVP11_CONF cert remove $KVP11_LIVE_NAME >/dev/null'
exec "$1" init slots sessions objects sign crypt threads
