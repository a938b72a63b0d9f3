/*
 * kvp11 check [--account A] [--warn-days N] [--json]: can every private
 * certificate use its key, and does any certificate expire soon?
 *
 * Every account (or --account A). For each private certificate the key store
 * is opened through the backend interface, as the module does, and probed
 * safely: a random digest is signed remotely and verified locally with the
 * certificate's public key; random bytes are encrypted locally and decrypted
 * remotely (RSA). Every certificate, partner ones included, is checked for
 * its validity: a warning within --warn-days (default 30) of its end, a
 * failure once it ended. Each check is one row (ACCOUNT, CERT, STORE, CHECK,
 * RESULT, DETAIL); a failure's detail is the reason the backend recorded
 * (core/status.h); a Key Vault permission that is missing comes with the
 * commands that grant it. Exit 0 all ok, 1 a check failed, 2 usage, 3
 * warnings only.
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
#include "core/status.h"
#include "core/util.h"
#include "tool.h"

#define CHK_WARN_DAYS 30
#define CHK_NFIX 3

enum { R_OK = 0, R_WARN, R_FAIL };
static const char *const result_names[] = {"ok", "warn", "fail"};

typedef struct chk_row {
  char *account, *cert, *store, *check, *detail;
  int result;
  char *fix[CHK_NFIX]; /* NULL when none */
} chk_row;

typedef struct chk_ctx {
  kvp_tool *t;
  chk_row *rows;
  size_t n, cap;
  int oom;
  int warn_days;
} chk_ctx;

static void row_free(chk_row *r)
{
  free(r->account);
  free(r->cert);
  free(r->store);
  free(r->check);
  free(r->detail);
  for (int i = 0; i < CHK_NFIX; i++)
    free(r->fix[i]);
}

/* Add a row; fix is NULL or CHK_NFIX commands (copied). */
static void add_res(chk_ctx *c, int result, const char *account, const char *cert,
                    const char *store, const char *check, char *const *fix, const char *detail)
{
  if (kvp_grow(&c->rows, c->n, &c->cap, sizeof(*c->rows), 16) != 0) {
    c->oom = 1;
    return;
  }
  chk_row *r = &c->rows[c->n];
  memset(r, 0, sizeof(*r));
  r->result = result;
  r->account = strdup(account);
  r->cert = strdup(cert);
  r->store = strdup(store);
  r->check = strdup(check);
  r->detail = strdup(detail);
  int bad = !r->account || !r->cert || !r->store || !r->check || !r->detail;
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

/* The three commands that grant what kvp11 uses on the vault: sign and decrypt at run
 * time, get to register (list is never needed). */
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
                  "-PermissionsToKeys decrypt,sign,get",
                  vault, who);
  fix[1] = fmtdup("az keyvault set-policy --name %s --spn %s --key-permissions decrypt sign get",
                  vault, who);
  fix[2] = fmtdup("az role assignment create --role \"Key Vault Crypto User\" --assignee %s "
                  "--scope /subscriptions/<subscription>/resourceGroups/%s"
                  "/providers/Microsoft.KeyVault/vaults/%s",
                  who, rg, vault);
  return fix[0] && fix[1] && fix[2] ? 0 : -1;
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
  /* Key Vault: the key as the vault reports it (read_vault_key) */
  char kbase[256];             /* the key's name without a version */
  const char *reg;             /* the registered version, NULL when unknown */
  kvp_key_info info;
  int have_info;
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
  add_res(k->c, result, k->rec->account, k->rec->name, k->store, check,
          with_fix && k->vc ? k->fix : NULL, detail);
}

/* The row of a sign or decrypt the key store refused or failed: the reason
 * the backend recorded; when the application lacks the vault permission for
 * op, the commands that grant it. */
static void op_failed(chk_cert *k, const char *op, CK_RV rv)
{
  const char *why = kvp_tool_reason(k->c->t, rv);
  char lacks[64];
  snprintf(lacks, sizeof(lacks), "lacks the '%s' permission", op);
  if (rv == CKR_KEY_FUNCTION_NOT_PERMITTED && k->vc && strstr(why, lacks))
    row(k, R_FAIL, op, 1, "refused: the application lacks the '%s' permission on the vault", op);
  else
    row(k, R_FAIL, op, 0, "%s: %s", rv == CKR_KEY_FUNCTION_NOT_PERMITTED ? "refused" : "failed",
        why);
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
  kvp_status_clear();
  CK_RV rv = kvp_backend_sign(key, &alg, dg, dlen, sig, &sig_len);
  if (rv == CKR_OK) {
    if (kvp_sig_verify(k->cpub, &alg, dg, dlen, sig, sig_len))
      row(k, R_OK, "sign", 0, "signed a random digest (%s); it verifies with the certificate's "
                              "public key",
          what);
    else
      row(k, R_FAIL, "sign", 0,
          "the key store signed, but the signature does not verify with the certificate's "
          "public key");
  } else {
    op_failed(k, "sign", rv);
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
  kvp_status_clear();
  CK_RV rv = kvp_backend_decrypt(key, &alg, ct, (CK_ULONG)ct_len, out, &out_len);
  if (rv == CKR_OK && out_len == sizeof(plain) && memcmp(out, plain, sizeof(plain)) == 0)
    row(k, R_OK, "decrypt", 0,
        "decrypted 32 random bytes encrypted with the certificate's public key (RSA-OAEP, "
        "SHA-1)");
  else if (rv == CKR_OK)
    row(k, R_FAIL, "decrypt", 0, "the key store decrypted something else than was encrypted");
  else if (rv == CKR_ENCRYPTED_DATA_INVALID)
    row(k, R_FAIL, "decrypt", 0,
        "the key store cannot decrypt what the certificate's public key encrypted: %s",
        kvp_tool_reason(k->c->t, rv));
  else
    op_failed(k, "decrypt", rv);
out:
  OPENSSL_cleanse(plain, sizeof(plain));
  if (out)
    OPENSSL_cleanse(out, n);
  free(out);
  free(ct);
  EVP_PKEY_CTX_free(ctx);
}

/* Key stores opened during this run, one per store (store.c). */
typedef struct chk_stores {
  kvp_tool_store *v;
  size_t n;
} chk_stores;

/* The opened store of this kind and name; NULL with the failure's text in why. */
static kvp_backend *store_get(kvp_tool *t, chk_stores *s, int is_hsm, const char *name, char *why,
                              size_t len)
{
  for (size_t i = 0; i < s->n; i++)
    if (s->v[i].is_hsm == is_hsm && strcmp(s->v[i].name, name) == 0)
      return s->v[i].be;
  kvp_tool_store *v = realloc(s->v, (s->n + 1) * sizeof(*v));
  if (!v) {
    snprintf(why, len, "out of memory");
    return NULL;
  }
  s->v = v;
  kvp_tool_store *st = &v[s->n];
  kvp_status_clear();
  if (kvp_tool_store_find(t, is_hsm, name, st) != KVP_EXIT_OK) {
    snprintf(why, len, "not configured");
    return NULL;
  }
  /* the tool's own error line is not wanted here: the reason goes into the row */
  CK_RV rv = kvp_tool_store_backend(st);
  if (rv != CKR_OK) {
    snprintf(why, len, "%s", kvp_tool_reason(t, rv));
    return NULL;
  }
  s->n++;
  return st->be;
}

static void stores_free(chk_stores *s)
{
  for (size_t i = 0; i < s->n; i++)
    kvp_tool_store_close(&s->v[i]);
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
    if (rec->state == KVP_STATE_RETIRED)
      row(k, R_WARN, "cert-validity", 0, "the retired certificate expired on %s (kvp11 cert "
          "remove it once no message encrypted to it is expected)", when);
    else
      row(k, R_FAIL, "cert-validity", 0, "the certificate expired on %s", when);
  } else if (rec->not_after - now < (int64_t)k->c->warn_days * 86400 &&
             rec->state != KVP_STATE_RETIRED) {
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
  const char *kind = k->vc ? "vault" : "hsm";
  const char *tok_ok = k->vc ? "the vault answers; an access token was obtained"
                             : "the token answers; the session is open";
  kvp_status_clear();
  CK_RV rv = kvp_backend_open_key(k->be, kname, NULL, &k->key);

  if (rv == CKR_OK && k->key && k->key->pub) {
    row(k, R_OK, "token", 0, "%s", tok_ok);
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
  if (rv == CKR_OK) /* a key without a public part: treat as a store failure */
    rv = CKR_GENERAL_ERROR;
  if (rv == CKR_KEY_HANDLE_INVALID) {
    row(k, R_OK, "token", 0, "%s", tok_ok);
    row(k, R_FAIL, k->vc ? "get" : "key", 0, "%s '%s' has no key '%s'", kind, k->be->name, kname);
    return 0;
  }
  if (rv == CKR_KEY_FUNCTION_NOT_PERMITTED && k->vc) {
    /* the vault answered with a token accepted: only reading the key was refused */
    row(k, R_OK, "token", 0, "%s", tok_ok);
    row(k, R_FAIL, "get", 1, "refused reading key '%s': %s", kname, kvp_tool_reason(t, rv));
    return 0;
  }
  /* the store itself is not usable: the backend's reason says why (no
   * answer, no token, wrong secret, module, token or PIN) */
  if (k->vc)
    row(k, R_FAIL, "token", 0, "cannot use the vault at %s: %s", k->vc->url, kvp_tool_reason(t, rv));
  else
    row(k, R_FAIL, "token", 0, "cannot use the HSM (module, token or PIN): %s",
        kvp_tool_reason(t, rv));
  return -1;
}

/* 'list' is not needed at run time (the module never lists): probed for the
 * record, a refusal is not a failure. */
static void check_list(chk_cert *k)
{
  char **names = NULL;
  size_t n = 0;
  kvp_status_clear();
  CK_RV rv = kvp_keyvault_list_keys(k->be, &names, &n);
  kvp_keyvault_free_names(names, n);
  if (rv == CKR_OK)
    row(k, R_OK, "list", 0, "listed the vault's keys (%zu)", n);
  else if (rv == CKR_KEY_FUNCTION_NOT_PERMITTED)
    row(k, R_OK, "list", 0, "no 'list' permission: not needed (kvp11 never lists at run time)");
  else
    row(k, R_WARN, "list", 0, "failed: %s (not needed at run time)", kvp_tool_reason(k->c->t, rv));
}

/* Key Vault: the key's current version as the vault reports it (version,
 * creation time, enabled, key_ops), read once for both the key-version and the
 * key-state row; the opened key tells only whether it can sign and decrypt
 * now. k->reg: the registered version, NULL when unknown. */
static void read_vault_key(chk_cert *k, const char *kname)
{
  snprintf(k->kbase, sizeof(k->kbase), "%.*s", (int)strcspn(kname, "/"), kname);
  k->reg = k->rec->key_version;
  if (!k->reg && strchr(kname, '/'))
    k->reg = strchr(kname, '/') + 1;
  if (!k->be->ops->key_info)
    return;
  kvp_status_clear();
  k->have_info = k->be->ops->key_info(k->be, k->kbase, &k->info) == CKR_OK;
}

/* Key Vault: a version of the key newer than the registered one exists (a
 * rotation in the vault whose certificate is not registered yet). */
static void check_version(chk_cert *k)
{
  const kvp_key_info *info = &k->info;
  char when[32];
  if (!k->reg || !k->have_info)
    return;
  if (info->version && strcmp(info->version, k->reg) != 0) {
    kvp_tool_isotime(info->created, when);
    row(k, R_WARN, "key-version", 0,
        "a newer version of key %s exists (created %s); its certificate is not registered "
        "(registered: version %s)",
        k->kbase, info->created ? when : "at an unknown time", k->reg);
  } else {
    row(k, R_OK, "key-version", 0, "the registered version %s is the key's current one", k->reg);
  }
}

/* Key Vault: the registered version's attributes as the vault reports them.
 * The key's current version speaks for the registered one only when they are
 * the same (check_version reports the other case). Returns 0 when reported,
 * -1 when the vault gave no answer for it. */
static int check_vault_key_state(chk_cert *k)
{
  const kvp_key_info *info = &k->info;
  const int rsa = k->key->type == KVP_KEY_RSA;

  if (!k->have_info || (k->reg && (!info->version || strcmp(info->version, k->reg) != 0)))
    return -1;
  if (!info->enabled)
    row(k, R_FAIL, "key-state", 0,
        "the vault does not let this key be used: disabled, outside its validity period "
        "(nbf/exp)");
  else if (!(info->ops & KVP_KEYOP_SIGN))
    row(k, R_FAIL, "key-state", 0, "the key cannot sign: no 'sign' in its key_ops");
  else if (rsa && !(info->ops & KVP_KEYOP_DECRYPT))
    row(k, R_WARN, "key-state", 0, "the key can sign but not decrypt (no 'decrypt' in its key_ops)");
  else
    row(k, R_OK, "key-state", 0, "enabled and within its validity period");
  return 0;
}

/* The key store's view of the key: enabled, within its validity, usable. */
static void check_key_state(chk_cert *k)
{
  const kvp_key *key = k->key;
  int rsa = key->type == KVP_KEY_RSA;
  if (k->vc && check_vault_key_state(k) == 0)
    return;
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

/* The public key the checks compare with: the certificate's, or for a key
 * registered without certificate its recorded one. NULL with a row on failure. */
static EVP_PKEY *cert_pub(chk_cert *k)
{
  EVP_PKEY *pk = kvp_tool_rec_pubkey(k->rec);
  if (!pk)
    row(k, R_FAIL, "cert-key", 0, k->rec->der_len ? "cannot read the certificate's public key"
                                                  : "cannot read the registered public key");
  return pk;
}

/* The key of a private certificate: store, key, permissions, a signature, a decryption. */
static void check_private(chk_cert *k, chk_stores *stores, const char *kname, int is_hsm,
                          const char *store)
{
  const kvp_cert_rec *rec = k->rec;
  kvp_tool *t = k->c->t;
  char why[KVP_STATUS_MSGLEN + 64];
  const kvp_hsm_conf *hc = is_hsm ? kvp_config_find_hsm(t->cfg, store) : NULL;
  k->vc = is_hsm ? NULL : kvp_config_find_vault(t->cfg, store);
  if (!hc && !k->vc) {
    row(k, R_FAIL, "store", 0, "%s '%s' is not configured in %s", is_hsm ? "hsm" : "vault", store,
        t->cfg->path);
    return;
  }
  if (k->vc && make_fixes(k->vc, rec, k->fix) != 0) {
    k->c->oom = 1;
    return;
  }
  if (!(k->be = store_get(t, stores, is_hsm, store, why, sizeof(why)))) {
    row(k, R_FAIL, "store", 0, "cannot use this key store: %s", why);
    return;
  }
  if (!(k->cpub = cert_pub(k)))
    return;
  int opened = check_open(k, kname);
  if (k->vc && opened >= 0)
    check_list(k); /* the token works: 'list' is a permission of its own */
  if (opened <= 0)
    return;
  if (k->vc) {
    read_vault_key(k, kname);
    check_version(k);
  }
  check_key_state(k);
  check_match(k);
  if (k->be->ops->needs_login && k->be->ops->needs_login(k->be)) {
    row(k, R_WARN, "sign", 0,
        "not checked: the HSM has no pin_file or pin_env (applications give their PIN)");
    return;
  }
  if (rec->state == KVP_STATE_RETIRED)
    row(k, R_OK, "sign", 0, "retired: decrypts only, never signs (not checked)");
  else
    check_sign(k);
  if (k->key->type == KVP_KEY_RSA)
    check_decrypt(k);
}

static void check_cert(chk_ctx *c, chk_stores *stores, const kvp_cert_rec *rec)
{
  chk_cert k = {.c = c, .rec = rec, .store = "-"};
  char err[KVP_ERRLEN] = "", sref[300];
  char *scheme = NULL, *store = NULL, *kname = NULL;

  if (rec->type == KVP_CERT_PRIVATE) {
    if (!rec->key_ref ||
        kvp_keyref_parse(rec->key_ref, &scheme, &store, &kname, err, sizeof(err)) != KVP_OK) {
      row(&k, R_FAIL, "store", 0, "bad key reference '%s': %s", rec->key_ref ? rec->key_ref : "",
          err);
    } else {
      snprintf(sref, sizeof(sref), "%s:%s", scheme, store);
      k.store = sref;
      check_private(&k, stores, kname, strcmp(scheme, "hsm") == 0, store);
    }
  }
  if (rec->der_len == 0)
    row(&k, R_WARN, "cert-validity", 0,
        "no certificate yet: kvp11 csr --cert-name %s, then kvp11 cert add --name %s", rec->name,
        rec->name);
  else
    check_validity(&k);
  EVP_PKEY_free(k.cpub);
  kvp_key_info_clear(&k.info);
  if (k.key)
    k.be->ops->close_key(k.be, k.key);
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
    bad = bad || json_object_set_new(o, "account", json_string(r->account)) ||
          json_object_set_new(o, "cert", json_string(r->cert)) ||
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
    if ((size_t)kvp_tool_width(s) > w)
      w = (size_t)kvp_tool_width(s);
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
  int wa = col_width(c, offsetof(chk_row, account), "ACCOUNT");
  int wc = col_width(c, offsetof(chk_row, cert), "CERT");
  int ws = col_width(c, offsetof(chk_row, store), "STORE");
  int wk = col_width(c, offsetof(chk_row, check), "CHECK");
  printf("%-*s  %-*s  %-*s  %-*s  %-6s  %s\n", wa, "ACCOUNT", wc, "CERT", ws, "STORE", wk, "CHECK",
         "RESULT", "DETAIL");
  for (size_t i = 0; i < c->n; i++) {
    const chk_row *r = &c->rows[i];
    kvp_tool_cell(stdout, r->account, wa + 2);
    kvp_tool_cell(stdout, r->cert, wc + 2);
    printf("%-*s  %-*s  %-6s  %s\n", ws, r->store, wk, r->check, result_names[r->result],
           r->detail);
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
  fprintf(f, "  kvp11 [-c FILE] check [--account A] [--warn-days N] [--json]\n");
}

static void check_help(FILE *f)
{
  fprintf(f,
          "usage: kvp11 [-c FILE] check [--account A] [--warn-days N] [--json]\n"
          "\n"
          "Every account (or --account A). For every private certificate: the key store\n"
          "answers and a token is obtained, the key exists and can be read (Key Vault: get;\n"
          "a missing 'list' is reported as not needed; a newer key version whose\n"
          "certificate is not registered is a warning), a random digest is signed and\n"
          "verified with the certificate, random bytes encrypted with the certificate are\n"
          "decrypted (RSA), the key is enabled and within its validity, the certificate\n"
          "matches the key. For every certificate, partners' included: a warning within N\n"
          "days of its end, a failure once it ended. A missing Key Vault permission is\n"
          "shown with the commands that grant it.\n"
          "\n"
          "  --account A     only this account\n"
          "  --warn-days N   warn this many days before a certificate ends (default %d)\n"
          "  --json          a JSON array of {account, cert, store, check, result, detail, fix}\n"
          "\n"
          "Exit status (for monitoring): 0 every check ok, 1 a check failed, 2 usage error,\n"
          "3 warnings only.\n",
          CHK_WARN_DAYS);
}

static int check_args(kvp_tool *t, int argc, char **argv, const char **account, int *warn_days,
                      int *json)
{
  static const struct option opts[] = {
      {"account", required_argument, NULL, 'a'},
      {"json", no_argument, NULL, 'j'},
      {"warn-days", required_argument, NULL, 'w'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  const char *wd = NULL;
  char *end = NULL;
  int o;
  opterr = 0;
  optind = 0;
  while ((o = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
    if ((o == 'a' && *account) || (o == 'w' && wd))
      return kvp_tool_fail(t, KVP_EXIT_USAGE, "option '--%s' given twice",
                           o == 'a' ? "account" : "warn-days");
    if (o == 'a')
      *account = optarg;
    else if (o == 'w')
      wd = optarg;
    else if (o == 'j')
      *json = 1;
    else if (o == 'h') {
      check_help(stdout);
      return KVP_EXIT_OK;
    } else
      return kvp_tool_badopt(t, o, argv, "kvp11 check --help");
  }
  if (optind < argc)
    return kvp_tool_fail(t, KVP_EXIT_USAGE, "unexpected argument '%s' (see kvp11 check --help)",
                         argv[optind]);
  long v = wd ? strtol(wd, &end, 10) : CHK_WARN_DAYS;
  if (wd && (!*wd || *end || v < 0 || v > 3650))
    return kvp_tool_fail(t, KVP_EXIT_USAGE, "bad --warn-days '%s': a number of days (0 to 3650)",
                         wd);
  *warn_days = (int)v;
  return -1;
}

/* The rows of every configured account (or one), in configuration order. */
static int check_rows(kvp_tool *t, const char *account, kvp_cert_rec **recs, size_t *n)
{
  char err[KVP_ERRLEN] = "";
  kvp_cert_rec *all = NULL;
  size_t na = 0, k = 0;
  *recs = NULL;
  *n = 0;
  if (!t->reg)
    return KVP_EXIT_OK;
  if (kvp_registry_list(t->reg, account, &all, &na, err, sizeof(err)) != KVP_OK)
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "%s", err);
  /* rows of accounts no longer configured are not checked */
  for (size_t i = 0; i < na; i++)
    if (account || kvp_config_find_account(t->cfg, all[i].account) || t->cfg->n_accounts == 0)
      all[k++] = all[i];
    else
      kvp_cert_rec_clear(&all[i]);
  *recs = all;
  *n = k;
  return KVP_EXIT_OK;
}

int kvp_tool_check(kvp_tool *t, int argc, char **argv)
{
  const char *account_opt = NULL, *account = NULL;
  int json = 0, warn_days = CHK_WARN_DAYS;
  kvp_cert_rec *recs = NULL;
  size_t n = 0;
  chk_ctx c = {.t = t};
  chk_stores stores = {0};
  int rc;

  t->cmd = "check";
  if ((rc = check_args(t, argc, argv, &account_opt, &warn_days, &json)) >= 0)
    return rc;
  c.warn_days = warn_days;
  rc = KVP_EXIT_ERROR;
  if (kvp_tool_load_config(t) || (account_opt && kvp_tool_account(t, account_opt, &account)) ||
      kvp_tool_open_registry_ro(t) || check_rows(t, account, &recs, &n))
    return KVP_EXIT_ERROR;

  for (size_t i = 0; i < n && !c.oom; i++)
    check_cert(&c, &stores, &recs[i]);
  stores_free(&stores);
  kvp_status_clear();
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
    if (account)
      printf("account '%s' has no certificates\n", account);
    else
      printf("no certificates registered\n");
  } else {
    print_table(&c);
  }
  fflush(stdout);
  if (nfail) {
    kvp_tool_fail(t, KVP_EXIT_ERROR, "%zu of %zu checks failed%s", nfail, c.n,
                  kvp_tool_loghint(t));
    goto out;
  }
  rc = KVP_EXIT_OK;
  if (nwarn) {
    kvp_tool_warn(t, "%zu of %zu checks gave a warning", nwarn, c.n);
    rc = KVP_EXIT_WARN;
  }
out:
  for (size_t i = 0; i < c.n; i++)
    row_free(&c.rows[i]);
  free(c.rows);
  kvp_cert_rec_free_array(recs, n);
  return rc;
}
