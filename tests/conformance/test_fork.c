/*
 * Fork (feature "fork"): a child of a process that initialized the module sees
 * CKR_CRYPTOKI_NOT_INITIALIZED until it calls C_Initialize, then works (a verified signature);
 * the parent keeps working. alarm() in the child turns a deadlock into a failure.
 *
 * The child reports through a pipe: under valgrind the child's exit status also carries the leak
 * check of state inherited from the parent, which a forked child cannot free safely, so the
 * parent judges the child by the reported step, plus a normal exit (no signal, no alarm).
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common.h"

/* Steps the child reports; 0 means every step passed. */
enum {
  STEP_OK = 0,
  STEP_SLOTLIST_BEFORE_INIT = 10,
  STEP_SESSION_BEFORE_INIT,
  STEP_OPEN_BEFORE_INIT,
  STEP_INITIALIZE,
  STEP_FIND_SLOT,
  STEP_OPEN_SESSION,
  STEP_FIND_KEY,
  STEP_SIGN,
  STEP_VERIFY,
  STEP_FINALIZE,
};

static const char *step_name(int s)
{
  switch (s) {
  case STEP_OK:
    return "ok";
  case STEP_SLOTLIST_BEFORE_INIT:
    return "C_GetSlotList before C_Initialize (expects CKR_CRYPTOKI_NOT_INITIALIZED)";
  case STEP_SESSION_BEFORE_INIT:
    return "C_GetSessionInfo on the parent's session (expects CKR_CRYPTOKI_NOT_INITIALIZED)";
  case STEP_OPEN_BEFORE_INIT:
    return "C_OpenSession before C_Initialize (expects CKR_CRYPTOKI_NOT_INITIALIZED)";
  case STEP_INITIALIZE:
    return "C_Initialize";
  case STEP_FIND_SLOT:
    return "finding the token";
  case STEP_OPEN_SESSION:
    return "C_OpenSession";
  case STEP_FIND_KEY:
    return "finding the private key";
  case STEP_SIGN:
    return "C_SignInit/C_Sign";
  case STEP_VERIFY:
    return "OpenSSL verification of the child's signature";
  case STEP_FINALIZE:
    return "C_Finalize";
  default:
    return "unknown";
  }
}

static bool sign_and_verify(CK_SESSION_HANDLE h, const kvpt_cert *c, CK_OBJECT_HANDLE key,
                            CK_RV *rv)
{
  static const unsigned char text[] = "kvp11 conformance: fork";
  unsigned char sig[1024];
  CK_ULONG slen = sizeof sig;
  CK_MECHANISM m = {c->is_rsa ? CKM_SHA256_RSA_PKCS : CKM_ECDSA_SHA256, NULL, 0};
  *rv = CKR_OK;
  *rv = P11->C_SignInit(h, &m, key);
  if (*rv == CKR_OK)
    *rv = P11->C_Sign(h, (CK_BYTE_PTR)text, sizeof text, sig, &slen);
  return *rv == CKR_OK &&
         kvpt_verify_msg(c, c->is_rsa ? 'p' : 'e', EVP_sha256(), text, sizeof text, sig, slen);
}

/* The child writes each step's number before it starts it, then STEP_OK: the parent's last byte
 * read names where a failing or hanging child stopped. */
static int child_fd = -1;

static void reach(unsigned char step)
{
  if (write(child_fd, &step, 1) != 1)
    _exit(3);
}

static int child_main(CK_SESSION_HANDLE parent_session, const kvpt_cert *c)
{
  CK_ULONG n = 0;
  CK_SESSION_INFO si;
  CK_SESSION_HANDLE h = CK_INVALID_HANDLE;
  CK_SLOT_ID slot;
  CK_RV rv;
  reach(STEP_SLOTLIST_BEFORE_INIT);
  if (P11->C_GetSlotList(CK_TRUE, NULL, &n) != CKR_CRYPTOKI_NOT_INITIALIZED)
    return STEP_SLOTLIST_BEFORE_INIT;
  reach(STEP_SESSION_BEFORE_INIT);
  if (P11->C_GetSessionInfo(parent_session, &si) != CKR_CRYPTOKI_NOT_INITIALIZED)
    return STEP_SESSION_BEFORE_INIT;
  reach(STEP_OPEN_BEFORE_INIT);
  if (P11->C_OpenSession(KVPT_SLOT, CKF_SERIAL_SESSION, NULL, NULL, &h) !=
      CKR_CRYPTOKI_NOT_INITIALIZED)
    return STEP_OPEN_BEFORE_INIT;
  reach(STEP_INITIALIZE);
  if (kvpt_initialize() != CKR_OK)
    return STEP_INITIALIZE;
  reach(STEP_FIND_SLOT);
  if (!kvpt_find_slot(&slot))
    return STEP_FIND_SLOT;
  reach(STEP_OPEN_SESSION);
  if (P11->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &h) != CKR_OK)
    return STEP_OPEN_SESSION;
  if (KVPT.pin)
    (void)P11->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR)KVPT.pin, strlen(KVPT.pin));
  /* Handles need not survive re-initialization: look the key up again. */
  reach(STEP_FIND_KEY);
  CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
  CK_ATTRIBUTE t[] = {KVPT_ATTR(CKA_CLASS, &cls, sizeof cls),
                      KVPT_ATTR(CKA_LABEL, (void *)c->name, strlen(c->name))};
  CK_OBJECT_HANDLE key = CK_INVALID_HANDLE;
  if (P11->C_FindObjectsInit(h, t, 2) != CKR_OK)
    return STEP_FIND_KEY;
  rv = P11->C_FindObjects(h, &key, 1, &n);
  (void)P11->C_FindObjectsFinal(h);
  if (rv != CKR_OK || n != 1)
    return STEP_FIND_KEY;
  reach(STEP_SIGN);
  if (!sign_and_verify(h, c, key, &rv))
    return rv == CKR_OK ? STEP_VERIFY : STEP_SIGN;
  reach(STEP_FINALIZE);
  if (P11->C_Finalize(NULL) != CKR_OK)
    return STEP_FINALIZE;
  return STEP_OK;
}

static void test_fork_child(void)
{
  if (!kvpt_has_feature("fork")) {
    fprintf(stderr, "\n  note: feature \"fork\" not set: fork test skipped\n");
    CHECK(true, "skipped");
    return;
  }
  const kvpt_cert *c = kvpt_first_rsa(0) ? kvpt_first_rsa(0) : kvpt_first_ec(0);
  if (!CHECK(c != NULL, "no private key"))
    return;
  CK_SESSION_HANDLE h = kvpt_open(false);
  CK_RV rv = CKR_OK;
  CHECK(sign_and_verify(h, c, c->priv, &rv), "parent sign before fork: %s", kvpt_rv_name(rv));

  int fds[2];
  if (!CHECK(pipe(fds) == 0, "pipe failed"))
    goto out;
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    child_fd = fds[1];
    alarm(KVPT.quick ? 120 : 30);
    int step = child_main(h, c);
    if (step == STEP_OK)
      reach(STEP_OK);
    _exit(step == STEP_OK ? 0 : 1);
  }
  close(fds[1]);
  if (!CHECK(pid > 0, "fork failed")) {
    close(fds[0]);
    goto out;
  }
  unsigned char step = 0xff, b;
  size_t got = 0;
  while (read(fds[0], &b, 1) == 1) {
    step = b;
    got++;
  }
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (WIFSIGNALED(status))
    CHECK(false, "child killed by signal %d%s during the step \"%s\"", WTERMSIG(status),
          WTERMSIG(status) == SIGALRM ? " (alarm: deadlock)" : "", got ? step_name(step) : "start");
  else if (CHECK(got > 0, "child reported nothing"))
    CHECK(step == STEP_OK, "child failed at: %s", step_name(step));
  if (WIFEXITED(status) && WEXITSTATUS(status) != 0 && step == STEP_OK)
    fprintf(stderr,
            "\n  note: child exit status %d after passing every step (valgrind leak report of "
            "inherited state?)\n",
            WEXITSTATUS(status));

  /* The parent is unaffected: same session, same handles. */
  CHECK(sign_and_verify(h, c, c->priv, &rv), "parent sign after fork: %s", kvpt_rv_name(rv));
  CK_SESSION_INFO si;
  CHECK_RV(P11->C_GetSessionInfo(h, &si), CKR_OK);
out:
  kvpt_close(h);
}

void kvpt_add_fork_tests(void)
{
  static const kvpt_test tests[] = {
      {"fork child re-initializes", test_fork_child},
  };
  kvpt_add_suite("fork", kvpt_suite_init, kvpt_suite_cleanup, tests, KVPT_ARRAY_LEN(tests));
}
