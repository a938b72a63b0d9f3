#!/usr/bin/env bash
# kvp11 cert add --type public --cert-dir DIR: a good directory, bad files (each
# named, nothing registered), name clashes with and without --replace, two files
# giving one name, an empty directory, usage errors.
. "$(dirname "$0")/lib.sh"

ACCOUNTS="default b2b"
write_conf '[account default]' '[account b2b]'
for n in acme globex initech umbrella hooli; do mkcert "$n"; done

# expect_refused WHAT N ARGS...: exit 1, exactly N stderr lines (one per bad
# file), nothing on stdout, the registry unchanged.
expect_refused() {
  local what=$1 lines=$2 before after; shift 2
  before=$(snapshot)
  kvp "$@"
  [ "$RC" -eq 1 ] || { cat "$ERR" >&2; fail "$what: exit $RC (want 1)"; }
  [ "$(wc -l <"$ERR")" -eq "$lines" ] || { cat "$ERR" >&2; fail "$what: want $lines error lines"; }
  [ "$(grep -c '^kvp11: cert add: ' "$ERR")" -eq "$lines" ] || { cat "$ERR" >&2; fail "$what: line format"; }
  [ ! -s "$OUT" ] || { cat "$OUT" >&2; fail "$what: unexpected stdout"; }
  after=$(snapshot)
  [ "$before" = "$after" ] || { diff <(echo "$before") <(echo "$after") >&2; fail "$what: the registry changed"; }
  ok "$what"
}

# --- a good directory: PEM and DER under every extension; other files ignored ---
D=$T/good
mkdir -p "$D"
cp "$T/acme.pem" "$D/acme.pem"
der_of "$T/globex.pem" >"$D/globex.der"
cp "$T/initech.pem" "$D/initech.crt"
der_of "$T/umbrella.pem" >"$D/umbrella.CER"
echo "partner list" >"$D/README.txt"
cp "$T/hooli.pem" "$D/.hidden.pem"
expect_ok "good directory" cert add --type public --cert-dir "$D" --account b2b
grep -qx "registered 4 public certificates from $D in account 'b2b'" "$OUT" || fail "count line: $(cat "$OUT")"
[ "$(wc -l <"$OUT")" -eq 1 ] || fail "one line of output: $(cat "$OUT")"
expect_ok "list" cert list --json --account b2b
json '[r["name"] for r in j] == ["acme", "globex", "initech", "umbrella"]'
json 'all(r["type"] == "public" for r in j) and "CN=globex" in j[1]["subject"]'

# --- one bad file refuses the batch; every bad file is named ---
D=$T/bad
mkdir -p "$D"
cp "$T/hooli.pem" "$D/hooli.pem"
echo "not a certificate" >"$D/junk.pem"
cp "$T/hooli.key" "$D/key.pem"
expect_refused "bad files" 2 cert add --type public --cert-dir "$D"
grep -q "$D/junk.pem: neither a PEM nor a DER X.509 certificate" "$ERR" || fail "junk.pem named: $(cat "$ERR")"
grep -q "$D/key.pem:" "$ERR" || fail "key.pem named: $(cat "$ERR")"
expect_ok "nothing of the batch registered" cert list --json
json 'j == []'

# a name that is not allowed (a control character), two files giving one name
D=$T/names
mkdir -p "$D"
cp "$T/acme.pem" "$D/$(printf 'tab\tname').pem"
cp "$T/globex.pem" "$D/dup.pem"
der_of "$T/initech.pem" >"$D/dup.der"
cp "$T/hooli.pem" "$D/fine.pem"
expect_refused "bad names" 3 cert add --type public --cert-dir "$D"
grep -q "not allowed" "$ERR" || fail "control character: $(cat "$ERR")"
[ "$(grep -c 'another file of the directory gives the same name' "$ERR")" -eq 2 ] || fail "dup: $(cat "$ERR")"

# --- a name clash with the registry: refused without --replace, replaced with it ---
D=$T/clash
mkdir -p "$D"
cp "$T/hooli.pem" "$D/acme.pem"
cp "$T/hooli.pem" "$D/newcomer.pem"
expect_refused "clash without --replace" 1 cert add --type public --cert-dir "$D" --account b2b
grep -q "$D/acme.pem: account 'b2b' has a certificate named 'acme' already (--replace replaces it)" "$ERR" ||
  fail "clash line: $(cat "$ERR")"
expect_ok "show before" cert show acme --json --account b2b
old_sha=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["sha256"])' "$OUT")
old_id=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' "$OUT")
expect_ok "clash with --replace" cert add --type public --cert-dir "$D" --account b2b --replace
grep -qx "registered 2 public certificates from $D in account 'b2b' (1 replaced)" "$OUT" || fail "replace line: $(cat "$OUT")"
expect_ok "show after" cert show acme --json --account b2b
json "j['sha256'] != '$old_sha' and j['id'] == $old_id and 'CN=hooli' in j['subject']"
expect_ok "list after" cert list --json --account b2b
json '[r["name"] for r in j] == ["acme", "globex", "initech", "newcomer", "umbrella"]'

# --- an empty directory registers nothing, successfully ---
mkdir -p "$T/empty"
expect_ok "empty directory" cert add --type public --cert-dir "$T/empty"
grep -qx "registered 0 public certificates from $T/empty in account 'default'" "$OUT" || fail "empty: $(cat "$OUT")"

# --- usage ---
expect_fail "--cert-dir with --name" 2 "takes only --type public" cert add --type public --cert-dir "$T/good" --name x
expect_fail "--cert-dir with --cert" 2 "takes only --type public" cert add --type public --cert-dir "$T/good" --cert "$T/acme.pem"
expect_fail "--cert-dir private" 2 "give --type public" cert add --type private --cert-dir "$T/good"
expect_fail "--cert-dir missing" 1 "--cert-dir $T/nope: No such file" cert add --type public --cert-dir "$T/nope"
echo "all cert-dir tests passed"
