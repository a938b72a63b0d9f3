/*
 * kvp11-scale-certs: N distinct partner certificates for the scale benchmark.
 *
 *   kvp11-scale-certs DIR N [PREFIX]
 *
 * Writes DIR/PREFIX<i>.pem for i = 0 .. N-1 (PREFIX default "partner"): each a
 * P-256 key of its own (so every certificate has its own CKA_ID) with subject
 * CN=PREFIX<i>, serial i + 1, issued by one throwaway CA key. One key
 * generation context and one CA key serve every certificate, so 100,000 take
 * seconds, not the minutes separate openssl commands would.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

int main(int argc, char **argv)
{
  const char *dir = argc > 2 ? argv[1] : NULL;
  long n = argc > 2 ? strtol(argv[2], NULL, 10) : -1;
  const char *prefix = argc > 3 ? argv[3] : "partner";
  EVP_PKEY_CTX *gen = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
  EVP_PKEY *ca = NULL;
  X509_NAME *issuer = X509_NAME_new();
  char path[4096], cn[256];

  if (dir == NULL || n < 0) {
    fprintf(stderr, "usage: kvp11-scale-certs DIR N [PREFIX]\n");
    return 2;
  }
  if (gen == NULL || EVP_PKEY_keygen_init(gen) <= 0 ||
      EVP_PKEY_CTX_set_group_name(gen, "P-256") <= 0 || EVP_PKEY_keygen(gen, &ca) <= 0 ||
      issuer == NULL ||
      !X509_NAME_add_entry_by_txt(issuer, "CN", MBSTRING_ASC,
                                  (const unsigned char *)"kvp11 scale benchmark CA", -1, -1, 0)) {
    fprintf(stderr, "kvp11-scale-certs: cannot make the CA key\n");
    return 1;
  }
  for (long i = 0; i < n; i++) {
    EVP_PKEY *key = NULL;
    X509 *x = X509_new();
    FILE *fp;
    int ok;

    snprintf(cn, sizeof(cn), "%s%ld", prefix, i);
    snprintf(path, sizeof(path), "%s/%s.pem", dir, cn);
    ok = x != NULL && EVP_PKEY_keygen(gen, &key) > 0 && X509_set_version(x, 2) &&
         ASN1_INTEGER_set(X509_get_serialNumber(x), i + 1) &&
         X509_gmtime_adj(X509_getm_notBefore(x), 0) &&
         X509_gmtime_adj(X509_getm_notAfter(x), 365L * 86400) &&
         X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
                                    (const unsigned char *)cn, -1, -1, 0) &&
         X509_set_issuer_name(x, issuer) && X509_set_pubkey(x, key) &&
         X509_sign(x, ca, EVP_sha256()) > 0;
    fp = ok ? fopen(path, "w") : NULL;
    ok = fp != NULL && PEM_write_X509(fp, x);
    if (fp != NULL && fclose(fp) != 0)
      ok = 0;
    X509_free(x);
    EVP_PKEY_free(key);
    if (!ok) {
      fprintf(stderr, "kvp11-scale-certs: cannot write %s\n", path);
      return 1;
    }
  }
  EVP_PKEY_free(ca);
  EVP_PKEY_CTX_free(gen);
  X509_NAME_free(issuer);
  return 0;
}
