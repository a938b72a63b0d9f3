#!/usr/bin/env node
// sdk-test.js — drives the emulator with the official Azure SDK (@azure/keyvault-keys and
// @azure/identity, found through NODE_PATH): if the SDK works against it, the emulator speaks
// the service's wire protocol (challenge, token endpoint, JSON shapes, paging, crypto).
//
//   NODE_PATH=.../node_modules node sdk-test.js WORKDIR     (exit 0 ok, 1 failed)
'use strict';

const assert = require('assert');
const { spawnSync } = require('child_process');
const crypto = require('crypto');
const fs = require('fs');
const https = require('https');
const path = require('path');
const { makeCerts, startEmulator } = require('./harness');

const WORK = path.resolve(process.argv[2] || '/tmp/kvp11-sdk-test');
const TENANT = '3f1c2d4e-5a6b-4c7d-8e9f-a0b1c2d3e4f5';

if (!process.env.KVP11_SDK_PHASE2) {
  // NODE_EXTRA_CA_CERTS is read at process start: make the CA, then run again with it.
  makeCerts(WORK);
  fs.writeFileSync(path.join(WORK, 'client-bundle.pem'),
    fs.readFileSync(path.join(WORK, 'client.key'), 'utf8') + fs.readFileSync(path.join(WORK, 'client.pem'), 'utf8'));
  fs.writeFileSync(path.join(WORK, 'seed.json'), JSON.stringify({
    tenant: TENANT,
    clients: [
      { clientId: 'sdk-app', secret: 'sdk-secret', permissions: ['all'] },
      { clientId: 'sdk-cert', certFile: path.join(WORK, 'client.pem'), permissions: ['get', 'list', 'sign'] },
    ],
  }));
  const r = spawnSync(process.execPath, [__filename, WORK], { stdio: 'inherit',
    env: { ...process.env, KVP11_SDK_PHASE2: '1', NODE_EXTRA_CA_CERTS: path.join(WORK, 'ca.pem'),
      AZURE_IDENTITY_DISABLE_MULTITENANTAUTH: '1' } });
  process.exit(r.status === null ? 1 : r.status);
}

const { ClientSecretCredential, ClientCertificateCredential } = require('@azure/identity');
const { KeyClient, CryptographyClient } = require('@azure/keyvault-keys');

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
function counters(origin) {
  return new Promise((resolve, reject) => {
    https.get(`${origin}/_emu/counters`, (res) => {
      let s = '';
      res.on('data', (d) => (s += d));
      res.on('end', () => resolve(JSON.parse(s)));
    }).on('error', reject);
  });
}

async function main() {
  const emu = await startEmulator(WORK);
  const url = emu.origin;
  const copts = { authorityHost: url, disableInstanceDiscovery: true };
  const cred = new ClientSecretCredential(TENANT, 'sdk-app', 'sdk-secret', copts);
  // the emulator's resource host equals the vault host (127.0.0.1), which the SDK's
  // "host ends with .resource" rule cannot accept: turn that one check off
  const kopts = { disableChallengeResourceVerification: true };
  const client = new KeyClient(url, cred, kopts);
  const client75 = new KeyClient(url, cred, { ...kopts, serviceVersion: '7.5' });
  const msg = Buffer.from('B2B message');
  let rsaKey, ecKey;

  await check('createRsaKey / createEcKey (api-version 2025-07-01)', async () => {
    rsaKey = await client.createRsaKey('sdk-rsa', { keySize: 2048, tags: { purpose: 'sdk' } });
    assert.strictEqual(rsaKey.keyType, 'RSA');
    assert.strictEqual(rsaKey.key.n.length, 256);
    assert.deepStrictEqual(rsaKey.properties.tags, { purpose: 'sdk' });
    ecKey = await client.createEcKey('sdk-ec', { curve: 'P-384', hsm: true });
    assert.strictEqual(ecKey.keyType, 'EC-HSM');
    assert.strictEqual(ecKey.key.crv, 'P-384');
  });
  await check('getKey latest and by version (api-version 7.5)', async () => {
    const k = await client75.getKey('sdk-rsa');
    assert.strictEqual(k.id, rsaKey.id);
    const v = await client75.getKey('sdk-rsa', { version: rsaKey.properties.version });
    assert.strictEqual(v.properties.version, rsaKey.properties.version);
    assert.ok(v.properties.enabled);
    assert.ok(v.properties.createdOn instanceof Date);
  });
  await check('importKey (JWK with private parts)', async () => {
    const kp = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
    const jwk = kp.privateKey.export({ format: 'jwk' });
    const toBuf = (s) => Buffer.from(s, 'base64url');
    const k = await client.importKey('sdk-imported', { kty: 'RSA', keyOps: ['sign', 'verify'], n: toBuf(jwk.n), e: toBuf(jwk.e),
      d: toBuf(jwk.d), p: toBuf(jwk.p), q: toBuf(jwk.q), dp: toBuf(jwk.dp), dq: toBuf(jwk.dq), qi: toBuf(jwk.qi) }, { hardwareProtected: true });
    assert.strictEqual(k.keyType, 'RSA-HSM');
    assert.ok(Buffer.from(k.key.n).equals(toBuf(jwk.n)));
    assert.deepStrictEqual(k.keyOperations, ['sign', 'verify']);
  });
  await check('listPropertiesOfKeys pages through more than 25 keys', async () => {
    for (let i = 0; i < 27; i++) await client.createEcKey(`sdk-page-${i}`, { curve: 'P-256' });
    const names = [];
    for await (const p of client.listPropertiesOfKeys()) names.push(p.name);
    assert.ok(names.length >= 30, `only ${names.length} keys`);
    assert.ok(names.includes('sdk-page-26') && names.includes('sdk-rsa'));
    const versions = [];
    for await (const p of client.listPropertiesOfKeyVersions('sdk-rsa')) versions.push(p.version);
    assert.deepStrictEqual(versions, [rsaKey.properties.version]);
  });
  await check('updateKeyProperties (disable, enable)', async () => {
    const p = await client.updateKeyProperties('sdk-rsa', rsaKey.properties.version, { enabled: false });
    assert.strictEqual(p.properties.enabled, false);
    const q = await client.updateKeyProperties('sdk-rsa', rsaKey.properties.version, { enabled: true });
    assert.strictEqual(q.properties.enabled, true);
  });
  await check('CryptographyClient RSA: sign/verify, signData, encrypt/decrypt, wrap/unwrap', async () => {
    const cc = new CryptographyClient(rsaKey, cred, kopts);
    const pub = crypto.createPublicKey({ key: { kty: 'RSA', n: Buffer.from(rsaKey.key.n).toString('base64url'), e: Buffer.from(rsaKey.key.e).toString('base64url') }, format: 'jwk' });
    for (const [alg, hash, pss] of [['RS256', 'sha256', 0], ['PS384', 'sha384', 1], ['RS512', 'sha512', 0]]) {
      const digest = crypto.createHash(hash).update(msg).digest();
      const s = await cc.sign(alg, digest);
      const key = pss ? { key: pub, padding: crypto.constants.RSA_PKCS1_PSS_PADDING, saltLength: digest.length } : pub;
      assert.ok(crypto.verify(hash, msg, key, Buffer.from(s.result)), `${alg} does not verify`);
      const v = await cc.verify(alg, digest, s.result);
      assert.strictEqual(v.result, true);
    }
    const sd = await cc.signData('RS256', msg);
    assert.ok((await cc.verifyData('RS256', msg, sd.result)).result);
    for (const algorithm of ['RSA-OAEP', 'RSA-OAEP-256', 'RSA1_5']) {
      const e = await cc.encrypt({ algorithm, plaintext: msg });
      const d = await cc.decrypt({ algorithm, ciphertext: e.result });
      assert.ok(Buffer.from(d.result).equals(msg), algorithm);
    }
    const w = await cc.wrapKey('RSA-OAEP-256', crypto.randomBytes(32));
    assert.strictEqual((await cc.unwrapKey('RSA-OAEP-256', w.result)).result.length, 32);
  });
  await check('CryptographyClient EC: ES384 r||s verified by Node', async () => {
    const cc = new CryptographyClient(ecKey.id, cred, kopts);
    const digest = crypto.createHash('sha384').update(msg).digest();
    const s = await cc.sign('ES384', digest);
    assert.strictEqual(s.result.length, 96);
    const pub = crypto.createPublicKey({ key: { kty: 'EC', crv: 'P-384', x: Buffer.from(ecKey.key.x).toString('base64url'),
      y: Buffer.from(ecKey.key.y).toString('base64url') }, format: 'jwk' });
    assert.ok(crypto.verify('sha384', msg, { key: pub, dsaEncoding: 'ieee-p1363' }, Buffer.from(s.result)));
    assert.ok((await cc.verify('ES384', digest, s.result)).result);
  });
  await check('ClientCertificateCredential (client assertion) and a 403 for a missing permission', async () => {
    const cc = new ClientCertificateCredential(TENANT, 'sdk-cert', { certificatePath: path.join(WORK, 'client-bundle.pem') }, copts);
    const kc = new KeyClient(url, cc, kopts);
    const k = await kc.getKey('sdk-ec');
    assert.strictEqual(k.id, ecKey.id);
    await assert.rejects(kc.createEcKey('nope', { curve: 'P-256' }), (e) => e.statusCode === 403 && /create permission/.test(e.message));
  });
  await check('beginDeleteKey polls /deletedkeys until done', async () => {
    const poller = await client.beginDeleteKey('sdk-page-0');
    const d = await poller.pollUntilDone();
    assert.strictEqual(d.name, 'sdk-page-0');
    assert.ok(d.properties.recoveryId.endsWith('/deletedkeys/sdk-page-0'));
    await assert.rejects(client.getKey('sdk-page-0'), (e) => e.statusCode === 404 && e.code === 'KeyNotFound');
  });
  await check('the SDK went through the challenge and the token endpoint', async () => {
    const c = await counters(url);
    assert.ok(c.counters.token >= 2, JSON.stringify(c.counters));
    assert.ok(c.counters.openid >= 1, JSON.stringify(c.counters));
  });
  emu.proc.kill('SIGTERM');
  console.log(`${passed} passed, ${failures} failed`);
  process.exit(failures ? 1 : 0);
}
main().catch((e) => {
  console.log(`FAIL ${e.stack}`);
  process.exit(1);
});
