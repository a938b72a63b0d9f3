/*
 * What every PKCS#11 entry point does around its work (entry_rv.c): clear the
 * thread's status, keep the caller's OpenSSL error queue as it was, and
 * return only codes PKCS#11 v2.40 allows for the function.
 */
#ifndef KVP_PKCS11_ENTRY_RV_H
#define KVP_PKCS11_ENTRY_RV_H

#include <stddef.h>

#include <p11-kit/pkcs11.h>

/* One per entry point (the four dual-function updates share FN_DualUpdate,
 * C_GetFunctionStatus and C_CancelFunction FN_FunctionStatus). */
typedef enum {
  FN_Initialize, FN_Finalize, FN_GetInfo, FN_GetSlotList, FN_GetSlotInfo, FN_GetTokenInfo,
  FN_GetMechanismList, FN_GetMechanismInfo, FN_InitToken, FN_InitPIN, FN_SetPIN, FN_OpenSession,
  FN_CloseSession, FN_CloseAllSessions, FN_GetSessionInfo, FN_GetOperationState,
  FN_SetOperationState, FN_Login, FN_Logout, FN_CreateObject, FN_CopyObject, FN_DestroyObject,
  FN_GetObjectSize, FN_GetAttributeValue, FN_SetAttributeValue, FN_FindObjectsInit,
  FN_FindObjects, FN_FindObjectsFinal, FN_EncryptInit, FN_Encrypt, FN_EncryptUpdate,
  FN_EncryptFinal, FN_DecryptInit, FN_Decrypt, FN_DecryptUpdate, FN_DecryptFinal, FN_DigestInit,
  FN_Digest, FN_DigestUpdate, FN_DigestKey, FN_DigestFinal, FN_SignInit, FN_Sign, FN_SignUpdate,
  FN_SignFinal, FN_SignRecoverInit, FN_SignRecover, FN_VerifyInit, FN_Verify, FN_VerifyUpdate,
  FN_VerifyFinal, FN_VerifyRecoverInit, FN_VerifyRecover, FN_DualUpdate, FN_GenerateKey,
  FN_GenerateKeyPair, FN_WrapKey, FN_UnwrapKey, FN_DeriveKey, FN_SeedRandom, FN_GenerateRandom,
  FN_FunctionStatus, FN_WaitForSlotEvent, FN_COUNT
} kvp_entry_fn;

/* The caller's OpenSSL errors, set aside during a call (OpenSSL keeps 16). */
#define KVP_ERRQ_MAX 16
typedef struct kvp_errq_entry {
  unsigned long code;
  char *file, *func; /* copies: NULL when OpenSSL had none */
  int line;
  char *data;
} kvp_errq_entry;
typedef struct kvp_errq {
  kvp_errq_entry e[KVP_ERRQ_MAX];
  size_t n;
} kvp_errq;

/* Start of an entry point: kvp_status_clear(); the thread's OpenSSL errors
 * are moved into q, so the call starts with an empty queue. */
void kvp_entry_begin(kvp_errq *q);
/* End of entry point fn: map rv to a code fn may return (recording the
 * original as the reason); drop the errors the call left and put q's back. */
CK_RV kvp_entry_end(kvp_errq *q, kvp_entry_fn fn, CK_RV rv);

#endif
