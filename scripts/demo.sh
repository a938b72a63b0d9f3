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
# Then the same exchange with a key in Key Vault: a local Key Vault emulator
# (tests/emulator, Node.js) is started in $DEMO_DIR/keyvault with
# tests/kv/fixture-setup.sh, a Key Vault-backed private certificate is
# registered, and our side signs and decrypts through libkvp11.so (openssl cms
# with the pkcs11 engine, and `kvp11 smime seal/open`). The emulator is stopped
# when the demo ends, whether it succeeds or not.
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
DEMO_LOG=   # the module's log of the current part (set once the part's kvp11.conf exists)
fail() {
  local log=${DEMO_LOG:-$DEMO/kvp11.log}
  printf '%s   FAILED:%s %s\n' "$R" "$N" "$*" >&2
  if [ -s "$log" ]; then
    echo "   last lines of $log:" >&2
    tail -n 15 "$log" | sed 's/^/     /' >&2
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
# a Key Vault emulator left running by an interrupted earlier demo here: stop it before
# mkenv.sh removes its pid file
if [ -f "$DEMO/keyvault/emu.pid" ]; then bash "$ROOT/tests/kv/fixture-cleanup.sh" "$DEMO/keyvault" || true; fi
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
# KEY VAULT PART: the same exchange with a private certificate whose key lives
# in the local Key Vault emulator (tests/emulator), started and stopped here
# with the kv test fixture's scripts in $DEMO/keyvault (its own port and
# directory: nothing shared with a running `ctest`).
KV_DIR=$DEMO/keyvault
kv_stop() { # stop the emulator (tests/kv/fixture-cleanup.sh); safe to call twice
  [ -f "$KV_DIR/emu.pid" ] || return 0
  bash "$ROOT/tests/kv/fixture-cleanup.sh" "$KV_DIR" || true
}
# showio IN OUT CMD...: like show, with stdin from IN and stdout to OUT.
showio() {
  local in=$1 out=$2; shift 2
  printf '   $ %s < %s > %s\n' "$(quote "$@")" "$in" "$out"
  "$@" <"$in" >"$out" 2>"$DEMO/.out" || { sed 's/^/     /' "$DEMO/.out" >&2; fail "$1 exited non-zero"; }
  sed 's/^/     /' "$DEMO/.out"
}
# counter NAME: the emulator's request counter NAME (0 when absent).
counter() {
  local v
  v=$(sed -n "s/.*\"$1\":\([0-9][0-9]*\).*/\1/p" "$DEMO/.counters")
  echo "${v:-0}"
}
emu() { # emu METHOD PATH: a call to the emulator's test-control API (no LD_PRELOAD)
  env -u LD_PRELOAD -u OPENSSL_CONF curl -sSf --cacert "$KV_DIR/ca.pem" -X "$1" "$KV_URL$2"
}

demo_keyvault() {
  local EMU=$ROOT/tests/emulator/kv-emulator.js
  local KVKEY="pkcs11:token=kvp11%20kv;object=kv-rsa2048;type=private"
  local OURS=$KV_DIR/certs/rsa2048.pem

  step "Key Vault: start a local Key Vault emulator (Azure Key Vault REST API + token endpoint)"
  command -v node >/dev/null 2>&1 \
    || fail "node not found: the Key Vault emulator needs Node.js (scripts/install-deps.sh installs nodejs)"
  command -v curl >/dev/null 2>&1 || fail "curl not found (apt-get install curl)"
  [ -f "$EMU" ] || fail "$EMU not found"
  trap kv_stop EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  # the emulator (node) and curl run without the sanitizer runtime the client tests preload,
  # and the fixture's openssl commands without the engine configuration
  env -u LD_PRELOAD -u OPENSSL_CONF bash "$ROOT/tests/kv/fixture-setup.sh" "$KV_DIR" "$EMU" >"$DEMO/keyvault-setup.log" 2>&1 \
    || { sed 's/^/     /' "$DEMO/keyvault-setup.log" >&2; kv_stop; fail "tests/kv/fixture-setup.sh $KV_DIR"; }
  # shellcheck source=/dev/null
  . "$KV_DIR/env.sh"        # KV_URL, KVP11_CONF=$KV_DIR/kvp11.conf (the module and the tool read it)
  DEMO_LOG=$KV_DIR/kvp11.log
  ok "emulator on $KV_URL (pid $(cat "$KV_DIR/emu.pid")), TLS with a throwaway test CA ($KV_DIR/ca.pem)"
  ok "keys rsa2048 rsa3072 rsa4096 p256 p384 p521 imported into the vault; no private key left on disk"
  ok "configuration $KVP11_CONF: [vault emu] with client-secret auth (app 'app-full': get, list, sign, decrypt), account 'kv'"
  show sed -n '/^\[vault emu\]/,/^$/p' "$KVP11_CONF"

  step "Key Vault: register a private certificate whose key is the vault key 'rsa2048', and the partner"
  show "$TOOL" cert add --name kv-rsa2048 --type private --cert "$OURS" --account kv --vault emu --key rsa2048
  printf '   $ %s\n' "$(quote "$TOOL" cert add --name wrong --type private --cert "$KV_DIR/certs/p256.pem" \
    --account kv --vault emu --key rsa2048)"
  if "$TOOL" cert add --name wrong --type private --cert "$KV_DIR/certs/p256.pem" --account kv --vault emu \
      --key rsa2048 >"$DEMO/.out" 2>&1; then
    fail "kvp11 accepted a certificate whose public key is not the vault key's"
  fi
  sed 's/^/     /' "$DEMO/.out"
  ok "refused: a certificate must match the vault key"
  show "$TOOL" cert add --name partner --type public --cert certs/partner.pem --account kv
  show "$TOOL" cert list --account kv

  step "Key Vault: what PKCS#11 applications see through libkvp11.so (token 'kvp11 kv', no PIN)"
  show pkcs11-tool --module "$MODULE" --token-label "kvp11 kv" --list-objects --type privkey
  ok "our Key Vault key: $KVKEY"
  emu POST /_emu/reset >/dev/null || fail "emulator counters reset"

  step "Key Vault outbound: sign the purchase order with the vault key through libkvp11.so"
  show openssl cms -sign -binary -md sha256 -engine pkcs11 -keyform engine -inkey "$KVKEY" \
    -signer "$OURS" -in out/order.edi -out out/kv.order.signed.smime
  show openssl cms -encrypt -binary -aes256 -in out/kv.order.signed.smime -out out/kv.order.smime certs/partner.pem
  ok "signed in Key Vault, encrypted to the partner: out/kv.order.smime"

  step "Key Vault outbound, partner side (software key): decrypt and verify"
  show env -u OPENSSL_CONF openssl cms -decrypt -binary -recip certs/partner.pem -inkey certs/partner.key \
    -in out/kv.order.smime -out out/kv.partner.signed.smime
  show env -u OPENSSL_CONF openssl cms -verify -binary -CAfile "$OURS" \
    -in out/kv.partner.signed.smime -out out/kv.partner.order.edi
  same out/order.edi out/kv.partner.order.edi

  step "Key Vault inbound: the partner encrypts its signed acknowledgement to our Key Vault certificate"
  show env -u OPENSSL_CONF openssl cms -encrypt -binary -aes256 -in out/ack.signed.smime \
    -out out/kv.ack.smime "$OURS"
  show openssl cms -decrypt -binary -engine pkcs11 -keyform engine -inkey "$KVKEY" \
    -recip "$OURS" -in out/kv.ack.smime -out out/kv.ack.signed.received
  show openssl cms -verify -binary -CAfile certs/partner.pem -in out/kv.ack.signed.received \
    -out out/kv.ack.received.edi
  same out/ack.edi out/kv.ack.received.edi
  ok "decrypted with the vault key (Key Vault 'decrypt', RSA1_5) through libkvp11.so"

  step "Key Vault with the kvp11 tool: smime seal (sign + encrypt, AS2 style) and smime open"
  # the tool loads the pkcs11 engine itself (docs/tool.md, smime): run it without the
  # engine configuration the openssl commands above use
  showio out/order.edi out/kv.order.sealed.smime \
    env -u OPENSSL_CONF "$TOOL" smime seal --cert kv-rsa2048 --to partner --binary --account kv --module "$MODULE"
  show env -u OPENSSL_CONF openssl cms -decrypt -binary -recip certs/partner.pem -inkey certs/partner.key \
    -in out/kv.order.sealed.smime -out out/kv.sealed.signed.smime
  show env -u OPENSSL_CONF openssl cms -verify -binary -CAfile "$OURS" \
    -in out/kv.sealed.signed.smime -out out/kv.sealed.order.edi
  same out/order.edi out/kv.sealed.order.edi
  # the partner's next acknowledgement: opaque signed-data (-nodetach), encrypted to us
  show env -u OPENSSL_CONF openssl cms -sign -binary -nodetach -md sha256 -signer certs/partner.pem \
    -inkey certs/partner.key -in out/ack.edi -out out/kv.ack2.signed.smime
  show env -u OPENSSL_CONF openssl cms -encrypt -binary -aes256 -in out/kv.ack2.signed.smime \
    -out out/kv.ack2.smime "$OURS"
  showio out/kv.ack2.smime out/kv.ack.opened.edi \
    env -u OPENSSL_CONF "$TOOL" smime open --cert kv-rsa2048 --from partner --binary --account kv --module "$MODULE"
  same out/ack.edi out/kv.ack.opened.edi

  step "Key Vault: the requests the (emulated) vault served for these exchanges"
  printf '   $ curl --cacert %s %s/_emu/counters\n' "$KV_DIR/ca.pem" "$KV_URL"
  emu GET /_emu/counters >"$DEMO/.counters" || fail "emulator counters"
  sed 's/^/     /' "$DEMO/.counters"; echo
  # two signatures (openssl cms, smime seal) and two decryptions (openssl cms, smime open)
  [ "$(counter sign)" -ge 2 ] || fail "the vault served $(counter sign) sign requests, expected at least 2"
  [ "$(counter decrypt)" -ge 2 ] || fail "the vault served $(counter decrypt) decrypt requests, expected at least 2"
  ok "$(counter sign) sign and $(counter decrypt) decrypt requests: the private key never left the vault"

  kv_stop
  [ ! -f "$KV_DIR/emu.pid" ] || fail "the emulator did not stop"
  ok "emulator stopped"
}
demo_keyvault

printf '\n%sDemo finished: a B2B message was signed, encrypted, decrypted and verified in both\n' "$B"
printf 'directions through libkvp11.so, the private key staying in SoftHSM2, then in Key Vault.%s\n' "$N"
printf 'Files: %s\n' "$DEMO"
