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
#include <pthread.h>
#include <stdatomic.h>

#include "core/status.h"
#include "front_fixture.h"
#include "unit_util.h"

static CK_OBJECT_CLASS c_cert = CKO_CERTIFICATE, c_pub = CKO_PUBLIC_KEY;
static CK_CERTIFICATE_TYPE x509 = CKC_X_509;
static CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
static CK_SLOT_ID slot_vault, slot_locked;

#define GATE_TOKEN "kvp11-gate"
#define GATE_PIN "4321"

static int suite_init(void)
{
  char conf[1200];
  int rc;

  /* "locked": its key store takes the application's PIN (no pin_file), so the
   * token says CKF_LOGIN_REQUIRED; the HSM module is loaded at the first use,
   * after its token is made below */
  snprintf(conf, sizeof(conf),
           "[vault kv]\nurl = https://127.0.0.1:1/\nauth = managed-identity\n\n"
           "[account vkeys]\nlabel = vkeys\ndefault_store = vault:kv\n\n"
           "[hsm gate]\nmodule = %s\ntoken_label = " GATE_TOKEN "\n\n"
           "[account locked]\nlabel = locked\ndefault_store = hsm:gate\n",
           getenv("KVP11_SOFTHSM_MODULE") != NULL ? getenv("KVP11_SOFTHSM_MODULE") : "");
  if ((rc = fixture_init("front_sessobj", conf)) != 0)
    return rc;
  if (!unit_sh("softhsm2-util --init-token --free --label " GATE_TOKEN " --pin " GATE_PIN
           " --so-pin 12345678 >/dev/null"))
    return 1;
  slot_vault = slot_by_label("vkeys");
  slot_locked = slot_by_label("locked");
  return slot_vault == (CK_SLOT_ID)-1 || slot_locked == (CK_SLOT_ID)-1;
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

/* A session certificate with CKA_ID id and label label on session s (its handle). */
static CK_OBJECT_HANDLE make_sess_cert(CK_SESSION_HANDLE s, const unsigned char *der, size_t len,
                                       const char *id, const char *label, CK_BBOOL *priv)
{
  CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
  CK_ATTRIBUTE t[] = {
      {CKA_CLASS, &c_cert, sizeof(c_cert)},
      {CKA_CERTIFICATE_TYPE, &x509, sizeof(x509)},
      {CKA_VALUE, (void *)der, (CK_ULONG)len},
      {CKA_ID, (void *)id, (CK_ULONG)strlen(id)},
      {CKA_LABEL, (void *)label, (CK_ULONG)strlen(label)},
      {CKA_PRIVATE, priv, sizeof(*priv)},
  };
  CU_ASSERT_EQUAL(f->C_CreateObject(s, t, priv != NULL ? 6 : 5, &h), CKR_OK);
  return h;
}

static CK_ULONG find_more(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE *out, CK_ULONG max)
{
  CK_ULONG n = 0;
  CU_ASSERT_EQUAL(f->C_FindObjects(s, out, max, &n), CKR_OK);
  return n;
}

/*
 * The rule a search follows while session objects come and go: session
 * objects come first, in creation order; one made during the search is
 * given if the search has not yet passed the end of the session objects (a
 * C_FindObjects call that reached the end with room left); one destroyed
 * before it was given is not given.
 */
static void test_search_while_changing(void)
{
  EVP_PKEY *k = EVP_EC_gen("P-256");
  size_t len = 0;
  unsigned char *der = front_cert(k, "Moving Partner", 77, NULL, &len);
  CK_SESSION_HANDLE a, b;
  CK_OBJECT_HANDLE c[8], got[8];
  CK_ATTRIBUTE t[] = {{CKA_CLASS, &c_cert, sizeof(c_cert)}, {CKA_ID, "moving", 6}};

  CU_ASSERT_EQUAL_FATAL(f->C_OpenSession(slot_plain, CKF_SERIAL_SESSION, NULL, NULL, &a), CKR_OK);
  CU_ASSERT_EQUAL_FATAL(f->C_OpenSession(slot_plain, CKF_SERIAL_SESSION, NULL, NULL, &b), CKR_OK);
  for (int i = 0; i < 3; i++)
    c[i] = make_sess_cert(a, der, len, "moving", "moving", NULL);
  CU_ASSERT_EQUAL_FATAL(f->C_FindObjectsInit(b, t, 2), CKR_OK);
  CU_ASSERT_EQUAL_FATAL(find_more(b, got, 1), 1);
  CU_ASSERT_EQUAL(got[0], c[0]);
  /* c[1] goes before it is given; c[3] comes: given, after c[2] */
  CU_ASSERT_EQUAL(f->C_DestroyObject(a, c[1]), CKR_OK);
  c[3] = make_sess_cert(a, der, len, "moving", "moving", NULL);
  CU_ASSERT_EQUAL_FATAL(find_more(b, got, 2), 2); /* exactly full: the end is not passed yet */
  CU_ASSERT_EQUAL(got[0], c[2]);
  CU_ASSERT_EQUAL(got[1], c[3]);
  c[4] = make_sess_cert(a, der, len, "moving", "moving", NULL);
  CU_ASSERT_EQUAL_FATAL(find_more(b, got, 8), 1); /* room left: the end is passed */
  CU_ASSERT_EQUAL(got[0], c[4]);
  c[5] = make_sess_cert(a, der, len, "moving", "moving", NULL);
  CU_ASSERT_EQUAL(find_more(b, got, 8), 0); /* made after the end was passed: not given */
  CU_ASSERT_EQUAL(f->C_FindObjectsFinal(b), CKR_OK);
  /* a new search gives the five left */
  CU_ASSERT_EQUAL(front_find(f, b, t, 2, got, 8), 5);
  f->C_CloseSession(a);
  CU_ASSERT_EQUAL(front_find(f, b, t, 2, got, 8), 0);
  f->C_CloseSession(b);
  OPENSSL_free(der);
  EVP_PKEY_free(k);
}

/* Many session objects, searched a few at a time while every third one not
 * yet given is destroyed: each one left is given once, in creation order. */
static void test_search_many(void)
{
  enum { N = 300 };
  EVP_PKEY *k = EVP_EC_gen("P-256");
  size_t len = 0;
  unsigned char *der = front_cert(k, "Many Partners", 77, NULL, &len);
  CK_SESSION_HANDLE s;
  CK_OBJECT_HANDLE made[N], got[7];
  int gone[N] = {0}, next = 0, given = 0, destroyed = 0;
  CK_ATTRIBUTE t[] = {{CKA_CLASS, &c_cert, sizeof(c_cert)}, {CKA_ID, "many", 4}};
  CK_ULONG n;

  CU_ASSERT_EQUAL_FATAL(f->C_OpenSession(slot_plain, CKF_SERIAL_SESSION, NULL, NULL, &s), CKR_OK);
  for (int i = 0; i < N; i++) {
    char label[16];
    snprintf(label, sizeof(label), "many%d", i);
    made[i] = make_sess_cert(s, der, len, "many", label, NULL);
  }
  CU_ASSERT_EQUAL_FATAL(f->C_FindObjectsInit(s, t, 2), CKR_OK);
  while ((n = find_more(s, got, 7)) > 0) {
    for (CK_ULONG j = 0; j < n; j++) {
      while (next < N && gone[next])
        next++;
      CU_ASSERT_FATAL(next < N);
      CU_ASSERT_EQUAL(got[j], made[next]);
      next++;
      given++;
    }
    /* destroy every third of those not given yet */
    for (int i = next; i < N; i += 3)
      if (!gone[i]) {
        CU_ASSERT_EQUAL(f->C_DestroyObject(s, made[i]), CKR_OK);
        gone[i] = 1;
        destroyed++;
        break;
      }
  }
  CU_ASSERT_EQUAL(f->C_FindObjectsFinal(s), CKR_OK);
  CU_ASSERT_EQUAL(given + destroyed, N);
  CU_ASSERT(destroyed > 0);
  /* the handles left still resolve; the destroyed ones do not */
  for (int i = 0; i < N; i++) {
    CK_ATTRIBUTE a = {CKA_TOKEN, NULL, 0};
    CU_ASSERT_EQUAL(f->C_GetAttributeValue(s, made[i], &a, 1),
                    gone[i] ? CKR_OBJECT_HANDLE_INVALID : CKR_OK);
  }
  f->C_CloseSession(s);
  OPENSSL_free(der);
  EVP_PKEY_free(k);
}

static CK_FLAGS token_flags(CK_SLOT_ID slot)
{
  CK_TOKEN_INFO ti;
  CU_ASSERT_EQUAL_FATAL(f->C_GetTokenInfo(slot, &ti), CKR_OK);
  return ti.flags;
}

static CK_RV attr_rv(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h)
{
  CK_ATTRIBUTE a = {CKA_LABEL, NULL, 0};
  return f->C_GetAttributeValue(s, h, &a, 1);
}

/*
 * CKA_PRIVATE true on a session certificate (PKCS#11 2.40 4.4, 5.7): on a
 * token with CKF_LOGIN_REQUIRED it is made only once the user is logged in
 * (else CKR_USER_NOT_LOGGED_IN), and while the token is logged out no search
 * finds it (nor its public key object) and its handles are
 * CKR_OBJECT_HANDLE_INVALID. Logging in again shows it again.
 */
static void test_private_session_certificate(void)
{
  EVP_PKEY *k = EVP_EC_gen("P-256");
  size_t len = 0;
  unsigned char *der = front_cert(k, "Private Partner", 77, NULL, &len);
  CK_SESSION_HANDLE a, b;
  CK_OBJECT_HANDLE h = CK_INVALID_HANDLE, hpub = CK_INVALID_HANDLE, got[8];
  CK_ATTRIBUTE by_id[] = {{CKA_ID, "secret", 6}};
  CK_ATTRIBUTE pub_by_id[] = {{CKA_ID, "secret", 6}, {CKA_CLASS, &c_pub, sizeof(c_pub)}};
  CK_ATTRIBUTE certs[] = {{CKA_CLASS, &c_cert, sizeof(c_cert)}};
  CK_ATTRIBUTE priv_certs[] = {{CKA_CLASS, &c_cert, sizeof(c_cert)},
                               {CKA_PRIVATE, &yes, sizeof(yes)}};
  CK_ATTRIBUTE t[] = {
      {CKA_CLASS, &c_cert, sizeof(c_cert)}, {CKA_CERTIFICATE_TYPE, &x509, sizeof(x509)},
      {CKA_VALUE, der, (CK_ULONG)len},      {CKA_ID, "secret", 6},
      {CKA_PRIVATE, &yes, sizeof(yes)},     {CKA_TOKEN, &no, sizeof(no)},
  };
  int rows = count_rows();

  CU_ASSERT((token_flags(slot_locked) & CKF_LOGIN_REQUIRED) != 0);
  CU_ASSERT_EQUAL_FATAL(f->C_OpenSession(slot_locked, CKF_SERIAL_SESSION, NULL, NULL, &a), CKR_OK);
  CU_ASSERT_EQUAL_FATAL(f->C_OpenSession(slot_locked, CKF_SERIAL_SESSION, NULL, NULL, &b), CKR_OK);
  /* logged out: refused (CKA_TOKEN absent or false alike); a public one is made */
  CU_ASSERT_EQUAL(f->C_CreateObject(a, t, 6, &h), CKR_USER_NOT_LOGGED_IN);
  CU_ASSERT_EQUAL(f->C_CreateObject(a, t, 5, &h), CKR_USER_NOT_LOGGED_IN);
  CU_ASSERT_EQUAL(front_find(f, b, by_id, 1, got, 8), 0);
  (void)make_sess_cert(a, der, len, "open", "open", &no);

  CU_ASSERT_EQUAL_FATAL(f->C_Login(a, CKU_USER, (CK_UTF8CHAR_PTR)GATE_PIN, 4), CKR_OK);
  CU_ASSERT_EQUAL_FATAL(f->C_CreateObject(a, t, 6, &h), CKR_OK);
  CU_ASSERT_EQUAL(count_rows(), rows);
  CU_ASSERT_EQUAL(get_bool(b, h, CKA_PRIVATE), CK_TRUE);
  CU_ASSERT_EQUAL(get_bool(b, h, CKA_TOKEN), CK_FALSE);
  CU_ASSERT_EQUAL(front_find(f, b, by_id, 1, got, 8), 2); /* the certificate and its public key */
  CU_ASSERT_EQUAL(front_find(f, b, priv_certs, 2, got, 8), 1);
  CU_ASSERT_EQUAL(front_find(f, b, certs, 1, got, 8), 2);
  CU_ASSERT_EQUAL_FATAL(front_find(f, b, pub_by_id, 2, got, 8), 1);
  hpub = got[0];
  CU_ASSERT_EQUAL(get_bool(b, hpub, CKA_PRIVATE), CK_TRUE);

  /* logged out: not found, handles invalid, not destroyable */
  CU_ASSERT_EQUAL(f->C_Logout(b), CKR_OK);
  CU_ASSERT_EQUAL(front_find(f, b, by_id, 1, got, 8), 0);
  CU_ASSERT_EQUAL(front_find(f, a, certs, 1, got, 8), 1); /* the public one only */
  CU_ASSERT_EQUAL(attr_rv(a, h), CKR_OBJECT_HANDLE_INVALID);
  CU_ASSERT_EQUAL(attr_rv(b, hpub), CKR_OBJECT_HANDLE_INVALID);
  CU_ASSERT_EQUAL(f->C_DestroyObject(b, h), CKR_OBJECT_HANDLE_INVALID);
  /* a search started logged out sees it from the first C_FindObjects after a login */
  CU_ASSERT_EQUAL_FATAL(f->C_FindObjectsInit(b, by_id, 1), CKR_OK);
  CU_ASSERT_EQUAL_FATAL(f->C_Login(a, CKU_USER, (CK_UTF8CHAR_PTR)GATE_PIN, 4), CKR_OK);
  CU_ASSERT_EQUAL(find_more(b, got, 8), 2);
  CU_ASSERT_EQUAL(f->C_FindObjectsFinal(b), CKR_OK);
  CU_ASSERT_EQUAL(attr_rv(b, h), CKR_OK);
  CU_ASSERT_EQUAL(attr_rv(b, hpub), CKR_OK);
  /* destroyed while logged in; gone with its session */
  CU_ASSERT_EQUAL(f->C_DestroyObject(b, h), CKR_OK);
  CU_ASSERT_EQUAL(attr_rv(b, hpub), CKR_OBJECT_HANDLE_INVALID);
  CU_ASSERT_EQUAL_FATAL(f->C_CreateObject(b, t, 6, &h), CKR_OK);
  CU_ASSERT_EQUAL(f->C_CloseSession(b), CKR_OK);
  CU_ASSERT_EQUAL(front_find(f, a, by_id, 1, got, 8), 0);
  CU_ASSERT_EQUAL(f->C_CloseSession(a), CKR_OK);
  OPENSSL_free(der);
  EVP_PKEY_free(k);
}

/* A token without a login (CKF_LOGIN_REQUIRED off): every session is the
 * user's, so a private session certificate is made and seen without C_Login;
 * a private token certificate stays refused (registered certificates are public). */
static void test_private_session_certificate_no_login(void)
{
  EVP_PKEY *k = EVP_EC_gen("P-256");
  size_t len = 0;
  unsigned char *der = front_cert(k, "Open Partner", 77, NULL, &len);
  CK_SESSION_HANDLE a, b;
  CK_OBJECT_HANDLE h, got[8];
  CK_ATTRIBUTE by_id[] = {{CKA_ID, "open-secret", 11}};
  CK_ATTRIBUTE token_priv[] = {
      {CKA_CLASS, &c_cert, sizeof(c_cert)}, {CKA_CERTIFICATE_TYPE, &x509, sizeof(x509)},
      {CKA_VALUE, der, (CK_ULONG)len},      {CKA_LABEL, "tokpriv", 7},
      {CKA_PRIVATE, &yes, sizeof(yes)},     {CKA_TOKEN, &yes, sizeof(yes)},
  };
  int rows = count_rows();

  CU_ASSERT_EQUAL(token_flags(slot_plain) & CKF_LOGIN_REQUIRED, 0);
  CU_ASSERT_EQUAL_FATAL(f->C_OpenSession(slot_plain, CKF_SERIAL_SESSION, NULL, NULL, &a), CKR_OK);
  CU_ASSERT_EQUAL_FATAL(
      f->C_OpenSession(slot_plain, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &b), CKR_OK);
  h = make_sess_cert(a, der, len, "open-secret", "open-secret", &yes);
  CU_ASSERT_NOT_EQUAL_FATAL(h, CK_INVALID_HANDLE);
  CU_ASSERT_EQUAL(get_bool(b, h, CKA_PRIVATE), CK_TRUE);
  CU_ASSERT_EQUAL(front_find(f, b, by_id, 1, got, 8), 2);
  CU_ASSERT_EQUAL(f->C_CreateObject(b, token_priv, 6, &h), CKR_ATTRIBUTE_VALUE_INVALID);
  CU_ASSERT_EQUAL(count_rows(), rows);
  f->C_CloseSession(a);
  CU_ASSERT_EQUAL(front_find(f, b, by_id, 1, got, 8), 0);
  f->C_CloseSession(b);
  OPENSSL_free(der);
  EVP_PKEY_free(k);
}

/* Another thread makes and destroys session certificates on its own session. */
typedef struct churn {
  const unsigned char *der;
  size_t len;
  atomic_int done;
  int failures;
} churn;

static void *churn_run(void *arg)
{
  churn *c = arg;
  CK_SESSION_HANDLE s;
  CK_OBJECT_HANDLE prev = CK_INVALID_HANDLE;
  CK_ATTRIBUTE t[] = {
      {CKA_CLASS, &c_cert, sizeof(c_cert)},
      {CKA_CERTIFICATE_TYPE, &x509, sizeof(x509)},
      {CKA_VALUE, (void *)c->der, (CK_ULONG)c->len},
      {CKA_ID, "churn", 5},
  };

  if (f->C_OpenSession(slot_plain, CKF_SERIAL_SESSION, NULL, NULL, &s) != CKR_OK) {
    c->failures++;
    atomic_store(&c->done, 1);
    return NULL;
  }
  for (int i = 0; i < 400; i++) {
    CK_OBJECT_HANDLE h;
    if (f->C_CreateObject(s, t, 4, &h) != CKR_OK)
      c->failures++;
    else if (i % 2 == 1 && f->C_DestroyObject(s, prev) != CKR_OK)
      c->failures++;
    prev = h;
  }
  f->C_CloseSession(s); /* the rest go with it */
  atomic_store(&c->done, 1);
  return NULL;
}

/* Searches on one thread while another makes and destroys session objects:
 * every search gives handles in rising order, each one at most once. */
static void test_search_concurrent(void)
{
  EVP_PKEY *k = EVP_EC_gen("P-256");
  churn c = {.len = 0};
  unsigned char *der = front_cert(k, "Churn Partner", 77, NULL, &c.len);
  CK_ATTRIBUTE by_id[] = {{CKA_ID, "churn", 5}};
  CK_SESSION_HANDLE s;
  pthread_t th;
  int searches = 0, ordered = 1, calls_ok = 1;

  c.der = der;
  CU_ASSERT_EQUAL_FATAL(f->C_OpenSession(slot_plain, CKF_SERIAL_SESSION, NULL, NULL, &s), CKR_OK);
  CU_ASSERT_EQUAL_FATAL(pthread_create(&th, NULL, churn_run, &c), 0);
  while (!atomic_load(&c.done) || searches == 0) {
    CK_OBJECT_HANDLE got[3], last = 0;
    CK_ULONG n;
    CK_RV rv = f->C_FindObjectsInit(s, by_id, 1);
    while (rv == CKR_OK && (rv = f->C_FindObjects(s, got, 3, &n)) == CKR_OK && n > 0)
      for (CK_ULONG i = 0; i < n; i++) {
        ordered &= got[i] > last;
        last = got[i];
      }
    calls_ok &= rv == CKR_OK && f->C_FindObjectsFinal(s) == CKR_OK;
    searches++;
  }
  pthread_join(th, NULL);
  CU_ASSERT(calls_ok);
  CU_ASSERT(ordered);
  CU_ASSERT_EQUAL(c.failures, 0);
  {
    CK_OBJECT_HANDLE got[8];
    CU_ASSERT_EQUAL(front_find(f, s, by_id, 1, got, 8), 0); /* gone with the other session */
  }
  f->C_CloseSession(s);
  OPENSSL_free(der);
  EVP_PKEY_free(k);
}

int main(void)
{
  static CU_TestInfo tests[] = {
      {"session certificate: create, find, destroy, session close", test_session_certificate},
      {"a search while session objects come and go", test_search_while_changing},
      {"a search over 300 session objects, some destroyed meanwhile", test_search_many},
      {"searches while another thread makes and destroys", test_search_concurrent},
      {"private session certificate: only when logged in", test_private_session_certificate},
      {"private session certificate on a token without login",
       test_private_session_certificate_no_login},
      {"C_GenerateKeyPair session keys on Key Vault: refused", test_generate_session_vault},
      {"C_GenerateKeyPair session keys in the HSM", test_generate_session_hsm},
      CU_TEST_INFO_NULL,
  };
  return unit_run_suite("front session objects", suite_init, suite_clean, tests);
}
