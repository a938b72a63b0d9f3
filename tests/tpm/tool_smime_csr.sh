#!/usr/bin/env bash
# tests/tpm/tool_smime_csr.sh: `kvp11 smime` and `kvp11 csr` with keys in the TPM (fixture account
# "kvp11 default", libkvp11.so on tpm2-pkcs11), each result checked in software with openssl:
#   smime sign     rsa2048 rsa3072 p256 p384 (sha256/384/512), openssl cms -verify
#   smime decrypt  RSA key transport PKCS#1 v1.5 and OAEP, AES-CBC and AES-GCM
#   smime seal     signed by rsa2048, encrypted to the software partner, opened by openssl
#   smime open     signed by the partner, encrypted to rsa3072, opened by kvp11 (--from partner)
#   csr            --cert-name (RSA PKCS#1, RSA PSS, P-256, P-384) and --hsm tpm --key:
#                  openssl req -verify, public key equal to the certificate's
. "$(dirname "$0")/common.sh"
command -v openssl >/dev/null || skip "openssl not installed"
W=${KVP11_TPM_TMP:-${TMPDIR:-/tmp}}/tool_smime_csr
rm -rf "$W"; mkdir -p "$W"
C=$KVP11_ENV/certs
N=0
fail() {
  echo "FAIL: $*" >&2
  [ -s "$W/err" ] && sed 's/^/    /' "$W/err" >&2
  tail -n 15 "$KVP11_ENV/kvp11.log" >&2 2>/dev/null || true
  exit 1
}
ok() { N=$((N + 1)); echo "ok $N - $*"; }
kvp() { "$KVP11_TOOL" -c "$KVP11_CONF" "$@" 2>"$W/err"; }
sw() { OPENSSL_CONF=/dev/null openssl "$@" 2>"$W/err"; }
{ echo "kvp11 TPM S/MIME test $$"; head -c 2000 /dev/urandom | base64; } >"$W/msg"

for k in rsa2048 rsa3072 p256 p384; do
  for d in sha256 sha384 sha512; do
    kvp smime sign --cert "$k" --digest "$d" --binary <"$W/msg" >"$W/signed" || fail "smime sign $k $d"
    sw cms -verify -binary -CAfile "$C/$k.pem" -in "$W/signed" -out "$W/v" || fail "verify $k $d"
    cmp -s "$W/msg" "$W/v" || fail "smime sign $k $d: content differs"
    ! sw cms -verify -binary -CAfile "$C/partner.pem" -in "$W/signed" -out "$W/v" ||
      fail "$k $d: verified against the wrong certificate"
  done
  ok "smime sign with $k (sha256/384/512), verified by openssl, refused with the wrong anchor"
done

for k in rsa2048 rsa3072; do
  for c in aes-256-cbc aes-256-gcm; do
    for pad in pkcs1 oaep; do
      kopt=(); [ $pad = oaep ] && kopt=(-keyopt rsa_padding_mode:oaep)
      sw cms -encrypt -binary "-$c" -recip "$C/$k.pem" "${kopt[@]}" -in "$W/msg" -out "$W/enc" ||
        fail "openssl cms -encrypt to $k"
      kvp smime decrypt --cert "$k" <"$W/enc" >"$W/dec" || fail "smime decrypt $k $c $pad"
      cmp -s "$W/msg" "$W/dec" || fail "smime decrypt $k $c $pad: content differs"
    done
  done
  ok "smime decrypt with $k (AES-CBC/GCM, RSA PKCS#1 v1.5 and OAEP key transport)"
done
sw cms -encrypt -binary -aes256 -recip "$C/partner.pem" -in "$W/msg" -out "$W/enc" || fail "encrypt to partner"
! kvp smime decrypt --cert rsa2048 <"$W/enc" >"$W/dec" || fail "rsa2048 decrypted a message for the partner"
ok "a message for the partner is not decrypted with rsa2048"

kvp smime seal --cert rsa2048 --to partner --binary <"$W/msg" >"$W/sealed" || fail "smime seal"
sw cms -decrypt -binary -recip "$C/partner.pem" -inkey "$C/partner.key" -in "$W/sealed" -out "$W/s" ||
  fail "partner decrypts the sealed message"
sw cms -verify -binary -CAfile "$C/rsa2048.pem" -in "$W/s" -out "$W/v" || fail "partner verifies"
cmp -s "$W/msg" "$W/v" || fail "seal: content differs"
ok "smime seal (rsa2048 signs, partner decrypts and verifies in software)"

sw cms -sign -binary -signer "$C/partner.pem" -inkey "$C/partner.key" -in "$W/msg" -out "$W/ps" ||
  fail "partner signs"
sw cms -encrypt -binary -aes256 -recip "$C/rsa3072.pem" -keyopt rsa_padding_mode:oaep -in "$W/ps" \
  -out "$W/pe" || fail "partner encrypts to rsa3072"
kvp smime open --cert rsa3072 --from partner --binary <"$W/pe" >"$W/o" || fail "smime open"
cmp -s "$W/msg" "$W/o" || fail "open: content differs"
ok "smime open (partner's message to rsa3072: decrypted in the TPM, signature checked)"

# csr_check FILE KEY: the request's self-signature verifies and it carries KEY's public key.
csr_check() {
  sw req -in "$1" -noout -verify >"$W/out" || fail "openssl req -verify $1"
  grep -q 'verify OK' "$W/out" "$W/err" || fail "$1: request signature not verified"
  sw req -in "$1" -noout -pubkey >"$W/csr.pub" || fail "public key of $1"
  sw x509 -in "$C/$2.pem" -noout -pubkey >"$W/cert.pub" || fail "public key of $2"
  cmp -s "$W/csr.pub" "$W/cert.pub" || fail "$1 carries another public key than $2"
}
kvp csr --cert-name rsa2048 --subject "/CN=tpm.example/O=kvp11" --san DNS:tpm.example --out "$W/r.csr" ||
  fail "csr rsa2048"
csr_check "$W/r.csr" rsa2048
kvp csr --cert-name rsa3072 --subject "/CN=tpm pss" --pss --digest sha384 --out "$W/p.csr" || fail "csr --pss"
csr_check "$W/p.csr" rsa3072
sw req -in "$W/p.csr" -noout -text >"$W/t" && grep -q 'rsassaPss' "$W/t" || fail "csr --pss is not RSASSA-PSS"
kvp csr --cert-name p256 --subject "/CN=tpm p256" --out "$W/e.csr" || fail "csr p256"
csr_check "$W/e.csr" p256
kvp csr --hsm tpm --key p384 --subject "/CN=tpm p384" --digest sha384 --out "$W/h.csr" || fail "csr --hsm tpm --key p384"
csr_check "$W/h.csr" p384
# negative control: a request of one key does not pass as another's
! cmp -s <(sw req -in "$W/e.csr" -noout -pubkey) <(sw x509 -in "$C/p384.pem" -noout -pubkey) ||
  fail "csr check cannot tell keys apart"
ok "kvp11 csr: rsa2048, rsa3072 (PSS), p256, --hsm tpm --key p384: signatures and keys verified"
rm -rf "$W"
echo "PASS: tool_smime_csr ($N checks)"
