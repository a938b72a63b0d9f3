/*
 * Unit tests of module/core/util.c and module/core/log.c.
 *
 * The KVP11_DEBUG tests re-run this program with the
 * variable set, because the library reads it once, when it is loaded.
 */
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CUnit/Basic.h>
#include <CUnit/CUnit.h>

#include "core/log.h"
#include "core/util.h"
#include "unit_util.h"

static char g_dir[1024];
static char g_self[4096]; /* this program (not /proc/self/exe: wrong under valgrind) */

static void tmp_path(char *out, size_t n, const char *name)
{
  snprintf(out, n, "%s/%s", g_dir, name);
}

/* Read a whole file into a malloc'd NUL-terminated string ("" if missing). */
static char *slurp(const char *path)
{
  FILE *f = fopen(path, "r");
  char *buf = calloc(1, 1 << 20);
  size_t n = 0;

  if (f != NULL) {
    n = fread(buf, 1, (1 << 20) - 1, f);
    fclose(f);
  }
  buf[n] = '\0';
  return buf;
}

static int count_lines(const char *s)
{
  int n = 0;

  for (; *s; s++)
    n += *s == '\n';
  return n;
}

/* ---- util ---- */

static void test_seterr(void)
{
  char err[16];

  CU_ASSERT_EQUAL(kvp_seterr(err, sizeof(err), KVP_EINVAL, "bad %s %d", "thing", 42), KVP_EINVAL);
  CU_ASSERT_STRING_EQUAL(err, "bad thing 42");
  CU_ASSERT_EQUAL(kvp_seterr(NULL, 0, KVP_EIO, "ignored"), KVP_EIO);
  kvp_seterr(err, sizeof(err), KVP_ERR, "%s", "a message much longer than sixteen bytes");
  CU_ASSERT_EQUAL(strlen(err), sizeof(err) - 1);
}

static void test_hex_strdup_wipe(void)
{
  const unsigned char in[] = {0x00, 0x0f, 0xa5, 0xff};
  char out[9];
  char secret[] = "s3cret";
  char *s;

  kvp_hex(in, sizeof(in), out);
  CU_ASSERT_STRING_EQUAL(out, "000fa5ff");
  kvp_hex(in, 0, out);
  CU_ASSERT_STRING_EQUAL(out, "");

  CU_ASSERT_PTR_NULL(kvp_strdup0(NULL));
  s = kvp_strdup0("abc");
  CU_ASSERT_STRING_EQUAL(s, "abc");
  free(s);

  kvp_wipe(secret, strlen(secret));
  for (size_t i = 0; i < sizeof(secret) - 1; i++)
    CU_ASSERT_EQUAL(secret[i], 0);
  kvp_wipe(NULL, 10);
  kvp_free_secret(NULL);
  kvp_free_secret(strdup("pin"));
}

/* ---- log ---- */

static void test_level_parse(void)
{
  CU_ASSERT_EQUAL(kvp_log_level_parse("error"), KVP_LOG_ERROR);
  CU_ASSERT_EQUAL(kvp_log_level_parse("warn"), KVP_LOG_WARN);
  CU_ASSERT_EQUAL(kvp_log_level_parse("info"), KVP_LOG_INFO);
  CU_ASSERT_EQUAL(kvp_log_level_parse("debug"), KVP_LOG_DEBUG);
  CU_ASSERT_EQUAL(kvp_log_level_parse("DEBUG"), KVP_LOG_DEBUG);
  CU_ASSERT_EQUAL(kvp_log_level_parse("verbose"), -1);
  CU_ASSERT_EQUAL(kvp_log_level_parse(""), -1);
  CU_ASSERT_EQUAL(kvp_log_level_parse(NULL), -1);
}

static void test_log_file_format(void)
{
  char path[1100];
  struct stat st;
  char *text;
  int y, mo, d, h, mi, s, ms, n = 0;

  tmp_path(path, sizeof(path), "format.log");
  unlink(path);
  kvp_log_setup(KVP_LOG_INFO, path);
  KVP_ERROR("first %d", 1);
  KVP_INFO("second");
  KVP_DEBUG("not shown");
  KVP_WARN("two\nlines\tin one");
  kvp_log_close();

  CU_ASSERT_EQUAL_FATAL(stat(path, &st), 0);
  CU_ASSERT_EQUAL(st.st_mode & 0777, 0640);
  text = slurp(path);
  CU_ASSERT_EQUAL(count_lines(text), 3);
  CU_ASSERT_EQUAL(
      sscanf(text, "%4d-%2d-%2dT%2d:%2d:%2d.%3dZ %n", &y, &mo, &d, &h, &mi, &s, &ms, &n), 7);
  CU_ASSERT(n > 0 && strncmp(text + n, "kvp11[", 6) == 0);
  CU_ASSERT_PTR_NOT_NULL(strstr(text, " ERROR test_util_log.c:"));
  CU_ASSERT_PTR_NOT_NULL(strstr(text, " test_log_file_format: first 1\n"));
  CU_ASSERT_PTR_NOT_NULL(strstr(text, " INFO test_util_log.c:"));
  CU_ASSERT_PTR_NULL(strstr(text, "not shown"));
  CU_ASSERT_PTR_NOT_NULL(strstr(text, "two?lines?in one\n"));
  free(text);

  /* Re-opening appends. */
  kvp_log_setup(KVP_LOG_DEBUG, path);
  KVP_DEBUG("now shown");
  kvp_log_close();
  text = slurp(path);
  CU_ASSERT_EQUAL(count_lines(text), 4);
  CU_ASSERT_PTR_NOT_NULL(strstr(text, "now shown\n"));
  free(text);
  kvp_log_setup(KVP_LOG_ERROR, NULL);
}

static void test_log_long_line(void)
{
  char path[1100];
  char big[5000];
  char *text;

  memset(big, 'x', sizeof(big) - 1);
  big[sizeof(big) - 1] = '\0';
  tmp_path(path, sizeof(path), "long.log");
  unlink(path);
  kvp_log_setup(KVP_LOG_INFO, path);
  KVP_ERROR("%s", big);
  kvp_log_close();
  text = slurp(path);
  CU_ASSERT_EQUAL(count_lines(text), 1);
  CU_ASSERT(strlen(text) < sizeof(big));
  CU_ASSERT_PTR_NOT_NULL(strstr(text, "xxx...\n"));
  free(text);
  kvp_log_setup(KVP_LOG_ERROR, NULL);
}

#define THREADS 4
#define LINES 500

static void *log_thread(void *arg)
{
  for (int i = 0; i < LINES; i++)
    KVP_ERROR("thread %ld line %d abcdefghijklmnopqrstuvwxyz end", (long)(intptr_t)arg, i);
  return NULL;
}

static void test_log_threads(void)
{
  pthread_t t[THREADS];
  char path[1100];
  char *text, *line, *save = NULL;
  int n = 0, good = 0;

  tmp_path(path, sizeof(path), "threads.log");
  unlink(path);
  kvp_log_setup(KVP_LOG_INFO, path);
  for (long i = 0; i < THREADS; i++)
    CU_ASSERT_EQUAL_FATAL(pthread_create(&t[i], NULL, log_thread, (void *)(intptr_t)i), 0);
  for (int i = 0; i < THREADS; i++)
    pthread_join(t[i], NULL);
  kvp_log_close();

  text = slurp(path);
  for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save), n++)
    good += strncmp(line, "20", 2) == 0 && strstr(line, "abcdefghijklmnopqrstuvwxyz end") != NULL &&
            strstr(line, "abcdefghijklmnopqrstuvwxyz end") + 30 == line + strlen(line);
  CU_ASSERT_EQUAL(n, THREADS * LINES);
  CU_ASSERT_EQUAL(good, THREADS * LINES);
  free(text);
  kvp_log_setup(KVP_LOG_ERROR, NULL);
}

/* Run this program with KVP11_DEBUG=env as "child MODE PATH"; returns its exit status. */
static int run_child(const char *env, const char *mode, const char *path)
{
  pid_t pid = fork();
  int status = -1;

  if (pid == 0) {
    if (env != NULL)
      setenv("KVP11_DEBUG", env, 1);
    else
      unsetenv("KVP11_DEBUG");
    execl(g_self, "test_util_log", "child", mode, path, (char *)NULL);
    _exit(127);
  }
  if (pid < 0 || waitpid(pid, &status, 0) != pid)
    return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* In the child: configure error-only logging to path, then log a debug line. */
static int child_main(const char *mode, const char *path)
{
  (void)mode;
  kvp_log_setup(KVP_LOG_ERROR, path);
  KVP_DEBUG("debug from child");
  KVP_ERROR("error from child");
  kvp_log_close();
  return 0;
}

static void test_kvp11_debug_env(void)
{
  char conf_log[1100], env_log[1100], env[1200];
  char *a, *b;

  tmp_path(conf_log, sizeof(conf_log), "conf.log");
  tmp_path(env_log, sizeof(env_log), "env.log");
  unlink(conf_log);
  unlink(env_log);

  /* No override: the configured level and file apply. */
  CU_ASSERT_EQUAL(run_child(NULL, "x", conf_log), 0);
  a = slurp(conf_log);
  CU_ASSERT_PTR_NULL(strstr(a, "debug from child"));
  CU_ASSERT_PTR_NOT_NULL(strstr(a, "error from child"));
  free(a);
  unlink(conf_log);

  /* KVP11_DEBUG=debug:FILE overrides level and file. */
  snprintf(env, sizeof(env), "debug:%s", env_log);
  CU_ASSERT_EQUAL(run_child(env, "x", conf_log), 0);
  a = slurp(env_log);
  b = slurp(conf_log);
  CU_ASSERT_PTR_NOT_NULL(strstr(a, " DEBUG test_util_log.c:"));
  CU_ASSERT_PTR_NOT_NULL(strstr(a, "debug from child"));
  CU_ASSERT_PTR_NOT_NULL(strstr(a, "error from child"));
  CU_ASSERT_EQUAL(b[0], '\0');
  free(a);
  free(b);
  unlink(env_log);

  /* An unknown level is ignored: the configuration applies. */
  snprintf(env, sizeof(env), "loud:%s", env_log);
  CU_ASSERT_EQUAL(run_child(env, "x", conf_log), 0);
  a = slurp(conf_log);
  b = slurp(env_log);
  CU_ASSERT_PTR_NOT_NULL(strstr(a, "error from child"));
  CU_ASSERT_PTR_NULL(strstr(a, "debug from child"));
  CU_ASSERT_EQUAL(b[0], '\0');
  free(a);
  free(b);
}

int main(int argc, char **argv)
{
  static CU_TestInfo tests[] = {
      {"seterr", test_seterr},
      {"hex, strdup0, wipe", test_hex_strdup_wipe},
      {"level parse", test_level_parse},
      {"log file format", test_log_file_format},
      {"long line", test_log_long_line},
      {"threads: one write per line", test_log_threads},
      {"KVP11_DEBUG", test_kvp11_debug_env},
      CU_TEST_INFO_NULL,
  };

  if (argc == 4 && strcmp(argv[1], "child") == 0)
    return child_main(argv[2], argv[3]);
  if (realpath(argv[0], g_self) == NULL)
    snprintf(g_self, sizeof(g_self), "/proc/self/exe");
  if (getenv("KVP11_DEBUG") != NULL) { /* it was applied at load time: start clean */
    unsetenv("KVP11_DEBUG");
    execv(g_self, argv);
    return 1;
  }
  unit_tmp_dir("util_log", g_dir, sizeof(g_dir));

  return unit_run_suite("util_log", NULL, NULL, tests);
}
