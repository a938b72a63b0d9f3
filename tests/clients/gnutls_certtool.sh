#!/usr/bin/env bash
# GnuTLS with libkvp11.so given by path (--provider):
#   p11tool --list-all             certificates and private keys of the token
#   p11tool --export               each certificate, byte for byte the registered PEM
#   p11tool --test-sign            GnuTLS signs with each kvp11 key and verifies
#   certtool --generate-request    a PKCS#10 request signed by a kvp11 key (RSA and EC),
#                                  verified with `openssl req -verify`
#   certtool --generate-self-signed  verified with `openssl verify -check_ss_sig`
. "$(dirname "$0")/common.sh"
. "$(dirname "$0")/p11kit_lib.sh"
need p11tool certtool openssl

if [ -n "${CLIENT_PIN:-}" ]; then export GNUTLS_PIN=$CLIENT_PIN; fi
PROV=(--provider "$KVP11_MODULE")
URL="pkcs11:token=$TOKEN_URI"

run "p11tool --list-all" p11tool "${PROV[@]}" --list-all "$URL"
cp "$WORK/out" "$WORK/all.txt"
for k in $ALL_KEYS $PARTNER; do
  grep -Eq "URL: pkcs11:.*object=$k;.*type=cert" "$WORK/all.txt" || { cat "$WORK/all.txt" >&2; fail "--list-all misses certificate $k"; }
done
for k in $ALL_KEYS; do
  grep -Eq "URL: pkcs11:.*object=$k;.*type=private" "$WORK/all.txt" || { cat "$WORK/all.txt" >&2; fail "--list-all misses private key $k"; }
done
ok "p11tool --list-all: $NCERTS certificates and the private keys of $ALL_KEYS"

for k in $ALL_KEYS $PARTNER; do
  run "export $k" p11tool "${PROV[@]}" --export "$URL;object=$k;type=cert"
  openssl x509 -in "$WORK/out" -outform DER -out "$WORK/a.der" 2>/dev/null || fail "export of $k is not a certificate"
  openssl x509 -in "$CERTS/$k.pem" -outform DER -out "$WORK/b.der"
  cmp -s "$WORK/a.der" "$WORK/b.der" || fail "exported $k differs from certs/$k.pem"
done
ok "p11tool --export of the $NCERTS certificates equals the registered PEM files"

for k in $ALL_KEYS; do
  run "test-sign $k" p11tool "${PROV[@]}" --test-sign "$URL;object=$k;type=private"
  grep -q 'Verifying against public key in the token... ok' "$WORK/out" \
    || { cat "$WORK/out" >&2; fail "p11tool --test-sign $k did not verify"; }
done
ok "p11tool --test-sign with $ALL_KEYS"

cat >"$WORK/tmpl" <<EOF
cn = "kvp11 certtool test $$"
organization = "kvp11"
email = "b2b@example.com"
signing_key
encryption_key
email_protection_key
expiration_days = 2
EOF
for k in $RSA1 $EC1 $EC2; do
  run "certtool request $k" certtool "${PROV[@]}" --generate-request --load-privkey "$URL;object=$k;type=private" \
    --template "$WORK/tmpl" --outfile "$WORK/$k.csr"
  run "openssl req -verify $k" openssl req -in "$WORK/$k.csr" -noout -verify
  grep -q 'self-signature verify OK' "$WORK/out" \
    || { cat "$WORK/out" >&2; fail "$k: request signature not verified"; }
  openssl req -in "$WORK/$k.csr" -noout -pubkey >"$WORK/$k.csr.pub"
  cmp -s "$WORK/$k.csr.pub" "$(pubkey "$k")" || fail "$k: request carries another public key"
  # Negative control: a damaged request does not verify.
  openssl req -in "$WORK/$k.csr" -outform DER -out "$WORK/$k.csr.der"
  sz=$(stat -c %s "$WORK/$k.csr.der")
  b=$(od -An -tu1 -j$((sz - 5)) -N1 "$WORK/$k.csr.der" | tr -d ' ')   # flip that byte's bits
  printf "$(printf '\\%03o' $((b ^ 0xff)))" | env -u LD_PRELOAD dd of="$WORK/$k.csr.der" bs=1 seek=$((sz - 5)) conv=notrunc status=none
  # (openssl 3.0 `req -verify` exits 0 even on a bad signature: judge by its message.)
  openssl req -inform DER -in "$WORK/$k.csr.der" -noout -verify >"$WORK/out" 2>&1 || true
  grep -q 'verify OK' "$WORK/out" && fail "$k: a damaged request still verifies"
  ok "certtool --generate-request with $k: openssl req -verify OK, public key is $k's"
done

run "certtool self-signed" certtool "${PROV[@]}" --generate-self-signed \
  --load-privkey "$URL;object=$RSA2;type=private" --template "$WORK/tmpl" --outfile "$WORK/self.pem"
run "verify self-signed" openssl verify -check_ss_sig -CAfile "$WORK/self.pem" "$WORK/self.pem"
openssl x509 -in "$WORK/self.pem" -noout -pubkey | cmp -s - "$(pubkey $RSA2)" || fail "self-signed: wrong key"
ok "certtool --generate-self-signed with $RSA2: self-signature verified by openssl"
pass
