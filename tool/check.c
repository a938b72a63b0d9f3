/*
 * kvp11 check [--account A] [--json]: can every private certificate of an
 * account use its key?
 *
 * For each private certificate the key store is opened through the backend
 * interface, as the module does, and probed safely: a random digest is signed
 * remotely and verified locally with the certificate's public key; random
 * bytes are encrypted locally and decrypted remotely (RSA). Each check is one
 * row (CERT, STORE, CHECK, RESULT, DETAIL); a Key Vault permission that is
 * missing comes with the commands that grant it. Exit 0 when no check failed
 * (warnings allowed), 1 otherwise.
 */
#include <getopt.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "backend/backend.h"
#include "backend/keyvault/keyvault.h"
#include "core/cert.h"
#include "core/p11names.h"
#include "core/util.h"
#include "tool.h"

#define CHK_WARN_DAYS 30
#define CHK_NFIX 3

enum { R_OK = 0, R_WARN, R_FAIL };
static const char *const result_names[] = {"ok", "warn", "fail"};

typedef struct chk_row {
  char *cert, *store, *check, *detail;
  int result;
  char *fix[CHK_NFIX]; /* NULL when none */
} chk_row;

typedef struct chk_ctx {
  kvp_tool *t;
  chk_row *rows;
  size_t n, cap;
  int oom;
} chk_ctx;

static void row_free(chk_row *r)
{
  free(r->cert);
  free(r->store);
  free(r->check);
  free(r->detail);
  for (int i = 0; i < CHK_NFIX; i++)
    free(r->fix[i]);
}

/* Add a row; fix is NULL or CHK_NFIX commands (copied). */
static void add_res(chk_ctx *c, int result, const char *cert, const char *store,
                    const char *check, char *const *fix, const char *detail)
{
  if (c->n == c->cap) {
    size_t cap = c->cap ? 2 * c->cap : 16;
    chk_row *r = realloc(c->rows, cap * sizeof(*r));
    if (!r) {
      c->oom = 1;
      return;
    }
    c->rows = r;
    c->cap = cap;
  }
  chk_row *r = &c->rows[c->n];
  memset(r, 0, sizeof(*r));
  r->result = result;
  r->cert = strdup(cert);
  r->store = strdup(store);
  r->check = strdup(check);
  r->detail = strdup(detail);
  int bad = !r->cert || !r->store || !r->check || !r->detail;
  for (int i = 0; fix && i < CHK_NFIX; i++)
    if (fix[i] && !(r->fix[i] = strdup(fix[i])))
      bad = 1;
  if (bad) {
    row_free(r);
    c->oom = 1;
    return;
  }
  c->n++;
}

/* The vault's name: the first label of the URL's host. */
static void vault_name(const char *url, char *out, size_t size)
{
  const char *p = strstr(url, "://");
  size_t n;
  p = p ? p + 3 : url;
  n = strcspn(p, ".:/");
  if (n == 0 || n >= size) {
    snprintf(out, size, "<vault>");
    return;
  }
  memcpy(out, p, n);
  out[n] = '\0';
}

/* A malloc'd formatted string, NULL on allocation failure. */
__attribute__((format(printf, 1, 2))) static char *fmtdup(const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  char *s = n >= 0 ? malloc((size_t)n + 1) : NULL;
  if (!s)
    return NULL;
  va_start(ap, fmt);
  vsnprintf(s, (size_t)n + 1, fmt, ap);
  va_end(ap);
  return s;
}

/* The three commands that grant get, list, sign and decrypt on the vault. */
static int make_fixes(const kvp_vault_conf *vc, const kvp_cert_rec *rec, char *fix[CHK_NFIX])
{
  char vault[128];
  const char *who = vc->client_id && *vc->client_id           ? vc->client_id
                    : vc->auth == KVP_AUTH_MANAGED_IDENTITY ? "<the VM's managed identity>"
                                                              : "<client id>";
  const char *rg = rec->resource_group && *rec->resource_group ? rec->resource_group
                                                               : "<resource group>";
  vault_name(vc->url, vault, sizeof(vault));
  fix[0] = fmtdup("Set-AzKeyVaultAccessPolicy -VaultName %s -ServicePrincipalName %s "
                  "-PermissionsToKeys decrypt,sign,get,list",
                  vault, who);
  fix[1] = fmtdup("az keyvault set-policy --name %s --spn %s --key-permissions decrypt sign get list",
                  vault, who);
  fix[2] = fmtdup("az role assignment create --role \"Key Vault Crypto User\" --assignee %s "
                  "--scope /subscriptions/<subscription>/resourceGroups/%s"
                  "/providers/Microsoft.KeyVault/vaults/%s",
                  who, rg, vault);
  return fix[0] && fix[1] && fix[2] ? 0 : -1;
}

/* Verify a signature over digest with pub (the certificate's public key). */
static int verify_local(EVP_PKEY *pub, kvp_key_type type, const unsigned char *dg, size_t dlen,
                        const unsigned char *sig, size_t slen)
{
  EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(pub, NULL);
  ECDSA_SIG *es = NULL;
  unsigned char *der = NULL;
  int ok = 0;

  if (!ctx || EVP_PKEY_verify_init(ctx) <= 0)
    goto out;
  if (type == KVP_KEY_RSA) {
    if (EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) <= 0 ||
        EVP_PKEY_CTX_set_signature_md(ctx, EVP_sha256()) <= 0)
      goto out;
    ok = EVP_PKEY_verify(ctx, sig, slen, dg, dlen) == 1;
  } else {
    size_t h = slen / 2;
    BIGNUM *r = BN_bin2bn(sig, (int)h, NULL), *s = BN_bin2bn(sig + h, (int)h, NULL);
    if (!r || !s || !(es = ECDSA_SIG_new()) || ECDSA_SIG_set0(es, r, s) != 1) {
      BN_free(r);
      BN_free(s);
      goto out;
    }
    int der_len = i2d_ECDSA_SIG(es, &der);
    if (der_len <= 0)
      goto out;
    ok = EVP_PKEY_verify(ctx, der, (size_t)der_len, dg, dlen) == 1;
  }
out:
  OPENSSL_free(der);
  ECDSA_SIG_free(es);
  EVP_PKEY_CTX_free(ctx);
  return ok;
}

/* What one certificate's checks need. */
typedef struct chk_cert {
  chk_ctx *c;
  const kvp_cert_rec *rec;
  const char *store;           /* "hsm:NAME" / "keyvault:NAME" */
  const kvp_vault_conf *vc;    /* Key Vault only */
  kvp_backend *be;
  kvp_key *key;
  EVP_PKEY *cpub;              /* the certificate's public key */
  char *fix[CHK_NFIX];         /* grant commands (Key Vault) */
} chk_cert;

static void row(chk_cert *k, int result, const char *check, int with_fix, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static void row(chk_cert *k, int result, const char *check, int with_fix, const char *fmt, ...)
{
  char detail[2 * KVP_ERRLEN];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(detail, sizeof(detail), fmt, ap);
  va_end(ap);
  add_res(k->c, result, k->rec->name, k->store, check, with_fix && k->vc ? k->fix : NULL, detail);
}

static void check_sign(chk_cert *k)
{
  kvp_key *key = k->key;
  unsigned char dg[64], sig[1024];
  CK_ULONG sig_len = sizeof(sig);
  size_t dlen = 32;
  kvp_sig_alg alg = {.scheme = KVP_SIG_RSA_PKCS1, .hash = KVP_HASH_SHA256};
  const char *what = "RSA PKCS#1 v1.5, SHA-256";

  if (key->type == KVP_KEY_EC) {
    /* a digest sized to the curve, as ES256 / ES384 / ES512 take it */
    dlen = key->bits <= 256 ? 32 : key->bits <= 384 ? 48 : 64;
    alg.scheme = KVP_SIG_ECDSA;
    alg.hash = KVP_HASH_NONE;
    what = dlen == 32 ? "ECDSA, 32-byte digest" : dlen == 48 ? "ECDSA, 48-byte digest"
                                                             : "ECDSA, 64-byte digest";
  }
  if ((key->type == KVP_KEY_RSA ? key->bits / 8 : 2 * ((key->bits + 7) / 8)) > sizeof(sig)) {
    row(k, R_FAIL, "sign", 0, "key too large for this check (%u bits)", key->bits);
    return;
  }
  if (RAND_bytes(dg, (int)dlen) != 1) {
    row(k, R_FAIL, "sign", 0, "no random digest (OpenSSL RAND_bytes failed)");
    return;
  }
  CK_RV rv = k->be->ops->sign(k->be, key, &alg, dg, dlen, sig, &sig_len);
  if (rv == CKR_OK) {
    if (verify_local(k->cpub, key->type, dg, dlen, sig, sig_len))
      row(k, R_OK, "sign", 0, "signed a random digest (%s); it verifies with the certificate's "
                              "public key",
          what);
    else
      row(k, R_FAIL, "sign", 0,
          "the key store signed, but the signature does not verify with the certificate's "
          "public key");
  } else if (rv == CKR_KEY_FUNCTION_NOT_PERMITTED && k->vc && key->can_sign) {
    row(k, R_FAIL, "sign", 1, "refused: the application lacks the 'sign' permission on the vault");
  } else if (rv == CKR_KEY_FUNCTION_NOT_PERMITTED) {
    row(k, R_FAIL, "sign", 0,
        "refused: the key does not allow signing: %s%s",
        k->vc ? "disabled, outside its validity period, or no 'sign' in its key_ops"
              : "CKA_SIGN is false",
        kvp_tool_loghint(k->c->t));
  } else {
    row(k, R_FAIL, "sign", 0, "failed: %s%s", kvp_ckr_name(rv), kvp_tool_loghint(k->c->t));
  }
}

static void check_decrypt(chk_cert *k)
{
  kvp_key *key = k->key;
  unsigned char plain[32], *ct = NULL, *out = NULL;
  size_t ct_len = 0, n = (key->bits + 7) / 8;
  CK_ULONG out_len = n;
  EVP_PKEY_CTX *ctx = NULL;
  kvp_dec_alg alg = {.scheme = KVP_DEC_RSA_OAEP, .hash = KVP_HASH_SHA1, .mgf1 = KVP_HASH_SHA1};

  if (RAND_bytes(plain, sizeof(plain)) != 1 || !(ctx = EVP_PKEY_CTX_new(k->cpub, NULL)) ||
      EVP_PKEY_encrypt_init(ctx) <= 0 ||
      EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING) <= 0 ||
      EVP_PKEY_CTX_set_rsa_oaep_md(ctx, EVP_sha1()) <= 0 ||
      EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, EVP_sha1()) <= 0 ||
      EVP_PKEY_encrypt(ctx, NULL, &ct_len, plain, sizeof(plain)) <= 0 || !(ct = malloc(ct_len)) ||
      EVP_PKEY_encrypt(ctx, ct, &ct_len, plain, sizeof(plain)) <= 0) {
    row(k, R_FAIL, "decrypt", 0, "cannot encrypt with the certificate's public key (RSA-OAEP)");
    goto out;
  }
  if (ct_len != n || !(out = malloc(n))) {
    row(k, R_FAIL, "decrypt", 0,
        "the certificate's RSA key (%zu bytes) is not the size of the key store's (%zu bytes)",
        ct_len, n);
    goto out;
  }
  CK_RV rv = k->be->ops->decrypt(k->be, key, &alg, ct, (CK_ULONG)ct_len, out, &out_len);
  if (rv == CKR_OK && out_len == sizeof(plain) && memcmp(out, plain, sizeof(plain)) == 0)
    row(k, R_OK, "decrypt", 0,
        "decrypted 32 random bytes encrypted with the certificate's public key (RSA-OAEP, "
        "SHA-1)");
  else if (rv == CKR_OK)
    row(k, R_FAIL, "decrypt", 0, "the key store decrypted something else than was encrypted");
  else if (rv == CKR_ENCRYPTED_DATA_INVALID)
    row(k, R_FAIL, "decrypt", 0,
        "the key store cannot decrypt what the certificate's public key encrypted (%s)%s",
        kvp_ckr_name(rv), kvp_tool_loghint(k->c->t));
  else if (rv == CKR_KEY_FUNCTION_NOT_PERMITTED && k->vc && key->can_decrypt)
    row(k, R_FAIL, "decrypt", 1,
        "refused: the application lacks the 'decrypt' permission on the vault");
  else if (rv == CKR_KEY_FUNCTION_NOT_PERMITTED)
    row(k, R_FAIL, "decrypt", 0, "refused: the key does not allow decryption: %s%s",
        k->vc ? "disabled, or no 'decrypt' in its key_ops" : "CKA_DECRYPT is false",
        kvp_tool_loghint(k->c->t));
  else
    row(k, R_FAIL, "decrypt", 0, "failed: %s%s", kvp_ckr_name(rv), kvp_tool_loghint(k->c->t));
out:
  OPENSSL_cleanse(plain, sizeof(plain));
  if (out)
    OPENSSL_cleanse(out, n);
  free(out);
  free(ct);
  EVP_PKEY_CTX_free(ctx);
}

/* Backends opened during this run, one per key store. */
typedef struct chk_store {
  char *ref; /* "hsm:NAME" / "keyvault:NAME" */
  kvp_backend *be;
} chk_store;

typedef struct chk_stores {
  chk_store *v;
  size_t n;
} chk_stores;

static kvp_backend *store_get(chk_stores *s, const char *ref, const kvp_hsm_conf *hc,
                              const kvp_vault_conf *vc, CK_RV *rv)
{
  for (size_t i = 0; i < s->n; i++)
    if (strcmp(s->v[i].ref, ref) == 0)
      return s->v[i].be;
  kvp_backend *be = NULL;
  chk_store *v = realloc(s->v, (s->n + 1) * sizeof(*v));
  if (!v) {
    *rv = CKR_HOST_MEMORY;
    return NULL;
  }
  s->v = v;
  *rv = hc ? kvp_hsm_backend_new(hc, &be) : kvp_keyvault_backend_new(vc, &be);
  if (*rv != CKR_OK || !be) {
    if (*rv == CKR_OK)
      *rv = CKR_GENERAL_ERROR;
    return NULL;
  }
  if (!(v[s->n].ref = strdup(ref))) {
    be->ops->destroy(be, 0);
    *rv = CKR_HOST_MEMORY;
    return NULL;
  }
  v[s->n++].be = be;
  return be;
}

static void stores_free(chk_stores *s)
{
  for (size_t i = 0; i < s->n; i++) {
    s->v[i].be->ops->destroy(s->v[i].be, 0);
    free(s->v[i].ref);
  }
  free(s->v);
}

/* The certificate's own validity. */
static void check_validity(chk_cert *k)
{
  const kvp_cert_rec *rec = k->rec;
  time_t now = time(NULL);
  char when[32];
  if (now < rec->not_before) {
    kvp_tool_isotime(rec->not_before, when);
    row(k, R_FAIL, "cert-validity", 0, "the certificate is not valid before %s", when);
  } else if (now > rec->not_after) {
    kvp_tool_isotime(rec->not_after, when);
    row(k, R_FAIL, "cert-validity", 0, "the certificate expired on %s", when);
  } else if (rec->not_after - now < (int64_t)CHK_WARN_DAYS * 86400) {
    kvp_tool_isotime(rec->not_after, when);
    row(k, R_WARN, "cert-validity", 0, "the certificate expires on %s (in %lld days)", when,
        (long long)((rec->not_after - now) / 86400));
  } else {
    kvp_tool_isotime(rec->not_after, when);
    row(k, R_OK, "cert-validity", 0, "valid until %s", when);
  }
}

/* Open the key: reachability, token and (Key Vault) the 'get' permission.
 * 1: opened; 0: the store answered but the key could not be read; -1: the
 * store (or the token) is not usable. */
static int check_open(chk_cert *k, const char *kname)
{
  kvp_tool *t = k->c->t;
  const char *hint = kvp_tool_loghint(t);
  unsigned long tok_before = k->vc ? kvp_keyvault_token_requests(k->be) : 0;
  CK_RV rv = k->be->ops->open_key(k->be, kname, &k->key);
  const char *kind = k->vc ? "vault" : "hsm";

  if (rv == CKR_OK && k->key && k->key->pub) {
    row(k, R_OK, "token", 0, k->vc ? "the vault answers; an access token was obtained"
                                   : "the token answers; the session is open");
    if (k->vc)
      row(k, R_OK, "get", 0, "read key '%s' (version %s)", kname,
          k->key->version ? k->key->version : "-");
    else
      row(k, R_OK, "key", 0, "found key '%s' (%s, %u bits)", kname,
          k->key->type == KVP_KEY_RSA ? "RSA" : "EC", k->key->bits);
    return 1;
  }
  if (k->key) {
    k->be->ops->close_key(k->be, k->key);
    k->key = NULL;
  }
  if (rv == CKR_OK) { /* a key without a public part: treat as a store failure */
    rv = CKR_GENERAL_ERROR;
  }
  if (rv == CKR_KEY_HANDLE_INVALID) {
    row(k, R_OK, "token", 0, k->vc ? "the vault answers; an access token was obtained"
                                   : "the token answers; the session is open");
    row(k, R_FAIL, k->vc ? "get" : "key", 0, "%s '%s' has no key '%s'", kind, k->be->name, kname);
    return 0;
  } else if (rv == CKR_KEY_FUNCTION_NOT_PERMITTED && k->vc) {
    row(k, R_OK, "token", 0, "the vault answers; an access token was obtained");
    row(k, R_FAIL, "get", 1,
        "refused reading key '%s': the application lacks the 'get' permission, or the vault's "
        "firewall refuses it%s",
        kname, hint);
    return 0;
  } else if (k->vc && rv == CKR_DEVICE_ERROR &&
             kvp_keyvault_token_requests(k->be) == tok_before) {
    row(k, R_FAIL, "token", 0, "the vault %s is unreachable or answered with an error%s",
        k->vc->url, hint);
  } else if (k->vc && rv == CKR_DEVICE_ERROR) {
    row(k, R_FAIL, "token", 0,
        "no access token could be obtained for client '%s', or the vault refused it%s",
        k->vc->client_id ? k->vc->client_id : "-", hint);
  } else if (k->vc) {
    row(k, R_FAIL, "token", 0, "cannot read key '%s': %s%s", kname, kvp_ckr_name(rv), hint);
  } else {
    row(k, R_FAIL, "token", 0, "cannot use the HSM (module, token or PIN): %s%s",
        kvp_ckr_name(rv), hint);
  }
  return -1;
}

static void check_list(chk_cert *k)
{
  char **names = NULL;
  size_t n = 0;
  CK_RV rv = kvp_keyvault_list_keys(k->be, &names, &n);
  kvp_keyvault_free_names(names, n);
  if (rv == CKR_OK)
    row(k, R_OK, "list", 0, "listed the vault's keys (%zu)", n);
  else if (rv == CKR_KEY_FUNCTION_NOT_PERMITTED)
    row(k, R_FAIL, "list", 1, "refused: the application lacks the 'list' permission on the vault");
  else
    row(k, R_FAIL, "list", 0, "failed: %s%s", kvp_ckr_name(rv), kvp_tool_loghint(k->c->t));
}

/* The key store's view of the key: enabled, within its validity, usable. */
static void check_key_state(chk_cert *k)
{
  const kvp_key *key = k->key;
  int rsa = key->type == KVP_KEY_RSA;
  if (k->vc) {
    /* The backend's can_sign is "enabled, within nbf/exp, key_ops has sign";
     * can_decrypt is "enabled, key_ops has decrypt". */
    if (key->can_sign && (!rsa || key->can_decrypt))
      row(k, R_OK, "key-state", 0, "enabled and within its validity period");
    else if (!key->can_sign && (!rsa || !key->can_decrypt))
      row(k, R_FAIL, "key-state", 0,
          "the vault does not let this key be used: disabled, outside its validity period "
          "(nbf/exp), or its key_ops lack sign%s",
          rsa ? " and decrypt" : "");
    else if (!key->can_sign)
      row(k, R_FAIL, "key-state", 0,
          "the key cannot sign: outside its validity period (nbf/exp) or no 'sign' in its "
          "key_ops");
    else
      row(k, R_WARN, "key-state", 0, "the key can sign but not decrypt (no 'decrypt' in its "
                                     "key_ops)");
    return;
  }
  if (key->can_sign && (!rsa || key->can_decrypt))
    row(k, R_OK, "key-state", 0, "usable for %s (HSM keys carry no validity period)",
        rsa ? "sign and decrypt" : "sign");
  else if (!key->can_sign)
    row(k, R_FAIL, "key-state", 0, "the HSM key does not allow signing (CKA_SIGN)");
  else
    row(k, R_WARN, "key-state", 0, "the HSM key can sign but not decrypt (CKA_DECRYPT)");
}

static void check_match(chk_cert *k)
{
  char fc[72] = "?", fk[72] = "?";
  if (kvp_pubkey_equal(k->cpub, k->key->pub)) {
    kvp_pubkey_fingerprint(k->cpub, fc);
    row(k, R_OK, "cert-key", 0, "the certificate's public key is the key's (%s)", fc);
    return;
  }
  kvp_pubkey_fingerprint(k->cpub, fc);
  kvp_pubkey_fingerprint(k->key->pub, fk);
  row(k, R_FAIL, "cert-key", 0,
      "the certificate's public key (%s) is not the public key of %s (%s)", fc,
      k->rec->key_ref, fk);
}

static void check_cert(chk_ctx *c, chk_stores *stores, const kvp_cert_rec *rec)
{
  chk_cert k = {.c = c, .rec = rec, .store = "-"};
  char err[KVP_ERRLEN] = "", sref[300];
  char *scheme = NULL, *store = NULL, *kname = NULL;
  X509 *x = NULL;
  EVP_PKEY *keyonly_pub = NULL;
  const unsigned char *p = rec->der;
  CK_RV rv = CKR_OK;

  if (rec->type != KVP_CERT_PRIVATE) {
    row(&k, R_OK, "key", 0, "public certificate: no key needed, not checked");
    return;
  }
  if (!rec->key_ref ||
      kvp_keyref_parse(rec->key_ref, &scheme, &store, &kname, err, sizeof(err)) != KVP_OK) {
    row(&k, R_FAIL, "store", 0, "bad key reference '%s': %s", rec->key_ref ? rec->key_ref : "",
        err);
    goto validity;
  }
  snprintf(sref, sizeof(sref), "%s:%s", scheme, store);
  k.store = sref;
  int is_hsm = strcmp(scheme, "hsm") == 0;
  const kvp_hsm_conf *hc = is_hsm ? kvp_config_find_hsm(c->t->cfg, store) : NULL;
  k.vc = is_hsm ? NULL : kvp_config_find_vault(c->t->cfg, store);
  if (!hc && !k.vc) {
    row(&k, R_FAIL, "store", 0, "%s '%s' is not configured in %s", is_hsm ? "hsm" : "vault",
        store, c->t->cfg->path);
    goto validity;
  }
  if (k.vc && make_fixes(k.vc, rec, k.fix) != 0) {
    c->oom = 1;
    goto validity;
  }
  if (!(k.be = store_get(stores, sref, hc, k.vc, &rv))) {
    row(&k, R_FAIL, "store", 0, "cannot use this key store: %s%s", kvp_ckr_name(rv),
        kvp_tool_loghint(c->t));
    goto validity;
  }
  if (rec->der_len == 0) {
    /* a key registered without certificate: its recorded public key stands in */
    kvp_spki sk;
    if (kvp_spki_from_der(rec->spki, rec->spki_len, &sk) != KVP_OK ||
        !(keyonly_pub = kvp_spki_pubkey(&sk))) {
      kvp_spki_clear(&sk);
      row(&k, R_FAIL, "cert-key", 0, "cannot read the registered public key");
      goto validity;
    }
    kvp_spki_clear(&sk);
    k.cpub = keyonly_pub;
  } else if (!(x = d2i_X509(NULL, &p, (long)rec->der_len)) || !(k.cpub = X509_get0_pubkey(x))) {
    row(&k, R_FAIL, "cert-key", 0, "cannot read the certificate's public key");
    goto validity;
  }
  int opened = check_open(&k, kname);
  if (k.vc && opened >= 0)
    check_list(&k); /* the token works: 'list' is a permission of its own */
  if (opened <= 0)
    goto validity;
  check_key_state(&k);
  check_match(&k);
  if (k.be->ops->needs_login && k.be->ops->needs_login(k.be)) {
    row(&k, R_WARN, "sign", 0,
        "not checked: the HSM has no pin_file or pin_env (applications give their PIN)");
  } else {
    check_sign(&k);
    if (k.key->type == KVP_KEY_RSA)
      check_decrypt(&k);
  }
validity:
  if (rec->der_len == 0)
    row(&k, R_WARN, "cert-validity", 0,
        "no certificate yet: kvp11 csr --cert-name %s, then kvp11 cert add --name %s", rec->name,
        rec->name);
  else
    check_validity(&k);
  EVP_PKEY_free(keyonly_pub);
  if (k.key)
    k.be->ops->close_key(k.be, k.key);
  X509_free(x);
  for (int i = 0; i < CHK_NFIX; i++)
    free(k.fix[i]);
  free(scheme);
  free(store);
  free(kname);
}

/* ---- output ---- */

static int print_json(const chk_ctx *c)
{
  json_t *a = json_array();
  int bad = !a;
  for (size_t i = 0; !bad && i < c->n; i++) {
    const chk_row *r = &c->rows[i];
    json_t *o = json_object(), *fix = json_array();
    bad = !o || !fix;
    for (int f = 0; !bad && f < CHK_NFIX; f++)
      if (r->fix[f])
        bad = json_array_append_new(fix, json_string(r->fix[f])) != 0;
    bad = bad || json_object_set_new(o, "cert", json_string(r->cert)) ||
          json_object_set_new(o, "store", json_string(r->store)) ||
          json_object_set_new(o, "check", json_string(r->check)) ||
          json_object_set_new(o, "result", json_string(result_names[r->result])) ||
          json_object_set_new(o, "detail", json_string(r->detail)) ||
          json_object_set(o, "fix", fix) || json_array_append(a, o);
    json_decref(fix);
    json_decref(o);
  }
  char *txt = bad ? NULL : json_dumps(a, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
  json_decref(a);
  if (!txt)
    return -1;
  printf("%s\n", txt);
  free(txt);
  return 0;
}

static int col_width(const chk_ctx *c, size_t off, const char *head)
{
  size_t w = strlen(head);
  for (size_t i = 0; i < c->n; i++) {
    const char *s = *(char *const *)((const char *)&c->rows[i] + off);
    if (strlen(s) > w)
      w = strlen(s);
  }
  return (int)w;
}

/* 1 when both rows carry the same grant commands. */
static int same_fix(const chk_row *a, const chk_row *b)
{
  for (int f = 0; f < CHK_NFIX; f++)
    if (!a->fix[f] != !b->fix[f] || (a->fix[f] && strcmp(a->fix[f], b->fix[f]) != 0))
      return 0;
  return 1;
}

static void print_table(const chk_ctx *c)
{
  int wc = col_width(c, offsetof(chk_row, cert), "CERT");
  int ws = col_width(c, offsetof(chk_row, store), "STORE");
  int wk = col_width(c, offsetof(chk_row, check), "CHECK");
  printf("%-*s  %-*s  %-*s  %-6s  %s\n", wc, "CERT", ws, "STORE", wk, "CHECK", "RESULT", "DETAIL");
  for (size_t i = 0; i < c->n; i++) {
    const chk_row *r = &c->rows[i];
    printf("%-*s  %-*s  %-*s  %-6s  %s\n", wc, r->cert, ws, r->store, wk, r->check,
           result_names[r->result], r->detail);
  }
  /* The grant commands, once per distinct set, after the rows that need them. */
  for (size_t i = 0; i < c->n; i++) {
    const chk_row *r = &c->rows[i];
    size_t j;
    if (!r->fix[0])
      continue;
    for (j = 0; j < i; j++)
      if (same_fix(&c->rows[j], r))
        break;
    if (j < i)
      continue; /* printed already */
    printf("\nMissing Key Vault permissions (");
    const char *sep = "";
    for (j = i; j < c->n; j++)
      if (same_fix(&c->rows[j], r)) {
        printf("%s%s: %s", sep, c->rows[j].cert, c->rows[j].check);
        sep = ", ";
      }
    printf(", store %s). Grant them with one of:\n", r->store);
    for (int f = 0; f < CHK_NFIX; f++)
      if (r->fix[f])
        printf("  %s\n", r->fix[f]);
  }
}

/* ---- the command ---- */

void kvp_tool_check_usage(FILE *f)
{
  fprintf(f, "  kvp11 [-c FILE] check [--account A] [--json]\n");
}

static void check_help(FILE *f)
{
  fprintf(f,
          "usage: kvp11 [-c FILE] check [--account A] [--json]\n"
          "\n"
          "For every private certificate of the account: the key store answers and a token\n"
          "is obtained, the key exists and can be read (Key Vault: get, list), a random\n"
          "digest is signed and verified with the certificate, random bytes encrypted with\n"
          "the certificate are decrypted (RSA), the key is enabled and within its validity,\n"
          "the certificate matches the key and is valid (a warning within %d days of its\n"
          "end). A missing Key Vault permission is shown with the commands that grant it.\n"
          "\n"
          "  --account A   default: the first configured account\n"
          "  --json        a JSON array of {cert, store, check, result, detail, fix}\n"
          "\n"
          "Exit status: 0 when no check failed (warnings allowed), 1 otherwise.\n",
          CHK_WARN_DAYS);
}

int kvp_tool_check(kvp_tool *t, int argc, char **argv)
{
  static const struct option opts[] = {
      {"account", required_argument, NULL, 'a'},
      {"json", no_argument, NULL, 'j'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  const char *account_opt = NULL, *account = NULL;
  int json = 0, o;
  char err[KVP_ERRLEN] = "";
  kvp_cert_rec *recs = NULL;
  size_t n = 0;
  chk_ctx c = {.t = t};
  chk_stores stores = {0};
  int rc = KVP_EXIT_ERROR;

  t->cmd = "check";
  opterr = 0;
  optind = 0;
  while ((o = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
    switch (o) {
    case 'a':
      if (account_opt)
        return kvp_tool_fail(t, KVP_EXIT_USAGE, "option '--account' given twice");
      account_opt = optarg;
      break;
    case 'j':
      json = 1;
      break;
    case 'h':
      check_help(stdout);
      return KVP_EXIT_OK;
    default:
      return kvp_tool_badopt(t, o, argv, "kvp11 check --help");
    }
  }
  if (optind < argc)
    return kvp_tool_fail(t, KVP_EXIT_USAGE, "unexpected argument '%s' (see kvp11 check --help)",
                         argv[optind]);

  if (kvp_tool_load_config(t) || kvp_tool_account(t, account_opt, &account) ||
      kvp_tool_open_registry_ro(t))
    return KVP_EXIT_ERROR;
  if (t->reg && kvp_registry_list(t->reg, account, &recs, &n, err, sizeof(err)) != KVP_OK)
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "%s", err);

  for (size_t i = 0; i < n && !c.oom; i++)
    check_cert(&c, &stores, &recs[i]);
  stores_free(&stores);
  if (c.oom) {
    kvp_tool_fail(t, KVP_EXIT_ERROR, "out of memory");
    goto out;
  }

  size_t nfail = 0, nwarn = 0;
  for (size_t i = 0; i < c.n; i++) {
    nfail += c.rows[i].result == R_FAIL;
    nwarn += c.rows[i].result == R_WARN;
  }
  if (json) {
    if (print_json(&c) != 0) {
      kvp_tool_fail(t, KVP_EXIT_ERROR, "cannot format the output");
      goto out;
    }
  } else if (n == 0) {
    printf("account '%s' has no certificates\n", account);
  } else {
    print_table(&c);
  }
  fflush(stdout);
  if (nfail) {
    kvp_tool_fail(t, KVP_EXIT_ERROR, "%zu of %zu checks failed%s", nfail, c.n,
                  kvp_tool_loghint(t));
    goto out;
  }
  if (nwarn)
    kvp_tool_warn(t, "%zu of %zu checks gave a warning", nwarn, c.n);
  rc = KVP_EXIT_OK;
out:
  for (size_t i = 0; i < c.n; i++)
    row_free(&c.rows[i]);
  free(c.rows);
  kvp_cert_rec_free_array(recs, n);
  return rc;
}
