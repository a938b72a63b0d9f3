/*
 * delete_key, list_keys and key_info of the HSM backend (rules: hsm_prov.c).
 */
#include <stdio.h>
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

/* ---------- delete ---------- */

/* A name as open_key reads it: a label, or "id:<hex>". */
static CK_RV parse_ref(kvp_hsm_backend *be, const char *name, kvp_hsm_key *k)
{
  memset(k, 0, sizeof(*k));
  CK_RV rv = kvp_hsm_parse_name(k, name);
  if (rv == CKR_ARGUMENTS_BAD) {
    rv = kvp_fail(CKR_KEY_HANDLE_INVALID, "hsm %s: bad key name '%s' (a label, or id:<hex>)",
                  be->base.name, name);
  }
  return rv;
}

static void ref_clear(kvp_hsm_key *k)
{
  free(k->label);
  free(k->id);
  memset(k, 0, sizeof(*k));
}

CK_RV kvp_hsm_delete_key(kvp_backend *bep, const char *name)
{
  kvp_hsm_backend *be = kvp_hsm_of(bep);
  CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
  CK_OBJECT_HANDLE *privs = NULL, *pubs = NULL;
  CK_ULONG n_priv = 0, n_pub = 0;
  kvp_hsm_key ref;
  CK_RV rv;

  if (bep == NULL || name == NULL)
    return CKR_ARGUMENTS_BAD;
  rv = parse_ref(be, name, &ref);
  if (rv != CKR_OK)
    goto out;
  rv = kvp_hsm_prov_begin(be, "deleting a key", NULL, &s);
  if (rv != CKR_OK)
    goto out;
  rv = kvp_hsm_find_keys(be, s, CKO_PRIVATE_KEY, ref.label, ref.id, ref.id_len, &privs, &n_priv);
  if (rv == CKR_OK)
    rv = kvp_hsm_find_keys(be, s, CKO_PUBLIC_KEY, ref.label, ref.id, ref.id_len, &pubs, &n_pub);
  if (rv != CKR_OK) {
    rv = kvp_fail(kvp_hsm_prov_map(rv), "hsm %s: C_FindObjects (key '%s'): %s", be->base.name, name,
                  kvp_ckr_name(rv));
    goto out;
  }
  if (n_priv + n_pub == 0) {
    rv = kvp_fail(CKR_KEY_HANDLE_INVALID, "hsm %s: no key '%s' in token '%s'", be->base.name, name,
                  kvp_hsm_token(be));
    goto out;
  }
  /* private first: a failure half-way leaves at worst a public key */
  for (CK_ULONG i = 0; i < n_priv + n_pub; i++) {
    CK_OBJECT_HANDLE h = i < n_priv ? privs[i] : pubs[i - n_priv];
    rv = KVP_HSM_CALL(be, C_DestroyObject, s, h);
    if (rv != CKR_OK) {
      rv = kvp_fail(kvp_hsm_prov_map(rv), "hsm %s: C_DestroyObject (key '%s', %s key): %s",
                    be->base.name, name, i < n_priv ? "private" : "public", kvp_ckr_name(rv));
      goto out;
    }
  }
  KVP_INFO("hsm %s: deleted key '%s' (%lu private, %lu public objects) from token '%s'",
           be->base.name, name, (unsigned long)n_priv, (unsigned long)n_pub, kvp_hsm_token(be));
  rv = CKR_OK;
out:
  if (s != CK_INVALID_HANDLE)
    kvp_hsm_prov_end(be, s);
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
                                    const CK_BYTE *id, CK_ULONG id_len)
{
  CK_OBJECT_CLASS cls = CKO_PUBLIC_KEY;
  CK_OBJECT_HANDLE *h = NULL, found = CK_INVALID_HANDLE;
  CK_ULONG n = 0;
  kvp_hsm_tmpl t = {.n = 0};
  kvp_hsm_t_add(&t, CKA_CLASS, &cls, sizeof(cls));
  if (label != NULL)
    kvp_hsm_t_add(&t, CKA_LABEL, (void *)label, strlen(label));
  if (id != NULL)
    kvp_hsm_t_add(&t, CKA_ID, (void *)id, id_len);
  if (kvp_hsm_find_all(be, s, t.a, t.n, &h, &n) == CKR_OK && n > 0)
    found = h[0];
  free(h);
  return found;
}

/* Public facts of private key object h. */
static CK_RV fill_info(kvp_hsm_backend *be, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
                       kvp_key_info *info)
{
  CK_BYTE *label = NULL, *id = NULL, *params = NULL, *mod = NULL;
  CK_ULONG label_len = 0, id_len = 0, params_len = 0, mod_len = 0, kt = CKK_VENDOR_DEFINED;
  CK_BBOOL sgn = CK_FALSE, dec = CK_FALSE;
  CK_RV rv;

  memset(info, 0, sizeof(*info));
  rv = kvp_hsm_get_ulong(be, s, h, CKA_KEY_TYPE, &kt);
  if (rv != CKR_OK)
    goto out;
  if (kt != CKK_RSA && kt != CKK_EC) {
    rv = KVP_HSM_SKIP;
    goto out;
  }
  {
    CK_ATTRIBUTE t[2] = {{CKA_SIGN, &sgn, sizeof(sgn)}, {CKA_DECRYPT, &dec, sizeof(dec)}};
    rv = KVP_HSM_CALL(be, C_GetAttributeValue, s, h, t, 2);
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
      (void)kvp_hsm_pub_from_object(be, s, pub, &info->pub);
    if (info->pub == NULL && kt == CKK_RSA)
      (void)kvp_hsm_pub_from_object(be, s, h, &info->pub);
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
      info->curve_nid = kvp_hsm_params_nid(params, params_len);
      info->bits = kvp_hsm_curve_bits(info->curve_nid);
    } else if (kt == CKK_RSA && kvp_hsm_get_attr(be, s, h, CKA_MODULUS, &mod, &mod_len) == CKR_OK) {
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

CK_RV kvp_hsm_list_keys(kvp_backend *bep, kvp_key_info **out, size_t *n)
{
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
  rv = kvp_hsm_prov_session(be, "listing keys", 0, &s);
  if (rv != CKR_OK)
    return rv;
  rv = kvp_hsm_find_all(be, s, &t, 1, &h, &count);
  if (rv != CKR_OK) {
    rv = kvp_fail(kvp_hsm_prov_map(rv), "hsm %s: C_FindObjects (private keys): %s", be->base.name,
                  kvp_ckr_name(rv));
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
    rv = kvp_fail(kvp_hsm_prov_map(rv), "hsm %s: reading private key object %lu: %s", be->base.name,
                  (unsigned long)h[i], kvp_ckr_name(rv));
    goto out;
  }
  rv = CKR_OK;
out:
  kvp_hsm_session_close(be, s);
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

CK_RV kvp_hsm_key_info(kvp_backend *bep, const char *name, kvp_key_info *out)
{
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
  rv = kvp_hsm_prov_session(be, "reading key information", 0, &s);
  if (rv != CKR_OK)
    goto out;
  rv = kvp_hsm_find_object(be, s, &ref, CKO_PRIVATE_KEY, &h);
  if (rv == KVP_HSM_KEY_REFUSED) { /* ambiguous: the reason is recorded */
    rv = CKR_KEY_HANDLE_INVALID;
    goto out;
  }
  if (rv == CKR_KEY_HANDLE_INVALID) {
    /* an answer, not a failure: `key create` asks first whether the name is
     * free, and the caller says what a missing key means to it */
    KVP_DEBUG("hsm %s: no key '%s' in token '%s'", be->base.name, name, kvp_hsm_token(be));
    goto out;
  }
  if (rv != CKR_OK) {
    rv = kvp_fail(kvp_hsm_prov_map(rv), "hsm %s: C_FindObjects (key '%s'): %s", be->base.name, name,
                  kvp_ckr_name(rv));
    goto out;
  }
  rv = fill_info(be, s, h, out);
  if (rv == KVP_HSM_SKIP) {
    rv = kvp_fail(CKR_KEY_TYPE_INCONSISTENT, "hsm %s: key '%s' is not an RSA or EC key",
                  be->base.name, name);
  } else if (rv != CKR_OK) {
    rv = kvp_fail(kvp_hsm_prov_map(rv), "hsm %s: reading key '%s': %s", be->base.name, name,
                  kvp_ckr_name(rv));
  }
out:
  if (s != CK_INVALID_HANDLE)
    kvp_hsm_session_close(be, s);
  ref.key.name = NULL;
  ref_clear(&ref);
  return rv;
}
