/* What every unit test program shares (unit_util.h). */
#include "unit_util.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <CUnit/Basic.h>

int unit_run_suite(const char *name, CU_InitializeFunc init, CU_CleanupFunc clean,
                   CU_TestInfo *tests)
{
  return unit_run_suite_each(name, init, clean, NULL, NULL, tests);
}

int unit_run_suite_each(const char *name, CU_InitializeFunc init, CU_CleanupFunc clean,
                        CU_SetUpFunc setup, CU_TearDownFunc teardown, CU_TestInfo *tests)
{
  unsigned failed;
  if (CU_initialize_registry() != CUE_SUCCESS)
    return 1;
  CU_pSuite s = CU_add_suite_with_setup_and_teardown(name, init, clean, setup, teardown);
  for (size_t i = 0; s != NULL && tests[i].pName != NULL; i++)
    if (CU_add_test(s, tests[i].pName, tests[i].pTestFunc) == NULL)
      s = NULL;
  if (s == NULL) {
    fprintf(stderr, "cannot register the suite %s: %s\n", name, CU_get_error_msg());
    CU_cleanup_registry();
    return 1;
  }
  CU_basic_set_mode(CU_BRM_VERBOSE);
  CU_basic_run_tests();
  failed = CU_get_number_of_failures() + CU_get_number_of_suites_failed();
  CU_cleanup_registry();
  return failed == 0 ? 0 : 1;
}

int unit_sh(const char *fmt, ...)
{
  char cmd[4096];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(cmd, sizeof(cmd), fmt, ap);
  va_end(ap);
  int rc = system(cmd);
  if (rc != 0)
    fprintf(stderr, "command failed (%d): %s\n", rc, cmd);
  return rc == 0;
}

void unit_tmp_dir(const char *tag, char *dir, size_t size)
{
  const char *tmp = getenv("KVP11_TEST_TMP");
  snprintf(dir, size, "%s/%s", tmp != NULL ? tmp : "/tmp/kvp11-unit", tag);
  mkdir(tmp != NULL ? tmp : "/tmp/kvp11-unit", 0755);
  mkdir(dir, 0755);
}
