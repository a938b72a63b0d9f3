#!/usr/bin/env bash
# tests/stress/registry-safety.sh — registry safety (issue 6, item 8).
#
#   registry-safety.sh /abs/DIR KVP11_TOOL LIBKVP11 KVP11_STRESS_FIND KVP11_STRESS_SQLKILL \
#                      KVP11_STRESS_MKCERTS
#
# 1. 8 processes each add 40 distinct public certificates through the tool and remove half
#    of them, concurrently: the registry then holds exactly the 160 expected rows (tool
#    `cert list --json` and C_FindObjects through libkvp11.so), no lost or duplicated row.
# 2. Writers killed with SIGKILL mid-transaction: a sqlite writer (kvp11-stress-sqlkill) killed
#    after BEGIN IMMEDIATE + INSERT / DELETE / UPDATE, and tool `cert add` loops killed at
#    random moments: the registry still lists the committed rows only, the module reads the
#    same rows, every add the tool reported stays, and a new writer works.
# 3. A corrupt file, random bytes, a PNG, an empty file and another program's SQLite
#    database at the registry path: the tool fails with one error line naming the path; the
#    module does not crash (its behaviour is printed).
# Prints "N passed, N failed" and exits 1 when a check failed. No timing assertions.
set -uo pipefail

[ $# -eq 6 ] || { echo "usage: $0 /abs/DIR TOOL LIBKVP11 STRESS_FIND STRESS_SQLKILL STRESS_MKCERTS" >&2; exit 2; }
DIR=${1%/}
TOOL=$2
MODULE=$3
FIND=$4
SQLKILL=$5
MKCERTS=$6
case "$DIR" in /?*/*) ;; *) echo "DIR must be an absolute path below / (got '$DIR')" >&2; exit 2 ;; esac
command -v openssl >/dev/null || { echo "openssl not found: skipped"; exit 77; }

TOKEN="kvp11 registry stress"
PASS=0
FAIL=0
ok() { PASS=$((PASS + 1)); echo "ok: $*"; }
phase() { echo "--- $* (t=${SECONDS}s)"; }
ko() { FAIL=$((FAIL + 1)); echo "FAIL: $*"; }
check() { local what=$1; shift; if "$@"; then ok "$what"; else ko "$what"; fi; }

rm -rf "$DIR"
mkdir -p "$DIR/certs"
REG=$DIR/registry.db
CONF=$DIR/kvp11.conf
cat >"$CONF" <<EOF
[global]
registry = $REG
log_level = info
log_file = $DIR/kvp11.log

[account default]
label = $TOKEN
EOF
export KVP11_CONF=$CONF KVP11_MODULE=$MODULE
kv() { "$TOOL" -c "$CONF" "$@"; }

# names in the registry, sorted, as the tool lists them (one per line)
tool_names() {
  kv cert list --json >"$DIR/list.json" || return 1
  grep -o '"name": *"[^"]*"' "$DIR/list.json" | sed 's/.*: *"\(.*\)"$/\1/' | LC_ALL=C sort
}
# names as the module sees them
module_names() { "$FIND" "$TOKEN" | LC_ALL=C sort; }

phase certificates
# --- certificates: 320 distinct self-signed public certificates from one key -------------------
"$MKCERTS" "$DIR/certs" 8 40 || { echo "certificate generation failed" >&2; exit 1; }
# the registry exists before the writers race (creation and migration are not under test here)
kv cert add --name seed --type public --cert "$DIR/certs/w1-c1.pem" >/dev/null || { echo "seed add failed" >&2; exit 1; }
kv cert remove seed >/dev/null || exit 1

phase concurrent writers
# --- 1. 8 concurrent writers ------------------------------------------------------------------
writer() {
  local p=$1 i
  for i in $(seq 1 40); do
    kv cert add --name "w$p-c$i" --type public --cert "$DIR/certs/w$p-c$i.pem" >/dev/null \
      2>>"$DIR/writer$p.err" || echo "add w$p-c$i" >>"$DIR/writer-failures"
    if [ $((i % 2)) -eq 0 ]; then
      kv cert remove "w$p-c$((i - 1))" >/dev/null 2>>"$DIR/writer$p.err" \
        || echo "remove w$p-c$((i - 1))" >>"$DIR/writer-failures"
    fi
  done
}
: >"$DIR/writer-failures"
pids=()
for p in $(seq 1 8); do writer "$p" & pids+=($!); done
for pid in "${pids[@]}"; do wait "$pid"; done
for p in $(seq 1 8); do for i in $(seq 2 2 40); do echo "w$p-c$i"; done; done | LC_ALL=C sort >"$DIR/expected"
check "concurrent writers: every tool add/remove succeeded ($(wc -l <"$DIR/writer-failures") failures)" \
  test ! -s "$DIR/writer-failures"
[ -s "$DIR/writer-failures" ] && head -5 "$DIR/writer-failures" "$DIR"/writer*.err
tool_names >"$DIR/got" || ko "cert list --json failed"
check "concurrent writers: registry holds exactly the $(wc -l <"$DIR/expected") expected rows (tool lists $(wc -l <"$DIR/got"), $(sort "$DIR/got" | uniq -d | wc -l) duplicated)" \
  cmp -s "$DIR/expected" "$DIR/got"
module_names >"$DIR/mod" 2>"$DIR/mod.err"
check "concurrent writers: the module finds exactly the expected certificates ($(wc -l <"$DIR/mod"))" \
  cmp -s "$DIR/expected" "$DIR/mod"

phase killed sqlite writer
# --- 2a. sqlite writer killed before COMMIT ---------------------------------------------------
kv cert show w1-c4 --pem >"$DIR/w1-c4.before" 2>/dev/null
for m in "insert killed-insert" "delete w1-c2" "update w1-c4"; do
  read -r mode name <<<"$m"
  set -- "$mode" "$name"
  "$SQLKILL" "$REG" "$1" "$2" 2>"$DIR/sqlkill.err"
  st=$?
  check "sqlite writer ($1 $2) died by SIGKILL mid-transaction (status $st)" test "$st" -eq 137
  tool_names >"$DIR/got" 2>"$DIR/got.err"
  check "after killed $1: the tool lists exactly the committed rows" cmp -s "$DIR/expected" "$DIR/got"
  module_names >"$DIR/mod" 2>"$DIR/mod.err"
  check "after killed $1: the module finds exactly the committed rows" cmp -s "$DIR/expected" "$DIR/mod"
done
kv cert show w1-c4 --pem >"$DIR/w1-c4.after" 2>/dev/null
check "after killed update: the certificate is unchanged" cmp -s "$DIR/w1-c4.before" "$DIR/w1-c4.after"
check "after killed update: the certificate is not empty" test -s "$DIR/w1-c4.after"

phase killed tool writers
# --- 2b. tool writers killed at random moments -----------------------------------------------
# Each round runs a `cert add` loop in its own process group and SIGKILLs the whole group after
# a random delay; the loop records each add the tool reported done. The random delay decides
# where the kill lands, not whether the checks pass.
: >"$DIR/reported"
for r in 1 2 3 4 5 6; do
  # shellcheck disable=SC2016 # expanded by the inner shell
  setsid bash -c '
    r=$1; conf=$2; tool=$3; dir=$4; j=0
    while :; do
      j=$((j + 1)); c=$(( (j % 40) + 1 ))
      if "$tool" -c "$conf" cert add --name "k$r-$j" --type public --cert "$dir/certs/w8-c$c.pem" >/dev/null 2>&1; then
        echo "k$r-$j" >>"$dir/reported"
      fi
    done' killer "$r" "$CONF" "$TOOL" "$DIR" </dev/null &
  lp=$!
  sleep "0.$((RANDOM % 5 + 1))$((RANDOM % 10))"
  kill -9 -- "-$lp" 2>/dev/null
  wait "$lp" 2>/dev/null
done
tool_names >"$DIR/got" 2>"$DIR/got.err"
check "killed tool writers: cert list still works" test $? -eq 0
grep '^k' "$DIR/got" >"$DIR/got-k"
grep -v '^k' "$DIR/got" >"$DIR/got-w"
check "killed tool writers: earlier rows intact" cmp -s "$DIR/expected" "$DIR/got-w"
check "killed tool writers: no duplicated row" test -z "$(uniq -d "$DIR/got")"
LC_ALL=C sort "$DIR/reported" >"$DIR/reported.s"
missing=$(LC_ALL=C comm -23 "$DIR/reported.s" "$DIR/got-k" | wc -l)
extra=$(LC_ALL=C comm -13 "$DIR/reported.s" "$DIR/got-k" | wc -l)
check "killed tool writers: every add the tool reported is there ($(wc -l <"$DIR/reported.s") reported, $missing missing, $extra committed but killed before reporting)" \
  test "$missing" -eq 0 -a "$extra" -le 6
module_names >"$DIR/mod" 2>"$DIR/mod.err"
check "killed tool writers: the module finds the same rows as the tool ($(wc -l <"$DIR/mod"))" \
  cmp -s "$DIR/got" "$DIR/mod"
kv cert add --name after-kill --type public --cert "$DIR/certs/w7-c1.pem" >/dev/null 2>"$DIR/after.err"
check "killed tool writers: a new writer commits" test $? -eq 0
if command -v sqlite3 >/dev/null; then
  check "sqlite integrity_check is ok" test "$(sqlite3 "$REG" 'PRAGMA integrity_check;' 2>&1)" = ok
fi

phase corrupt and foreign files
# --- 3. corrupt and foreign files at the registry path ----------------------------------------
cp "$REG" "$DIR/good.db"
PNG=$DIR/foreign.png
# a 1x1 PNG (signature, IHDR, IDAT, IEND)
printf '\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89\x00\x00\x00\rIDATx\x9cc\xf8\x0f\x00\x00\x01\x01\x00\x05\x18\xd8N\x00\x00\x00\x00IEND\xaeB`\x82' >"$PNG"
placed() { # placed KIND: puts a file of kind KIND at the registry path
  rm -f "$REG" "$REG-wal" "$REG-shm" "$REG-journal"
  case $1 in
    random) head -c 65536 /dev/urandom >"$REG" ;;
    corrupt) # a kvp11 registry whose pages after the header are overwritten
      sqlite3 "$DIR/good.db" 'PRAGMA wal_checkpoint(TRUNCATE);' >/dev/null 2>&1
      cp "$DIR/good.db" "$REG"
      size=$(stat -c %s "$REG")
      dd if=/dev/urandom of="$REG" bs=1 seek=100 count=$((size - 100)) conv=notrunc status=none ;;
    png) cp "$PNG" "$REG" ;;
    empty) : >"$REG" ;;
    foreign) sqlite3 "$REG" 'CREATE TABLE photos (id INTEGER PRIMARY KEY, path TEXT); INSERT INTO photos (path) VALUES ("a.jpg");' ;;
  esac
}
for kind in random corrupt png foreign empty; do
  if [ "$kind" = foreign ] || [ "$kind" = corrupt ]; then
    command -v sqlite3 >/dev/null || { echo "skip $kind: sqlite3 command not installed"; continue; }
  fi
  placed "$kind"
  sum_before=$(sha256sum <"$REG")
  kv cert list >"$DIR/t.out" 2>"$DIR/t.err"
  st=$?
  lines=$(wc -l <"$DIR/t.err")
  echo "  $kind: tool exit $st, stderr: $(head -3 "$DIR/t.err")"
  if [ "$kind" = empty ]; then
    # an empty file is a valid empty SQLite database: report the behaviour only
    check "$kind: the tool does not crash (exit $st)" test "$st" -lt 128
  else
    check "$kind: the tool fails with one error line naming the path" \
      test "$st" -ne 0 -a "$st" -lt 128 -a "$lines" -eq 1 -a "$(grep -cF "$REG" "$DIR/t.err")" -eq 1
    kv cert add --name x --type public --cert "$DIR/certs/w1-c1.pem" >/dev/null 2>"$DIR/t.err"
    st=$?
    echo "  $kind: tool cert add exit $st, stderr: $(head -3 "$DIR/t.err")"
    check "$kind: cert add fails with one error line naming the path" \
      test "$st" -ne 0 -a "$st" -lt 128 -a "$(wc -l <"$DIR/t.err")" -eq 1 -a "$(grep -cF "$REG" "$DIR/t.err")" -eq 1
    # (a foreign SQLite database was once switched to WAL mode before being refused)
    check "$kind: the file at the registry path is left unchanged" \
      test "$(sha256sum <"$REG")" = "$sum_before"
  fi
  : >"$DIR/kvp11.log"
  "$FIND" "$TOKEN" >"$DIR/m.out" 2>"$DIR/m.err"
  st=$?
  echo "  $kind: module: exit $st ($(tr '\n' ' ' <"$DIR/m.err")), $(wc -l <"$DIR/m.out") certificates; log: $(grep -i -m1 'registry\|error' "$DIR/kvp11.log")"
  check "$kind: the module does not crash and finds no certificate (exit $st)" \
    test "$st" -lt 128 -a ! -s "$DIR/m.out"
done

phase "done"
echo "$PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
