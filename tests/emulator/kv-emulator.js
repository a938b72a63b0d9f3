#!/usr/bin/env node
// kv-emulator.js — a local Azure Key Vault (keys data plane) + Entra ID token
// endpoint + managed identity endpoints, for tests. Node 20, built-in modules only.
//
//   node kv-emulator.js --cert server.pem --key server.key --seed seed.json [--port 0]
//                       [--host 127.0.0.1] [--quiet]
//
// Prints the port it listens on (one line, digits only) on stdout once ready.
// One vault per process; the vault's base URL is https://HOST:PORT, its token
// resource is https://HOST (so host == resource host), the authority is
// https://HOST:PORT/TENANT.
//
// Seed file (JSON):
//   { "tenant": "<tenant id>", "tokenLifetime": 3600,
//     "clients": [ { "clientId": "app1", "secret": "s3cret",          // client secret
//                    "certFile": "/path/client-cert.pem",              // client assertion
//                    "federated": true,                               // workload identity
//                    "permissions": ["get","list","sign","decrypt"] } ],
//     "managedIdentity": { "clientId": "mi1", "identityHeader": "h", "permissions": [...] },
//     "keys": [ { "name": "rsa2048", "pemFile": "/path/key.pem" | "pem": "-----BEGIN..."
//                 | "generate": {"kty": "RSA", "size": 2048} | {"kty": "EC", "crv": "P-256"},
//                 "keyOps": [...], "attributes": {...}, "tags": {...}, "hsm": true } ] }
//
// Test-control API (no auth; 127.0.0.1 only):
//   GET  /_emu/counters           {"counters":{"sign":3,"token":1,...},"total":N}
//   POST /_emu/reset              counters and faults cleared
//   POST /_emu/faults             {"faults":[rule...]} appended; DELETE /_emu/faults clears
//        rule: {"endpoint":"sign"|"decrypt"|"get"|"list"|"token"|"imds"|"*",
//               "action":"status"|"drop"|"truncate"|"nonjson"|"huge"|"delay"|"after",
//               "status":429|500|503, "retryAfter":seconds (optional), "delayMs":ms,
//               "times":N (default 1, -1 = forever)}
//        "after": the request is processed normally (e.g. an import stores the key), then the
//        socket is destroyed instead of sending the response (endpoints "create", "import",
//        "delete", "purge" name those requests). libcurl silently resends a request once when a
//        reused connection closes before any byte of the answer: use "times":2 or -1 to make
//        the client see the failure.
//   GET  /_emu/log[?ep=sign]      {"requests":[{"t":ms,"ep":"sign","status":200},...]} since reset
//   POST /_emu/key                {"name","version"?(latest),"attributes":{"enabled","nbf","exp"}
//                                 (null removes),"keyOps":[...]}: change a version, no token needed
//   POST /_emu/rotate             {"name"}: a new version of the same type and size
//   POST /_emu/config             {"tokenLifetime": seconds}
//   POST /_emu/limits             {"windowMs":10000,"limit":2000,"weights":{"RSA-2048":1,...}}: a vault-wide
//                                 sliding-window limit in RSA-2048-HSM-equivalent operations (weights
//                                 below, see "throttling"); beyond it 429 Throttled + Retry-After.
//                                 {"limit":0} (the default, and after /_emu/reset) turns it off;
//                                 POST also clears the counts. GET /_emu/limits: config and counts
//                                 {accepted, throttled, acceptedWeight, inWindow}
//   POST /_emu/revoke             every token issued so far is refused (401)
//   POST /_emu/policy             {"clientId": "...", "permissions": [...]}
//   POST /_emu/federated-token    {"subject": "..."} -> {"token": "<JWT for workload identity>"}
//   PATCH-like helpers live in the data plane itself (PATCH /keys/{n}/{v}).
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const https = require('https');

// ---------------------------------------------------------------- arguments
function parseArgs(argv) {
  const o = { port: 0, host: '127.0.0.1', quiet: false };
  for (let i = 2; i < argv.length; i++) {
    const a = argv[i];
    const next = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      return argv[++i];
    };
    if (a === '--port') o.port = Number(next());
    else if (a === '--host') o.host = next();
    else if (a === '--cert') o.cert = next();
    else if (a === '--key') o.key = next();
    else if (a === '--seed') o.seed = next();
    else if (a === '--quiet') o.quiet = true;
    else throw new Error(`unknown argument ${a}`);
  }
  if (!o.cert || !o.key) throw new Error('--cert and --key are required');
  return o;
}

// ---------------------------------------------------------------- encoding
const b64u = (buf) => Buffer.from(buf).toString('base64url');
function fromB64u(s) {
  if (typeof s !== 'string' || !/^[A-Za-z0-9_\-+/]*={0,2}$/.test(s)) return null;
  return Buffer.from(s.replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, ''), 'base64url');
}
const bufToBig = (b) => (b.length ? BigInt('0x' + b.toString('hex')) : 0n);
function bigToBuf(x, len) {
  let h = x.toString(16);
  if (h.length % 2) h = '0' + h;
  const b = Buffer.from(h, 'hex');
  if (b.length > len) return b.subarray(b.length - len);
  return Buffer.concat([Buffer.alloc(len - b.length), b]);
}
function modPow(b, e, m) {
  let r = 1n;
  b %= m;
  while (e > 0n) {
    if (e & 1n) r = (r * b) % m;
    b = (b * b) % m;
    e >>= 1n;
  }
  return r;
}
const modInv = (a, p) => modPow(((a % p) + p) % p, p - 2n, p); // p prime
const uuid = () => crypto.randomUUID();
const hex32 = () => crypto.randomBytes(16).toString('hex');
const now = () => Math.floor(Date.now() / 1000);

// ---------------------------------------------------------------- crypto
const CURVES = {
  'P-256': { node: 'prime256v1', len: 32, alg: 'ES256', dlen: 32,
    n: BigInt('0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551') },
  'P-384': { node: 'secp384r1', len: 48, alg: 'ES384', dlen: 48,
    n: BigInt('0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973') },
  'P-521': { node: 'secp521r1', len: 66, alg: 'ES512', dlen: 64,
    n: BigInt('0x01fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffa51868783bf2f966b7fcc0148f709a5d03bb5c9b8899c47aebb6fb71e91386409') },
  'P-256K': { node: 'secp256k1', len: 32, alg: 'ES256K', dlen: 32,
    n: BigInt('0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141') },
};
const JWK_CRV_FROM_NODE = { 'P-256': 'P-256', 'P-384': 'P-384', 'P-521': 'P-521', secp256k1: 'P-256K' };
const JWK_CRV_TO_NODE = { 'P-256': 'P-256', 'P-384': 'P-384', 'P-521': 'P-521', 'P-256K': 'secp256k1', SECP256K1: 'secp256k1' };

function randBelow(n, len) {
  for (;;) {
    const k = bufToBig(crypto.randomBytes(len + 8)) % n;
    if (k !== 0n) return k;
  }
}
function ecdsaE(c, digest) {
  let e = bufToBig(digest);
  const nbits = c.n.toString(2).length;
  if (digest.length * 8 > nbits) e >>= BigInt(digest.length * 8 - nbits);
  return e;
}
// scalar * G, x coordinate (ECDH computes the point multiplication for us)
function mulGx(c, k) {
  const ecdh = crypto.createECDH(c.node);
  ecdh.setPrivateKey(bigToBuf(k, c.len));
  return bufToBig(ecdh.getPublicKey().subarray(1, 1 + c.len));
}
function ecdsaSign(crv, d, digest) {
  const c = CURVES[crv];
  const e = ecdsaE(c, digest);
  for (;;) {
    const k = randBelow(c.n, c.len);
    const r = mulGx(c, k) % c.n;
    if (r === 0n) continue;
    const s = (modInv(k, c.n) * ((e + r * d) % c.n)) % c.n;
    if (s === 0n) continue;
    return Buffer.concat([bigToBuf(r, c.len), bigToBuf(s, c.len)]);
  }
}
// verification with the private scalar: R = (u1 + u2*d)G
function ecdsaVerify(crv, d, digest, sig) {
  const c = CURVES[crv];
  if (sig.length !== 2 * c.len) return false;
  const r = bufToBig(sig.subarray(0, c.len)), s = bufToBig(sig.subarray(c.len));
  if (r <= 0n || r >= c.n || s <= 0n || s >= c.n) return false;
  const w = modInv(s, c.n);
  const u = ((ecdsaE(c, digest) * w) % c.n + ((r * w) % c.n) * d) % c.n;
  if (u === 0n) return false;
  return mulGx(c, u) % c.n === r;
}

const HASH = { 256: 'sha256', 384: 'sha384', 512: 'sha512' };
const DIGESTINFO = {
  sha256: Buffer.from('3031300d060960864801650304020105000420', 'hex'),
  sha384: Buffer.from('3041300d060960864801650304020205000430', 'hex'),
  sha512: Buffer.from('3051300d060960864801650304020305000440', 'hex'),
};
const HLEN = { sha1: 20, sha256: 32, sha384: 48, sha512: 64 };

function mgf1(hash, seed, len) {
  const out = [];
  let n = 0;
  for (let c = 0; n < len; c++) {
    const cb = Buffer.alloc(4);
    cb.writeUInt32BE(c);
    const h = crypto.createHash(hash).update(seed).update(cb).digest();
    out.push(h);
    n += h.length;
  }
  return Buffer.concat(out).subarray(0, len);
}
function rsaModBits(key) {
  return key.asymmetricKeyDetails.modulusLength;
}
function pssEncode(hash, mHash, modBits) {
  const hLen = HLEN[hash], sLen = hLen, emBits = modBits - 1, emLen = Math.ceil(emBits / 8);
  const salt = crypto.randomBytes(sLen);
  const H = crypto.createHash(hash).update(Buffer.alloc(8)).update(mHash).update(salt).digest();
  const DB = Buffer.concat([Buffer.alloc(emLen - sLen - hLen - 2), Buffer.from([1]), salt]);
  const mask = mgf1(hash, H, emLen - hLen - 1);
  for (let i = 0; i < DB.length; i++) DB[i] ^= mask[i];
  DB[0] &= 0xff >> (8 * emLen - emBits);
  return Buffer.concat([DB, H, Buffer.from([0xbc])]);
}
function pssVerify(hash, mHash, em, modBits) {
  const hLen = HLEN[hash], sLen = hLen, emBits = modBits - 1, emLen = Math.ceil(emBits / 8);
  if (em.length > emLen) {
    if (em[0] !== 0) return false;
    em = em.subarray(em.length - emLen);
  }
  if (em[emLen - 1] !== 0xbc) return false;
  const maskedDB = Buffer.from(em.subarray(0, emLen - hLen - 1)), H = em.subarray(emLen - hLen - 1, emLen - 1);
  if (maskedDB[0] & ~(0xff >> (8 * emLen - emBits)) & 0xff) return false;
  const mask = mgf1(hash, H, emLen - hLen - 1);
  for (let i = 0; i < maskedDB.length; i++) maskedDB[i] ^= mask[i];
  maskedDB[0] &= 0xff >> (8 * emLen - emBits);
  const psLen = emLen - hLen - sLen - 2;
  for (let i = 0; i < psLen; i++) if (maskedDB[i] !== 0) return false;
  if (maskedDB[psLen] !== 1) return false;
  const salt = maskedDB.subarray(maskedDB.length - sLen);
  const H2 = crypto.createHash(hash).update(Buffer.alloc(8)).update(mHash).update(salt).digest();
  return crypto.timingSafeEqual(H, H2);
}
function rsaRaw(key, input, priv) {
  const k = Math.ceil(rsaModBits(key) / 8);
  const buf = Buffer.concat([Buffer.alloc(k - input.length), input]);
  const opts = { key, padding: crypto.constants.RSA_NO_PADDING };
  return priv ? crypto.privateDecrypt(opts, buf) : crypto.publicEncrypt(opts, buf);
}

// ---------------------------------------------------------------- state
const opts = parseArgs(process.argv);
const seed = opts.seed ? JSON.parse(fs.readFileSync(opts.seed, 'utf8')) : {};
const HOST = opts.host;
const TENANT = seed.tenant || '72f988bf-86f1-41af-91ab-2d7cd011db47';
const RESOURCE = `https://${HOST}`;
let PORT = 0;
const origin = () => `https://${HOST}:${PORT}`;

const state = {
  tokenLifetime: Number(seed.tokenLifetime || 3600),
  tokenGeneration: 1,
  counters: {},
  reqlog: [],          // {t, ep, status} of every counted request (GET /_emu/log)
  faults: [],
  keys: new Map(),     // lower-case name -> {name, versions: [...]}
  deleted: new Map(),  // lower-case name -> {entry, deletedDate}
  clients: new Map(),  // clientId -> {clientId, oid, secret, certThumbs, certKey, federated, permissions}
  mi: null,
};
const signer = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const signerKid = hex32();
const FED_ISSUER = () => `${origin()}/federation`;

function normPerms(list) {
  const s = new Set();
  for (const p of list || []) s.add(String(p).toLowerCase());
  return s;
}
function addClient(c) {
  const e = { clientId: c.clientId, oid: c.oid || uuid(), secret: c.secret, federated: !!c.federated,
    permissions: normPerms(c.permissions), certs: [] };
  const pem = c.certFile ? fs.readFileSync(c.certFile, 'utf8') : c.cert;
  if (pem) {
    const x = new crypto.X509Certificate(pem);
    e.certs.push({ s256: b64u(crypto.createHash('sha256').update(x.raw).digest()),
      s1: b64u(crypto.createHash('sha1').update(x.raw).digest()), key: x.publicKey });
  }
  state.clients.set(e.clientId, e);
}
for (const c of seed.clients || []) addClient(c);
if (seed.managedIdentity) {
  const m = seed.managedIdentity;
  state.mi = { clientId: m.clientId || uuid(), oid: uuid(), identityHeader: m.identityHeader,
    permissions: normPerms(m.permissions) };
}

// ---------------------------------------------------------------- keys
function publicJwk(privKey) {
  const j = privKey.export({ format: 'jwk' });
  if (j.kty === 'RSA') return { kty: 'RSA', n: j.n, e: j.e };
  return { kty: 'EC', crv: JWK_CRV_FROM_NODE[j.crv] || j.crv, x: j.x, y: j.y };
}
function defaultOps(kty) {
  return kty.startsWith('RSA') ? ['encrypt', 'decrypt', 'sign', 'verify', 'wrapKey', 'unwrapKey'] : ['sign', 'verify'];
}
function addVersion(name, privKey, { keyOps, attributes, tags, hsm, managed } = {}) {
  const lname = name.toLowerCase();
  let entry = state.keys.get(lname);
  if (!entry) {
    entry = { name, versions: [] };
    state.keys.set(lname, entry);
  }
  const pub = publicJwk(privKey);
  const t = now();
  const a = attributes || {};
  const v = {
    version: hex32(), priv: privKey, pub,
    kty: hsm ? `${pub.kty}-HSM` : pub.kty,
    keyOps: keyOps || defaultOps(pub.kty),
    attributes: { enabled: a.enabled !== undefined ? !!a.enabled : true, created: t, updated: t,
      recoveryLevel: 'Recoverable+Purgeable', recoverableDays: 90 },
    tags: tags || undefined, managed: managed || undefined,
  };
  if (a.nbf !== undefined) v.attributes.nbf = a.nbf;
  if (a.exp !== undefined) v.attributes.exp = a.exp;
  if (pub.kty === 'EC') v.d = bufToBig(fromB64u(privKey.export({ format: 'jwk' }).d));
  entry.versions.push(v);
  return v;
}
for (const k of seed.keys || []) {
  let priv;
  if (k.generate) {
    const g = k.generate;
    priv = g.kty === 'RSA'
      ? crypto.generateKeyPairSync('rsa', { modulusLength: g.size || 2048 }).privateKey
      : crypto.generateKeyPairSync('ec', { namedCurve: CURVES[g.crv || 'P-256'].node }).privateKey;
  } else {
    priv = crypto.createPrivateKey(k.pemFile ? fs.readFileSync(k.pemFile, 'utf8') : k.pem);
  }
  addVersion(k.name, priv, { keyOps: k.keyOps, attributes: k.attributes, tags: k.tags, hsm: k.hsm });
}
function kidOf(entry, v) {
  return `${origin()}/keys/${entry.name}/${v.version}`;
}
function keyBundle(entry, v) {
  const key = { kid: kidOf(entry, v), kty: v.kty, key_ops: v.keyOps.slice(), ...v.pub };
  key.kty = v.kty;
  const b = { key, attributes: { ...v.attributes } };
  if (v.tags) b.tags = v.tags;
  if (v.managed) b.managed = true;
  return b;
}
function findVersion(entry, ver) {
  if (!ver) return entry.versions[entry.versions.length - 1];
  return entry.versions.find((x) => x.version === ver.toLowerCase());
}

// ---------------------------------------------------------------- tokens
function signJwt(payload, key = signer.privateKey, kid = signerKid) {
  const h = b64u(JSON.stringify({ typ: 'JWT', alg: 'RS256', kid }));
  const p = b64u(JSON.stringify(payload));
  const s = crypto.sign('sha256', Buffer.from(`${h}.${p}`), key);
  return `${h}.${p}.${b64u(s)}`;
}
function parseJwt(tok) {
  const parts = String(tok).split('.');
  if (parts.length !== 3) return null;
  try {
    return { header: JSON.parse(fromB64u(parts[0])), payload: JSON.parse(fromB64u(parts[1])),
      input: Buffer.from(`${parts[0]}.${parts[1]}`), sig: fromB64u(parts[2]) };
  } catch (e) {
    return null;
  }
}
function issueToken(principal, resource) {
  const t = now();
  return signJwt({ aud: resource, iss: `https://sts.windows.net/${TENANT}/`, iat: t, nbf: t,
    exp: t + state.tokenLifetime, appid: principal.clientId, oid: principal.oid, tid: TENANT,
    ver: '1.0', gen: state.tokenGeneration, jti: uuid() });
}
function sameResource(r) {
  if (typeof r !== 'string') return false;
  return r.replace(/\/+$/, '') === RESOURCE;
}

// ---------------------------------------------------------------- http helpers
function count(ep) {
  state.counters[ep] = (state.counters[ep] || 0) + 1;
}
function send(res, status, body, headers = {}) {
  const data = body === undefined ? '' : JSON.stringify(body);
  const h = { 'Content-Type': 'application/json; charset=utf-8', 'Cache-Control': 'no-cache',
    'x-ms-request-id': uuid(), 'x-ms-keyvault-region': 'local', 'x-ms-keyvault-service-version': '1.9.0.0',
    'Content-Length': Buffer.byteLength(data), ...headers };
  if (res.req.headers['x-ms-client-request-id']) h['x-ms-client-request-id'] = res.req.headers['x-ms-client-request-id'];
  res.writeHead(status, h);
  res.end(data);
}
function kvError(res, status, code, message, inner, headers) {
  const e = { code, message };
  if (inner) e.innererror = { code: inner };
  send(res, status, { error: e }, headers);
}
function aadError(res, status, error, code, desc) {
  const t = new Date().toISOString().replace('T', ' ').replace(/\..*/, 'Z');
  send(res, status, { error, error_description: `AADSTS${code}: ${desc}\r\nTrace ID: ${uuid()}\r\nCorrelation ID: ${uuid()}\r\nTimestamp: ${t}`,
    error_codes: [code], timestamp: t, trace_id: uuid(), correlation_id: uuid(),
    error_uri: `${origin()}/error?code=${code}` });
}
function challengeHeader() {
  return { 'WWW-Authenticate': `Bearer authorization="${origin()}/${TENANT}", resource="${RESOURCE}"` };
}
function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let n = 0;
    req.on('data', (c) => {
      n += c.length;
      if (n > 1024 * 1024) {
        reject(new Error('body too large'));
        req.destroy();
      } else chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

// ---------------------------------------------------------------- routing
const API_VERSIONS = new Set(['2016-10-01', '7.0', '7.1', '7.2', '7.3', '7.4', '7.5', '7.6', '2025-06-01', '2025-07-01']);
const KEY_OPS = new Set(['sign', 'verify', 'encrypt', 'decrypt', 'wrapkey', 'unwrapkey']);

function route(method, segs) {
  // segs: path segments after the leading '/', trailing '' kept
  const s = segs;
  if (s[0] === 'keys') {
    if (s.length === 1 || (s.length === 2 && s[1] === '')) return method === 'GET' ? { ep: 'list' } : null;
    const name = s[1];
    if (s.length === 2 || (s.length === 3 && s[2] === '')) {
      if (method === 'GET') return { ep: 'get', name };
      if (method === 'PUT') return { ep: 'import', name };
      if (method === 'DELETE') return { ep: 'delete', name };
      if (method === 'PATCH') return { ep: 'update', name };
      return null;
    }
    if (s.length === 3 && s[2] === 'versions' && method === 'GET') return { ep: 'versions', name };
    if (s.length === 3 && s[2] === 'create' && method === 'POST') return { ep: 'create', name };
    if (s.length === 3 || (s.length === 4 && s[3] === '')) {
      if (method === 'GET') return { ep: 'get', name, version: s[2] };
      if (method === 'PATCH') return { ep: 'update', name, version: s[2] };
      return null;
    }
    if (s.length === 4 && KEY_OPS.has(s[3].toLowerCase()) && method === 'POST')
      return { ep: s[3].toLowerCase(), name, version: s[2] };
    return null;
  }
  if (s[0] === 'deletedkeys') {
    if (s.length === 1) return method === 'GET' ? { ep: 'deletedkeys' } : null;
    if (s.length === 2 && method === 'GET') return { ep: 'getdeleted', name: s[1] };
    if (s.length === 2 && method === 'DELETE') return { ep: 'purge', name: s[1] };
    if (s.length === 3 && s[2] === 'recover' && method === 'POST') return { ep: 'recover', name: s[1] };
  }
  return null;
}
const PERM = { list: 'list', versions: 'list', get: 'get', import: 'import', delete: 'delete', update: 'update',
  create: 'create', sign: 'sign', verify: 'verify', encrypt: 'encrypt', decrypt: 'decrypt', wrapkey: 'wrapkey',
  unwrapkey: 'unwrapkey', deletedkeys: 'list', getdeleted: 'get', purge: 'purge', recover: 'recover' };
const PERM_DISPLAY = { wrapkey: 'wrapKey', unwrapkey: 'unwrapKey' };

function endpointOf(method, pathname) {
  if (pathname.startsWith('/_emu/')) return null;
  if (/^\/[^/]+\/oauth2\/v2\.0\/token\/?$/.test(pathname)) return 'token';
  if (/^\/[^/]+\/v2\.0\/\.well-known\/openid-configuration\/?$/.test(pathname)) return 'openid';
  if (/^\/metadata\/identity\/oauth2\/token\/?$/.test(pathname)) return 'imds';
  if (/^\/msi\/token\/?$/.test(pathname)) return 'msi';
  const segs = pathname.split('/').slice(1).map(decodeURIComponent);
  const r = route(method, segs);
  return r ? r.ep : 'other';
}

// returns true when the request was consumed by a fault
async function applyFaults(ep, req, res) {
  for (let i = 0; i < state.faults.length; i++) {
    const f = state.faults[i];
    if (f.endpoint !== '*' && f.endpoint !== ep) continue;
    if (f.times !== -1) {
      f.times = (f.times === undefined ? 1 : f.times) - 1;
      if (f.times <= 0) {
        state.faults.splice(i, 1);
        i--;
      }
    }
    const action = f.action || 'status';
    if (action === 'delay') {
      await new Promise((r) => setTimeout(r, Number(f.delayMs || 1000)));
      continue;
    }
    if (action === 'drop') {
      req.socket.destroy();
      return true;
    }
    if (action === 'after') {
      // the request is processed as usual (a create/import/delete takes effect), then the
      // connection is closed instead of sending the answer: an outcome the client cannot know
      res.writeHead = () => res;
      res.setHeader = () => res;
      res.write = () => true;
      res.end = () => {
        req.socket.destroy();
        return res;
      };
      return false;
    }
    if (action === 'truncate') {
      const full = JSON.stringify({ kid: `${origin()}/keys/x/${hex32()}`, value: b64u(crypto.randomBytes(256)) });
      res.writeHead(200, { 'Content-Type': 'application/json; charset=utf-8', 'Content-Length': full.length, 'x-ms-request-id': uuid() });
      res.write(full.slice(0, full.length >> 1));
      setTimeout(() => req.socket.destroy(), 10);
      return true;
    }
    if (action === 'huge') {
      const body = JSON.stringify({ kid: 'x', value: 'A'.repeat(2 * 1024 * 1024) });
      res.writeHead(200, { 'Content-Type': 'application/json; charset=utf-8', 'Content-Length': body.length, 'x-ms-request-id': uuid() });
      res.end(body);
      return true;
    }
    if (action === 'nonjson') {
      const body = '<html><body><h1>502 Bad Gateway</h1></body></html>';
      res.writeHead(200, { 'Content-Type': 'text/html', 'Content-Length': body.length, 'x-ms-request-id': uuid() });
      res.end(body);
      return true;
    }
    const status = Number(f.status || 503);
    const hdrs = {};
    if (f.retryAfter !== undefined) hdrs['Retry-After'] = String(f.retryAfter);
    if (status === 429)
      kvError(res, 429, 'Throttled', 'Request was not processed because too many requests were received. Reason: VaultRequestTypeLimitReached', null, hdrs);
    else if (status === 500) kvError(res, 500, 'InternalServerError', 'The server encountered an internal error.', null, hdrs);
    else kvError(res, status, 'ServiceUnavailable', 'The service is temporarily unavailable.', null, hdrs);
    return true;
  }
  return false;
}

// ---------------------------------------------------------------- identity endpoints
async function handleToken(req, res, url) {
  const tenant = url.pathname.split('/')[1];
  if (req.method !== 'POST') return aadError(res, 405, 'invalid_request', 900561, 'The endpoint only accepts POST requests.');
  const form = new URLSearchParams((await readBody(req)).toString('utf8'));
  if (tenant !== TENANT && tenant.toLowerCase() !== 'organizations')
    return aadError(res, 400, 'invalid_request', 90002, `Tenant '${tenant}' not found.`);
  if (form.get('grant_type') !== 'client_credentials')
    return aadError(res, 400, 'unsupported_grant_type', 70003, 'The app requested an unsupported grant type.');
  const c = state.clients.get(form.get('client_id') || '');
  if (!c) return aadError(res, 400, 'unauthorized_client', 700016, `Application with identifier '${form.get('client_id')}' was not found in the directory.`);
  const scope = form.get('scope') || '';
  const resource = scope.replace(/\/\.default$/, '');
  if (!scope.endsWith('/.default') || !sameResource(resource))
    return aadError(res, 400, 'invalid_scope', 70011, `The provided value for the input parameter 'scope' is not valid. The scope ${scope} is not valid.`);
  const secret = form.get('client_secret');
  const assertion = form.get('client_assertion');
  if (secret !== null) {
    if (!c.secret || secret.length !== c.secret.length ||
        !crypto.timingSafeEqual(Buffer.from(secret), Buffer.from(c.secret)))
      return aadError(res, 401, 'invalid_client', 7000215, 'Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.');
  } else if (assertion !== null) {
    if (form.get('client_assertion_type') !== 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer')
      return aadError(res, 400, 'invalid_request', 50027, 'Invalid client_assertion_type.');
    const j = parseJwt(assertion);
    if (!j) return aadError(res, 401, 'invalid_client', 50027, 'Invalid JWT token. The token is not in a valid format.');
    const t = now();
    if (j.payload.iss === FED_ISSUER()) {
      // workload identity: a federated token from our own issuer
      if (!c.federated) return aadError(res, 401, 'invalid_client', 70021, 'No matching federated identity record found for presented assertion.');
      if (j.header.alg !== 'RS256' || !crypto.verify('sha256', j.input, signer.publicKey, j.sig))
        return aadError(res, 401, 'invalid_client', 700027, 'Client assertion failed signature validation.');
      if (j.payload.aud !== 'api://AzureADTokenExchange' || !(j.payload.exp > t))
        return aadError(res, 401, 'invalid_client', 700024, 'Client assertion is not within its valid time range or has a wrong audience.');
    } else {
      const cert = c.certs.find((x) => x.s256 === j.header['x5t#S256'] || x.s1 === j.header.x5t);
      if (!cert) return aadError(res, 401, 'invalid_client', 700027, 'The certificate with identifier used to sign the client assertion is not registered on application.');
      let ok = false;
      if (j.header.alg === 'RS256') ok = crypto.verify('sha256', j.input, cert.key, j.sig);
      else if (j.header.alg === 'PS256')
        ok = crypto.verify('sha256', j.input, { key: cert.key, padding: crypto.constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 }, j.sig);
      if (!ok) return aadError(res, 401, 'invalid_client', 700027, 'Client assertion failed signature validation.');
      const aud = `${origin()}/${tenant}/oauth2/v2.0/token`;
      if (j.payload.aud !== aud && j.payload.aud !== `${origin()}/${tenant}/v2.0`)
        return aadError(res, 401, 'invalid_client', 700021, `Client assertion audience claim does not match Realm issuer. Expected ${aud}.`);
      if (j.payload.iss !== c.clientId || j.payload.sub !== c.clientId)
        return aadError(res, 401, 'invalid_client', 700023, 'Client assertion issuer and subject must be the client id.');
      if (!(j.payload.exp > t) || (j.payload.nbf && j.payload.nbf > t + 300))
        return aadError(res, 401, 'invalid_client', 700024, 'Client assertion is not within its valid time range.');
    }
  } else {
    return aadError(res, 401, 'invalid_client', 7000218, "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.");
  }
  const L = state.tokenLifetime;
  send(res, 200, { token_type: 'Bearer', expires_in: L, ext_expires_in: L, access_token: issueToken(c, RESOURCE) });
}

function handleMi(req, res, url, ep) {
  const q = url.searchParams;
  if (!state.mi) return send(res, 400, { error: 'invalid_request', error_description: 'Identity not found' });
  if (ep === 'imds') {
    if (req.headers.metadata !== 'true')
      return send(res, 400, { error: 'invalid_request', error_description: 'Required metadata header not specified' });
  } else {
    const h = req.headers['x-identity-header'];
    if (!state.mi.identityHeader || h !== state.mi.identityHeader)
      return send(res, 401, { error: 'invalid_request', error_description: 'X-IDENTITY-HEADER is missing or wrong' });
  }
  if (!q.get('api-version')) return send(res, 400, { error: 'invalid_request', error_description: 'api-version is required' });
  const resource = q.get('resource');
  if (!resource || !sameResource(resource))
    return send(res, 400, { error: 'invalid_resource', error_description: `AADSTS500011: The resource principal named ${resource} was not found in the tenant.` });
  const cid = q.get('client_id');
  if (cid && cid !== state.mi.clientId) return send(res, 400, { error: 'invalid_request', error_description: 'Identity not found' });
  const t = now(), L = state.tokenLifetime;
  const body = { access_token: issueToken(state.mi, RESOURCE), expires_on: String(t + L), resource, token_type: 'Bearer', client_id: state.mi.clientId };
  if (ep === 'imds') Object.assign(body, { expires_in: String(L), ext_expires_in: String(L), not_before: String(t) });
  send(res, 200, body);
}

// ---------------------------------------------------------------- data plane
function authenticate(req) {
  const h = req.headers.authorization || '';
  const m = /^Bearer\s+(\S+)$/i.exec(h);
  if (!m) return { err: 'AKV10000: Request is missing a Bearer or PoP token.' };
  const j = parseJwt(m[1]);
  if (!j || j.header.alg !== 'RS256' || !crypto.verify('sha256', j.input, signer.publicKey, j.sig))
    return { err: 'AKV10016: Token signature is invalid.' };
  if (!sameResource(j.payload.aud)) return { err: `AKV10022: Invalid audience. Expected ${RESOURCE}, found: ${j.payload.aud}.` };
  if (j.payload.tid !== TENANT) return { err: `AKV10032: Invalid issuer. Expected one of https://sts.windows.net/${TENANT}/.` };
  if (!(j.payload.exp > now())) return { err: 'AKV10013: Token is expired.' };
  if (j.payload.gen !== state.tokenGeneration) return { err: 'AKV10013: Token was revoked.' };
  let p = null;
  for (const c of state.clients.values()) if (c.clientId === j.payload.appid) p = c;
  if (state.mi && state.mi.clientId === j.payload.appid) p = state.mi;
  if (!p) return { err: 'AKV10032: Unknown principal.' };
  return { principal: p };
}
function forbidden(res, principal, perm) {
  kvError(res, 403, 'Forbidden',
    `The user, group or application 'appid=${principal.clientId};oid=${principal.oid};iss=https://sts.windows.net/${TENANT}/' does not have keys ${perm} permission on key vault 'emu;location=local'. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125287`,
    'ForbiddenByPolicy');
}
function notFound(res, name) {
  kvError(res, 404, 'KeyNotFound', `A key with (name/id) ${name} was not found in this key vault. If you recently deleted this key you may be able to recover it using the correct recovery command. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182`);
}
function badParam(res, msg) {
  kvError(res, 400, 'BadParameter', msg);
}

function listPage(res, url, items) {
  const q = url.searchParams;
  let max = 25;
  if (q.get('maxresults') !== null) {
    max = Number(q.get('maxresults'));
    if (!Number.isInteger(max) || max < 1 || max > 25) return badParam(res, 'maxresults must be between 1 and 25.');
  }
  let off = 0;
  if (q.get('$skiptoken')) {
    try {
      off = JSON.parse(fromB64u(q.get('$skiptoken')).toString()).o;
    } catch (e) {
      return badParam(res, 'Invalid $skiptoken.');
    }
  }
  const page = items.slice(off, off + max);
  let next = null;
  if (off + max < items.length) {
    next = `${origin()}${url.pathname}?api-version=${encodeURIComponent(q.get('api-version'))}` +
      `&$skiptoken=${b64u(JSON.stringify({ o: off + max }))}&maxresults=${max}`;
  }
  send(res, 200, { value: page, nextLink: next });
}

function keyItem(entry, v, versioned) {
  const it = { kid: versioned ? kidOf(entry, v) : `${origin()}/keys/${entry.name}`, attributes: { ...v.attributes } };
  if (v.tags) it.tags = v.tags;
  if (v.managed) it.managed = true;
  return it;
}

function privFromJwk(jwk) {
  const j = { ...jwk };
  j.kty = String(j.kty || '').replace(/-HSM$/, '');
  if (j.kty === 'EC') j.crv = JWK_CRV_TO_NODE[j.crv] || j.crv;
  delete j.key_ops;
  delete j.kid;
  return crypto.createPrivateKey({ key: j, format: 'jwk' });
}

function doCrypto(res, entry, v, ep, body) {
  const t = now();
  const opName = { wrapkey: 'wrapKey', unwrapkey: 'unwrapKey' }[ep] || ep;
  if (!v.attributes.enabled)
    return kvError(res, 403, 'Forbidden', `Operation ${opName} is not allowed on a disabled key.`, 'KeyDisabled');
  if (!v.keyOps.includes(opName))
    return kvError(res, 403, 'Forbidden', `Operation ${opName} is not permitted on this key.`, 'KeyOperationForbidden');
  if (['sign', 'encrypt', 'wrapkey'].includes(ep) && v.attributes.nbf && t < v.attributes.nbf)
    return kvError(res, 403, 'Forbidden', `Operation ${opName} is not allowed on a key that is not yet valid.`, 'KeyNotYetValid');
  if (['sign', 'encrypt', 'wrapkey'].includes(ep) && v.attributes.exp && t >= v.attributes.exp)
    return kvError(res, 403, 'Forbidden', `Operation ${opName} is not allowed on an expired key.`, 'KeyExpired');
  const alg = body.alg;
  const value = fromB64u(body.value);
  if (typeof alg !== 'string') return badParam(res, "The parameter 'alg' is required.");
  if (!value) return badParam(res, "Property 'value' must be base64url.");
  const kid = kidOf(entry, v);
  const isRsa = v.pub.kty === 'RSA';
  if (ep === 'sign' || ep === 'verify') {
    let m;
    if ((m = /^(RS|PS)(256|384|512)$/.exec(alg)) && isRsa) {
      const hash = HASH[m[2]];
      const digest = ep === 'sign' ? value : fromB64u(body.digest);
      if (!digest) return badParam(res, "Property 'digest' must be base64url.");
      if (digest.length !== HLEN[hash]) return badParam(res, `Invalid length of 'value': ${digest.length} bytes. ${alg} requires ${HLEN[hash]} bytes, encoded with base64url.`);
      const bits = rsaModBits(v.priv);
      if (ep === 'sign') {
        let sig;
        if (m[1] === 'RS') sig = crypto.privateEncrypt({ key: v.priv, padding: crypto.constants.RSA_PKCS1_PADDING }, Buffer.concat([DIGESTINFO[hash], digest]));
        else sig = rsaRaw(v.priv, pssEncode(hash, digest, bits), true);
        return send(res, 200, { kid, value: b64u(sig) });
      }
      const sig = value;
      let ok = false;
      try {
        if (m[1] === 'RS') ok = crypto.publicDecrypt({ key: v.priv, padding: crypto.constants.RSA_PKCS1_PADDING }, sig).equals(Buffer.concat([DIGESTINFO[hash], digest]));
        else ok = sig.length === Math.ceil(bits / 8) && pssVerify(hash, digest, rsaRaw(v.priv, sig, false), bits);
      } catch (e) {
        ok = false;
      }
      return send(res, 200, { value: ok });
    }
    if (alg === 'RSNULL' && isRsa && ep === 'sign') {
      const k = Math.ceil(rsaModBits(v.priv) / 8);
      if (value.length > k - 11) return badParam(res, `Invalid length of 'value': ${value.length} bytes.`);
      return send(res, 200, { kid, value: b64u(crypto.privateEncrypt({ key: v.priv, padding: crypto.constants.RSA_PKCS1_PADDING }, value)) });
    }
    if (/^ES(256|384|512|256K)$/.test(alg) && !isRsa) {
      const c = CURVES[v.pub.crv];
      if (!c || c.alg !== alg) return badParam(res, `Algorithm ${alg} is not valid for a key on curve ${v.pub.crv}.`);
      const digest = ep === 'sign' ? value : fromB64u(body.digest);
      if (!digest) return badParam(res, "Property 'digest' must be base64url.");
      if (digest.length !== c.dlen) return badParam(res, `Invalid length of 'value': ${digest.length} bytes. ${alg} requires ${c.dlen} bytes, encoded with base64url.`);
      if (ep === 'sign') return send(res, 200, { kid, value: b64u(ecdsaSign(v.pub.crv, v.d, digest)) });
      return send(res, 200, { value: ecdsaVerify(v.pub.crv, v.d, digest, value) });
    }
    return badParam(res, `Algorithm ${alg} is not supported for key type ${v.kty}.`);
  }
  // encrypt / decrypt / wrapkey / unwrapkey
  if (!isRsa) return badParam(res, `Operation ${opName} is not supported for key type ${v.kty}.`);
  const k = Math.ceil(rsaModBits(v.priv) / 8);
  const enc = ep === 'encrypt' || ep === 'wrapkey';
  let oaepHash = null;
  if (alg === 'RSA-OAEP') oaepHash = 'sha1';
  else if (alg === 'RSA-OAEP-256') oaepHash = 'sha256';
  else if (alg !== 'RSA1_5') return badParam(res, `Algorithm ${alg} is not supported for key type ${v.kty}.`);
  try {
    if (enc) {
      const max = oaepHash ? k - 2 * HLEN[oaepHash] - 2 : k - 11;
      if (value.length > max) return badParam(res, `Invalid length of 'value': ${value.length} bytes. At most ${max} bytes for ${alg}.`);
      const out = oaepHash
        ? crypto.publicEncrypt({ key: v.priv, padding: crypto.constants.RSA_PKCS1_OAEP_PADDING, oaepHash }, value)
        : crypto.publicEncrypt({ key: v.priv, padding: crypto.constants.RSA_PKCS1_PADDING }, value);
      return send(res, 200, { kid, value: b64u(out) });
    }
    if (value.length !== k) return badParam(res, `Invalid length of 'value': ${value.length} bytes. ${alg} requires ${k} bytes for this key.`);
    let out;
    if (oaepHash) {
      out = crypto.privateDecrypt({ key: v.priv, padding: crypto.constants.RSA_PKCS1_OAEP_PADDING, oaepHash }, value);
    } else {
      const em = rsaRaw(v.priv, value, true);
      let i = 2;
      if (em[0] !== 0 || em[1] !== 2) throw new Error('padding');
      while (i < em.length && em[i] !== 0) i++;
      if (i >= em.length || i < 10) throw new Error('padding');
      out = em.subarray(i + 1);
    }
    return send(res, 200, { kid, value: b64u(out) });
  } catch (e) {
    return badParam(res, `The ${opName} operation failed: the ciphertext is not valid for ${alg}.`);
  }
}

async function handleKeys(req, res, url, r, principal) {
  const perm = PERM[r.ep];
  if (!principal.permissions.has(perm) && !principal.permissions.has('all'))
    return forbidden(res, principal, PERM_DISPLAY[perm] || perm);
  let body = {};
  if (['POST', 'PUT', 'PATCH'].includes(req.method)) {
    const raw = await readBody(req);
    if (raw.length) {
      try {
        body = JSON.parse(raw.toString('utf8'));
      } catch (e) {
        return badParam(res, 'The request body is not valid JSON.');
      }
    }
    if (typeof body !== 'object' || body === null) return badParam(res, 'The request body must be a JSON object.');
  }
  const name = r.name;
  if (name !== undefined && !/^[0-9a-zA-Z-]{1,127}$/.test(name)) return badParam(res, `The key name ${name} is not valid.`);
  const lname = name && name.toLowerCase();
  const entry = name ? state.keys.get(lname) : null;
  switch (r.ep) {
    case 'list': {
      const items = [...state.keys.values()].sort((a, b) => a.name.toLowerCase().localeCompare(b.name.toLowerCase()))
        .map((e) => keyItem(e, e.versions[e.versions.length - 1], false));
      return listPage(res, url, items);
    }
    case 'versions':
      if (!entry) return notFound(res, name);
      return listPage(res, url, entry.versions.map((v) => keyItem(entry, v, true)));
    case 'get': {
      if (!entry) return notFound(res, name);
      const v = findVersion(entry, r.version);
      if (!v) return notFound(res, `${name}/${r.version}`);
      return send(res, 200, keyBundle(entry, v));
    }
    case 'create':
    case 'import': {
      if (state.deleted.has(lname))
        return kvError(res, 409, 'Conflict', `Key ${name} is currently in a deleted but recoverable state, and its name cannot be reused; in this state, the key can only be recovered or purged.`, 'ObjectIsDeletedButRecoverable');
      let priv;
      const kty = String(r.ep === 'create' ? body.kty : (body.key && body.key.kty) || '');
      try {
        if (r.ep === 'create') {
          if (/^RSA(-HSM)?$/.test(kty)) {
            const size = body.key_size || 2048;
            if (![2048, 3072, 4096].includes(size)) return badParam(res, `Invalid key size ${size}.`);
            priv = crypto.generateKeyPairSync('rsa', { modulusLength: size, publicExponent: body.public_exponent || 65537 }).privateKey;
          } else if (/^EC(-HSM)?$/.test(kty)) {
            const c = CURVES[body.crv || 'P-256'];
            if (!c) return badParam(res, `Invalid curve ${body.crv}.`);
            priv = crypto.generateKeyPairSync('ec', { namedCurve: c.node }).privateKey;
          } else return badParam(res, `Invalid key type ${kty}.`);
        } else {
          if (!body.key || !/^(RSA|EC)(-HSM)?$/.test(kty)) return badParam(res, 'The key to import must be an RSA or EC JWK.');
          priv = privFromJwk(body.key);
        }
      } catch (e) {
        return badParam(res, `The key is not valid: ${e.message}`);
      }
      const ops = r.ep === 'create' ? body.key_ops : body.key && body.key.key_ops;
      const v = addVersion(name, priv, { keyOps: ops, attributes: body.attributes, tags: body.tags,
        hsm: r.ep === 'import' ? body.Hsm === true || kty.endsWith('-HSM') : kty.endsWith('-HSM') });
      return send(res, 200, keyBundle(state.keys.get(lname), v));
    }
    case 'update': {
      if (!entry) return notFound(res, name);
      const v = findVersion(entry, r.version);
      if (!v) return notFound(res, `${name}/${r.version}`);
      if (Array.isArray(body.key_ops)) v.keyOps = body.key_ops.slice();
      if (body.attributes) {
        for (const a of ['enabled', 'nbf', 'exp']) {
          if (body.attributes[a] === null) delete v.attributes[a];
          else if (body.attributes[a] !== undefined) v.attributes[a] = body.attributes[a];
        }
      }
      if (body.tags) v.tags = body.tags;
      v.attributes.updated = now();
      return send(res, 200, keyBundle(entry, v));
    }
    case 'delete': {
      if (!entry) return notFound(res, name);
      const v = entry.versions[entry.versions.length - 1];
      const t = now();
      state.keys.delete(lname);
      state.deleted.set(lname, { entry, deletedDate: t });
      return send(res, 200, { recoveryId: `${origin()}/deletedkeys/${entry.name}`, deletedDate: t,
        scheduledPurgeDate: t + 90 * 86400, ...keyBundle(entry, v) });
    }
    case 'deletedkeys':
      return listPage(res, url, [...state.deleted.values()].map((d) => ({ ...keyItem(d.entry, d.entry.versions.at(-1), false),
        recoveryId: `${origin()}/deletedkeys/${d.entry.name}`, deletedDate: d.deletedDate })));
    case 'getdeleted': {
      const d = state.deleted.get(lname);
      if (!d) return kvError(res, 404, 'KeyNotFound', `Deleted Key not found: ${name}`);
      return send(res, 200, { recoveryId: `${origin()}/deletedkeys/${d.entry.name}`, deletedDate: d.deletedDate,
        scheduledPurgeDate: d.deletedDate + 90 * 86400, ...keyBundle(d.entry, d.entry.versions.at(-1)) });
    }
    case 'purge':
      if (!state.deleted.delete(lname)) return kvError(res, 404, 'KeyNotFound', `Deleted Key not found: ${name}`);
      res.writeHead(204, { 'x-ms-request-id': uuid() });
      return res.end();
    case 'recover': {
      const d = state.deleted.get(lname);
      if (!d) return kvError(res, 404, 'KeyNotFound', `Deleted Key not found: ${name}`);
      state.deleted.delete(lname);
      state.keys.set(lname, d.entry);
      return send(res, 200, keyBundle(d.entry, d.entry.versions.at(-1)));
    }
    default: {
      if (!entry) return notFound(res, name);
      const v = findVersion(entry, r.version);
      if (!v) return notFound(res, `${name}/${r.version}`);
      return doCrypto(res, entry, v, r.ep, body);
    }
  }
}

// ---------------------------------------------------------------- throttling (vault-wide limit)
// Azure Key Vault counts key transactions per vault per region in 10 s, weighted by key type
// (learn.microsoft.com/azure/key-vault/general/service-limits, "Key transactions"):
//   HSM keys, all transactions but CREATE: RSA-2048 2,000; RSA-3072 500; RSA-4096 250;
//   EC P-256, P-384, P-521, P-256K 2,000. Software keys: twice that (4,000; 1,000; 500; 4,000).
// Enforcement is on the weighted sum, so in RSA-2048-HSM equivalents an RSA-3072 operation
// weighs 4, RSA-4096 8, EC 1, and a software key half of its HSM weight. Requests answered 429
// are not counted. Beyond the limit: 429, code "Throttled", Retry-After = whole seconds until
// the sliding window has room again (at least 1). CREATE (10 / 20 per 10 s) is not limited here.
const LIMIT_WEIGHTS = { 'RSA-2048': 1, 'RSA-3072': 4, 'RSA-4096': 8, EC: 1, software: 0.5, other: 1 };
const LIMITED_EPS = new Set(['get', 'versions', 'list', 'sign', 'verify', 'encrypt', 'decrypt', 'wrapkey', 'unwrapkey']);
const limits = { windowMs: 10000, limit: 0, weights: { ...LIMIT_WEIGHTS }, log: [], head: 0, sum: 0,
  accepted: 0, throttled: 0, acceptedWeight: 0 };
function limitsReset(config) {
  if (config) {
    limits.windowMs = Math.max(1, Number(config.windowMs || 10000));
    limits.limit = Math.max(0, Number(config.limit || 0));
    limits.weights = { ...LIMIT_WEIGHTS, ...(config.weights || {}) };
  }
  limits.log = [];
  limits.head = 0;
  limits.sum = 0;
  limits.accepted = limits.throttled = limits.acceptedWeight = 0;
}
function limitsView() {
  return { windowMs: limits.windowMs, limit: limits.limit, weights: limits.weights, accepted: limits.accepted,
    throttled: limits.throttled, acceptedWeight: limits.acceptedWeight, inWindow: limits.sum };
}
function limitWeight(r) {
  const W = limits.weights;
  const entry = r.name ? state.keys.get(r.name.toLowerCase()) : null;
  const v = entry ? findVersion(entry, r.version) : null;
  if (!v) return Number(W.other);
  let w;
  if (v.pub.kty === 'RSA') {
    const bits = rsaModBits(v.priv);
    w = bits <= 2048 ? W['RSA-2048'] : bits <= 3072 ? W['RSA-3072'] : W['RSA-4096'];
  } else w = W.EC;
  return Number(w) * (v.kty.endsWith('-HSM') ? 1 : Number(W.software));
}
// returns true when the request was answered 429
function throttled(r, req, res) {
  if (!(limits.limit > 0) || !LIMITED_EPS.has(r.ep)) return false;
  const t = Date.now(), L = limits, w = limitWeight(r);
  while (L.head < L.log.length && L.log[L.head].t <= t - L.windowMs) L.sum -= L.log[L.head++].w;
  if (L.head > 4096 && L.head * 2 > L.log.length) {
    L.log = L.log.slice(L.head);
    L.head = 0;
  }
  if (L.sum + w <= L.limit + 1e-9) {
    L.log.push({ t, w });
    L.sum += w;
    L.accepted++;
    L.acceptedWeight += w;
    return false;
  }
  let freeAt = t + L.windowMs, freed = 0;
  for (let i = L.head; i < L.log.length; i++) {
    freed += L.log[i].w;
    if (L.sum - freed + w <= L.limit + 1e-9) {
      freeAt = L.log[i].t + L.windowMs;
      break;
    }
  }
  L.throttled++;
  req.resume();
  kvError(res, 429, 'Throttled', 'Request was not processed because too many requests were received. Reason: VaultRequestTypeLimitReached',
    null, { 'Retry-After': String(Math.max(1, Math.ceil((freeAt - t) / 1000))) });
  return true;
}

// ---------------------------------------------------------------- admin
async function handleAdmin(req, res, url) {
  const p = url.pathname.replace(/\/+$/, '');
  let body = {};
  if (req.method === 'POST') {
    const raw = await readBody(req);
    if (raw.length) body = JSON.parse(raw.toString('utf8'));
  }
  if (p === '/_emu/health') return send(res, 200, { ok: true, port: PORT });
  if (p === '/_emu/counters' && req.method === 'GET') {
    const total = Object.values(state.counters).reduce((a, b) => a + b, 0);
    return send(res, 200, { counters: state.counters, total });
  }
  if (p === '/_emu/log' && req.method === 'GET') {
    const ep = url.searchParams.get('ep');
    return send(res, 200, { requests: state.reqlog.filter((r) => !ep || r.ep === ep) });
  }
  if (p === '/_emu/key' && req.method === 'POST') {
    // test control: change a version's attributes / key_ops without a token
    const entry = state.keys.get(String(body.name || '').toLowerCase());
    if (!entry) return send(res, 404, { error: 'no such key' });
    const v = body.version ? entry.versions.find((x) => x.version === body.version) : entry.versions[entry.versions.length - 1];
    if (!v) return send(res, 404, { error: 'no such version' });
    for (const a of ['enabled', 'nbf', 'exp'])
      if (body.attributes && body.attributes[a] !== undefined) {
        if (body.attributes[a] === null) delete v.attributes[a];
        else v.attributes[a] = body.attributes[a];
      }
    if (Array.isArray(body.keyOps)) v.keyOps = body.keyOps;
    v.attributes.updated = now();
    return send(res, 200, keyBundle(entry, v));
  }
  if (p === '/_emu/rotate' && req.method === 'POST') {
    // test control: a new version of the key (same type and size), as a rotation policy makes
    const entry = state.keys.get(String(body.name || '').toLowerCase());
    if (!entry) return send(res, 404, { error: 'no such key' });
    const last = entry.versions[entry.versions.length - 1];
    const priv = last.pub.kty === 'RSA'
      ? crypto.generateKeyPairSync('rsa', { modulusLength: rsaModBits(last.priv) }).privateKey
      : crypto.generateKeyPairSync('ec', { namedCurve: CURVES[last.pub.crv].node }).privateKey;
    const v = addVersion(entry.name, priv, { keyOps: last.keyOps, hsm: last.kty.endsWith('-HSM') });
    return send(res, 200, keyBundle(entry, v));
  }
  if (p === '/_emu/reset' && req.method === 'POST') {
    state.reqlog = [];
    state.counters = {};
    state.faults = [];
    limitsReset({});
    return send(res, 200, { ok: true });
  }
  if (p === '/_emu/faults') {
    if (req.method === 'DELETE') {
      state.faults = [];
      return send(res, 200, { ok: true });
    }
    if (req.method === 'GET') return send(res, 200, { faults: state.faults });
    const list = Array.isArray(body.faults) ? body.faults : [body];
    for (const f of list) state.faults.push({ endpoint: f.endpoint || '*', action: f.action || 'status',
      status: f.status, retryAfter: f.retryAfter, delayMs: f.delayMs, times: f.times === undefined ? 1 : f.times });
    return send(res, 200, { faults: state.faults });
  }
  if (p === '/_emu/limits') {
    if (req.method === 'POST') limitsReset(body);
    return send(res, 200, limitsView());
  }
  if (p === '/_emu/config' && req.method === 'POST') {
    if (body.tokenLifetime !== undefined) state.tokenLifetime = Number(body.tokenLifetime);
    return send(res, 200, { tokenLifetime: state.tokenLifetime });
  }
  if (p === '/_emu/revoke' && req.method === 'POST') {
    state.tokenGeneration++;
    return send(res, 200, { generation: state.tokenGeneration });
  }
  if (p === '/_emu/policy' && req.method === 'POST') {
    const c = state.clients.get(body.clientId) || (state.mi && state.mi.clientId === body.clientId ? state.mi : null);
    if (!c) return send(res, 404, { error: 'no such client' });
    c.permissions = normPerms(body.permissions);
    return send(res, 200, { clientId: body.clientId, permissions: [...c.permissions] });
  }
  if (p === '/_emu/federated-token' && req.method === 'POST') {
    const t = now();
    return send(res, 200, { token: signJwt({ iss: FED_ISSUER(), sub: body.subject || 'system:serviceaccount:default:kvp11',
      aud: 'api://AzureADTokenExchange', iat: t, nbf: t, exp: t + Number(body.lifetime || 3600), jti: uuid() }) });
  }
  return send(res, 404, { error: 'unknown admin path' });
}

// ---------------------------------------------------------------- server
async function handle(req, res) {
  const url = new URL(req.url, origin());
  if (url.pathname.startsWith('/_emu/')) return handleAdmin(req, res, url);
  const ep = endpointOf(req.method, url.pathname);
  count(ep);
  const entry = { t: Date.now(), ep, status: 0 };
  state.reqlog.push(entry);
  if (state.reqlog.length > 20000) state.reqlog.splice(0, 10000);
  res.on('finish', () => { entry.status = res.statusCode; });
  if (await applyFaults(ep, req, res)) return;
  if (ep === 'token') return handleToken(req, res, url);
  if (ep === 'openid') {
    const tenant = url.pathname.split('/')[1];
    const base = `${origin()}/${tenant}`;
    return send(res, 200, { token_endpoint: `${base}/oauth2/v2.0/token`, authorization_endpoint: `${base}/oauth2/v2.0/authorize`,
      issuer: `${origin()}/${tenant}/v2.0`, jwks_uri: `${base}/discovery/v2.0/keys`,
      token_endpoint_auth_methods_supported: ['client_secret_post', 'private_key_jwt'] });
  }
  if (ep === 'imds' || ep === 'msi') return handleMi(req, res, url, ep);
  const segs = url.pathname.split('/').slice(1).map(decodeURIComponent);
  const r = route(req.method, segs);
  if (!r) return kvError(res, 404, 'NotFound', `The requested path ${url.pathname} was not found.`);
  // authentication comes before anything else, as on the real service
  const a = authenticate(req);
  if (a.err) {
    req.resume();
    return kvError(res, 401, 'Unauthorized', a.err, null, challengeHeader());
  }
  const v = url.searchParams.get('api-version');
  if (!v) return badParam(res, 'The api-version query parameter is required.');
  if (!API_VERSIONS.has(v))
    return badParam(res, `The specified version (${v}) is not recognized. Consider using the latest supported version (2025-07-01).`);
  if (throttled(r, req, res)) return;
  return handleKeys(req, res, url, r, a.principal);
}

const server = https.createServer({ cert: fs.readFileSync(opts.cert), key: fs.readFileSync(opts.key) }, (req, res) => {
  const t0 = Date.now();
  res.on('finish', () => {
    if (!opts.quiet) process.stderr.write(`${new Date().toISOString()} ${req.method} ${req.url} ${res.statusCode} ${Date.now() - t0}ms\n`);
  });
  handle(req, res).catch((e) => {
    process.stderr.write(`error: ${e.stack}\n`);
    if (!res.headersSent) kvError(res, 500, 'InternalServerError', 'emulator error');
    else res.destroy();
  });
});
server.keepAliveTimeout = 120000;
server.headersTimeout = 125000;
server.listen(opts.port, HOST, () => {
  PORT = server.address().port;
  process.stdout.write(`${PORT}\n`);
});
const stop = () => server.close(() => process.exit(0)) && setTimeout(() => process.exit(0), 500).unref();
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
