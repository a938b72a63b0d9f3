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

#include "front_util.h"
#include "unit_util.h"

static char dir[512], regpath[600];
static CK_FUNCTION_LIST_PTR f;

/* A self-signed certificate of a fresh key, registered as a public certificate. */
static void register_cert(const char *account, const char *name, int ec)
{
  EVP_PKEY *pkey = ec ? EVP_EC_gen("P-256") : EVP_RSA_gen(2048);
  kvp_cert_rec rec;
  size_t len = 0;
  unsigned char *der = front_cert(pkey, name, 4242, pkey, &len);

  CU_ASSERT_EQUAL_FATAL(front_row(der, len, account, name, KVP_CERT_PUBLIC, NULL, &rec), KVP_OK);
  front_register_row(regpath, &rec);
  kvp_cert_rec_clear(&rec);
  OPENSSL_free(der);
  EVP_PKEY_free(pkey);
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
  if (front_test_dir("front_registry", dir, sizeof(dir)) != 0)
    return 1;
  snprintf(regpath, sizeof(regpath), "%s/registry.db", dir);
  if (front_write_conf(dir, NULL, 0,
                       "[global]\nregistry = %s\nlog_level = error\n\n"
                       "[account partners]\nlabel = B2B partners\n\n"
                       "[account other]\n",
                       regpath) != 0)
    return 1;
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
  CU_ASSERT_EQUAL(front_find(f, s, NULL, 0, found, 16), 0);

  /* A partner's certificate is registered by another process while we run. */
  register_cert("partners", "acme", 0);
  CU_ASSERT_EQUAL(front_find(f, s, NULL, 0, found, 16), 2); /* certificate + public key */
  CU_ASSERT_EQUAL(front_find(f, s, &by_class, 1, found, 16), 1);
  CU_ASSERT_EQUAL(front_find(f, s, &by_label, 1, found, 16), 2);
  CU_ASSERT_EQUAL(front_find(f, s2, NULL, 0, found, 16), 0); /* other account: nothing */

  /* A second one: the first keeps its handles. */
  register_cert("partners", "globex", 1);
  CU_ASSERT_EQUAL(front_find(f, s, &by_label, 1, again, 16), 2);
  CU_ASSERT_EQUAL(again[0], found[0]);
  CU_ASSERT_EQUAL(again[1], found[1]);
  CU_ASSERT_EQUAL(front_find(f, s, NULL, 0, found, 16), 4);

  /* Removed while running: gone, and its handles are invalid. */
  {
    CK_OBJECT_HANDLE h = again[0];
    CK_ATTRIBUTE value = {CKA_VALUE, NULL, 0};
    front_unregister_row(regpath, "partners", "acme");
    CU_ASSERT_EQUAL(front_find(f, s, &by_label, 1, again, 16), 0);
    CU_ASSERT_EQUAL(f->C_GetAttributeValue(s, h, &value, 1), CKR_OBJECT_HANDLE_INVALID);
  }
  CU_ASSERT_EQUAL(front_find(f, s, NULL, 0, found, 16), 2);
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
  CU_ASSERT_EQUAL_FATAL(front_find(f, s, tmpl, 2, h, 4), 1);
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
  static CU_TestInfo tests[] = {
      {"one slot per account", test_slots_from_accounts},
      {"certificates registered while running appear", test_registered_while_running},
      {"certificate attributes", test_certificate_attributes},
      CU_TEST_INFO_NULL,
  };
  return unit_run_suite("front+registry", suite_init, NULL, tests);
}
