/*
 * Objects created and destroyed through PKCS#11, with standard templates:
 *
 *  C_CreateObject(CKO_CERTIFICATE)  registers the certificate: a private one
 *      when a private key of the token has the template's CKA_ID (or, without
 *      CKA_ID, the certificate's public key), a partner's (public) one
 *      otherwise. A key without a certificate yet gets it in place (same
 *      registry row, so the key objects keep their handles).
 *  C_DestroyObject(certificate)     removes it from the registry; a private
 *      certificate's key stays visible as a key pair. Keys are never destroyed
 *      through PKCS#11 (`kvp11 key delete` does that).
 *  C_GenerateKeyPair                creates the key in the account's
 *      default_store (Key Vault or HSM) and registers it as a key pair.
 *
 * CKA_TOKEN false or absent (its default) asks for session objects
 * (sessobj.c): a certificate kept in memory, a key pair made as session
 * objects of the store (HSM; Key Vault has none: CKR_TEMPLATE_INCONSISTENT).
 * Neither writes the registry, so a read-only session may make them; the
 * read-only check applies to token objects only, after the template's.
 *
 * The module reads the registry through a read-only connection; each change
 * opens a writer connection for its duration. No lock of the front is held
 * during the key store call or the registry write; the new objects appear
 * through the normal registry refresh.
 */
#include "pkcs11/internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/objects.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include <p11-kit/pkcs11x.h>

#include "backend/provision.h"
#include "core/cert.h"
#include "core/audit.h"
#include "core/log.h"
#include "core/p11names.h"
#include "core/status.h"
#include "core/util.h"

/* ---- templates --------------------------------------------------------- */

/* The template's value for t, NULL if absent. */
static const CK_ATTRIBUTE *tmpl_find(const CK_ATTRIBUTE *t, CK_ULONG n, CK_ATTRIBUTE_TYPE type)
{
  for (CK_ULONG i = 0; i < n; i++)
    if (t[i].type == type)
      return &t[i];
  return NULL;
}

/* The attribute type of the template (*out, NULL when absent) when its value
 * has exactly size bytes; CKR_ATTRIBUTE_VALUE_INVALID (logged) otherwise. */
static CK_RV tmpl_sized(const CK_ATTRIBUTE *t, CK_ULONG n, CK_ATTRIBUTE_TYPE type, size_t size,
                        const char *what, const CK_ATTRIBUTE **out)
{
  const CK_ATTRIBUTE *a = tmpl_find(t, n, type);

  *out = a;
  if (a != NULL && (a->pValue == NULL || a->ulValueLen != size)) {
    KVP_ERROR("template: %s: expected a %s", kvp_cka_name(type), what);
    return CKR_ATTRIBUTE_VALUE_INVALID;
  }
  return CKR_OK;
}

/* -1 absent, 0/1 the value; CKR_ATTRIBUTE_VALUE_INVALID for a bad length. */
static CK_RV tmpl_bool(const CK_ATTRIBUTE *t, CK_ULONG n, CK_ATTRIBUTE_TYPE type, int *out)
{
  const CK_ATTRIBUTE *a;
  CK_RV rv = tmpl_sized(t, n, type, sizeof(CK_BBOOL), "CK_BBOOL", &a);

  *out = rv == CKR_OK && a != NULL ? *(const CK_BBOOL *)a->pValue != CK_FALSE : -1;
  return rv;
}

static CK_RV tmpl_ulong(const CK_ATTRIBUTE *t, CK_ULONG n, CK_ATTRIBUTE_TYPE type, CK_ULONG *out,
                        int *present)
{
  const CK_ATTRIBUTE *a;
  CK_RV rv = tmpl_sized(t, n, type, sizeof(CK_ULONG), "CK_ULONG", &a);

  *present = a != NULL;
  if (rv == CKR_OK && a != NULL)
    memcpy(out, a->pValue, sizeof(*out));
  return rv;
}

static int type_in(const CK_ATTRIBUTE_TYPE *list, size_t n, CK_ATTRIBUTE_TYPE type)
{
  for (size_t k = 0; k < n; k++)
    if (list[k] == type)
      return 1;
  return 0;
}

/* A boolean attribute that may not be bad (1: CK_TRUE, 0: CK_FALSE). */
static CK_RV bool_not(const char *what, const CK_ATTRIBUTE *a, int bad)
{
  int b;
  CK_RV rv = tmpl_bool(a, 1, a->type, &b);

  if (rv != CKR_OK || b != bad)
    return rv;
  if (bad)
    KVP_ERROR("%s: %s = CK_TRUE is not supported (kvp11 keys never leave their store "
              "and only sign and decrypt; trust is the admin's to grant)",
              what, kvp_cka_name(a->type));
  else
    KVP_ERROR("%s: %s = CK_FALSE is not possible here", what, kvp_cka_name(a->type));
  return CKR_ATTRIBUTE_VALUE_INVALID;
}

/*
 * Every attribute of the template must be one of allowed[] and appear once;
 * boolean attributes in must_false[] may not be CK_TRUE (functions kvp11 keys
 * never have), those in must_true[] not CK_FALSE.
 */
static CK_RV tmpl_check(const char *what, const CK_ATTRIBUTE *t, CK_ULONG n,
                        const CK_ATTRIBUTE_TYPE *allowed, size_t n_allowed,
                        const CK_ATTRIBUTE_TYPE *must_false, size_t n_false,
                        const CK_ATTRIBUTE_TYPE *must_true, size_t n_true)
{
  CK_RV rv;

  for (CK_ULONG i = 0; i < n; i++) {
    if (!type_in(allowed, n_allowed, t[i].type)) {
      KVP_ERROR("%s: attribute %s is not supported here", what, kvp_cka_name(t[i].type));
      return CKR_ATTRIBUTE_TYPE_INVALID;
    }
    if (t[i].ulValueLen > 0 && t[i].pValue == NULL)
      return CKR_ARGUMENTS_BAD;
    for (CK_ULONG j = i + 1; j < n; j++)
      if (t[j].type == t[i].type) {
        KVP_ERROR("%s: attribute %s given twice", what, kvp_cka_name(t[i].type));
        return CKR_TEMPLATE_INCONSISTENT;
      }
    if (type_in(must_false, n_false, t[i].type) && (rv = bool_not(what, &t[i], 1)) != CKR_OK)
      return rv;
    if (type_in(must_true, n_true, t[i].type) && (rv = bool_not(what, &t[i], 0)) != CKR_OK)
      return rv;
  }
  return CKR_OK;
}

/* ---- registry writer --------------------------------------------------- */

int kvp_registry_writable(void)
{
  const char *path = kvp_g.cfg != NULL ? kvp_g.cfg->registry : NULL;
  char *dir;
  int ok;

  if (path == NULL || (dir = strdup(path)) == NULL)
    return 0;
  {
    char *slash = strrchr(dir, '/');
    if (slash == dir)
      slash[1] = '\0';
    else if (slash != NULL)
      *slash = '\0';
  }
  ok = access(dir, W_OK) == 0 && (access(path, F_OK) != 0 || access(path, W_OK) == 0);
  free(dir);
  return ok;
}

static CK_RV open_writer(kvp_registry **out)
{
  char err[KVP_ERRLEN] = "";
  int rc;

  *out = NULL;
  if (!kvp_registry_writable()) {
    KVP_ERROR("registry %s: this process cannot write it (the token is write-protected for it)",
              kvp_g.cfg->registry);
    return CKR_TOKEN_WRITE_PROTECTED;
  }
  rc = kvp_registry_open(kvp_g.cfg->registry, 0, out, err, sizeof(err));
  if (rc == KVP_OK)
    return CKR_OK;
  KVP_ERROR("%s", err);
  return rc == KVP_EPERM ? CKR_TOKEN_WRITE_PROTECTED : rc == KVP_ENOMEM ? CKR_HOST_MEMORY
                                                                         : CKR_DEVICE_ERROR;
}

static CK_RV reg_rv(int rc, const char *err)
{
  if (rc == KVP_OK)
    return CKR_OK;
  KVP_ERROR("%s", err);
  switch (rc) {
  case KVP_ENOMEM: return CKR_HOST_MEMORY;
  case KVP_EPERM: return CKR_TOKEN_WRITE_PROTECTED;
  case KVP_EEXISTS:
  case KVP_EINVAL: return CKR_ATTRIBUTE_VALUE_INVALID;
  default: return CKR_DEVICE_ERROR;
  }
}

/* The account and default store of the session's slot (copied). */
static CK_RV slot_account(const kvp_session *s, char **account, char **default_store)
{
  kvp_slot *slot;
  CK_RV rv = CKR_OK;

  pthread_rwlock_rdlock(&kvp_g.lock);
  slot = kvp_slot_locked(s->slot);
  *account = slot != NULL ? strdup(slot->account->name) : NULL;
  if (default_store != NULL)
    *default_store = slot != NULL ? kvp_strdup0(slot->account->default_store) : NULL;
  if (*account == NULL || (default_store != NULL && slot->account->default_store != NULL &&
                           *default_store == NULL))
    rv = CKR_HOST_MEMORY;
  pthread_rwlock_unlock(&kvp_g.lock);
  return rv;
}

/* ---- C_CreateObject ---------------------------------------------------- */

/* What the certificate's key matched among the token's private keys. */
typedef struct key_match {
  int64_t row_id;    /* 0: no private key matched */
  int id_mismatch;   /* a key has the template's CKA_ID but another public key */
} key_match;

static CK_RV match_private_key(kvp_session *s, const EVP_PKEY *cert_pub,
                               const CK_ATTRIBUTE *id, key_match *m)
{
  memset(m, 0, sizeof(*m));
  return kvp_find_private_key(s, cert_pub, id, &m->row_id, &m->id_mismatch);
}

/* A name for an object created without CKA_LABEL: "cert-" / "key-" and 8 hex digits. */
static void default_name(const char *prefix, char out[32])
{
  unsigned char r[4] = {0};

  (void)RAND_bytes(r, sizeof(r));
  snprintf(out, 32, "%s-%02x%02x%02x%02x", prefix, r[0], r[1], r[2], r[3]);
}

static char *label_dup(const CK_ATTRIBUTE *a)
{
  char *s;

  if (a == NULL || a->ulValueLen == 0)
    return NULL;
  if ((s = malloc(a->ulValueLen + 1)) == NULL)
    return NULL;
  memcpy(s, a->pValue, a->ulValueLen);
  s[a->ulValueLen] = '\0';
  return s;
}

/* Labels become registry names: printable, no NUL, at most 255 bytes. */
static int label_ok(const CK_ATTRIBUTE *a)
{
  const unsigned char *p = a->pValue;

  if (a->ulValueLen == 0 || a->ulValueLen > 255)
    return 0;
  for (CK_ULONG i = 0; i < a->ulValueLen; i++)
    if (p[i] < 0x20 || p[i] == 0x7f)
      return 0;
  return 1;
}

/* The DER of one part of x (0 subject, 1 issuer, 2 serial) must equal the
 * template's value, if given. */
static int part_matches(const CK_ATTRIBUTE *a, X509 *x, int part)
{
  unsigned char *der = NULL;
  int len, ok;

  if (a == NULL)
    return 1;
  len = part == 0   ? i2d_X509_NAME(X509_get_subject_name(x), &der)
        : part == 1 ? i2d_X509_NAME(X509_get_issuer_name(x), &der)
                    : i2d_ASN1_INTEGER(X509_get_serialNumber(x), &der);
  ok = len > 0 && a->ulValueLen == (CK_ULONG)len && memcmp(a->pValue, der, (size_t)len) == 0;
  OPENSSL_free(der);
  return ok;
}

/* token: a registry certificate (always public); else a session one, which
 * may be private (CKA_PRIVATE true: seen only while the user is logged in). */
static CK_RV cert_from_template(const CK_ATTRIBUTE *t, CK_ULONG n, int token, X509 **x,
                                kvp_spki *k, EVP_PKEY **pub)
{
  static const CK_ATTRIBUTE_TYPE allowed[] = {
      CKA_CLASS, CKA_CERTIFICATE_TYPE, CKA_TOKEN, CKA_PRIVATE, CKA_MODIFIABLE, CKA_COPYABLE,
      CKA_DESTROYABLE, CKA_LABEL, CKA_ID, CKA_VALUE, CKA_SUBJECT, CKA_ISSUER, CKA_SERIAL_NUMBER,
      CKA_TRUSTED, CKA_CERTIFICATE_CATEGORY, CKA_START_DATE, CKA_END_DATE, CKA_URL,
      CKA_JAVA_MIDP_SECURITY_DOMAIN, CKA_CHECK_VALUE, CKA_HASH_OF_SUBJECT_PUBLIC_KEY,
      CKA_HASH_OF_ISSUER_PUBLIC_KEY, CKA_NAME_HASH_ALGORITHM};
  static const CK_ATTRIBUTE_TYPE must_false[] = {CKA_PRIVATE, CKA_TRUSTED};
  const CK_ATTRIBUTE *value = tmpl_find(t, n, CKA_VALUE), *label = tmpl_find(t, n, CKA_LABEL);
  const CK_ATTRIBUTE *id = tmpl_find(t, n, CKA_ID);
  const unsigned char *p;
  CK_ULONG ctype = 0;
  int present;
  CK_RV rv;

  /* must_false without CKA_PRIVATE for a session certificate */
  rv = tmpl_check("C_CreateObject(CKO_CERTIFICATE)", t, n, allowed, KVP_ARRAY_SIZE(allowed),
                  must_false + (token ? 0 : 1), KVP_ARRAY_SIZE(must_false) - (token ? 0 : 1),
                  NULL, 0);
  if (rv != CKR_OK)
    return rv;
  if (id != NULL && (id->ulValueLen == 0 || id->ulValueLen > 255)) {
    KVP_ERROR("C_CreateObject(CKO_CERTIFICATE): CKA_ID must be 1 to 255 bytes");
    return CKR_ATTRIBUTE_VALUE_INVALID;
  }
  if ((rv = tmpl_ulong(t, n, CKA_CERTIFICATE_TYPE, &ctype, &present)) != CKR_OK)
    return rv;
  if (!present || value == NULL) {
    KVP_ERROR("C_CreateObject(CKO_CERTIFICATE): CKA_CERTIFICATE_TYPE and CKA_VALUE are required");
    return CKR_TEMPLATE_INCOMPLETE;
  }
  if (ctype != CKC_X_509) {
    KVP_ERROR("C_CreateObject(CKO_CERTIFICATE): only CKC_X_509 certificates are supported");
    return CKR_ATTRIBUTE_VALUE_INVALID;
  }
  if (label != NULL && !label_ok(label)) {
    KVP_ERROR("C_CreateObject(CKO_CERTIFICATE): CKA_LABEL must be 1 to 255 printable bytes");
    return CKR_ATTRIBUTE_VALUE_INVALID;
  }
  p = value->pValue;
  *x = value->ulValueLen > 0 && value->ulValueLen < 1024 * 1024
           ? d2i_X509(NULL, &p, (long)value->ulValueLen)
           : NULL;
  if (*x == NULL || p != (const unsigned char *)value->pValue + value->ulValueLen) {
    KVP_ERROR("C_CreateObject(CKO_CERTIFICATE): CKA_VALUE is not one DER X.509 certificate");
    return CKR_ATTRIBUTE_VALUE_INVALID;
  }
  {
    if (!part_matches(tmpl_find(t, n, CKA_SUBJECT), *x, 0) ||
        !part_matches(tmpl_find(t, n, CKA_ISSUER), *x, 1) ||
        !part_matches(tmpl_find(t, n, CKA_SERIAL_NUMBER), *x, 2)) {
      KVP_ERROR("C_CreateObject(CKO_CERTIFICATE): CKA_SUBJECT, CKA_ISSUER or CKA_SERIAL_NUMBER "
                "differs from the certificate in CKA_VALUE");
      return CKR_TEMPLATE_INCONSISTENT;
    }
  }
  if (kvp_spki_from_x509(*x, k) != KVP_OK || (*pub = kvp_spki_pubkey(k)) == NULL) {
    KVP_ERROR("C_CreateObject(CKO_CERTIFICATE): unsupported public key (RSA of 1024 to 8192 "
              "bits, or EC on P-256, P-384, P-521, secp256k1)");
    return CKR_ATTRIBUTE_VALUE_INVALID;
  }
  return CKR_OK;
}

static CK_RV create_certificate(kvp_session *s, const CK_ATTRIBUTE *t, CK_ULONG n,
                                CK_OBJECT_HANDLE *ph)
{
  const CK_ATTRIBUTE *label = tmpl_find(t, n, CKA_LABEL), *id = tmpl_find(t, n, CKA_ID);
  X509 *x = NULL;
  EVP_PKEY *pub = NULL;
  kvp_spki k;
  kvp_registry *reg = NULL;
  kvp_cert_rec rec = {0}, keyrow = {0}, got = {0};
  char *account = NULL, *name = NULL;
  char err[KVP_ERRLEN] = "", dflt[32];
  key_match m;
  CK_RV rv;
  int rc;

  memset(&k, 0, sizeof(k));
  rv = cert_from_template(t, n, 1, &x, &k, &pub);
  if (rv != CKR_OK)
    goto out;
  if ((rv = slot_account(s, &account, NULL)) != CKR_OK)
    goto out;
  match_private_key(s, pub, id, &m);
  if (m.row_id == 0 && m.id_mismatch) {
    KVP_ERROR("C_CreateObject(CKO_CERTIFICATE): the private key with this CKA_ID has another "
              "public key than the certificate");
    rv = CKR_TEMPLATE_INCONSISTENT;
    goto out;
  }
  if ((rv = open_writer(&reg)) != CKR_OK)
    goto out;
  if (m.row_id != 0) {
    rc = kvp_registry_get_id(reg, m.row_id, &keyrow, err, sizeof(err));
    if (rc == KVP_ENOTFOUND) {
      KVP_ERROR("C_CreateObject(CKO_CERTIFICATE): the matching key was removed meanwhile");
      rv = CKR_FUNCTION_FAILED;
      goto out;
    }
    if ((rv = reg_rv(rc, err)) != CKR_OK)
      goto out;
  }
  /* a key without certificate takes it under its own name; otherwise a new entry */
  if (m.row_id != 0 && keyrow.der_len == 0)
    name = strdup(keyrow.name);
  else if (label != NULL)
    name = label_dup(label);
  else
    default_name("cert", dflt), name = strdup(dflt);
  if (name == NULL) {
    rv = CKR_HOST_MEMORY;
    goto out;
  }
  {
    const unsigned char *der = tmpl_find(t, n, CKA_VALUE)->pValue;
    size_t der_len = tmpl_find(t, n, CKA_VALUE)->ulValueLen;
    rc = kvp_cert_fill_rec(der, der_len, &rec, err, sizeof(err));
    if (rc != KVP_OK) {
      KVP_ERROR("C_CreateObject(CKO_CERTIFICATE): %s", err);
      rv = rc == KVP_ENOMEM ? CKR_HOST_MEMORY : CKR_ATTRIBUTE_VALUE_INVALID;
      goto out;
    }
  }
  rec.account = account;
  rec.name = name;
  rec.spki = k.der;
  rec.spki_len = (size_t)k.der_len;
  if (m.row_id != 0) {
    rec.type = KVP_CERT_PRIVATE;
    rec.key_ref = keyrow.key_ref;
    rec.key_version = keyrow.key_version;
    rec.resource_group = keyrow.resource_group;
    rec.ckid = id != NULL ? (unsigned char *)id->pValue : keyrow.ckid;
    rec.ckid_len = id != NULL ? id->ulValueLen : keyrow.ckid_len;
  } else {
    rec.type = KVP_CERT_PUBLIC;
    rec.ckid = id != NULL ? (unsigned char *)id->pValue : NULL;
    rec.ckid_len = id != NULL ? id->ulValueLen : 0;
  }
  rc = kvp_registry_add(reg, &rec, m.row_id != 0 && keyrow.der_len == 0, err, sizeof(err));
  if (rc == KVP_EEXISTS) {
    KVP_ERROR("C_CreateObject(CKO_CERTIFICATE): %s (choose another CKA_LABEL)", err);
    rv = CKR_ATTRIBUTE_VALUE_INVALID;
    goto out;
  }
  if ((rv = reg_rv(rc, err)) != CKR_OK)
    goto out;
  if ((rv = reg_rv(kvp_registry_get(reg, account, name, &got, err, sizeof(err)), err)) != CKR_OK)
    goto out;
  KVP_INFO("account %s: registered %s certificate '%s' (%s) through PKCS#11", account,
           rec.type == KVP_CERT_PRIVATE ? "private" : "public", name, rec.subject);
  kvp_audit_change("C_CreateObject", account, name, rec.key_ref, keyrow.sha256, got.sha256);
  *ph = ((CK_OBJECT_HANDLE)got.id << 2) | KVP_OBJ_CERT;
  kvp_registry_close(reg);
  reg = NULL;
  (void)kvp_refresh();
out:
  /* rec borrows account, name, key_ref... from elsewhere: free only its own parts */
  free(rec.der);
  free(rec.subject);
  free(rec.issuer);
  free(rec.serial);
  kvp_cert_rec_clear(&keyrow);
  kvp_cert_rec_clear(&got);
  kvp_registry_close(reg);
  free(account);
  free(name);
  EVP_PKEY_free(pub);
  kvp_spki_clear(&k);
  X509_free(x);
  return rv;
}

/* A session certificate (CKA_TOKEN false or absent): checked as a token one, kept in memory. */
static CK_RV create_session_certificate(kvp_session *s, const CK_ATTRIBUTE *t, CK_ULONG n,
                                        CK_OBJECT_HANDLE *ph)
{
  X509 *x = NULL;
  EVP_PKEY *pub = NULL;
  kvp_spki k;
  int priv = 0;
  CK_RV rv;

  memset(&k, 0, sizeof(k));
  rv = cert_from_template(t, n, 0, &x, &k, &pub);
  if (rv == CKR_OK)
    rv = tmpl_bool(t, n, CKA_PRIVATE, &priv);
  if (rv == CKR_OK)
    rv = kvp_sessobj_add_cert(s, tmpl_find(t, n, CKA_VALUE), tmpl_find(t, n, CKA_LABEL),
                              tmpl_find(t, n, CKA_ID), priv == 1, ph);
  EVP_PKEY_free(pub);
  kvp_spki_clear(&k);
  X509_free(x);
  return rv;
}

CK_RV kvp_create_object(kvp_session *s, CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR ph)
{
  CK_ULONG cls = 0;
  int present, token;
  CK_RV rv;

  if ((t == NULL && n != 0) || ph == NULL)
    return CKR_ARGUMENTS_BAD;
  if ((rv = tmpl_bool(t, n, CKA_TOKEN, &token)) != CKR_OK)
    return rv;
  /* a session object writes nothing: a read-only session may make it */
  if (token == 1 && !(s->flags & CKF_RW_SESSION))
    return CKR_SESSION_READ_ONLY;
  if ((rv = tmpl_ulong(t, n, CKA_CLASS, &cls, &present)) != CKR_OK)
    return rv;
  if (!present)
    return kvp_fail(CKR_TEMPLATE_INCOMPLETE, "C_CreateObject: CKA_CLASS is required");
  if (cls == CKO_NSS_TRUST) {
    /* NSS offers a trust object to every writable token along with a certificate it
     * imports: routine, not an error worth an admin's attention. */
    return kvp_fail_at(KVP_LOG_DEBUG, CKR_ATTRIBUTE_VALUE_INVALID,
                       "C_CreateObject: NSS trust object not stored (trust is the admin's to "
                       "grant with `kvp11 cert add`)");
  }
  if (cls != CKO_CERTIFICATE)
    return kvp_fail(CKR_ATTRIBUTE_VALUE_INVALID,
                    "C_CreateObject: only certificates can be created (CKA_CLASS %s given); "
                    "keys are created with C_GenerateKeyPair or imported with `kvp11 key import`",
                    cls == CKO_PRIVATE_KEY  ? "CKO_PRIVATE_KEY"
                    : cls == CKO_PUBLIC_KEY ? "CKO_PUBLIC_KEY"
                    : cls == CKO_SECRET_KEY ? "CKO_SECRET_KEY"
                    : cls == CKO_DATA       ? "CKO_DATA"
                                            : "other");
  return token == 1 ? create_certificate(s, t, n, ph) : create_session_certificate(s, t, n, ph);
}

/* ---- C_DestroyObject ---------------------------------------------------- */

CK_RV kvp_destroy_object(kvp_session *s, CK_OBJECT_HANDLE h)
{
  kvp_object *o = NULL;
  kvp_registry *reg = NULL;
  kvp_cert_rec rec = {0};
  char err[KVP_ERRLEN] = "";
  CK_RV rv;

  if (kvp_is_sessobj(h))
    return kvp_sessobj_destroy(s, h); /* no registry write: R/O sessions too */
  if ((rv = kvp_object_get(s, h, &o)) != CKR_OK)
    return rv;
  if (o->cls != CKO_CERTIFICATE) {
    KVP_ERROR("C_DestroyObject: '%s': keys are not destroyed through PKCS#11 (use `kvp11 key "
              "delete` for the key and `kvp11 cert remove` for its registry entry)",
              o->label);
    rv = CKR_ACTION_PROHIBITED;
    goto out;
  }
  if (!(s->flags & CKF_RW_SESSION)) {
    rv = CKR_SESSION_READ_ONLY;
    goto out;
  }
  if ((rv = open_writer(&reg)) != CKR_OK)
    goto out;
  {
    int rc = kvp_registry_get_id(reg, o->row_id, &rec, err, sizeof(err));
    if (rc == KVP_ENOTFOUND || (rc == KVP_OK && strcmp(rec.sha256, o->sha256) != 0)) {
      rv = CKR_OBJECT_HANDLE_INVALID; /* removed or replaced meanwhile */
      goto out;
    }
    if ((rv = reg_rv(rc, err)) != CKR_OK)
      goto out;
  }
  if (rec.type == KVP_CERT_PRIVATE) {
    /* keep the key: the row becomes a key without certificate */
    kvp_spki k;
    const unsigned char *p = rec.der;
    X509 *x = d2i_X509(NULL, &p, (long)rec.der_len);
    int ok = x != NULL && kvp_spki_from_x509(x, &k) == KVP_OK;
    X509_free(x);
    if (!ok) {
      KVP_ERROR("registry: certificate '%s': stored DER does not parse", rec.name);
      rv = CKR_GENERAL_ERROR;
      goto out;
    }
    free(rec.spki);
    rec.spki = k.der;
    rec.spki_len = (size_t)k.der_len;
    k.der = NULL;
    kvp_spki_clear(&k);
    free(rec.der);
    rec.der = NULL;
    rec.der_len = 0;
    rec.subject[0] = rec.issuer[0] = rec.serial[0] = '\0';
    rec.sha1[0] = rec.sha256[0] = '\0';
    rec.not_before = rec.not_after = 0;
    rv = reg_rv(kvp_registry_add(reg, &rec, 1, err, sizeof(err)), err);
  } else {
    rv = reg_rv(kvp_registry_remove(reg, rec.account, rec.name, err, sizeof(err)), err);
  }
  if (rv == CKR_OK)
    KVP_INFO("account %s: certificate '%s' removed through PKCS#11%s", rec.account, rec.name,
             rec.type == KVP_CERT_PRIVATE ? " (its key stays registered)" : "");
  if (rv == CKR_OK) kvp_audit_change("C_DestroyObject", rec.account, rec.name, rec.key_ref, o->sha256, NULL);
  kvp_registry_close(reg);
  reg = NULL;
  (void)kvp_refresh();
out:
  kvp_registry_close(reg);
  kvp_cert_rec_clear(&rec);
  kvp_object_put(o);
  return rv;
}

/* ---- C_GenerateKeyPair -------------------------------------------------- */

static kvp_backend *find_store(const char *default_store, char **scheme_out)
{
  const char *colon = default_store != NULL ? strchr(default_store, ':') : NULL;
  const char *scheme;

  if (colon == NULL)
    return NULL;
  scheme = strncmp(default_store, "vault:", 6) == 0 ? "keyvault"
           : strncmp(default_store, "hsm:", 4) == 0 ? "hsm"
                                                     : NULL;
  if (scheme == NULL)
    return NULL;
  *scheme_out = (char *)scheme;
  for (size_t i = 0; i < kvp_g.n_backends; i++)
    if (strcmp(kvp_g.backends[i]->ops->scheme, scheme) == 0 &&
        strcmp(kvp_g.backends[i]->name, colon + 1) == 0)
      return kvp_g.backends[i];
  return NULL;
}

/* Key Vault key names: letters, digits and '-', at most 127. */
static void vault_key_name(const char *label, char *out, size_t outlen)
{
  size_t i;

  for (i = 0; label[i] != '\0' && i + 1 < outlen && i < 127; i++) {
    unsigned char c = (unsigned char)label[i];
    out[i] = ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '-')
                 ? (char)c
                 : '-';
  }
  out[i] = '\0';
}

typedef struct gen_req {
  kvp_key_spec spec;
  const CK_ATTRIBUTE *label;
  const CK_ATTRIBUTE *id;
} gen_req;

/* The same attribute in both templates must agree. */
static CK_RV both(const CK_ATTRIBUTE *pub, CK_ULONG n_pub, const CK_ATTRIBUTE *priv,
                  CK_ULONG n_priv, CK_ATTRIBUTE_TYPE type, const CK_ATTRIBUTE **out)
{
  const CK_ATTRIBUTE *a = tmpl_find(pub, n_pub, type), *b = tmpl_find(priv, n_priv, type);

  if (a != NULL && b != NULL &&
      (a->ulValueLen != b->ulValueLen ||
       (a->ulValueLen > 0 && memcmp(a->pValue, b->pValue, a->ulValueLen) != 0))) {
    KVP_ERROR("C_GenerateKeyPair: %s differs between the public and private key templates",
              kvp_cka_name(type));
    return CKR_TEMPLATE_INCONSISTENT;
  }
  *out = b != NULL ? b : a;
  return CKR_OK;
}

/* CKA_MODULUS_BITS (2048, 3072, 4096) and CKA_PUBLIC_EXPONENT (65537) of an RSA key to make. */
static CK_RV gen_rsa_spec(const CK_ATTRIBUTE *pub, CK_ULONG n_pub, kvp_key_spec *spec)
{
  const CK_ATTRIBUTE *e = tmpl_find(pub, n_pub, CKA_PUBLIC_EXPONENT);
  CK_ULONG v = 0;
  int present;
  CK_RV rv;

  if ((rv = tmpl_ulong(pub, n_pub, CKA_MODULUS_BITS, &v, &present)) != CKR_OK)
    return rv;
  if (!present) {
    KVP_ERROR("C_GenerateKeyPair: CKA_MODULUS_BITS is required for RSA");
    return CKR_TEMPLATE_INCOMPLETE;
  }
  if (v != 2048 && v != 3072 && v != 4096) {
    /* CKR_KEY_SIZE_RANGE is not a return value of C_GenerateKeyPair (PKCS#11 2.40) */
    return kvp_fail(CKR_ATTRIBUTE_VALUE_INVALID,
                    "C_GenerateKeyPair: RSA keys of %lu bits are not supported (2048, 3072, "
                    "4096)",
                    (unsigned long)v);
  }
  if (e != NULL) {
    /* 65537, big-endian, leading zeros allowed */
    const unsigned char *b = e->pValue;
    unsigned long ev = 0;
    for (CK_ULONG i = 0; i < e->ulValueLen; i++)
      ev = ev > 0xffffff ? ~0UL : (ev << 8) | b[i];
    if (ev != 65537) {
      KVP_ERROR("C_GenerateKeyPair: only the public exponent 65537 is supported");
      return CKR_ATTRIBUTE_VALUE_INVALID;
    }
  }
  spec->type = KVP_KEY_RSA;
  spec->bits = (unsigned)v;
  return CKR_OK;
}

/* CKA_EC_PARAMS (the OID of P-256, P-384 or P-521) of an EC key to make. */
static CK_RV gen_ec_spec(const CK_ATTRIBUTE *pub, CK_ULONG n_pub, kvp_key_spec *spec)
{
  const CK_ATTRIBUTE *params = tmpl_find(pub, n_pub, CKA_EC_PARAMS);
  const unsigned char *p;
  ASN1_OBJECT *oid;
  int nid;

  if (params == NULL) {
    KVP_ERROR("C_GenerateKeyPair: CKA_EC_PARAMS is required for EC");
    return CKR_TEMPLATE_INCOMPLETE;
  }
  p = params->pValue;
  oid = params->ulValueLen > 0 ? d2i_ASN1_OBJECT(NULL, &p, (long)params->ulValueLen) : NULL;
  nid = oid != NULL && p == (const unsigned char *)params->pValue + params->ulValueLen
            ? OBJ_obj2nid(oid)
            : NID_undef;
  ASN1_OBJECT_free(oid);
  if (nid != NID_X9_62_prime256v1 && nid != NID_secp384r1 && nid != NID_secp521r1) {
    KVP_ERROR("C_GenerateKeyPair: CKA_EC_PARAMS must name P-256, P-384 or P-521 by OID");
    return CKR_CURVE_NOT_SUPPORTED;
  }
  spec->type = KVP_KEY_EC;
  spec->curve_nid = nid;
  return CKR_OK;
}

/* What a template of either key of a pair may carry: the storage-object and
 * common-key attributes of PKCS#11 2.40 (sections 4.4 and 4.7). */
#define KEY_COMMON_ATTRS                                                                          \
  CKA_CLASS, CKA_KEY_TYPE, CKA_TOKEN, CKA_PRIVATE, CKA_MODIFIABLE, CKA_COPYABLE, CKA_DESTROYABLE, \
      CKA_LABEL, CKA_ID, CKA_SUBJECT, CKA_START_DATE, CKA_END_DATE, CKA_DERIVE,                   \
      CKA_ALLOWED_MECHANISMS

static CK_RV parse_gen(CK_MECHANISM_TYPE mech, const CK_ATTRIBUTE *pub, CK_ULONG n_pub,
                       const CK_ATTRIBUTE *priv, CK_ULONG n_priv, gen_req *g)
{
  static const CK_ATTRIBUTE_TYPE pub_allowed[] = {
      KEY_COMMON_ATTRS, CKA_VERIFY, CKA_ENCRYPT, CKA_WRAP, CKA_VERIFY_RECOVER, CKA_TRUSTED,
      CKA_MODULUS_BITS, CKA_PUBLIC_EXPONENT, CKA_EC_PARAMS};
  static const CK_ATTRIBUTE_TYPE pub_false[] = {CKA_WRAP, CKA_VERIFY_RECOVER, CKA_DERIVE,
                                                CKA_TRUSTED};
  static const CK_ATTRIBUTE_TYPE priv_allowed[] = {
      KEY_COMMON_ATTRS, CKA_SENSITIVE, CKA_EXTRACTABLE, CKA_SIGN, CKA_DECRYPT, CKA_UNWRAP,
      CKA_SIGN_RECOVER, CKA_ALWAYS_AUTHENTICATE, CKA_WRAP_WITH_TRUSTED};
  static const CK_ATTRIBUTE_TYPE priv_false[] = {CKA_EXTRACTABLE, CKA_UNWRAP, CKA_SIGN_RECOVER,
                                                 CKA_DERIVE, CKA_ALWAYS_AUTHENTICATE};
  static const CK_ATTRIBUTE_TYPE priv_true[] = {CKA_SENSITIVE};
  CK_ULONG v = 0;
  int present, sign, decrypt;
  CK_RV rv;

  memset(g, 0, sizeof(*g));
  rv = tmpl_check("C_GenerateKeyPair public key template", pub, n_pub, pub_allowed,
                  KVP_ARRAY_SIZE(pub_allowed), pub_false, KVP_ARRAY_SIZE(pub_false), NULL, 0);
  if (rv == CKR_OK)
    rv = tmpl_check("C_GenerateKeyPair private key template", priv, n_priv, priv_allowed,
                    KVP_ARRAY_SIZE(priv_allowed), priv_false, KVP_ARRAY_SIZE(priv_false),
                    priv_true, KVP_ARRAY_SIZE(priv_true));
  if (rv != CKR_OK)
    return rv;
  /* class and key type, where given, must fit the mechanism */
  if ((rv = tmpl_ulong(pub, n_pub, CKA_CLASS, &v, &present)) != CKR_OK)
    return rv;
  if (present && v != CKO_PUBLIC_KEY)
    return CKR_TEMPLATE_INCONSISTENT;
  if ((rv = tmpl_ulong(priv, n_priv, CKA_CLASS, &v, &present)) != CKR_OK)
    return rv;
  if (present && v != CKO_PRIVATE_KEY)
    return CKR_TEMPLATE_INCONSISTENT;
  for (int i = 0; i < 2; i++) {
    if ((rv = tmpl_ulong(i ? priv : pub, i ? n_priv : n_pub, CKA_KEY_TYPE, &v, &present)) != CKR_OK)
      return rv;
    if (present && v != (mech == CKM_RSA_PKCS_KEY_PAIR_GEN ? CKK_RSA : CKK_EC))
      return CKR_TEMPLATE_INCONSISTENT;
  }
  if ((rv = both(pub, n_pub, priv, n_priv, CKA_LABEL, &g->label)) != CKR_OK ||
      (rv = both(pub, n_pub, priv, n_priv, CKA_ID, &g->id)) != CKR_OK)
    return rv;
  if (g->label != NULL && !label_ok(g->label)) {
    KVP_ERROR("C_GenerateKeyPair: CKA_LABEL must be 1 to 255 printable bytes");
    return CKR_ATTRIBUTE_VALUE_INVALID;
  }
  if (g->id != NULL && (g->id->ulValueLen == 0 || g->id->ulValueLen > 255)) {
    KVP_ERROR("C_GenerateKeyPair: CKA_ID must be 1 to 255 bytes");
    return CKR_ATTRIBUTE_VALUE_INVALID;
  }

  rv = mech == CKM_RSA_PKCS_KEY_PAIR_GEN ? gen_rsa_spec(pub, n_pub, &g->spec)
                                        : gen_ec_spec(pub, n_pub, &g->spec);
  if (rv != CKR_OK)
    return rv;

  if ((rv = tmpl_bool(priv, n_priv, CKA_SIGN, &sign)) != CKR_OK ||
      (rv = tmpl_bool(priv, n_priv, CKA_DECRYPT, &decrypt)) != CKR_OK)
    return rv;
  if (g->spec.type == KVP_KEY_EC && decrypt == 1) {
    KVP_ERROR("C_GenerateKeyPair: EC keys sign only (CKA_DECRYPT = CK_TRUE given)");
    return CKR_TEMPLATE_INCONSISTENT;
  }
  if (sign == 0 && (decrypt == 0 || (decrypt == -1 && g->spec.type == KVP_KEY_EC))) {
    KVP_ERROR("C_GenerateKeyPair: a key that can neither sign nor decrypt is of no use");
    return CKR_TEMPLATE_INCONSISTENT;
  }
  g->spec.ops = (sign != 0 ? KVP_KEYOP_SIGN : 0) |
                (g->spec.type == KVP_KEY_RSA && decrypt != 0 ? KVP_KEYOP_DECRYPT : 0);
  if (g->id != NULL) {
    g->spec.id = g->id->pValue;
    g->spec.id_len = g->id->ulValueLen;
  }
  return CKR_OK;
}

/* May this session generate a key pair with mech on the account's default_store? */
static CK_RV gen_allowed(const kvp_session *s, const CK_MECHANISM *mech, const char *account,
                         const char *default_store, int session_keys)
{
  if (mech->mechanism != CKM_RSA_PKCS_KEY_PAIR_GEN && mech->mechanism != CKM_EC_KEY_PAIR_GEN)
    return CKR_MECHANISM_INVALID;
  if (default_store == NULL) {
    KVP_ERROR("C_GenerateKeyPair: account '%s' has no default_store (set default_store = "
              "vault:NAME or hsm:NAME in its [account] section)",
              account);
    return CKR_MECHANISM_INVALID;
  }
  if (mech->pParameter != NULL || mech->ulParameterLen != 0)
    return CKR_MECHANISM_PARAM_INVALID;
  if (!session_keys && !(s->flags & CKF_RW_SESSION))
    return CKR_SESSION_READ_ONLY;
  return CKR_OK;
}

/* A token key pair needs CKA_TOKEN true in both templates; otherwise a session one. */
static CK_RV gen_session_keys(const CK_ATTRIBUTE *pub, CK_ULONG n_pub, const CK_ATTRIBUTE *priv,
                              CK_ULONG n_priv, int *session_keys)
{
  int tp, tk;
  CK_RV rv;

  if ((rv = tmpl_bool(pub, n_pub, CKA_TOKEN, &tp)) != CKR_OK ||
      (rv = tmpl_bool(priv, n_priv, CKA_TOKEN, &tk)) != CKR_OK)
    return rv;
  *session_keys = !(tp == 1 && tk == 1);
  return CKR_OK;
}

/* A key pair of session objects in the store (gone with the session s). */
static CK_RV generate_session_pair(kvp_session *s, kvp_backend *be, const char *scheme,
                                   const char *account, const gen_req *g,
                                   CK_OBJECT_HANDLE_PTR ph_pub, CK_OBJECT_HANDLE_PTR ph_priv)
{
  kvp_key *key = NULL;
  char ref[600], *label;
  CK_RV rv;

  if (be->ops->create_session_key == NULL)
    return kvp_fail(CKR_TEMPLATE_INCONSISTENT,
                    "C_GenerateKeyPair: CKA_TOKEN is false or absent (a session key pair), but "
                    "key store %s:%s keeps no session keys%s; set CKA_TOKEN = CK_TRUE in both "
                    "templates for a token key",
                    scheme, be->name,
                    strcmp(scheme, "keyvault") == 0 ? " (every key in a vault is permanent)" : "");
  if ((rv = be->ops->create_session_key(be, &g->spec, &key)) != CKR_OK)
    return rv; /* the backend recorded why */
  snprintf(ref, sizeof(ref), "%s:%s/%s", scheme, be->name, key->name);
  label = g->label != NULL ? label_dup(g->label) : strdup("");
  if (label == NULL) {
    key->backend->ops->close_key(key->backend, key);
    return CKR_HOST_MEMORY;
  }
  rv = kvp_sessobj_add_keypair(s, key, account, ref, label, g->spec.id, g->spec.id_len, ph_pub,
                               ph_priv);
  if (rv == CKR_OK)
    KVP_INFO("session %lu: generated %s session key pair '%s' in %s:%s (gone when the session "
             "closes)",
             (unsigned long)s->handle, g->spec.type == KVP_KEY_RSA ? "RSA" : "EC", label, scheme,
             be->name);
  free(label);
  return rv;
}

CK_RV kvp_generate_key_pair(kvp_session *s, CK_MECHANISM_PTR mech, CK_ATTRIBUTE_PTR pub,
                            CK_ULONG n_pub, CK_ATTRIBUTE_PTR priv, CK_ULONG n_priv,
                            CK_OBJECT_HANDLE_PTR ph_pub, CK_OBJECT_HANDLE_PTR ph_priv)
{
  char *account = NULL, *default_store = NULL, *scheme = NULL, *name = NULL;
  char keyname[256], ref[600], dflt[32];
  kvp_backend *be;
  kvp_registry *reg = NULL;
  kvp_key *key = NULL;
  kvp_cert_rec rec = {0};
  int64_t id = 0;
  gen_req g;
  int session_keys = 0;
  CK_RV rv;

  if (mech == NULL || (pub == NULL && n_pub != 0) || (priv == NULL && n_priv != 0) ||
      ph_pub == NULL || ph_priv == NULL)
    return CKR_ARGUMENTS_BAD;
  if ((rv = slot_account(s, &account, &default_store)) != CKR_OK)
    goto out;
  if ((rv = gen_session_keys(pub, n_pub, priv, n_priv, &session_keys)) != CKR_OK ||
      (rv = gen_allowed(s, mech, account, default_store, session_keys)) != CKR_OK ||
      (rv = parse_gen(mech->mechanism, pub, n_pub, priv, n_priv, &g)) != CKR_OK)
    goto out;
  be = find_store(default_store, &scheme);
  if (be == NULL) {
    KVP_ERROR("C_GenerateKeyPair: account '%s': default_store '%s' is not a configured key store",
              account, default_store);
    rv = CKR_DEVICE_ERROR;
    goto out;
  }
  if (session_keys) {
    rv = generate_session_pair(s, be, scheme, account, &g, ph_pub, ph_priv);
    goto out;
  }
  if (be->ops->create_key == NULL) {
    KVP_ERROR("C_GenerateKeyPair: key store %s cannot create keys", default_store);
    rv = CKR_FUNCTION_NOT_SUPPORTED;
    goto out;
  }
  if (g.label != NULL)
    name = label_dup(g.label);
  else
    default_name("key", dflt), name = strdup(dflt);
  if (name == NULL) {
    rv = CKR_HOST_MEMORY;
    goto out;
  }
  if (strcmp(scheme, "keyvault") == 0)
    vault_key_name(name, keyname, sizeof(keyname));
  else
    snprintf(keyname, sizeof(keyname), "%s", name);

  /* the registry name must be free before the key store is touched */
  if ((rv = open_writer(&reg)) != CKR_OK || (rv = kvp_prov_name_free(reg, account, name)) != CKR_OK)
    goto out;

  rv = be->ops->create_key(be, keyname, &g.spec, &key);
  if (rv != CKR_OK)
    goto out; /* the backend logged why */

  snprintf(ref, sizeof(ref), "%s:%s/%s", scheme, be->name, keyname);
  if ((rv = kvp_prov_key_row(key, account, name, ref, g.spec.id, g.spec.id_len, &rec)) != CKR_OK ||
      (rv = kvp_prov_register(reg, &rec, &id)) != CKR_OK)
    goto undo;
  KVP_INFO("account %s: generated %s key '%s' in %s%s%s through PKCS#11", account,
           g.spec.type == KVP_KEY_RSA ? "RSA" : "EC", name, default_store,
           key->version ? " version " : "", key->version ? key->version : "");
  kvp_audit_change("C_GenerateKeyPair", account, name, ref, NULL, NULL);
  *ph_pub = ((CK_OBJECT_HANDLE)id << 2) | KVP_OBJ_PUBKEY;
  *ph_priv = ((CK_OBJECT_HANDLE)id << 2) | KVP_OBJ_PRIVKEY;
  kvp_registry_close(reg);
  reg = NULL;
  (void)kvp_refresh();
  goto out;

undo:
  /* registration failed: do not leave a key nobody knows about */
  (void)kvp_prov_undo(be, keyname);
out:
  if (key != NULL)
    key->backend->ops->close_key(key->backend, key);
  kvp_cert_rec_clear(&rec);
  kvp_registry_close(reg);
  free(account);
  free(default_store);
  free(name);
  return rv;
}
