/*
 * Access tokens for Key Vault: client secret and client certificate (JWT
 * client assertion) against the Entra ID v2 token endpoint, managed identity
 * (IMDS and the App Service IDENTITY_ENDPOINT shape), workload identity
 * (AZURE_FEDERATED_TOKEN_FILE).
 *
 * Tokens are cached per resource. Ahead of expiry one thread refreshes while
 * the others keep using the still valid token; without a valid token the
 * others wait for that one refresh (on a condition variable: the cache mutex
 * is never held across the token request).
 *
 * Secrets (client secret, assertion key, federated token, access tokens) are
 * never logged and are wiped after use.
 */
/* secure_getenv: environment overrides are ignored in setuid/setgid processes */
#define _GNU_SOURCE
#include "backend/keyvault/kv.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

#include "core/log.h"
#include "core/status.h"
#include "core/util.h"

typedef struct kv_token {
  struct kv_token *next;
  char *resource;
  char *token;        /* secret */
  int64_t expires_ms; /* monotonic */
  int64_t refresh_ms; /* monotonic: refresh from here on */
  int refreshing;
} kv_token;

struct kv_auth {
  const kvp_vault_conf *conf;
  kv_http *http;
  pthread_mutex_t lock;
  pthread_cond_t cond;
  kv_token *tokens;
  unsigned long requests;
  /* the token endpoint refused the credential: not asked again before
   * refused_until unless the credential's stamp changes */
  int64_t refused_until;
  uint64_t refused_stamp;
};

#define KV_REFUSED_MS 30000

static uint64_t kv_fnv(uint64_t h, const void *p, size_t n)
{
  const unsigned char *b = p;
  size_t i;
  for (i = 0; i < n; i++)
    h = (h ^ b[i]) * 1099511628211ULL;
  return h;
}

static uint64_t kv_stamp_file(uint64_t h, const char *path)
{
  struct stat st;
  if (path == NULL || stat(path, &st) != 0)
    return kv_fnv(h, "-", 1);
  h = kv_fnv(h, &st.st_ino, sizeof(st.st_ino));
  h = kv_fnv(h, &st.st_size, sizeof(st.st_size));
  h = kv_fnv(h, &st.st_mtim.tv_sec, sizeof(st.st_mtim.tv_sec));
  return kv_fnv(h, &st.st_mtim.tv_nsec, sizeof(st.st_mtim.tv_nsec));
}

static uint64_t kv_stamp_env(uint64_t h, const char *name)
{
  const char *v = name != NULL ? secure_getenv(name) : NULL;
  return v != NULL ? kv_fnv(h, v, strlen(v)) : kv_fnv(h, "-", 1);
}

/* What identifies the credential in use: its files (inode, size, mtime) and variables. A
 * changed secret file, certificate, federated token or identity header changes it. */
static uint64_t kv_cred_stamp(const kvp_vault_conf *c)
{
  uint64_t h = 14695981039346656037ULL;
  switch (c->auth) {
  case KVP_AUTH_CLIENT_SECRET:
    h = kv_stamp_file(h, c->client_secret_file);
    return kv_stamp_env(h, c->client_secret_env);
  case KVP_AUTH_CLIENT_CERTIFICATE:
    h = kv_stamp_file(h, c->client_cert_file);
    return kv_stamp_file(h, c->client_key_file);
  case KVP_AUTH_WORKLOAD_IDENTITY:
    return kv_stamp_file(h, secure_getenv("AZURE_FEDERATED_TOKEN_FILE"));
  case KVP_AUTH_MANAGED_IDENTITY:
    return kv_stamp_env(h, "IDENTITY_HEADER");
  }
  return h;
}

kv_auth *kv_auth_new(const kvp_vault_conf *conf, kv_http *http)
{
  kv_auth *a = calloc(1, sizeof(*a));
  pthread_condattr_t ca;
  if (a == NULL)
    return NULL;
  a->conf = conf;
  a->http = http;
  pthread_mutex_init(&a->lock, NULL);
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&a->cond, &ca);
  pthread_condattr_destroy(&ca);
  return a;
}

void kv_auth_free(kv_auth *a, int forked)
{
  kv_token *t, *n;
  if (a == NULL)
    return;
  for (t = a->tokens; t != NULL; t = n) {
    n = t->next;
    kv_free_wipe(t->token);
    free(t->resource);
    free(t);
  }
  if (!forked) {
    pthread_mutex_destroy(&a->lock);
    pthread_cond_destroy(&a->cond);
  }
  free(a);
}

unsigned long kv_auth_token_requests(kv_auth *a)
{
  unsigned long n;
  pthread_mutex_lock(&a->lock);
  n = a->requests;
  pthread_mutex_unlock(&a->lock);
  return n;
}

/* ---- helpers ---- */

static char *kv_authority(const kvp_vault_conf *c)
{
  const char *h = c->authority_host;
  char *r;
  size_t n;
  if (h == NULL || h[0] == '\0')
    h = secure_getenv("AZURE_AUTHORITY_HOST");
  if (h == NULL || h[0] == '\0')
    h = "https://login.microsoftonline.com";
  r = strdup(h);
  if (r == NULL)
    return NULL;
  n = strlen(r);
  while (n > 0 && r[n - 1] == '/')
    r[--n] = '\0';
  return r;
}

static const char *kv_conf_or_env(const char *v, const char *env)
{
  if (v != NULL && v[0] != '\0')
    return v;
  v = secure_getenv(env);
  return v != NULL && v[0] != '\0' ? v : NULL;
}

/* Append "&name=escaped(value)" to a growing form body. */
static int kv_form_add(char **body, const char *name, const char *value)
{
  char *e = kv_escape(value), *nb;
  size_t ol = *body != NULL ? strlen(*body) : 0, nl;
  if (e == NULL)
    return -1;
  nl = ol + strlen(name) + strlen(e) + 3;
  nb = malloc(nl);
  if (nb == NULL) {
    kv_free_wipe(e);
    return -1;
  }
  snprintf(nb, nl, "%s%s%s=%s", ol ? *body : "", ol ? "&" : "", name, e);
  kv_free_wipe(e);
  kv_free_wipe(*body);
  *body = nb;
  return 0;
}

static char *kv_read_small_file(const char *path, size_t max)
{
  FILE *f = fopen(path, "rb");
  char *buf;
  size_t n;
  if (f == NULL)
    return NULL;
  buf = malloc(max + 1);
  if (buf == NULL) {
    fclose(f);
    return NULL;
  }
  n = fread(buf, 1, max, f);
  fclose(f);
  buf[n] = '\0';
  while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' '))
    buf[--n] = '\0';
  return buf;
}

static void kv_uuid(char *out, size_t outlen)
{
  unsigned char b[16];
  if (RAND_bytes(b, sizeof(b)) != 1)
    memset(b, 0x33, sizeof(b));
  b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
  b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
  snprintf(out, outlen, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
           b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
           b[14], b[15]);
}

static char *kv_b64url_json(json_t *j)
{
  char *s = json_dumps(j, JSON_COMPACT);
  char *r;
  if (s == NULL)
    return NULL;
  r = kv_b64url_encode((unsigned char *)s, strlen(s));
  free(s);
  return r;
}

/*
 * The client assertion: a JWT (RS256) with x5t and x5t#S256 of the client
 * certificate, aud = the token endpoint, signed with the client key.
 */
static CK_RV kv_client_assertion(const kvp_vault_conf *c, const char *token_url, char **out)
{
  CK_RV rv = CKR_DEVICE_ERROR;
  BIO *bio = NULL;
  X509 *cert = NULL;
  EVP_PKEY *pkey = NULL;
  EVP_MD_CTX *md = NULL;
  unsigned char *der = NULL, *sig = NULL;
  unsigned char h1[20], h256[32];
  int dlen;
  char *keypem = NULL, *t1 = NULL, *t256 = NULL, *hb = NULL, *pb = NULL, *sb = NULL, *input = NULL;
  size_t keylen = 0, siglen = 0, n;
  json_t *hdr = NULL, *pl = NULL;
  char jti[40], err[KVP_ERRLEN];
  int64_t now = kv_wall_s();
  const char *key_file = c->client_key_file != NULL ? c->client_key_file : c->client_cert_file;

  *out = NULL;
  if (c->client_cert_file == NULL || c->client_id == NULL) {
    return kvp_fail(CKR_GENERAL_ERROR,
                    "vault %s: client-certificate auth needs client_cert_file and client_id",
                    c->name);
  }
  bio = BIO_new_file(c->client_cert_file, "r");
  cert = bio != NULL ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;
  if (cert == NULL) {
    KVP_ERROR("vault %s: cannot read the client certificate %s", c->name, c->client_cert_file);
    goto out;
  }
  dlen = i2d_X509(cert, &der);
  if (dlen <= 0)
    goto out;
  SHA1(der, (size_t)dlen, h1);
  SHA256(der, (size_t)dlen, h256);
  if (kvp_secret_read_file(key_file, &keypem, &keylen, err, sizeof(err)) != KVP_OK) {
    KVP_ERROR("vault %s: client key: %s", c->name, err);
    goto out;
  }
  BIO_free(bio);
  bio = BIO_new_mem_buf(keypem, (int)keylen);
  pkey = bio != NULL ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
  if (pkey == NULL || EVP_PKEY_get_base_id(pkey) != EVP_PKEY_RSA) {
    KVP_ERROR("vault %s: %s does not hold an RSA private key in PEM", c->name, key_file);
    goto out;
  }
  if (X509_check_private_key(cert, pkey) != 1) {
    KVP_ERROR("vault %s: the client key does not match the client certificate", c->name);
    goto out;
  }
  t1 = kv_b64url_encode(h1, sizeof(h1));
  t256 = kv_b64url_encode(h256, sizeof(h256));
  kv_uuid(jti, sizeof(jti));
  hdr = json_pack("{s:s, s:s, s:s, s:s}", "alg", "RS256", "typ", "JWT", "x5t", t1 ? t1 : "",
                  "x5t#S256", t256 ? t256 : "");
  pl = json_pack("{s:s, s:s, s:s, s:s, s:I, s:I, s:I}", "aud", token_url, "iss", c->client_id,
                 "sub", c->client_id, "jti", jti, "nbf", (json_int_t)now, "iat", (json_int_t)now,
                 "exp", (json_int_t)(now + 600));
  if (hdr == NULL || pl == NULL)
    goto out;
  hb = kv_b64url_json(hdr);
  pb = kv_b64url_json(pl);
  if (hb == NULL || pb == NULL)
    goto out;
  n = strlen(hb) + strlen(pb) + 2;
  input = malloc(n);
  if (input == NULL)
    goto out;
  snprintf(input, n, "%s.%s", hb, pb);
  md = EVP_MD_CTX_new();
  if (md == NULL || EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, pkey) != 1 ||
      EVP_DigestSign(md, NULL, &siglen, (unsigned char *)input, strlen(input)) != 1 ||
      (sig = malloc(siglen)) == NULL ||
      EVP_DigestSign(md, sig, &siglen, (unsigned char *)input, strlen(input)) != 1) {
    KVP_ERROR("vault %s: signing the client assertion failed", c->name);
    goto out;
  }
  sb = kv_b64url_encode(sig, siglen);
  if (sb == NULL)
    goto out;
  n = strlen(input) + strlen(sb) + 2;
  *out = malloc(n);
  if (*out == NULL)
    goto out;
  snprintf(*out, n, "%s.%s", input, sb);
  rv = CKR_OK;
out:
  if (keypem != NULL)
    kvp_free_secret(keypem);
  EVP_PKEY_free(pkey); /* private components are cleared by OpenSSL */
  EVP_MD_CTX_free(md);
  BIO_free(bio);
  X509_free(cert);
  OPENSSL_free(der);
  json_decref(hdr);
  json_decref(pl);
  free(t1);
  free(t256);
  free(hb);
  free(pb);
  free(sb);
  free(sig);
  free(input);
  return rv;
}

static CK_RV kv_token_failed(const kvp_vault_conf *c, const char *what, const kv_resp *r)
{
  kv_error_info ei;
  if (r->status == 0)
    return kvp_fail(CKR_DEVICE_ERROR, "vault %s: %s failed: %s", c->name, what, r->curl_err);
  kv_error_parse(r, &ei);
  return kvp_fail(CKR_DEVICE_ERROR, "vault %s: %s failed: HTTP %ld %s: %s (x-ms-request-id %s)",
                  c->name, what, r->status, ei.code, ei.message, r->request_id);
}

/* One token request being built: what goes out and the buffers it owns. */
typedef struct kv_treq {
  kv_req req;
  char what[200];
  char *url;     /* token endpoint or identity endpoint */
  char *body;    /* form (secret) */
  char *hdr;     /* identity header (secret) */
} kv_treq;

static void kv_treq_clear(kv_treq *t)
{
  kv_free_wipe(t->body);
  kv_free_wipe(t->hdr);
  free(t->url);
  memset(t, 0, sizeof(*t));
}

/* Managed identity: App Service / Functions (IDENTITY_ENDPOINT + IDENTITY_HEADER) or IMDS. */
static CK_RV kv_treq_managed_identity(const kvp_vault_conf *c, const char *resource, kv_treq *t)
{
  const char *ie = secure_getenv("IDENTITY_ENDPOINT"), *ih = secure_getenv("IDENTITY_HEADER");
  char *er = kv_escape(resource), *ec = c->client_id != NULL ? kv_escape(c->client_id) : NULL;
  CK_RV rv = CKR_HOST_MEMORY;
  size_t n;

  if (er == NULL || (c->client_id != NULL && ec == NULL))
    goto out;
  /* the identity endpoint is local to the host: never through a proxy */
  t->req.no_proxy = 1;
  t->req.method = "GET";
  if (ie != NULL && ie[0] != '\0' && ih != NULL && ih[0] != '\0') {
    n = strlen(ie) + strlen(er) + (ec ? strlen(ec) : 0) + 80;
    t->url = malloc(n);
    t->hdr = malloc(strlen(ih) + 24);
    if (t->url == NULL || t->hdr == NULL)
      goto out;
    snprintf(t->url, n, "%s%sapi-version=2019-08-01&resource=%s%s%s", ie,
             strchr(ie, '?') ? "&" : "?", er, ec ? "&client_id=" : "", ec ? ec : "");
    snprintf(t->hdr, strlen(ih) + 24, "X-IDENTITY-HEADER: %s", ih);
    snprintf(t->what, sizeof(t->what), "managed identity token request (IDENTITY_ENDPOINT)");
  } else {
    const char *imds = c->imds_endpoint != NULL ? c->imds_endpoint : "http://169.254.169.254";
    size_t il = strlen(imds);
    while (il > 0 && imds[il - 1] == '/')
      il--;
    n = il + strlen(er) + (ec ? strlen(ec) : 0) + 120;
    t->url = malloc(n);
    t->hdr = strdup("Metadata: true");
    if (t->url == NULL || t->hdr == NULL)
      goto out;
    snprintf(t->url, n,
             "%.*s/metadata/identity/oauth2/token?api-version=2018-02-01&resource=%s%s%s",
             (int)il, imds, er, ec ? "&client_id=" : "", ec ? ec : "");
    t->req.retry_404_410 = 1;
    snprintf(t->what, sizeof(t->what), "managed identity token request (IMDS)");
  }
  t->req.url = t->url;
  t->req.extra_header = t->hdr;
  rv = CKR_OK;
out:
  free(er);
  free(ec);
  return rv;
}

/* client_secret=... (from the file, re-read each time, or the environment variable) */
static CK_RV kv_cred_client_secret(const kvp_vault_conf *c, char **body)
{
  char *secret = NULL, err[KVP_ERRLEN];
  size_t slen = 0;
  const char *env = c->client_secret_env != NULL ? secure_getenv(c->client_secret_env) : NULL;
  CK_RV rv = CKR_HOST_MEMORY;

  if (c->client_secret_file != NULL) {
    if (kvp_secret_read_file(c->client_secret_file, &secret, &slen, err, sizeof(err)) != KVP_OK)
      return kvp_fail(CKR_GENERAL_ERROR, "vault %s: client secret: %s", c->name, err);
  } else if (env != NULL) {
    secret = strdup(env);
  } else {
    return kvp_fail(CKR_GENERAL_ERROR,
                    "vault %s: no client secret (client_secret_file or client_secret_env %s unset)",
                    c->name, c->client_secret_env != NULL ? c->client_secret_env : "");
  }
  if (secret != NULL && kv_form_add(body, "client_secret", secret) == 0)
    rv = CKR_OK;
  kv_free_wipe(secret);
  return rv;
}

static CK_RV kv_cred_assertion(char **body, const char *assertion)
{
  if (kv_form_add(body, "client_assertion_type",
                  "urn:ietf:params:oauth:client-assertion-type:jwt-bearer") != 0 ||
      kv_form_add(body, "client_assertion", assertion) != 0)
    return CKR_HOST_MEMORY;
  return CKR_OK;
}

/* client_assertion = a JWT signed with the client certificate's key */
static CK_RV kv_cred_client_certificate(const kvp_vault_conf *c, const char *token_url,
                                        char **body)
{
  char *assertion = NULL;
  CK_RV rv = kv_client_assertion(c, token_url, &assertion);
  if (rv == CKR_OK)
    rv = kv_cred_assertion(body, assertion);
  kv_free_wipe(assertion);
  return rv;
}

/* client_assertion = the federated token (AZURE_FEDERATED_TOKEN_FILE, re-read: it rotates) */
static CK_RV kv_cred_workload_identity(const kvp_vault_conf *c, char **body)
{
  const char *f = secure_getenv("AZURE_FEDERATED_TOKEN_FILE");
  char *assertion;
  CK_RV rv;
  if (f == NULL || f[0] == '\0')
    return kvp_fail(CKR_GENERAL_ERROR,
                    "vault %s: workload identity needs AZURE_FEDERATED_TOKEN_FILE", c->name);
  assertion = kv_read_small_file(f, 65536);
  if (assertion == NULL || assertion[0] == '\0') {
    kv_free_wipe(assertion);
    return kvp_fail(CKR_GENERAL_ERROR, "vault %s: cannot read the federated token file %s",
                    c->name, f);
  }
  rv = kv_cred_assertion(body, assertion);
  kv_free_wipe(assertion);
  return rv;
}

/* Client secret, client certificate, workload identity: the Entra ID v2 token endpoint. */
static CK_RV kv_treq_entra(const kvp_vault_conf *c, const char *resource, kv_treq *t)
{
  const char *tenant = kv_conf_or_env(c->tenant_id, "AZURE_TENANT_ID");
  const char *cid = kv_conf_or_env(c->client_id, "AZURE_CLIENT_ID");
  char *authority, *scope;
  size_t n;
  CK_RV rv = CKR_HOST_MEMORY;

  if (tenant == NULL || cid == NULL)
    return kvp_fail(CKR_GENERAL_ERROR,
                    "vault %s: tenant_id and client_id are required for this auth method",
                    c->name);
  authority = kv_authority(c);
  if (authority == NULL)
    return CKR_HOST_MEMORY;
  if (strncasecmp(authority, "https://", 8) != 0) {
    free(authority);
    return kvp_fail(CKR_GENERAL_ERROR,
                    "vault %s: authority_host (or AZURE_AUTHORITY_HOST) must be an https URL",
                    c->name);
  }
  n = strlen(authority) + strlen(tenant) + 32;
  t->url = malloc(n);
  scope = malloc(strlen(resource) + 16);
  if (t->url == NULL || scope == NULL)
    goto out;
  snprintf(t->url, n, "%s/%s/oauth2/v2.0/token", authority, tenant);
  snprintf(scope, strlen(resource) + 16, "%s/.default", resource);
  if (kv_form_add(&t->body, "grant_type", "client_credentials") != 0 ||
      kv_form_add(&t->body, "client_id", cid) != 0 || kv_form_add(&t->body, "scope", scope) != 0)
    goto out;
  switch (c->auth) {
  case KVP_AUTH_CLIENT_SECRET: rv = kv_cred_client_secret(c, &t->body); break;
  case KVP_AUTH_CLIENT_CERTIFICATE: rv = kv_cred_client_certificate(c, t->url, &t->body); break;
  case KVP_AUTH_WORKLOAD_IDENTITY: rv = kv_cred_workload_identity(c, &t->body); break;
  default: rv = CKR_GENERAL_ERROR; break;
  }
  if (rv != CKR_OK)
    goto out;
  t->req.method = "POST";
  t->req.url = t->url;
  t->req.body = t->body;
  t->req.body_len = strlen(t->body);
  t->req.content_type = "application/x-www-form-urlencoded";
  snprintf(t->what, sizeof(t->what), "token request to %s", t->url);
out:
  free(authority);
  free(scope);
  return rv;
}

/*
 * Did the token endpoint refuse the credential itself (as opposed to being
 * down)? Such a refusal is not retried for KV_REFUSED_MS unless the
 * credential changes (see kv_auth_header).
 */
static int kv_credential_refused(const kvp_vault_conf *c, const kv_resp *r)
{
  kv_error_info ei;
  if (r->status == 0 || r->status == 408 || r->status == 429 || r->status >= 500)
    return 0;
  kv_error_parse(r, &ei);
  if (strcasecmp(ei.code, "invalid_client") == 0 || strcasecmp(ei.code, "unauthorized_client") == 0)
    return 1;
  /* a managed identity endpoint refusing the identity header */
  return c->auth == KVP_AUTH_MANAGED_IDENTITY && (r->status == 401 || r->status == 403);
}

/* One token request (with transient retries). *refused: the credential was refused. */
static CK_RV kv_fetch_token(kv_auth *a, const char *resource, const kv_retry *rt_in,
                            kv_token_info *ti, int *refused)
{
  const kvp_vault_conf *c = a->conf;
  kv_treq t;
  kv_resp resp;
  kv_retry rt = *rt_in;
  char err[KVP_ERRLEN];
  CK_RV rv;

  memset(&t, 0, sizeof(t));
  memset(&resp, 0, sizeof(resp));
  kv_resp_clear(&resp, 0);
  memset(ti, 0, sizeof(*ti));
  *refused = 0;
  rv = c->auth == KVP_AUTH_MANAGED_IDENTITY ? kv_treq_managed_identity(c, resource, &t)
                                            : kv_treq_entra(c, resource, &t);
  if (rv != CKR_OK)
    goto out;
  rt.what = t.what;
  pthread_mutex_lock(&a->lock);
  a->requests++;
  pthread_mutex_unlock(&a->lock);
  KVP_DEBUG("vault %s: %s for %s", c->name, t.what, resource);
  kv_http_do_retry(a->http, &t.req, &rt, 1, &resp);
  if (resp.status != 200 || resp.json == NULL || resp.capped) {
    *refused = kv_credential_refused(c, &resp);
    rv = kv_token_failed(c, t.what, &resp);
    goto out;
  }
  if (kv_token_parse(resp.json, kv_wall_s(), ti, err, sizeof(err)) != 0) {
    rv = kvp_fail(CKR_DEVICE_ERROR, "vault %s: %s: %s (x-ms-request-id %s)", c->name, t.what, err,
                  resp.request_id);
    goto out;
  }
  {
    /* wipe the token inside the parsed JSON before it is freed */
    json_t *at = json_object_get(resp.json, "access_token");
    if (json_is_string(at))
      kvp_wipe((char *)json_string_value(at), json_string_length(at));
  }
  rv = CKR_OK;
out:
  kv_resp_clear(&resp, 1);
  kv_treq_clear(&t);
  return rv;
}

static char *kv_bearer(const char *token)
{
  size_t n = strlen(token) + 24;
  char *h = malloc(n);
  if (h != NULL)
    snprintf(h, n, "Authorization: Bearer %s", token);
  return h;
}

static int kv_header_is(const char *hdr, const char *token)
{
  return hdr != NULL && token != NULL && strncmp(hdr, "Authorization: Bearer ", 22) == 0 &&
         strcmp(hdr + 22, token) == 0;
}

CK_RV kv_auth_header(kv_auth *a, const char *resource, const char *stale, const kv_retry *rt,
                     char **hdr)
{
  kv_token *t;
  kv_token_info ti;
  CK_RV rv;
  int64_t now;
  uint64_t stamp = 0; /* the credential's files, read only when a token is fetched or refused */
  int refused = 0, have_stamp = 0;

  *hdr = NULL;
  pthread_mutex_lock(&a->lock);
  for (t = a->tokens; t != NULL; t = t->next)
    if (strcmp(t->resource, resource) == 0)
      break;
  if (t == NULL) {
    t = calloc(1, sizeof(*t));
    if (t == NULL || (t->resource = strdup(resource)) == NULL) {
      free(t);
      pthread_mutex_unlock(&a->lock);
      return CKR_HOST_MEMORY;
    }
    t->next = a->tokens;
    a->tokens = t;
  }
  if (stale != NULL && kv_header_is(stale, t->token)) {
    /* the service refused this token: nobody may use it any more */
    kv_free_wipe(t->token);
    t->token = NULL;
  }
  for (;;) {
    now = kv_now_ms();
    if (t->token != NULL && now < t->refresh_ms)
      goto use;
    if (t->token != NULL && now < t->expires_ms && t->refreshing)
      goto use; /* another thread refreshes; this one is still valid */
    if (!t->refreshing)
      break;
    {
      struct timespec ts;
      int64_t until = rt->deadline_ms;
      if (now >= until) {
        pthread_mutex_unlock(&a->lock);
        return kvp_fail(CKR_DEVICE_ERROR, "vault %s: timed out waiting for an access token",
                        a->conf->name);
      }
      clock_gettime(CLOCK_MONOTONIC, &ts);
      ts.tv_sec += (time_t)((until - now) / 1000);
      ts.tv_nsec += (long)((until - now) % 1000) * 1000000L;
      if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
      }
      pthread_cond_timedwait(&a->cond, &a->lock, &ts);
    }
  }
  if (a->refused_until > now && !(t->token != NULL && now < t->expires_ms)) {
    stamp = kv_cred_stamp(a->conf);
    have_stamp = 1;
  }
  if (have_stamp && a->refused_stamp == stamp) {
    int64_t left = (a->refused_until - now + 999) / 1000;
    a->requests++; /* an attempt, answered from the last refusal */
    pthread_mutex_unlock(&a->lock);
    return kvp_fail(CKR_DEVICE_ERROR,
                    "vault %s: the token endpoint refused this credential; not asked again for "
                    "%lld s unless the credential (secret file, certificate, federated token) "
                    "changes",
                    a->conf->name, (long long)left);
  }
  t->refreshing = 1;
  pthread_mutex_unlock(&a->lock);

  if (!have_stamp)
    stamp = kv_cred_stamp(a->conf); /* before the fetch reads the credential */
  rv = kv_fetch_token(a, resource, rt, &ti, &refused);

  pthread_mutex_lock(&a->lock);
  t->refreshing = 0;
  if (refused) {
    a->refused_until = kv_now_ms() + KV_REFUSED_MS;
    a->refused_stamp = stamp;
  } else if (rv == CKR_OK) {
    a->refused_until = 0;
  }
  pthread_cond_broadcast(&a->cond);
  now = kv_now_ms();
  if (rv == CKR_OK) {
    int64_t life = ti.expires_in_s * 1000, ahead;
    kv_free_wipe(t->token);
    t->token = ti.access_token;
    t->expires_ms = now + life;
    /* refresh 5 minutes before expiry; short-lived tokens at half their lifetime */
    ahead = life > 600000 ? life - 300000 : life / 2;
    if (ti.refresh_in_s > 0 && ti.refresh_in_s * 1000 < ahead)
      ahead = ti.refresh_in_s * 1000;
    t->refresh_ms = now + ahead;
    KVP_DEBUG("vault %s: new access token for %s, valid %lld s", a->conf->name, resource,
              (long long)ti.expires_in_s);
    goto use;
  }
  if (t->token != NULL && now < t->expires_ms) {
    /* keep the valid token; try again in 30 s at the latest */
    KVP_WARN("vault %s: token refresh failed; using the current token until it expires",
             a->conf->name);
    t->refresh_ms = now + 30000 < t->expires_ms ? now + 30000 : t->expires_ms;
    goto use;
  }
  pthread_mutex_unlock(&a->lock);
  return rv;
use:
  *hdr = kv_bearer(t->token);
  pthread_mutex_unlock(&a->lock);
  return *hdr != NULL ? CKR_OK : CKR_HOST_MEMORY;
}
