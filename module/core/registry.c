/*
 * The certificate registry on SQLite (see registry.h).
 *
 * Writers (the kvp11 tool) open read-write, switch the database to WAL,
 * migrate the schema inside BEGIN IMMEDIATE, and wrap every change in
 * BEGIN IMMEDIATE ... COMMIT with a busy timeout: concurrent writers queue
 * up instead of failing or losing rows.
 *
 * Readers (the module) open with SQLITE_OPEN_READONLY. A WAL database can be
 * read without write access to its directory only if its -wal and -shm files
 * exist (SQLite cannot create them). Two measures make that work:
 *  1. Writers set SQLITE_FCNTL_PERSIST_WAL, so the last writer to close
 *     leaves -wal and -shm in place (checkpointed; both get the database
 *     file's mode, 0644) instead of deleting them. This is the normal case.
 *  2. If a reader still cannot open the WAL index (files removed by hand, or
 *     a database last written by another program), it falls back to
 *     "immutable=1", logs a warning, and detects changes by stat()ing the
 *     database and -wal files instead of PRAGMA data_version; on a change it
 *     reconnects, trying the normal mode first. Immutable readers could read
 *     a half-checkpointed page if a writer checkpoints at that very moment;
 *     that is the price of the fallback, and why measure 1 exists.
 *
 * A kvp_registry handle is not for concurrent use by several threads; the
 * caller serializes (the module holds its own lock around it).
 */
#include "registry.h"
#include "registry_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cert.h"
#include "log.h"
#include "util.h"

#define WRITER_BUSY_MS 10000
#define READER_BUSY_MS 2000

/* Schema migrations: migrations[i] takes user_version i to i + 1. */
static const char *const migrations[] = {
    /* v1 */
    "CREATE TABLE certs ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " account TEXT NOT NULL,"
    " name TEXT NOT NULL,"
    " type TEXT NOT NULL CHECK (type IN ('public', 'private')),"
    " der BLOB NOT NULL,"
    " subject TEXT NOT NULL,"
    " issuer TEXT NOT NULL,"
    " serial TEXT NOT NULL,"
    " not_before INTEGER NOT NULL,"
    " not_after INTEGER NOT NULL,"
    " sha1 TEXT NOT NULL,"
    " sha256 TEXT NOT NULL,"
    " key_ref TEXT,"
    " key_version TEXT,"
    " resource_group TEXT,"
    " created INTEGER NOT NULL,"
    " updated INTEGER NOT NULL,"
    " UNIQUE (account, name),"
    " CHECK ((type = 'private') = (key_ref IS NOT NULL)));",
    /* v2: keys without a certificate yet (der empty, spki set) and the CKA_ID
     * an application chose (C_GenerateKeyPair / C_CreateObject). */
    "ALTER TABLE certs ADD COLUMN spki BLOB;"
    "ALTER TABLE certs ADD COLUMN ckid BLOB;",
    /* v3: lifecycle state (a retired certificate decrypts only), where a row
     * came from (NULL: registered by hand; "ia:NAME": synchronized from an
     * integration account, origin_ref its name there), and the indexes the
     * module's lookups use. */
    "ALTER TABLE certs ADD COLUMN state TEXT NOT NULL DEFAULT 'active'"
    " CHECK (state IN ('active', 'retired'));"
    "ALTER TABLE certs ADD COLUMN origin TEXT;"
    "ALTER TABLE certs ADD COLUMN origin_ref TEXT;"
    "CREATE INDEX certs_ckid ON certs (account, ckid);"
    "CREATE INDEX certs_sha256 ON certs (account, sha256);"
    /* v3, scale: what the module looks objects up by without reading rows
     * (kid: the effective CKA_ID, the chosen one or SHA-1 of the public key;
     * kalg: 'rsa' / 'ec', drives the mechanism list), and the change counter
     * of incremental reloads: every insert and update stamps the row with
     * the next value of certs_rev.rev, every delete leaves a tombstone in
     * certs_gone with its own value, all in the writer's transaction. */
    "ALTER TABLE certs ADD COLUMN kid BLOB;"
    "ALTER TABLE certs ADD COLUMN kalg TEXT;"
    "ALTER TABLE certs ADD COLUMN rev INTEGER NOT NULL DEFAULT 0;"
    "CREATE INDEX certs_kid ON certs (account, kid);"
    "CREATE INDEX certs_kalg ON certs (account, kalg);"
    "CREATE INDEX certs_type ON certs (account, type);"
    "CREATE INDEX certs_by_rev ON certs (rev);"
    "CREATE TABLE certs_rev (rev INTEGER NOT NULL);"
    "INSERT INTO certs_rev (rev) VALUES (0);"
    "CREATE TABLE certs_gone (rev INTEGER PRIMARY KEY, id INTEGER NOT NULL, account TEXT NOT NULL);"
    "CREATE TRIGGER certs_rev_ins AFTER INSERT ON certs BEGIN"
    " UPDATE certs_rev SET rev = rev + 1;"
    " UPDATE certs SET rev = (SELECT rev FROM certs_rev) WHERE id = NEW.id; END;"
    "CREATE TRIGGER certs_rev_upd AFTER UPDATE ON certs WHEN NEW.rev = OLD.rev BEGIN"
    " UPDATE certs_rev SET rev = rev + 1;"
    " UPDATE certs SET rev = (SELECT rev FROM certs_rev) WHERE id = NEW.id; END;"
    "CREATE TRIGGER certs_rev_del AFTER DELETE ON certs BEGIN"
    " UPDATE certs_rev SET rev = rev + 1;"
    " INSERT INTO certs_gone (rev, id, account) VALUES ((SELECT rev FROM certs_rev), OLD.id,"
    " OLD.account); END;",
};
#define SCHEMA_VERSION ((int)KVP_ARRAY_SIZE(migrations))



/* ---- errors and small helpers ------------------------------------------ */

/* Map the connection's last SQLite error to a KVP code and a message. */
int kvp_reg_db_err(const kvp_registry *reg, const char *what, char *err, size_t errlen)
{
  int code = reg->db != NULL ? sqlite3_extended_errcode(reg->db) : SQLITE_NOMEM;
  const char *msg = reg->db != NULL ? sqlite3_errmsg(reg->db) : "out of memory";
  const char *hint = "";
  int rc = KVP_EIO;

  switch (code & 0xff) {
  case SQLITE_NOTADB:
  case SQLITE_CORRUPT:
    hint = " (not a kvp11 registry, or damaged)";
    break;
  case SQLITE_BUSY:
  case SQLITE_LOCKED:
    hint = " (another kvp11 kept it locked too long)";
    break;
  case SQLITE_READONLY:
  case SQLITE_PERM:
  case SQLITE_AUTH:
    rc = KVP_EPERM;
    break;
  case SQLITE_NOMEM:
    rc = KVP_ENOMEM;
    break;
  case SQLITE_CONSTRAINT:
    rc = KVP_EINVAL;
    break;
  default:
    break;
  }
  return kvp_seterr(err, errlen, rc, "registry %s: %s: %s%s", reg->path, what, msg, hint);
}

static int exec(kvp_registry *reg, const char *sql, const char *what, char *err, size_t errlen)
{
  if (sqlite3_exec(reg->db, sql, NULL, NULL, NULL) != SQLITE_OK)
    return kvp_reg_db_err(reg, what, err, errlen);
  return KVP_OK;
}

/* Inside kvp_registry_begin() a change joins the caller's transaction: a
 * failed statement undoes only itself, the caller commits or rolls back. */
static int begin(kvp_registry *reg, char *err, size_t errlen)
{
  if (reg->readonly)
    return kvp_seterr(err, errlen, KVP_EPERM, "registry %s: opened read-only", reg->path);
  if (reg->in_txn)
    return KVP_OK;
  return exec(reg, "BEGIN IMMEDIATE", "cannot start a write", err, errlen);
}

/* COMMIT when rc is KVP_OK, else ROLLBACK. Returns the final rc. */
static int end(kvp_registry *reg, int rc, char *err, size_t errlen)
{
  if (reg->in_txn)
    return rc;
  if (rc == KVP_OK)
    return exec(reg, "COMMIT", "cannot commit", err, errlen);
  sqlite3_exec(reg->db, "ROLLBACK", NULL, NULL, NULL);
  return rc;
}

const char *kvp_reg_col_cstr(sqlite3_stmt *st, int i)
{
  const unsigned char *s = sqlite3_column_text(st, i);

  return s != NULL ? (const char *)s : "";
}

int kvp_reg_pragma_int(kvp_registry *reg, const char *sql, int64_t *out, char *err, size_t errlen)
{
  sqlite3_stmt *st = NULL;
  int rc = KVP_OK;

  if (reg->db == NULL) /* a reconnect failed for lack of memory */
    return kvp_seterr(err, errlen, KVP_ENOMEM, "registry %s: not connected", reg->path);
  if (sqlite3_prepare_v2(reg->db, sql, -1, &st, NULL) != SQLITE_OK ||
      sqlite3_step(st) != SQLITE_ROW)
    rc = kvp_reg_db_err(reg, "cannot read", err, errlen);
  else
    *out = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  return rc;
}

/* ---- schema -------------------------------------------------------------- */

static int check_foreign(kvp_registry *reg, char *err, size_t errlen);

static int check_version(kvp_registry *reg, int64_t v, char *err, size_t errlen)
{
  /* version 0 with tables: another program's database, whatever the mode */
  if (v == 0 && check_foreign(reg, err, errlen) != KVP_OK)
    return KVP_EINVAL;
  if (v > SCHEMA_VERSION)
    return kvp_seterr(err, errlen, KVP_EINVAL,
                      "registry %s: schema version %lld is newer than this kvp11 knows (%d); "
                      "upgrade kvp11",
                      reg->path, (long long)v, SCHEMA_VERSION);
  if (v < 1 && reg->readonly)
    return kvp_seterr(err, errlen, KVP_EINVAL,
                      "registry %s: schema version %lld is older than this kvp11's (%d); run a "
                      "kvp11 command that changes the registry to upgrade it",
                      reg->path, (long long)v, SCHEMA_VERSION);
  return KVP_OK;
}

/* A version-0 database with tables in it is someone else's database. */
static int check_foreign(kvp_registry *reg, char *err, size_t errlen)
{
  int64_t n = 0;
  /* One statement, one snapshot: a writer migrating a new registry at the
   * same time commits tables and version together, never one without the other. */
  int rc = kvp_reg_pragma_int(reg,
                      "SELECT count(*) FROM sqlite_master "
                      "WHERE (SELECT user_version FROM pragma_user_version) = 0",
                      &n, err, errlen);

  if (rc == KVP_OK && n > 0)
    rc = kvp_seterr(err, errlen, KVP_EINVAL,
                    "registry %s: an SQLite database, but not a kvp11 registry", reg->path);
  return rc;
}

/*
 * What the module looks a row up by: the key's CKA_ID (SHA-1 of the
 * subjectPublicKey) and algorithm. A row whose key kvp11 does not support gets
 * neither (the module shows no objects for it).
 */
static void row_key_info(const unsigned char *der, size_t der_len, const unsigned char *spki,
                         size_t spki_len, unsigned char kid[KVP_KEY_ID_LEN], size_t *kid_len,
                         const char **kalg)
{
  kvp_cert_parts parts;
  kvp_spki k;

  *kid_len = 0;
  *kalg = NULL;
  if (der_len > 0) {
    if (kvp_cert_split(der, der_len, &parts) != KVP_OK)
      return;
    spki = parts.spki;
    spki_len = (size_t)parts.spki_len;
  }
  if (kvp_spki_from_der(spki, spki_len, &k) != KVP_OK)
    return;
  *kalg = k.type == 1 ? "rsa" : "ec"; /* kvp_spki.type: 1 RSA, 2 EC */
  memcpy(kid, k.id, KVP_KEY_ID_LEN);
  *kid_len = KVP_KEY_ID_LEN;
  kvp_spki_clear(&k);
}

/* Bind ?i to the effective CKA_ID (the chosen one, else the key's) and ?i+1 to
 * the key algorithm of a row. */
static int bind_key_info(sqlite3_stmt *st, int i, const unsigned char *der, size_t der_len,
                         const unsigned char *spki, size_t spki_len, const unsigned char *ckid,
                         size_t ckid_len)
{
  unsigned char kid[KVP_KEY_ID_LEN];
  size_t kid_len;
  const char *kalg;
  int rc;

  row_key_info(der, der_len, spki, spki_len, kid, &kid_len, &kalg);
  if (kalg == NULL)
    rc = sqlite3_bind_null(st, i);
  else if (ckid_len > 0)
    rc = sqlite3_bind_blob(st, i, ckid, (int)ckid_len, SQLITE_TRANSIENT);
  else
    rc = sqlite3_bind_blob(st, i, kid, (int)kid_len, SQLITE_TRANSIENT);
  if (rc == SQLITE_OK)
    rc = kalg ? sqlite3_bind_text(st, i + 1, kalg, -1, SQLITE_STATIC) : sqlite3_bind_null(st, i + 1);
  return rc;
}

/* Schema v3: fill kid and kalg of the rows an older kvp11 wrote. */
static int fill_key_info(kvp_registry *reg, char *err, size_t errlen)
{
  sqlite3_stmt *sel = NULL, *upd = NULL;
  int rc = KVP_OK, step;

  if (sqlite3_prepare_v2(reg->db, "SELECT id, der, spki, ckid FROM certs", -1, &sel, NULL) !=
          SQLITE_OK ||
      sqlite3_prepare_v2(reg->db, "UPDATE certs SET kid = ?1, kalg = ?2 WHERE id = ?3", -1, &upd,
                         NULL) != SQLITE_OK) {
    rc = kvp_reg_db_err(reg, "cannot migrate the schema", err, errlen);
    goto out;
  }
  /* Rowid order; updating other columns does not move the cursor. */
  while ((step = sqlite3_step(sel)) == SQLITE_ROW) {
    int b = bind_key_info(upd, 1, sqlite3_column_blob(sel, 1), (size_t)sqlite3_column_bytes(sel, 1),
                          sqlite3_column_blob(sel, 2), (size_t)sqlite3_column_bytes(sel, 2),
                          sqlite3_column_blob(sel, 3), (size_t)sqlite3_column_bytes(sel, 3));
    if (b != SQLITE_OK || sqlite3_bind_int64(upd, 3, sqlite3_column_int64(sel, 0)) != SQLITE_OK ||
        sqlite3_step(upd) != SQLITE_DONE) {
      rc = kvp_reg_db_err(reg, "cannot migrate the schema", err, errlen);
      goto out;
    }
    sqlite3_reset(upd);
  }
  if (step != SQLITE_DONE)
    rc = kvp_reg_db_err(reg, "cannot migrate the schema", err, errlen);
out:
  sqlite3_finalize(sel);
  sqlite3_finalize(upd);
  return rc;
}

static int migrate(kvp_registry *reg, char *err, size_t errlen)
{
  int64_t v = 0;
  char sql[64];
  int rc = begin(reg, err, errlen);

  if (rc != KVP_OK)
    return rc;
  rc = kvp_reg_pragma_int(reg, "PRAGMA user_version", &v, err, errlen);
  if (rc == KVP_OK)
    rc = check_version(reg, v, err, errlen);
  for (; rc == KVP_OK && v < SCHEMA_VERSION; v++) {
    KVP_INFO("registry %s: migrating schema to version %lld", reg->path, (long long)v + 1);
    rc = exec(reg, migrations[v], "cannot migrate the schema", err, errlen);
    if (rc == KVP_OK && v + 1 == 3)
      rc = fill_key_info(reg, err, errlen);
    snprintf(sql, sizeof(sql), "PRAGMA user_version = %lld", (long long)v + 1);
    if (rc == KVP_OK)
      rc = exec(reg, sql, "cannot set the schema version", err, errlen);
  }
  return end(reg, rc, err, errlen);
}

/*
 * Writers walk the database's pages (PRAGMA quick_check; tens of ms per
 * 10,000 certificates): a damaged file is reported at open time, rather than
 * by some later query. Readers (the module in every process, cert list) only
 * read the schema: their cost must not grow with the registry, and a damaged
 * page they touch later is reported by that query.
 */
static int check_health(kvp_registry *reg, char *err, size_t errlen)
{
  sqlite3_stmt *st = NULL;
  int rc = KVP_OK;
  const char *sql = reg->readonly ? "SELECT 'ok' FROM (SELECT count(*) FROM sqlite_master)"
                                  : "PRAGMA quick_check(1)";

  if (sqlite3_prepare_v2(reg->db, sql, -1, &st, NULL) != SQLITE_OK ||
      sqlite3_step(st) != SQLITE_ROW)
    rc = kvp_reg_db_err(reg, "damaged", err, errlen);
  else if (strcmp(kvp_reg_col_cstr(st, 0), "ok") != 0)
    rc = kvp_seterr(err, errlen, KVP_EIO, "registry %s: damaged: %s", reg->path, kvp_reg_col_cstr(st, 0));
  sqlite3_finalize(st);
  return rc;
}

/* ---- opening --------------------------------------------------------------- */

/* Create the file with mode 0644 (whatever the umask) if it does not exist. */
static int create_file(const char *path, char *err, size_t errlen)
{
  int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOCTTY, 0644);

  if (fd < 0 && errno == EEXIST)
    return KVP_OK;
  if (fd < 0)
    return kvp_seterr(err, errlen, errno == ENOENT ? KVP_ENOTFOUND : KVP_EIO,
                      "registry %s: cannot create: %s", path, strerror(errno));
  if (fchmod(fd, 0644) != 0)
    KVP_WARN("registry %s: chmod 0644: %s", path, strerror(errno));
  close(fd);
  return KVP_OK;
}

/*
 * Switch to WAL. The switch needs an exclusive lock, and SQLite does not call
 * the busy handler for it, so writers racing to create the registry retry
 * here themselves.
 */
static int set_wal(kvp_registry *reg, char *err, size_t errlen)
{
  int step;

  for (int waited = 0;; waited += 10) {
    sqlite3_stmt *st = NULL;
    int is_wal;

    step = sqlite3_prepare_v2(reg->db, "PRAGMA journal_mode = WAL", -1, &st, NULL);
    if (step == SQLITE_OK)
      step = sqlite3_step(st);
    is_wal = step == SQLITE_ROW && strcmp(kvp_reg_col_cstr(st, 0), "wal") == 0;
    sqlite3_finalize(st);
    if (is_wal)
      return KVP_OK;
    if ((step != SQLITE_BUSY && step != SQLITE_LOCKED) || waited >= WRITER_BUSY_MS)
      break;
    sqlite3_sleep(10);
  }
  if (step == SQLITE_ROW)
    return kvp_seterr(err, errlen, KVP_EIO, "registry %s: cannot switch to WAL", reg->path);
  return kvp_reg_db_err(reg, "cannot switch to WAL", err, errlen);
}

static int open_writer(kvp_registry *reg, char *err, size_t errlen)
{
  int persist = 1;
  int rc = create_file(reg->path, err, errlen);

  if (rc != KVP_OK)
    return rc;
  if (sqlite3_open_v2(reg->path, &reg->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_FULLMUTEX, NULL) !=
      SQLITE_OK)
    return kvp_reg_db_err(reg, "cannot open", err, errlen);
  sqlite3_busy_timeout(reg->db, WRITER_BUSY_MS);
  sqlite3_file_control(reg->db, "main", SQLITE_FCNTL_PERSIST_WAL, &persist);
  /* Refuse a foreign or newer database before anything writes to the file
   * (the WAL journal mode is stored in the file's header). */
  {
    int64_t v = 0;
    rc = kvp_reg_pragma_int(reg, "PRAGMA user_version", &v, err, errlen);
    if (rc == KVP_OK)
      rc = check_version(reg, v, err, errlen);
    if (rc != KVP_OK)
      return rc;
  }
  rc = set_wal(reg, err, errlen);
  /* Keep the WAL file (persistent, see above) but empty it after each full
   * checkpoint: a reader that opens the registry when no other connection
   * has it open rebuilds its WAL index by reading the whole WAL, which after
   * a bulk registration is the size of the database (0.15 s at 100,000
   * certificates, in every process that loads the module). */
  if (rc == KVP_OK)
    rc = exec(reg, "PRAGMA journal_size_limit = 0", "cannot limit the WAL", err, errlen);
  if (rc == KVP_OK)
    rc = migrate(reg, err, errlen);
  reg->schema = SCHEMA_VERSION;
  if (rc == KVP_OK)
    rc = check_health(reg, err, errlen);
  return rc;
}

static void snapshot(const char *path, struct stat snap[2])
{
  char wal[4096];

  memset(snap, 0, 2 * sizeof(*snap));
  snprintf(wal, sizeof(wal), "%s-wal", path);
  (void)stat(path, &snap[0]);
  (void)stat(wal, &snap[1]);
}

static int same_stat(const struct stat *a, const struct stat *b)
{
  return a->st_ino == b->st_ino && a->st_size == b->st_size &&
         a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec;
}

/* "file:" URI for path with immutable=1; %-escapes what URIs reserve. */
static char *immutable_uri(const char *path)
{
  size_t n = strlen(path);
  char *uri = malloc(3 * n + sizeof("file:?immutable=1"));
  char *p = uri;

  if (uri == NULL)
    return NULL;
  p += sprintf(p, "file:");
  for (const unsigned char *s = (const unsigned char *)path; *s; s++) {
    if (*s == '?' || *s == '#' || *s == '%' || *s <= ' ' || *s >= 0x7f)
      p += sprintf(p, "%%%02X", *s);
    else
      *p++ = (char)*s;
  }
  strcpy(p, "?immutable=1");
  return uri;
}

/* One read-only connection; immutable != 0 opens with immutable=1. */
static int connect_reader(kvp_registry *reg, int immutable, char *err, size_t errlen)
{
  char *uri = immutable ? immutable_uri(reg->path) : NULL;
  int flags = SQLITE_OPEN_READONLY | SQLITE_OPEN_FULLMUTEX | (immutable ? SQLITE_OPEN_URI : 0);
  int64_t v = 0;
  int rc;

  if (immutable && uri == NULL)
    return kvp_seterr(err, errlen, KVP_ENOMEM, "registry %s: out of memory", reg->path);
  sqlite3_close_v2(reg->db);
  reg->db = NULL;
  reg->immutable = immutable;
  if (immutable)
    snapshot(reg->path, reg->snap);
  if (sqlite3_open_v2(immutable ? uri : reg->path, &reg->db, flags, NULL) != SQLITE_OK) {
    rc = kvp_reg_db_err(reg, "cannot open", err, errlen);
    goto out;
  }
  sqlite3_busy_timeout(reg->db, READER_BUSY_MS);
  /* The first read opens the WAL index: this is where a reader without
   * access to -shm fails. */
  rc = kvp_reg_pragma_int(reg, "PRAGMA user_version", &v, err, errlen);
  if (rc == KVP_OK)
    rc = check_version(reg, v, err, errlen);
  if (rc == KVP_OK)
    rc = check_health(reg, err, errlen);
  reg->schema = v;
out:
  free(uri);
  return rc;
}

static int can_fall_back(const kvp_registry *reg)
{
  int code = reg->db != NULL ? sqlite3_errcode(reg->db) : SQLITE_OK;

  return code == SQLITE_READONLY || code == SQLITE_CANTOPEN || code == SQLITE_PERM;
}

static int open_reader(kvp_registry *reg, char *err, size_t errlen)
{
  struct stat st;
  int rc;

  if (stat(reg->path, &st) != 0)
    return kvp_seterr(err, errlen, errno == ENOENT ? KVP_ENOTFOUND : KVP_EIO, "registry %s: %s",
                      reg->path, strerror(errno));
  rc = connect_reader(reg, 0, err, errlen);
  if (rc != KVP_OK && can_fall_back(reg)) {
    KVP_WARN("%s; reading it as immutable (changes are noticed by file time)",
             err != NULL ? err : "cannot open the WAL index");
    rc = connect_reader(reg, 1, err, errlen);
  }
  return rc;
}

int kvp_registry_open(const char *path, int readonly, kvp_registry **out, char *err, size_t errlen)
{
  kvp_registry *reg = calloc(1, sizeof(*reg));
  int rc;

  *out = NULL;
  if (reg == NULL || (reg->path = strdup(path)) == NULL) {
    free(reg);
    return kvp_seterr(err, errlen, KVP_ENOMEM, "registry %s: out of memory", path);
  }
  reg->readonly = readonly != 0;
  rc = readonly ? open_reader(reg, err, errlen) : open_writer(reg, err, errlen);
  if (rc != KVP_OK) {
    kvp_registry_close(reg);
    return rc;
  }
  *out = reg;
  return KVP_OK;
}

void kvp_registry_close(kvp_registry *reg)
{
  if (reg == NULL)
    return;
  sqlite3_close_v2(reg->db);
  free(reg->path);
  free(reg);
}

static int reconnect(kvp_registry *reg, char *err, size_t errlen)
{
  int rc = connect_reader(reg, 0, err, errlen);

  if (rc != KVP_OK && can_fall_back(reg))
    rc = connect_reader(reg, 1, err, errlen);
  return rc;
}

int kvp_registry_changed(kvp_registry *reg, int *changed, char *err, size_t errlen)
{
  struct stat now[2];
  int64_t v = 0;
  int rc;

  *changed = 0;
  if (reg->immutable) {
    snapshot(reg->path, now);
    if (reg->asked && same_stat(&now[0], &reg->snap[0]) && same_stat(&now[1], &reg->snap[1]))
      return KVP_OK;
    if (reg->asked && (rc = reconnect(reg, err, errlen)) != KVP_OK)
      return rc;
    reg->asked = 1;
    *changed = 1;
    if (reg->immutable)
      return KVP_OK;
    /* Back to normal mode: start counting from the new connection. */
    return kvp_reg_pragma_int(reg, "PRAGMA data_version", &reg->data_version, err, errlen);
  }
  rc = kvp_reg_pragma_int(reg, "PRAGMA data_version", &v, err, errlen);
  if (rc != KVP_OK)
    return rc;
  *changed = !reg->asked || reg->data_version != v;
  reg->asked = 1;
  reg->data_version = v;
  /* a writer may have migrated the schema underneath */
  if (*changed && reg->readonly)
    return kvp_reg_pragma_int(reg, "PRAGMA user_version", &reg->schema, err, errlen);
  return KVP_OK;
}

/* ---- changes ------------------------------------------------------------- */

static int check_rec(const kvp_cert_rec *r, char *err, size_t errlen)
{
  const char *bad = NULL;

  if (r->account == NULL || *r->account == '\0')
    bad = "no account";
  else if (r->name == NULL || *r->name == '\0')
    bad = "no name";
  else if (r->der_len == 0 && (r->type != KVP_CERT_PRIVATE || r->spki == NULL || r->spki_len == 0))
    bad = "an entry without a certificate must be a private key with its public key";
  else if (r->der_len > 0 &&
           (r->der == NULL || r->subject == NULL || r->issuer == NULL || r->serial == NULL ||
            strlen(r->sha1) != 40 || strlen(r->sha256) != 64))
    bad = "certificate fields missing";
  else if (r->ckid_len > 255)
    bad = "CKA_ID longer than 255 bytes";
  else if ((r->type == KVP_CERT_PRIVATE) != (r->key_ref != NULL))
    bad = r->key_ref == NULL ? "a private certificate needs a key reference"
                             : "a public certificate has no key reference";
  else if (r->type != KVP_CERT_PUBLIC && r->type != KVP_CERT_PRIVATE)
    bad = "bad type";
  if (bad == NULL)
    return KVP_OK;
  return kvp_seterr(err, errlen, KVP_EINVAL, "certificate '%s': %s", r->name ? r->name : "", bad);
}

static int bind_text(sqlite3_stmt *st, int i, const char *s)
{
  return s != NULL ? sqlite3_bind_text(st, i, s, -1, SQLITE_STATIC) : sqlite3_bind_null(st, i);
}

/* A BLOB parameter: NULL binds SQL NULL, a zero-length one an empty BLOB. */
static int bind_blob(sqlite3_stmt *st, int i, const void *b, size_t n, int empty_ok)
{
  if (b == NULL && !(empty_ok && n == 0))
    return sqlite3_bind_null(st, i);
  return n == 0 ? sqlite3_bind_zeroblob(st, i, 0) : sqlite3_bind_blob(st, i, b, (int)n, SQLITE_STATIC);
}

static int bind_rec(sqlite3_stmt *st, const kvp_cert_rec *r, int64_t now)
{
  return bind_text(st, 1, r->account) | bind_text(st, 2, r->name) |
         bind_text(st, 3, r->type == KVP_CERT_PRIVATE ? "private" : "public") |
         bind_blob(st, 4, r->der, r->der_len, 1) |
         bind_text(st, 5, r->subject ? r->subject : "") | bind_text(st, 6, r->issuer ? r->issuer : "") |
         bind_text(st, 7, r->serial ? r->serial : "") |
         sqlite3_bind_int64(st, 8, r->not_before) | sqlite3_bind_int64(st, 9, r->not_after) |
         bind_text(st, 10, r->sha1) | bind_text(st, 11, r->sha256) | bind_text(st, 12, r->key_ref) |
         bind_text(st, 13, r->key_version) | bind_text(st, 14, r->resource_group) |
         sqlite3_bind_int64(st, 15, now) | bind_blob(st, 16, r->spki, r->spki_len, 0) |
         bind_blob(st, 17, r->ckid, r->ckid_len, 0) |
         bind_text(st, 18, r->state == KVP_STATE_RETIRED ? "retired" : "active") |
         bind_text(st, 19, r->origin) | bind_text(st, 20, r->origin_ref) |
         bind_key_info(st, 21, r->der, r->der_len, r->spki, r->spki_len, r->ckid, r->ckid_len);
}

#define INSERT_SQL                                                                                 \
  "INSERT INTO certs (account, name, type, der, subject, issuer, serial, not_before, not_after, "  \
  "sha1, sha256, key_ref, key_version, resource_group, created, updated, spki, ckid, state, "      \
  "origin, origin_ref, kid, kalg) "                                                                \
  "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?15, ?16, ?17, ?18, "  \
  "?19, ?20, ?21, ?22)"
/* The upsert keeps id and created. */
#define UPSERT_SQL                                                                                 \
  INSERT_SQL " ON CONFLICT (account, name) DO UPDATE SET type = excluded.type, "                   \
             "der = excluded.der, subject = excluded.subject, issuer = excluded.issuer, "          \
             "serial = excluded.serial, not_before = excluded.not_before, "                        \
             "not_after = excluded.not_after, sha1 = excluded.sha1, sha256 = excluded.sha256, "    \
             "key_ref = excluded.key_ref, key_version = excluded.key_version, "                    \
             "resource_group = excluded.resource_group, updated = excluded.updated, "              \
             "spki = excluded.spki, ckid = excluded.ckid, state = excluded.state, "                \
             "origin = excluded.origin, origin_ref = excluded.origin_ref, kid = excluded.kid, "    \
             "kalg = excluded.kalg"

int kvp_registry_add(kvp_registry *reg, const kvp_cert_rec *rec, int replace, char *err,
                     size_t errlen)
{
  sqlite3_stmt *st = NULL;
  int rc = check_rec(rec, err, errlen);

  if (rc != KVP_OK)
    return rc;
  if (rec->der_len > 1024 * 1024)
    return kvp_seterr(err, errlen, KVP_EINVAL, "certificate '%s': too large", rec->name);
  rc = begin(reg, err, errlen);
  if (rc != KVP_OK)
    return rc;
  if (sqlite3_prepare_v2(reg->db, replace ? UPSERT_SQL : INSERT_SQL, -1, &st, NULL) != SQLITE_OK ||
      bind_rec(st, rec, (int64_t)time(NULL)) != SQLITE_OK) {
    rc = kvp_reg_db_err(reg, "cannot add", err, errlen);
  } else if (sqlite3_step(st) != SQLITE_DONE) {
    if (sqlite3_extended_errcode(reg->db) == SQLITE_CONSTRAINT_UNIQUE)
      rc = kvp_seterr(err, errlen, KVP_EEXISTS,
                      "a certificate named '%s' exists already in account '%s'", rec->name,
                      rec->account);
    else
      rc = kvp_reg_db_err(reg, "cannot add", err, errlen);
  }
  sqlite3_finalize(st);
  return end(reg, rc, err, errlen);
}

int kvp_registry_remove(kvp_registry *reg, const char *account, const char *name, char *err,
                        size_t errlen)
{
  sqlite3_stmt *st = NULL;
  int rc = begin(reg, err, errlen);

  if (rc != KVP_OK)
    return rc;
  if (sqlite3_prepare_v2(reg->db, "DELETE FROM certs WHERE account = ?1 AND name = ?2", -1, &st,
                         NULL) != SQLITE_OK ||
      bind_text(st, 1, account) != SQLITE_OK || bind_text(st, 2, name) != SQLITE_OK ||
      sqlite3_step(st) != SQLITE_DONE)
    rc = kvp_reg_db_err(reg, "cannot remove", err, errlen);
  else if (sqlite3_changes(reg->db) == 0)
    rc = kvp_seterr(err, errlen, KVP_ENOTFOUND, "no certificate '%s' in account '%s'", name,
                    account);
  sqlite3_finalize(st);
  return end(reg, rc, err, errlen);
}

/* ---- transactions of several changes --------------------------------------- */

int kvp_registry_begin(kvp_registry *reg, char *err, size_t errlen)
{
  int rc;

  if (reg->in_txn)
    return kvp_seterr(err, errlen, KVP_EINVAL, "registry %s: a transaction is open", reg->path);
  /* A batch touches more pages than the default 2 MiB cache holds; spilling
   * them to the WAL mid-transaction writes index pages many times over. */
  (void)exec(reg, "PRAGMA cache_size = -65536", "cannot size the cache", NULL, 0);
  rc = begin(reg, err, errlen);
  reg->in_txn = rc == KVP_OK;
  return rc;
}

int kvp_registry_end(kvp_registry *reg, int commit, char *err, size_t errlen)
{
  int rc;

  if (!reg->in_txn)
    return kvp_seterr(err, errlen, KVP_EINVAL, "registry %s: no transaction is open", reg->path);
  reg->in_txn = 0;
  rc = end(reg, commit ? KVP_OK : KVP_ERR, err, errlen);
  /* After a batch the WAL holds every page it wrote: move them into the
   * database and empty it now (best effort: readers in the middle of a read
   * make it wait at most the busy timeout, then it is left to later ones). */
  if (rc == KVP_OK && commit)
    (void)sqlite3_wal_checkpoint_v2(reg->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
  return rc;
}

/* ---- the front's login and fork helpers (kept apart from the rest) ----- */

int kvp_registry_key_stores(kvp_registry *reg, const char *account, char ***out, size_t *n,
                            char *err, size_t errlen)
{
  /* "hsm:appliance/app" -> "hsm:appliance"; only the store part, one row each. */
  static const char sql[] = "SELECT DISTINCT substr(key_ref, 1, instr(key_ref, '/') - 1) "
                            "FROM certs WHERE account = ?1 AND type = 'private' AND key_ref IS NOT NULL "
                            "AND instr(key_ref, '/') > 1";
  sqlite3_stmt *st = NULL;
  char **stores = NULL;
  size_t count = 0;
  int rc = KVP_OK, step;

  *out = NULL;
  *n = 0;
  if (reg->db == NULL)
    return kvp_seterr(err, errlen, KVP_EIO, "registry %s: not connected", reg->path);
  if (sqlite3_prepare_v2(reg->db, sql, -1, &st, NULL) != SQLITE_OK ||
      sqlite3_bind_text(st, 1, account, -1, SQLITE_STATIC) != SQLITE_OK) {
    rc = kvp_reg_db_err(reg, "cannot read", err, errlen);
    goto out;
  }
  while ((step = sqlite3_step(st)) == SQLITE_ROW) {
    char **p = realloc(stores, (count + 1) * sizeof(*stores));
    if (p == NULL || (p[count] = strdup(kvp_reg_col_cstr(st, 0))) == NULL) {
      stores = p != NULL ? p : stores;
      rc = kvp_seterr(err, errlen, KVP_ENOMEM, "registry %s: out of memory", reg->path);
      goto out;
    }
    stores = p;
    count++;
  }
  if (step != SQLITE_DONE)
    rc = kvp_reg_db_err(reg, "cannot read", err, errlen);
out:
  sqlite3_finalize(st);
  if (rc != KVP_OK) {
    kvp_registry_key_stores_free(stores, count);
    return rc;
  }
  *out = stores;
  *n = count;
  return KVP_OK;
}

void kvp_registry_key_stores_free(char **stores, size_t n)
{
  for (size_t i = 0; stores != NULL && i < n; i++)
    free(stores[i]);
  free(stores);
}

void kvp_registry_abandon(kvp_registry *reg)
{
  /* The SQLite connection (and its file descriptors and locks) belongs to
   * the parent process: closing it here could checkpoint, unlock or unlink
   * under the parent's feet. Only the handle's own memory is released. */
  if (reg == NULL)
    return;
  free(reg->path);
  free(reg);
}

/* ==== lifecycle and maintenance ============================================
 * kvp11 cert rotate (several rows in one transaction) and kvp11 registry
 * backup / restore / check. Kept apart from the rest of this file.
 */

int kvp_registry_add_all(kvp_registry *reg, const kvp_cert_rec *recs, const int *replace, size_t n,
                         char *err, size_t errlen)
{
  int rc = KVP_OK;

  for (size_t i = 0; i < n && rc == KVP_OK; i++)
    rc = check_rec(&recs[i], err, errlen);
  if (rc != KVP_OK || (rc = begin(reg, err, errlen)) != KVP_OK)
    return rc;
  for (size_t i = 0; i < n && rc == KVP_OK; i++) {
    sqlite3_stmt *st = NULL;
    int rep = replace != NULL && replace[i];
    if (sqlite3_prepare_v2(reg->db, rep ? UPSERT_SQL : INSERT_SQL, -1, &st, NULL) != SQLITE_OK ||
        bind_rec(st, &recs[i], (int64_t)time(NULL)) != SQLITE_OK)
      rc = kvp_reg_db_err(reg, "cannot add", err, errlen);
    else if (sqlite3_step(st) != SQLITE_DONE)
      rc = sqlite3_extended_errcode(reg->db) == SQLITE_CONSTRAINT_UNIQUE
               ? kvp_seterr(err, errlen, KVP_EEXISTS,
                            "a certificate named '%s' exists already in account '%s'",
                            recs[i].name, recs[i].account)
               : kvp_reg_db_err(reg, "cannot add", err, errlen);
    sqlite3_finalize(st);
  }
  return end(reg, rc, err, errlen);
}

/* Copy every page of src_db into dst_db's main database in one step. */
static int copy_db(sqlite3 *dst_db, sqlite3 *src_db, const char *what, char *err, size_t errlen)
{
  sqlite3_backup *b = sqlite3_backup_init(dst_db, "main", src_db, "main");
  int step;

  if (b == NULL)
    return kvp_seterr(err, errlen, KVP_EIO, "%s: %s", what, sqlite3_errmsg(dst_db));
  /* -1: all pages at once, under one read transaction of the source (a
   * consistent snapshot) and one write transaction of the destination */
  for (int waited = 0; (step = sqlite3_backup_step(b, -1)) == SQLITE_BUSY || step == SQLITE_LOCKED;
       waited += 20) {
    if (waited >= WRITER_BUSY_MS)
      break;
    sqlite3_sleep(20);
  }
  sqlite3_backup_finish(b);
  if (step != SQLITE_DONE)
    return kvp_seterr(err, errlen, step == SQLITE_READONLY ? KVP_EPERM : KVP_EIO, "%s: %s", what,
                      sqlite3_errstr(step));
  return KVP_OK;
}

int kvp_registry_backup(kvp_registry *reg, const char *dest, char *err, size_t errlen)
{
  size_t n = strlen(dest) + 32;
  char *tmp = malloc(n);
  sqlite3 *db = NULL;
  int rc, fd;

  if (tmp == NULL)
    return kvp_seterr(err, errlen, KVP_ENOMEM, "out of memory");
  snprintf(tmp, n, "%s.tmp-%ld", dest, (long)getpid());
  fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOCTTY, 0644);
  if (fd < 0) {
    rc = kvp_seterr(err, errlen, errno == ENOENT ? KVP_ENOTFOUND : KVP_EIO, "%s: cannot create: %s",
                    tmp, strerror(errno));
    free(tmp);
    return rc;
  }
  close(fd);
  if (sqlite3_open_v2(tmp, &db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK) {
    rc = kvp_seterr(err, errlen, KVP_EIO, "%s: cannot open: %s", tmp,
                    db ? sqlite3_errmsg(db) : "out of memory");
    goto out;
  }
  sqlite3_busy_timeout(reg->db, WRITER_BUSY_MS);
  rc = copy_db(db, reg->db, "backup", err, errlen);
  /* a file of its own: no -wal beside it */
  if (rc == KVP_OK && sqlite3_exec(db, "PRAGMA journal_mode = DELETE", NULL, NULL, NULL) != SQLITE_OK)
    rc = kvp_seterr(err, errlen, KVP_EIO, "%s: %s", tmp, sqlite3_errmsg(db));
  if (sqlite3_close(db) != SQLITE_OK && rc == KVP_OK)
    rc = kvp_seterr(err, errlen, KVP_EIO, "%s: cannot close", tmp);
  db = NULL;
  if (rc == KVP_OK && rename(tmp, dest) != 0)
    rc = kvp_seterr(err, errlen, KVP_EIO, "%s: cannot rename into place: %s", dest,
                    strerror(errno));
out:
  sqlite3_close(db);
  if (rc != KVP_OK)
    unlink(tmp);
  free(tmp);
  return rc;
}

int kvp_registry_schema_max(void)
{
  return SCHEMA_VERSION;
}

int kvp_registry_restore(kvp_registry *reg, const char *src, char *err, size_t errlen)
{
  sqlite3 *db = NULL;
  int64_t schema = 0;
  int rc;

  if (reg->readonly)
    return kvp_seterr(err, errlen, KVP_EPERM, "registry %s: opened read-only", reg->path);
  if ((rc = kvp_registry_check_file(src, &schema, err, errlen)) != KVP_OK)
    return rc;
  if (sqlite3_open_v2(src, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
    rc = kvp_seterr(err, errlen, KVP_EIO, "%s: cannot open", src);
    sqlite3_close(db);
    return rc;
  }
  rc = copy_db(reg->db, db, "restore", err, errlen);
  sqlite3_close(db);
  if (rc != KVP_OK)
    return rc;
  KVP_INFO("registry %s: restored from %s (schema version %lld)", reg->path, src,
           (long long)schema);
  /* the copy brought the source's journal mode and schema: make it ours again */
  rc = set_wal(reg, err, errlen);
  if (rc == KVP_OK)
    rc = migrate(reg, err, errlen);
  if (rc == KVP_OK)
    rc = check_health(reg, err, errlen);
  return rc;
}
