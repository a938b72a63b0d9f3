#!/usr/bin/env bash
# Data encrypted by openssl to a registered certificate is decrypted by
# pkcs11-tool through libkvp11.so (RSA-PKCS and RSA-PKCS-OAEP).
. "$(dirname "$0")/common.sh"
need pkcs11-tool openssl

# hsm_oaep256 LABEL CT: does the fixture's HSM itself decrypt OAEP SHA-256?
HSM_MODULE=${KVP11_HSM_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
[ -f "$HSM_MODULE" ] || HSM_MODULE=
# Key Vault does OAEP SHA-256 itself: no HSM excuse, a failure is a failure.
if is_keyvault; then HSM_MODULE=; fi
hsm_oaep256() {
  pkcs11-tool --module "$HSM_MODULE" --token-label kvp11-test --login --pin "$(cat "$KVP11_ENV/hsm.pin")" \
    --decrypt --label "$1" -m RSA-PKCS-OAEP --hash-algorithm SHA256 --mgf MGF1-SHA256 \
    -i "$2" -o "$WORK/hsm.pt" >/dev/null 2>&1 && cmp -s "$WORK/secret" "$WORK/hsm.pt"
}

head -c 48 /dev/urandom >"$WORK/secret"
for k in $RSA_KEYS; do
  id=$(key_id "$k")
  pub=$(pubkey "$k")

  run "encrypt PKCS#1 v1.5" openssl pkeyutl -encrypt -pubin -inkey "$pub" \
    -pkeyopt rsa_padding_mode:pkcs1 -in "$WORK/secret" -out "$WORK/ct"
  run "decrypt $k RSA-PKCS" p11 --decrypt --id "$id" -m RSA-PKCS -i "$WORK/ct" -o "$WORK/pt"
  cmp -s "$WORK/secret" "$WORK/pt" || fail "$k RSA-PKCS: plaintext differs"
  ok "$k RSA-PKCS decrypt"

  run "encrypt OAEP SHA-1" openssl pkeyutl -encrypt -pubin -inkey "$pub" \
    -pkeyopt rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:sha1 -pkeyopt rsa_mgf1_md:sha1 \
    -in "$WORK/secret" -out "$WORK/ct"
  run "decrypt $k RSA-PKCS-OAEP SHA-1" p11 --decrypt --id "$id" -m RSA-PKCS-OAEP \
    --hash-algorithm SHA-1 --mgf MGF1-SHA1 -i "$WORK/ct" -o "$WORK/pt"
  cmp -s "$WORK/secret" "$WORK/pt" || fail "$k RSA-PKCS-OAEP SHA-1: plaintext differs"
  ok "$k RSA-PKCS-OAEP (SHA-1) decrypt"

  run "encrypt OAEP SHA-256" openssl pkeyutl -encrypt -pubin -inkey "$pub" \
    -pkeyopt rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:sha256 -pkeyopt rsa_mgf1_md:sha256 \
    -in "$WORK/secret" -out "$WORK/ct"
  if p11 --decrypt --id "$id" -m RSA-PKCS-OAEP --hash-algorithm SHA256 --mgf MGF1-SHA256 \
       -i "$WORK/ct" -o "$WORK/pt" >"$WORK/out" 2>&1; then
    cmp -s "$WORK/secret" "$WORK/pt" || fail "$k RSA-PKCS-OAEP SHA-256: plaintext differs"
    ok "$k RSA-PKCS-OAEP (SHA-256) decrypt"
  elif [ -n "$HSM_MODULE" ] && ! hsm_oaep256 "$k" "$WORK/ct"; then
    # SoftHSM2 2.6 implements OAEP with SHA-1 only; a pass-through cannot do better.
    grep -Eq 'CKR_(MECHANISM_PARAM_INVALID|ARGUMENTS_BAD|MECHANISM_INVALID)' "$WORK/out" \
      || { cat "$WORK/out" >&2; fail "$k RSA-PKCS-OAEP SHA-256: unexpected error"; }
    ok "$k RSA-PKCS-OAEP (SHA-256) refused cleanly: the HSM itself does not support it"
  else
    cat "$WORK/out" >&2
    fail "$k RSA-PKCS-OAEP SHA-256 decrypt failed"
  fi
done

# Key Vault has OAEP with SHA-1 and SHA-256 only: SHA-384 is refused, not attempted.
if is_keyvault; then
  k=${RSA_KEYS%% *}
  run "encrypt OAEP SHA-384" openssl pkeyutl -encrypt -pubin -inkey "$(pubkey "$k")" \
    -pkeyopt rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:sha384 -pkeyopt rsa_mgf1_md:sha384 \
    -in "$WORK/secret" -out "$WORK/ct"
  must_fail "decrypt OAEP SHA-384 on Key Vault" p11 --decrypt --id "$(key_id "$k")" -m RSA-PKCS-OAEP \
    --hash-algorithm SHA384 --mgf MGF1-SHA384 -i "$WORK/ct" -o "$WORK/pt"
  grep -q 'CKR_MECHANISM_PARAM_INVALID' "$WORK/out" || { cat "$WORK/out" >&2; fail "OAEP SHA-384: expected CKR_MECHANISM_PARAM_INVALID"; }
  ok "$k RSA-PKCS-OAEP (SHA-384) refused (CKR_MECHANISM_PARAM_INVALID)"
fi

# Ciphertext for rsa2048 does not decrypt with rsa3072 (the checks above can fail).
openssl pkeyutl -encrypt -pubin -inkey "$(pubkey rsa2048)" -in "$WORK/secret" -out "$WORK/ct"
if p11 --decrypt --id "$(key_id rsa3072)" -m RSA-PKCS -i "$WORK/ct" -o "$WORK/pt" >/dev/null 2>&1 \
   && cmp -s "$WORK/secret" "$WORK/pt"; then
  fail "rsa3072 decrypted a ciphertext made for rsa2048"
fi
ok "wrong key does not recover the plaintext"
pass
