/*
 * The PKCS#11 entry points. Each one checks its arguments and the library
 * state, takes the lock it needs, calls one function of state.c, object.c,
 * login.c or mech.c, and returns the CK_RV. Only C_GetFunctionList,
 * C_GetInterfaceList and C_GetInterface are exported (kvp11.map); the others
 * are reached through the function list.
 *
 * Every entry point runs between kvp_entry_begin() and kvp_entry_end():
 *  - the thread's status (core/status.h) is cleared first, so a reason
 *    recorded belongs to this call;
 *  - the calling thread's OpenSSL error queue is left as it was found: the
 *    caller's errors are set aside, the module's own OpenSSL use and every
 *    backend call (an HSM module that loads OpenSSL engines or clears the
 *    queue, libcurl's TLS) run with an empty queue, and what they leave is
 *    dropped before the caller's errors are put back (entry_rv.c).
 *    Applications such as nginx read that queue after an unrelated call and
 *    would take our leftovers for theirs;
 *  - the CK_RV is one that PKCS#11 v2.40 allows for the function (rv_rules):
 *    a code the function may not return (a key store's CKR_PIN_INCORRECT from
 *    C_SignInit) becomes an allowed one (CKR_USER_NOT_LOGGED_IN, else
 *    CKR_DEVICE_ERROR) and the original is recorded as the reason
 *    (entry_rv.c).
 */
#include <limits.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/rand.h>

#include "core/log.h"
#include "core/p11names.h"
#include "core/status.h"
#include "kvp11/kvp11.h"
#include "pkcs11/entry_rv.h"
#include "pkcs11/internal.h"
#include "pkcs11/login.h"

static CK_FUNCTION_LIST kvp_function_list;

static void pad_copy(CK_UTF8CHAR *dst, size_t dst_len, const char *src)
{
  size_t n = strlen(src);
  memset(dst, ' ', dst_len);
  memcpy(dst, src, n < dst_len ? n : dst_len);
}

/* ENTRY(FN_x, expr): run expr as entry point FN_x and return its mapped CK_RV. */
#define ENTRY(fn, expr)                                                                            \
  do {                                                                                             \
    kvp_errq q_;                                                                                   \
    kvp_entry_begin(&q_);                                                                          \
    return kvp_entry_end(&q_, (fn), (expr));                                                       \
  } while (0)

/*
 * Entry points that act on a slot: check the library state and the
 * arguments (bad_args), optionally re-read the registry, look the slot up
 * under the table's read lock and call fn with it.
 */
typedef CK_RV (*slot_fn)(kvp_slot *slot, void *arg);

static CK_RV with_slot(CK_SLOT_ID id, int bad_args, int refresh, slot_fn fn, void *arg)
{
  CK_RV rv = kvp_check_initialized();
  kvp_slot *slot;

  if (rv != CKR_OK)
    return rv;
  if (bad_args)
    return CKR_ARGUMENTS_BAD;
  if (refresh)
    (void)kvp_refresh();
  pthread_rwlock_rdlock(&kvp_g.lock);
  slot = kvp_slot_locked(id);
  rv = slot == NULL ? CKR_SLOT_ID_INVALID : fn(slot, arg);
  pthread_rwlock_unlock(&kvp_g.lock);
  return rv;
}

/* Entry points without a slot or session: the library must be initialized. */
static CK_RV initialized_and(int bad_args)
{
  CK_RV rv = kvp_check_initialized();
  return rv != CKR_OK ? rv : bad_args ? CKR_ARGUMENTS_BAD : CKR_OK;
}

/* ---- general --------------------------------------------------------- */

/*
 * A child of a process that used the module has the parent's registry
 * handle: its SQLite connection stays the parent's (closing it here could
 * checkpoint or unlock under the parent), so it is abandoned, not closed,
 * before C_Initialize drops the rest of the parent's state.
 */
static void abandon_parent_registry(void)
{
  pthread_mutex_lock(&kvp_g.init_lock);
  if (kvp_g.initialized && atomic_load(&kvp_g.forked) && kvp_g.reg != NULL) {
    kvp_registry_abandon(kvp_g.reg);
    kvp_g.reg = NULL;
  }
  pthread_mutex_unlock(&kvp_g.init_lock);
}

static CK_RV initialize(CK_VOID_PTR args)
{
  abandon_parent_registry();
  return kvp_initialize(args);
}

CK_RV C_Initialize(CK_VOID_PTR pInitArgs)
{
  ENTRY(FN_Initialize, initialize(pInitArgs));
}

CK_RV C_Finalize(CK_VOID_PTR pReserved)
{
  ENTRY(FN_Finalize, pReserved != NULL ? CKR_ARGUMENTS_BAD : kvp_finalize());
}

static CK_RV get_info(CK_INFO_PTR pInfo)
{
  CK_RV rv = initialized_and(pInfo == NULL);
  if (rv != CKR_OK)
    return rv;
  memset(pInfo, 0, sizeof(*pInfo));
  pInfo->cryptokiVersion.major = 2;
  pInfo->cryptokiVersion.minor = 40;
  pad_copy(pInfo->manufacturerID, sizeof(pInfo->manufacturerID), KVP11_MANUFACTURER);
  pad_copy(pInfo->libraryDescription, sizeof(pInfo->libraryDescription),
           KVP11_LIBRARY_DESCRIPTION);
  pInfo->libraryVersion.major = KVP11_VERSION_MAJOR;
  pInfo->libraryVersion.minor = KVP11_VERSION_MINOR;
  return CKR_OK;
}

CK_RV C_GetInfo(CK_INFO_PTR pInfo)
{
  ENTRY(FN_GetInfo, get_info(pInfo));
}

KVP_EXPORT CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR ppFunctionList)
{
  if (ppFunctionList == NULL)
    return CKR_ARGUMENTS_BAD;
  *ppFunctionList = &kvp_function_list;
  return CKR_OK;
}

/*
 * PKCS#11 3.0 interface discovery, declared here because the 2.40 header
 * does not have it. kvp11 offers one interface: "PKCS 11" at version 2.40.
 */
typedef struct kvp_ck_interface {
  CK_UTF8CHAR *pInterfaceName;
  CK_VOID_PTR pFunctionList;
  CK_FLAGS flags;
} kvp_ck_interface;

static kvp_ck_interface kvp_interface = {(CK_UTF8CHAR *)"PKCS 11", &kvp_function_list, 0};

KVP_EXPORT CK_RV C_GetInterfaceList(kvp_ck_interface *pInterfacesList, CK_ULONG_PTR pulCount);
KVP_EXPORT CK_RV C_GetInterface(CK_UTF8CHAR_PTR pInterfaceName, CK_VERSION_PTR pVersion,
                                kvp_ck_interface **ppInterface, CK_FLAGS flags);

KVP_EXPORT CK_RV C_GetInterfaceList(kvp_ck_interface *pInterfacesList, CK_ULONG_PTR pulCount)
{
  if (pulCount == NULL)
    return CKR_ARGUMENTS_BAD;
  if (pInterfacesList == NULL) {
    *pulCount = 1;
    return CKR_OK;
  }
  if (*pulCount < 1) {
    *pulCount = 1;
    return CKR_BUFFER_TOO_SMALL;
  }
  pInterfacesList[0] = kvp_interface;
  *pulCount = 1;
  return CKR_OK;
}

KVP_EXPORT CK_RV C_GetInterface(CK_UTF8CHAR_PTR pInterfaceName, CK_VERSION_PTR pVersion,
                                kvp_ck_interface **ppInterface, CK_FLAGS flags)
{
  if (ppInterface == NULL)
    return CKR_ARGUMENTS_BAD;
  if ((pInterfaceName != NULL && strcmp((const char *)pInterfaceName, "PKCS 11") != 0) ||
      (pVersion != NULL && (pVersion->major != 2 || pVersion->minor != 40)) || flags != 0)
    return CKR_ARGUMENTS_BAD;
  *ppInterface = &kvp_interface;
  return CKR_OK;
}

/* ---- slots and tokens ------------------------------------------------ */

static CK_RV slot_list(CK_SLOT_ID_PTR pSlotList, CK_ULONG_PTR pulCount)
{
  CK_RV rv = initialized_and(pulCount == NULL);
  if (rv != CKR_OK)
    return rv;
  (void)kvp_refresh();
  pthread_rwlock_rdlock(&kvp_g.lock);
  if (pSlotList != NULL && *pulCount < kvp_g.n_slots)
    rv = CKR_BUFFER_TOO_SMALL;
  else if (pSlotList != NULL)
    for (size_t i = 0; i < kvp_g.n_slots; i++)
      pSlotList[i] = kvp_g.slots[i].id;
  *pulCount = kvp_g.n_slots;
  pthread_rwlock_unlock(&kvp_g.lock);
  return rv;
}

CK_RV C_GetSlotList(CK_BBOOL tokenPresent, CK_SLOT_ID_PTR pSlotList, CK_ULONG_PTR pulCount)
{
  (void)tokenPresent; /* every slot has its token */
  ENTRY(FN_GetSlotList, slot_list(pSlotList, pulCount));
}

static CK_RV slot_info(kvp_slot *slot, void *arg)
{
  CK_SLOT_INFO_PTR pInfo = arg;
  char desc[64];

  snprintf(desc, sizeof(desc), "kvp11 account %s", slot->account->name);
  memset(pInfo, 0, sizeof(*pInfo));
  pad_copy(pInfo->slotDescription, sizeof(pInfo->slotDescription), desc);
  pad_copy(pInfo->manufacturerID, sizeof(pInfo->manufacturerID), KVP11_MANUFACTURER);
  pInfo->flags = CKF_TOKEN_PRESENT;
  pInfo->hardwareVersion.major = KVP11_VERSION_MAJOR;
  pInfo->hardwareVersion.minor = KVP11_VERSION_MINOR;
  pInfo->firmwareVersion = pInfo->hardwareVersion;
  return CKR_OK;
}

CK_RV C_GetSlotInfo(CK_SLOT_ID slotID, CK_SLOT_INFO_PTR pInfo)
{
  ENTRY(FN_GetSlotInfo, with_slot(slotID, pInfo == NULL, 0, slot_info, pInfo));
}

typedef struct token_args {
  CK_TOKEN_INFO_PTR info;
  int login_required;
} token_args;

static CK_RV token_info(kvp_slot *slot, void *arg)
{
  token_args *a = arg;
  CK_TOKEN_INFO_PTR pInfo = a->info;
  char serial[17];
  size_t sessions = 0, rw = 0;

  for (size_t j = 0; j < kvp_g.sess_cap; j++) {
    kvp_session *s = kvp_g.sessions[j];
    if (s != NULL && s != (kvp_session *)&kvp_g && s->slot == slot->id) {
      sessions++;
      rw += (s->flags & CKF_RW_SESSION) != 0;
    }
  }
  memset(pInfo, 0, sizeof(*pInfo));
  memcpy(pInfo->label, slot->label, 32);
  pad_copy(pInfo->manufacturerID, sizeof(pInfo->manufacturerID), KVP11_MANUFACTURER);
  pad_copy(pInfo->model, sizeof(pInfo->model), KVP11_MODEL);
  snprintf(serial, sizeof(serial), "%016lx", (unsigned long)slot->id);
  pad_copy(pInfo->serialNumber, sizeof(pInfo->serialNumber), serial);
  pInfo->flags = CKF_TOKEN_INITIALIZED | CKF_USER_PIN_INITIALIZED | CKF_RNG |
                 (kvp_registry_writable() ? 0 : CKF_WRITE_PROTECTED) |
                 (a->login_required ? CKF_LOGIN_REQUIRED : 0);
  pInfo->ulMaxSessionCount = CK_EFFECTIVELY_INFINITE;
  pInfo->ulSessionCount = sessions;
  pInfo->ulMaxRwSessionCount = CK_EFFECTIVELY_INFINITE;
  pInfo->ulRwSessionCount = rw;
  pInfo->ulMaxPinLen = 256;
  pInfo->ulMinPinLen = 0;
  pInfo->ulTotalPublicMemory = CK_UNAVAILABLE_INFORMATION;
  pInfo->ulFreePublicMemory = CK_UNAVAILABLE_INFORMATION;
  pInfo->ulTotalPrivateMemory = CK_UNAVAILABLE_INFORMATION;
  pInfo->ulFreePrivateMemory = CK_UNAVAILABLE_INFORMATION;
  pInfo->hardwareVersion.major = KVP11_VERSION_MAJOR;
  pInfo->hardwareVersion.minor = KVP11_VERSION_MINOR;
  pInfo->firmwareVersion = pInfo->hardwareVersion;
  return CKR_OK;
}

static CK_RV get_token_info(CK_SLOT_ID slotID, CK_TOKEN_INFO_PTR pInfo)
{
  token_args a = {pInfo, 0};
  if (kvp_check_initialized() == CKR_OK && pInfo != NULL)
    a.login_required = kvp_slot_login_required(slotID); /* asks the registry: no lock held */
  return with_slot(slotID, pInfo == NULL, 0, token_info, &a);
}

CK_RV C_GetTokenInfo(CK_SLOT_ID slotID, CK_TOKEN_INFO_PTR pInfo)
{
  ENTRY(FN_GetTokenInfo, get_token_info(slotID, pInfo));
}

typedef struct mech_args {
  CK_MECHANISM_TYPE type;
  CK_MECHANISM_TYPE_PTR list;
  CK_ULONG_PTR count;
  CK_MECHANISM_INFO_PTR info;
} mech_args;

static CK_RV mech_list(kvp_slot *slot, void *arg)
{
  mech_args *a = arg;
  return kvp_mechanism_list(slot, a->list, a->count);
}

static CK_RV mech_info(kvp_slot *slot, void *arg)
{
  mech_args *a = arg;
  return kvp_mechanism_info(slot, a->type, a->info);
}

CK_RV C_GetMechanismList(CK_SLOT_ID slotID, CK_MECHANISM_TYPE_PTR pMechanismList,
                         CK_ULONG_PTR pulCount)
{
  mech_args a = {0, pMechanismList, pulCount, NULL};
  ENTRY(FN_GetMechanismList, with_slot(slotID, pulCount == NULL, 1, mech_list, &a));
}

CK_RV C_GetMechanismInfo(CK_SLOT_ID slotID, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO_PTR pInfo)
{
  mech_args a = {type, NULL, NULL, pInfo};
  ENTRY(FN_GetMechanismInfo, with_slot(slotID, pInfo == NULL, 0, mech_info, &a));
}

static CK_RV not_supported(kvp_slot *slot, void *arg)
{
  (void)slot;
  (void)arg;
  return CKR_FUNCTION_NOT_SUPPORTED;
}

CK_RV C_InitToken(CK_SLOT_ID slotID, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen,
                  CK_UTF8CHAR_PTR pLabel)
{
  ENTRY(FN_InitToken, with_slot(slotID, 0, 0, not_supported, NULL));
}

static CK_RV wait_for_slot_event(CK_FLAGS flags)
{
  CK_RV rv = initialized_and(0);
  /* Tokens never come and go: there is no event to wait for. */
  return rv != CKR_OK ? rv : (flags & CKF_DONT_BLOCK) ? CKR_NO_EVENT : CKR_FUNCTION_NOT_SUPPORTED;
}

CK_RV C_WaitForSlotEvent(CK_FLAGS flags, CK_SLOT_ID_PTR pSlot, CK_VOID_PTR pReserved)
{
  ENTRY(FN_WaitForSlotEvent, wait_for_slot_event(flags));
}

/* ---- sessions -------------------------------------------------------- */

/*
 * Entry points that act on a session: look it up (taking a reference), lock
 * its operation state, evaluate body with s bound to it, unlock, drop the
 * reference, and return body's CK_RV as entry point fn.
 */
#define WITH_SESSION(fn, h, body)                                                                  \
  do {                                                                                             \
    kvp_session *s_ = NULL;                                                                        \
    CK_RV rv_;                                                                                     \
    kvp_errq q_;                                                                                   \
    kvp_entry_begin(&q_);                                                                          \
    rv_ = kvp_session_get((h), &s_);                                                               \
    if (rv_ == CKR_OK) {                                                                           \
      pthread_mutex_lock(&s_->lock);                                                               \
      {                                                                                            \
        kvp_session *s __attribute__((unused)) = s_;                                               \
        rv_ = (body);                                                                              \
      }                                                                                            \
      pthread_mutex_unlock(&s_->lock);                                                             \
      kvp_session_put(s_);                                                                         \
    }                                                                                              \
    return kvp_entry_end(&q_, (fn), rv_);                                                          \
  } while (0)

/* An entry point this module does not offer: CKR_FUNCTION_NOT_SUPPORTED once the
 * session handle is checked. The parameters after hSession are the standard's. */
#define UNSUPPORTED(name, fn, ...)                                                                 \
  CK_RV name(CK_SESSION_HANDLE hSession, __VA_ARGS__)                                              \
  {                                                                                                \
    WITH_SESSION(fn, hSession, CKR_FUNCTION_NOT_SUPPORTED);                                        \
  }
/* The four dual-function updates share one signature and one FN_ name. */
#define DUAL_UPDATE(name)                                                                          \
  UNSUPPORTED(name, FN_DualUpdate, CK_BYTE_PTR pIn, CK_ULONG ulInLen, CK_BYTE_PTR pOut,          \
              CK_ULONG_PTR pulOutLen)

static CK_RV open_session(CK_SLOT_ID slotID, CK_FLAGS flags, CK_SESSION_HANDLE_PTR phSession)
{
  CK_RV rv = initialized_and(phSession == NULL);
  if (rv != CKR_OK)
    return rv;
  if (!(flags & CKF_SERIAL_SESSION))
    return CKR_SESSION_PARALLEL_NOT_SUPPORTED;
  return kvp_session_open(slotID, flags & (CKF_SERIAL_SESSION | CKF_RW_SESSION), phSession);
}

CK_RV C_OpenSession(CK_SLOT_ID slotID, CK_FLAGS flags, CK_VOID_PTR pApplication, CK_NOTIFY Notify,
                    CK_SESSION_HANDLE_PTR phSession)
{
  ENTRY(FN_OpenSession, open_session(slotID, flags, phSession));
}

CK_RV C_CloseSession(CK_SESSION_HANDLE hSession)
{
  ENTRY(FN_CloseSession, kvp_session_close(hSession));
}

CK_RV C_CloseAllSessions(CK_SLOT_ID slotID)
{
  ENTRY(FN_CloseAllSessions, kvp_session_close_all(slotID));
}

static CK_RV session_info(kvp_session *s, CK_SESSION_INFO_PTR pInfo)
{
  if (pInfo == NULL)
    return CKR_ARGUMENTS_BAD;
  pthread_rwlock_rdlock(&kvp_g.lock);
  pInfo->slotID = s->slot;
  pInfo->state = kvp_session_state(s, kvp_slot_locked(s->slot));
  pthread_rwlock_unlock(&kvp_g.lock);
  pInfo->flags = s->flags;
  pInfo->ulDeviceError = 0;
  return CKR_OK;
}

CK_RV C_GetSessionInfo(CK_SESSION_HANDLE hSession, CK_SESSION_INFO_PTR pInfo)
{
  WITH_SESSION(FN_GetSessionInfo, hSession, session_info(s, pInfo));
}

/* Operation state could carry key-store context: never saved. */
UNSUPPORTED(C_GetOperationState, FN_GetOperationState, CK_BYTE_PTR pOperationState,
            CK_ULONG_PTR pulOperationStateLen)

UNSUPPORTED(C_SetOperationState, FN_SetOperationState, CK_BYTE_PTR pOperationState,
            CK_ULONG ulOperationStateLen, CK_OBJECT_HANDLE hEncryptionKey,
            CK_OBJECT_HANDLE hAuthenticationKey)

CK_RV C_Login(CK_SESSION_HANDLE hSession, CK_USER_TYPE userType, CK_UTF8CHAR_PTR pPin,
              CK_ULONG ulPinLen)
{
  WITH_SESSION(FN_Login, hSession, kvp_login(s, userType, pPin, ulPinLen));
}

CK_RV C_Logout(CK_SESSION_HANDLE hSession)
{
  WITH_SESSION(FN_Logout, hSession, kvp_logout(s));
}

UNSUPPORTED(C_InitPIN, FN_InitPIN, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen)

UNSUPPORTED(C_SetPIN, FN_SetPIN, CK_UTF8CHAR_PTR pOldPin, CK_ULONG ulOldLen,
            CK_UTF8CHAR_PTR pNewPin, CK_ULONG ulNewLen)

/* ---- objects --------------------------------------------------------- */

/* Changing or copying a registered object is refused. */
static CK_RV existing_object_prohibited(kvp_session *s, CK_OBJECT_HANDLE h)
{
  kvp_object *o = NULL;
  CK_RV rv = kvp_object_get(s, h, &o);
  if (rv != CKR_OK)
    return rv;
  kvp_object_put(o);
  return CKR_ACTION_PROHIBITED;
}

CK_RV C_CreateObject(CK_SESSION_HANDLE hSession, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount,
                     CK_OBJECT_HANDLE_PTR phObject)
{
  WITH_SESSION(FN_CreateObject, hSession,
               kvp_create_object(s, pTemplate, ulCount, phObject));
}

CK_RV C_CopyObject(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject,
                   CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount, CK_OBJECT_HANDLE_PTR phNewObject)
{
  WITH_SESSION(FN_CopyObject, hSession, existing_object_prohibited(s, hObject));
}

CK_RV C_DestroyObject(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject)
{
  WITH_SESSION(FN_DestroyObject, hSession, kvp_destroy_object(s, hObject));
}

static CK_RV object_size(kvp_session *s, CK_OBJECT_HANDLE h, CK_ULONG_PTR pulSize)
{
  kvp_object *o = NULL;
  CK_RV rv;
  if (pulSize == NULL)
    return CKR_ARGUMENTS_BAD;
  if ((rv = kvp_object_get(s, h, &o)) != CKR_OK)
    return rv;
  *pulSize = CK_UNAVAILABLE_INFORMATION;
  kvp_object_put(o);
  return CKR_OK;
}

CK_RV C_GetObjectSize(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ULONG_PTR pulSize)
{
  WITH_SESSION(FN_GetObjectSize, hSession, object_size(s, hObject, pulSize));
}

static CK_RV get_attributes(kvp_session *s, CK_OBJECT_HANDLE h, CK_ATTRIBUTE_PTR tmpl, CK_ULONG n)
{
  kvp_object *o = NULL;
  CK_RV rv;
  if (tmpl == NULL && n != 0)
    return CKR_ARGUMENTS_BAD;
  if ((rv = kvp_object_get(s, h, &o)) != CKR_OK)
    return rv;
  rv = kvp_object_get_attributes(o, tmpl, n);
  kvp_object_put(o);
  return rv;
}

CK_RV C_GetAttributeValue(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject,
                          CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount)
{
  WITH_SESSION(FN_GetAttributeValue, hSession, get_attributes(s, hObject, pTemplate, ulCount));
}

CK_RV C_SetAttributeValue(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject,
                          CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount)
{
  WITH_SESSION(FN_SetAttributeValue, hSession, existing_object_prohibited(s, hObject));
}

static CK_RV find_init(kvp_session *s, CK_ATTRIBUTE_PTR tmpl, CK_ULONG n)
{
  if (s->find.kind != KVP_OP_NONE)
    return CKR_OPERATION_ACTIVE;
  return kvp_find_init(s, tmpl, n);
}

static CK_RV find_next(kvp_session *s, CK_OBJECT_HANDLE_PTR ph, CK_ULONG max, CK_ULONG_PTR count)
{
  if (s->find.kind != KVP_OP_FIND)
    return CKR_OPERATION_NOT_INITIALIZED;
  if (ph == NULL || count == NULL)
    return CKR_ARGUMENTS_BAD;
  return kvp_find_next(s, ph, max, count);
}

static CK_RV find_final(kvp_session *s)
{
  if (s->find.kind != KVP_OP_FIND)
    return CKR_OPERATION_NOT_INITIALIZED;
  kvp_op_reset(&s->find);
  return CKR_OK;
}

CK_RV C_FindObjectsInit(CK_SESSION_HANDLE hSession, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount)
{
  WITH_SESSION(FN_FindObjectsInit, hSession, find_init(s, pTemplate, ulCount));
}

CK_RV C_FindObjects(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE_PTR phObject,
                    CK_ULONG ulMaxObjectCount, CK_ULONG_PTR pulObjectCount)
{
  WITH_SESSION(FN_FindObjects, hSession,
               find_next(s, phObject, ulMaxObjectCount, pulObjectCount));
}

CK_RV C_FindObjectsFinal(CK_SESSION_HANDLE hSession)
{
  WITH_SESSION(FN_FindObjectsFinal, hSession, find_final(s));
}

/* ---- cryptography ---------------------------------------------------- */

/* RSA works on one block: Update keeps the input and the output comes at Final. */
static CK_RV update_no_output(kvp_session *s, kvp_op_kind kind, CK_BYTE_PTR in, CK_ULONG in_len,
                              CK_ULONG_PTR out_len)
{
  if (out_len == NULL)
    return CKR_ARGUMENTS_BAD;
  *out_len = 0;
  return kvp_op_update(s, kind, in, in_len);
}

CK_RV C_EncryptInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey)
{
  WITH_SESSION(FN_EncryptInit, hSession, kvp_op_init(s, KVP_OP_ENCRYPT, pMechanism, hKey));
}

CK_RV C_Encrypt(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen,
                CK_BYTE_PTR pEncryptedData, CK_ULONG_PTR pulEncryptedDataLen)
{
  WITH_SESSION(FN_Encrypt, hSession,
               kvp_op_output(s, KVP_OP_ENCRYPT, 0, pData, ulDataLen, pEncryptedData,
                             pulEncryptedDataLen));
}

CK_RV C_EncryptUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen,
                      CK_BYTE_PTR pEncryptedPart, CK_ULONG_PTR pulEncryptedPartLen)
{
  WITH_SESSION(FN_EncryptUpdate, hSession,
               update_no_output(s, KVP_OP_ENCRYPT, pPart, ulPartLen, pulEncryptedPartLen));
}

CK_RV C_EncryptFinal(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pLastEncryptedPart,
                     CK_ULONG_PTR pulLastEncryptedPartLen)
{
  WITH_SESSION(FN_EncryptFinal, hSession,
               kvp_op_output(s, KVP_OP_ENCRYPT, 1, NULL, 0, pLastEncryptedPart,
                             pulLastEncryptedPartLen));
}

CK_RV C_DecryptInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey)
{
  WITH_SESSION(FN_DecryptInit, hSession, kvp_op_init(s, KVP_OP_DECRYPT, pMechanism, hKey));
}

CK_RV C_Decrypt(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pEncryptedData,
                CK_ULONG ulEncryptedDataLen, CK_BYTE_PTR pData, CK_ULONG_PTR pulDataLen)
{
  WITH_SESSION(FN_Decrypt, hSession,
               kvp_op_output(s, KVP_OP_DECRYPT, 0, pEncryptedData, ulEncryptedDataLen, pData,
                             pulDataLen));
}

CK_RV C_DecryptUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pEncryptedPart,
                      CK_ULONG ulEncryptedPartLen, CK_BYTE_PTR pPart, CK_ULONG_PTR pulPartLen)
{
  WITH_SESSION(FN_DecryptUpdate, hSession,
               update_no_output(s, KVP_OP_DECRYPT, pEncryptedPart, ulEncryptedPartLen,
                                pulPartLen));
}

CK_RV C_DecryptFinal(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pLastPart, CK_ULONG_PTR pulLastPartLen)
{
  WITH_SESSION(FN_DecryptFinal, hSession,
               kvp_op_output(s, KVP_OP_DECRYPT, 1, NULL, 0, pLastPart, pulLastPartLen));
}

CK_RV C_DigestInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism)
{
  WITH_SESSION(FN_DigestInit, hSession,
               kvp_op_init(s, KVP_OP_DIGEST, pMechanism, CK_INVALID_HANDLE));
}

CK_RV C_Digest(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen,
               CK_BYTE_PTR pDigest, CK_ULONG_PTR pulDigestLen)
{
  WITH_SESSION(FN_Digest, hSession,
               kvp_op_output(s, KVP_OP_DIGEST, 0, pData, ulDataLen, pDigest, pulDigestLen));
}

CK_RV C_DigestUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen)
{
  WITH_SESSION(FN_DigestUpdate, hSession, kvp_op_update(s, KVP_OP_DIGEST, pPart, ulPartLen));
}

CK_RV C_DigestKey(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hKey)
{
  /* Only private and public keys exist here; neither is digestible secret material. */
  WITH_SESSION(FN_DigestKey, hSession,
               s->op.kind != KVP_OP_DIGEST ? CKR_OPERATION_NOT_INITIALIZED
                                           : CKR_KEY_INDIGESTIBLE);
}

CK_RV C_DigestFinal(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pDigest, CK_ULONG_PTR pulDigestLen)
{
  WITH_SESSION(FN_DigestFinal, hSession,
               kvp_op_output(s, KVP_OP_DIGEST, 1, NULL, 0, pDigest, pulDigestLen));
}

CK_RV C_SignInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey)
{
  WITH_SESSION(FN_SignInit, hSession, kvp_op_init(s, KVP_OP_SIGN, pMechanism, hKey));
}

CK_RV C_Sign(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen,
             CK_BYTE_PTR pSignature, CK_ULONG_PTR pulSignatureLen)
{
  WITH_SESSION(FN_Sign, hSession,
               kvp_op_output(s, KVP_OP_SIGN, 0, pData, ulDataLen, pSignature, pulSignatureLen));
}

CK_RV C_SignUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen)
{
  WITH_SESSION(FN_SignUpdate, hSession, kvp_op_update(s, KVP_OP_SIGN, pPart, ulPartLen));
}

CK_RV C_SignFinal(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSignature, CK_ULONG_PTR pulSignatureLen)
{
  WITH_SESSION(FN_SignFinal, hSession,
               kvp_op_output(s, KVP_OP_SIGN, 1, NULL, 0, pSignature, pulSignatureLen));
}

UNSUPPORTED(C_SignRecoverInit, FN_SignRecoverInit, CK_MECHANISM_PTR pMechanism,
            CK_OBJECT_HANDLE hKey)

UNSUPPORTED(C_SignRecover, FN_SignRecover, CK_BYTE_PTR pData, CK_ULONG ulDataLen,
            CK_BYTE_PTR pSignature, CK_ULONG_PTR pulSignatureLen)

CK_RV C_VerifyInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey)
{
  WITH_SESSION(FN_VerifyInit, hSession, kvp_op_init(s, KVP_OP_VERIFY, pMechanism, hKey));
}

CK_RV C_Verify(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen,
               CK_BYTE_PTR pSignature, CK_ULONG ulSignatureLen)
{
  WITH_SESSION(FN_Verify, hSession,
               kvp_op_verify(s, 0, pData, ulDataLen, pSignature, ulSignatureLen));
}

CK_RV C_VerifyUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen)
{
  WITH_SESSION(FN_VerifyUpdate, hSession, kvp_op_update(s, KVP_OP_VERIFY, pPart, ulPartLen));
}

CK_RV C_VerifyFinal(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSignature, CK_ULONG ulSignatureLen)
{
  WITH_SESSION(FN_VerifyFinal, hSession,
               kvp_op_verify(s, 1, NULL, 0, pSignature, ulSignatureLen));
}

UNSUPPORTED(C_VerifyRecoverInit, FN_VerifyRecoverInit, CK_MECHANISM_PTR pMechanism,
            CK_OBJECT_HANDLE hKey)

UNSUPPORTED(C_VerifyRecover, FN_VerifyRecover, CK_BYTE_PTR pSignature, CK_ULONG ulSignatureLen,
            CK_BYTE_PTR pData, CK_ULONG_PTR pulDataLen)

DUAL_UPDATE(C_DigestEncryptUpdate)

DUAL_UPDATE(C_DecryptDigestUpdate)

DUAL_UPDATE(C_SignEncryptUpdate)

DUAL_UPDATE(C_DecryptVerifyUpdate)

/* Key pairs are generated in a key store (provision.c); secret keys, wrapping and derivation
 * never exist here. */
UNSUPPORTED(C_GenerateKey, FN_GenerateKey, CK_MECHANISM_PTR pMechanism, CK_ATTRIBUTE_PTR pTemplate,
            CK_ULONG ulCount, CK_OBJECT_HANDLE_PTR phKey)

CK_RV C_GenerateKeyPair(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism,
                        CK_ATTRIBUTE_PTR pPublicKeyTemplate, CK_ULONG ulPublicKeyAttributeCount,
                        CK_ATTRIBUTE_PTR pPrivateKeyTemplate, CK_ULONG ulPrivateKeyAttributeCount,
                        CK_OBJECT_HANDLE_PTR phPublicKey, CK_OBJECT_HANDLE_PTR phPrivateKey)
{
  WITH_SESSION(FN_GenerateKeyPair, hSession,
               kvp_generate_key_pair(s, pMechanism, pPublicKeyTemplate, ulPublicKeyAttributeCount,
                                     pPrivateKeyTemplate, ulPrivateKeyAttributeCount, phPublicKey,
                                     phPrivateKey));
}

UNSUPPORTED(C_WrapKey, FN_WrapKey, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hWrappingKey,
            CK_OBJECT_HANDLE hKey, CK_BYTE_PTR pWrappedKey, CK_ULONG_PTR pulWrappedKeyLen)

UNSUPPORTED(C_UnwrapKey, FN_UnwrapKey, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hUnwrappingKey,
            CK_BYTE_PTR pWrappedKey, CK_ULONG ulWrappedKeyLen, CK_ATTRIBUTE_PTR pTemplate,
            CK_ULONG ulAttributeCount, CK_OBJECT_HANDLE_PTR phKey)

UNSUPPORTED(C_DeriveKey, FN_DeriveKey, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hBaseKey,
            CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulAttributeCount, CK_OBJECT_HANDLE_PTR phKey)

/* OpenSSL takes an int length: long requests go in chunks. */
#define RAND_CHUNK ((CK_ULONG)1 << 30)

static CK_RV seed_random(CK_BYTE_PTR seed, CK_ULONG len)
{
  if (seed == NULL && len != 0)
    return CKR_ARGUMENTS_BAD;
  for (CK_ULONG done = 0; done < len;) {
    CK_ULONG n = len - done < RAND_CHUNK ? len - done : RAND_CHUNK;
    RAND_seed(seed + done, (int)n);
    done += n;
  }
  return CKR_OK;
}

static CK_RV generate_random(CK_BYTE_PTR out, CK_ULONG len)
{
  if (out == NULL && len != 0)
    return CKR_ARGUMENTS_BAD;
  for (CK_ULONG done = 0; done < len;) {
    CK_ULONG n = len - done < RAND_CHUNK ? len - done : RAND_CHUNK;
    if (RAND_bytes(out + done, (int)n) != 1)
      return kvp_fail(CKR_FUNCTION_FAILED, "C_GenerateRandom: OpenSSL's RAND_bytes failed: %s",
                      ERR_reason_error_string(ERR_peek_last_error()) != NULL
                          ? ERR_reason_error_string(ERR_peek_last_error())
                          : "no reason given");
    done += n;
  }
  return CKR_OK;
}

CK_RV C_SeedRandom(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSeed, CK_ULONG ulSeedLen)
{
  WITH_SESSION(FN_SeedRandom, hSession, seed_random(pSeed, ulSeedLen));
}

CK_RV C_GenerateRandom(CK_SESSION_HANDLE hSession, CK_BYTE_PTR RandomData, CK_ULONG ulRandomLen)
{
  WITH_SESSION(FN_GenerateRandom, hSession, generate_random(RandomData, ulRandomLen));
}

CK_RV C_GetFunctionStatus(CK_SESSION_HANDLE hSession)
{
  WITH_SESSION(FN_FunctionStatus, hSession, CKR_FUNCTION_NOT_PARALLEL);
}

CK_RV C_CancelFunction(CK_SESSION_HANDLE hSession)
{
  WITH_SESSION(FN_FunctionStatus, hSession, CKR_FUNCTION_NOT_PARALLEL);
}

static CK_FUNCTION_LIST kvp_function_list = {
    {2, 40},
    C_Initialize,
    C_Finalize,
    C_GetInfo,
    C_GetFunctionList,
    C_GetSlotList,
    C_GetSlotInfo,
    C_GetTokenInfo,
    C_GetMechanismList,
    C_GetMechanismInfo,
    C_InitToken,
    C_InitPIN,
    C_SetPIN,
    C_OpenSession,
    C_CloseSession,
    C_CloseAllSessions,
    C_GetSessionInfo,
    C_GetOperationState,
    C_SetOperationState,
    C_Login,
    C_Logout,
    C_CreateObject,
    C_CopyObject,
    C_DestroyObject,
    C_GetObjectSize,
    C_GetAttributeValue,
    C_SetAttributeValue,
    C_FindObjectsInit,
    C_FindObjects,
    C_FindObjectsFinal,
    C_EncryptInit,
    C_Encrypt,
    C_EncryptUpdate,
    C_EncryptFinal,
    C_DecryptInit,
    C_Decrypt,
    C_DecryptUpdate,
    C_DecryptFinal,
    C_DigestInit,
    C_Digest,
    C_DigestUpdate,
    C_DigestKey,
    C_DigestFinal,
    C_SignInit,
    C_Sign,
    C_SignUpdate,
    C_SignFinal,
    C_SignRecoverInit,
    C_SignRecover,
    C_VerifyInit,
    C_Verify,
    C_VerifyUpdate,
    C_VerifyFinal,
    C_VerifyRecoverInit,
    C_VerifyRecover,
    C_DigestEncryptUpdate,
    C_DecryptDigestUpdate,
    C_SignEncryptUpdate,
    C_DecryptVerifyUpdate,
    C_GenerateKey,
    C_GenerateKeyPair,
    C_WrapKey,
    C_UnwrapKey,
    C_DeriveKey,
    C_SeedRandom,
    C_GenerateRandom,
    C_GetFunctionStatus,
    C_CancelFunction,
    C_WaitForSlotEvent,
};
