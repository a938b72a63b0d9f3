/*
 * kvp11 registry backup|restore|check: the registry file itself.
 *
 * backup uses SQLite's online backup API: one consistent snapshot while
 * modules read and other kvp11 processes write. restore checks the file is a
 * kvp11 registry of a supported schema and copies it into the live registry
 * in one write transaction, so running modules see either the old or the new
 * content and reload at their next look (PRAGMA data_version changes).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/cert.h"
#include "core/util.h"
#include "kvp11/kvp11.h"
#include "tool.h"


static int reg_backup(kvp_tool *t, kvp_tool_args *a);
static int reg_restore(kvp_tool *t, kvp_tool_args *a);
static int reg_check(kvp_tool *t, kvp_tool_args *a);

static const kvp_tool_cmd reg_cmds[] = {
    {"registry backup", OPT(O_JSON), 1, reg_backup, "registry backup FILE [--json]",
     "A consistent copy of the registry into FILE (written beside it, then renamed),\n"
     "taken while modules read and other kvp11 commands write.\n"},
    {"registry restore", OPT(O_JSON), 1, reg_restore, "registry restore FILE [--json]",
     "Replace the registry's content with FILE, a kvp11 registry (schema 1 to current)\n"
     "that passes SQLite's integrity check, in one transaction; running modules pick\n"
     "the change up at their next object search. An older schema is migrated.\n"},
    {"registry check", OPT(O_JSON), 0, reg_check, "registry check [--json]",
     "SQLite's integrity check, then every entry: its certificate parses, a private\n"
     "entry's key reference names a configured key store. Exit 1 on any problem.\n"},
};

void kvp_tool_registry_usage(FILE *f)
{
  kvp_tool_cmds_usage(f, reg_cmds, KVP_ARRAY_SIZE(reg_cmds));
}

static const char *reg_path(const kvp_tool *t)
{
  return t->cfg->registry ? t->cfg->registry : KVP11_DEFAULT_REGISTRY;
}

static int reg_backup(kvp_tool *t, kvp_tool_args *a)
{
  const char *file = a->operand;
  const int json = a->v[O_JSON] != NULL;
  char err[KVP_ERRLEN] = "";
  if (kvp_tool_load_config(t) || kvp_tool_open_registry_ro(t))
    return KVP_EXIT_ERROR;
  if (!t->reg)
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "registry %s does not exist yet: nothing to back up",
                         reg_path(t));
  if (kvp_registry_backup(t->reg, file, err, sizeof(err)) != KVP_OK)
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "%s", err);
  if (json)
    return kvp_tool_print_json(stdout, json_pack("{s:s, s:s, s:s}", "action", "backup", "registry",
                                                 reg_path(t), "file", file))
               ? KVP_EXIT_ERROR
               : KVP_EXIT_OK;
  printf("backed up registry %s to %s\n", reg_path(t), file);
  return KVP_EXIT_OK;
}

static int reg_restore(kvp_tool *t, kvp_tool_args *a)
{
  const char *file = a->operand;
  const int json = a->v[O_JSON] != NULL;
  char err[KVP_ERRLEN] = "";
  int64_t schema = 0;
  kvp_cert_rec *recs = NULL;
  size_t n = 0;
  if (kvp_tool_load_config(t))
    return KVP_EXIT_ERROR;
  /* refuse a bad file before the registry is even opened */
  if (kvp_registry_check_file(file, &schema, err, sizeof(err)) != KVP_OK)
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "%s", err);
  if (kvp_tool_open_registry(t))
    return KVP_EXIT_ERROR;
  if (kvp_registry_restore(t->reg, file, err, sizeof(err)) != KVP_OK ||
      kvp_registry_list(t->reg, NULL, &recs, &n, err, sizeof(err)) != KVP_OK)
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "%s", err);
  kvp_cert_rec_free_array(recs, n);
  kvp_audit_change("registry restore", NULL, file, NULL, NULL, NULL);
  if (json)
    return kvp_tool_print_json(stdout, json_pack("{s:s, s:s, s:s, s:I, s:I}", "action", "restore",
                                                 "registry", reg_path(t), "file", file, "schema",
                                                 (json_int_t)schema, "entries", (json_int_t)n))
               ? KVP_EXIT_ERROR
               : KVP_EXIT_OK;
  printf("restored registry %s from %s (%zu entries; running modules reload it)\n", reg_path(t),
         file, n);
  return KVP_EXIT_OK;
}

/* One entry's problem, or NULL. */
static const char *entry_problem(kvp_tool *t, const kvp_cert_rec *r, char *buf, size_t len)
{
  char err[KVP_ERRLEN] = "";
  if (r->der_len > 0) {
    kvp_cert_rec c = {0};
    int bad = kvp_cert_fill_rec(r->der, r->der_len, &c, err, sizeof(err)) != KVP_OK ||
              strcmp(c.sha256, r->sha256) != 0;
    kvp_cert_rec_clear(&c);
    if (bad) {
      snprintf(buf, len, "the stored certificate does not parse or does not match its "
               "thumbprint%s%s", err[0] ? ": " : "", err);
      return buf;
    }
  }
  if (r->type == KVP_CERT_PRIVATE) {
    char *scheme = NULL, *store = NULL, *key = NULL;
    int ok = kvp_keyref_parse(r->key_ref, &scheme, &store, &key, err, sizeof(err)) == KVP_OK;
    if (!ok)
      snprintf(buf, len, "bad key reference '%s': %s", r->key_ref, err);
    else if (strcmp(scheme, "hsm") == 0 ? !kvp_config_find_hsm(t->cfg, store)
                                        : !kvp_config_find_vault(t->cfg, store))
      snprintf(buf, len, "key reference %s: %s '%s' is not configured in %s", r->key_ref,
               strcmp(scheme, "hsm") == 0 ? "hsm" : "vault", store, t->cfg->path);
    else
      buf[0] = '\0';
    free(scheme);
    free(store);
    free(key);
    if (buf[0])
      return buf;
  }
  return NULL;
}

static int reg_check(kvp_tool *t, kvp_tool_args *a)
{
  const int json = a->v[O_JSON] != NULL;
  char err[KVP_ERRLEN] = "", buf[2 * KVP_ERRLEN];
  kvp_cert_rec *recs = NULL;
  size_t n = 0, bad = 0;
  if (kvp_tool_load_config(t) || kvp_tool_open_registry_ro(t))
    return KVP_EXIT_ERROR;
  if (!t->reg)
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "registry %s does not exist yet", reg_path(t));
  int64_t schema = 0;
  /* SQLite's integrity check, on a connection of its own (read-only) */
  if (kvp_registry_check_file(reg_path(t), &schema, err, sizeof(err)) != KVP_OK ||
      kvp_registry_list(t->reg, NULL, &recs, &n, err, sizeof(err)) != KVP_OK)
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "%s", err);
  json_t *arr = json ? json_array() : NULL;
  for (size_t i = 0; i < n; i++) {
    const char *p = entry_problem(t, &recs[i], buf, sizeof(buf));
    bad += p != NULL;
    if (arr)
      json_array_append_new(arr, json_pack("{s:s, s:s, s:s, s:s?}", "account", recs[i].account,
                                           "name", recs[i].name, "result", p ? "fail" : "ok",
                                           "detail", p));
    else if (p)
      printf("%s/%s: %s\n", recs[i].account, recs[i].name, p);
  }
  kvp_cert_rec_free_array(recs, n);
  if (arr && kvp_tool_print_json(stdout, arr) != 0)
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "cannot format the output");
  if (bad)
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "%zu of %zu entries have a problem", bad, n);
  if (!json)
    printf("registry %s: integrity ok, %zu entries ok\n", reg_path(t), n);
  return KVP_EXIT_OK;
}

int kvp_tool_registry(kvp_tool *t, int argc, char **argv)
{
  return kvp_tool_run_group(t, "registry", argc, argv, kvp_tool_registry_usage, reg_cmds,
                            KVP_ARRAY_SIZE(reg_cmds), NULL);
}
