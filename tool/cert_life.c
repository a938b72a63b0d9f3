/*
 * Certificate lifecycle: kvp11 cert renew (a new certificate on the same
 * key), cert rotate (a new certificate on a new key; the old one stays
 * registered as retired: it decrypts what was encrypted to it, never signs),
 * cert retire; and the checks cert add shares with them (validity, the same
 * certificate under two names, a partner certificate carrying one of our
 * keys, the key in its store).
 *
 * Every check runs before the registry is written, and each command writes in
 * one transaction, so a refused or failed command leaves the registry as it
 * was.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/x509.h>

#include "core/cert.h"
#include "core/status.h"
#include "core/util.h"
#include "tool.h"

const char *kvp_tool_validity(const kvp_cert_rec *rec, const char *file, char *buf, size_t len)
{
  time_t now = time(NULL);
  char when[32];
  if (now < rec->not_before) {
    kvp_tool_isotime(rec->not_before, when);
    snprintf(buf, len, "%s: the certificate is not valid before %s", file, when);
  } else if (now > rec->not_after) {
    kvp_tool_isotime(rec->not_after, when);
    snprintf(buf, len, "%s: the certificate expired on %s", file, when);
  } else {
    return NULL;
  }
  return buf;
}

void kvp_tool_fingerprint(const char *hex, char out[112])
{
  size_t o = 0, n = strlen(hex);
  o += (size_t)snprintf(out, 112, "SHA256:");
  for (size_t i = 0; i + 1 < n && i < 64; i += 2) {
    if (i)
      out[o++] = ':';
    out[o++] = (char)(hex[i] >= 'a' && hex[i] <= 'f' ? hex[i] - 32 : hex[i]);
    out[o++] = (char)(hex[i + 1] >= 'a' && hex[i + 1] <= 'f' ? hex[i + 1] - 32 : hex[i + 1]);
  }
  out[o] = '\0';
}

int kvp_tool_print_json(FILE *f, json_t *j)
{
  int rc = j && json_dumpf(j, f, JSON_INDENT(2) | JSON_PRESERVE_ORDER) == 0 ? 0 : -1;
  if (rc == 0)
    fputc('\n', f);
  json_decref(j);
  return rc;
}

/* The public key of a row: its certificate's, else the recorded SPKI. NULL if none. */
EVP_PKEY *kvp_tool_rec_pubkey(const kvp_cert_rec *r)
{
  EVP_PKEY *pk = NULL;
  if (r->der_len > 0) {
    const unsigned char *p = r->der;
    X509 *x = d2i_X509(NULL, &p, (long)r->der_len);
    if (x && (pk = X509_get0_pubkey(x)) != NULL)
      EVP_PKEY_up_ref(pk);
    X509_free(x);
  } else if (r->spki_len > 0) {
    kvp_spki sk;
    if (kvp_spki_from_der(r->spki, r->spki_len, &sk) == KVP_OK)
      pk = kvp_spki_pubkey(&sk);
    kvp_spki_clear(&sk);
  }
  return pk;
}

/* Every row of rec's account; prints the error. */
static int account_rows(kvp_tool *t, const char *account, kvp_cert_rec **recs, size_t *n)
{
  char err[KVP_ERRLEN] = "";
  if (kvp_registry_list(t->reg, account, recs, n, err, sizeof(err)) != KVP_OK)
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "%s", err);
  return KVP_EXIT_OK;
}

int kvp_tool_no_duplicate(kvp_tool *t, const kvp_cert_rec *rec, const char *except)
{
  kvp_cert_rec *recs = NULL;
  size_t n = 0;
  int rc = account_rows(t, rec->account, &recs, &n);
  for (size_t i = 0; i < n && rc == KVP_EXIT_OK; i++) {
    if (recs[i].der_len == 0 || strcmp(recs[i].sha256, rec->sha256) != 0 ||
        (except && strcmp(recs[i].name, except) == 0))
      continue;
    char fp[112];
    kvp_tool_fingerprint(rec->sha256, fp);
    rc = kvp_tool_fail(t, KVP_EXIT_ERROR,
                       "this certificate (%s) is registered in account '%s' already, as '%s'%s "
                       "(--alias registers it under a second name)",
                       fp, rec->account, recs[i].name,
                       recs[i].state == KVP_STATE_RETIRED ? " (retired)" : "");
  }
  kvp_cert_rec_free_array(recs, n);
  return rc;
}

/* A partner's certificate must not carry one of our private keys. */
int kvp_tool_not_our_key(kvp_tool *t, const char *file, EVP_PKEY *pub, const char *account,
                         const char *except)
{
  kvp_cert_rec *recs = NULL;
  size_t n = 0;
  int rc = account_rows(t, account, &recs, &n);
  for (size_t i = 0; i < n && rc == KVP_EXIT_OK; i++) {
    if (recs[i].type != KVP_CERT_PRIVATE || (except && strcmp(recs[i].name, except) == 0))
      continue;
    EVP_PKEY *pk = kvp_tool_rec_pubkey(&recs[i]);
    if (pk && kvp_pubkey_equal(pk, pub))
      rc = kvp_tool_fail(t, KVP_EXIT_ERROR,
                         "%s: its public key is the key of our private certificate '%s' (%s): "
                         "a certificate for our own key is registered with --type private",
                         file, recs[i].name, recs[i].key_ref);
    EVP_PKEY_free(pk);
  }
  kvp_cert_rec_free_array(recs, n);
  return rc;
}

int kvp_tool_check_key(kvp_tool *t, int is_hsm, const char *store, const char *keyname,
                       const char *file, kvp_cert_rec *rec)
{
  char err[KVP_ERRLEN] = "", *ref = NULL, *scheme = NULL, *pstore = NULL, *pname = NULL;
  kvp_tool_store s = {0};
  kvp_key *key = NULL;
  EVP_PKEY *cpub = kvp_tool_rec_pubkey(rec);
  int rc = KVP_EXIT_ERROR;
  size_t n = strlen("keyvault:/") + strlen(store) + strlen(keyname) + 1;

  if (!cpub || !(ref = malloc(n))) {
    rc = kvp_tool_fail(t, rc, "%s: cannot read the certificate's public key", file);
    goto out;
  }
  snprintf(ref, n, "%s:%s/%s", is_hsm ? "hsm" : "keyvault", store, keyname);
  if (kvp_keyref_parse(ref, &scheme, &pstore, &pname, err, sizeof(err)) != KVP_OK) {
    rc = kvp_tool_fail(t, KVP_EXIT_USAGE, "%s", err);
    goto out;
  }
  if (kvp_tool_store_find(t, is_hsm, pstore, &s) != KVP_EXIT_OK ||
      kvp_tool_store_open(t, &s, NULL, 0) != KVP_EXIT_OK ||
      kvp_tool_store_key(t, &s, pname, &key) != KVP_EXIT_OK)
    goto out;
  if (!kvp_pubkey_equal(cpub, key->pub)) {
    char fc[72] = "?", fk[72] = "?";
    kvp_pubkey_fingerprint(cpub, fc);
    kvp_pubkey_fingerprint(key->pub, fk);
    rc = kvp_tool_fail(t, KVP_EXIT_ERROR,
                       "%s: the certificate's public key (%s) is not the public key of %s (%s)",
                       file, fc, ref, fk);
    goto out;
  }
  free(rec->key_version);
  rec->key_version = kvp_strdup0(key->version);
  free(rec->key_ref);
  rec->key_ref = ref;
  ref = NULL;
  rc = (key->version && !rec->key_version) ? kvp_tool_fail(t, rc, "out of memory") : KVP_EXIT_OK;
out:
  if (key)
    s.be->ops->close_key(s.be, key);
  kvp_tool_store_close(&s);
  EVP_PKEY_free(cpub);
  free(ref);
  free(scheme);
  free(pstore);
  free(pname);
  return rc;
}

int kvp_tool_rec_spki(kvp_cert_rec *rec)
{
  const unsigned char *p = rec->der;
  X509 *x = d2i_X509(NULL, &p, (long)rec->der_len);
  kvp_spki sk;
  int ok = x && kvp_spki_from_x509(x, &sk) == KVP_OK;
  X509_free(x);
  if (!ok)
    return -1;
  free(rec->spki);
  rec->spki = sk.der;
  rec->spki_len = (size_t)sk.der_len;
  sk.der = NULL;
  kvp_spki_clear(&sk);
  return 0;
}

/* The new certificate of renew / rotate: loaded, valid (or --allow-expired),
 * not registered under another name. Fills the certificate fields of rec. */
static int load_new(kvp_tool *t, const char *file, int allow_expired, const char *account,
                    const char *name, kvp_cert_rec *rec, char warn[KVP_ERRLEN])
{
  char err[KVP_ERRLEN] = "", buf[KVP_ERRLEN];
  unsigned char *der = NULL;
  size_t der_len = 0;
  kvp_cert_rec nr = {0};
  int rc = KVP_EXIT_ERROR;

  if (kvp_cert_load_file(file, &der, &der_len, err, sizeof(err)) != KVP_OK) {
    rc = kvp_tool_fail(t, rc, "%s", kvp_tool_cert_file_error(file, err));
    goto out;
  }
  if (kvp_cert_fill_rec(der, der_len, &nr, err, sizeof(err)) != KVP_OK) {
    rc = kvp_tool_fail(t, rc, "%s: %s", file, err);
    goto out;
  }
  const char *bad = kvp_tool_validity(&nr, file, buf, sizeof(buf));
  if (bad && !allow_expired) {
    rc = kvp_tool_fail(t, rc, "%s (refused for a private certificate; --allow-expired registers "
                       "it anyway)", bad);
    goto out;
  }
  /* printed once the command succeeded: a failure is one line */
  snprintf(warn, KVP_ERRLEN, "%s", bad ? bad : "");
  nr.account = (char *)account;
  rc = kvp_tool_no_duplicate(t, &nr, name); /* the entry itself is asked about by the caller */
  nr.account = NULL;
  if (rc != KVP_EXIT_OK)
    goto out;
  free(rec->der);
  free(rec->subject);
  free(rec->issuer);
  free(rec->serial);
  rec->der = nr.der;
  rec->der_len = nr.der_len;
  rec->subject = nr.subject;
  rec->issuer = nr.issuer;
  rec->serial = nr.serial;
  nr.der = NULL;
  nr.subject = nr.issuer = nr.serial = NULL;
  rec->not_before = nr.not_before;
  rec->not_after = nr.not_after;
  memcpy(rec->sha1, nr.sha1, sizeof(rec->sha1));
  memcpy(rec->sha256, nr.sha256, sizeof(rec->sha256));
  rc = kvp_tool_rec_spki(rec) == 0 ? KVP_EXIT_OK : kvp_tool_fail(t, rc, "%s: unsupported public key", file);
out:
  free(der);
  kvp_cert_rec_clear(&nr);
  return rc;
}

/* The row NAME: loaded for a change; prints the error. */
static int load_row(kvp_tool *t, const char *name, const char *account_opt, const char **account,
                    kvp_cert_rec *rec)
{
  char err[KVP_ERRLEN] = "";
  if (kvp_tool_load_config(t) || kvp_tool_account(t, account_opt, account) ||
      kvp_tool_open_registry(t))
    return KVP_EXIT_ERROR;
  int r = kvp_registry_get(t->reg, *account, name, rec, err, sizeof(err));
  if (r == KVP_ENOTFOUND)
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "account '%s' has no certificate named '%s'", *account,
                         name);
  if (r != KVP_OK)
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "%s", err);
  return KVP_EXIT_OK;
}

/* What a lifecycle command did: one line, or a JSON object. */
static int report(const char *action, const kvp_cert_rec *rec, const char *retired, int json)
{
  char fp[112], when[32];
  kvp_tool_fingerprint(rec->sha256, fp);
  kvp_tool_isotime(rec->not_after, when);
  if (!json) {
    printf("%s certificate '%s' in account '%s': %s, valid until %s, key %s%s%s%s\n", action,
           rec->name, rec->account, fp, when, rec->key_ref ? rec->key_ref : "-",
           retired ? "; the previous certificate stays registered as '" : "",
           retired ? retired : "", retired ? "' (retired: decrypts only)" : "");
    return 0;
  }
  json_t *o = json_pack("{s:s, s:s, s:s, s:I, s:s, s:s, s:s, s:s}", "action", action, "name",
                        rec->name, "account", rec->account, "id", (json_int_t)rec->id, "state",
                        rec->state == KVP_STATE_RETIRED ? "retired" : "active", "sha256",
                        rec->sha256, "not_after", when, "key_ref",
                        rec->key_ref ? rec->key_ref : "");
  if (o && retired)
    json_object_set_new(o, "retired_as", json_string(retired));
  return kvp_tool_print_json(stdout, o);
}

int kvp_tool_cert_renew(kvp_tool *t, const char *name, const char *account_opt, const char *file,
                        int allow_expired, int json)
{
  char err[KVP_ERRLEN] = "", warn[KVP_ERRLEN] = "";
  const char *account = NULL;
  kvp_cert_rec rec = {0};
  EVP_PKEY *oldpub = NULL, *newpub = NULL;
  char *kstore = NULL;
  int rc = load_row(t, name, account_opt, &account, &rec);

  if (rc != KVP_EXIT_OK)
    goto out;
  rc = KVP_EXIT_ERROR;
  if (rec.der_len == 0) {
    kvp_tool_fail(t, rc, "'%s' is a key without a certificate yet: add its first one with "
                  "kvp11 cert add --name %s --type private --cert FILE", name, name);
    goto out;
  }
  if (rec.state == KVP_STATE_RETIRED) {
    kvp_tool_fail(t, rc, "'%s' is retired: it is not renewed (kvp11 cert rotate gives the "
                  "active certificate a new key)", name);
    goto out;
  }
  oldpub = kvp_tool_rec_pubkey(&rec);
  char oldsha[65];
  memcpy(oldsha, rec.sha256, sizeof(oldsha));
  if ((rc = load_new(t, file, allow_expired || rec.type == KVP_CERT_PUBLIC, account, name, &rec,
                     warn)) != KVP_EXIT_OK)
    goto out;
  rc = KVP_EXIT_ERROR;
  if (strcmp(oldsha, rec.sha256) == 0) {
    kvp_tool_fail(t, rc, "%s is the certificate '%s' has already", file, name);
    goto out;
  }
  newpub = kvp_tool_rec_pubkey(&rec);
  if (!oldpub || !newpub || !kvp_pubkey_equal(oldpub, newpub)) {
    char fo[72] = "?", fn[72] = "?";
    if (oldpub)
      kvp_pubkey_fingerprint(oldpub, fo);
    if (newpub)
      kvp_pubkey_fingerprint(newpub, fn);
    kvp_tool_fail(t, rc, "%s: the new certificate's public key (%s) is not the key of '%s' (%s): "
                  "a certificate for a new key is registered with kvp11 cert rotate",
                  file, fn, name, fo);
    goto out;
  }
  if (rec.type == KVP_CERT_PRIVATE) {
    /* the key must still be in its store, with this public key */
    char *kname = NULL;
    kvp_tool_store s;
    if ((rc = kvp_tool_store_find_ref(t, rec.key_ref, &s, &kname)) != KVP_EXIT_OK)
      goto out;
    kstore = kname;
    kvp_key *key = NULL;
    rc = kvp_tool_store_open(t, &s, NULL, 0);
    if (rc == KVP_EXIT_OK)
      rc = kvp_tool_store_key(t, &s, kname, &key);
    if (rc == KVP_EXIT_OK && !kvp_pubkey_equal(key->pub, newpub))
      rc = kvp_tool_fail(t, KVP_EXIT_ERROR, "%s: the key %s has another public key than the "
                         "certificate", file, rec.key_ref);
    if (key)
      s.be->ops->close_key(s.be, key);
    kvp_tool_store_close(&s);
    if (rc != KVP_EXIT_OK)
      goto out;
  }
  /* the row is updated in place: its id, CKA_ID and PKCS#11 handles stay */
  if (kvp_registry_add(t->reg, &rec, 1, err, sizeof(err)) != KVP_OK) {
    rc = kvp_tool_fail(t, KVP_EXIT_ERROR, "%s", err);
    goto out;
  }
  kvp_audit_change("cert renew", rec.account, rec.name, rec.key_ref, oldsha, rec.sha256);
  if (warn[0])
    kvp_tool_warn(t, "%s", warn);
  rc = report("renewed", &rec, NULL, json) == 0 ? KVP_EXIT_OK
                                               : kvp_tool_fail(t, KVP_EXIT_ERROR, "cannot format the output");
out:
  EVP_PKEY_free(oldpub);
  EVP_PKEY_free(newpub);
  free(kstore);
  kvp_cert_rec_clear(&rec);
  return rc;
}

/* A free name for the retired copy: NAME.retired-YYYYMMDD[-N]. Prints the error. */
static int retired_name(kvp_tool *t, const kvp_cert_rec *rec, char *out, size_t len)
{
  char err[KVP_ERRLEN] = "", day[16];
  time_t now = time(NULL);
  struct tm tm;
  gmtime_r(&now, &tm);
  strftime(day, sizeof(day), "%Y%m%d", &tm);
  for (int i = 1; i < 100; i++) {
    kvp_cert_rec o = {0};
    char sfx[32];
    snprintf(sfx, sizeof(sfx), i == 1 ? ".retired-%s" : ".retired-%s-%d", day, i);
    snprintf(out, len, "%.*s%s", (int)(255 - strlen(sfx)), rec->name, sfx);
    int r = kvp_registry_get(t->reg, rec->account, out, &o, err, sizeof(err));
    kvp_cert_rec_clear(&o);
    if (r == KVP_ENOTFOUND)
      return KVP_EXIT_OK;
    if (r != KVP_OK)
      return kvp_tool_fail(t, KVP_EXIT_ERROR, "%s", err);
  }
  return kvp_tool_fail(t, KVP_EXIT_ERROR, "no free name for the retired certificate of '%s'",
                       rec->name);
}

int kvp_tool_cert_rotate(kvp_tool *t, const char *name, const char *account_opt, const char *file,
                         int is_hsm, const char *store, const char *key, int allow_expired,
                         int json)
{
  char err[KVP_ERRLEN] = "", rname[300], warn[KVP_ERRLEN] = "";
  const char *account = NULL;
  kvp_cert_rec rows[2] = {{0}};
  kvp_cert_rec *old = &rows[0], *nw = &rows[1];
  EVP_PKEY *oldpub = NULL, *newpub = NULL;
  int rc = load_row(t, name, account_opt, &account, old);

  if (rc != KVP_EXIT_OK)
    goto out;
  rc = KVP_EXIT_ERROR;
  if (old->type != KVP_CERT_PRIVATE || old->der_len == 0 || old->state == KVP_STATE_RETIRED) {
    kvp_tool_fail(t, rc, "'%s' is %s: only an active private certificate is rotated", name,
                  old->type != KVP_CERT_PRIVATE ? "a partner's (public) certificate"
                  : old->der_len == 0           ? "a key without a certificate yet"
                                                : "retired");
    goto out;
  }
  /* the new row: NAME, same id, new certificate and key */
  nw->account = strdup(old->account);
  nw->name = strdup(old->name);
  nw->type = KVP_CERT_PRIVATE;
  nw->resource_group = kvp_strdup0(old->resource_group);
  if (!nw->account || !nw->name || (old->resource_group && !nw->resource_group)) {
    rc = kvp_tool_fail(t, rc, "out of memory");
    goto out;
  }
  if ((rc = load_new(t, file, allow_expired, account, name, nw, warn)) != KVP_EXIT_OK)
    goto out;
  oldpub = kvp_tool_rec_pubkey(old);
  newpub = kvp_tool_rec_pubkey(nw);
  if (oldpub && newpub && kvp_pubkey_equal(oldpub, newpub)) {
    rc = kvp_tool_fail(t, KVP_EXIT_ERROR, "%s: the new certificate is for the same key as '%s': "
                       "use kvp11 cert renew", file, name);
    goto out;
  }
  if ((rc = kvp_tool_check_key(t, is_hsm, store, key, file, nw)) != KVP_EXIT_OK ||
      (rc = retired_name(t, old, rname, sizeof(rname))) != KVP_EXIT_OK)
    goto out;
  /* the old certificate: a new row under the retired name, decrypt only */
  free(old->name);
  if (!(old->name = strdup(rname))) {
    rc = kvp_tool_fail(t, KVP_EXIT_ERROR, "out of memory");
    goto out;
  }
  old->state = KVP_STATE_RETIRED;
  if (!old->spki)
    kvp_tool_rec_spki(old);
  const int replace[2] = {0, 1};
  if (kvp_registry_add_all(t->reg, rows, replace, 2, err, sizeof(err)) != KVP_OK) {
    rc = kvp_tool_fail(t, KVP_EXIT_ERROR, "%s", err);
    goto out;
  }
  kvp_audit_change("cert rotate", account, name, nw->key_ref, old->sha256, nw->sha256);
  kvp_audit_change("cert retire", account, old->name, old->key_ref, old->sha256, old->sha256);
  {
    kvp_cert_rec got = {0}; /* for its id */
    if (kvp_registry_get(t->reg, account, name, &got, err, sizeof(err)) == KVP_OK)
      nw->id = got.id;
    kvp_cert_rec_clear(&got);
  }
  if (warn[0])
    kvp_tool_warn(t, "%s", warn);
  rc = report("rotated", nw, rname, json) == 0 ? KVP_EXIT_OK
                                               : kvp_tool_fail(t, KVP_EXIT_ERROR, "cannot format the output");
out:
  EVP_PKEY_free(oldpub);
  EVP_PKEY_free(newpub);
  kvp_cert_rec_clear(old);
  kvp_cert_rec_clear(nw);
  return rc;
}

int kvp_tool_cert_retire(kvp_tool *t, const char *name, const char *account_opt, int json)
{
  char err[KVP_ERRLEN] = "";
  const char *account = NULL;
  kvp_cert_rec rec = {0};
  int rc = load_row(t, name, account_opt, &account, &rec);

  if (rc != KVP_EXIT_OK)
    goto out;
  rc = KVP_EXIT_ERROR;
  if (rec.type != KVP_CERT_PRIVATE || rec.der_len == 0) {
    kvp_tool_fail(t, rc, "'%s' is %s: only a private certificate is retired (kvp11 cert remove "
                  "removes it)", name,
                  rec.type != KVP_CERT_PRIVATE ? "a partner's (public) certificate"
                                               : "a key without a certificate");
    goto out;
  }
  if (rec.state == KVP_STATE_RETIRED) {
    kvp_tool_fail(t, rc, "'%s' is retired already (kvp11 cert remove NAME --yes ends it)", name);
    goto out;
  }
  rec.state = KVP_STATE_RETIRED;
  if (kvp_registry_add(t->reg, &rec, 1, err, sizeof(err)) != KVP_OK) {
    rc = kvp_tool_fail(t, rc, "%s", err);
    goto out;
  }
  kvp_audit_change("cert retire", rec.account, rec.name, rec.key_ref, rec.sha256, rec.sha256);
  if (json)
    rc = report("retired", &rec, NULL, 1) == 0 ? KVP_EXIT_OK : KVP_EXIT_ERROR;
  else {
    printf("retired certificate '%s' in account '%s': it decrypts what was encrypted to it, and "
           "signs no more\n", name, account);
    rc = KVP_EXIT_OK;
  }
out:
  kvp_cert_rec_clear(&rec);
  return rc;
}
