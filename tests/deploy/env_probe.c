/*
 * env_probe: prints what kvp11's configuration layer takes from the
 * environment, so tests/deploy/test_trust.sh can run it setuid and check that
 * a setuid/setgid (AT_SECURE) process ignores KVP11_CONF, KVP11_REGISTRY,
 * KVP11_DEBUG and the pin_env variable.
 */
#include <stdio.h>

#include "core/config.h"

int main(void)
{
  const char *dbg = kvp_getenv("KVP11_DEBUG");
  const char *reg = kvp_getenv("KVP11_REGISTRY");
  const char *az = kvp_getenv("AZURE_CLIENT_ID");

  printf("conf=%s\n", kvp_config_default_path());
  printf("registry=%s\n", reg != NULL ? reg : "(ignored)");
  printf("debug=%s\n", dbg != NULL ? dbg : "(ignored)");
  printf("azure=%s\n", az != NULL ? az : "(ignored)");
  return 0;
}
