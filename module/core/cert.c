/*
 * X.509 certificate and public key helpers, all on OpenSSL.
 */
#include "core/cert.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/asn1.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/obj_mac.h>
#include <openssl/sha.h>

#include "core/util.h"

/* Certificate files larger than this are not certificates. */
#define KVP_CERT_FILE_MAX (1024 * 1024)

static int read_file(const char *path, unsigned char **buf, size_t *len, char *err, size_t errlen)
{
  FILE *f = fopen(path, "rb");
  unsigned char *b = NULL;
  size_t n = 0, cap = 0;
  int rc = KVP_OK;

  if (f == NULL)
    return kvp_seterr(err, errlen, KVP_EIO, "%s: cannot open: %s", path, strerror(errno));
  for (;;) {
    if (n == cap) {
      unsigned char *nb;
      cap = cap ? cap * 2 : 4096;
      if (cap > KVP_CERT_FILE_MAX + 1)
        cap = KVP_CERT_FILE_MAX + 1;
      nb = realloc(b, cap);
      if (nb == NULL) {
        rc = kvp_seterr(err, errlen, KVP_ENOMEM, "%s: out of memory", path);
        goto out;
      }
      b = nb;
    }
    size_t got = fread(b + n, 1, cap - n, f);
    n += got;
    if (got == 0)
      break;
    if (n > KVP_CERT_FILE_MAX) {
      rc = kvp_seterr(err, errlen, KVP_EINVAL, "%s: larger than %d bytes, not a certificate",
                      path, KVP_CERT_FILE_MAX);
      goto out;
    }
  }
  if (ferror(f)) {
    rc = kvp_seterr(err, errlen, KVP_EIO, "%s: read error", path);
    goto out;
  }
  *buf = b;
  *len = n;
  b = NULL;
out:
  free(b);
  fclose(f);
  return rc;
}

int kvp_cert_load_file(const char *path, unsigned char **der, size_t *der_len, char *err,
                       size_t errlen)
{
  unsigned char *buf = NULL;
  size_t len = 0;
  int rc = read_file(path, &buf, &len, err, errlen);
  if (rc != KVP_OK)
    return rc;
  rc = kvp_cert_load_mem(buf, len, path, der, der_len, err, errlen);
  free(buf);
  return rc;
}

static int looks_like_pem(const unsigned char *buf, size_t len)
{
  static const char marker[] = "-----BEGIN ";
  for (size_t i = 0; i + sizeof(marker) - 1 <= len; i++)
    if (memcmp(buf + i, marker, sizeof(marker) - 1) == 0)
      return 1;
  return 0;
}

/* Count "-----BEGIN CERTIFICATE-----" markers: several certificates are refused. */
static size_t count_pem_certs(const unsigned char *buf, size_t len)
{
  static const char marker[] = "-----BEGIN CERTIFICATE-----";
  size_t count = 0;
  for (size_t i = 0; i + sizeof(marker) - 1 <= len; i++)
    if (memcmp(buf + i, marker, sizeof(marker) - 1) == 0)
      count++;
  return count;
}

static const char *openssl_reason(void)
{
  unsigned long e = ERR_peek_last_error();
  const char *r = e ? ERR_reason_error_string(e) : NULL;
  return r ? r : "unknown error";
}

int kvp_cert_load_mem(const unsigned char *buf, size_t len, const char *what, unsigned char **der,
                      size_t *der_len, char *err, size_t errlen)
{
  X509 *x = NULL;
  int rc = KVP_OK;
  int n;

  *der = NULL;
  *der_len = 0;
  if (len == 0)
    return kvp_seterr(err, errlen, KVP_EINVAL, "%s: empty file", what);
  ERR_clear_error();
  if (looks_like_pem(buf, len)) {
    size_t certs = count_pem_certs(buf, len);
    BIO *bio;
    if (certs == 0)
      return kvp_seterr(err, errlen, KVP_EINVAL,
                        "%s: PEM file without a 'BEGIN CERTIFICATE' block", what);
    if (certs > 1)
      return kvp_seterr(err, errlen, KVP_EINVAL,
                        "%s: holds %zu certificates; give exactly one per file", what, certs);
    bio = BIO_new_mem_buf(buf, (int)len);
    if (bio == NULL)
      return kvp_seterr(err, errlen, KVP_ENOMEM, "%s: out of memory", what);
    x = PEM_read_bio_X509(bio, NULL, NULL, NULL);
    BIO_free(bio);
    if (x == NULL) {
      rc = kvp_seterr(err, errlen, KVP_EINVAL,
                      "%s: the PEM certificate is truncated or malformed (%s)", what,
                      openssl_reason());
      goto out;
    }
  } else {
    const unsigned char *p = buf;
    x = d2i_X509(NULL, &p, (long)len);
    if (x == NULL) {
      rc = kvp_seterr(err, errlen, KVP_EINVAL,
                      "%s: neither a PEM nor a DER X.509 certificate (%s)", what, openssl_reason());
      goto out;
    }
    if ((size_t)(p - buf) != len) {
      rc = kvp_seterr(err, errlen, KVP_EINVAL,
                      "%s: %zu bytes of trailing data after the DER certificate", what,
                      len - (size_t)(p - buf));
      goto out;
    }
  }
  n = i2d_X509(x, der);
  if (n <= 0) {
    rc = kvp_seterr(err, errlen, KVP_EINVAL, "%s: cannot encode the certificate", what);
    goto out;
  }
  *der_len = (size_t)n;
out:
  X509_free(x);
  ERR_clear_error();
  return rc;
}

static char *name_text(const X509_NAME *name)
{
  BIO *bio = BIO_new(BIO_s_mem());
  char *out = NULL;
  char *data;
  long len;

  if (bio == NULL)
    return NULL;
  if (X509_NAME_print_ex(bio, name, 0, XN_FLAG_RFC2253) >= 0) {
    len = BIO_get_mem_data(bio, &data);
    out = strndup(data, (size_t)len);
  }
  BIO_free(bio);
  return out;
}

static int asn1_time_unix(const ASN1_TIME *t, int64_t *out)
{
  struct tm tm;
  if (!ASN1_TIME_to_tm(t, &tm))
    return 0;
  *out = (int64_t)timegm(&tm);
  return 1;
}

static char *serial_hex(const ASN1_INTEGER *serial)
{
  BIGNUM *bn = ASN1_INTEGER_to_BN(serial, NULL);
  char *hex, *out;
  if (bn == NULL)
    return NULL;
  hex = BN_bn2hex(bn);
  BN_free(bn);
  if (hex == NULL)
    return NULL;
  out = strdup(hex);
  OPENSSL_free(hex);
  return out;
}

/* The two times of a DER Validity. */
static int validity_unix(const unsigned char *v, long len, int64_t *nb, int64_t *na)
{
  const unsigned char *p = v, *end = v + len;
  ASN1_TIME *t0 = NULL, *t1 = NULL;
  long clen = 0;
  int tag = 0, xclass = 0, ok;

  ok = !(ASN1_get_object(&p, &clen, &tag, &xclass, len) & 0x80) && tag == V_ASN1_SEQUENCE &&
       (t0 = d2i_ASN1_TIME(NULL, &p, end - p)) != NULL &&
       (t1 = d2i_ASN1_TIME(NULL, &p, end - p)) != NULL && p == end &&
       asn1_time_unix(t0, nb) && asn1_time_unix(t1, na);
  ASN1_TIME_free(t0);
  ASN1_TIME_free(t1);
  return ok;
}

/*
 * From the certificate's parts (kvp_cert_split): d2i_X509 would also decode
 * the public key through OpenSSL's decoders, the bulk of a registration's CPU
 * (cert add --cert-dir). The callers have read the file with
 * kvp_cert_load_file, which parses it whole.
 */
int kvp_cert_fill_rec(const unsigned char *der, size_t der_len, kvp_cert_rec *rec, char *err,
                      size_t errlen)
{
  kvp_cert_parts c;
  const unsigned char *p;
  X509_NAME *subject = NULL, *issuer = NULL;
  ASN1_INTEGER *serial = NULL;
  unsigned char md[SHA256_DIGEST_LENGTH];
  int rc = KVP_OK;

  if (kvp_cert_split(der, der_len, &c) != KVP_OK)
    return kvp_seterr(err, errlen, KVP_EINVAL, "not a DER X.509 certificate");
  p = c.subject;
  subject = d2i_X509_NAME(NULL, &p, c.subject_len);
  p = c.issuer;
  issuer = d2i_X509_NAME(NULL, &p, c.issuer_len);
  p = c.serial;
  serial = d2i_ASN1_INTEGER(NULL, &p, c.serial_len);
  if (subject == NULL || issuer == NULL || serial == NULL) {
    rc = kvp_seterr(err, errlen, KVP_EINVAL, "not a DER X.509 certificate");
    goto out;
  }
  rec->der = malloc(der_len);
  rec->subject = name_text(subject);
  rec->issuer = name_text(issuer);
  rec->serial = serial_hex(serial);
  if (rec->der == NULL || rec->subject == NULL || rec->issuer == NULL || rec->serial == NULL) {
    rc = kvp_seterr(err, errlen, KVP_ENOMEM, "out of memory");
    goto out;
  }
  memcpy(rec->der, der, der_len);
  rec->der_len = der_len;
  if (!validity_unix(c.validity, c.validity_len, &rec->not_before, &rec->not_after)) {
    rc = kvp_seterr(err, errlen, KVP_EINVAL, "certificate has an unreadable validity period");
    goto out;
  }
  SHA1(der, der_len, md);
  kvp_hex(md, SHA_DIGEST_LENGTH, rec->sha1);
  SHA256(der, der_len, md);
  kvp_hex(md, SHA256_DIGEST_LENGTH, rec->sha256);
out:
  X509_NAME_free(subject);
  X509_NAME_free(issuer);
  ASN1_INTEGER_free(serial);
  return rc;
}

int kvp_pubkey_id(const EVP_PKEY *pkey, unsigned char id[KVP_KEY_ID_LEN])
{
  kvp_spki k;
  if (kvp_spki_from_pkey(pkey, &k) != KVP_OK)
    return KVP_ERR;
  memcpy(id, k.id, KVP_KEY_ID_LEN);
  kvp_spki_clear(&k);
  return KVP_OK;
}

int kvp_pubkey_fingerprint(const EVP_PKEY *pkey, char out[72])
{
  unsigned char *der = NULL;
  unsigned char md[SHA256_DIGEST_LENGTH];
  int n = i2d_PUBKEY((EVP_PKEY *)pkey, &der);

  if (n <= 0)
    return KVP_ERR;
  SHA256(der, (size_t)n, md);
  OPENSSL_free(der);
  memcpy(out, "sha256:", 7);
  kvp_hex(md, sizeof(md), out + 7);
  return KVP_OK;
}

/*
 * Compare the SubjectPublicKeyInfo encodings first: that works for every
 * pair, including legacy keys an ENGINE made (which EVP_PKEY_eq cannot
 * always compare with provider keys); fall back to EVP_PKEY_eq for
 * encodings that differ but name the same key (e.g. a compressed EC point).
 */
int kvp_pubkey_equal(const EVP_PKEY *a, const EVP_PKEY *b)
{
  unsigned char *da = NULL, *db = NULL;
  int la, lb, same;

  if (a == NULL || b == NULL)
    return 0;
  la = i2d_PUBKEY((EVP_PKEY *)a, &da);
  lb = i2d_PUBKEY((EVP_PKEY *)b, &db);
  same = la > 0 && la == lb && memcmp(da, db, (size_t)la) == 0;
  OPENSSL_free(da);
  OPENSSL_free(db);
  return same || EVP_PKEY_eq(a, b) == 1;
}

/* ---- SubjectPublicKeyInfo, engine-proof --------------------------------- */

static int integer_bytes(const ASN1_TYPE *t, const unsigned char **p, int *len)
{
  if (t == NULL || t->type != V_ASN1_INTEGER)
    return 0;
  *p = ASN1_STRING_get0_data(t->value.integer);
  *len = ASN1_STRING_length(t->value.integer);
  while (*len > 1 && **p == 0) {
    (*p)++;
    (*len)--;
  }
  return *len > 0;
}

static unsigned ec_curve_bits(int nid)
{
  switch (nid) {
  case NID_X9_62_prime256v1:
  case NID_secp256k1: return 256;
  case NID_secp384r1: return 384;
  case NID_secp521r1: return 521;
  default: return 0;
  }
}

/* What a kvp_spki keeps alive: its pointers point into these. */
typedef struct spki_hold {
  X509_ALGOR *algor;
  ASN1_BIT_STRING *key;
  STACK_OF(ASN1_TYPE) *rsa;
} spki_hold;

/* Parse the DER SubjectPublicKeyInfo held in k->der. */
static int spki_parse_der(kvp_spki *k)
{
  const unsigned char *p = k->der, *bits = NULL, *q;
  spki_hold *hold = calloc(1, sizeof(*hold));
  ASN1_OBJECT *alg = NULL;
  X509_ALGOR *algor = NULL;
  const void *pval = NULL;
  int bits_len = 0, ptype = 0;

  if (hold == NULL)
    return KVP_ENOMEM;
  k->priv_ = hold;
  /* SEQUENCE { AlgorithmIdentifier, BIT STRING }, read part by part:
   * d2i_X509_PUBKEY would also decode the key through OpenSSL's decoders,
   * several times the cost of the rest (the module makes objects lazily, and
   * this is most of the cost of one). */
  {
    const unsigned char *end = k->der + k->der_len;
    long len = 0;
    int tag = 0, xclass = 0;
    if ((ASN1_get_object(&p, &len, &tag, &xclass, k->der_len) & 0x80) ||
        tag != V_ASN1_SEQUENCE || len != end - p ||
        (hold->algor = d2i_X509_ALGOR(NULL, &p, end - p)) == NULL ||
        (hold->key = d2i_ASN1_BIT_STRING(NULL, &p, end - p)) == NULL || p != end)
      return KVP_EINVAL;
    algor = hold->algor;
    X509_ALGOR_get0((const ASN1_OBJECT **)&alg, NULL, NULL, algor);
    bits = hold->key->data;
    bits_len = hold->key->length;
    if (bits_len <= 0 || (hold->key->flags & 0x07) != 0)
      return KVP_EINVAL; /* a key is whole bytes */
  }
  SHA1(bits, (size_t)bits_len, k->id);
  switch (OBJ_obj2nid(alg)) {
  case NID_rsaEncryption:
    q = bits;
    hold->rsa = d2i_ASN1_SEQUENCE_ANY(NULL, &q, bits_len);
    if (hold->rsa == NULL || sk_ASN1_TYPE_num(hold->rsa) != 2 ||
        !integer_bytes(sk_ASN1_TYPE_value(hold->rsa, 0), &k->n, &k->n_len) ||
        !integer_bytes(sk_ASN1_TYPE_value(hold->rsa, 1), &k->e, &k->e_len))
      return KVP_EINVAL;
    k->type = 1;
    k->bits = (unsigned)(k->n_len - 1) * 8;
    for (unsigned char top = k->n[0]; top; top >>= 1)
      k->bits++;
    return k->bits >= 1024 && k->n_len <= 1024 ? KVP_OK : KVP_EINVAL;
  case NID_X9_62_id_ecPublicKey:
    X509_ALGOR_get0(NULL, &ptype, &pval, algor);
    if (ptype != V_ASN1_OBJECT)
      return KVP_EINVAL; /* explicit curve parameters are not supported */
    k->curve = pval;
    k->curve_nid = OBJ_obj2nid(k->curve);
    k->bits = ec_curve_bits(k->curve_nid);
    k->point = bits;
    k->point_len = bits_len;
    k->type = 2;
    return k->bits != 0 ? KVP_OK : KVP_EINVAL;
  default:
    return KVP_EINVAL;
  }
}

void kvp_spki_clear(kvp_spki *k)
{
  spki_hold *hold = k->priv_;
  if (hold != NULL) {
    X509_ALGOR_free(hold->algor);
    ASN1_BIT_STRING_free(hold->key);
    sk_ASN1_TYPE_pop_free(hold->rsa, ASN1_TYPE_free);
    free(hold);
  }
  OPENSSL_free(k->der);
  memset(k, 0, sizeof(*k));
}

static int spki_finish(kvp_spki *k)
{
  int rc;
  if (k->der_len <= 0) {
    k->der = NULL;
    return KVP_EINVAL;
  }
  rc = spki_parse_der(k);
  if (rc != KVP_OK)
    kvp_spki_clear(k);
  return rc;
}

int kvp_spki_from_x509(X509 *x, kvp_spki *out)
{
  memset(out, 0, sizeof(*out));
  out->der_len = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(x), &out->der);
  return spki_finish(out);
}

int kvp_spki_from_pkey(const EVP_PKEY *pkey, kvp_spki *out)
{
  memset(out, 0, sizeof(*out));
  out->der_len = i2d_PUBKEY((EVP_PKEY *)pkey, &out->der);
  return spki_finish(out);
}

int kvp_spki_from_der(const unsigned char *der, size_t len, kvp_spki *out)
{
  memset(out, 0, sizeof(*out));
  if (der == NULL || len == 0 || len > 64 * 1024)
    return KVP_EINVAL;
  if ((out->der = OPENSSL_malloc(len)) == NULL)
    return KVP_ENOMEM;
  memcpy(out->der, der, len);
  out->der_len = (int)len;
  return spki_finish(out);
}

EVP_PKEY *kvp_spki_pubkey(const kvp_spki *k)
{
  if (k->type == 1)
    return kvp_pubkey_from_rsa(k->n, (size_t)k->n_len, k->e, (size_t)k->e_len);
  if (k->type == 2)
    return kvp_pubkey_from_ec(k->curve_nid, k->point, (size_t)k->point_len);
  return NULL;
}

/* Wrap the key bits in a SubjectPublicKeyInfo and decode it. */
static EVP_PKEY *pubkey_from_parts(int alg_nid, int ptype, void *pval, unsigned char *bits,
                                   int bits_len)
{
  X509_PUBKEY *xpk = X509_PUBKEY_new();
  unsigned char *der = NULL;
  const unsigned char *p;
  EVP_PKEY *pkey = NULL;
  int len;

  if (xpk == NULL || !X509_PUBKEY_set0_param(xpk, OBJ_nid2obj(alg_nid), ptype, pval, bits, bits_len)) {
    OPENSSL_free(bits);
    X509_PUBKEY_free(xpk);
    return NULL;
  }
  len = i2d_X509_PUBKEY(xpk, &der);
  X509_PUBKEY_free(xpk);
  if (len <= 0)
    return NULL;
  p = der;
  pkey = d2i_PUBKEY(NULL, &p, len);
  OPENSSL_free(der);
  return pkey;
}

EVP_PKEY *kvp_pubkey_from_rsa(const unsigned char *n, size_t n_len, const unsigned char *e,
                              size_t e_len)
{
  STACK_OF(ASN1_TYPE) *seq = sk_ASN1_TYPE_new_null();
  const unsigned char *parts[2] = {n, e};
  size_t lens[2] = {n_len, e_len};
  unsigned char *der = NULL;
  int len = -1;

  if (seq == NULL || n_len == 0 || e_len == 0 || n_len > 1024 || e_len > 64)
    goto out;
  for (int i = 0; i < 2; i++) {
    ASN1_TYPE *t = ASN1_TYPE_new();
    BIGNUM *bn = BN_bin2bn(parts[i], (int)lens[i], NULL);
    ASN1_INTEGER *ai = bn ? BN_to_ASN1_INTEGER(bn, NULL) : NULL;
    BN_free(bn);
    if (t == NULL || ai == NULL || !sk_ASN1_TYPE_push(seq, t)) {
      ASN1_TYPE_free(t);
      ASN1_INTEGER_free(ai);
      goto out;
    }
    ASN1_TYPE_set(t, V_ASN1_INTEGER, ai);
  }
  len = i2d_ASN1_SEQUENCE_ANY(seq, &der);
out:
  sk_ASN1_TYPE_pop_free(seq, ASN1_TYPE_free);
  if (len <= 0)
    return NULL;
  return pubkey_from_parts(NID_rsaEncryption, V_ASN1_NULL, NULL, der, len);
}

EVP_PKEY *kvp_pubkey_from_ec(int curve_nid, const unsigned char *point, size_t point_len)
{
  unsigned char *bits;

  if (ec_curve_bits(curve_nid) == 0 || point_len == 0 || point_len > 133)
    return NULL;
  bits = OPENSSL_malloc(point_len);
  if (bits == NULL)
    return NULL;
  memcpy(bits, point, point_len);
  return pubkey_from_parts(NID_X9_62_id_ecPublicKey, V_ASN1_OBJECT, OBJ_nid2obj(curve_nid), bits,
                           (int)point_len);
}

/* ---- certificate parts ----------------------------------------------------- */

/* The TLV at *p (before end): its whole extent; *p moves past it, or into it if enter. */
static int tlv(const unsigned char **p, const unsigned char *end, int want_tag, int enter,
               const unsigned char **start, long *len)
{
  const unsigned char *q = *p;
  long clen = 0;
  int tag = 0, xclass = 0;

  if (q >= end || (ASN1_get_object(&q, &clen, &tag, &xclass, end - q) & 0x80) ||
      (want_tag >= 0 && (tag != want_tag || xclass != V_ASN1_UNIVERSAL)) || clen > end - q)
    return -1;
  if (start != NULL) {
    *start = *p;
    *len = (long)(q - *p) + clen;
  }
  *p = enter ? q : q + clen;
  return 0;
}

int kvp_cert_split(const unsigned char *der, size_t der_len, kvp_cert_parts *c)
{
  const unsigned char *p = der, *end = der + der_len, *whole = NULL;
  long whole_len = 0;

  if (tlv(&p, end, V_ASN1_SEQUENCE, 1, &whole, &whole_len) != 0 || /* Certificate */
      whole_len != (long)der_len ||                                 /* and nothing after it */
      tlv(&p, end, V_ASN1_SEQUENCE, 1, NULL, NULL) != 0)            /* TBSCertificate */
    return KVP_EINVAL;
  if (p < end && *p == 0xa0 && tlv(&p, end, -1, 0, NULL, NULL) != 0) /* [0] version */
    return KVP_EINVAL;
  if (tlv(&p, end, V_ASN1_INTEGER, 0, &c->serial, &c->serial_len) != 0 ||
      tlv(&p, end, V_ASN1_SEQUENCE, 0, NULL, NULL) != 0 || /* signature */
      tlv(&p, end, V_ASN1_SEQUENCE, 0, &c->issuer, &c->issuer_len) != 0 ||
      tlv(&p, end, V_ASN1_SEQUENCE, 0, &c->validity, &c->validity_len) != 0 ||
      tlv(&p, end, V_ASN1_SEQUENCE, 0, &c->subject, &c->subject_len) != 0 ||
      tlv(&p, end, V_ASN1_SEQUENCE, 0, &c->spki, &c->spki_len) != 0)
    return KVP_EINVAL;
  return KVP_OK;
}
