#!/usr/bin/env bash
# kvp11 cert add --vault: private certificates whose keys live in Key Vault,
# against the emulator started by the kv tests' fixture (tests/kv/fixture-setup.sh,
# directory $KVP11_KV_DIR). Skipped when that emulator is not running.
. "$(dirname "$0")/lib.sh"

KV=${KVP11_KV_DIR:-}
[ -n "$KV" ] && [ -f "$KV/port" ] && [ -f "$KV/kvp11.conf" ] || skip "no Key Vault emulator fixture in '$KV'"
command -v curl >/dev/null 2>&1 || skip "curl not found"
curl -sf --cacert "$KV/ca.pem" "https://127.0.0.1:$(cat "$KV/port")/_emu/health" >/dev/null ||
  skip "the Key Vault emulator does not answer"

# The fixture's configuration with our own registry and log, plus a vault
# whose client secret is wrong.
umask 077
printf 'not-the-secret' >"$T/wrong.secret"
sed -e "s|^registry = .*|registry = $T/registry.db|" -e "s|^log_file = .*|log_file = $T/kvp11.log|" \
  "$KV/kvp11.conf" >"$CONF"
sed -n '/^\[vault emu\]/,/^$/p' "$KV/kvp11.conf" |
  sed -e 's/^\[vault emu\]/[vault badsecret]/' -e "s|^client_secret_file = .*|client_secret_file = $T/wrong.secret|" \
    -e 's/^max_retries = .*/max_retries = 0/' >>"$CONF"
umask 022
ACCOUNTS=kv
C=$KV/certs

spki_fp() {
  echo "sha256:$(openssl x509 -in "$1" -noout -pubkey | openssl pkey -pubin -outform DER | sha256sum | cut -d' ' -f1)"
}
# shown FIELD NAME: a field of "cert show NAME --json".
shown() {
  "$KVP11_TOOL" -c "$CONF" cert show "$2" --account kv --json | python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"
}

for k in rsa2048 p256 p384; do
  expect_ok "add vault $k" cert add --name "$k" --type private --cert "$C/$k.pem" --account kv \
    --vault emu --key "$k" --resource-group rg-kv
  grep -q "^added private certificate '$k' in account 'kv', key keyvault:emu/$k$" "$OUT" ||
    fail "add message: $(cat "$OUT")"
done
expect_ok "list --json" cert list --account kv --json
json "[r['name'] for r in j] == ['p256', 'p384', 'rsa2048']"
json "all(r['key_ref'] == 'keyvault:emu/' + r['name'] and r['type'] == 'private' for r in j)"
json "all(isinstance(r['key_version'], str) and len(r['key_version']) >= 8 for r in j)"
json "all(r['resource_group'] == 'rg-kv' for r in j)"
expect_ok "list" cert list --account kv
grep -Eq '^rsa2048 +private +.* keyvault:emu/rsa2048$' "$OUT" || fail "list row: $(cat "$OUT")"

# A pinned version is kept in the key reference and recorded.
ver=$(shown key_version p256)
expect_ok "add with a key version" cert add --name p256v --type private --cert "$C/p256.pem" \
  --account kv --vault emu --key "p256/$ver" --alias
expect_ok "show pinned" cert show p256v --account kv --json
json "j['key_ref'] == 'keyvault:emu/p256/$ver' and j['key_version'] == '$ver'"

expect_fail "vault key mismatch" 1 \
  "p256.pem: the certificate's public key \($(spki_fp "$C/p256.pem")\) is not the public key of keyvault:emu/p384 \($(spki_fp "$C/p384.pem")\)" \
  cert add --name mism --type private --cert "$C/p256.pem" --account kv --vault emu --key p384
expect_fail "unknown vault key" 1 "vault 'emu' has no key 'nokey'" \
  cert add --name x --type private --cert "$C/p256.pem" --account kv --vault emu --key nokey
expect_fail "unknown key version" 1 "vault 'emu'.*'p256/0123456789abcdef0123456789abcdef'" \
  cert add --name x --type private --cert "$C/p256.pem" --account kv --vault emu --key p256/0123456789abcdef0123456789abcdef
expect_fail "wrong client secret" 1 "vault 'badsecret': cannot read key 'p256'" \
  cert add --name x --type private --cert "$C/p256.pem" --account kv --vault badsecret --key p256
expect_fail "vault not configured" 1 "vault 'nope' is not configured" \
  cert add --name x --type private --cert "$C/p256.pem" --account kv --vault nope --key p256
expect_fail "duplicate vault certificate" 1 "has a certificate named 'p256' already" \
  cert add --name p256 --type private --cert "$C/p256.pem" --account kv --vault emu --key p256
expect_ok "--replace vault to HSM-less public" cert add --name p384 --type public --cert "$C/p384.pem" \
  --account kv --replace
expect_ok "remove vault certificate" cert remove rsa2048 --account kv --yes
expect_ok "list after" cert list --account kv --json
json "[(r['name'], r['type']) for r in j] == [('p256', 'private'), ('p256v', 'private'), ('p384', 'public')]"
echo "all vault certificate tests passed"
