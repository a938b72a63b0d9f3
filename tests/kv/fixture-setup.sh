#!/usr/bin/env bash
# tests/kv/fixture-setup.sh — start a Key Vault emulator for the kv tests.
#
#   fixture-setup.sh /abs/DIR /path/to/kv-emulator.js
#
# Removes DIR and creates in it:
#   ca.pem, server.pem/server.key   test CA and the emulator's TLS certificate (SAN IP:127.0.0.1)
#   client.pem, client.key          certificate + key of the client-certificate app (key 0600)
#   certs/<name>.pem                self-signed certificates of the vault keys
#                                   rsa2048 rsa3072 rsa4096 p256 p384 p521 (made locally,
#                                   imported into the emulator, then the local private keys
#                                   are deleted)
#   app-full.secret, app-nosign.secret   client secrets (0600)
#   port, emu.pid, emu.log          the running emulator (https://127.0.0.1:PORT)
#   kvp11.conf                      [global], [vault emu] (client-secret), [account kv]
#   env.sh                          KV_PORT, KV_URL, KV_TENANT, KVP11_CONF
# Exits 0 when the emulator answers, non-zero with a message naming the failed step.
set -euo pipefail
die() { echo "fixture-setup.sh: error: $*" >&2; exit 1; }

[ $# -eq 2 ] || die "usage: $0 /abs/DIR /path/to/kv-emulator.js"
DIR=${1%/}
EMU=$(cd "$(dirname "$2")" && pwd)/$(basename "$2")
case "$DIR" in /?*/*) ;; *) die "DIR must be an absolute path below / (got '$DIR')" ;; esac
command -v openssl >/dev/null || die "openssl not found"
command -v node >/dev/null || die "node not found"
[ -f "$EMU" ] || die "emulator $EMU not found"

# stop an emulator left over from an earlier run of this fixture
if [ -f "$DIR/emu.pid" ]; then kill "$(cat "$DIR/emu.pid")" 2>/dev/null || true; fi
rm -rf "$DIR"
mkdir -p "$DIR/certs" "$DIR/keys"
umask 077
cd "$DIR"

TENANT=7c3a4b1e-0d52-4a8e-9f61-5b2e8c1d4f00
step() { STEP=$*; }
trap 'echo "fixture-setup.sh: error: step failed: $STEP (see $DIR)" >&2' ERR

step "test CA"
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 \
  -subj "/CN=kvp11 test CA" -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
step "server certificate"
openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj "/CN=127.0.0.1" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 \
  -extfile server.ext 2>/dev/null
rm -f ca.key server.csr ca.srl

step "client certificate"
openssl req -x509 -newkey rsa:2048 -nodes -keyout client.key -out client.pem -days 2 \
  -subj "/CN=kvp11-app-cert" 2>/dev/null
chmod 600 client.key

step "vault keys"
for k in rsa2048:rsa:2048 rsa3072:rsa:3072 rsa4096:rsa:4096 p256:ec:P-256 p384:ec:P-384 p521:ec:P-521; do
  name=${k%%:*}; rest=${k#*:}; alg=${rest%%:*}; arg=${rest#*:}
  if [ "$alg" = rsa ]; then
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:"$arg" -out "keys/$name.key" 2>/dev/null
  else
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:"$arg" -out "keys/$name.key" 2>/dev/null
  fi
  openssl req -x509 -new -key "keys/$name.key" -out "certs/$name.pem" -days 365 \
    -subj "/CN=kvp11 kv $name/O=kvp11 tests" \
    -addext "keyUsage=critical,digitalSignature,keyEncipherment" \
    -addext "extendedKeyUsage=emailProtection,clientAuth" 2>/dev/null
done

step "secrets"
openssl rand -hex 24 > app-full.secret
openssl rand -hex 24 > app-nosign.secret
chmod 600 app-full.secret app-nosign.secret
IDH=$(openssl rand -hex 16)
echo "$IDH" > identity-header

step "seed"
node - "$DIR" "$TENANT" "$IDH" > seed.json <<'EOF'
const fs = require('fs');
const [dir, tenant, idh] = process.argv.slice(2);
const rd = (f) => fs.readFileSync(`${dir}/${f}`, 'utf8').trim();
const all = ['get', 'list', 'sign', 'decrypt'];
const keys = ['rsa2048', 'rsa3072', 'rsa4096', 'p256', 'p384', 'p521'].map((n) => ({
  name: n, pem: rd(`keys/${n}.key`), hsm: true,
  keyOps: n.startsWith('rsa') ? ['sign', 'verify', 'encrypt', 'decrypt', 'wrapKey', 'unwrapKey'] : ['sign', 'verify'] }));
for (let i = 1; i <= 24; i++)
  keys.push({ name: `page-${String(i).padStart(2, '0')}`, generate: { kty: 'EC', crv: 'P-256' } });
keys.push({ name: 'verifyonly', generate: { kty: 'RSA', size: 2048 }, keyOps: ['verify', 'encrypt'] });
keys.push({ name: 'disabled', generate: { kty: 'EC', crv: 'P-256' }, attributes: { enabled: false } });
keys.push({ name: 'expired', generate: { kty: 'RSA', size: 2048 }, attributes: { exp: Math.floor(Date.now() / 1000) - 3600 } });
const seed = {
  tenant, tokenLifetime: 3600,
  clients: [
    { clientId: 'app-full', secret: rd('app-full.secret'), permissions: all },
    { clientId: 'app-nosign', secret: rd('app-nosign.secret'), permissions: ['get', 'list'] },
    { clientId: 'app-cert', certFile: `${dir}/client.pem`, permissions: all },
    { clientId: 'app-wl', federated: true, permissions: all },
  ],
  managedIdentity: { clientId: 'mi-1', identityHeader: idh, permissions: all },
  keys,
};
process.stdout.write(JSON.stringify(seed, null, 1));
EOF

step "start the emulator"
setsid node "$EMU" --cert server.pem --key server.key --seed seed.json --port 0 \
  > emu.out 2> emu.log < /dev/null &
echo $! > emu.pid
PORT=
for _ in $(seq 1 300); do
  if grep -qE '^[0-9]+$' emu.out 2>/dev/null; then PORT=$(head -1 emu.out); break; fi
  kill -0 "$(cat emu.pid)" 2>/dev/null || break
  sleep 0.1
done
[ -n "$PORT" ] || { cat emu.log >&2; die "the emulator did not start"; }
echo "$PORT" > port
# the vault now holds the keys: no private key stays on disk
rm -rf keys seed.json

step "emulator health"
curl -sf --cacert ca.pem "https://127.0.0.1:$PORT/_emu/health" > /dev/null

step "kvp11.conf"
cat > kvp11.conf <<EOF
[global]
registry = $DIR/registry.db
log_level = info
log_file = $DIR/kvp11.log

[vault emu]
url = https://127.0.0.1:$PORT
api_version = 7.5
auth = client-secret
tenant_id = $TENANT
client_id = app-full
client_secret_file = $DIR/app-full.secret
authority_host = https://127.0.0.1:$PORT
ca_file = $DIR/ca.pem
timeout_ms = 20000
max_retries = 5

[account kv]
label = kvp11 kv
EOF
chmod 600 kvp11.conf
cat > env.sh <<EOF
export KV_PORT=$PORT
export KV_URL=https://127.0.0.1:$PORT
export KV_TENANT=$TENANT
export KVP11_CONF=$DIR/kvp11.conf
EOF
echo "fixture-setup.sh: emulator on https://127.0.0.1:$PORT (pid $(cat emu.pid))"
