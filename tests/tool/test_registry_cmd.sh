#!/usr/bin/env bash
# kvp11 registry backup / restore / check: a backup taken while another
# process writes is a consistent registry; a restore replaces the content in
# one step and a running PKCS#11 application (p11watch, libkvp11.so loaded)
# sees it at its next object search; files that are not kvp11 registries are
# refused and leave the registry unchanged; check finds a damaged entry.
. "$(dirname "$0")/lib.sh"
[ -x "${KVP11_P11WATCH:-}" ] && [ -f "${KVP11_MODULE:-}" ] || skip "KVP11_P11WATCH / KVP11_MODULE not set"

write_conf "[account default]" "label = kvp11 default"
mkcert alice
mkcert bob

expect_fail "backup before the registry exists" 1 "does not exist yet: nothing to back up" registry backup "$T/b0.db"
[ ! -e "$T/b0.db" ] || fail "a backup file was left behind"
expect_ok "add alice" cert add --name alice --type public --cert "$T/alice.pem"

# --- backups while another process writes ---
( for i in $(seq 1 40); do
    "$KVP11_TOOL" -c "$CONF" cert add --name "w$i" --type public --cert "$T/bob.pem" --alias >/dev/null 2>&1 || exit 1
  done ) &
writer=$!
n=0
while kill -0 "$writer" 2>/dev/null && [ $n -lt 20 ]; do
  n=$((n + 1))
  "$KVP11_TOOL" -c "$CONF" registry backup "$T/b$n.db" >"$OUT" 2>"$ERR" || { cat "$ERR" >&2; fail "backup $n during writes"; }
done
wait "$writer" || fail "the concurrent writer failed"
[ $n -ge 1 ] || fail "no backup was taken while the writer ran"
for i in $(seq 1 $n); do
  python3 - "$T/b$i.db" <<'PY' || fail "backup $i is not a consistent registry"
import sqlite3, sys
db = sqlite3.connect("file:%s?mode=ro" % sys.argv[1], uri=True)
assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
assert db.execute("PRAGMA user_version").fetchone()[0] >= 3
assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
names = [r[0] for r in db.execute("SELECT name FROM certs ORDER BY id")]
# a prefix of the writer's sequence: alice, then w1..wK with no gap
assert names[0] == "alice" and names[1:] == ["w%d" % k for k in range(1, len(names))], names
PY
  [ ! -e "$T/b$i.db-wal" ] || fail "backup $i has a -wal file beside it"
done
ok "$n backups taken while another process wrote 40 entries: each one consistent"
expect_ok "backup --json" registry backup "$T/full.db" --json
json "j['action'] == 'backup' and j['file'] == '$T/full.db'"

# --- restore, seen by a running application ---
watch_start "kvp11 default"
certs() { watch objects; awk '$1 == "cert" { print $4 }' "$T/watch.out" | sort | tr '\n' ' '; }
expect_ok "remove all but alice" cert remove w1
for i in $(seq 2 40); do "$KVP11_TOOL" -c "$CONF" cert remove "w$i" >/dev/null || fail "remove w$i"; done
expect_ok "backup of alice only" registry backup "$T/alice-only.db"
expect_ok "add bob" cert add --name bob --type public --cert "$T/bob.pem"
[ "$(certs)" = "alice bob " ] || fail "the application sees: $(certs)"
expect_ok "restore" registry restore "$T/alice-only.db"
grep -q "^restored registry $T/registry.db from $T/alice-only.db (1 entries; running modules reload it)$" "$OUT" ||
  fail "restore message: $(cat "$OUT")"
[ "$(certs)" = "alice " ] || fail "after the restore the application sees: $(certs)"
ok "the running application sees the restored registry"
expect_ok "restore --json" registry restore "$T/full.db" --json
json "j['action'] == 'restore' and j['entries'] == 41 and j['schema'] >= 3"
seen=$(certs)
[ "$(echo "$seen" | wc -w)" -eq 41 ] || fail "after the second restore the application sees: $seen"
expect_ok "list after restore" cert list --json
json "len(j) == 41"
expect_ok "writes work after a restore" cert add --name carol --type public --cert "$T/bob.pem" --alias

# --- restore refusals: the registry is unchanged ---
head -c 5000 /dev/urandom >"$T/garbage.db"
python3 -c "import sqlite3,sys; d=sqlite3.connect(sys.argv[1]); d.execute('CREATE TABLE t (x)'); d.commit()" "$T/other.db"
python3 -c "import sqlite3,sys; d=sqlite3.connect(sys.argv[1]); d.execute('CREATE TABLE certs (x)'); d.execute('PRAGMA user_version = 99'); d.commit()" "$T/newer.db"
expect_fail "restore a file that is not SQLite" 1 "garbage.db: not an SQLite database" registry restore "$T/garbage.db"
expect_fail "restore another program's database" 1 "other.db: not a kvp11 registry \(schema version 0" registry restore "$T/other.db"
expect_fail "restore a newer schema" 1 "newer.db: registry schema version 99 is newer than this kvp11 knows" registry restore "$T/newer.db"
expect_fail "restore a missing file" 1 "nope.db: No such file or directory" registry restore "$T/nope.db"
expect_fail "restore a directory" 1 "not a regular file" registry restore "$T"
expect_fail "restore without FILE" 2 "NAME is missing|FILE" registry restore

# --- check ---
expect_ok "check" registry check
grep -q "^registry $T/registry.db: integrity ok, 42 entries ok$" "$OUT" || fail "check: $(cat "$OUT")"
expect_ok "check --json" registry check --json
json "len(j) == 42 and all(r['result'] == 'ok' for r in j)"
python3 -c "import sqlite3,sys; d=sqlite3.connect(sys.argv[1]); d.execute(\"UPDATE certs SET der = x'3082' WHERE name = 'carol'\"); d.commit()" "$T/registry.db"
kvp registry check
[ "$RC" -eq 1 ] || fail "check of a damaged entry: exit $RC"
grep -q "^default/carol: the stored certificate does not parse" "$OUT" || fail "check output: $(cat "$OUT")"
one_line "check of a damaged entry"
grep -q "1 of 42 entries have a problem" "$ERR" || fail "check: $(cat "$ERR")"
ok "check names the damaged entry"
expect_ok "registry --help" registry --help
grep -q "registry backup FILE" "$OUT" && grep -q "registry restore FILE" "$OUT" && grep -q "registry check" "$OUT" ||
  fail "registry help: $(cat "$OUT")"
echo "all registry command tests passed"
