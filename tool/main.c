/*
 * kvp11 [-c FILE] [-v] COMMAND ...: the admin command of kvp11.
 */
#include <ctype.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/log.h"
#include "core/p11names.h"
#include "core/status.h"
#include "core/util.h"
#include "kvp11/kvp11.h"
#include "tool.h"
#include "wipe.h"

__attribute__((format(printf, 3, 0))) static void vmsg(const kvp_tool *t, const char *kind,
                                                       const char *fmt, va_list ap)
{
  char buf[2 * KVP_ERRLEN];
  vsnprintf(buf, sizeof(buf), fmt, ap);
  /* Exactly one line: fold any newline a lower layer put in its message. */
  for (char *p = buf; *p; p++)
    if (*p == '\n' || *p == '\r')
      *p = ' ';
  fprintf(stderr, "kvp11: %s%s%s%s\n", t && t->cmd ? t->cmd : "", t && t->cmd ? ": " : "", kind,
          buf);
}

int kvp_tool_fail(const kvp_tool *t, int code, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  vmsg(t, "", fmt, ap);
  va_end(ap);
  return code;
}

void kvp_tool_warn(const kvp_tool *t, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  vmsg(t, "warning: ", fmt, ap);
  va_end(ap);
}

int kvp_tool_badopt(const kvp_tool *t, int c, char **argv, const char *help)
{
  char opt[3] = {'-', (char)optopt, 0};
  /* optopt is the short option letter; long options are named by argv. */
  const char *name = (optopt > 0 && optopt < 128 && isalnum(optopt)) ? opt : argv[optind - 1];
  if (c == ':')
    return kvp_tool_fail(t, KVP_EXIT_USAGE, "option '%s' needs an argument (see %s)", name, help);
  return kvp_tool_fail(t, KVP_EXIT_USAGE, "unknown option '%s' (see %s)", name, help);
}

int kvp_tool_parse_opts(kvp_tool *t, const kvp_tool_opts *o, int argc, char **argv, const char **v,
                        const char **operand)
{
  int c;
  opterr = 0;
  optind = 0; /* GNU: full re-initialisation; argv[0] is the command word */
  while ((c = getopt_long(argc, argv, ":h", kvp_tool_longopts, NULL)) != -1) {
    if (c == 'h')
      return KVP_TOOL_HELP;
    if (c < KVP_TOOL_OPT_BASE || c >= KVP_TOOL_OPT_BASE + O_COUNT)
      return kvp_tool_badopt(t, c, argv, o->help);
    c -= KVP_TOOL_OPT_BASE;
    if (!(o->allowed & OPT(c)))
      return kvp_tool_fail(t, KVP_EXIT_USAGE,
                           "option '--%s' does not apply here (see kvp11 %s --help)",
                           kvp_tool_longopts[c].name, o->cmd);
    if (v[c])
      return kvp_tool_fail(t, KVP_EXIT_USAGE, "option '--%s' given twice", kvp_tool_longopts[c].name);
    v[c] = optarg ? optarg : "";
  }
  int left = argc - optind;
  if (left > o->operand)
    return kvp_tool_fail(t, KVP_EXIT_USAGE, "unexpected argument '%s' (see kvp11 %s --help)",
                         argv[optind + o->operand], o->cmd);
  if (o->operand && left == 0)
    return kvp_tool_fail(t, KVP_EXIT_USAGE, "NAME is missing (see kvp11 %s --help)", o->cmd);
  if (o->operand && operand)
    *operand = argv[optind];
  return -1;
}

int kvp_tool_load_config(kvp_tool *t)
{
  char err[KVP_ERRLEN] = "";
  const char *path = t->conf_path ? t->conf_path : kvp_config_default_path();
  int rc = kvp_config_load(path, &t->cfg, err, sizeof(err));
  if (rc != KVP_OK)
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "%s", err[0] ? err : path);
  kvp_log_setup(t->cfg->log_level, t->cfg->log_file);
  kvp_audit_setup(t->cfg->audit);
  /* The tool reports failures itself, in one line; log lines on stderr would
   * add noise. They still go to a configured log_file, or with -v or
   * KVP11_DEBUG to stderr. */
  const char *dbg = kvp_getenv("KVP11_DEBUG");
  if (!t->cfg->log_file && !t->verbose && !(dbg && *dbg))
    kvp_log_threshold = -1;
  return KVP_EXIT_OK;
}

const char *kvp_tool_loghint(const kvp_tool *t)
{
  static char hint[KVP_ERRLEN];
  const char *dbg = kvp_getenv("KVP11_DEBUG");
  if (dbg && *dbg)
    return ""; /* the log lines went where KVP11_DEBUG says */
  if (t->cfg && t->cfg->log_file) {
    snprintf(hint, sizeof(hint), " (details in %s)", t->cfg->log_file);
    return hint;
  }
  return t->verbose ? "" : " (kvp11 -v shows why)";
}

const char *kvp_tool_reason(const kvp_tool *t, CK_RV rv)
{
  static char buf[KVP_STATUS_MSGLEN + 64];
  const char *r = kvp_status_reason();
  if (r)
    snprintf(buf, sizeof(buf), "%s", r);
  else
    snprintf(buf, sizeof(buf), "%s%s", kvp_ckr_name(rv), kvp_tool_loghint(t));
  return buf;
}

int kvp_tool_name_ok(const char *s)
{
  size_t n = strlen(s);
  if (n == 0 || n > 255)
    return 0;
  for (const unsigned char *p = (const unsigned char *)s; *p; p++)
    if (*p < 0x20 || *p == 0x7f)
      return 0;
  return 1;
}

int kvp_tool_account(kvp_tool *t, const char *name, const char **account)
{
  if (!name) {
    *account = t->cfg->n_accounts ? t->cfg->accounts[0].name : "default";
    return KVP_EXIT_OK;
  }
  if (!kvp_config_find_account(t->cfg, name))
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "account '%s' is not configured in %s", name,
                         t->cfg->path);
  *account = name;
  return KVP_EXIT_OK;
}

const void *kvp_tool_subcommand(kvp_tool *t, const char *group, int argc, char **argv,
                                void (*usage)(FILE *), const void *table, size_t stride, size_t n,
                                int *rc)
{
  size_t glen = strlen(group);
  const char *sub;

  t->cmd = group;
  if (argc < 2) {
    *rc = kvp_tool_fail(t, KVP_EXIT_USAGE, "no %s command given (see kvp11 %s --help)", group,
                        group);
    return NULL;
  }
  sub = argv[1];
  if (!strcmp(sub, "--help") || !strcmp(sub, "-h") || !strcmp(sub, "help")) {
    printf("usage:\n");
    usage(stdout);
    *rc = KVP_EXIT_OK;
    return NULL;
  }
  for (size_t i = 0; i < n; i++) {
    const void *entry = (const char *)table + i * stride;
    const char *name = *(const char *const *)entry;
    if (strcmp(name + glen + 1, sub) == 0) {
      t->cmd = name;
      return entry;
    }
  }
  *rc = kvp_tool_fail(t, KVP_EXIT_USAGE, "unknown command '%s' (see kvp11 %s --help)", sub, group);
  return NULL;
}

void kvp_tool_cmds_usage(FILE *f, const kvp_tool_cmd *cmds, size_t n)
{
  for (size_t i = 0; i < n; i++)
    kvp_tool_synopsis(f, "  kvp11 [-c FILE] ", cmds[i].cmd, cmds[i].synopsis);
}

int kvp_tool_run_group(kvp_tool *t, const char *group, int argc, char **argv,
                       void (*usage)(FILE *), const kvp_tool_cmd *cmds, size_t n,
                       void (*cmd_usage)(FILE *, const kvp_tool_cmd *))
{
  int rc;
  char help[64];
  const kvp_tool_cmd *c =
      kvp_tool_subcommand(t, group, argc, argv, usage, cmds, sizeof(cmds[0]), n, &rc);
  if (c == NULL)
    return rc;
  snprintf(help, sizeof(help), "kvp11 %s --help", group);
  const kvp_tool_opts o = {c->allowed, c->operand, c->cmd, help};
  kvp_tool_args a = {{NULL}, NULL, NULL};
  rc = kvp_tool_parse_opts(t, &o, argc - 1, argv + 1, a.v, &a.operand);
  if (rc == KVP_TOOL_HELP) {
    if (cmd_usage) {
      cmd_usage(stdout, c);
    } else {
      kvp_tool_synopsis(stdout, "usage: kvp11 [-c FILE] ", c->cmd, c->synopsis);
      if (c->help)
        printf("\n%s", c->help);
    }
    return KVP_EXIT_OK;
  }
  return rc >= 0 ? rc : c->run(t, &a);
}

int kvp_tool_open_registry(kvp_tool *t)
{
  char err[KVP_ERRLEN] = "";
  const char *path = t->cfg->registry ? t->cfg->registry : KVP11_DEFAULT_REGISTRY;
  if (kvp_registry_open(path, 0, &t->reg, err, sizeof(err)) != KVP_OK)
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "%s", err[0] ? err : path);
  return KVP_EXIT_OK;
}

int kvp_tool_open_registry_ro(kvp_tool *t)
{
  char err[KVP_ERRLEN] = "";
  const char *path = t->cfg->registry ? t->cfg->registry : KVP11_DEFAULT_REGISTRY;
  int r = kvp_registry_open(path, 1, &t->reg, err, sizeof(err));
  if (r == KVP_ENOTFOUND) {
    /* A missing file in an existing directory: nothing registered yet. A
     * missing directory is a configuration mistake, reported as such. */
    char *dir = strdup(path), *slash = dir ? strrchr(dir, '/') : NULL;
    struct stat st;
    int dir_ok = slash == NULL || slash == dir ||
                 (*slash = '\0', stat(dir, &st) == 0 && S_ISDIR(st.st_mode));
    free(dir);
    t->reg = NULL;
    if (dir_ok)
      return KVP_EXIT_OK;
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "registry %s: its directory does not exist", path);
  }
  if (r != KVP_OK)
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "%s", err[0] ? err : path);
  return KVP_EXIT_OK;
}

void kvp_tool_done(kvp_tool *t)
{
  if (t->reg)
    kvp_registry_close(t->reg);
  if (t->cfg)
    kvp_config_free(t->cfg);
  t->reg = NULL;
  t->cfg = NULL;
}

static void usage(FILE *f)
{
  fprintf(f,
          "usage: kvp11 [-c FILE] [-v] COMMAND ...\n"
          "\n"
          "  -c, --config FILE   configuration file (default: $KVP11_CONF, else %s)\n"
          "  -v, --verbose       show log lines on stderr\n"
          "  -V, --version       print the version\n"
          "  -h, --help          this help\n"
          "\n"
          "commands:\n",
          KVP11_DEFAULT_CONF);
  kvp_tool_cert_usage(f);
  kvp_tool_key_usage(f);
  kvp_tool_csr_usage(f);
  kvp_tool_smime_usage(f);
  kvp_tool_check_usage(f);
  kvp_tool_sync_usage(f);
  kvp_tool_audit_usage(f);
  kvp_tool_registry_usage(f);
  fprintf(f, "\nExit status: 0 success, 1 error (nothing changed), 2 usage error;\n"
             "kvp11 check: 3 warnings only (see kvp11 check --help).\n"
             "kvp11 help COMMAND (or kvp11 COMMAND --help) shows a command group's help.\n");
}

int main(int argc, char **argv)
{
  kvp_tool_wipe_init();
  static const struct option opts[] = {
      {"config", required_argument, NULL, 'c'},
      {"verbose", no_argument, NULL, 'v'},
      {"version", no_argument, NULL, 'V'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  kvp_tool t = {0};
  int c;

  opterr = 0;
  /* '+': stop at the command name; its options are parsed by the command. */
  while ((c = getopt_long(argc, argv, "+:c:vVh", opts, NULL)) != -1) {
    switch (c) {
    case 'c':
      t.conf_path = optarg;
      break;
    case 'v':
      t.verbose = 1;
      break;
    case 'V':
      printf("kvp11 %d.%d\n", KVP11_VERSION_MAJOR, KVP11_VERSION_MINOR);
      return KVP_EXIT_OK;
    case 'h':
      usage(stdout);
      return KVP_EXIT_OK;
    default:
      return kvp_tool_badopt(NULL, c, argv, "kvp11 --help");
    }
  }
  if (optind >= argc)
    return kvp_tool_fail(NULL, KVP_EXIT_USAGE, "no command given (see kvp11 --help)");

  static const struct {
    const char *name;
    int (*run)(kvp_tool *, int, char **);
  } cmds[] = {
      {"cert", kvp_tool_cert},   {"smime", kvp_tool_smime}, {"key", kvp_tool_key},
      {"csr", kvp_tool_csr},     {"check", kvp_tool_check}, {"registry", kvp_tool_registry},
      {"sync", kvp_tool_sync},   {"publish", kvp_tool_sync}, {"unpublish", kvp_tool_sync},
      {"audit", kvp_tool_audit},
  };
  const char *cmd = argv[optind];
  char *help_argv[3];
  if (strcmp(cmd, "help") == 0) {
    if (optind + 1 >= argc) {
      usage(stdout);
      return KVP_EXIT_OK;
    }
    /* kvp11 help GROUP: the group's own help */
    help_argv[0] = argv[optind + 1];
    help_argv[1] = "--help";
    help_argv[2] = NULL;
    cmd = help_argv[0];
    argv = help_argv;
    argc = 2;
    optind = 0;
  }
  for (size_t i = 0; i < KVP_ARRAY_SIZE(cmds); i++) {
    if (strcmp(cmd, cmds[i].name) != 0)
      continue;
    kvp_status_clear();
    if (cmds[i].run == kvp_tool_csr)
      t.cmd = "csr";
    int rc = cmds[i].run(&t, argc - optind, argv + optind);
    kvp_tool_done(&t);
    return rc;
  }
  return kvp_tool_fail(NULL, KVP_EXIT_USAGE, "unknown command '%s' (see kvp11 --help)", cmd);
}
