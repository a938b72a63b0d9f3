/*
 * The registry: SQLite database of registered certificates.
 *
 * WAL journal, versioned schema (PRAGMA user_version) with migrations applied
 * by writers. The module opens it read-only and asks kvp_registry_changed()
 * at C_GetSlotList / C_FindObjectsInit time, so certificates registered while
 * an application runs appear without a restart. Writers take an IMMEDIATE
 * transaction with a busy timeout so concurrent kvp11 processes never lose a
 * row.
 */
#ifndef KVP_CORE_REGISTRY_H
#define KVP_CORE_REGISTRY_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
  KVP_CERT_PUBLIC = 0,
  KVP_CERT_PRIVATE = 1,
} kvp_cert_type;

typedef enum {
  KVP_STATE_ACTIVE = 0,  /* signs, decrypts, offered to applications */
  KVP_STATE_RETIRED = 1, /* replaced by a rotation: decrypts only */
} kvp_cert_state;

typedef struct kvp_cert_rec {
  int64_t id;             /* rowid, stable for the life of the row */
  char *account;
  char *name;             /* unique per account */
  kvp_cert_type type;
  unsigned char *der;
  size_t der_len;
  char *subject;          /* RFC 2253 text */
  char *issuer;           /* RFC 2253 text */
  char *serial;           /* upper-case hex */
  int64_t not_before;     /* unix time */
  int64_t not_after;
  char sha1[41];          /* thumbprints, lower-case hex */
  char sha256[65];
  char *key_ref;          /* "hsm:<hsm>/<label>", "keyvault:<vault>/<key>[/<ver>]"; NULL if public */
  char *key_version;      /* Key Vault key version checked at registration, NULL otherwise */
  char *resource_group;   /* optional metadata, NULL if none */
  /* Schema v2. A private row with der_len == 0 is a key without a
   * certificate yet (made by `kvp11 key create` or C_GenerateKeyPair): the
   * module shows its public and private key objects only; subject, issuer,
   * serial are "", sha1/sha256 empty, not_before/not_after 0, spki required. */
  unsigned char *spki;    /* DER SubjectPublicKeyInfo of the key; NULL if not recorded */
  size_t spki_len;
  unsigned char *ckid;    /* CKA_ID chosen by the application; NULL: the default */
  size_t ckid_len;        /* (SHA-1 of the subjectPublicKey) */
  /* Schema v3. */
  kvp_cert_state state;
  char *origin;           /* NULL: registered by hand; "ia:NAME": from integration account NAME */
  char *origin_ref;       /* the row's name in its origin, NULL if none */
  int64_t created;        /* unix time */
  int64_t updated;
} kvp_cert_rec;

typedef struct kvp_registry kvp_registry;

/*
 * Open the registry at path. readonly != 0: the module's view; a missing file
 * is KVP_ENOTFOUND (the module treats it as empty and tries again later).
 * readonly == 0: creates the file (mode 0644, directory must exist) and
 * migrates the schema to the current version.
 */
int kvp_registry_open(const char *path, int readonly, kvp_registry **out, char *err, size_t errlen);
void kvp_registry_close(kvp_registry *reg);

/*
 * *changed = 1 when another connection committed since the last call
 * (PRAGMA data_version), or on the first call. Cheap: no file system scan.
 */
int kvp_registry_changed(kvp_registry *reg, int *changed, char *err, size_t errlen);

/* All rows of an account (account == NULL: all accounts), ordered by account, name. */
int kvp_registry_list(kvp_registry *reg, const char *account, kvp_cert_rec **out, size_t *n,
                      char *err, size_t errlen);
/* One row; KVP_ENOTFOUND when absent. */
int kvp_registry_get(kvp_registry *reg, const char *account, const char *name, kvp_cert_rec *out,
                     char *err, size_t errlen);
/*
 * Insert rec (id, created and updated are set by the registry). A row with
 * the same account and name gives KVP_EEXISTS unless replace != 0, in which
 * case it is updated in place (its id stays, created stays).
 */
int kvp_registry_add(kvp_registry *reg, const kvp_cert_rec *rec, int replace, char *err, size_t errlen);
/* The row with this rowid (any account); KVP_ENOTFOUND when absent. */
int kvp_registry_get_id(kvp_registry *reg, int64_t id, kvp_cert_rec *out, char *err, size_t errlen);
/* KVP_ENOTFOUND when absent. */
int kvp_registry_remove(kvp_registry *reg, const char *account, const char *name, char *err,
                        size_t errlen);

void kvp_cert_rec_clear(kvp_cert_rec *rec);            /* frees the members */
void kvp_cert_rec_free_array(kvp_cert_rec *recs, size_t n);

/* ---- lifecycle and maintenance (kvp11 cert rotate, kvp11 registry) -------- */

/*
 * Write n rows in one transaction: all or none. replace[i] as for
 * kvp_registry_add (NULL: insert only). KVP_EEXISTS names the taken name.
 */
int kvp_registry_add_all(kvp_registry *reg, const kvp_cert_rec *recs, const int *replace, size_t n,
                         char *err, size_t errlen);

/*
 * A consistent copy of the registry into dest (SQLite online backup API: one
 * snapshot, while modules read and other kvp11 processes write). dest is
 * written to a temporary file beside it and renamed into place; it is a
 * self-contained rollback-journal database.
 */
int kvp_registry_backup(kvp_registry *reg, const char *dest, char *err, size_t errlen);

/*
 * Check that src is a kvp11 registry of a supported schema (1 to current) that
 * passes SQLite's integrity check; *schema gets its version. Opens src
 * read-only, changes nothing (registry_file.c).
 */
int kvp_registry_check_file(const char *src, int64_t *schema, char *err, size_t errlen);

/*
 * Replace the content of reg (a writer) with src in one write transaction
 * (online backup API into the live file), after kvp_registry_check_file().
 * Readers (running modules) see a new data_version and reload; an older
 * schema is migrated afterwards.
 */
int kvp_registry_restore(kvp_registry *reg, const char *src, char *err, size_t errlen);

/* The schema version this kvp11 writes (and the newest it reads). */
int kvp_registry_schema(void);

#endif
