/*
 * The audit trail: one JSON object per line for every private-key operation,
 * every failed login and every change of the registry or of a key, whoever
 * makes it (the module, through PKCS#11, or the kvp11 tool).
 *
 * Destination: [global] audit = syslog | /absolute/file | off (default off;
 * the installed kvp11.conf says syslog). syslog uses the authpriv facility at
 * level info, with the host program's openlog() settings left alone; a file is
 * appended to (created 0640, never through a symbolic link). A process that
 * cannot open the file (an unprivileged service where only root may write it)
 * sends its records to syslog instead, so none is lost.
 *
 * Every record carries: "time" (UTC, microseconds), "event", "pid", "uid",
 * "process" (the program's name). Events and their fields:
 *
 *   sign, decrypt   account, cert, key (key reference), key_version (Key Vault),
 *                   mechanism (CKM_ name), result (CKR_ name), latency_us,
 *                   request_id (Key Vault's x-ms-request-id, when known)
 *   login_failure   account, result
 *   change          action ("cert add", "C_CreateObject", "key delete", ...),
 *                   account, cert (or key), key, old_sha256, new_sha256
 *                   (certificate fingerprints; null when there is none)
 *
 * Never a PIN, a secret, key material or message content: every field is a
 * name, a number or a fingerprint.
 *
 * The hooks are single calls at the points of use; each costs one branch when
 * auditing is off.
 */
#ifndef KVP_CORE_AUDIT_H
#define KVP_CORE_AUDIT_H

#include <stdint.h>

#include <p11-kit/pkcs11.h>

typedef enum { KVP_AUDIT_SIGN = 0, KVP_AUDIT_DECRYPT = 1 } kvp_audit_op_kind;

/* Set the destination: NULL or "off", "syslog", or an absolute path. Safe to call again. */
void kvp_audit_setup(const char *dest);
/* Close the file (C_Finalize). */
void kvp_audit_close(void);
/* 1 when records are written. */
int kvp_audit_enabled(void);

/* A start time for kvp_audit_key_op (monotonic µs); 0 when auditing is off. */
uint64_t kvp_audit_start(void);

/* A private-key operation finished with rv. key_ref: "hsm:box/app"; version may be NULL. */
void kvp_audit_key_op(kvp_audit_op_kind op, const char *account, const char *cert,
                      const char *key_ref, const char *version, CK_MECHANISM_TYPE mech, CK_RV rv,
                      uint64_t start);

/* C_Login failed with rv on the account's token. */
void kvp_audit_login_failure(const char *account, CK_RV rv);

/*
 * The registry or a key changed. action: "cert add", "cert remove",
 * "C_CreateObject", "key create", ...; old/new_sha256: hex fingerprints of the
 * certificate before and after (NULL: none).
 */
void kvp_audit_change(const char *action, const char *account, const char *name,
                      const char *key_ref, const char *old_sha256, const char *new_sha256);

/* The Key Vault backend names the request of the operation in flight (this thread). */
void kvp_audit_request_id(const char *id);

#endif
