/*
 * PKCS#11 objects made from registry rows: per certificate a CKO_CERTIFICATE,
 * a CKO_PUBLIC_KEY and, for private certificates, a CKO_PRIVATE_KEY whose
 * operations run in the key store. Attribute values are computed once when
 * the object is made (find.c makes objects when they are first needed);
 * C_GetAttributeValue and C_FindObjects read them.
 */
#include "pkcs11/internal.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/core_names.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

#include "core/cert.h"
#include "core/log.h"
#include "core/p11names.h"
#include "core/status.h"
#include "core/util.h"
#include "pkcs11/mech.h"

/* ---- attribute list builder ------------------------------------------ */

typedef struct attr_list {
  kvp_attr *a;
  size_t n, cap;
  int failed;
} attr_list;

static void add_attr(attr_list *l, CK_ATTRIBUTE_TYPE t, const void *v, CK_ULONG len, int sensitive)
{
  if (l->failed)
    return;
  if (kvp_grow(&l->a, l->n, &l->cap, sizeof(*l->a), 32) != 0) {
    l->failed = 1;
    return;
  }
  kvp_attr *at = &l->a[l->n];
  at->type = t;
  at->len = len;
  at->sensitive = sensitive;
  at->value = NULL;
  if (len > 0) {
    at->value = malloc(len);
    if (at->value == NULL) {
      l->failed = 1;
      return;
    }
    memcpy(at->value, v, len);
  }
  l->n++;
}

static void add_bool(attr_list *l, CK_ATTRIBUTE_TYPE t, CK_BBOOL b)
{
  add_attr(l, t, &b, sizeof(b), 0);
}

static void add_ulong(attr_list *l, CK_ATTRIBUTE_TYPE t, CK_ULONG v)
{
  add_attr(l, t, &v, sizeof(v), 0);
}

/* Add the DER of an i2d_* result, taking ownership of it. */
static void add_der(attr_list *l, CK_ATTRIBUTE_TYPE t, unsigned char *der, int len)
{
  if (len <= 0) {
    l->failed = 1;
    return;
  }
  add_attr(l, t, der, (CK_ULONG)len, 0);
  OPENSSL_free(der);
}

static void add_date(attr_list *l, CK_ATTRIBUTE_TYPE t, int64_t when)
{
  CK_DATE d;
  struct tm tm;
  time_t tt = (time_t)when;
  char buf[40];

  if (gmtime_r(&tt, &tm) == NULL) {
    add_attr(l, t, NULL, 0, 0);
    return;
  }
  snprintf(buf, sizeof(buf), "%04d%02d%02d", (tm.tm_year + 1900) % 10000, tm.tm_mon + 1,
           tm.tm_mday);
  memcpy(d.year, buf, 4);
  memcpy(d.month, buf + 4, 2);
  memcpy(d.day, buf + 6, 2);
  add_attr(l, t, &d, sizeof(d), 0);
}

/* ---- key attributes -------------------------------------------------- */

static const CK_MECHANISM_TYPE rsa_mechs[] = {
    CKM_RSA_PKCS,        CKM_SHA256_RSA_PKCS,     CKM_SHA384_RSA_PKCS,
    CKM_SHA512_RSA_PKCS, CKM_RSA_PKCS_PSS,        CKM_SHA256_RSA_PKCS_PSS,
    CKM_SHA384_RSA_PKCS_PSS, CKM_SHA512_RSA_PKCS_PSS, CKM_RSA_PKCS_OAEP,
};
static const CK_MECHANISM_TYPE ec_mechs[] = {
    CKM_ECDSA, CKM_ECDSA_SHA256, CKM_ECDSA_SHA384, CKM_ECDSA_SHA512,
};

/* EC parameters and point as PKCS#11 wants them: DER OID, DER OCTET STRING. */
static void add_ec_public(attr_list *l, const kvp_spki *k)
{
  unsigned char *der = NULL;
  ASN1_OCTET_STRING *os;

  add_der(l, CKA_EC_PARAMS, der, i2d_ASN1_OBJECT(k->curve, &der));
  os = ASN1_OCTET_STRING_new();
  if (os == NULL || !ASN1_OCTET_STRING_set(os, k->point, k->point_len)) {
    ASN1_OCTET_STRING_free(os);
    l->failed = 1;
    return;
  }
  der = NULL;
  add_der(l, CKA_EC_POINT, der, i2d_ASN1_OCTET_STRING(os, &der));
  ASN1_OCTET_STRING_free(os);
}

static void add_common_key(attr_list *l, const kvp_spki *k, const unsigned char *id,
                           CK_ULONG id_len, const unsigned char *subject, int subject_len)
{
  add_ulong(l, CKA_KEY_TYPE, k->type == KVP_KEY_RSA ? CKK_RSA : CKK_EC);
  add_attr(l, CKA_ID, id, id_len, 0);
  add_attr(l, CKA_START_DATE, NULL, 0, 0);
  add_attr(l, CKA_END_DATE, NULL, 0, 0);
  add_bool(l, CKA_DERIVE, CK_FALSE);
  add_bool(l, CKA_LOCAL, CK_FALSE);
  add_ulong(l, CKA_KEY_GEN_MECHANISM, CK_UNAVAILABLE_INFORMATION);
  if (kvp_served_over_rpc()) /* p11-kit 0.24's RPC cannot carry it: absent, not an error */
    ;
  else if (k->type == KVP_KEY_RSA)
    add_attr(l, CKA_ALLOWED_MECHANISMS, rsa_mechs, sizeof(rsa_mechs), 0);
  else
    add_attr(l, CKA_ALLOWED_MECHANISMS, ec_mechs, sizeof(ec_mechs), 0);
  add_attr(l, CKA_SUBJECT, subject, (CK_ULONG)subject_len, 0);
  add_attr(l, CKA_PUBLIC_KEY_INFO, k->der, (CK_ULONG)k->der_len, 0);
  if (k->type == KVP_KEY_RSA) {
    add_attr(l, CKA_MODULUS, k->n, (CK_ULONG)k->n_len, 0);
    add_attr(l, CKA_PUBLIC_EXPONENT, k->e, (CK_ULONG)k->e_len, 0);
  } else {
    /* CKA_EC_POINT is public; on private keys clients (OpenSSL providers) read it too. */
    add_ec_public(l, k);
  }
}

static void add_storage(attr_list *l, CK_OBJECT_CLASS cls, int is_private, const char *label)
{
  add_ulong(l, CKA_CLASS, cls);
  add_bool(l, CKA_TOKEN, CK_TRUE);
  add_bool(l, CKA_PRIVATE, is_private ? CK_TRUE : CK_FALSE);
  add_bool(l, CKA_MODIFIABLE, CK_FALSE);
  add_bool(l, CKA_COPYABLE, CK_FALSE);
  /* C_DestroyObject removes a certificate from the registry; keys stay in
   * their store (deleting them is `kvp11 key delete`). */
  add_bool(l, CKA_DESTROYABLE, cls == CKO_CERTIFICATE ? CK_TRUE : CK_FALSE);
  add_attr(l, CKA_LABEL, label, (CK_ULONG)strlen(label), 0);
}

/* ---- objects from a registry row ------------------------------------- */

static kvp_object *object_new(CK_OBJECT_CLASS cls, int kind, const kvp_cert_rec *rec,
                              CK_SLOT_ID slot)
{
  kvp_object *o = calloc(1, sizeof(*o));
  if (o == NULL)
    return NULL;
  atomic_init(&o->refs, 1);
  pthread_mutex_init(&o->lock, NULL);
  o->cls = cls;
  o->slot = slot;
  o->row_id = rec->id;
  o->handle = ((CK_OBJECT_HANDLE)rec->id << 2) | (CK_OBJECT_HANDLE)kind;
  memcpy(o->sha256, rec->sha256, sizeof(o->sha256));
  o->rev = rec->rev;
  o->state = rec->state;
  o->label = strdup(rec->name);
  if (o->label == NULL) {
    kvp_object_free(o);
    return NULL;
  }
  return o;
}

static int finish_attrs(kvp_object *o, attr_list *l)
{
  o->attrs = l->a;
  o->n_attrs = l->n;
  return l->failed ? -1 : 0;
}

static kvp_backend *find_backend(kvp_backend **backends, size_t n, const char *scheme,
                                 const char *store)
{
  for (size_t i = 0; i < n; i++)
    if (strcmp(backends[i]->ops->scheme, scheme) == 0 && strcmp(backends[i]->name, store) == 0)
      return backends[i];
  return NULL;
}

/* What the objects of one registry row share. */
typedef struct {
  const kvp_cert_rec *rec;
  CK_SLOT_ID slot;
  kvp_spki k;
  kvp_cert_parts parts;
  const unsigned char *id; /* CKA_ID */
  CK_ULONG id_len;
} row_objects;

static kvp_object *key_object_new(const row_objects *r, CK_OBJECT_CLASS cls, int kind)
{
  kvp_object *o = object_new(cls, kind, r->rec, r->slot);
  if (o == NULL)
    return NULL;
  o->key_type = r->k.type;
  o->bits = r->k.bits;
  o->curve_nid = r->k.curve_nid;
  return o;
}

/* The certificate object of a row that has one. */
static kvp_object *cert_object(const row_objects *r)
{
  const kvp_cert_rec *rec = r->rec;
  unsigned char sha1[SHA_DIGEST_LENGTH];
  attr_list l = {0};
  kvp_object *cert = object_new(CKO_CERTIFICATE, KVP_OBJ_CERT, rec, r->slot);

  if (cert == NULL)
    return NULL;
  SHA1(rec->der, rec->der_len, sha1);
  add_storage(&l, CKO_CERTIFICATE, 0, rec->name);
  add_ulong(&l, CKA_CERTIFICATE_TYPE, CKC_X_509);
  add_bool(&l, CKA_TRUSTED, CK_FALSE);
  add_ulong(&l, CKA_CERTIFICATE_CATEGORY, rec->type == KVP_CERT_PRIVATE ? 1 : 3);
  add_attr(&l, CKA_CHECK_VALUE, sha1, 3, 0);
  add_date(&l, CKA_START_DATE, rec->not_before);
  add_date(&l, CKA_END_DATE, rec->not_after);
  add_attr(&l, CKA_SUBJECT, r->parts.subject, (CK_ULONG)r->parts.subject_len, 0);
  add_attr(&l, CKA_ID, r->id, r->id_len, 0);
  add_attr(&l, CKA_ISSUER, r->parts.issuer, (CK_ULONG)r->parts.issuer_len, 0);
  add_attr(&l, CKA_SERIAL_NUMBER, r->parts.serial, (CK_ULONG)r->parts.serial_len, 0);
  add_attr(&l, CKA_VALUE, rec->der, (CK_ULONG)rec->der_len, 0);
  add_attr(&l, CKA_URL, NULL, 0, 0);
  add_attr(&l, CKA_HASH_OF_SUBJECT_PUBLIC_KEY, r->k.id, sizeof(r->k.id), 0);
  add_attr(&l, CKA_HASH_OF_ISSUER_PUBLIC_KEY, NULL, 0, 0);
  add_ulong(&l, CKA_JAVA_MIDP_SECURITY_DOMAIN, 0);
  add_ulong(&l, CKA_NAME_HASH_ALGORITHM, CKM_SHA_1);
  if (finish_attrs(cert, &l) != 0) {
    kvp_object_free(cert);
    return NULL;
  }
  return cert;
}

/* The public key object; every row has one. */
static kvp_object *pub_object(const row_objects *r)
{
  attr_list l = {0};
  kvp_object *pub = key_object_new(r, CKO_PUBLIC_KEY, KVP_OBJ_PUBKEY);

  if (pub == NULL)
    return NULL;
  add_storage(&l, CKO_PUBLIC_KEY, 0, r->rec->name);
  add_common_key(&l, &r->k, r->id, r->id_len, r->parts.subject, (int)r->parts.subject_len);
  add_bool(&l, CKA_ENCRYPT, r->k.type == KVP_KEY_RSA);
  add_bool(&l, CKA_VERIFY, CK_TRUE);
  add_bool(&l, CKA_VERIFY_RECOVER, CK_FALSE);
  add_bool(&l, CKA_WRAP, CK_FALSE);
  add_bool(&l, CKA_TRUSTED, CK_FALSE);
  if (r->k.type == KVP_KEY_RSA)
    add_ulong(&l, CKA_MODULUS_BITS, r->k.bits);
  if (finish_attrs(pub, &l) != 0) {
    kvp_object_free(pub);
    return NULL;
  }
  return pub;
}

/* The private key's store: the configured backend its key reference names (NULL if none). */
static void priv_backend(kvp_object *priv, const kvp_cert_rec *rec, kvp_backend **backends,
                         size_t n_backends)
{
  char *scheme = NULL, *store = NULL, *name = NULL;
  char err[KVP_ERRLEN];

  if (kvp_keyref_parse(rec->key_ref, &scheme, &store, &name, err, sizeof(err)) == KVP_OK) {
    priv->backend = find_backend(backends, n_backends, scheme, store);
    priv->key_name = name;
    name = NULL;
    if (priv->backend == NULL)
      KVP_WARN("certificate '%s': key store '%s:%s' is not configured; its key cannot be used",
               rec->name, scheme, store);
  } else {
    KVP_WARN("certificate '%s': %s", rec->name, err);
  }
  free(scheme);
  free(store);
  free(name);
}

/* The private key object, for private certificates. */
static kvp_object *priv_object(const row_objects *r, kvp_backend **backends, size_t n_backends)
{
  const kvp_cert_rec *rec = r->rec;
  static const CK_ATTRIBUTE_TYPE rsa_secret[] = {CKA_PRIVATE_EXPONENT, CKA_PRIME_1, CKA_PRIME_2,
                                                 CKA_EXPONENT_1, CKA_EXPONENT_2,
                                                 CKA_COEFFICIENT};
  attr_list l = {0};
  kvp_object *priv = key_object_new(r, CKO_PRIVATE_KEY, KVP_OBJ_PRIVKEY);

  if (priv == NULL)
    return NULL;
  priv->key_ref = kvp_strdup0(rec->key_ref);
  priv->key_version = kvp_strdup0(rec->key_version);
  if (priv->key_ref == NULL || (rec->key_version != NULL && priv->key_version == NULL))
    goto fail;
  priv_backend(priv, rec, backends, n_backends);
  priv->is_private = priv->backend != NULL && priv->backend->ops->needs_login != NULL &&
                     priv->backend->ops->needs_login(priv->backend);

  add_storage(&l, CKO_PRIVATE_KEY, priv->is_private, rec->name);
  add_common_key(&l, &r->k, r->id, r->id_len, r->parts.subject, (int)r->parts.subject_len);
  add_bool(&l, CKA_SENSITIVE, CK_TRUE);
  add_bool(&l, CKA_DECRYPT, r->k.type == KVP_KEY_RSA);
  /* a retired certificate (replaced by a rotation) decrypts only */
  add_bool(&l, CKA_SIGN, rec->state == KVP_STATE_RETIRED ? CK_FALSE : CK_TRUE);
  add_bool(&l, CKA_SIGN_RECOVER, CK_FALSE);
  add_bool(&l, CKA_UNWRAP, CK_FALSE);
  add_bool(&l, CKA_EXTRACTABLE, CK_FALSE);
  add_bool(&l, CKA_ALWAYS_SENSITIVE, CK_TRUE);
  add_bool(&l, CKA_NEVER_EXTRACTABLE, CK_TRUE);
  add_bool(&l, CKA_WRAP_WITH_TRUSTED, CK_FALSE);
  add_bool(&l, CKA_ALWAYS_AUTHENTICATE, CK_FALSE);
  if (r->k.type == KVP_KEY_RSA) {
    for (size_t i = 0; i < KVP_ARRAY_SIZE(rsa_secret); i++)
      add_attr(&l, rsa_secret[i], NULL, 0, 1);
  } else {
    add_attr(&l, CKA_VALUE, NULL, 0, 1);
  }
  if (finish_attrs(priv, &l) == 0)
    return priv;
fail:
  kvp_object_free(priv);
  return NULL;
}

CK_RV kvp_objects_from_rec(const kvp_cert_rec *rec, CK_SLOT_ID slot, kvp_backend **backends,
                           size_t n_backends, kvp_object **out, size_t *n_out)
{
  /* der_len == 0: a key without a certificate yet (key pair objects only) */
  int key_only = rec->der_len == 0;
  kvp_object *cert = NULL, *pub = NULL, *priv = NULL;
  row_objects r;
  CK_RV rv = CKR_HOST_MEMORY;

  *n_out = 0;
  memset(&r, 0, sizeof(r));
  r.rec = rec;
  r.slot = slot;
  if (key_only && rec->type != KVP_CERT_PRIVATE) {
    KVP_ERROR("registry: entry '%s' has neither a certificate nor a key", rec->name);
    return CKR_GENERAL_ERROR;
  }
  if (!key_only && kvp_cert_split(rec->der, rec->der_len, &r.parts) != KVP_OK) {
    KVP_ERROR("registry: certificate '%s': stored DER does not parse", rec->name);
    return CKR_GENERAL_ERROR;
  }
  if ((key_only ? kvp_spki_from_der(rec->spki, rec->spki_len, &r.k)
                : kvp_spki_from_der(r.parts.spki, (size_t)r.parts.spki_len, &r.k)) != KVP_OK) {
    KVP_WARN("registry: %s '%s': unsupported or missing public key (RSA of 1024 to 8192 bits, "
             "or EC on P-256, P-384, P-521, secp256k1)",
             key_only ? "key" : "certificate", rec->name);
    rv = CKR_KEY_TYPE_INCONSISTENT;
    goto out;
  }
  /* CKA_ID: the one the application chose, else derived from the key */
  r.id = rec->ckid_len > 0 ? rec->ckid : r.k.id;
  r.id_len = rec->ckid_len > 0 ? (CK_ULONG)rec->ckid_len : (CK_ULONG)sizeof(r.k.id);

  if (!key_only && (cert = cert_object(&r)) == NULL)
    goto out;
  if ((pub = pub_object(&r)) == NULL)
    goto out;
  if (rec->type == KVP_CERT_PRIVATE && (priv = priv_object(&r, backends, n_backends)) == NULL)
    goto out;
  if (cert != NULL)
    out[(*n_out)++] = cert;
  out[(*n_out)++] = pub;
  if (priv != NULL)
    out[(*n_out)++] = priv;
  cert = pub = priv = NULL;
  rv = CKR_OK;
out:
  kvp_object_free(cert);
  kvp_object_free(pub);
  kvp_object_free(priv);
  kvp_spki_clear(&r.k);
  return rv;
}

void kvp_object_free(kvp_object *o)
{
  if (o == NULL)
    return;
  if (o->key != NULL && o->backend != NULL)
    o->backend->ops->close_key(o->backend, o->key);
  for (size_t i = 0; i < o->n_attrs; i++)
    free(o->attrs[i].value);
  free(o->attrs);
  EVP_PKEY_free(o->pub);
  KVP_FREE_ALL(o->key_ref, o->key_name, o->key_version, o->label);
  pthread_mutex_destroy(&o->lock);
  free(o);
}

/*
 * The EVP_PKEY of a key object, made at its first use from CKA_PUBLIC_KEY_INFO
 * (decoding a key is the costly part of an object; searches do not need it).
 * kvp_object_get calls this before handing out a key object, so code holding
 * an object reads o->pub directly.
 */
CK_RV kvp_object_ready(kvp_object *o)
{
  const kvp_attr *info;
  kvp_spki k;
  CK_RV rv = CKR_OK;

  if (o->cls == CKO_CERTIFICATE || __atomic_load_n(&o->pub, __ATOMIC_ACQUIRE) != NULL)
    return CKR_OK;
  pthread_mutex_lock(&o->lock);
  if (o->pub == NULL) {
    EVP_PKEY *pkey = NULL;
    info = kvp_object_attr(o, CKA_PUBLIC_KEY_INFO);
    if (info != NULL && kvp_spki_from_der(info->value, info->len, &k) == KVP_OK) {
      pkey = kvp_spki_pubkey(&k);
      kvp_spki_clear(&k);
    }
    if (pkey == NULL)
      rv = kvp_fail(CKR_GENERAL_ERROR, "'%s': cannot make the public key", o->label);
    else
      __atomic_store_n(&o->pub, pkey, __ATOMIC_RELEASE);
  }
  pthread_mutex_unlock(&o->lock);
  return rv;
}

/* The one call into the backend that opens a private key object's key, with
 * the registered version and public key: Key Vault opens without a request,
 * an HSM checks the key pair it finds against it. */
static CK_RV open_backend_key(kvp_object *o, kvp_key **key)
{
  const kvp_attr *info = kvp_object_attr(o, CKA_PUBLIC_KEY_INFO);
  kvp_key_ref_hint hint = {o->key_version, info != NULL ? info->value : NULL,
                           info != NULL ? (size_t)info->len : 0};

  return kvp_backend_open_key(o->backend, o->key_name, &hint, key);
}

CK_RV kvp_object_key(kvp_object *o, kvp_key **out)
{
  CK_RV rv = CKR_OK;

  if (o->backend == NULL) {
    KVP_ERROR("certificate '%s': key reference '%s' names no configured key store", o->label,
              o->key_ref ? o->key_ref : "");
    return CKR_KEY_HANDLE_INVALID;
  }
  /* Fast path: the key is opened once and never replaced while the object lives. */
  *out = __atomic_load_n(&o->key, __ATOMIC_ACQUIRE);
  if (*out != NULL)
    return CKR_OK;
  pthread_mutex_lock(&o->lock);
  if (o->key == NULL) {
    kvp_key *key = NULL;
    rv = open_backend_key(o, &key);
    if (rv == CKR_OK && !kvp_pubkey_equal(key->pub, o->pub)) {
      char want[72], got[72];
      kvp_pubkey_fingerprint(o->pub, want);
      kvp_pubkey_fingerprint(key->pub, got);
      KVP_ERROR("certificate '%s': key '%s' in the key store no longer matches the certificate "
                "(certificate %s, key %s)",
                o->label, o->key_ref, want, got);
      o->backend->ops->close_key(o->backend, key);
      key = NULL;
      rv = CKR_KEY_HANDLE_INVALID;
    }
    if (rv == CKR_OK)
      __atomic_store_n(&o->key, key, __ATOMIC_RELEASE);
  }
  *out = o->key;
  pthread_mutex_unlock(&o->lock);
  return rv;
}

/* ---- attributes ------------------------------------------------------ */

const kvp_attr *kvp_object_attr(const kvp_object *o, CK_ATTRIBUTE_TYPE t)
{
  for (size_t i = 0; i < o->n_attrs; i++)
    if (o->attrs[i].type == t)
      return &o->attrs[i];
  return NULL;
}

/*
 * C_GetAttributeValue (PKCS#11 2.40 5.7): every attribute of the template is
 * processed; the return value is the "worst" condition met, in the order
 * sensitive, type invalid, buffer too small.
 */
CK_RV kvp_object_get_attributes(const kvp_object *o, CK_ATTRIBUTE_PTR tmpl, CK_ULONG n)
{
  int sensitive = 0, invalid = 0, small = 0;

  for (CK_ULONG i = 0; i < n; i++) {
    const kvp_attr *a = kvp_object_attr(o, tmpl[i].type);
    if (a == NULL) {
      tmpl[i].ulValueLen = CK_UNAVAILABLE_INFORMATION;
      invalid = 1;
    } else if (a->sensitive) {
      tmpl[i].ulValueLen = CK_UNAVAILABLE_INFORMATION;
      sensitive = 1;
    } else if (tmpl[i].pValue == NULL) {
      tmpl[i].ulValueLen = a->len;
    } else if (tmpl[i].ulValueLen < a->len) {
      tmpl[i].ulValueLen = CK_UNAVAILABLE_INFORMATION;
      small = 1;
    } else {
      if (a->len)
        memcpy(tmpl[i].pValue, a->value, a->len);
      tmpl[i].ulValueLen = a->len;
    }
  }
  if (sensitive)
    return CKR_ATTRIBUTE_SENSITIVE;
  if (invalid)
    return CKR_ATTRIBUTE_TYPE_INVALID;
  if (small)
    return CKR_BUFFER_TOO_SMALL;
  return CKR_OK;
}

int kvp_object_match(const kvp_object *o, const CK_ATTRIBUTE *tmpl, CK_ULONG n)
{
  for (CK_ULONG i = 0; i < n; i++) {
    const kvp_attr *a = kvp_object_attr(o, tmpl[i].type);
    if (a == NULL || a->sensitive || a->len != tmpl[i].ulValueLen)
      return 0;
    if (a->len && (tmpl[i].pValue == NULL || memcmp(a->value, tmpl[i].pValue, a->len) != 0))
      return 0;
  }
  return 1;
}
