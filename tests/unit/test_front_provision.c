/*
 * Objects created through PKCS#11 with standard templates:
 *  - C_CreateObject(CKO_CERTIFICATE) registers a partner's certificate, or a
 *    private one when a key of the token has its CKA_ID / public key;
 *  - C_DestroyObject(certificate) removes it (a private certificate's key
 *    stays, as a key pair without certificate);
 *  - keys without a certificate (registry schema v2) appear as key pairs;
 *  - C_GenerateKeyPair creates the key in the account's default_store (here
 *    a SoftHSM2 token of the test's own) and shows it as a key pair that signs.
 * Template errors get the PKCS#11 return codes; the registry is unchanged.
 */
#include "front_fixture.h"
#include "unit_util.h"

static int get_row(const char *account, const char *name, kvp_cert_rec *rec)
{
  char err[KVP_ERRLEN];
  kvp_registry *reg = NULL;
  int rc;

  if (kvp_registry_open(regpath, 1, &reg, err, sizeof(err)) != KVP_OK)
    return KVP_ERR;
  rc = kvp_registry_get(reg, account, name, rec, err, sizeof(err));
  kvp_registry_close(reg);
  return rc;
}

static int suite_init(void)
{
  return fixture_init("front_provision", "");
}

static int suite_clean(void)
{
  return fixture_clean();
}

static CK_OBJECT_CLASS c_cert = CKO_CERTIFICATE, c_priv = CKO_PRIVATE_KEY, c_pub = CKO_PUBLIC_KEY;
static CK_CERTIFICATE_TYPE x509 = CKC_X_509;
static CK_BBOOL yes = CK_TRUE, no = CK_FALSE;

/* ---- C_CreateObject / C_DestroyObject of partner certificates --------- */

static void test_partner_certificate(void)
{
  EVP_PKEY *k = EVP_EC_gen("P-256");
  size_t len = 0;
  unsigned char *der = front_cert(k, "Partner One", 77, NULL, &len);
  CK_SESSION_HANDLE ro, rw;
  CK_OBJECT_HANDLE h = 0, h2 = 0, found[8];
  CK_ATTRIBUTE t[] = {
      {CKA_CLASS, &c_cert, sizeof(c_cert)},
      {CKA_CERTIFICATE_TYPE, &x509, sizeof(x509)},
      {CKA_TOKEN, &yes, sizeof(yes)},
      {CKA_LABEL, "partner1", 8},
      {CKA_VALUE, der, (CK_ULONG)len},
  };
  CK_ATTRIBUTE by_label = {CKA_LABEL, "partner1", 8};
  CK_TOKEN_INFO ti;
  kvp_cert_rec rec;
  int rows = count_rows();

  CU_ASSERT_EQUAL(f->C_GetTokenInfo(slot_plain, &ti), CKR_OK);
  CU_ASSERT_EQUAL(ti.flags & CKF_WRITE_PROTECTED, 0);
  CU_ASSERT_EQUAL_FATAL(f->C_OpenSession(slot_plain, CKF_SERIAL_SESSION, NULL, NULL, &ro), CKR_OK);
  CU_ASSERT_EQUAL_FATAL(
      f->C_OpenSession(slot_plain, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &rw), CKR_OK);
  CU_ASSERT_EQUAL(f->C_CreateObject(ro, t, 5, &h), CKR_SESSION_READ_ONLY);
  CU_ASSERT_EQUAL_FATAL(f->C_CreateObject(rw, t, 5, &h), CKR_OK);
  CU_ASSERT_EQUAL(count_rows(), rows + 1);
  memset(&rec, 0, sizeof(rec));
  CU_ASSERT_EQUAL_FATAL(get_row("plain", "partner1", &rec), KVP_OK);
  CU_ASSERT_EQUAL(rec.type, KVP_CERT_PUBLIC);
  CU_ASSERT_EQUAL(rec.der_len, len);
  CU_ASSERT_EQUAL(h, ((CK_OBJECT_HANDLE)rec.id << 2) | KVP_OBJ_CERT);
  kvp_cert_rec_clear(&rec);
  /* visible at once, in every session: certificate + public key */
  CU_ASSERT_EQUAL(front_find(f, ro, &by_label, 1, found, 8), 2);
  {
    CK_BBOOL destroyable = CK_FALSE;
    CK_ATTRIBUTE a = {CKA_DESTROYABLE, &destroyable, sizeof(destroyable)};
    CU_ASSERT_EQUAL(f->C_GetAttributeValue(ro, h, &a, 1), CKR_OK);
    CU_ASSERT_EQUAL(destroyable, CK_TRUE);
  }
  /* the same label again: refused, nothing added */
  CU_ASSERT_EQUAL(f->C_CreateObject(rw, t, 5, &h2), CKR_ATTRIBUTE_VALUE_INVALID);
  CU_ASSERT_EQUAL(count_rows(), rows + 1);

  /* destroy: R/O session refused, the public key object is not destroyable */
  CU_ASSERT_EQUAL(f->C_DestroyObject(ro, h), CKR_SESSION_READ_ONLY);
  CU_ASSERT_EQUAL(f->C_DestroyObject(rw, (h & ~(CK_OBJECT_HANDLE)3) | KVP_OBJ_PUBKEY),
                  CKR_ACTION_PROHIBITED);
  CU_ASSERT_EQUAL(f->C_DestroyObject(rw, h), CKR_OK);
  CU_ASSERT_EQUAL(count_rows(), rows);
  CU_ASSERT_EQUAL(front_find(f, ro, &by_label, 1, found, 8), 0);
  CU_ASSERT_EQUAL(f->C_DestroyObject(rw, h), CKR_OBJECT_HANDLE_INVALID);
  f->C_CloseSession(ro);
  f->C_CloseSession(rw);
  OPENSSL_free(der);
  EVP_PKEY_free(k);
}

static void test_bad_templates(void)
{
  EVP_PKEY *k = EVP_EC_gen("P-256");
  size_t len = 0;
  unsigned char *der = front_cert(k, "Partner Two", 77, NULL, &len);
  unsigned char junk[] = {0x30, 0x03, 0x02, 0x01, 0x01};
  CK_CERTIFICATE_TYPE attr_cert = CKC_X_509_ATTR_CERT;
  CK_SESSION_HANDLE rw;
  CK_OBJECT_HANDLE h = 0;
  int rows = count_rows();
  CK_ATTRIBUTE base[] = {
      {CKA_CLASS, &c_cert, sizeof(c_cert)},
      {CKA_CERTIFICATE_TYPE, &x509, sizeof(x509)},
      {CKA_LABEL, "bad", 3},
      {CKA_VALUE, der, (CK_ULONG)len},
      {CKA_TOKEN, &yes, sizeof(yes)}, /* the slot varied below */
  };
  CK_ATTRIBUTE t[5];

  CU_ASSERT_EQUAL_FATAL(
      f->C_OpenSession(slot_plain, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &rw), CKR_OK);
  /* no class; no value */
  CU_ASSERT_EQUAL(f->C_CreateObject(rw, base + 1, 4, &h), CKR_TEMPLATE_INCOMPLETE);
  CU_ASSERT_EQUAL(f->C_CreateObject(rw, base, 3, &h), CKR_TEMPLATE_INCOMPLETE);
  /* not a certificate */
  memcpy(t, base, sizeof(t));
  t[0].pValue = &c_priv;
  CU_ASSERT_EQUAL(f->C_CreateObject(rw, t, 5, &h), CKR_ATTRIBUTE_VALUE_INVALID);
  /* bad DER, attribute certificate, session object, trusted, unknown attribute */
  memcpy(t, base, sizeof(t));
  t[3].pValue = junk;
  t[3].ulValueLen = sizeof(junk);
  CU_ASSERT_EQUAL(f->C_CreateObject(rw, t, 5, &h), CKR_ATTRIBUTE_VALUE_INVALID);
  memcpy(t, base, sizeof(t));
  t[1].pValue = &attr_cert;
  CU_ASSERT_EQUAL(f->C_CreateObject(rw, t, 5, &h), CKR_ATTRIBUTE_VALUE_INVALID);
  /* (CKA_TOKEN false makes a session object, private ones too: test_front_sessobj.c);
   * a token certificate is never private */
  memcpy(t, base, sizeof(t));
  t[2].type = CKA_PRIVATE;
  t[2].pValue = &yes;
  t[2].ulValueLen = sizeof(yes);
  CU_ASSERT_EQUAL(f->C_CreateObject(rw, t, 5, &h), CKR_ATTRIBUTE_VALUE_INVALID);
  memcpy(t, base, sizeof(t));
  t[4].type = CKA_TRUSTED;
  t[4].pValue = &yes;
  CU_ASSERT_EQUAL(f->C_CreateObject(rw, t, 5, &h), CKR_ATTRIBUTE_VALUE_INVALID);
  memcpy(t, base, sizeof(t));
  t[4].type = CKA_MODULUS;
  CU_ASSERT_EQUAL(f->C_CreateObject(rw, t, 5, &h), CKR_ATTRIBUTE_TYPE_INVALID);
  /* CKA_SUBJECT that is not the certificate's */
  memcpy(t, base, sizeof(t));
  t[4].type = CKA_SUBJECT;
  t[4].pValue = junk;
  t[4].ulValueLen = sizeof(junk);
  CU_ASSERT_EQUAL(f->C_CreateObject(rw, t, 5, &h), CKR_TEMPLATE_INCONSISTENT);
  /* the same attribute twice */
  memcpy(t, base, sizeof(t));
  t[4] = t[2];
  CU_ASSERT_EQUAL(f->C_CreateObject(rw, t, 5, &h), CKR_TEMPLATE_INCONSISTENT);
  CU_ASSERT_EQUAL(count_rows(), rows);
  f->C_CloseSession(rw);
  OPENSSL_free(der);
  EVP_PKEY_free(k);
}

/* ---- keys without a certificate ------------------------------------- */

/* Register a key-only row for pub (its key store is not configured: the
 * objects exist, signing is refused). */
static void add_key_only(const char *account, const char *name, EVP_PKEY *pub,
                         const unsigned char *ckid, size_t ckid_len)
{
  char err[KVP_ERRLEN];
  kvp_registry *reg = NULL;
  kvp_cert_rec rec;
  unsigned char *spki = NULL;
  int n = i2d_PUBKEY(pub, &spki);

  memset(&rec, 0, sizeof(rec));
  rec.account = (char *)account;
  rec.name = (char *)name;
  rec.type = KVP_CERT_PRIVATE;
  rec.key_ref = "keyvault:elsewhere/k";
  rec.spki = spki;
  rec.spki_len = (size_t)n;
  rec.ckid = (unsigned char *)ckid;
  rec.ckid_len = ckid_len;
  CU_ASSERT_EQUAL_FATAL(kvp_registry_open(regpath, 0, &reg, err, sizeof(err)), KVP_OK);
  CU_ASSERT_EQUAL(kvp_registry_add(reg, &rec, 0, err, sizeof(err)), KVP_OK);
  kvp_registry_close(reg);
  OPENSSL_free(spki);
}

static void test_key_then_certificate(void)
{
  EVP_PKEY *k = EVP_RSA_gen(2048), *other = EVP_EC_gen("P-256");
  unsigned char id[] = {0x42};
  unsigned char wrong_id[] = {0x43};
  size_t len = 0, len2 = 0;
  unsigned char *der = front_cert(k, "Our Cert", 77, NULL, &len);
  unsigned char *der_other = front_cert(other, "Not ours", 77, NULL, &len2);
  CK_SESSION_HANDLE rw;
  CK_OBJECT_HANDLE keys[8], again[8], h = 0, certs[4];
  CK_ATTRIBUTE by_id = {CKA_ID, id, sizeof(id)};
  CK_ATTRIBUTE by_cert = {CKA_CLASS, &c_cert, sizeof(c_cert)};
  CK_ATTRIBUTE t[] = {
      {CKA_CLASS, &c_cert, sizeof(c_cert)},
      {CKA_CERTIFICATE_TYPE, &x509, sizeof(x509)},
      {CKA_LABEL, "whatever", 8},
      {CKA_ID, id, sizeof(id)},
      {CKA_VALUE, der_other, (CK_ULONG)len2},
      {CKA_TOKEN, &yes, sizeof(yes)},
  };
  kvp_cert_rec rec;

  add_key_only("plain", "pending", k, id, sizeof(id));
  CU_ASSERT_EQUAL_FATAL(
      f->C_OpenSession(slot_plain, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &rw), CKR_OK);
  /* a key pair, no certificate, with the CKA_ID chosen */
  CU_ASSERT_EQUAL_FATAL(front_find(f, rw, &by_id, 1, keys, 8), 2);
  {
    CK_OBJECT_CLASS cls[2];
    CK_ATTRIBUTE a0 = {CKA_CLASS, &cls[0], sizeof(cls[0])}, a1 = {CKA_CLASS, &cls[1], sizeof(cls[1])};
    CU_ASSERT_EQUAL(f->C_GetAttributeValue(rw, keys[0], &a0, 1), CKR_OK);
    CU_ASSERT_EQUAL(f->C_GetAttributeValue(rw, keys[1], &a1, 1), CKR_OK);
    CU_ASSERT((cls[0] == CKO_PUBLIC_KEY && cls[1] == CKO_PRIVATE_KEY) ||
              (cls[1] == CKO_PUBLIC_KEY && cls[0] == CKO_PRIVATE_KEY));
  }
  {
    CK_BYTE mod[600];
    CK_ATTRIBUTE a = {CKA_MODULUS, mod, sizeof(mod)};
    CU_ASSERT_EQUAL(f->C_GetAttributeValue(rw, keys[0], &a, 1), CKR_OK);
    CU_ASSERT_EQUAL(a.ulValueLen, 256);
  }
  /* a certificate of another key with the key's CKA_ID: inconsistent */
  CU_ASSERT_EQUAL(f->C_CreateObject(rw, t, 6, &h), CKR_TEMPLATE_INCONSISTENT);
  /* the key's certificate with another CKA_ID: no key matches, so it would be a
   * partner's certificate; without CKA_ID the public key decides */
  t[4].pValue = der;
  t[4].ulValueLen = (CK_ULONG)len;
  CU_ASSERT_EQUAL_FATAL(f->C_CreateObject(rw, t, 6, &h), CKR_OK);
  memset(&rec, 0, sizeof(rec));
  CU_ASSERT_EQUAL_FATAL(get_row("plain", "pending", &rec), KVP_OK);
  CU_ASSERT_EQUAL(rec.der_len, len); /* filled in place, under the key's name */
  CU_ASSERT_EQUAL(rec.type, KVP_CERT_PRIVATE);
  CU_ASSERT_EQUAL(h, ((CK_OBJECT_HANDLE)rec.id << 2) | KVP_OBJ_CERT);
  kvp_cert_rec_clear(&rec);
  CU_ASSERT_EQUAL(get_row("plain", "whatever", &rec), KVP_ENOTFOUND);
  /* the key objects kept their handles; the certificate has the CKA_ID too */
  CU_ASSERT_EQUAL(front_find(f, rw, &by_id, 1, again, 8), 3);
  CU_ASSERT(memcmp(again, keys, sizeof(CK_OBJECT_HANDLE)) == 0 ||
            memcmp(again + 1, keys, sizeof(CK_OBJECT_HANDLE)) == 0);

  /* destroying the certificate leaves the key pair */
  CU_ASSERT_EQUAL(f->C_DestroyObject(rw, h), CKR_OK);
  CU_ASSERT_EQUAL(front_find(f, rw, &by_id, 1, again, 8), 2);
  memset(&rec, 0, sizeof(rec));
  CU_ASSERT_EQUAL_FATAL(get_row("plain", "pending", &rec), KVP_OK);
  CU_ASSERT_EQUAL(rec.der_len, 0);
  CU_ASSERT_EQUAL(rec.ckid_len, sizeof(id));
  kvp_cert_rec_clear(&rec);
  /* keys are not destroyed through PKCS#11 */
  CU_ASSERT_EQUAL(f->C_DestroyObject(rw, again[0]), CKR_ACTION_PROHIBITED);

  /* a certificate with a CKA_ID no key has: a partner's certificate */
  t[3].pValue = wrong_id;
  t[4].pValue = der_other;
  t[4].ulValueLen = (CK_ULONG)len2;
  CU_ASSERT_EQUAL_FATAL(f->C_CreateObject(rw, t, 6, &h), CKR_OK);
  memset(&rec, 0, sizeof(rec));
  CU_ASSERT_EQUAL_FATAL(get_row("plain", "whatever", &rec), KVP_OK);
  CU_ASSERT_EQUAL(rec.type, KVP_CERT_PUBLIC);
  kvp_cert_rec_clear(&rec);
  CU_ASSERT(front_find(f, rw, &by_cert, 1, certs, 4) >= 1);
  CU_ASSERT_EQUAL(f->C_DestroyObject(rw, h), CKR_OK);
  f->C_CloseSession(rw);
  OPENSSL_free(der);
  OPENSSL_free(der_other);
  EVP_PKEY_free(k);
  EVP_PKEY_free(other);
}

/* ---- C_GenerateKeyPair ------------------------------------------------ */

static int has_mech(CK_SLOT_ID slot, CK_MECHANISM_TYPE m)
{
  CK_MECHANISM_TYPE list[64];
  CK_ULONG n = 64;
  if (f->C_GetMechanismList(slot, list, &n) != CKR_OK)
    return -1;
  for (CK_ULONG i = 0; i < n; i++)
    if (list[i] == m)
      return 1;
  return 0;
}


static void test_generate_no_default_store(void)
{
  CK_SESSION_HANDLE rw;
  CK_MECHANISM m = {CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0};
  CK_ULONG bits = 2048;
  CK_ATTRIBUTE pub[] = {{CKA_MODULUS_BITS, &bits, sizeof(bits)}};
  CK_OBJECT_HANDLE hp, hk;

  CU_ASSERT_EQUAL(has_mech(slot_plain, CKM_RSA_PKCS_KEY_PAIR_GEN), 0);
  CU_ASSERT_EQUAL(has_mech(slot_keys, CKM_RSA_PKCS_KEY_PAIR_GEN), 1);
  CU_ASSERT_EQUAL(has_mech(slot_keys, CKM_EC_KEY_PAIR_GEN), 1);
  CU_ASSERT_EQUAL_FATAL(
      f->C_OpenSession(slot_plain, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &rw), CKR_OK);
  CU_ASSERT_EQUAL(f->C_GenerateKeyPair(rw, &m, pub, 1, NULL, 0, &hp, &hk), CKR_MECHANISM_INVALID);
  f->C_CloseSession(rw);
}

static void test_generate_in_hsm(void)
{
  CK_SESSION_HANDLE rw, ro;
  CK_MECHANISM rsa = {CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0}, ec = {CKM_EC_KEY_PAIR_GEN, NULL, 0};
  CK_ULONG bits = 2048, bad_bits = 1024;
  CK_BYTE e[] = {0x01, 0x00, 0x01};
  CK_BYTE id[] = {0xa1, 0xb2};
  unsigned char p256[16], *pp = p256;
  int p256_len = i2d_ASN1_OBJECT(OBJ_nid2obj(NID_X9_62_prime256v1), &pp);
  CK_ATTRIBUTE pub[] = {
      {CKA_CLASS, &c_pub, sizeof(c_pub)},   {CKA_TOKEN, &yes, sizeof(yes)},
      {CKA_MODULUS_BITS, &bits, sizeof(bits)}, {CKA_PUBLIC_EXPONENT, e, sizeof(e)},
      {CKA_VERIFY, &yes, sizeof(yes)},       {CKA_LABEL, "gen-rsa", 7},
      {CKA_ID, id, sizeof(id)},
  };
  CK_ATTRIBUTE priv[] = {
      {CKA_CLASS, &c_priv, sizeof(c_priv)}, {CKA_TOKEN, &yes, sizeof(yes)},
      {CKA_PRIVATE, &yes, sizeof(yes)},     {CKA_SENSITIVE, &yes, sizeof(yes)},
      {CKA_SIGN, &yes, sizeof(yes)},        {CKA_DECRYPT, &yes, sizeof(yes)},
      {CKA_LABEL, "gen-rsa", 7},            {CKA_ID, id, sizeof(id)},
  };
  CK_ATTRIBUTE ec_pub[] = {{CKA_EC_PARAMS, p256, (CK_ULONG)p256_len}, {CKA_LABEL, "gen-ec", 6},
                           {CKA_TOKEN, &yes, sizeof(yes)}};
  CK_ATTRIBUTE ec_priv[] = {{CKA_SIGN, &yes, sizeof(yes)}, {CKA_TOKEN, &yes, sizeof(yes)}};
  CK_ATTRIBUTE by_id = {CKA_ID, id, sizeof(id)};
  CK_OBJECT_HANDLE hp = 0, hk = 0, found[8];
  kvp_cert_rec rec;
  int rows;

  CU_ASSERT_EQUAL_FATAL(f->C_OpenSession(slot_keys, CKF_SERIAL_SESSION, NULL, NULL, &ro), CKR_OK);
  CU_ASSERT_EQUAL_FATAL(
      f->C_OpenSession(slot_keys, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &rw), CKR_OK);
  CU_ASSERT_EQUAL(f->C_GenerateKeyPair(ro, &rsa, pub, 7, priv, 8, &hp, &hk),
                  CKR_SESSION_READ_ONLY);
  rows = count_rows();
  {
    CK_RV rv = f->C_GenerateKeyPair(rw, &rsa, pub, 7, priv, 8, &hp, &hk);
    if (rv == CKR_FUNCTION_NOT_SUPPORTED) {
      fprintf(stderr, "\n  (the HSM backend cannot create keys yet)\n");
      goto out;
    }
    CU_ASSERT_EQUAL_FATAL(rv, CKR_OK);
  }
  CU_ASSERT_EQUAL(count_rows(), rows + 1);
  memset(&rec, 0, sizeof(rec));
  CU_ASSERT_EQUAL_FATAL(get_row("keys", "gen-rsa", &rec), KVP_OK);
  CU_ASSERT_EQUAL(rec.der_len, 0);
  CU_ASSERT_STRING_EQUAL(rec.key_ref, "hsm:box/gen-rsa");
  CU_ASSERT_EQUAL(hk, ((CK_OBJECT_HANDLE)rec.id << 2) | KVP_OBJ_PRIVKEY);
  CU_ASSERT_EQUAL(hp, ((CK_OBJECT_HANDLE)rec.id << 2) | KVP_OBJ_PUBKEY);
  kvp_cert_rec_clear(&rec);
  CU_ASSERT_EQUAL(front_find(f, ro, &by_id, 1, found, 8), 2);
  sign_and_verify(rw, hk, hp, CKM_SHA256_RSA_PKCS, EVP_sha256());

  /* the same label again: refused before the HSM is touched */
  CU_ASSERT_EQUAL(f->C_GenerateKeyPair(rw, &rsa, pub, 7, priv, 8, &hp, &hk),
                  CKR_ATTRIBUTE_VALUE_INVALID);
  CU_ASSERT_EQUAL(count_rows(), rows + 1);

  /* bad templates */
  pub[2].pValue = &bad_bits;
  /* CKR_KEY_SIZE_RANGE is not a C_GenerateKeyPair return value: the bits are a bad attribute */
  CU_ASSERT_EQUAL(f->C_GenerateKeyPair(rw, &rsa, pub, 7, priv, 8, &hp, &hk),
                  CKR_ATTRIBUTE_VALUE_INVALID);
  pub[2].pValue = &bits;
  CU_ASSERT_EQUAL(f->C_GenerateKeyPair(rw, &rsa, pub + 3, 4, priv, 8, &hp, &hk),
                  CKR_TEMPLATE_INCOMPLETE); /* no CKA_MODULUS_BITS */
  priv[3].pValue = &no; /* CKA_SENSITIVE false */
  CU_ASSERT_EQUAL(f->C_GenerateKeyPair(rw, &rsa, pub, 7, priv, 8, &hp, &hk),
                  CKR_ATTRIBUTE_VALUE_INVALID);
  priv[3].type = CKA_EXTRACTABLE;
  priv[3].pValue = &yes;
  CU_ASSERT_EQUAL(f->C_GenerateKeyPair(rw, &rsa, pub, 7, priv, 8, &hp, &hk),
                  CKR_ATTRIBUTE_VALUE_INVALID);
  priv[3].type = CKA_SENSITIVE;
  priv[6].pValue = "other";
  priv[6].ulValueLen = 5; /* label differs between the templates */
  CU_ASSERT_EQUAL(f->C_GenerateKeyPair(rw, &rsa, pub, 7, priv, 8, &hp, &hk),
                  CKR_TEMPLATE_INCONSISTENT);
  priv[6].pValue = "gen-rsa";
  priv[6].ulValueLen = 7;
  CU_ASSERT_EQUAL(f->C_GenerateKeyPair(rw, &ec, pub, 7, priv, 8, &hp, &hk),
                  CKR_TEMPLATE_INCOMPLETE); /* EC without CKA_EC_PARAMS */
  CU_ASSERT_EQUAL(count_rows(), rows + 1);

  /* EC P-256 with a minimal template: default CKA_ID, signs */
  CU_ASSERT_EQUAL_FATAL(f->C_GenerateKeyPair(rw, &ec, ec_pub, 3, ec_priv, 2, &hp, &hk), CKR_OK);
  sign_and_verify(rw, hk, hp, CKM_ECDSA_SHA256, EVP_sha256());
  {
    EVP_PKEY *k = public_of(rw, hp);
    unsigned char want[KVP_KEY_ID_LEN];
    CK_BYTE got[64];
    CK_ATTRIBUTE a = {CKA_ID, got, sizeof(got)};
    CU_ASSERT_FATAL(k != NULL);
    kvp_pubkey_id(k, want);
    CU_ASSERT_EQUAL(f->C_GetAttributeValue(rw, hk, &a, 1), CKR_OK);
    CU_ASSERT_EQUAL(a.ulValueLen, KVP_KEY_ID_LEN);
    CU_ASSERT(memcmp(got, want, KVP_KEY_ID_LEN) == 0);
    EVP_PKEY_free(k);
  }
  {
    CK_ATTRIBUTE ec_dec[] = {{CKA_DECRYPT, &yes, sizeof(yes)}, {CKA_TOKEN, &yes, sizeof(yes)}};
    ec_pub[1].pValue = "gen-ec2";
    ec_pub[1].ulValueLen = 7;
    CU_ASSERT_EQUAL(f->C_GenerateKeyPair(rw, &ec, ec_pub, 3, ec_dec, 2, &hp, &hk),
                    CKR_TEMPLATE_INCONSISTENT);
  }
  CU_ASSERT_EQUAL(count_rows(), rows + 2);
out:
  f->C_CloseSession(ro);
  f->C_CloseSession(rw);
}

/* A registry this process cannot write: CKF_WRITE_PROTECTED and refusals. */
static void test_write_protected(void)
{
  EVP_PKEY *k = EVP_EC_gen("P-256");
  size_t len = 0;
  unsigned char *der = front_cert(k, "Partner Three", 77, NULL, &len);
  CK_ATTRIBUTE t[] = {
      {CKA_CLASS, &c_cert, sizeof(c_cert)},
      {CKA_CERTIFICATE_TYPE, &x509, sizeof(x509)},
      {CKA_VALUE, der, (CK_ULONG)len},
      {CKA_TOKEN, &yes, sizeof(yes)},
  };
  CK_TOKEN_INFO ti;
  CK_SESSION_HANDLE rw;
  CK_OBJECT_HANDLE h;
  char path[700];

  /* the registry's directory does not exist: nobody can write it */
  snprintf(path, sizeof(path), "%s/missing/registry.db", dir);
  setenv("KVP11_REGISTRY", path, 1);
  f->C_Finalize(NULL);
  CU_ASSERT_EQUAL_FATAL(f->C_Initialize(NULL), CKR_OK);
  slot_plain = slot_by_label("plain");
  CU_ASSERT_EQUAL(f->C_GetTokenInfo(slot_plain, &ti), CKR_OK);
  CU_ASSERT_NOT_EQUAL(ti.flags & CKF_WRITE_PROTECTED, 0);
  CU_ASSERT_EQUAL_FATAL(
      f->C_OpenSession(slot_plain, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &rw), CKR_OK);
  CU_ASSERT_EQUAL(f->C_CreateObject(rw, t, 4, &h), CKR_TOKEN_WRITE_PROTECTED);
  /* a session certificate writes nothing: it is made all the same */
  CU_ASSERT_EQUAL(f->C_CreateObject(rw, t, 3, &h), CKR_OK);
  CU_ASSERT_EQUAL(f->C_DestroyObject(rw, h), CKR_OK);
  f->C_CloseSession(rw);
  unsetenv("KVP11_REGISTRY");
  f->C_Finalize(NULL);
  CU_ASSERT_EQUAL(f->C_Initialize(NULL), CKR_OK);
  slot_plain = slot_by_label("plain");
  slot_keys = slot_by_label("keys");
  OPENSSL_free(der);
  EVP_PKEY_free(k);
}

int main(void)
{
  static CU_TestInfo tests[] = {
      {"partner certificate: C_CreateObject, C_DestroyObject", test_partner_certificate},
      {"C_CreateObject: bad templates", test_bad_templates},
      {"key without certificate, then its certificate", test_key_then_certificate},
      {"C_GenerateKeyPair without default_store", test_generate_no_default_store},
      {"C_GenerateKeyPair in the HSM", test_generate_in_hsm},
      {"write-protected registry", test_write_protected},
      CU_TEST_INFO_NULL,
  };
  return unit_run_suite("front provisioning", suite_init, suite_clean, tests);
}
