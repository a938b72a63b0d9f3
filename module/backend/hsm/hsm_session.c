/*
 * The session pool of an HSM backend.
 *
 * sign / decrypt check a session out (an idle one, else a new one), use it
 * with no lock held, and give it back. Rules:
 *
 *  - C_OpenSession and C_CloseSession of every session of ours (pooled,
 *    anchor, provisioning) are serialized by be->sess_lock, the one lock
 *    held across those calls: some modules (tpm2-pkcs11 1.9) open sessions
 *    without a lock of their own and can hand one handle to two threads.
 *  - A handle the HSM says is gone (CKR_SESSION_HANDLE_INVALID /
 *    CKR_SESSION_CLOSED) is forgotten, never closed: the number may belong
 *    to a session opened since. A session whose state we cannot trust
 *    (CKR_OPERATION_ACTIVE, CKR_OPERATION_NOT_INITIALIZED, a C_Sign left
 *    active by CKR_BUFFER_TOO_SMALL) is closed, unless another thread holds
 *    the same handle at that moment (then only forgotten).
 *  - The token's ulMaxSessionCount bounds the sessions we hold open: at the
 *    limit, a thread waits for a session another thread gives back (or
 *    fails with CKR_DEVICE_ERROR when none of ours is checked out). A
 *    CKR_SESSION_COUNT from C_OpenSession is treated the same way.
 *  - At most KVP_HSM_POOL_MAX idle sessions are kept; the surplus is closed.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "backend/hsm/hsm_internal.h"
#include "core/log.h"
#include "core/p11names.h"
#include "core/status.h"
#include "core/util.h"

int kvp_hsm_session_gone(CK_RV rv)
{
  return rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED;
}

/* ---------- bookkeeping (pool_lock held) ---------- */

static int busy_add_locked(kvp_hsm_backend *be, CK_SESSION_HANDLE s)
{
  if (kvp_grow(&be->busy, be->n_busy, &be->cap_busy, sizeof(*be->busy), 16) != 0)
    return 0;
  be->busy[be->n_busy++] = s;
  return 1;
}

/* Remove one entry of s; returns how many other holders of s remain. */
static size_t busy_remove_locked(kvp_hsm_backend *be, CK_SESSION_HANDLE s)
{
  size_t others = 0, at = be->n_busy;
  for (size_t i = 0; i < be->n_busy; i++) {
    if (be->busy[i] != s)
      continue;
    if (at == be->n_busy)
      at = i;
    else
      others++;
  }
  if (at < be->n_busy)
    be->busy[at] = be->busy[--be->n_busy];
  return others;
}

static int at_limit_locked(const kvp_hsm_backend *be)
{
  return be->max_sessions != 0 && be->n_open >= be->max_sessions;
}

/* ---------- open / close (sess_lock) ---------- */

/* Open a session for which n_open was counted already (reserved). */
static CK_RV open_reserved(kvp_hsm_backend *be, CK_FLAGS flags, CK_SESSION_HANDLE *out);

/* The HSM's session is no longer ours (closed, or gone): count it. */
static void uncount(kvp_hsm_backend *be)
{
  pthread_mutex_lock(&be->pool_lock);
  if (be->n_open > 0)
    be->n_open--;
  pthread_cond_broadcast(&be->pool_cond);
  pthread_mutex_unlock(&be->pool_lock);
}

static CK_RV open_reserved(kvp_hsm_backend *be, CK_FLAGS flags, CK_SESSION_HANDLE *out)
{
  pthread_mutex_lock(&be->sess_lock);
  CK_RV rv = KVP_HSM_CALL(be, C_OpenSession, be->slot, flags, NULL, NULL, out);
  pthread_mutex_unlock(&be->sess_lock);
  if (rv != CKR_OK) {
    *out = CK_INVALID_HANDLE;
    uncount(be);
  }
  return rv;
}

static void close_counted(kvp_hsm_backend *be, CK_SESSION_HANDLE s)
{
  pthread_mutex_lock(&be->sess_lock);
  (void)KVP_HSM_CALL(be, C_CloseSession, s);
  pthread_mutex_unlock(&be->sess_lock);
  uncount(be);
}

CK_RV kvp_hsm_session_open(kvp_hsm_backend *be, int rw, CK_SESSION_HANDLE *out)
{
  pthread_mutex_lock(&be->pool_lock);
  be->n_open++; /* the anchor and provisioning sessions are not held back by the limit */
  pthread_mutex_unlock(&be->pool_lock);
  return open_reserved(be, CKF_SERIAL_SESSION | (rw ? CKF_RW_SESSION : 0), out);
}

void kvp_hsm_session_lost(kvp_hsm_backend *be)
{
  uncount(be);
}

void kvp_hsm_session_close(kvp_hsm_backend *be, CK_SESSION_HANDLE s)
{
  if (s != CK_INVALID_HANDLE)
    close_counted(be, s);
}

/* ---------- the pool ---------- */

/* Take an idle session (pool_lock held): CKR_OK, or CKR_HOST_MEMORY. */
static CK_RV pop_locked(kvp_hsm_backend *be, CK_SESSION_HANDLE *out)
{
  CK_SESSION_HANDLE s = be->pool[--be->n_pool];
  if (!busy_add_locked(be, s)) {
    be->pool[be->n_pool++] = s;
    return CKR_HOST_MEMORY;
  }
  *out = s;
  return CKR_OK;
}

CK_RV kvp_hsm_pool_get(kvp_hsm_backend *be, int fresh, CK_SESSION_HANDLE *out)
{
  *out = CK_INVALID_HANDLE;
  for (;;) {
    pthread_mutex_lock(&be->pool_lock);
    while ((fresh || be->n_pool == 0) && at_limit_locked(be) && be->n_busy > 0)
      pthread_cond_wait(&be->pool_cond, &be->pool_lock);
    if (be->n_pool > 0 && (!fresh || at_limit_locked(be))) {
      CK_RV rv = pop_locked(be, out);
      pthread_mutex_unlock(&be->pool_lock);
      return rv;
    }
    if (at_limit_locked(be)) { /* nothing of ours will come back */
      pthread_mutex_unlock(&be->pool_lock);
      return kvp_fail(CKR_SESSION_COUNT, "hsm %s: token '%s' allows %lu sessions, all in use",
                      be->base.name, kvp_hsm_token(be), (unsigned long)be->max_sessions);
    }
    be->n_open++; /* reserved: counted before the HSM is asked */
    pthread_mutex_unlock(&be->pool_lock);
    CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
    CK_RV rv = open_reserved(be, CKF_SERIAL_SESSION, &s);
    if (rv == CKR_SESSION_COUNT) {
      /* the token is full (sessions of other users count too): what it
       * really allows us is what we hold; wait for one of ours */
      pthread_mutex_lock(&be->pool_lock);
      int ours = be->n_busy > 0 || be->n_pool > 0;
      if (ours)
        be->max_sessions = be->n_open;
      pthread_mutex_unlock(&be->pool_lock);
      if (ours) {
        fresh = 0;
        continue;
      }
    }
    if (rv != CKR_OK)
      return rv;
    pthread_mutex_lock(&be->pool_lock);
    int ok = busy_add_locked(be, s);
    pthread_mutex_unlock(&be->pool_lock);
    if (!ok) {
      close_counted(be, s);
      return CKR_HOST_MEMORY;
    }
    *out = s;
    return CKR_OK;
  }
}

void kvp_hsm_pool_put(kvp_hsm_backend *be, CK_SESSION_HANDLE s)
{
  pthread_mutex_lock(&be->pool_lock);
  size_t others = busy_remove_locked(be, s);
  int keep = others == 0 && be->n_pool < KVP_HSM_POOL_MAX;
  if (keep)
    be->pool[be->n_pool++] = s;
  pthread_cond_broadcast(&be->pool_cond);
  pthread_mutex_unlock(&be->pool_lock);
  if (others > 0) /* the module handed this handle out twice: one session */
    uncount(be);
  else if (!keep)
    close_counted(be, s);
}

void kvp_hsm_pool_forget(kvp_hsm_backend *be, CK_SESSION_HANDLE s)
{
  pthread_mutex_lock(&be->pool_lock);
  size_t others = busy_remove_locked(be, s);
  pthread_mutex_unlock(&be->pool_lock);
  if (others == 0)
    uncount(be);
}

void kvp_hsm_pool_discard(kvp_hsm_backend *be, CK_SESSION_HANDLE s)
{
  pthread_mutex_lock(&be->pool_lock);
  size_t others = busy_remove_locked(be, s);
  pthread_mutex_unlock(&be->pool_lock);
  if (others > 0) {
    KVP_DEBUG("hsm %s: session %lu is held by %zu other thread(s): not closed", be->base.name,
              (unsigned long)s, others);
    return;
  }
  close_counted(be, s);
}

void kvp_hsm_pool_close_all(kvp_hsm_backend *be)
{
  for (;;) {
    pthread_mutex_lock(&be->pool_lock);
    if (be->n_pool == 0) {
      pthread_mutex_unlock(&be->pool_lock);
      return;
    }
    CK_SESSION_HANDLE s = be->pool[--be->n_pool];
    pthread_mutex_unlock(&be->pool_lock);
    close_counted(be, s);
  }
}
