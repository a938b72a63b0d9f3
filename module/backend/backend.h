/*
 * The seam between the PKCS#11 front and the key stores.
 *
 * A backend is one configured key store ([hsm NAME] or [vault NAME]). The
 * front resolves a certificate's key reference ("hsm:appliance/app",
 * "keyvault:prod/key1[/version]") to a backend and a key name, opens the key
 * once (kvp_key), and then asks the backend to sign a digest or decrypt a
 * ciphertext. The front never talks HTTP or dlopen()s a module; a backend
 * never sees a CK_SESSION_HANDLE.
 *
 * Rules for implementations:
 *  - Connect lazily: creating a backend does no I/O; open_key does.
 *  - No lock of the front is held while a backend function runs; backends may
 *    block. A backend keeps its own locks short and never holds one across
 *    a network or HSM call, so N threads have N operations in flight.
 *  - Every failure is logged once, in the backend's own terms (HSM CK_RV,
 *    HTTP status, Key Vault error code), and mapped to a CK_RV here.
 *  - Secrets (PINs, client secrets, tokens) are wiped after use.
 */
#ifndef KVP_BACKEND_BACKEND_H
#define KVP_BACKEND_BACKEND_H

#include <stddef.h>
#include <openssl/evp.h>
#include <p11-kit/pkcs11.h>

#include "core/config.h"

typedef enum {
  KVP_HASH_NONE = 0,
  KVP_HASH_SHA1,
  KVP_HASH_SHA224,
  KVP_HASH_SHA256,
  KVP_HASH_SHA384,
  KVP_HASH_SHA512,
} kvp_hash;

typedef enum {
  KVP_KEY_RSA = 1,
  KVP_KEY_EC = 2,
} kvp_key_type;

typedef enum {
  /* PKCS#1 v1.5. hash != NONE: digest is the bare hash, the backend applies
   * the DigestInfo (Key Vault RS256/384/512). hash == NONE: digest is the raw
   * input to CKM_RSA_PKCS (HSM only; Key Vault refuses with CKR_DATA_INVALID). */
  KVP_SIG_RSA_PKCS1 = 1,
  /* RSASSA-PSS over a bare hash; mgf1 and salt_len as given (the front only
   * passes mgf1 == hash and salt_len == hash length for Key Vault). */
  KVP_SIG_RSA_PSS,
  /* ECDSA over a digest already sized for the curve; the output is r||s, each
   * half the curve's field length, as PKCS#11 expects. */
  KVP_SIG_ECDSA,
} kvp_sig_scheme;

typedef struct kvp_sig_alg {
  kvp_sig_scheme scheme;
  kvp_hash hash;
  kvp_hash mgf1;     /* PSS only */
  size_t salt_len;   /* PSS only */
} kvp_sig_alg;

typedef enum {
  KVP_DEC_RSA_PKCS1 = 1, /* RSAES-PKCS1-v1_5; Key Vault RSA1_5 */
  KVP_DEC_RSA_OAEP,      /* RSAES-OAEP, no label; Key Vault RSA-OAEP (SHA-1) / RSA-OAEP-256 */
} kvp_dec_scheme;

typedef struct kvp_dec_alg {
  kvp_dec_scheme scheme;
  kvp_hash hash; /* OAEP only */
  kvp_hash mgf1; /* OAEP only */
} kvp_dec_alg;

typedef struct kvp_backend kvp_backend;
typedef struct kvp_key kvp_key;

/* What a key may be used for (provisioning). */
#define KVP_KEYOP_SIGN 0x1u
#define KVP_KEYOP_DECRYPT 0x2u

/* A key to create or import. */
typedef struct kvp_key_spec {
  kvp_key_type type;   /* create only (import takes it from the key) */
  unsigned bits;       /* RSA: 2048, 3072 or 4096 */
  int curve_nid;       /* EC: NID_X9_62_prime256v1, NID_secp384r1, NID_secp521r1 */
  unsigned ops;        /* KVP_KEYOP_*; 0: sign|decrypt for RSA, sign for EC */
  int hsm_protected;   /* Key Vault: kty RSA-HSM / EC-HSM; ignored by HSMs */
  const unsigned char *id; /* HSM: CKA_ID for both objects; NULL: SHA-1 of the */
  size_t id_len;           /* subjectPublicKey (the module's default CKA_ID) */
} kvp_key_spec;

/* Public facts about a key in a store (list / show). */
typedef struct kvp_key_info {
  char *name;
  char *version;       /* Key Vault: current version; NULL for HSM */
  char *kty;           /* "RSA", "RSA-HSM", "EC", "EC-HSM" */
  kvp_key_type type;
  unsigned bits;       /* RSA modulus bits / EC field bits */
  int curve_nid;
  unsigned ops;        /* KVP_KEYOP_* the store allows */
  int enabled;         /* 0: disabled, expired or not yet valid */
  int hsm_protected;   /* Key Vault -HSM key, or always 1 for an HSM */
  long long created;   /* unix time, 0: unknown */
  long long expires;   /* unix time, 0: none */
  EVP_PKEY *pub;       /* public key; may be NULL in list results */
  unsigned char *id;   /* HSM: CKA_ID; NULL for Key Vault */
  size_t id_len;
} kvp_key_info;

/* An opened key. Owned by the backend; the front treats it as read-only. */
struct kvp_key {
  kvp_backend *backend;
  char *name;          /* the part of the key reference after "<store>/" */
  EVP_PKEY *pub;       /* public key as the key store reports it */
  kvp_key_type type;
  unsigned bits;       /* RSA modulus bits, or EC field bits (256, 384, 521) */
  int curve_nid;       /* EC only: NID_X9_62_prime256v1, NID_secp384r1, NID_secp521r1, NID_secp256k1 */
  int can_sign;        /* what the key store allows (Key Vault, opened with a hint: what the */
  int can_decrypt;     /* key type and key_ops allow; enabled/nbf/exp checked at each operation) */
  int private_obj;     /* 1 when using the key needs C_Login (PIN passed through) */
  char *version;       /* Key Vault key version in use, NULL for HSM */
  void *impl;          /* backend-specific */
};

/*
 * What the registry knows about a key when the front opens it (optional):
 * the version checked at registration and the key's SubjectPublicKeyInfo.
 * Key Vault opens a key with both without any request and uses that version
 * (rotation-safe); an HSM backend may compare its key with spki.
 */
typedef struct kvp_key_ref_hint {
  const char *version;        /* Key Vault key version, or NULL */
  const unsigned char *spki;  /* DER SubjectPublicKeyInfo, or NULL */
  size_t spki_len;
} kvp_key_ref_hint;

typedef struct kvp_backend_ops {
  const char *scheme; /* "hsm" or "keyvault": the key reference prefix */

  /* Resolve a key by name and read its public part. CKR_KEY_HANDLE_INVALID
   * (with a log line naming the store and the key) when it does not exist. */
  CK_RV (*open_key)(kvp_backend *be, const char *name, kvp_key **out);
  void (*close_key)(kvp_backend *be, kvp_key *key);
  /* open_key with what the registry knows (hint may be NULL). Optional:
   * kvp_backend_open_key() falls back to open_key when it is NULL. */
  CK_RV (*open_key_hint)(kvp_backend *be, const char *name, const kvp_key_ref_hint *hint,
                         kvp_key **out);

  /* sig has room for the full signature (RSA: bits/8; ECDSA: 2 * field bytes);
   * *sig_len is set to the length written. */
  CK_RV (*sign)(kvp_backend *be, kvp_key *key, const kvp_sig_alg *alg, const CK_BYTE *digest,
                CK_ULONG digest_len, CK_BYTE *sig, CK_ULONG *sig_len);

  /* out has room for bits/8 bytes; *out_len is set to the plaintext length.
   * Padding errors are CKR_ENCRYPTED_DATA_INVALID. */
  CK_RV (*decrypt)(kvp_backend *be, kvp_key *key, const kvp_dec_alg *alg, const CK_BYTE *in,
                   CK_ULONG in_len, CK_BYTE *out, CK_ULONG *out_len);

  /* 1 when the backend takes the application's PIN at C_Login. */
  int (*needs_login)(kvp_backend *be);
  /* Pass the application's PIN through (only called when needs_login). */
  CK_RV (*login)(kvp_backend *be, const CK_UTF8CHAR *pin, CK_ULONG pin_len);
  CK_RV (*logout)(kvp_backend *be);

  /* ---- provisioning (may be NULL: CKR_FUNCTION_NOT_SUPPORTED) ----------- */

  /* Create a new key named name inside the store (Key Vault: POST
   * /keys/NAME/create; HSM: C_GenerateKeyPair, token objects, private key
   * CKA_SENSITIVE true, CKA_EXTRACTABLE false). A key of that name that exists
   * already is never replaced: CKR_ATTRIBUTE_VALUE_INVALID with a log line.
   * On success *out is the opened key (as open_key would return it). */
  CK_RV (*create_key)(kvp_backend *be, const char *name, const kvp_key_spec *spec, kvp_key **out);

  /* Optional (NULL: the store has no session keys; the front answers
   * CKR_TEMPLATE_INCONSISTENT, as for Key Vault). Create a key pair that lives
   * only while *out is open: HSM session objects (CKA_TOKEN false) under a
   * label of the backend's choosing (key->name), held in an HSM session kept
   * out of the pool; close_key destroys them and closes that session. Nothing
   * is written to the store's token. */
  CK_RV (*create_session_key)(kvp_backend *be, const kvp_key_spec *spec, kvp_key **out);

  /* Import an existing private key (RSA or EC, from a PFX) under name (Key
   * Vault: PUT /keys/NAME with the private JWK; HSM: C_CreateObject of the
   * private key, sensitive and non-extractable, and of its public key). Same
   * rule for an existing name. Every copy of the key material the backend
   * makes (JWK text, BIGNUM bytes, templates, request buffers) is wiped before
   * the call returns. spec gives ops / hsm_protected / id; type, bits and
   * curve_nid are taken from priv. After a failure whose outcome is unknown
   * (connection lost after the request was sent), the backend checks with a
   * get whether the key now exists with priv's public key: if so it returns
   * CKR_OK, otherwise the failure. */
  CK_RV (*import_key)(kvp_backend *be, const char *name, EVP_PKEY *priv, const kvp_key_spec *spec,
                      kvp_key **out);

  /* Delete the key (Key Vault: DELETE /keys/NAME, soft-delete; HSM:
   * C_DestroyObject of the private and public key objects).
   * CKR_KEY_HANDLE_INVALID when there is no such key. */
  CK_RV (*delete_key)(kvp_backend *be, const char *name);

  /* Every key in the store (Key Vault: list with nextLink paging, then one
   * get per key for its public part; HSM: C_FindObjects over private keys,
   * named by CKA_LABEL). */
  CK_RV (*list_keys)(kvp_backend *be, kvp_key_info **out, size_t *n);

  /* One key's public information. CKR_KEY_HANDLE_INVALID when absent. */
  CK_RV (*key_info)(kvp_backend *be, const char *name, kvp_key_info *out);

  /* Free everything. forked != 0: called in a child after fork(); must not
   * call into the lower module or reuse its connections, only free memory. */
  void (*destroy)(kvp_backend *be, int forked);
} kvp_backend_ops;

struct kvp_backend {
  const kvp_backend_ops *ops;
  char *name; /* the [hsm NAME] / [vault NAME] */
};

/* Constructors: no I/O, the configuration is copied. */
CK_RV kvp_hsm_backend_new(const kvp_hsm_conf *conf, kvp_backend **out);
CK_RV kvp_keyvault_backend_new(const kvp_vault_conf *conf, kvp_backend **out);

/* Calls into a backend (backend.c). The front and the tool use these, never
 * be->ops->open_key / sign / decrypt / login / logout directly: the
 * arguments are checked once here (CKR_ARGUMENTS_BAD) and the caller's
 * OpenSSL error queue is left as found, for every backend. */
/* be->ops->open_key_hint when the backend has it, else be->ops->open_key. */
CK_RV kvp_backend_open_key(kvp_backend *be, const char *name, const kvp_key_ref_hint *hint,
                           kvp_key **out);
/* key->backend's sign / decrypt (the ops' contracts above). */
CK_RV kvp_backend_sign(kvp_key *key, const kvp_sig_alg *alg, const CK_BYTE *digest,
                       CK_ULONG digest_len, CK_BYTE *sig, CK_ULONG *sig_len);
CK_RV kvp_backend_decrypt(kvp_key *key, const kvp_dec_alg *alg, const CK_BYTE *in,
                          CK_ULONG in_len, CK_BYTE *out, CK_ULONG *out_len);
/* be->ops->login (CKR_FUNCTION_NOT_SUPPORTED without one) / logout (CKR_OK
 * without one). */
CK_RV kvp_backend_login(kvp_backend *be, const CK_UTF8CHAR *pin, CK_ULONG pin_len);
CK_RV kvp_backend_logout(kvp_backend *be);

/* Helpers shared by backends and front (backend.c). */
void kvp_key_info_clear(kvp_key_info *info);
void kvp_key_info_free_array(kvp_key_info *infos, size_t n);
/* "p256"/"P-256"/"prime256v1" etc. to a NID (NID_undef if unknown), and back
 * ("P-256", "P-384", "P-521", "P-256K"). */
int kvp_curve_nid(const char *name);
const char *kvp_curve_name(int nid);

size_t kvp_hash_len(kvp_hash h);
const EVP_MD *kvp_hash_md(kvp_hash h);
const char *kvp_hash_name(kvp_hash h);
/* The hash's PKCS#11 mechanism (CK_UNAVAILABLE_INFORMATION for NONE) and
 * MGF1 type (0 for NONE), and back (KVP_HASH_NONE for anything else). */
CK_MECHANISM_TYPE kvp_hash_ckm(kvp_hash h);
CK_RSA_PKCS_MGF_TYPE kvp_hash_mgf(kvp_hash h);
kvp_hash kvp_hash_from_ckm(CK_MECHANISM_TYPE m);
kvp_hash kvp_hash_from_mgf(CK_RSA_PKCS_MGF_TYPE mgf);
/* The DER DigestInfo (RFC 8017 9.2, NULL parameters) of digest under h, in
 * out (cap bytes); 1 on success, 0 for an unknown hash, a digest of another
 * length or too small a buffer. */
int kvp_digestinfo_build(kvp_hash h, const unsigned char *digest, size_t digest_len,
                         unsigned char *out, size_t cap, size_t *out_len);
/* 0 when in is exactly the DigestInfo kvp_digestinfo_build makes for a
 * SHA-1/224/256/384/512 digest: *hash set and *digest pointing into in.
 * -1 otherwise (another encoding, trailing bytes, wrong lengths, unknown
 * OID, parameters other than NULL). */
int kvp_digestinfo_parse(const CK_BYTE *in, CK_ULONG len, kvp_hash *hash, const CK_BYTE **digest);
/* 1 when sig is alg's signature over digest with pub (ECDSA: r||s; RSA
 * PKCS#1 v1.5 with KVP_HASH_NONE: digest is the raw DigestInfo/input). The
 * caller's OpenSSL error queue is left as it was. */
int kvp_sig_verify(EVP_PKEY *pub, const kvp_sig_alg *alg, const unsigned char *digest,
                   size_t dlen, const unsigned char *sig, size_t slen);
/* ECDSA r||s (as PKCS#11 and Key Vault carry it) -> DER ECDSA-Sig-Value
 * (OPENSSL_malloc'd, length in *der_len); NULL for an empty or odd length. */
unsigned char *kvp_ecdsa_raw_to_der(const unsigned char *raw, size_t len, size_t *der_len);
/* The two halves of kvp_sig_verify, for callers that keep set-up contexts:
 * a verify context for alg on pub (NULL when alg does not suit), and the check
 * with it (ECDSA: r||s; a context may be reused). Both leave the caller's
 * OpenSSL error queue as it was. */
EVP_PKEY_CTX *kvp_sig_ctx_new(EVP_PKEY *pub, const kvp_sig_alg *alg);
int kvp_sig_check(EVP_PKEY_CTX *ctx, const kvp_sig_alg *alg, const unsigned char *digest,
                  size_t dlen, const unsigned char *sig, size_t slen);
/* Fill type, bits, curve_nid of key from key->pub. CKR_KEY_TYPE_INCONSISTENT for
 * unsupported key types or curves. */
CK_RV kvp_key_fill_from_pub(kvp_key *key);

/*
 * Split a key reference "scheme:store/name" into its parts (malloc'd).
 * Returns KVP_EINVAL with a message when malformed.
 */
int kvp_keyref_parse(const char *ref, char **scheme, char **store, char **name, char *err,
                     size_t errlen);

#endif
