/*
 * p11objs MODULE TOKEN_LABEL [LABEL]: list the objects of a token as
 * "HANDLE CLASS LABEL" lines (all objects, or those with CKA_LABEL = LABEL),
 * so shell tests can check handles and visibility through the module.
 * With SIGN=LABEL in the environment it also signs 32 bytes with CKM_ECDSA or
 * CKM_SHA256_RSA_PKCS (by key type) using that private key and prints "signed N".
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <p11-kit/pkcs11.h>

static CK_FUNCTION_LIST_PTR f;

static int die(const char *what, CK_RV rv)
{
  fprintf(stderr, "p11objs: %s: CK_RV 0x%lx\n", what, (unsigned long)rv);
  return 1;
}

static CK_SLOT_ID find_slot(const char *label, int *found)
{
  CK_SLOT_ID slots[64];
  CK_ULONG n = 64;
  CK_TOKEN_INFO ti;

  *found = 0;
  if (f->C_GetSlotList(CK_TRUE, slots, &n) != CKR_OK)
    return 0;
  for (CK_ULONG i = 0; i < n; i++) {
    size_t l = strlen(label);
    if (f->C_GetTokenInfo(slots[i], &ti) == CKR_OK && l <= 32 &&
        memcmp(ti.label, label, l) == 0 && (l == 32 || ti.label[l] == ' ')) {
      *found = 1;
      return slots[i];
    }
  }
  return 0;
}

static int sign_with(CK_SESSION_HANDLE s, const char *label)
{
  CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
  CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_LABEL, (void *)label, strlen(label)}};
  CK_OBJECT_HANDLE h;
  CK_ULONG n = 0, kt_len;
  CK_KEY_TYPE kt;
  CK_ATTRIBUTE a = {CKA_KEY_TYPE, &kt, sizeof(kt)};
  CK_BYTE data[32] = {1, 2, 3}, sig[1024];
  CK_RV rv;

  if ((rv = f->C_FindObjectsInit(s, t, 2)) != CKR_OK || (rv = f->C_FindObjects(s, &h, 1, &n)) != CKR_OK)
    return die("find private key", rv);
  f->C_FindObjectsFinal(s);
  if (n != 1)
    return die("no private key with that label", CKR_OBJECT_HANDLE_INVALID);
  if ((rv = f->C_GetAttributeValue(s, h, &a, 1)) != CKR_OK)
    return die("key type", rv);
  CK_MECHANISM m = {kt == CKK_EC ? CKM_ECDSA : CKM_SHA256_RSA_PKCS, NULL, 0};
  kt_len = sizeof(sig);
  if ((rv = f->C_SignInit(s, &m, h)) != CKR_OK || (rv = f->C_Sign(s, data, sizeof(data), sig, &kt_len)) != CKR_OK)
    return die("sign", rv);
  printf("signed %lu\n", (unsigned long)kt_len);
  return 0;
}

int main(int argc, char **argv)
{
  CK_RV (*gfl)(CK_FUNCTION_LIST_PTR_PTR);
  CK_SESSION_HANDLE s;
  CK_OBJECT_HANDLE h[64];
  CK_ULONG n;
  CK_ATTRIBUTE t[1];
  CK_RV rv;
  int found, rc = 0;

  if (argc < 3)
    return fprintf(stderr, "usage: p11objs MODULE TOKEN_LABEL [LABEL]\n"), 2;
  void *lib = dlopen(argv[1], RTLD_NOW);
  if (lib == NULL)
    return fprintf(stderr, "p11objs: %s\n", dlerror()), 1;
  *(void **)&gfl = dlsym(lib, "C_GetFunctionList");
  if (gfl == NULL)
    return fprintf(stderr, "p11objs: %s\n", dlerror()), 1;
  if ((rv = gfl(&f)) != CKR_OK || (rv = f->C_Initialize(NULL)) != CKR_OK)
    return die("initialize", rv);
  CK_SLOT_ID slot = find_slot(argv[2], &found);
  if (!found)
    return die("no such token", CKR_TOKEN_NOT_PRESENT);
  if ((rv = f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s)) != CKR_OK)
    return die("open session", rv);
  t[0].type = CKA_LABEL;
  t[0].pValue = argv[3];
  t[0].ulValueLen = argc > 3 ? strlen(argv[3]) : 0;
  if ((rv = f->C_FindObjectsInit(s, t, argc > 3 ? 1 : 0)) != CKR_OK)
    return die("find", rv);
  while ((rv = f->C_FindObjects(s, h, 64, &n)) == CKR_OK && n > 0)
    for (CK_ULONG i = 0; i < n; i++) {
      CK_OBJECT_CLASS cls = 0;
      char label[256] = "";
      CK_ATTRIBUTE a[2] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_LABEL, label, sizeof(label) - 1}};
      if (f->C_GetAttributeValue(s, h[i], a, 2) == CKR_OK)
        label[a[1].ulValueLen] = '\0';
      printf("%lu %lu %s\n", (unsigned long)h[i], (unsigned long)cls, label);
    }
  f->C_FindObjectsFinal(s);
  if (getenv("SIGN") != NULL)
    rc = sign_with(s, getenv("SIGN"));
  f->C_CloseSession(s);
  f->C_Finalize(NULL);
  return rc;
}
