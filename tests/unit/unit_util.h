/*
 * What every unit test program (tests/unit/test_*.c) shares, and the Key
 * Vault CUnit tests (tests/kv) too: the CUnit run and shell commands.
 */
#ifndef KVP_TEST_UNIT_UTIL_H
#define KVP_TEST_UNIT_UTIL_H

#include <stddef.h>

#include <CUnit/CUnit.h>

/* Runs tests (ended by CU_TEST_INFO_NULL) as one suite named name, between init and clean
 * (may be NULL), with CUnit's verbose output. The program's exit status: 0 when every test
 * ran and passed, 1 otherwise (a failed assertion or suite set-up, or no registry). */
int unit_run_suite(const char *name, CU_InitializeFunc init, CU_CleanupFunc clean,
                   CU_TestInfo *tests);
/* The same with setup and teardown (may be NULL) around each test. */
int unit_run_suite_each(const char *name, CU_InitializeFunc init, CU_CleanupFunc clean,
                        CU_SetUpFunc setup, CU_TearDownFunc teardown, CU_TestInfo *tests);

/* $KVP11_TEST_TMP/TAG (/tmp/kvp11-unit/TAG without KVP11_TEST_TMP) into dir, made (mode
 * 0755) when absent. */
void unit_tmp_dir(const char *tag, char *dir, size_t size);

/* system() of a printf-formatted command: 1 when it exited 0; else 0, and the command and its
 * status are printed. */
int unit_sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
