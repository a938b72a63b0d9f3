/*
 * Key Vault backend extras beyond kvp_backend_ops (for the tool and tests).
 * The backend itself is created with kvp_keyvault_backend_new() (backend.h).
 */
#ifndef KVP_BACKEND_KEYVAULT_KEYVAULT_H
#define KVP_BACKEND_KEYVAULT_KEYVAULT_H

#include <stddef.h>

#include "backend/backend.h"

/* Names of all keys in the vault (GET /keys, following nextLink). Free with
 * kvp_keyvault_free_names(). Needs the 'list' permission. */
CK_RV kvp_keyvault_list_keys(kvp_backend *be, char ***names, size_t *n);
void kvp_keyvault_free_names(char **names, size_t n);

/* How long an opened key's public part and attributes are reused before
 * open_key asks the vault again (default 10 minutes; tests use 0). */
void kvp_keyvault_set_key_ttl(kvp_backend *be, long ttl_ms);

/* Token requests this backend made so far. */
unsigned long kvp_keyvault_token_requests(kvp_backend *be);

#endif
