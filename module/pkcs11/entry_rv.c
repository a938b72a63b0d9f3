/*
 * Return codes allowed per entry point (PKCS#11 v2.40 chapter 5), and the
 * begin / end steps every entry point runs (see entry_rv.h, entry.c).
 *
 * A code the function may not return is mapped to the nearest allowed one:
 * a PIN failure (a key store whose configured PIN was refused) becomes
 * CKR_USER_NOT_LOGGED_IN where the function allows it, a PIN of the wrong
 * form at C_Login CKR_PIN_INCORRECT, data errors of a decryption
 * CKR_ENCRYPTED_DATA_*, CKR_KEY_SIZE_RANGE at key generation
 * CKR_ATTRIBUTE_VALUE_INVALID, anything else CKR_DEVICE_ERROR (or
 * CKR_FUNCTION_FAILED where even that is not allowed). The original code is
 * recorded as the reason with kvp_fail(), so the log and `kvp11 check` still
 * say what happened.
 */
#include "pkcs11/entry_rv.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>

#include "core/p11names.h"
#include "core/status.h"

/* Groups of codes. Every function may return CKR_OK, CKR_GENERAL_ERROR, CKR_HOST_MEMORY,
 * CKR_FUNCTION_FAILED and (as a stub) CKR_FUNCTION_NOT_SUPPORTED. */
enum {
  G_NI = 1 << 0,   /* CKR_CRYPTOKI_NOT_INITIALIZED */
  G_ARG = 1 << 1,  /* CKR_ARGUMENTS_BAD */
  G_DEV = 1 << 2,  /* CKR_DEVICE_ERROR, CKR_DEVICE_MEMORY, CKR_DEVICE_REMOVED */
  G_SESS = 1 << 3, /* CKR_SESSION_CLOSED, CKR_SESSION_HANDLE_INVALID */
  G_CAN = 1 << 4,  /* CKR_FUNCTION_CANCELED */
  G_TOK = 1 << 5,  /* CKR_SLOT_ID_INVALID, CKR_TOKEN_NOT_PRESENT, CKR_TOKEN_NOT_RECOGNIZED */
};
#define G_S (G_NI | G_ARG | G_DEV | G_SESS)
#define RV_END ((CK_RV)-1)
#define CODES(...) ((const CK_RV[]){__VA_ARGS__, RV_END})

/* The single-part and final calls of a cryptographic operation also answer
 * CKR_OPERATION_ACTIVE when single-part and multi-part steps are mixed (see
 * mech.c and docs/conformance.md). */
#define INIT_CODES                                                                                 \
  CODES(CKR_KEY_FUNCTION_NOT_PERMITTED, CKR_KEY_HANDLE_INVALID, CKR_KEY_SIZE_RANGE,                \
        CKR_KEY_TYPE_INCONSISTENT, CKR_MECHANISM_INVALID, CKR_MECHANISM_PARAM_INVALID,             \
        CKR_OPERATION_ACTIVE, CKR_PIN_EXPIRED, CKR_USER_NOT_LOGGED_IN)
#define DATA_CODES(...)                                                                            \
  CODES(CKR_BUFFER_TOO_SMALL, CKR_DATA_INVALID, CKR_DATA_LEN_RANGE, CKR_OPERATION_NOT_INITIALIZED, \
        CKR_USER_NOT_LOGGED_IN, __VA_ARGS__)
#define DEC_CODES                                                                                  \
  CODES(CKR_BUFFER_TOO_SMALL, CKR_ENCRYPTED_DATA_INVALID, CKR_ENCRYPTED_DATA_LEN_RANGE,            \
        CKR_OPERATION_NOT_INITIALIZED, CKR_USER_NOT_LOGGED_IN, CKR_OPERATION_ACTIVE)
/* C_Digest / C_DigestFinal, C_Verify / C_VerifyFinal */
#define DIGEST_OUT_CODES                                                                           \
  CODES(CKR_BUFFER_TOO_SMALL, CKR_OPERATION_NOT_INITIALIZED, CKR_OPERATION_ACTIVE)
#define VERIFY_OUT_CODES                                                                           \
  DATA_CODES(CKR_SIGNATURE_INVALID, CKR_SIGNATURE_LEN_RANGE, CKR_OPERATION_ACTIVE)
#define OBJ_CODES                                                                                  \
  CODES(CKR_ACTION_PROHIBITED, CKR_ATTRIBUTE_READ_ONLY, CKR_ATTRIBUTE_TYPE_INVALID,                \
        CKR_ATTRIBUTE_VALUE_INVALID, CKR_CURVE_NOT_SUPPORTED, CKR_DOMAIN_PARAMS_INVALID,           \
        CKR_OBJECT_HANDLE_INVALID, CKR_PIN_EXPIRED, CKR_SESSION_READ_ONLY,                         \
        CKR_TEMPLATE_INCOMPLETE, CKR_TEMPLATE_INCONSISTENT, CKR_TOKEN_WRITE_PROTECTED,             \
        CKR_USER_NOT_LOGGED_IN)
#define KEYGEN_CODES                                                                               \
  CODES(CKR_ATTRIBUTE_READ_ONLY, CKR_ATTRIBUTE_TYPE_INVALID, CKR_ATTRIBUTE_VALUE_INVALID,          \
        CKR_CURVE_NOT_SUPPORTED, CKR_DOMAIN_PARAMS_INVALID, CKR_MECHANISM_INVALID,                 \
        CKR_MECHANISM_PARAM_INVALID, CKR_OPERATION_ACTIVE, CKR_PIN_EXPIRED, CKR_SESSION_READ_ONLY, \
        CKR_TEMPLATE_INCOMPLETE, CKR_TEMPLATE_INCONSISTENT, CKR_TOKEN_WRITE_PROTECTED,             \
        CKR_USER_NOT_LOGGED_IN)

static const struct rv_rule {
  const char *name;
  unsigned groups;
  const CK_RV *codes;
} rv_rules[FN_COUNT] = {
    [FN_Initialize] = {"C_Initialize", G_ARG,
                       CODES(CKR_CANT_LOCK, CKR_CRYPTOKI_ALREADY_INITIALIZED,
                             CKR_NEED_TO_CREATE_THREADS)},
    [FN_Finalize] = {"C_Finalize", G_NI | G_ARG, CODES(RV_END)},
    [FN_GetInfo] = {"C_GetInfo", G_NI | G_ARG, CODES(RV_END)},
    [FN_GetSlotList] = {"C_GetSlotList", G_NI | G_ARG, CODES(CKR_BUFFER_TOO_SMALL)},
    [FN_GetSlotInfo] = {"C_GetSlotInfo", G_NI | G_ARG | G_TOK, CODES(CKR_DEVICE_ERROR)},
    [FN_GetTokenInfo] = {"C_GetTokenInfo", G_NI | G_ARG | G_DEV | G_TOK, CODES(RV_END)},
    [FN_GetMechanismList] = {"C_GetMechanismList", G_NI | G_ARG | G_DEV | G_TOK,
                             CODES(CKR_BUFFER_TOO_SMALL)},
    [FN_GetMechanismInfo] = {"C_GetMechanismInfo", G_NI | G_ARG | G_DEV | G_TOK,
                             CODES(CKR_MECHANISM_INVALID)},
    [FN_InitToken] = {"C_InitToken", G_NI | G_ARG | G_DEV | G_TOK | G_CAN,
                      CODES(CKR_PIN_INCORRECT, CKR_PIN_LOCKED, CKR_SESSION_EXISTS,
                            CKR_TOKEN_WRITE_PROTECTED)},
    [FN_InitPIN] = {"C_InitPIN", G_S | G_CAN,
                    CODES(CKR_PIN_INVALID, CKR_PIN_LEN_RANGE, CKR_SESSION_READ_ONLY,
                          CKR_TOKEN_WRITE_PROTECTED, CKR_USER_NOT_LOGGED_IN)},
    [FN_SetPIN] = {"C_SetPIN", G_S | G_CAN,
                   CODES(CKR_PIN_INCORRECT, CKR_PIN_INVALID, CKR_PIN_LEN_RANGE, CKR_PIN_LOCKED,
                         CKR_SESSION_READ_ONLY, CKR_TOKEN_WRITE_PROTECTED)},
    [FN_OpenSession] = {"C_OpenSession", G_NI | G_ARG | G_DEV | G_TOK,
                        CODES(CKR_SESSION_COUNT, CKR_SESSION_PARALLEL_NOT_SUPPORTED,
                              CKR_SESSION_READ_WRITE_SO_EXISTS, CKR_TOKEN_WRITE_PROTECTED)},
    [FN_CloseSession] = {"C_CloseSession", G_NI | G_DEV | G_SESS, CODES(RV_END)},
    [FN_CloseAllSessions] = {"C_CloseAllSessions", G_NI | G_DEV | G_TOK, CODES(RV_END)},
    [FN_GetSessionInfo] = {"C_GetSessionInfo", G_S, CODES(RV_END)},
    [FN_GetOperationState] = {"C_GetOperationState", G_S,
                              CODES(CKR_BUFFER_TOO_SMALL, CKR_OPERATION_NOT_INITIALIZED,
                                    CKR_STATE_UNSAVEABLE)},
    [FN_SetOperationState] = {"C_SetOperationState", G_S,
                              CODES(CKR_KEY_CHANGED, CKR_KEY_NEEDED, CKR_KEY_NOT_NEEDED,
                                    CKR_SAVED_STATE_INVALID)},
    [FN_Login] = {"C_Login", G_S | G_CAN,
                  CODES(CKR_OPERATION_NOT_INITIALIZED, CKR_PIN_INCORRECT, CKR_PIN_LOCKED,
                        CKR_SESSION_READ_ONLY_EXISTS, CKR_USER_ALREADY_LOGGED_IN,
                        CKR_USER_ANOTHER_ALREADY_LOGGED_IN, CKR_USER_PIN_NOT_INITIALIZED,
                        CKR_USER_TOO_MANY_TYPES, CKR_USER_TYPE_INVALID)},
    [FN_Logout] = {"C_Logout", G_NI | G_DEV | G_SESS, CODES(CKR_USER_NOT_LOGGED_IN)},
    [FN_CreateObject] = {"C_CreateObject", G_S, OBJ_CODES},
    [FN_CopyObject] = {"C_CopyObject", G_S, OBJ_CODES},
    [FN_DestroyObject] = {"C_DestroyObject", G_S, OBJ_CODES},
    [FN_GetObjectSize] = {"C_GetObjectSize", G_S,
                          CODES(CKR_INFORMATION_SENSITIVE, CKR_OBJECT_HANDLE_INVALID)},
    [FN_GetAttributeValue] = {"C_GetAttributeValue", G_S,
                              CODES(CKR_ATTRIBUTE_SENSITIVE, CKR_ATTRIBUTE_TYPE_INVALID,
                                    CKR_BUFFER_TOO_SMALL, CKR_OBJECT_HANDLE_INVALID)},
    [FN_SetAttributeValue] = {"C_SetAttributeValue", G_S, OBJ_CODES},
    [FN_FindObjectsInit] = {"C_FindObjectsInit", G_S,
                            CODES(CKR_ATTRIBUTE_TYPE_INVALID, CKR_ATTRIBUTE_VALUE_INVALID,
                                  CKR_OPERATION_ACTIVE, CKR_PIN_EXPIRED)},
    [FN_FindObjects] = {"C_FindObjects", G_S, CODES(CKR_OPERATION_NOT_INITIALIZED)},
    [FN_FindObjectsFinal] = {"C_FindObjectsFinal", G_S, CODES(CKR_OPERATION_NOT_INITIALIZED)},
    [FN_EncryptInit] = {"C_EncryptInit", G_S | G_CAN, INIT_CODES},
    [FN_Encrypt] = {"C_Encrypt", G_S | G_CAN, DATA_CODES(CKR_OPERATION_ACTIVE)},
    [FN_EncryptUpdate] = {"C_EncryptUpdate", G_S | G_CAN, DATA_CODES(RV_END)},
    [FN_EncryptFinal] = {"C_EncryptFinal", G_S | G_CAN, DATA_CODES(CKR_OPERATION_ACTIVE)},
    [FN_DecryptInit] = {"C_DecryptInit", G_S | G_CAN, INIT_CODES},
    [FN_Decrypt] = {"C_Decrypt", G_S | G_CAN, DEC_CODES},
    [FN_DecryptUpdate] = {"C_DecryptUpdate", G_S | G_CAN, DEC_CODES},
    [FN_DecryptFinal] = {"C_DecryptFinal", G_S | G_CAN, DEC_CODES},
    [FN_DigestInit] = {"C_DigestInit", G_S | G_CAN, INIT_CODES},
    [FN_Digest] = {"C_Digest", G_S | G_CAN, DIGEST_OUT_CODES},
    [FN_DigestUpdate] = {"C_DigestUpdate", G_S | G_CAN, CODES(CKR_OPERATION_NOT_INITIALIZED)},
    [FN_DigestKey] = {"C_DigestKey", G_S | G_CAN,
                      CODES(CKR_KEY_HANDLE_INVALID, CKR_KEY_INDIGESTIBLE, CKR_KEY_SIZE_RANGE,
                            CKR_OPERATION_NOT_INITIALIZED)},
    [FN_DigestFinal] = {"C_DigestFinal", G_S | G_CAN, DIGEST_OUT_CODES},
    [FN_SignInit] = {"C_SignInit", G_S | G_CAN, INIT_CODES},
    [FN_Sign] = {"C_Sign", G_S | G_CAN, DATA_CODES(CKR_FUNCTION_REJECTED, CKR_OPERATION_ACTIVE)},
    [FN_SignUpdate] = {"C_SignUpdate", G_S | G_CAN, DATA_CODES(RV_END)},
    [FN_SignFinal] = {"C_SignFinal", G_S | G_CAN,
                      DATA_CODES(CKR_FUNCTION_REJECTED, CKR_OPERATION_ACTIVE)},
    [FN_SignRecoverInit] = {"C_SignRecoverInit", G_S | G_CAN, INIT_CODES},
    [FN_SignRecover] = {"C_SignRecover", G_S | G_CAN, DATA_CODES(RV_END)},
    [FN_VerifyInit] = {"C_VerifyInit", G_S | G_CAN, INIT_CODES},
    [FN_Verify] = {"C_Verify", G_S | G_CAN, VERIFY_OUT_CODES},
    [FN_VerifyUpdate] = {"C_VerifyUpdate", G_S | G_CAN, DATA_CODES(RV_END)},
    [FN_VerifyFinal] = {"C_VerifyFinal", G_S | G_CAN, VERIFY_OUT_CODES},
    [FN_VerifyRecoverInit] = {"C_VerifyRecoverInit", G_S | G_CAN, INIT_CODES},
    [FN_VerifyRecover] = {"C_VerifyRecover", G_S | G_CAN,
                          DATA_CODES(CKR_SIGNATURE_INVALID, CKR_SIGNATURE_LEN_RANGE)},
    [FN_DualUpdate] = {"C_*Update (dual)", G_S | G_CAN,
                       DATA_CODES(CKR_ENCRYPTED_DATA_INVALID, CKR_ENCRYPTED_DATA_LEN_RANGE)},
    [FN_GenerateKey] = {"C_GenerateKey", G_S | G_CAN, KEYGEN_CODES},
    [FN_GenerateKeyPair] = {"C_GenerateKeyPair", G_S | G_CAN, KEYGEN_CODES},
    [FN_WrapKey] = {"C_WrapKey", G_S | G_CAN,
                    CODES(CKR_BUFFER_TOO_SMALL, CKR_KEY_HANDLE_INVALID, CKR_KEY_NOT_WRAPPABLE,
                          CKR_KEY_SIZE_RANGE, CKR_KEY_UNEXTRACTABLE, CKR_MECHANISM_INVALID,
                          CKR_MECHANISM_PARAM_INVALID, CKR_OPERATION_ACTIVE, CKR_PIN_EXPIRED,
                          CKR_USER_NOT_LOGGED_IN, CKR_WRAPPING_KEY_HANDLE_INVALID,
                          CKR_WRAPPING_KEY_SIZE_RANGE, CKR_WRAPPING_KEY_TYPE_INCONSISTENT)},
    [FN_UnwrapKey] = {"C_UnwrapKey", G_S | G_CAN, KEYGEN_CODES},
    [FN_DeriveKey] = {"C_DeriveKey", G_S | G_CAN, KEYGEN_CODES},
    [FN_SeedRandom] = {"C_SeedRandom", G_S | G_CAN,
                       CODES(CKR_OPERATION_ACTIVE, CKR_RANDOM_SEED_NOT_SUPPORTED,
                             CKR_RANDOM_NO_RNG, CKR_USER_NOT_LOGGED_IN)},
    [FN_GenerateRandom] = {"C_GenerateRandom", G_S | G_CAN,
                           CODES(CKR_OPERATION_ACTIVE, CKR_RANDOM_NO_RNG,
                                 CKR_USER_NOT_LOGGED_IN)},
    [FN_FunctionStatus] = {"C_GetFunctionStatus", G_NI | G_SESS,
                           CODES(CKR_FUNCTION_NOT_PARALLEL)},
    [FN_WaitForSlotEvent] = {"C_WaitForSlotEvent", G_NI | G_ARG, CODES(CKR_NO_EVENT)},
};

static int group_has(unsigned groups, CK_RV rv)
{
  switch (rv) {
  case CKR_OK:
  case CKR_GENERAL_ERROR:
  case CKR_HOST_MEMORY:
  case CKR_FUNCTION_FAILED:
  case CKR_FUNCTION_NOT_SUPPORTED: return 1;
  case CKR_CRYPTOKI_NOT_INITIALIZED: return (groups & G_NI) != 0;
  case CKR_ARGUMENTS_BAD: return (groups & G_ARG) != 0;
  case CKR_DEVICE_ERROR:
  case CKR_DEVICE_MEMORY:
  case CKR_DEVICE_REMOVED: return (groups & G_DEV) != 0;
  case CKR_SESSION_CLOSED:
  case CKR_SESSION_HANDLE_INVALID: return (groups & G_SESS) != 0;
  case CKR_FUNCTION_CANCELED: return (groups & G_CAN) != 0;
  case CKR_SLOT_ID_INVALID:
  case CKR_TOKEN_NOT_PRESENT:
  case CKR_TOKEN_NOT_RECOGNIZED: return (groups & G_TOK) != 0;
  default: return 0;
  }
}

static int rv_allowed(kvp_entry_fn fn, CK_RV rv)
{
  const struct rv_rule *r = &rv_rules[fn];
  if (group_has(r->groups, rv))
    return 1;
  for (const CK_RV *c = r->codes; *c != RV_END; c++)
    if (*c == rv)
      return 1;
  return 0;
}

static int is_pin_rv(CK_RV rv)
{
  return rv == CKR_PIN_INCORRECT || rv == CKR_PIN_INVALID || rv == CKR_PIN_LEN_RANGE ||
         rv == CKR_PIN_EXPIRED || rv == CKR_PIN_LOCKED || rv == CKR_USER_PIN_NOT_INITIALIZED;
}

/*
 * The code fn returns for rv: rv itself when PKCS#11 allows it for fn, else
 * the nearest allowed one, with the original recorded as the reason (a reason
 * recorded already, e.g. the backend's own, stays first).
 */
static CK_RV allowed_rv(kvp_entry_fn fn, CK_RV rv)
{
  CK_RV to;

  if (rv_allowed(fn, rv))
    return rv;
  if ((rv == CKR_PIN_INVALID || rv == CKR_PIN_LEN_RANGE) && rv_allowed(fn, CKR_PIN_INCORRECT))
    to = CKR_PIN_INCORRECT; /* C_Login: a PIN of the wrong form is a wrong PIN */
  else if (is_pin_rv(rv) && rv_allowed(fn, CKR_USER_NOT_LOGGED_IN))
    to = CKR_USER_NOT_LOGGED_IN;
  else if ((rv == CKR_DATA_INVALID || rv == CKR_DATA_LEN_RANGE) &&
           rv_allowed(fn, CKR_ENCRYPTED_DATA_INVALID))
    to = rv == CKR_DATA_INVALID ? CKR_ENCRYPTED_DATA_INVALID : CKR_ENCRYPTED_DATA_LEN_RANGE;
  else if (rv == CKR_KEY_SIZE_RANGE && rv_allowed(fn, CKR_ATTRIBUTE_VALUE_INVALID))
    to = CKR_ATTRIBUTE_VALUE_INVALID;
  else if (rv_allowed(fn, CKR_DEVICE_ERROR))
    to = CKR_DEVICE_ERROR;
  else
    to = CKR_FUNCTION_FAILED;
  (void)kvp_fail(to, "%s: %s is not one of its return values (PKCS#11 2.40); returned as %s",
                 rv_rules[fn].name, kvp_ckr_name(rv), kvp_ckr_name(to));
  return to;
}

/*
 * The caller's OpenSSL errors are set aside for the call and put back after
 * it. A mark (ERR_set_mark / ERR_pop_to_mark) alone is not enough: an HSM
 * module may clear the queue itself (SoftHSM2 does on a padding error), which
 * would take the caller's errors and the mark with it. Errors keep their
 * library, reason, file, line, function and text; a mark the caller had set
 * on them is not kept (OpenSSL has no way to read it).
 */
static void errq_entry_free(kvp_errq_entry *x)
{
  free(x->file);
  free(x->func);
  free(x->data);
}

static void errq_save(kvp_errq *q)
{
  const char *file, *func, *data;
  int line, flags;
  unsigned long e;

  q->n = 0;
  while ((e = ERR_get_error_all(&file, &line, &func, &data, &flags)) != 0) {
    kvp_errq_entry *x;
    if (q->n == KVP_ERRQ_MAX) {
      /* more than the queue can hold: the oldest are dropped, as OpenSSL does */
      errq_entry_free(&q->e[0]);
      memmove(&q->e[0], &q->e[1], (KVP_ERRQ_MAX - 1) * sizeof(q->e[0]));
      q->n--;
    }
    /* file, func and data belong to the popped record: copied */
    x = &q->e[q->n++];
    x->code = e;
    x->file = file != NULL ? strdup(file) : NULL;
    x->line = line;
    x->func = func != NULL ? strdup(func) : NULL;
    x->data = (flags & ERR_TXT_STRING) && data != NULL ? strdup(data) : NULL;
  }
}

static void errq_restore(kvp_errq *q)
{
  ERR_clear_error(); /* whatever the module and the key stores left */
  for (size_t i = 0; i < q->n; i++) {
    kvp_errq_entry *x = &q->e[i];
    ERR_new();
    ERR_set_debug(x->file, x->line, x->func);
    if (x->data != NULL)
      ERR_set_error(ERR_GET_LIB(x->code), ERR_GET_REASON(x->code), "%s", x->data);
    else
      ERR_set_error(ERR_GET_LIB(x->code), ERR_GET_REASON(x->code), NULL);
    errq_entry_free(x);
  }
  q->n = 0;
}

void kvp_entry_begin(kvp_errq *q)
{
  kvp_status_clear();
  errq_save(q);
}

CK_RV kvp_entry_end(kvp_errq *q, kvp_entry_fn fn, CK_RV rv)
{
  rv = allowed_rv(fn, rv);
  errq_restore(q);
  return rv;
}
