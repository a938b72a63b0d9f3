#!/usr/bin/env node
// ia-emulator.js — a local Azure Resource Manager front for Logic Apps
// integration-account certificates (Microsoft.Logic/integrationAccounts/certificates)
// plus the Entra ID token endpoint that issues ARM tokens, for the tests of
// `kvp11 sync` / `publish` / `unpublish`. Node 20, built-in modules only.
//
//   node ia-emulator.js --cert server.pem --key server.key --seed seed.json [--port 0] [--quiet]
//
// Prints the port (one line, digits only) on stdout once ready. ARM endpoint and
// authority are both https://127.0.0.1:PORT; the token endpoint is
// /TENANT/oauth2/v2.0/token (client credentials, client secret).
//
// Seed (JSON):
//   { "tenant": "t1",
//     "clients": [ { "clientId": "sync", "secret": "s", "objectId": "oid-1",
//                    "actions": ["read", "write", "delete"] } ],
//     "accounts": [ { "subscription": "sub1", "resourceGroup": "rg1", "name": "ia1",
//                     "certificates": [ { "name": "partner1", "properties": {...} } ] } ] }
//
// Behaviour follows the protocol digest (shared/integration-account-protocol.md). Where the
// digest marks a behaviour as inferred [I], this emulator makes the documented guess:
//   - paths match case-insensitively; names are keyed lower-case and output in original casing;
//   - DELETE of a missing certificate answers 204 (ARM convention) [I];
//   - list order is stable (by lower-cased name) [I]; with $top, nextLink is the same URL plus
//     &$skiptoken=<opaque>; without $top every certificate comes in one page [I];
//   - 429 bodies use the code SubscriptionRequestsThrottled [I];
//   - PUT requires publicCertificate or key (Terraform's client rule; the service's own rule for
//     `properties: {}` is unknown) [I], and a publicCertificate must be base64 starting with 0x30 [I];
//   - a child request under a missing account answers 404 ResourceNotFound [I].
//
// Test-control API (no auth):
//   GET  /_emu/counters   {"counters":{"list":1,"listPage":2,"get":0,"put":0,"delete":0,"token":1}}
//   POST /_emu/reset      counters and faults cleared
//   POST /_emu/faults     {"faults":[{"endpoint":"list"|"listPage"|"get"|"put"|"delete"|"token"|"*",
//                          "action":"status"|"drop"|"delay", "status":429|500|503,
//                          "retryAfter":s, "delayMs":ms, "times":N (default 1, -1 forever)}]}
//   POST /_emu/policy     {"clientId":"...","actions":["read"]}
//   POST /_emu/cert       {"account":"ia1","name":"x","properties":{...}}   set directly
//   POST /_emu/uncert     {"account":"ia1","name":"x"}                      delete directly
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const https = require('https');

const API_VERSIONS = ['2015-08-01-preview', '2016-06-01', '2018-07-01-preview', '2019-05-01'];
const AUDIENCES = ['https://management.azure.com', 'https://management.core.windows.net'];
const NAME_RE = /^[A-Za-z0-9\-()._]{1,80}$/;

function parseArgs(argv) {
  const o = { port: 0, quiet: false };
  for (let i = 2; i < argv.length; i++) {
    const a = argv[i];
    const next = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      return argv[++i];
    };
    if (a === '--port') o.port = Number(next());
    else if (a === '--cert') o.cert = next();
    else if (a === '--key') o.key = next();
    else if (a === '--seed') o.seed = next();
    else if (a === '--quiet') o.quiet = true;
    else throw new Error(`unknown argument ${a}`);
  }
  if (!o.cert || !o.key || !o.seed) throw new Error('--cert, --key and --seed are required');
  return o;
}

const args = parseArgs(process.argv);
const seed = JSON.parse(fs.readFileSync(args.seed, 'utf8'));
const state = {
  tenant: seed.tenant || 't1',
  clients: new Map(),   // clientId -> {secret, objectId, actions:Set}
  tokens: new Map(),    // token -> {clientId, aud}
  accounts: new Map(),  // "sub/rg/name" lower -> {sub, rg, name, certs: Map(lower -> cert)}
  counters: {},
  faults: [],
};

function addClient(c) {
  state.clients.set(c.clientId, {
    secret: c.secret, objectId: c.objectId || crypto.randomUUID(), actions: new Set(c.actions || ['read']),
  });
}

function accountKey(sub, rg, name) {
  return `${sub}/${rg}/${name}`.toLowerCase();
}

function nowIso() {
  return new Date().toISOString().replace('Z', '0000Z');
}

// Stores a certificate as the service would after a PUT: read-only fields filled in.
function storeCert(acct, name, props, existing) {
  const p = JSON.parse(JSON.stringify(props));
  const t = nowIso();
  p.createdTime = existing ? existing.properties.createdTime : t;
  p.changedTime = t;
  if (p.key && p.key.keyVault) {
    const m = /\/vaults\/([^/]+)$/i.exec(p.key.keyVault.id || '');
    p.key.keyVault.name = m ? m[1] : undefined;
    p.key.keyVault.type = 'Microsoft.KeyVault/vaults';
  }
  const base = `/subscriptions/${acct.sub}/resourceGroups/${acct.rg}/providers/Microsoft.Logic/integrationAccounts/${acct.name}`;
  const cert = { id: `${base}/certificates/${name}`, name, type: 'Microsoft.Logic/integrationAccounts/certificates', properties: p };
  acct.certs.set(name.toLowerCase(), cert);
  return cert;
}

for (const c of seed.clients || []) addClient(c);
for (const a of seed.accounts || []) {
  const acct = { sub: a.subscription, rg: a.resourceGroup, name: a.name, certs: new Map() };
  state.accounts.set(accountKey(a.subscription, a.resourceGroup, a.name), acct);
  for (const c of a.certificates || []) storeCert(acct, c.name, c.properties, null);
}

function findAccount(name) {
  for (const a of state.accounts.values()) if (a.name.toLowerCase() === String(name).toLowerCase()) return a;
  return null;
}

// ---------------------------------------------------------------- HTTP helpers
function count(ep) {
  state.counters[ep] = (state.counters[ep] || 0) + 1;
}

function send(res, status, body, headers = {}) {
  const h = {
    'Cache-Control': 'no-cache', Pragma: 'no-cache', Expires: '-1',
    'x-ms-request-id': `westus:${crypto.randomUUID()}`,
    'x-ms-correlation-request-id': crypto.randomUUID(),
    'x-ms-routing-request-id': `WESTUS2:${Date.now()}:${crypto.randomUUID()}`,
    ...headers,
  };
  let data = '';
  if (body !== undefined && body !== null) {
    data = JSON.stringify(body, null, 2).replace(/\n/g, '\r\n');
    h['Content-Type'] = 'application/json; charset=utf-8';
  }
  h['Content-Length'] = Buffer.byteLength(data);
  res.writeHead(status, h);
  res.end(data);
}

function armError(res, status, code, message, headers) {
  send(res, status, { error: { code, message } }, headers);
}

function readBody(req) {
  return new Promise((resolve) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
  });
}

// Applies the first matching fault rule; returns true when the request was answered (or dropped).
async function applyFaults(ep, req, res) {
  const i = state.faults.findIndex((f) => f.endpoint === ep || f.endpoint === '*');
  if (i < 0) return false;
  const f = state.faults[i];
  if (f.times !== -1 && --f.times <= 0) state.faults.splice(i, 1);
  if (f.action === 'delay') {
    await new Promise((r) => setTimeout(r, f.delayMs || 1000));
    return false;
  }
  if (f.action === 'drop') {
    req.socket.destroy();
    return true;
  }
  const st = f.status || 500;
  const headers = f.retryAfter !== undefined ? { 'Retry-After': String(f.retryAfter) } : {};
  if (st === 429) armError(res, 429, 'SubscriptionRequestsThrottled', 'Number of requests for subscription exceeded the limit.', headers);
  else armError(res, st, st >= 500 ? 'InternalServerError' : 'BadRequest', `Injected fault ${st}.`, headers);
  return true;
}

// ---------------------------------------------------------------- token endpoint
async function handleToken(req, res, tenant) {
  count('token');
  const form = new URLSearchParams(await readBody(req));
  if (await applyFaults('token', req, res)) return;
  const aad = (status, error, desc) => send(res, status, { error, error_description: desc, error_codes: [0] });
  if (tenant !== state.tenant) return aad(400, 'invalid_request', `AADSTS90002: Tenant '${tenant}' not found.`);
  if (form.get('grant_type') !== 'client_credentials') return aad(400, 'unsupported_grant_type', 'AADSTS70003: grant_type not supported.');
  const c = state.clients.get(form.get('client_id') || '');
  if (!c) return aad(400, 'unauthorized_client', `AADSTS700016: Application with identifier '${form.get('client_id')}' was not found.`);
  if (form.get('client_secret') !== c.secret) return aad(401, 'invalid_client', 'AADSTS7000215: Invalid client secret provided.');
  const scope = form.get('scope') || '';
  const aud = scope.replace(/\/?\.default$/, '').replace(/\/$/, '');
  if (!AUDIENCES.includes(aud)) return aad(400, 'invalid_scope', `AADSTS500011: The resource principal named ${aud} was not found.`);
  const tok = crypto.randomBytes(24).toString('base64url');
  state.tokens.set(tok, { clientId: form.get('client_id'), aud });
  send(res, 200, { token_type: 'Bearer', expires_in: 3599, ext_expires_in: 3599, access_token: tok });
}

function challenge() {
  return { 'WWW-Authenticate': `Bearer authorization_uri="https://127.0.0.1:${server.address().port}/${state.tenant}", error="invalid_token", error_description="The authentication failed because of missing 'Authorization' header."` };
}

function authenticate(req, res) {
  const h = req.headers.authorization || '';
  const m = /^Bearer (\S+)$/.exec(h);
  if (!m) {
    armError(res, 401, 'AuthenticationFailed', "Authentication failed. The 'Authorization' header is missing.", challenge());
    return null;
  }
  const t = state.tokens.get(m[1]);
  if (!t) {
    armError(res, 401, 'InvalidAuthenticationToken', 'The access token is invalid.', challenge());
    return null;
  }
  return { ...t, client: state.clients.get(t.clientId) };
}

function authorize(res, who, action, scope) {
  if (who.client && who.client.actions.has(action)) return true;
  const op = `Microsoft.Logic/integrationAccounts/certificates/${action}`;
  armError(res, 403, 'AuthorizationFailed',
    `The client '${who.clientId}' with object id '${who.client ? who.client.objectId : '?'}' does not have authorization to perform action '${op}' over scope '${scope}' or the scope is invalid. If access was recently granted, please refresh your credentials.`);
  return false;
}

// ---------------------------------------------------------------- ARM routes
function listCerts(res, url, acct, base) {
  const all = [...acct.certs.keys()].sort().map((k) => acct.certs.get(k));
  const q = url.searchParams;
  let off = 0;
  const skip = q.get('$skiptoken');
  if (skip) {
    try {
      off = JSON.parse(Buffer.from(skip, 'base64url').toString()).o;
    } catch (e) {
      return armError(res, 400, 'InvalidSkipToken', 'The skip token is not valid.');
    }
  }
  const topStr = q.get('$top');
  const top = topStr === null ? all.length : Number(topStr);
  if (!Number.isInteger(top) || top < 1) return armError(res, 400, 'InvalidTopValue', `The value '${topStr}' of $top is not valid.`);
  const page = all.slice(off, off + top);
  const body = { value: page };
  if (off + top < all.length) {
    const next = new URL(url.toString());
    next.searchParams.set('$skiptoken', Buffer.from(JSON.stringify({ o: off + top })).toString('base64url'));
    body.nextLink = `https://127.0.0.1:${server.address().port}${base}/certificates?${next.searchParams.toString()}`;
  }
  send(res, 200, body, { 'x-ms-ratelimit-remaining-subscription-reads': '11999' });
}

function checkPut(body, name) {
  if (!NAME_RE.test(name)) return `The certificate name '${name}' is not valid.`;
  if (!body || typeof body !== 'object' || typeof body.properties !== 'object' || body.properties === null) return "The request content is not valid: 'properties' is required.";
  const p = body.properties;
  if (!p.publicCertificate && !p.key) return 'The request content is not valid: publicCertificate or key is required.';
  if (p.key && (!p.key.keyVault || !p.key.keyVault.id || !p.key.keyName)) return 'The request content is not valid: key.keyVault.id and key.keyName are required.';
  if (p.key && p.key.keyVersion !== undefined && !/^[0-9a-fA-F]{32}$/.test(p.key.keyVersion)) return 'The request content is not valid: key.keyVersion is not valid.';
  if (p.publicCertificate !== undefined) {
    if (typeof p.publicCertificate !== 'string' || !/^[A-Za-z0-9+/]+={0,2}$/.test(p.publicCertificate)) return 'The request content is not valid: publicCertificate is not base64.';
    const der = Buffer.from(p.publicCertificate, 'base64');
    if (der.length < 2 || der[0] !== 0x30) return 'The request content is not valid: publicCertificate is not a DER certificate.';
  }
  return null;
}

async function handleArm(req, res, url, m) {
  const [, sub, rg, iaName, certName] = m;
  const base = `/subscriptions/${sub}/resourceGroups/${rg}/providers/Microsoft.Logic/integrationAccounts/${iaName}`;
  const ep = req.method === 'GET' ? (certName ? 'get' : url.searchParams.get('$skiptoken') ? 'listPage' : 'list')
    : req.method === 'PUT' ? 'put' : req.method === 'DELETE' ? 'delete' : 'other';
  count(ep);
  const bodyText = req.method === 'PUT' ? await readBody(req) : '';
  if (await applyFaults(ep, req, res)) return;
  const v = url.searchParams.get('api-version');
  if (!v) return armError(res, 400, 'MissingApiVersionParameter', 'The api-version query parameter (?api-version=) is required for all requests.');
  if (!API_VERSIONS.includes(v)) return armError(res, 400, 'NoRegisteredProviderFound', `No registered resource provider found for location 'westus' and API version '${v}' for type 'integrationAccounts'. The supported api-versions are '${API_VERSIONS.join(', ')}'.`);
  const who = authenticate(req, res);
  if (!who) return;
  if (!AUDIENCES.includes(who.aud)) return armError(res, 401, 'InvalidAuthenticationToken', 'The access token has an invalid audience.', challenge());
  const action = req.method === 'GET' ? 'read' : req.method === 'PUT' ? 'write' : 'delete';
  if (!authorize(res, who, action, certName ? `${base}/certificates/${certName}` : base)) return;
  const acct = state.accounts.get(accountKey(sub, rg, iaName));
  if (!acct) return armError(res, 404, 'ResourceNotFound', `The Resource 'Microsoft.Logic/integrationAccounts/${iaName}' under resource group '${rg}' was not found.`, { 'x-ms-failure-cause': 'gateway' });
  if (req.method === 'GET' && !certName) return listCerts(res, url, acct, base);
  const key = certName.toLowerCase();
  const have = acct.certs.get(key);
  if (req.method === 'GET') {
    if (!have) return armError(res, 404, 'CertificateNotFound', `The certificate '${certName}' could not be found in integration account '${acct.name}'.`);
    return send(res, 200, have);
  }
  if (req.method === 'PUT') {
    let body;
    try {
      body = JSON.parse(bodyText);
    } catch (e) {
      return armError(res, 400, 'InvalidRequestContent', 'The request content was invalid and could not be deserialized.');
    }
    const bad = checkPut(body, certName);
    if (bad) return armError(res, 400, 'InvalidRequestContent', bad);
    const cert = storeCert(acct, have ? have.name : certName, body.properties, have);
    return send(res, have ? 200 : 201, cert, { 'x-ms-ratelimit-remaining-subscription-writes': '1199' });
  }
  if (req.method === 'DELETE') {
    if (!have) return send(res, 204, null);
    acct.certs.delete(key);
    return send(res, 200, null, { 'x-ms-ratelimit-remaining-subscription-deletes': '14999' });
  }
  return armError(res, 405, 'MethodNotAllowed', 'The method is not allowed.');
}

// ---------------------------------------------------------------- control API
async function handleControl(req, res, url) {
  const body = req.method === 'POST' ? await readBody(req) : '';
  const j = body ? JSON.parse(body) : {};
  switch (`${req.method} ${url.pathname}`) {
    case 'GET /_emu/counters':
      return send(res, 200, { counters: state.counters });
    case 'POST /_emu/reset':
      state.counters = {};
      state.faults = [];
      return send(res, 200, {});
    case 'POST /_emu/faults':
      for (const f of j.faults || []) state.faults.push({ times: 1, ...f });
      return send(res, 200, {});
    case 'POST /_emu/policy': {
      const c = state.clients.get(j.clientId);
      if (!c) return send(res, 404, { error: 'no such client' });
      c.actions = new Set(j.actions || []);
      return send(res, 200, {});
    }
    case 'POST /_emu/cert': {
      const acct = findAccount(j.account);
      if (!acct) return send(res, 404, { error: 'no such account' });
      return send(res, 200, storeCert(acct, j.name, j.properties, acct.certs.get(j.name.toLowerCase())));
    }
    case 'POST /_emu/uncert': {
      const acct = findAccount(j.account);
      if (!acct) return send(res, 404, { error: 'no such account' });
      return send(res, 200, { deleted: acct.certs.delete(j.name.toLowerCase()) });
    }
    case 'GET /_emu/certs': {
      const acct = findAccount(url.searchParams.get('account'));
      if (!acct) return send(res, 404, { error: 'no such account' });
      return send(res, 200, { value: [...acct.certs.values()] });
    }
    default:
      return send(res, 404, { error: 'unknown control request' });
  }
}

const ARM_RE = /^\/subscriptions\/([^/]+)\/resourcegroups\/([^/]+)\/providers\/microsoft\.logic\/integrationaccounts\/([^/]+)\/certificates(?:\/([^/]+))?\/?$/i;

const server = https.createServer({ cert: fs.readFileSync(args.cert), key: fs.readFileSync(args.key) }, (req, res) => {
  const url = new URL(req.url, 'https://127.0.0.1');
  const fail = (e) => {
    if (!args.quiet) console.error(e);
    if (!res.headersSent) armError(res, 500, 'InternalServerError', 'emulator error');
  };
  try {
    if (url.pathname.startsWith('/_emu/')) return void handleControl(req, res, url).catch(fail);
    const tm = /^\/([^/]+)\/oauth2\/v2\.0\/token\/?$/.exec(url.pathname);
    if (tm && req.method === 'POST') return void handleToken(req, res, tm[1]).catch(fail);
    const m = ARM_RE.exec(url.pathname);
    if (m) return void handleArm(req, res, url, m).catch(fail);
    armError(res, 404, 'NotFound', `No route for ${req.method} ${url.pathname}.`);
  } catch (e) {
    fail(e);
  }
});

server.listen(args.port, '127.0.0.1', () => {
  process.stdout.write(`${server.address().port}\n`);
});
