#!/usr/bin/env bash
# S/MIME with `openssl cms` through the pkcs11 engine on libkvp11.so, loaded
# with the engine configuration hsm-config/openssl-engine.cnf: sign/verify with
# RSA and EC keys, and decrypt messages encrypted to our certificates.
. "$(dirname "$0")/common.sh"
need openssl
need_engine
: "${KVP11_SOURCE_DIR:?KVP11_SOURCE_DIR must point to the source tree}"
sed -e "s|@KVP11_MODULE@|$KVP11_MODULE|" -e "s|@PKCS11_ENGINE@|$(engine_path)|" \
  "$KVP11_SOURCE_DIR/hsm-config/openssl-engine.cnf" >"$WORK/engine.cnf"
grep -q '@' "$WORK/engine.cnf" && fail "placeholders left in the engine configuration"
eng() { OPENSSL_CONF=$WORK/engine.cnf openssl "$@"; }
sw() { OPENSSL_CONF=/dev/null openssl "$@"; }

# The trading partner: a public-only certificate of the account whose key is in software
# (certs/partner.{pem,key} of the HSM fixture). When the account has none (CLIENT_PARTNER
# empty, the Key Vault fixture), a throwaway partner is made here; it is used in software only.
if [ -n "$PARTNER" ]; then
  PCERT=$CERTS/$PARTNER.pem PKEY=$CERTS/$PARTNER.key
else
  PCERT=$WORK/partner.pem PKEY=$WORK/partner.key
  run "partner certificate" sw req -x509 -newkey rsa:2048 -nodes -keyout "$PKEY" -out "$PCERT" \
    -days 1 -subj "/CN=kvp11 client test partner"
fi

mkdata
M=$WORK/data.txt
for k in $ALL_KEYS; do
  run "cms -sign $k" eng cms -sign -binary -md sha256 -engine pkcs11 -keyform engine \
    -inkey "$(key_uri "$k")" -signer "$CERTS/$k.pem" -in "$M" -out "$WORK/signed.smime"
  run "cms -verify $k" sw cms -verify -binary -CAfile "$CERTS/$k.pem" -in "$WORK/signed.smime" -out "$WORK/verified"
  cmp -s "$M" "$WORK/verified" || fail "$k: verified content differs"
  # The signature does not verify against another certificate.
  must_fail "cms -verify $k with the wrong CA" sw cms -verify -binary -CAfile "$PCERT" \
    -in "$WORK/signed.smime" -out "$WORK/verified"
  ok "cms sign $k, verified (and refused with the wrong trust anchor)"
done

for k in $RSA_KEYS; do
  for c in aes256 aes128; do
    run "cms -encrypt to $k" sw cms -encrypt -binary "-$c" -in "$M" -out "$WORK/enc.smime" "$CERTS/$k.pem"
    run "cms -decrypt $k" eng cms -decrypt -binary -engine pkcs11 -keyform engine \
      -inkey "$(key_uri "$k")" -recip "$CERTS/$k.pem" -in "$WORK/enc.smime" -out "$WORK/dec"
    cmp -s "$M" "$WORK/dec" || fail "$k: decrypted content differs"
    ok "cms decrypt ($c, RSA key transport) with $k"
  done
  # RSA-OAEP key transport.
  run "cms -encrypt OAEP to $k" sw cms -encrypt -binary -aes256 -recip "$CERTS/$k.pem" \
    -keyopt rsa_padding_mode:oaep -in "$M" -out "$WORK/enc.smime"
  run "cms -decrypt OAEP $k" eng cms -decrypt -binary -engine pkcs11 -keyform engine \
    -inkey "$(key_uri "$k")" -recip "$CERTS/$k.pem" -in "$WORK/enc.smime" -out "$WORK/dec"
  cmp -s "$M" "$WORK/dec" || fail "$k: OAEP decrypted content differs"
  ok "cms decrypt (RSA-OAEP key transport) with $k"
done

# Full B2B round trip: sign with rsa2048 through kvp11, encrypt to the partner,
# partner decrypts and verifies in software.
run "sign" eng cms -sign -binary -engine pkcs11 -keyform engine -inkey "$(key_uri rsa2048)" \
  -signer "$CERTS/rsa2048.pem" -in "$M" -out "$WORK/s.smime"
run "encrypt to partner" sw cms -encrypt -binary -aes256 -in "$WORK/s.smime" -out "$WORK/e.smime" "$PCERT"
run "partner decrypts" sw cms -decrypt -binary -recip "$PCERT" -inkey "$PKEY" \
  -in "$WORK/e.smime" -out "$WORK/s2.smime"
run "partner verifies" sw cms -verify -binary -CAfile "$CERTS/rsa2048.pem" -in "$WORK/s2.smime" -out "$WORK/m2"
cmp -s "$M" "$WORK/m2" || fail "round trip content differs"
ok "sign + encrypt to partner, partner decrypts and verifies"

# A message for the partner cannot be decrypted with our key.
must_fail "decrypt a message for someone else" eng cms -decrypt -binary -engine pkcs11 -keyform engine \
  -inkey "$(key_uri rsa2048)" -recip "$CERTS/rsa2048.pem" -in "$WORK/e.smime" -out "$WORK/x"
ok "message for the partner not decryptable with rsa2048"
pass
