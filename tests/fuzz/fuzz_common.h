/*
 * Shared helpers of the fuzz targets (tests/fuzz/fuzz_*.c).
 *
 * Every target defines LLVMFuzzerTestOneInput and LLVMFuzzerInitialize. With
 * KVP11_FUZZ=ON they are linked with libFuzzer; otherwise with replay_main.c,
 * which runs every file of the directories given on the command line through
 * the target once (a fast regression test over the seeds).
 *
 * Seeds: when KVP11_FUZZ_WRITE_SEEDS names a directory, LLVMFuzzerInitialize
 * writes the target's built-in seeds there and the process exits 0. CTest
 * runs that as a fixture, so no seed file lives in the repository.
 */
#ifndef KVP_TESTS_FUZZ_COMMON_H
#define KVP_TESTS_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* An oracle failed: print what and abort, so libFuzzer keeps the input. */
#define FUZZ_CHECK(cond)                                                                   \
  do {                                                                                     \
    if (!(cond)) {                                                                         \
      fprintf(stderr, "%s:%d: fuzz check failed: %s\n", __FILE__, __LINE__, #cond);         \
      abort();                                                                             \
    }                                                                                      \
  } while (0)

/* Write one seed file DIR/NAME. Returns 0 or -1. */
static inline int fuzz_seed(const char *dir, const char *name, const void *buf, size_t len)
{
  char path[1024];
  FILE *fp;
  int ok;

  snprintf(path, sizeof(path), "%s/%s", dir, name);
  fp = fopen(path, "wb");
  if (fp == NULL) {
    perror(path);
    return -1;
  }
  ok = len == 0 || fwrite(buf, 1, len, fp) == len;
  if (fclose(fp) != 0)
    ok = 0;
  return ok ? 0 : -1;
}

static inline int fuzz_seed_str(const char *dir, const char *name, const char *s)
{
  return fuzz_seed(dir, name, s, strlen(s));
}

/* The seed directory requested by KVP11_FUZZ_WRITE_SEEDS, or NULL. */
static inline const char *fuzz_seed_dir(void)
{
  const char *d = getenv("KVP11_FUZZ_WRITE_SEEDS");
  return d != NULL && d[0] != '\0' ? d : NULL;
}

/* A NUL-terminated copy of the input (malloc'd; never NULL on success). */
static inline char *fuzz_strndup(const uint8_t *data, size_t size)
{
  char *s = malloc(size + 1);
  if (s == NULL)
    return NULL;
  if (size > 0)
    memcpy(s, data, size);
  s[size] = '\0';
  return s;
}

#endif
