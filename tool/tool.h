/*
 * The kvp11 admin command: shared context, error reporting and output helpers.
 *
 * Every command prints its result on stdout and, on failure, exactly one
 * line "kvp11: <command>: <what is wrong>" on stderr. Exit codes below.
 */
#ifndef KVP_TOOL_TOOL_H
#define KVP_TOOL_TOOL_H

#include <getopt.h>
#include <stdio.h>

#include "core/config.h"
#include "core/registry.h"

enum {
  KVP_EXIT_OK = 0,
  KVP_EXIT_ERROR = 1, /* the command failed; nothing was changed */
  KVP_EXIT_USAGE = 2, /* bad command line */
};

/* State shared by all commands. */
typedef struct kvp_tool {
  const char *conf_path; /* -c FILE, or NULL for kvp_config_default_path() */
  int verbose;           /* -v: keep log lines on stderr */
  const char *cmd;       /* "cert add": prefix of messages */
  kvp_config *cfg;       /* set by kvp_tool_load_config() */
  kvp_registry *reg;     /* set by kvp_tool_open_registry() */
} kvp_tool;

/* Print "kvp11: <cmd>: <message>" on stderr; returns code. */
int kvp_tool_fail(const kvp_tool *t, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Print "kvp11: <cmd>: warning: <message>" on stderr. */
void kvp_tool_warn(const kvp_tool *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Report a getopt failure (c is ':' or '?'; opterr must be 0) as a usage error. */
int kvp_tool_badopt(const kvp_tool *t, int c, char **argv, const char *help);

/* The command line of one sub-command ("cert add", "key create", ...). */
#define KVP_TOOL_OPT_BASE 256 /* longopts[i].val == KVP_TOOL_OPT_BASE + i */
#define KVP_TOOL_HELP (-2)    /* kvp_tool_parse_opts: -h was given */
typedef struct kvp_tool_opts {
  const struct option *longopts; /* n entries, then a zero entry */
  int n;
  unsigned allowed; /* bit i: longopts[i] applies to this command */
  int operand;      /* 1: the command takes one NAME operand */
  const char *cmd;  /* "cert add": names the command in messages */
  const char *help; /* "kvp11 cert --help" */
} kvp_tool_opts;
/*
 * Parse argv (argv[0] is the command word) into v[0..n-1] (flags get "") and
 * *operand. Every error is a usage error with one line on stderr: an option
 * that does not apply to the command, given twice, unknown or missing its
 * argument, a missing or unexpected operand. Returns -1 to go on,
 * KVP_TOOL_HELP when -h was given (the caller prints its usage), or an exit code.
 */
int kvp_tool_parse_opts(kvp_tool *t, const kvp_tool_opts *o, int argc, char **argv, const char **v,
                        const char **operand);

/* Load the configuration and set up logging. Returns an exit code. */
int kvp_tool_load_config(kvp_tool *t);
/* " (details in LOGFILE)" or " (kvp11 -v shows why)": where a lower layer logged its reason. */
const char *kvp_tool_loghint(const kvp_tool *t);
/* Resolve --account (NULL: the first configured account). Returns an exit code. */
int kvp_tool_account(kvp_tool *t, const char *name, const char **account);
/* Open the registry named by the configuration, writer mode. Returns an exit code. */
/*
 * "kvp11 GROUP SUB ...": the entry for SUB in a command table whose entries
 * (stride bytes apart) start with their "GROUP SUB" name; sets t->cmd to it.
 * NULL with *rc set when there is nothing to run: help printed (0), or no or
 * an unknown SUB (usage error, one line on stderr).
 */
const void *kvp_tool_subcommand(kvp_tool *t, const char *group, int argc, char **argv,
                                void (*usage)(FILE *), const void *table, size_t stride, size_t n,
                                int *rc);
int kvp_tool_open_registry(kvp_tool *t);
/* Read-only, for list and show: a registry that does not exist yet leaves
 * t->reg NULL (nothing registered) instead of creating it. */
int kvp_tool_open_registry_ro(kvp_tool *t);
/* Release cfg and reg. */
void kvp_tool_done(kvp_tool *t);

/* The "cert" command group: argv[0] is "cert". Returns an exit code. */
int kvp_tool_cert(kvp_tool *t, int argc, char **argv);
void kvp_tool_cert_usage(FILE *f);
/* A name cert add accepts: 1 to 255 bytes, no control characters. */
int kvp_tool_cert_name_ok(const char *s);
/* cert add --cert-dir (cert_bulk.c); other_options: an option --cert-dir does not take. */
int kvp_tool_cert_add_dir(kvp_tool *t, const char *dir, const char *type, int other_options,
                          const char *account, int replace);

/* The "smime" command group (smime.c): argv[0] is "smime". Returns an exit code. */
int kvp_tool_smime(kvp_tool *t, int argc, char **argv);
void kvp_tool_smime_usage(FILE *f);

/* The "check" command (check.c): argv[0] is "check". Returns an exit code. */
int kvp_tool_check(kvp_tool *t, int argc, char **argv);
void kvp_tool_check_usage(FILE *f);

/* The "key" command group (key.c): argv[0] is "key". Returns an exit code. */
int kvp_tool_key(kvp_tool *t, int argc, char **argv);
void kvp_tool_key_usage(FILE *f);

/* "kvp11 csr" and "kvp11 cert selfsign" (csr.c): argv[0] is "csr" / "selfsign". */
int kvp_tool_csr(kvp_tool *t, int argc, char **argv);
void kvp_tool_csr_usage(FILE *f);
int kvp_tool_cert_selfsign(kvp_tool *t, int argc, char **argv);

/* "kvp11 sync", "publish", "unpublish" (sync.c): argv[0] is the command. */
int kvp_tool_sync(kvp_tool *t, int argc, char **argv);
void kvp_tool_sync_usage(FILE *f);

/* Output helpers (output.c). */
/* prefix, "CMD", then the synopsis text; its continuation lines ('\n' in text)
 * aligned after "CMD ". */
void kvp_tool_synopsis(FILE *f, const char *prefix, const char *cmd, const char *text);
/* "2026-11-25T11:42:58Z" into out (at least 21 bytes). */
void kvp_tool_isotime(int64_t t, char out[32]);
/* PEM text of a DER certificate; malloc'd, NULL on allocation failure. */
char *kvp_tool_pem(const unsigned char *der, size_t der_len);
/* Print records as they come (cert list): a table, or a JSON array. For the
 * table, pass every row to _measure first (the column widths), then to _row. */
typedef struct kvp_list_out {
  FILE *f;
  int json;
  size_t n;  /* rows printed */
  int w[5];  /* column widths */
} kvp_list_out;
void kvp_tool_list_init(kvp_list_out *o, FILE *f, int json);
void kvp_tool_list_measure(kvp_list_out *o, const kvp_cert_rec *r);
int kvp_tool_list_row(kvp_list_out *o, const kvp_cert_rec *r);
int kvp_tool_list_end(kvp_list_out *o);
/* Print one record as "key: value" lines, as a JSON object (with "pem"), or as PEM only. */
enum { KVP_SHOW_TEXT = 0, KVP_SHOW_JSON, KVP_SHOW_PEM };
int kvp_tool_print_rec(FILE *f, const kvp_cert_rec *rec, int how);

#endif
