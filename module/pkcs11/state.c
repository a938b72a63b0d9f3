/*
 * Global state of the front: C_Initialize / C_Finalize, fork, the slot
 * table built from the configuration, the incremental registry reload, the
 * session table, login state.
 */
#include "pkcs11/internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "core/audit.h"
#include "core/log.h"
#include "core/p11names.h"
#include "core/status.h"
#include "core/util.h"

kvp_global kvp_g = {
    .init_lock = PTHREAD_MUTEX_INITIALIZER,
    .lock = PTHREAD_RWLOCK_INITIALIZER,
    .reg_lock = PTHREAD_MUTEX_INITIALIZER,
};

#define SESS_DELETED ((kvp_session *)&kvp_g)

/* ---- fork ------------------------------------------------------------ */

/*
 * The prepare handler takes the table locks so that the child never inherits
 * them half-taken; nothing blocking runs under them, so this waits only for
 * short critical sections. The child only marks the state stale: everything
 * else happens in its C_Initialize.
 */
static void atfork_prepare(void)
{
  pthread_mutex_lock(&kvp_g.init_lock);
  pthread_mutex_lock(&kvp_g.reg_lock);
  pthread_rwlock_wrlock(&kvp_g.lock);
}

static void atfork_parent(void)
{
  pthread_rwlock_unlock(&kvp_g.lock);
  pthread_mutex_unlock(&kvp_g.reg_lock);
  pthread_mutex_unlock(&kvp_g.init_lock);
}

/*
 * The child has one thread, with another thread id than the one that took
 * the locks (glibc's rwlock records its writer's tid), so the locks are made
 * anew rather than unlocked.
 */
static void atfork_child(void)
{
  pthread_rwlock_init(&kvp_g.lock, NULL);
  pthread_mutex_init(&kvp_g.reg_lock, NULL);
  pthread_mutex_init(&kvp_g.init_lock, NULL);
  if (kvp_g.initialized)
    atomic_store(&kvp_g.forked, 1);
}

static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
static void atfork_register(void)
{
  pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

CK_RV kvp_check_initialized(void)
{
  if (!kvp_g.initialized || atomic_load_explicit(&kvp_g.forked, memory_order_relaxed))
    return CKR_CRYPTOKI_NOT_INITIALIZED;
  return CKR_OK;
}

/* ---- backends and slots ---------------------------------------------- */

static CK_RV make_backends(void)
{
  const kvp_config *cfg = kvp_g.cfg;
  size_t n = cfg->n_hsms + cfg->n_vaults;

  kvp_g.backends = calloc(n ? n : 1, sizeof(*kvp_g.backends));
  if (kvp_g.backends == NULL)
    return CKR_HOST_MEMORY;
  for (size_t i = 0; i < cfg->n_hsms; i++) {
    kvp_backend *be = NULL;
    if (kvp_hsm_backend_new(&cfg->hsms[i], &be) == CKR_OK)
      kvp_g.backends[kvp_g.n_backends++] = be;
  }
  for (size_t i = 0; i < cfg->n_vaults; i++) {
    kvp_backend *be = NULL;
    if (kvp_keyvault_backend_new(&cfg->vaults[i], &be) == CKR_OK)
      kvp_g.backends[kvp_g.n_backends++] = be;
  }
  return CKR_OK;
}

static void free_backends(int forked)
{
  for (size_t i = 0; i < kvp_g.n_backends; i++)
    kvp_g.backends[i]->ops->destroy(kvp_g.backends[i], forked);
  free(kvp_g.backends);
  kvp_g.backends = NULL;
  kvp_g.n_backends = 0;
}

int kvp_slot_needs_login(void)
{
  for (size_t i = 0; i < kvp_g.n_backends; i++) {
    kvp_backend *be = kvp_g.backends[i];
    if (be->ops->needs_login != NULL && be->ops->needs_login(be))
      return 1;
  }
  return 0;
}

static CK_RV make_slots(void)
{
  const kvp_config *cfg = kvp_g.cfg;

  kvp_g.slots = calloc(cfg->n_accounts, sizeof(*kvp_g.slots));
  if (kvp_g.slots == NULL)
    return CKR_HOST_MEMORY;
  kvp_g.n_slots = cfg->n_accounts;
  for (size_t i = 0; i < cfg->n_accounts; i++) {
    kvp_slot *slot = &kvp_g.slots[i];
    const char *label = cfg->accounts[i].label ? cfg->accounts[i].label : cfg->accounts[i].name;
    slot->id = (CK_SLOT_ID)i + 1;
    slot->account = &cfg->accounts[i];
    memset(slot->label, ' ', 32);
    memcpy(slot->label, label, strnlen(label, 32));
    slot->label[32] = '\0';
  }
  return CKR_OK;
}

kvp_slot *kvp_slot_locked(CK_SLOT_ID id)
{
  if (id < 1 || id > kvp_g.n_slots)
    return NULL;
  return &kvp_g.slots[id - 1];
}

/* The ids of the rows a reload found changed. */
typedef struct id_list {
  int64_t *ids;
  size_t n, cap;
} id_list;

static int push_id(void *ctx, int64_t id)
{
  id_list *l = ctx;

  if (kvp_grow(&l->ids, l->n, &l->cap, sizeof(*l->ids), 64) != 0)
    return KVP_ENOMEM;
  l->ids[l->n++] = id;
  return KVP_OK;
}

/* A reload failed: the next refresh tries again although data_version stays. */
static int reload_pending;

/*
 * With reg_lock held: the rows changed since the last look (only their ids
 * are read) and the key types of every account, by indexed queries; then,
 * under a short write lock, drop the cached objects of those rows. Nothing is
 * parsed: objects are made again when next asked for.
 */
static CK_RV apply_changes(void)
{
  char err[KVP_ERRLEN];
  id_list changed = {0};
  int *types = calloc(2 * (kvp_g.n_slots ? kvp_g.n_slots : 1), sizeof(*types));
  kvp_object *garbage = NULL;
  struct timespec held[2];
  int full = 0;
  int rc = types == NULL ? KVP_ENOMEM : KVP_OK;

  if (rc == KVP_OK)
    rc = kvp_registry_changes(kvp_g.reg, &kvp_g.reg_rev, &full, push_id, &changed, err,
                              sizeof(err));
  /* the slots' key types change only with the rows */
  int retype = full || changed.n > 0;
  for (size_t s = 0; rc == KVP_OK && retype && s < kvp_g.n_slots; s++)
    rc = kvp_registry_key_types(kvp_g.reg, kvp_g.slots[s].account->name, &types[2 * s],
                                &types[2 * s + 1], err, sizeof(err));
  if (rc != KVP_OK) {
    kvp_g.reg_rev = -1; /* look at everything again next time */
    reload_pending = 1;
    free(changed.ids);
    free(types);
    return rc == KVP_ENOMEM ? CKR_HOST_MEMORY : kvp_fail(CKR_DEVICE_ERROR, "%s", err);
  }
  if (changed.n > 1)
    qsort(changed.ids, changed.n, sizeof(*changed.ids), kvp_cmp_int64);
  pthread_rwlock_wrlock(&kvp_g.lock);
  clock_gettime(CLOCK_MONOTONIC, &held[0]);
  kvp_cache_invalidate_locked(changed.ids, changed.n, full, &garbage);
  for (size_t s = 0; retype && s < kvp_g.n_slots; s++) {
    kvp_g.slots[s].has_rsa = types[2 * s];
    kvp_g.slots[s].has_ec = types[2 * s + 1];
  }
  atomic_fetch_add(&kvp_g.generation, 1);
  clock_gettime(CLOCK_MONOTONIC, &held[1]);
  pthread_rwlock_unlock(&kvp_g.lock);
  /* what a reload can cost a signer on another session: the write lock */
  KVP_DEBUG("registry: %s, %zu row(s) changed; table lock held %.1f us",
            full ? "reloaded" : "changed", changed.n,
            (double)(held[1].tv_sec - held[0].tv_sec) * 1e6 +
                (double)(held[1].tv_nsec - held[0].tv_nsec) / 1e3);
  kvp_cache_release(garbage);
  free(changed.ids);
  free(types);
  return CKR_OK;
}

/* With reg_lock held. Opens the registry if it was missing so far. */
static CK_RV refresh_locked(void)
{
  char err[KVP_ERRLEN];
  int changed = 0;
  int rc;

  if (kvp_g.reg == NULL) {
    struct stat st;
    if (stat(kvp_g.cfg->registry, &st) != 0)
      return CKR_OK; /* no registry yet: no certificates */
    rc = kvp_registry_open(kvp_g.cfg->registry, 1, &kvp_g.reg, err, sizeof(err));
    if (rc != KVP_OK) {
      KVP_ERROR("registry: %s", err);
      kvp_g.reg = NULL;
      return rc == KVP_ENOTFOUND ? CKR_OK : CKR_DEVICE_ERROR;
    }
    kvp_g.reg_rev = -1;
    reload_pending = 0;
  }
  rc = kvp_registry_changed(kvp_g.reg, &changed, err, sizeof(err));
  if (rc != KVP_OK) {
    KVP_ERROR("registry: %s", err);
    return CKR_DEVICE_ERROR;
  }
  if (!changed && !reload_pending)
    return CKR_OK;
  reload_pending = 0;
  return apply_changes();
}

CK_RV kvp_refresh(void)
{
  CK_RV rv;
  pthread_mutex_lock(&kvp_g.reg_lock);
  rv = refresh_locked();
  pthread_mutex_unlock(&kvp_g.reg_lock);
  return rv;
}

/* ---- initialize / finalize ------------------------------------------- */

static CK_RV check_init_args(CK_C_INITIALIZE_ARGS_PTR args)
{
  int n_cb;

  if (args == NULL)
    return CKR_OK;
  if (args->pReserved != NULL)
    return CKR_ARGUMENTS_BAD;
  n_cb = (args->CreateMutex != NULL) + (args->DestroyMutex != NULL) + (args->LockMutex != NULL) +
         (args->UnlockMutex != NULL);
  if (n_cb != 0 && n_cb != 4)
    return CKR_ARGUMENTS_BAD;
  /*
   * All four cases are accepted: without callbacks, or with CKF_OS_LOCKING_OK,
   * the native locks are used; with application callbacks only, kvp11 still
   * uses the native (pthread) locks, which are the platform's own primitives
   * the callbacks wrap on every system kvp11 runs on.
   */
  return CKR_OK;
}

/* Free everything; forked: we are a child and the parent's state is stale. */
static void teardown(int forked)
{
  for (size_t i = 0; i < kvp_g.sess_cap; i++) {
    kvp_session *s = kvp_g.sessions ? kvp_g.sessions[i] : NULL;
    if (s == NULL || s == SESS_DELETED)
      continue;
    kvp_op_reset(&s->op);
    kvp_op_reset(&s->find);
    if (!forked)
      pthread_mutex_destroy(&s->lock);
    free(s);
  }
  free(kvp_g.sessions);
  kvp_g.sessions = NULL;
  kvp_g.sess_cap = kvp_g.sess_count = kvp_g.sess_used = 0;
  kvp_sessobj_clear(forked); /* before the backends go: session keys close there */
  {
    kvp_object *garbage = NULL;
    kvp_cache_invalidate_locked(NULL, 0, 1, &garbage);
    kvp_cache_release(garbage);
  }
  free(kvp_g.slots);
  kvp_g.slots = NULL;
  kvp_g.n_slots = 0;
  free_backends(forked);
  if (kvp_g.reg != NULL)
    kvp_registry_close(kvp_g.reg);
  kvp_g.reg = NULL;
  kvp_config_free(kvp_g.cfg);
  kvp_g.cfg = NULL;
  kvp_g.initialized = 0;
  atomic_store(&kvp_g.forked, 0);
}

static CK_RV load_config(void)
{
  char err[KVP_ERRLEN];
  const char *path = kvp_config_default_path();
  int rc = kvp_config_load(path, &kvp_g.cfg, err, sizeof(err));

  if (rc == KVP_OK)
    return CKR_OK;
  if (rc == KVP_ENOTFOUND && kvp_getenv("KVP11_CONF") == NULL) {
    /* No configuration installed: start with defaults and no key stores. */
    rc = kvp_config_load("/dev/null", &kvp_g.cfg, err, sizeof(err));
    if (rc == KVP_OK)
      return CKR_OK;
  }
  kvp_log_setup(KVP_LOG_ERROR, NULL);
  KVP_ERROR("configuration: %s", err);
  return CKR_FUNCTION_FAILED;
}

CK_RV kvp_initialize(CK_C_INITIALIZE_ARGS_PTR args)
{
  CK_RV rv = check_init_args(args);

  if (rv != CKR_OK)
    return rv;
  pthread_once(&atfork_once, atfork_register);
  pthread_mutex_lock(&kvp_g.init_lock);
  if (kvp_g.initialized && atomic_load(&kvp_g.forked)) {
    /* A child of an initialized process: drop the parent's state. */
    teardown(1);
  }
  if (kvp_g.initialized) {
    rv = CKR_CRYPTOKI_ALREADY_INITIALIZED;
    goto out;
  }
  rv = load_config();
  if (rv != CKR_OK)
    goto out;
  kvp_log_setup(kvp_g.cfg->log_level, kvp_g.cfg->log_file);
  kvp_audit_setup(kvp_g.cfg->audit);
  rv = make_backends();
  if (rv == CKR_OK)
    rv = make_slots();
  if (rv != CKR_OK) {
    teardown(0);
    goto out;
  }
  kvp_g.next_session = 1;
  kvp_g.initialized = 1;
  (void)kvp_refresh();
  KVP_INFO("initialized: %zu account(s), %zu key store(s), registry %s", kvp_g.n_slots,
           kvp_g.n_backends, kvp_g.cfg->registry);
out:
  pthread_mutex_unlock(&kvp_g.init_lock);
  return rv;
}

CK_RV kvp_finalize(void)
{
  CK_RV rv = CKR_OK;

  pthread_mutex_lock(&kvp_g.init_lock);
  if (!kvp_g.initialized || atomic_load(&kvp_g.forked)) {
    rv = CKR_CRYPTOKI_NOT_INITIALIZED;
  } else {
    KVP_INFO("finalized");
    teardown(0);
    kvp_log_close();
    kvp_audit_close();
  }
  pthread_mutex_unlock(&kvp_g.init_lock);
  return rv;
}

/* ---- sessions -------------------------------------------------------- */

static size_t sess_slot_of(CK_SESSION_HANDLE h, size_t cap)
{
  uint64_t x = (uint64_t)h * 0x9E3779B97F4A7C15ULL;
  return (size_t)(x >> 32) & (cap - 1);
}

/* With g.lock held for writing. */
static CK_RV sess_table_grow(void)
{
  size_t cap = kvp_g.sess_cap ? kvp_g.sess_cap * 2 : 64;
  kvp_session **tab;

  if (kvp_g.sess_cap != 0 && kvp_g.sess_count * 2 < kvp_g.sess_cap)
    cap = kvp_g.sess_cap; /* only tombstones: rehash in place size */
  tab = calloc(cap, sizeof(*tab));
  if (tab == NULL)
    return CKR_HOST_MEMORY;
  for (size_t i = 0; i < kvp_g.sess_cap; i++) {
    kvp_session *s = kvp_g.sessions[i];
    if (s == NULL || s == SESS_DELETED)
      continue;
    size_t j = sess_slot_of(s->handle, cap);
    while (tab[j] != NULL)
      j = (j + 1) & (cap - 1);
    tab[j] = s;
  }
  free(kvp_g.sessions);
  kvp_g.sessions = tab;
  kvp_g.sess_cap = cap;
  kvp_g.sess_used = kvp_g.sess_count;
  return CKR_OK;
}

/* With g.lock held. Index of the session's table entry, or SIZE_MAX. */
static size_t sess_find(CK_SESSION_HANDLE h)
{
  if (kvp_g.sess_cap == 0)
    return SIZE_MAX;
  for (size_t j = sess_slot_of(h, kvp_g.sess_cap), n = 0; n < kvp_g.sess_cap;
       j = (j + 1) & (kvp_g.sess_cap - 1), n++) {
    kvp_session *s = kvp_g.sessions[j];
    if (s == NULL)
      return SIZE_MAX;
    if (s != SESS_DELETED && s->handle == h)
      return j;
  }
  return SIZE_MAX;
}

CK_RV kvp_session_open(CK_SLOT_ID slot_id, CK_FLAGS flags, CK_SESSION_HANDLE *out)
{
  kvp_session *s = calloc(1, sizeof(*s));
  CK_RV rv = CKR_OK;

  if (s == NULL)
    return CKR_HOST_MEMORY;
  atomic_init(&s->refs, 1);
  pthread_mutex_init(&s->lock, NULL);
  s->slot = slot_id;
  s->flags = flags;

  pthread_rwlock_wrlock(&kvp_g.lock);
  if (kvp_slot_locked(slot_id) == NULL) {
    rv = CKR_SLOT_ID_INVALID;
    goto out;
  }
  if ((kvp_g.sess_used + 1) * 4 > kvp_g.sess_cap * 3 && (rv = sess_table_grow()) != CKR_OK)
    goto out;
  do {
    s->handle = kvp_g.next_session++;
    if (kvp_g.next_session == 0 || kvp_g.next_session > 0xFFFFFFFFUL)
      kvp_g.next_session = 1;
  } while (sess_find(s->handle) != SIZE_MAX);
  size_t j = sess_slot_of(s->handle, kvp_g.sess_cap);
  while (kvp_g.sessions[j] != NULL && kvp_g.sessions[j] != SESS_DELETED)
    j = (j + 1) & (kvp_g.sess_cap - 1);
  if (kvp_g.sessions[j] == NULL)
    kvp_g.sess_used++;
  kvp_g.sessions[j] = s;
  kvp_g.sess_count++;
  *out = s->handle;
  s = NULL;
out:
  pthread_rwlock_unlock(&kvp_g.lock);
  if (s != NULL) {
    pthread_mutex_destroy(&s->lock);
    free(s);
  }
  return rv;
}

CK_RV kvp_session_get(CK_SESSION_HANDLE h, kvp_session **out)
{
  CK_RV rv = kvp_check_initialized();
  size_t j;

  if (rv != CKR_OK)
    return rv;
  pthread_rwlock_rdlock(&kvp_g.lock);
  j = sess_find(h);
  if (j == SIZE_MAX) {
    rv = CKR_SESSION_HANDLE_INVALID;
  } else {
    *out = kvp_g.sessions[j];
    atomic_fetch_add(&(*out)->refs, 1);
  }
  pthread_rwlock_unlock(&kvp_g.lock);
  return rv;
}

void kvp_session_put(kvp_session *s)
{
  if (atomic_fetch_sub(&s->refs, 1) != 1)
    return;
  kvp_op_reset(&s->op);
  kvp_op_reset(&s->find);
  pthread_mutex_destroy(&s->lock);
  free(s);
}

/* With g.lock held for writing: unlink entry j; returns the session. */
static kvp_session *sess_unlink(size_t j)
{
  kvp_session *s = kvp_g.sessions[j];
  kvp_g.sessions[j] = SESS_DELETED;
  kvp_g.sess_count--;
  s->closed = 1;
  return s;
}

static int slot_logout_if_idle_locked(CK_SLOT_ID slot_id);
static void backends_logout(void);

CK_RV kvp_session_close(CK_SESSION_HANDLE h)
{
  kvp_session *s = NULL;
  CK_RV rv = kvp_check_initialized();
  int logout = 0;
  size_t j;

  if (rv != CKR_OK)
    return rv;
  pthread_rwlock_wrlock(&kvp_g.lock);
  j = sess_find(h);
  if (j == SIZE_MAX) {
    rv = CKR_SESSION_HANDLE_INVALID;
  } else {
    s = sess_unlink(j);
    logout = slot_logout_if_idle_locked(s->slot);
  }
  pthread_rwlock_unlock(&kvp_g.lock);
  if (logout)
    backends_logout();
  if (s != NULL) {
    kvp_sessobj_session_closed(s->handle);
    kvp_session_put(s);
  }
  return rv;
}

CK_RV kvp_session_close_all(CK_SLOT_ID slot_id)
{
  kvp_session **closing = NULL;
  size_t n = 0;
  int logout = 0;
  CK_RV rv = kvp_check_initialized();

  if (rv != CKR_OK)
    return rv;
  pthread_rwlock_wrlock(&kvp_g.lock);
  if (kvp_slot_locked(slot_id) == NULL) {
    rv = CKR_SLOT_ID_INVALID;
    goto out;
  }
  closing = calloc(kvp_g.sess_count ? kvp_g.sess_count : 1, sizeof(*closing));
  if (closing == NULL) {
    rv = CKR_HOST_MEMORY;
    goto out;
  }
  for (size_t j = 0; j < kvp_g.sess_cap; j++) {
    kvp_session *s = kvp_g.sessions[j];
    if (s != NULL && s != SESS_DELETED && s->slot == slot_id)
      closing[n++] = sess_unlink(j);
  }
  logout = slot_logout_if_idle_locked(slot_id);
out:
  pthread_rwlock_unlock(&kvp_g.lock);
  if (logout)
    backends_logout();
  for (size_t i = 0; i < n; i++) {
    kvp_sessobj_session_closed(closing[i]->handle);
    kvp_session_put(closing[i]);
  }
  free(closing);
  return rv;
}

CK_STATE kvp_session_state(const kvp_session *s, const kvp_slot *slot)
{
  int rw = (s->flags & CKF_RW_SESSION) != 0;
  if (slot->logged_in)
    return rw ? CKS_RW_USER_FUNCTIONS : CKS_RO_USER_FUNCTIONS;
  return rw ? CKS_RW_PUBLIC_SESSION : CKS_RO_PUBLIC_SESSION;
}

/* ---- login ----------------------------------------------------------- */

static int any_slot_logged_in_locked(void)
{
  for (size_t i = 0; i < kvp_g.n_slots; i++)
    if (kvp_g.slots[i].logged_in)
      return 1;
  return 0;
}

/*
 * Closing the last session of a token logs it out (PKCS#11 5.6). Returns 1
 * when no token is logged in any more: the caller then logs out the HSMs
 * that took the application's PIN (after dropping g.lock), so that the next
 * C_Login checks its PIN again.
 */
static int slot_logout_if_idle_locked(CK_SLOT_ID slot_id)
{
  kvp_slot *slot = kvp_slot_locked(slot_id);
  if (slot == NULL || !slot->logged_in)
    return 0;
  for (size_t j = 0; j < kvp_g.sess_cap; j++) {
    kvp_session *s = kvp_g.sessions[j];
    if (s != NULL && s != SESS_DELETED && s->slot == slot_id)
      return 0;
  }
  slot->logged_in = 0;
  return !any_slot_logged_in_locked();
}

static void backends_logout(void)
{
  for (size_t i = 0; i < kvp_g.n_backends; i++) {
    kvp_backend *be = kvp_g.backends[i];
    if (be->ops->needs_login != NULL && be->ops->needs_login(be) && be->ops->logout != NULL)
      (void)kvp_backend_logout(be);
  }
}

/* kvp_login / kvp_logout: login.c */

/* ---- objects --------------------------------------------------------- */

/*
 * The steady state of a signer: its key object is cached, and this is one
 * hash lookup under the read lock. Otherwise the object is made from its
 * registry row (find.c).
 */
CK_RV kvp_object_get(kvp_session *s, CK_OBJECT_HANDLE h, kvp_object **out)
{
  CK_RV rv = CKR_OBJECT_HANDLE_INVALID;
  kvp_object *o;
  int miss = 0;

  if (kvp_is_sessobj(h))
    return kvp_sessobj_get(s, h, out);
  pthread_rwlock_rdlock(&kvp_g.lock);
  o = kvp_cache_lookup_locked(h);
  if (o == NULL) {
    miss = 1;
  } else if (o->slot == s->slot && (!o->is_private || kvp_slot_locked(s->slot)->logged_in)) {
    atomic_fetch_add(&o->refs, 1);
    *out = o;
    rv = CKR_OK;
  }
  pthread_rwlock_unlock(&kvp_g.lock);
  if (miss)
    return kvp_object_load(s, h, out);
  if (rv == CKR_OK && (rv = kvp_object_ready(*out)) != CKR_OK)
    kvp_object_put(*out);
  return rv;
}

void kvp_object_put(kvp_object *o)
{
  if (o != NULL && atomic_fetch_sub(&o->refs, 1) == 1)
    kvp_object_free(o);
}
