#!/usr/bin/env bash
# kvp11 cert add/list/show/remove with public certificates: every command,
# every bad input, accounts, duplicates, validity, broken registries.
# Needs no HSM.
. "$(dirname "$0")/lib.sh"

ACCOUNTS="default b2b"
write_conf '[account default]' '[account b2b]' 'label = B2B'
mkcert alice
mkcert bob
mkcert old 20200101000000Z 20210101000000Z
mkcert future 20990101000000Z 21000101000000Z

# --- add, PEM and DER ---
expect_ok "add PEM" cert add --name alice --type public --cert "$T/alice.pem" --resource-group rg1
grep -q "added public certificate 'alice' in account 'default'" "$OUT" || fail "add message: $(cat "$OUT")"
der_of "$T/bob.pem" >"$T/bob.der"
expect_ok "add DER" cert add --name bob --type public --cert "$T/bob.der" --account b2b
# A PEM file with explanatory text before the certificate is still one certificate.
{ echo "Bob's certificate"; cat "$T/bob.pem"; } >"$T/bob-text.pem"
expect_ok "add PEM with leading text" cert add --name bob-text --type public --cert "$T/bob-text.pem"

# --- list ---
expect_ok "list" cert list
head -1 "$OUT" | grep -Eq '^NAME +TYPE +STATE +SUBJECT +NOT-AFTER +KEY$' || fail "list header: $(head -1 "$OUT")"
[ "$(wc -l <"$OUT")" -eq 3 ] || fail "list: want 2 rows: $(cat "$OUT")"
grep -Eq '^alice +public +.*CN=alice.* +[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}Z +-$' "$OUT" ||
  fail "list row: $(cat "$OUT")"
grep -q '^bob ' "$OUT" && fail "list shows another account's certificate"

expect_ok "list --json" cert list --json
fp=$(openssl x509 -in "$T/alice.pem" -noout -fingerprint -sha256 | sed 's/.*=//; s/://g' | tr A-F a-f)
fp1=$(openssl x509 -in "$T/alice.pem" -noout -fingerprint -sha1 | sed 's/.*=//; s/://g' | tr A-F a-f)
serial=$(openssl x509 -in "$T/alice.pem" -noout -serial | sed 's/.*=//')
end=$(date -u -d "$(openssl x509 -in "$T/alice.pem" -noout -enddate | sed 's/.*=//')" +%Y-%m-%dT%H:%M:%SZ)
start=$(date -u -d "$(openssl x509 -in "$T/alice.pem" -noout -startdate | sed 's/.*=//')" +%Y-%m-%dT%H:%M:%SZ)
json 'isinstance(j, list) and [r["name"] for r in j] == ["alice", "bob-text"]'
json "j[0]['sha256'] == '$fp' and j[0]['sha1'] == '$fp1'"
json "j[0]['serial'].lstrip('0') == '$serial'.lstrip('0') and j[0]['type'] == 'public'"
json "j[0]['not_after'] == '$end' and j[0]['not_before'] == '$start'"
json "j[0]['account'] == 'default' and j[0]['resource_group'] == 'rg1' and j[0]['key_ref'] is None"
json "j[0]['key_version'] is None and 'CN=alice' in j[0]['subject'] and 'CN=alice' in j[0]['issuer']"
json "isinstance(j[0]['id'], int) and 'der' not in j[0] and 'pem' not in j[0]"
json "all(r[k].endswith('Z') and len(r[k]) == 20 for r in j for k in ('created', 'updated'))"
json "set(j[0]) == {'id','name','account','type','state','subject','issuer','serial','not_before','not_after','sha1','sha256','key_ref','key_version','resource_group','created','updated'}"
expect_ok "list --json --account b2b" cert list --json --account b2b
json "[r['name'] for r in j] == ['bob'] and j[0]['account'] == 'b2b' and j[0]['resource_group'] is None"

# --- show ---
expect_ok "show" cert show alice
grep -q '^name: alice$' "$OUT" || fail "show name: $(cat "$OUT")"
grep -q '^type: public$' "$OUT" || fail "show type"
fpo=$(openssl x509 -in "$T/alice.pem" -noout -fingerprint -sha256 | sed 's/.*=//')
grep -q "^sha256: SHA256:$fpo\$" "$OUT" || fail "show sha256 (OpenSSL's form): $(grep sha256 "$OUT")"
grep -q '^key_ref: -$' "$OUT" || fail "show key_ref"
grep -q '^resource_group: rg1$' "$OUT" || fail "show resource_group"
grep -q "^not_after: $end\$" "$OUT" || fail "show not_after"
expect_ok "show --json" cert show alice --json
json "j['name'] == 'alice' and j['sha256'] == '$fp' and j['pem'].startswith('-----BEGIN CERTIFICATE-----')"
python3 -c 'import json,sys; sys.stdout.write(json.load(open(sys.argv[1]))["pem"])' "$OUT" >"$T/alice.json.pem"
cmp <(der_of "$T/alice.json.pem") <(der_of "$T/alice.pem") || fail "show --json pem differs from the input"
expect_ok "show --pem" cert show alice --pem
cmp <(der_of "$OUT") <(der_of "$T/alice.pem") || fail "show --pem differs from the input"
[ "$(grep -c BEGIN "$OUT")" -eq 1 ] || fail "show --pem: not exactly one certificate"
expect_ok "show --pem of a DER input" cert show bob --pem --account b2b
cmp <(der_of "$OUT") "$T/bob.der" || fail "show --pem (DER input) differs from the input"
expect_fail "show in the wrong account" 1 "account 'default' has no certificate named 'bob'" cert show bob
expect_fail "show unknown" 1 "no certificate named 'nobody'" cert show nobody --json

# --- bad input files ---
head -c 3000 /dev/urandom >"$T/garbage.bin"
printf 'hello, this is not a certificate\n' >"$T/garbage.txt"
: >"$T/empty.pem"
head -n 8 "$T/alice.pem" >"$T/truncated.pem"
sed '$d' "$T/alice.pem" >"$T/noend.pem"
cat "$T/alice.pem" "$T/bob.pem" >"$T/two.pem"
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$T/key.pem" 2>/dev/null
head -c 200 "$T/bob.der" >"$T/truncated.der"
for c in "garbage.bin:neither a PEM nor a DER" "garbage.txt:neither a PEM nor a DER" \
  "empty.pem:empty file" "truncated.pem:truncated or malformed" "noend.pem:truncated or malformed" \
  "two.pem:holds 2 certificates" "key.pem:without a 'BEGIN CERTIFICATE' block" \
  "truncated.der:neither a PEM nor a DER"; do
  f=${c%%:*}
  expect_fail "bad file $f" 1 "^kvp11: cert add: $T/$f: .*${c#*:}" cert add --name bad --type public --cert "$T/$f"
done
expect_fail "missing file" 1 "nonexistent.pem" cert add --name bad --type public --cert "$T/nonexistent.pem"
expect_fail "directory as file" 1 "cert add: $T: is a directory, not a certificate file" cert add --name bad --type public --cert "$T"
openssl pkcs12 -export -nokeys -in "$T/alice.pem" -passout pass:x -out "$T/alice.pfx" 2>/dev/null || fail "pfx"
expect_fail "PFX given to cert add" 1 "alice.pfx: a PKCS#12 \(PFX\) file, not a certificate: import its key and certificate with kvp11 key import --pfx" \
  cert add --name bad --type public --cert "$T/alice.pfx"

# --- duplicates and --replace ---
id=$("$KVP11_TOOL" -c "$CONF" cert show alice --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
expect_fail "duplicate name" 1 "account 'default' has a certificate named 'alice' already" \
  cert add --name alice --type public --cert "$T/bob.pem"
expect_fail "same certificate under a second name" 1 \
  "this certificate \(SHA256:([0-9A-F]{2}:){31}[0-9A-F]{2}\) is registered in account 'b2b' already, as 'bob' \(--alias" \
  cert add --name alice --type public --cert "$T/bob.pem" --account b2b
expect_ok "same name in another account (--alias)" cert add --name alice --type public --cert "$T/bob.pem" --account b2b --alias
sleep 1
expect_fail "--replace with a certificate registered under another name" 1 "registered in account 'default' already, as 'bob-text'" \
  cert add --name alice --type public --cert "$T/bob.pem" --replace
expect_ok "--replace" cert add --name alice --type public --cert "$T/bob.pem" --replace --alias
grep -q "^replaced public certificate 'alice'" "$OUT" || fail "replace message: $(cat "$OUT")"
expect_ok "show after replace" cert show alice --json
json "j['id'] == $id and 'CN=bob' in j['subject'] and j['resource_group'] is None"
json "j['updated'] > j['created']"
expect_ok "--replace of a new name adds" cert add --name carol --type public --cert "$T/bob.pem" --replace --alias
grep -q "^added" "$OUT" || fail "replace of a new name: $(cat "$OUT")"

# --- validity ---
expect_fail "expired with --strict" 1 "expired on 2021-01-01T00:00:00Z.*--strict" \
  cert add --name old --type public --cert "$T/old.pem" --strict
expect_fail "not yet valid with --strict" 1 "not valid before 2099-01-01T00:00:00Z.*--strict" \
  cert add --name future --type public --cert "$T/future.pem" --strict
kvp cert add --name old --type public --cert "$T/old.pem"
[ "$RC" -eq 0 ] || fail "expired without --strict: exit $RC"
one_line "expired warning"
grep -q "^kvp11: cert add: warning: .*old.pem: the certificate expired on 2021-01-01T00:00:00Z$" "$ERR" ||
  fail "expired warning: $(cat "$ERR")"
ok "expired: warning"
kvp cert add --name future --type public --cert "$T/future.pem"
[ "$RC" -eq 0 ] && grep -q "warning: .*not valid before 2099" "$ERR" || fail "not yet valid: $RC $(cat "$ERR")"
ok "not yet valid: warning"

# --- accounts ---
expect_fail "unknown account (add)" 1 "account 'nope' is not configured in $CONF" \
  cert add --name x --type public --cert "$T/bob.pem" --account nope
expect_fail "unknown account (list)" 1 "account 'nope' is not configured" cert list --account nope
expect_fail "unknown account (show)" 1 "account 'nope' is not configured" cert show alice --account nope
expect_fail "unknown account (remove)" 1 "account 'nope' is not configured" cert remove alice --account nope

# --- remove ---
expect_fail "remove unknown" 1 "account 'default' has no certificate named 'nobody'" cert remove nobody
expect_ok "remove" cert remove carol
grep -q "removed certificate 'carol' from account 'default'" "$OUT" || fail "remove message"
expect_ok "list after remove" cert list --json
json "sorted(r['name'] for r in j) == ['alice', 'bob-text', 'future', 'old']"
expect_ok "remove in another account" cert remove alice --account b2b
expect_ok "list b2b after remove" cert list --json --account b2b
json "[r['name'] for r in j] == ['bob']"
expect_fail "remove twice" 1 "no certificate named 'alice'" cert remove alice --account b2b

# --- no [account]: the account is "default" ---
mv "$CONF" "$T/full.conf"
write_conf
ACCOUNTS=default
expect_ok "implicit default account" cert list --json
json "sorted(r['name'] for r in j) == ['alice', 'bob-text', 'future', 'old']"
mv "$T/full.conf" "$CONF"
ACCOUNTS="default b2b"

# --- configuration and registry problems ---
kvp -c "$T/missing.conf" cert list
[ "$RC" -eq 1 ] && [ "$(wc -l <"$ERR")" -eq 1 ] && grep -q "missing.conf" "$ERR" ||
  fail "missing config: $RC $(cat "$ERR")"
ok "missing config ($(cat "$ERR"))"
KVP11_CONF=$CONF "$KVP11_TOOL" cert list --json >"$OUT" 2>"$ERR" || fail "KVP11_CONF: $(cat "$ERR")"
json "sorted(r['name'] for r in j) == ['alice', 'bob-text', 'future', 'old']"
ok "KVP11_CONF"

cp "$CONF" "$T/good.conf"
write_conf '[account default]'
sed -i "s|^registry = .*|registry = $T/no/such/dir/registry.db|" "$CONF"
for c in "cert list" "cert show alice" "cert remove alice"; do
  expect_fail "registry in a missing directory: $c" 1 "no/such/dir" $c
done
expect_fail "registry in a missing directory: cert add" 1 "no/such/dir" \
  cert add --name x --type public --cert "$T/bob.pem"
[ ! -e "$T/no" ] || fail "a directory was created"

sed -i "s|^registry = .*|registry = $T/corrupt.db|" "$CONF"
head -c 8192 /dev/urandom >"$T/corrupt.db"
sum=$(sha256sum <"$T/corrupt.db")
for c in "cert list" "cert show alice" "cert remove alice"; do
  expect_fail "corrupt registry: $c" 1 "cert (list|show|remove): " $c
done
expect_fail "corrupt registry: cert add" 1 "cert add: " cert add --name x --type public --cert "$T/bob.pem"
[ "$(sha256sum <"$T/corrupt.db")" = "$sum" ] || fail "the corrupt registry was modified"
cp "$CONF" "$T/corrupt.conf"
cp "$T/good.conf" "$CONF"

# Everything above left the good registry as it was.
expect_ok "final list" cert list --json
json "sorted(r['name'] for r in j) == ['alice', 'bob-text', 'future', 'old']"
# --strict accepts a certificate that is valid now
expect_ok "--strict with a valid certificate" cert add --name strict-ok --type public --cert "$T/alice.pem" --account b2b --strict

# Concurrent writers never lose a row.
pids=()
for i in 1 2 3 4 5 6 7 8; do
  "$KVP11_TOOL" -c "$CONF" cert add --name "par$i" --type public --cert "$T/alice.pem" --account b2b --alias \
    >"$T/par$i.out" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || fail "a concurrent cert add failed: $(cat "$T"/par*.out)"; done
expect_ok "list after concurrent adds" cert list --json --account b2b
json "sorted(r['name'] for r in j) == ['bob', 'par1', 'par2', 'par3', 'par4', 'par5', 'par6', 'par7', 'par8', 'strict-ok']"
json "len(set(r['id'] for r in j)) == 10"
echo "all public certificate tests passed"
