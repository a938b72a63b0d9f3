/*
 * What every entry point promises, whatever the key store answers:
 *  - only return codes PKCS#11 v2.40 allows for the function: a key store's
 *    failures are driven through C_Login, C_SignInit, C_Sign, C_SignFinal,
 *    C_DecryptInit, C_Decrypt and C_DecryptFinal by a fake backend put in
 *    place of the configured HSM's functions, and each answer is checked
 *    against the function's list from the specification (written out here,
 *    independently of the module's table); a mapped code keeps its original
 *    as the reason (kvp_status_reason);
 *  - C_GenerateRandom fills requests longer than INT_MAX bytes;
 *  - a forked child's C_Initialize abandons the parent's SQLite connection
 *    instead of closing it (sqlite3_close* is interposed and counted);
 *  - NSS's routine C_CreateObject of a trust object is not logged at ERROR.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <limits.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CUnit/Basic.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "core/cert.h"
#include "core/registry.h"
#include "core/status.h"
#include "core/util.h"
#include "pkcs11/internal.h"

#include <p11-kit/pkcs11x.h>

#include "front_util.h"
#include "unit_util.h"

static char dir[512];
static CK_FUNCTION_LIST_PTR f;
static EVP_PKEY *key;

/* ---- sqlite3_close interposed: the fork test counts the closes -------- */

static int closes;

typedef int (*close_fn)(sqlite3 *);

static int call_real(const char *name, sqlite3 *db)
{
  void *sym = dlsym(RTLD_NEXT, name);
  close_fn real;
  memcpy(&real, &sym, sizeof(real)); /* object pointer -> function pointer, ISO C safe */
  closes += db != NULL;                /* the registry also "closes" NULL before opening */
  return real(db);
}

int sqlite3_close_v2(sqlite3 *db)
{
  return call_real("sqlite3_close_v2", db);
}

int sqlite3_close(sqlite3 *db)
{
  return call_real("sqlite3_close", db);
}

/* ---- the fake key store ------------------------------------------------ */

static const kvp_backend_ops *real_ops;
static kvp_backend_ops fake;
static CK_RV open_rv, sign_rv, decrypt_rv, login_rv;

static CK_RV fake_open(kvp_backend *be, const char *name, kvp_key **out)
{
  kvp_key *k;
  if (open_rv != CKR_OK)
    return open_rv;
  k = calloc(1, sizeof(*k));
  k->backend = be;
  k->name = strdup(name);
  EVP_PKEY_up_ref(key);
  k->pub = key;
  k->type = KVP_KEY_RSA;
  k->bits = 2048;
  k->can_sign = k->can_decrypt = k->private_obj = 1;
  *out = k;
  return CKR_OK;
}

static void fake_close(kvp_backend *be, kvp_key *k)
{
  (void)be;
  EVP_PKEY_free(k->pub);
  free(k->name);
  free(k);
}

static CK_RV fake_sign(kvp_backend *be, kvp_key *k, const kvp_sig_alg *alg, const CK_BYTE *d,
                       CK_ULONG dl, CK_BYTE *sig, CK_ULONG *sl)
{
  (void)be, (void)k, (void)alg, (void)d, (void)dl;
  memset(sig, 1, 256);
  *sl = 256;
  return sign_rv;
}

static CK_RV fake_decrypt(kvp_backend *be, kvp_key *k, const kvp_dec_alg *alg, const CK_BYTE *in,
                          CK_ULONG il, CK_BYTE *out, CK_ULONG *ol)
{
  (void)be, (void)k, (void)alg, (void)in, (void)il;
  memcpy(out, "plain", 5);
  *ol = 5;
  return decrypt_rv;
}

static int fake_needs_login(kvp_backend *be)
{
  (void)be;
  return 1;
}

static CK_RV fake_login(kvp_backend *be, const CK_UTF8CHAR *pin, CK_ULONG len)
{
  (void)be, (void)pin, (void)len;
  return login_rv;
}

static CK_RV fake_logout(kvp_backend *be)
{
  (void)be;
  return CKR_OK;
}

static void fake_destroy(kvp_backend *be, int forked)
{
  real_ops->destroy(be, forked);
}

/* After C_Initialize: the configured HSM answers through the fake functions. */
static void install_fake(void)
{
  kvp_backend *be;
  CU_ASSERT_FATAL(kvp_g.n_backends == 1);
  be = kvp_g.backends[0];
  real_ops = be->ops;
  fake = *real_ops;
  fake.open_key = fake_open;
  fake.open_key_hint = NULL; /* the HSM backend has one: the front must reach fake_open */
  fake.close_key = fake_close;
  fake.sign = fake_sign;
  fake.decrypt = fake_decrypt;
  fake.needs_login = fake_needs_login;
  fake.login = fake_login;
  fake.logout = fake_logout;
  fake.destroy = fake_destroy;
  be->ops = &fake;
  open_rv = sign_rv = decrypt_rv = login_rv = CKR_OK;
}

/* ---- set-up ------------------------------------------------------------ */

/* The registry row of "app": an RSA key the fake key store stands for. */
static int register_cert(void)
{
  char path[600];
  kvp_cert_rec rec;
  size_t len = 0;
  unsigned char *der;
  int ok;

  memset(&rec, 0, sizeof(rec));
  key = EVP_RSA_gen(2048);
  if (key == NULL)
    return 0;
  der = front_cert(key, "entry", 9, key, &len);
  snprintf(path, sizeof(path), "%s/registry.db", dir);
  ok = der != NULL &&
       front_row(der, len, "default", "app", KVP_CERT_PRIVATE, "hsm:fake/app", &rec) == KVP_OK &&
       front_add_row(path, &rec);
  kvp_cert_rec_clear(&rec);
  OPENSSL_free(der);
  return ok;
}

static int suite_init(void)
{
  if (front_test_dir("front_entry", dir, sizeof(dir)) != 0 || !register_cert())
    return 1;
  /* the module is never loaded: the fake functions stand in for the HSM's */
  if (front_write_conf(dir, NULL, 0,
                       "[global]\nregistry = %s/registry.db\nlog_level = info\n"
                       "log_file = %s/kvp11.log\n\n"
                       "[hsm fake]\nmodule = /nonexistent/libfake-hsm.so\ntoken_label = fake\n\n"
                       "[account default]\n",
                       dir, dir) != 0)
    return 1;
  return C_GetFunctionList(&f) == CKR_OK ? 0 : 1;
}

/* ---- return codes -------------------------------------------------------- */

#define L(...) ((const CK_RV[]){__VA_ARGS__, (CK_RV)-1})
/* PKCS#11 v2.40 section 5: the return values listed for each function. */
static const CK_RV *const spec_login =
    L(CKR_ARGUMENTS_BAD, CKR_CRYPTOKI_NOT_INITIALIZED, CKR_DEVICE_ERROR, CKR_DEVICE_MEMORY,
      CKR_DEVICE_REMOVED, CKR_FUNCTION_CANCELED, CKR_FUNCTION_FAILED, CKR_GENERAL_ERROR,
      CKR_HOST_MEMORY, CKR_OK, CKR_OPERATION_NOT_INITIALIZED, CKR_PIN_INCORRECT, CKR_PIN_LOCKED,
      CKR_SESSION_CLOSED, CKR_SESSION_HANDLE_INVALID, CKR_SESSION_READ_ONLY_EXISTS,
      CKR_USER_ALREADY_LOGGED_IN, CKR_USER_ANOTHER_ALREADY_LOGGED_IN,
      CKR_USER_PIN_NOT_INITIALIZED, CKR_USER_TOO_MANY_TYPES, CKR_USER_TYPE_INVALID);
static const CK_RV *const spec_init =
    L(CKR_ARGUMENTS_BAD, CKR_CRYPTOKI_NOT_INITIALIZED, CKR_DEVICE_ERROR, CKR_DEVICE_MEMORY,
      CKR_DEVICE_REMOVED, CKR_FUNCTION_CANCELED, CKR_FUNCTION_FAILED, CKR_GENERAL_ERROR,
      CKR_HOST_MEMORY, CKR_KEY_FUNCTION_NOT_PERMITTED, CKR_KEY_HANDLE_INVALID,
      CKR_KEY_SIZE_RANGE, CKR_KEY_TYPE_INCONSISTENT, CKR_MECHANISM_INVALID,
      CKR_MECHANISM_PARAM_INVALID, CKR_OK, CKR_OPERATION_ACTIVE, CKR_PIN_EXPIRED,
      CKR_SESSION_CLOSED, CKR_SESSION_HANDLE_INVALID, CKR_USER_NOT_LOGGED_IN);
/* kvp11 adds CKR_OPERATION_ACTIVE to the single-part and final calls: mixed single- and
 * multi-part steps (docs/conformance.md). */
static const CK_RV *const spec_sign =
    L(CKR_ARGUMENTS_BAD, CKR_BUFFER_TOO_SMALL, CKR_CRYPTOKI_NOT_INITIALIZED, CKR_DATA_INVALID,
      CKR_DATA_LEN_RANGE, CKR_DEVICE_ERROR, CKR_DEVICE_MEMORY, CKR_DEVICE_REMOVED,
      CKR_FUNCTION_CANCELED, CKR_FUNCTION_FAILED, CKR_GENERAL_ERROR, CKR_HOST_MEMORY, CKR_OK,
      CKR_OPERATION_NOT_INITIALIZED, CKR_SESSION_CLOSED, CKR_SESSION_HANDLE_INVALID,
      CKR_USER_NOT_LOGGED_IN, CKR_FUNCTION_REJECTED, CKR_OPERATION_ACTIVE);
static const CK_RV *const spec_decrypt =
    L(CKR_ARGUMENTS_BAD, CKR_BUFFER_TOO_SMALL, CKR_CRYPTOKI_NOT_INITIALIZED, CKR_DEVICE_ERROR,
      CKR_DEVICE_MEMORY, CKR_DEVICE_REMOVED, CKR_ENCRYPTED_DATA_INVALID,
      CKR_ENCRYPTED_DATA_LEN_RANGE, CKR_FUNCTION_CANCELED, CKR_FUNCTION_FAILED,
      CKR_GENERAL_ERROR, CKR_HOST_MEMORY, CKR_OK, CKR_OPERATION_NOT_INITIALIZED,
      CKR_SESSION_CLOSED, CKR_SESSION_HANDLE_INVALID, CKR_USER_NOT_LOGGED_IN,
      CKR_OPERATION_ACTIVE);

/* What key stores answer: PIN trouble of a configured PIN, a vanished key, HSM trouble. */
static const CK_RV store_failures[] = {
    CKR_PIN_INCORRECT,   CKR_PIN_LOCKED,      CKR_PIN_EXPIRED,       CKR_PIN_LEN_RANGE,
    CKR_USER_NOT_LOGGED_IN, CKR_KEY_HANDLE_INVALID, CKR_DEVICE_ERROR, CKR_FUNCTION_FAILED,
    CKR_DATA_INVALID,    CKR_DATA_LEN_RANGE,  CKR_ENCRYPTED_DATA_INVALID, CKR_TOKEN_NOT_PRESENT,
    CKR_KEY_FUNCTION_NOT_PERMITTED, CKR_MECHANISM_INVALID, CKR_OPERATION_ACTIVE,
};

static int in_list(const CK_RV *list, CK_RV rv)
{
  for (; *list != (CK_RV)-1; list++)
    if (*list == rv)
      return 1;
  return 0;
}

/* rv is allowed for fn; when the store's code was replaced, the reason names it. */
static void check_rv(const char *fn, const CK_RV *spec, CK_RV store, CK_RV rv)
{
  char msg[200];
  snprintf(msg, sizeof(msg), "%s: the store's 0x%lx came back as 0x%lx", fn, (unsigned long)store,
           (unsigned long)rv);
  CU_ASSERT_FATAL(rv != CKR_OK); /* a failure stays a failure */
  if (!in_list(spec, rv))
    fprintf(stderr, "  not allowed: %s\n", msg);
  CU_ASSERT(in_list(spec, rv));
  if (rv != store)
    CU_ASSERT(kvp_status_reason() != NULL);
}

static CK_OBJECT_HANDLE private_key(CK_SESSION_HANDLE s)
{
  CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
  CK_ATTRIBUTE t = {CKA_CLASS, &cls, sizeof(cls)};
  CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
  CK_ULONG n = 0;
  CU_ASSERT_EQUAL_FATAL(f->C_FindObjectsInit(s, &t, 1), CKR_OK);
  CU_ASSERT_EQUAL(f->C_FindObjects(s, &h, 1, &n), CKR_OK);
  CU_ASSERT_EQUAL(f->C_FindObjectsFinal(s), CKR_OK);
  CU_ASSERT_EQUAL_FATAL(n, 1);
  return h;
}

static void test_store_failures(void)
{
  CK_SLOT_ID slot = 1;
  CK_SESSION_HANDLE s;
  CK_MECHANISM sha = {CKM_SHA256_RSA_PKCS, NULL, 0}, raw = {CKM_RSA_PKCS, NULL, 0};
  CK_BYTE out[512], ct[256];
  CK_ULONG len;
  CK_OBJECT_HANDLE priv;

  memset(ct, 7, sizeof(ct));
  CU_ASSERT_EQUAL_FATAL(f->C_Initialize(NULL), CKR_OK);
  install_fake();
  CU_ASSERT_EQUAL_FATAL(f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s), CKR_OK);

  /* C_Login: the store refuses */
  for (size_t i = 0; i < KVP_ARRAY_SIZE(store_failures); i++) {
    login_rv = store_failures[i];
    check_rv("C_Login", spec_login, login_rv, f->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR) "1", 1));
  }
  login_rv = CKR_PIN_LEN_RANGE;
  CU_ASSERT_EQUAL(f->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR) "1", 1), CKR_PIN_INCORRECT);
  login_rv = CKR_OK;
  CU_ASSERT_EQUAL_FATAL(f->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR) "1", 1), CKR_OK);
  priv = private_key(s);

  /* C_SignInit / C_DecryptInit: opening the key fails */
  for (size_t i = 0; i < KVP_ARRAY_SIZE(store_failures); i++) {
    open_rv = store_failures[i];
    check_rv("C_SignInit", spec_init, open_rv, f->C_SignInit(s, &sha, priv));
    check_rv("C_DecryptInit", spec_init, open_rv, f->C_DecryptInit(s, &raw, priv));
  }
  /* the case: a refused configured PIN is not a C_SignInit answer */
  open_rv = CKR_PIN_INCORRECT;
  CU_ASSERT_EQUAL(f->C_SignInit(s, &sha, priv), CKR_USER_NOT_LOGGED_IN);
  CU_ASSERT_PTR_NOT_NULL(kvp_status_reason());
  if (kvp_status_reason() != NULL)
    CU_ASSERT_PTR_NOT_NULL(strstr(kvp_status_reason(), "CKR_PIN_INCORRECT"));
  open_rv = CKR_OK;

  /* C_Sign, C_SignFinal, C_Decrypt, C_DecryptFinal: the operation fails in the store */
  for (size_t i = 0; i < KVP_ARRAY_SIZE(store_failures); i++) {
    sign_rv = decrypt_rv = store_failures[i];
    CU_ASSERT_EQUAL_FATAL(f->C_SignInit(s, &sha, priv), CKR_OK);
    len = sizeof(out);
    check_rv("C_Sign", spec_sign, sign_rv, f->C_Sign(s, (CK_BYTE_PTR) "edi", 3, out, &len));
    CU_ASSERT_EQUAL_FATAL(f->C_SignInit(s, &sha, priv), CKR_OK);
    CU_ASSERT_EQUAL(f->C_SignUpdate(s, (CK_BYTE_PTR) "edi", 3), CKR_OK);
    len = sizeof(out);
    check_rv("C_SignFinal", spec_sign, sign_rv, f->C_SignFinal(s, out, &len));
    CU_ASSERT_EQUAL_FATAL(f->C_DecryptInit(s, &raw, priv), CKR_OK);
    len = sizeof(out);
    check_rv("C_Decrypt", spec_decrypt, decrypt_rv, f->C_Decrypt(s, ct, sizeof(ct), out, &len));
    CU_ASSERT_EQUAL_FATAL(f->C_DecryptInit(s, &raw, priv), CKR_OK);
    len = sizeof(out);
    CU_ASSERT_EQUAL(f->C_DecryptUpdate(s, ct, sizeof(ct), out, &len), CKR_OK);
    len = sizeof(out);
    check_rv("C_DecryptFinal", spec_decrypt, decrypt_rv, f->C_DecryptFinal(s, out, &len));
  }
  sign_rv = CKR_PIN_EXPIRED;
  CU_ASSERT_EQUAL_FATAL(f->C_SignInit(s, &sha, priv), CKR_OK);
  len = sizeof(out);
  CU_ASSERT_EQUAL(f->C_Sign(s, (CK_BYTE_PTR) "edi", 3, out, &len), CKR_USER_NOT_LOGGED_IN);
  decrypt_rv = CKR_DATA_INVALID;
  CU_ASSERT_EQUAL_FATAL(f->C_DecryptInit(s, &raw, priv), CKR_OK);
  len = sizeof(out);
  CU_ASSERT_EQUAL(f->C_Decrypt(s, ct, sizeof(ct), out, &len), CKR_ENCRYPTED_DATA_INVALID);

  /* and when the store says yes, so does the module */
  sign_rv = decrypt_rv = CKR_OK;
  CU_ASSERT_EQUAL_FATAL(f->C_DecryptInit(s, &raw, priv), CKR_OK);
  len = sizeof(out);
  CU_ASSERT_EQUAL(f->C_Decrypt(s, ct, sizeof(ct), out, &len), CKR_OK);
  CU_ASSERT(len == 5 && memcmp(out, "plain", 5) == 0);
  CU_ASSERT_EQUAL(f->C_Finalize(NULL), CKR_OK);
}

/* ---- C_GenerateRandom beyond INT_MAX ---------------------------------- */

static void test_random_beyond_int_max(void)
{
  const CK_ULONG tail = 4096, len = (CK_ULONG)INT_MAX + 1 + tail;
  CK_SESSION_HANDLE s;
  unsigned char *buf;
  int nonzero = 0;

  buf = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1,
             0);
  if (buf == MAP_FAILED) {
    fprintf(stderr, "  (no room for a %lu-byte buffer: not run)\n", (unsigned long)len);
    return;
  }
  CU_ASSERT_EQUAL_FATAL(f->C_Initialize(NULL), CKR_OK);
  CU_ASSERT_EQUAL_FATAL(f->C_OpenSession(1, CKF_SERIAL_SESSION, NULL, NULL, &s), CKR_OK);
  CU_ASSERT_EQUAL(f->C_GenerateRandom(s, buf, len), CKR_OK);
  /* the last bytes, past 2^31, were written too (all zero by chance: 2^-32768) */
  for (CK_ULONG i = len - tail; i < len; i++)
    nonzero |= buf[i];
  CU_ASSERT(nonzero != 0);
  munmap(buf, len);
  CU_ASSERT_EQUAL(f->C_Finalize(NULL), CKR_OK);
}

/* ---- fork --------------------------------------------------------------- */

static void test_fork_abandons_registry(void)
{
  CK_SLOT_ID slots[4];
  CK_ULONG n = 4;
  int status = 0;
  pid_t pid;

  CU_ASSERT_EQUAL_FATAL(f->C_Initialize(NULL), CKR_OK);
  CU_ASSERT_EQUAL_FATAL(f->C_GetSlotList(CK_TRUE, slots, &n), CKR_OK); /* registry open */
  pid = fork();
  CU_ASSERT_FATAL(pid >= 0);
  if (pid == 0) {
    /* child: C_Initialize must not close the parent's connection */
    closes = 0;
    if (f->C_Initialize(NULL) != CKR_OK)
      _exit(2);
    _exit(closes == 0 ? 0 : 1);
  }
  CU_ASSERT_EQUAL(waitpid(pid, &status, 0), pid);
  CU_ASSERT(WIFEXITED(status));
  if (WIFEXITED(status) && WEXITSTATUS(status) == 1)
    fprintf(stderr, "  the child's C_Initialize closed the parent's SQLite connection\n");
  CU_ASSERT_EQUAL(WEXITSTATUS(status), 0);
  /* the parent's connection still works */
  n = 4;
  CU_ASSERT_EQUAL(f->C_GetSlotList(CK_TRUE, slots, &n), CKR_OK);
  CU_ASSERT_EQUAL(f->C_Finalize(NULL), CKR_OK);
}

/* ---- NSS trust objects ------------------------------------------------- */

static void test_nss_trust_not_an_error(void)
{
  CK_SESSION_HANDLE s;
  CK_OBJECT_CLASS trust = CKO_NSS_TRUST;
  CK_BBOOL yes = CK_TRUE;
  CK_ATTRIBUTE t[] = {{CKA_CLASS, &trust, sizeof(trust)}, {CKA_TOKEN, &yes, sizeof(yes)}};
  CK_OBJECT_HANDLE h;
  char path[600], line[1024];
  long before;
  FILE *fp;
  int errors = 0;

  snprintf(path, sizeof(path), "%s/kvp11.log", dir);
  CU_ASSERT_EQUAL_FATAL(f->C_Initialize(NULL), CKR_OK);
  CU_ASSERT_EQUAL_FATAL(
      f->C_OpenSession(1, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s), CKR_OK);
  fp = fopen(path, "r");
  CU_ASSERT_PTR_NOT_NULL_FATAL(fp);
  fseek(fp, 0, SEEK_END);
  before = ftell(fp);
  CU_ASSERT_NOT_EQUAL(f->C_CreateObject(s, t, 2, &h), CKR_OK);
  CU_ASSERT_EQUAL(f->C_Finalize(NULL), CKR_OK);
  fseek(fp, before, SEEK_SET);
  while (fgets(line, sizeof(line), fp) != NULL)
    errors += strstr(line, " ERROR ") != NULL;
  fclose(fp);
  CU_ASSERT_EQUAL(errors, 0);
}

int main(void)
{
  static CU_TestInfo tests[] = {
      {"key store failures give only allowed return codes", test_store_failures},
      {"C_GenerateRandom beyond INT_MAX", test_random_beyond_int_max},
      {"a forked child abandons the registry connection", test_fork_abandons_registry},
      {"NSS trust object is not an error", test_nss_trust_not_an_error},
      CU_TEST_INFO_NULL,
  };
  return unit_run_suite("front entry points", suite_init, NULL, tests);
}
