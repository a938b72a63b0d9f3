#!/usr/bin/env bash
# tests/bench/smime-large.sh — kvp11 smime seal/open on a large message vs the
# `openssl cms -stream` pipeline doing the same steps with the same key.
#
#   tests/bench/smime-large.sh BUILD_DIR [MB]      (default MB: 1000)
#
# Not a CTest test (it takes minutes and GBs of disk). For each backend —
# the HSM (SoftHSM2 through libkvp11.so, tests/fixtures/mkenv.sh) and Key
# Vault (the emulator of tests/kv/fixture-setup.sh, needs node) — it runs:
#   seal  kvp11 smime seal --binary --cert rsa2048 --to partner
#         openssl cms -sign -stream -binary (key rsa2048 through libkvp11.so, engine)
#           | openssl cms -encrypt -stream -binary -aes-256-cbc partner.pem
#   open  kvp11 smime open --binary --cert rsa2048 --from partner
#         openssl cms -decrypt -binary (key rsa2048 through libkvp11.so, engine)
#           | openssl cms -verify -binary -CAfile partner.pem
# on an MB-megabyte base64 text message (the open input is made by openssl,
# signed by the partner and encrypted to rsa2048), checks that every output
# is the message, and prints wall time, CPU time (user + system, of all the
# processes: steadier than wall time on a busy machine) and peak RSS
# (/usr/bin/time %M: for a pipeline, its largest process). Targets (docs/performance.md): time within
# 1.5x of openssl, peak RSS <= 32 MiB at every size.
#
# Environment: BENCH_DIR (default BUILD_DIR/smime-bench; removed at the end
# unless KEEP=1), SOFTHSM2_MODULE, BACKENDS="hsm kv".
set -euo pipefail
die() { echo "smime-large.sh: error: $*" >&2; exit 1; }

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
[ $# -ge 1 ] || die "usage: $0 BUILD_DIR [MB]"
BUILD=$(cd "$1" 2>/dev/null && pwd) || die "build directory '$1' not found"
MB=${2:-1000}
case "$MB" in '' | *[!0-9]*) die "MB must be a number (got '$MB')" ;; esac
TOOL=$BUILD/tool/kvp11
SO=$BUILD/module/libkvp11.so
SOFTHSM=${SOFTHSM2_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
W=${BENCH_DIR:-$BUILD/smime-bench}
BACKENDS=${BACKENDS:-hsm kv}
[ -x "$TOOL" ] && [ -f "$SO" ] || die "build kvp11 and libkvp11.so first ($TOOL, $SO)"
[ -x /usr/bin/time ] || die "/usr/bin/time not found (apt-get install time)"
ENGDIR=$(openssl version -e | sed -n 's/^ENGINESDIR: "\(.*\)"$/\1/p')
[ -f "$ENGDIR/pkcs11.so" ] || die "OpenSSL pkcs11 engine not found (libengine-pkcs11-openssl)"

rm -rf "$W"
mkdir -p "$W"
cleanup() {
  [ -f "$W/kv/emu.pid" ] && bash "$ROOT/tests/kv/fixture-cleanup.sh" "$W/kv"
  [ "${KEEP:-0}" = 1 ] || rm -rf "$W"
}
trap cleanup EXIT

echo "message: $MB MB of base64 text" >&2
head -c $((MB * 1000000 * 3 / 4)) /dev/urandom | base64 >"$W/msg"
sed -e "s|@PKCS11_ENGINE@|$ENGDIR/pkcs11.so|" -e "s|@KVP11_MODULE@|$SO|" \
  "$ROOT/hsm-config/openssl-engine.cnf" >"$W/engine.cnf"

# run NAME CMD...: time and peak RSS of CMD (a bash -c string), one result line.
RESULTS=$W/results
run() {
  local name=$1 cmd=$2
  sync
  /usr/bin/time -f '%e %M %U %S' -o "$W/time" bash -c "$cmd" 2>"$W/err" ||
    { cat "$W/err" >&2; die "$name failed"; }
  read -r secs kb user sys <"$W/time"
  cpu=$(echo "$user + $sys" | bc -l)
  printf '%s %s %s %s\n' "$name" "$secs" "$kb" "$cpu" >>"$RESULTS"
  printf '  %-28s %8.2f s %8.2f s CPU %8.1f MiB\n' "$name" "$secs" "$cpu" "$(echo "$kb / 1024" | bc -l)" >&2
}

# bench BACKEND CONF ACCOUNT CERTDIR TOKEN
bench() {
  local be=$1 conf=$2 acct=$3 certs=$4 token=$5 k
  local uri="pkcs11:token=$token;object=rsa2048;type=private"
  local ossl="OPENSSL_CONF=$W/engine.cnf KVP11_CONF=$conf openssl cms"
  export KVP11_MODULE=$SO
  k="$TOOL -c $conf"
  echo "$be:" >&2
  run "$be seal kvp11" "$k smime seal --account $acct --binary --cert rsa2048 --to partner --in $W/msg --out $W/sealed"
  run "$be seal openssl" "$ossl -sign -stream -binary -nodetach -engine pkcs11 -keyform engine -inkey '$uri' \
    -signer $certs/rsa2048.pem -in $W/msg | openssl cms -encrypt -stream -binary -aes-256-cbc \
    -out $W/sealed.ossl $PARTNER_PEM"
  # both sealed messages open with the partner's key (a check, not timed)
  openssl cms -decrypt -binary -inkey "$PARTNER_KEY" -in "$W/sealed" |
    openssl cms -verify -binary -CAfile "$certs/rsa2048.pem" -purpose any -out "$W/check" 2>/dev/null ||
    die "$be: openssl cannot open kvp11's sealed message"
  cmp -s "$W/check" "$W/msg" || die "$be: kvp11's sealed message does not hold the message"
  rm -f "$W/sealed" "$W/sealed.ossl" "$W/check"
  # the message from the partner, to rsa2048
  openssl cms -sign -stream -binary -nodetach -signer "$PARTNER_PEM" -inkey "$PARTNER_KEY" -in "$W/msg" |
    openssl cms -encrypt -stream -binary -aes-256-cbc -out "$W/in.sealed" "$certs/rsa2048.pem"
  run "$be open kvp11" "$k smime open --account $acct --binary --cert rsa2048 --from partner --in $W/in.sealed --out $W/opened"
  cmp -s "$W/opened" "$W/msg" || die "$be: kvp11 smime open did not give the message back"
  rm -f "$W/opened"
  run "$be open openssl" "$ossl -decrypt -binary -engine pkcs11 -keyform engine -inkey '$uri' \
    -recip $certs/rsa2048.pem -in $W/in.sealed | openssl cms -verify -binary -CAfile $PARTNER_PEM \
    -purpose any -out $W/opened.ossl"
  cmp -s "$W/opened.ossl" "$W/msg" || die "$be: the openssl pipeline did not give the message back"
  rm -f "$W/opened.ossl" "$W/in.sealed"
}

KVP11_TOOL=$TOOL SOFTHSM2_MODULE=$SOFTHSM bash "$ROOT/tests/fixtures/mkenv.sh" "$W/hsm" >"$W/mkenv.log" 2>&1 ||
  { cat "$W/mkenv.log" >&2; die "mkenv.sh failed"; }
export SOFTHSM2_CONF=$W/hsm/softhsm2.conf
sed -i 's/^log_level = .*/log_level = info/' "$W/hsm/kvp11.conf"
PARTNER_PEM=$W/hsm/certs/partner.pem
PARTNER_KEY=$W/hsm/certs/partner.key

for be in $BACKENDS; do
  case $be in
    hsm) bench hsm "$W/hsm/kvp11.conf" default "$W/hsm/certs" "kvp11%20default" ;;
    kv)
      command -v node >/dev/null || { echo "kv: skipped (node not found)" >&2; continue; }
      bash "$ROOT/tests/kv/fixture-setup.sh" "$W/kv" "$ROOT/tests/emulator/kv-emulator.js" >"$W/kv.log" 2>&1 ||
        { cat "$W/kv.log" >&2; die "the Key Vault emulator did not start"; }
      sed -e "s|^registry = .*|registry = $W/kv-registry.db|" -e "s|^log_file = .*|log_file = $W/kv.log|" \
        -e 's/^log_level = .*/log_level = info/' "$W/kv/kvp11.conf" >"$W/kv.conf"
      "$TOOL" -c "$W/kv.conf" cert add --name rsa2048 --type private --cert "$W/kv/certs/rsa2048.pem" \
        --account kv --vault emu --key rsa2048 >/dev/null
      "$TOOL" -c "$W/kv.conf" cert add --name partner --type public --cert "$PARTNER_PEM" --account kv >/dev/null
      label=$(sed -n '/^\[account kv\]/,/^\[/s/^label = //p' "$W/kv.conf")
      bench kv "$W/kv.conf" kv "$W/kv/certs" "$(printf '%s' "${label:-kv}" | sed 's/ /%20/g')"
      ;;
    *) die "unknown backend '$be'" ;;
  esac
done

echo
printf '| backend | step | kvp11 time | openssl time | ratio | kvp11 CPU | openssl CPU | kvp11 peak RSS | openssl peak RSS |\n'
printf '|---|---|---:|---:|---:|---:|---:|---:|---:|\n'
# col NAME N: field N of the result line NAME
col() { awk -v n="$1" -v f="$2" '$1" "$2" "$3==n {print $f}' "$RESULTS"; }
for be in $BACKENDS; do
  for op in seal open; do
    kt=$(col "$be $op kvp11" 4)
    [ -n "$kt" ] || continue
    ot=$(col "$be $op openssl" 4)
    printf '| %s | %s %s MB | %s s | %s s | %.2f | %.2f s | %.2f s | %.1f MiB | %.1f MiB |\n' "$be" "$op" "$MB" \
      "$kt" "$ot" "$(echo "$kt / $ot" | bc -l)" "$(col "$be $op kvp11" 6)" "$(col "$be $op openssl" 6)" \
      "$(echo "$(col "$be $op kvp11" 5) / 1024" | bc -l)" "$(echo "$(col "$be $op openssl" 5) / 1024" | bc -l)"
  done
done
