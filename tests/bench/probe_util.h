/*
 * What the bench probes (scale_probe.c, sessobj_probe.c) share: a monotonic
 * clock in ms, the exit on a failed call, and the slot of a token by label
 * (slot ids are not stable). Each probe defines PROBE_NAME before including.
 */
#ifndef KVP_BENCH_PROBE_UTIL_H
#define KVP_BENCH_PROBE_UTIL_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <p11-kit/pkcs11.h>

static double now_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void die(const char *what, CK_RV rv)
{
  fprintf(stderr, PROBE_NAME ": %s: 0x%lx\n", what, (unsigned long)rv);
  exit(1);
}

static CK_SLOT_ID token_slot(CK_FUNCTION_LIST_PTR fl, const char *label)
{
  CK_SLOT_ID slots[64];
  CK_ULONG n = 64;
  char padded[32];
  CK_RV rv = fl->C_GetSlotList(CK_TRUE, slots, &n);

  if (rv != CKR_OK)
    die("C_GetSlotList", rv);
  memset(padded, ' ', sizeof(padded));
  memcpy(padded, label, strnlen(label, sizeof(padded)));
  for (CK_ULONG i = 0; i < n; i++) {
    CK_TOKEN_INFO ti;
    if (fl->C_GetTokenInfo(slots[i], &ti) == CKR_OK && memcmp(ti.label, padded, 32) == 0)
      return slots[i];
  }
  fprintf(stderr, PROBE_NAME ": no token labelled '%s'\n", label);
  exit(1);
}

#endif
