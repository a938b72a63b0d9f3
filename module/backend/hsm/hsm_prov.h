/*
 * Helpers shared by the provisioning files of the HSM backend (hsm_prov.c):
 * templates, names, sessions of their own, finding and destroying objects.
 * See hsm_prov.c for the rules.
 */
#ifndef KVP_BACKEND_HSM_PROV_H
#define KVP_BACKEND_HSM_PROV_H

#include "backend/hsm/hsm_internal.h"

#define KVP_HSM_TMPL_MAX 24

typedef struct {
  CK_ATTRIBUTE a[KVP_HSM_TMPL_MAX];
  CK_ULONG n;
} kvp_hsm_tmpl;

void kvp_hsm_t_add(kvp_hsm_tmpl *t, CK_ATTRIBUTE_TYPE type, void *v, size_t len);
/* CK_RV of a provisioning call: a write-protected token is worth saying. */
CK_RV kvp_hsm_prov_map(CK_RV rv);
/* CKR_OK for a valid new label; else CKR_ATTRIBUTE_VALUE_INVALID, recorded. */
CK_RV kvp_hsm_check_name(kvp_hsm_backend *be, const char *name);
/* spec ops (0: the default for the type) checked against the key type. */
CK_RV kvp_hsm_key_ops(kvp_hsm_backend *be, const char *name, kvp_key_type type, unsigned ops,
                      unsigned *out);
unsigned kvp_hsm_curve_bits(int nid);
/* DER OID of a supported curve (OPENSSL_free). */
int kvp_hsm_curve_params(int nid, unsigned char **der, int *len);
int kvp_hsm_params_nid(const CK_BYTE *der, CK_ULONG len);
/* A session of our own for one provisioning call, in the user's state. */
CK_RV kvp_hsm_prov_session(kvp_hsm_backend *be, const char *what, int rw, CK_SESSION_HANDLE *out);
/* Every object matching t (malloc'd; NULL when none). */
CK_RV kvp_hsm_find_all(kvp_hsm_backend *be, CK_SESSION_HANDLE s, CK_ATTRIBUTE *t, CK_ULONG n,
                       CK_OBJECT_HANDLE **out, CK_ULONG *count);
/* Objects of class cls with the label (or the CKA_ID, for label == NULL). */
CK_RV kvp_hsm_find_keys(kvp_hsm_backend *be, CK_SESSION_HANDLE s, CK_OBJECT_CLASS cls,
                        const char *label, const CK_BYTE *id, CK_ULONG id_len,
                        CK_OBJECT_HANDLE **out, CK_ULONG *count);
/* A provisioning call that changes the token begins: prov_lock taken, a
 * read/write session in *s and, when label is not NULL, no key object
 * labelled so yet. On failure nothing is held (*s is CK_INVALID_HANDLE). */
CK_RV kvp_hsm_prov_begin(kvp_hsm_backend *be, const char *what, const char *label,
                         CK_SESSION_HANDLE *s);
/* ... and ends, after every begin that succeeded: prov_lock released, and the
 * session closed unless s is CK_INVALID_HANDLE (a session the caller keeps). */
void kvp_hsm_prov_end(kvp_hsm_backend *be, CK_SESSION_HANDLE s);
void kvp_hsm_destroy_obj(kvp_hsm_backend *be, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
                         const char *name);
CK_RV kvp_hsm_get_ulong(kvp_hsm_backend *be, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
                        CK_ATTRIBUTE_TYPE type, CK_ULONG *v);
/* Finish a new key pair: CKA_ID (default), uniqueness, the public key as the
 * HSM stores it compared with want (import). On failure both objects go. */
CK_RV kvp_hsm_finish_pair(kvp_hsm_backend *be, CK_SESSION_HANDLE s, const char *name,
                          CK_OBJECT_HANDLE hpriv, CK_OBJECT_HANDLE hpub, int set_id,
                          const EVP_PKEY *want);

#endif
