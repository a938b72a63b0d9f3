/*
 * The one way the kvp11 command opens a configured key store: resolve
 * --hsm / --vault (or a registered key reference) in the configuration,
 * create the backend, log in to an HSM whose PIN the tool has to give, and
 * report a failure with the reason the backend recorded (core/status.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "tool.h"

int kvp_tool_store_find(kvp_tool *t, int is_hsm, const char *name, kvp_tool_store *s)
{
  memset(s, 0, sizeof(*s));
  s->is_hsm = is_hsm;
  s->kind = is_hsm ? "hsm" : "vault";
  s->name = name;
  s->hc = is_hsm ? kvp_config_find_hsm(t->cfg, name) : NULL;
  s->vc = is_hsm ? NULL : kvp_config_find_vault(t->cfg, name);
  if (!s->hc && !s->vc)
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "%s '%s' is not configured in %s", s->kind, name,
                         t->cfg->path);
  s->name = s->hc ? s->hc->name : s->vc->name; /* lives as long as the configuration */
  return KVP_EXIT_OK;
}

int kvp_tool_store_find_ref(kvp_tool *t, const char *ref, kvp_tool_store *s, char **key)
{
  char err[KVP_ERRLEN] = "";
  char *scheme = NULL, *store = NULL;
  *key = NULL;
  memset(s, 0, sizeof(*s));
  if (!ref || kvp_keyref_parse(ref, &scheme, &store, key, err, sizeof(err)) != KVP_OK)
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "bad key reference '%s': %s", ref ? ref : "", err);
  int is_hsm = strcmp(scheme, "hsm") == 0;
  /* the store's name must outlive this call: find it in the configuration */
  const char *name = NULL;
  if (is_hsm && kvp_config_find_hsm(t->cfg, store))
    name = kvp_config_find_hsm(t->cfg, store)->name;
  else if (!is_hsm && kvp_config_find_vault(t->cfg, store))
    name = kvp_config_find_vault(t->cfg, store)->name;
  int rc = name ? kvp_tool_store_find(t, is_hsm, name, s)
                : kvp_tool_fail(t, KVP_EXIT_ERROR, "%s '%s' is not configured in %s",
                                is_hsm ? "hsm" : "vault", store, t->cfg->path);
  free(scheme);
  free(store);
  if (rc != KVP_EXIT_OK) {
    free(*key);
    *key = NULL;
  }
  return rc;
}

/* A secret taken from the environment: overwrite it in place and drop the variable. */
void kvp_tool_env_wipe(const char *var, char *value)
{
  if (value == NULL)
    return;
  kvp_wipe(value, strlen(value));
  unsetenv(var);
}

static int store_login(kvp_tool *t, kvp_tool_store *s, const char *pin_file, int need_login)
{
  char err[KVP_ERRLEN] = "";
  char *pin = NULL;
  size_t pin_len = 0;
  char *env = getenv("KVP11_PIN");

  if (!s->be->ops->needs_login || !s->be->ops->needs_login(s->be)) {
    if (pin_file)
      kvp_tool_warn(t, "--pin-file ignored: [hsm %s] has its own pin_file/pin_env", s->name);
    return KVP_EXIT_OK;
  }
  if (pin_file) {
    if (kvp_secret_read_file(pin_file, &pin, &pin_len, err, sizeof(err)) != KVP_OK)
      return kvp_tool_fail(t, KVP_EXIT_ERROR, "%s", err);
  } else if (env && *env) {
    pin_len = strlen(env);
    pin = strdup(env);
    kvp_tool_env_wipe("KVP11_PIN", env);
    if (!pin)
      return kvp_tool_fail(t, KVP_EXIT_ERROR, "out of memory");
  } else if (need_login) {
    return kvp_tool_fail(t, KVP_EXIT_ERROR,
                         "hsm '%s' has no pin_file or pin_env: give the user PIN with "
                         "--pin-file F or KVP11_PIN",
                         s->name);
  } else {
    return KVP_EXIT_OK;
  }
  CK_RV rv = kvp_backend_login(s->be, (const CK_UTF8CHAR *)pin, (CK_ULONG)pin_len);
  kvp_free_secret(pin);
  if (rv != CKR_OK)
    return kvp_tool_store_fail(t, s, "login", rv);
  return KVP_EXIT_OK;
}

CK_RV kvp_tool_store_backend(kvp_tool_store *s)
{
  CK_RV rv = s->hc ? kvp_hsm_backend_new(s->hc, &s->be) : kvp_keyvault_backend_new(s->vc, &s->be);
  if (rv == CKR_OK && !s->be)
    rv = CKR_GENERAL_ERROR;
  if (rv != CKR_OK)
    s->be = NULL;
  return rv;
}

int kvp_tool_store_open(kvp_tool *t, kvp_tool_store *s, const char *pin_file, int need_login)
{
  CK_RV rv = kvp_tool_store_backend(s);
  if (rv != CKR_OK)
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "%s '%s': cannot use this key store: %s", s->kind,
                         s->name, kvp_tool_reason(t, rv));
  return store_login(t, s, pin_file, need_login);
}

void kvp_tool_store_close(kvp_tool_store *s)
{
  if (s->be)
    s->be->ops->destroy(s->be, 0);
  s->be = NULL;
}

int kvp_tool_store_fail(kvp_tool *t, const kvp_tool_store *s, const char *what, CK_RV rv)
{
  return kvp_tool_fail(t, KVP_EXIT_ERROR, "%s '%s': %s failed: %s", s->kind, s->name, what,
                       kvp_tool_reason(t, rv));
}

int kvp_tool_store_key(kvp_tool *t, kvp_tool_store *s, const char *name, kvp_key **key)
{
  *key = NULL;
  CK_RV rv = kvp_backend_open_key(s->be, name, NULL, key);
  if (rv == CKR_KEY_HANDLE_INVALID)
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "%s '%s' has no key '%s'", s->kind, s->name, name);
  if (rv == CKR_OK && (!*key || !(*key)->pub))
    rv = CKR_GENERAL_ERROR;
  if (rv != CKR_OK) {
    if (*key)
      s->be->ops->close_key(s->be, *key);
    *key = NULL;
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "%s '%s': cannot read key '%s': %s", s->kind, s->name,
                         name, kvp_tool_reason(t, rv));
  }
  return KVP_EXIT_OK;
}
