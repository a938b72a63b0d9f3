/*
 * create_key and import_key of the HSM backend (rules: hsm_prov.c).
 *
 * Generation templates leave the public key's usage attributes (CKA_VERIFY,
 * CKA_ENCRYPT, CKA_WRAP) to the HSM: anyone holding a public key can verify
 * and encrypt with it, and some modules tie them to the private key's flags
 * in their own way (tpm2-pkcs11 refuses a sign-only pair that sets them).
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
#include <openssl/rand.h>
#include <openssl/x509.h>

#include "backend/backend.h"
#include "backend/hsm/hsm_internal.h"
#include "backend/hsm/hsm_prov.h"
#include "core/cert.h"
#include "core/log.h"
#include "core/p11names.h"
#include "core/status.h"
#include "core/util.h"

/* The values the templates of a new key pair point at. */
typedef struct key_vals {
  CK_OBJECT_CLASS pub_cls, priv_cls;
  CK_KEY_TYPE kt;
  CK_BBOOL yes, no, b_sign, b_dec, token;
} key_vals;

/* What both objects of a new key pair carry, created or imported: class,
 * key type, token (or session) object, label; the private key private,
 * sensitive, not extractable, with the operations ops allows. The templates
 * point into v. */
static void key_templates(key_vals *v, kvp_key_type type, unsigned ops, const char *name,
                          CK_BBOOL token, kvp_hsm_tmpl *kt_priv, kvp_hsm_tmpl *pt)
{
  v->token = token;
  v->priv_cls = CKO_PRIVATE_KEY;
  v->pub_cls = CKO_PUBLIC_KEY;
  v->yes = CK_TRUE;
  v->no = CK_FALSE;
  v->b_sign = (ops & KVP_KEYOP_SIGN) ? CK_TRUE : CK_FALSE;
  v->b_dec = (ops & KVP_KEYOP_DECRYPT) ? CK_TRUE : CK_FALSE;
  v->kt = type == KVP_KEY_RSA ? CKK_RSA : CKK_EC;

  kvp_hsm_t_add(kt_priv, CKA_CLASS, &v->priv_cls, sizeof(v->priv_cls));
  kvp_hsm_t_add(kt_priv, CKA_KEY_TYPE, &v->kt, sizeof(v->kt));
  kvp_hsm_t_add(kt_priv, CKA_TOKEN, &v->token, sizeof(v->token));
  kvp_hsm_t_add(kt_priv, CKA_PRIVATE, &v->yes, sizeof(v->yes));
  kvp_hsm_t_add(kt_priv, CKA_SENSITIVE, &v->yes, sizeof(v->yes));
  kvp_hsm_t_add(kt_priv, CKA_EXTRACTABLE, &v->no, sizeof(v->no));
  kvp_hsm_t_add(kt_priv, CKA_SIGN, &v->b_sign, sizeof(v->b_sign));
  kvp_hsm_t_add(kt_priv, CKA_DECRYPT, &v->b_dec, sizeof(v->b_dec));
  kvp_hsm_t_add(kt_priv, CKA_UNWRAP, &v->no, sizeof(v->no));
  kvp_hsm_t_add(kt_priv, CKA_DERIVE, &v->no, sizeof(v->no));
  kvp_hsm_t_add(kt_priv, CKA_LABEL, (void *)name, strlen(name));
  kvp_hsm_t_add(pt, CKA_CLASS, &v->pub_cls, sizeof(v->pub_cls));
  kvp_hsm_t_add(pt, CKA_KEY_TYPE, &v->kt, sizeof(v->kt));
  kvp_hsm_t_add(pt, CKA_TOKEN, &v->token, sizeof(v->token));
  kvp_hsm_t_add(pt, CKA_PRIVATE, &v->no, sizeof(v->no));
  kvp_hsm_t_add(pt, CKA_LABEL, (void *)name, strlen(name));
}

/* ---------- create ---------- */

/* Generate the pair: token objects, or (token false) session objects kept in
 * the session returned in *keep, which the caller closes to destroy them. */
static CK_RV generate_pair(kvp_backend *bep, const char *name, const kvp_key_spec *spec,
                           CK_BBOOL token, CK_SESSION_HANDLE *keep)
{
  kvp_hsm_backend *be = kvp_hsm_of(bep);
  CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
  CK_OBJECT_HANDLE hpub = CK_INVALID_HANDLE, hpriv = CK_INVALID_HANDLE;
  CK_MECHANISM mech = {CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0};
  key_vals vals;
  CK_ULONG mod_bits = 0;
  CK_BYTE exp65537[] = {0x01, 0x00, 0x01};
  unsigned char *params = NULL;
  int params_len = 0, begun = 0;
  unsigned ops = 0;
  char what[32];
  kvp_hsm_tmpl pt = {.n = 0}, kt_priv = {.n = 0};
  CK_RV rv = CKR_GENERAL_ERROR;

  if (bep == NULL || name == NULL || spec == NULL)
    return CKR_ARGUMENTS_BAD;
  rv = kvp_hsm_check_name(be, name);
  if (rv != CKR_OK)
    return rv;
  if (spec->type == KVP_KEY_RSA) {
    if (spec->bits != 2048 && spec->bits != 3072 && spec->bits != 4096) {
      return kvp_fail(CKR_KEY_SIZE_RANGE,
                      "hsm %s: key %s: RSA keys are 2048, 3072 or 4096 bits, not %u", be->base.name,
                      name, spec->bits);
    }
    mod_bits = spec->bits;
    snprintf(what, sizeof(what), "RSA-%u", spec->bits);
  } else if (spec->type == KVP_KEY_EC) {
    if (!kvp_hsm_curve_params(spec->curve_nid, &params, &params_len)) {
      const char *sn = spec->curve_nid != NID_undef ? OBJ_nid2sn(spec->curve_nid) : NULL;
      KVP_ERROR("hsm %s: key %s: unsupported curve %s (P-256, P-384 or P-521)", be->base.name, name,
                sn ? sn : "(none)");
      OPENSSL_free(params);
      return CKR_KEY_TYPE_INCONSISTENT;
    }
    mech.mechanism = CKM_EC_KEY_PAIR_GEN;
    snprintf(what, sizeof(what), "EC %s", kvp_curve_name(spec->curve_nid));
  } else {
    return kvp_fail(CKR_KEY_TYPE_INCONSISTENT, "hsm %s: key %s: unsupported key type %d",
                    be->base.name, name, (int)spec->type);
  }
  rv = kvp_hsm_key_ops(be, name, spec->type, spec->ops, &ops);
  if (rv != CKR_OK)
    goto out;
  if (spec->id != NULL && spec->id_len == 0) {
    rv = kvp_fail(CKR_ATTRIBUTE_VALUE_INVALID, "hsm %s: key %s: empty CKA_ID", be->base.name, name);
    goto out;
  }
  key_templates(&vals, spec->type, ops, name, token, &kt_priv, &pt);
  if (spec->id != NULL) {
    kvp_hsm_t_add(&pt, CKA_ID, (void *)spec->id, spec->id_len);
    kvp_hsm_t_add(&kt_priv, CKA_ID, (void *)spec->id, spec->id_len);
  }
  if (spec->type == KVP_KEY_RSA) {
    kvp_hsm_t_add(&pt, CKA_MODULUS_BITS, &mod_bits, sizeof(mod_bits));
    kvp_hsm_t_add(&pt, CKA_PUBLIC_EXPONENT, exp65537, sizeof(exp65537));
  } else {
    kvp_hsm_t_add(&pt, CKA_EC_PARAMS, params, (size_t)params_len);
  }

  rv = kvp_hsm_prov_begin(be, "creating a key", name, &s);
  if (rv != CKR_OK)
    goto out;
  begun = 1;
  rv = KVP_HSM_CALL(be, C_GenerateKeyPair, s, &mech, pt.a, pt.n, kt_priv.a, kt_priv.n, &hpub,
                    &hpriv);
  if (rv != CKR_OK) {
    rv = kvp_fail(kvp_hsm_prov_map(rv), "hsm %s: C_GenerateKeyPair (key %s, %s): %s", be->base.name,
                  name, what, kvp_ckr_name(rv));
    goto out;
  }
  rv = kvp_hsm_finish_pair(be, s, name, hpriv, hpub, spec->id == NULL, NULL);
  if (rv != CKR_OK)
    goto out;
  KVP_INFO("hsm %s: created %skey %s (%s) in token '%s'", be->base.name,
           token ? "" : "session ", name, what, kvp_hsm_token(be));
  if (keep != NULL) {
    *keep = s; /* its session objects live as long as it does */
    s = CK_INVALID_HANDLE;
  }
out:
  if (begun)
    kvp_hsm_prov_end(be, s); /* a kept session stays open; prov_lock is released either way */
  OPENSSL_free(params);
  return rv;
}

CK_RV kvp_hsm_create_key(kvp_backend *bep, const char *name, const kvp_key_spec *spec,
                         kvp_key **out)
{
  CK_RV rv;

  if (out != NULL)
    *out = NULL;
  rv = generate_pair(bep, name, spec, CK_TRUE, NULL);
  if (rv == CKR_OK && out != NULL)
    rv = kvp_hsm_open_key(bep, name, out);
  return rv;
}

/*
 * A key pair of HSM session objects (CKA_TOKEN false) under a fresh label,
 * made in an HSM session of its own that never goes to the pool: the
 * objects live until kvp_hsm_close_key closes that session. The pooled
 * sessions see them (session objects are visible to all sessions of the
 * application), so signing and decrypting run as for token keys.
 */
CK_RV kvp_hsm_create_session_key(kvp_backend *bep, const kvp_key_spec *spec, kvp_key **out)
{
  kvp_hsm_backend *be = kvp_hsm_of(bep);
  CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
  unsigned char r[8];
  char name[40];
  CK_RV rv;

  if (out == NULL)
    return CKR_ARGUMENTS_BAD;
  *out = NULL;
  if (RAND_bytes(r, sizeof(r)) != 1)
    return kvp_fail(CKR_FUNCTION_FAILED, "hsm %s: no random label for a session key",
                    be->base.name);
  snprintf(name, sizeof(name), "kvp11-session-%02x%02x%02x%02x%02x%02x%02x%02x", r[0], r[1], r[2],
           r[3], r[4], r[5], r[6], r[7]);
  rv = generate_pair(bep, name, spec, CK_FALSE, &s);
  if (rv == CKR_OK)
    rv = kvp_hsm_open_key(bep, name, out);
  if (rv != CKR_OK) {
    kvp_hsm_session_close(be, s); /* takes any session objects made with it */
    return rv;
  }
  ((kvp_hsm_key *)(*out)->impl)->own_session = s;
  return CKR_OK;
}

/* ---------- import ---------- */

/* A copy of key material (private or public), wiped before it is freed. */
typedef struct {
  unsigned char *p;
  size_t len;
} secbuf;

static void secbuf_clear(secbuf *b)
{
  if (b->p != NULL) {
    OPENSSL_cleanse(b->p, b->len);
    free(b->p);
  }
  b->p = NULL;
  b->len = 0;
}

/* Big-endian bytes of a BIGNUM parameter (pad: exact length, 0: minimal).
 * 0: the key has no such parameter. */
static int bn_param(const EVP_PKEY *pk, const char *param, size_t pad, secbuf *out)
{
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
  secbuf ec_value;         /* EC: private scalar */
  unsigned char *ec_point; /* EC: DER OCTET STRING of the uncompressed point (OPENSSL_free) */
  int ec_point_len;
  key_vals vals; /* what the templates point to */
} import_parts;

static void import_parts_clear(import_parts *ip)
{
  for (int i = 0; i < RSA_PARTS; i++)
    secbuf_clear(&ip->rsa[i]);
  secbuf_clear(&ip->ec_value);
  OPENSSL_free(ip->params);
  OPENSSL_free(ip->ec_point);
  memset(ip, 0, sizeof(*ip));
}

/* The uncompressed point of an EC key, as a DER OCTET STRING. */
static int ec_point_der(const EVP_PKEY *pk, int nid, unsigned char **der, int *der_len)
{
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
                            import_parts *ip)
{
  int base = EVP_PKEY_get_base_id(priv);
  memset(ip, 0, sizeof(*ip));
  if (base == EVP_PKEY_RSA) {
    BIGNUM *extra = NULL;
    ip->type = KVP_KEY_RSA;
    ip->bits = (unsigned)EVP_PKEY_get_bits(priv);
    if (ip->bits < 2048 || ip->bits > 4096) {
      return kvp_fail(CKR_KEY_SIZE_RANGE,
                      "hsm %s: key %s: RSA-%u cannot be imported (2048 to 4096 bits)",
                      be->base.name, name, ip->bits);
    }
    if (EVP_PKEY_get_bn_param(priv, OSSL_PKEY_PARAM_RSA_FACTOR3, &extra)) {
      BN_clear_free(extra);
      return kvp_fail(CKR_KEY_TYPE_INCONSISTENT,
                      "hsm %s: key %s: multi-prime RSA keys cannot be imported", be->base.name,
                      name);
    }
    for (int i = 0; i < RSA_PARTS; i++)
      if (!bn_param(priv, rsa_parts[i].param, 0, &ip->rsa[i]) && rsa_parts[i].required) {
        return kvp_fail(CKR_KEY_TYPE_INCONSISTENT, "hsm %s: key %s: the RSA key has no %s",
                        be->base.name, name, rsa_parts[i].param);
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
    ip->bits = kvp_hsm_curve_bits(ip->curve_nid);
    if (ip->bits == 0 || !kvp_hsm_curve_params(ip->curve_nid, &ip->params, &ip->params_len)) {
      return kvp_fail(CKR_KEY_TYPE_INCONSISTENT,
                      "hsm %s: key %s: EC keys on %s cannot be imported (P-256, P-384 or P-521)",
                      be->base.name, name, glen > 0 ? group : "an unnamed curve");
    }
    if (!bn_param(priv, OSSL_PKEY_PARAM_PRIV_KEY, (ip->bits + 7) / 8, &ip->ec_value)) {
      return kvp_fail(CKR_KEY_TYPE_INCONSISTENT, "hsm %s: key %s: the EC key has no private part",
                      be->base.name, name);
    }
    if (!ec_point_der(priv, ip->curve_nid, &ip->ec_point, &ip->ec_point_len)) {
      return kvp_fail(CKR_KEY_TYPE_INCONSISTENT, "hsm %s: key %s: cannot read the EC public point",
                      be->base.name, name);
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
                         const CK_BYTE *id, CK_ULONG id_len)
{
  CK_OBJECT_HANDLE *h = NULL;
  CK_ULONG n = 0;
  if (kvp_hsm_find_keys(be, s, CKO_PRIVATE_KEY, NULL, id, id_len, &h, &n) == CKR_OK && n > 0)
    KVP_WARN("hsm %s: key %s: %lu other private key(s) in token '%s' have the same CKA_ID",
             be->base.name, name, (unsigned long)n, kvp_hsm_token(be));
  free(h);
}

/* The templates of the two objects; they point into ip. */
static void import_templates(import_parts *ip, const char *name, const CK_BYTE *id, CK_ULONG id_len,
                             unsigned ops, kvp_hsm_tmpl *kt_priv, kvp_hsm_tmpl *pt)
{
  key_templates(&ip->vals, ip->type, ops, name, CK_TRUE, kt_priv, pt);
  kvp_hsm_t_add(kt_priv, CKA_ID, (void *)id, id_len);
  kvp_hsm_t_add(pt, CKA_VERIFY, &ip->vals.b_sign, sizeof(ip->vals.b_sign));
  kvp_hsm_t_add(pt, CKA_ENCRYPT, &ip->vals.b_dec, sizeof(ip->vals.b_dec));
  kvp_hsm_t_add(pt, CKA_WRAP, &ip->vals.no, sizeof(ip->vals.no));
  kvp_hsm_t_add(pt, CKA_ID, (void *)id, id_len);
  if (ip->type == KVP_KEY_RSA) {
    for (int i = 0; i < RSA_PARTS; i++)
      if (ip->rsa[i].p != NULL)
        kvp_hsm_t_add(kt_priv, rsa_parts[i].attr, ip->rsa[i].p, ip->rsa[i].len);
    kvp_hsm_t_add(pt, CKA_MODULUS, ip->rsa[RSA_N].p, ip->rsa[RSA_N].len);
    kvp_hsm_t_add(pt, CKA_PUBLIC_EXPONENT, ip->rsa[RSA_E].p, ip->rsa[RSA_E].len);
  } else {
    kvp_hsm_t_add(kt_priv, CKA_EC_PARAMS, ip->params, (size_t)ip->params_len);
    kvp_hsm_t_add(kt_priv, CKA_VALUE, ip->ec_value.p, ip->ec_value.len);
    kvp_hsm_t_add(pt, CKA_EC_PARAMS, ip->params, (size_t)ip->params_len);
    kvp_hsm_t_add(pt, CKA_EC_POINT, ip->ec_point, (size_t)ip->ec_point_len);
  }
}

CK_RV kvp_hsm_import_key(kvp_backend *bep, const char *name, EVP_PKEY *priv,
                         const kvp_key_spec *spec, kvp_key **out)
{
  kvp_hsm_backend *be = kvp_hsm_of(bep);
  CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
  CK_OBJECT_HANDLE hpub = CK_INVALID_HANDLE, hpriv = CK_INVALID_HANDLE;
  unsigned char default_id[KVP_KEY_ID_LEN];
  const CK_BYTE *id = default_id;
  CK_ULONG id_len = sizeof(default_id);
  import_parts ip;
  kvp_hsm_tmpl pt = {.n = 0}, kt_priv = {.n = 0};
  unsigned ops = 0;
  CK_RV rv = CKR_GENERAL_ERROR;

  memset(&ip, 0, sizeof(ip));
  if (bep == NULL || name == NULL || priv == NULL)
    return CKR_ARGUMENTS_BAD;
  if (out != NULL)
    *out = NULL;
  rv = kvp_hsm_check_name(be, name);
  if (rv != CKR_OK)
    return rv;
  rv = import_extract(be, name, priv, &ip);
  if (rv != CKR_OK)
    goto out;
  rv = kvp_hsm_key_ops(be, name, ip.type, spec ? spec->ops : 0, &ops);
  if (rv != CKR_OK)
    goto out;
  if (spec != NULL && spec->id != NULL) {
    if (spec->id_len == 0) {
      rv = kvp_fail(CKR_ATTRIBUTE_VALUE_INVALID, "hsm %s: key %s: empty CKA_ID", be->base.name,
                    name);
      goto out;
    }
    id = spec->id;
    id_len = (CK_ULONG)spec->id_len;
  } else if (kvp_pubkey_id(priv, default_id) != KVP_OK) {
    rv =
        kvp_fail(CKR_FUNCTION_FAILED, "hsm %s: key %s: cannot compute the CKA_ID of the public key",
                 be->base.name, name);
    goto out;
  }
  import_templates(&ip, name, id, id_len, ops, &kt_priv, &pt);

  rv = kvp_hsm_prov_begin(be, "importing a key", name, &s);
  if (rv != CKR_OK)
    goto out;
  warn_same_id(be, s, name, id, id_len);
  rv = KVP_HSM_CALL(be, C_CreateObject, s, kt_priv.a, kt_priv.n, &hpriv);
  if (rv != CKR_OK) {
    hpriv = CK_INVALID_HANDLE;
    rv = kvp_fail(kvp_hsm_prov_map(rv), "hsm %s: C_CreateObject (key %s, private key): %s",
                  be->base.name, name, kvp_ckr_name(rv));
    goto out;
  }
  rv = KVP_HSM_CALL(be, C_CreateObject, s, pt.a, pt.n, &hpub);
  if (rv != CKR_OK) {
    hpub = CK_INVALID_HANDLE;
    KVP_ERROR("hsm %s: C_CreateObject (key %s, public key): %s; removing the private key again",
              be->base.name, name, kvp_ckr_name(rv));
    kvp_hsm_destroy_obj(be, s, hpriv, name);
    rv = kvp_hsm_prov_map(rv);
    goto out;
  }
  rv = kvp_hsm_finish_pair(be, s, name, hpriv, hpub, 0, priv);
  if (rv != CKR_OK)
    goto out;
  if (ip.type == KVP_KEY_RSA)
    KVP_INFO("hsm %s: imported key %s (RSA-%u) into token '%s'", be->base.name, name, ip.bits,
             kvp_hsm_token(be));
  else
    KVP_INFO("hsm %s: imported key %s (EC %s) into token '%s'", be->base.name, name,
             kvp_curve_name(ip.curve_nid), kvp_hsm_token(be));
out:
  if (s != CK_INVALID_HANDLE)
    kvp_hsm_prov_end(be, s);
  /* the templates only point into ip */
  import_parts_clear(&ip);
  if (rv == CKR_OK && out != NULL)
    rv = kvp_hsm_open_key(bep, name, out);
  return rv;
}
