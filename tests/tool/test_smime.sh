#!/usr/bin/env bash
# kvp11 smime sign|verify|encrypt|decrypt|seal|open, round-tripped with
# `openssl cms` in both directions on the SoftHSM2 fixture (tests/fixtures/
# mkenv.sh): our keys (rsa2048, rsa3072, p256, p384) are used through the
# built libkvp11.so ($KVP11_MODULE) by the OpenSSL pkcs11 engine; the partner
# (certs/partner.pem + partner.key) is a software key that openssl uses.
# Then every bad input: not S/MIME, wrong recipient, tampered content,
# unknown signer, expired certificate, public certificate as signer.
. "$(dirname "$0")/lib.sh"

. "$(dirname "$0")/smime_env.sh"

printf 'Subject: order 4711\n\nline one\nline two\n' >"$T/msg.txt"
# openssl cms -verify/-decrypt of a text message gives CRLF line ends, as kvp11 does.
sed 's/$/\r/' "$T/msg.txt" >"$T/msg.crlf"
head -c 3000 /dev/urandom >"$T/msg.bin"

# same FILE_A FILE_B WHAT
same() { cmp -s "$1" "$2" || fail "$3: the content differs"; }

# --- sign: kvp11 signs, openssl verifies (the signer certificate as trust anchor) ---
for k in rsa2048 rsa3072 p256 p384; do
  expect_ok "sign $k" smime sign --cert "$k" <"$T/msg.txt"
  head -5 "$OUT" | grep -q 'application/pkcs7-mime; smime-type=signed-data' ||
    fail "sign $k: not an S/MIME signed-data entity: $(head -5 "$OUT")"
  cp "$OUT" "$T/signed.$k"
  openssl cms -verify -CAfile "$C/$k.pem" -purpose any -in "$T/signed.$k" -out "$T/v.out" 2>"$T/ossl.err" ||
    { cat "$T/ossl.err" >&2; fail "openssl cms -verify of kvp11's $k signature"; }
  same "$T/v.out" "$T/msg.crlf" "openssl verify $k"
  ok "openssl verifies kvp11's $k signature"
done
for d in sha384 sha512; do
  expect_ok "sign --digest $d" smime sign --cert rsa2048 --digest $d <"$T/msg.txt"
  openssl cms -cmsout -print -in "$OUT" | grep -A1 'digestAlgorithm:' | grep -q "algorithm: $d" ||
    fail "--digest $d: not in the SignerInfo"
  openssl cms -verify -CAfile "$C/rsa2048.pem" -purpose any -in "$OUT" -out "$T/v.out" 2>"$T/ossl.err" ||
    { cat "$T/ossl.err" >&2; fail "openssl verify --digest $d"; }
  same "$T/v.out" "$T/msg.crlf" "--digest $d"
  ok "openssl verifies --digest $d"
done
expect_ok "sign --detached" smime sign --cert rsa2048 --detached <"$T/msg.txt"
grep -q 'multipart/signed; protocol="application/pkcs7-signature"; micalg="sha-256"' "$OUT" ||
  fail "--detached: not multipart/signed"
grep -q '^line two' "$OUT" || fail "--detached: content not in clear"
cp "$OUT" "$T/detached.smime"
openssl cms -verify -CAfile "$C/rsa2048.pem" -purpose any -in "$T/detached.smime" -out "$T/v.out" 2>"$T/ossl.err" ||
  { cat "$T/ossl.err" >&2; fail "openssl verify --detached"; }
same "$T/v.out" "$T/msg.crlf" "--detached"
ok "openssl verifies a detached signature"
expect_ok "sign --detached p256 --digest sha384" smime sign --cert p256 --detached --digest sha384 <"$T/msg.txt"
openssl cms -verify -CAfile "$C/p256.pem" -purpose any -in "$OUT" -out "$T/v.out" 2>"$T/ossl.err" ||
  { cat "$T/ossl.err" >&2; fail "openssl verify detached ECDSA"; }
ok "openssl verifies a detached ECDSA P-256 signature"
expect_ok "sign --binary --outform der" smime sign --cert rsa2048 --binary --outform der <"$T/msg.bin"
openssl cms -verify -binary -inform DER -CAfile "$C/rsa2048.pem" -purpose any -in "$OUT" -out "$T/v.out" 2>"$T/ossl.err" ||
  { cat "$T/ossl.err" >&2; fail "openssl verify --binary DER"; }
same "$T/v.out" "$T/msg.bin" "--binary --outform der"
ok "binary content, DER output"

# --- verify: openssl signs with the partner's key, kvp11 verifies ---
openssl cms -sign -signer "$PC" -inkey "$PK" -nodetach -in "$T/msg.txt" -out "$T/p.opaque" || fail "openssl sign"
openssl cms -sign -signer "$PC" -inkey "$PK" -in "$T/msg.txt" -out "$T/p.detached" || fail "openssl sign detached"
openssl cms -sign -signer "$PC" -inkey "$PK" -md sha512 -nocerts -nodetach -outform PEM -in "$T/msg.txt" \
  -out "$T/p.pem" || fail "openssl sign pem"
openssl cms -sign -signer "$PC" -inkey "$PK" -binary -outform DER -in "$T/msg.bin" -out "$T/p.der" ||
  fail "openssl sign der"
expect_ok "verify opaque" smime verify <"$T/p.opaque"
same "$OUT" "$T/msg.crlf" "verify opaque"
expect_ok "verify detached multipart/signed --cert partner" smime verify --cert partner <"$T/p.detached"
same "$OUT" "$T/msg.crlf" "verify detached"
expect_ok "verify PEM without certificates (registered signer)" smime verify <"$T/p.pem"
same "$OUT" "$T/msg.crlf" "verify pem"
expect_ok "verify DER detached --content" smime verify --inform der --binary --content "$T/msg.bin" <"$T/p.der"
same "$OUT" "$T/msg.bin" "verify der --content"
expect_ok "verify our own signature" smime verify --cert p384 <"$T/signed.p384"
same "$OUT" "$T/msg.crlf" "verify own"
expect_ok "verify our detached signature" smime verify <"$T/detached.smime"
same "$OUT" "$T/msg.crlf" "verify own detached"
# a multipart/signed whose micalg names another digest than the signature's:
# refused with that reason, not as a changed message
openssl cms -sign -signer "$PC" -inkey "$PK" -md sha384 -in "$T/msg.txt" -out "$T/p.sha384" ||
  fail "openssl sign detached sha384"
grep -q 'micalg="sha-384"' "$T/p.sha384" || fail "openssl's multipart/signed has no micalg sha-384"
sed 's/micalg="sha-384"/micalg="sha-256"/' "$T/p.sha384" >"$T/p.micalg"
expect_fail "verify: micalg names another digest" 1 \
  "the signature is made with sha384, but the message's micalg names sha-256" \
  smime verify --cert partner <"$T/p.micalg"

# --- encrypt: kvp11 encrypts to the partner, openssl decrypts with partner.key ---
expect_ok "encrypt" smime encrypt --to partner <"$T/msg.txt"
head -5 "$OUT" | grep -q 'smime-type=enveloped-data' || fail "encrypt: not enveloped-data"
openssl cms -cmsout -print -in "$OUT" | grep -q 'algorithm: aes-256-cbc' || fail "encrypt: not aes-256-cbc"
openssl cms -decrypt -inkey "$PK" -recip "$PC" -in "$OUT" -out "$T/d.out" 2>"$T/ossl.err" ||
  { cat "$T/ossl.err" >&2; fail "openssl decrypt"; }
same "$T/d.out" "$T/msg.crlf" "encrypt"
ok "openssl decrypts kvp11's message"
expect_ok "encrypt gcm oaep, two recipients" smime encrypt --to partner --to rsa2048 --cipher aes-256-gcm --oaep <"$T/msg.txt"
cp "$OUT" "$T/gcm.smime"
openssl cms -cmsout -print -in "$OUT" >"$T/print.txt"
grep -q 'id-smime-ct-authEnvelopedData' "$T/print.txt" || fail "--cipher aes-256-gcm: not AuthEnvelopedData"
[ "$(grep -c 'algorithm: rsaesOaep' "$T/print.txt")" -eq 2 ] || fail "--oaep: not RSA-OAEP for both"
openssl cms -decrypt -inkey "$PK" -recip "$PC" -in "$OUT" -out "$T/d.out" 2>"$T/ossl.err" ||
  { cat "$T/ossl.err" >&2; fail "openssl decrypt gcm/oaep"; }
same "$T/d.out" "$T/msg.crlf" "gcm oaep"
ok "openssl decrypts AES-256-GCM / RSA-OAEP"
# An EC partner: key agreement (kari).
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$T/ecp.key" 2>/dev/null || fail "ec key"
openssl req -new -x509 -key "$T/ecp.key" -subj "/CN=ec partner" -days 30 -out "$T/ecp.pem" 2>/dev/null || fail "ec cert"
expect_ok "register an EC partner" cert add --name ecpartner --type public --cert "$T/ecp.pem"
expect_ok "encrypt to an EC partner" smime encrypt --to ecpartner <"$T/msg.txt"
openssl cms -decrypt -inkey "$T/ecp.key" -recip "$T/ecp.pem" -in "$OUT" -out "$T/d.out" 2>"$T/ossl.err" ||
  { cat "$T/ossl.err" >&2; fail "openssl decrypt kari"; }
same "$T/d.out" "$T/msg.crlf" "EC recipient"
ok "openssl decrypts an ECDH (kari) message"

# --- decrypt: openssl encrypts to our certificate, kvp11 decrypts through the module ---
openssl cms -encrypt -aes-256-cbc -in "$T/msg.txt" -out "$T/o.cbc" "$C/rsa2048.pem" || fail "openssl encrypt"
openssl cms -encrypt -aes-256-gcm -recip "$C/rsa3072.pem" -keyopt rsa_padding_mode:oaep \
  -recip "$PC" -in "$T/msg.txt" -out "$T/o.gcm" || fail "openssl encrypt gcm oaep"
openssl cms -encrypt -aes-256-cbc -binary -outform DER -in "$T/msg.bin" -out "$T/o.der" "$C/rsa2048.pem" ||
  fail "openssl encrypt der"
expect_ok "decrypt" smime decrypt --cert rsa2048 <"$T/o.cbc"
same "$OUT" "$T/msg.crlf" "decrypt"
expect_ok "decrypt gcm oaep (second recipient)" smime decrypt --cert rsa3072 <"$T/o.gcm"
same "$OUT" "$T/msg.crlf" "decrypt gcm"
expect_ok "decrypt der binary" smime decrypt --cert rsa2048 --inform der <"$T/o.der"
same "$OUT" "$T/msg.bin" "decrypt der"
expect_ok "decrypt our own gcm message" smime decrypt --cert rsa2048 <"$T/gcm.smime"
same "$OUT" "$T/msg.crlf" "decrypt own"

# --- seal / open (AS2): sign then encrypt, decrypt then verify ---
expect_ok "seal" smime seal --cert rsa2048 --to partner --detached <"$T/msg.txt"
openssl cms -decrypt -inkey "$PK" -recip "$PC" -in "$OUT" -out "$T/inner" 2>"$T/ossl.err" ||
  { cat "$T/ossl.err" >&2; fail "openssl decrypt seal"; }
grep -q 'multipart/signed' "$T/inner" || fail "seal: the inner entity is not multipart/signed"
openssl cms -verify -CAfile "$C/rsa2048.pem" -purpose any -in "$T/inner" -out "$T/v.out" 2>"$T/ossl.err" ||
  { cat "$T/ossl.err" >&2; fail "openssl verify seal"; }
same "$T/v.out" "$T/msg.crlf" "seal"
ok "openssl opens kvp11's sealed message"
expect_ok "seal gcm oaep p256" smime seal --cert p256 --to partner --cipher aes-256-gcm --oaep <"$T/msg.txt"
openssl cms -decrypt -inkey "$PK" -in "$OUT" | openssl cms -verify -CAfile "$C/p256.pem" -purpose any \
  -out "$T/v.out" 2>"$T/ossl.err" || { cat "$T/ossl.err" >&2; fail "openssl open seal p256"; }
same "$T/v.out" "$T/msg.crlf" "seal p256"
ok "openssl opens a GCM/OAEP message sealed with P-256"
openssl cms -sign -signer "$PC" -inkey "$PK" -in "$T/msg.txt" |
  openssl cms -encrypt -aes-256-cbc -out "$T/o.sealed" "$C/rsa2048.pem" || fail "openssl sign+encrypt"
expect_ok "open" smime open --cert rsa2048 --from partner <"$T/o.sealed"
same "$OUT" "$T/msg.crlf" "open"
# a detached signature over LF content made with -binary verifies with --binary
printf 'UNB+UNOA:2+PARTNER+US\nUNZ+1\n' >"$T/lf.txt"
openssl cms -sign -binary -signer "$PC" -inkey "$PK" -in "$T/lf.txt" -out "$T/lf.smime" || fail "openssl sign binary"
expect_ok "verify a detached -binary signature" smime verify --cert partner --binary <"$T/lf.smime"
same "$OUT" "$T/lf.txt" "verify binary detached"
openssl cms -sign -binary -signer "$PC" -inkey "$PK" -in "$T/lf.txt" |
  openssl cms -encrypt -binary -aes-256-cbc -out "$T/lf.sealed" "$C/rsa2048.pem" || fail "openssl sign+encrypt binary"
expect_ok "open a detached -binary message" smime open --cert rsa2048 --from partner --binary <"$T/lf.sealed"
same "$OUT" "$T/lf.txt" "open binary detached"
# the same with CRLF line ends (AS2 on the wire): OpenSSL's reader keeps the CR
# before the boundary in the content; kvp11 drops it
openssl cms -sign -binary -crlfeol -signer "$PC" -inkey "$PK" -in "$T/lf.txt" -out "$T/crlf.smime" ||
  fail "openssl sign binary crlf"
grep -q $'\r$' "$T/crlf.smime" || fail "openssl did not write CRLF line ends"
expect_ok "verify a detached -binary signature with CRLF line ends" \
  smime verify --cert partner --binary <"$T/crlf.smime"
same "$OUT" "$T/lf.txt" "verify binary detached crlf"
expect_ok "seal --binary --detached" smime seal --cert rsa3072 --to rsa2048 --binary --detached <"$T/lf.txt"
cp "$OUT" "$T/self-bin.sealed"
expect_ok "open our own --binary --detached" smime open --cert rsa2048 --from rsa3072 --binary <"$T/self-bin.sealed"
same "$OUT" "$T/lf.txt" "open own binary detached"
# OpenSSL 3.0 peers open it too (its reader keeps the CR of a CRLF before the
# boundary in binary content: seal writes that MIME structure with LF)
expect_ok "seal --binary --detached to the partner" smime seal --cert rsa3072 --to partner --binary --detached \
  --in "$T/msg.bin"
openssl cms -decrypt -binary -inkey "$PK" -in "$OUT" -out "$T/bin.inner" 2>"$T/ossl.err" ||
  { cat "$T/ossl.err" >&2; fail "openssl decrypt seal --binary --detached"; }
openssl cms -verify -binary -CAfile "$C/rsa3072.pem" -purpose any -in "$T/bin.inner" -out "$T/v.out" 2>"$T/ossl.err" ||
  { cat "$T/ossl.err" >&2; fail "openssl verify seal --binary --detached"; }
same "$T/v.out" "$T/msg.bin" "openssl opens seal --binary --detached"
ok "openssl opens kvp11's seal --binary --detached"
# the pkcs11 engine already loaded by OPENSSL_CONF is used as it is
sed -e "s|@PKCS11_ENGINE@|$(openssl version -e | sed 's/.*"\(.*\)"/\1/')/pkcs11.so|" \
    -e "s|@KVP11_MODULE@|$KVP11_MODULE|" "$(cd "$(dirname "$0")/../.." && pwd)/hsm-config/openssl-engine.cnf" >"$T/engine.cnf"
OPENSSL_CONF="$T/engine.cnf" expect_ok "sign with the engine loaded by OPENSSL_CONF" \
  smime sign --cert rsa2048 <"$T/msg.txt"
expect_ok "seal to ourselves" smime seal --cert rsa3072 --to rsa2048 <"$T/msg.txt"
cp "$OUT" "$T/self.sealed"
expect_ok "open our own" smime open --cert rsa2048 <"$T/self.sealed"
same "$OUT" "$T/msg.crlf" "open own"

# --- --in / --out on every command: the file appears only when the command succeeded ---
expect_ok "sign --in --out" smime sign --cert rsa2048 --in "$T/msg.txt" --out "$T/io.signed"
[ -s "$T/io.signed" ] || fail "sign --out: no file"
expect_ok "verify --in --out" smime verify --in "$T/io.signed" --out "$T/io.out"
same "$T/io.out" "$T/msg.crlf" "verify --out"
expect_ok "encrypt --in --out" smime encrypt --to rsa2048 --in "$T/msg.txt" --out "$T/io.enc"
expect_ok "decrypt --in --out" smime decrypt --cert rsa2048 --in "$T/io.enc" --out "$T/io.out2"
same "$T/io.out2" "$T/msg.crlf" "decrypt --out"
expect_ok "seal --in --out" smime seal --cert rsa2048 --to rsa3072 --in "$T/msg.txt" --out "$T/io.sealed"
expect_ok "open --in --out" smime open --cert rsa3072 --in "$T/io.sealed" --out "$T/io.out3"
same "$T/io.out3" "$T/msg.crlf" "open --out"
sed 's/^line two/line 2wo/' "$T/detached.smime" >"$T/io.tampered"
expect_fail "verify: tampered, --out" 1 "the signature does not verify" \
  smime verify --in "$T/io.tampered" --out "$T/io.nothing"
[ ! -e "$T/io.nothing" ] || fail "verify: a failed verify left its --out file"
ls -A "$T" | grep -q '^\.io\.nothing\.' && fail "verify: a temporary file was left behind"
cp "$T/io.out" "$T/io.keep"
expect_fail "verify: tampered, --out over an existing file" 1 "the signature does not verify" \
  smime verify --in "$T/io.tampered" --out "$T/io.keep"
same "$T/io.keep" "$T/io.out" "a failed verify kept the file it would have replaced"
expect_fail "--in: no such file" 1 "cannot open $T/none: No such file" smime verify --in "$T/none"
expect_fail "--in: a directory" 1 "--in $T: is a directory" smime decrypt --in "$T"
expect_fail "--out: no such directory" 1 "cannot create a temporary file beside $T/no/x" \
  smime sign --cert rsa2048 --in "$T/msg.txt" --out "$T/no/x"

# --- an empty message: OpenSSL's streaming writers cannot write one; it is finished whole ---
: >"$T/empty"
for d in "" --detached; do
  expect_ok "sign an empty message $d" smime sign --cert rsa2048 $d --in "$T/empty"
  openssl cms -verify -CAfile "$C/rsa2048.pem" -purpose any -in "$OUT" -out "$T/v.out" 2>"$T/ossl.err" ||
    { cat "$T/ossl.err" >&2; fail "openssl verify of an empty message $d"; }
  [ ! -s "$T/v.out" ] || fail "sign empty $d: content not empty"
  cp "$OUT" "$T/empty.signed"
  expect_ok "verify an empty message $d" smime verify --in "$T/empty.signed"
  [ ! -s "$OUT" ] || fail "verify empty $d: content not empty"
done
expect_ok "encrypt an empty message" smime encrypt --to partner --outform der --in "$T/empty"
openssl cms -decrypt -inform DER -inkey "$PK" -in "$OUT" -out "$T/v.out" 2>"$T/ossl.err" ||
  { cat "$T/ossl.err" >&2; fail "openssl decrypt of an empty message"; }
[ ! -s "$T/v.out" ] || fail "encrypt empty: content not empty"
expect_ok "seal an empty message" smime seal --cert rsa3072 --to rsa2048 --in "$T/empty" --out "$T/empty.sealed"
expect_ok "open an empty message" smime open --in "$T/empty.sealed"
[ ! -s "$OUT" ] || fail "open empty: content not empty"

# --- recipient-driven decryption: without --cert, the certificate the message is
# for, among two active (rsa2048, rsa3072) and one retired (rsaold) certificate ---
mkcert rsaold
expect_ok "import a third RSA key" key import --hsm test --key rsaold --key-file "$T/rsaold.key" \
  --cert "$T/rsaold.pem" --name rsaold
python3 - "$E/registry.db" <<'PY' || fail "retire rsaold"
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
assert db.execute("UPDATE certs SET state = 'retired' WHERE name = 'rsaold'").rowcount == 1
db.commit()
PY
openssl cms -encrypt -aes-256-cbc -in "$T/msg.txt" -out "$T/r.2048" "$C/rsa2048.pem" || fail "encrypt r.2048"
openssl cms -encrypt -aes-256-gcm -keyid -in "$T/msg.txt" -out "$T/r.3072" "$C/rsa3072.pem" || fail "encrypt r.3072"
openssl cms -cmsout -print -in "$T/r.3072" | grep -q 'subjectKeyIdentifier' || fail "r.3072: no subject key id"
mkcert stranger2
openssl cms -encrypt -aes-256-cbc -in "$T/msg.txt" -out "$T/r.old" "$T/stranger2.pem" "$T/rsaold.pem" ||
  fail "encrypt r.old"
# decrypt_by FILE CERT [retired]: kvp11 -v smime CMD without --cert used CERT
decrypt_by() {
  local f=$1 want=$2 note=${3:-} cmd=${4:-decrypt}
  RC=0
  "$KVP11_TOOL" -v -c "$CONF" smime $cmd --in "$f" --out "$T/r.out" 2>"$ERR" || RC=$?
  [ "$RC" -eq 0 ] || { cat "$ERR" >&2; fail "$cmd $f: exit $RC"; }
  grep -q "^kvp11: smime $cmd: decrypting with certificate '$want'$note\$" "$ERR" ||
    { cat "$ERR" >&2; fail "$cmd $f: -v does not say it used '$want'$note"; }
  same "$T/r.out" "$T/msg.crlf" "$cmd $f"
  ok "$cmd without --cert: '$want'$note (issuer+serial or subject key id)"
}
decrypt_by "$T/r.2048" rsa2048
decrypt_by "$T/r.3072" rsa3072
decrypt_by "$T/r.old" rsaold " (retired)"
openssl cms -sign -signer "$PC" -inkey "$PK" -in "$T/msg.txt" |
  openssl cms -encrypt -aes-256-cbc -out "$T/r.sealed" "$T/rsaold.pem" || fail "seal to rsaold"
decrypt_by "$T/r.sealed" rsaold " (retired)" open
expect_ok "open without --cert and without -v says nothing" smime open --in "$T/r.sealed"
same "$OUT" "$T/msg.crlf" "open quiet"
openssl cms -encrypt -aes-256-cbc -in "$T/msg.txt" -out "$T/r.none" "$T/stranger2.pem" || fail "encrypt r.none"
expect_fail "decrypt: for none of ours" 1 \
  "the message is for none of the private certificates of account 'default' \(1 recipient; the first: issuer .*CN=stranger2.* serial [0-9A-F]+\)" \
  smime decrypt --in "$T/r.none"
expect_fail "sign: a retired certificate" 1 "certificate 'rsaold' is retired: it decrypts" \
  smime sign --cert rsaold --in "$T/msg.txt"

# --- bad input: one line, exit 1, nothing on stdout ---
printf 'this is not a message\n' >"$T/garbage.txt"
expect_fail "verify: not S/MIME" 1 "stdin is not an S/MIME message" smime verify <"$T/garbage.txt"
expect_fail "decrypt: not S/MIME" 1 "stdin is not an S/MIME message" smime decrypt --cert rsa2048 <"$T/garbage.txt"
expect_fail "open: not S/MIME" 1 "stdin is not an S/MIME message" smime open --cert rsa2048 <"$T/garbage.txt"
expect_fail "verify: empty input" 1 "stdin is empty" smime verify </dev/null
expect_fail "verify: garbage DER" 1 "not a DER CMS message" smime verify --inform der <"$T/garbage.txt"
expect_fail "verify: an encrypted message" 1 "the message is not signed" smime verify <"$T/o.cbc"
expect_fail "decrypt: a signed message" 1 "the message is not encrypted" smime decrypt --cert rsa2048 <"$T/p.opaque"
expect_fail "decrypt: wrong recipient" 1 "this message is not for certificate 'rsa3072'" \
  smime decrypt --cert rsa3072 <"$T/o.cbc"
expect_fail "open: wrong recipient" 1 "this message is not for certificate 'rsa3072'" \
  smime open --cert rsa3072 <"$T/o.sealed"
expect_fail "decrypt: public certificate" 1 "'partner' is a public certificate" \
  smime decrypt --cert partner <"$T/o.cbc"
expect_fail "decrypt: EC key agreement" 1 "EC key agreement" smime decrypt --cert p256 \
  < <("$KVP11_TOOL" -c "$CONF" smime encrypt --to p256 <"$T/msg.txt")
sed 's/^line two/line 2wo/' "$T/p.detached" >"$T/tampered.smime"
cmp -s "$T/tampered.smime" "$T/p.detached" && fail "tampering changed nothing"
expect_fail "verify: tampered content" 1 "the signature does not verify" smime verify <"$T/tampered.smime"
sed 's/^line two/line 2wo/' "$T/detached.smime" >"$T/tampered2.smime"
expect_fail "verify: tampered content (our signature)" 1 "the signature does not verify" \
  smime verify --cert rsa2048 <"$T/tampered2.smime"
expect_fail "verify: --content differs" 1 "the signature does not verify" \
  smime verify --inform der --binary --content "$T/msg.txt" <"$T/p.der"
expect_fail "verify: detached, content missing" 1 "content is missing" smime verify --inform der <"$T/p.der"
# GCM: a changed ciphertext fails the tag check. Flip one byte in the middle of the DER.
openssl cms -encrypt -aes-256-gcm -outform DER -in "$T/msg.txt" -out "$T/o.gcm.der" "$C/rsa2048.pem" ||
  fail "openssl gcm der"
python3 - "$T/o.gcm.der" "$T/o.gcm.bad" <<'PY'
import sys
d = bytearray(open(sys.argv[1], 'rb').read())
i = d.find(b'order 4711') if b'order 4711' in d else len(d) - 40
d[i] ^= 1
open(sys.argv[2], 'wb').write(d)
PY
expect_ok "decrypt: gcm der intact" smime decrypt --cert rsa2048 <"$T/o.gcm.der"
expect_fail "decrypt: tampered gcm" 1 "cannot decrypt .*does not decrypt or authenticate" smime decrypt --cert rsa2048 --inform der <"$T/o.gcm.bad"

# Unknown signers: a certificate that is not registered, with and without the certificate.
mkcert stranger
openssl cms -sign -signer "$T/stranger.pem" -inkey "$T/stranger.key" -in "$T/msg.txt" -out "$T/s.smime" || fail "stranger sign"
openssl cms -sign -signer "$T/stranger.pem" -inkey "$T/stranger.key" -nocerts -in "$T/msg.txt" -out "$T/s2.smime" ||
  fail "stranger sign nocerts"
expect_fail "verify: unknown signer" 1 "unknown signer .*CN=stranger \(sha256 [0-9a-f]{64}\): not a registered certificate of account 'default'" \
  smime verify <"$T/s.smime"
expect_fail "verify: unknown signer, no certificate" 1 "unknown signer .*does not carry its certificate" \
  smime verify <"$T/s2.smime"
expect_fail "verify: a registered signer but not --cert" 1 "unknown signer CN=partner .*not certificate 'rsa2048'" \
  smime verify --cert rsa2048 <"$T/p.opaque"
openssl cms -sign -signer "$T/stranger.pem" -inkey "$T/stranger.key" -in "$T/msg.txt" |
  openssl cms -encrypt -aes-256-cbc -out "$T/s.sealed" "$C/rsa2048.pem" || fail "stranger seal"
expect_fail "open: unknown signer" 1 "unknown signer .*CN=stranger" smime open --cert rsa2048 <"$T/s.sealed"
expect_fail "open: --from another partner" 1 "not certificate 'rsa3072'" \
  smime open --cert rsa2048 --from rsa3072 <"$T/o.sealed"
# The same certificate registered under a name: now trusted.
expect_ok "register the stranger" cert add --name stranger --type public --cert "$T/stranger.pem"
expect_ok "verify: registered now" smime verify --cert stranger <"$T/s2.smime"
same "$OUT" "$T/msg.crlf" "stranger"

# Expired certificates: the signer's at the signing time, the recipient's now.
mkcert old 20200101000000Z 20210101000000Z
kvp cert add --name old --type public --cert "$T/old.pem"
[ "$RC" -eq 0 ] || { cat "$ERR" >&2; fail "register expired certificate"; }
openssl cms -sign -signer "$T/old.pem" -inkey "$T/old.key" -in "$T/msg.txt" -out "$T/old.smime" || fail "old sign"
expect_fail "verify: expired signer" 1 "certificate 'old' expired on 2021-01-01T00:00:00Z \(the message was signed at 20" \
  smime verify <"$T/old.smime"
expect_fail "encrypt: expired recipient" 1 "certificate 'old' expired on 2021-01-01" \
  smime encrypt --to partner --to old <"$T/msg.txt"

# Wrong names and a module that is not there.
expect_fail "sign: unknown certificate" 1 "account 'default' has no certificate named 'nobody'" \
  smime sign --cert nobody <"$T/msg.txt"
expect_fail "sign: public certificate" 1 "'partner' is a public certificate: it has no key to sign with" \
  smime sign --cert partner <"$T/msg.txt"
expect_fail "encrypt: unknown recipient" 1 "no certificate named 'nobody'" smime encrypt --to nobody <"$T/msg.txt"
expect_fail "sign: no such module" 1 "kvp11 module $T/none.so" smime sign --cert rsa2048 --module "$T/none.so" <"$T/msg.txt"
expect_fail "sign: not the kvp11 module" 1 "the key of certificate 'rsa2048' is not available through $SOFTHSM" \
  smime sign --cert rsa2048 --module "$SOFTHSM" <"$T/msg.txt"
expect_fail "verify: unknown account" 1 "account 'nope' is not configured" smime verify --account nope <"$T/p.opaque"
# The module follows -c: with another token label, signing works only if the
# module read the same configuration as the tool.
sed 's/^label = kvp11 default/label = elsewhere/' "$CONF" >"$T/other.conf"
RC=0
"$KVP11_TOOL" -c "$T/other.conf" smime sign --cert rsa2048 <"$T/msg.txt" >"$OUT" 2>"$ERR" || RC=$?
[ "$RC" -eq 0 ] && [ ! -s "$ERR" ] || { cat "$ERR" >&2; fail "-c is not passed to the module (rc $RC)"; }
openssl cms -verify -CAfile "$C/rsa2048.pem" -purpose any -in "$OUT" -out /dev/null 2>/dev/null ||
  fail "-c: the signature does not verify"
ok "the module reads the -c configuration"

# --- usage errors (exit 2) ---
expect_fail "no smime command" 2 "no smime command given" smime
expect_fail "unknown smime command" 2 "unknown command 'frob'" smime frob
expect_fail "sign without --cert" 2 "--cert is required" smime sign </dev/null
expect_fail "encrypt without --to" 2 "--to is required" smime encrypt </dev/null
expect_fail "bad --digest" 2 "bad --digest 'md5'" smime sign --cert rsa2048 --digest md5 </dev/null
expect_fail "bad --cipher" 2 "bad --cipher 'des'" smime encrypt --to partner --cipher des </dev/null
expect_fail "bad --inform" 2 "bad --inform 'xml'" smime verify --inform xml </dev/null
expect_fail "option of another command" 2 "option '--to' does not apply here" smime sign --cert rsa2048 --to partner </dev/null
expect_fail "--cert twice" 2 "option '--cert' given twice" smime sign --cert a --cert b </dev/null
expect_fail "operand" 2 "unexpected argument 'x'" smime verify x </dev/null
expect_ok "smime --help" smime --help
grep -q 'kvp11 \[-c FILE\] smime seal --cert NAME --to PARTNER' "$OUT" || fail "smime --help: $(cat "$OUT")"
expect_ok "smime open --help" smime open --help
grep -q '^usage: kvp11 \[-c FILE\] smime open' "$OUT" || fail "smime open --help"

# --- the same through a Key Vault key (the kv tests' emulator fixture, if it runs) ---
if kv_fixture rsa2048 p256; then
  expect_ok "kv: add partner" cert add --name partner --type public --cert "$PC" --account kv
  expect_ok "kv: sign rsa2048" smime sign --account kv --cert rsa2048 <"$T/msg.txt"
  openssl cms -verify -CAfile "$KC/rsa2048.pem" -purpose any -in "$OUT" -out "$T/v.out" 2>"$T/ossl.err" ||
    { cat "$T/ossl.err" >&2; fail "kv: openssl verify rsa2048"; }
  same "$T/v.out" "$T/msg.crlf" "kv sign"
  expect_ok "kv: sign p256 detached sha384" smime sign --account kv --cert p256 --detached --digest sha384 <"$T/msg.txt"
  openssl cms -verify -CAfile "$KC/p256.pem" -purpose any -in "$OUT" -out "$T/v.out" 2>"$T/ossl.err" ||
    { cat "$T/ossl.err" >&2; fail "kv: openssl verify p256"; }
  same "$T/v.out" "$T/msg.crlf" "kv sign p256"
  ok "kv: openssl verifies Key Vault RSA and ECDSA signatures"
  openssl cms -encrypt -aes-256-gcm -recip "$KC/rsa2048.pem" -keyopt rsa_padding_mode:oaep -in "$T/msg.txt" \
    -out "$T/kv.enc" || fail "kv: openssl encrypt"
  expect_ok "kv: decrypt gcm oaep" smime decrypt --account kv --cert rsa2048 <"$T/kv.enc"
  same "$OUT" "$T/msg.crlf" "kv decrypt"
  expect_ok "kv: seal" smime seal --account kv --cert rsa2048 --to partner --detached <"$T/msg.txt"
  openssl cms -decrypt -inkey "$PK" -in "$OUT" | openssl cms -verify -CAfile "$KC/rsa2048.pem" -purpose any \
    -out "$T/v.out" 2>"$T/ossl.err" || { cat "$T/ossl.err" >&2; fail "kv: openssl open"; }
  same "$T/v.out" "$T/msg.crlf" "kv seal"
  openssl cms -sign -signer "$PC" -inkey "$PK" -in "$T/msg.txt" |
    openssl cms -encrypt -aes-256-cbc -out "$T/kv.sealed" "$KC/rsa2048.pem" || fail "kv: openssl seal"
  expect_ok "kv: open" smime open --account kv --cert rsa2048 --from partner <"$T/kv.sealed"
  same "$OUT" "$T/msg.crlf" "kv open"
else
  echo "note: Key Vault part skipped (no emulator fixture in '${KV}')"
fi
echo "all smime tests passed"
