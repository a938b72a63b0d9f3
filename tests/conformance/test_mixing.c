/*
 * Single-part and multi-part calls of one operation do not mix (PKCS#11 2.40 5.8-5.12: a
 * single-part call "cannot be used to terminate a multi-part operation, and must be called after
 * C_xInit without intervening C_xUpdate calls"), for digest, sign, verify, encrypt and decrypt:
 *  - a single-part call after an Update, or after a Final size query, is CKR_OPERATION_ACTIVE;
 *  - a Final after a single-part size query is CKR_OPERATION_ACTIVE;
 * and, as for every failed single-part or final call other than CKR_BUFFER_TOO_SMALL, the refused
 * call ends the operation (pkcs11test's DigestIntersperse / DigestFinalIntersperse). Before this
 * rule C_SignUpdate("a") + C_Sign("bc") signed "abc", and C_DigestFinal after a C_Digest size query
 * returned the digest of the empty message.
 */
#include <string.h>

#include "common.h"

static const unsigned char part1[] = "kvp11 mixing: the first part, ";
static const unsigned char part2[] = "and the second part of the message";

/* The whole message, part1 || part2, as one buffer. */
static size_t whole(unsigned char *out)
{
  memcpy(out, part1, sizeof part1 - 1);
  memcpy(out + sizeof part1 - 1, part2, sizeof part2 - 1);
  return sizeof part1 - 1 + sizeof part2 - 1;
}

static void test_digest_mixing(void)
{
  CK_SESSION_HANDLE h = kvpt_open(false);
  CK_MECHANISM m = {CKM_SHA256, NULL, 0};
  unsigned char out[64];
  CK_ULONG len;

  /* Update, then single-part */
  if (CHECK_RV(P11->C_DigestInit(h, &m), CKR_OK)) {
    CHECK_RV(P11->C_DigestUpdate(h, (CK_BYTE_PTR)part1, sizeof part1 - 1), CKR_OK);
    len = sizeof out;
    CHECK_RV(P11->C_Digest(h, (CK_BYTE_PTR)part2, sizeof part2 - 1, out, &len),
             CKR_OPERATION_ACTIVE);
    len = sizeof out;
    CHECK_RV(P11->C_DigestFinal(h, out, &len), CKR_OPERATION_NOT_INITIALIZED);
  }
  /* Update, Final size query, then single-part */
  if (CHECK_RV(P11->C_DigestInit(h, &m), CKR_OK)) {
    CHECK_RV(P11->C_DigestUpdate(h, (CK_BYTE_PTR)part1, 1), CKR_OK);
    len = 0;
    CHECK_RV(P11->C_DigestFinal(h, NULL, &len), CKR_OK);
    CHECK(len == 32, "C_DigestFinal size query gave %lu, expected 32", (unsigned long)len);
    len = sizeof out;
    CHECK_RV(P11->C_Digest(h, (CK_BYTE_PTR)part2, sizeof part2 - 1, out, &len),
             CKR_OPERATION_ACTIVE);
    len = sizeof out;
    CHECK_RV(P11->C_DigestFinal(h, out, &len), CKR_OPERATION_NOT_INITIALIZED);
  }
  /* single-part size query, then Final (used to give the digest of the empty message) */
  if (CHECK_RV(P11->C_DigestInit(h, &m), CKR_OK)) {
    len = 0;
    CHECK_RV(P11->C_Digest(h, (CK_BYTE_PTR)part1, sizeof part1 - 1, NULL, &len), CKR_OK);
    len = sizeof out;
    CHECK_RV(P11->C_DigestFinal(h, out, &len), CKR_OPERATION_ACTIVE);
    len = sizeof out;
    CHECK_RV(P11->C_Digest(h, (CK_BYTE_PTR)part1, sizeof part1 - 1, out, &len),
             CKR_OPERATION_NOT_INITIALIZED);
  }
  /* the rule does not get in the way of a plain single-part or multi-part digest */
  if (CHECK_RV(P11->C_DigestInit(h, &m), CKR_OK)) {
    unsigned char msg[128], want[64];
    size_t n = whole(msg);
    kvpt_hash(EVP_sha256(), msg, n, want);
    len = 0;
    CHECK_RV(P11->C_Digest(h, msg, n, NULL, &len), CKR_OK);
    len = sizeof out;
    if (CHECK_RV(P11->C_Digest(h, msg, n, out, &len), CKR_OK))
      CHECK(len == 32 && memcmp(out, want, 32) == 0, "C_Digest after a size query is wrong");
  }
  kvpt_close(h);
}

static CK_MECHANISM sign_mech(const kvpt_cert *c)
{
  CK_MECHANISM m = {c->is_rsa ? CKM_SHA256_RSA_PKCS : CKM_ECDSA_SHA256, NULL, 0};
  return m;
}

static void test_sign_mixing(void)
{
  CK_SESSION_HANDLE h = kvpt_open(false);
  unsigned char sig[1024];
  CK_ULONG len;

  for (size_t i = 0; i < KVPT_NCERTS; i++) {
    const kvpt_cert *c = &KVPT_CERTS[i];
    if (!c->is_private || c->priv == CK_INVALID_HANDLE || c->pkey == NULL)
      continue;
    CK_MECHANISM m = sign_mech(c);
    /* Update, then single-part: used to sign part1 || part2 */
    if (CHECK_RV(P11->C_SignInit(h, &m, c->priv), CKR_OK)) {
      CHECK_RV(P11->C_SignUpdate(h, (CK_BYTE_PTR)part1, sizeof part1 - 1), CKR_OK);
      len = sizeof sig;
      CHECK_RV(P11->C_Sign(h, (CK_BYTE_PTR)part2, sizeof part2 - 1, sig, &len),
               CKR_OPERATION_ACTIVE);
      len = sizeof sig;
      CHECK_RV(P11->C_SignFinal(h, sig, &len), CKR_OPERATION_NOT_INITIALIZED);
    }
    /* single-part size query, then Final: used to sign the empty message */
    if (CHECK_RV(P11->C_SignInit(h, &m, c->priv), CKR_OK)) {
      len = 0;
      CHECK_RV(P11->C_Sign(h, (CK_BYTE_PTR)part1, sizeof part1 - 1, NULL, &len), CKR_OK);
      len = sizeof sig;
      CHECK_RV(P11->C_SignFinal(h, sig, &len), CKR_OPERATION_ACTIVE);
      len = sizeof sig;
      CHECK_RV(P11->C_Sign(h, (CK_BYTE_PTR)part1, sizeof part1 - 1, sig, &len),
               CKR_OPERATION_NOT_INITIALIZED);
    }
    /* CKR_BUFFER_TOO_SMALL from C_Sign keeps a single-part operation: C_SignFinal is refused */
    if (CHECK_RV(P11->C_SignInit(h, &m, c->priv), CKR_OK)) {
      len = 1;
      CHECK_RV(P11->C_Sign(h, (CK_BYTE_PTR)part1, sizeof part1 - 1, sig, &len),
               CKR_BUFFER_TOO_SMALL);
      len = sizeof sig;
      CHECK_RV(P11->C_SignFinal(h, sig, &len), CKR_OPERATION_ACTIVE);
    }
  }
  kvpt_close(h);
}

static void test_verify_mixing(void)
{
  CK_SESSION_HANDLE h = kvpt_open(false);
  unsigned char msg[128], sig[1024];
  size_t n = whole(msg);

  for (size_t i = 0; i < KVPT_NCERTS; i++) {
    const kvpt_cert *c = &KVPT_CERTS[i];
    if (!c->is_private || c->priv == CK_INVALID_HANDLE || c->pub == CK_INVALID_HANDLE)
      continue;
    CK_MECHANISM m = sign_mech(c);
    CK_ULONG len = sizeof sig;
    /* a valid signature of part1 || part2, made in one part */
    if (!CHECK_RV(P11->C_SignInit(h, &m, c->priv), CKR_OK) ||
        !CHECK_RV(P11->C_Sign(h, msg, n, sig, &len), CKR_OK))
      continue;
    /* Update(part1), then C_Verify(part2, sig): used to verify part1 || part2 as valid */
    if (CHECK_RV(P11->C_VerifyInit(h, &m, c->pub), CKR_OK)) {
      CHECK_RV(P11->C_VerifyUpdate(h, (CK_BYTE_PTR)part1, sizeof part1 - 1), CKR_OK);
      CHECK_RV(P11->C_Verify(h, (CK_BYTE_PTR)part2, sizeof part2 - 1, sig, len),
               CKR_OPERATION_ACTIVE);
      CHECK_RV(P11->C_VerifyFinal(h, sig, len), CKR_OPERATION_NOT_INITIALIZED);
    }
    /* the same signature still verifies in one part and in two */
    if (CHECK_RV(P11->C_VerifyInit(h, &m, c->pub), CKR_OK))
      CHECK_RV(P11->C_Verify(h, msg, n, sig, len), CKR_OK);
    if (CHECK_RV(P11->C_VerifyInit(h, &m, c->pub), CKR_OK)) {
      CHECK_RV(P11->C_VerifyUpdate(h, (CK_BYTE_PTR)part1, sizeof part1 - 1), CKR_OK);
      CHECK_RV(P11->C_VerifyUpdate(h, (CK_BYTE_PTR)part2, sizeof part2 - 1), CKR_OK);
      CHECK_RV(P11->C_VerifyFinal(h, sig, len), CKR_OK);
    }
  }
  kvpt_close(h);
}

static void test_crypt_mixing(void)
{
  CK_SESSION_HANDLE h = kvpt_open(false);
  const kvpt_cert *c = kvpt_first_rsa(0);
  CK_MECHANISM m = {CKM_RSA_PKCS, NULL, 0};
  unsigned char ct[1024], pt[1024];
  CK_ULONG len, ct_len = sizeof ct;

  if (c == NULL || c->pub == CK_INVALID_HANDLE || c->priv == CK_INVALID_HANDLE) {
    kvpt_close(h);
    return; /* no RSA key on this token */
  }
  /* encrypt: Update, then single-part */
  if (CHECK_RV(P11->C_EncryptInit(h, &m, c->pub), CKR_OK)) {
    len = sizeof ct;
    CHECK_RV(P11->C_EncryptUpdate(h, (CK_BYTE_PTR)part1, sizeof part1 - 1, ct, &len), CKR_OK);
    len = sizeof ct;
    CHECK_RV(P11->C_Encrypt(h, (CK_BYTE_PTR)part2, sizeof part2 - 1, ct, &len),
             CKR_OPERATION_ACTIVE);
    len = sizeof ct;
    CHECK_RV(P11->C_EncryptFinal(h, ct, &len), CKR_OPERATION_NOT_INITIALIZED);
  }
  /* encrypt: single-part size query, then Final */
  if (CHECK_RV(P11->C_EncryptInit(h, &m, c->pub), CKR_OK)) {
    len = 0;
    CHECK_RV(P11->C_Encrypt(h, (CK_BYTE_PTR)part1, sizeof part1 - 1, NULL, &len), CKR_OK);
    len = sizeof ct;
    CHECK_RV(P11->C_EncryptFinal(h, ct, &len), CKR_OPERATION_ACTIVE);
  }
  /* a ciphertext to decrypt */
  if (!CHECK_RV(P11->C_EncryptInit(h, &m, c->pub), CKR_OK) ||
      !CHECK_RV(P11->C_Encrypt(h, (CK_BYTE_PTR)part1, sizeof part1 - 1, ct, &ct_len), CKR_OK)) {
    kvpt_close(h);
    return;
  }
  /* decrypt: Update, then single-part */
  if (CHECK_RV(P11->C_DecryptInit(h, &m, c->priv), CKR_OK)) {
    len = sizeof pt;
    CHECK_RV(P11->C_DecryptUpdate(h, ct, ct_len, pt, &len), CKR_OK);
    len = sizeof pt;
    CHECK_RV(P11->C_Decrypt(h, ct, ct_len, pt, &len), CKR_OPERATION_ACTIVE);
    len = sizeof pt;
    CHECK_RV(P11->C_DecryptFinal(h, pt, &len), CKR_OPERATION_NOT_INITIALIZED);
  }
  /* decrypt: single-part size query, then Final */
  if (CHECK_RV(P11->C_DecryptInit(h, &m, c->priv), CKR_OK)) {
    len = 0;
    CHECK_RV(P11->C_Decrypt(h, ct, ct_len, NULL, &len), CKR_OK);
    len = sizeof pt;
    CHECK_RV(P11->C_DecryptFinal(h, pt, &len), CKR_OPERATION_ACTIVE);
  }
  /* and a plain decryption still works */
  if (CHECK_RV(P11->C_DecryptInit(h, &m, c->priv), CKR_OK)) {
    len = sizeof pt;
    if (CHECK_RV(P11->C_Decrypt(h, ct, ct_len, pt, &len), CKR_OK))
      CHECK(len == sizeof part1 - 1 && memcmp(pt, part1, len) == 0, "wrong plaintext");
  }
  kvpt_close(h);
}

void kvpt_add_mixing_tests(void)
{
  static const kvpt_test tests[] = {
      {"digest single/multi-part mixing", test_digest_mixing},
      {"sign single/multi-part mixing", test_sign_mixing},
      {"verify single/multi-part mixing", test_verify_mixing},
      {"encrypt and decrypt single/multi-part mixing", test_crypt_mixing},
  };
  kvpt_add_suite("mixing", kvpt_suite_init, kvpt_suite_cleanup, tests, KVPT_ARRAY_LEN(tests));
}
