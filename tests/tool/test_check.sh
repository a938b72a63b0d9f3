#!/usr/bin/env bash
# kvp11 check: every private certificate's key store, key, permissions and
# validity. HSM part on the shared SoftHSM2 fixture (tests/fixtures/mkenv.sh):
# all good, an expired and a soon-expiring certificate, a key deleted from the
# token. Key Vault part on the kv tests' emulator ($KVP11_KV_DIR): full
# permissions, no sign/decrypt (app-nosign, with the grant commands), no
# permissions at all, a wrong client secret, an unreachable vault. Exit 77
# when SoftHSM2 or the emulator is missing (the HSM part has run by then).
. "$(dirname "$0")/lib.sh"

MKENV=$(cd "$(dirname "$0")/../fixtures" && pwd)/mkenv.sh
[ -f "$MKENV" ] || skip "tests/fixtures/mkenv.sh not found"
SOFTHSM=${KVP11_SOFTHSM_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
[ -f "$SOFTHSM" ] || skip "SoftHSM2 module not found at $SOFTHSM"
for t in softhsm2-util pkcs11-tool; do command -v $t >/dev/null 2>&1 || skip "$t not found"; done

# check_run WHAT CODE ARGS...: kvp11 check; exit CODE; with CODE 1 exactly one
# stderr line "kvp11: check: N of M checks failed ...".
check_run() {
  local what=$1 code=$2; shift 2
  kvp check "$@"
  [ "$RC" -eq "$code" ] || { cat "$OUT" "$ERR" >&2; fail "$what: exit $RC (want $code)"; }
  if [ "$code" -eq 1 ]; then
    one_line "$what"
    grep -Eq '^kvp11: check: [0-9]+ of [0-9]+ checks failed' "$ERR" || { cat "$ERR" >&2; fail "$what: stderr"; }
  elif [ "$code" -eq 3 ]; then
    one_line "$what"
    grep -Eq '^kvp11: check: warning: [0-9]+ of [0-9]+ checks gave a warning$' "$ERR" || { cat "$ERR" >&2; fail "$what: stderr"; }
  fi
  ok "$what (exit $RC)"
}
# row CERT CHECK RESULT [DETAIL-REGEX]: the table in $OUT has that row (any account).
row() {
  grep -Eq "^[^ ]+ +$1 +[^ ]+ +$2 +$3 +.*${4:-}" "$OUT" || { cat "$OUT" >&2; fail "no row '$1 $2 $3 ${4:-}'"; }
}

# ---------------------------------------------------------------- command line
write_conf "[account default]"
expect_ok "check --help" check --help
grep -q '^usage: kvp11 \[-c FILE\] check \[--account A\] \[--warn-days N\] \[--json\]$' "$OUT" || fail "help: $(cat "$OUT")"
grep -q '0 every check ok, 1 a check failed, 2 usage error' "$OUT" && grep -q '^3 warnings only' "$OUT" || fail "help: exit codes: $(cat "$OUT")"
expect_fail "bad --warn-days" 2 "bad --warn-days 'x'" check --warn-days x
expect_fail "unknown option" 2 "unknown option '--bogus'" check --bogus
expect_fail "extra argument" 2 "unexpected argument 'x'" check x
expect_fail "unknown account" 1 "account 'nope' is not configured" check --account nope
expect_ok "nothing registered" check
grep -qx "no certificates registered" "$OUT" || fail "empty: $(cat "$OUT")"
expect_ok "nothing registered in the account" check --account default
grep -qx "account 'default' has no certificates" "$OUT" || fail "empty: $(cat "$OUT")"
expect_ok "nothing registered, --json" check --json
json "j == []"

# ---------------------------------------------------------------- HSM
E=$T/env
env -u KVP11_TOOL SOFTHSM2_MODULE="$SOFTHSM" bash "$MKENV" "$E" >"$T/mkenv.log" 2>&1 ||
  { cat "$T/mkenv.log" >&2; fail "mkenv.sh failed"; }
export SOFTHSM2_CONF=$E/softhsm2.conf
C=$E/certs
write_conf "[hsm test]" "module = $SOFTHSM" "token_label = kvp11-test" "pin_file = $E/hsm.pin" \
  "[account default]"
for k in rsa2048 rsa3072 p256 p384; do
  expect_ok "add $k" cert add --name "$k" --type private --cert "$C/$k.pem" --hsm test --key "$k"
done
expect_ok "add partner" cert add --name partner --type public --cert "$C/partner.pem"

check_run "hsm: all good" 0
[ ! -s "$ERR" ] || { cat "$ERR" >&2; fail "hsm: all good: unexpected stderr"; }
head -1 "$OUT" | grep -Eq '^ACCOUNT +CERT +STORE +CHECK +RESULT +DETAIL$' || fail "table header: $(head -1 "$OUT")"
for k in rsa2048 rsa3072 p256 p384; do
  for c in token key key-state cert-key sign cert-validity; do row "$k" "$c" ok; done
done
row rsa2048 decrypt ok 'decrypted 32 random bytes'
row partner cert-validity ok 'valid until'
grep -q 'fail' "$OUT" && fail "hsm: a failed row: $(cat "$OUT")"
check_run "hsm: all good, --json" 0 --json
json "len(j) == 2 * 7 + 2 * 6 + 1 and all(r['result'] == 'ok' and r['fix'] == [] for r in j)"
json "sorted(r['check'] for r in j if r['cert'] == 'rsa2048') == sorted(['token', 'key', 'key-state', 'cert-key', 'sign', 'decrypt', 'cert-validity'])"
json "[r['check'] for r in j if r['cert'] == 'p256'].count('decrypt') == 0"
json "all(r['store'] == 'hsm:test' for r in j if r['cert'] != 'partner')"

# An expired certificate of a good key: issued by a throwaway CA for the HSM key.
d=$T/ca
mkdir -p "$d"
: >"$d/index.txt"
echo 1000 >"$d/serial"
cat >"$d/ca.cnf" <<CNF
[ca]
default_ca = d
[d]
database = $d/index.txt
new_certs_dir = $d
serial = $d/serial
default_md = sha256
policy = p
unique_subject = no
[p]
commonName = supplied
organizationName = optional
CNF
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$d/ca.key" -out "$d/ca.pem" -days 10 \
  -subj "/CN=kvp11 check CA" 2>/dev/null || fail "test CA"
# reissue NAME START END: the rsa2048 HSM key's certificate, re-signed with other dates.
reissue() {
  openssl ca -batch -notext -config "$d/ca.cnf" -cert "$d/ca.pem" -keyfile "$d/ca.key" \
    -ss_cert "$C/rsa2048.pem" -startdate "$2" -enddate "$3" -out "$T/$1.pem" >/dev/null 2>&1 ||
    fail "reissue $1"
}
reissue old 20240101000000Z 20240201000000Z
reissue soon "$(date -u -d '-1 day' +%Y%m%d%H%M%SZ)" "$(date -u -d '+10 days' +%Y%m%d%H%M%SZ)"
kvp cert add --name old --type private --cert "$T/old.pem" --hsm test --key rsa2048 --allow-expired
[ "$RC" -eq 0 ] || { cat "$ERR" >&2; fail "add expired certificate"; }
check_run "hsm: expired certificate" 1
row old cert-validity fail 'the certificate expired on 2024-02-01T00:00:00Z'
row old sign ok
row rsa2048 cert-validity ok
check_run "hsm: expired certificate, --json" 1 --json
json "[(r['check'], r['result']) for r in j if r['result'] != 'ok'] == [('cert-validity', 'fail')]"
json "[r['cert'] for r in j if r['result'] == 'fail'] == ['old']"
expect_ok "remove expired" cert remove old --yes
expect_ok "add soon-expiring" cert add --name soon --type private --cert "$T/soon.pem" --hsm test --key rsa2048
check_run "hsm: certificate expiring in 10 days (warning, exit 3)" 3
row soon cert-validity warn 'the certificate expires on .* \(in (9|10) days\)'
grep -q '^kvp11: check: warning: 1 of [0-9]* checks gave a warning$' "$ERR" || fail "warning line: $(cat "$ERR")"
check_run "hsm: --warn-days 5: 10 days is no warning" 0 --warn-days 5
expect_ok "remove soon" cert remove soon --yes

# A key deleted from the token: the certificate's key row fails and names it.
P11=(pkcs11-tool --module "$SOFTHSM" --token-label kvp11-test --login --pin "$(cat "$E/hsm.pin")")
for ty in privkey pubkey; do
  "${P11[@]}" --delete-object --type $ty --label p384 >>"$T/p11.log" 2>&1 || fail "delete p384 $ty"
done
check_run "hsm: key deleted from the token" 1
row p384 key fail "hsm 'test' has no key 'p384'"
row p256 sign ok
check_run "hsm: key deleted, --json" 1 --json
json "[(r['cert'], r['check']) for r in j if r['result'] == 'fail'] == [('p384', 'key')]"
json "[r['check'] for r in j if r['cert'] == 'p384'] == ['token', 'key', 'cert-validity']"

# Every failure row carries the reason the backend recorded, never a bare CKR_ name.
no_bare_rv() {
  kvp check --json
  json "all(r['detail'] and 'CKR_' not in r['detail'] for r in j if r['result'] == 'fail')"
  ok "$1: every failure row gives its reason"
}
no_bare_rv "hsm: key deleted"

# The HSM's module missing: the token row names the file and why it cannot be loaded.
write_conf "[hsm test]" "module = $T/missing/libhsm.so" "token_label = kvp11-test" \
  "pin_file = $E/hsm.pin" "[account default]"
check_run "hsm: module missing" 1
for k in rsa2048 rsa3072 p256 p384; do
  row "$k" token fail "cannot use the HSM .*: cannot load module $T/missing/libhsm\.so: .*No such file"
done
row partner cert-validity ok
no_bare_rv "hsm: module missing"
write_conf "[hsm test]" "module = $SOFTHSM" "token_label = kvp11-test" "pin_file = $E/hsm.pin" \
  "[account default]"
echo "all HSM check tests passed"

# ---------------------------------------------------------------- Key Vault
KV=${KVP11_KV_DIR:-}
[ -n "$KV" ] && [ -f "$KV/port" ] && [ -f "$KV/kvp11.conf" ] || skip "no Key Vault emulator fixture in '$KV'"
command -v curl >/dev/null 2>&1 || skip "curl not found"
EMU=https://127.0.0.1:$(cat "$KV/port")
curl -sf --cacert "$KV/ca.pem" "$EMU/_emu/health" >/dev/null || skip "the Key Vault emulator does not answer"
policy() { # policy CLIENT PERMS-JSON: set a client's permissions in the emulator
  curl -sf --cacert "$KV/ca.pem" -X POST -H 'Content-Type: application/json' \
    -d "{\"clientId\":\"$1\",\"permissions\":$2}" "$EMU/_emu/policy" >/dev/null
}
trap 'policy app-nosign "[\"get\",\"list\"]" || true' EXIT

# Configurations: full permissions (app-full), app-nosign, a wrong secret, an
# unreachable vault; all with our registry and log.
FULL=$T/full.conf
sed -e "s|^registry = .*|registry = $T/kv-registry.db|" -e "s|^log_file = .*|log_file = $T/kvp11.log|" \
  "$KV/kvp11.conf" >"$FULL"
umask 077
printf 'not-the-secret' >"$T/wrong.secret"
sed -e "s|^client_id = .*|client_id = app-nosign|" \
  -e "s|^client_secret_file = .*|client_secret_file = $KV/app-nosign.secret|" "$FULL" >"$T/nosign.conf"
sed -e "s|^client_secret_file = .*|client_secret_file = $T/wrong.secret|" \
  -e 's/^max_retries = .*/max_retries = 0/' "$FULL" >"$T/badsecret.conf"
sed -e "s|^url = .*|url = https://127.0.0.1:1|" -e 's/^max_retries = .*/max_retries = 0/' \
  -e 's/^timeout_ms = .*/timeout_ms = 3000/' "$FULL" >"$T/unreach.conf"
umask 022
CONF=$FULL
ACCOUNTS=kv
# emu_log: the emulator's request log since the last reset, one "EP STATUS" a line.
emu_log() {
  curl -sf --cacert "$KV/ca.pem" "$EMU/_emu/log" |
    python3 -c 'import json,sys; [print(r["ep"], r["status"]) for r in json.load(sys.stdin)["requests"]]'
}

# One reading of the key for the key-version and key-state rows: a check of
# one Key Vault certificate reads its key once after opening it (the 'list'
# probe comes between the two). Opening reads it too while the tool opens keys
# without the registry's hint: at most two successful key GETs in all.
expect_ok "add vault rsa2048 alone" cert add --name rsa2048 --type private --cert "$KV/certs/rsa2048.pem" \
  --vault emu --key rsa2048 --resource-group rg-b2b
curl -sf --cacert "$KV/ca.pem" -X POST -H 'Content-Type: application/json' -d '{}' "$EMU/_emu/reset" >/dev/null ||
  fail "emulator: reset the counters"
check_run "vault: one certificate" 0
for c in token get list key-version key-state sign decrypt; do row rsa2048 "$c" ok; done
emu_log >"$T/emu.log" || fail "emulator: request log"
reads=$(awk '$1 == "list" { l = 1 } $1 == "sign" { exit } l && $1 == "get" { n++ } END { print n + 0 }' "$T/emu.log")
[ "$reads" -eq 1 ] || { cat "$T/emu.log" >&2; fail "vault: the check read the opened key $reads times (want 1)"; }
gets=$(grep -c '^get 200$' "$T/emu.log")
[ "$gets" -le 2 ] || { cat "$T/emu.log" >&2; fail "vault: $gets successful key GETs (want at most 2)"; }
ok "a check of one Key Vault certificate reads its key once after opening it"
expect_ok "remove vault rsa2048" cert remove rsa2048 --account kv --yes

for k in rsa2048 p256; do
  expect_ok "add vault $k" cert add --name "$k" --type private --cert "$KV/certs/$k.pem" \
    --vault emu --key "$k" --resource-group rg-b2b
done

check_run "vault: full permissions" 0
for k in rsa2048 p256; do
  for c in token get list key-state cert-key sign cert-validity; do row "$k" "$c" ok; done
done
row rsa2048 decrypt ok
grep -q 'Set-AzKeyVaultAccessPolicy' "$OUT" && fail "vault: full permissions: grant commands printed"
check_run "vault: full permissions, --json" 0 --json
json "len(j) == 17 and all(r['result'] == 'ok' and r['fix'] == [] and r['store'] == 'keyvault:emu' for r in j)"

# A disabled key (the emulator's EC key "disabled"): a certificate for its
# public key, issued by the test CA (the key's public part read over REST).
. "$KV/env.sh"
unset KVP11_CONF
TOKEN=$(curl -sf --cacert "$KV/ca.pem" -X POST "$EMU/$KV_TENANT/oauth2/v2.0/token" \
  --data-urlencode client_id=app-full --data-urlencode "client_secret=$(cat "$KV/app-full.secret")" \
  --data-urlencode grant_type=client_credentials --data-urlencode "scope=https://127.0.0.1/.default" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])') || fail "emulator token"
curl -sf --cacert "$KV/ca.pem" -H "Authorization: Bearer $TOKEN" "$EMU/keys/disabled?api-version=7.5" |
  python3 -c '
import base64, json, sys
k = json.load(sys.stdin)["key"]
b = lambda s: base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
der = bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d030107034200") + b"\x04" + b(k["x"]) + b(k["y"])
print("-----BEGIN PUBLIC KEY-----\n%s\n-----END PUBLIC KEY-----" % base64.encodebytes(der).decode().strip())
' >"$T/disabled.pub" || fail "public key of the disabled key"
unset TOKEN
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$T/tmp.key" \
  -subj "/CN=disabled" -out "$T/tmp.csr" 2>/dev/null || fail "request"
openssl x509 -req -in "$T/tmp.csr" -force_pubkey "$T/disabled.pub" -CA "$d/ca.pem" -CAkey "$d/ca.key" \
  -days 100 -out "$T/disabled.pem" 2>/dev/null || fail "certificate for the disabled key"
expect_ok "add disabled vault key" cert add --name dis --type private --cert "$T/disabled.pem" \
  --vault emu --key disabled
check_run "vault: disabled key" 1
row dis key-state fail 'disabled, outside its validity period'
row dis sign fail 'the key is disabled'
row dis cert-key ok
check_run "vault: disabled key, --json" 1 --json
json "sorted((r['cert'], r['check']) for r in j if r['result'] == 'fail') == [('dis', 'key-state'), ('dis', 'sign')]"
json "all(r['fix'] == [] for r in j)"
expect_ok "remove disabled" cert remove dis --yes

# A rotation in the vault: a newer version of a registered key whose
# certificate is not registered is a warning naming the key and when it was made.
policy app-full '["get","list","sign","decrypt","create","delete"]' || fail "emulator: grant app-full create"
trap 'policy app-nosign "[\"get\",\"list\"]" || true; policy app-full "[\"get\",\"list\",\"sign\",\"decrypt\"]" || true' EXIT
ROT=rot$$
expect_ok "key create for the rotation check" key create --vault emu --key "$ROT" --type ec --curve p256 --account kv
kvp check --json
json "[r['result'] for r in j if r['cert'] == '$ROT' and r['check'] == 'key-version'] == ['ok']"
TOKEN=$(curl -sf --cacert "$KV/ca.pem" -X POST "$EMU/$KV_TENANT/oauth2/v2.0/token" \
  --data-urlencode client_id=app-full --data-urlencode "client_secret=$(cat "$KV/app-full.secret")" \
  --data-urlencode grant_type=client_credentials --data-urlencode "scope=https://127.0.0.1/.default" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])') || fail "emulator token"
curl -sf --cacert "$KV/ca.pem" -X POST -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
  -d '{"kty":"EC","crv":"P-256","key_ops":["sign","verify"]}' "$EMU/keys/$ROT/create?api-version=7.5" >/dev/null ||
  fail "a new version of $ROT in the vault"
kvp check
[ "$RC" -eq 1 ] || [ "$RC" -eq 3 ] || fail "check after a rotation in the vault: exit $RC"
row "$ROT" key-version warn "a newer version of key $ROT exists \(created [0-9T:-]+Z\); its certificate is not registered"
ok "check warns about a newer key version whose certificate is not registered"
# The key deleted in the vault (soft-deleted, as kvp11 key delete leaves it):
# the certificate's get row fails and names the key.
curl -sf --cacert "$KV/ca.pem" -X DELETE -H "Authorization: Bearer $TOKEN" \
  "$EMU/keys/$ROT?api-version=7.5" >/dev/null || fail "delete $ROT in the vault"
unset TOKEN
check_run "vault: key deleted in the vault" 1
row "$ROT" token ok
row "$ROT" get fail "vault 'emu' has no key '$ROT'"
row rsa2048 sign ok
no_bare_rv "vault: key deleted in the vault"
expect_ok "remove the rotation entry" cert remove "$ROT" --account kv --yes
policy app-full '["get","list","sign","decrypt"]' || fail "emulator: restore app-full"

GRANT1="Set-AzKeyVaultAccessPolicy -VaultName 127 -ServicePrincipalName app-nosign -PermissionsToKeys decrypt,sign,get"
GRANT2="az keyvault set-policy --name 127 --spn app-nosign --key-permissions decrypt sign get"
GRANT3="az role assignment create --role \"Key Vault Crypto User\" --assignee app-nosign --scope /subscriptions/<subscription>/resourceGroups/rg-b2b/providers/Microsoft.KeyVault/vaults/127"
CONF=$T/nosign.conf
check_run "vault: no sign/decrypt permission" 1
row p256 sign fail "refused: the application lacks the 'sign' permission"
row rsa2048 sign fail "refused: the application lacks the 'sign' permission"
row rsa2048 decrypt fail "refused: the application lacks the 'decrypt' permission"
row rsa2048 get ok
row rsa2048 list ok
for g in "$GRANT1" "$GRANT2" "$GRANT3"; do
  [ "$(grep -cxF "  $g" "$OUT")" -eq 1 ] || { cat "$OUT" >&2; fail "grant command not printed once: $g"; }
done
check_run "vault: no sign/decrypt permission, --json" 1 --json
json "sorted((r['cert'], r['check']) for r in j if r['result'] == 'fail') == [('p256', 'sign'), ('rsa2048', 'decrypt'), ('rsa2048', 'sign')]"
json "all(r['fix'] == ['''$GRANT1''', '''$GRANT2''', '''$GRANT3'''] for r in j if r['result'] == 'fail')"
json "all(r['fix'] == [] for r in j if r['result'] == 'ok')"
no_bare_rv "vault: no sign/decrypt permission"

# A get+sign principal (issue 11): 'list' is reported as not needed, signing works.
policy app-nosign '["get","sign"]' || fail "emulator: set app-nosign's permissions"
kvp check --json
json "all(r['result'] == 'ok' and 'not needed' in r['detail'] for r in j if r['check'] == 'list')"
json "sorted((r['cert'], r['check']) for r in j if r['result'] == 'fail') == [('rsa2048', 'decrypt')]"
json "[r['result'] for r in j if r['check'] == 'sign'] == ['ok', 'ok']"
ok "check with a get+sign principal: list not needed, sign ok, only decrypt fails"
policy app-nosign '[]' || fail "emulator: set app-nosign's permissions"
check_run "vault: no permissions at all" 1
row rsa2048 token ok
row rsa2048 get fail "lacks the 'get' permission"
row rsa2048 list ok "no 'list' permission: not needed"
grep -qxF "  $GRANT1" "$OUT" || fail "no permissions: grant command missing"
check_run "vault: no permissions at all, --json" 1 --json
json "sorted((r['cert'], r['check']) for r in j if r['result'] == 'fail') == [('p256', 'get'), ('rsa2048', 'get')]"
json "all(len(r['fix']) == 3 for r in j if r['result'] == 'fail')"
no_bare_rv "vault: no permissions at all"
policy app-nosign '["get","list"]' || fail "emulator: restore app-nosign's permissions"

CONF=$T/badsecret.conf
check_run "vault: wrong client secret" 1
row rsa2048 token fail "app-full|invalid_client|client secret|401"
row p256 token fail
check_run "vault: wrong client secret, --json" 1 --json
json "sorted((r['cert'], r['check']) for r in j if r['result'] == 'fail') == [('p256', 'token'), ('rsa2048', 'token')]"
json "all(r['fix'] == [] for r in j)"
no_bare_rv "vault: wrong client secret"

# An unreachable vault: the row names the vault's URL and the backend's reason
# (the connection failure as libcurl reports it).
CONF=$T/unreach.conf
check_run "vault: unreachable" 1
row rsa2048 token fail "cannot use the vault at https://127\.0\.0\.1:1: .*(onnect|refused)"
no_bare_rv "vault: unreachable"
echo "all check tests passed"
