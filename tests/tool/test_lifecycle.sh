#!/usr/bin/env bash
# Certificate lifecycle on the SoftHSM2 fixture, seen by the tool and by a
# running PKCS#11 application (p11watch, which keeps libkvp11.so loaded):
# renew keeps the entry's id and handles; rotate keeps the old certificate as
# retired (it decrypts an old message, refuses to sign) while the name signs
# with the new key; retire; cert list shows the state; every refusal leaves
# the registry unchanged; expiry watch (certificates expired, expiring in 10
# and in 100 days: check exit codes 1 / 3 / 0, --json, --warn-days, cert list
# --expiring); help texts; fingerprints; a table with UTF-8 names.
. "$(dirname "$0")/lib.sh"

MKENV=$(cd "$(dirname "$0")/../fixtures" && pwd)/mkenv.sh
SOFTHSM=${KVP11_SOFTHSM_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
[ -f "$SOFTHSM" ] || skip "SoftHSM2 module not found at $SOFTHSM"
for t in softhsm2-util pkcs11-tool; do command -v $t >/dev/null 2>&1 || skip "$t not found"; done
[ -x "${KVP11_P11WATCH:-}" ] && [ -f "${KVP11_MODULE:-}" ] || skip "KVP11_P11WATCH / KVP11_MODULE not set"

E=$T/env
env -u KVP11_TOOL SOFTHSM2_MODULE="$SOFTHSM" bash "$MKENV" "$E" >"$T/mkenv.log" 2>&1 ||
  { cat "$T/mkenv.log" >&2; fail "mkenv.sh failed"; }
export SOFTHSM2_CONF=$E/softhsm2.conf
C=$E/certs
ACCOUNTS="default watch"
write_conf "[hsm test]" "module = $SOFTHSM" "token_label = kvp11-test" "pin_file = $E/hsm.pin" \
  "[hsm nomodule]" "module = $T/no-such-module.so" "token_label = kvp11-test" "pin_file = $E/hsm.pin" \
  "[account default]" "label = kvp11 default" "[account watch]" "label = kvp11 watch"

# --- the running application ---
watch_start "kvp11 default"
# handles NAME: "cert pub priv" handles of NAME as the application sees them
handles() {
  watch objects
  awk -v n="$1" '$4 == n { h[$1] = $2 } END { print h["cert"] " " h["pub"] " " h["priv"] }' "$T/watch.out"
}
id_of() { "$KVP11_TOOL" -c "$CONF" cert show "$1" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])'; }

expect_ok "add as2" cert add --name as2 --type private --cert "$C/rsa2048.pem" --hsm test --key rsa2048
expect_ok "add partner" cert add --name partner --type public --cert "$C/partner.pem"
h0=$(handles as2)
[ "$(echo "$h0" | wc -w)" -eq 3 ] || fail "the application does not see as2: $(cat "$T/watch.out")"
id0=$(id_of as2)

# --- renew: same key, new certificate; the entry and the handles stay ---
reissue "$C/rsa2048.pem" as2-renewed "$(when '-1 day')" "$(when '+400 days')"
expect_ok "renew" cert renew as2 --cert "$T/as2-renewed.pem"
grep -Eq "^renewed certificate 'as2' in account 'default': SHA256:([0-9A-F]{2}:){31}[0-9A-F]{2}, valid until .*, key hsm:test/rsa2048$" "$OUT" ||
  fail "renew message: $(cat "$OUT")"
[ "$(id_of as2)" = "$id0" ] || fail "renew changed the id"
expect_ok "show after renew" cert show as2 --json
json "'CN=as2-renewed' in j['subject'] and j['key_ref'] == 'hsm:test/rsa2048' and j['state'] == 'active'"
[ "$(handles as2)" = "$h0" ] || fail "renew changed the handles: $h0 -> $(handles as2)"
watch sign as2
grep -q '^sign CKR_OK' "$T/watch.out" || fail "sign after renew: $(cat "$T/watch.out")"
ok "renew: the running application keeps its handles ($h0) and signs"
reissue "$C/partner.pem" partner-renewed "$(when '-1 day')" "$(when '+400 days')"
expect_ok "renew a partner certificate" cert renew partner --cert "$T/partner-renewed.pem" --json
json "j['action'] == 'renewed' and j['name'] == 'partner' and len(j['sha256']) == 64"

# --- renew refusals ---
expect_fail "renew with another key" 1 \
  "p256.pem: the new certificate's public key \(sha256:[0-9a-f]{64}\) is not the key of 'as2' \(sha256:[0-9a-f]{64}\): a certificate for a new key is registered with kvp11 cert rotate" \
  cert renew as2 --cert "$C/p256.pem"
expect_fail "renew with the same certificate" 1 "is the certificate 'as2' has already" \
  cert renew as2 --cert "$T/as2-renewed.pem"
reissue "$C/rsa2048.pem" as2-expired 20240101000000Z 20240201000000Z
expect_fail "renew with an expired certificate" 1 "expired on 2024-02-01T00:00:00Z \(refused for a private certificate; --allow-expired" \
  cert renew as2 --cert "$T/as2-expired.pem"
expect_fail "renew an unknown name" 1 "account 'default' has no certificate named 'nope'" \
  cert renew nope --cert "$T/as2-renewed.pem"
expect_fail "renew without --cert" 2 "--cert is required" cert renew as2

# --- rotate: a new key; the old certificate stays, retired ---
printf 'in-flight secret' >"$T/plain"
openssl pkeyutl -encrypt -certin -inkey "$T/as2-renewed.pem" -pkeyopt rsa_padding_mode:pkcs1 \
  -in "$T/plain" -out "$T/old.bin" 2>/dev/null || fail "encrypt to the old certificate"
expect_fail "rotate to the same key" 1 "the new certificate is for the same key as 'as2': use kvp11 cert renew" \
  cert rotate as2 --cert "$T/as2-expired.pem" --hsm test --key rsa2048 --allow-expired
expect_fail "rotate with a certificate that is not the key's" 1 "is not the public key of hsm:test/rsa3072" \
  cert rotate as2 --cert "$C/p384.pem" --hsm test --key rsa3072
expect_fail "rotate a partner certificate" 1 "'partner' is a partner's \(public\) certificate: only an active private certificate is rotated" \
  cert rotate partner --cert "$C/rsa3072.pem" --hsm test --key rsa3072
expect_fail "rotate without --key" 2 "--cert, --key and exactly one of --hsm or --vault are required" \
  cert rotate as2 --cert "$C/rsa3072.pem" --hsm test
expect_ok "rotate" cert rotate as2 --cert "$C/rsa3072.pem" --hsm test --key rsa3072
RET="as2.retired-$(date -u +%Y%m%d)"
grep -q "^rotated certificate 'as2' .*key hsm:test/rsa3072; the previous certificate stays registered as '$RET' (retired: decrypts only)$" "$OUT" ||
  fail "rotate message: $(cat "$OUT")"
[ "$(id_of as2)" = "$id0" ] || fail "rotate changed the id of as2"
expect_ok "list after rotate" cert list --json
json "[(r['name'], r['state'], r['key_ref']) for r in j if r['name'].startswith('as2')] == [('as2', 'active', 'hsm:test/rsa3072'), ('$RET', 'retired', 'hsm:test/rsa2048')]"
expect_ok "list table shows the state" cert list
grep -Eq "^$RET +private +retired +CN=as2-renewed" "$OUT" || fail "list table: $(cat "$OUT")"
grep -Eq "^as2 +private +active +CN=rsa3072" "$OUT" || fail "list table: $(cat "$OUT")"
# The module's object layer shows a retired key with CKA_SIGN false and refuses
# to sign with it. A module built without that (the registry's state column is
# newer than its object layer) makes this test end as skipped, after every
# other check has run, rather than pass.
PENDING=
watch objects
grep -q "^priv [0-9]* 1 as2\$" "$T/watch.out" || fail "the active private key lacks CKA_SIGN: $(tr '\n' ';' <"$T/watch.out")"
if grep -q "^priv [0-9]* 1 $RET\$" "$T/watch.out"; then
  PENDING="the module shows the retired key $RET with CKA_SIGN true (object layer without lifecycle state)"
else
  grep -q "^priv [0-9]* 0 $RET\$" "$T/watch.out" || fail "the retired private key is not shown: $(tr '\n' ';' <"$T/watch.out")"
  watch sign "$RET"
  grep -q '^sign failed' "$T/watch.out" || fail "signing with the retired key was not refused: $(cat "$T/watch.out")"
  ok "rotate: the retired key refuses to sign ($(cat "$T/watch.out"))"
fi
watch decrypt "$RET" "$T/old.bin"
[ "$(cat "$T/watch.out")" = "decrypt CKR_OK $(xxd -p "$T/plain" | tr -d '\n')" ] ||
  fail "the retired key does not decrypt the old message: $(cat "$T/watch.out")"
ok "rotate: the retired key decrypts a message encrypted to the old certificate"
watch sign as2
grep -q '^sign CKR_OK' "$T/watch.out" || fail "as2 does not sign with its new key: $(cat "$T/watch.out")"
ok "rotate: as2 signs with the new key"
expect_fail "renew a retired certificate" 1 "'$RET' is retired: it is not renewed" cert renew "$RET" --cert "$T/as2-renewed.pem"

# --- retire ---
expect_ok "add sig" cert add --name sig --type private --cert "$C/p256.pem" --hsm test --key p256
expect_ok "retire" cert retire sig
grep -q "^retired certificate 'sig' in account 'default'" "$OUT" || fail "retire message: $(cat "$OUT")"
expect_fail "retire twice" 1 "'sig' is retired already" cert retire sig
expect_fail "retire a partner certificate" 1 "'partner' is a partner's \(public\) certificate" cert retire partner
expect_ok "show retired" cert show sig --json
json "j['state'] == 'retired'"
if [ -z "$PENDING" ]; then
  watch sign sig
  grep -q '^sign failed' "$T/watch.out" || fail "a retired EC key signed: $(cat "$T/watch.out")"
fi

# --- refusals with reasons (expect_fail checks the registry is unchanged) ---
expect_fail "same certificate under a second name" 1 \
  "this certificate \(SHA256:[0-9A-F:]{95}\) is registered in account 'default' already, as 'as2' \(--alias" \
  cert add --name as2-copy --type private --cert "$C/rsa3072.pem" --hsm test --key rsa3072
expect_ok "--alias registers it under a second name" cert add --name as2-copy --type private \
  --cert "$C/rsa3072.pem" --hsm test --key rsa3072 --alias
expect_ok "add p384" cert add --name p384 --type private --cert "$C/p384.pem" --hsm test --key p384
reissue "$C/p384.pem" p384-partner "$(when '-1 day')" "$(when '+100 days')"
expect_fail "our own key as a partner certificate" 1 \
  "p384-partner.pem: its public key is the key of our private certificate 'p384' \(hsm:test/p384\)" \
  cert add --name fake-partner --type public --cert "$T/p384-partner.pem"
expect_fail "expired private certificate (strict by default)" 1 \
  "as2-expired.pem: the certificate expired on 2024-02-01T00:00:00Z \(refused for a private certificate; --allow-expired registers it anyway\)" \
  cert add --name old --type private --cert "$T/as2-expired.pem" --hsm test --key rsa2048
expect_fail "--strict and --allow-expired" 2 "exclude each other" \
  cert add --name old --type private --cert "$T/as2-expired.pem" --hsm test --key rsa2048 --strict --allow-expired
kvp cert add --name old --type private --cert "$T/as2-expired.pem" --hsm test --key rsa2048 --allow-expired
[ "$RC" -eq 0 ] && grep -q "warning: .*expired on 2024-02-01" "$ERR" || fail "--allow-expired: $RC $(cat "$ERR")"
ok "--allow-expired registers an expired private certificate with a warning"
expect_fail "remove a private certificate without --yes" 2 \
  "'old' is a private certificate: removing it stops every application using it, and its key hsm:test/rsa2048 stays in its store" \
  cert remove old
expect_ok "remove with --yes" cert remove old --yes
grep -q "^removed certificate 'old' from account 'default'; its key hsm:test/rsa2048 stays in its store" "$OUT" ||
  fail "remove message: $(cat "$OUT")"
expect_ok "remove --json" cert remove as2-copy --yes --json
json "j == {'action': 'removed', 'name': 'as2-copy', 'account': 'default', 'key_left': 'hsm:test/rsa3072'}"
expect_ok "cert add --json" cert add --name old --type private --cert "$T/as2-renewed.pem" --hsm test --key rsa2048 --alias --json
json "j['name'] == 'old' and j['state'] == 'active' and len(j['sha256']) == 64"
expect_ok "remove old" cert remove old --yes

# --- errors that name their cause ---
# The line carries the reason the HSM backend recorded (core/status.h). A
# backend that records none yet leaves the CK_RV's name and the log's place:
# then this check is reported as pending (the test ends as skipped).
expect_fail "missing HSM module" 1 "hsm 'nomodule': " \
  cert add --name x --type private --cert "$C/rsa2048.pem" --hsm nomodule --key rsa2048
if grep -q "CKR_[A-Z_]* (details in" "$ERR"; then
  PENDING="${PENDING:+$PENDING; }the HSM backend records no reason for a missing module"
else
  grep -q "no-such-module\.so: .*No such file or directory" "$ERR" || fail "the error line does not name the cause: $(cat "$ERR")"
fi

# --- expiry watch: partner certificates expired, in 10 days, in 100 days ---
mkcert far "$(when '-1 day')" "$(when '+100 days')"
mkcert soon "$(when '-1 day')" "$(when '+10 days')"
mkcert past 20210101000000Z 20210601000000Z
expect_ok "watch: far" cert add --name far --type public --cert "$T/far.pem" --account watch
kvp check --account watch
[ "$RC" -eq 0 ] && [ ! -s "$ERR" ] || fail "check, 100 days: exit $RC $(cat "$ERR")"
grep -Eq "^watch +far +- +cert-validity +ok +valid until" "$OUT" || fail "check row: $(cat "$OUT")"
ok "check: a partner certificate valid for 100 days: exit 0"
kvp check --account watch --warn-days 200
[ "$RC" -eq 3 ] || fail "check --warn-days 200: exit $RC (want 3)"
ok "check --warn-days 200: exit 3"
expect_ok "watch: soon" cert add --name soon --type public --cert "$T/soon.pem" --account watch
kvp check --account watch
[ "$RC" -eq 3 ] || { cat "$OUT" "$ERR" >&2; fail "check, 10 days: exit $RC (want 3)"; }
grep -Eq "^watch +soon +- +cert-validity +warn +the certificate expires on .* \(in (9|10) days\)" "$OUT" || fail "check row: $(cat "$OUT")"
one_line "check warning"
ok "check: a partner certificate expiring in 10 days: exit 3"
kvp cert add --name past --type public --cert "$T/past.pem" --account watch
[ "$RC" -eq 0 ] || fail "add an expired partner certificate: exit $RC"
kvp check --account watch --json
[ "$RC" -eq 1 ] || fail "check, expired: exit $RC (want 1)"
json "sorted((r['cert'], r['result']) for r in j) == [('far', 'ok'), ('past', 'fail'), ('soon', 'warn')]"
json "all(r['account'] == 'watch' and r['check'] == 'cert-validity' for r in j)"
json "[r['detail'] for r in j if r['cert'] == 'past'] == ['the certificate expired on 2021-06-01T00:00:00Z']"
ok "check: an expired partner certificate: exit 1, --json"
kvp check --json
json "sorted(set(r['account'] for r in j)) == ['default', 'watch']"
ok "check covers every account"
expect_ok "cert list --expiring 30" cert list --account watch --expiring 30 --json
json "sorted(r['name'] for r in j) == ['past', 'soon']"
expect_ok "cert list --expiring 0" cert list --account watch --expiring 0 --json
json "[r['name'] for r in j] == ['past']"
expect_fail "bad --expiring" 2 "bad --expiring 'soon'" cert list --expiring soon

# --- a table with UTF-8 names keeps its columns ---
expect_ok "UTF-8 name" cert add --name "Müller-東京" --type public --cert "$T/far.pem" --account watch --alias
expect_ok "list with a UTF-8 name" cert list --account watch
python3 - "$OUT" <<'PY' || fail "the table is not aligned by display width: $(cat "$OUT")"
import sys, unicodedata
w = lambda s: sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in s)
lines = open(sys.argv[1], encoding="utf-8").read().splitlines()
cols = {w(l[:l.index(" public" if "public" in l else " TYPE")]) for l in lines}
sys.exit(0 if len(cols) == 1 else 1)
PY
ok "table columns aligned by display width"

# --- help ---
expect_ok "kvp11 help cert" help cert
grep -q "cert renew NAME --cert NEW.pem" "$OUT" && grep -q "cert rotate NAME" "$OUT" && ! grep -q "^usage: kvp11 \[-c FILE\] \[-v\] COMMAND" "$OUT" ||
  fail "help cert: $(cat "$OUT")"
expect_ok "cert rotate --help" cert rotate --help
grep -q "retired" "$OUT" || fail "rotate help: $(cat "$OUT")"
expect_ok "kvp11 --help lists registry" --help
grep -q "registry backup FILE" "$OUT" && grep -q "3 warnings only" "$OUT" || fail "global help: $(cat "$OUT")"
[ -z "$PENDING" ] || skip "every other check passed; not checked: $PENDING"
echo "all lifecycle tests passed"
