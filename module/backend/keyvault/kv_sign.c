/*
 * Sign and decrypt: one POST each, addressed by the versioned kid, after
 * the key's live state allows it (kv_keys.c); every signature is checked
 * locally with the key's prepared verifier (kv_verify.c) before it is
 * returned.
 */
#include "backend/keyvault/kv.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/obj_mac.h>

#include "core/log.h"
#include "core/status.h"
#include "core/util.h"

/* POST /keys/NAME/VERSION/OP with {"alg","value"}; returns the decoded value. */
static CK_RV kv_key_op(kv_backend *b, kvp_key *key, kv_call_kind kind, const char *op,
                       const char *alg, const unsigned char *in, size_t in_len,
                       unsigned char **out, size_t *out_len)
{
  kv_cached_key *im = key->impl;
  unsigned kop = kind == KV_CALL_SIGN ? KV_OP_SIGN : KV_OP_DECRYPT;
  kv_resp resp;
  json_t *req = NULL, *val;
  char *b64 = NULL, *body = NULL, *url = NULL;
  size_t len;
  CK_RV rv = CKR_HOST_MEMORY;

  *out = NULL;
  *out_len = 0;
  memset(&resp, 0, sizeof(resp));
  kv_resp_clear(&resp, 0);
  rv = kv_state_gate(b, key, kop);
  if (rv != CKR_OK)
    return rv;
  rv = CKR_HOST_MEMORY;
  b64 = kv_b64url_encode(in, in_len);
  if (b64 == NULL)
    goto out;
  req = json_pack("{s:s, s:s}", "alg", alg, "value", b64);
  if (req == NULL)
    goto out;
  body = json_dumps(req, JSON_COMPACT);
  if (body == NULL)
    goto out;
  len = strlen(b->base_url) + strlen(im->name) + strlen(key->version) + strlen(op) +
        strlen(b->conf.api_version) + 32;
  url = malloc(len);
  if (url == NULL)
    goto out;
  snprintf(url, len, "%s/keys/%s/%s/%s?api-version=%s", b->base_url, im->name, key->version, op,
           b->conf.api_version);
  rv = kv_call(b, kind, key->name, "POST", url, body, &resp);
  kv_state_after(b, key, kop, rv, &resp);
  if (rv != CKR_OK) {
    if (rv == CKR_KEY_HANDLE_INVALID)
      kv_cache_drop(b, im->name);
    goto out;
  }
  val = json_object_get(resp.json, "value");
  if (!json_is_string(val) ||
      kv_b64url_decode(json_string_value(val), out, out_len) != 0) {
    rv = kvp_fail(CKR_DEVICE_ERROR,
                  "vault %s: key %s: %s: the answer has no base64url value (x-ms-request-id %s)",
                  b->conf.name, key->name, op, resp.request_id);
    goto out;
  }
  /* the value may be a plaintext: wipe it in the parsed document too */
  kvp_wipe((char *)json_string_value(val), json_string_length(val));
  rv = CKR_OK;
out:
  kv_resp_clear(&resp, 1);
  json_decref(req);
  kv_free_wipe(body);
  kv_free_wipe(b64);
  free(url);
  return rv;
}

/* ---- Key Vault's algorithms ------------------------------------------
 * Every JWA algorithm Key Vault signs or decrypts with (keyvault-protocol.md)
 * besides RSA1_5: the RSA ones by hash (PSS and OAEP with MGF1 of the same
 * hash), ECDSA by the key's curve with the digest size it expects. */
enum { KV_PKCS1, KV_PSS, KV_OAEP };

static const struct kv_rsa_jwa {
  kvp_hash hash;
  const char *name[3]; /* [KV_PKCS1], [KV_PSS], [KV_OAEP]; NULL: none */
} kv_rsa_jwas[] = {
    {KVP_HASH_SHA1, {NULL, NULL, "RSA-OAEP"}},
    {KVP_HASH_SHA256, {"RS256", "PS256", "RSA-OAEP-256"}},
    {KVP_HASH_SHA384, {"RS384", "PS384", NULL}},
    {KVP_HASH_SHA512, {"RS512", "PS512", NULL}},
};

static const struct kv_ec_jwa {
  int curve_nid;
  const char *name;
  kvp_hash hash;
} kv_ec_jwas[] = {
    {NID_X9_62_prime256v1, "ES256", KVP_HASH_SHA256},
    {NID_secp384r1, "ES384", KVP_HASH_SHA384},
    {NID_secp521r1, "ES512", KVP_HASH_SHA512},
    {NID_secp256k1, "ES256K", KVP_HASH_SHA256},
};

/* The RSA algorithm of kind (KV_PKCS1 / KV_PSS / KV_OAEP) with hash and mgf1, or NULL. */
static const char *kv_rsa_jwa(int kind, kvp_hash hash, kvp_hash mgf1)
{
  if (kind != KV_PKCS1 && mgf1 != hash)
    return NULL;
  for (size_t i = 0; i < KVP_ARRAY_SIZE(kv_rsa_jwas); i++)
    if (kv_rsa_jwas[i].hash == hash)
      return kv_rsa_jwas[i].name[kind];
  return NULL;
}

/* Key Vault's algorithm for alg on key, and the digest length it signs. */
static CK_RV kv_sign_jwa(const kv_backend *b, const kvp_key *key, const kvp_sig_alg *alg,
                         const char **jalg, size_t *digest_len)
{
  int pss = alg->scheme == KVP_SIG_RSA_PSS;

  if ((key->type == KVP_KEY_EC) != (alg->scheme == KVP_SIG_ECDSA))
    return CKR_KEY_TYPE_INCONSISTENT;
  if (key->type == KVP_KEY_EC) {
    for (size_t i = 0; i < KVP_ARRAY_SIZE(kv_ec_jwas); i++) {
      if (kv_ec_jwas[i].curve_nid == key->curve_nid) {
        *jalg = kv_ec_jwas[i].name;
        *digest_len = kvp_hash_len(kv_ec_jwas[i].hash);
        return CKR_OK;
      }
    }
    return CKR_KEY_TYPE_INCONSISTENT; /* a curve Key Vault does not have */
  }
  if (alg->scheme == KVP_SIG_RSA_PKCS1 && alg->hash == KVP_HASH_NONE) {
    return kvp_fail(CKR_DATA_INVALID,
                    "vault %s: key %s: Key Vault signs only SHA-256/384/512 digests "
                    "(raw CKM_RSA_PKCS input is not a supported DigestInfo)",
                    b->conf.name, key->name);
  }
  *jalg = kv_rsa_jwa(pss ? KV_PSS : KV_PKCS1, alg->hash, alg->mgf1);
  *digest_len = kvp_hash_len(alg->hash);
  if (*jalg == NULL || (pss && alg->salt_len != *digest_len)) {
    return kvp_fail(pss ? CKR_MECHANISM_PARAM_INVALID : CKR_MECHANISM_INVALID,
                    "vault %s: key %s: Key Vault has no %s signature with %s (it takes "
                    "SHA-256/384/512%s)",
                    b->conf.name, key->name, pss ? "PSS" : "PKCS#1 v1.5",
                    kvp_hash_name(alg->hash),
                    pss ? " with MGF1 of the same hash and a salt as long as the hash" : "");
  }
  return CKR_OK;
}

CK_RV kv_sign(kvp_backend *be, kvp_key *key, const kvp_sig_alg *alg, const CK_BYTE *digest,
              CK_ULONG digest_len, CK_BYTE *sig, CK_ULONG *sig_len)
{
  kv_backend *b = (kv_backend *)be;
  const char *jalg = NULL;
  unsigned char adj[66], *res = NULL;
  const unsigned char *d = digest;
  size_t dlen = digest_len, want = 0, want_sig, res_len = 0;
  CK_RV rv = kv_sign_jwa(b, key, alg, &jalg, &want);

  if (rv != CKR_OK)
    return rv;
  if (key->type == KVP_KEY_RSA) {
    if (digest_len != want)
      return CKR_DATA_LEN_RANGE;
    want_sig = (key->bits + 7) / 8;
  } else {
    want_sig = 2 * (size_t)((key->bits + 7) / 8);
    if (digest_len == 0)
      return CKR_DATA_LEN_RANGE;
    /* ECDSA uses the leftmost bits of the digest: a longer digest keeps its
     * leftmost bytes, a shorter one is left-padded; same signature either way. */
    if (dlen > want) {
      dlen = want;
    } else if (dlen < want) {
      memset(adj, 0, sizeof(adj));
      memcpy(adj + (want - dlen), digest, dlen);
      d = adj;
      dlen = want;
    }
  }
  rv = kv_key_op(b, key, KV_CALL_SIGN, "sign", jalg, d, dlen, &res, &res_len);
  if (rv != CKR_OK)
    return rv;
  if (res_len != want_sig) {
    rv = kvp_fail(CKR_DEVICE_ERROR,
                  "vault %s: key %s: %s returned %zu signature bytes, expected %zu", b->conf.name,
                  key->name, jalg, res_len, want_sig);
    goto out;
  }
  if (!kv_verifier_check(((kv_cached_key *)key->impl)->verifier, alg, d, dlen, res,
                         res_len)) {
    rv = kvp_fail(CKR_DEVICE_ERROR,
                  "vault %s: key %s: the %s signature returned by Key Vault does not verify with "
                  "the key's public key",
                  b->conf.name, key->name, jalg);
    goto out;
  }
  memcpy(sig, res, res_len);
  *sig_len = (CK_ULONG)res_len;
  rv = CKR_OK;
out:
  free(res);
  return rv;
}

CK_RV kv_decrypt(kvp_backend *be, kvp_key *key, const kvp_dec_alg *alg, const CK_BYTE *in,
                 CK_ULONG in_len, CK_BYTE *out, CK_ULONG *out_len)
{
  kv_backend *b = (kv_backend *)be;
  const char *jalg;
  unsigned char *res = NULL;
  size_t res_len = 0, k;
  CK_RV rv;

  if (key->type != KVP_KEY_RSA)
    return CKR_KEY_TYPE_INCONSISTENT;
  jalg = alg->scheme == KVP_DEC_RSA_PKCS1 ? "RSA1_5"
         : alg->scheme == KVP_DEC_RSA_OAEP ? kv_rsa_jwa(KV_OAEP, alg->hash, alg->mgf1)
                                           : NULL;
  if (jalg == NULL && alg->scheme == KVP_DEC_RSA_OAEP) {
    return kvp_fail(CKR_MECHANISM_PARAM_INVALID,
                    "vault %s: key %s: Key Vault has no OAEP with %s and MGF1-%s (it takes "
                    "SHA-1/MGF1-SHA-1 and SHA-256/MGF1-SHA-256)",
                    b->conf.name, key->name, kvp_hash_name(alg->hash), kvp_hash_name(alg->mgf1));
  }
  if (jalg == NULL)
    return CKR_MECHANISM_INVALID;
  k = (key->bits + 7) / 8;
  if (in_len != k)
    return CKR_ENCRYPTED_DATA_LEN_RANGE;
  rv = kv_key_op(b, key, KV_CALL_DECRYPT, "decrypt", jalg, in, in_len, &res, &res_len);
  if (rv != CKR_OK)
    return rv;
  if (res_len > k) {
    rv = kvp_fail(CKR_DEVICE_ERROR,
                  "vault %s: key %s: decrypt returned %zu bytes for a %zu-byte key", b->conf.name,
                  key->name, res_len, k);
    goto out;
  }
  if (res_len > 0)
    memcpy(out, res, res_len);
  *out_len = (CK_ULONG)res_len;
  rv = CKR_OK;
out:
  if (res != NULL) {
    kvp_wipe(res, res_len);
    free(res);
  }
  return rv;
}
