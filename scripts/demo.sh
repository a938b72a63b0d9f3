#!/usr/bin/env bash
# scripts/demo.sh — run by `make demo`.
#
# Creates a throwaway environment in $BUILD_DIR/demo (a SoftHSM2 token with
# keys, certificates, a kvp11.conf and a registry, see tests/fixtures/mkenv.sh)
# and exchanges a B2B message with a trading partner in S/MIME (openssl cms),
# our side signing and decrypting through libkvp11.so with the OpenSSL pkcs11
# engine, the key staying inside the HSM. Every step is checked; any failure
# exits non-zero.
#
# Environment: BUILD_DIR (default build), KVP11_MODULE and KVP11_TOOL (default:
# the files in BUILD_DIR), DEMO_DIR (default $BUILD_DIR/demo).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD_DIR=${BUILD_DIR:-build}
case "$BUILD_DIR" in /*) ;; *) BUILD_DIR=$ROOT/$BUILD_DIR ;; esac
MODULE=${KVP11_MODULE:-$BUILD_DIR/module/libkvp11.so}
TOOL=${KVP11_TOOL:-$BUILD_DIR/tool/kvp11}
DEMO=${DEMO_DIR:-$BUILD_DIR/demo}
TOKEN_URI="kvp11%20default"   # the token label "kvp11 default", URI-escaped

if [ -t 1 ]; then B=$'\033[1m'; G=$'\033[32m'; R=$'\033[31m'; N=$'\033[0m'; else B= G= R= N=; fi
STEP=0
step() { STEP=$((STEP + 1)); printf '\n%s== %d. %s%s\n' "$B" "$STEP" "$*" "$N"; }
ok() { printf '%s   ok:%s %s\n' "$G" "$N" "$*"; }
fail() {
  printf '%s   FAILED:%s %s\n' "$R" "$N" "$*" >&2
  if [ -s "$DEMO/kvp11.log" ]; then
    echo "   last lines of $DEMO/kvp11.log:" >&2
    tail -n 15 "$DEMO/kvp11.log" | sed 's/^/     /' >&2
  fi
  exit 1
}
# show CMD...: print the command, run it, fail the demo if it fails.
quote() { # print args shell-quoted where needed, for display
  local a out=
  for a in "$@"; do
    case "$a" in
      *[!A-Za-z0-9_./:=@%+-]*) out+=" '$a'" ;;
      *) out+=" $a" ;;
    esac
  done
  printf '%s' "${out# }"
}
show() {
  printf '   $ %s\n' "$(quote "$@")"
  "$@" >"$DEMO/.out" 2>&1 || { sed 's/^/     /' "$DEMO/.out" >&2; fail "$1 exited non-zero"; }
  grep -v '^Engine "pkcs11" set.$' "$DEMO/.out" | sed 's/^/     /' || true
}
same() { cmp -s "$1" "$2" || fail "$2 differs from $1"; ok "$2 is identical to $1"; }

[ -f "$MODULE" ] || { echo "demo: $MODULE not found; run 'make build' first" >&2; exit 1; }
[ -x "$TOOL" ] || { echo "demo: $TOOL not found; run 'make build' first" >&2; exit 1; }

ENGINES_DIR=$(openssl version -e | sed -n 's/^ENGINESDIR: "\(.*\)"$/\1/p')
ENGINE=${PKCS11_ENGINE:-$ENGINES_DIR/pkcs11.so}
[ -f "$ENGINE" ] || { echo "demo: OpenSSL pkcs11 engine not found at $ENGINE (libengine-pkcs11-openssl)" >&2; exit 1; }

# ---------------------------------------------------------------------------
step "Throwaway environment: SoftHSM2 token, keys, certificates, kvp11.conf ($DEMO)"
KVP11_TOOL=$TOOL "$ROOT/tests/fixtures/mkenv.sh" "$DEMO" >/dev/null 2>"$DEMO.err" \
  || { cat "$DEMO.err" >&2; rm -f "$DEMO.err"; fail "tests/fixtures/mkenv.sh"; }
rm -f "$DEMO.err"
# shellcheck source=/dev/null
. "$DEMO/env.sh"
cd "$DEMO"
ok "SoftHSM2 token 'kvp11-test' with key pairs rsa2048 rsa3072 p256 p384 (private keys sensitive, never extractable)"
ok "certificates in $DEMO/certs; partner key pair in software (certs/partner.key)"
ok "configuration $KVP11_CONF"

step "Certificates registered with kvp11 (private ones mapped to HSM keys)"
show "$TOOL" cert list

step "What PKCS#11 applications see through libkvp11.so"
show pkcs11-tool --module "$MODULE" --list-token-slots
show pkcs11-tool --module "$MODULE" --token-label "kvp11 default" --list-objects --type privkey

sed -e "s|@KVP11_MODULE@|$MODULE|" -e "s|@PKCS11_ENGINE@|$ENGINE|" \
  "$ROOT/hsm-config/openssl-engine.cnf" >"$DEMO/openssl-engine.cnf"
export OPENSSL_CONF=$DEMO/openssl-engine.cnf
KEY="pkcs11:token=$TOKEN_URI;object=rsa2048;type=private"
ok "OpenSSL pkcs11 engine on libkvp11.so: OPENSSL_CONF=$OPENSSL_CONF"
ok "our key: $KEY"

mkdir -p out
cat >out/order.edi <<'EOF'
ISA*00*          *00*          *ZZ*KVP11DEMO      *ZZ*PARTNER        *261125*1200*U*00401*000000001*0*T*>~
GS*PO*KVP11DEMO*PARTNER*20261125*1200*1*X*004010~
ST*850*0001~
BEG*00*SA*PO-4711**20261125~
PO1*1*120*EA*9.95**VP*WIDGET-42~
CTT*1~
SE*5*0001~
GE*1*1~
IEA*1*000000001~
EOF

# ---------------------------------------------------------------------------
step "Outbound: sign the purchase order with our HSM key through libkvp11.so"
show cat out/order.edi
show openssl cms -sign -binary -md sha256 -engine pkcs11 -keyform engine -inkey "$KEY" \
  -signer certs/rsa2048.pem -in out/order.edi -out out/order.signed.smime
ok "signed: out/order.signed.smime"

step "Outbound: encrypt the signed message to the partner (AES-256, partner's certificate)"
show openssl cms -encrypt -binary -aes256 -in out/order.signed.smime -out out/order.smime certs/partner.pem
ok "encrypted: out/order.smime ($(wc -c <out/order.smime) bytes)"

step "Partner side (software key): decrypt and verify our signature"
show env -u OPENSSL_CONF openssl cms -decrypt -binary -recip certs/partner.pem -inkey certs/partner.key \
  -in out/order.smime -out out/partner.signed.smime
show env -u OPENSSL_CONF openssl cms -verify -binary -CAfile certs/rsa2048.pem \
  -in out/partner.signed.smime -out out/partner.order.edi
same out/order.edi out/partner.order.edi

# ---------------------------------------------------------------------------
cat >out/ack.edi <<'EOF'
ISA*00*          *00*          *ZZ*PARTNER        *ZZ*KVP11DEMO      *261125*1205*U*00401*000000002*0*T*>~
GS*PR*PARTNER*KVP11DEMO*20261125*1205*2*X*004010~
ST*855*0001~
BAK*00*AD*PO-4711*20261125~
SE*3*0001~
GE*1*2~
IEA*1*000000002~
EOF

step "Inbound: the partner signs an acknowledgement and encrypts it to our certificate"
show env -u OPENSSL_CONF openssl cms -sign -binary -md sha256 -signer certs/partner.pem \
  -inkey certs/partner.key -in out/ack.edi -out out/ack.signed.smime
show env -u OPENSSL_CONF openssl cms -encrypt -binary -aes256 -in out/ack.signed.smime \
  -out out/ack.smime certs/rsa2048.pem
ok "encrypted to rsa2048: out/ack.smime"

step "Inbound: decrypt with our HSM key through libkvp11.so and verify the partner's signature"
show openssl cms -decrypt -binary -engine pkcs11 -keyform engine -inkey "$KEY" \
  -recip certs/rsa2048.pem -in out/ack.smime -out out/ack.signed.received
show openssl cms -verify -binary -CAfile certs/partner.pem -in out/ack.signed.received \
  -out out/ack.received.edi
same out/ack.edi out/ack.received.edi

# ---------------------------------------------------------------------------
# KEY VAULT DEMO HOOK — owned by the Key Vault engineer.
# demo_keyvault runs the same exchange with a private certificate whose key
# lives in the local Key Vault emulator (tests/emulator). Until that lands it
# only says so. Replace the body; keep the name and the call below.
demo_keyvault() {
  step "Key Vault: the same exchange with a key in (an emulated) Azure Key Vault"
  echo "   not part of this build yet (local HSM keys only)"
}
demo_keyvault

printf '\n%sDemo finished: a B2B message was signed, encrypted, decrypted and verified in both\n' "$B"
printf 'directions through libkvp11.so, the private key staying in SoftHSM2.%s\n' "$N"
printf 'Files: %s\n' "$DEMO"
