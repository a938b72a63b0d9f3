/*
 * C_Login / C_Logout: which key stores receive a token's PIN.
 *
 * A slot is one account. Its PIN goes only to the key stores the account
 * uses (the store part of its registry rows' key references, asked of the
 * registry with one DISTINCT query, plus the account's default_store), and of
 * those only to backends that take the application's PIN (an HSM without
 * pin_file / pin_env). An HSM that holds another account's keys never sees
 * this slot's PIN, so a wrong PIN for one token cannot count as a failed
 * login at another, nor can one token's right PIN unlock another's keys.
 *
 * A repeated C_Login on a slot that is logged in is still checked: the PIN is
 * passed to the same backends, which compare it with the PIN that logged
 * their session in (they keep a salted hash, never the PIN). A match answers
 * CKR_USER_ALREADY_LOGGED_IN, a mismatch the backend's CKR_PIN_INCORRECT; the
 * slot stays logged in either way (PKCS#11 2.40 5.6).
 *
 * Lock order: the caller holds the session's lock; this file takes
 * g.reg_lock and g.lock one after the other, never both, and no lock is held
 * across a backend call.
 */
#include "pkcs11/login.h"

#include "pkcs11/internal.h"

#include <stdlib.h>
#include <string.h>

#include "core/audit.h"
#include "core/log.h"
#include "core/p11names.h"
#include "core/status.h"
#include "core/util.h"

/* Backends that take a slot's PIN (at most every configured one). */
typedef struct login_set {
  kvp_backend **be;
  size_t n;
} login_set;

static void set_free(login_set *set)
{
  free(set->be);
  set->be = NULL;
  set->n = 0;
}

static int set_has(const login_set *set, const kvp_backend *be)
{
  for (size_t i = 0; i < set->n; i++)
    if (set->be[i] == be)
      return 1;
  return 0;
}

/* Add the backend named "scheme:name" (default_store says "vault:" for "keyvault:") if it takes
 * the application's PIN. */
static void set_add_store(login_set *set, const char *store)
{
  const char *colon = strchr(store, ':');
  size_t slen;

  if (colon == NULL)
    return;
  slen = (size_t)(colon - store);
  for (size_t i = 0; i < kvp_g.n_backends; i++) {
    kvp_backend *be = kvp_g.backends[i];
    const char *scheme = be->ops->scheme;
    int same_scheme = (strlen(scheme) == slen && strncmp(scheme, store, slen) == 0) ||
                      (slen == 5 && strncmp(store, "vault", 5) == 0 &&
                       strcmp(scheme, "keyvault") == 0);
    if (!same_scheme || strcmp(be->name, colon + 1) != 0)
      continue;
    if (be->ops->needs_login != NULL && be->ops->needs_login(be) && !set_has(set, be))
      set->be[set->n++] = be;
    return;
  }
}

/*
 * The backends that receive the PIN of the account of slot. The account's
 * key stores come from the registry (not from the object table, which may
 * not be loaded); a missing registry means no keys yet.
 */
static CK_RV login_set_of(const kvp_slot *slot, login_set *set)
{
  char err[KVP_ERRLEN];
  char **stores = NULL;
  size_t n = 0;
  int rc = KVP_OK;

  set->n = 0;
  set->be = calloc(kvp_g.n_backends ? kvp_g.n_backends : 1, sizeof(*set->be));
  if (set->be == NULL)
    return kvp_fail(CKR_HOST_MEMORY, "login: out of memory");
  (void)kvp_refresh(); /* opens the registry if it appeared since */
  pthread_mutex_lock(&kvp_g.reg_lock);
  if (kvp_g.reg != NULL)
    rc = kvp_registry_key_stores(kvp_g.reg, slot->account->name, &stores, &n, err, sizeof(err));
  pthread_mutex_unlock(&kvp_g.reg_lock);
  if (rc != KVP_OK) {
    set_free(set);
    return kvp_fail(CKR_DEVICE_ERROR, "login: account '%s': %s", slot->account->name, err);
  }
  for (size_t i = 0; i < n; i++)
    set_add_store(set, stores[i]);
  kvp_registry_key_stores_free(stores, n);
  if (slot->account->default_store != NULL)
    set_add_store(set, slot->account->default_store);
  return CKR_OK;
}

int kvp_slot_login_required(CK_SLOT_ID id)
{
  const kvp_slot *slot;
  login_set set = {0};
  int required;

  pthread_rwlock_rdlock(&kvp_g.lock);
  slot = kvp_slot_locked(id); /* slots stay put from C_Initialize to C_Finalize */
  pthread_rwlock_unlock(&kvp_g.lock);
  if (slot == NULL || login_set_of(slot, &set) != CKR_OK)
    return kvp_slot_needs_login(); /* cannot tell: say what the module as a whole needs */
  required = set.n > 0;
  set_free(&set);
  return required;
}

/* Is be used by a logged-in slot other than self? */
static int used_by_other_slot(const kvp_slot *self, const kvp_backend *be)
{
  for (size_t i = 0; i < kvp_g.n_slots; i++) {
    const kvp_slot *other = &kvp_g.slots[i];
    login_set set = {0};
    int in, used;
    pthread_rwlock_rdlock(&kvp_g.lock);
    in = other->logged_in;
    pthread_rwlock_unlock(&kvp_g.lock);
    if (other == self || !in)
      continue;
    if (login_set_of(other, &set) != CKR_OK)
      return 1; /* cannot tell: keep it logged in */
    used = set_has(&set, be);
    set_free(&set);
    if (used)
      return 1;
  }
  return 0;
}

/* Log out the first n backends of set that no other logged-in slot needs. */
static void logout_unshared(const kvp_slot *slot, const login_set *set, size_t n)
{
  for (size_t i = 0; i < n; i++) {
    kvp_backend *be = set->be[i];
    if (be->ops->logout != NULL && !used_by_other_slot(slot, be))
      (void)kvp_backend_logout(be);
  }
}

CK_RV kvp_login(kvp_session *s, CK_USER_TYPE user, CK_UTF8CHAR_PTR pin, CK_ULONG len)
{
  kvp_slot *slot;
  login_set set = {0};
  int was_in;
  CK_RV rv;

  if (user != CKU_USER && user != CKU_SO && user != CKU_CONTEXT_SPECIFIC)
    return CKR_USER_TYPE_INVALID;
  if (user != CKU_USER)
    return kvp_fail_at(KVP_LOG_DEBUG, CKR_USER_TYPE_INVALID,
                       "login: only the normal user logs in (no SO functions, no "
                       "CKA_ALWAYS_AUTHENTICATE keys)");
  if (pin == NULL && len != 0)
    return CKR_ARGUMENTS_BAD;
  pthread_rwlock_rdlock(&kvp_g.lock);
  slot = kvp_slot_locked(s->slot);
  was_in = slot->logged_in;
  pthread_rwlock_unlock(&kvp_g.lock);

  if ((rv = login_set_of(slot, &set)) != CKR_OK)
    return rv;
  for (size_t i = 0; i < set.n; i++) {
    kvp_backend *be = set.be[i];
    rv = kvp_backend_login(be, pin, len);
    if (rv == CKR_USER_ALREADY_LOGGED_IN)
      rv = CKR_OK; /* the backend checked the PIN against its session's */
    if (rv != CKR_OK) {
      (void)kvp_fail(rv, "login: account '%s': %s %s refused the login", slot->account->name,
                     be->ops->scheme, be->name);
      kvp_audit_login_failure(slot->account->name, rv);
      if (!was_in)
        logout_unshared(slot, &set, i);
      set_free(&set);
      return rv;
    }
  }
  set_free(&set);
  if (was_in)
    return CKR_USER_ALREADY_LOGGED_IN;
  pthread_rwlock_wrlock(&kvp_g.lock);
  slot->logged_in = 1;
  pthread_rwlock_unlock(&kvp_g.lock);
  return CKR_OK;
}

CK_RV kvp_logout(kvp_session *s)
{
  kvp_slot *slot;
  int was_in;

  pthread_rwlock_wrlock(&kvp_g.lock);
  slot = kvp_slot_locked(s->slot);
  was_in = slot->logged_in;
  slot->logged_in = 0;
  pthread_rwlock_unlock(&kvp_g.lock);
  if (!was_in)
    return CKR_USER_NOT_LOGGED_IN;
  kvp_slot_backends_logout(slot);
  return CKR_OK;
}

void kvp_slot_backends_logout(const kvp_slot *slot)
{
  login_set set = {0};
  /* The slot's HSMs forget the PIN unless another logged-in token uses them. */
  if (login_set_of(slot, &set) == CKR_OK)
    logout_unshared(slot, &set, set.n);
  set_free(&set);
}
