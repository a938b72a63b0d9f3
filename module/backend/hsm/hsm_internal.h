/*
 * Private header of the HSM backend, shared by its files (see README.md):
 *
 *   hsm.c            ops table, constructor, destroy, sign / decrypt entry points
 *   hsm_module.c     dlopen, C_Initialize / C_Finalize (fork rules), token search,
 *                    the one wrapper every call into the HSM goes through
 *   hsm_login.c      configured PIN (refusal guard, token flags), pass-through login
 *   hsm_session.c    session pool (serialized open / close, max session count)
 *   hsm_op.c         one sign / decrypt with its retry rules and error mapping
 *   hsm_key.c        open_key: key pair resolution, public key, first-signature check
 *   hsm_mech.c       local OAEP decoding (HSMs that refuse an OAEP hash)
 *   hsm_prov.c       provisioning helpers (templates, sessions, finding objects)
 *   hsm_create.c     create_key and import_key
 *   hsm_inventory.c  delete_key, list_keys, key_info
 *
 * Nothing outside module/backend/hsm includes it.
 */
#ifndef KVP_BACKEND_HSM_INTERNAL_H
#define KVP_BACKEND_HSM_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <sys/types.h>
#include <time.h>

#include <p11-kit/pkcs11.h>

#include "backend/backend.h"
#include "core/status.h"

#define KVP_HSM_POOL_MAX 16
/* an initialization that failed is not tried again before this many seconds */
#define KVP_HSM_INIT_RETRY_SECS 30
#define KVP_HSM_PIN_HASH_LEN 32

/* Why the configured PIN is not tried (hsm_login.c). */
typedef struct kvp_hsm_pin_guard {
  int blocked;   /* 1: no automatic C_Login until the PIN file changes */
  CK_RV why;     /* the HSM's answer (CKR_PIN_INCORRECT, ...) or the token flag */
  int have_stat; /* the PIN file's identity below was read */
  dev_t dev;
  ino_t ino;
  off_t size;
  struct timespec mtime;
  time_t retry_at; /* another failure (not the PIN): no attempt before then */
  char what[200];  /* what was refused, for the next refusals' reason */
} kvp_hsm_pin_guard;

typedef struct kvp_hsm_backend {
  kvp_backend base;

  /* configuration (copied) */
  char *module;
  char *token_label;
  char *serial;
  char *pin_file;
  char *pin_env;
  int conf_line;
  int has_pin; /* pin_file or pin_env configured */

  /* lazy init; dl, f, refcounted, slot and max_sessions are written under
   * init_lock before ready is set (release) and read-only afterwards; anchor,
   * the login state below and init_failed_at stay guarded by init_lock */
  pthread_mutex_t init_lock;
  atomic_int ready;
  void *dl;
  CK_FUNCTION_LIST_PTR f;
  int refcounted; /* takes part in the module's init refcount (g_mods) */
  CK_SLOT_ID slot;
  CK_ULONG max_sessions; /* the token's ulMaxSessionCount; 0: no limit known */
  CK_SESSION_HANDLE anchor;
  time_t init_failed_at; /* last failed initialization (0: none) */
  CK_RV init_failed_rv;
  char init_failed_why[KVP_STATUS_MSGLEN];

  /* login state */
  atomic_int logged_in;        /* the anchor session is a user session */
  atomic_ulong login_gen;      /* changes at every login / logout */
  kvp_hsm_pin_guard pin_guard; /* configured PIN (init_lock) */
  unsigned char pin_salt[16];  /* pass-through PIN: salted hash of the PIN that logged in */
  unsigned char pin_hash[KVP_HSM_PIN_HASH_LEN];
  int have_pin_hash; /* (init_lock) */

  /* OAEP hashes the HSM refuses (bit per kvp_hash): decoded locally */
  atomic_uint oaep_local;

  /* session pool (hsm_session.c): idle stack and the handles checked out.
   * pool_lock is held only to pop / push; sess_lock serializes the HSM's
   * C_OpenSession / C_CloseSession (rare calls) and is held across them. */
  pthread_mutex_t pool_lock;
  pthread_cond_t pool_cond; /* a session was given back (max_sessions wait) */
  CK_SESSION_HANDLE pool[KVP_HSM_POOL_MAX];
  int n_pool;
  CK_SESSION_HANDLE *busy; /* checked-out handles (a multiset) */
  size_t n_busy, cap_busy;
  size_t n_open; /* sessions of ours the HSM has open (pool + busy + others) */
  pthread_mutex_t sess_lock;

  /* provisioning (create / import / delete) of this backend, one at a time:
   * makes "is the label free?" and the creation one step for the threads of
   * this process. Held across HSM calls, but never taken by open_key, sign,
   * decrypt, login or logout. */
  pthread_mutex_t prov_lock;
} kvp_hsm_backend;

typedef struct kvp_hsm_key {
  kvp_key key; /* key.impl points back to this */
  char *label; /* NULL for an id: reference */
  CK_BYTE *id; /* NULL for a label reference */
  CK_ULONG id_len;
  CK_BYTE *pair_id; /* CKA_ID of the resolved private object (may be NULL) */
  CK_ULONG pair_id_len;
  atomic_ulong priv;     /* cached private key handle, CK_INVALID_HANDLE if none */
  atomic_ulong priv_gen; /* login_gen when priv was resolved */
  atomic_int checked;    /* 1: a signature (or decryption) of priv was checked locally */
  CK_ULONG out_len;      /* signature / plaintext buffer size: RSA bits/8, EC 2*field */
  int no_ec_public;      /* open_key: found only an EC private key object */
  CK_SESSION_HANDLE own_session; /* session key: the HSM session holding its objects, closed
                                  * (destroying them) by close_key; 0 for token keys */
} kvp_hsm_key;

static inline kvp_hsm_backend *kvp_hsm_of(kvp_backend *be)
{
  return (kvp_hsm_backend *)be;
}

static inline const char *kvp_hsm_token(const kvp_hsm_backend *be)
{
  return be->token_label ? be->token_label : be->serial;
}

static inline const char *kvp_hsm_key_desc(const kvp_hsm_key *k)
{
  return k->key.name ? k->key.name : "?";
}

/* ---- hsm_module.c ---- */

/*
 * Every call into the HSM's function list goes through KVP_HSM_CALL: the
 * caller's OpenSSL error queue is left as it was (the HSM's own OpenSSL use
 * may add errors) and the function name and CK_RV are logged at debug level.
 *   rv = KVP_HSM_CALL(be, C_Sign, s, in, in_len, out, &n);
 */
void kvp_hsm_call_begin(void);
CK_RV kvp_hsm_call_end(const kvp_hsm_backend *be, const char *fn, CK_RV rv);
#define KVP_HSM_CALL(be, fn, ...)                                                                  \
  (kvp_hsm_call_begin(), kvp_hsm_call_end((be), #fn, (be)->f->fn(__VA_ARGS__)))

/* Load, initialize, find the token, open the anchor session, log in with the
 * configured PIN (once; later calls return at once). A failed initialization
 * is not retried for KVP_HSM_INIT_RETRY_SECS; a refused configured PIN does
 * not fail the initialization (see hsm_login.c). */
CK_RV kvp_hsm_ensure_init(kvp_hsm_backend *be);
/* Close the anchor session, C_Finalize when ours and last, dlclose. */
void kvp_hsm_unload_locked(kvp_hsm_backend *be);
/* Register the fork handler of the module table (once per process). */
void kvp_hsm_mods_once(void);

/* ---- hsm_login.c ---- */

/* Log in with the configured PIN, unless the guard or the token flags
 * forbid it. init_lock held. CKR_OK or a code sign/decrypt may return
 * (CKR_DEVICE_ERROR, CKR_HOST_MEMORY), with the reason in the status. */
CK_RV kvp_hsm_conf_login_locked(kvp_hsm_backend *be);
/* The token forgot our login: log in again with the configured PIN (guarded). */
CK_RV kvp_hsm_relogin(kvp_hsm_backend *be);
/* 1 when session s is in a user state (error paths and provisioning). */
int kvp_hsm_session_logged_in(kvp_hsm_backend *be, CK_SESSION_HANDLE s);
CK_RV kvp_hsm_login(kvp_backend *bep, const CK_UTF8CHAR *pin, CK_ULONG pin_len);
CK_RV kvp_hsm_logout(kvp_backend *bep);
/* The per-process salt of the PIN hash (constructor). */
int kvp_hsm_login_setup(kvp_hsm_backend *be);

/* ---- hsm_session.c ---- */

/* An idle session, or a new one (fresh: a new one unless at the limit;
 * waits when the token's session limit is reached and sessions of ours are
 * checked out). */
CK_RV kvp_hsm_pool_get(kvp_hsm_backend *be, int fresh, CK_SESSION_HANDLE *out);
/* Give a checked-out session back. */
void kvp_hsm_pool_put(kvp_hsm_backend *be, CK_SESSION_HANDLE s);
/* Forget a checked-out session the HSM no longer knows (never closed: the
 * number may already belong to another session). */
void kvp_hsm_pool_forget(kvp_hsm_backend *be, CK_SESSION_HANDLE s);
/* Close a checked-out session whose state we cannot trust, unless another
 * holder may be using the same handle (then it is only forgotten). */
void kvp_hsm_pool_discard(kvp_hsm_backend *be, CK_SESSION_HANDLE s);
/* C_OpenSession / C_CloseSession for sessions outside the pool (anchor,
 * provisioning): serialized with the pool's and counted. */
CK_RV kvp_hsm_session_open(kvp_hsm_backend *be, int rw, CK_SESSION_HANDLE *out);
void kvp_hsm_session_close(kvp_hsm_backend *be, CK_SESSION_HANDLE s);
/* A session outside the pool that the HSM no longer knows (not closed). */
void kvp_hsm_session_lost(kvp_hsm_backend *be);
/* Close every idle session (destroy). */
void kvp_hsm_pool_close_all(kvp_hsm_backend *be);
int kvp_hsm_session_gone(CK_RV rv);

/* ---- hsm_op.c ---- */

enum { KVP_HSM_OP_SIGN = 0, KVP_HSM_OP_DECRYPT = 1 };
/* run_op(quiet_refusal): the HSM refused the mechanism at C_DecryptInit */
#define KVP_HSM_REFUSED (CKR_VENDOR_DEFINED | 0x4b565002UL)

/* Map an HSM CK_RV to what we tell the application. */
CK_RV kvp_hsm_map_rv(CK_RV rv);
int kvp_hsm_rv_passthrough(CK_RV rv);
/* One sign or decrypt with the retry rules. */
CK_RV kvp_hsm_run_op(kvp_hsm_backend *be, kvp_hsm_key *k, int op, CK_MECHANISM *mech,
                     const CK_BYTE *in, CK_ULONG in_len, CK_BYTE *out, CK_ULONG *out_len,
                     int quiet_refusal);

/* ---- hsm_key.c ---- */

/* A key name that is ambiguous, or a private key that is not the pair's:
 * the reason is recorded (kvp_fail, CKR_KEY_HANDLE_INVALID); callers report
 * CKR_KEY_HANDLE_INVALID. */
#define KVP_HSM_KEY_REFUSED (CKR_VENDOR_DEFINED | 0x4b565003UL)

/* One object of class cls with k's label (or id). CKR_KEY_HANDLE_INVALID: none. */
CK_RV kvp_hsm_find_object(kvp_hsm_backend *be, CK_SESSION_HANDLE s, const kvp_hsm_key *k,
                          CK_OBJECT_CLASS cls, CK_OBJECT_HANDLE *out);
/* Resolve the private key handle of k on s (cached in k->priv). */
CK_RV kvp_hsm_resolve_private(kvp_hsm_backend *be, CK_SESSION_HANDLE s, kvp_hsm_key *k,
                              CK_BBOOL *can_sign, CK_BBOOL *can_decrypt);
/* One variable-length attribute, malloc'd. */
CK_RV kvp_hsm_get_attr(kvp_hsm_backend *be, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o,
                       CK_ATTRIBUTE_TYPE t, CK_BYTE **val, CK_ULONG *len);
CK_RV kvp_hsm_build_rsa(const CK_BYTE *n, CK_ULONG n_len, const CK_BYTE *e, CK_ULONG e_len,
                        EVP_PKEY **out);
/* ec_params: DER OID; ec_point: DER OCTET STRING or the raw point. */
CK_RV kvp_hsm_build_ec(const CK_BYTE *ec_params, CK_ULONG params_len, const CK_BYTE *ec_point,
                       CK_ULONG point_len, EVP_PKEY **out);
/* The public key held by object h (an RSA private key object will do). */
CK_RV kvp_hsm_pub_from_object(kvp_hsm_backend *be, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
                              EVP_PKEY **out);
/* k->label, or k->id for "id:<hex>". CKR_ARGUMENTS_BAD when malformed. */
CK_RV kvp_hsm_parse_name(kvp_hsm_key *k, const char *name);
CK_RV kvp_hsm_open_key(kvp_backend *bep, const char *name, kvp_key **out);
/* open_key; want (may be NULL): the public key the key must have (a
 * registered certificate's), used to pick among candidates. */
CK_RV kvp_hsm_open_key_want(kvp_backend *bep, const char *name, const EVP_PKEY *want,
                            kvp_key **out);
void kvp_hsm_close_key(kvp_backend *be, kvp_key *key);
/* The first result of a newly resolved private key is checked with the
 * public key: CKR_OK, or CKR_DEVICE_ERROR (logged) when it does not match. */
CK_RV kvp_hsm_check_sig(kvp_hsm_backend *be, kvp_hsm_key *k, const kvp_sig_alg *alg,
                        const CK_BYTE *digest, CK_ULONG digest_len, const CK_BYTE *sig,
                        CK_ULONG sig_len);

/* ---- hsm_mech.c ---- */

/* RSA without padding in the HSM (CKM_RSA_X_509), OAEP removed here. */
CK_RV kvp_hsm_decrypt_oaep_local(kvp_hsm_backend *be, kvp_hsm_key *k, const kvp_dec_alg *alg,
                                 const CK_BYTE *in, CK_ULONG in_len, CK_BYTE *out,
                                 CK_ULONG *out_len);

/* ---- provisioning (hsm_create.c, hsm_inventory.c): the ops of backend.h ---- */

CK_RV kvp_hsm_create_key(kvp_backend *bep, const char *name, const kvp_key_spec *spec,
                         kvp_key **out);
CK_RV kvp_hsm_create_session_key(kvp_backend *bep, const kvp_key_spec *spec, kvp_key **out);
CK_RV kvp_hsm_import_key(kvp_backend *bep, const char *name, EVP_PKEY *priv,
                         const kvp_key_spec *spec, kvp_key **out);
CK_RV kvp_hsm_delete_key(kvp_backend *bep, const char *name);
CK_RV kvp_hsm_list_keys(kvp_backend *bep, kvp_key_info **out, size_t *n);
CK_RV kvp_hsm_key_info(kvp_backend *bep, const char *name, kvp_key_info *out);

#endif
