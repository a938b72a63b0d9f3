#!/usr/bin/env bash
# tests/tpm/pin_lockout.sh SIGNS_BINARY: a wrong pin_file must not lock the TPM (issue 18, item 1;
# the rule is issue 10's: after the HSM refuses a configured PIN, no further login attempt until
# the PIN file changes or the application re-initializes).
#
# A TPM counts every refused authorization in its dictionary-attack counter
# (TPM2_PT_LOCKOUT_COUNTER, read with `tpm2_getcap properties-variable`) and goes to lockout at
# TPM2_PT_MAX_AUTH_FAIL (3 on swtpm), which blocks every key the TPM protects. With pin_file
# holding a wrong PIN, one process signs 6 times through libkvp11.so: every sign fails, the
# counter moves by exactly 1 (the first refused PIN) and the TPM is not in lockout. Then the PIN
# file is replaced by the right PIN in the same process: the next sign works.
# Its own TPM (tests/fixtures/tpm-setup.sh in KVP11_TPM_TMP/pin_lockout, stopped at exit): the
# counter is global to the TPM and must not be disturbed by other tests.
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 kvp11-tpm-signs" >&2; exit 2; }
SIGNS=$1
: "${KVP11_MODULE:?}" "${KVP11_TOOL:?}"
HERE=$(cd "$(dirname "$0")" && pwd)
D=${KVP11_TPM_TMP:-${TMPDIR:-/tmp}}/pin_lockout
rc=0
TPM_FIXTURE_KEYS=rsa2048:01:rsa2048 "$HERE/../fixtures/tpm-setup.sh" "$D" || rc=$?
[ $rc -eq 77 ] && { echo "SKIP: TPM packages missing"; exit 77; }
[ $rc -eq 0 ] || { echo "FAIL: TPM fixture setup" >&2; exit 1; }
trap '"$HERE/../fixtures/tpm-teardown.sh" "$D"' EXIT
# shellcheck source=/dev/null
. "$D/env.sh"
fail() {
  echo "FAIL: $*" >&2
  [ -s "$D/signs.out" ] && sed 's/^/    /' "$D/signs.out" >&2
  grep -E 'ERROR|WARN' "$D/kvp11.log" | tail -n 10 >&2 || true
  exit 1
}
var() { tpm2_getcap properties-variable | awk -v k="$1:" '$1 == k { print $2; exit }'; }
counter() { printf '%d' "$(var TPM2_PT_LOCKOUT_COUNTER)"; }
MAX=$(printf '%d' "$(var TPM2_PT_MAX_AUTH_FAIL)")
[ "$MAX" -ge 2 ] || fail "TPM2_PT_MAX_AUTH_FAIL is $MAX: the test needs at least 2"
[ "$(counter)" -eq 0 ] || fail "fresh TPM: lockout counter $(counter), not 0"

# The right PIN works (so the failures below are the PIN's).
"$SIGNS" "$KVP11_MODULE" "kvp11 default" rsa2048 1 >"$D/signs.out" 2>&1 || fail "kvp11-tpm-signs"
grep -qx 'sign 1: CKR_OK' "$D/signs.out" || fail "signing with the right PIN"
[ "$(counter)" -eq 0 ] || fail "the right PIN moved the lockout counter"
echo "ok 1 - right PIN: signs, lockout counter 0 (TPM2_PT_MAX_AUTH_FAIL $MAX)"

# A wrong PIN in pin_file: 6 signs in one process.
printf '%s' 0000 >"$D/hsm.pin.new"; chmod 600 "$D/hsm.pin.new"; mv "$D/hsm.pin.new" "$D/hsm.pin"
printf '%s' 1234 >"$D/right.pin"; chmod 600 "$D/right.pin"
FIX="tpm2_getcap properties-variable > '$D/var.mid' && cp '$D/right.pin' '$D/hsm.pin.new' && mv '$D/hsm.pin.new' '$D/hsm.pin'"
"$SIGNS" "$KVP11_MODULE" "kvp11 default" rsa2048 6 "$FIX" 1 >"$D/signs.out" 2>&1 || fail "kvp11-tpm-signs"
[ "$(grep -c '^sign [1-6]: ' "$D/signs.out")" -eq 6 ] || fail "expected 6 results with the wrong PIN"
! grep -Eq '^sign [1-6]: CKR_OK$' "$D/signs.out" || fail "a sign succeeded with a wrong PIN"
mid=$(printf '%d' "$(awk '$1 == "TPM2_PT_LOCKOUT_COUNTER:" { print $2 }' "$D/var.mid")")
inl=$(awk '$1 == "inLockout:" { print $2 }' "$D/var.mid")
[ "$mid" -le 1 ] || fail "6 signs with a wrong pin_file moved the TPM lockout counter to $mid (max $MAX): one refused PIN must stop the login attempts"
[ "$mid" -eq 1 ] || fail "lockout counter $mid after a refused PIN: the TPM did not count it (the test proves nothing)"
[ "$inl" = 0 ] || fail "the TPM is in lockout"
echo "ok 2 - wrong pin_file: 6 signs refused in one process, lockout counter 1, not in lockout"

# The PIN file was replaced (right PIN): the same process signs again.
grep -qx 'sign 7: CKR_OK' "$D/signs.out" || fail "after the PIN file was corrected the process still cannot sign"
[ "$(counter)" -eq 1 ] || fail "lockout counter $(counter) after the corrected PIN (expected it to stay 1)"
echo "ok 3 - PIN file corrected: the same process signs again, counter still 1"
echo "PASS: pin_lockout"
