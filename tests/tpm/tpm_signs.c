/*
 * kvp11-tpm-signs: N signatures in ONE process, each on a fresh session, printing every result;
 * optionally a shell command in between and M more signatures (tests/tpm/pin_lockout.sh).
 *
 *   kvp11-tpm-signs MODULE TOKEN_LABEL KEY_LABEL N [COMMAND M]
 *   kvp11-tpm-signs --fork MODULE TOKEN_LABEL KEY_LABEL N
 *
 * Loads MODULE with dlopen + C_GetFunctionList, C_Initialize (CKF_OS_LOCKING_OK), finds the
 * token by label; each signature: C_OpenSession, C_FindObjects (CKO_PRIVATE_KEY, CKA_LABEL),
 * C_SignInit (CKM_SHA256_RSA_PKCS) + C_Sign over a fixed text, C_CloseSession. Prints one line
 * per signature: "sign I: CKR_..." ("sign I: no key" when the key is not found), then
 * "command: STATUS" after COMMAND. Exit 0 once the module is loaded and the token found (the
 * caller judges the lines), 2 otherwise.
 * --fork: N signatures in the parent, then fork(); the child calls C_Initialize and signs once
 * ("child: CKR_... after S s"), the parent waits for it and signs 3 more times ("sign I: ...").
 * For experiments straight on an HSM's module: KVP11_SIGNS_PIN (C_Login as the user on a session
 * kept open, in the parent and in the child), KVP11_SIGNS_CHILD=finalize (a child whose
 * C_Initialize says CKR_CRYPTOKI_ALREADY_INITIALIZED calls C_Finalize and C_Initialize again;
 * otherwise it goes on with the state it inherited), KVP11_SIGNS_CHILD=no-finalize (the same, and
 * no C_Finalize before it exits), KVP11_SIGNS_CHILD=exit (the child only exits).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "p11load.h"

static const char *rv_name(CK_RV rv)
{
  static char buf[32];
  switch (rv) {
  case CKR_OK: return "CKR_OK";
  case CKR_GENERAL_ERROR: return "CKR_GENERAL_ERROR";
  case CKR_DEVICE_ERROR: return "CKR_DEVICE_ERROR";
  case CKR_PIN_INCORRECT: return "CKR_PIN_INCORRECT";
  case CKR_PIN_LOCKED: return "CKR_PIN_LOCKED";
  case CKR_USER_NOT_LOGGED_IN: return "CKR_USER_NOT_LOGGED_IN";
  case CKR_KEY_HANDLE_INVALID: return "CKR_KEY_HANDLE_INVALID";
  case CKR_OBJECT_HANDLE_INVALID: return "CKR_OBJECT_HANDLE_INVALID";
  case CKR_FUNCTION_FAILED: return "CKR_FUNCTION_FAILED";
  case CKR_TOKEN_NOT_PRESENT: return "CKR_TOKEN_NOT_PRESENT";
  case CKR_CRYPTOKI_ALREADY_INITIALIZED: return "CKR_CRYPTOKI_ALREADY_INITIALIZED";
  case CKR_USER_ALREADY_LOGGED_IN: return "CKR_USER_ALREADY_LOGGED_IN";
  default: snprintf(buf, sizeof buf, "CKR_0x%lx", (unsigned long)rv); return buf;
  }
}

static CK_RV sign_once(CK_FUNCTION_LIST_PTR p11, CK_SLOT_ID slot, const char *label, int *found)
{
  CK_SESSION_HANDLE s;
  CK_RV rv = p11->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s);
  if (rv != CKR_OK)
    return rv;
  CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
  CK_ATTRIBUTE tmpl[] = {{CKA_CLASS, &cls, sizeof cls}, {CKA_LABEL, (void *)label, strlen(label)}};
  CK_OBJECT_HANDLE key = CK_INVALID_HANDLE;
  CK_ULONG n = 0;
  *found = 0;
  rv = p11->C_FindObjectsInit(s, tmpl, 2);
  if (rv == CKR_OK) {
    rv = p11->C_FindObjects(s, &key, 1, &n);
    p11->C_FindObjectsFinal(s);
  }
  if (rv == CKR_OK && n == 1) {
    *found = 1;
    static const unsigned char text[] = "kvp11 TPM lockout test";
    unsigned char sig[1024];
    CK_ULONG siglen = sizeof sig;
    CK_MECHANISM mech = {CKM_SHA256_RSA_PKCS, NULL, 0};
    rv = p11->C_SignInit(s, &mech, key);
    if (rv == CKR_OK)
      rv = p11->C_Sign(s, (CK_BYTE_PTR)text, sizeof text - 1, sig, &siglen);
  }
  p11->C_CloseSession(s);
  return rv;
}

/* C_Login with $KVP11_SIGNS_PIN on a session that stays open (the login lasts while it does). */
static CK_RV login_if_asked(CK_FUNCTION_LIST_PTR p11, CK_SLOT_ID slot)
{
  const char *pin = getenv("KVP11_SIGNS_PIN");
  CK_SESSION_HANDLE s;
  if (!pin)
    return CKR_OK;
  CK_RV rv = p11->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s);
  if (rv == CKR_OK)
    rv = p11->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)pin, strlen(pin));
  return rv == CKR_USER_ALREADY_LOGGED_IN ? CKR_OK : rv;
}

static void sign_n(CK_FUNCTION_LIST_PTR p11, CK_SLOT_ID slot, const char *label, int n, int *idx)
{
  for (int i = 0; i < n; i++) {
    int found;
    CK_RV rv = sign_once(p11, slot, label, &found);
    if (rv == CKR_OK && !found)
      printf("sign %d: no key\n", ++*idx);
    else
      printf("sign %d: %s\n", ++*idx, rv_name(rv));
    fflush(stdout);
  }
}

/* The child of --fork: re-initializes (the module requires it after fork) and signs once. */
static void fork_child(CK_FUNCTION_LIST_PTR p11, const char *token, const char *label)
{
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  const char *mode = getenv("KVP11_SIGNS_CHILD");
  if (mode && strcmp(mode, "exit") == 0)
    _exit(0);
  CK_C_INITIALIZE_ARGS args = {.flags = CKF_OS_LOCKING_OK};
  CK_RV rv = p11->C_Initialize(&args);
  if (rv == CKR_CRYPTOKI_ALREADY_INITIALIZED) {
    printf("child: C_Initialize: CKR_CRYPTOKI_ALREADY_INITIALIZED\n");
    rv = CKR_OK;
    if (mode && strcmp(mode, "finalize") == 0) {
      p11->C_Finalize(NULL);
      rv = p11->C_Initialize(&args);
    }
  }
  CK_SLOT_ID slot;
  int found = 0;
  if (rv == CKR_OK && kvps_find_slot(p11, token, &slot) != 0)
    rv = CKR_TOKEN_NOT_PRESENT;
  if (rv == CKR_OK)
    rv = login_if_asked(p11, slot);
  if (rv == CKR_OK)
    rv = sign_once(p11, slot, label, &found);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  printf("child: %s after %.1f s\n", rv == CKR_OK && !found ? "no key" : rv_name(rv),
         (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
  fflush(stdout);
  if (!(mode && strcmp(mode, "no-finalize") == 0))
    p11->C_Finalize(NULL);
  _exit(0);
}

int main(int argc, char **argv)
{
  int forking = argc > 1 && strcmp(argv[1], "--fork") == 0;
  if (forking) {
    argv++;
    argc--;
  }
  if (argc != 5 && argc != 7) {
    fprintf(stderr, "usage: %s MODULE TOKEN_LABEL KEY_LABEL N [COMMAND M]\n", argv[0]);
    return 2;
  }
  void *h;
  CK_FUNCTION_LIST_PTR p11 = kvps_load(argv[1], &h);
  if (!p11)
    return 2;
  CK_C_INITIALIZE_ARGS args = {.flags = CKF_OS_LOCKING_OK};
  CK_RV rv = p11->C_Initialize(&args);
  CK_SLOT_ID slot;
  if (rv != CKR_OK) {
    fprintf(stderr, "C_Initialize: %s\n", rv_name(rv));
    return 2;
  }
  if (kvps_find_slot(p11, argv[2], &slot) != 0) {
    fprintf(stderr, "no token labelled '%s'\n", argv[2]);
    p11->C_Finalize(NULL);
    return 2;
  }
  rv = login_if_asked(p11, slot);
  if (rv != CKR_OK) {
    fprintf(stderr, "C_Login: %s\n", rv_name(rv));
    p11->C_Finalize(NULL);
    return 2;
  }
  int idx = 0;
  sign_n(p11, slot, argv[3], atoi(argv[4]), &idx);
  if (forking) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0)
      fork_child(p11, argv[2], argv[3]);
    int st = 0;
    if (pid < 0 || waitpid(pid, &st, 0) != pid || !WIFEXITED(st))
      printf("child: did not exit normally\n");
    sign_n(p11, slot, argv[3], 3, &idx);
  }
  if (argc == 7) {
    fflush(stdout);
    int st = system(argv[5]);
    printf("command: %d\n", st);
    fflush(stdout);
    sign_n(p11, slot, argv[3], atoi(argv[6]), &idx);
  }
  p11->C_Finalize(NULL);
  return 0;
}
