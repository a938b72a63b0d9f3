/*
 * kvp11 conformance suite: every call into the module through a function list that checks the
 * calling thread's OpenSSL error queue (issue 10 item 8).
 *
 * Before each call the queue holds exactly one marker error; after it, the queue must still hold
 * exactly that marker: a module that leaves errors behind (an HSM module loading OpenSSL engines,
 * libcurl's TLS, the module's own OpenSSL use) or clears errors it did not make is caught, on
 * every C_* call of every suite, on whichever backend the suite runs against. Violations are
 * counted (threads call too, so no CUnit assertion here) and main() fails the run on any.
 */
#include "common.h"

#include <stdatomic.h>
#include <stdio.h>

#include <openssl/err.h>

#define MARK_REASON 0x7a7

static CK_FUNCTION_LIST_PTR real;
static CK_FUNCTION_LIST checked;
static atomic_ulong violations;

static void mark(void)
{
  ERR_clear_error();
  ERR_raise(ERR_LIB_USER, MARK_REASON);
}

static void check(const char *fn)
{
  unsigned long first = ERR_get_error();
  unsigned long extra = ERR_get_error();
  int ok = first != 0 && ERR_GET_LIB(first) == ERR_LIB_USER &&
           ERR_GET_REASON(first) == MARK_REASON && extra == 0;

  if (!ok) {
    unsigned long n = atomic_fetch_add(&violations, 1);
    if (n < 20) {
      char buf[256];
      ERR_error_string_n(first == 0 || ERR_GET_REASON(first) == MARK_REASON ? extra : first, buf,
                         sizeof buf);
      fprintf(stderr, "OpenSSL error queue changed by %s: %s\n", fn,
                      first == 0 ? "the caller's error was cleared" : buf);
    }
  }
  ERR_clear_error();
}

unsigned long kvpt_errqueue_violations(void)
{
  return atomic_load(&violations);
}

#define W(name, params, args)                                                                      \
  static CK_RV w_##name params                                                                     \
  {                                                                                                \
    mark();                                                                                        \
    CK_RV rv = real->name args;                                                                    \
    check(#name);                                                                                  \
    return rv;                                                                                     \
  }

typedef CK_SESSION_HANDLE SH;
typedef CK_OBJECT_HANDLE OH;
typedef CK_BYTE_PTR BP;
typedef CK_ULONG UL;
typedef CK_ULONG_PTR ULP;
typedef CK_MECHANISM_PTR MP;
typedef CK_ATTRIBUTE_PTR AP;

W(C_Initialize, (CK_VOID_PTR a), (a))
W(C_Finalize, (CK_VOID_PTR a), (a))
W(C_GetInfo, (CK_INFO_PTR a), (a))
W(C_GetSlotList, (CK_BBOOL a, CK_SLOT_ID_PTR b, ULP c), (a, b, c))
W(C_GetSlotInfo, (CK_SLOT_ID a, CK_SLOT_INFO_PTR b), (a, b))
W(C_GetTokenInfo, (CK_SLOT_ID a, CK_TOKEN_INFO_PTR b), (a, b))
W(C_GetMechanismList, (CK_SLOT_ID a, CK_MECHANISM_TYPE_PTR b, ULP c), (a, b, c))
W(C_GetMechanismInfo, (CK_SLOT_ID a, CK_MECHANISM_TYPE b, CK_MECHANISM_INFO_PTR c), (a, b, c))
W(C_InitToken, (CK_SLOT_ID a, CK_UTF8CHAR_PTR b, UL c, CK_UTF8CHAR_PTR d), (a, b, c, d))
W(C_InitPIN, (SH a, CK_UTF8CHAR_PTR b, UL c), (a, b, c))
W(C_SetPIN, (SH a, CK_UTF8CHAR_PTR b, UL c, CK_UTF8CHAR_PTR d, UL e), (a, b, c, d, e))
W(C_OpenSession, (CK_SLOT_ID a, CK_FLAGS b, CK_VOID_PTR c, CK_NOTIFY d, CK_SESSION_HANDLE_PTR e),
  (a, b, c, d, e))
W(C_CloseSession, (SH a), (a))
W(C_CloseAllSessions, (CK_SLOT_ID a), (a))
W(C_GetSessionInfo, (SH a, CK_SESSION_INFO_PTR b), (a, b))
W(C_GetOperationState, (SH a, BP b, ULP c), (a, b, c))
W(C_SetOperationState, (SH a, BP b, UL c, OH d, OH e), (a, b, c, d, e))
W(C_Login, (SH a, CK_USER_TYPE b, CK_UTF8CHAR_PTR c, UL d), (a, b, c, d))
W(C_Logout, (SH a), (a))
W(C_CreateObject, (SH a, AP b, UL c, CK_OBJECT_HANDLE_PTR d), (a, b, c, d))
W(C_CopyObject, (SH a, OH b, AP c, UL d, CK_OBJECT_HANDLE_PTR e), (a, b, c, d, e))
W(C_DestroyObject, (SH a, OH b), (a, b))
W(C_GetObjectSize, (SH a, OH b, ULP c), (a, b, c))
W(C_GetAttributeValue, (SH a, OH b, AP c, UL d), (a, b, c, d))
W(C_SetAttributeValue, (SH a, OH b, AP c, UL d), (a, b, c, d))
W(C_FindObjectsInit, (SH a, AP b, UL c), (a, b, c))
W(C_FindObjects, (SH a, CK_OBJECT_HANDLE_PTR b, UL c, ULP d), (a, b, c, d))
W(C_FindObjectsFinal, (SH a), (a))
W(C_EncryptInit, (SH a, MP b, OH c), (a, b, c))
W(C_Encrypt, (SH a, BP b, UL c, BP d, ULP e), (a, b, c, d, e))
W(C_EncryptUpdate, (SH a, BP b, UL c, BP d, ULP e), (a, b, c, d, e))
W(C_EncryptFinal, (SH a, BP b, ULP c), (a, b, c))
W(C_DecryptInit, (SH a, MP b, OH c), (a, b, c))
W(C_Decrypt, (SH a, BP b, UL c, BP d, ULP e), (a, b, c, d, e))
W(C_DecryptUpdate, (SH a, BP b, UL c, BP d, ULP e), (a, b, c, d, e))
W(C_DecryptFinal, (SH a, BP b, ULP c), (a, b, c))
W(C_DigestInit, (SH a, MP b), (a, b))
W(C_Digest, (SH a, BP b, UL c, BP d, ULP e), (a, b, c, d, e))
W(C_DigestUpdate, (SH a, BP b, UL c), (a, b, c))
W(C_DigestKey, (SH a, OH b), (a, b))
W(C_DigestFinal, (SH a, BP b, ULP c), (a, b, c))
W(C_SignInit, (SH a, MP b, OH c), (a, b, c))
W(C_Sign, (SH a, BP b, UL c, BP d, ULP e), (a, b, c, d, e))
W(C_SignUpdate, (SH a, BP b, UL c), (a, b, c))
W(C_SignFinal, (SH a, BP b, ULP c), (a, b, c))
W(C_SignRecoverInit, (SH a, MP b, OH c), (a, b, c))
W(C_SignRecover, (SH a, BP b, UL c, BP d, ULP e), (a, b, c, d, e))
W(C_VerifyInit, (SH a, MP b, OH c), (a, b, c))
W(C_Verify, (SH a, BP b, UL c, BP d, UL e), (a, b, c, d, e))
W(C_VerifyUpdate, (SH a, BP b, UL c), (a, b, c))
W(C_VerifyFinal, (SH a, BP b, UL c), (a, b, c))
W(C_VerifyRecoverInit, (SH a, MP b, OH c), (a, b, c))
W(C_VerifyRecover, (SH a, BP b, UL c, BP d, ULP e), (a, b, c, d, e))
W(C_DigestEncryptUpdate, (SH a, BP b, UL c, BP d, ULP e), (a, b, c, d, e))
W(C_DecryptDigestUpdate, (SH a, BP b, UL c, BP d, ULP e), (a, b, c, d, e))
W(C_SignEncryptUpdate, (SH a, BP b, UL c, BP d, ULP e), (a, b, c, d, e))
W(C_DecryptVerifyUpdate, (SH a, BP b, UL c, BP d, ULP e), (a, b, c, d, e))
W(C_GenerateKey, (SH a, MP b, AP c, UL d, CK_OBJECT_HANDLE_PTR e), (a, b, c, d, e))
W(C_GenerateKeyPair,
  (SH a, MP b, AP c, UL d, AP e, UL f, CK_OBJECT_HANDLE_PTR g, CK_OBJECT_HANDLE_PTR h),
  (a, b, c, d, e, f, g, h))
W(C_WrapKey, (SH a, MP b, OH c, OH d, BP e, ULP f), (a, b, c, d, e, f))
W(C_UnwrapKey, (SH a, MP b, OH c, BP d, UL e, AP f, UL g, CK_OBJECT_HANDLE_PTR h),
  (a, b, c, d, e, f, g, h))
W(C_DeriveKey, (SH a, MP b, OH c, AP d, UL e, CK_OBJECT_HANDLE_PTR f), (a, b, c, d, e, f))
W(C_SeedRandom, (SH a, BP b, UL c), (a, b, c))
W(C_GenerateRandom, (SH a, BP b, UL c), (a, b, c))
W(C_GetFunctionStatus, (SH a), (a))
W(C_CancelFunction, (SH a), (a))
W(C_WaitForSlotEvent, (CK_FLAGS a, CK_SLOT_ID_PTR b, CK_VOID_PTR c), (a, b, c))

static CK_RV w_C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR out)
{
  if (out == NULL)
    return CKR_ARGUMENTS_BAD;
  *out = &checked;
  return CKR_OK;
}

CK_FUNCTION_LIST_PTR kvpt_errqueue_wrap(CK_FUNCTION_LIST_PTR module)
{
  real = module;
  checked = (CK_FUNCTION_LIST){
      module->version,         w_C_Initialize,          w_C_Finalize,
      w_C_GetInfo,             w_C_GetFunctionList,     w_C_GetSlotList,
      w_C_GetSlotInfo,         w_C_GetTokenInfo,        w_C_GetMechanismList,
      w_C_GetMechanismInfo,    w_C_InitToken,           w_C_InitPIN,
      w_C_SetPIN,              w_C_OpenSession,         w_C_CloseSession,
      w_C_CloseAllSessions,    w_C_GetSessionInfo,      w_C_GetOperationState,
      w_C_SetOperationState,   w_C_Login,               w_C_Logout,
      w_C_CreateObject,        w_C_CopyObject,          w_C_DestroyObject,
      w_C_GetObjectSize,       w_C_GetAttributeValue,   w_C_SetAttributeValue,
      w_C_FindObjectsInit,     w_C_FindObjects,         w_C_FindObjectsFinal,
      w_C_EncryptInit,         w_C_Encrypt,             w_C_EncryptUpdate,
      w_C_EncryptFinal,        w_C_DecryptInit,         w_C_Decrypt,
      w_C_DecryptUpdate,       w_C_DecryptFinal,        w_C_DigestInit,
      w_C_Digest,              w_C_DigestUpdate,        w_C_DigestKey,
      w_C_DigestFinal,         w_C_SignInit,            w_C_Sign,
      w_C_SignUpdate,          w_C_SignFinal,           w_C_SignRecoverInit,
      w_C_SignRecover,         w_C_VerifyInit,          w_C_Verify,
      w_C_VerifyUpdate,        w_C_VerifyFinal,         w_C_VerifyRecoverInit,
      w_C_VerifyRecover,       w_C_DigestEncryptUpdate, w_C_DecryptDigestUpdate,
      w_C_SignEncryptUpdate,   w_C_DecryptVerifyUpdate, w_C_GenerateKey,
      w_C_GenerateKeyPair,     w_C_WrapKey,             w_C_UnwrapKey,
      w_C_DeriveKey,           w_C_SeedRandom,          w_C_GenerateRandom,
      w_C_GetFunctionStatus,   w_C_CancelFunction,      w_C_WaitForSlotEvent,
  };
  return &checked;
}
