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

#include <sys/stat.h>

#include <openssl/err.h>
#include <openssl/pkcs12.h>
#include <openssl/x509.h>

#include "backend/backend.h"
#include "core/cert.h"
#include "core/p11names.h"
#include "core/status.h"
#include "core/util.h"
#include "tool.h"



typedef kvp_tool_args cert_args;

static int cert_add(kvp_tool *t, cert_args *a);
static int cert_list(kvp_tool *t, cert_args *a);
static int cert_show(kvp_tool *t, cert_args *a);
static int cert_remove(kvp_tool *t, cert_args *a);
static int cert_renew(kvp_tool *t, cert_args *a);
static int cert_rotate(kvp_tool *t, cert_args *a);
static int cert_retire(kvp_tool *t, cert_args *a);

static const kvp_tool_cmd cert_cmds[] = {
    {"cert add",
     OPT(O_NAME) | OPT(O_TYPE) | OPT(O_CERT) | OPT(O_ACCOUNT) | OPT(O_HSM) | OPT(O_VAULT) |
         OPT(O_KEY) | OPT(O_RG) | OPT(O_REPLACE) | OPT(O_STRICT) | OPT(O_ALIAS) |
         OPT(O_ALLOW_EXPIRED) | OPT(O_JSON) | OPT(O_CERT_DIR),
     0, cert_add,
     "cert add --name NAME --type public|private --cert FILE [--account A]\n"
     "[--hsm HSM --key LABEL | --vault VAULT --key KEY[/VERSION]]\n"
     "[--resource-group RG] [--replace] [--alias] [--strict | --allow-expired]\n"
     "[--json]\n"
     "cert add --type public --cert-dir DIR [--account A] [--replace]", NULL},
    {"cert list", OPT(O_ACCOUNT) | OPT(O_JSON) | OPT(O_EXPIRING), 0, cert_list,
     "cert list [--account A] [--expiring DAYS] [--json]", NULL},
    {"cert show", OPT(O_ACCOUNT) | OPT(O_JSON) | OPT(O_PEM), 1, cert_show,
     "cert show NAME [--account A] [--json | --pem]", NULL},
    {"cert remove", OPT(O_ACCOUNT) | OPT(O_YES) | OPT(O_JSON), 1, cert_remove,
     "cert remove NAME [--account A] [--yes] [--json]", NULL},
    {"cert renew", OPT(O_ACCOUNT) | OPT(O_CERT) | OPT(O_ALLOW_EXPIRED) | OPT(O_JSON), 1, cert_renew,
     "cert renew NAME --cert NEW.pem [--account A] [--allow-expired] [--json]", NULL},
    {"cert rotate",
     OPT(O_ACCOUNT) | OPT(O_CERT) | OPT(O_HSM) | OPT(O_VAULT) | OPT(O_KEY) |
         OPT(O_ALLOW_EXPIRED) | OPT(O_JSON),
     1, cert_rotate,
     "cert rotate NAME --cert NEW.pem (--hsm HSM | --vault VAULT) --key KEY\n"
     "[--account A] [--allow-expired] [--json]", NULL},
    {"cert retire", OPT(O_ACCOUNT) | OPT(O_JSON), 1, cert_retire,
     "cert retire NAME [--account A] [--json]", NULL},
};


void kvp_tool_cert_usage(FILE *f)
{
  kvp_tool_cmds_usage(f, cert_cmds, KVP_ARRAY_SIZE(cert_cmds));
  fprintf(f, "  kvp11 [-c FILE] cert selfsign ... (see kvp11 cert selfsign --help)\n");
}

static void cert_cmd_usage(FILE *f, const kvp_tool_cmd *c)
{
  kvp_tool_synopsis(f, "usage: kvp11 [-c FILE] ", c->cmd, c->synopsis);
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
               "  --alias          register a certificate that is registered already under\n"
               "                   another name of the account (refused otherwise)\n"
               "  --strict         refuse an expired or not yet valid certificate (the\n"
               "                   default for private certificates; public ones are\n"
               "                   accepted with a warning)\n"
               "  --allow-expired  register an expired or not yet valid private certificate\n"
               "  --json           print the registered entry as JSON\n");
  else if (c->run == cert_renew)
    fprintf(f, "\n"
               "A new certificate for the same key: the key reference comes from the entry, the\n"
               "new certificate must carry the same public key, and the entry keeps its id,\n"
               "CKA_ID and PKCS#11 handles. Partner (public) certificates renew the same way.\n");
  else if (c->run == cert_rotate)
    fprintf(f, "\n"
               "A new certificate on a new key (created or imported with kvp11 key first). NAME\n"
               "then signs and decrypts with the new key; the previous certificate stays\n"
               "registered as NAME.retired-YYYYMMDD, retired: it decrypts messages already\n"
               "encrypted to it and never signs. kvp11 cert retire / cert remove end it.\n");
  else if (c->run == cert_retire)
    fprintf(f, "\n"
               "Retire a private certificate: it decrypts only (its private key object has\n"
               "CKA_SIGN false and is never offered for signing or TLS).\n");
  else if (c->run == cert_remove)
    fprintf(f, "\n"
               "  --yes            required for a private certificate: the entry goes, its key\n"
               "                   stays in its store (kvp11 key delete removes the key)\n");
  else if (c->run == cert_list)
    fprintf(f, "\n"
               "  --expiring DAYS  only certificates whose validity ends within DAYS days\n"
               "                   (or has ended)\n");
}

/* A clearer word than the parser's for two common mistakes: a directory, a PFX. */
const char *kvp_tool_cert_file_error(const char *file, const char *err)
{
  static char buf[2 * KVP_ERRLEN];
  struct stat st;
  FILE *f;
  if (stat(file, &st) == 0 && S_ISDIR(st.st_mode)) {
    snprintf(buf, sizeof(buf), "%s: is a directory, not a certificate file", file);
    return buf;
  }
  if ((f = fopen(file, "rb")) != NULL) {
    PKCS12 *p12 = d2i_PKCS12_fp(f, NULL);
    fclose(f);
    if (p12) {
      PKCS12_free(p12);
      snprintf(buf, sizeof(buf), "%s: a PKCS#12 (PFX) file, not a certificate: import its key and "
               "certificate with kvp11 key import --pfx", file);
      return buf;
    }
  }
  ERR_clear_error();
  return err;
}

static int duplicate(const kvp_tool *t, const char *account, const char *name)
{
  return kvp_tool_fail(t, KVP_EXIT_ERROR,
                       "account '%s' has a certificate named '%s' already (--replace replaces it)",
                       account, name);
}

/* The command line of cert add: usage errors need no configuration. -1: go on. */
static int add_usage(kvp_tool *t, const cert_args *a, int priv, int from_row)
{
  const char *type = a->v[O_TYPE];
  const int has_store = a->v[O_HSM] || a->v[O_VAULT];
  const int rc = KVP_EXIT_USAGE;
  if (!a->v[O_NAME] || !type || !a->v[O_CERT])
    return kvp_tool_fail(t, rc, "--name, --type and --cert are required (see kvp11 cert add --help)");
  if (!kvp_tool_name_ok(a->v[O_NAME]))
    return kvp_tool_fail(t, rc, "bad --name '%s': 1 to 255 bytes, no control characters",
                         a->v[O_NAME]);
  if (!priv && strcmp(type, "public") != 0)
    return kvp_tool_fail(t, rc, "bad --type '%s': public or private", type);
  if (!priv && (has_store || a->v[O_KEY]))
    return kvp_tool_fail(t, rc, "a public certificate takes no --hsm, --vault or --key");
  if (priv && !from_row && (!has_store || (a->v[O_HSM] && a->v[O_VAULT]) || !a->v[O_KEY]))
    return kvp_tool_fail(t, rc, "a private certificate needs --key and exactly one of --hsm or --vault");
  if (a->v[O_STRICT] && a->v[O_ALLOW_EXPIRED])
    return kvp_tool_fail(t, rc, "--strict and --allow-expired exclude each other");
  return -1;
}

/* The certificate file into rec, with its validity (warn: the warning to print
 * on success) and public key. Prints the error. */
static int add_load(kvp_tool *t, cert_args *a, int priv, kvp_cert_rec *rec, char warn[KVP_ERRLEN])
{
  const char *file = a->v[O_CERT];
  unsigned char *der = NULL;
  size_t der_len = 0;
  char err[KVP_ERRLEN] = "";
  int rc = KVP_EXIT_ERROR;

  if (kvp_cert_load_file(file, &der, &der_len, err, sizeof(err)) != KVP_OK) {
    kvp_tool_fail(t, rc, "%s", kvp_tool_cert_file_error(file, err));
    goto out;
  }
  if (kvp_cert_fill_rec(der, der_len, rec, err, sizeof(err)) != KVP_OK) {
    kvp_tool_fail(t, rc, "%s: %s", file, err);
    goto out;
  }
  if (kvp_tool_validity(rec, file, warn, KVP_ERRLEN) == NULL)
    warn[0] = '\0';
  if (warn[0] && (a->v[O_STRICT] || (priv && !a->v[O_ALLOW_EXPIRED]))) {
    kvp_tool_fail(t, rc, "%s (%s)", warn,
                  a->v[O_STRICT] ? "refused with --strict"
                                 : "refused for a private certificate; --allow-expired registers "
                                   "it anyway");
    goto out;
  }
  if (kvp_tool_rec_spki(rec) != 0) {
    kvp_tool_fail(t, rc, "%s: unsupported public key (RSA of 1024 to 8192 bits, or EC on P-256, "
                  "P-384, P-521, secp256k1)", file);
    goto out;
  }
  rec->account = strdup(a->account);
  rec->name = strdup(a->v[O_NAME]);
  rec->resource_group = kvp_strdup0(a->v[O_RG]);
  rec->type = priv ? KVP_CERT_PRIVATE : KVP_CERT_PUBLIC;
  if (!rec->account || !rec->name || (a->v[O_RG] && !rec->resource_group)) {
    kvp_tool_fail(t, rc, "out of memory");
    goto out;
  }
  rc = KVP_EXIT_OK;
out:
  free(der);
  return rc;
}

/* The same certificate under a second name (unless --alias); a partner
 * certificate carrying one of our keys. Prints the error. */
static int add_refusals(kvp_tool *t, const cert_args *a, const kvp_cert_rec *rec, int replacing)
{
  if (!a->v[O_ALIAS] &&
      kvp_tool_no_duplicate(t, rec, replacing ? rec->name : NULL) != KVP_EXIT_OK)
    return KVP_EXIT_ERROR;
  if (rec->type == KVP_CERT_PRIVATE)
    return KVP_EXIT_OK;
  EVP_PKEY *pub = kvp_tool_rec_pubkey(rec);
  int rc = pub ? kvp_tool_not_our_key(t, a->v[O_CERT], pub, a->account,
                                      replacing ? rec->name : NULL)
               : KVP_EXIT_OK;
  EVP_PKEY_free(pub);
  return rc;
}

/* What cert add did: one line, or the entry as JSON. */
static int add_report(kvp_tool *t, const cert_args *a, const kvp_cert_rec *rec, int completes,
                      int exists)
{
  char err[KVP_ERRLEN] = "";
  if (a->v[O_JSON]) {
    kvp_cert_rec got = {0};
    int bad = kvp_registry_get(t->reg, rec->account, rec->name, &got, err, sizeof(err)) != KVP_OK ||
              kvp_tool_print_rec(stdout, &got, KVP_SHOW_JSON) != 0;
    kvp_cert_rec_clear(&got);
    return bad ? kvp_tool_fail(t, KVP_EXIT_ERROR, "cannot format the output") : KVP_EXIT_OK;
  }
  printf("%s %s certificate '%s' in account '%s'%s%s\n",
         completes ? "added the" : exists ? "replaced" : "added",
         rec->type == KVP_CERT_PRIVATE ? "private" : "public", rec->name, rec->account,
         rec->key_ref ? ", key " : "", rec->key_ref ? rec->key_ref : "");
  return KVP_EXIT_OK;
}

static int cert_add(kvp_tool *t, cert_args *a)
{
  const char *type = a->v[O_TYPE], *file = a->v[O_CERT];
  const int priv = type && strcmp(type, "private") == 0;
  kvp_cert_rec rec = {0}, old = {0};
  char err[KVP_ERRLEN] = "", warn[KVP_ERRLEN] = "";
  char *o_scheme = NULL, *o_store = NULL, *o_name = NULL;
  int rc, exists = 0, completes = 0;
  /* a private certificate without --hsm/--vault/--key: for a key registered
   * without certificate (kvp11 key create, C_GenerateKeyPair) */
  const int from_row = priv && !a->v[O_HSM] && !a->v[O_VAULT] && !a->v[O_KEY];

  if (a->v[O_CERT_DIR] != NULL) /* partner onboarding: tool/cert_bulk.c */
    return kvp_tool_cert_add_dir(t, a->v[O_CERT_DIR], type,
                                 a->v[O_NAME] || file || a->v[O_HSM] || a->v[O_VAULT] ||
                                     a->v[O_KEY] || a->v[O_RG] || a->v[O_STRICT] ||
                                     a->v[O_ALIAS] || a->v[O_ALLOW_EXPIRED] || a->v[O_JSON],
                                 a->v[O_ACCOUNT], a->v[O_REPLACE] != NULL);
  if ((rc = add_usage(t, a, priv, from_row)) >= 0)
    return rc;
  rc = KVP_EXIT_ERROR;
  if (kvp_tool_load_config(t) != KVP_EXIT_OK ||
      kvp_tool_account(t, a->v[O_ACCOUNT], &a->account) != KVP_EXIT_OK ||
      add_load(t, a, priv, &rec, warn) != KVP_EXIT_OK)
    goto out;

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
    rc = kvp_tool_fail(t, KVP_EXIT_USAGE,
                       "a private certificate needs --key and exactly one of --hsm or --vault "
                       "(they may be left out only for a key registered without certificate)");
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
  if (priv && (rc = kvp_tool_check_key(t, a->v[O_HSM] != NULL,
                                       a->v[O_HSM] ? a->v[O_HSM] : a->v[O_VAULT], a->v[O_KEY],
                                       file, &rec)) != KVP_EXIT_OK)
    goto out;
  if ((rc = add_refusals(t, a, &rec, exists && !completes)) != KVP_EXIT_OK)
    goto out;
  rc = KVP_EXIT_ERROR;
  int r = kvp_registry_add(t->reg, &rec, a->v[O_REPLACE] != NULL || completes, err, sizeof(err));
  if (r != KVP_OK) {
    if (r == KVP_EEXISTS)
      duplicate(t, a->account, rec.name);
    else
      kvp_tool_fail(t, rc, "%s", err);
    goto out;
  }
  if (warn[0])
    kvp_tool_warn(t, "%s", warn);
  rc = add_report(t, a, &rec, completes, exists);
  if (rc == KVP_EXIT_OK)
    kvp_audit_change(exists && !completes ? "cert replace" : "cert add", rec.account, rec.name,
                     rec.key_ref, old.sha256, rec.sha256);
out:
  free(o_scheme);
  free(o_store);
  free(o_name);
  kvp_cert_rec_clear(&rec);
  kvp_cert_rec_clear(&old);
  return rc;
}

/* cert list --expiring DAYS: only certificates whose validity ends before the limit. */
static int list_wanted(const kvp_list_out *o, const kvp_cert_rec *rec)
{
  return o->expiring_before == 0 || (rec->der_len > 0 && rec->not_after <= o->expiring_before);
}

static int list_measure(void *ctx, kvp_cert_rec *rec)
{
  if (list_wanted(ctx, rec))
    kvp_tool_list_measure(ctx, rec);
  return KVP_OK;
}

static int list_row(void *ctx, kvp_cert_rec *rec)
{
  if (!list_wanted(ctx, rec))
    return KVP_OK;
  return kvp_tool_list_row(ctx, rec) == 0 ? KVP_OK : KVP_ERR; /* only this gives KVP_ERR */
}

/* Streamed: the rows are never all in memory (tool/output.c). */
static int cert_list(kvp_tool *t, cert_args *a)
{
  char err[KVP_ERRLEN] = "", *end = NULL;
  kvp_list_out o;
  int r = KVP_OK;
  long days = a->v[O_EXPIRING] ? strtol(a->v[O_EXPIRING], &end, 10) : 0;

  if (a->v[O_EXPIRING] && (!*a->v[O_EXPIRING] || *end || days < 0 || days > 36500))
    return kvp_tool_fail(t, KVP_EXIT_USAGE, "bad --expiring '%s': a number of days (0 to 36500)",
                         a->v[O_EXPIRING]);
  if (kvp_tool_load_config(t) || kvp_tool_account(t, a->v[O_ACCOUNT], &a->account) ||
      kvp_tool_open_registry_ro(t))
    return KVP_EXIT_ERROR;
  kvp_tool_list_init(&o, stdout, a->v[O_JSON] != NULL);
  if (a->v[O_EXPIRING])
    o.expiring_before = (int64_t)time(NULL) + (int64_t)days * 86400;
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
  char *key_ref = rec.key_ref ? strdup(rec.key_ref) : NULL;
  int priv = rec.type == KVP_CERT_PRIVATE;
  char sha[65];
  snprintf(sha, sizeof(sha), "%s", rec.sha256);
  kvp_cert_rec_clear(&rec);
  if (rc == KVP_EXIT_OK && priv && !a->v[O_YES])
    rc = kvp_tool_fail(t, KVP_EXIT_USAGE,
                       "'%s' is a private certificate: removing it stops every application "
                       "using it, and its key %s stays in its store with no entry pointing at "
                       "it (kvp11 key delete removes the key); confirm with --yes",
                       a->operand, key_ref ? key_ref : "-");
  if (rc != KVP_EXIT_OK) {
    free(key_ref);
    return rc;
  }
  int r = kvp_registry_remove(t->reg, a->account, a->operand, err, sizeof(err));
  if (r != KVP_OK) {
    free(key_ref);
    return r == KVP_ENOTFOUND
               ? kvp_tool_fail(t, KVP_EXIT_ERROR, "account '%s' has no certificate named '%s'",
                               a->account, a->operand)
               : kvp_tool_fail(t, KVP_EXIT_ERROR, "%s", err);
  }
  kvp_audit_change("cert remove", a->account, a->operand, key_ref, sha, NULL);
  if (a->v[O_JSON]) {
    json_t *o = json_pack("{s:s, s:s, s:s, s:o}", "action", "removed", "name", a->operand,
                          "account", a->account, "key_left", key_ref ? json_string(key_ref)
                                                                     : json_null());
    rc = kvp_tool_print_json(stdout, o) == 0 ? KVP_EXIT_OK : KVP_EXIT_ERROR;
  } else if (priv) {
    printf("removed certificate '%s' from account '%s'; its key %s stays in its store (kvp11 key "
           "delete removes it)\n", a->operand, a->account, key_ref);
  } else {
    printf("removed certificate '%s' from account '%s'\n", a->operand, a->account);
  }
  free(key_ref);
  return rc;
}

static int cert_renew(kvp_tool *t, cert_args *a)
{
  if (!a->v[O_CERT])
    return kvp_tool_fail(t, KVP_EXIT_USAGE, "--cert is required (see kvp11 cert renew --help)");
  return kvp_tool_cert_renew(t, a->operand, a->v[O_ACCOUNT], a->v[O_CERT],
                             a->v[O_ALLOW_EXPIRED] != NULL, a->v[O_JSON] != NULL);
}

static int cert_rotate(kvp_tool *t, cert_args *a)
{
  if (!a->v[O_CERT] || !a->v[O_KEY] || !a->v[O_HSM] == !a->v[O_VAULT])
    return kvp_tool_fail(t, KVP_EXIT_USAGE, "--cert, --key and exactly one of --hsm or --vault "
                         "are required (see kvp11 cert rotate --help)");
  return kvp_tool_cert_rotate(t, a->operand, a->v[O_ACCOUNT], a->v[O_CERT], a->v[O_HSM] != NULL,
                              a->v[O_HSM] ? a->v[O_HSM] : a->v[O_VAULT], a->v[O_KEY],
                              a->v[O_ALLOW_EXPIRED] != NULL, a->v[O_JSON] != NULL);
}

static int cert_retire(kvp_tool *t, cert_args *a)
{
  return kvp_tool_cert_retire(t, a->operand, a->v[O_ACCOUNT], a->v[O_JSON] != NULL);
}

int kvp_tool_cert(kvp_tool *t, int argc, char **argv)
{
  if (argc > 1 && strcmp(argv[1], "selfsign") == 0) {
    t->cmd = "cert selfsign";
    return kvp_tool_cert_selfsign(t, argc - 1, argv + 1);
  }
  return kvp_tool_run_group(t, "cert", argc, argv, kvp_tool_cert_usage, cert_cmds,
                            KVP_ARRAY_SIZE(cert_cmds), cert_cmd_usage);
}
