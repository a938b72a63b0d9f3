/*
 * The Key Vault backend object, its data-plane call and the ops table.
 *
 * kv_call() is the one place where a Key Vault answer becomes a CK_RV:
 * challenge on the first call (the resource in WWW-Authenticate must match
 * the vault's host), a token for that resource, the request with retries on
 * throttling and transient failures, one token refresh on 401, and one log
 * line per failure with the HTTP status, Key Vault's error code and the
 * x-ms-request-id.
 */
#include "backend/keyvault/kv.h"
#include "backend/keyvault/keyvault.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/audit.h"
#include "core/log.h"
#include "core/status.h"
#include "core/util.h"

static const char *kv_kind_perm(kv_call_kind k)
{
  switch (k) {
  case KV_CALL_GET: return "get";
  case KV_CALL_LIST: return "list";
  case KV_CALL_SIGN: return "sign";
  case KV_CALL_DECRYPT: return "decrypt";
  case KV_CALL_CREATE: return "create";
  case KV_CALL_IMPORT: return "import";
  case KV_CALL_DELETE: return "delete";
  case KV_CALL_PROBE: return "get";
  case KV_CALL_STATE: return "get";
  }
  return "?";
}

void kv_retry_init(kv_backend *b, kv_retry *rt, const char *what)
{
  long t = b->conf.timeout_ms > 0 ? b->conf.timeout_ms : 30000;
  rt->deadline_ms = kv_now_ms() + t;
  rt->max_retries = b->conf.max_retries >= 0 ? b->conf.max_retries : 5;
  rt->unit_ms = b->unit_ms;
  rt->attempt_ms = b->attempt_ms;
  rt->what = what;
}

kv_cause kv_forbidden_cause(const kv_error_info *ei)
{
  if (strcasecmp(ei->inner, "KeyOperationForbidden") == 0)
    return KV_CAUSE_KEY_OPS;
  if (strcasecmp(ei->inner, "KeyDisabled") == 0)
    return KV_CAUSE_DISABLED;
  if (strcasecmp(ei->inner, "KeyNotYetValid") == 0)
    return KV_CAUSE_NOT_YET_VALID;
  if (strcasecmp(ei->inner, "KeyExpired") == 0)
    return KV_CAUSE_EXPIRED;
  if (strcasecmp(ei->inner, "ForbiddenByFirewall") == 0)
    return KV_CAUSE_FIREWALL;
  if (strcasecmp(ei->inner, "ForbiddenByPolicy") == 0 || strcasecmp(ei->inner, "ForbiddenByRbac") == 0 ||
      strstr(ei->message, "permission") != NULL)
    return KV_CAUSE_PERMISSION;
  /* without an inner code: the message's words */
  if (strstr(ei->message, "disabled") != NULL)
    return KV_CAUSE_DISABLED;
  if (strstr(ei->message, "not yet valid") != NULL)
    return KV_CAUSE_NOT_YET_VALID;
  if (strstr(ei->message, "expired") != NULL)
    return KV_CAUSE_EXPIRED;
  return KV_CAUSE_PERMISSION;
}

/*
 * The token resource of each Azure cloud's Key Vault and Managed HSM hosts:
 * a host NAME.<suffix> takes the token of https://<suffix>.
 */
static const char *const kv_clouds[] = {
    "vault.azure.net",            "vault.azure.cn",
    "vault.usgovcloudapi.net",    "vault.microsoftazure.de",
    "vault.cloudapi.eaglex.ic.gov", "vault.cloudapi.microsoft.scloud",
    "managedhsm.azure.net",       "managedhsm.azure.cn",
    "managedhsm.usgovcloudapi.net",
};

const char *kv_cloud_resource(const char *host)
{
  static const char *const resources[] = {
      "https://vault.azure.net",            "https://vault.azure.cn",
      "https://vault.usgovcloudapi.net",    "https://vault.microsoftazure.de",
      "https://vault.cloudapi.eaglex.ic.gov", "https://vault.cloudapi.microsoft.scloud",
      "https://managedhsm.azure.net",       "https://managedhsm.azure.cn",
      "https://managedhsm.usgovcloudapi.net",
  };
  size_t i, hl = host != NULL ? strlen(host) : 0;
  for (i = 0; i < sizeof(kv_clouds) / sizeof(kv_clouds[0]); i++) {
    size_t sl = strlen(kv_clouds[i]);
    if (hl > sl + 1 && host[hl - sl - 1] == '.' && strcasecmp(host + hl - sl, kv_clouds[i]) == 0)
      return resources[i];
  }
  return NULL;
}

static CK_RV kv_map_error(kv_backend *b, kv_call_kind kind, const char *key, const kv_resp *r)
{
  kv_error_info ei;
  char who[200];
  const char *perm = kv_kind_perm(kind);

  if (key != NULL)
    snprintf(who, sizeof(who), "vault %s: key %s", b->conf.name, key);
  else
    snprintf(who, sizeof(who), "vault %s", b->conf.name);
  if (r->capped) {
    return kvp_fail(CKR_DEVICE_ERROR,
                    "%s: %s: response body larger than %d bytes (x-ms-request-id %s)", who, perm,
                    KV_BODY_CAP, r->request_id);
  }
  if (r->status == 0) {
    return kvp_fail(CKR_DEVICE_ERROR, "%s: %s: %s", who, perm,
                    r->curl_err[0] ? r->curl_err : "no response");
  }
  kv_error_parse(r, &ei);
  if (r->status >= 200 && r->status < 300) {
    return kvp_fail(CKR_DEVICE_ERROR,
                    "%s: %s: HTTP %ld with a body that is not a JSON object (x-ms-request-id %s)",
                    who, perm, r->status, r->request_id);
  }
  switch (r->status) {
  case 400:
    return kvp_fail(kind == KV_CALL_SIGN      ? CKR_DATA_INVALID
                    : kind == KV_CALL_DECRYPT ? CKR_ENCRYPTED_DATA_INVALID
                                              : CKR_DEVICE_ERROR,
                    "%s: %s refused: HTTP 400 %s%s%s: %s (x-ms-request-id %s)", who, perm, ei.code,
                    ei.inner[0] ? "/" : "", ei.inner, ei.message, r->request_id);
  case 401:
    return kvp_fail(CKR_DEVICE_ERROR,
                    "%s: %s: the access token was refused: HTTP 401 %s: %s (x-ms-request-id %s)",
                    who, perm, ei.code, ei.message, r->request_id);
  case 403: {
    char why[160];
    kv_cause cause = kv_forbidden_cause(&ei);
    kv_cause_text(cause, perm, 0, why, sizeof(why));
    /* sign / decrypt: kv_keys.c logs the cause once per change; a state read's
     * 403 is an expected answer for sign-only principals */
    return kvp_fail_at(kind == KV_CALL_SIGN || kind == KV_CALL_DECRYPT || kind == KV_CALL_STATE
                           ? KVP_LOG_DEBUG
                           : KVP_LOG_ERROR,
                       CKR_KEY_FUNCTION_NOT_PERMITTED,
                       "%s: %s (HTTP 403 %s%s%s: %s; x-ms-request-id %s)", who, why, ei.code,
                       ei.inner[0] ? "/" : "", ei.inner, ei.message, r->request_id);
  }
  case 404:
    if (kind == KV_CALL_PROBE) {
      KVP_DEBUG("%s: not found (x-ms-request-id %s)", who, r->request_id);
      return CKR_KEY_HANDLE_INVALID;
    }
    /* a caller that takes "not found" for an answer (a name checked to be
     * free) uses KV_CALL_PROBE or clears the status */
    return kvp_fail(CKR_KEY_HANDLE_INVALID, "%s: not found: HTTP 404 %s: %s (x-ms-request-id %s)",
                    who, ei.code, ei.message, r->request_id);
  default:
    return kvp_fail(CKR_DEVICE_ERROR, "%s: %s failed: HTTP %ld %s%s%s: %s (x-ms-request-id %s)",
                    who, perm, r->status, ei.code, ei.inner[0] ? "/" : "", ei.inner, ei.message,
                    r->request_id);
  }
}

/* The resource a 401's WWW-Authenticate challenge names, checked against the vault host. */
static CK_RV kv_challenge_resource(kv_backend *b, const kv_resp *resp, char **resource)
{
  kv_challenge c;
  *resource = NULL;
  if (resp->www_auth == NULL || kv_challenge_parse(resp->www_auth, &c) != 0)
    return kvp_fail(CKR_DEVICE_ERROR,
                    "vault %s: HTTP 401 without a usable WWW-Authenticate Bearer challenge "
                    "(x-ms-request-id %s)",
                    b->conf.name, resp->request_id);
  if (kv_resource_check(&c, b->host, resource) != 0) {
    CK_RV rv = kvp_fail(CKR_DEVICE_ERROR,
                        "vault %s: the challenge resource '%s' does not match the vault host "
                        "'%s'; no token is sent",
                        b->conf.name, c.resource != NULL ? c.resource : c.scope, b->host);
    kv_challenge_clear(&c);
    return rv;
  }
  kv_challenge_clear(&c);
  return CKR_OK;
}

static void kv_set_resource(kv_backend *b, const char *resource)
{
  char *r = strdup(resource);
  if (r == NULL)
    return;
  pthread_mutex_lock(&b->lock);
  free(b->resource);
  b->resource = r;
  pthread_mutex_unlock(&b->lock);
}

/* Learn the token resource from the service's 401 challenge (no configured or
 * cloud resource). */
static CK_RV kv_do_challenge(kv_backend *b, kv_call_kind kind, const char *key, const kv_req *req,
                             const kv_retry *rt, kv_resp *resp, char **resource)
{
  kv_req ch = *req;
  CK_RV rv;

  *resource = NULL;
  /* like the Azure SDKs: the first request goes without token and body */
  ch.body = NULL;
  ch.body_len = 0;
  ch.auth_header = NULL;
  /* a 2xx that is not JSON (a proxy's page) is retried like on every request */
  kv_http_do_retry(b->http, &ch, rt, 1, resp);
  if (resp->status != 401)
    return kv_map_error(b, kind, key, resp);
  rv = kv_challenge_resource(b, resp, resource);
  if (rv == CKR_OK)
    kv_set_resource(b, *resource);
  return rv;
}

/*
 * A 401 on a request with a token: once, either switch to the resource the
 * service's challenge names (when it differs from the one used, and passes
 * the host check) or get a new token for the same resource; the caller
 * tries again.
 */
static void kv_on_401(kv_backend *b, const char *what, kv_resp *resp, char **resource,
                      char **hdr, char **stale)
{
  char *wanted = NULL;
  if (resp->www_auth != NULL && kv_challenge_resource(b, resp, &wanted) == CKR_OK &&
      strcmp(wanted, *resource) != 0) {
    KVP_INFO("%s: the vault asks for tokens of %s (was %s)", what, wanted, *resource);
    kv_set_resource(b, wanted);
    free(*resource);
    *resource = wanted;
    kv_free_wipe(*hdr);
    *hdr = NULL;
    return;
  }
  free(wanted);
  KVP_INFO("%s: HTTP 401 with a cached token (x-ms-request-id %s); getting a new token", what,
           resp->request_id);
  kv_free_wipe(*stale);
  *stale = *hdr;
  *hdr = NULL;
}

CK_RV kv_call(kv_backend *b, kv_call_kind kind, const char *key, const char *method,
              const char *url, const char *body, kv_resp *resp)
{
  CK_RV rv;
  kv_retry rt;
  kv_req req;
  char what[256], *resource = NULL, *hdr = NULL, *stale = NULL;
  int refreshed = 0;

  memset(&req, 0, sizeof(req));
  req.method = method;
  req.url = url;
  req.body = body;
  req.body_len = body != NULL ? strlen(body) : 0;
  if (key != NULL)
    snprintf(what, sizeof(what), "vault %s: key %s: %s", b->conf.name, key, kv_kind_perm(kind));
  else
    snprintf(what, sizeof(what), "vault %s: %s", b->conf.name, kv_kind_perm(kind));
  kv_retry_init(b, &rt, what);

  pthread_mutex_lock(&b->lock);
  if (b->resource != NULL)
    resource = strdup(b->resource);
  pthread_mutex_unlock(&b->lock);
  if (resource == NULL) {
    rv = kv_do_challenge(b, kind, key, &req, &rt, resp, &resource);
    if (rv != CKR_OK)
      goto out;
  }
  for (;;) {
    rv = kv_auth_header(b->auth, resource, stale, &rt, &hdr);
    if (rv != CKR_OK)
      goto out;
    req.auth_header = hdr;
    kv_http_do_retry(b->http, &req, &rt, 1, resp);
    if (resp->status == 401 && !refreshed) {
      refreshed = 1;
      kv_on_401(b, what, resp, &resource, &hdr, &stale);
      continue;
    }
    break;
  }
  if (resp->status >= 200 && resp->status < 300 && resp->json != NULL && !resp->capped) {
    rv = CKR_OK;
    goto out;
  }
  rv = kv_map_error(b, kind, key, resp);
out:
  /* the audit record of this operation names the vault's request */
  if ((kind == KV_CALL_SIGN || kind == KV_CALL_DECRYPT) && strcmp(resp->request_id, "-") != 0)
    kvp_audit_request_id(resp->request_id);
  kv_free_wipe(hdr);
  kv_free_wipe(stale);
  free(resource);
  return rv;
}

/* ---- listing ---- */

CK_RV kvp_keyvault_list_keys(kvp_backend *be, char ***names, size_t *n)
{
  kv_backend *b = (kv_backend *)be;
  kv_resp resp;
  char *url = NULL, *next = NULL;
  size_t len, pages = 0, prefix_len;
  char prefix[300];
  CK_RV rv = CKR_HOST_MEMORY;

  *names = NULL;
  *n = 0;
  memset(&resp, 0, sizeof(resp));
  kv_resp_clear(&resp, 0);
  len = strlen(b->base_url) + strlen(b->conf.api_version) + 64;
  url = malloc(len);
  if (url == NULL)
    return CKR_HOST_MEMORY;
  snprintf(url, len, "%s/keys?api-version=%s&maxresults=25", b->base_url, b->conf.api_version);
  snprintf(prefix, sizeof(prefix), "https://%s", b->host);
  prefix_len = strlen(prefix);
  for (;;) {
    rv = kv_call(b, KV_CALL_LIST, NULL, "GET", url, NULL, &resp);
    if (rv != CKR_OK)
      goto out;
    if (kv_list_page_parse(resp.json, names, n, &next) != 0) {
      rv = kvp_fail(CKR_DEVICE_ERROR,
                    "vault %s: list: a page without a value array (x-ms-request-id %s)",
                    b->conf.name, resp.request_id);
      goto out;
    }
    kv_resp_clear(&resp, 0);
    free(url);
    url = next;
    next = NULL;
    if (url == NULL)
      break;
    /* the token must never go to another host */
    if (strncasecmp(url, prefix, prefix_len) != 0 ||
        (url[prefix_len] != '/' && url[prefix_len] != ':')) {
      KVP_ERROR("vault %s: list: nextLink points to another host; stopped", b->conf.name);
      rv = CKR_DEVICE_ERROR;
      goto out;
    }
    if (++pages > 10000) {
      rv = CKR_DEVICE_ERROR;
      goto out;
    }
  }
  rv = CKR_OK;
out:
  kv_resp_clear(&resp, 0);
  free(url);
  free(next);
  if (rv != CKR_OK) {
    kvp_keyvault_free_names(*names, *n);
    *names = NULL;
    *n = 0;
  }
  return rv;
}

void kvp_keyvault_free_names(char **names, size_t n)
{
  size_t i;
  for (i = 0; i < n; i++)
    free(names[i]);
  free(names);
}

void kvp_keyvault_set_key_ttl(kvp_backend *be, long ttl_ms)
{
  kv_backend *b = (kv_backend *)be;
  pthread_mutex_lock(&b->lock);
  b->key_ttl_ms = ttl_ms >= 0 ? ttl_ms : KV_KEY_TTL_MS;
  pthread_mutex_unlock(&b->lock);
}

unsigned long kvp_keyvault_token_requests(kvp_backend *be)
{
  return kv_auth_token_requests(((kv_backend *)be)->auth);
}

/* ---- lifetime ---- */

static int kv_conf_copy(kvp_vault_conf *d, const kvp_vault_conf *s)
{
  *d = *s;
  d->name = kvp_strdup0(s->name);
  d->url = kvp_strdup0(s->url);
  d->api_version = kvp_strdup0(s->api_version != NULL ? s->api_version : "7.5");
  d->tenant_id = kvp_strdup0(s->tenant_id);
  d->client_id = kvp_strdup0(s->client_id);
  d->client_secret_file = kvp_strdup0(s->client_secret_file);
  d->client_secret_env = kvp_strdup0(s->client_secret_env);
  d->client_cert_file = kvp_strdup0(s->client_cert_file);
  d->client_key_file = kvp_strdup0(s->client_key_file);
  d->authority_host = kvp_strdup0(s->authority_host);
  d->imds_endpoint = kvp_strdup0(s->imds_endpoint);
  d->ca_file = kvp_strdup0(s->ca_file);
  d->resource = kvp_strdup0(s->resource);
  if ((s->resource != NULL && d->resource == NULL) || d->name == NULL || d->url == NULL || d->api_version == NULL)
    return -1;
  return 0;
}

static int kv_needs_login(kvp_backend *be)
{
  (void)be;
  return 0;
}

static CK_RV kv_login(kvp_backend *be, const CK_UTF8CHAR *pin, CK_ULONG pin_len)
{
  (void)be;
  (void)pin;
  (void)pin_len;
  return CKR_OK;
}

static CK_RV kv_logout(kvp_backend *be)
{
  (void)be;
  return CKR_OK;
}

static void kv_destroy(kvp_backend *be, int forked)
{
  kv_backend *b = (kv_backend *)be;
  if (b == NULL)
    return;
  kv_key_cache_free(b, forked);
  kv_created_free(b);
  kv_auth_free(b->auth, forked);
  kv_http_free(b->http, forked);
  if (!forked)
    pthread_mutex_destroy(&b->lock);
  free(b->resource);
  free(b->base_url);
  free(b->host);
  free(b->base.name);
  kvp_vault_conf_clear(&b->conf);
  free(b);
}

static const kvp_backend_ops kv_ops = {
    .scheme = "keyvault",
    .open_key = kv_open_key,
    .close_key = kv_close_key,
    .open_key_hint = kv_open_key_hint,
    .sign = kv_sign,
    .decrypt = kv_decrypt,
    .needs_login = kv_needs_login,
    .login = kv_login,
    .logout = kv_logout,
    .create_key = kv_prov_create_key,
    .import_key = kv_prov_import_key,
    .delete_key = kv_prov_delete_key,
    .list_keys = kv_prov_list_keys,
    .key_info = kv_prov_key_info,
    .destroy = kv_destroy,
};

CK_RV kvp_keyvault_backend_new(const kvp_vault_conf *conf, kvp_backend **out)
{
  kv_backend *b;
  size_t n;
  long t;

  *out = NULL;
  if (conf == NULL || conf->name == NULL || conf->url == NULL)
    return CKR_ARGUMENTS_BAD;
  b = calloc(1, sizeof(*b));
  if (b == NULL)
    return CKR_HOST_MEMORY;
  pthread_mutex_init(&b->lock, NULL);
  if (kv_conf_copy(&b->conf, conf) != 0)
    goto nomem;
  b->host = kv_url_host(conf->url);
  if (b->host == NULL) {
    KVP_ERROR("vault %s: url '%s' is not an https URL", conf->name, conf->url);
    kv_destroy(&b->base, 0);
    return CKR_GENERAL_ERROR;
  }
  b->base_url = strdup(conf->url);
  if (b->base_url == NULL)
    goto nomem;
  n = strlen(b->base_url);
  while (n > 8 && b->base_url[n - 1] == '/')
    b->base_url[--n] = '\0';
  /* backoff 1, 2, 4, 8, 16 s; scaled down when the whole call has less time */
  t = conf->timeout_ms > 0 ? conf->timeout_ms : 30000;
  b->unit_ms = t >= 31000 ? 1000 : (t / 31 > 1 ? t / 31 : 1);
  b->key_ttl_ms = KV_KEY_TTL_MS;
  b->state_ms = (conf->key_cache_s > 0 ? conf->key_cache_s : 60) * 1000L;
  b->attempt_ms = conf->attempt_timeout_ms > 0 ? conf->attempt_timeout_ms : 10000;
  {
    /* the token resource: configured, else the cloud's; else the first 401 challenge's */
    const char *res = conf->resource != NULL ? conf->resource : kv_cloud_resource(b->host);
    if (res != NULL && (b->resource = strdup(res)) == NULL)
      goto nomem;
    if (b->resource != NULL) {
      size_t rl = strlen(b->resource);
      while (rl > 8 && b->resource[rl - 1] == '/')
        b->resource[--rl] = '\0';
    }
  }
  b->http = kv_http_new(conf->ca_file);
  if (b->http == NULL)
    goto nomem;
  b->auth = kv_auth_new(&b->conf, b->http);
  if (b->auth == NULL)
    goto nomem;
  b->base.ops = &kv_ops;
  b->base.name = strdup(conf->name);
  if (b->base.name == NULL)
    goto nomem;
  *out = &b->base;
  return CKR_OK;
nomem:
  kv_destroy(&b->base, 0);
  return CKR_HOST_MEMORY;
}
