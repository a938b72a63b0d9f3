/*
 * Login through the module when an HSM takes the application's PIN: the
 * token says CKF_LOGIN_REQUIRED, the private key is hidden until C_Login, a
 * wrong PIN is refused with the HSM's answer, signing works after login, and
 * once the last session closes a wrong PIN is refused again (the HSM login
 * does not outlive the token's).
 *
 * Makes its own SoftHSM2 token; exits 77 when SoftHSM2 or pkcs11-tool is
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

#define PIN "4321"
#define TOKEN "kvp11-login-test"

static char dir[512];
static const char *softhsm;
static CK_FUNCTION_LIST_PTR f;

static int run(const char *fmt, ...)
{
  char cmd[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(cmd, sizeof(cmd), fmt, ap);
  va_end(ap);
  return system(cmd) == 0;
}

/* A certificate for the token's public key (issued by a throwaway CA key). */
static int register_hsm_cert(void)
{
  char path[600], err[KVP_ERRLEN];
  FILE *fp;
  EVP_PKEY *pub = NULL, *ca = EVP_EC_gen("P-256");
  X509 *x = X509_new();
  unsigned char *der = NULL;
  int len, ok = 0;
  kvp_registry *reg = NULL;
  kvp_cert_rec rec;

  snprintf(path, sizeof(path), "%s/pub.der", dir);
  fp = fopen(path, "rb");
  if (fp == NULL)
    return 0;
  pub = d2i_PUBKEY_fp(fp, NULL);
  fclose(fp);
  if (pub == NULL)
    goto out;
  X509_set_version(x, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x), 7);
  X509_gmtime_adj(X509_getm_notBefore(x), 0);
  X509_gmtime_adj(X509_getm_notAfter(x), 86400);
  X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
                             (const unsigned char *)"app", -1, -1, 0);
  X509_set_issuer_name(x, X509_get_subject_name(x));
  X509_set_pubkey(x, pub);
  X509_sign(x, ca, EVP_sha256());
  len = i2d_X509(x, &der);
  memset(&rec, 0, sizeof(rec));
  if (len <= 0 || kvp_cert_fill_rec(der, (size_t)len, &rec, err, sizeof(err)) != KVP_OK)
    goto out;
  rec.account = strdup("default");
  rec.name = strdup("app");
  rec.type = KVP_CERT_PRIVATE;
  rec.key_ref = strdup("hsm:pass/app");
  snprintf(path, sizeof(path), "%s/registry.db", dir);
  ok = kvp_registry_open(path, 0, &reg, err, sizeof(err)) == KVP_OK &&
       kvp_registry_add(reg, &rec, 0, err, sizeof(err)) == KVP_OK;
  if (reg != NULL)
    kvp_registry_close(reg);
  kvp_cert_rec_clear(&rec);
out:
  OPENSSL_free(der);
  X509_free(x);
  EVP_PKEY_free(pub);
  EVP_PKEY_free(ca);
  return ok;
}

static int suite_init(void)
{
  const char *tmp = getenv("KVP11_TEST_TMP");
  char path[600];
  FILE *fp;

  softhsm = getenv("KVP11_SOFTHSM_MODULE");
  if (softhsm == NULL || access(softhsm, R_OK) != 0 || !run("command -v pkcs11-tool >/dev/null"))
    exit(77);
  mkdir(tmp ? tmp : "/tmp", 0755);
  snprintf(dir, sizeof(dir), "%s/front_login.%d", tmp ? tmp : "/tmp", (int)getpid());
  if (mkdir(dir, 0700) != 0)
    return 1;
  snprintf(path, sizeof(path), "%s/softhsm2.conf", dir);
  fp = fopen(path, "w");
  if (fp == NULL)
    return 1;
  fprintf(fp, "directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n", dir);
  fclose(fp);
  setenv("SOFTHSM2_CONF", path, 1);
  if (!run("softhsm2-util --init-token --free --label " TOKEN " --pin " PIN
           " --so-pin 12345678 >/dev/null") ||
      !run("pkcs11-tool --module '%s' --token-label " TOKEN " --login --pin " PIN
           " --keypairgen --key-type rsa:2048 --label app --id 01 >/dev/null 2>&1",
           softhsm) ||
      !run("pkcs11-tool --module '%s' --token-label " TOKEN
           " --read-object --type pubkey --label app -o '%s/pub.der' >/dev/null 2>&1",
           softhsm, dir) ||
      !register_hsm_cert())
    return 1;
  snprintf(path, sizeof(path), "%s/kvp11.conf", dir);
  fp = fopen(path, "w");
  if (fp == NULL)
    return 1;
  /* no pin_file / pin_env: the application's PIN is passed through */
  fprintf(fp,
          "[global]\nregistry = %s/registry.db\nlog_level = error\n\n"
          "[hsm pass]\nmodule = %s\ntoken_label = " TOKEN "\n\n[account default]\n",
          dir, softhsm);
  fclose(fp);
  setenv("KVP11_CONF", path, 1);
  return C_GetFunctionList(&f) == CKR_OK ? 0 : 1;
}

static CK_ULONG count_private_keys(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE *h)
{
  CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
  CK_ATTRIBUTE t = {CKA_CLASS, &cls, sizeof(cls)};
  CK_ULONG n = 0;
  CU_ASSERT_EQUAL_FATAL(f->C_FindObjectsInit(s, &t, 1), CKR_OK);
  CU_ASSERT_EQUAL(f->C_FindObjects(s, h, 1, &n), CKR_OK);
  CU_ASSERT_EQUAL(f->C_FindObjectsFinal(s), CKR_OK);
  return n;
}

static void test_pin_passthrough(void)
{
  CK_SLOT_ID slot;
  CK_ULONG n = 1;
  CK_TOKEN_INFO ti;
  CK_SESSION_HANDLE s;
  CK_OBJECT_HANDLE key = CK_INVALID_HANDLE;
  CK_MECHANISM mech = {CKM_SHA256_RSA_PKCS, NULL, 0};
  CK_BYTE sig[256];
  CK_ULONG sig_len = sizeof(sig);

  CU_ASSERT_EQUAL_FATAL(f->C_Initialize(NULL), CKR_OK);
  CU_ASSERT_EQUAL_FATAL(f->C_GetSlotList(CK_TRUE, &slot, &n), CKR_OK);
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

int main(void)
{
  CU_pSuite suite;
  unsigned failures;

  if (CU_initialize_registry() != CUE_SUCCESS)
    return 1;
  suite = CU_add_suite("front login", suite_init, NULL);
  CU_add_test(suite, "PIN passed through to the HSM", test_pin_passthrough);
  CU_basic_set_mode(CU_BRM_VERBOSE);
  CU_basic_run_tests();
  failures = CU_get_number_of_failures() + CU_get_number_of_suites_failed();
  CU_cleanup_registry();
  return failures == 0 ? 0 : 1;
}
