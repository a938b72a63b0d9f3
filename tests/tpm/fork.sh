#!/usr/bin/env bash
# tests/tpm/fork.sh SIGNS_BINARY: what a forked child may do with a TPM key (docs/hsm.md).
# The parent initializes libkvp11.so and finds the token but uses no TPM key before fork(): the
# child's own C_Initialize and signature work, and the parent still signs afterwards (3 times).
# (A parent that used a TPM key before fork() is not tested here: the child then waits 25 s for
# tpm2-abrmd's D-Bus connection, see docs/hsm.md.)
. "$(dirname "$0")/common.sh"
[ $# -eq 1 ] || { echo "usage: $0 kvp11-tpm-signs" >&2; exit 2; }
out=$("$1" --fork "$KVP11_MODULE" "kvp11 default" rsa2048 0 2>/dev/null) || { echo "FAIL: kvp11-tpm-signs" >&2; exit 1; }
echo "$out"
echo "$out" | grep -Eq '^child: CKR_OK after ' || { echo "FAIL: the child could not sign" >&2; exit 1; }
[ "$(echo "$out" | grep -c '^sign [1-3]: CKR_OK$')" -eq 3 ] || { echo "FAIL: the parent cannot sign after the fork" >&2; exit 1; }
echo "PASS: fork (child re-initializes and signs, parent signs after)"
