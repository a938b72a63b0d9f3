/*
 * HTTPS for the Key Vault backend: libcurl with one share handle (connection
 * cache, TLS sessions, DNS) and a small pool of easy handles, so each thread
 * uses its own easy handle and N threads have N requests in flight. No lock
 * is held across a request: the pool mutex only guards the free list, and the
 * share locks are taken by libcurl for the moment it touches shared data.
 */
/* dladdr, RTLD_NODELETE */
#define _GNU_SOURCE
#include "backend/keyvault/kv.h"

#include <dlfcn.h>

#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "core/log.h"
#include "core/util.h"
#include "core/wipemem.h"

#define KV_POOL_MAX 32

/* accepted responses per 10 ms over the last 10.24 s (the pacer's measure) */
#define KV_PACE_SLOTS 1024
#define KV_PACE_SLOT_MS 10

/*
 * Vault-wide pacing, shared by every thread that uses this vault (see
 * kv_pace_wait below). Guarded by lock, which is never held across a request
 * or a sleep.
 */
typedef struct kv_pace {
  pthread_mutex_t lock;
  int64_t blocked_until; /* no request before this (a 429's Retry-After) */
  double rate;           /* base rate learned at the last 429 (requests/s); 0: not limited */
  double tat;            /* GCRA theoretical arrival time (ms) */
  int64_t decreased_ms;  /* last rate decrease (429s of requests sent before are old news) */
  int64_t last429_ms;
  int decreases;         /* rate decreases in this episode */
  int64_t window_ms;     /* the service's window as learnt at an episode's first 429 */
  int long_episode;      /* the client is at the limit (see kv_pace_rate) */
  int64_t slot; /* index (ms / KV_PACE_SLOT_MS) of the newest bucket */
  uint32_t acc[KV_PACE_SLOTS];
  unsigned long n_throttled, n_waits;
} kv_pace;

struct kv_http {
  CURLSH *share;
  pthread_mutex_t share_locks[CURL_LOCK_DATA_LAST];
  pthread_mutex_t pool_lock;
  CURL *pool[KV_POOL_MAX];
  size_t n_pool;
  char *ca_file;
  kv_pace pace;
  kv_http *abandoned_next; /* see kv_http_free(forked) */
};

/* What forked children left alone (see kv_http_free): kept reachable on
 * purpose, so that leak checkers see an intended abandonment, not a leak. */
static _Atomic(kv_http *) kv_abandoned;

static pthread_once_t kv_curl_once = PTHREAD_ONCE_INIT;
static CURLcode kv_curl_init_rc = CURLE_OK;

/*
 * libcurl builds each request (with its Authorization: Bearer header) and
 * receives each response (token responses included) in buffers of its own,
 * which it frees without wiping: a core dump of the process then held access
 * tokens (found by tests/secrets). libcurl's memory therefore goes through
 * these functions, which wipe every block before it is released. This takes
 * effect when kvp11 is the first to initialize libcurl in the process (the
 * usual case: libcurl keeps the callbacks of its first initialization).
 */
static void kv_mem_free(void *p)
{
  kvp_wipe_free(p);
}

static void *kv_mem_malloc(size_t n)
{
  return malloc(n);
}

static void *kv_mem_calloc(size_t n, size_t size)
{
  return calloc(n, size);
}

static char *kv_mem_strdup(const char *s)
{
  return strdup(s);
}

/* libcurl grows its buffers by doubling from 32 bytes: a moved block gets room
 * for the next doublings of a small buffer (no copy, no wipe) */
static void *kv_mem_realloc(void *p, size_t n)
{
  return kvp_wipe_realloc(p, n, 1024);
}

/*
 * libcurl keeps the allocators of its first initialization for the life of
 * the process, also after curl_global_cleanup() when another user still
 * holds it initialized: the host program, for one. So once they are
 * installed, this code must stay mapped: the module pins itself
 * (RTLD_NODELETE), and a dlclose() by p11-kit or the application leaves it
 * in memory. Without the pin, a host program that unloaded libkvp11.so and
 * then used libcurl itself called into unmapped code.
 */
static void kv_pin_self(void)
{
  Dl_info di;
  const char *e;
  /* linked into a program (the kvp11 tool, tests) rather than a module: it is
   * never unloaded, and a program cannot be dlopen()ed */
  if (dladdr(&kv_curl_init_rc, &di) == 0 || di.dli_fname == NULL ||
      strstr(di.dli_fname, ".so") == NULL)
    return;
  if (dlopen(di.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE) == NULL) {
    e = dlerror();
    KVP_WARN("libcurl: cannot pin %s in memory (%s); unloading it while the program uses "
             "libcurl is unsafe", di.dli_fname, e != NULL ? e : "no reason given");
  }
}

static void kv_curl_global_init(void)
{
  kv_curl_init_rc = curl_global_init_mem(CURL_GLOBAL_DEFAULT, kv_mem_malloc, kv_mem_free,
                                         kv_mem_realloc, kv_mem_strdup, kv_mem_calloc);
  if (kv_curl_init_rc == CURLE_OK)
    kv_pin_self();
}

int64_t kv_now_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t kv_wall_s(void)
{
  return (int64_t)time(NULL);
}

void kv_sleep_ms(int64_t ms)
{
  struct timespec ts;
  if (ms <= 0)
    return;
  ts.tv_sec = (time_t)(ms / 1000);
  ts.tv_nsec = (long)(ms % 1000) * 1000000L;
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
    ;
}

void kv_free_wipe(char *s)
{
  if (s == NULL)
    return;
  kvp_wipe(s, strlen(s));
  free(s);
}

char *kv_escape(const char *s)
{
  char *e = curl_easy_escape(NULL, s, 0);
  char *r;
  if (e == NULL)
    return NULL;
  r = strdup(e);
  kvp_wipe(e, strlen(e));
  curl_free(e);
  return r;
}

static void kv_share_lock(CURL *handle, curl_lock_data data, curl_lock_access access, void *userp)
{
  kv_http *h = userp;
  (void)handle;
  (void)access;
  if ((int)data >= 0 && data < CURL_LOCK_DATA_LAST)
    pthread_mutex_lock(&h->share_locks[data]);
}

static void kv_share_unlock(CURL *handle, curl_lock_data data, void *userp)
{
  kv_http *h = userp;
  (void)handle;
  if ((int)data >= 0 && data < CURL_LOCK_DATA_LAST)
    pthread_mutex_unlock(&h->share_locks[data]);
}

kv_http *kv_http_new(const char *ca_file)
{
  kv_http *h;
  int i;

  pthread_once(&kv_curl_once, kv_curl_global_init);
  if (kv_curl_init_rc != CURLE_OK) {
    KVP_ERROR("libcurl initialisation failed: %s", curl_easy_strerror(kv_curl_init_rc));
    return NULL;
  }
  h = calloc(1, sizeof(*h));
  if (h == NULL)
    return NULL;
  for (i = 0; i < CURL_LOCK_DATA_LAST; i++)
    pthread_mutex_init(&h->share_locks[i], NULL);
  pthread_mutex_init(&h->pool_lock, NULL);
  pthread_mutex_init(&h->pace.lock, NULL);
  if (ca_file != NULL && (h->ca_file = strdup(ca_file)) == NULL)
    goto fail;
  h->share = curl_share_init();
  if (h->share == NULL)
    goto fail;
  curl_share_setopt(h->share, CURLSHOPT_LOCKFUNC, kv_share_lock);
  curl_share_setopt(h->share, CURLSHOPT_UNLOCKFUNC, kv_share_unlock);
  curl_share_setopt(h->share, CURLSHOPT_USERDATA, h);
  curl_share_setopt(h->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
  curl_share_setopt(h->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
  curl_share_setopt(h->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_CONNECT);
  return h;
fail:
  kv_http_free(h, 0);
  return NULL;
}

void kv_http_free(kv_http *h, int forked)
{
  size_t i;
  int j;
  if (h == NULL)
    return;
  if (forked) {
    /* In a forked child the handles and the share are left alone: closing
     * them could send TLS close_notify on the parent's connections. Their
     * memory stays reachable from kv_abandoned (no lock: the parent may
     * have held any lock at fork time). */
    kv_http *head = atomic_load(&kv_abandoned);
    do
      h->abandoned_next = head;
    while (!atomic_compare_exchange_weak(&kv_abandoned, &head, h));
    return;
  }
  for (i = 0; i < h->n_pool; i++)
    curl_easy_cleanup(h->pool[i]);
  if (h->share != NULL)
    curl_share_cleanup(h->share);
  for (j = 0; j < CURL_LOCK_DATA_LAST; j++)
    pthread_mutex_destroy(&h->share_locks[j]);
  pthread_mutex_destroy(&h->pool_lock);
  pthread_mutex_destroy(&h->pace.lock);
  free(h->ca_file);
  free(h);
}

static CURL *kv_pool_get(kv_http *h)
{
  CURL *c = NULL;
  pthread_mutex_lock(&h->pool_lock);
  if (h->n_pool > 0)
    c = h->pool[--h->n_pool];
  pthread_mutex_unlock(&h->pool_lock);
  if (c == NULL)
    c = curl_easy_init();
  return c;
}

static void kv_pool_put(kv_http *h, CURL *c)
{
  int keep = 0;
  pthread_mutex_lock(&h->pool_lock);
  if (h->n_pool < KV_POOL_MAX) {
    h->pool[h->n_pool++] = c;
    keep = 1;
  }
  pthread_mutex_unlock(&h->pool_lock);
  if (!keep)
    curl_easy_cleanup(c);
}

void kv_resp_clear(kv_resp *r, int wipe)
{
  if (r == NULL)
    return;
  if (r->body != NULL) {
    if (wipe)
      kvp_wipe(r->body, r->len);
    free(r->body);
  }
  if (r->json != NULL)
    json_decref(r->json);
  free(r->www_auth);
  memset(r, 0, sizeof(*r));
  r->retry_after_ms = -1;
  strcpy(r->request_id, "-");
}

static size_t kv_write_cb(char *ptr, size_t size, size_t nmemb, void *userp)
{
  kv_resp *r = userp;
  size_t n = size * nmemb;
  char *nb;
  size_t cap;
  if (r->len + n > KV_BODY_CAP) {
    r->capped = 1;
    return 0; /* aborts the transfer with CURLE_WRITE_ERROR */
  }
  /* The buffer's size is always the smallest power of two (at least 256)
   * above len, so it is known from len: append in place while it fits, else
   * grow to the next power of two and wipe the old buffer (it may hold a
   * token or a plaintext). Growing on every piece made a 1 MiB body cost
   * ~64 MiB of copying and wiping. */
  if (r->body != NULL) {
    size_t have = 256;
    while (have < r->len + 1)
      have *= 2;
    if (r->len + n + 1 <= have) {
      memcpy(r->body + r->len, ptr, n);
      r->len += n;
      r->body[r->len] = '\0';
      return n;
    }
  }
  cap = 256;
  while (cap < r->len + n + 1)
    cap *= 2;
  nb = malloc(cap);
  if (nb == NULL)
    return 0;
  if (r->body != NULL) {
    memcpy(nb, r->body, r->len);
    kvp_wipe(r->body, r->len);
    free(r->body);
  }
  memcpy(nb + r->len, ptr, n);
  r->len += n;
  nb[r->len] = '\0';
  r->body = nb;
  return n;
}

/* Does the header line [p, p+n) start with the name (case-insensitive) and a colon? Sets *val
 * and *vlen to the value without surrounding blanks. */
static int kv_header_is(const char *p, size_t n, const char *name, size_t name_len,
                        const char **val, size_t *vlen)
{
  const char *v, *e;
  if (n <= name_len || p[name_len] != ':' || strncasecmp(p, name, name_len) != 0)
    return 0;
  v = p + name_len + 1;
  e = p + n;
  while (v < e && (*v == ' ' || *v == '\t'))
    v++;
  while (e > v && (e[-1] == '\r' || e[-1] == '\n' || e[-1] == ' ' || e[-1] == '\t'))
    e--;
  *val = v;
  *vlen = (size_t)(e - v);
  return 1;
}

#define KV_HDR(s) s, sizeof(s) - 1

/* strtol on a counted value: -1 unless the whole value is a number >= 0 */
static long kv_header_num(const char *v, size_t n)
{
  long r = 0;
  size_t i;
  if (n == 0 || n > 12)
    return -1;
  for (i = 0; i < n; i++) {
    if (v[i] < '0' || v[i] > '9')
      return -1;
    r = r * 10 + (v[i] - '0');
  }
  return r;
}

/* Only the few headers kvp11 uses are looked at; the line is not copied
 * unless it is one of them. */
static size_t kv_header_cb(char *buf, size_t size, size_t nitems, void *userp)
{
  kv_resp *r = userp;
  size_t n = size * nitems;
  const char *v;
  size_t vl;
  long num;

  if (n >= 5 && memcmp(buf, "HTTP/", 5) == 0) {
    /* a new response (after 100-continue or a retry inside libcurl) */
    free(r->www_auth);
    r->www_auth = NULL;
    r->retry_after_ms = -1;
    strcpy(r->request_id, "-");
    return n;
  }
  switch (n > 0 ? buf[0] | 0x20 : 0) {
  case 'x':
    if (kv_header_is(buf, n, KV_HDR("x-ms-request-id"), &v, &vl)) {
      if (vl >= sizeof(r->request_id))
        vl = sizeof(r->request_id) - 1;
      memcpy(r->request_id, v, vl);
      r->request_id[vl] = '\0';
    } else if (kv_header_is(buf, n, KV_HDR("x-ms-retry-after-ms"), &v, &vl) &&
               (num = kv_header_num(v, vl)) >= 0) {
      r->retry_after_ms = num;
    }
    break;
  case 'w':
    if (kv_header_is(buf, n, KV_HDR("www-authenticate"), &v, &vl) &&
        (r->www_auth == NULL || (vl >= 6 && strncasecmp(v, "Bearer", 6) == 0))) {
      char *w = malloc(vl + 1);
      if (w != NULL) {
        memcpy(w, v, vl);
        w[vl] = '\0';
        free(r->www_auth);
        r->www_auth = w;
      }
    }
    break;
  case 'r':
    if (kv_header_is(buf, n, KV_HDR("retry-after-ms"), &v, &vl)) {
      if ((num = kv_header_num(v, vl)) >= 0)
        r->retry_after_ms = num;
    } else if (kv_header_is(buf, n, KV_HDR("retry-after"), &v, &vl)) {
      if ((num = kv_header_num(v, vl)) >= 0) {
        if (r->retry_after_ms < 0)
          r->retry_after_ms = num * 1000;
      } else if (vl < 128 && r->retry_after_ms < 0) {
        char date[128];
        time_t t;
        memcpy(date, v, vl);
        date[vl] = '\0';
        t = curl_getdate(date, NULL);
        if (t != (time_t)-1) {
          long d = (long)(t - time(NULL));
          r->retry_after_ms = d > 0 ? d * 1000 : 0;
        }
      }
    }
    break;
  default:
    break;
  }
  return n;
}

/* x-ms-client-request-id: a random per-process prefix and a counter (unique,
 * and cheaper than drawing 16 random bytes for every request). The header up
 * to the counter is formatted once. */
#define KV_RID_PREFIX_LEN (sizeof("x-ms-client-request-id: 01234567-0123-0123-") - 1)
#define KV_RID_LEN (KV_RID_PREFIX_LEN + 4 + 1 + 12)
static char kv_rid_prefix[KV_RID_PREFIX_LEN + 1];
static pthread_once_t kv_rid_once = PTHREAD_ONCE_INIT;
static _Atomic unsigned long long kv_rid_counter;
static const char kv_hexd[] = "0123456789abcdef";

static void kv_rid_init(void)
{
  unsigned char b[8];
  char *o;
  int i;
  if (RAND_bytes(b, sizeof(b)) != 1)
    memset(b, 0x5a, sizeof(b));
  b[6] = (unsigned char)((b[6] & 0x0f) | 0x40); /* version 4 */
  memcpy(kv_rid_prefix, "x-ms-client-request-id: ", 24);
  o = kv_rid_prefix + 24;
  for (i = 0; i < 8; i++) {
    *o++ = kv_hexd[b[i] >> 4];
    *o++ = kv_hexd[b[i] & 15];
    if (i == 3 || i == 5 || i == 7)
      *o++ = '-';
  }
  *o = '\0';
}

/* out: at least KV_RID_LEN + 1 bytes */
static void kv_request_id(char *out)
{
  unsigned long long n, v;
  char *o = out + KV_RID_PREFIX_LEN;
  int i;
  pthread_once(&kv_rid_once, kv_rid_init);
  n = ++kv_rid_counter;
  memcpy(out, kv_rid_prefix, KV_RID_PREFIX_LEN);
  v = 0x8000ULL | ((n >> 48) & 0x3fffULL); /* variant bits, then the counter's top */
  for (i = 3; i >= 0; i--, v >>= 4)
    o[i] = kv_hexd[v & 15];
  o[4] = '-';
  v = n & 0xffffffffffffULL;
  for (i = 16; i >= 5; i--, v >>= 4)
    o[i] = kv_hexd[v & 15];
  o[17] = '\0';
}

/* A handle from this pool keeps its fixed options: set them once per handle
 * (marked with CURLOPT_PRIVATE), not once per request. */
static void kv_handle_fixed(kv_http *h, CURL *c)
{
  void *owner = NULL;
  curl_easy_getinfo(c, CURLINFO_PRIVATE, &owner);
  if (owner != (void *)h) {
    curl_easy_reset(c);
    curl_easy_setopt(c, CURLOPT_PRIVATE, (void *)h);
    curl_easy_setopt(c, CURLOPT_SHARE, h->share);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
#if CURL_AT_LEAST_VERSION(7, 85, 0)
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "https,http");
#endif
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
    if (h->ca_file != NULL)
      curl_easy_setopt(c, CURLOPT_CAINFO, h->ca_file);
    curl_easy_setopt(c, CURLOPT_TCP_KEEPALIVE, 1L);
    /* the shared connection cache keeps one idle connection per pooled handle
     * (libcurl's default of 5 would close and reopen connections under load) */
    curl_easy_setopt(c, CURLOPT_MAXCONNECTS, (long)(2 * KV_POOL_MAX));
    curl_easy_setopt(c, CURLOPT_USERAGENT, "kvp11/" "0.1");
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, kv_write_cb);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, kv_header_cb);
    /* libcurl allocates its receive buffer (16 KiB by default) and its
     * upload buffer (64 KiB) for every transfer, and every block it frees
     * is wiped (kv_mem_free): Key Vault's answers are small, so smaller
     * buffers save wiping 60 KiB per request */
    curl_easy_setopt(c, CURLOPT_BUFFERSIZE, 4096L);
#if CURL_AT_LEAST_VERSION(7, 62, 0)
    curl_easy_setopt(c, CURLOPT_UPLOAD_BUFFERSIZE, 16384L); /* libcurl's minimum */
#endif
  }
}

int kv_http_do(kv_http *h, const kv_req *req, long timeout_ms, kv_resp *resp)
{
  /* The header list lives on the stack: libcurl only reads it during the
   * transfer, so no node or string is allocated (and the caller's
   * Authorization header is not copied). */
  static char accept_hdr[] = "Accept: application/json";
  static char expect_hdr[] = "Expect:";
  static char ct_json[] = "Content-Type: application/json";
  struct curl_slist nodes[6];
  size_t nn = 0;
  CURL *c;
  char ct[128], rid[KV_RID_LEN + 1];
  CURLcode cc;

  kv_resp_clear(resp, 1);
  c = kv_pool_get(h);
  if (c == NULL) {
    resp->cc = CURLE_OUT_OF_MEMORY;
    snprintf(resp->curl_err, sizeof(resp->curl_err), "out of memory");
    return -1;
  }
  kv_handle_fixed(h, c);
  /* Per request: everything that differs between requests is set every time. */
  curl_easy_setopt(c, CURLOPT_URL, req->url);
  if (timeout_ms < 1)
    timeout_ms = 1;
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout_ms);
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, timeout_ms < 10000 ? timeout_ms : 10000L);
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, resp->curl_err);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, resp);
  curl_easy_setopt(c, CURLOPT_HEADERDATA, resp);
  curl_easy_setopt(c, CURLOPT_NOPROXY, req->no_proxy ? "*" : NULL);
  curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, NULL);

  nodes[nn++].data = accept_hdr;
  nodes[nn++].data = expect_hdr;
  kv_request_id(rid);
  nodes[nn++].data = rid;
  if (req->auth_header != NULL)
    nodes[nn++].data = (char *)req->auth_header;
  if (req->extra_header != NULL)
    nodes[nn++].data = (char *)req->extra_header;
  if (req->body != NULL) {
    if (req->content_type == NULL) {
      nodes[nn++].data = ct_json;
    } else {
      snprintf(ct, sizeof(ct), "Content-Type: %s", req->content_type);
      nodes[nn++].data = ct;
    }
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)req->body_len);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, req->body);
  }
  if (strcmp(req->method, "GET") == 0) {
    curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
  } else if (strcmp(req->method, "POST") == 0) {
    if (req->body == NULL) {
      curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, 0L);
      curl_easy_setopt(c, CURLOPT_POSTFIELDS, "");
    }
  } else {
    if (req->body == NULL) {
      curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, 0L);
      curl_easy_setopt(c, CURLOPT_POSTFIELDS, "");
    }
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, req->method);
  }
  {
    size_t i;
    for (i = 0; i < nn; i++)
      nodes[i].next = i + 1 < nn ? &nodes[i + 1] : NULL;
  }
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, &nodes[0]);

  cc = curl_easy_perform(c);
  resp->cc = cc;
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &resp->status);
  if (kvp_log_threshold >= KVP_LOG_DEBUG) {
    long nc = 0;
    curl_easy_getinfo(c, CURLINFO_NUM_CONNECTS, &nc);
    if (nc > 0)
      KVP_DEBUG("%s %s: new connection", req->method, req->url);
  }
  if (cc != CURLE_OK) {
    if (resp->curl_err[0] == '\0')
      snprintf(resp->curl_err, sizeof(resp->curl_err), "%s", curl_easy_strerror(cc));
    if (resp->capped)
      snprintf(resp->curl_err, sizeof(resp->curl_err), "response body larger than %d bytes",
               KV_BODY_CAP);
  }
  /* the list is on our stack: libcurl must not keep a pointer to it */
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, NULL);
  curl_easy_setopt(c, CURLOPT_POSTFIELDS, NULL);
  kv_pool_put(h, c);

  if (cc != CURLE_OK) {
    /* a body that was cut short is not a response we can use */
    resp->status = cc == CURLE_WRITE_ERROR && resp->capped ? resp->status : 0;
    if (resp->status == 0)
      return -1;
    return 0;
  }
  if (resp->body != NULL && resp->len > 0) {
    json_error_t jerr;
    json_t *j = json_loadb(resp->body, resp->len, JSON_REJECT_DUPLICATES, &jerr);
    if (j != NULL && json_is_object(j))
      resp->json = j;
    else if (j != NULL)
      json_decref(j);
  }
  return 0;
}

static int kv_status_transient(long status)
{
  return status == 408 || status == 429 || status == 500 || status == 502 || status == 503 ||
         status == 504;
}

/*
 * Vault-wide pacing.
 *
 * Key Vault limits the transactions of a whole vault (per 10 s, weighted by
 * key type and size) and answers 429 with Retry-After beyond the limit.
 * Without coordination, each of N threads would collect its own 429s. So,
 * for the data-plane requests of one vault (the requests that carry an
 * Authorization header; the token endpoint has limits of its own):
 *
 *  - a 429 pauses the whole vault until its Retry-After (or backoff) has
 *    passed: the other threads wait before sending instead of being refused;
 *  - from a 429 on, a rate limiter paces the requests (GCRA, a token bucket
 *    that holds two requests). At the first 429 of an episode it learns a
 *    rate r: n requests were accepted in the busy period of s seconds before
 *    it and the service says it frees up in R (whole) seconds, so its window
 *    W is in (s + R - 1, s + R]; the service's windows are whole seconds, so
 *    W = floor(s + R) and r = 0.95 n / W.
 *  - a 429 after a busy period of at least W / 2 (the vault accepted that
 *    pace for most of a window: the 429 may be a passing one) starts a short
 *    episode: 5 s after it, without another 429, the limiter is dropped and
 *    the client is back at its full pace.
 *  - a 429 after a short burst (s < W / 2), or a second 429 within an
 *    episode (or within 30 s of the last one), means the client really is at
 *    the limit: a long episode. The second 429 measures r again, over the
 *    window W learnt at the first one, which was full when it came: r = 0.95
 *    (accepted in the last W) / W; later ones set r to 0.95 times the rate in
 *    force. The rate grows slowly after the pause, 0.2 %/s while the last
 *    429 is under 30 s old, 1 %/s after that, so it keeps probing for more
 *    without meeting the limit more often than every ~25 s. A long episode
 *    ends after 5 minutes without a 429.
 *
 * Waiting for the pacer is not a retry: it only spends the operation's time.
 */
#define KV_PACE_FORGET_ONE_MS 5000L          /* after a single 429 */
#define KV_PACE_FORGET_MS (5L * 60L * 1000L) /* after two or more */
#define KV_PACE_MIN_RATE 0.1
#define KV_PACE_GAP_SLOTS 20 /* 200 ms without an answer ends a busy period */

/* The rate in force at now (lock held); 0: not pacing. */
static double kv_pace_rate(kv_pace *p, int64_t now)
{
  double t;
  if (p->rate <= 0)
    return 0;
  if (now - p->last429_ms > (p->long_episode ? KV_PACE_FORGET_MS : KV_PACE_FORGET_ONE_MS)) {
    p->rate = 0; /* the episode is over: stop pacing */
    p->decreases = 0;
    p->long_episode = 0;
    return 0;
  }
  t = (double)(now - p->blocked_until); /* since the pause ended */
  if (t <= 0)
    return p->rate;
  return p->rate * (1.0 + (now - p->last429_ms < 30000 ? 0.002 : 0.01) * t / 1000.0);
}

static void kv_pace_roll(kv_pace *p, int64_t now)
{
  int64_t s = now / KV_PACE_SLOT_MS, i;
  if (s <= p->slot)
    return;
  if (s - p->slot >= KV_PACE_SLOTS)
    memset(p->acc, 0, sizeof(p->acc));
  else
    for (i = p->slot + 1; i <= s; i++)
      p->acc[i % KV_PACE_SLOTS] = 0;
  p->slot = s;
}

/* Accepted requests in the current busy period (at most the last ~10 s) and
 * its length in ms. */
static double kv_pace_measure(kv_pace *p, int64_t now, int64_t *span)
{
  int64_t i, start = -1, gap = 0;
  double n = 0;
  kv_pace_roll(p, now);
  for (i = p->slot; i > p->slot - (KV_PACE_SLOTS - 24) && i >= 0; i--) {
    uint32_t a = p->acc[i % KV_PACE_SLOTS];
    if (a == 0) {
      if (start >= 0 && ++gap >= KV_PACE_GAP_SLOTS)
        break;
      continue;
    }
    gap = 0;
    start = i;
    n += a;
  }
  *span = start < 0 ? 0 : now - start * KV_PACE_SLOT_MS;
  return n;
}

/* Accepted requests in the last ms milliseconds (at most the measured ~10 s). */
static double kv_pace_count(kv_pace *p, int64_t now, int64_t ms)
{
  int64_t i, slots = ms / KV_PACE_SLOT_MS;
  double n = 0;
  kv_pace_roll(p, now);
  if (slots > KV_PACE_SLOTS - 24)
    slots = KV_PACE_SLOTS - 24;
  for (i = p->slot; i > p->slot - slots && i >= 0; i--)
    n += p->acc[i % KV_PACE_SLOTS];
  return n;
}

/* Called with p->lock held: a paced request was answered (not 429). */
static void kv_pace_note_ok(kv_pace *p, int64_t now)
{
  kv_pace_roll(p, now);
  p->acc[p->slot % KV_PACE_SLOTS]++;
}

/*
 * Wait until this vault may be sent a request. 0: go; -1: not before
 * deadline_ms (the caller gives up at once, as for a Retry-After past the
 * deadline).
 */
static int kv_pace_wait(kv_http *h, int64_t deadline_ms)
{
  kv_pace *p = &h->pace;
  for (;;) {
    int64_t now, until;
    int reserved = 0;

    pthread_mutex_lock(&p->lock);
    now = kv_now_ms();
    until = now;
    if (p->blocked_until > now) {
      until = p->blocked_until;
    } else if (kv_pace_rate(p, now) > 0) {
      double t = 1000.0 / kv_pace_rate(p, now); /* interval; tolerance t: two at once at most */
      double tat = p->tat > (double)now ? p->tat : (double)now;
      if (tat - t > (double)now) {
        until = (int64_t)(tat - t) + 1;
        reserved = until < deadline_ms; /* a slot in the schedule */
      }
      if (until == now || reserved)
        p->tat = tat + t;
    }
    if (until > now)
      p->n_waits++;
    pthread_mutex_unlock(&p->lock);
    if (until <= now)
      return 0;
    if (until >= deadline_ms)
      return -1;
    kv_sleep_ms(until - now);
    if (reserved) {
      /* our slot has come, unless a 429 paused the vault meanwhile */
      int blocked;
      pthread_mutex_lock(&p->lock);
      blocked = p->blocked_until > kv_now_ms();
      pthread_mutex_unlock(&p->lock);
      if (!blocked)
        return 0;
    }
  }
}

/* An answer other than 429 came back for a paced request. */
static void kv_pace_accepted(kv_http *h)
{
  kv_pace *p = &h->pace;
  pthread_mutex_lock(&p->lock);
  kv_pace_note_ok(p, kv_now_ms());
  pthread_mutex_unlock(&p->lock);
}

/* A paced request sent at sent_ms got 429; delay_ms: its Retry-After or backoff. */
static void kv_pace_throttled(kv_http *h, int64_t sent_ms, int64_t delay_ms, const char *what)
{
  kv_pace *p = &h->pace;
  int64_t now, span = 0, w = 0;
  double n = 0, old, rate;
  int decreased = 0;

  pthread_mutex_lock(&p->lock);
  now = kv_now_ms();
  p->n_throttled++;
  old = kv_pace_rate(p, now);
  if (now + delay_ms > p->blocked_until)
    p->blocked_until = now + delay_ms;
  /* requests sent before the last decrease went at the old rate: their 429s
   * are old news */
  if (sent_ms > p->decreased_ms || old <= 0) {
    /* a 429 within 30 s of the last one continues its episode, even a forgotten one */
    int again = p->last429_ms > 0 && now - p->last429_ms < 30000;
    if (old <= 0)
      p->decreases = again ? 1 : 0;
    if (p->decreases < 2) {
      n = kv_pace_measure(p, now, &span);
      w = (span + delay_ms) / 1000 * 1000; /* whole seconds in (s + R - 1 s, s + R] */
      if (w < span)
        w = span;
      if (w < 1000)
        w = 1000;
      if (p->decreases > 0 && p->window_ms > 0) {
        /* the window learnt at the first 429 was full when this one came: what it
         * accepted (pauses included) is the limit */
        w = p->window_ms;
        n = kv_pace_count(p, now, w);
        span = w;
      }
      p->rate = 0.95 * n * 1000.0 / (double)w;
      if (p->decreases == 0)
        p->window_ms = w;
      /* a burst that met the limit, or a second 429: the client is at the limit */
      if (p->decreases > 0 || span * 2 < w)
        p->long_episode = 1;
    } else {
      p->rate = 0.95 * old;
    }
    if (p->rate < KV_PACE_MIN_RATE)
      p->rate = KV_PACE_MIN_RATE;
    p->decreases++;
    p->decreased_ms = now;
    decreased = 1;
  }
  p->last429_ms = now;
  p->tat = (double)p->blocked_until;
  rate = p->rate;
  pthread_mutex_unlock(&p->lock);
  if (decreased && old <= 0)
    KVP_INFO("%s: the vault is throttling (HTTP 429): its requests wait %lld ms, then go at "
             "most %.1f/s (%.0f accepted in the %lld ms before, window taken as %lld ms)",
             what, (long long)delay_ms, rate, n, (long long)span, (long long)w);
  else if (decreased)
    KVP_INFO("%s: the vault is throttling (HTTP 429): its requests wait %lld ms, then go at "
             "most %.1f/s (was %.1f/s)",
             what, (long long)delay_ms, rate, old);
}

void kv_http_pace_stats(kv_http *h, kv_pace_stats *st)
{
  kv_pace *p = &h->pace;
  pthread_mutex_lock(&p->lock);
  st->rate = kv_pace_rate(p, kv_now_ms());
  st->throttled = p->n_throttled;
  st->waits = p->n_waits;
  st->blocked_ms = p->blocked_until - kv_now_ms();
  if (st->blocked_ms < 0)
    st->blocked_ms = 0;
  pthread_mutex_unlock(&p->lock);
}

void kv_http_do_retry(kv_http *h, const kv_req *req, const kv_retry *rt, int json_2xx,
                      kv_resp *resp)
{
  int attempt = 0, throttled = 0;
  /* data-plane requests carry the token; the token endpoint is not the vault */
  int paced = req->auth_header != NULL;
  for (;;) {
    int64_t now = kv_now_ms(), left = rt->deadline_ms - now, delay, sent;
    unsigned char rnd[2];
    const char *why;
    char whybuf[160];

    if (left <= 0) {
      if (resp->status == 0 && resp->curl_err[0] == '\0')
        snprintf(resp->curl_err, sizeof(resp->curl_err), "timed out");
      return;
    }
    if (paced && kv_pace_wait(h, rt->deadline_ms) != 0) {
      if (resp->status == 0 && resp->curl_err[0] == '\0')
        snprintf(resp->curl_err, sizeof(resp->curl_err),
                 "the vault is throttling requests; no time left to wait for it");
      KVP_WARN("%s: the vault is throttling requests; no time left to wait for it", rt->what);
      return;
    }
    sent = kv_now_ms();
    left = rt->deadline_ms - sent;
    if (left <= 0)
      continue;
    /* one attempt gets at most attempt_ms and half of the time left, so that a
     * hung connection is abandoned and the request retried on a fresh one */
    if (rt->attempt_ms > 0 && left > 1) {
      int64_t cap = rt->attempt_ms < left / 2 ? rt->attempt_ms : left / 2;
      kv_http_do(h, req, (long)cap, resp);
    } else {
      kv_http_do(h, req, (long)left, resp);
    }
    if (paced && resp->status != 0 && resp->status != 429)
      kv_pace_accepted(h);
    if (resp->capped)
      return; /* not retried: a server sending this much is broken */
    if (resp->status == 0) {
      /* a certificate that does not verify or a bad URL does not get better */
      if (resp->cc == CURLE_PEER_FAILED_VERIFICATION || resp->cc == CURLE_SSL_CACERT_BADFILE ||
          resp->cc == CURLE_SSL_CERTPROBLEM || resp->cc == CURLE_URL_MALFORMAT ||
          resp->cc == CURLE_UNSUPPORTED_PROTOCOL || resp->cc == CURLE_OUT_OF_MEMORY)
        return;
      why = resp->curl_err;
    } else if (kv_status_transient(resp->status) ||
               (req->retry_404_410 && (resp->status == 404 || resp->status == 410))) {
      snprintf(whybuf, sizeof(whybuf), "HTTP %ld", resp->status);
      why = whybuf;
    } else if (json_2xx && resp->status >= 200 && resp->status < 300 && resp->json == NULL) {
      why = "response body is not a JSON object";
    } else {
      return;
    }
    /* A 429 is the service's flow control, not a failure: it does not use up
     * max_retries (only the operation's time); everything else does. */
    if (resp->status != 429 && attempt >= rt->max_retries) {
      KVP_WARN("%s: giving up after %d retries: %s (x-ms-request-id %s)", rt->what, attempt, why,
               resp->request_id);
      return;
    }
    if (resp->retry_after_ms >= 0) {
      delay = resp->retry_after_ms;
    } else {
      int n = resp->status == 429 ? throttled : attempt;
      int64_t base = (int64_t)rt->unit_ms << (n < 4 ? n : 4); /* 1, 2, 4, 8, 16 units */
      unsigned r;
      if (RAND_bytes(rnd, sizeof(rnd)) != 1)
        rnd[0] = rnd[1] = 0x80;
      r = ((unsigned)rnd[0] << 8 | rnd[1]) % 401; /* 0..400 -> -20%..+20% */
      delay = base * (800 + (int64_t)r) / 1000;
    }
    now = kv_now_ms();
    if (now + delay >= rt->deadline_ms) {
      KVP_WARN("%s: %s (x-ms-request-id %s); no time left for a retry in %lld ms", rt->what, why,
               resp->request_id, (long long)delay);
      return;
    }
    if (resp->status == 429) {
      throttled++;
      if (paced) {
        /* the whole vault waits; kv_pace_wait() sleeps for it before the retry */
        kv_pace_throttled(h, sent, delay, rt->what);
        KVP_DEBUG("%s: HTTP 429 (x-ms-request-id %s); retry after %lld ms", rt->what,
                  resp->request_id, (long long)delay);
        continue;
      }
    } else {
      attempt++;
    }
    KVP_INFO("%s: %s (x-ms-request-id %s); retry %d in %lld ms", rt->what, why, resp->request_id,
             attempt + throttled, (long long)delay);
    kv_sleep_ms(delay);
  }
}
