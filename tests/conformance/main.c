/*
 * kvp11-conformance: PKCS#11 2.40 conformance suite for libkvp11.so (and any module that shows
 * the same certificate / public key / private key objects). See common.h for the environment.
 *
 * Usage: kvp11-conformance [SUITE ...]   (no argument: every suite)
 * Exit status: 0 when every assertion passed, 1 on any failure, 2 on setup errors.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <CUnit/Basic.h>

#include "common.h"

int main(int argc, char **argv)
{
  int status = 2;
  if (!kvpt_setup())
    goto out;
  if (CU_initialize_registry() != CUE_SUCCESS) {
    fprintf(stderr, "CU_initialize_registry: %s\n", CU_get_error_msg());
    goto out;
  }
  /* Order matters: init leaves the module finalized; destructive runs last. */
  kvpt_add_init_tests();
  kvpt_add_slot_tests();
  kvpt_add_session_tests();
  kvpt_add_object_tests();
  kvpt_add_sign_tests();
  kvpt_add_crypt_tests();
  kvpt_add_mixing_tests();
  kvpt_add_thread_tests();
  kvpt_add_fork_tests();
  kvpt_add_destructive_tests();

  bool failed = false;
  CU_basic_set_mode(CU_BRM_VERBOSE);
  if (argc > 1) {
    for (int i = 1; i < argc; i++) {
      CU_pSuite s = CU_get_suite(argv[i]);
      if (!s) {
        fprintf(stderr, "no suite named %s\n", argv[i]);
        CU_cleanup_registry();
        goto out;
      }
      CU_basic_run_suite(s);
      CU_pRunSummary sum = CU_get_run_summary();
      failed |= sum->nAssertsFailed || sum->nTestsFailed || sum->nSuitesFailed;
    }
  } else {
    CU_basic_run_tests();
    CU_pRunSummary sum = CU_get_run_summary();
    failed = sum->nAssertsFailed || sum->nTestsFailed || sum->nSuitesFailed;
  }
  if (kvpt_errqueue_violations() != 0) {
    fprintf(stderr, "\n%lu module call(s) changed the caller's OpenSSL error queue\n",
            kvpt_errqueue_violations());
    failed = true;
  }
  status = failed ? 1 : 0;
  printf("\n");
  CU_cleanup_registry();
out:
  kvpt_teardown();
  return status;
}
