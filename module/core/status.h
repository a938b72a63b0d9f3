/*
 * Status: a CK_RV together with the reason it was returned.
 *
 * PKCS#11 entry points and the backend function table return a bare CK_RV;
 * the reason travels beside it in a per-thread status slot. The layer that
 * knows why a call failed (an HSM's CK_RV and function, an HTTP status and
 * Key Vault error code, a file and errno) records it once with kvp_fail();
 * every layer above passes the CK_RV up unchanged, and the place that shows
 * the failure (the tool's one-line error, `kvp11 check`, a log line at an
 * entry point) reads it with kvp_status_reason(). The first reason recorded
 * wins: outer layers cannot blur an inner, precise one. Entry points and
 * tool commands start with kvp_status_clear().
 *
 * A reason is one line of text for an admin; it never holds a secret.
 */
#ifndef KVP_CORE_STATUS_H
#define KVP_CORE_STATUS_H

#include <stddef.h>
#include <p11-kit/pkcs11.h>

#define KVP_STATUS_MSGLEN 512

typedef struct kvp_status {
  CK_RV rv;                     /* CKR_OK: nothing recorded */
  char msg[KVP_STATUS_MSGLEN];  /* the reason, "" when none */
} kvp_status;

/* Forget this thread's status (start of an entry point or a tool command). */
void kvp_status_clear(void);

/*
 * Record rv with its reason (unless a reason is recorded already), log it
 * once at level (KVP_LOG_ERROR, KVP_LOG_WARN, ... or -1 for not at all),
 * and return rv, so that `return kvp_fail(CKR_..., "...")` reads naturally.
 */
#define kvp_fail(rv, ...) kvp_fail_loc(0, (rv), __FILE__, __LINE__, __func__, __VA_ARGS__)
#define kvp_fail_at(level, rv, ...)                                                                \
  kvp_fail_loc((level), (rv), __FILE__, __LINE__, __func__, __VA_ARGS__)
CK_RV kvp_fail_loc(int level, CK_RV rv, const char *file, int line, const char *func,
                   const char *fmt, ...) __attribute__((format(printf, 6, 7)));

/* This thread's status: the reason recorded since the last clear, or NULL. */
const char *kvp_status_reason(void);
CK_RV kvp_status_rv(void);
/* Copy this thread's status (e.g. to hand it to another thread). */
void kvp_status_get(kvp_status *out);
/* Record a status taken from elsewhere (same first-wins rule, not logged). */
void kvp_status_set(const kvp_status *st);

/* "REASON" if one is recorded, else the CK_RV's name: for one-line errors. */
const char *kvp_status_text(CK_RV rv, char *buf, size_t len);

#endif
