/*
 * Unit tests of the HSM backend's provisioning ops (create_key, import_key,
 * delete_key, list_keys, key_info) against SoftHSM2.
 *
 * Two tokens of its own under $KVP11_TEST_TMP/hsm_provision, made with
 * softhsm2-util: one used with a PIN file, one with the PIN passed through
 * the login op. What the backend did is checked independently: signatures
 * with OpenSSL against the public key, object attributes with direct
 * PKCS#11 calls to the same SoftHSM2 instance, CKA_ID against a SHA-1
 * computed here. Exits 77 (skipped) when SoftHSM2 is missing.
 */
#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CUnit/Basic.h>
#include <CUnit/CUnit.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/obj_mac.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

#include "backend/backend.h"
#include "core/config.h"
#include "core/log.h"
#include "core/status.h"
#include "hsm_fixture.h"
#include "unit_util.h"

#define TOK_PIN "kvp-prov-unit"
#define TOK_PASS "kvp-provpass-unit"
#define USER_PIN HSM_PIN

static char g_log[1100];
static kvp_backend *g_be;   /* TOK_PIN, PIN from a file */
static kvp_backend *g_pass; /* TOK_PASS, PIN passed through */
static void *g_dl;          /* SoftHSM2, for direct PKCS#11 checks */
static CK_FUNCTION_LIST_PTR g_fl;

/* ---------- fixture (hsm_fixture.h) ---------- */

static kvp_backend *backend(const char *name, const char *token, int with_pin) {
  kvp_hsm_conf c = hsm_conf(name, hsm_module, token, with_pin ? hsm_pinfile : NULL);
  kvp_backend *be = NULL;
  return kvp_hsm_backend_new(&c, &be) == CKR_OK ? be : NULL;
}

static int suite_init(void) {
  kvp_key_info *infos = NULL;
  size_t n = 0;
  g_be = backend("prov", TOK_PIN, 1);
  g_pass = backend("pass", TOK_PASS, 0);
  /* the backend initializes SoftHSM2 (first call); the direct checks use
   * the same, already initialized, instance */
  if (g_be == NULL || g_pass == NULL || g_be->ops->list_keys(g_be, &infos, &n) != CKR_OK ||
      n != 0)
    return -1;
  kvp_key_info_free_array(infos, n);
  g_fl = hsm_functions(hsm_module, &g_dl);
  return g_fl != NULL ? 0 : -1;
}

static int suite_clean(void) {
  if (g_be)
    g_be->ops->destroy(g_be, 0);
  if (g_pass)
    g_pass->ops->destroy(g_pass, 0);
  g_be = g_pass = NULL;
  if (g_dl)
    dlclose(g_dl);
  g_dl = NULL;
  return 0;
}

/* Does the log written so far contain s? */
static int logged(const char *s) {
  char buf[65536];
  FILE *f = fopen(g_log, "r");
  if (f == NULL)
    return 0;
  size_t n = fread(buf, 1, sizeof(buf) - 1, f);
  fclose(f);
  buf[n] = '\0';
  return strstr(buf, s) != NULL;
}

/* ---------- direct PKCS#11 ---------- */

static CK_SESSION_HANDLE p11_open(const char *token) {
  CK_SLOT_ID slot = hsm_slot_of(g_fl, token);
  CK_SESSION_HANDLE s;
  if (slot != (CK_SLOT_ID)-1 &&
      g_fl->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s) == CKR_OK)
    return s;
  return CK_INVALID_HANDLE;
}

/* Objects of class cls labelled label; up to max handles in h. */
static CK_ULONG p11_find(CK_SESSION_HANDLE s, CK_OBJECT_CLASS cls, const char *label,
                         CK_OBJECT_HANDLE *h, CK_ULONG max) {
  CK_ATTRIBUTE t[2] = {{CKA_CLASS, &cls, sizeof(cls)},
                       {CKA_LABEL, (void *)label, (CK_ULONG)strlen(label)}};
  CK_OBJECT_HANDLE tmp[8];
  CK_ULONG n = 0;
  if (h == NULL) {
    h = tmp;
    max = 8;
  }
  if (g_fl->C_FindObjectsInit(s, t, 2) != CKR_OK)
    return (CK_ULONG)-1;
  if (g_fl->C_FindObjects(s, h, max, &n) != CKR_OK)
    n = (CK_ULONG)-1;
  g_fl->C_FindObjectsFinal(s);
  return n;
}

/* Number of objects of class cls labelled label in token. */
static long count_objs(const char *token, CK_OBJECT_CLASS cls, const char *label) {
  CK_SESSION_HANDLE s = p11_open(token);
  if (s == CK_INVALID_HANDLE)
    return -1;
  CK_ULONG n = p11_find(s, cls, label, NULL, 0);
  g_fl->C_CloseSession(s);
  return (long)n;
}

/* CK_BBOOL attribute: 0, 1, or -1 when it cannot be read. */
static int p11_bool(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, CK_ATTRIBUTE_TYPE type) {
  CK_BBOOL v = CK_FALSE;
  CK_ATTRIBUTE a = {type, &v, sizeof(v)};
  if (g_fl->C_GetAttributeValue(s, h, &a, 1) != CKR_OK)
    return -1;
  return v == CK_TRUE ? 1 : 0;
}

/* SHA-1 of the subjectPublicKey BIT STRING contents (RFC 5280 4.2.1.2). */
static int spk_sha1(EVP_PKEY *pk, unsigned char md[SHA_DIGEST_LENGTH]) {
  X509_PUBKEY *xp = NULL;
  const unsigned char *bits = NULL;
  int len = 0, ok;
  ok = X509_PUBKEY_set(&xp, pk) && X509_PUBKEY_get0_param(NULL, &bits, &len, NULL, xp) &&
       len > 0 && SHA1(bits, (size_t)len, md) != NULL;
  X509_PUBKEY_free(xp);
  return ok;
}

typedef struct {
  int sensitive, extractable, always_sensitive, never_extractable, private_, token, sign, decrypt;
  int secret_hidden; /* reading the private value says CKR_ATTRIBUTE_SENSITIVE */
  int pub_private;   /* CKA_PRIVATE of the public object */
  unsigned char priv_id[64], pub_id[64];
  CK_ULONG priv_id_len, pub_id_len;
} objfacts;

/* What the token says about the key pair labelled label. */
static int facts(const char *token, const char *label, objfacts *f) {
  CK_OBJECT_HANDLE priv, pub;
  CK_SESSION_HANDLE s = p11_open(token);
  memset(f, 0, sizeof(*f));
  if (s == CK_INVALID_HANDLE)
    return 0;
  int ok = p11_find(s, CKO_PRIVATE_KEY, label, &priv, 1) == 1 &&
           p11_find(s, CKO_PUBLIC_KEY, label, &pub, 1) == 1;
  if (ok) {
    CK_KEY_TYPE kt = 0;
    CK_ATTRIBUTE a = {CKA_KEY_TYPE, &kt, sizeof(kt)};
    f->sensitive = p11_bool(s, priv, CKA_SENSITIVE);
    f->extractable = p11_bool(s, priv, CKA_EXTRACTABLE);
    f->always_sensitive = p11_bool(s, priv, CKA_ALWAYS_SENSITIVE);
    f->never_extractable = p11_bool(s, priv, CKA_NEVER_EXTRACTABLE);
    f->private_ = p11_bool(s, priv, CKA_PRIVATE);
    f->token = p11_bool(s, priv, CKA_TOKEN);
    f->sign = p11_bool(s, priv, CKA_SIGN);
    f->decrypt = p11_bool(s, priv, CKA_DECRYPT);
    f->pub_private = p11_bool(s, pub, CKA_PRIVATE);
    ok = g_fl->C_GetAttributeValue(s, priv, &a, 1) == CKR_OK;
    CK_ATTRIBUTE secret = {kt == CKK_RSA ? CKA_PRIVATE_EXPONENT : CKA_VALUE, NULL, 0};
    f->secret_hidden =
        g_fl->C_GetAttributeValue(s, priv, &secret, 1) == CKR_ATTRIBUTE_SENSITIVE &&
        secret.ulValueLen == CK_UNAVAILABLE_INFORMATION;
    CK_ATTRIBUTE ida = {CKA_ID, f->priv_id, sizeof(f->priv_id)};
    CK_ATTRIBUTE idb = {CKA_ID, f->pub_id, sizeof(f->pub_id)};
    ok = ok && g_fl->C_GetAttributeValue(s, priv, &ida, 1) == CKR_OK &&
         g_fl->C_GetAttributeValue(s, pub, &idb, 1) == CKR_OK;
    f->priv_id_len = ida.ulValueLen;
    f->pub_id_len = idb.ulValueLen;
  }
  g_fl->C_CloseSession(s);
  return ok;
}

/* ---------- signatures and ciphertexts, checked with OpenSSL ---------- */

static int verify_rsa(EVP_PKEY *pk, const unsigned char *dig, const unsigned char *sig,
                      size_t sig_len) {
  EVP_PKEY_CTX *c = EVP_PKEY_CTX_new(pk, NULL);
  int ok = c != NULL && EVP_PKEY_verify_init(c) > 0 &&
           EVP_PKEY_CTX_set_rsa_padding(c, RSA_PKCS1_PADDING) > 0 &&
           EVP_PKEY_CTX_set_signature_md(c, EVP_sha256()) > 0 &&
           EVP_PKEY_verify(c, sig, sig_len, dig, 32) == 1;
  EVP_PKEY_CTX_free(c);
  return ok;
}

/* sig is r||s as PKCS#11 returns it */
static int verify_ec(EVP_PKEY *pk, const unsigned char *dig, size_t dig_len,
                     const unsigned char *sig, size_t sig_len) {
  ECDSA_SIG *es = ECDSA_SIG_new();
  unsigned char *der = NULL;
  int der_len, ok = 0;
  BIGNUM *r = BN_bin2bn(sig, (int)(sig_len / 2), NULL);
  BIGNUM *s = BN_bin2bn(sig + sig_len / 2, (int)(sig_len / 2), NULL);
  if (es == NULL || r == NULL || s == NULL || !ECDSA_SIG_set0(es, r, s)) {
    BN_free(r);
    BN_free(s);
    ECDSA_SIG_free(es);
    return 0;
  }
  der_len = i2d_ECDSA_SIG(es, &der);
  EVP_PKEY_CTX *c = EVP_PKEY_CTX_new(pk, NULL);
  ok = der_len > 0 && c != NULL && EVP_PKEY_verify_init(c) > 0 &&
       EVP_PKEY_verify(c, der, (size_t)der_len, dig, dig_len) == 1;
  EVP_PKEY_CTX_free(c);
  OPENSSL_free(der);
  ECDSA_SIG_free(es);
  return ok;
}

/* Sign a random digest with key through be; verify against pub. */
static int sign_verifies(kvp_backend *be, kvp_key *key, EVP_PKEY *pub) {
  unsigned char dig[64], sig[1024];
  CK_ULONG sig_len = sizeof(sig);
  size_t dig_len = key->type == KVP_KEY_RSA ? 32 : (key->bits == 256 ? 32 : 48);
  kvp_sig_alg alg = {key->type == KVP_KEY_RSA ? KVP_SIG_RSA_PKCS1 : KVP_SIG_ECDSA,
                     dig_len == 32 ? KVP_HASH_SHA256 : KVP_HASH_SHA384, KVP_HASH_NONE, 0};
  if (RAND_bytes(dig, (int)dig_len) != 1 ||
      be->ops->sign(be, key, &alg, dig, (CK_ULONG)dig_len, sig, &sig_len) != CKR_OK)
    return 0;
  if (key->type == KVP_KEY_RSA)
    return verify_rsa(pub, dig, sig, sig_len);
  return verify_ec(pub, dig, dig_len, sig, sig_len);
}

/* Encrypt with pub (OpenSSL), decrypt through be. */
static int decrypt_roundtrip(kvp_backend *be, kvp_key *key, EVP_PKEY *pub, int oaep) {
  unsigned char msg[32], ct[1024], pt[1024];
  size_t ct_len = sizeof(ct);
  CK_ULONG pt_len = sizeof(pt);
  kvp_dec_alg alg = {oaep ? KVP_DEC_RSA_OAEP : KVP_DEC_RSA_PKCS1, KVP_HASH_SHA1, KVP_HASH_SHA1};
  EVP_PKEY_CTX *c = EVP_PKEY_CTX_new(pub, NULL);
  int ok = RAND_bytes(msg, sizeof(msg)) == 1 && c != NULL && EVP_PKEY_encrypt_init(c) > 0 &&
           EVP_PKEY_CTX_set_rsa_padding(c, oaep ? RSA_PKCS1_OAEP_PADDING : RSA_PKCS1_PADDING) >
               0 &&
           EVP_PKEY_encrypt(c, ct, &ct_len, msg, sizeof(msg)) > 0;
  EVP_PKEY_CTX_free(c);
  ok = ok && be->ops->decrypt(be, key, &alg, ct, (CK_ULONG)ct_len, pt, &pt_len) == CKR_OK &&
       pt_len == sizeof(msg) && memcmp(pt, msg, sizeof(msg)) == 0;
  return ok;
}

static kvp_key_spec rsa_spec(unsigned bits) {
  kvp_key_spec s;
  memset(&s, 0, sizeof(s));
  s.type = KVP_KEY_RSA;
  s.bits = bits;
  return s;
}

static kvp_key_spec ec_spec(int nid) {
  kvp_key_spec s;
  memset(&s, 0, sizeof(s));
  s.type = KVP_KEY_EC;
  s.curve_nid = nid;
  return s;
}

/* A created / imported key: its key_info, opened key and token facts agree. */
static void check_pair(const char *label, kvp_key *key, EVP_PKEY *orig, int generated,
                       int rsa) {
  kvp_key_info info;
  objfacts f;
  unsigned char md[SHA_DIGEST_LENGTH];

  CU_ASSERT_PTR_NOT_NULL_FATAL(key);
  CU_ASSERT_EQUAL_FATAL(g_be->ops->key_info(g_be, label, &info), CKR_OK);
  CU_ASSERT_PTR_NOT_NULL_FATAL(info.pub);
  CU_ASSERT_STRING_EQUAL(info.name, label);
  CU_ASSERT_STRING_EQUAL(info.kty, rsa ? "RSA" : "EC");
  CU_ASSERT_PTR_NULL(info.version);
  CU_ASSERT_EQUAL(info.hsm_protected, 1);
  CU_ASSERT_EQUAL(info.enabled, 1);
  CU_ASSERT_EQUAL(info.type, key->type);
  CU_ASSERT_EQUAL(info.bits, key->bits);
  CU_ASSERT_EQUAL(EVP_PKEY_eq(info.pub, key->pub), 1);
  if (orig != NULL)
    CU_ASSERT_EQUAL(EVP_PKEY_eq(info.pub, orig), 1);
  /* the signature verifies against the public key that key_info reports */
  CU_ASSERT(sign_verifies(g_be, key, info.pub));
  if (orig != NULL)
    CU_ASSERT(sign_verifies(g_be, key, orig));

  CU_ASSERT_FATAL(facts(TOK_PIN, label, &f));
  CU_ASSERT_EQUAL(f.sensitive, 1);
  CU_ASSERT_EQUAL(f.extractable, 0);
  /* PKCS#11: true only for keys that never existed outside the HSM */
  CU_ASSERT_EQUAL(f.always_sensitive, generated);
  CU_ASSERT_EQUAL(f.never_extractable, generated);
  CU_ASSERT_EQUAL(f.private_, 1);
  CU_ASSERT_EQUAL(f.token, 1);
  CU_ASSERT_EQUAL(f.sign, 1);
  CU_ASSERT_EQUAL(f.decrypt, rsa);
  CU_ASSERT_EQUAL(f.secret_hidden, 1);
  CU_ASSERT_EQUAL(f.pub_private, 0);
  CU_ASSERT_EQUAL(info.ops, rsa ? (KVP_KEYOP_SIGN | KVP_KEYOP_DECRYPT) : KVP_KEYOP_SIGN);
  CU_ASSERT_EQUAL(key->can_decrypt, rsa);
  /* default CKA_ID: SHA-1 of the subjectPublicKey, on both objects */
  CU_ASSERT_FATAL(spk_sha1(info.pub, md));
  CU_ASSERT_EQUAL(f.priv_id_len, SHA_DIGEST_LENGTH);
  CU_ASSERT_EQUAL(f.pub_id_len, SHA_DIGEST_LENGTH);
  CU_ASSERT(memcmp(f.priv_id, md, SHA_DIGEST_LENGTH) == 0);
  CU_ASSERT(memcmp(f.pub_id, md, SHA_DIGEST_LENGTH) == 0);
  CU_ASSERT(info.id_len == SHA_DIGEST_LENGTH && memcmp(info.id, md, SHA_DIGEST_LENGTH) == 0);
  kvp_key_info_clear(&info);
}

/* ---------- fault injection ---------- */

/* The backend and this test share SoftHSM2's function list (same dlopen'ed
 * module in one process). When that table is writable, a call can be
 * replaced for a moment to make the HSM fail half-way. */
static int table_writable(const void *addr) {
  char line[512];
  int ok = 0;
  FILE *f = fopen("/proc/self/maps", "r");
  if (f == NULL)
    return 0;
  while (!ok && fgets(line, sizeof(line), f) != NULL) {
    unsigned long lo, hi;
    char perms[8];
    if (sscanf(line, "%lx-%lx %7s", &lo, &hi, perms) == 3 && (unsigned long)addr >= lo &&
        (unsigned long)addr + sizeof(CK_FUNCTION_LIST) <= hi && perms[1] == 'w')
      ok = 1;
  }
  fclose(f);
  return ok;
}

static CK_C_CreateObject real_create;
static CK_C_SetAttributeValue real_set;

/* C_CreateObject that refuses public key objects */
static CK_RV create_no_public(CK_SESSION_HANDLE s, CK_ATTRIBUTE_PTR t, CK_ULONG n,
                              CK_OBJECT_HANDLE_PTR h) {
  for (CK_ULONG i = 0; i < n; i++)
    if (t[i].type == CKA_CLASS && t[i].ulValueLen == sizeof(CK_OBJECT_CLASS) &&
        *(CK_OBJECT_CLASS *)t[i].pValue == CKO_PUBLIC_KEY)
      return CKR_DEVICE_MEMORY;
  return real_create(s, t, n, h);
}

static CK_RV set_fails(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_PTR t, CK_ULONG n) {
  (void)s;
  (void)o;
  (void)t;
  (void)n;
  return CKR_DEVICE_ERROR;
}

/* A failure after the first object exists leaves nothing behind. */
static void test_no_half_keys(void) {
  if (!table_writable(g_fl)) {
    fprintf(stderr, "(SoftHSM2's function list is read-only here: not tested) ");
    return;
  }
  EVP_PKEY *orig = EVP_EC_gen("P-256");
  kvp_key_spec spec = ec_spec(NID_X9_62_prime256v1);
  kvp_key *k = NULL;
  CU_ASSERT_PTR_NOT_NULL_FATAL(orig);

  /* import: the private object is made, the public one fails */
  real_create = g_fl->C_CreateObject;
  g_fl->C_CreateObject = create_no_public;
  kvp_status_clear(); /* as an entry point does: the failure is logged */
  CK_RV rv = g_be->ops->import_key(g_be, "half-imp", orig, NULL, &k);
  g_fl->C_CreateObject = real_create;
  CU_ASSERT_EQUAL(rv, CKR_DEVICE_MEMORY);
  CU_ASSERT_PTR_NULL(k);
  CU_ASSERT(logged("C_CreateObject (key half-imp, public key): CKR_DEVICE_MEMORY"));
  CU_ASSERT_EQUAL(count_objs(TOK_PIN, CKO_PRIVATE_KEY, "half-imp"), 0);
  CU_ASSERT_EQUAL(count_objs(TOK_PIN, CKO_PUBLIC_KEY, "half-imp"), 0);

  /* create: the pair is generated, setting its CKA_ID fails */
  real_set = g_fl->C_SetAttributeValue;
  g_fl->C_SetAttributeValue = set_fails;
  rv = g_be->ops->create_key(g_be, "half-gen", &spec, &k);
  g_fl->C_SetAttributeValue = real_set;
  CU_ASSERT_EQUAL(rv, CKR_DEVICE_ERROR);
  CU_ASSERT_PTR_NULL(k);
  CU_ASSERT_EQUAL(count_objs(TOK_PIN, CKO_PRIVATE_KEY, "half-gen"), 0);
  CU_ASSERT_EQUAL(count_objs(TOK_PIN, CKO_PUBLIC_KEY, "half-gen"), 0);

  /* and both names work afterwards */
  CU_ASSERT_EQUAL(g_be->ops->import_key(g_be, "half-imp", orig, NULL, NULL), CKR_OK);
  CU_ASSERT_EQUAL(g_be->ops->delete_key(g_be, "half-imp"), CKR_OK);
  EVP_PKEY_free(orig);
}

static CK_C_GenerateKeyPair real_gen;

/* C_GenerateKeyPair as if another process made the same label at the same
 * moment: a second pair from the same templates first, then the caller's. */
static CK_RV gen_twice(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_ATTRIBUTE_PTR pub,
                       CK_ULONG n_pub, CK_ATTRIBUTE_PTR priv, CK_ULONG n_priv,
                       CK_OBJECT_HANDLE_PTR h_pub, CK_OBJECT_HANDLE_PTR h_priv) {
  CK_OBJECT_HANDLE other_pub, other_priv;
  CK_RV rv = real_gen(s, m, pub, n_pub, priv, n_priv, &other_pub, &other_priv);
  return rv != CKR_OK ? rv : real_gen(s, m, pub, n_pub, priv, n_priv, h_pub, h_priv);
}

/* The label rule: before a creation no key object may carry the label (a
 * public key alone included); after it only the new private key may. */
static void test_label_rule(void) {
  kvp_key_spec spec = ec_spec(NID_X9_62_prime256v1);
  kvp_key *k = NULL;
  const char *why;

  /* a public key left without its private key still blocks the label */
  CU_ASSERT_EQUAL_FATAL(g_be->ops->create_key(g_be, "pub-only", &spec, NULL), CKR_OK);
  CU_ASSERT_EQUAL_FATAL(hsm_delete(TOK_PIN, "privkey", "pub-only"), 0);
  kvp_status_clear();
  CU_ASSERT_EQUAL(g_be->ops->create_key(g_be, "pub-only", &spec, &k), CKR_ATTRIBUTE_VALUE_INVALID);
  CU_ASSERT_PTR_NULL(k);
  why = kvp_status_reason();
  CU_ASSERT(why != NULL && strstr(why, "a public key labelled pub-only exists already (without "
                                       "a private key); kvp11 does not replace keys") != NULL);
  CU_ASSERT_EQUAL(count_objs(TOK_PIN, CKO_PRIVATE_KEY, "pub-only"), 0);
  CU_ASSERT_EQUAL(count_objs(TOK_PIN, CKO_PUBLIC_KEY, "pub-only"), 1);
  CU_ASSERT_EQUAL(hsm_delete(TOK_PIN, "pubkey", "pub-only"), 0); /* the later tests count keys */

  /* someone else made the label at the same time: this creation undoes its own pair */
  if (!table_writable(g_fl)) {
    fprintf(stderr, "(SoftHSM2's function list is read-only here: the race is not tested) ");
    return;
  }
  real_gen = g_fl->C_GenerateKeyPair;
  g_fl->C_GenerateKeyPair = gen_twice;
  kvp_status_clear();
  CK_RV rv = g_be->ops->create_key(g_be, "raced", &spec, &k);
  g_fl->C_GenerateKeyPair = real_gen;
  CU_ASSERT_EQUAL(rv, CKR_ATTRIBUTE_VALUE_INVALID);
  CU_ASSERT_PTR_NULL(k);
  why = kvp_status_reason();
  CU_ASSERT(why != NULL && strstr(why, "a key labelled raced exists already; kvp11 does not "
                                       "replace keys (created at the same time by someone "
                                       "else)") != NULL);
  CU_ASSERT_EQUAL(count_objs(TOK_PIN, CKO_PRIVATE_KEY, "raced"), 1); /* the other's */
  CU_ASSERT_EQUAL(count_objs(TOK_PIN, CKO_PUBLIC_KEY, "raced"), 1);
  CU_ASSERT_EQUAL(hsm_delete(TOK_PIN, "privkey", "raced"), 0);
  CU_ASSERT_EQUAL(hsm_delete(TOK_PIN, "pubkey", "raced"), 0);
}

/* ---------- tests ---------- */

static void test_create_rsa(void) {
  kvp_key_spec spec = rsa_spec(2048);
  kvp_key *k = NULL;
  CU_ASSERT_EQUAL_FATAL(g_be->ops->create_key(g_be, "new-rsa", &spec, &k), CKR_OK);
  CU_ASSERT_EQUAL(k->type, KVP_KEY_RSA);
  CU_ASSERT_EQUAL(k->bits, 2048);
  check_pair("new-rsa", k, NULL, 1, 1);
  CU_ASSERT(decrypt_roundtrip(g_be, k, k->pub, 0));
  g_be->ops->close_key(g_be, k);
}

static void test_create_ec(void) {
  static const struct {
    const char *label;
    int nid;
    unsigned bits;
  } cases[] = {{"new-p256", NID_X9_62_prime256v1, 256}, {"new-p384", NID_secp384r1, 384}};
  for (size_t i = 0; i < 2; i++) {
    kvp_key_spec spec = ec_spec(cases[i].nid);
    kvp_key *k = NULL;
    CU_ASSERT_EQUAL_FATAL(g_be->ops->create_key(g_be, cases[i].label, &spec, &k), CKR_OK);
    CU_ASSERT_EQUAL(k->type, KVP_KEY_EC);
    CU_ASSERT_EQUAL(k->bits, cases[i].bits);
    CU_ASSERT_EQUAL(k->curve_nid, cases[i].nid);
    check_pair(cases[i].label, k, NULL, 1, 0);
    g_be->ops->close_key(g_be, k);
  }
}

static void test_create_with_id(void) {
  unsigned char id[] = {0xca, 0xfe, 0x00, 0x01};
  kvp_key_spec spec = ec_spec(NID_X9_62_prime256v1);
  kvp_key_info info;
  objfacts f;
  spec.id = id;
  spec.id_len = sizeof(id);
  CU_ASSERT_EQUAL_FATAL(g_be->ops->create_key(g_be, "with-id", &spec, NULL), CKR_OK);
  CU_ASSERT_FATAL(facts(TOK_PIN, "with-id", &f));
  CU_ASSERT(f.priv_id_len == sizeof(id) && memcmp(f.priv_id, id, sizeof(id)) == 0);
  CU_ASSERT(f.pub_id_len == sizeof(id) && memcmp(f.pub_id, id, sizeof(id)) == 0);
  CU_ASSERT_EQUAL_FATAL(g_be->ops->key_info(g_be, "with-id", &info), CKR_OK);
  CU_ASSERT(info.id_len == sizeof(id) && memcmp(info.id, id, sizeof(id)) == 0);
  kvp_key_info_clear(&info);
  /* the key opens by that id, too */
  kvp_key *k = NULL;
  CU_ASSERT_EQUAL_FATAL(g_be->ops->open_key(g_be, "id:cafe0001", &k), CKR_OK);
  CU_ASSERT(sign_verifies(g_be, k, k->pub));
  g_be->ops->close_key(g_be, k);
}

static void test_refusals(void) {
  kvp_key_spec ec = ec_spec(NID_X9_62_prime256v1), rsa = rsa_spec(1024);
  kvp_key *k = (kvp_key *)&k; /* must be reset to NULL */
  char long_name[129];

  /* an existing label: refused, and there is still exactly one such key */
  kvp_status_clear(); /* as an entry point does: the failure is logged */
  CU_ASSERT_EQUAL(g_be->ops->create_key(g_be, "new-rsa", &ec, &k), CKR_ATTRIBUTE_VALUE_INVALID);
  CU_ASSERT_PTR_NULL(k);
  CU_ASSERT(logged("hsm prov: a key labelled new-rsa exists already; kvp11 does not replace "
                   "keys"));
  CU_ASSERT_EQUAL(count_objs(TOK_PIN, CKO_PRIVATE_KEY, "new-rsa"), 1);
  CU_ASSERT_EQUAL(count_objs(TOK_PIN, CKO_PUBLIC_KEY, "new-rsa"), 1);

  /* names */
  memset(long_name, 'a', 128);
  long_name[128] = '\0';
  const char *bad[] = {"", "tab\there", "del\x7f", "bad\xff utf8", "\xc0\xaf", "c1\xc2\x85",
                       "id:0102", long_name};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
    CU_ASSERT_EQUAL(g_be->ops->create_key(g_be, bad[i], &ec, NULL), CKR_ATTRIBUTE_VALUE_INVALID);
  long_name[127] = '\0'; /* 127 bytes, and UTF-8 beyond ASCII, are fine */
  CU_ASSERT_EQUAL(g_be->ops->create_key(g_be, long_name, &ec, NULL), CKR_OK);
  CU_ASSERT_EQUAL(g_be->ops->create_key(g_be, "cl\xc3\xa9 \xe2\x82\xac", &ec, NULL), CKR_OK);
  CU_ASSERT_EQUAL(g_be->ops->delete_key(g_be, long_name), CKR_OK);
  CU_ASSERT_EQUAL(g_be->ops->delete_key(g_be, "cl\xc3\xa9 \xe2\x82\xac"), CKR_OK);

  /* sizes, curves, operations */
  CU_ASSERT_EQUAL(g_be->ops->create_key(g_be, "small", &rsa, NULL), CKR_KEY_SIZE_RANGE);
  rsa.bits = 8192;
  CU_ASSERT_EQUAL(g_be->ops->create_key(g_be, "big", &rsa, NULL), CKR_KEY_SIZE_RANGE);
  ec.curve_nid = NID_secp256k1;
  CU_ASSERT_EQUAL(g_be->ops->create_key(g_be, "k1", &ec, NULL), CKR_KEY_TYPE_INCONSISTENT);
  ec.curve_nid = NID_X9_62_prime256v1;
  ec.ops = KVP_KEYOP_SIGN | KVP_KEYOP_DECRYPT;
  CU_ASSERT_EQUAL(g_be->ops->create_key(g_be, "ecdec", &ec, NULL), CKR_TEMPLATE_INCONSISTENT);
  CU_ASSERT_EQUAL(count_objs(TOK_PIN, CKO_PRIVATE_KEY, "small"), 0);
  CU_ASSERT_EQUAL(count_objs(TOK_PIN, CKO_PRIVATE_KEY, "ecdec"), 0);
}

static void test_ops_flags(void) {
  kvp_key_spec spec = rsa_spec(2048);
  kvp_key *k = NULL;
  objfacts f;
  spec.ops = KVP_KEYOP_SIGN;
  CU_ASSERT_EQUAL_FATAL(g_be->ops->create_key(g_be, "sign-only", &spec, &k), CKR_OK);
  CU_ASSERT_EQUAL(k->can_sign, 1);
  CU_ASSERT_EQUAL(k->can_decrypt, 0);
  CU_ASSERT_FATAL(facts(TOK_PIN, "sign-only", &f));
  CU_ASSERT_EQUAL(f.sign, 1);
  CU_ASSERT_EQUAL(f.decrypt, 0);
  g_be->ops->close_key(g_be, k);
  CU_ASSERT_EQUAL(g_be->ops->delete_key(g_be, "sign-only"), CKR_OK);
}

static void test_import_rsa(void) {
  EVP_PKEY *orig = EVP_RSA_gen(2048);
  kvp_key *k = NULL;
  CU_ASSERT_PTR_NOT_NULL_FATAL(orig);
  CU_ASSERT_EQUAL_FATAL(g_be->ops->import_key(g_be, "imp-rsa", orig, NULL, &k), CKR_OK);
  CU_ASSERT_EQUAL(k->bits, 2048);
  check_pair("imp-rsa", k, orig, 0, 1);
  /* data encrypted with the original public key decrypts in the HSM */
  CU_ASSERT(decrypt_roundtrip(g_be, k, orig, 0));
  CU_ASSERT(decrypt_roundtrip(g_be, k, orig, 1));
  g_be->ops->close_key(g_be, k);
  /* the same name again: refused, the first import untouched */
  EVP_PKEY *other = EVP_EC_gen("P-256");
  CU_ASSERT_EQUAL(g_be->ops->import_key(g_be, "imp-rsa", other, NULL, NULL),
                  CKR_ATTRIBUTE_VALUE_INVALID);
  CU_ASSERT_EQUAL(count_objs(TOK_PIN, CKO_PRIVATE_KEY, "imp-rsa"), 1);
  EVP_PKEY_free(other);
  EVP_PKEY_free(orig);
}

static void test_import_ec(void) {
  EVP_PKEY *orig = EVP_EC_gen("P-256");
  kvp_key *k = NULL;
  CU_ASSERT_PTR_NOT_NULL_FATAL(orig);
  CU_ASSERT_EQUAL_FATAL(g_be->ops->import_key(g_be, "imp-p256", orig, NULL, &k), CKR_OK);
  CU_ASSERT_EQUAL(k->curve_nid, NID_X9_62_prime256v1);
  check_pair("imp-p256", k, orig, 0, 0);
  g_be->ops->close_key(g_be, k);
  EVP_PKEY_free(orig);
}

static void test_import_refused(void) {
  EVP_PKEY *small = EVP_RSA_gen(1024);
  EVP_PKEY *ed = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
  EVP_PKEY *k1 = EVP_EC_gen("secp256k1");
  kvp_key *k = NULL;
  CU_ASSERT_PTR_NOT_NULL_FATAL(small);
  CU_ASSERT_PTR_NOT_NULL_FATAL(ed);
  CU_ASSERT_PTR_NOT_NULL_FATAL(k1);
  kvp_status_clear(); /* as an entry point does: the failure is logged */
  CU_ASSERT_EQUAL(g_be->ops->import_key(g_be, "imp-1024", small, NULL, &k), CKR_KEY_SIZE_RANGE);
  CU_ASSERT(logged("key imp-1024: RSA-1024 cannot be imported"));
  kvp_status_clear(); /* as an entry point does: the failure is logged */
  CU_ASSERT_EQUAL(g_be->ops->import_key(g_be, "imp-ed", ed, NULL, &k), CKR_KEY_TYPE_INCONSISTENT);
  CU_ASSERT(logged("key imp-ed: ED25519 keys cannot be imported"));
  CU_ASSERT_EQUAL(g_be->ops->import_key(g_be, "imp-k1", k1, NULL, &k), CKR_KEY_TYPE_INCONSISTENT);
  CU_ASSERT_PTR_NULL(k);
  const char *labels[] = {"imp-1024", "imp-ed", "imp-k1"};
  for (int i = 0; i < 3; i++) {
    CU_ASSERT_EQUAL(count_objs(TOK_PIN, CKO_PRIVATE_KEY, labels[i]), 0);
    CU_ASSERT_EQUAL(count_objs(TOK_PIN, CKO_PUBLIC_KEY, labels[i]), 0);
  }
  EVP_PKEY_free(small);
  EVP_PKEY_free(ed);
  EVP_PKEY_free(k1);
}

static void test_list(void) {
  kvp_key_info *infos = NULL;
  size_t n = 0;
  static const struct {
    const char *name;
    const char *kty;
    unsigned bits;
    unsigned ops;
  } want[] = {
      {"new-rsa", "RSA", 2048, KVP_KEYOP_SIGN | KVP_KEYOP_DECRYPT},
      {"new-p256", "EC", 256, KVP_KEYOP_SIGN},
      {"new-p384", "EC", 384, KVP_KEYOP_SIGN},
      {"with-id", "EC", 256, KVP_KEYOP_SIGN},
      {"imp-rsa", "RSA", 2048, KVP_KEYOP_SIGN | KVP_KEYOP_DECRYPT},
      {"imp-p256", "EC", 256, KVP_KEYOP_SIGN},
  };
  CU_ASSERT_EQUAL_FATAL(g_be->ops->list_keys(g_be, &infos, &n), CKR_OK);
  CU_ASSERT_EQUAL(n, sizeof(want) / sizeof(want[0]));
  for (size_t w = 0; w < sizeof(want) / sizeof(want[0]); w++) {
    int found = 0;
    for (size_t i = 0; i < n; i++) {
      if (strcmp(infos[i].name, want[w].name) != 0)
        continue;
      found++;
      CU_ASSERT_STRING_EQUAL(infos[i].kty, want[w].kty);
      CU_ASSERT_EQUAL(infos[i].bits, want[w].bits);
      CU_ASSERT_EQUAL(infos[i].ops, want[w].ops);
      CU_ASSERT_EQUAL(infos[i].hsm_protected, 1);
      CU_ASSERT_EQUAL(infos[i].enabled, 1);
      CU_ASSERT_PTR_NULL(infos[i].version);
      CU_ASSERT_PTR_NOT_NULL(infos[i].id);
      /* the same public key as key_info and open_key give */
      kvp_key_info one;
      kvp_key *k = NULL;
      CU_ASSERT_EQUAL_FATAL(g_be->ops->key_info(g_be, want[w].name, &one), CKR_OK);
      CU_ASSERT_EQUAL_FATAL(g_be->ops->open_key(g_be, want[w].name, &k), CKR_OK);
      CU_ASSERT(infos[i].pub != NULL && EVP_PKEY_eq(infos[i].pub, one.pub) == 1 &&
                EVP_PKEY_eq(infos[i].pub, k->pub) == 1);
      CU_ASSERT(infos[i].id_len == one.id_len &&
                memcmp(infos[i].id, one.id, one.id_len) == 0);
      kvp_key_info_clear(&one);
      g_be->ops->close_key(g_be, k);
    }
    CU_ASSERT_EQUAL(found, 1);
  }
  kvp_key_info_free_array(infos, n);
}

static void test_delete(void) {
  kvp_key_info info;
  kvp_key *k = NULL;
  CU_ASSERT_EQUAL_FATAL(g_be->ops->delete_key(g_be, "new-p384"), CKR_OK);
  CU_ASSERT_EQUAL(g_be->ops->key_info(g_be, "new-p384", &info), CKR_KEY_HANDLE_INVALID);
  CU_ASSERT_PTR_NULL(info.name);
  CU_ASSERT_EQUAL(count_objs(TOK_PIN, CKO_PRIVATE_KEY, "new-p384"), 0);
  CU_ASSERT_EQUAL(count_objs(TOK_PIN, CKO_PUBLIC_KEY, "new-p384"), 0);
  CU_ASSERT_EQUAL(g_be->ops->open_key(g_be, "new-p384", &k), CKR_KEY_HANDLE_INVALID);
  CU_ASSERT_EQUAL(g_be->ops->delete_key(g_be, "new-p384"), CKR_KEY_HANDLE_INVALID);
  /* the other keys are still there */
  CU_ASSERT_EQUAL(count_objs(TOK_PIN, CKO_PRIVATE_KEY, "new-p256"), 1);
  /* the name is free again */
  kvp_key_spec spec = ec_spec(NID_secp384r1);
  CU_ASSERT_EQUAL_FATAL(g_be->ops->create_key(g_be, "new-p384", &spec, &k), CKR_OK);
  CU_ASSERT(sign_verifies(g_be, k, k->pub));
  g_be->ops->close_key(g_be, k);
}

static void test_passthrough(void) {
  kvp_key_spec spec = ec_spec(NID_X9_62_prime256v1);
  kvp_key *k = NULL;
  kvp_key_info *infos = NULL;
  size_t n = 0;
  CU_ASSERT_EQUAL(g_pass->ops->needs_login(g_pass), 1);
  kvp_status_clear();
  CU_ASSERT_EQUAL(g_pass->ops->create_key(g_pass, "pt", &spec, &k), CKR_USER_NOT_LOGGED_IN);
  CU_ASSERT(logged("hsm pass: creating a key needs the user to be logged in"));
  CU_ASSERT_EQUAL(g_pass->ops->list_keys(g_pass, &infos, &n), CKR_USER_NOT_LOGGED_IN);
  CU_ASSERT_EQUAL(g_pass->ops->delete_key(g_pass, "pt"), CKR_USER_NOT_LOGGED_IN);
  CU_ASSERT_EQUAL(count_objs(TOK_PASS, CKO_PUBLIC_KEY, "pt"), 0);

  CU_ASSERT_EQUAL_FATAL(
      g_pass->ops->login(g_pass, (const CK_UTF8CHAR *)USER_PIN, sizeof(USER_PIN) - 1), CKR_OK);
  CU_ASSERT_EQUAL_FATAL(g_pass->ops->create_key(g_pass, "pt", &spec, &k), CKR_OK);
  CU_ASSERT(sign_verifies(g_pass, k, k->pub));
  CU_ASSERT_EQUAL(g_pass->ops->list_keys(g_pass, &infos, &n), CKR_OK);
  CU_ASSERT(n == 1 && strcmp(infos[0].name, "pt") == 0);
  kvp_key_info_free_array(infos, n);
  CU_ASSERT_EQUAL(g_pass->ops->logout(g_pass), CKR_OK);

  /* logged out again: no provisioning, and the key needs a login to sign */
  CU_ASSERT_EQUAL(g_pass->ops->create_key(g_pass, "pt2", &spec, NULL), CKR_USER_NOT_LOGGED_IN);
  {
    unsigned char dig[32] = {1}, sig[64];
    CK_ULONG sl = sizeof(sig);
    kvp_sig_alg alg = {KVP_SIG_ECDSA, KVP_HASH_SHA256, KVP_HASH_NONE, 0};
    CU_ASSERT_EQUAL(g_pass->ops->sign(g_pass, k, &alg, dig, 32, sig, &sl), CKR_USER_NOT_LOGGED_IN);
  }
  g_pass->ops->close_key(g_pass, k);
  /* the login op still works as before */
  CU_ASSERT_EQUAL(g_pass->ops->login(g_pass, (const CK_UTF8CHAR *)"0000", 4), CKR_PIN_INCORRECT);
  CU_ASSERT_EQUAL(g_pass->ops->login(g_pass, (const CK_UTF8CHAR *)USER_PIN, sizeof(USER_PIN) - 1),
                  CKR_OK);
  CU_ASSERT_EQUAL(g_pass->ops->delete_key(g_pass, "pt"), CKR_OK);
  CU_ASSERT_EQUAL(g_pass->ops->logout(g_pass), CKR_OK);
  CU_ASSERT_EQUAL(count_objs(TOK_PASS, CKO_PUBLIC_KEY, "pt"), 0);
}

int main(void) {
  static CU_TestInfo tests[] = {
      {"create RSA-2048", test_create_rsa},
      {"create P-256 and P-384", test_create_ec},
      {"create with a given CKA_ID", test_create_with_id},
      {"refusals", test_refusals},
      {"key operations", test_ops_flags},
      {"import RSA-2048", test_import_rsa},
      {"import P-256", test_import_ec},
      {"import of unsupported keys", test_import_refused},
      {"no half-made keys", test_no_half_keys},
      {"the label rule before and after a creation", test_label_rule},
      {"list", test_list},
      {"delete", test_delete},
      {"PIN passed through", test_passthrough},
      CU_TEST_INFO_NULL,
  };
  static const char *const tokens[] = {TOK_PIN, TOK_PASS, NULL};
  int rc = hsm_fixture_init("hsm_provision", tokens, 0);
  if (rc != 0)
    return rc;
  snprintf(g_log, sizeof(g_log), "%s/kvp11.log", hsm_dir);
  unsetenv("KVP11_DEBUG");
  kvp_log_setup(KVP_LOG_INFO, g_log);
  alarm(300); /* valgrind runs take about a minute */

  int failed = unit_run_suite("hsm_provision", suite_init, suite_clean, tests);
  kvp_log_close();
  return failed;
}
