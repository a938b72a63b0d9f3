/*
 * Session objects: what a template with CKA_TOKEN false, or without CKA_TOKEN
 * (whose default is CK_FALSE), makes.
 *
 *  - A certificate (C_CreateObject): its certificate and public key objects,
 *    made as a registry row's would be but kept here, in memory; no registry
 *    write, so a read-only session and a read-only registry do.
 *  - A key pair (C_GenerateKeyPair on a store with create_session_key, the
 *    HSM): the public and private key objects, the private one holding the
 *    opened backend key, whose HSM session objects go when it is closed.
 *
 * PKCS#11 2.40: a session object belongs to the session that created it and
 * goes when that session closes (C_CloseSession, C_CloseAllSessions,
 * C_Finalize); every session of the application on the same token sees it
 * (a private one only once logged in). Handles have the top bit set
 * (KVP_SESSOBJ_BIT), then a creation number << 2 | kind, so they never equal
 * a token object's (row id << 2 | kind) and are never used twice.
 *
 * A search (kvp_sessobj_find) keeps the last handle it gave and goes on from
 * there by binary search: one pass over the session objects, whatever the
 * number of C_FindObjects calls. The rule while objects come and go (kept
 * from the first version, tested by test_front_sessobj): session objects come
 * first, in creation order; one made during the search is given unless the
 * search already passed the end of the session objects (a C_FindObjects call
 * that reached it with room left); one destroyed before it was given is not
 * given; whether an object is seen (login) and matches is decided by the
 * C_FindObjects call that reaches it.
 *
 * Locks: so_lock guards the array only; it is taken last (after g.lock is
 * released) and nothing is called with it held but reference counting and
 * the template match. Objects leave the array here and are freed (their
 * backend key closed) after so_lock is dropped, when their last reference
 * goes.
 */
#include "pkcs11/internal.h"
#include "pkcs11/login.h"

#include <stdlib.h>
#include <string.h>

#include "backend/provision.h"
#include "core/cert.h"
#include "core/log.h"
#include "core/status.h"
#include "core/util.h"

typedef struct sessobj {
  CK_OBJECT_HANDLE handle;  /* kept when the object goes: the array stays sorted */
  kvp_object *o;            /* NULL: gone (a hole until the next compaction) */
  CK_SESSION_HANDLE owner;
} sessobj;

/*
 * The objects, in handle order: a new object's handle is above every other
 * (creation numbers only grow), so it is appended, and a handle is found by
 * binary search. An object that goes leaves a hole (o NULL, handle kept);
 * the holes are squeezed out once they are half the array.
 */
static pthread_mutex_t so_lock = PTHREAD_MUTEX_INITIALIZER;
static sessobj *so_arr;
static size_t so_len, so_cap, so_holes;
static CK_OBJECT_HANDLE so_next = 1;     /* creation number of the next object */

/* The first index whose handle is h or above (so_len when none). */
static size_t lower_bound_locked(CK_OBJECT_HANDLE h)
{
  size_t lo = 0, hi = so_len;

  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (so_arr[mid].handle < h)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

/* Take the object at i out (chained on *gone through hnext, unused outside the cache). */
static void remove_at_locked(size_t i, kvp_object **gone)
{
  kvp_object *o = so_arr[i].o;

  so_arr[i].o = NULL;
  so_holes++;
  o->hnext = *gone;
  *gone = o;
}

static void compact_locked(void)
{
  size_t j = 0;

  if (so_holes * 2 <= so_len && so_holes < so_len)
    return;
  for (size_t i = 0; i < so_len; i++)
    if (so_arr[i].o != NULL)
      so_arr[j++] = so_arr[i];
  so_len = j;
  so_holes = 0;
  if (so_len == 0) {
    free(so_arr);
    so_arr = NULL;
    so_cap = 0;
  }
}

/* Set a CK_BBOOL attribute the object was made with. */
static void set_bool(kvp_object *o, CK_ATTRIBUTE_TYPE t, CK_BBOOL v)
{
  for (size_t i = 0; i < o->n_attrs; i++)
    if (o->attrs[i].type == t && o->attrs[i].len == sizeof(CK_BBOOL))
      memcpy(o->attrs[i].value, &v, sizeof(v));
}

/* Take objs[0..n) (made by kvp_objects_from_rec) into the array as owner's,
 * under one new creation number; *ph[k] gets the handle of kind k + 1. */
static CK_RV insert(kvp_session *s, kvp_object **objs, size_t n, CK_OBJECT_HANDLE ph[3])
{
  kvp_object *by_kind[3] = {NULL, NULL, NULL};
  CK_OBJECT_HANDLE group;

  for (size_t i = 0; i < n; i++)
    by_kind[(objs[i]->handle & 3) - 1] = objs[i];
  pthread_mutex_lock(&so_lock);
  if (__atomic_load_n(&s->closed, __ATOMIC_ACQUIRE)) {
    /* closed by another thread meanwhile: its objects were dropped (under
     * so_lock, after closed was set), these would outlive it */
    pthread_mutex_unlock(&so_lock);
    return CKR_SESSION_CLOSED;
  }
  if (so_len + n > so_cap) {
    size_t cap = so_cap ? so_cap * 2 : 64;
    sessobj *a = cap >= so_len + n ? realloc(so_arr, cap * sizeof(*a)) : NULL;
    if (a == NULL) {
      pthread_mutex_unlock(&so_lock);
      return kvp_fail(CKR_HOST_MEMORY, "session objects: out of memory");
    }
    so_arr = a;
    so_cap = cap;
  }
  group = KVP_SESSOBJ_BIT | (so_next++ << 2);
  for (int kind = 1; kind <= 3; kind++) { /* in handle order */
    kvp_object *o = by_kind[kind - 1];
    if (o == NULL)
      continue;
    o->handle = group | (CK_OBJECT_HANDLE)kind;
    o->row_id = 0;
    set_bool(o, CKA_TOKEN, CK_FALSE);
    ph[kind - 1] = o->handle;
    so_arr[so_len++] = (sessobj){.handle = o->handle, .o = o, .owner = s->handle};
  }
  pthread_mutex_unlock(&so_lock);
  return CKR_OK;
}

static void free_objects(kvp_object **objs, size_t n)
{
  for (size_t i = 0; i < n; i++)
    kvp_object_put(objs[i]);
}

static CK_RV private_allowed(const kvp_session *s);

CK_RV kvp_sessobj_add_cert(kvp_session *s, const CK_ATTRIBUTE *value, const CK_ATTRIBUTE *label,
                           const CK_ATTRIBUTE *id, int priv, CK_OBJECT_HANDLE *ph)
{
  kvp_cert_rec rec;
  kvp_object *objs[3];
  CK_OBJECT_HANDLE h[3] = {0, 0, 0};
  char err[KVP_ERRLEN] = "", name[256] = "";
  size_t n = 0;
  CK_RV rv;
  int rc;

  if (priv && (rv = private_allowed(s)) != CKR_OK)
    return rv;
  memset(&rec, 0, sizeof(rec));
  rc = kvp_cert_fill_rec(value->pValue, value->ulValueLen, &rec, err, sizeof(err));
  if (rc != KVP_OK)
    return kvp_fail(rc == KVP_ENOMEM ? CKR_HOST_MEMORY : CKR_ATTRIBUTE_VALUE_INVALID,
                    "C_CreateObject(CKO_CERTIFICATE): %s", err);
  if (label != NULL && label->ulValueLen < sizeof(name))
    memcpy(name, label->pValue, label->ulValueLen);
  rec.id = 1; /* replaced by the session object's handle */
  rec.name = name;
  rec.account = "";
  rec.type = KVP_CERT_PUBLIC;
  rec.ckid = id != NULL ? (unsigned char *)id->pValue : NULL;
  rec.ckid_len = id != NULL ? id->ulValueLen : 0;
  rv = kvp_objects_from_rec(&rec, s->slot, kvp_g.backends, kvp_g.n_backends, objs, &n);
  for (size_t i = 0; rv == CKR_OK && priv && i < n; i++) {
    /* its public key object too: nothing of it shows while the token is logged out */
    set_bool(objs[i], CKA_PRIVATE, CK_TRUE);
    objs[i]->is_private = 1;
  }
  if (rv == CKR_OK && (rv = insert(s, objs, n, h)) != CKR_OK)
    free_objects(objs, n);
  if (rv == CKR_OK) {
    *ph = h[KVP_OBJ_CERT - 1];
    KVP_INFO("session %lu: %ssession certificate '%s' (%s) created (in memory, not registered)",
             (unsigned long)s->handle, priv ? "private " : "", name, rec.subject);
  }
  free(rec.der);
  free(rec.subject);
  free(rec.issuer);
  free(rec.serial);
  return rv;
}

CK_RV kvp_sessobj_add_keypair(kvp_session *s, kvp_key *key, const char *account,
                              const char *key_ref, const char *label, const unsigned char *ckid,
                              size_t ckid_len, CK_OBJECT_HANDLE *ph_pub, CK_OBJECT_HANDLE *ph_priv)
{
  kvp_cert_rec rec;
  kvp_object *objs[3];
  CK_OBJECT_HANDLE h[3] = {0, 0, 0};
  size_t n = 0;
  CK_RV rv;

  memset(&rec, 0, sizeof(rec));
  rv = kvp_prov_key_row(key, account, label, key_ref, ckid, ckid_len, &rec);
  if (rv == CKR_OK) {
    rec.id = 1; /* replaced by the session object's handle */
    rv = kvp_objects_from_rec(&rec, s->slot, kvp_g.backends, kvp_g.n_backends, objs, &n);
  }
  if (rv == CKR_OK && (n != 2 || objs[1]->cls != CKO_PRIVATE_KEY)) {
    free_objects(objs, n);
    rv = kvp_fail(CKR_GENERAL_ERROR, "C_GenerateKeyPair: session key '%s': no key pair objects",
                  key->name);
  }
  if (rv != CKR_OK) {
    key->backend->ops->close_key(key->backend, key);
    kvp_cert_rec_clear(&rec);
    return rv;
  }
  /* the private key object owns the key: closing it ends the HSM session objects */
  objs[1]->key = key;
  for (size_t i = 0; i < n; i++) {
    set_bool(objs[i], CKA_DESTROYABLE, CK_TRUE);
    set_bool(objs[i], CKA_LOCAL, CK_TRUE); /* generated in the store */
  }
  if ((rv = insert(s, objs, n, h)) != CKR_OK)
    free_objects(objs, n);
  if (rv == CKR_OK) {
    *ph_pub = h[KVP_OBJ_PUBKEY - 1];
    *ph_priv = h[KVP_OBJ_PRIVKEY - 1];
  }
  kvp_cert_rec_clear(&rec);
  return rv;
}

/* May s see o? Same token; a private object only when that token is logged in. */
/*
 * What a session sees: objects of its token; a private one (CKA_PRIVATE
 * true) only when the token is logged in, or when it has no login
 * (CKF_LOGIN_REQUIRED off: PKCS#11 2.40 treats every session of such a token
 * as the user's). Whether the token has a login is a registry query
 * (login.c), asked only when a private object is met while logged out, and
 * never with so_lock held.
 */
typedef struct view {
  CK_SLOT_ID slot;
  int logged_in;
  int *open;   /* private objects visible logged out: 0 not asked yet, 1 yes, -1 no */
} view;

static view view_of(const kvp_session *s, int *open)
{
  view v = {.slot = s->slot, .open = open};
  kvp_slot *sl;

  pthread_rwlock_rdlock(&kvp_g.lock);
  sl = kvp_slot_locked(s->slot);
  v.logged_in = sl != NULL && sl->logged_in;
  pthread_rwlock_unlock(&kvp_g.lock);
  return v;
}

/* 1: v sees o; 0: not; -1: not known until view_ask (o is private, the token logged out). */
static int sees(const view *v, const kvp_object *o)
{
  if (o->slot != v->slot)
    return 0;
  if (!o->is_private || v->logged_in)
    return 1;
  return *v->open == 0 ? -1 : *v->open > 0;
}

/* Ask whether the token has a login (no lock held). */
static void view_ask(view *v)
{
  if (*v->open == 0)
    *v->open = kvp_slot_login_required(v->slot) ? -1 : 1;
}

/* A private session object may be made: the user is logged in, or the token
 * has no login (CKF_LOGIN_REQUIRED off). */
static CK_RV private_allowed(const kvp_session *s)
{
  int open = 0;
  view v = view_of(s, &open);

  if (!v.logged_in)
    view_ask(&v);
  if (!v.logged_in && open < 0)
    return kvp_fail(CKR_USER_NOT_LOGGED_IN,
                    "C_CreateObject: a private session certificate (CKA_PRIVATE true) needs "
                    "C_Login first: the token has CKF_LOGIN_REQUIRED");
  return CKR_OK;
}

/* The object of handle h, referenced, whatever its visibility; NULL when none. */
static kvp_object *lookup(CK_OBJECT_HANDLE h)
{
  kvp_object *o = NULL;
  size_t i;

  pthread_mutex_lock(&so_lock);
  i = lower_bound_locked(h);
  if (i < so_len && so_arr[i].handle == h && (o = so_arr[i].o) != NULL)
    atomic_fetch_add(&o->refs, 1);
  pthread_mutex_unlock(&so_lock);
  return o;
}

CK_RV kvp_sessobj_get(kvp_session *s, CK_OBJECT_HANDLE h, kvp_object **out)
{
  int open = 0;
  view v = view_of(s, &open);
  kvp_object *o = lookup(h);
  int ok;
  CK_RV rv;

  if (o == NULL)
    return CKR_OBJECT_HANDLE_INVALID;
  if ((ok = sees(&v, o)) < 0) {
    view_ask(&v);
    ok = sees(&v, o);
  }
  if (!ok) {
    kvp_object_put(o);
    return CKR_OBJECT_HANDLE_INVALID;
  }
  if ((rv = kvp_object_ready(o)) != CKR_OK) {
    kvp_object_put(o);
    return rv;
  }
  *out = o;
  return CKR_OK;
}

CK_ULONG kvp_sessobj_find(kvp_session *s, kvp_sessobj_cursor *c, const CK_ATTRIBUTE *tmpl,
                          CK_ULONG n, CK_OBJECT_HANDLE *out, CK_ULONG max)
{
  view v = view_of(s, &c->open);
  CK_OBJECT_HANDLE from = c->after + 1; /* the next handle to look at */
  CK_ULONG got = 0;
  size_t i;
  int ask;

  do {
    ask = 0;
    pthread_mutex_lock(&so_lock);
    for (i = lower_bound_locked(from); i < so_len && got < max; i++) {
      kvp_object *o = so_arr[i].o;
      int ok = o != NULL ? sees(&v, o) : 0;
      if (ok < 0) {
        from = so_arr[i].handle; /* look at it again once asked */
        ask = 1;
        break;
      }
      if (ok && kvp_object_match(o, tmpl, n))
        out[got++] = c->after = so_arr[i].handle;
    }
    /* the end reached with room left: the session objects of this search are done */
    c->done = !ask && i >= so_len && got < max;
    pthread_mutex_unlock(&so_lock);
    if (ask)
      view_ask(&v);
  } while (ask);
  return got;
}

/* Take out the live objects with handles lo..hi, only o when o != NULL; their count. */
static size_t remove_range_locked(CK_OBJECT_HANDLE lo, CK_OBJECT_HANDLE hi, const kvp_object *o,
                                  kvp_object **gone)
{
  size_t n = 0;

  for (size_t i = lower_bound_locked(lo); i < so_len && so_arr[i].handle <= hi; i++)
    if (so_arr[i].o != NULL && (o == NULL || so_arr[i].o == o)) {
      remove_at_locked(i, gone);
      n++;
    }
  compact_locked();
  return n;
}

CK_RV kvp_sessobj_destroy(kvp_session *s, CK_OBJECT_HANDLE h)
{
  kvp_object *o = NULL, *gone = NULL;
  const kvp_attr *d;
  size_t n;
  CK_RV rv = kvp_sessobj_get(s, h, &o);

  if (rv != CKR_OK)
    return rv;
  d = kvp_object_attr(o, CKA_DESTROYABLE);
  if (d == NULL || d->len != sizeof(CK_BBOOL) || *(const CK_BBOOL *)d->value == CK_FALSE) {
    rv = kvp_fail(CKR_ACTION_PROHIBITED,
                  "C_DestroyObject: the public key object of a session certificate goes with "
                  "the certificate");
    kvp_object_put(o);
    return rv;
  }
  pthread_mutex_lock(&so_lock);
  if (o->cls == CKO_CERTIFICATE) /* with its public key */
    n = remove_range_locked(h & ~(CK_OBJECT_HANDLE)3, h | 3, NULL, &gone);
  else
    n = remove_range_locked(h, h, o, &gone);
  pthread_mutex_unlock(&so_lock);
  kvp_object_put(o);
  if (n == 0)
    return CKR_OBJECT_HANDLE_INVALID; /* destroyed by another thread meanwhile */
  kvp_cache_release(gone);
  return CKR_OK;
}

void kvp_sessobj_session_closed(CK_SESSION_HANDLE owner)
{
  kvp_object *gone = NULL;

  pthread_mutex_lock(&so_lock);
  for (size_t i = 0; i < so_len; i++)
    if (so_arr[i].o != NULL && so_arr[i].owner == owner)
      remove_at_locked(i, &gone);
  compact_locked();
  pthread_mutex_unlock(&so_lock);
  kvp_cache_release(gone);
}

void kvp_sessobj_clear(int forked)
{
  kvp_object *gone = NULL;

  if (forked) {
    /* the parent's lock state and backend sessions are not ours: forget them */
    pthread_mutex_init(&so_lock, NULL);
    for (size_t i = 0; i < so_len; i++)
      if (so_arr[i].o != NULL)
        so_arr[i].o->key = NULL; /* never call into the HSM module from the child */
  }
  pthread_mutex_lock(&so_lock);
  for (size_t i = 0; i < so_len; i++)
    if (so_arr[i].o != NULL)
      remove_at_locked(i, &gone);
  compact_locked();
  pthread_mutex_unlock(&so_lock);
  kvp_cache_release(gone);
}

