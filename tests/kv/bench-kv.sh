#!/usr/bin/env bash
# tests/kv/bench-kv.sh BUILD_DIR [KEY] [SECONDS] — the Key Vault benchmark (not a test).
#
# Starts the emulator (fixture-setup.sh into BUILD_DIR/kv-bench), registers its keys, then for
# 1, 2, 4 and 16 threads: C_SignInit+C_Sign through libkvp11.so (kvp11-bench) with the
# emulator's request counters, and the plain libcurl loop (kv-curl-loop) sending the same
# request over kept-alive connections. Prints one line per run:
#   threads, ops/s, client CPU us per sign, requests per sign (sign endpoint / signs), tokens
# Then (CALLGRIND=0 skips it): requests to a fresh process's first sign, and instructions per
# sign in steady state under callgrind for RS256 (rsa2048) and ES256 (p256), libkvp11.so and
# the plain loop: (Ir of a run of N2 signs - Ir of N1 signs) / (N2 - N1), 1 thread.
set -euo pipefail
die() { echo "bench-kv.sh: error: $*" >&2; exit 1; }
[ $# -ge 1 ] || die "usage: $0 BUILD_DIR [KEY] [SECONDS]"
B=$(cd "$1" && pwd)
KEY=${2:-rsa2048}
SECS=${3:-3}
HERE=$(cd "$(dirname "$0")" && pwd)
DIR=$B/kv-bench
MOD=$B/module/libkvp11.so
BENCH=$B/tests/bench/kvp11-bench
LOOP=$B/tests/kv/kv-curl-loop
TOOL=$B/tool/kvp11
for f in "$MOD" "$BENCH" "$LOOP" "$TOOL"; do [ -x "$f" ] || [ -f "$f" ] || die "$f missing (build first)"; done
bash "$HERE/fixture-setup.sh" "$DIR" "$HERE/../emulator/kv-emulator.js" >/dev/null
trap 'bash "$HERE/fixture-cleanup.sh" "$DIR"' EXIT
bash "$HERE/fixture-register.sh" "$DIR" "$TOOL" >/dev/null
URL=https://127.0.0.1:$(cat "$DIR/port")
sed -i 's/^log_level = .*/log_level = warn/' "$DIR/kvp11.conf"
# the emulator's token resource (a real vault host's comes from its cloud suffix)
sed -i 's|^max_retries = .*|&\nresource = https://127.0.0.1|' "$DIR/kvp11.conf"
emu() { curl -sf --cacert "$DIR/ca.pem" -X "$1" "$URL$2" -H 'Content-Type: application/json' ${3:+-d "$3"}; }
count() { node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{const c=JSON.parse(s).counters;console.log(c[process.argv[1]]||0)})' "$1"; }
printf '%-14s %7s %10s %14s %14s %7s\n' client threads ops/s cpu_us/sign requests/sign tokens
for T in 1 2 4 16; do
  emu POST /_emu/reset '{}' >/dev/null
  out=$(KVP11_CONF=$DIR/kvp11.conf "$BENCH" -m "$MOD" -t "kvp11 kv" -k "$KEY" -T "$T" -s "$SECS" -q)
  c=$(emu GET /_emu/counters)
  ops=$(sed -n 's/.* ops=\([0-9]*\).*/\1/p' <<<"$out")
  rate=$(sed -n 's/.*ops_per_sec=\([0-9.]*\).*/\1/p' <<<"$out")
  cpu=$(sed -n 's/.*cpu_us_per_op=\([0-9.]*\).*/\1/p' <<<"$out")
  signs=$(count sign <<<"$c")
  tokens=$(count token <<<"$c")
  # each thread signs once before the clock starts; the module starts cold (challenge + get)
  rps=$(awk -v s="$signs" -v o="$ops" -v t="$T" 'BEGIN{printf "%.3f", s/(o+t)}')
  printf '%-14s %7s %10s %14s %14s %7s\n' libkvp11.so "$T" "$rate" "$cpu" "$rps" "$tokens"
  out=$("$LOOP" -d "$DIR" -k "$KEY" -T "$T" -s "$SECS")
  rate=$(sed -n 's/.*ops_per_sec=\([0-9.]*\).*/\1/p' <<<"$out")
  cpu=$(sed -n 's/.*cpu_us_per_op=\([0-9.]*\).*/\1/p' <<<"$out")
  printf '%-14s %7s %10s %14s %14s %7s\n' plain-libcurl "$T" "$rate" "$cpu" 1.000 1
done

[ "${CALLGRIND:-1}" = 0 ] && exit 0
command -v valgrind >/dev/null || { echo "valgrind missing: no callgrind figures"; exit 0; }
# a fresh process's first sign (kvp11-bench signs once before its clock, then -n more)
emu POST /_emu/reset '{}' >/dev/null
KVP11_CONF=$DIR/kvp11.conf "$BENCH" -m "$MOD" -t "kvp11 kv" -k "$KEY" -T 1 -n 1 -q >/dev/null
c=$(emu GET /_emu/counters)
total=$(node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).total))' <<<"$c")
echo "fresh process, first sign: $((total - 1)) requests (token $(count token <<<"$c"), get $(count get <<<"$c"), sign 1); the second: 1"
ir() { # total instructions of a callgrind run
  local out=$DIR/cg.out
  valgrind --tool=callgrind --callgrind-out-file="$out" "$@" >/dev/null 2>&1
  sed -n 's/^summary: *\([0-9]*\).*/\1/p;s/^totals: *\([0-9]*\).*/\1/p' "$out" | head -1
}
N1=${N1:-20} N2=${N2:-120}
printf '%-14s %-6s %14s\n' client alg instructions/sign
for K in rsa2048:RS256 p256:ES256; do
  k=${K%%:*} alg=${K#*:}
  a=$(KVP11_CONF=$DIR/kvp11.conf ir "$BENCH" -m "$MOD" -t "kvp11 kv" -k "$k" -T 1 -n "$N1" -q)
  b=$(KVP11_CONF=$DIR/kvp11.conf ir "$BENCH" -m "$MOD" -t "kvp11 kv" -k "$k" -T 1 -n "$N2" -q)
  m=$(( (b - a) / (N2 - N1) ))
  a=$(ir "$LOOP" -d "$DIR" -k "$k" -T 1 -n "$N1")
  b=$(ir "$LOOP" -d "$DIR" -k "$k" -T 1 -n "$N2")
  l=$(( (b - a) / (N2 - N1) ))
  printf '%-14s %-6s %14s\n' libkvp11.so "$alg" "$m"
  printf '%-14s %-6s %14s   (libkvp11.so / loop: %s)\n' plain-libcurl "$alg" "$l" \
    "$(awk -v m="$m" -v l="$l" 'BEGIN{printf "%.2fx", m/l}')"
done
