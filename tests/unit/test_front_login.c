/*
 * Login through the module when an HSM takes the application's PIN: the
 * token says CKF_LOGIN_REQUIRED, the private key is hidden until C_Login, a
 * wrong PIN is refused with the HSM's answer, signing works after login, and
 * once the last session closes a wrong PIN is refused again (the HSM login
 * does not outlive the token's).
 *
 * Two accounts on two SoftHSM2 tokens with different PINs, both passed
 * through (issue 10 item 1): a slot's PIN goes only to the HSM its keys use.
 * A wrong PIN on one slot gives no user functions there, the other slot's
 * right PIN keeps working, and one token's PIN never reaches the other token
 * (checked with the other token's CKF_USER_PIN_COUNT_LOW flag, which SoftHSM2
 * sets on a failed login and clears on a successful one). A second C_Login on
 * a logged-in slot is CKR_USER_ALREADY_LOGGED_IN with the right PIN and
 * CKR_PIN_INCORRECT with a wrong one (the HSM backend compares it with the
 * PIN that logged its session in).
 *
 * Makes its own SoftHSM2 tokens; exits 77 when SoftHSM2 or pkcs11-tool is
 * missing.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CUnit/Basic.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "core/cert.h"
#include "core/registry.h"
#include "core/util.h"
#include "pkcs11/internal.h"

#include "front_util.h"
#include "unit_util.h"

#define PIN "4321"
#define TOKEN "kvp11-login-test"
#define PIN_B "8765"
#define TOKEN_B "kvp11-login-b"

static char dir[512];
static const char *softhsm;
static CK_FUNCTION_LIST_PTR f;

/* A certificate for the token's public key (issued by a throwaway CA key). */
static int register_hsm_cert(const char *pubfile, const char *account, const char *key_ref)
{
  char path[600];
  FILE *fp;
  EVP_PKEY *pub;
  unsigned char *der = NULL;
  size_t len = 0;
  int ok;
  kvp_cert_rec rec;

  snprintf(path, sizeof(path), "%s/%s", dir, pubfile);
  fp = fopen(path, "rb");
  if (fp == NULL)
    return 0;
  pub = d2i_PUBKEY_fp(fp, NULL);
  fclose(fp);
  memset(&rec, 0, sizeof(rec));
  if (pub != NULL)
    der = front_cert(pub, "app", 7, NULL, &len);
  snprintf(path, sizeof(path), "%s/registry.db", dir);
  ok = der != NULL &&
       front_row(der, len, account, "app", KVP_CERT_PRIVATE, key_ref, &rec) == KVP_OK &&
       front_add_row(path, &rec);
  kvp_cert_rec_clear(&rec);
  OPENSSL_free(der);
  EVP_PKEY_free(pub);
  return ok;
}

/* A SoftHSM2 token with an RSA key "app"; its public key goes to dir/pubfile. */
static int make_token(const char *label, const char *pin, const char *pubfile)
{
  return unit_sh("softhsm2-util --init-token --free --label %s --pin %s --so-pin 12345678 "
                   ">/dev/null",
                   label, pin) &&
         unit_sh("pkcs11-tool --module '%s' --token-label %s --login --pin %s --keypairgen "
                   "--key-type rsa:2048 --label app --id 01 >/dev/null 2>&1",
                   softhsm, label, pin) &&
         unit_sh("pkcs11-tool --module '%s' --token-label %s --read-object --type pubkey "
                   "--label app -o '%s/%s' >/dev/null 2>&1",
                   softhsm, label, dir, pubfile);
}

static int suite_init(void)
{
  softhsm = getenv("KVP11_SOFTHSM_MODULE");
  if (softhsm == NULL || access(softhsm, R_OK) != 0 ||
      !unit_sh("command -v pkcs11-tool >/dev/null"))
    exit(77);
  if (front_test_dir("front_login", dir, sizeof(dir)) != 0 || front_softhsm_conf(dir) != 0)
    return 1;
  if (!make_token(TOKEN, PIN, "pub.der") || !make_token(TOKEN_B, PIN_B, "pub_b.der") ||
      !register_hsm_cert("pub.der", "default", "hsm:pass/app") ||
      !register_hsm_cert("pub_b.der", "beta", "hsm:other/app") ||
      !register_hsm_cert("pub.der", "gamma", "hsm:pass/app"))
    return 1;
  /* no pin_file / pin_env: the application's PIN is passed through, to each HSM its own */
  if (front_write_conf(dir, NULL, 0,
                       "[global]\nregistry = %s/registry.db\nlog_level = error\n\n"
                       "[hsm pass]\nmodule = %s\ntoken_label = " TOKEN "\n\n"
                       "[hsm other]\nmodule = %s\ntoken_label = " TOKEN_B "\n\n"
                       "[account default]\n\n[account beta]\n\n[account gamma]\n",
                       dir, softhsm, softhsm) != 0)
    return 1;
  return C_GetFunctionList(&f) == CKR_OK ? 0 : 1;
}

static CK_ULONG count_private_keys(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE *h)
{
  CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
  CK_ATTRIBUTE t = {CKA_CLASS, &cls, sizeof(cls)};
  return front_find(f, s, &t, 1, h, 1);
}

/* The slot whose token label is label (blank padded in the token info). */
static CK_SLOT_ID slot_of(const char *label)
{
  CK_SLOT_ID slots[8];
  CK_ULONG n = 8;
  CU_ASSERT_EQUAL_FATAL(f->C_GetSlotList(CK_TRUE, slots, &n), CKR_OK);
  for (CK_ULONG i = 0; i < n; i++) {
    CK_TOKEN_INFO ti;
    size_t len = strlen(label);
    if (f->C_GetTokenInfo(slots[i], &ti) == CKR_OK && memcmp(ti.label, label, len) == 0 &&
        (len == 32 || ti.label[len] == ' '))
      return slots[i];
  }
  CU_FAIL_FATAL("no slot with that token label");
  return 0;
}

/*
 * Has the SoftHSM2 token labelled label seen a failed login since its last
 * successful one? (CKF_USER_PIN_COUNT_LOW, read by another process from the
 * token's files.)
 */
static int pin_count_low(const char *label)
{
  char cmd[1024], line[512], cur[64] = "";
  int low = -1;
  FILE *p;

  snprintf(cmd, sizeof(cmd), "pkcs11-tool --module '%s' -T 2>/dev/null", softhsm);
  p = popen(cmd, "r");
  if (p == NULL)
    return -1;
  while (fgets(line, sizeof(line), p) != NULL) {
    char *v = strchr(line, ':');
    if (v == NULL)
      continue;
    for (v++; *v == ' '; v++)
      ;
    v[strcspn(v, "\n")] = '\0';
    if (strstr(line, "token label") != NULL)
      snprintf(cur, sizeof(cur), "%s", v);
    else if (strstr(line, "token flags") != NULL && strcmp(cur, label) == 0)
      low = strstr(v, "user PIN count low") != NULL;
  }
  pclose(p);
  return low;
}

static CK_STATE session_state(CK_SESSION_HANDLE s)
{
  CK_SESSION_INFO si;
  CU_ASSERT_EQUAL_FATAL(f->C_GetSessionInfo(s, &si), CKR_OK);
  return si.state;
}

/* Sign with the slot's one private key: CKR_OK and a 2048-bit signature. */
static void sign_ok(CK_SESSION_HANDLE s)
{
  CK_OBJECT_HANDLE key = CK_INVALID_HANDLE;
  CK_MECHANISM mech = {CKM_SHA256_RSA_PKCS, NULL, 0};
  CK_BYTE sig[256];
  CK_ULONG sig_len = sizeof(sig);
  CU_ASSERT_EQUAL_FATAL(count_private_keys(s, &key), 1);
  CU_ASSERT_EQUAL_FATAL(f->C_SignInit(s, &mech, key), CKR_OK);
  CU_ASSERT_EQUAL(f->C_Sign(s, (CK_BYTE_PTR) "edi", 3, sig, &sig_len), CKR_OK);
  CU_ASSERT_EQUAL(sig_len, 256);
}

static void test_pin_passthrough(void)
{
  CK_SLOT_ID slot;
  CK_TOKEN_INFO ti;
  CK_SESSION_HANDLE s;
  CK_OBJECT_HANDLE key = CK_INVALID_HANDLE;
  CK_MECHANISM mech = {CKM_SHA256_RSA_PKCS, NULL, 0};
  CK_BYTE sig[256];
  CK_ULONG sig_len = sizeof(sig);

  CU_ASSERT_EQUAL_FATAL(f->C_Initialize(NULL), CKR_OK);
  slot = slot_of("default");
  CU_ASSERT_EQUAL(f->C_GetTokenInfo(slot, &ti), CKR_OK);
  CU_ASSERT(ti.flags & CKF_LOGIN_REQUIRED);
  CU_ASSERT_EQUAL_FATAL(f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s), CKR_OK);

  /* hidden before login; a wrong PIN is the HSM's refusal */
  CU_ASSERT_EQUAL(count_private_keys(s, &key), 0);
  CU_ASSERT_EQUAL(f->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR) "0000", 4), CKR_PIN_INCORRECT);
  CU_ASSERT_EQUAL(count_private_keys(s, &key), 0);

  /* the right PIN: visible and usable */
  CU_ASSERT_EQUAL_FATAL(f->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)PIN, 4), CKR_OK);
  CU_ASSERT_EQUAL_FATAL(count_private_keys(s, &key), 1);
  CU_ASSERT_EQUAL_FATAL(f->C_SignInit(s, &mech, key), CKR_OK);
  CU_ASSERT_EQUAL(f->C_Sign(s, (CK_BYTE_PTR) "edi", 3, sig, &sig_len), CKR_OK);
  CU_ASSERT_EQUAL(sig_len, 256);

  /* the last session closes: logged out, and a wrong PIN is refused again */
  CU_ASSERT_EQUAL(f->C_CloseSession(s), CKR_OK);
  CU_ASSERT_EQUAL_FATAL(f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s), CKR_OK);
  CU_ASSERT_EQUAL(count_private_keys(s, &key), 0);
  CU_ASSERT_EQUAL(f->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR) "0000", 4), CKR_PIN_INCORRECT);
  CU_ASSERT_EQUAL(f->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)PIN, 4), CKR_OK);
  CU_ASSERT_EQUAL(f->C_Logout(s), CKR_OK);
  CU_ASSERT_EQUAL(count_private_keys(s, &key), 0);
  CU_ASSERT_EQUAL(f->C_Finalize(NULL), CKR_OK);
}


/*
 * Two accounts, two tokens, two PINs. On main every HSM got every PIN: slot
 * A's right PIN was refused by token B (counted as a failed login there), and
 * after B logged out its HSM stayed logged in, so C_Login(B, wrong) succeeded.
 */
static void test_two_tokens(void)
{
  CK_SLOT_ID a, b;
  CK_SESSION_HANDLE sa, sb;
  CK_OBJECT_HANDLE key;

  CU_ASSERT_EQUAL_FATAL(f->C_Initialize(NULL), CKR_OK);
  a = slot_of("default");
  b = slot_of("beta");
  CU_ASSERT_EQUAL_FATAL(f->C_OpenSession(a, CKF_SERIAL_SESSION, NULL, NULL, &sa), CKR_OK);
  CU_ASSERT_EQUAL_FATAL(f->C_OpenSession(b, CKF_SERIAL_SESSION, NULL, NULL, &sb), CKR_OK);

  /* B's wrong and right PIN reach token B only */
  CU_ASSERT_EQUAL(f->C_Login(sb, CKU_USER, (CK_UTF8CHAR_PTR) "0000", 4), CKR_PIN_INCORRECT);
  CU_ASSERT_EQUAL(session_state(sb), CKS_RO_PUBLIC_SESSION);
  CU_ASSERT_EQUAL(count_private_keys(sb, &key), 0);
  CU_ASSERT_EQUAL(pin_count_low(TOKEN_B), 1); /* the check sees a failed login */
  CU_ASSERT_EQUAL(pin_count_low(TOKEN), 0);   /* token A never saw "0000" */
  CU_ASSERT_EQUAL(f->C_Login(sb, CKU_USER, (CK_UTF8CHAR_PTR)PIN_B, 4), CKR_OK);
  CU_ASSERT_EQUAL(pin_count_low(TOKEN), 0); /* nor B's right PIN */
  CU_ASSERT_EQUAL(session_state(sb), CKS_RO_USER_FUNCTIONS);

  /* A's right PIN works while B is logged in; A is untouched by B's login */
  CU_ASSERT_EQUAL(session_state(sa), CKS_RO_PUBLIC_SESSION);
  CU_ASSERT_EQUAL_FATAL(f->C_Login(sa, CKU_USER, (CK_UTF8CHAR_PTR)PIN, 4), CKR_OK);
  CU_ASSERT_EQUAL(pin_count_low(TOKEN_B), 0); /* A's PIN did not reach token B */
  sign_ok(sa);
  sign_ok(sb);

  /* B logs out: its HSM forgets the PIN, A keeps working, and a wrong PIN on B is refused */
  CU_ASSERT_EQUAL(f->C_Logout(sb), CKR_OK);
  sign_ok(sa);
  CU_ASSERT_EQUAL(f->C_Login(sb, CKU_USER, (CK_UTF8CHAR_PTR) "0000", 4), CKR_PIN_INCORRECT);
  CU_ASSERT_EQUAL(session_state(sb), CKS_RO_PUBLIC_SESSION);
  CU_ASSERT_EQUAL(count_private_keys(sb, &key), 0);
  CU_ASSERT_EQUAL(pin_count_low(TOKEN), 0);
  /* A's PIN is not B's */
  CU_ASSERT_EQUAL(f->C_Login(sb, CKU_USER, (CK_UTF8CHAR_PTR)PIN, 4), CKR_PIN_INCORRECT);
  CU_ASSERT_EQUAL(session_state(sb), CKS_RO_PUBLIC_SESSION);
  sign_ok(sa);

  /* B logged in again, then its last session closes while A stays logged in: a new
   * session of B is public, and a wrong PIN is still refused */
  CU_ASSERT_EQUAL(f->C_Login(sb, CKU_USER, (CK_UTF8CHAR_PTR)PIN_B, 4), CKR_OK);
  CU_ASSERT_EQUAL(f->C_CloseSession(sb), CKR_OK);
  CU_ASSERT_EQUAL_FATAL(f->C_OpenSession(b, CKF_SERIAL_SESSION, NULL, NULL, &sb), CKR_OK);
  CU_ASSERT_EQUAL(session_state(sb), CKS_RO_PUBLIC_SESSION);
  CU_ASSERT_EQUAL(f->C_Login(sb, CKU_USER, (CK_UTF8CHAR_PTR) "0000", 4), CKR_PIN_INCORRECT);
  CU_ASSERT_EQUAL(session_state(sb), CKS_RO_PUBLIC_SESSION);
  CU_ASSERT_EQUAL(f->C_Login(sb, CKU_USER, (CK_UTF8CHAR_PTR)PIN_B, 4), CKR_OK);
  sign_ok(sb);
  CU_ASSERT_EQUAL(pin_count_low(TOKEN), 0);
  CU_ASSERT_EQUAL(f->C_Finalize(NULL), CKR_OK);
}

/*
 * Two accounts whose keys are on the same HSM (the first case): once
 * one token is logged in, the other's C_Login with a wrong PIN is refused (the
 * HSM session is logged in already; the backend compares the PIN with the one
 * that logged it in) and gives no user functions; the right PIN is accepted.
 */
static void test_shared_hsm(void)
{
  CK_SESSION_HANDLE sa, sg;
  CK_OBJECT_HANDLE key;

  CU_ASSERT_EQUAL_FATAL(f->C_Initialize(NULL), CKR_OK);
  CU_ASSERT_EQUAL_FATAL(f->C_OpenSession(slot_of("default"), CKF_SERIAL_SESSION, NULL, NULL, &sa),
                        CKR_OK);
  CU_ASSERT_EQUAL_FATAL(f->C_OpenSession(slot_of("gamma"), CKF_SERIAL_SESSION, NULL, NULL, &sg),
                        CKR_OK);
  CU_ASSERT_EQUAL_FATAL(f->C_Login(sa, CKU_USER, (CK_UTF8CHAR_PTR)PIN, 4), CKR_OK);
  CU_ASSERT_EQUAL(f->C_Login(sg, CKU_USER, (CK_UTF8CHAR_PTR) "0000", 4), CKR_PIN_INCORRECT);
  CU_ASSERT_EQUAL(session_state(sg), CKS_RO_PUBLIC_SESSION);
  CU_ASSERT_EQUAL(count_private_keys(sg, &key), 0);
  CU_ASSERT_EQUAL(f->C_Login(sg, CKU_USER, (CK_UTF8CHAR_PTR)PIN, 4), CKR_OK);
  sign_ok(sg);
  /* A logs out: the HSM stays logged in for gamma */
  CU_ASSERT_EQUAL(f->C_Logout(sa), CKR_OK);
  sign_ok(sg);
  CU_ASSERT_EQUAL(count_private_keys(sa, &key), 0);
  CU_ASSERT_EQUAL(f->C_Finalize(NULL), CKR_OK);
}

/* A second C_Login on a logged-in slot: checked, per spec answered as "already logged in". */
static void test_repeated_login(void)
{
  CK_SESSION_HANDLE sa;

  CU_ASSERT_EQUAL_FATAL(f->C_Initialize(NULL), CKR_OK);
  CU_ASSERT_EQUAL_FATAL(f->C_OpenSession(slot_of("default"), CKF_SERIAL_SESSION, NULL, NULL, &sa),
                        CKR_OK);
  CU_ASSERT_EQUAL_FATAL(f->C_Login(sa, CKU_USER, (CK_UTF8CHAR_PTR)PIN, 4), CKR_OK);
  CU_ASSERT_EQUAL(f->C_Login(sa, CKU_USER, (CK_UTF8CHAR_PTR)PIN, 4), CKR_USER_ALREADY_LOGGED_IN);
  CU_ASSERT_EQUAL(f->C_Login(sa, CKU_USER, (CK_UTF8CHAR_PTR) "0000", 4), CKR_PIN_INCORRECT);
  /* a refused second login does not log the slot out */
  CU_ASSERT_EQUAL(session_state(sa), CKS_RO_USER_FUNCTIONS);
  sign_ok(sa);
  CU_ASSERT_EQUAL(f->C_Finalize(NULL), CKR_OK);
}

int main(void)
{
  static CU_TestInfo tests[] = {
      {"PIN passed through to the HSM", test_pin_passthrough},
      {"two tokens, two PINs: each PIN reaches its own HSM only", test_two_tokens},
      {"two accounts on one HSM: a wrong PIN is refused", test_shared_hsm},
      {"a repeated C_Login is checked", test_repeated_login},
      CU_TEST_INFO_NULL,
  };
  return unit_run_suite("front login", suite_init, NULL, tests);
}
