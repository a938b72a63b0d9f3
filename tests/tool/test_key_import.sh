#!/usr/bin/env bash
# kvp11 key import on an own SoftHSM2 token and, when the kv tests' emulator
# runs, on Key Vault (tests/tool/keylib.sh): RSA and EC PKCS#12 files made by
# `openssl pkcs12 -export` and a PEM key + certificate are imported, registered
# and then sign through libkvp11.so (kvp11 smime sign, verified by openssl cms);
# a wrong password, a file that is no PKCS#12, a certificate of another key and
# unsupported keys (RSA-1024, Ed25519, secp256k1) are refused with the registry
# and the store unchanged; an emulator fault during the import leaves no row
# and no key; a registration that fails after the import deletes the key again.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/keylib.sh"
[ -n "${KVP11_MODULE:-}" ] && [ -f "$KVP11_MODULE" ] || fail "KVP11_MODULE is not set to the built libkvp11.so"
ENGDIR=$(openssl version -e | sed -n 's/^ENGINESDIR: "\(.*\)"$/\1/p')
[ -f "$ENGDIR/pkcs11.so" ] || skip "OpenSSL pkcs11 engine not found (libengine-pkcs11-openssl)"

# --- key material: PFX files with a password, a PEM key encrypted with it ---
umask 077
PASS='imp0rt-Pa55 word'
printf '%s\n' "$PASS" >"$T/pass"
# mkpfx NAME ALG-ARGS...: $T/NAME.key, .pem (self-signed), .pfx (password $PASS)
mkpfx() {
  local n=$1; shift
  openssl genpkey "$@" -out "$T/$n.key" 2>/dev/null || fail "mkpfx $n: key"
  openssl req -new -x509 -key "$T/$n.key" -subj "/CN=import $n/O=kvp11 key test" -days 30 \
    -addext "keyUsage=critical,digitalSignature,keyEncipherment" -addext "extendedKeyUsage=emailProtection" \
    -out "$T/$n.pem" 2>/dev/null || fail "mkpfx $n: certificate"
  openssl pkcs12 -export -inkey "$T/$n.key" -in "$T/$n.pem" -passout "file:$T/pass" -out "$T/$n.pfx" \
    2>/dev/null || fail "mkpfx $n: pkcs12"
}
mkpfx rsa -algorithm RSA -pkeyopt rsa_keygen_bits:2048
mkpfx ec -algorithm EC -pkeyopt ec_paramgen_curve:P-384
mkpfx pem -algorithm EC -pkeyopt ec_paramgen_curve:P-256
mkpfx reg -algorithm RSA -pkeyopt rsa_keygen_bits:2048
mkpfx fault -algorithm RSA -pkeyopt rsa_keygen_bits:2048
mkcert oldk 20200101000000Z 20200201000000Z
openssl pkcs12 -export -inkey "$T/oldk.key" -in "$T/oldk.pem" -passout "file:$T/pass" -out "$T/oldk.pfx" \
  2>/dev/null || fail "pkcs12 of an expired certificate"
mkpfx left -algorithm RSA -pkeyopt rsa_keygen_bits:2048
mkpfx rsa1024 -algorithm RSA -pkeyopt rsa_keygen_bits:1024
mkpfx ed -algorithm ED25519
mkpfx k1 -algorithm EC -pkeyopt ec_paramgen_curve:secp256k1
openssl pkey -in "$T/pem.key" -aes256 -passout "file:$T/pass" -out "$T/pem.enc.key" 2>/dev/null || fail "encrypted PEM"
openssl pkcs12 -export -nokeys -in "$T/rsa.pem" -passout "file:$T/pass" -out "$T/nokey.pfx" 2>/dev/null ||
  fail "pkcs12 without key"
umask 022
printf 'Subject: import test\n\nsigned by an imported key\n' >"$T/msg.txt"

# signs STORE-TAG NAME CERT: kvp11 smime sign through libkvp11.so, openssl verifies.
signs() {
  expect_ok "$1 sign with $2" smime sign --cert "$2" --account default --module "$KVP11_MODULE" <"$T/msg.txt"
  openssl cms -verify -CAfile "$3" -purpose any -in "$OUT" -out "$T/v.out" 2>"$T/ossl.err" ||
    { cat "$T/ossl.err" >&2; fail "$1: openssl cannot verify the signature of $2"; }
  ok "$1: openssl verifies the signature of the imported key $2"
}
# absent STORE-OPTS KEY: the store has no such key.
absent() {
  # shellcheck disable=SC2086
  expect_fail "$1 no key $2" 1 "has no key '$2'" key show $1 --key "$2"
}

TESTED=0
for S in "${STORES[@]}"; do
  supported "$S" || continue
  TESTED=$((TESTED + 1))
  is_kv=0; case "$S" in --vault*) is_kv=1 ;; esac
  tag=${S:2:1}
  # shellcheck disable=SC2086
  set -- $S

  # --- imports that work ---
  expect_ok "$S import RSA PFX" key import "$@" --key "irsa$R$tag" --pfx "$T/rsa.pfx" --pass-file "$T/pass"
  grep -qx "imported key $(ref_of "$S" "irsa$R$tag")" "$OUT" && grep -qx 'type: RSA 2048' "$OUT" ||
    fail "import message: $(cat "$OUT")"
  expect_ok "$S registered" cert show "irsa$R$tag" --json
  json "j['type'] == 'private' and j['key_ref'] == '$(ref_of "$S" "irsa$R$tag")' and 'CN=import rsa' in j['subject']"
  expect_ok "$S registered certificate" cert show "irsa$R$tag" --pem
  cmp -s <(der_of "$OUT") <(der_of "$T/rsa.pem") || fail "$S: the registered certificate is not the PFX's"
  expect_ok "$S key show" key show "$@" --key "irsa$R$tag" --json
  json "j['certificates'] == ['default/irsa$R$tag'] and j['size'] == 2048"
  signs "$S" "irsa$R$tag" "$T/rsa.pem"

  KVP11_PFX_PASS=$PASS expect_ok "$S import EC PFX (password from KVP11_PFX_PASS)" \
    key import "$@" --key "iec$R$tag" --pfx "$T/ec.pfx" --name "ec cert $R$tag"
  grep -qx 'type: EC P-384' "$OUT" || fail "import EC: $(cat "$OUT")"
  expect_ok "$S EC registered" cert list --json
  json "[r['key_ref'] for r in j if r['name'] == 'ec cert $R$tag'] == ['$(ref_of "$S" "iec$R$tag")']"
  signs "$S" "ec cert $R$tag" "$T/ec.pem"

  expect_ok "$S import encrypted PEM key + certificate" \
    key import "$@" --key "ipem$R$tag" --key-file "$T/pem.enc.key" --cert "$T/pem.pem" --pass-file "$T/pass"
  signs "$S" "ipem$R$tag" "$T/pem.pem"

  # --- refused before the store is touched: registry and store unchanged ---
  [ "$is_kv" = 1 ] && n0=$(emu_count import)
  expect_fail "$S wrong password" 1 "rsa.pfx: wrong password, or not a PKCS#12 file" \
    key import "$@" --key "ibad$R$tag" --pfx "$T/rsa.pfx"
  KVP11_PFX_PASS=nope expect_fail "$S wrong password (env)" 1 "wrong password, or not a PKCS#12 file" \
    key import "$@" --key "ibad$R$tag" --pfx "$T/rsa.pfx"
  expect_fail "$S not a PKCS#12 file" 1 "rsa.pem: wrong password, or not a PKCS#12 file" \
    key import "$@" --key "ibad$R$tag" --pfx "$T/rsa.pem" --pass-file "$T/pass"
  expect_fail "$S PFX without a key" 1 "nokey.pfx: the PKCS#12 file holds no private key" \
    key import "$@" --key "ibad$R$tag" --pfx "$T/nokey.pfx" --pass-file "$T/pass"
  expect_fail "$S PEM key of another certificate" 1 "rsa.pem: the certificate's public key \(sha256:[0-9a-f]{64}\) is not the private key's" \
    key import "$@" --key "ibad$R$tag" --key-file "$T/pem.enc.key" --cert "$T/rsa.pem" --pass-file "$T/pass"
  expect_fail "$S encrypted PEM, wrong password" 1 "pem.enc.key: not a PEM private key, or a wrong password" \
    key import "$@" --key "ibad$R$tag" --key-file "$T/pem.enc.key" --cert "$T/pem.pem"
  expect_fail "$S RSA-1024" 1 "rsa1024.pfx: the private key is RSA 1024: only RSA keys of 2048, 3072 or 4096 bits" \
    key import "$@" --key "ibad$R$tag" --pfx "$T/rsa1024.pfx" --pass-file "$T/pass"
  expect_fail "$S Ed25519" 1 "ed.pfx: the private key is ED25519: only RSA \(2048, 3072, 4096 bits\) and EC \(P-256, P-384, P-521\)" \
    key import "$@" --key "ibad$R$tag" --pfx "$T/ed.pfx" --pass-file "$T/pass"
  expect_fail "$S secp256k1" 1 "k1.pfx: the private key is on curve P-256K: only P-256, P-384 and P-521" \
    key import "$@" --key "ibad$R$tag" --pfx "$T/k1.pfx" --pass-file "$T/pass"
  chmod 644 "$T/pass"
  expect_fail "$S password file readable by others" 1 "pass" \
    key import "$@" --key "ibad$R$tag" --pfx "$T/rsa.pfx" --pass-file "$T/pass"
  chmod 600 "$T/pass"
  expect_fail "$S registry name taken" 1 "account 'default' has a certificate named 'irsa$R$tag' already" \
    key import "$@" --key "ibad$R$tag" --name "irsa$R$tag" --pfx "$T/rsa.pfx" --pass-file "$T/pass"
  absent "$S" "ibad$R$tag"
  [ "$is_kv" = 1 ] && { [ "$(emu_count import)" = "$n0" ] || fail "$S: an import request reached the vault"; }
  expect_fail "$S existing key name" 1 "has a key named 'iec$R$tag' already \(it is not replaced\)" \
    key import "$@" --key "iec$R$tag" --name "other $R$tag" --pfx "$T/rsa.pfx" --pass-file "$T/pass"
  expect_ok "$S existing key unchanged" key show "$@" --key "iec$R$tag" --json
  json "j['type'] == 'ec' and j['curve'] == 'P-384'"
  [ "$is_kv" = 1 ] && { [ "$(emu_count import)" = "$n0" ] || fail "$S: an import request reached the vault"; }

  # --- an expired certificate: a private certificate is refused unless --allow-expired ---
  expect_fail "$S expired certificate" 1 "oldk.pfx: the certificate expired on 2020-02-01T00:00:00Z \(refused for a private certificate; --allow-expired imports it anyway\)" \
    key import "$@" --key "iold$R$tag" --pfx "$T/oldk.pfx" --pass-file "$T/pass"
  absent "$S" "iold$R$tag"

  # --- the same key imported a second time, under another name: refused, naming the key ---
  expect_fail "$S same PFX imported twice" 1 \
    "this key \(sha256:[0-9a-f]{64}\) is in (hsm|vault) '[^']+' already, as key 'irsa$R$tag'" \
    key import "$@" --key "iagain$R$tag" --name "again$R$tag" --pfx "$T/rsa.pfx" --pass-file "$T/pass"
  absent "$S" "iagain$R$tag"

  # --- the registration fails after the import: the key is deleted again ---
  python3 - "$T/registry.db" "regfail$R$tag" <<'PY' || fail "registry trigger"
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.execute("CREATE TRIGGER kvp11_test_fail BEFORE INSERT ON certs WHEN NEW.name = '%s' "
           "BEGIN SELECT RAISE(ABORT, 'injected by test_key_import'); END" % sys.argv[2])
db.commit()
PY
  expect_fail "$S registration fails after the import" 1 \
    "registering 'regfail$R$tag' failed: .*injected by test_key_import.*; the new key $(ref_of "$S" "ireg$R$tag") was deleted again" \
    key import "$@" --key "ireg$R$tag" --name "regfail$R$tag" --pfx "$T/reg.pfx" --pass-file "$T/pass"
  absent "$S" "ireg$R$tag"
  python3 -c "import sqlite3,sys; d=sqlite3.connect(sys.argv[1]); d.execute('DROP TRIGGER kvp11_test_fail'); d.commit()" \
    "$T/registry.db" || fail "drop trigger"

  # --- delete: refused while registered, then works ---
  expect_fail "$S delete imported key while registered" 1 "default/ipem$R$tag" key delete "$@" --key "ipem$R$tag" --yes
  expect_ok "$S cert remove" cert remove "ipem$R$tag" --yes
  expect_ok "$S delete imported key" key delete "$@" --key "ipem$R$tag" --yes
  absent "$S" "ipem$R$tag"
done

# --- Key Vault: the emulator fails every import request ---
if [ "$HAVE_KV" = 1 ] && supported "--vault emu0"; then
  emu_post /_emu/faults '{"faults":[{"endpoint":"import","action":"status","status":500,"times":-1}]}' >/dev/null ||
    fail "emulator: set the import fault"
  n0=$(emu_count import)
  expect_fail "import during an emulator fault" 1 "vault 'emu0': importing the key failed" \
    key import --vault emu0 --key "ifault$R" --pfx "$T/fault.pfx" --pass-file "$T/pass"
  [ "$(emu_count import)" -gt "$n0" ] || fail "the import request did not reach the emulator"
  emu_delete /_emu/faults >/dev/null || fail "emulator: clear the faults"
  expect_ok "no row after the fault" cert list --json
  json "'ifault$R' not in [r['name'] for r in j]"
  absent "--vault emu" "ifault$R"
  expect_ok "import works again" key import --vault emu --key "ifault$R" --pfx "$T/fault.pfx" --pass-file "$T/pass"

  # the registration fails and so does the delete that would undo the import: the one
  # error line names the key left behind and the command that removes it
  python3 - "$T/registry.db" "regfail$R" <<'PY' || fail "registry trigger"
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.execute("CREATE TRIGGER kvp11_test_fail BEFORE INSERT ON certs WHEN NEW.name = '%s' "
           "BEGIN SELECT RAISE(ABORT, 'injected by test_key_import'); END" % sys.argv[2])
db.commit()
PY
  emu_post /_emu/faults '{"faults":[{"endpoint":"delete","action":"status","status":500,"times":-1}]}' >/dev/null ||
    fail "emulator: set the delete fault"
  expect_fail "registration and undo both fail" 1 \
    "registering 'regfail$R' failed: .*; the new key keyvault:emu0/ileft$R could not be deleted \(.+\) and is left behind: remove it with 'kvp11 key delete --vault emu0 --key ileft$R --yes'" \
    key import --vault emu0 --key "ileft$R" --name "regfail$R" --pfx "$T/left.pfx" --pass-file "$T/pass"
  emu_delete /_emu/faults >/dev/null || fail "emulator: clear the faults"
  expect_ok "the key left behind is there" key show --vault emu0 --key "ileft$R" --json
  json "j['certificates'] == []"
  expect_ok "the named command removes it" key delete --vault emu0 --key "ileft$R" --yes
  absent "--vault emu0" "ileft$R"
fi
[ "$TESTED" -gt 0 ] || skip "no key store supports importing yet"
echo "all key import tests passed ($TESTED key stores)"
