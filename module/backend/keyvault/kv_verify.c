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
  return ctx != NULL ? ctx : kvp_sig_ctx_new(v->pub, alg);
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

int kv_verifier_check(kv_verifier *v, const kvp_sig_alg *alg, const unsigned char *digest,
                      size_t dlen, const unsigned char *sig, size_t slen)
{
  /* a signature that does not verify leaves the caller's error queue as it was */
  EVP_PKEY_CTX *ctx = kv_vctx_take(v, alg);
  int ok = ctx != NULL && kvp_sig_check(ctx, alg, digest, dlen, sig, slen);

  if (ctx != NULL)
    kv_vctx_give(v, alg, ctx);
  return ok;
}
