#!/usr/bin/env bash
# The OpenSSL 3 pkcs11-provider (Debian: pkcs11-provider, in bookworm-backports;
# scripts/install-deps.sh installs it when that suite is reachable). Skipped
# (77) when it is not installed. Keys addressed by RFC 7512 URI, no engine:
#   1. pkcs11-module-path = libkvp11.so (built here)
#   2. pkcs11-module-path = p11-kit-proxy.so with kvp11 installed system-wide
#      (p11kit_lib.sh; root only, otherwise this half is skipped and said so)
# Each: pkeyutl -sign (RSA, EC), req -new -x509, cms -sign, cms -decrypt,
# verified with plain openssl.
#
# Quirk: with a SoftHSM2-backed key, pkcs11-provider's C_Finalize from
# OPENSSL_cleanup (an atexit handler) reaches SoftHSM2 after its own OpenSSL
# state is gone and crashes (SIGSEGV in SoftHSM2's C_CloseSession, called by
# kvp11's C_Finalize), as SoftHSM2 does on its own: "no-deinit" is needed.
# "no-operation-state" is not (kvp11 has no C_GetOperationState).
. "$(dirname "$0")/common.sh"
. "$(dirname "$0")/p11kit_lib.sh"
need openssl
MODDIR=$(openssl version -m | sed -n 's/^MODULESDIR: "\(.*\)"$/\1/p')
PROVIDER=${PKCS11_PROVIDER:-$MODDIR/pkcs11.so}
[ -f "$PROVIDER" ] || skip "OpenSSL pkcs11-provider not installed ($PROVIDER; package pkcs11-provider from bookworm-backports)"
QUIRKS=${PROVIDER_QUIRKS-no-deinit}

# mkcnf FILE MODULE: an OpenSSL configuration loading the default and pkcs11 providers.
mkcnf() {
  cat >"$1" <<EOF
openssl_conf = openssl_init
[openssl_init]
providers = provider_sect
[provider_sect]
default = default_sect
pkcs11 = pkcs11_sect
[default_sect]
activate = 1
[pkcs11_sect]
module = $PROVIDER
pkcs11-module-path = $2
${QUIRKS:+pkcs11-module-quirks = $QUIRKS}
activate = 1
EOF
}
sw() { OPENSSL_CONF=/dev/null openssl "$@"; }

mkdata
M=$WORK/data.txt
# checks NAME CNF: the whole set through the provider configured by CNF.
checks() {
  local name=$1 cnf=$2 k h
  prov() { OPENSSL_CONF=$cnf openssl "$@"; }
  for k in $RSA1 $EC1; do
    h=$(hash_of "$k")
    sw dgst "-$h" -binary "$M" >"$WORK/dgst"
    run "$name: pkeyutl -sign $k" prov pkeyutl -sign -inkey "$(key_uri "$k")" -pkeyopt "digest:$h" \
      -in "$WORK/dgst" -out "$WORK/sig"
    run "$name: verify $k" sw pkeyutl -verify -pubin -inkey "$(pubkey "$k")" -pkeyopt "digest:$h" \
      -in "$WORK/dgst" -sigfile "$WORK/sig"
    echo x >>"$WORK/sig"
    must_fail "$name: verify a damaged $k signature" sw pkeyutl -verify -pubin -inkey "$(pubkey "$k")" \
      -pkeyopt "digest:$h" -in "$WORK/dgst" -sigfile "$WORK/sig"
    ok "$name: pkeyutl -sign $k, verified in software"
  done

  run "$name: req -x509" prov req -new -x509 -key "$(key_uri $EC1)" -subj "/CN=provider test $$" -days 1 \
    -out "$WORK/self.pem"
  run "$name: self-signature" sw verify -check_ss_sig -CAfile "$WORK/self.pem" "$WORK/self.pem"
  sw x509 -in "$WORK/self.pem" -noout -pubkey | cmp -s - "$(pubkey $EC1)" || fail "$name: req -x509 used another key"
  ok "$name: req -new -x509 with $EC1, self-signature verified"

  for k in $RSA1 $EC1; do
    run "$name: cms -sign $k" prov cms -sign -binary -md sha256 -inkey "$(key_uri "$k")" -signer "$CERTS/$k.pem" \
      -in "$M" -out "$WORK/s.smime"
    run "$name: cms -verify $k" sw cms -verify -binary -CAfile "$CERTS/$k.pem" -in "$WORK/s.smime" -out "$WORK/v"
    cmp -s "$M" "$WORK/v" || fail "$name: $k verified content differs"
    ok "$name: cms -sign with $k, verified in software"
  done

  for pad in pkcs1 oaep; do
    local kopt=(); [ $pad = oaep ] && kopt=(-keyopt rsa_padding_mode:oaep)
    run "$name: cms -encrypt ($pad)" sw cms -encrypt -binary -aes256 -recip "$CERTS/$RSA1.pem" "${kopt[@]}" \
      -in "$M" -out "$WORK/e.smime"
    run "$name: cms -decrypt ($pad)" prov cms -decrypt -binary -inkey "$(key_uri $RSA1)" \
      -recip "$CERTS/$RSA1.pem" -in "$WORK/e.smime" -out "$WORK/d"
    cmp -s "$M" "$WORK/d" || fail "$name: decrypted content differs ($pad)"
    ok "$name: cms -decrypt ($pad) with $RSA1"
  done
}

mkcnf "$WORK/direct.cnf" "$KVP11_MODULE"
checks "provider+libkvp11.so" "$WORK/direct.cnf"

if [ "$(id -u)" -ne 0 ] || ! command -v p11-kit >/dev/null 2>&1; then
  echo "NOTE: p11-kit-proxy half skipped (needs root and p11-kit)"
  pass
fi
p11kit_need_system
PROXY=$(pkg-config --variable proxy_module p11-kit-1 2>/dev/null || true)
[ -f "${PROXY:-/nonexistent}" ] || { echo "NOTE: p11-kit-proxy.so absent, proxy half skipped"; pass; }
p11kit_sys_install
mkcnf "$WORK/proxy.cnf" "$PROXY"
checks "provider+p11-kit-proxy" "$WORK/proxy.cnf"
pass
