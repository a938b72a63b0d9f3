/*
 * The audit trail (see audit.h). Records are built with jansson and written
 * with one write() (file) or one syslog() call, so records of concurrent
 * threads and processes never interleave.
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

static void close_locked(void)
{
  if (audit_fd >= 0)
    close(audit_fd);
  audit_fd = -1;
  atomic_store(&audit_dest, DEST_OFF);
}

void kvp_audit_setup(const char *dest)
{
  pthread_mutex_lock(&audit_lock);
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
static json_t *record(const char *event)
{
  struct timespec ts;
  struct tm tm;
  char when[96];

  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  snprintf(when, sizeof(when), "%04d-%02d-%02dT%02d:%02d:%02d.%06ldZ", tm.tm_year + 1900,
           tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000L);
  return json_pack("{s:s, s:s, s:I, s:I, s:s}", "time", when, "event", event, "pid",
                   (json_int_t)getpid(), "uid", (json_int_t)getuid(), "process",
                   program_invocation_short_name);
}

/* A string field, or null. */
static void put(json_t *o, const char *k, const char *v)
{
  json_object_set_new(o, k, v != NULL ? json_string(v) : json_null());
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

void kvp_audit_key_op(kvp_audit_op_kind op, const char *account, const char *cert,
                      const char *key_ref, const char *version, CK_MECHANISM_TYPE mech, CK_RV rv,
                      uint64_t start)
{
  json_t *o;

  if (!kvp_audit_enabled())
    return;
  o = record(op == KVP_AUDIT_SIGN ? "sign" : "decrypt");
  if (o == NULL)
    return;
  put(o, "account", account);
  put(o, "cert", cert);
  put(o, "key", key_ref);
  put(o, "key_version", version);
  put(o, "mechanism", kvp_ckm_name(mech));
  put(o, "result", kvp_ckr_name(rv));
  json_object_set_new(o, "latency_us", json_integer(start != 0 ? (json_int_t)(now_us() - start) : 0));
  put(o, "request_id", request_id[0] != '\0' ? request_id : NULL);
  request_id[0] = '\0';
  emit(o);
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
