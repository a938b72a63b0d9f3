/*
 * Session objects (issue 10 item 7): a template without CKA_TOKEN, or with
 * CKA_TOKEN false, makes a session object, never a registry row or a
 * permanent key:
 *  - C_CreateObject(CKO_CERTIFICATE): a certificate (and its public key
 *    object) kept in memory, visible to every session of the application on
 *    that token, CKA_TOKEN false, gone with C_DestroyObject or when its
 *    session closes; allowed in a read-only session;
 *  - C_GenerateKeyPair on a Key Vault default store: CKR_TEMPLATE_INCONSISTENT
 *    (no ephemeral keys in a vault), also in a read-only session;
 *  - C_GenerateKeyPair on an HSM default store: HSM session objects that sign
 *    through kvp11 and are gone when the kvp11 session closes.
 */
#include <dlfcn.h>

#include "core/status.h"
#include "front_fixture.h"
#include "unit_util.h"

static CK_OBJECT_CLASS c_cert = CKO_CERTIFICATE, c_pub = CKO_PUBLIC_KEY;
static CK_CERTIFICATE_TYPE x509 = CKC_X_509;
static CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
static CK_SLOT_ID slot_vault;

static int suite_init(void)
{
  int rc = fixture_init("front_sessobj",
                        "[vault kv]\nurl = https://127.0.0.1:1/\nauth = managed-identity\n\n"
                        "[account vkeys]\nlabel = vkeys\ndefault_store = vault:kv\n");
  if (rc != 0)
    return rc;
  slot_vault = slot_by_label("vkeys");
  return slot_vault == (CK_SLOT_ID)-1;
}

static int suite_clean(void)
{
  return fixture_clean();
}

static CK_BBOOL get_bool(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, CK_ATTRIBUTE_TYPE t)
{
  CK_BBOOL b = 0xff;
  CK_ATTRIBUTE a = {t, &b, sizeof(b)};
  CU_ASSERT_EQUAL(f->C_GetAttributeValue(s, h, &a, 1), CKR_OK);
  return b;
}

/* Private key objects of the HSM token that are token objects (pkcs11-tool). */
static int hsm_token_keys(void)
{
  char cmd[1200], line[256];
  FILE *p;
  int n = 0;

  snprintf(cmd, sizeof(cmd),
           "pkcs11-tool --module '%s' --token-label " TOKEN " --login --pin " PIN
           " --list-objects --type privkey 2>/dev/null",
           softhsm);
  if ((p = popen(cmd, "r")) == NULL)
    return -1;
  while (fgets(line, sizeof(line), p) != NULL)
    n += strncmp(line, "Private Key Object", 18) == 0;
  return pclose(p) == 0 ? n : -1;
}

/* Private keys that are HSM session objects, seen through the HSM module kvp11
 * loaded in this process (session objects are visible to all its sessions). */
static int hsm_session_keys(void)
{
  void *dl = dlopen(softhsm, RTLD_NOW | RTLD_NOLOAD);
  void *sym = dl != NULL ? dlsym(dl, "C_GetFunctionList") : NULL;
  CK_C_GetFunctionList get = NULL;
  CK_FUNCTION_LIST_PTR h = NULL;
  CK_SLOT_ID slots[8];
  CK_ULONG n = 8, count = 0;
  CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
  CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_TOKEN, &no, sizeof(no)}};
  CK_OBJECT_HANDLE objs[16];
  int total = -1;

  memcpy(&get, &sym, sizeof(get)); /* object pointer -> function pointer */
  if (get == NULL || get(&h) != CKR_OK || h->C_GetSlotList(CK_TRUE, slots, &n) != CKR_OK) {
    if (dl != NULL)
      dlclose(dl);
    return -1;
  }
  for (CK_ULONG i = 0; i < n && total < 0; i++) {
    CK_TOKEN_INFO ti;
    CK_SESSION_HANDLE s;
    if (h->C_GetTokenInfo(slots[i], &ti) != CKR_OK || memcmp(ti.label, TOKEN, strlen(TOKEN)) != 0 ||
        h->C_OpenSession(slots[i], CKF_SERIAL_SESSION, NULL, NULL, &s) != CKR_OK)
      continue;
    if (h->C_FindObjectsInit(s, t, 2) == CKR_OK && h->C_FindObjects(s, objs, 16, &count) == CKR_OK)
      total = (int)count;
    h->C_FindObjectsFinal(s);
    h->C_CloseSession(s);
  }
  dlclose(dl);
  return total;
}

static void test_session_certificate(void)
{
  EVP_PKEY *k = EVP_EC_gen("P-256");
  size_t len = 0;
  unsigned char *der = front_cert(k, "Session Partner", 77, NULL, &len);
  CK_SESSION_HANDLE ro, other, rw_keys;
  CK_OBJECT_HANDLE h = 0, h2 = 0, found[8];
  CK_ATTRIBUTE t[] = {
      {CKA_CLASS, &c_cert, sizeof(c_cert)},
      {CKA_CERTIFICATE_TYPE, &x509, sizeof(x509)},
      {CKA_LABEL, "sess1", 5},
      {CKA_VALUE, der, (CK_ULONG)len},
      {CKA_TOKEN, &no, sizeof(no)},
  };
  CK_ATTRIBUTE by_label = {CKA_LABEL, "sess1", 5};
  CK_ATTRIBUTE label_token[] = {{CKA_LABEL, "sess1", 5}, {CKA_TOKEN, &yes, sizeof(yes)}};
  CK_ATTRIBUTE label_session[] = {{CKA_LABEL, "sess1", 5}, {CKA_TOKEN, &no, sizeof(no)}};
  CK_ATTRIBUTE label_pub[] = {{CKA_LABEL, "sess1", 5}, {CKA_CLASS, &c_pub, sizeof(c_pub)}};
  int rows = count_rows();

  CU_ASSERT_EQUAL_FATAL(f->C_OpenSession(slot_plain, CKF_SERIAL_SESSION, NULL, NULL, &ro), CKR_OK);
  CU_ASSERT_EQUAL_FATAL(f->C_OpenSession(slot_plain, CKF_SERIAL_SESSION, NULL, NULL, &other),
                        CKR_OK);
  CU_ASSERT_EQUAL_FATAL(
      f->C_OpenSession(slot_keys, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &rw_keys),
      CKR_OK);
  /* CKA_TOKEN absent (4 attributes) and false: a session object, in a R/O session */
  CU_ASSERT_EQUAL_FATAL(f->C_CreateObject(ro, t, 4, &h), CKR_OK);
  CU_ASSERT_EQUAL(count_rows(), rows);
  CU_ASSERT((h & ((CK_OBJECT_HANDLE)1 << (sizeof(CK_OBJECT_HANDLE) * 8 - 1))) != 0);
  CU_ASSERT_EQUAL(get_bool(ro, h, CKA_TOKEN), CK_FALSE);
  CU_ASSERT_EQUAL(get_bool(ro, h, CKA_DESTROYABLE), CK_TRUE);
  {
    unsigned char buf[2048];
    CK_ATTRIBUTE a = {CKA_VALUE, buf, sizeof(buf)};
    CU_ASSERT_EQUAL(f->C_GetAttributeValue(other, h, &a, 1), CKR_OK);
    CU_ASSERT_EQUAL(a.ulValueLen, len);
    CU_ASSERT(a.ulValueLen == len && memcmp(buf, der, len) == 0);
  }
  /* visible to every session of the application on this token: certificate + public key */
  CU_ASSERT_EQUAL(front_find(f, other, &by_label, 1, found, 8), 2);
  CU_ASSERT_EQUAL(front_find(f, other, label_session, 2, found, 8), 2);
  CU_ASSERT_EQUAL(front_find(f, other, label_token, 2, found, 8), 0);
  CU_ASSERT_EQUAL_FATAL(front_find(f, other, label_pub, 2, found, 8), 1);
  CU_ASSERT_EQUAL(get_bool(other, found[0], CKA_TOKEN), CK_FALSE);
  CU_ASSERT_NOT_EQUAL(found[0], h);
  /* the public key object is not destroyable (as a token certificate's) */
  CU_ASSERT_EQUAL(f->C_DestroyObject(other, found[0]), CKR_ACTION_PROHIBITED);
  /* not another token's */
  {
    CK_ATTRIBUTE a = {CKA_TOKEN, NULL, 0};
    CU_ASSERT_EQUAL(f->C_GetAttributeValue(rw_keys, h, &a, 1), CKR_OBJECT_HANDLE_INVALID);
    CU_ASSERT_EQUAL(front_find(f, rw_keys, &by_label, 1, found, 8), 0);
  }
  /* destroyed from another (R/O) session: gone, handle invalid */
  CU_ASSERT_EQUAL(f->C_DestroyObject(other, h), CKR_OK);
  CU_ASSERT_EQUAL(front_find(f, ro, &by_label, 1, found, 8), 0);
  {
    CK_ATTRIBUTE a = {CKA_TOKEN, NULL, 0};
    CU_ASSERT_EQUAL(f->C_GetAttributeValue(ro, h, &a, 1), CKR_OBJECT_HANDLE_INVALID);
  }
  CU_ASSERT_EQUAL(f->C_DestroyObject(ro, h), CKR_OBJECT_HANDLE_INVALID);

  /* CKA_TOKEN false explicitly; a new handle, never the old one; gone with its session */
  CU_ASSERT_EQUAL_FATAL(f->C_CreateObject(ro, t, 5, &h2), CKR_OK);
  CU_ASSERT_NOT_EQUAL(h2, h);
  CU_ASSERT_EQUAL(count_rows(), rows);
  CU_ASSERT_EQUAL(front_find(f, other, &by_label, 1, found, 8), 2);
  CU_ASSERT_EQUAL(f->C_CloseSession(ro), CKR_OK);
  CU_ASSERT_EQUAL(front_find(f, other, &by_label, 1, found, 8), 0);
  {
    CK_ATTRIBUTE a = {CKA_TOKEN, NULL, 0};
    CU_ASSERT_EQUAL(f->C_GetAttributeValue(other, h2, &a, 1), CKR_OBJECT_HANDLE_INVALID);
  }
  /* C_CloseAllSessions takes them too */
  CU_ASSERT_EQUAL_FATAL(f->C_CreateObject(other, t, 4, &h), CKR_OK);
  CU_ASSERT_EQUAL(f->C_CloseAllSessions(slot_plain), CKR_OK);
  CU_ASSERT_EQUAL_FATAL(f->C_OpenSession(slot_plain, CKF_SERIAL_SESSION, NULL, NULL, &other),
                        CKR_OK);
  CU_ASSERT_EQUAL(front_find(f, other, &by_label, 1, found, 8), 0);
  /* bad session templates are refused as token ones are */
  t[3].ulValueLen = 5;
  CU_ASSERT_EQUAL(f->C_CreateObject(other, t, 4, &h), CKR_ATTRIBUTE_VALUE_INVALID);
  CU_ASSERT_EQUAL(count_rows(), rows);
  f->C_CloseSession(other);
  f->C_CloseSession(rw_keys);
  OPENSSL_free(der);
  EVP_PKEY_free(k);
}

static void test_generate_session_vault(void)
{
  CK_SESSION_HANDLE ro, rw;
  CK_MECHANISM m = {CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0};
  CK_ULONG bits = 2048;
  CK_ATTRIBUTE pub[] = {{CKA_MODULUS_BITS, &bits, sizeof(bits)}, {CKA_TOKEN, &no, sizeof(no)}};
  CK_ATTRIBUTE priv[] = {{CKA_SIGN, &yes, sizeof(yes)}, {CKA_TOKEN, &yes, sizeof(yes)}};
  CK_OBJECT_HANDLE hp = 0, hk = 0;
  int rows = count_rows();

  CU_ASSERT_EQUAL_FATAL(f->C_OpenSession(slot_vault, CKF_SERIAL_SESSION, NULL, NULL, &ro), CKR_OK);
  CU_ASSERT_EQUAL_FATAL(
      f->C_OpenSession(slot_vault, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &rw), CKR_OK);
  /* no CKA_TOKEN at all; CKA_TOKEN false in one template: refused before the vault is asked */
  CU_ASSERT_EQUAL(f->C_GenerateKeyPair(rw, &m, pub, 1, priv, 1, &hp, &hk),
                  CKR_TEMPLATE_INCONSISTENT);
  {
    const char *why = kvp_status_reason();
    CU_ASSERT(why != NULL && strstr(why, "CKA_TOKEN") != NULL);
  }
  CU_ASSERT_EQUAL(f->C_GenerateKeyPair(rw, &m, pub, 2, priv, 2, &hp, &hk),
                  CKR_TEMPLATE_INCONSISTENT);
  /* the template check comes before the read-only check */
  CU_ASSERT_EQUAL(f->C_GenerateKeyPair(ro, &m, pub, 1, priv, 1, &hp, &hk),
                  CKR_TEMPLATE_INCONSISTENT);
  CU_ASSERT_EQUAL(count_rows(), rows);
  f->C_CloseSession(ro);
  f->C_CloseSession(rw);
}

static void test_generate_session_hsm(void)
{
  CK_SESSION_HANDLE ro, other;
  CK_MECHANISM ec = {CKM_EC_KEY_PAIR_GEN, NULL, 0}, rsa = {CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0};
  unsigned char p256[16], *pp = p256;
  int p256_len = i2d_ASN1_OBJECT(OBJ_nid2obj(NID_X9_62_prime256v1), &pp);
  CK_ULONG bits = 2048;
  CK_ATTRIBUTE ec_pub[] = {{CKA_EC_PARAMS, p256, (CK_ULONG)p256_len}, {CKA_LABEL, "sess-ec", 7}};
  CK_ATTRIBUTE ec_priv[] = {{CKA_SIGN, &yes, sizeof(yes)}};
  CK_ATTRIBUTE rsa_pub[] = {{CKA_MODULUS_BITS, &bits, sizeof(bits)}, {CKA_TOKEN, &no, sizeof(no)}};
  CK_ATTRIBUTE rsa_priv[] = {{CKA_TOKEN, &no, sizeof(no)}};
  CK_ATTRIBUTE by_label = {CKA_LABEL, "sess-ec", 7};
  CK_OBJECT_HANDLE hp = 0, hk = 0, rp = 0, rk = 0, found[8];
  int rows = count_rows(), keys = hsm_token_keys();

  CU_ASSERT_EQUAL_FATAL(f->C_OpenSession(slot_keys, CKF_SERIAL_SESSION, NULL, NULL, &ro), CKR_OK);
  CU_ASSERT_EQUAL_FATAL(f->C_OpenSession(slot_keys, CKF_SERIAL_SESSION, NULL, NULL, &other),
                        CKR_OK);
  CU_ASSERT(keys >= 0);
  CU_ASSERT_EQUAL_FATAL(f->C_GenerateKeyPair(ro, &ec, ec_pub, 2, ec_priv, 1, &hp, &hk), CKR_OK);
  CU_ASSERT_EQUAL(count_rows(), rows);
  CU_ASSERT_EQUAL(hsm_token_keys(), keys);
  CU_ASSERT_EQUAL(hsm_session_keys(), 1);
  CU_ASSERT((hk & ((CK_OBJECT_HANDLE)1 << (sizeof(CK_OBJECT_HANDLE) * 8 - 1))) != 0);
  CU_ASSERT_EQUAL(get_bool(ro, hk, CKA_TOKEN), CK_FALSE);
  CU_ASSERT_EQUAL(get_bool(ro, hp, CKA_TOKEN), CK_FALSE);
  CU_ASSERT_EQUAL(front_find(f, other, &by_label, 1, found, 8), 2);
  sign_and_verify(other, hk, hp, CKM_ECDSA_SHA256, EVP_sha256());
  sign_and_verify(ro, hk, hp, CKM_ECDSA_SHA256, EVP_sha256());
  /* RSA, CKA_TOKEN false in both templates */
  CU_ASSERT_EQUAL_FATAL(f->C_GenerateKeyPair(ro, &rsa, rsa_pub, 2, rsa_priv, 1, &rp, &rk), CKR_OK);
  sign_and_verify(ro, rk, rp, CKM_SHA256_RSA_PKCS, EVP_sha256());
  CU_ASSERT_EQUAL(hsm_token_keys(), keys);
  CU_ASSERT_EQUAL(hsm_session_keys(), 2);
  /* a session key pair object may be destroyed on its own: the HSM objects go with the last */
  CU_ASSERT_EQUAL(f->C_DestroyObject(other, rk), CKR_OK);
  CU_ASSERT_EQUAL(hsm_session_keys(), 1);
  CU_ASSERT_EQUAL(f->C_DestroyObject(other, rp), CKR_OK);
  /* gone with the session that made them */
  CU_ASSERT_EQUAL(f->C_CloseSession(ro), CKR_OK);
  CU_ASSERT_EQUAL(front_find(f, other, &by_label, 1, found, 8), 0);
  {
    CK_MECHANISM m = {CKM_ECDSA_SHA256, NULL, 0};
    CU_ASSERT_EQUAL(f->C_SignInit(other, &m, hk), CKR_KEY_HANDLE_INVALID);
  }
  CU_ASSERT_EQUAL(count_rows(), rows);
  CU_ASSERT_EQUAL(hsm_token_keys(), keys);
  CU_ASSERT_EQUAL(hsm_session_keys(), 0);
  f->C_CloseSession(other);
}

int main(void)
{
  static CU_TestInfo tests[] = {
      {"session certificate: create, find, destroy, session close", test_session_certificate},
      {"C_GenerateKeyPair session keys on Key Vault: refused", test_generate_session_vault},
      {"C_GenerateKeyPair session keys in the HSM", test_generate_session_hsm},
      CU_TEST_INFO_NULL,
  };
  return unit_run_suite("front session objects", suite_init, suite_clean, tests);
}
