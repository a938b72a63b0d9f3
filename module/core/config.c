/*
 * kvp11.conf parser and validator (see config.h for the format).
 *
 * inih does the key = value splitting and comment handling; we feed it lines
 * through ini_parse_stream() with our own reader, which
 *  - counts lines, so every error can name its line (inih 55 as shipped by
 *    Debian does not pass the line number to the handler);
 *  - strips leading white space, so an indented "key = value" is an ordinary
 *    key and never a multi-line continuation of the previous value;
 *  - sees section headers before inih does, so the line of every header is
 *    known, empty sections are validated too, and the previous section is
 *    checked (required keys, exclusive keys) when the next one starts.
 *
 * Relative paths (registry, pin_file, client_secret_file, client_cert_file,
 * client_key_file, ca_file) are taken relative to the directory of the
 * configuration file, so the result does not depend on the working directory
 * of the application that loads the module. The HSM module path, log_file
 * and audit must be absolute (or syslog). Values are never quoted: a value
 * that starts or ends with a quote is refused. What the files must look like
 * (owner, mode) is checked in config_files.c.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <ini.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kvp11/kvp11.h"
#include "log.h"
#include "util.h"

#define NAME_MAX_LEN 64   /* section names: hsm, vault and account names */
#define LABEL_MAX_LEN 32  /* CK_TOKEN_INFO.label */
#define SERIAL_MAX_LEN 16 /* CK_TOKEN_INFO.serialNumber */
#define SECRET_MAX_LEN 65536
#define MAX_KEYS 24 /* the longest section ([vault]) has 17 keys */

typedef enum { SEC_NONE, SEC_GLOBAL, SEC_HSM, SEC_VAULT, SEC_ACCOUNT, SEC_IA } sec_kind;

typedef struct parse_ctx parse_ctx;
typedef struct key_def key_def;
typedef int (*key_setter)(parse_ctx *c, const key_def *k, void *field, const char *value);

struct key_def {
  const char *name;
  size_t off; /* offset of the field in the section's struct */
  key_setter set;
};

struct parse_ctx {
  const char *path;
  char *dir; /* directory of path, for relative paths */
  FILE *f;
  int line;  /* line currently handed to inih */
  char *buf; /* getline() buffer */
  size_t bufsize;
  kvp_config *cfg;

  sec_kind sec; /* current section */
  size_t idx;   /* its index in cfg->hsms / vaults / accounts */
  int sec_line;
  char sec_disp[NAME_MAX_LEN + 16]; /* "[hsm appliance]" */
  const key_def *keys;
  size_t n_keys;
  int key_line[MAX_KEYS]; /* 0: not seen in this section */
  int global_line;        /* line of [global], 0 if none */
  int *store_line;        /* line of default_store per account */

  int rc; /* first error */
  int err_line;
  char *err;
  size_t errlen;
};

/* ---- errors ------------------------------------------------------------ */

/* Record the first error: "FILE:LINE: [section] key 'K': text". */
__attribute__((format(printf, 5, 6))) static int perr(parse_ctx *c, int rc, int line,
                                                      const char *key, const char *fmt, ...)
{
  char msg[KVP_ERRLEN];
  char where[256] = "";
  va_list ap;

  if (c->rc != KVP_OK)
    return c->rc;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  c->rc = rc;
  c->err_line = line;
  if (key != NULL)
    snprintf(where, sizeof(where), "%s%skey '%s': ", c->sec_disp, c->sec_disp[0] ? " " : "", key);
  else if (c->sec_disp[0] != '\0')
    snprintf(where, sizeof(where), "%s: ", c->sec_disp);
  kvp_seterr(c->err, c->errlen, rc, "%s:%d: %s%s", c->path, line, where, msg);
  return rc;
}

#define KEY_ERR(c, k, ...) perr((c), KVP_EINVAL, (c)->line, (k)->name, __VA_ARGS__)

/* ---- value setters ----------------------------------------------------- */

static int store_str(parse_ctx *c, void *field, char *s)
{
  char **dst = field;

  if (s == NULL)
    return perr(c, KVP_ENOMEM, c->line, NULL, "out of memory");
  free(*dst);
  *dst = s;
  return KVP_OK;
}

static int set_str(parse_ctx *c, const key_def *k, void *field, const char *v)
{
  if (*v == '\0')
    return KEY_ERR(c, k, "empty value");
  return store_str(c, field, strdup(v));
}

static char *resolve_path(const parse_ctx *c, const char *v)
{
  char *s;
  size_t n;

  if (v[0] == '/' || c->dir == NULL)
    return strdup(v);
  n = strlen(c->dir) + strlen(v) + 2;
  s = malloc(n);
  if (s != NULL)
    snprintf(s, n, "%s/%s", c->dir, v);
  return s;
}

static int set_path(parse_ctx *c, const key_def *k, void *field, const char *v)
{
  if (*v == '\0')
    return KEY_ERR(c, k, "empty value");
  return store_str(c, field, resolve_path(c, v));
}

static int set_secret_path(parse_ctx *c, const key_def *k, void *field, const char *v)
{
  char why[KVP_ERRLEN];
  struct stat st;
  int rc = set_path(c, k, field, v);
  const char *path = *(char **)field;

  if (rc != KVP_OK)
    return rc;
  if (stat(path, &st) != 0)
    return KEY_ERR(c, k, "%s: %s", path, strerror(errno));
  rc = kvp_secret_stat_ok(path, &st, why, sizeof(why));
  if (rc != KVP_OK)
    return perr(c, rc, c->line, k->name, "%s", why);
  return KVP_OK;
}

/* log_file and audit: syslog, or an absolute path to a regular file (audit: off too). */
static int set_log_dest(parse_ctx *c, const key_def *k, void *field, const char *v)
{
  char why[KVP_ERRLEN];

  if (strcmp(k->name, "audit") == 0 && strcmp(v, "off") == 0)
    return store_str(c, field, strdup(v));
  if (kvp_log_dest_check(v, why, sizeof(why)) != KVP_OK)
    return KEY_ERR(c, k, "%s", why);
  return store_str(c, field, strdup(v));
}

/* The HSM's module: an absolute path (dlopen() would search the library path
 * otherwise) to a file nobody but its owner can replace. A missing file is
 * reported when the HSM is first used. */
static int set_module(parse_ctx *c, const key_def *k, void *field, const char *v)
{
  char why[KVP_ERRLEN];
  struct stat st;

  if (v[0] != '/')
    return KEY_ERR(c, k, "'%s' is not an absolute path: dlopen() would search the library path "
                   "for it; write the full path (e.g. /usr/lib/softhsm/libsofthsm2.so)", v);
  if (stat(v, &st) == 0 && (st.st_mode & 022) != 0) {
    snprintf(why, sizeof(why), "HSM module %s is writable by %s (mode %04o); fix: chmod go-w %s",
             v, (st.st_mode & 002) ? "everyone" : "its group", (unsigned)(st.st_mode & 07777), v);
    return perr(c, KVP_EPERM, c->line, k->name, "%s", why);
  }
  return store_str(c, field, strdup(v));
}

static int set_env_name(parse_ctx *c, const key_def *k, void *field, const char *v)
{
  if (v[0] == '\0' ||
      strspn(v, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_") != strlen(v) ||
      (v[0] >= '0' && v[0] <= '9'))
    return KEY_ERR(c, k, "'%s' is not an environment variable name", v);
  return store_str(c, field, strdup(v));
}

static int set_bounded(parse_ctx *c, const key_def *k, void *field, const char *v, size_t max)
{
  if (strlen(v) > max)
    return KEY_ERR(c, k, "longer than %zu bytes", max);
  return set_str(c, k, field, v);
}

static int set_label(parse_ctx *c, const key_def *k, void *field, const char *v)
{
  return set_bounded(c, k, field, v, LABEL_MAX_LEN);
}

static int set_serial(parse_ctx *c, const key_def *k, void *field, const char *v)
{
  return set_bounded(c, k, field, v, SERIAL_MAX_LEN);
}

static int set_url(parse_ctx *c, const key_def *k, void *field, const char *v, int https_only)
{
  char *s;
  size_t n;
  size_t scheme = strncmp(v, "https://", 8) == 0 ? 8 : strncmp(v, "http://", 7) == 0 ? 7 : 0;

  if (scheme == 0 || (https_only && scheme != 8))
    return KEY_ERR(c, k, "'%s' is not an %s URL", v, https_only ? "https://" : "http(s)://");
  if (v[scheme] == '\0' || v[scheme] == '/' || strpbrk(v, " \t\"'<>\\") != NULL)
    return KEY_ERR(c, k, "'%s' is not a valid URL", v);
  s = strdup(v);
  if (s != NULL)
    for (n = strlen(s); n > scheme && s[n - 1] == '/'; n--)
      s[n - 1] = '\0';
  return store_str(c, field, s);
}

static int set_https_url(parse_ctx *c, const key_def *k, void *field, const char *v)
{
  return set_url(c, k, field, v, 1);
}

static int set_http_url(parse_ctx *c, const key_def *k, void *field, const char *v)
{
  return set_url(c, k, field, v, 0);
}

static int parse_long(const char *v, long min, long max, long *out)
{
  char *end;
  long n;

  errno = 0;
  n = strtol(v, &end, 10);
  if (errno != 0 || end == v || *end != '\0' || n < min || n > max)
    return -1;
  *out = n;
  return 0;
}

static int set_timeout(parse_ctx *c, const key_def *k, void *field, const char *v)
{
  if (parse_long(v, 1, 3600000, field) != 0)
    return KEY_ERR(c, k, "'%s' is not a positive number of milliseconds (1..3600000)", v);
  return KVP_OK;
}

static int set_seconds(parse_ctx *c, const key_def *k, void *field, const char *v)
{
  if (parse_long(v, 1, 86400, field) != 0)
    return KEY_ERR(c, k, "'%s' is not a number of seconds (1..86400)", v);
  return KVP_OK;
}

static int set_retries(parse_ctx *c, const key_def *k, void *field, const char *v)
{
  long n;

  if (parse_long(v, 0, 100, &n) != 0)
    return KEY_ERR(c, k, "'%s' is not a number from 0 to 100", v);
  *(int *)field = (int)n;
  return KVP_OK;
}

static int set_page_size(parse_ctx *c, const key_def *k, void *field, const char *v)
{
  long n;

  if (parse_long(v, 1, 1000, &n) != 0)
    return KEY_ERR(c, k, "'%s' is not a number from 1 to 1000", v);
  *(long *)field = n;
  return KVP_OK;
}

static int set_level(parse_ctx *c, const key_def *k, void *field, const char *v)
{
  int level = kvp_log_level_parse(v);

  if (level < 0)
    return KEY_ERR(c, k, "'%s' is not one of error, warn, info, debug", v);
  *(int *)field = level;
  return KVP_OK;
}

static int set_api_version(parse_ctx *c, const key_def *k, void *field, const char *v)
{
  static const char *const known[] = {"7.4", "7.5", "7.6", "2025-07-01"};

  for (size_t i = 0; i < KVP_ARRAY_SIZE(known); i++)
    if (strcmp(v, known[i]) == 0)
      return store_str(c, field, strdup(v));
  return KEY_ERR(c, k, "'%s' is not one of 7.4, 7.5, 7.6, 2025-07-01", v);
}

static const char *const auth_names[] = {
    [KVP_AUTH_CLIENT_SECRET] = "client-secret",
    [KVP_AUTH_CLIENT_CERTIFICATE] = "client-certificate",
    [KVP_AUTH_MANAGED_IDENTITY] = "managed-identity",
    [KVP_AUTH_WORKLOAD_IDENTITY] = "workload-identity",
};

static int set_auth(parse_ctx *c, const key_def *k, void *field, const char *v)
{
  for (size_t i = 0; i < KVP_ARRAY_SIZE(auth_names); i++) {
    if (strcmp(v, auth_names[i]) == 0) {
      *(kvp_auth_kind *)field = (kvp_auth_kind)i;
      return KVP_OK;
    }
  }
  return KEY_ERR(c, k,
                 "'%s' is not one of client-secret, client-certificate, managed-identity, "
                 "workload-identity",
                 v);
}

static int set_store(parse_ctx *c, const key_def *k, void *field, const char *v)
{
  const char *name = strncmp(v, "hsm:", 4) == 0     ? v + 4
                     : strncmp(v, "vault:", 6) == 0 ? v + 6
                                                    : NULL;

  if (name == NULL || *name == '\0')
    return KEY_ERR(c, k, "'%s' is not hsm:NAME or vault:NAME", v);
  c->store_line[c->idx] = c->line;
  return store_str(c, field, strdup(v));
}

/* ---- sections ---------------------------------------------------------- */

#define KEY(type, name, set)                                                                       \
  {                                                                                                \
#name, offsetof(type, name), set                                                               \
  }

/* The credential keys of [vault] and (in its cred) [integration-account], one list. */
#define CRED_KEYS(X)                                                                               \
  X(auth, set_auth)                                                                                \
  X(tenant_id, set_str)                                                                            \
  X(client_id, set_str)                                                                            \
  X(client_secret_file, set_secret_path)                                                           \
  X(client_secret_env, set_env_name)                                                               \
  X(client_cert_file, set_path)                                                                    \
  X(client_key_file, set_secret_path)                                                              \
  X(authority_host, set_https_url)                                                                 \
  X(imds_endpoint, set_http_url)                                                                   \
  X(ca_file, set_path)                                                                             \
  X(timeout_ms, set_timeout)                                                                       \
  X(max_retries, set_retries)
#define VAULT_CRED(name, set) KEY(kvp_vault_conf, name, set),
#define IA_CRED(name, set) IAKEY(name, cred.name, set),

/* clang-format off */
static const key_def global_keys[] = {
    KEY(kvp_config, registry, set_path),
    KEY(kvp_config, log_level, set_level),
    KEY(kvp_config, log_file, set_log_dest),
    KEY(kvp_config, audit, set_log_dest),
};

static const key_def hsm_keys[] = {
    KEY(kvp_hsm_conf, module, set_module),
    KEY(kvp_hsm_conf, token_label, set_label),
    KEY(kvp_hsm_conf, serial, set_serial),
    KEY(kvp_hsm_conf, pin_file, set_secret_path),
    KEY(kvp_hsm_conf, pin_env, set_env_name),
};

static const key_def vault_keys[] = {
    KEY(kvp_vault_conf, url, set_https_url),
    KEY(kvp_vault_conf, api_version, set_api_version),
    CRED_KEYS(VAULT_CRED)
    KEY(kvp_vault_conf, resource, set_https_url),
    KEY(kvp_vault_conf, attempt_timeout_ms, set_timeout),
    KEY(kvp_vault_conf, key_cache_s, set_seconds),
};
_Static_assert(sizeof(vault_keys) / sizeof(vault_keys[0]) <= MAX_KEYS, "MAX_KEYS too small");

#define IAKEY(name, field, set) {#name, offsetof(kvp_ia_conf, field), set}
static const key_def ia_keys[] = {
    IAKEY(resource_id, resource_id, set_str),
    IAKEY(account, account, set_str),
    IAKEY(vault_map, vault_map, set_str),
    IAKEY(arm_endpoint, cred.url, set_https_url),
    IAKEY(api_version, cred.api_version, set_str),
    IAKEY(resource, resource, set_https_url),
    IAKEY(page_size, page_size, set_page_size),
    CRED_KEYS(IA_CRED)
};
#undef IAKEY
#undef IA_CRED
#undef VAULT_CRED
#undef CRED_KEYS

static const key_def account_keys[] = {
    KEY(kvp_account_conf, label, set_label),
    KEY(kvp_account_conf, default_store, set_store),
};
/* clang-format on */

static void *section_obj(parse_ctx *c)
{
  switch (c->sec) {
  case SEC_GLOBAL:
    return c->cfg;
  case SEC_HSM:
    return &c->cfg->hsms[c->idx];
  case SEC_VAULT:
    return &c->cfg->vaults[c->idx];
  case SEC_ACCOUNT:
    return &c->cfg->accounts[c->idx];
  case SEC_IA:
    return &c->cfg->ias[c->idx];
  default:
    return NULL;
  }
}

static int key_index(const parse_ctx *c, const char *name)
{
  for (size_t i = 0; i < c->n_keys; i++)
    if (strcmp(c->keys[i].name, name) == 0)
      return (int)i;
  return -1;
}

/* Line of key name in the current section, 0 if it was not set. */
static int key_seen(const parse_ctx *c, const char *name)
{
  int i = key_index(c, name);

  return i >= 0 ? c->key_line[i] : 0;
}

static int require(parse_ctx *c, const char *key)
{
  if (key_seen(c, key) == 0)
    return perr(c, KVP_EINVAL, c->sec_line, key, "missing (required)");
  return KVP_OK;
}

/* At most one of a and b; with need != 0, exactly one. */
static int one_of(parse_ctx *c, const char *a, const char *b, int need)
{
  int la = key_seen(c, a);
  int lb = key_seen(c, b);

  if (la != 0 && lb != 0)
    return perr(c, KVP_EINVAL, la > lb ? la : lb, la > lb ? a : b,
                "%s is set too (line %d); use %s one of %s, %s", la > lb ? b : a, la > lb ? lb : la,
                need ? "exactly" : "at most", a, b);
  if (need && la == 0 && lb == 0)
    return perr(c, KVP_EINVAL, c->sec_line, a, "missing; set %s or %s", a, b);
  return KVP_OK;
}

static int check_hsm(parse_ctx *c)
{
  if (require(c, "module") != KVP_OK || one_of(c, "token_label", "serial", 1) != KVP_OK ||
      one_of(c, "pin_file", "pin_env", 0) != KVP_OK)
    return c->rc;
  return KVP_OK;
}

static int check_vault(parse_ctx *c)
{
  const kvp_vault_conf *v = section_obj(c);
  const char *need[4] = {NULL};

  if (require(c, "url") != KVP_OK || one_of(c, "client_secret_file", "client_secret_env",
                                            v->auth == KVP_AUTH_CLIENT_SECRET) != KVP_OK)
    return c->rc;
  if (v->auth == KVP_AUTH_CLIENT_SECRET) {
    need[0] = "tenant_id";
    need[1] = "client_id";
  } else if (v->auth == KVP_AUTH_CLIENT_CERTIFICATE) {
    need[0] = "tenant_id";
    need[1] = "client_id";
    need[2] = "client_cert_file";
    need[3] = "client_key_file";
  }
  for (size_t i = 0; i < KVP_ARRAY_SIZE(need) && need[i] != NULL; i++)
    if (key_seen(c, need[i]) == 0)
      return perr(c, KVP_EINVAL, c->sec_line, need[i], "missing (required with auth = %s)",
                  auth_names[v->auth]);
  return KVP_OK;
}

static int check_account(parse_ctx *c)
{
  kvp_account_conf *a = section_obj(c);

  if (a->label == NULL && strlen(a->name) > LABEL_MAX_LEN)
    return perr(c, KVP_EINVAL, c->sec_line, "label",
                "missing, and the account name is longer than %d bytes", LABEL_MAX_LEN);
  if (a->label == NULL && (a->label = strdup(a->name)) == NULL)
    return perr(c, KVP_ENOMEM, c->sec_line, NULL, "out of memory");
  return KVP_OK;
}

/* 1 when needle occurs in hay, ignoring ASCII case. */
static int ci_contains(const char *hay, const char *needle)
{
  size_t n = strlen(needle);

  for (; *hay != '\0'; hay++)
    if (strncasecmp(hay, needle, n) == 0)
      return 1;
  return 0;
}

/* An integration account: its resource id names one, and credentials as a vault's. */
static int check_ia(parse_ctx *c)
{
  const kvp_ia_conf *ia = section_obj(c);
  const char *id = ia->resource_id;
  const char *pfx = "/subscriptions/";

  if (require(c, "resource_id") != KVP_OK)
    return c->rc;
  if (strncasecmp(id, pfx, strlen(pfx)) != 0 || !ci_contains(id, "/resourceGroups/") ||
      !ci_contains(id, "/providers/Microsoft.Logic/integrationAccounts/") ||
      id[strlen(id) - 1] == '/')
    return perr(c, KVP_EINVAL, key_seen(c, "resource_id"), "resource_id",
                "expected /subscriptions/SUB/resourceGroups/GROUP/providers/"
                "Microsoft.Logic/integrationAccounts/NAME");
  if (one_of(c, "client_secret_file", "client_secret_env",
             ia->cred.auth == KVP_AUTH_CLIENT_SECRET) != KVP_OK)
    return c->rc;
  if (ia->cred.auth == KVP_AUTH_CLIENT_SECRET || ia->cred.auth == KVP_AUTH_CLIENT_CERTIFICATE) {
    const char *need[] = {"tenant_id", "client_id", "client_cert_file", "client_key_file"};
    size_t n = ia->cred.auth == KVP_AUTH_CLIENT_SECRET ? 2 : 4;
    for (size_t i = 0; i < n; i++)
      if (key_seen(c, need[i]) == 0)
        return perr(c, KVP_EINVAL, c->sec_line, need[i], "missing (required with auth = %s)",
                    auth_names[ia->cred.auth]);
  }
  return KVP_OK;
}

/* Checks of the section that just ended. */
static int end_section(parse_ctx *c)
{
  switch (c->sec) {
  case SEC_IA:
    return check_ia(c);
  case SEC_HSM:
    return check_hsm(c);
  case SEC_VAULT:
    return check_vault(c);
  case SEC_ACCOUNT:
    return check_account(c);
  default:
    return KVP_OK;
  }
}

static int valid_name(const char *s)
{
  size_t n = strlen(s);

  return n > 0 && n <= NAME_MAX_LEN &&
         strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") == n;
}

/* Grow *arr (of n elements of size sz) by one zeroed element; returns its index or -1. */
static long grow(void **arr, size_t *n, size_t sz)
{
  void *p = realloc(*arr, (*n + 1) * sz);

  if (p == NULL)
    return -1;
  memset((char *)p + *n * sz, 0, sz);
  *arr = p;
  return (long)(*n)++;
}

/* The line of an earlier section named name, or 0. */
static int find_dup(const parse_ctx *c, sec_kind kind, const char *name)
{
  const kvp_config *cfg = c->cfg;

  for (size_t i = 0; kind == SEC_HSM && i < cfg->n_hsms; i++)
    if (strcmp(cfg->hsms[i].name, name) == 0)
      return cfg->hsms[i].line;
  for (size_t i = 0; kind == SEC_VAULT && i < cfg->n_vaults; i++)
    if (strcmp(cfg->vaults[i].name, name) == 0)
      return cfg->vaults[i].line;
  for (size_t i = 0; kind == SEC_ACCOUNT && i < cfg->n_accounts; i++)
    if (strcmp(cfg->accounts[i].name, name) == 0)
      return cfg->accounts[i].line;
  for (size_t i = 0; kind == SEC_IA && i < cfg->n_ias; i++)
    if (strcmp(cfg->ias[i].cred.name, name) == 0)
      return cfg->ias[i].cred.line;
  return 0;
}

static int vault_defaults(kvp_vault_conf *v)
{
  v->api_version = strdup("7.5");
  v->imds_endpoint = strdup("http://169.254.169.254");
  v->auth = KVP_AUTH_CLIENT_SECRET;
  v->timeout_ms = 30000;
  v->max_retries = 5;
  /* authority_host stays NULL unless set: the backend then reads AZURE_AUTHORITY_HOST and
   * falls back to the public cloud's authority */
  return v->api_version && v->imds_endpoint ? KVP_OK : KVP_ENOMEM;
}

/* Append a named section to its array; sets c->idx. */
static int add_named(parse_ctx *c, const char *name)
{
  kvp_config *cfg = c->cfg;
  long i = -1;
  char **namep = NULL;
  int *linep = NULL;
  int rc = KVP_OK;

  if (c->sec == SEC_HSM && (i = grow((void **)&cfg->hsms, &cfg->n_hsms, sizeof(*cfg->hsms))) >= 0) {
    namep = &cfg->hsms[i].name;
    linep = &cfg->hsms[i].line;
  } else if (c->sec == SEC_VAULT &&
             (i = grow((void **)&cfg->vaults, &cfg->n_vaults, sizeof(*cfg->vaults))) >= 0) {
    namep = &cfg->vaults[i].name;
    linep = &cfg->vaults[i].line;
    rc = vault_defaults(&cfg->vaults[i]);
  } else if (c->sec == SEC_IA && (i = grow((void **)&cfg->ias, &cfg->n_ias, sizeof(*cfg->ias))) >= 0) {
    kvp_ia_conf *ia = &cfg->ias[i];
    namep = &ia->cred.name;
    linep = &ia->cred.line;
    rc = vault_defaults(&ia->cred);
    free(ia->cred.api_version);
    ia->cred.api_version = strdup("2019-05-01");
    ia->cred.url = strdup("https://management.azure.com");
    ia->page_size = 100;
    if (rc == KVP_OK && (ia->cred.api_version == NULL || ia->cred.url == NULL))
      rc = KVP_ENOMEM;
  } else if (c->sec == SEC_ACCOUNT &&
             (i = grow((void **)&cfg->accounts, &cfg->n_accounts, sizeof(*cfg->accounts))) >= 0) {
    size_t n = cfg->n_accounts - 1;
    int *sl = realloc(c->store_line, cfg->n_accounts * sizeof(*sl));
    if (sl == NULL)
      return perr(c, KVP_ENOMEM, c->line, NULL, "out of memory");
    sl[n] = 0;
    c->store_line = sl;
    namep = &cfg->accounts[i].name;
    linep = &cfg->accounts[i].line;
  }
  if (i < 0 || rc != KVP_OK || (*namep = strdup(name)) == NULL)
    return perr(c, KVP_ENOMEM, c->line, NULL, "out of memory");
  *linep = c->line;
  c->idx = (size_t)i;
  return KVP_OK;
}

static int begin_section(parse_ctx *c, const char *type, const char *name)
{
  static const struct {
    const char *type;
    sec_kind kind;
    const key_def *keys;
    size_t n_keys;
  } kinds[] = {
      {"global", SEC_GLOBAL, global_keys, KVP_ARRAY_SIZE(global_keys)},
      {"hsm", SEC_HSM, hsm_keys, KVP_ARRAY_SIZE(hsm_keys)},
      {"vault", SEC_VAULT, vault_keys, KVP_ARRAY_SIZE(vault_keys)},
      {"account", SEC_ACCOUNT, account_keys, KVP_ARRAY_SIZE(account_keys)},
      {"integration-account", SEC_IA, ia_keys, KVP_ARRAY_SIZE(ia_keys)},
  };
  size_t k;
  int dup;

  if (end_section(c) != KVP_OK)
    return c->rc;
  c->sec = SEC_NONE;
  snprintf(c->sec_disp, sizeof(c->sec_disp), "[%s%s%.*s]", type, *name ? " " : "", NAME_MAX_LEN + 1,
           name);
  for (k = 0; k < KVP_ARRAY_SIZE(kinds) && strcmp(type, kinds[k].type) != 0; k++)
    ;
  if (k == KVP_ARRAY_SIZE(kinds))
    return perr(c, KVP_EINVAL, c->line, NULL,
                "unknown section (expected [global], [hsm NAME], [vault NAME], [account NAME] "
                "or [integration-account NAME])");
  if (kinds[k].kind == SEC_GLOBAL && *name != '\0')
    return perr(c, KVP_EINVAL, c->line, NULL, "[global] takes no name");
  if (kinds[k].kind != SEC_GLOBAL && !valid_name(name))
    return perr(c, KVP_EINVAL, c->line, NULL,
                "needs a name of 1 to %d letters, digits, '.', '_' or '-'", NAME_MAX_LEN);
  dup = kinds[k].kind == SEC_GLOBAL ? c->global_line : find_dup(c, kinds[k].kind, name);
  if (dup != 0)
    return perr(c, KVP_EINVAL, c->line, NULL, "duplicate section (first at line %d)", dup);

  c->sec = kinds[k].kind;
  c->keys = kinds[k].keys;
  c->n_keys = kinds[k].n_keys;
  c->sec_line = c->line;
  memset(c->key_line, 0, sizeof(c->key_line));
  if (c->sec == SEC_GLOBAL) {
    c->global_line = c->line;
    return KVP_OK;
  }
  return add_named(c, name);
}

/* Split "[type name]" (s points after '['); returns KVP_OK or a parse error. */
static int section_line(parse_ctx *c, char *s)
{
  char *end = strchr(s, ']');
  char *name;

  if (end == NULL) {
    c->sec_disp[0] = '\0';
    return perr(c, KVP_EINVAL, c->line, NULL, "section header without ']'");
  }
  *end = '\0';
  while (end > s && (end[-1] == ' ' || end[-1] == '\t'))
    *--end = '\0';
  s += strspn(s, " \t");
  name = s + strcspn(s, " \t");
  if (*name != '\0') {
    *name++ = '\0';
    name += strspn(name, " \t");
  }
  return begin_section(c, s, name);
}

/* ---- inih glue --------------------------------------------------------- */

static char *reader(char *str, int num, void *stream)
{
  parse_ctx *c = stream;
  char *p;
  ssize_t n;

  if (c->rc != KVP_OK)
    return NULL; /* stop at the first error */
  n = getline(&c->buf, &c->bufsize, c->f);
  if (n < 0)
    return NULL;
  c->line++;
  p = c->buf;
  if (c->line == 1 && strncmp(p, "\xEF\xBB\xBF", 3) == 0)
    p += 3;
  p += strspn(p, " \t");
  if (strlen(p) + 2 > (size_t)num) {
    perr(c, KVP_EINVAL, c->line, NULL, "line too long (at most %d characters)", num - 3);
    return NULL;
  }
  memcpy(str, p, strlen(p) + 1);
  if (*p == '[') {
    char header[256];
    snprintf(header, sizeof(header), "%s", p + 1);
    if (section_line(c, header) != KVP_OK)
      return NULL;
  }
  return str;
}

/* Values are written bare; a leading or trailing quote is an error. */
static int quoted(const char *v)
{
  size_t n = strlen(v);

  return n > 0 && (v[0] == '"' || v[0] == '\'' || v[n - 1] == '"' || v[n - 1] == '\'');
}

static int handler(void *user, const char *section, const char *name, const char *value)
{
  parse_ctx *c = user;
  int i;

  (void)section; /* the reader tracks sections, with their lines */
  if (c->rc != KVP_OK)
    return 0;
  if (c->sec == SEC_NONE)
    return perr(c, KVP_EINVAL, c->line, name, "outside of any section"), 0;
  i = key_index(c, name);
  if (i < 0) {
    char known[256] = "";
    for (size_t k = 0; k < c->n_keys; k++)
      snprintf(known + strlen(known), sizeof(known) - strlen(known), "%s%s", k ? ", " : "",
               c->keys[k].name);
    return perr(c, KVP_EINVAL, c->line, name, "unknown key (known: %s)", known), 0;
  }
  if (c->key_line[i] != 0)
    return perr(c, KVP_EINVAL, c->line, name, "set twice (first at line %d)", c->key_line[i]), 0;
  c->key_line[i] = c->line;
  if (quoted(value))
    return perr(c, KVP_EINVAL, c->line, name,
                "quoted value %s: kvp11.conf takes values without quotes (they would be part "
                "of the value); write it without them",
                value),
           0;
  return c->keys[i].set(c, &c->keys[i], (char *)section_obj(c) + c->keys[i].off, value) == KVP_OK;
}

/* ---- after parsing ----------------------------------------------------- */

static int check_stores(parse_ctx *c)
{
  const kvp_config *cfg = c->cfg;

  for (size_t i = 0; i < cfg->n_accounts; i++) {
    const char *s = cfg->accounts[i].default_store;
    int found;

    if (s == NULL)
      continue;
    found = strncmp(s, "hsm:", 4) == 0 ? kvp_config_find_hsm(cfg, s + 4) != NULL
                                       : kvp_config_find_vault(cfg, s + 6) != NULL;
    if (!found) {
      snprintf(c->sec_disp, sizeof(c->sec_disp), "[account %s]", cfg->accounts[i].name);
      return perr(c, KVP_EINVAL, c->store_line[i], "default_store",
                  "no [%s %s] section is configured", strncmp(s, "hsm:", 4) == 0 ? "hsm" : "vault",
                  strchr(s, ':') + 1);
    }
  }
  return KVP_OK;
}

static int finish(parse_ctx *c)
{
  kvp_config *cfg = c->cfg;

  if (end_section(c) != KVP_OK || check_stores(c) != KVP_OK)
    return c->rc;
  /* KVP11_REGISTRY replaces [global] registry (tests, `kvp11 csr` on a key
   * that is not registered). Must be absolute, like every path kvp11 uses. */
  {
    const char *env = kvp_getenv("KVP11_REGISTRY");
    if (env != NULL && *env != '\0') {
      if (*env != '/')
        return perr(c, KVP_EINVAL, 0, NULL, "KVP11_REGISTRY: '%s' is not an absolute path", env);
      free(cfg->registry);
      if ((cfg->registry = strdup(env)) == NULL)
        return perr(c, KVP_ENOMEM, c->line, NULL, "out of memory");
    }
  }
  if (cfg->registry == NULL && (cfg->registry = strdup(KVP11_DEFAULT_REGISTRY)) == NULL)
    return perr(c, KVP_ENOMEM, c->line, NULL, "out of memory");
  {
    int rc = kvp_registry_trust(cfg->registry, c->err, c->errlen);
    if (rc != KVP_OK)
      return c->rc = rc;
  }
  if (cfg->n_accounts == 0) {
    cfg->accounts = calloc(1, sizeof(*cfg->accounts));
    if (cfg->accounts == NULL)
      return perr(c, KVP_ENOMEM, c->line, NULL, "out of memory");
    cfg->n_accounts = 1;
    cfg->accounts[0].name = strdup("default");
    cfg->accounts[0].label = strdup("default");
    if (cfg->accounts[0].name == NULL || cfg->accounts[0].label == NULL)
      return perr(c, KVP_ENOMEM, c->line, NULL, "out of memory");
  }
  return KVP_OK;
}

static char *dir_of(const char *path)
{
  const char *slash = strrchr(path, '/');
  char *d;

  if (slash == NULL)
    return NULL; /* relative to the working directory, as the file itself */
  if (slash == path)
    return strdup("/");
  d = malloc((size_t)(slash - path) + 1);
  if (d != NULL) {
    memcpy(d, path, (size_t)(slash - path));
    d[slash - path] = '\0';
  }
  return d;
}

/* The configuration file itself: a regular file (or /dev/null, "no
 * configuration") that only root or this process's user can change. */
static int config_trusted(parse_ctx *c)
{
  struct stat st;

  if (fstat(fileno(c->f), &st) != 0)
    return c->rc = kvp_seterr(c->err, c->errlen, KVP_EIO, "%s: %s", c->path, strerror(errno));
  if (S_ISCHR(st.st_mode) && strcmp(c->path, "/dev/null") == 0)
    return KVP_OK;
  if (!S_ISREG(st.st_mode))
    return c->rc = kvp_seterr(c->err, c->errlen, KVP_EINVAL, "%s: not a regular file", c->path);
  return c->rc = kvp_trust_stat("configuration", c->path, &st, c->err, c->errlen);
}

const char *kvp_config_default_path(void)
{
  const char *p = kvp_getenv("KVP11_CONF");

  return p != NULL && *p != '\0' ? p : KVP11_DEFAULT_CONF;
}

int kvp_config_load(const char *path, kvp_config **out, char *err, size_t errlen)
{
  parse_ctx c = {.path = path, .err = err, .errlen = errlen, .rc = KVP_OK};
  int ret;

  *out = NULL;
  c.cfg = calloc(1, sizeof(*c.cfg));
  if (c.cfg == NULL || (c.cfg->path = strdup(path)) == NULL) {
    c.rc = kvp_seterr(err, errlen, KVP_ENOMEM, "%s: out of memory", path);
    goto out;
  }
  c.cfg->log_level = KVP_LOG_WARN;
  c.dir = dir_of(path);
  c.f = fopen(path, "re");
  if (c.f == NULL) {
    c.rc = kvp_seterr(err, errlen, kvp_errno_rc(errno), "%s: cannot open: %s", path,
                      strerror(errno));
    goto out;
  }
  if (config_trusted(&c) != KVP_OK)
    goto out;
  ret = ini_parse_stream(reader, &c, handler, &c);
  if (ret > 0 && (c.rc == KVP_OK || ret < c.err_line)) {
    c.rc = KVP_OK;
    c.sec_disp[0] = '\0';
    perr(&c, KVP_EINVAL, ret, NULL, "syntax error: expected '[section]' or 'key = value'");
  } else if (ret < 0 && c.rc == KVP_OK) {
    c.rc = kvp_seterr(err, errlen, KVP_ENOMEM, "%s: out of memory", path);
  } else if (c.rc == KVP_OK && ferror(c.f)) {
    c.rc = kvp_seterr(err, errlen, KVP_EIO, "%s:%d: read error", path, c.line);
  }
  if (c.rc == KVP_OK)
    finish(&c);
out:
  if (c.f != NULL)
    fclose(c.f);
  free(c.buf);
  free(c.dir);
  free(c.store_line);
  if (c.rc != KVP_OK) {
    kvp_config_free(c.cfg);
    return c.rc;
  }
  *out = c.cfg;
  return KVP_OK;
}
