/*
 * tests/stress: load a PKCS#11 module through dlopen + C_GetFunctionList only, and find the
 * slot of a token by label. Header-only (static functions) so each stress program stays one file.
 */
#ifndef KVP11_STRESS_P11LOAD_H
#define KVP11_STRESS_P11LOAD_H

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <p11-kit/pkcs11.h>

/* Loads path; returns the function list or NULL (reason on stderr). *handle gets the dlopen handle. */
static CK_FUNCTION_LIST_PTR kvps_load(const char *path, void **handle)
{
  *handle = NULL;
  if (!path || !*path) {
    fprintf(stderr, "KVP11_MODULE is not set\n");
    return NULL;
  }
  void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    fprintf(stderr, "dlopen %s: %s\n", path, dlerror());
    return NULL;
  }
  CK_C_GetFunctionList gfl;
  void *sym = dlsym(h, "C_GetFunctionList");
  memcpy(&gfl, &sym, sizeof gfl);
  CK_FUNCTION_LIST_PTR p11 = NULL;
  if (!sym || gfl(&p11) != CKR_OK || !p11) {
    fprintf(stderr, "%s: C_GetFunctionList failed\n", path);
    dlclose(h);
    return NULL;
  }
  *handle = h;
  return p11;
}

/* Slot whose token label (blank-padded) equals label. Returns 0 and sets *slot, -1 if absent. */
static int kvps_find_slot(CK_FUNCTION_LIST_PTR p11, const char *label, CK_SLOT_ID *slot)
{
  CK_SLOT_ID slots[64];
  CK_ULONG n = 64;
  if (p11->C_GetSlotList(CK_TRUE, slots, &n) != CKR_OK)
    return -1;
  for (CK_ULONG i = 0; i < n && i < 64; i++) {
    CK_TOKEN_INFO ti;
    if (p11->C_GetTokenInfo(slots[i], &ti) != CKR_OK)
      continue;
    size_t len = sizeof ti.label;
    while (len > 0 && ti.label[len - 1] == ' ')
      len--;
    if (len == strlen(label) && memcmp(ti.label, label, len) == 0) {
      *slot = slots[i];
      return 0;
    }
  }
  return -1;
}

#endif
