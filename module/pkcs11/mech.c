/*
 * Mechanisms: the table of what kvp11 offers, and the cryptographic
 * operations of a session. Sign and decrypt go to the key's backend with a
 * bare digest or the ciphertext; verify, encrypt and digest run locally with
 * OpenSSL on the certificate's public key.
 */
#include "pkcs11/mech.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/ecdsa.h>
#include <openssl/rsa.h>

#include "core/audit.h"
#include "core/log.h"
#include "core/p11names.h"
#include "core/status.h"
#include "core/util.h"
#include "pkcs11/internal.h"

/* Largest input accumulated for mechanisms that do not hash (RSA-8192 block). */
#define KVP_MAX_RAW_INPUT 1024
/* Largest RSA modulus accepted, in bytes. */
#define KVP_MAX_RSA_BYTES 1024

/* ---- ECDSA sizing ---------------------------------------------------- */

CK_ULONG kvp_ecdsa_digest_len(int curve_nid)
{
  switch (curve_nid) {
  case NID_X9_62_prime256v1:
  case NID_secp256k1: return 32;
  case NID_secp384r1: return 48;
  case NID_secp521r1: return 64;
  default: return 0;
  }
}

CK_ULONG kvp_ec_field_len(unsigned bits)
{
  return (bits + 7) / 8;
}

CK_RV kvp_ecdsa_fit_digest(int curve_nid, const CK_BYTE *in, CK_ULONG len, CK_BYTE *out,
                           CK_ULONG *out_len)
{
  CK_ULONG want = kvp_ecdsa_digest_len(curve_nid);

  if (want == 0 || len == 0)
    return CKR_DATA_LEN_RANGE;
  if (len > want) {
    /* ECDSA uses the leftmost bits of a longer digest; P-521 takes 521 bits,
     * more than a 64-byte value can carry, so longer input is refused there. */
    if (curve_nid == NID_secp521r1)
      return CKR_DATA_LEN_RANGE;
    memcpy(out, in, want);
  } else {
    memset(out, 0, want - len);
    memcpy(out + (want - len), in, len);
  }
  *out_len = want;
  return CKR_OK;
}

/* ---- the mechanism table --------------------------------------------- */

enum { K_NONE = 0, K_RSA = 1, K_EC = 2, K_GEN = 3 };

typedef struct mech_desc {
  CK_MECHANISM_TYPE type;
  int key;           /* K_RSA, K_EC, K_NONE for digests, K_GEN for key generation */
  CK_FLAGS flags;
  kvp_hash hash;     /* the hash the mechanism computes itself */
  kvp_sig_scheme sig;
} mech_desc;

#define SV (CKF_SIGN | CKF_VERIFY)
#define EC_FLAGS (CKF_EC_F_P | CKF_EC_NAMEDCURVE | CKF_EC_UNCOMPRESS)

static const mech_desc mechs[] = {
    {CKM_RSA_PKCS, K_RSA, SV | CKF_ENCRYPT | CKF_DECRYPT, KVP_HASH_NONE, KVP_SIG_RSA_PKCS1},
    {CKM_SHA256_RSA_PKCS, K_RSA, SV, KVP_HASH_SHA256, KVP_SIG_RSA_PKCS1},
    {CKM_SHA384_RSA_PKCS, K_RSA, SV, KVP_HASH_SHA384, KVP_SIG_RSA_PKCS1},
    {CKM_SHA512_RSA_PKCS, K_RSA, SV, KVP_HASH_SHA512, KVP_SIG_RSA_PKCS1},
    {CKM_RSA_PKCS_PSS, K_RSA, SV, KVP_HASH_NONE, KVP_SIG_RSA_PSS},
    {CKM_SHA256_RSA_PKCS_PSS, K_RSA, SV, KVP_HASH_SHA256, KVP_SIG_RSA_PSS},
    {CKM_SHA384_RSA_PKCS_PSS, K_RSA, SV, KVP_HASH_SHA384, KVP_SIG_RSA_PSS},
    {CKM_SHA512_RSA_PKCS_PSS, K_RSA, SV, KVP_HASH_SHA512, KVP_SIG_RSA_PSS},
    {CKM_RSA_PKCS_OAEP, K_RSA, CKF_ENCRYPT | CKF_DECRYPT, KVP_HASH_NONE, 0},
    {CKM_ECDSA, K_EC, SV | EC_FLAGS, KVP_HASH_NONE, KVP_SIG_ECDSA},
    {CKM_ECDSA_SHA256, K_EC, SV | EC_FLAGS, KVP_HASH_SHA256, KVP_SIG_ECDSA},
    {CKM_ECDSA_SHA384, K_EC, SV | EC_FLAGS, KVP_HASH_SHA384, KVP_SIG_ECDSA},
    {CKM_ECDSA_SHA512, K_EC, SV | EC_FLAGS, KVP_HASH_SHA512, KVP_SIG_ECDSA},
    {CKM_SHA_1, K_NONE, CKF_DIGEST, KVP_HASH_SHA1, 0},
    {CKM_SHA224, K_NONE, CKF_DIGEST, KVP_HASH_SHA224, 0},
    {CKM_SHA256, K_NONE, CKF_DIGEST, KVP_HASH_SHA256, 0},
    {CKM_SHA384, K_NONE, CKF_DIGEST, KVP_HASH_SHA384, 0},
    {CKM_SHA512, K_NONE, CKF_DIGEST, KVP_HASH_SHA512, 0},
    /* key generation: only on tokens whose account names a default_store */
    {CKM_RSA_PKCS_KEY_PAIR_GEN, K_GEN, CKF_GENERATE_KEY_PAIR, KVP_HASH_NONE, 0},
    {CKM_EC_KEY_PAIR_GEN, K_GEN, CKF_GENERATE_KEY_PAIR | EC_FLAGS, KVP_HASH_NONE, 0},
};

static const mech_desc *find_mech(CK_MECHANISM_TYPE type)
{
  for (size_t i = 0; i < KVP_ARRAY_SIZE(mechs); i++)
    if (mechs[i].type == type)
      return &mechs[i];
  return NULL;
}

static int slot_offers(const kvp_slot *slot, const mech_desc *m)
{
  if (m->key == K_GEN)
    return slot->account != NULL && slot->account->default_store != NULL;
  return m->key == K_NONE || (m->key == K_RSA && slot->has_rsa) || (m->key == K_EC && slot->has_ec);
}

CK_RV kvp_mechanism_list(const kvp_slot *slot, CK_MECHANISM_TYPE_PTR list, CK_ULONG_PTR count)
{
  CK_ULONG n = 0;
  CK_RV rv = CKR_OK;

  for (size_t i = 0; i < KVP_ARRAY_SIZE(mechs); i++) {
    if (!slot_offers(slot, &mechs[i]))
      continue;
    if (list != NULL && n < *count)
      list[n] = mechs[i].type;
    else if (list != NULL)
      rv = CKR_BUFFER_TOO_SMALL;
    n++;
  }
  *count = n;
  return rv;
}

CK_RV kvp_mechanism_info(const kvp_slot *slot, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO_PTR info)
{
  const mech_desc *m = find_mech(type);

  if (m == NULL || !slot_offers(slot, m))
    return CKR_MECHANISM_INVALID;
  /* Sign and decrypt run in a key store (HSM or vault): CKF_HW, as clients
   * such as pkcs11-tool --test expect of a token's private-key mechanisms. */
  info->flags = m->flags | ((m->flags & (CKF_SIGN | CKF_DECRYPT)) ? CKF_HW : 0);
  if (m->type == CKM_RSA_PKCS_KEY_PAIR_GEN) {
    info->ulMinKeySize = 2048; /* what Key Vault and kvp11 create: 2048, 3072, 4096 */
    info->ulMaxKeySize = 4096;
    return CKR_OK;
  }
  if (m->type == CKM_EC_KEY_PAIR_GEN) {
    info->ulMinKeySize = 256;
    info->ulMaxKeySize = 521;
    return CKR_OK;
  }
  switch (m->key) {
  case K_RSA:
    info->ulMinKeySize = 1024;
    info->ulMaxKeySize = KVP_MAX_RSA_BYTES * 8;
    break;
  case K_EC:
    info->ulMinKeySize = 256;
    info->ulMaxKeySize = 521;
    break;
  default:
    info->ulMinKeySize = info->ulMaxKeySize = 0;
  }
  return CKR_OK;
}

/* ---- operations ------------------------------------------------------ */

void kvp_op_reset(kvp_op *op)
{
  if (op->md != NULL)
    EVP_MD_CTX_free(op->md);
  if (op->buf != NULL) {
    /* Only the first buf_len bytes were ever written (input or plaintext). */
    kvp_wipe(op->buf, op->buf_len);
    free(op->buf);
  }
  kvp_object_put(op->obj);
  free(op->found);
  memset(op, 0, sizeof(*op));
}

static CK_FLAGS kind_flag(kvp_op_kind kind)
{
  switch (kind) {
  case KVP_OP_SIGN: return CKF_SIGN;
  case KVP_OP_VERIFY: return CKF_VERIFY;
  case KVP_OP_ENCRYPT: return CKF_ENCRYPT;
  case KVP_OP_DECRYPT: return CKF_DECRYPT;
  case KVP_OP_DIGEST: return CKF_DIGEST;
  default: return 0;
  }
}

static int is_keyvault(const kvp_object *o)
{
  return o->backend != NULL && strcmp(o->backend->ops->scheme, "keyvault") == 0;
}

static CK_ULONG rsa_bytes(const kvp_object *o)
{
  return (o->bits + 7) / 8;
}

static CK_RV pss_params(const kvp_object *o, const mech_desc *m, CK_MECHANISM_PTR mech,
                        kvp_sig_alg *alg)
{
  const CK_RSA_PKCS_PSS_PARAMS *p = mech->pParameter;
  CK_ULONG hlen;

  if (p == NULL || mech->ulParameterLen != sizeof(*p))
    return CKR_MECHANISM_PARAM_INVALID;
  alg->hash = kvp_hash_from_ckm(p->hashAlg);
  alg->mgf1 = kvp_hash_from_mgf(p->mgf);
  alg->salt_len = p->sLen;
  hlen = kvp_hash_len(alg->hash);
  if (alg->hash == KVP_HASH_NONE || alg->mgf1 == KVP_HASH_NONE)
    return CKR_MECHANISM_PARAM_INVALID;
  if (m->hash != KVP_HASH_NONE && m->hash != alg->hash)
    return CKR_MECHANISM_PARAM_INVALID;
  if (p->sLen + hlen + 2 > rsa_bytes(o))
    return CKR_MECHANISM_PARAM_INVALID;
  /*
   * PS256/384/512 only: MGF1 with the same hash and salt = hash length. That
   * is all Key Vault signs, and kvp11 holds every key store to it so that a
   * certificate behaves the same wherever its key lives.
   */
  if (alg->mgf1 != alg->hash || p->sLen != hlen || alg->hash == KVP_HASH_SHA1 ||
      alg->hash == KVP_HASH_SHA224)
    return CKR_MECHANISM_PARAM_INVALID;
  return CKR_OK;
}

static CK_RV oaep_params(const kvp_object *o, CK_MECHANISM_PTR mech, kvp_op_kind kind,
                         kvp_dec_alg *alg)
{
  const CK_RSA_PKCS_OAEP_PARAMS *p = mech->pParameter;

  if (p == NULL || mech->ulParameterLen != sizeof(*p))
    return CKR_MECHANISM_PARAM_INVALID;
  alg->scheme = KVP_DEC_RSA_OAEP;
  alg->hash = kvp_hash_from_ckm(p->hashAlg);
  alg->mgf1 = kvp_hash_from_mgf(p->mgf);
  if (alg->hash == KVP_HASH_NONE || alg->mgf1 == KVP_HASH_NONE)
    return CKR_MECHANISM_PARAM_INVALID;
  /* A label (encoding parameter) is not supported by the key stores. */
  if (p->source != 0 && p->source != CKZ_DATA_SPECIFIED)
    return CKR_MECHANISM_PARAM_INVALID;
  if (p->ulSourceDataLen != 0)
    return CKR_MECHANISM_PARAM_INVALID;
  /* Key Vault decrypts RSA-OAEP (SHA-1) and RSA-OAEP-256 (SHA-256) only. */
  if (kind == KVP_OP_DECRYPT && is_keyvault(o) &&
      !((alg->hash == KVP_HASH_SHA1 && alg->mgf1 == KVP_HASH_SHA1) ||
        (alg->hash == KVP_HASH_SHA256 && alg->mgf1 == KVP_HASH_SHA256)))
    return CKR_MECHANISM_PARAM_INVALID;
  return CKR_OK;
}

static CK_RV check_key(const kvp_object *o, const mech_desc *m, kvp_op_kind kind)
{
  CK_OBJECT_CLASS want = (kind == KVP_OP_SIGN || kind == KVP_OP_DECRYPT) ? CKO_PRIVATE_KEY
                                                                        : CKO_PUBLIC_KEY;
  if (o->cls == CKO_CERTIFICATE)
    return CKR_KEY_HANDLE_INVALID;
  if ((m->key == K_RSA && o->key_type != KVP_KEY_RSA) ||
      (m->key == K_EC && o->key_type != KVP_KEY_EC))
    return CKR_KEY_TYPE_INCONSISTENT;
  if (o->cls != want)
    return CKR_KEY_FUNCTION_NOT_PERMITTED;
  /* the object's own usage flag: a retired certificate's key has CKA_SIGN false */
  CK_ATTRIBUTE_TYPE use = kind == KVP_OP_SIGN      ? CKA_SIGN
                          : kind == KVP_OP_DECRYPT ? CKA_DECRYPT
                          : kind == KVP_OP_VERIFY  ? CKA_VERIFY
                                                   : CKA_ENCRYPT;
  const kvp_attr *a = kvp_object_attr(o, use);
  if (a != NULL && a->len == sizeof(CK_BBOOL) && *(const CK_BBOOL *)a->value == CK_FALSE)
    return kvp_fail_at(KVP_LOG_WARN, CKR_KEY_FUNCTION_NOT_PERMITTED,
                       "'%s': the key's %s is false%s", o->label, kvp_cka_name(use),
                       use == CKA_SIGN ? " (a retired certificate decrypts only)" : "");
  return CKR_OK;
}

static kvp_op *op_of(kvp_session *s)
{
  return &s->op;
}

CK_RV kvp_op_init(kvp_session *s, kvp_op_kind kind, CK_MECHANISM_PTR mech, CK_OBJECT_HANDLE key)
{
  kvp_op *op = op_of(s);
  const mech_desc *m;
  kvp_object *o = NULL;
  CK_RV rv;

  if (op->kind != KVP_OP_NONE)
    return CKR_OPERATION_ACTIVE;
  if (mech == NULL)
    return CKR_ARGUMENTS_BAD;
  m = find_mech(mech->mechanism);
  if (m == NULL || !(m->flags & kind_flag(kind)))
    return CKR_MECHANISM_INVALID;

  memset(op, 0, sizeof(*op));
  op->mech = m->type;
  if (kind != KVP_OP_DIGEST) {
    rv = kvp_object_get(s, key, &o);
    if (rv != CKR_OK)
      return CKR_KEY_HANDLE_INVALID;
    op->obj = o;
    if ((rv = check_key(o, m, kind)) != CKR_OK)
      goto fail;
  }

  if (kind == KVP_OP_SIGN || kind == KVP_OP_VERIFY) {
    op->sig.scheme = m->sig;
    op->sig.hash = m->hash;
    if (m->sig == KVP_SIG_RSA_PSS && (rv = pss_params(o, m, mech, &op->sig)) != CKR_OK)
      goto fail;
  } else if (kind == KVP_OP_ENCRYPT || kind == KVP_OP_DECRYPT) {
    op->dec.scheme = KVP_DEC_RSA_PKCS1;
    if (m->type == CKM_RSA_PKCS_OAEP && (rv = oaep_params(o, mech, kind, &op->dec)) != CKR_OK)
      goto fail;
  }

  if (kind == KVP_OP_SIGN || kind == KVP_OP_DECRYPT) {
    kvp_key *k = NULL;
    if ((rv = kvp_object_key(o, &k)) != CKR_OK)
      goto fail;
    if ((kind == KVP_OP_SIGN && !k->can_sign) || (kind == KVP_OP_DECRYPT && !k->can_decrypt)) {
      KVP_WARN("certificate '%s': the key store does not allow %s with key '%s'", o->label,
               kind == KVP_OP_SIGN ? "sign" : "decrypt", o->key_ref);
      rv = CKR_KEY_FUNCTION_NOT_PERMITTED;
      goto fail;
    }
  }

  /* Mechanisms that hash the data themselves hash it here, locally. */
  op->hashing = m->hash != KVP_HASH_NONE && (kind == KVP_OP_DIGEST || m->sig != 0);
  if (op->hashing) {
    op->md = EVP_MD_CTX_new();
    if (op->md == NULL || !EVP_DigestInit_ex(op->md, kvp_hash_md(m->hash), NULL)) {
      rv = CKR_HOST_MEMORY;
      goto fail;
    }
  }
  op->kind = kind;
  return CKR_OK;
fail:
  kvp_op_reset(op);
  return rv;
}

static CK_RV op_active(kvp_session *s, kvp_op_kind kind)
{
  return op_of(s)->kind == kind ? CKR_OK : CKR_OPERATION_NOT_INITIALIZED;
}

/*
 * Single-part and multi-part steps do not mix (PKCS#11 2.40 5.8-5.12): a
 * single-part call (C_Sign, C_Digest, ...) must follow C_xInit without an
 * intervening C_xUpdate, and cannot finish a multi-part operation; C_xFinal
 * cannot finish an operation a single-part call began with a size query.
 * op->updated records which kind began: OP_MULTI after an Update or a Final
 * that kept the operation (size query, short buffer), OP_SINGLE after a
 * single-part call that kept it. The other kind then gets
 * CKR_OPERATION_ACTIVE, and like every failed single-part or final call
 * (other than CKR_BUFFER_TOO_SMALL) that ends the operation: its data
 * never reaches a signature.
 */
enum { OP_FRESH = 0, OP_MULTI = 1, OP_SINGLE = 2 };

static CK_RV op_mixed(kvp_op *op, int final)
{
  if (op->updated == (final ? OP_SINGLE : OP_MULTI)) {
    (void)kvp_fail_at(KVP_LOG_DEBUG, CKR_OPERATION_ACTIVE,
                      final ? "a final call after a single-part call of the same operation"
                            : "a single-part call after an update of the same operation");
    kvp_op_reset(op);
    return CKR_OPERATION_ACTIVE;
  }
  return CKR_OK;
}

/*
 * What every output step (C_Sign, C_SignFinal, C_Verify, ...) checks first: an
 * operation of this kind is active, not mixed (op_mixed), and the result
 * pointer and the input were given. A missing one is CKR_ARGUMENTS_BAD and
 * ends the operation.
 */
static CK_RV op_step(kvp_session *s, kvp_op_kind kind, int final, const void *result,
                     CK_BYTE_PTR data, CK_ULONG len)
{
  CK_RV rv = op_active(s, kind);
  if (rv != CKR_OK || (rv = op_mixed(op_of(s), final)) != CKR_OK)
    return rv;
  if (result == NULL || (!final && data == NULL && len != 0)) {
    kvp_op_reset(op_of(s));
    return CKR_ARGUMENTS_BAD;
  }
  return CKR_OK;
}

/* The operation stays active after this call (size query, short buffer). */
static void op_kept(kvp_op *op, int final)
{
  if (op->updated == OP_FRESH)
    op->updated = final ? OP_MULTI : OP_SINGLE;
}

/* Append input: hash it, or keep it for the final step. */
static CK_RV op_absorb(kvp_op *op, const CK_BYTE *data, CK_ULONG len)
{
  if (len == 0)
    return CKR_OK;
  if (data == NULL)
    return CKR_ARGUMENTS_BAD;
  if (op->hashing)
    return EVP_DigestUpdate(op->md, data, len) ? CKR_OK : CKR_GENERAL_ERROR;
  if (op->buf_len + len > KVP_MAX_RAW_INPUT)
    return CKR_DATA_LEN_RANGE;
  if (op->buf == NULL && (op->buf = malloc(KVP_MAX_RAW_INPUT)) == NULL)
    return CKR_HOST_MEMORY;
  memcpy(op->buf + op->buf_len, data, len);
  op->buf_len += len;
  return CKR_OK;
}

CK_RV kvp_op_update(kvp_session *s, kvp_op_kind kind, CK_BYTE_PTR data, CK_ULONG len)
{
  kvp_op *op = op_of(s);
  CK_RV rv = op_active(s, kind);

  if (rv != CKR_OK)
    return rv;
  op->updated = OP_MULTI; /* after a single-part size query: the operation turns multi-part */
  rv = op_absorb(op, data, len);
  if (rv != CKR_OK)
    kvp_op_reset(op);
  return rv;
}

/* Output size of the current operation (an upper bound for decrypt). */
static CK_ULONG op_out_len(const kvp_op *op)
{
  const kvp_object *o = op->obj;
  switch (op->kind) {
  case KVP_OP_DIGEST: return (CK_ULONG)EVP_MD_CTX_get_size(op->md);
  case KVP_OP_SIGN:
    return o->key_type == KVP_KEY_EC ? 2 * kvp_ec_field_len(o->bits) : rsa_bytes(o);
  case KVP_OP_DECRYPT:
    return op->have_result ? op->buf_len : rsa_bytes(o);
  case KVP_OP_ENCRYPT: return rsa_bytes(o);
  default: return 0;
  }
}

/*
 * The input a signature covers, as the backend wants it: a bare digest with
 * its hash, or (raw CKM_RSA_PKCS) the data itself with hash NONE.
 */
static CK_RV sig_input(kvp_op *op, kvp_sig_alg *alg, CK_BYTE *digest, CK_ULONG *digest_len)
{
  const kvp_object *o = op->obj;
  unsigned int mdlen = 0;
  *alg = op->sig;

  if (op->hashing) {
    if (!EVP_DigestFinal_ex(op->md, digest, &mdlen))
      return CKR_GENERAL_ERROR;
    *digest_len = mdlen;
  } else {
    if (op->buf_len > KVP_MAX_RAW_INPUT)
      return CKR_DATA_LEN_RANGE;
    if (op->buf_len)
      memcpy(digest, op->buf, op->buf_len);
    *digest_len = op->buf_len;
  }

  switch (alg->scheme) {
  case KVP_SIG_RSA_PKCS1:
    if (!op->hashing) {
      const CK_BYTE *d;
      kvp_hash h;
      if (*digest_len + 11 > rsa_bytes(o))
        return CKR_DATA_LEN_RANGE;
      if (kvp_digestinfo_parse(digest, *digest_len, &h, &d) == 0) {
        if (is_keyvault(o) && (h == KVP_HASH_SHA1 || h == KVP_HASH_SHA224)) {
          KVP_WARN("certificate '%s': CKM_RSA_PKCS input is a %s DigestInfo; Key Vault signs "
                   "SHA-256/384/512 only",
                   o->label, kvp_hash_name(h));
          return CKR_DATA_INVALID;
        }
        alg->hash = h;
        memmove(digest, d, kvp_hash_len(h));
        *digest_len = kvp_hash_len(h);
      } else if (is_keyvault(o)) {
        KVP_WARN("certificate '%s': CKM_RSA_PKCS input is not a SHA-256/384/512 DigestInfo; "
                 "Key Vault signs only those",
                 o->label);
        return CKR_DATA_INVALID;
      }
    }
    return CKR_OK;
  case KVP_SIG_RSA_PSS:
    return *digest_len == kvp_hash_len(alg->hash) ? CKR_OK : CKR_DATA_LEN_RANGE;
  case KVP_SIG_ECDSA: {
    CK_BYTE fitted[64];
    CK_ULONG flen = 0;
    CK_RV rv = kvp_ecdsa_fit_digest(o->curve_nid, digest, *digest_len, fitted, &flen);
    if (rv != CKR_OK)
      return rv;
    memcpy(digest, fitted, flen);
    *digest_len = flen;
    return CKR_OK;
  }
  }
  return CKR_MECHANISM_INVALID;
}

static CK_RV do_sign(kvp_op *op, CK_BYTE_PTR out, CK_ULONG_PTR out_len)
{
  CK_BYTE input[KVP_MAX_RAW_INPUT];
  CK_ULONG input_len = 0;
  kvp_sig_alg alg;
  kvp_key *key = NULL;
  CK_RV rv = sig_input(op, &alg, input, &input_len);

  if (rv != CKR_OK)
    return rv;
  if ((rv = kvp_object_key(op->obj, &key)) != CKR_OK)
    return rv;
  uint64_t t0 = kvp_audit_start();
  rv = kvp_backend_sign(key, &alg, input, input_len, out, out_len);
  if (t0 != 0) /* auditing on: nothing else of the record is built otherwise */
    kvp_audit_key_op(KVP_AUDIT_SIGN, kvp_slot_locked(op->obj->slot)->account->name, op->obj->label,
                     op->obj->key_ref, key->version, op->mech, rv, t0);
  /* the input buffer held at most the raw input (buf_len) or a digest */
  kvp_wipe(input, op->buf_len > input_len ? op->buf_len : input_len);
  return rv;
}

static CK_RV do_decrypt(kvp_op *op, const CK_BYTE *in, CK_ULONG in_len)
{
  kvp_key *key = NULL;
  CK_ULONG k = rsa_bytes(op->obj);
  CK_RV rv;

  if (in_len != k)
    return CKR_ENCRYPTED_DATA_LEN_RANGE;
  if ((rv = kvp_object_key(op->obj, &key)) != CKR_OK)
    return rv;
  if (op->buf == NULL && (op->buf = malloc(KVP_MAX_RAW_INPUT)) == NULL)
    return CKR_HOST_MEMORY;
  op->buf_len = k;
  uint64_t t0 = kvp_audit_start();
  rv = kvp_backend_decrypt(key, &op->dec, in, in_len, op->buf, &op->buf_len);
  if (t0 != 0) /* auditing on: nothing else of the record is built otherwise */
    kvp_audit_key_op(KVP_AUDIT_DECRYPT, kvp_slot_locked(op->obj->slot)->account->name, op->obj->label,
                     op->obj->key_ref, key->version, op->mech, rv, t0);
  if (rv == CKR_OK)
    op->have_result = 1;
  return rv;
}

static CK_RV set_rsa_padding(EVP_PKEY_CTX *ctx, const kvp_op *op)
{
  if (op->kind == KVP_OP_ENCRYPT) {
    if (op->dec.scheme == KVP_DEC_RSA_PKCS1)
      return EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) > 0 ? CKR_OK : CKR_GENERAL_ERROR;
    if (EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING) <= 0 ||
        EVP_PKEY_CTX_set_rsa_oaep_md(ctx, kvp_hash_md(op->dec.hash)) <= 0 ||
        EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, kvp_hash_md(op->dec.mgf1)) <= 0)
      return CKR_GENERAL_ERROR;
    return CKR_OK;
  }
  return CKR_GENERAL_ERROR;
}

static CK_RV do_encrypt(kvp_op *op, const CK_BYTE *in, CK_ULONG in_len, CK_BYTE_PTR out,
                        CK_ULONG_PTR out_len)
{
  EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, op->obj->pub, NULL);
  CK_ULONG k = rsa_bytes(op->obj);
  CK_ULONG max_in = op->dec.scheme == KVP_DEC_RSA_PKCS1
                        ? k - 11
                        : k - 2 * (CK_ULONG)kvp_hash_len(op->dec.hash) - 2;
  size_t olen = *out_len;
  CK_RV rv = CKR_GENERAL_ERROR;

  if (ctx == NULL)
    return CKR_HOST_MEMORY;
  if (in_len > max_in || k < 2 * kvp_hash_len(op->dec.hash) + 2) {
    rv = CKR_DATA_LEN_RANGE;
    goto out;
  }
  if (EVP_PKEY_encrypt_init(ctx) <= 0 || (rv = set_rsa_padding(ctx, op)) != CKR_OK)
    goto out;
  rv = CKR_GENERAL_ERROR;
  if (EVP_PKEY_encrypt(ctx, out, &olen, in, in_len) <= 0)
    goto out;
  *out_len = (CK_ULONG)olen;
  rv = CKR_OK;
out:
  EVP_PKEY_CTX_free(ctx);
  return rv;
}

CK_RV kvp_op_output(kvp_session *s, kvp_op_kind kind, int final, CK_BYTE_PTR data, CK_ULONG len,
                    CK_BYTE_PTR out, CK_ULONG_PTR out_len)
{
  kvp_op *op = op_of(s);
  CK_ULONG need;
  CK_RV rv = op_step(s, kind, final, out_len, data, len);

  if (rv != CKR_OK)
    return rv;
  need = op_out_len(op);
  if (out == NULL) {
    *out_len = need;
    op_kept(op, final);
    return CKR_OK; /* size query: the operation stays active */
  }
  if (kind == KVP_OP_DECRYPT) {
    if (!op->have_result) {
      if (final) {
        /* The input was kept by C_DecryptUpdate; the result replaces it. */
        CK_BYTE in[KVP_MAX_RAW_INPUT];
        CK_ULONG in_len = op->buf_len;
        memcpy(in, op->buf, in_len);
        rv = do_decrypt(op, in, in_len);
        kvp_wipe(in, in_len);
      } else {
        rv = do_decrypt(op, data, len);
      }
      if (rv != CKR_OK)
        goto done;
    }
    if (*out_len < op->buf_len) {
      *out_len = op->buf_len;
      op_kept(op, final);
      return CKR_BUFFER_TOO_SMALL;
    }
    memcpy(out, op->buf, op->buf_len);
    *out_len = op->buf_len;
    rv = CKR_OK;
    goto done;
  }
  if (*out_len < need) {
    *out_len = need;
    op_kept(op, final);
    return CKR_BUFFER_TOO_SMALL;
  }
  if (!final && (rv = op_absorb(op, data, len)) != CKR_OK)
    goto done;
  switch (kind) {
  case KVP_OP_SIGN:
    *out_len = need;
    rv = do_sign(op, out, out_len);
    break;
  case KVP_OP_ENCRYPT:
    rv = do_encrypt(op, op->buf, op->buf_len, out, out_len);
    break;
  case KVP_OP_DIGEST: {
    unsigned int mdlen = 0;
    rv = EVP_DigestFinal_ex(op->md, out, &mdlen) ? CKR_OK : CKR_GENERAL_ERROR;
    *out_len = mdlen;
    break;
  }
  default:
    rv = CKR_OPERATION_NOT_INITIALIZED;
  }
done:
  kvp_op_reset(op);
  return rv;
}

/* The one signature check (backend.c), as C_Verify answers it. */
static CK_RV verify_sig(const kvp_op *op, const kvp_sig_alg *alg, const CK_BYTE *digest,
                        CK_ULONG digest_len, const CK_BYTE *sig, CK_ULONG sig_len)
{
  return kvp_sig_verify(op->obj->pub, alg, digest, digest_len, sig, sig_len)
             ? CKR_OK
             : CKR_SIGNATURE_INVALID;
}

CK_RV kvp_op_verify(kvp_session *s, int final, CK_BYTE_PTR data, CK_ULONG len, CK_BYTE_PTR sig,
                    CK_ULONG sig_len)
{
  kvp_op *op = op_of(s);
  CK_BYTE input[KVP_MAX_RAW_INPUT];
  CK_ULONG input_len = 0, want;
  kvp_sig_alg alg;
  CK_RV rv = op_step(s, KVP_OP_VERIFY, final, sig, data, len);

  if (rv != CKR_OK)
    return rv;
  if (!final && (rv = op_absorb(op, data, len)) != CKR_OK)
    goto done;
  want = op->obj->key_type == KVP_KEY_EC ? 2 * kvp_ec_field_len(op->obj->bits)
                                         : rsa_bytes(op->obj);
  if (sig_len != want) {
    rv = CKR_SIGNATURE_LEN_RANGE;
    goto done;
  }
  if (op->sig.scheme == KVP_SIG_RSA_PKCS1 && !op->hashing) {
    /* Raw CKM_RSA_PKCS: the signature covers the data (a DigestInfo) as it is. */
    alg = op->sig;
    rv = op->buf_len + 11 > rsa_bytes(op->obj)
             ? CKR_DATA_LEN_RANGE
             : verify_sig(op, &alg, op->buf ? op->buf : input, op->buf_len, sig, sig_len);
    goto done;
  }
  /* Otherwise verification works on the same digest the signer saw. */
  if ((rv = sig_input(op, &alg, input, &input_len)) != CKR_OK)
    goto done;
  rv = verify_sig(op, &alg, input, input_len, sig, sig_len);
done:
  kvp_op_reset(op);
  return rv;
}
