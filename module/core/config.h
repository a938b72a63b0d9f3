/*
 * kvp11.conf: [global], [hsm NAME], [vault NAME], [account NAME] sections,
 * parsed with inih. Every error names the file, the line and the key.
 *
 *   [global]
 *   registry = /var/lib/kvp11/registry.db
 *   log_level = info            ; error|warn|info|debug
 *   log_file = /var/log/kvp11.log  ; or syslog; default: stderr
 *   audit = syslog              ; or an absolute file path, or off (default)
 *
 *   [hsm appliance]
 *   module = /usr/lib/softhsm/libsofthsm2.so
 *   token_label = b2b           ; or serial = ... (exactly one of the two)
 *   pin_file = /etc/kvp11/hsm.pin   ; or pin_env = NAME; neither: the
 *                               ; application's C_Login PIN is passed through
 *
 *   [vault prod]
 *   url = https://name.vault.azure.net
 *   api_version = 7.5           ; 7.4, 7.5, 7.6, 2025-07-01
 *   auth = client-secret        ; client-certificate, managed-identity, workload-identity
 *   tenant_id, client_id, client_secret_file | client_secret_env,
 *   client_cert_file, client_key_file, authority_host, imds_endpoint,
 *   ca_file, timeout_ms, max_retries, resource, attempt_timeout_ms, key_cache_s
 *
 *   [account default]
 *   label = B2B default         ; token label (default: the account name)
 *   default_store = hsm:appliance   ; or vault:prod: where new keys are made
 *
 * Without any [account] section there is one account named "default".
 */
#ifndef KVP_CORE_CONFIG_H
#define KVP_CORE_CONFIG_H

#include <stddef.h>
#include <sys/stat.h>

/* The system group whose members may use the module in-process (docs/deployment.md). */
#ifndef KVP11_SERVICE_GROUP
#define KVP11_SERVICE_GROUP "kvp11"
#endif

typedef struct kvp_hsm_conf {
  char *name;
  char *module;      /* path of the HSM's PKCS#11 module (required) */
  char *token_label; /* token_label or serial, exactly one */
  char *serial;
  char *pin_file;    /* at most one of pin_file / pin_env */
  char *pin_env;
  int line;          /* line of the section header, for messages */
} kvp_hsm_conf;

typedef enum {
  KVP_AUTH_CLIENT_SECRET = 0,
  KVP_AUTH_CLIENT_CERTIFICATE,
  KVP_AUTH_MANAGED_IDENTITY,
  KVP_AUTH_WORKLOAD_IDENTITY,
} kvp_auth_kind;

typedef struct kvp_vault_conf {
  char *name;
  char *url;            /* https://NAME.vault.azure.net, no trailing slash */
  char *api_version;    /* default "7.5" */
  kvp_auth_kind auth;   /* default client-secret */
  char *tenant_id;
  char *client_id;
  char *client_secret_file;
  char *client_secret_env;
  char *client_cert_file;
  char *client_key_file;
  char *authority_host; /* default https://login.microsoftonline.com */
  char *imds_endpoint;  /* default http://169.254.169.254 */
  char *ca_file;
  long timeout_ms;      /* default 30000 */
  int max_retries;      /* default 5 */
  /* Key Vault backend (docs/keyvault.md): */
  char *resource;           /* token resource; NULL: from the vault host's cloud suffix */
  long attempt_timeout_ms;  /* one HTTP attempt; 0: default 10000 (at most half the time left) */
  long key_cache_s;         /* key state re-checked at most this often; 0: default 60 */
  int line;
} kvp_vault_conf;

typedef struct kvp_account_conf {
  char *name;
  char *label;          /* token label, default: name */
  char *default_store;  /* "hsm:NAME" / "vault:NAME" or NULL */
  int line;
} kvp_account_conf;

/*
 * [integration-account NAME]: an Azure Logic Apps integration account whose
 * certificates `kvp11 sync` copies into a kvp11 account. The credential keys
 * are a [vault]'s (auth, tenant_id, client_id, client_secret_file, ...); the
 * token is for ARM (resource, default https://management.azure.com).
 */
typedef struct kvp_ia_conf {
  kvp_vault_conf cred;  /* name, line and credentials; cred.url = arm_endpoint
                         * (default https://management.azure.com), cred.api_version
                         * = the ARM api-version (default 2019-05-01) */
  char *resource_id;    /* /subscriptions/S/resourceGroups/G/providers/Microsoft.Logic/integrationAccounts/N */
  char *account;        /* the kvp11 account it fills (default: the only/first account) */
  char *vault_map;      /* "kvname=vaultsection, ..." or NULL: by host prefix */
  char *resource;       /* token resource, NULL: derived from arm_endpoint */
  long page_size;       /* $top of list requests, default 100 */
} kvp_ia_conf;

typedef struct kvp_config {
  char *path;           /* the file this came from */
  char *registry;       /* default KVP11_DEFAULT_REGISTRY */
  int log_level;        /* kvp_log_level, default KVP_LOG_INFO */
  char *log_file;       /* NULL: stderr; "syslog": syslog(3); else an absolute path */
  char *audit;          /* NULL or "off": no audit; "syslog"; else an absolute path */
  kvp_hsm_conf *hsms;
  size_t n_hsms;
  kvp_vault_conf *vaults;
  size_t n_vaults;
  kvp_account_conf *accounts; /* at least one after a successful load */
  size_t n_accounts;
  kvp_ia_conf *ias;           /* [integration-account NAME] sections */
  size_t n_ias;
} kvp_config;

/*
 * Every environment variable kvp11 reads goes through kvp_getenv():
 * secure_getenv(), so a setuid/setgid (AT_SECURE) process sees none.
 */
const char *kvp_getenv(const char *name);

/*
 * 1 when the module runs inside p11-kit's RPC server (p11-kit server forks
 * p11-kit-remote per client). p11-kit 0.24's RPC cannot carry some array
 * attributes (CKA_ALLOWED_MECHANISMS: the client gets CKR_DEVICE_ERROR for the
 * whole C_GetAttributeValue), so the module leaves them out there and the
 * client sees CKR_ATTRIBUTE_TYPE_INVALID, as for any absent attribute.
 */
int kvp_served_over_rpc(void);

/* KVP11_CONF if set and non-empty, else KVP11_DEFAULT_CONF. */
const char *kvp_config_default_path(void);

/*
 * Load and validate a configuration file. On failure returns a KVP_E* code
 * and writes "FILE:LINE: key 'K': what is wrong" (or "FILE: ...") into err.
 * Checks: unknown sections/keys, duplicate sections, bad values, quoted
 * values, required keys, account default_store naming an unknown hsm/vault,
 * and file trust (KVP_EPERM, the message names the file and the fix):
 *  - the configuration file, the registry and its directory: not writable by
 *    group or others, owned by root or the process's user;
 *  - pin_file / client_secret_file / client_key_file: no access for others,
 *    no group write, group read only for root's group or KVP11_SERVICE_GROUP;
 *  - module: an absolute path; an existing module file not writable by group
 *    or others;
 *  - log_file / audit: syslog or an absolute path to a regular file.
 */
int kvp_config_load(const char *path, kvp_config **out, char *err, size_t errlen);
void kvp_config_free(kvp_config *cfg);
/* Free the strings of one [vault] section (not v itself). */
void kvp_vault_conf_clear(kvp_vault_conf *v);

const kvp_hsm_conf *kvp_config_find_hsm(const kvp_config *cfg, const char *name);
const kvp_vault_conf *kvp_config_find_vault(const kvp_config *cfg, const char *name);
const kvp_account_conf *kvp_config_find_account(const kvp_config *cfg, const char *name);
const kvp_ia_conf *kvp_config_find_ia(const kvp_config *cfg, const char *name);

/*
 * Read a secret file (PIN, client secret): refuses (KVP_EPERM) a file others
 * can access or the group can write, or that a group other than root's or
 * KVP11_SERVICE_GROUP can read, or that is not a regular file; strips one
 * trailing "\n" or "\r\n". *out is NUL-terminated; free with kvp_free_secret().
 */
int kvp_secret_read_file(const char *path, char **out, size_t *len, char *err, size_t errlen);

/*
 * Resolve the PIN of an HSM: from pin_file or pin_env. Returns KVP_ENOTFOUND
 * when the HSM has neither (the application's PIN is passed through).
 */
int kvp_hsm_conf_pin(const kvp_hsm_conf *h, char **out, size_t *len, char *err, size_t errlen);

/* ---- file trust (config_files.c) ---- */

/* The rules for a secret file, on its stat; err gets "PATH: what; fix: ...". */
int kvp_secret_stat_ok(const char *path, const struct stat *st, char *err, size_t errlen);
/* Not group/other-writable and owned by root or the euid; what: "configuration", ... */
int kvp_trust_stat(const char *what, const char *path, const struct stat *st, char *err,
                   size_t errlen);
/* kvp_trust_stat() of path; KVP_ENOTFOUND (no message) when it does not exist or
 * this process may not look at it (then it cannot open it either). */
int kvp_trust_path(const char *what, const char *path, char *err, size_t errlen);
/* The registry file (when it exists) and its directory. */
int kvp_registry_trust(const char *registry, char *err, size_t errlen);
/* log_file / audit destination: "syslog", /dev/null, or an absolute path to a regular file. */
int kvp_log_dest_check(const char *path, char *why, size_t whylen);
/* errno to KVP_E* */
int kvp_errno_rc(int e);

#endif
