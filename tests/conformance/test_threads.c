/*
 * Threads: 8 threads, each with its own session, sign 20 times with the RSA-2048 and the P-256
 * key (or the first RSA / EC key when those sizes are absent); every signature verified with
 * OpenSSL. CUnit assertions are not thread-safe, so threads count and the main thread asserts.
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "common.h"

typedef struct worker {
  pthread_t tid;
  const kvpt_cert *keys[2];
  int iterations;
  int signed_ok;
  int verified;
  int bad_plaintexts;
  CK_RV first_error;
} worker;

static void *work(void *arg)
{
  worker *w = arg;
  static const unsigned char text[] = "kvp11 conformance: thread message";
  CK_SESSION_HANDLE h = CK_INVALID_HANDLE;
  CK_RV rv = P11->C_OpenSession(KVPT_SLOT, CKF_SERIAL_SESSION, NULL, NULL, &h);
  if (rv != CKR_OK) {
    w->first_error = rv;
    return NULL;
  }
  for (int i = 0; i < w->iterations; i++)
    for (size_t k = 0; k < 2; k++) {
      const kvpt_cert *c = w->keys[k];
      if (!c)
        continue;
      unsigned char input[sizeof text + 16], sig[1024];
      int len = snprintf((char *)input, sizeof input, "%s %d", text, i);
      CK_MECHANISM m = {c->is_rsa ? CKM_SHA256_RSA_PKCS : CKM_ECDSA_SHA256, NULL, 0};
      CK_ULONG slen = sizeof sig;
      rv = P11->C_SignInit(h, &m, c->priv);
      if (rv == CKR_OK)
        rv = P11->C_Sign(h, input, (CK_ULONG)len, sig, &slen);
      if (rv != CKR_OK) {
        if (w->first_error == CKR_OK)
          w->first_error = rv;
        continue;
      }
      w->signed_ok++;
      if (kvpt_verify_msg(c, c->is_rsa ? 'p' : 'e', EVP_sha256(), input, (size_t)len, sig, slen))
        w->verified++;
    }
  /* Decryptions in parallel with the other threads' signatures. */
  const kvpt_cert *r = w->keys[0];
  for (int i = 0; r && r->is_rsa && i < w->iterations / 4 + 1; i++) {
    unsigned char ct[1024], pt[1024], text2[32];
    memset(text2, 'a' + (i % 26), sizeof text2);
    size_t ctlen = kvpt_rsa_encrypt(r, 'p', NULL, text2, sizeof text2, ct, sizeof ct);
    CK_MECHANISM m = {CKM_RSA_PKCS, NULL, 0};
    CK_ULONG ptlen = sizeof pt;
    rv = ctlen ? P11->C_DecryptInit(h, &m, r->priv) : CKR_GENERAL_ERROR;
    if (rv == CKR_OK)
      rv = P11->C_Decrypt(h, ct, (CK_ULONG)ctlen, pt, &ptlen);
    if (rv == CKR_OK && (ptlen != sizeof text2 || memcmp(pt, text2, sizeof text2) != 0))
      w->bad_plaintexts++;
    if (rv != CKR_OK && w->first_error == CKR_OK)
      w->first_error = rv;
  }
  rv = P11->C_CloseSession(h);
  if (rv != CKR_OK && w->first_error == CKR_OK)
    w->first_error = rv;
  return NULL;
}

static void test_parallel_signing(void)
{
  enum { THREADS = 8 };
  worker w[THREADS];
  const kvpt_cert *rsa = kvpt_first_rsa(2048) ? kvpt_first_rsa(2048) : kvpt_first_rsa(0);
  const kvpt_cert *ec = kvpt_first_ec(256) ? kvpt_first_ec(256) : kvpt_first_ec(0);
  int nthreads = KVPT.quick ? 4 : THREADS, iterations = KVPT.quick ? 5 : 20;
  if (!CHECK(rsa || ec, "no private key"))
    return;
  int started = 0;
  for (int t = 0; t < nthreads; t++) {
    memset(&w[t], 0, sizeof w[t]);
    w[t].keys[0] = rsa;
    w[t].keys[1] = ec;
    w[t].iterations = iterations;
    if (!CHECK(pthread_create(&w[t].tid, NULL, work, &w[t]) == 0, "pthread_create failed"))
      break;
    started++;
  }
  int want = iterations * ((rsa != NULL) + (ec != NULL));
  for (int t = 0; t < started; t++) {
    pthread_join(w[t].tid, NULL);
    CHECK(w[t].first_error == CKR_OK, "thread %d: %s", t, kvpt_rv_name(w[t].first_error));
    CHECK(w[t].signed_ok == want, "thread %d: %d of %d signatures made", t, w[t].signed_ok, want);
    CHECK(w[t].bad_plaintexts == 0, "thread %d: %d decryptions gave a wrong plaintext", t,
          w[t].bad_plaintexts);
    CHECK(w[t].verified == w[t].signed_ok, "thread %d: %d of %d signatures verify", t,
          w[t].verified, w[t].signed_ok);
  }
}

/* Sessions opened and closed from many threads while others sign: no handle confusion. */
static void *churn(void *arg)
{
  int *bad = arg;
  for (int i = 0; i < 50; i++) {
    CK_SESSION_HANDLE h;
    CK_SESSION_INFO si;
    if (P11->C_OpenSession(KVPT_SLOT, CKF_SERIAL_SESSION, NULL, NULL, &h) != CKR_OK) {
      (*bad)++;
      continue;
    }
    if (P11->C_GetSessionInfo(h, &si) != CKR_OK || si.slotID != KVPT_SLOT)
      (*bad)++;
    if (P11->C_CloseSession(h) != CKR_OK)
      (*bad)++;
  }
  return NULL;
}

static void test_session_churn(void)
{
  enum { THREADS = 4 };
  pthread_t t[THREADS];
  int bad[THREADS] = {0};
  int started = 0;
  for (int i = 0; i < THREADS; i++) {
    if (pthread_create(&t[i], NULL, churn, &bad[i]) != 0)
      break;
    started++;
  }
  for (int i = 0; i < started; i++) {
    pthread_join(t[i], NULL);
    CHECK(bad[i] == 0, "thread %d: %d session calls failed", i, bad[i]);
  }
  CHECK(started == THREADS, "only %d threads started", started);
}

void kvpt_add_thread_tests(void)
{
  static const kvpt_test tests[] = {
      {"parallel signing and decryption", test_parallel_signing},
      {"session open/close from threads", test_session_churn},
  };
  kvpt_add_suite("threads", kvpt_suite_init, kvpt_suite_cleanup, tests, KVPT_ARRAY_LEN(tests));
}
