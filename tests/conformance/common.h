/*
 * kvp11 conformance suite: shared helpers.
 *
 * The suite drives a PKCS#11 module through dlopen() + C_GetFunctionList only and checks it
 * against the PKCS#11 2.40 specification. It knows nothing about kvp11's internals, so it can
 * run against any backend (SoftHSM2 through kvp11, the Key Vault emulator, or a plain
 * PKCS#11 token holding matching certificate / public key / private key objects).
 *
 * Configuration (environment):
 *   KVP11_MODULE         path of the module to load (required)
 *   KVP11_TEST_TOKEN     token label of the account under test (required)
 *   KVP11_TEST_KEYS      space-separated names of private certificates
 *   KVP11_TEST_PUBLIC    space-separated names of public certificates
 *   KVP11_TEST_PIN       PIN for C_Login (optional; without it no C_Login with a PIN is made)
 *   KVP11_TEST_FEATURES  space-separated backend features: fork, raw-rsa, pss-any-params
 *   KVP11_TEST_QUICK     1: fewer iterations (valgrind runs)
 */
#ifndef KVP11_CONFORMANCE_COMMON_H
#define KVP11_CONFORMANCE_COMMON_H

#include <stdbool.h>
#include <stddef.h>

#include <CUnit/CUnit.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <p11-kit/pkcs11.h>

#define KVPT_MAX_CERTS 32

/* One registered certificate as seen through the module. */
typedef struct kvpt_cert {
  const char *name;
  bool is_private;
  CK_OBJECT_HANDLE cert;
  CK_OBJECT_HANDLE pub;
  CK_OBJECT_HANDLE priv; /* CK_INVALID_HANDLE for public certificates */
  X509 *x509;            /* parsed from the certificate object's CKA_VALUE */
  EVP_PKEY *pkey;        /* the certificate's public key */
  bool is_rsa;
  bool is_ec;
  int bits;                  /* RSA modulus bits / EC field bits */
  size_t sig_len;            /* RSA: modulus bytes; EC: 2 * order bytes (r||s) */
  const EVP_MD *ec_md;       /* hash matching the curve (SHA-256 for P-256, ...) */
  CK_MECHANISM_TYPE ec_mech; /* CKM_ECDSA_SHAxxx matching the curve */
} kvpt_cert;

typedef struct kvpt_env {
  const char *module_path;
  const char *token;
  const char *pin;
  char *keys[KVPT_MAX_CERTS];
  size_t nkeys;
  char *publics[KVPT_MAX_CERTS];
  size_t npublics;
  char *features;
  bool quick;
} kvpt_env;

extern kvpt_env KVPT;
extern CK_FUNCTION_LIST_PTR P11;      /* the module's function list */
extern CK_C_GetFunctionList KVPT_GFL; /* the module's C_GetFunctionList */
extern CK_SLOT_ID KVPT_SLOT;          /* slot of KVP11_TEST_TOKEN, set by kvpt_suite_init */
extern kvpt_cert KVPT_CERTS[KVPT_MAX_CERTS];
extern size_t KVPT_NCERTS;

/* errqueue.c: a function list that calls the module's and checks, around every call, that the
 * calling thread's OpenSSL error queue is left as it was; the number of calls that changed it. */
CK_FUNCTION_LIST_PTR kvpt_errqueue_wrap(CK_FUNCTION_LIST_PTR module);
unsigned long kvpt_errqueue_violations(void);

/* Setup: parse the environment and load the module. Prints a reason and returns false on error. */
bool kvpt_setup(void);
void kvpt_teardown(void);
bool kvpt_has_feature(const char *name);

/* CUnit suite init/cleanup for suites that need an initialized module with the certificates
 * loaded: C_Initialize(CKF_OS_LOCKING_OK), find the slot, load KVPT_CERTS. */
int kvpt_suite_init(void);
int kvpt_suite_cleanup(void);

CK_RV kvpt_initialize(void);
bool kvpt_find_slot(CK_SLOT_ID *slot);

/* Open a session on KVPT_SLOT (asserting success) and log in when a PIN is configured. */
CK_SESSION_HANDLE kvpt_open(bool rw);
void kvpt_close(CK_SESSION_HANDLE h);
void kvpt_login(CK_SESSION_HANDLE h);
/* End whatever operation a refused-but-accepted call left active (results ignored), so one
 * wrong answer does not cascade into the next checks. */
void kvpt_end_ops(CK_SESSION_HANDLE h);

/* Find objects (asserting the calls succeed); returns the count, fills up to max handles. */
size_t kvpt_find(CK_SESSION_HANDLE h, CK_ATTRIBUTE *tmpl, CK_ULONG n, CK_OBJECT_HANDLE *out,
                 size_t max);
/* The handle of the only object of class cls with CKA_LABEL label; *count gets the number found. */
CK_OBJECT_HANDLE kvpt_find_one(CK_SESSION_HANDLE h, CK_OBJECT_CLASS cls, const char *label,
                               size_t *count);

/* C_GetAttributeValue of one attribute into a new buffer (NUL-terminated for convenience).
 * Returns NULL if the attribute could not be read; *rv gets the module's return value. */
unsigned char *kvpt_attr(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE t,
                         CK_ULONG *len, CK_RV *rv);
bool kvpt_attr_bool(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE t, CK_BBOOL *v);
bool kvpt_attr_ulong(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE t, CK_ULONG *v);

/* Is the mechanism in the token's C_GetMechanismList? */
bool kvpt_mech_listed(CK_MECHANISM_TYPE t);

/* Certificates of KVPT_CERTS matching a predicate. */
const kvpt_cert *kvpt_first_rsa(int bits); /* bits 0: any */
const kvpt_cert *kvpt_first_ec(int bits);  /* bits 0: any */

/* --- crypto helpers (OpenSSL only; nothing from the module) --- */

/* DER DigestInfo for a digest made with md (SHA-1/224/256/384/512). Returns length, 0 on error. */
size_t kvpt_digest_info(const EVP_MD *md, const unsigned char *dgst, size_t dlen,
                        unsigned char *out, size_t outlen);
size_t kvpt_hash(const EVP_MD *md, const unsigned char *msg, size_t len, unsigned char *out);
/* PKCS#11 hash mechanism / MGF for an OpenSSL digest. */
CK_MECHANISM_TYPE kvpt_hash_mech(const EVP_MD *md);
CK_RSA_PKCS_MGF_TYPE kvpt_mgf(const EVP_MD *md);

/* Verify a signature over a digest with the certificate's public key.
 * kind: 'p' PKCS#1 v1.5 (md names the DigestInfo), 's' PSS (salt = digest length), 'e' ECDSA r||s,
 * 'r' raw PKCS#1 v1.5 (the digest argument is the exact signed input, md ignored). */
bool kvpt_verify_digest(const kvpt_cert *c, char kind, const EVP_MD *md, const unsigned char *dgst,
                        size_t dlen, const unsigned char *sig, size_t slen);
/* Same over a message, hashed here with md. */
bool kvpt_verify_msg(const kvpt_cert *c, char kind, const EVP_MD *md, const unsigned char *msg,
                     size_t mlen, const unsigned char *sig, size_t slen);
/* RSA encryption with OpenSSL: kind 'p' PKCS#1 v1.5, 'o' OAEP with md (MGF1 with md, no label). */
size_t kvpt_rsa_encrypt(const kvpt_cert *c, char kind, const EVP_MD *md, const unsigned char *in,
                        size_t inlen, unsigned char *out, size_t outlen);

/* --- assertions with readable messages --- */

const char *kvpt_rv_name(CK_RV rv);
bool kvpt_check_rv(CK_RV got, CK_RV want, const char *expr, unsigned line, const char *file,
                   const char *func);
bool kvpt_check_rv_in(CK_RV got, const CK_RV *set, size_t n, const char *expr, unsigned line,
                      const char *file, const char *func);
bool kvpt_check(bool cond, unsigned line, const char *file, const char *func, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* CHECK_RV(call, CKR_x): asserts call returns CKR_x, message shows both names; a bool. */
#define CHECK_RV(expr, want) kvpt_check_rv((expr), (want), #expr, __LINE__, __FILE__, __func__)
/* CHECK_RV_IN(call, CKR_a, CKR_b, ...): asserts the result is one of the listed values. */
#define CHECK_RV_IN(expr, ...)                                                                     \
  kvpt_check_rv_in((expr), (const CK_RV[]){__VA_ARGS__},                                           \
                   sizeof((const CK_RV[]){__VA_ARGS__}) / sizeof(CK_RV), #expr, __LINE__,          \
                   __FILE__, __func__)
/* CHECK(cond, "fmt", ...): asserts cond, message formatted. */
#define CHECK(cond, ...) kvpt_check((cond), __LINE__, __FILE__, __func__, __VA_ARGS__)

/* Short helpers used everywhere. */
#define KVPT_ATTR(t, p, l)                                                                         \
  {                                                                                                \
    (t), (p), (l)                                                                                  \
  }
#define KVPT_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Suite registration: each area file provides one. */
void kvpt_add_init_tests(void);
void kvpt_add_slot_tests(void);
void kvpt_add_session_tests(void);
void kvpt_add_object_tests(void);
void kvpt_add_sign_tests(void);
void kvpt_add_crypt_tests(void);
void kvpt_add_mixing_tests(void);
void kvpt_add_thread_tests(void);
void kvpt_add_fork_tests(void);
void kvpt_add_destructive_tests(void);

/* Register a suite with its tests: kvpt_add_suite(name, init, cleanup, (kvpt_test[]){...}, n). */
typedef struct kvpt_test {
  const char *name;
  CU_TestFunc fn;
} kvpt_test;
void kvpt_add_suite(const char *name, CU_InitializeFunc init, CU_CleanupFunc cleanup,
                    const kvpt_test *tests, size_t n);

#endif
