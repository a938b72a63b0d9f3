# tests/tool/smime_env.sh: the SoftHSM2 fixture of the smime and csr tool
# tests (sourced after lib.sh by test_smime*.sh and test_csr.sh, not run
# itself).
#
# Skips (77) without SoftHSM2, its tools or the OpenSSL pkcs11 engine; makes
# the fixture of tests/fixtures/mkenv.sh in $T/env (four HSM keys registered as
# private certificates: rsa2048 rsa3072 p256 p384; partner, a software RSA key,
# as a public one) and sets E, C (certificates), CONF, PK / PC (the partner's
# key and certificate) and SOFTHSM2_CONF. Our keys are used through the built
# libkvp11.so ($KVP11_MODULE).
MKENV=$(cd "$(dirname "$0")/../fixtures" && pwd)/mkenv.sh
[ -f "$MKENV" ] || skip "tests/fixtures/mkenv.sh not found"
SOFTHSM=${KVP11_SOFTHSM_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
[ -f "$SOFTHSM" ] || skip "SoftHSM2 module not found at $SOFTHSM"
for t in softhsm2-util pkcs11-tool; do command -v $t >/dev/null 2>&1 || skip "$t not found"; done
ENGDIR=$(openssl version -e | sed -n 's/^ENGINESDIR: "\(.*\)"$/\1/p')
[ -f "$ENGDIR/pkcs11.so" ] || skip "OpenSSL pkcs11 engine not found (libengine-pkcs11-openssl)"
[ -n "${KVP11_MODULE:-}" ] && [ -f "$KVP11_MODULE" ] || fail "KVP11_MODULE is not set to the built libkvp11.so"

E=$T/env
KVP11_TOOL="$KVP11_TOOL" SOFTHSM2_MODULE="$SOFTHSM" bash "$MKENV" "$E" >"$T/mkenv.log" 2>&1 ||
  { cat "$T/mkenv.log" >&2; fail "mkenv.sh failed"; }
export SOFTHSM2_CONF=$E/softhsm2.conf
C=$E/certs
CONF=$E/kvp11.conf
PK=$C/partner.key
PC=$C/partner.pem

# kv_fixture NAME...: when the kv tests' emulator fixture ($KVP11_KV_DIR) runs,
# switch to it: CONF (a copy with this test's registry and log), ACCOUNTS=kv,
# KC (its certificates), and register each NAME as a private certificate of
# account kv on the vault emu (key NAME); returns 1 (nothing changed) without it.
kv_fixture() {
  KV=${KVP11_KV_DIR:-}
  [ -n "$KV" ] && [ -f "$KV/port" ] && [ -f "$KV/kvp11.conf" ] && command -v curl >/dev/null 2>&1 &&
    curl -sf --cacert "$KV/ca.pem" "https://127.0.0.1:$(cat "$KV/port")/_emu/health" >/dev/null ||
    return 1
  CONF=$T/kv.conf
  sed -e "s|^registry = .*|registry = $T/kv-registry.db|" -e "s|^log_file = .*|log_file = $T/kv.log|" \
    "$KV/kvp11.conf" >"$CONF"
  ACCOUNTS=kv
  KC=$KV/certs
  local k
  for k in "$@"; do
    expect_ok "kv: add $k" cert add --name "$k" --type private --cert "$KC/$k.pem" --account kv --vault emu --key "$k"
  done
}
