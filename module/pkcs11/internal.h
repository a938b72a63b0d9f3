/*
 * Internals of the PKCS#11 front: global state, slots, sessions, objects,
 * operations. Entry points (entry.c) are thin: check arguments and state,
 * take the right lock, call one function here, return its CK_RV.
 *
 * Locks, in the order they may nest (the atfork prepare handler takes the
 * first three in this order):
 *   g.init_lock    C_Initialize / C_Finalize only.
 *   g.reg_lock     the registry connection and reloads.
 *   g.lock         rwlock over the slot table (objects, login state) and the
 *                  session table. Held only to look up, copy or swap; never
 *                  across a backend call.
 *   session->lock  the session's active operation. May be held across a
 *                  backend call: it blocks only callers of that same session.
 *                  Entry points take it first, then g.reg_lock / g.lock
 *                  as needed; nothing takes it while holding those.
 *   object->lock   opening an object's key (once).
 *
 * Objects are made lazily from registry rows (find.c) and kept in a bounded
 * cache (g.cache, under g.lock); nothing reads certificate rows before an
 * application looks for an object or uses a handle.
 */
#ifndef KVP_PKCS11_INTERNAL_H
#define KVP_PKCS11_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/types.h>

#include <p11-kit/pkcs11.h>

#include "backend/backend.h"
#include "core/config.h"
#include "core/registry.h"

#define KVP_EXPORT __attribute__((visibility("default")))

/* Object kinds, the low two bits of an object handle (handle = row id << 2 | kind). */
enum { KVP_OBJ_CERT = 1, KVP_OBJ_PUBKEY = 2, KVP_OBJ_PRIVKEY = 3 };

typedef struct kvp_attr {
  CK_ATTRIBUTE_TYPE type;
  void *value;     /* NULL with len 0 for an empty value */
  CK_ULONG len;
  int sensitive;   /* value withheld: CKR_ATTRIBUTE_SENSITIVE */
} kvp_attr;

typedef struct kvp_object {
  atomic_int refs;
  CK_OBJECT_HANDLE handle;
  CK_OBJECT_CLASS cls;
  CK_SLOT_ID slot;
  int64_t row_id;
  char sha256[65];        /* certificate thumbprint: detects replaced rows */
  char *key_ref;          /* private keys: the certificate's key reference */
  char *label;
  int is_private;         /* CKA_PRIVATE: visible only after C_Login */
  kvp_key_type key_type;  /* for key objects */
  EVP_PKEY *pub;          /* key objects: the public key, made at first use (kvp_object_ready) */
  unsigned bits;          /* RSA modulus / EC field bits */
  int curve_nid;
  kvp_attr *attrs;
  size_t n_attrs;
  /* private keys: the opened backend key, guarded by lock */
  pthread_mutex_t lock;
  kvp_backend *backend;   /* resolved from key_ref, NULL if the store is not configured */
  char *key_name;
  char *key_version;      /* the registered Key Vault key version (open_key hint), or NULL */
  kvp_key *key;
  /* the row it was made from: an object is current while these are the row's */
  int64_t rev;            /* registry change counter (0 before schema v3) */
  kvp_cert_state state;   /* retired: the private key does not sign */
  /* cache links, guarded by g.lock (find.c) */
  struct kvp_object *hnext;        /* hash chain; the garbage list once unlinked */
  struct kvp_object *prev, *next;  /* clock order */
  atomic_int used;                 /* looked up since the clock hand last passed */
} kvp_object;

/* The object cache: objects by handle, at most KVP_CACHE_MAX of them but for
 * private keys whose backend key is open (few, and costly to open again). */
#define KVP_CACHE_MAX 3072
#define KVP_CACHE_BUCKETS 4096
typedef struct kvp_objcache {
  kvp_object **buckets;   /* allocated at the first insert */
  kvp_object *head, *tail;
  size_t count;
} kvp_objcache;

typedef struct kvp_slot {
  CK_SLOT_ID id;
  const kvp_account_conf *account;
  char label[33];          /* token label, blank padded, not NUL-terminated in token info */
  int logged_in;
  int has_rsa, has_ec;     /* key types registered: drives the mechanism list (a query) */
} kvp_slot;

/* An object search in progress (find.c); one allocation, freed by free(). */
typedef struct kvp_find kvp_find;

typedef enum {
  KVP_OP_NONE = 0,
  KVP_OP_FIND,
  KVP_OP_SIGN,
  KVP_OP_VERIFY,
  KVP_OP_ENCRYPT,
  KVP_OP_DECRYPT,
  KVP_OP_DIGEST,
} kvp_op_kind;

/* One active cryptographic operation of a session. */
typedef struct kvp_op {
  kvp_op_kind kind;
  CK_MECHANISM_TYPE mech;
  kvp_object *obj;            /* referenced for the operation's life */
  kvp_sig_alg sig;            /* sign / verify */
  kvp_dec_alg dec;            /* encrypt / decrypt */
  int hashing;                /* the mechanism hashes the data itself */
  EVP_MD_CTX *md;             /* when hashing */
  CK_BYTE *buf;               /* accumulated single-part input, or a kept result */
  CK_ULONG buf_len;
  int have_result;            /* decrypt: buf holds the plaintext for a retry */
  int updated;                /* multi- or single-part steps began: the other kind is refused */
  /* find */
  kvp_find *found;
} kvp_op;

typedef struct kvp_session {
  atomic_int refs;
  CK_SESSION_HANDLE handle;
  CK_SLOT_ID slot;
  CK_FLAGS flags;
  int closed;
  pthread_mutex_t lock;
  kvp_op op;       /* sign/verify/encrypt/decrypt/digest */
  kvp_op find;     /* find runs alongside a crypto operation */
} kvp_session;

typedef struct kvp_global {
  pthread_mutex_t init_lock;
  pthread_rwlock_t lock;
  pthread_mutex_t reg_lock;
  int initialized;
  atomic_int forked;           /* set in the child by the atfork handler */
  kvp_config *cfg;
  kvp_backend **backends;
  size_t n_backends;
  kvp_slot *slots;
  size_t n_slots;
  kvp_registry *reg;
  /* session table: open addressing, keys are handles (0 = empty, ~0 = deleted) */
  kvp_session **sessions;
  size_t sess_cap, sess_count, sess_used;
  CK_SESSION_HANDLE next_session;
  atomic_ulong generation;     /* bumped at every reload that changed something */
  int64_t reg_rev;             /* registry change counter seen (reg_lock); -1: none */
  kvp_objcache cache;          /* g.lock */
} kvp_global;

extern kvp_global kvp_g;

/* state.c */
CK_RV kvp_initialize(CK_C_INITIALIZE_ARGS_PTR args);
CK_RV kvp_finalize(void);
CK_RV kvp_check_initialized(void);
CK_RV kvp_refresh(void);  /* re-read the registry if it changed */
kvp_slot *kvp_slot_locked(CK_SLOT_ID id);   /* with g.lock held */
CK_RV kvp_session_open(CK_SLOT_ID slot, CK_FLAGS flags, CK_SESSION_HANDLE *out);
CK_RV kvp_session_close(CK_SESSION_HANDLE h);
CK_RV kvp_session_close_all(CK_SLOT_ID slot);
/* Look up and reference a session; kvp_session_put drops the reference. */
CK_RV kvp_session_get(CK_SESSION_HANDLE h, kvp_session **out);
void kvp_session_put(kvp_session *s);
CK_STATE kvp_session_state(const kvp_session *s, const kvp_slot *slot);
CK_RV kvp_login(kvp_session *s, CK_USER_TYPE user, CK_UTF8CHAR_PTR pin, CK_ULONG len);
CK_RV kvp_logout(kvp_session *s);
/* Look up and reference an object visible to the session. */
CK_RV kvp_object_get(kvp_session *s, CK_OBJECT_HANDLE h, kvp_object **out);
void kvp_object_put(kvp_object *o);
int kvp_slot_needs_login(void);

/* find.c: the lazy object layer */
/* With g.lock held (read is enough): the cached object of a handle, or NULL. */
kvp_object *kvp_cache_lookup_locked(CK_OBJECT_HANDLE h);
/* With g.lock held for writing: drop the objects of these rows (sorted ids;
 * all == 1: every object). The dropped objects are chained on *garbage. */
void kvp_cache_invalidate_locked(const int64_t *ids, size_t n, int all, kvp_object **garbage);
/* Release a garbage chain, without any lock held. */
void kvp_cache_release(kvp_object *garbage);
/* The object of a handle not in the cache, made from its registry row. */
CK_RV kvp_object_load(kvp_session *s, CK_OBJECT_HANDLE h, kvp_object **out);
CK_RV kvp_find_init(kvp_session *s, CK_ATTRIBUTE_PTR tmpl, CK_ULONG n);
CK_RV kvp_find_next(kvp_session *s, CK_OBJECT_HANDLE_PTR ph, CK_ULONG max, CK_ULONG_PTR count);
/* The first private key of the session's token with this public key (and
 * CKA_ID, if id != NULL): *row_id, or 0; *id_mismatch when a key has the
 * CKA_ID but another public key. */
CK_RV kvp_find_private_key(kvp_session *s, const EVP_PKEY *pub, const CK_ATTRIBUTE *id,
                           int64_t *row_id, int *id_mismatch);

/* object.c */
CK_RV kvp_objects_from_rec(const kvp_cert_rec *rec, CK_SLOT_ID slot, kvp_backend **backends,
                           size_t n_backends, kvp_object **out, size_t *n_out);
void kvp_object_free(kvp_object *o);
const kvp_attr *kvp_object_attr(const kvp_object *o, CK_ATTRIBUTE_TYPE t);
CK_RV kvp_object_get_attributes(const kvp_object *o, CK_ATTRIBUTE_PTR tmpl, CK_ULONG n);
int kvp_object_match(const kvp_object *o, const CK_ATTRIBUTE *tmpl, CK_ULONG n);
/* Make the EVP_PKEY (o->pub) of a key object, once; kvp_object_get does. */
CK_RV kvp_object_ready(kvp_object *o);
/* Open the backend key of a private key object (once). */
CK_RV kvp_object_key(kvp_object *o, kvp_key **out);

/* provision.c */
CK_RV kvp_create_object(kvp_session *s, CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR ph);
CK_RV kvp_destroy_object(kvp_session *s, CK_OBJECT_HANDLE h);
CK_RV kvp_generate_key_pair(kvp_session *s, CK_MECHANISM_PTR mech, CK_ATTRIBUTE_PTR pub,
                            CK_ULONG n_pub, CK_ATTRIBUTE_PTR priv, CK_ULONG n_priv,
                            CK_OBJECT_HANDLE_PTR ph_pub, CK_OBJECT_HANDLE_PTR ph_priv);
/* 1 when this process may write the registry (drives CKF_WRITE_PROTECTED). */
int kvp_registry_writable(void);

/* sessobj.c: session objects (CKA_TOKEN false or absent), in memory, owned
 * by the session that made them, seen by every session of the token. Their
 * handles have KVP_SESSOBJ_BIT set; token handles never do. */
#define KVP_SESSOBJ_BIT ((CK_OBJECT_HANDLE)1 << (sizeof(CK_OBJECT_HANDLE) * 8 - 1))
static inline int kvp_is_sessobj(CK_OBJECT_HANDLE h)
{
  return (h & KVP_SESSOBJ_BIT) != 0;
}
/* A session certificate from a checked template (CKA_VALUE, optional CKA_LABEL / CKA_ID).
 * priv (CKA_PRIVATE true): seen only while the user is logged in, and refused
 * with CKR_USER_NOT_LOGGED_IN while a token with CKF_LOGIN_REQUIRED is logged out. */
CK_RV kvp_sessobj_add_cert(kvp_session *s, const CK_ATTRIBUTE *value, const CK_ATTRIBUTE *label,
                           const CK_ATTRIBUTE *id, int priv, CK_OBJECT_HANDLE *ph);
/* A session key pair over key (a session key of its backend; taken over, also on failure). */
CK_RV kvp_sessobj_add_keypair(kvp_session *s, kvp_key *key, const char *account,
                              const char *key_ref, const char *label, const unsigned char *ckid,
                              size_t ckid_len, CK_OBJECT_HANDLE *ph_pub, CK_OBJECT_HANDLE *ph_priv);
/* Look up and reference a session object visible to s. */
CK_RV kvp_sessobj_get(kvp_session *s, CK_OBJECT_HANDLE h, kvp_object **out);
CK_RV kvp_sessobj_destroy(kvp_session *s, CK_OBJECT_HANDLE h);
/* Where a search is among the session objects (zeroed at C_FindObjectsInit). */
typedef struct kvp_sessobj_cursor {
  CK_OBJECT_HANDLE after; /* the last handle given */
  int done;               /* the end was reached: no session object is given any more */
  int open;               /* private objects visible logged out: 0 not asked, 1 yes, -1 no */
} kvp_sessobj_cursor;
/* Up to max more handles of session objects s sees and tmpl matches, in
 * handle (creation) order after c->after, into out; their count. Sets c->done
 * when it reaches the last object with room left. */
CK_ULONG kvp_sessobj_find(kvp_session *s, kvp_sessobj_cursor *c, const CK_ATTRIBUTE *tmpl,
                          CK_ULONG n, CK_OBJECT_HANDLE *out, CK_ULONG max);
/* The session closed: its objects go (no lock of the front held). */
void kvp_sessobj_session_closed(CK_SESSION_HANDLE owner);
/* C_Finalize, or a forked child (forked: no call into any backend). */
void kvp_sessobj_clear(int forked);

/* mech.c */
CK_RV kvp_mechanism_list(const kvp_slot *slot, CK_MECHANISM_TYPE_PTR list, CK_ULONG_PTR count);
CK_RV kvp_mechanism_info(const kvp_slot *slot, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO_PTR info);
CK_RV kvp_op_init(kvp_session *s, kvp_op_kind kind, CK_MECHANISM_PTR mech, CK_OBJECT_HANDLE key);
CK_RV kvp_op_update(kvp_session *s, kvp_op_kind kind, CK_BYTE_PTR data, CK_ULONG len);
/* Single-part (final = 0, data given) or final (final = 1) step with output. */
CK_RV kvp_op_output(kvp_session *s, kvp_op_kind kind, int final, CK_BYTE_PTR data, CK_ULONG len,
                    CK_BYTE_PTR out, CK_ULONG_PTR out_len);
CK_RV kvp_op_verify(kvp_session *s, int final, CK_BYTE_PTR data, CK_ULONG len, CK_BYTE_PTR sig,
                    CK_ULONG sig_len);
void kvp_op_reset(kvp_op *op);

#endif
