/*
 * Unit tests of the HSM backend (module/backend/hsm) against SoftHSM2.
 *
 * The test makes its own SoftHSM2 tokens under $KVP11_TEST_TMP/hsm_backend
 * (softhsm2-util, pkcs11-tool) and checks every result independently with
 * OpenSSL: public keys against what pkcs11-tool reads from the token,
 * signatures verified against the public key, ciphertexts made by OpenSSL.
 * Exits 77 (skipped) when SoftHSM2 or pkcs11-tool is missing.
 */
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CUnit/Basic.h>
#include <CUnit/CUnit.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/obj_mac.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "backend/backend.h"
#include "core/config.h"
#include "core/p11names.h"
#include "core/status.h"
#include "hsm_fixture.h"
#include "unit_util.h"

#define TOKEN "kvp-hsm-unit"
/* for the pass-through PIN tests; not a prefix of TOKEN: pkcs11-tool's
 * --token-label matches prefixes */
#define TOKEN2 "kvp-pass-unit"
#define PIN HSM_PIN

static kvp_backend *g_be;  /* configured PIN, token TOKEN */
static kvp_key *g_rsa;
static kvp_key *g_ec;

/* ---------- fixture (hsm_fixture.h) ---------- */

static int make_keys(void) {
  if (hsm_keygen(TOKEN, "rsa", "01", "rsa:2048", 1) != 0 ||
      hsm_keygen(TOKEN, "ec", "02", "EC:prime256v1", 0) != 0 ||
      hsm_keygen(TOKEN, "reres", "03", "EC:prime256v1", 0) != 0 ||
      hsm_keygen(TOKEN2, "rsa", "01", "rsa:2048", 1) != 0)
    return -1;
  return 0;
}

static kvp_hsm_conf make_conf(const char *name, const char *token, int with_pin) {
  return hsm_conf(name, hsm_module, token, with_pin ? hsm_pinfile : NULL);
}

/* The thread's OpenSSL error queue after the first open_key (SoftHSM2's
 * C_Initialize leaves errors in it): only the application's own error. */
static int g_queue_kept;

static int suite_init(void) {
  kvp_hsm_conf c = make_conf("unit", TOKEN, 1);
  if (kvp_hsm_backend_new(&c, &g_be) != CKR_OK)
    return -1;
  ERR_clear_error();
  ERR_raise(ERR_LIB_USER, 42); /* the application's own error */
  if (kvp_backend_open_key(g_be, "rsa", NULL, &g_rsa) != CKR_OK)
    return -1;
  unsigned long e = ERR_get_error();
  g_queue_kept = ERR_GET_LIB(e) == ERR_LIB_USER && ERR_GET_REASON(e) == 42 && ERR_get_error() == 0;
  ERR_clear_error();
  if (g_be->ops->open_key(g_be, "ec", &g_ec) != CKR_OK)
    return -1;
  return 0;
}

static int suite_clean(void) {
  if (g_be != NULL) {
    if (g_rsa)
      g_be->ops->close_key(g_be, g_rsa);
    if (g_ec)
      g_be->ops->close_key(g_be, g_ec);
    g_be->ops->destroy(g_be, 0);
  }
  g_be = NULL;
  return 0;
}

/* ---------- verification helpers (OpenSSL only) ---------- */

static const EVP_MD *md_of(kvp_hash h) {
  switch (h) {
  case KVP_HASH_SHA1: return EVP_sha1();
  case KVP_HASH_SHA224: return EVP_sha224();
  case KVP_HASH_SHA256: return EVP_sha256();
  case KVP_HASH_SHA384: return EVP_sha384();
  case KVP_HASH_SHA512: return EVP_sha512();
  default: return NULL;
  }
}

/* Verify a signature over a bare digest. pad: RSA_PKCS1_PADDING / RSA_PKCS1_PSS_PADDING / 0 (EC). */
static int verify_digest(EVP_PKEY *pub, int pad, const EVP_MD *md, int salt,
                         const unsigned char *dig, size_t dig_len, const unsigned char *sig,
                         size_t sig_len) {
  EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(pub, NULL);
  int ok = 0;
  if (ctx == NULL || EVP_PKEY_verify_init(ctx) <= 0)
    goto out;
  if (pad != 0 && EVP_PKEY_CTX_set_rsa_padding(ctx, pad) <= 0)
    goto out;
  if (md != NULL && EVP_PKEY_CTX_set_signature_md(ctx, md) <= 0)
    goto out;
  if (pad == RSA_PKCS1_PSS_PADDING && (EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, md) <= 0 ||
                                       EVP_PKEY_CTX_set_rsa_pss_saltlen(ctx, salt) <= 0))
    goto out;
  ok = EVP_PKEY_verify(ctx, sig, sig_len, dig, dig_len) == 1;
out:
  EVP_PKEY_CTX_free(ctx);
  return ok;
}

/* r||s (PKCS#11) -> DER ECDSA-Sig-Value, then verify. */
static int verify_ecdsa(EVP_PKEY *pub, const unsigned char *dig, size_t dig_len,
                        const unsigned char *sig, size_t sig_len) {
  ECDSA_SIG *es = ECDSA_SIG_new();
  unsigned char *der = NULL;
  int ok = 0;
  BIGNUM *r = BN_bin2bn(sig, (int)(sig_len / 2), NULL);
  BIGNUM *s = BN_bin2bn(sig + sig_len / 2, (int)(sig_len / 2), NULL);
  if (es == NULL || r == NULL || s == NULL || !ECDSA_SIG_set0(es, r, s)) {
    BN_free(r);
    BN_free(s);
    goto out;
  }
  int der_len = i2d_ECDSA_SIG(es, &der);
  if (der_len <= 0)
    goto out;
  ok = verify_digest(pub, 0, NULL, 0, dig, dig_len, der, (size_t)der_len);
out:
  OPENSSL_free(der);
  ECDSA_SIG_free(es);
  return ok;
}

static int encrypt_with(EVP_PKEY *pub, int pad, const EVP_MD *oaep_md, const unsigned char *in,
                        size_t in_len, unsigned char *out, size_t *out_len) {
  EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(pub, NULL);
  int ok = 0;
  if (ctx == NULL || EVP_PKEY_encrypt_init(ctx) <= 0 || EVP_PKEY_CTX_set_rsa_padding(ctx, pad) <= 0)
    goto out;
  if (oaep_md != NULL && (EVP_PKEY_CTX_set_rsa_oaep_md(ctx, oaep_md) <= 0 ||
                          EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, oaep_md) <= 0))
    goto out;
  ok = EVP_PKEY_encrypt(ctx, out, out_len, in, in_len) == 1;
out:
  EVP_PKEY_CTX_free(ctx);
  return ok;
}

static void rand_bytes(unsigned char *p, size_t n) { CU_ASSERT_FATAL(RAND_bytes(p, (int)n) == 1); }

/* OpenSSL's ciphertext of in[0..n) with g_rsa's public key (pad, oaep_md; asserted, fatal)
 * into ct, given to the backend's decrypt as alg: its answer, the plaintext in out. */
static CK_RV decrypt_ct(int pad, const EVP_MD *oaep_md, const unsigned char *in, size_t n,
                        const kvp_dec_alg *alg, unsigned char ct[256], unsigned char out[256],
                        CK_ULONG *out_len) {
  size_t ct_len = 256;
  CU_ASSERT_FATAL(encrypt_with(g_rsa->pub, pad, oaep_md, in, n, ct, &ct_len));
  *out_len = 256;
  return g_be->ops->decrypt(g_be, g_rsa, alg, ct, (CK_ULONG)ct_len, out, out_len);
}

/* ---------- tests ---------- */

static void test_open_rsa(void) {
  CU_ASSERT_PTR_NOT_NULL_FATAL(g_rsa);
  CU_ASSERT_EQUAL(g_rsa->type, KVP_KEY_RSA);
  CU_ASSERT_EQUAL(g_rsa->bits, 2048);
  CU_ASSERT_EQUAL(g_rsa->can_sign, 1);
  CU_ASSERT_EQUAL(g_rsa->can_decrypt, 1);
  CU_ASSERT_EQUAL(g_rsa->private_obj, 0);
  CU_ASSERT_STRING_EQUAL(g_rsa->name, "rsa");
  EVP_PKEY *ref = hsm_token_pubkey(TOKEN, "rsa");
  CU_ASSERT_PTR_NOT_NULL_FATAL(ref);
  CU_ASSERT_EQUAL(EVP_PKEY_eq(ref, g_rsa->pub), 1);
  /* the other token's RSA key is a different key: the comparison can fail */
  EVP_PKEY *other = hsm_token_pubkey(TOKEN2, "rsa");
  CU_ASSERT_PTR_NOT_NULL_FATAL(other);
  CU_ASSERT_NOT_EQUAL(EVP_PKEY_eq(other, g_rsa->pub), 1);
  EVP_PKEY_free(other);
  EVP_PKEY_free(ref);
}

static void test_open_ec(void) {
  CU_ASSERT_PTR_NOT_NULL_FATAL(g_ec);
  CU_ASSERT_EQUAL(g_ec->type, KVP_KEY_EC);
  CU_ASSERT_EQUAL(g_ec->bits, 256);
  CU_ASSERT_EQUAL(g_ec->curve_nid, NID_X9_62_prime256v1);
  CU_ASSERT_EQUAL(g_ec->can_sign, 1);
  CU_ASSERT_EQUAL(g_ec->can_decrypt, 0);
  EVP_PKEY *ref = hsm_token_pubkey(TOKEN, "ec");
  CU_ASSERT_PTR_NOT_NULL_FATAL(ref);
  CU_ASSERT_EQUAL(EVP_PKEY_eq(ref, g_ec->pub), 1);
  EVP_PKEY_free(ref);
}

static void test_open_by_id(void) {
  kvp_key *k = NULL;
  CU_ASSERT_EQUAL_FATAL(g_be->ops->open_key(g_be, "id:01", &k), CKR_OK);
  CU_ASSERT_EQUAL(EVP_PKEY_eq(k->pub, g_rsa->pub), 1);
  g_be->ops->close_key(g_be, k);
  k = NULL;
  CU_ASSERT_EQUAL_FATAL(g_be->ops->open_key(g_be, "id:02", &k), CKR_OK);
  CU_ASSERT_EQUAL(EVP_PKEY_eq(k->pub, g_ec->pub), 1);
  g_be->ops->close_key(g_be, k);
  k = NULL;
  CU_ASSERT_EQUAL(g_be->ops->open_key(g_be, "id:7f", &k), CKR_KEY_HANDLE_INVALID);
  CU_ASSERT_EQUAL(g_be->ops->open_key(g_be, "id:zz", &k), CKR_KEY_HANDLE_INVALID);
  CU_ASSERT_PTR_NULL(k);
}

static void test_missing_label(void) {
  kvp_key *k = NULL;
  CU_ASSERT_EQUAL(g_be->ops->open_key(g_be, "no-such-key", &k), CKR_KEY_HANDLE_INVALID);
  CU_ASSERT_PTR_NULL(k);
}

static void test_missing_token(void) {
  kvp_hsm_conf c = make_conf("nosuch", "no-such-token", 1);
  kvp_backend *be = NULL;
  kvp_key *k = NULL;
  CU_ASSERT_EQUAL_FATAL(kvp_hsm_backend_new(&c, &be), CKR_OK);
  CU_ASSERT_NOT_EQUAL(be->ops->open_key(be, "rsa", &k), CKR_OK);
  CU_ASSERT_PTR_NULL(k);
  be->ops->destroy(be, 0);
  /* the shared module stays usable for the other backend */
  unsigned char dig[32], sig[64];
  CK_ULONG sl = sizeof(sig);
  kvp_sig_alg alg = {KVP_SIG_ECDSA, KVP_HASH_SHA256, KVP_HASH_NONE, 0};
  rand_bytes(dig, sizeof(dig));
  CU_ASSERT_EQUAL(g_be->ops->sign(g_be, g_ec, &alg, dig, 32, sig, &sl), CKR_OK);
}

static void test_sign_pkcs1(void) {
  const kvp_hash hs[] = {KVP_HASH_SHA1, KVP_HASH_SHA224, KVP_HASH_SHA256, KVP_HASH_SHA384,
                         KVP_HASH_SHA512};
  for (size_t i = 0; i < sizeof(hs) / sizeof(hs[0]); i++) {
    const EVP_MD *md = md_of(hs[i]);
    unsigned char dig[64], sig[256];
    size_t dl = (size_t)EVP_MD_get_size(md);
    CK_ULONG sl = sizeof(sig);
    kvp_sig_alg alg = {KVP_SIG_RSA_PKCS1, hs[i], KVP_HASH_NONE, 0};
    rand_bytes(dig, dl);
    CU_ASSERT_EQUAL_FATAL(g_be->ops->sign(g_be, g_rsa, &alg, dig, (CK_ULONG)dl, sig, &sl), CKR_OK);
    CU_ASSERT_EQUAL(sl, 256);
    CU_ASSERT_EQUAL(verify_digest(g_rsa->pub, RSA_PKCS1_PADDING, md, 0, dig, dl, sig, sl), 1);
    dig[0] ^= 1; /* a different digest must not verify */
    CU_ASSERT_EQUAL(verify_digest(g_rsa->pub, RSA_PKCS1_PADDING, md, 0, dig, dl, sig, sl), 0);
  }
  /* wrong digest length for the hash */
  unsigned char dig[32] = {0}, sig[256];
  CK_ULONG sl = sizeof(sig);
  kvp_sig_alg alg = {KVP_SIG_RSA_PKCS1, KVP_HASH_SHA384, KVP_HASH_NONE, 0};
  CU_ASSERT_EQUAL(g_be->ops->sign(g_be, g_rsa, &alg, dig, 32, sig, &sl), CKR_DATA_LEN_RANGE);
  /* RSA scheme on an EC key */
  alg.hash = KVP_HASH_SHA256;
  CU_ASSERT_NOT_EQUAL(g_be->ops->sign(g_be, g_ec, &alg, dig, 32, sig, &sl), CKR_OK);
}

static void test_sign_pkcs1_raw(void) {
  /* hash NONE: the input goes to CKM_RSA_PKCS as is (here a DigestInfo made by OpenSSL) */
  unsigned char dig[32], sig[256], msg[] = "raw CKM_RSA_PKCS input";
  unsigned int dl = 0;
  CU_ASSERT_FATAL(EVP_Digest(msg, sizeof(msg), dig, &dl, EVP_sha256(), NULL) == 1);
  X509_SIG *xs = X509_SIG_new();
  X509_ALGOR *alg_id = NULL;
  ASN1_OCTET_STRING *os = NULL;
  X509_SIG_getm(xs, &alg_id, &os);
  X509_ALGOR_set0(alg_id, OBJ_nid2obj(NID_sha256), V_ASN1_NULL, NULL);
  ASN1_OCTET_STRING_set(os, dig, (int)dl);
  unsigned char *di = NULL;
  int di_len = i2d_X509_SIG(xs, &di);
  X509_SIG_free(xs);
  CU_ASSERT_FATAL(di_len > 0);

  CK_ULONG sl = sizeof(sig);
  kvp_sig_alg alg = {KVP_SIG_RSA_PKCS1, KVP_HASH_NONE, KVP_HASH_NONE, 0};
  CU_ASSERT_EQUAL_FATAL(g_be->ops->sign(g_be, g_rsa, &alg, di, (CK_ULONG)di_len, sig, &sl),
                        CKR_OK);
  OPENSSL_free(di);
  CU_ASSERT_EQUAL(verify_digest(g_rsa->pub, RSA_PKCS1_PADDING, EVP_sha256(), 0, dig, dl, sig, sl),
                  1);
  /* too long for the modulus */
  unsigned char big[300];
  memset(big, 0x55, sizeof(big));
  sl = sizeof(sig);
  CU_ASSERT_EQUAL(g_be->ops->sign(g_be, g_rsa, &alg, big, sizeof(big), sig, &sl),
                  CKR_DATA_LEN_RANGE);
}

static void test_sign_pss(void) {
  const kvp_hash hs[] = {KVP_HASH_SHA1, KVP_HASH_SHA256, KVP_HASH_SHA384, KVP_HASH_SHA512};
  for (size_t i = 0; i < sizeof(hs) / sizeof(hs[0]); i++) {
    const EVP_MD *md = md_of(hs[i]);
    unsigned char dig[64], sig[256];
    size_t dl = (size_t)EVP_MD_get_size(md);
    CK_ULONG sl = sizeof(sig);
    kvp_sig_alg alg = {KVP_SIG_RSA_PSS, hs[i], hs[i], dl};
    rand_bytes(dig, dl);
    CU_ASSERT_EQUAL_FATAL(g_be->ops->sign(g_be, g_rsa, &alg, dig, (CK_ULONG)dl, sig, &sl), CKR_OK);
    CU_ASSERT_EQUAL(sl, 256);
    CU_ASSERT_EQUAL(
        verify_digest(g_rsa->pub, RSA_PKCS1_PSS_PADDING, md, (int)dl, dig, dl, sig, sl), 1);
    dig[dl - 1] ^= 0x80;
    CU_ASSERT_EQUAL(
        verify_digest(g_rsa->pub, RSA_PKCS1_PSS_PADDING, md, (int)dl, dig, dl, sig, sl), 0);
  }
  /* salt 0 also passes through */
  unsigned char dig[32], sig[256];
  CK_ULONG sl = sizeof(sig);
  kvp_sig_alg alg = {KVP_SIG_RSA_PSS, KVP_HASH_SHA256, KVP_HASH_SHA256, 0};
  rand_bytes(dig, 32);
  CU_ASSERT_EQUAL_FATAL(g_be->ops->sign(g_be, g_rsa, &alg, dig, 32, sig, &sl), CKR_OK);
  CU_ASSERT_EQUAL(
      verify_digest(g_rsa->pub, RSA_PKCS1_PSS_PADDING, EVP_sha256(), 0, dig, 32, sig, sl), 1);
}

static void test_sign_ecdsa(void) {
  for (int i = 0; i < 8; i++) {
    unsigned char dig[32], sig[64];
    CK_ULONG sl = sizeof(sig);
    kvp_sig_alg alg = {KVP_SIG_ECDSA, KVP_HASH_SHA256, KVP_HASH_NONE, 0};
    rand_bytes(dig, sizeof(dig));
    CU_ASSERT_EQUAL_FATAL(g_be->ops->sign(g_be, g_ec, &alg, dig, 32, sig, &sl), CKR_OK);
    CU_ASSERT_EQUAL(sl, 64);
    CU_ASSERT_EQUAL(verify_ecdsa(g_ec->pub, dig, 32, sig, sl), 1);
    dig[5] ^= 4;
    CU_ASSERT_EQUAL(verify_ecdsa(g_ec->pub, dig, 32, sig, sl), 0);
  }
}

static void test_decrypt(void) {
  struct {
    kvp_dec_alg alg;
    int pad;
    const EVP_MD *md;
  } cases[] = {
      {{KVP_DEC_RSA_PKCS1, KVP_HASH_NONE, KVP_HASH_NONE}, RSA_PKCS1_PADDING, NULL},
      {{KVP_DEC_RSA_OAEP, KVP_HASH_SHA1, KVP_HASH_SHA1}, RSA_PKCS1_OAEP_PADDING, NULL},
      {{KVP_DEC_RSA_OAEP, KVP_HASH_SHA256, KVP_HASH_SHA256}, RSA_PKCS1_OAEP_PADDING, NULL},
      {{KVP_DEC_RSA_OAEP, KVP_HASH_SHA512, KVP_HASH_SHA512}, RSA_PKCS1_OAEP_PADDING, NULL},
      /* again: the second OAEP-SHA256 goes straight to the path chosen the first time */
      {{KVP_DEC_RSA_OAEP, KVP_HASH_SHA256, KVP_HASH_SHA256}, RSA_PKCS1_OAEP_PADDING, NULL},
  };
  cases[1].md = EVP_sha1();
  cases[2].md = EVP_sha256();
  cases[3].md = EVP_sha512();
  cases[4].md = EVP_sha256();
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    unsigned char pt[32], ct[256], out[256];
    CK_ULONG out_len;
    rand_bytes(pt, sizeof(pt));
    /* SoftHSM2 2.6.1 has OAEP with SHA-1 only: the others are decoded by the
     * backend over CKM_RSA_X_509 */
    CK_RV rv =
        decrypt_ct(cases[i].pad, cases[i].md, pt, sizeof(pt), &cases[i].alg, ct, out, &out_len);
    CU_ASSERT_EQUAL_FATAL(rv, CKR_OK);
    CU_ASSERT_EQUAL(out_len, sizeof(pt));
    CU_ASSERT_EQUAL(memcmp(out, pt, sizeof(pt)), 0);
  }
  /* OAEP-SHA256 ciphertext decrypted as OAEP-SHA1 must fail */
  unsigned char pt[16] = "0123456789abcdef", ct[256], out[256];
  CK_ULONG out_len;
  CU_ASSERT_EQUAL(decrypt_ct(RSA_PKCS1_OAEP_PADDING, EVP_sha256(), pt, 16, &cases[1].alg, ct, out,
                             &out_len),
                  CKR_ENCRYPTED_DATA_INVALID);
  /* a block with PKCS#1 type 1 (signature) padding is never a valid v1.5 ciphertext */
  unsigned char blk[256];
  memset(blk, 0xff, sizeof(blk));
  blk[0] = 0x00;
  blk[1] = 0x01;
  blk[200] = 0x00;
  CU_ASSERT_EQUAL(
      decrypt_ct(RSA_NO_PADDING, NULL, blk, sizeof(blk), &cases[0].alg, ct, out, &out_len),
      CKR_ENCRYPTED_DATA_INVALID);
  /* an OAEP-SHA1 ciphertext decrypted as OAEP-SHA256 (the local decoder) must fail */
  CU_ASSERT_EQUAL(decrypt_ct(RSA_PKCS1_OAEP_PADDING, EVP_sha1(), pt, 16, &cases[2].alg, ct, out,
                             &out_len),
                  CKR_ENCRYPTED_DATA_INVALID);
  /* ... and so must a PKCS#1 v1.5 ciphertext */
  CU_ASSERT_EQUAL(decrypt_ct(RSA_PKCS1_PADDING, NULL, pt, 16, &cases[2].alg, ct, out, &out_len),
                  CKR_ENCRYPTED_DATA_INVALID);
  /* an empty message round-trips through the local decoder */
  CU_ASSERT_EQUAL(decrypt_ct(RSA_PKCS1_OAEP_PADDING, EVP_sha256(), pt, 0, &cases[2].alg, ct, out,
                             &out_len),
                  CKR_OK);
  CU_ASSERT_EQUAL(out_len, 0);
  /* wrong length */
  out_len = sizeof(out);
  CU_ASSERT_EQUAL(g_be->ops->decrypt(g_be, g_rsa, &cases[0].alg, ct, 100, out, &out_len),
                  CKR_ENCRYPTED_DATA_LEN_RANGE);
  /* EC keys do not decrypt */
  out_len = sizeof(out);
  CU_ASSERT_NOT_EQUAL(g_be->ops->decrypt(g_be, g_ec, &cases[0].alg, ct, 256, out, &out_len),
                      CKR_OK);
}

static void test_pin_passthrough(void) {
  kvp_hsm_conf c = make_conf("pass", TOKEN2, 0);
  kvp_backend *be = NULL;
  kvp_key *k = NULL;
  unsigned char dig[32], sig[256];
  CK_ULONG sl = sizeof(sig);
  kvp_sig_alg alg = {KVP_SIG_RSA_PKCS1, KVP_HASH_SHA256, KVP_HASH_NONE, 0};
  rand_bytes(dig, sizeof(dig));

  CU_ASSERT_EQUAL_FATAL(kvp_hsm_backend_new(&c, &be), CKR_OK);
  CU_ASSERT_EQUAL(be->ops->needs_login(be), 1);
  CU_ASSERT_EQUAL(g_be->ops->needs_login(g_be), 0);
  /* the public key is readable without login */
  CU_ASSERT_EQUAL_FATAL(be->ops->open_key(be, "rsa", &k), CKR_OK);
  CU_ASSERT_EQUAL(k->private_obj, 1);
  EVP_PKEY *ref = hsm_token_pubkey(TOKEN2, "rsa");
  CU_ASSERT_PTR_NOT_NULL_FATAL(ref);
  CU_ASSERT_EQUAL(EVP_PKEY_eq(ref, k->pub), 1);
  EVP_PKEY_free(ref);

  CU_ASSERT_EQUAL(be->ops->sign(be, k, &alg, dig, 32, sig, &sl), CKR_USER_NOT_LOGGED_IN);
  CU_ASSERT_EQUAL(be->ops->login(be, (const CK_UTF8CHAR *)"9999", 4), CKR_PIN_INCORRECT);
  sl = sizeof(sig);
  CU_ASSERT_EQUAL(be->ops->sign(be, k, &alg, dig, 32, sig, &sl), CKR_USER_NOT_LOGGED_IN);
  CU_ASSERT_EQUAL_FATAL(be->ops->login(be, (const CK_UTF8CHAR *)PIN, 4), CKR_OK);
  sl = sizeof(sig);
  CU_ASSERT_EQUAL_FATAL(be->ops->sign(be, k, &alg, dig, 32, sig, &sl), CKR_OK);
  CU_ASSERT_EQUAL(verify_digest(k->pub, RSA_PKCS1_PADDING, EVP_sha256(), 0, dig, 32, sig, sl), 1);
  CU_ASSERT_EQUAL(be->ops->logout(be), CKR_OK);
  sl = sizeof(sig);
  CU_ASSERT_EQUAL(be->ops->sign(be, k, &alg, dig, 32, sig, &sl), CKR_USER_NOT_LOGGED_IN);
  /* log in again: the key is resolved again and works */
  CU_ASSERT_EQUAL_FATAL(be->ops->login(be, (const CK_UTF8CHAR *)PIN, 4), CKR_OK);
  sl = sizeof(sig);
  CU_ASSERT_EQUAL(be->ops->sign(be, k, &alg, dig, 32, sig, &sl), CKR_OK);
  be->ops->close_key(be, k);
  be->ops->destroy(be, 0);
}

typedef struct {
  kvp_key *key;
  int n;
  int ok;
} thr_arg;

static void *sign_thread(void *p) {
  thr_arg *a = p;
  for (int i = 0; i < a->n; i++) {
    unsigned char dig[32], sig[256];
    CK_ULONG sl = sizeof(sig);
    kvp_sig_alg alg = {a->key->type == KVP_KEY_EC ? KVP_SIG_ECDSA : KVP_SIG_RSA_PKCS1,
                       KVP_HASH_SHA256, KVP_HASH_NONE, 0};
    if (RAND_bytes(dig, sizeof(dig)) != 1)
      return NULL;
    if (g_be->ops->sign(g_be, a->key, &alg, dig, 32, sig, &sl) != CKR_OK)
      return NULL;
    int v = a->key->type == KVP_KEY_EC
                ? verify_ecdsa(a->key->pub, dig, 32, sig, sl)
                : verify_digest(a->key->pub, RSA_PKCS1_PADDING, EVP_sha256(), 0, dig, 32, sig, sl);
    if (!v)
      return NULL;
    a->ok++;
  }
  return NULL;
}

static void test_threads(void) {
  pthread_t t[4];
  thr_arg a[4] = {{g_ec, 200, 0}, {g_ec, 200, 0}, {g_rsa, 40, 0}, {g_rsa, 40, 0}};
  for (int i = 0; i < 4; i++)
    CU_ASSERT_EQUAL_FATAL(pthread_create(&t[i], NULL, sign_thread, &a[i]), 0);
  for (int i = 0; i < 4; i++)
    pthread_join(t[i], NULL);
  for (int i = 0; i < 4; i++)
    CU_ASSERT_EQUAL(a[i].ok, a[i].n);
}

static void test_reresolve(void) {
  kvp_key *k = NULL;
  unsigned char dig[32], sig[64];
  CK_ULONG sl = sizeof(sig);
  kvp_sig_alg alg = {KVP_SIG_ECDSA, KVP_HASH_SHA256, KVP_HASH_NONE, 0};
  rand_bytes(dig, sizeof(dig));
  CU_ASSERT_EQUAL_FATAL(g_be->ops->open_key(g_be, "reres", &k), CKR_OK);
  CU_ASSERT_EQUAL_FATAL(g_be->ops->sign(g_be, k, &alg, dig, 32, sig, &sl), CKR_OK);
  CU_ASSERT_EQUAL(verify_ecdsa(k->pub, dig, 32, sig, sl), 1);

  /* another process deletes the key pair and makes a new one with the same label */
  CU_ASSERT_FATAL(hsm_delete(TOKEN, "privkey", "reres") == 0 &&
                  hsm_delete(TOKEN, "pubkey", "reres") == 0);
  CU_ASSERT_EQUAL_FATAL(hsm_keygen(TOKEN, "reres", "03", "EC:prime256v1", 0), 0);
  EVP_PKEY *fresh = hsm_token_pubkey(TOKEN, "reres");
  CU_ASSERT_PTR_NOT_NULL_FATAL(fresh);
  CU_ASSERT_NOT_EQUAL(EVP_PKEY_eq(fresh, k->pub), 1);

  rand_bytes(dig, sizeof(dig));
  sl = sizeof(sig);
  memset(sig, 0, sizeof(sig));
  /* the key opened (and registered) is gone: the new key under the same
   * label is another key, refused with the reason, no signature returned */
  kvp_status_clear();
  CU_ASSERT_EQUAL(g_be->ops->sign(g_be, k, &alg, dig, 32, sig, &sl), CKR_KEY_HANDLE_INVALID);
  CU_ASSERT_PTR_NOT_NULL(kvp_status_reason());
  if (kvp_status_reason())
    CU_ASSERT_PTR_NOT_NULL(strstr(kvp_status_reason(), "is not the key pair's"));
  CU_ASSERT_EQUAL(verify_ecdsa(fresh, dig, 32, sig, 64), 0);
  /* opened again, the new key signs */
  kvp_key *k2 = NULL;
  CU_ASSERT_EQUAL_FATAL(g_be->ops->open_key(g_be, "reres", &k2), CKR_OK);
  CU_ASSERT_EQUAL(EVP_PKEY_eq(fresh, k2->pub), 1);
  sl = sizeof(sig);
  CU_ASSERT_EQUAL(g_be->ops->sign(g_be, k2, &alg, dig, 32, sig, &sl), CKR_OK);
  CU_ASSERT_EQUAL(verify_ecdsa(fresh, dig, 32, sig, sl), 1);
  g_be->ops->close_key(g_be, k2);
  EVP_PKEY_free(fresh);

  /* deleted for good: a clear CKR_KEY_HANDLE_INVALID */
  CU_ASSERT_EQUAL_FATAL(hsm_delete(TOKEN, "privkey", "reres"), 0);
  sl = sizeof(sig);
  CU_ASSERT_EQUAL(g_be->ops->sign(g_be, k, &alg, dig, 32, sig, &sl), CKR_KEY_HANDLE_INVALID);
  g_be->ops->close_key(g_be, k);
}

/* The SoftHSM2 instance the backend loaded (same process: same module state). */
static CK_FUNCTION_LIST_PTR softhsm_here(void **dl, CK_SLOT_ID *slot) {
  CK_FUNCTION_LIST_PTR fl = hsm_functions(hsm_module, dl);
  *slot = fl != NULL ? hsm_slot_of(fl, TOKEN) : (CK_SLOT_ID)-1;
  return *slot != (CK_SLOT_ID)-1 ? fl : NULL;
}

/* An EC key whose public object holds a raw point (no DER OCTET STRING
 * around it), created in the token with C_CreateObject. */
static void test_raw_ec_point(void) {
  void *dl = NULL;
  CK_SLOT_ID slot = 0;
  CK_FUNCTION_LIST_PTR fl = softhsm_here(&dl, &slot);
  CU_ASSERT_PTR_NOT_NULL_FATAL(fl);
  EVP_PKEY *ref = EVP_EC_gen("P-256");
  CU_ASSERT_PTR_NOT_NULL_FATAL(ref);
  unsigned char point[65], scalar[32];
  size_t point_len = 0;
  BIGNUM *d = NULL;
  CU_ASSERT_FATAL(EVP_PKEY_get_octet_string_param(ref, "pub", point, sizeof(point), &point_len) &&
                  point_len == 65);
  CU_ASSERT_FATAL(EVP_PKEY_get_bn_param(ref, "priv", &d) && BN_bn2binpad(d, scalar, 32) == 32);
  BN_free(d);
  static const CK_BYTE p256_oid[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
  CK_OBJECT_CLASS pub_cls = CKO_PUBLIC_KEY, priv_cls = CKO_PRIVATE_KEY;
  CK_KEY_TYPE kt = CKK_EC;
  CK_BBOOL yes = CK_TRUE;
  char label[] = "rawpoint";
  CK_ATTRIBUTE pub_t[] = {{CKA_CLASS, &pub_cls, sizeof(pub_cls)},
                          {CKA_KEY_TYPE, &kt, sizeof(kt)},
                          {CKA_TOKEN, &yes, sizeof(yes)},
                          {CKA_VERIFY, &yes, sizeof(yes)},
                          {CKA_LABEL, label, sizeof(label) - 1},
                          {CKA_EC_PARAMS, (void *)p256_oid, sizeof(p256_oid)},
                          {CKA_EC_POINT, point, (CK_ULONG)point_len}};
  CK_ATTRIBUTE priv_t[] = {{CKA_CLASS, &priv_cls, sizeof(priv_cls)},
                           {CKA_KEY_TYPE, &kt, sizeof(kt)},
                           {CKA_TOKEN, &yes, sizeof(yes)},
                           {CKA_PRIVATE, &yes, sizeof(yes)},
                           {CKA_SIGN, &yes, sizeof(yes)},
                           {CKA_LABEL, label, sizeof(label) - 1},
                           {CKA_EC_PARAMS, (void *)p256_oid, sizeof(p256_oid)},
                           {CKA_VALUE, scalar, sizeof(scalar)}};
  CK_SESSION_HANDLE s;
  CK_OBJECT_HANDLE h;
  CU_ASSERT_EQUAL_FATAL(
      fl->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s), CKR_OK);
  CU_ASSERT_EQUAL_FATAL(fl->C_CreateObject(s, pub_t, sizeof(pub_t) / sizeof(pub_t[0]), &h), CKR_OK);
  CU_ASSERT_EQUAL_FATAL(fl->C_CreateObject(s, priv_t, sizeof(priv_t) / sizeof(priv_t[0]), &h),
                        CKR_OK);
  OPENSSL_cleanse(scalar, sizeof(scalar));
  fl->C_CloseSession(s);

  kvp_key *k = NULL;
  CU_ASSERT_EQUAL_FATAL(g_be->ops->open_key(g_be, "rawpoint", &k), CKR_OK);
  CU_ASSERT_EQUAL(EVP_PKEY_eq(ref, k->pub), 1);
  CU_ASSERT_EQUAL(k->can_decrypt, 0);
  unsigned char dig[32], sig[64];
  CK_ULONG sl = sizeof(sig);
  kvp_sig_alg alg = {KVP_SIG_ECDSA, KVP_HASH_SHA256, KVP_HASH_NONE, 0};
  rand_bytes(dig, 32);
  CU_ASSERT_EQUAL(g_be->ops->sign(g_be, k, &alg, dig, 32, sig, &sl), CKR_OK);
  CU_ASSERT_EQUAL(verify_ecdsa(ref, dig, 32, sig, sl), 1);
  g_be->ops->close_key(g_be, k);
  EVP_PKEY_free(ref);
  dlclose(dl);
}

/* An RSA key without a public key object: the public key comes from the
 * private object's modulus and exponent. An EC key cannot do that. */
static void test_private_only(void) {
  CU_ASSERT_EQUAL_FATAL(hsm_keygen(TOKEN, "privonly", "0a", "rsa:2048", 1), 0);
  EVP_PKEY *ref = hsm_token_pubkey(TOKEN, "privonly");
  CU_ASSERT_PTR_NOT_NULL_FATAL(ref);
  CU_ASSERT_EQUAL_FATAL(hsm_delete(TOKEN, "pubkey", "privonly"), 0);
  kvp_key *k = NULL;
  CU_ASSERT_EQUAL_FATAL(g_be->ops->open_key(g_be, "privonly", &k), CKR_OK);
  CU_ASSERT_EQUAL(EVP_PKEY_eq(ref, k->pub), 1);
  CU_ASSERT_EQUAL(k->bits, 2048);
  unsigned char dig[32], sig[256];
  CK_ULONG sl = sizeof(sig);
  kvp_sig_alg alg = {KVP_SIG_RSA_PKCS1, KVP_HASH_SHA256, KVP_HASH_NONE, 0};
  rand_bytes(dig, 32);
  CU_ASSERT_EQUAL(g_be->ops->sign(g_be, k, &alg, dig, 32, sig, &sl), CKR_OK);
  CU_ASSERT_EQUAL(verify_digest(ref, RSA_PKCS1_PADDING, EVP_sha256(), 0, dig, 32, sig, sl), 1);
  g_be->ops->close_key(g_be, k);
  EVP_PKEY_free(ref);

  CU_ASSERT_EQUAL_FATAL(hsm_keygen(TOKEN, "ecprivonly", "0b", "EC:prime256v1", 0), 0);
  CU_ASSERT_EQUAL_FATAL(hsm_delete(TOKEN, "pubkey", "ecprivonly"), 0);
  k = NULL;
  CU_ASSERT_EQUAL(g_be->ops->open_key(g_be, "ecprivonly", &k), CKR_KEY_HANDLE_INVALID);
  CU_ASSERT_PTR_NULL(k);
}

/* Someone else in the process (the application, another library) closes all
 * sessions of the token: our pooled sessions and our login are gone. */
static void test_sessions_closed_under_us(void) {
  void *dl = NULL;
  CK_SLOT_ID slot = 0;
  CK_FUNCTION_LIST_PTR fl = softhsm_here(&dl, &slot);
  CU_ASSERT_PTR_NOT_NULL_FATAL(fl);
  CU_ASSERT_EQUAL_FATAL(fl->C_CloseAllSessions(slot), CKR_OK);
  for (int i = 0; i < 3; i++) { /* three keys: three stale pooled sessions at least */
    unsigned char dig[32], sig[256];
    CK_ULONG sl = sizeof(sig);
    kvp_sig_alg alg = {KVP_SIG_ECDSA, KVP_HASH_SHA256, KVP_HASH_NONE, 0};
    rand_bytes(dig, sizeof(dig));
    CU_ASSERT_EQUAL(g_be->ops->sign(g_be, g_ec, &alg, dig, 32, sig, &sl), CKR_OK);
    CU_ASSERT_EQUAL(verify_ecdsa(g_ec->pub, dig, 32, sig, sl), 1);
    alg.scheme = KVP_SIG_RSA_PKCS1;
    sl = sizeof(sig);
    CU_ASSERT_EQUAL(g_be->ops->sign(g_be, g_rsa, &alg, dig, 32, sig, &sl), CKR_OK);
  }
  kvp_key *k = NULL;
  CU_ASSERT_EQUAL(g_be->ops->open_key(g_be, "id:01", &k), CKR_OK);
  if (k)
    g_be->ops->close_key(g_be, k);
  dlclose(dl);
}

/* After fork, the child frees the parent's backend (forked=1) and starts a new one. */
static void test_fork(void) {
  pid_t pid = fork();
  CU_ASSERT_FATAL(pid >= 0);
  if (pid == 0) {
    alarm(30);
    int code = 0;
    kvp_backend *be = NULL;
    kvp_key *k = NULL;
    kvp_hsm_conf c = make_conf("child", TOKEN, 1);
    unsigned char dig[32], sig[64];
    CK_ULONG sl = sizeof(sig);
    kvp_sig_alg alg = {KVP_SIG_ECDSA, KVP_HASH_SHA256, KVP_HASH_NONE, 0};
    /* the parent's keys and backend: memory only */
    g_be->ops->close_key(g_be, g_ec);
    g_be->ops->close_key(g_be, g_rsa);
    g_be->ops->destroy(g_be, 1);
    if (kvp_hsm_backend_new(&c, &be) != CKR_OK)
      _exit(2);
    if (be->ops->open_key(be, "ec", &k) != CKR_OK)
      _exit(3);
    if (RAND_bytes(dig, 32) != 1 || be->ops->sign(be, k, &alg, dig, 32, sig, &sl) != CKR_OK)
      _exit(4);
    if (!verify_ecdsa(k->pub, dig, 32, sig, sl))
      code = 5;
    be->ops->close_key(be, k);
    be->ops->destroy(be, 0);
    _exit(code);
  }
  int st = 0;
  CU_ASSERT_EQUAL_FATAL(waitpid(pid, &st, 0), pid);
  CU_ASSERT_TRUE(WIFEXITED(st));
  CU_ASSERT_EQUAL(WEXITSTATUS(st), 0);
  /* the parent is unaffected */
  unsigned char dig[32], sig[64];
  CK_ULONG sl = sizeof(sig);
  kvp_sig_alg alg = {KVP_SIG_ECDSA, KVP_HASH_SHA256, KVP_HASH_NONE, 0};
  rand_bytes(dig, 32);
  CU_ASSERT_EQUAL(g_be->ops->sign(g_be, g_ec, &alg, dig, 32, sig, &sl), CKR_OK);
  CU_ASSERT_EQUAL(verify_ecdsa(g_ec->pub, dig, 32, sig, sl), 1);
}

/* module/core/p11names.c: the names in the HSM backend's log lines */
static void test_p11names(void) {
  CU_ASSERT_STRING_EQUAL(kvp_ckr_name(CKR_OK), "CKR_OK");
  CU_ASSERT_STRING_EQUAL(kvp_ckr_name(CKR_PIN_INCORRECT), "CKR_PIN_INCORRECT");
  CU_ASSERT_STRING_EQUAL(kvp_ckr_name(CKR_FUNCTION_REJECTED), "CKR_FUNCTION_REJECTED");
  CU_ASSERT_STRING_EQUAL(kvp_ckr_name(CKR_ENCRYPTED_DATA_INVALID), "CKR_ENCRYPTED_DATA_INVALID");
  CU_ASSERT_STRING_EQUAL(kvp_ckr_name(0x12345UL), "CKR_0x12345");
  CU_ASSERT_STRING_EQUAL(kvp_ckm_name(CKM_SHA256_RSA_PKCS), "CKM_SHA256_RSA_PKCS");
  CU_ASSERT_STRING_EQUAL(kvp_ckm_name(CKM_ECDSA), "CKM_ECDSA");
  CU_ASSERT_STRING_EQUAL(kvp_ckm_name(CKM_RSA_PKCS_OAEP), "CKM_RSA_PKCS_OAEP");
  CU_ASSERT_STRING_EQUAL(kvp_ckm_name(0x7777UL), "CKM_0x7777");
  CU_ASSERT_STRING_EQUAL(kvp_cka_name(CKA_EC_PARAMS), "CKA_EC_PARAMS");
  CU_ASSERT_STRING_EQUAL(kvp_cka_name(CKA_LABEL), "CKA_LABEL");
  CU_ASSERT_STRING_EQUAL(kvp_cka_name(CKA_ALWAYS_AUTHENTICATE), "CKA_ALWAYS_AUTHENTICATE");
  CU_ASSERT_STRING_EQUAL(kvp_cka_name(0x999UL), "CKA_0x999");
  /* every CKR_ value from CKR_OK to CKR_FUNCTION_REJECTED that the header
   * defines has a name (none falls back to the hex form) */
  static const CK_RV all[] = {
      CKR_CANCEL, CKR_HOST_MEMORY, CKR_SLOT_ID_INVALID, CKR_GENERAL_ERROR, CKR_FUNCTION_FAILED,
      CKR_ARGUMENTS_BAD, CKR_NO_EVENT, CKR_NEED_TO_CREATE_THREADS, CKR_CANT_LOCK,
      CKR_ATTRIBUTE_READ_ONLY, CKR_ATTRIBUTE_SENSITIVE, CKR_ATTRIBUTE_TYPE_INVALID,
      CKR_ATTRIBUTE_VALUE_INVALID, CKR_ACTION_PROHIBITED, CKR_DATA_INVALID, CKR_DATA_LEN_RANGE,
      CKR_DEVICE_ERROR, CKR_DEVICE_MEMORY, CKR_DEVICE_REMOVED, CKR_ENCRYPTED_DATA_LEN_RANGE,
      CKR_FUNCTION_CANCELED, CKR_FUNCTION_NOT_PARALLEL, CKR_FUNCTION_NOT_SUPPORTED,
      CKR_KEY_HANDLE_INVALID, CKR_KEY_SIZE_RANGE, CKR_KEY_TYPE_INCONSISTENT, CKR_KEY_NOT_NEEDED,
      CKR_KEY_CHANGED, CKR_KEY_NEEDED, CKR_KEY_INDIGESTIBLE, CKR_KEY_FUNCTION_NOT_PERMITTED,
      CKR_KEY_NOT_WRAPPABLE, CKR_KEY_UNEXTRACTABLE, CKR_MECHANISM_INVALID,
      CKR_MECHANISM_PARAM_INVALID, CKR_OBJECT_HANDLE_INVALID, CKR_OPERATION_ACTIVE,
      CKR_OPERATION_NOT_INITIALIZED, CKR_PIN_INVALID, CKR_PIN_LEN_RANGE, CKR_PIN_EXPIRED,
      CKR_PIN_LOCKED, CKR_SESSION_CLOSED, CKR_SESSION_COUNT, CKR_SESSION_HANDLE_INVALID,
      CKR_SESSION_PARALLEL_NOT_SUPPORTED, CKR_SESSION_READ_ONLY, CKR_SESSION_EXISTS,
      CKR_SESSION_READ_ONLY_EXISTS, CKR_SESSION_READ_WRITE_SO_EXISTS, CKR_SIGNATURE_INVALID,
      CKR_SIGNATURE_LEN_RANGE, CKR_TEMPLATE_INCOMPLETE, CKR_TEMPLATE_INCONSISTENT,
      CKR_TOKEN_NOT_PRESENT, CKR_TOKEN_NOT_RECOGNIZED, CKR_TOKEN_WRITE_PROTECTED,
      CKR_UNWRAPPING_KEY_HANDLE_INVALID, CKR_UNWRAPPING_KEY_SIZE_RANGE,
      CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT, CKR_USER_ALREADY_LOGGED_IN, CKR_USER_NOT_LOGGED_IN,
      CKR_USER_PIN_NOT_INITIALIZED, CKR_USER_TYPE_INVALID, CKR_USER_ANOTHER_ALREADY_LOGGED_IN,
      CKR_USER_TOO_MANY_TYPES, CKR_WRAPPED_KEY_INVALID, CKR_WRAPPED_KEY_LEN_RANGE,
      CKR_WRAPPING_KEY_HANDLE_INVALID, CKR_WRAPPING_KEY_SIZE_RANGE,
      CKR_WRAPPING_KEY_TYPE_INCONSISTENT, CKR_RANDOM_SEED_NOT_SUPPORTED, CKR_RANDOM_NO_RNG,
      CKR_DOMAIN_PARAMS_INVALID, CKR_CURVE_NOT_SUPPORTED, CKR_BUFFER_TOO_SMALL,
      CKR_SAVED_STATE_INVALID, CKR_INFORMATION_SENSITIVE, CKR_STATE_UNSAVEABLE,
      CKR_CRYPTOKI_NOT_INITIALIZED, CKR_CRYPTOKI_ALREADY_INITIALIZED, CKR_MUTEX_BAD,
      CKR_MUTEX_NOT_LOCKED, CKR_NEW_PIN_MODE, CKR_NEXT_OTP, CKR_EXCEEDED_MAX_ITERATIONS,
      CKR_FIPS_SELF_TEST_FAILED, CKR_LIBRARY_LOAD_FAILED, CKR_PIN_TOO_WEAK,
      CKR_PUBLIC_KEY_INVALID, CKR_VENDOR_DEFINED};
  for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
    const char *n = kvp_ckr_name(all[i]);
    CU_ASSERT(strncmp(n, "CKR_", 4) == 0 && strncmp(n, "CKR_0x", 6) != 0);
  }
}

static void test_error_queue_first_init(void) { CU_ASSERT_EQUAL(g_queue_kept, 1); }

static void test_lazy_constructor(void) {
  /* the constructor does no I/O: a module path that does not exist is only
   * noticed at open_key */
  kvp_hsm_conf c = make_conf("lazy", TOKEN, 1);
  kvp_backend *be = NULL;
  kvp_key *k = NULL;
  c.module = (char *)"/nonexistent/libnothing.so";
  CU_ASSERT_EQUAL_FATAL(kvp_hsm_backend_new(&c, &be), CKR_OK);
  CU_ASSERT_STRING_EQUAL(be->ops->scheme, "hsm");
  CU_ASSERT_STRING_EQUAL(be->name, "lazy");
  CU_ASSERT_EQUAL(be->ops->open_key(be, "rsa", &k), CKR_DEVICE_ERROR);
  be->ops->destroy(be, 0);
}

int main(void) {
  static CU_TestInfo tests[] = {
      {"PKCS#11 names", test_p11names},
      {"constructor is lazy", test_lazy_constructor},
      {"first C_Initialize leaves the OpenSSL error queue", test_error_queue_first_init},
      {"open RSA-2048", test_open_rsa},
      {"open P-256", test_open_ec},
      {"open by id", test_open_by_id},
      {"missing label", test_missing_label},
      {"missing token", test_missing_token},
      {"sign PKCS#1 v1.5", test_sign_pkcs1},
      {"sign PKCS#1 raw", test_sign_pkcs1_raw},
      {"sign PSS", test_sign_pss},
      {"sign ECDSA", test_sign_ecdsa},
      {"decrypt PKCS#1 and OAEP", test_decrypt},
      {"PIN pass-through", test_pin_passthrough},
      {"threads", test_threads},
      {"handle re-resolution", test_reresolve},
      {"raw EC point", test_raw_ec_point},
      {"RSA key without public object", test_private_only},
      {"sessions closed under us", test_sessions_closed_under_us},
      {"fork", test_fork},
      CU_TEST_INFO_NULL,
  };
  static const char *const tokens[] = {TOKEN, TOKEN2, NULL};
  int rc = hsm_fixture_init("hsm_backend", tokens, 1);
  if (rc != 0)
    return rc;
  if (make_keys() != 0) {
    fprintf(stderr, "cannot create the SoftHSM2 test keys in %s\n", hsm_dir);
    return 1;
  }
  alarm(300); /* a deadlock fails the test instead of hanging CTest */

  return unit_run_suite("hsm_backend", suite_init, suite_clean, tests);
}
