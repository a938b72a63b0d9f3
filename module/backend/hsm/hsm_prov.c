/*
 * Key provisioning for the "hsm" backend (backend.h): create_key,
 * import_key, delete_key, list_keys, key_info.
 *
 * Sessions
 *   Every call opens its own session (read/write for create, import and
 *   delete; read-only for list and info), never one of the pool's, and closes
 *   it before returning. The anchor session keeps the application's login
 *   alive, so the new session is a user session when the backend is logged
 *   in: with pin_file / pin_env the backend logs in as it does for signing
 *   (and again if the token forgot that login); with a passed-through PIN the
 *   login op must have been called first, otherwise CKR_USER_NOT_LOGGED_IN.
 *
 * Names
 *   A key name is the CKA_LABEL of both objects: UTF-8, 1..127 bytes, no
 *   control characters, and not "id:..." (open_key reads that as a CKA_ID).
 *   A label already used by a private (or public) key is refused with
 *   CKR_ATTRIBUTE_VALUE_INVALID: kvp11 never replaces keys. Within a process
 *   be->prov_lock makes "is the label free" and the creation one step; two
 *   processes that race are caught by a second look after the creation (the
 *   loser destroys what it made).
 *
 * Objects
 *   Private keys: token, private, sensitive, not extractable, CKA_SIGN /
 *   CKA_DECRYPT as asked (RSA default both, EC sign only), no unwrap / derive.
 *   Public keys: token, public (readable before login), CKA_VERIFY /
 *   CKA_ENCRYPT likewise. CKA_ID is spec->id or, by default, the module's
 *   own CKA_ID: SHA-1 of the subjectPublicKey BIT STRING contents
 *   (kvp_pubkey_id); for generated keys it is set with C_SetAttributeValue
 *   once the public key is known. Every failure after the first object
 *   exists destroys what was made: no half key is left behind.
 *
 * Secrets
 *   import_key copies the private components out of the EVP_PKEY into
 *   buffers that are wiped (OPENSSL_cleanse) before they are freed; BIGNUMs
 *   are freed with BN_clear_free.
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/x509.h>

#include "backend/backend.h"
#include "backend/hsm/hsm_internal.h"
#include "backend/hsm/hsm_prov.h"
#include "core/cert.h"
#include "core/log.h"
#include "core/p11names.h"
#include "core/status.h"
#include "core/util.h"

#define KVP_HSM_LABEL_MAX 127
#define KVP_HSM_MAX_OBJECTS 100000 /* a find loop that never ends is an HSM bug */

/* CK_RV of a provisioning call: a write-protected token is worth saying. */
CK_RV kvp_hsm_prov_map(CK_RV rv)
{
  if (rv == CKR_TOKEN_WRITE_PROTECTED)
    return rv;
  return kvp_hsm_map_rv(rv);
}

/* ---------- templates ---------- */

void kvp_hsm_t_add(kvp_hsm_tmpl *t, CK_ATTRIBUTE_TYPE type, void *v, size_t len)
{
  if (t->n >= KVP_HSM_TMPL_MAX) { /* a programming error: fail loudly in the HSM */
    KVP_ERROR("hsm: internal error: template full");
    return;
  }
  t->a[t->n].type = type;
  t->a[t->n].pValue = v;
  t->a[t->n].ulValueLen = (CK_ULONG)len;
  t->n++;
}

/* ---------- names and specs ---------- */

/* NULL when name is a valid label; otherwise what is wrong with it. */
static const char *label_problem(const char *name)
{
  const unsigned char *p = (const unsigned char *)name;
  size_t n = strlen(name);
  if (n == 0 || n > KVP_HSM_LABEL_MAX)
    return "must be 1 to 127 bytes long";
  for (size_t i = 0; i < n;) {
    unsigned c = p[i], cp;
    size_t len;
    if (c < 0x80) {
      if (c < 0x20 || c == 0x7f)
        return "contains a control character";
      i++;
      continue;
    }
    if ((c & 0xe0) == 0xc0) {
      len = 2;
      cp = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
      len = 3;
      cp = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
      len = 4;
      cp = c & 0x07;
    } else {
      return "is not valid UTF-8";
    }
    if (i + len > n)
      return "is not valid UTF-8";
    for (size_t k = 1; k < len; k++) {
      if ((p[i + k] & 0xc0) != 0x80)
        return "is not valid UTF-8";
      cp = (cp << 6) | (p[i + k] & 0x3fu);
    }
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
        cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
      return "is not valid UTF-8";
    if (cp >= 0x80 && cp <= 0x9f)
      return "contains a control character";
    i += len;
  }
  if (strncmp(name, "id:", 3) == 0)
    return "must not start with \"id:\" (key references read that as a CKA_ID)";
  return NULL;
}

CK_RV kvp_hsm_check_name(kvp_hsm_backend *be, const char *name)
{
  const char *why = label_problem(name);
  if (why == NULL)
    return CKR_OK;
  /* the name itself is not logged: it may hold control characters */
  return kvp_fail(CKR_ATTRIBUTE_VALUE_INVALID, "hsm %s: the key name (CKA_LABEL, %zu bytes) %s",
                  be->base.name, strlen(name), why);
}

CK_RV kvp_hsm_key_ops(kvp_hsm_backend *be, const char *name, kvp_key_type type, unsigned ops,
                      unsigned *out)
{
  if ((ops & ~(KVP_KEYOP_SIGN | KVP_KEYOP_DECRYPT)) != 0) {
    return kvp_fail(CKR_ARGUMENTS_BAD, "hsm %s: key %s: unknown key operations 0x%x", be->base.name,
                    name, ops);
  }
  if (ops == 0)
    ops = type == KVP_KEY_RSA ? (KVP_KEYOP_SIGN | KVP_KEYOP_DECRYPT) : KVP_KEYOP_SIGN;
  if (type == KVP_KEY_EC && (ops & KVP_KEYOP_DECRYPT) != 0) {
    return kvp_fail(CKR_TEMPLATE_INCONSISTENT, "hsm %s: key %s: an EC key cannot decrypt",
                    be->base.name, name);
  }
  *out = ops;
  return CKR_OK;
}

unsigned kvp_hsm_curve_bits(int nid)
{
  switch (nid) {
  case NID_X9_62_prime256v1:
    return 256;
  case NID_secp384r1:
    return 384;
  case NID_secp521r1:
    return 521;
  default:
    return 0;
  }
}

/* DER OID of a supported curve (OPENSSL_free). */
int kvp_hsm_curve_params(int nid, unsigned char **der, int *len)
{
  *der = NULL;
  *len = 0;
  if (kvp_hsm_curve_bits(nid) == 0)
    return 0;
  *len = i2d_ASN1_OBJECT(OBJ_nid2obj(nid), der);
  return *len > 0;
}

int kvp_hsm_params_nid(const CK_BYTE *der, CK_ULONG len)
{
  const unsigned char *p = der;
  ASN1_OBJECT *o = d2i_ASN1_OBJECT(NULL, &p, (long)len);
  int nid = o != NULL ? OBJ_obj2nid(o) : NID_undef;
  ASN1_OBJECT_free(o);
  return nid;
}

/* ---------- sessions and objects ---------- */

/* A session of our own for one provisioning call, in the user's state. */
CK_RV kvp_hsm_prov_session(kvp_hsm_backend *be, const char *what, int rw, CK_SESSION_HANDLE *out)
{
  CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
  CK_RV rv;

  *out = CK_INVALID_HANDLE;
  rv = kvp_hsm_ensure_init(be);
  if (rv != CKR_OK)
    return rv;
  if (!be->has_pin && !atomic_load(&be->logged_in))
    return kvp_fail(CKR_USER_NOT_LOGGED_IN,
                    "hsm %s: %s needs the user to be logged in to token '%s' (log in with the "
                    "token's PIN first)",
                    be->base.name, what, kvp_hsm_token(be));
  if (be->has_pin && !atomic_load(&be->logged_in)) {
    rv = kvp_hsm_relogin(be); /* guarded: no attempt after a refused PIN */
    if (rv != CKR_OK)
      return rv;
  }
  rv = kvp_hsm_session_open(be, rw, &s);
  if (rv != CKR_OK)
    return kvp_fail(kvp_hsm_prov_map(rv), "hsm %s: C_OpenSession (%s, %s): %s", be->base.name,
                    rw ? "read/write" : "read-only", what, kvp_ckr_name(rv));
  if (!kvp_hsm_session_logged_in(be, s) && be->has_pin) {
    atomic_store(&be->logged_in, 0);
    rv = kvp_hsm_relogin(be); /* the token forgot our login; records its failures */
    if (rv != CKR_OK) {
      kvp_hsm_session_close(be, s);
      return rv;
    }
  }
  if (!kvp_hsm_session_logged_in(be, s)) {
    kvp_hsm_session_close(be, s);
    return kvp_fail(CKR_USER_NOT_LOGGED_IN,
                    "hsm %s: %s: token '%s' is not logged in (any more); log in again",
                    be->base.name, what, kvp_hsm_token(be));
  }
  *out = s;
  return CKR_OK;
}

/* Every object matching t (malloc'd; NULL when none). */
CK_RV kvp_hsm_find_all(kvp_hsm_backend *be, CK_SESSION_HANDLE s, CK_ATTRIBUTE *t, CK_ULONG n,
                       CK_OBJECT_HANDLE **out, CK_ULONG *count)
{
  CK_OBJECT_HANDLE *all = NULL, batch[64];
  CK_ULONG total = 0, got = 0;
  CK_RV rv;

  *out = NULL;
  *count = 0;
  rv = KVP_HSM_CALL(be, C_FindObjectsInit, s, t, n);
  if (rv != CKR_OK)
    return rv;
  for (;;) {
    rv = KVP_HSM_CALL(be, C_FindObjects, s, batch, KVP_ARRAY_SIZE(batch), &got);
    if (rv != CKR_OK || got == 0)
      break;
    if (total + got > KVP_HSM_MAX_OBJECTS) {
      rv = CKR_DEVICE_ERROR;
      break;
    }
    CK_OBJECT_HANDLE *grown = realloc(all, (total + got) * sizeof(*all));
    if (grown == NULL) {
      rv = CKR_HOST_MEMORY;
      break;
    }
    all = grown;
    memcpy(all + total, batch, got * sizeof(*all));
    total += got;
  }
  KVP_HSM_CALL(be, C_FindObjectsFinal, s);
  if (rv != CKR_OK) {
    free(all);
    return rv;
  }
  *out = all;
  *count = total;
  return CKR_OK;
}

/* Objects of class cls with the label (or the CKA_ID, for label == NULL). */
CK_RV kvp_hsm_find_keys(kvp_hsm_backend *be, CK_SESSION_HANDLE s, CK_OBJECT_CLASS cls,
                        const char *label, const CK_BYTE *id, CK_ULONG id_len,
                        CK_OBJECT_HANDLE **out, CK_ULONG *count)
{
  kvp_hsm_tmpl t = {.n = 0};
  kvp_hsm_t_add(&t, CKA_CLASS, &cls, sizeof(cls));
  if (label != NULL)
    kvp_hsm_t_add(&t, CKA_LABEL, (void *)label, strlen(label));
  else
    kvp_hsm_t_add(&t, CKA_ID, (void *)id, id_len);
  return kvp_hsm_find_all(be, s, t.a, t.n, out, count);
}

/* How many key objects of class cls carry the label; a failed search is logged. */
static CK_RV count_label(kvp_hsm_backend *be, CK_SESSION_HANDLE s, CK_OBJECT_CLASS cls,
                         const char *label, CK_ULONG *count)
{
  CK_OBJECT_HANDLE *h = NULL;
  CK_RV rv = kvp_hsm_find_keys(be, s, cls, label, NULL, 0, &h, count);
  free(h);
  if (rv != CKR_OK) {
    return kvp_fail(kvp_hsm_prov_map(rv), "hsm %s: C_FindObjects (key %s): %s", be->base.name,
                    label, kvp_ckr_name(rv));
  }
  return CKR_OK;
}

/* The label rule of provisioning, with `created` private keys expected to
 * carry it: 0 before a creation (no key object may use the label), 1 after
 * it (only the new one: another process that made the same label at the same
 * time leaves two, and this one then undoes its own). */
static CK_RV check_label_use(kvp_hsm_backend *be, CK_SESSION_HANDLE s, const char *name,
                             CK_ULONG created)
{
  CK_ULONG n_priv = 0, n_pub = 0;
  CK_RV rv = count_label(be, s, CKO_PRIVATE_KEY, name, &n_priv);
  if (rv == CKR_OK && created == 0)
    rv = count_label(be, s, CKO_PUBLIC_KEY, name, &n_pub);
  if (rv != CKR_OK)
    return rv;
  if (n_priv < created) {
    return kvp_fail(CKR_FUNCTION_FAILED,
                    "hsm %s: the new key labelled %s is gone (deleted by someone else?)",
                    be->base.name, name);
  }
  if (n_priv > created || n_pub > 0) {
    int pub_only = n_priv <= created;
    return kvp_fail(CKR_ATTRIBUTE_VALUE_INVALID,
                    "hsm %s: a %skey labelled %s exists already%s; kvp11 does not replace keys%s",
                    be->base.name, pub_only ? "public " : "", name,
                    pub_only ? " (without a private key)" : "",
                    created > 0 ? " (created at the same time by someone else)" : "");
  }
  return CKR_OK;
}

CK_RV kvp_hsm_prov_begin(kvp_hsm_backend *be, const char *what, const char *label,
                         CK_SESSION_HANDLE *s)
{
  CK_RV rv;

  pthread_mutex_lock(&be->prov_lock);
  rv = kvp_hsm_prov_session(be, what, 1, s);
  if (rv == CKR_OK && label != NULL)
    rv = check_label_use(be, *s, label, 0);
  if (rv != CKR_OK) {
    kvp_hsm_prov_end(be, *s);
    *s = CK_INVALID_HANDLE;
  }
  return rv;
}

void kvp_hsm_prov_end(kvp_hsm_backend *be, CK_SESSION_HANDLE s)
{
  if (s != CK_INVALID_HANDLE)
    kvp_hsm_session_close(be, s);
  pthread_mutex_unlock(&be->prov_lock);
}

void kvp_hsm_destroy_obj(kvp_hsm_backend *be, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
                         const char *name)
{
  if (h == CK_INVALID_HANDLE)
    return;
  CK_RV rv = KVP_HSM_CALL(be, C_DestroyObject, s, h);
  if (rv != CKR_OK)
    KVP_ERROR("hsm %s: C_DestroyObject (cleaning up key %s): %s; remove it by hand", be->base.name,
              name, kvp_ckr_name(rv));
}

CK_RV kvp_hsm_get_ulong(kvp_hsm_backend *be, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
                        CK_ATTRIBUTE_TYPE type, CK_ULONG *v)
{
  CK_ATTRIBUTE a = {type, v, sizeof(*v)};
  return KVP_HSM_CALL(be, C_GetAttributeValue, s, h, &a, 1);
}

/* Finish a new key pair: CKA_ID (default), uniqueness, the public key as the
 * HSM stores it compared with want (import). On failure both objects go. */
CK_RV kvp_hsm_finish_pair(kvp_hsm_backend *be, CK_SESSION_HANDLE s, const char *name,
                          CK_OBJECT_HANDLE hpriv, CK_OBJECT_HANDLE hpub, int set_id,
                          const EVP_PKEY *want)
{
  EVP_PKEY *pub = NULL;
  unsigned char id[KVP_KEY_ID_LEN];
  CK_RV rv = kvp_hsm_pub_from_object(be, s, hpub, &pub);

  if (rv != CKR_OK) {
    rv = kvp_fail(kvp_hsm_prov_map(rv), "hsm %s: key %s: reading the new public key: %s",
                  be->base.name, name, kvp_ckr_name(rv));
    goto out;
  }
  if (want != NULL && !kvp_pubkey_equal(pub, want)) {
    rv = kvp_fail(CKR_FUNCTION_FAILED,
                  "hsm %s: key %s: the HSM stored a different public key than the one imported",
                  be->base.name, name);
    goto out;
  }
  if (set_id) {
    if (kvp_pubkey_id(pub, id) != KVP_OK) {
      rv = kvp_fail(CKR_FUNCTION_FAILED,
                    "hsm %s: key %s: cannot compute the CKA_ID of the new public key",
                    be->base.name, name);
      goto out;
    }
    CK_ATTRIBUTE a = {CKA_ID, id, sizeof(id)};
    rv = KVP_HSM_CALL(be, C_SetAttributeValue, s, hpriv, &a, 1);
    if (rv == CKR_OK)
      rv = KVP_HSM_CALL(be, C_SetAttributeValue, s, hpub, &a, 1);
    if (rv != CKR_OK) {
      rv = kvp_fail(kvp_hsm_prov_map(rv), "hsm %s: C_SetAttributeValue (key %s, CKA_ID): %s",
                    be->base.name, name, kvp_ckr_name(rv));
      goto out;
    }
  }
  rv = check_label_use(be, s, name, 1);
out:
  EVP_PKEY_free(pub);
  if (rv != CKR_OK) {
    kvp_hsm_destroy_obj(be, s, hpriv, name);
    kvp_hsm_destroy_obj(be, s, hpub, name);
  }
  return rv;
}
