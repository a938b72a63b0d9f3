/*
 * The lazy object layer: objects are made from registry rows when an
 * application first asks for them (C_FindObjects, or a handle it kept), and
 * kept in a bounded cache. Nothing here reads all rows: searches by
 * CKA_LABEL, CKA_ID or class run indexed registry queries, and any other
 * template walks the account's rows in id order, a batch per C_FindObjects
 * call that needs one.
 *
 * Handles are row id << 2 | kind, so a handle stays valid as long as its row
 * exists, whether or not its object is cached. The cache is made current by
 * the incremental reload (state.c): the rows changed or removed since the last
 * look lose their objects.
 *
 * Locks: registry queries run under g.reg_lock only, certificates are parsed
 * with no lock held, and g.lock is taken only to look up, insert or drop
 * cache entries.
 */
#include "pkcs11/internal.h"

#include <stdlib.h>
#include <string.h>

#include "core/cert.h"
#include "core/log.h"
#include "core/status.h"
#include "core/util.h"

/* Rows read per registry query of a search. */
#define FIND_BATCH 64

/* ---- the cache (g.lock) ------------------------------------------------ */

static size_t bucket_of(CK_OBJECT_HANDLE h)
{
  uint64_t x = (uint64_t)h * 0x9E3779B97F4A7C15ULL;
  return (size_t)(x >> 40) & (KVP_CACHE_BUCKETS - 1);
}

kvp_object *kvp_cache_lookup_locked(CK_OBJECT_HANDLE h)
{
  kvp_objcache *c = &kvp_g.cache;

  if (c->buckets == NULL)
    return NULL;
  for (kvp_object *o = c->buckets[bucket_of(h)]; o != NULL; o = o->hnext) {
    if (o->handle == h) {
      if (!atomic_load_explicit(&o->used, memory_order_relaxed))
        atomic_store_explicit(&o->used, 1, memory_order_relaxed);
      return o;
    }
  }
  return NULL;
}

/* Unlink o from the cache and chain it on *garbage (its cache reference goes with it). */
static void cache_unlink_locked(kvp_object *o, kvp_object **garbage)
{
  kvp_objcache *c = &kvp_g.cache;
  kvp_object **pp = &c->buckets[bucket_of(o->handle)];

  while (*pp != o)
    pp = &(*pp)->hnext;
  *pp = o->hnext;
  if (o->prev != NULL)
    o->prev->next = o->next;
  else
    c->head = o->next;
  if (o->next != NULL)
    o->next->prev = o->prev;
  else
    c->tail = o->prev;
  o->prev = o->next = NULL;
  c->count--;
  o->hnext = *garbage;
  *garbage = o;
}

static void cache_append_locked(kvp_object *o)
{
  kvp_objcache *c = &kvp_g.cache;

  o->next = NULL;
  o->prev = c->tail;
  if (c->tail != NULL)
    c->tail->next = o;
  else
    c->head = o;
  c->tail = o;
}

/* A private key whose backend key is open stays: opening it again costs a round trip. */
static int pinned(const kvp_object *o)
{
  return __atomic_load_n(&o->key, __ATOMIC_ACQUIRE) != NULL;
}

/* Clock: the first object not used since the hand last passed goes. */
static void cache_evict_locked(kvp_object **garbage)
{
  kvp_objcache *c = &kvp_g.cache;

  for (size_t steps = c->count; c->count > KVP_CACHE_MAX && steps > 0; steps--) {
    kvp_object *o = c->head;
    if (!pinned(o) && !atomic_load_explicit(&o->used, memory_order_relaxed)) {
      cache_unlink_locked(o, garbage);
      continue;
    }
    atomic_store_explicit(&o->used, 0, memory_order_relaxed);
    if (o->next == NULL)
      break;
    c->head = o->next;
    c->head->prev = NULL;
    c->tail->next = o;
    o->prev = c->tail;
    o->next = NULL;
    c->tail = o;
  }
}

/* Insert o (the cache takes a reference), replacing an entry of the same handle. */
static int cache_insert_locked(kvp_object *o, kvp_object **garbage)
{
  kvp_objcache *c = &kvp_g.cache;
  kvp_object *old;
  size_t b;

  if (c->buckets == NULL && (c->buckets = calloc(KVP_CACHE_BUCKETS, sizeof(*c->buckets))) == NULL)
    return -1;
  if ((old = kvp_cache_lookup_locked(o->handle)) == o)
    return 0;
  if (old != NULL)
    cache_unlink_locked(old, garbage);
  b = bucket_of(o->handle);
  atomic_fetch_add(&o->refs, 1);
  atomic_store_explicit(&o->used, 1, memory_order_relaxed);
  o->hnext = c->buckets[b];
  c->buckets[b] = o;
  cache_append_locked(o);
  c->count++;
  cache_evict_locked(garbage);
  return 0;
}

void kvp_cache_invalidate_locked(const int64_t *ids, size_t n, int all, kvp_object **garbage)
{
  kvp_object *o = kvp_g.cache.head, *next;

  /* the cache holds at most a few thousand objects: walk it, look each row up */
  for (; o != NULL; o = next) {
    next = o->next;
    if (all || (n > 0 && bsearch(&o->row_id, ids, n, sizeof(*ids), kvp_cmp_int64) != NULL))
      cache_unlink_locked(o, garbage);
  }
  if (all) {
    free(kvp_g.cache.buckets);
    kvp_g.cache.buckets = NULL;
  }
}

void kvp_cache_release(kvp_object *garbage)
{
  while (garbage != NULL) {
    kvp_object *next = garbage->hnext;
    garbage->hnext = NULL;
    kvp_object_put(garbage);
    garbage = next;
  }
}

/* ---- objects of a row ---------------------------------------------------- */

static int same_str(const char *a, const char *b)
{
  return (a == NULL && b == NULL) || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

/* o was made from this version of the row. */
static int current(const kvp_object *o, const kvp_cert_rec *rec)
{
  return o->rev == rec->rev && o->state == rec->state && strcmp(o->sha256, rec->sha256) == 0 &&
         same_str(o->key_ref, o->cls == CKO_PRIVATE_KEY ? rec->key_ref : NULL);
}

static CK_SLOT_ID slot_of_account(const char *account)
{
  for (size_t i = 0; i < kvp_g.n_slots; i++)
    if (strcmp(kvp_g.slots[i].account->name, account) == 0)
      return kvp_g.slots[i].id;
  return 0;
}

/*
 * The objects of a row, each referenced, at out[kind - 1] (NULL where the row
 * has none): the cached ones when they are current, else made now (no lock
 * held). cache_them: insert new ones, unless a reload happened since gen was
 * read (they might be older than what the reload dropped).
 */
static void row_objects(const kvp_cert_rec *rec, int cache_them, unsigned long gen,
                        kvp_object *out[3])
{
  CK_OBJECT_HANDLE base = (CK_OBJECT_HANDLE)rec->id << 2;
  kvp_object *made[3];
  kvp_object *garbage = NULL;
  size_t n = 0;
  CK_SLOT_ID sid = slot_of_account(rec->account);
  /* the kinds a usable row has: a public key always */
  const int want[3] = {rec->der_len > 0, 1, rec->type == KVP_CERT_PRIVATE};
  int hit = 1;

  memset(out, 0, 3 * sizeof(*out));
  if (sid == 0)
    return;
  pthread_rwlock_rdlock(&kvp_g.lock);
  for (int k = 0; hit && k < 3; k++) {
    kvp_object *o = want[k] ? kvp_cache_lookup_locked(base | (CK_OBJECT_HANDLE)(k + 1)) : NULL;
    if (o != NULL && current(o, rec)) {
      atomic_fetch_add(&o->refs, 1);
      out[k] = o;
    } else if (want[k]) {
      hit = 0; /* not cached, evicted or stale: make the row's objects anew */
    }
  }
  pthread_rwlock_unlock(&kvp_g.lock);
  if (hit)
    return;
  for (int k = 0; k < 3; k++)
    kvp_object_put(out[k]);
  memset(out, 0, 3 * sizeof(*out));

  if (kvp_objects_from_rec(rec, sid, kvp_g.backends, kvp_g.n_backends, made, &n) != CKR_OK) {
    KVP_WARN("registry: certificate '%s' of account '%s' is skipped", rec->name, rec->account);
    return;
  }
  for (size_t i = 0; i < n; i++)
    out[(made[i]->handle & 3) - 1] = made[i];
  if (!cache_them)
    return;
  pthread_rwlock_wrlock(&kvp_g.lock);
  if (atomic_load(&kvp_g.generation) == gen)
    for (size_t i = 0; i < n; i++)
      (void)cache_insert_locked(made[i], &garbage);
  pthread_rwlock_unlock(&kvp_g.lock);
  kvp_cache_release(garbage);
}

static void put_row(kvp_object *objs[3])
{
  for (int k = 0; k < 3; k++)
    kvp_object_put(objs[k]);
}

/* A private key object is seen only once its token is logged in. */
static int visible(const kvp_object *o, CK_SLOT_ID slot)
{
  int ok;

  if (!o->is_private)
    return 1;
  pthread_rwlock_rdlock(&kvp_g.lock);
  ok = kvp_slot_locked(slot)->logged_in;
  pthread_rwlock_unlock(&kvp_g.lock);
  return ok;
}

/* Run a batch query under the registry lock; no registry yet: no rows. */
static CK_RV read_batch(const kvp_rec_query *q, kvp_cert_rec **recs, size_t *n, unsigned long *gen)
{
  char err[KVP_ERRLEN];
  int rc = KVP_OK;

  *recs = NULL;
  *n = 0;
  *gen = atomic_load(&kvp_g.generation);
  pthread_mutex_lock(&kvp_g.reg_lock);
  if (kvp_g.reg != NULL)
    rc = kvp_registry_batch(kvp_g.reg, q, recs, n, err, sizeof(err));
  pthread_mutex_unlock(&kvp_g.reg_lock);
  if (rc != KVP_OK)
    return kvp_fail(CKR_DEVICE_ERROR, "%s", err);
  return CKR_OK;
}

CK_RV kvp_object_load(kvp_session *s, CK_OBJECT_HANDLE h, kvp_object **out)
{
  char err[KVP_ERRLEN];
  kvp_cert_rec rec;
  kvp_object *objs[3];
  unsigned long gen = atomic_load(&kvp_g.generation);
  int kind = (int)(h & 3);
  int rc = KVP_ENOTFOUND;
  CK_RV rv;

  if (kind == 0 || (h >> 2) == 0 || (h >> 2) > (CK_OBJECT_HANDLE)INT64_MAX)
    return CKR_OBJECT_HANDLE_INVALID;
  memset(&rec, 0, sizeof(rec));
  pthread_mutex_lock(&kvp_g.reg_lock);
  if (kvp_g.reg != NULL)
    rc = kvp_registry_get_id(kvp_g.reg, (int64_t)(h >> 2), &rec, err, sizeof(err));
  pthread_mutex_unlock(&kvp_g.reg_lock);
  if (rc == KVP_ENOTFOUND)
    return CKR_OBJECT_HANDLE_INVALID;
  if (rc != KVP_OK)
    return kvp_fail(CKR_DEVICE_ERROR, "%s", err);
  if (slot_of_account(rec.account) != s->slot) {
    kvp_cert_rec_clear(&rec);
    return CKR_OBJECT_HANDLE_INVALID; /* another token's object */
  }
  row_objects(&rec, 1, gen, objs);
  kvp_cert_rec_clear(&rec);
  *out = objs[kind - 1];
  objs[kind - 1] = NULL;
  put_row(objs);
  if (*out != NULL && !visible(*out, s->slot)) {
    kvp_object_put(*out);
    *out = NULL;
  }
  if (*out == NULL)
    return CKR_OBJECT_HANDLE_INVALID;
  if ((rv = kvp_object_ready(*out)) != CKR_OK) {
    kvp_object_put(*out);
    *out = NULL;
  }
  return rv;
}

/* ---- searches -------------------------------------------------------------- */

struct kvp_find {
  kvp_rec_query q;        /* name and kid point into this block */
  int done;               /* no more rows */
  int cache_them;         /* a targeted search: its objects are the working set */
  CK_ULONG n_pending, next_pending;
  CK_OBJECT_HANDLE pending[3 * FIND_BATCH];
  CK_ULONG n_tmpl;
  CK_ATTRIBUTE *tmpl;     /* a copy of the application's template, in this block */
  kvp_sessobj_cursor sess; /* session objects (sessobj.c) come first */
};

static const CK_ATTRIBUTE *tmpl_attr(const CK_ATTRIBUTE *t, CK_ULONG n, CK_ATTRIBUTE_TYPE type)
{
  for (CK_ULONG i = 0; i < n; i++)
    if (t[i].type == type)
      return &t[i];
  return NULL;
}

/* No attribute value is longer (a certificate is at most 1 MiB): a longer one
 * in a template matches nothing, and is not copied. */
#define MAX_VALUE (16UL * 1024 * 1024)

static int copied(const CK_ATTRIBUTE *a)
{
  return a->pValue != NULL && a->ulValueLen <= MAX_VALUE;
}

/* Copy the template into one block with the search state. */
static kvp_find *find_new(const CK_ATTRIBUTE *tmpl, CK_ULONG n)
{
  size_t size = sizeof(kvp_find);
  const CK_ATTRIBUTE *label = tmpl_attr(tmpl, n, CKA_LABEL);
  kvp_find *f;
  unsigned char *p;

  if (n > (SIZE_MAX - size) / (sizeof(CK_ATTRIBUTE) + MAX_VALUE + 1))
    return NULL;
  size += n * sizeof(CK_ATTRIBUTE);
  for (CK_ULONG i = 0; i < n; i++)
    size += copied(&tmpl[i]) ? tmpl[i].ulValueLen : 0;
  if (label != NULL && copied(label))
    size += label->ulValueLen + 1; /* the NUL-terminated name of the query */
  if ((f = calloc(1, size)) == NULL)
    return NULL;
  f->tmpl = (CK_ATTRIBUTE *)(f + 1);
  f->n_tmpl = n;
  p = (unsigned char *)(f->tmpl + n);
  for (CK_ULONG i = 0; i < n; i++) {
    f->tmpl[i] = tmpl[i];
    f->tmpl[i].pValue = NULL;
    if (copied(&tmpl[i])) {
      f->tmpl[i].pValue = p;
      memcpy(p, tmpl[i].pValue, tmpl[i].ulValueLen);
      p += tmpl[i].ulValueLen;
    }
  }
  if (label != NULL && copied(label)) {
    memcpy(p, label->pValue, label->ulValueLen);
    f->q.name = (const char *)p;
  }
  return f;
}

/* Narrow the registry query by what the template fixes: label, CKA_ID, class. */
static void find_plan(kvp_find *f, const char *account)
{
  const CK_ATTRIBUTE *label = tmpl_attr(f->tmpl, f->n_tmpl, CKA_LABEL);
  const CK_ATTRIBUTE *id = tmpl_attr(f->tmpl, f->n_tmpl, CKA_ID);
  const CK_ATTRIBUTE *cls = tmpl_attr(f->tmpl, f->n_tmpl, CKA_CLASS);
  CK_OBJECT_CLASS c;

  f->q.account = account;
  f->q.limit = FIND_BATCH;
  if (label != NULL && (label->pValue == NULL || label->ulValueLen == 0 ||
                        label->ulValueLen > 255 ||
                        memchr(label->pValue, 0, label->ulValueLen) != NULL))
    f->done = 1; /* no registered name is empty or holds a NUL */
  if (id != NULL && id->pValue != NULL && id->ulValueLen > 0) {
    f->q.kid = id->pValue;
    f->q.kid_len = id->ulValueLen;
  } else if (id != NULL) {
    f->done = 1; /* every object has a CKA_ID */
  }
  if (cls != NULL) {
    if (cls->pValue == NULL || cls->ulValueLen != sizeof(c)) {
      f->done = 1;
      return;
    }
    memcpy(&c, cls->pValue, sizeof(c));
    if (c == CKO_PRIVATE_KEY)
      f->q.private_only = 1;
    else if (c == CKO_CERTIFICATE)
      f->q.with_cert = 1;
    else if (c != CKO_PUBLIC_KEY)
      f->done = 1;
  }
  f->cache_them = f->q.name != NULL || f->q.kid != NULL;
}

CK_RV kvp_find_init(kvp_session *s, CK_ATTRIBUTE_PTR tmpl, CK_ULONG n)
{
  kvp_find *f;

  if (n > 0 && tmpl == NULL)
    return CKR_ARGUMENTS_BAD;
  (void)kvp_refresh();
  if ((f = find_new(tmpl, n)) == NULL)
    return CKR_HOST_MEMORY;
  find_plan(f, kvp_g.slots[s->slot - 1].account->name);
  s->find.kind = KVP_OP_FIND;
  s->find.found = f;
  return CKR_OK;
}

/* Read the next batch of rows and queue the handles of the matching objects. */
static CK_RV find_fill(kvp_session *s, kvp_find *f)
{
  kvp_cert_rec *recs = NULL;
  size_t n = 0;
  unsigned long gen;
  CK_RV rv = read_batch(&f->q, &recs, &n, &gen);

  f->n_pending = f->next_pending = 0;
  if (rv != CKR_OK) {
    f->done = 1;
    return rv;
  }
  for (size_t i = 0; i < n; i++) {
    kvp_object *objs[3];
    row_objects(&recs[i], f->cache_them, gen, objs);
    for (int k = 0; k < 3; k++)
      if (objs[k] != NULL && visible(objs[k], s->slot) &&
          kvp_object_match(objs[k], f->tmpl, f->n_tmpl))
        f->pending[f->n_pending++] = objs[k]->handle;
    put_row(objs);
    f->q.after_id = recs[i].id;
  }
  /* a name selects one row at most */
  f->done = n < f->q.limit || f->q.name != NULL;
  kvp_cert_rec_free_array(recs, n);
  return CKR_OK;
}

CK_RV kvp_find_next(kvp_session *s, CK_OBJECT_HANDLE_PTR ph, CK_ULONG max, CK_ULONG_PTR count)
{
  kvp_find *f = s->find.found;
  CK_ULONG n = 0;
  CK_RV rv = CKR_OK;

  if (!f->sess.done)
    n = kvp_sessobj_find(s, &f->sess, f->tmpl, f->n_tmpl, ph, max);
  while (n < max) {
    if (f->next_pending < f->n_pending) {
      ph[n++] = f->pending[f->next_pending++];
      continue;
    }
    if (f->done || (rv = find_fill(s, f)) != CKR_OK)
      break;
  }
  *count = n;
  return n > 0 ? CKR_OK : rv;
}

CK_RV kvp_find_private_key(kvp_session *s, const EVP_PKEY *pub, const CK_ATTRIBUTE *id,
                           int64_t *row_id, int *id_mismatch)
{
  /* with a CKA_ID, only the rows of that effective CKA_ID (an index lookup) */
  kvp_rec_query q = {.account = kvp_g.slots[s->slot - 1].account->name,
                     .private_only = 1,
                     .kid = id != NULL ? id->pValue : NULL,
                     .kid_len = id != NULL ? id->ulValueLen : 0};
  kvp_cert_rec *recs = NULL;
  size_t n = 0;
  unsigned long gen;
  CK_RV rv = read_batch(&q, &recs, &n, &gen);

  *row_id = 0;
  *id_mismatch = 0;
  for (size_t i = 0; rv == CKR_OK && i < n && *row_id == 0; i++) {
    kvp_object *objs[3];
    kvp_object *o;
    const kvp_attr *oid;
    row_objects(&recs[i], 0, gen, objs);
    if ((o = objs[KVP_OBJ_PRIVKEY - 1]) != NULL && (rv = kvp_object_ready(o)) == CKR_OK) {
      oid = kvp_object_attr(o, CKA_ID);
      if (id != NULL && (oid == NULL || oid->len != id->ulValueLen ||
                         (oid->len > 0 && memcmp(oid->value, id->pValue, oid->len) != 0)))
        ; /* another CKA_ID */
      else if (!kvp_pubkey_equal(o->pub, pub))
        *id_mismatch |= id != NULL;
      else
        *row_id = o->row_id;
    }
    put_row(objs);
  }
  kvp_cert_rec_free_array(recs, n);
  return rv;
}
