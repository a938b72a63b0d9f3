#!/usr/bin/env bash
# pkcs11-tool signs by --id through libkvp11.so with every RSA and EC signing
# mechanism; each signature is verified by openssl against the certificate.
. "$(dirname "$0")/common.sh"
need pkcs11-tool openssl

mkdata
D=$WORK/data.txt
sign() { # sign ID MECH IN OUT [extra pkcs11-tool args]
  local id=$1 m=$2 in=$3 out=$4; shift 4
  run "sign $m" p11 --sign --id "$id" -m "$m" -i "$in" -o "$out" "$@"
  [ -s "$out" ] || fail "$m produced an empty signature"
}
# (dd without the ASan runtime that sanitizer builds preload: it aborts in dd's aligned_alloc)
# flip every bit of byte 10 (writing a fixed value left the file unchanged when
# the byte already had it, 1 run in 256)
corrupt() {
  cp "$1" "$2"
  local b; b=$(od -An -tu1 -j10 -N1 "$2" | tr -d ' ')
  printf "$(printf '\\%03o' $((b ^ 0xff)))" | env -u LD_PRELOAD dd of="$2" bs=1 seek=10 conv=notrunc status=none
}

for k in $RSA_KEYS; do
  id=$(key_id "$k")
  pub=$(pubkey "$k")
  bits=$(openssl pkey -pubin -in "$pub" -noout -text | sed -n 's/.*Public-Key: (\([0-9]*\) bit).*/\1/p')
  for h in sha256 sha384 sha512; do
    H=${h^^}
    # CKM_SHAxxx_RSA_PKCS: the token hashes.
    sign "$id" "$H-RSA-PKCS" "$D" "$WORK/sig"
    [ "$(stat -c %s "$WORK/sig")" -eq $((bits / 8)) ] || fail "$k $H-RSA-PKCS: signature length"
    run "verify $k $H-RSA-PKCS" openssl dgst "-$h" -verify "$pub" -signature "$WORK/sig" "$D"
    corrupt "$WORK/sig" "$WORK/bad"
    must_fail "verify corrupted $k $H-RSA-PKCS" openssl dgst "-$h" -verify "$pub" -signature "$WORK/bad" "$D"
    ok "$k $H-RSA-PKCS"
    # CKM_SHAxxx_RSA_PKCS_PSS, salt = hash length.
    # (pkcs11-tool derives hashAlg, MGF1 and salt length from the mechanism.)
    sign "$id" "$H-RSA-PKCS-PSS" "$D" "$WORK/sig"
    run "verify $k $H-RSA-PKCS-PSS" openssl dgst "-$h" -sigopt rsa_padding_mode:pss \
      -sigopt rsa_pss_saltlen:digest -verify "$pub" -signature "$WORK/sig" "$D"
    ok "$k $H-RSA-PKCS-PSS"
  done
  # CKM_RSA_PKCS on a DER DigestInfo (what TLS / CMS stacks send).
  openssl dgst -sha256 -binary "$D" >"$WORK/dgst"
  printf '\x30\x31\x30\x0d\x06\x09\x60\x86\x48\x01\x65\x03\x04\x02\x01\x05\x00\x04\x20' >"$WORK/di"
  cat "$WORK/dgst" >>"$WORK/di"
  sign "$id" RSA-PKCS "$WORK/di" "$WORK/sig"
  run "verify $k RSA-PKCS" openssl pkeyutl -verify -pubin -inkey "$pub" -pkeyopt digest:sha256 \
    -in "$WORK/dgst" -sigfile "$WORK/sig"
  ok "$k RSA-PKCS (DigestInfo SHA-256)"
  # CKM_RSA_PKCS_PSS on a digest.
  sign "$id" RSA-PKCS-PSS "$WORK/dgst" "$WORK/sig" --hash-algorithm SHA256 --mgf MGF1-SHA256
  run "verify $k RSA-PKCS-PSS" openssl pkeyutl -verify -pubin -inkey "$pub" -pkeyopt digest:sha256 \
    -pkeyopt rsa_padding_mode:pss -pkeyopt rsa_pss_saltlen:digest -in "$WORK/dgst" -sigfile "$WORK/sig"
  ok "$k RSA-PKCS-PSS (SHA-256, MGF1-SHA256, salt 32)"
done

for k in $EC_KEYS; do
  id=$(key_id "$k")
  pub=$(pubkey "$k")
  case $k in p256) h=sha256 ;; p384) h=sha384 ;; p521) h=sha512 ;; esac
  # CKM_ECDSA on a digest; DER output for openssl.
  openssl dgst "-$h" -binary "$D" >"$WORK/dgst"
  sign "$id" ECDSA "$WORK/dgst" "$WORK/sig" --signature-format openssl
  run "verify $k ECDSA" openssl pkeyutl -verify -pubin -inkey "$pub" -in "$WORK/dgst" -sigfile "$WORK/sig"
  corrupt "$WORK/sig" "$WORK/bad"
  must_fail "verify corrupted $k ECDSA" openssl pkeyutl -verify -pubin -inkey "$pub" -in "$WORK/dgst" -sigfile "$WORK/bad"
  ok "$k ECDSA ($h digest)"
  # Raw r||s output has twice the field size.
  sign "$id" ECDSA "$WORK/dgst" "$WORK/sig"
  case $k in p256) n=64 ;; p384) n=96 ;; p521) n=132 ;; esac
  [ "$(stat -c %s "$WORK/sig")" -eq $n ] || fail "$k ECDSA raw signature is not $n bytes"
  ok "$k ECDSA r||s is $n bytes"
  # CKM_ECDSA_SHAxxx: hashed by the module.
  for hh in sha256 sha384 sha512; do
    sign "$id" "ECDSA-${hh^^}" "$D" "$WORK/sig" --signature-format openssl
    run "verify $k ECDSA-${hh^^}" openssl dgst "-$hh" -verify "$pub" -signature "$WORK/sig" "$D"
    ok "$k ECDSA-${hh^^}"
  done
done

# Key Vault (CLIENT_KEYSTORE=keyvault) signs only what its algorithms express: raw
# CKM_RSA_PKCS on input that is not a SHA-256/384/512 DigestInfo, and PSS with a salt
# other than the hash length, are refused with the documented CK_RV (the checks above
# use neither, so they run unchanged on both key stores).
if is_keyvault; then
  k=${RSA_KEYS%% *}
  id=$(key_id "$k")
  head -c 20 /dev/urandom >"$WORK/raw"
  must_fail "raw RSA-PKCS on Key Vault" p11 --sign --id "$id" -m RSA-PKCS -i "$WORK/raw" -o "$WORK/sig"
  grep -q 'CKR_DATA_INVALID' "$WORK/out" || { cat "$WORK/out" >&2; fail "raw RSA-PKCS: expected CKR_DATA_INVALID"; }
  ok "$k RSA-PKCS on a non-DigestInfo input refused (CKR_DATA_INVALID)"
  openssl dgst -sha256 -binary "$D" >"$WORK/dgst"
  must_fail "PSS salt 20 on Key Vault" p11 --sign --id "$id" -m RSA-PKCS-PSS --hash-algorithm SHA256 \
    --mgf MGF1-SHA256 --salt-len 20 -i "$WORK/dgst" -o "$WORK/sig"
  grep -q 'CKR_MECHANISM_PARAM_INVALID' "$WORK/out" || { cat "$WORK/out" >&2; fail "PSS salt 20: expected CKR_MECHANISM_PARAM_INVALID"; }
  ok "$k RSA-PKCS-PSS with salt 20 != hash length refused (CKR_MECHANISM_PARAM_INVALID)"
fi

# A signature by one key does not verify with another (the checks above can fail).
id=$(key_id rsa2048)
sign "$id" SHA256-RSA-PKCS "$D" "$WORK/sig"
must_fail "verify with the wrong key" openssl dgst -sha256 -verify "$(pubkey rsa3072)" -signature "$WORK/sig" "$D"
ok "rsa2048 signature does not verify with rsa3072"
pass
