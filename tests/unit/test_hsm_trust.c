/*
 * The HSM backend's trust rules (issues 10 and 18), against SoftHSM2 seen
 * through the counting shim module (p11shim.h):
 *  - a refused configured PIN is tried once, not once per operation, and
 *    again only after the PIN file changed; token PIN flags stop automatic
 *    logins; sign never answers CKR_PIN_*;
 *  - a second pass-through login is checked against the PIN that logged the
 *    token in, without sending a wrong PIN to the HSM;
 *  - key identity: ambiguous labels, a private key swapped in the HSM, an
 *    RSA pair whose halves differ;
 *  - the caller's OpenSSL error queue is left as found;
 *  - sessions: the token's session limit, stale sessions (one retry, a gone
 *    handle never closed), a failed initialization costs one attempt;
 *  - key generation leaves the public usage attributes to the HSM.
 * Every signature is verified with OpenSSL. Exits 77 without SoftHSM2.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CUnit/Basic.h>
#include <CUnit/CUnit.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "backend/backend.h"
#include "core/config.h"
#include "core/status.h"
#include "hsm_fixture.h"
#include "p11shim.h"
#include "unit_util.h"

#define TOK_PIN "kvp-trust-pin"   /* configured-PIN tests */
#define TOK_PASS "kvp-trust-pass" /* pass-through PIN */
#define TOK_KEYS "kvp-trust-keys" /* keys and sessions */
#define PIN HSM_PIN

static char g_shim[1024];
static char g_pin_var[1100];
static kvp11_shim_ctl *g_ctl;
static CK_FUNCTION_LIST_PTR g_fl; /* the shim's function list (same SoftHSM2 state) */

/* ---------- fixture (hsm_fixture.h) ---------- */

static int keygen(const char *token, const char *label, const char *id, const char *type) {
  return hsm_keygen(token, label, id, type, 1);
}

static int make_keys(void) {
  snprintf(g_pin_var, sizeof(g_pin_var), "%s/var.pin", hsm_dir);
  if (keygen(TOK_PIN, "ec", "02", "EC:prime256v1") != 0 ||
      keygen(TOK_PASS, "ec", "02", "EC:prime256v1") != 0 ||
      keygen(TOK_KEYS, "ec", "02", "EC:prime256v1") != 0 ||
      keygen(TOK_KEYS, "rsa", "01", "rsa:2048") != 0)
    return -1;
  return 0;
}

static kvp_backend *shim_backend(const char *name, const char *token, const char *pin_file) {
  kvp_hsm_conf c = hsm_conf(name, g_shim, token, pin_file);
  kvp_backend *be = NULL;
  CU_ASSERT_EQUAL_FATAL(kvp_hsm_backend_new(&c, &be), CKR_OK);
  return be;
}

static CK_SLOT_ID slot_of(const char *token) {
  return hsm_slot_of(g_fl, token);
}

static int reason_has(const char *s) {
  const char *r = kvp_status_reason();
  return r != NULL && strstr(r, s) != NULL;
}

/* ---------- signatures ---------- */

/* r||s (PKCS#11) checked with OpenSSL alone. */
static int ecdsa_ok(EVP_PKEY *pub, const unsigned char *dig, const unsigned char *sig,
                    CK_ULONG sl) {
  ECDSA_SIG *es = ECDSA_SIG_new();
  BIGNUM *r = BN_bin2bn(sig, (int)(sl / 2), NULL), *s = BN_bin2bn(sig + sl / 2, (int)(sl / 2), NULL);
  unsigned char *der = NULL;
  int ok = 0, len;
  EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(pub, NULL);
  if (es == NULL || r == NULL || s == NULL || !ECDSA_SIG_set0(es, r, s)) {
    BN_free(r);
    BN_free(s);
  } else if ((len = i2d_ECDSA_SIG(es, &der)) > 0 && ctx != NULL &&
             EVP_PKEY_verify_init(ctx) == 1) {
    ok = EVP_PKEY_verify(ctx, der, (size_t)len, dig, 32) == 1;
  }
  EVP_PKEY_CTX_free(ctx);
  OPENSSL_free(der);
  ECDSA_SIG_free(es);
  ERR_clear_error();
  return ok;
}

/* One ECDSA signature with key k, verified; returns the backend's CK_RV. */
static CK_RV sign_ec(kvp_backend *be, kvp_key *k) {
  unsigned char dig[32], sig[132];
  CK_ULONG sl = sizeof(sig);
  kvp_sig_alg alg = {KVP_SIG_ECDSA, KVP_HASH_SHA256, KVP_HASH_NONE, 0};
  CU_ASSERT_FATAL(RAND_bytes(dig, 32) == 1);
  kvp_status_clear();
  CK_RV rv = be->ops->sign(be, k, &alg, dig, 32, sig, &sl);
  if (rv == CKR_OK)
    CU_ASSERT_EQUAL(ecdsa_ok(k->pub, dig, sig, sl), 1);
  return rv;
}

/* ---------- configured PIN ---------- */

/* A wrong pin_file: one C_Login, then none until the file changes. */
static void test_wrong_pin_file(void) {
  kvp_key *k = NULL;
  /* the right PIN has another size: the file's mtime may not move within a clock tick */
  CU_ASSERT_EQUAL_FATAL(hsm_write_file(g_pin_var, "999999\n"), 0);
  kvp_backend *be = shim_backend("wrongpin", TOK_PIN, g_pin_var);
  long l0 = g_ctl->logins;
  for (int i = 0; i < 5; i++) {
    kvp_status_clear();
    CU_ASSERT_EQUAL(be->ops->open_key(be, "ec", &k), CKR_DEVICE_ERROR);
    CU_ASSERT(reason_has("refused"));
  }
  CU_ASSERT_EQUAL(g_ctl->logins - l0, 1);
  /* the admin fixes the file: works without a restart */
  CU_ASSERT_EQUAL_FATAL(hsm_write_file(g_pin_var, PIN "\n"), 0);
  CU_ASSERT_EQUAL_FATAL(be->ops->open_key(be, "ec", &k), CKR_OK);
  CU_ASSERT_EQUAL(sign_ec(be, k), CKR_OK);
  CU_ASSERT_EQUAL(g_ctl->logins - l0, 2);
  be->ops->close_key(be, k);
  be->ops->destroy(be, 0);
}

/* The token forgets the login and the PIN file turned wrong: five signs, one
 * attempt, never a CKR_PIN_* code from sign. */
static void test_wrong_pin_on_relogin(void) {
  kvp_key *k = NULL;
  CU_ASSERT_EQUAL_FATAL(hsm_write_file(g_pin_var, PIN "\n"), 0);
  kvp_backend *be = shim_backend("relogin", TOK_PIN, g_pin_var);
  CU_ASSERT_EQUAL_FATAL(be->ops->open_key(be, "ec", &k), CKR_OK);
  CU_ASSERT_EQUAL(sign_ec(be, k), CKR_OK);
  CU_ASSERT_EQUAL_FATAL(hsm_write_file(g_pin_var, "99999\n"), 0);
  CU_ASSERT_EQUAL_FATAL(g_fl->C_CloseAllSessions(slot_of(TOK_PIN)), CKR_OK);
  long l0 = g_ctl->logins;
  for (int i = 0; i < 5; i++) {
    CK_RV rv = sign_ec(be, k);
    CU_ASSERT(rv == CKR_DEVICE_ERROR || rv == CKR_USER_NOT_LOGGED_IN);
    CU_ASSERT(reason_has("PIN"));
  }
  CU_ASSERT_EQUAL(g_ctl->logins - l0, 1);
  CU_ASSERT_EQUAL_FATAL(hsm_write_file(g_pin_var, PIN "\n"), 0);
  CU_ASSERT_EQUAL(sign_ec(be, k), CKR_OK);
  CU_ASSERT_EQUAL(g_ctl->logins - l0, 2);
  be->ops->close_key(be, k);
  be->ops->destroy(be, 0);
}

/* CKF_USER_PIN_FINAL_TRY / CKF_USER_PIN_LOCKED: no automatic login at all. */
static void test_pin_flags(void) {
  const CK_FLAGS flags[] = {CKF_USER_PIN_FINAL_TRY, CKF_USER_PIN_LOCKED};
  const char *names[] = {"CKF_USER_PIN_FINAL_TRY", "CKF_USER_PIN_LOCKED"};
  for (int i = 0; i < 2; i++) {
    kvp_key *k = NULL;
    g_ctl->add_flags = flags[i];
    kvp_backend *be = shim_backend("flags", TOK_PIN, hsm_pinfile);
    long l0 = g_ctl->logins;
    for (int j = 0; j < 3; j++) {
      kvp_status_clear();
      CU_ASSERT_EQUAL(be->ops->open_key(be, "ec", &k), CKR_DEVICE_ERROR);
      CU_ASSERT(reason_has(names[i]));
    }
    CU_ASSERT_EQUAL(g_ctl->logins, l0);
    g_ctl->add_flags = 0;
    be->ops->destroy(be, 0);
  }
}

/* ---------- pass-through PIN ---------- */

static void test_second_login_checked(void) {
  kvp_backend *a = shim_backend("pass-a", TOK_PASS, NULL);
  kvp_backend *b = shim_backend("pass-b", TOK_PASS, NULL);
  kvp_key *k = NULL;
  CU_ASSERT_EQUAL(a->ops->login(a, (const CK_UTF8CHAR *)"0000", 4), CKR_PIN_INCORRECT);
  CU_ASSERT_EQUAL_FATAL(a->ops->login(a, (const CK_UTF8CHAR *)PIN, 4), CKR_OK);
  long l0 = g_ctl->logins;
  kvp_status_clear();
  /* the token is logged in: a wrong PIN is refused here, not sent to the HSM */
  CU_ASSERT_EQUAL(a->ops->login(a, (const CK_UTF8CHAR *)"0000", 4), CKR_PIN_INCORRECT);
  CU_ASSERT(reason_has("not sent"));
  CU_ASSERT_EQUAL(b->ops->login(b, (const CK_UTF8CHAR *)"000", 3), CKR_PIN_INCORRECT);
  CU_ASSERT_EQUAL(b->ops->login(b, (const CK_UTF8CHAR *)PIN, 4), CKR_OK);
  CU_ASSERT_EQUAL(a->ops->login(a, (const CK_UTF8CHAR *)PIN, 4), CKR_OK);
  CU_ASSERT_EQUAL(g_ctl->logins, l0);
  CU_ASSERT_EQUAL_FATAL(b->ops->open_key(b, "ec", &k), CKR_OK);
  CU_ASSERT_EQUAL(sign_ec(b, k), CKR_OK);
  b->ops->close_key(b, k);
  /* logged out: the next PIN goes to the HSM again */
  CU_ASSERT_EQUAL(a->ops->logout(a), CKR_OK);
  CU_ASSERT_EQUAL(a->ops->login(a, (const CK_UTF8CHAR *)"0000", 4), CKR_PIN_INCORRECT);
  CU_ASSERT_EQUAL(g_ctl->logins, l0 + 1);
  a->ops->destroy(a, 0);
  b->ops->destroy(b, 0);
}

/* ---------- key identity ---------- */

static void test_ambiguous_label(void) {
  kvp_backend *be = shim_backend("keys", TOK_KEYS, hsm_pinfile);
  kvp_key *k = NULL;
  CU_ASSERT_EQUAL_FATAL(keygen(TOK_KEYS, "twin", "21", "EC:prime256v1"), 0);
  CU_ASSERT_EQUAL_FATAL(keygen(TOK_KEYS, "twin", "22", "EC:prime256v1"), 0);
  kvp_status_clear();
  CU_ASSERT_EQUAL(be->ops->open_key(be, "twin", &k), CKR_KEY_HANDLE_INVALID);
  CU_ASSERT_PTR_NULL(k);
  CU_ASSERT(reason_has("ambiguous") && reason_has("CKA_ID 21") && reason_has("CKA_ID 22"));
  CU_ASSERT_EQUAL_FATAL(be->ops->open_key(be, "id:22", &k), CKR_OK);
  CU_ASSERT_EQUAL(sign_ec(be, k), CKR_OK);
  /* the registered certificate's public key picks one of the two */
  unsigned char *spki = NULL;
  int spki_len = i2d_PUBKEY(k->pub, &spki);
  CU_ASSERT_FATAL(spki_len > 0);
  kvp_key_ref_hint hint = {NULL, spki, (size_t)spki_len};
  kvp_key *picked = NULL;
  CU_ASSERT_EQUAL_FATAL(kvp_backend_open_key(be, "twin", &hint, &picked), CKR_OK);
  CU_ASSERT_EQUAL(EVP_PKEY_eq(picked->pub, k->pub), 1);
  CU_ASSERT_EQUAL(sign_ec(be, picked), CKR_OK);
  be->ops->close_key(be, picked);
  OPENSSL_free(spki);
  be->ops->close_key(be, k);
  /* a registered key that is neither of them: refused */
  EVP_PKEY *stranger = EVP_EC_gen("P-256");
  spki = NULL;
  spki_len = i2d_PUBKEY(stranger, &spki);
  hint.spki = spki;
  hint.spki_len = (size_t)spki_len;
  picked = NULL;
  kvp_status_clear();
  CU_ASSERT_EQUAL(kvp_backend_open_key(be, "twin", &hint, &picked), CKR_KEY_HANDLE_INVALID);
  CU_ASSERT_PTR_NULL(picked);
  CU_ASSERT(reason_has("none is the registered certificate's key"));
  OPENSSL_free(spki);
  EVP_PKEY_free(stranger);
  be->ops->destroy(be, 0);
}

/* An EC private key object with the given label and id (C_CreateObject). */
static int create_ec_private(const char *label, const unsigned char *id, size_t id_len) {
  static const CK_BYTE p256_oid[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
  EVP_PKEY *pk = EVP_EC_gen("P-256");
  unsigned char scalar[32];
  BIGNUM *d = NULL;
  if (pk == NULL || !EVP_PKEY_get_bn_param(pk, "priv", &d) || BN_bn2binpad(d, scalar, 32) != 32)
    return -1;
  BN_clear_free(d);
  EVP_PKEY_free(pk);
  CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
  CK_KEY_TYPE kt = CKK_EC;
  CK_BBOOL yes = CK_TRUE;
  CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)},
                      {CKA_KEY_TYPE, &kt, sizeof(kt)},
                      {CKA_TOKEN, &yes, sizeof(yes)},
                      {CKA_PRIVATE, &yes, sizeof(yes)},
                      {CKA_SIGN, &yes, sizeof(yes)},
                      {CKA_LABEL, (void *)label, (CK_ULONG)strlen(label)},
                      {CKA_ID, (void *)id, (CK_ULONG)id_len},
                      {CKA_EC_PARAMS, (void *)p256_oid, sizeof(p256_oid)},
                      {CKA_VALUE, scalar, sizeof(scalar)}};
  CK_SESSION_HANDLE s;
  CK_OBJECT_HANDLE h;
  int rc = -1;
  if (g_fl->C_OpenSession(slot_of(TOK_KEYS), CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL,
                          &s) != CKR_OK)
    return -1;
  (void)g_fl->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)PIN, 4); /* or logged in already */
  rc = g_fl->C_CreateObject(s, t, sizeof(t) / sizeof(t[0]), &h) == CKR_OK ? 0 : -1;
  OPENSSL_cleanse(scalar, sizeof(scalar));
  g_fl->C_CloseSession(s);
  return rc;
}

/* The private key is replaced in the HSM, the public object stays: the first
 * signature of the new object is checked and refused, never returned. */
static void test_swapped_private(void) {
  kvp_backend *be = shim_backend("keys", TOK_KEYS, hsm_pinfile);
  kvp_key *k = NULL, *k2 = NULL;
  const unsigned char id[] = {0x31};
  CU_ASSERT_EQUAL_FATAL(keygen(TOK_KEYS, "swap", "31", "EC:prime256v1"), 0);
  CU_ASSERT_EQUAL_FATAL(be->ops->open_key(be, "swap", &k), CKR_OK);
  CU_ASSERT_EQUAL(sign_ec(be, k), CKR_OK);
  CU_ASSERT_EQUAL_FATAL(hsm_delete(TOK_KEYS, "privkey", "swap"), 0);
  CU_ASSERT_EQUAL_FATAL(create_ec_private("swap", id, sizeof(id)), 0);
  for (int i = 0; i < 2; i++) {
    CU_ASSERT_EQUAL(sign_ec(be, k), CKR_DEVICE_ERROR);
    CU_ASSERT(reason_has("does not verify"));
  }
  CU_ASSERT_EQUAL_FATAL(be->ops->open_key(be, "swap", &k2), CKR_OK);
  CU_ASSERT_EQUAL(sign_ec(be, k2), CKR_DEVICE_ERROR);
  be->ops->close_key(be, k2);
  be->ops->close_key(be, k);
  be->ops->destroy(be, 0);
}

/* An RSA private object and a public object of another key under one label. */
static void test_rsa_pair_mismatch(void) {
  kvp_backend *be = shim_backend("keys", TOK_KEYS, hsm_pinfile);
  kvp_key *k = NULL;
  char der[1200];
  EVP_PKEY *other = EVP_RSA_gen(2048);
  CU_ASSERT_PTR_NOT_NULL_FATAL(other);
  snprintf(der, sizeof(der), "%s/other.pub.der", hsm_dir);
  FILE *f = fopen(der, "wb");
  CU_ASSERT_PTR_NOT_NULL_FATAL(f);
  CU_ASSERT_FATAL(i2d_PUBKEY_fp(f, other) == 1);
  fclose(f);
  EVP_PKEY_free(other);
  CU_ASSERT_EQUAL_FATAL(keygen(TOK_KEYS, "mix", "41", "rsa:2048"), 0);
  CU_ASSERT_FATAL(hsm_delete(TOK_KEYS, "pubkey", "mix") == 0 &&
                  unit_sh("pkcs11-tool --module '%s' --token-label " TOK_KEYS " --login --pin " PIN
                          " --write-object '%s' --type pubkey --label mix --id 41 >/dev/null 2>&1",
                          hsm_module, der));
  kvp_status_clear();
  CU_ASSERT_EQUAL(be->ops->open_key(be, "mix", &k), CKR_KEY_HANDLE_INVALID);
  CU_ASSERT(reason_has("not the key pair's"));
  be->ops->destroy(be, 0);
}

/* ---------- OpenSSL error queue ---------- */

static void test_error_queue(void) {
  kvp_key *k = NULL;
  unsigned char ct[256], out[256];
  size_t ct_len = sizeof(ct);
  CK_ULONG out_len = sizeof(out);
  kvp_dec_alg dec = {KVP_DEC_RSA_PKCS1, KVP_HASH_NONE, KVP_HASH_NONE};
  g_ctl->push_ossl_error = 1; /* every forwarded call leaves an error, as SoftHSM2's init does */
  kvp_backend *be = shim_backend("queue", TOK_KEYS, hsm_pinfile);
  kvp_backend *pass = shim_backend("queue-pass", TOK_PASS, NULL);
  ERR_clear_error();
  ERR_raise(ERR_LIB_USER, 42); /* the application's own error */
  CU_ASSERT_EQUAL(kvp_backend_open_key(be, "rsa", NULL, &k), CKR_OK);
  if (k != NULL) {
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(k->pub, NULL);
    CU_ASSERT(ctx != NULL && EVP_PKEY_encrypt_init(ctx) == 1 &&
              EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) == 1 &&
              EVP_PKEY_encrypt(ctx, ct, &ct_len, (const unsigned char *)"hello", 5) == 1);
    EVP_PKEY_CTX_free(ctx);
    CU_ASSERT_EQUAL(kvp_backend_decrypt(k, &dec, ct, (CK_ULONG)ct_len, out, &out_len), CKR_OK);
    CU_ASSERT(out_len == 5 && memcmp(out, "hello", 5) == 0);
    be->ops->close_key(be, k);
  }
  CU_ASSERT_EQUAL(kvp_backend_login(pass, (const CK_UTF8CHAR *)PIN, 4), CKR_OK);
  CU_ASSERT_EQUAL(kvp_backend_logout(pass), CKR_OK);
  unsigned long e = ERR_get_error();
  CU_ASSERT_EQUAL(ERR_GET_LIB(e), ERR_LIB_USER);
  CU_ASSERT_EQUAL(ERR_GET_REASON(e), 42);
  CU_ASSERT_EQUAL(ERR_get_error(), 0UL);
  g_ctl->push_ossl_error = 0;
  pass->ops->destroy(pass, 0);
  be->ops->destroy(be, 0);
  ERR_clear_error();
}

/* ---------- sessions ---------- */

typedef struct {
  kvp_backend *be;
  kvp_key *k;
  int ok;
} thr;

static void *signer(void *p) {
  thr *t = p;
  for (int i = 0; i < 25; i++) {
    unsigned char dig[32], sig[64];
    CK_ULONG sl = sizeof(sig);
    kvp_sig_alg alg = {KVP_SIG_ECDSA, KVP_HASH_SHA256, KVP_HASH_NONE, 0};
    if (RAND_bytes(dig, 32) != 1 ||
        t->be->ops->sign(t->be, t->k, &alg, dig, 32, sig, &sl) != CKR_OK ||
        !ecdsa_ok(t->k->pub, dig, sig, sl))
      return NULL;
    t->ok++;
  }
  return NULL;
}

/* The token allows 3 sessions: 8 threads share them, every signature verifies. */
static void test_session_limit(void) {
  g_ctl->max_sessions = 3;
  g_ctl->open_max = g_ctl->open_now;
  kvp_backend *be = shim_backend("limit", TOK_KEYS, hsm_pinfile);
  kvp_key *k = NULL;
  pthread_t t[8];
  thr a[8];
  CU_ASSERT_EQUAL_FATAL(be->ops->open_key(be, "ec", &k), CKR_OK);
  for (int i = 0; i < 8; i++) {
    a[i] = (thr){be, k, 0};
    CU_ASSERT_EQUAL_FATAL(pthread_create(&t[i], NULL, signer, &a[i]), 0);
  }
  for (int i = 0; i < 8; i++) {
    pthread_join(t[i], NULL);
    CU_ASSERT_EQUAL(a[i].ok, 25);
  }
  CU_ASSERT(g_ctl->open_max <= 3);
  be->ops->close_key(be, k);
  be->ops->destroy(be, 0);
  g_ctl->max_sessions = 0;
}

/* A session the HSM no longer knows, or whose operation state is lost: one
 * retry on a fresh session; a gone handle is never closed. */
static void test_stale_sessions(void) {
  kvp_backend *be = shim_backend("stale", TOK_KEYS, hsm_pinfile);
  kvp_key *k = NULL;
  CU_ASSERT_EQUAL_FATAL(be->ops->open_key(be, "ec", &k), CKR_OK);
  CU_ASSERT_EQUAL(sign_ec(be, k), CKR_OK);
  g_ctl->sign_fail_rv = CKR_OPERATION_NOT_INITIALIZED;
  g_ctl->sign_fail_count = 1;
  CU_ASSERT_EQUAL(sign_ec(be, k), CKR_OK);
  g_ctl->sign_fail_rv = CKR_SESSION_HANDLE_INVALID;
  g_ctl->sign_fail_count = 1;
  g_ctl->closed_stale = 0;
  CU_ASSERT_EQUAL(sign_ec(be, k), CKR_OK);
  CU_ASSERT_EQUAL(g_ctl->closed_stale, 0);
  /* twice in a row: one retry only, and a code C_Sign may return */
  g_ctl->sign_fail_rv = CKR_OPERATION_NOT_INITIALIZED;
  g_ctl->sign_fail_count = 2;
  CU_ASSERT_EQUAL(sign_ec(be, k), CKR_DEVICE_ERROR);
  CU_ASSERT_EQUAL(g_ctl->sign_fail_count, 0);
  g_ctl->sign_fail_count = 0;
  CU_ASSERT_EQUAL(sign_ec(be, k), CKR_OK);
  be->ops->close_key(be, k);
  be->ops->destroy(be, 0);
}

/* A forked child whose HSM refuses to initialize pays for one attempt, not one per call. */
static void test_child_init_once(void) {
  pid_t pid = fork();
  CU_ASSERT_FATAL(pid >= 0);
  if (pid == 0) {
    alarm(30);
    kvp_key *k = NULL;
    g_ctl->init_fail_rv = CKR_DEVICE_ERROR;
    long i0 = g_ctl->initializes;
    kvp_hsm_conf c = hsm_conf("child", g_shim, TOK_KEYS, hsm_pinfile);
    kvp_backend *be = NULL;
    if (kvp_hsm_backend_new(&c, &be) != CKR_OK)
      _exit(2);
    for (int i = 0; i < 5; i++)
      if (be->ops->open_key(be, "ec", &k) != CKR_DEVICE_ERROR)
        _exit(3);
    be->ops->destroy(be, 0);
    _exit(g_ctl->initializes - i0 == 1 ? 0 : 4);
  }
  int st = 0;
  CU_ASSERT_EQUAL_FATAL(waitpid(pid, &st, 0), pid);
  CU_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* ---------- key generation ---------- */

/* An HSM that refuses public usage attributes in a generation template
 * (tpm2-pkcs11): sign-only EC and RSA keys are still created. */
static void test_generate_sign_only(void) {
  kvp_backend *be = shim_backend("gen", TOK_KEYS, hsm_pinfile);
  kvp_key *k = NULL;
  kvp_key_spec ec = {.type = KVP_KEY_EC, .curve_nid = NID_X9_62_prime256v1};
  kvp_key_spec rsa = {.type = KVP_KEY_RSA, .bits = 2048, .ops = KVP_KEYOP_SIGN};
  g_ctl->refuse_pub_usage = 1;
  CU_ASSERT_EQUAL(be->ops->create_key(be, "gen-ec", &ec, &k), CKR_OK);
  if (k != NULL) {
    CU_ASSERT_EQUAL(sign_ec(be, k), CKR_OK);
    be->ops->close_key(be, k);
  }
  k = NULL;
  CU_ASSERT_EQUAL(be->ops->create_key(be, "gen-rsa", &rsa, &k), CKR_OK);
  if (k != NULL) {
    CU_ASSERT_EQUAL(k->can_sign, 1);
    CU_ASSERT_EQUAL(k->can_decrypt, 0);
    be->ops->close_key(be, k);
  }
  g_ctl->refuse_pub_usage = 0;
  be->ops->destroy(be, 0);
}

int main(void) {
  static CU_TestInfo tests[] = {
      {"wrong pin_file: one C_Login", test_wrong_pin_file},
      {"wrong PIN at a new login: one C_Login", test_wrong_pin_on_relogin},
      {"PIN counter flags stop logins", test_pin_flags},
      {"second login checked against the first PIN", test_second_login_checked},
      {"ambiguous label", test_ambiguous_label},
      {"private key swapped in the HSM", test_swapped_private},
      {"RSA pair of two keys", test_rsa_pair_mismatch},
      {"OpenSSL error queue left as found", test_error_queue},
      {"token session limit", test_session_limit},
      {"stale sessions", test_stale_sessions},
      {"forked child: one init attempt", test_child_init_once},
      {"sign-only key generation", test_generate_sign_only},
      CU_TEST_INFO_NULL,
  };
  static const char *const tokens[] = {TOK_PIN, TOK_PASS, TOK_KEYS, NULL};
  int rc = hsm_fixture_init("hsm_trust", tokens, 1);
  if (rc != 0)
    return rc;
  if (make_keys() != 0) {
    fprintf(stderr, "cannot create the SoftHSM2 test keys in %s\n", hsm_dir);
    return 1;
  }
  snprintf(g_shim, sizeof(g_shim), "%s", KVP11_TEST_P11SHIM);
  setenv("KVP11_SHIM_TARGET", hsm_module, 1);
  void *dl = NULL;
  g_fl = hsm_functions(g_shim, &dl);
  void *sym = dl ? dlsym(dl, "kvp11_shim") : NULL;
  kvp11_shim_fn ctl;
  memcpy(&ctl, &sym, sizeof(ctl)); /* object pointer -> function pointer, ISO C safe */
  if (ctl == NULL || g_fl == NULL) {
    fprintf(stderr, "cannot load the test module %s\n", g_shim);
    return 1;
  }
  g_ctl = ctl();
  alarm(300);

  return unit_run_suite("hsm_trust", NULL, NULL, tests);
}
