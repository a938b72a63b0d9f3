/*
 * The long options of the kvp11 commands, one table: a command says which of
 * them apply to it (its allowed set) and finds each value at v[O_X] (see
 * tool.h). An option of another command is refused as not applying. Also the
 * option values more than one command reads.
 */
#include <string.h>

#include "tool.h"

#define ARG(name, o) {name, required_argument, NULL, KVP_TOOL_OPT_BASE + (o)}
#define FLAG(name, o) {name, no_argument, NULL, KVP_TOOL_OPT_BASE + (o)}

const struct option kvp_tool_longopts[O_COUNT + 2] = {
    [O_CERT] = ARG("cert", O_CERT),
    [O_TO] = ARG("to", O_TO),
    [O_FROM] = ARG("from", O_FROM),
    [O_DETACHED] = FLAG("detached", O_DETACHED),
    [O_DIGEST] = ARG("digest", O_DIGEST),
    [O_CIPHER] = ARG("cipher", O_CIPHER),
    [O_OAEP] = FLAG("oaep", O_OAEP),
    [O_BINARY] = FLAG("binary", O_BINARY),
    [O_ACCOUNT] = ARG("account", O_ACCOUNT),
    [O_INFORM] = ARG("inform", O_INFORM),
    [O_OUTFORM] = ARG("outform", O_OUTFORM),
    [O_CONTENT] = ARG("content", O_CONTENT),
    [O_MODULE] = ARG("module", O_MODULE),
    [O_IN] = ARG("in", O_IN),
    [O_OUT] = ARG("out", O_OUT),
    [O_NAME] = ARG("name", O_NAME),
    [O_TYPE] = ARG("type", O_TYPE),
    [O_HSM] = ARG("hsm", O_HSM),
    [O_VAULT] = ARG("vault", O_VAULT),
    [O_KEY] = ARG("key", O_KEY),
    [O_RG] = ARG("resource-group", O_RG),
    [O_REPLACE] = FLAG("replace", O_REPLACE),
    [O_STRICT] = FLAG("strict", O_STRICT),
    [O_JSON] = FLAG("json", O_JSON),
    [O_PEM] = FLAG("pem", O_PEM),
    [O_CERT_DIR] = ARG("cert-dir", O_CERT_DIR),
    [O_ALIAS] = FLAG("alias", O_ALIAS),
    [O_ALLOW_EXPIRED] = FLAG("allow-expired", O_ALLOW_EXPIRED),
    [O_YES] = FLAG("yes", O_YES),
    [O_EXPIRING] = ARG("expiring", O_EXPIRING),
    [O_SIZE] = ARG("size", O_SIZE),
    [O_CURVE] = ARG("curve", O_CURVE),
    [O_HSMPROT] = FLAG("hsm-protected", O_HSMPROT),
    [O_OPS] = ARG("ops", O_OPS),
    [O_NOREG] = FLAG("no-register", O_NOREG),
    [O_PFX] = ARG("pfx", O_PFX),
    [O_PASSFILE] = ARG("pass-file", O_PASSFILE),
    [O_KEYFILE] = ARG("key-file", O_KEYFILE),
    [O_PINFILE] = ARG("pin-file", O_PINFILE),
    [O_CERTNAME] = ARG("cert-name", O_CERTNAME),
    [O_SUBJECT] = ARG("subject", O_SUBJECT),
    [O_SAN] = ARG("san", O_SAN),
    [O_PSS] = FLAG("pss", O_PSS),
    [O_DAYS] = ARG("days", O_DAYS),
    [O_IA] = ARG("ia", O_IA),
    [O_DRY] = FLAG("dry-run", O_DRY),
    [O_PRUNE] = FLAG("prune", O_PRUNE),
    [O_VAULT_ID] = ARG("vault-id", O_VAULT_ID),
    [O_COUNT] = {"help", no_argument, NULL, 'h'},
    [O_COUNT + 1] = {NULL, 0, NULL, 0},
};

int kvp_tool_digest(kvp_tool *t, const char *name, const EVP_MD **md)
{
  const char *d = name ? name : "sha256";
  if (!strcmp(d, "sha256"))
    *md = EVP_sha256();
  else if (!strcmp(d, "sha384"))
    *md = EVP_sha384();
  else if (!strcmp(d, "sha512"))
    *md = EVP_sha512();
  else
    return kvp_tool_fail(t, KVP_EXIT_USAGE, "bad --digest '%s': sha256, sha384 or sha512", d);
  return -1;
}
