/*
 * Key provisioning in Key Vault (create, import, delete, list, show) against
 * the emulator started by fixture-setup.sh (KVP11_KV_DIR). Signatures made
 * with the new keys are verified with OpenSSL here; request counts and key
 * versions come from the emulator (GET /_emu/counters, GET /keys/NAME/versions).
 *
 * The seeded keys are never changed; every key made here is named kvprov-*
 * and deleted and purged again (also at the start, after a crashed run).
 * app-full gets the create/import/delete/purge permissions for the run and
 * its seeded permissions back at the end.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memmem */
#endif
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <CUnit/Basic.h>
#include <curl/curl.h>
#include <jansson.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/obj_mac.h>
#include <openssl/rsa.h>

#include "backend/backend.h"
#include "backend/keyvault/keyvault.h"
#include "core/cert.h"
#include "core/log.h"
#include "core/util.h"
#include "kvtest.h"


#define PERMS_SEED "[\"get\",\"list\",\"sign\",\"decrypt\"]"
#define PERMS_PROV                                                                                 \
  "[\"get\",\"list\",\"sign\",\"decrypt\",\"create\",\"import\",\"delete\",\"purge\"]"
#define PERMS_NOPROV "[\"get\",\"list\",\"sign\",\"decrypt\",\"purge\"]"

static const char *MY_KEYS[] = {
    "kvprov-rsa2048",   "kvprov-rsa3072",  "kvprov-rsa2048h", "kvprov-p256",
    "kvprov-p384",      "kvprov-p521",     "kvprov-signonly", "kvprov-dup",
    "kvprov-imp-rsa",   "kvprov-imp-p256", "kvprov-imp-p521", "kvprov-imp-500",
    "kvprov-imp-after", "kvprov-perm",     "kvprov-del",      "kvprov-cre-after"};

static kvp_backend *g_be;   /* timeouts as in production tests */
static kvp_backend *g_fast; /* short deadline: fault tests give up quickly */

/* ---- emulator control and data plane ---- */

/* "Authorization: Bearer <token of app-full>" (fetched once) */
static char g_auth[4096];

static const char *auth(void)
{
  char body[600], line[200] = "", *sec;
  FILE *f;
  json_t *tok;
  CURL *c;

  if (g_auth[0] != '\0')
    return g_auth;
  f = fopen(kvt_secret, "r");
  if (f != NULL) {
    if (fgets(line, sizeof(line), f) == NULL)
      line[0] = '\0';
    fclose(f);
  }
  line[strcspn(line, "\r\n")] = '\0';
  c = curl_easy_init();
  sec = curl_easy_escape(c, line, 0);
  curl_easy_cleanup(c);
  snprintf(body, sizeof(body),
           "grant_type=client_credentials&client_id=app-full&scope=https%%3A%%2F%%2F127.0.0.1%%2F."
           "default&client_secret=%s",
           sec);
  curl_free(sec);
  snprintf(line, sizeof(line), "/%s/oauth2/v2.0/token", kvt_tenant);
  /* the token endpoint reads the form whatever the content type */
  tok = kvt_http("POST", line, body, NULL, NULL);
  if (json_string_value(json_object_get(tok, "access_token")) != NULL)
    snprintf(g_auth, sizeof(g_auth), "Authorization: Bearer %s",
             json_string_value(json_object_get(tok, "access_token")));
  json_decref(tok);
  return g_auth;
}

/* Number of versions of a key (-1: no such key). */
static long versions(const char *name)
{
  char path[300];
  long st = 0, n;
  json_t *j;
  snprintf(path, sizeof(path), "/keys/%s/versions?api-version=7.5", name);
  j = kvt_http("GET", path, NULL, auth(), &st);
  n = st == 200 ? (long)json_array_size(json_object_get(j, "value")) : -1;
  json_decref(j);
  return n;
}

static long purge(const char *name)
{
  char path[300];
  long st = 0;
  snprintf(path, sizeof(path), "/deletedkeys/%s?api-version=7.5", name);
  json_decref(kvt_http("DELETE", path, NULL, auth(), &st));
  return st;
}

/* Delete (through the backend) and purge a key made here. */
static void remove_key(const char *name)
{
  g_be->ops->delete_key(g_be, name);
  purge(name);
}


/* ---- backends and local crypto ---- */

static CK_RV new_backend(const char *name, long timeout_ms, int retries, kvp_backend **out)
{
  kvp_vault_conf c;
  memset(&c, 0, sizeof(c));
  c.name = (char *)name;
  c.url = kvt_url;
  c.api_version = "7.5";
  c.auth = KVP_AUTH_CLIENT_SECRET;
  c.tenant_id = (char *)kvt_tenant;
  c.client_id = "app-full";
  c.client_secret_file = kvt_secret;
  c.authority_host = kvt_url;
  c.ca_file = kvt_ca;
  c.timeout_ms = timeout_ms;
  c.max_retries = retries;
  return kvp_keyvault_backend_new(&c, out);
}

static int ossl_verify(EVP_PKEY *pub, const kvp_sig_alg *alg, const unsigned char *d, size_t dl,
                       const unsigned char *sig, size_t sl)
{
  EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(pub, NULL);
  int ok = 0;
  if (ctx == NULL || EVP_PKEY_verify_init(ctx) != 1)
    goto out;
  if (alg->scheme == KVP_SIG_ECDSA) {
    ECDSA_SIG *es = ECDSA_SIG_new();
    unsigned char *der = NULL;
    int derlen;
    ECDSA_SIG_set0(es, BN_bin2bn(sig, (int)sl / 2, NULL),
                   BN_bin2bn(sig + sl / 2, (int)sl / 2, NULL));
    derlen = i2d_ECDSA_SIG(es, &der);
    ok = derlen > 0 && EVP_PKEY_verify(ctx, der, (size_t)derlen, d, dl) == 1;
    ECDSA_SIG_free(es);
    OPENSSL_free(der);
  } else {
    EVP_PKEY_CTX_set_signature_md(ctx, kvp_hash_md(alg->hash));
    EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING);
    ok = EVP_PKEY_verify(ctx, sig, sl, d, dl) == 1;
  }
out:
  EVP_PKEY_CTX_free(ctx);
  return ok;
}

/* Sign "msg" through the backend; verify with check (the key's own public
 * key or the original of an imported key). */
static CK_RV sign_verify(kvp_backend *be, kvp_key *k, EVP_PKEY *check)
{
  kvp_sig_alg alg = {0};
  unsigned char d[64], sig[600];
  unsigned int dl = 0;
  CK_ULONG sl = sizeof(sig);
  CK_RV rv;
  const EVP_MD *md = k->bits == 384 ? EVP_sha384() : k->bits == 521 ? EVP_sha512() : EVP_sha256();
  if (k->type == KVP_KEY_RSA) {
    alg.scheme = KVP_SIG_RSA_PKCS1;
    alg.hash = KVP_HASH_SHA256;
    md = EVP_sha256();
  } else {
    alg.scheme = KVP_SIG_ECDSA;
  }
  EVP_Digest("msg", 3, d, &dl, md, NULL);
  rv = be->ops->sign(be, k, &alg, d, dl, sig, &sl);
  if (rv == CKR_OK)
    CU_ASSERT(ossl_verify(check, &alg, d, dl, sig, sl));
  return rv;
}

static void setup(void)
{
  json_decref(kvt_emu("POST", "/_emu/reset", "{}"));
}

static void teardown(void)
{
  kvt_emu_clear_faults();
  kvt_emu_policy("app-full", PERMS_PROV);
}

/* ---- tests ---- */

static void test_create_and_sign(void)
{
  static const struct {
    const char *name;
    kvp_key_type type;
    unsigned bits;
    int nid;
    int hsm;
    const char *kty;
  } cases[] = {
      {"kvprov-rsa2048", KVP_KEY_RSA, 2048, NID_undef, 0, "RSA"},
      {"kvprov-rsa3072", KVP_KEY_RSA, 3072, NID_undef, 0, "RSA"},
      {"kvprov-rsa2048h", KVP_KEY_RSA, 2048, NID_undef, 1, "RSA-HSM"},
      {"kvprov-p256", KVP_KEY_EC, 256, NID_X9_62_prime256v1, 0, "EC"},
      {"kvprov-p384", KVP_KEY_EC, 384, NID_secp384r1, 1, "EC-HSM"},
      {"kvprov-p521", KVP_KEY_EC, 521, NID_secp521r1, 0, "EC"},
  };
  size_t i;
  for (i = 0; i < KVP_ARRAY_SIZE(cases); i++) {
    kvp_key_spec spec;
    kvp_key *k = NULL;
    kvp_key_info info;
    memset(&spec, 0, sizeof(spec));
    spec.type = cases[i].type;
    spec.bits = cases[i].bits;
    spec.curve_nid = cases[i].nid;
    spec.hsm_protected = cases[i].hsm;
    CU_ASSERT_EQUAL(g_be->ops->create_key(g_be, cases[i].name, &spec, &k), CKR_OK);
    if (k == NULL)
      continue;
    CU_ASSERT_EQUAL(k->type, cases[i].type);
    CU_ASSERT_EQUAL(k->bits, cases[i].bits);
    if (cases[i].type == KVP_KEY_EC)
      CU_ASSERT_EQUAL(k->curve_nid, cases[i].nid);
    CU_ASSERT(k->can_sign);
    /* defaults: RSA signs and decrypts, EC signs */
    CU_ASSERT_EQUAL(k->can_decrypt, cases[i].type == KVP_KEY_RSA);
    CU_ASSERT(k->version != NULL && strlen(k->version) == 32);
    CU_ASSERT_EQUAL(sign_verify(g_be, k, k->pub), CKR_OK);
    CU_ASSERT_EQUAL(g_be->ops->key_info(g_be, cases[i].name, &info), CKR_OK);
    CU_ASSERT(info.kty != NULL && strcmp(info.kty, cases[i].kty) == 0);
    CU_ASSERT_EQUAL(info.hsm_protected, cases[i].hsm);
    CU_ASSERT_EQUAL(info.ops, cases[i].type == KVP_KEY_RSA ? (KVP_KEYOP_SIGN | KVP_KEYOP_DECRYPT)
                                                           : KVP_KEYOP_SIGN);
    CU_ASSERT(info.pub != NULL && kvp_pubkey_equal(info.pub, k->pub));
    CU_ASSERT(info.version != NULL && strcmp(info.version, k->version) == 0);
    CU_ASSERT(info.enabled && info.created > 0 && info.expires == 0);
    kvp_key_info_clear(&info);
    g_be->ops->close_key(g_be, k);
    remove_key(cases[i].name);
  }
  CU_ASSERT(kvt_log_contains("vault emu: key kvprov-p521 created (P-521"));
  /* ops: sign only */
  {
    kvp_key_spec spec = {KVP_KEY_RSA, 2048, NID_undef, KVP_KEYOP_SIGN, 0, NULL, 0};
    kvp_key *k = NULL;
    kvp_key_info info;
    CU_ASSERT_EQUAL_FATAL(g_be->ops->create_key(g_be, "kvprov-signonly", &spec, &k), CKR_OK);
    CU_ASSERT(k->can_sign && !k->can_decrypt);
    CU_ASSERT_EQUAL(g_be->ops->key_info(g_be, "kvprov-signonly", &info), CKR_OK);
    CU_ASSERT_EQUAL(info.ops, KVP_KEYOP_SIGN);
    kvp_key_info_clear(&info);
    g_be->ops->close_key(g_be, k);
    remove_key("kvprov-signonly");
  }
}

static void test_create_existing(void)
{
  kvp_key_spec spec = {KVP_KEY_EC, 0, NID_X9_62_prime256v1, 0, 0, NULL, 0};
  kvp_key *k = NULL, *k2 = NULL;
  CU_ASSERT_EQUAL_FATAL(g_be->ops->create_key(g_be, "kvprov-dup", &spec, &k), CKR_OK);
  CU_ASSERT_EQUAL(kvt_emu_count("create"), 1);
  CU_ASSERT_EQUAL(g_be->ops->create_key(g_be, "kvprov-dup", &spec, &k2),
                  CKR_ATTRIBUTE_VALUE_INVALID);
  CU_ASSERT_PTR_NULL(k2);
  CU_ASSERT(kvt_log_contains("vault emu: key kvprov-dup exists already; kvp11 does not replace keys"));
  /* names are case-insensitive in Key Vault */
  CU_ASSERT_EQUAL(g_be->ops->create_key(g_be, "KVPROV-DUP", &spec, &k2),
                  CKR_ATTRIBUTE_VALUE_INVALID);
  CU_ASSERT_EQUAL(kvt_emu_count("create"), 1);
  CU_ASSERT_EQUAL(versions("kvprov-dup"), 1);
  /* a seeded key is not touched either */
  spec.curve_nid = NID_secp384r1;
  CU_ASSERT_EQUAL(g_be->ops->create_key(g_be, "p384", &spec, &k2), CKR_ATTRIBUTE_VALUE_INVALID);
  CU_ASSERT_EQUAL(kvt_emu_count("create"), 1);
  CU_ASSERT_EQUAL(versions("p384"), 1);
  g_be->ops->close_key(g_be, k);
  remove_key("kvprov-dup");
}

static void test_bad_names_and_specs(void)
{
  static const char *bad[] = {"", "bad_name", "a/b", "a.b", "a b", "k\xc3\xa9y", "a?x"};
  char long_name[200];
  kvp_key_spec spec = {KVP_KEY_EC, 0, NID_X9_62_prime256v1, 0, 0, NULL, 0};
  kvp_key *k = NULL;
  kvp_key_info info;
  EVP_PKEY *small = EVP_RSA_gen(1024), *k1 = EVP_EC_gen("secp256k1"), *ed = NULL;
  long total;
  size_t i;

  {
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "ED25519", NULL);
    if (ctx != NULL && EVP_PKEY_keygen_init(ctx) == 1)
      EVP_PKEY_keygen(ctx, &ed);
    EVP_PKEY_CTX_free(ctx);
  }
  CU_ASSERT_PTR_NOT_NULL_FATAL(small);
  memset(long_name, 'a', 128);
  long_name[128] = '\0';
  total = kvt_emu_total();
  for (i = 0; i < KVP_ARRAY_SIZE(bad); i++) {
    CU_ASSERT_EQUAL(g_be->ops->create_key(g_be, bad[i], &spec, &k), CKR_ATTRIBUTE_VALUE_INVALID);
    CU_ASSERT_EQUAL(g_be->ops->import_key(g_be, bad[i], small, &spec, &k),
                    CKR_ATTRIBUTE_VALUE_INVALID);
    CU_ASSERT_EQUAL(g_be->ops->delete_key(g_be, bad[i]), CKR_ATTRIBUTE_VALUE_INVALID);
    CU_ASSERT_EQUAL(g_be->ops->key_info(g_be, bad[i], &info), CKR_ATTRIBUTE_VALUE_INVALID);
  }
  CU_ASSERT_EQUAL(g_be->ops->create_key(g_be, NULL, &spec, &k), CKR_ATTRIBUTE_VALUE_INVALID);
  CU_ASSERT_EQUAL(g_be->ops->create_key(g_be, long_name, &spec, &k), CKR_ATTRIBUTE_VALUE_INVALID);
  CU_ASSERT(kvt_log_contains("'bad_name' is not a valid Key Vault key name"));
  /* specs refused before any request */
  spec.ops = KVP_KEYOP_SIGN | KVP_KEYOP_DECRYPT;
  CU_ASSERT_EQUAL(g_be->ops->create_key(g_be, "kvprov-x", &spec, &k), CKR_TEMPLATE_INCONSISTENT);
  CU_ASSERT(kvt_log_contains("vault emu: key kvprov-x: an EC key cannot decrypt"));
  spec.ops = 0;
  spec.curve_nid = NID_secp256k1;
  CU_ASSERT_EQUAL(g_be->ops->create_key(g_be, "kvprov-x", &spec, &k), CKR_CURVE_NOT_SUPPORTED);
  spec.type = KVP_KEY_RSA;
  spec.bits = 1024;
  CU_ASSERT_EQUAL(g_be->ops->create_key(g_be, "kvprov-x", &spec, &k), CKR_KEY_SIZE_RANGE);
  CU_ASSERT(kvt_log_contains("RSA keys of 1024 bits cannot be created"));
  spec.bits = 2047;
  CU_ASSERT_EQUAL(g_be->ops->create_key(g_be, "kvprov-x", &spec, &k), CKR_KEY_SIZE_RANGE);
  spec.bits = 2048;
  spec.type = (kvp_key_type)7;
  CU_ASSERT_EQUAL(g_be->ops->create_key(g_be, "kvprov-x", &spec, &k), CKR_KEY_TYPE_INCONSISTENT);
  spec.type = KVP_KEY_RSA;
  spec.ops = 0;
  CU_ASSERT_EQUAL(g_be->ops->import_key(g_be, "kvprov-x", small, &spec, &k), CKR_KEY_SIZE_RANGE);
  CU_ASSERT(kvt_log_contains("an RSA key of 1024 bits cannot be imported"));
  if (k1 != NULL) {
    CU_ASSERT_EQUAL(g_be->ops->import_key(g_be, "kvprov-x", k1, &spec, &k),
                    CKR_KEY_TYPE_INCONSISTENT);
    CU_ASSERT(kvt_log_contains("an EC key on curve secp256k1 cannot be imported"));
  }
  if (ed != NULL) {
    CU_ASSERT_EQUAL(g_be->ops->import_key(g_be, "kvprov-x", ed, &spec, &k),
                    CKR_KEY_TYPE_INCONSISTENT);
    CU_ASSERT(kvt_log_contains("a ED25519 key cannot be imported"));
  }
  CU_ASSERT_PTR_NULL(k);
  CU_ASSERT_EQUAL(kvt_emu_total(), total);
  /* the longest valid name passes the check (and is looked up) */
  long_name[127] = '\0';
  CU_ASSERT_EQUAL(g_be->ops->key_info(g_be, long_name, &info), CKR_KEY_HANDLE_INVALID);
  CU_ASSERT_EQUAL(kvt_emu_count("get"), 1);
  EVP_PKEY_free(small);
  EVP_PKEY_free(k1);
  EVP_PKEY_free(ed);
}

/* 1 when needle occurs in a writable anonymous mapping or the heap of this
 * process (not the stacks: the test keeps its own copy there). */
static int heap_scan_possible(void)
{
  const char *pre = getenv("LD_PRELOAD");
#if defined(__SANITIZE_ADDRESS__)
  return 0; /* redzones and freed blocks must not be read */
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
  return 0;
#endif
#endif
  /* valgrind: reading freed blocks is an error there */
  return pre == NULL || strstr(pre, "vgpreload") == NULL;
}

static int heap_contains(const char *needle)
{
  FILE *f = fopen("/proc/self/maps", "r");
  char line[512];
  size_t nl = strlen(needle);
  int found = 0;
  if (f == NULL)
    return 0;
  while (!found && fgets(line, sizeof(line), f) != NULL) {
    unsigned long lo, hi;
    char perms[8] = "", path[256] = "";
    if (sscanf(line, "%lx-%lx %7s %*s %*s %*s %255s", &lo, &hi, perms, path) < 3)
      continue;
    if (perms[0] != 'r' || perms[1] != 'w')
      continue;
    if (path[0] != '\0' && strcmp(path, "[heap]") != 0)
      continue;
    if (hi - lo >= nl && memmem((const void *)(uintptr_t)lo, (size_t)(hi - lo), needle, nl) != NULL)
      found = 1;
  }
  fclose(f);
  return found;
}

/* The first 40 base64url characters of the private exponent / scalar. */
static void d_b64(EVP_PKEY *priv, char *out, size_t outlen)
{
  BIGNUM *d = NULL;
  unsigned char bin[600], txt[900];
  int n = 0, i;
  out[0] = '\0';
  if (EVP_PKEY_get_bn_param(priv, "d", &d) != 1 && EVP_PKEY_get_bn_param(priv, "priv", &d) != 1)
    return;
  n = BN_bn2bin(d, bin);
  BN_clear_free(d);
  n = EVP_EncodeBlock(txt, bin, n);
  OPENSSL_cleanse(bin, sizeof(bin));
  for (i = 0; i < n; i++)
    txt[i] = txt[i] == '+' ? '-' : txt[i] == '/' ? '_' : txt[i];
  snprintf(out, outlen, "%.40s", (const char *)txt);
  OPENSSL_cleanse(txt, sizeof(txt));
}

static void test_import(void)
{
  static const struct {
    const char *name;
    const char *gen; /* "rsa" or a curve */
    int hsm;
  } cases[] = {
      {"kvprov-imp-rsa", "rsa", 0},
      {"kvprov-imp-p256", "P-256", 1},
      {"kvprov-imp-p521", "P-521", 0},
  };
  size_t i;
  for (i = 0; i < KVP_ARRAY_SIZE(cases); i++) {
    EVP_PKEY *priv =
        strcmp(cases[i].gen, "rsa") == 0 ? EVP_RSA_gen(2048) : EVP_EC_gen(cases[i].gen);
    kvp_key_spec spec = {KVP_KEY_RSA, 0, NID_undef, 0, cases[i].hsm, NULL, 0};
    kvp_key *k = NULL, *k2 = NULL;
    kvp_key_info info;
    CU_ASSERT_PTR_NOT_NULL_FATAL(priv);
    char secret[64];
    d_b64(priv, secret, sizeof(secret));
    CU_ASSERT(strlen(secret) == 40);
    if (i == 0 && heap_scan_possible()) {
      /* the scan finds a copy when there is one */
      char *copy = strdup(secret);
      CU_ASSERT(heap_contains(secret));
      kvp_free_secret(copy);
      CU_ASSERT(!heap_contains(secret));
    }
    CU_ASSERT_EQUAL(g_be->ops->import_key(g_be, cases[i].name, priv, &spec, &k), CKR_OK);
    /* no key material in the log, nor (as JWK text) left in the heap */
    CU_ASSERT(!kvt_log_contains(secret));
    if (heap_scan_possible())
      CU_ASSERT(!heap_contains(secret));
    if (k != NULL) {
      CU_ASSERT(kvp_pubkey_equal(k->pub, priv));
      CU_ASSERT(k->can_sign);
      CU_ASSERT_EQUAL(sign_verify(g_be, k, priv), CKR_OK);
      CU_ASSERT_EQUAL(g_be->ops->key_info(g_be, cases[i].name, &info), CKR_OK);
      CU_ASSERT_EQUAL(info.hsm_protected, cases[i].hsm);
      CU_ASSERT_EQUAL(info.ops, strcmp(cases[i].gen, "rsa") == 0
                                    ? (KVP_KEYOP_SIGN | KVP_KEYOP_DECRYPT)
                                    : KVP_KEYOP_SIGN);
      kvp_key_info_clear(&info);
      /* importing again is refused, and the vault keeps one version */
      CU_ASSERT_EQUAL(g_be->ops->import_key(g_be, cases[i].name, priv, &spec, &k2),
                      CKR_ATTRIBUTE_VALUE_INVALID);
      CU_ASSERT_EQUAL(versions(cases[i].name), 1);
      g_be->ops->close_key(g_be, k);
    }
    remove_key(cases[i].name);
    EVP_PKEY_free(priv);
  }
  CU_ASSERT_EQUAL(kvt_emu_count("import"), 3);
  /* over a seeded key */
  {
    EVP_PKEY *priv = EVP_RSA_gen(2048);
    kvp_key_spec spec = {KVP_KEY_RSA, 0, NID_undef, 0, 0, NULL, 0};
    kvp_key *k = NULL;
    CU_ASSERT_EQUAL(g_be->ops->import_key(g_be, "rsa2048", priv, &spec, &k),
                    CKR_ATTRIBUTE_VALUE_INVALID);
    CU_ASSERT_EQUAL(versions("rsa2048"), 1);
    CU_ASSERT_EQUAL(kvt_emu_count("import"), 3);
    /* EC with decrypt */
    EVP_PKEY_free(priv);
    priv = EVP_EC_gen("P-384");
    spec.ops = KVP_KEYOP_DECRYPT;
    CU_ASSERT_EQUAL(g_be->ops->import_key(g_be, "kvprov-x", priv, &spec, &k),
                    CKR_TEMPLATE_INCONSISTENT);
    EVP_PKEY_free(priv);
  }
}

static void test_import_fault_500(void)
{
  EVP_PKEY *priv = EVP_EC_gen("P-256");
  kvp_key_spec spec = {KVP_KEY_EC, 0, NID_undef, 0, 0, NULL, 0};
  kvp_key *k = NULL;
  kvp_key_info info;
  CU_ASSERT_PTR_NOT_NULL_FATAL(priv);
  kvt_emu_fault("{\"endpoint\":\"import\",\"status\":500,\"times\":-1}");
  CU_ASSERT_EQUAL(g_fast->ops->import_key(g_fast, "kvprov-imp-500", priv, &spec, &k),
                  CKR_DEVICE_ERROR);
  CU_ASSERT_PTR_NULL(k);
  CU_ASSERT(kvt_emu_count("import") >= 1);
  kvt_emu_clear_faults();
  CU_ASSERT_EQUAL(g_be->ops->key_info(g_be, "kvprov-imp-500", &info), CKR_KEY_HANDLE_INVALID);
  CU_ASSERT_EQUAL(versions("kvprov-imp-500"), -1);
  EVP_PKEY_free(priv);
}

static void test_import_unknown_outcome(void)
{
  EVP_PKEY *priv = EVP_RSA_gen(2048);
  kvp_key_spec spec = {KVP_KEY_RSA, 0, NID_undef, KVP_KEYOP_SIGN, 0, NULL, 0};
  kvp_key *k = NULL;
  CU_ASSERT_PTR_NOT_NULL_FATAL(priv);
  /* every import is stored, and its answer lost (times -1: libcurl's own
   * resend on a reused connection is lost as well) */
  kvt_emu_fault("{\"endpoint\":\"import\",\"action\":\"after\",\"times\":-1}");
  CU_ASSERT_EQUAL(g_fast->ops->import_key(g_fast, "kvprov-imp-after", priv, &spec, &k), CKR_OK);
  kvt_emu_clear_faults();
  CU_ASSERT(kvt_emu_count("import") >= 1);
  CU_ASSERT(kvt_log_contains("vault fast: key kvprov-imp-after: the answer to import was lost, but "
                         "the key exists now with the imported public key"));
  if (k != NULL) {
    CU_ASSERT(kvp_pubkey_equal(k->pub, priv));
    CU_ASSERT_EQUAL(sign_verify(g_fast, k, priv), CKR_OK);
    g_fast->ops->close_key(g_fast, k);
  }
  remove_key("kvprov-imp-after");
  /* a lost answer for a key that did not land is a failure */
  k = NULL;
  kvt_emu_fault("{\"endpoint\":\"import\",\"action\":\"drop\",\"times\":-1}");
  CU_ASSERT_EQUAL(g_fast->ops->import_key(g_fast, "kvprov-imp-after", priv, &spec, &k),
                  CKR_DEVICE_ERROR);
  CU_ASSERT(kvt_log_contains("the import's outcome was unknown and the key is not in the vault"));
  kvt_emu_clear_faults();
  CU_ASSERT_EQUAL(versions("kvprov-imp-after"), -1);
  EVP_PKEY_free(priv);
}

static void test_create_unknown_outcome(void)
{
  kvp_key_spec spec = {KVP_KEY_EC, 0, NID_secp384r1, 0, 0, NULL, 0};
  kvp_key *k = NULL;
  kvt_emu_fault("{\"endpoint\":\"create\",\"action\":\"after\",\"times\":-1}");
  CU_ASSERT_EQUAL(g_fast->ops->create_key(g_fast, "kvprov-cre-after", &spec, &k), CKR_OK);
  kvt_emu_clear_faults();
  CU_ASSERT(kvt_emu_count("create") >= 1);
  CU_ASSERT(kvt_log_contains("vault fast: key kvprov-cre-after: the answer to create was lost, but "
                         "the key exists now; using it"));
  if (k != NULL) {
    CU_ASSERT_EQUAL(k->curve_nid, NID_secp384r1);
    CU_ASSERT_EQUAL(sign_verify(g_fast, k, k->pub), CKR_OK);
    g_fast->ops->close_key(g_fast, k);
  }
  remove_key("kvprov-cre-after");
  /* nothing stored: the failure stands */
  k = NULL;
  kvt_emu_fault("{\"endpoint\":\"create\",\"action\":\"truncate\",\"times\":-1}");
  CU_ASSERT_EQUAL(g_fast->ops->create_key(g_fast, "kvprov-cre-after", &spec, &k), CKR_DEVICE_ERROR);
  CU_ASSERT_PTR_NULL(k);
  kvt_emu_clear_faults();
  CU_ASSERT_EQUAL(versions("kvprov-cre-after"), -1);
}

static void test_no_permission(void)
{
  kvp_key_spec spec = {KVP_KEY_EC, 0, NID_X9_62_prime256v1, 0, 0, NULL, 0};
  kvp_key *k = NULL;
  EVP_PKEY *priv = EVP_EC_gen("P-256");
  CU_ASSERT_EQUAL_FATAL(g_be->ops->create_key(g_be, "kvprov-perm", &spec, &k), CKR_OK);
  g_be->ops->close_key(g_be, k);
  k = NULL;
  kvt_emu_policy("app-full", PERMS_NOPROV);
  CU_ASSERT_EQUAL(g_be->ops->create_key(g_be, "kvprov-x", &spec, &k),
                  CKR_KEY_FUNCTION_NOT_PERMITTED);
  CU_ASSERT(kvt_log_contains("vault emu: key kvprov-x: the application lacks the 'create' permission"));
  CU_ASSERT_EQUAL(g_be->ops->import_key(g_be, "kvprov-x", priv, &spec, &k),
                  CKR_KEY_FUNCTION_NOT_PERMITTED);
  CU_ASSERT(kvt_log_contains("vault emu: key kvprov-x: the application lacks the 'import' permission"));
  CU_ASSERT_EQUAL(g_be->ops->delete_key(g_be, "kvprov-perm"), CKR_KEY_FUNCTION_NOT_PERMITTED);
  CU_ASSERT(
      kvt_log_contains("vault emu: key kvprov-perm: the application lacks the 'delete' permission"));
  CU_ASSERT_PTR_NULL(k);
  CU_ASSERT_EQUAL(versions("kvprov-perm"), 1);
  CU_ASSERT_EQUAL(versions("kvprov-x"), -1);
  kvt_emu_policy("app-full", PERMS_PROV);
  remove_key("kvprov-perm");
  EVP_PKEY_free(priv);
}

static void test_delete(void)
{
  kvp_key_spec spec = {KVP_KEY_EC, 0, NID_X9_62_prime256v1, 0, 0, NULL, 0};
  kvp_key *k = NULL, *k2 = NULL;
  kvp_key_info info;
  CU_ASSERT_EQUAL_FATAL(g_be->ops->create_key(g_be, "kvprov-del", &spec, &k), CKR_OK);
  CU_ASSERT_EQUAL(g_be->ops->delete_key(g_be, "kvprov-del"), CKR_OK);
  CU_ASSERT_EQUAL(g_be->ops->key_info(g_be, "kvprov-del", &info), CKR_KEY_HANDLE_INVALID);
  /* the cached public key went with it */
  CU_ASSERT_EQUAL(g_be->ops->open_key(g_be, "kvprov-del", &k2), CKR_KEY_HANDLE_INVALID);
  CU_ASSERT_EQUAL(sign_verify(g_be, k, k->pub), CKR_KEY_HANDLE_INVALID);
  CU_ASSERT_EQUAL(g_be->ops->delete_key(g_be, "kvprov-del"), CKR_KEY_HANDLE_INVALID);
  /* the name stays taken until the deleted key is purged */
  CU_ASSERT_EQUAL(g_be->ops->create_key(g_be, "kvprov-del", &spec, &k2),
                  CKR_ATTRIBUTE_VALUE_INVALID);
  CU_ASSERT(kvt_log_contains("ObjectIsDeletedButRecoverable"));
  CU_ASSERT_EQUAL(purge("kvprov-del"), 204);
  CU_ASSERT_EQUAL(g_be->ops->create_key(g_be, "kvprov-del", &spec, &k2), CKR_OK);
  CU_ASSERT(k2 != NULL && !kvp_pubkey_equal(k2->pub, k->pub));
  g_be->ops->close_key(g_be, k);
  g_be->ops->close_key(g_be, k2);
  remove_key("kvprov-del");
}

/* issue 10 item 9: the undo of a create never deletes a key with versions kvp11 did not make */
static void test_undo_foreign_version(void)
{
  kvp_key_spec spec = {KVP_KEY_EC, 0, NID_X9_62_prime256v1, 0, 0, NULL, 0};
  kvp_key *k = NULL;
  kvp_backend *other = NULL;
  json_t *j;
  CU_ASSERT_EQUAL_FATAL(g_be->ops->create_key(g_be, "kvprov-undo", &spec, &k), CKR_OK);
  /* another creator adds a version at the same moment */
  j = kvt_emu("POST", "/_emu/rotate", "{\"name\":\"kvprov-undo\"}");
  json_decref(j);
  CU_ASSERT_EQUAL(versions("kvprov-undo"), 2);
  /* the undo (delete by the backend that created it) refuses */
  CU_ASSERT_EQUAL(g_be->ops->delete_key(g_be, "kvprov-undo"), CKR_ATTRIBUTE_VALUE_INVALID);
  CU_ASSERT(kvt_log_contains("key kvprov-undo has versions kvp11 did not create"));
  CU_ASSERT_EQUAL(versions("kvprov-undo"), 2);
  g_be->ops->close_key(g_be, k);
  /* an admin's `kvp11 key delete` (a fresh backend) deletes it */
  CU_ASSERT_EQUAL_FATAL(new_backend("undo-admin", 20000, 2, &other), CKR_OK);
  CU_ASSERT_EQUAL(other->ops->delete_key(other, "kvprov-undo"), CKR_OK);
  other->ops->destroy(other, 0);
  purge("kvprov-undo");
  /* without a foreign version the undo deletes as before */
  k = NULL;
  CU_ASSERT_EQUAL_FATAL(g_be->ops->create_key(g_be, "kvprov-undo", &spec, &k), CKR_OK);
  CU_ASSERT_EQUAL(g_be->ops->delete_key(g_be, "kvprov-undo"), CKR_OK);
  g_be->ops->close_key(g_be, k);
  purge("kvprov-undo");
}

static void test_list(void)
{
  static const struct {
    const char *name;
    kvp_key_type type;
    unsigned bits;
    int nid;
    unsigned ops;
  } seeded[] = {
      {"rsa2048", KVP_KEY_RSA, 2048, NID_undef, KVP_KEYOP_SIGN | KVP_KEYOP_DECRYPT},
      {"rsa3072", KVP_KEY_RSA, 3072, NID_undef, KVP_KEYOP_SIGN | KVP_KEYOP_DECRYPT},
      {"rsa4096", KVP_KEY_RSA, 4096, NID_undef, KVP_KEYOP_SIGN | KVP_KEYOP_DECRYPT},
      {"p256", KVP_KEY_EC, 256, NID_X9_62_prime256v1, KVP_KEYOP_SIGN},
      {"p384", KVP_KEY_EC, 384, NID_secp384r1, KVP_KEYOP_SIGN},
      {"p521", KVP_KEY_EC, 521, NID_secp521r1, KVP_KEYOP_SIGN},
  };
  kvp_key_info *infos = NULL, one;
  size_t n = 0, i, j;
  int seen_disabled = 0, seen_expired = 0, seen_verifyonly = 0;

  CU_ASSERT_EQUAL_FATAL(g_be->ops->list_keys(g_be, &infos, &n), CKR_OK);
  CU_ASSERT(n > 25); /* more than one page */
  CU_ASSERT_EQUAL(kvt_emu_count("get"), (long)n);
  for (i = 0; i < KVP_ARRAY_SIZE(seeded); i++) {
    int found = 0;
    for (j = 0; j < n; j++) {
      if (strcmp(infos[j].name, seeded[i].name) != 0)
        continue;
      found = 1;
      CU_ASSERT_EQUAL(infos[j].type, seeded[i].type);
      CU_ASSERT_EQUAL(infos[j].bits, seeded[i].bits);
      CU_ASSERT_EQUAL(infos[j].curve_nid, seeded[i].nid);
      CU_ASSERT_EQUAL(infos[j].ops, seeded[i].ops);
      CU_ASSERT(infos[j].enabled);
      CU_ASSERT(infos[j].hsm_protected);
      CU_ASSERT_STRING_EQUAL(infos[j].kty, seeded[i].type == KVP_KEY_RSA ? "RSA-HSM" : "EC-HSM");
      CU_ASSERT(infos[j].version != NULL && strlen(infos[j].version) == 32);
      CU_ASSERT(infos[j].created > 0);
      CU_ASSERT_PTR_NOT_NULL(infos[j].pub);
      CU_ASSERT_PTR_NULL(infos[j].id);
      /* the same as key_info */
      CU_ASSERT_EQUAL_FATAL(g_be->ops->key_info(g_be, seeded[i].name, &one), CKR_OK);
      CU_ASSERT(kvp_pubkey_equal(one.pub, infos[j].pub));
      CU_ASSERT_STRING_EQUAL(one.version, infos[j].version);
      kvp_key_info_clear(&one);
    }
    CU_ASSERT(found);
    /* the seeded keys are as seeded */
    CU_ASSERT_EQUAL(versions(seeded[i].name), 1);
  }
  for (j = 0; j < n; j++) {
    if (strcmp(infos[j].name, "disabled") == 0)
      seen_disabled = !infos[j].enabled;
    if (strcmp(infos[j].name, "expired") == 0)
      seen_expired = !infos[j].enabled && infos[j].expires > 0;
    if (strcmp(infos[j].name, "verifyonly") == 0)
      seen_verifyonly =
          infos[j].ops == 0 && infos[j].type == KVP_KEY_RSA && !infos[j].hsm_protected;
  }
  CU_ASSERT(seen_disabled && seen_expired && seen_verifyonly);
  kvp_key_info_free_array(infos, n);
}

int main(void)
{
  static CU_TestInfo tests[] = {
      {"create RSA and EC keys, sign with them", test_create_and_sign},
      {"create over an existing name is refused", test_create_existing},
      {"bad names and specs: refused without a request", test_bad_names_and_specs},
      {"import RSA and EC keys, sign with them", test_import},
      {"import with HTTP 500 forever", test_import_fault_500},
      {"import whose answer is lost", test_import_unknown_outcome},
      {"create whose answer is lost", test_create_unknown_outcome},
      {"no create/import/delete permission", test_no_permission},
      {"delete", test_delete},
      {"undo never deletes a version kvp11 did not create", test_undo_foreign_version},
      {"list and show", test_list},
      CU_TEST_INFO_NULL,
  };
  int rc = kvt_fixture("provision-test.log");
  size_t i;

  if (rc != 0)
    return rc;
  /* the backends first: kvp11 initialises libcurl with its wiping allocator */
  if (new_backend("emu", 20000, 5, &g_be) != CKR_OK ||
      new_backend("fast", 3100, 1, &g_fast) != CKR_OK)
    return 1;
  curl_global_init(CURL_GLOBAL_DEFAULT);
  json_decref(kvt_emu("POST", "/_emu/reset", "{}"));
  kvt_emu_policy("app-full", PERMS_PROV);
  for (i = 0; i < KVP_ARRAY_SIZE(MY_KEYS); i++) {
    if (versions(MY_KEYS[i]) >= 0)
      remove_key(MY_KEYS[i]);
    purge(MY_KEYS[i]);
  }
  rc = unit_run_suite_each("kv_provision", NULL, NULL, setup, teardown, tests);
  kvt_emu_clear_faults();
  kvt_emu_policy("app-full", PERMS_SEED);
  json_decref(kvt_emu("POST", "/_emu/reset", "{}"));
  g_be->ops->destroy(g_be, 0);
  g_fast->ops->destroy(g_fast, 0);
  OPENSSL_cleanse(g_auth, sizeof(g_auth));
  curl_global_cleanup();
  return rc;
}
