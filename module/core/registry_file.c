/*
 * Checking a registry file before kvp11 registry restore takes it (see
 * registry.h): opened read-only, nothing is changed.
 */
#include <errno.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "registry.h"
#include "util.h"

/* One text result of a statement on db ("" when none); -1 on failure. */
static int db_text(sqlite3 *db, const char *sql, char *out, size_t len)
{
  sqlite3_stmt *st = NULL;
  int rc = -1;

  out[0] = '\0';
  if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK) {
    int step = sqlite3_step(st);
    if (step == SQLITE_ROW || step == SQLITE_DONE) {
      const unsigned char *v = step == SQLITE_ROW ? sqlite3_column_text(st, 0) : NULL;
      if (v)
        snprintf(out, len, "%s", (const char *)v);
      rc = 0;
    }
  }
  sqlite3_finalize(st);
  return rc;
}

int kvp_registry_check_file(const char *src, int64_t *schema, char *err, size_t errlen)
{
  sqlite3 *db = NULL;
  char buf[256];
  int rc = KVP_OK;
  struct stat sb;

  if (stat(src, &sb) != 0)
    return kvp_seterr(err, errlen, errno == ENOENT ? KVP_ENOTFOUND : KVP_EIO, "%s: %s", src,
                      strerror(errno));
  if (!S_ISREG(sb.st_mode))
    return kvp_seterr(err, errlen, KVP_EINVAL, "%s: not a regular file", src);
  if (sqlite3_open_v2(src, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
    rc = kvp_seterr(err, errlen, KVP_EINVAL, "%s: cannot open: %s", src,
                    db ? sqlite3_errmsg(db) : "out of memory");
    goto out;
  }
  if (db_text(db, "PRAGMA user_version", buf, sizeof(buf)) != 0) {
    rc = kvp_seterr(err, errlen, KVP_EINVAL, "%s: not an SQLite database (%s)", src,
                    sqlite3_errmsg(db));
    goto out;
  }
  *schema = strtoll(buf, NULL, 10);
  if (*schema < 1 || *schema > kvp_registry_schema_max() ||
      db_text(db, "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'certs'", buf,
              sizeof(buf)) != 0 ||
      strcmp(buf, "certs") != 0) {
    rc = kvp_seterr(err, errlen, KVP_EINVAL,
                    *schema > kvp_registry_schema_max()
                        ? "%s: registry schema version %lld is newer than this kvp11 knows (%d)"
                        : "%s: not a kvp11 registry (schema version %lld, this kvp11 reads 1 to %d)",
                    src, (long long)*schema, kvp_registry_schema_max());
    goto out;
  }
  if (db_text(db, "PRAGMA integrity_check(1)", buf, sizeof(buf)) != 0 || strcmp(buf, "ok") != 0)
    rc = kvp_seterr(err, errlen, KVP_EIO, "%s: damaged: %s", src,
                    buf[0] ? buf : sqlite3_errmsg(db));
out:
  sqlite3_close(db);
  return rc;
}

