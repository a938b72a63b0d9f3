/*
 * Small shared helpers: status codes of the core, secret wiping, error buffers.
 */
#ifndef KVP_CORE_UTIL_H
#define KVP_CORE_UTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

/* Status codes of core functions (config, registry, cert). 0 is success. */
enum {
  KVP_OK = 0,
  KVP_ERR = -1,       /* generic failure; err buffer says what */
  KVP_ENOTFOUND = -2, /* the named thing does not exist */
  KVP_EEXISTS = -3,   /* a thing of that name exists already */
  KVP_EINVAL = -4,    /* bad input; err buffer says what and where */
  KVP_EIO = -5,       /* file or database I/O failed */
  KVP_ENOMEM = -6,
  KVP_EPERM = -7,     /* permissions (e.g. a secret file readable by others) */
};

/* Size of the err buffers passed around; messages are one line. */
#define KVP_ERRLEN 512

/* Write a formatted one-line message into err (if err != NULL). Returns rc. */
int kvp_seterr(char *err, size_t errlen, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Wipe memory that held a secret (PIN, client secret, token, plaintext). */
void kvp_wipe(void *p, size_t len);
/* Wipe a NUL-terminated secret string and free it. NULL is fine. */
void kvp_free_secret(char *s);

/* Hex encode len bytes into out (needs 2*len+1 bytes); lower case. */
void kvp_hex(const unsigned char *in, size_t len, char *out);

/* strdup that returns NULL for NULL. */
char *kvp_strdup0(const char *s);

/* Room for one more element in a growable array: *(T **)arr holds n of *cap
 * elements of elem bytes; when full it doubles (first: the first capacity).
 * 0, or -1 when out of memory (the array is left as it was). */
int kvp_grow(void *arr, size_t n, size_t *cap, size_t elem, size_t first);
/* qsort / bsearch comparator of int64_t values (row ids). */
int kvp_cmp_int64(const void *a, const void *b);

#define KVP_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* free() each of n pointers (NULL ones are fine): a destructor's list of fields. */
void kvp_free_all(void *const *ptrs, size_t n);
#define KVP_FREE_ALL(...)                                                                          \
  kvp_free_all((void *const[]){__VA_ARGS__}, sizeof((void *const[]){__VA_ARGS__}) / sizeof(void *))

#endif
