/*
 * secrets-driver — the process whose memory tests/secrets/scan.sh dumps.
 *
 *   secrets-driver MODULE PINFILE TOKEN[:KEYLABEL[:login]] ...
 *
 * Loads MODULE (libkvp11.so) with dlopen, and for each TOKEN (a token label):
 * opens a session, logs in with the PIN read from PINFILE when ":login" is
 * given (the PIN is held in one buffer, wiped right after C_Login), signs with
 * CKM_SHA256_RSA_PKCS, encrypts with the public key and decrypts with the
 * private key (CKM_RSA_PKCS) and checks the round trip.
 * Then it prints "live <pid>" and waits for one line on stdin (the test takes
 * a core dump with gcore), calls C_Finalize, prints "final <pid>", waits for a
 * second line (second dump) and calls abort().
 * Exit status 1 (with a message on stderr) when any step fails.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

static CK_FUNCTION_LIST_PTR f;

#define CHECK(call)                                                          \
  do {                                                                       \
    CK_RV rv_ = (call);                                                      \
    if (rv_ != CKR_OK) {                                                     \
      fprintf(stderr, "secrets-driver: %s: 0x%lx\n", #call, (unsigned long)rv_); \
      goto out;                                                              \
    }                                                                        \
  } while (0)

static void wipe(void *p, size_t n)
{
  volatile unsigned char *v = p;
  while (n-- > 0)
    *v++ = 0;
}

static CK_SLOT_ID find_slot(const char *label, int *found)
{
  CK_SLOT_ID slots[64];
  CK_ULONG n = 64;
  char want[32];

  *found = 0;
  memset(want, ' ', sizeof(want));
  memcpy(want, label, strlen(label) < 32 ? strlen(label) : 32);
  if (f->C_GetSlotList(CK_TRUE, slots, &n) != CKR_OK)
    return 0;
  for (CK_ULONG i = 0; i < n; i++) {
    CK_TOKEN_INFO ti;
    if (f->C_GetTokenInfo(slots[i], &ti) == CKR_OK && memcmp(ti.label, want, 32) == 0) {
      *found = 1;
      return slots[i];
    }
  }
  return 0;
}

static CK_OBJECT_HANDLE find_key(CK_SESSION_HANDLE s, CK_OBJECT_CLASS cls, const char *label)
{
  CK_ATTRIBUTE t[2] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_LABEL, (void *)label, 0}};
  CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
  CK_ULONG n = 0;
  CK_ULONG count = label != NULL ? 2 : 1;

  if (label != NULL)
    t[1].ulValueLen = (CK_ULONG)strlen(label);
  if (f->C_FindObjectsInit(s, t, count) != CKR_OK)
    return CK_INVALID_HANDLE;
  if (f->C_FindObjects(s, &h, 1, &n) != CKR_OK || n != 1)
    h = CK_INVALID_HANDLE;
  f->C_FindObjectsFinal(s);
  return h;
}

/* open/read, not stdio: a FILE buffer would keep a copy of the PIN in freed heap */
static int read_pin(const char *path, char *pin, size_t cap, size_t *len)
{
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  ssize_t n;

  if (fd < 0)
    return -1;
  n = read(fd, pin, cap - 1);
  close(fd);
  if (n <= 0)
    return -1;
  while (n > 0 && (pin[n - 1] == '\n' || pin[n - 1] == '\r'))
    n--;
  *len = (size_t)n;
  return n > 0 ? 0 : -1;
}

/* one token: login (optional), sign, encrypt + decrypt round trip */
static int work(const char *spec, const char *pinfile)
{
  char buf[256];
  char *label, *key, *opt;
  CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
  CK_SLOT_ID slot;
  int found, ok = 0, logged_in = 0;
  CK_BYTE msg[] = "secret hygiene test message";
  CK_BYTE sig[1024], ct[1024], pt[1024];
  CK_ULONG siglen = sizeof(sig), ctlen = sizeof(ct), ptlen = sizeof(pt);
  CK_MECHANISM sha_rsa = {CKM_SHA256_RSA_PKCS, NULL, 0};
  CK_MECHANISM rsa = {CKM_RSA_PKCS, NULL, 0};
  CK_OBJECT_HANDLE priv, pub;

  snprintf(buf, sizeof(buf), "%s", spec);
  label = buf;
  key = strchr(label, ':');
  if (key != NULL)
    *key++ = '\0';
  opt = key != NULL ? strchr(key, ':') : NULL;
  if (opt != NULL)
    *opt++ = '\0';
  if (key != NULL && *key == '\0')
    key = NULL;

  slot = find_slot(label, &found);
  if (!found) {
    fprintf(stderr, "secrets-driver: token '%s' not found\n", label);
    return -1;
  }
  CHECK(f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s));
  if (opt != NULL && strcmp(opt, "login") == 0) {
    char pin[256];
    size_t pinlen = 0;
    CK_RV rv;
    if (read_pin(pinfile, pin, sizeof(pin), &pinlen) != 0) {
      fprintf(stderr, "secrets-driver: cannot read the PIN file\n");
      wipe(pin, sizeof(pin));
      goto out;
    }
    rv = f->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)pin, (CK_ULONG)pinlen);
    wipe(pin, sizeof(pin));
    if (rv != CKR_OK) {
      fprintf(stderr, "secrets-driver: C_Login on '%s': 0x%lx\n", label, (unsigned long)rv);
      goto out;
    }
    logged_in = 1;
  }
  priv = find_key(s, CKO_PRIVATE_KEY, key);
  pub = find_key(s, CKO_PUBLIC_KEY, key);
  if (priv == CK_INVALID_HANDLE || pub == CK_INVALID_HANDLE) {
    fprintf(stderr, "secrets-driver: key '%s' not found on '%s'\n", key ? key : "(any)", label);
    goto out;
  }
  CHECK(f->C_SignInit(s, &sha_rsa, priv));
  CHECK(f->C_Sign(s, msg, sizeof(msg) - 1, sig, &siglen));
  CHECK(f->C_VerifyInit(s, &sha_rsa, pub));
  CHECK(f->C_Verify(s, msg, sizeof(msg) - 1, sig, siglen));
  CHECK(f->C_EncryptInit(s, &rsa, pub));
  CHECK(f->C_Encrypt(s, msg, sizeof(msg) - 1, ct, &ctlen));
  CHECK(f->C_DecryptInit(s, &rsa, priv));
  CHECK(f->C_Decrypt(s, ct, ctlen, pt, &ptlen));
  if (ptlen != sizeof(msg) - 1 || memcmp(pt, msg, ptlen) != 0) {
    fprintf(stderr, "secrets-driver: decrypt round trip differs on '%s'\n", label);
    goto out;
  }
  printf("ok %s sign+verify+decrypt\n", label);
  ok = 1;
out:
  if (logged_in)
    f->C_Logout(s);
  if (s != CK_INVALID_HANDLE)
    f->C_CloseSession(s);
  return ok ? 0 : -1;
}

static int wait_line(void)
{
  char line[64];
  fflush(stdout);
  return fgets(line, sizeof(line), stdin) != NULL ? 0 : -1;
}

int main(int argc, char **argv)
{
  void *h;
  CK_RV (*gfl)(CK_FUNCTION_LIST_PTR_PTR);
  CK_C_INITIALIZE_ARGS ia;
  int rc = 1;

  if (argc < 4) {
    fprintf(stderr, "usage: %s MODULE PINFILE TOKEN[:KEY[:login]] ...\n", argv[0]);
    return 2;
  }
#ifdef PR_SET_PTRACER
  prctl(PR_SET_PTRACER, PR_SET_PTRACER_ANY, 0, 0, 0); /* let gcore attach (Yama) */
#endif
  h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (h == NULL) {
    fprintf(stderr, "secrets-driver: dlopen: %s\n", dlerror());
    return 1;
  }
  *(void **)&gfl = dlsym(h, "C_GetFunctionList");
  if (gfl == NULL || gfl(&f) != CKR_OK) {
    fprintf(stderr, "secrets-driver: C_GetFunctionList failed\n");
    return 1;
  }
  memset(&ia, 0, sizeof(ia));
  ia.flags = CKF_OS_LOCKING_OK;
  CHECK(f->C_Initialize(&ia));
  for (int i = 3; i < argc; i++)
    if (work(argv[i], argv[2]) != 0)
      goto out;
  printf("live %ld\n", (long)getpid());
  if (wait_line() != 0)
    goto out;
  CHECK(f->C_Finalize(NULL));
  printf("final %ld\n", (long)getpid());
  if (wait_line() != 0)
    goto out;
  abort();
out:
  return rc;
}
