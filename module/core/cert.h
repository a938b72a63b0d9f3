/*
 * X.509 and public key helpers (OpenSSL).
 */
#ifndef KVP_CORE_CERT_H
#define KVP_CORE_CERT_H

#include <stddef.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "registry.h"

/* Length of CKA_ID: SHA-1 of the subjectPublicKey BIT STRING (RFC 5280 4.2.1.2 (1)). */
#define KVP_KEY_ID_LEN 20

/*
 * Read exactly one certificate from a file, PEM or DER. A file with several
 * PEM certificates, a truncated PEM, or garbage is KVP_EINVAL with a message
 * naming the file and what was wrong. *der is malloc'd.
 */
int kvp_cert_load_file(const char *path, unsigned char **der, size_t *der_len, char *err, size_t errlen);
/* The same from a memory buffer; what names the source in messages. */
int kvp_cert_load_mem(const unsigned char *buf, size_t len, const char *what, unsigned char **der,
                      size_t *der_len, char *err, size_t errlen);

/*
 * Fill the derived fields of rec from DER: der (copied), subject, issuer,
 * serial, not_before, not_after, sha1, sha256. Other fields untouched.
 */
int kvp_cert_fill_rec(const unsigned char *der, size_t der_len, kvp_cert_rec *rec, char *err,
                      size_t errlen);

/*
 * The parts of a certificate PKCS#11 objects show, as DER slices of der
 * (serial INTEGER, issuer Name, Validity, subject Name, SubjectPublicKeyInfo), found by
 * walking the TBSCertificate's TLVs without decoding anything. d2i_X509 also
 * decodes the public key through OpenSSL's decoders, which costs a hundred
 * times more (the module makes objects lazily; the registry fills its CKA_ID
 * index at every add). KVP_EINVAL if der is not that shape.
 */
typedef struct kvp_cert_parts {
  const unsigned char *serial, *issuer, *validity, *subject, *spki;
  long serial_len, issuer_len, validity_len, subject_len, spki_len;
} kvp_cert_parts;
int kvp_cert_split(const unsigned char *der, size_t der_len, kvp_cert_parts *out);

/* CKA_ID of a public key. Returns KVP_OK. */
int kvp_pubkey_id(const EVP_PKEY *pkey, unsigned char id[KVP_KEY_ID_LEN]);
/* SHA-256 over the SubjectPublicKeyInfo DER, as "sha256:<hex>" (out: 72 bytes). */
int kvp_pubkey_fingerprint(const EVP_PKEY *pkey, char out[72]);
/* 1 if both keys are the same public key, 0 if not. */
int kvp_pubkey_equal(const EVP_PKEY *a, const EVP_PKEY *b);

/*
 * A SubjectPublicKeyInfo read with plain ASN.1. kvp11 runs inside
 * applications that may have made an ENGINE the default for RSA and EC
 * (openssl -engine pkcs11); OpenSSL then decodes keys as legacy engine keys
 * whose parameters cannot be read with EVP_PKEY_get_*_param or duplicated.
 * Everything kvp11 needs of a public key comes from here instead.
 */
typedef struct kvp_spki {
  int type;                    /* 1 RSA, 2 EC (the values of kvp_key_type) */
  unsigned bits;               /* RSA modulus bits; EC 256, 384, 521 */
  int curve_nid;               /* EC only */
  const unsigned char *n, *e;  /* RSA, big-endian without leading zeros */
  int n_len, e_len;
  const ASN1_OBJECT *curve;    /* EC */
  const unsigned char *point;  /* EC encoded point */
  int point_len;
  unsigned char *der;          /* the SubjectPublicKeyInfo DER (owned) */
  int der_len;
  unsigned char id[KVP_KEY_ID_LEN]; /* CKA_ID */
  void *priv_;                 /* parsed structures (owned) */
} kvp_spki;

/* RSA of 1024 to 8192 bits, EC on P-256, P-384, P-521, secp256k1; KVP_EINVAL otherwise. */
int kvp_spki_from_x509(X509 *x, kvp_spki *out);
int kvp_spki_from_pkey(const EVP_PKEY *pkey, kvp_spki *out);
/* From DER SubjectPublicKeyInfo bytes (copied). */
int kvp_spki_from_der(const unsigned char *der, size_t len, kvp_spki *out);
void kvp_spki_clear(kvp_spki *k);
/* A new EVP_PKEY for the parsed key (kvp_pubkey_from_rsa / _ec). */
EVP_PKEY *kvp_spki_pubkey(const kvp_spki *k);

/* Public keys from their parts, decoded from a DER SubjectPublicKeyInfo (works
 * with or without a default ENGINE). NULL on bad input. */
EVP_PKEY *kvp_pubkey_from_rsa(const unsigned char *n, size_t n_len, const unsigned char *e,
                              size_t e_len);
EVP_PKEY *kvp_pubkey_from_ec(int curve_nid, const unsigned char *point, size_t point_len);

#endif
