#!/usr/bin/env bash
# tests/sync/test_sync.sh TOOL MODULE P11OBJS SRC WORK
#
# kvp11 sync / publish / unpublish against the integration-account emulator and
# the Key Vault emulator: first sync, renewal/add/delete with and without
# --prune, key mismatch and unmapped vault skipped, paging, 429 then success, a
# persistent 500 (registry unchanged), a principal without read access, rows
# registered by hand, dry run and JSON, publish on one host then sync on another,
# and 20 hosts syncing at once.
set -euo pipefail
TOOL=$1 MODULE=$2 P11OBJS=$3 SRC=$4 WORK=$5
for t in node openssl curl sqlite3; do
  command -v "$t" >/dev/null || { echo "SKIP: $t not installed"; exit 77; }
done
CHECKS=0
ok() { CHECKS=$((CHECKS + 1)); echo "ok $CHECKS - $*"; }
fail() {
  echo "FAIL: $*" >&2
  [ -f "$WORK/kv/kvp11.log" ] && tail -n 15 "$WORK/kv/kvp11.log" >&2
  exit 1
}

rm -rf "$WORK"
mkdir -p "$WORK"
KVD=$WORK/kv
"$SRC/tests/kv/fixture-setup.sh" "$KVD" "$SRC/tests/emulator/kv-emulator.js" >/dev/null
cleanup() {
  for p in "$KVD/emu.pid" "$WORK/ia.pid"; do
    [ -f "$p" ] && kill "$(cat "$p")" 2>/dev/null || true
  done
}
trap cleanup EXIT
cd "$WORK"
umask 077

# ---- certificates: 3 partners (public), 2 of ours (keys in the vault) ----
mkcert() { # mkcert NAME: a self-signed partner certificate in NAME.pem
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout /dev/null \
    -out "$1.pem" -days 30 -subj "/CN=$1/O=partner" 2>/dev/null
}
for p in partner-a partner-b partner-c partner-d partner-e partner-a2 manual1 manual2 clash; do mkcert "$p"; done
b64() { openssl x509 -in "$1" -outform DER | base64 -w0; }
VID=/subscriptions/sub1/resourceGroups/rg1/providers/Microsoft.KeyVault/vaults/kvemu
IAID=/subscriptions/sub1/resourceGroups/rg1/providers/Microsoft.Logic/integrationAccounts/ia1

openssl rand -hex 16 > sync.secret
openssl rand -hex 16 > admin.secret
chmod 600 sync.secret admin.secret
node - "$WORK" "$VID" "$KVD" > ia-seed.json <<'EOF'
const fs = require('fs');
const { execFileSync } = require('child_process');
const [work, vid, kvd] = process.argv.slice(2);
const der = (f) => execFileSync('openssl', ['x509', '-in', f, '-outform', 'DER']).toString('base64');
const pub = (n) => ({ name: n, properties: { publicCertificate: der(`${work}/${n}.pem`) } });
const priv = (n, file, key) => ({ name: n, properties: { publicCertificate: der(file),
  key: { keyVault: { id: vid }, keyName: key } } });
process.stdout.write(JSON.stringify({
  tenant: 'tenant-ia',
  clients: [
    { clientId: 'sync', secret: fs.readFileSync(`${work}/sync.secret`, 'utf8').trim(), actions: ['read'] },
    { clientId: 'admin', secret: fs.readFileSync(`${work}/admin.secret`, 'utf8').trim(), actions: ['read', 'write', 'delete'] },
  ],
  accounts: [
    { subscription: 'sub1', resourceGroup: 'rg1', name: 'ia1', certificates: [
      pub('partner-a'), pub('partner-b'), pub('partner-c'),
      priv('as2-rsa', `${kvd}/certs/rsa2048.pem`, 'rsa2048'), priv('as2-ec', `${kvd}/certs/p256.pem`, 'p256')] },
    { subscription: 'sub1', resourceGroup: 'rg1', name: 'big', certificates: [] },
  ],
}));
EOF
setsid node "$SRC/tests/emulator/ia-emulator.js" --cert "$KVD/server.pem" --key "$KVD/server.key" \
  --seed ia-seed.json --quiet > ia.out 2> ia.log < /dev/null &
echo $! > ia.pid
for _ in $(seq 1 100); do grep -qE '^[0-9]+$' ia.out 2>/dev/null && break; sleep 0.1; done
IAPORT=$(head -1 ia.out)
[ -n "$IAPORT" ] || fail "the integration-account emulator did not start: $(cat ia.log)"
IA=https://127.0.0.1:$IAPORT
emu() { # emu PATH [JSON]: the emulator's control API
  if [ $# -gt 1 ]; then curl -sf --cacert "$KVD/ca.pem" -X POST -d "$2" "$IA/_emu/$1"
  else curl -sf --cacert "$KVD/ca.pem" "$IA/_emu/$1"; fi
}
counter() { emu counters | node -e "let s='';process.stdin.on('data',d=>s+=d).on('end',()=>console.log(JSON.parse(s).counters['$1']||0))"; }

# host configuration: the kv fixture's vault plus an integration account
mkconf() { # mkconf DIR CLIENT [extra ia lines]
  local d=$1
  mkdir -p "$1"
  sed "s|^registry = .*|registry = $1/registry.db|; s|^log_file = .*|log_file = $1/kvp11.log\naudit = $1/audit.log|" \
    "$KVD/kvp11.conf" > "$1/kvp11.conf"
  cat >> "$1/kvp11.conf" <<EOF

[integration-account ia1]
resource_id = $IAID
arm_endpoint = $IA
authority_host = $IA
auth = client-secret
tenant_id = tenant-ia
client_id = $2
client_secret_file = $WORK/$2.secret
ca_file = $KVD/ca.pem
account = kv
vault_map = kvemu=emu
timeout_ms = 8000
max_retries = 3
EOF
  shift 2
  for l in "$@"; do echo "$l" >> "$d/kvp11.conf"; done
  chmod 600 "$d/kvp11.conf"
}
A=$WORK/hostA
mkconf "$A" sync
K() { "$TOOL" -c "$A/kvp11.conf" "$@"; }
names() { K cert list --account kv --json | node -e "let s='';process.stdin.on('data',d=>s+=d).on('end',()=>console.log(JSON.parse(s).map(r=>r.name).sort().join(' ')))"; }
rowid() { K cert show "$1" --account kv --json | node -e "let s='';process.stdin.on('data',d=>s+=d).on('end',()=>console.log(JSON.parse(s).id))"; }
handle() { KVP11_CONF=$A/kvp11.conf "$P11OBJS" "$MODULE" "kvp11 kv" "$1" | awk '$2 == 1 {print $1}'; }
# regrev [DIR]: the registry's change counter; rowrev NAME: the revision of one row
# (a rewrite of a row, even with the same content, raises both).
regrev() { sqlite3 "${1:-$A}/registry.db" "SELECT rev FROM certs_rev"; }
rowrev() { sqlite3 "$A/registry.db" "SELECT rev FROM certs WHERE account = 'kv' AND name = '$1'"; }
keyref() { # keyref DIR NAME: the row's key reference
  "$TOOL" -c "$1/kvp11.conf" cert show "$2" --account kv --json |
    node -e "let s='';process.stdin.on('data',d=>s+=d).on('end',()=>console.log(JSON.parse(s).key_ref))"
}

# ---- 1. first sync: 5 rows, visible through the module, a private one signs ----
# (a certificate registered by hand before the first sync)
K cert add --name manual1 --type public --cert manual1.pem --account kv >/dev/null
out=$(K sync) || fail "first sync failed: $out"
echo "$out" | grep -q "5 added" || fail "first sync: $out"
[ "$(names)" = "as2-ec as2-rsa manual1 partner-a partner-b partner-c" ] || fail "rows after sync: $(names)"
ok "first sync added 5 rows, the hand-registered row stays"
objs=$(KVP11_CONF=$A/kvp11.conf "$P11OBJS" "$MODULE" "kvp11 kv")
for n in partner-a partner-b partner-c as2-rsa as2-ec; do
  echo "$objs" | grep -q " 1 $n\$" || fail "the module does not show certificate $n: $objs"
done
echo "$objs" | grep -q " 3 as2-ec\$" || fail "no private key object for as2-ec"
KVP11_CONF=$A/kvp11.conf SIGN=as2-ec "$P11OBJS" "$MODULE" "kvp11 kv" as2-ec | grep -q '^signed 64$' \
  || fail "as2-ec does not sign through the module"
KVP11_CONF=$A/kvp11.conf SIGN=as2-rsa "$P11OBJS" "$MODULE" "kvp11 kv" as2-rsa | grep -q '^signed 256$' \
  || fail "as2-rsa does not sign through the module"
ok "the module shows the synchronized certificates and signs with a private one"
node -e '
const recs = require("fs").readFileSync(process.argv[1], "utf8").trim().split("\n").map(JSON.parse);
const adds = recs.filter(r => r.event === "change" && r.action === "sync add");
const sign = recs.find(r => r.event === "sign" && r.cert === "as2-ec");
if (adds.length !== 5 || !adds.every(r => r.new_sha256 && r.new_sha256.length === 64)) process.exit(1);
if (!sign || sign.result !== "CKR_OK" || !sign.request_id || sign.request_id === "-") process.exit(2);
' "$A/audit.log" || fail "audit records of the sync and of a Key Vault sign: $(cat "$A/audit.log")"
ok "audit: one record per row the sync added, and the Key Vault sign names its request id"
rev_before=$(regrev)
out=$(K sync) || fail "second sync failed"
echo "$out" | grep -q "0 added, 0 replaced, 0 removed, 0 skipped, 0 kept, 5 unchanged" || fail "resync: $out"
[ "$(regrev)" = "$rev_before" ] || fail "a sync without changes rewrote rows: registry rev $rev_before -> $(regrev)"
ok "a second sync changes nothing (registry rev $rev_before unchanged)"

# ---- 2. renewal, addition, deletion; --prune ----
h_before=$(handle partner-b); id_before=$(rowid partner-b)
for n in partner-a partner-b as2-rsa as2-ec; do eval "rev_$(echo $n | tr - _)=$(rowrev $n)"; done
emu cert "{\"account\":\"ia1\",\"name\":\"partner-b\",\"properties\":{\"publicCertificate\":\"$(b64 partner-a2.pem)\"}}" >/dev/null
emu cert "{\"account\":\"ia1\",\"name\":\"partner-d\",\"properties\":{\"publicCertificate\":\"$(b64 partner-d.pem)\"}}" >/dev/null
emu uncert '{"account":"ia1","name":"partner-c"}' >/dev/null
out=$(K sync) || fail "sync after changes failed: $out"
echo "$out" | grep -q "1 added, 1 replaced, 0 removed, 0 skipped, 1 kept" || fail "sync after changes: $out"
echo "$out" | grep -q "^keep .*partner-c: gone from the integration account" || fail "keep line: $out"
[ "$(rowid partner-b)" = "$id_before" ] || fail "the replaced row changed its id"
[ "$(handle partner-b)" = "$h_before" ] || fail "the certificate handle changed: $h_before -> $(handle partner-b)"
[ "$(K cert show partner-b --account kv --json | grep -c "$(openssl x509 -in partner-a2.pem -outform DER | openssl dgst -sha256 -r | cut -c1-64)")" -ge 1 ] \
  || fail "partner-b was not replaced by the renewed certificate"
ok "renewal replaced in place (row id $id_before, handle $h_before), addition added, deletion kept without --prune"
[ "$(rowrev partner-b)" -gt "$rev_partner_b" ] || fail "the renewed partner-b was not rewritten"
for n in partner-a as2-rsa as2-ec; do
  v=rev_$(echo $n | tr - _)
  [ "$(rowrev $n)" = "${!v}" ] || fail "$n has the same content but was rewritten (rev ${!v} -> $(rowrev $n))"
done
ok "only the renewed certificate was rewritten; the unchanged ones keep their rev"
out=$(K sync --prune) || fail "sync --prune failed"
echo "$out" | grep -q "1 removed" || fail "prune: $out"
[ "$(names)" = "as2-ec as2-rsa manual1 partner-a partner-b partner-d" ] || fail "rows after prune: $(names)"
ok "--prune removed the deleted certificate and kept the hand-registered one"

# ---- 3. skips: a key that does not match, a vault nobody maps, a hand row's name ----
emu cert "{\"account\":\"ia1\",\"name\":\"bad-key\",\"properties\":{\"publicCertificate\":\"$(b64 "$KVD/certs/p384.pem")\",\"key\":{\"keyVault\":{\"id\":\"$VID\"},\"keyName\":\"p256\"}}}" >/dev/null
emu cert "{\"account\":\"ia1\",\"name\":\"other-vault\",\"properties\":{\"publicCertificate\":\"$(b64 "$KVD/certs/p384.pem")\",\"key\":{\"keyVault\":{\"id\":\"/subscriptions/sub1/resourceGroups/rg1/providers/Microsoft.KeyVault/vaults/elsewhere\"},\"keyName\":\"p384\"}}}" >/dev/null
emu cert "{\"account\":\"ia1\",\"name\":\"manual1\",\"properties\":{\"publicCertificate\":\"$(b64 clash.pem)\"}}" >/dev/null
emu cert "{\"account\":\"ia1\",\"name\":\"no-key\",\"properties\":{\"publicCertificate\":\"$(b64 "$KVD/certs/p384.pem")\",\"key\":{\"keyVault\":{\"id\":\"$VID\"},\"keyName\":\"gone-key\"}}}" >/dev/null
set +e; out=$(K sync 2>&1); rc=$?; set -e
[ $rc -eq 3 ] || fail "sync with skips: exit $rc (want 3): $out"
echo "$out" | grep -q "^skip .*bad-key: the certificate's public key .* is not the public key of key 'p256'" || fail "mismatch line: $out"
echo "$out" | grep -q "^skip .*other-vault: .*Key Vault 'elsewhere'" || fail "unmapped vault line: $out"
echo "$out" | grep -q "^skip .*manual1: a certificate registered by hand" || fail "hand row line: $out"
echo "$out" | grep -q "^skip .*no-key: cannot read key 'gone-key' in vault '[^']*': vault [^:]*: key gone-key: not found: HTTP 404" \
  || fail "missing key line (the vault's answer as the reason): $out"
[ "$(names)" = "as2-ec as2-rsa manual1 partner-a partner-b partner-d" ] || fail "rows after skips: $(names)"
K cert show manual1 --account kv --json | grep -q "$(openssl x509 -in manual1.pem -outform DER | openssl dgst -sha256 -r | cut -c1-64)" \
  || fail "the hand-registered manual1 was changed"
grep -q "skip 'bad-key'" "$A/kvp11.log" || fail "no log line for the skip"
ok "mismatching key, missing key, unmapped vault and a hand row's name are skipped with reasons (exit 3)"
emu uncert '{"account":"ia1","name":"bad-key"}' >/dev/null
emu uncert '{"account":"ia1","name":"other-vault"}' >/dev/null
emu uncert '{"account":"ia1","name":"manual1"}' >/dev/null
emu uncert '{"account":"ia1","name":"no-key"}' >/dev/null

# ---- 4. dry run and JSON ----
emu cert "{\"account\":\"ia1\",\"name\":\"partner-e\",\"properties\":{\"publicCertificate\":\"$(b64 partner-e.pem)\"}}" >/dev/null
before=$(K cert list --account kv)
out=$(K sync --dry-run --json) || fail "dry run failed"
echo "$out" | node -e "let s='';process.stdin.on('data',d=>s+=d).on('end',()=>{const j=JSON.parse(s)[0];
  if(!j.dry_run||j.add!==1||!j.changes.some(c=>c.action==='add'&&c.name==='partner-e'&&c.sha256.length===64))process.exit(1)})" \
  || fail "dry-run JSON: $out"
[ "$(K cert list --account kv)" = "$before" ] || fail "the dry run wrote to the registry"
ok "--dry-run --json prints the plan and writes nothing"

# ---- 5. failures leave the registry unchanged ----
emu faults '{"faults":[{"endpoint":"list","action":"status","status":500,"times":-1}]}' >/dev/null
set +e; out=$(K sync 2>&1); rc=$?; set -e
[ $rc -eq 1 ] || fail "persistent 500: exit $rc: $out"
echo "$out" | grep -q "HTTP 500" || fail "500 message: $out"
echo "$out" | grep -q "registry unchanged" || fail "500 message does not say the registry is unchanged: $out"
[ "$(K cert list --account kv)" = "$before" ] || fail "a failed sync changed the registry"
ok "a persistent 500: exit 1, one line, registry unchanged"
emu reset '{}' >/dev/null
emu faults '{"faults":[{"endpoint":"list","action":"status","status":429,"retryAfter":1}]}' >/dev/null
out=$(K sync) || fail "429 then success: $out"
echo "$out" | grep -q "1 added" || fail "after 429: $out"
[ "$(counter list)" -eq 2 ] || fail "429: expected 2 list requests, got $(counter list)"
ok "a 429 with Retry-After is retried and the sync completes"
emu policy '{"clientId":"sync","actions":[]}' >/dev/null
set +e; out=$(K sync 2>&1); rc=$?; set -e
[ $rc -eq 1 ] || fail "no read access: exit $rc"
[ "$(echo "$out" | wc -l)" -eq 1 ] || fail "no read access: more than one line: $out"
echo "$out" | grep -q "Microsoft.Logic/integrationAccounts/certificates/read" || fail "no read access: $out"
ok "a principal without read access: one line naming the missing action"
emu policy '{"clientId":"sync","actions":["read"]}' >/dev/null

# ---- 6. paging ----
B=$WORK/hostP
mkconf "$B" sync "page_size = 50"
sed -i 's|integrationAccounts/ia1$|integrationAccounts/big|' "$B/kvp11.conf"
node -e "for(let i=0;i<120;i++)console.log('p'+String(i).padStart(3,'0'))" > big.names
certb64=$(b64 partner-a.pem)
while read -r n; do
  emu cert "{\"account\":\"big\",\"name\":\"$n\",\"properties\":{\"publicCertificate\":\"$certb64\"}}" >/dev/null
done < big.names
emu reset '{}' >/dev/null
out=$("$TOOL" -c "$B/kvp11.conf" sync) || fail "paging sync: $out"
echo "$out" | grep -q "120 added" || fail "paging: $out"
[ "$(counter list)" -eq 1 ] && [ "$(counter listPage)" -eq 2 ] || fail "paging: $(emu counters)"
ok "120 certificates over 3 pages of \$top=50 (1 list + 2 nextLink requests)"

# ---- 7. publish on host A, sync on host C, unpublish + prune ----
mkconf "$WORK/hostAdm" admin
KA() { "$TOOL" -c "$WORK/hostAdm/kvp11.conf" "$@"; }
cp "$A/registry.db" "$WORK/hostAdm/registry.db"
KA cert add --name our-p384 --type private --cert "$KVD/certs/p384.pem" --vault emu --key p384 --account kv >/dev/null
KA cert add --name manual2 --type public --cert manual2.pem --account kv >/dev/null
out=$(KA publish our-p384 --account kv) || fail "publish private: $out"
echo "$out" | grep -q "created private certificate 'our-p384'" || fail "publish: $out"
KA publish manual2 --account kv >/dev/null || fail "publish public"
emu "certs?account=ia1" > ia-certs.json || fail "cannot read the emulator's certificates"
grep -q "vaults/kvemu" ia-certs.json || fail "the published key reference lacks the vault id: $(cat ia-certs.json)"
set +e; out=$(K publish manual1 --account kv 2>&1); rc=$?; set -e
[ $rc -eq 1 ] && echo "$out" | grep -q "certificates/write" || fail "publish without write access: $out"
rev_before=$(regrev "$WORK/hostAdm")
out=$(KA sync) || fail "publisher's sync: $out"
echo "$out" | grep -q " 0 added, 0 replaced, 0 removed, 0 skipped, 0 kept, 8 unchanged" || fail "publisher's sync: $out"
[ "$(regrev "$WORK/hostAdm")" = "$rev_before" ] || fail "the publisher's sync rewrote rows"
ok "rows registered by hand and published are unchanged on the publisher's next sync (not skipped, not rewritten)"
C=$WORK/hostC
mkconf "$C" sync
out=$("$TOOL" -c "$C/kvp11.conf" sync) || fail "host C sync: $out"
cnames=$("$TOOL" -c "$C/kvp11.conf" cert list --account kv --json | node -e "let s='';process.stdin.on('data',d=>s+=d).on('end',()=>console.log(JSON.parse(s).map(r=>r.name).sort().join(' ')))")
[ "$cnames" = "as2-ec as2-rsa manual2 our-p384 partner-a partner-b partner-d partner-e" ] || fail "host C rows: $cnames"
KVP11_CONF=$C/kvp11.conf SIGN=our-p384 "$P11OBJS" "$MODULE" "kvp11 kv" our-p384 | grep -q '^signed 96$' \
  || fail "host C cannot sign with the published private certificate"
ok "publish on one host, sync on another: same certificates, the private one signs there"
KA unpublish manual2 --account kv | grep -q "deleted 'manual2'" || fail "unpublish"
"$TOOL" -c "$C/kvp11.conf" sync --prune >/dev/null || fail "host C prune"
"$TOOL" -c "$C/kvp11.conf" cert show manual2 --account kv >/dev/null 2>&1 && fail "manual2 still on host C"
KA cert show manual2 --account kv >/dev/null || fail "unpublish removed the local row"
ok "unpublish + sync --prune removes it from the other host, not from the publisher"

# ---- 8. a fleet of 20 hosts syncing at once ----
emu reset '{}' >/dev/null
pids=()
for i in $(seq 1 20); do
  mkconf "$WORK/fleet$i" sync
  "$TOOL" -c "$WORK/fleet$i/kvp11.conf" sync > "$WORK/fleet$i/out" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || fail "a fleet host failed: $(cat "$WORK"/fleet*/out)"; done
ref=$("$TOOL" -c "$WORK/fleet1/kvp11.conf" cert list --account kv --json | node -e "let s='';process.stdin.on('data',d=>s+=d).on('end',()=>console.log(JSON.parse(s).map(r=>r.name+':'+r.sha256).sort().join(' ')))")
for i in $(seq 2 20); do
  got=$("$TOOL" -c "$WORK/fleet$i/kvp11.conf" cert list --account kv --json | node -e "let s='';process.stdin.on('data',d=>s+=d).on('end',()=>console.log(JSON.parse(s).map(r=>r.name+':'+r.sha256).sort().join(' ')))")
  [ "$got" = "$ref" ] || fail "fleet host $i differs"
done
[ "$(counter list)" -eq 20 ] && [ "$(counter listPage)" -eq 0 ] || fail "fleet: $(emu counters)"
ok "20 hosts syncing at once converge; one list request each"

# ---- 9. the key moved to another vault: same certificate, a new key reference ----
D=$WORK/hostD
mkconf "$D" sync
sed -i 's|^vault_map = .*|vault_map = kvemu=emu, kvemu2=emu2|' "$D/kvp11.conf"
sed -n '/^\[vault emu\]/,/^$/p' "$KVD/kvp11.conf" | sed 's/^\[vault emu\]/[vault emu2]/' >> "$D/kvp11.conf"
"$TOOL" -c "$D/kvp11.conf" sync >/dev/null || fail "host D: first sync"
[ "$(keyref "$D" as2-rsa)" = "keyvault:emu/rsa2048" ] || fail "host D: as2-rsa: $(keyref "$D" as2-rsa)"
VID2=${VID%/kvemu}/kvemu2
emu cert "{\"account\":\"ia1\",\"name\":\"as2-rsa\",\"properties\":{\"publicCertificate\":\"$(b64 "$KVD/certs/rsa2048.pem")\",\"key\":{\"keyVault\":{\"id\":\"$VID2\"},\"keyName\":\"rsa2048\"}}}" >/dev/null
out=$("$TOOL" -c "$D/kvp11.conf" sync) || fail "host D: sync after the key moved: $out"
echo "$out" | grep -q "0 added, 1 replaced, 0 removed, 0 skipped, 0 kept, 6 unchanged" || fail "host D: key moved: $out"
[ "$(keyref "$D" as2-rsa)" = "keyvault:emu2/rsa2048" ] || fail "host D: as2-rsa still points at $(keyref "$D" as2-rsa)"
rev_before=$(regrev "$D")
out=$("$TOOL" -c "$D/kvp11.conf" sync) || fail "host D: resync: $out"
echo "$out" | grep -q "0 replaced, 0 removed, 0 skipped, 0 kept, 7 unchanged" || fail "host D: resync: $out"
[ "$(regrev "$D")" = "$rev_before" ] || fail "host D: the resync rewrote rows"
ok "a certificate whose key moved to another vault is replaced with the new key reference, then unchanged"

echo "$CHECKS passed, 0 failed"
