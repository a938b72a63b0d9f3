/*
 * Reading the registry (see registry.h): rows one at a time or collected,
 * the module's indexed lookups, the change counter of incremental reloads,
 * the key types of an account. Opening, the schema and writes are in
 * registry.c.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "registry.h"
#include "registry_internal.h"
#include "util.h"

/* ---- rows ---------------------------------------------------------------- */

static int col_str(sqlite3_stmt *st, int i, char **out)
{
  const unsigned char *s = sqlite3_column_text(st, i);

  *out = NULL;
  if (s == NULL)
    return sqlite3_column_type(st, i) == SQLITE_NULL ? KVP_OK : KVP_ENOMEM;
  *out = strdup((const char *)s);
  return *out != NULL ? KVP_OK : KVP_ENOMEM;
}

/* A BLOB column; NULL stays NULL (len 0). */
static int col_blob(sqlite3_stmt *st, int i, unsigned char **out, size_t *len)
{
  const void *b = sqlite3_column_blob(st, i);
  size_t n = (size_t)sqlite3_column_bytes(st, i);

  *out = NULL;
  *len = 0;
  if (sqlite3_column_type(st, i) == SQLITE_NULL)
    return KVP_OK;
  if ((*out = malloc(n > 0 ? n : 1)) == NULL)
    return KVP_ENOMEM;
  if (b != NULL)
    memcpy(*out, b, n);
  *len = n;
  return KVP_OK;
}

/* Fill rec from the current row of a SELECT COLUMNS statement. */
static int read_row(sqlite3_stmt *st, kvp_cert_rec *rec)
{
  const void *der;
  int rc = KVP_OK;

  memset(rec, 0, sizeof(*rec));
  rec->id = sqlite3_column_int64(st, 0);
  rc |= col_str(st, 1, &rec->account);
  rc |= col_str(st, 2, &rec->name);
  rec->type = strcmp(kvp_reg_col_cstr(st, 3), "private") == 0 ? KVP_CERT_PRIVATE : KVP_CERT_PUBLIC;
  der = sqlite3_column_blob(st, 4);
  rec->der_len = (size_t)sqlite3_column_bytes(st, 4);
  rec->der = malloc(rec->der_len > 0 ? rec->der_len : 1);
  if (rec->der != NULL && der != NULL)
    memcpy(rec->der, der, rec->der_len);
  rc |= col_str(st, 5, &rec->subject);
  rc |= col_str(st, 6, &rec->issuer);
  rc |= col_str(st, 7, &rec->serial);
  rec->not_before = sqlite3_column_int64(st, 8);
  rec->not_after = sqlite3_column_int64(st, 9);
  snprintf(rec->sha1, sizeof(rec->sha1), "%s", kvp_reg_col_cstr(st, 10));
  snprintf(rec->sha256, sizeof(rec->sha256), "%s", kvp_reg_col_cstr(st, 11));
  rc |= col_str(st, 12, &rec->key_ref);
  rc |= col_str(st, 13, &rec->key_version);
  rc |= col_str(st, 14, &rec->resource_group);
  rec->created = sqlite3_column_int64(st, 15);
  rec->updated = sqlite3_column_int64(st, 16);
  rc |= col_blob(st, 17, &rec->spki, &rec->spki_len);
  rc |= col_blob(st, 18, &rec->ckid, &rec->ckid_len);
  rec->state = strcmp(kvp_reg_col_cstr(st, 19), "retired") == 0 ? KVP_STATE_RETIRED : KVP_STATE_ACTIVE;
  rc |= col_str(st, 20, &rec->origin);
  rc |= col_str(st, 21, &rec->origin_ref);
  rec->rev = sqlite3_column_int64(st, 22);
  if (rc != KVP_OK || rec->der == NULL) {
    kvp_cert_rec_clear(rec);
    return KVP_ENOMEM;
  }
  return KVP_OK;
}

/* Parameters of a row query: ?1 ?2 text, ?3 blob, ?4 ?5 integers; NULL: not bound. */
typedef struct qargs {
  const char *t1, *t2;
  const void *blob;
  size_t blob_len;
  int64_t i4, i5;
} qargs;

static int bind_args(sqlite3_stmt *st, const qargs *q)
{
  int n = sqlite3_bind_parameter_count(st);
  int rc = SQLITE_OK;

  if (q->t1 != NULL && n >= 1)
    rc |= sqlite3_bind_text(st, 1, q->t1, -1, SQLITE_STATIC);
  if (q->t2 != NULL && n >= 2)
    rc |= sqlite3_bind_text(st, 2, q->t2, -1, SQLITE_STATIC);
  if (q->blob != NULL && n >= 3)
    rc |= sqlite3_bind_blob(st, 3, q->blob, (int)q->blob_len, SQLITE_STATIC);
  if (n >= 4)
    rc |= sqlite3_bind_int64(st, 4, q->i4);
  if (n >= 5)
    rc |= sqlite3_bind_int64(st, 5, q->i5);
  return rc;
}

/*
 * Run "SELECT <columns> <tail>" and hand every row to fn, one at a time
 * (constant memory). fn may take the members of rec (zeroing them); a non-zero
 * return of fn stops the query and is returned.
 */
static int each_row(kvp_registry *reg, const char *tail, const qargs *q, kvp_rec_fn fn, void *ctx,
                    char *err, size_t errlen)
{
  char sql[640];
  sqlite3_stmt *st = NULL;
  kvp_cert_rec rec;
  int rc = KVP_OK;
  int step;

  if (reg->db == NULL)
    return kvp_seterr(err, errlen, KVP_ENOMEM, "registry %s: not connected", reg->path);
  snprintf(sql, sizeof(sql), "SELECT %s %s",
           reg->schema >= 3 ? COLUMNS_V3 : reg->schema >= 2 ? COLUMNS_V2 : COLUMNS_V1, tail);
  if (sqlite3_prepare_v2(reg->db, sql, -1, &st, NULL) != SQLITE_OK || bind_args(st, q) != SQLITE_OK) {
    rc = kvp_reg_db_err(reg, "cannot read", err, errlen);
    goto out;
  }
  while ((step = sqlite3_step(st)) == SQLITE_ROW) {
    if (read_row(st, &rec) != KVP_OK) {
      rc = kvp_seterr(err, errlen, KVP_ENOMEM, "registry %s: out of memory", reg->path);
      goto out;
    }
    rc = fn(ctx, &rec);
    kvp_cert_rec_clear(&rec);
    if (rc != KVP_OK)
      goto out;
  }
  if (step != SQLITE_DONE)
    rc = kvp_reg_db_err(reg, "cannot read", err, errlen);
out:
  sqlite3_finalize(st);
  return rc;
}

typedef struct collect {
  kvp_cert_rec *recs;
  size_t n, cap;
} collect;

static int collect_row(void *ctx, kvp_cert_rec *rec)
{
  collect *c = ctx;

  if (c->n == c->cap) {
    size_t cap = c->cap ? 2 * c->cap : 8;
    kvp_cert_rec *p = realloc(c->recs, cap * sizeof(*p));
    if (p == NULL)
      return KVP_ENOMEM;
    c->recs = p;
    c->cap = cap;
  }
  c->recs[c->n++] = *rec;
  memset(rec, 0, sizeof(*rec));
  return KVP_OK;
}

/* Collect every row of a query. */
static int query(kvp_registry *reg, const char *tail, const qargs *q, kvp_cert_rec **out, size_t *n,
                 char *err, size_t errlen)
{
  collect c = {0};
  int rc = each_row(reg, tail, q, collect_row, &c, err, errlen);

  if (rc == KVP_ENOMEM)
    kvp_seterr(err, errlen, rc, "registry %s: out of memory", reg->path);
  if (rc != KVP_OK) {
    kvp_cert_rec_free_array(c.recs, c.n);
    c.recs = NULL;
    c.n = 0;
  }
  *out = c.recs;
  *n = c.n;
  return rc;
}

int kvp_registry_list(kvp_registry *reg, const char *account, kvp_cert_rec **out, size_t *n,
                      char *err, size_t errlen)
{
  qargs q = {.t1 = account};
  return query(reg,
               account != NULL ? "FROM certs WHERE account = ?1 ORDER BY name"
                               : "FROM certs ORDER BY account, name",
               &q, out, n, err, errlen);
}

int kvp_registry_each(kvp_registry *reg, const char *account, kvp_rec_fn fn, void *ctx, char *err,
                      size_t errlen)
{
  qargs q = {.t1 = account};
  return each_row(reg,
                  account != NULL ? "FROM certs WHERE account = ?1 ORDER BY name"
                                  : "FROM certs ORDER BY account, name",
                  &q, fn, ctx, err, errlen);
}

/* The one row a query selects, or KVP_ENOTFOUND. */
static int query_one(kvp_registry *reg, const char *tail, const qargs *q, kvp_cert_rec *out,
                     char *err, size_t errlen)
{
  kvp_cert_rec *recs = NULL;
  size_t n = 0;
  int rc;

  memset(out, 0, sizeof(*out));
  rc = query(reg, tail, q, &recs, &n, err, errlen);
  if (rc == KVP_OK && n == 0)
    rc = KVP_ENOTFOUND;
  else if (rc == KVP_OK)
    *out = recs[0];
  free(recs);
  return rc;
}

int kvp_registry_get(kvp_registry *reg, const char *account, const char *name, kvp_cert_rec *out,
                     char *err, size_t errlen)
{
  qargs q = {.t1 = account, .t2 = name};
  int rc = query_one(reg, "FROM certs WHERE account = ?1 AND name = ?2", &q, out, err, errlen);

  if (rc == KVP_ENOTFOUND)
    kvp_seterr(err, errlen, rc, "no certificate '%s' in account '%s'", name, account);
  return rc;
}

int kvp_registry_get_id(kvp_registry *reg, int64_t id, kvp_cert_rec *out, char *err, size_t errlen)
{
  qargs q = {.i4 = id};
  int rc = query_one(reg, "FROM certs WHERE id = ?4", &q, out, err, errlen);

  if (rc == KVP_ENOTFOUND)
    kvp_seterr(err, errlen, rc, "no registry entry with id %lld", (long long)id);
  return rc;
}

int kvp_registry_batch(kvp_registry *reg, const kvp_rec_query *sel, kvp_cert_rec **out, size_t *n,
                       char *err, size_t errlen)
{
  qargs q = {.t1 = sel->account, .t2 = sel->name, .i4 = sel->after_id,
             .i5 = sel->limit > 0 ? (int64_t)sel->limit : -1};
  char tail[320];
  int by_kid = sel->kid != NULL && reg->schema >= 3;
  int by_type = sel->private_only && !by_kid && sel->name == NULL && reg->schema >= 3;

  if (by_kid) {
    q.blob = sel->kid;
    q.blob_len = sel->kid_len;
  }
  /* "+account": without a name, kid or type the scan runs in rowid order from
   * after_id (an index on account would sort the whole account per batch). */
  snprintf(tail, sizeof(tail), "FROM certs WHERE %saccount = ?1%s%s%s%s AND id > ?4 ORDER BY id LIMIT ?5",
           sel->name != NULL || by_kid || by_type ? "" : "+",
           sel->name != NULL ? " AND name = ?2" : "", by_kid ? " AND kid = ?3" : "",
           sel->private_only ? " AND type = 'private'" : "",
           sel->with_cert ? " AND length(der) > 0" : "");
  return query(reg, tail, &q, out, n, err, errlen);
}

int kvp_registry_schema(const kvp_registry *reg)
{
  return (int)reg->schema;
}

int kvp_registry_changes(kvp_registry *reg, int64_t *rev, int *full, kvp_id_fn fn, void *ctx,
                         char *err, size_t errlen)
{
  static const char *const sql =
      "SELECT id, 0 FROM certs WHERE rev > ?1 UNION ALL "
      "SELECT id, 1 FROM certs_gone WHERE rev > ?1 UNION ALL SELECT rev, 2 FROM certs_rev";
  sqlite3_stmt *st = NULL;
  int64_t now = -1;
  int rc = KVP_OK, step;

  *full = 0;
  if (reg->schema < 3) { /* no change counter: everything may have changed */
    *full = 1;
    *rev = -1;
    return KVP_OK;
  }
  if (*rev < 0) { /* first look: nothing known, only the counter is wanted */
    *full = 1;
    return kvp_reg_pragma_int(reg, "SELECT rev FROM certs_rev", rev, err, errlen);
  }
  /* One statement: changed rows, tombstones and the counter from one snapshot. */
  if (sqlite3_prepare_v2(reg->db, sql, -1, &st, NULL) != SQLITE_OK ||
      sqlite3_bind_int64(st, 1, *rev) != SQLITE_OK) {
    rc = kvp_reg_db_err(reg, "cannot read", err, errlen);
    goto out;
  }
  while ((step = sqlite3_step(st)) == SQLITE_ROW) {
    if (sqlite3_column_int(st, 1) == 2)
      now = sqlite3_column_int64(st, 0);
    else if ((rc = fn(ctx, sqlite3_column_int64(st, 0))) != KVP_OK)
      goto out;
  }
  if (step != SQLITE_DONE)
    rc = kvp_reg_db_err(reg, "cannot read", err, errlen);
  else if (now < *rev)
    *full = 1; /* the counter went back: another file was put in place */
  *rev = now;
out:
  sqlite3_finalize(st);
  return rc;
}

int kvp_registry_key_types(kvp_registry *reg, const char *account, int *has_rsa, int *has_ec,
                           char *err, size_t errlen)
{
  /* Before v3 no kalg column: the algorithm OIDs of the SubjectPublicKeyInfo
   * (rsaEncryption, id-ecPublicKey) are searched in the DER. */
  static const char *const v3 =
      "SELECT EXISTS (SELECT 1 FROM certs WHERE account = ?1 AND kalg = 'rsa'), "
      "EXISTS (SELECT 1 FROM certs WHERE account = ?1 AND kalg = 'ec')";
  static const char *const old =
      "SELECT EXISTS (SELECT 1 FROM certs WHERE account = ?1 AND instr(CASE WHEN length(der) > 0 "
      "THEN der ELSE spki END, X'06092A864886F70D010101') > 0), "
      "EXISTS (SELECT 1 FROM certs WHERE account = ?1 AND instr(CASE WHEN length(der) > 0 "
      "THEN der ELSE spki END, X'06072A8648CE3D0201') > 0)";
  sqlite3_stmt *st = NULL;
  int rc = KVP_OK;

  *has_rsa = *has_ec = 0;
  if (reg->db == NULL)
    return kvp_seterr(err, errlen, KVP_ENOMEM, "registry %s: not connected", reg->path);
  if (sqlite3_prepare_v2(reg->db, reg->schema >= 3 ? v3 : reg->schema >= 2 ? old :
                         "SELECT 1, 1", -1, &st, NULL) != SQLITE_OK ||
      (reg->schema >= 2 && sqlite3_bind_text(st, 1, account, -1, SQLITE_STATIC) != SQLITE_OK) ||
      sqlite3_step(st) != SQLITE_ROW) {
    rc = kvp_reg_db_err(reg, "cannot read", err, errlen);
  } else {
    *has_rsa = sqlite3_column_int(st, 0);
    *has_ec = sqlite3_column_int(st, 1);
  }
  sqlite3_finalize(st);
  return rc;
}

/* ---- records --------------------------------------------------------------- */

void kvp_cert_rec_clear(kvp_cert_rec *rec)
{
  if (rec == NULL)
    return;
  KVP_FREE_ALL(rec->account, rec->name, rec->der, rec->subject, rec->issuer, rec->serial,
               rec->key_ref, rec->key_version, rec->resource_group, rec->spki, rec->ckid,
               rec->origin, rec->origin_ref);
  memset(rec, 0, sizeof(*rec));
}

void kvp_cert_rec_free_array(kvp_cert_rec *recs, size_t n)
{
  for (size_t i = 0; recs != NULL && i < n; i++)
    kvp_cert_rec_clear(&recs[i]);
  free(recs);
}
