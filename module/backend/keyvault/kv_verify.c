/*
 * Local verification of every signature Key Vault returns, made cheap.
 *
 * Per key version, one verifier: the public key (whose RSA Montgomery
 * context OpenSSL caches inside the key after the first use) and, per
 * algorithm (scheme, hash, MGF1 hash, salt length), a small pool of verify
 * contexts set up once (provider fetch, padding, digest, PSS parameters).
 * A signature check takes a prepared context from the pool, verifies, and
 * puts it back: no algorithm fetch and no context construction per call
 * once the pool is warm. The pool's mutex is held only to take or return a
 * context, so N threads verify in parallel (each with its own context).
 */
#include "backend/keyvault/kv.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/rsa.h>

#define KV_VERIFY_ALGS 8  /* distinct algorithms kept per key */
#define KV_VERIFY_POOL 4  /* idle contexts kept per algorithm */

typedef struct kv_vslot {
  int used;
  kvp_sig_alg alg;
  EVP_PKEY_CTX *idle[KV_VERIFY_POOL];
  int n_idle;
} kv_vslot;

struct kv_verifier {
  EVP_PKEY *pub;
  pthread_mutex_t lock;
  kv_vslot slots[KV_VERIFY_ALGS];
};

kv_verifier *kv_verifier_new(EVP_PKEY *pub)
{
  kv_verifier *v = calloc(1, sizeof(*v));
  if (v == NULL)
    return NULL;
  if (EVP_PKEY_up_ref(pub) != 1) {
    free(v);
    return NULL;
  }
  v->pub = pub;
  pthread_mutex_init(&v->lock, NULL);
  return v;
}

void kv_verifier_free(kv_verifier *v)
{
  int i, j;
  if (v == NULL)
    return;
  for (i = 0; i < KV_VERIFY_ALGS; i++)
    for (j = 0; j < v->slots[i].n_idle; j++)
      EVP_PKEY_CTX_free(v->slots[i].idle[j]);
  pthread_mutex_destroy(&v->lock);
  EVP_PKEY_free(v->pub);
  free(v);
}

static int kv_alg_same(const kvp_sig_alg *a, const kvp_sig_alg *b)
{
  return a->scheme == b->scheme && a->hash == b->hash &&
         (a->scheme != KVP_SIG_RSA_PSS || (a->mgf1 == b->mgf1 && a->salt_len == b->salt_len));
}

/* A verify context set up for alg (the expensive part, done once per pooled context). */
static EVP_PKEY_CTX *kv_vctx_new(EVP_PKEY *pub, const kvp_sig_alg *alg)
{
  EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, pub, NULL);
  if (ctx == NULL || EVP_PKEY_verify_init(ctx) != 1)
    goto bad;
  if (alg->scheme == KVP_SIG_RSA_PKCS1 || alg->scheme == KVP_SIG_RSA_PSS) {
    const EVP_MD *md = kvp_hash_md(alg->hash);
    if (md == NULL || EVP_PKEY_CTX_set_signature_md(ctx, md) != 1)
      goto bad;
    if (alg->scheme == KVP_SIG_RSA_PKCS1) {
      if (EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) != 1)
        goto bad;
    } else {
      const EVP_MD *mgf = kvp_hash_md(alg->mgf1);
      if (mgf == NULL || EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PSS_PADDING) != 1 ||
          EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, mgf) != 1 ||
          EVP_PKEY_CTX_set_rsa_pss_saltlen(ctx, (int)alg->salt_len) != 1)
        goto bad;
    }
  } else if (alg->scheme != KVP_SIG_ECDSA) {
    goto bad;
  }
  return ctx;
bad:
  EVP_PKEY_CTX_free(ctx);
  return NULL;
}

static EVP_PKEY_CTX *kv_vctx_take(kv_verifier *v, const kvp_sig_alg *alg)
{
  EVP_PKEY_CTX *ctx = NULL;
  int i;
  pthread_mutex_lock(&v->lock);
  for (i = 0; i < KV_VERIFY_ALGS; i++) {
    kv_vslot *s = &v->slots[i];
    if (s->used && kv_alg_same(&s->alg, alg)) {
      if (s->n_idle > 0)
        ctx = s->idle[--s->n_idle];
      break;
    }
  }
  pthread_mutex_unlock(&v->lock);
  return ctx != NULL ? ctx : kv_vctx_new(v->pub, alg);
}

static void kv_vctx_give(kv_verifier *v, const kvp_sig_alg *alg, EVP_PKEY_CTX *ctx)
{
  int i, free_slot = -1;
  pthread_mutex_lock(&v->lock);
  for (i = 0; i < KV_VERIFY_ALGS; i++) {
    kv_vslot *s = &v->slots[i];
    if (s->used && kv_alg_same(&s->alg, alg)) {
      if (s->n_idle < KV_VERIFY_POOL) {
        s->idle[s->n_idle++] = ctx;
        ctx = NULL;
      }
      break;
    }
    if (!s->used && free_slot < 0)
      free_slot = i;
  }
  if (ctx != NULL && i == KV_VERIFY_ALGS && free_slot >= 0) {
    kv_vslot *s = &v->slots[free_slot];
    s->used = 1;
    s->alg = *alg;
    s->idle[s->n_idle++] = ctx;
    ctx = NULL;
  }
  pthread_mutex_unlock(&v->lock);
  EVP_PKEY_CTX_free(ctx);
}

/* r||s -> DER ECDSA-Sig-Value (malloc'd by OpenSSL). */
static int kv_ecdsa_der(const unsigned char *sig, size_t slen, unsigned char **der)
{
  ECDSA_SIG *es;
  BIGNUM *r, *s;
  int n;
  if (slen == 0 || slen % 2 != 0)
    return -1;
  r = BN_bin2bn(sig, (int)(slen / 2), NULL);
  s = BN_bin2bn(sig + slen / 2, (int)(slen / 2), NULL);
  es = ECDSA_SIG_new();
  if (r == NULL || s == NULL || es == NULL || ECDSA_SIG_set0(es, r, s) != 1) {
    BN_free(r);
    BN_free(s);
    ECDSA_SIG_free(es);
    return -1;
  }
  *der = NULL;
  n = i2d_ECDSA_SIG(es, der);
  ECDSA_SIG_free(es);
  return n;
}

int kv_verifier_check(kv_verifier *v, const kvp_sig_alg *alg, const unsigned char *digest,
                      size_t dlen, const unsigned char *sig, size_t slen)
{
  EVP_PKEY_CTX *ctx;
  unsigned char *der = NULL;
  int ok = 0, n;

  /* a signature that does not verify leaves the caller's error queue as it was */
  ERR_set_mark();
  ctx = kv_vctx_take(v, alg);
  if (ctx == NULL) {
    ERR_pop_to_mark();
    return 0;
  }
  if (alg->scheme == KVP_SIG_ECDSA) {
    n = kv_ecdsa_der(sig, slen, &der);
    ok = n > 0 && EVP_PKEY_verify(ctx, der, (size_t)n, digest, dlen) == 1;
    OPENSSL_free(der);
  } else {
    ok = EVP_PKEY_verify(ctx, sig, slen, digest, dlen) == 1;
  }
  ERR_pop_to_mark();
  kv_vctx_give(v, alg, ctx);
  return ok;
}
