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

# can_sign LABEL PUBPEM: signs through libkvp11.so, verified with PUBPEM (and not with another key).
can_sign() {
  local m=SHA256-RSA-PKCS fmt=()
  case $(openssl pkey -pubin -in "$2" -noout -text 2>/dev/null) in *ASN1\ OID:*) m=ECDSA-SHA256; fmt=(--signature-format openssl) ;; esac
  p11 --sign --label "$1" -m "$m" "${fmt[@]}" -i "$W/data" -o "$W/sig" || return 1
  openssl dgst -sha256 -verify "$2" -signature "$W/sig" "$W/data" >/dev/null 2>&1 ||
    fail "$1: the signature does not verify with the TPM's public key"
  ! openssl dgst -sha256 -verify "$W/other.pub.pem" -signature "$W/sig" "$W/data" >/dev/null 2>&1 ||
    fail "$1: the signature verifies with another key"
}
# can_decrypt LABEL PUBPEM: an OpenSSL ciphertext (OAEP SHA-256) decrypted through libkvp11.so.
can_decrypt() {
  openssl pkeyutl -encrypt -pubin -inkey "$2" -pkeyopt rsa_padding_mode:oaep \
    -pkeyopt rsa_oaep_md:sha256 -pkeyopt rsa_mgf1_md:sha256 -in "$W/secret" -out "$W/ct" || fail "encrypt to $1"
  p11 --decrypt --label "$1" -m RSA-PKCS-OAEP --hash-algorithm SHA256 --mgf MGF1-SHA256 \
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

k=rsa-sd-$R; create "$k" --type rsa --size 2048 --ops sign,decrypt
can_sign "$k" "$W/$k.pub.pem" || fail "$k (sign,decrypt) does not sign"
can_decrypt "$k" "$W/$k.pub.pem" || fail "$k (sign,decrypt) does not decrypt"
ok "key create RSA-2048 --ops sign,decrypt: signs and decrypts"

k=rsa-s-$R; create "$k" --type rsa --size 2048 --ops sign
can_sign "$k" "$W/$k.pub.pem" || fail "$k (sign) does not sign"
! can_decrypt "$k" "$W/$k.pub.pem" || fail "$k (sign only) decrypted"
ok "key create RSA-2048 --ops sign: signs, decryption refused"

k=rsa-d-$R; create "$k" --type rsa --size 2048 --ops decrypt
can_decrypt "$k" "$W/$k.pub.pem" || fail "$k (decrypt) does not decrypt"
! can_sign "$k" "$W/$k.pub.pem" || fail "$k (decrypt only) signed"
ok "key create RSA-2048 --ops decrypt: decrypts, signing refused"

for c in p256 p384; do
  k=ec-$c-$R; create "$k" --type ec --curve "$c" --ops sign
  can_sign "$k" "$W/$k.pub.pem" || fail "$k does not sign"
  ok "key create EC $c --ops sign: signs"
done
k=ec-def-$R; create "$k" --type ec --curve p256
grep -qx 'type: EC P-256' "$W/out" || fail "create $k type: $(cat "$W/out")"
can_sign "$k" "$W/$k.pub.pem" || fail "$k (default ops) does not sign"
ok "key create EC p256 with the default --ops: signs"

# C_GenerateKeyPair through libkvp11.so into default_store = hsm:tpm.
for spec in "rsa:2048:gen-rsa-s-$R:--usage-sign" "rsa:2048:gen-rsa-sd-$R:--usage-sign --usage-decrypt" \
            "EC:prime256v1:gen-ec-$R:--usage-sign"; do
  IFS=: read -r kt size k usage <<<"$spec"
  # shellcheck disable=SC2086
  p11 --keypairgen --key-type "$kt:$size" --label "$k" $usage || fail "C_GenerateKeyPair $kt:$size $usage"
  pub "$k"
  can_sign "$k" "$W/$k.pub.pem" || fail "generated $k does not sign"
  case $usage in *decrypt*) can_decrypt "$k" "$W/$k.pub.pem" || fail "generated $k does not decrypt" ;; esac
  ok "C_GenerateKeyPair $kt:$size ($usage) through libkvp11.so: the key works"
done

rm -rf "$W"
echo "PASS: key_create ($N checks)"
