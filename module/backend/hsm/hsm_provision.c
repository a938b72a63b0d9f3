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
#include "core/cert.h"
#include "core/log.h"
#include "core/p11names.h"
#include "core/util.h"

#define KVP_HSM_LABEL_MAX 127
#define KVP_HSM_MAX_OBJECTS 100000 /* a find loop that never ends is an HSM bug */
#define KVP_HSM_TMPL_MAX 24

static const char *token_of(const kvp_hsm_backend *be) {
  return be->token_label ? be->token_label : be->serial;
}

/* CK_RV of a provisioning call: a write-protected token is worth saying. */
static CK_RV prov_map(CK_RV rv) {
  if (rv == CKR_TOKEN_WRITE_PROTECTED)
    return rv;
  return kvp_hsm_map_rv(rv);
}

/* ---------- templates ---------- */

typedef struct {
  CK_ATTRIBUTE a[KVP_HSM_TMPL_MAX];
  CK_ULONG n;
} tmpl;

static void t_add(tmpl *t, CK_ATTRIBUTE_TYPE type, void *v, size_t len) {
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
static const char *label_problem(const char *name) {
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

static CK_RV check_name(kvp_hsm_backend *be, const char *name) {
  const char *why = label_problem(name);
  if (why == NULL)
    return CKR_OK;
  /* the name itself is not logged: it may hold control characters */
  KVP_ERROR("hsm %s: the key name (CKA_LABEL, %zu bytes) %s", be->base.name, strlen(name), why);
  return CKR_ATTRIBUTE_VALUE_INVALID;
}

static CK_RV key_ops(kvp_hsm_backend *be, const char *name, kvp_key_type type, unsigned ops,
                     unsigned *out) {
  if ((ops & ~(KVP_KEYOP_SIGN | KVP_KEYOP_DECRYPT)) != 0) {
    KVP_ERROR("hsm %s: key %s: unknown key operations 0x%x", be->base.name, name, ops);
    return CKR_ARGUMENTS_BAD;
  }
  if (ops == 0)
    ops = type == KVP_KEY_RSA ? (KVP_KEYOP_SIGN | KVP_KEYOP_DECRYPT) : KVP_KEYOP_SIGN;
  if (type == KVP_KEY_EC && (ops & KVP_KEYOP_DECRYPT) != 0) {
    KVP_ERROR("hsm %s: key %s: an EC key cannot decrypt", be->base.name, name);
    return CKR_TEMPLATE_INCONSISTENT;
  }
  *out = ops;
  return CKR_OK;
}

static unsigned curve_bits(int nid) {
  switch (nid) {
  case NID_X9_62_prime256v1: return 256;
  case NID_secp384r1: return 384;
  case NID_secp521r1: return 521;
  default: return 0;
  }
}

/* DER OID of a supported curve (OPENSSL_free). */
static int curve_params(int nid, unsigned char **der, int *len) {
  *der = NULL;
  *len = 0;
  if (curve_bits(nid) == 0)
    return 0;
  *len = i2d_ASN1_OBJECT(OBJ_nid2obj(nid), der);
  return *len > 0;
}

static int params_nid(const CK_BYTE *der, CK_ULONG len) {
  const unsigned char *p = der;
  ASN1_OBJECT *o = d2i_ASN1_OBJECT(NULL, &p, (long)len);
  int nid = o != NULL ? OBJ_obj2nid(o) : NID_undef;
  ASN1_OBJECT_free(o);
  return nid;
}

/* ---------- sessions and objects ---------- */

/* A session of our own for one provisioning call, in the user's state. */
static CK_RV prov_session(kvp_hsm_backend *be, const char *what, int rw,
                          CK_SESSION_HANDLE *out) {
  CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
  CK_RV rv;

  *out = CK_INVALID_HANDLE;
  rv = kvp_hsm_ensure_init(be);
  if (rv != CKR_OK)
    return rv;
  if (!be->has_pin && !atomic_load(&be->logged_in)) {
    KVP_ERROR("hsm %s: %s needs the user to be logged in to token '%s' (log in with the "
              "token's PIN first)", be->base.name, what, token_of(be));
    return CKR_USER_NOT_LOGGED_IN;
  }
  rv = be->f->C_OpenSession(be->slot, CKF_SERIAL_SESSION | (rw ? CKF_RW_SESSION : 0), NULL,
                            NULL, &s);
  if (rv != CKR_OK) {
    KVP_ERROR("hsm %s: C_OpenSession (%s, %s): %s", be->base.name,
              rw ? "read/write" : "read-only", what, kvp_ckr_name(rv));
    return prov_map(rv);
  }
  if (!kvp_hsm_session_logged_in(be, s) && be->has_pin) {
    rv = kvp_hsm_relogin(be); /* the token forgot our login; logs its failures */
    if (rv != CKR_OK) {
      be->f->C_CloseSession(s);
      return rv;
    }
  }
  if (!kvp_hsm_session_logged_in(be, s)) {
    be->f->C_CloseSession(s);
    KVP_ERROR("hsm %s: %s: token '%s' is not logged in (any more); log in again", be->base.name,
              what, token_of(be));
    return CKR_USER_NOT_LOGGED_IN;
  }
  *out = s;
  return CKR_OK;
}

/* Every object matching t (malloc'd; NULL when none). */
static CK_RV find_all(kvp_hsm_backend *be, CK_SESSION_HANDLE s, CK_ATTRIBUTE *t, CK_ULONG n,
                      CK_OBJECT_HANDLE **out, CK_ULONG *count) {
  CK_OBJECT_HANDLE *all = NULL, batch[64];
  CK_ULONG total = 0, got = 0;
  CK_RV rv;

  *out = NULL;
  *count = 0;
  rv = be->f->C_FindObjectsInit(s, t, n);
  if (rv != CKR_OK)
    return rv;
  for (;;) {
    rv = be->f->C_FindObjects(s, batch, KVP_ARRAY_SIZE(batch), &got);
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
  be->f->C_FindObjectsFinal(s);
  if (rv != CKR_OK) {
    free(all);
    return rv;
  }
  *out = all;
  *count = total;
  return CKR_OK;
}

/* Objects of class cls with the label (or the CKA_ID, for label == NULL). */
static CK_RV find_keys(kvp_hsm_backend *be, CK_SESSION_HANDLE s, CK_OBJECT_CLASS cls,
                       const char *label, const CK_BYTE *id, CK_ULONG id_len,
                       CK_OBJECT_HANDLE **out, CK_ULONG *count) {
  tmpl t = {.n = 0};
  t_add(&t, CKA_CLASS, &cls, sizeof(cls));
  if (label != NULL)
    t_add(&t, CKA_LABEL, (void *)label, strlen(label));
  else
    t_add(&t, CKA_ID, (void *)id, id_len);
  return find_all(be, s, t.a, t.n, out, count);
}

static CK_RV count_label(kvp_hsm_backend *be, CK_SESSION_HANDLE s, CK_OBJECT_CLASS cls,
                         const char *label, CK_ULONG *count) {
  CK_OBJECT_HANDLE *h = NULL;
  CK_RV rv = find_keys(be, s, cls, label, NULL, 0, &h, count);
  free(h);
  return rv;
}

/* CKR_OK when no key object uses the label; CKR_ATTRIBUTE_VALUE_INVALID (logged) when one does. */
static CK_RV label_free(kvp_hsm_backend *be, CK_SESSION_HANDLE s, const char *name) {
  CK_ULONG n_priv = 0, n_pub = 0;
  CK_RV rv = count_label(be, s, CKO_PRIVATE_KEY, name, &n_priv);
  if (rv == CKR_OK)
    rv = count_label(be, s, CKO_PUBLIC_KEY, name, &n_pub);
  if (rv != CKR_OK) {
    KVP_ERROR("hsm %s: C_FindObjects (key %s): %s", be->base.name, name, kvp_ckr_name(rv));
    return prov_map(rv);
  }
  if (n_priv > 0) {
    KVP_ERROR("hsm %s: a key labelled %s exists already; kvp11 does not replace keys",
              be->base.name, name);
    return CKR_ATTRIBUTE_VALUE_INVALID;
  }
  if (n_pub > 0) {
    KVP_ERROR("hsm %s: a public key labelled %s exists already (without a private key); "
              "kvp11 does not replace keys", be->base.name, name);
    return CKR_ATTRIBUTE_VALUE_INVALID;
  }
  return CKR_OK;
}

static void destroy_obj(kvp_hsm_backend *be, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
                        const char *name) {
  if (h == CK_INVALID_HANDLE)
    return;
  CK_RV rv = be->f->C_DestroyObject(s, h);
  if (rv != CKR_OK)
    KVP_ERROR("hsm %s: C_DestroyObject (cleaning up key %s): %s; remove it by hand",
              be->base.name, name, kvp_ckr_name(rv));
}

/* After the creation: another process that made the same label at the same
 * time leaves two private keys; this one then undoes its own. */
static CK_RV still_unique(kvp_hsm_backend *be, CK_SESSION_HANDLE s, const char *name) {
  CK_ULONG n = 0;
  CK_RV rv = count_label(be, s, CKO_PRIVATE_KEY, name, &n);
  if (rv != CKR_OK) {
    KVP_ERROR("hsm %s: C_FindObjects (key %s): %s", be->base.name, name, kvp_ckr_name(rv));
    return prov_map(rv);
  }
  if (n == 0) {
    KVP_ERROR("hsm %s: the new key labelled %s is gone (deleted by someone else?)",
              be->base.name, name);
    return CKR_FUNCTION_FAILED;
  }
  if (n > 1) {
    KVP_ERROR("hsm %s: a key labelled %s exists already; kvp11 does not replace keys "
              "(created at the same time by someone else)", be->base.name, name);
    return CKR_ATTRIBUTE_VALUE_INVALID;
  }
  return CKR_OK;
}

static CK_RV get_ulong(kvp_hsm_backend *be, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
                       CK_ATTRIBUTE_TYPE type, CK_ULONG *v) {
  CK_ATTRIBUTE a = {type, v, sizeof(*v)};
  return be->f->C_GetAttributeValue(s, h, &a, 1);
}

/* The public key held by object h (an RSA private key object will do). */
static CK_RV pub_from_object(kvp_hsm_backend *be, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
                             EVP_PKEY **out) {
  CK_BYTE *a = NULL, *b = NULL;
  CK_ULONG a_len = 0, b_len = 0, kt = CKK_VENDOR_DEFINED;
  CK_RV rv = get_ulong(be, s, h, CKA_KEY_TYPE, &kt);

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

/* Finish a new key pair: CKA_ID (default), uniqueness, the public key as the
 * HSM stores it compared with want (import). On failure both objects go. */
static CK_RV finish_pair(kvp_hsm_backend *be, CK_SESSION_HANDLE s, const char *name,
                         CK_OBJECT_HANDLE hpriv, CK_OBJECT_HANDLE hpub, int set_id,
                         const EVP_PKEY *want) {
  EVP_PKEY *pub = NULL;
  unsigned char id[KVP_KEY_ID_LEN];
  CK_RV rv = pub_from_object(be, s, hpub, &pub);

  if (rv != CKR_OK) {
    KVP_ERROR("hsm %s: key %s: reading the new public key: %s", be->base.name, name,
              kvp_ckr_name(rv));
    rv = prov_map(rv);
    goto out;
  }
  if (want != NULL && !kvp_pubkey_equal(pub, want)) {
    KVP_ERROR("hsm %s: key %s: the HSM stored a different public key than the one imported",
              be->base.name, name);
    rv = CKR_FUNCTION_FAILED;
    goto out;
  }
  if (set_id) {
    if (kvp_pubkey_id(pub, id) != KVP_OK) {
      KVP_ERROR("hsm %s: key %s: cannot compute the CKA_ID of the new public key",
                be->base.name, name);
      rv = CKR_FUNCTION_FAILED;
      goto out;
    }
    CK_ATTRIBUTE a = {CKA_ID, id, sizeof(id)};
    rv = be->f->C_SetAttributeValue(s, hpriv, &a, 1);
    if (rv == CKR_OK)
      rv = be->f->C_SetAttributeValue(s, hpub, &a, 1);
    if (rv != CKR_OK) {
      KVP_ERROR("hsm %s: C_SetAttributeValue (key %s, CKA_ID): %s", be->base.name, name,
                kvp_ckr_name(rv));
      rv = prov_map(rv);
      goto out;
    }
  }
  rv = still_unique(be, s, name);
out:
  EVP_PKEY_free(pub);
  if (rv != CKR_OK) {
    destroy_obj(be, s, hpriv, name);
    destroy_obj(be, s, hpub, name);
  }
  return rv;
}

/* ---------- create ---------- */

CK_RV kvp_hsm_create_key(kvp_backend *bep, const char *name, const kvp_key_spec *spec,
                         kvp_key **out) {
  kvp_hsm_backend *be = kvp_hsm_of(bep);
  CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
  CK_OBJECT_HANDLE hpub = CK_INVALID_HANDLE, hpriv = CK_INVALID_HANDLE;
  CK_MECHANISM mech = {CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0};
  CK_OBJECT_CLASS pub_cls = CKO_PUBLIC_KEY, priv_cls = CKO_PRIVATE_KEY;
  CK_KEY_TYPE kt = CKK_RSA;
  CK_BBOOL yes = CK_TRUE, no = CK_FALSE, b_sign, b_dec;
  CK_ULONG mod_bits = 0;
  CK_BYTE exp65537[] = {0x01, 0x00, 0x01};
  unsigned char *params = NULL;
  int params_len = 0, locked = 0;
  unsigned ops = 0;
  char what[32];
  tmpl pt = {.n = 0}, kt_priv = {.n = 0};
  CK_RV rv = CKR_GENERAL_ERROR;

  if (bep == NULL || name == NULL || spec == NULL)
    return CKR_ARGUMENTS_BAD;
  if (out != NULL)
    *out = NULL;
  rv = check_name(be, name);
  if (rv != CKR_OK)
    return rv;
  if (spec->type == KVP_KEY_RSA) {
    if (spec->bits != 2048 && spec->bits != 3072 && spec->bits != 4096) {
      KVP_ERROR("hsm %s: key %s: RSA keys are 2048, 3072 or 4096 bits, not %u", be->base.name,
                name, spec->bits);
      return CKR_KEY_SIZE_RANGE;
    }
    mod_bits = spec->bits;
    snprintf(what, sizeof(what), "RSA-%u", spec->bits);
  } else if (spec->type == KVP_KEY_EC) {
    if (!curve_params(spec->curve_nid, &params, &params_len)) {
      const char *sn = spec->curve_nid != NID_undef ? OBJ_nid2sn(spec->curve_nid) : NULL;
      KVP_ERROR("hsm %s: key %s: unsupported curve %s (P-256, P-384 or P-521)", be->base.name,
                name, sn ? sn : "(none)");
      OPENSSL_free(params);
      return CKR_KEY_TYPE_INCONSISTENT;
    }
    mech.mechanism = CKM_EC_KEY_PAIR_GEN;
    kt = CKK_EC;
    snprintf(what, sizeof(what), "EC %s", kvp_curve_name(spec->curve_nid));
  } else {
    KVP_ERROR("hsm %s: key %s: unsupported key type %d", be->base.name, name, (int)spec->type);
    return CKR_KEY_TYPE_INCONSISTENT;
  }
  rv = key_ops(be, name, spec->type, spec->ops, &ops);
  if (rv != CKR_OK)
    goto out;
  if (spec->id != NULL && spec->id_len == 0) {
    KVP_ERROR("hsm %s: key %s: empty CKA_ID", be->base.name, name);
    rv = CKR_ATTRIBUTE_VALUE_INVALID;
    goto out;
  }
  b_sign = (ops & KVP_KEYOP_SIGN) ? CK_TRUE : CK_FALSE;
  b_dec = (ops & KVP_KEYOP_DECRYPT) ? CK_TRUE : CK_FALSE;

  t_add(&pt, CKA_CLASS, &pub_cls, sizeof(pub_cls));
  t_add(&pt, CKA_KEY_TYPE, &kt, sizeof(kt));
  t_add(&pt, CKA_TOKEN, &yes, sizeof(yes));
  t_add(&pt, CKA_PRIVATE, &no, sizeof(no));
  t_add(&pt, CKA_VERIFY, &b_sign, sizeof(b_sign));
  t_add(&pt, CKA_ENCRYPT, &b_dec, sizeof(b_dec));
  t_add(&pt, CKA_WRAP, &no, sizeof(no));
  t_add(&pt, CKA_LABEL, (void *)name, strlen(name));
  t_add(&kt_priv, CKA_CLASS, &priv_cls, sizeof(priv_cls));
  t_add(&kt_priv, CKA_KEY_TYPE, &kt, sizeof(kt));
  t_add(&kt_priv, CKA_TOKEN, &yes, sizeof(yes));
  t_add(&kt_priv, CKA_PRIVATE, &yes, sizeof(yes));
  t_add(&kt_priv, CKA_SENSITIVE, &yes, sizeof(yes));
  t_add(&kt_priv, CKA_EXTRACTABLE, &no, sizeof(no));
  t_add(&kt_priv, CKA_SIGN, &b_sign, sizeof(b_sign));
  t_add(&kt_priv, CKA_DECRYPT, &b_dec, sizeof(b_dec));
  t_add(&kt_priv, CKA_UNWRAP, &no, sizeof(no));
  t_add(&kt_priv, CKA_DERIVE, &no, sizeof(no));
  t_add(&kt_priv, CKA_LABEL, (void *)name, strlen(name));
  if (spec->id != NULL) {
    t_add(&pt, CKA_ID, (void *)spec->id, spec->id_len);
    t_add(&kt_priv, CKA_ID, (void *)spec->id, spec->id_len);
  }
  if (spec->type == KVP_KEY_RSA) {
    t_add(&pt, CKA_MODULUS_BITS, &mod_bits, sizeof(mod_bits));
    t_add(&pt, CKA_PUBLIC_EXPONENT, exp65537, sizeof(exp65537));
  } else {
    t_add(&pt, CKA_EC_PARAMS, params, (size_t)params_len);
  }

  pthread_mutex_lock(&be->prov_lock);
  locked = 1;
  rv = prov_session(be, "creating a key", 1, &s);
  if (rv != CKR_OK)
    goto out;
  rv = label_free(be, s, name);
  if (rv != CKR_OK)
    goto out;
  rv = be->f->C_GenerateKeyPair(s, &mech, pt.a, pt.n, kt_priv.a, kt_priv.n, &hpub, &hpriv);
  if (rv != CKR_OK) {
    KVP_ERROR("hsm %s: C_GenerateKeyPair (key %s, %s): %s", be->base.name, name, what,
              kvp_ckr_name(rv));
    rv = prov_map(rv);
    goto out;
  }
  rv = finish_pair(be, s, name, hpriv, hpub, spec->id == NULL, NULL);
  if (rv != CKR_OK)
    goto out;
  KVP_INFO("hsm %s: created key %s (%s) in token '%s'", be->base.name, name, what,
           token_of(be));
out:
  if (s != CK_INVALID_HANDLE)
    be->f->C_CloseSession(s);
  if (locked)
    pthread_mutex_unlock(&be->prov_lock);
  OPENSSL_free(params);
  if (rv == CKR_OK && out != NULL)
    rv = kvp_hsm_open_key(bep, name, out);
  return rv;
}

/* ---------- import ---------- */

/* A copy of key material (private or public), wiped before it is freed. */
typedef struct {
  unsigned char *p;
  size_t len;
} secbuf;

static void secbuf_clear(secbuf *b) {
  if (b->p != NULL) {
    OPENSSL_cleanse(b->p, b->len);
    free(b->p);
  }
  b->p = NULL;
  b->len = 0;
}

/* Big-endian bytes of a BIGNUM parameter (pad: exact length, 0: minimal).
 * 0: the key has no such parameter. */
static int bn_param(const EVP_PKEY *pk, const char *param, size_t pad, secbuf *out) {
  BIGNUM *bn = NULL;
  int ok = 0;
  if (!EVP_PKEY_get_bn_param(pk, param, &bn) || bn == NULL)
    return 0;
  size_t n = pad > 0 ? pad : (size_t)BN_num_bytes(bn);
  if (n == 0)
    n = 1;
  out->p = malloc(n);
  if (out->p != NULL && BN_bn2binpad(bn, out->p, (int)n) == (int)n) {
    out->len = n;
    ok = 1;
  } else {
    free(out->p);
    out->p = NULL;
  }
  BN_clear_free(bn);
  return ok;
}

enum { RSA_N, RSA_E, RSA_D, RSA_P, RSA_Q, RSA_DP, RSA_DQ, RSA_QINV, RSA_PARTS };

static const struct {
  const char *param;
  CK_ATTRIBUTE_TYPE attr;
  int required;
} rsa_parts[RSA_PARTS] = {
    {OSSL_PKEY_PARAM_RSA_N, CKA_MODULUS, 1},
    {OSSL_PKEY_PARAM_RSA_E, CKA_PUBLIC_EXPONENT, 1},
    {OSSL_PKEY_PARAM_RSA_D, CKA_PRIVATE_EXPONENT, 1},
    {OSSL_PKEY_PARAM_RSA_FACTOR1, CKA_PRIME_1, 0},
    {OSSL_PKEY_PARAM_RSA_FACTOR2, CKA_PRIME_2, 0},
    {OSSL_PKEY_PARAM_RSA_EXPONENT1, CKA_EXPONENT_1, 0},
    {OSSL_PKEY_PARAM_RSA_EXPONENT2, CKA_EXPONENT_2, 0},
    {OSSL_PKEY_PARAM_RSA_COEFFICIENT1, CKA_COEFFICIENT, 0},
};

/* What import_key copies out of the EVP_PKEY. */
typedef struct {
  kvp_key_type type;
  unsigned bits;
  int curve_nid;
  secbuf rsa[RSA_PARTS];
  unsigned char *params; /* EC: DER OID (OPENSSL_free) */
  int params_len;
  secbuf ec_value;       /* EC: private scalar */
  unsigned char *ec_point; /* EC: DER OCTET STRING of the uncompressed point (OPENSSL_free) */
  int ec_point_len;
} import_parts;

static void import_parts_clear(import_parts *ip) {
  for (int i = 0; i < RSA_PARTS; i++)
    secbuf_clear(&ip->rsa[i]);
  secbuf_clear(&ip->ec_value);
  OPENSSL_free(ip->params);
  OPENSSL_free(ip->ec_point);
  memset(ip, 0, sizeof(*ip));
}

/* The uncompressed point of an EC key, as a DER OCTET STRING. */
static int ec_point_der(const EVP_PKEY *pk, int nid, unsigned char **der, int *der_len) {
  unsigned char enc[1 + 2 * 66], raw[1 + 2 * 66];
  size_t enc_len = 0, raw_len = 0;
  EC_GROUP *g = EC_GROUP_new_by_curve_name(nid);
  EC_POINT *pt = g != NULL ? EC_POINT_new(g) : NULL;
  ASN1_OCTET_STRING *os = ASN1_OCTET_STRING_new();
  int ok = 0;

  *der = NULL;
  *der_len = 0;
  if (pt == NULL || os == NULL ||
      !EVP_PKEY_get_octet_string_param(pk, OSSL_PKEY_PARAM_PUB_KEY, enc, sizeof(enc), &enc_len) ||
      !EC_POINT_oct2point(g, pt, enc, enc_len, NULL))
    goto out;
  raw_len = EC_POINT_point2oct(g, pt, POINT_CONVERSION_UNCOMPRESSED, raw, sizeof(raw), NULL);
  if (raw_len == 0 || !ASN1_OCTET_STRING_set(os, raw, (int)raw_len))
    goto out;
  *der_len = i2d_ASN1_OCTET_STRING(os, der);
  ok = *der_len > 0;
out:
  ASN1_OCTET_STRING_free(os);
  EC_POINT_free(pt);
  EC_GROUP_free(g);
  return ok;
}

/* Check priv and copy its parts. Unsupported keys are logged. */
static CK_RV import_extract(kvp_hsm_backend *be, const char *name, const EVP_PKEY *priv,
                            import_parts *ip) {
  int base = EVP_PKEY_get_base_id(priv);
  memset(ip, 0, sizeof(*ip));
  if (base == EVP_PKEY_RSA) {
    BIGNUM *extra = NULL;
    ip->type = KVP_KEY_RSA;
    ip->bits = (unsigned)EVP_PKEY_get_bits(priv);
    if (ip->bits < 2048 || ip->bits > 4096) {
      KVP_ERROR("hsm %s: key %s: RSA-%u cannot be imported (2048 to 4096 bits)", be->base.name,
                name, ip->bits);
      return CKR_KEY_SIZE_RANGE;
    }
    if (EVP_PKEY_get_bn_param(priv, OSSL_PKEY_PARAM_RSA_FACTOR3, &extra)) {
      BN_clear_free(extra);
      KVP_ERROR("hsm %s: key %s: multi-prime RSA keys cannot be imported", be->base.name, name);
      return CKR_KEY_TYPE_INCONSISTENT;
    }
    for (int i = 0; i < RSA_PARTS; i++)
      if (!bn_param(priv, rsa_parts[i].param, 0, &ip->rsa[i]) && rsa_parts[i].required) {
        KVP_ERROR("hsm %s: key %s: the RSA key has no %s", be->base.name, name,
                  rsa_parts[i].param);
        return CKR_KEY_TYPE_INCONSISTENT;
      }
    return CKR_OK;
  }
  if (base == EVP_PKEY_EC) {
    char group[80];
    size_t glen = 0;
    ip->type = KVP_KEY_EC;
    ip->curve_nid = NID_undef;
    if (EVP_PKEY_get_utf8_string_param(priv, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group),
                                       &glen)) {
      ip->curve_nid = OBJ_txt2nid(group);
      if (ip->curve_nid == NID_undef)
        ip->curve_nid = EC_curve_nist2nid(group);
    }
    ip->bits = curve_bits(ip->curve_nid);
    if (ip->bits == 0 || !curve_params(ip->curve_nid, &ip->params, &ip->params_len)) {
      KVP_ERROR("hsm %s: key %s: EC keys on %s cannot be imported (P-256, P-384 or P-521)",
                be->base.name, name, glen > 0 ? group : "an unnamed curve");
      return CKR_KEY_TYPE_INCONSISTENT;
    }
    if (!bn_param(priv, OSSL_PKEY_PARAM_PRIV_KEY, (ip->bits + 7) / 8, &ip->ec_value)) {
      KVP_ERROR("hsm %s: key %s: the EC key has no private part", be->base.name, name);
      return CKR_KEY_TYPE_INCONSISTENT;
    }
    if (!ec_point_der(priv, ip->curve_nid, &ip->ec_point, &ip->ec_point_len)) {
      KVP_ERROR("hsm %s: key %s: cannot read the EC public point", be->base.name, name);
      return CKR_KEY_TYPE_INCONSISTENT;
    }
    return CKR_OK;
  }
  {
    const char *tn = EVP_PKEY_get0_type_name(priv);
    KVP_ERROR("hsm %s: key %s: %s keys cannot be imported (RSA or EC only)", be->base.name, name,
              tn ? tn : "unknown");
  }
  return CKR_KEY_TYPE_INCONSISTENT;
}

/* Warn when another private key has the same CKA_ID (the same key imported
 * twice, or a reused spec->id): "id:" references and certificates that
 * point at that CKA_ID would pick one of them. */
static void warn_same_id(kvp_hsm_backend *be, CK_SESSION_HANDLE s, const char *name,
                         const CK_BYTE *id, CK_ULONG id_len) {
  CK_OBJECT_HANDLE *h = NULL;
  CK_ULONG n = 0;
  if (find_keys(be, s, CKO_PRIVATE_KEY, NULL, id, id_len, &h, &n) == CKR_OK && n > 0)
    KVP_WARN("hsm %s: key %s: %lu other private key(s) in token '%s' have the same CKA_ID",
             be->base.name, name, (unsigned long)n, token_of(be));
  free(h);
}

CK_RV kvp_hsm_import_key(kvp_backend *bep, const char *name, EVP_PKEY *priv,
                         const kvp_key_spec *spec, kvp_key **out) {
  kvp_hsm_backend *be = kvp_hsm_of(bep);
  CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
  CK_OBJECT_HANDLE hpub = CK_INVALID_HANDLE, hpriv = CK_INVALID_HANDLE;
  CK_OBJECT_CLASS pub_cls = CKO_PUBLIC_KEY, priv_cls = CKO_PRIVATE_KEY;
  CK_KEY_TYPE kt;
  CK_BBOOL yes = CK_TRUE, no = CK_FALSE, b_sign, b_dec;
  unsigned char default_id[KVP_KEY_ID_LEN];
  const CK_BYTE *id = default_id;
  CK_ULONG id_len = sizeof(default_id);
  import_parts ip;
  tmpl pt = {.n = 0}, kt_priv = {.n = 0};
  unsigned ops = 0;
  int locked = 0;
  CK_RV rv = CKR_GENERAL_ERROR;

  memset(&ip, 0, sizeof(ip));
  if (bep == NULL || name == NULL || priv == NULL)
    return CKR_ARGUMENTS_BAD;
  if (out != NULL)
    *out = NULL;
  rv = check_name(be, name);
  if (rv != CKR_OK)
    return rv;
  rv = import_extract(be, name, priv, &ip);
  if (rv != CKR_OK)
    goto out;
  rv = key_ops(be, name, ip.type, spec ? spec->ops : 0, &ops);
  if (rv != CKR_OK)
    goto out;
  if (spec != NULL && spec->id != NULL) {
    if (spec->id_len == 0) {
      KVP_ERROR("hsm %s: key %s: empty CKA_ID", be->base.name, name);
      rv = CKR_ATTRIBUTE_VALUE_INVALID;
      goto out;
    }
    id = spec->id;
    id_len = (CK_ULONG)spec->id_len;
  } else if (kvp_pubkey_id(priv, default_id) != KVP_OK) {
    KVP_ERROR("hsm %s: key %s: cannot compute the CKA_ID of the public key", be->base.name,
              name);
    rv = CKR_FUNCTION_FAILED;
    goto out;
  }
  b_sign = (ops & KVP_KEYOP_SIGN) ? CK_TRUE : CK_FALSE;
  b_dec = (ops & KVP_KEYOP_DECRYPT) ? CK_TRUE : CK_FALSE;
  kt = ip.type == KVP_KEY_RSA ? CKK_RSA : CKK_EC;

  t_add(&kt_priv, CKA_CLASS, &priv_cls, sizeof(priv_cls));
  t_add(&kt_priv, CKA_KEY_TYPE, &kt, sizeof(kt));
  t_add(&kt_priv, CKA_TOKEN, &yes, sizeof(yes));
  t_add(&kt_priv, CKA_PRIVATE, &yes, sizeof(yes));
  t_add(&kt_priv, CKA_SENSITIVE, &yes, sizeof(yes));
  t_add(&kt_priv, CKA_EXTRACTABLE, &no, sizeof(no));
  t_add(&kt_priv, CKA_SIGN, &b_sign, sizeof(b_sign));
  t_add(&kt_priv, CKA_DECRYPT, &b_dec, sizeof(b_dec));
  t_add(&kt_priv, CKA_UNWRAP, &no, sizeof(no));
  t_add(&kt_priv, CKA_DERIVE, &no, sizeof(no));
  t_add(&kt_priv, CKA_LABEL, (void *)name, strlen(name));
  t_add(&kt_priv, CKA_ID, (void *)id, id_len);
  t_add(&pt, CKA_CLASS, &pub_cls, sizeof(pub_cls));
  t_add(&pt, CKA_KEY_TYPE, &kt, sizeof(kt));
  t_add(&pt, CKA_TOKEN, &yes, sizeof(yes));
  t_add(&pt, CKA_PRIVATE, &no, sizeof(no));
  t_add(&pt, CKA_VERIFY, &b_sign, sizeof(b_sign));
  t_add(&pt, CKA_ENCRYPT, &b_dec, sizeof(b_dec));
  t_add(&pt, CKA_WRAP, &no, sizeof(no));
  t_add(&pt, CKA_LABEL, (void *)name, strlen(name));
  t_add(&pt, CKA_ID, (void *)id, id_len);
  if (ip.type == KVP_KEY_RSA) {
    for (int i = 0; i < RSA_PARTS; i++)
      if (ip.rsa[i].p != NULL)
        t_add(&kt_priv, rsa_parts[i].attr, ip.rsa[i].p, ip.rsa[i].len);
    t_add(&pt, CKA_MODULUS, ip.rsa[RSA_N].p, ip.rsa[RSA_N].len);
    t_add(&pt, CKA_PUBLIC_EXPONENT, ip.rsa[RSA_E].p, ip.rsa[RSA_E].len);
  } else {
    t_add(&kt_priv, CKA_EC_PARAMS, ip.params, (size_t)ip.params_len);
    t_add(&kt_priv, CKA_VALUE, ip.ec_value.p, ip.ec_value.len);
    t_add(&pt, CKA_EC_PARAMS, ip.params, (size_t)ip.params_len);
    t_add(&pt, CKA_EC_POINT, ip.ec_point, (size_t)ip.ec_point_len);
  }

  pthread_mutex_lock(&be->prov_lock);
  locked = 1;
  rv = prov_session(be, "importing a key", 1, &s);
  if (rv != CKR_OK)
    goto out;
  rv = label_free(be, s, name);
  if (rv != CKR_OK)
    goto out;
  warn_same_id(be, s, name, id, id_len);
  rv = be->f->C_CreateObject(s, kt_priv.a, kt_priv.n, &hpriv);
  if (rv != CKR_OK) {
    hpriv = CK_INVALID_HANDLE;
    KVP_ERROR("hsm %s: C_CreateObject (key %s, private key): %s", be->base.name, name,
              kvp_ckr_name(rv));
    rv = prov_map(rv);
    goto out;
  }
  rv = be->f->C_CreateObject(s, pt.a, pt.n, &hpub);
  if (rv != CKR_OK) {
    hpub = CK_INVALID_HANDLE;
    KVP_ERROR("hsm %s: C_CreateObject (key %s, public key): %s; removing the private key again",
              be->base.name, name, kvp_ckr_name(rv));
    destroy_obj(be, s, hpriv, name);
    rv = prov_map(rv);
    goto out;
  }
  rv = finish_pair(be, s, name, hpriv, hpub, 0, priv);
  if (rv != CKR_OK)
    goto out;
  if (ip.type == KVP_KEY_RSA)
    KVP_INFO("hsm %s: imported key %s (RSA-%u) into token '%s'", be->base.name, name, ip.bits,
             token_of(be));
  else
    KVP_INFO("hsm %s: imported key %s (EC %s) into token '%s'", be->base.name, name,
             kvp_curve_name(ip.curve_nid), token_of(be));
out:
  if (s != CK_INVALID_HANDLE)
    be->f->C_CloseSession(s);
  if (locked)
    pthread_mutex_unlock(&be->prov_lock);
  /* the templates only point into ip */
  import_parts_clear(&ip);
  if (rv == CKR_OK && out != NULL)
    rv = kvp_hsm_open_key(bep, name, out);
  return rv;
}

/* ---------- delete ---------- */

/* A name as open_key reads it: a label, or "id:<hex>". */
static CK_RV parse_ref(kvp_hsm_backend *be, const char *name, kvp_hsm_key *k) {
  memset(k, 0, sizeof(*k));
  CK_RV rv = kvp_hsm_parse_name(k, name);
  if (rv == CKR_ARGUMENTS_BAD) {
    KVP_ERROR("hsm %s: bad key name '%s' (a label, or id:<hex>)", be->base.name, name);
    rv = CKR_KEY_HANDLE_INVALID;
  }
  return rv;
}

static void ref_clear(kvp_hsm_key *k) {
  free(k->label);
  free(k->id);
  memset(k, 0, sizeof(*k));
}

CK_RV kvp_hsm_delete_key(kvp_backend *bep, const char *name) {
  kvp_hsm_backend *be = kvp_hsm_of(bep);
  CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
  CK_OBJECT_HANDLE *privs = NULL, *pubs = NULL;
  CK_ULONG n_priv = 0, n_pub = 0;
  kvp_hsm_key ref;
  int locked = 0;
  CK_RV rv;

  if (bep == NULL || name == NULL)
    return CKR_ARGUMENTS_BAD;
  rv = parse_ref(be, name, &ref);
  if (rv != CKR_OK)
    goto out;
  pthread_mutex_lock(&be->prov_lock);
  locked = 1;
  rv = prov_session(be, "deleting a key", 1, &s);
  if (rv != CKR_OK)
    goto out;
  rv = find_keys(be, s, CKO_PRIVATE_KEY, ref.label, ref.id, ref.id_len, &privs, &n_priv);
  if (rv == CKR_OK)
    rv = find_keys(be, s, CKO_PUBLIC_KEY, ref.label, ref.id, ref.id_len, &pubs, &n_pub);
  if (rv != CKR_OK) {
    KVP_ERROR("hsm %s: C_FindObjects (key '%s'): %s", be->base.name, name, kvp_ckr_name(rv));
    rv = prov_map(rv);
    goto out;
  }
  if (n_priv + n_pub == 0) {
    KVP_ERROR("hsm %s: no key '%s' in token '%s'", be->base.name, name, token_of(be));
    rv = CKR_KEY_HANDLE_INVALID;
    goto out;
  }
  /* private first: a failure half-way leaves at worst a public key */
  for (CK_ULONG i = 0; i < n_priv + n_pub; i++) {
    CK_OBJECT_HANDLE h = i < n_priv ? privs[i] : pubs[i - n_priv];
    rv = be->f->C_DestroyObject(s, h);
    if (rv != CKR_OK) {
      KVP_ERROR("hsm %s: C_DestroyObject (key '%s', %s key): %s", be->base.name, name,
                i < n_priv ? "private" : "public", kvp_ckr_name(rv));
      rv = prov_map(rv);
      goto out;
    }
  }
  KVP_INFO("hsm %s: deleted key '%s' (%lu private, %lu public objects) from token '%s'",
           be->base.name, name, (unsigned long)n_priv, (unsigned long)n_pub, token_of(be));
  rv = CKR_OK;
out:
  if (s != CK_INVALID_HANDLE)
    be->f->C_CloseSession(s);
  if (locked)
    pthread_mutex_unlock(&be->prov_lock);
  free(privs);
  free(pubs);
  ref_clear(&ref);
  return rv;
}

/* ---------- list and info ---------- */

/* Skip this private key object in a listing (not RSA/EC, no name). */
#define KVP_HSM_SKIP (CKR_VENDOR_DEFINED | 0x4b565101UL)

/* The public key object of the pair: same label (or id) and, when both
 * have one, the same CKA_ID. */
static CK_OBJECT_HANDLE find_pub_of(kvp_hsm_backend *be, CK_SESSION_HANDLE s, const char *label,
                                    const CK_BYTE *id, CK_ULONG id_len) {
  CK_OBJECT_CLASS cls = CKO_PUBLIC_KEY;
  CK_OBJECT_HANDLE *h = NULL, found = CK_INVALID_HANDLE;
  CK_ULONG n = 0;
  tmpl t = {.n = 0};
  t_add(&t, CKA_CLASS, &cls, sizeof(cls));
  if (label != NULL)
    t_add(&t, CKA_LABEL, (void *)label, strlen(label));
  if (id != NULL)
    t_add(&t, CKA_ID, (void *)id, id_len);
  if (find_all(be, s, t.a, t.n, &h, &n) == CKR_OK && n > 0)
    found = h[0];
  free(h);
  return found;
}

/* Public facts of private key object h. */
static CK_RV fill_info(kvp_hsm_backend *be, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
                       kvp_key_info *info) {
  CK_BYTE *label = NULL, *id = NULL, *params = NULL, *mod = NULL;
  CK_ULONG label_len = 0, id_len = 0, params_len = 0, mod_len = 0, kt = CKK_VENDOR_DEFINED;
  CK_BBOOL sgn = CK_FALSE, dec = CK_FALSE;
  CK_RV rv;

  memset(info, 0, sizeof(*info));
  rv = get_ulong(be, s, h, CKA_KEY_TYPE, &kt);
  if (rv != CKR_OK)
    goto out;
  if (kt != CKK_RSA && kt != CKK_EC) {
    rv = KVP_HSM_SKIP;
    goto out;
  }
  {
    CK_ATTRIBUTE t[2] = {{CKA_SIGN, &sgn, sizeof(sgn)}, {CKA_DECRYPT, &dec, sizeof(dec)}};
    rv = be->f->C_GetAttributeValue(s, h, t, 2);
    if (rv != CKR_OK && rv != CKR_ATTRIBUTE_TYPE_INVALID)
      goto out;
    if (t[0].ulValueLen == CK_UNAVAILABLE_INFORMATION)
      sgn = CK_FALSE;
    if (t[1].ulValueLen == CK_UNAVAILABLE_INFORMATION)
      dec = CK_FALSE;
  }
  /* label and id may be empty (kvp_hsm_get_attr: CKR_ATTRIBUTE_TYPE_INVALID) */
  rv = kvp_hsm_get_attr(be, s, h, CKA_LABEL, &label, &label_len);
  if (rv != CKR_OK && rv != CKR_ATTRIBUTE_TYPE_INVALID)
    goto out;
  rv = kvp_hsm_get_attr(be, s, h, CKA_ID, &id, &id_len);
  if (rv != CKR_OK && rv != CKR_ATTRIBUTE_TYPE_INVALID)
    goto out;
  if (label != NULL && memchr(label, '\0', label_len) == NULL) {
    info->name = strndup((const char *)label, label_len);
  } else if (id != NULL) {
    info->name = malloc(3 + 2 * id_len + 1);
    if (info->name != NULL) {
      memcpy(info->name, "id:", 3);
      kvp_hex(id, id_len, info->name + 3);
    }
  } else {
    rv = KVP_HSM_SKIP;
    goto out;
  }
  info->kty = strdup(kt == CKK_RSA ? "RSA" : "EC");
  if (info->name == NULL || info->kty == NULL) {
    rv = CKR_HOST_MEMORY;
    goto out;
  }
  if (id != NULL) {
    info->id = id;
    info->id_len = id_len;
    id = NULL;
  }

  /* the public key: its own object, else (RSA) the private object's parts */
  {
    char *lbl = info->name[0] != '\0' && strncmp(info->name, "id:", 3) != 0 ? info->name : NULL;
    CK_OBJECT_HANDLE pub = find_pub_of(be, s, lbl, info->id, (CK_ULONG)info->id_len);
    if (pub == CK_INVALID_HANDLE && lbl != NULL && info->id != NULL)
      pub = find_pub_of(be, s, lbl, NULL, 0); /* a pair whose CKA_IDs differ */
    if (pub != CK_INVALID_HANDLE)
      (void)pub_from_object(be, s, pub, &info->pub);
    if (info->pub == NULL && kt == CKK_RSA)
      (void)pub_from_object(be, s, h, &info->pub);
  }
  if (info->pub != NULL) {
    kvp_key tmp;
    memset(&tmp, 0, sizeof(tmp));
    tmp.pub = info->pub;
    if (kvp_key_fill_from_pub(&tmp) == CKR_OK &&
        tmp.type == (kt == CKK_RSA ? KVP_KEY_RSA : KVP_KEY_EC)) {
      info->type = tmp.type;
      info->bits = tmp.bits;
      info->curve_nid = tmp.curve_nid;
    } else { /* a public key that does not fit the private one: do not show it */
      EVP_PKEY_free(info->pub);
      info->pub = NULL;
    }
  }
  if (info->pub == NULL) { /* EC without a public object: the curve from the private one */
    info->type = kt == CKK_RSA ? KVP_KEY_RSA : KVP_KEY_EC;
    if (kt == CKK_EC && kvp_hsm_get_attr(be, s, h, CKA_EC_PARAMS, &params, &params_len) == CKR_OK) {
      info->curve_nid = params_nid(params, params_len);
      info->bits = curve_bits(info->curve_nid);
    } else if (kt == CKK_RSA &&
               kvp_hsm_get_attr(be, s, h, CKA_MODULUS, &mod, &mod_len) == CKR_OK) {
      BIGNUM *bn = BN_bin2bn(mod, (int)mod_len, NULL);
      info->bits = bn != NULL ? (unsigned)BN_num_bits(bn) : 0;
      BN_free(bn);
    }
  }
  info->ops = (sgn ? KVP_KEYOP_SIGN : 0u) | (dec && kt == CKK_RSA ? KVP_KEYOP_DECRYPT : 0u);
  info->enabled = 1;
  info->hsm_protected = 1;
  rv = CKR_OK;
out:
  free(label);
  free(id);
  free(params);
  free(mod);
  if (rv != CKR_OK)
    kvp_key_info_clear(info);
  return rv;
}

CK_RV kvp_hsm_list_keys(kvp_backend *bep, kvp_key_info **out, size_t *n) {
  kvp_hsm_backend *be = kvp_hsm_of(bep);
  CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
  CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
  CK_ATTRIBUTE t = {CKA_CLASS, &cls, sizeof(cls)};
  CK_OBJECT_HANDLE *h = NULL;
  CK_ULONG count = 0;
  kvp_key_info *infos = NULL;
  size_t used = 0;
  CK_RV rv;

  if (bep == NULL || out == NULL || n == NULL)
    return CKR_ARGUMENTS_BAD;
  *out = NULL;
  *n = 0;
  rv = prov_session(be, "listing keys", 0, &s);
  if (rv != CKR_OK)
    return rv;
  rv = find_all(be, s, &t, 1, &h, &count);
  if (rv != CKR_OK) {
    KVP_ERROR("hsm %s: C_FindObjects (private keys): %s", be->base.name, kvp_ckr_name(rv));
    rv = prov_map(rv);
    goto out;
  }
  if (count > 0) {
    infos = calloc(count, sizeof(*infos));
    if (infos == NULL) {
      rv = CKR_HOST_MEMORY;
      goto out;
    }
  }
  for (CK_ULONG i = 0; i < count; i++) {
    rv = fill_info(be, s, h[i], &infos[used]);
    if (rv == CKR_OK) {
      used++;
      continue;
    }
    if (rv == KVP_HSM_SKIP) {
      KVP_DEBUG("hsm %s: private key object %lu is not an RSA or EC key with a name; not listed",
                be->base.name, (unsigned long)h[i]);
      continue;
    }
    if (rv == CKR_OBJECT_HANDLE_INVALID) /* deleted meanwhile */
      continue;
    KVP_ERROR("hsm %s: reading private key object %lu: %s", be->base.name, (unsigned long)h[i],
              kvp_ckr_name(rv));
    rv = prov_map(rv);
    goto out;
  }
  rv = CKR_OK;
out:
  be->f->C_CloseSession(s);
  free(h);
  if (rv != CKR_OK || used == 0) {
    kvp_key_info_free_array(infos, used);
    infos = NULL;
    used = 0;
  }
  *out = infos;
  *n = used;
  return rv;
}

CK_RV kvp_hsm_key_info(kvp_backend *bep, const char *name, kvp_key_info *out) {
  kvp_hsm_backend *be = kvp_hsm_of(bep);
  CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
  CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
  kvp_hsm_key ref;
  CK_RV rv;

  if (bep == NULL || name == NULL || out == NULL)
    return CKR_ARGUMENTS_BAD;
  memset(out, 0, sizeof(*out));
  rv = parse_ref(be, name, &ref);
  if (rv != CKR_OK)
    goto out;
  ref.key.name = (char *)name; /* for kvp_hsm_find_object's messages; not freed */
  rv = prov_session(be, "reading key information", 0, &s);
  if (rv != CKR_OK)
    goto out;
  rv = kvp_hsm_find_object(be, s, &ref, CKO_PRIVATE_KEY, &h);
  if (rv == CKR_KEY_HANDLE_INVALID) {
    KVP_ERROR("hsm %s: no key '%s' in token '%s'", be->base.name, name, token_of(be));
    goto out;
  }
  if (rv != CKR_OK) {
    KVP_ERROR("hsm %s: C_FindObjects (key '%s'): %s", be->base.name, name, kvp_ckr_name(rv));
    rv = prov_map(rv);
    goto out;
  }
  rv = fill_info(be, s, h, out);
  if (rv == KVP_HSM_SKIP) {
    KVP_ERROR("hsm %s: key '%s' is not an RSA or EC key", be->base.name, name);
    rv = CKR_KEY_TYPE_INCONSISTENT;
  } else if (rv != CKR_OK) {
    KVP_ERROR("hsm %s: reading key '%s': %s", be->base.name, name, kvp_ckr_name(rv));
    rv = prov_map(rv);
  }
out:
  if (s != CK_INVALID_HANDLE)
    be->f->C_CloseSession(s);
  ref.key.name = NULL;
  ref_clear(&ref);
  return rv;
}
