/*
 * The kvp11 admin command: shared context, error reporting and output helpers.
 *
 * Every command prints its result on stdout and, on failure, exactly one
 * line "kvp11: <command>: <what is wrong>" on stderr. Exit codes below.
 */
#ifndef KVP_TOOL_TOOL_H
#define KVP_TOOL_TOOL_H

#include <getopt.h>
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>
#include <openssl/evp.h>

#include "backend/backend.h"
#include "core/audit.h"
#include "core/config.h"
#include "core/registry.h"

enum {
  KVP_EXIT_OK = 0,
  KVP_EXIT_ERROR = 1, /* the command failed; nothing was changed */
  KVP_EXIT_USAGE = 2, /* bad command line */
  KVP_EXIT_WARN = 3,  /* kvp11 check: warnings only (e.g. a certificate expires soon) */
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
#define KVP_TOOL_OPT_BASE 256 /* kvp_tool_longopts[i].val == KVP_TOOL_OPT_BASE + i */
#define KVP_TOOL_HELP (-2)    /* kvp_tool_parse_opts: -h was given */
/* Every long option of the commands (opts.c); smime's first, in its --help order. */
enum {
  O_CERT = 0,
  O_TO,
  O_FROM,
  O_DETACHED,
  O_DIGEST,
  O_CIPHER,
  O_OAEP,
  O_BINARY,
  O_ACCOUNT,
  O_INFORM,
  O_OUTFORM,
  O_CONTENT,
  O_MODULE,
  O_IN,
  O_OUT,
  O_NAME,
  O_TYPE,
  O_HSM,
  O_VAULT,
  O_KEY,
  O_RG,
  O_REPLACE,
  O_STRICT,
  O_JSON,
  O_PEM,
  O_CERT_DIR,
  O_ALIAS,
  O_ALLOW_EXPIRED,
  O_YES,
  O_EXPIRING,
  O_SIZE,
  O_CURVE,
  O_HSMPROT,
  O_OPS,
  O_NOREG,
  O_PFX,
  O_PASSFILE,
  O_KEYFILE,
  O_PINFILE,
  O_CERTNAME,
  O_SUBJECT,
  O_SAN,
  O_PSS,
  O_DAYS,
  O_IA,
  O_DRY,
  O_PRUNE,
  O_VAULT_ID,
  O_COUNT,
};
#define OPT(o) (UINT64_C(1) << (o))
/* O_COUNT options, "help" ('h'), then a zero entry. */
extern const struct option kvp_tool_longopts[O_COUNT + 2];
typedef struct kvp_tool_opts {
  uint64_t allowed; /* bit O_X: the option applies to this command */
  int operand;      /* 1: the command takes one NAME operand */
  const char *cmd;  /* "cert add": names the command in messages */
  const char *help; /* "kvp11 cert --help" */
} kvp_tool_opts;
/*
 * Parse argv (argv[0] is the command word) into v[0..O_COUNT-1] (flags get "") and
 * *operand. Every error is a usage error with one line on stderr: an option
 * that does not apply to the command, given twice, unknown or missing its
 * argument, a missing or unexpected operand. Returns -1 to go on,
 * KVP_TOOL_HELP when -h was given (the caller prints its usage), or an exit code.
 */
int kvp_tool_parse_opts(kvp_tool *t, const kvp_tool_opts *o, int argc, char **argv, const char **v,
                        const char **operand);
/* --digest NAME (NULL: sha256) of csr, cert selfsign and smime: sha256, sha384 or
 * sha512 into *md. Returns -1 to go on, else the usage exit code (one line said). */
int kvp_tool_digest(kvp_tool *t, const char *name, const EVP_MD **md);

/* Registry and key names: 1 to 255 bytes, no control characters. */
int kvp_tool_name_ok(const char *s);

/*
 * Why a lower layer failed, for the one-line error: the reason it recorded
 * (module/core/status.h), else the CK_RV's name and where the log went.
 * The text lives in a static buffer until the next call.
 */
const char *kvp_tool_reason(const kvp_tool *t, CK_RV rv);

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
/* The parsed command line of one group command: options, NAME operand, account. */
typedef struct kvp_tool_args {
  const char *v[O_COUNT]; /* option values; flags are "" when given, NULL when not */
  const char *operand;    /* the NAME / FILE operand of commands that take one */
  const char *account;    /* resolved account, where the command resolves one */
} kvp_tool_args;
/* One row of a command group's table (cert, key, registry). */
typedef struct kvp_tool_cmd {
  const char *cmd;  /* "cert add": also the message prefix; first, for kvp_tool_subcommand */
  uint64_t allowed; /* OPT(O_X) of the options it takes */
  int operand;      /* 1: takes one operand */
  int (*run)(kvp_tool *t, kvp_tool_args *a);
  const char *synopsis;
  const char *help; /* printed after the synopsis by --help (NULL: nothing more) */
} kvp_tool_cmd;
/* "  kvp11 [-c FILE] SYNOPSIS" of every command of a table. */
void kvp_tool_cmds_usage(FILE *f, const kvp_tool_cmd *cmds, size_t n);
/*
 * "kvp11 GROUP SUB [options]": find SUB in cmds (kvp_tool_subcommand), parse its
 * options, print its help on -h (cmd_usage, NULL: synopsis and help text), else
 * run it. Returns an exit code.
 */
int kvp_tool_run_group(kvp_tool *t, const char *group, int argc, char **argv,
                       void (*usage)(FILE *), const kvp_tool_cmd *cmds, size_t n,
                       void (*cmd_usage)(FILE *, const kvp_tool_cmd *));
int kvp_tool_open_registry(kvp_tool *t);
/* Read-only, for list and show: a registry that does not exist yet leaves
 * t->reg NULL (nothing registered) instead of creating it. */
int kvp_tool_open_registry_ro(kvp_tool *t);
/* Release cfg and reg. */
void kvp_tool_done(kvp_tool *t);

/* The "cert" command group: argv[0] is "cert". Returns an exit code. */
int kvp_tool_cert(kvp_tool *t, int argc, char **argv);
void kvp_tool_cert_usage(FILE *f);
/* cert add --cert-dir (cert_bulk.c); other_options: an option --cert-dir does not take. */
int kvp_tool_cert_add_dir(kvp_tool *t, const char *dir, const char *type, int other_options,
                          const char *account, int replace);

/* The "smime" command group (smime.c): argv[0] is "smime". Returns an exit code. */
int kvp_tool_smime(kvp_tool *t, int argc, char **argv);
void kvp_tool_smime_usage(FILE *f);

/* The "check" command (check.c): argv[0] is "check". Returns an exit code. */
int kvp_tool_check(kvp_tool *t, int argc, char **argv);
void kvp_tool_check_usage(FILE *f);

/* The "audit" command (audit.c): argv[0] is "audit". Returns an exit code. */
int kvp_tool_audit(kvp_tool *t, int argc, char **argv);
void kvp_tool_audit_usage(FILE *f);

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
/* ---- key stores (store.c): the one way the tool opens a configured store ---- */
typedef struct kvp_tool_store {
  int is_hsm;
  const char *kind; /* "hsm" / "vault": as in messages and options */
  const char *name; /* the [hsm NAME] / [vault NAME] */
  const kvp_hsm_conf *hc;
  const kvp_vault_conf *vc;
  kvp_backend *be; /* set by kvp_tool_store_open */
} kvp_tool_store;
/* Resolve --hsm NAME / --vault NAME in the configuration (no I/O). Prints the error. */
int kvp_tool_store_find(kvp_tool *t, int is_hsm, const char *name, kvp_tool_store *s);
/* The same from a key reference "hsm:H/KEY" / "keyvault:V/KEY[/VER]"; *key gets KEY[/VER]
 * (malloc'd). Prints the error. */
int kvp_tool_store_find_ref(kvp_tool *t, const char *ref, kvp_tool_store *s, char **key);
/*
 * Create the backend (no I/O yet) and, for an HSM without pin_file/pin_env,
 * log in with pin_file (a 0600 file) or else $KVP11_PIN (wiped from the
 * environment). pin_file NULL and no $KVP11_PIN: no login (the caller's
 * operations then fail with the HSM's reason). Prints the error.
 */
int kvp_tool_store_open(kvp_tool *t, kvp_tool_store *s, const char *pin_file, int need_login);
void kvp_tool_store_close(kvp_tool_store *s);
/* Only create the backend (no I/O, nothing printed): for kvp11 check, which
 * shows a failure as a row. */
CK_RV kvp_tool_store_backend(kvp_tool_store *s);
/* A secret taken from the environment: overwrite it in place and unset the variable. */
void kvp_tool_env_wipe(const char *var, char *value);
/* "<kind> '<name>': <what> failed: <reason>"; returns KVP_EXIT_ERROR. */
int kvp_tool_store_fail(kvp_tool *t, const kvp_tool_store *s, const char *what, CK_RV rv);
/* Open key name of the store (its public part is read); prints the error naming the cause. */
int kvp_tool_store_key(kvp_tool *t, kvp_tool_store *s, const char *name, kvp_key **key);

/* ---- lifecycle commands (cert_life.c) and the registry group (registry_cmd.c) ---- */
int kvp_tool_cert_renew(kvp_tool *t, const char *name, const char *account_opt, const char *file,
                        int allow_expired, int json);
int kvp_tool_cert_rotate(kvp_tool *t, const char *name, const char *account_opt, const char *file,
                         int is_hsm, const char *store, const char *key, int allow_expired,
                         int json);
int kvp_tool_cert_retire(kvp_tool *t, const char *name, const char *account_opt, int json);
/* Validity of a certificate record against now: NULL when valid, else a message in buf. */
const char *kvp_tool_validity(const kvp_cert_rec *rec, const char *file, char *buf, size_t len);
/* A refusal shared by cert add / renew / rotate: the same certificate (SHA-256) registered
 * in the account under another name than except. Prints the error; KVP_EXIT_OK when free. */
int kvp_tool_no_duplicate(kvp_tool *t, const kvp_cert_rec *rec, const char *except);
/* A partner certificate (public key pub, from file) must not carry one of our private keys
 * (the entry except, which it replaces, left out). */
int kvp_tool_not_our_key(kvp_tool *t, const char *file, EVP_PKEY *pub, const char *account,
                         const char *except);
/* Open key keyname of the store (--hsm / --vault), check its public key is rec's certificate's,
 * set rec->key_ref and rec->key_version. Prints the error. */
int kvp_tool_check_key(kvp_tool *t, int is_hsm, const char *store, const char *keyname,
                       const char *file, kvp_cert_rec *rec);
/* The error line for a certificate file the parser refused (err): a directory or a PFX
 * are named as such. */
const char *kvp_tool_cert_file_error(const char *file, const char *err);
/* The public key of a row: its certificate's, else its recorded SPKI; NULL if none. */
EVP_PKEY *kvp_tool_rec_pubkey(const kvp_cert_rec *r);
/* rec->spki from rec->der; 0 or -1. */
int kvp_tool_rec_spki(kvp_cert_rec *rec);
/* "SHA256:AB:CD:..." (OpenSSL's form) of a hex SHA-256 (out: 112 bytes). */
void kvp_tool_fingerprint(const char *hex, char out[112]);
/* Print a JSON object built by the caller (consumed). Returns 0 or -1. */
int kvp_tool_print_json(FILE *f, json_t *j);

int kvp_tool_registry(kvp_tool *t, int argc, char **argv);
void kvp_tool_registry_usage(FILE *f);

/* Display width of UTF-8 text (text.c), and s padded to width columns. */
int kvp_tool_width(const char *s);
void kvp_tool_cell(FILE *f, const char *s, int width);

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
  int w[6];  /* column widths */
  int64_t expiring_before; /* > 0: only certificates whose validity ends before (cert list --expiring) */
} kvp_list_out;
void kvp_tool_list_init(kvp_list_out *o, FILE *f, int json);
void kvp_tool_list_measure(kvp_list_out *o, const kvp_cert_rec *r);
int kvp_tool_list_row(kvp_list_out *o, const kvp_cert_rec *r);
int kvp_tool_list_end(kvp_list_out *o);
/* Print one record as "key: value" lines, as a JSON object (with "pem"), or as PEM only. */
enum { KVP_SHOW_TEXT = 0, KVP_SHOW_JSON, KVP_SHOW_PEM };
int kvp_tool_print_rec(FILE *f, const kvp_cert_rec *rec, int how);

#endif
