/*
 * Private keys through libkvp11.so, for the kvp11 tool.
 *
 * The OpenSSL pkcs11 engine (libp11) loads libkvp11.so into this process;
 * ENGINE_load_private_key gives an EVP_PKEY whose private operations are
 * C_Sign / C_Decrypt calls into the module, so the key stays in its store.
 * The module reads the configuration the tool was given (KVP11_CONF is set to
 * it before the engine starts the module).
 *
 * An engine already loaded (e.g. by OPENSSL_CONF) is reused as it is; the
 * engine is kept out of OpenSSL's default tables, so only the key loaded here
 * uses it.
 */
#ifndef KVP_TOOL_ENGINE_H
#define KVP_TOOL_ENGINE_H

#include <openssl/types.h>

#include "tool.h"

typedef struct kvp_engine_key {
  ENGINE *e;      /* the pkcs11 engine, initialised (ENGINE_init) */
  EVP_PKEY *pkey; /* the private key; its operations run in the module */
  char uri[1700]; /* "pkcs11:token=...;object=...;type=private" */
} kvp_engine_key;

/* The module to load: opt (--module) if set, else $KVP11_MODULE, else the
 * installed libkvp11.so. */
const char *kvp_engine_module(const char *opt);

/*
 * Load the private key labelled object in the token labelled token (an
 * account's token label) through module. what names the key in messages
 * ("certificate 'NAME'", "key keyvault:prod/k1"). Prints one line on
 * failure. Returns an exit code; on failure k holds nothing (calling
 * kvp_engine_key_free on it is harmless). The caller checks that the key is
 * the one it expects (X509_check_private_key, or a signature verified with
 * the public key it knows). pin: the token's user PIN for C_Login (a key
 * store that takes the application's PIN, [hsm] without pin_file/pin_env),
 * or NULL: no login by the engine (the module logs in with its configured
 * PIN, or the key needs none). The engine keeps its copy until the key is
 * freed and wipes it then; the caller wipes its own.
 */
int kvp_engine_load_key(kvp_tool *t, const char *module, const char *token, const char *object,
                        const char *what, const char *pin, kvp_engine_key *k);
/* Release the key and the engine reference (the engine finishes the module
 * when this was the last one). */
void kvp_engine_key_free(kvp_engine_key *k);

/*
 * Silence fd 2 while the engine and the module run (libp11 and a module
 * without log_file would print there): the tool prints one line. -v and
 * KVP11_DEBUG keep their lines. Returns the saved fd (or -1) for _end.
 */
int kvp_engine_quiet_begin(const kvp_tool *t);
void kvp_engine_quiet_end(int saved);

/* The reason of the most recent OpenSSL error, or "unknown error"; clears the
 * error queue. Static buffer. */
const char *kvp_engine_ossl_reason(void);

#endif
