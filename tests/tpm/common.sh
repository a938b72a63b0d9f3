# shellcheck shell=bash
# tests/tpm/common.sh — sourced by the TPM test scripts (tests/tpm/*.sh).
#
# Environment (CTest, tests/tpm/CMakeLists.txt): KVP11_ENV (the fixture directory made by
# tests/fixtures/tpm-setup.sh), KVP11_MODULE (libkvp11.so), KVP11_TOOL (kvp11),
# KVP11_TPM_TMP (a directory for the tests' own files).
# Skips (77) when the fixture did not run (its setup skips without the TPM packages).
set -euo pipefail

skip() { echo "SKIP: $*"; exit 77; }
: "${KVP11_ENV:?KVP11_ENV must point to the tpm-setup.sh directory}"
[ -r "$KVP11_ENV/env.sh" ] || skip "no TPM fixture in $KVP11_ENV (tpm/setup skipped: TPM packages missing?)"
# shellcheck source=/dev/null
. "$KVP11_ENV/env.sh"
# The fixture's processes must still run (a swtpm that died makes every test hang until
# tpm2-abrmd times out).
for p in swtpm abrmd dbus; do
  pid=$(cat "$KVP11_ENV/$p.pid" 2>/dev/null || true)
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || { echo "FAIL: the fixture's $p is not running" >&2; exit 1; }
done
