#!/usr/bin/env bash
# S/MIME with `openssl cms` and the pkcs11 engine WITHOUT PKCS11_MODULE_PATH:
# libp11 loads p11-kit-proxy.so, which loads kvp11 once it is installed
# system-wide (p11kit_lib.sh, root only, undone on exit). RFC 7512 URIs only.
#   cms -sign (RSA and EC keys)  -> cms -verify in software
#   cms -encrypt in software     -> cms -decrypt with the kvp11 RSA key (PKCS#1 v1.5 and OAEP)
. "$(dirname "$0")/common.sh"
. "$(dirname "$0")/p11kit_lib.sh"
p11kit_need_system
need openssl
need_engine
unset PKCS11_MODULE_PATH
export OPENSSL_CONF=/dev/null
PROXY=$(pkg-config --variable proxy_module p11-kit-1 2>/dev/null || true)
[ -f "${PROXY:-/nonexistent}" ] || skip "p11-kit-proxy.so not installed (p11-kit-modules)"
SIGN_KEYS=${PROXY_SIGN_KEYS:-$RSA1 $EC1}
DECRYPT_KEYS=${PROXY_DECRYPT_KEYS:-$RSA1}

# Before the install, p11-kit-proxy does not know the token: signing must fail
# (this also proves the later successes come through the proxy).
mkdata
M=$WORK/data.txt
must_fail "cms -sign before install" openssl cms -sign -binary -engine pkcs11 -keyform engine \
  -inkey "$(key_uri $RSA1)" -signer "$CERTS/$RSA1.pem" -in "$M" -out "$WORK/signed.smime"
ok "without kvp11 installed the proxy has no token '$TOKEN'"

p11kit_sys_install

for k in $SIGN_KEYS; do
  for mode in opaque detached; do
    det=(-nodetach); [ $mode = detached ] && det=()
    run "cms -sign $k $mode" openssl cms -sign -binary -md sha256 "${det[@]}" -engine pkcs11 -keyform engine \
      -inkey "$(key_uri "$k")" -signer "$CERTS/$k.pem" -in "$M" -out "$WORK/signed.smime"
    vin=(); [ $mode = detached ] && vin=(-content "$M")
    run "cms -verify $k $mode" openssl cms -verify -binary -CAfile "$CERTS/$k.pem" "${vin[@]}" \
      -in "$WORK/signed.smime" -out "$WORK/verified"
    cmp -s "$M" "$WORK/verified" || fail "$k $mode: verified content differs"
    must_fail "cms -verify $k with the wrong CA" openssl cms -verify -binary -CAfile "$(partner_cert)" \
      "${vin[@]}" -in "$WORK/signed.smime" -out "$WORK/verified"
    ok "cms -sign ($mode) with $k through p11-kit-proxy, verified in software (refused with the wrong CA)"
  done
done

for k in $DECRYPT_KEYS; do
  for pad in pkcs1 oaep; do
    kopt=(); [ $pad = oaep ] && kopt=(-keyopt rsa_padding_mode:oaep)
    run "cms -encrypt to $k ($pad)" openssl cms -encrypt -binary -aes256 -recip "$CERTS/$k.pem" "${kopt[@]}" \
      -in "$M" -out "$WORK/enc.smime"
    run "cms -decrypt $k ($pad)" openssl cms -decrypt -binary -engine pkcs11 -keyform engine \
      -inkey "$(key_uri "$k")" -recip "$CERTS/$k.pem" -in "$WORK/enc.smime" -out "$WORK/dec"
    cmp -s "$M" "$WORK/dec" || fail "$k ($pad): decrypted content differs"
    ok "cms -decrypt ($pad key transport) with $k through p11-kit-proxy"
  done
done
# A message for the partner is not decryptable with our key.
run "cms -encrypt to partner" openssl cms -encrypt -binary -aes256 -in "$M" -out "$WORK/p.smime" "$(partner_cert)"
must_fail "decrypt a message for the partner" openssl cms -decrypt -binary -engine pkcs11 -keyform engine \
  -inkey "$(key_uri $RSA1)" -recip "$CERTS/$RSA1.pem" -in "$WORK/p.smime" -out "$WORK/x"
ok "a message for the partner is not decryptable with $RSA1"
pass
