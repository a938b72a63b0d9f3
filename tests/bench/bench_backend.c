/*
 * kvp11-bench-backend: the cost of the HSM backend alone (module/backend/hsm),
 * without the PKCS#11 front.
 *
 *   kvp11-bench-backend [-d] -m MODULE -t TOKEN_LABEL -k KEY_LABEL -e PIN_ENV_VAR
 *                       [-T THREADS] [-s SECONDS | -n ITERATIONS] [-q]
 *
 * Without -d: opens the key through kvp_hsm_backend_new() / open_key() (PIN
 * from the environment variable named by -e) and calls ops->sign() in a loop.
 * With -d: does what the backend does, directly on the module: one session per
 * thread, C_SignInit + C_Sign with CKM_RSA_PKCS over a SHA-256 DigestInfo
 * (RSA) or CKM_ECDSA over a 32-byte digest (EC). The difference between the
 * two under valgrind --tool=callgrind is the backend's overhead per sign.
 *
 * Output: "RESULT mode=backend|direct key=... threads=T ops=N seconds=S ops_per_sec=R
 * cpu_us_per_op=C" (C: process CPU time per sign).
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "backend/backend.h"
#include "core/config.h"

#define MAX_THREADS 64

static const unsigned char sha256_prefix[19] = {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60,
                                                0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                                                0x01, 0x05, 0x00, 0x04, 0x20};

static int direct;
static double run_seconds = 3.0;
static long iterations;
static atomic_int stop, failed;
static pthread_barrier_t barrier;
static unsigned char digest[32];

/* backend mode */
static kvp_backend *be;
static kvp_key *bkey;
/* direct mode */
static CK_FUNCTION_LIST_PTR f;
static CK_SLOT_ID slot;
static CK_OBJECT_HANDLE hkey;
static int is_rsa;

typedef struct {
  CK_SESSION_HANDLE s;
  long ops;
} worker;

/* user + system CPU time of the process, seconds */
static double cpu_now(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
         (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static CK_RV sign_once(worker *w) {
  CK_BYTE sig[1024];
  CK_ULONG sig_len = sizeof(sig);
  if (!direct) {
    kvp_sig_alg alg = {bkey->type == KVP_KEY_RSA ? KVP_SIG_RSA_PKCS1 : KVP_SIG_ECDSA,
                       KVP_HASH_SHA256, KVP_HASH_NONE, 0};
    return be->ops->sign(be, bkey, &alg, digest, sizeof(digest), sig, &sig_len);
  }
  CK_MECHANISM m = {is_rsa ? CKM_RSA_PKCS : CKM_ECDSA, NULL, 0};
  unsigned char in[19 + 32];
  CK_ULONG in_len = sizeof(digest);
  const unsigned char *p = digest;
  if (is_rsa) {
    memcpy(in, sha256_prefix, sizeof(sha256_prefix));
    memcpy(in + sizeof(sha256_prefix), digest, sizeof(digest));
    p = in;
    in_len = sizeof(in);
  }
  CK_RV rv = f->C_SignInit(w->s, &m, hkey);
  if (rv != CKR_OK)
    return rv;
  return f->C_Sign(w->s, (CK_BYTE_PTR)p, in_len, sig, &sig_len);
}

static void *work(void *arg) {
  worker *w = arg;
  CK_RV rv = sign_once(w);
  if (rv != CKR_OK)
    atomic_store(&failed, 1);
  pthread_barrier_wait(&barrier);
  if (atomic_load(&failed))
    return NULL;
  for (long i = 0; iterations > 0 ? i < iterations : !atomic_load(&stop); i++) {
    if ((rv = sign_once(w)) != CKR_OK) {
      fprintf(stderr, "kvp11-bench-backend: sign failed: 0x%lx\n", (unsigned long)rv);
      atomic_store(&failed, 1);
      return NULL;
    }
    w->ops++;
  }
  return NULL;
}

static int setup_direct(const char *module, const char *token, const char *label,
                        const char *pin) {
  void *dl = dlopen(module, RTLD_NOW | RTLD_LOCAL);
  if (!dl)
    return -1;
  CK_C_GetFunctionList gfl;
  void *sym = dlsym(dl, "C_GetFunctionList");
  memcpy(&gfl, &sym, sizeof(gfl));
  CK_C_INITIALIZE_ARGS ia;
  memset(&ia, 0, sizeof(ia));
  ia.flags = CKF_OS_LOCKING_OK;
  if (!gfl || gfl(&f) != CKR_OK || f->C_Initialize(&ia) != CKR_OK)
    return -1;
  CK_SLOT_ID slots[256];
  CK_ULONG n = 256;
  if (f->C_GetSlotList(CK_TRUE, slots, &n) != CKR_OK)
    return -1;
  size_t tl = strlen(token);
  int found = 0;
  for (CK_ULONG i = 0; i < n && !found; i++) {
    CK_TOKEN_INFO ti;
    if (f->C_GetTokenInfo(slots[i], &ti) != CKR_OK || tl > 32 || memcmp(ti.label, token, tl))
      continue;
    found = 1;
    for (size_t j = tl; j < 32; j++)
      if (ti.label[j] != ' ')
        found = 0;
    if (found)
      slot = slots[i];
  }
  if (!found)
    return -1;
  CK_SESSION_HANDLE s;
  if (f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s) != CKR_OK)
    return -1;
  CK_RV rv = f->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)pin, (CK_ULONG)strlen(pin));
  if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN)
    return -1;
  CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
  CK_ATTRIBUTE t[2] = {{CKA_CLASS, &cls, sizeof(cls)},
                       {CKA_LABEL, (void *)label, (CK_ULONG)strlen(label)}};
  CK_ULONG cnt = 0;
  if (f->C_FindObjectsInit(s, t, 2) != CKR_OK || f->C_FindObjects(s, &hkey, 1, &cnt) != CKR_OK ||
      cnt != 1)
    return -1;
  f->C_FindObjectsFinal(s);
  CK_KEY_TYPE kt = 0;
  CK_ATTRIBUTE ka = {CKA_KEY_TYPE, &kt, sizeof(kt)};
  if (f->C_GetAttributeValue(s, hkey, &ka, 1) != CKR_OK)
    return -1;
  is_rsa = kt == CKK_RSA;
  return 0; /* s stays open: it keeps the login */
}

int main(int argc, char **argv) {
  const char *module = NULL, *token = NULL, *label = NULL, *pin_env = NULL;
  int threads = 1, quiet = 0, opt;
  while ((opt = getopt(argc, argv, "dm:t:k:e:T:s:n:q")) != -1) {
    switch (opt) {
    case 'd': direct = 1; break;
    case 'm': module = optarg; break;
    case 't': token = optarg; break;
    case 'k': label = optarg; break;
    case 'e': pin_env = optarg; break;
    case 'T': threads = atoi(optarg); break;
    case 's': run_seconds = atof(optarg); break;
    case 'n': iterations = atol(optarg); break;
    case 'q': quiet = 1; break;
    default: goto usage;
    }
  }
  if (!module || !token || !label || !pin_env || !getenv(pin_env) || threads < 1 ||
      threads > MAX_THREADS)
    goto usage;
  for (size_t i = 0; i < sizeof(digest); i++)
    digest[i] = (unsigned char)(i * 13 + 5);

  worker w[MAX_THREADS];
  memset(w, 0, sizeof(w));
  if (direct) {
    if (setup_direct(module, token, label, getenv(pin_env)) != 0) {
      fprintf(stderr, "kvp11-bench-backend: cannot set up %s token '%s' key '%s'\n", module,
              token, label);
      return 1;
    }
    for (int i = 0; i < threads; i++)
      if (f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &w[i].s) != CKR_OK)
        return 1;
  } else {
    kvp_hsm_conf c;
    memset(&c, 0, sizeof(c));
    c.name = (char *)"bench";
    c.module = (char *)module;
    c.token_label = (char *)token;
    c.pin_env = (char *)pin_env;
    CK_RV rv = kvp_hsm_backend_new(&c, &be);
    if (rv == CKR_OK)
      rv = be->ops->open_key(be, label, &bkey);
    if (rv != CKR_OK) {
      fprintf(stderr, "kvp11-bench-backend: open_key '%s': 0x%lx\n", label, (unsigned long)rv);
      return 1;
    }
  }

  pthread_t t[MAX_THREADS];
  pthread_barrier_init(&barrier, NULL, (unsigned)threads + 1);
  for (int i = 0; i < threads; i++)
    pthread_create(&t[i], NULL, work, &w[i]);
  pthread_barrier_wait(&barrier);
  double t0 = now(), c0 = cpu_now();
  if (iterations == 0) {
    struct timespec ts = {(time_t)run_seconds,
                          (long)((run_seconds - (double)(time_t)run_seconds) * 1e9)};
    nanosleep(&ts, NULL);
    atomic_store(&stop, 1);
  }
  for (int i = 0; i < threads; i++)
    pthread_join(t[i], NULL);
  double secs = now() - t0, cpu = cpu_now() - c0;
  long ops = 0;
  for (int i = 0; i < threads; i++)
    ops += w[i].ops;
  if (atomic_load(&failed))
    return 1;
  if (!direct) {
    be->ops->close_key(be, bkey);
    be->ops->destroy(be, 0);
  }
  double rate = secs > 0 ? (double)ops / secs : 0;
  double cpu_us = ops > 0 ? cpu * 1e6 / (double)ops : 0;
  if (!quiet)
    printf("%s: key %s, %d thread(s): %ld signs in %.2f s = %.1f signs/s\n",
           direct ? "direct" : "backend", label, threads, ops, secs, rate);
  printf("RESULT mode=%s key=%s threads=%d ops=%ld seconds=%.3f ops_per_sec=%.1f cpu_us_per_op=%.1f\n",
         direct ? "direct" : "backend", label, threads, ops, secs, rate, cpu_us);
  return 0;
usage:
  fprintf(stderr, "usage: kvp11-bench-backend [-d] -m MODULE -t TOKEN -k KEY_LABEL -e PIN_ENV_VAR "
                  "[-T THREADS] [-s SECONDS | -n ITERATIONS] [-q]\n");
  return 2;
}
