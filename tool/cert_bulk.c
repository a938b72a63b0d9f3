/*
 * kvp11 cert add --type public --cert-dir DIR [--account A] [--replace]:
 * partner onboarding. Every certificate file of DIR (*.pem, *.crt, *.cer,
 * *.der; PEM or DER, one certificate per file) is registered under its file
 * name without the extension, in one registry transaction. Any bad file (not
 * a certificate, a name clash without --replace, a name that is not allowed,
 * two files giving the same name) refuses the whole batch: one error line per
 * bad file, nothing registered.
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "core/cert.h"
#include "core/util.h"
#include "tool.h"

typedef struct bulk_file {
  char *file; /* name in DIR */
  char *name; /* registered name: file without its extension */
  char sha256[65]; /* of the certificate, once registered (for the audit trail) */
} bulk_file;

static const char *const exts[] = {".pem", ".crt", ".cer", ".der"};

/* The registered name of a certificate file, or NULL if it is not one. */
static char *cert_name(const char *file)
{
  const char *dot = strrchr(file, '.');

  if (dot == NULL || dot == file)
    return NULL;
  for (size_t i = 0; i < KVP_ARRAY_SIZE(exts); i++)
    if (strcasecmp(dot, exts[i]) == 0)
      return strndup(file, (size_t)(dot - file));
  return NULL;
}

static int cmp_name(const void *a, const void *b)
{
  const bulk_file *x = a, *y = b;
  int c = strcmp(x->name, y->name);
  return c != 0 ? c : strcmp(x->file, y->file);
}

static void free_files(bulk_file *f, size_t n)
{
  for (size_t i = 0; i < n; i++) {
    free(f[i].file);
    free(f[i].name);
  }
  free(f);
}

/* The certificate files of dir, sorted by name. Returns an exit code. */
static int list_dir(kvp_tool *t, const char *dir, bulk_file **out, size_t *n_out)
{
  DIR *d = opendir(dir);
  struct dirent *e;
  bulk_file *f = NULL;
  size_t n = 0, cap = 0;

  *out = NULL;
  *n_out = 0;
  if (d == NULL)
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "--cert-dir %s: %s", dir, strerror(errno));
  while ((e = readdir(d)) != NULL) {
    char *name = e->d_name[0] == '.' ? NULL : cert_name(e->d_name);
    if (name == NULL)
      continue; /* not a certificate file by its name (or hidden) */
    if (n == cap) {
      bulk_file *p = realloc(f, (cap = cap ? 2 * cap : 256) * sizeof(*f));
      if (p == NULL) {
        free(name);
        break;
      }
      f = p;
    }
    f[n].name = name;
    if ((f[n].file = strdup(e->d_name)) == NULL) {
      free(name);
      break;
    }
    n++;
  }
  closedir(d);
  if (e != NULL) {
    free_files(f, n);
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "out of memory");
  }
  if (n > 1)
    qsort(f, n, sizeof(*f), cmp_name);
  *out = f;
  *n_out = n;
  return KVP_EXIT_OK;
}

/* What is wrong with a file before it is read, or NULL. */
static const char *name_problem(const bulk_file *f, size_t i, size_t n)
{
  if (!kvp_tool_name_ok(f[i].name))
    return "its name is not allowed (1 to 255 bytes without the extension, no control characters)";
  if ((i > 0 && strcmp(f[i - 1].name, f[i].name) == 0) ||
      (i + 1 < n && strcmp(f[i + 1].name, f[i].name) == 0))
    return "another file of the directory gives the same name";
  return NULL;
}

/* Register one file inside the transaction; prints its error line. 1: bad file. */
static int add_one(kvp_tool *t, const char *dir, bulk_file *f, const char *account,
                   int replace, int *replaced)
{
  char path[4096], err[KVP_ERRLEN] = "";
  kvp_cert_rec rec = {0}, old = {0};
  unsigned char *der = NULL;
  size_t der_len = 0;
  int bad = 1, r;

  snprintf(path, sizeof(path), "%s/%s", dir, f->file);
  if (kvp_cert_load_file(path, &der, &der_len, err, sizeof(err)) != KVP_OK) {
    kvp_tool_fail(t, KVP_EXIT_ERROR, "%s", err);
    goto out;
  }
  if (kvp_cert_fill_rec(der, der_len, &rec, err, sizeof(err)) != KVP_OK) {
    kvp_tool_fail(t, KVP_EXIT_ERROR, "%s: %s", path, err);
    goto out;
  }
  rec.account = (char *)account;
  rec.name = f->name;
  rec.type = KVP_CERT_PUBLIC;
  if (replace) {
    r = kvp_registry_get(t->reg, account, f->name, &old, err, sizeof(err));
    if (r == KVP_OK && old.type != KVP_CERT_PUBLIC) {
      kvp_tool_fail(t, KVP_EXIT_ERROR,
                    "%s: '%s' is a private certificate or key in account '%s'; --cert-dir "
                    "replaces public certificates only",
                    path, f->name, account);
      goto out;
    }
    *replaced += r == KVP_OK;
  }
  r = kvp_registry_add(t->reg, &rec, replace, err, sizeof(err));
  if (r == KVP_OK)
    memcpy(f->sha256, rec.sha256, sizeof(f->sha256));
  if (r == KVP_EEXISTS)
    kvp_tool_fail(t, KVP_EXIT_ERROR,
                  "%s: account '%s' has a certificate named '%s' already (--replace replaces it)",
                  path, account, f->name);
  else if (r != KVP_OK)
    kvp_tool_fail(t, KVP_EXIT_ERROR, "%s: %s", path, err);
  else
    bad = 0;
out:
  rec.account = rec.name = NULL; /* borrowed */
  kvp_cert_rec_clear(&rec);
  kvp_cert_rec_clear(&old);
  free(der);
  return bad;
}

int kvp_tool_cert_add_dir(kvp_tool *t, const char *dir, const char *type, int other_options,
                          const char *account_opt, int replace)
{
  char err[KVP_ERRLEN] = "";
  const char *account = NULL;
  bulk_file *files = NULL;
  size_t n = 0, bad = 0;
  int replaced = 0, rc;

  if (other_options)
    return kvp_tool_fail(t, KVP_EXIT_USAGE,
                         "--cert-dir takes only --type public, --account and --replace");
  if (type == NULL || strcmp(type, "public") != 0)
    return kvp_tool_fail(t, KVP_EXIT_USAGE,
                         "--cert-dir registers partners' certificates: give --type public");
  if ((rc = kvp_tool_load_config(t)) != KVP_EXIT_OK ||
      (rc = kvp_tool_account(t, account_opt, &account)) != KVP_EXIT_OK ||
      (rc = list_dir(t, dir, &files, &n)) != KVP_EXIT_OK ||
      (rc = kvp_tool_open_registry(t)) != KVP_EXIT_OK)
    goto out;
  if (kvp_registry_begin(t->reg, err, sizeof(err)) != KVP_OK) {
    rc = kvp_tool_fail(t, KVP_EXIT_ERROR, "%s", err);
    goto out;
  }
  for (size_t i = 0; i < n; i++) {
    const char *why = name_problem(files, i, n);
    if (why != NULL) {
      kvp_tool_fail(t, KVP_EXIT_ERROR, "%s/%s: %s", dir, files[i].file, why);
      bad++;
    } else {
      bad += (size_t)add_one(t, dir, &files[i], account, replace, &replaced);
    }
  }
  /* one bad file refuses the batch: the registry stays as it was */
  if (kvp_registry_end(t->reg, bad == 0, err, sizeof(err)) != KVP_OK && bad == 0) {
    rc = kvp_tool_fail(t, KVP_EXIT_ERROR, "%s", err);
    goto out;
  }
  if (bad > 0) {
    rc = KVP_EXIT_ERROR;
    goto out;
  }
  for (size_t i = 0; i < n; i++)
    kvp_audit_change("cert add --cert-dir", account, files[i].name, NULL, NULL, files[i].sha256);
  printf("registered %zu public certificate%s from %s in account '%s'", n, n == 1 ? "" : "s", dir,
         account);
  if (replaced > 0)
    printf(" (%d replaced)", replaced);
  printf("\n");
  rc = KVP_EXIT_OK;
out:
  free_files(files, n);
  return rc;
}
