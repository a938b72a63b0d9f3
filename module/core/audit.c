/*
 * The audit trail (see audit.h). Records are serialized with jansson and
 * written with one write() (file) or one syslog() call, so records of
 * concurrent threads and processes never interleave.
 *
 * Private-key operations are the hot path (one record per C_Sign): building
 * and dumping a jansson object for each cost about 9 % of a SoftHSM2 P-256
 * sign. Their record is therefore joined from fragments that jansson
 * serialized once: the per-process prefix (pid, uid, process name) at setup,
 * the per-key part (account, cert, key, version, mechanism) in a small
 * per-thread cache; what changes per call (time, result name, latency) needs
 * no escaping. The request id, when there is one, is serialized each time.
 */
#define _GNU_SOURCE /* program_invocation_short_name */
#include "audit.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "p11names.h"

enum { DEST_OFF = 0, DEST_SYSLOG, DEST_FILE };

static atomic_int audit_dest = DEST_OFF;
static pthread_mutex_t audit_lock = PTHREAD_MUTEX_INITIALIZER;
static int audit_fd = -1;
static _Thread_local char request_id[96];
static char proc_part[512]; /* "\"pid\":1,\"uid\":0,\"process\":\"nginx\"" */

/* Per-thread cache of serialized key parts. */
#define KEY_CACHE 4
typedef struct {
  char id[512];    /* account, cert, key, version and mechanism, NUL-separated */
  size_t id_len;
  char json[1024]; /* "\"account\":...,\"mechanism\":\"CKM_...\"" */
} key_part;
static _Thread_local key_part key_cache[KEY_CACHE];
static _Thread_local unsigned key_next;

static void close_locked(void)
{
  if (audit_fd >= 0)
    close(audit_fd);
  audit_fd = -1;
  atomic_store(&audit_dest, DEST_OFF);
}

static json_t *record(const char *event);

/* Serialize the fields of o (an object) without its braces into out. */
static int fields_of(json_t *o, char *out, size_t size)
{
  size_t n = o != NULL ? json_dumpb(o, out, size, JSON_COMPACT | JSON_PRESERVE_ORDER) : 0;

  json_decref(o);
  if (n < 2 || n >= size)
    return -1;
  memmove(out, out + 1, n - 2); /* drop '{' and '}' */
  out[n - 2] = '\0';
  return 0;
}

void kvp_audit_setup(const char *dest)
{
  pthread_mutex_lock(&audit_lock);
  if (fields_of(json_pack("{s:I, s:I, s:s}", "pid", (json_int_t)getpid(), "uid",
                          (json_int_t)getuid(), "process", program_invocation_short_name),
                proc_part, sizeof(proc_part)) != 0)
    snprintf(proc_part, sizeof(proc_part), "\"pid\":%ld,\"uid\":%ld,\"process\":null",
             (long)getpid(), (long)getuid());
  close_locked();
  if (dest != NULL && strcmp(dest, "off") != 0) {
    if (strcmp(dest, "syslog") == 0) {
      atomic_store(&audit_dest, DEST_SYSLOG);
    } else {
      audit_fd = open(dest, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOCTTY | O_NOFOLLOW, 0640);
      if (audit_fd >= 0) {
        atomic_store(&audit_dest, DEST_FILE);
      } else {
        /* Never lose a record: this user may not write the file; syslog takes it. */
        KVP_INFO("audit: cannot open %s: %s; auditing to syslog (authpriv)", dest,
                 strerror(errno));
        atomic_store(&audit_dest, DEST_SYSLOG);
      }
    }
  }
  pthread_mutex_unlock(&audit_lock);
}

void kvp_audit_close(void)
{
  pthread_mutex_lock(&audit_lock);
  close_locked();
  pthread_mutex_unlock(&audit_lock);
}

int kvp_audit_enabled(void)
{
  return atomic_load_explicit(&audit_dest, memory_order_relaxed) != DEST_OFF;
}

static uint64_t now_us(void)
{
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

uint64_t kvp_audit_start(void)
{
  return kvp_audit_enabled() ? now_us() : 0;
}

void kvp_audit_request_id(const char *id)
{
  snprintf(request_id, sizeof(request_id), "%s", id != NULL ? id : "");
}

/* A record with the fields every event has. */
static void utc_now(char *when, size_t size);

static json_t *record(const char *event)
{
  char when[96];

  utc_now(when, sizeof(when));
  return json_pack("{s:s, s:s, s:I, s:I, s:s}", "time", when, "event", event, "pid",
                   (json_int_t)getpid(), "uid", (json_int_t)getuid(), "process",
                   program_invocation_short_name);
}

/* A string field, or null. */
static void put(json_t *o, const char *k, const char *v)
{
  json_object_set_new(o, k, v != NULL ? json_string(v) : json_null());
}

/* Write one record (n bytes in buf, room for one more). */
static void write_line(char *buf, size_t n)
{
  buf[n++] = '\n';
  pthread_mutex_lock(&audit_lock);
  if (audit_fd >= 0) {
    ssize_t w = write(audit_fd, buf, n); /* O_APPEND: one record, one write */
    if (w != (ssize_t)n)
      KVP_ERROR("audit: write failed: %s", w < 0 ? strerror(errno) : "short write");
  } else if (atomic_load(&audit_dest) == DEST_SYSLOG) {
    buf[n - 1] = '\0';
    syslog(LOG_AUTHPRIV | LOG_INFO, "kvp11-audit[%ld]: %s", (long)getpid(), buf);
  }
  pthread_mutex_unlock(&audit_lock);
}

static void emit(json_t *o)
{
  char buf[2048];
  size_t n;

  if (o == NULL)
    return;
  n = json_dumpb(o, buf, sizeof(buf) - 1, JSON_COMPACT | JSON_PRESERVE_ORDER);
  json_decref(o);
  if (n == 0 || n >= sizeof(buf) - 1) {
    KVP_ERROR("audit: a record did not fit in %zu bytes; dropped", sizeof(buf));
    return;
  }
  write_line(buf, n);
}

/* The cache key of a record's key part; 0 when it does not fit (then not cached). */
static size_t key_id(char *id, size_t size, const char *const v[4], CK_MECHANISM_TYPE mech)
{
  size_t n = 0;

  for (int i = 0; i < 4; i++) {
    size_t l = v[i] != NULL ? strlen(v[i]) : 0;
    if (n + l + 2 > size)
      return 0;
    id[n++] = v[i] != NULL ? 's' : 'n'; /* NULL and "" differ */
    memcpy(id + n, v[i] != NULL ? v[i] : "", l);
    n += l;
    id[n++] = '\0';
  }
  if (n + sizeof(mech) > size)
    return 0;
  memcpy(id + n, &mech, sizeof(mech));
  return n + sizeof(mech);
}

/* The serialized key part of a record, from the cache or made now into tmp; NULL on failure. */
static const char *key_json(const char *account, const char *cert, const char *key_ref,
                            const char *version, CK_MECHANISM_TYPE mech, char *tmp, size_t size)
{
  const char *const v[4] = {account, cert, key_ref, version};
  char id[sizeof(key_cache[0].id)];
  size_t id_len = key_id(id, sizeof(id), v, mech);
  key_part *p = NULL;
  json_t *o;

  for (unsigned i = 0; id_len > 0 && i < KEY_CACHE; i++)
    if (key_cache[i].id_len == id_len && memcmp(key_cache[i].id, id, id_len) == 0)
      return key_cache[i].json;
  o = json_object();
  put(o, "account", account);
  put(o, "cert", cert);
  put(o, "key", key_ref);
  put(o, "key_version", version);
  put(o, "mechanism", kvp_ckm_name(mech));
  if (fields_of(o, tmp, size) != 0)
    return NULL;
  if (id_len > 0 && strlen(tmp) < sizeof(p->json)) {
    p = &key_cache[key_next++ % KEY_CACHE];
    memcpy(p->id, id, id_len);
    p->id_len = id_len;
    memcpy(p->json, tmp, strlen(tmp) + 1);
  }
  return tmp;
}

/* "2026-12-07T21:59:37" of t (UTC). */
static void sec_prefix(time_t t, char out[64])
{
  struct tm tm;

  gmtime_r(&t, &tm);
  snprintf(out, 64, "%04d-%02d-%02dT%02d:%02d:%02d", tm.tm_year + 1900, tm.tm_mon + 1,
           tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

/* "2026-12-07T21:59:37.945211Z" */
static void utc_now(char *when, size_t size)
{
  char sec[64];
  struct timespec ts;

  clock_gettime(CLOCK_REALTIME, &ts);
  sec_prefix(ts.tv_sec, sec);
  snprintf(when, size, "%s.%06ldZ", sec, ts.tv_nsec / 1000L);
}

/* A bounded string builder for the hot path (no format parsing). */
typedef struct {
  char *p, *end;
} sbuf;

static void put_raw(sbuf *b, const char *s)
{
  size_t n = strlen(s);

  if (b->p == NULL || n > (size_t)(b->end - b->p)) {
    b->p = NULL; /* did not fit */
    return;
  }
  memcpy(b->p, s, n);
  b->p += n;
}

static void put_uint(sbuf *b, unsigned long long v)
{
  char d[24], *q = d + sizeof(d);

  *--q = '\0';
  do {
    *--q = (char)('0' + v % 10);
    v /= 10;
  } while (v != 0);
  put_raw(b, q);
}

static void put_usec(sbuf *b, long usec)
{
  char d[7];

  for (int i = 5; i >= 0; i--, usec /= 10)
    d[i] = (char)('0' + usec % 10);
  d[6] = '\0';
  put_raw(b, d);
}

void kvp_audit_key_op(kvp_audit_op_kind op, const char *account, const char *cert,
                      const char *key_ref, const char *version, CK_MECHANISM_TYPE mech, CK_RV rv,
                      uint64_t start)
{
  static _Thread_local time_t last_sec = -1;
  static _Thread_local char last[64]; /* the time up to the second, per thread */
  char buf[2048], rid[256] = "null", tmp[1024];
  struct timespec ts;
  const char *kj;
  sbuf b = {buf, buf + sizeof(buf) - 1};

  if (!kvp_audit_enabled())
    return;
  uint64_t latency = start != 0 ? now_us() - start : 0;
  kj = key_json(account, cert, key_ref, version, mech, tmp, sizeof(tmp));
  if (kj == NULL) {
    KVP_ERROR("audit: cannot serialize a record; dropped");
    return;
  }
  if (request_id[0] != '\0') {
    json_t *js = json_string(request_id);
    size_t m = js != NULL ? json_dumpb(js, rid, sizeof(rid) - 1, JSON_ENCODE_ANY) : 0;
    json_decref(js);
    rid[m > 0 && m < sizeof(rid) ? m : 0] = '\0';
    if (rid[0] == '\0')
      snprintf(rid, sizeof(rid), "null");
    request_id[0] = '\0';
  }
  clock_gettime(CLOCK_REALTIME, &ts);
  if (ts.tv_sec != last_sec) {
    sec_prefix(ts.tv_sec, last);
    last_sec = ts.tv_sec;
  }
  /* time, result (a CKR_ name) and numbers need no escaping */
  put_raw(&b, "{\"time\":\"");
  put_raw(&b, last);
  put_raw(&b, ".");
  put_usec(&b, ts.tv_nsec / 1000L);
  put_raw(&b, op == KVP_AUDIT_SIGN ? "Z\",\"event\":\"sign\"," : "Z\",\"event\":\"decrypt\",");
  put_raw(&b, proc_part);
  put_raw(&b, ",");
  put_raw(&b, kj);
  put_raw(&b, ",\"result\":\"");
  put_raw(&b, kvp_ckr_name(rv));
  put_raw(&b, "\",\"latency_us\":");
  put_uint(&b, (unsigned long long)latency);
  put_raw(&b, ",\"request_id\":");
  put_raw(&b, rid);
  put_raw(&b, "}");
  if (b.p == NULL) {
    KVP_ERROR("audit: a record did not fit in %zu bytes; dropped", sizeof(buf));
    return;
  }
  write_line(buf, (size_t)(b.p - buf));
}

void kvp_audit_login_failure(const char *account, CK_RV rv)
{
  json_t *o;

  if (!kvp_audit_enabled() || (o = record("login_failure")) == NULL)
    return;
  put(o, "account", account);
  put(o, "result", kvp_ckr_name(rv));
  emit(o);
}

void kvp_audit_change(const char *action, const char *account, const char *name,
                      const char *key_ref, const char *old_sha256, const char *new_sha256)
{
  json_t *o;

  if (!kvp_audit_enabled() || (o = record("change")) == NULL)
    return;
  put(o, "action", action);
  put(o, "account", account);
  put(o, "cert", name);
  put(o, "key", key_ref);
  put(o, "old_sha256", old_sha256 != NULL && *old_sha256 ? old_sha256 : NULL);
  put(o, "new_sha256", new_sha256 != NULL && *new_sha256 ? new_sha256 : NULL);
  emit(o);
}
