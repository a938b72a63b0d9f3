#!/usr/bin/env bash
# tests/bench/scale.sh — what a registry of N partner certificates costs (issue 15).
#
#   tests/bench/scale.sh BUILD_DIR [N...]        (default N: 1000 10000 100000)
#
# Not a CTest test: it prints figures (docs/performance.md, "Scale"). Sets up the
# shared fixture (tests/fixtures/mkenv.sh: a SoftHSM2 token, four private
# certificates, one partner) in BUILD_DIR/scale-env (override with
# SCALE_ENV=/abs/dir), measures it as the empty-registry baseline (N = 0), then
# for each N: generates N distinct partner certificates (kvp11-scale-certs: one
# P-256 key each, one CA), registers them with one `kvp11 cert add --cert-dir`,
# and measures with kvp11-scale-probe and /usr/bin/time:
#   init       C_Initialize alone; dlopen + C_Initialize -> first session
#              (median of REPEAT runs, each a new process); process RSS after
#              it, and the RSS added by loading and initializing libkvp11.so
#   find       C_FindObjectsInit + C_FindObjects + C_FindObjectsFinal by
#              CKA_LABEL, by CKA_ID, by class + label, on rows not looked at
#              before (median and worst of 200 each)
#   reload     a signer thread signs on another session (p256, CKM_ECDSA)
#              while `kvp11 cert add` registers one more certificate; the time
#              from the tool's exit until the running process finds it, and
#              the signer's worst sign meanwhile (and before, for comparison);
#              then again with the module's debug log, for how long the reload
#              held the table write lock (all a signer on another session can wait for)
#   list       `kvp11 cert list` and `cert list --json`: time and peak RSS
#
# Environment: REPEAT=3, SOFTHSM2_MODULE (default /usr/lib/softhsm/libsofthsm2.so).
set -euo pipefail

die() { echo "scale.sh: error: $*" >&2; exit 1; }

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
[ $# -ge 1 ] || die "usage: $0 BUILD_DIR [N...]"
BUILD=$(cd "$1" 2>/dev/null && pwd) || die "build directory '$1' not found"
shift
SIZES=${*:-1000 10000 100000}
REPEAT=${REPEAT:-3}
TOOL=$BUILD/tool/kvp11
SO=$BUILD/module/libkvp11.so
GEN=$BUILD/tests/bench/kvp11-scale-certs
PROBE=$BUILD/tests/bench/kvp11-scale-probe
OUT=${SCALE_ENV:-$BUILD/scale-env}
for f in "$TOOL" "$SO" "$GEN" "$PROBE"; do [ -e "$f" ] || die "$f not built"; done
[ -x /usr/bin/time ] || die "/usr/bin/time (GNU time) is needed for peak RSS"

mkdir -p "$OUT"
KVP11_TOOL=$TOOL "$ROOT/tests/fixtures/mkenv.sh" "$OUT/env" >/dev/null || die "fixture"
# shellcheck disable=SC1091
. "$OUT/env/env.sh" >/dev/null
export KVP11_DEBUG=error:$OUT/kvp11.log # the quiet path is measured
CONF=$KVP11_CONF
REG=$OUT/env/registry.db
TOKEN=$(sed -n '/^\[account default\]/,/^\[/s/^label *= *//p' "$CONF" | head -1)
[ -n "$TOKEN" ] || TOKEN=default
"$TOOL" -c "$CONF" cert list >/dev/null || die "the fixture's registry does not list"
for f in "$REG" "$REG-wal" "$REG-shm"; do [ ! -e "$f" ] || cp "$f" "$OUT/base.${f##*.}"; done

restore() {
  rm -f "$REG" "$REG-wal" "$REG-shm"
  for f in db db-wal db-shm; do [ ! -e "$OUT/base.$f" ] || cp "$OUT/base.$f" "${REG%.db}.$f"; done
}
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
field() { sed -n "s/\(^\|.* \)$1=\([0-9.]*\).*/\2/p" <<<"$2"; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
# timed CMD...: "WALL_S PEAK_RSS_KB CPU_S" of one run (CPU: user + system), output discarded
timed() {
  /usr/bin/time -f "%e %M %U %S" -o "$OUT/time.out" "$@" >/dev/null || die "failed: $*"
  awk '{ printf "%s %s %.2f\n", $1, $2, $3 + $4 }' "$OUT/time.out"
}

rows=()
for n in 0 $SIZES; do
  restore
  add_s=-
  if [ "$n" -gt 0 ]; then
    dir=$OUT/certs-$n
    if [ "$(find "$dir" -name '*.pem' 2>/dev/null | wc -l)" -ne "$n" ]; then
      rm -rf "$dir" && mkdir -p "$dir"
      "$GEN" "$dir" "$n" partner || die "certificate generation"
    fi
    read -r add_s _ add_cpu < <(timed "$TOOL" -c "$CONF" cert add --type public --cert-dir "$dir")
    add_s="$add_s ($add_cpu)"
  fi
  init=() sess=() rss=() added=()
  for _ in $(seq "$REPEAT"); do
    line=$("$PROBE" init "$SO")
    init+=("$(field init_ms "$line")") sess+=("$(field session_ms "$line")")
    rss+=("$(field rss_kb "$line")")
    added+=($(($(field rss_kb "$line") - $(field rss_before_kb "$line"))))
  done
  init_ms=$(printf '%s\n' "${init[@]}" | median)
  sess_ms=$(printf '%s\n' "${sess[@]}" | median)
  rss_kb=$(printf '%s\n' "${rss[@]}" | median)
  added_kb=$(printf '%s\n' "${added[@]}" | median)
  find_cols="- | - | -"
  if [ "$n" -ge 600 ]; then
    line=$("$PROBE" find "$SO" "$TOKEN" "$OUT/certs-$n" partner "$n" 200)
    find_cols="$(field label_median_ms "$line") / $(field label_max_ms "$line") | $(field id_median_ms "$line") / $(field id_max_ms "$line") | $(field class_label_median_ms "$line") / $(field class_label_max_ms "$line")"
  fi
  extra=$OUT/extra-$n
  rm -rf "$extra" && mkdir -p "$extra" && "$GEN" "$extra" 1 "newcomer$n-" >/dev/null
  line=$("$PROBE" reload "$SO" "$TOKEN" 1234 p256 "newcomer$n-0" \
    "'$TOOL' -c '$CONF' cert add --name 'newcomer$n-0' --type public --cert '$extra/newcomer$n-0.pem' >/dev/null")
  # the same with the module's debug log: how long each reload held the table write lock
  rm -rf "$extra" && mkdir -p "$extra" && "$GEN" "$extra" 1 "late$n-" >/dev/null
  KVP11_DEBUG=debug:$OUT/reload-$n.log "$PROBE" reload "$SO" "$TOKEN" 1234 p256 "late$n-0" \
    "'$TOOL' -c '$CONF' cert add --name 'late$n-0' --type public --cert '$extra/late$n-0.pem' >/dev/null" >/dev/null
  held=$(sed -n 's/.*table lock held \([0-9.]*\) us.*/\1/p' "$OUT/reload-$n.log" | sort -n | tail -1)
  reload_cols="$(field tool_ms "$line") | $(field visible_ms "$line") | $(field sign_max_ms "$line") ($(field sign_max_before_ms "$line")) | ${held:--}"
  read -r ls lk lc < <(timed "$TOOL" -c "$CONF" cert list)
  read -r js jk jc < <(timed "$TOOL" -c "$CONF" cert list --json)
  rows+=("| $n | $init_ms | $sess_ms | $(mib "$rss_kb") | $(mib "$added_kb") | $find_cols | $add_s | $reload_cols | $ls ($lc) / $(mib "$lk") | $js ($jc) / $(mib "$jk") |")
  echo "scale.sh: N=$n done" >&2
done

echo "kvp11 scale benchmark: $(nproc) CPUs, $(date -u +%Y-%m-%d), REPEAT=$REPEAT, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "times in ms unless marked s; (s) columns: wall (CPU user + system); RSS in MiB"
echo
echo "| registered | C_Initialize | dlopen → first session | RSS after init | RSS added by libkvp11 | find by label (median / worst) | find by CKA_ID | find by class + label | cert add --cert-dir (s) | cert add of one more (tool) | visible after the tool's exit | worst sign during it (before) | table lock held by a reload (µs) | cert list (s / MiB) | cert list --json (s / MiB) |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
printf '%s\n' "${rows[@]}"
