/*
 * kvp11-stress-mkcerts DIR WRITERS COUNT: writes DIR/w<p>-c<i>.pem for p in 1..WRITERS and
 * i in 1..COUNT: distinct self-signed public certificates (CN "stress w<p> c<i>", serial
 * p * 1000 + i) of one P-256 key. Faster than one openssl process per certificate.
 */
#include <stdio.h>
#include <stdlib.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

static int one(EVP_PKEY *k, const char *dir, int p, int i)
{
  char cn[64], path[4096];
  snprintf(cn, sizeof cn, "stress w%d c%d", p, i);
  snprintf(path, sizeof path, "%s/w%d-c%d.pem", dir, p, i);
  X509 *x = X509_new();
  X509_NAME *nm = X509_NAME_new();
  FILE *f = NULL;
  int ok = x && nm &&
           X509_NAME_add_entry_by_txt(nm, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1,
                                      0) &&
           X509_set_version(x, 2) && ASN1_INTEGER_set(X509_get_serialNumber(x), p * 1000L + i) &&
           X509_set_subject_name(x, nm) && X509_set_issuer_name(x, nm) &&
           X509_gmtime_adj(X509_getm_notBefore(x), -3600) &&
           X509_gmtime_adj(X509_getm_notAfter(x), 86400L * 30) && X509_set_pubkey(x, k) &&
           X509_sign(x, k, EVP_sha256()) && (f = fopen(path, "w")) != NULL &&
           PEM_write_X509(f, x);
  if (f && fclose(f) != 0)
    ok = 0;
  X509_NAME_free(nm);
  X509_free(x);
  if (!ok)
    fprintf(stderr, "cannot write %s\n", path);
  return ok;
}

int main(int argc, char **argv)
{
  if (argc != 4) {
    fprintf(stderr, "usage: %s DIR WRITERS COUNT\n", argv[0]);
    return 1;
  }
  int w = atoi(argv[2]), n = atoi(argv[3]);
  EVP_PKEY *k = EVP_EC_gen("P-256");
  if (!k || w < 1 || n < 1)
    return 1;
  for (int p = 1; p <= w; p++)
    for (int i = 1; i <= n; i++)
      if (!one(k, argv[1], p, i)) {
        EVP_PKEY_free(k);
        return 1;
      }
  EVP_PKEY_free(k);
  return 0;
}
