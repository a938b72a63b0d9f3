/*
 * Mechanism helpers of the HSM backend: OAEP decoding for HSMs that refuse an OAEP hash at C_DecryptInit
 * (SoftHSM2 2.6.1 knows SHA-1 only): the HSM then decrypts with
 * CKM_RSA_X_509 and the OAEP encoding is checked here, in constant time.
 * Hashes come from the shared kvp_hash_md (backend.c).
 */
#include <stdint.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/x509.h>

#include "backend/hsm/hsm_internal.h"
#include "core/log.h"
#include "core/p11names.h"
#include "core/status.h"
#include "core/util.h"

#define KVP_HSM_MAX_RSA_BYTES 1024 /* RSA-8192 */

/* out[0..len) ^= MGF1(seed, len) (RFC 8017 B.2.1). */
static int mgf1_xor(unsigned char *out, size_t len, const unsigned char *seed, size_t seed_len,
                    const EVP_MD *md)
{
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
static unsigned ct_is_zero(unsigned x)
{
  return 0u - (((x | (0u - x)) >> 31) ^ 1u);
}
static unsigned ct_eq(unsigned a, unsigned b)
{
  return ct_is_zero(a ^ b);
}

/*
 * EME-OAEP decoding (RFC 8017 7.1.2 step 3) of em (k bytes), empty label.
 * Every check runs in time independent of the data; one failure code.
 */
static CK_RV oaep_decode(unsigned char *em, size_t k, const EVP_MD *md, const EVP_MD *mgf,
                         CK_BYTE *out, CK_ULONG *out_len)
{
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

CK_RV kvp_hsm_decrypt_oaep_local(kvp_hsm_backend *be, kvp_hsm_key *k, const kvp_dec_alg *alg,
                                 const CK_BYTE *in, CK_ULONG in_len, CK_BYTE *out,
                                 CK_ULONG *out_len)
{
  unsigned char em[KVP_HSM_MAX_RSA_BYTES];
  CK_MECHANISM raw = {CKM_RSA_X_509, NULL, 0};
  CK_ULONG em_len = sizeof(em);
  size_t kb = k->out_len;
  const EVP_MD *md = kvp_hash_md(alg->hash), *mgf = kvp_hash_md(alg->mgf1);
  CK_RV rv;
  if (kb > sizeof(em) || md == NULL || mgf == NULL)
    return CKR_MECHANISM_PARAM_INVALID;
  em_len = kb;
  rv = kvp_hsm_run_op(be, k, KVP_HSM_OP_DECRYPT, &raw, in, in_len, em, &em_len, 0);
  if (rv != CKR_OK)
    goto out;
  if (em_len > kb) {
    rv = kvp_fail(CKR_DEVICE_ERROR, "hsm %s: CKM_RSA_X_509 (key '%s') returned %lu bytes",
                  be->base.name, kvp_hsm_key_desc(k), (unsigned long)em_len);
    goto out;
  }
  if (em_len < kb) { /* some HSMs strip leading zero bytes */
    memmove(em + (kb - em_len), em, em_len);
    memset(em, 0, kb - em_len);
  }
  ERR_set_mark();
  rv = oaep_decode(em, kb, md, mgf, out, out_len);
  ERR_pop_to_mark();
  if (rv != CKR_OK)
    rv = kvp_fail(rv, "hsm %s: OAEP decoding (key '%s', %s): %s", be->base.name,
                  kvp_hsm_key_desc(k), kvp_hash_name(alg->hash), kvp_ckr_name(rv));
out:
  kvp_wipe(em, sizeof(em));
  return rv;
}
