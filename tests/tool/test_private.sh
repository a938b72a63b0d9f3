#!/usr/bin/env bash
# kvp11 cert add with private certificates whose keys live in a SoftHSM2 token
# (tests/fixtures/mkenv.sh): key match, mismatch naming both fingerprints,
# wrong key references, --replace, and the Key Vault form.
. "$(dirname "$0")/lib.sh"

MKENV=$(cd "$(dirname "$0")/../fixtures" && pwd)/mkenv.sh
[ -x "$MKENV" ] || [ -f "$MKENV" ] || skip "tests/fixtures/mkenv.sh not found"
SOFTHSM=${KVP11_SOFTHSM_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
[ -f "$SOFTHSM" ] || skip "SoftHSM2 module not found at $SOFTHSM"
for t in softhsm2-util pkcs11-tool; do command -v $t >/dev/null 2>&1 || skip "$t not found"; done

E=$T/env
env -u KVP11_TOOL SOFTHSM2_MODULE="$SOFTHSM" bash "$MKENV" "$E" >"$T/mkenv.log" 2>&1 ||
  { cat "$T/mkenv.log" >&2; fail "mkenv.sh failed"; }
export SOFTHSM2_CONF=$E/softhsm2.conf
C=$E/certs

umask 077
printf '9999' >"$T/bad.pin"
umask 022
ACCOUNTS="default other"
write_conf \
  "[hsm test]" "module = $SOFTHSM" "token_label = kvp11-test" "pin_file = $E/hsm.pin" \
  "[hsm badpin]" "module = $SOFTHSM" "token_label = kvp11-test" "pin_file = $T/bad.pin" \
  "[hsm notoken]" "module = $SOFTHSM" "token_label = no-such-token" "pin_file = $E/hsm.pin" \
  "[hsm nomodule]" "module = $T/no-such-module.so" "token_label = kvp11-test" "pin_file = $E/hsm.pin" \
  "[account default]" "[account other]"

# spki_fp CERT: "sha256:<hex>" of the certificate's SubjectPublicKeyInfo.
spki_fp() {
  echo "sha256:$(openssl x509 -in "$1" -noout -pubkey | openssl pkey -pubin -outform DER | sha256sum | cut -d' ' -f1)"
}

# --- every key type registers ---
for k in rsa2048 rsa3072 p256 p384; do
  expect_ok "add private $k" cert add --name "$k" --type private --cert "$C/$k.pem" --hsm test --key "$k"
  grep -q "^added private certificate '$k' in account 'default', key hsm:test/$k$" "$OUT" ||
    fail "add message: $(cat "$OUT")"
done
expect_ok "add public partner" cert add --name partner --type public --cert "$C/partner.pem"
expect_ok "add private in another account" cert add --name app --type private \
  --cert "$C/p256.pem" --hsm test --key p256 --account other --resource-group b2b-rg

expect_ok "list" cert list
grep -Eq '^rsa2048 +private +.*CN=rsa2048.* hsm:test/rsa2048$' "$OUT" || fail "list row: $(cat "$OUT")"
grep -Eq '^partner +public +.* -$' "$OUT" || fail "list partner row: $(cat "$OUT")"
expect_ok "list --json" cert list --json
json "[r['name'] for r in j] == ['p256', 'p384', 'partner', 'rsa2048', 'rsa3072']"
json "all(r['type'] == 'private' and r['key_ref'] == 'hsm:test/' + r['name'] and r['key_version'] is None for r in j if r['name'] != 'partner')"
expect_ok "show --json other" cert show app --account other --json
json "j['key_ref'] == 'hsm:test/p256' and j['resource_group'] == 'b2b-rg' and j['account'] == 'other'"
expect_ok "show private" cert show rsa3072
grep -q '^key_ref: hsm:test/rsa3072$' "$OUT" && grep -q '^type: private$' "$OUT" || fail "show: $(cat "$OUT")"
expect_ok "show --pem private" cert show p384 --pem
cmp <(der_of "$OUT") <(der_of "$C/p384.pem") || fail "show --pem differs from the input"

# --- the certificate's key must be the HSM key ---
expect_fail "mismatched key (other token key)" 1 \
  "$(spki_fp "$C/rsa3072.pem").*is not the public key of hsm:test/rsa2048 \($(spki_fp "$C/rsa2048.pem")\)" \
  cert add --name mism --type private --cert "$C/rsa3072.pem" --hsm test --key rsa2048
expect_fail "mismatched key (partner certificate)" 1 \
  "partner.pem: the certificate's public key \($(spki_fp "$C/partner.pem")\) is not the public key of hsm:test/p256 \($(spki_fp "$C/p256.pem")\)" \
  cert add --name mism --type private --cert "$C/partner.pem" --hsm test --key p256
expect_fail "mismatched key on --replace" 1 "is not the public key of hsm:test/p384" \
  cert add --name rsa2048 --type private --cert "$C/rsa2048.pem" --hsm test --key p384 --replace

# --- wrong key references ---
expect_fail "unknown hsm" 1 "hsm 'nohsm' is not configured in $CONF" \
  cert add --name x --type private --cert "$C/rsa2048.pem" --hsm nohsm --key rsa2048
expect_fail "unknown key label" 1 "hsm 'test' has no key 'nokey'" \
  cert add --name x --type private --cert "$C/rsa2048.pem" --hsm test --key nokey
expect_fail "empty key label" 2 "key reference 'hsm:test/'" \
  cert add --name x --type private --cert "$C/rsa2048.pem" --hsm test --key ""
expect_fail "wrong PIN" 1 "hsm 'badpin'" \
  cert add --name x --type private --cert "$C/rsa2048.pem" --hsm badpin --key rsa2048
expect_fail "unknown token" 1 "hsm 'notoken'" \
  cert add --name x --type private --cert "$C/rsa2048.pem" --hsm notoken --key rsa2048
expect_fail "missing HSM module" 1 "hsm 'nomodule'" \
  cert add --name x --type private --cert "$C/rsa2048.pem" --hsm nomodule --key rsa2048
expect_fail "unknown vault" 1 "vault 'novault' is not configured in $CONF" \
  cert add --name x --type private --cert "$C/rsa2048.pem" --vault novault --key k1
expect_fail "duplicate private" 1 "has a certificate named 'rsa2048' already" \
  cert add --name rsa2048 --type private --cert "$C/rsa2048.pem" --hsm test --key rsa2048
head -c 500 /dev/urandom >"$T/garbage.bin"
expect_fail "private certificate file is garbage" 1 "garbage.bin" \
  cert add --name x --type private --cert "$T/garbage.bin" --hsm test --key rsa2048

# --- where the key store's reason goes: the one line carries it, and the log too ---
expect_fail "the error line carries the HSM's reason" 1 "refused the PIN from pin_file: C_Login: CKR_PIN_INCORRECT" \
  cert add --name x --type private --cert "$C/rsa2048.pem" --hsm badpin --key rsa2048
grep -q "hsm badpin: .*CKR_PIN_INCORRECT" "$T/kvp11.log" || fail "the HSM's reason is not in the log file"
cp "$CONF" "$T/logfile.conf"
sed -i '/^log_file/d' "$CONF"
expect_fail "the reason without a log file" 1 "refused the PIN from pin_file: C_Login: CKR_PIN_INCORRECT" \
  cert add --name x --type private --cert "$C/rsa2048.pem" --hsm badpin --key rsa2048
kvp -v cert add --name x --type private --cert "$C/rsa2048.pem" --hsm badpin --key rsa2048
[ "$RC" -eq 1 ] && grep -q "hsm badpin: .*CKR_PIN_INCORRECT" "$ERR" && grep -q "^kvp11: cert add: " "$ERR" ||
  { cat "$ERR" >&2; fail "-v does not show the HSM's reason"; }
ok "-v shows the log lines"
cp "$T/logfile.conf" "$CONF"

# --- --replace keeps the id and takes the new key ---
id=$("$KVP11_TOOL" -c "$CONF" cert show rsa2048 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
expect_ok "--replace with another key" cert add --name rsa2048 --type private --cert "$C/p256.pem" \
  --hsm test --key p256 --replace --alias
expect_ok "show after replace" cert show rsa2048 --json
json "j['id'] == $id and j['key_ref'] == 'hsm:test/p256' and 'CN=p256' in j['subject']"
expect_ok "private replaced by public" cert add --name rsa2048 --type public --cert "$C/partner.pem" --replace --alias
expect_ok "show after replace by public" cert show rsa2048 --json
json "j['id'] == $id and j['key_ref'] is None and j['type'] == 'public'"

# --- remove ---
expect_ok "remove private" cert remove rsa3072 --yes
expect_ok "list after remove" cert list --json
json "[r['name'] for r in j] == ['p256', 'p384', 'partner', 'rsa2048']"

# --- the Key Vault form: the vault must be configured and reachable ---
cp "$CONF" "$T/hsm.conf"
umask 077
printf 'secret' >"$T/kv.secret"
umask 022
cat >>"$CONF" <<CNF
[vault kv]
url = https://127.0.0.1:9
tenant_id = 00000000-0000-0000-0000-000000000000
client_id = 00000000-0000-0000-0000-000000000001
client_secret_file = $T/kv.secret
timeout_ms = 2000
max_retries = 0
CNF
kvp cert list
if [ "$RC" -ne 0 ]; then
  cat "$ERR" >&2
  fail "a configuration with a [vault] section does not load"
fi
expect_fail "unreachable vault" 1 "vault 'kv'" \
  cert add --name kvcert --type private --cert "$C/rsa2048.pem" --vault kv --key k1/0123456789abcdef
expect_fail "vault and key version, empty key" 2 "key reference 'keyvault:kv/'" \
  cert add --name kvcert --type private --cert "$C/rsa2048.pem" --vault kv --key ""
cp "$T/hsm.conf" "$CONF"
echo "all private certificate tests passed"
