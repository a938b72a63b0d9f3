/*
 * Shared helpers of the Key Vault CUnit tests (tests/kv/kvtest.c): the
 * fixture started by fixture-setup.sh (KVP11_KV_DIR), the emulator's control
 * API (/_emu/...), a vault configuration for the fixture's emulator, the
 * test's log file, independent OpenSSL checks of signatures, keys opened as
 * the module opens a registered key, and small files. The CUnit run is
 * tests/unit/unit_util.h's.
 */
#ifndef KVP_TESTS_KVTEST_H
#define KVP_TESTS_KVTEST_H

#include <stddef.h>

#include <CUnit/CUnit.h>
#include <jansson.h>
#include <openssl/evp.h>

#include "backend/backend.h"
#include "unit_util.h" /* the suite run: unit_run_suite */

extern char kvt_dir[900];    /* KVP11_KV_DIR */
extern char kvt_url[128];    /* https://127.0.0.1:PORT */
extern char kvt_ca[1000];    /* the fixture's CA */
extern char kvt_secret[1000];/* app-full's client secret file */
extern char kvt_log[1000];   /* this test's module log */
extern const char *kvt_tenant;

/* Read the fixture (77 when KVP11_KV_DIR is unset: the caller returns it), start logging at
 * debug level into DIR/<logname>, reset the emulator. 0: ready. */
int kvt_init(const char *logname);
/* Only read the fixture and start the log (no libcurl call: a test that needs kvp11 to be
 * the first to initialise libcurl creates its backends first). */
int kvt_fixture(const char *logname);
void kvt_done(void);

/* One request to the emulator (auth: "Authorization: ..." or NULL); the parsed JSON answer or
 * NULL, *status the HTTP status (status may be NULL). */
json_t *kvt_http(const char *method, const char *path, const char *body, const char *auth,
                 long *status);
/* The emulator's control API (no token needed). emu() returns the parsed answer or NULL. */
json_t *kvt_emu(const char *method, const char *path, const char *body);
void kvt_emu_reset(void);             /* counters, faults, limits, request log */
void kvt_emu_fault(const char *rule); /* one fault rule (JSON object) */
void kvt_emu_clear_faults(void);
long kvt_emu_count(const char *ep);   /* requests to an endpoint since the reset */
long kvt_emu_total(void);
/* Set a principal's permissions: perms is a JSON array text, e.g. "[\"sign\"]". */
void kvt_emu_policy(const char *client_id, const char *perms);
/* Change a key version's attributes (JSON object text) and/or key_ops (array text, or NULL). */
void kvt_emu_key(const char *name, const char *version, const char *attrs, const char *ops);
/* A new version of the key; its version id into ver (may be NULL). */
int kvt_emu_rotate(const char *name, char *ver, size_t verlen);
/* Times (ms since the epoch) of the requests to ep answered with status (0: any). */
size_t kvt_emu_times(const char *ep, long status, double *out, size_t max);

/* A client-secret configuration of app-full against the emulator (strings are static). */
void kvt_conf(kvp_vault_conf *c, const char *name);
/* 1 when the test's log holds needle (from the start, or from offset *from when given). */
int kvt_log_contains(const char *needle);
long kvt_log_size(void);
int kvt_log_contains_after(long from, const char *needle);

/* Independent OpenSSL check of a backend signature (ECDSA as r||s). */
int kvt_verify(EVP_PKEY *pub, const kvp_sig_alg *alg, const unsigned char *d, size_t dl,
               const unsigned char *sig, size_t sl);
/* Sign "msg" with the key's natural algorithm (RS256 / ES256-384-512); check: verify with pub
 * (the key's own when NULL). */
CK_RV kvt_sign(kvp_backend *be, kvp_key *k, EVP_PKEY *pub, int check);
/* A Key Vault backend for c; asserts that it was made (NULL when not). */
kvp_backend *kvt_backend(const kvp_vault_conf *c);
/* What `kvp11 cert add` recorded for key name, read through be: its version into ver and
 * its public key into *pub (EVP_PKEY_free it). 0, or -1 when the key does not open. */
int kvt_registered(kvp_backend *be, const char *name, char *ver, size_t verlen, EVP_PKEY **pub);
/* Opens name as the module does for a registry row with version ver and the SPKI of pub. */
CK_RV kvt_open_hinted(kvp_backend *be, const char *name, const char *ver, EVP_PKEY *pub,
                      kvp_key **k);

/* Writes path (mode 0600) from a printf format; asserts (fatal) that it opens. */
void kvt_write_file(const char *path, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The first line of path without its line end into buf (empty when there is none); asserts
 * (fatal) that it opens. 1 when a line was read. */
int kvt_read_line(const char *path, char *buf, size_t size);
/* A federated token for the emulator's workload identity (subject
 * system:serviceaccount:b2b:app) written to path (kvt_write_file). */
void kvt_federated_token(const char *path);

double kvt_now(void); /* monotonic seconds */

#endif
