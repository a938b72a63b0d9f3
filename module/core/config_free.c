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
  free(h->name);
  free(h->module);
  free(h->token_label);
  free(h->serial);
  free(h->pin_file);
  free(h->pin_env);
}

static void free_vault(kvp_vault_conf *v)
{
  char *fields[] = {v->name,
                    v->url,
                    v->api_version,
                    v->tenant_id,
                    v->client_id,
                    v->client_secret_file,
                    v->client_secret_env,
                    v->client_cert_file,
                    v->client_key_file,
                    v->authority_host,
                    v->imds_endpoint,
                    v->ca_file,
                    v->resource};

  for (size_t i = 0; i < KVP_ARRAY_SIZE(fields); i++)
    free(fields[i]);
}

void kvp_config_free(kvp_config *cfg)
{
  if (cfg == NULL)
    return;
  for (size_t i = 0; i < cfg->n_hsms; i++)
    free_hsm(&cfg->hsms[i]);
  for (size_t i = 0; i < cfg->n_vaults; i++)
    free_vault(&cfg->vaults[i]);
  for (size_t i = 0; i < cfg->n_accounts; i++) {
    free(cfg->accounts[i].name);
    free(cfg->accounts[i].label);
    free(cfg->accounts[i].default_store);
  }
  for (size_t i = 0; i < cfg->n_ias; i++) {
    free_vault(&cfg->ias[i].cred);
    free(cfg->ias[i].resource_id);
    free(cfg->ias[i].account);
    free(cfg->ias[i].vault_map);
    free(cfg->ias[i].resource);
  }
  free(cfg->ias);
  free(cfg->hsms);
  free(cfg->vaults);
  free(cfg->accounts);
  free(cfg->path);
  free(cfg->registry);
  free(cfg->log_file);
  free(cfg->audit);
  free(cfg);
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
