/* The wiping allocator (see wipemem.h). */
#include "core/wipemem.h"

#include <malloc.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

/* Word by word: malloc's blocks are aligned to 16 bytes and their usable size
 * is a multiple of 8. The volatile stores cannot be optimised away; they cost
 * a fifth of OPENSSL_cleanse's instructions, which matters for libcurl, which
 * frees ~50 blocks (~30 KiB) per request. */
void kvp_wipe_block(void *p, size_t n)
{
  volatile uint64_t *w = p;
  size_t i = 0, words = n / 8;
  for (; i + 8 <= words; i += 8) {
    w[i] = 0;
    w[i + 1] = 0;
    w[i + 2] = 0;
    w[i + 3] = 0;
    w[i + 4] = 0;
    w[i + 5] = 0;
    w[i + 6] = 0;
    w[i + 7] = 0;
  }
  for (; i < words; i++)
    w[i] = 0;
  if (n % 8 != 0)
    OPENSSL_cleanse((unsigned char *)p + words * 8, n % 8);
}

void kvp_wipe_free(void *p)
{
  if (p != NULL) {
    kvp_wipe_block(p, malloc_usable_size(p));
    free(p);
  }
}

void *kvp_wipe_realloc(void *p, size_t n, size_t min_size)
{
  size_t old;
  void *q;

  if (p == NULL)
    return malloc(n);
  if (n == 0) {
    kvp_wipe_free(p);
    return NULL;
  }
  old = malloc_usable_size(p);
  if (n <= old) {
    OPENSSL_cleanse((unsigned char *)p + n, old - n); /* the tail is not the caller's any more */
    return p;
  }
  q = malloc(n < min_size ? min_size : n);
  if (q == NULL)
    return NULL;
  memcpy(q, p, old);
  kvp_wipe_free(p);
  return q;
}
