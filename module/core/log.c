/*
 * Logging: one line per event, written with a single write() so that lines
 * from several threads (or processes appending to the same file) never mix.
 *
 *   2026-11-25T11:44:00.123Z kvp11[1234] ERROR registry.c:42 kvp_registry_open: text
 *
 * KVP11_DEBUG="level[:file]" is read once, when the library is loaded, and
 * then overrides whatever kvp_log_setup() is given: its level replaces the
 * configured one, and its destination (the file, or stderr when no file is
 * named) replaces the configured log_file. It is read with secure_getenv():
 * a setuid/setgid process ignores it.
 *
 * Destinations: stderr (no log_file), a file (appended to, created 0640,
 * never through a symbolic link), or syslog(3) ("syslog"; facility user,
 * the host program's openlog() settings are left alone, every line carries
 * "kvp11[pid]"). On a shared machine many users' processes load the module:
 * one that cannot open the configured file logs to syslog instead and says
 * nothing on stderr, unless KVP11_DEBUG is set.
 */
#define _GNU_SOURCE /* secure_getenv */
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#define LOG_LINE_MAX 2048

int kvp_log_threshold = KVP_LOG_WARN;

static pthread_once_t env_once = PTHREAD_ONCE_INIT;
static int env_level = -1; /* -1: KVP11_DEBUG not set (or invalid) */
static char *env_file;     /* NULL: stderr */

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static int log_fd = -1;     /* -1: stderr or syslog */
static int log_syslog = 0;  /* 1: syslog(3) */

static const char *const level_names[] = {"ERROR", "WARN", "INFO", "DEBUG"};

int kvp_log_level_parse(const char *s)
{
  if (s == NULL)
    return -1;
  for (size_t i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++)
    if (strcasecmp(s, level_names[i]) == 0)
      return (int)i;
  return -1;
}

static void env_parse(void)
{
  const char *v = secure_getenv("KVP11_DEBUG");
  const char *colon;
  char level[16];
  size_t n;

  if (v == NULL || *v == '\0')
    return;
  colon = strchr(v, ':');
  n = colon != NULL ? (size_t)(colon - v) : strlen(v);
  if (n >= sizeof(level))
    n = sizeof(level) - 1;
  memcpy(level, v, n);
  level[n] = '\0';
  env_level = kvp_log_level_parse(level);
  if (env_level < 0) {
    fprintf(stderr, "kvp11: KVP11_DEBUG: unknown level '%s' (error|warn|info|debug), ignored\n",
            level);
    return;
  }
  if (colon != NULL && colon[1] != '\0')
    env_file = strdup(colon + 1);
}

/* Called with log_lock held. */
static void open_dest_locked(const char *file)
{
  if (log_fd >= 0)
    close(log_fd);
  log_fd = -1;
  log_syslog = 0;
  if (file == NULL)
    return;
  if (strcmp(file, "syslog") == 0) {
    log_syslog = 1;
    return;
  }
  log_fd = open(file, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOCTTY | O_NOFOLLOW, 0640);
  if (log_fd >= 0)
    return;
  if (env_level >= 0) {
    fprintf(stderr, "kvp11: cannot open log file %s: %s; logging to stderr\n", file,
            strerror(errno));
    return;
  }
  /* Quietly: this process's user may simply not be allowed to write there. */
  log_syslog = 1;
  if (kvp_log_threshold >= KVP_LOG_INFO)
    syslog(LOG_USER | LOG_INFO, "kvp11[%ld] INFO cannot open log file %s: %s; logging to syslog",
           (long)getpid(), file, strerror(errno));
}

void kvp_log_setup(int level, const char *file)
{
  pthread_once(&env_once, env_parse);
  pthread_mutex_lock(&log_lock);
  if (env_level >= 0) {
    level = env_level;
    file = env_file;
  }
  kvp_log_threshold = level;
  open_dest_locked(file);
  pthread_mutex_unlock(&log_lock);
}

__attribute__((constructor)) static void log_init(void)
{
  pthread_once(&env_once, env_parse);
  if (env_level >= 0)
    kvp_log_setup(env_level, env_file);
}

void kvp_log_close(void)
{
  pthread_mutex_lock(&log_lock);
  open_dest_locked(NULL);
  pthread_mutex_unlock(&log_lock);
}

static size_t format_prefix(char *buf, size_t size, int level, const char *file, int line,
                            const char *func)
{
  struct timespec ts;
  struct tm tm;
  const char *base = strrchr(file, '/');
  int n;

  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  n = snprintf(buf, size,
               "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ kvp11[%ld] %s %s:%d %s: ", tm.tm_year + 1900,
               tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000L,
               (long)getpid(), level >= 0 && level <= KVP_LOG_DEBUG ? level_names[level] : "?",
               base != NULL ? base + 1 : file, line, func);
  if (n < 0)
    return 0;
  return (size_t)n < size ? (size_t)n : size - 1;
}

static void write_all(int fd, const char *p, size_t len)
{
  while (len > 0) {
    ssize_t w = write(fd, p, len);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0)
      return;
    p += w;
    len -= (size_t)w;
  }
}

void kvp_log_write(int level, const char *file, int line, const char *func, const char *fmt, ...)
{
  char buf[LOG_LINE_MAX];
  size_t len = format_prefix(buf, sizeof(buf) - 1, level, file, line, func);
  size_t room = sizeof(buf) - 1 - len; /* keep one byte for '\n' */
  va_list ap;
  int n;

  va_start(ap, fmt);
  n = vsnprintf(buf + len, room, fmt, ap);
  va_end(ap);
  if (n < 0)
    n = 0;
  if ((size_t)n >= room) {
    n = (int)room - 1;
    if (n >= 3)
      memcpy(buf + len + n - 3, "...", 3);
  }
  /* One event, one line: no control characters from the message. */
  for (size_t i = len; i < len + (size_t)n; i++)
    if ((unsigned char)buf[i] < 0x20 || buf[i] == 0x7f)
      buf[i] = '?';
  len += (size_t)n;
  buf[len++] = '\n';

  pthread_mutex_lock(&log_lock);
  if (log_syslog) {
    static const int prio[] = {LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG};
    const char *msg = memchr(buf, ' ', len); /* syslog stamps the time itself */
    buf[len - 1] = '\0';
    syslog(LOG_USER | prio[level >= 0 && level <= KVP_LOG_DEBUG ? level : 0], "%s",
           msg != NULL ? msg + 1 : buf);
  } else {
    write_all(log_fd >= 0 ? log_fd : STDERR_FILENO, buf, len);
  }
  pthread_mutex_unlock(&log_lock);
}
