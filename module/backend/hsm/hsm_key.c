/*
 * Keys of the HSM backend: open_key and the resolution of a key pair.
 *
 * A key name is a CKA_LABEL, or "id:<hex>" for a CKA_ID. The private and
 * public objects are resolved together:
 *  - the private key objects with the label (or id); more than one is an
 *    ambiguous name, refused with an error naming the candidates by
 *    CKA_ID, unless a wanted public key (a registered certificate's) picks
 *    exactly one of them;
 *  - the public key object with the label and the private key's CKA_ID
 *    (by the label alone only when that finds exactly one); more than one
 *    is ambiguous too;
 *  - an RSA private object carries its modulus and exponent: they must be
 *    the public key's, else the pair is refused.
 * The private handle is cached and re-resolved when the HSM says it is
 * invalid, or after a login; the re-resolved object must still carry the
 * same public key. An EC private object does not carry its point, so the
 * first signature of every newly resolved private key is verified here
 * with the public key (kvp_hsm_check_sig): a key swapped in the HSM cannot
 * produce silent bad signatures.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/x509.h>

#include "backend/hsm/hsm_internal.h"
#include "core/cert.h"
#include "core/log.h"
#include "core/p11names.h"
#include "core/status.h"
#include "core/util.h"

#define KVP_HSM_MAX_CANDIDATES 8

/* ---------- attributes and public keys ---------- */

CK_RV kvp_hsm_get_attr(kvp_hsm_backend *be, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o,
                       CK_ATTRIBUTE_TYPE t, CK_BYTE **val, CK_ULONG *len)
{
  CK_ATTRIBUTE a = {t, NULL, 0};
  *val = NULL;
  *len = 0;
  CK_RV rv = KVP_HSM_CALL(be, C_GetAttributeValue, s, o, &a, 1);
  if (rv != CKR_OK)
    return rv;
  if (a.ulValueLen == CK_UNAVAILABLE_INFORMATION || a.ulValueLen == 0)
    return CKR_ATTRIBUTE_TYPE_INVALID;
  a.pValue = malloc(a.ulValueLen);
  if (a.pValue == NULL)
    return CKR_HOST_MEMORY;
  rv = KVP_HSM_CALL(be, C_GetAttributeValue, s, o, &a, 1);
  if (rv != CKR_OK) {
    free(a.pValue);
    return rv;
  }
  *val = a.pValue;
  *len = a.ulValueLen;
  return CKR_OK;
}

/* Keys are built through kvp_pubkey_from_rsa/ec (core/cert.h): those work
 * inside applications that made an ENGINE their default for RSA and EC. */
CK_RV kvp_hsm_build_rsa(const CK_BYTE *n, CK_ULONG n_len, const CK_BYTE *e, CK_ULONG e_len,
                        EVP_PKEY **out)
{
  ERR_set_mark();
  *out = kvp_pubkey_from_rsa(n, n_len, e, e_len);
  ERR_pop_to_mark();
  return *out != NULL ? CKR_OK : CKR_FUNCTION_FAILED;
}

CK_RV kvp_hsm_build_ec(const CK_BYTE *ec_params, CK_ULONG params_len, const CK_BYTE *ec_point,
                       CK_ULONG point_len, EVP_PKEY **out)
{
  const unsigned char *p = ec_params;
  ERR_set_mark();
  ASN1_OBJECT *oid = d2i_ASN1_OBJECT(NULL, &p, (long)params_len);
  ASN1_OCTET_STRING *os = NULL;
  int nid = oid != NULL ? OBJ_obj2nid(oid) : NID_undef;

  ASN1_OBJECT_free(oid);
  *out = NULL;
  if (nid != NID_undef) {
    p = ec_point;
    os = d2i_ASN1_OCTET_STRING(NULL, &p, (long)point_len);
    if (os != NULL && p == ec_point + point_len && os->length > 0)
      *out = kvp_pubkey_from_ec(nid, os->data, (size_t)os->length);
    ASN1_OCTET_STRING_free(os);
    /* a raw point (or one whose bytes happened to parse as DER): the whole value */
    if (*out == NULL)
      *out = kvp_pubkey_from_ec(nid, ec_point, point_len);
  }
  ERR_pop_to_mark();
  if (nid == NID_undef)
    return CKR_KEY_TYPE_INCONSISTENT;
  return *out != NULL ? CKR_OK : CKR_FUNCTION_FAILED;
}

static CK_RV get_key_type(kvp_hsm_backend *be, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
                          CK_KEY_TYPE *kt)
{
  CK_ATTRIBUTE a = {CKA_KEY_TYPE, kt, sizeof(*kt)};
  *kt = CKK_VENDOR_DEFINED;
  return KVP_HSM_CALL(be, C_GetAttributeValue, s, h, &a, 1);
}

CK_RV kvp_hsm_pub_from_object(kvp_hsm_backend *be, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
                              EVP_PKEY **out)
{
  CK_BYTE *a = NULL, *b = NULL;
  CK_ULONG a_len = 0, b_len = 0;
  CK_KEY_TYPE kt;
  CK_RV rv = get_key_type(be, s, h, &kt);

  *out = NULL;
  if (rv != CKR_OK)
    return rv;
  if (kt == CKK_RSA) {
    rv = kvp_hsm_get_attr(be, s, h, CKA_MODULUS, &a, &a_len);
    if (rv == CKR_OK)
      rv = kvp_hsm_get_attr(be, s, h, CKA_PUBLIC_EXPONENT, &b, &b_len);
    if (rv == CKR_OK)
      rv = kvp_hsm_build_rsa(a, a_len, b, b_len, out);
  } else if (kt == CKK_EC) {
    rv = kvp_hsm_get_attr(be, s, h, CKA_EC_PARAMS, &a, &a_len);
    if (rv == CKR_OK)
      rv = kvp_hsm_get_attr(be, s, h, CKA_EC_POINT, &b, &b_len);
    if (rv == CKR_OK)
      rv = kvp_hsm_build_ec(a, a_len, b, b_len, out);
  } else {
    rv = CKR_KEY_TYPE_INCONSISTENT;
  }
  free(a);
  free(b);
  return rv;
}

/* ---------- finding objects ---------- */

/* Objects of class cls with label (if any) and id (if any), up to cap. */
static CK_RV find_objs(kvp_hsm_backend *be, CK_SESSION_HANDLE s, CK_OBJECT_CLASS cls,
                       const char *label, const CK_BYTE *id, CK_ULONG id_len, CK_OBJECT_HANDLE *out,
                       CK_ULONG cap, CK_ULONG *n)
{
  CK_ATTRIBUTE t[3] = {{CKA_CLASS, &cls, sizeof(cls)}};
  CK_ULONG nt = 1;
  if (label != NULL) {
    t[nt].type = CKA_LABEL;
    t[nt].pValue = (void *)label;
    t[nt++].ulValueLen = (CK_ULONG)strlen(label);
  }
  if (id != NULL) {
    t[nt].type = CKA_ID;
    t[nt].pValue = (void *)id;
    t[nt++].ulValueLen = id_len;
  }
  *n = 0;
  CK_RV rv = KVP_HSM_CALL(be, C_FindObjectsInit, s, t, nt);
  if (rv != CKR_OK)
    return rv;
  rv = KVP_HSM_CALL(be, C_FindObjects, s, out, cap, n);
  (void)KVP_HSM_CALL(be, C_FindObjectsFinal, s);
  return rv;
}

/* k's objects of class cls, narrowed to the pair's CKA_ID when known. */
static CK_RV find_for_key(kvp_hsm_backend *be, CK_SESSION_HANDLE s, const kvp_hsm_key *k,
                          CK_OBJECT_CLASS cls, CK_OBJECT_HANDLE *out, CK_ULONG *n)
{
  const CK_BYTE *id = k->id ? k->id : k->pair_id;
  CK_ULONG id_len = k->id ? k->id_len : k->pair_id_len;
  CK_RV rv = find_objs(be, s, cls, k->label, id, id_len, out, KVP_HSM_MAX_CANDIDATES, n);
  /* a pair whose CKA_IDs differ: by the label alone */
  if (rv == CKR_OK && *n == 0 && k->label != NULL && id != NULL)
    rv = find_objs(be, s, cls, k->label, NULL, 0, out, KVP_HSM_MAX_CANDIDATES, n);
  return rv;
}

/* "CKA_ID 0a0b" (or "handle N") of an object, for messages. */
static void describe(kvp_hsm_backend *be, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, char *buf,
                     size_t cap)
{
  CK_BYTE *id = NULL;
  CK_ULONG len = 0;
  if (kvp_hsm_get_attr(be, s, h, CKA_ID, &id, &len) == CKR_OK && len <= 32) {
    char hex[65];
    kvp_hex(id, len, hex);
    snprintf(buf, cap, "CKA_ID %s", hex);
  } else {
    snprintf(buf, cap, "object handle %lu", (unsigned long)h);
  }
  free(id);
}

/* Refuse a name that several objects carry (none_wanted: none of them is
 * the registered key), naming two of them. */
static CK_RV refuse_candidates(kvp_hsm_backend *be, CK_SESSION_HANDLE s, const kvp_hsm_key *k,
                               CK_OBJECT_CLASS cls, const CK_OBJECT_HANDLE *h, CK_ULONG n,
                               int none_wanted)
{
  char a[80], b[80];
  describe(be, s, h[0], a, sizeof(a));
  describe(be, s, h[1], b, sizeof(b));
  (void)kvp_fail(CKR_KEY_HANDLE_INVALID,
                 "hsm %s: key '%s' is ambiguous in token '%s': %s%lu %s key objects match "
                 "(%s and %s)%s",
                 be->base.name, kvp_hsm_key_desc(k), kvp_hsm_token(be),
                 n >= KVP_HSM_MAX_CANDIDATES ? "at least " : "", (unsigned long)n,
                 cls == CKO_PRIVATE_KEY ? "private" : "public", a, b,
                 none_wanted ? " and none is the registered certificate's key"
                             : "; refer to one as id:<hex>, or relabel the other");
  return KVP_HSM_KEY_REFUSED;
}

static CK_RV ambiguous(kvp_hsm_backend *be, CK_SESSION_HANDLE s, const kvp_hsm_key *k,
                       CK_OBJECT_CLASS cls, const CK_OBJECT_HANDLE *h, CK_ULONG n)
{
  return refuse_candidates(be, s, k, cls, h, n, 0);
}

CK_RV kvp_hsm_find_object(kvp_hsm_backend *be, CK_SESSION_HANDLE s, const kvp_hsm_key *k,
                          CK_OBJECT_CLASS cls, CK_OBJECT_HANDLE *out)
{
  CK_OBJECT_HANDLE h[KVP_HSM_MAX_CANDIDATES];
  CK_ULONG n = 0;
  *out = CK_INVALID_HANDLE;
  CK_RV rv = find_for_key(be, s, k, cls, h, &n);
  if (rv != CKR_OK)
    return rv;
  if (n == 0)
    return CKR_KEY_HANDLE_INVALID;
  if (n > 1)
    return ambiguous(be, s, k, cls, h, n);
  *out = h[0];
  return CKR_OK;
}

/* The public key that private object h belongs to: RSA from its own
 * modulus, EC from the public object with its CKA_ID (NULL if unknown). */
static EVP_PKEY *private_pub(kvp_hsm_backend *be, CK_SESSION_HANDLE s, const kvp_hsm_key *k,
                             CK_OBJECT_HANDLE h)
{
  EVP_PKEY *p = NULL;
  CK_KEY_TYPE kt;
  if (get_key_type(be, s, h, &kt) != CKR_OK)
    return NULL;
  if (kt == CKK_RSA) {
    (void)kvp_hsm_pub_from_object(be, s, h, &p);
    return p;
  }
  CK_BYTE *id = NULL;
  CK_ULONG id_len = 0, n = 0;
  CK_OBJECT_HANDLE pub[2];
  if (kvp_hsm_get_attr(be, s, h, CKA_ID, &id, &id_len) == CKR_OK &&
      find_objs(be, s, CKO_PUBLIC_KEY, k->label, id, id_len, pub, 2, &n) == CKR_OK && n == 1)
    (void)kvp_hsm_pub_from_object(be, s, pub[0], &p);
  free(id);
  return p;
}

/*
 * The private key object of k. want (may be NULL): the public key it must
 * have; it picks one among several candidates, and a single candidate whose
 * public key is known and differs is refused.
 */
static CK_RV pick_private(kvp_hsm_backend *be, CK_SESSION_HANDLE s, const kvp_hsm_key *k,
                          const EVP_PKEY *want, CK_OBJECT_HANDLE *out)
{
  CK_OBJECT_HANDLE h[KVP_HSM_MAX_CANDIDATES];
  CK_ULONG n = 0, match = 0, pick = 0, known = 0;
  *out = CK_INVALID_HANDLE;
  CK_RV rv = find_for_key(be, s, k, CKO_PRIVATE_KEY, h, &n);
  if (rv != CKR_OK)
    return rv;
  if (n == 0)
    return CKR_KEY_HANDLE_INVALID;
  if (want == NULL && n > 1)
    return ambiguous(be, s, k, CKO_PRIVATE_KEY, h, n);
  if (want != NULL) {
    for (CK_ULONG i = 0; i < n; i++) {
      EVP_PKEY *p = private_pub(be, s, k, h[i]);
      if (p != NULL) {
        known++;
        if (kvp_pubkey_equal(p, want)) {
          match++;
          pick = i;
        }
      }
      EVP_PKEY_free(p);
    }
    if (match == 1) {
      *out = h[pick];
      return CKR_OK;
    }
    if (n > 1 && match == 0 && known == n) /* none of them is the registered key */
      return refuse_candidates(be, s, k, CKO_PRIVATE_KEY, h, n, 1);
    if (n > 1)
      return ambiguous(be, s, k, CKO_PRIVATE_KEY, h, n);
    if (known == 1) { /* the one candidate is another key */
      (void)kvp_fail(CKR_KEY_HANDLE_INVALID,
                     "hsm %s: the private key '%s' in token '%s' is not the key pair's (its "
                     "public key differs: replaced in the HSM?)",
                     be->base.name, kvp_hsm_key_desc(k), kvp_hsm_token(be));
      return KVP_HSM_KEY_REFUSED;
    }
  }
  *out = h[0];
  return CKR_OK;
}

/* Resolve the private key handle (and its CKA_SIGN / CKA_DECRYPT); the
 * object must belong to k->key.pub when that is known. */
CK_RV kvp_hsm_resolve_private(kvp_hsm_backend *be, CK_SESSION_HANDLE s, kvp_hsm_key *k,
                              CK_BBOOL *can_sign, CK_BBOOL *can_decrypt)
{
  unsigned long gen = atomic_load(&be->login_gen);
  CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
  CK_RV rv = pick_private(be, s, k, k->key.pub, &h);
  if (rv != CKR_OK)
    return rv;
  if (can_sign != NULL || can_decrypt != NULL) {
    CK_BBOOL sgn = CK_FALSE, dec = CK_FALSE;
    CK_ATTRIBUTE t[2] = {{CKA_SIGN, &sgn, sizeof(sgn)}, {CKA_DECRYPT, &dec, sizeof(dec)}};
    CK_RV arv = KVP_HSM_CALL(be, C_GetAttributeValue, s, h, t, 2);
    if (arv != CKR_OK && arv != CKR_ATTRIBUTE_TYPE_INVALID)
      return arv;
    if (can_sign)
      *can_sign = t[0].ulValueLen == CK_UNAVAILABLE_INFORMATION ? CK_FALSE : sgn;
    if (can_decrypt)
      *can_decrypt = t[1].ulValueLen == CK_UNAVAILABLE_INFORMATION ? CK_FALSE : dec;
  }
  if ((CK_OBJECT_HANDLE)atomic_exchange(&k->priv, (unsigned long)h) != h)
    atomic_store(&k->checked, 0); /* a new object: check its first result */
  atomic_store(&k->priv_gen, gen);
  return CKR_OK;
}

/* ---------- open_key ---------- */

/* k->key.pub from the public key object of the pair (RSA: the private
 * object's modulus and exponent when there is no public object). */
static CK_RV read_public(kvp_hsm_backend *be, CK_SESSION_HANDLE s, kvp_hsm_key *k,
                         CK_OBJECT_HANDLE priv, const EVP_PKEY *want)
{
  CK_OBJECT_HANDLE h[KVP_HSM_MAX_CANDIDATES], src = priv;
  CK_ULONG n = 0;
  CK_KEY_TYPE kt;
  CK_RV rv = find_for_key(be, s, k, CKO_PUBLIC_KEY, h, &n);
  if (rv != CKR_OK)
    return rv;
  for (CK_ULONG i = 0; n > 1 && want != NULL && i < n; i++) {
    EVP_PKEY *p = NULL;
    if (kvp_hsm_pub_from_object(be, s, h[i], &p) == CKR_OK && kvp_pubkey_equal(p, want)) {
      h[0] = h[i];
      n = 1;
    }
    EVP_PKEY_free(p);
  }
  if (n > 1)
    return ambiguous(be, s, k, CKO_PUBLIC_KEY, h, n);
  if (n == 1)
    src = h[0];
  if (src == CK_INVALID_HANDLE)
    return CKR_KEY_HANDLE_INVALID;
  rv = get_key_type(be, s, src, &kt);
  if (rv != CKR_OK)
    return rv;
  if (kt == CKK_EC && src == priv) {
    k->no_ec_public = 1; /* open_key says so in its log line */
    return CKR_KEY_HANDLE_INVALID;
  }
  if (kt != CKK_RSA && kt != CKK_EC)
    return kvp_fail(CKR_KEY_TYPE_INCONSISTENT, "hsm %s: key '%s': unsupported key type 0x%lx",
                    be->base.name, kvp_hsm_key_desc(k), (unsigned long)kt);
  rv = kvp_hsm_pub_from_object(be, s, src, &k->key.pub);
  if (rv != CKR_OK && src != priv && priv != CK_INVALID_HANDLE && kt == CKK_RSA)
    rv = kvp_hsm_pub_from_object(be, s, priv, &k->key.pub);
  if (rv != CKR_OK && rv != CKR_HOST_MEMORY && !kvp_hsm_session_gone(rv))
    return kvp_fail(kvp_hsm_map_rv(rv) == CKR_FUNCTION_FAILED ? CKR_DEVICE_ERROR
                                                              : kvp_hsm_map_rv(rv),
                    "hsm %s: key '%s': cannot build the public key from the HSM's attributes "
                    "(%s)",
                    be->base.name, kvp_hsm_key_desc(k), kvp_ckr_name(rv));
  return rv;
}

/* Resolve the pair on session s: the private key (when visible) and the
 * public key. *priv stays CK_INVALID_HANDLE when no private key is visible. */
static CK_RV lookup_pair(kvp_hsm_backend *be, CK_SESSION_HANDLE s, kvp_hsm_key *k, int visible,
                         const EVP_PKEY *want, CK_OBJECT_HANDLE *priv, CK_BBOOL *can_sign,
                         CK_BBOOL *can_dec)
{
  EVP_PKEY_free(k->key.pub);
  k->key.pub = NULL;
  free(k->pair_id);
  k->pair_id = NULL;
  k->pair_id_len = 0;
  *priv = CK_INVALID_HANDLE;
  if (visible) {
    CK_RV rv = pick_private(be, s, k, want, priv);
    if (rv != CKR_OK && rv != CKR_KEY_HANDLE_INVALID)
      return rv; /* KVP_HSM_KEY_REFUSED: ambiguous or another key */
  }
  if (*priv != CK_INVALID_HANDLE && k->id == NULL)
    (void)kvp_hsm_get_attr(be, s, *priv, CKA_ID, &k->pair_id, &k->pair_id_len);
  CK_RV rv = read_public(be, s, k, *priv, want);
  if (rv != CKR_OK)
    return rv;
  if (k->pair_id == NULL && k->id == NULL) { /* not logged in: the public object's */
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    if (kvp_hsm_find_object(be, s, k, CKO_PUBLIC_KEY, &h) == CKR_OK)
      (void)kvp_hsm_get_attr(be, s, h, CKA_ID, &k->pair_id, &k->pair_id_len);
  }
  if (*priv == CK_INVALID_HANDLE)
    return CKR_OK;
  /* the private object must belong to that public key (RSA: its modulus) */
  rv = pick_private(be, s, k, k->key.pub, priv);
  if (rv != CKR_OK)
    return rv;
  atomic_store(&k->priv, CK_INVALID_HANDLE);
  return kvp_hsm_resolve_private(be, s, k, can_sign, can_dec);
}

static void key_free(kvp_hsm_key *k)
{
  if (k == NULL)
    return;
  EVP_PKEY_free(k->key.pub);
  free(k->key.name);
  free(k->key.version);
  free(k->label);
  free(k->id);
  free(k->pair_id);
  free(k);
}

void kvp_hsm_close_key(kvp_backend *be, kvp_key *key)
{
  (void)be;
  if (key != NULL)
    key_free((kvp_hsm_key *)key->impl);
}

CK_RV kvp_hsm_parse_name(kvp_hsm_key *k, const char *name)
{
  if (strncmp(name, "id:", 3) != 0) {
    if (name[0] == '\0')
      return CKR_ARGUMENTS_BAD;
    k->label = strdup(name);
    return k->label ? CKR_OK : CKR_HOST_MEMORY;
  }
  const char *hex = name + 3;
  size_t n = strlen(hex);
  if (n == 0 || n % 2 != 0 || strspn(hex, "0123456789abcdefABCDEF") != n)
    return CKR_ARGUMENTS_BAD;
  long len = 0;
  ERR_set_mark();
  unsigned char *id = OPENSSL_hexstr2buf(hex, &len);
  ERR_pop_to_mark();
  if (id == NULL || len <= 0 || (size_t)len != n / 2) {
    OPENSSL_free(id);
    return CKR_ARGUMENTS_BAD;
  }
  k->id = malloc((size_t)len);
  if (k->id != NULL)
    memcpy(k->id, id, (size_t)len);
  OPENSSL_free(id);
  k->id_len = (CK_ULONG)len;
  return k->id ? CKR_OK : CKR_HOST_MEMORY;
}

CK_RV kvp_hsm_check_sig(kvp_hsm_backend *be, kvp_hsm_key *k, const kvp_sig_alg *alg,
                        const CK_BYTE *digest, CK_ULONG digest_len, const CK_BYTE *sig,
                        CK_ULONG sig_len)
{
  if (atomic_load_explicit(&k->checked, memory_order_acquire))
    return CKR_OK;
  if (!kvp_sig_verify(k->key.pub, alg, digest, digest_len, sig, sig_len)) {
    atomic_store(&k->priv, CK_INVALID_HANDLE); /* resolve (and check) again next time */
    return kvp_fail(CKR_DEVICE_ERROR,
                    "hsm %s: key '%s': the HSM's signature does not verify with the key's "
                    "public key (the private key in token '%s' is another key)",
                    be->base.name, kvp_hsm_key_desc(k), kvp_hsm_token(be));
  }
  atomic_store_explicit(&k->checked, 1, memory_order_release);
  return CKR_OK;
}

/* The "no key" line of open_key. */
static CK_RV no_key(kvp_hsm_backend *be, const kvp_hsm_key *k, int visible)
{
  return kvp_fail(CKR_KEY_HANDLE_INVALID, "hsm %s: no key '%s' in token '%s'%s", be->base.name,
                  kvp_hsm_key_desc(k), kvp_hsm_token(be),
                  k->no_ec_public ? " (only an EC private key object, which does not carry its "
                                    "public point; a public key object is needed)"
                  : visible       ? ""
                                  : " (private objects are visible only after C_Login)");
}

static kvp_hsm_key *key_new(kvp_backend *bep, const char *name)
{
  kvp_hsm_key *k = calloc(1, sizeof(*k));
  if (k == NULL)
    return NULL;
  k->key.backend = bep;
  k->key.impl = k;
  atomic_init(&k->priv, CK_INVALID_HANDLE);
  atomic_init(&k->priv_gen, 0);
  atomic_init(&k->checked, 0);
  k->key.name = strdup(name);
  if (k->key.name == NULL) {
    free(k);
    return NULL;
  }
  return k;
}

/* Resolve the pair on a pooled session (once more on a fresh one if the
 * pooled one is gone, and after a new login if the token forgot ours). */
static CK_RV open_lookup(kvp_hsm_backend *be, kvp_hsm_key *k, int visible, const EVP_PKEY *want,
                         CK_OBJECT_HANDLE *priv, CK_BBOOL *can_sign, CK_BBOOL *can_dec)
{
  CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
  CK_RV rv = kvp_hsm_pool_get(be, 0, &s);
  if (rv != CKR_OK)
    return kvp_fail(kvp_hsm_map_rv(rv), "hsm %s: C_OpenSession (key '%s'): %s", be->base.name,
                    kvp_hsm_key_desc(k), kvp_ckr_name(rv));
  rv = lookup_pair(be, s, k, visible, want, priv, can_sign, can_dec);
  if (kvp_hsm_session_gone(rv)) { /* our pooled session is gone: once more on a new one */
    kvp_hsm_pool_forget(be, s);
    rv = kvp_hsm_pool_get(be, 1, &s);
    if (rv != CKR_OK)
      return kvp_fail(kvp_hsm_map_rv(rv), "hsm %s: C_OpenSession (key '%s'): %s", be->base.name,
                      kvp_hsm_key_desc(k), kvp_ckr_name(rv));
    rv = lookup_pair(be, s, k, visible, want, priv, can_sign, can_dec);
  }
  if (be->has_pin && *priv == CK_INVALID_HANDLE && (rv == CKR_OK || rv == CKR_KEY_HANDLE_INVALID) &&
      !kvp_hsm_session_logged_in(be, s)) {
    atomic_store(&be->logged_in, 0); /* the token lost our login? */
    CK_RV lrv = kvp_hsm_relogin(be);
    rv = lrv == CKR_OK ? lookup_pair(be, s, k, visible, want, priv, can_sign, can_dec) : lrv;
  }
  if (kvp_hsm_session_gone(rv))
    kvp_hsm_pool_forget(be, s);
  else
    kvp_hsm_pool_put(be, s);
  return rv;
}

CK_RV kvp_hsm_open_key_want(kvp_backend *bep, const char *name, const EVP_PKEY *want, kvp_key **out)
{
  kvp_hsm_backend *be = kvp_hsm_of(bep);
  CK_BBOOL can_sign = CK_FALSE, can_dec = CK_FALSE;
  CK_OBJECT_HANDLE priv = CK_INVALID_HANDLE;
  kvp_hsm_key *k = NULL;

  if (name == NULL || out == NULL)
    return CKR_ARGUMENTS_BAD;
  *out = NULL;
  CK_RV rv = kvp_hsm_ensure_init(be);
  if (rv == CKR_OK && be->has_pin && !atomic_load(&be->logged_in))
    rv = kvp_hsm_relogin(be); /* guarded: no attempt after a refused PIN */
  if (rv != CKR_OK)
    return rv;
  k = key_new(bep, name);
  if (k == NULL)
    return CKR_HOST_MEMORY;
  rv = kvp_hsm_parse_name(k, name);
  if (rv == CKR_ARGUMENTS_BAD)
    rv = kvp_fail(CKR_KEY_HANDLE_INVALID, "hsm %s: bad key name '%s' (a label, or id:<hex>)",
                  be->base.name, name);
  int visible = be->has_pin || atomic_load(&be->logged_in);
  if (rv == CKR_OK)
    rv = open_lookup(be, k, visible, want, &priv, &can_sign, &can_dec);
  if (rv == KVP_HSM_KEY_REFUSED)
    rv = CKR_KEY_HANDLE_INVALID; /* the reason is recorded */
  else if (rv == CKR_KEY_HANDLE_INVALID || (rv == CKR_OK && visible && priv == CK_INVALID_HANDLE))
    rv = no_key(be, k, visible);
  else if (rv != CKR_OK && rv != CKR_KEY_TYPE_INCONSISTENT && rv != CKR_DEVICE_ERROR &&
           rv != CKR_HOST_MEMORY)
    rv = kvp_fail(kvp_hsm_map_rv(rv), "hsm %s: reading the key '%s': %s", be->base.name, name,
                  kvp_ckr_name(rv));
  if (rv == CKR_OK && kvp_key_fill_from_pub(&k->key) != CKR_OK)
    rv = kvp_fail(CKR_KEY_TYPE_INCONSISTENT, "hsm %s: key '%s': unsupported key type or curve",
                  be->base.name, name);
  if (rv != CKR_OK) {
    key_free(k);
    return rv;
  }
  if (k->key.type == KVP_KEY_RSA)
    k->out_len = (k->key.bits + 7) / 8;
  else
    k->out_len = 2 * ((k->key.bits + 7) / 8);
  /* not visible: resolved at the first sign/decrypt after the application's C_Login */
  k->key.can_sign = visible ? (can_sign ? 1 : 0) : 1;
  k->key.can_decrypt = k->key.type == KVP_KEY_RSA && (!visible || can_dec);
  k->key.private_obj = be->has_pin ? 0 : 1;
  *out = &k->key;
  return CKR_OK;
}

CK_RV kvp_hsm_open_key(kvp_backend *bep, const char *name, kvp_key **out)
{
  return kvp_hsm_open_key_want(bep, name, NULL, out);
}
