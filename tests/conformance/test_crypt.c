/*
 * Encryption, decryption, digest and random: C_Encrypt on public keys decrypted by C_Decrypt,
 * OpenSSL-made ciphertexts decrypted by C_Decrypt (PKCS#1 v1.5, OAEP SHA-1, OAEP SHA-256), the
 * two-call size rule, error paths; C_Digest against OpenSSL; C_GenerateRandom.
 */
#include <stdlib.h>
#include <string.h>

#include "common.h"

#define BAD_OBJECT ((CK_OBJECT_HANDLE)0x7ffff456UL)
#define BAD_SESSION ((CK_SESSION_HANDLE)0x7ffff321UL)
#define BUFMAX 1024

static const unsigned char plain[] = "kvp11 conformance: a content-encryption key of 32 b";

/* Encryption schemes: 'p' PKCS#1 v1.5, 'o' OAEP with the given hash. */
typedef struct scheme {
  const char *name;
  char kind;
  const EVP_MD *(*md)(void);
} scheme;

static const scheme schemes[] = {
    {"CKM_RSA_PKCS", 'p', NULL},
    {"CKM_RSA_PKCS_OAEP SHA-1", 'o', EVP_sha1},
    {"CKM_RSA_PKCS_OAEP SHA-256", 'o', EVP_sha256},
};

static void set_mech(const scheme *s, CK_MECHANISM *m, CK_RSA_PKCS_OAEP_PARAMS *p)
{
  memset(p, 0, sizeof *p);
  if (s->kind == 'p') {
    m->mechanism = CKM_RSA_PKCS;
    m->pParameter = NULL;
    m->ulParameterLen = 0;
    return;
  }
  p->hashAlg = kvpt_hash_mech(s->md());
  p->mgf = kvpt_mgf(s->md());
  p->source = CKZ_DATA_SPECIFIED;
  p->pSourceData = NULL;
  p->ulSourceDataLen = 0;
  m->mechanism = CKM_RSA_PKCS_OAEP;
  m->pParameter = p;
  m->ulParameterLen = sizeof *p;
}

static CK_RV do_decrypt(CK_SESSION_HANDLE h, CK_MECHANISM *m, CK_OBJECT_HANDLE key,
                        const unsigned char *ct, size_t ctlen, unsigned char *out, CK_ULONG *outlen)
{
  CK_RV rv = P11->C_DecryptInit(h, m, key);
  if (rv != CKR_OK)
    return rv;
  return P11->C_Decrypt(h, (CK_BYTE_PTR)ct, ctlen, out, outlen);
}

#define FOR_RSA(c, priv_only)                                                                      \
  for (size_t i_ = 0; i_ < KVPT_NCERTS; i_++)                                                      \
    if ((c = &KVPT_CERTS[i_])->is_rsa && c->pkey && c->pub != CK_INVALID_HANDLE &&                 \
        (!(priv_only) || (c->is_private && c->priv != CK_INVALID_HANDLE)))

static void test_encrypt_decrypt_roundtrip(void)
{
  CK_SESSION_HANDLE h = kvpt_open(false);
  const kvpt_cert *c;
  unsigned char ct[BUFMAX], pt[BUFMAX];
  int n = 0;
  FOR_RSA(c, false)
  {
    for (size_t s = 0; s < KVPT_ARRAY_LEN(schemes); s++) {
      CK_MECHANISM m;
      CK_RSA_PKCS_OAEP_PARAMS p;
      set_mech(&schemes[s], &m, &p);
      if (!CHECK_RV(P11->C_EncryptInit(h, &m, c->pub), CKR_OK))
        continue;
      CK_ULONG need = 0, ctlen;
      CHECK_RV(P11->C_Encrypt(h, (CK_BYTE_PTR)plain, sizeof plain, NULL, &need), CKR_OK);
      CHECK(need >= c->sig_len && need <= BUFMAX,
            "%s %s: encrypt size query %lu, modulus %zu bytes", c->name, schemes[s].name,
            (unsigned long)need, c->sig_len);
      ctlen = sizeof ct;
      if (!CHECK_RV(P11->C_Encrypt(h, (CK_BYTE_PTR)plain, sizeof plain, ct, &ctlen), CKR_OK))
        continue;
      CHECK(ctlen == c->sig_len, "%s %s: ciphertext %lu bytes, modulus %zu", c->name,
            schemes[s].name, (unsigned long)ctlen, c->sig_len);
      if (!c->is_private)
        continue; /* a partner's key: nothing here can decrypt it */
      CK_ULONG ptlen = sizeof pt;
      CK_RV rv = do_decrypt(h, &m, c->priv, ct, ctlen, pt, &ptlen);
      if (CHECK(rv == CKR_OK, "%s %s: C_Decrypt of the module's ciphertext: %s", c->name,
                schemes[s].name, kvpt_rv_name(rv))) {
        n++;
        CHECK(ptlen == sizeof plain && memcmp(pt, plain, sizeof plain) == 0,
              "%s %s: decrypted text differs", c->name, schemes[s].name);
      }
    }
  }
  CHECK(n > 0 || !kvpt_first_rsa(0), "nothing decrypted");
  kvpt_close(h);
}

static void test_decrypt_openssl_ciphertexts(void)
{
  CK_SESSION_HANDLE h = kvpt_open(false);
  const kvpt_cert *c;
  unsigned char ct[BUFMAX], pt[BUFMAX];
  FOR_RSA(c, true)
  {
    for (size_t s = 0; s < KVPT_ARRAY_LEN(schemes); s++) {
      CK_MECHANISM m;
      CK_RSA_PKCS_OAEP_PARAMS p;
      set_mech(&schemes[s], &m, &p);
      size_t ctlen = kvpt_rsa_encrypt(c, schemes[s].kind, schemes[s].md ? schemes[s].md() : NULL,
                                      plain, sizeof plain, ct, sizeof ct);
      if (!CHECK(ctlen == c->sig_len, "%s: OpenSSL encryption failed", c->name))
        continue;
      CK_ULONG ptlen = sizeof pt;
      CK_RV rv = do_decrypt(h, &m, c->priv, ct, ctlen, pt, &ptlen);
      if (CHECK(rv == CKR_OK, "%s %s: C_Decrypt of an OpenSSL ciphertext: %s", c->name,
                schemes[s].name, kvpt_rv_name(rv)))
        CHECK(ptlen == sizeof plain && memcmp(pt, plain, sizeof plain) == 0,
              "%s %s: decrypted text differs", c->name, schemes[s].name);
    }
  }
  kvpt_close(h);
}

static void test_decrypt_size_rules(void)
{
  CK_SESSION_HANDLE h = kvpt_open(false);
  const kvpt_cert *c;
  unsigned char ct[BUFMAX], pt[BUFMAX];
  FOR_RSA(c, true)
  {
    CK_MECHANISM m;
    CK_RSA_PKCS_OAEP_PARAMS p;
    set_mech(&schemes[0], &m, &p);
    size_t ctlen = kvpt_rsa_encrypt(c, 'p', NULL, plain, sizeof plain, ct, sizeof ct);
    if (!CHECK(ctlen > 0, "OpenSSL encryption failed") ||
        !CHECK_RV(P11->C_DecryptInit(h, &m, c->priv), CKR_OK))
      continue;
    CK_ULONG need = 0;
    CHECK_RV(P11->C_Decrypt(h, ct, ctlen, NULL, &need), CKR_OK);
    CHECK(need >= sizeof plain, "%s: decrypt size query %lu < plaintext %zu", c->name,
          (unsigned long)need, sizeof plain);
    CK_ULONG small = 4;
    CHECK_RV(P11->C_Decrypt(h, ct, ctlen, pt, &small), CKR_BUFFER_TOO_SMALL);
    CHECK(small >= sizeof plain, "%s: CKR_BUFFER_TOO_SMALL length %lu < plaintext %zu", c->name,
          (unsigned long)small, sizeof plain);
    CK_ULONG ptlen = sizeof pt;
    if (CHECK_RV(P11->C_Decrypt(h, ct, ctlen, pt, &ptlen), CKR_OK))
      CHECK(ptlen == sizeof plain && memcmp(pt, plain, sizeof plain) == 0,
            "%s: decrypted text differs", c->name);
    ptlen = sizeof pt;
    CHECK_RV(P11->C_Decrypt(h, ct, ctlen, pt, &ptlen), CKR_OPERATION_NOT_INITIALIZED);
  }
  kvpt_close(h);
}

static void test_decrypt_errors(void)
{
  CK_SESSION_HANDLE h = kvpt_open(false);
  const kvpt_cert *c = kvpt_first_rsa(0), *e = kvpt_first_ec(0);
  unsigned char ct[BUFMAX], pt[BUFMAX];
  CK_ULONG ptlen = sizeof pt;
  CK_MECHANISM pkcs = {CKM_RSA_PKCS, NULL, 0};
  if (e) {
    CHECK_RV_IN(P11->C_DecryptInit(h, &pkcs, e->priv), CKR_KEY_TYPE_INCONSISTENT,
                CKR_KEY_FUNCTION_NOT_PERMITTED);
    CHECK_RV_IN(P11->C_EncryptInit(h, &pkcs, e->pub), CKR_KEY_TYPE_INCONSISTENT,
                CKR_KEY_FUNCTION_NOT_PERMITTED);
  }
  if (!c) {
    CHECK(true, "no RSA key");
    goto out;
  }
  CHECK_RV(P11->C_Decrypt(h, ct, c->sig_len, pt, &ptlen), CKR_OPERATION_NOT_INITIALIZED);
  CHECK_RV_IN(P11->C_DecryptInit(h, &pkcs, BAD_OBJECT), CKR_KEY_HANDLE_INVALID,
              CKR_OBJECT_HANDLE_INVALID);
  CHECK_RV_IN(P11->C_DecryptInit(h, &pkcs, c->cert), CKR_KEY_HANDLE_INVALID,
              CKR_KEY_TYPE_INCONSISTENT, CKR_KEY_FUNCTION_NOT_PERMITTED);
  CHECK_RV(P11->C_DecryptInit(BAD_SESSION, &pkcs, c->priv), CKR_SESSION_HANDLE_INVALID);
  CHECK_RV(P11->C_DecryptInit(h, NULL, c->priv), CKR_ARGUMENTS_BAD);
  CK_MECHANISM oaep_noparam = {CKM_RSA_PKCS_OAEP, NULL, 0};
  CHECK_RV(P11->C_DecryptInit(h, &oaep_noparam, c->priv), CKR_MECHANISM_PARAM_INVALID);

  if (CHECK_RV(P11->C_DecryptInit(h, &pkcs, c->priv), CKR_OK)) {
    CHECK_RV(P11->C_DecryptInit(h, &pkcs, c->priv), CKR_OPERATION_ACTIVE);
    ptlen = sizeof pt;
    /* Wrong ciphertext length. */
    CHECK_RV(P11->C_Decrypt(h, ct, 10, pt, &ptlen), CKR_ENCRYPTED_DATA_LEN_RANGE);
  }
  /* Garbage of the right length, below the modulus. */
  for (size_t i = 0; i < c->sig_len; i++)
    ct[i] = (unsigned char)(0x5c ^ (i * 29));
  ct[0] = 0x00;
  ct[1] = 0x7f;
  CK_RSA_PKCS_OAEP_PARAMS p;
  CK_MECHANISM oaep;
  set_mech(&schemes[1], &oaep, &p); /* OAEP SHA-1: the most widely supported */
  CK_MECHANISM *mechs[2] = {&pkcs, &oaep};
  for (size_t k = 0; k < 2; k++) {
    ptlen = sizeof pt;
    CHECK_RV_IN(do_decrypt(h, mechs[k], c->priv, ct, c->sig_len, pt, &ptlen),
                CKR_ENCRYPTED_DATA_INVALID, CKR_ENCRYPTED_DATA_LEN_RANGE);
    /* The failure ended the operation. */
    ptlen = sizeof pt;
    CHECK_RV(P11->C_Decrypt(h, ct, c->sig_len, pt, &ptlen), CKR_OPERATION_NOT_INITIALIZED);
  }
  /* Above the modulus. */
  memset(ct, 0xff, c->sig_len);
  ptlen = sizeof pt;
  CHECK_RV_IN(do_decrypt(h, &pkcs, c->priv, ct, c->sig_len, pt, &ptlen), CKR_ENCRYPTED_DATA_INVALID,
              CKR_ENCRYPTED_DATA_LEN_RANGE);
out:
  kvpt_close(h);
}

static void test_encrypt_errors(void)
{
  CK_SESSION_HANDLE h = kvpt_open(false);
  const kvpt_cert *c = kvpt_first_rsa(0);
  unsigned char ct[BUFMAX], big[BUFMAX];
  CK_ULONG ctlen = sizeof ct;
  CK_MECHANISM pkcs = {CKM_RSA_PKCS, NULL, 0};
  if (!c) {
    CHECK(true, "no RSA key");
    goto out;
  }
  memset(big, 0x42, sizeof big);
  CHECK_RV(P11->C_Encrypt(h, big, 16, ct, &ctlen), CKR_OPERATION_NOT_INITIALIZED);
  CHECK_RV(P11->C_EncryptInit(BAD_SESSION, &pkcs, c->pub), CKR_SESSION_HANDLE_INVALID);
  CHECK_RV_IN(P11->C_EncryptInit(h, &pkcs, BAD_OBJECT), CKR_KEY_HANDLE_INVALID,
              CKR_OBJECT_HANDLE_INVALID);
  if (CHECK_RV(P11->C_EncryptInit(h, &pkcs, c->pub), CKR_OK)) {
    CHECK_RV(P11->C_EncryptInit(h, &pkcs, c->pub), CKR_OPERATION_ACTIVE);
    ctlen = sizeof ct;
    CHECK_RV(P11->C_Encrypt(h, big, c->sig_len - 10, ct, &ctlen), CKR_DATA_LEN_RANGE);
    ctlen = sizeof ct;
    CHECK_RV(P11->C_Encrypt(h, big, 16, ct, &ctlen), CKR_OPERATION_NOT_INITIALIZED);
  }
  if (CHECK_RV(P11->C_EncryptInit(h, &pkcs, c->pub), CKR_OK)) {
    ctlen = 8;
    CHECK_RV(P11->C_Encrypt(h, big, 16, ct, &ctlen), CKR_BUFFER_TOO_SMALL);
    CHECK(ctlen >= c->sig_len, "CKR_BUFFER_TOO_SMALL length %lu < modulus %zu",
          (unsigned long)ctlen, c->sig_len);
    ctlen = sizeof ct;
    CHECK_RV(P11->C_Encrypt(h, big, 16, ct, &ctlen), CKR_OK);
  }
out:
  kvpt_close(h);
}

static void test_digest(void)
{
  CK_SESSION_HANDLE h = kvpt_open(false);
  static unsigned char data[3000];
  unsigned char want[EVP_MAX_MD_SIZE], got[EVP_MAX_MD_SIZE + 16];
  for (size_t i = 0; i < sizeof data; i++)
    data[i] = (unsigned char)(i * 31 + 7);
  static const struct {
    CK_MECHANISM_TYPE mech;
    const EVP_MD *(*md)(void);
    bool required;
  } d[] = {{CKM_SHA256, EVP_sha256, true},
           {CKM_SHA384, EVP_sha384, false},
           {CKM_SHA512, EVP_sha512, false},
           {CKM_SHA_1, EVP_sha1, false}};
  for (size_t k = 0; k < KVPT_ARRAY_LEN(d); k++) {
    if (!d[k].required && !kvpt_mech_listed(d[k].mech))
      continue;
    CK_MECHANISM m = {d[k].mech, NULL, 0};
    size_t wlen = kvpt_hash(d[k].md(), data, sizeof data, want);
    CK_ULONG len = 0;
    if (!CHECK_RV(P11->C_DigestInit(h, &m), CKR_OK))
      continue;
    CHECK_RV(P11->C_DigestInit(h, &m), CKR_OPERATION_ACTIVE);
    CHECK_RV(P11->C_Digest(h, data, sizeof data, NULL, &len), CKR_OK);
    CHECK(len == wlen, "digest 0x%lx size query %lu, expected %zu", (unsigned long)d[k].mech,
          (unsigned long)len, wlen);
    len = 4;
    CHECK_RV(P11->C_Digest(h, data, sizeof data, got, &len), CKR_BUFFER_TOO_SMALL);
    len = sizeof got;
    if (CHECK_RV(P11->C_Digest(h, data, sizeof data, got, &len), CKR_OK))
      CHECK(len == wlen && memcmp(got, want, wlen) == 0, "digest 0x%lx differs from OpenSSL's",
            (unsigned long)d[k].mech);
    /* Multi-part. */
    if (CHECK_RV(P11->C_DigestInit(h, &m), CKR_OK)) {
      for (size_t off = 0; off < sizeof data; off += 700)
        CHECK_RV(
            P11->C_DigestUpdate(h, data + off, sizeof data - off < 700 ? sizeof data - off : 700),
            CKR_OK);
      len = sizeof got;
      if (CHECK_RV(P11->C_DigestFinal(h, got, &len), CKR_OK))
        CHECK(len == wlen && memcmp(got, want, wlen) == 0,
              "multi-part digest 0x%lx differs from OpenSSL's", (unsigned long)d[k].mech);
    }
  }
  CK_ULONG len = sizeof got;
  CHECK_RV(P11->C_Digest(h, data, 10, got, &len), CKR_OPERATION_NOT_INITIALIZED);
  CHECK_RV(P11->C_DigestUpdate(h, data, 10), CKR_OPERATION_NOT_INITIALIZED);
  CHECK_RV(P11->C_DigestFinal(h, got, &len), CKR_OPERATION_NOT_INITIALIZED);
  CK_MECHANISM m = {CKM_SHA256, NULL, 0};
  CHECK_RV(P11->C_DigestInit(BAD_SESSION, &m), CKR_SESSION_HANDLE_INVALID);
  kvpt_close(h);
}

static void test_random(void)
{
  CK_SESSION_HANDLE h = kvpt_open(false);
  unsigned char a[64], b[64], zero[64] = {0};
  memset(a, 0, sizeof a);
  memset(b, 0, sizeof b);
  CHECK_RV(P11->C_GenerateRandom(h, a, sizeof a), CKR_OK);
  CHECK_RV(P11->C_GenerateRandom(h, b, sizeof b), CKR_OK);
  CHECK(memcmp(a, zero, sizeof a) != 0, "C_GenerateRandom gave zeros");
  CHECK(memcmp(a, b, sizeof a) != 0, "C_GenerateRandom gave the same bytes twice");
  CHECK_RV(P11->C_GenerateRandom(h, NULL, 16), CKR_ARGUMENTS_BAD);
  CHECK_RV(P11->C_GenerateRandom(BAD_SESSION, a, sizeof a), CKR_SESSION_HANDLE_INVALID);
  CHECK_RV_IN(P11->C_SeedRandom(h, a, sizeof a), CKR_OK, CKR_RANDOM_SEED_NOT_SUPPORTED,
              CKR_FUNCTION_NOT_SUPPORTED);
  kvpt_close(h);
}

/* Key management, recovery and dual-function calls: kvp11 has no use for them. A mechanism the
 * token does not offer for that function gives CKR_MECHANISM_INVALID; a function the module
 * does not implement gives CKR_FUNCTION_NOT_SUPPORTED. Neither ever gives CKR_OK. */
static bool offers(CK_MECHANISM_TYPE t, CK_FLAGS flag)
{
  CK_MECHANISM_INFO mi;
  return kvpt_mech_listed(t) && P11->C_GetMechanismInfo(KVPT_SLOT, t, &mi) == CKR_OK &&
         (mi.flags & flag);
}

static void test_unused_functions_refused(void)
{
  CK_SESSION_HANDLE h = kvpt_open(true);
  const kvpt_cert *r = kvpt_first_rsa(0), *e = kvpt_first_ec(0);
  unsigned char buf[BUFMAX];
  CK_ULONG len = sizeof buf;
  CK_OBJECT_HANDLE o1 = CK_INVALID_HANDLE, o2 = CK_INVALID_HANDLE;
  CK_BBOOL t = CK_TRUE;
  CK_ULONG bits = 2048;
  CK_ATTRIBUTE pubt[] = {KVPT_ATTR(CKA_MODULUS_BITS, &bits, sizeof bits),
                         KVPT_ATTR(CKA_TOKEN, &t, sizeof t)};
  CK_ATTRIBUTE privt[] = {KVPT_ATTR(CKA_SIGN, &t, sizeof t), KVPT_ATTR(CKA_TOKEN, &t, sizeof t)};
  CK_ULONG keylen = 32;
  CK_ATTRIBUTE sect[] = {KVPT_ATTR(CKA_VALUE_LEN, &keylen, sizeof keylen)};

  if (!offers(CKM_RSA_PKCS_KEY_PAIR_GEN, CKF_GENERATE_KEY_PAIR)) {
    CK_MECHANISM m = {CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0};
    CHECK_RV_IN(P11->C_GenerateKeyPair(h, &m, pubt, 2, privt, 2, &o1, &o2),
                CKR_FUNCTION_NOT_SUPPORTED, CKR_MECHANISM_INVALID);
  }
  if (!offers(CKM_AES_KEY_GEN, CKF_GENERATE)) {
    CK_MECHANISM m = {CKM_AES_KEY_GEN, NULL, 0};
    CHECK_RV_IN(P11->C_GenerateKey(h, &m, sect, 1, &o1), CKR_FUNCTION_NOT_SUPPORTED,
                CKR_MECHANISM_INVALID);
  }
  if (r && !offers(CKM_RSA_PKCS, CKF_UNWRAP)) {
    CK_MECHANISM m = {CKM_RSA_PKCS, NULL, 0};
    memset(buf, 0x11, r->sig_len);
    CK_RV rv = P11->C_UnwrapKey(h, &m, r->priv, buf, r->sig_len, sect, 1, &o1);
    CHECK(rv != CKR_OK, "C_UnwrapKey with a private key that cannot unwrap: CKR_OK");
  }
  if (e && !offers(CKM_ECDH1_DERIVE, CKF_DERIVE)) {
    CK_MECHANISM m = {CKM_ECDH1_DERIVE, NULL, 0};
    CHECK_RV_IN(P11->C_DeriveKey(h, &m, e->priv, sect, 1, &o1), CKR_FUNCTION_NOT_SUPPORTED,
                CKR_MECHANISM_INVALID, CKR_MECHANISM_PARAM_INVALID);
  }
  if (r && !offers(CKM_RSA_PKCS, CKF_SIGN_RECOVER)) {
    CK_MECHANISM m = {CKM_RSA_PKCS, NULL, 0};
    CK_RV rv = P11->C_SignRecoverInit(h, &m, r->priv);
    CHECK(rv == CKR_FUNCTION_NOT_SUPPORTED || rv == CKR_MECHANISM_INVALID,
          "C_SignRecoverInit without CKF_SIGN_RECOVER: %s", kvpt_rv_name(rv));
    if (rv == CKR_OK)
      (void)P11->C_SignRecover(h, buf, 16, buf, &len);
  }
  if (r && !offers(CKM_RSA_PKCS, CKF_VERIFY_RECOVER)) {
    CK_MECHANISM m = {CKM_RSA_PKCS, NULL, 0};
    CK_RV rv = P11->C_VerifyRecoverInit(h, &m, r->pub);
    CHECK(rv == CKR_FUNCTION_NOT_SUPPORTED || rv == CKR_MECHANISM_INVALID,
          "C_VerifyRecoverInit without CKF_VERIFY_RECOVER: %s", kvpt_rv_name(rv));
    if (rv == CKR_OK) {
      len = sizeof buf;
      (void)P11->C_VerifyRecover(h, buf, r->sig_len, buf, &len);
    }
  }
  /* Dual-function updates with no operation active. */
  len = sizeof buf;
  CHECK_RV_IN(P11->C_DigestEncryptUpdate(h, buf, 16, buf, &len), CKR_FUNCTION_NOT_SUPPORTED,
              CKR_OPERATION_NOT_INITIALIZED);
  len = sizeof buf;
  CHECK_RV_IN(P11->C_DecryptDigestUpdate(h, buf, 16, buf, &len), CKR_FUNCTION_NOT_SUPPORTED,
              CKR_OPERATION_NOT_INITIALIZED);
  len = sizeof buf;
  CHECK_RV_IN(P11->C_SignEncryptUpdate(h, buf, 16, buf, &len), CKR_FUNCTION_NOT_SUPPORTED,
              CKR_OPERATION_NOT_INITIALIZED);
  len = sizeof buf;
  CHECK_RV_IN(P11->C_DecryptVerifyUpdate(h, buf, 16, buf, &len), CKR_FUNCTION_NOT_SUPPORTED,
              CKR_OPERATION_NOT_INITIALIZED);
  /* Digesting a sensitive private key must not work. */
  if (r) {
    CK_MECHANISM m = {CKM_SHA256, NULL, 0};
    if (CHECK_RV(P11->C_DigestInit(h, &m), CKR_OK)) {
      CHECK_RV_IN(P11->C_DigestKey(h, r->priv), CKR_FUNCTION_NOT_SUPPORTED, CKR_KEY_INDIGESTIBLE,
                  CKR_KEY_HANDLE_INVALID);
      kvpt_end_ops(h);
    }
  }
  kvpt_close(h);
}

void kvpt_add_crypt_tests(void)
{
  static const kvpt_test tests[] = {
      {"C_Encrypt then C_Decrypt", test_encrypt_decrypt_roundtrip},
      {"C_Decrypt of OpenSSL ciphertexts", test_decrypt_openssl_ciphertexts},
      {"decrypt size rules", test_decrypt_size_rules},
      {"decrypt errors", test_decrypt_errors},
      {"encrypt errors", test_encrypt_errors},
      {"C_Digest", test_digest},
      {"C_GenerateRandom", test_random},
      {"key management and dual functions refused", test_unused_functions_refused},
  };
  kvpt_add_suite("crypt", kvpt_suite_init, kvpt_suite_cleanup, tests, KVPT_ARRAY_LEN(tests));
}
