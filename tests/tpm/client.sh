#!/usr/bin/env bash
# tests/tpm/client.sh SCRIPT: runs a tests/clients script unchanged on the TPM fixture's account
# ("kvp11 default": rsa2048 rsa3072 p256 p384 on tpm2-pkcs11, partner in software).
. "$(dirname "$0")/common.sh"
[ $# -eq 1 ] || { echo "usage: $0 tests/clients/SCRIPT.sh" >&2; exit 2; }
exec bash "$1"
