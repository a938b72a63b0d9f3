/*
 * The front and the registry: slots from accounts, objects from registry
 * rows, and certificates registered or removed while the module runs show up
 * without a restart. Only public certificates here (no key store needed);
 * private keys are covered by the conformance suite.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CUnit/Basic.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "core/cert.h"
#include "core/registry.h"
#include "core/util.h"
#include "pkcs11/internal.h"

static char dir[512], conf[600], regpath[600];
static CK_FUNCTION_LIST_PTR f;

/* A self-signed certificate for a fresh key, as DER. */
static unsigned char *make_cert(const char *cn, int ec, size_t *len)
{
  EVP_PKEY *pkey = ec ? EVP_EC_gen("P-256") : EVP_RSA_gen(2048);
  X509 *x = X509_new();
  unsigned char *der = NULL;
  int n;

  X509_set_version(x, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x), 4242);
  X509_gmtime_adj(X509_getm_notBefore(x), 0);
  X509_gmtime_adj(X509_getm_notAfter(x), 86400);
  X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
                             (const unsigned char *)cn, -1, -1, 0);
  X509_set_issuer_name(x, X509_get_subject_name(x));
  X509_set_pubkey(x, pkey);
  X509_sign(x, pkey, EVP_sha256());
  n = i2d_X509(x, &der);
  *len = n > 0 ? (size_t)n : 0;
  X509_free(x);
  EVP_PKEY_free(pkey);
  return der;
}

static void register_cert(const char *account, const char *name, int ec)
{
  char err[KVP_ERRLEN];
  kvp_registry *reg = NULL;
  kvp_cert_rec rec;
  size_t len = 0;
  unsigned char *der = make_cert(name, ec, &len);

  memset(&rec, 0, sizeof(rec));
  CU_ASSERT_EQUAL_FATAL(kvp_cert_fill_rec(der, len, &rec, err, sizeof(err)), KVP_OK);
  rec.account = strdup(account);
  rec.name = strdup(name);
  rec.type = KVP_CERT_PUBLIC;
  CU_ASSERT_EQUAL_FATAL(kvp_registry_open(regpath, 0, &reg, err, sizeof(err)), KVP_OK);
  CU_ASSERT_EQUAL(kvp_registry_add(reg, &rec, 0, err, sizeof(err)), KVP_OK);
  kvp_registry_close(reg);
  kvp_cert_rec_clear(&rec);
  OPENSSL_free(der);
}

static void unregister_cert(const char *account, const char *name)
{
  char err[KVP_ERRLEN];
  kvp_registry *reg = NULL;
  CU_ASSERT_EQUAL_FATAL(kvp_registry_open(regpath, 0, &reg, err, sizeof(err)), KVP_OK);
  CU_ASSERT_EQUAL(kvp_registry_remove(reg, account, name, err, sizeof(err)), KVP_OK);
  kvp_registry_close(reg);
}

static CK_ULONG find_all(CK_SESSION_HANDLE s, CK_ATTRIBUTE *tmpl, CK_ULONG n,
                         CK_OBJECT_HANDLE *out, CK_ULONG max)
{
  CK_ULONG count = 0;
  CU_ASSERT_EQUAL_FATAL(f->C_FindObjectsInit(s, tmpl, n), CKR_OK);
  CU_ASSERT_EQUAL(f->C_FindObjects(s, out, max, &count), CKR_OK);
  CU_ASSERT_EQUAL(f->C_FindObjectsFinal(s), CKR_OK);
  return count;
}

static CK_SLOT_ID slot_by_label(const char *label)
{
  CK_SLOT_ID slots[8];
  CK_ULONG n = 8;
  CU_ASSERT_EQUAL_FATAL(f->C_GetSlotList(CK_TRUE, slots, &n), CKR_OK);
  for (CK_ULONG i = 0; i < n; i++) {
    CK_TOKEN_INFO ti;
    char padded[32];
    memset(padded, ' ', 32);
    memcpy(padded, label, strlen(label));
    CU_ASSERT_EQUAL(f->C_GetTokenInfo(slots[i], &ti), CKR_OK);
    if (memcmp(ti.label, padded, 32) == 0)
      return slots[i];
  }
  return (CK_SLOT_ID)-1;
}

static int suite_init(void)
{
  const char *tmp = getenv("KVP11_TEST_TMP");
  FILE *fp;

  snprintf(dir, sizeof(dir), "%s/front_registry.%d", tmp ? tmp : "/tmp", (int)getpid());
  mkdir(tmp ? tmp : "/tmp", 0755);
  if (mkdir(dir, 0700) != 0)
    return 1;
  snprintf(conf, sizeof(conf), "%s/kvp11.conf", dir);
  snprintf(regpath, sizeof(regpath), "%s/registry.db", dir);
  fp = fopen(conf, "w");
  if (fp == NULL)
    return 1;
  fprintf(fp,
          "[global]\nregistry = %s\nlog_level = error\n\n"
          "[account partners]\nlabel = B2B partners\n\n"
          "[account other]\n",
          regpath);
  fclose(fp);
  setenv("KVP11_CONF", conf, 1);
  return C_GetFunctionList(&f) == CKR_OK ? 0 : 1;
}

static void test_slots_from_accounts(void)
{
  CK_ULONG n = 0;
  CU_ASSERT_EQUAL_FATAL(f->C_Initialize(NULL), CKR_OK);
  CU_ASSERT_EQUAL(f->C_GetSlotList(CK_TRUE, NULL, &n), CKR_OK);
  CU_ASSERT_EQUAL(n, 2);
  CU_ASSERT_NOT_EQUAL(slot_by_label("B2B partners"), (CK_SLOT_ID)-1);
  CU_ASSERT_NOT_EQUAL(slot_by_label("other"), (CK_SLOT_ID)-1);
  CU_ASSERT_EQUAL(f->C_Finalize(NULL), CKR_OK);
}

static void test_registered_while_running(void)
{
  CK_SESSION_HANDLE s, s2;
  CK_OBJECT_HANDLE found[16], again[16];
  CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
  CK_ATTRIBUTE by_class = {CKA_CLASS, &cls, sizeof(cls)};
  CK_ATTRIBUTE by_label = {CKA_LABEL, "acme", 4};
  CK_SLOT_ID slot, other;

  CU_ASSERT_EQUAL_FATAL(f->C_Initialize(NULL), CKR_OK);
  slot = slot_by_label("B2B partners");
  other = slot_by_label("other");
  CU_ASSERT_EQUAL_FATAL(f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s), CKR_OK);
  CU_ASSERT_EQUAL_FATAL(f->C_OpenSession(other, CKF_SERIAL_SESSION, NULL, NULL, &s2), CKR_OK);
  CU_ASSERT_EQUAL(find_all(s, NULL, 0, found, 16), 0);

  /* A partner's certificate is registered by another process while we run. */
  register_cert("partners", "acme", 0);
  CU_ASSERT_EQUAL(find_all(s, NULL, 0, found, 16), 2); /* certificate + public key */
  CU_ASSERT_EQUAL(find_all(s, &by_class, 1, found, 16), 1);
  CU_ASSERT_EQUAL(find_all(s, &by_label, 1, found, 16), 2);
  CU_ASSERT_EQUAL(find_all(s2, NULL, 0, found, 16), 0); /* other account: nothing */

  /* A second one: the first keeps its handles. */
  register_cert("partners", "globex", 1);
  CU_ASSERT_EQUAL(find_all(s, &by_label, 1, again, 16), 2);
  CU_ASSERT_EQUAL(again[0], found[0]);
  CU_ASSERT_EQUAL(again[1], found[1]);
  CU_ASSERT_EQUAL(find_all(s, NULL, 0, found, 16), 4);

  /* Removed while running: gone, and its handles are invalid. */
  {
    CK_OBJECT_HANDLE h = again[0];
    CK_ATTRIBUTE value = {CKA_VALUE, NULL, 0};
    unregister_cert("partners", "acme");
    CU_ASSERT_EQUAL(find_all(s, &by_label, 1, again, 16), 0);
    CU_ASSERT_EQUAL(f->C_GetAttributeValue(s, h, &value, 1), CKR_OBJECT_HANDLE_INVALID);
  }
  CU_ASSERT_EQUAL(find_all(s, NULL, 0, found, 16), 2);
  CU_ASSERT_EQUAL(f->C_CloseAllSessions(slot), CKR_OK);
  CU_ASSERT_EQUAL(f->C_CloseSession(s), CKR_SESSION_HANDLE_INVALID);
  CU_ASSERT_EQUAL(f->C_CloseSession(s2), CKR_OK);
  CU_ASSERT_EQUAL(f->C_Finalize(NULL), CKR_OK);
}

/* The certificate's attributes are those of the DER it carries. */
static void test_certificate_attributes(void)
{
  CK_SESSION_HANDLE s;
  CK_OBJECT_HANDLE h[4];
  CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
  CK_ATTRIBUTE tmpl[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_LABEL, "globex", 6}};
  unsigned char value[4096], subject[512];
  CK_ATTRIBUTE attrs[] = {{CKA_VALUE, value, sizeof(value)}, {CKA_SUBJECT, subject, sizeof(subject)}};
  const unsigned char *p = value;
  X509 *x;
  unsigned char *want = NULL;
  int want_len;

  CU_ASSERT_EQUAL_FATAL(f->C_Initialize(NULL), CKR_OK);
  CU_ASSERT_EQUAL_FATAL(
      f->C_OpenSession(slot_by_label("B2B partners"), CKF_SERIAL_SESSION, NULL, NULL, &s), CKR_OK);
  CU_ASSERT_EQUAL_FATAL(find_all(s, tmpl, 2, h, 4), 1);
  CU_ASSERT_EQUAL_FATAL(f->C_GetAttributeValue(s, h[0], attrs, 2), CKR_OK);
  x = d2i_X509(NULL, &p, (long)attrs[0].ulValueLen);
  CU_ASSERT_PTR_NOT_NULL_FATAL(x);
  want_len = i2d_X509_NAME(X509_get_subject_name(x), &want);
  CU_ASSERT_EQUAL(attrs[1].ulValueLen, (CK_ULONG)want_len);
  CU_ASSERT(memcmp(subject, want, (size_t)want_len) == 0);
  OPENSSL_free(want);
  X509_free(x);
  CU_ASSERT_EQUAL(f->C_Finalize(NULL), CKR_OK);
}

int main(void)
{
  CU_pSuite suite;
  unsigned failures;

  if (CU_initialize_registry() != CUE_SUCCESS)
    return 1;
  suite = CU_add_suite("front+registry", suite_init, NULL);
  CU_add_test(suite, "one slot per account", test_slots_from_accounts);
  CU_add_test(suite, "certificates registered while running appear", test_registered_while_running);
  CU_add_test(suite, "certificate attributes", test_certificate_attributes);
  CU_basic_set_mode(CU_BRM_VERBOSE);
  CU_basic_run_tests();
  failures = CU_get_number_of_failures() + CU_get_number_of_suites_failed();
  CU_cleanup_registry();
  return failures == 0 ? 0 : 1;
}
