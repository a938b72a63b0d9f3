#!/usr/bin/env bash
# tests/deploy/bench-deploy.sh [BUILD_DIR] — deployment benchmarks (not a test; figures in
# docs/performance.md and docs/deployment.md):
#  1. cost per call in-process (mode 1) vs through p11-kit server (mode 2):
#     ECDSA P-256 on SoftHSM2 and RS256 (CKM_SHA256_RSA_PKCS) on the Key Vault emulator;
#     ops/s and the client's CPU µs per sign, 1 thread;
#  (SKIP_MODES=1: only part 2)
#  2. the audit trail: P-256 signs/s on SoftHSM2 with audit = off vs a file vs syslog
#     (as root, syslog is measured in a private mount namespace with a stand-in
#     logger on /dev/log, so that syslog(3) has a socket to send to).
# Each cell: REPEAT (3) alternating runs of SECONDS (3) s, the best is reported.
set -euo pipefail
die() { echo "bench-deploy.sh: error: $*" >&2; exit 1; }
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
B=$(cd "${1:-$ROOT/build}" && pwd)
SECONDS_PER_RUN=${SECONDS_PER_RUN:-3}
REPEAT=${REPEAT:-3}
BENCH=$B/tests/bench/kvp11-bench
MOD=$B/module/libkvp11.so
TOOL=$B/tool/kvp11
CLIENT_SO=$(find /usr/lib -name p11-kit-client.so -path '*pkcs11*' | head -1)
for f in "$BENCH" "$MOD" "$TOOL" "$CLIENT_SO"; do [ -e "$f" ] || die "$f missing"; done
W=$B/deploy-bench
if [ "${AUDIT_ONLY:-}" = 1 ]; then # inside the namespace made below: the audit cells only
  best() {
    local m=$1 tok=$2 key=$3; shift 3
    env "$@" "$BENCH" -q -m "$m" -t "$tok" -k "$key" -p 1234 -T 1 -s "$SECONDS_PER_RUN" |
      sed -n 's/.*ops_per_sec=\([0-9.]*\).*cpu_us_per_op=\([0-9.]*\).*/\1 \2/p'
  }
  eval "$(sed -n '/^audit_cells() {/,/^}/p' "$0")"
  audit_cells
  exit 0
fi
rm -rf "$W"; mkdir -p "$W"
PIDS=""
cleanup() { for p in $PIDS; do kill "$p" 2>/dev/null || true; done; [ -f "$W/kv/port" ] && bash "$ROOT/tests/kv/fixture-cleanup.sh" "$W/kv" >/dev/null 2>&1 || true; }
trap cleanup EXIT

# best MODULE TOKEN KEY [env...] -> "ops/s cpu_us"
best() {
  local m=$1 tok=$2 key=$3; shift 3
  local r=0 c=0 line i
  for ((i = 0; i < REPEAT; i++)); do
    line=$(env "$@" "$BENCH" -q -m "$m" -t "$tok" -k "$key" -p 1234 -T 1 -s "$SECONDS_PER_RUN") || die "kvp11-bench $m $key"
    read -r r c < <(awk -v b="$r" -v bc="$c" -v l="$line" 'BEGIN {
      match(l, /ops_per_sec=[0-9.]+/); x = substr(l, RSTART + 12, RLENGTH - 12)
      match(l, /cpu_us_per_op=[0-9.]+/); u = substr(l, RSTART + 14, RLENGTH - 14)
      printf "%s %s\n", (x > b) ? x : b, (bc == 0 || u < bc) ? u : bc }')
  done
  echo "$r $c"
}
server() { # server DIR ENV... : p11-kit server on DIR/pkcs11.sock, as the unit runs it
  local d=$1; shift
  env "$@" p11-kit server --foreground --name "$d/pkcs11.sock" --provider "$MOD" pkcs11:model=kvp11 >"$d/server.out" 2>&1 &
  PIDS="$PIDS $!"
  for _ in $(seq 50); do [ -S "$d/pkcs11.sock" ] && return; sleep 0.1; done
  die "p11-kit server did not start"
}

# SoftHSM2 fixture
KVP11_TOOL=$TOOL "$ROOT/tests/fixtures/mkenv.sh" "$W/hsm" >/dev/null
sed -i 's/^log_level = .*/log_level = warn/; /^log_file/d' "$W/hsm/kvp11.conf"
HSM_ENV=(SOFTHSM2_CONF="$W/hsm/softhsm2.conf" KVP11_CONF="$W/hsm/kvp11.conf")
printf '%-34s %10s %14s\n' "cell" "ops/s" "client_cpu_us"
if [ "${SKIP_MODES:-}" != 1 ]; then
server "$W/hsm" "${HSM_ENV[@]}"
: printf '%-34s %10s %14s\n' "cell" "ops/s" "client_cpu_us"
read -r r c < <(best "$MOD" "kvp11 default" p256 "${HSM_ENV[@]}")
printf '%-34s %10s %14s\n' "P-256 SoftHSM2 in-process" "$r" "$c"
read -r r c < <(best "$CLIENT_SO" "kvp11 default" p256 P11_KIT_SERVER_ADDRESS="unix:path=$W/hsm/pkcs11.sock")
printf '%-34s %10s %14s\n' "P-256 SoftHSM2 p11-kit server" "$r" "$c"

# Key Vault emulator
if command -v node >/dev/null && bash "$ROOT/tests/kv/fixture-setup.sh" "$W/kv" "$ROOT/tests/emulator/kv-emulator.js" >/dev/null 2>&1; then
  bash "$ROOT/tests/kv/fixture-register.sh" "$W/kv" "$TOOL" >/dev/null
  sed -i 's/^log_level = .*/log_level = warn/' "$W/kv/kvp11.conf"
  tok=$(sed -n '/^\[account/,/^\[/s/^label *= *//p' "$W/kv/kvp11.conf" | head -1)
  server "$W/kv" KVP11_CONF="$W/kv/kvp11.conf"
  read -r r c < <(best "$MOD" "$tok" rsa2048 KVP11_CONF="$W/kv/kvp11.conf")
  printf '%-34s %10s %14s\n' "RS256 emulator in-process" "$r" "$c"
  read -r r c < <(best "$CLIENT_SO" "$tok" rsa2048 P11_KIT_SERVER_ADDRESS="unix:path=$W/kv/pkcs11.sock")
  printf '%-34s %10s %14s\n' "RS256 emulator p11-kit server" "$r" "$c"
else
  echo "(Key Vault emulator not available: node or tests/kv/fixture-setup.sh failed)"
fi
fi # SKIP_MODES

audit_cells() {
  # audit on vs off: alternate the configurations so that machine load hits both alike
  sed 's/^\[global\]/[global]\naudit = off/' "$W/hsm/kvp11.conf" >"$W/off.conf"
  sed "s|^\\[global\\]|[global]\\naudit = $W/audit.log|" "$W/hsm/kvp11.conf" >"$W/file.conf"
  sed 's/^\[global\]/[global]\naudit = syslog/' "$W/hsm/kvp11.conf" >"$W/syslog.conf"
  : >"$W/audit.log"
  declare -A R
  for cfg in off file syslog; do R[$cfg]=0; done
  for ((i = 0; i < REPEAT; i++)); do
    for cfg in off file syslog; do
      read -r r _ < <(REPEAT=1 best "$MOD" "kvp11 default" p256 SOFTHSM2_CONF="$W/hsm/softhsm2.conf" KVP11_CONF="$W/$cfg.conf")
      R[$cfg]=$(awk -v a="${R[$cfg]}" -v b="$r" 'BEGIN { print (b > a) ? b : a }')
    done
  done
  for cfg in off file syslog; do
    printf '%-34s %10s %14s\n' "P-256 SoftHSM2 audit=$cfg" "${R[$cfg]}" \
      "$(awk -v a="${R[off]}" -v b="${R[$cfg]}" 'BEGIN { printf "%+.1f%%", (b - a) * 100 / a }')"
  done
  echo "audit records written to the file: $(wc -l <"$W/audit.log")"
}
if [ "$(id -u)" -eq 0 ] && unshare -m --propagation private true 2>/dev/null; then
  unshare -m --propagation private bash -c '
    mount -t tmpfs -o mode=755 none /dev && mknod -m 666 /dev/null c 1 3 && mknod -m 666 /dev/zero c 1 5 &&
      mknod -m 666 /dev/urandom c 1 9 && mknod -m 666 /dev/random c 1 8 && ln -s /proc/self/fd /dev/fd || exit 1
    python3 "$1/syslog_sink.py" /dev/log "$2/syslog.txt" & sink=$!
    for _ in $(seq 50); do [ -S /dev/log ] && break; sleep 0.1; done
    AUDIT_ONLY=1 bash "$1/bench-deploy.sh" "$3"; rc=$?; kill $sink; exit $rc' _ "$(dirname "$0")" "$W" "$B"
elif [ "${AUDIT_ONLY:-}" != 1 ]; then
  audit_cells
fi
