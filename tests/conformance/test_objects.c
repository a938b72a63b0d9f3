/*
 * Object management: the certificate / public key / private key objects of every registered
 * certificate, C_GetAttributeValue rules, C_FindObjects*, and the refusals that keep private
 * keys inside the key store (C_SetAttributeValue, C_CopyObject, C_DestroyObject, C_WrapKey,
 * C_GetOperationState).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/core_names.h>
#include <openssl/objects.h>
#include <openssl/pem.h>

#include "common.h"

#define BAD_OBJECT ((CK_OBJECT_HANDLE)0x7ffff456UL)
#define BAD_SESSION ((CK_SESSION_HANDLE)0x7ffff321UL)
#define VENDOR_ATTR ((CK_ATTRIBUTE_TYPE)(CKA_VENDOR_DEFINED | 0x4b5601UL))

static bool bytes_equal(const unsigned char *a, size_t alen, const unsigned char *b, size_t blen)
{
  return a && b && alen == blen && memcmp(a, b, alen) == 0;
}

/* Compare an attribute with expected bytes; frees nothing of the caller's. */
static void check_attr_bytes(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE t,
                             const char *what, const char *name, const unsigned char *want,
                             size_t wlen)
{
  CK_ULONG len;
  CK_RV rv;
  unsigned char *v = kvpt_attr(h, o, t, &len, &rv);
  CHECK(v != NULL, "%s: %s unreadable (%s)", name, what, kvpt_rv_name(rv));
  if (v)
    CHECK(bytes_equal(v, len, want, wlen),
          "%s: %s (%lu bytes) differs from the certificate's (%zu bytes)", name, what,
          (unsigned long)len, wlen);
  free(v);
}

static void check_bool(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE t,
                       const char *what, const char *name, CK_BBOOL want)
{
  CK_BBOOL v = 0xA5;
  if (CHECK(kvpt_attr_bool(h, o, t, &v), "%s: %s unreadable", name, what))
    CHECK(v == want, "%s: %s is %u, expected %u", name, what, v, want);
}

/* The certificate file of a name from KVP11_TEST_CERTDIR (optional), for an independent check. */
static X509 *cert_from_dir(const char *name)
{
  const char *dir = getenv("KVP11_TEST_CERTDIR");
  if (!dir || !*dir)
    return NULL;
  char path[4096];
  snprintf(path, sizeof path, "%s/%s.pem", dir, name);
  FILE *f = fopen(path, "r");
  if (!f)
    return NULL;
  X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
  fclose(f);
  return x;
}

static void test_objects_per_certificate(void)
{
  CK_SESSION_HANDLE h = kvpt_open(false);
  unsigned char *ids[KVPT_MAX_CERTS] = {0};
  CK_ULONG idlen[KVPT_MAX_CERTS] = {0};
  CHECK(KVPT_NCERTS > 0, "no certificate names configured (KVP11_TEST_KEYS / KVP11_TEST_PUBLIC)");
  for (size_t i = 0; i < KVPT_NCERTS; i++) {
    const kvpt_cert *c = &KVPT_CERTS[i];
    size_t n;
    CK_ULONG len;
    CK_RV rv;
    kvpt_find_one(h, CKO_CERTIFICATE, c->name, &n);
    CHECK(n == 1, "%s: %zu certificate objects, expected 1", c->name, n);
    kvpt_find_one(h, CKO_PUBLIC_KEY, c->name, &n);
    CHECK(n == 1, "%s: %zu public key objects, expected 1", c->name, n);
    kvpt_find_one(h, CKO_PRIVATE_KEY, c->name, &n);
    CHECK(n == (c->is_private ? 1u : 0u), "%s: %zu private key objects, expected %d", c->name, n,
          c->is_private);
    if (!CHECK(c->x509 != NULL, "%s: certificate CKA_VALUE is not a DER X.509 certificate",
               c->name))
      continue;

    CK_ULONG ctype = 0xffff;
    if (CHECK(kvpt_attr_ulong(h, c->cert, CKA_CERTIFICATE_TYPE, &ctype),
              "%s: no CKA_CERTIFICATE_TYPE", c->name))
      CHECK(ctype == CKC_X_509, "%s: CKA_CERTIFICATE_TYPE %lu, expected CKC_X_509", c->name,
            (unsigned long)ctype);
    check_bool(h, c->cert, CKA_TOKEN, "certificate CKA_TOKEN", c->name, CK_TRUE);

    unsigned char *der = NULL;
    int dlen = i2d_X509_NAME(X509_get_subject_name(c->x509), &der);
    check_attr_bytes(h, c->cert, CKA_SUBJECT, "CKA_SUBJECT", c->name, der,
                     dlen > 0 ? (size_t)dlen : 0);
    OPENSSL_free(der);
    der = NULL;
    dlen = i2d_X509_NAME(X509_get_issuer_name(c->x509), &der);
    check_attr_bytes(h, c->cert, CKA_ISSUER, "CKA_ISSUER", c->name, der,
                     dlen > 0 ? (size_t)dlen : 0);
    OPENSSL_free(der);
    der = NULL;
    dlen = i2d_ASN1_INTEGER(X509_get_serialNumber(c->x509), &der);
    check_attr_bytes(h, c->cert, CKA_SERIAL_NUMBER, "CKA_SERIAL_NUMBER", c->name, der,
                     dlen > 0 ? (size_t)dlen : 0);
    OPENSSL_free(der);

    X509 *file = cert_from_dir(c->name);
    if (file) {
      CHECK(X509_cmp(file, c->x509) == 0, "%s: certificate object differs from %s/%s.pem", c->name,
            getenv("KVP11_TEST_CERTDIR"), c->name);
      X509_free(file);
    }

    /* CKA_LABEL = the name on all objects; CKA_ID equal and non-empty across them. */
    CK_OBJECT_HANDLE objs[3] = {c->cert, c->pub, c->priv};
    const char *what[3] = {"certificate", "public key", "private key"};
    ids[i] = kvpt_attr(h, c->cert, CKA_ID, &idlen[i], &rv);
    CHECK(ids[i] && idlen[i] > 0, "%s: certificate CKA_ID empty or unreadable (%s)", c->name,
          kvpt_rv_name(rv));
    for (size_t k = 0; k < 3; k++) {
      if (objs[k] == CK_INVALID_HANDLE)
        continue;
      check_attr_bytes(h, objs[k], CKA_LABEL, what[k], c->name, (const unsigned char *)c->name,
                       strlen(c->name));
      unsigned char *id = kvpt_attr(h, objs[k], CKA_ID, &len, &rv);
      CHECK(bytes_equal(id, len, ids[i], idlen[i]), "%s: %s CKA_ID differs from the certificate's",
            c->name, what[k]);
      free(id);
    }
  }
  for (size_t i = 0; i < KVPT_NCERTS; i++)
    for (size_t j = 0; j < i; j++)
      if (ids[i] && ids[j])
        CHECK(!bytes_equal(ids[i], idlen[i], ids[j], idlen[j]), "%s and %s share a CKA_ID",
              KVPT_CERTS[i].name, KVPT_CERTS[j].name);
  for (size_t i = 0; i < KVPT_NCERTS; i++)
    free(ids[i]);
  kvpt_close(h);
}

static unsigned char *bn_param(EVP_PKEY *pk, const char *param, size_t *len)
{
  BIGNUM *bn = NULL;
  unsigned char *out = NULL;
  if (!EVP_PKEY_get_bn_param(pk, param, &bn))
    return NULL;
  *len = (size_t)BN_num_bytes(bn);
  out = malloc(*len ? *len : 1);
  if (out)
    BN_bn2bin(bn, out);
  BN_free(bn);
  return out;
}

/* A PKCS#11 big integer without leading zero bytes, for comparison. */
static void strip_zeros(unsigned char **p, CK_ULONG *len)
{
  while (*len > 1 && (*p)[0] == 0) {
    (*p)++;
    (*len)--;
  }
}

static void check_rsa_key(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE o, const kvpt_cert *c,
                          const char *what)
{
  static const struct {
    CK_ATTRIBUTE_TYPE t;
    const char *ossl;
    const char *name;
  } parts[] = {{CKA_MODULUS, OSSL_PKEY_PARAM_RSA_N, "CKA_MODULUS"},
               {CKA_PUBLIC_EXPONENT, OSSL_PKEY_PARAM_RSA_E, "CKA_PUBLIC_EXPONENT"}};
  for (size_t i = 0; i < 2; i++) {
    size_t wlen = 0;
    unsigned char *want = bn_param(c->pkey, parts[i].ossl, &wlen);
    CK_ULONG len;
    CK_RV rv;
    unsigned char *got = kvpt_attr(h, o, parts[i].t, &len, &rv);
    if (CHECK(got != NULL, "%s: %s %s unreadable (%s)", c->name, what, parts[i].name,
              kvpt_rv_name(rv))) {
      unsigned char *g = got;
      strip_zeros(&g, &len);
      CHECK(bytes_equal(g, len, want, wlen), "%s: %s %s differs from the certificate's", c->name,
            what, parts[i].name);
    }
    free(got);
    free(want);
  }
  if (o == c->pub) {
    CK_ULONG bits = 0;
    if (kvpt_attr_ulong(h, o, CKA_MODULUS_BITS, &bits))
      CHECK(bits == (CK_ULONG)c->bits, "%s: CKA_MODULUS_BITS %lu, expected %d", c->name,
            (unsigned long)bits, c->bits);
  }
}

static void check_ec_key(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE o, const kvpt_cert *c,
                         const char *what, bool point)
{
  char group[80] = "";
  unsigned char *oid = NULL, *os_der = NULL;
  int oidlen = 0, oslen = 0;
  if (EVP_PKEY_get_utf8_string_param(c->pkey, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof group,
                                     NULL)) {
    int nid = OBJ_txt2nid(group);
    if (nid == NID_undef)
      nid = EC_curve_nist2nid(group);
    ASN1_OBJECT *obj = OBJ_nid2obj(nid);
    if (obj)
      oidlen = i2d_ASN1_OBJECT(obj, &oid);
  }
  check_attr_bytes(h, o, CKA_EC_PARAMS, "CKA_EC_PARAMS (namedCurve OID)", c->name, oid,
                   oidlen > 0 ? (size_t)oidlen : 0);
  if (point) {
    /* 2.40: CKA_EC_POINT is the DER encoding of the ECPoint, i.e. an OCTET STRING. */
    unsigned char pub[256];
    size_t plen = 0;
    ASN1_OCTET_STRING *os = ASN1_OCTET_STRING_new();
    if (os &&
        EVP_PKEY_get_octet_string_param(c->pkey, OSSL_PKEY_PARAM_PUB_KEY, pub, sizeof pub, &plen) &&
        ASN1_OCTET_STRING_set(os, pub, (int)plen))
      oslen = i2d_ASN1_OCTET_STRING(os, &os_der);
    ASN1_OCTET_STRING_free(os);
    check_attr_bytes(h, o, CKA_EC_POINT, "CKA_EC_POINT (DER OCTET STRING)", c->name, os_der,
                     oslen > 0 ? (size_t)oslen : 0);
  }
  (void)what;
  OPENSSL_free(oid);
  OPENSSL_free(os_der);
}

static void test_public_key_matches_certificate(void)
{
  CK_SESSION_HANDLE h = kvpt_open(false);
  for (size_t i = 0; i < KVPT_NCERTS; i++) {
    const kvpt_cert *c = &KVPT_CERTS[i];
    if (!c->pkey || c->pub == CK_INVALID_HANDLE)
      continue;
    CK_OBJECT_HANDLE objs[2] = {c->pub, c->priv};
    const char *what[2] = {"public key", "private key"};
    for (size_t k = 0; k < 2; k++) {
      CK_ULONG kt = 0xffff;
      if (objs[k] == CK_INVALID_HANDLE)
        continue;
      if (CHECK(kvpt_attr_ulong(h, objs[k], CKA_KEY_TYPE, &kt), "%s: %s has no CKA_KEY_TYPE",
                c->name, what[k]))
        CHECK(kt == (c->is_rsa ? CKK_RSA : CKK_EC),
              "%s: %s CKA_KEY_TYPE %lu does not match the certificate", c->name, what[k],
              (unsigned long)kt);
      check_bool(h, objs[k], CKA_TOKEN, "CKA_TOKEN", c->name, CK_TRUE);
      /* The public parts of the private key must match too (2.40 lists them on private keys). */
      if (c->is_rsa)
        check_rsa_key(h, objs[k], c, what[k]);
      else if (c->is_ec)
        check_ec_key(h, objs[k], c, what[k], k == 0);
    }
    /* CKA_PUBLIC_KEY_INFO (2.40), where given, is the certificate's SubjectPublicKeyInfo. */
    unsigned char *spki = NULL;
    int spkilen = i2d_PUBKEY(c->pkey, &spki);
    for (size_t k = 0; k < 2; k++) {
      CK_ULONG len;
      CK_RV rv;
      if (objs[k] == CK_INVALID_HANDLE)
        continue;
      unsigned char *v = kvpt_attr(h, objs[k], CKA_PUBLIC_KEY_INFO, &len, &rv);
      if (v && len > 0)
        CHECK(spkilen > 0 && bytes_equal(v, len, spki, (size_t)spkilen),
              "%s: %s CKA_PUBLIC_KEY_INFO differs from the certificate's SubjectPublicKeyInfo",
              c->name, what[k]);
      free(v);
    }
    OPENSSL_free(spki);
    check_bool(h, c->pub, CKA_VERIFY, "public key CKA_VERIFY", c->name, CK_TRUE);
    if (c->is_rsa)
      check_bool(h, c->pub, CKA_ENCRYPT, "public key CKA_ENCRYPT", c->name, CK_TRUE);
  }
  kvpt_close(h);
}

static void test_private_key_attributes(void)
{
  CK_SESSION_HANDLE h = kvpt_open(false);
  for (size_t i = 0; i < KVPT_NCERTS; i++) {
    const kvpt_cert *c = &KVPT_CERTS[i];
    if (!c->is_private || c->priv == CK_INVALID_HANDLE)
      continue;
    check_bool(h, c->priv, CKA_SENSITIVE, "CKA_SENSITIVE", c->name, CK_TRUE);
    check_bool(h, c->priv, CKA_ALWAYS_SENSITIVE, "CKA_ALWAYS_SENSITIVE", c->name, CK_TRUE);
    check_bool(h, c->priv, CKA_NEVER_EXTRACTABLE, "CKA_NEVER_EXTRACTABLE", c->name, CK_TRUE);
    check_bool(h, c->priv, CKA_EXTRACTABLE, "CKA_EXTRACTABLE", c->name, CK_FALSE);
    check_bool(h, c->priv, CKA_SIGN, "CKA_SIGN", c->name, CK_TRUE);
    /* The suite signs without context-specific login, so it must be false. */
    check_bool(h, c->priv, CKA_ALWAYS_AUTHENTICATE, "CKA_ALWAYS_AUTHENTICATE", c->name, CK_FALSE);
    check_bool(h, c->priv, CKA_DECRYPT, "CKA_DECRYPT", c->name, c->is_rsa ? CK_TRUE : CK_FALSE);
    /* Private objects (CKA_PRIVATE true) are visible only to a logged-in user (2.40 4.4). */
    CK_BBOOL priv = CK_FALSE;
    CK_SESSION_INFO si;
    if (kvpt_attr_bool(h, c->priv, CKA_PRIVATE, &priv) && priv == CK_TRUE &&
        P11->C_GetSessionInfo(h, &si) == CKR_OK)
      CHECK(si.state != CKS_RO_PUBLIC_SESSION && si.state != CKS_RW_PUBLIC_SESSION,
            "%s: private key has CKA_PRIVATE true but is visible to a public session", c->name);
  }
  kvpt_close(h);
}

static void check_sensitive(CK_SESSION_HANDLE h, const kvpt_cert *c, CK_ATTRIBUTE_TYPE t,
                            const char *what)
{
  unsigned char buf[1024];
  CK_ATTRIBUTE a = KVPT_ATTR(t, NULL, 0);
  CHECK_RV(P11->C_GetAttributeValue(h, c->priv, &a, 1), CKR_ATTRIBUTE_SENSITIVE);
  CHECK(a.ulValueLen == CK_UNAVAILABLE_INFORMATION,
        "%s: %s size query ulValueLen %lu, expected "
        "CK_UNAVAILABLE_INFORMATION",
        c->name, what, (unsigned long)a.ulValueLen);
  a.pValue = buf;
  a.ulValueLen = sizeof buf;
  memset(buf, 0, sizeof buf);
  CHECK_RV(P11->C_GetAttributeValue(h, c->priv, &a, 1), CKR_ATTRIBUTE_SENSITIVE);
  CHECK(a.ulValueLen == CK_UNAVAILABLE_INFORMATION,
        "%s: %s ulValueLen %lu, expected CK_UNAVAILABLE_INFORMATION", c->name, what,
        (unsigned long)a.ulValueLen);
  size_t nz = 0;
  for (size_t i = 0; i < sizeof buf; i++)
    nz += buf[i] != 0;
  CHECK(nz == 0, "%s: %s: %zu bytes written into the buffer of a sensitive attribute", c->name,
        what, nz);
}

static void test_sensitive_attributes(void)
{
  CK_SESSION_HANDLE h = kvpt_open(false);
  bool any = false;
  for (size_t i = 0; i < KVPT_NCERTS; i++) {
    const kvpt_cert *c = &KVPT_CERTS[i];
    if (!c->is_private || c->priv == CK_INVALID_HANDLE)
      continue;
    any = true;
    if (c->is_rsa) {
      check_sensitive(h, c, CKA_PRIVATE_EXPONENT, "CKA_PRIVATE_EXPONENT");
      check_sensitive(h, c, CKA_PRIME_1, "CKA_PRIME_1");
      check_sensitive(h, c, CKA_PRIME_2, "CKA_PRIME_2");
      check_sensitive(h, c, CKA_EXPONENT_1, "CKA_EXPONENT_1");
      check_sensitive(h, c, CKA_EXPONENT_2, "CKA_EXPONENT_2");
      check_sensitive(h, c, CKA_COEFFICIENT, "CKA_COEFFICIENT");
    } else {
      check_sensitive(h, c, CKA_VALUE, "CKA_VALUE");
    }
    /* Mixed with a readable attribute: still CKR_ATTRIBUTE_SENSITIVE and the label is returned. */
    char label[128] = "";
    unsigned char secret[1024];
    CK_ATTRIBUTE t[] = {
        KVPT_ATTR(CKA_LABEL, label, sizeof label - 1),
        KVPT_ATTR(c->is_rsa ? CKA_PRIVATE_EXPONENT : CKA_VALUE, secret, sizeof secret),
    };
    CHECK_RV(P11->C_GetAttributeValue(h, c->priv, t, 2), CKR_ATTRIBUTE_SENSITIVE);
    CHECK(t[0].ulValueLen == strlen(c->name) && memcmp(label, c->name, strlen(c->name)) == 0,
          "%s: CKA_LABEL not returned next to a sensitive attribute", c->name);
    CHECK(t[1].ulValueLen == CK_UNAVAILABLE_INFORMATION, "%s: sensitive ulValueLen %lu", c->name,
          (unsigned long)t[1].ulValueLen);
  }
  CHECK(any, "no private key to test");
  kvpt_close(h);
}

static void test_get_attribute_rules(void)
{
  CK_SESSION_HANDLE h = kvpt_open(false);
  const kvpt_cert *c = KVPT_NCERTS ? &KVPT_CERTS[0] : NULL;
  if (!CHECK(c && c->cert != CK_INVALID_HANDLE, "no certificate object"))
    goto out;
  size_t nlen = strlen(c->name);
  CK_ULONG idlen = 0;
  CK_RV rv;
  unsigned char *id = kvpt_attr(h, c->cert, CKA_ID, &idlen, &rv);
  if (!CHECK(id != NULL, "CKA_ID unreadable: %s", kvpt_rv_name(rv)))
    goto out;

  /* pValue NULL: length only. */
  CK_ATTRIBUTE q[] = {KVPT_ATTR(CKA_LABEL, NULL, 0), KVPT_ATTR(CKA_ID, NULL, 12345)};
  CHECK_RV(P11->C_GetAttributeValue(h, c->cert, q, 2), CKR_OK);
  CHECK(q[0].ulValueLen == nlen, "CKA_LABEL size query %lu, expected %zu",
        (unsigned long)q[0].ulValueLen, nlen);
  CHECK(q[1].ulValueLen == idlen, "CKA_ID size query %lu, expected %lu",
        (unsigned long)q[1].ulValueLen, (unsigned long)idlen);

  /* Exact-size buffer: CKR_OK. */
  char label[128];
  CK_ATTRIBUTE e = KVPT_ATTR(CKA_LABEL, label, nlen);
  CHECK_RV(P11->C_GetAttributeValue(h, c->cert, &e, 1), CKR_OK);

  /* Too small: CKR_BUFFER_TOO_SMALL, that ulValueLen unavailable, the others still processed. */
  unsigned char idbuf[256];
  CK_OBJECT_CLASS cls = 0xffff;
  CK_ATTRIBUTE s[] = {
      KVPT_ATTR(CKA_LABEL, label, nlen - 1),
      KVPT_ATTR(CKA_ID, idbuf, sizeof idbuf),
      KVPT_ATTR(CKA_CLASS, &cls, sizeof cls),
  };
  memset(idbuf, 0, sizeof idbuf);
  CHECK_RV(P11->C_GetAttributeValue(h, c->cert, s, 3), CKR_BUFFER_TOO_SMALL);
  CHECK(s[0].ulValueLen == CK_UNAVAILABLE_INFORMATION,
        "too-small CKA_LABEL ulValueLen %lu, expected "
        "CK_UNAVAILABLE_INFORMATION",
        (unsigned long)s[0].ulValueLen);
  CHECK(bytes_equal(idbuf, s[1].ulValueLen, id, idlen),
        "CKA_ID not returned next to a too-small attribute");
  CHECK(cls == CKO_CERTIFICATE && s[2].ulValueLen == sizeof cls,
        "CKA_CLASS not returned next to a too-small "
        "attribute");

  /* Invalid type for the object: CKR_ATTRIBUTE_TYPE_INVALID, the others still processed. */
  unsigned char mod[1024];
  CK_ATTRIBUTE t[] = {
      KVPT_ATTR(CKA_MODULUS, mod, sizeof mod),
      KVPT_ATTR(CKA_LABEL, label, sizeof label),
      KVPT_ATTR(VENDOR_ATTR, mod, sizeof mod),
  };
  memset(label, 0, sizeof label);
  CHECK_RV(P11->C_GetAttributeValue(h, c->cert, t, 3), CKR_ATTRIBUTE_TYPE_INVALID);
  CHECK(t[0].ulValueLen == CK_UNAVAILABLE_INFORMATION,
        "CKA_MODULUS of a certificate: ulValueLen %lu", (unsigned long)t[0].ulValueLen);
  CHECK(t[2].ulValueLen == CK_UNAVAILABLE_INFORMATION, "vendor attribute: ulValueLen %lu",
        (unsigned long)t[2].ulValueLen);
  CHECK(t[1].ulValueLen == nlen && memcmp(label, c->name, nlen) == 0,
        "CKA_LABEL not returned next to an invalid "
        "attribute");

  /* Several cases at once: any of the applicable codes (2.40 5.7: "Cryptoki may return any of
   * them"),
   * and every attribute processed. */
  CK_ATTRIBUTE m[] = {
      KVPT_ATTR(CKA_LABEL, label, 1),
      KVPT_ATTR(VENDOR_ATTR, mod, sizeof mod),
      KVPT_ATTR(CKA_ID, idbuf, sizeof idbuf),
  };
  memset(idbuf, 0, sizeof idbuf);
  CHECK_RV_IN(P11->C_GetAttributeValue(h, c->cert, m, 3), CKR_BUFFER_TOO_SMALL,
              CKR_ATTRIBUTE_TYPE_INVALID);
  CHECK(m[0].ulValueLen == CK_UNAVAILABLE_INFORMATION &&
            m[1].ulValueLen == CK_UNAVAILABLE_INFORMATION,
        "mixed template: ulValueLen %lu / %lu, expected CK_UNAVAILABLE_INFORMATION",
        (unsigned long)m[0].ulValueLen, (unsigned long)m[1].ulValueLen);
  CHECK(bytes_equal(idbuf, m[2].ulValueLen, id, idlen), "mixed template: CKA_ID not returned");

  const kvpt_cert *k = kvpt_first_rsa(0) ? kvpt_first_rsa(0) : kvpt_first_ec(0);
  if (k) {
    CK_ATTRIBUTE p[] = {
        KVPT_ATTR(k->is_rsa ? CKA_PRIVATE_EXPONENT : CKA_VALUE, mod, sizeof mod),
        KVPT_ATTR(VENDOR_ATTR, mod, sizeof mod),
        KVPT_ATTR(CKA_LABEL, label, 1),
        KVPT_ATTR(CKA_CLASS, &cls, sizeof cls),
    };
    cls = 0xffff;
    CHECK_RV_IN(P11->C_GetAttributeValue(h, k->priv, p, 4), CKR_ATTRIBUTE_SENSITIVE,
                CKR_ATTRIBUTE_TYPE_INVALID, CKR_BUFFER_TOO_SMALL);
    CHECK(p[0].ulValueLen == CK_UNAVAILABLE_INFORMATION &&
              p[1].ulValueLen == CK_UNAVAILABLE_INFORMATION &&
              p[2].ulValueLen == CK_UNAVAILABLE_INFORMATION,
          "mixed private-key template: ulValueLen %lu / %lu / %lu, expected "
          "CK_UNAVAILABLE_INFORMATION",
          (unsigned long)p[0].ulValueLen, (unsigned long)p[1].ulValueLen,
          (unsigned long)p[2].ulValueLen);
    CHECK(cls == CKO_PRIVATE_KEY, "mixed private-key template: CKA_CLASS not returned");
  }

  /* Bad handles and arguments. */
  CK_ATTRIBUTE one = KVPT_ATTR(CKA_LABEL, NULL, 0);
  CHECK_RV(P11->C_GetAttributeValue(h, BAD_OBJECT, &one, 1), CKR_OBJECT_HANDLE_INVALID);
  CHECK_RV(P11->C_GetAttributeValue(h, CK_INVALID_HANDLE, &one, 1), CKR_OBJECT_HANDLE_INVALID);
  CHECK_RV(P11->C_GetAttributeValue(BAD_SESSION, c->cert, &one, 1), CKR_SESSION_HANDLE_INVALID);
  CHECK_RV(P11->C_GetAttributeValue(h, c->cert, NULL, 1), CKR_ARGUMENTS_BAD);
  free(id);
out:
  kvpt_close(h);
}

/* Is x among the n handles of set? */
static bool in_set(CK_OBJECT_HANDLE x, const CK_OBJECT_HANDLE *set, size_t n)
{
  for (size_t i = 0; i < n; i++)
    if (set[i] == x)
      return true;
  return false;
}

#define MAXOBJ 1024

static void test_find_templates(void)
{
  CK_SESSION_HANDLE h = kvpt_open(false);
  CK_OBJECT_HANDLE *all = calloc(MAXOBJ, sizeof *all), *got = calloc(MAXOBJ, sizeof *got);
  if (!all || !got)
    goto out;

  /* Empty template: every object, including every expected one. */
  size_t nall = kvpt_find(h, NULL, 0, all, MAXOBJ);
  size_t expected = 0;
  for (size_t i = 0; i < KVPT_NCERTS; i++) {
    const kvpt_cert *c = &KVPT_CERTS[i];
    expected += c->is_private ? 3 : 2;
    CHECK(in_set(c->cert, all, nall) && in_set(c->pub, all, nall) &&
              (!c->is_private || in_set(c->priv, all, nall)),
          "%s: objects missing from the empty-template search", c->name);
  }
  CHECK(nall >= expected, "empty template found %zu objects, expected at least %zu", nall,
        expected);
  for (size_t i = 0; i < nall && i < MAXOBJ; i++)
    for (size_t j = 0; j < i; j++)
      if (!CHECK(all[i] != all[j], "object handle %lu returned twice", (unsigned long)all[i]))
        break;

  /* By class. */
  CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
  CK_ATTRIBUTE bycls = KVPT_ATTR(CKA_CLASS, &cls, sizeof cls);
  size_t n = kvpt_find(h, &bycls, 1, got, MAXOBJ);
  for (size_t i = 0; i < KVPT_NCERTS; i++)
    CHECK(in_set(KVPT_CERTS[i].cert, got, n), "%s: certificate not found by class",
          KVPT_CERTS[i].name);
  for (size_t i = 0; i < n && i < MAXOBJ; i++) {
    CK_ULONG v = 0xffff;
    CHECK(kvpt_attr_ulong(h, got[i], CKA_CLASS, &v) && v == CKO_CERTIFICATE,
          "class search returned class %lu", (unsigned long)v);
  }
  cls = CKO_SECRET_KEY;
  CHECK(kvpt_find(h, &bycls, 1, NULL, 0) == 0, "objects of class CKO_SECRET_KEY found");

  for (size_t i = 0; i < KVPT_NCERTS; i++) {
    const kvpt_cert *c = &KVPT_CERTS[i];
    size_t want = c->is_private ? 3 : 2;
    /* By label. */
    CK_ATTRIBUTE bylabel = KVPT_ATTR(CKA_LABEL, (void *)c->name, strlen(c->name));
    n = kvpt_find(h, &bylabel, 1, got, MAXOBJ);
    CHECK(n == want, "%s: label search found %zu objects, expected %zu", c->name, n, want);
    CHECK(in_set(c->cert, got, n) && in_set(c->pub, got, n), "%s: label search misses objects",
          c->name);
    /* By id. */
    CK_ULONG idlen;
    CK_RV rv;
    unsigned char *id = kvpt_attr(h, c->cert, CKA_ID, &idlen, &rv);
    if (id) {
      CK_ATTRIBUTE byid = KVPT_ATTR(CKA_ID, id, idlen);
      n = kvpt_find(h, &byid, 1, got, MAXOBJ);
      CHECK(n == want, "%s: id search found %zu objects, expected %zu", c->name, n, want);
      CHECK(in_set(c->cert, got, n) && in_set(c->pub, got, n) &&
                (!c->is_private || in_set(c->priv, got, n)),
            "%s: id search misses objects", c->name);
      /* Class + id + label: exactly the one object. */
      CK_OBJECT_CLASS pc = CKO_PUBLIC_KEY;
      CK_ATTRIBUTE three[] = {KVPT_ATTR(CKA_CLASS, &pc, sizeof pc), byid, bylabel};
      n = kvpt_find(h, three, 3, got, MAXOBJ);
      CHECK(n == 1 && got[0] == c->pub, "%s: class+id+label search found %zu objects", c->name, n);
      free(id);
    }
    /* A public certificate has no private key. */
    if (!c->is_private) {
      CK_OBJECT_CLASS pk = CKO_PRIVATE_KEY;
      CK_ATTRIBUTE t[] = {KVPT_ATTR(CKA_CLASS, &pk, sizeof pk), bylabel};
      CHECK(kvpt_find(h, t, 2, NULL, 0) == 0, "%s: private key found for a public certificate",
            c->name);
    }
  }

  /* By key type. */
  CK_OBJECT_CLASS pk = CKO_PRIVATE_KEY;
  CK_KEY_TYPE kt = CKK_RSA;
  CK_ATTRIBUTE bykt[] = {KVPT_ATTR(CKA_CLASS, &pk, sizeof pk),
                         KVPT_ATTR(CKA_KEY_TYPE, &kt, sizeof kt)};
  for (int pass = 0; pass < 2; pass++) {
    kt = pass ? CKK_EC : CKK_RSA;
    n = kvpt_find(h, bykt, 2, got, MAXOBJ);
    for (size_t i = 0; i < KVPT_NCERTS; i++) {
      const kvpt_cert *c = &KVPT_CERTS[i];
      if (!c->is_private || c->priv == CK_INVALID_HANDLE)
        continue;
      bool want = pass ? c->is_ec : c->is_rsa;
      CHECK(in_set(c->priv, got, n) == want, "%s: key type %s search %s it", c->name,
            pass ? "CKK_EC" : "CKK_RSA", want ? "misses" : "returns");
    }
  }

  /* Nothing matches. */
  static const char nothing[] = "kvp11-conformance-no-such-object";
  CK_ATTRIBUTE none = KVPT_ATTR(CKA_LABEL, (void *)nothing, sizeof nothing - 1);
  CHECK(kvpt_find(h, &none, 1, NULL, 0) == 0, "label \"%s\" matched objects", nothing);
  CK_BYTE junk[4] = {1, 2, 3, 4};
  CK_ATTRIBUTE vendor = KVPT_ATTR(VENDOR_ATTR, junk, sizeof junk);
  CHECK(kvpt_find(h, &vendor, 1, NULL, 0) == 0, "an unknown attribute matched objects");
  CHECK_RV(P11->C_FindObjectsInit(h, NULL, 1), CKR_ARGUMENTS_BAD);
  (void)P11->C_FindObjectsFinal(h);
  /* No session objects exist: CKA_TOKEN false matches nothing, CKA_TOKEN true everything. */
  CK_BBOOL no = CK_FALSE, yes = CK_TRUE;
  CK_ATTRIBUTE tok = KVPT_ATTR(CKA_TOKEN, &no, sizeof no);
  CHECK(kvpt_find(h, &tok, 1, NULL, 0) == 0, "session objects found (CKA_TOKEN false)");
  tok.pValue = &yes;
  n = kvpt_find(h, &tok, 1, NULL, 0);
  CHECK(n == nall, "CKA_TOKEN true found %zu objects, the empty template %zu", n, nall);
  /* Malformed values: no match or a refusal, never an over-read (ASan) or a crash. */
  unsigned char one_byte = (unsigned char)CKO_CERTIFICATE;
  CK_ATTRIBUTE shortcls = KVPT_ATTR(CKA_CLASS, &one_byte, 1);
  CK_RV rv = P11->C_FindObjectsInit(h, &shortcls, 1);
  CHECK(rv == CKR_OK || rv == CKR_ATTRIBUTE_VALUE_INVALID || rv == CKR_TEMPLATE_INCONSISTENT,
        "1-byte CKA_CLASS in a search template: %s", kvpt_rv_name(rv));
  if (rv == CKR_OK) {
    CK_ULONG cnt = 99;
    CHECK_RV(P11->C_FindObjects(h, got, MAXOBJ, &cnt), CKR_OK);
    CHECK(cnt == 0, "1-byte CKA_CLASS matched %lu objects", (unsigned long)cnt);
    CHECK_RV(P11->C_FindObjectsFinal(h), CKR_OK);
  }
  CK_ATTRIBUTE nullval = KVPT_ATTR(CKA_LABEL, NULL, 5);
  rv = P11->C_FindObjectsInit(h, &nullval, 1);
  CHECK(rv == CKR_OK || rv == CKR_ARGUMENTS_BAD || rv == CKR_ATTRIBUTE_VALUE_INVALID,
        "CKA_LABEL with pValue NULL and length 5 in a search template: %s", kvpt_rv_name(rv));
  if (rv == CKR_OK) {
    CK_ULONG cnt = 99;
    CHECK_RV(P11->C_FindObjects(h, got, MAXOBJ, &cnt), CKR_OK);
    CHECK(cnt == 0, "CKA_LABEL with a NULL value matched %lu objects", (unsigned long)cnt);
    CHECK_RV(P11->C_FindObjectsFinal(h), CKR_OK);
  }
  static char longlabel[4096];
  memset(longlabel, 'x', sizeof longlabel);
  CK_ATTRIBUTE lng = KVPT_ATTR(CKA_LABEL, longlabel, sizeof longlabel);
  CHECK(kvpt_find(h, &lng, 1, NULL, 0) == 0, "a 4096-byte label matched objects");
out:
  free(all);
  free(got);
  kvpt_close(h);
}

static void test_find_chunking(void)
{
  CK_SESSION_HANDLE h = kvpt_open(false);
  CK_OBJECT_HANDLE *all = calloc(MAXOBJ, sizeof *all), *one = calloc(MAXOBJ, sizeof *one);
  if (!all || !one)
    goto out;
  size_t nall = kvpt_find(h, NULL, 0, all, MAXOBJ);
  size_t n = 0;
  if (!CHECK_RV(P11->C_FindObjectsInit(h, NULL, 0), CKR_OK))
    goto out;
  for (;;) {
    CK_OBJECT_HANDLE o[2] = {CK_INVALID_HANDLE, 0x5a5a5a5a};
    CK_ULONG got = 99;
    if (!CHECK_RV(P11->C_FindObjects(h, o, 1, &got), CKR_OK))
      break;
    if (got == 0)
      break;
    CHECK(got == 1, "ulMaxObjectCount 1 returned %lu objects", (unsigned long)got);
    CHECK(o[1] == 0x5a5a5a5a, "C_FindObjects wrote past ulMaxObjectCount");
    if (n < MAXOBJ)
      one[n] = o[0];
    if (++n > MAXOBJ)
      break;
  }
  CHECK_RV(P11->C_FindObjectsFinal(h), CKR_OK);
  CHECK(n == nall, "one-by-one search found %zu objects, one call found %zu", n, nall);
  for (size_t i = 0; i < n && i < MAXOBJ; i++) {
    CHECK(in_set(one[i], all, nall), "one-by-one search returned an unknown handle %lu",
          (unsigned long)one[i]);
    for (size_t j = 0; j < i; j++)
      CHECK(one[i] != one[j], "one-by-one search returned handle %lu twice", (unsigned long)one[i]);
  }
out:
  free(all);
  free(one);
  kvpt_close(h);
}

static void test_find_state(void)
{
  CK_SESSION_HANDLE a = kvpt_open(false), b = kvpt_open(false);
  CK_OBJECT_HANDLE o[4];
  CK_ULONG got = 0;
  CHECK_RV(P11->C_FindObjects(a, o, 4, &got), CKR_OPERATION_NOT_INITIALIZED);
  CHECK_RV(P11->C_FindObjectsFinal(a), CKR_OPERATION_NOT_INITIALIZED);
  CHECK_RV(P11->C_FindObjectsInit(BAD_SESSION, NULL, 0), CKR_SESSION_HANDLE_INVALID);
  if (CHECK_RV(P11->C_FindObjectsInit(a, NULL, 0), CKR_OK)) {
    CHECK_RV(P11->C_FindObjectsInit(a, NULL, 0), CKR_OPERATION_ACTIVE);
    /* The search of one session is not the other's. */
    CHECK_RV(P11->C_FindObjects(b, o, 4, &got), CKR_OPERATION_NOT_INITIALIZED);
    CHECK_RV(P11->C_FindObjectsInit(b, NULL, 0), CKR_OK);
    CHECK_RV(P11->C_FindObjects(a, NULL, 4, &got), CKR_ARGUMENTS_BAD);
    CHECK_RV(P11->C_FindObjects(a, o, 4, NULL), CKR_ARGUMENTS_BAD);
    /* The first search is still usable after the refused second C_FindObjectsInit. */
    CHECK_RV(P11->C_FindObjects(a, o, 4, &got), CKR_OK);
    CHECK(got >= 1, "active search returned %lu objects", (unsigned long)got);
    CHECK_RV(P11->C_FindObjectsFinal(a), CKR_OK);
    CHECK_RV(P11->C_FindObjectsFinal(b), CKR_OK);
  }
  CHECK_RV(P11->C_FindObjects(a, o, 4, &got), CKR_OPERATION_NOT_INITIALIZED);
  CHECK_RV(P11->C_FindObjectsFinal(a), CKR_OPERATION_NOT_INITIALIZED);
  kvpt_close(a);
  kvpt_close(b);
}

/* Token object handles are valid in every session of the application. */
static void test_handles_across_sessions(void)
{
  CK_SESSION_HANDLE a = kvpt_open(false), b = kvpt_open(true);
  for (size_t i = 0; i < KVPT_NCERTS; i++) {
    size_t n;
    const kvpt_cert *c = &KVPT_CERTS[i];
    /* 2.40 2.4: if one session can use a handle to reach an object, every session of the
     * application can use that handle to reach the same object. */
    CK_OBJECT_HANDLE x = kvpt_find_one(a, CKO_PUBLIC_KEY, c->name, &n);
    if (x == CK_INVALID_HANDLE)
      continue;
    char label[128] = "";
    CK_ATTRIBUTE t = KVPT_ATTR(CKA_LABEL, label, sizeof label - 1);
    CHECK_RV(P11->C_GetAttributeValue(b, x, &t, 1), CKR_OK);
    CHECK(strcmp(label, c->name) == 0, "%s: handle from another session reaches \"%s\"", c->name,
          label);
  }
  kvpt_close(a);
  kvpt_close(b);
}

static void test_object_size(void)
{
  CK_SESSION_HANDLE h = kvpt_open(false);
  CK_ULONG size = 0;
  if (KVPT_NCERTS) {
    CHECK_RV_IN(P11->C_GetObjectSize(h, KVPT_CERTS[0].cert, &size), CKR_OK,
                CKR_FUNCTION_NOT_SUPPORTED, CKR_INFORMATION_SENSITIVE);
    CHECK_RV_IN(P11->C_GetObjectSize(h, BAD_OBJECT, &size), CKR_OBJECT_HANDLE_INVALID,
                CKR_FUNCTION_NOT_SUPPORTED);
  }
  kvpt_close(h);
}

/* Anything that would weaken or copy a private key is refused, and the key is unchanged. */
/* CKR_ACTION_PROHIBITED means the object's CKA_MODIFIABLE / CKA_COPYABLE / CKA_DESTROYABLE is
 * false (2.40 4.4); where the module gave it, the attribute must say so. */
static void prohibited_means_false(CK_SESSION_HANDLE h, const kvpt_cert *c, CK_RV rv,
                                   CK_ATTRIBUTE_TYPE t, const char *what)
{
  CK_BBOOL v = CK_FALSE;
  if (rv == CKR_ACTION_PROHIBITED && kvpt_attr_bool(h, c->priv, t, &v))
    CHECK(v == CK_FALSE, "%s: CKR_ACTION_PROHIBITED but %s is true", c->name, what);
}

static void test_private_key_not_modifiable(void)
{
  CK_SESSION_HANDLE rw = kvpt_open(true), ro = kvpt_open(false);
  bool any = false;
  for (size_t i = 0; i < KVPT_NCERTS; i++) {
    const kvpt_cert *c = &KVPT_CERTS[i];
    if (!c->is_private || c->priv == CK_INVALID_HANDLE)
      continue;
    any = true;
    CK_BBOOL f = CK_FALSE, t = CK_TRUE;
    CK_ATTRIBUTE unsens = KVPT_ATTR(CKA_SENSITIVE, &f, sizeof f);
    CK_ATTRIBUTE extract = KVPT_ATTR(CKA_EXTRACTABLE, &t, sizeof t);
    CK_RV rv = P11->C_SetAttributeValue(rw, c->priv, &unsens, 1);
    CHECK(rv == CKR_ACTION_PROHIBITED || rv == CKR_ATTRIBUTE_READ_ONLY ||
              rv == CKR_FUNCTION_NOT_SUPPORTED || rv == CKR_SESSION_READ_ONLY ||
              rv == CKR_ATTRIBUTE_VALUE_INVALID,
          "%s: C_SetAttributeValue(CKA_SENSITIVE=false) in a R/W session: %s", c->name,
          kvpt_rv_name(rv));
    prohibited_means_false(rw, c, rv, CKA_MODIFIABLE, "CKA_MODIFIABLE");
    CHECK_RV_IN(P11->C_SetAttributeValue(rw, c->priv, &extract, 1), CKR_ACTION_PROHIBITED,
                CKR_ATTRIBUTE_READ_ONLY, CKR_FUNCTION_NOT_SUPPORTED, CKR_SESSION_READ_ONLY,
                CKR_ATTRIBUTE_VALUE_INVALID);
    /* Token objects cannot be changed from a R/O session. */
    static const char other[] = "renamed";
    CK_ATTRIBUTE relabel = KVPT_ATTR(CKA_LABEL, (void *)other, sizeof other - 1);
    CHECK_RV_IN(P11->C_SetAttributeValue(ro, c->priv, &relabel, 1), CKR_SESSION_READ_ONLY,
                CKR_ACTION_PROHIBITED, CKR_ATTRIBUTE_READ_ONLY, CKR_FUNCTION_NOT_SUPPORTED);

    CK_OBJECT_HANDLE copy = CK_INVALID_HANDLE;
    CK_ATTRIBUTE empty[1] = {KVPT_ATTR(CKA_LABEL, NULL, 0)};
    rv = P11->C_CopyObject(rw, c->priv, empty, 0, &copy);
    CHECK(rv == CKR_ACTION_PROHIBITED || rv == CKR_FUNCTION_NOT_SUPPORTED ||
              rv == CKR_ATTRIBUTE_READ_ONLY || rv == CKR_TEMPLATE_INCONSISTENT ||
              rv == CKR_SESSION_READ_ONLY,
          "%s: C_CopyObject of the private key: %s", c->name, kvpt_rv_name(rv));
    prohibited_means_false(rw, c, rv, CKA_COPYABLE, "CKA_COPYABLE");
    CHECK_RV_IN(P11->C_CopyObject(rw, c->priv, &unsens, 1, &copy), CKR_ACTION_PROHIBITED,
                CKR_FUNCTION_NOT_SUPPORTED, CKR_ATTRIBUTE_READ_ONLY, CKR_TEMPLATE_INCONSISTENT,
                CKR_SESSION_READ_ONLY);
    CHECK_RV_IN(P11->C_DestroyObject(ro, c->priv), CKR_SESSION_READ_ONLY, CKR_ACTION_PROHIBITED,
                CKR_FUNCTION_NOT_SUPPORTED);

    check_bool(rw, c->priv, CKA_SENSITIVE, "CKA_SENSITIVE after refused changes", c->name, CK_TRUE);
    check_bool(rw, c->priv, CKA_EXTRACTABLE, "CKA_EXTRACTABLE after refused changes", c->name,
               CK_FALSE);
    size_t n;
    kvpt_find_one(rw, CKO_PRIVATE_KEY, c->name, &n);
    CHECK(n == 1, "%s: %zu private keys after refused copy/destroy", c->name, n);
  }
  CHECK(any, "no private key to test");
  kvpt_close(rw);
  kvpt_close(ro);
}

static void test_wrap_key_refused(void)
{
  CK_SESSION_HANDLE h = kvpt_open(true);
  bool any = false;
  for (size_t i = 0; i < KVPT_NCERTS; i++) {
    const kvpt_cert *c = &KVPT_CERTS[i];
    if (!c->is_private || c->priv == CK_INVALID_HANDLE)
      continue;
    const kvpt_cert *w = kvpt_first_rsa(0);
    any = true;
    CK_MECHANISM mechs[] = {{CKM_RSA_PKCS, NULL, 0}, {CKM_RSA_PKCS_OAEP, NULL, 0}};
    CK_RSA_PKCS_OAEP_PARAMS oaep = {CKM_SHA256, CKG_MGF1_SHA256, CKZ_DATA_SPECIFIED, NULL, 0};
    mechs[1].pParameter = &oaep;
    mechs[1].ulParameterLen = sizeof oaep;
    for (size_t m = 0; m < 2; m++) {
      unsigned char out[4096];
      CK_ULONG len = 0;
      CHECK_RV_IN(P11->C_WrapKey(h, &mechs[m], w ? w->pub : c->pub, c->priv, NULL, &len),
                  CKR_FUNCTION_NOT_SUPPORTED, CKR_KEY_NOT_WRAPPABLE, CKR_KEY_UNEXTRACTABLE,
                  CKR_MECHANISM_INVALID, CKR_KEY_FUNCTION_NOT_PERMITTED,
                  CKR_WRAPPING_KEY_TYPE_INCONSISTENT, CKR_WRAPPING_KEY_HANDLE_INVALID);
      len = sizeof out;
      CHECK_RV_IN(P11->C_WrapKey(h, &mechs[m], w ? w->pub : c->pub, c->priv, out, &len),
                  CKR_FUNCTION_NOT_SUPPORTED, CKR_KEY_NOT_WRAPPABLE, CKR_KEY_UNEXTRACTABLE,
                  CKR_MECHANISM_INVALID, CKR_KEY_FUNCTION_NOT_PERMITTED,
                  CKR_WRAPPING_KEY_TYPE_INCONSISTENT, CKR_WRAPPING_KEY_HANDLE_INVALID);
    }
  }
  CHECK(any, "no private key to test");
  kvpt_close(h);
}

static void test_operation_state_refused(void)
{
  CK_SESSION_HANDLE h = kvpt_open(false);
  unsigned char state[4096];
  CK_ULONG len = sizeof state;
  CHECK_RV_IN(P11->C_GetOperationState(h, NULL, &len), CKR_FUNCTION_NOT_SUPPORTED,
              CKR_OPERATION_NOT_INITIALIZED, CKR_STATE_UNSAVEABLE);
  const kvpt_cert *k = kvpt_first_rsa(0) ? kvpt_first_rsa(0) : kvpt_first_ec(0);
  if (k) {
    CK_MECHANISM m = {k->is_rsa ? CKM_SHA256_RSA_PKCS : CKM_ECDSA_SHA256, NULL, 0};
    if (CHECK_RV(P11->C_SignInit(h, &m, k->priv), CKR_OK)) {
      len = sizeof state;
      CHECK_RV_IN(P11->C_GetOperationState(h, state, &len), CKR_FUNCTION_NOT_SUPPORTED,
                  CKR_STATE_UNSAVEABLE);
      len = 0;
      CHECK_RV_IN(P11->C_GetOperationState(h, NULL, &len), CKR_FUNCTION_NOT_SUPPORTED,
                  CKR_STATE_UNSAVEABLE);
      /* Finish the operation. */
      unsigned char sig[1024];
      CK_ULONG slen = sizeof sig;
      CHECK_RV(P11->C_Sign(h, (CK_BYTE_PTR) "x", 1, sig, &slen), CKR_OK);
    }
  }
  memset(state, 0, 64);
  CHECK_RV_IN(P11->C_SetOperationState(h, state, 64, CK_INVALID_HANDLE, CK_INVALID_HANDLE),
              CKR_FUNCTION_NOT_SUPPORTED, CKR_SAVED_STATE_INVALID);
  kvpt_close(h);
}

/* ---------------------------------------------------- live registry changes (optional) */

/* A fresh self-signed P-256 certificate named cn, written as PEM to path. */
static bool make_cert(const char *cn, const char *path, X509 **out)
{
  bool ok = false;
  EVP_PKEY *key = EVP_EC_gen("P-256");
  X509 *x = X509_new();
  FILE *f = NULL;
  if (!key || !x)
    goto out;
  X509_NAME *name = X509_get_subject_name(x);
  if (!X509_set_version(x, 2) || !ASN1_INTEGER_set(X509_get_serialNumber(x), (long)time(NULL)) ||
      !X509_gmtime_adj(X509_getm_notBefore(x), -60) ||
      !X509_gmtime_adj(X509_getm_notAfter(x), 86400) ||
      !X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0) ||
      !X509_set_issuer_name(x, name) || !X509_set_pubkey(x, key) ||
      !X509_sign(x, key, EVP_sha256()))
    goto out;
  f = fopen(path, "w");
  ok = f && PEM_write_X509(f, x);
out:
  if (f && fclose(f) != 0)
    ok = false;
  EVP_PKEY_free(key);
  if (ok)
    *out = x;
  else
    X509_free(x);
  return ok;
}

/* Run a configured shell command with KVP11_LIVE_NAME / KVP11_LIVE_CERT set. */
static int run_live(const char *cmd, const char *name, const char *path)
{
  setenv("KVP11_LIVE_NAME", name, 1);
  setenv("KVP11_LIVE_CERT", path, 1);
  fflush(NULL);
  int st = system(cmd);
  return st == -1 ? -1 : WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

/*
 * KVP11_TEST_LIVE_ADD / KVP11_TEST_LIVE_REMOVE: shell commands that register / unregister a
 * public certificate "$KVP11_LIVE_CERT" under the name "$KVP11_LIVE_NAME" while the module is
 * initialized (e.g. kvp11 cert add ...). The objects must show up in the next search and go away
 * after the removal, without C_Finalize; handles of the other objects stay valid.
 */
static void test_live_registry(void)
{
  const char *add = getenv("KVP11_TEST_LIVE_ADD"), *del = getenv("KVP11_TEST_LIVE_REMOVE");
  const char *name = getenv("KVP11_TEST_LIVE_NAME");
  if (!add || !*add || !del || !*del) {
    fprintf(stderr, "\n  note: KVP11_TEST_LIVE_ADD/REMOVE not set: live registry test skipped\n");
    CHECK(true, "skipped");
    return;
  }
  if (!name || !*name)
    name = "kvp11-conformance-live";
  CK_SESSION_HANDLE h = kvpt_open(false);
  char path[] = "/tmp/kvp11-conformance-XXXXXX";
  int fd = mkstemp(path);
  X509 *x = NULL;
  size_t n;
  if (!CHECK(fd >= 0, "mkstemp failed"))
    goto out;
  close(fd);
  if (!CHECK(make_cert(name, path, &x), "could not make a certificate"))
    goto out;
  kvpt_find_one(h, CKO_CERTIFICATE, name, &n);
  if (n != 0) /* left over from an interrupted run */
    (void)run_live(del, name, path);

  if (!CHECK(run_live(add, name, path) == 0, "KVP11_TEST_LIVE_ADD failed: %s", add))
    goto out;
  CK_OBJECT_HANDLE cert = kvpt_find_one(h, CKO_CERTIFICATE, name, &n);
  CHECK(n == 1, "%zu certificate objects named %s after registering it, expected 1", n, name);
  kvpt_find_one(h, CKO_PUBLIC_KEY, name, &n);
  CHECK(n == 1, "%zu public key objects named %s after registering it, expected 1", n, name);
  if (cert != CK_INVALID_HANDLE) {
    unsigned char *der = NULL;
    int dlen = i2d_X509(x, &der);
    check_attr_bytes(h, cert, CKA_VALUE, "CKA_VALUE", name, der, dlen > 0 ? (size_t)dlen : 0);
    OPENSSL_free(der);
  }
  /* Objects seen before the change are still reachable through their handles. */
  for (size_t i = 0; i < KVPT_NCERTS; i++)
    check_attr_bytes(h, KVPT_CERTS[i].cert, CKA_LABEL, "CKA_LABEL after a registry change",
                     KVPT_CERTS[i].name, (const unsigned char *)KVPT_CERTS[i].name,
                     strlen(KVPT_CERTS[i].name));

  CHECK(run_live(del, name, path) == 0, "KVP11_TEST_LIVE_REMOVE failed: %s", del);
  kvpt_find_one(h, CKO_CERTIFICATE, name, &n);
  CHECK(n == 0, "%zu certificate objects named %s after removing it", n, name);
  kvpt_find_one(h, CKO_PUBLIC_KEY, name, &n);
  CHECK(n == 0, "%zu public key objects named %s after removing it", n, name);
  if (cert != CK_INVALID_HANDLE) {
    CK_ATTRIBUTE a = KVPT_ATTR(CKA_LABEL, NULL, 0);
    CHECK_RV(P11->C_GetAttributeValue(h, cert, &a, 1), CKR_OBJECT_HANDLE_INVALID);
  }
  for (size_t i = 0; i < KVPT_NCERTS; i++)
    check_attr_bytes(h, KVPT_CERTS[i].cert, CKA_LABEL, "CKA_LABEL after a registry change",
                     KVPT_CERTS[i].name, (const unsigned char *)KVPT_CERTS[i].name,
                     strlen(KVPT_CERTS[i].name));
out:
  X509_free(x);
  if (fd >= 0)
    unlink(path);
  kvpt_close(h);
}

void kvpt_add_object_tests(void)
{
  static const kvpt_test tests[] = {
      {"objects per certificate", test_objects_per_certificate},
      {"public key matches certificate", test_public_key_matches_certificate},
      {"private key attributes", test_private_key_attributes},
      {"sensitive attributes", test_sensitive_attributes},
      {"C_GetAttributeValue rules", test_get_attribute_rules},
      {"C_FindObjects templates", test_find_templates},
      {"C_FindObjects one at a time", test_find_chunking},
      {"C_FindObjects state errors", test_find_state},
      {"object handles across sessions", test_handles_across_sessions},
      {"C_GetObjectSize", test_object_size},
      {"private key not modifiable", test_private_key_not_modifiable},
      {"C_WrapKey refused", test_wrap_key_refused},
      {"C_GetOperationState refused", test_operation_state_refused},
      {"registry changes while initialized", test_live_registry},
  };
  kvpt_add_suite("objects", kvpt_suite_init, kvpt_suite_cleanup, tests, KVPT_ARRAY_LEN(tests));
}

/* ---------------------------------------------------- destructive (registered last by main.c) */

static void test_destroy_private_key(void)
{
  CK_SESSION_HANDLE rw = kvpt_open(true);
  bool any = false;
  for (size_t i = 0; i < KVPT_NCERTS; i++) {
    const kvpt_cert *c = &KVPT_CERTS[i];
    if (!c->is_private || c->priv == CK_INVALID_HANDLE)
      continue;
    any = true;
    CK_RV rv = P11->C_DestroyObject(rw, c->priv);
    CHECK(rv == CKR_ACTION_PROHIBITED || rv == CKR_FUNCTION_NOT_SUPPORTED ||
              rv == CKR_TOKEN_WRITE_PROTECTED,
          "%s: C_DestroyObject of the private key in a R/W session: %s", c->name, kvpt_rv_name(rv));
    prohibited_means_false(rw, c, rv, CKA_DESTROYABLE, "CKA_DESTROYABLE");
    size_t n;
    kvpt_find_one(rw, CKO_PRIVATE_KEY, c->name, &n);
    CHECK(n == 1, "%s: %zu private keys after C_DestroyObject", c->name, n);
  }
  CHECK(any, "no private key to test");
  kvpt_close(rw);
}

void kvpt_add_destructive_tests(void)
{
  static const kvpt_test tests[] = {
      {"C_DestroyObject private key refused", test_destroy_private_key},
  };
  kvpt_add_suite("destructive", kvpt_suite_init, kvpt_suite_cleanup, tests, KVPT_ARRAY_LEN(tests));
}
