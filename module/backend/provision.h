/*
 * One provisioning path: a key made in a store (created or imported), then
 * registered as a registry row, and deleted again when the registration
 * fails. Used by `kvp11 key create|import` (tool/key.c) and by
 * C_GenerateKeyPair (module/pkcs11/provision.c), one function per step:
 *
 *   kvp_prov_name_free   the registry name is free (before the store is touched)
 *   kvp_prov_key_row     the row of a key without certificate yet
 *   kvp_prov_register    write the row, return its id
 *   kvp_prov_undo        delete the key just made, after a failed registration
 *
 * Each returns a CK_RV and records its reason with kvp_fail() (core/status.h),
 * so the tool's one-line error and the module's log say the same thing.
 */
#ifndef KVP_BACKEND_PROVISION_H
#define KVP_BACKEND_PROVISION_H

#include <stdint.h>

#include "backend/backend.h"
#include "core/registry.h"

/* A registry status (KVP_*) as a CK_RV, with err as the reason. */
CK_RV kvp_prov_reg_rv(int rc, const char *err);

/* CKR_OK when account has no entry named name; CKR_ATTRIBUTE_VALUE_INVALID
 * ("account 'A' has an entry named 'N' already") when it has. */
CK_RV kvp_prov_name_free(kvp_registry *reg, const char *account, const char *name);

/* Fill rec (owned copies; kvp_cert_rec_clear frees them) with the key-only
 * row for key: account, name, key_ref, the key's version and public key, and
 * the CKA_ID an application chose (NULL: the default). */
CK_RV kvp_prov_key_row(const kvp_key *key, const char *account, const char *name,
                       const char *key_ref, const unsigned char *ckid, size_t ckid_len,
                       kvp_cert_rec *rec);

/* Insert rec; *id (if not NULL) gets the new row's id. */
CK_RV kvp_prov_register(kvp_registry *reg, const kvp_cert_rec *rec, int64_t *id);

/* Delete key keyname from be after a failed registration: CKR_OK when it is
 * gone; otherwise the reason names the key left behind. */
CK_RV kvp_prov_undo(kvp_backend *be, const char *keyname);

#endif
