/*
 * kvp11 sync | publish | unpublish: an Azure Logic Apps integration account as
 * the source of truth for the certificates of a kvp11 account.
 *
 * sync lists the integration account's certificates (every page), works out a
 * plan against the account's registry rows, and applies it in one registry
 * transaction: add what is new, replace what changed (same row, so PKCS#11
 * handles stay), and with --prune remove rows that came from this integration
 * account and are gone there. Rows registered by hand are never touched. A
 * private certificate is registered only when its Key Vault key's public key
 * is the certificate's (the service itself does not check this). Exit codes:
 * 0 in sync, 1 failure (registry unchanged), 2 usage, 3 entries skipped.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>
#include <openssl/x509.h>

#include "backend/backend.h"
#include "core/cert.h"
#include "core/log.h"
#include "core/p11names.h"
#include "core/status.h"
#include "core/util.h"
#include "ia.h"
#include "tool.h"

#define EXIT_SKIPPED 3


typedef enum { P_SAME, P_ADD, P_REPLACE, P_REMOVE, P_KEEP, P_SKIP } plan_kind;
static const char *const plan_names[] = {"unchanged", "add", "replace", "remove", "keep", "skip"};

typedef struct plan_item {
  plan_kind kind;
  char *name;
  char *reason;      /* skip / keep: why */
  kvp_cert_rec rec;  /* add / replace: the new row */
  char sha256[65];   /* of the certificate concerned */
  char old_sha256[65]; /* replace / remove: of the row before */
} plan_item;

typedef struct plan {
  const kvp_ia_conf *ia;
  const char *account;
  plan_item *items;
  size_t n, cap;
  size_t count[P_SKIP + 1];
} plan;

/* One opened Key Vault backend per [vault] section, for the key checks. */
typedef struct vault_cache {
  const kvp_vault_conf *conf;
  kvp_backend *be;
} vault_cache;

typedef struct sync_ctx {
  kvp_tool *t;
  vault_cache *vaults;
  size_t n_vaults;
} sync_ctx;

static const struct {
  const char *cmd, *synopsis, *what;
} sync_cmds[] = {
    {"sync", "sync [--account A | --ia NAME] [--dry-run] [--json] [--prune]",
     "Make the account's registry match its integration account, in one transaction;\n"
     "rows registered by hand are never touched.\n"
     "Exit status: 0 in sync, 1 failure (registry unchanged), 2 usage, 3 entries skipped\n"
     "(each named with its reason).\n"},
    {"publish", "publish NAME [--account A] [--ia NAME] [--vault-id ID]",
     "Create or update NAME in the integration account from its registry entry.\n"},
    {"unpublish", "unpublish NAME [--account A] [--ia NAME]",
     "Delete NAME from the integration account (the registry keeps it).\n"},
};

void kvp_tool_sync_usage(FILE *f)
{
  for (size_t i = 0; i < KVP_ARRAY_SIZE(sync_cmds); i++)
    kvp_tool_synopsis(f, "  kvp11 [-c FILE] ", sync_cmds[i].cmd, sync_cmds[i].synopsis);
}

static void sync_help(const char *cmd)
{
  for (size_t i = 0; i < KVP_ARRAY_SIZE(sync_cmds); i++)
    if (strcmp(cmd, sync_cmds[i].cmd) == 0) {
      kvp_tool_synopsis(stdout, "usage: kvp11 [-c FILE] ", sync_cmds[i].cmd, sync_cmds[i].synopsis);
      printf("\n%s", sync_cmds[i].what);
    }
}

/* ---- plan ---- */

static plan_item *plan_add(plan *p, plan_kind kind, const char *name, const char *sha256,
                           const char *reason)
{
  if (kvp_grow(&p->items, p->n, &p->cap, sizeof(*p->items), 16) != 0)
    return NULL;
  plan_item *it = &p->items[p->n];
  memset(it, 0, sizeof(*it));
  it->kind = kind;
  it->name = strdup(name);
  it->reason = reason != NULL ? strdup(reason) : NULL;
  snprintf(it->sha256, sizeof(it->sha256), "%s", sha256 != NULL ? sha256 : "");
  if (it->name == NULL || (reason != NULL && it->reason == NULL)) {
    free(it->name);
    free(it->reason);
    return NULL;
  }
  p->n++;
  p->count[kind]++;
  return it;
}

static void plan_free(plan *p)
{
  for (size_t i = 0; i < p->n; i++) {
    free(p->items[i].name);
    free(p->items[i].reason);
    kvp_cert_rec_clear(&p->items[i].rec);
  }
  free(p->items);
  memset(p, 0, sizeof(*p));
}

/* ---- vault mapping and key check ---- */

/*
 * vault_map ("kvname=section, ..."): the entry whose key (by_value == 0,
 * ASCII case ignored) or whose value (by_value != 0) is want; the other side
 * goes to out. 0 when found.
 */
static int vault_map_find(const char *map, const char *want, int by_value, char out[128])
{
  for (const char *m = map; m != NULL && *m != '\0'; m += strcspn(m, ",")) {
    char k[128], val[128];
    m += strspn(m, " \t,");
    if (sscanf(m, " %127[^= \t] = %127[^, \t]", k, val) != 2)
      continue;
    if (by_value ? strcmp(val, want) == 0 : strcasecmp(k, want) == 0) {
      snprintf(out, 128, "%s", by_value ? k : val);
      return 0;
    }
  }
  return -1;
}

/* The [vault] section for a Key Vault named kvname: vault_map first, else the
 * section whose url host is "kvname." something. */
static const kvp_vault_conf *map_vault(const kvp_config *cfg, const kvp_ia_conf *ia,
                                       const char *kvname)
{
  char sec[128];
  size_t kl = strlen(kvname);

  if (vault_map_find(ia->vault_map, kvname, 0, sec) == 0)
    return kvp_config_find_vault(cfg, sec);
  for (size_t i = 0; i < cfg->n_vaults; i++) {
    const char *u = cfg->vaults[i].url;
    const char *h = strstr(u, "://");
    h = h != NULL ? h + 3 : u;
    if (strncasecmp(h, kvname, kl) == 0 && h[kl] == '.')
      return &cfg->vaults[i];
  }
  return NULL;
}

/* The [vault] section that maps private entry e's Key Vault, and in ref the
 * key reference its row gets ("keyvault:SECTION/KEY"); NULL when none maps it. */
static const kvp_vault_conf *entry_key_ref(const sync_ctx *s, const plan *p, const ia_cert *e,
                                           char *ref, size_t len)
{
  const kvp_vault_conf *vc = map_vault(s->t->cfg, p->ia, e->vault_name);
  if (vc != NULL)
    snprintf(ref, len, "keyvault:%s/%s", vc->name, e->key_name);
  return vc;
}

static kvp_backend *vault_backend(sync_ctx *s, const kvp_vault_conf *vc)
{
  for (size_t i = 0; i < s->n_vaults; i++)
    if (s->vaults[i].conf == vc)
      return s->vaults[i].be;
  vault_cache *v = realloc(s->vaults, (s->n_vaults + 1) * sizeof(*v));
  if (v == NULL)
    return NULL;
  s->vaults = v;
  v[s->n_vaults].conf = vc;
  v[s->n_vaults].be = NULL;
  if (kvp_keyvault_backend_new(vc, &v[s->n_vaults].be) != CKR_OK)
    return NULL;
  return v[s->n_vaults++].be;
}

/*
 * Check that the Key Vault key of entry e is the certificate's key and fill
 * rec->key_ref / key_version. Returns NULL, or why the entry is skipped
 * (written to why).
 */
static const char *check_private(sync_ctx *s, const plan *p, const ia_cert *e, X509 *x,
                                 kvp_cert_rec *rec, char *why, size_t whylen)
{
  char kref[300], ref[200], fc[72] = "?", fk[72] = "?";
  const kvp_vault_conf *vc = entry_key_ref(s, p, e, kref, sizeof(kref));
  kvp_backend *be;
  kvp_key *key = NULL;
  CK_RV rv;

  if (vc == NULL) {
    snprintf(why, whylen,
             "its key is in Key Vault '%s', which no [vault] section maps (add one whose url is "
             "https://%s.vault.azure.net, or map it with vault_map in [integration-account %s])",
             e->vault_name, e->vault_name, p->ia->cred.name);
    return why;
  }
  if ((be = vault_backend(s, vc)) == NULL) {
    snprintf(why, whylen, "vault '%s' cannot be used: %s", vc->name,
             kvp_status_reason() ? kvp_status_reason() : "see the log");
    return why;
  }
  snprintf(ref, sizeof(ref), "%s%s%s", e->key_name, e->key_version ? "/" : "",
           e->key_version ? e->key_version : "");
  kvp_status_clear();
  rv = kvp_backend_open_key(be, ref, NULL, &key);
  if (rv != CKR_OK || key == NULL || key->pub == NULL) {
    snprintf(why, whylen, "cannot read key '%s' in vault '%s': %s", ref, vc->name,
             kvp_status_reason() ? kvp_status_reason() : kvp_ckr_name(rv));
    if (key != NULL)
      be->ops->close_key(be, key);
    return why;
  }
  if (!kvp_pubkey_equal(X509_get0_pubkey(x), key->pub)) {
    kvp_pubkey_fingerprint(X509_get0_pubkey(x), fc);
    kvp_pubkey_fingerprint(key->pub, fk);
    snprintf(why, whylen,
             "the certificate's public key (%s) is not the public key of key '%s' in vault '%s' "
             "(%s)",
             fc, ref, vc->name, fk);
    be->ops->close_key(be, key);
    return why;
  }
  rec->key_ref = strdup(kref);
  rec->key_version = kvp_strdup0(e->key_version ? e->key_version : key->version);
  be->ops->close_key(be, key);
  if (rec->key_ref == NULL) {
    snprintf(why, whylen, "out of memory");
    return why;
  }
  return NULL;
}

/* ---- planning one entry ---- */

static const kvp_cert_rec *find_row(const kvp_cert_rec *rows, size_t n, const char *name)
{
  for (size_t i = 0; i < n; i++)
    if (strcasecmp(rows[i].name, name) == 0)
      return &rows[i];
  return NULL;
}

/*
 * The one rule for "unchanged": the registry's row old already says what
 * entry e asks for: the same certificate (DER), kind, key reference (the
 * [vault] section that maps e's Key Vault, and e's key name) and, when e names
 * one, key version. Decided from the configuration alone, with no vault
 * request: an entry naming no version keeps the registered one (the
 * certificate is the same, so that version still holds its key).
 */
static int same_content(const sync_ctx *s, const plan *p, const kvp_cert_rec *old,
                        const ia_cert *e)
{
  char ref[300];
  if (e->bad != NULL || e->der_len == 0 || old->der_len != e->der_len ||
      memcmp(old->der, e->der, e->der_len) != 0)
    return 0;
  if (e->key_name == NULL)
    return old->type == KVP_CERT_PUBLIC;
  return old->type == KVP_CERT_PRIVATE && old->key_ref != NULL &&
         entry_key_ref(s, p, e, ref, sizeof(ref)) != NULL && strcmp(old->key_ref, ref) == 0 &&
         (e->key_version == NULL ||
          (old->key_version != NULL && strcmp(old->key_version, e->key_version) == 0));
}

/* Build the row an entry asks for; NULL or the reason it cannot be used. */
static const char *entry_rec(sync_ctx *s, const plan *p, const ia_cert *e, kvp_cert_rec *rec,
                             char *why, size_t whylen)
{
  char err[KVP_ERRLEN] = "";
  const unsigned char *q = e->der;
  X509 *x = NULL;
  const char *bad = NULL;

  if (e->bad != NULL) {
    snprintf(why, whylen, "%s", e->bad);
    return why;
  }
  if (kvp_cert_fill_rec(e->der, e->der_len, rec, err, sizeof(err)) != KVP_OK ||
      (x = d2i_X509(NULL, &q, (long)e->der_len)) == NULL) {
    snprintf(why, whylen, "publicCertificate is not an X.509 certificate: %s",
             err[0] ? err : "cannot parse");
    X509_free(x);
    return why;
  }
  rec->account = strdup(p->account);
  rec->name = strdup(e->name);
  rec->type = e->key_name != NULL ? KVP_CERT_PRIVATE : KVP_CERT_PUBLIC;
  rec->origin = malloc(strlen(p->ia->cred.name) + 4);
  rec->origin_ref = strdup(e->name);
  if (rec->origin != NULL)
    snprintf(rec->origin, strlen(p->ia->cred.name) + 4, "ia:%s", p->ia->cred.name);
  if (rec->account == NULL || rec->name == NULL || rec->origin == NULL || rec->origin_ref == NULL)
    bad = strcpy(why, "out of memory");
  else if (rec->type == KVP_CERT_PRIVATE)
    bad = check_private(s, p, e, x, rec, why, whylen);
  X509_free(x);
  return bad;
}

static int plan_entry(sync_ctx *s, plan *p, const ia_cert *e, const kvp_cert_rec *rows,
                      size_t n_rows)
{
  char why[2 * KVP_ERRLEN], origin[200];
  kvp_cert_rec rec = {0};
  const kvp_cert_rec *old = find_row(rows, n_rows, e->name);
  plan_item *it;

  snprintf(origin, sizeof(origin), "ia:%s", p->ia->cred.name);
  /* a row of this origin, or registered by hand, that already says what the
   * entry asks for is unchanged: no row built, no key check, no vault request */
  if (old != NULL && (old->origin == NULL || strcmp(old->origin, origin) == 0) &&
      same_content(s, p, old, e))
    return plan_add(p, P_SAME, e->name, old->sha256, NULL) ? 0 : -1;
  const char *bad = entry_rec(s, p, e, &rec, why, sizeof(why));
  if (bad == NULL && old != NULL && old->origin == NULL)
    bad = "a certificate registered by hand has this name; it is left alone";
  else if (bad == NULL && old != NULL && strcmp(old->origin, origin) != 0) {
    snprintf(why, sizeof(why), "the registry's '%s' comes from %s; it is left alone", old->name,
             old->origin);
    bad = why;
  }
  if (bad != NULL) {
    it = plan_add(p, P_SKIP, e->name, rec.sha256, bad);
    kvp_cert_rec_clear(&rec);
    return it ? 0 : -1;
  }
  if (old != NULL) { /* keep the registry's spelling: the row stays the same */
    free(rec.name);
    rec.name = strdup(old->name);
  }
  it = plan_add(p, old != NULL ? P_REPLACE : P_ADD, rec.name ? rec.name : e->name, rec.sha256,
                NULL);
  if (it == NULL || rec.name == NULL) {
    kvp_cert_rec_clear(&rec);
    return -1;
  }
  if (old != NULL)
    snprintf(it->old_sha256, sizeof(it->old_sha256), "%s", old->sha256);
  it->rec = rec;
  return 0;
}

static int listed(const ia_cert *certs, size_t n, const char *name)
{
  for (size_t i = 0; i < n; i++)
    if (certs[i].name != NULL && strcasecmp(certs[i].name, name) == 0)
      return 1;
  return 0;
}

static int make_plan(sync_ctx *s, plan *p, const ia_cert *certs, size_t n,
                     const kvp_cert_rec *rows, size_t n_rows, int prune)
{
  char origin[200];

  snprintf(origin, sizeof(origin), "ia:%s", p->ia->cred.name);
  for (size_t i = 0; i < n; i++)
    if (plan_entry(s, p, &certs[i], rows, n_rows) != 0)
      return -1;
  for (size_t i = 0; i < n_rows; i++) {
    if (rows[i].origin == NULL || strcmp(rows[i].origin, origin) != 0 ||
        listed(certs, n, rows[i].name))
      continue;
    if (!plan_add(p, prune ? P_REMOVE : P_KEEP, rows[i].name, rows[i].sha256,
                  prune ? NULL : "gone from the integration account (--prune removes it)"))
      return -1;
  }
  return 0;
}

/* ---- apply and report ---- */

static int apply_plan(kvp_tool *t, const plan *p)
{
  char err[KVP_ERRLEN] = "";
  int rc = kvp_registry_begin(t->reg, err, sizeof(err));

  for (size_t i = 0; rc == KVP_OK && i < p->n; i++) {
    const plan_item *it = &p->items[i];
    if (it->kind == P_ADD || it->kind == P_REPLACE)
      rc = kvp_registry_add(t->reg, &it->rec, it->kind == P_REPLACE, err, sizeof(err));
    else if (it->kind == P_REMOVE)
      rc = kvp_registry_remove(t->reg, p->account, it->name, err, sizeof(err));
  }
  if (rc == KVP_OK)
    rc = kvp_registry_end(t->reg, 1, err, sizeof(err));
  else
    kvp_registry_end(t->reg, 0, NULL, 0);
  if (rc != KVP_OK)
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "%s (registry unchanged)", err);
  for (size_t i = 0; i < p->n; i++) {
    const plan_item *it = &p->items[i];
    if (it->kind != P_ADD && it->kind != P_REPLACE && it->kind != P_REMOVE)
      continue;
    KVP_INFO("sync %s -> account %s: %s '%s' (sha256 %s)", p->ia->cred.name, p->account,
             plan_names[it->kind], it->name, it->sha256);
    kvp_audit_change(it->kind == P_ADD ? "sync add" : it->kind == P_REPLACE ? "sync replace" : "sync remove",
                     p->account, it->name, it->rec.key_ref,
                     it->kind == P_ADD ? NULL : it->kind == P_REPLACE ? it->old_sha256 : it->sha256,
                     it->kind == P_REMOVE ? NULL : it->sha256);
  }
  return KVP_EXIT_OK;
}

static void print_text(const plan *p, int dry)
{
  for (size_t i = 0; i < p->n; i++) {
    const plan_item *it = &p->items[i];
    if (it->kind == P_SAME)
      continue;
    printf("%s%-9s %s%s%s\n", dry ? "would " : "", plan_names[it->kind], it->name,
           it->reason ? ": " : "", it->reason ? it->reason : "");
  }
  printf("integration account %s -> account %s: %zu added, %zu replaced, %zu removed, %zu "
         "skipped, %zu kept, %zu unchanged%s\n",
         p->ia->cred.name, p->account, p->count[P_ADD], p->count[P_REPLACE], p->count[P_REMOVE],
         p->count[P_SKIP], p->count[P_KEEP], p->count[P_SAME], dry ? " (dry run: nothing written)" : "");
}

static json_t *plan_json(const plan *p, int dry, const char *error)
{
  json_t *items = json_array();
  json_t *o = json_pack("{s:s,s:s,s:b,s:o}", "integration_account", p->ia->cred.name, "account",
                        p->account, "dry_run", dry, "changes", items);
  for (size_t i = 0; o != NULL && i < p->n; i++) {
    const plan_item *it = &p->items[i];
    json_t *j = json_pack("{s:s,s:s}", "action", plan_names[it->kind], "name", it->name);
    if (j != NULL && it->sha256[0])
      json_object_set_new(j, "sha256", json_string(it->sha256));
    if (j != NULL && it->reason)
      json_object_set_new(j, "reason", json_string(it->reason));
    json_array_append_new(items, j);
  }
  for (int k = P_SAME; o != NULL && k <= P_SKIP; k++)
    json_object_set_new(o, plan_names[k], json_integer((json_int_t)p->count[k]));
  if (o != NULL && error != NULL)
    json_object_set_new(o, "error", json_string(error));
  return o;
}

/* ---- one integration account ---- */

static int sync_one(sync_ctx *s, const kvp_ia_conf *ia, const char **v, json_t *out)
{
  kvp_tool *t = s->t;
  plan p = {0};
  ia_client *c = NULL;
  ia_cert *certs = NULL;
  kvp_cert_rec *rows = NULL;
  size_t n = 0, n_rows = 0;
  char err[KVP_ERRLEN] = "";
  int rc = KVP_EXIT_ERROR, dry = v[O_DRY] != NULL;

  p.ia = ia;
  if (kvp_tool_account(t, ia->account, &p.account) != KVP_EXIT_OK)
    return KVP_EXIT_ERROR;
  kvp_status_clear();
  if (ia_client_new(ia, &c) != CKR_OK || ia_list(c, &certs, &n) != CKR_OK) {
    const char *why = kvp_status_reason() ? kvp_status_reason() : "see the log";
    kvp_tool_fail(t, KVP_EXIT_ERROR, "%s (registry unchanged)", why);
    if (out != NULL)
      json_array_append_new(out, plan_json(&p, dry, why));
    goto done;
  }
  if (kvp_registry_list(t->reg, p.account, &rows, &n_rows, err, sizeof(err)) != KVP_OK) {
    kvp_tool_fail(t, KVP_EXIT_ERROR, "%s", err);
    goto done;
  }
  if (make_plan(s, &p, certs, n, rows, n_rows, v[O_PRUNE] != NULL) != 0) {
    kvp_tool_fail(t, KVP_EXIT_ERROR, "out of memory (registry unchanged)");
    goto done;
  }
  for (size_t i = 0; i < p.n; i++)
    if (p.items[i].kind == P_SKIP)
      KVP_WARN("sync %s -> account %s: skip '%s': %s", ia->cred.name, p.account, p.items[i].name,
               p.items[i].reason);
  rc = dry ? KVP_EXIT_OK : apply_plan(t, &p);
  if (rc == KVP_EXIT_OK && out != NULL)
    json_array_append_new(out, plan_json(&p, dry, NULL));
  else if (rc == KVP_EXIT_OK)
    print_text(&p, dry);
  if (rc == KVP_EXIT_OK && p.count[P_SKIP] > 0)
    rc = EXIT_SKIPPED;
done:
  plan_free(&p);
  kvp_cert_rec_free_array(rows, n_rows);
  ia_cert_free_array(certs, n);
  ia_client_free(c);
  return rc;
}

static int cmd_sync(sync_ctx *s, const char **v)
{
  kvp_tool *t = s->t;
  json_t *out = v[O_JSON] ? json_array() : NULL;
  int rc = KVP_EXIT_OK, any = 0;

  for (size_t i = 0; i < t->cfg->n_ias; i++) {
    const kvp_ia_conf *ia = &t->cfg->ias[i];
    const char *acct = ia->account ? ia->account : (t->cfg->n_accounts ? t->cfg->accounts[0].name : "default");
    if ((v[O_IA] && strcmp(v[O_IA], ia->cred.name) != 0) || (v[O_ACCOUNT] && strcmp(v[O_ACCOUNT], acct) != 0))
      continue;
    any = 1;
    int r = sync_one(s, ia, v, out);
    if (r == KVP_EXIT_ERROR || (r == EXIT_SKIPPED && rc == KVP_EXIT_OK))
      rc = r;
  }
  if (!any)
    rc = kvp_tool_fail(t, KVP_EXIT_USAGE, "no [integration-account] section%s%s%s%s in %s",
                       v[O_IA] ? " named " : "", v[O_IA] ? v[O_IA] : "",
                       v[O_ACCOUNT] ? " fills account " : "", v[O_ACCOUNT] ? v[O_ACCOUNT] : "",
                       t->cfg->path);
  if (out != NULL) {
    json_dumpf(out, stdout, JSON_INDENT(2));
    fputc('\n', stdout);
    json_decref(out);
  }
  return rc;
}

/* ---- publish / unpublish ---- */

/* The integration account for a command on one account: --ia, or the one
 * section that fills the account. */
static const kvp_ia_conf *pick_ia(kvp_tool *t, const char **v, const char *account, int *rc)
{
  const kvp_ia_conf *found = NULL;

  if (v[O_IA] != NULL) {
    if ((found = kvp_config_find_ia(t->cfg, v[O_IA])) == NULL)
      *rc = kvp_tool_fail(t, KVP_EXIT_USAGE, "no [integration-account %s] in %s", v[O_IA],
                          t->cfg->path);
    return found;
  }
  for (size_t i = 0; i < t->cfg->n_ias; i++) {
    const kvp_ia_conf *ia = &t->cfg->ias[i];
    const char *acct = ia->account ? ia->account : (t->cfg->n_accounts ? t->cfg->accounts[0].name : "default");
    if (strcmp(acct, account) != 0)
      continue;
    if (found != NULL) {
      *rc = kvp_tool_fail(t, KVP_EXIT_USAGE,
                          "integration accounts '%s' and '%s' both fill account '%s': choose one "
                          "with --ia",
                          found->cred.name, ia->cred.name, account);
      return NULL;
    }
    found = ia;
  }
  if (found == NULL)
    *rc = kvp_tool_fail(t, KVP_EXIT_USAGE, "no [integration-account] section fills account '%s'",
                        account);
  return found;
}

/* The ARM id of the vault of a key reference "keyvault:SECTION/KEY": --vault-id,
 * else the integration account's subscription and resource group with the
 * vault's name (vault_map, else the first label of its host). */
static char *vault_arm_id(const kvp_tool *t, const kvp_ia_conf *ia, const char *section,
                          const char *given)
{
  const kvp_vault_conf *vc = kvp_config_find_vault(t->cfg, section);
  const char *prov = strstr(ia->resource_id, "/providers/");
  char name[128] = "";

  if (given != NULL)
    return strdup(given);
  if (vc == NULL || prov == NULL)
    return NULL;
  if (vault_map_find(ia->vault_map, section, 1, name) != 0) {
    const char *h = strstr(vc->url, "://");
    h = h ? h + 3 : vc->url;
    snprintf(name, sizeof(name), "%.*s", (int)strcspn(h, ".:/"), h);
  }
  size_t n = (size_t)(prov - ia->resource_id) + strlen(name) + 48;
  char *id = malloc(n);
  if (id != NULL)
    snprintf(id, n, "%.*s/providers/Microsoft.KeyVault/vaults/%s", (int)(prov - ia->resource_id),
             ia->resource_id, name);
  return id;
}

static int cmd_publish(kvp_tool *t, const char **v, const char *name, int publish)
{
  kvp_cert_rec rec = {0};
  const char *account;
  char err[KVP_ERRLEN] = "";
  char *scheme = NULL, *store = NULL, *key = NULL, *vid = NULL;
  ia_client *c = NULL;
  int rc = KVP_EXIT_ERROR, flag = 0;
  const kvp_ia_conf *ia;

  if (kvp_tool_account(t, v[O_ACCOUNT], &account) != KVP_EXIT_OK)
    return KVP_EXIT_ERROR;
  if ((ia = pick_ia(t, v, account, &rc)) == NULL)
    return rc;
  rc = KVP_EXIT_ERROR;
  kvp_status_clear();
  if (ia_client_new(ia, &c) != CKR_OK) {
    kvp_tool_fail(t, rc, "%s", kvp_status_reason());
    goto out;
  }
  if (!publish) {
    if (ia_delete(c, name, &flag) != CKR_OK)
      kvp_tool_fail(t, rc, "%s", kvp_status_reason());
    else
      rc = (printf("%s '%s' from integration account %s\n", flag ? "deleted" : "there was no", name,
                   ia->cred.name), KVP_EXIT_OK);
    goto out;
  }
  if (kvp_tool_open_registry_ro(t) != KVP_EXIT_OK)
    goto out;
  if (t->reg == NULL || kvp_registry_get(t->reg, account, name, &rec, err, sizeof(err)) != KVP_OK) {
    kvp_tool_fail(t, rc, "%s", err[0] ? err : "no registry yet");
    goto out;
  }
  if (rec.der_len == 0) {
    kvp_tool_fail(t, rc, "'%s' is a key without a certificate; register its certificate first", name);
    goto out;
  }
  if (rec.type == KVP_CERT_PRIVATE) {
    if (kvp_keyref_parse(rec.key_ref, &scheme, &store, &key, err, sizeof(err)) != KVP_OK) {
      kvp_tool_fail(t, rc, "'%s': %s", name, err);
      goto out;
    }
    if (strcmp(scheme, "keyvault") != 0) {
      kvp_tool_fail(t, rc,
                    "'%s' has its key in HSM '%s'; an integration account refers only to Key Vault "
                    "keys",
                    name, store);
      goto out;
    }
    if ((vid = vault_arm_id(t, ia, store, v[O_VAULT_ID])) == NULL) {
      kvp_tool_fail(t, rc, "vault '%s': cannot tell its Azure resource id; give --vault-id", store);
      goto out;
    }
  }
  if (ia_put(c, name, rec.der, rec.der_len, vid, key, rec.key_version, &flag) != CKR_OK) {
    kvp_tool_fail(t, rc, "%s", kvp_status_reason());
    goto out;
  }
  printf("%s %s certificate '%s' in integration account %s\n", flag ? "created" : "updated",
         rec.type == KVP_CERT_PRIVATE ? "private" : "public", name, ia->cred.name);
  rc = KVP_EXIT_OK;
out:
  kvp_cert_rec_clear(&rec);
  free(scheme);
  free(store);
  free(key);
  free(vid);
  ia_client_free(c);
  return rc;
}

/* argv[0] is "sync", "publish" or "unpublish". */
int kvp_tool_sync(kvp_tool *t, int argc, char **argv)
{
  const char *v[O_COUNT] = {NULL}, *name = NULL;
  const int is_sync = strcmp(argv[0], "sync") == 0;
  kvp_tool_opts o = {0, !is_sync, argv[0], NULL};
  char help[64];
  sync_ctx s = {t, NULL, 0};
  int rc;

  t->cmd = argv[0];
  snprintf(help, sizeof(help), "kvp11 %s --help", argv[0]);
  o.help = help;
  o.allowed = is_sync ? OPT(O_ACCOUNT) | OPT(O_IA) | OPT(O_DRY) | OPT(O_JSON) | OPT(O_PRUNE)
              : strcmp(argv[0], "publish") == 0 ? OPT(O_ACCOUNT) | OPT(O_IA) | OPT(O_VAULT_ID)
                                                : OPT(O_ACCOUNT) | OPT(O_IA);
  rc = kvp_tool_parse_opts(t, &o, argc, argv, v, &name);
  if (rc == KVP_TOOL_HELP) {
    sync_help(argv[0]);
    return KVP_EXIT_OK;
  }
  if (rc != -1)
    return rc;
  if (v[O_ACCOUNT] && v[O_IA])
    return kvp_tool_fail(t, KVP_EXIT_USAGE, "give --account or --ia, not both");
  if (kvp_tool_load_config(t) != KVP_EXIT_OK)
    return KVP_EXIT_ERROR;
  if (!is_sync)
    return cmd_publish(t, v, name, strcmp(argv[0], "publish") == 0);
  if (!v[O_DRY] && kvp_tool_open_registry(t) != KVP_EXIT_OK)
    return KVP_EXIT_ERROR;
  if (v[O_DRY] && kvp_tool_open_registry_ro(t) != KVP_EXIT_OK)
    return KVP_EXIT_ERROR;
  if (t->reg == NULL) { /* dry run, no registry yet: plan against nothing */
    if (kvp_tool_open_registry(t) != KVP_EXIT_OK)
      return KVP_EXIT_ERROR;
  }
  rc = cmd_sync(&s, v);
  for (size_t i = 0; i < s.n_vaults; i++)
    if (s.vaults[i].be != NULL)
      s.vaults[i].be->ops->destroy(s.vaults[i].be, 0);
  free(s.vaults);
  return rc;
}
