/*
 * ARM client for integration-account certificates: see ia.h.
 */
#include "ia.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>
#include <openssl/evp.h>

#include "backend/keyvault/kv.h"
#include "core/log.h"
#include "core/status.h"
#include "core/util.h"

#define IA_DEFAULT_RESOURCE "https://management.azure.com"
#define IA_ACTION_PREFIX "Microsoft.Logic/integrationAccounts/certificates/"

struct ia_client {
  const kvp_ia_conf *conf;
  kv_http *http;
  kv_auth *auth;
  char *base;       /* arm_endpoint + resource_id */
  char *host;       /* arm_endpoint's host: nextLink must stay on it */
  char *resource;   /* token resource */
  unsigned long requests;
};

static char *join3(const char *a, const char *b, const char *c)
{
  size_t n = strlen(a) + strlen(b) + strlen(c) + 1;
  char *s = malloc(n);

  if (s != NULL)
    snprintf(s, n, "%s%s%s", a, b, c);
  return s;
}

/* The token resource: configured, or the ARM endpoint itself when it is a
 * management.* host (sovereign clouds), else the public cloud's. */
static char *derive_resource(const kvp_ia_conf *conf, const char *host)
{
  if (conf->resource != NULL)
    return strdup(conf->resource);
  if (host != NULL && strncmp(host, "management.", 11) == 0)
    return join3("https://", host, "");
  return strdup(IA_DEFAULT_RESOURCE);
}

CK_RV ia_client_new(const kvp_ia_conf *conf, ia_client **out)
{
  ia_client *c = calloc(1, sizeof(*c));
  const char *ep = conf->cred.url;
  size_t n = strlen(ep);

  *out = NULL;
  if (c == NULL)
    return kvp_fail(CKR_HOST_MEMORY, "out of memory");
  while (n > 0 && ep[n - 1] == '/')
    n--;
  c->conf = conf;
  c->host = kv_url_host(ep);
  c->base = malloc(n + strlen(conf->resource_id) + 1);
  if (c->base != NULL)
    snprintf(c->base, n + strlen(conf->resource_id) + 1, "%.*s%s", (int)n, ep, conf->resource_id);
  c->resource = derive_resource(conf, c->host);
  c->http = kv_http_new(conf->cred.ca_file);
  c->auth = c->http != NULL ? kv_auth_new(&conf->cred, c->http) : NULL;
  if (c->host == NULL || c->base == NULL || c->resource == NULL || c->auth == NULL) {
    ia_client_free(c);
    return kvp_fail(CKR_HOST_MEMORY,
                    "integration account %s: cannot set up the ARM client (arm_endpoint %s)",
                    conf->cred.name, ep);
  }
  *out = c;
  return CKR_OK;
}

void ia_client_free(ia_client *c)
{
  if (c == NULL)
    return;
  kv_auth_free(c->auth, 0);
  kv_http_free(c->http, 0);
  free(c->base);
  free(c->host);
  free(c->resource);
  free(c);
}

unsigned long ia_requests(const ia_client *c)
{
  return c->requests;
}

/* The reason of a failed ARM request, recorded with kvp_fail(). */
static CK_RV ia_fail(const ia_client *c, const char *method, const char *what, const kv_resp *r)
{
  kv_error_info ei;
  const char *name = c->conf->cred.name;
  const char *action = strcmp(method, "GET") == 0   ? "read"
                       : strcmp(method, "PUT") == 0 ? "write"
                                                    : "delete";

  if (r->status == 0)
    return kvp_fail(CKR_DEVICE_ERROR, "integration account %s: %s: cannot reach %s: %s", name,
                    what, c->host, r->curl_err[0] ? r->curl_err : curl_easy_strerror(r->cc));
  kv_error_parse(r, &ei);
  if (r->status == 403)
    return kvp_fail(CKR_FUNCTION_REJECTED,
                    "integration account %s: %s: the principal lacks the action '" IA_ACTION_PREFIX
                    "%s' (HTTP 403 %s; grant a role that includes it, e.g. Logic App %s)",
                    name, what, action, ei.code, strcmp(action, "read") == 0 ? "Operator" : "Contributor");
  if (r->status == 401)
    return kvp_fail(CKR_FUNCTION_REJECTED,
                    "integration account %s: %s: the token was refused (HTTP 401 %s: %s)", name,
                    what, ei.code, ei.message);
  if (r->status == 404 && strcasecmp(ei.code, "ResourceNotFound") == 0)
    return kvp_fail(CKR_ARGUMENTS_BAD,
                    "integration account %s: %s: no such integration account (%s): check "
                    "resource_id",
                    name, what, c->conf->resource_id);
  return kvp_fail(CKR_DEVICE_ERROR, "integration account %s: %s: HTTP %ld %s: %s (x-ms-request-id %s)",
                  name, what, r->status, ei.code, ei.message, r->request_id);
}

/* One ARM request with a token (a 401 with a cached token gets one new
 * token), retried on 429 and transient failures within timeout_ms. */
static CK_RV ia_call(ia_client *c, const char *method, const char *url, const char *body,
                     const char *what, kv_resp *resp)
{
  kv_retry rt;
  kv_req req;
  char *hdr = NULL, *stale = NULL;
  char label[300];
  CK_RV rv;

  memset(&req, 0, sizeof(req));
  req.method = method;
  req.url = url;
  req.body = body;
  req.body_len = body != NULL ? strlen(body) : 0;
  snprintf(label, sizeof(label), "integration account %s: %s", c->conf->cred.name, what);
  rt.deadline_ms = kv_now_ms() + (c->conf->cred.timeout_ms > 0 ? c->conf->cred.timeout_ms : 30000);
  rt.max_retries = c->conf->cred.max_retries;
  rt.unit_ms = c->conf->cred.timeout_ms >= 31000 ? 1000 : (c->conf->cred.timeout_ms / 31 > 1 ? c->conf->cred.timeout_ms / 31 : 1);
  rt.what = label;
  for (int refreshed = 0;; refreshed = 1) {
    rv = kv_auth_header(c->auth, c->resource, stale, &rt, &hdr);
    if (rv != CKR_OK) {
      rv = kvp_fail(rv, "integration account %s: %s: no ARM access token (see the log)",
                    c->conf->cred.name, what);
      break;
    }
    req.auth_header = hdr;
    kv_resp_clear(resp, 1);
    /* a DELETE answers 200 or 204 with an empty body */
    kv_http_do_retry(c->http, &req, &rt, strcmp(method, "DELETE") != 0, resp);
    c->requests++;
    if (resp->status == 401 && !refreshed) {
      kv_free_wipe(stale);
      stale = hdr;
      hdr = NULL;
      continue;
    }
    if (resp->status >= 200 && resp->status < 300 && !resp->capped &&
        (resp->json != NULL || strcmp(method, "DELETE") == 0))
      rv = CKR_OK;
    else
      rv = ia_fail(c, method, what, resp);
    break;
  }
  kv_free_wipe(hdr);
  kv_free_wipe(stale);
  return rv;
}

/* ---- list ---- */

static int name_ok(const char *s)
{
  size_t n = s != NULL ? strlen(s) : 0;

  return n >= 1 && n <= 80 &&
         strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-()._") == n;
}

static char *jstr(json_t *o, const char *k)
{
  const char *s = json_string_value(json_object_get(o, k));
  return s != NULL ? strdup(s) : NULL;
}

/* Keep the first reason an entry is unusable: what, then 'arg' when given. */
static void set_bad(ia_cert *e, const char *what, const char *arg)
{
  size_t n = strlen(what) + (arg ? strlen(arg) : 0) + 4;

  if (e->bad == NULL && (e->bad = malloc(n)) != NULL)
    snprintf(e->bad, n, "%s%s%s%s", what, arg ? " '" : "", arg ? arg : "", arg ? "'" : "");
}

/* One entry of a list page. Malformed entries are kept with a reason. */
static void parse_entry(json_t *item, ia_cert *e)
{
  json_t *props = json_object_get(item, "properties");
  json_t *key = json_object_get(props, "key");
  const char *b64 = json_string_value(json_object_get(props, "publicCertificate"));

  memset(e, 0, sizeof(*e));
  e->name = jstr(item, "name");
  if (!name_ok(e->name)) {
    set_bad(e, "an entry with a bad name", e->name ? e->name : "");
    return;
  }
  if (b64 != NULL && kv_b64url_decode(b64, &e->der, &e->der_len) != 0)
    set_bad(e, "publicCertificate is not base64", NULL);
  else if (b64 == NULL)
    set_bad(e, "no publicCertificate (a key without a certificate)", NULL);
  if (json_is_object(key)) {
    e->vault_id = jstr(json_object_get(key, "keyVault"), "id");
    e->key_name = jstr(key, "keyName");
    e->key_version = jstr(key, "keyVersion");
    if (e->vault_id != NULL) {
      const char *slash = strrchr(e->vault_id, '/');
      e->vault_name = strdup(slash != NULL ? slash + 1 : e->vault_id);
    }
    if (e->vault_id == NULL || e->key_name == NULL || e->vault_name == NULL ||
        strncasecmp(e->vault_id, "/subscriptions/", 15) != 0 || strstr(e->vault_id, "/vaults/") == NULL)
      set_bad(e, "a key reference without a Key Vault id and key name", NULL);
  }
}

static CK_RV parse_page(ia_client *c, json_t *j, ia_cert **out, size_t *n, char **next)
{
  json_t *value = json_object_get(j, "value");
  json_t *nl = json_object_get(j, "nextLink");
  size_t i;
  json_t *item;

  *next = NULL;
  if (!json_is_array(value))
    return kvp_fail(CKR_DEVICE_ERROR, "integration account %s: list: an answer without a value array",
                    c->conf->cred.name);
  ia_cert *p = realloc(*out, (*n + json_array_size(value) + 1) * sizeof(**out));
  if (p == NULL)
    return kvp_fail(CKR_HOST_MEMORY, "out of memory");
  *out = p;
  json_array_foreach(value, i, item)
  {
    parse_entry(item, &p[*n]);
    (*n)++;
  }
  if (json_is_string(nl) && *json_string_value(nl) != '\0') {
    char *h = kv_url_host(json_string_value(nl));
    int same = h != NULL && strcmp(h, c->host) == 0;
    free(h);
    if (!same)
      return kvp_fail(CKR_DEVICE_ERROR,
                      "integration account %s: list: nextLink leaves %s; not followed",
                      c->conf->cred.name, c->host);
    *next = strdup(json_string_value(nl));
    if (*next == NULL)
      return kvp_fail(CKR_HOST_MEMORY, "out of memory");
  }
  return CKR_OK;
}

CK_RV ia_list(ia_client *c, ia_cert **out, size_t *n)
{
  char first[64];
  char *url, *next = NULL;
  kv_resp resp;
  CK_RV rv;
  size_t pages = 0;

  *out = NULL;
  *n = 0;
  memset(&resp, 0, sizeof(resp));
  snprintf(first, sizeof(first), "?api-version=%s&$top=%ld", c->conf->cred.api_version,
           c->conf->page_size);
  url = join3(c->base, "/certificates", first);
  if (url == NULL)
    return kvp_fail(CKR_HOST_MEMORY, "out of memory");
  for (;;) {
    rv = ia_call(c, "GET", url, NULL, "list certificates", &resp);
    if (rv == CKR_OK)
      rv = parse_page(c, resp.json, out, n, &next);
    free(url);
    url = next;
    kv_resp_clear(&resp, 0);
    if (rv != CKR_OK || url == NULL)
      break;
    if (++pages > 100000) {
      rv = kvp_fail(CKR_DEVICE_ERROR, "integration account %s: list: too many pages",
                    c->conf->cred.name);
      break;
    }
  }
  free(url);
  if (rv != CKR_OK) {
    ia_cert_free_array(*out, *n);
    *out = NULL;
    *n = 0;
  }
  KVP_DEBUG("integration account %s: %zu certificates in %zu pages", c->conf->cred.name, *n,
            pages + 1);
  return rv;
}

/* ---- put, delete ---- */

static char *cert_url(const ia_client *c, const char *name)
{
  char *esc = kv_escape(name);
  char *url = NULL;
  size_t n;

  if (esc == NULL)
    return NULL;
  n = strlen(c->base) + strlen(esc) + strlen(c->conf->cred.api_version) + 40;
  if ((url = malloc(n)) != NULL)
    snprintf(url, n, "%s/certificates/%s?api-version=%s", c->base, esc, c->conf->cred.api_version);
  free(esc);
  return url;
}

static char *put_body(const unsigned char *der, size_t der_len, const char *vault_id,
                      const char *key_name, const char *key_version)
{
  json_t *props = json_object();
  json_t *root = json_pack("{s:o}", "properties", props);
  char *b64 = malloc(4 * ((der_len + 2) / 3) + 1);
  char *text = NULL;

  if (root == NULL || b64 == NULL)
    goto out;
  EVP_EncodeBlock((unsigned char *)b64, der, (int)der_len);
  json_object_set_new(props, "publicCertificate", json_string(b64));
  if (key_name != NULL) {
    json_t *key = json_pack("{s:{s:s},s:s}", "keyVault", "id", vault_id, "keyName", key_name);
    if (key != NULL && key_version != NULL)
      json_object_set_new(key, "keyVersion", json_string(key_version));
    json_object_set_new(props, "key", key);
  }
  json_object_set_new(props, "metadata", json_pack("{s:s}", "source", "kvp11"));
  text = json_dumps(root, JSON_COMPACT);
out:
  free(b64);
  json_decref(root);
  return text;
}

CK_RV ia_put(ia_client *c, const char *name, const unsigned char *der, size_t der_len,
             const char *vault_id, const char *key_name, const char *key_version, int *created)
{
  char *url = cert_url(c, name);
  char *body = put_body(der, der_len, vault_id, key_name, key_version);
  char what[160];
  kv_resp resp;
  CK_RV rv;

  memset(&resp, 0, sizeof(resp));
  *created = 0;
  if (url == NULL || body == NULL) {
    rv = kvp_fail(CKR_HOST_MEMORY, "out of memory");
    goto out;
  }
  snprintf(what, sizeof(what), "publish certificate '%s'", name);
  rv = ia_call(c, "PUT", url, body, what, &resp);
  *created = rv == CKR_OK && resp.status == 201;
out:
  kv_resp_clear(&resp, 0);
  free(url);
  free(body);
  return rv;
}

CK_RV ia_delete(ia_client *c, const char *name, int *existed)
{
  char *url = cert_url(c, name);
  char what[160];
  kv_resp resp;
  CK_RV rv;

  memset(&resp, 0, sizeof(resp));
  *existed = 0;
  if (url == NULL)
    return kvp_fail(CKR_HOST_MEMORY, "out of memory");
  snprintf(what, sizeof(what), "unpublish certificate '%s'", name);
  rv = ia_call(c, "DELETE", url, NULL, what, &resp);
  *existed = rv == CKR_OK && resp.status != 204;
  kv_resp_clear(&resp, 0);
  free(url);
  return rv;
}

void ia_cert_free_array(ia_cert *certs, size_t n)
{
  for (size_t i = 0; certs != NULL && i < n; i++) {
    free(certs[i].name);
    free(certs[i].der);
    free(certs[i].vault_id);
    free(certs[i].vault_name);
    free(certs[i].key_name);
    free(certs[i].key_version);
    free(certs[i].bad);
  }
  free(certs);
}
