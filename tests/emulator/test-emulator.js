#!/usr/bin/env node
// test-emulator.js — checks the Key Vault emulator against the real service's example payloads
// (KVP11_SHARED_DIR/kv-examples/7.5: each example request is replayed and the response must
// have the example's shape) and checks its crypto independently with Node's crypto module.
//
//   node test-emulator.js WORKDIR        (exit 0 ok, 1 failed, 77 skipped)
'use strict';

const assert = require('assert');
const crypto = require('crypto');
const fs = require('fs');
const https = require('https');
const path = require('path');

const WORK = path.resolve(process.argv[2] || '/tmp/kvp11-emulator-test');
const SHARED = process.env.KVP11_SHARED_DIR;
const EX = SHARED ? path.join(SHARED, 'kv-examples', '7.5') : null;
if (!EX || !fs.existsSync(path.join(EX, 'GetKey-example.json'))) {
  console.log('KVP11_SHARED_DIR/kv-examples/7.5 not found: skipped');
  process.exit(77);
}
const TENANT = '0f3b3c1e-1111-4222-8333-944455556666';

let failures = 0, passed = 0;
async function check(name, fn) {
  try {
    await fn();
    passed++;
    console.log(`ok   ${name}`);
  } catch (e) {
    failures++;
    console.log(`FAIL ${name}: ${e.stack || e}`);
  }
}

// ---------------------------------------------------------------- setup
const { makeCerts, startEmulator } = require('./harness');
makeCerts(WORK);
const CA = fs.readFileSync(path.join(WORK, 'ca.pem'));
const clientKey = crypto.createPrivateKey(fs.readFileSync(path.join(WORK, 'client.key')));
const clientCert = new crypto.X509Certificate(fs.readFileSync(path.join(WORK, 'client.pem')));
const ecKey = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
fs.writeFileSync(path.join(WORK, 'seed.json'), JSON.stringify({
  tenant: TENANT,
  clients: [
    { clientId: 'full', secret: 'full-secret', permissions: ['all'] },
    { clientId: 'reader', secret: 'reader-secret', permissions: ['get', 'list'] },
    { clientId: 'certapp', certFile: path.join(WORK, 'client.pem'), permissions: ['get'] },
  ],
  managedIdentity: { clientId: 'mi', identityHeader: 'hdr', permissions: ['get'] },
  keys: [{ name: 'seeded', pem: ecKey.export({ type: 'pkcs8', format: 'pem' }) }],
}));

let PORT, ORIGIN, emu;
async function start() {
  const e = await startEmulator(WORK);
  PORT = e.port;
  ORIGIN = e.origin;
  emu = e.proc;
}

const agent = new https.Agent({ ca: CA, keepAlive: true });
function req(method, p, { body, headers = {}, form, raw } = {}) {
  return new Promise((resolve, reject) => {
    const h = { ...headers };
    let data;
    if (form !== undefined) {
      data = new URLSearchParams(form).toString();
      h['Content-Type'] = 'application/x-www-form-urlencoded';
    } else if (body !== undefined) {
      data = typeof body === 'string' ? body : JSON.stringify(body);
      h['Content-Type'] = 'application/json';
    }
    const r = https.request(`${ORIGIN}${p}`, { method, agent, headers: h }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString();
        let json = null;
        try {
          json = text ? JSON.parse(text) : null;
        } catch (e) {
          json = null;
        }
        resolve({ status: res.statusCode, headers: res.headers, text, json });
      });
      res.on('error', raw ? () => resolve({ status: 0, text: '' }) : reject);
    });
    r.on('error', raw ? (e) => resolve({ status: 0, error: e }) : reject);
    if (data !== undefined) r.write(data);
    r.end();
  });
}
async function token(clientId, secret) {
  const r = await req('POST', `/${TENANT}/oauth2/v2.0/token`, { form: { grant_type: 'client_credentials', client_id: clientId,
    client_secret: secret, scope: 'https://127.0.0.1/.default' } });
  assert.strictEqual(r.status, 200, r.text);
  return r.json.access_token;
}

// Every field of the example must exist in the emulator's answer with the same JSON type;
// arrays are compared element shape by element shape (first element).
function sameShape(example, actual, where = '$') {
  const t = (v) => (v === null ? 'null' : Array.isArray(v) ? 'array' : typeof v);
  if (t(example) === 'null') return;
  assert.strictEqual(t(actual), t(example), `${where}: type ${t(actual)}, example has ${t(example)}`);
  if (t(example) === 'object') {
    for (const k of Object.keys(example)) {
      assert.ok(k in actual, `${where}.${k} missing (have ${Object.keys(actual).join(',')})`);
      sameShape(example[k], actual[k], `${where}.${k}`);
    }
  } else if (t(example) === 'array' && example.length && actual.length) {
    sameShape(example[0], actual[0], `${where}[0]`);
  }
}
const example = (f) => JSON.parse(fs.readFileSync(path.join(EX, f), 'utf8'));
const b64u = (b) => Buffer.from(b).toString('base64url');
const api = '?api-version=7.5';

async function main() {
  await start();
  const T = await token('full', 'full-secret');
  const auth = { Authorization: `Bearer ${T}` };

  await check('401 challenge like the service', async () => {
    const r = await req('GET', `/keys/seeded${api}`);
    assert.strictEqual(r.status, 401);
    assert.strictEqual(r.headers['www-authenticate'], `Bearer authorization="${ORIGIN}/${TENANT}", resource="https://127.0.0.1"`);
    assert.strictEqual(r.json.error.code, 'Unauthorized');
    assert.match(r.json.error.message, /^AKV10000/);
    assert.ok(r.headers['x-ms-request-id']);
    assert.match(r.headers['content-type'], /^application\/json; charset=utf-8/);
  });

  // replay the examples
  const imp = example('ImportKey-example.json');
  await check('ImportKey example', async () => {
    const r = await req('PUT', `/keys/${imp.parameters['key-name']}${api}`, { headers: auth, body: imp.parameters.parameters });
    assert.strictEqual(r.status, 200, r.text);
    sameShape(imp.responses['200'].body, r.json);
    assert.strictEqual(r.json.key.n, imp.parameters.parameters.key.n);
    assert.ok(!('d' in r.json.key), 'private part returned');
    assert.match(r.json.key.kid, new RegExp(`^${ORIGIN}/keys/ImportSoftKeyTest/[0-9a-f]{32}$`));
  });
  const cre = example('CreateKey-example.json');
  let created;
  await check('CreateKey example', async () => {
    const r = await req('POST', `/keys/${cre.parameters['key-name']}/create${api}`, { headers: auth, body: cre.parameters.parameters });
    assert.strictEqual(r.status, 200, r.text);
    sameShape(cre.responses['200'].body, r.json);
    assert.deepStrictEqual(r.json.key.key_ops, cre.parameters.parameters.key_ops);
    assert.strictEqual(Buffer.from(r.json.key.n, 'base64url').length, 256);
    created = r.json;
  });
  await check('GetKey example (latest, versioned, SDK trailing slash)', async () => {
    const ex = example('GetKey-example.json');
    const ver = created.key.kid.split('/').pop();
    for (const p of [`/keys/CreateSoftKeyTest${api}`, `/keys/CreateSoftKeyTest/${ver}${api}`, `/keys/CreateSoftKeyTest/?api%2Dversion=7.5`]) {
      const r = await req('GET', p, { headers: auth });
      assert.strictEqual(r.status, 200, `${p}: ${r.text}`);
      sameShape(ex.responses['200'].body, r.json);
      assert.strictEqual(r.json.key.kid, created.key.kid);
    }
  });
  await check('GetKeyVersions example + paging', async () => {
    await req('POST', `/keys/CreateSoftKeyTest/create${api}`, { headers: auth, body: cre.parameters.parameters });
    const ex = example('GetKeyVersions-example.json');
    let r = await req('GET', `/keys/CreateSoftKeyTest/versions${api}&maxresults=1`, { headers: auth });
    assert.strictEqual(r.status, 200, r.text);
    sameShape(ex.responses['200'].body, r.json);
    assert.match(r.json.value[0].kid, /\/keys\/CreateSoftKeyTest\/[0-9a-f]{32}$/);
    assert.ok(r.json.nextLink.startsWith(`${ORIGIN}/keys/CreateSoftKeyTest/versions?api-version=7.5&$skiptoken=`));
    r = await req('GET', r.json.nextLink.slice(ORIGIN.length), { headers: auth });
    assert.strictEqual(r.json.value.length, 1);
    assert.strictEqual(r.json.nextLink, null);
  });
  await check('GetKeys example + paging over 30 keys', async () => {
    for (let i = 0; i < 28; i++) await req('POST', `/keys/bulk-${i}/create${api}`, { headers: auth, body: { kty: 'EC' } });
    const ex = example('GetKeys-example.json');
    let r = await req('GET', `/keys${api}`, { headers: auth });
    assert.strictEqual(r.status, 200, r.text);
    sameShape(ex.responses['200'].body, r.json);
    assert.strictEqual(r.json.value.length, 25);
    assert.ok(!/\/keys\/[^/]+\/[0-9a-f]{32}$/.test(r.json.value[0].kid), 'list kids are base ids');
    const names = r.json.value.map((v) => v.kid.split('/').pop());
    while (r.json.nextLink) {
      r = await req('GET', r.json.nextLink.slice(ORIGIN.length), { headers: auth });
      names.push(...r.json.value.map((v) => v.kid.split('/').pop()));
    }
    assert.strictEqual(names.length, 31); // 28 bulk + seeded + 2 from the examples
    assert.strictEqual(new Set(names).size, 31);
    const bad = await req('GET', `/keys${api}&maxresults=26`, { headers: auth });
    assert.strictEqual(bad.status, 400);
  });

  // crypto, checked with Node's own implementation
  const rsa = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = rsa.privateKey.export({ format: 'jwk' });
  let rsaKid;
  await check('import RSA key (Hsm:true -> RSA-HSM)', async () => {
    const r = await req('PUT', `/keys/rsa1${api}`, { headers: auth, body: { Hsm: true, key: { ...jwk, key_ops: ['sign', 'verify', 'encrypt', 'decrypt', 'wrapKey', 'unwrapKey'] } } });
    assert.strictEqual(r.status, 200, r.text);
    assert.strictEqual(r.json.key.kty, 'RSA-HSM');
    rsaKid = r.json.key.kid;
  });
  const ver = () => rsaKid.split('/').pop();
  const msg = Buffer.from('the message');
  for (const [alg, hash, pss] of [['RS256', 'sha256', 0], ['RS384', 'sha384', 0], ['RS512', 'sha512', 0], ['PS256', 'sha256', 1], ['PS384', 'sha384', 1], ['PS512', 'sha512', 1]]) {
    await check(`sign ${alg} verified by Node; verify endpoint agrees`, async () => {
      const digest = crypto.createHash(hash).update(msg).digest();
      const r = await req('POST', `/keys/rsa1/${ver()}/sign${api}`, { headers: auth, body: { alg, value: b64u(digest) } });
      assert.strictEqual(r.status, 200, r.text);
      sameShape(example('sign-example.json').responses['200'].body, r.json);
      const sig = Buffer.from(r.json.value, 'base64url');
      const key = pss ? { key: rsa.publicKey, padding: crypto.constants.RSA_PKCS1_PSS_PADDING, saltLength: digest.length } : rsa.publicKey;
      assert.ok(crypto.verify(hash, msg, key, sig), 'Node does not verify the signature');
      const v = await req('POST', `/keys/rsa1/${ver()}/verify${api}`, { headers: auth, body: { alg, digest: b64u(digest), value: b64u(sig) } });
      sameShape(example('verify-example.json').responses['200'].body, v.json);
      assert.strictEqual(v.json.value, true);
      sig[10] ^= 1;
      const v2 = await req('POST', `/keys/rsa1/${ver()}/verify${api}`, { headers: auth, body: { alg, digest: b64u(digest), value: b64u(sig) } });
      assert.strictEqual(v2.json.value, false);
    });
  }
  await check('sign: wrong digest length -> 400 BadParameter like the service', async () => {
    const r = await req('POST', `/keys/rsa1//sign${api}`, { headers: auth, body: { alg: 'RS256', value: b64u(Buffer.alloc(10)) } });
    assert.strictEqual(r.status, 400);
    assert.strictEqual(r.json.error.code, 'BadParameter');
    assert.strictEqual(r.json.error.message, "Invalid length of 'value': 10 bytes. RS256 requires 32 bytes, encoded with base64url.");
  });
  for (const [alg, pad, oaepHash] of [['RSA1_5', crypto.constants.RSA_PKCS1_PADDING], ['RSA-OAEP', crypto.constants.RSA_PKCS1_OAEP_PADDING, 'sha1'], ['RSA-OAEP-256', crypto.constants.RSA_PKCS1_OAEP_PADDING, 'sha256']]) {
    await check(`decrypt/unwrapkey ${alg} of Node ciphertexts; encrypt decryptable by... the emulator`, async () => {
      const pt = crypto.randomBytes(32);
      const ct = crypto.publicEncrypt({ key: rsa.publicKey, padding: pad, oaepHash }, pt);
      for (const op of ['decrypt', 'unwrapkey']) {
        const r = await req('POST', `/keys/rsa1/${ver()}/${op}${api}`, { headers: auth, body: { alg, value: b64u(ct) } });
        assert.strictEqual(r.status, 200, r.text);
        sameShape(example(op === 'decrypt' ? 'decrypt-example.json' : 'unwrapKey-example.json').responses['200'].body, r.json);
        assert.ok(Buffer.from(r.json.value, 'base64url').equals(pt));
      }
      for (const op of ['encrypt', 'wrapkey']) {
        const e = await req('POST', `/keys/rsa1/${ver()}/${op}${api}`, { headers: auth, body: { alg, value: b64u(pt) } });
        assert.strictEqual(e.status, 200, e.text);
        sameShape(example(op === 'encrypt' ? 'encrypt-example.json' : 'wrapKey-example.json').responses['200'].body, e.json);
        const ect = Buffer.from(e.json.value, 'base64url');
        if (oaepHash) assert.ok(crypto.privateDecrypt({ key: rsa.privateKey, padding: pad, oaepHash }, ect).equals(pt));
        else assert.strictEqual(ect.length, 256);
      }
    });
  }
  for (const [crv, node, alg, hash] of [['P-256', 'prime256v1', 'ES256', 'sha256'], ['P-384', 'secp384r1', 'ES384', 'sha384'], ['P-521', 'secp521r1', 'ES512', 'sha512'], ['P-256K', 'secp256k1', 'ES256K', 'sha256']]) {
    await check(`sign ${alg} on ${crv}: r||s verified by Node`, async () => {
      const k = crypto.generateKeyPairSync('ec', { namedCurve: node });
      const j = k.privateKey.export({ format: 'jwk' });
      j.crv = crv;
      const name = `ec-${alg.toLowerCase()}`;
      const im = await req('PUT', `/keys/${name}${api}`, { headers: auth, body: { key: j } });
      assert.strictEqual(im.status, 200, im.text);
      assert.strictEqual(im.json.key.crv, crv);
      assert.deepStrictEqual(im.json.key.key_ops, ['sign', 'verify']);
      const digest = crypto.createHash(hash).update(msg).digest();
      const r = await req('POST', `/keys/${name}//sign${api}`, { headers: auth, body: { alg, value: b64u(digest) } });
      assert.strictEqual(r.status, 200, r.text);
      const sig = Buffer.from(r.json.value, 'base64url');
      assert.strictEqual(sig.length, { 'P-256': 64, 'P-384': 96, 'P-521': 132, 'P-256K': 64 }[crv]);
      assert.ok(crypto.verify(hash, msg, { key: k.publicKey, dsaEncoding: 'ieee-p1363' }, sig), 'Node does not verify');
      const v = await req('POST', `/keys/${name}//verify${api}`, { headers: auth, body: { alg, digest: b64u(digest), value: b64u(sig) } });
      assert.strictEqual(v.json.value, true);
      const wrong = await req('POST', `/keys/${name}//sign${api}`, { headers: auth, body: { alg: alg === 'ES384' ? 'ES256' : 'ES384', value: b64u(digest) } });
      assert.strictEqual(wrong.status, 400);
    });
  }
  await check('DeleteKey example, 409 while deleted, recover', async () => {
    const ex = example('DeleteKey-example.json');
    const r = await req('DELETE', `/keys/CreateSoftKeyTest${api}`, { headers: auth });
    assert.strictEqual(r.status, 200, r.text);
    sameShape(ex.responses['200'].body, r.json);
    const g = await req('GET', `/keys/CreateSoftKeyTest${api}`, { headers: auth });
    assert.strictEqual(g.status, 404);
    assert.strictEqual(g.json.error.code, 'KeyNotFound');
    const c = await req('POST', `/keys/CreateSoftKeyTest/create${api}`, { headers: auth, body: { kty: 'EC' } });
    assert.strictEqual(c.status, 409);
    assert.strictEqual(c.json.error.innererror.code, 'ObjectIsDeletedButRecoverable');
    const rec = await req('POST', `/deletedkeys/CreateSoftKeyTest/recover${api}`, { headers: auth });
    assert.strictEqual(rec.status, 200);
  });
  await check('key_ops, disabled and expired keys answer 403 like the service', async () => {
    let r = await req('PATCH', `/keys/rsa1/${ver()}${api}`, { headers: auth, body: { key_ops: ['verify'] } });
    assert.strictEqual(r.status, 200, r.text);
    r = await req('POST', `/keys/rsa1//sign${api}`, { headers: auth, body: { alg: 'RS256', value: b64u(Buffer.alloc(32)) } });
    assert.strictEqual(r.status, 403);
    assert.strictEqual(r.json.error.innererror.code, 'KeyOperationForbidden');
    await req('PATCH', `/keys/rsa1/${ver()}${api}`, { headers: auth, body: { key_ops: ['sign', 'decrypt'], attributes: { exp: 1000 } } });
    r = await req('POST', `/keys/rsa1//sign${api}`, { headers: auth, body: { alg: 'RS256', value: b64u(Buffer.alloc(32)) } });
    assert.strictEqual(r.status, 403);
    const ct = crypto.publicEncrypt({ key: rsa.publicKey, padding: crypto.constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256' }, Buffer.from('x'));
    r = await req('POST', `/keys/rsa1//decrypt${api}`, { headers: auth, body: { alg: 'RSA-OAEP-256', value: b64u(ct) } });
    assert.strictEqual(r.status, 200, 'decrypt still works on an expired key');
    await req('PATCH', `/keys/rsa1/${ver()}${api}`, { headers: auth, body: { attributes: { enabled: false, exp: null } } });
    r = await req('POST', `/keys/rsa1//decrypt${api}`, { headers: auth, body: { alg: 'RSA-OAEP-256', value: b64u(ct) } });
    assert.strictEqual(r.status, 403);
    assert.match(r.json.error.message, /disabled/);
  });
  await check('api-version required and checked', async () => {
    let r = await req('GET', '/keys/seeded', { headers: auth });
    assert.strictEqual(r.status, 400);
    r = await req('GET', '/keys/seeded?api-version=9.9', { headers: auth });
    assert.strictEqual(r.status, 400);
    assert.match(r.json.error.message, /^The specified version \(9\.9\) is not recognized/);
    r = await req('GET', '/keys/seeded?api%2Dversion=2025-07-01', { headers: auth });
    assert.strictEqual(r.status, 200);
  });
  await check('access policy: 403 ForbiddenByPolicy naming the permission', async () => {
    const t = await token('reader', 'reader-secret');
    const r = await req('POST', `/keys/seeded//sign${api}`, { headers: { Authorization: `Bearer ${t}` }, body: { alg: 'ES256', value: b64u(Buffer.alloc(32)) } });
    assert.strictEqual(r.status, 403);
    assert.strictEqual(r.json.error.code, 'Forbidden');
    assert.strictEqual(r.json.error.innererror.code, 'ForbiddenByPolicy');
    assert.match(r.json.error.message, /does not have keys sign permission on key vault/);
    const g = await req('GET', `/keys/seeded${api}`, { headers: { Authorization: `Bearer ${t}` } });
    assert.strictEqual(g.status, 200);
  });
  await check('token endpoint: errors like Entra ID', async () => {
    let r = await req('POST', `/${TENANT}/oauth2/v2.0/token`, { form: { grant_type: 'client_credentials', client_id: 'full', client_secret: 'wrong', scope: 'https://127.0.0.1/.default' } });
    assert.strictEqual(r.status, 401);
    assert.strictEqual(r.json.error, 'invalid_client');
    assert.deepStrictEqual(r.json.error_codes, [7000215]);
    r = await req('POST', `/${TENANT}/oauth2/v2.0/token`, { form: { grant_type: 'client_credentials', client_id: 'full', client_secret: 'full-secret', scope: 'https://vault.azure.net/.default' } });
    assert.strictEqual(r.json.error, 'invalid_scope');
    r = await req('POST', `/${TENANT}/oauth2/v2.0/token`, { form: { grant_type: 'client_credentials', client_id: 'nobody', client_secret: 'x', scope: 'https://127.0.0.1/.default' } });
    assert.strictEqual(r.json.error, 'unauthorized_client');
    r = await req('GET', `/${TENANT}/v2.0/.well-known/openid-configuration`);
    for (const k of ['authorization_endpoint', 'token_endpoint', 'issuer', 'jwks_uri']) assert.ok(r.json[k], k);
  });
  await check('client assertion (RS256 and PS256 with x5t#S256) checked against the certificate', async () => {
    const aud = `${ORIGIN}/${TENANT}/oauth2/v2.0/token`;
    const mk = (alg, key, claims = {}) => {
      const t = Math.floor(Date.now() / 1000);
      const h = b64u(JSON.stringify({ alg, typ: 'JWT', 'x5t#S256': b64u(crypto.createHash('sha256').update(clientCert.raw).digest()) }));
      const p = b64u(JSON.stringify({ aud, iss: 'certapp', sub: 'certapp', jti: crypto.randomUUID(), nbf: t, exp: t + 600, ...claims }));
      const opts = alg === 'PS256' ? { key, padding: crypto.constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 } : key;
      return `${h}.${p}.${b64u(crypto.sign('sha256', Buffer.from(`${h}.${p}`), opts))}`;
    };
    const post = (a) => req('POST', `/${TENANT}/oauth2/v2.0/token`, { form: { grant_type: 'client_credentials', client_id: 'certapp', scope: 'https://127.0.0.1/.default',
      client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer', client_assertion: a } });
    assert.strictEqual((await post(mk('RS256', clientKey))).status, 200);
    assert.strictEqual((await post(mk('PS256', clientKey))).status, 200);
    const other = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
    assert.strictEqual((await post(mk('RS256', other))).json.error_codes[0], 700027);
    assert.strictEqual((await post(mk('RS256', clientKey, { aud: 'https://elsewhere/token' }))).status, 401);
    assert.strictEqual((await post(mk('RS256', clientKey, { exp: 1000 }))).status, 401);
  });
  await check('managed identity: IMDS and IDENTITY_ENDPOINT shapes', async () => {
    let r = await req('GET', '/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2F127.0.0.1');
    assert.strictEqual(r.status, 400);
    assert.match(r.json.error_description, /metadata header/);
    r = await req('GET', '/metadata/identity/oauth2/token/?api-version=2018-02-01&resource=https%3A%2F%2F127.0.0.1', { headers: { Metadata: 'true' } });
    assert.strictEqual(r.status, 200, r.text);
    for (const k of ['access_token', 'expires_in', 'expires_on', 'not_before', 'resource', 'token_type', 'client_id']) assert.strictEqual(typeof r.json[k], 'string', k);
    const g = await req('GET', `/keys/seeded${api}`, { headers: { Authorization: `Bearer ${r.json.access_token}` } });
    assert.strictEqual(g.status, 200);
    r = await req('GET', '/msi/token?api-version=2019-08-01&resource=https%3A%2F%2F127.0.0.1', { headers: { 'X-IDENTITY-HEADER': 'hdr' } });
    assert.strictEqual(r.status, 200);
    assert.strictEqual(typeof r.json.expires_on, 'string');
    r = await req('GET', '/msi/token?api-version=2019-08-01&resource=https%3A%2F%2F127.0.0.1', { headers: { 'X-IDENTITY-HEADER': 'nope' } });
    assert.strictEqual(r.status, 401);
  });
  await check('short token lifetime and revocation -> 401 with a challenge', async () => {
    await req('POST', '/_emu/config', { body: { tokenLifetime: 1 } });
    const t = await token('full', 'full-secret');
    await req('POST', '/_emu/config', { body: { tokenLifetime: 3600 } });
    await new Promise((r) => setTimeout(r, 2100));
    let r = await req('GET', `/keys/seeded${api}`, { headers: { Authorization: `Bearer ${t}` } });
    assert.strictEqual(r.status, 401);
    assert.match(r.json.error.message, /expired/);
    assert.ok(r.headers['www-authenticate']);
    const t2 = await token('full', 'full-secret');
    await req('POST', '/_emu/revoke', { body: {} });
    r = await req('GET', `/keys/seeded${api}`, { headers: { Authorization: `Bearer ${t2}` } });
    assert.strictEqual(r.status, 401);
  });
  await check('faults and counters', async () => {
    await req('POST', '/_emu/reset', { body: {} });
    const T3 = await token('full', 'full-secret');
    const a3 = { Authorization: `Bearer ${T3}` };
    await req('POST', '/_emu/faults', { body: { faults: [
      { endpoint: 'get', status: 429, retryAfter: 2 }, { endpoint: 'get', status: 429 }, { endpoint: 'get', status: 500 },
      { endpoint: 'get', status: 503 }, { endpoint: 'get', action: 'nonjson' }, { endpoint: 'get', action: 'truncate' },
      { endpoint: 'get', action: 'drop' }, { endpoint: 'get', action: 'delay', delayMs: 300 }] } });
    let r = await req('GET', `/keys/seeded${api}`, { headers: a3 });
    assert.strictEqual(r.status, 429);
    assert.strictEqual(r.headers['retry-after'], '2');
    assert.strictEqual(r.json.error.code, 'Throttled');
    r = await req('GET', `/keys/seeded${api}`, { headers: a3 });
    assert.strictEqual(r.status, 429);
    assert.strictEqual(r.headers['retry-after'], undefined);
    assert.strictEqual((await req('GET', `/keys/seeded${api}`, { headers: a3 })).status, 500);
    assert.strictEqual((await req('GET', `/keys/seeded${api}`, { headers: a3 })).status, 503);
    r = await req('GET', `/keys/seeded${api}`, { headers: a3 });
    assert.strictEqual(r.status, 200);
    assert.strictEqual(r.json, null);
    r = await req('GET', `/keys/seeded${api}`, { headers: a3, raw: true });
    assert.ok(r.status === 0 || r.text.length < 50, 'truncated body');
    r = await req('GET', `/keys/seeded${api}`, { headers: a3, raw: true });
    assert.strictEqual(r.status, 0, 'dropped connection');
    const t0 = Date.now();
    r = await req('GET', `/keys/seeded${api}`, { headers: a3 });
    assert.strictEqual(r.status, 200);
    assert.ok(Date.now() - t0 >= 290);
    r = await req('GET', '/_emu/counters');
    assert.strictEqual(r.json.counters.get, 8);
    assert.strictEqual(r.json.counters.token, 1);
    assert.strictEqual(r.json.total, 9);
  });
  emu.kill('SIGTERM');
  console.log(`${passed} passed, ${failures} failed`);
  process.exit(failures ? 1 : 0);
}
main().catch((e) => {
  console.log(`FAIL ${e.stack}`);
  if (emu) emu.kill('SIGTERM');
  process.exit(1);
});
