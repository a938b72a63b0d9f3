#!/usr/bin/env bash
# tests/kv/bench-throttle.sh BUILD_DIR [SECONDS] [THREADS] [KEY] — throttling benchmark (not a test).
#
# Starts the emulator (fixture-setup.sh into BUILD_DIR/kv-throttle-bench) with the service's
# own limit (2,000 RSA-2048-HSM operations per 10 s, POST /_emu/limits), then runs
# test_kv_throttle at that scale: THREADS (16) threads sign through one Key Vault backend for
# a warm-up (the first burst meets the limit; the vault pauses everyone once) and SECONDS (40,
# whole windows) measured. Prints ops/s, the fraction of the limit the vault accepted, the
# 429s it answered, and p50/p99 latency of the operations. Exit status: the test's (0 when
# no operation failed, >= 90% of the limit and 429s < 10% of accepted).
# Knobs (environment): WINDOW_MS (10000), LIMIT (2000), WARMUP_MS (WINDOW_MS + 3000).
set -euo pipefail
die() { echo "bench-throttle.sh: error: $*" >&2; exit 1; }
[ $# -ge 1 ] || die "usage: $0 BUILD_DIR [SECONDS] [THREADS] [KEY]"
B=$(cd "$1" && pwd)
SECS=${2:-40}
THREADS=${3:-16}
KEY=${4:-rsa2048}
WINDOW_MS=${WINDOW_MS:-10000}
LIMIT=${LIMIT:-2000}
WARMUP_MS=${WARMUP_MS:-$((WINDOW_MS + 3000))}
HERE=$(cd "$(dirname "$0")" && pwd)
DIR=$B/kv-throttle-bench
PROG=$B/tests/kv/test_kv_throttle
[ -x "$PROG" ] || die "$PROG missing (build the test_kv_throttle target first)"
command -v node >/dev/null || die "node missing"
WINDOWS=$(( (SECS * 1000 + WINDOW_MS - 1) / WINDOW_MS ))
bash "$HERE/fixture-setup.sh" "$DIR" "$HERE/../emulator/kv-emulator.js" >/dev/null
trap 'bash "$HERE/fixture-cleanup.sh" "$DIR"' EXIT
echo "limit: $LIMIT per $WINDOW_MS ms; $THREADS threads; key $KEY; warm-up $WARMUP_MS ms; $WINDOWS windows measured"
rc=0
out=$(KVP11_KV_DIR=$DIR KVP11_THROTTLE_WINDOW_MS=$WINDOW_MS KVP11_THROTTLE_LIMIT=$LIMIT \
      KVP11_THROTTLE_THREADS=$THREADS KVP11_THROTTLE_WINDOWS=$WINDOWS \
      KVP11_THROTTLE_WARMUP_MS=$WARMUP_MS KVP11_THROTTLE_KEY=$KEY "$PROG" 2>&1) || rc=$?
res=$(grep -o 'RESULT.*' <<<"$out" || true)
[ -n "$res" ] || { echo "$out"; die "no RESULT line"; }
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<" $res"; }
printf '%-28s %s\n' "operations (all threads)" "$(field ops) ($(field errors) errors)"
printf '%-28s %s s\n' "measured" "$(field measured_s)"
printf '%-28s %s ops/s (limit %s/s)\n' "accepted throughput" "$(field ops_per_sec)" "$(field limit_per_sec)"
printf '%-28s %s\n' "fraction of the limit" "$(field fraction)"
printf '%-28s %s (%s per accepted request)\n' "429s answered (whole run)" "$(field throttled_429)" "$(field throttled_per_accepted)"
printf '%-28s p50 %s ms, p99 %s ms, max %s ms\n' "latency per operation" "$(field p50_ms)" "$(field p99_ms)" "$(field max_ms)"
printf '%-28s %s req/s\n' "client pacer's final rate" "$(field client_rate)"
grep -q 'FAILED' <<<"$out" && grep -E '^ +[0-9]+\. ' <<<"$out" || true
tail -n 3 "$DIR/throttle-test.log" 2>/dev/null | grep -i throttl || true
exit $rc
