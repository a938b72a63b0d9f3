/*
 * kvp11-sessobj-probe: what N session certificates cost a search
 * (tests/bench/sessobj.sh, docs/performance.md "Session objects").
 *
 *   kvp11-sessobj-probe MODULE TOKEN N [REPEAT]
 *
 * Loads MODULE with dlopen, opens a R/O session on the token labelled TOKEN
 * and makes N session certificates there (C_CreateObject, CKA_TOKEN false,
 * one P-256 certificate under N labels). Then, REPEAT times (default 3):
 *   find1    C_FindObjectsInit(CKO_CERTIFICATE) + C_FindObjects one handle a
 *            call until none + C_FindObjectsFinal
 *   find100  the same, 100 handles a call
 *   getattr  C_GetAttributeValue(CKA_LABEL) of every handle found
 * Prints create_ms (all N creations) and the best of REPEAT for each, in ms,
 * as key=value lines. Exits 1 when a search does not find the N certificates.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/x509.h>
#include <p11-kit/pkcs11.h>

#define PROBE_NAME "kvp11-sessobj-probe"
#include "probe_util.h"

static CK_FUNCTION_LIST_PTR f;

static void die_unless(const char *what, CK_RV rv)
{
  if (rv != CKR_OK)
    die(what, rv);
}

/* A self-signed P-256 certificate, DER. */
static unsigned char *make_cert(int *len)
{
  EVP_PKEY *k = EVP_EC_gen("P-256");
  X509 *x = X509_new();
  unsigned char *der = NULL;

  X509_set_version(x, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
  X509_gmtime_adj(X509_getm_notBefore(x), 0);
  X509_gmtime_adj(X509_getm_notAfter(x), 86400);
  X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
                             (const unsigned char *)"session partner", -1, -1, 0);
  X509_set_issuer_name(x, X509_get_subject_name(x));
  X509_set_pubkey(x, k);
  X509_sign(x, k, EVP_sha256());
  *len = i2d_X509(x, &der);
  X509_free(x);
  EVP_PKEY_free(k);
  if (*len <= 0) {
    fprintf(stderr, "kvp11-sessobj-probe: cannot make a certificate\n");
    exit(1);
  }
  return der;
}

/* One search over every session certificate, batch handles a call, into out. */
static CK_ULONG find_all(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE *out, CK_ULONG cap, CK_ULONG batch)
{
  CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
  CK_ATTRIBUTE t = {CKA_CLASS, &cls, sizeof(cls)};
  CK_ULONG total = 0, got;

  die_unless("C_FindObjectsInit", f->C_FindObjectsInit(s, &t, 1));
  do {
    got = 0;
    die_unless("C_FindObjects",
          f->C_FindObjects(s, out + total, cap - total < batch ? cap - total : batch, &got));
    total += got;
  } while (got > 0 && total < cap);
  die_unless("C_FindObjectsFinal", f->C_FindObjectsFinal(s));
  return total;
}

int main(int argc, char **argv)
{
  CK_C_GetFunctionList gfl = NULL;
  void *h, *sym;
  CK_SESSION_HANDLE s;
  CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
  CK_CERTIFICATE_TYPE x509 = CKC_X_509;
  CK_BBOOL no = CK_FALSE;
  CK_OBJECT_HANDLE *found, obj;
  unsigned char *der;
  char label[32];
  int der_len, n, repeat;
  double t0, create, best[3] = {1e18, 1e18, 1e18};

  if (argc < 4 || (n = atoi(argv[3])) <= 0) {
    fprintf(stderr, "usage: kvp11-sessobj-probe MODULE TOKEN N [REPEAT]\n");
    return 2;
  }
  repeat = argc > 4 ? atoi(argv[4]) : 3;
  h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  sym = h != NULL ? dlsym(h, "C_GetFunctionList") : NULL;
  memcpy(&gfl, &sym, sizeof(gfl));
  if (gfl == NULL || gfl(&f) != CKR_OK) {
    fprintf(stderr, "kvp11-sessobj-probe: %s: no usable C_GetFunctionList\n", argv[1]);
    return 1;
  }
  die_unless("C_Initialize", f->C_Initialize(NULL));
  die_unless("C_OpenSession", f->C_OpenSession(token_slot(f, argv[2]), CKF_SERIAL_SESSION, NULL, NULL, &s));
  der = make_cert(&der_len);
  found = calloc((size_t)n + 1, sizeof(*found));
  if (found == NULL)
    return 1;

  t0 = now_ms();
  for (int i = 0; i < n; i++) {
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &cls, sizeof(cls)},       {CKA_CERTIFICATE_TYPE, &x509, sizeof(x509)},
        {CKA_TOKEN, &no, sizeof(no)},         {CKA_LABEL, label, 0},
        {CKA_VALUE, der, (CK_ULONG)der_len},
    };
    t[3].ulValueLen = (CK_ULONG)snprintf(label, sizeof(label), "sess%06d", i);
    die_unless("C_CreateObject", f->C_CreateObject(s, t, 5, &obj));
  }
  create = now_ms() - t0;

  for (int r = 0; r < repeat; r++) {
    for (int b = 0; b < 2; b++) {
      CK_ULONG got;
      t0 = now_ms();
      got = find_all(s, found, (CK_ULONG)n + 1, b == 0 ? 1 : 100);
      t0 = now_ms() - t0;
      if (got != (CK_ULONG)n) {
        fprintf(stderr, "kvp11-sessobj-probe: found %lu of %d certificates\n", got, n);
        return 1;
      }
      if (t0 < best[b])
        best[b] = t0;
    }
    t0 = now_ms();
    for (int i = 0; i < n; i++) {
      CK_ATTRIBUTE a = {CKA_LABEL, label, sizeof(label)};
      die_unless("C_GetAttributeValue", f->C_GetAttributeValue(s, found[i], &a, 1));
    }
    t0 = now_ms() - t0;
    if (t0 < best[2])
      best[2] = t0;
  }
  printf("n=%d\ncreate_ms=%.1f\nfind1_ms=%.1f\nfind100_ms=%.1f\ngetattr_ms=%.1f\n", n, create,
         best[0], best[1], best[2]);
  f->C_CloseSession(s);
  f->C_Finalize(NULL);
  OPENSSL_free(der);
  free(found);
  return 0;
}
