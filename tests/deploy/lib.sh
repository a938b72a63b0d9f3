# tests/deploy/lib.sh: helpers for the deployment tests (sourced, not run).
#
# Environment (set by CTest): KVP11_TOOL, KVP11_MODULE_SO, KVP11_ENV_PROBE,
# KVP11_BUILD_DIR, KVP11_SOURCE_DIR, KVP11_SOFTHSM_MODULE, KVP11_TEST_TMP.
set -u
unset KVP11_DEBUG KVP11_CONF KVP11_REGISTRY

fail() { echo "FAIL: $*" >&2; exit 1; }
skip() { echo "SKIP: $*" >&2; exit 77; }
ok() { echo "ok: $*"; }

[ -n "${KVP11_TOOL:-}" ] && [ -x "$KVP11_TOOL" ] || fail "KVP11_TOOL is not set to the built kvp11"
SRC=${KVP11_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
SOFTHSM=${KVP11_SOFTHSM_MODULE:-/usr/lib/softhsm/libsofthsm2.so}

T=${KVP11_TEST_TMP:-$(pwd)/tmp}/$(basename "$0" .sh)
rm -rf "$T"
mkdir -p "$T"
chmod 755 "$T"
OUT=$T/stdout
ERR=$T/stderr

# run ARGS...: run a command; RC, stdout in $OUT, stderr in $ERR.
run() {
  RC=0
  "$@" >"$OUT" 2>"$ERR" || RC=$?
}

# expect_refused WHAT WANT ARGS...: exit 1 (EXIT_CODE=2 for usage errors), exactly one
# stderr line containing WANT.
expect_refused() {
  local what=$1 want=$2 code=${EXIT_CODE:-1}; shift 2
  run "$@"
  [ "$RC" -eq "$code" ] || { cat "$OUT" "$ERR" >&2; fail "$what: exit $RC (want $code)"; }
  [ "$(wc -l <"$ERR")" -eq 1 ] || { cat "$ERR" >&2; fail "$what: expected one line on stderr"; }
  grep -qF -- "$want" "$ERR" || { cat "$ERR" >&2; fail "$what: stderr lacks '$want'"; }
  ok "$what: $(cat "$ERR")"
}

# as_user USER CMD...: run CMD as USER (no login shell), keeping the environment given.
as_user() {
  local u=$1; shift
  setpriv --reuid="$u" --regid="$(id -g "$u")" --init-groups -- "$@"
}

# need_root: the test creates users, groups or files owned by others.
need_root() {
  [ "$(id -u)" -eq 0 ] || skip "needs root (creates users/groups or chowns files)"
  command -v setpriv >/dev/null 2>&1 || skip "setpriv not found"
}

# A SoftHSM2 fixture with registered certificates (tests/fixtures/mkenv.sh) in $1.
make_fixture() {
  [ -f "$SOFTHSM" ] || skip "SoftHSM2 not found at $SOFTHSM"
  KVP11_TOOL=$KVP11_TOOL "$SRC/tests/fixtures/mkenv.sh" "$1" >"$T/mkenv.log" 2>&1 ||
    { cat "$T/mkenv.log" >&2; fail "mkenv.sh failed"; }
}

# private_devlog "$@": re-run the calling script in a private mount namespace
# whose /dev is a tmpfs with a stand-in system logger on /dev/log; its
# messages are appended to $SINK. The system's /dev and logger are untouched.
private_devlog() {
  if [ "${1:-}" != inner ]; then
    unshare -m --propagation private true 2>/dev/null || skip "cannot make a mount namespace"
    exec unshare -m --propagation private bash "$0" inner
  fi
  SINK=$T/syslog.txt
  : >"$SINK"
  chmod 644 "$SINK"
  mount -t tmpfs -o mode=755 none /dev || skip "cannot mount a tmpfs on /dev"
  mknod -m 666 /dev/null c 1 3 && mknod -m 666 /dev/zero c 1 5 &&
    mknod -m 666 /dev/urandom c 1 9 && mknod -m 666 /dev/random c 1 8 && ln -s /proc/self/fd /dev/fd ||
    fail "mknod in the private /dev"
  python3 "$(dirname "$0")/syslog_sink.py" /dev/log "$SINK" &
  SINK_PID=$!
  trap 'kill $SINK_PID 2>/dev/null' EXIT
  for _ in $(seq 50); do [ -S /dev/log ] && break; sleep 0.1; done
  [ -S /dev/log ] || fail "the stand-in logger did not start"
}

# Users and groups made by a test, removed by cleanup_accounts (trap).
CREATED_USERS="" CREATED_GROUPS=""
make_group() { getent group "$1" >/dev/null || { groupadd --system "$1"; CREATED_GROUPS="$1 $CREATED_GROUPS"; }; }
# make_user NAME [GROUP,...]: a system user without home or shell
make_user() {
  getent passwd "$1" >/dev/null && userdel "$1" 2>/dev/null
  useradd --system --no-create-home --shell /usr/sbin/nologin ${2:+--groups "$2"} "$1"
  CREATED_USERS="$1 $CREATED_USERS"
}
cleanup_accounts() {
  local u g
  for u in $CREATED_USERS; do userdel "$u" 2>/dev/null || true; done
  for g in $CREATED_GROUPS; do groupdel "$g" 2>/dev/null || true; done
}

# key_id P11-ARGS... LABEL: the CKA_ID of a private key object (pkcs11-tool -O)
key_id() {
  local l=${*: -1}
  "${@:1:$#-1}" -O --type privkey 2>/dev/null |
    awk -v l="$l" '$1 == "label:" { f = ($2 == l) } f && $1 == "ID:" { print $2; exit }'
}

# verify_p256 RAWSIG CERT.pem DIGEST: a PKCS#11 ECDSA signature (r||s) of DIGEST
# verifies with the certificate's public key (openssl wants DER).
verify_p256() {
  python3 - "$1" "$T/sig.der" <<'PY'
import sys
raw = open(sys.argv[1], "rb").read(); n = len(raw) // 2
def i(b):
    b = b.lstrip(b"\0") or b"\0"
    if b[0] & 0x80: b = b"\0" + b
    return b"\x02" + bytes([len(b)]) + b
s = i(raw[:n]) + i(raw[n:]); open(sys.argv[2], "wb").write(b"\x30" + bytes([len(s)]) + s)
PY
  openssl x509 -in "$2" -pubkey -noout >"$T/verify.pub" &&
    openssl pkeyutl -verify -pubin -inkey "$T/verify.pub" -in "$3" -sigfile "$T/sig.der" >/dev/null
}
