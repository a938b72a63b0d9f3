/*
 * kvp11 key create|import|list|show|delete: keys in Key Vault and HSMs.
 *
 * Every check that can fail without the key store (command line, files,
 * password, key type, registry name) runs before the store is changed. After
 * a change of the store, a failure undoes it (the created or imported key is
 * deleted again) or names what was left behind and how to remove it.
 *
 * import is the one place where kvp11 holds private key material: the file
 * bytes, the password and the decoded key are wiped as soon as the key store
 * has its copy (OpenSSL's own buffers are wiped on free by tool/wipe.c).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/obj_mac.h>
#include <openssl/pem.h>
#include <openssl/pkcs12.h>
#include <openssl/x509.h>

#include "backend/backend.h"
#include "backend/provision.h"
#include "core/cert.h"
#include "core/p11names.h"
#include "core/status.h"
#include "core/util.h"
#include "tool.h"



typedef kvp_tool_args key_args;

static int key_create(kvp_tool *t, key_args *a);
static int key_import(kvp_tool *t, key_args *a);
static int key_list(kvp_tool *t, key_args *a);
static int key_show(kvp_tool *t, key_args *a);
static int key_delete(kvp_tool *t, key_args *a);

#define STORE_OPTS (OPT(O_VAULT) | OPT(O_HSM) | OPT(O_PINFILE))

static const kvp_tool_cmd key_cmds[] = {
    {"key create",
     STORE_OPTS | OPT(O_KEY) | OPT(O_TYPE) | OPT(O_SIZE) | OPT(O_CURVE) | OPT(O_HSMPROT) |
         OPT(O_OPS) | OPT(O_NAME) | OPT(O_ACCOUNT) | OPT(O_NOREG) | OPT(O_JSON),
     0, key_create,
     "key create (--vault V | --hsm H) --key NAME\n"
     "(--type rsa --size 2048|3072|4096 | --type ec --curve p256|p384|p521)\n"
     "[--hsm-protected] [--ops sign,decrypt] [--name CERTNAME] [--account A]\n"
     "[--no-register] [--pin-file F] [--json]", NULL},
    {"key import",
     STORE_OPTS | OPT(O_KEY) | OPT(O_PFX) | OPT(O_PASSFILE) | OPT(O_KEYFILE) | OPT(O_CERT) |
         OPT(O_NAME) | OPT(O_ACCOUNT) | OPT(O_HSMPROT) | OPT(O_OPS) | OPT(O_JSON) |
         OPT(O_ALLOW_EXPIRED),
     0, key_import,
     "key import (--vault V | --hsm H) --key NAME\n"
     "(--pfx FILE | --key-file KEY.pem --cert CERT.pem) [--pass-file F]\n"
     "[--name CERTNAME] [--account A] [--hsm-protected] [--ops sign,decrypt]\n"
     "[--allow-expired] [--pin-file F] [--json]", NULL},
    {"key list", STORE_OPTS | OPT(O_JSON), 0, key_list,
     "key list (--vault V | --hsm H) [--json] [--pin-file F]", NULL},
    {"key show", STORE_OPTS | OPT(O_KEY) | OPT(O_JSON) | OPT(O_PEM), 0, key_show,
     "key show (--vault V | --hsm H) --key NAME [--json | --pem] [--pin-file F]", NULL},
    {"key delete", STORE_OPTS | OPT(O_KEY) | OPT(O_YES) | OPT(O_JSON), 0, key_delete,
     "key delete (--vault V | --hsm H) --key NAME --yes [--pin-file F] [--json]", NULL},
};

void kvp_tool_key_usage(FILE *f)
{
  kvp_tool_cmds_usage(f, key_cmds, KVP_ARRAY_SIZE(key_cmds));
}

static void key_cmd_usage(FILE *f, const kvp_tool_cmd *c)
{
  kvp_tool_synopsis(f, "usage: kvp11 [-c FILE] ", c->cmd, c->synopsis);
  fprintf(f, "\n"
             "  --vault V | --hsm H  the configured key store ([vault V] / [hsm H])\n");
  if (c->allowed & OPT(O_KEY))
    fprintf(f, "  --key NAME           the key's name in the store (HSM: CKA_LABEL)\n");
  fprintf(f, "  --pin-file F         HSM user PIN when [hsm H] has no pin_file/pin_env\n"
             "                       (else $KVP11_PIN); the file must be private (0600)\n"
             "  --json               print the result as JSON\n");
  if (c->run == key_create)
    fprintf(f, "  --hsm-protected      Key Vault: RSA-HSM / EC-HSM key\n"
               "  --ops sign,decrypt   allowed operations (default: sign,decrypt for RSA,\n"
               "                       sign for EC)\n"
               "  --name CERTNAME      registry name (default: the key name); the key is\n"
               "                       registered as a key pair without a certificate until\n"
               "                       'kvp11 cert add' with the same name adds one\n"
               "  --no-register        only create the key\n");
  if (c->run == key_import)
    fprintf(f, "  --pfx FILE           PKCS#12 with the private key and its certificate\n"
               "  --key-file, --cert   PEM private key (may be encrypted) and its certificate\n"
               "  --pass-file F        password file (0600); else $KVP11_PFX_PASS; else empty\n"
               "  --name CERTNAME      registry name of the certificate (default: the key name)\n"
               "  --allow-expired      import a key whose certificate expired or is not yet\n"
               "                       valid (refused otherwise)\n"
               "The certificate is registered as a private certificate pointing at the key.\n"
               "If that fails, the imported key is deleted again.\n");
  if (c->run == key_delete)
    fprintf(f, "  --yes                required: deleting a key is destructive. Refused while a\n"
               "                       registered certificate points at the key.\n");
}

/* ---- the key store ------------------------------------------------------- */

/* A configured store (store.c) and the key reference built from --key. */
typedef struct store {
  kvp_tool_store ts;
  int is_hsm;
  const char *kind; /* "vault" / "hsm" */
  const char *name; /* the store's name */
  char *ref;        /* "keyvault:V/KEY" / "hsm:H/KEY" (when --key given) */
  kvp_backend *be;
} store;

static void store_close(store *s)
{
  kvp_tool_store_close(&s->ts);
  free(s->ref);
  memset(s, 0, sizeof(*s));
}

/* Exactly one of --vault / --hsm (usage), and --key when need_key. */
static int store_args(kvp_tool *t, const key_args *a, int need_key)
{
  if ((a->v[O_VAULT] != NULL) == (a->v[O_HSM] != NULL))
    return kvp_tool_fail(t, KVP_EXIT_USAGE,
                         "exactly one of --vault or --hsm is required (see kvp11 %s --help)",
                         t->cmd);
  if (need_key && !a->v[O_KEY])
    return kvp_tool_fail(t, KVP_EXIT_USAGE, "--key is required (see kvp11 %s --help)", t->cmd);
  if (a->v[O_PINFILE] && !a->v[O_HSM])
    return kvp_tool_fail(t, KVP_EXIT_USAGE, "--pin-file applies to --hsm only");
  return KVP_EXIT_OK;
}

/* Resolve the store from the configuration (no I/O) and build the key reference. */
static int store_find(kvp_tool *t, const key_args *a, store *s)
{
  char err[KVP_ERRLEN] = "";
  s->is_hsm = a->v[O_HSM] != NULL;
  s->kind = s->is_hsm ? "hsm" : "vault";
  s->name = s->is_hsm ? a->v[O_HSM] : a->v[O_VAULT];
  if (a->v[O_KEY]) {
    char *scheme = NULL, *pstore = NULL, *pname = NULL;
    size_t n = strlen("keyvault:/") + strlen(s->name) + strlen(a->v[O_KEY]) + 1;
    if (!(s->ref = malloc(n)))
      return kvp_tool_fail(t, KVP_EXIT_ERROR, "out of memory");
    snprintf(s->ref, n, "%s:%s/%s", s->is_hsm ? "hsm" : "keyvault", s->name, a->v[O_KEY]);
    int r = kvp_keyref_parse(s->ref, &scheme, &pstore, &pname, err, sizeof(err));
    int bad = r == KVP_OK && (strcmp(pstore, s->name) != 0 || strcmp(pname, a->v[O_KEY]) != 0 ||
                              strchr(pname, '/') != NULL);
    free(scheme);
    free(pstore);
    free(pname);
    if (r != KVP_OK)
      return kvp_tool_fail(t, KVP_EXIT_USAGE, "%s", err);
    if (bad)
      return kvp_tool_fail(t, KVP_EXIT_USAGE, "bad --key '%s' (a key name, no '/')", a->v[O_KEY]);
  }
  return kvp_tool_store_find(t, s->is_hsm, s->name, &s->ts);
}

/* Create the backend and log in when the tool has to (store.c). */
static int store_open(kvp_tool *t, const key_args *a, store *s)
{
  int rc = kvp_tool_store_open(t, &s->ts, a->v[O_PINFILE], 1);
  s->be = s->ts.be;
  return rc;
}

/* A provisioning op the backend does not have (yet). */
static int unsupported(kvp_tool *t, const store *s, const char *what)
{
  return kvp_tool_fail(t, KVP_EXIT_ERROR, "%s '%s': this key store does not support %s", s->kind,
                       s->name, what);
}

/* A failure of the store, in one line. */
static int store_fail(kvp_tool *t, const store *s, const char *what, CK_RV rv)
{
  return kvp_tool_store_fail(t, &s->ts, what, rv);
}

/* The outcome of a backend call on key name: KVP_EXIT_OK, else the error is printed. */
static int key_op_rv(kvp_tool *t, const store *s, const char *name, const char *doing, CK_RV rv)
{
  if (rv == CKR_KEY_HANDLE_INVALID)
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "%s '%s' has no key '%s'", s->kind, s->name, name);
  if (rv != CKR_OK)
    return store_fail(t, s, doing, rv);
  return KVP_EXIT_OK;
}

/*
 * KVP_EXIT_OK when the store has no key of this name; else the error (a key
 * that exists, or a failure) is printed. Without key_info, open_key answers.
 */
static int store_name_free(kvp_tool *t, const store *s, const char *name)
{
  CK_RV rv;
  if (s->be->ops->key_info) {
    kvp_key_info info = {0};
    rv = s->be->ops->key_info(s->be, name, &info);
    kvp_key_info_clear(&info);
  } else {
    kvp_key *k = NULL;
    rv = kvp_backend_open_key(s->be, name, NULL, &k);
    if (k)
      s->be->ops->close_key(s->be, k);
  }
  if (rv == CKR_KEY_HANDLE_INVALID) {
    kvp_status_clear(); /* the answer hoped for: its "not found" is no reason for what follows */
    return KVP_EXIT_OK;
  }
  if (rv == CKR_OK)
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "%s '%s' has a key named '%s' already (it is not "
                         "replaced)", s->kind, s->name, name);
  return store_fail(t, s, "reading the key", rv);
}

/* Does ref (a registered key reference) point at key name of store s? */
static int ref_is(const store *s, const char *ref, const char *name)
{
  char *scheme = NULL, *pstore = NULL, *pname = NULL;
  char err[KVP_ERRLEN];
  int same = 0;
  if (ref && kvp_keyref_parse(ref, &scheme, &pstore, &pname, err, sizeof(err)) == KVP_OK) {
    size_t n = strlen(name);
    if (s->is_hsm)
      same = strcmp(scheme, "hsm") == 0 && strcmp(pstore, s->name) == 0 && strcmp(pname, name) == 0;
    else /* Key Vault names are case-insensitive; a pinned version follows a '/' */
      same = strcmp(scheme, "keyvault") == 0 && strcmp(pstore, s->name) == 0 &&
             strncasecmp(pname, name, n) == 0 && (pname[n] == '\0' || pname[n] == '/');
  }
  free(scheme);
  free(pstore);
  free(pname);
  return same;
}

/* "account/name" of every registered certificate pointing at the key, as a JSON array. */
static json_t *users_of(const store *s, const kvp_cert_rec *recs, size_t n, const char *name)
{
  json_t *arr = json_array();
  for (size_t i = 0; arr && i < n; i++) {
    if (!ref_is(s, recs[i].key_ref, name))
      continue;
    size_t len = strlen(recs[i].account) + strlen(recs[i].name) + 2;
    char *buf = malloc(len);
    if (!buf || (snprintf(buf, len, "%s/%s", recs[i].account, recs[i].name),
                 json_array_append_new(arr, json_string(buf)) != 0)) {
      free(buf);
      json_decref(arr);
      return NULL;
    }
    free(buf);
  }
  return arr;
}

static int dump(json_t *j);

/* ---- option values ------------------------------------------------------- */

static int parse_ops(kvp_tool *t, const char *s, unsigned *ops)
{
  *ops = 0;
  if (!s)
    return KVP_EXIT_OK;
  const char *p = s;
  while (*p) {
    size_t n = strcspn(p, ",");
    if (n == 4 && strncmp(p, "sign", 4) == 0)
      *ops |= KVP_KEYOP_SIGN;
    else if (n == 7 && strncmp(p, "decrypt", 7) == 0)
      *ops |= KVP_KEYOP_DECRYPT;
    else
      return kvp_tool_fail(t, KVP_EXIT_USAGE, "bad --ops '%s': sign, decrypt or sign,decrypt", s);
    p += n;
    if (*p == ',')
      p++;
  }
  if (*ops == 0)
    return kvp_tool_fail(t, KVP_EXIT_USAGE, "bad --ops '%s': sign, decrypt or sign,decrypt", s);
  return KVP_EXIT_OK;
}

static const char *ops_text(unsigned ops)
{
  switch (ops & (KVP_KEYOP_SIGN | KVP_KEYOP_DECRYPT)) {
  case KVP_KEYOP_SIGN:
    return "sign";
  case KVP_KEYOP_DECRYPT:
    return "decrypt";
  case KVP_KEYOP_SIGN | KVP_KEYOP_DECRYPT:
    return "sign,decrypt";
  default:
    return "-";
  }
}

/* "RSA 2048" / "EC P-256" */
static void type_text(kvp_key_type type, unsigned bits, int curve_nid, char out[32])
{
  if (type == KVP_KEY_EC) {
    const char *c = kvp_curve_name(curve_nid);
    snprintf(out, 32, "EC %s", c ? c : "?");
  } else if (type == KVP_KEY_RSA) {
    snprintf(out, 32, "RSA %u", bits);
  } else {
    snprintf(out, 32, "?");
  }
}

/*
 * The result of create / import / delete: "field: value" lines (the first
 * one "created key REF"), or with --json one object ("action", "key_ref",
 * then the fields; NULL values are left out in text and null in JSON).
 */
static int print_result(const key_args *a, const char *f[][2], size_t n)
{
  if (!a->v[O_JSON]) {
    printf("%s %s\n", f[0][0], f[0][1]);
    for (size_t i = 1; i < n; i++)
      if (f[i][1] || strcmp(f[i][0], "version") == 0)
        printf("%s: %s\n", f[i][0], f[i][1] ? f[i][1] : "-");
    return 0;
  }
  json_t *o = json_object();
  char action[32];
  snprintf(action, sizeof(action), "%.*s", (int)strcspn(f[0][0], " "), f[0][0]);
  int bad = !o || json_object_set_new(o, "action", json_string(action)) ||
            json_object_set_new(o, "key_ref", json_string(f[0][1]));
  for (size_t i = 1; !bad && i < n; i++)
    bad = json_object_set_new(o, f[i][0], f[i][1] ? json_string(f[i][1]) : json_null());
  if (bad) {
    json_decref(o);
    return -1;
  }
  return dump(o);
}

/* ---- key create ---------------------------------------------------------- */

/* The registry name is free in the account (1), taken (0, printed), error (-1, printed). */
static int reg_name_free(kvp_tool *t, const char *account, const char *name)
{
  CK_RV rv = kvp_prov_name_free(t->reg, account, name);
  if (rv == CKR_OK)
    return 1;
  if (rv == CKR_ATTRIBUTE_VALUE_INVALID) {
    kvp_tool_fail(t, KVP_EXIT_ERROR,
                  "account '%s' has a certificate named '%s' already (choose another --name)",
                  account, name);
    return 0;
  }
  kvp_tool_fail(t, KVP_EXIT_ERROR, "%s", kvp_tool_reason(t, rv));
  return -1;
}

/*
 * After a failed registration: delete the key just put into the store, and
 * print the one error line (why, and whether the key is gone).
 */
static int undo_key(kvp_tool *t, const store *s, const char *key, const char *why)
{
  CK_RV rv = kvp_prov_undo(s->be, key);
  kvp_status_clear(); /* why is the registration's reason; the delete's is asked below */
  if (rv == CKR_OK)
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "%s; the new key %s was deleted again%s", why, s->ref,
                         s->is_hsm ? "" : " (Key Vault keeps it soft-deleted until it is purged)");
  return kvp_tool_fail(t, KVP_EXIT_ERROR,
                       "%s; the new key %s could not be deleted (%s) and is left behind: remove it "
                       "with 'kvp11 key delete --%s %s --key %s --yes'",
                       why, s->ref, kvp_tool_reason(t, rv), s->kind, s->name, key);
}

/* The key create command line: type, size or curve, ops, names. -1: go on. */
static int parse_spec(kvp_tool *t, const key_args *a, kvp_key_spec *spec)
{
  const char *type = a->v[O_TYPE];
  const char *regname = a->v[O_NAME] ? a->v[O_NAME] : a->v[O_KEY];
  const int rc = KVP_EXIT_USAGE;
  if (!type)
    return kvp_tool_fail(t, rc, "--type rsa or --type ec is required (see kvp11 key create --help)");
  if (strcmp(type, "rsa") == 0) {
    char *end = NULL;
    unsigned long bits = a->v[O_SIZE] ? strtoul(a->v[O_SIZE], &end, 10) : 0;
    if (a->v[O_CURVE])
      return kvp_tool_fail(t, rc, "--curve applies to --type ec only");
    if (!a->v[O_SIZE] || *end != '\0' || (bits != 2048 && bits != 3072 && bits != 4096))
      return kvp_tool_fail(t, rc, "--type rsa needs --size 2048, 3072 or 4096");
    spec->type = KVP_KEY_RSA;
    spec->bits = (unsigned)bits;
  } else if (strcmp(type, "ec") == 0) {
    int nid = a->v[O_CURVE] ? kvp_curve_nid(a->v[O_CURVE]) : NID_undef;
    if (a->v[O_SIZE])
      return kvp_tool_fail(t, rc, "--size applies to --type rsa only");
    if (nid != NID_X9_62_prime256v1 && nid != NID_secp384r1 && nid != NID_secp521r1)
      return kvp_tool_fail(t, rc, "--type ec needs --curve p256, p384 or p521");
    spec->type = KVP_KEY_EC;
    spec->curve_nid = nid;
    spec->bits = nid == NID_X9_62_prime256v1 ? 256 : nid == NID_secp384r1 ? 384 : 521;
  } else {
    return kvp_tool_fail(t, rc, "bad --type '%s': rsa or ec", type);
  }
  if (parse_ops(t, a->v[O_OPS], &spec->ops) != KVP_EXIT_OK)
    return rc;
  if (spec->type == KVP_KEY_EC && (spec->ops & KVP_KEYOP_DECRYPT))
    return kvp_tool_fail(t, rc, "an EC key cannot decrypt: --ops sign");
  if (a->v[O_NOREG] && (a->v[O_NAME] || a->v[O_ACCOUNT]))
    return kvp_tool_fail(t, rc, "--no-register takes no --name or --account");
  if (!kvp_tool_name_ok(regname))
    return kvp_tool_fail(t, rc, "bad --name '%s': 1 to 255 bytes, no control characters", regname);
  return -1;
}

static int key_create(kvp_tool *t, key_args *a)
{
  const char *keyname = a->v[O_KEY];
  kvp_key_spec spec = {0};
  store s = {0};
  kvp_key *key = NULL;
  kvp_cert_rec rec = {0};
  char fp[72] = "", what[32];
  const char *regname = a->v[O_NAME] ? a->v[O_NAME] : keyname;
  const int reg = a->v[O_NOREG] == NULL;
  int rc;

  if ((rc = store_args(t, a, 1)) != KVP_EXIT_OK)
    return rc;
  if ((rc = parse_spec(t, a, &spec)) >= 0)
    goto out;
  spec.hsm_protected = a->v[O_HSMPROT] != NULL;

  rc = KVP_EXIT_ERROR;
  if (kvp_tool_load_config(t) != KVP_EXIT_OK ||
      (reg && kvp_tool_account(t, a->v[O_ACCOUNT], &a->account) != KVP_EXIT_OK))
    goto out;
  if ((rc = store_find(t, a, &s)) != KVP_EXIT_OK)
    goto out;
  rc = KVP_EXIT_ERROR;
  /* A taken registry name fails before the key store is asked. */
  if (reg &&
      (kvp_tool_open_registry(t) != KVP_EXIT_OK || reg_name_free(t, a->account, regname) != 1))
    goto out;
  if (store_open(t, a, &s) != KVP_EXIT_OK)
    goto out;
  if (!s.be->ops->create_key) {
    unsupported(t, &s, "creating keys");
    goto out;
  }
  if (store_name_free(t, &s, keyname) != KVP_EXIT_OK)
    goto out;
  CK_RV rv = s.be->ops->create_key(s.be, keyname, &spec, &key);
  if (rv == CKR_ATTRIBUTE_VALUE_INVALID) {
    kvp_tool_fail(t, rc, "%s '%s' refused to create key '%s': %s", s.kind, s.name, keyname,
                  kvp_status_reason() ? kvp_status_reason()
                                      : "a key of that name exists, or the key type is not allowed");
    goto out;
  }
  if (rv != CKR_OK || !key || !key->pub) {
    store_fail(t, &s, "creating the key", rv != CKR_OK ? rv : CKR_GENERAL_ERROR);
    goto out;
  }
  kvp_pubkey_fingerprint(key->pub, fp);

  if (reg) {
    char why[KVP_STATUS_MSGLEN];
    rv = kvp_prov_key_row(key, a->account, regname, s.ref, NULL, 0, &rec);
    if (rv == CKR_OK)
      rv = kvp_prov_register(t->reg, &rec, NULL);
    if (rv != CKR_OK) {
      snprintf(why, sizeof(why), "%s", kvp_tool_reason(t, rv));
      rc = undo_key(t, &s, keyname, why);
      goto out;
    }
  }
  type_text(key->type, key->bits, key->curve_nid, what);
  kvp_audit_change("key create", a->account, NULL, s.ref, NULL, NULL);
  {
    char regd[600] = "";
    if (reg)
      snprintf(regd, sizeof(regd), "'%s' in account '%s' (a key pair; no certificate yet)",
               regname, a->account);
    const char *ops = ops_text((key->can_sign ? KVP_KEYOP_SIGN : 0) |
                               (key->can_decrypt ? KVP_KEYOP_DECRYPT : 0));
    const char *f[][2] = {{"created key", s.ref}, {"type", what},   {"version", key->version},
                          {"ops", ops},           {"spki", fp},     {"registered", reg ? regd : NULL}};
    rc = print_result(a, f, KVP_ARRAY_SIZE(f)) ? kvp_tool_fail(t, KVP_EXIT_ERROR, "cannot format "
                                                               "the output")
                                               : KVP_EXIT_OK;
  }
out:
  if (key)
    s.be->ops->close_key(s.be, key);
  kvp_cert_rec_clear(&rec);
  store_close(&s);
  return rc;
}

/* ---- key import ---------------------------------------------------------- */

/* A whole file into a malloc'd buffer, without stdio (whose buffers would keep
 * a copy of the bytes). Wipe and free with kvp_wipe + free. */
static int read_file(const char *path, unsigned char **out, size_t *len, char *err, size_t errlen)
{
  struct stat st;
  unsigned char *buf = NULL;
  size_t n = 0;
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
  if (fd < 0)
    return kvp_seterr(err, errlen, KVP_EIO, "%s: %s", path, strerror(errno));
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > 16 * 1024 * 1024) {
    close(fd);
    return kvp_seterr(err, errlen, KVP_EINVAL, "%s: not a regular file of at most 16 MiB", path);
  }
  if (!(buf = malloc((size_t)st.st_size + 1))) {
    close(fd);
    return kvp_seterr(err, errlen, KVP_ENOMEM, "out of memory");
  }
  while (n < (size_t)st.st_size) {
    ssize_t r = read(fd, buf + n, (size_t)st.st_size - n);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      break;
    n += (size_t)r;
  }
  close(fd);
  if (n != (size_t)st.st_size) {
    kvp_wipe(buf, (size_t)st.st_size + 1);
    free(buf);
    return kvp_seterr(err, errlen, KVP_EIO, "%s: short read", path);
  }
  buf[n] = 0;
  *out = buf;
  *len = n;
  return KVP_OK;
}

static int pem_pass(char *buf, int size, int rwflag, void *u)
{
  const char *pass = u;
  size_t n = pass ? strlen(pass) : 0;
  (void)rwflag;
  if (size <= 0 || n > (size_t)size)
    return -1;
  memcpy(buf, pass, n);
  return (int)n;
}

/* What import reads: the private key and its certificate. */
typedef struct import_src {
  EVP_PKEY *pkey;
  unsigned char *der; /* the certificate */
  size_t der_len;
} import_src;

/* Read --pfx, or --key-file + --cert; prints the error. */
static int read_source(kvp_tool *t, const key_args *a, const char *pass, import_src *src)
{
  char err[KVP_ERRLEN] = "";
  unsigned char *buf = NULL;
  size_t len = 0;
  BIO *bio = NULL;
  PKCS12 *p12 = NULL;
  X509 *x = NULL;
  STACK_OF(X509) *ca = NULL;
  int rc = KVP_EXIT_ERROR;
  const char *file = a->v[O_PFX] ? a->v[O_PFX] : a->v[O_KEYFILE];

  if (read_file(file, &buf, &len, err, sizeof(err)) != KVP_OK) {
    kvp_tool_fail(t, rc, "%s", err);
    goto out;
  }
  if (!(bio = BIO_new_mem_buf(buf, (int)len))) {
    kvp_tool_fail(t, rc, "out of memory");
    goto out;
  }
  if (a->v[O_PFX]) {
    if (!(p12 = d2i_PKCS12_bio(bio, NULL)) || !PKCS12_parse(p12, pass, &src->pkey, &x, &ca)) {
      kvp_tool_fail(t, rc, "%s: wrong password, or not a PKCS#12 file", file);
      goto out;
    }
    if (!src->pkey) {
      kvp_tool_fail(t, rc, "%s: the PKCS#12 file holds no private key", file);
      goto out;
    }
    if (!x) {
      kvp_tool_fail(t, rc, "%s: the PKCS#12 file holds no certificate for its private key", file);
      goto out;
    }
    unsigned char *d = NULL;
    int dl = i2d_X509(x, &d);
    if (dl <= 0 || !(src->der = malloc((size_t)dl))) {
      OPENSSL_free(d);
      kvp_tool_fail(t, rc, "%s: cannot encode the certificate", file);
      goto out;
    }
    memcpy(src->der, d, (size_t)dl);
    src->der_len = (size_t)dl;
    OPENSSL_free(d);
  } else {
    src->pkey = PEM_read_bio_PrivateKey(bio, NULL, pem_pass, (void *)pass);
    if (!src->pkey) {
      kvp_tool_fail(t, rc, "%s: not a PEM private key, or a wrong password", file);
      goto out;
    }
    if (kvp_cert_load_file(a->v[O_CERT], &src->der, &src->der_len, err, sizeof(err)) != KVP_OK) {
      kvp_tool_fail(t, rc, "%s", err);
      goto out;
    }
  }
  rc = KVP_EXIT_OK;
out:
  ERR_clear_error();
  BIO_free(bio);
  PKCS12_free(p12);
  X509_free(x);
  sk_X509_pop_free(ca, X509_free);
  if (buf) {
    kvp_wipe(buf, len + 1);
    free(buf);
  }
  return rc;
}

/* The key (pub) is in the store as key name already: the one error line. */
static int key_present(kvp_tool *t, const store *s, EVP_PKEY *pub, const char *name,
                       const char *where)
{
  char fp[72] = "?";
  kvp_pubkey_fingerprint(pub, fp);
  return kvp_tool_fail(t, KVP_EXIT_ERROR,
                       "this key (%s) is in %s '%s' already, as key '%s'%s; register its "
                       "certificate with kvp11 cert add --%s %s --key %s",
                       fp, s->kind, s->name, name, where, s->kind, s->name, name);
}

/*
 * The key being imported must not be in the store already under another
 * name: the same public key twice would be two keys for one certificate.
 * The registry's entries of this store are compared first; an HSM's keys are
 * then listed (one local search). A vault is not listed: that costs one
 * request per key. Prints the error naming the existing key.
 */
static int key_not_present(kvp_tool *t, const store *s, EVP_PKEY *pub)
{
  kvp_cert_rec *recs = NULL;
  kvp_key_info *infos = NULL;
  size_t n = 0, ni = 0;
  char err[KVP_ERRLEN] = "";
  int rc = KVP_EXIT_OK;
  if (kvp_registry_list(t->reg, NULL, &recs, &n, err, sizeof(err)) != KVP_OK)
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "%s", err);
  for (size_t i = 0; i < n && rc == KVP_EXIT_OK; i++) {
    char *scheme = NULL, *pstore = NULL, *pname = NULL;
    if (recs[i].type != KVP_CERT_PRIVATE ||
        kvp_keyref_parse(recs[i].key_ref, &scheme, &pstore, &pname, err, sizeof(err)) != KVP_OK)
      continue;
    EVP_PKEY *pk = NULL;
    if (strcmp(scheme, s->is_hsm ? "hsm" : "keyvault") == 0 && strcmp(pstore, s->name) == 0 &&
        (pk = kvp_tool_rec_pubkey(&recs[i])) != NULL && kvp_pubkey_equal(pk, pub)) {
      char where[600];
      snprintf(where, sizeof(where), " (registered as '%s' in account '%s')", recs[i].name,
               recs[i].account);
      pname[strcspn(pname, "/")] = '\0';
      rc = key_present(t, s, pub, pname, where);
    }
    EVP_PKEY_free(pk);
    free(scheme);
    free(pstore);
    free(pname);
  }
  kvp_cert_rec_free_array(recs, n);
  if (rc != KVP_EXIT_OK || !s->is_hsm || !s->be->ops->list_keys)
    return rc;
  CK_RV rv = s->be->ops->list_keys(s->be, &infos, &ni);
  if (rv != CKR_OK)
    return kvp_tool_store_fail(t, &s->ts, "listing the keys (to look for this key)", rv);
  for (size_t i = 0; i < ni && rc == KVP_EXIT_OK; i++)
    if (infos[i].pub && kvp_pubkey_equal(infos[i].pub, pub))
      rc = key_present(t, s, pub, infos[i].name ? infos[i].name : "?", "");
  kvp_key_info_free_array(infos, ni);
  return rc;
}

/* RSA 2048/3072/4096 or EC P-256/384/521; prints the error. */
static int check_key_type(kvp_tool *t, const char *file, EVP_PKEY *pkey, kvp_spki *sp)
{
  const char *tn = EVP_PKEY_get0_type_name(pkey);
  int base = EVP_PKEY_get_base_id(pkey);
  if ((base != EVP_PKEY_RSA && base != EVP_PKEY_EC) || kvp_spki_from_pkey(pkey, sp) != KVP_OK)
    return kvp_tool_fail(t, KVP_EXIT_ERROR,
                         "%s: the private key is %s: only RSA (2048, 3072, 4096 bits) and EC "
                         "(P-256, P-384, P-521) keys can be imported",
                         file, tn ? tn : "of an unknown type");
  if (sp->type == KVP_KEY_RSA && sp->bits != 2048 && sp->bits != 3072 && sp->bits != 4096)
    return kvp_tool_fail(t, KVP_EXIT_ERROR,
                         "%s: the private key is RSA %u: only RSA keys of 2048, 3072 or 4096 bits "
                         "can be imported",
                         file, sp->bits);
  if (sp->type == KVP_KEY_EC && sp->curve_nid != NID_X9_62_prime256v1 &&
      sp->curve_nid != NID_secp384r1 && sp->curve_nid != NID_secp521r1) {
    const char *c = kvp_curve_name(sp->curve_nid);
    return kvp_tool_fail(t, KVP_EXIT_ERROR,
                         "%s: the private key is on curve %s: only P-256, P-384 and P-521 can be "
                         "imported",
                         file, c ? c : OBJ_nid2sn(sp->curve_nid));
  }
  return KVP_EXIT_OK;
}

/* The PFX / PEM password: --pass-file, else $KVP11_PFX_PASS (wiped), else empty. */
static int read_pass(kvp_tool *t, const key_args *a, char **pass, size_t *len)
{
  char err[KVP_ERRLEN] = "";
  if (a->v[O_PASSFILE]) {
    if (kvp_secret_read_file(a->v[O_PASSFILE], pass, len, err, sizeof(err)) != KVP_OK)
      return kvp_tool_fail(t, KVP_EXIT_ERROR, "%s", err);
    return KVP_EXIT_OK;
  }
  char *env = getenv("KVP11_PFX_PASS");
  *pass = strdup(env ? env : "");
  kvp_tool_env_wipe("KVP11_PFX_PASS", env);
  if (!*pass)
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "out of memory");
  *len = strlen(*pass);
  return KVP_EXIT_OK;
}

/*
 * The key and certificate read: a supported key type, the certificate's
 * public key is the private key's, the certificate valid (an expired one is
 * refused unless --allow-expired: it would be a private certificate); fills
 * rec (but key_ref) and *x. Prints the error.
 */
static int import_rec(kvp_tool *t, const key_args *a, const import_src *src, kvp_spki *sp,
                      const kvp_key_spec *spec, X509 **x, kvp_cert_rec *rec, char warn[KVP_ERRLEN])
{
  const char *file = a->v[O_PFX] ? a->v[O_PFX] : a->v[O_KEYFILE];
  const char *certfile = a->v[O_PFX] ? a->v[O_PFX] : a->v[O_CERT];
  const char *regname = a->v[O_NAME] ? a->v[O_NAME] : a->v[O_KEY];
  const unsigned char *p = src->der;
  char err[KVP_ERRLEN] = "";
  const int rc = KVP_EXIT_ERROR;

  if (check_key_type(t, file, src->pkey, sp) != KVP_EXIT_OK)
    return rc;
  if (sp->type == KVP_KEY_EC && (spec->ops & KVP_KEYOP_DECRYPT))
    return kvp_tool_fail(t, KVP_EXIT_USAGE, "an EC key cannot decrypt: --ops sign");
  EVP_PKEY *cpub = (*x = d2i_X509(NULL, &p, (long)src->der_len)) ? X509_get0_pubkey(*x) : NULL;
  if (!cpub)
    return kvp_tool_fail(t, rc, "%s: cannot read the certificate's public key", certfile);
  if (!kvp_pubkey_equal(cpub, src->pkey)) {
    char fc[72] = "?", fk[72] = "?";
    kvp_pubkey_fingerprint(cpub, fc);
    kvp_pubkey_fingerprint(src->pkey, fk);
    return kvp_tool_fail(t, rc, "%s: the certificate's public key (%s) is not the private key's (%s)",
                         certfile, fc, fk);
  }
  if (kvp_cert_fill_rec(src->der, src->der_len, rec, err, sizeof(err)) != KVP_OK)
    return kvp_tool_fail(t, rc, "%s: %s", certfile, err);
  if (kvp_tool_validity(rec, certfile, warn, KVP_ERRLEN) == NULL)
    warn[0] = '\0';
  else if (!a->v[O_ALLOW_EXPIRED])
    return kvp_tool_fail(t, rc, "%s (refused for a private certificate; --allow-expired imports "
                         "it anyway)", warn);
  rec->account = strdup(a->account);
  rec->name = strdup(regname);
  rec->type = KVP_CERT_PRIVATE;
  if (sp->der_len > 0 && (rec->spki = malloc((size_t)sp->der_len)) != NULL) {
    memcpy(rec->spki, sp->der, (size_t)sp->der_len);
    rec->spki_len = (size_t)sp->der_len;
  }
  if (!rec->account || !rec->name || !rec->spki)
    return kvp_tool_fail(t, rc, "out of memory");
  return KVP_EXIT_OK;
}

/* Register the imported key's certificate; a failure deletes the key again. */
static int import_register(kvp_tool *t, const store *s, const char *keyname, const kvp_key *key,
                           EVP_PKEY *cpub, kvp_cert_rec *rec)
{
  CK_RV rv;
  if (key->pub && !kvp_pubkey_equal(key->pub, cpub))
    return undo_key(t, s, keyname, "the key store reports another public key than the imported one");
  if (key->version && !(rec->key_version = strdup(key->version)))
    return undo_key(t, s, keyname, "out of memory");
  if ((rv = kvp_prov_register(t->reg, rec, NULL)) != CKR_OK) {
    char why[KVP_STATUS_MSGLEN];
    snprintf(why, sizeof(why), "%s", kvp_tool_reason(t, rv));
    return undo_key(t, s, keyname, why);
  }
  return KVP_EXIT_OK;
}

static int key_import(kvp_tool *t, key_args *a)
{
  const char *keyname = a->v[O_KEY];
  const char *regname = a->v[O_NAME] ? a->v[O_NAME] : keyname;
  char *pass = NULL;
  size_t pass_len = 0;
  import_src src = {0};
  kvp_spki sp = {0};
  kvp_key_spec spec = {0};
  kvp_cert_rec rec = {0};
  store s = {0};
  kvp_key *key = NULL;
  X509 *x = NULL;
  char warn[KVP_ERRLEN] = "";
  int rc;

  if ((rc = store_args(t, a, 1)) != KVP_EXIT_OK)
    return rc;
  rc = KVP_EXIT_USAGE;
  if (!!a->v[O_PFX] == !!(a->v[O_KEYFILE] || a->v[O_CERT]) ||
      (!a->v[O_PFX] && !(a->v[O_KEYFILE] && a->v[O_CERT]))) {
    kvp_tool_fail(t, rc,
                  "give --pfx FILE, or --key-file KEY.pem and --cert CERT.pem (see kvp11 "
                  "key import --help)");
    goto out;
  }
  if (!kvp_tool_name_ok(regname)) {
    kvp_tool_fail(t, rc, "bad --name '%s': 1 to 255 bytes, no control characters", regname);
    goto out;
  }
  if (parse_ops(t, a->v[O_OPS], &spec.ops) != KVP_EXIT_OK)
    goto out;
  spec.hsm_protected = a->v[O_HSMPROT] != NULL;

  rc = KVP_EXIT_ERROR;
  if (kvp_tool_load_config(t) != KVP_EXIT_OK ||
      kvp_tool_account(t, a->v[O_ACCOUNT], &a->account) != KVP_EXIT_OK)
    goto out;
  if ((rc = store_find(t, a, &s)) != KVP_EXIT_OK)
    goto out;
  rc = KVP_EXIT_ERROR;

  /* Everything about the key and its certificate, before the store is asked. */
  if (read_pass(t, a, &pass, &pass_len) != KVP_EXIT_OK || read_source(t, a, pass, &src) != KVP_EXIT_OK)
    goto out;
  kvp_wipe(pass, pass_len);
  if ((rc = import_rec(t, a, &src, &sp, &spec, &x, &rec, warn)) != KVP_EXIT_OK)
    goto out;
  rc = KVP_EXIT_ERROR;
  EVP_PKEY *cpub = X509_get0_pubkey(x);
  rec.key_ref = strdup(s.ref);
  if (!rec.key_ref) {
    kvp_tool_fail(t, rc, "out of memory");
    goto out;
  }

  /* The registry name, then the key name in the store. */
  if (kvp_tool_open_registry(t) != KVP_EXIT_OK || reg_name_free(t, a->account, regname) != 1)
    goto out;
  if (store_open(t, a, &s) != KVP_EXIT_OK)
    goto out;
  if (!s.be->ops->import_key) {
    unsupported(t, &s, "importing keys");
    goto out;
  }
  if (store_name_free(t, &s, keyname) != KVP_EXIT_OK || key_not_present(t, &s, cpub) != KVP_EXIT_OK)
    goto out;

  CK_RV rv = s.be->ops->import_key(s.be, keyname, src.pkey, &spec, &key);
  /* The store has its copy (or not): the private key goes now. */
  EVP_PKEY_free(src.pkey);
  src.pkey = NULL;
  if (rv == CKR_ATTRIBUTE_VALUE_INVALID) {
    kvp_tool_fail(t, rc, "%s '%s' refused to import key '%s': %s", s.kind, s.name, keyname,
                  kvp_status_reason() ? kvp_status_reason()
                                      : "a key of that name exists, or the key is not allowed");
    goto out;
  }
  if (rv != CKR_OK || !key) {
    store_fail(t, &s, "importing the key", rv != CKR_OK ? rv : CKR_GENERAL_ERROR);
    goto out;
  }
  if ((rc = import_register(t, &s, keyname, key, cpub, &rec)) != KVP_EXIT_OK)
    goto out;
  if (warn[0])
    kvp_tool_warn(t, "%s", warn);
  {
    char what[32], fp[72] = "";
    type_text(sp.type, sp.bits, sp.curve_nid, what);
    kvp_pubkey_fingerprint(cpub, fp);
    kvp_audit_change("key import", a->account, NULL, s.ref, NULL, fp);
    char regd[1200];
    snprintf(regd, sizeof(regd), "private certificate '%s' in account '%s' (%s)", regname,
             a->account, rec.subject);
    const char *f[][2] = {{"imported key", s.ref}, {"type", what}, {"version", key->version},
                          {"spki", fp}, {"registered", regd}};
    rc = print_result(a, f, KVP_ARRAY_SIZE(f)) ? kvp_tool_fail(t, KVP_EXIT_ERROR, "cannot format "
                                                               "the output")
                                               : KVP_EXIT_OK;
  }
out:
  if (key)
    s.be->ops->close_key(s.be, key);
  EVP_PKEY_free(src.pkey);
  free(src.der);
  X509_free(x);
  kvp_spki_clear(&sp);
  kvp_cert_rec_clear(&rec);
  if (pass)
    kvp_wipe(pass, pass_len);
  kvp_free_secret(pass);
  store_close(&s);
  return rc;
}

/* ---- key list / show ----------------------------------------------------- */

static json_t *info_json(const kvp_key_info *k, json_t *users)
{
  json_t *o = json_object(), *ops = json_array();
  char when[32];
  if (!o || !ops) {
    json_decref(o);
    json_decref(ops);
    json_decref(users);
    return NULL;
  }
  if (k->ops & KVP_KEYOP_SIGN)
    json_array_append_new(ops, json_string("sign"));
  if (k->ops & KVP_KEYOP_DECRYPT)
    json_array_append_new(ops, json_string("decrypt"));
  const char *curve = k->type == KVP_KEY_EC ? kvp_curve_name(k->curve_nid) : NULL;
  int bad = json_object_set_new(o, "name", json_string(k->name ? k->name : "")) ||
            json_object_set_new(o, "kty", k->kty ? json_string(k->kty) : json_null()) ||
            json_object_set_new(o, "type",
                                json_string(k->type == KVP_KEY_RSA  ? "rsa"
                                            : k->type == KVP_KEY_EC ? "ec"
                                                                    : "unknown")) ||
            json_object_set_new(o, "size", json_integer(k->bits)) ||
            json_object_set_new(o, "curve", curve ? json_string(curve) : json_null()) ||
            json_object_set_new(o, "ops", ops) ||
            json_object_set_new(o, "enabled", json_boolean(k->enabled)) ||
            json_object_set_new(o, "hsm_protected", json_boolean(k->hsm_protected)) ||
            json_object_set_new(o, "version", k->version ? json_string(k->version) : json_null());
  if (!bad && k->id) {
    char *hex = malloc(2 * k->id_len + 1);
    if (hex)
      kvp_hex(k->id, k->id_len, hex);
    bad = !hex || json_object_set_new(o, "id", json_string(hex));
    free(hex);
  }
  if (!bad) {
    kvp_tool_isotime(k->created, when);
    bad = json_object_set_new(o, "created", k->created ? json_string(when) : json_null());
    kvp_tool_isotime(k->expires, when);
    bad = bad || json_object_set_new(o, "expires", k->expires ? json_string(when) : json_null());
  }
  if (!bad && k->pub) {
    char fp[72] = "";
    kvp_pubkey_fingerprint(k->pub, fp);
    bad = json_object_set_new(o, "spki", json_string(fp));
  }
  if (!bad)
    bad = json_object_set_new(o, "certificates", users ? users : json_array()) != 0;
  else
    json_decref(users);
  if (bad) {
    json_decref(o);
    return NULL;
  }
  return o;
}

static int dump(json_t *j)
{
  int rc = j && json_dumpf(j, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER) == 0 ? 0 : -1;
  if (rc == 0)
    fputc('\n', stdout);
  json_decref(j);
  return rc;
}

/* Print *j (taken: *j becomes NULL) as JSON; the one-line error when that fails. */
static int print_json(kvp_tool *t, json_t **j)
{
  json_t *x = *j;
  *j = NULL;
  return dump(x) != 0 ? kvp_tool_fail(t, KVP_EXIT_ERROR, "cannot format the output")
                      : KVP_EXIT_OK;
}

/* Every registered row (all accounts), read-only; prints the error. */
static int all_recs(kvp_tool *t, kvp_cert_rec **recs, size_t *n)
{
  char err[KVP_ERRLEN] = "";
  *recs = NULL;
  *n = 0;
  if (kvp_tool_open_registry_ro(t) != KVP_EXIT_OK)
    return KVP_EXIT_ERROR;
  if (t->reg && kvp_registry_list(t->reg, NULL, recs, n, err, sizeof(err)) != KVP_OK)
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "%s", err);
  return KVP_EXIT_OK;
}

/* The store of --vault / --hsm opened, and every registered row (who uses which key). */
static int open_with_recs(kvp_tool *t, key_args *a, store *s, kvp_cert_rec **recs, size_t *nrecs)
{
  if (kvp_tool_load_config(t) != KVP_EXIT_OK || store_find(t, a, s) != KVP_EXIT_OK ||
      all_recs(t, recs, nrecs) != KVP_EXIT_OK || store_open(t, a, s) != KVP_EXIT_OK)
    return KVP_EXIT_ERROR;
  return KVP_EXIT_OK;
}

/* Comma-separated text of a JSON array of strings (users, ops), "-" when empty. */
static void users_text(json_t *users, char *out, size_t len)
{
  size_t i;
  json_t *v;
  out[0] = '\0';
  json_array_foreach(users, i, v)
  {
    size_t used = strlen(out);
    snprintf(out + used, len - used, "%s%s", i ? "," : "", json_string_value(v));
  }
  if (!out[0])
    snprintf(out, len, "-");
}

static int key_list(kvp_tool *t, key_args *a)
{
  store s = {0};
  kvp_key_info *infos = NULL;
  kvp_cert_rec *recs = NULL;
  size_t n = 0, nrecs = 0;
  json_t *arr = NULL;
  int rc;

  if ((rc = store_args(t, a, 0)) != KVP_EXIT_OK)
    return rc;
  rc = KVP_EXIT_ERROR;
  if (open_with_recs(t, a, &s, &recs, &nrecs) != KVP_EXIT_OK)
    goto out;
  if (!s.be->ops->list_keys) {
    unsupported(t, &s, "listing keys");
    goto out;
  }
  CK_RV rv = s.be->ops->list_keys(s.be, &infos, &n);
  if (rv != CKR_OK) {
    store_fail(t, &s, "listing the keys", rv);
    goto out;
  }
  if (!(arr = json_array())) {
    kvp_tool_fail(t, rc, "out of memory");
    goto out;
  }
  for (size_t i = 0; i < n; i++) {
    json_t *o = info_json(&infos[i], users_of(&s, recs, nrecs, infos[i].name ? infos[i].name : ""));
    if (!o || json_array_append_new(arr, o) != 0) {
      kvp_tool_fail(t, rc, "cannot format the output");
      goto out;
    }
  }
  if (a->v[O_JSON]) {
    if (print_json(t, &arr) != KVP_EXIT_OK)
      goto out;
  } else {
    int w = 4; /* by display width: HSM labels may be UTF-8 */
    for (size_t i = 0; i < n; i++)
      if (infos[i].name && kvp_tool_width(infos[i].name) > w)
        w = kvp_tool_width(infos[i].name);
    printf("%-*s  %-7s  %-10s  %-12s  %-7s  %-32s  %s\n", w, "NAME", "KTY", "SIZE", "OPS",
           "ENABLED", "VERSION", "CERTIFICATES");
    for (size_t i = 0; i < n; i++) {
      const kvp_key_info *k = &infos[i];
      char what[32], users[1024];
      const char *curve = k->type == KVP_KEY_EC ? kvp_curve_name(k->curve_nid) : NULL;
      if (curve)
        snprintf(what, sizeof(what), "%s", curve);
      else
        snprintf(what, sizeof(what), "%u", k->bits);
      users_text(json_object_get(json_array_get(arr, i), "certificates"), users, sizeof(users));
      kvp_tool_cell(stdout, k->name ? k->name : "?", w + 2);
      printf("%-7s  %-10s  %-12s  %-7s  %-32s  %s\n", k->kty ? k->kty : "-", what, ops_text(k->ops), k->enabled ? "yes" : "no",
             k->version ? k->version : "-", users);
    }
  }
  rc = KVP_EXIT_OK;
out:
  json_decref(arr);
  kvp_key_info_free_array(infos, n);
  kvp_cert_rec_free_array(recs, nrecs);
  store_close(&s);
  return rc;
}

static int key_show(kvp_tool *t, key_args *a)
{
  store s = {0};
  kvp_key_info info = {0};
  kvp_cert_rec *recs = NULL;
  size_t nrecs = 0;
  json_t *o = NULL;
  int rc;

  if ((rc = store_args(t, a, 1)) != KVP_EXIT_OK)
    return rc;
  if (a->v[O_JSON] && a->v[O_PEM])
    return kvp_tool_fail(t, KVP_EXIT_USAGE, "--json and --pem exclude each other");
  rc = KVP_EXIT_ERROR;
  if (open_with_recs(t, a, &s, &recs, &nrecs) != KVP_EXIT_OK)
    goto out;
  if (!s.be->ops->key_info) {
    unsupported(t, &s, "showing keys");
    goto out;
  }
  if (key_op_rv(t, &s, a->v[O_KEY], "reading the key",
                s.be->ops->key_info(s.be, a->v[O_KEY], &info)) != KVP_EXIT_OK)
    goto out;
  if (a->v[O_PEM]) {
    if (!info.pub || PEM_write_PUBKEY(stdout, info.pub) != 1) {
      kvp_tool_fail(t, rc, "%s '%s': no public key for '%s'", s.kind, s.name, a->v[O_KEY]);
      goto out;
    }
    rc = KVP_EXIT_OK;
    goto out;
  }
  if (!(o = info_json(&info, users_of(&s, recs, nrecs, a->v[O_KEY])))) {
    kvp_tool_fail(t, rc, "cannot format the output");
    goto out;
  }
  if (!json_object_get(o, "name") || !*json_string_value(json_object_get(o, "name")))
    json_object_set_new(o, "name", json_string(a->v[O_KEY]));
  json_object_set_new(o, "key_ref", json_string(s.ref));
  if (a->v[O_JSON]) {
    if (print_json(t, &o) != KVP_EXIT_OK)
      goto out;
  } else {
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v)
    {
      if (json_is_array(v)) {
        char buf[1024];
        users_text(v, buf, sizeof(buf)); /* ops or certificates */
        printf("%s: %s\n", k, buf);
      } else if (json_is_integer(v)) {
        printf("%s: %lld\n", k, (long long)json_integer_value(v));
      } else if (json_is_boolean(v)) {
        printf("%s: %s\n", k, json_is_true(v) ? "yes" : "no");
      } else {
        printf("%s: %s\n", k, json_is_string(v) ? json_string_value(v) : "-");
      }
    }
  }
  rc = KVP_EXIT_OK;
out:
  json_decref(o);
  kvp_key_info_clear(&info);
  kvp_cert_rec_free_array(recs, nrecs);
  store_close(&s);
  return rc;
}

/* ---- key delete ---------------------------------------------------------- */

static int key_delete(kvp_tool *t, key_args *a)
{
  store s = {0};
  kvp_cert_rec *recs = NULL;
  size_t nrecs = 0;
  json_t *users = NULL;
  int rc;

  if ((rc = store_args(t, a, 1)) != KVP_EXIT_OK)
    return rc;
  if (!a->v[O_YES])
    return kvp_tool_fail(t, KVP_EXIT_USAGE,
                         "deleting a key is destructive: it cannot sign or decrypt any more; "
                         "confirm with --yes");
  rc = KVP_EXIT_ERROR;
  if (kvp_tool_load_config(t) != KVP_EXIT_OK || store_find(t, a, &s) != KVP_EXIT_OK ||
      all_recs(t, &recs, &nrecs) != KVP_EXIT_OK)
    goto out;
  if (!(users = users_of(&s, recs, nrecs, a->v[O_KEY]))) {
    kvp_tool_fail(t, rc, "out of memory");
    goto out;
  }
  if (json_array_size(users) > 0) {
    char buf[1024];
    users_text(users, buf, sizeof(buf));
    kvp_tool_fail(t, rc,
                  "registered certificates point at %s: %s (remove them first with 'kvp11 cert "
                  "remove NAME --account A')",
                  s.ref, buf);
    goto out;
  }
  if (store_open(t, a, &s) != KVP_EXIT_OK)
    goto out;
  if (!s.be->ops->delete_key) {
    unsupported(t, &s, "deleting keys");
    goto out;
  }
  if (key_op_rv(t, &s, a->v[O_KEY], "deleting the key",
                s.be->ops->delete_key(s.be, a->v[O_KEY])) != KVP_EXIT_OK)
    goto out;
  kvp_audit_change("key delete", a->account, NULL, s.ref, NULL, NULL);
  {
    const char *f[][2] = {{"deleted key", s.ref},
                          {"note", s.is_hsm ? NULL : "Key Vault keeps it soft-deleted, recoverable, "
                                                     "until it is purged"}};
    if (a->v[O_JSON])
      rc = print_result(a, f, 2) ? KVP_EXIT_ERROR : KVP_EXIT_OK;
    else {
      printf("deleted key %s%s\n", s.ref,
             s.is_hsm ? "" : " (Key Vault keeps it soft-deleted, recoverable, until it is purged)");
      rc = KVP_EXIT_OK;
    }
  }
out:
  json_decref(users);
  kvp_cert_rec_free_array(recs, nrecs);
  store_close(&s);
  return rc;
}

/* ---- dispatch ------------------------------------------------------------ */

int kvp_tool_key(kvp_tool *t, int argc, char **argv)
{
  return kvp_tool_run_group(t, "key", argc, argv, kvp_tool_key_usage, key_cmds,
                            KVP_ARRAY_SIZE(key_cmds), key_cmd_usage);
}
