/*
 * kvp11-stress-threads: thread stress of a PKCS#11 module (issue 6, item 3).
 *
 * Loads the module only through dlopen + C_GetFunctionList. KVP11_STRESS_THREADS worker
 * threads (default 16) each run KVP11_STRESS_ITERS iterations of:
 *   C_OpenSession; for every key of KVP11_STRESS_KEYS: find the private key, sign random data
 *   (RSA: CKM_SHA256_RSA_PKCS, EC: CKM_ECDSA_SHA256/384/512) and verify the signature with
 *   OpenSSL against the public key of the certificate read through the module; RSA keys also
 *   decrypt (CKM_RSA_PKCS) a ciphertext made locally with OpenSSL; find all certificates
 *   (the count must be the base count or base + 1); C_CloseSession.
 * Meanwhile a registry thread runs `kvp11 cert add --replace` / `kvp11 cert remove` of a
 * throwaway public certificate (made here) through the tool binary in a loop, so the registry
 * changes underneath. A watchdog (alarm) fails the run after KVP11_STRESS_TIMEOUT seconds.
 *
 * Environment: KVP11_MODULE (required), KVP11_TOOL and KVP11_CONF (registry changes; without
 * them the test fails), KVP11_STRESS_TOKEN (token label), KVP11_STRESS_KEYS (default
 * "rsa2048 p256"), KVP11_STRESS_ITERS (default 40), KVP11_STRESS_THREADS (default 16),
 * KVP11_STRESS_TIMEOUT (default 120), KVP11_STRESS_LIVE (name of the throwaway certificate,
 * default stress-live).
 * Output ends with "N passed, N failed" (checks) and exit status 0 only with 0 errors.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "p11load.h"

extern char **environ;

#define MAX_KEYS 8
#define MAX_ERR_PRINTS 20

typedef struct stress_key {
  char name[64];
  EVP_PKEY *pub;
  bool is_rsa;
  CK_MECHANISM_TYPE mech;
  const EVP_MD *md;
  size_t half; /* EC: bytes of r (and of s) */
} stress_key;

static CK_FUNCTION_LIST_PTR P11;
static CK_SLOT_ID SLOT;
static stress_key KEYS[MAX_KEYS];
static size_t NKEYS;
static CK_ULONG BASE_CERTS;
static int ITERS = 40;

static atomic_ulong n_sessions, n_signs, n_verifies, n_decrypts, n_finds, n_tool, n_errors;
static atomic_int stop_tool;
static atomic_int err_prints;

static const char *TOOL, *CONF_PATH, *LIVE = "stress-live";
static char LIVE_CERT[256];


static void op_error(const char *fmt, ...)
{
  atomic_fetch_add(&n_errors, 1);
  if (atomic_fetch_add(&err_prints, 1) >= MAX_ERR_PRINTS)
    return;
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  fprintf(stderr, "ERROR: %s\n", buf);
}

static void on_alarm(int sig)
{
  (void)sig;
  static const char msg[] = "FAIL: watchdog: the stress run did not finish in time (deadlock?)\n"
                            "0 passed, 1 failed\n";
  ssize_t w = write(STDERR_FILENO, msg, sizeof msg - 1);
  (void)w;
  if (LIVE_CERT[0])
    unlink(LIVE_CERT); /* async-signal-safe */
  _exit(2);
}

/* ---- helpers over the module ---------------------------------------------------------- */

static CK_RV find_all(CK_SESSION_HANDLE h, CK_ATTRIBUTE *t, CK_ULONG n, CK_OBJECT_HANDLE *out,
                      CK_ULONG max, CK_ULONG *count)
{
  *count = 0;
  CK_RV rv = P11->C_FindObjectsInit(h, t, n);
  if (rv != CKR_OK)
    return rv;
  for (;;) {
    CK_OBJECT_HANDLE buf[16];
    CK_ULONG got = 0;
    rv = P11->C_FindObjects(h, buf, 16, &got);
    if (rv != CKR_OK || got == 0)
      break;
    for (CK_ULONG i = 0; i < got; i++, (*count)++)
      if (out && *count < max)
        out[*count] = buf[i];
  }
  CK_RV rv2 = P11->C_FindObjectsFinal(h);
  return rv != CKR_OK ? rv : rv2;
}

static CK_RV find_by_label(CK_SESSION_HANDLE h, CK_OBJECT_CLASS cls, const char *label,
                           CK_OBJECT_HANDLE *o, CK_ULONG *count)
{
  CK_ATTRIBUTE t[] = {
      {CKA_CLASS, &cls, sizeof cls},
      {CKA_LABEL, (void *)label, strlen(label)},
  };
  CK_OBJECT_HANDLE found[4];
  CK_RV rv = find_all(h, t, 2, found, 4, count);
  *o = (rv == CKR_OK && *count == 1) ? found[0] : CK_INVALID_HANDLE;
  return rv;
}

static CK_RV count_certs(CK_SESSION_HANDLE h, CK_ULONG *count)
{
  CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
  CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof cls}};
  return find_all(h, t, 1, NULL, 0, count);
}

/* ---- the throwaway public certificate and the tool ---------------------------------- */

static int make_live_cert(void)
{
  int ok = 0;
  EVP_PKEY *k = EVP_EC_gen("P-256");
  X509 *x = X509_new();
  X509_NAME *nm = X509_NAME_new();
  const char *dir = getenv("TMPDIR");
  snprintf(LIVE_CERT, sizeof LIVE_CERT, "%s/kvp11-stress-XXXXXX", dir && *dir ? dir : "/tmp");
  int fd = mkstemp(LIVE_CERT);
  FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
  if (!k || !x || !nm || !f)
    goto out;
  X509_NAME_add_entry_by_txt(nm, "CN", MBSTRING_ASC, (const unsigned char *)"kvp11 stress live",
                             -1, -1, 0);
  if (!X509_set_version(x, 2) || !ASN1_INTEGER_set(X509_get_serialNumber(x), 4242) ||
      !X509_set_subject_name(x, nm) || !X509_set_issuer_name(x, nm) ||
      !X509_gmtime_adj(X509_getm_notBefore(x), -3600) ||
      !X509_gmtime_adj(X509_getm_notAfter(x), 86400L * 30) || !X509_set_pubkey(x, k) ||
      !X509_sign(x, k, EVP_sha256()) || !PEM_write_X509(f, x))
    goto out;
  ok = 1;
out:
  if (f)
    fclose(f);
  else if (fd >= 0)
    close(fd);
  X509_NAME_free(nm);
  X509_free(x);
  EVP_PKEY_free(k);
  if (!ok)
    fprintf(stderr, "could not make the throwaway certificate\n");
  return ok ? 0 : -1;
}

/* Runs the tool with argv (argv[0] ignored), stdout (and stderr if quiet) to /dev/null.
 * Returns its exit status. */
static int run_tool(char *const argv[], bool quiet)
{
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
  if (quiet)
    posix_spawn_file_actions_addopen(&fa, STDERR_FILENO, "/dev/null", O_WRONLY, 0);
  pid_t pid;
  int r = posix_spawn(&pid, TOOL, &fa, NULL, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  if (r != 0)
    return -1;
  int st;
  while (waitpid(pid, &st, 0) < 0)
    if (errno != EINTR)
      return -1;
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
}

static int tool_add(void)
{
  char *argv[] = {(char *)"kvp11", (char *)"-c", (char *)CONF_PATH, (char *)"cert", (char *)"add",
                  (char *)"--name", (char *)LIVE, (char *)"--type", (char *)"public",
                  (char *)"--cert", LIVE_CERT, (char *)"--replace", NULL};
  return run_tool(argv, false);
}

static int tool_remove(bool quiet)
{
  char *argv[] = {(char *)"kvp11", (char *)"-c", (char *)CONF_PATH, (char *)"cert",
                  (char *)"remove", (char *)LIVE, NULL};
  return run_tool(argv, quiet);
}

static void *registry_thread(void *arg)
{
  (void)arg;
  while (!atomic_load(&stop_tool)) {
    int r = tool_add();
    atomic_fetch_add(&n_tool, 1);
    if (r != 0)
      op_error("kvp11 cert add --replace %s: exit status %d", LIVE, r);
    r = tool_remove(false);
    atomic_fetch_add(&n_tool, 1);
    if (r != 0)
      op_error("kvp11 cert remove %s: exit status %d", LIVE, r);
  }
  return NULL;
}

/* ---- worker --------------------------------------------------------------------------- */

static bool verify_sig(const stress_key *k, const unsigned char *data, size_t dlen,
                       const unsigned char *sig, size_t slen)
{
  unsigned char *der = NULL;
  int derlen = 0;
  const unsigned char *s = sig;
  size_t sl = slen;
  if (!k->is_rsa) {
    if (slen != 2 * k->half)
      return false;
    ECDSA_SIG *es = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(sig, (int)k->half, NULL);
    BIGNUM *ss = BN_bin2bn(sig + k->half, (int)k->half, NULL);
    if (!es || !r || !ss || !ECDSA_SIG_set0(es, r, ss)) {
      BN_free(r);
      BN_free(ss);
      ECDSA_SIG_free(es);
      return false;
    }
    derlen = i2d_ECDSA_SIG(es, &der);
    ECDSA_SIG_free(es);
    if (derlen <= 0)
      return false;
    s = der;
    sl = (size_t)derlen;
  }
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  bool ok = ctx && EVP_DigestVerifyInit(ctx, NULL, k->md, NULL, k->pub) == 1 &&
            EVP_DigestVerify(ctx, s, sl, data, dlen) == 1;
  EVP_MD_CTX_free(ctx);
  OPENSSL_free(der);
  return ok;
}

static void do_key(CK_SESSION_HANDLE h, const stress_key *k, int tid, int it)
{
  CK_OBJECT_HANDLE priv;
  CK_ULONG cnt;
  CK_RV rv = find_by_label(h, CKO_PRIVATE_KEY, k->name, &priv, &cnt);
  atomic_fetch_add(&n_finds, 1);
  if (rv != CKR_OK || cnt != 1) {
    op_error("thread %d iter %d: find private key %s: rv 0x%lx, %lu found", tid, it, k->name,
             (unsigned long)rv, (unsigned long)cnt);
    return;
  }

  unsigned char data[64];
  RAND_bytes(data, sizeof data);
  CK_MECHANISM m = {k->mech, NULL, 0};
  unsigned char sig[1024];
  CK_ULONG slen = sizeof sig;
  rv = P11->C_SignInit(h, &m, priv);
  if (rv == CKR_OK)
    rv = P11->C_Sign(h, data, sizeof data, sig, &slen);
  atomic_fetch_add(&n_signs, 1);
  if (rv != CKR_OK) {
    op_error("thread %d iter %d: sign with %s: rv 0x%lx", tid, it, k->name, (unsigned long)rv);
  } else {
    atomic_fetch_add(&n_verifies, 1);
    if (!verify_sig(k, data, sizeof data, sig, slen))
      op_error("thread %d iter %d: signature by %s does not verify", tid, it, k->name);
  }

  if (!k->is_rsa)
    return;
  unsigned char secret[32], ct[1024], pt[1024];
  size_t ctlen = sizeof ct;
  RAND_bytes(secret, sizeof secret);
  EVP_PKEY_CTX *pc = EVP_PKEY_CTX_new(k->pub, NULL);
  bool enc = pc && EVP_PKEY_encrypt_init(pc) == 1 &&
             EVP_PKEY_CTX_set_rsa_padding(pc, RSA_PKCS1_PADDING) == 1 &&
             EVP_PKEY_encrypt(pc, ct, &ctlen, secret, sizeof secret) == 1;
  EVP_PKEY_CTX_free(pc);
  if (!enc) {
    op_error("thread %d: local RSA encryption failed", tid);
    return;
  }
  CK_MECHANISM dm = {CKM_RSA_PKCS, NULL, 0};
  CK_ULONG ptlen = sizeof pt;
  rv = P11->C_DecryptInit(h, &dm, priv);
  if (rv == CKR_OK)
    rv = P11->C_Decrypt(h, ct, (CK_ULONG)ctlen, pt, &ptlen);
  atomic_fetch_add(&n_decrypts, 1);
  if (rv != CKR_OK)
    op_error("thread %d iter %d: decrypt with %s: rv 0x%lx", tid, it, k->name, (unsigned long)rv);
  else if (ptlen != sizeof secret || memcmp(pt, secret, sizeof secret) != 0)
    op_error("thread %d iter %d: decrypt with %s: wrong plaintext", tid, it, k->name);
  OPENSSL_cleanse(pt, sizeof pt);
}

static void *worker(void *arg)
{
  int tid = (int)(intptr_t)arg;
  for (int it = 0; it < ITERS; it++) {
    CK_SESSION_HANDLE h;
    CK_RV rv = P11->C_OpenSession(SLOT, CKF_SERIAL_SESSION, NULL, NULL, &h);
    atomic_fetch_add(&n_sessions, 1);
    if (rv != CKR_OK) {
      op_error("thread %d iter %d: C_OpenSession: rv 0x%lx", tid, it, (unsigned long)rv);
      continue;
    }
    for (size_t i = 0; i < NKEYS; i++)
      do_key(h, &KEYS[i], tid, it);
    CK_ULONG n;
    rv = count_certs(h, &n);
    atomic_fetch_add(&n_finds, 1);
    if (rv != CKR_OK)
      op_error("thread %d iter %d: find certificates: rv 0x%lx", tid, it, (unsigned long)rv);
    else if (n != BASE_CERTS && n != BASE_CERTS + 1)
      op_error("thread %d iter %d: %lu certificates found, expected %lu or %lu", tid, it,
               (unsigned long)n, (unsigned long)BASE_CERTS, (unsigned long)BASE_CERTS + 1);
    rv = P11->C_CloseSession(h);
    if (rv != CKR_OK)
      op_error("thread %d iter %d: C_CloseSession: rv 0x%lx", tid, it, (unsigned long)rv);
  }
  return NULL;
}

/* ---- setup ---------------------------------------------------------------------------- */

static int load_key(CK_SESSION_HANDLE h, const char *name, stress_key *k)
{
  memset(k, 0, sizeof *k);
  snprintf(k->name, sizeof k->name, "%s", name);
  CK_OBJECT_HANDLE c, p;
  CK_ULONG cnt;
  if (find_by_label(h, CKO_CERTIFICATE, name, &c, &cnt) != CKR_OK || cnt != 1) {
    fprintf(stderr, "certificate '%s' not found through the module (%lu found)\n", name,
            (unsigned long)cnt);
    return -1;
  }
  if (find_by_label(h, CKO_PRIVATE_KEY, name, &p, &cnt) != CKR_OK || cnt != 1) {
    fprintf(stderr, "private key '%s' not found through the module\n", name);
    return -1;
  }
  CK_ATTRIBUTE a = {CKA_VALUE, NULL, 0};
  if (P11->C_GetAttributeValue(h, c, &a, 1) != CKR_OK || a.ulValueLen == 0 ||
      a.ulValueLen > 65536)
    return -1;
  unsigned char *der = malloc(a.ulValueLen);
  a.pValue = der;
  if (!der || P11->C_GetAttributeValue(h, c, &a, 1) != CKR_OK) {
    free(der);
    return -1;
  }
  const unsigned char *pp = der;
  X509 *x = d2i_X509(NULL, &pp, (long)a.ulValueLen);
  free(der);
  k->pub = x ? X509_get_pubkey(x) : NULL;
  X509_free(x);
  if (!k->pub) {
    fprintf(stderr, "certificate '%s': CKA_VALUE is not a certificate\n", name);
    return -1;
  }
  int bits = EVP_PKEY_get_bits(k->pub);
  if (EVP_PKEY_get_base_id(k->pub) == EVP_PKEY_RSA) {
    k->is_rsa = true;
    k->mech = CKM_SHA256_RSA_PKCS;
    k->md = EVP_sha256();
  } else if (EVP_PKEY_get_base_id(k->pub) == EVP_PKEY_EC) {
    k->half = (size_t)(bits + 7) / 8;
    k->mech = bits <= 256 ? CKM_ECDSA_SHA256 : bits <= 384 ? CKM_ECDSA_SHA384 : CKM_ECDSA_SHA512;
    k->md = bits <= 256 ? EVP_sha256() : bits <= 384 ? EVP_sha384() : EVP_sha512();
  } else {
    fprintf(stderr, "certificate '%s': neither RSA nor EC\n", name);
    return -1;
  }
  return 0;
}

static int env_int(const char *name, int def, int min, int max)
{
  const char *v = getenv(name);
  if (!v || !*v)
    return def;
  char *end;
  long l = strtol(v, &end, 10);
  if (*end || l < min || l > max) {
    fprintf(stderr, "%s=%s out of range [%d, %d], using %d\n", name, v, min, max, def);
    return def;
  }
  return (int)l;
}

int main(void)
{
  int failed = 0, passed = 0;
  void *dl = NULL;
  const char *token = getenv("KVP11_STRESS_TOKEN");
  const char *keys = getenv("KVP11_STRESS_KEYS");
  TOOL = getenv("KVP11_TOOL");
  CONF_PATH = getenv("KVP11_CONF");
  if (getenv("KVP11_STRESS_LIVE") && *getenv("KVP11_STRESS_LIVE"))
    LIVE = getenv("KVP11_STRESS_LIVE");
  ITERS = env_int("KVP11_STRESS_ITERS", 40, 1, 1000000);
  int nthreads = env_int("KVP11_STRESS_THREADS", 16, 1, 256);
  int timeout = env_int("KVP11_STRESS_TIMEOUT", 120, 1, 86400);
  if (!token || !*token)
    token = "kvp11 default";
  if (!keys || !*keys)
    keys = "rsa2048 p256";
  if (!TOOL || !*TOOL || !CONF_PATH || !*CONF_PATH) {
    fprintf(stderr, "KVP11_TOOL and KVP11_CONF must be set\n0 passed, 1 failed\n");
    return 1;
  }

  signal(SIGALRM, on_alarm);
  alarm((unsigned)timeout);

  if (make_live_cert() != 0)
    goto fail_setup;
  tool_remove(true); /* left over from an interrupted run: absent is fine */

  P11 = kvps_load(getenv("KVP11_MODULE"), &dl);
  if (!P11)
    goto fail_setup;
  CK_C_INITIALIZE_ARGS ia = {NULL, NULL, NULL, NULL, CKF_OS_LOCKING_OK, NULL};
  CK_RV rv = P11->C_Initialize(&ia);
  if (rv != CKR_OK) {
    fprintf(stderr, "C_Initialize: rv 0x%lx\n", (unsigned long)rv);
    goto fail_setup;
  }
  if (kvps_find_slot(P11, token, &SLOT) != 0) {
    fprintf(stderr, "token '%s' not found\n", token);
    goto fail_final;
  }
  CK_SESSION_HANDLE h;
  if (P11->C_OpenSession(SLOT, CKF_SERIAL_SESSION, NULL, NULL, &h) != CKR_OK) {
    fprintf(stderr, "C_OpenSession failed\n");
    goto fail_final;
  }
  char kbuf[512];
  snprintf(kbuf, sizeof kbuf, "%s", keys);
  for (char *sp, *t = strtok_r(kbuf, " ", &sp); t; t = strtok_r(NULL, " ", &sp)) {
    if (NKEYS == MAX_KEYS || load_key(h, t, &KEYS[NKEYS]) != 0) {
      P11->C_CloseSession(h);
      goto fail_final;
    }
    NKEYS++;
  }
  if (count_certs(h, &BASE_CERTS) != CKR_OK) {
    P11->C_CloseSession(h);
    goto fail_final;
  }
  P11->C_CloseSession(h);
  printf("stress: %d threads x %d iterations, keys '%s', token '%s', %lu certificates\n",
         nthreads, ITERS, keys, token, (unsigned long)BASE_CERTS);
  fflush(stdout);

  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  pthread_t reg;
  pthread_t *th = calloc((size_t)nthreads, sizeof *th);
  if (!th || pthread_create(&reg, NULL, registry_thread, NULL) != 0)
    goto fail_final;
  int started = 0;
  for (; started < nthreads; started++)
    if (pthread_create(&th[started], NULL, worker, (void *)(intptr_t)started) != 0) {
      op_error("pthread_create failed");
      break;
    }
  for (int i = 0; i < started; i++)
    pthread_join(th[i], NULL);
  /* at least two full registry cycles, even on a very fast machine */
  while (atomic_load(&n_tool) < 4)
    usleep(10000);
  atomic_store(&stop_tool, 1);
  pthread_join(reg, NULL);
  free(th);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;

  unsigned long ops = atomic_load(&n_sessions) + atomic_load(&n_signs) +
                      atomic_load(&n_decrypts) + atomic_load(&n_finds);
  unsigned long errs = atomic_load(&n_errors);
  printf("stress: %.1f s: %lu sessions, %lu signatures (%lu verified), %lu decryptions, "
         "%lu finds, %lu registry changes (tool runs); %lu operations, %lu errors\n",
         secs, atomic_load(&n_sessions), atomic_load(&n_signs), atomic_load(&n_verifies),
         atomic_load(&n_decrypts), atomic_load(&n_finds), atomic_load(&n_tool), ops, errs);
  unsigned long expect = (unsigned long)nthreads * (unsigned long)ITERS;
  /* checks: every operation succeeded; every iteration ran; the registry changed */
  if (errs == 0) passed++; else failed++;
  if (atomic_load(&n_sessions) == expect) passed++; else failed++;
  if (atomic_load(&n_tool) >= 4) passed++; else failed++;
  tool_remove(true);
  unlink(LIVE_CERT);
  rv = P11->C_Finalize(NULL);
  if (rv == CKR_OK) passed++; else failed++;
  for (size_t i = 0; i < NKEYS; i++)
    EVP_PKEY_free(KEYS[i].pub);
  alarm(0);
  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;

fail_final:
  P11->C_Finalize(NULL);
fail_setup:
  if (LIVE_CERT[0])
    unlink(LIVE_CERT);
  printf("0 passed, 1 failed (setup)\n");
  return 1;
}
