#!/usr/bin/env bash
# tests/bench/run-bench.sh — sign throughput through libkvp11.so vs SoftHSM2 directly.
#
#   tests/bench/run-bench.sh [BUILD_DIR]        (default BUILD_DIR: build)
#
# Needs BUILD_DIR/tests/bench/kvp11-bench; uses BUILD_DIR/module/libkvp11.so and
# BUILD_DIR/tool/kvp11 when they exist (otherwise only SoftHSM2 is measured).
# Sets up a throwaway token with tests/fixtures/mkenv.sh in BUILD_DIR/bench-env
# (override with BENCH_ENV=/abs/dir), then for RSA-2048 (CKM_SHA256_RSA_PKCS)
# and P-256 (CKM_ECDSA over a 32-byte digest), 1 and 2 threads, runs
# C_SignInit+C_Sign loops against each module and prints a table with the ratio.
#
# Environment:
#   SECONDS_PER_RUN=3   length of one timed run
#   REPEAT=3            timed runs per cell and module (alternating); the best is reported
#   THREADS="1 2"       thread counts
#   THROUGHPUT=0        skip the timed runs (e.g. with CALLGRIND=1 only)
#   CALLGRIND=1         also count instructions per sign with valgrind --tool=callgrind
#                       (two runs of N1 and N2 signs; (Ir(N2) - Ir(N1)) / (N2 - N1)),
#                       through libkvp11.so and, with kvp11-bench-backend, through the
#                       HSM backend alone (module/backend/hsm, no PKCS#11 front)
#   CG_N1=20 CG_N2=120  iteration counts for the callgrind runs
#   SOFTHSM2_MODULE     SoftHSM2 module (default /usr/lib/softhsm/libsofthsm2.so)
set -euo pipefail

die() { echo "run-bench.sh: error: $*" >&2; exit 1; }

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=$(cd "${1:-$ROOT/build}" 2>/dev/null && pwd) || die "build directory '${1:-$ROOT/build}' not found"
BENCH=$BUILD/tests/bench/kvp11-bench
BENCH_BACKEND=$BUILD/tests/bench/kvp11-bench-backend
KVP11_SO=$BUILD/module/libkvp11.so
TOOL=$BUILD/tool/kvp11
SOFTHSM=${SOFTHSM2_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
OUT=${BENCH_ENV:-$BUILD/bench-env}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-3}
REPEAT=${REPEAT:-3}
THREADS=${THREADS:-1 2}
CG_N1=${CG_N1:-20}
CG_N2=${CG_N2:-120}
PIN=1234
HSM_TOKEN=kvp11-test
KEYS="rsa2048 p256"

[ -x "$BENCH" ] || die "$BENCH not built (cmake --build $BUILD --target kvp11-bench)"
[ -f "$SOFTHSM" ] || die "SoftHSM2 module not found at $SOFTHSM"

with_kvp11=0
if [ -f "$KVP11_SO" ] && [ -x "$TOOL" ]; then
  with_kvp11=1
else
  echo "run-bench.sh: $KVP11_SO or $TOOL missing: measuring SoftHSM2 directly only" >&2
fi

if [ $with_kvp11 = 1 ]; then
  KVP11_TOOL=$TOOL "$ROOT/tests/fixtures/mkenv.sh" "$OUT" >/dev/null
else
  "$ROOT/tests/fixtures/mkenv.sh" "$OUT" >/dev/null
fi
# shellcheck disable=SC1091
. "$OUT/env.sh" >/dev/null
# the fixture logs at debug level; a benchmark measures the quiet path
export KVP11_DEBUG=error:$OUT/kvp11-bench.log
ACCOUNT=$(sed -n '/^\[account default\]/,/^\[/s/^label *= *//p' "$OUT/kvp11.conf" | head -1)
[ -n "$ACCOUNT" ] || ACCOUNT=default

# one timed run: run1 MODULE TOKEN KEY THREADS -> "OPS_PER_SEC CPU_US_PER_OP"
run1() {
  local line r u
  line=$("$BENCH" -q -m "$1" -t "$2" -k "$3" -p "$PIN" -T "$4" -s "$SECONDS_PER_RUN") ||
    die "kvp11-bench failed on $1 key $3"
  r=$(sed -n 's/.*ops_per_sec=\([0-9.]*\).*/\1/p' <<<"$line")
  u=$(sed -n 's/.*cpu_us_per_op=\([0-9.]*\).*/\1/p' <<<"$line")
  if [ -z "$r" ] || [ -z "$u" ]; then die "kvp11-bench printed no result for $1 key $3"; fi
  echo "$r $u"
}
# keep the best: better BEST_RATE BEST_CPU RATE CPU -> "RATE CPU" (highest rate, lowest CPU)
better() {
  awk -v b="$1" -v c="$2" -v r="$3" -v u="$4" \
    'BEGIN { printf "%s %s\n", (r > b) ? r : b, (c == 0 || u < c) ? u : c }'
}

# --- callgrind helpers ---
CG_DIR=$OUT/callgrind
# cgrun OUTFILE CMD...: one run under callgrind
cgrun() {
  local out=$1; shift
  valgrind --tool=callgrind --callgrind-out-file="$out" "$@" >/dev/null 2>&1 ||
    die "callgrind run failed: $*"
}
# cg_total FILE: all instructions of the run
cg_total() { sed -n 's/^totals: *//p' "$1" | head -1; }
# cg_incl FILE REGEX: sum of the inclusive cost of the functions whose
# callgrind_annotate line ("file:function [object]") matches REGEX
cg_incl() {
  callgrind_annotate --inclusive=yes --threshold=100 "$1" 2>/dev/null |
    awk -v pat="$2" '$0 ~ pat { gsub(",", "", $1); s += $1 } END { printf "%.0f\n", s }'
}
# per_sign A1 A2: (A2 - A1) / (CG_N2 - CG_N1)
per_sign() { echo $((($2 - $1) / (CG_N2 - CG_N1))); }

SO_RE=$(basename "$SOFTHSM" | sed 's/\./\\./g')
KV_RE=$(basename "$KVP11_SO" | sed 's/\./\\./g')
HSM_CALLS=":C_Sign(Init)? \\[.*$SO_RE\\]"

# ipsign MODULE TOKEN KEY TAG: instructions per sign (whole process, N2 - N1 runs)
ipsign() {
  local n
  for n in "$CG_N1" "$CG_N2"; do
    cgrun "$CG_DIR/$4.$3.$n.out" "$BENCH" -q -m "$1" -t "$2" -k "$3" -p "$PIN" -n "$n"
  done
  per_sign "$(cg_total "$CG_DIR/$4.$3.$CG_N1.out")" "$(cg_total "$CG_DIR/$4.$3.$CG_N2.out")"
}
# nested_extra FILE_PREFIX OUTER_REGEX: instructions per sign spent in the outer
# functions but not in the HSM's C_SignInit/C_Sign they call. Exact: both
# inclusive costs come from the same run, so SoftHSM's own variation (RSA
# blinding) cancels out.
nested_extra() {
  local o1 o2 i1 i2
  o1=$(cg_incl "$1.$CG_N1.out" "$2"); i1=$(cg_incl "$1.$CG_N1.out" "$HSM_CALLS")
  o2=$(cg_incl "$1.$CG_N2.out" "$2"); i2=$(cg_incl "$1.$CG_N2.out" "$HSM_CALLS")
  per_sign $((o1 - i1)) $((o2 - i2))
}

echo "# kvp11 sign benchmark: $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPU(s), SoftHSM2 $(softhsm2-util --version 2>/dev/null)"
echo "# best of $REPEAT runs of ${SECONDS_PER_RUN}s; C_SignInit+C_Sign, one session per thread;"
echo "# CPU/op: process user+system CPU time per sign (less sensitive to other load than ops/s)"
echo
if [ "${THROUGHPUT:-1}" != 0 ]; then
printf '| %-8s | %-7s | %-14s | %-14s | %-6s | %-14s | %-14s | %-9s |\n' key threads \
  "SoftHSM2 ops/s" "kvp11 ops/s" ratio "SoftHSM2 CPU/op" "kvp11 CPU/op" "CPU ratio"
printf '|%s|%s|%s|%s|%s|%s|%s|%s|\n' ---------- --------- ---------------- ---------------- \
  -------- ----------------- ---------------- -----------
for key in $KEYS; do
  for t in $THREADS; do
    # direct and kvp11 runs alternate, so that other load on the machine
    # hits both alike; the best of REPEAT runs of each is kept
    d=0 dc=0 k=0 kc=0
    for _ in $(seq "$REPEAT"); do
      res=$(run1 "$SOFTHSM" "$HSM_TOKEN" "$key" "$t")
      read -r r u <<<"$res"
      read -r d dc <<<"$(better "$d" "$dc" "$r" "$u")"
      if [ $with_kvp11 = 1 ]; then
        res=$(run1 "$KVP11_SO" "$ACCOUNT" "$key" "$t")
        read -r r u <<<"$res"
        read -r k kc <<<"$(better "$k" "$kc" "$r" "$u")"
      fi
    done
    if [ $with_kvp11 = 1 ]; then
      ratio=$(awk -v a="$k" -v b="$d" 'BEGIN { printf "%.3f", (b > 0) ? a / b : 0 }')
      cratio=$(awk -v a="$kc" -v b="$dc" 'BEGIN { printf "%.3f", (b > 0) ? a / b : 0 }')
      kc="$kc us"
    else
      k=n/a; ratio=n/a; kc=n/a; cratio=n/a
    fi
    printf '| %-8s | %-7s | %-14s | %-14s | %-6s | %-15s | %-14s | %-9s |\n' \
      "$key" "$t" "$d" "$k" "$ratio" "$dc us" "$kc" "$cratio"
  done
done
fi

if [ "${CALLGRIND:-0}" = 1 ]; then
  command -v valgrind >/dev/null 2>&1 || die "valgrind not installed"
  command -v callgrind_annotate >/dev/null 2>&1 || die "callgrind_annotate not installed"
  mkdir -p "$CG_DIR"
  echo
  echo "# instructions per sign (valgrind --tool=callgrind, 1 thread, ($CG_N2 - $CG_N1) signs)."
  echo "# total: whole process, kvp11 run minus direct run (RSA: +-10k noise from SoftHSM's blinding);"
  echo "# nested: instructions inside libkvp11.so's C_SignInit+C_Sign minus the SoftHSM2"
  echo "# C_SignInit+C_Sign they call, in the same run (exact; it counts the SHA-256 of the"
  echo "# data, which kvp11 computes itself and SoftHSM2 computes in the direct run)"
  echo
  printf '| %-8s | %-16s | %-16s | %-13s | %-14s |\n' key "SoftHSM2 Ir/sign" "kvp11 Ir/sign" "total extra" "nested extra"
  printf '|%s|%s|%s|%s|%s|\n' ---------- ------------------ ------------------ --------------- ----------------
  for key in $KEYS; do
    d=$(ipsign "$SOFTHSM" "$HSM_TOKEN" "$key" direct)
    if [ $with_kvp11 = 1 ]; then
      k=$(ipsign "$KVP11_SO" "$ACCOUNT" "$key" kvp11)
      x=$((k - d))
      nx=$(nested_extra "$CG_DIR/kvp11.$key" ":C_Sign(Init)? \\[.*$KV_RE\\]")
    else
      k=n/a; x=n/a; nx=n/a
    fi
    printf '| %-8s | %-16s | %-16s | %-13s | %-14s |\n' "$key" "$d" "$k" "$x" "$nx"
  done
fi

if [ "${CALLGRIND:-0}" = 1 ] && [ -x "$BENCH_BACKEND" ]; then
  export KVP11_BENCH_PIN=$PIN
  echo
  echo "# HSM backend alone (module/backend/hsm, no PKCS#11 front): ops->sign() vs the same"
  echo "# C_SignInit+C_Sign (CKM_RSA_PKCS over a SHA-256 DigestInfo / CKM_ECDSA) made directly"
  echo "# on SoftHSM2; nested: inside hsm_sign() minus the SoftHSM2 calls it makes"
  echo
  printf '| %-8s | %-16s | %-16s | %-13s | %-14s |\n' key "direct Ir/sign" "backend Ir/sign" "total extra" "nested extra"
  printf '|%s|%s|%s|%s|%s|\n' ---------- ------------------ ------------------ --------------- ----------------
  for key in $KEYS; do
    for mode in direct backend; do
      for n in "$CG_N1" "$CG_N2"; do
        flag=(); [ $mode = direct ] && flag=(-d)
        cgrun "$CG_DIR/be-$mode.$key.$n.out" "$BENCH_BACKEND" "${flag[@]}" -q -m "$SOFTHSM" \
          -t "$HSM_TOKEN" -k "$key" -e KVP11_BENCH_PIN -n "$n"
      done
    done
    d=$(per_sign "$(cg_total "$CG_DIR/be-direct.$key.$CG_N1.out")" "$(cg_total "$CG_DIR/be-direct.$key.$CG_N2.out")")
    b=$(per_sign "$(cg_total "$CG_DIR/be-backend.$key.$CG_N1.out")" "$(cg_total "$CG_DIR/be-backend.$key.$CG_N2.out")")
    nx=$(nested_extra "$CG_DIR/be-backend.$key" ":hsm_sign \\[")
    printf '| %-8s | %-16s | %-16s | %-13s | %-14s |\n' "$key" "$d" "$b" "$((b - d))" "$nx"
  done
fi
