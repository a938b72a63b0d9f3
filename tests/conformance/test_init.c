/*
 * General-purpose functions: C_GetFunctionList, C_Initialize (the four CK_C_INITIALIZE_ARGS
 * cases and the bad ones), C_Finalize, C_GetInfo, and calls made before C_Initialize.
 * Every test starts and ends with the module finalized.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

/* Leave the module finalized whatever a test did. */
static void finalize_quietly(void)
{
  (void)P11->C_Finalize(NULL);
}

static void test_get_function_list(void)
{
  CK_FUNCTION_LIST_PTR fl = NULL;
  CHECK_RV(KVPT_GFL(NULL), CKR_ARGUMENTS_BAD);
  if (!CHECK_RV(KVPT_GFL(&fl), CKR_OK) || !CHECK(fl != NULL, "C_GetFunctionList gave NULL"))
    return;
  CHECK(fl->version.major == 2 && fl->version.minor == 40,
        "function list version %u.%u, expected 2.40", fl->version.major, fl->version.minor);
  /* The full 2.40 list: no entry may be NULL (unsupported ones give CKR_FUNCTION_NOT_SUPPORTED). */
#define F(name) CHECK(fl->name != NULL, "function list entry " #name " is NULL")
  F(C_Initialize);
  F(C_Finalize);
  F(C_GetInfo);
  F(C_GetFunctionList);
  F(C_GetSlotList);
  F(C_GetSlotInfo);
  F(C_GetTokenInfo);
  F(C_GetMechanismList);
  F(C_GetMechanismInfo);
  F(C_InitToken);
  F(C_InitPIN);
  F(C_SetPIN);
  F(C_OpenSession);
  F(C_CloseSession);
  F(C_CloseAllSessions);
  F(C_GetSessionInfo);
  F(C_GetOperationState);
  F(C_SetOperationState);
  F(C_Login);
  F(C_Logout);
  F(C_CreateObject);
  F(C_CopyObject);
  F(C_DestroyObject);
  F(C_GetObjectSize);
  F(C_GetAttributeValue);
  F(C_SetAttributeValue);
  F(C_FindObjectsInit);
  F(C_FindObjects);
  F(C_FindObjectsFinal);
  F(C_EncryptInit);
  F(C_Encrypt);
  F(C_EncryptUpdate);
  F(C_EncryptFinal);
  F(C_DecryptInit);
  F(C_Decrypt);
  F(C_DecryptUpdate);
  F(C_DecryptFinal);
  F(C_DigestInit);
  F(C_Digest);
  F(C_DigestUpdate);
  F(C_DigestKey);
  F(C_DigestFinal);
  F(C_SignInit);
  F(C_Sign);
  F(C_SignUpdate);
  F(C_SignFinal);
  F(C_SignRecoverInit);
  F(C_SignRecover);
  F(C_VerifyInit);
  F(C_Verify);
  F(C_VerifyUpdate);
  F(C_VerifyFinal);
  F(C_VerifyRecoverInit);
  F(C_VerifyRecover);
  F(C_DigestEncryptUpdate);
  F(C_DecryptDigestUpdate);
  F(C_SignEncryptUpdate);
  F(C_DecryptVerifyUpdate);
  F(C_GenerateKey);
  F(C_GenerateKeyPair);
  F(C_WrapKey);
  F(C_UnwrapKey);
  F(C_DeriveKey);
  F(C_SeedRandom);
  F(C_GenerateRandom);
  F(C_GetFunctionStatus);
  F(C_CancelFunction);
  F(C_WaitForSlotEvent);
#undef F
  /* The list's own C_GetFunctionList gives a list too. */
  CK_FUNCTION_LIST_PTR fl2 = NULL;
  if (fl->C_GetFunctionList)
    CHECK_RV(fl->C_GetFunctionList(&fl2), CKR_OK);
  CHECK(fl2 != NULL, "C_GetFunctionList through the list gave NULL");
}

static void test_calls_before_initialize(void)
{
  CK_INFO info;
  CK_ULONG n = 0;
  CK_SLOT_ID slot = 0;
  CK_SLOT_INFO si;
  CK_TOKEN_INFO ti;
  CK_SESSION_HANDLE h = 0;
  CK_BYTE buf[16];
  CHECK_RV(P11->C_GetInfo(&info), CKR_CRYPTOKI_NOT_INITIALIZED);
  CHECK_RV(P11->C_GetSlotList(CK_FALSE, NULL, &n), CKR_CRYPTOKI_NOT_INITIALIZED);
  CHECK_RV(P11->C_GetSlotInfo(0, &si), CKR_CRYPTOKI_NOT_INITIALIZED);
  CHECK_RV(P11->C_GetTokenInfo(0, &ti), CKR_CRYPTOKI_NOT_INITIALIZED);
  CHECK_RV(P11->C_GetMechanismList(0, NULL, &n), CKR_CRYPTOKI_NOT_INITIALIZED);
  CHECK_RV(P11->C_OpenSession(0, CKF_SERIAL_SESSION, NULL, NULL, &h), CKR_CRYPTOKI_NOT_INITIALIZED);
  CHECK_RV(P11->C_CloseSession(1), CKR_CRYPTOKI_NOT_INITIALIZED);
  CHECK_RV(P11->C_CloseAllSessions(0), CKR_CRYPTOKI_NOT_INITIALIZED);
  CHECK_RV(P11->C_FindObjectsInit(1, NULL, 0), CKR_CRYPTOKI_NOT_INITIALIZED);
  CHECK_RV(P11->C_GenerateRandom(1, buf, sizeof buf), CKR_CRYPTOKI_NOT_INITIALIZED);
  CHECK_RV(P11->C_WaitForSlotEvent(CKF_DONT_BLOCK, &slot, NULL), CKR_CRYPTOKI_NOT_INITIALIZED);
  CHECK_RV(P11->C_Finalize(NULL), CKR_CRYPTOKI_NOT_INITIALIZED);
}

static void test_initialize_null(void)
{
  CK_INFO info;
  CHECK_RV(P11->C_Initialize(NULL), CKR_OK);
  CHECK_RV(P11->C_Initialize(NULL), CKR_CRYPTOKI_ALREADY_INITIALIZED);
  CHECK_RV(P11->C_GetInfo(&info), CKR_OK);
  CHECK_RV(P11->C_Finalize(NULL), CKR_OK);
  CHECK_RV(P11->C_Finalize(NULL), CKR_CRYPTOKI_NOT_INITIALIZED);
  CHECK_RV(P11->C_GetInfo(&info), CKR_CRYPTOKI_NOT_INITIALIZED);
}

/* Case 1 of 5.4: flags 0, no callbacks: the application will not call from several threads. */
static void test_initialize_no_flags_no_callbacks(void)
{
  CK_C_INITIALIZE_ARGS args;
  CK_ULONG n = 0;
  memset(&args, 0, sizeof args);
  CHECK_RV(P11->C_Initialize(&args), CKR_OK);
  CHECK_RV(P11->C_GetSlotList(CK_TRUE, NULL, &n), CKR_OK);
  CHECK_RV(P11->C_Finalize(NULL), CKR_OK);
}

/* Case 2: CKF_OS_LOCKING_OK, no callbacks. */
static void test_initialize_os_locking(void)
{
  CK_C_INITIALIZE_ARGS args;
  CK_ULONG n = 0;
  memset(&args, 0, sizeof args);
  args.flags = CKF_OS_LOCKING_OK;
  CHECK_RV(P11->C_Initialize(&args), CKR_OK);
  CHECK_RV(P11->C_Initialize(&args), CKR_CRYPTOKI_ALREADY_INITIALIZED);
  CHECK_RV(P11->C_GetSlotList(CK_TRUE, NULL, &n), CKR_OK);
  CHECK_RV(P11->C_Finalize(NULL), CKR_OK);
}

/* Application-supplied mutexes, counting their use. */
static atomic_long mx_created, mx_destroyed, mx_locked, mx_unlocked;

static CK_RV mx_create(void **m)
{
  if (!m)
    return CKR_ARGUMENTS_BAD;
  pthread_mutex_t *p = malloc(sizeof *p);
  if (!p)
    return CKR_HOST_MEMORY;
  pthread_mutex_init(p, NULL);
  *m = p;
  atomic_fetch_add(&mx_created, 1);
  return CKR_OK;
}

static CK_RV mx_destroy(void *m)
{
  if (!m)
    return CKR_MUTEX_BAD;
  pthread_mutex_destroy(m);
  free(m);
  atomic_fetch_add(&mx_destroyed, 1);
  return CKR_OK;
}

static CK_RV mx_lock(void *m)
{
  if (!m)
    return CKR_MUTEX_BAD;
  pthread_mutex_lock(m);
  atomic_fetch_add(&mx_locked, 1);
  return CKR_OK;
}

static CK_RV mx_unlock(void *m)
{
  if (!m)
    return CKR_MUTEX_BAD;
  atomic_fetch_add(&mx_unlocked, 1);
  pthread_mutex_unlock(m);
  return CKR_OK;
}

/* Exercise the initialized module a little, so it has a reason to lock. */
static void exercise(void)
{
  CK_SLOT_ID slot;
  CK_SESSION_HANDLE h[3];
  if (!CHECK(kvpt_find_slot(&slot), "no token labelled \"%s\"", KVPT.token))
    return;
  for (size_t i = 0; i < 3; i++)
    CHECK_RV(P11->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &h[i]), CKR_OK);
  CHECK_RV(P11->C_CloseSession(h[0]), CKR_OK);
  CHECK_RV(P11->C_CloseAllSessions(slot), CKR_OK);
}

static void custom_mutex_case(CK_FLAGS flags)
{
  CK_C_INITIALIZE_ARGS args;
  memset(&args, 0, sizeof args);
  args.CreateMutex = mx_create;
  args.DestroyMutex = mx_destroy;
  args.LockMutex = mx_lock;
  args.UnlockMutex = mx_unlock;
  args.flags = flags;
  atomic_store(&mx_created, 0);
  atomic_store(&mx_destroyed, 0);
  atomic_store(&mx_locked, 0);
  atomic_store(&mx_unlocked, 0);
  /* The issue requires all four cases to work, so CKR_CANT_LOCK (spec-valid for a library that
   * cannot use the callbacks) counts as a failure here. */
  if (!CHECK_RV(P11->C_Initialize(&args), CKR_OK))
    return;
  exercise();
  CHECK_RV(P11->C_Finalize(NULL), CKR_OK);
  long c = atomic_load(&mx_created), d = atomic_load(&mx_destroyed);
  long l = atomic_load(&mx_locked), u = atomic_load(&mx_unlocked);
  CHECK(l == u, "application mutexes locked %ld times but unlocked %ld times", l, u);
  CHECK(c == d, "application mutexes: %ld created, %ld destroyed after C_Finalize", c, d);
  if (flags == 0 && c == 0)
    fprintf(
        stderr,
        "\n  note: flags=0 with callbacks: module created no application mutex (it must use the "
        "callbacks for any locking it does)\n");
}

/* Case 3: callbacks, no CKF_OS_LOCKING_OK: the library must use the callbacks. */
static void test_initialize_custom_mutex(void)
{
  custom_mutex_case(0);
}

/* Case 4: callbacks and CKF_OS_LOCKING_OK: either may be used. */
static void test_initialize_custom_mutex_and_os_locking(void)
{
  custom_mutex_case(CKF_OS_LOCKING_OK);
}

static void test_initialize_some_callbacks(void)
{
  CK_INFO info;
  CK_C_INITIALIZE_ARGS args;
  memset(&args, 0, sizeof args);
  args.CreateMutex = mx_create;
  CHECK_RV(P11->C_Initialize(&args), CKR_ARGUMENTS_BAD);
  args.DestroyMutex = mx_destroy;
  args.LockMutex = mx_lock;
  CHECK_RV(P11->C_Initialize(&args), CKR_ARGUMENTS_BAD);
  args.flags = CKF_OS_LOCKING_OK;
  CHECK_RV(P11->C_Initialize(&args), CKR_ARGUMENTS_BAD);
  memset(&args, 0, sizeof args);
  args.UnlockMutex = mx_unlock;
  CHECK_RV(P11->C_Initialize(&args), CKR_ARGUMENTS_BAD);
  /* A refused C_Initialize leaves the library uninitialized. */
  CHECK_RV(P11->C_GetInfo(&info), CKR_CRYPTOKI_NOT_INITIALIZED);
  finalize_quietly();
}

static void test_initialize_reserved(void)
{
  CK_INFO info;
  CK_C_INITIALIZE_ARGS args;
  int dummy = 0;
  memset(&args, 0, sizeof args);
  args.pReserved = &dummy;
  CHECK_RV(P11->C_Initialize(&args), CKR_ARGUMENTS_BAD);
  args.flags = CKF_OS_LOCKING_OK;
  CHECK_RV(P11->C_Initialize(&args), CKR_ARGUMENTS_BAD);
  CHECK_RV(P11->C_GetInfo(&info), CKR_CRYPTOKI_NOT_INITIALIZED);
  finalize_quietly();
}

static void test_finalize_reserved(void)
{
  CK_INFO info;
  int dummy = 0;
  if (!CHECK_RV(kvpt_initialize(), CKR_OK))
    return;
  CHECK_RV(P11->C_Finalize(&dummy), CKR_ARGUMENTS_BAD);
  /* Still initialized after the refused C_Finalize. */
  CHECK_RV(P11->C_GetInfo(&info), CKR_OK);
  CHECK_RV(P11->C_Finalize(NULL), CKR_OK);
}

/* A blank-padded, unterminated fixed-size string: printable, no NUL. */
static bool blank_padded(const CK_UTF8CHAR *s, size_t n)
{
  for (size_t i = 0; i < n; i++)
    if (s[i] < 0x20 || s[i] == 0x7f)
      return false;
  return true;
}

static void test_get_info(void)
{
  CK_INFO info;
  if (!CHECK_RV(kvpt_initialize(), CKR_OK))
    return;
  CHECK_RV(P11->C_GetInfo(NULL), CKR_ARGUMENTS_BAD);
  memset(&info, 0, sizeof info);
  if (CHECK_RV(P11->C_GetInfo(&info), CKR_OK)) {
    CHECK(info.cryptokiVersion.major == 2 && info.cryptokiVersion.minor == 40,
          "cryptokiVersion %u.%u, expected 2.40", info.cryptokiVersion.major,
          info.cryptokiVersion.minor);
    CHECK(blank_padded(info.manufacturerID, sizeof info.manufacturerID),
          "manufacturerID not blank-padded");
    CHECK(blank_padded(info.libraryDescription, sizeof info.libraryDescription),
          "libraryDescription not blank-padded");
    CHECK(info.manufacturerID[0] != ' ', "manufacturerID is empty");
    CHECK(info.flags == 0, "CK_INFO flags must be 0, got 0x%lx", (unsigned long)info.flags);
  }
  CHECK_RV(P11->C_Finalize(NULL), CKR_OK);
}

/* C_Finalize with open sessions cleans up; sessions do not survive a re-initialization. */
static void test_reinitialize(void)
{
  CK_SLOT_ID slot;
  CK_SESSION_HANDLE h = CK_INVALID_HANDLE;
  CK_SESSION_INFO si;
  for (int round = 0; round < 3; round++) {
    if (!CHECK_RV(kvpt_initialize(), CKR_OK))
      return;
    if (CHECK(kvpt_find_slot(&slot), "no token labelled \"%s\"", KVPT.token)) {
      if (h != CK_INVALID_HANDLE)
        CHECK_RV(P11->C_GetSessionInfo(h, &si), CKR_SESSION_HANDLE_INVALID);
      CHECK_RV(P11->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &h), CKR_OK);
    }
    CHECK_RV(P11->C_Finalize(NULL), CKR_OK);
  }
}

/* CKA_ID of every configured certificate, read in a fresh C_Initialize .. C_Finalize cycle.
 * Returns the number of names read; ids[i] is malloc'd (NULL if not found). */
static size_t read_ids(unsigned char **ids, CK_ULONG *lens, size_t max)
{
  size_t n = 0;
  CK_SLOT_ID slot;
  CK_SESSION_HANDLE h;
  if (!CHECK_RV(kvpt_initialize(), CKR_OK))
    return 0;
  if (CHECK(kvpt_find_slot(&slot), "no token labelled \"%s\"", KVPT.token) &&
      CHECK_RV(P11->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &h), CKR_OK)) {
    kvpt_login(h);
    for (size_t i = 0; i < KVPT.nkeys + KVPT.npublics && n < max; i++, n++) {
      const char *name = i < KVPT.nkeys ? KVPT.keys[i] : KVPT.publics[i - KVPT.nkeys];
      size_t count;
      CK_RV rv;
      CK_OBJECT_HANDLE o = kvpt_find_one(h, CKO_CERTIFICATE, name, &count);
      ids[n] = o != CK_INVALID_HANDLE ? kvpt_attr(h, o, CKA_ID, &lens[n], &rv) : NULL;
    }
  }
  CHECK_RV(P11->C_Finalize(NULL), CKR_OK);
  return n;
}

/* CKA_ID is stable: the same after the module is finalized and initialized again. */
static void test_ids_stable(void)
{
  unsigned char *a[KVPT_MAX_CERTS] = {0}, *b[KVPT_MAX_CERTS] = {0};
  CK_ULONG alen[KVPT_MAX_CERTS] = {0}, blen[KVPT_MAX_CERTS] = {0};
  size_t n = read_ids(a, alen, KVPT_MAX_CERTS);
  size_t m = read_ids(b, blen, KVPT_MAX_CERTS);
  CHECK(n == m && n == KVPT.nkeys + KVPT.npublics, "read %zu and %zu names", n, m);
  for (size_t i = 0; i < n && i < m; i++) {
    CHECK(a[i] && b[i], "certificate %zu not found", i);
    if (a[i] && b[i])
      CHECK(alen[i] == blen[i] && memcmp(a[i], b[i], alen[i]) == 0,
            "CKA_ID of certificate %zu changed across C_Finalize/C_Initialize", i);
  }
  for (size_t i = 0; i < KVPT_MAX_CERTS; i++) {
    free(a[i]);
    free(b[i]);
  }
}

void kvpt_add_init_tests(void)
{
  static const kvpt_test tests[] = {
      {"C_GetFunctionList", test_get_function_list},
      {"calls before C_Initialize", test_calls_before_initialize},
      {"C_Initialize(NULL)", test_initialize_null},
      {"C_Initialize flags=0 no callbacks", test_initialize_no_flags_no_callbacks},
      {"C_Initialize CKF_OS_LOCKING_OK", test_initialize_os_locking},
      {"C_Initialize custom mutex callbacks", test_initialize_custom_mutex},
      {"C_Initialize custom mutex + OS locking", test_initialize_custom_mutex_and_os_locking},
      {"C_Initialize some callbacks -> ARGUMENTS_BAD", test_initialize_some_callbacks},
      {"C_Initialize pReserved -> ARGUMENTS_BAD", test_initialize_reserved},
      {"C_Finalize(non-NULL) -> ARGUMENTS_BAD", test_finalize_reserved},
      {"C_GetInfo", test_get_info},
      {"re-initialize drops sessions", test_reinitialize},
      {"CKA_ID stable across re-initialization", test_ids_stable},
  };
  kvpt_add_suite("init", NULL, NULL, tests, KVPT_ARRAY_LEN(tests));
}
