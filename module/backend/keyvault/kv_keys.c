/*
 * Keys: open, the cache of key versions, and their live state.
 *
 * Open. With the registry's hint (the version checked at registration and
 * the key's SubjectPublicKeyInfo) a key opens without any request: the key
 * version is the registered one (rotation in the vault changes nothing
 * until the admin registers the new certificate) and the public key is the
 * registered one. Without a SPKI the version is read once (GET
 * /keys/NAME/VERSION); without any version the latest is resolved (GET
 * /keys/NAME, again after KV_KEY_TTL_MS), as older registry rows need.
 *
 * State. enabled, nbf, exp and key_ops are a cache, not a verdict. nbf and
 * exp are compared with the clock at every operation. A local refusal is
 * re-checked with the vault at most once per key_cache_s: a GET of the
 * version when the principal may get keys, otherwise the operation itself
 * goes to the vault and its answer decides. A 403 from the vault refreshes
 * the state. Each refusal logs its precise cause at error level once per
 * change of cause (then at debug level), and records it as the thread's
 * status reason.
 */
#include "backend/keyvault/kv.h"
#include "backend/keyvault/keyvault.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/x509.h>

#include "core/log.h"
#include "core/status.h"
#include "core/util.h"

/* ---- the name rule ---- */

int kvp_keyvault_name_valid(const char *name)
{
  size_t i;
  if (name == NULL || name[0] == '\0')
    return 0;
  for (i = 0; name[i] != '\0'; i++)
    if (i >= 127 || (!isalnum((unsigned char)name[i]) && name[i] != '-'))
      return 0;
  return 1;
}

int kvp_keyvault_version_valid(const char *v)
{
  size_t i;
  if (v == NULL || v[0] == '\0')
    return 0;
  for (i = 0; v[i] != '\0'; i++)
    if (i >= 64 || !isalnum((unsigned char)v[i]))
      return 0;
  return 1;
}

/* "KEY" or "KEY/VERSION" */
static int kv_ref_parse(const char *ref, char **name, char **version)
{
  const char *slash = strchr(ref, '/');
  *name = slash != NULL ? strndup(ref, (size_t)(slash - ref)) : strdup(ref);
  *version = slash != NULL ? strdup(slash + 1) : NULL;
  if (*name == NULL || !kvp_keyvault_name_valid(*name) ||
      (slash != NULL && (*version == NULL || !kvp_keyvault_version_valid(*version)))) {
    free(*name);
    free(*version);
    *name = *version = NULL;
    return -1;
  }
  return 0;
}

/* ---- the cache (entries are reference counted under b->lock) ---- */

static void kv_entry_unref(kv_cached_key *c)
{
  if (c == NULL || --c->refs > 0)
    return;
  kv_verifier_free(c->verifier);
  EVP_PKEY_free(c->pub);
  KVP_FREE_ALL(c->ref, c->name, c->version, c);
}

/* Take c out of the list (lock held). */
static void kv_entry_unlink(kv_backend *b, kv_cached_key *c)
{
  kv_cached_key **pp;
  for (pp = &b->keys; *pp != NULL; pp = &(*pp)->next) {
    if (*pp == c) {
      *pp = c->next;
      c->next = NULL;
      kv_entry_unref(c);
      return;
    }
  }
}

void kv_cache_drop(kv_backend *b, const char *name)
{
  kv_cached_key *c, *n;
  pthread_mutex_lock(&b->lock);
  for (c = b->keys; c != NULL; c = n) {
    n = c->next;
    if (strcasecmp(c->name, name) == 0)
      kv_entry_unlink(b, c);
  }
  pthread_mutex_unlock(&b->lock);
}

void kv_key_cache_free(kv_backend *b, int forked)
{
  kv_cached_key *c, *n;
  (void)forked;
  for (c = b->keys; c != NULL; c = n) {
    n = c->next;
    c->next = NULL;
    kv_entry_unref(c);
  }
  b->keys = NULL;
}

/* A new entry for NAME/VERSION with public key pub (taken over). */
static kv_cached_key *kv_entry_new(const char *ref, const char *name, const char *version,
                                   EVP_PKEY *pub)
{
  kv_cached_key *c = calloc(1, sizeof(*c));
  kvp_key shape;
  if (c == NULL) {
    EVP_PKEY_free(pub);
    return NULL;
  }
  c->refs = 1;
  c->pub = pub;
  c->ref = strdup(ref);
  c->name = strdup(name);
  c->version = strdup(version);
  memset(&shape, 0, sizeof(shape));
  shape.pub = pub;
  if (c->ref == NULL || c->name == NULL || c->version == NULL || pub == NULL ||
      kvp_key_fill_from_pub(&shape) != CKR_OK || (c->verifier = kv_verifier_new(pub)) == NULL) {
    kv_entry_unref(c);
    return NULL;
  }
  c->type = shape.type;
  c->bits = shape.bits;
  c->curve_nid = shape.curve_nid;
  c->fetched_ms = kv_now_ms();
  c->ops = ~0u; /* until the vault says otherwise: what the key type allows */
  c->enabled = 1;
  return c;
}

static void kv_entry_set_state(kv_cached_key *c, const kv_key_info *info)
{
  c->state_known = 1;
  c->ops = info->ops;
  c->enabled = info->enabled;
  c->nbf = info->nbf;
  c->exp = info->exp;
  c->checked_ms = kv_now_ms();
}

/* Put c into the list, replacing an entry with the same ref (lock held). */
static void kv_entry_insert(kv_backend *b, kv_cached_key *c)
{
  kv_cached_key *o, *n;
  for (o = b->keys; o != NULL; o = n) {
    n = o->next;
    if (strcmp(o->ref, c->ref) == 0)
      kv_entry_unlink(b, o);
  }
  c->next = b->keys;
  b->keys = c;
}

static kv_cause kv_state_cause(const kv_cached_key *c, unsigned op, int64_t now_s, int64_t *t);

/*
 * The kvp_key handed to the front, holding a reference to c (lock held).
 * live: opened by the module (with the registry's hint): can_sign/can_decrypt
 * say what the key type and key_ops allow, and enabled/nbf/exp are checked at
 * each operation, so that a key refused now signs once it is allowed again.
 * Opened without a hint (the tool: cert add, check): they say what the vault
 * allows at this moment.
 */
static CK_RV kv_make_key(kv_backend *b, const char *ref, kv_cached_key *c, int live,
                         kvp_key **out)
{
  int64_t t;
  kvp_key *k = calloc(1, sizeof(*k));
  if (k == NULL || (k->name = strdup(ref)) == NULL || (k->version = strdup(c->version)) == NULL ||
      EVP_PKEY_up_ref(c->pub) != 1) {
    if (k != NULL) {
      free(k->name);
      free(k->version);
    }
    free(k);
    return CKR_HOST_MEMORY;
  }
  k->backend = &b->base;
  k->pub = c->pub;
  k->type = c->type;
  k->bits = c->bits;
  k->curve_nid = c->curve_nid;
  /* what the key type and key_ops allow; enabled, nbf and exp are checked at
   * each operation (kv_state_gate), so a key opened while disabled signs once
   * it is enabled again */
  k->can_sign = !c->state_known || (c->ops & KV_OP_SIGN) != 0;
  k->can_decrypt = c->type == KVP_KEY_RSA && (!c->state_known || (c->ops & KV_OP_DECRYPT) != 0);
  if (!live) {
    k->can_sign = kv_state_cause(c, KV_OP_SIGN, kv_wall_s(), &t) == KV_CAUSE_NONE;
    k->can_decrypt = c->type == KVP_KEY_RSA &&
                     kv_state_cause(c, KV_OP_DECRYPT, kv_wall_s(), &t) == KV_CAUSE_NONE;
  }
  k->private_obj = 0;
  c->refs++;
  k->impl = c;
  *out = k;
  return CKR_OK;
}

static char *kv_version_url(kv_backend *b, const char *name, const char *version)
{
  size_t len = strlen(b->base_url) + strlen(name) + (version ? strlen(version) : 0) +
               strlen(b->conf.api_version) + 32;
  char *url = malloc(len);
  if (url != NULL)
    snprintf(url, len, "%s/keys/%s%s%s?api-version=%s", b->base_url, name, version ? "/" : "",
             version ? version : "", b->conf.api_version);
  return url;
}

/* GET /keys/NAME[/VERSION]: the version's public key and state. */
static CK_RV kv_fetch_key(kv_backend *b, kv_call_kind kind, const char *ref, const char *name,
                          const char *version, kv_key_info *info)
{
  kv_resp resp;
  char *url = kv_version_url(b, name, version), err[KVP_ERRLEN];
  CK_RV rv;

  memset(info, 0, sizeof(*info));
  memset(&resp, 0, sizeof(resp));
  kv_resp_clear(&resp, 0);
  if (url == NULL)
    return CKR_HOST_MEMORY;
  rv = kv_call(b, kind, ref, "GET", url, NULL, &resp);
  if (rv == CKR_OK && kv_key_bundle_parse(resp.json, info, err, sizeof(err)) != 0)
    rv = kvp_fail(CKR_DEVICE_ERROR, "vault %s: key %s: %s (x-ms-request-id %s)", b->conf.name,
                  ref, err, resp.request_id);
  if (rv == CKR_OK && (strcasecmp(info->name, name) != 0 ||
                       (version != NULL && strcasecmp(info->version, version) != 0))) {
    rv = kvp_fail(CKR_DEVICE_ERROR,
                  "vault %s: key %s: the service answered with key %s/%s (x-ms-request-id %s)",
                  b->conf.name, ref, info->name, info->version, resp.request_id);
    kv_key_info_clear(info);
  }
  kv_resp_clear(&resp, 0);
  free(url);
  return rv;
}

/* The cached entry for ref, still fresh (lock held). */
static kv_cached_key *kv_cache_find(kv_backend *b, const char *ref, int versioned, int any_age)
{
  kv_cached_key *c;
  int64_t now = kv_now_ms();
  for (c = b->keys; c != NULL; c = c->next)
    if (strcmp(c->ref, ref) == 0 &&
        (versioned || any_age || now - c->fetched_ms < b->key_ttl_ms))
      return c;
  return NULL;
}

/* The registered public key as the entry of NAME/VERSION (no request). */
static kv_cached_key *kv_entry_from_hint(const char *ref, const char *name, const char *version,
                                         const kvp_key_ref_hint *hint)
{
  const unsigned char *p = hint->spki;
  EVP_PKEY *pub = d2i_PUBKEY(NULL, &p, (long)hint->spki_len);
  if (pub == NULL)
    return NULL;
  return kv_entry_new(ref, name, version, pub);
}

static CK_RV kv_open_fetch(kv_backend *b, const char *ref, const char *name, const char *version,
                           kv_cached_key **out)
{
  kv_key_info info;
  kv_cached_key *c;
  CK_RV rv = kv_fetch_key(b, KV_CALL_GET, ref, name, version, &info);
  *out = NULL;
  if (rv != CKR_OK)
    return rv;
  if (!info.enabled)
    KVP_WARN("vault %s: key %s is disabled", b->conf.name, ref);
  c = kv_entry_new(ref, name, info.version, info.pub);
  info.pub = NULL;
  if (c == NULL) {
    kv_key_info_clear(&info);
    return kvp_fail(CKR_KEY_TYPE_INCONSISTENT,
                    "vault %s: key %s: unsupported key type or curve", b->conf.name, ref);
  }
  kv_entry_set_state(c, &info);
  kv_key_info_clear(&info);
  *out = c;
  return CKR_OK;
}

CK_RV kv_open_key_hint(kvp_backend *be, const char *ref, const kvp_key_ref_hint *hint,
                       kvp_key **out)
{
  kv_backend *b = (kv_backend *)be;
  kv_cached_key *c = NULL;
  char *name = NULL, *version = NULL, *ckey = NULL;
  CK_RV rv;

  *out = NULL;
  if (ref == NULL || kv_ref_parse(ref, &name, &version) != 0)
    return kvp_fail(CKR_KEY_HANDLE_INVALID,
                    "vault %s: '%.140s' is not a key name (KEY or KEY/VERSION, letters, digits, "
                    "'-')",
                    b->conf.name, ref != NULL ? ref : "");
  if (version == NULL && hint != NULL && hint->version != NULL) {
    if (!kvp_keyvault_version_valid(hint->version)) {
      rv = kvp_fail(CKR_KEY_HANDLE_INVALID, "vault %s: key %s: registered version '%.70s' is "
                    "not a Key Vault key version", b->conf.name, ref, hint->version);
      goto out;
    }
    version = strdup(hint->version);
    if (version == NULL) {
      rv = CKR_HOST_MEMORY;
      goto out;
    }
  }
  ckey = malloc(strlen(name) + (version ? strlen(version) : 0) + 2);
  if (ckey == NULL) {
    rv = CKR_HOST_MEMORY;
    goto out;
  }
  sprintf(ckey, "%s%s%s", name, version ? "/" : "", version ? version : "");

  pthread_mutex_lock(&b->lock);
  c = kv_cache_find(b, ckey, version != NULL, 0);
  if (c != NULL) {
    rv = kv_make_key(b, ref, c, hint != NULL, out);
    pthread_mutex_unlock(&b->lock);
    goto out;
  }
  pthread_mutex_unlock(&b->lock);

  if (version != NULL && hint != NULL && hint->spki != NULL)
    c = kv_entry_from_hint(ckey, name, version, hint);
  if (c != NULL) {
    rv = CKR_OK;
    KVP_DEBUG("vault %s: key %s: opened from the registry (version %s), no request",
              b->conf.name, ref, version);
  } else {
    rv = kv_open_fetch(b, ckey, name, version, &c);
  }
  pthread_mutex_lock(&b->lock);
  if (rv == CKR_DEVICE_ERROR && (c = kv_cache_find(b, ckey, 1, 1)) != NULL) {
    /* the vault is unreachable or throttling: the last answer is still the
     * best one (a version's key material does not change) */
    KVP_WARN("vault %s: key %s: using the cached public key (%lld s old)", b->conf.name, ref,
             (long long)((kv_now_ms() - c->fetched_ms) / 1000));
    rv = kv_make_key(b, ref, c, hint != NULL, out);
  } else if (rv == CKR_OK) {
    kv_entry_insert(b, c);
    rv = kv_make_key(b, ref, c, hint != NULL, out);
  }
  pthread_mutex_unlock(&b->lock);
  if (rv == CKR_KEY_HANDLE_INVALID)
    kv_cache_drop(b, name);
  if (rv == CKR_OK)
    KVP_DEBUG("vault %s: key %s opened (version %s)", b->conf.name, ref, (*out)->version);
out:
  free(ckey);
  free(name);
  free(version);
  return rv;
}

CK_RV kv_open_key(kvp_backend *be, const char *ref, kvp_key **out)
{
  return kv_open_key_hint(be, ref, NULL, out);
}

void kv_close_key(kvp_backend *be, kvp_key *key)
{
  kv_backend *b = (kv_backend *)be;
  if (key == NULL)
    return;
  if (key->impl != NULL) {
    pthread_mutex_lock(&b->lock);
    kv_entry_unref(key->impl);
    pthread_mutex_unlock(&b->lock);
  }
  EVP_PKEY_free(key->pub);
  free(key->name);
  free(key->version);
  free(key);
}

/* ---- live state ---- */

static void kv_utc(int64_t t, char *buf, size_t len)
{
  time_t tt = (time_t)t;
  struct tm tm;
  if (gmtime_r(&tt, &tm) == NULL || strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
    snprintf(buf, len, "%lld", (long long)t);
}

/* "the key AT WHEN (CLAIM)" when the time t is known, else "the key PLAIN (CLAIM)". */
static void time_bound(char *buf, size_t len, int64_t t, const char *when, const char *at,
                       const char *plain, const char *claim)
{
  if (t > 0)
    snprintf(buf, len, "the key %s %s (%s)", at, when, claim);
  else
    snprintf(buf, len, "the key %s (%s)", plain, claim);
}

void kv_cause_text(kv_cause c, const char *perm, int64_t t, char *buf, size_t len)
{
  char when[40];
  kv_utc(t, when, sizeof(when));
  switch (c) {
  case KV_CAUSE_DISABLED: snprintf(buf, len, "the key is disabled"); break;
  case KV_CAUSE_NOT_YET_VALID:
    time_bound(buf, len, t, when, "is not valid before", "is not yet valid", "nbf");
    break;
  case KV_CAUSE_EXPIRED: time_bound(buf, len, t, when, "expired at", "is expired", "exp"); break;
  case KV_CAUSE_KEY_OPS: snprintf(buf, len, "the key's key_ops do not allow '%s'", perm); break;
  case KV_CAUSE_PERMISSION:
    snprintf(buf, len, "the application lacks the '%s' permission", perm);
    break;
  case KV_CAUSE_FIREWALL: snprintf(buf, len, "the vault's firewall refuses this client"); break;
  default: snprintf(buf, len, "the vault refuses '%s' with this key", perm); break;
  }
}

/* What the cached state says about op now (lock held); *t: the nbf/exp in question. */
static kv_cause kv_state_cause(const kv_cached_key *c, unsigned op, int64_t now_s, int64_t *t)
{
  *t = 0;
  if (!c->state_known)
    return KV_CAUSE_NONE;
  if (!c->enabled)
    return KV_CAUSE_DISABLED;
  if (!(c->ops & op))
    return KV_CAUSE_KEY_OPS;
  if (op == KV_OP_SIGN && c->nbf != 0 && now_s < c->nbf) {
    *t = c->nbf;
    return KV_CAUSE_NOT_YET_VALID;
  }
  if (op == KV_OP_SIGN && c->exp != 0 && now_s >= c->exp) {
    *t = c->exp;
    return KV_CAUSE_EXPIRED;
  }
  return KV_CAUSE_NONE;
}

/* The cause that refuses op locally (lock held), or NONE. */
static kv_cause kv_local_cause(kv_backend *b, const kv_cached_key *c, unsigned op, int64_t *t)
{
  int i = op == KV_OP_SIGN ? 0 : 1;
  kv_cause k = kv_state_cause(c, op, kv_wall_s(), t);
  if (k != KV_CAUSE_NONE)
    return k;
  if (c->refused[i] != KV_CAUSE_NONE && kv_now_ms() - c->refused_ms[i] < b->state_ms)
    return c->refused[i];
  return KV_CAUSE_NONE;
}

/* Log a refusal: at error level when its cause changed, else at debug level. */
static CK_RV kv_refuse(kv_backend *b, kvp_key *key, unsigned op, kv_cause cause, int64_t t)
{
  kv_cached_key *c = key->impl;
  int i = op == KV_OP_SIGN ? 0 : 1, changed;
  const char *perm = op == KV_OP_SIGN ? "sign" : "decrypt";
  char why[160];

  pthread_mutex_lock(&b->lock);
  changed = c->logged[i] != cause || c->logged_t[i] != t;
  c->logged[i] = cause;
  c->logged_t[i] = t;
  pthread_mutex_unlock(&b->lock);
  kv_cause_text(cause, perm, t, why, sizeof(why));
  /* logged here (once per change of cause), recorded as the thread's reason */
  if (changed)
    KVP_ERROR("vault %s: key %s: %s refused: %s", b->conf.name, key->name, perm, why);
  else
    KVP_DEBUG("vault %s: key %s: %s refused: %s", b->conf.name, key->name, perm, why);
  return kvp_fail_at(-1, CKR_KEY_FUNCTION_NOT_PERMITTED, "vault %s: key %s: %s refused: %s",
                     b->conf.name, key->name, perm, why);
}

/* Re-read the version's state from the vault (when the principal may). 1: read. */
static int kv_state_refresh(kv_backend *b, kv_cached_key *c)
{
  kv_key_info info;
  kvp_status saved;
  CK_RV rv;
  int no_get;

  pthread_mutex_lock(&b->lock);
  no_get = b->no_get;
  pthread_mutex_unlock(&b->lock);
  if (no_get)
    return 0;
  kvp_status_get(&saved);
  rv = kv_fetch_key(b, KV_CALL_STATE, c->ref, c->name, c->version, &info);
  pthread_mutex_lock(&b->lock);
  if (rv == CKR_OK) {
    kv_entry_set_state(c, &info);
    c->refused[0] = c->refused[1] = KV_CAUSE_NONE;
  } else if (rv == CKR_KEY_FUNCTION_NOT_PERMITTED) {
    b->no_get = 1; /* a sign/decrypt-only principal: the operations' answers decide */
  }
  pthread_mutex_unlock(&b->lock);
  kv_key_info_clear(&info);
  /* the state read is a side errand: its failure is not the operation's reason */
  kvp_status_clear();
  kvp_status_set(&saved);
  return rv == CKR_OK;
}

CK_RV kv_state_gate(kv_backend *b, kvp_key *key, unsigned op)
{
  kv_cached_key *c = key->impl;
  kv_cause cause;
  int64_t t, age;

  pthread_mutex_lock(&b->lock);
  cause = kv_local_cause(b, c, op, &t);
  age = kv_now_ms() - c->checked_ms;
  if (cause != KV_CAUSE_NONE && age >= b->state_ms)
    c->checked_ms = kv_now_ms(); /* this thread asks the vault; the others refuse meanwhile */
  pthread_mutex_unlock(&b->lock);
  if (cause == KV_CAUSE_NONE)
    return CKR_OK;
  if (age < b->state_ms)
    return kv_refuse(b, key, op, cause, t);
  /* the refusal is older than key_cache_s: ask the vault again */
  if (kv_state_refresh(b, c)) {
    pthread_mutex_lock(&b->lock);
    cause = kv_local_cause(b, c, op, &t);
    pthread_mutex_unlock(&b->lock);
    return cause == KV_CAUSE_NONE ? CKR_OK : kv_refuse(b, key, op, cause, t);
  }
  /* no 'get': the operation itself asks (its 403 refreshes the refusal) */
  pthread_mutex_lock(&b->lock);
  c->checked_ms = kv_now_ms();
  c->state_known = 0;
  c->refused[op == KV_OP_SIGN ? 0 : 1] = KV_CAUSE_NONE;
  pthread_mutex_unlock(&b->lock);
  return CKR_OK;
}

void kv_state_after(kv_backend *b, kvp_key *key, unsigned op, CK_RV rv, const kv_resp *resp)
{
  kv_cached_key *c = key->impl;
  int i = op == KV_OP_SIGN ? 0 : 1;
  kv_error_info ei;
  kv_cause cause;
  int64_t t = 0;

  if (rv == CKR_OK) {
    pthread_mutex_lock(&b->lock);
    c->logged[i] = KV_CAUSE_NONE;
    c->refused[i] = KV_CAUSE_NONE;
    pthread_mutex_unlock(&b->lock);
    return;
  }
  if (rv != CKR_KEY_FUNCTION_NOT_PERMITTED || resp->status != 403)
    return;
  kv_error_parse(resp, &ei);
  cause = kv_forbidden_cause(&ei);
  /* a 403 refreshes the state: the precise cause (with nbf/exp) when the principal may get */
  if (cause != KV_CAUSE_PERMISSION && cause != KV_CAUSE_FIREWALL && kv_state_refresh(b, c)) {
    pthread_mutex_lock(&b->lock);
    kv_cause now = kv_state_cause(c, op, kv_wall_s(), &t);
    pthread_mutex_unlock(&b->lock);
    if (now != KV_CAUSE_NONE)
      cause = now;
  }
  pthread_mutex_lock(&b->lock);
  c->refused[i] = cause;
  c->refused_ms[i] = c->checked_ms = kv_now_ms();
  pthread_mutex_unlock(&b->lock);
  kvp_status_clear(); /* the precise cause replaces the 403's words */
  kv_refuse(b, key, op, cause, t);
}
