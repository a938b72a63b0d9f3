/* Shared helpers of the Key Vault CUnit tests: see kvtest.h. */
#include "kvtest.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <CUnit/Basic.h>
#include <curl/curl.h>
#include <openssl/ec.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "core/log.h"

char kvt_dir[900];
char kvt_url[128];
char kvt_ca[1000];
char kvt_secret[1000];
char kvt_log[1000];
const char *kvt_tenant = "7c3a4b1e-0d52-4a8e-9f61-5b2e8c1d4f00";

static size_t kvt_sink(char *p, size_t s, size_t n, void *u)
{
  char **buf = u;
  size_t len = s * n, old = *buf != NULL ? strlen(*buf) : 0;
  char *nb = realloc(*buf, old + len + 1);
  if (nb == NULL)
    return 0;
  memcpy(nb + old, p, len);
  nb[old + len] = '\0';
  *buf = nb;
  return len;
}

json_t *kvt_http(const char *method, const char *path, const char *body, const char *auth,
                 long *status)
{
  CURL *c = curl_easy_init();
  char url[512], *buf = NULL;
  json_t *out = NULL;
  long st = 0;
  struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
  if (auth != NULL)
    h = curl_slist_append(h, auth);
  snprintf(url, sizeof(url), "%s%s", kvt_url, path);
  curl_easy_setopt(c, CURLOPT_URL, url);
  curl_easy_setopt(c, CURLOPT_CAINFO, kvt_ca);
  curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
  curl_easy_setopt(c, CURLOPT_NOPROXY, "*");
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  if (body != NULL)
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, kvt_sink);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &buf);
  curl_easy_setopt(c, CURLOPT_TIMEOUT, 10L);
  if (curl_easy_perform(c) != CURLE_OK)
    fprintf(stderr, "%s %s failed\n", method, path);
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &st);
  if (status != NULL)
    *status = st;
  if (buf != NULL)
    out = json_loads(buf, 0, NULL);
  free(buf);
  curl_slist_free_all(h);
  curl_easy_cleanup(c);
  return out;
}

json_t *kvt_emu(const char *method, const char *path, const char *body)
{
  return kvt_http(method, path, body, NULL, NULL);
}

void kvt_emu_reset(void)
{
  json_decref(kvt_emu("POST", "/_emu/reset", "{}"));
}

void kvt_emu_fault(const char *rule)
{
  json_decref(kvt_emu("POST", "/_emu/faults", rule));
}

void kvt_emu_clear_faults(void)
{
  json_decref(kvt_emu("DELETE", "/_emu/faults", NULL));
}

long kvt_emu_count(const char *ep)
{
  json_t *j = kvt_emu("GET", "/_emu/counters", NULL);
  long n = (long)json_integer_value(json_object_get(json_object_get(j, "counters"), ep));
  json_decref(j);
  return n;
}

long kvt_emu_total(void)
{
  json_t *j = kvt_emu("GET", "/_emu/counters", NULL);
  long n = (long)json_integer_value(json_object_get(j, "total"));
  json_decref(j);
  return n;
}

void kvt_emu_policy(const char *client_id, const char *perms)
{
  char body[512];
  snprintf(body, sizeof(body), "{\"clientId\":\"%s\",\"permissions\":%s}", client_id, perms);
  json_decref(kvt_emu("POST", "/_emu/policy", body));
}

void kvt_emu_key(const char *name, const char *version, const char *attrs, const char *ops)
{
  char body[1024];
  snprintf(body, sizeof(body), "{\"name\":\"%s\"%s%s%s,\"attributes\":%s%s%s}", name,
           version ? ",\"version\":\"" : "", version ? version : "", version ? "\"" : "",
           attrs ? attrs : "{}", ops ? ",\"keyOps\":" : "", ops ? ops : "");
  json_decref(kvt_emu("POST", "/_emu/key", body));
}

int kvt_emu_rotate(const char *name, char *ver, size_t verlen)
{
  char body[256];
  const char *kid, *slash;
  json_t *j;
  int rc = -1;
  snprintf(body, sizeof(body), "{\"name\":\"%s\"}", name);
  j = kvt_emu("POST", "/_emu/rotate", body);
  kid = json_string_value(json_object_get(json_object_get(j, "key"), "kid"));
  if (kid != NULL && (slash = strrchr(kid, '/')) != NULL) {
    if (ver != NULL)
      snprintf(ver, verlen, "%s", slash + 1);
    rc = 0;
  }
  json_decref(j);
  return rc;
}

size_t kvt_emu_times(const char *ep, long status, double *out, size_t max)
{
  char path[128];
  json_t *j, *a, *it;
  size_t i, n = 0;
  snprintf(path, sizeof(path), "/_emu/log?ep=%s", ep);
  j = kvt_emu("GET", path, NULL);
  a = json_object_get(j, "requests");
  json_array_foreach(a, i, it) {
    if (n >= max)
      break;
    if (status != 0 && json_integer_value(json_object_get(it, "status")) != status)
      continue;
    out[n++] = json_number_value(json_object_get(it, "t"));
  }
  json_decref(j);
  return n;
}

void kvt_conf(kvp_vault_conf *c, const char *name)
{
  memset(c, 0, sizeof(*c));
  c->name = (char *)name;
  c->url = kvt_url;
  c->api_version = "7.5";
  c->auth = KVP_AUTH_CLIENT_SECRET;
  c->tenant_id = (char *)kvt_tenant;
  c->client_id = "app-full";
  c->client_secret_file = kvt_secret;
  c->authority_host = kvt_url;
  c->ca_file = kvt_ca;
  c->timeout_ms = 20000;
  c->max_retries = 5;
}

long kvt_log_size(void)
{
  struct stat st;
  return stat(kvt_log, &st) == 0 ? (long)st.st_size : 0;
}

int kvt_log_contains_after(long from, const char *needle)
{
  char line[4096];
  FILE *f = fopen(kvt_log, "r");
  int found = 0;
  if (f == NULL)
    return 0;
  if (from > 0)
    fseek(f, from, SEEK_SET);
  while (fgets(line, sizeof(line), f) != NULL)
    if (strstr(line, needle) != NULL)
      found = 1;
  fclose(f);
  return found;
}

int kvt_log_contains(const char *needle)
{
  return kvt_log_contains_after(0, needle);
}

int kvt_verify(EVP_PKEY *pub, const kvp_sig_alg *alg, const unsigned char *d, size_t dl,
               const unsigned char *sig, size_t sl)
{
  EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(pub, NULL);
  int ok = 0;
  EVP_PKEY_verify_init(ctx);
  if (alg->scheme == KVP_SIG_ECDSA) {
    unsigned char *der = NULL;
    ECDSA_SIG *es = ECDSA_SIG_new();
    int derlen;
    ECDSA_SIG_set0(es, BN_bin2bn(sig, (int)sl / 2, NULL), BN_bin2bn(sig + sl / 2, (int)sl / 2, NULL));
    derlen = i2d_ECDSA_SIG(es, &der);
    ok = derlen > 0 && EVP_PKEY_verify(ctx, der, (size_t)derlen, d, dl) == 1;
    ECDSA_SIG_free(es);
    OPENSSL_free(der);
  } else {
    const EVP_MD *md = kvp_hash_md(alg->hash);
    EVP_PKEY_CTX_set_signature_md(ctx, md);
    if (alg->scheme == KVP_SIG_RSA_PSS) {
      EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PSS_PADDING);
      EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, md);
      EVP_PKEY_CTX_set_rsa_pss_saltlen(ctx, (int)alg->salt_len);
    } else {
      EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING);
    }
    ok = EVP_PKEY_verify(ctx, sig, sl, d, dl) == 1;
  }
  EVP_PKEY_CTX_free(ctx);
  return ok;
}

CK_RV kvt_sign(kvp_backend *be, kvp_key *k, EVP_PKEY *pub, int check)
{
  kvp_sig_alg alg = {0};
  unsigned char d[64], sig[600];
  unsigned int dl = 0;
  CK_ULONG sl = sizeof(sig);
  CK_RV rv;
  const char *md = k->bits == 384 ? "SHA384" : k->bits == 521 ? "SHA512" : "SHA256";
  if (k->type == KVP_KEY_RSA) {
    alg.scheme = KVP_SIG_RSA_PKCS1;
    alg.hash = KVP_HASH_SHA256;
    md = "SHA256";
  } else {
    alg.scheme = KVP_SIG_ECDSA;
  }
  EVP_Digest("msg", 3, d, &dl, EVP_get_digestbyname(md), NULL);
  rv = be->ops->sign(be, k, &alg, d, dl, sig, &sl);
  if (rv == CKR_OK && check)
    CU_ASSERT(kvt_verify(pub != NULL ? pub : k->pub, &alg, d, dl, sig, sl));
  return rv;
}

/* The key's registry hint: version and DER SPKI of pub (spki malloc'd into *spki). */
static void kvt_hint(kvp_key_ref_hint *h, const char *version, EVP_PKEY *pub,
                     unsigned char **spki)
{
  int n;
  *spki = NULL;
  n = pub != NULL ? i2d_PUBKEY(pub, spki) : 0;
  h->version = version;
  h->spki = n > 0 ? *spki : NULL;
  h->spki_len = n > 0 ? (size_t)n : 0;
}

kvp_backend *kvt_backend(const kvp_vault_conf *c)
{
  kvp_backend *be = NULL;
  CU_ASSERT_EQUAL(kvp_keyvault_backend_new(c, &be), CKR_OK);
  return be;
}

int kvt_registered(kvp_backend *be, const char *name, char *ver, size_t verlen, EVP_PKEY **pub)
{
  kvp_key *k = NULL;
  if (be->ops->open_key(be, name, &k) != CKR_OK)
    return -1;
  snprintf(ver, verlen, "%s", k->version);
  *pub = k->pub;
  EVP_PKEY_up_ref(*pub);
  be->ops->close_key(be, k);
  return 0;
}

CK_RV kvt_open_hinted(kvp_backend *be, const char *name, const char *ver, EVP_PKEY *pub,
                      kvp_key **k)
{
  kvp_key_ref_hint h;
  unsigned char *spki;
  CK_RV rv;
  kvt_hint(&h, ver, pub, &spki);
  rv = kvp_backend_open_key(be, name, &h, k);
  OPENSSL_free(spki);
  return rv;
}

void kvt_write_file(const char *path, const char *fmt, ...)
{
  va_list ap;
  FILE *f = fopen(path, "w");
  CU_ASSERT_PTR_NOT_NULL_FATAL(f);
  va_start(ap, fmt);
  vfprintf(f, fmt, ap);
  va_end(ap);
  fclose(f);
  chmod(path, 0600);
}

int kvt_read_line(const char *path, char *buf, size_t size)
{
  FILE *f = fopen(path, "r");
  CU_ASSERT_PTR_NOT_NULL_FATAL(f);
  int got = fgets(buf, (int)size, f) != NULL;
  fclose(f);
  if (!got)
    buf[0] = '\0';
  buf[strcspn(buf, "\r\n")] = '\0';
  return got;
}

void kvt_federated_token(const char *path)
{
  json_t *j =
      kvt_emu("POST", "/_emu/federated-token", "{\"subject\":\"system:serviceaccount:b2b:app\"}");
  kvt_write_file(path, "%s\n", json_string_value(json_object_get(j, "token")));
  json_decref(j);
}

double kvt_now(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int kvt_fixture(const char *logname)
{
  const char *d = getenv("KVP11_KV_DIR");
  char path[1000], port[32] = "";
  FILE *f;

  if (d == NULL || d[0] == '\0') {
    fprintf(stderr, "KVP11_KV_DIR not set: skipped\n");
    return 77;
  }
  snprintf(kvt_dir, sizeof(kvt_dir), "%s", d);
  snprintf(path, sizeof(path), "%s/port", kvt_dir);
  f = fopen(path, "r");
  if (f == NULL || fgets(port, sizeof(port), f) == NULL) {
    fprintf(stderr, "%s: no emulator port (fixture not set up)\n", path);
    if (f != NULL)
      fclose(f);
    return 1;
  }
  fclose(f);
  port[strcspn(port, "\r\n")] = '\0';
  snprintf(kvt_url, sizeof(kvt_url), "https://127.0.0.1:%s", port);
  snprintf(kvt_ca, sizeof(kvt_ca), "%s/ca.pem", kvt_dir);
  snprintf(kvt_secret, sizeof(kvt_secret), "%s/app-full.secret", kvt_dir);
  snprintf(kvt_log, sizeof(kvt_log), "%s/%s", kvt_dir, logname);
  unlink(kvt_log);
  kvp_log_setup(KVP_LOG_DEBUG, kvt_log);
  return 0;
}

int kvt_init(const char *logname)
{
  int rc = kvt_fixture(logname);
  if (rc != 0)
    return rc;
  curl_global_init(CURL_GLOBAL_DEFAULT);
  kvt_emu_reset();
  return 0;
}

void kvt_done(void)
{
  curl_global_cleanup();
}
