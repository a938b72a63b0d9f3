#!/usr/bin/env bash
# kvp11 csr and kvp11 cert selfsign on the SoftHSM2 fixture (tests/fixtures/
# mkenv.sh) and, when it runs, the Key Vault emulator of the kv tests: the
# request / certificate is signed in the key store through the backend
# interface and checked with openssl (signature, subject, SANs, public key =
# the key's, RSASSA-PSS), a self-signed certificate is registered with cert add
# and then shown by the built libkvp11.so ($KVP11_MODULE), keys named by
# --hsm/--vault without a registry entry are signed without any registry
# change, a store that signs with another key is caught; then every error.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/smime_env.sh"

# csr and cert selfsign open the registry read-only: its files must stay as
# they are, byte for byte (cheaper than lib.sh's snapshot through the tool).
snapshot() {
  local db
  db=$(sed -n 's/^registry = //p' "$CONF")
  cat "$db" "$db-wal" 2>/dev/null | sha256sum
}
# The temporary registries go here, so that the test sees what is left behind.
export TMPDIR=$T/tmp
mkdir -p "$TMPDIR"

SUBJ='/CN=as2.example.com/O=Example\/Partner Ltd/C=DE'
SUBJ_TEXT='CN = as2.example.com, O = Example/Partner Ltd, C = DE'
SAN='DNS:a.example,DNS:b.example,email:x@example.com,IP:127.0.0.1'
SAN_TEXT='DNS:a.example, DNS:b.example, email:x@example.com, IP Address:127.0.0.1'

# spki_of KIND FILE: SHA-256 of the SubjectPublicKeyInfo (KIND x509, req or pub).
spki_of() {
  case $1 in
    x509) openssl x509 -in "$2" -noout -pubkey ;;
    req) openssl req -in "$2" -noout -pubkey ;;
    pub) openssl pkey -pubin -in "$2" ;;
  esac | openssl pkey -pubin -outform DER | sha256sum | cut -d' ' -f1
}

# key_spki KIND FILE: spki_of, remembered per file (the keys' files do not change).
declare -A SPKI_MEMO
key_spki() {
  [ -n "${SPKI_MEMO[$2]:-}" ] || SPKI_MEMO[$2]=$(spki_of "$1" "$2")
  echo "${SPKI_MEMO[$2]}"
}

# check_req FILE KEYFILE KEYKIND SIGALG WHAT: a request that verifies, with our
# subject and SANs, the key's public key, and signature algorithm SIGALG.
check_req() {
  local f=$1 kf=$2 kk=$3 alg=$4 what=$5
  openssl req -verify -text -noout -in "$f" >"$T/req.txt" 2>"$T/ossl.err" ||
    { cat "$T/ossl.err" >&2; fail "$what: openssl req -verify"; }
  grep -q 'verify OK' "$T/ossl.err" || { cat "$T/ossl.err" >&2; fail "$what: openssl req -verify said no OK"; }
  grep -q "Subject: $SUBJ_TEXT\$" "$T/req.txt" || { cat "$T/req.txt" >&2; fail "$what: subject"; }
  grep -q "^ *$SAN_TEXT\$" "$T/req.txt" || { cat "$T/req.txt" >&2; fail "$what: SANs"; }
  grep -q "Signature Algorithm: $alg" "$T/req.txt" ||
    { grep 'Signature Algorithm' "$T/req.txt" >&2; fail "$what: signature algorithm is not $alg"; }
  [ "$(spki_of req "$f")" = "$(key_spki "$kk" "$kf")" ] || fail "$what: not the key's public key"
  ok "$what: openssl verifies it; subject, SANs, public key and $alg as asked"
}

# check_cert FILE KEYFILE KEYKIND KU WHAT: a self-signed certificate.
check_cert() {
  local f=$1 kf=$2 kk=$3 ku=$4 what=$5
  openssl verify -CAfile "$f" "$f" >"$T/ossl.out" 2>&1 || { cat "$T/ossl.out" >&2; fail "$what: openssl verify"; }
  openssl x509 -text -noout -in "$f" >"$T/cert.txt" || fail "$what: openssl x509 -text"
  grep -q "Subject: $SUBJ_TEXT\$" "$T/cert.txt" || { cat "$T/cert.txt" >&2; fail "$what: subject"; }
  grep -q "Issuer: $SUBJ_TEXT\$" "$T/cert.txt" || fail "$what: issuer"
  grep -q "^ *$SAN_TEXT\$" "$T/cert.txt" || fail "$what: SANs"
  grep -q 'Version: 3 (0x2)' "$T/cert.txt" || fail "$what: not v3"
  grep -A1 'Basic Constraints: critical' "$T/cert.txt" | grep -q 'CA:FALSE' || fail "$what: basicConstraints"
  grep -A1 'Key Usage: critical' "$T/cert.txt" | grep -q "^ *$ku\$" ||
    { grep -A1 'Key Usage' "$T/cert.txt" >&2; fail "$what: keyUsage is not '$ku'"; }
  grep -q 'X509v3 Subject Key Identifier' "$T/cert.txt" || fail "$what: no subjectKeyIdentifier"
  local serial
  serial=$(openssl x509 -in "$f" -noout -serial | cut -d= -f2)
  [ ${#serial} -eq 32 ] || fail "$what: serial $serial is not 16 bytes"
  [ "$(spki_of x509 "$f")" = "$(key_spki "$kk" "$kf")" ] || fail "$what: not the key's public key"
  ok "$what: a valid self-signed v3 certificate of the key"
}

# no_temp WHAT: no temporary registry left behind.
no_temp() {
  [ -z "$(ls -A "$TMPDIR")" ] || { ls -la "$TMPDIR" >&2; fail "$1: left $(ls "$TMPDIR") in \$TMPDIR"; }
}

# --- csr on the HSM, keys named by their registry entry ---
expect_ok "csr rsa2048" csr --cert-name rsa2048 --subject "$SUBJ" --san "$SAN"
cp "$OUT" "$T/rsa2048.csr"
check_req "$T/rsa2048.csr" "$C/rsa2048.pem" x509 sha256WithRSAEncryption "csr rsa2048"
expect_ok "csr p256" csr --cert-name p256 --subject "$SUBJ" --san "$SAN"
cp "$OUT" "$T/p256.csr"
check_req "$T/p256.csr" "$C/p256.pem" x509 ecdsa-with-SHA256 "csr p256"
expect_ok "csr p384 sha384" csr --cert-name p384 --subject "$SUBJ" --san "$SAN" --digest sha384
cp "$OUT" "$T/p384.csr"
check_req "$T/p384.csr" "$C/p384.pem" x509 ecdsa-with-SHA384 "csr p384 --digest sha384"
expect_ok "csr rsa3072 --pss" csr --cert-name rsa3072 --subject "$SUBJ" --san "$SAN" --pss
cp "$OUT" "$T/pss.csr"
check_req "$T/pss.csr" "$C/rsa3072.pem" x509 rsassaPss "csr --pss"
grep -A6 'Signature Algorithm: rsassaPss' "$T/req.txt" | grep -q 'Hash Algorithm: sha256' ||
  fail "--pss: not PSS with SHA-256"
expect_ok "csr rsa2048 --pss --digest sha512" csr --cert-name rsa2048 --subject "$SUBJ" --san "$SAN" \
  --pss --digest sha512
cp "$OUT" "$T/pss512.csr"
check_req "$T/pss512.csr" "$C/rsa2048.pem" x509 rsassaPss "csr --pss --digest sha512"
grep -A6 'Signature Algorithm: rsassaPss' "$T/req.txt" | grep -q 'Hash Algorithm: sha512' ||
  fail "--pss --digest sha512: not PSS with SHA-512"
# without SANs: no extension request at all
expect_ok "csr --json" csr --cert-name rsa2048 --subject "$SUBJ" --json
json "j['type'] == 'request' and j['key'] == \"certificate 'rsa2048'\" and j['key_ref'] == 'hsm:test/rsa2048' and j['signature'] == 'sha256WithRSAEncryption' and j['pem'].startswith('-----BEGIN CERTIFICATE REQUEST-----') and j['spki'].startswith('sha256:')"
expect_ok "selfsign --json --out" cert selfsign --cert-name p256 --subject "$SUBJ" --json --out "$T/json-self.pem"
json "j['type'] == 'certificate' and j['signature'] == 'ecdsa-with-SHA256'"
openssl x509 -in "$T/json-self.pem" -noout || fail "selfsign --json --out: no certificate in the file"
expect_ok "csr without --san" csr --cert-name rsa2048 --subject "/CN=plain"
openssl req -verify -noout -in "$OUT" 2>/dev/null || fail "csr without --san: does not verify"
openssl req -text -noout -in "$OUT" | grep -q 'Subject Alternative Name' && fail "csr without --san: has SANs"
ok "csr without --san has no subjectAltName"
# --hsm --key of a registered key uses its registry entry
expect_ok "csr --hsm test --key p256" csr --hsm test --key p256 --subject "$SUBJ" --san "$SAN" --out "$T/hsm-p256.csr"
[ ! -s "$OUT" ] || fail "--out: stdout is not empty"
check_req "$T/hsm-p256.csr" "$C/p256.pem" x509 ecdsa-with-SHA256 "csr --hsm test --key p256 --out"
no_temp "csr --hsm of a registered key"

# --- cert selfsign ---
expect_ok "selfsign rsa2048" cert selfsign --cert-name rsa2048 --subject "$SUBJ" --san "$SAN"
cp "$OUT" "$T/self-rsa.pem"
check_cert "$T/self-rsa.pem" "$C/rsa2048.pem" x509 'Digital Signature, Key Encipherment' "selfsign rsa2048"
expect_ok "selfsign p256 --days 30" cert selfsign --cert-name p256 --subject "$SUBJ" --san "$SAN" --days 30
cp "$OUT" "$T/self-p256.pem"
check_cert "$T/self-p256.pem" "$C/p256.pem" x509 'Digital Signature' "selfsign p256"
openssl x509 -in "$T/self-p256.pem" -noout -checkend $((29 * 86400)) >/dev/null || fail "--days 30: expires too soon"
openssl x509 -in "$T/self-p256.pem" -noout -checkend $((31 * 86400)) >/dev/null && fail "--days 30: valid too long"
ok "selfsign --days 30: valid for 30 days"
openssl x509 -in "$T/self-rsa.pem" -noout -checkend $((364 * 86400)) >/dev/null || fail "default days: expires too soon"
openssl x509 -in "$T/self-rsa.pem" -noout -checkend $((366 * 86400)) >/dev/null && fail "default days: valid too long"
ok "selfsign: 365 days by default"
expect_ok "selfsign rsa3072 --pss" cert selfsign --cert-name rsa3072 --subject "$SUBJ" --san "$SAN" --pss
cp "$OUT" "$T/self-pss.pem"
check_cert "$T/self-pss.pem" "$C/rsa3072.pem" x509 'Digital Signature, Key Encipherment' "selfsign --pss"
openssl x509 -text -noout -in "$T/self-pss.pem" | grep -q 'Signature Algorithm: rsassaPss' || fail "selfsign --pss: not PSS"
# two certificates never share a serial
s1=$(openssl x509 -in "$T/self-rsa.pem" -noout -serial)
expect_ok "selfsign again" cert selfsign --cert-name rsa2048 --subject "$SUBJ"
[ "$(openssl x509 -in "$OUT" -noout -serial)" != "$s1" ] || fail "selfsign: the same serial twice"
ok "selfsign: random serials"

# cert add accepts the self-signed certificate for the key; the module shows it
expect_ok "cert add selfsigned rsa2048" cert add --name self-rsa --type private --cert "$T/self-rsa.pem" \
  --hsm test --key rsa2048
expect_ok "cert add selfsigned p256" cert add --name self-p256 --type private --cert "$T/self-p256.pem" \
  --hsm test --key p256
KVP11_CONF=$CONF pkcs11-tool --module "$KVP11_MODULE" --list-objects --type cert >"$T/objects.txt" 2>&1 ||
  { cat "$T/objects.txt" >&2; fail "pkcs11-tool --list-objects through the module"; }
for n in self-rsa self-p256; do
  grep -q "label: *$n\$" "$T/objects.txt" || { cat "$T/objects.txt" >&2; fail "the module does not show $n"; }
done
ok "the module shows the registered self-signed certificates"
expect_ok "smime sign with the self-signed certificate" smime sign --cert self-rsa </dev/null
openssl cms -verify -CAfile "$T/self-rsa.pem" -purpose any -in "$OUT" -out /dev/null 2>"$T/ossl.err" ||
  { cat "$T/ossl.err" >&2; fail "openssl verifies a signature of self-rsa"; }
ok "a signature with the self-signed certificate verifies"

# --- a key-only registry entry (kvp11 key create): request, certificate, cert add ---
expect_ok "key create made" key create --hsm test --key made --type rsa --size 2048
pkcs11-tool --module "$SOFTHSM" --token-label kvp11-test --read-object --type pubkey --label made \
  -o "$T/made.der" >"$T/p11.log" 2>&1 || { cat "$T/p11.log" >&2; fail "read the public key of made"; }
openssl pkey -pubin -inform DER -in "$T/made.der" -out "$T/made.pub" || fail "made public key"
expect_ok "csr of a key-only entry" csr --cert-name made --subject "$SUBJ" --san "$SAN"
cp "$OUT" "$T/made.csr"
check_req "$T/made.csr" "$T/made.pub" pub sha256WithRSAEncryption "csr --cert-name of a key-only entry"
expect_ok "selfsign of a key-only entry" cert selfsign --cert-name made --subject "$SUBJ" --san "$SAN" \
  --out "$T/made.pem"
check_cert "$T/made.pem" "$T/made.pub" pub 'Digital Signature, Key Encipherment' "selfsign of a key-only entry"
expect_ok "cert add the certificate of the key-only entry" cert add --name made --type private \
  --cert "$T/made.pem"
expect_ok "csr of made, now a certificate" csr --cert-name made --subject "$SUBJ" --san "$SAN"
check_req "$OUT" "$T/made.pub" pub sha256WithRSAEncryption "csr of made with its certificate"

# --- a key in the HSM with no registry entry: signed in the store, nothing registered ---
pkcs11-tool --module "$SOFTHSM" --token-label kvp11-test --login --pin 1234 --keypairgen \
  --key-type EC:prime256v1 --label fresh --id 0f --sensitive --usage-sign >"$T/p11.log" 2>&1 ||
  { cat "$T/p11.log" >&2; fail "pkcs11-tool --keypairgen fresh"; }
pkcs11-tool --module "$SOFTHSM" --token-label kvp11-test --read-object --type pubkey --label fresh \
  -o "$T/fresh.der" >"$T/p11.log" 2>&1 || { cat "$T/p11.log" >&2; fail "read the public key of fresh"; }
openssl pkey -pubin -inform DER -in "$T/fresh.der" -out "$T/fresh.pub" || fail "fresh public key"
before=$(snapshot)
expect_ok "csr --hsm test --key fresh (not registered)" csr --hsm test --key fresh \
  --subject "$SUBJ" --san "$SAN"
cp "$OUT" "$T/fresh.csr"
check_req "$T/fresh.csr" "$T/fresh.pub" pub ecdsa-with-SHA256 "csr of an unregistered HSM key"
no_temp "csr --hsm test --key fresh"
expect_ok "selfsign --hsm test --key fresh" cert selfsign --hsm test --key fresh --subject "$SUBJ" --san "$SAN"
cp "$OUT" "$T/fresh.pem"
check_cert "$T/fresh.pem" "$T/fresh.pub" pub 'Digital Signature' "selfsign of an unregistered HSM key"
no_temp "selfsign --hsm test --key fresh"
[ "$before" = "$(snapshot)" ] || fail "a csr of an unregistered key changed the registry"
ok "the registry did not change (the key store signs directly: nothing is registered, even for a while)"
expect_ok "cert add the fresh certificate" cert add --name fresh --type private --cert "$T/fresh.pem" \
  --hsm test --key fresh

# --- errors: one line, exit 1 (nothing written) ---
expect_fail "unknown certificate" 1 "account 'default' has no certificate named 'nobody'" \
  csr --cert-name nobody --subject "/CN=x"
expect_fail "partner certificate" 1 "'partner' is a partner's certificate: it has no key" \
  csr --cert-name partner --subject "/CN=x"
expect_fail "selfsign: partner certificate" 1 "'partner' is a partner's certificate: it has no key" \
  cert selfsign --cert-name partner --subject "/CN=x"
expect_fail "bad subject type" 1 "bad --subject: unknown attribute type 'XX' in 'XX=foo'" \
  csr --cert-name rsa2048 --subject "/XX=foo"
expect_fail "subject without /" 1 "bad --subject 'CN=x': it must start with '/'" \
  csr --cert-name rsa2048 --subject "CN=x"
expect_fail "subject part without =" 1 "bad --subject: 'O' is not TYPE=value" \
  csr --cert-name rsa2048 --subject "/CN=x/O"
expect_fail "subject empty value" 1 "bad --subject: 'O=' has an empty value" \
  csr --cert-name rsa2048 --subject "/CN=x/O="
expect_fail "subject empty part" 1 "bad --subject '/CN=x//O=y': empty part" \
  csr --cert-name rsa2048 --subject "/CN=x//O=y"
expect_fail "subject bad country" 1 "bad --subject: 'C=DEU' is not a valid C" \
  csr --cert-name rsa2048 --subject "/CN=x/C=DEU"
expect_fail "bad SAN type" 1 "bad --san entry 'FOO:bar': unknown type 'FOO'" \
  csr --cert-name rsa2048 --subject "/CN=x" --san DNS:a.example,FOO:bar
expect_fail "bad SAN IP" 1 "bad --san entry 'IP:300.1.2.3': '300.1.2.3' is not an IP address" \
  csr --cert-name rsa2048 --subject "/CN=x" --san IP:300.1.2.3
expect_fail "bad SAN DNS" 1 "bad --san entry 'DNS:a b.example': 'a b.example' is not a DNS name" \
  csr --cert-name rsa2048 --subject "/CN=x" --san "DNS:a b.example"
expect_fail "bad SAN email" 1 "bad --san entry 'email:nobody': 'nobody' is not an email address" \
  cert selfsign --cert-name rsa2048 --subject "/CN=x" --san email:nobody
expect_fail "SAN without type" 1 "bad --san entry 'a.example': TYPE:value" \
  csr --cert-name rsa2048 --subject "/CN=x" --san a.example
expect_fail "SAN empty entry" 1 "bad --san 'DNS:a.example,': an empty entry" \
  csr --cert-name rsa2048 --subject "/CN=x" --san DNS:a.example,
expect_fail "unknown vault" 1 "vault 'nope' is not configured in $CONF" \
  csr --vault nope --key k --subject "/CN=x"
expect_fail "unknown hsm" 1 "hsm 'nope' is not configured in $CONF" \
  cert selfsign --hsm nope --key k --subject "/CN=x"
expect_fail "unknown HSM key" 1 "hsm 'test' has no key 'nokey'" \
  csr --hsm test --key nokey --subject "/CN=x"
no_temp "unknown HSM key"
expect_fail "--pss with an EC key" 1 "--pss: certificate 'p256' is not an RSA key" \
  csr --cert-name p256 --subject "/CN=x" --pss
expect_fail "unknown account" 1 "account 'nope' is not configured" \
  csr --cert-name rsa2048 --subject "/CN=x" --account nope
expect_ok "--module is accepted and not needed" csr --cert-name rsa2048 --subject "/CN=x" --module "$T/none.so"
expect_fail "--out in a missing directory" 1 "cannot create $T/no/dir.pem" \
  csr --cert-name p256 --subject "/CN=x" --out "$T/no/dir.pem"

# A key store that signs with another key than the registry names is caught:
# the entry rsa3072 of account other holds rsa2048's certificate, and its key
# reference is then pointed at the rsa3072 key behind the tool's back.
cp "$CONF" "$T/other.conf"
printf '\n[account other]\nlabel = other\n' >>"$T/other.conf"
SAVED_CONF=$CONF
CONF=$T/other.conf
expect_ok "register rsa2048's certificate as 'rsa3072' in account other" cert add --account other \
  --name rsa3072 --type private --cert "$C/rsa2048.pem" --hsm test --key rsa2048
python3 -c "import sqlite3,sys; d=sqlite3.connect(sys.argv[1]); d.execute(\"UPDATE certs SET key_ref = 'hsm:test/rsa3072' WHERE account = 'other' AND name = 'rsa3072'\"); d.commit()" \
  "$E/registry.db" || fail "registry change"
expect_fail "a signature by another key" 1 \
  "the signature made in the key store does not verify with the public key of certificate 'rsa3072': refused" \
  csr --account other --cert-name rsa3072 --subject "/CN=x"
CONF=$SAVED_CONF

# An [hsm] without pin_file/pin_env (applications give their PIN): the tool
# logs in to the HSM with --pin-file or $KVP11_PIN.
grep -v '^pin_file' "$CONF" >"$T/nopin.conf"
umask 077
printf '9999' >"$T/bad.pin"
umask 022
printf '1234' >"$T/open.pin"
chmod 644 "$T/open.pin"
SAVED_CONF=$CONF
CONF=$T/nopin.conf
expect_fail "no PIN" 1 "hsm 'test' has no pin_file or pin_env: give the user PIN with --pin-file F or KVP11_PIN" \
  csr --cert-name rsa2048 --subject "/CN=x"
expect_ok "--pin-file" csr --cert-name rsa2048 --subject "/CN=x" --pin-file "$E/hsm.pin"
openssl req -verify -noout -in "$OUT" 2>/dev/null || fail "--pin-file: the request does not verify"
KVP11_PIN=1234 expect_ok "KVP11_PIN" cert selfsign --cert-name p256 --subject "/CN=x"
openssl verify -CAfile "$OUT" "$OUT" >/dev/null 2>&1 || fail "KVP11_PIN: the certificate does not verify"
expect_fail "wrong PIN" 1 "hsm 'test': login failed: .*CKR_PIN_INCORRECT" \
  csr --cert-name rsa2048 --subject "/CN=x" --pin-file "$T/bad.pin"
expect_fail "PIN file readable by others" 1 "open.pin" \
  csr --cert-name rsa2048 --subject "/CN=x" --pin-file "$T/open.pin"
CONF=$SAVED_CONF
kvp csr --cert-name p256 --subject "/CN=x" --pin-file "$T/bad.pin"
[ "$RC" -eq 0 ] && grep -q "warning: --pin-file ignored: \[hsm test\] has its own pin_file/pin_env" "$ERR" ||
  { cat "$ERR" >&2; fail "--pin-file with a configured PIN: rc $RC"; }
ok "--pin-file is ignored, with a warning, when the [hsm] has its PIN"

# --- usage errors: exit 2, one line, nothing on stdout (they read no configuration) ---
usage_fail() {
  local what=$1 re=$2; shift 2
  kvp "$@"
  [ "$RC" -eq 2 ] || { cat "$ERR" >&2; fail "$what: exit $RC (want 2): $*"; }
  one_line "$what"
  grep -Eq -- "$re" "$ERR" || { cat "$ERR" >&2; fail "$what: stderr does not match '$re'"; }
  [ ! -s "$OUT" ] || fail "$what: unexpected stdout"
  ok "$what ($(cat "$ERR"))"
}
usage_fail "no key selector" "exactly one of --cert-name, --vault or --hsm" csr --subject "/CN=x"
usage_fail "two key selectors" "exactly one of --cert-name, --vault or --hsm" \
  csr --cert-name a --hsm test --key k --subject "/CN=x"
usage_fail "--vault without --key" "--vault needs --key" csr --vault emu --subject "/CN=x"
usage_fail "--key with --cert-name" "--key goes with --vault or --hsm" \
  csr --cert-name a --key k --subject "/CN=x"
usage_fail "no --subject" "--subject is required" csr --cert-name rsa2048
usage_fail "bad --digest" "bad --digest 'md5'" csr --cert-name rsa2048 --subject "/CN=x" --digest md5
usage_fail "--days on csr" "option '--days' does not apply here" \
  csr --cert-name rsa2048 --subject "/CN=x" --days 3
usage_fail "bad --days" "bad --days '0'" cert selfsign --cert-name rsa2048 --subject "/CN=x" --days 0
usage_fail "bad --days text" "bad --days '1y'" cert selfsign --cert-name rsa2048 --subject "/CN=x" --days 1y
usage_fail "unknown option" "unknown option '--frob'" csr --frob
usage_fail "operand" "unexpected argument 'x'" csr --cert-name rsa2048 --subject /CN=x x
usage_fail "--subject twice" "option '--subject' given twice" csr --cert-name a --subject /CN=x --subject /CN=y
expect_ok "csr --help" csr --help
grep -q '^usage: kvp11 \[-c FILE\] csr (--cert-name NAME' "$OUT" || fail "csr --help: $(cat "$OUT")"
expect_ok "cert selfsign --help" cert selfsign --help
grep -q '^usage: kvp11 \[-c FILE\] cert selfsign' "$OUT" && grep -q -- '--days N' "$OUT" ||
  fail "cert selfsign --help: $(cat "$OUT")"
expect_ok "kvp11 --help lists csr" --help
grep -q 'kvp11 \[-c FILE\] csr (--cert-name' "$OUT" || fail "kvp11 --help does not list csr"
no_temp "the HSM part"

# --- the same through Key Vault keys (the kv tests' emulator fixture, if it runs) ---
if kv_fixture rsa2048 p256; then
  expect_ok "kv: add partner" cert add --name partner --type public --cert "$C/partner.pem" --account kv
  expect_ok "kv: csr rsa2048" csr --account kv --cert-name rsa2048 --subject "$SUBJ" --san "$SAN"
  cp "$OUT" "$T/kv-rsa.csr"
  check_req "$T/kv-rsa.csr" "$KC/rsa2048.pem" x509 sha256WithRSAEncryption "kv: csr rsa2048"
  expect_ok "kv: csr --vault emu --key p256 (registered)" csr --account kv --vault emu --key p256 \
    --subject "$SUBJ" --san "$SAN" --digest sha384
  cp "$OUT" "$T/kv-p256.csr"
  check_req "$T/kv-p256.csr" "$KC/p256.pem" x509 ecdsa-with-SHA384 "kv: csr p256 sha384"
  expect_ok "kv: csr --pss" csr --account kv --cert-name rsa2048 --subject "$SUBJ" --san "$SAN" --pss
  cp "$OUT" "$T/kv-pss.csr"
  check_req "$T/kv-pss.csr" "$KC/rsa2048.pem" x509 rsassaPss "kv: csr --pss"
  expect_ok "kv: selfsign p256" cert selfsign --account kv --cert-name p256 --subject "$SUBJ" --san "$SAN"
  cp "$OUT" "$T/kv-self.pem"
  check_cert "$T/kv-self.pem" "$KC/p256.pem" x509 'Digital Signature' "kv: selfsign p256"
  expect_ok "kv: cert add the self-signed certificate" cert add --account kv --name kv-self --type private \
    --cert "$T/kv-self.pem" --vault emu --key p256
  expect_fail "kv: partner certificate" 1 "'partner' is a partner's certificate" \
    csr --account kv --cert-name partner --subject "/CN=x"
  expect_fail "kv: unknown vault key" 1 "vault 'emu' has no key 'nokey'" \
    csr --account kv --vault emu --key nokey --subject "/CN=x"
  expect_fail "kv: unknown vault" 1 "vault 'nope' is not configured" \
    csr --account kv --vault nope --key p256 --subject "/CN=x"
  # rsa3072 has no registry entry in this account
  openssl x509 -in "$KC/rsa3072.pem" -noout -pubkey >"$T/kv3072.pub"
  before=$(snapshot)
  expect_ok "kv: csr --vault emu --key rsa3072 (temporary registry)" csr --account kv --vault emu \
    --key rsa3072 --subject "$SUBJ" --san "$SAN"
  cp "$OUT" "$T/kv-3072.csr"
  check_req "$T/kv-3072.csr" "$T/kv3072.pub" pub sha256WithRSAEncryption "kv: csr of an unregistered vault key"
  expect_ok "kv: selfsign --vault emu --key rsa3072 --pss" cert selfsign --account kv --vault emu \
    --key rsa3072 --subject "$SUBJ" --san "$SAN" --pss
  cp "$OUT" "$T/kv-3072.pem"
  check_cert "$T/kv-3072.pem" "$T/kv3072.pub" pub 'Digital Signature, Key Encipherment' "kv: selfsign unregistered"
  [ "$before" = "$(snapshot)" ] || fail "kv: the temporary registry changed the registry"
  no_temp "kv: temporary registry"
  ok "kv: no temporary registry left, the registry did not change"
else
  echo "note: Key Vault part skipped (no emulator fixture in '${KV}')"
fi
echo "all csr tests passed"
