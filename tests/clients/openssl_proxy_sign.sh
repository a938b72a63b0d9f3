#!/usr/bin/env bash
# OpenSSL pkcs11 engine (libp11) WITHOUT PKCS11_MODULE_PATH: libp11 then loads
# p11-kit-proxy.so, which loads every module registered with p11-kit, kvp11
# among them once installed (p11kit_lib.sh: installs into the system, root only,
# undone on exit). Keys are addressed by RFC 7512 URI only:
#   openssl pkeyutl -sign                       (each key)
#   openssl req -new -x509 -key <uri>           (self-signed CA, RSA and EC)
#   openssl x509 -req -CA ... -CAkey <uri>      (a certificate issued by that CA)
# every result verified with plain openssl (OPENSSL_CONF=/dev/null, no engine).
. "$(dirname "$0")/common.sh"
. "$(dirname "$0")/p11kit_lib.sh"
p11kit_need_system
need openssl
need_engine
unset PKCS11_MODULE_PATH
export OPENSSL_CONF=/dev/null
PROXY=$(pkg-config --variable proxy_module p11-kit-1 2>/dev/null || true)
[ -n "$PROXY" ] || PROXY=$(dirname "$P11KIT_MODDIR")/p11-kit-proxy.so
[ -f "$PROXY" ] || skip "p11-kit-proxy.so not installed (p11-kit-modules)"
KEYS=${PROXY_KEYS:-$RSA1 $EC1}

p11kit_sys_install

mkdata
ENG=(-engine pkcs11)
for k in $KEYS; do
  h=$(hash_of "$k")
  openssl dgst "-$h" -binary "$WORK/data.txt" >"$WORK/dgst"
  run "pkeyutl -sign $k" openssl pkeyutl -sign "${ENG[@]}" -keyform engine -inkey "$(key_uri "$k")" \
    -pkeyopt "digest:$h" -in "$WORK/dgst" -out "$WORK/sig"
  run "pkeyutl -verify $k" openssl pkeyutl -verify -pubin -inkey "$(pubkey "$k")" -pkeyopt "digest:$h" \
    -in "$WORK/dgst" -sigfile "$WORK/sig"
  grep -q 'Signature Verified Successfully' "$WORK/out" || fail "$k: signature not verified"
  echo other | openssl dgst "-$h" -binary >"$WORK/dgst2"
  must_fail "verify $k over other data" openssl pkeyutl -verify -pubin -inkey "$(pubkey "$k")" \
    -pkeyopt "digest:$h" -in "$WORK/dgst2" -sigfile "$WORK/sig"
  ok "pkeyutl -sign $k through p11-kit-proxy, verified in software"
done

# A software key whose certificate request the kvp11 key will sign.
run "leaf key" openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$WORK/leaf.key"
run "leaf request" openssl req -new -key "$WORK/leaf.key" -subj "/CN=leaf $$" -out "$WORK/leaf.csr"

for k in $KEYS; do
  # Self-signed CA certificate made with the kvp11 key.
  run "req -x509 $k" openssl req -new -x509 "${ENG[@]}" -keyform engine -key "$(key_uri "$k")" \
    -subj "/CN=kvp11 proxy CA $k $$" -days 2 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$WORK/ca-$k.pem"
  run "verify self-signature $k" openssl verify -check_ss_sig -CAfile "$WORK/ca-$k.pem" "$WORK/ca-$k.pem"
  # It carries the public key of the registered certificate (so the kvp11 key signed it).
  openssl x509 -in "$WORK/ca-$k.pem" -noout -pubkey >"$WORK/ca-$k.pub"
  cmp -s "$WORK/ca-$k.pub" "$(pubkey "$k")" || fail "$k: req -x509 certificate has another public key"
  ok "req -new -x509 with $k: self-signature verifies, public key is $k's"

  # The same kvp11 key as the issuer of a certificate for the software key.
  run "x509 -req $k" openssl x509 -req "${ENG[@]}" -in "$WORK/leaf.csr" -CA "$WORK/ca-$k.pem" \
    -CAkey "$(key_uri "$k")" -CAkeyform engine -set_serial "0x$(openssl rand -hex 8)" -days 1 -sha256 \
    -out "$WORK/leaf-$k.pem"
  run "verify issued $k" openssl verify -CAfile "$WORK/ca-$k.pem" "$WORK/leaf-$k.pem"
  grep -q ': OK$' "$WORK/out" || fail "$k: issued certificate not verified"
  # Negative control: another issuer's certificate does not verify it.
  must_fail "issued $k against the partner CA" openssl verify -CAfile "$CERTS/$PARTNER.pem" "$WORK/leaf-$k.pem"
  ok "x509 -req -CAkey <uri> with $k: issued certificate verifies against the CA (and only it)"
done
pass
