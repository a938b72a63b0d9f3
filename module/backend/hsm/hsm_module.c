/*
 * The HSM's module: dlopen, C_GetFunctionList, C_Initialize / C_Finalize with
 * the fork and shared-module rules, the token search, and KVP_HSM_CALL, the
 * one wrapper every call into the HSM's function list goes through.
 *
 * Fork: SoftHSM2 2.6.1 (default library.reset_on_fork = false) answers
 * CKR_CRYPTOKI_ALREADY_INITIALIZED when a child of a process that initialized
 * it calls C_Initialize again, and its state (sessions, login) is the
 * parent's copy. We remember, per loaded function list, which process
 * initialized it; a backend created in a child that gets
 * CKR_CRYPTOKI_ALREADY_INITIALIZED for a module that kvp11 initialized in
 * another process calls C_Finalize and C_Initialize again to start from a
 * clean state. A module that the application itself initialized
 * (ALREADY_INITIALIZED with no record of ours) is used as is and never
 * finalized. Several [hsm] sections on one module share one initialization;
 * the last one destroyed finalizes it.
 *
 * A failed initialization (module missing, token absent, C_Initialize
 * refused) is remembered with its reason: calls within the next
 * KVP_HSM_INIT_RETRY_SECS fail at once with it, so a process (or a forked
 * child) whose HSM does not answer pays for one attempt, not one per call.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>

#include "backend/hsm/hsm_internal.h"
#include "core/log.h"
#include "core/p11names.h"
#include "core/status.h"
#include "core/util.h"

#define KVP_HSM_MAX_SLOTS 256

/* ---------- the call wrapper ---------- */

void kvp_hsm_call_begin(void)
{
  ERR_set_mark();
}

CK_RV kvp_hsm_call_end(const kvp_hsm_backend *be, const char *fn, CK_RV rv)
{
  ERR_pop_to_mark(); /* what the HSM's module left in our thread's queue */
  KVP_DEBUG("hsm %s: %s: %s", be->base.name, fn, kvp_ckr_name(rv));
  return rv;
}

/* ---------- modules kvp11 initialized (fork detection, shared modules) ---------- */

typedef struct {
  CK_FUNCTION_LIST_PTR f;
  pid_t pid; /* process that C_Initialize()d it */
  int refs;  /* backends of that process using it */
} kvp_hsm_mod;

static pthread_mutex_t g_mods_lock = PTHREAD_MUTEX_INITIALIZER;
static kvp_hsm_mod g_mods[16];

/* g_mods_lock is held only for a few instructions, but a fork() at that
 * moment must not leave it locked forever in the child. */
static void mods_atfork_prepare(void)
{
  pthread_mutex_lock(&g_mods_lock);
}
static void mods_atfork_parent(void)
{
  pthread_mutex_unlock(&g_mods_lock);
}
static void mods_atfork_child(void)
{
  pthread_mutex_init(&g_mods_lock, NULL);
}
static pthread_once_t g_mods_once = PTHREAD_ONCE_INIT;
static void mods_atfork_register(void)
{
  pthread_atfork(mods_atfork_prepare, mods_atfork_parent, mods_atfork_child);
}

void kvp_hsm_mods_once(void)
{
  pthread_once(&g_mods_once, mods_atfork_register);
}

static kvp_hsm_mod *mods_find_locked(CK_FUNCTION_LIST_PTR f)
{
  for (size_t i = 0; i < KVP_ARRAY_SIZE(g_mods); i++)
    if (g_mods[i].f == f)
      return &g_mods[i];
  return NULL;
}

/* Record that this process initialized be->f (or joins that initialization). */
static void mods_register(kvp_hsm_backend *be)
{
  pthread_mutex_lock(&g_mods_lock);
  kvp_hsm_mod *m = mods_find_locked(be->f);
  if (m == NULL)
    m = mods_find_locked(NULL);
  if (m != NULL) {
    m->f = be->f;
    m->pid = getpid();
    m->refs = 1;
    be->refcounted = 1;
  }
  pthread_mutex_unlock(&g_mods_lock);
  if (!be->refcounted) /* table full: keep it initialized for the process lifetime */
    KVP_WARN("hsm %s: too many HSM modules; %s will not be finalized", be->base.name, be->module);
}

/* C_Initialize, with the fork and shared-module rules described at the top. */
static CK_RV module_initialize(kvp_hsm_backend *be)
{
  CK_C_INITIALIZE_ARGS args;
  memset(&args, 0, sizeof(args));
  args.flags = CKF_OS_LOCKING_OK;

  CK_RV rv = KVP_HSM_CALL(be, C_Initialize, &args);
  if (rv == CKR_CRYPTOKI_ALREADY_INITIALIZED) {
    pthread_mutex_lock(&g_mods_lock);
    kvp_hsm_mod *m = mods_find_locked(be->f);
    int stale = m != NULL && m->pid != getpid();
    int shared = m != NULL && m->pid == getpid();
    if (shared)
      m->refs++;
    pthread_mutex_unlock(&g_mods_lock);
    if (shared) {
      be->refcounted = 1;
      return CKR_OK;
    }
    if (!stale) {
      /* the application initialized it: use it, never finalize it */
      KVP_DEBUG("hsm %s: %s was already initialized by the application", be->base.name, be->module);
      return CKR_OK;
    }
    /* a forked child of a process where kvp11 initialized the module */
    KVP_INFO("hsm %s: re-initializing %s in forked child", be->base.name, be->module);
    (void)KVP_HSM_CALL(be, C_Finalize, NULL);
    rv = KVP_HSM_CALL(be, C_Initialize, &args);
  }
  if (rv == CKR_GENERAL_ERROR)
    /* SoftHSM2's answer when this user cannot read softhsm2.conf or the token store */
    return kvp_fail(CKR_DEVICE_ERROR,
                    "hsm %s: C_Initialize (%s): %s: the module could not set itself up for this "
                    "process (uid %ld); with SoftHSM2, check that this user can read its "
                    "configuration file and token directory (see docs/deployment.md)",
                    be->base.name, be->module, kvp_ckr_name(rv), (long)getuid());
  if (rv != CKR_OK)
    return kvp_fail(CKR_DEVICE_ERROR, "hsm %s: C_Initialize (%s): %s", be->base.name, be->module,
                    kvp_ckr_name(rv));
  mods_register(be);
  return CKR_OK;
}

/* Undo module_initialize: C_Finalize when the last backend of this process goes. */
static void module_release(kvp_hsm_backend *be)
{
  if (!be->refcounted)
    return;
  int last = 0;
  pthread_mutex_lock(&g_mods_lock);
  kvp_hsm_mod *m = mods_find_locked(be->f);
  if (m != NULL && m->pid == getpid() && --m->refs <= 0) {
    memset(m, 0, sizeof(*m));
    last = 1;
  }
  pthread_mutex_unlock(&g_mods_lock);
  be->refcounted = 0;
  if (last)
    (void)KVP_HSM_CALL(be, C_Finalize, NULL);
}

void kvp_hsm_unload_locked(kvp_hsm_backend *be)
{
  if (be->f != NULL) {
    if (be->anchor != CK_INVALID_HANDLE)
      kvp_hsm_session_close(be, be->anchor);
    module_release(be);
  }
  be->anchor = CK_INVALID_HANDLE;
  be->f = NULL;
  if (be->dl != NULL)
    dlclose(be->dl);
  be->dl = NULL;
}

/* ---------- token ---------- */

static int padded_eq(const unsigned char *field, size_t field_len, const char *want)
{
  size_t n = strlen(want);
  if (n > field_len)
    return 0;
  if (memcmp(field, want, n) != 0)
    return 0;
  for (size_t i = n; i < field_len; i++)
    if (field[i] != ' ' && field[i] != '\0')
      return 0;
  return 1;
}

static CK_RV find_slot(kvp_hsm_backend *be)
{
  CK_SLOT_ID slots[KVP_HSM_MAX_SLOTS];
  CK_ULONG n = KVP_ARRAY_SIZE(slots);
  CK_RV rv = KVP_HSM_CALL(be, C_GetSlotList, CK_TRUE, slots, &n);
  if (rv != CKR_OK) {
    CK_RV mapped = kvp_hsm_map_rv(rv);
    return kvp_fail(mapped == CKR_FUNCTION_FAILED ? CKR_DEVICE_ERROR : mapped,
                    "hsm %s: C_GetSlotList: %s", be->base.name, kvp_ckr_name(rv));
  }
  CK_ULONG initialized = 0;
  for (CK_ULONG i = 0; i < n; i++) {
    CK_TOKEN_INFO ti;
    if (KVP_HSM_CALL(be, C_GetTokenInfo, slots[i], &ti) != CKR_OK)
      continue;
    initialized += (ti.flags & CKF_TOKEN_INITIALIZED) != 0;
    if ((be->token_label && padded_eq(ti.label, sizeof(ti.label), be->token_label)) ||
        (be->serial && padded_eq(ti.serialNumber, sizeof(ti.serialNumber), be->serial))) {
      be->slot = slots[i];
      /* 0 (CK_EFFECTIVELY_INFINITE) and CK_UNAVAILABLE_INFORMATION: no limit known */
      be->max_sessions =
          ti.ulMaxSessionCount == CK_UNAVAILABLE_INFORMATION ? 0 : ti.ulMaxSessionCount;
      return CKR_OK;
    }
  }
  if (initialized == 0)
    /* SoftHSM2 shows only an empty slot to a user who cannot read its token store */
    return kvp_fail(CKR_TOKEN_NOT_PRESENT,
                    "hsm %s: %s shows no initialized token to this process (uid %ld): its token "
                    "store is probably not readable by this user (SoftHSM2: directories.tokendir "
                    "and each token's directory must be readable and writable by it, e.g. through "
                    "the group softhsm; see docs/deployment.md)",
                    be->base.name, be->module, (long)getuid());
  return kvp_fail(CKR_TOKEN_NOT_PRESENT, "hsm %s: no token with %s '%s' in %s", be->base.name,
                  be->token_label ? "label" : "serial", kvp_hsm_token(be), be->module);
}

/* ---------- lazy init ---------- */

static CK_RV load_module(kvp_hsm_backend *be)
{
  ERR_set_mark(); /* library constructors may use OpenSSL */
  be->dl = dlopen(be->module, RTLD_NOW | RTLD_LOCAL);
  ERR_pop_to_mark();
  if (be->dl == NULL) {
    const char *e = dlerror();
    size_t ml = strlen(be->module);
    /* dlerror() says "PATH: why": keep only the why, the path is named once */
    if (e != NULL && strncmp(e, be->module, ml) == 0 && strncmp(e + ml, ": ", 2) == 0)
      e += ml + 2;
    return kvp_fail(CKR_DEVICE_ERROR, "hsm %s: cannot load module %s: %s", be->base.name,
                    be->module, e ? e : "?");
  }
  CK_C_GetFunctionList gfl;
  void *sym = dlsym(be->dl, "C_GetFunctionList");
  memcpy(&gfl, &sym, sizeof(gfl)); /* object pointer -> function pointer, ISO C safe */
  if (gfl == NULL)
    return kvp_fail(CKR_DEVICE_ERROR, "hsm %s: %s has no C_GetFunctionList", be->base.name,
                    be->module);
  CK_FUNCTION_LIST_PTR f = NULL;
  kvp_hsm_call_begin();
  CK_RV rv = kvp_hsm_call_end(be, "C_GetFunctionList", gfl(&f));
  if (rv != CKR_OK || f == NULL)
    return kvp_fail(CKR_DEVICE_ERROR, "hsm %s: C_GetFunctionList (%s): %s", be->base.name,
                    be->module, kvp_ckr_name(rv));
  be->f = f;
  return CKR_OK;
}

static CK_RV init_locked(kvp_hsm_backend *be)
{
  CK_RV rv = load_module(be);
  if (rv == CKR_OK)
    rv = module_initialize(be);
  if (rv == CKR_OK)
    rv = find_slot(be);
  if (rv == CKR_OK) {
    CK_RV hrv = kvp_hsm_session_open(be, 0, &be->anchor);
    if (hrv != CKR_OK) {
      be->anchor = CK_INVALID_HANDLE;
      CK_RV mapped = kvp_hsm_map_rv(hrv);
      rv = kvp_fail(mapped == CKR_FUNCTION_FAILED ? CKR_DEVICE_ERROR : mapped,
                    "hsm %s: C_OpenSession: %s", be->base.name, kvp_ckr_name(hrv));
    }
  }
  if (rv != CKR_OK) {
    kvp_hsm_unload_locked(be);
    return rv;
  }
  /* a refused configured PIN leaves the module initialized: open_key, sign
   * and decrypt report it, and nothing logs in again until the PIN changes */
  if (be->has_pin)
    (void)kvp_hsm_conf_login_locked(be);
  return CKR_OK;
}

CK_RV kvp_hsm_ensure_init(kvp_hsm_backend *be)
{
  if (atomic_load_explicit(&be->ready, memory_order_acquire))
    return CKR_OK;
  pthread_mutex_lock(&be->init_lock);
  CK_RV rv = CKR_OK;
  if (!atomic_load_explicit(&be->ready, memory_order_relaxed)) {
    time_t now = time(NULL);
    if (be->init_failed_at != 0 && now - be->init_failed_at < KVP_HSM_INIT_RETRY_SECS &&
        now >= be->init_failed_at) {
      rv = kvp_fail_at(KVP_LOG_DEBUG, be->init_failed_rv, "%s (not tried again before %d s)",
                       be->init_failed_why, KVP_HSM_INIT_RETRY_SECS);
    } else {
      /* the reason of this failure, kept for the calls that do not retry */
      kvp_status outer, mine;
      kvp_status_get(&outer);
      kvp_status_clear();
      rv = init_locked(be);
      kvp_status_get(&mine);
      kvp_status_clear();
      kvp_status_set(&outer); /* first reason wins, as if never cleared */
      kvp_status_set(&mine);
      if (rv == CKR_OK) {
        be->init_failed_at = 0;
        atomic_store_explicit(&be->ready, 1, memory_order_release);
      } else {
        be->init_failed_at = now;
        be->init_failed_rv = rv;
        snprintf(be->init_failed_why, sizeof(be->init_failed_why), "%s",
                 mine.msg[0] != '\0' ? mine.msg : kvp_ckr_name(rv));
      }
    }
  }
  pthread_mutex_unlock(&be->init_lock);
  return rv;
}
