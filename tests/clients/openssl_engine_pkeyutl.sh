#!/usr/bin/env bash
# OpenSSL pkcs11 engine (libp11) on libkvp11.so via PKCS11_MODULE_PATH:
# `openssl pkeyutl -sign` with the registered private keys, verified in software.
. "$(dirname "$0")/common.sh"
need openssl
need_engine
export PKCS11_MODULE_PATH=$KVP11_MODULE
export OPENSSL_CONF=/dev/null

mkdata
for k in $ALL_KEYS; do
  pub=$(pubkey "$k")
  case $k in p384) h=sha384 ;; *) h=sha256 ;; esac
  openssl dgst "-$h" -binary "$WORK/data.txt" >"$WORK/dgst"
  run "pkeyutl -sign $k" openssl pkeyutl -sign -engine pkcs11 -keyform engine -inkey "$(key_uri "$k")" \
    -pkeyopt "digest:$h" -in "$WORK/dgst" -out "$WORK/sig"
  [ -s "$WORK/sig" ] || fail "$k: empty signature"
  run "pkeyutl -verify $k" openssl pkeyutl -verify -pubin -inkey "$pub" -pkeyopt "digest:$h" \
    -in "$WORK/dgst" -sigfile "$WORK/sig"
  grep -q 'Signature Verified Successfully' "$WORK/out" || fail "$k: signature not verified"
  # The same signature over other data must not verify.
  echo other | openssl dgst "-$h" -binary >"$WORK/dgst2"
  must_fail "verify $k over other data" openssl pkeyutl -verify -pubin -inkey "$pub" -pkeyopt "digest:$h" \
    -in "$WORK/dgst2" -sigfile "$WORK/sig"
  ok "pkeyutl -sign $k ($h) verified with the certificate's key"
done

# RSA-PSS through the engine.
openssl dgst -sha256 -binary "$WORK/data.txt" >"$WORK/dgst"
run "pkeyutl -sign PSS" openssl pkeyutl -sign -engine pkcs11 -keyform engine -inkey "$(key_uri rsa2048)" \
  -pkeyopt digest:sha256 -pkeyopt rsa_padding_mode:pss -pkeyopt rsa_pss_saltlen:32 \
  -in "$WORK/dgst" -out "$WORK/sig"
run "pkeyutl -verify PSS" openssl pkeyutl -verify -pubin -inkey "$(pubkey rsa2048)" -pkeyopt digest:sha256 \
  -pkeyopt rsa_padding_mode:pss -pkeyopt rsa_pss_saltlen:32 -in "$WORK/dgst" -sigfile "$WORK/sig"
ok "pkeyutl -sign rsa2048 RSA-PSS verified"

pass
