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
 *
 * Table-driven: each case is a list of calls with the answer each must give (CASES), run for
 * the operations that table names (OP_CASES); one dispatcher (call) reaches the five operations'
 * PKCS#11 functions.
 */
#include <stdio.h>
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

typedef enum { OP_DIGEST, OP_SIGN, OP_VERIFY, OP_ENCRYPT, OP_DECRYPT, OP_N } mix_op;
typedef enum { CALL_INIT, CALL_UPDATE, CALL_SINGLE, CALL_FINAL } mix_call;
/* The input of a call: the first part (decrypt: the ciphertext), the second part (decrypt: the
 * ciphertext), the first byte of the first part, the whole message. */
typedef enum { IN_NONE, IN_PART1, IN_PART2, IN_BYTE, IN_WHOLE } mix_in;
/* The output: a buffer large enough, a size query (NULL, length 0), a 1-byte buffer. */
typedef enum { OUT_BUF, OUT_QUERY, OUT_SMALL } mix_out;

/* C_<operation><call>: C_DigestInit, C_Sign, C_VerifyFinal... */
static const char *const OP_NAME[OP_N] = {"Digest", "Sign", "Verify", "Encrypt", "Decrypt"};
static const char *const CALL_NAME[] = {"Init", "Update", "", "Final"};

/* One call and the answer it must give. A failed init ends the case (nothing to mix); with
 * want_len, the output length is checked; with check_out, the output of a call that answered
 * as it must is compared with the context's expected result. */
typedef struct {
  mix_call call;
  mix_in in;
  mix_out out;
  CK_RV want;
  CK_ULONG want_len;
  bool check_out;
} mix_step;

typedef struct {
  const char *what;
  const mix_step *steps;
  size_t n;
} mix_case;

#define STEPS(...)                                                                                 \
  (const mix_step[]){__VA_ARGS__}, sizeof((const mix_step[]){__VA_ARGS__}) / sizeof(mix_step)
/* clang-format off */
/* A call (CALL_x) with input IN_x and output OUT_x that must answer want ... */
#define STEP(call, in, out, want) {CALL_##call, IN_##in, OUT_##out, want, 0, false}
/* ... and give an output of len bytes */
#define STEP_LEN(call, in, out, want, len) {CALL_##call, IN_##in, OUT_##out, want, len, false}
/* ... and, when it answers want, the expected result */
#define STEP_RESULT(call, in, out, want) {CALL_##call, IN_##in, OUT_##out, want, 0, true}
/* clang-format on */
#define INIT STEP(INIT, NONE, BUF, CKR_OK)
#define ACTIVE CKR_OPERATION_ACTIVE
#define ENDED CKR_OPERATION_NOT_INITIALIZED

enum {
  UPDATE_THEN_SINGLE,
  FINAL_QUERY_THEN_SINGLE,
  SINGLE_QUERY_THEN_FINAL,
  SINGLE_QUERY_THEN_FINAL_ONLY,
  TOO_SMALL_KEEPS_SINGLE,
  PLAIN_DIGEST,
  PLAIN_VERIFY,
  PLAIN_VERIFY_PARTS,
  PLAIN_DECRYPT,
  CASE_N
};

/* clang-format off */
static const mix_case CASES[CASE_N] = {
    /* sign used to sign part1 || part2 here, verify to verify it */
    [UPDATE_THEN_SINGLE] = {"Update, then single-part", STEPS(INIT,
        STEP(UPDATE, PART1, BUF, CKR_OK),
        STEP(SINGLE, PART2, BUF, ACTIVE),
        STEP(FINAL, NONE, BUF, ENDED))},
    [FINAL_QUERY_THEN_SINGLE] = {"Update, Final size query, then single-part", STEPS(INIT,
        STEP(UPDATE, BYTE, BUF, CKR_OK),
        STEP_LEN(FINAL, NONE, QUERY, CKR_OK, 32),
        STEP(SINGLE, PART2, BUF, ACTIVE),
        STEP(FINAL, NONE, BUF, ENDED))},
    /* used to give the digest / signature of the empty message; the refused Final ended the
     * operation */
    [SINGLE_QUERY_THEN_FINAL] = {"single-part size query, then Final", STEPS(INIT,
        STEP(SINGLE, PART1, QUERY, CKR_OK),
        STEP(FINAL, NONE, BUF, ACTIVE),
        STEP(SINGLE, PART1, BUF, ENDED))},
    /* the same without the last call (encrypt, decrypt) */
    [SINGLE_QUERY_THEN_FINAL_ONLY] = {"single-part size query, then Final", STEPS(INIT,
        STEP(SINGLE, PART1, QUERY, CKR_OK),
        STEP(FINAL, NONE, BUF, ACTIVE))},
    /* CKR_BUFFER_TOO_SMALL from the single-part call keeps a single-part operation */
    [TOO_SMALL_KEEPS_SINGLE] = {"CKR_BUFFER_TOO_SMALL, then Final", STEPS(INIT,
        STEP(SINGLE, PART1, SMALL, CKR_BUFFER_TOO_SMALL),
        STEP(FINAL, NONE, BUF, ACTIVE))},
    /* the rule does not get in the way of a plain digest after a size query */
    [PLAIN_DIGEST] = {"size query, then single-part", STEPS(INIT,
        STEP(SINGLE, WHOLE, QUERY, CKR_OK),
        STEP_RESULT(SINGLE, WHOLE, BUF, CKR_OK))},
    /* the same signature still verifies in one part ... */
    [PLAIN_VERIFY] = {"single-part", STEPS(INIT,
        STEP(SINGLE, WHOLE, BUF, CKR_OK))},
    /* ... and in two */
    [PLAIN_VERIFY_PARTS] = {"two Updates, then Final", STEPS(INIT,
        STEP(UPDATE, PART1, BUF, CKR_OK),
        STEP(UPDATE, PART2, BUF, CKR_OK),
        STEP(FINAL, NONE, BUF, CKR_OK))},
    /* and a plain decryption still works */
    [PLAIN_DECRYPT] = {"single-part", STEPS(INIT,
        STEP_RESULT(SINGLE, PART1, BUF, CKR_OK))},
};
/* clang-format on */

/* The cases of each operation, in order; -1 ends a row. */
static const int OP_CASES[OP_N][5] = {
    [OP_DIGEST] = {UPDATE_THEN_SINGLE, FINAL_QUERY_THEN_SINGLE, SINGLE_QUERY_THEN_FINAL,
                   PLAIN_DIGEST, -1},
    [OP_SIGN] = {UPDATE_THEN_SINGLE, SINGLE_QUERY_THEN_FINAL, TOO_SMALL_KEEPS_SINGLE, -1},
    [OP_VERIFY] = {UPDATE_THEN_SINGLE, PLAIN_VERIFY, PLAIN_VERIFY_PARTS, -1},
    [OP_ENCRYPT] = {UPDATE_THEN_SINGLE, SINGLE_QUERY_THEN_FINAL_ONLY, -1},
    [OP_DECRYPT] = {UPDATE_THEN_SINGLE, SINGLE_QUERY_THEN_FINAL_ONLY, PLAIN_DECRYPT, -1},
};

/* One operation on one key: the session, mechanism and key; decrypt's ciphertext (both of its
 * "parts"), verify's signature; the result a checked call must give. */
typedef struct {
  mix_op op;
  const char *test; /* the test function, for the failure messages */
  CK_SESSION_HANDLE h;
  CK_MECHANISM m;
  CK_OBJECT_HANDLE key;
  const unsigned char *ct;
  CK_ULONG ct_len;
  const unsigned char *sig;
  CK_ULONG sig_len;
  const unsigned char *want;
  CK_ULONG want_len;
} mix_ctx;

/* The operation's PKCS#11 function for call. out/out_len: the output (verify: unused, the
 * signature is the context's). */
static CK_RV call(const mix_ctx *c, mix_call what, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR out,
                  CK_ULONG_PTR out_len)
{
  CK_SESSION_HANDLE h = c->h;
  CK_MECHANISM m = c->m;
  CK_BYTE_PTR sig = (CK_BYTE_PTR)c->sig;
  /* clang-format off */
  switch (c->op * 4 + what) {
  case OP_DIGEST * 4 + CALL_INIT:    return P11->C_DigestInit(h, &m);
  case OP_DIGEST * 4 + CALL_UPDATE:  return P11->C_DigestUpdate(h, in, in_len);
  case OP_DIGEST * 4 + CALL_SINGLE:  return P11->C_Digest(h, in, in_len, out, out_len);
  case OP_DIGEST * 4 + CALL_FINAL:   return P11->C_DigestFinal(h, out, out_len);
  case OP_SIGN * 4 + CALL_INIT:      return P11->C_SignInit(h, &m, c->key);
  case OP_SIGN * 4 + CALL_UPDATE:    return P11->C_SignUpdate(h, in, in_len);
  case OP_SIGN * 4 + CALL_SINGLE:    return P11->C_Sign(h, in, in_len, out, out_len);
  case OP_SIGN * 4 + CALL_FINAL:     return P11->C_SignFinal(h, out, out_len);
  case OP_VERIFY * 4 + CALL_INIT:    return P11->C_VerifyInit(h, &m, c->key);
  case OP_VERIFY * 4 + CALL_UPDATE:  return P11->C_VerifyUpdate(h, in, in_len);
  case OP_VERIFY * 4 + CALL_SINGLE:  return P11->C_Verify(h, in, in_len, sig, c->sig_len);
  case OP_VERIFY * 4 + CALL_FINAL:   return P11->C_VerifyFinal(h, sig, c->sig_len);
  case OP_ENCRYPT * 4 + CALL_INIT:   return P11->C_EncryptInit(h, &m, c->key);
  case OP_ENCRYPT * 4 + CALL_UPDATE: return P11->C_EncryptUpdate(h, in, in_len, out, out_len);
  case OP_ENCRYPT * 4 + CALL_SINGLE: return P11->C_Encrypt(h, in, in_len, out, out_len);
  case OP_ENCRYPT * 4 + CALL_FINAL:  return P11->C_EncryptFinal(h, out, out_len);
  case OP_DECRYPT * 4 + CALL_INIT:   return P11->C_DecryptInit(h, &m, c->key);
  case OP_DECRYPT * 4 + CALL_UPDATE: return P11->C_DecryptUpdate(h, in, in_len, out, out_len);
  case OP_DECRYPT * 4 + CALL_SINGLE: return P11->C_Decrypt(h, in, in_len, out, out_len);
  default:                           return P11->C_DecryptFinal(h, out, out_len);
  }
  /* clang-format on */
}

/* The bytes of input in for c; their length into *len. */
static CK_BYTE_PTR input(const mix_ctx *c, mix_in in, unsigned char *msg, CK_ULONG *len)
{
  if (c->op == OP_DECRYPT && (in == IN_PART1 || in == IN_PART2)) {
    *len = c->ct_len;
    return (CK_BYTE_PTR)c->ct;
  }
  /* clang-format off */
  switch (in) {
  case IN_PART1: *len = sizeof part1 - 1; return (CK_BYTE_PTR)part1;
  case IN_PART2: *len = sizeof part2 - 1; return (CK_BYTE_PTR)part2;
  case IN_BYTE:  *len = 1;                return (CK_BYTE_PTR)part1;
  case IN_WHOLE: *len = (CK_ULONG)whole(msg); return msg;
  default:       *len = 0;                return NULL;
  }
  /* clang-format on */
}

static void run_case(const mix_ctx *c, const mix_case *k)
{
  unsigned char msg[128], out[1024];
  char expr[160];

  for (size_t i = 0; i < k->n; i++) {
    const mix_step *s = &k->steps[i];
    CK_ULONG in_len, len = s->out == OUT_QUERY ? 0 : s->out == OUT_SMALL ? 1 : sizeof out;
    CK_BYTE_PTR in = input(c, s->in, msg, &in_len);
    CK_RV rv = call(c, s->call, in, in_len, s->out == OUT_QUERY ? NULL : out, &len);
    snprintf(expr, sizeof expr, "%s: call %zu, C_%s%s", k->what, i + 1, OP_NAME[c->op],
             CALL_NAME[s->call]);
    bool ok = kvpt_check_rv(rv, s->want, expr, __LINE__, __FILE__, c->test);
    if (!ok && s->call == CALL_INIT)
      return;
    if (s->want_len != 0)
      CHECK(len == s->want_len, "%s size query gave %lu, expected %lu", expr, (unsigned long)len,
            (unsigned long)s->want_len);
    if (ok && s->check_out)
      CHECK(len == c->want_len && memcmp(out, c->want, len) == 0, "%s: wrong result", expr);
  }
}

static void run_cases(const mix_ctx *c)
{
  for (const int *k = OP_CASES[c->op]; *k >= 0; k++)
    run_case(c, &CASES[*k]);
}

static void test_digest_mixing(void)
{
  unsigned char msg[128], want[64];
  mix_ctx c = {
      .op = OP_DIGEST, .test = __func__, .h = kvpt_open(false), .m = {CKM_SHA256, NULL, 0}};

  kvpt_hash(EVP_sha256(), msg, whole(msg), want);
  c.want = want;
  c.want_len = 32;
  run_cases(&c);
  kvpt_close(c.h);
}

static CK_MECHANISM sign_mech(const kvpt_cert *c)
{
  CK_MECHANISM m = {c->is_rsa ? CKM_SHA256_RSA_PKCS : CKM_ECDSA_SHA256, NULL, 0};
  return m;
}

static void test_sign_mixing(void)
{
  mix_ctx c = {.op = OP_SIGN, .test = __func__, .h = kvpt_open(false)};

  for (size_t i = 0; i < KVPT_NCERTS; i++) {
    const kvpt_cert *k = &KVPT_CERTS[i];
    if (!k->is_private || k->priv == CK_INVALID_HANDLE || k->pkey == NULL)
      continue;
    c.m = sign_mech(k);
    c.key = k->priv;
    run_cases(&c);
  }
  kvpt_close(c.h);
}

static void test_verify_mixing(void)
{
  unsigned char msg[128], sig[1024];
  size_t n = whole(msg);
  mix_ctx c = {.op = OP_VERIFY, .test = __func__, .h = kvpt_open(false), .sig = sig};

  for (size_t i = 0; i < KVPT_NCERTS; i++) {
    const kvpt_cert *k = &KVPT_CERTS[i];
    if (!k->is_private || k->priv == CK_INVALID_HANDLE || k->pub == CK_INVALID_HANDLE)
      continue;
    CK_MECHANISM m = sign_mech(k);
    CK_ULONG len = sizeof sig;
    /* a valid signature of part1 || part2, made in one part */
    if (!CHECK_RV(P11->C_SignInit(c.h, &m, k->priv), CKR_OK) ||
        !CHECK_RV(P11->C_Sign(c.h, msg, n, sig, &len), CKR_OK))
      continue;
    c.m = m;
    c.key = k->pub;
    c.sig_len = len;
    run_cases(&c);
  }
  kvpt_close(c.h);
}

static void test_crypt_mixing(void)
{
  const kvpt_cert *k = kvpt_first_rsa(0);
  unsigned char ct[1024];
  CK_ULONG ct_len = sizeof ct;
  mix_ctx c = {
      .op = OP_ENCRYPT, .test = __func__, .h = kvpt_open(false), .m = {CKM_RSA_PKCS, NULL, 0}};

  if (k == NULL || k->pub == CK_INVALID_HANDLE || k->priv == CK_INVALID_HANDLE) {
    kvpt_close(c.h);
    return; /* no RSA key on this token */
  }
  c.key = k->pub;
  run_cases(&c);
  /* a ciphertext to decrypt */
  if (!CHECK_RV(P11->C_EncryptInit(c.h, &c.m, k->pub), CKR_OK) ||
      !CHECK_RV(P11->C_Encrypt(c.h, (CK_BYTE_PTR)part1, sizeof part1 - 1, ct, &ct_len), CKR_OK)) {
    kvpt_close(c.h);
    return;
  }
  c.op = OP_DECRYPT;
  c.key = k->priv;
  c.ct = ct;
  c.ct_len = ct_len;
  c.want = part1;
  c.want_len = sizeof part1 - 1;
  run_cases(&c);
  kvpt_close(c.h);
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
