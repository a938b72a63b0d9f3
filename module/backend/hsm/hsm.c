/*
 * The "hsm" backend: a proxy to another PKCS#11 module (SoftHSM2 in tests,
 * a Luna / YubiHSM / TPM module on appliances), loaded with dlopen().
 *
 * Life cycle
 *   kvp_hsm_backend_new() only copies the configuration. The first open_key()
 *   (or login()) loads the module, C_Initialize()s it with CKF_OS_LOCKING_OK,
 *   finds the token by label or serial (slot ids are not stable: SoftHSM2
 *   gives random ones, so we always search), opens one "anchor" session that
 *   lives as long as the backend (PKCS#11 drops the login state when the last
 *   session of the application closes) and, with a configured PIN, logs in
 *   on it. That lazy init runs under be->init_lock, the only kvp11 lock ever
 *   held across a call into the HSM: once for the init, and otherwise only
 *   around the rare C_Login / C_Logout on the anchor session (the
 *   application's pass-through PIN, or logging in again with the configured
 *   PIN when the token forgot our login because someone closed all sessions).
 *
 * Sessions
 *   sign/decrypt take an idle session from a small stack (be->pool_lock is
 *   held only to pop or push), open a new one when the stack is empty, and
 *   push it back afterwards (surplus above KVP_HSM_POOL_MAX is closed). No
 *   lock is held across C_SignInit/C_Sign/C_DecryptInit/C_Decrypt, so N
 *   threads have N operations in flight in the HSM. A session the HSM says
 *   is gone (CKR_SESSION_HANDLE_INVALID / CKR_SESSION_CLOSED) is dropped and
 *   the operation retried once on a freshly opened session.
 *
 * Keys
 *   A key name is a CKA_LABEL, or "id:<hex>" for a CKA_ID. The public key is
 *   read once at open_key; the private key handle is cached. When the HSM
 *   answers CKR_OBJECT_HANDLE_INVALID / CKR_KEY_HANDLE_INVALID (the key was
 *   deleted and re-created by someone else), it is resolved again and the
 *   operation retried once. Without a configured PIN the private object is
 *   invisible until the application logs in; it is then resolved at the
 *   first sign/decrypt after each login (login generation counter).
 *
 * Mechanisms
 *   RSA PKCS#1 v1.5 with a hash: the DigestInfo is built here and signed with
 *   CKM_RSA_PKCS; without a hash the input goes to CKM_RSA_PKCS as is. PSS:
 *   CKM_RSA_PKCS_PSS with the given hash, MGF1 and salt. ECDSA: CKM_ECDSA.
 *   Decrypt: CKM_RSA_PKCS, CKM_RSA_PKCS_OAEP (no label). An HSM that refuses
 *   an OAEP hash at C_DecryptInit (SoftHSM2 2.6.1 knows SHA-1 only) gets
 *   CKM_RSA_X_509 instead and the OAEP encoding is checked here, in constant
 *   time; the choice is remembered per backend and hash.
 *
 * Errors
 *   The HSM's CK_RV is passed through when it means something to the
 *   application (PIN, login, data/ciphertext length, key function, mechanism,
 *   device errors; see rv_passthrough), others become CKR_DEVICE_ERROR or
 *   CKR_FUNCTION_FAILED; CKR_ARGUMENTS_BAD at C_SignInit/C_DecryptInit with
 *   parameters is CKR_MECHANISM_PARAM_INVALID; a failing C_Decrypt of a
 *   well-sized ciphertext is CKR_ENCRYPTED_DATA_INVALID (SoftHSM2 says
 *   CKR_GENERAL_ERROR for bad padding). One log line per failure:
 *   "hsm NAME: C_Sign (key 'label'): CKR_XXX [(reported as CKR_YYY)]".
 *
 * Provisioning
 *   create_key, import_key, delete_key, list_keys and key_info live in
 *   hsm_provision.c (shared declarations: hsm_internal.h). They use a session
 *   of their own, never a pooled one, and be->prov_lock, which sign and
 *   decrypt never take.
 *
 * Fork
 *   destroy(be, forked != 0) frees memory only. SoftHSM2 2.6.1 (default
 *   library.reset_on_fork = false) answers CKR_CRYPTOKI_ALREADY_INITIALIZED
 *   when a child of a process that initialized it calls C_Initialize again,
 *   and its state (sessions, login) is the parent's copy. We remember, per
 *   loaded function list, which process initialized it; a backend created
 *   in a child that gets CKR_CRYPTOKI_ALREADY_INITIALIZED for a module that
 *   kvp11 initialized in another process calls C_Finalize and C_Initialize
 *   again to start from a clean state. A module that the application itself
 *   initialized (ALREADY_INITIALIZED with no record of ours) is used as is
 *   and never finalized.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/param_build.h>
#include <openssl/x509.h>

#include "backend/backend.h"
#include "backend/hsm/hsm_internal.h"
#include "core/config.h"
#include "core/cert.h"
#include "core/log.h"
#include "core/p11names.h"
#include "core/util.h"

#define KVP_HSM_MAX_SLOTS 256

/* ---------- modules kvp11 initialized (fork detection, shared modules) ---------- */

typedef struct {
  CK_FUNCTION_LIST_PTR f;
  pid_t pid;  /* process that C_Initialize()d it */
  int refs;   /* backends of that process using it */
} kvp_hsm_mod;

static pthread_mutex_t g_mods_lock = PTHREAD_MUTEX_INITIALIZER;
static kvp_hsm_mod g_mods[16];

/* g_mods_lock is held only for a few instructions, but a fork() at that
 * moment must not leave it locked forever in the child. */
static void mods_atfork_prepare(void) { pthread_mutex_lock(&g_mods_lock); }
static void mods_atfork_parent(void) { pthread_mutex_unlock(&g_mods_lock); }
static void mods_atfork_child(void) { pthread_mutex_init(&g_mods_lock, NULL); }
static pthread_once_t g_mods_once = PTHREAD_ONCE_INIT;
static void mods_atfork_register(void) {
  pthread_atfork(mods_atfork_prepare, mods_atfork_parent, mods_atfork_child);
}

static kvp_hsm_mod *mods_find_locked(CK_FUNCTION_LIST_PTR f) {
  for (size_t i = 0; i < KVP_ARRAY_SIZE(g_mods); i++)
    if (g_mods[i].f == f)
      return &g_mods[i];
  return NULL;
}

/* ---------- small helpers ---------- */

static kvp_hsm_backend *hsm_of(kvp_backend *be) { return (kvp_hsm_backend *)be; }

static const char *key_desc(const kvp_hsm_key *k) { return k->key.name ? k->key.name : "?"; }

/* Is rv worth passing through to the application as is? */
static int rv_passthrough(CK_RV rv) {
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

/* Map an HSM CK_RV to what we tell the application. */
CK_RV kvp_hsm_map_rv(CK_RV rv) {
  if (rv_passthrough(rv))
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
    return CKR_DEVICE_ERROR;
  default:
    return CKR_FUNCTION_FAILED;
  }
}

static CK_MECHANISM_TYPE hash_mech(kvp_hash h) {
  switch (h) {
  case KVP_HASH_SHA1: return CKM_SHA_1;
  case KVP_HASH_SHA224: return CKM_SHA224;
  case KVP_HASH_SHA256: return CKM_SHA256;
  case KVP_HASH_SHA384: return CKM_SHA384;
  case KVP_HASH_SHA512: return CKM_SHA512;
  default: return CK_UNAVAILABLE_INFORMATION;
  }
}

static CK_RSA_PKCS_MGF_TYPE hash_mgf(kvp_hash h) {
  switch (h) {
  case KVP_HASH_SHA1: return CKG_MGF1_SHA1;
  case KVP_HASH_SHA224: return CKG_MGF1_SHA224;
  case KVP_HASH_SHA256: return CKG_MGF1_SHA256;
  case KVP_HASH_SHA384: return CKG_MGF1_SHA384;
  case KVP_HASH_SHA512: return CKG_MGF1_SHA512;
  default: return 0;
  }
}

/* DER DigestInfo prefixes (SEQUENCE { AlgorithmIdentifier, OCTET STRING hdr }). */
typedef struct {
  kvp_hash hash;
  size_t hash_len;
  size_t prefix_len;
  unsigned char prefix[19];
} kvp_hsm_diginfo;

static const kvp_hsm_diginfo diginfos[] = {
    {KVP_HASH_SHA1, 20, 15,
     {0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00, 0x04, 0x14}},
    {KVP_HASH_SHA224, 28, 19,
     {0x30, 0x2d, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x04,
      0x05, 0x00, 0x04, 0x1c}},
    {KVP_HASH_SHA256, 32, 19,
     {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
      0x05, 0x00, 0x04, 0x20}},
    {KVP_HASH_SHA384, 48, 19,
     {0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02,
      0x05, 0x00, 0x04, 0x30}},
    {KVP_HASH_SHA512, 64, 19,
     {0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03,
      0x05, 0x00, 0x04, 0x40}},
};

static const kvp_hsm_diginfo *diginfo_for(kvp_hash h) {
  for (size_t i = 0; i < KVP_ARRAY_SIZE(diginfos); i++)
    if (diginfos[i].hash == h)
      return &diginfos[i];
  return NULL;
}

/* ---------- session pool ---------- */

static CK_RV pool_get(kvp_hsm_backend *be, CK_SESSION_HANDLE *out) {
  pthread_mutex_lock(&be->pool_lock);
  if (be->n_pool > 0) {
    *out = be->pool[--be->n_pool];
    pthread_mutex_unlock(&be->pool_lock);
    return CKR_OK;
  }
  pthread_mutex_unlock(&be->pool_lock);
  return be->f->C_OpenSession(be->slot, CKF_SERIAL_SESSION, NULL, NULL, out);
}

static void pool_put(kvp_hsm_backend *be, CK_SESSION_HANDLE s) {
  pthread_mutex_lock(&be->pool_lock);
  if (be->n_pool < KVP_HSM_POOL_MAX) {
    be->pool[be->n_pool++] = s;
    pthread_mutex_unlock(&be->pool_lock);
    return;
  }
  pthread_mutex_unlock(&be->pool_lock);
  be->f->C_CloseSession(s);
}

/* Drop a session the HSM no longer knows (or whose state we cannot trust). */
static void pool_drop(kvp_hsm_backend *be, CK_SESSION_HANDLE s) { be->f->C_CloseSession(s); }

static int session_gone(CK_RV rv) {
  return rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED;
}

static int handle_gone(CK_RV rv) {
  return rv == CKR_OBJECT_HANDLE_INVALID || rv == CKR_KEY_HANDLE_INVALID;
}

/* ---------- lazy init ---------- */

static CK_RV read_conf_pin(kvp_hsm_backend *be, char **pin, size_t *pin_len) {
  kvp_hsm_conf c;
  char err[KVP_ERRLEN];
  memset(&c, 0, sizeof(c));
  c.name = be->base.name;
  c.module = be->module;
  c.token_label = be->token_label;
  c.serial = be->serial;
  c.pin_file = be->pin_file;
  c.pin_env = be->pin_env;
  c.line = be->conf_line;
  err[0] = '\0';
  int rc = kvp_hsm_conf_pin(&c, pin, pin_len, err, sizeof(err));
  if (rc != KVP_OK) {
    KVP_ERROR("hsm %s: cannot read the PIN: %s", be->base.name, err);
    return rc == KVP_ENOMEM ? CKR_HOST_MEMORY : CKR_PIN_INCORRECT;
  }
  return CKR_OK;
}

static int padded_eq(const unsigned char *field, size_t field_len, const char *want) {
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

static CK_RV find_slot(kvp_hsm_backend *be) {
  CK_SLOT_ID slots[KVP_HSM_MAX_SLOTS];
  CK_ULONG n = KVP_ARRAY_SIZE(slots);
  CK_RV rv = be->f->C_GetSlotList(CK_TRUE, slots, &n);
  if (rv != CKR_OK) {
    KVP_ERROR("hsm %s: C_GetSlotList: %s", be->base.name, kvp_ckr_name(rv));
    return kvp_hsm_map_rv(rv) == CKR_FUNCTION_FAILED ? CKR_DEVICE_ERROR : kvp_hsm_map_rv(rv);
  }
  for (CK_ULONG i = 0; i < n; i++) {
    CK_TOKEN_INFO ti;
    if (be->f->C_GetTokenInfo(slots[i], &ti) != CKR_OK)
      continue;
    if (be->token_label && padded_eq(ti.label, sizeof(ti.label), be->token_label)) {
      be->slot = slots[i];
      return CKR_OK;
    }
    if (be->serial && padded_eq(ti.serialNumber, sizeof(ti.serialNumber), be->serial)) {
      be->slot = slots[i];
      return CKR_OK;
    }
  }
  KVP_ERROR("hsm %s: no token with %s '%s' in %s", be->base.name,
            be->token_label ? "label" : "serial",
            be->token_label ? be->token_label : be->serial, be->module);
  return CKR_TOKEN_NOT_PRESENT;
}

/* C_Initialize, with the fork and shared-module rules described at the top. */
static CK_RV module_initialize(kvp_hsm_backend *be) {
  CK_C_INITIALIZE_ARGS args;
  memset(&args, 0, sizeof(args));
  args.flags = CKF_OS_LOCKING_OK;
  pid_t me = getpid();

  CK_RV rv = be->f->C_Initialize(&args);
  if (rv == CKR_CRYPTOKI_ALREADY_INITIALIZED) {
    pthread_mutex_lock(&g_mods_lock);
    kvp_hsm_mod *m = mods_find_locked(be->f);
    int stale = m != NULL && m->pid != me;
    int shared = m != NULL && m->pid == me;
    if (shared)
      m->refs++;
    pthread_mutex_unlock(&g_mods_lock);
    if (shared) {
      be->refcounted = 1;
      return CKR_OK;
    }
    if (!stale) {
      /* the application initialized it: use it, never finalize it */
      KVP_DEBUG("hsm %s: %s was already initialized by the application", be->base.name,
                be->module);
      return CKR_OK;
    }
    /* a forked child of a process where kvp11 initialized the module */
    KVP_INFO("hsm %s: re-initializing %s in forked child", be->base.name, be->module);
    be->f->C_Finalize(NULL);
    rv = be->f->C_Initialize(&args);
  }
  if (rv != CKR_OK) {
    KVP_ERROR("hsm %s: C_Initialize (%s): %s", be->base.name, be->module, kvp_ckr_name(rv));
    return CKR_DEVICE_ERROR;
  }
  pthread_mutex_lock(&g_mods_lock);
  kvp_hsm_mod *m = mods_find_locked(be->f);
  if (m == NULL)
    m = mods_find_locked(NULL);
  if (m != NULL) {
    m->f = be->f;
    m->pid = me;
    m->refs = 1;
    be->refcounted = 1;
  }
  pthread_mutex_unlock(&g_mods_lock);
  if (!be->refcounted) /* table full: keep it initialized for the process lifetime */
    KVP_WARN("hsm %s: too many HSM modules; %s will not be finalized", be->base.name,
             be->module);
  return CKR_OK;
}

/* Undo module_initialize: C_Finalize when the last backend of this process goes. */
static void module_release(kvp_hsm_backend *be) {
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
    be->f->C_Finalize(NULL);
}

static void unload_locked(kvp_hsm_backend *be) {
  if (be->f != NULL) {
    if (be->anchor != CK_INVALID_HANDLE)
      be->f->C_CloseSession(be->anchor);
    module_release(be);
  }
  be->anchor = CK_INVALID_HANDLE;
  be->f = NULL;
  if (be->dl != NULL)
    dlclose(be->dl);
  be->dl = NULL;
}

/*
 * C_Login on the anchor session, opening it if needed and once more if the
 * HSM has lost it (C_CloseAllSessions by someone else, HSM restart). Returns
 * the HSM's CK_RV; CKR_USER_ALREADY_LOGGED_IN counts as success. Called with
 * init_lock held.
 */
static CK_RV anchor_login_locked(kvp_hsm_backend *be, const CK_UTF8CHAR *pin, CK_ULONG pin_len) {
  for (int attempt = 0;; attempt++) {
    CK_RV rv;
    if (be->anchor == CK_INVALID_HANDLE) {
      rv = be->f->C_OpenSession(be->slot, CKF_SERIAL_SESSION, NULL, NULL, &be->anchor);
      if (rv != CKR_OK) {
        be->anchor = CK_INVALID_HANDLE;
        return rv;
      }
    }
    rv = be->f->C_Login(be->anchor, CKU_USER, (CK_UTF8CHAR_PTR)pin, pin_len);
    if (session_gone(rv) && attempt == 0) {
      be->anchor = CK_INVALID_HANDLE;
      continue;
    }
    return rv == CKR_USER_ALREADY_LOGGED_IN ? CKR_OK : rv;
  }
}

/* Log in with the configured PIN (read again, wiped at once). init_lock held. */
static CK_RV conf_login_locked(kvp_hsm_backend *be) {
  char *pin = NULL;
  size_t pin_len = 0;
  CK_RV rv = read_conf_pin(be, &pin, &pin_len);
  if (rv != CKR_OK)
    return rv;
  CK_RV hrv = anchor_login_locked(be, (const CK_UTF8CHAR *)pin, (CK_ULONG)pin_len);
  kvp_free_secret(pin);
  if (hrv != CKR_OK) {
    KVP_ERROR("hsm %s: C_Login with the configured PIN (token '%s'): %s", be->base.name,
              be->token_label ? be->token_label : be->serial, kvp_ckr_name(hrv));
    return kvp_hsm_map_rv(hrv);
  }
  atomic_store(&be->logged_in, 1);
  return CKR_OK;
}

/* Is the session's user logged in? (error paths only) */
int kvp_hsm_session_logged_in(kvp_hsm_backend *be, CK_SESSION_HANDLE s) {
  CK_SESSION_INFO si;
  if (s == CK_INVALID_HANDLE || be->f->C_GetSessionInfo(s, &si) != CKR_OK)
    return 0;
  return si.state == CKS_RO_USER_FUNCTIONS || si.state == CKS_RW_USER_FUNCTIONS;
}

/* The token forgot our login (all our sessions were closed under us): log in
 * again with the configured PIN. Rare path; serialised by init_lock. */
CK_RV kvp_hsm_relogin(kvp_hsm_backend *be) {
  pthread_mutex_lock(&be->init_lock);
  KVP_WARN("hsm %s: the token is no longer logged in; logging in again", be->base.name);
  CK_RV rv = conf_login_locked(be);
  pthread_mutex_unlock(&be->init_lock);
  return rv;
}

static CK_RV init_locked(kvp_hsm_backend *be) {
  CK_RV rv = CKR_GENERAL_ERROR;

  be->dl = dlopen(be->module, RTLD_NOW | RTLD_LOCAL);
  if (be->dl == NULL) {
    const char *e = dlerror();
    KVP_ERROR("hsm %s: cannot load module %s: %s", be->base.name, be->module, e ? e : "?");
    rv = CKR_DEVICE_ERROR;
    goto out;
  }
  CK_C_GetFunctionList gfl;
  {
    void *sym = dlsym(be->dl, "C_GetFunctionList");
    memcpy(&gfl, &sym, sizeof(gfl)); /* object pointer -> function pointer, ISO C safe */
  }
  if (gfl == NULL) {
    KVP_ERROR("hsm %s: %s has no C_GetFunctionList", be->base.name, be->module);
    rv = CKR_DEVICE_ERROR;
    goto out;
  }
  CK_FUNCTION_LIST_PTR f = NULL;
  rv = gfl(&f);
  if (rv != CKR_OK || f == NULL) {
    KVP_ERROR("hsm %s: C_GetFunctionList (%s): %s", be->base.name, be->module,
              kvp_ckr_name(rv));
    rv = CKR_DEVICE_ERROR;
    goto out;
  }
  be->f = f;
  rv = module_initialize(be);
  if (rv != CKR_OK)
    goto out;
  rv = find_slot(be);
  if (rv != CKR_OK)
    goto out;
  CK_RV hrv = be->f->C_OpenSession(be->slot, CKF_SERIAL_SESSION, NULL, NULL, &be->anchor);
  if (hrv != CKR_OK) {
    be->anchor = CK_INVALID_HANDLE;
    KVP_ERROR("hsm %s: C_OpenSession: %s", be->base.name, kvp_ckr_name(hrv));
    rv = kvp_hsm_map_rv(hrv) == CKR_FUNCTION_FAILED ? CKR_DEVICE_ERROR : kvp_hsm_map_rv(hrv);
    goto out;
  }
  rv = be->has_pin ? conf_login_locked(be) : CKR_OK;
out:
  if (rv != CKR_OK)
    unload_locked(be); /* the next call tries again */
  return rv;
}

CK_RV kvp_hsm_ensure_init(kvp_hsm_backend *be) {
  if (atomic_load_explicit(&be->ready, memory_order_acquire))
    return CKR_OK;
  pthread_mutex_lock(&be->init_lock);
  CK_RV rv = CKR_OK;
  if (!atomic_load_explicit(&be->ready, memory_order_relaxed)) {
    rv = init_locked(be);
    if (rv == CKR_OK)
      atomic_store_explicit(&be->ready, 1, memory_order_release);
  }
  pthread_mutex_unlock(&be->init_lock);
  return rv;
}

/* ---------- objects ---------- */

/* Find one object of class cls for the key on session s. */
CK_RV kvp_hsm_find_object(kvp_hsm_backend *be, CK_SESSION_HANDLE s, const kvp_hsm_key *k,
                         CK_OBJECT_CLASS cls, CK_OBJECT_HANDLE *out) {
  CK_ATTRIBUTE tmpl[2];
  tmpl[0].type = CKA_CLASS;
  tmpl[0].pValue = &cls;
  tmpl[0].ulValueLen = sizeof(cls);
  if (k->label != NULL) {
    tmpl[1].type = CKA_LABEL;
    tmpl[1].pValue = k->label;
    tmpl[1].ulValueLen = (CK_ULONG)strlen(k->label);
  } else {
    tmpl[1].type = CKA_ID;
    tmpl[1].pValue = k->id;
    tmpl[1].ulValueLen = k->id_len;
  }
  CK_OBJECT_HANDLE found[2];
  CK_ULONG n = 0;
  *out = CK_INVALID_HANDLE;
  CK_RV rv = be->f->C_FindObjectsInit(s, tmpl, 2);
  if (rv != CKR_OK)
    return rv;
  rv = be->f->C_FindObjects(s, found, 2, &n);
  be->f->C_FindObjectsFinal(s);
  if (rv != CKR_OK)
    return rv;
  if (n == 0)
    return CKR_KEY_HANDLE_INVALID;
  if (n > 1)
    KVP_WARN("hsm %s: key '%s': %lu %s objects match, using the first", be->base.name,
             key_desc(k), (unsigned long)n, cls == CKO_PRIVATE_KEY ? "private" : "public");
  *out = found[0];
  return CKR_OK;
}

/* Read one variable-length attribute (malloc'd). */
CK_RV kvp_hsm_get_attr(kvp_hsm_backend *be, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o,
                      CK_ATTRIBUTE_TYPE t, CK_BYTE **val, CK_ULONG *len) {
  CK_ATTRIBUTE a = {t, NULL, 0};
  *val = NULL;
  *len = 0;
  CK_RV rv = be->f->C_GetAttributeValue(s, o, &a, 1);
  if (rv != CKR_OK)
    return rv;
  if (a.ulValueLen == CK_UNAVAILABLE_INFORMATION || a.ulValueLen == 0)
    return CKR_ATTRIBUTE_TYPE_INVALID;
  a.pValue = malloc(a.ulValueLen);
  if (a.pValue == NULL)
    return CKR_HOST_MEMORY;
  rv = be->f->C_GetAttributeValue(s, o, &a, 1);
  if (rv != CKR_OK) {
    free(a.pValue);
    return rv;
  }
  *val = a.pValue;
  *len = a.ulValueLen;
  return CKR_OK;
}

/* Keys are built through kvp_pubkey_from_rsa/ec (core/cert.h): those work
 * inside applications that made an ENGINE their default for RSA and EC. */
CK_RV kvp_hsm_build_rsa(const CK_BYTE *n, CK_ULONG n_len, const CK_BYTE *e, CK_ULONG e_len,
                       EVP_PKEY **out) {
  *out = kvp_pubkey_from_rsa(n, n_len, e, e_len);
  return *out != NULL ? CKR_OK : CKR_FUNCTION_FAILED;
}

/* ec_params: DER OID (named curves only). ec_point: DER OCTET STRING wrapping
 * the point, or the raw point. */
CK_RV kvp_hsm_build_ec(const CK_BYTE *ec_params, CK_ULONG params_len, const CK_BYTE *ec_point,
                      CK_ULONG point_len, EVP_PKEY **out) {
  const unsigned char *p = ec_params;
  ASN1_OBJECT *oid = d2i_ASN1_OBJECT(NULL, &p, (long)params_len);
  ASN1_OCTET_STRING *os = NULL;
  int nid = oid != NULL ? OBJ_obj2nid(oid) : NID_undef;

  ASN1_OBJECT_free(oid);
  if (nid == NID_undef)
    return CKR_KEY_TYPE_INCONSISTENT;
  *out = NULL;
  p = ec_point;
  os = d2i_ASN1_OCTET_STRING(NULL, &p, (long)point_len);
  if (os != NULL && p == ec_point + point_len && os->length > 0)
    *out = kvp_pubkey_from_ec(nid, os->data, (size_t)os->length);
  ASN1_OCTET_STRING_free(os);
  /* a raw point (or one whose bytes happened to parse as DER): the whole value */
  if (*out == NULL)
    *out = kvp_pubkey_from_ec(nid, ec_point, point_len);
  return *out != NULL ? CKR_OK : CKR_FUNCTION_FAILED;
}

/* Read the public key of k: public object first, RSA private object as fallback. */
static CK_RV read_public(kvp_hsm_backend *be, CK_SESSION_HANDLE s, kvp_hsm_key *k,
                         CK_OBJECT_HANDLE priv) {
  CK_RV rv = CKR_GENERAL_ERROR;
  CK_OBJECT_HANDLE pub = CK_INVALID_HANDLE;
  CK_BYTE *a = NULL, *b = NULL;
  CK_ULONG a_len = 0, b_len = 0;
  CK_KEY_TYPE kt = CKK_VENDOR_DEFINED;
  CK_OBJECT_HANDLE src;

  rv = kvp_hsm_find_object(be, s, k, CKO_PUBLIC_KEY, &pub);
  if (rv != CKR_OK && rv != CKR_KEY_HANDLE_INVALID)
    goto out;
  src = pub != CK_INVALID_HANDLE ? pub : priv;
  if (src == CK_INVALID_HANDLE) {
    rv = CKR_KEY_HANDLE_INVALID;
    goto out;
  }
  CK_ATTRIBUTE ta = {CKA_KEY_TYPE, &kt, sizeof(kt)};
  rv = be->f->C_GetAttributeValue(s, src, &ta, 1);
  if (rv != CKR_OK)
    goto out;
  if (kt == CKK_RSA) {
    rv = kvp_hsm_get_attr(be, s, src, CKA_MODULUS, &a, &a_len);
    if (rv == CKR_OK)
      rv = kvp_hsm_get_attr(be, s, src, CKA_PUBLIC_EXPONENT, &b, &b_len);
    if (rv != CKR_OK && src == pub && priv != CK_INVALID_HANDLE) {
      free(a);
      a = NULL;
      rv = kvp_hsm_get_attr(be, s, priv, CKA_MODULUS, &a, &a_len);
      if (rv == CKR_OK)
        rv = kvp_hsm_get_attr(be, s, priv, CKA_PUBLIC_EXPONENT, &b, &b_len);
    }
    if (rv != CKR_OK)
      goto out;
    rv = kvp_hsm_build_rsa(a, a_len, b, b_len, &k->key.pub);
  } else if (kt == CKK_EC) {
    if (src != pub) {
      k->no_ec_public = 1; /* open_key says so in its log line */
      rv = CKR_KEY_HANDLE_INVALID;
      goto out;
    }
    rv = kvp_hsm_get_attr(be, s, src, CKA_EC_PARAMS, &a, &a_len);
    if (rv == CKR_OK)
      rv = kvp_hsm_get_attr(be, s, src, CKA_EC_POINT, &b, &b_len);
    if (rv != CKR_OK)
      goto out;
    rv = kvp_hsm_build_ec(a, a_len, b, b_len, &k->key.pub);
  } else {
    KVP_ERROR("hsm %s: key '%s': unsupported key type 0x%lx", be->base.name, key_desc(k),
              (unsigned long)kt);
    rv = CKR_KEY_TYPE_INCONSISTENT;
    goto out;
  }
  if (rv != CKR_OK)
    KVP_ERROR("hsm %s: key '%s': cannot build the public key from the HSM's attributes",
              be->base.name, key_desc(k));
out:
  free(a);
  free(b);
  return rv;
}

/* Resolve the private key handle (and its CKA_SIGN / CKA_DECRYPT). */
static CK_RV resolve_private(kvp_hsm_backend *be, CK_SESSION_HANDLE s, kvp_hsm_key *k,
                             CK_BBOOL *can_sign, CK_BBOOL *can_decrypt) {
  unsigned long gen = atomic_load(&be->login_gen);
  CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
  CK_RV rv = kvp_hsm_find_object(be, s, k, CKO_PRIVATE_KEY, &h);
  if (rv != CKR_OK)
    return rv;
  if (can_sign != NULL || can_decrypt != NULL) {
    CK_BBOOL sgn = CK_FALSE, dec = CK_FALSE;
    CK_ATTRIBUTE t[2] = {{CKA_SIGN, &sgn, sizeof(sgn)}, {CKA_DECRYPT, &dec, sizeof(dec)}};
    CK_RV arv = be->f->C_GetAttributeValue(s, h, t, 2);
    if (arv != CKR_OK && arv != CKR_ATTRIBUTE_TYPE_INVALID)
      return arv;
    if (t[0].ulValueLen == CK_UNAVAILABLE_INFORMATION)
      sgn = CK_FALSE;
    if (t[1].ulValueLen == CK_UNAVAILABLE_INFORMATION)
      dec = CK_FALSE;
    if (can_sign)
      *can_sign = sgn;
    if (can_decrypt)
      *can_decrypt = dec;
  }
  atomic_store(&k->priv, (unsigned long)h);
  atomic_store(&k->priv_gen, gen);
  return CKR_OK;
}

static void key_free(kvp_hsm_key *k) {
  if (k == NULL)
    return;
  EVP_PKEY_free(k->key.pub);
  free(k->key.name);
  free(k->key.version);
  free(k->label);
  free(k->id);
  free(k);
}

CK_RV kvp_hsm_parse_name(kvp_hsm_key *k, const char *name) {
  if (strncmp(name, "id:", 3) != 0) {
    if (name[0] == '\0')
      return CKR_ARGUMENTS_BAD;
    k->label = strdup(name);
    return k->label ? CKR_OK : CKR_HOST_MEMORY;
  }
  const char *hex = name + 3;
  size_t n = strlen(hex);
  if (n == 0 || n % 2 != 0)
    return CKR_ARGUMENTS_BAD;
  k->id = malloc(n / 2);
  if (k->id == NULL)
    return CKR_HOST_MEMORY;
  for (size_t i = 0; i < n / 2; i++) {
    int v = 0;
    for (int j = 0; j < 2; j++) {
      char c = hex[2 * i + (size_t)j];
      int d;
      if (c >= '0' && c <= '9')
        d = c - '0';
      else if (c >= 'a' && c <= 'f')
        d = c - 'a' + 10;
      else if (c >= 'A' && c <= 'F')
        d = c - 'A' + 10;
      else
        return CKR_ARGUMENTS_BAD;
      v = v * 16 + d;
    }
    k->id[i] = (CK_BYTE)v;
  }
  k->id_len = (CK_ULONG)(n / 2);
  return CKR_OK;
}

/* lookup_key() already logged a failure to search for the private key */
#define CKR_PRIVATE_LOOKUP_FAILED (CKR_VENDOR_DEFINED | 0x4b565001UL)

/* Resolve the private key (when visible) and read the public key. Returns the
 * HSM's CK_RV (CKR_KEY_HANDLE_INVALID: not found); *priv stays
 * CK_INVALID_HANDLE when there is no (visible) private key. */
static CK_RV lookup_key(kvp_hsm_backend *be, CK_SESSION_HANDLE s, kvp_hsm_key *k, int visible,
                        CK_OBJECT_HANDLE *priv, CK_BBOOL *can_sign, CK_BBOOL *can_dec) {
  EVP_PKEY_free(k->key.pub);
  k->key.pub = NULL;
  *priv = CK_INVALID_HANDLE;
  if (visible) {
    CK_RV rv = resolve_private(be, s, k, can_sign, can_dec);
    if (rv == CKR_OK) {
      *priv = (CK_OBJECT_HANDLE)atomic_load(&k->priv);
    } else if (session_gone(rv)) {
      return rv;
    } else if (rv != CKR_KEY_HANDLE_INVALID) {
      KVP_ERROR("hsm %s: finding the private key '%s': %s", be->base.name, key_desc(k),
                kvp_ckr_name(rv));
      return CKR_PRIVATE_LOOKUP_FAILED;
    }
  }
  return read_public(be, s, k, *priv);
}

/* ---------- ops ---------- */

CK_RV kvp_hsm_open_key(kvp_backend *bep, const char *name, kvp_key **out) {
  kvp_hsm_backend *be = hsm_of(bep);
  CK_RV rv = CKR_GENERAL_ERROR;
  CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
  kvp_hsm_key *k = NULL;

  if (name == NULL || out == NULL)
    return CKR_ARGUMENTS_BAD;
  *out = NULL;
  rv = kvp_hsm_ensure_init(be);
  if (rv != CKR_OK)
    return rv;

  k = calloc(1, sizeof(*k));
  if (k == NULL) {
    rv = CKR_HOST_MEMORY;
    goto out;
  }
  k->key.backend = bep;
  k->key.impl = k;
  atomic_init(&k->priv, CK_INVALID_HANDLE);
  atomic_init(&k->priv_gen, 0);
  k->key.name = strdup(name);
  if (k->key.name == NULL) {
    rv = CKR_HOST_MEMORY;
    goto out;
  }
  rv = kvp_hsm_parse_name(k, name);
  if (rv != CKR_OK) {
    if (rv == CKR_ARGUMENTS_BAD) {
      KVP_ERROR("hsm %s: bad key name '%s' (a label, or id:<hex>)", be->base.name, name);
      rv = CKR_KEY_HANDLE_INVALID;
    }
    goto out;
  }

  rv = pool_get(be, &s);
  if (rv != CKR_OK) {
    KVP_ERROR("hsm %s: C_OpenSession (key '%s'): %s", be->base.name, name, kvp_ckr_name(rv));
    s = CK_INVALID_HANDLE;
    rv = kvp_hsm_map_rv(rv);
    goto out;
  }

  int visible = be->has_pin || atomic_load(&be->logged_in);
  CK_BBOOL can_sign = CK_FALSE, can_dec = CK_FALSE;
  CK_OBJECT_HANDLE priv = CK_INVALID_HANDLE;
  rv = lookup_key(be, s, k, visible, &priv, &can_sign, &can_dec);
  if (session_gone(rv)) { /* our pooled session is gone: once more on a new one */
    pool_drop(be, s);
    s = CK_INVALID_HANDLE;
    rv = be->f->C_OpenSession(be->slot, CKF_SERIAL_SESSION, NULL, NULL, &s);
    if (rv != CKR_OK)
      s = CK_INVALID_HANDLE;
    else
      rv = lookup_key(be, s, k, visible, &priv, &can_sign, &can_dec);
  }
  if (be->has_pin && priv == CK_INVALID_HANDLE && s != CK_INVALID_HANDLE &&
      (rv == CKR_OK || rv == CKR_KEY_HANDLE_INVALID) && !kvp_hsm_session_logged_in(be, s) &&
      kvp_hsm_relogin(be) == CKR_OK)
    rv = lookup_key(be, s, k, visible, &priv, &can_sign, &can_dec); /* the token lost our login? */
  if (rv == CKR_PRIVATE_LOOKUP_FAILED) {
    rv = CKR_DEVICE_ERROR;
    goto out;
  }
  if (rv == CKR_KEY_HANDLE_INVALID) {
    KVP_ERROR("hsm %s: no key '%s' in token '%s'%s", be->base.name, name,
              be->token_label ? be->token_label : be->serial,
              k->no_ec_public ? " (only an EC private key object, which does not carry its "
                                "public point; a public key object is needed)"
              : visible ? ""
                        : " (private objects are visible only after C_Login)");
    goto out;
  }
  if (rv != CKR_OK) {
    if (!rv_passthrough(rv) || rv == CKR_HOST_MEMORY)
      KVP_ERROR("hsm %s: reading the public key '%s': %s", be->base.name, name,
                kvp_ckr_name(rv));
    rv = rv == CKR_KEY_TYPE_INCONSISTENT ? rv : kvp_hsm_map_rv(rv);
    goto out;
  }
  rv = kvp_key_fill_from_pub(&k->key);
  if (rv != CKR_OK) {
    KVP_ERROR("hsm %s: key '%s': unsupported key type or curve", be->base.name, name);
    goto out;
  }
  if (k->key.type == KVP_KEY_RSA)
    k->out_len = (k->key.bits + 7) / 8;
  else
    k->out_len = 2 * ((k->key.bits + 7) / 8);

  if (visible) {
    if (priv == CK_INVALID_HANDLE) {
      KVP_ERROR("hsm %s: no private key '%s' in token '%s'", be->base.name, name,
                be->token_label ? be->token_label : be->serial);
      rv = CKR_KEY_HANDLE_INVALID;
      goto out;
    }
    k->key.can_sign = can_sign ? 1 : 0;
    k->key.can_decrypt = can_dec && k->key.type == KVP_KEY_RSA ? 1 : 0;
  } else {
    /* resolved at the first sign/decrypt after the application's C_Login */
    k->key.can_sign = 1;
    k->key.can_decrypt = k->key.type == KVP_KEY_RSA;
  }
  k->key.private_obj = be->has_pin ? 0 : 1;
  rv = CKR_OK;
out:
  if (s != CK_INVALID_HANDLE)
    pool_put(be, s);
  if (rv != CKR_OK) {
    key_free(k);
    return rv;
  }
  *out = &k->key;
  return CKR_OK;
}

static void hsm_close_key(kvp_backend *be, kvp_key *key) {
  (void)be;
  if (key != NULL)
    key_free((kvp_hsm_key *)key->impl);
}

/* run_op(quiet_refusal): the HSM refused the mechanism at C_DecryptInit */
#define KVP_HSM_REFUSED (CKR_VENDOR_DEFINED | 0x4b565002UL)

static int mech_refused(CK_RV rv) {
  return rv == CKR_ARGUMENTS_BAD || rv == CKR_MECHANISM_PARAM_INVALID ||
         rv == CKR_MECHANISM_INVALID;
}

/* Which HSM call failed, for the log line. */
enum { OP_SIGN = 0, OP_DECRYPT = 1 };

static void log_op_failure(kvp_hsm_backend *be, kvp_hsm_key *k, const char *fn, CK_RV hrv,
                           CK_RV rv) {
  if (rv == hrv)
    KVP_ERROR("hsm %s: %s (key '%s'): %s", be->base.name, fn, key_desc(k), kvp_ckr_name(hrv));
  else
    KVP_ERROR("hsm %s: %s (key '%s'): %s (reported as %s)", be->base.name, fn, key_desc(k),
              kvp_ckr_name(hrv), kvp_ckr_name(rv));
}

/*
 * One sign or decrypt on one session: Init + final call, retrying once on a
 * stale session and once on a stale key handle. The hot path takes the pool
 * lock twice and nothing else.
 */
static CK_RV run_op(kvp_hsm_backend *be, kvp_hsm_key *k, int op, CK_MECHANISM *mech,
                    const CK_BYTE *in, CK_ULONG in_len, CK_BYTE *out, CK_ULONG *out_len,
                    int quiet_refusal) {
  CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
  CK_RV rv;
  const char *fn = "C_OpenSession";
  int session_retry = 0, handle_retry = 0, login_retry = 0;
  CK_ULONG cap = *out_len;

  if (k->key.private_obj && !atomic_load_explicit(&be->logged_in, memory_order_relaxed))
    return CKR_USER_NOT_LOGGED_IN;

  rv = pool_get(be, &s);
  if (rv != CKR_OK) {
    s = CK_INVALID_HANDLE;
    goto fail;
  }
  for (;;) {
    CK_OBJECT_HANDLE h = (CK_OBJECT_HANDLE)atomic_load_explicit(&k->priv, memory_order_acquire);
    if (h == CK_INVALID_HANDLE ||
        atomic_load_explicit(&k->priv_gen, memory_order_relaxed) !=
            atomic_load_explicit(&be->login_gen, memory_order_relaxed)) {
      fn = "C_FindObjects";
      rv = resolve_private(be, s, k, NULL, NULL);
      if (rv != CKR_OK)
        goto retry;
      h = (CK_OBJECT_HANDLE)atomic_load(&k->priv);
    }
    CK_ULONG n = cap;
    if (op == OP_SIGN) {
      fn = "C_SignInit";
      rv = be->f->C_SignInit(s, mech, h);
      if (rv == CKR_OK) {
        fn = "C_Sign";
        rv = be->f->C_Sign(s, (CK_BYTE_PTR)in, in_len, out, &n);
      }
    } else {
      fn = "C_DecryptInit";
      rv = be->f->C_DecryptInit(s, mech, h);
      if (rv == CKR_OK) {
        fn = "C_Decrypt";
        rv = be->f->C_Decrypt(s, (CK_BYTE_PTR)in, in_len, out, &n);
      }
    }
    if (rv == CKR_OK) {
      *out_len = n;
      pool_put(be, s);
      return CKR_OK;
    }
    if (rv == CKR_BUFFER_TOO_SMALL) {
      /* the operation is still active on s: do not give s back */
      pool_drop(be, s);
      s = CK_INVALID_HANDLE;
      goto fail;
    }
  retry:
    /* a session that is gone, or (against the spec) still has an operation
     * active, is dropped; one retry on a fresh session */
    if ((session_gone(rv) || rv == CKR_OPERATION_ACTIVE) && !session_retry) {
      session_retry = 1;
      pool_drop(be, s);
      s = CK_INVALID_HANDLE;
      fn = "C_OpenSession";
      rv = be->f->C_OpenSession(be->slot, CKF_SERIAL_SESSION, NULL, NULL, &s);
      if (rv != CKR_OK) {
        s = CK_INVALID_HANDLE;
        goto fail;
      }
      continue;
    }
    int in_find = strcmp(fn, "C_FindObjects") == 0;
    if (handle_gone(rv) && !handle_retry && !in_find) {
      handle_retry = 1;
      atomic_store(&k->priv, CK_INVALID_HANDLE);
      continue;
    }
    /* with a configured PIN, a token that lost our login (private key not
     * found, or CKR_USER_NOT_LOGGED_IN) gets one new C_Login */
    if (be->has_pin && !login_retry &&
        (rv == CKR_USER_NOT_LOGGED_IN || (in_find && rv == CKR_KEY_HANDLE_INVALID)) &&
        !kvp_hsm_session_logged_in(be, s)) {
      login_retry = 1;
      if (kvp_hsm_relogin(be) == CKR_OK) {
        atomic_store(&k->priv, CK_INVALID_HANDLE);
        continue;
      }
    }
    break;
  }
fail:
  if (s != CK_INVALID_HANDLE) {
    if (session_gone(rv) || rv == CKR_OPERATION_ACTIVE)
      pool_drop(be, s);
    else
      pool_put(be, s);
  }
  {
    CK_RV mapped;
    /* the caller has a fallback for a mechanism the HSM refuses: no log line */
    if (quiet_refusal && strcmp(fn, "C_DecryptInit") == 0 && mech_refused(rv))
      return KVP_HSM_REFUSED;
    if (strcmp(fn, "C_FindObjects") == 0 && rv == CKR_KEY_HANDLE_INVALID) {
      KVP_ERROR("hsm %s: no private key '%s' in token '%s'%s", be->base.name, key_desc(k),
                be->token_label ? be->token_label : be->serial,
                k->key.private_obj ? " (is the application logged in?)" : "");
      return CKR_KEY_HANDLE_INVALID;
    }
    mapped = kvp_hsm_map_rv(rv);
    if (rv == CKR_OBJECT_HANDLE_INVALID)
      mapped = CKR_KEY_HANDLE_INVALID;
    /* our arguments are well-formed: an HSM that says CKR_ARGUMENTS_BAD at
     * C_SignInit / C_DecryptInit refuses the mechanism parameters (SoftHSM2
     * 2.6.1 accepts OAEP with SHA-1 only) */
    if (rv == CKR_ARGUMENTS_BAD && mech->pParameter != NULL &&
        (strcmp(fn, "C_SignInit") == 0 || strcmp(fn, "C_DecryptInit") == 0))
      mapped = CKR_MECHANISM_PARAM_INVALID;
    /* a well-sized ciphertext that the HSM fails to decrypt has bad padding:
     * SoftHSM2 says CKR_GENERAL_ERROR for that, the spec CKR_ENCRYPTED_DATA_INVALID */
    if (op == OP_DECRYPT && strcmp(fn, "C_Decrypt") == 0 &&
        (rv == CKR_GENERAL_ERROR || rv == CKR_FUNCTION_FAILED))
      mapped = CKR_ENCRYPTED_DATA_INVALID;
    log_op_failure(be, k, fn, rv, mapped);
    return mapped;
  }
}

/* ---------- OAEP decoding for HSMs that lack an OAEP variant ---------- */

#define KVP_HSM_MAX_RSA_BYTES 1024 /* RSA-8192 */

static const EVP_MD *hash_md(kvp_hash h) {
  switch (h) {
  case KVP_HASH_SHA1: return EVP_sha1();
  case KVP_HASH_SHA224: return EVP_sha224();
  case KVP_HASH_SHA256: return EVP_sha256();
  case KVP_HASH_SHA384: return EVP_sha384();
  case KVP_HASH_SHA512: return EVP_sha512();
  default: return NULL;
  }
}

/* out[0..len) ^= MGF1(seed, len) (RFC 8017 B.2.1). */
static int mgf1_xor(unsigned char *out, size_t len, const unsigned char *seed, size_t seed_len,
                    const EVP_MD *md) {
  unsigned char blk[EVP_MAX_MD_SIZE];
  unsigned int blk_len = 0;
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  int ok = ctx != NULL;
  for (uint32_t c = 0; ok && len > 0; c++) {
    unsigned char cnt[4] = {(unsigned char)(c >> 24), (unsigned char)(c >> 16),
                            (unsigned char)(c >> 8), (unsigned char)c};
    ok = EVP_DigestInit_ex(ctx, md, NULL) && EVP_DigestUpdate(ctx, seed, seed_len) &&
         EVP_DigestUpdate(ctx, cnt, 4) && EVP_DigestFinal_ex(ctx, blk, &blk_len);
    size_t n = len < blk_len ? len : blk_len;
    for (size_t i = 0; ok && i < n; i++)
      out[i] ^= blk[i];
    out += n;
    len -= n;
  }
  EVP_MD_CTX_free(ctx);
  OPENSSL_cleanse(blk, sizeof(blk));
  return ok;
}

/* Constant-time helpers: all-ones when the condition holds, else 0. */
static unsigned ct_is_zero(unsigned x) { return 0u - (((x | (0u - x)) >> 31) ^ 1u); }
static unsigned ct_eq(unsigned a, unsigned b) { return ct_is_zero(a ^ b); }

/*
 * EME-OAEP decoding (RFC 8017 7.1.2 step 3) of em (k bytes), empty label.
 * Every check runs in time independent of the data; one failure code.
 */
static CK_RV oaep_decode(unsigned char *em, size_t k, const EVP_MD *md, const EVP_MD *mgf,
                         CK_BYTE *out, CK_ULONG *out_len) {
  unsigned char lhash[EVP_MAX_MD_SIZE];
  size_t h = (size_t)EVP_MD_get_size(md);
  if (k < 2 * h + 2 || !EVP_Digest("", 0, lhash, NULL, md, NULL))
    return CKR_ENCRYPTED_DATA_INVALID;
  unsigned char *seed = em + 1, *db = em + 1 + h;
  size_t db_len = k - h - 1;
  if (!mgf1_xor(seed, h, db, db_len, mgf) || !mgf1_xor(db, db_len, seed, h, mgf))
    return CKR_FUNCTION_FAILED;
  unsigned good = ct_is_zero(em[0]);
  unsigned diff = 0;
  for (size_t i = 0; i < h; i++)
    diff |= (unsigned)(db[i] ^ lhash[i]);
  good &= ct_is_zero(diff);
  /* find the 0x01 after the zero padding */
  unsigned found = 0, idx = 0;
  for (size_t i = h; i < db_len; i++) {
    unsigned is_one = ct_eq(db[i], 1), is_zero = ct_is_zero(db[i]);
    idx |= ~found & is_one & (unsigned)i;
    good &= found | is_one | is_zero; /* before the 0x01 only zeros */
    found |= is_one;
  }
  good &= found;
  size_t msg_len = db_len - (size_t)idx - 1;
  if (!good) /* the only data-dependent branch, after all checks */
    return CKR_ENCRYPTED_DATA_INVALID;
  memcpy(out, db + idx + 1, msg_len);
  *out_len = (CK_ULONG)msg_len;
  return CKR_OK;
}

/* RSA without padding in the HSM (CKM_RSA_X_509), OAEP removed here. */
static CK_RV decrypt_oaep_local(kvp_hsm_backend *be, kvp_hsm_key *k, const kvp_dec_alg *alg,
                                const CK_BYTE *in, CK_ULONG in_len, CK_BYTE *out,
                                CK_ULONG *out_len) {
  unsigned char em[KVP_HSM_MAX_RSA_BYTES];
  CK_MECHANISM raw = {CKM_RSA_X_509, NULL, 0};
  CK_ULONG em_len = sizeof(em);
  size_t kb = k->out_len;
  CK_RV rv;
  if (kb > sizeof(em) || hash_md(alg->hash) == NULL || hash_md(alg->mgf1) == NULL)
    return CKR_MECHANISM_PARAM_INVALID;
  em_len = kb;
  rv = run_op(be, k, OP_DECRYPT, &raw, in, in_len, em, &em_len, 0);
  if (rv != CKR_OK)
    goto out;
  if (em_len > kb) {
    rv = CKR_DEVICE_ERROR;
    goto out;
  }
  if (em_len < kb) { /* some HSMs strip leading zero bytes */
    memmove(em + (kb - em_len), em, em_len);
    memset(em, 0, kb - em_len);
  }
  rv = oaep_decode(em, kb, hash_md(alg->hash), hash_md(alg->mgf1), out, out_len);
  if (rv != CKR_OK)
    KVP_ERROR("hsm %s: OAEP decoding (key '%s', %s): %s", be->base.name, key_desc(k),
              kvp_hash_name(alg->hash), kvp_ckr_name(rv));
out:
  kvp_wipe(em, sizeof(em));
  return rv;
}

static CK_RV hsm_sign(kvp_backend *bep, kvp_key *key, const kvp_sig_alg *alg,
                      const CK_BYTE *digest, CK_ULONG digest_len, CK_BYTE *sig,
                      CK_ULONG *sig_len) {
  kvp_hsm_backend *be = hsm_of(bep);
  kvp_hsm_key *k = (kvp_hsm_key *)key->impl;
  CK_MECHANISM mech = {CKM_RSA_PKCS, NULL, 0};
  CK_RSA_PKCS_PSS_PARAMS pss;
  unsigned char buf[19 + 64];
  const CK_BYTE *in = digest;
  CK_ULONG in_len = digest_len;

  if (alg == NULL || digest == NULL || sig == NULL || sig_len == NULL)
    return CKR_ARGUMENTS_BAD;
  switch (alg->scheme) {
  case KVP_SIG_RSA_PKCS1:
    if (k->key.type != KVP_KEY_RSA)
      return CKR_KEY_TYPE_INCONSISTENT;
    if (alg->hash == KVP_HASH_NONE) {
      if (digest_len + 11 > k->out_len) /* PKCS#1 v1.5 needs 11 bytes of padding */
        return CKR_DATA_LEN_RANGE;
    } else {
      const kvp_hsm_diginfo *di = diginfo_for(alg->hash);
      if (di == NULL)
        return CKR_MECHANISM_PARAM_INVALID;
      if (digest_len != di->hash_len)
        return CKR_DATA_LEN_RANGE;
      memcpy(buf, di->prefix, di->prefix_len);
      memcpy(buf + di->prefix_len, digest, di->hash_len);
      in = buf;
      in_len = (CK_ULONG)(di->prefix_len + di->hash_len);
    }
    break;
  case KVP_SIG_RSA_PSS:
    if (k->key.type != KVP_KEY_RSA)
      return CKR_KEY_TYPE_INCONSISTENT;
    pss.hashAlg = hash_mech(alg->hash);
    pss.mgf = hash_mgf(alg->mgf1);
    pss.sLen = (CK_ULONG)alg->salt_len;
    if (pss.hashAlg == CK_UNAVAILABLE_INFORMATION || pss.mgf == 0)
      return CKR_MECHANISM_PARAM_INVALID;
    mech.mechanism = CKM_RSA_PKCS_PSS;
    mech.pParameter = &pss;
    mech.ulParameterLen = sizeof(pss);
    break;
  case KVP_SIG_ECDSA:
    if (k->key.type != KVP_KEY_EC)
      return CKR_KEY_TYPE_INCONSISTENT;
    mech.mechanism = CKM_ECDSA;
    break;
  default:
    return CKR_MECHANISM_INVALID;
  }
  *sig_len = k->out_len;
  return run_op(be, k, OP_SIGN, &mech, in, in_len, sig, sig_len, 0);
}

static CK_RV hsm_decrypt(kvp_backend *bep, kvp_key *key, const kvp_dec_alg *alg,
                         const CK_BYTE *in, CK_ULONG in_len, CK_BYTE *out, CK_ULONG *out_len) {
  kvp_hsm_backend *be = hsm_of(bep);
  kvp_hsm_key *k = (kvp_hsm_key *)key->impl;
  CK_MECHANISM mech = {CKM_RSA_PKCS, NULL, 0};
  CK_RSA_PKCS_OAEP_PARAMS oaep;

  if (alg == NULL || in == NULL || out == NULL || out_len == NULL)
    return CKR_ARGUMENTS_BAD;
  if (k->key.type != KVP_KEY_RSA)
    return CKR_KEY_TYPE_INCONSISTENT;
  if (in_len != k->out_len) /* RSA ciphertexts are exactly the modulus length */
    return CKR_ENCRYPTED_DATA_LEN_RANGE;
  switch (alg->scheme) {
  case KVP_DEC_RSA_PKCS1:
    break;
  case KVP_DEC_RSA_OAEP:
    oaep.hashAlg = hash_mech(alg->hash);
    oaep.mgf = hash_mgf(alg->mgf1);
    oaep.source = CKZ_DATA_SPECIFIED;
    oaep.pSourceData = NULL;
    oaep.ulSourceDataLen = 0;
    if (oaep.hashAlg == CK_UNAVAILABLE_INFORMATION || oaep.mgf == 0)
      return CKR_MECHANISM_PARAM_INVALID;
    mech.mechanism = CKM_RSA_PKCS_OAEP;
    mech.pParameter = &oaep;
    mech.ulParameterLen = sizeof(oaep);
    break;
  default:
    return CKR_MECHANISM_INVALID;
  }
  if (alg->scheme == KVP_DEC_RSA_OAEP &&
      (atomic_load(&be->oaep_local) & (1u << (unsigned)alg->hash)) != 0)
    return decrypt_oaep_local(be, k, alg, in, in_len, out, out_len);
  *out_len = k->out_len;
  CK_RV rv = run_op(be, k, OP_DECRYPT, &mech, in, in_len, out, out_len,
                    alg->scheme == KVP_DEC_RSA_OAEP);
  if (rv != KVP_HSM_REFUSED)
    return rv;
  KVP_INFO("hsm %s: the HSM refuses CKM_RSA_PKCS_OAEP with %s; decoding OAEP locally over "
           "CKM_RSA_X_509", be->base.name, kvp_hash_name(alg->hash));
  atomic_fetch_or(&be->oaep_local, 1u << (unsigned)alg->hash);
  return decrypt_oaep_local(be, k, alg, in, in_len, out, out_len);
}

static int hsm_needs_login(kvp_backend *bep) { return hsm_of(bep)->has_pin ? 0 : 1; }

static CK_RV hsm_login(kvp_backend *bep, const CK_UTF8CHAR *pin, CK_ULONG pin_len) {
  kvp_hsm_backend *be = hsm_of(bep);
  if (be->has_pin)
    return CKR_OK; /* logged in with the configured PIN at first use */
  CK_RV rv = kvp_hsm_ensure_init(be);
  if (rv != CKR_OK)
    return rv;
  pthread_mutex_lock(&be->init_lock);
  rv = anchor_login_locked(be, pin, pin_len);
  pthread_mutex_unlock(&be->init_lock);
  if (rv != CKR_OK) {
    CK_RV mapped = kvp_hsm_map_rv(rv);
    KVP_ERROR("hsm %s: C_Login (token '%s'): %s", be->base.name,
              be->token_label ? be->token_label : be->serial, kvp_ckr_name(rv));
    return mapped;
  }
  atomic_fetch_add(&be->login_gen, 1);
  atomic_store(&be->logged_in, 1);
  return CKR_OK;
}

static CK_RV hsm_logout(kvp_backend *bep) {
  kvp_hsm_backend *be = hsm_of(bep);
  if (be->has_pin)
    return CKR_OK;
  if (!atomic_load_explicit(&be->ready, memory_order_acquire))
    return CKR_USER_NOT_LOGGED_IN;
  atomic_store(&be->logged_in, 0);
  atomic_fetch_add(&be->login_gen, 1);
  pthread_mutex_lock(&be->init_lock);
  CK_RV rv = be->anchor != CK_INVALID_HANDLE ? be->f->C_Logout(be->anchor) : CKR_OK;
  pthread_mutex_unlock(&be->init_lock);
  if (rv != CKR_OK && rv != CKR_USER_NOT_LOGGED_IN && !session_gone(rv)) {
    KVP_ERROR("hsm %s: C_Logout: %s", be->base.name, kvp_ckr_name(rv));
    return kvp_hsm_map_rv(rv);
  }
  return CKR_OK;
}

static void hsm_destroy(kvp_backend *bep, int forked) {
  kvp_hsm_backend *be = hsm_of(bep);
  if (be == NULL)
    return;
  if (!forked && atomic_load(&be->ready)) {
    pthread_mutex_lock(&be->pool_lock);
    for (int i = 0; i < be->n_pool; i++)
      be->f->C_CloseSession(be->pool[i]);
    be->n_pool = 0;
    pthread_mutex_unlock(&be->pool_lock);
    unload_locked(be);
  }
  /* forked: the module, its sessions and its init record belong to the
   * parent's HSM state; leave them alone (no dlclose either: the child's next
   * backend finds the module still mapped and re-initializes it). Our mutexes
   * may have been copied in a locked state (another parent thread was inside
   * them at fork time): they are not touched, only freed with the struct. */
  if (!forked) {
    pthread_mutex_destroy(&be->pool_lock);
    pthread_mutex_destroy(&be->init_lock);
    pthread_mutex_destroy(&be->prov_lock);
  }
  free(be->base.name);
  free(be->module);
  free(be->token_label);
  free(be->serial);
  free(be->pin_file);
  free(be->pin_env);
  free(be);
}

static const kvp_backend_ops hsm_ops = {
    .scheme = "hsm",
    .open_key = kvp_hsm_open_key,
    .close_key = hsm_close_key,
    .sign = hsm_sign,
    .decrypt = hsm_decrypt,
    .needs_login = hsm_needs_login,
    .login = hsm_login,
    .logout = hsm_logout,
    .create_key = kvp_hsm_create_key,
    .import_key = kvp_hsm_import_key,
    .delete_key = kvp_hsm_delete_key,
    .list_keys = kvp_hsm_list_keys,
    .key_info = kvp_hsm_key_info,
    .destroy = hsm_destroy,
};

static int dup_field(char **dst, const char *src) {
  if (src == NULL)
    return 1;
  *dst = strdup(src);
  return *dst != NULL;
}

CK_RV kvp_hsm_backend_new(const kvp_hsm_conf *conf, kvp_backend **out) {
  if (conf == NULL || out == NULL || conf->module == NULL ||
      (conf->token_label == NULL && conf->serial == NULL))
    return CKR_ARGUMENTS_BAD;
  *out = NULL;
  pthread_once(&g_mods_once, mods_atfork_register);
  kvp_hsm_backend *be = calloc(1, sizeof(*be));
  if (be == NULL)
    return CKR_HOST_MEMORY;
  be->base.ops = &hsm_ops;
  be->conf_line = conf->line;
  be->has_pin = conf->pin_file != NULL || conf->pin_env != NULL;
  be->anchor = CK_INVALID_HANDLE;
  atomic_init(&be->ready, 0);
  atomic_init(&be->logged_in, 0);
  atomic_init(&be->login_gen, 1);
  atomic_init(&be->oaep_local, 0);
  pthread_mutex_init(&be->init_lock, NULL);
  pthread_mutex_init(&be->pool_lock, NULL);
  pthread_mutex_init(&be->prov_lock, NULL);
  if (!dup_field(&be->base.name, conf->name ? conf->name : "hsm") ||
      !dup_field(&be->module, conf->module) || !dup_field(&be->token_label, conf->token_label) ||
      !dup_field(&be->serial, conf->serial) || !dup_field(&be->pin_file, conf->pin_file) ||
      !dup_field(&be->pin_env, conf->pin_env)) {
    hsm_destroy(&be->base, 0); /* not initialized: no HSM calls */
    return CKR_HOST_MEMORY;
  }
  *out = &be->base;
  return CKR_OK;
}
