/*
 * Small shared helpers: error buffers, secret wiping, hex.
 */
#include "util.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

int kvp_seterr(char *err, size_t errlen, int rc, const char *fmt, ...)
{
  va_list ap;

  if (err == NULL || errlen == 0)
    return rc;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
  return rc;
}

void kvp_wipe(void *p, size_t len)
{
  if (p != NULL && len > 0)
    OPENSSL_cleanse(p, len);
}

void kvp_free_secret(char *s)
{
  if (s == NULL)
    return;
  kvp_wipe(s, strlen(s));
  free(s);
}

void kvp_hex(const unsigned char *in, size_t len, char *out)
{
  static const char digits[] = "0123456789abcdef";

  for (size_t i = 0; i < len; i++) {
    out[2 * i] = digits[in[i] >> 4];
    out[2 * i + 1] = digits[in[i] & 0x0f];
  }
  out[2 * len] = '\0';
}

void kvp_free_all(void *const *ptrs, size_t n)
{
  for (size_t i = 0; i < n; i++)
    free(ptrs[i]);
}

char *kvp_strdup0(const char *s)
{
  return s != NULL ? strdup(s) : NULL;
}

int kvp_grow(void *arr, size_t n, size_t *cap, size_t elem, size_t first)
{
  size_t c;
  void *p, *q;

  if (n < *cap)
    return 0;
  c = *cap ? 2 * *cap : first;
  memcpy(&p, arr, sizeof(p)); /* the T * behind arr, without reading it as a void * */
  if (c > SIZE_MAX / elem || (q = realloc(p, c * elem)) == NULL)
    return -1;
  memcpy(arr, &q, sizeof(q));
  *cap = c;
  return 0;
}

int kvp_cmp_int64(const void *a, const void *b)
{
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return x < y ? -1 : x > y;
}
