/*
 * Fuzz target: the configuration parser (kvp_config_load, inih underneath).
 * The input is written to one temporary file per process and loaded; a
 * successful load must satisfy the promises of config.h (at least one
 * account, every default_store naming a known hsm or vault).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/config.h"
#include "core/util.h"
#include "fuzz_common.h"

static char conf_path[512];

static void remove_conf(void)
{
  if (conf_path[0] != '\0')
    unlink(conf_path);
}

static const char *const seeds[][2] = {
  {"empty.conf", ""},
  {"global.conf", "[global]\nregistry = /tmp/kvp11-fuzz-registry.db\nlog_level = debug\n"},
  {"full.conf",
   "; comment\n[global]\nregistry = /var/lib/kvp11/registry.db\nlog_level = info\n"
   "log_file = /tmp/kvp11-fuzz.log\n\n"
   "[hsm appliance]\nmodule = /usr/lib/softhsm/libsofthsm2.so\ntoken_label = b2b\n"
   "pin_env = KVP11_FUZZ_NO_SUCH_PIN\n\n"
   "[hsm second]\nmodule = /usr/lib/softhsm/libsofthsm2.so\nserial = 0123456789abcdef\n\n"
   "[vault prod]\nurl = https://prod.vault.azure.net\napi_version = 7.5\nauth = client-secret\n"
   "tenant_id = 00000000-0000-0000-0000-000000000000\n"
   "client_id = 11111111-1111-1111-1111-111111111111\n"
   "client_secret_env = KVP11_FUZZ_NO_SUCH_SECRET\ntimeout_ms = 30000\nmax_retries = 5\n\n"
   "[vault mi]\nurl = https://mi.vault.azure.net/\nauth = managed-identity\n"
   "imds_endpoint = http://127.0.0.1:1\n\n"
   "[vault wi]\nurl = https://wi.vault.azure.net\nauth = workload-identity\napi_version = 2025-07-01\n"
   "authority_host = https://login.microsoftonline.com\n\n"
   "[account default]\nlabel = B2B default\ndefault_store = hsm:appliance\n\n"
   "[account cloud]\ndefault_store = vault:prod\n"},
  {"cert-auth.conf",
   "[vault c]\nurl = https://c.vault.azure.net\nauth = client-certificate\ntenant_id = t\n"
   "client_id = c\nclient_cert_file = /nonexistent/cert.pem\n"
   "client_key_file = /nonexistent/key.pem\nca_file = /etc/ssl/certs/ca-certificates.crt\n"},
  {"bad-section.conf", "[nope x]\nfoo = bar\n"},
  {"dup-section.conf", "[account a]\n[account a]\n"},
  {"bad-store.conf", "[account a]\ndefault_store = hsm:missing\n"},
  {"bad-values.conf",
   "[global]\nlog_level = loud\n[vault v]\nurl = http://x\ntimeout_ms = -1\nmax_retries = 99999999999\n"},
  {"no-equals.conf", "[global]\nregistry\n=\n[\n]]\n"},
  {"long-line.conf",
   "[global]\nregistry = /aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
   "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n"},
};

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
  const char *dir = fuzz_seed_dir();
  const char *tmp = getenv("TMPDIR");

  if (dir != NULL) {
    for (size_t i = 0; i < KVP_ARRAY_SIZE(seeds); i++)
      if (fuzz_seed_str(dir, seeds[i][0], seeds[i][1]) != 0)
        exit(1);
    exit(0);
  }
  snprintf(conf_path, sizeof(conf_path), "%s/kvp11-fuzz-config.%d.conf",
           tmp != NULL && tmp[0] != '\0' ? tmp : "/tmp", (int)getpid());
  atexit(remove_conf);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  char err[KVP_ERRLEN];
  kvp_config *cfg = NULL;
  FILE *fp = fopen(conf_path, "wb");
  int rc;

  if (fp == NULL)
    abort();
  if (size > 0 && fwrite(data, 1, size, fp) != size)
    abort();
  if (fclose(fp) != 0)
    abort();
  err[0] = '\0';
  rc = kvp_config_load(conf_path, &cfg, err, sizeof(err));
  if (rc == KVP_OK) {
    FUZZ_CHECK(cfg != NULL);
    FUZZ_CHECK(cfg->n_accounts >= 1 && cfg->accounts != NULL);
    for (size_t i = 0; i < cfg->n_accounts; i++) {
      const kvp_account_conf *a = &cfg->accounts[i];
      FUZZ_CHECK(a->name != NULL);
      FUZZ_CHECK(kvp_config_find_account(cfg, a->name) != NULL);
      if (a->default_store != NULL) {
        if (strncmp(a->default_store, "hsm:", 4) == 0)
          FUZZ_CHECK(kvp_config_find_hsm(cfg, a->default_store + 4) != NULL);
        else if (strncmp(a->default_store, "vault:", 6) == 0)
          FUZZ_CHECK(kvp_config_find_vault(cfg, a->default_store + 6) != NULL);
      }
    }
    for (size_t i = 0; i < cfg->n_hsms; i++)
      FUZZ_CHECK(cfg->hsms[i].module != NULL);
    for (size_t i = 0; i < cfg->n_vaults; i++)
      FUZZ_CHECK(cfg->vaults[i].url != NULL);
    kvp_config_free(cfg);
  } else {
    /* every failure says what is wrong */
    FUZZ_CHECK(err[0] != '\0');
  }
  return 0;
}
