/*
 * Fuzz target: certificate input to `kvp11 cert add`: kvp_cert_load_mem (PEM
 * or DER, exactly one certificate), kvp_cert_fill_rec (the registry row's
 * derived fields) and kvp_spki_from_x509 (the public key the module serves).
 * Oracles: a loaded certificate parses again as DER; a filled row has its
 * fields set; an accepted public key has sane sizes for its type.
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "core/cert.h"
#include "core/registry.h"
#include "core/util.h"
#include "fuzz_common.h"

static unsigned char *make_cert(EVP_PKEY *pkey, const char *cn, int *len)
{
  X509 *x = X509_new();
  unsigned char *der = NULL;

  if (x == NULL || pkey == NULL)
    exit(1);
  X509_set_version(x, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x), 0x1234567);
  X509_gmtime_adj(X509_getm_notBefore(x), 0);
  X509_gmtime_adj(X509_getm_notAfter(x), 86400L * 365);
  X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_UTF8,
                             (const unsigned char *)cn, -1, -1, 0);
  X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "O", MBSTRING_ASC,
                             (const unsigned char *)"kvp11, fuzz", -1, -1, 0);
  X509_set_issuer_name(x, X509_get_subject_name(x));
  X509_set_pubkey(x, pkey);
  if (X509_sign(x, pkey, EVP_PKEY_get_id(pkey) == EVP_PKEY_ED25519 ? NULL : EVP_sha256()) <= 0)
    exit(1);
  *len = i2d_X509(x, &der);
  X509_free(x);
  if (*len <= 0)
    exit(1);
  return der;
}

static char *to_pem(const unsigned char *der, int len)
{
  BIO *b = BIO_new(BIO_s_mem());
  char *mem, *out;
  long n;
  if (b == NULL || PEM_write_bio(b, "CERTIFICATE", "", der, len) <= 0)
    exit(1);
  n = BIO_get_mem_data(b, &mem);
  out = fuzz_strndup((const uint8_t *)mem, (size_t)n);
  BIO_free(b);
  return out;
}

static void write_seeds(const char *dir)
{
  struct {
    const char *name;
    EVP_PKEY *pkey;
  } keys[] = {
    {"rsa2048", EVP_RSA_gen(2048)},
    {"rsa1024", EVP_RSA_gen(1024)},
    {"rsa512", EVP_RSA_gen(512)},
    {"p256", EVP_EC_gen("P-256")},
    {"p384", EVP_EC_gen("P-384")},
    {"p521", EVP_EC_gen("P-521")},
    {"k256", EVP_EC_gen("secp256k1")},
    {"p224", EVP_EC_gen("P-224")},
    {"ed25519", EVP_PKEY_Q_keygen(NULL, NULL, "ED25519")},
  };
  char name[64], *pem0 = NULL;

  for (size_t i = 0; i < KVP_ARRAY_SIZE(keys); i++) {
    int len = 0;
    unsigned char *der = make_cert(keys[i].pkey, "fuzz \xc3\xa9 cert", &len);
    char *pem = to_pem(der, len);
    snprintf(name, sizeof(name), "%s.der", keys[i].name);
    if (fuzz_seed(dir, name, der, (size_t)len) != 0)
      exit(1);
    snprintf(name, sizeof(name), "%s.pem", keys[i].name);
    if (fuzz_seed_str(dir, name, pem) != 0)
      exit(1);
    if (i == 0) {
      pem0 = pem;
      /* truncated PEM and DER */
      if (fuzz_seed(dir, "truncated.pem", pem, strlen(pem) / 2) != 0 ||
          fuzz_seed(dir, "truncated.der", der, (size_t)len - 7) != 0)
        exit(1);
    } else {
      if (i == 3) {
        /* two certificates in one file */
        size_t l0 = strlen(pem0), l1 = strlen(pem);
        char *two = malloc(l0 + l1 + 1);
        if (two == NULL)
          exit(1);
        memcpy(two, pem0, l0);
        memcpy(two + l0, pem, l1 + 1);
        if (fuzz_seed_str(dir, "two.pem", two) != 0)
          exit(1);
        free(two);
      }
      free(pem);
    }
    OPENSSL_free(der);
    EVP_PKEY_free(keys[i].pkey);
  }
  free(pem0);
  if (fuzz_seed_str(dir, "garbage", "-----BEGIN CERTIFICATE-----\nnot base64\n") != 0)
    exit(1);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
  const char *dir = fuzz_seed_dir();
  if (dir != NULL) {
    write_seeds(dir);
    exit(0);
  }
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  char err[KVP_ERRLEN] = "";
  unsigned char *der = NULL;
  size_t der_len = 0;
  kvp_cert_rec rec;
  X509 *x = NULL;
  const unsigned char *p;
  kvp_spki spki;

  memset(&rec, 0, sizeof(rec));
  if (kvp_cert_load_mem(data, size, "fuzz input", &der, &der_len, err, sizeof(err)) != KVP_OK) {
    FUZZ_CHECK(err[0] != '\0');
    FUZZ_CHECK(der == NULL);
    return 0;
  }
  FUZZ_CHECK(der != NULL && der_len > 0);

  /* what `kvp11 cert add` does next */
  err[0] = '\0';
  if (kvp_cert_fill_rec(der, der_len, &rec, err, sizeof(err)) == KVP_OK) {
    FUZZ_CHECK(rec.der != NULL && rec.der_len == der_len && memcmp(rec.der, der, der_len) == 0);
    FUZZ_CHECK(rec.subject != NULL && rec.issuer != NULL && rec.serial != NULL);
    FUZZ_CHECK(strlen(rec.sha1) == 40 && strlen(rec.sha256) == 64);
  } else {
    FUZZ_CHECK(err[0] != '\0');
  }
  kvp_cert_rec_clear(&rec);

  /* how the module makes objects: the parts as DER slices, the key read part by part */
  {
    kvp_cert_parts parts;
    if (kvp_cert_split(der, der_len, &parts) == KVP_OK) {
      FUZZ_CHECK(parts.spki > der && parts.spki + parts.spki_len <= der + der_len);
      FUZZ_CHECK(parts.subject_len > 0 && parts.issuer_len > 0 && parts.serial_len > 0);
      if (kvp_spki_from_der(parts.spki, (size_t)parts.spki_len, &spki) == KVP_OK)
        FUZZ_CHECK(spki.type == 1 || spki.type == 2);
      kvp_spki_clear(&spki);
    }
  }

  /* what the module did before: the key through d2i_X509 */
  p = der;
  x = d2i_X509(NULL, &p, (long)der_len);
  if (x != NULL) {
    memset(&spki, 0, sizeof(spki));
    if (kvp_spki_from_x509(x, &spki) == KVP_OK) {
      FUZZ_CHECK(spki.der != NULL && spki.der_len > 0);
      if (spki.type == 1) {
        FUZZ_CHECK(spki.bits >= 1024 && spki.bits <= 8192);
        FUZZ_CHECK(spki.n != NULL && spki.n_len > 0 && spki.e != NULL && spki.e_len > 0);
        FUZZ_CHECK((unsigned)spki.n_len * 8 >= spki.bits && (unsigned)spki.n_len * 8 < spki.bits + 8);
      } else {
        FUZZ_CHECK(spki.type == 2);
        FUZZ_CHECK(spki.curve != NULL && spki.point != NULL && spki.point_len > 0);
      }
      {
        /* the public key rebuilt from its parts, as the module does */
        EVP_PKEY *k = spki.type == 1
                          ? kvp_pubkey_from_rsa(spki.n, (size_t)spki.n_len, spki.e, (size_t)spki.e_len)
                          : kvp_pubkey_from_ec(spki.curve_nid, spki.point, (size_t)spki.point_len);
        EVP_PKEY_free(k);
      }
    }
    kvp_spki_clear(&spki);
    X509_free(x);
  }
  free(der);
  return 0;
}
