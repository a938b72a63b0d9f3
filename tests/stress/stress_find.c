/*
 * kvp11-stress-find TOKEN: what the module sees of a registry.
 *
 * Loads KVP11_MODULE through dlopen + C_GetFunctionList, C_Initialize, finds the token TOKEN
 * and prints the CKA_LABEL of each certificate object on it, one per line, on stdout.
 * Exit status: 0 listed, 2 C_Initialize failed (rv on stderr), 3 token not present (no slot
 * with that label), 4 another PKCS#11 call failed. A crash shows as a signal.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "p11load.h"

int main(int argc, char **argv)
{
  if (argc != 2) {
    fprintf(stderr, "usage: %s TOKEN_LABEL\n", argv[0]);
    return 1;
  }
  void *dl;
  CK_FUNCTION_LIST_PTR p11 = kvps_load(getenv("KVP11_MODULE"), &dl);
  if (!p11)
    return 1;
  CK_C_INITIALIZE_ARGS ia = {NULL, NULL, NULL, NULL, CKF_OS_LOCKING_OK, NULL};
  CK_RV rv = p11->C_Initialize(&ia);
  if (rv != CKR_OK) {
    fprintf(stderr, "C_Initialize: rv 0x%lx\n", (unsigned long)rv);
    return 2;
  }
  int status = 0;
  CK_SLOT_ID slot;
  CK_SESSION_HANDLE h = CK_INVALID_HANDLE;
  if (kvps_find_slot(p11, argv[1], &slot) != 0) {
    fprintf(stderr, "token '%s' not present\n", argv[1]);
    status = 3;
    goto out;
  }
  rv = p11->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &h);
  CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
  CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof cls}};
  if (rv == CKR_OK)
    rv = p11->C_FindObjectsInit(h, t, 1);
  if (rv != CKR_OK) {
    fprintf(stderr, "C_OpenSession/C_FindObjectsInit: rv 0x%lx\n", (unsigned long)rv);
    status = 4;
    goto out;
  }
  for (;;) {
    CK_OBJECT_HANDLE o[16];
    CK_ULONG got = 0;
    rv = p11->C_FindObjects(h, o, 16, &got);
    if (rv != CKR_OK || got == 0)
      break;
    for (CK_ULONG i = 0; i < got; i++) {
      char label[256];
      CK_ATTRIBUTE a = {CKA_LABEL, label, sizeof label - 1};
      if (p11->C_GetAttributeValue(h, o[i], &a, 1) != CKR_OK) {
        fprintf(stderr, "C_GetAttributeValue(CKA_LABEL) failed\n");
        status = 4;
        continue;
      }
      label[a.ulValueLen] = '\0';
      printf("%s\n", label);
    }
  }
  if (rv != CKR_OK) {
    fprintf(stderr, "C_FindObjects: rv 0x%lx\n", (unsigned long)rv);
    status = 4;
  }
  p11->C_FindObjectsFinal(h);
out:
  if (h != CK_INVALID_HANDLE)
    p11->C_CloseSession(h);
  p11->C_Finalize(NULL);
  return status;
}
