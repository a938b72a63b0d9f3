/*
 * HTTPS for the Key Vault backend: libcurl with one share handle (connection
 * cache, TLS sessions, DNS) and a small pool of easy handles, so each thread
 * uses its own easy handle and N threads have N requests in flight. No lock
 * is held across a request: the pool mutex only guards the free list, and the
 * share locks are taken by libcurl for the moment it touches shared data.
 */
#include "backend/keyvault/kv.h"

#include <errno.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "core/log.h"
#include "core/util.h"

#define KV_POOL_MAX 32

struct kv_http {
  CURLSH *share;
  pthread_mutex_t share_locks[CURL_LOCK_DATA_LAST];
  pthread_mutex_t pool_lock;
  CURL *pool[KV_POOL_MAX];
  size_t n_pool;
  char *ca_file;
};

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
  if (p != NULL) {
    OPENSSL_cleanse(p, malloc_usable_size(p));
    free(p);
  }
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

/* A moving realloc would leave the old block unwiped: copy, wipe, free. */
static void *kv_mem_realloc(void *p, size_t n)
{
  size_t old;
  void *q;

  if (p == NULL)
    return malloc(n);
  if (n == 0) {
    kv_mem_free(p);
    return NULL;
  }
  old = malloc_usable_size(p);
  if (n <= old)
    return p;
  q = malloc(n);
  if (q == NULL)
    return NULL;
  memcpy(q, p, old);
  kv_mem_free(p);
  return q;
}

static void kv_curl_global_init(void)
{
  kv_curl_init_rc = curl_global_init_mem(CURL_GLOBAL_DEFAULT, kv_mem_malloc, kv_mem_free,
                                         kv_mem_realloc, kv_mem_strdup, kv_mem_calloc);
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
  if (!forked) {
    /* In a forked child the handles and the share are left alone: closing
     * them could send TLS close_notify on the parent's connections. */
    for (i = 0; i < h->n_pool; i++)
      curl_easy_cleanup(h->pool[i]);
    if (h->share != NULL)
      curl_share_cleanup(h->share);
    for (j = 0; j < CURL_LOCK_DATA_LAST; j++)
      pthread_mutex_destroy(&h->share_locks[j]);
    pthread_mutex_destroy(&h->pool_lock);
  }
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
  /* grow to the next power of two; the old buffer is wiped (it may hold a
   * token or a plaintext) */
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

static void kv_trim(char *s)
{
  size_t n = strlen(s);
  while (n > 0 && (s[n - 1] == '\r' || s[n - 1] == '\n' || s[n - 1] == ' ' || s[n - 1] == '\t'))
    s[--n] = '\0';
}

static size_t kv_header_cb(char *buf, size_t size, size_t nitems, void *userp)
{
  kv_resp *r = userp;
  size_t n = size * nitems;
  char line[2048];
  char *colon, *val;
  size_t len = n < sizeof(line) - 1 ? n : sizeof(line) - 1;

  memcpy(line, buf, len);
  line[len] = '\0';
  if (strncmp(line, "HTTP/", 5) == 0) {
    /* a new response (after 100-continue or a retry inside libcurl) */
    free(r->www_auth);
    r->www_auth = NULL;
    r->retry_after_ms = -1;
    strcpy(r->request_id, "-");
    return n;
  }
  colon = strchr(line, ':');
  if (colon == NULL)
    return n;
  *colon = '\0';
  val = colon + 1;
  while (*val == ' ' || *val == '\t')
    val++;
  kv_trim(val);
  if (strcasecmp(line, "x-ms-request-id") == 0) {
    snprintf(r->request_id, sizeof(r->request_id), "%s", val);
  } else if (strcasecmp(line, "www-authenticate") == 0) {
    if (r->www_auth == NULL || strncasecmp(val, "Bearer", 6) == 0) {
      free(r->www_auth);
      r->www_auth = strdup(val);
    }
  } else if (strcasecmp(line, "retry-after-ms") == 0 ||
             strcasecmp(line, "x-ms-retry-after-ms") == 0) {
    char *end;
    long v = strtol(val, &end, 10);
    if (end != val && v >= 0)
      r->retry_after_ms = v;
  } else if (strcasecmp(line, "retry-after") == 0) {
    char *end;
    long v = strtol(val, &end, 10);
    if (end != val && *end == '\0' && v >= 0) {
      if (r->retry_after_ms < 0)
        r->retry_after_ms = v * 1000;
    } else {
      time_t t = curl_getdate(val, NULL);
      if (t != (time_t)-1 && r->retry_after_ms < 0) {
        long d = (long)(t - time(NULL));
        r->retry_after_ms = d > 0 ? d * 1000 : 0;
      }
    }
  }
  return n;
}

/* x-ms-client-request-id: a random per-process prefix and a counter (unique,
 * and cheaper than drawing 16 random bytes for every request) */
static unsigned char kv_rid_prefix[8];
static pthread_once_t kv_rid_once = PTHREAD_ONCE_INIT;
static _Atomic unsigned long long kv_rid_counter;

static void kv_rid_init(void)
{
  if (RAND_bytes(kv_rid_prefix, sizeof(kv_rid_prefix)) != 1)
    memset(kv_rid_prefix, 0x5a, sizeof(kv_rid_prefix));
  kv_rid_prefix[6] = (unsigned char)((kv_rid_prefix[6] & 0x0f) | 0x40);
}

static void kv_request_id(char *out, size_t outlen)
{
  const unsigned char *b = kv_rid_prefix;
  unsigned long long n;
  pthread_once(&kv_rid_once, kv_rid_init);
  n = ++kv_rid_counter;
  snprintf(out, outlen,
           "x-ms-client-request-id: %02x%02x%02x%02x-%02x%02x-%02x%02x-%04llx-%012llx", b[0], b[1],
           b[2], b[3], b[4], b[5], b[6], b[7], 0x8000ULL | ((n >> 48) & 0x3fffULL),
           n & 0xffffffffffffULL);
}

int kv_http_do(kv_http *h, const kv_req *req, long timeout_ms, kv_resp *resp)
{
  CURL *c;
  struct curl_slist *hdrs = NULL, *it;
  char ct[128], rid[96];
  CURLcode cc;

  kv_resp_clear(resp, 1);
  c = kv_pool_get(h);
  if (c == NULL) {
    resp->cc = CURLE_OUT_OF_MEMORY;
    snprintf(resp->curl_err, sizeof(resp->curl_err), "out of memory");
    return -1;
  }
  {
    /* A handle from this pool keeps its fixed options: set them once per
     * handle (marked with CURLOPT_PRIVATE), not once per request. */
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
    }
  }
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

  hdrs = curl_slist_append(hdrs, "Accept: application/json");
  hdrs = curl_slist_append(hdrs, "Expect:");
  kv_request_id(rid, sizeof(rid));
  hdrs = curl_slist_append(hdrs, rid);
  if (req->auth_header != NULL)
    hdrs = curl_slist_append(hdrs, req->auth_header);
  if (req->extra_header != NULL)
    hdrs = curl_slist_append(hdrs, req->extra_header);
  if (req->body != NULL) {
    snprintf(ct, sizeof(ct), "Content-Type: %s",
             req->content_type != NULL ? req->content_type : "application/json");
    hdrs = curl_slist_append(hdrs, ct);
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
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);

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
  /* the Authorization header is a secret: wipe our copy */
  for (it = hdrs; it != NULL; it = it->next)
    if (strncasecmp(it->data, "Authorization:", 14) == 0)
      kvp_wipe(it->data, strlen(it->data));
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, NULL);
  curl_easy_setopt(c, CURLOPT_POSTFIELDS, NULL);
  curl_slist_free_all(hdrs);
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

void kv_http_do_retry(kv_http *h, const kv_req *req, const kv_retry *rt, int json_2xx,
                      kv_resp *resp)
{
  int attempt = 0;
  for (;;) {
    int64_t now = kv_now_ms(), left = rt->deadline_ms - now, delay;
    int transient;
    unsigned char rnd[2];
    const char *why;
    char whybuf[160];

    if (left <= 0) {
      if (resp->status == 0 && resp->curl_err[0] == '\0')
        snprintf(resp->curl_err, sizeof(resp->curl_err), "timed out");
      return;
    }
    kv_http_do(h, req, (long)left, resp);
    if (resp->capped)
      return; /* not retried: a server sending this much is broken */
    if (resp->status == 0) {
      /* a certificate that does not verify or a bad URL does not get better */
      if (resp->cc == CURLE_PEER_FAILED_VERIFICATION || resp->cc == CURLE_SSL_CACERT_BADFILE ||
          resp->cc == CURLE_SSL_CERTPROBLEM || resp->cc == CURLE_URL_MALFORMAT ||
          resp->cc == CURLE_UNSUPPORTED_PROTOCOL || resp->cc == CURLE_OUT_OF_MEMORY)
        return;
      transient = 1;
      why = resp->curl_err;
    } else if (kv_status_transient(resp->status) ||
               (req->retry_404_410 && (resp->status == 404 || resp->status == 410))) {
      transient = 1;
      snprintf(whybuf, sizeof(whybuf), "HTTP %ld", resp->status);
      why = whybuf;
    } else if (json_2xx && resp->status >= 200 && resp->status < 300 && resp->json == NULL) {
      transient = 1;
      why = "response body is not a JSON object";
    } else {
      return;
    }
    (void)transient;
    if (attempt >= rt->max_retries) {
      KVP_WARN("%s: giving up after %d retries: %s (x-ms-request-id %s)", rt->what, attempt, why,
               resp->request_id);
      return;
    }
    if (resp->retry_after_ms >= 0) {
      delay = resp->retry_after_ms;
    } else {
      int64_t base = (int64_t)rt->unit_ms << (attempt < 10 ? attempt : 10);
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
    KVP_INFO("%s: %s (x-ms-request-id %s); retry %d in %lld ms", rt->what, why, resp->request_id,
             attempt + 1, (long long)delay);
    kv_sleep_ms(delay);
    attempt++;
  }
}
