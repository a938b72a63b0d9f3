/*
 * The Key Vault backend against the emulator started by fixture-setup.sh
 * (KVP11_KV_DIR). Every signature is verified and every ciphertext made with
 * OpenSSL here, independently of the backend; request counts come from the
 * emulator's counters (GET /_emu/counters).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <CUnit/Basic.h>
#include <curl/curl.h>
#include <jansson.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/obj_mac.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>

#include "backend/backend.h"
#include "backend/keyvault/keyvault.h"
#include "core/log.h"
#include "core/status.h"
#include "core/util.h"
#include "kvtest.h"

static const char *RSA_KEYS[] = {"rsa2048", "rsa3072", "rsa4096"};
static const char *EC_KEYS[] = {"p256", "p384", "p521"};

/* a JSON answer of a hand-made request (test_deleted_key) */
static size_t sink(char *p, size_t s, size_t n, void *u)
{
  json_t **out = u;
  size_t len = s * n;
  json_t *j = json_loadb(p, len, 0, NULL);
  if (j != NULL) {
    json_decref(*out);
    *out = j;
  }
  return len;
}

/* ---- backends ---- */

static kvp_backend *g_be; /* the main client-secret backend, kept warm */

/* ---- local crypto ---- */

static void digest(const char *md, const void *msg, size_t len, unsigned char *out, size_t *olen)
{
  unsigned int n = 0;
  EVP_Digest(msg, len, out, &n, EVP_get_digestbyname(md), NULL);
  *olen = n;
}

static size_t ossl_encrypt(EVP_PKEY *pub, const kvp_dec_alg *alg, const unsigned char *in,
                           size_t inl, unsigned char *out)
{
  EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(pub, NULL);
  size_t outl = 1024;
  EVP_PKEY_encrypt_init(ctx);
  if (alg->scheme == KVP_DEC_RSA_OAEP) {
    EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING);
    EVP_PKEY_CTX_set_rsa_oaep_md(ctx, kvp_hash_md(alg->hash));
    EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, kvp_hash_md(alg->mgf1));
  } else {
    EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING);
  }
  if (EVP_PKEY_encrypt(ctx, out, &outl, in, inl) != 1)
    outl = 0;
  EVP_PKEY_CTX_free(ctx);
  return outl;
}

static CK_RV sign_once(kvp_backend *be, kvp_key *k, int check)
{
  kvp_sig_alg alg = {0};
  unsigned char d[64], sig[600];
  size_t dl;
  CK_ULONG sl = sizeof(sig);
  CK_RV rv;
  if (k->type == KVP_KEY_RSA) {
    alg.scheme = KVP_SIG_RSA_PKCS1;
    alg.hash = KVP_HASH_SHA256;
  } else {
    alg.scheme = KVP_SIG_ECDSA;
  }
  digest(k->bits == 384 ? "SHA384" : k->bits == 521 ? "SHA512" : "SHA256", "msg", 3, d, &dl);
  rv = be->ops->sign(be, k, &alg, d, dl, sig, &sl);
  if (rv == CKR_OK && check)
    CU_ASSERT(kvt_verify(k->pub, &alg, d, dl, sig, sl));
  return rv;
}

/* ---- tests ---- */



static void test_rsa_keys(void)
{
  static const kvp_hash hashes[] = {KVP_HASH_SHA256, KVP_HASH_SHA384, KVP_HASH_SHA512};
  static const char *mds[] = {"SHA256", "SHA384", "SHA512"};
  size_t i, h;
  for (i = 0; i < 3; i++) {
    kvp_key *k = NULL;
    CU_ASSERT_EQUAL_FATAL(g_be->ops->open_key(g_be, RSA_KEYS[i], &k), CKR_OK);
    CU_ASSERT_EQUAL(k->type, KVP_KEY_RSA);
    CU_ASSERT_EQUAL(k->bits, i == 0 ? 2048u : i == 1 ? 3072u : 4096u);
    CU_ASSERT(k->can_sign && k->can_decrypt);
    CU_ASSERT(k->version != NULL && strlen(k->version) == 32);
    for (h = 0; h < 3; h++) {
      int pss;
      for (pss = 0; pss < 2; pss++) {
        kvp_sig_alg alg = {pss ? KVP_SIG_RSA_PSS : KVP_SIG_RSA_PKCS1, hashes[h], hashes[h], 0};
        unsigned char d[64], sig[512];
        size_t dl;
        CK_ULONG sl = sizeof(sig);
        digest(mds[h], "hello", 5, d, &dl);
        alg.salt_len = dl;
        CU_ASSERT_EQUAL(g_be->ops->sign(g_be, k, &alg, d, dl, sig, &sl), CKR_OK);
        CU_ASSERT_EQUAL(sl, k->bits / 8);
        CU_ASSERT(kvt_verify(k->pub, &alg, d, dl, sig, sl));
      }
    }
    {
      static const kvp_dec_alg decs[] = {{KVP_DEC_RSA_PKCS1, KVP_HASH_NONE, KVP_HASH_NONE},
                                         {KVP_DEC_RSA_OAEP, KVP_HASH_SHA1, KVP_HASH_SHA1},
                                         {KVP_DEC_RSA_OAEP, KVP_HASH_SHA256, KVP_HASH_SHA256}};
      size_t j;
      for (j = 0; j < 3; j++) {
        unsigned char pt[32], ct[1024], out[512];
        size_t cl;
        CK_ULONG ol = sizeof(out);
        RAND_bytes(pt, sizeof(pt));
        cl = ossl_encrypt(k->pub, &decs[j], pt, sizeof(pt), ct);
        CU_ASSERT_EQUAL_FATAL(cl, k->bits / 8);
        CU_ASSERT_EQUAL(g_be->ops->decrypt(g_be, k, &decs[j], ct, cl, out, &ol), CKR_OK);
        CU_ASSERT_EQUAL(ol, sizeof(pt));
        CU_ASSERT(memcmp(out, pt, sizeof(pt)) == 0);
        /* corrupted ciphertext: a padding error, not garbage */
        if (j > 0) {
          ct[cl / 2] ^= 0x55;
          ol = sizeof(out);
          CU_ASSERT_EQUAL(g_be->ops->decrypt(g_be, k, &decs[j], ct, cl, out, &ol),
                          CKR_ENCRYPTED_DATA_INVALID);
        }
      }
    }
    g_be->ops->close_key(g_be, k);
  }
}

static void test_ec_keys(void)
{
  static const int nids[] = {NID_X9_62_prime256v1, NID_secp384r1, NID_secp521r1};
  static const size_t siglen[] = {64, 96, 132};
  size_t i;
  for (i = 0; i < 3; i++) {
    kvp_key *k = NULL;
    static const char *mds[] = {"SHA256", "SHA384", "SHA512"};
    size_t m;
    CU_ASSERT_EQUAL_FATAL(g_be->ops->open_key(g_be, EC_KEYS[i], &k), CKR_OK);
    CU_ASSERT_EQUAL(k->type, KVP_KEY_EC);
    CU_ASSERT_EQUAL(k->curve_nid, nids[i]);
    CU_ASSERT(k->can_sign);
    CU_ASSERT(!k->can_decrypt);
    /* every hash on every curve: the backend adapts the digest length */
    for (m = 0; m < 3; m++) {
      kvp_sig_alg alg = {KVP_SIG_ECDSA, KVP_HASH_NONE, KVP_HASH_NONE, 0};
      unsigned char d[64], sig[200];
      size_t dl;
      CK_ULONG sl = sizeof(sig);
      digest(mds[m], "hello", 5, d, &dl);
      CU_ASSERT_EQUAL(g_be->ops->sign(g_be, k, &alg, d, dl, sig, &sl), CKR_OK);
      CU_ASSERT_EQUAL(sl, siglen[i]);
      CU_ASSERT(kvt_verify(k->pub, &alg, d, dl, sig, sl));
    }
    {
      kvp_sig_alg alg = {KVP_SIG_RSA_PKCS1, KVP_HASH_SHA256, KVP_HASH_NONE, 0};
      kvp_dec_alg dec = {KVP_DEC_RSA_PKCS1, KVP_HASH_NONE, KVP_HASH_NONE};
      unsigned char d[32] = {0}, out[600];
      CK_ULONG ol = sizeof(out);
      CU_ASSERT_EQUAL(g_be->ops->sign(g_be, k, &alg, d, 32, out, &ol), CKR_KEY_TYPE_INCONSISTENT);
      CU_ASSERT_EQUAL(g_be->ops->decrypt(g_be, k, &dec, d, 32, out, &ol),
                      CKR_KEY_TYPE_INCONSISTENT);
    }
    g_be->ops->close_key(g_be, k);
  }
}

/* The reason recorded for the last failure contains s. */
static int reason_has(const char *s)
{
  const char *r = kvp_status_reason();
  return r != NULL && strstr(r, s) != NULL;
}

/* Refused before any request, each with a reason that names what Key Vault takes. */
static void test_mechanism_params(void)
{
  kvp_key *k = NULL;
  unsigned char d[64] = {1}, out[600];
  CK_ULONG ol = sizeof(out);
  long before;
  CU_ASSERT_EQUAL_FATAL(g_be->ops->open_key(g_be, "rsa2048", &k), CKR_OK);
  before = kvt_emu_total();
  {
    kvp_sig_alg a = {KVP_SIG_RSA_PKCS1, KVP_HASH_NONE, KVP_HASH_NONE, 0};
    kvp_status_clear();
    CU_ASSERT_EQUAL(g_be->ops->sign(g_be, k, &a, d, 51, out, &ol), CKR_DATA_INVALID);
    CU_ASSERT(reason_has("raw CKM_RSA_PKCS input is not a supported DigestInfo"));
  }
  {
    kvp_sig_alg a = {KVP_SIG_RSA_PKCS1, KVP_HASH_SHA1, KVP_HASH_NONE, 0};
    kvp_status_clear();
    CU_ASSERT_EQUAL(g_be->ops->sign(g_be, k, &a, d, 20, out, &ol), CKR_MECHANISM_INVALID);
    CU_ASSERT(reason_has("key rsa2048: Key Vault has no PKCS#1 v1.5 signature with SHA-1"));
  }
  {
    kvp_sig_alg a = {KVP_SIG_RSA_PKCS1, KVP_HASH_SHA256, KVP_HASH_NONE, 0};
    CU_ASSERT_EQUAL(g_be->ops->sign(g_be, k, &a, d, 31, out, &ol), CKR_DATA_LEN_RANGE);
  }
  {
    kvp_sig_alg a = {KVP_SIG_RSA_PSS, KVP_HASH_SHA256, KVP_HASH_SHA256, 20};
    kvp_status_clear();
    CU_ASSERT_EQUAL(g_be->ops->sign(g_be, k, &a, d, 32, out, &ol), CKR_MECHANISM_PARAM_INVALID);
    CU_ASSERT(reason_has("Key Vault has no PSS signature with SHA-256 (it takes SHA-256/384/512 "
                         "with MGF1 of the same hash and a salt as long as the hash)"));
    a.salt_len = 32;
    a.mgf1 = KVP_HASH_SHA1;
    CU_ASSERT_EQUAL(g_be->ops->sign(g_be, k, &a, d, 32, out, &ol), CKR_MECHANISM_PARAM_INVALID);
  }
  {
    kvp_dec_alg a = {KVP_DEC_RSA_OAEP, KVP_HASH_SHA384, KVP_HASH_SHA384};
    kvp_status_clear();
    CU_ASSERT_EQUAL(g_be->ops->decrypt(g_be, k, &a, out, 256, out, &ol),
                    CKR_MECHANISM_PARAM_INVALID);
    CU_ASSERT(reason_has("Key Vault has no OAEP with SHA-384 and MGF1-SHA-384"));
    a.hash = KVP_HASH_SHA256;
    a.mgf1 = KVP_HASH_SHA1;
    CU_ASSERT_EQUAL(g_be->ops->decrypt(g_be, k, &a, out, 256, out, &ol),
                    CKR_MECHANISM_PARAM_INVALID);
    a.mgf1 = KVP_HASH_SHA256;
    CU_ASSERT_EQUAL(g_be->ops->decrypt(g_be, k, &a, out, 255, out, &ol),
                    CKR_ENCRYPTED_DATA_LEN_RANGE);
  }
  /* none of these reached the vault */
  CU_ASSERT_EQUAL(kvt_emu_total(), before);
  g_be->ops->close_key(g_be, k);
}

static void test_warm_counts(void)
{
  kvp_key *k = NULL, *k2 = NULL;
  int i;
  unsigned char pt[16] = "0123456789abcdef", ct[600], out[600];
  kvp_dec_alg dec = {KVP_DEC_RSA_OAEP, KVP_HASH_SHA256, KVP_HASH_SHA256};
  size_t cl;
  CK_ULONG ol;

  CU_ASSERT_EQUAL_FATAL(g_be->ops->open_key(g_be, "rsa2048", &k), CKR_OK);
  kvt_emu_reset();
  /* opening again within the TTL is free */
  CU_ASSERT_EQUAL_FATAL(g_be->ops->open_key(g_be, "rsa2048", &k2), CKR_OK);
  CU_ASSERT_STRING_EQUAL(k2->version, k->version);
  g_be->ops->close_key(g_be, k2);
  for (i = 0; i < 10; i++)
    CU_ASSERT_EQUAL(sign_once(g_be, k, 1), CKR_OK);
  cl = ossl_encrypt(k->pub, &dec, pt, sizeof(pt), ct);
  for (i = 0; i < 5; i++) {
    ol = sizeof(out);
    CU_ASSERT_EQUAL(g_be->ops->decrypt(g_be, k, &dec, ct, cl, out, &ol), CKR_OK);
  }
  CU_ASSERT_EQUAL(kvt_emu_count("sign"), 10);
  CU_ASSERT_EQUAL(kvt_emu_count("decrypt"), 5);
  CU_ASSERT_EQUAL(kvt_emu_count("token"), 0);
  CU_ASSERT_EQUAL(kvt_emu_count("get"), 0);
  CU_ASSERT_EQUAL(kvt_emu_total(), 15);
  g_be->ops->close_key(g_be, k);
}

static void test_key_cache_ttl(void)
{
  kvp_vault_conf c;
  kvp_backend *be;
  kvp_key *k = NULL;
  kvt_conf(&c, "ttl");
  c.timeout_ms = 1000;
  be = kvt_backend(&c);
  CU_ASSERT_EQUAL_FATAL(be->ops->open_key(be, "p384", &k), CKR_OK);
  be->ops->close_key(be, k);
  kvt_emu_reset();
  /* within the TTL: no request */
  CU_ASSERT_EQUAL_FATAL(be->ops->open_key(be, "p384", &k), CKR_OK);
  be->ops->close_key(be, k);
  CU_ASSERT_EQUAL(kvt_emu_total(), 0);
  /* TTL over: one GET */
  kvp_keyvault_set_key_ttl(be, 0);
  CU_ASSERT_EQUAL_FATAL(be->ops->open_key(be, "p384", &k), CKR_OK);
  be->ops->close_key(be, k);
  CU_ASSERT_EQUAL(kvt_emu_count("get"), 1);
  CU_ASSERT_EQUAL(kvt_emu_total(), 1);
  /* TTL over and the vault unavailable: the cached public key is used */
  kvt_emu_fault("{\"endpoint\":\"get\",\"status\":503,\"times\":-1}");
  k = NULL;
  CU_ASSERT_EQUAL(be->ops->open_key(be, "p384", &k), CKR_OK);
  CU_ASSERT(k != NULL && k->type == KVP_KEY_EC && k->bits == 384);
  if (k != NULL)
    be->ops->close_key(be, k);
  CU_ASSERT(kvt_log_contains("vault ttl: key p384: using the cached public key"));
  /* but a key never opened before cannot be */
  k = NULL;
  CU_ASSERT_EQUAL(be->ops->open_key(be, "p256", &k), CKR_DEVICE_ERROR);
  json_decref(kvt_emu("DELETE", "/_emu/faults", NULL));
  be->ops->destroy(be, 0);
}

static void test_versioned_and_missing(void)
{
  kvp_key *k = NULL, *kv = NULL;
  char ref[128];
  CU_ASSERT_EQUAL_FATAL(g_be->ops->open_key(g_be, "p256", &k), CKR_OK);
  snprintf(ref, sizeof(ref), "p256/%s", k->version);
  CU_ASSERT_EQUAL_FATAL(g_be->ops->open_key(g_be, ref, &kv), CKR_OK);
  CU_ASSERT_STRING_EQUAL(kv->version, k->version);
  CU_ASSERT_EQUAL(EVP_PKEY_eq(kv->pub, k->pub), 1);
  CU_ASSERT_EQUAL(sign_once(g_be, kv, 1), CKR_OK);
  g_be->ops->close_key(g_be, kv);
  g_be->ops->close_key(g_be, k);
  kv = NULL;
  CU_ASSERT_EQUAL(g_be->ops->open_key(g_be, "p256/00000000000000000000000000000000", &kv),
                  CKR_KEY_HANDLE_INVALID);
  CU_ASSERT_EQUAL(g_be->ops->open_key(g_be, "nosuchkey", &kv), CKR_KEY_HANDLE_INVALID);
  CU_ASSERT_EQUAL(g_be->ops->open_key(g_be, "bad name", &kv), CKR_KEY_HANDLE_INVALID);
  CU_ASSERT_EQUAL(g_be->ops->open_key(g_be, "a/b/c", &kv), CKR_KEY_HANDLE_INVALID);
  CU_ASSERT_EQUAL(g_be->ops->open_key(g_be, "../x", &kv), CKR_KEY_HANDLE_INVALID);
  CU_ASSERT_PTR_NULL(kv);
}

static void test_deleted_key(void)
{
  /* a key deleted after it was opened: sign answers CKR_KEY_HANDLE_INVALID */
  kvp_key *k = NULL;
  json_t *j = kvt_emu("POST", "/_emu/reset", "{}");
  json_decref(j);
  CU_ASSERT_EQUAL_FATAL(g_be->ops->open_key(g_be, "page-24", &k), CKR_OK);
  json_decref(kvt_emu("POST", "/_emu/policy",
                  "{\"clientId\":\"app-full\",\"permissions\":[\"get\",\"list\",\"sign\","
                  "\"decrypt\",\"delete\"]}"));
  {
    /* delete it through the data plane with a token of our own */
    CURL *c = curl_easy_init();
    char url[300], body[4096], *sec = NULL;
    FILE *f = fopen(kvt_secret, "r");
    char line[200] = "";
    json_t *tok = NULL;
    struct curl_slist *h = NULL;
    if (f != NULL) {
      if (fgets(line, sizeof(line), f) == NULL)
        line[0] = '\0';
      fclose(f);
    }
    line[strcspn(line, "\r\n")] = '\0';
    sec = curl_easy_escape(c, line, 0);
    snprintf(url, sizeof(url), "%s/%s/oauth2/v2.0/token", kvt_url, kvt_tenant);
    snprintf(body, sizeof(body),
             "grant_type=client_credentials&client_id=app-full&scope=https%%3A%%2F%%2F127.0.0.1%%2F."
             "default&client_secret=%s",
             sec);
    curl_free(sec);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CAINFO, kvt_ca);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, sink);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &tok);
    CU_ASSERT_EQUAL(curl_easy_perform(c), CURLE_OK);
    snprintf(body, sizeof(body), "Authorization: Bearer %s",
             json_string_value(json_object_get(tok, "access_token")));
    h = curl_slist_append(NULL, body);
    snprintf(url, sizeof(url), "%s/keys/page-24?api-version=7.5", kvt_url);
    curl_easy_reset(c);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CAINFO, kvt_ca);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, "DELETE");
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, sink);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &tok);
    CU_ASSERT_EQUAL(curl_easy_perform(c), CURLE_OK);
    curl_slist_free_all(h);
    json_decref(tok);
    curl_easy_cleanup(c);
  }
  json_decref(kvt_emu("POST", "/_emu/policy",
                  "{\"clientId\":\"app-full\",\"permissions\":[\"get\",\"list\",\"sign\","
                  "\"decrypt\"]}"));
  CU_ASSERT_EQUAL(sign_once(g_be, k, 0), CKR_KEY_HANDLE_INVALID);
  g_be->ops->close_key(g_be, k);
  /* the cache entry was dropped: opening again asks the vault (and fails) */
  k = NULL;
  CU_ASSERT_EQUAL(g_be->ops->open_key(g_be, "page-24", &k), CKR_KEY_HANDLE_INVALID);
  json_decref(kvt_emu("POST", "/_emu/reset", "{}"));
}

static void test_paging(void)
{
  char **names = NULL;
  size_t n = 0, i;
  int seen_rsa = 0, seen_page = 0;
  kvt_emu_reset();
  CU_ASSERT_EQUAL_FATAL(kvp_keyvault_list_keys(g_be, &names, &n), CKR_OK);
  CU_ASSERT(n > 25);
  for (i = 0; i < n; i++) {
    if (strcmp(names[i], "rsa2048") == 0)
      seen_rsa++;
    if (strcmp(names[i], "page-01") == 0)
      seen_page++;
  }
  CU_ASSERT_EQUAL(seen_rsa, 1);
  CU_ASSERT_EQUAL(seen_page, 1);
  CU_ASSERT_EQUAL(kvt_emu_count("list"), (long)((n + 24) / 25));
  kvp_keyvault_free_names(names, n);
}

static void test_key_states(void)
{
  kvp_key *k = NULL;
  long before;
  unsigned char pt[8] = "secret!", ct[600], out[600];
  kvp_dec_alg dec = {KVP_DEC_RSA_PKCS1, KVP_HASH_NONE, KVP_HASH_NONE};
  size_t cl;
  CK_ULONG ol = sizeof(out);

  CU_ASSERT_EQUAL_FATAL(g_be->ops->open_key(g_be, "verifyonly", &k), CKR_OK);
  CU_ASSERT(!k->can_sign);
  CU_ASSERT(!k->can_decrypt);
  before = kvt_emu_total();
  CU_ASSERT_EQUAL(sign_once(g_be, k, 0), CKR_KEY_FUNCTION_NOT_PERMITTED);
  CU_ASSERT_EQUAL(kvt_emu_total(), before);
  g_be->ops->close_key(g_be, k);

  /* disabled / expired: refused locally, the cause named */
  CU_ASSERT_EQUAL_FATAL(g_be->ops->open_key(g_be, "disabled", &k), CKR_OK);
  CU_ASSERT(!k->can_sign);
  before = kvt_emu_total();
  CU_ASSERT_EQUAL(sign_once(g_be, k, 0), CKR_KEY_FUNCTION_NOT_PERMITTED);
  CU_ASSERT_EQUAL(kvt_emu_total(), before);
  CU_ASSERT(kvt_log_contains("key disabled: sign refused: the key is disabled"));
  g_be->ops->close_key(g_be, k);

  /* expired: no signing, but decryption still works (as on the service) */
  CU_ASSERT_EQUAL_FATAL(g_be->ops->open_key(g_be, "expired", &k), CKR_OK);
  CU_ASSERT(!k->can_sign);
  CU_ASSERT(k->can_decrypt);
  CU_ASSERT_EQUAL(sign_once(g_be, k, 0), CKR_KEY_FUNCTION_NOT_PERMITTED);
  CU_ASSERT(kvt_log_contains("key expired: sign refused: the key expired at "));
  cl = ossl_encrypt(k->pub, &dec, pt, sizeof(pt), ct);
  CU_ASSERT_EQUAL(g_be->ops->decrypt(g_be, k, &dec, ct, cl, out, &ol), CKR_OK);
  CU_ASSERT(ol == sizeof(pt) && memcmp(out, pt, sizeof(pt)) == 0);
  g_be->ops->close_key(g_be, k);
}

static void test_no_permission(void)
{
  kvp_vault_conf c;
  char sec[1000];
  kvp_backend *be;
  kvp_key *k = NULL, *r = NULL;
  unsigned char ct[256] = {1}, out[256];
  CK_ULONG ol = sizeof(out);
  kvp_dec_alg dec = {KVP_DEC_RSA_PKCS1, KVP_HASH_NONE, KVP_HASH_NONE};

  snprintf(sec, sizeof(sec), "%s/app-nosign.secret", kvt_dir);
  kvt_conf(&c, "nosign");
  c.client_id = "app-nosign";
  c.client_secret_file = sec;
  be = kvt_backend(&c);
  CU_ASSERT_PTR_NOT_NULL_FATAL(be);
  CU_ASSERT_EQUAL_FATAL(be->ops->open_key(be, "p256", &k), CKR_OK);
  CU_ASSERT_EQUAL(sign_once(be, k, 0), CKR_KEY_FUNCTION_NOT_PERMITTED);
  CU_ASSERT(kvt_log_contains("vault nosign: key p256: the application lacks the 'sign' permission"));
  CU_ASSERT(kvt_log_contains("ForbiddenByPolicy"));
  CU_ASSERT_EQUAL_FATAL(be->ops->open_key(be, "rsa2048", &r), CKR_OK);
  CU_ASSERT_EQUAL(be->ops->decrypt(be, r, &dec, ct, 256, out, &ol),
                  CKR_KEY_FUNCTION_NOT_PERMITTED);
  CU_ASSERT(
      kvt_log_contains("vault nosign: key rsa2048: the application lacks the 'decrypt' permission"));
  be->ops->close_key(be, k);
  be->ops->close_key(be, r);
  be->ops->destroy(be, 0);
}

static void test_bad_secret(void)
{
  kvp_vault_conf c;
  char sec[1000];
  kvp_backend *be;
  kvp_key *k = NULL;
  snprintf(sec, sizeof(sec), "%s/wrong.secret", kvt_dir);
  kvt_write_file(sec, "not-the-secret\n");
  kvt_conf(&c, "badsecret");
  c.client_secret_file = sec;
  be = kvt_backend(&c);
  CU_ASSERT_EQUAL(be->ops->open_key(be, "p256", &k), CKR_DEVICE_ERROR);
  CU_ASSERT(kvt_log_contains("invalid_client"));
  CU_ASSERT(!kvt_log_contains("not-the-secret"));
  be->ops->destroy(be, 0);
  /* a secret file readable by others is refused */
  chmod(sec, 0644);
  be = kvt_backend(&c);
  CU_ASSERT_NOT_EQUAL(be->ops->open_key(be, "p256", &k), CKR_OK);
  be->ops->destroy(be, 0);
}

/* A backend with this auth: open, 3 signs; the token endpoint `counter` was
 * called `calls` times (more than 1 when `fault` makes it fail first). */
static void auth_roundtrip_fault(kvp_vault_conf *c, const char *counter, const char *fault,
                                 long calls)
{
  kvp_backend *be;
  kvp_key *k = NULL;
  int i;
  kvt_emu_reset();
  if (fault != NULL)
    kvt_emu_fault(fault);
  be = kvt_backend(c);
  CU_ASSERT_PTR_NOT_NULL_FATAL(be);
  CU_ASSERT_EQUAL_FATAL(be->ops->open_key(be, "p384", &k), CKR_OK);
  for (i = 0; i < 3; i++)
    CU_ASSERT_EQUAL(sign_once(be, k, 1), CKR_OK);
  CU_ASSERT_EQUAL(kvt_emu_count(counter), calls);
  CU_ASSERT_EQUAL(kvt_emu_count("sign"), 3);
  CU_ASSERT_EQUAL(kvp_keyvault_token_requests(be), 1);
  be->ops->close_key(be, k);
  be->ops->destroy(be, 0);
}

static void auth_roundtrip(kvp_vault_conf *c, const char *counter)
{
  auth_roundtrip_fault(c, counter, NULL, 1);
}

static void test_auth_client_secret_env(void)
{
  kvp_vault_conf c;
  char line[200] = "";
  kvt_read_line(kvt_secret, line, sizeof(line));
  setenv("KVP11_TEST_KV_SECRET", line, 1);
  kvt_conf(&c, "envsecret");
  c.client_secret_file = NULL;
  c.client_secret_env = "KVP11_TEST_KV_SECRET";
  auth_roundtrip(&c, "token");
  unsetenv("KVP11_TEST_KV_SECRET");
}

static void test_auth_client_certificate(void)
{
  kvp_vault_conf c;
  char cert[1000], key[1000];
  snprintf(cert, sizeof(cert), "%s/client.pem", kvt_dir);
  snprintf(key, sizeof(key), "%s/client.key", kvt_dir);
  kvt_conf(&c, "cert");
  c.auth = KVP_AUTH_CLIENT_CERTIFICATE;
  c.client_id = "app-cert";
  c.client_secret_file = NULL;
  c.client_cert_file = cert;
  c.client_key_file = key;
  auth_roundtrip(&c, "token");
  /* the wrong client id for that certificate is refused */
  {
    kvp_backend *be;
    kvp_key *k = NULL;
    c.client_id = "app-full";
    be = kvt_backend(&c);
    CU_ASSERT_EQUAL(be->ops->open_key(be, "p384", &k), CKR_DEVICE_ERROR);
    be->ops->destroy(be, 0);
  }
}

static void test_auth_managed_identity_imds(void)
{
  kvp_vault_conf c;
  kvt_conf(&c, "imds");
  c.auth = KVP_AUTH_MANAGED_IDENTITY;
  c.client_id = NULL;
  c.tenant_id = NULL;
  c.client_secret_file = NULL;
  c.imds_endpoint = kvt_url;
  unsetenv("IDENTITY_ENDPOINT");
  unsetenv("IDENTITY_HEADER");
  auth_roundtrip(&c, "imds");
  /* IMDS answering 410 (upgrading) and 404 is retried */
  c.timeout_ms = 5000;
  auth_roundtrip_fault(&c, "imds",
                       "{\"faults\":[{\"endpoint\":\"imds\",\"status\":410},"
                       "{\"endpoint\":\"imds\",\"status\":404}]}",
                       3);
}

static void test_auth_managed_identity_app_service(void)
{
  kvp_vault_conf c;
  char ep[300], hdr[100] = "", path[1000];
  FILE *f;
  snprintf(path, sizeof(path), "%s/identity-header", kvt_dir);
  f = fopen(path, "r");
  CU_ASSERT_PTR_NOT_NULL_FATAL(f);
  if (fgets(hdr, sizeof(hdr), f) == NULL)
    hdr[0] = '\0';
  fclose(f);
  hdr[strcspn(hdr, "\r\n")] = '\0';
  snprintf(ep, sizeof(ep), "%s/msi/token", kvt_url);
  setenv("IDENTITY_ENDPOINT", ep, 1);
  setenv("IDENTITY_HEADER", hdr, 1);
  kvt_conf(&c, "appservice");
  c.auth = KVP_AUTH_MANAGED_IDENTITY;
  c.client_id = "mi-1";
  c.tenant_id = NULL;
  c.client_secret_file = NULL;
  auth_roundtrip(&c, "msi");
  unsetenv("IDENTITY_ENDPOINT");
  unsetenv("IDENTITY_HEADER");
}

static void test_auth_workload_identity(void)
{
  kvp_vault_conf c;
  char path[1000];
  snprintf(path, sizeof(path), "%s/federated-token", kvt_dir);
  kvt_federated_token(path);
  setenv("AZURE_FEDERATED_TOKEN_FILE", path, 1);
  kvt_conf(&c, "workload");
  c.auth = KVP_AUTH_WORKLOAD_IDENTITY;
  c.client_id = "app-wl";
  c.client_secret_file = NULL;
  auth_roundtrip(&c, "token");
  unsetenv("AZURE_FEDERATED_TOKEN_FILE");
}

static void test_token_expiry(void)
{
  kvp_vault_conf c;
  kvp_backend *be;
  kvp_key *k = NULL;
  int n = 0;
  double t0, el;
  long tokens;
  json_decref(kvt_emu("POST", "/_emu/config", "{\"tokenLifetime\":3}"));
  kvt_conf(&c, "shortlived");
  be = kvt_backend(&c);
  CU_ASSERT_EQUAL_FATAL(be->ops->open_key(be, "p256", &k), CKR_OK);
  kvt_emu_reset();
  t0 = kvt_now();
  while (kvt_now() - t0 < 5.0) {
    CU_ASSERT_EQUAL(sign_once(be, k, 0), CKR_OK);
    n++;
    usleep(50000);
  }
  el = kvt_now() - t0;
  tokens = kvt_emu_count("token");
  /* refreshed ahead of expiry (after half of the 3 s lifetime): never a 401 */
  if (kvt_emu_count("sign") != n)
    fprintf(stderr, "token expiry: %d signs, %ld sign requests, %ld tokens\n", n,
            kvt_emu_count("sign"), tokens);
  CU_ASSERT_EQUAL(kvt_emu_count("sign"), n);
  CU_ASSERT(tokens >= 2);
  CU_ASSERT(tokens <= (long)(el / 1.4) + 1);
  json_decref(kvt_emu("POST", "/_emu/config", "{\"tokenLifetime\":3600}"));
  be->ops->close_key(be, k);
  be->ops->destroy(be, 0);
}

static void test_revoked_token(void)
{
  kvp_key *k = NULL;
  CU_ASSERT_EQUAL_FATAL(g_be->ops->open_key(g_be, "p256", &k), CKR_OK);
  CU_ASSERT_EQUAL(sign_once(g_be, k, 0), CKR_OK);
  kvt_emu_reset();
  json_decref(kvt_emu("POST", "/_emu/revoke", "{}"));
  /* 401 -> one new token -> the same request again */
  CU_ASSERT_EQUAL(sign_once(g_be, k, 1), CKR_OK);
  CU_ASSERT_EQUAL(kvt_emu_count("sign"), 2);
  CU_ASSERT_EQUAL(kvt_emu_count("token"), 1);
  /* and then one request per operation again */
  CU_ASSERT_EQUAL(sign_once(g_be, k, 1), CKR_OK);
  CU_ASSERT_EQUAL(kvt_emu_count("sign"), 3);
  g_be->ops->close_key(g_be, k);
}

/* A fault rule, then one sign on a warm backend with timeout_ms / max_retries. */
static CK_RV fault_sign(const char *rule, long timeout_ms, int max_retries, double *elapsed,
                        long *signs)
{
  kvp_vault_conf c;
  kvp_backend *be;
  kvp_key *k = NULL;
  CK_RV rv;
  double t0;
  kvt_conf(&c, "faults");
  c.timeout_ms = timeout_ms;
  c.max_retries = max_retries;
  be = kvt_backend(&c);
  if (be->ops->open_key(be, "p256", &k) != CKR_OK) {
    be->ops->destroy(be, 0);
    return CKR_GENERAL_ERROR;
  }
  CU_ASSERT_EQUAL(sign_once(be, k, 0), CKR_OK); /* warm: token and key cached */
  kvt_emu_reset();
  if (rule != NULL)
    kvt_emu_fault(rule);
  t0 = kvt_now();
  rv = sign_once(be, k, 1);
  *elapsed = kvt_now() - t0;
  *signs = kvt_emu_count("sign");
  json_decref(kvt_emu("DELETE", "/_emu/faults", NULL));
  be->ops->close_key(be, k);
  be->ops->destroy(be, 0);
  return rv;
}

static void test_faults_recovered(void)
{
  static const struct {
    const char *rule;
    long signs;
    double min_s;
  } cases[] = {
      {"{\"endpoint\":\"sign\",\"status\":429,\"retryAfter\":1}", 2, 0.95},
      {"{\"endpoint\":\"sign\",\"status\":429,\"times\":2}", 3, 0.0},
      {"{\"faults\":[{\"endpoint\":\"sign\",\"status\":500},{\"endpoint\":\"sign\",\"status\":503}]}",
       3, 0.0},
      {"{\"endpoint\":\"sign\",\"status\":503,\"retryAfter\":0}", 2, 0.0},
      {"{\"endpoint\":\"sign\",\"action\":\"drop\"}", 2, 0.0},
      {"{\"endpoint\":\"sign\",\"action\":\"truncate\"}", 2, 0.0},
      {"{\"endpoint\":\"sign\",\"action\":\"nonjson\"}", 2, 0.0},
      {"{\"endpoint\":\"sign\",\"action\":\"delay\",\"delayMs\":300}", 1, 0.29},
  };
  size_t i;
  for (i = 0; i < KVP_ARRAY_SIZE(cases); i++) {
    double el = 0;
    long signs = 0;
    CK_RV rv = fault_sign(cases[i].rule, 4000, 5, &el, &signs);
    if (rv != CKR_OK || signs != cases[i].signs || el < cases[i].min_s || el > 3.9)
      fprintf(stderr, "fault %s: rv 0x%lx signs %ld elapsed %.2f\n", cases[i].rule, rv, signs, el);
    CU_ASSERT_EQUAL(rv, CKR_OK);
    CU_ASSERT_EQUAL(signs, cases[i].signs);
    CU_ASSERT(el >= cases[i].min_s);
    CU_ASSERT(el < 3.9);
  }
}

static void test_faults_given_up(void)
{
  double el = 0;
  long signs = 0;
  /* persistent 503: backoff until the time limit, then CKR_DEVICE_ERROR */
  CU_ASSERT_EQUAL(fault_sign("{\"endpoint\":\"sign\",\"status\":503,\"times\":-1}", 1500, 10, &el,
                             &signs),
                  CKR_DEVICE_ERROR);
  CU_ASSERT(el < 2.0);
  CU_ASSERT(signs >= 3);
  /* max_retries bounds the attempts */
  CU_ASSERT_EQUAL(fault_sign("{\"endpoint\":\"sign\",\"status\":500,\"times\":-1}", 4000, 1, &el,
                             &signs),
                  CKR_DEVICE_ERROR);
  CU_ASSERT_EQUAL(signs, 2);
  /* Retry-After beyond the time limit: give up at once */
  CU_ASSERT_EQUAL(fault_sign("{\"endpoint\":\"sign\",\"status\":429,\"retryAfter\":60}", 3000, 5,
                             &el, &signs),
                  CKR_DEVICE_ERROR);
  CU_ASSERT(el < 1.0);
  CU_ASSERT_EQUAL(signs, 1);
  /* a hanging service: the request times out within timeout_ms */
  CU_ASSERT_EQUAL(fault_sign("{\"endpoint\":\"sign\",\"action\":\"delay\",\"delayMs\":4000,"
                             "\"times\":-1}",
                             1000, 5, &el, &signs),
                  CKR_DEVICE_ERROR);
  CU_ASSERT(el < 1.6);
  /* connections dropped every time */
  CU_ASSERT_EQUAL(fault_sign("{\"endpoint\":\"sign\",\"action\":\"drop\",\"times\":-1}", 1000, 3,
                             &el, &signs),
                  CKR_DEVICE_ERROR);
  CU_ASSERT(el < 1.6);
  /* 1 + 3 retries; libcurl itself may retry once on a dropped kept-alive connection */
  CU_ASSERT(signs >= 4 && signs <= 8);
  /* a 2 MiB body: over the cap, refused and not retried */
  CU_ASSERT_EQUAL(fault_sign("{\"endpoint\":\"sign\",\"action\":\"huge\"}", 3000, 5, &el, &signs),
                  CKR_DEVICE_ERROR);
  CU_ASSERT_EQUAL(signs, 1);
  /* give the emulator time to finish the delayed requests */
  sleep(3);
  json_decref(kvt_emu("DELETE", "/_emu/faults", NULL));
}

static void test_token_endpoint_faults(void)
{
  kvp_vault_conf c;
  kvp_backend *be;
  kvp_key *k = NULL;
  kvt_conf(&c, "tokenfault");
  c.timeout_ms = 4000;
  kvt_emu_reset();
  kvt_emu_fault("{\"faults\":[{\"endpoint\":\"token\",\"status\":503},"
            "{\"endpoint\":\"token\",\"action\":\"nonjson\"},"
            "{\"endpoint\":\"get\",\"status\":429}]}");
  be = kvt_backend(&c);
  CU_ASSERT_EQUAL(be->ops->open_key(be, "p256", &k), CKR_OK);
  CU_ASSERT_EQUAL(kvt_emu_count("token"), 3);
  /* challenge (401) + 429 + the good one */
  CU_ASSERT_EQUAL(kvt_emu_count("get"), 3);
  if (k != NULL)
    be->ops->close_key(be, k);
  be->ops->destroy(be, 0);
  /* the token endpoint is down: CKR_DEVICE_ERROR within the limit */
  kvt_emu_fault("{\"endpoint\":\"token\",\"status\":500,\"times\":-1}");
  c.timeout_ms = 1000;
  be = kvt_backend(&c);
  k = NULL;
  CU_ASSERT_EQUAL(be->ops->open_key(be, "p256", &k), CKR_DEVICE_ERROR);
  be->ops->destroy(be, 0);
  json_decref(kvt_emu("DELETE", "/_emu/faults", NULL));
}

struct thr {
  kvp_backend *be;
  kvp_key *k;
  int ok;
};

static void *thr_main(void *p)
{
  struct thr *t = p;
  int i;
  kvp_key *mine = NULL;
  /* a cold backend: every thread opens the key itself */
  if (t->k == NULL && t->be->ops->open_key(t->be, "rsa2048", &mine) != CKR_OK)
    return NULL;
  for (i = 0; i < 10; i++)
    if (sign_once(t->be, t->k != NULL ? t->k : mine, 0) == CKR_OK)
      t->ok++;
  if (mine != NULL)
    t->be->ops->close_key(t->be, mine);
  return NULL;
}

/* 4 threads signing with k (NULL: each opens its own): the signatures that succeeded. */
static int run_threads(kvp_backend *be, kvp_key *k)
{
  pthread_t th[4];
  struct thr t[4];
  int i, ok = 0;
  for (i = 0; i < 4; i++) {
    t[i].be = be;
    t[i].k = k;
    t[i].ok = 0;
    pthread_create(&th[i], NULL, thr_main, &t[i]);
  }
  for (i = 0; i < 4; i++) {
    pthread_join(th[i], NULL);
    ok += t[i].ok;
  }
  return ok;
}

static void test_threads(void)
{
  kvp_vault_conf c;
  kvp_backend *be;
  kvp_key *k = NULL;
  kvt_conf(&c, "threads");
  be = kvt_backend(&c);
  kvt_emu_reset();
  /* cold start from 4 threads at once: one token request (the others wait for it) */
  CU_ASSERT_EQUAL(run_threads(be, NULL), 40);
  CU_ASSERT_EQUAL(kvt_emu_count("token"), 1);
  CU_ASSERT_EQUAL(kvp_keyvault_token_requests(be), 1);
  /* warm: 4 threads share one key object, one request per signature */
  kvt_emu_reset();
  CU_ASSERT_EQUAL_FATAL(be->ops->open_key(be, "rsa2048", &k), CKR_OK);
  CU_ASSERT_EQUAL(run_threads(be, k), 40);
  CU_ASSERT_EQUAL(kvt_emu_count("sign"), 40);
  CU_ASSERT_EQUAL(kvt_emu_count("token"), 0);
  CU_ASSERT_EQUAL(kvt_emu_total(), 40);
  be->ops->close_key(be, k);
  be->ops->destroy(be, 0);
}

static void test_fork(void)
{
  kvp_key *k = NULL;
  pid_t pid;
  int st = 0;
  CU_ASSERT_EQUAL_FATAL(g_be->ops->open_key(g_be, "p256", &k), CKR_OK);
  CU_ASSERT_EQUAL(sign_once(g_be, k, 0), CKR_OK);
  pid = fork();
  if (pid == 0) {
    /* the child only frees memory: no I/O on the parent's connections */
    g_be->ops->close_key(g_be, k);
    g_be->ops->destroy(g_be, 1);
    _exit(0);
  }
  CU_ASSERT_FATAL(pid > 0);
  waitpid(pid, &st, 0);
  CU_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  /* the parent's kept-alive connection still works */
  kvt_emu_reset();
  CU_ASSERT_EQUAL(sign_once(g_be, k, 1), CKR_OK);
  CU_ASSERT_EQUAL(kvt_emu_count("sign"), 1);
  g_be->ops->close_key(g_be, k);
}

static void test_wrong_ca(void)
{
  kvp_vault_conf c;
  kvp_backend *be;
  kvp_key *k = NULL;
  char other[1000];
  /* the client certificate is not a CA for the server: TLS must fail */
  snprintf(other, sizeof(other), "%s/client.pem", kvt_dir);
  kvt_conf(&c, "wrongca");
  c.ca_file = other;
  c.timeout_ms = 1500;
  c.max_retries = 1;
  kvt_emu_reset();
  be = kvt_backend(&c);
  CU_ASSERT_EQUAL(be->ops->open_key(be, "p256", &k), CKR_DEVICE_ERROR);
  be->ops->destroy(be, 0);
  /* no request reached the emulator, and a TLS failure is not retried */
  CU_ASSERT_EQUAL(kvt_emu_total(), 0);
  CU_ASSERT(kvt_log_contains("vault wrongca: key p256: get: SSL certificate problem"));
}

static void test_no_secrets_logged(void)
{
  char line[200] = "";
  kvt_read_line(kvt_secret, line, sizeof(line));
  CU_ASSERT(strlen(line) > 10);
  CU_ASSERT(!kvt_log_contains(line));
  /* access tokens and client assertions are JWTs: base64url of '{"' */
  CU_ASSERT(!kvt_log_contains("eyJ"));
  CU_ASSERT(!kvt_log_contains("Bearer"));
  /* but the log did record the run */
  CU_ASSERT(kvt_log_contains("x-ms-request-id"));
}

int main(void)
{
  static CU_TestInfo tests[] = {
      {"RSA keys: every sign and decrypt mechanism", test_rsa_keys},
      {"EC keys: ECDSA on P-256/384/521", test_ec_keys},
      {"mechanism parameters refused locally", test_mechanism_params},
      {"one request per operation once warm", test_warm_counts},
      {"versioned and missing keys", test_versioned_and_missing},
      {"key cache TTL", test_key_cache_ttl},
      {"paging over more than 25 keys", test_paging},
      {"key_ops, disabled and expired keys", test_key_states},
      {"no sign/decrypt permission", test_no_permission},
      {"wrong client secret", test_bad_secret},
      {"auth: client secret from the environment", test_auth_client_secret_env},
      {"auth: client certificate", test_auth_client_certificate},
      {"auth: managed identity (IMDS)", test_auth_managed_identity_imds},
      {"auth: managed identity (IDENTITY_ENDPOINT)", test_auth_managed_identity_app_service},
      {"auth: workload identity", test_auth_workload_identity},
      {"token expiry in the middle of a run", test_token_expiry},
      {"401 with a cached token", test_revoked_token},
      {"faults that end in success", test_faults_recovered},
      {"faults that end in CKR_DEVICE_ERROR in time", test_faults_given_up},
      {"token endpoint faults", test_token_endpoint_faults},
      {"threads", test_threads},
      {"fork: destroy(forked) frees memory only", test_fork},
      {"TLS is verified", test_wrong_ca},
      {"deleted key", test_deleted_key},
      {"no secret or token in the log", test_no_secrets_logged},
      CU_TEST_INFO_NULL,
  };
  int rc = kvt_init("backend-test.log");
  kvp_vault_conf c;

  if (rc != 0)
    return rc;
  kvt_emu_clear_faults();
  kvt_conf(&c, "emu");
  if (kvp_keyvault_backend_new(&c, &g_be) != CKR_OK)
    return 1;
  rc = unit_run_suite("kv_backend", NULL, NULL, tests);
  g_be->ops->destroy(g_be, 0);
  kvt_done();
  return rc;
}
