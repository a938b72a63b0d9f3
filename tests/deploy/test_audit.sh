#!/usr/bin/env bash
# The audit trail (issue 12 item 5): one JSON line per private-key operation,
# failed login and change of the registry or a key, through PKCS#11 and the
# tool; never a secret or message content; `kvp11 audit` reads it back; with
# audit = syslog the records go to the authpriv facility.
. "$(dirname "$0")/lib.sh"
command -v pkcs11-tool >/dev/null || skip "pkcs11-tool not found"
command -v python3 >/dev/null || skip "python3 not found"
[ -f "${KVP11_MODULE_SO:-}" ] || fail "KVP11_MODULE_SO not set"
E=$T/env
make_fixture "$E"
. "$E/env.sh"
A=$T/audit.log
sed -i "/^log_file/a audit = $A" "$E/kvp11.conf"
P11=(pkcs11-tool --module "$KVP11_MODULE_SO" --token-label "kvp11 default")
SECRET=kvp11-audit-message-content-$$
printf '%s' "$SECRET" >"$T/msg"

# the CKA_ID of a private key object by label
key_id() { "${P11[@]}" -O --type privkey 2>/dev/null | awk -v l="$1" '$1 == "label:" { f = ($2 == l) } f && $1 == "ID:" { print $2; exit }'; }
ID_P256=$(key_id p256); ID_RSA=$(key_id rsa2048)
[ -n "$ID_P256" ] && [ -n "$ID_RSA" ] || fail "no key ids from pkcs11-tool -O"
# private-key operations through PKCS#11
run "${P11[@]}" --sign --id "$ID_P256" -m ECDSA-SHA256 -i "$T/msg" -o "$T/sig"
[ "$RC" -eq 0 ] || { cat "$ERR"; fail "ECDSA sign"; }
openssl x509 -in "$E/certs/rsa2048.pem" -pubkey -noout >"$T/rsa.pub"
openssl pkeyutl -encrypt -pubin -inkey "$T/rsa.pub" -in "$T/msg" -out "$T/enc"
run "${P11[@]}" --decrypt --id "$ID_RSA" -m RSA-PKCS -i "$T/enc" -o "$T/dec"
[ "$RC" -eq 0 ] && cmp -s "$T/dec" "$T/msg" || { cat "$ERR"; fail "RSA decrypt"; }
# registry changes through the tool
"$KVP11_TOOL" cert remove partner >/dev/null || fail "cert remove"
"$KVP11_TOOL" cert add --name partner --type public --cert "$E/certs/partner.pem" >/dev/null || fail "cert add"
# and through PKCS#11
openssl x509 -in "$E/certs/partner.pem" -outform DER -out "$T/partner.der"
run "${P11[@]}" --login --pin 1234 --write-object "$T/partner.der" --type cert --label partner2
[ "$RC" -eq 0 ] || { cat "$ERR"; fail "C_CreateObject of a certificate"; }
# a failed login: an HSM that takes the application's PIN
sed -i '/^pin_file/d' "$E/kvp11.conf"
run "${P11[@]}" --login --pin 9999 --sign --id "$ID_P256" -m ECDSA-SHA256 -i "$T/msg" -o "$T/sig2"
[ "$RC" -ne 0 ] || fail "a wrong PIN was accepted"

python3 - "$A" "$SECRET" <<'PY' || fail "the audit records are not as expected"
import json, sys
path, secret = sys.argv[1], sys.argv[2]
text = open(path).read()
assert secret not in text, "message content in the audit trail"
assert "1234" not in [v for l in text.splitlines() for v in json.loads(l).values()], "the PIN"
recs = [json.loads(l) for l in text.splitlines()]
common = {"time", "event", "pid", "uid", "process"}
op_keys = common | {"account", "cert", "key", "key_version", "mechanism", "result", "latency_us", "request_id"}
chg_keys = common | {"action", "account", "cert", "key", "old_sha256", "new_sha256"}
def one(pred, what):
    got = [r for r in recs if pred(r)]
    assert got, "no record: " + what
    return got[0]
s = one(lambda r: r["event"] == "sign" and r["cert"] == "p256", "sign p256")
assert set(s) == op_keys, set(s) ^ op_keys
assert s["key"] == "hsm:test/p256" and s["mechanism"] == "CKM_ECDSA_SHA256" and s["result"] == "CKR_OK"
assert s["account"] == "default" and s["process"] == "pkcs11-tool" and s["latency_us"] > 0
d = one(lambda r: r["event"] == "decrypt" and r["cert"] == "rsa2048", "decrypt rsa2048")
assert d["mechanism"] == "CKM_RSA_PKCS" and d["result"] == "CKR_OK"
rm = one(lambda r: r.get("action") == "cert remove", "cert remove")
add = one(lambda r: r.get("action") == "cert add", "cert add")
assert set(rm) == chg_keys and rm["old_sha256"] == add["new_sha256"] and len(rm["old_sha256"]) == 64
assert rm["new_sha256"] is None and add["old_sha256"] is None and add["process"] == "kvp11"
co = one(lambda r: r.get("action") == "C_CreateObject", "C_CreateObject")
assert co["cert"] == "partner2" and co["new_sha256"] == add["new_sha256"]
lf = one(lambda r: r["event"] == "login_failure", "login failure")
assert lf["result"] == "CKR_PIN_INCORRECT" and lf["account"] == "default", lf
print("records:", len(recs))
PY
ok "sign, decrypt, cert add/remove, C_CreateObject and a failed login are audited; no secret"

# kvp11 audit reads it back
run "$KVP11_TOOL" audit --cert p256 --json
[ "$RC" -eq 0 ] && [ "$(wc -l <"$OUT")" -ge 1 ] && ! grep -qv '"cert":"p256"' "$OUT" ||
  { cat "$OUT" "$ERR"; fail "kvp11 audit --cert p256 --json"; }
run "$KVP11_TOOL" audit
grep -q " sign .*cert=p256 key=hsm:test/p256 CKM_ECDSA_SHA256 CKR_OK" "$OUT" &&
  grep -q "change .* cert remove account=default cert=partner" "$OUT" ||
  { cat "$OUT" "$ERR"; fail "kvp11 audit text output"; }
run "$KVP11_TOOL" audit --since 2999-01-01
[ "$RC" -eq 0 ] && [ ! -s "$OUT" ] || fail "--since in the future shows records"
run "$KVP11_TOOL" audit --since 1h
[ "$(wc -l <"$OUT")" -eq "$(wc -l <"$A")" ] || fail "--since 1h does not show every record"
EXIT_CODE=2 expect_refused "bad --since" "--since 'yesterday': expected a date" "$KVP11_TOOL" audit --since yesterday
sed -i "s|^audit = .*|audit = syslog|" "$E/kvp11.conf"
expect_refused "audit from syslog" "[global] audit is syslog, not a file" "$KVP11_TOOL" audit
ok "kvp11 audit --cert, --since, --json, text"
echo PASS
