/*
 * Key Vault backend extras beyond kvp_backend_ops (for the tool and tests).
 * The backend itself is created with kvp_keyvault_backend_new() (backend.h).
 */
#ifndef KVP_BACKEND_KEYVAULT_KEYVAULT_H
#define KVP_BACKEND_KEYVAULT_KEYVAULT_H

#include <stddef.h>

#include "backend/backend.h"

/* The Key Vault naming rules, in one place: a key name is 1 to 127 letters,
 * digits and '-'; a version 1 to 64 letters and digits (the service's are 32
 * hex digits). Names and versions taken from the vault's answers go through
 * the same check before they go into a URL. */
int kvp_keyvault_name_valid(const char *name);
int kvp_keyvault_version_valid(const char *version);

/* Names of all keys in the vault (GET /keys, following nextLink). Free with
 * kvp_keyvault_free_names(). Needs the 'list' permission. */
CK_RV kvp_keyvault_list_keys(kvp_backend *be, char ***names, size_t *n);
void kvp_keyvault_free_names(char **names, size_t n);

/* How long an opened key's public part and attributes are reused before
 * open_key asks the vault again (default 10 minutes; tests use 0). */
void kvp_keyvault_set_key_ttl(kvp_backend *be, long ttl_ms);

/* Attempts to get a token this backend made so far (a refused credential's attempts within
 * 30 s, answered without a request, included). */
unsigned long kvp_keyvault_token_requests(kvp_backend *be);

#endif
