# tests/tool/keylib.sh: setup shared by the kvp11 key tests (sourced after lib.sh).
#
# Makes its own SoftHSM2 token (label kvp11-key, user PIN in $T/hsm.pin) and,
# when the kv tests' emulator fixture runs ($KVP11_KV_DIR), a [vault emu] on it
# (client app-full, given create/import/delete for the test and set back to
# the fixture's get,list,sign,decrypt at exit) and [vault emu0] (no retries).
# Sets: STORES ("--hsm tk" and, with the emulator, "--vault emu"), HAVE_KV,
# EMU (emulator URL), R (a suffix unique to this run), and writes $CONF.
SOFTHSM=${KVP11_SOFTHSM_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
[ -f "$SOFTHSM" ] || skip "SoftHSM2 module not found at $SOFTHSM"
command -v softhsm2-util >/dev/null 2>&1 || skip "softhsm2-util not found"

R=$(date +%s)$$
mkdir -p "$T/tokens"
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$T/tokens" >"$T/softhsm2.conf"
export SOFTHSM2_CONF=$T/softhsm2.conf
softhsm2-util --init-token --free --label kvp11-key --pin 1234 --so-pin 12345678 >"$T/token.log" 2>&1 ||
  { cat "$T/token.log" >&2; fail "softhsm2-util --init-token"; }
umask 077
printf '1234' >"$T/hsm.pin"
printf '1234' >"$T/user.pin"
umask 022

HAVE_KV=0
KV=${KVP11_KV_DIR:-}
VAULT_LINES=()
if [ -n "$KV" ] && [ -f "$KV/port" ] && [ -f "$KV/kvp11.conf" ] && command -v curl >/dev/null 2>&1 &&
  curl -sf --cacert "$KV/ca.pem" "https://127.0.0.1:$(cat "$KV/port")/_emu/health" >/dev/null; then
  HAVE_KV=1
  EMU=https://127.0.0.1:$(cat "$KV/port")
  mapfile -t VAULT_LINES < <(sed -n '/^\[vault emu\]/,/^$/p' "$KV/kvp11.conf" | sed '/^$/d')
  mapfile -t -O "${#VAULT_LINES[@]}" VAULT_LINES < <(sed -n '/^\[vault emu\]/,/^$/p' "$KV/kvp11.conf" |
    sed -e '/^$/d' -e 's/^\[vault emu\]/[vault emu0]/' -e 's/^max_retries = .*/max_retries = 0/')
else
  echo "note: no Key Vault emulator fixture: Key Vault parts skipped"
fi

# emu_post PATH JSON / emu_delete PATH: the emulator's test-control API.
emu_post() { curl -sf --cacert "$KV/ca.pem" -X POST -H 'Content-Type: application/json' -d "$2" "$EMU$1"; }
emu_delete() { curl -sf --cacert "$KV/ca.pem" -X DELETE "$EMU$1"; }
# emu_count EP: requests the emulator counted for an endpoint.
emu_count() {
  curl -sf --cacert "$KV/ca.pem" "$EMU/_emu/counters" |
    python3 -c "import json,sys; print(json.load(sys.stdin)['counters'].get('$1', 0))"
}
# At exit: the emulator's faults cleared and app-full's permissions set back, and
# $KEYLIB_CLEANUP (a command a test may set) run.
keylib_exit() {
  eval "${KEYLIB_CLEANUP:-true}"
  [ "$HAVE_KV" = 1 ] || return 0
  emu_delete /_emu/faults >/dev/null 2>&1
  emu_post /_emu/policy '{"clientId":"app-full","permissions":["get","list","sign","decrypt"]}' >/dev/null 2>&1
  return 0
}
trap 'rc=$?; keylib_exit; exit $rc' EXIT
if [ "$HAVE_KV" = 1 ]; then
  emu_post /_emu/policy '{"clientId":"app-full","permissions":["get","list","sign","decrypt","create","import","delete"]}' \
    >/dev/null || fail "emulator: grant app-full create/import/delete"
fi

ACCOUNTS="default other"
write_conf \
  "[hsm tk]" "module = $SOFTHSM" "token_label = kvp11-key" "pin_file = $T/hsm.pin" \
  "[hsm tknopin]" "module = $SOFTHSM" "token_label = kvp11-key" \
  "${VAULT_LINES[@]}" \
  "[account default]" "[account other]"

# ref_of STORE-OPTS KEY: the key reference the tool records.
ref_of() {
  case "$1" in
    --hsm\ *) echo "hsm:${1#--hsm }/$2" ;;
    --vault\ *) echo "keyvault:${1#--vault }/$2" ;;
  esac
}

# supported STORE-OPTS: 0 when the store implements the provisioning ops
# (the backends land them separately); prints a note otherwise.
supported() {
  # shellcheck disable=SC2086
  kvp key list $1
  if [ "$RC" -ne 0 ] && grep -q 'does not support' "$ERR"; then
    echo "note: $1: $(cat "$ERR"): skipped"
    return 1
  fi
  [ "$RC" -eq 0 ] || { cat "$ERR" >&2; fail "key list $1: exit $RC"; }
  return 0
}

STORES=("--hsm tk")
[ "$HAVE_KV" = 1 ] && STORES+=("--vault emu")
