/*
 * The lazy object layer (module/pkcs11/find.c, issue 15) with 0, 1 and 5,000
 * registered certificates: start-up reads no certificate row, find templates
 * (label, CKA_ID, class, class + label, empty) return exactly the matching
 * objects, handles stay valid across reloads, a removed row's handles are
 * CKR_OBJECT_HANDLE_INVALID, a retired row's private key does not sign, and
 * an enumeration in small batches returns every object exactly once while
 * another process adds and removes rows.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CUnit/Basic.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <sqlite3.h>

#include "core/cert.h"
#include "core/registry.h"
#include "core/util.h"
#include "pkcs11/internal.h"

#include "front_util.h"
#include "unit_util.h"

#define MANY 5000

static char dir[512], conf[600], regpath[600];
static CK_FUNCTION_LIST_PTR f;
static EVP_PKEY *ca_key;

/* A certificate of a fresh P-256 key, issued by ca_key, as a registry record. */
static void make_rec(const char *account, const char *name, long serial, kvp_cert_rec *rec)
{
  EVP_PKEY *pkey = EVP_EC_gen("P-256");
  size_t len = 0;
  unsigned char *der = front_cert(pkey, name, serial, ca_key, &len);

  memset(rec, 0, sizeof(*rec));
  CU_ASSERT_FATAL(der != NULL);
  CU_ASSERT_EQUAL_FATAL(front_row(der, len, account, name, KVP_CERT_PUBLIC, NULL, rec), KVP_OK);
  OPENSSL_free(der);
  EVP_PKEY_free(pkey);
}

/* Register count certificates NAMEi (i = first ...) in one transaction. */
static void register_range_at(const char *path, const char *prefix, int first, int count)
{
  const char *account = "partners";
  char err[KVP_ERRLEN], name[64];
  kvp_registry *reg = NULL;

  CU_ASSERT_EQUAL_FATAL(kvp_registry_open(path, 0, &reg, err, sizeof(err)), KVP_OK);
  CU_ASSERT_EQUAL_FATAL(kvp_registry_begin(reg, err, sizeof(err)), KVP_OK);
  for (int i = first; i < first + count; i++) {
    kvp_cert_rec rec;
    snprintf(name, sizeof(name), "%s%d", prefix, i);
    make_rec(account, name, i + 1, &rec);
    CU_ASSERT_EQUAL(kvp_registry_add(reg, &rec, 0, err, sizeof(err)), KVP_OK);
    kvp_cert_rec_clear(&rec);
  }
  CU_ASSERT_EQUAL(kvp_registry_end(reg, 1, err, sizeof(err)), KVP_OK);
  kvp_registry_close(reg);
}

static void register_range(const char *account, const char *prefix, int first, int count)
{
  CU_ASSERT_STRING_EQUAL_FATAL(account, "partners");
  register_range_at(regpath, prefix, first, count);
}

/* Every handle a template finds, fetched max at a time; *n set. malloc'd. */
static CK_OBJECT_HANDLE *find(CK_SESSION_HANDLE s, CK_ATTRIBUTE *tmpl, CK_ULONG nt, CK_ULONG max,
                              CK_ULONG *n)
{
  CK_OBJECT_HANDLE *all = NULL;
  CK_ULONG cap = 0, got;

  *n = 0;
  CU_ASSERT_EQUAL_FATAL(f->C_FindObjectsInit(s, tmpl, nt), CKR_OK);
  do {
    if (*n + max > cap) {
      cap = (*n + max) * 2;
      all = realloc(all, cap * sizeof(*all));
      CU_ASSERT_PTR_NOT_NULL_FATAL(all);
    }
    got = 0;
    CU_ASSERT_EQUAL_FATAL(f->C_FindObjects(s, all + *n, max, &got), CKR_OK);
    CU_ASSERT(got <= max);
    *n += got;
  } while (got > 0);
  CU_ASSERT_EQUAL(f->C_FindObjectsFinal(s), CKR_OK);
  return all;
}

static CK_ULONG count(CK_SESSION_HANDLE s, CK_ATTRIBUTE *tmpl, CK_ULONG nt)
{
  CK_ULONG n;
  free(find(s, tmpl, nt, 1000, &n));
  return n;
}

static CK_SLOT_ID first_slot(void)
{
  CK_SLOT_ID slots[4];
  CK_ULONG n = 4;
  CU_ASSERT_EQUAL_FATAL(f->C_GetSlotList(CK_TRUE, slots, &n), CKR_OK);
  CU_ASSERT_FATAL(n >= 1);
  return slots[0];
}

static int suite_init(void)
{
  if (front_test_dir("front_lazy", dir, sizeof(dir)) != 0)
    return 1;
  snprintf(regpath, sizeof(regpath), "%s/registry.db", dir);
  if (front_write_conf(dir, conf, sizeof(conf),
                       "[global]\nregistry = %s\nlog_level = error\n\n[account partners]\n\n"
                       "[account other]\n",
                       regpath) != 0)
    return 1;
  ca_key = EVP_EC_gen("P-256");
  return ca_key != NULL && C_GetFunctionList(&f) == CKR_OK ? 0 : 1;
}

static int suite_clean(void)
{
  EVP_PKEY_free(ca_key);
  return 0;
}

/* 0 rows: nothing is found, no handle is valid. */
static void test_empty(void)
{
  CK_SESSION_HANDLE s;
  CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
  CK_ATTRIBUTE by_class = {CKA_CLASS, &cls, sizeof(cls)};
  CK_ATTRIBUTE by_label = {CKA_LABEL, "p0", 2};
  CK_ATTRIBUTE value = {CKA_VALUE, NULL, 0};
  CK_ULONG n = 0;

  CU_ASSERT_EQUAL_FATAL(f->C_Initialize(NULL), CKR_OK);
  CU_ASSERT_EQUAL_FATAL(f->C_OpenSession(first_slot(), CKF_SERIAL_SESSION, NULL, NULL, &s), CKR_OK);
  CU_ASSERT_EQUAL(count(s, NULL, 0), 0);
  CU_ASSERT_EQUAL(count(s, &by_class, 1), 0);
  CU_ASSERT_EQUAL(count(s, &by_label, 1), 0);
  CU_ASSERT_EQUAL(f->C_GetAttributeValue(s, (1 << 2) | KVP_OBJ_CERT, &value, 1),
                  CKR_OBJECT_HANDLE_INVALID);
  CU_ASSERT_EQUAL(f->C_GetAttributeValue(s, 0, &value, 1), CKR_OBJECT_HANDLE_INVALID);
  CU_ASSERT_EQUAL(f->C_GetMechanismList(first_slot(), NULL, &n), CKR_OK);
  CU_ASSERT_EQUAL(f->C_Finalize(NULL), CKR_OK);
}

/* Label and CKA_ID of an object. */
static void label_and_id(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, char *label, size_t label_size,
                         unsigned char *id, CK_ULONG *id_len)
{
  CK_ATTRIBUTE a[] = {{CKA_LABEL, label, label_size - 1}, {CKA_ID, id, *id_len}};
  CU_ASSERT_EQUAL_FATAL(f->C_GetAttributeValue(s, h, a, 2), CKR_OK);
  label[a[0].ulValueLen] = '\0';
  *id_len = a[1].ulValueLen;
}

/* 1 row: each template finds exactly its objects; a reload keeps the handles. */
static void test_one_row(void)
{
  CK_SESSION_HANDLE s, s2;
  CK_OBJECT_CLASS cert = CKO_CERTIFICATE, pub = CKO_PUBLIC_KEY, priv = CKO_PRIVATE_KEY;
  CK_ATTRIBUTE by_label = {CKA_LABEL, "p0", 2};
  CK_ATTRIBUTE cert_label[] = {{CKA_CLASS, &cert, sizeof(cert)}, {CKA_LABEL, "p0", 2}};
  CK_ATTRIBUTE pub_label[] = {{CKA_CLASS, &pub, sizeof(pub)}, {CKA_LABEL, "p0", 2}};
  CK_ATTRIBUTE by_priv = {CKA_CLASS, &priv, sizeof(priv)};
  CK_ATTRIBUTE wrong_label = {CKA_LABEL, "p", 1};
  unsigned char id[64];
  CK_ULONG id_len = sizeof(id), n, n2;
  char label[64];
  CK_OBJECT_HANDLE *h, *again;

  register_range("partners", "p", 0, 1);
  CU_ASSERT_EQUAL_FATAL(f->C_Initialize(NULL), CKR_OK);
  CU_ASSERT_EQUAL_FATAL(f->C_OpenSession(first_slot(), CKF_SERIAL_SESSION, NULL, NULL, &s), CKR_OK);
  CU_ASSERT_EQUAL_FATAL(f->C_OpenSession(2, CKF_SERIAL_SESSION, NULL, NULL, &s2), CKR_OK);
  h = find(s, NULL, 0, 1, &n);
  CU_ASSERT_EQUAL_FATAL(n, 2); /* certificate, public key */
  CU_ASSERT_EQUAL(h[0] >> 2, h[1] >> 2);
  CU_ASSERT_EQUAL(h[0] & 3, KVP_OBJ_CERT);
  CU_ASSERT_EQUAL(h[1] & 3, KVP_OBJ_PUBKEY);
  label_and_id(s, h[1], label, sizeof(label), id, &id_len);
  CU_ASSERT_STRING_EQUAL(label, "p0");
  CU_ASSERT_EQUAL(id_len, KVP_KEY_ID_LEN);
  {
    CK_ATTRIBUTE by_id = {CKA_ID, id, id_len};
    CK_ATTRIBUTE id_cert[] = {{CKA_ID, id, id_len}, {CKA_CLASS, &cert, sizeof(cert)}};
    again = find(s, &by_id, 1, 10, &n2);
    CU_ASSERT_EQUAL(n2, 2);
    CU_ASSERT(n2 == 2 && again[0] == h[0] && again[1] == h[1]);
    free(again);
    CU_ASSERT_EQUAL(count(s, id_cert, 2), 1);
    id[0] ^= 1;
    CU_ASSERT_EQUAL(count(s, &by_id, 1), 0);
  }
  CU_ASSERT_EQUAL(count(s, &by_label, 1), 2);
  CU_ASSERT_EQUAL(count(s, cert_label, 2), 1);
  CU_ASSERT_EQUAL(count(s, pub_label, 2), 1);
  CU_ASSERT_EQUAL(count(s, &by_priv, 1), 0);
  CU_ASSERT_EQUAL(count(s, &wrong_label, 1), 0);
  CU_ASSERT_EQUAL(count(s2, NULL, 0), 0); /* another token */
  {
    CK_ATTRIBUTE value = {CKA_VALUE, NULL, 0};
    CU_ASSERT_EQUAL(f->C_GetAttributeValue(s2, h[0], &value, 1), CKR_OBJECT_HANDLE_INVALID);
  }

  /* A reload (another row) keeps the handles; removing the row invalidates them. */
  register_range("partners", "p", 1, 1);
  again = find(s, &by_label, 1, 10, &n2);
  CU_ASSERT(n2 == 2 && again[0] == h[0] && again[1] == h[1]);
  free(again);
  CU_ASSERT_EQUAL(count(s, NULL, 0), 4);
  front_unregister_row(regpath, "partners", "p0");
  CU_ASSERT_EQUAL(count(s, NULL, 0), 2);
  for (int i = 0; i < 2; i++) {
    CK_ATTRIBUTE value = {CKA_VALUE, NULL, 0};
    CU_ASSERT_EQUAL(f->C_GetAttributeValue(s, h[i], &value, 1), CKR_OBJECT_HANDLE_INVALID);
  }
  free(h);
  CU_ASSERT_EQUAL(f->C_Finalize(NULL), CKR_OK);
  front_unregister_row(regpath, "partners", "p1");
}

/* 5,000 rows: start-up reads none, searches read only what they need. */
static void test_many_rows(void)
{
  CK_SESSION_HANDLE s;
  CK_TOKEN_INFO ti;
  CK_OBJECT_CLASS cert = CKO_CERTIFICATE;
  CK_ATTRIBUTE by_class = {CKA_CLASS, &cert, sizeof(cert)};
  CK_ATTRIBUTE by_label = {CKA_LABEL, "m2500", 5};
  CK_ATTRIBUTE class_label[] = {{CKA_CLASS, &cert, sizeof(cert)}, {CKA_LABEL, "m4999", 5}};
  CK_ATTRIBUTE value = {CKA_VALUE, NULL, 0};
  CK_OBJECT_HANDLE *h, *all;
  CK_ULONG n, n_all;
  unsigned char id[64];
  CK_ULONG id_len = sizeof(id);
  char label[64];

  register_range("partners", "m", 0, MANY);
  CU_ASSERT_EQUAL_FATAL(f->C_Initialize(NULL), CKR_OK);
  CU_ASSERT_EQUAL(f->C_GetTokenInfo(first_slot(), &ti), CKR_OK);
  CU_ASSERT_EQUAL_FATAL(f->C_OpenSession(first_slot(), CKF_SERIAL_SESSION, NULL, NULL, &s), CKR_OK);
  CU_ASSERT_EQUAL(kvp_g.cache.count, 0); /* no object was made */
  CU_ASSERT(kvp_g.slots[0].has_ec && !kvp_g.slots[0].has_rsa);

  h = find(s, &by_label, 1, 10, &n);
  CU_ASSERT_EQUAL_FATAL(n, 2);
  CU_ASSERT(kvp_g.cache.count <= 2); /* only that row's objects */
  label_and_id(s, h[0], label, sizeof(label), id, &id_len);
  CU_ASSERT_STRING_EQUAL(label, "m2500");
  {
    CK_ATTRIBUTE by_id = {CKA_ID, id, id_len};
    CK_OBJECT_HANDLE *g = find(s, &by_id, 1, 10, &n);
    CU_ASSERT(n == 2 && g[0] == h[0] && g[1] == h[1]);
    free(g);
  }
  CU_ASSERT_EQUAL(count(s, class_label, 2), 1);

  /* class only and empty: every object once, in handle order, fetched 7 at a time */
  all = find(s, &by_class, 1, 7, &n_all);
  CU_ASSERT_EQUAL(n_all, MANY);
  for (CK_ULONG i = 1; i < n_all; i++)
    CU_ASSERT_FATAL(all[i] > all[i - 1]);
  free(all);
  all = find(s, NULL, 0, 1000, &n_all);
  CU_ASSERT_EQUAL(n_all, 2 * MANY);
  free(all);
  CU_ASSERT(kvp_g.cache.count <= KVP_CACHE_MAX);

  /* handles stay across a reload; a removed row's handles do not */
  register_range("partners", "extra", 0, 1);
  CU_ASSERT_EQUAL(count(s, &by_label, 1), 2);
  CU_ASSERT_EQUAL(f->C_GetAttributeValue(s, h[0], &value, 1), CKR_OK);
  front_unregister_row(regpath, "partners", "m2500");
  CU_ASSERT_EQUAL(count(s, &by_label, 1), 0);
  CU_ASSERT_EQUAL(f->C_GetAttributeValue(s, h[0], &value, 1), CKR_OBJECT_HANDLE_INVALID);
  CU_ASSERT_EQUAL(f->C_GetAttributeValue(s, h[1], &value, 1), CKR_OBJECT_HANDLE_INVALID);
  free(h);
  CU_ASSERT_EQUAL(f->C_Finalize(NULL), CKR_OK);
}

/* Another process adds rows "c*" and removes rows "m<odd>" while we enumerate. */
static void churn(void)
{
  char err[KVP_ERRLEN], name[64];
  kvp_registry *reg = NULL;

  if (kvp_registry_open(regpath, 0, &reg, err, sizeof(err)) != KVP_OK)
    _exit(1);
  for (int i = 0; i < 60; i++) {
    kvp_cert_rec rec;
    snprintf(name, sizeof(name), "c%d", i);
    make_rec("partners", name, 100000 + i, &rec);
    if (kvp_registry_add(reg, &rec, 0, err, sizeof(err)) != KVP_OK)
      _exit(2);
    kvp_cert_rec_clear(&rec);
    snprintf(name, sizeof(name), "m%d", 2 * i + 1);
    if (kvp_registry_remove(reg, "partners", name, err, sizeof(err)) != KVP_OK)
      _exit(3);
  }
  kvp_registry_close(reg);
  _exit(0);
}

static int cmp_handle(const void *a, const void *b)
{
  CK_OBJECT_HANDLE x = *(const CK_OBJECT_HANDLE *)a, y = *(const CK_OBJECT_HANDLE *)b;
  return x < y ? -1 : x > y;
}

static void test_enumerate_while_changing(void)
{
  CK_SESSION_HANDLE s;
  CK_ULONG n = 0, got = 0;
  CK_OBJECT_HANDLE *all = malloc(4 * MANY * sizeof(*all)), batch[5];
  int status = 0, rounds = 0;
  pid_t pid;

  CU_ASSERT_PTR_NOT_NULL_FATAL(all);
  CU_ASSERT_EQUAL_FATAL(f->C_Initialize(NULL), CKR_OK);
  CU_ASSERT_EQUAL_FATAL(f->C_OpenSession(first_slot(), CKF_SERIAL_SESSION, NULL, NULL, &s), CKR_OK);
  CU_ASSERT_EQUAL_FATAL(f->C_FindObjectsInit(s, NULL, 0), CKR_OK);
  pid = fork();
  CU_ASSERT_FATAL(pid >= 0);
  if (pid == 0)
    churn();
  do {
    CU_ASSERT_EQUAL_FATAL(f->C_FindObjects(s, batch, 5, &got), CKR_OK);
    memcpy(all + n, batch, got * sizeof(*batch));
    n += got;
    if (++rounds % 20 == 0)
      usleep(2000); /* let the writer interleave */
  } while (got > 0 && n + 5 <= 4 * MANY);
  CU_ASSERT_EQUAL(f->C_FindObjectsFinal(s), CKR_OK);
  CU_ASSERT_EQUAL(waitpid(pid, &status, 0), pid);
  CU_ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);

  /* exactly once each, and every row that stayed is there with both objects */
  for (CK_ULONG i = 1; i < n; i++)
    CU_ASSERT_FATAL(all[i] > all[i - 1]);
  {
    CK_ATTRIBUTE by_label = {CKA_LABEL, NULL, 0};
    char name[64];
    int missing = 0;
    for (int i = 0; i < MANY; i += 2) {
      CK_OBJECT_HANDLE *h;
      CK_ULONG k;
      if (i == 2500)
        continue; /* removed by test_many_rows */
      snprintf(name, sizeof(name), "m%d", i);
      by_label.pValue = name;
      by_label.ulValueLen = strlen(name);
      h = find(s, &by_label, 1, 4, &k);
      CU_ASSERT_EQUAL(k, 2);
      for (CK_ULONG j = 0; j < k; j++)
        missing += bsearch(&h[j], all, n, sizeof(*all), cmp_handle) == NULL;
      free(h);
    }
    CU_ASSERT_EQUAL(missing, 0);
  }
  free(all);
  CU_ASSERT_EQUAL(f->C_Finalize(NULL), CKR_OK);
}

/* A retired certificate decrypts only: its private key shows CKA_SIGN false. */
static void test_retired_sign(void)
{
  kvp_cert_rec rec;
  kvp_object *objs[3];
  size_t n = 0;

  make_rec("partners", "ours", 77, &rec);
  rec.type = KVP_CERT_PRIVATE;
  rec.key_ref = strdup("hsm:nowhere/ours");
  rec.id = 9;
  for (int retired = 0; retired < 2; retired++) {
    CK_BBOOL sign = 2, decrypt = 2;
    CK_ATTRIBUTE a[] = {{CKA_SIGN, &sign, sizeof(sign)}, {CKA_DECRYPT, &decrypt, sizeof(decrypt)}};
    rec.state = retired ? KVP_STATE_RETIRED : KVP_STATE_ACTIVE;
    CU_ASSERT_EQUAL_FATAL(kvp_objects_from_rec(&rec, 1, NULL, 0, objs, &n), CKR_OK);
    CU_ASSERT_EQUAL_FATAL(n, 3);
    CU_ASSERT_EQUAL(objs[2]->handle, (9 << 2) | KVP_OBJ_PRIVKEY);
    CU_ASSERT_EQUAL(kvp_object_get_attributes(objs[2], a, 2), CKR_OK);
    CU_ASSERT_EQUAL(sign, retired ? CK_FALSE : CK_TRUE);
    CU_ASSERT_EQUAL(decrypt, CK_FALSE); /* an EC key does not decrypt */
    for (size_t i = 0; i < n; i++)
      kvp_object_free(objs[i]);
  }
  kvp_cert_rec_clear(&rec);
}

static int push_id(void *ctx, int64_t id)
{
  int64_t *ids = ctx;
  if (ids[0] < 15)
    ids[++ids[0]] = id;
  return KVP_OK;
}

/* The change counter: every insert, update and delete is reported once, by id. */
static void test_changes(void)
{
  char err[KVP_ERRLEN], path[700];
  kvp_registry *w = NULL, *r = NULL;
  kvp_cert_rec rec, got;
  int64_t rev = -1, ids[16] = {0};
  int full = 0;

  snprintf(path, sizeof(path), "%s/changes.db", dir);
  CU_ASSERT_EQUAL_FATAL(kvp_registry_open(path, 0, &w, err, sizeof(err)), KVP_OK);
  CU_ASSERT_EQUAL_FATAL(kvp_registry_open(path, 1, &r, err, sizeof(err)), KVP_OK);
  CU_ASSERT_EQUAL(kvp_registry_changes(r, &rev, &full, push_id, ids, err, sizeof(err)), KVP_OK);
  CU_ASSERT_EQUAL(full, 1); /* the first look */
  CU_ASSERT_EQUAL(ids[0], 0);
  make_rec("a", "x", 1, &rec);
  CU_ASSERT_EQUAL(kvp_registry_add(w, &rec, 0, err, sizeof(err)), KVP_OK);
  CU_ASSERT_EQUAL(kvp_registry_add(w, &rec, 1, err, sizeof(err)), KVP_OK); /* replaced */
  kvp_cert_rec_clear(&rec);
  make_rec("a", "y", 2, &rec);
  CU_ASSERT_EQUAL(kvp_registry_add(w, &rec, 0, err, sizeof(err)), KVP_OK);
  kvp_cert_rec_clear(&rec);
  CU_ASSERT_EQUAL_FATAL(kvp_registry_get(r, "a", "x", &got, err, sizeof(err)), KVP_OK);
  CU_ASSERT(got.rev > 0);
  CU_ASSERT_EQUAL(kvp_registry_changes(r, &rev, &full, push_id, ids, err, sizeof(err)), KVP_OK);
  CU_ASSERT_EQUAL(full, 0);
  CU_ASSERT_EQUAL(ids[0], 2); /* x once (inserted and replaced), y */
  CU_ASSERT(ids[1] == got.id || ids[2] == got.id);
  ids[0] = 0;
  CU_ASSERT_EQUAL(kvp_registry_changes(r, &rev, &full, push_id, ids, err, sizeof(err)), KVP_OK);
  CU_ASSERT_EQUAL(ids[0], 0); /* nothing new */
  CU_ASSERT_EQUAL(kvp_registry_remove(w, "a", "x", err, sizeof(err)), KVP_OK);
  CU_ASSERT_EQUAL(kvp_registry_changes(r, &rev, &full, push_id, ids, err, sizeof(err)), KVP_OK);
  CU_ASSERT_EQUAL(ids[0], 1); /* the tombstone */
  CU_ASSERT_EQUAL(ids[1], got.id);
  kvp_cert_rec_clear(&got);
  kvp_registry_close(r);
  kvp_registry_close(w);
}

/* A v2 registry (before kid, kalg, rev) works read-only in the module; the
 * first writer migrates it, and the running module keeps its handles. */
static void test_v2_registry(void)
{
  char path[700], conf2[700];
  kvp_cert_rec rec;
  sqlite3 *db = NULL;
  sqlite3_stmt *st = NULL;
  CK_SESSION_HANDLE s;
  CK_OBJECT_HANDLE *h, *again;
  CK_ULONG n, n2, id_len = 64, nm = 0;
  unsigned char id[64];
  char label[64];
  FILE *fp;

  snprintf(path, sizeof(path), "%s/v2.db", dir);
  snprintf(conf2, sizeof(conf2), "%s/v2.conf", dir);
  fp = fopen(conf2, "w");
  CU_ASSERT_PTR_NOT_NULL_FATAL(fp);
  fprintf(fp, "[global]\nregistry = %s\nlog_level = error\n\n[account partners]\n", path);
  fclose(fp);
  CU_ASSERT_FATAL(sqlite3_open(path, &db) == SQLITE_OK);
  CU_ASSERT_FATAL(
      sqlite3_exec(db,
                   "PRAGMA journal_mode=WAL;"
                   "CREATE TABLE certs (id INTEGER PRIMARY KEY AUTOINCREMENT, account TEXT NOT NULL,"
                   " name TEXT NOT NULL, type TEXT NOT NULL, der BLOB NOT NULL, subject TEXT NOT NULL,"
                   " issuer TEXT NOT NULL, serial TEXT NOT NULL, not_before INTEGER NOT NULL,"
                   " not_after INTEGER NOT NULL, sha1 TEXT NOT NULL, sha256 TEXT NOT NULL,"
                   " key_ref TEXT, key_version TEXT, resource_group TEXT, created INTEGER NOT NULL,"
                   " updated INTEGER NOT NULL, spki BLOB, ckid BLOB, UNIQUE (account, name));"
                   "PRAGMA user_version = 2;",
                   NULL, NULL, NULL) == SQLITE_OK);
  make_rec("partners", "old", 9, &rec);
  CU_ASSERT_FATAL(sqlite3_prepare_v2(db,
                                     "INSERT INTO certs VALUES (5, 'partners', 'old', 'public', ?1,"
                                     " ?2, ?3, ?4, 1, 2, ?5, ?6, NULL, NULL, NULL, 3, 4, NULL, NULL)",
                                     -1, &st, NULL) == SQLITE_OK);
  sqlite3_bind_blob(st, 1, rec.der, (int)rec.der_len, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, rec.subject, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 3, rec.issuer, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 4, rec.serial, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 5, rec.sha1, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 6, rec.sha256, -1, SQLITE_STATIC);
  CU_ASSERT_FATAL(sqlite3_step(st) == SQLITE_DONE);
  sqlite3_finalize(st);
  sqlite3_close(db);
  kvp_cert_rec_clear(&rec);

  setenv("KVP11_CONF", conf2, 1);
  CU_ASSERT_EQUAL_FATAL(f->C_Initialize(NULL), CKR_OK);
  CU_ASSERT_EQUAL_FATAL(f->C_OpenSession(first_slot(), CKF_SERIAL_SESSION, NULL, NULL, &s), CKR_OK);
  CU_ASSERT(kvp_g.slots[0].has_ec && !kvp_g.slots[0].has_rsa); /* from the DER, before v3 */
  CU_ASSERT_EQUAL(f->C_GetMechanismList(first_slot(), NULL, &nm), CKR_OK);
  h = find(s, NULL, 0, 10, &n);
  CU_ASSERT_EQUAL_FATAL(n, 2);
  CU_ASSERT_EQUAL(h[0], (5 << 2) | KVP_OBJ_CERT);
  label_and_id(s, h[1], label, sizeof(label), id, &id_len);
  {
    CK_ATTRIBUTE by_id = {CKA_ID, id, id_len};
    again = find(s, &by_id, 1, 10, &n2); /* no kid column: found by walking the rows */
    CU_ASSERT(n2 == 2 && again[0] == h[0]);
    free(again);
    register_range_at(path, "new", 0, 1); /* a writer: migrates to v3 */
    again = find(s, &by_id, 1, 10, &n2); /* the index now */
    CU_ASSERT(n2 == 2 && again[0] == h[0] && again[1] == h[1]);
    free(again);
  }
  CU_ASSERT_EQUAL(count(s, NULL, 0), 4);
  free(h);
  CU_ASSERT_EQUAL(f->C_Finalize(NULL), CKR_OK);
  setenv("KVP11_CONF", conf, 1);
}

int main(void)
{
  static CU_TestInfo tests[] = {
      {"0 rows", test_empty},
      {"1 row: templates, handles across reloads", test_one_row},
      {"5,000 rows: lazy start, indexed finds, batches", test_many_rows},
      {"enumeration while another process changes rows", test_enumerate_while_changing},
      {"registry change counter and tombstones", test_changes},
      {"a retired certificate's private key does not sign", test_retired_sign},
      {"v2 registry read-only, then migrated under a running module", test_v2_registry},
      CU_TEST_INFO_NULL,
  };
  return unit_run_suite("front lazy objects", suite_init, suite_clean, tests);
}
