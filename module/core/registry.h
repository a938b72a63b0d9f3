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
  int64_t rev;            /* v3: change counter of the row's last change; 0 before v3 */
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

/*
 * Row callback of the streaming reads: called once per row; it may take the
 * members of rec (zeroing them). A non-zero return stops the read and is
 * returned by it.
 */
typedef int (*kvp_rec_fn)(void *ctx, kvp_cert_rec *rec);

/* kvp_registry_list, one row at a time (constant memory): cert list. */
int kvp_registry_each(kvp_registry *reg, const char *account, kvp_rec_fn fn, void *ctx, char *err,
                      size_t errlen);

/*
 * The module's indexed lookups: rows of one account with id > after_id in id
 * order, at most limit (0: no limit). name, kid, private_only and with_cert
 * narrow the selection through indexes; kid is ignored before schema v3 (the
 * caller matches the objects anyway).
 */
typedef struct kvp_rec_query {
  const char *account;
  const char *name;           /* NULL: any */
  const unsigned char *kid;   /* the effective CKA_ID; NULL: any */
  size_t kid_len;
  int private_only;           /* rows of private certificates / keys only */
  int with_cert;              /* rows with a certificate only */
  int64_t after_id;
  size_t limit;
} kvp_rec_query;
int kvp_registry_batch(kvp_registry *reg, const kvp_rec_query *q, kvp_cert_rec **out, size_t *n,
                       char *err, size_t errlen);

/* Schema version of the registry as last read. */
int kvp_registry_schema(const kvp_registry *reg);

/*
 * Incremental reload. *rev is the change counter the caller knows (-1: none).
 * Calls fn for the id of every row inserted, updated or removed since, then
 * sets *rev to the counter now. *full = 1 when the caller must forget all it
 * knows instead: the first call, a registry before schema v3 (no counter),
 * or a counter that went back (another file put in place).
 */
typedef int (*kvp_id_fn)(void *ctx, int64_t id);
int kvp_registry_changes(kvp_registry *reg, int64_t *rev, int *full, kvp_id_fn fn, void *ctx,
                         char *err, size_t errlen);

/* Whether the account has RSA / EC keys (an index lookup from v3 on). */
int kvp_registry_key_types(kvp_registry *reg, const char *account, int *has_rsa, int *has_ec,
                           char *err, size_t errlen);

/*
 * One transaction around several kvp_registry_add / _remove calls (cert add
 * --cert-dir). A failed add inside undoes only itself; kvp_registry_end
 * commits (commit != 0) or rolls everything back.
 */
int kvp_registry_begin(kvp_registry *reg, char *err, size_t errlen);
int kvp_registry_end(kvp_registry *reg, int commit, char *err, size_t errlen);

void kvp_cert_rec_clear(kvp_cert_rec *rec);            /* frees the members */
void kvp_cert_rec_free_array(kvp_cert_rec *recs, size_t n);

/*
 * The key stores ("hsm:NAME", "keyvault:NAME": the part of key_ref before the
 * first '/') that the rows of account use, each once. Free with
 * kvp_registry_key_stores_free().
 */
int kvp_registry_key_stores(kvp_registry *reg, const char *account, char ***out, size_t *n,
                            char *err, size_t errlen);
void kvp_registry_key_stores_free(char **stores, size_t n);

/*
 * In a child after fork(): drop a handle inherited from the parent without
 * touching its SQLite connection (which stays the parent's); frees only the
 * handle's memory.
 */
void kvp_registry_abandon(kvp_registry *reg);

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
int kvp_registry_schema_max(void);

#endif
