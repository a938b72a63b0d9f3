/*
 * kvp11.conf: releasing a loaded configuration and finding its sections by
 * name (see config.h). The parser is config.c, file trust config_files.c.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "util.h"

/* ---- free and find ----------------------------------------------------- */

static void free_hsm(kvp_hsm_conf *h)
{
  KVP_FREE_ALL(h->name, h->module, h->token_label, h->serial, h->pin_file, h->pin_env);
}

void kvp_vault_conf_clear(kvp_vault_conf *v)
{
  KVP_FREE_ALL(v->name, v->url, v->api_version, v->tenant_id, v->client_id, v->client_secret_file,
               v->client_secret_env, v->client_cert_file, v->client_key_file, v->authority_host,
               v->imds_endpoint, v->ca_file, v->resource);
}

void kvp_config_free(kvp_config *cfg)
{
  if (cfg == NULL)
    return;
  for (size_t i = 0; i < cfg->n_hsms; i++)
    free_hsm(&cfg->hsms[i]);
  for (size_t i = 0; i < cfg->n_vaults; i++)
    kvp_vault_conf_clear(&cfg->vaults[i]);
  for (size_t i = 0; i < cfg->n_accounts; i++)
    KVP_FREE_ALL(cfg->accounts[i].name, cfg->accounts[i].label, cfg->accounts[i].default_store);
  for (size_t i = 0; i < cfg->n_ias; i++) {
    kvp_vault_conf_clear(&cfg->ias[i].cred);
    KVP_FREE_ALL(cfg->ias[i].resource_id, cfg->ias[i].account, cfg->ias[i].vault_map,
                 cfg->ias[i].resource);
  }
  KVP_FREE_ALL(cfg->ias, cfg->hsms, cfg->vaults, cfg->accounts, cfg->path, cfg->registry,
               cfg->log_file, cfg->audit, cfg);
}

#define FIND_BY_NAME(arr, n, name)                                                                 \
  do {                                                                                             \
    for (size_t i_ = 0; cfg != NULL && name != NULL && i_ < (n); i_++)                             \
      if (strcmp((arr)[i_].name, (name)) == 0)                                                     \
        return &(arr)[i_];                                                                         \
    return NULL;                                                                                   \
  } while (0)

const kvp_hsm_conf *kvp_config_find_hsm(const kvp_config *cfg, const char *name)
{
  FIND_BY_NAME(cfg->hsms, cfg->n_hsms, name);
}

const kvp_vault_conf *kvp_config_find_vault(const kvp_config *cfg, const char *name)
{
  FIND_BY_NAME(cfg->vaults, cfg->n_vaults, name);
}

const kvp_account_conf *kvp_config_find_account(const kvp_config *cfg, const char *name)
{
  FIND_BY_NAME(cfg->accounts, cfg->n_accounts, name);
}

const kvp_ia_conf *kvp_config_find_ia(const kvp_config *cfg, const char *name)
{
  for (size_t i = 0; name != NULL && i < cfg->n_ias; i++)
    if (strcmp(cfg->ias[i].cred.name, name) == 0)
      return &cfg->ias[i];
  return NULL;
}
