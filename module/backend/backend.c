/*
 * Helpers shared by the backends and the front: hash tables, key shape,
 * key reference parsing.
 */
#include "backend/backend.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/rsa.h>
#include <openssl/obj_mac.h>
#include <openssl/objects.h>
#include <openssl/x509.h>

#include "core/cert.h"
#include "core/util.h"

/* ---- hashes -----------------------------------------------------------
 * Everything kvp11 needs to know of a hash, in one row: its OpenSSL digest,
 * its PKCS#11 mechanism and MGF1 type, its name in log lines. */
static const struct hash_desc {
  kvp_hash hash;
  const char *name;
  const EVP_MD *(*md)(void);
  CK_MECHANISM_TYPE ckm;
  CK_RSA_PKCS_MGF_TYPE mgf;
} hashes[] = {
    {KVP_HASH_SHA1, "SHA-1", EVP_sha1, CKM_SHA_1, CKG_MGF1_SHA1},
    {KVP_HASH_SHA224, "SHA-224", EVP_sha224, CKM_SHA224, CKG_MGF1_SHA224},
    {KVP_HASH_SHA256, "SHA-256", EVP_sha256, CKM_SHA256, CKG_MGF1_SHA256},
    {KVP_HASH_SHA384, "SHA-384", EVP_sha384, CKM_SHA384, CKG_MGF1_SHA384},
    {KVP_HASH_SHA512, "SHA-512", EVP_sha512, CKM_SHA512, CKG_MGF1_SHA512},
};

static const struct hash_desc *hash_desc(kvp_hash h)
{
  for (size_t i = 0; i < KVP_ARRAY_SIZE(hashes); i++)
    if (hashes[i].hash == h)
      return &hashes[i];
  return NULL;
}

size_t kvp_hash_len(kvp_hash h)
{
  const struct hash_desc *d = hash_desc(h);
  return d != NULL ? (size_t)EVP_MD_get_size(d->md()) : 0;
}

const EVP_MD *kvp_hash_md(kvp_hash h)
{
  const struct hash_desc *d = hash_desc(h);
  return d != NULL ? d->md() : NULL;
}

const char *kvp_hash_name(kvp_hash h)
{
  const struct hash_desc *d = hash_desc(h);
  return d != NULL ? d->name : "none";
}

CK_MECHANISM_TYPE kvp_hash_ckm(kvp_hash h)
{
  const struct hash_desc *d = hash_desc(h);
  return d != NULL ? d->ckm : CK_UNAVAILABLE_INFORMATION;
}

CK_RSA_PKCS_MGF_TYPE kvp_hash_mgf(kvp_hash h)
{
  const struct hash_desc *d = hash_desc(h);
  return d != NULL ? d->mgf : 0;
}

kvp_hash kvp_hash_from_ckm(CK_MECHANISM_TYPE m)
{
  for (size_t i = 0; i < KVP_ARRAY_SIZE(hashes); i++)
    if (hashes[i].ckm == m)
      return hashes[i].hash;
  return KVP_HASH_NONE;
}

kvp_hash kvp_hash_from_mgf(CK_RSA_PKCS_MGF_TYPE mgf)
{
  for (size_t i = 0; i < KVP_ARRAY_SIZE(hashes); i++)
    if (hashes[i].mgf == mgf)
      return hashes[i].hash;
  return KVP_HASH_NONE;
}

/* ---- DigestInfo (RFC 8017 9.2), with OpenSSL's X509_SIG ---------------- */

int kvp_digestinfo_build(kvp_hash h, const unsigned char *digest, size_t digest_len,
                         unsigned char *out, size_t cap, size_t *out_len)
{
  const EVP_MD *md = kvp_hash_md(h);
  X509_SIG *sig = NULL;
  X509_ALGOR *alg = NULL;
  ASN1_OCTET_STRING *dg = NULL;
  unsigned char *der = NULL;
  int len = 0, ok = 0;

  if (md == NULL || digest_len != kvp_hash_len(h))
    return 0;
  ERR_set_mark();
  sig = X509_SIG_new();
  if (sig == NULL)
    goto out;
  X509_SIG_getm(sig, &alg, &dg);
  if (!X509_ALGOR_set0(alg, OBJ_nid2obj(EVP_MD_get_type(md)), V_ASN1_NULL, NULL) ||
      !ASN1_OCTET_STRING_set(dg, digest, (int)digest_len))
    goto out;
  len = i2d_X509_SIG(sig, &der);
  if (len > 0 && (size_t)len <= cap) {
    memcpy(out, der, (size_t)len);
    *out_len = (size_t)len;
    ok = 1;
  }
out:
  OPENSSL_free(der);
  X509_SIG_free(sig);
  ERR_pop_to_mark();
  return ok;
}

int kvp_digestinfo_parse(const CK_BYTE *in, CK_ULONG len, kvp_hash *hash, const CK_BYTE **digest)
{
  const unsigned char *p = in;
  X509_SIG *sig;
  const X509_ALGOR *alg = NULL;
  const ASN1_OCTET_STRING *dg = NULL;
  unsigned char canon[128];
  size_t canon_len = 0;
  int rc = -1;

  if (in == NULL || len == 0 || len > sizeof(canon))
    return -1;
  ERR_set_mark();
  sig = d2i_X509_SIG(NULL, &p, (long)len);
  if (sig != NULL && p == in + len) {
    X509_SIG_get0(sig, &alg, &dg);
    kvp_hash h = KVP_HASH_NONE;
    int nid = OBJ_obj2nid(alg->algorithm);
    for (size_t i = 0; i < KVP_ARRAY_SIZE(hashes) && h == KVP_HASH_NONE; i++)
      if (nid == EVP_MD_get_type(hashes[i].md()))
        h = hashes[i].hash;
    /* only the one encoding kvp_digestinfo_build makes (NULL parameters,
     * DER): the backend signs that encoding, so it must be the caller's */
    if (h != KVP_HASH_NONE &&
        kvp_digestinfo_build(h, ASN1_STRING_get0_data(dg), (size_t)ASN1_STRING_length(dg), canon,
                             sizeof(canon), &canon_len) &&
        canon_len == len && memcmp(canon, in, len) == 0) {
      *hash = h;
      *digest = in + (len - kvp_hash_len(h));
      rc = 0;
    }
  }
  X509_SIG_free(sig);
  ERR_pop_to_mark();
  return rc;
}

EVP_PKEY_CTX *kvp_sig_ctx_new(EVP_PKEY *pub, const kvp_sig_alg *alg)
{
  EVP_PKEY_CTX *ctx;

  ERR_set_mark();
  ctx = EVP_PKEY_CTX_new_from_pkey(NULL, pub, NULL);
  if (ctx == NULL || EVP_PKEY_verify_init(ctx) != 1)
    goto bad;
  if (alg->scheme == KVP_SIG_RSA_PKCS1 || alg->scheme == KVP_SIG_RSA_PSS) {
    const EVP_MD *md = kvp_hash_md(alg->hash);
    if (EVP_PKEY_CTX_set_rsa_padding(ctx, alg->scheme == KVP_SIG_RSA_PKCS1
                                              ? RSA_PKCS1_PADDING
                                              : RSA_PKCS1_PSS_PADDING) != 1)
      goto bad;
    if (md != NULL && EVP_PKEY_CTX_set_signature_md(ctx, md) != 1)
      goto bad;
    if (alg->scheme == KVP_SIG_RSA_PSS) {
      const EVP_MD *mgf = kvp_hash_md(alg->mgf1);
      if (md == NULL || mgf == NULL || EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, mgf) != 1 ||
          EVP_PKEY_CTX_set_rsa_pss_saltlen(ctx, (int)alg->salt_len) != 1)
        goto bad;
    }
  } else if (alg->scheme != KVP_SIG_ECDSA) {
    goto bad;
  }
  ERR_pop_to_mark();
  return ctx;
bad:
  EVP_PKEY_CTX_free(ctx);
  ERR_pop_to_mark();
  return NULL;
}

unsigned char *kvp_ecdsa_raw_to_der(const unsigned char *raw, size_t len, size_t *der_len)
{
  ECDSA_SIG *es;
  BIGNUM *r, *s;
  unsigned char *der = NULL;
  int n;

  if (len == 0 || len % 2 != 0 || len > INT_MAX)
    return NULL;
  r = BN_bin2bn(raw, (int)(len / 2), NULL);
  s = BN_bin2bn(raw + len / 2, (int)(len / 2), NULL);
  es = ECDSA_SIG_new();
  if (r == NULL || s == NULL || es == NULL || ECDSA_SIG_set0(es, r, s) != 1) {
    BN_free(r);
    BN_free(s);
    ECDSA_SIG_free(es);
    return NULL;
  }
  n = i2d_ECDSA_SIG(es, &der);
  ECDSA_SIG_free(es);
  if (n <= 0)
    return NULL;
  *der_len = (size_t)n;
  return der;
}

int kvp_sig_check(EVP_PKEY_CTX *ctx, const kvp_sig_alg *alg, const unsigned char *digest,
                  size_t dlen, const unsigned char *sig, size_t slen)
{
  unsigned char *der = NULL;
  size_t der_len = 0;
  int ok;

  ERR_set_mark();
  if (alg->scheme != KVP_SIG_ECDSA) {
    ok = EVP_PKEY_verify(ctx, sig, slen, digest, dlen) == 1;
  } else {
    der = kvp_ecdsa_raw_to_der(sig, slen, &der_len);
    ok = der != NULL && EVP_PKEY_verify(ctx, der, der_len, digest, dlen) == 1;
    OPENSSL_free(der);
  }
  ERR_pop_to_mark();
  return ok;
}

int kvp_sig_verify(EVP_PKEY *pub, const kvp_sig_alg *alg, const unsigned char *digest,
                   size_t dlen, const unsigned char *sig, size_t slen)
{
  EVP_PKEY_CTX *ctx = kvp_sig_ctx_new(pub, alg);
  int ok = ctx != NULL && kvp_sig_check(ctx, alg, digest, dlen, sig, slen);

  EVP_PKEY_CTX_free(ctx);
  return ok;
}

CK_RV kvp_key_fill_from_pub(kvp_key *key)
{
  kvp_spki k;

  if (key == NULL || key->pub == NULL)
    return CKR_ARGUMENTS_BAD;
  if (kvp_spki_from_pkey(key->pub, &k) != KVP_OK)
    return CKR_KEY_TYPE_INCONSISTENT;
  key->type = k.type == 1 ? KVP_KEY_RSA : KVP_KEY_EC;
  key->bits = k.bits;
  key->curve_nid = k.type == 2 ? k.curve_nid : NID_undef;
  kvp_spki_clear(&k);
  return CKR_OK;
}

int kvp_keyref_parse(const char *ref, char **scheme, char **store, char **name, char *err,
                     size_t errlen)
{
  const char *colon, *slash;

  *scheme = *store = *name = NULL;
  if (ref == NULL || (colon = strchr(ref, ':')) == NULL || colon == ref)
    return kvp_seterr(err, errlen, KVP_EINVAL,
                      "key reference '%s': expected 'hsm:<hsm>/<key>' or 'keyvault:<vault>/<key>'",
                      ref ? ref : "");
  slash = strchr(colon + 1, '/');
  if (slash == NULL || slash == colon + 1 || slash[1] == '\0')
    return kvp_seterr(err, errlen, KVP_EINVAL, "key reference '%s': missing store or key name", ref);
  *scheme = strndup(ref, (size_t)(colon - ref));
  *store = strndup(colon + 1, (size_t)(slash - colon - 1));
  *name = strdup(slash + 1);
  if (*scheme == NULL || *store == NULL || *name == NULL) {
    free(*scheme);
    free(*store);
    free(*name);
    *scheme = *store = *name = NULL;
    return kvp_seterr(err, errlen, KVP_ENOMEM, "out of memory");
  }
  if (strcmp(*scheme, "hsm") != 0 && strcmp(*scheme, "keyvault") != 0) {
    int rc = kvp_seterr(err, errlen, KVP_EINVAL, "key reference '%s': unknown key store kind '%s'",
                        ref, *scheme);
    free(*scheme);
    free(*store);
    free(*name);
    *scheme = *store = *name = NULL;
    return rc;
  }
  return KVP_OK;
}

void kvp_key_info_clear(kvp_key_info *info)
{
  if (info == NULL)
    return;
  KVP_FREE_ALL(info->name, info->version, info->kty, info->id);
  EVP_PKEY_free(info->pub);
  memset(info, 0, sizeof(*info));
}

void kvp_key_info_free_array(kvp_key_info *infos, size_t n)
{
  for (size_t i = 0; infos != NULL && i < n; i++)
    kvp_key_info_clear(&infos[i]);
  free(infos);
}

static const struct {
  const char *name;
  const char *alias1;
  const char *alias2;
  int nid;
} curves[] = {
    {"P-256", "p256", "prime256v1", NID_X9_62_prime256v1},
    {"P-384", "p384", "secp384r1", NID_secp384r1},
    {"P-521", "p521", "secp521r1", NID_secp521r1},
    {"P-256K", "p256k", "secp256k1", NID_secp256k1},
};

int kvp_curve_nid(const char *name)
{
  for (size_t i = 0; name != NULL && i < KVP_ARRAY_SIZE(curves); i++)
    if (strcasecmp(name, curves[i].name) == 0 || strcasecmp(name, curves[i].alias1) == 0 ||
        strcasecmp(name, curves[i].alias2) == 0)
      return curves[i].nid;
  return NID_undef;
}

const char *kvp_curve_name(int nid)
{
  for (size_t i = 0; i < KVP_ARRAY_SIZE(curves); i++)
    if (curves[i].nid == nid)
      return curves[i].name;
  return NULL;
}

/* ---- calls into a backend ----------------------------------------------
 * The front and the tool reach a backend's keys only through these: the
 * arguments are checked here once for every backend, and the caller's
 * OpenSSL error queue is left as it was found (the backends, and the HSM
 * modules they load, use OpenSSL; an error left behind is taken for its own
 * by the application's next TLS handshake). */

/* The caller did ERR_set_mark() before the call that produced rv. */
static CK_RV popped(CK_RV rv)
{
  ERR_pop_to_mark();
  return rv;
}

CK_RV kvp_backend_open_key(kvp_backend *be, const char *name, const kvp_key_ref_hint *hint,
                           kvp_key **out)
{
  if (be == NULL || name == NULL || out == NULL)
    return CKR_ARGUMENTS_BAD;
  ERR_set_mark();
  if (be->ops->open_key_hint != NULL)
    return popped(be->ops->open_key_hint(be, name, hint, out));
  return popped(be->ops->open_key(be, name, out));
}

CK_RV kvp_backend_sign(kvp_key *key, const kvp_sig_alg *alg, const CK_BYTE *digest,
                       CK_ULONG digest_len, CK_BYTE *sig, CK_ULONG *sig_len)
{
  if (key == NULL || alg == NULL || digest == NULL || sig == NULL || sig_len == NULL)
    return CKR_ARGUMENTS_BAD;
  ERR_set_mark();
  return popped(key->backend->ops->sign(key->backend, key, alg, digest, digest_len, sig, sig_len));
}

CK_RV kvp_backend_decrypt(kvp_key *key, const kvp_dec_alg *alg, const CK_BYTE *in,
                          CK_ULONG in_len, CK_BYTE *out, CK_ULONG *out_len)
{
  if (key == NULL || alg == NULL || in == NULL || out == NULL || out_len == NULL)
    return CKR_ARGUMENTS_BAD;
  ERR_set_mark();
  return popped(key->backend->ops->decrypt(key->backend, key, alg, in, in_len, out, out_len));
}

CK_RV kvp_backend_login(kvp_backend *be, const CK_UTF8CHAR *pin, CK_ULONG pin_len)
{
  if (be == NULL || (pin == NULL && pin_len > 0))
    return CKR_ARGUMENTS_BAD;
  if (be->ops->login == NULL)
    return CKR_FUNCTION_NOT_SUPPORTED;
  ERR_set_mark();
  return popped(be->ops->login(be, pin, pin_len));
}

CK_RV kvp_backend_logout(kvp_backend *be)
{
  if (be == NULL || be->ops->logout == NULL)
    return CKR_OK;
  ERR_set_mark();
  return popped(be->ops->logout(be));
}
