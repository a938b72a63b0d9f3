/*
 * Client of the Azure Resource Manager API of Logic Apps integration-account
 * certificates (Microsoft.Logic/integrationAccounts/certificates): list with
 * paging, create or update, delete. Used by `kvp11 sync`, `publish` and
 * `unpublish`. Tokens come from the Key Vault backend's credential code (the
 * same auth methods), for the ARM resource; HTTP from its libcurl layer
 * (retries on 429 with Retry-After and on transient failures, within
 * timeout_ms). Every failure records its reason with kvp_fail().
 */
#ifndef KVP_TOOL_IA_H
#define KVP_TOOL_IA_H

#include <stddef.h>
#include <p11-kit/pkcs11.h>

#include "core/config.h"

/* One integration-account certificate as listed. */
typedef struct ia_cert {
  char *name;               /* as the service spells it */
  unsigned char *der;       /* properties.publicCertificate decoded, NULL if absent */
  size_t der_len;
  char *vault_id;           /* properties.key.keyVault.id, NULL for a public certificate */
  char *vault_name;         /* its last path segment */
  char *key_name;           /* properties.key.keyName */
  char *key_version;        /* properties.key.keyVersion, NULL if absent */
  char *bad;                /* non-NULL: why this entry cannot be used (kept, reported) */
} ia_cert;

typedef struct ia_client ia_client;

/* No I/O. */
CK_RV ia_client_new(const kvp_ia_conf *conf, ia_client **out);
void ia_client_free(ia_client *c);

/* Every certificate of the integration account (all pages). */
CK_RV ia_list(ia_client *c, ia_cert **out, size_t *n);
/* Create or update NAME: publicCertificate = der; with key_name, the key
 * reference (vault_id, key_name, key_version or NULL). *created = 1 for 201. */
CK_RV ia_put(ia_client *c, const char *name, const unsigned char *der, size_t der_len,
             const char *vault_id, const char *key_name, const char *key_version, int *created);
/* Delete NAME; *existed = 0 when the service said there was none (204). */
CK_RV ia_delete(ia_client *c, const char *name, int *existed);

/* Requests made so far (pages, puts, deletes; tokens excluded). */
unsigned long ia_requests(const ia_client *c);

void ia_cert_free_array(ia_cert *certs, size_t n);

#endif
