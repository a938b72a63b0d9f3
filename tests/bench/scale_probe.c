/*
 * kvp11-scale-probe: the measurements of tests/bench/scale.sh, through any
 * PKCS#11 module loaded with dlopen (as an application loads it).
 *
 *   kvp11-scale-probe init MODULE
 *     dlopen + C_GetFunctionList + C_Initialize + C_GetSlotList + C_GetTokenInfo
 *     + C_OpenSession. Prints init_ms (C_Initialize alone), session_ms (dlopen
 *     to the first session), rss_before_kb (before dlopen), rss_kb (after).
 *   kvp11-scale-probe find MODULE TOKEN CERTDIR PREFIX N [K]
 *     K (default 200) searches each, on rows never looked at before: by
 *     CKA_LABEL (PREFIX<i>), by CKA_ID (from CERTDIR/PREFIX<i>.pem), by
 *     CKO_CERTIFICATE + CKA_LABEL. Prints the median and the worst, in ms, of
 *     C_FindObjectsInit + C_FindObjects + C_FindObjectsFinal.
 *   kvp11-scale-probe reload MODULE TOKEN PIN KEY LABEL CMD
 *     A signer thread signs with private key KEY (CKM_ECDSA) on its own session
 *     without pause; the main thread runs CMD (sh -c; it registers LABEL),
 *     then searches LABEL until found. Prints tool_ms (CMD's run time),
 *     visible_ms (CMD's exit to found), sign_max_ms (the signer's worst sign
 *     among those that ended after CMD started, until found) and
 *     sign_max_before_ms (its worst in the 300 ms before CMD started).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/pem.h>
#include <openssl/sha.h>
#include <openssl/x509.h>
#include <p11-kit/pkcs11.h>

#define PROBE_NAME "kvp11-scale-probe"
#include "probe_util.h"

static CK_FUNCTION_LIST_PTR f;

static long rss_kb(void)
{
  char line[256];
  long kb = -1;
  FILE *fp = fopen("/proc/self/status", "r");
  while (fp != NULL && fgets(line, sizeof(line), fp) != NULL)
    if (sscanf(line, "VmRSS: %ld", &kb) == 1)
      break;
  if (fp != NULL)
    fclose(fp);
  return kb;
}

/* dlopen + C_GetFunctionList; exits on failure. */
static void get_functions(const char *module)
{
  CK_C_GetFunctionList gfl = NULL;
  void *h = dlopen(module, RTLD_NOW | RTLD_LOCAL);
  void *sym = h ? dlsym(h, "C_GetFunctionList") : NULL;

  memcpy(&gfl, &sym, sizeof(gfl));
  if (gfl == NULL || gfl(&f) != CKR_OK) {
    fprintf(stderr, "kvp11-scale-probe: %s: no usable C_GetFunctionList\n", module);
    exit(1);
  }
}

static void load(const char *module)
{
  CK_C_INITIALIZE_ARGS args = {.flags = CKF_OS_LOCKING_OK};
  CK_RV rv;

  get_functions(module);
  if ((rv = f->C_Initialize(&args)) != CKR_OK)
    die("C_Initialize", rv);
}

static CK_SESSION_HANDLE open_session(CK_SLOT_ID slot)
{
  CK_SESSION_HANDLE s;
  CK_RV rv = f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s);
  if (rv != CKR_OK)
    die("C_OpenSession", rv);
  return s;
}

static CK_ULONG find(CK_SESSION_HANDLE s, CK_ATTRIBUTE *t, CK_ULONG n, CK_OBJECT_HANDLE *h)
{
  CK_OBJECT_HANDLE buf[16];
  CK_ULONG count = 0;
  CK_RV rv = f->C_FindObjectsInit(s, t, n);
  if (rv == CKR_OK)
    rv = f->C_FindObjects(s, h ? h : buf, 16, &count);
  if (rv == CKR_OK)
    rv = f->C_FindObjectsFinal(s);
  if (rv != CKR_OK)
    die("find", rv);
  return count;
}

static int cmp_double(const void *a, const void *b)
{
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static int mode_init(const char *module)
{
  long before = rss_kb();
  double t0 = now_ms(), t1, t2;
  CK_TOKEN_INFO ti;
  CK_SLOT_ID slots[64];
  CK_ULONG n = 64;
  CK_C_INITIALIZE_ARGS args = {.flags = CKF_OS_LOCKING_OK};
  CK_RV rv;

  get_functions(module);
  t1 = now_ms();
  if ((rv = f->C_Initialize(&args)) != CKR_OK)
    die("C_Initialize", rv);
  t2 = now_ms();
  if ((rv = f->C_GetSlotList(CK_TRUE, slots, &n)) != CKR_OK || n == 0)
    die("C_GetSlotList", rv);
  if ((rv = f->C_GetTokenInfo(slots[0], &ti)) != CKR_OK)
    die("C_GetTokenInfo", rv);
  (void)open_session(slots[0]);
  printf("init_ms=%.2f session_ms=%.2f rss_before_kb=%ld rss_kb=%ld\n", t2 - t1, now_ms() - t0,
         before, rss_kb());
  return 0;
}

/* CKA_ID of a certificate file: SHA-1 of its subjectPublicKey bits. */
static void cert_id(const char *path, unsigned char id[SHA_DIGEST_LENGTH])
{
  FILE *fp = fopen(path, "r");
  X509 *x = fp ? PEM_read_X509(fp, NULL, NULL, NULL) : NULL;
  const ASN1_BIT_STRING *bits = x ? X509_get0_pubkey_bitstr(x) : NULL;

  if (fp != NULL)
    fclose(fp);
  if (bits == NULL) {
    fprintf(stderr, "kvp11-scale-probe: cannot read %s\n", path);
    exit(1);
  }
  SHA1(bits->data, (size_t)bits->length, id);
  X509_free(x);
}

static void report(const char *what, double *ms, int k)
{
  qsort(ms, (size_t)k, sizeof(*ms), cmp_double);
  printf("%s_median_ms=%.3f %s_max_ms=%.3f ", what, ms[k / 2], what, ms[k - 1]);
}

static int mode_find(char **argv, int argc)
{
  const char *dir = argv[4], *prefix = argv[5];
  long n = strtol(argv[6], NULL, 10);
  int k = argc > 7 ? atoi(argv[7]) : 200;
  double *ms = calloc((size_t)k, sizeof(*ms));
  CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
  CK_SESSION_HANDLE s;
  char label[256], path[4096];
  unsigned char id[SHA_DIGEST_LENGTH];

  if (n < 3 * (long)k || ms == NULL) {
    fprintf(stderr, "kvp11-scale-probe: find needs N >= 3 K\n");
    return 2;
  }
  load(argv[2]);
  s = open_session(token_slot(f, argv[3]));
  for (int q = 0; q < 3; q++) {
    for (int j = 0; j < k; j++) {
      long i = ((long)(3 * j + q) * 7919L) % n; /* rows never looked at before */
      CK_ATTRIBUTE t[2] = {{CKA_LABEL, label, 0}, {CKA_CLASS, &cls, sizeof(cls)}};
      CK_ULONG want = 2, nt = 1, got;
      double t0;
      snprintf(label, sizeof(label), "%s%ld", prefix, i);
      t[0].ulValueLen = strlen(label);
      if (q == 1) {
        snprintf(path, sizeof(path), "%s/%s.pem", dir, label);
        cert_id(path, id);
        t[0].type = CKA_ID;
        t[0].pValue = id;
        t[0].ulValueLen = sizeof(id);
      } else if (q == 2) {
        nt = 2;
        want = 1;
      }
      t0 = now_ms();
      got = find(s, t, nt, NULL);
      ms[j] = now_ms() - t0;
      if (got != want) {
        fprintf(stderr, "kvp11-scale-probe: %s: %lu objects, want %lu\n", label, got, want);
        return 1;
      }
    }
    report(q == 0 ? "label" : q == 1 ? "id" : "class_label", ms, k);
  }
  printf("\n");
  free(ms);
  return 0;
}

/* ---- reload under a signer ---- */

static CK_OBJECT_HANDLE sign_key;
static atomic_int stop_signer;
static double window_start = 1e300; /* signs starting after this count as "during" */
static double worst_before, worst_during;
static pthread_mutex_t worst_lock = PTHREAD_MUTEX_INITIALIZER;

static void *signer(void *p)
{
  CK_SESSION_HANDLE s = *(CK_SESSION_HANDLE *)p;
  CK_MECHANISM mech = {CKM_ECDSA, NULL, 0};
  CK_BYTE digest[32] = {1}, sig[256];

  while (!atomic_load(&stop_signer)) {
    CK_ULONG len = sizeof(sig);
    double t0 = now_ms(), d;
    CK_RV rv = f->C_SignInit(s, &mech, sign_key);
    if (rv == CKR_OK)
      rv = f->C_Sign(s, digest, sizeof(digest), sig, &len);
    if (rv != CKR_OK)
      die("C_Sign", rv);
    d = now_ms() - t0;
    pthread_mutex_lock(&worst_lock);
    if (t0 + d >= window_start) { /* ended after the window opened */
      if (d > worst_during)
        worst_during = d;
    } else if (d > worst_before) {
      worst_before = d;
    }
    pthread_mutex_unlock(&worst_lock);
  }
  return NULL;
}

static int mode_reload(char **argv)
{
  const char *label = argv[6], *cmd = argv[7];
  CK_OBJECT_CLASS priv = CKO_PRIVATE_KEY;
  CK_ATTRIBUTE kt[] = {{CKA_CLASS, &priv, sizeof(priv)}, {CKA_LABEL, argv[5], strlen(argv[5])}};
  CK_ATTRIBUTE lt = {CKA_LABEL, (void *)label, strlen(label)};
  CK_SESSION_HANDLE s, ss;
  CK_SLOT_ID slot;
  pthread_t th;
  double t_start, t_exit, t_found;
  CK_RV rv;

  load(argv[2]);
  slot = token_slot(f, argv[3]);
  s = open_session(slot);
  ss = open_session(slot);
  rv = f->C_Login(ss, CKU_USER, (CK_UTF8CHAR_PTR)argv[4], strlen(argv[4]));
  if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN)
    die("C_Login", rv);
  if (find(ss, kt, 2, &sign_key) != 1)
    die("the signing key is not found", 0);
  if (find(s, &lt, 1, NULL) != 0)
    die("the label to add is registered already", 0);
  pthread_create(&th, NULL, signer, &ss);
  usleep(300 * 1000); /* the signer warms up; its worst sign so far is the "before" figure */
  pthread_mutex_lock(&worst_lock);
  worst_before = 0;
  pthread_mutex_unlock(&worst_lock);
  usleep(300 * 1000);
  pthread_mutex_lock(&worst_lock);
  window_start = t_start = now_ms();
  pthread_mutex_unlock(&worst_lock);
  if (system(cmd) != 0) {
    fprintf(stderr, "kvp11-scale-probe: the command failed: %s\n", cmd);
    return 1;
  }
  t_exit = now_ms();
  while (find(s, &lt, 1, NULL) == 0) {
    if (now_ms() - t_exit > 600000)
      die("the new certificate never appeared", 0);
  }
  t_found = now_ms();
  atomic_store(&stop_signer, 1);
  pthread_join(th, NULL);
  printf("tool_ms=%.1f visible_ms=%.3f sign_max_ms=%.3f sign_max_before_ms=%.3f\n",
         t_exit - t_start, t_found - t_exit, worst_during, worst_before);
  return 0;
}

int main(int argc, char **argv)
{
  if (argc >= 3 && strcmp(argv[1], "init") == 0)
    return mode_init(argv[2]);
  if (argc >= 7 && strcmp(argv[1], "find") == 0)
    return mode_find(argv, argc);
  if (argc == 8 && strcmp(argv[1], "reload") == 0)
    return mode_reload(argv);
  fprintf(stderr, "usage: kvp11-scale-probe init MODULE\n"
                  "       kvp11-scale-probe find MODULE TOKEN CERTDIR PREFIX N [K]\n"
                  "       kvp11-scale-probe reload MODULE TOKEN PIN KEY LABEL CMD\n");
  return 2;
}
