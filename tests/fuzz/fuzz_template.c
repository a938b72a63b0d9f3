/*
 * Fuzz target: attribute templates through the module's function list
 * (C_GetFunctionList, linked statically from kvp11_front), the way an
 * application passes them: C_FindObjectsInit / C_FindObjects /
 * C_FindObjectsFinal with a fuzzed search template, then C_GetAttributeValue
 * with a fuzzed template on every object found, on a fixed object and on a
 * fuzzed handle.
 *
 * Set up once per process (LLVMFuzzerInitialize) under $TMPDIR (or /tmp): a
 * kvp11.conf with one account and a registry holding one public certificate
 * (so the token has a certificate and a public key object).
 *
 * Input encoding (each read past the end gives 0):
 *   u8 n_find (mod 9), then n_find times: TYPE, u8 mode (mod 4):
 *     0: u8 len (mod 80) and len value bytes   1: pValue NULL, len 0
 *     2: pValue NULL, len u8+1                 3: a CK_ULONG value (8 bytes)
 *   u8 max_objects (mod 17) for C_FindObjects
 *   u8 n_get (mod 13), then n_get times: TYPE, u8 mode (mod 4):
 *     0: pValue NULL, len u8 (a size query)    1: buffer of exactly u8 bytes
 *     2: buffer of 2048 bytes                  3: buffer of u8 (mod 16) bytes
 *   u32 a raw object handle
 *   TYPE: u8 index into the table below; 255 reads a raw u32 type.
 * Buffers are malloc'd to their exact length, so ASan sees any overrun.
 *
 * Oracles (PKCS#11 3.0, 5.7 C_GetAttributeValue): a returned length is never
 * larger than the buffer given; CKR_OK means every attribute was returned.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/x509.h>
#include <p11-kit/pkcs11.h>

#include "core/cert.h"
#include "core/registry.h"
#include "core/util.h"
#include "fuzz_common.h"

/* 1: the search template may carry pValue == NULL with a non-zero length. */
#ifndef FUZZ_TEMPLATE_NULL_VALUES
#define FUZZ_TEMPLATE_NULL_VALUES 1
#endif

#define MAX_ATTRS 13
#define MAX_FOUND 16

static const CK_ATTRIBUTE_TYPE types[] = {
  CKA_CLASS, CKA_TOKEN, CKA_PRIVATE, CKA_LABEL, CKA_APPLICATION, CKA_VALUE, CKA_OBJECT_ID,
  CKA_CERTIFICATE_TYPE, CKA_ISSUER, CKA_SERIAL_NUMBER, CKA_AC_ISSUER, CKA_OWNER, CKA_ATTR_TYPES,
  CKA_TRUSTED, CKA_CERTIFICATE_CATEGORY, CKA_JAVA_MIDP_SECURITY_DOMAIN, CKA_URL,
  CKA_HASH_OF_SUBJECT_PUBLIC_KEY, CKA_HASH_OF_ISSUER_PUBLIC_KEY, CKA_NAME_HASH_ALGORITHM,
  CKA_CHECK_VALUE, CKA_KEY_TYPE, CKA_SUBJECT, CKA_ID, CKA_SENSITIVE, CKA_ENCRYPT, CKA_DECRYPT,
  CKA_WRAP, CKA_UNWRAP, CKA_SIGN, CKA_SIGN_RECOVER, CKA_VERIFY, CKA_VERIFY_RECOVER, CKA_DERIVE,
  CKA_START_DATE, CKA_END_DATE, CKA_MODULUS, CKA_MODULUS_BITS, CKA_PUBLIC_EXPONENT,
  CKA_PRIVATE_EXPONENT, CKA_PRIME_1, CKA_PRIME_2, CKA_EXPONENT_1, CKA_EXPONENT_2, CKA_COEFFICIENT,
  CKA_PUBLIC_KEY_INFO, CKA_VALUE_LEN, CKA_EXTRACTABLE, CKA_LOCAL, CKA_NEVER_EXTRACTABLE,
  CKA_ALWAYS_SENSITIVE, CKA_KEY_GEN_MECHANISM, CKA_MODIFIABLE, CKA_COPYABLE, CKA_DESTROYABLE,
  CKA_EC_PARAMS, CKA_EC_POINT, CKA_ALWAYS_AUTHENTICATE, CKA_WRAP_WITH_TRUSTED, CKA_WRAP_TEMPLATE,
  CKA_UNWRAP_TEMPLATE, CKA_DERIVE_TEMPLATE, CKA_ALLOWED_MECHANISMS, CKA_VENDOR_DEFINED,
};
#define T_CLASS 0
#define T_LABEL 3
#define T_VALUE 5
#define T_ID 23
#define T_MODULUS 36

static CK_FUNCTION_LIST_PTR f;
static CK_SESSION_HANDLE session;
static CK_OBJECT_HANDLE all_objects[MAX_FOUND];
static CK_ULONG n_all;
static char dir[512], conf[600], regpath[600];

/* ---- input reader ---- */
typedef struct {
  const uint8_t *p;
  size_t left;
} rd;

static uint8_t u8(rd *r)
{
  if (r->left == 0)
    return 0;
  r->left--;
  return *r->p++;
}

static uint32_t u32(rd *r)
{
  uint32_t v = 0;
  for (int i = 0; i < 4; i++)
    v = (v << 8) | u8(r);
  return v;
}

static void bytes(rd *r, unsigned char *out, size_t n)
{
  for (size_t i = 0; i < n; i++)
    out[i] = u8(r);
}

static CK_ATTRIBUTE_TYPE rd_type(rd *r)
{
  uint8_t t = u8(r);
  if (t == 255)
    return (CK_ATTRIBUTE_TYPE)u32(r);
  return types[t % KVP_ARRAY_SIZE(types)];
}

/* Attributes whose value holds pointers (nested templates). */
static int holds_pointers(CK_ATTRIBUTE_TYPE t)
{
  return (t & CKF_ARRAY_ATTRIBUTE) != 0 && t != CKA_ALLOWED_MECHANISMS;
}

static void free_template(CK_ATTRIBUTE *t, CK_ULONG n)
{
  for (CK_ULONG i = 0; i < n; i++)
    free(t[i].pValue);
}

/* ---- setup ---- */
static void cleanup(void)
{
  static const char *const files[] = {"kvp11.conf", "registry.db", "registry.db-wal",
                                      "registry.db-shm", "registry.db-journal"};
  char path[700];
  if (f != NULL) {
    f->C_CloseAllSessions(0);
    f->C_Finalize(NULL);
    f = NULL;
  }
  if (dir[0] == '\0')
    return;
  for (size_t i = 0; i < KVP_ARRAY_SIZE(files); i++) {
    snprintf(path, sizeof(path), "%s/%s", dir, files[i]);
    unlink(path);
  }
  rmdir(dir);
}

static void __attribute__((noreturn)) die(const char *what)
{
  fprintf(stderr, "fuzz_template: setup failed: %s\n", what);
  exit(1);
}

static void register_cert(void)
{
  char err[KVP_ERRLEN];
  EVP_PKEY *pkey = EVP_RSA_gen(2048);
  X509 *x = X509_new();
  unsigned char *der = NULL;
  kvp_registry *reg = NULL;
  kvp_cert_rec rec;
  int n = 0;

  if (pkey == NULL || x == NULL)
    die("key");
  X509_set_version(x, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x), 4711);
  X509_gmtime_adj(X509_getm_notBefore(x), 0);
  X509_gmtime_adj(X509_getm_notAfter(x), 86400);
  X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
                             (const unsigned char *)"fuzz partner", -1, -1, 0);
  X509_set_issuer_name(x, X509_get_subject_name(x));
  X509_set_pubkey(x, pkey);
  if (X509_sign(x, pkey, EVP_sha256()) <= 0 || (n = i2d_X509(x, &der)) <= 0)
    die("certificate");
  memset(&rec, 0, sizeof(rec));
  if (kvp_cert_fill_rec(der, (size_t)n, &rec, err, sizeof(err)) != KVP_OK)
    die(err);
  rec.account = strdup("default");
  rec.name = strdup("partner");
  rec.type = KVP_CERT_PUBLIC;
  if (kvp_registry_open(regpath, 0, &reg, err, sizeof(err)) != KVP_OK ||
      kvp_registry_add(reg, &rec, 0, err, sizeof(err)) != KVP_OK)
    die(err);
  kvp_registry_close(reg);
  kvp_cert_rec_clear(&rec);
  OPENSSL_free(der);
  X509_free(x);
  EVP_PKEY_free(pkey);
}

static void setup(void)
{
  const char *tmp = getenv("TMPDIR");
  CK_SLOT_ID slots[4];
  CK_ULONG n = 4;
  FILE *fp;

  snprintf(dir, sizeof(dir), "%s/kvp11-fuzz-template.%d",
           tmp != NULL && tmp[0] != '\0' ? tmp : "/tmp", (int)getpid());
  snprintf(conf, sizeof(conf), "%s/kvp11.conf", dir);
  snprintf(regpath, sizeof(regpath), "%s/registry.db", dir);
  if (mkdir(dir, 0700) != 0)
    die(dir);
  atexit(cleanup);
  fp = fopen(conf, "w");
  if (fp == NULL)
    die(conf);
  fprintf(fp, "[global]\nregistry = %s\nlog_level = error\nlog_file = /dev/null\n\n"
          "[account default]\nlabel = fuzz\n",
          regpath);
  fclose(fp);
  register_cert();
  setenv("KVP11_CONF", conf, 1);

  if (C_GetFunctionList(&f) != CKR_OK || f->C_Initialize(NULL) != CKR_OK)
    die("C_Initialize");
  if (f->C_GetSlotList(CK_TRUE, slots, &n) != CKR_OK || n < 1)
    die("C_GetSlotList");
  if (f->C_OpenSession(slots[0], CKF_SERIAL_SESSION, NULL, NULL, &session) != CKR_OK)
    die("C_OpenSession");
  if (f->C_FindObjectsInit(session, NULL, 0) != CKR_OK ||
      f->C_FindObjects(session, all_objects, MAX_FOUND, &n_all) != CKR_OK ||
      f->C_FindObjectsFinal(session) != CKR_OK)
    die("C_FindObjects");
  if (n_all < 2)
    die("the certificate and its public key are not both visible");
}

/* ---- seeds ---- */
typedef struct {
  unsigned char b[512];
  size_t n;
} sbuf;

static void put(sbuf *s, int v)
{
  if (s->n < sizeof(s->b))
    s->b[s->n++] = (unsigned char)v;
}

static void put_ulong(sbuf *s, CK_ULONG v)
{
  unsigned char raw[sizeof(CK_ULONG)];
  memcpy(raw, &v, sizeof(v));
  for (size_t i = 0; i < sizeof(raw); i++)
    put(s, raw[i]);
}

/* get template: every table entry in one mode */
static void put_get_all(sbuf *s, int mode, int len, size_t from)
{
  put(s, MAX_ATTRS - 1);
  for (size_t i = 0; i < MAX_ATTRS - 1; i++) {
    put(s, (int)((from + i) % KVP_ARRAY_SIZE(types)));
    put(s, mode);
    if (mode != 2)
      put(s, len);
  }
}

static void write_seeds(const char *d)
{
  char name[64];
  int k = 0;
  for (size_t from = 0; from < KVP_ARRAY_SIZE(types); from += MAX_ATTRS - 1) {
    for (int mode = 0; mode < 4; mode++) {
      sbuf s = {{0}, 0};
      int find = (k++) % 4;
      if (find == 0) {
        put(&s, 0); /* everything */
      } else if (find == 1) {
        put(&s, 1); /* CKA_CLASS = CKO_CERTIFICATE */
        put(&s, T_CLASS);
        put(&s, 3);
        put_ulong(&s, CKO_CERTIFICATE);
      } else if (find == 2) {
        put(&s, 2); /* CKA_CLASS = CKO_PUBLIC_KEY, CKA_LABEL = "partner" */
        put(&s, T_CLASS);
        put(&s, 3);
        put_ulong(&s, CKO_PUBLIC_KEY);
        put(&s, T_LABEL);
        put(&s, 0);
        put(&s, 7);
        for (const char *c = "partner"; *c; c++)
          put(&s, *c);
      } else {
        put(&s, 2); /* CKA_ID with no value, CKA_VALUE empty */
        put(&s, T_ID);
        put(&s, 1);
        put(&s, T_VALUE);
        put(&s, 0);
        put(&s, 0);
      }
      put(&s, 16);
      put_get_all(&s, mode, mode == 1 ? 4 : 200, from);
      put(&s, 0);
      put(&s, 0);
      put(&s, 0);
      put(&s, 1);
      snprintf(name, sizeof(name), "tmpl-%zu-%d", from, mode);
      if (fuzz_seed(d, name, s.b, s.n) != 0)
        exit(1);
    }
  }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
  const char *d = fuzz_seed_dir();
  if (d != NULL) {
    write_seeds(d);
    exit(0);
  }
  setup();
  return 0;
}

/* ---- one input ---- */
static void get_attributes(CK_OBJECT_HANDLE h, rd *tmpl_in)
{
  CK_ATTRIBUTE t[MAX_ATTRS];
  CK_ULONG given[MAX_ATTRS];
  rd r = *tmpl_in; /* every object sees the same template */
  CK_ULONG n = u8(&r) % (MAX_ATTRS + 1);
  CK_RV rv;

  for (CK_ULONG i = 0; i < n; i++) {
    CK_ULONG len;
    t[i].type = rd_type(&r);
    switch (u8(&r) % 4) {
    case 0:
      len = u8(&r);
      t[i].pValue = NULL;
      break;
    case 1:
      len = u8(&r);
      t[i].pValue = malloc(len > 0 ? len : 1);
      break;
    case 2:
      len = 2048;
      t[i].pValue = malloc(len);
      break;
    default:
      len = u8(&r) % 16;
      t[i].pValue = malloc(len > 0 ? len : 1);
      break;
    }
    if (holds_pointers(t[i].type)) {
      free(t[i].pValue);
      t[i].pValue = NULL;
    }
    t[i].ulValueLen = given[i] = len;
  }
  rv = f->C_GetAttributeValue(session, h, n > 0 ? t : NULL, n);
  for (CK_ULONG i = 0; i < n && rv != CKR_OBJECT_HANDLE_INVALID && rv != CKR_ARGUMENTS_BAD; i++) {
    if (t[i].pValue != NULL && t[i].ulValueLen != CK_UNAVAILABLE_INFORMATION)
      FUZZ_CHECK(t[i].ulValueLen <= given[i]);
    if (rv == CKR_OK)
      FUZZ_CHECK(t[i].ulValueLen != CK_UNAVAILABLE_INFORMATION);
  }
  free_template(t, n);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  rd r = {data, size}, get_in;
  CK_ATTRIBUTE t[8];
  CK_OBJECT_HANDLE found[MAX_FOUND];
  CK_ULONG n = u8(&r) % 9, count = 0, max;
  CK_RV rv;

  for (CK_ULONG i = 0; i < n; i++) {
    int mode;
    t[i].type = rd_type(&r);
    mode = u8(&r) % 4;
    if (holds_pointers(t[i].type) || (mode == 2 && !FUZZ_TEMPLATE_NULL_VALUES))
      mode = 1;
    switch (mode) {
    case 0:
      t[i].ulValueLen = u8(&r) % 80;
      t[i].pValue = malloc(t[i].ulValueLen > 0 ? t[i].ulValueLen : 1);
      if (t[i].pValue != NULL)
        bytes(&r, t[i].pValue, t[i].ulValueLen);
      break;
    case 1:
      t[i].pValue = NULL;
      t[i].ulValueLen = 0;
      break;
    case 2:
      t[i].pValue = NULL;
      t[i].ulValueLen = (CK_ULONG)u8(&r) + 1;
      break;
    default:
      t[i].ulValueLen = sizeof(CK_ULONG);
      t[i].pValue = malloc(sizeof(CK_ULONG));
      if (t[i].pValue != NULL)
        bytes(&r, t[i].pValue, sizeof(CK_ULONG));
      break;
    }
  }
  max = u8(&r) % (MAX_FOUND + 1);

  rv = f->C_FindObjectsInit(session, n > 0 ? t : NULL, n);
  free_template(t, n); /* the module must not keep pointers into it */
  if (rv == CKR_OK) {
    rv = f->C_FindObjects(session, found, max, &count);
    if (rv == CKR_OK)
      FUZZ_CHECK(count <= max);
    else
      count = 0;
    FUZZ_CHECK(f->C_FindObjectsFinal(session) == CKR_OK);
  }

  get_in = r;
  {
    /* skip the get template to reach the raw handle */
    CK_ULONG g = u8(&r) % (MAX_ATTRS + 1);
    for (CK_ULONG i = 0; i < g; i++) {
      (void)rd_type(&r);
      if (u8(&r) % 4 != 2)
        (void)u8(&r);
    }
  }
  for (CK_ULONG i = 0; i < count; i++)
    get_attributes(found[i], &get_in);
  get_attributes(all_objects[size % n_all], &get_in);
  get_attributes((CK_OBJECT_HANDLE)u32(&r), &get_in);
  return 0;
}
