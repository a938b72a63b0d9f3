/*
 * What registry.c (opening, schema, writes) and registry_read.c (the reads:
 * rows, streaming, the module's indexed lookups, the change counter) share.
 * Not part of the registry's interface (registry.h).
 */
#ifndef KVP_CORE_REGISTRY_INTERNAL_H
#define KVP_CORE_REGISTRY_INTERNAL_H

#include <sqlite3.h>
#include <stdint.h>
#include <sys/stat.h>

#include "registry.h"

#define COLUMNS                                                                                    \
  "id, account, name, type, der, subject, issuer, serial, not_before, not_after, sha1, sha256, "   \
  "key_ref, key_version, resource_group, created, updated"
/* Readers of a version-1 registry (not migrated yet by a writer) see no spki/ckid. */
#define COLUMNS_V3 COLUMNS ", spki, ckid, state, origin, origin_ref, rev"
#define COLUMNS_V2 COLUMNS ", spki, ckid, 'active', NULL, NULL, 0"
#define COLUMNS_V1 COLUMNS ", NULL, NULL, 'active', NULL, NULL, 0"

struct kvp_registry {
  sqlite3 *db;
  char *path;
  int readonly;
  int immutable;        /* reader fallback, see the top of this file */
  struct stat snap[2];  /* immutable: the database and -wal files as last seen */
  int asked;            /* kvp_registry_changed() was called */
  int64_t data_version; /* PRAGMA data_version at the last call */
  int64_t schema;       /* PRAGMA user_version as last read */
  int in_txn;           /* kvp_registry_begin() was called: add joins that transaction */
};

/* Map the connection's last SQLite error to a KVP code and a message. */
int kvp_reg_db_err(const kvp_registry *reg, const char *what, char *err, size_t errlen);
/* The first column of the first row of sql, an integer. */
int kvp_reg_pragma_int(kvp_registry *reg, const char *sql, int64_t *out, char *err, size_t errlen);
/* A text column, "" for NULL. */
const char *kvp_reg_col_cstr(sqlite3_stmt *st, int i);

#endif
