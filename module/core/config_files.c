/*
 * What the configuration trusts: the environment, and the files it names.
 *
 * Environment variables are read with secure_getenv(): a setuid or setgid
 * program (any process started with AT_SECURE) sees none of them, so
 * KVP11_CONF, KVP11_REGISTRY, KVP11_DEBUG, AZURE_*, IDENTITY_* and IMDS_*
 * cannot redirect a privileged program to a file its caller wrote.
 *
 * Files (see config.h, "File trust"):
 *  - the configuration, the registry and the registry's directory must not be
 *    writable by group or others, and must be owned by root or by the user the
 *    process runs as;
 *  - secret files (PIN, client secret, client key) must be regular files that
 *    others cannot access at all; the group may read them when the group is
 *    root's or the kvp11 service group, never write them;
 *  - an HSM module file must not be writable by group or others.
 * Every refusal is one line naming the file and the command that fixes it.
 */
#define _GNU_SOURCE /* secure_getenv */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util.h"

#define SECRET_MAX_LEN 65536

const char *kvp_getenv(const char *name)
{
  return secure_getenv(name);
}

int kvp_served_over_rpc(void)
{
  return strcmp(program_invocation_short_name, "p11-kit-remote") == 0;
}

int kvp_errno_rc(int e)
{
  switch (e) {
  case ENOENT:
  case ENOTDIR:
    return KVP_ENOTFOUND;
  case EACCES:
  case EPERM:
    return KVP_EPERM;
  case ENOMEM:
    return KVP_ENOMEM;
  default:
    return KVP_EIO;
  }
}

/* gid of the kvp11 service group, or (gid_t)-1 when there is none. */
static gid_t service_gid(void)
{
  struct group gr, *res = NULL;
  char buf[1024];

  if (getgrnam_r(KVP11_SERVICE_GROUP, &gr, buf, sizeof(buf), &res) != 0 || res == NULL)
    return (gid_t)-1;
  return gr.gr_gid;
}

int kvp_trust_stat(const char *what, const char *path, const struct stat *st, char *err,
                   size_t errlen)
{
  uid_t me = geteuid();

  if ((st->st_mode & 022) != 0)
    return kvp_seterr(err, errlen, KVP_EPERM,
                      "%s: the %s is %s-writable (mode %04o): anyone in it could change what "
                      "kvp11 trusts; fix: chmod go-w %s",
                      path, what, (st->st_mode & 002) ? "world" : "group",
                      (unsigned)(st->st_mode & 07777), path);
  if (st->st_uid != 0 && st->st_uid != me)
    return kvp_seterr(err, errlen, KVP_EPERM,
                      "%s: the %s is owned by uid %ld, neither root nor this process's user "
                      "(uid %ld); fix: chown root %s",
                      path, what, (long)st->st_uid, (long)me, path);
  return KVP_OK;
}

int kvp_trust_path(const char *what, const char *path, char *err, size_t errlen)
{
  struct stat st;

  /* A file this process cannot even look at (a user outside the group kvp11)
   * cannot be read either: nothing to trust, and opening it fails later. */
  if (stat(path, &st) != 0)
    return errno == ENOENT || errno == EACCES ? KVP_ENOTFOUND
                           : kvp_seterr(err, errlen, kvp_errno_rc(errno), "%s: %s: %s", path, what,
                                        strerror(errno));
  return kvp_trust_stat(what, path, &st, err, errlen);
}

int kvp_registry_trust(const char *registry, char *err, size_t errlen)
{
  char dir[4096];
  const char *slash = strrchr(registry, '/');
  size_t n = slash == NULL ? 0 : (size_t)(slash - registry);
  int rc;

  if (n >= sizeof(dir))
    return kvp_seterr(err, errlen, KVP_EINVAL, "%s: registry path too long", registry);
  memcpy(dir, registry, n);
  dir[n] = '\0';
  rc = kvp_trust_path("registry directory", n == 0 ? "/" : dir, err, errlen);
  if (rc != KVP_OK && rc != KVP_ENOTFOUND)
    return rc;
  rc = kvp_trust_path("registry", registry, err, errlen);
  return rc == KVP_ENOTFOUND ? KVP_OK : rc;
}

int kvp_secret_stat_ok(const char *path, const struct stat *st, char *err, size_t errlen)
{
  mode_t m = st->st_mode;

  if (!S_ISREG(m))
    return kvp_seterr(err, errlen, KVP_EINVAL, "%s: not a regular file", path);
  if ((m & 027) != 0)
    return kvp_seterr(err, errlen, KVP_EPERM,
                      "%s: mode %04o lets %s this secret; fix: chmod 600 %s (or chmod 640 and "
                      "chgrp %s to share it with the service group)",
                      path, (unsigned)(m & 07777),
                      (m & 007) ? "others access" : "the group write", path, KVP11_SERVICE_GROUP);
  if ((m & 040) != 0 && st->st_gid != 0 && st->st_gid != service_gid())
    return kvp_seterr(err, errlen, KVP_EPERM,
                      "%s: mode %04o lets group %ld read this secret, and only the group '%s' "
                      "(or root's) may; fix: chgrp %s %s, or chmod 600 %s",
                      path, (unsigned)(m & 07777), (long)st->st_gid, KVP11_SERVICE_GROUP,
                      KVP11_SERVICE_GROUP, path, path);
  return KVP_OK;
}

static int read_fd_all(int fd, size_t size, char **out, size_t *len)
{
  char *buf = malloc(size + 1);
  size_t got = 0;

  if (buf == NULL)
    return KVP_ENOMEM;
  while (got < size) {
    ssize_t n = read(fd, buf + got, size - got);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      kvp_wipe(buf, got);
      free(buf);
      return KVP_EIO;
    }
    if (n == 0)
      break;
    got += (size_t)n;
  }
  buf[got] = '\0';
  *out = buf;
  *len = got;
  return KVP_OK;
}

int kvp_secret_read_file(const char *path, char **out, size_t *len, char *err, size_t errlen)
{
  struct stat st;
  char *buf = NULL;
  size_t n = 0;
  int fd = -1;
  int rc;

  *out = NULL;
  fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  if (fd < 0 || fstat(fd, &st) != 0) {
    rc = kvp_seterr(err, errlen, kvp_errno_rc(errno), "%s: cannot open: %s", path,
                    strerror(errno));
    goto out;
  }
  rc = kvp_secret_stat_ok(path, &st, err, errlen);
  if (rc != KVP_OK)
    goto out;
  if (st.st_size > SECRET_MAX_LEN) {
    rc = kvp_seterr(err, errlen, KVP_EINVAL, "%s: too large for a secret", path);
    goto out;
  }
  rc = read_fd_all(fd, (size_t)st.st_size, &buf, &n);
  if (rc != KVP_OK) {
    kvp_seterr(err, errlen, rc, "%s: cannot read: %s", path, strerror(errno));
    goto out;
  }
  if (n > 0 && buf[n - 1] == '\n')
    buf[--n] = '\0';
  if (n > 0 && buf[n - 1] == '\r')
    buf[--n] = '\0';
  if (n == 0) {
    rc = kvp_seterr(err, errlen, KVP_EINVAL, "%s: the secret is empty", path);
    goto out;
  }
  *out = buf;
  *len = n;
  buf = NULL;
out:
  if (buf != NULL)
    kvp_free_secret(buf);
  if (fd >= 0)
    close(fd);
  return rc;
}

int kvp_hsm_conf_pin(const kvp_hsm_conf *h, char **out, size_t *len, char *err, size_t errlen)
{
  const char *v;

  *out = NULL;
  if (h->pin_file != NULL)
    return kvp_secret_read_file(h->pin_file, out, len, err, errlen);
  if (h->pin_env == NULL)
    return KVP_ENOTFOUND;
  v = kvp_getenv(h->pin_env);
  if (v == NULL || *v == '\0')
    return kvp_seterr(err, errlen, KVP_EINVAL, "hsm %s: environment variable %s (pin_env) is %s",
                      h->name, h->pin_env, v == NULL ? "not set" : "empty");
  *out = strdup(v);
  if (*out == NULL)
    return KVP_ENOMEM;
  *len = strlen(v);
  return KVP_OK;
}

int kvp_log_dest_check(const char *path, char *why, size_t whylen)
{
  struct stat st;

  if (strcmp(path, "syslog") == 0 || strcmp(path, "/dev/null") == 0) /* /dev/null: discard */
    return KVP_OK;
  if (path[0] != '/')
    return kvp_seterr(why, whylen, KVP_EINVAL,
                      "'%s' is not an absolute path (write syslog, or a path starting with /)",
                      path);
  if (strncmp(path, "/dev/", 5) == 0 || strncmp(path, "/proc/", 6) == 0 ||
      strncmp(path, "/sys/", 5) == 0)
    return kvp_seterr(why, whylen, KVP_EINVAL,
                      "%s is not a place for a regular file (write syslog to use the system log)",
                      path);
  if (stat(path, &st) == 0 && !S_ISREG(st.st_mode))
    return kvp_seterr(why, whylen, KVP_EINVAL, "%s exists and is not a regular file", path);
  return KVP_OK;
}
