/*
 * Unit tests of module/core/config.c: kvp11.conf parsing and validation,
 * KVP11_CONF, secret files and PIN sources.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CUnit/Basic.h>
#include <CUnit/CUnit.h>

#include "core/config.h"
#include "core/log.h"
#include "core/util.h"
#include "kvp11/kvp11.h"
#include "unit_util.h"

static char g_dir[1024];

static void path_of(char *out, size_t n, const char *name)
{
  snprintf(out, n, "%s/%s", g_dir, name);
}

static void write_file(const char *name, mode_t mode, const char *text)
{
  char path[1200];
  FILE *f;

  path_of(path, sizeof(path), name);
  unlink(path);
  f = fopen(path, "w");
  CU_ASSERT_PTR_NOT_NULL_FATAL(f);
  fputs(text, f);
  fclose(f);
  chmod(path, mode);
}

/* Write test.conf with text, load it; returns rc, message in err. */
static int load(const char *text, kvp_config **cfg, char *err)
{
  char path[1200];

  write_file("test.conf", 0644, text);
  path_of(path, sizeof(path), "test.conf");
  err[0] = '\0';
  return kvp_config_load(path, cfg, err, KVP_ERRLEN);
}

/* Load text and expect failure rc with a message containing want. */
static void expect_error(const char *text, int rc, const char *want)
{
  kvp_config *cfg = (kvp_config *)1;
  char err[KVP_ERRLEN];
  int got = load(text, &cfg, err);

  CU_ASSERT_EQUAL(got, rc);
  CU_ASSERT_PTR_NULL(cfg);
  CU_ASSERT_PTR_NOT_NULL(strstr(err, want));
  if (got != rc || strstr(err, want) == NULL)
    fprintf(stderr, "\n  config:\n%s\n  expected %d '%s'\n  got      %d '%s'\n", text, rc, want,
            got, err);
  if (got == KVP_OK)
    kvp_config_free(cfg);
}

static void setup_secrets(void)
{
  char dir[1200];

  write_file("pin.ok", 0600, "1234\n");
  write_file("pin.loose", 0644, "1234\n");
  write_file("pin.group", 0660, "1234\n");
  write_file("pin.crlf", 0400, "abcd\r\n");
  write_file("pin.nonl", 0600, "5678");
  write_file("pin.two", 0600, "x\n\n");
  write_file("pin.empty", 0600, "\n");
  write_file("secret.ok", 0600, "client-secret-value\n");
  write_file("secret.loose", 0604, "client-secret-value\n");
  write_file("key.pem", 0600, "not really a key\n");
  path_of(dir, sizeof(dir), "adir");
  mkdir(dir, 0700);
}

/* ---- good configurations ---- */

static void test_defaults(void)
{
  kvp_config *cfg = NULL;
  char err[KVP_ERRLEN];

  CU_ASSERT_EQUAL_FATAL(load("; nothing but a comment\n\n", &cfg, err), KVP_OK);
  CU_ASSERT_STRING_EQUAL(cfg->registry, KVP11_DEFAULT_REGISTRY);
  CU_ASSERT_EQUAL(cfg->log_level, KVP_LOG_WARN);
  CU_ASSERT_PTR_NULL(cfg->log_file);
  CU_ASSERT_EQUAL(cfg->n_hsms, 0);
  CU_ASSERT_EQUAL(cfg->n_vaults, 0);
  CU_ASSERT_EQUAL_FATAL(cfg->n_accounts, 1);
  CU_ASSERT_STRING_EQUAL(cfg->accounts[0].name, "default");
  CU_ASSERT_STRING_EQUAL(cfg->accounts[0].label, "default");
  CU_ASSERT_PTR_NOT_NULL(kvp_config_find_account(cfg, "default"));
  CU_ASSERT_PTR_NOT_NULL(strstr(cfg->path, "test.conf"));
  kvp_config_free(cfg);
}

static const char full_conf[] = "\xEF\xBB\xBF# a full configuration\n"
                                "[global]\n"
                                "registry = reg/registry.db\n"
                                "log_level = debug   ; inline comment\n"
                                "log_file = /var/log/kvp11.log\n"
                                "\n"
                                "[hsm appliance]\n"
                                "module = /usr/lib/softhsm/libsofthsm2.so\n"
                                "  token_label = b2b\n"
                                "  pin_file = pin.ok\n"
                                "[hsm second]\n"
                                "module = /usr/lib/libother.so\n"
                                "serial = 0123456789abcdef\n"
                                "pin_env = HSM_PIN\n"
                                "[vault prod]\n"
                                "url = https://name.vault.azure.net/\n"
                                "api_version = 2025-07-01\n"
                                "auth = client-secret\n"
                                "tenant_id = t\n"
                                "client_id = c\n"
                                "client_secret_file = secret.ok\n"
                                "timeout_ms = 1500\n"
                                "max_retries = 0\n"
                                "ca_file = ca.pem\n"
                                "[vault mi]\n"
                                "url = https://mi.vault.azure.net\n"
                                "auth = managed-identity\n"
                                "[vault cert]\n"
                                "url = https://c.managedhsm.azure.net\n"
                                "auth = client-certificate\n"
                                "tenant_id = t\n"
                                "client_id = c\n"
                                "client_cert_file = cert.pem\n"
                                "client_key_file = key.pem\n"
                                "authority_host = https://127.0.0.1:8443\n"
                                "imds_endpoint = http://127.0.0.1:8080\n"
                                "[account default]\n"
                                "label = B2B default\n"
                                "default_store = hsm:appliance\n"
                                "[account partner-b]\n"
                                "default_store = vault:prod\n";

static void test_full(void)
{
  kvp_config *cfg = NULL;
  char err[KVP_ERRLEN], want[1200];
  const kvp_hsm_conf *h;
  const kvp_vault_conf *v;
  const kvp_account_conf *a;
  int rc = load(full_conf, &cfg, err);

  if (rc != KVP_OK)
    fprintf(stderr, "\n  %s\n", err);
  CU_ASSERT_EQUAL_FATAL(rc, KVP_OK);
  path_of(want, sizeof(want), "reg/registry.db");
  CU_ASSERT_STRING_EQUAL(cfg->registry, want);
  CU_ASSERT_EQUAL(cfg->log_level, KVP_LOG_DEBUG);
  CU_ASSERT_STRING_EQUAL(cfg->log_file, "/var/log/kvp11.log");
  CU_ASSERT_EQUAL(cfg->n_hsms, 2);
  CU_ASSERT_EQUAL(cfg->n_vaults, 3);
  CU_ASSERT_EQUAL(cfg->n_accounts, 2);

  h = kvp_config_find_hsm(cfg, "appliance");
  CU_ASSERT_PTR_NOT_NULL_FATAL(h);
  CU_ASSERT_STRING_EQUAL(h->module, "/usr/lib/softhsm/libsofthsm2.so");
  CU_ASSERT_STRING_EQUAL(h->token_label, "b2b");
  CU_ASSERT_PTR_NULL(h->serial);
  path_of(want, sizeof(want), "pin.ok");
  CU_ASSERT_STRING_EQUAL(h->pin_file, want);
  CU_ASSERT_EQUAL(h->line, 7);
  h = kvp_config_find_hsm(cfg, "second");
  CU_ASSERT_PTR_NOT_NULL_FATAL(h);
  CU_ASSERT_STRING_EQUAL(h->module, "/usr/lib/libother.so");
  CU_ASSERT_STRING_EQUAL(h->serial, "0123456789abcdef");
  CU_ASSERT_STRING_EQUAL(h->pin_env, "HSM_PIN");
  CU_ASSERT_PTR_NULL(kvp_config_find_hsm(cfg, "nope"));

  v = kvp_config_find_vault(cfg, "prod");
  CU_ASSERT_PTR_NOT_NULL_FATAL(v);
  CU_ASSERT_STRING_EQUAL(v->url, "https://name.vault.azure.net");
  CU_ASSERT_STRING_EQUAL(v->api_version, "2025-07-01");
  CU_ASSERT_EQUAL(v->auth, KVP_AUTH_CLIENT_SECRET);
  CU_ASSERT_EQUAL(v->timeout_ms, 1500);
  CU_ASSERT_EQUAL(v->max_retries, 0);
  CU_ASSERT_PTR_NULL(v->authority_host); /* the backend reads AZURE_AUTHORITY_HOST first */
  CU_ASSERT_STRING_EQUAL(v->imds_endpoint, "http://169.254.169.254");
  path_of(want, sizeof(want), "ca.pem");
  CU_ASSERT_STRING_EQUAL(v->ca_file, want);
  v = kvp_config_find_vault(cfg, "mi");
  CU_ASSERT_PTR_NOT_NULL_FATAL(v);
  CU_ASSERT_EQUAL(v->auth, KVP_AUTH_MANAGED_IDENTITY);
  CU_ASSERT_STRING_EQUAL(v->api_version, "7.5");
  CU_ASSERT_EQUAL(v->timeout_ms, 30000);
  CU_ASSERT_EQUAL(v->max_retries, 5);
  v = kvp_config_find_vault(cfg, "cert");
  CU_ASSERT_PTR_NOT_NULL_FATAL(v);
  CU_ASSERT_EQUAL(v->auth, KVP_AUTH_CLIENT_CERTIFICATE);
  CU_ASSERT_STRING_EQUAL(v->authority_host, "https://127.0.0.1:8443");
  CU_ASSERT_STRING_EQUAL(v->imds_endpoint, "http://127.0.0.1:8080");

  a = kvp_config_find_account(cfg, "default");
  CU_ASSERT_PTR_NOT_NULL_FATAL(a);
  CU_ASSERT_STRING_EQUAL(a->label, "B2B default");
  CU_ASSERT_STRING_EQUAL(a->default_store, "hsm:appliance");
  a = kvp_config_find_account(cfg, "partner-b");
  CU_ASSERT_PTR_NOT_NULL_FATAL(a);
  CU_ASSERT_STRING_EQUAL(a->label, "partner-b");
  CU_ASSERT_EQUAL(a->line, 40);
  kvp_config_free(cfg);
}

/* ---- errors ---- */

static void test_missing_file(void)
{
  kvp_config *cfg = (kvp_config *)1;
  char err[KVP_ERRLEN], path[1200];

  path_of(path, sizeof(path), "does-not-exist.conf");
  CU_ASSERT_EQUAL(kvp_config_load(path, &cfg, err, sizeof(err)), KVP_ENOTFOUND);
  CU_ASSERT_PTR_NULL(cfg);
  CU_ASSERT_PTR_NOT_NULL(strstr(err, "does-not-exist.conf: cannot open"));
}

static void test_sections(void)
{
  expect_error("[global]\nregistry = /x\n\n[foo]\n", KVP_EINVAL,
               "test.conf:4: [foo]: unknown section");
  expect_error("[hsm a]\nmodule = /m\ntoken_label = t\n[hsm a]\nmodule = /m\n", KVP_EINVAL,
               "test.conf:4: [hsm a]: duplicate section (first at line 1)");
  expect_error("[global]\n[global]\n", KVP_EINVAL,
               "test.conf:2: [global]: duplicate section (first at line 1)");
  expect_error("[account x]\n[vault v]\nurl=https://v\nauth=managed-identity\n[account x]\n",
               KVP_EINVAL, "test.conf:5: [account x]: duplicate section (first at line 1)");
  expect_error("[hsm]\nmodule = /m\n", KVP_EINVAL, "test.conf:1: [hsm]: needs a name");
  expect_error("[hsm a/b]\n", KVP_EINVAL, "test.conf:1: [hsm a/b]: needs a name");
  expect_error("[global extra]\n", KVP_EINVAL,
               "test.conf:1: [global extra]: [global] takes no name");
  expect_error("\n[hsm a\nmodule = /m\n", KVP_EINVAL, "test.conf:2: section header without ']'");
  expect_error("registry = /x\n", KVP_EINVAL,
               "test.conf:1: key 'registry': outside of any section");
}

static void test_keys(void)
{
  expect_error("[global]\nregistry = /x\nregistri = /y\n", KVP_EINVAL,
               "test.conf:3: [global] key 'registri': unknown key (known: registry, log_level, "
               "log_file, audit)");
  expect_error("[hsm a]\nmodule = /m\nmodul = m\n", KVP_EINVAL,
               "test.conf:3: [hsm a] key 'modul': unknown key");
  expect_error("[global]\nlog_level = info\nlog_level = debug\n", KVP_EINVAL,
               "test.conf:3: [global] key 'log_level': set twice (first at line 2)");
  expect_error(
      "[global]\nlog_level = loud\n", KVP_EINVAL,
      "test.conf:2: [global] key 'log_level': 'loud' is not one of error, warn, info, debug");
  expect_error("[global]\nregistry =\n", KVP_EINVAL,
               "test.conf:2: [global] key 'registry': empty value");
  expect_error("[global]\nthis line has no equals sign\n", KVP_EINVAL, "test.conf:2: syntax error");
  expect_error("[global]\n# comment\nlog_level = info\nbroken\nregistri = x\n", KVP_EINVAL,
               "test.conf:4: syntax error");
}

static void test_long_line(void)
{
  char text[600];

  snprintf(text, sizeof(text), "[global]\nregistry = /%0300d\n", 0);
  expect_error(text, KVP_EINVAL, "test.conf:2: [global]: line too long");
}

static void test_hsm(void)
{
  expect_error("[hsm a]\ntoken_label = t\n", KVP_EINVAL,
               "test.conf:1: [hsm a] key 'module': missing (required)");
  expect_error(
      "[hsm a]\nmodule = /m\ntoken_label = t\nserial = 1\n", KVP_EINVAL,
      "test.conf:4: [hsm a] key 'serial': token_label is set too (line 3); use exactly one "
      "of token_label, serial");
  expect_error("[hsm a]\nserial = 1\nmodule = /m\ntoken_label = t\n[account x]\n", KVP_EINVAL,
               "test.conf:4: [hsm a] key 'token_label': serial is set too (line 2)");
  expect_error("[hsm a]\nmodule = /m\n[account x]\n", KVP_EINVAL,
               "test.conf:1: [hsm a] key 'token_label': missing; set token_label or serial");
  expect_error("[hsm a]\nmodule = /m\ntoken_label = t\npin_env = P\npin_file = pin.ok\n", KVP_EINVAL,
               "test.conf:5: [hsm a] key 'pin_file': pin_env is set too (line 4); use at most one");
  expect_error("[hsm a]\nmodule = /m\ntoken_label = 0123456789012345678901234567890123\n",
               KVP_EINVAL, "test.conf:3: [hsm a] key 'token_label': longer than 32 bytes");
  expect_error("[hsm a]\nmodule = /m\nserial = 01234567890123456\n", KVP_EINVAL,
               "test.conf:3: [hsm a] key 'serial': longer than 16 bytes");
  expect_error("[hsm a]\nmodule = /m\ntoken_label = t\npin_env = 1PIN\n", KVP_EINVAL,
               "test.conf:4: [hsm a] key 'pin_env': '1PIN' is not an environment variable name");
}

static void test_secret_files_in_config(void)
{
  expect_error("[hsm a]\nmodule = /m\ntoken_label = t\npin_file = pin.loose\n", KVP_EPERM,
               "test.conf:4: [hsm a] key 'pin_file': ");
  expect_error("[hsm a]\nmodule = /m\ntoken_label = t\npin_file = pin.loose\n", KVP_EPERM,
               "pin.loose: mode 0644 lets others access this secret; fix: chmod 600");
  expect_error("[hsm a]\nmodule = /m\ntoken_label = t\npin_file = pin.group\n", KVP_EPERM,
               "mode 0660");
  expect_error("[hsm a]\nmodule = /m\ntoken_label = t\npin_file = no-such-pin\n", KVP_EINVAL,
               "test.conf:4: [hsm a] key 'pin_file': ");
  expect_error("[hsm a]\nmodule = /m\ntoken_label = t\npin_file = no-such-pin\n", KVP_EINVAL,
               "No such file or directory");
  expect_error("[hsm a]\nmodule = /m\ntoken_label = t\npin_file = adir\n", KVP_EINVAL,
               "adir: not a regular file");
  expect_error("[vault v]\nurl = https://v\ntenant_id = t\nclient_id = c\n"
               "client_secret_file = secret.loose\n",
               KVP_EPERM, "test.conf:5: [vault v] key 'client_secret_file': ");
  expect_error("[vault v]\nurl = https://v\nauth = client-certificate\ntenant_id = t\n"
               "client_id = c\nclient_cert_file = c.pem\nclient_key_file = pin.loose\n",
               KVP_EPERM, "test.conf:7: [vault v] key 'client_key_file': ");
}

static void test_vault(void)
{
  expect_error("[vault v]\nauth = managed-identity\n", KVP_EINVAL,
               "test.conf:1: [vault v] key 'url': missing (required)");
  expect_error(
      "[vault v]\nurl = http://v.vault.azure.net\n", KVP_EINVAL,
      "test.conf:2: [vault v] key 'url': 'http://v.vault.azure.net' is not an https:// URL");
  expect_error("[vault v]\nurl = https://\n", KVP_EINVAL, "test.conf:2: [vault v] key 'url': ");
  expect_error("[vault v]\nurl = https://v\napi_version = 7.3\n", KVP_EINVAL,
               "test.conf:3: [vault v] key 'api_version': '7.3' is not one of 7.4, 7.5, 7.6, "
               "2025-07-01");
  expect_error("[vault v]\nurl = https://v\nauth = password\n", KVP_EINVAL,
               "test.conf:3: [vault v] key 'auth': 'password' is not one of client-secret");
  expect_error("[vault v]\nurl = https://v\nauth = managed-identity\ntimeout_ms = 0\n", KVP_EINVAL,
               "test.conf:4: [vault v] key 'timeout_ms': '0' is not a positive number");
  expect_error("[vault v]\nurl = https://v\nauth = managed-identity\ntimeout_ms = -5\n", KVP_EINVAL,
               "key 'timeout_ms': '-5' is not a positive number");
  expect_error("[vault v]\nurl = https://v\nauth = managed-identity\ntimeout_ms = 10s\n",
               KVP_EINVAL, "key 'timeout_ms': '10s' is not a positive number");
  expect_error("[vault v]\nurl = https://v\nauth = managed-identity\nmax_retries = 101\n",
               KVP_EINVAL, "test.conf:4: [vault v] key 'max_retries': '101' is not a number");
  expect_error("[vault v]\nurl = https://v\nauth = managed-identity\nmax_retries = -1\n",
               KVP_EINVAL, "key 'max_retries'");
  expect_error("[vault v]\nurl = https://v\nauth = managed-identity\nauthority_host = http://x\n",
               KVP_EINVAL,
               "test.conf:4: [vault v] key 'authority_host': 'http://x' is not an https:// URL");
  expect_error("[vault v]\nurl = https://v\nauth = managed-identity\nimds_endpoint = ftp://x\n",
               KVP_EINVAL, "test.conf:4: [vault v] key 'imds_endpoint': ");
  expect_error(
      "[vault v]\nurl = https://v\nclient_id = c\nclient_secret_env = S\n", KVP_EINVAL,
      "test.conf:1: [vault v] key 'tenant_id': missing (required with auth = client-secret)");
  expect_error(
      "[vault v]\nurl = https://v\ntenant_id = t\nclient_id = c\n", KVP_EINVAL,
      "test.conf:1: [vault v] key 'client_secret_file': missing; set client_secret_file or "
      "client_secret_env");
  expect_error("[vault v]\nurl = https://v\ntenant_id = t\nclient_id = c\n"
               "client_secret_env = S\nclient_secret_file = secret.ok\n",
               KVP_EINVAL,
               "test.conf:6: [vault v] key 'client_secret_file': client_secret_env is set too");
  expect_error("[vault v]\nurl = https://v\nauth = client-certificate\ntenant_id = t\n"
               "client_id = c\nclient_cert_file = c.pem\n",
               KVP_EINVAL,
               "test.conf:1: [vault v] key 'client_key_file': missing (required with auth = "
               "client-certificate)");
}

static void test_account(void)
{
  expect_error("[account a]\ndefault_store = hsm:nope\n", KVP_EINVAL,
               "test.conf:2: [account a] key 'default_store': no [hsm nope] section is configured");
  expect_error("[vault v]\nurl=https://v\nauth=managed-identity\n[account a]\n\n"
               "default_store = vault:w\n",
               KVP_EINVAL, "test.conf:6: [account a] key 'default_store': no [vault w] section");
  expect_error(
      "[account a]\ndefault_store = appliance\n", KVP_EINVAL,
      "test.conf:2: [account a] key 'default_store': 'appliance' is not hsm:NAME or vault:NAME");
  expect_error("[account a]\nlabel = 0123456789012345678901234567890123\n", KVP_EINVAL,
               "test.conf:2: [account a] key 'label': longer than 32 bytes");
  expect_error(
      "[account a23456789012345678901234567890123]\n", KVP_EINVAL,
      "test.conf:1: [account a23456789012345678901234567890123] key 'label': missing, and the "
      "account name is longer than 32 bytes");
  expect_error("[account a]\nname = x\n", KVP_EINVAL,
               "test.conf:2: [account a] key 'name': unknown key (known: label, default_store)");
}

/* An indented line is a key of its own, not a continuation of the previous value. */
static void test_indented(void)
{
  kvp_config *cfg = NULL;
  char err[KVP_ERRLEN];

  CU_ASSERT_EQUAL_FATAL(load("[hsm a]\n   module = /m\n\ttoken_label = t\n", &cfg, err), KVP_OK);
  CU_ASSERT_STRING_EQUAL(cfg->hsms[0].module, "/m");
  CU_ASSERT_STRING_EQUAL(cfg->hsms[0].token_label, "t");
  kvp_config_free(cfg);
}

/* ---- KVP11_CONF ---- */

static void test_default_path(void)
{
  setenv("KVP11_CONF", "/tmp/some/kvp11.conf", 1);
  CU_ASSERT_STRING_EQUAL(kvp_config_default_path(), "/tmp/some/kvp11.conf");
  setenv("KVP11_CONF", "", 1);
  CU_ASSERT_STRING_EQUAL(kvp_config_default_path(), KVP11_DEFAULT_CONF);
  unsetenv("KVP11_CONF");
  CU_ASSERT_STRING_EQUAL(kvp_config_default_path(), KVP11_DEFAULT_CONF);
}

/* ---- secrets ---- */

static void expect_secret(const char *name, int rc, const char *want)
{
  char path[1200], err[KVP_ERRLEN] = "";
  char *s = (char *)1;
  size_t len = 99;
  int got;

  path_of(path, sizeof(path), name);
  got = kvp_secret_read_file(path, &s, &len, err, sizeof(err));
  CU_ASSERT_EQUAL(got, rc);
  if (rc == KVP_OK) {
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    CU_ASSERT_STRING_EQUAL(s, want);
    CU_ASSERT_EQUAL(len, strlen(want));
    kvp_free_secret(s);
  } else {
    CU_ASSERT_PTR_NULL(s);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, want));
    CU_ASSERT_PTR_NOT_NULL(strstr(err, name));
  }
}

static void test_secret_read(void)
{
  expect_secret("pin.ok", KVP_OK, "1234");
  expect_secret("pin.crlf", KVP_OK, "abcd");
  expect_secret("pin.nonl", KVP_OK, "5678");
  expect_secret("pin.two", KVP_OK, "x\n");
  expect_secret("pin.loose", KVP_EPERM, "mode 0644");
  expect_secret("pin.group", KVP_EPERM, "mode 0660");
  expect_secret("pin.empty", KVP_EINVAL, "empty");
  expect_secret("no-such-pin", KVP_ENOTFOUND, "No such file");
  expect_secret("adir", KVP_EINVAL, "not a regular file");
}

static void test_hsm_pin(void)
{
  kvp_hsm_conf h = {.name = "a"};
  char path[1200], err[KVP_ERRLEN];
  char *pin = NULL;
  size_t len = 0;

  CU_ASSERT_EQUAL(kvp_hsm_conf_pin(&h, &pin, &len, err, sizeof(err)), KVP_ENOTFOUND);
  CU_ASSERT_PTR_NULL(pin);

  path_of(path, sizeof(path), "pin.ok");
  h.pin_file = path;
  CU_ASSERT_EQUAL_FATAL(kvp_hsm_conf_pin(&h, &pin, &len, err, sizeof(err)), KVP_OK);
  CU_ASSERT_STRING_EQUAL(pin, "1234");
  CU_ASSERT_EQUAL(len, 4);
  kvp_free_secret(pin);

  h.pin_file = NULL;
  h.pin_env = "KVP11_TEST_PIN";
  unsetenv("KVP11_TEST_PIN");
  CU_ASSERT_EQUAL(kvp_hsm_conf_pin(&h, &pin, &len, err, sizeof(err)), KVP_EINVAL);
  CU_ASSERT_PTR_NOT_NULL(strstr(err, "KVP11_TEST_PIN"));
  CU_ASSERT_PTR_NOT_NULL(strstr(err, "not set"));
  setenv("KVP11_TEST_PIN", "98765", 1);
  CU_ASSERT_EQUAL_FATAL(kvp_hsm_conf_pin(&h, &pin, &len, err, sizeof(err)), KVP_OK);
  CU_ASSERT_STRING_EQUAL(pin, "98765");
  CU_ASSERT_EQUAL(len, 5);
  kvp_free_secret(pin);
  unsetenv("KVP11_TEST_PIN");
}

int main(void)
{
  static CU_TestInfo tests[] = {
      {"secret fixtures", setup_secrets},
      {"defaults", test_defaults},
      {"full configuration", test_full},
      {"missing file", test_missing_file},
      {"sections", test_sections},
      {"keys", test_keys},
      {"long line", test_long_line},
      {"hsm", test_hsm},
      {"secret files in the configuration", test_secret_files_in_config},
      {"vault", test_vault},
      {"account", test_account},
      {"indented keys", test_indented},
      {"KVP11_CONF", test_default_path},
      {"secret files", test_secret_read},
      {"hsm PIN", test_hsm_pin},
      CU_TEST_INFO_NULL,
  };

  unit_tmp_dir("config", g_dir, sizeof(g_dir));
  kvp_log_setup(KVP_LOG_ERROR, NULL);

  return unit_run_suite("config", NULL, NULL, tests);
}
