/*
 * The SoftHSM2 fixture of the HSM backend's unit tests (test_hsm_backend.c,
 * test_hsm_provision.c, test_hsm_trust.c): a directory of the test's own
 * with a softhsm2.conf (SOFTHSM2_CONF points at it), a PIN file and freshly
 * initialized tokens, all with the PIN HSM_PIN; pkcs11-tool calls against
 * those tokens (other commands: unit_sh, unit_util.h); SoftHSM2's function list loaded
 * next to the backend's (same process: same token state).
 */
#ifndef KVP_TEST_HSM_FIXTURE_H
#define KVP_TEST_HSM_FIXTURE_H

#include <openssl/evp.h>

#include "backend/backend.h"
#include "core/config.h"

#define HSM_PIN "1234"
#define HSM_SOPIN "12345678"

extern char hsm_dir[1024];     /* $KVP11_TEST_TMP/TAG, or /tmp/kvp11-test-TAG-PID */
extern char hsm_module[1024];  /* SoftHSM2: $KVP11_SOFTHSM_MODULE or the Debian path */
extern char hsm_pinfile[1100]; /* hsm_dir/hsm.pin: HSM_PIN, mode 0600 */

/*
 * Makes the fixture: tokens is a NULL-terminated list of token labels (none
 * may be a prefix of another: pkcs11-tool's --token-label matches prefixes).
 * Returns 0 when ready, 77 (print "skipped") when SoftHSM2, softhsm2-util or,
 * with need_pkcs11_tool, pkcs11-tool is missing, 1 when the tokens cannot be
 * made. The caller returns a non-zero result from main.
 */
int hsm_fixture_init(const char *tag, const char *const *tokens, int need_pkcs11_tool);

/* Writes text to path, mode 0600. 0, or -1. */
int hsm_write_file(const char *path, const char *text);
/* A key pair made by pkcs11-tool in token: type "rsa:2048", "EC:prime256v1"...;
 * always --usage-sign, --usage-decrypt when decrypt. 0, or -1 when pkcs11-tool failed. */
int hsm_keygen(const char *token, const char *label, const char *id, const char *type, int decrypt);
/* pkcs11-tool --delete-object of the object of type ("privkey", "pubkey") labelled label.
 * 0, or -1 when it failed. */
int hsm_delete(const char *token, const char *type, const char *label);
/* The public key labelled label as pkcs11-tool reads it from token (independent of the
 * backend); NULL when it cannot. EVP_PKEY_free it. */
EVP_PKEY *hsm_token_pubkey(const char *token, const char *label);

/* An [hsm] section for the backend: name, module, token, pin_file (NULL: the PIN is
 * passed through). The strings are borrowed. */
kvp_hsm_conf hsm_conf(const char *name, const char *module, const char *token,
                      const char *pin_file);

/* The function list of the PKCS#11 module at path (dlopen'ed into *dl, dlclose when done);
 * NULL when it cannot be loaded. Not initialized here. */
CK_FUNCTION_LIST_PTR hsm_functions(const char *path, void **dl);
/* The slot of the token labelled token, or (CK_SLOT_ID)-1. */
CK_SLOT_ID hsm_slot_of(CK_FUNCTION_LIST_PTR fl, const char *token);

#endif
