/* What the front's unit tests share (front_util.h). */
#include "front_util.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CUnit/CUnit.h>
#include <openssl/x509.h>

#include "core/cert.h"
#include "core/util.h"

int front_test_dir(const char *tag, char *dir, size_t size)
{
  const char *tmp = getenv("KVP11_TEST_TMP");
  mkdir(tmp ? tmp : "/tmp", 0755);
  snprintf(dir, size, "%s/%s.%d", tmp ? tmp : "/tmp", tag, (int)getpid());
  return mkdir(dir, 0700) == 0 ? 0 : -1;
}

/* Writes dir/name from fmt and ap; the path into path. 0, or -1. */
static int write_in(const char *dir, const char *name, char *path, size_t size, const char *fmt,
                    va_list ap)
{
  FILE *fp;
  snprintf(path, size, "%s/%s", dir, name);
  fp = fopen(path, "w");
  if (fp == NULL)
    return -1;
  int ok = vfprintf(fp, fmt, ap) >= 0;
  return fclose(fp) == 0 && ok ? 0 : -1;
}

static int write_file(const char *dir, const char *name, char *path, size_t size, const char *fmt,
                      ...) __attribute__((format(printf, 5, 6)));
static int write_file(const char *dir, const char *name, char *path, size_t size, const char *fmt,
                      ...)
{
  va_list ap;
  va_start(ap, fmt);
  int rc = write_in(dir, name, path, size, fmt, ap);
  va_end(ap);
  return rc;
}

int front_write_conf(const char *dir, char *path, size_t size, const char *fmt, ...)
{
  char own[600];
  va_list ap;
  if (path == NULL) {
    path = own;
    size = sizeof(own);
  }
  va_start(ap, fmt);
  int rc = write_in(dir, "kvp11.conf", path, size, fmt, ap);
  va_end(ap);
  if (rc == 0)
    setenv("KVP11_CONF", path, 1);
  return rc;
}

int front_softhsm_conf(const char *dir)
{
  char path[600];
  if (write_file(dir, "softhsm2.conf", path, sizeof(path),
                 "directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n",
                 dir) != 0)
    return -1;
  setenv("SOFTHSM2_CONF", path, 1);
  return 0;
}

unsigned char *front_cert(EVP_PKEY *pub, const char *cn, long serial, EVP_PKEY *ca, size_t *len)
{
  EVP_PKEY *own = ca == NULL ? EVP_EC_gen("P-256") : NULL;
  X509 *x = X509_new();
  unsigned char *der = NULL;
  int n = 0;

  *len = 0;
  if (x != NULL && (ca != NULL || own != NULL)) {
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), serial);
    X509_gmtime_adj(X509_getm_notBefore(x), 0);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400);
    X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
                               (const unsigned char *)cn, -1, -1, 0);
    X509_NAME_add_entry_by_txt(X509_get_issuer_name(x), "CN", MBSTRING_ASC,
                               (const unsigned char *)"Test CA", -1, -1, 0);
    X509_set_pubkey(x, pub);
    if (X509_sign(x, ca != NULL ? ca : own, EVP_sha256()) > 0)
      n = i2d_X509(x, &der);
  }
  *len = n > 0 ? (size_t)n : 0;
  X509_free(x);
  EVP_PKEY_free(own);
  return n > 0 ? der : NULL;
}

int front_row(const unsigned char *der, size_t len, const char *account, const char *name,
              kvp_cert_type type, const char *key_ref, kvp_cert_rec *rec)
{
  char err[KVP_ERRLEN];
  memset(rec, 0, sizeof(*rec));
  int rc = kvp_cert_fill_rec(der, len, rec, err, sizeof(err));
  if (rc != KVP_OK)
    return rc;
  rec->account = strdup(account);
  rec->name = strdup(name);
  rec->type = type;
  rec->key_ref = key_ref != NULL ? strdup(key_ref) : NULL;
  return KVP_OK;
}

int front_add_row(const char *path, const kvp_cert_rec *rec)
{
  char err[KVP_ERRLEN];
  kvp_registry *reg = NULL;
  int ok = kvp_registry_open(path, 0, &reg, err, sizeof(err)) == KVP_OK &&
           kvp_registry_add(reg, rec, 0, err, sizeof(err)) == KVP_OK;
  if (reg != NULL)
    kvp_registry_close(reg);
  return ok;
}

void front_register_row(const char *path, const kvp_cert_rec *rec)
{
  char err[KVP_ERRLEN];
  kvp_registry *reg = NULL;
  CU_ASSERT_EQUAL_FATAL(kvp_registry_open(path, 0, &reg, err, sizeof(err)), KVP_OK);
  CU_ASSERT_EQUAL(kvp_registry_add(reg, rec, 0, err, sizeof(err)), KVP_OK);
  kvp_registry_close(reg);
}

void front_unregister_row(const char *path, const char *account, const char *name)
{
  char err[KVP_ERRLEN];
  kvp_registry *reg = NULL;
  CU_ASSERT_EQUAL_FATAL(kvp_registry_open(path, 0, &reg, err, sizeof(err)), KVP_OK);
  CU_ASSERT_EQUAL(kvp_registry_remove(reg, account, name, err, sizeof(err)), KVP_OK);
  kvp_registry_close(reg);
}

CK_ULONG front_find(CK_FUNCTION_LIST_PTR f, CK_SESSION_HANDLE s, CK_ATTRIBUTE *tmpl, CK_ULONG n,
                    CK_OBJECT_HANDLE *out, CK_ULONG max)
{
  CK_ULONG count = 0;
  CU_ASSERT_EQUAL_FATAL(f->C_FindObjectsInit(s, tmpl, n), CKR_OK);
  CU_ASSERT_EQUAL(f->C_FindObjects(s, out, max, &count), CKR_OK);
  CU_ASSERT_EQUAL(f->C_FindObjectsFinal(s), CKR_OK);
  return count;
}
