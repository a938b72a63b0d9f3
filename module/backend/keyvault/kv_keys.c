/*
 * Keys: open (GET /keys/NAME[/VERSION], cached with a TTL), sign and decrypt
 * (one POST each, addressed by the versioned kid), and the local check of
 * every signature Key Vault returns.
 */
#include "backend/keyvault/kv.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/rsa.h>

#include "core/log.h"
#include "core/util.h"

typedef struct kv_key_impl {
  char *name;    /* key name without version */
  unsigned ops;  /* KV_OP_* */
  int enabled;
  int64_t nbf, exp;
} kv_key_impl;

/* "KEY" or "KEY/VERSION": names 1..127 of [0-9a-zA-Z-], versions alnum. */
static int kv_ref_parse(const char *ref, char **name, char **version)
{
  const char *slash = strchr(ref, '/');
  size_t nl = slash != NULL ? (size_t)(slash - ref) : strlen(ref), i;
  *name = NULL;
  *version = NULL;
  if (nl == 0 || nl > 127)
    return -1;
  for (i = 0; i < nl; i++)
    if (!isalnum((unsigned char)ref[i]) && ref[i] != '-')
      return -1;
  if (slash != NULL) {
    const char *v = slash + 1;
    if (v[0] == '\0' || strlen(v) > 64)
      return -1;
    for (i = 0; v[i] != '\0'; i++)
      if (!isalnum((unsigned char)v[i]))
        return -1;
    *version = strdup(v);
    if (*version == NULL)
      return -1;
  }
  *name = strndup(ref, nl);
  if (*name == NULL) {
    free(*version);
    *version = NULL;
    return -1;
  }
  return 0;
}

static int kv_key_usable_now(const kv_key_impl *ki, int64_t now)
{
  return ki->enabled && (ki->nbf == 0 || now >= ki->nbf) && (ki->exp == 0 || now < ki->exp);
}

void kv_cache_drop(kv_backend *b, const char *name)
{
  kv_cached_key **pp, *c;
  pthread_mutex_lock(&b->lock);
  pp = &b->keys;
  while ((c = *pp) != NULL) {
    if (c->info.name != NULL && strcasecmp(c->info.name, name) == 0) {
      *pp = c->next;
      kv_key_info_clear(&c->info);
      free(c->ref);
      free(c);
    } else {
      pp = &c->next;
    }
  }
  pthread_mutex_unlock(&b->lock);
}

void kv_key_cache_free(kv_backend *b, int forked)
{
  kv_cached_key *c, *n;
  (void)forked;
  for (c = b->keys; c != NULL; c = n) {
    n = c->next;
    kv_key_info_clear(&c->info);
    free(c->ref);
    free(c);
  }
  b->keys = NULL;
}

/* Build the kvp_key handed to the front from a cache entry (lock held). */
static CK_RV kv_make_key(kv_backend *b, const char *ref, kv_cached_key *c, kvp_key **out)
{
  const kv_key_info *info = &c->info;
  kvp_key *k = calloc(1, sizeof(*k));
  kv_key_impl *im = calloc(1, sizeof(*im));
  CK_RV rv;
  int64_t now = kv_wall_s();

  if (k == NULL || im == NULL)
    goto nomem;
  k->backend = &b->base;
  k->name = strdup(ref);
  k->version = strdup(info->version);
  im->name = strdup(info->name);
  if (k->name == NULL || k->version == NULL || im->name == NULL)
    goto nomem;
  if (EVP_PKEY_up_ref(info->pub) != 1)
    goto nomem;
  k->pub = info->pub;
  if (!c->shape_known) {
    /* once per fetched key: the front opens keys at every C_SignInit */
    rv = kvp_key_fill_from_pub(k);
    if (rv != CKR_OK) {
      KVP_ERROR("vault %s: key %s: unsupported key type or curve", b->conf.name, ref);
      EVP_PKEY_free(k->pub);
      k->pub = NULL;
      goto fail;
    }
    c->type = k->type;
    c->bits = k->bits;
    c->curve_nid = k->curve_nid;
    c->shape_known = 1;
  }
  k->type = c->type;
  k->bits = c->bits;
  k->curve_nid = c->curve_nid;
  im->ops = info->ops;
  im->enabled = info->enabled;
  im->nbf = info->nbf;
  im->exp = info->exp;
  k->impl = im;
  k->can_sign = (info->ops & KV_OP_SIGN) && kv_key_usable_now(im, now);
  k->can_decrypt = k->type == KVP_KEY_RSA && (info->ops & KV_OP_DECRYPT) && info->enabled;
  k->private_obj = 0;
  *out = k;
  return CKR_OK;
nomem:
  rv = CKR_HOST_MEMORY;
fail:
  if (im != NULL)
    free(im->name);
  free(im);
  if (k != NULL) {
    free(k->name);
    free(k->version);
    free(k);
  }
  return rv;
}

CK_RV kv_open_key(kvp_backend *be, const char *ref, kvp_key **out)
{
  kv_backend *b = (kv_backend *)be;
  kv_cached_key *c;
  kv_key_info info;
  kv_resp resp;
  char *name = NULL, *version = NULL, *url = NULL, err[KVP_ERRLEN];
  size_t len;
  CK_RV rv;
  int64_t now = kv_now_ms();

  *out = NULL;
  memset(&resp, 0, sizeof(resp));
  kv_resp_clear(&resp, 0);
  if (ref == NULL || kv_ref_parse(ref, &name, &version) != 0) {
    KVP_ERROR("vault %s: '%s' is not a key name (KEY or KEY/VERSION, letters, digits, '-')",
              b->conf.name, ref != NULL ? ref : "");
    return CKR_KEY_HANDLE_INVALID;
  }
  pthread_mutex_lock(&b->lock);
  for (c = b->keys; c != NULL; c = c->next) {
    if (strcmp(c->ref, ref) == 0 && now - c->fetched_ms < b->key_ttl_ms) {
      rv = kv_make_key(b, ref, c, out);
      pthread_mutex_unlock(&b->lock);
      goto out;
    }
  }
  pthread_mutex_unlock(&b->lock);

  len = strlen(b->base_url) + strlen(name) + (version ? strlen(version) : 0) +
        strlen(b->conf.api_version) + 32;
  url = malloc(len);
  if (url == NULL) {
    rv = CKR_HOST_MEMORY;
    goto out;
  }
  snprintf(url, len, "%s/keys/%s%s%s?api-version=%s", b->base_url, name, version ? "/" : "",
           version ? version : "", b->conf.api_version);
  rv = kv_call(b, KV_CALL_GET, ref, "GET", url, NULL, &resp);
  if (rv == CKR_DEVICE_ERROR) {
    /* the vault is unreachable or throttling: an expired cache entry is
     * still the best answer (the key material cannot have changed for a
     * versioned ref, and sign/decrypt report what the vault says) */
    pthread_mutex_lock(&b->lock);
    for (c = b->keys; c != NULL; c = c->next) {
      if (strcmp(c->ref, ref) == 0) {
        KVP_WARN("vault %s: key %s: using the cached public key (%lld s old)", b->conf.name, ref,
                 (long long)((kv_now_ms() - c->fetched_ms) / 1000));
        rv = kv_make_key(b, ref, c, out);
        break;
      }
    }
    pthread_mutex_unlock(&b->lock);
    goto out;
  }
  if (rv != CKR_OK) {
    if (rv == CKR_KEY_HANDLE_INVALID)
      kv_cache_drop(b, name);
    goto out;
  }
  if (kv_key_bundle_parse(resp.json, &info, err, sizeof(err)) != 0) {
    KVP_ERROR("vault %s: key %s: %s (x-ms-request-id %s)", b->conf.name, ref, err,
              resp.request_id);
    rv = CKR_DEVICE_ERROR;
    goto out;
  }
  if (strcasecmp(info.name, name) != 0 ||
      (version != NULL && strcasecmp(info.version, version) != 0)) {
    KVP_ERROR("vault %s: key %s: the service answered with key %s/%s (x-ms-request-id %s)",
              b->conf.name, ref, info.name, info.version, resp.request_id);
    kv_key_info_clear(&info);
    rv = CKR_DEVICE_ERROR;
    goto out;
  }
  if (!info.enabled)
    KVP_WARN("vault %s: key %s is disabled", b->conf.name, ref);
  c = calloc(1, sizeof(*c));
  if (c == NULL || (c->ref = strdup(ref)) == NULL) {
    free(c);
    kv_key_info_clear(&info);
    rv = CKR_HOST_MEMORY;
    goto out;
  }
  c->info = info;
  c->fetched_ms = kv_now_ms();
  pthread_mutex_lock(&b->lock);
  {
    /* replace an older entry of the same ref */
    kv_cached_key **pp = &b->keys, *o;
    while ((o = *pp) != NULL) {
      if (strcmp(o->ref, ref) == 0) {
        *pp = o->next;
        kv_key_info_clear(&o->info);
        free(o->ref);
        free(o);
      } else {
        pp = &o->next;
      }
    }
    c->next = b->keys;
    b->keys = c;
  }
  rv = kv_make_key(b, ref, c, out);
  pthread_mutex_unlock(&b->lock);
  if (rv == CKR_OK)
    KVP_DEBUG("vault %s: key %s opened (version %s)", b->conf.name, ref, (*out)->version);
out:
  kv_resp_clear(&resp, 0);
  free(url);
  free(name);
  free(version);
  return rv;
}

void kv_close_key(kvp_backend *be, kvp_key *key)
{
  kv_key_impl *im;
  (void)be;
  if (key == NULL)
    return;
  im = key->impl;
  if (im != NULL) {
    free(im->name);
    free(im);
  }
  EVP_PKEY_free(key->pub);
  free(key->name);
  free(key->version);
  free(key);
}

int kv_verify_local(EVP_PKEY *pub, const kvp_sig_alg *alg, const unsigned char *digest,
                    size_t dlen, const unsigned char *sig, size_t slen)
{
  EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, pub, NULL);
  unsigned char *der = NULL;
  int derlen = 0, ok = 0;
  ECDSA_SIG *es = NULL;

  if (ctx == NULL || EVP_PKEY_verify_init(ctx) != 1)
    goto out;
  if (alg->scheme == KVP_SIG_RSA_PKCS1 || alg->scheme == KVP_SIG_RSA_PSS) {
    const EVP_MD *md = kvp_hash_md(alg->hash);
    if (md == NULL || EVP_PKEY_CTX_set_signature_md(ctx, md) != 1)
      goto out;
    if (alg->scheme == KVP_SIG_RSA_PKCS1) {
      if (EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) != 1)
        goto out;
    } else {
      const EVP_MD *mgf = kvp_hash_md(alg->mgf1);
      if (mgf == NULL || EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PSS_PADDING) != 1 ||
          EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, mgf) != 1 ||
          EVP_PKEY_CTX_set_rsa_pss_saltlen(ctx, (int)alg->salt_len) != 1)
        goto out;
    }
    ok = EVP_PKEY_verify(ctx, sig, slen, digest, dlen) == 1;
  } else if (alg->scheme == KVP_SIG_ECDSA) {
    BIGNUM *r, *s;
    if (slen == 0 || slen % 2 != 0)
      goto out;
    r = BN_bin2bn(sig, (int)(slen / 2), NULL);
    s = BN_bin2bn(sig + slen / 2, (int)(slen / 2), NULL);
    es = ECDSA_SIG_new();
    if (r == NULL || s == NULL || es == NULL || ECDSA_SIG_set0(es, r, s) != 1) {
      BN_free(r);
      BN_free(s);
      goto out;
    }
    derlen = i2d_ECDSA_SIG(es, &der);
    if (derlen <= 0)
      goto out;
    ok = EVP_PKEY_verify(ctx, der, (size_t)derlen, digest, dlen) == 1;
  }
out:
  ECDSA_SIG_free(es);
  OPENSSL_free(der);
  EVP_PKEY_CTX_free(ctx);
  return ok;
}

/* POST /keys/NAME/VERSION/OP with {"alg","value"}; returns the decoded value. */
static CK_RV kv_key_op(kv_backend *b, kvp_key *key, kv_call_kind kind, const char *op,
                       const char *alg, const unsigned char *in, size_t in_len,
                       unsigned char **out, size_t *out_len)
{
  kv_key_impl *im = key->impl;
  kv_resp resp;
  json_t *req = NULL, *val;
  char *b64 = NULL, *body = NULL, *url = NULL;
  size_t len;
  CK_RV rv = CKR_HOST_MEMORY;

  *out = NULL;
  *out_len = 0;
  memset(&resp, 0, sizeof(resp));
  kv_resp_clear(&resp, 0);
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
  if (rv != CKR_OK) {
    if (rv == CKR_KEY_HANDLE_INVALID)
      kv_cache_drop(b, im->name);
    goto out;
  }
  val = json_object_get(resp.json, "value");
  if (!json_is_string(val) ||
      kv_b64url_decode(json_string_value(val), out, out_len) != 0) {
    KVP_ERROR("vault %s: key %s: %s: the answer has no base64url value (x-ms-request-id %s)",
              b->conf.name, key->name, op, resp.request_id);
    rv = CKR_DEVICE_ERROR;
    goto out;
  }
  /* the value may be a plaintext: wipe it in the parsed document too */
  kvp_wipe((char *)json_string_value(val), json_string_length(val));
  rv = CKR_OK;
out:
  kv_resp_clear(&resp, 1);
  json_decref(req);
  if (body != NULL) {
    kvp_wipe(body, strlen(body));
    free(body);
  }
  kv_free_wipe(b64);
  free(url);
  return rv;
}

static const char *kv_rs_alg(kvp_hash h, int pss)
{
  switch (h) {
  case KVP_HASH_SHA256: return pss ? "PS256" : "RS256";
  case KVP_HASH_SHA384: return pss ? "PS384" : "RS384";
  case KVP_HASH_SHA512: return pss ? "PS512" : "RS512";
  default: return NULL;
  }
}

CK_RV kv_sign(kvp_backend *be, kvp_key *key, const kvp_sig_alg *alg, const CK_BYTE *digest,
              CK_ULONG digest_len, CK_BYTE *sig, CK_ULONG *sig_len)
{
  kv_backend *b = (kv_backend *)be;
  kv_key_impl *im = key->impl;
  const char *jalg = NULL;
  unsigned char adj[66], *res = NULL;
  const unsigned char *d = digest;
  size_t dlen = digest_len, want_sig, res_len = 0;
  kvp_sig_alg valg = *alg;
  CK_RV rv;
  int64_t now = kv_wall_s();

  if (key->type == KVP_KEY_RSA) {
    size_t hl = kvp_hash_len(alg->hash);
    if (alg->scheme == KVP_SIG_RSA_PKCS1) {
      if (alg->hash == KVP_HASH_NONE) {
        KVP_ERROR("vault %s: key %s: Key Vault signs only SHA-256/384/512 digests "
                  "(raw CKM_RSA_PKCS input is not a supported DigestInfo)",
                  b->conf.name, key->name);
        return CKR_DATA_INVALID;
      }
      jalg = kv_rs_alg(alg->hash, 0);
      if (jalg == NULL) {
        KVP_ERROR("vault %s: key %s: Key Vault has no PKCS#1 signature with %s", b->conf.name,
                  key->name, kvp_hash_name(alg->hash));
        return CKR_MECHANISM_INVALID;
      }
    } else if (alg->scheme == KVP_SIG_RSA_PSS) {
      jalg = kv_rs_alg(alg->hash, 1);
      if (jalg == NULL || alg->mgf1 != alg->hash || alg->salt_len != hl) {
        KVP_ERROR("vault %s: key %s: Key Vault PSS needs SHA-256/384/512 with the same MGF1 "
                  "hash and salt length = hash length",
                  b->conf.name, key->name);
        return CKR_MECHANISM_PARAM_INVALID;
      }
    } else {
      return CKR_KEY_TYPE_INCONSISTENT;
    }
    if (digest_len != hl)
      return CKR_DATA_LEN_RANGE;
    want_sig = (key->bits + 7) / 8;
  } else if (key->type == KVP_KEY_EC) {
    size_t want;
    if (alg->scheme != KVP_SIG_ECDSA)
      return CKR_KEY_TYPE_INCONSISTENT;
    switch (key->curve_nid) {
    case NID_X9_62_prime256v1: jalg = "ES256"; want = 32; want_sig = 64; break;
    case NID_secp384r1: jalg = "ES384"; want = 48; want_sig = 96; break;
    case NID_secp521r1: jalg = "ES512"; want = 64; want_sig = 132; break;
    case NID_secp256k1: jalg = "ES256K"; want = 32; want_sig = 64; break;
    default: return CKR_KEY_TYPE_INCONSISTENT;
    }
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
  } else {
    return CKR_KEY_TYPE_INCONSISTENT;
  }
  if (!(im->ops & KV_OP_SIGN)) {
    KVP_ERROR("vault %s: key %s: the key's key_ops do not allow 'sign'", b->conf.name, key->name);
    return CKR_KEY_FUNCTION_NOT_PERMITTED;
  }
  if (!kv_key_usable_now(im, now)) {
    KVP_ERROR("vault %s: key %s: the key is %s", b->conf.name, key->name,
              !im->enabled ? "disabled" : "outside its validity period (nbf/exp)");
    return CKR_KEY_FUNCTION_NOT_PERMITTED;
  }
  rv = kv_key_op(b, key, KV_CALL_SIGN, "sign", jalg, d, dlen, &res, &res_len);
  if (rv != CKR_OK)
    return rv;
  if (res_len != want_sig) {
    KVP_ERROR("vault %s: key %s: %s returned %zu signature bytes, expected %zu", b->conf.name,
              key->name, jalg, res_len, want_sig);
    rv = CKR_DEVICE_ERROR;
    goto out;
  }
  if (!kv_verify_local(key->pub, &valg, d, dlen, res, res_len)) {
    KVP_ERROR("vault %s: key %s: the %s signature returned by Key Vault does not verify with "
              "the key's public key",
              b->conf.name, key->name, jalg);
    rv = CKR_DEVICE_ERROR;
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
  kv_key_impl *im = key->impl;
  const char *jalg;
  unsigned char *res = NULL;
  size_t res_len = 0, k;
  CK_RV rv;

  if (key->type != KVP_KEY_RSA)
    return CKR_KEY_TYPE_INCONSISTENT;
  if (alg->scheme == KVP_DEC_RSA_PKCS1) {
    jalg = "RSA1_5";
  } else if (alg->scheme == KVP_DEC_RSA_OAEP) {
    if (alg->hash == KVP_HASH_SHA1 && alg->mgf1 == KVP_HASH_SHA1)
      jalg = "RSA-OAEP";
    else if (alg->hash == KVP_HASH_SHA256 && alg->mgf1 == KVP_HASH_SHA256)
      jalg = "RSA-OAEP-256";
    else {
      KVP_ERROR("vault %s: key %s: Key Vault OAEP supports SHA-1/MGF1-SHA-1 and "
                "SHA-256/MGF1-SHA-256 only",
                b->conf.name, key->name);
      return CKR_MECHANISM_PARAM_INVALID;
    }
  } else {
    return CKR_MECHANISM_INVALID;
  }
  k = (key->bits + 7) / 8;
  if (in_len != k)
    return CKR_ENCRYPTED_DATA_LEN_RANGE;
  if (!(im->ops & KV_OP_DECRYPT)) {
    KVP_ERROR("vault %s: key %s: the key's key_ops do not allow 'decrypt'", b->conf.name,
              key->name);
    return CKR_KEY_FUNCTION_NOT_PERMITTED;
  }
  if (!im->enabled) {
    KVP_ERROR("vault %s: key %s: the key is disabled", b->conf.name, key->name);
    return CKR_KEY_FUNCTION_NOT_PERMITTED;
  }
  rv = kv_key_op(b, key, KV_CALL_DECRYPT, "decrypt", jalg, in, in_len, &res, &res_len);
  if (rv != CKR_OK)
    return rv;
  if (res_len > k) {
    KVP_ERROR("vault %s: key %s: decrypt returned %zu bytes for a %zu-byte key", b->conf.name,
              key->name, res_len, k);
    rv = CKR_DEVICE_ERROR;
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
