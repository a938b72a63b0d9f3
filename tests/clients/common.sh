# tests/clients/common.sh — sourced by the client test scripts.
#
# Environment (set by CTest, see CMakeLists.txt):
#   KVP11_MODULE   path of libkvp11.so (required)
#   KVP11_ENV      directory made by tests/fixtures/mkenv.sh (required)
#   CLIENT_TOKEN   token label to use (default "kvp11 default", the fixture's account)
#   CLIENT_PIN     if set, clients log in with it (pkcs11-tool --login, URI pin-value);
#                  unset by default: the fixture's HSM takes its PIN from pin_file.
#   CLIENT_KEYSTORE  "hsm" (default) or "keyvault": the token's keys live in Key Vault
#                  (the tests/kv emulator fixture, KVP11_ENV=<build>/tests/kv/fixture).
#                  Scripts skip exactly the checks Key Vault cannot do (see each script).
#   CLIENT_RSA_KEYS / CLIENT_EC_KEYS  labels of the RSA / EC private keys
#                  (default "rsa2048 rsa3072" / "p256 p384", the HSM fixture's)
#   CLIENT_PARTNER label of a public-only certificate registered in the account
#                  (default "partner"; empty: the account has none and checks on it are skipped)
# Exit codes: 0 pass, 1 fail, 77 skipped (a client tool is missing).
set -euo pipefail

: "${KVP11_MODULE:?KVP11_MODULE must point to libkvp11.so}"
: "${KVP11_ENV:?KVP11_ENV must point to the mkenv.sh directory}"
TOKEN=${CLIENT_TOKEN:-kvp11 default}
TOKEN_URI=$(printf '%s' "$TOKEN" | sed 's/ /%20/g')
CERTS=$KVP11_ENV/certs
RSA_KEYS=${CLIENT_RSA_KEYS:-rsa2048 rsa3072}
EC_KEYS=${CLIENT_EC_KEYS:-p256 p384}
KEYSTORE=${CLIENT_KEYSTORE:-hsm}
PARTNER=${CLIENT_PARTNER-partner}
ALL_KEYS="$RSA_KEYS $EC_KEYS"
is_keyvault() { [ "$KEYSTORE" = keyvault ]; }

# shellcheck source=/dev/null
. "$KVP11_ENV/env.sh"
[ -f "$KVP11_MODULE" ] || { echo "FAIL: module $KVP11_MODULE not found" >&2; exit 1; }

T=$(basename "$0" .sh)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/kvp11-$T.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
CHECKS=0

fail() {
  echo "FAIL: $*" >&2
  if [ -s "$KVP11_ENV/kvp11.log" ]; then
    echo "--- last lines of $KVP11_ENV/kvp11.log:" >&2
    tail -n 20 "$KVP11_ENV/kvp11.log" >&2
  fi
  exit 1
}
skip() { echo "SKIP: $*"; exit 77; }
pass() { echo "PASS: $T ($CHECKS checks)"; exit 0; }
need() { for t in "$@"; do command -v "$t" >/dev/null 2>&1 || skip "'$t' not installed"; done; }
ok() { CHECKS=$((CHECKS + 1)); echo "ok $CHECKS - $*"; }

# run DESC CMD...: run CMD, keep its output in $WORK/out; fail with the output on error.
run() {
  local desc=$1; shift
  if ! "$@" >"$WORK/out" 2>&1; then
    sed 's/^/    /' "$WORK/out" >&2
    fail "$desc: command failed: $*"
  fi
}
# must_fail DESC CMD...: CMD must exit non-zero (negative control).
must_fail() {
  local desc=$1; shift
  if "$@" >"$WORK/out" 2>&1; then fail "$desc: succeeded but must fail: $*"; fi
}

LOGIN=()
URI_PIN=
if [ -n "${CLIENT_PIN:-}" ]; then
  LOGIN=(--login --pin "$CLIENT_PIN")
  URI_PIN=";pin-value=$CLIENT_PIN"
fi
p11() { pkcs11-tool --module "$KVP11_MODULE" --token-label "$TOKEN" "${LOGIN[@]}" "$@"; }

# key_id LABEL: CKA_ID (hex) of the private key labelled LABEL, as pkcs11-tool lists it.
key_id() {
  local id
  id=$(p11 --list-objects --type privkey 2>/dev/null | awk -v l="$1" '
    /Object;/ { lab = "" }
    $1 == "label:" { sub(/^[ \t]*label:[ \t]*/, ""); lab = $0 }
    $1 == "ID:" && lab == l { print $2; exit }')
  [ -n "$id" ] || fail "no private key labelled '$1' on token '$TOKEN'"
  echo "$id"
}

# pubkey LABEL: writes the certificate's public key to $WORK/LABEL.pub.pem and prints the path.
pubkey() {
  openssl x509 -in "$CERTS/$1.pem" -noout -pubkey >"$WORK/$1.pub.pem" || fail "public key of $1"
  echo "$WORK/$1.pub.pem"
}

# Engine helpers (libp11 "pkcs11" engine).
engine_path() {
  local d
  d=$(openssl version -e | sed -n 's/^ENGINESDIR: "\(.*\)"$/\1/p')
  echo "${PKCS11_ENGINE:-$d/pkcs11.so}"
}
need_engine() { [ -f "$(engine_path)" ] || skip "OpenSSL pkcs11 engine not installed (libengine-pkcs11-openssl)"; }
key_uri() { echo "pkcs11:token=$TOKEN_URI;object=$1;type=private$URI_PIN"; }

# A message to sign / encrypt, different for every run.
mkdata() {
  { echo "kvp11 client test $T $$ $(date +%s%N)"; head -c 300 /dev/urandom | base64; } >"$WORK/data.txt"
}
