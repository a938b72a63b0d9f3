/*
 * Signing and verification: every required mechanism with every private key, single-part and
 * multi-part, each signature checked with OpenSSL against the certificate's public key; module
 * verification on the public key objects; the error paths of C_SignInit / C_Sign / C_Verify.
 *
 * ECDSA with a digest whose length does not match the curve (CKM_ECDSA): PKCS#11 2.40 lets the
 * token take any input length and truncate, Key Vault only takes the curve's digest length. This
 * suite accepts either CKR_OK with a signature OpenSSL verifies over the same input (OpenSSL
 * applies the same X9.62 truncation) or CKR_DATA_LEN_RANGE, but the module must answer the same
 * way for every key: all "short" inputs alike and all "long" inputs alike.
 */
#include <stdlib.h>
#include <string.h>

#include "common.h"

#define BAD_OBJECT ((CK_OBJECT_HANDLE)0x7ffff456UL)
#define BAD_SESSION ((CK_SESSION_HANDLE)0x7ffff321UL)
#define SIGMAX 1024

static unsigned char msg[1000];

/* The issue requires SHA-256/384/512; SHA-1 and SHA-224 are tested when the token lists them. */
typedef struct hashdef {
  const char *name;
  const EVP_MD *(*md)(void);
  CK_MECHANISM_TYPE rsa_pkcs, rsa_pss, ecdsa;
  bool required;
} hashdef;

static const hashdef hashes[] = {
    {"SHA-256", EVP_sha256, CKM_SHA256_RSA_PKCS, CKM_SHA256_RSA_PKCS_PSS, CKM_ECDSA_SHA256, true},
    {"SHA-384", EVP_sha384, CKM_SHA384_RSA_PKCS, CKM_SHA384_RSA_PKCS_PSS, CKM_ECDSA_SHA384, true},
    {"SHA-512", EVP_sha512, CKM_SHA512_RSA_PKCS, CKM_SHA512_RSA_PKCS_PSS, CKM_ECDSA_SHA512, true},
    {"SHA-1", EVP_sha1, CKM_SHA1_RSA_PKCS, CKM_SHA1_RSA_PKCS_PSS, CKM_ECDSA_SHA1, false},
    {"SHA-224", EVP_sha224, CKM_SHA224_RSA_PKCS, CKM_SHA224_RSA_PKCS_PSS, CKM_ECDSA_SHA224, false},
};

/* Whether to test hash k with the hash-and-sign mechanism mech. */
static bool wanted(size_t k, CK_MECHANISM_TYPE mech)
{
  return hashes[k].required || kvpt_mech_listed(mech);
}

static int sign_init(void)
{
  for (size_t i = 0; i < sizeof msg; i++)
    msg[i] = (unsigned char)("kvp11 conformance message "[i % 26] ^ (i / 26));
  return kvpt_suite_init();
}

/* Sign in one C_Sign (after a size query) or in C_SignUpdate chunks of 1, 7, 64, ... bytes.
 * Returns the first failing return value; *slen gets the signature length. */
static CK_RV do_sign(CK_SESSION_HANDLE h, CK_MECHANISM *m, CK_OBJECT_HANDLE key,
                     const unsigned char *in, size_t inlen, bool multi, unsigned char *sig,
                     CK_ULONG *slen)
{
  CK_RV rv = P11->C_SignInit(h, m, key);
  if (rv != CKR_OK)
    return rv;
  if (!multi) {
    CK_ULONG need = 0;
    rv = P11->C_Sign(h, (CK_BYTE_PTR)in, inlen, NULL, &need);
    if (rv != CKR_OK)
      return rv;
    CHECK(need > 0 && need <= SIGMAX, "C_Sign size query gave %lu", (unsigned long)need);
    *slen = SIGMAX;
    rv = P11->C_Sign(h, (CK_BYTE_PTR)in, inlen, sig, slen);
    if (rv == CKR_OK)
      CHECK(*slen <= need, "signature length %lu exceeds the size query's %lu",
            (unsigned long)*slen, (unsigned long)need);
    return rv;
  }
  static const size_t chunks[] = {1, 7, 64, 200};
  size_t off = 0;
  for (size_t i = 0; off < inlen; i++) {
    size_t n = chunks[i % 4];
    if (n > inlen - off)
      n = inlen - off;
    rv = P11->C_SignUpdate(h, (CK_BYTE_PTR)in + off, n);
    if (rv != CKR_OK)
      return rv;
    off += n;
  }
  *slen = SIGMAX;
  return P11->C_SignFinal(h, sig, slen);
}

static CK_RV do_verify(CK_SESSION_HANDLE h, CK_MECHANISM *m, CK_OBJECT_HANDLE key,
                       const unsigned char *in, size_t inlen, bool multi, const unsigned char *sig,
                       CK_ULONG slen)
{
  CK_RV rv = P11->C_VerifyInit(h, m, key);
  if (rv != CKR_OK)
    return rv;
  if (!multi)
    return P11->C_Verify(h, (CK_BYTE_PTR)in, inlen, (CK_BYTE_PTR)sig, slen);
  for (size_t off = 0; off < inlen; off += 100) {
    rv = P11->C_VerifyUpdate(h, (CK_BYTE_PTR)in + off, inlen - off < 100 ? inlen - off : 100);
    if (rv != CKR_OK)
      return rv;
  }
  return P11->C_VerifyFinal(h, (CK_BYTE_PTR)sig, slen);
}

/* The module's own verification of a good signature and of one with a flipped bit. */
static void module_verify(CK_SESSION_HANDLE h, const kvpt_cert *c, CK_MECHANISM *m,
                          const unsigned char *in, size_t inlen, bool multi,
                          const unsigned char *sig, CK_ULONG slen, const char *what)
{
  unsigned char bad[SIGMAX];
  if (slen == 0 || slen > SIGMAX)
    return;
  CK_RV rv = do_verify(h, m, c->pub, in, inlen, multi, sig, slen);
  CHECK(rv == CKR_OK, "%s %s: module verify of a good signature: %s", c->name, what,
        kvpt_rv_name(rv));
  memcpy(bad, sig, slen);
  bad[slen / 2] ^= 0x10;
  rv = do_verify(h, m, c->pub, in, inlen, multi, bad, slen);
  CHECK(rv == CKR_SIGNATURE_INVALID,
        "%s %s: module verify of a flipped bit: expected CKR_SIGNATURE_INVALID, got %s", c->name,
        what, kvpt_rv_name(rv));
}

#define FOR_PRIVATE(c, pred)                                                                       \
  for (size_t i_ = 0; i_ < KVPT_NCERTS; i_++)                                                      \
    if ((c = &KVPT_CERTS[i_])->is_private && c->priv != CK_INVALID_HANDLE && c->pkey &&            \
        c->pub != CK_INVALID_HANDLE && (pred))

static void test_rsa_pkcs_digest_info(void)
{
  CK_SESSION_HANDLE h = kvpt_open(false);
  const kvpt_cert *c;
  unsigned char sig[SIGMAX], d[EVP_MAX_MD_SIZE], di[128];
  int n = 0;
  FOR_PRIVATE(c, c->is_rsa)
  {
    for (size_t k = 0; k < KVPT_ARRAY_LEN(hashes); k++) {
      if (!hashes[k].required)
        continue;
      const EVP_MD *md = hashes[k].md();
      size_t dlen = kvpt_hash(md, msg, sizeof msg, d);
      size_t dilen = kvpt_digest_info(md, d, dlen, di, sizeof di);
      CK_MECHANISM m = {CKM_RSA_PKCS, NULL, 0};
      CK_ULONG slen = 0;
      CK_RV rv = do_sign(h, &m, c->priv, di, dilen, false, sig, &slen);
      if (!CHECK(rv == CKR_OK, "%s CKM_RSA_PKCS DigestInfo %s: %s", c->name, hashes[k].name,
                 kvpt_rv_name(rv)))
        continue;
      n++;
      CHECK(slen == c->sig_len, "%s: signature length %lu, expected %zu", c->name,
            (unsigned long)slen, c->sig_len);
      CHECK(kvpt_verify_digest(c, 'p', md, d, dlen, sig, slen),
            "%s CKM_RSA_PKCS %s: OpenSSL rejects the signature", c->name, hashes[k].name);
      module_verify(h, c, &m, di, dilen, false, sig, slen, "CKM_RSA_PKCS");
    }
  }
  CHECK(n > 0 || !kvpt_first_rsa(0), "no RSA signature made");
  kvpt_close(h);
}

static void test_rsa_pkcs_hash_mechanisms(void)
{
  CK_SESSION_HANDLE h = kvpt_open(false);
  const kvpt_cert *c;
  unsigned char sig[SIGMAX];
  FOR_PRIVATE(c, c->is_rsa)
  {
    for (size_t k = 0; k < KVPT_ARRAY_LEN(hashes); k++)
      for (int multi = 0; multi < 2 && wanted(k, hashes[k].rsa_pkcs); multi++) {
        CK_MECHANISM m = {hashes[k].rsa_pkcs, NULL, 0};
        CK_ULONG slen = 0;
        CK_RV rv = do_sign(h, &m, c->priv, msg, sizeof msg, multi, sig, &slen);
        if (!CHECK(rv == CKR_OK, "%s %s_RSA_PKCS %s: %s", c->name, hashes[k].name,
                   multi ? "multi-part" : "single", kvpt_rv_name(rv)))
          continue;
        CHECK(kvpt_verify_msg(c, 'p', hashes[k].md(), msg, sizeof msg, sig, slen),
              "%s %s_RSA_PKCS %s: OpenSSL rejects the signature", c->name, hashes[k].name,
              multi ? "multi" : "single");
        module_verify(h, c, &m, msg, sizeof msg, multi, sig, slen, hashes[k].name);
      }
  }
  kvpt_close(h);
}

static void pss_params(CK_RSA_PKCS_PSS_PARAMS *p, const EVP_MD *md)
{
  p->hashAlg = kvpt_hash_mech(md);
  p->mgf = kvpt_mgf(md);
  p->sLen = (CK_ULONG)EVP_MD_get_size(md);
}

static void test_rsa_pss(void)
{
  CK_SESSION_HANDLE h = kvpt_open(false);
  const kvpt_cert *c;
  unsigned char sig[SIGMAX], d[EVP_MAX_MD_SIZE];
  FOR_PRIVATE(c, c->is_rsa)
  {
    for (size_t k = 0; k < KVPT_ARRAY_LEN(hashes); k++) {
      if (!hashes[k].required)
        continue;
      const EVP_MD *md = hashes[k].md();
      size_t dlen = kvpt_hash(md, msg, sizeof msg, d);
      CK_RSA_PKCS_PSS_PARAMS p;
      pss_params(&p, md);
      CK_MECHANISM m = {CKM_RSA_PKCS_PSS, &p, sizeof p};
      CK_ULONG slen = 0;
      CK_RV rv = do_sign(h, &m, c->priv, d, dlen, false, sig, &slen);
      if (!CHECK(rv == CKR_OK, "%s CKM_RSA_PKCS_PSS %s: %s", c->name, hashes[k].name,
                 kvpt_rv_name(rv)))
        continue;
      CHECK(kvpt_verify_digest(c, 's', md, d, dlen, sig, slen),
            "%s CKM_RSA_PKCS_PSS %s: OpenSSL rejects the signature", c->name, hashes[k].name);
      module_verify(h, c, &m, d, dlen, false, sig, slen, "CKM_RSA_PKCS_PSS");
    }
  }
  kvpt_close(h);
}

static void test_rsa_pss_hash_mechanisms(void)
{
  CK_SESSION_HANDLE h = kvpt_open(false);
  const kvpt_cert *c;
  unsigned char sig[SIGMAX];
  FOR_PRIVATE(c, c->is_rsa)
  {
    for (size_t k = 0; k < KVPT_ARRAY_LEN(hashes); k++)
      for (int multi = 0; multi < 2 && wanted(k, hashes[k].rsa_pss); multi++) {
        CK_RSA_PKCS_PSS_PARAMS p;
        pss_params(&p, hashes[k].md());
        CK_MECHANISM m = {hashes[k].rsa_pss, &p, sizeof p};
        CK_ULONG slen = 0;
        CK_RV rv = do_sign(h, &m, c->priv, msg, sizeof msg, multi, sig, &slen);
        if (!CHECK(rv == CKR_OK, "%s %s_RSA_PKCS_PSS %s: %s", c->name, hashes[k].name,
                   multi ? "multi-part" : "single", kvpt_rv_name(rv)))
          continue;
        CHECK(kvpt_verify_msg(c, 's', hashes[k].md(), msg, sizeof msg, sig, slen),
              "%s %s_RSA_PKCS_PSS %s: OpenSSL rejects the signature", c->name, hashes[k].name,
              multi ? "multi" : "single");
        module_verify(h, c, &m, msg, sizeof msg, multi, sig, slen, hashes[k].name);
      }
  }
  kvpt_close(h);
}

static void test_ecdsa(void)
{
  CK_SESSION_HANDLE h = kvpt_open(false);
  const kvpt_cert *c;
  unsigned char sig[SIGMAX], d[EVP_MAX_MD_SIZE];
  FOR_PRIVATE(c, c->is_ec)
  {
    size_t dlen = kvpt_hash(c->ec_md, msg, sizeof msg, d);
    CK_MECHANISM m = {CKM_ECDSA, NULL, 0};
    CK_ULONG slen = 0;
    CK_RV rv = do_sign(h, &m, c->priv, d, dlen, false, sig, &slen);
    if (!CHECK(rv == CKR_OK, "%s CKM_ECDSA: %s", c->name, kvpt_rv_name(rv)))
      continue;
    CHECK(slen == c->sig_len, "%s CKM_ECDSA: signature length %lu, expected r||s of %zu", c->name,
          (unsigned long)slen, c->sig_len);
    CHECK(kvpt_verify_digest(c, 'e', NULL, d, dlen, sig, slen),
          "%s CKM_ECDSA: OpenSSL rejects the signature", c->name);
    module_verify(h, c, &m, d, dlen, false, sig, slen, "CKM_ECDSA");
  }
  kvpt_close(h);
}

static void test_ecdsa_hash_mechanisms(void)
{
  CK_SESSION_HANDLE h = kvpt_open(false);
  const kvpt_cert *c;
  unsigned char sig[SIGMAX];
  FOR_PRIVATE(c, c->is_ec)
  {
    for (size_t k = 0; k < KVPT_ARRAY_LEN(hashes); k++)
      for (int multi = 0; multi < 2 && wanted(k, hashes[k].ecdsa); multi++) {
        CK_MECHANISM m = {hashes[k].ecdsa, NULL, 0};
        CK_ULONG slen = 0;
        bool matching = hashes[k].ecdsa == c->ec_mech;
        CK_RV rv = do_sign(h, &m, c->priv, msg, sizeof msg, multi, sig, &slen);
        if (!matching && rv != CKR_OK) {
          /* A hash that does not match the curve may be refused (Key Vault pairs them). */
          CHECK(rv == CKR_MECHANISM_INVALID || rv == CKR_KEY_TYPE_INCONSISTENT ||
                    rv == CKR_KEY_SIZE_RANGE,
                "%s ECDSA with %s: refused with %s", c->name, hashes[k].name, kvpt_rv_name(rv));
          (void)P11->C_SignFinal(h, NULL, &slen);
          continue;
        }
        if (!CHECK(rv == CKR_OK, "%s ECDSA with %s %s: %s", c->name, hashes[k].name,
                   multi ? "multi-part" : "single", kvpt_rv_name(rv)))
          continue;
        CHECK(slen == c->sig_len, "%s: signature length %lu, expected %zu", c->name,
              (unsigned long)slen, c->sig_len);
        CHECK(kvpt_verify_msg(c, 'e', hashes[k].md(), msg, sizeof msg, sig, slen),
              "%s ECDSA with %s %s: OpenSSL rejects the signature", c->name, hashes[k].name,
              multi ? "multi" : "single");
        module_verify(h, c, &m, msg, sizeof msg, multi, sig, slen, hashes[k].name);
      }
  }
  kvpt_close(h);
}

/* A signing mechanism and input for a key: SHA-256 hash-and-sign. */
static CK_MECHANISM hash_sign_mech(const kvpt_cert *c)
{
  CK_MECHANISM m = {c->is_rsa ? CKM_SHA256_RSA_PKCS : CKM_ECDSA_SHA256, NULL, 0};
  return m;
}

static bool verify_hash_sign(const kvpt_cert *c, const unsigned char *sig, CK_ULONG slen)
{
  return kvpt_verify_msg(c, c->is_rsa ? 'p' : 'e', EVP_sha256(), msg, sizeof msg, sig, slen);
}

/* Size query leaves the operation active; the length is enough; the real call works. */
static void test_sign_size_query(void)
{
  CK_SESSION_HANDLE h = kvpt_open(false);
  const kvpt_cert *c;
  unsigned char sig[SIGMAX];
  FOR_PRIVATE(c, true)
  {
    CK_MECHANISM m = hash_sign_mech(c);
    for (int multi = 0; multi < 2; multi++) {
      CK_ULONG need = 0, slen;
      if (!CHECK_RV(P11->C_SignInit(h, &m, c->priv), CKR_OK))
        continue;
      if (multi) {
        CHECK_RV(P11->C_SignUpdate(h, msg, sizeof msg), CKR_OK);
        CHECK_RV(P11->C_SignFinal(h, NULL, &need), CKR_OK);
      } else {
        CHECK_RV(P11->C_Sign(h, msg, sizeof msg, NULL, &need), CKR_OK);
      }
      CHECK(need >= c->sig_len && need <= SIGMAX, "%s: size query gave %lu, signature needs %zu",
            c->name, (unsigned long)need, c->sig_len);
      /* A second size query is still fine. */
      slen = 0;
      CHECK_RV(multi ? P11->C_SignFinal(h, NULL, &slen)
                     : P11->C_Sign(h, msg, sizeof msg, NULL, &slen),
               CKR_OK);
      slen = need;
      CK_RV rv =
          multi ? P11->C_SignFinal(h, sig, &slen) : P11->C_Sign(h, msg, sizeof msg, sig, &slen);
      if (CHECK(rv == CKR_OK, "%s: sign after the size query: %s", c->name, kvpt_rv_name(rv))) {
        CHECK(c->is_ec ? slen == c->sig_len : slen == c->sig_len,
              "%s: signature length %lu, expected %zu", c->name, (unsigned long)slen, c->sig_len);
        CHECK(verify_hash_sign(c, sig, slen),
              "%s: OpenSSL rejects the signature made after a size query", c->name);
      }
      /* The operation is over. */
      slen = sizeof sig;
      CHECK_RV(P11->C_Sign(h, msg, sizeof msg, sig, &slen), CKR_OPERATION_NOT_INITIALIZED);
    }
  }
  kvpt_close(h);
}

/* CKR_BUFFER_TOO_SMALL keeps the operation active and gives the needed length. */
static void test_sign_buffer_too_small(void)
{
  CK_SESSION_HANDLE h = kvpt_open(false);
  const kvpt_cert *c;
  unsigned char sig[SIGMAX];
  FOR_PRIVATE(c, true)
  {
    CK_MECHANISM m = hash_sign_mech(c);
    for (int multi = 0; multi < 2; multi++) {
      if (!CHECK_RV(P11->C_SignInit(h, &m, c->priv), CKR_OK))
        continue;
      if (multi)
        CHECK_RV(P11->C_SignUpdate(h, msg, sizeof msg), CKR_OK);
      CK_ULONG slen = 8;
      memset(sig, 0, sizeof sig);
      CK_RV rv =
          multi ? P11->C_SignFinal(h, sig, &slen) : P11->C_Sign(h, msg, sizeof msg, sig, &slen);
      CHECK(rv == CKR_BUFFER_TOO_SMALL,
            "%s %s: 8-byte buffer: expected CKR_BUFFER_TOO_SMALL, got %s", c->name,
            multi ? "C_SignFinal" : "C_Sign", kvpt_rv_name(rv));
      CHECK(slen >= c->sig_len && slen <= SIGMAX,
            "%s: CKR_BUFFER_TOO_SMALL gave length %lu, needed %zu", c->name, (unsigned long)slen,
            c->sig_len);
      slen = SIGMAX;
      rv = multi ? P11->C_SignFinal(h, sig, &slen) : P11->C_Sign(h, msg, sizeof msg, sig, &slen);
      if (CHECK(rv == CKR_OK, "%s: retry after CKR_BUFFER_TOO_SMALL: %s", c->name,
                kvpt_rv_name(rv)))
        CHECK(verify_hash_sign(c, sig, slen), "%s: OpenSSL rejects the signature of the retry",
              c->name);
    }
  }
  kvpt_close(h);
}

static void test_sign_state_errors(void)
{
  CK_SESSION_HANDLE h = kvpt_open(false), other = kvpt_open(false);
  const kvpt_cert *c = kvpt_first_rsa(0) ? kvpt_first_rsa(0) : kvpt_first_ec(0);
  unsigned char sig[SIGMAX];
  CK_ULONG slen = sizeof sig;
  if (!CHECK(c != NULL, "no private key"))
    goto out;
  CK_MECHANISM m = hash_sign_mech(c);
  CHECK_RV(P11->C_Sign(h, msg, sizeof msg, sig, &slen), CKR_OPERATION_NOT_INITIALIZED);
  CHECK_RV(P11->C_SignUpdate(h, msg, sizeof msg), CKR_OPERATION_NOT_INITIALIZED);
  slen = sizeof sig;
  CHECK_RV(P11->C_SignFinal(h, sig, &slen), CKR_OPERATION_NOT_INITIALIZED);
  CHECK_RV(P11->C_SignInit(h, NULL, c->priv), CKR_ARGUMENTS_BAD);
  if (CHECK_RV(P11->C_SignInit(h, &m, c->priv), CKR_OK)) {
    CHECK_RV(P11->C_SignInit(h, &m, c->priv), CKR_OPERATION_ACTIVE);
    /* Another session is not affected. */
    slen = sizeof sig;
    CHECK_RV(P11->C_Sign(other, msg, sizeof msg, sig, &slen), CKR_OPERATION_NOT_INITIALIZED);
    /* The active operation survives the refused C_SignInit. */
    slen = sizeof sig;
    if (CHECK_RV(P11->C_Sign(h, msg, sizeof msg, sig, &slen), CKR_OK))
      CHECK(verify_hash_sign(c, sig, slen), "%s: OpenSSL rejects the signature", c->name);
    slen = sizeof sig;
    CHECK_RV(P11->C_Sign(h, msg, sizeof msg, sig, &slen), CKR_OPERATION_NOT_INITIALIZED);
  }
  /* A failed C_Sign (other than BUFFER_TOO_SMALL / size query) ends the operation. */
  const kvpt_cert *r = kvpt_first_rsa(0);
  if (r) {
    CK_MECHANISM raw = {CKM_RSA_PKCS, NULL, 0};
    if (CHECK_RV(P11->C_SignInit(h, &raw, r->priv), CKR_OK)) {
      slen = sizeof sig;
      /* Too long for PKCS#1 v1.5 (a DigestInfo-parsing backend may say CKR_DATA_INVALID first). */
      CHECK_RV_IN(P11->C_Sign(h, msg, r->sig_len, sig, &slen), CKR_DATA_LEN_RANGE,
                  CKR_DATA_INVALID);
      slen = sizeof sig;
      CHECK_RV(P11->C_Sign(h, msg, 10, sig, &slen), CKR_OPERATION_NOT_INITIALIZED);
    }
  }
  /* Closing a session with an active operation is fine. */
  CHECK_RV(P11->C_SignInit(other, &m, c->priv), CKR_OK);
out:
  kvpt_close(h);
  kvpt_close(other);
}

static void test_sign_bad_handles(void)
{
  CK_SESSION_HANDLE h = kvpt_open(false);
  const kvpt_cert *c = kvpt_first_rsa(0) ? kvpt_first_rsa(0) : kvpt_first_ec(0);
  unsigned char sig[SIGMAX];
  CK_ULONG slen = sizeof sig;
  if (!CHECK(c != NULL, "no private key"))
    goto out;
  CK_MECHANISM m = hash_sign_mech(c);
  CHECK_RV_IN(P11->C_SignInit(h, &m, BAD_OBJECT), CKR_KEY_HANDLE_INVALID,
              CKR_OBJECT_HANDLE_INVALID);
  CHECK_RV_IN(P11->C_SignInit(h, &m, CK_INVALID_HANDLE), CKR_KEY_HANDLE_INVALID,
              CKR_OBJECT_HANDLE_INVALID);
  CHECK_RV_IN(P11->C_SignInit(h, &m, c->cert), CKR_KEY_HANDLE_INVALID, CKR_KEY_TYPE_INCONSISTENT,
              CKR_KEY_FUNCTION_NOT_PERMITTED);
  CHECK_RV_IN(P11->C_SignInit(h, &m, c->pub), CKR_KEY_FUNCTION_NOT_PERMITTED,
              CKR_KEY_TYPE_INCONSISTENT);
  CHECK_RV_IN(P11->C_VerifyInit(h, &m, BAD_OBJECT), CKR_KEY_HANDLE_INVALID,
              CKR_OBJECT_HANDLE_INVALID);
  CHECK_RV_IN(P11->C_VerifyInit(h, &m, c->cert), CKR_KEY_HANDLE_INVALID, CKR_KEY_TYPE_INCONSISTENT,
              CKR_KEY_FUNCTION_NOT_PERMITTED);
  CHECK_RV(P11->C_SignInit(BAD_SESSION, &m, c->priv), CKR_SESSION_HANDLE_INVALID);
  CHECK_RV(P11->C_Sign(BAD_SESSION, msg, sizeof msg, sig, &slen), CKR_SESSION_HANDLE_INVALID);
  CHECK_RV(P11->C_SignUpdate(BAD_SESSION, msg, sizeof msg), CKR_SESSION_HANDLE_INVALID);
  CHECK_RV(P11->C_SignFinal(BAD_SESSION, sig, &slen), CKR_SESSION_HANDLE_INVALID);
  CHECK_RV(P11->C_VerifyInit(BAD_SESSION, &m, c->pub), CKR_SESSION_HANDLE_INVALID);
  CHECK_RV(P11->C_Verify(BAD_SESSION, msg, sizeof msg, sig, slen), CKR_SESSION_HANDLE_INVALID);
  /* After all these refusals no operation is active. */
  slen = sizeof sig;
  CHECK_RV(P11->C_Sign(h, msg, sizeof msg, sig, &slen), CKR_OPERATION_NOT_INITIALIZED);
out:
  kvpt_close(h);
}

/* C_SignInit / C_VerifyInit that must fail with want; ends the operation if it did not. */
static void init_refused(CK_SESSION_HANDLE h, bool sign, CK_MECHANISM *m, CK_OBJECT_HANDLE key,
                         CK_RV want, const char *what)
{
  CK_RV rv = sign ? P11->C_SignInit(h, m, key) : P11->C_VerifyInit(h, m, key);
  CHECK(rv == want, "%s: expected %s, got %s", what, kvpt_rv_name(want), kvpt_rv_name(rv));
  if (rv == CKR_OK)
    kvpt_end_ops(h);
}

static void test_sign_wrong_key_type(void)
{
  CK_SESSION_HANDLE h = kvpt_open(false);
  const kvpt_cert *r = kvpt_first_rsa(0), *e = kvpt_first_ec(0);
  if (r) {
    CK_MECHANISM m1 = {CKM_ECDSA, NULL, 0}, m2 = {CKM_ECDSA_SHA256, NULL, 0};
    init_refused(h, true, &m1, r->priv, CKR_KEY_TYPE_INCONSISTENT,
                 "C_SignInit CKM_ECDSA with an RSA key");
    init_refused(h, true, &m2, r->priv, CKR_KEY_TYPE_INCONSISTENT,
                 "C_SignInit CKM_ECDSA_SHA256 with an RSA key");
    init_refused(h, false, &m1, r->pub, CKR_KEY_TYPE_INCONSISTENT,
                 "C_VerifyInit CKM_ECDSA with an RSA key");
  }
  if (e) {
    CK_RSA_PKCS_PSS_PARAMS p;
    pss_params(&p, EVP_sha256());
    CK_MECHANISM m1 = {CKM_SHA256_RSA_PKCS, NULL, 0}, m2 = {CKM_RSA_PKCS, NULL, 0},
                 m3 = {CKM_RSA_PKCS_PSS, &p, sizeof p};
    init_refused(h, true, &m1, e->priv, CKR_KEY_TYPE_INCONSISTENT,
                 "C_SignInit CKM_SHA256_RSA_PKCS with an EC key");
    init_refused(h, true, &m2, e->priv, CKR_KEY_TYPE_INCONSISTENT,
                 "C_SignInit CKM_RSA_PKCS with an EC key");
    init_refused(h, true, &m3, e->priv, CKR_KEY_TYPE_INCONSISTENT,
                 "C_SignInit CKM_RSA_PKCS_PSS with an EC key");
    init_refused(h, false, &m1, e->pub, CKR_KEY_TYPE_INCONSISTENT,
                 "C_VerifyInit CKM_SHA256_RSA_PKCS with an EC key");
  }
  CHECK(r || e, "no private key");
  kvpt_close(h);
}

static void test_pss_params(void)
{
  CK_SESSION_HANDLE h = kvpt_open(false);
  const kvpt_cert *c = kvpt_first_rsa(0);
  unsigned char sig[SIGMAX], d[EVP_MAX_MD_SIZE];
  bool any = kvpt_has_feature("pss-any-params");
  if (!c) {
    CHECK(true, "no RSA key");
    goto out;
  }
  (void)kvpt_hash(EVP_sha256(), msg, sizeof msg, d);
  CK_RSA_PKCS_PSS_PARAMS good, p;
  pss_params(&good, EVP_sha256());
  CK_MECHANISM m = {CKM_RSA_PKCS_PSS, NULL, 0};
  init_refused(h, true, &m, c->priv, CKR_MECHANISM_PARAM_INVALID,
               "CKM_RSA_PKCS_PSS without parameters");
  m.pParameter = &good;
  m.ulParameterLen = sizeof good - 1;
  init_refused(h, true, &m, c->priv, CKR_MECHANISM_PARAM_INVALID,
               "CKM_RSA_PKCS_PSS with short parameters");
  m.ulParameterLen = sizeof good;
  m.pParameter = &p;

  /* Mismatched MGF, salt or hash: refused unless the backend takes any PSS parameters. */
  static const struct {
    const char *what;
    CK_MECHANISM_TYPE hash;
    CK_RSA_PKCS_MGF_TYPE mgf;
    CK_ULONG salt;
  } bad[] = {
      {"MGF1-SHA1 with SHA-256", CKM_SHA256, CKG_MGF1_SHA1, 32},
      {"salt 0", CKM_SHA256, CKG_MGF1_SHA256, 0},
      {"salt 20", CKM_SHA256, CKG_MGF1_SHA256, 20},
      {"SHA-1 hash", CKM_SHA_1, CKG_MGF1_SHA256, 32},
      {"unknown hash", CKM_VENDOR_DEFINED | 0x77, CKG_MGF1_SHA256, 32},
  };
  for (size_t i = 0; i < KVPT_ARRAY_LEN(bad); i++) {
    p.hashAlg = bad[i].hash;
    p.mgf = bad[i].mgf;
    p.sLen = bad[i].salt;
    CK_RV rv = P11->C_SignInit(h, &m, c->priv);
    if (rv == CKR_OK)
      kvpt_end_ops(h);
    if (any && rv == CKR_OK)
      continue;
    CHECK(rv == CKR_MECHANISM_PARAM_INVALID,
          "CKM_RSA_PKCS_PSS %s: expected CKR_MECHANISM_PARAM_INVALID, got %s", bad[i].what,
          kvpt_rv_name(rv));
  }
  /* CKM_SHA256_RSA_PKCS_PSS names its hash: parameters for another hash are invalid. */
  pss_params(&p, EVP_sha384());
  CK_MECHANISM m256 = {CKM_SHA256_RSA_PKCS_PSS, &p, sizeof p};
  CK_RV rv = P11->C_SignInit(h, &m256, c->priv);
  CHECK(rv == CKR_MECHANISM_PARAM_INVALID,
        "CKM_SHA256_RSA_PKCS_PSS with SHA-384 parameters: expected "
        "CKR_MECHANISM_PARAM_INVALID, got %s",
        kvpt_rv_name(rv));
  if (rv == CKR_OK)
    kvpt_end_ops(h);
  /* CKM_RSA_PKCS_PSS signs a digest of the hash's length. */
  m.pParameter = &good;
  if (CHECK_RV(P11->C_SignInit(h, &m, c->priv), CKR_OK)) {
    CK_ULONG slen = sizeof sig;
    CHECK_RV_IN(P11->C_Sign(h, d, 20, sig, &slen), CKR_DATA_LEN_RANGE, CKR_DATA_INVALID);
  }
out:
  kvpt_close(h);
}

/* CKM_RSA_PKCS over something that is not a DigestInfo. */
static void test_rsa_pkcs_raw_input(void)
{
  CK_SESSION_HANDLE h = kvpt_open(false);
  const kvpt_cert *c;
  unsigned char sig[SIGMAX];
  bool raw = kvpt_has_feature("raw-rsa");
  /* A TLS 1.0 style MD5+SHA-1 concatenation: 36 bytes, no DigestInfo. */
  unsigned char in[36];
  for (size_t i = 0; i < sizeof in; i++)
    in[i] = (unsigned char)(0x30 + i * 7);
  FOR_PRIVATE(c, c->is_rsa)
  {
    CK_MECHANISM m = {CKM_RSA_PKCS, NULL, 0};
    CK_ULONG slen = 0;
    CK_RV rv = do_sign(h, &m, c->priv, in, sizeof in, false, sig, &slen);
    if (raw) {
      if (CHECK(rv == CKR_OK, "%s CKM_RSA_PKCS raw input (feature raw-rsa): %s", c->name,
                kvpt_rv_name(rv)))
        CHECK(kvpt_verify_digest(c, 'r', NULL, in, sizeof in, sig, slen),
              "%s: raw CKM_RSA_PKCS signature does not "
              "recover the input",
              c->name);
    } else {
      CHECK(rv == CKR_DATA_INVALID,
            "%s CKM_RSA_PKCS non-DigestInfo input: expected CKR_DATA_INVALID, got %s", c->name,
            kvpt_rv_name(rv));
    }
    /* Longer than k - 11: CKR_DATA_LEN_RANGE whatever the backend. */
    rv = do_sign(h, &m, c->priv, msg, c->sig_len - 10, false, sig, &slen);
    CHECK(rv == CKR_DATA_LEN_RANGE,
          "%s CKM_RSA_PKCS with k-10 bytes: expected CKR_DATA_LEN_RANGE, got %s", c->name,
          kvpt_rv_name(rv));
  }
  kvpt_close(h);
}

static void test_ecdsa_digest_length(void)
{
  CK_SESSION_HANDLE h = kvpt_open(false);
  const kvpt_cert *c;
  unsigned char sig[SIGMAX], in[64];
  CK_RV seen[2] = {CKR_GENERAL_ERROR, CKR_GENERAL_ERROR}; /* first answer for short / long inputs */
  for (size_t i = 0; i < sizeof in; i++)
    in[i] = (unsigned char)(0xA0 ^ (i * 13));
  FOR_PRIVATE(c, c->is_ec)
  {
    size_t want = (size_t)EVP_MD_get_size(c->ec_md);
    size_t lens[] = {20, want < 64 ? 64 : 0};
    for (size_t k = 0; k < 2; k++) {
      if (lens[k] == 0 || lens[k] == want)
        continue;
      CK_MECHANISM m = {CKM_ECDSA, NULL, 0};
      CK_ULONG slen = 0;
      CK_RV rv = do_sign(h, &m, c->priv, in, lens[k], false, sig, &slen);
      if (!CHECK(rv == CKR_OK || rv == CKR_DATA_LEN_RANGE,
                 "%s CKM_ECDSA with a %zu-byte digest: expected CKR_OK or "
                 "CKR_DATA_LEN_RANGE, got %s",
                 c->name, lens[k], kvpt_rv_name(rv)))
        continue;
      if (seen[k] == CKR_GENERAL_ERROR)
        seen[k] = rv;
      CHECK(rv == seen[k], "%s CKM_ECDSA with a %zu-byte digest: %s, but another key gave %s",
            c->name, lens[k], kvpt_rv_name(rv), kvpt_rv_name(seen[k]));
      if (rv == CKR_OK)
        CHECK(kvpt_verify_digest(c, 'e', NULL, in, lens[k], sig, slen),
              "%s CKM_ECDSA with a %zu-byte digest: "
              "OpenSSL rejects the signature",
              c->name, lens[k]);
    }
  }
  for (size_t k = 0; k < 2; k++)
    if (seen[k] != CKR_GENERAL_ERROR)
      fprintf(stderr, "\n  note: CKM_ECDSA with a %s digest: %s\n", k ? "longer" : "shorter",
              kvpt_rv_name(seen[k]));
  kvpt_close(h);
}

/* Mechanisms the token does not list are CKR_MECHANISM_INVALID. */
static void test_unsupported_mechanism(void)
{
  CK_SESSION_HANDLE h = kvpt_open(false);
  const kvpt_cert *c = kvpt_first_rsa(0) ? kvpt_first_rsa(0) : kvpt_first_ec(0);
  CK_MECHANISM_TYPE list[256];
  CK_ULONG n = KVPT_ARRAY_LEN(list);
  static const CK_MECHANISM_TYPE candidates[] = {
      CKM_MD5_RSA_PKCS,    CKM_RSA_9796, CKM_SHA1_RSA_X9_31, CKM_RSA_X_509,
      CKM_SHA224_RSA_PKCS, CKM_DSA,      CKM_ECDSA_SHA1,     CKM_SHA1_RSA_PKCS};
  if (!CHECK(c != NULL, "no private key") ||
      !CHECK_RV(P11->C_GetMechanismList(KVPT_SLOT, list, &n), CKR_OK))
    goto out;
  CK_MECHANISM vendor = {CKM_VENDOR_DEFINED | 0x4b5650UL, NULL, 0};
  CHECK_RV(P11->C_SignInit(h, &vendor, c->priv), CKR_MECHANISM_INVALID);
  CHECK_RV(P11->C_VerifyInit(h, &vendor, c->pub), CKR_MECHANISM_INVALID);
  CHECK_RV(P11->C_DecryptInit(h, &vendor, c->priv), CKR_MECHANISM_INVALID);
  CHECK_RV(P11->C_EncryptInit(h, &vendor, c->pub), CKR_MECHANISM_INVALID);
  CHECK_RV(P11->C_DigestInit(h, &vendor), CKR_MECHANISM_INVALID);
  kvpt_end_ops(h);
  for (size_t i = 0; i < KVPT_ARRAY_LEN(candidates); i++) {
    bool listed = false;
    for (CK_ULONG j = 0; j < n; j++)
      listed |= list[j] == candidates[i];
    if (listed)
      continue;
    CK_MECHANISM m = {candidates[i], NULL, 0};
    CK_RV rv = P11->C_SignInit(h, &m, c->priv);
    CHECK(rv == CKR_MECHANISM_INVALID,
          "C_SignInit with unlisted mechanism 0x%lx: expected CKR_MECHANISM_INVALID, "
          "got %s",
          (unsigned long)candidates[i], kvpt_rv_name(rv));
    if (rv == CKR_OK)
      kvpt_end_ops(h);
  }
out:
  kvpt_close(h);
}

static void test_verify_errors(void)
{
  CK_SESSION_HANDLE h = kvpt_open(false);
  const kvpt_cert *c;
  unsigned char sig[SIGMAX];
  FOR_PRIVATE(c, true)
  {
    CK_MECHANISM m = hash_sign_mech(c);
    CK_ULONG slen = 0;
    if (!CHECK_RV(do_sign(h, &m, c->priv, msg, sizeof msg, false, sig, &slen), CKR_OK))
      continue;
    CHECK_RV(P11->C_Verify(h, msg, sizeof msg, sig, slen), CKR_OPERATION_NOT_INITIALIZED);
    /* Wrong signature length: CKR_SIGNATURE_LEN_RANGE. */
    if (CHECK_RV(P11->C_VerifyInit(h, &m, c->pub), CKR_OK))
      CHECK_RV(P11->C_Verify(h, msg, sizeof msg, sig, slen - 1), CKR_SIGNATURE_LEN_RANGE);
    /* C_Verify ended that operation. */
    CHECK_RV(P11->C_Verify(h, msg, sizeof msg, sig, slen), CKR_OPERATION_NOT_INITIALIZED);
    if (CHECK_RV(P11->C_VerifyInit(h, &m, c->pub), CKR_OK)) {
      CHECK_RV(P11->C_VerifyInit(h, &m, c->pub), CKR_OPERATION_ACTIVE);
      CHECK_RV(P11->C_Verify(h, msg, sizeof msg - 1, sig, slen), CKR_SIGNATURE_INVALID);
    }
    /* The private key cannot verify (CKA_VERIFY is a public key attribute). */
    CK_RV rv = P11->C_VerifyInit(h, &m, c->priv);
    CHECK(rv == CKR_KEY_FUNCTION_NOT_PERMITTED || rv == CKR_KEY_TYPE_INCONSISTENT || rv == CKR_OK,
          "%s: C_VerifyInit with the private key: %s", c->name, kvpt_rv_name(rv));
    if (rv == CKR_OK)
      (void)P11->C_Verify(h, msg, sizeof msg, sig, slen);
  }
  kvpt_close(h);
}

/* NULL pointers where the call needs memory: CKR_ARGUMENTS_BAD, not a crash. */
static void test_null_arguments(void)
{
  CK_SESSION_HANDLE h = kvpt_open(false);
  const kvpt_cert *c = kvpt_first_rsa(0) ? kvpt_first_rsa(0) : kvpt_first_ec(0);
  unsigned char sig[SIGMAX];
  CK_ULONG slen = sizeof sig;
  if (!CHECK(c != NULL, "no private key"))
    goto out;
  CK_MECHANISM m = hash_sign_mech(c);
  if (CHECK_RV(P11->C_SignInit(h, &m, c->priv), CKR_OK)) {
    CHECK_RV(P11->C_Sign(h, msg, sizeof msg, sig, NULL), CKR_ARGUMENTS_BAD);
    kvpt_end_ops(h);
  }
  if (CHECK_RV(P11->C_SignInit(h, &m, c->priv), CKR_OK)) {
    CHECK_RV(P11->C_Sign(h, NULL, sizeof msg, sig, &slen), CKR_ARGUMENTS_BAD);
    kvpt_end_ops(h);
  }
  if (CHECK_RV(P11->C_SignInit(h, &m, c->priv), CKR_OK)) {
    CHECK_RV(P11->C_SignUpdate(h, NULL, 10), CKR_ARGUMENTS_BAD);
    kvpt_end_ops(h);
  }
  if (CHECK_RV(P11->C_SignInit(h, &m, c->priv), CKR_OK)) {
    CHECK_RV(P11->C_SignUpdate(h, msg, 10), CKR_OK);
    CHECK_RV(P11->C_SignFinal(h, sig, NULL), CKR_ARGUMENTS_BAD);
    kvpt_end_ops(h);
  }
  if (CHECK_RV(P11->C_VerifyInit(h, &m, c->pub), CKR_OK)) {
    CHECK_RV(P11->C_Verify(h, msg, sizeof msg, NULL, (CK_ULONG)c->sig_len), CKR_ARGUMENTS_BAD);
    kvpt_end_ops(h);
  }
  CHECK_RV(P11->C_VerifyInit(h, NULL, c->pub), CKR_ARGUMENTS_BAD);
  CHECK_RV(P11->C_DigestInit(h, NULL), CKR_ARGUMENTS_BAD);
  CHECK_RV(P11->C_EncryptInit(h, NULL, c->pub), CKR_ARGUMENTS_BAD);
  CK_MECHANISM d = {CKM_SHA256, NULL, 0};
  if (CHECK_RV(P11->C_DigestInit(h, &d), CKR_OK)) {
    CHECK_RV(P11->C_Digest(h, msg, sizeof msg, sig, NULL), CKR_ARGUMENTS_BAD);
    kvpt_end_ops(h);
  }
  const kvpt_cert *r = kvpt_first_rsa(0);
  if (r) {
    CK_MECHANISM p = {CKM_RSA_PKCS, NULL, 0};
    if (CHECK_RV(P11->C_DecryptInit(h, &p, r->priv), CKR_OK)) {
      CHECK_RV(P11->C_Decrypt(h, NULL, (CK_ULONG)r->sig_len, sig, &slen), CKR_ARGUMENTS_BAD);
      kvpt_end_ops(h);
    }
    if (CHECK_RV(P11->C_EncryptInit(h, &p, r->pub), CKR_OK)) {
      CHECK_RV(P11->C_Encrypt(h, msg, 16, sig, NULL), CKR_ARGUMENTS_BAD);
      kvpt_end_ops(h);
    }
  }
out:
  kvpt_close(h);
}

/* An empty message and a 1 MiB multi-part message, with every private key. */
static void test_message_sizes(void)
{
  CK_SESSION_HANDLE h = kvpt_open(false);
  const kvpt_cert *c;
  unsigned char sig[SIGMAX];
  size_t biglen = KVPT.quick ? 64 * 1024 : 1024 * 1024;
  unsigned char *big = malloc(biglen);
  if (!CHECK(big != NULL, "out of memory"))
    goto out;
  for (size_t i = 0; i < biglen; i++)
    big[i] = (unsigned char)(i * 2654435761u >> 13);
  FOR_PRIVATE(c, true)
  {
    CK_MECHANISM m = hash_sign_mech(c);
    CK_ULONG slen = SIGMAX;
    /* Empty: pData points somewhere, length 0. */
    if (CHECK_RV(P11->C_SignInit(h, &m, c->priv), CKR_OK) &&
        CHECK_RV(P11->C_Sign(h, big, 0, sig, &slen), CKR_OK))
      CHECK(kvpt_verify_msg(c, c->is_rsa ? 'p' : 'e', EVP_sha256(), big, 0, sig, slen),
            "%s: OpenSSL rejects the signature of an empty message", c->name);
    /* Large, in 64 KiB updates. */
    if (!CHECK_RV(P11->C_SignInit(h, &m, c->priv), CKR_OK))
      continue;
    bool ok = true;
    for (size_t off = 0; ok && off < biglen; off += 65536)
      ok = CHECK_RV(P11->C_SignUpdate(h, big + off, 65536), CKR_OK);
    slen = SIGMAX;
    if (ok && CHECK_RV(P11->C_SignFinal(h, sig, &slen), CKR_OK))
      CHECK(kvpt_verify_msg(c, c->is_rsa ? 'p' : 'e', EVP_sha256(), big, biglen, sig, slen),
            "%s: OpenSSL rejects the signature of a %zu-byte message", c->name, biglen);
    if (!ok)
      kvpt_end_ops(h);
  }
out:
  free(big);
  kvpt_close(h);
}

void kvpt_add_sign_tests(void)
{
  static const kvpt_test tests[] = {
      {"CKM_RSA_PKCS DigestInfo", test_rsa_pkcs_digest_info},
      {"CKM_SHAxxx_RSA_PKCS single/multi", test_rsa_pkcs_hash_mechanisms},
      {"CKM_RSA_PKCS_PSS", test_rsa_pss},
      {"CKM_SHAxxx_RSA_PKCS_PSS single/multi", test_rsa_pss_hash_mechanisms},
      {"CKM_ECDSA", test_ecdsa},
      {"CKM_ECDSA_SHAxxx single/multi", test_ecdsa_hash_mechanisms},
      {"sign size query", test_sign_size_query},
      {"sign CKR_BUFFER_TOO_SMALL", test_sign_buffer_too_small},
      {"sign operation state errors", test_sign_state_errors},
      {"sign bad handles", test_sign_bad_handles},
      {"sign wrong key type", test_sign_wrong_key_type},
      {"PSS parameters", test_pss_params},
      {"CKM_RSA_PKCS non-DigestInfo input", test_rsa_pkcs_raw_input},
      {"CKM_ECDSA digest length", test_ecdsa_digest_length},
      {"unsupported mechanism", test_unsupported_mechanism},
      {"verify errors", test_verify_errors},
      {"NULL arguments", test_null_arguments},
      {"empty and large messages", test_message_sizes},
  };
  kvpt_add_suite("sign", sign_init, kvpt_suite_cleanup, tests, KVPT_ARRAY_LEN(tests));
}
