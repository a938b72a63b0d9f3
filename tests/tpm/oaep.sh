#!/usr/bin/env bash
# tests/tpm/oaep.sh: RSA-OAEP with SHA-384 and SHA-512 (MGF1 of the same hash) through
# libkvp11.so on the TPM keys: OpenSSL encrypts to the certificate, pkcs11-tool decrypts.
# (tests/clients/pkcs11tool_decrypt.sh covers PKCS#1 v1.5, OAEP SHA-1 and SHA-256.) Then a
# ciphertext of the wrong length and one with bad padding are refused, and the key decrypts again.
. "$(dirname "$0")/common.sh"
# shellcheck source=../clients/common.sh
. "$KVP11_SOURCE_DIR/tests/clients/common.sh"
need pkcs11-tool openssl

head -c 40 /dev/urandom >"$WORK/secret"
for k in $RSA_KEYS; do
  id=$(key_id "$k")
  pub=$(pubkey "$k")
  for h in sha384 sha512; do
    H=${h^^}
    run "encrypt OAEP $H to $k" openssl pkeyutl -encrypt -pubin -inkey "$pub" -pkeyopt rsa_padding_mode:oaep \
      -pkeyopt "rsa_oaep_md:$h" -pkeyopt "rsa_mgf1_md:$h" -in "$WORK/secret" -out "$WORK/ct"
    run "decrypt $k OAEP $H" p11 --decrypt --id "$id" -m RSA-PKCS-OAEP --hash-algorithm "$H" \
      --mgf "MGF1-$H" -i "$WORK/ct" -o "$WORK/pt"
    cmp -s "$WORK/secret" "$WORK/pt" || fail "$k OAEP $H: plaintext differs"
    ok "$k RSA-PKCS-OAEP ($H) decrypt"
  done
  head -c 17 /dev/urandom >"$WORK/short"
  must_fail "$k: 17-byte ciphertext" p11 --decrypt --id "$id" -m RSA-PKCS -i "$WORK/short" -o "$WORK/pt"
  # a modulus-sized value below the modulus that is no PKCS#1 block
  bytes=$(( $(openssl pkey -pubin -in "$pub" -noout -text | sed -n 's/.*Public-Key: (\([0-9]*\) bit).*/\1/p') / 8 ))
  { printf '\x00\x07'; head -c $((bytes - 2)) /dev/urandom; } >"$WORK/bad"
  must_fail "$k: bad padding" p11 --decrypt --id "$id" -m RSA-PKCS -i "$WORK/bad" -o "$WORK/pt"
  run "encrypt PKCS#1 to $k" openssl pkeyutl -encrypt -pubin -inkey "$pub" -in "$WORK/secret" -out "$WORK/ct"
  run "decrypt $k after the refusals" p11 --decrypt --id "$id" -m RSA-PKCS -i "$WORK/ct" -o "$WORK/pt"
  cmp -s "$WORK/secret" "$WORK/pt" || fail "$k: plaintext differs after the refusals"
  ok "$k: short and badly padded ciphertexts refused, the key decrypts again"
done
pass
