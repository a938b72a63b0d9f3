/*
 * One sign or decrypt in the HSM, with the retry rules and the mapping of
 * the HSM's CK_RV to what the application is told.
 *
 * Retries (each at most once per operation):
 *  - session: CKR_SESSION_HANDLE_INVALID / CKR_SESSION_CLOSED (the handle is
 *    forgotten, never closed), CKR_OPERATION_ACTIVE /
 *    CKR_OPERATION_NOT_INITIALIZED (the session is discarded, see
 *    hsm_session.c): again on a fresh session;
 *  - key handle: CKR_OBJECT_HANDLE_INVALID / CKR_KEY_HANDLE_INVALID at
 *    C_SignInit / C_DecryptInit / C_Sign / C_Decrypt: the private key is
 *    resolved again (and its first result checked again, hsm_key.c);
 *  - login: with a configured PIN, CKR_USER_NOT_LOGGED_IN or a private key
 *    that cannot be found on a session that is not logged in: one login
 *    (subject to the PIN guard of hsm_login.c).
 * Which call failed is a step (enum), not a function name.
 */
#include <stdatomic.h>

#include "backend/hsm/hsm_internal.h"
#include "core/log.h"
#include "core/p11names.h"
#include "core/status.h"

/* Is rv worth passing through to the application as is? */
int kvp_hsm_rv_passthrough(CK_RV rv)
{
  switch (rv) {
  case CKR_OK:
  case CKR_HOST_MEMORY:
  case CKR_PIN_INCORRECT:
  case CKR_PIN_INVALID:
  case CKR_PIN_LEN_RANGE:
  case CKR_PIN_EXPIRED:
  case CKR_PIN_LOCKED:
  case CKR_USER_NOT_LOGGED_IN:
  case CKR_USER_ALREADY_LOGGED_IN:
  case CKR_USER_ANOTHER_ALREADY_LOGGED_IN:
  case CKR_USER_PIN_NOT_INITIALIZED:
  case CKR_USER_TYPE_INVALID:
  case CKR_USER_TOO_MANY_TYPES:
  case CKR_DATA_INVALID:
  case CKR_DATA_LEN_RANGE:
  case CKR_ENCRYPTED_DATA_INVALID:
  case CKR_ENCRYPTED_DATA_LEN_RANGE:
  case CKR_KEY_FUNCTION_NOT_PERMITTED:
  case CKR_KEY_HANDLE_INVALID:
  case CKR_KEY_TYPE_INCONSISTENT:
  case CKR_KEY_SIZE_RANGE:
  case CKR_MECHANISM_INVALID:
  case CKR_MECHANISM_PARAM_INVALID:
  case CKR_DEVICE_ERROR:
  case CKR_DEVICE_MEMORY:
  case CKR_DEVICE_REMOVED:
  case CKR_FUNCTION_CANCELED:
    return 1;
  default:
    return 0;
  }
}

CK_RV kvp_hsm_map_rv(CK_RV rv)
{
  if (kvp_hsm_rv_passthrough(rv))
    return rv;
  switch (rv) {
  case CKR_TOKEN_NOT_PRESENT:
  case CKR_TOKEN_NOT_RECOGNIZED:
    return CKR_DEVICE_REMOVED;
  case CKR_GENERAL_ERROR:
  case CKR_SESSION_HANDLE_INVALID:
  case CKR_SESSION_CLOSED:
  case CKR_SESSION_COUNT:
  case CKR_CRYPTOKI_NOT_INITIALIZED:
  case CKR_OBJECT_HANDLE_INVALID:
  case CKR_OPERATION_ACTIVE:
  case CKR_OPERATION_NOT_INITIALIZED:
    return CKR_DEVICE_ERROR;
  default:
    return CKR_FUNCTION_FAILED;
  }
}

/* Where in the operation the HSM answered. */
typedef enum { STEP_OPEN, STEP_FIND, STEP_INIT, STEP_FINAL } op_step;

static const char *step_fn(op_step st, int op)
{
  switch (st) {
  case STEP_OPEN:
    return "C_OpenSession";
  case STEP_FIND:
    return "C_FindObjects";
  case STEP_INIT:
    return op == KVP_HSM_OP_SIGN ? "C_SignInit" : "C_DecryptInit";
  case STEP_FINAL:
    return op == KVP_HSM_OP_SIGN ? "C_Sign" : "C_Decrypt";
  }
  return "?";
}

static int handle_gone(CK_RV rv)
{
  return rv == CKR_OBJECT_HANDLE_INVALID || rv == CKR_KEY_HANDLE_INVALID;
}

static int state_lost(CK_RV rv)
{
  return rv == CKR_OPERATION_ACTIVE || rv == CKR_OPERATION_NOT_INITIALIZED;
}

static int mech_refused(CK_RV rv)
{
  return rv == CKR_ARGUMENTS_BAD || rv == CKR_MECHANISM_PARAM_INVALID ||
         rv == CKR_MECHANISM_INVALID;
}

/* Init + final call on session s with the private key handle. */
static CK_RV op_once(kvp_hsm_backend *be, kvp_hsm_key *k, int op, CK_SESSION_HANDLE s,
                     CK_MECHANISM *mech, const CK_BYTE *in, CK_ULONG in_len, CK_BYTE *out,
                     CK_ULONG *n, op_step *step)
{
  CK_OBJECT_HANDLE h = (CK_OBJECT_HANDLE)atomic_load_explicit(&k->priv, memory_order_acquire);
  CK_RV rv;
  if (h == CK_INVALID_HANDLE || atomic_load_explicit(&k->priv_gen, memory_order_relaxed) !=
                                    atomic_load_explicit(&be->login_gen, memory_order_relaxed)) {
    *step = STEP_FIND;
    rv = kvp_hsm_resolve_private(be, s, k, NULL, NULL);
    if (rv != CKR_OK)
      return rv;
    h = (CK_OBJECT_HANDLE)atomic_load(&k->priv);
  }
  *step = STEP_INIT;
  if (op == KVP_HSM_OP_SIGN)
    rv = KVP_HSM_CALL(be, C_SignInit, s, mech, h);
  else
    rv = KVP_HSM_CALL(be, C_DecryptInit, s, mech, h);
  if (rv != CKR_OK)
    return rv;
  *step = STEP_FINAL;
  if (op == KVP_HSM_OP_SIGN)
    return KVP_HSM_CALL(be, C_Sign, s, (CK_BYTE_PTR)in, in_len, out, n);
  return KVP_HSM_CALL(be, C_Decrypt, s, (CK_BYTE_PTR)in, in_len, out, n);
}

/* What the application is told (and the log line) for a failed operation. */
static CK_RV op_failure(kvp_hsm_backend *be, kvp_hsm_key *k, int op, op_step step,
                        const CK_MECHANISM *mech, CK_RV rv)
{
  if (rv == KVP_HSM_KEY_REFUSED) /* ambiguous, or another key: the reason is recorded */
    return CKR_KEY_HANDLE_INVALID;
  if (step == STEP_FIND && rv == CKR_KEY_HANDLE_INVALID)
    return kvp_fail(CKR_KEY_HANDLE_INVALID, "hsm %s: no private key '%s' in token '%s'%s",
                    be->base.name, kvp_hsm_key_desc(k), kvp_hsm_token(be),
                    k->key.private_obj ? " (is the application logged in?)" : "");
  CK_RV mapped = kvp_hsm_map_rv(rv);
  if (rv == CKR_OBJECT_HANDLE_INVALID)
    mapped = CKR_KEY_HANDLE_INVALID;
  /* our arguments are well-formed: an HSM that says CKR_ARGUMENTS_BAD at
   * C_SignInit / C_DecryptInit refuses the mechanism parameters (SoftHSM2
   * 2.6.1 accepts OAEP with SHA-1 only) */
  if (rv == CKR_ARGUMENTS_BAD && mech->pParameter != NULL && step == STEP_INIT)
    mapped = CKR_MECHANISM_PARAM_INVALID;
  /* a well-sized ciphertext that the HSM fails to decrypt has bad padding:
   * SoftHSM2 says CKR_GENERAL_ERROR for that, the spec CKR_ENCRYPTED_DATA_INVALID */
  if (op == KVP_HSM_OP_DECRYPT && step == STEP_FINAL &&
      (rv == CKR_GENERAL_ERROR || rv == CKR_FUNCTION_FAILED))
    mapped = CKR_ENCRYPTED_DATA_INVALID;
  /* PIN and login codes other than "not logged in" are no answer of C_Sign */
  if (mapped != CKR_USER_NOT_LOGGED_IN && mapped != CKR_HOST_MEMORY &&
      (mapped == CKR_USER_ALREADY_LOGGED_IN || mapped == CKR_USER_ANOTHER_ALREADY_LOGGED_IN ||
       mapped == CKR_USER_PIN_NOT_INITIALIZED || mapped == CKR_USER_TYPE_INVALID ||
       mapped == CKR_USER_TOO_MANY_TYPES ||
       (mapped >= CKR_PIN_INCORRECT && mapped <= CKR_PIN_LOCKED)))
    mapped = CKR_DEVICE_ERROR;
  if (mapped == rv)
    return kvp_fail(mapped, "hsm %s: %s (key '%s'): %s", be->base.name, step_fn(step, op),
                    kvp_hsm_key_desc(k), kvp_ckr_name(rv));
  return kvp_fail(mapped, "hsm %s: %s (key '%s'): %s (reported as %s)", be->base.name,
                  step_fn(step, op), kvp_hsm_key_desc(k), kvp_ckr_name(rv), kvp_ckr_name(mapped));
}

CK_RV kvp_hsm_run_op(kvp_hsm_backend *be, kvp_hsm_key *k, int op, CK_MECHANISM *mech,
                     const CK_BYTE *in, CK_ULONG in_len, CK_BYTE *out, CK_ULONG *out_len,
                     int quiet_refusal)
{
  CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
  op_step step = STEP_OPEN;
  int session_retry = 0, handle_retry = 0, login_retry = 0;
  CK_RV rv;

  if (k->key.private_obj && !atomic_load_explicit(&be->logged_in, memory_order_relaxed))
    return kvp_fail_at(KVP_LOG_DEBUG, CKR_USER_NOT_LOGGED_IN,
                       "hsm %s: key '%s': the application has not logged in", be->base.name,
                       kvp_hsm_key_desc(k));
  if (be->has_pin && !atomic_load_explicit(&be->logged_in, memory_order_relaxed)) {
    rv = kvp_hsm_relogin(be); /* guarded: no attempt after a refused PIN */
    if (rv != CKR_OK)
      return rv;
  }
  for (;;) {
    if (s == CK_INVALID_HANDLE) {
      step = STEP_OPEN;
      rv = kvp_hsm_pool_get(be, session_retry, &s);
      if (rv != CKR_OK)
        break;
    }
    CK_ULONG n = *out_len;
    rv = op_once(be, k, op, s, mech, in, in_len, out, &n, &step);
    if (rv == CKR_OK) {
      *out_len = n;
      kvp_hsm_pool_put(be, s);
      return CKR_OK;
    }
    if (rv == CKR_BUFFER_TOO_SMALL) { /* the operation is still active on s */
      kvp_hsm_pool_discard(be, s);
      s = CK_INVALID_HANDLE;
      break;
    }
    if ((kvp_hsm_session_gone(rv) || state_lost(rv)) && !session_retry) {
      session_retry = 1;
      if (kvp_hsm_session_gone(rv))
        kvp_hsm_pool_forget(be, s);
      else
        kvp_hsm_pool_discard(be, s);
      s = CK_INVALID_HANDLE;
      continue;
    }
    if (handle_gone(rv) && !handle_retry && step != STEP_FIND) {
      handle_retry = 1;
      atomic_store(&k->priv, CK_INVALID_HANDLE);
      continue;
    }
    /* with a configured PIN, a token that lost our login (private key not
     * found, or CKR_USER_NOT_LOGGED_IN) gets one new C_Login */
    if (be->has_pin && !login_retry &&
        (rv == CKR_USER_NOT_LOGGED_IN || (step == STEP_FIND && rv == CKR_KEY_HANDLE_INVALID)) &&
        !kvp_hsm_session_logged_in(be, s)) {
      login_retry = 1;
      atomic_store(&be->logged_in, 0);
      CK_RV lrv = kvp_hsm_relogin(be);
      if (lrv != CKR_OK) {
        kvp_hsm_pool_put(be, s);
        return lrv;
      }
      atomic_store(&k->priv, CK_INVALID_HANDLE);
      continue;
    }
    break;
  }
  if (s != CK_INVALID_HANDLE) {
    if (kvp_hsm_session_gone(rv))
      kvp_hsm_pool_forget(be, s);
    else if (state_lost(rv))
      kvp_hsm_pool_discard(be, s);
    else
      kvp_hsm_pool_put(be, s);
  }
  /* the caller has a fallback for a mechanism the HSM refuses: no log line */
  if (quiet_refusal && step == STEP_INIT && op == KVP_HSM_OP_DECRYPT && mech_refused(rv))
    return KVP_HSM_REFUSED;
  return op_failure(be, k, op, step, mech, rv);
}
