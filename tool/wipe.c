/*
 * OpenSSL memory functions that wipe what they free (see wipe.h), on the
 * project's one wiping allocator (module/core/wipemem.h).
 */
#include <malloc.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "core/wipemem.h"
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
  kvp_wipe_free(p);
}

/* Never glibc's realloc: it may move the block and free the old copy unwiped. */
static void *wipe_realloc(void *p, size_t n, const char *file, int line)
{
  (void)file;
  (void)line;
  return kvp_wipe_realloc(p, n, 0);
}

int kvp_tool_wipe_init(void)
{
  const char *no = getenv("KVP11_TEST_NO_WIPE");
  if (no != NULL && strcmp(no, "1") == 0)
    return 1;
  return CRYPTO_set_mem_functions(wipe_malloc, wipe_realloc, wipe_free) ? 0 : -1;
}
