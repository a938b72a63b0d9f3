/*
 * kvp11 cert add|list|show|remove: register certificates in the registry.
 *
 * cert add validates everything (file, validity, account, key store, key,
 * public key match, duplicate name) before it writes, so a failed command
 * leaves the registry as it was.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/x509.h>

#include "backend/backend.h"
#include "core/cert.h"
#include "core/p11names.h"
#include "core/util.h"
#include "tool.h"

/* Options of the cert commands; long only, values index cert_args.v. */
enum {
  O_NAME = 0,
  O_TYPE,
  O_CERT,
  O_ACCOUNT,
  O_HSM,
  O_VAULT,
  O_KEY,
  O_RG,
  O_REPLACE,
  O_STRICT,
  O_JSON,
  O_PEM,
  O_CERT_DIR,
  O_COUNT,
  O_BASE = KVP_TOOL_OPT_BASE, /* getopt values are O_BASE + index, clear of short letters */
};
#define OPT(o) (1u << (o))

static const struct option cert_longopts[] = {
    {"name", required_argument, NULL, O_BASE + O_NAME},
    {"type", required_argument, NULL, O_BASE + O_TYPE},
    {"cert", required_argument, NULL, O_BASE + O_CERT},
    {"account", required_argument, NULL, O_BASE + O_ACCOUNT},
    {"hsm", required_argument, NULL, O_BASE + O_HSM},
    {"vault", required_argument, NULL, O_BASE + O_VAULT},
    {"key", required_argument, NULL, O_BASE + O_KEY},
    {"resource-group", required_argument, NULL, O_BASE + O_RG},
    {"replace", no_argument, NULL, O_BASE + O_REPLACE},
    {"strict", no_argument, NULL, O_BASE + O_STRICT},
    {"json", no_argument, NULL, O_BASE + O_JSON},
    {"pem", no_argument, NULL, O_BASE + O_PEM},
    {"cert-dir", required_argument, NULL, O_BASE + O_CERT_DIR},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

typedef struct cert_args {
  const char *v[O_COUNT]; /* option values; flags are "" when given, NULL when not */
  const char *operand;    /* NAME of show / remove */
  const char *account;    /* resolved account */
} cert_args;

typedef struct cert_cmd {
  const char *cmd; /* "cert add": also the message prefix */
  unsigned allowed;
  int operand; /* 1: takes the NAME operand */
  int (*run)(kvp_tool *t, cert_args *a);
  const char *synopsis;
} cert_cmd;

static int cert_add(kvp_tool *t, cert_args *a);
static int cert_list(kvp_tool *t, cert_args *a);
static int cert_show(kvp_tool *t, cert_args *a);
static int cert_remove(kvp_tool *t, cert_args *a);

static const cert_cmd cert_cmds[] = {
    {"cert add",
     OPT(O_NAME) | OPT(O_TYPE) | OPT(O_CERT) | OPT(O_ACCOUNT) | OPT(O_HSM) | OPT(O_VAULT) |
         OPT(O_KEY) | OPT(O_RG) | OPT(O_REPLACE) | OPT(O_STRICT) | OPT(O_CERT_DIR),
     0, cert_add,
     "cert add --name NAME --type public|private --cert FILE [--account A]\n"
     "[--hsm HSM --key LABEL | --vault VAULT --key KEY[/VERSION]]\n"
     "[--resource-group RG] [--replace] [--strict]\n"
     "cert add --type public --cert-dir DIR [--account A] [--replace]"},
    {"cert list", OPT(O_ACCOUNT) | OPT(O_JSON), 0, cert_list, "cert list [--account A] [--json]"},
    {"cert show", OPT(O_ACCOUNT) | OPT(O_JSON) | OPT(O_PEM), 1, cert_show,
     "cert show NAME [--account A] [--json | --pem]"},
    {"cert remove", OPT(O_ACCOUNT), 1, cert_remove, "cert remove NAME [--account A]"},
};

/* prefix, then the synopsis; its continuation lines aligned after "cert CMD ". */
static void synopsis(FILE *f, const char *prefix, const cert_cmd *c)
{
  kvp_tool_synopsis(f, prefix, c->cmd, c->synopsis);
}

void kvp_tool_cert_usage(FILE *f)
{
  for (size_t i = 0; i < KVP_ARRAY_SIZE(cert_cmds); i++)
    synopsis(f, "  kvp11 [-c FILE] ", &cert_cmds[i]);
  fprintf(f, "  kvp11 [-c FILE] cert selfsign ... (see kvp11 cert selfsign --help)\n");
}

static void cert_cmd_usage(FILE *f, const cert_cmd *c)
{
  synopsis(f, "usage: kvp11 [-c FILE] ", c);
  if (c->run == cert_add)
    fprintf(f, "\n"
               "  --type public    a partner's certificate (no key)\n"
               "  --type private   our certificate; its key lives in a configured [hsm HSM]\n"
               "                   (--key = key label) or [vault VAULT] (--key = key name,\n"
               "                   optionally /VERSION). The key's public key must equal the\n"
               "                   certificate's.\n"
               "  --cert FILE      one certificate, PEM or DER\n"
               "  --cert-dir DIR   every *.pem, *.crt, *.cer, *.der of DIR, each under its file\n"
               "                   name without the extension, in one transaction: one bad\n"
               "                   file registers nothing\n"
               "  --account A      default: the first configured account\n"
               "  --replace        replace a certificate of the same name (its id is kept)\n"
               "  --strict         refuse an expired or not yet valid certificate\n");
}

/* Certificate names: printable, no control characters, at most 255 bytes. */
static int name_ok(const char *s)
{
  size_t n = strlen(s);
  if (n == 0 || n > 255)
    return 0;
  for (const unsigned char *p = (const unsigned char *)s; *p; p++)
    if (*p < 0x20 || *p == 0x7f)
      return 0;
  return 1;
}

int kvp_tool_cert_name_ok(const char *s)
{
  return name_ok(s);
}

/*
 * Open the key named by --hsm/--vault and --key, check that its public key is
 * the certificate's, and fill rec->key_ref and rec->key_version.
 */
static int check_key(kvp_tool *t, const cert_args *a, kvp_cert_rec *rec)
{
  const int is_hsm = a->v[O_HSM] != NULL;
  const char *kind = is_hsm ? "hsm" : "vault";
  const char *store = is_hsm ? a->v[O_HSM] : a->v[O_VAULT];
  char err[KVP_ERRLEN] = "";
  char *ref = NULL, *scheme = NULL, *pstore = NULL, *pname = NULL;
  kvp_backend *be = NULL;
  kvp_key *key = NULL;
  X509 *x = NULL;
  const unsigned char *p = rec->der;
  CK_RV rv;
  int rc = KVP_EXIT_ERROR;

  size_t n = strlen("keyvault:/") + strlen(store) + strlen(a->v[O_KEY]) + 1;
  if (!(ref = malloc(n))) {
    rc = kvp_tool_fail(t, KVP_EXIT_ERROR, "out of memory");
    goto out;
  }
  snprintf(ref, n, "%s:%s/%s", is_hsm ? "hsm" : "keyvault", store, a->v[O_KEY]);
  if (kvp_keyref_parse(ref, &scheme, &pstore, &pname, err, sizeof(err)) != KVP_OK) {
    rc = kvp_tool_fail(t, KVP_EXIT_USAGE, "%s", err);
    goto out;
  }
  const kvp_hsm_conf *hc = is_hsm ? kvp_config_find_hsm(t->cfg, pstore) : NULL;
  const kvp_vault_conf *vc = is_hsm ? NULL : kvp_config_find_vault(t->cfg, pstore);
  if (!hc && !vc) {
    rc = kvp_tool_fail(t, KVP_EXIT_ERROR, "%s '%s' is not configured in %s", kind, pstore,
                       t->cfg->path);
    goto out;
  }
  rv = hc ? kvp_hsm_backend_new(hc, &be) : kvp_keyvault_backend_new(vc, &be);
  if (rv != CKR_OK || !be) {
    rc = kvp_tool_fail(t, KVP_EXIT_ERROR, "%s '%s': cannot use this key store: %s%s", kind, pstore,
                       kvp_ckr_name(rv), kvp_tool_loghint(t));
    goto out;
  }
  rv = be->ops->open_key(be, pname, &key);
  if (rv == CKR_KEY_HANDLE_INVALID) {
    rc = kvp_tool_fail(t, KVP_EXIT_ERROR, "%s '%s' has no key '%s'", kind, pstore, pname);
    goto out;
  }
  if (rv != CKR_OK || !key || !key->pub) {
    rc = kvp_tool_fail(t, KVP_EXIT_ERROR, "%s '%s': cannot read key '%s': %s%s", kind, pstore,
                       pname, kvp_ckr_name(rv), kvp_tool_loghint(t));
    goto out;
  }
  EVP_PKEY *cpub = (x = d2i_X509(NULL, &p, (long)rec->der_len)) ? X509_get0_pubkey(x) : NULL;
  if (!cpub) {
    rc = kvp_tool_fail(t, KVP_EXIT_ERROR, "%s: cannot read the certificate's public key",
                       a->v[O_CERT]);
    goto out;
  }
  if (!kvp_pubkey_equal(cpub, key->pub)) {
    char fc[72] = "?", fk[72] = "?";
    kvp_pubkey_fingerprint(cpub, fc);
    kvp_pubkey_fingerprint(key->pub, fk);
    rc = kvp_tool_fail(t, KVP_EXIT_ERROR,
                       "%s: the certificate's public key (%s) is not the public key of %s (%s)",
                       a->v[O_CERT], fc, ref, fk);
    goto out;
  }
  rec->key_version = kvp_strdup0(key->version);
  if (key->version && !rec->key_version) {
    rc = kvp_tool_fail(t, KVP_EXIT_ERROR, "out of memory");
    goto out;
  }
  rec->key_ref = ref;
  ref = NULL;
  rc = KVP_EXIT_OK;
out:
  X509_free(x);
  if (key)
    be->ops->close_key(be, key);
  if (be)
    be->ops->destroy(be, 0);
  free(ref);
  free(scheme);
  free(pstore);
  free(pname);
  return rc;
}

static int duplicate(const kvp_tool *t, const char *account, const char *name)
{
  return kvp_tool_fail(t, KVP_EXIT_ERROR,
                       "account '%s' has a certificate named '%s' already (--replace replaces it)",
                       account, name);
}

static int cert_add(kvp_tool *t, cert_args *a)
{
  const char *type = a->v[O_TYPE], *file = a->v[O_CERT];
  const int priv = type && strcmp(type, "private") == 0;
  const int has_store = a->v[O_HSM] || a->v[O_VAULT];
  kvp_cert_rec rec = {0}, old = {0};
  unsigned char *der = NULL;
  size_t der_len = 0;
  char err[KVP_ERRLEN] = "", warn[KVP_ERRLEN] = "", when[32];
  char *o_scheme = NULL, *o_store = NULL, *o_name = NULL;
  int rc = KVP_EXIT_USAGE, exists = 0, completes = 0;
  /* a private certificate without --hsm/--vault/--key: for a key registered
   * without certificate (kvp11 key create, C_GenerateKeyPair) */
  const int from_row = priv && !has_store && !a->v[O_KEY];

  if (a->v[O_CERT_DIR] != NULL) /* partner onboarding: tool/cert_bulk.c */
    return kvp_tool_cert_add_dir(t, a->v[O_CERT_DIR], type,
                                 a->v[O_NAME] || file || has_store || a->v[O_KEY] || a->v[O_RG] ||
                                     a->v[O_STRICT],
                                 a->v[O_ACCOUNT], a->v[O_REPLACE] != NULL);

  /* The command line first: usage errors need no configuration. */
  if (!a->v[O_NAME] || !type || !file) {
    kvp_tool_fail(t, rc, "--name, --type and --cert are required (see kvp11 cert add --help)");
    goto out;
  }
  if (!name_ok(a->v[O_NAME])) {
    kvp_tool_fail(t, rc, "bad --name '%s': 1 to 255 bytes, no control characters", a->v[O_NAME]);
    goto out;
  }
  if (!priv && strcmp(type, "public") != 0) {
    kvp_tool_fail(t, rc, "bad --type '%s': public or private", type);
    goto out;
  }
  if (!priv && (has_store || a->v[O_KEY])) {
    kvp_tool_fail(t, rc, "a public certificate takes no --hsm, --vault or --key");
    goto out;
  }
  if (priv && !from_row && (!has_store || (a->v[O_HSM] && a->v[O_VAULT]) || !a->v[O_KEY])) {
    kvp_tool_fail(t, rc, "a private certificate needs --key and exactly one of --hsm or --vault");
    goto out;
  }

  rc = KVP_EXIT_ERROR;
  if (kvp_tool_load_config(t) != KVP_EXIT_OK || kvp_tool_account(t, a->v[O_ACCOUNT], &a->account))
    goto out;

  /* The certificate. */
  if (kvp_cert_load_file(file, &der, &der_len, err, sizeof(err)) != KVP_OK) {
    kvp_tool_fail(t, rc, "%s", err);
    goto out;
  }
  if (kvp_cert_fill_rec(der, der_len, &rec, err, sizeof(err)) != KVP_OK) {
    kvp_tool_fail(t, rc, "%s: %s", file, err);
    goto out;
  }
  time_t now = time(NULL);
  if (now < rec.not_before) {
    kvp_tool_isotime(rec.not_before, when);
    snprintf(warn, sizeof(warn), "%s: the certificate is not valid before %s", file, when);
  } else if (now > rec.not_after) {
    kvp_tool_isotime(rec.not_after, when);
    snprintf(warn, sizeof(warn), "%s: the certificate expired on %s", file, when);
  }
  if (warn[0] && a->v[O_STRICT]) {
    kvp_tool_fail(t, rc, "%s (refused with --strict)", warn);
    goto out;
  }
  rec.account = strdup(a->account);
  rec.name = strdup(a->v[O_NAME]);
  rec.resource_group = kvp_strdup0(a->v[O_RG]);
  rec.type = priv ? KVP_CERT_PRIVATE : KVP_CERT_PUBLIC;
  if (!rec.account || !rec.name || (a->v[O_RG] && !rec.resource_group)) {
    kvp_tool_fail(t, rc, "out of memory");
    goto out;
  }

  /* A duplicate name fails before the key store is asked. */
  if (kvp_tool_open_registry(t) != KVP_EXIT_OK)
    goto out;
  int g = kvp_registry_get(t->reg, a->account, rec.name, &old, err, sizeof(err));
  if (g != KVP_OK && g != KVP_ENOTFOUND) {
    kvp_tool_fail(t, rc, "%s", err);
    goto out;
  }
  exists = g == KVP_OK;
  /* the certificate of a key registered without one: completes that entry */
  completes = exists && old.der_len == 0;
  if (completes && !priv) {
    kvp_tool_fail(t, rc, "'%s' is a key waiting for its certificate: add it with --type private",
                  rec.name);
    goto out;
  }
  if (from_row && !completes) {
    kvp_tool_fail(t, KVP_EXIT_USAGE,
                  "a private certificate needs --key and exactly one of --hsm or --vault (they "
                  "may be left out only for a key registered without certificate)");
    rc = KVP_EXIT_USAGE;
    goto out;
  }
  if (exists && !completes && !a->v[O_REPLACE]) {
    duplicate(t, a->account, rec.name);
    goto out;
  }
  if (completes) {
    if (kvp_keyref_parse(old.key_ref, &o_scheme, &o_store, &o_name, err, sizeof(err)) != KVP_OK) {
      kvp_tool_fail(t, rc, "'%s': %s", rec.name, err);
      goto out;
    }
    if (from_row) {
      a->v[strcmp(o_scheme, "hsm") == 0 ? O_HSM : O_VAULT] = o_store;
      a->v[O_KEY] = o_name;
    }
    if (old.ckid_len > 0) {
      if (!(rec.ckid = malloc(old.ckid_len))) {
        kvp_tool_fail(t, rc, "out of memory");
        goto out;
      }
      memcpy(rec.ckid, old.ckid, old.ckid_len);
      rec.ckid_len = old.ckid_len;
    }
  }

  if (priv && (rc = check_key(t, a, &rec)) != KVP_EXIT_OK)
    goto out;
  rc = KVP_EXIT_ERROR;

  int r = kvp_registry_add(t->reg, &rec, a->v[O_REPLACE] != NULL || completes, err, sizeof(err));
  if (r == KVP_EEXISTS) {
    duplicate(t, a->account, rec.name);
    goto out;
  }
  if (r != KVP_OK) {
    kvp_tool_fail(t, rc, "%s", err);
    goto out;
  }
  if (warn[0])
    kvp_tool_warn(t, "%s", warn);
  printf("%s %s certificate '%s' in account '%s'%s%s\n",
         completes ? "added the" : exists ? "replaced" : "added",
         priv ? "private" : "public", rec.name, rec.account, rec.key_ref ? ", key " : "",
         rec.key_ref ? rec.key_ref : "");
  rc = KVP_EXIT_OK;
out:
  free(der);
  free(o_scheme);
  free(o_store);
  free(o_name);
  kvp_cert_rec_clear(&rec);
  kvp_cert_rec_clear(&old);
  return rc;
}

static int list_measure(void *ctx, kvp_cert_rec *rec)
{
  kvp_tool_list_measure(ctx, rec);
  return KVP_OK;
}

static int list_row(void *ctx, kvp_cert_rec *rec)
{
  return kvp_tool_list_row(ctx, rec) == 0 ? KVP_OK : KVP_ERR; /* only this gives KVP_ERR */
}

/* Streamed: the rows are never all in memory (tool/output.c). */
static int cert_list(kvp_tool *t, cert_args *a)
{
  char err[KVP_ERRLEN] = "";
  kvp_list_out o;
  int r = KVP_OK;

  if (kvp_tool_load_config(t) || kvp_tool_account(t, a->v[O_ACCOUNT], &a->account) ||
      kvp_tool_open_registry_ro(t))
    return KVP_EXIT_ERROR;
  kvp_tool_list_init(&o, stdout, a->v[O_JSON] != NULL);
  if (t->reg != NULL && !o.json)
    r = kvp_registry_each(t->reg, a->account, list_measure, &o, err, sizeof(err));
  if (t->reg != NULL && r == KVP_OK)
    r = kvp_registry_each(t->reg, a->account, list_row, &o, err, sizeof(err));
  if (r == KVP_ERR || (r == KVP_OK && kvp_tool_list_end(&o) != 0))
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "cannot write the output");
  if (r != KVP_OK)
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "%s", err);
  return KVP_EXIT_OK;
}

/* Look up the NAME operand; prints the error. */
static int get_operand(kvp_tool *t, cert_args *a, kvp_cert_rec *rec, int writable)
{
  char err[KVP_ERRLEN] = "";
  if (kvp_tool_load_config(t) || kvp_tool_account(t, a->v[O_ACCOUNT], &a->account) ||
      (writable ? kvp_tool_open_registry(t) : kvp_tool_open_registry_ro(t)))
    return KVP_EXIT_ERROR;
  int r = t->reg == NULL ? KVP_ENOTFOUND
                         : kvp_registry_get(t->reg, a->account, a->operand, rec, err, sizeof(err));
  if (r == KVP_ENOTFOUND)
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "account '%s' has no certificate named '%s'",
                         a->account, a->operand);
  if (r != KVP_OK)
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "%s", err);
  return KVP_EXIT_OK;
}

static int cert_show(kvp_tool *t, cert_args *a)
{
  kvp_cert_rec rec = {0};
  int how = a->v[O_JSON] ? KVP_SHOW_JSON : a->v[O_PEM] ? KVP_SHOW_PEM : KVP_SHOW_TEXT;
  if (a->v[O_JSON] && a->v[O_PEM])
    return kvp_tool_fail(t, KVP_EXIT_USAGE, "--json and --pem exclude each other");
  int rc = get_operand(t, a, &rec, 0);
  if (rc == KVP_EXIT_OK && how == KVP_SHOW_PEM && rec.der_len == 0)
    rc = kvp_tool_fail(t, KVP_EXIT_ERROR, "'%s' is a key without a certificate yet", rec.name);
  else if (rc == KVP_EXIT_OK && kvp_tool_print_rec(stdout, &rec, how) != 0)
    rc = kvp_tool_fail(t, KVP_EXIT_ERROR, "cannot format the output");
  kvp_cert_rec_clear(&rec);
  return rc;
}

static int cert_remove(kvp_tool *t, cert_args *a)
{
  char err[KVP_ERRLEN] = "";
  kvp_cert_rec rec = {0};
  int rc = get_operand(t, a, &rec, 1);
  kvp_cert_rec_clear(&rec);
  if (rc != KVP_EXIT_OK)
    return rc;
  int r = kvp_registry_remove(t->reg, a->account, a->operand, err, sizeof(err));
  if (r == KVP_ENOTFOUND)
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "account '%s' has no certificate named '%s'",
                         a->account, a->operand);
  if (r != KVP_OK)
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "%s", err);
  printf("removed certificate '%s' from account '%s'\n", a->operand, a->account);
  return KVP_EXIT_OK;
}

/* Parse the options of one cert command into a; returns -1 to go on, else an exit code. */
static int parse_args(kvp_tool *t, const cert_cmd *c, int argc, char **argv, cert_args *a)
{
  const kvp_tool_opts o = {cert_longopts, O_COUNT, c->allowed, c->operand, c->cmd,
                           "kvp11 cert --help"};
  int rc = kvp_tool_parse_opts(t, &o, argc, argv, a->v, &a->operand);
  if (rc == KVP_TOOL_HELP) {
    cert_cmd_usage(stdout, c);
    return KVP_EXIT_OK;
  }
  return rc;
}

int kvp_tool_cert(kvp_tool *t, int argc, char **argv)
{
  int rc;
  if (argc > 1 && strcmp(argv[1], "selfsign") == 0) {
    t->cmd = "cert selfsign";
    return kvp_tool_cert_selfsign(t, argc - 1, argv + 1);
  }
  const cert_cmd *c = kvp_tool_subcommand(t, "cert", argc, argv, kvp_tool_cert_usage, cert_cmds,
                                          sizeof(cert_cmds[0]), KVP_ARRAY_SIZE(cert_cmds), &rc);
  if (c == NULL)
    return rc;
  cert_args a = {0};
  rc = parse_args(t, c, argc - 1, argv + 1, &a);
  return rc >= 0 ? rc : c->run(t, &a);
}
