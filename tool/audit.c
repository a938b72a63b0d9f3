/*
 * kvp11 audit [--since T] [--cert NAME] [--file FILE] [--json]: read the audit
 * trail back from a file destination ([global] audit = /path, see
 * module/core/audit.h). With syslog as the destination, journalctl reads it
 * (journalctl SYSLOG_FACILITY=10 | grep kvp11-audit).
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "tool.h"

void kvp_tool_audit_usage(FILE *f)
{
  fprintf(f, "  kvp11 [-c FILE] audit [--since T] [--cert NAME] [--file FILE] [--json]\n");
}

static void audit_help(FILE *f)
{
  fprintf(f,
          "usage: kvp11 [-c FILE] audit [--since T] [--cert NAME] [--file FILE] [--json]\n"
          "\n"
          "Print the audit trail: one line per private-key operation (sign, decrypt), failed\n"
          "login and change of the registry or of a key, oldest first.\n"
          "\n"
          "  --since T     only records at or after T: 2026-12-01, 2026-12-01T10:00:00Z, or\n"
          "                a time ago: 30m, 12h, 7d\n"
          "  --cert NAME   only records about the certificate (or key entry) NAME\n"
          "  --file FILE   read FILE instead of the configured [global] audit file\n"
          "  --json        the records as they are stored: one JSON object per line\n"
          "\n"
          "The configured destination must be a file ([global] audit = /var/log/kvp11/audit.log);\n"
          "records sent to syslog are read with journalctl.\n");
}

/* "2026-12-01", "2026-12-01T10:00:00Z" or "30m" / "12h" / "7d" into an ISO prefix to compare. */
static int since_bound(const char *s, char out[32])
{
  char *end;
  long n = strtol(s, &end, 10);

  if (end != s && n >= 0 && end[0] != '\0' && end[1] == '\0' && strchr("smhd", end[0])) {
    long mult = end[0] == 's' ? 1 : end[0] == 'm' ? 60 : end[0] == 'h' ? 3600 : 86400;
    time_t t = time(NULL) - (time_t)(n * mult);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, 32, "%Y-%m-%dT%H:%M:%S", &tm);
    return 0;
  }
  /* An absolute time compares as text with the records' "time" (ISO 8601 UTC). */
  if (strlen(s) < 10 || strlen(s) > 27 || s[4] != '-' || s[7] != '-')
    return -1;
  snprintf(out, 32, "%s", s);
  if (out[strlen(out) - 1] == 'Z')
    out[strlen(out) - 1] = '\0';
  return 0;
}

static const char *field(json_t *o, const char *k)
{
  const char *v = json_string_value(json_object_get(o, k));
  return v != NULL ? v : "-";
}

static void print_text(json_t *o)
{
  const char *ev = field(o, "event");

  printf("%s %-13s pid=%lld uid=%lld %s", field(o, "time"), ev,
         (long long)json_integer_value(json_object_get(o, "pid")),
         (long long)json_integer_value(json_object_get(o, "uid")), field(o, "process"));
  if (strcmp(ev, "change") == 0)
    printf(" %s account=%s cert=%s key=%s old=%.16s new=%.16s\n", field(o, "action"),
           field(o, "account"), field(o, "cert"), field(o, "key"), field(o, "old_sha256"),
           field(o, "new_sha256"));
  else if (strcmp(ev, "login_failure") == 0)
    printf(" account=%s %s\n", field(o, "account"), field(o, "result"));
  else
    printf(" account=%s cert=%s key=%s%s%s %s %s %lldus%s%s\n", field(o, "account"),
           field(o, "cert"), field(o, "key"), json_is_string(json_object_get(o, "key_version")) ? "/" : "",
           json_is_string(json_object_get(o, "key_version")) ? field(o, "key_version") : "",
           field(o, "mechanism"), field(o, "result"),
           (long long)json_integer_value(json_object_get(o, "latency_us")),
           json_is_string(json_object_get(o, "request_id")) ? " request=" : "",
           json_is_string(json_object_get(o, "request_id")) ? field(o, "request_id") : "");
}

/* Print the matching records of f; returns the number of lines that did not parse. */
static size_t filter(FILE *f, const char *since, const char *cert, int json, size_t *shown)
{
  char *line = NULL;
  size_t cap = 0, bad = 0;
  ssize_t n;

  while ((n = getline(&line, &cap, f)) > 0) {
    json_error_t jerr;
    json_t *o = json_loadb(line, (size_t)n, 0, &jerr);
    if (!json_is_object(o)) {
      bad++;
      json_decref(o);
      continue;
    }
    int keep = (since == NULL || strcmp(field(o, "time"), since) >= 0) &&
               (cert == NULL || strcmp(field(o, "cert"), cert) == 0);
    if (keep && json)
      fputs(line, stdout);
    else if (keep)
      print_text(o);
    *shown += keep;
    json_decref(o);
  }
  free(line);
  return bad;
}

int kvp_tool_audit(kvp_tool *t, int argc, char **argv)
{
  static const struct option opts[] = {
      {"since", required_argument, NULL, 's'}, {"cert", required_argument, NULL, 'n'},
      {"file", required_argument, NULL, 'f'},  {"json", no_argument, NULL, 'j'},
      {"help", no_argument, NULL, 'h'},        {NULL, 0, NULL, 0},
  };
  const char *since_opt = NULL, *cert = NULL, *file = NULL;
  char since[32];
  int json = 0, o;
  size_t shown = 0, bad;
  FILE *f;

  t->cmd = "audit";
  opterr = 0;
  optind = 0;
  while ((o = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
    switch (o) {
    case 's':
      since_opt = optarg;
      break;
    case 'n':
      cert = optarg;
      break;
    case 'f':
      file = optarg;
      break;
    case 'j':
      json = 1;
      break;
    case 'h':
      audit_help(stdout);
      return KVP_EXIT_OK;
    default:
      return kvp_tool_badopt(t, o, argv, "kvp11 audit --help");
    }
  }
  if (optind < argc)
    return kvp_tool_fail(t, KVP_EXIT_USAGE, "unexpected argument '%s' (see kvp11 audit --help)",
                         argv[optind]);
  if (since_opt != NULL && since_bound(since_opt, since) != 0)
    return kvp_tool_fail(t, KVP_EXIT_USAGE,
                         "--since '%s': expected a date (2026-12-01), a UTC time "
                         "(2026-12-01T10:00:00Z) or a time ago (30m, 12h, 7d)",
                         since_opt);
  if (file == NULL) {
    if (kvp_tool_load_config(t))
      return KVP_EXIT_ERROR;
    file = t->cfg->audit;
    if (file == NULL || file[0] != '/')
      return kvp_tool_fail(t, KVP_EXIT_ERROR,
                           "%s: [global] audit is %s, not a file: %s", t->cfg->path,
                           file != NULL ? file : "off",
                           file != NULL ? "read the records with journalctl "
                                          "SYSLOG_FACILITY=10 | grep kvp11-audit"
                                        : "set audit = /var/log/kvp11/audit.log to keep them");
  }
  f = fopen(file, "re");
  if (f == NULL)
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "%s: cannot open: %s", file, strerror(errno));
  bad = filter(f, since_opt != NULL ? since : NULL, cert, json, &shown);
  fclose(f);
  if (bad > 0)
    kvp_tool_warn(t, "%s: %zu line(s) are not audit records and were skipped", file, bad);
  return KVP_EXIT_OK;
}
