/*
 * kv/faults: every fault the Key Vault emulator can inject x every operation, through
 * libkvp11.so's PKCS#11 interface only (dlopen + C_GetFunctionList).
 *
 * Each cell: prepare the module (warm or cold, see the operations below), reset the
 * emulator's counters, add one fault rule (times = 1: transient, times = -1: persistent),
 * run the operation, then check
 *   - the CK_RV against the expected one (docs/keyvault.md, "Errors" and "Retries"),
 *   - the elapsed time against the bound T + S (T = timeout_ms: one Key Vault call,
 *     challenge, token, request and every retry, never takes longer; S = slack for the
 *     calls the fault does not touch) and, where the fault implies one, a lower bound,
 *   - the emulator's request counters (attempts; see expect() for the formulas),
 *   - that the module still works: with the fault cleared, a C_Sign succeeds.
 * A watchdog (alarm) turns a hang into a failure naming the cell. Known backend bugs are
 * listed in KNOWN[] with a comment: reported as "known failure" (not failing the run);
 * a known failure that passes fails the run, so that the list (and docs/testing.md) is
 * updated with the fix.
 *
 * Environment: KVP11_KV_DIR (the kv_emulator fixture, with the kv_registry registry),
 * KVP11_MODULE (libkvp11.so). Optional: KVP11_FAULTS_TIMEOUT_MS (T, default 800),
 * KVP11_FAULTS_MAX_RETRIES (M, default 2), KVP11_FAULTS_SLACK_MS (S, default 600;
 * raise T and S under valgrind), KVP11_FAULTS_ONLY (substring of "fault/times/op" to run
 * a subset), KVP11_TEST_NO_DLCLOSE (keep the module loaded, for valgrind stacks).
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <p11-kit/pkcs11.h>

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* ---------------------------------------------------------------- settings */

/*
 * Two configurations (the module reads KVP11_CONF at C_Initialize): timeout_ms = T for every
 * row but 429-with-Retry-After, which needs room for a 1 s wait: T_RA = T + 1000. T is kept
 * small so that the rows that wait for the time limit (delay > T) are quick.
 */
static long T_MS = 800;       /* timeout_ms of the test's kvp11.conf */
static long T_RA_MS;          /* timeout_ms for the Retry-After rows: T + 1000 */
static long M_RETRIES = 2;    /* max_retries */
static long SLACK_MS = 600;   /* S: time outside the faulted Key Vault call */
static const long RA_S = 1;   /* Retry-After of the 429-with-Retry-After rows */
static const long DELAY_SHORT_MS = 150;
static long DELAY_LONG_MS;    /* T + 500 */

static char g_kvdir[900], g_url[128], g_ca[1000], g_tmp[256], g_log[400];
static char g_conf[400], g_conf_ra[400];
static const char *g_conf_used;
static const char *g_only;

/* ---------------------------------------------------------------- watchdog */

static char g_cell[160] = "setup";

static void on_alarm(int sig)
{
  static const char a[] = "\nkv/faults: WATCHDOG: no progress in cell ";
  static const char b[] = " (a hang): aborted\n";
  ssize_t r;
  (void)sig;
  r = write(2, a, sizeof(a) - 1);
  r = write(2, g_cell, strlen(g_cell));
  r = write(2, b, sizeof(b) - 1);
  (void)r;
  _exit(1);
}

static void watchdog(long ms)
{
  alarm((unsigned)(ms / 1000 + 10));
}

/* ---------------------------------------------------------------- time */

static double now_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}

/* ---------------------------------------------------------------- emulator control */

struct buf {
  char *p;
  size_t n;
};

static size_t buf_add(char *p, size_t s, size_t n, void *u)
{
  struct buf *b = u;
  char *q = realloc(b->p, b->n + s * n + 1);
  if (q == NULL)
    return 0;
  memcpy(q + b->n, p, s * n);
  b->n += s * n;
  q[b->n] = '\0';
  b->p = q;
  return s * n;
}

static CURL *g_emu;

static json_t *emu(const char *method, const char *path, const char *body)
{
  char url[512];
  struct buf b = {NULL, 0};
  json_t *out = NULL;
  struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
  long status = 0;

  if (g_emu == NULL)
    g_emu = curl_easy_init();
  curl_easy_reset(g_emu);
  snprintf(url, sizeof(url), "%s%s", g_url, path);
  curl_easy_setopt(g_emu, CURLOPT_URL, url);
  curl_easy_setopt(g_emu, CURLOPT_CAINFO, g_ca);
  curl_easy_setopt(g_emu, CURLOPT_CUSTOMREQUEST, method);
  curl_easy_setopt(g_emu, CURLOPT_HTTPHEADER, h);
  curl_easy_setopt(g_emu, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(g_emu, CURLOPT_POSTFIELDS, body != NULL ? body : "");
  if (strcmp(method, "GET") == 0)
    curl_easy_setopt(g_emu, CURLOPT_HTTPGET, 1L);
  curl_easy_setopt(g_emu, CURLOPT_WRITEFUNCTION, buf_add);
  curl_easy_setopt(g_emu, CURLOPT_WRITEDATA, &b);
  curl_easy_setopt(g_emu, CURLOPT_TIMEOUT, 10L);
  if (curl_easy_perform(g_emu) != CURLE_OK)
    fprintf(stderr, "kv/faults: emulator control %s %s failed\n", method, path);
  curl_easy_getinfo(g_emu, CURLINFO_RESPONSE_CODE, &status);
  if (b.p != NULL && status == 200)
    out = json_loads(b.p, 0, NULL);
  free(b.p);
  curl_slist_free_all(h);
  return out;
}

static int emu_ok(const char *method, const char *path, const char *body)
{
  json_t *j = emu(method, path, body);
  int ok = j != NULL;
  json_decref(j);
  return ok;
}

typedef struct counts {
  long ep, token, total;
} counts;

static int emu_counts(const char *ep, counts *c)
{
  json_t *j = emu("GET", "/_emu/counters", NULL), *cs;
  if (j == NULL)
    return -1;
  cs = json_object_get(j, "counters");
  c->ep = (long)json_integer_value(json_object_get(cs, ep));
  c->token = (long)json_integer_value(json_object_get(cs, "token"));
  c->total = (long)json_integer_value(json_object_get(j, "total"));
  json_decref(j);
  return 0;
}

/* ---------------------------------------------------------------- the module */

static void *g_dl;
static CK_FUNCTION_LIST_PTR P;
static int g_initialized;
static int g_rsa_open, g_ec_open; /* used since C_Initialize: key open, token fetched */
static CK_SLOT_ID g_slot;
static CK_SESSION_HANDLE g_sess;
static CK_OBJECT_HANDLE h_rsa, h_ec, h_rsa_pub, h_ec_pub, h_rsa_cert;
static EVP_PKEY *pk_rsa, *pk_ec; /* from the certificates, read once */
static unsigned char g_ec_sig[64];
static CK_ULONG g_ec_sig_len;
static const char TOKEN_LABEL[] = "kvp11 kv";
static const unsigned char MSG[] = "kvp11 fault matrix: the message that is signed";

static CK_OBJECT_HANDLE find_one(CK_OBJECT_CLASS cls, const char *label)
{
  CK_ATTRIBUTE t[2] = {{CKA_CLASS, &cls, sizeof(cls)},
                       {CKA_LABEL, (void *)label, (CK_ULONG)strlen(label)}};
  CK_OBJECT_HANDLE h[2];
  CK_ULONG n = 0;
  if (P->C_FindObjectsInit(g_sess, t, 2) != CKR_OK)
    return CK_INVALID_HANDLE;
  if (P->C_FindObjects(g_sess, h, 2, &n) != CKR_OK)
    n = 0;
  P->C_FindObjectsFinal(g_sess);
  return n == 1 ? h[0] : CK_INVALID_HANDLE;
}

/* C_Initialize, the slot of account "kvp11 kv", a session and the object handles. */
static CK_RV mod_init(void)
{
  CK_C_INITIALIZE_ARGS args;
  CK_SLOT_ID slots[16];
  CK_ULONG n = ARRAY_SIZE(slots), i;
  CK_RV rv;

  memset(&args, 0, sizeof(args));
  args.flags = CKF_OS_LOCKING_OK;
  rv = P->C_Initialize(&args);
  if (rv != CKR_OK)
    return rv;
  g_initialized = 1;
  rv = P->C_GetSlotList(CK_TRUE, slots, &n);
  if (rv != CKR_OK)
    return rv;
  g_slot = (CK_SLOT_ID)-1;
  for (i = 0; i < n; i++) {
    CK_TOKEN_INFO ti;
    char label[33];
    size_t l;
    if (P->C_GetTokenInfo(slots[i], &ti) != CKR_OK)
      continue;
    memcpy(label, ti.label, 32);
    label[32] = '\0';
    for (l = 32; l > 0 && label[l - 1] == ' '; l--)
      label[l - 1] = '\0';
    if (strcmp(label, TOKEN_LABEL) == 0)
      g_slot = slots[i];
  }
  if (g_slot == (CK_SLOT_ID)-1) {
    fprintf(stderr, "kv/faults: no token labelled '%s'\n", TOKEN_LABEL);
    return CKR_SLOT_ID_INVALID;
  }
  rv = P->C_OpenSession(g_slot, CKF_SERIAL_SESSION, NULL, NULL, &g_sess);
  if (rv != CKR_OK)
    return rv;
  h_rsa = find_one(CKO_PRIVATE_KEY, "rsa2048");
  h_ec = find_one(CKO_PRIVATE_KEY, "p256");
  h_rsa_pub = find_one(CKO_PUBLIC_KEY, "rsa2048");
  h_ec_pub = find_one(CKO_PUBLIC_KEY, "p256");
  h_rsa_cert = find_one(CKO_CERTIFICATE, "rsa2048");
  if (h_rsa == CK_INVALID_HANDLE || h_ec == CK_INVALID_HANDLE || h_rsa_pub == CK_INVALID_HANDLE ||
      h_ec_pub == CK_INVALID_HANDLE || h_rsa_cert == CK_INVALID_HANDLE) {
    fprintf(stderr, "kv/faults: the registry lacks rsa2048/p256 (did kv/register run?)\n");
    return CKR_OBJECT_HANDLE_INVALID;
  }
  return CKR_OK;
}

static void mod_fini(void)
{
  if (g_initialized)
    P->C_Finalize(NULL);
  g_initialized = 0;
  g_rsa_open = g_ec_open = 0;
}

static CK_RV mod_reinit(void)
{
  mod_fini();
  return mod_init();
}

static CK_RV mod_ensure(void)
{
  return g_initialized ? CKR_OK : mod_init();
}

/* Switch configuration: the next mod_ensure()/mod_reinit() initializes with it. */
static void use_conf(const char *conf)
{
  if (g_conf_used != NULL && strcmp(g_conf_used, conf) == 0)
    return;
  mod_fini();
  setenv("KVP11_CONF", conf, 1);
  g_conf_used = conf;
}

static EVP_PKEY *cert_pubkey(const char *label)
{
  CK_OBJECT_HANDLE h = find_one(CKO_CERTIFICATE, label);
  CK_ATTRIBUTE a = {CKA_VALUE, NULL, 0};
  unsigned char *der;
  const unsigned char *p;
  X509 *x;
  EVP_PKEY *k = NULL;
  if (h == CK_INVALID_HANDLE || P->C_GetAttributeValue(g_sess, h, &a, 1) != CKR_OK)
    return NULL;
  der = malloc(a.ulValueLen);
  if (der == NULL)
    return NULL;
  a.pValue = der;
  if (P->C_GetAttributeValue(g_sess, h, &a, 1) == CKR_OK) {
    p = der;
    x = d2i_X509(NULL, &p, (long)a.ulValueLen);
    if (x != NULL)
      k = X509_get_pubkey(x);
    X509_free(x);
  }
  free(der);
  return k;
}

/* ---------------------------------------------------------------- local checks (OpenSSL) */

static int verify_rsa(const unsigned char *sig, size_t len)
{
  EVP_MD_CTX *c = EVP_MD_CTX_new();
  int ok = c != NULL && EVP_DigestVerifyInit(c, NULL, EVP_sha256(), NULL, pk_rsa) == 1 &&
           EVP_DigestVerify(c, sig, len, MSG, sizeof(MSG) - 1) == 1;
  EVP_MD_CTX_free(c);
  return ok;
}

static int verify_ec(const unsigned char *sig, size_t len)
{
  ECDSA_SIG *es = ECDSA_SIG_new();
  unsigned char *der = NULL;
  int derlen, ok = 0;
  EVP_MD_CTX *c = EVP_MD_CTX_new();
  if (es == NULL || c == NULL || len != 64 ||
      ECDSA_SIG_set0(es, BN_bin2bn(sig, 32, NULL), BN_bin2bn(sig + 32, 32, NULL)) != 1)
    goto out;
  derlen = i2d_ECDSA_SIG(es, &der);
  ok = derlen > 0 && EVP_DigestVerifyInit(c, NULL, EVP_sha256(), NULL, pk_ec) == 1 &&
       EVP_DigestVerify(c, der, (size_t)derlen, MSG, sizeof(MSG) - 1) == 1;
out:
  OPENSSL_free(der);
  ECDSA_SIG_free(es);
  EVP_MD_CTX_free(c);
  return ok;
}

static size_t encrypt_rsa(int oaep, const unsigned char *in, size_t inl, unsigned char *out)
{
  EVP_PKEY_CTX *c = EVP_PKEY_CTX_new(pk_rsa, NULL);
  size_t outl = 512;
  if (c == NULL || EVP_PKEY_encrypt_init(c) != 1)
    outl = 0;
  else if (oaep && (EVP_PKEY_CTX_set_rsa_padding(c, RSA_PKCS1_OAEP_PADDING) != 1 ||
                    EVP_PKEY_CTX_set_rsa_oaep_md(c, EVP_sha256()) != 1 ||
                    EVP_PKEY_CTX_set_rsa_mgf1_md(c, EVP_sha256()) != 1))
    outl = 0;
  else if (!oaep && EVP_PKEY_CTX_set_rsa_padding(c, RSA_PKCS1_PADDING) != 1)
    outl = 0;
  else if (EVP_PKEY_encrypt(c, out, &outl, in, inl) != 1)
    outl = 0;
  EVP_PKEY_CTX_free(c);
  return outl;
}

/* A CK_RV the module never returns here, for "the module said OK but the result is wrong". */
#define RV_BAD_RESULT ((CK_RV)0x8badf00dUL)

/* ---------------------------------------------------------------- PKCS#11 operations */

static CK_RV p11_sign(CK_OBJECT_HANDLE h, CK_MECHANISM_TYPE mt, int rsa)
{
  CK_MECHANISM m = {mt, NULL, 0};
  unsigned char sig[512];
  CK_ULONG len = sizeof(sig);
  CK_RV rv = P->C_SignInit(g_sess, &m, h);
  if (rv != CKR_OK)
    return rv;
  rv = P->C_Sign(g_sess, (CK_BYTE_PTR)MSG, sizeof(MSG) - 1, sig, &len);
  if (rv != CKR_OK)
    return rv;
  if (rsa ? !verify_rsa(sig, len) : !verify_ec(sig, len)) {
    fprintf(stderr, "kv/faults: %s: C_Sign returned CKR_OK with a signature that does not "
                    "verify\n", g_cell);
    return RV_BAD_RESULT;
  }
  if (rsa) {
    g_rsa_open = 1;
  } else {
    g_ec_open = 1;
    memcpy(g_ec_sig, sig, len);
    g_ec_sig_len = len;
  }
  return CKR_OK;
}

static CK_RV p11_decrypt(int oaep)
{
  CK_RSA_PKCS_OAEP_PARAMS op = {CKM_SHA256, CKG_MGF1_SHA256, CKZ_DATA_SPECIFIED, NULL, 0};
  CK_MECHANISM m = {oaep ? CKM_RSA_PKCS_OAEP : CKM_RSA_PKCS, oaep ? &op : NULL,
                    oaep ? sizeof(op) : 0};
  unsigned char secret[32], ct[512], pt[512];
  size_t ctl;
  CK_ULONG ptl = sizeof(pt);
  CK_RV rv;

  if (RAND_bytes(secret, sizeof(secret)) != 1)
    return CKR_GENERAL_ERROR;
  ctl = encrypt_rsa(oaep, secret, sizeof(secret), ct);
  if (ctl == 0)
    return CKR_GENERAL_ERROR;
  rv = P->C_DecryptInit(g_sess, &m, h_rsa);
  if (rv != CKR_OK)
    return rv;
  rv = P->C_Decrypt(g_sess, ct, (CK_ULONG)ctl, pt, &ptl);
  if (rv != CKR_OK)
    return rv;
  g_rsa_open = 1;
  if (ptl != sizeof(secret) || memcmp(pt, secret, sizeof(secret)) != 0) {
    fprintf(stderr, "kv/faults: %s: C_Decrypt returned CKR_OK with the wrong plaintext\n",
            g_cell);
    return RV_BAD_RESULT;
  }
  return CKR_OK;
}

/* Local functions only: a fresh C_Initialize, slots, tokens, objects, attributes, and the
 * public-key operations (encrypt, verify), which kvp11 does with OpenSSL. */
static CK_RV p11_local(void)
{
  CK_SLOT_ID slots[16];
  CK_ULONG n = ARRAY_SIZE(slots), nobj = 0;
  CK_OBJECT_HANDLE objs[128];
  CK_ATTRIBUTE a = {CKA_VALUE, NULL, 0};
  CK_MECHANISM ecm = {CKM_ECDSA_SHA256, NULL, 0};
  CK_RSA_PKCS_OAEP_PARAMS op = {CKM_SHA256, CKG_MGF1_SHA256, CKZ_DATA_SPECIFIED, NULL, 0};
  CK_MECHANISM rm = {CKM_RSA_PKCS_OAEP, &op, sizeof(op)};
  unsigned char ct[512];
  CK_ULONG ctl = sizeof(ct);
  CK_RV rv;

  if ((rv = mod_reinit()) != CKR_OK) /* C_Initialize, C_GetSlotList, C_OpenSession, finds */
    return rv;
  if ((rv = P->C_GetSlotList(CK_FALSE, slots, &n)) != CKR_OK)
    return rv;
  if ((rv = P->C_FindObjectsInit(g_sess, NULL, 0)) != CKR_OK)
    return rv;
  rv = P->C_FindObjects(g_sess, objs, ARRAY_SIZE(objs), &nobj);
  P->C_FindObjectsFinal(g_sess);
  if (rv != CKR_OK)
    return rv;
  if (nobj < 18) {
    fprintf(stderr, "kv/faults: %s: C_FindObjects found %lu objects, expected >= 18\n", g_cell,
            (unsigned long)nobj);
    return RV_BAD_RESULT;
  }
  if ((rv = P->C_GetAttributeValue(g_sess, h_rsa_cert, &a, 1)) != CKR_OK)
    return rv;
  if ((rv = P->C_EncryptInit(g_sess, &rm, h_rsa_pub)) != CKR_OK)
    return rv;
  if ((rv = P->C_Encrypt(g_sess, (CK_BYTE_PTR)MSG, 32, ct, &ctl)) != CKR_OK)
    return rv;
  if ((rv = P->C_VerifyInit(g_sess, &ecm, h_ec_pub)) != CKR_OK)
    return rv;
  return P->C_Verify(g_sess, (CK_BYTE_PTR)MSG, sizeof(MSG) - 1, g_ec_sig, g_ec_sig_len);
}

/* ---------------------------------------------------------------- the matrix */

typedef enum {
  OP_SIGN_RSA,  /* warm: C_SignInit + C_Sign, CKM_SHA256_RSA_PKCS, rsa2048 */
  OP_SIGN_EC,   /* warm: C_SignInit + C_Sign, CKM_ECDSA_SHA256, p256 */
  OP_DEC_OAEP,  /* warm: C_DecryptInit + C_Decrypt, CKM_RSA_PKCS_OAEP SHA-256, rsa2048 */
  OP_DEC_PKCS1, /* warm: C_DecryptInit + C_Decrypt, CKM_RSA_PKCS, rsa2048 */
  OP_OPEN,      /* fresh C_Initialize, vault warmed by a p256 sign; rsa2048's first use: its
                 * registry row holds version and public key, so only the sign goes out */
  OP_COLD,      /* fresh C_Initialize, nothing warm: challenge (the sign request without
                 * token and body: 401), token, sign */
  OP_TOKEN,     /* warm, tokens revoked: sign -> 401 -> token request -> sign */
  OP_LOCAL,     /* fresh C_Initialize + local functions; fault on every endpoint ("*") */
  OP_N
} op_id;

static const struct {
  const char *name;
  const char *ep;  /* endpoint the fault is put on */
  long base;       /* requests to ep without a fault */
  int reused;      /* ep's first request goes over a kept-alive connection */
  int warm_token;  /* a cached token is sent with ep's first request */
} OPS[OP_N] = {
    {"sign-rsa", "sign", 1, 1, 1},   {"sign-ec", "sign", 1, 1, 1},
    {"decrypt-oaep", "decrypt", 1, 1, 1}, {"decrypt-pkcs1", "decrypt", 1, 1, 1},
    {"open", "sign", 1, 1, 1},       {"cold", "sign", 2, 0, 0},
    {"token", "token", 1, 1, 0},     {"local", "*", 0, 0, 0},
};

typedef enum {
  F_429_RA, F_429, F_500, F_503, F_401, F_DROP, F_TRUNCATE, F_NONJSON, F_HUGE, F_DELAY_LONG,
  F_DELAY_SHORT, F_N
} fault_id;

static const char *FAULT_NAMES[F_N] = {"429+Retry-After", "429", "500", "503", "401", "drop",
                                       "truncate", "nonjson", "huge", "delay>timeout",
                                       "delay<timeout"};

static void fault_rule(fault_id f, const char *ep, int times, char *out, size_t outlen)
{
  char a[96];
  switch (f) {
  case F_429_RA: snprintf(a, sizeof(a), "\"status\":429,\"retryAfter\":%ld", RA_S); break;
  case F_429: snprintf(a, sizeof(a), "\"status\":429"); break;
  case F_500: snprintf(a, sizeof(a), "\"status\":500"); break;
  case F_503: snprintf(a, sizeof(a), "\"status\":503"); break;
  case F_401: snprintf(a, sizeof(a), "\"status\":401"); break;
  case F_DROP: snprintf(a, sizeof(a), "\"action\":\"drop\""); break;
  case F_TRUNCATE: snprintf(a, sizeof(a), "\"action\":\"truncate\""); break;
  case F_NONJSON: snprintf(a, sizeof(a), "\"action\":\"nonjson\""); break;
  case F_HUGE: snprintf(a, sizeof(a), "\"action\":\"huge\""); break;
  case F_DELAY_LONG:
    snprintf(a, sizeof(a), "\"action\":\"delay\",\"delayMs\":%ld", DELAY_LONG_MS);
    break;
  default: snprintf(a, sizeof(a), "\"action\":\"delay\",\"delayMs\":%ld", DELAY_SHORT_MS); break;
  }
  snprintf(out, outlen, "{\"endpoint\":\"%s\",%s,\"times\":%d}", ep, a, times);
}

typedef struct expect_t {
  CK_RV rv;
  long n_ep;      /* requests to the faulted endpoint */
  long n_ep_max;  /* ... at most (n_ep: at least); 0: exactly n_ep */
  int t_left;     /* 429 until the time is up: check that no further retry fitted */
  long n_token;   /* token requests, -1: not checked */
  long min_ms;    /* lower bound of the elapsed time (0: none) */
  long max_ms;    /* upper bound */
} expect_t;

/*
 * The documented outcome (docs/keyvault.md) and the attempts it implies, with
 *   T = timeout_ms (T_RA for the Retry-After rows), M = max_retries, RA = Retry-After (s),
 *   U = T/31 (backoff unit),
 *   base = requests to the endpoint without a fault (OPS[].base),
 *   reused = 1 when the first faulted request goes over a kept-alive connection:
 *            libcurl itself resends a request once on a fresh connection when a reused
 *            connection dies before any answer (the "drop" fault), and the emulator
 *            counts both.
 * Retryable faults (429, 500, 503, drop, truncated or non-JSON body):
 *   transient -> CKR_OK after one retry: base + 1 requests;
 *   persistent -> CKR_DEVICE_ERROR after 1 + M attempts (the backoff, at most
 *   1.2 U (2^M - 1), fits in T), drop: 1 + M + reused.
 * 429 is flow control, not a failure: it does not use up M, only the time. Persistent 429
 *   without Retry-After: retried while the next backoff step U 2^min(k, 4) (jitter 0.8..1.2)
 *   still fits in T: at least 1 + M attempts (as a 5xx), at most 1 + the number of steps at
 *   jitter 0.8 whose sum stays below T; and after n attempts it stopped only because step
 *   n - 1 did not fit: elapsed >= T - 1.2 U 2^min(n - 1, 4).
 * 429 with Retry-After RA: the k-th retry starts after k RA (plus request times) and only
 *   when it fits in T: persistent -> 1 + floor((T - 1) / (1000 RA)) attempts, no sooner
 *   than (attempts - 1) RA; transient -> CKR_OK, no sooner than RA.
 * A 429 also starts the vault-wide pacer (kv_http.c) for minutes: the module is initialized
 *   afresh after each 429 cell, so that every cell starts from the same state.
 * 401 with a cached token: the token is dropped, a new one requested, the request made
 *   once more: transient -> CKR_OK (base + 1, 1 token request); persistent -> DEVICE_ERROR
 *   (2 requests, 1 token request). 401 without a cached token (the challenge request of a
 *   cold start: no WWW-Authenticate) or from the token endpoint: CKR_DEVICE_ERROR, 1 request.
 * Body over 1 MiB: never retried: CKR_DEVICE_ERROR, 1 request, transient or not.
 * Delay > T: each attempt gets at most half the time left (and attempt_timeout_ms), so the
 *   first attempt is abandoned at T/2 and retried on a fresh connection while time is left:
 *   transient -> CKR_OK, base + 1 requests; persistent -> CKR_DEVICE_ERROR, base + 1 ..
 *   base + M requests; no sooner than T/2. Delay < T/2: CKR_OK, base
 *   requests, no sooner than the delay.
 * Elapsed time: every operation makes at most one Key Vault call that meets the fault, and
 *   such a call never takes longer than T: elapsed <= T + S.
 * Local functions: no request at all, CKR_OK, elapsed <= S.
 */
/* Backoff unit U of a call with time limit T (keyvault.c: 1 s from 31 s on, else T/31). */
static long backoff_unit(long T)
{
  return T >= 31000 ? 1000 : (T / 31 > 1 ? T / 31 : 1);
}

/* Backoff step k (0-based): U 2^min(k, 4), times the jitter factor jit/1000. */
static long backoff_step(long T, int k, long jit)
{
  return (backoff_unit(T) << (k < 4 ? k : 4)) * jit / 1000;
}

/* How many backoff steps (each at jitter jit/1000, requests taking no time) end before T. */
static long backoff_steps_within(long T, long jit)
{
  long sum = 0, k;
  for (k = 0; k < 1000; k++) {
    sum += backoff_step(T, (int)k, jit);
    if (sum >= T)
      break;
  }
  return k;
}

static expect_t expect(fault_id f, int persistent, op_id op)
{
  expect_t e;
  long base = OPS[op].base, M = M_RETRIES, T = f == F_429_RA ? T_RA_MS : T_MS;
  long ra_retries = (T - 1) / (RA_S * 1000);

  e.rv = CKR_OK;
  e.n_ep = base;
  e.n_token = op == OP_COLD || op == OP_TOKEN ? -1 : 0;
  e.min_ms = 0;
  e.max_ms = T + SLACK_MS;
  e.n_ep_max = 0;
  e.t_left = 0;
  if (op == OP_LOCAL) {
    e.n_ep = 0;
    e.n_token = 0;
    e.max_ms = SLACK_MS;
    return e;
  }
  switch (f) {
  case F_429:
    if (!persistent) {
      e.n_ep = base + 1;
    } else {
      /* not bounded by M: retried while the next backoff step fits in T */
      e.rv = CKR_DEVICE_ERROR;
      e.n_ep = 1 + M;
      e.n_ep_max = 1 + backoff_steps_within(T, 800);
      e.t_left = 1;
    }
    break;
  case F_500:
  case F_503:
  case F_TRUNCATE:
  case F_NONJSON:
  case F_DROP:
    if (!persistent) {
      e.n_ep = base + 1;
    } else {
      e.rv = CKR_DEVICE_ERROR;
      e.n_ep = 1 + M + (f == F_DROP ? OPS[op].reused : 0);
    }
    break;
  case F_429_RA:
    if (!persistent) {
      e.n_ep = base + 1;
      e.min_ms = RA_S * 1000;
    } else {
      e.rv = CKR_DEVICE_ERROR;
      e.n_ep = 1 + ra_retries;
      e.min_ms = (e.n_ep - 1) * RA_S * 1000;
    }
    break;
  case F_401:
    if (OPS[op].warm_token) {
      e.n_ep = base + 1;
      e.n_token = 1;
      if (persistent)
        e.rv = CKR_DEVICE_ERROR;
    } else {
      e.rv = CKR_DEVICE_ERROR;
      e.n_ep = 1;
    }
    break;
  case F_HUGE:
    e.rv = CKR_DEVICE_ERROR;
    e.n_ep = 1;
    break;
  case F_DELAY_LONG:
    /* the retry after the abandoned attempt succeeds unless it is delayed too */
    e.rv = persistent ? CKR_DEVICE_ERROR : CKR_OK;
    e.n_ep = base + 1;
    e.n_ep_max = persistent ? base + M : 0;
    e.min_ms = T_MS / 2 - 50;
    break;
  case F_DELAY_SHORT:
    e.min_ms = DELAY_SHORT_MS;
    break;
  default:
    break;
  }
  return e;
}

/*
 * Known backend bugs: the cell runs and is reported, but does not fail the run.
 * Remove the line when the bug is fixed (the cell then fails as "unexpectedly passed").
 */
static const struct {
  fault_id f;
  int times;
  op_id op;
  const char *why;
} KNOWN[] = {
    /* none: the two cells of kv_do_challenge() (non-JSON 2xx on the cold-start request
     * not retried) pass since it retries them like every other request */
    {F_N, 0, OP_N, NULL},
};

static const char *known_failure(fault_id f, int times, op_id op)
{
  size_t i;
  for (i = 0; i < ARRAY_SIZE(KNOWN); i++)
    if (KNOWN[i].why != NULL && KNOWN[i].f == f && KNOWN[i].times == times && KNOWN[i].op == op)
      return KNOWN[i].why;
  return NULL;
}

/* ---------------------------------------------------------------- one cell */

static const char *rv_name(CK_RV rv)
{
  switch (rv) {
  case CKR_OK: return "OK";
  case CKR_DEVICE_ERROR: return "DEVICE_ERROR";
  case CKR_GENERAL_ERROR: return "GENERAL_ERROR";
  case CKR_FUNCTION_FAILED: return "FUNCTION_FAILED";
  case CKR_KEY_HANDLE_INVALID: return "KEY_HANDLE_INVALID";
  case CKR_KEY_FUNCTION_NOT_PERMITTED: return "KEY_FUNCTION_NOT_PERMITTED";
  case CKR_DATA_INVALID: return "DATA_INVALID";
  case CKR_ENCRYPTED_DATA_INVALID: return "ENCRYPTED_DATA_INVALID";
  case CKR_OPERATION_ACTIVE: return "OPERATION_ACTIVE";
  case CKR_DEVICE_REMOVED: return "DEVICE_REMOVED";
  case RV_BAD_RESULT: return "(wrong result)";
  default: return "?";
  }
}

static long log_size(void)
{
  struct stat st;
  return stat(g_log, &st) == 0 ? (long)st.st_size : 0;
}

/* The module's log lines between offsets from and to (at most the last 3000 bytes). */
static void dump_log(long from, long to)
{
  FILE *f = fopen(g_log, "r");
  char buf[3001];
  size_t n;
  if (f == NULL)
    return;
  if (to - from > 3000)
    from = to - 3000;
  fseek(f, from, SEEK_SET);
  n = fread(buf, 1, (size_t)(to > from ? to - from : 0), f);
  buf[n] = '\0';
  fclose(f);
  fprintf(stderr, "  module log:\n%s", buf);
}

static CK_RV run_op(op_id op)
{
  switch (op) {
  case OP_SIGN_RSA: return p11_sign(h_rsa, CKM_SHA256_RSA_PKCS, 1);
  case OP_SIGN_EC: return p11_sign(h_ec, CKM_ECDSA_SHA256, 0);
  case OP_DEC_OAEP: return p11_decrypt(1);
  case OP_DEC_PKCS1: return p11_decrypt(0);
  case OP_OPEN:
  case OP_COLD: return p11_sign(h_rsa, CKM_SHA256_RSA_PKCS, 1);
  case OP_TOKEN: return p11_sign(h_ec, CKM_ECDSA_SHA256, 0);
  case OP_LOCAL: return p11_local();
  default: return CKR_GENERAL_ERROR;
  }
}

/* Bring the module into the state the operation starts from (no fault set). */
static CK_RV prepare(op_id op)
{
  CK_RV rv;
  switch (op) {
  case OP_SIGN_RSA:
  case OP_SIGN_EC:
  case OP_DEC_OAEP:
  case OP_DEC_PKCS1:
    /* warm: the token and a kept-alive connection (from the previous cell's final C_Sign on
     * p256, or from this) and the key */
    if ((rv = mod_ensure()) != CKR_OK)
      return rv;
    if (g_ec_open && (op == OP_SIGN_EC || g_rsa_open))
      return CKR_OK;
    return run_op(op);
  case OP_OPEN:
    if ((rv = mod_reinit()) != CKR_OK)
      return rv;
    return p11_sign(h_ec, CKM_ECDSA_SHA256, 0); /* challenge and token; rsa2048 stays unopened */
  case OP_COLD:
    return mod_reinit();
  case OP_TOKEN:
    if ((rv = mod_ensure()) != CKR_OK || (rv = p11_sign(h_ec, CKM_ECDSA_SHA256, 0)) != CKR_OK)
      return rv;
    return emu_ok("POST", "/_emu/revoke", "{}") ? CKR_OK : CKR_GENERAL_ERROR;
  case OP_LOCAL:
    return CKR_OK;
  default:
    return CKR_GENERAL_ERROR;
  }
}

typedef struct result_t {
  int ran, pass, known, xpass;
  CK_RV rv;
  long n_ep;
  double ms;
} result_t;

static result_t g_res[F_N][2][OP_N];
static int g_cells, g_passed, g_failed, g_known, g_xpassed;

static void run_cell(fault_id f, int persistent, op_id op)
{
  int times = persistent ? -1 : 1;
  expect_t e = expect(f, persistent, op);
  const char *known = known_failure(f, times, op);
  result_t *r = &g_res[f][persistent][op];
  char rule[256], why[512] = "";
  counts c = {0, 0, 0};
  long logpos, logend;
  double t0;
  CK_RV rv;
  int ok = 1;

  snprintf(g_cell, sizeof(g_cell), "%s/%s/%s", FAULT_NAMES[f], persistent ? "persistent" : "once",
           OPS[op].name);
  if (g_only != NULL && strstr(g_cell, g_only) == NULL)
    return;
  watchdog(3 * (T_RA_MS + SLACK_MS) + 5000);
  r->ran = 1;
  g_cells++;

  /* the configuration of the row, then the starting point of the operation (no fault is
   * set: every cell clears its fault) */
  use_conf(f == F_429_RA ? g_conf_ra : g_conf);
  rv = prepare(op);
  if (rv != CKR_OK) {
    snprintf(why, sizeof(why), "preparation failed: %s (0x%lx)", rv_name(rv), (unsigned long)rv);
    ok = 0;
    goto done;
  }
  emu_ok("POST", "/_emu/reset", "{}");
  fault_rule(f, OPS[op].ep, times, rule, sizeof(rule));
  if (!emu_ok("POST", "/_emu/faults", rule)) {
    snprintf(why, sizeof(why), "the emulator refused the fault %s", rule);
    ok = 0;
    goto done;
  }
  logpos = log_size();
  watchdog(e.max_ms);
  t0 = now_ms();
  rv = run_op(op);
  r->ms = now_ms() - t0;
  r->rv = rv;
  logend = log_size();
  watchdog(3 * (T_RA_MS + SLACK_MS) + 5000);
  emu_ok("DELETE", "/_emu/faults", NULL); /* (admin requests are not counted) */
  if (emu_counts(OPS[op].ep, &c) != 0) {
    snprintf(why, sizeof(why), "cannot read the emulator's counters");
    ok = 0;
    goto done;
  }
  r->n_ep = op == OP_LOCAL ? c.total : c.ep;

  if (rv != e.rv) {
    snprintf(why + strlen(why), sizeof(why) - strlen(why), " rv %s (0x%lx), expected %s;",
             rv_name(rv), (unsigned long)rv, rv_name(e.rv));
    ok = 0;
  }
  if (e.n_ep_max == 0 && r->n_ep != e.n_ep) {
    snprintf(why + strlen(why), sizeof(why) - strlen(why), " %ld requests to %s, expected %ld;",
             r->n_ep, op == OP_LOCAL ? "any endpoint" : OPS[op].ep, e.n_ep);
    ok = 0;
  } else if (e.n_ep_max > 0 && (r->n_ep < e.n_ep || r->n_ep > e.n_ep_max)) {
    snprintf(why + strlen(why), sizeof(why) - strlen(why),
             " %ld requests to %s, expected %ld..%ld;", r->n_ep, OPS[op].ep, e.n_ep, e.n_ep_max);
    ok = 0;
  }
  if (e.t_left && r->n_ep >= 1) {
    /* it stopped because the next step (at most 1.2 U 2^min(n-1, 4)) did not fit */
    long last = backoff_step(T_MS, (int)(r->n_ep - 1), 1200);
    if (T_MS - last - 5 > e.min_ms)
      e.min_ms = T_MS - last - 5;
  }
  if (e.n_token >= 0 && c.token != e.n_token) {
    snprintf(why + strlen(why), sizeof(why) - strlen(why),
             " %ld token requests, expected %ld;", c.token, e.n_token);
    ok = 0;
  }
  if (r->ms > (double)e.max_ms || r->ms < (double)e.min_ms) {
    snprintf(why + strlen(why), sizeof(why) - strlen(why),
             " took %.0f ms, expected %ld..%ld ms;", r->ms, e.min_ms, e.max_ms);
    ok = 0;
  }
  /* still usable: the fault cleared, a signature works */
  rv = mod_ensure();
  if (rv == CKR_OK)
    rv = p11_sign(h_ec, CKM_ECDSA_SHA256, 0);
  if (rv != CKR_OK) {
    snprintf(why + strlen(why), sizeof(why) - strlen(why),
             " afterwards, without the fault, C_Sign gives %s (0x%lx);", rv_name(rv),
             (unsigned long)rv);
    ok = 0;
  }
  if (!ok && !known)
    dump_log(logpos, logend);
  /* a 429 teaches the vault-wide pacer a rate it keeps for minutes: start the next cell
   * from a new module state */
  if (f == F_429 || f == F_429_RA)
    mod_fini();

done:
  r->pass = ok;
  if (known != NULL && ok) {
    r->xpass = 1;
    g_xpassed++;
    printf("XPASS %-45s %s, %ld req, %.0f ms: known failure now passes: remove it from KNOWN[] "
           "in tests/kv/test_kv_faults.c and from docs/testing.md (was: %s)\n",
           g_cell, rv_name(r->rv), r->n_ep, r->ms, known);
  } else if (known != NULL) {
    r->known = 1;
    g_known++;
    printf("KNOWN %-45s%s [known failure: %s]\n", g_cell, why, known);
  } else if (ok) {
    g_passed++;
    printf("ok    %-45s %s, %ld req, %.0f ms\n", g_cell, rv_name(r->rv), r->n_ep, r->ms);
  } else {
    g_failed++;
    printf("FAIL  %-45s%s\n", g_cell, why);
  }
  fflush(stdout);
}

/* ---------------------------------------------------------------- setup */

static long env_long(const char *name, long def, long min, long max)
{
  const char *v = getenv(name);
  char *end;
  long x;
  if (v == NULL || v[0] == '\0')
    return def;
  x = strtol(v, &end, 10);
  if (*end != '\0' || x < min || x > max) {
    fprintf(stderr, "kv/faults: %s=%s ignored (%ld..%ld)\n", name, v, min, max);
    return def;
  }
  return x;
}

/* kvp11.conf of the fixture, with timeout_ms, max_retries and the log changed. */
static int write_conf(const char *path, long timeout_ms)
{
  char src[1000], line[1200];
  FILE *in, *out;
  int fd;
  snprintf(src, sizeof(src), "%s/kvp11.conf", g_kvdir);
  in = fopen(src, "r");
  if (in == NULL) {
    fprintf(stderr, "kv/faults: %s: %s\n", src, strerror(errno));
    return -1;
  }
  fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  out = fd >= 0 ? fdopen(fd, "w") : NULL;
  if (out == NULL) {
    fclose(in);
    return -1;
  }
  while (fgets(line, sizeof(line), in) != NULL) {
    if (strncmp(line, "timeout_ms", 10) == 0)
      fprintf(out, "timeout_ms = %ld\n", timeout_ms);
    else if (strncmp(line, "max_retries", 11) == 0)
      fprintf(out, "max_retries = %ld\n", M_RETRIES);
    else if (strncmp(line, "log_file", 8) == 0)
      fprintf(out, "log_file = %s\n", g_log);
    else if (strncmp(line, "log_level", 9) == 0)
      fprintf(out, "log_level = debug\n");
    else
      fputs(line, out);
  }
  fclose(in);
  return fclose(out) == 0 ? 0 : -1;
}

static void print_table(void)
{
  int f, p, o;
  printf("\nfault matrix (rv / requests to the faulted endpoint; local: requests to any):\n");
  printf("%-16s %-5s", "fault", "times");
  for (o = 0; o < OP_N; o++)
    printf(" %-15s", OPS[o].name);
  printf("\n");
  for (f = 0; f < F_N; f++)
    for (p = 0; p < 2; p++) {
      int any = 0;
      for (o = 0; o < OP_N; o++)
        any |= g_res[f][p][o].ran;
      if (!any)
        continue;
      printf("%-16s %-5s", FAULT_NAMES[f], p ? "-1" : "1");
      for (o = 0; o < OP_N; o++) {
        result_t *r = &g_res[f][p][o];
        char cell[32];
        if (!r->ran)
          snprintf(cell, sizeof(cell), "-");
        else
          snprintf(cell, sizeof(cell), "%s %ld%s", r->rv == CKR_OK ? "OK" : r->rv ==
                   CKR_DEVICE_ERROR ? "DEV" : "other", r->n_ep,
                   r->pass && !r->known ? "" : r->known ? " KF" : " FAIL");
        printf(" %-15s", cell);
      }
      printf("\n");
    }
}

int main(void)
{
  const char *d = getenv("KVP11_KV_DIR"), *mod = getenv("KVP11_MODULE");
  char path[1000], port[32] = "";
  FILE *f;
  void *sym;
  CK_RV rv;
  int fi, p, o;
  double t0 = now_ms();

  if (d == NULL || d[0] == '\0' || mod == NULL || mod[0] == '\0') {
    fprintf(stderr, "kv/faults: KVP11_KV_DIR or KVP11_MODULE not set: skipped\n");
    return 77;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  T_MS = env_long("KVP11_FAULTS_TIMEOUT_MS", T_MS, 300, 60000);
  T_RA_MS = T_MS + 1000;
  M_RETRIES = env_long("KVP11_FAULTS_MAX_RETRIES", M_RETRIES, 0, 10);
  SLACK_MS = env_long("KVP11_FAULTS_SLACK_MS", SLACK_MS, 100, 60000);
  DELAY_LONG_MS = T_MS + 500;
  g_only = getenv("KVP11_FAULTS_ONLY");
  signal(SIGALRM, on_alarm);
  watchdog(60000);

  snprintf(g_kvdir, sizeof(g_kvdir), "%s", d);
  snprintf(path, sizeof(path), "%s/port", g_kvdir);
  f = fopen(path, "r");
  if (f == NULL || fgets(port, sizeof(port), f) == NULL) {
    fprintf(stderr, "kv/faults: %s: no emulator port (fixture not set up)\n", path);
    return 1;
  }
  fclose(f);
  port[strcspn(port, "\r\n")] = '\0';
  snprintf(g_url, sizeof(g_url), "https://127.0.0.1:%s", port);
  snprintf(g_ca, sizeof(g_ca), "%s/ca.pem", g_kvdir);
  snprintf(path, sizeof(path), "%s/registry.db", g_kvdir);
  if (access(path, R_OK) != 0) {
    fprintf(stderr, "kv/faults: %s missing (kv/register makes it)\n", path);
    return 1;
  }
  snprintf(g_tmp, sizeof(g_tmp), "%s/kvp11-faults-XXXXXX",
           getenv("TMPDIR") != NULL ? getenv("TMPDIR") : "/tmp");
  if (mkdtemp(g_tmp) == NULL) {
    fprintf(stderr, "kv/faults: mkdtemp %s: %s\n", g_tmp, strerror(errno));
    return 1;
  }
  snprintf(g_conf, sizeof(g_conf), "%s/kvp11.conf", g_tmp);
  snprintf(g_conf_ra, sizeof(g_conf_ra), "%s/kvp11-ra.conf", g_tmp);
  snprintf(g_log, sizeof(g_log), "%s/kvp11.log", g_tmp);
  if (write_conf(g_conf, T_MS) != 0 || write_conf(g_conf_ra, T_RA_MS) != 0) {
    fprintf(stderr, "kv/faults: cannot write the configuration in %s\n", g_tmp);
    return 1;
  }
  use_conf(g_conf);
  curl_global_init(CURL_GLOBAL_DEFAULT);

  g_dl = dlopen(mod, RTLD_NOW | RTLD_LOCAL);
  if (g_dl == NULL || (sym = dlsym(g_dl, "C_GetFunctionList")) == NULL) {
    fprintf(stderr, "kv/faults: %s: %s\n", mod, dlerror());
    return 1;
  }
  {
    CK_C_GetFunctionList gfl;
    memcpy(&gfl, &sym, sizeof(gfl));
    if (gfl(&P) != CKR_OK) {
      fprintf(stderr, "kv/faults: C_GetFunctionList failed\n");
      return 1;
    }
  }
  emu_ok("POST", "/_emu/reset", "{}"); /* counters and faults */
  rv = mod_init();
  if (rv == CKR_OK) {
    pk_rsa = cert_pubkey("rsa2048");
    pk_ec = cert_pubkey("p256");
    if (pk_rsa == NULL || pk_ec == NULL)
      rv = CKR_GENERAL_ERROR;
  }
  if (rv == CKR_OK)
    rv = p11_sign(h_ec, CKM_ECDSA_SHA256, 0); /* also keeps a signature for C_Verify */
  if (rv != CKR_OK) {
    fprintf(stderr, "kv/faults: the module does not work without faults: 0x%lx (log %s)\n",
            (unsigned long)rv, g_log);
    return 1;
  }
  printf("kv/faults: T = timeout_ms = %ld ms (Retry-After rows: T_RA = %ld ms), "
         "M = max_retries = %ld, Retry-After %ld s, S = %ld ms, delays %ld / %ld ms\n",
         T_MS, T_RA_MS, M_RETRIES, RA_S, SLACK_MS, DELAY_SHORT_MS, DELAY_LONG_MS);

  for (fi = 0; fi < F_N; fi++)
    for (p = 0; p < 2; p++)
      for (o = 0; o < OP_N; o++)
        run_cell((fault_id)fi, p, (op_id)o);
  alarm(0);

  print_table();
  mod_fini();
  emu_ok("DELETE", "/_emu/faults", NULL);
  emu_ok("POST", "/_emu/reset", "{}");
  EVP_PKEY_free(pk_rsa);
  EVP_PKEY_free(pk_ec);
  if (g_emu != NULL)
    curl_easy_cleanup(g_emu);
  if (getenv("KVP11_TEST_NO_DLCLOSE") == NULL)
    dlclose(g_dl);
  curl_global_cleanup();

  if (g_known > 0)
    printf("fault matrix: %d cells, %d passed, %d known failures, %d failed (%.1f s)\n", g_cells,
           g_passed, g_known, g_failed + g_xpassed, (now_ms() - t0) / 1000.0);
  else
    printf("fault matrix: %d cells, %d passed (%.1f s)\n", g_cells, g_passed,
           (now_ms() - t0) / 1000.0);
  if (g_failed + g_xpassed == 0) {
    unlink(g_conf);
    unlink(g_conf_ra);
    unlink(g_log);
    rmdir(g_tmp);
  } else {
    printf("kv/faults: configuration and module log kept in %s\n", g_tmp);
  }
  return g_failed + g_xpassed == 0 ? 0 : 1;
}
