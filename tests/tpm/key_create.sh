#!/usr/bin/env bash
# tests/tpm/key_create.sh: keys created in the TPM through kvp11 (issue 18, item 3).
#   kvp11 key create --hsm tpm: RSA-2048 with --ops sign,decrypt / sign / decrypt, EC P-256 and
#     P-384 (--ops sign, the default); each key is registered as a key pair, and through
#     libkvp11.so does exactly what its --ops say: a sign key's signature verifies with the public
#     key the TPM reports (kvp11 key show --pem), a decrypt key recovers an OpenSSL ciphertext,
#     the operation it was not created for is refused.
#   C_GenerateKeyPair through libkvp11.so (pkcs11-tool --keypairgen): RSA sign-only, RSA
#     sign+decrypt and EC P-256 in the account's default_store (hsm:tpm), each then signs.
# Its own tpm2-pkcs11 store and token (kvp11-key) on the fixture's TPM, and its own registry:
# tpm2-pkcs11 writes a new key into the store's SQLite file without waiting for other processes'
# locks, so creating keys in the store the other tests read fails now and then (docs/hsm.md).
. "$(dirname "$0")/common.sh"
for t in openssl pkcs11-tool python3; do command -v $t >/dev/null || skip "$t not installed"; done
W=${KVP11_TPM_TMP:-${TMPDIR:-/tmp}}/key_create
rm -rf "$W"; mkdir -p "$W"; chmod 700 "$W"
R=$(date +%s)$$
N=0
fail() {
  echo "FAIL: $*" >&2
  [ -s "$W/err" ] && sed 's/^/    /' "$W/err" >&2
  grep -E 'ERROR|WARN' "$W/kvp11.log" 2>/dev/null | tail -n 10 >&2 || true
  exit 1
}
ok() { N=$((N + 1)); echo "ok $N - $*"; }
mkdir "$W/store"
export TPM2_PKCS11_STORE=$W/store
tpm2_ptool init --path "$W/store" >"$W/err" 2>&1 || fail "tpm2_ptool init"
tpm2_ptool addtoken --pid 1 --label kvp11-key --userpin 1234 --sopin 12345678 --path "$W/store" \
  >"$W/err" 2>&1 || fail "tpm2_ptool addtoken"
sed -e "s|^registry = .*|registry = $W/registry.db|" -e "s|^log_file = .*|log_file = $W/kvp11.log|" \
  -e "s|^token_label = .*|token_label = kvp11-key|" "$KVP11_CONF" >"$W/kvp11.conf"
export KVP11_CONF=$W/kvp11.conf
kvp() { "$KVP11_TOOL" -c "$KVP11_CONF" "$@" >"$W/out" 2>"$W/err"; }
p11() { pkcs11-tool --module "$KVP11_MODULE" --token-label "kvp11 default" "$@" >"$W/p11.out" 2>"$W/err"; }
printf 'an EDI interchange %s\n' "$R" >"$W/data"
head -c 32 /dev/urandom >"$W/secret"

# kid LABEL: CKA_ID (hex) of kvp11's private key object LABEL. pkcs11-tool 0.23 --sign/--decrypt
# select the key by --id only (with just --label they take the token's first private key).
kid() {
  p11 --list-objects --type privkey || fail "pkcs11-tool --list-objects"
  awk -v l="$1" '/Object;/ { lab = "" }
    $1 == "label:" { sub(/^[ \t]*label:[ \t]*/, ""); lab = $0 }
    $1 == "ID:" && lab == l { print $2; exit }' "$W/p11.out"
}
# can_sign LABEL PUBPEM: signs through libkvp11.so, verified with PUBPEM (and not with another
# key): RSA with PKCS#1 v1.5 and PSS (SHA-256), EC with ECDSA-SHA256. Returns 1 (the failing
# mechanism in $W/mech) when a signature is refused.
can_sign() {
  local m id fmt=() mechs=${MECHS:-"SHA256-RSA-PKCS SHA256-RSA-PKCS-PSS"} sigopt=()
  case $(openssl pkey -pubin -in "$2" -noout -text 2>/dev/null) in
    *ASN1\ OID:*) mechs=ECDSA-SHA256; fmt=(--signature-format openssl) ;;
  esac
  id=$(kid "$1"); [ -n "$id" ] || fail "no private key '$1' through libkvp11.so"
  for m in $mechs; do
    echo "$m" >"$W/mech"
    p11 --sign --id "$id" -m "$m" "${fmt[@]}" -i "$W/data" -o "$W/sig" || return 1
    sigopt=(); [ "$m" = SHA256-RSA-PKCS-PSS ] && sigopt=(-sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:digest)
    openssl dgst -sha256 "${sigopt[@]}" -verify "$2" -signature "$W/sig" "$W/data" >/dev/null 2>&1 ||
      fail "$1 $m: the signature does not verify with the TPM's public key"
    ! openssl dgst -sha256 "${sigopt[@]}" -verify "$W/other.pub.pem" -signature "$W/sig" "$W/data" >/dev/null 2>&1 ||
      fail "$1 $m: the signature verifies with another key"
  done
}
# can_decrypt LABEL PUBPEM: an OpenSSL ciphertext (OAEP SHA-256) decrypted through libkvp11.so.
can_decrypt() {
  openssl pkeyutl -encrypt -pubin -inkey "$2" -pkeyopt rsa_padding_mode:oaep \
    -pkeyopt rsa_oaep_md:sha256 -pkeyopt rsa_mgf1_md:sha256 -in "$W/secret" -out "$W/ct" || fail "encrypt to $1"
  local id; id=$(kid "$1"); [ -n "$id" ] || fail "no private key '$1' through libkvp11.so"
  p11 --decrypt --id "$id" -m RSA-PKCS-OAEP --hash-algorithm SHA256 --mgf MGF1-SHA256 \
    -i "$W/ct" -o "$W/pt" || return 1
  cmp -s "$W/secret" "$W/pt" || fail "$1: decrypted plaintext differs"
}
# pub LABEL: the key's public key as the TPM has it, in $W/LABEL.pub.pem.
pub() {
  kvp key show --hsm tpm --key "$1" --pem || fail "kvp11 key show --hsm tpm --key $1"
  cp "$W/out" "$W/$1.pub.pem"
  openssl pkey -pubin -in "$W/$1.pub.pem" -noout || fail "$1: key show --pem is not a public key"
}
openssl x509 -in "$KVP11_ENV/certs/rsa2048.pem" -noout -pubkey >"$W/other.pub.pem"

# create KEY ARGS...: kvp11 key create --hsm tpm, registered as a key pair
create() {
  local k=$1; shift
  kvp key create --hsm tpm --key "$k" "$@" || fail "kvp11 key create --hsm tpm --key $k $*"
  grep -qx "created key hsm:tpm/$k" "$W/out" || fail "create $k: $(cat "$W/out")"
  grep -q "^registered: '$k'" "$W/out" || fail "create $k not registered: $(cat "$W/out")"
  pub "$k"
}

# Each case runs in a subshell: a failing case is reported and the others still run.
FAILED=()
case_run() { # case_run DESC FUNCTION
  if ( "$2" ); then ok "$1"; else FAILED+=("$1"); echo "not ok - $1" >&2; fi
}
c_rsa_sd() {
  local k=rsa-sd-$R; create "$k" --type rsa --size 2048 --ops sign,decrypt
  can_sign "$k" "$W/$k.pub.pem" || fail "$k (sign,decrypt): $(cat "$W/mech") refused"
  can_decrypt "$k" "$W/$k.pub.pem" || fail "$k (sign,decrypt) does not decrypt"
}
c_rsa_s() {
  # tpm2-pkcs11 1.9 makes CKM_RSA_PKCS a raw RSA operation in the TPM, which a key without
  # the decrypt attribute refuses: a sign-only RSA key on a TPM signs PSS only (docs/hsm.md)
  local k=rsa-s-$R; create "$k" --type rsa --size 2048 --ops sign
  MECHS=SHA256-RSA-PKCS-PSS can_sign "$k" "$W/$k.pub.pem" || fail "$k (sign): $(cat "$W/mech") refused"
  ! can_decrypt "$k" "$W/$k.pub.pem" || fail "$k (sign only) decrypted"
}
c_rsa_d() {
  local k=rsa-d-$R; create "$k" --type rsa --size 2048 --ops decrypt
  can_decrypt "$k" "$W/$k.pub.pem" || fail "$k (decrypt) does not decrypt"
  ! can_sign "$k" "$W/$k.pub.pem" || fail "$k (decrypt only) signed"
}
c_ec() { # EC curve $C, --ops sign (given, or the default when $OPS is empty)
  local k=ec-$C${OPS:+-s}-$R
  create "$k" --type ec --curve "$C" ${OPS:+--ops "$OPS"}
  can_sign "$k" "$W/$k.pub.pem" || fail "$k: $(cat "$W/mech") refused"
}
c_gen() { # C_GenerateKeyPair through libkvp11.so into default_store = hsm:tpm: $KT $K $USAGE
  # shellcheck disable=SC2086
  p11 --keypairgen --key-type "$KT" --label "$K" $USAGE || fail "C_GenerateKeyPair $KT $USAGE"
  pub "$K"
  can_sign "$K" "$W/$K.pub.pem" || fail "generated $K: $(cat "$W/mech") refused"
  case $USAGE in *decrypt*) can_decrypt "$K" "$W/$K.pub.pem" || fail "generated $K does not decrypt" ;; esac
}
case_run "key create RSA-2048 --ops sign,decrypt: signs (PKCS#1, PSS) and decrypts" c_rsa_sd
case_run "key create RSA-2048 --ops sign: signs (PSS; see docs/hsm.md for PKCS#1), decryption refused" c_rsa_s
case_run "key create RSA-2048 --ops decrypt: decrypts, signing refused" c_rsa_d
C=p256 OPS=sign case_run "key create EC p256 --ops sign: signs" c_ec
C=p384 OPS=sign case_run "key create EC p384 --ops sign: signs" c_ec
C=p256 OPS='' case_run "key create EC p256 (default --ops): signs" c_ec
KT=rsa:2048 K=gen-rsa-s-$R USAGE=--usage-sign case_run "C_GenerateKeyPair RSA-2048 sign-only: signs" c_gen
KT=rsa:2048 K=gen-rsa-sd-$R USAGE="--usage-sign --usage-decrypt" \
  case_run "C_GenerateKeyPair RSA-2048 sign+decrypt: signs and decrypts" c_gen
KT=EC:prime256v1 K=gen-ec-$R USAGE=--usage-sign case_run "C_GenerateKeyPair EC P-256: signs" c_gen

if [ ${#FAILED[@]} -gt 0 ]; then
  echo "FAIL: key_create: ${#FAILED[@]} of $((N + ${#FAILED[@]})) cases failed" >&2
  exit 1
fi
rm -rf "$W"
echo "PASS: key_create ($N checks)"
