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
 * Locks: so_lock guards the list only; it is taken last (after g.lock is
 * released) and nothing is called with it held but reference counting.
 * Objects leave the list here and are freed (their backend key closed) after
 * so_lock is dropped, when their last reference goes.
 */
#include "pkcs11/internal.h"

#include <stdlib.h>
#include <string.h>

#include "backend/provision.h"
#include "core/cert.h"
#include "core/log.h"
#include "core/status.h"
#include "core/util.h"

typedef struct sessobj {
  kvp_object *o;
  CK_SESSION_HANDLE owner;
  CK_OBJECT_HANDLE group; /* handle without kind: a certificate and its public key share it */
  struct sessobj *next;
} sessobj;

static pthread_mutex_t so_lock = PTHREAD_MUTEX_INITIALIZER;
static sessobj *so_head;                 /* in handle order: appended at so_tail */
static sessobj **so_tail = &so_head;
static CK_OBJECT_HANDLE so_next = 1;     /* creation number of the next object */

/* Set a CK_BBOOL attribute the object was made with. */
static void set_bool(kvp_object *o, CK_ATTRIBUTE_TYPE t, CK_BBOOL v)
{
  for (size_t i = 0; i < o->n_attrs; i++)
    if (o->attrs[i].type == t && o->attrs[i].len == sizeof(CK_BBOOL))
      memcpy(o->attrs[i].value, &v, sizeof(v));
}

/* Take objs[0..n) (made by kvp_objects_from_rec) into the list as owner's,
 * under one new creation number; *ph[k] gets the handle of kind k + 1. */
static CK_RV insert(kvp_session *s, kvp_object **objs, size_t n, CK_OBJECT_HANDLE ph[3])
{
  sessobj *e[3] = {NULL, NULL, NULL};
  CK_OBJECT_HANDLE group;

  for (size_t i = 0; i < n; i++)
    if ((e[i] = calloc(1, sizeof(*e[i]))) == NULL) {
      for (size_t j = 0; j < i; j++)
        free(e[j]);
      return CKR_HOST_MEMORY;
    }
  pthread_mutex_lock(&so_lock);
  if (__atomic_load_n(&s->closed, __ATOMIC_ACQUIRE)) {
    /* closed by another thread meanwhile: its objects were dropped (under
     * so_lock, after closed was set), these would outlive it */
    pthread_mutex_unlock(&so_lock);
    for (size_t i = 0; i < n; i++)
      free(e[i]);
    return CKR_SESSION_CLOSED;
  }
  group = KVP_SESSOBJ_BIT | (so_next++ << 2);
  for (size_t i = 0; i < n; i++) {
    kvp_object *o = objs[i];
    int kind = (int)(o->handle & 3);
    o->handle = group | (CK_OBJECT_HANDLE)kind;
    o->row_id = 0;
    set_bool(o, CKA_TOKEN, CK_FALSE);
    ph[kind - 1] = o->handle;
    e[i]->o = o;
    e[i]->owner = s->handle;
    e[i]->group = group;
    *so_tail = e[i];
    so_tail = &e[i]->next;
  }
  pthread_mutex_unlock(&so_lock);
  return CKR_OK;
}

static void free_objects(kvp_object **objs, size_t n)
{
  for (size_t i = 0; i < n; i++)
    kvp_object_put(objs[i]);
}

CK_RV kvp_sessobj_add_cert(kvp_session *s, const CK_ATTRIBUTE *value, const CK_ATTRIBUTE *label,
                           const CK_ATTRIBUTE *id, CK_OBJECT_HANDLE *ph)
{
  kvp_cert_rec rec;
  kvp_object *objs[3];
  CK_OBJECT_HANDLE h[3] = {0, 0, 0};
  char err[KVP_ERRLEN] = "", name[256] = "";
  size_t n = 0;
  CK_RV rv;
  int rc;

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
  if (rv == CKR_OK && (rv = insert(s, objs, n, h)) != CKR_OK)
    free_objects(objs, n);
  if (rv == CKR_OK) {
    *ph = h[KVP_OBJ_CERT - 1];
    KVP_INFO("session %lu: session certificate '%s' (%s) created (in memory, not registered)",
             (unsigned long)s->handle, name, rec.subject);
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
static int visible_to(const kvp_session *s, const kvp_object *o, int logged_in)
{
  return o->slot == s->slot && (!o->is_private || logged_in);
}

static int slot_logged_in(CK_SLOT_ID slot)
{
  kvp_slot *sl;
  int ok;

  pthread_rwlock_rdlock(&kvp_g.lock);
  sl = kvp_slot_locked(slot);
  ok = sl != NULL && sl->logged_in;
  pthread_rwlock_unlock(&kvp_g.lock);
  return ok;
}

CK_RV kvp_sessobj_get(kvp_session *s, CK_OBJECT_HANDLE h, kvp_object **out)
{
  int logged_in = slot_logged_in(s->slot);
  kvp_object *o = NULL;
  CK_RV rv;

  pthread_mutex_lock(&so_lock);
  for (sessobj *e = so_head; e != NULL && o == NULL; e = e->next)
    if (e->o->handle == h && visible_to(s, e->o, logged_in)) {
      o = e->o;
      atomic_fetch_add(&o->refs, 1);
    }
  pthread_mutex_unlock(&so_lock);
  if (o == NULL)
    return CKR_OBJECT_HANDLE_INVALID;
  if ((rv = kvp_object_ready(o)) != CKR_OK) {
    kvp_object_put(o);
    return rv;
  }
  *out = o;
  return CKR_OK;
}

CK_OBJECT_HANDLE kvp_sessobj_next(kvp_session *s, const CK_ATTRIBUTE *tmpl, CK_ULONG n,
                                  CK_OBJECT_HANDLE after)
{
  int logged_in = slot_logged_in(s->slot);
  CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;

  pthread_mutex_lock(&so_lock);
  for (sessobj *e = so_head; e != NULL && h == CK_INVALID_HANDLE; e = e->next)
    if (e->o->handle > after && visible_to(s, e->o, logged_in) && kvp_object_match(e->o, tmpl, n))
      h = e->o->handle;
  pthread_mutex_unlock(&so_lock);
  return h;
}

/* Unlink the entries that match (owner, or group when group != 0); chain them on *gone. */
static void unlink_locked(CK_SESSION_HANDLE owner, CK_OBJECT_HANDLE group, sessobj **gone)
{
  sessobj **pp = &so_head;

  while (*pp != NULL) {
    sessobj *e = *pp;
    if (group != 0 ? e->group == group : e->owner == owner) {
      *pp = e->next;
      e->next = *gone;
      *gone = e;
    } else {
      pp = &e->next;
    }
  }
  so_tail = &so_head;
  while (*so_tail != NULL)
    so_tail = &(*so_tail)->next;
}

static void release(sessobj *gone)
{
  while (gone != NULL) {
    sessobj *next = gone->next;
    kvp_object_put(gone->o);
    free(gone);
    gone = next;
  }
}

CK_RV kvp_sessobj_destroy(kvp_session *s, CK_OBJECT_HANDLE h)
{
  kvp_object *o = NULL;
  sessobj *gone = NULL;
  const kvp_attr *d;
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
  if (o->cls == CKO_CERTIFICATE) {
    unlink_locked(0, h & ~(CK_OBJECT_HANDLE)3, &gone); /* with its public key */
  } else {
    for (sessobj **pp = &so_head; *pp != NULL; pp = &(*pp)->next)
      if ((*pp)->o == o) {
        gone = *pp;
        *pp = gone->next;
        gone->next = NULL;
        break;
      }
    for (so_tail = &so_head; *so_tail != NULL; so_tail = &(*so_tail)->next)
      ;
  }
  pthread_mutex_unlock(&so_lock);
  kvp_object_put(o);
  if (gone == NULL)
    return CKR_OBJECT_HANDLE_INVALID; /* destroyed by another thread meanwhile */
  release(gone);
  return CKR_OK;
}

void kvp_sessobj_session_closed(CK_SESSION_HANDLE owner)
{
  sessobj *gone = NULL;

  pthread_mutex_lock(&so_lock);
  unlink_locked(owner, 0, &gone);
  pthread_mutex_unlock(&so_lock);
  release(gone);
}

void kvp_sessobj_clear(int forked)
{
  sessobj *gone;

  if (forked) {
    /* the parent's lock state and backend sessions are not ours: forget them */
    pthread_mutex_init(&so_lock, NULL);
    for (sessobj *e = so_head; e != NULL; e = e->next)
      e->o->key = NULL; /* never call into the HSM module from the child */
  }
  pthread_mutex_lock(&so_lock);
  gone = so_head;
  so_head = NULL;
  so_tail = &so_head;
  pthread_mutex_unlock(&so_lock);
  release(gone);
}
