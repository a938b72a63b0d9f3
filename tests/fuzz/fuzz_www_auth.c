/*
 * Fuzz target: the WWW-Authenticate challenge parser of the Key Vault backend
 * (kv_challenge_parse) and what is done with its result: the resource check
 * against the vault's host (kv_resource_check, kv_url_host).
 *
 * Input: the header value. Oracles: a parsed challenge has a resource or a
 * scope; an accepted resource is "https://" + a host that is the vault's
 * host or one of its parent domains.
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "backend/keyvault/kv.h"
#include "core/util.h"
#include "fuzz_common.h"

#define VAULT_HOST "myvault.vault.azure.net"

static const char *const seeds[][2] = {
  {"kv.txt",
   "Bearer authorization=\"https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47\", "
   "resource=\"https://vault.azure.net\""},
  {"kv-scope.txt",
   "Bearer authorization=\"https://login.microsoftonline.com/tenant\", "
   "scope=\"https://vault.azure.net/.default\""},
  {"mhsm.txt",
   "Bearer authorization=\"https://login.microsoftonline.com/t\", "
   "resource=\"https://managedhsm.azure.net\""},
  {"uri.txt", "Bearer authorization_uri=https://login.windows.net/t,resource=https://vault.azure.net"},
  {"foreign.txt", "Bearer authorization=\"https://evil.example/t\", resource=\"https://evil.example\""},
  {"http.txt", "bearer resource=\"http://vault.azure.net\""},
  {"port.txt", "Bearer resource=\"https://VAULT.azure.net.:443/x\""},
  {"userinfo.txt", "Bearer resource=\"https://vault.azure.net@evil.example\""},
  {"ipv6.txt", "Bearer resource=\"https://[::1]:8443\""},
  {"unterminated.txt", "Bearer resource=\"https://vault.azure.net"},
  {"bare.txt", "Bearer realm, error=\"invalid_token\",,, scope=https://vault.azure.net/.default"},
  {"basic.txt", "Basic realm=\"x\""},
  {"empty.txt", ""},
};

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
  const char *dir = fuzz_seed_dir();
  if (dir != NULL) {
    for (size_t i = 0; i < KVP_ARRAY_SIZE(seeds); i++)
      if (fuzz_seed_str(dir, seeds[i][0], seeds[i][1]) != 0)
        exit(1);
    exit(0);
  }
  return 0;
}

static int host_ok(const char *host)
{
  static const char vault[] = VAULT_HOST;
  size_t hl = strlen(host), vl = strlen(vault);
  if (hl == 0)
    return 0;
  if (strcmp(host, vault) == 0)
    return 1;
  return vl > hl + 1 && vault[vl - hl - 1] == '.' && strcmp(&vault[vl - hl], host) == 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  char *hdr = fuzz_strndup(data, size), *res = NULL, *host;
  kv_challenge c;

  if (hdr == NULL)
    return 0;
  host = kv_url_host(hdr);
  if (host != NULL)
    FUZZ_CHECK(strchr(host, '@') == NULL);
  free(host);

  if (kv_challenge_parse(hdr, &c) == 0) {
    FUZZ_CHECK(c.resource != NULL || c.scope != NULL);
    if (kv_resource_check(&c, VAULT_HOST, &res) == 0) {
      FUZZ_CHECK(res != NULL && strncmp(res, "https://", 8) == 0);
      FUZZ_CHECK(host_ok(res + 8));
    } else {
      FUZZ_CHECK(res == NULL);
    }
    free(res);
    kv_challenge_clear(&c);
  } else {
    FUZZ_CHECK(c.authorization == NULL && c.resource == NULL && c.scope == NULL);
  }
  free(hdr);
  return 0;
}
