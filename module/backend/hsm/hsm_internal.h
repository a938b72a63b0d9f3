/*
 * Private header of the HSM backend: shared by hsm.c (life cycle, sessions,
 * sign / decrypt) and hsm_provision.c (create, import, delete, list keys).
 * Nothing outside module/backend/hsm includes it.
 */
#ifndef KVP_BACKEND_HSM_INTERNAL_H
#define KVP_BACKEND_HSM_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>

#include <p11-kit/pkcs11.h>

#include "backend/backend.h"

#define KVP_HSM_POOL_MAX 16

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

  /* lazy init; dl, f, refcounted and slot are written under init_lock before
   * ready is set (release) and read-only afterwards; anchor stays guarded by
   * init_lock (login, logout and relogin may re-open it) */
  pthread_mutex_t init_lock;
  atomic_int ready;
  void *dl;
  CK_FUNCTION_LIST_PTR f;
  int refcounted; /* takes part in the module's init refcount (g_mods) */
  CK_SLOT_ID slot;
  CK_SESSION_HANDLE anchor;

  /* application login state (pass-through PIN) */
  atomic_int logged_in;
  atomic_ulong login_gen;

  /* OAEP hashes the HSM refuses (bit per kvp_hash): decoded locally */
  atomic_uint oaep_local;

  /* idle session stack */
  pthread_mutex_t pool_lock;
  CK_SESSION_HANDLE pool[KVP_HSM_POOL_MAX];
  int n_pool;

  /* provisioning (create / import / delete) of this backend, one at a time:
   * makes "is the label free?" and the creation one step for the threads of
   * this process. Held across HSM calls, but never taken by open_key, sign,
   * decrypt, login or logout. */
  pthread_mutex_t prov_lock;
} kvp_hsm_backend;

typedef struct kvp_hsm_key {
  kvp_key key; /* key.impl points back to this */
  char *label;           /* NULL for an id: reference */
  CK_BYTE *id;           /* NULL for a label reference */
  CK_ULONG id_len;
  atomic_ulong priv;     /* cached private key handle, CK_INVALID_HANDLE if none */
  atomic_ulong priv_gen; /* login_gen when priv was resolved */
  CK_ULONG out_len;      /* signature / plaintext buffer size: RSA bits/8, EC 2*field */
  int no_ec_public;      /* open_key: found only an EC private key object */
} kvp_hsm_key;

static inline kvp_hsm_backend *kvp_hsm_of(kvp_backend *be) { return (kvp_hsm_backend *)be; }

/* ---- hsm.c ---- */

/* Map an HSM CK_RV to what we tell the application. */
CK_RV kvp_hsm_map_rv(CK_RV rv);
/* Load, initialize, find the token, open the anchor session, log in with the
 * configured PIN (once; later calls return at once). */
CK_RV kvp_hsm_ensure_init(kvp_hsm_backend *be);
/* 1 when session s is in a user state (error paths and provisioning). */
int kvp_hsm_session_logged_in(kvp_hsm_backend *be, CK_SESSION_HANDLE s);
/* Log in again with the configured PIN (the token forgot our login). */
CK_RV kvp_hsm_relogin(kvp_hsm_backend *be);
/* One object of class cls with k's label (or id). CKR_KEY_HANDLE_INVALID: none. */
CK_RV kvp_hsm_find_object(kvp_hsm_backend *be, CK_SESSION_HANDLE s, const kvp_hsm_key *k,
                          CK_OBJECT_CLASS cls, CK_OBJECT_HANDLE *out);
/* One variable-length attribute, malloc'd. */
CK_RV kvp_hsm_get_attr(kvp_hsm_backend *be, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o,
                       CK_ATTRIBUTE_TYPE t, CK_BYTE **val, CK_ULONG *len);
CK_RV kvp_hsm_build_rsa(const CK_BYTE *n, CK_ULONG n_len, const CK_BYTE *e, CK_ULONG e_len,
                        EVP_PKEY **out);
/* ec_params: DER OID; ec_point: DER OCTET STRING or the raw point. */
CK_RV kvp_hsm_build_ec(const CK_BYTE *ec_params, CK_ULONG params_len, const CK_BYTE *ec_point,
                       CK_ULONG point_len, EVP_PKEY **out);
/* k->label, or k->id for "id:<hex>". CKR_ARGUMENTS_BAD when malformed. */
CK_RV kvp_hsm_parse_name(kvp_hsm_key *k, const char *name);
CK_RV kvp_hsm_open_key(kvp_backend *bep, const char *name, kvp_key **out);

/* ---- hsm_provision.c: the provisioning ops of backend.h ---- */

CK_RV kvp_hsm_create_key(kvp_backend *bep, const char *name, const kvp_key_spec *spec,
                         kvp_key **out);
CK_RV kvp_hsm_import_key(kvp_backend *bep, const char *name, EVP_PKEY *priv,
                         const kvp_key_spec *spec, kvp_key **out);
CK_RV kvp_hsm_delete_key(kvp_backend *bep, const char *name);
CK_RV kvp_hsm_list_keys(kvp_backend *bep, kvp_key_info **out, size_t *n);
CK_RV kvp_hsm_key_info(kvp_backend *bep, const char *name, kvp_key_info *out);

#endif
