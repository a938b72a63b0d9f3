/*
 * Unit tests of module/core/registry.c: add/get/list/remove/replace, change
 * detection between a writer and a read-only reader, read-only opening
 * without write access to the directory, bad files, schema versions, and
 * concurrent writer processes.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <CUnit/Basic.h>
#include <CUnit/CUnit.h>
#include <sqlite3.h>

#include "core/log.h"
#include "core/registry.h"
#include "core/util.h"
#include "unit_util.h"

static char g_dir[1024];

static void db_path(char *out, size_t n, const char *name)
{
  snprintf(out, n, "%s/%s", g_dir, name);
}

/* A fresh path: removes name and its -wal/-shm. */
static void fresh(char *out, size_t n, const char *name)
{
  char p[1300];

  db_path(out, n, name);
  unlink(out);
  snprintf(p, sizeof(p), "%s-wal", out);
  unlink(p);
  snprintf(p, sizeof(p), "%s-shm", out);
  unlink(p);
}

static unsigned char g_der[] = {0x30, 0x03, 0x02, 0x01, 0x05};

/* A record that only needs to satisfy the registry (the DER is not parsed). */
static kvp_cert_rec make_rec(const char *account, const char *name, kvp_cert_type type)
{
  kvp_cert_rec r = {0};

  r.account = (char *)account;
  r.name = (char *)name;
  r.type = type;
  r.der = g_der;
  r.der_len = sizeof(g_der);
  r.subject = "CN=test,O=kvp11";
  r.issuer = "CN=issuer";
  r.serial = "0A1B";
  r.not_before = 1700000000;
  r.not_after = 1900000000;
  memset(r.sha1, 'a', 40);
  memset(r.sha256, 'b', 64);
  if (type == KVP_CERT_PRIVATE)
    r.key_ref = "hsm:appliance/app";
  return r;
}

static kvp_registry *open_ok(const char *path, int readonly)
{
  kvp_registry *reg = NULL;
  char err[KVP_ERRLEN] = "";
  int rc = kvp_registry_open(path, readonly, &reg, err, sizeof(err));

  if (rc != KVP_OK)
    fprintf(stderr, "\n  open %s: %d %s\n", path, rc, err);
  CU_ASSERT_EQUAL(rc, KVP_OK);
  return reg;
}

static int count_rows(kvp_registry *reg, const char *account)
{
  kvp_cert_rec *recs = NULL;
  size_t n = 0;
  char err[KVP_ERRLEN];

  if (kvp_registry_list(reg, account, &recs, &n, err, sizeof(err)) != KVP_OK)
    return -1;
  kvp_cert_rec_free_array(recs, n);
  return (int)n;
}

static void test_add_get(void)
{
  char path[1100], err[KVP_ERRLEN], p[1200];
  kvp_cert_rec r = make_rec("default", "privateCert", KVP_CERT_PRIVATE), got;
  kvp_registry *reg;
  struct stat st;

  fresh(path, sizeof(path), "basic.db");
  umask(077);
  reg = open_ok(path, 0);
  umask(022);
  CU_ASSERT_PTR_NOT_NULL_FATAL(reg);
  CU_ASSERT_EQUAL(stat(path, &st), 0);
  CU_ASSERT_EQUAL(st.st_mode & 0777, 0644);

  r.key_version = "0123abcd";
  r.resource_group = "rg-b2b";
  CU_ASSERT_EQUAL(kvp_registry_add(reg, &r, 0, err, sizeof(err)), KVP_OK);
  CU_ASSERT_EQUAL_FATAL(kvp_registry_get(reg, "default", "privateCert", &got, err, sizeof(err)),
                        KVP_OK);
  CU_ASSERT(got.id > 0);
  CU_ASSERT_STRING_EQUAL(got.account, "default");
  CU_ASSERT_STRING_EQUAL(got.name, "privateCert");
  CU_ASSERT_EQUAL(got.type, KVP_CERT_PRIVATE);
  CU_ASSERT_EQUAL(got.der_len, sizeof(g_der));
  CU_ASSERT(memcmp(got.der, g_der, sizeof(g_der)) == 0);
  CU_ASSERT_STRING_EQUAL(got.subject, r.subject);
  CU_ASSERT_STRING_EQUAL(got.issuer, r.issuer);
  CU_ASSERT_STRING_EQUAL(got.serial, "0A1B");
  CU_ASSERT_EQUAL(got.not_before, 1700000000);
  CU_ASSERT_EQUAL(got.not_after, 1900000000);
  CU_ASSERT_STRING_EQUAL(got.sha1, r.sha1);
  CU_ASSERT_STRING_EQUAL(got.sha256, r.sha256);
  CU_ASSERT_STRING_EQUAL(got.key_ref, "hsm:appliance/app");
  CU_ASSERT_STRING_EQUAL(got.key_version, "0123abcd");
  CU_ASSERT_STRING_EQUAL(got.resource_group, "rg-b2b");
  CU_ASSERT(got.created > 1700000000 && got.created <= time(NULL));
  CU_ASSERT_EQUAL(got.updated, got.created);
  kvp_cert_rec_clear(&got);
  CU_ASSERT_PTR_NULL(got.name);

  /* A public one: the optional fields come back NULL. */
  r = make_rec("default", "partner", KVP_CERT_PUBLIC);
  CU_ASSERT_EQUAL(kvp_registry_add(reg, &r, 0, err, sizeof(err)), KVP_OK);
  CU_ASSERT_EQUAL_FATAL(kvp_registry_get(reg, "default", "partner", &got, err, sizeof(err)),
                        KVP_OK);
  CU_ASSERT_EQUAL(got.type, KVP_CERT_PUBLIC);
  CU_ASSERT_PTR_NULL(got.key_ref);
  CU_ASSERT_PTR_NULL(got.key_version);
  CU_ASSERT_PTR_NULL(got.resource_group);
  kvp_cert_rec_clear(&got);

  CU_ASSERT_EQUAL(kvp_registry_get(reg, "default", "nope", &got, err, sizeof(err)), KVP_ENOTFOUND);
  CU_ASSERT_PTR_NOT_NULL(strstr(err, "nope"));
  CU_ASSERT_EQUAL(kvp_registry_get(reg, "other", "partner", &got, err, sizeof(err)), KVP_ENOTFOUND);
  kvp_registry_close(reg);

  /* Writers leave -wal and -shm behind so that read-only readers work. */
  snprintf(p, sizeof(p), "%s-wal", path);
  CU_ASSERT_EQUAL(access(p, F_OK), 0);
  snprintf(p, sizeof(p), "%s-shm", path);
  CU_ASSERT_EQUAL(access(p, F_OK), 0);
}

static void test_invalid_rec(void)
{
  char path[1100], err[KVP_ERRLEN];
  kvp_registry *reg;
  kvp_cert_rec r;

  fresh(path, sizeof(path), "invalid.db");
  reg = open_ok(path, 0);
  CU_ASSERT_PTR_NOT_NULL_FATAL(reg);
  r = make_rec("default", "x", KVP_CERT_PRIVATE);
  r.key_ref = NULL;
  CU_ASSERT_EQUAL(kvp_registry_add(reg, &r, 0, err, sizeof(err)), KVP_EINVAL);
  CU_ASSERT_PTR_NOT_NULL(strstr(err, "key reference"));
  r = make_rec("default", "x", KVP_CERT_PUBLIC);
  r.key_ref = "hsm:a/b";
  CU_ASSERT_EQUAL(kvp_registry_add(reg, &r, 0, err, sizeof(err)), KVP_EINVAL);
  r = make_rec("default", "", KVP_CERT_PUBLIC);
  CU_ASSERT_EQUAL(kvp_registry_add(reg, &r, 0, err, sizeof(err)), KVP_EINVAL);
  r = make_rec("default", "x", KVP_CERT_PUBLIC);
  r.sha1[0] = '\0';
  CU_ASSERT_EQUAL(kvp_registry_add(reg, &r, 0, err, sizeof(err)), KVP_EINVAL);
  CU_ASSERT_EQUAL(count_rows(reg, NULL), 0);
  kvp_registry_close(reg);
}

static void test_duplicate_replace_remove(void)
{
  char path[1100], err[KVP_ERRLEN];
  kvp_cert_rec r = make_rec("default", "dup", KVP_CERT_PUBLIC), a, b;
  kvp_registry *reg;

  fresh(path, sizeof(path), "dup.db");
  reg = open_ok(path, 0);
  CU_ASSERT_PTR_NOT_NULL_FATAL(reg);
  CU_ASSERT_EQUAL(kvp_registry_add(reg, &r, 0, err, sizeof(err)), KVP_OK);
  CU_ASSERT_EQUAL(kvp_registry_add(reg, &r, 0, err, sizeof(err)), KVP_EEXISTS);
  CU_ASSERT_PTR_NOT_NULL(strstr(err, "'dup'"));
  CU_ASSERT_EQUAL(count_rows(reg, NULL), 1);
  /* The same name in another account is another certificate. */
  r.account = "second";
  CU_ASSERT_EQUAL(kvp_registry_add(reg, &r, 0, err, sizeof(err)), KVP_OK);
  r.account = "default";

  CU_ASSERT_EQUAL_FATAL(kvp_registry_get(reg, "default", "dup", &a, err, sizeof(err)), KVP_OK);
  sleep(1); /* so that updated differs from created */
  r = make_rec("default", "dup", KVP_CERT_PRIVATE);
  r.serial = "FF";
  r.resource_group = "rg";
  CU_ASSERT_EQUAL(kvp_registry_add(reg, &r, 1, err, sizeof(err)), KVP_OK);
  CU_ASSERT_EQUAL_FATAL(kvp_registry_get(reg, "default", "dup", &b, err, sizeof(err)), KVP_OK);
  CU_ASSERT_EQUAL(b.id, a.id);
  CU_ASSERT_EQUAL(b.created, a.created);
  CU_ASSERT(b.updated > a.updated);
  CU_ASSERT_EQUAL(b.type, KVP_CERT_PRIVATE);
  CU_ASSERT_STRING_EQUAL(b.serial, "FF");
  CU_ASSERT_STRING_EQUAL(b.key_ref, "hsm:appliance/app");
  CU_ASSERT_STRING_EQUAL(b.resource_group, "rg");
  kvp_cert_rec_clear(&a);
  kvp_cert_rec_clear(&b);
  CU_ASSERT_EQUAL(count_rows(reg, NULL), 2);

  /* replace of a new name inserts. */
  r = make_rec("default", "fresh", KVP_CERT_PUBLIC);
  CU_ASSERT_EQUAL(kvp_registry_add(reg, &r, 1, err, sizeof(err)), KVP_OK);
  CU_ASSERT_EQUAL(count_rows(reg, "default"), 2);

  CU_ASSERT_EQUAL(kvp_registry_remove(reg, "default", "dup", err, sizeof(err)), KVP_OK);
  CU_ASSERT_EQUAL(kvp_registry_remove(reg, "default", "dup", err, sizeof(err)), KVP_ENOTFOUND);
  CU_ASSERT_PTR_NOT_NULL(strstr(err, "'dup'"));
  CU_ASSERT_EQUAL(kvp_registry_get(reg, "default", "dup", &a, err, sizeof(err)), KVP_ENOTFOUND);
  CU_ASSERT_EQUAL(count_rows(reg, "second"), 1);
  CU_ASSERT_EQUAL(count_rows(reg, NULL), 2);
  kvp_registry_close(reg);
}

static void test_list_order(void)
{
  static const char *const names[][2] = {
      {"b", "zeta"}, {"a", "mid"}, {"b", "alpha"}, {"a", "alpha"}};
  static const char *const want[][2] = {
      {"a", "alpha"}, {"a", "mid"}, {"b", "alpha"}, {"b", "zeta"}};
  char path[1100], err[KVP_ERRLEN];
  kvp_cert_rec *recs = NULL, r;
  kvp_registry *reg;
  size_t n = 0;

  fresh(path, sizeof(path), "list.db");
  reg = open_ok(path, 0);
  CU_ASSERT_PTR_NOT_NULL_FATAL(reg);
  CU_ASSERT_EQUAL(kvp_registry_list(reg, NULL, &recs, &n, err, sizeof(err)), KVP_OK);
  CU_ASSERT_EQUAL(n, 0);
  kvp_cert_rec_free_array(recs, n);
  for (size_t i = 0; i < KVP_ARRAY_SIZE(names); i++) {
    r = make_rec(names[i][0], names[i][1], KVP_CERT_PUBLIC);
    CU_ASSERT_EQUAL(kvp_registry_add(reg, &r, 0, err, sizeof(err)), KVP_OK);
  }
  CU_ASSERT_EQUAL_FATAL(kvp_registry_list(reg, NULL, &recs, &n, err, sizeof(err)), KVP_OK);
  CU_ASSERT_EQUAL_FATAL(n, 4);
  for (size_t i = 0; i < n; i++) {
    CU_ASSERT_STRING_EQUAL(recs[i].account, want[i][0]);
    CU_ASSERT_STRING_EQUAL(recs[i].name, want[i][1]);
  }
  kvp_cert_rec_free_array(recs, n);
  CU_ASSERT_EQUAL_FATAL(kvp_registry_list(reg, "b", &recs, &n, err, sizeof(err)), KVP_OK);
  CU_ASSERT_EQUAL_FATAL(n, 2);
  CU_ASSERT_STRING_EQUAL(recs[0].name, "alpha");
  CU_ASSERT_STRING_EQUAL(recs[1].name, "zeta");
  kvp_cert_rec_free_array(recs, n);
  CU_ASSERT_EQUAL(count_rows(reg, "none"), 0);
  kvp_registry_close(reg);
}

static void test_readonly(void)
{
  char path[1100], err[KVP_ERRLEN];
  kvp_registry *w, *r = (kvp_registry *)1;
  kvp_cert_rec rec = make_rec("default", "x", KVP_CERT_PUBLIC);
  int changed = -1;

  fresh(path, sizeof(path), "missing.db");
  CU_ASSERT_EQUAL(kvp_registry_open(path, 1, &r, err, sizeof(err)), KVP_ENOTFOUND);
  CU_ASSERT_PTR_NULL(r);
  CU_ASSERT_EQUAL(access(path, F_OK), -1); /* and it was not created */

  fresh(path, sizeof(path), "changed.db");
  w = open_ok(path, 0);
  r = open_ok(path, 1);
  CU_ASSERT_PTR_NOT_NULL_FATAL(w);
  CU_ASSERT_PTR_NOT_NULL_FATAL(r);
  CU_ASSERT_EQUAL(kvp_registry_add(r, &rec, 0, err, sizeof(err)), KVP_EPERM);
  CU_ASSERT_EQUAL(kvp_registry_remove(r, "default", "x", err, sizeof(err)), KVP_EPERM);

  CU_ASSERT_EQUAL(kvp_registry_changed(r, &changed, err, sizeof(err)), KVP_OK);
  CU_ASSERT_EQUAL(changed, 1); /* first call */
  CU_ASSERT_EQUAL(kvp_registry_changed(r, &changed, err, sizeof(err)), KVP_OK);
  CU_ASSERT_EQUAL(changed, 0);
  CU_ASSERT_EQUAL(count_rows(r, NULL), 0);

  CU_ASSERT_EQUAL(kvp_registry_add(w, &rec, 0, err, sizeof(err)), KVP_OK);
  CU_ASSERT_EQUAL(kvp_registry_changed(r, &changed, err, sizeof(err)), KVP_OK);
  CU_ASSERT_EQUAL(changed, 1);
  CU_ASSERT_EQUAL(count_rows(r, NULL), 1);
  CU_ASSERT_EQUAL(kvp_registry_changed(r, &changed, err, sizeof(err)), KVP_OK);
  CU_ASSERT_EQUAL(changed, 0);

  CU_ASSERT_EQUAL(kvp_registry_remove(w, "default", "x", err, sizeof(err)), KVP_OK);
  CU_ASSERT_EQUAL(kvp_registry_changed(r, &changed, err, sizeof(err)), KVP_OK);
  CU_ASSERT_EQUAL(changed, 1);
  CU_ASSERT_EQUAL(count_rows(r, NULL), 0);

  /* A failed write (duplicate) is no change. */
  CU_ASSERT_EQUAL(kvp_registry_add(w, &rec, 0, err, sizeof(err)), KVP_OK);
  CU_ASSERT_EQUAL(kvp_registry_changed(r, &changed, err, sizeof(err)), KVP_OK);
  CU_ASSERT_EQUAL(kvp_registry_add(w, &rec, 0, err, sizeof(err)), KVP_EEXISTS);
  CU_ASSERT_EQUAL(kvp_registry_changed(r, &changed, err, sizeof(err)), KVP_OK);
  CU_ASSERT_EQUAL(changed, 0);

  /* A new writer process's view after the first writer is gone. */
  kvp_registry_close(w);
  w = open_ok(path, 0);
  CU_ASSERT_PTR_NOT_NULL_FATAL(w);
  rec.name = "y";
  CU_ASSERT_EQUAL(kvp_registry_add(w, &rec, 0, err, sizeof(err)), KVP_OK);
  kvp_registry_close(w);
  CU_ASSERT_EQUAL(kvp_registry_changed(r, &changed, err, sizeof(err)), KVP_OK);
  CU_ASSERT_EQUAL(changed, 1);
  CU_ASSERT_EQUAL(count_rows(r, NULL), 2);
  kvp_registry_close(r);
}

static void write_garbage(const char *path, const char *text, size_t len)
{
  FILE *f = fopen(path, "w");

  CU_ASSERT_PTR_NOT_NULL_FATAL(f);
  for (size_t i = 0; i < 8192; i += len)
    fwrite(text, 1, len, f);
  fclose(f);
}

static void expect_open_error(const char *path, int readonly, const char *want)
{
  kvp_registry *reg = (kvp_registry *)1;
  char err[KVP_ERRLEN] = "";
  int rc = kvp_registry_open(path, readonly, &reg, err, sizeof(err));

  CU_ASSERT_NOT_EQUAL(rc, KVP_OK);
  CU_ASSERT_PTR_NULL(reg);
  CU_ASSERT_PTR_NOT_NULL(strstr(err, path));
  CU_ASSERT_PTR_NOT_NULL(strstr(err, want));
  if (strstr(err, want) == NULL)
    fprintf(stderr, "\n  want '%s', got %d '%s'\n", want, rc, err);
  if (rc == KVP_OK)
    kvp_registry_close(reg);
}

static void test_bad_files(void)
{
  char path[1100], err[KVP_ERRLEN];
  kvp_registry *reg;
  sqlite3 *db;
  int fd;

  fresh(path, sizeof(path), "garbage.db");
  write_garbage(path, "this is not an SQLite database\n", 31);
  expect_open_error(path, 0, "not a kvp11 registry");
  expect_open_error(path, 1, "not a kvp11 registry");

  /* A real SQLite database of another program. */
  fresh(path, sizeof(path), "foreign.db");
  CU_ASSERT_EQUAL_FATAL(sqlite3_open(path, &db), SQLITE_OK);
  CU_ASSERT_EQUAL(sqlite3_exec(db, "CREATE TABLE t (x)", NULL, NULL, NULL), SQLITE_OK);
  sqlite3_close(db);
  expect_open_error(path, 0, "not a kvp11 registry");

  /* A registry from a newer kvp11. */
  fresh(path, sizeof(path), "newer.db");
  reg = open_ok(path, 0);
  kvp_registry_close(reg);
  CU_ASSERT_EQUAL_FATAL(sqlite3_open(path, &db), SQLITE_OK);
  CU_ASSERT_EQUAL(sqlite3_exec(db, "PRAGMA user_version = 99", NULL, NULL, NULL), SQLITE_OK);
  sqlite3_close(db);
  expect_open_error(path, 0, "schema version 99 is newer");
  expect_open_error(path, 1, "schema version 99 is newer");

  /* A registry whose pages were overwritten after the header. */
  fresh(path, sizeof(path), "corrupt.db");
  reg = open_ok(path, 0);
  CU_ASSERT_PTR_NOT_NULL_FATAL(reg);
  for (int i = 0; i < 20; i++) {
    char name[16];
    kvp_cert_rec r;
    snprintf(name, sizeof(name), "c%d", i);
    r = make_rec("default", name, KVP_CERT_PUBLIC);
    kvp_registry_add(reg, &r, 0, err, sizeof(err));
  }
  kvp_registry_close(reg);
  fd = open(path, O_WRONLY);
  CU_ASSERT_FATAL(fd >= 0);
  {
    char junk[4096];
    memset(junk, 0xA5, sizeof(junk));
    CU_ASSERT_EQUAL(pwrite(fd, junk, sizeof(junk), 100), (ssize_t)sizeof(junk));
  }
  close(fd);
  {
    char p[1200];
    snprintf(p, sizeof(p), "%s-wal", path);
    CU_ASSERT_EQUAL(truncate(p, 0), 0);
  }
  expect_open_error(path, 1, "registry ");
  expect_open_error(path, 0, "registry ");

  /* The directory does not exist. */
  db_path(path, sizeof(path), "no-such-dir/x.db");
  expect_open_error(path, 0, "cannot create");
}

#define WRITERS 4
#define ROWS 50

static int writer_child(const char *path, int w)
{
  char err[KVP_ERRLEN], name[32];
  kvp_registry *reg = NULL;

  if (kvp_registry_open(path, 0, &reg, err, sizeof(err)) != KVP_OK) {
    fprintf(stderr, "writer %d: %s\n", w, err);
    return 1;
  }
  for (int i = 0; i < ROWS; i++) {
    kvp_cert_rec r;
    snprintf(name, sizeof(name), "w%d-%d", w, i);
    r = make_rec(w % 2 ? "odd" : "even", name, KVP_CERT_PUBLIC);
    if (kvp_registry_add(reg, &r, 0, err, sizeof(err)) != KVP_OK) {
      fprintf(stderr, "writer %d: %s\n", w, err);
      kvp_registry_close(reg);
      return 1;
    }
  }
  kvp_registry_close(reg);
  return 0;
}

static void test_concurrent_writers(void)
{
  char path[1100];
  pid_t pids[WRITERS];
  kvp_registry *reg;
  int ok = 0;

  /* The writers also race to create the file and the schema. */
  fresh(path, sizeof(path), "concurrent.db");
  for (int w = 0; w < WRITERS; w++) {
    pids[w] = fork();
    if (pids[w] == 0)
      _exit(writer_child(path, w));
  }
  for (int w = 0; w < WRITERS; w++) {
    int status = 0;
    if (pids[w] > 0 && waitpid(pids[w], &status, 0) == pids[w] && WIFEXITED(status) &&
        WEXITSTATUS(status) == 0)
      ok++;
  }
  CU_ASSERT_EQUAL(ok, WRITERS);
  reg = open_ok(path, 1);
  CU_ASSERT_PTR_NOT_NULL_FATAL(reg);
  CU_ASSERT_EQUAL(count_rows(reg, NULL), WRITERS * ROWS);
  CU_ASSERT_EQUAL(count_rows(reg, "odd"), WRITERS / 2 * ROWS);
  kvp_registry_close(reg);
}

/*
 * Read-only use from a process that cannot write to the registry's
 * directory (the module inside nginx): run as nobody when we are root, else
 * make the directory read-only. The reader opens, lists, waits for the
 * parent to add a row, and must then see the change.
 */
static int reader_child(const char *path, int expect, int rfd, int wfd)
{
  char err[KVP_ERRLEN], c = 0;
  kvp_registry *reg = NULL;
  int changed = 0, n;

  if (kvp_registry_open(path, 1, &reg, err, sizeof(err)) != KVP_OK) {
    fprintf(stderr, "reader: %s\n", err);
    return 2;
  }
  n = count_rows(reg, NULL);
  if (n != expect || kvp_registry_changed(reg, &changed, err, sizeof(err)) != KVP_OK || !changed) {
    fprintf(stderr, "reader: %d rows, expected %d\n", n, expect);
    return 3;
  }
  if (write(wfd, "r", 1) != 1 || read(rfd, &c, 1) != 1)
    return 4;
  if (kvp_registry_changed(reg, &changed, err, sizeof(err)) != KVP_OK || !changed) {
    fprintf(stderr, "reader: change not seen: %s\n", changed ? err : "changed = 0");
    return 5;
  }
  n = count_rows(reg, NULL);
  kvp_registry_close(reg);
  if (n != expect + 1) {
    fprintf(stderr, "reader: %d rows after the change, expected %d\n", n, expect + 1);
    return 6;
  }
  return 0;
}

static int drop_privileges(const char *dir)
{
  if (geteuid() == 0) {
    if (setgroups(0, NULL) != 0 || setgid(65534) != 0 || setuid(65534) != 0)
      return -1;
  } else if (chmod(dir, 0555) != 0) {
    return -1;
  }
  return access(dir, W_OK) == 0 ? -1 : 0; /* must really be unwritable */
}

/* Returns the reader's exit status, or -1. */
static int run_reader(const char *path, const char *dir, int expect, const char *add_name)
{
  int to_child[2], to_parent[2], status = -1;
  char err[KVP_ERRLEN], c;
  pid_t pid;

  if (pipe(to_child) != 0 || pipe(to_parent) != 0)
    return -1;
  pid = fork();
  if (pid == 0) {
    close(to_child[1]);
    close(to_parent[0]);
    if (drop_privileges(dir) != 0)
      _exit(77);
    _exit(reader_child(path, expect, to_child[0], to_parent[1]));
  }
  close(to_child[0]);
  close(to_parent[1]);
  if (read(to_parent[0], &c, 1) == 1) {
    kvp_registry *w;
    if (geteuid() != 0) /* the reader made the directory read-only for us too */
      chmod(dir, 0755);
    w = open_ok(path, 0);
    kvp_cert_rec r = make_rec("default", add_name, KVP_CERT_PUBLIC);
    if (w != NULL)
      CU_ASSERT_EQUAL(kvp_registry_add(w, &r, 0, err, sizeof(err)), KVP_OK);
    kvp_registry_close(w);
    CU_ASSERT_EQUAL(write(to_child[1], "g", 1), 1);
  }
  close(to_child[1]);
  close(to_parent[0]);
  if (pid > 0)
    waitpid(pid, &status, 0);
  if (geteuid() != 0)
    chmod(dir, 0755);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static void test_readonly_dir(void)
{
  char dir[1100], path[1200], p[1300], err[KVP_ERRLEN];
  kvp_cert_rec r = make_rec("default", "one", KVP_CERT_PUBLIC);
  kvp_registry *w;
  int rc;

  /* A directory nobody may enter, with a registry that nobody may read. */
  snprintf(dir, sizeof(dir), "%s/rodir", g_dir);
  mkdir(dir, 0755);
  chmod(dir, 0755);
  snprintf(path, sizeof(path), "%s/registry.db", dir);
  fresh(p, sizeof(p), "rodir/registry.db");
  w = open_ok(path, 0);
  CU_ASSERT_PTR_NOT_NULL_FATAL(w);
  CU_ASSERT_EQUAL(kvp_registry_add(w, &r, 0, err, sizeof(err)), KVP_OK);
  kvp_registry_close(w);

  /* Normal case: the writer left -wal and -shm. */
  rc = run_reader(path, dir, 1, "two");
  if (rc == 77) {
    fprintf(stderr, "(cannot drop write access to %s: skipped) ", dir);
    return;
  }
  CU_ASSERT_EQUAL(rc, 0);

  /* Fallback: -wal and -shm are gone (checkpointed database: the last
   * writer to close, with no reader around, checkpoints). */
  kvp_registry_close(open_ok(path, 0));
  snprintf(p, sizeof(p), "%s-wal", path);
  CU_ASSERT_EQUAL(unlink(p), 0);
  snprintf(p, sizeof(p), "%s-shm", path);
  CU_ASSERT_EQUAL(unlink(p), 0);
  CU_ASSERT_EQUAL(run_reader(path, dir, 2, "three"), 0);
}

static unsigned char g_spki[] = {0x30, 0x05, 0x30, 0x00, 0x03, 0x01, 0x00};
static unsigned char g_ckid[] = {0x01, 0x02};

/* Schema v2: a key without a certificate, its public key and CKA_ID kept;
 * filling in the certificate later keeps the row id. */
static void test_key_only(void)
{
  char path[1100], err[KVP_ERRLEN];
  kvp_cert_rec r = {0}, got, bad;
  kvp_registry *reg, *ro;
  int64_t id;

  fresh(path, sizeof(path), "keyonly.db");
  reg = open_ok(path, 0);
  CU_ASSERT_FATAL(reg != NULL);
  r.account = "default";
  r.name = "newkey";
  r.type = KVP_CERT_PRIVATE;
  r.key_ref = "keyvault:prod/newkey";
  r.key_version = "0123456789abcdef0123456789abcdef";
  r.spki = g_spki;
  r.spki_len = sizeof(g_spki);
  r.ckid = g_ckid;
  r.ckid_len = sizeof(g_ckid);
  CU_ASSERT_EQUAL(kvp_registry_add(reg, &r, 0, err, sizeof(err)), KVP_OK);
  CU_ASSERT_EQUAL_FATAL(kvp_registry_get(reg, "default", "newkey", &got, err, sizeof(err)), KVP_OK);
  CU_ASSERT_EQUAL(got.der_len, 0);
  CU_ASSERT_EQUAL(got.spki_len, sizeof(g_spki));
  CU_ASSERT(got.spki != NULL && memcmp(got.spki, g_spki, sizeof(g_spki)) == 0);
  CU_ASSERT_EQUAL(got.ckid_len, sizeof(g_ckid));
  CU_ASSERT(got.ckid != NULL && memcmp(got.ckid, g_ckid, sizeof(g_ckid)) == 0);
  CU_ASSERT_STRING_EQUAL(got.subject, "");
  id = got.id;
  kvp_cert_rec_clear(&got);
  CU_ASSERT_EQUAL(kvp_registry_get_id(reg, id, &got, err, sizeof(err)), KVP_OK);
  CU_ASSERT_STRING_EQUAL(got.name, "newkey");
  kvp_cert_rec_clear(&got);
  CU_ASSERT_EQUAL(kvp_registry_get_id(reg, id + 1000, &got, err, sizeof(err)), KVP_ENOTFOUND);

  /* a key-only entry needs its public key, and must be private */
  bad = r;
  bad.name = "nospki";
  bad.spki = NULL;
  bad.spki_len = 0;
  CU_ASSERT_EQUAL(kvp_registry_add(reg, &bad, 0, err, sizeof(err)), KVP_EINVAL);
  CU_ASSERT(strstr(err, "public key") != NULL);
  bad = r;
  bad.name = "public-nocert";
  bad.type = KVP_CERT_PUBLIC;
  bad.key_ref = NULL;
  CU_ASSERT_EQUAL(kvp_registry_add(reg, &bad, 0, err, sizeof(err)), KVP_EINVAL);

  /* the certificate arrives: same row */
  {
    kvp_cert_rec full = make_rec("default", "newkey", KVP_CERT_PRIVATE);
    full.key_ref = r.key_ref;
    full.spki = g_spki;
    full.spki_len = sizeof(g_spki);
    CU_ASSERT_EQUAL(kvp_registry_add(reg, &full, 1, err, sizeof(err)), KVP_OK);
  }
  /* a reader sees it, with the id unchanged */
  ro = open_ok(path, 1);
  CU_ASSERT_FATAL(ro != NULL);
  CU_ASSERT_EQUAL_FATAL(kvp_registry_get(ro, "default", "newkey", &got, err, sizeof(err)), KVP_OK);
  CU_ASSERT_EQUAL(got.id, id);
  CU_ASSERT_EQUAL(got.der_len, sizeof(g_der));
  CU_ASSERT_EQUAL(got.ckid_len, 0);
  CU_ASSERT(got.ckid == NULL);
  kvp_cert_rec_clear(&got);
  kvp_registry_close(ro);
  kvp_registry_close(reg);
}

/* A version-1 registry (made by the first release) is read by the module as
 * it is, and migrated to v2 by the first writer, rows kept. */
static void test_migrate_v1(void)
{
  char path[1100], err[KVP_ERRLEN];
  kvp_cert_rec got;
  kvp_registry *ro, *rw;
  sqlite3 *db = NULL;
  int changed = 0;

  fresh(path, sizeof(path), "v1.db");
  CU_ASSERT_FATAL(sqlite3_open(path, &db) == SQLITE_OK);
  CU_ASSERT_FATAL(
      sqlite3_exec(db,
                   "PRAGMA journal_mode=WAL;"
                   "CREATE TABLE certs (id INTEGER PRIMARY KEY AUTOINCREMENT, account TEXT NOT NULL,"
                   " name TEXT NOT NULL, type TEXT NOT NULL CHECK (type IN ('public', 'private')),"
                   " der BLOB NOT NULL, subject TEXT NOT NULL, issuer TEXT NOT NULL,"
                   " serial TEXT NOT NULL, not_before INTEGER NOT NULL, not_after INTEGER NOT NULL,"
                   " sha1 TEXT NOT NULL, sha256 TEXT NOT NULL, key_ref TEXT, key_version TEXT,"
                   " resource_group TEXT, created INTEGER NOT NULL, updated INTEGER NOT NULL,"
                   " UNIQUE (account, name), CHECK ((type = 'private') = (key_ref IS NOT NULL)));"
                   "INSERT INTO certs VALUES (7, 'default', 'old', 'public', x'3003020105', 'CN=a',"
                   " 'CN=b', '01', 1, 2, '" "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" "', '"
                   "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
                   "', NULL, NULL, NULL, 3, 4);"
                   "PRAGMA user_version = 1;",
                   NULL, NULL, NULL) == SQLITE_OK);
  ro = open_ok(path, 1);
  CU_ASSERT_FATAL(ro != NULL);
  CU_ASSERT_EQUAL(kvp_registry_changed(ro, &changed, err, sizeof(err)), KVP_OK);
  CU_ASSERT_EQUAL_FATAL(kvp_registry_get(ro, "default", "old", &got, err, sizeof(err)), KVP_OK);
  CU_ASSERT_EQUAL(got.id, 7);
  CU_ASSERT(got.spki == NULL);
  kvp_cert_rec_clear(&got);

  rw = open_ok(path, 0); /* migrates */
  CU_ASSERT_FATAL(rw != NULL);
  {
    sqlite3_stmt *st = NULL;
    CU_ASSERT(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL) == SQLITE_OK &&
              sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int(st, 0) == 3);
    sqlite3_finalize(st);
  }
  {
    kvp_cert_rec r = make_rec("default", "v2key", KVP_CERT_PRIVATE);
    r.der_len = 0;
    r.spki = g_spki;
    r.spki_len = sizeof(g_spki);
    CU_ASSERT_EQUAL(kvp_registry_add(rw, &r, 0, err, sizeof(err)), KVP_OK);
  }
  /* the running reader notices the migration and the new row */
  CU_ASSERT_EQUAL(kvp_registry_changed(ro, &changed, err, sizeof(err)), KVP_OK);
  CU_ASSERT_EQUAL(changed, 1);
  CU_ASSERT_EQUAL_FATAL(kvp_registry_get(ro, "default", "v2key", &got, err, sizeof(err)), KVP_OK);
  CU_ASSERT_EQUAL(got.spki_len, sizeof(g_spki));
  kvp_cert_rec_clear(&got);
  CU_ASSERT_EQUAL(count_rows(ro, "default"), 2);
  kvp_registry_close(ro);
  kvp_registry_close(rw);
  sqlite3_close(db);
}

int main(void)
{
  static CU_TestInfo tests[] = {
      {"add and get", test_add_get},
      {"invalid records", test_invalid_rec},
      {"duplicate, replace, remove", test_duplicate_replace_remove},
      {"list order", test_list_order},
      {"read-only and change detection", test_readonly},
      {"bad files", test_bad_files},
      {"concurrent writers", test_concurrent_writers},
      {"read-only without write access to the directory", test_readonly_dir},
      {"keys without a certificate (schema v2)", test_key_only},
      {"version-1 registry read, then migrated", test_migrate_v1},
      CU_TEST_INFO_NULL,
  };

  unit_tmp_dir("registry", g_dir, sizeof(g_dir));
  kvp_log_setup(KVP_LOG_ERROR, NULL);

  return unit_run_suite("registry", NULL, NULL, tests);
}
