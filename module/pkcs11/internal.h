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
  EVP_PKEY *pub;          /* key objects: the certificate's public key */
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
} kvp_object;

typedef struct kvp_slot {
  CK_SLOT_ID id;
  const kvp_account_conf *account;
  char label[33];          /* token label, blank padded, not NUL-terminated in token info */
  kvp_object **objects;    /* sorted by handle */
  size_t n_objects;
  int logged_in;
  int has_rsa, has_ec;     /* key types present: drives the mechanism list */
} kvp_slot;

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
  CK_ULONG buf_cap;
  int have_result;            /* decrypt: buf holds the plaintext for a retry */
  int updated;                /* C_*Update was used: single-part call not allowed */
  /* find */
  CK_OBJECT_HANDLE *found;
  CK_ULONG n_found, next_found;
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
  pid_t pid;
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
  atomic_ulong generation;     /* bumped at every reload */
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

/* object.c */
CK_RV kvp_objects_from_rec(const kvp_cert_rec *rec, CK_SLOT_ID slot, kvp_backend **backends,
                           size_t n_backends, kvp_object **out, size_t *n_out);
void kvp_object_free(kvp_object *o);
const kvp_attr *kvp_object_attr(const kvp_object *o, CK_ATTRIBUTE_TYPE t);
CK_RV kvp_object_get_attributes(const kvp_object *o, CK_ATTRIBUTE_PTR tmpl, CK_ULONG n);
int kvp_object_match(const kvp_object *o, const CK_ATTRIBUTE *tmpl, CK_ULONG n);
/* Open the backend key of a private key object (once). */
CK_RV kvp_object_key(kvp_object *o, kvp_key **out);
CK_RV kvp_find_init(kvp_session *s, CK_ATTRIBUTE_PTR tmpl, CK_ULONG n);

/* provision.c */
CK_RV kvp_create_object(kvp_session *s, CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR ph);
CK_RV kvp_destroy_object(kvp_session *s, CK_OBJECT_HANDLE h);
CK_RV kvp_generate_key_pair(kvp_session *s, CK_MECHANISM_PTR mech, CK_ATTRIBUTE_PTR pub,
                            CK_ULONG n_pub, CK_ATTRIBUTE_PTR priv, CK_ULONG n_priv,
                            CK_OBJECT_HANDLE_PTR ph_pub, CK_OBJECT_HANDLE_PTR ph_priv);
/* 1 when this process may write the registry (drives CKF_WRITE_PROTECTED). */
int kvp_registry_writable(void);

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
