/*
 * Issue 11 against the emulator (fixture-setup.sh, KVP11_KV_DIR): the Key
 * Vault backend opened the way the module opens a registered key (with the
 * registry's hint: version and SPKI), request counts from the emulator's
 * counters, every signature verified here with OpenSSL.
 *
 *  - two requests to the first signature (token + sign); a row without SPKI
 *    or without version takes the older paths
 *  - a sign/decrypt-only principal signs and decrypts
 *  - rotation in the vault: the registered version keeps signing
 *  - live key state: disabled -> enabled, nbf in the near future, exp
 *    extended, each refusal's log line naming its cause once
 *  - one 429 then the pace of before (request times from the emulator's log)
 *  - a hung first attempt abandoned and retried within timeout_ms
 *  - AZURE_AUTHORITY_HOST for workload identity (configuration file without
 *    authority_host)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <CUnit/Basic.h>
#include <openssl/rsa.h>

#include "backend/keyvault/keyvault.h"
#include "backend/keyvault/kv.h"
#include "core/config.h"
#include "core/log.h"
#include "core/status.h"
#include "kvtest.h"

#define EMU_RESOURCE "https://127.0.0.1"

static kvp_backend *g_be; /* app-full, reads keys (the tool's view) */

static void test_cloud_resource(void)
{
  CU_ASSERT_STRING_EQUAL(kv_cloud_resource("contoso.vault.azure.net"), "https://vault.azure.net");
  CU_ASSERT_STRING_EQUAL(kv_cloud_resource("contoso.vault.azure.cn"), "https://vault.azure.cn");
  CU_ASSERT_STRING_EQUAL(kv_cloud_resource("contoso.vault.usgovcloudapi.net"),
                         "https://vault.usgovcloudapi.net");
  CU_ASSERT_STRING_EQUAL(kv_cloud_resource("contoso.managedhsm.azure.net"),
                         "https://managedhsm.azure.net");
  CU_ASSERT_PTR_NULL(kv_cloud_resource("vault.azure.net"));
  CU_ASSERT_PTR_NULL(kv_cloud_resource("contoso.vault.azure.net.example.org"));
  CU_ASSERT_PTR_NULL(kv_cloud_resource("contosovault.azure.net"));
  CU_ASSERT_PTR_NULL(kv_cloud_resource("127.0.0.1"));
}

static void test_two_requests(void)
{
  kvp_vault_conf c;
  kvp_backend *be;
  kvp_key *k = NULL;
  EVP_PKEY *pub = NULL;
  char ver[80];
  kvp_key_ref_hint h = {NULL, NULL, 0};
  int i;

  CU_ASSERT_EQUAL_FATAL(kvt_registered(g_be, "p256", ver, sizeof(ver), &pub), 0);
  kvt_conf(&c, "fresh");
  c.resource = EMU_RESOURCE;
  /* a fresh process, registry row with version and SPKI */
  be = kvt_backend(&c);
  kvt_emu_reset();
  CU_ASSERT_EQUAL_FATAL(kvt_open_hinted(be, "p256", ver, pub, &k), CKR_OK);
  CU_ASSERT_EQUAL(kvt_emu_total(), 0);
  CU_ASSERT_STRING_EQUAL(k->version, ver);
  CU_ASSERT_EQUAL(kvt_sign(be, k, pub, 1), CKR_OK);
  CU_ASSERT_EQUAL(kvt_emu_count("token"), 1);
  CU_ASSERT_EQUAL(kvt_emu_count("sign"), 1);
  CU_ASSERT_EQUAL(kvt_emu_total(), 2);
  for (i = 0; i < 4; i++)
    CU_ASSERT_EQUAL(kvt_sign(be, k, pub, 1), CKR_OK);
  CU_ASSERT_EQUAL(kvt_emu_total(), 6); /* five signs in a fresh process: 6 requests */
  be->ops->close_key(be, k);
  be->ops->destroy(be, 0);

  /* a row with a version but no SPKI: the version is read once */
  be = kvt_backend(&c);
  kvt_emu_reset();
  h.version = ver;
  k = NULL;
  CU_ASSERT_EQUAL_FATAL(kvp_backend_open_key(be, "p256", &h, &k), CKR_OK);
  CU_ASSERT_EQUAL(kvt_sign(be, k, pub, 1), CKR_OK);
  CU_ASSERT_EQUAL(kvt_emu_count("get"), 1);
  CU_ASSERT_EQUAL(kvt_emu_total(), 3);
  be->ops->close_key(be, k);
  be->ops->destroy(be, 0);

  /* an old row (neither) and no resource known: today's path (challenge, token, get, sign) */
  c.resource = NULL;
  be = kvt_backend(&c);
  kvt_emu_reset();
  k = NULL;
  CU_ASSERT_EQUAL_FATAL(kvp_backend_open_key(be, "p256", NULL, &k), CKR_OK);
  CU_ASSERT_EQUAL(kvt_sign(be, k, pub, 1), CKR_OK);
  CU_ASSERT_EQUAL(kvt_emu_count("get"), 2);
  CU_ASSERT_EQUAL(kvt_emu_total(), 4);
  be->ops->close_key(be, k);
  be->ops->destroy(be, 0);
  EVP_PKEY_free(pub);
}

static void test_sign_only_principal(void)
{
  kvp_vault_conf c;
  kvp_backend *be;
  kvp_key *k = NULL;
  EVP_PKEY *pub = NULL;
  char ver[80], sec[1000];
  unsigned char pt[16] = "sign-only works", ct[600], out[600];
  size_t cl = sizeof(ct);
  CK_ULONG ol = sizeof(out);
  kvp_dec_alg dec = {KVP_DEC_RSA_OAEP, KVP_HASH_SHA256, KVP_HASH_SHA256};
  EVP_PKEY_CTX *ectx;

  CU_ASSERT_EQUAL_FATAL(kvt_registered(g_be, "rsa2048", ver, sizeof(ver), &pub), 0);
  kvt_emu_policy("app-nosign", "[\"sign\",\"decrypt\"]");
  snprintf(sec, sizeof(sec), "%s/app-nosign.secret", kvt_dir);
  kvt_conf(&c, "signonly");
  c.client_id = "app-nosign";
  c.client_secret_file = sec;
  c.resource = EMU_RESOURCE;
  be = kvt_backend(&c);
  kvt_emu_reset();
  CU_ASSERT_EQUAL_FATAL(kvt_open_hinted(be, "rsa2048", ver, pub, &k), CKR_OK);
  CU_ASSERT(k->can_sign && k->can_decrypt);
  CU_ASSERT_EQUAL(kvt_sign(be, k, pub, 1), CKR_OK);
  ectx = EVP_PKEY_CTX_new(pub, NULL);
  EVP_PKEY_encrypt_init(ectx);
  EVP_PKEY_CTX_set_rsa_padding(ectx, RSA_PKCS1_OAEP_PADDING);
  EVP_PKEY_CTX_set_rsa_oaep_md(ectx, EVP_sha256());
  EVP_PKEY_CTX_set_rsa_mgf1_md(ectx, EVP_sha256());
  CU_ASSERT_EQUAL(EVP_PKEY_encrypt(ectx, ct, &cl, pt, sizeof(pt)), 1);
  EVP_PKEY_CTX_free(ectx);
  CU_ASSERT_EQUAL(be->ops->decrypt(be, k, &dec, ct, cl, out, &ol), CKR_OK);
  CU_ASSERT(ol == sizeof(pt) && memcmp(out, pt, sizeof(pt)) == 0);
  CU_ASSERT_EQUAL(kvt_emu_count("get"), 0);
  CU_ASSERT_EQUAL(kvt_emu_count("list"), 0);
  be->ops->close_key(be, k);
  be->ops->destroy(be, 0);
  kvt_emu_policy("app-nosign", "[\"get\",\"list\"]");
  EVP_PKEY_free(pub);
}

static void test_rotation(void)
{
  kvp_vault_conf c;
  kvp_backend *be;
  kvp_key *k = NULL, *running = NULL;
  EVP_PKEY *pub = NULL;
  char ver[80], v2[80];
  kvp_key_ref_hint h = {NULL, NULL, 0};

  CU_ASSERT_EQUAL_FATAL(kvt_registered(g_be, "page-21", ver, sizeof(ver), &pub), 0);
  kvt_conf(&c, "rotation");
  c.resource = EMU_RESOURCE;
  be = kvt_backend(&c);
  /* the running process signed before the rotation */
  CU_ASSERT_EQUAL_FATAL(kvt_open_hinted(be, "page-21", ver, pub, &running), CKR_OK);
  CU_ASSERT_EQUAL(kvt_sign(be, running, pub, 1), CKR_OK);
  CU_ASSERT_EQUAL_FATAL(kvt_emu_rotate("page-21", v2, sizeof(v2)), 0);
  CU_ASSERT(strcmp(v2, ver) != 0);
  /* running process: the registered version */
  CU_ASSERT_EQUAL(kvt_sign(be, running, pub, 1), CKR_OK);
  be->ops->close_key(be, running);
  be->ops->destroy(be, 0);
  /* fresh process, row with SPKI, and row with the version only */
  be = kvt_backend(&c);
  CU_ASSERT_EQUAL_FATAL(kvt_open_hinted(be, "page-21", ver, pub, &k), CKR_OK);
  CU_ASSERT_STRING_EQUAL(k->version, ver);
  CU_ASSERT_EQUAL(kvt_sign(be, k, pub, 1), CKR_OK);
  be->ops->close_key(be, k);
  be->ops->destroy(be, 0);
  be = kvt_backend(&c);
  h.version = ver;
  k = NULL;
  CU_ASSERT_EQUAL_FATAL(kvp_backend_open_key(be, "page-21", &h, &k), CKR_OK);
  CU_ASSERT_STRING_EQUAL(k->version, ver);
  CU_ASSERT_EQUAL(EVP_PKEY_eq(k->pub, pub), 1);
  CU_ASSERT_EQUAL(kvt_sign(be, k, pub, 1), CKR_OK);
  be->ops->close_key(be, k);
  /* an unversioned open (a row without version) now gets the new version */
  k = NULL;
  CU_ASSERT_EQUAL_FATAL(be->ops->open_key(be, "page-21", &k), CKR_OK);
  CU_ASSERT_STRING_EQUAL(k->version, v2);
  CU_ASSERT_NOT_EQUAL(EVP_PKEY_eq(k->pub, pub), 1);
  be->ops->close_key(be, k);
  be->ops->destroy(be, 0);
  EVP_PKEY_free(pub);
}

/* A backend re-checking refusals after 1 s, with the key opened from its registry row. */
static kvp_backend *state_backend(const char *key, char *ver, size_t verlen, EVP_PKEY **pub,
                                  kvp_key **k)
{
  kvp_vault_conf c;
  kvp_backend *be;
  *k = NULL;
  if (kvt_registered(g_be, key, ver, verlen, pub) != 0)
    return NULL;
  kvt_conf(&c, "live");
  c.resource = EMU_RESOURCE;
  c.key_cache_s = 1;
  be = kvt_backend(&c);
  if (be != NULL && kvt_open_hinted(be, key, ver, *pub, k) != CKR_OK) {
    be->ops->destroy(be, 0);
    return NULL;
  }
  return be;
}

static void test_disable_enable(void)
{
  kvp_backend *be;
  kvp_key *k;
  EVP_PKEY *pub = NULL;
  char ver[80];
  long mark;

  be = state_backend("page-22", ver, sizeof(ver), &pub, &k);
  CU_ASSERT_PTR_NOT_NULL_FATAL(be);
  CU_ASSERT_EQUAL(kvt_sign(be, k, pub, 1), CKR_OK);
  kvt_emu_key("page-22", NULL, "{\"enabled\":false}", NULL);
  kvt_emu_reset();
  mark = kvt_log_size();
  CU_ASSERT_EQUAL(kvt_sign(be, k, pub, 0), CKR_KEY_FUNCTION_NOT_PERMITTED);
  CU_ASSERT_EQUAL(kvt_emu_count("sign"), 1); /* the vault said 403 KeyDisabled ... */
  CU_ASSERT_EQUAL(kvt_emu_count("get"), 1);  /* ... which refreshed the state */
  CU_ASSERT(kvt_log_contains_after(mark, "vault live: key page-22: sign refused: the key is "
                                         "disabled"));
  /* refused locally now, logged once (the second refusal at debug level) */
  mark = kvt_log_size();
  CU_ASSERT_EQUAL(kvt_sign(be, k, pub, 0), CKR_KEY_FUNCTION_NOT_PERMITTED);
  CU_ASSERT_EQUAL(kvt_emu_total(), 2);
  CU_ASSERT(kvt_log_contains_after(mark, "DEBUG"));
  CU_ASSERT(!kvt_log_contains_after(mark, "ERROR"));
  /* re-enabled: signs again within key_cache_s, without a restart */
  kvt_emu_key("page-22", NULL, "{\"enabled\":true}", NULL);
  usleep(1100000);
  CU_ASSERT_EQUAL(kvt_sign(be, k, pub, 1), CKR_OK);
  be->ops->close_key(be, k);
  be->ops->destroy(be, 0);
  EVP_PKEY_free(pub);
}

static void test_nbf_soon(void)
{
  kvp_backend *be;
  kvp_key *k;
  EVP_PKEY *pub = NULL;
  char ver[80], attrs[128];
  long nbf = (long)time(NULL) + 2, before;

  be = state_backend("page-23", ver, sizeof(ver), &pub, &k);
  CU_ASSERT_PTR_NOT_NULL_FATAL(be);
  snprintf(attrs, sizeof(attrs), "{\"nbf\":%ld}", nbf);
  kvt_emu_key("page-23", NULL, attrs, NULL);
  CU_ASSERT_EQUAL(kvt_sign(be, k, pub, 0), CKR_KEY_FUNCTION_NOT_PERMITTED);
  CU_ASSERT(kvt_log_contains("vault live: key page-23: sign refused: the key is not valid "
                             "before "));
  /* before nbf: refused without a request */
  before = kvt_emu_total();
  CU_ASSERT_EQUAL(kvt_sign(be, k, pub, 0), CKR_KEY_FUNCTION_NOT_PERMITTED);
  CU_ASSERT_EQUAL(kvt_emu_total(), before);
  while ((long)time(NULL) < nbf)
    usleep(100000);
  CU_ASSERT_EQUAL(kvt_sign(be, k, pub, 1), CKR_OK);
  kvt_emu_key("page-23", NULL, "{\"nbf\":null}", NULL);
  be->ops->close_key(be, k);
  be->ops->destroy(be, 0);
  EVP_PKEY_free(pub);
}

static void test_exp_extended(void)
{
  kvp_backend *be;
  kvp_key *k;
  EVP_PKEY *pub = NULL;
  char ver[80], attrs[128];
  long exp = (long)time(NULL) + 2;

  be = state_backend("page-20", ver, sizeof(ver), &pub, &k);
  CU_ASSERT_PTR_NOT_NULL_FATAL(be);
  snprintf(attrs, sizeof(attrs), "{\"exp\":%ld}", exp);
  kvt_emu_key("page-20", NULL, attrs, NULL);
  CU_ASSERT_EQUAL(kvt_sign(be, k, pub, 1), CKR_OK);
  while ((long)time(NULL) < exp)
    usleep(100000);
  CU_ASSERT_EQUAL(kvt_sign(be, k, pub, 0), CKR_KEY_FUNCTION_NOT_PERMITTED);
  CU_ASSERT(kvt_log_contains("vault live: key page-20: sign refused: the key expired at "));
  /* exp extended while the process runs */
  snprintf(attrs, sizeof(attrs), "{\"exp\":%ld}", exp + 3600);
  kvt_emu_key("page-20", NULL, attrs, NULL);
  usleep(1100000);
  CU_ASSERT_EQUAL(kvt_sign(be, k, pub, 1), CKR_OK);
  kvt_emu_key("page-20", NULL, "{\"exp\":null}", NULL);
  be->ops->close_key(be, k);
  be->ops->destroy(be, 0);
  EVP_PKEY_free(pub);
}

static void test_refusal_causes(void)
{
  kvp_vault_conf c;
  kvp_backend *be;
  kvp_key *k = NULL;
  EVP_PKEY *pub = NULL;
  char ver[80], sec[1000];

  /* key_ops without sign (read from the vault: an old row) */
  CU_ASSERT_EQUAL_FATAL(g_be->ops->open_key(g_be, "verifyonly", &k), CKR_OK);
  CU_ASSERT_EQUAL(kvt_sign(g_be, k, NULL, 0), CKR_KEY_FUNCTION_NOT_PERMITTED);
  CU_ASSERT(kvt_log_contains("key verifyonly: sign refused: the key's key_ops do not allow "
                             "'sign'"));
  g_be->ops->close_key(g_be, k);
  /* the principal lacks the permission: named */
  CU_ASSERT_EQUAL_FATAL(kvt_registered(g_be, "p384", ver, sizeof(ver), &pub), 0);
  snprintf(sec, sizeof(sec), "%s/app-nosign.secret", kvt_dir);
  kvt_conf(&c, "noperm");
  c.client_id = "app-nosign";
  c.client_secret_file = sec;
  c.resource = EMU_RESOURCE;
  be = kvt_backend(&c);
  k = NULL;
  CU_ASSERT_EQUAL_FATAL(kvt_open_hinted(be, "p384", ver, pub, &k), CKR_OK);
  CU_ASSERT_EQUAL(kvt_sign(be, k, pub, 0), CKR_KEY_FUNCTION_NOT_PERMITTED);
  CU_ASSERT(kvt_log_contains("vault noperm: key p384: sign refused: the application lacks the "
                             "'sign' permission"));
  be->ops->close_key(be, k);
  be->ops->destroy(be, 0);
  EVP_PKEY_free(pub);
}

/* Signs per second in [from, to) (ms since the epoch) among times t[0..n). */
static double rate_in(const double *t, size_t n, double from, double to)
{
  size_t i, c = 0;
  for (i = 0; i < n; i++)
    if (t[i] >= from && t[i] < to)
      c++;
  return (double)c * 1000.0 / (to - from);
}

static void test_429_recovery(void)
{
  kvp_vault_conf c;
  kvp_backend *be;
  kvp_key *k = NULL;
  EVP_PKEY *pub = NULL;
  char ver[80];
  double t0, *ok, t429[4], pre, post;
  size_t n, n429;
  int injected = 0;

  CU_ASSERT_EQUAL_FATAL(kvt_registered(g_be, "p256", ver, sizeof(ver), &pub), 0);
  kvt_conf(&c, "pace");
  c.resource = EMU_RESOURCE;
  be = kvt_backend(&c);
  CU_ASSERT_EQUAL_FATAL(kvt_open_hinted(be, "p256", ver, pub, &k), CKR_OK);
  CU_ASSERT_EQUAL(kvt_sign(be, k, pub, 0), CKR_OK);
  kvt_emu_reset();
  t0 = kvt_now();
  /* a client at ~30 signs/s; one 429 (Retry-After 1 s) after 4 s */
  while (kvt_now() - t0 < 15.0) {
    if (!injected && kvt_now() - t0 >= 4.0) {
      kvt_emu_fault("{\"endpoint\":\"sign\",\"status\":429,\"retryAfter\":1,\"times\":1}");
      injected = 1;
    }
    CU_ASSERT_EQUAL(kvt_sign(be, k, NULL, 0), CKR_OK);
    usleep(30000);
  }
  ok = calloc(4000, sizeof(double));
  CU_ASSERT_PTR_NOT_NULL_FATAL(ok);
  n = kvt_emu_times("sign", 200, ok, 4000);
  n429 = kvt_emu_times("sign", 429, t429, 4);
  CU_ASSERT_EQUAL_FATAL(n429, 1);
  pre = rate_in(ok, n, t429[0] - 3000, t429[0]);
  post = rate_in(ok, n, t429[0] + 6000, t429[0] + 10000);
  printf("\n  signs/s before the 429: %.1f; 6-10 s after it: %.1f (%.0f %%) ", pre, post,
         100.0 * post / pre);
  CU_ASSERT(pre > 5.0);
  /* a generous bound (the machine may be loaded): the old pacer kept a client
   * that had seen one 429 at ~2 signs/s for minutes, under 10 % of its rate;
   * the >= 90 % figure is the benchmark's (docs/keyvault.md) */
  CU_ASSERT(post >= 0.6 * pre);
  free(ok);
  be->ops->close_key(be, k);
  be->ops->destroy(be, 0);
  EVP_PKEY_free(pub);
}

static void test_hung_attempt(void)
{
  kvp_vault_conf c;
  kvp_backend *be;
  kvp_key *k = NULL;
  EVP_PKEY *pub = NULL;
  char ver[80];
  double t0, el;

  CU_ASSERT_EQUAL_FATAL(kvt_registered(g_be, "p256", ver, sizeof(ver), &pub), 0);
  kvt_conf(&c, "hung");
  c.resource = EMU_RESOURCE;
  c.timeout_ms = 8000;
  c.attempt_timeout_ms = 1000;
  be = kvt_backend(&c);
  CU_ASSERT_EQUAL_FATAL(kvt_open_hinted(be, "p256", ver, pub, &k), CKR_OK);
  CU_ASSERT_EQUAL(kvt_sign(be, k, pub, 0), CKR_OK); /* token and connection */
  kvt_emu_reset();
  kvt_emu_fault("{\"endpoint\":\"sign\",\"action\":\"delay\",\"delayMs\":20000,\"times\":1}");
  t0 = kvt_now();
  CU_ASSERT_EQUAL(kvt_sign(be, k, pub, 1), CKR_OK);
  el = kvt_now() - t0;
  CU_ASSERT_EQUAL(kvt_emu_count("sign"), 2);
  CU_ASSERT(el >= 0.9 && el < 8.0);
  printf("\n  hung attempt abandoned, retried: %.2f s ", el);
  be->ops->close_key(be, k);
  be->ops->destroy(be, 0);
  EVP_PKEY_free(pub);
}

static void test_authority_host_env(void)
{
  char conf[1000], tok[1000], ver[80], errbuf[512];
  kvp_config *cfg = NULL;
  const kvp_vault_conf *vc;
  kvp_backend *be = NULL;
  kvp_key *k = NULL;
  EVP_PKEY *pub = NULL;

  CU_ASSERT_EQUAL_FATAL(kvt_registered(g_be, "p256", ver, sizeof(ver), &pub), 0);
  snprintf(tok, sizeof(tok), "%s/live-federated-token", kvt_dir);
  kvt_federated_token(tok);
  snprintf(conf, sizeof(conf), "%s/live-wl.conf", kvt_dir);
  kvt_write_file(conf,
                 "[vault wl]\nurl = %s\nauth = workload-identity\ntenant_id = %s\n"
                 "client_id = app-wl\nca_file = %s\nresource = %s\nattempt_timeout_ms = 2500\n"
                 "key_cache_s = 7\n",
                 kvt_url, kvt_tenant, kvt_ca, EMU_RESOURCE);
  CU_ASSERT_EQUAL_FATAL(kvp_config_load(conf, &cfg, errbuf, sizeof(errbuf)), 0);
  vc = kvp_config_find_vault(cfg, "wl");
  CU_ASSERT_PTR_NOT_NULL_FATAL(vc);
  CU_ASSERT_PTR_NULL(vc->authority_host);
  CU_ASSERT_STRING_EQUAL(vc->resource, EMU_RESOURCE);
  CU_ASSERT_EQUAL(vc->attempt_timeout_ms, 2500);
  CU_ASSERT_EQUAL(vc->key_cache_s, 7);
  setenv("AZURE_AUTHORITY_HOST", kvt_url, 1);
  setenv("AZURE_FEDERATED_TOKEN_FILE", tok, 1);
  CU_ASSERT_EQUAL_FATAL(kvp_keyvault_backend_new(vc, &be), CKR_OK);
  kvt_emu_reset();
  CU_ASSERT_EQUAL_FATAL(kvt_open_hinted(be, "p256", ver, pub, &k), CKR_OK);
  CU_ASSERT_EQUAL(kvt_sign(be, k, pub, 1), CKR_OK);
  CU_ASSERT_EQUAL(kvt_emu_count("token"), 1);
  be->ops->close_key(be, k);
  be->ops->destroy(be, 0);
  unsetenv("AZURE_AUTHORITY_HOST");
  unsetenv("AZURE_FEDERATED_TOKEN_FILE");
  kvp_config_free(cfg);
  EVP_PKEY_free(pub);
}

static void test_refused_credential(void)
{
  kvp_vault_conf c;
  kvp_backend *be;
  kvp_key *k = NULL;
  EVP_PKEY *pub = NULL;
  char ver[80], sec[1000], right[200] = "";

  CU_ASSERT_EQUAL_FATAL(kvt_registered(g_be, "p256", ver, sizeof(ver), &pub), 0);
  CU_ASSERT(kvt_read_line(kvt_secret, right, sizeof(right)));
  snprintf(sec, sizeof(sec), "%s/live-wrong.secret", kvt_dir);
  kvt_write_file(sec, "not-the-secret\n");
  kvt_conf(&c, "refused");
  c.client_secret_file = sec;
  c.resource = EMU_RESOURCE;
  be = kvt_backend(&c);
  CU_ASSERT_EQUAL_FATAL(kvt_open_hinted(be, "p256", ver, pub, &k), CKR_OK);
  kvt_emu_reset();
  kvp_status_clear();
  CU_ASSERT_EQUAL(kvt_sign(be, k, pub, 0), CKR_DEVICE_ERROR);
  CU_ASSERT_EQUAL(kvt_emu_count("token"), 1);
  /* refused (invalid_client): not asked again within 30 s ... */
  kvp_status_clear();
  CU_ASSERT_EQUAL(kvt_sign(be, k, pub, 0), CKR_DEVICE_ERROR);
  CU_ASSERT_EQUAL(kvt_sign(be, k, pub, 0), CKR_DEVICE_ERROR);
  CU_ASSERT_EQUAL(kvt_emu_count("token"), 1);
  CU_ASSERT(kvp_status_reason() != NULL &&
            strstr(kvp_status_reason(), "refused this credential") != NULL);
  /* ... unless the secret file changes */
  kvt_write_file(sec, "%s\n", right);
  CU_ASSERT_EQUAL(kvt_sign(be, k, pub, 1), CKR_OK);
  CU_ASSERT_EQUAL(kvt_emu_count("token"), 2);
  be->ops->close_key(be, k);
  be->ops->destroy(be, 0);
  EVP_PKEY_free(pub);
  kvp_status_clear();
}

static void test_identity_endpoint_no_proxy(void)
{
  kvp_vault_conf c;
  kvp_backend *be;
  kvp_key *k = NULL;
  EVP_PKEY *pub = NULL;
  char ver[80], ie[200], ih[200] = "", path[1000];

  CU_ASSERT_EQUAL_FATAL(kvt_registered(g_be, "p256", ver, sizeof(ver), &pub), 0);
  snprintf(path, sizeof(path), "%s/identity-header", kvt_dir);
  CU_ASSERT(kvt_read_line(path, ih, sizeof(ih)));
  /* the identity endpoint by another name than the vault, and a proxy that answers nothing:
   * the vault is reached directly (no_proxy), the identity endpoint must not use the proxy */
  snprintf(ie, sizeof(ie), "https://localhost:%s/msi/token", strrchr(kvt_url, ':') + 1);
  setenv("IDENTITY_ENDPOINT", ie, 1);
  setenv("IDENTITY_HEADER", ih, 1);
  setenv("https_proxy", "http://127.0.0.1:9", 1);
  setenv("no_proxy", "127.0.0.1", 1);
  kvt_conf(&c, "mi");
  c.auth = KVP_AUTH_MANAGED_IDENTITY;
  c.client_id = NULL;
  c.client_secret_file = NULL;
  c.resource = EMU_RESOURCE;
  be = kvt_backend(&c);
  CU_ASSERT_EQUAL_FATAL(kvt_open_hinted(be, "p256", ver, pub, &k), CKR_OK);
  kvt_emu_reset();
  CU_ASSERT_EQUAL(kvt_sign(be, k, pub, 1), CKR_OK);
  CU_ASSERT_EQUAL(kvt_emu_count("msi"), 1);
  be->ops->close_key(be, k);
  be->ops->destroy(be, 0);
  unsetenv("IDENTITY_ENDPOINT");
  unsetenv("IDENTITY_HEADER");
  unsetenv("https_proxy");
  unsetenv("no_proxy");
  EVP_PKEY_free(pub);
}

int main(void)
{
  static CU_TestInfo tests[] = {
      {"token resource from the cloud suffix", test_cloud_resource},
      {"two requests to the first signature", test_two_requests},
      {"a sign/decrypt-only principal", test_sign_only_principal},
      {"rotation: the registered version signs", test_rotation},
      {"disabled, then enabled again", test_disable_enable},
      {"nbf in the near future", test_nbf_soon},
      {"exp extended while running", test_exp_extended},
      {"each refusal names its cause", test_refusal_causes},
      {"one 429, then the pace of before", test_429_recovery},
      {"a hung attempt is abandoned and retried", test_hung_attempt},
      {"AZURE_AUTHORITY_HOST (workload identity)", test_authority_host_env},
      {"a refused credential: once per 30 s, again when it changes", test_refused_credential},
      {"IDENTITY_ENDPOINT is not reached through a proxy", test_identity_endpoint_no_proxy},
      CU_TEST_INFO_NULL,
  };
  int rc = kvt_init("live-test.log");
  kvp_vault_conf c;

  if (rc != 0)
    return rc;
  kvt_conf(&c, "emu");
  if (kvp_keyvault_backend_new(&c, &g_be) != CKR_OK)
    return 1;
  rc = unit_run_suite("kv_live", NULL, NULL, tests);
  g_be->ops->destroy(g_be, 0);
  kvt_done();
  return rc;
}
