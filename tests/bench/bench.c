/*
 * kvp11-bench: C_SignInit + C_Sign loops through any PKCS#11 module.
 *
 *   kvp11-bench -m MODULE -t TOKEN_LABEL -k KEY_LABEL [-p PIN] [-T THREADS]
 *               [-s SECONDS | -n ITERATIONS] [-q]
 *
 * Loads MODULE with dlopen + C_GetFunctionList only (the same way an
 * application does), initializes it with CKF_OS_LOCKING_OK, finds the token
 * by label, logs in with PIN if given (CKR_USER_ALREADY_LOGGED_IN is fine),
 * finds the private key by label, and signs in T threads, each on its own
 * session: RSA keys with CKM_SHA256_RSA_PKCS over 32 bytes of data, EC keys
 * with CKM_ECDSA over a 32-byte digest. Each thread signs once before the
 * clock starts (so lazy initialisation is not measured).
 *
 * -s: run for SECONDS (default 3) and print ops/s.
 * -n: run exactly ITERATIONS signs per thread (for valgrind --tool=callgrind:
 *     run twice with different N and divide the difference in instructions
 *     by the difference in N to get the instructions per sign).
 *
 * Output: one line "RESULT module=... key=... mech=... threads=T ops=N
 * seconds=S ops_per_sec=R cpu_us_per_op=C" (and a human line unless -q); C is the
 * process's user+system CPU time per sign, which other load on the machine
 * disturbs less than the wall-clock rate. Exit 0 on success.
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

#include <p11-kit/pkcs11.h>

#define MAX_THREADS 64

static CK_FUNCTION_LIST_PTR f;
static CK_SLOT_ID slot;
static CK_OBJECT_HANDLE key;
static CK_MECHANISM mech;
static CK_BYTE data[32];
static double run_seconds = 3.0;
static long iterations = 0;
static atomic_int stop;
static atomic_int failed;
static pthread_barrier_t barrier;

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

static CK_RV sign_once(CK_SESSION_HANDLE s) {
  CK_BYTE sig[1024];
  CK_ULONG sig_len = sizeof(sig);
  CK_RV rv = f->C_SignInit(s, &mech, key);
  if (rv != CKR_OK)
    return rv;
  return f->C_Sign(s, data, sizeof(data), sig, &sig_len);
}

static void *work(void *p) {
  worker *w = p;
  CK_RV rv = sign_once(w->s); /* warm-up, not counted */
  if (rv != CKR_OK) {
    fprintf(stderr, "kvp11-bench: warm-up sign failed: 0x%lx\n", (unsigned long)rv);
    atomic_store(&failed, 1);
  }
  pthread_barrier_wait(&barrier);
  if (atomic_load(&failed))
    return NULL;
  if (iterations > 0) {
    for (long i = 0; i < iterations; i++) {
      if ((rv = sign_once(w->s)) != CKR_OK)
        goto fail;
      w->ops++;
    }
    return NULL;
  }
  while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
    if ((rv = sign_once(w->s)) != CKR_OK)
      goto fail;
    w->ops++;
  }
  return NULL;
fail:
  fprintf(stderr, "kvp11-bench: sign failed: 0x%lx\n", (unsigned long)rv);
  atomic_store(&failed, 1);
  return NULL;
}

static int label_eq(const unsigned char *field, size_t n, const char *want) {
  size_t l = strlen(want);
  if (l > n || memcmp(field, want, l) != 0)
    return 0;
  for (size_t i = l; i < n; i++)
    if (field[i] != ' ')
      return 0;
  return 1;
}

static void usage(void) {
  fprintf(stderr, "usage: kvp11-bench -m MODULE -t TOKEN_LABEL -k KEY_LABEL [-p PIN] [-T THREADS] "
                  "[-s SECONDS | -n ITERATIONS] [-q]\n");
  exit(2);
}

int main(int argc, char **argv) {
  const char *module = NULL, *token = NULL, *label = NULL, *pin = NULL;
  int threads = 1, quiet = 0, opt;
  while ((opt = getopt(argc, argv, "m:t:k:p:T:s:n:q")) != -1) {
    switch (opt) {
    case 'm': module = optarg; break;
    case 't': token = optarg; break;
    case 'k': label = optarg; break;
    case 'p': pin = optarg; break;
    case 'T': threads = atoi(optarg); break;
    case 's': run_seconds = atof(optarg); break;
    case 'n': iterations = atol(optarg); break;
    case 'q': quiet = 1; break;
    default: usage();
    }
  }
  if (!module || !token || !label || threads < 1 || threads > MAX_THREADS || run_seconds <= 0)
    usage();

  void *dl = dlopen(module, RTLD_NOW | RTLD_LOCAL);
  if (!dl) {
    fprintf(stderr, "kvp11-bench: %s\n", dlerror());
    return 1;
  }
  CK_C_GetFunctionList gfl;
  void *sym = dlsym(dl, "C_GetFunctionList");
  memcpy(&gfl, &sym, sizeof(gfl));
  if (!gfl || gfl(&f) != CKR_OK) {
    fprintf(stderr, "kvp11-bench: %s: no usable C_GetFunctionList\n", module);
    return 1;
  }
  CK_C_INITIALIZE_ARGS ia;
  memset(&ia, 0, sizeof(ia));
  ia.flags = CKF_OS_LOCKING_OK;
  CK_RV rv = f->C_Initialize(&ia);
  if (rv != CKR_OK) {
    fprintf(stderr, "kvp11-bench: C_Initialize: 0x%lx\n", (unsigned long)rv);
    return 1;
  }

  CK_SLOT_ID slots[256];
  CK_ULONG n = 256;
  int found = 0;
  if ((rv = f->C_GetSlotList(CK_TRUE, slots, &n)) != CKR_OK) {
    fprintf(stderr, "kvp11-bench: C_GetSlotList: 0x%lx\n", (unsigned long)rv);
    return 1;
  }
  for (CK_ULONG i = 0; i < n && !found; i++) {
    CK_TOKEN_INFO ti;
    if (f->C_GetTokenInfo(slots[i], &ti) == CKR_OK && label_eq(ti.label, sizeof(ti.label), token)) {
      slot = slots[i];
      found = 1;
    }
  }
  if (!found) {
    fprintf(stderr, "kvp11-bench: no token labelled '%s' in %s\n", token, module);
    return 1;
  }

  worker w[MAX_THREADS];
  memset(w, 0, sizeof(w));
  for (int i = 0; i < threads; i++) {
    if ((rv = f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &w[i].s)) != CKR_OK) {
      fprintf(stderr, "kvp11-bench: C_OpenSession: 0x%lx\n", (unsigned long)rv);
      return 1;
    }
  }
  if (pin) {
    rv = f->C_Login(w[0].s, CKU_USER, (CK_UTF8CHAR_PTR)pin, (CK_ULONG)strlen(pin));
    /* not fatal: a module with an unattended PIN may refuse or ignore it;
     * the key search below says so if the login was needed */
    if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN)
      fprintf(stderr, "kvp11-bench: warning: C_Login: 0x%lx\n", (unsigned long)rv);
  }

  CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
  CK_ATTRIBUTE tmpl[2] = {{CKA_CLASS, &cls, sizeof(cls)},
                          {CKA_LABEL, (void *)label, (CK_ULONG)strlen(label)}};
  CK_ULONG cnt = 0;
  if (f->C_FindObjectsInit(w[0].s, tmpl, 2) != CKR_OK ||
      f->C_FindObjects(w[0].s, &key, 1, &cnt) != CKR_OK || cnt != 1) {
    fprintf(stderr, "kvp11-bench: no private key labelled '%s' (log in with -p?)\n", label);
    return 1;
  }
  f->C_FindObjectsFinal(w[0].s);
  CK_KEY_TYPE kt = 0;
  CK_ATTRIBUTE ka = {CKA_KEY_TYPE, &kt, sizeof(kt)};
  if (f->C_GetAttributeValue(w[0].s, key, &ka, 1) != CKR_OK) {
    fprintf(stderr, "kvp11-bench: cannot read CKA_KEY_TYPE of '%s'\n", label);
    return 1;
  }
  const char *mname;
  if (kt == CKK_RSA) {
    mech.mechanism = CKM_SHA256_RSA_PKCS;
    mname = "CKM_SHA256_RSA_PKCS";
  } else if (kt == CKK_EC) {
    mech.mechanism = CKM_ECDSA;
    mname = "CKM_ECDSA";
  } else {
    fprintf(stderr, "kvp11-bench: key '%s' is neither RSA nor EC\n", label);
    return 1;
  }
  for (size_t i = 0; i < sizeof(data); i++)
    data[i] = (CK_BYTE)(i * 7 + 1);

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
  for (int i = 0; i < threads; i++)
    f->C_CloseSession(w[i].s);
  f->C_Finalize(NULL);
  if (atomic_load(&failed))
    return 1;
  double rate = secs > 0 ? (double)ops / secs : 0;
  double cpu_us = ops > 0 ? cpu * 1e6 / (double)ops : 0;
  if (!quiet)
    printf("%s: key %s (%s), %d thread(s): %ld signs in %.2f s = %.1f signs/s\n", module, label,
           mname, threads, ops, secs, rate);
  printf("RESULT module=%s key=%s mech=%s threads=%d ops=%ld seconds=%.3f ops_per_sec=%.1f cpu_us_per_op=%.1f\n",
         module, label, mname, threads, ops, secs, rate, cpu_us);
  return 0;
}
