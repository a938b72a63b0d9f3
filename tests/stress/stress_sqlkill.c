/*
 * kvp11-stress-sqlkill REGISTRY MODE NAME: a registry writer that dies with SIGKILL in the
 * middle of a transaction (issue 6, item 8).
 *
 * Opens REGISTRY with sqlite3 directly (as another kvp11 writer would), takes
 * BEGIN IMMEDIATE, then, depending on MODE:
 *   insert   inserts a copy of the first row under the name NAME
 *   delete   deletes the row named NAME
 *   update   rewrites the DER of the row named NAME with garbage
 * and kills itself with SIGKILL before COMMIT. Exits 1 (not killed) if a step fails.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include <sqlite3.h>

int main(int argc, char **argv)
{
  if (argc != 4) {
    fprintf(stderr, "usage: %s REGISTRY insert|delete|update NAME\n", argv[0]);
    return 1;
  }
  sqlite3 *db = NULL;
  if (sqlite3_open_v2(argv[1], &db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK) {
    fprintf(stderr, "open %s: %s\n", argv[1], db ? sqlite3_errmsg(db) : "out of memory");
    return 1;
  }
  sqlite3_busy_timeout(db, 10000);
  const char *sql;
  if (strcmp(argv[2], "insert") == 0)
    sql = "INSERT INTO certs (account, name, type, der, subject, issuer, serial, not_before,"
          " not_after, sha1, sha256, key_ref, key_version, resource_group, created, updated)"
          " SELECT account, ?1, 'public', der, subject, issuer, serial, not_before, not_after,"
          " sha1, sha256, NULL, NULL, NULL, created, updated FROM certs ORDER BY id LIMIT 1";
  else if (strcmp(argv[2], "delete") == 0)
    sql = "DELETE FROM certs WHERE name = ?1";
  else if (strcmp(argv[2], "update") == 0)
    sql = "UPDATE certs SET der = x'deadbeef' WHERE name = ?1";
  else {
    fprintf(stderr, "unknown mode %s\n", argv[2]);
    return 1;
  }
  sqlite3_stmt *st = NULL;
  if (sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK ||
      sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK ||
      sqlite3_bind_text(st, 1, argv[3], -1, SQLITE_STATIC) != SQLITE_OK ||
      sqlite3_step(st) != SQLITE_DONE || sqlite3_changes(db) != 1) {
    fprintf(stderr, "%s %s: %s\n", argv[2], argv[3], sqlite3_errmsg(db));
    return 1;
  }
  /* flush the change into the WAL / journal without committing, then die */
  sqlite3_db_cacheflush(db);
  raise(SIGKILL);
  return 1;
}
