/*
 * kv-curl-loop: the baseline for the Key Vault benchmark. A plain libcurl loop
 * that sends the same sign request kvp11 sends (POST /keys/NAME/VERSION/sign,
 * {"alg":"RS256"|"ES256","value":<digest>}) over one kept-alive connection per
 * thread, with the bare minimum of work per request (JSON encode of the body,
 * JSON decode and base64url decode of the answer), and reports the client's CPU
 * time per sign in the same RESULT format as kvp11-bench.
 *
 *   kv-curl-loop -d FIXTURE_DIR -k KEY [-T THREADS] [-s SECONDS | -n SIGNS]
 *
 * FIXTURE_DIR is the directory made by fixture-setup.sh (port, ca.pem,
 * app-full.secret). Not a test: no assertions, exit 0 when every request
 * succeeded.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>
#include <openssl/evp.h>

#define MAX_THREADS 64

static char g_url[128], g_ca[1024], g_auth[4096], g_sign_url[512], g_body[256];
static double g_seconds = 3;
static long g_iterations; /* -n: this many signs per thread instead of -s (callgrind runs) */
static atomic_long g_ops, g_fail;
static atomic_int g_stop;

typedef struct {
  char *buf;
  size_t len;
} buf_t;

static size_t wr(char *p, size_t s, size_t n, void *u)
{
  buf_t *b = u;
  char *nb = realloc(b->buf, b->len + s * n + 1);
  if (nb == NULL)
    return 0;
  memcpy(nb + b->len, p, s * n);
  b->buf = nb;
  b->len += s * n;
  b->buf[b->len] = '\0';
  return s * n;
}

static json_t *request(CURL *c, const char *url, const char *body, const char *ctype,
                       struct curl_slist *extra)
{
  buf_t b = {NULL, 0};
  struct curl_slist *h = NULL, *it;
  json_t *j = NULL;
  char ct[128];
  for (it = extra; it != NULL; it = it->next)
    h = curl_slist_append(h, it->data);
  if (body != NULL) {
    snprintf(ct, sizeof(ct), "Content-Type: %s", ctype);
    h = curl_slist_append(h, ct);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
  } else {
    curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
  }
  curl_easy_setopt(c, CURLOPT_URL, url);
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, wr);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
  if (curl_easy_perform(c) == CURLE_OK && b.buf != NULL)
    j = json_loadb(b.buf, b.len, 0, NULL);
  curl_slist_free_all(h);
  free(b.buf);
  return j;
}

static CURL *handle(void)
{
  CURL *c = curl_easy_init();
  curl_easy_setopt(c, CURLOPT_CAINFO, g_ca);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_TIMEOUT, 30L);
  return c;
}

static void *worker(void *arg)
{
  CURL *c = handle();
  struct curl_slist *h = NULL;
  (void)arg;
  h = curl_slist_append(h, g_auth);
  h = curl_slist_append(h, "Accept: application/json");
  h = curl_slist_append(h, "Expect:");
  long done = 0;
  while (!atomic_load(&g_stop) && (g_iterations == 0 || done++ < g_iterations)) {
    json_t *j = request(c, g_sign_url, g_body, "application/json", h);
    const char *v = json_string_value(json_object_get(j, "value"));
    unsigned char sig[1024];
    int n = -1;
    if (v != NULL && strlen(v) < 1300) {
      char tmp[1400];
      size_t i, l = strlen(v);
      for (i = 0; i < l; i++)
        tmp[i] = v[i] == '-' ? '+' : v[i] == '_' ? '/' : v[i];
      while (l % 4)
        tmp[l++] = '=';
      n = EVP_DecodeBlock(sig, (unsigned char *)tmp, (int)l);
    }
    if (n > 0)
      atomic_fetch_add(&g_ops, 1);
    else
      atomic_fetch_add(&g_fail, 1);
    json_decref(j);
  }
  curl_slist_free_all(h);
  curl_easy_cleanup(c);
  return NULL;
}

static double now_s(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu_s(void)
{
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
         (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

int main(int argc, char **argv)
{
  const char *dir = NULL, *key = NULL;
  int threads = 1, opt, i;
  char path[1100], line[256] = "", url[600], form[800], *esc;
  FILE *f;
  CURL *c;
  json_t *j;
  pthread_t th[MAX_THREADS];
  double t0, c0, el, cpu;
  unsigned char digest[32];
  char b64[64];

  while ((opt = getopt(argc, argv, "d:k:T:s:n:")) != -1) {
    switch (opt) {
    case 'd': dir = optarg; break;
    case 'k': key = optarg; break;
    case 'T': threads = atoi(optarg); break;
    case 's': g_seconds = atof(optarg); break;
    case 'n': g_iterations = atol(optarg); break;
    default: return 2;
    }
  }
  if (dir == NULL || key == NULL || threads < 1 || threads > MAX_THREADS) {
    fprintf(stderr, "usage: kv-curl-loop -d FIXTURE_DIR -k KEY [-T THREADS] [-s SECONDS | -n "
                    "SIGNS]\n");
    return 2;
  }
  snprintf(path, sizeof(path), "%s/port", dir);
  f = fopen(path, "r");
  if (f == NULL || fgets(line, sizeof(line), f) == NULL)
    return 1;
  fclose(f);
  line[strcspn(line, "\r\n")] = '\0';
  snprintf(g_url, sizeof(g_url), "https://127.0.0.1:%.16s", line);
  snprintf(g_ca, sizeof(g_ca), "%s/ca.pem", dir);
  snprintf(path, sizeof(path), "%s/app-full.secret", dir);
  f = fopen(path, "r");
  if (f == NULL || fgets(line, sizeof(line), f) == NULL)
    return 1;
  fclose(f);
  line[strcspn(line, "\r\n")] = '\0';

  curl_global_init(CURL_GLOBAL_DEFAULT);
  c = handle();
  esc = curl_easy_escape(c, line, 0);
  snprintf(form, sizeof(form),
           "grant_type=client_credentials&client_id=app-full&scope=https%%3A%%2F%%2F127.0.0.1%%2F."
           "default&client_secret=%s",
           esc);
  curl_free(esc);
  snprintf(url, sizeof(url), "%s/7c3a4b1e-0d52-4a8e-9f61-5b2e8c1d4f00/oauth2/v2.0/token", g_url);
  j = request(c, url, form, "application/x-www-form-urlencoded", NULL);
  if (json_string_value(json_object_get(j, "access_token")) == NULL) {
    fprintf(stderr, "kv-curl-loop: no token\n");
    return 1;
  }
  snprintf(g_auth, sizeof(g_auth), "Authorization: Bearer %s",
           json_string_value(json_object_get(j, "access_token")));
  json_decref(j);
  {
    struct curl_slist *h = curl_slist_append(NULL, g_auth);
    const char *kid, *ver;
    snprintf(url, sizeof(url), "%s/keys/%s?api-version=7.5", g_url, key);
    j = request(c, url, NULL, NULL, h);
    curl_slist_free_all(h);
    kid = json_string_value(json_object_get(json_object_get(j, "key"), "kid"));
    if (kid == NULL) {
      fprintf(stderr, "kv-curl-loop: cannot get key %s\n", key);
      return 1;
    }
    ver = strrchr(kid, '/') + 1;
    snprintf(g_sign_url, sizeof(g_sign_url), "%s/keys/%s/%s/sign?api-version=7.5", g_url, key, ver);
    EVP_Digest("bench", 5, digest, NULL, EVP_sha256(), NULL);
    EVP_EncodeBlock((unsigned char *)b64, digest, 32);
    for (i = 0; b64[i] != '\0'; i++)
      b64[i] = b64[i] == '+' ? '-' : b64[i] == '/' ? '_' : b64[i] == '=' ? '\0' : b64[i];
    snprintf(g_body, sizeof(g_body), "{\"alg\":\"%s\",\"value\":\"%s\"}",
             strcmp(json_string_value(json_object_get(json_object_get(j, "key"), "kty")), "EC") == 0 ||
                     strcmp(json_string_value(json_object_get(json_object_get(j, "key"), "kty")),
                            "EC-HSM") == 0
                 ? "ES256"
                 : "RS256",
             b64);
    json_decref(j);
  }
  curl_easy_cleanup(c);

  t0 = now_s();
  c0 = cpu_s();
  for (i = 0; i < threads; i++)
    pthread_create(&th[i], NULL, worker, NULL);
  while (g_iterations == 0 && now_s() - t0 < g_seconds)
    usleep(10000);
  if (g_iterations == 0)
    atomic_store(&g_stop, 1);
  for (i = 0; i < threads; i++)
    pthread_join(th[i], NULL);
  el = now_s() - t0;
  cpu = cpu_s() - c0;
  printf("RESULT module=plain-libcurl key=%s threads=%d ops=%ld seconds=%.2f ops_per_sec=%.1f "
         "cpu_us_per_op=%.1f failures=%ld\n",
         key, threads, atomic_load(&g_ops), el, (double)atomic_load(&g_ops) / el,
         atomic_load(&g_ops) ? cpu * 1e6 / (double)atomic_load(&g_ops) : 0.0, atomic_load(&g_fail));
  curl_global_cleanup();
  return atomic_load(&g_fail) == 0 ? 0 : 1;
}
