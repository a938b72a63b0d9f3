/*
 * Output of the kvp11 command: one record -> JSON function; the text forms
 * (show's "key: value" lines) are printed from that same JSON object, so the
 * field list lives in one place.
 */
#include <jansson.h>
#include <openssl/bio.h>
#include <openssl/pem.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tool.h"

void kvp_tool_isotime(int64_t t, char out[32])
{
  time_t tt = (time_t)t;
  struct tm tm;
  if (!gmtime_r(&tt, &tm) || !strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm))
    snprintf(out, 32, "@%lld", (long long)t);
}

char *kvp_tool_pem(const unsigned char *der, size_t der_len)
{
  char *pem = NULL, *data;
  BIO *b = BIO_new(BIO_s_mem());
  if (b && PEM_write_bio(b, PEM_STRING_X509, "", der, (long)der_len) > 0) {
    long n = BIO_get_mem_data(b, &data);
    if (n >= 0 && (pem = malloc((size_t)n + 1)) != NULL) {
      memcpy(pem, data, (size_t)n);
      pem[n] = '\0';
    }
  }
  BIO_free(b);
  return pem;
}

/* A JSON string, or null for NULL. Bytes that are not UTF-8 become '?'. */
static json_t *jstr(const char *s)
{
  json_t *j;
  if (!s)
    return json_null();
  if ((j = json_string(s)) != NULL)
    return j;
  char *copy = strdup(s);
  if (!copy)
    return NULL;
  for (char *p = copy; *p; p++)
    if ((unsigned char)*p >= 0x80)
      *p = '?';
  j = json_string(copy);
  free(copy);
  return j;
}

static json_t *jtime(int64_t t)
{
  char buf[32];
  kvp_tool_isotime(t, buf);
  return json_string(buf);
}

/* Every field of rec but der, in display order; with_pem adds "pem". */
static json_t *rec_json(const kvp_cert_rec *r, int with_pem)
{
  json_t *o = json_object();
  if (!o)
    return NULL;
  if (r->der_len == 0) {
    /* a key without a certificate yet (kvp11 key create, C_GenerateKeyPair) */
    int bad = json_object_set_new(o, "id", json_integer(r->id)) ||
              json_object_set_new(o, "name", jstr(r->name)) ||
              json_object_set_new(o, "account", jstr(r->account)) ||
              json_object_set_new(o, "type", json_string("key")) ||
              json_object_set_new(o, "certificate", json_false()) ||
              json_object_set_new(o, "key_ref", jstr(r->key_ref)) ||
              json_object_set_new(o, "key_version", jstr(r->key_version)) ||
              json_object_set_new(o, "created", jtime(r->created)) ||
              json_object_set_new(o, "updated", jtime(r->updated));
    if (bad) {
      json_decref(o);
      return NULL;
    }
    return o;
  }
  int bad = json_object_set_new(o, "id", json_integer(r->id)) ||
            json_object_set_new(o, "name", jstr(r->name)) ||
            json_object_set_new(o, "account", jstr(r->account)) ||
            json_object_set_new(o, "type",
                                json_string(r->type == KVP_CERT_PRIVATE ? "private" : "public")) ||
            json_object_set_new(o, "state",
                                json_string(r->state == KVP_STATE_RETIRED ? "retired" : "active")) ||
            json_object_set_new(o, "subject", jstr(r->subject)) ||
            json_object_set_new(o, "issuer", jstr(r->issuer)) ||
            json_object_set_new(o, "serial", jstr(r->serial)) ||
            json_object_set_new(o, "not_before", jtime(r->not_before)) ||
            json_object_set_new(o, "not_after", jtime(r->not_after)) ||
            json_object_set_new(o, "sha1", jstr(r->sha1)) ||
            json_object_set_new(o, "sha256", jstr(r->sha256)) ||
            json_object_set_new(o, "key_ref", jstr(r->key_ref)) ||
            json_object_set_new(o, "key_version", jstr(r->key_version)) ||
            json_object_set_new(o, "resource_group", jstr(r->resource_group)) ||
            json_object_set_new(o, "created", jtime(r->created)) ||
            json_object_set_new(o, "updated", jtime(r->updated));
  if (!bad && with_pem) {
    char *pem = kvp_tool_pem(r->der, r->der_len);
    bad = !pem || json_object_set_new(o, "pem", json_string(pem));
    free(pem);
  }
  if (bad) {
    json_decref(o);
    return NULL;
  }
  return o;
}

static int dump(FILE *f, json_t *j)
{
  int rc = j && json_dumpf(j, f, JSON_INDENT(2) | JSON_PRESERVE_ORDER) == 0 ? 0 : -1;
  if (rc == 0)
    fputc('\n', f);
  json_decref(j);
  return rc;
}

/*
 * cert list, streamed: rows are printed as the registry hands them over, so
 * 100,000 rows take the memory of one. The table's column widths come from a
 * first pass (kvp_tool_list_measure over every row), the JSON array is written
 * element by element in the layout json_dumpf gives a whole array.
 */
static const char *const list_head[] = {"NAME", "TYPE", "STATE", "SUBJECT", "NOT-AFTER", "KEY"};
#define LIST_COLS 6

void kvp_tool_list_init(kvp_list_out *o, FILE *f, int json)
{
  memset(o, 0, sizeof(*o));
  o->f = f;
  o->json = json;
  for (size_t c = 0; c < LIST_COLS; c++)
    o->w[c] = (int)strlen(list_head[c]);
  if (o->w[1] < 7)
    o->w[1] = 7; /* "private" */
  if (o->w[2] < 7)
    o->w[2] = 7; /* "retired" */
  if (o->w[4] < 20)
    o->w[4] = 20; /* ISO 8601 time */
}

/* Columns by display width: a UTF-8 name takes the columns it shows. */
void kvp_tool_list_measure(kvp_list_out *o, const kvp_cert_rec *r)
{
  const char *cell[3] = {r->name, r->der_len ? r->subject : "(no certificate yet)",
                         r->key_ref ? r->key_ref : "-"};
  static const int idx[3] = {0, 3, 5};
  for (size_t c = 0; c < 3; c++)
    if (kvp_tool_width(cell[c]) > o->w[idx[c]])
      o->w[idx[c]] = kvp_tool_width(cell[c]);
}

/* One element of the JSON array, indented as inside json_dumpf's array. */
static int json_element(kvp_list_out *o, const kvp_cert_rec *r)
{
  json_t *j = rec_json(r, 0);
  char *text = j ? json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
  int rc = text ? 0 : -1;

  json_decref(j);
  if (text == NULL)
    return -1;
  fputs(o->n == 0 ? "[\n  " : ",\n  ", o->f);
  /* every line one level deeper; a newline inside a string is escaped */
  for (const char *p = text, *nl; *p; p = nl + 1) {
    if ((nl = strchr(p, '\n')) == NULL) {
      fputs(p, o->f);
      break;
    }
    fwrite(p, 1, (size_t)(nl - p) + 1, o->f);
    fputs("  ", o->f);
  }
  free(text);
  return rc;
}

static void list_header(kvp_list_out *o)
{
  fprintf(o->f, "%-*s  %-*s  %-*s  %-*s  %-*s  %s\n", o->w[0], list_head[0], o->w[1], list_head[1],
          o->w[2], list_head[2], o->w[3], list_head[3], o->w[4], list_head[4], list_head[5]);
}

int kvp_tool_list_row(kvp_list_out *o, const kvp_cert_rec *r)
{
  char when[32];

  if (o->json) {
    if (json_element(o, r) != 0)
      return -1;
    o->n++;
    return 0;
  }
  if (o->n++ == 0)
    list_header(o);
  if (r->der_len > 0)
    kvp_tool_isotime(r->not_after, when);
  else
    snprintf(when, sizeof(when), "-");
  kvp_tool_cell(o->f, r->name, o->w[0] + 2);
  fprintf(o->f, "%-*s  %-*s  ", o->w[1],
          r->der_len == 0 ? "key" : r->type == KVP_CERT_PRIVATE ? "private" : "public", o->w[2],
          r->state == KVP_STATE_RETIRED ? "retired" : "active");
  kvp_tool_cell(o->f, r->der_len ? r->subject : "(no certificate yet)", o->w[3] + 2);
  fprintf(o->f, "%-*s  %s\n", o->w[4], when, r->key_ref ? r->key_ref : "-");
  return 0;
}

int kvp_tool_list_end(kvp_list_out *o)
{
  if (o->json)
    fputs(o->n == 0 ? "[]\n" : "\n]\n", o->f);
  else if (o->n == 0) /* the header alone */
    list_header(o);
  return ferror(o->f) ? -1 : 0;
}

int kvp_tool_print_rec(FILE *f, const kvp_cert_rec *rec, int how)
{
  if (how == KVP_SHOW_PEM && rec->der_len == 0)
    return -2; /* no certificate to print */
  if (how == KVP_SHOW_PEM) {
    char *pem = kvp_tool_pem(rec->der, rec->der_len);
    int rc = pem && fputs(pem, f) >= 0 ? 0 : -1;
    free(pem);
    return rc;
  }
  json_t *o = rec_json(rec, how == KVP_SHOW_JSON);
  if (how == KVP_SHOW_JSON)
    return dump(f, o);
  if (!o)
    return -1;
  const char *key;
  json_t *v;
  json_object_foreach(o, key, v)
  {
    if (json_is_integer(v))
      fprintf(f, "%s: %lld\n", key, (long long)json_integer_value(v));
    else if (strcmp(key, "sha256") == 0 && json_is_string(v)) {
      char fp[112]; /* OpenSSL's form in text, the hex in JSON */
      kvp_tool_fingerprint(json_string_value(v), fp);
      fprintf(f, "%s: %s\n", key, fp);
    } else
      fprintf(f, "%s: %s\n", key, json_is_string(v) ? json_string_value(v) : "-");
  }
  json_decref(o);
  return 0;
}

void kvp_tool_synopsis(FILE *f, const char *prefix, const char *cmd, const char *text)
{
  int indent = (int)(strlen(prefix) + strlen(cmd) + 1);
  const char *line = text, *nl;
  fputs(prefix, f);
  while ((nl = strchr(line, '\n')) != NULL) {
    fprintf(f, "%.*s\n%*s", (int)(nl - line), line, indent, "");
    line = nl + 1;
  }
  fprintf(f, "%s\n", line);
}
