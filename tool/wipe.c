/*
 * OpenSSL memory functions that wipe what they free (see wipe.h).
 *
 * glibc's malloc_usable_size() gives the real size of a block, so free does
 * not need a size header of its own and blocks stay plain malloc blocks.
 */
#include <malloc.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "wipe.h"

static void *wipe_malloc(size_t n, const char *file, int line)
{
  (void)file;
  (void)line;
  return malloc(n);
}

static void wipe_free(void *p, const char *file, int line)
{
  (void)file;
  (void)line;
  if (p == NULL)
    return;
  OPENSSL_cleanse(p, malloc_usable_size(p));
  free(p);
}

/* Never glibc's realloc: it may move the block and free the old copy unwiped. */
static void *wipe_realloc(void *p, size_t n, const char *file, int line)
{
  if (p == NULL)
    return wipe_malloc(n, file, line);
  if (n == 0) {
    wipe_free(p, file, line);
    return NULL;
  }
  size_t old = malloc_usable_size(p);
  if (n <= old) {
    OPENSSL_cleanse((unsigned char *)p + n, old - n); /* the tail is not the caller's any more */
    return p;
  }
  void *q = malloc(n);
  if (q == NULL)
    return NULL;
  memcpy(q, p, old);
  wipe_free(p, file, line);
  return q;
}

int kvp_tool_wipe_init(void)
{
  const char *no = getenv("KVP11_TEST_NO_WIPE");
  if (no != NULL && strcmp(no, "1") == 0)
    return 1;
  return CRYPTO_set_mem_functions(wipe_malloc, wipe_realloc, wipe_free) ? 0 : -1;
}
