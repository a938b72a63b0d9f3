# tests/tool/lib.sh: helpers for the kvp11 tool tests (sourced, not run).
#
# Environment: KVP11_TOOL (the built kvp11), KVP11_TEST_TMP (a directory under
# the build dir). Each test gets its own directory $T under it.
set -u
unset KVP11_DEBUG KVP11_CONF

fail() { echo "FAIL: $*" >&2; exit 1; }
skip() { echo "SKIP: $*" >&2; exit 77; }
ok() { echo "ok: $*"; }

[ -n "${KVP11_TOOL:-}" ] && [ -x "$KVP11_TOOL" ] || fail "KVP11_TOOL is not set to the built kvp11"
command -v openssl >/dev/null 2>&1 || skip "openssl not found"
command -v python3 >/dev/null 2>&1 || skip "python3 not found"

T=${KVP11_TEST_TMP:-$(pwd)/tmp}/$(basename "$0" .sh)
rm -rf "$T"
mkdir -p "$T"
chmod 700 "$T"
OUT=$T/stdout
ERR=$T/stderr
CONF=$T/kvp11.conf
ACCOUNTS=default

# write_conf [extra lines...]: a configuration with the registry in $T.
write_conf() {
  {
    printf '[global]\nregistry = %s\nlog_level = debug\nlog_file = %s\n' "$T/registry.db" "$T/kvp11.log"
    printf '%s\n' "$@"
  } >"$CONF"
}

# kvp ARGS...: run the tool with $CONF; sets RC, output in $OUT / $ERR.
kvp() {
  RC=0
  "$KVP11_TOOL" -c "$CONF" "$@" >"$OUT" 2>"$ERR" || RC=$?
}

# The registry as the tool lists it, all test accounts (or a note when unreadable).
snapshot() {
  local a
  for a in $ACCOUNTS; do
    echo "== $a"
    "$KVP11_TOOL" -c "$CONF" cert list --json --account "$a" 2>&1 || echo "rc=$?"
  done
  [ -f "$T/registry.db" ] && sha256sum <"$T/registry.db"
  return 0
}

# one_line: stderr holds exactly one line starting with "kvp11: ".
one_line() {
  [ "$(wc -l <"$ERR")" -eq 1 ] || { cat "$ERR" >&2; fail "$1: expected one line on stderr"; }
  grep -q '^kvp11: ' "$ERR" || { cat "$ERR" >&2; fail "$1: stderr does not start with 'kvp11: '"; }
}

# expect_ok WHAT ARGS...: exit 0, stderr empty.
expect_ok() {
  local what=$1; shift
  kvp "$@"
  [ "$RC" -eq 0 ] || { cat "$ERR" >&2; fail "$what: exit $RC (want 0): $*"; }
  [ ! -s "$ERR" ] || { cat "$ERR" >&2; fail "$what: unexpected stderr"; }
  ok "$what"
}

# expect_fail WHAT CODE REGEX ARGS...: exit CODE, one stderr line matching
# REGEX (grep -E), nothing on stdout, registry unchanged.
expect_fail() {
  local what=$1 code=$2 re=$3 before after; shift 3
  before=$(snapshot)
  kvp "$@"
  [ "$RC" -eq "$code" ] || { cat "$ERR" >&2; fail "$what: exit $RC (want $code): $*"; }
  one_line "$what"
  grep -Eq -- "$re" "$ERR" || { cat "$ERR" >&2; fail "$what: stderr does not match '$re'"; }
  [ ! -s "$OUT" ] || { cat "$OUT" >&2; fail "$what: unexpected stdout"; }
  after=$(snapshot)
  [ "$before" = "$after" ] || { diff <(echo "$before") <(echo "$after") >&2; fail "$what: the registry changed"; }
  ok "$what ($(cat "$ERR"))"
}

# json EXPR: evaluate a Python expression on j = the JSON in $OUT; fails when false.
json() {
  python3 - "$OUT" "$1" <<'PY' || fail "json check: $1"
import json, sys
j = json.load(open(sys.argv[1]))
if not eval(sys.argv[2]):
    print("json check false: %s\n%s" % (sys.argv[2], json.dumps(j, indent=1)), file=sys.stderr)
    sys.exit(1)
PY
}

# mkcert NAME [START END]: software RSA key $T/NAME.key and self-signed
# certificate $T/NAME.pem (validity 30 days, or START..END as YYYYMMDDHHMMSSZ).
mkcert() {
  local n=$1 d=$T/ca
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$T/$n.key" 2>/dev/null ||
    fail "mkcert $n: key"
  if [ $# -eq 1 ]; then
    openssl req -new -x509 -key "$T/$n.key" -subj "/CN=$n/O=kvp11 tool test" -days 30 \
      -out "$T/$n.pem" 2>/dev/null || fail "mkcert $n: certificate"
    return
  fi
  mkdir -p "$d"
  : >"$d/index.txt"
  [ -f "$d/serial" ] || echo 1000 >"$d/serial"
  cat >"$d/ca.cnf" <<CNF
[ca]
default_ca = d
[d]
database = $d/index.txt
new_certs_dir = $d
serial = $d/serial
default_md = sha256
policy = p
unique_subject = no
[p]
commonName = supplied
organizationName = optional
CNF
  openssl req -new -key "$T/$n.key" -subj "/CN=$n/O=kvp11 tool test" -out "$d/$n.csr" \
    2>/dev/null || fail "mkcert $n: request"
  openssl ca -batch -notext -config "$d/ca.cnf" -selfsign -keyfile "$T/$n.key" -in "$d/$n.csr" \
    -startdate "$2" -enddate "$3" -out "$T/$n.pem" >/dev/null 2>&1 || fail "mkcert $n: ca"
}

# der_of FILE: the certificate in FILE as DER on stdout.
der_of() { openssl x509 -in "$1" -outform DER; }

# reissue SRC NAME START END: a certificate for SRC's public key (the key
# stays where it is, e.g. in an HSM), issued by a throwaway test CA with the
# validity START..END (YYYYMMDDHHMMSSZ), as $T/NAME.pem.
reissue() {
  local d=$T/reissue-ca
  if [ ! -f "$d/ca.key" ]; then
    mkdir -p "$d"
    : >"$d/index.txt"
    echo 2000 >"$d/serial"
    printf '[ca]\ndefault_ca = d\n[d]\ndatabase = %s/index.txt\nnew_certs_dir = %s\nserial = %s/serial\ndefault_md = sha256\npolicy = p\nunique_subject = no\n[p]\ncommonName = supplied\norganizationName = optional\n' \
      "$d" "$d" "$d" >"$d/ca.cnf"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$d/ca.key" \
      -out "$d/ca.pem" -days 3650 -subj "/CN=kvp11 test CA" 2>/dev/null || fail "reissue: CA"
  fi
  openssl ca -batch -notext -config "$d/ca.cnf" -cert "$d/ca.pem" -keyfile "$d/ca.key" \
    -ss_cert "$1" -subj "/CN=$2" -startdate "$3" -enddate "$4" -out "$T/$2.pem" >/dev/null 2>&1 ||
    fail "reissue $2"
}
# when OFFSET: a date as openssl ca takes it, OFFSET from now ('-1 day', '+10 days').
when() { date -u -d "$1" +%Y%m%d%H%M%SZ; }

# watch_start TOKEN: a running PKCS#11 application ($KVP11_P11WATCH, see
# p11watch.c) with libkvp11.so ($KVP11_MODULE) loaded on $CONF, token TOKEN.
watch_start() {
  coproc WATCH { KVP11_CONF=$CONF exec "$KVP11_P11WATCH" "$KVP11_MODULE" "$1" 2>"$T/watch.err"; }
  local line
  read -r -t 30 line <&"${WATCH[0]}" && [ "$line" = READY ] || fail "p11watch did not start: $(cat "$T/watch.err")"
  trap 'echo quit >&"${WATCH[1]}" 2>/dev/null || true' EXIT
}
# watch CMD...: send a command to it; the answer lines (without END) in $T/watch.out
watch() {
  local line
  echo "$*" >&"${WATCH[1]}"
  : >"$T/watch.out"
  while read -r -t 30 line <&"${WATCH[0]}"; do
    [ "$line" = END ] && return 0
    echo "$line" >>"$T/watch.out"
  done
  fail "p11watch: no answer to '$*'"
}
