/*
 * p11watch MODULE TOKEN-LABEL: a long-running PKCS#11 application for the
 * tool tests. It loads the module once (C_Initialize) and answers commands
 * read from stdin, one per line, each answer ending with a line "END":
 *
 *   objects              every object of the token: "CLASS HANDLE SIGN LABEL"
 *                        (CLASS cert/pub/priv; SIGN 1/0 for private keys, - else)
 *   sign LABEL           C_Sign (CKM_SHA256_RSA_PKCS or CKM_ECDSA_SHA256) with the
 *                        private key LABEL: "sign CKR_OK" or "sign CKR_... (0x..)"
 *   decrypt LABEL FILE   C_Decrypt (CKM_RSA_PKCS) of FILE's bytes with the private
 *                        key LABEL: "decrypt CKR_OK HEX" or "decrypt 0x.."
 *
 * It lets a test change the registry with kvp11 while an application keeps
 * the module loaded, and look at what that application then sees.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../stress/p11load.h"

static CK_FUNCTION_LIST_PTR p11;
static CK_SESSION_HANDLE sess;

static CK_OBJECT_HANDLE find(CK_OBJECT_CLASS cls, const char *label)
{
  CK_ATTRIBUTE t[2] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_LABEL, (void *)label, strlen(label)}};
  CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
  CK_ULONG n = 0;
  if (p11->C_FindObjectsInit(sess, t, 2) != CKR_OK)
    return CK_INVALID_HANDLE;
  if (p11->C_FindObjects(sess, &h, 1, &n) != CKR_OK || n == 0)
    h = CK_INVALID_HANDLE;
  p11->C_FindObjectsFinal(sess);
  return h;
}

static void objects(void)
{
  CK_OBJECT_HANDLE hs[256];
  CK_ULONG n = 0;
  if (p11->C_FindObjectsInit(sess, NULL, 0) != CKR_OK)
    return;
  p11->C_FindObjects(sess, hs, 256, &n);
  p11->C_FindObjectsFinal(sess);
  for (CK_ULONG i = 0; i < n; i++) {
    CK_OBJECT_CLASS cls = 0;
    CK_BBOOL sign = CK_FALSE;
    char label[300] = "";
    CK_ATTRIBUTE t[2] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_LABEL, label, sizeof(label) - 1}};
    if (p11->C_GetAttributeValue(sess, hs[i], t, 2) != CKR_OK)
      continue;
    label[t[1].ulValueLen < sizeof(label) ? t[1].ulValueLen : 0] = '\0';
    const char *sg = "-";
    if (cls == CKO_PRIVATE_KEY) {
      CK_ATTRIBUTE s = {CKA_SIGN, &sign, sizeof(sign)};
      sg = p11->C_GetAttributeValue(sess, hs[i], &s, 1) == CKR_OK && sign ? "1" : "0";
    }
    printf("%s %lu %s %s\n", cls == CKO_CERTIFICATE ? "cert" : cls == CKO_PUBLIC_KEY ? "pub" : "priv",
           (unsigned long)hs[i], sg, label);
  }
}

static void sign(const char *label)
{
  CK_OBJECT_HANDLE k = find(CKO_PRIVATE_KEY, label);
  CK_KEY_TYPE kt = 0;
  CK_ATTRIBUTE a = {CKA_KEY_TYPE, &kt, sizeof(kt)};
  if (k == CK_INVALID_HANDLE || p11->C_GetAttributeValue(sess, k, &a, 1) != CKR_OK) {
    printf("sign no-such-key\n");
    return;
  }
  CK_MECHANISM m = {kt == CKK_EC ? CKM_ECDSA_SHA256 : CKM_SHA256_RSA_PKCS, NULL, 0};
  unsigned char sig[1024];
  CK_ULONG sl = sizeof(sig);
  CK_RV rv = p11->C_SignInit(sess, &m, k);
  if (rv == CKR_OK)
    rv = p11->C_Sign(sess, (CK_BYTE_PTR) "hello", 5, sig, &sl);
  printf("sign %s (0x%lx)\n", rv == CKR_OK ? "CKR_OK" : "failed", (unsigned long)rv);
}

static void decrypt(const char *label, const char *file)
{
  unsigned char in[1024], out[1024];
  CK_ULONG ol = sizeof(out);
  FILE *f = fopen(file, "rb");
  size_t n = f ? fread(in, 1, sizeof(in), f) : 0;
  if (f)
    fclose(f);
  CK_OBJECT_HANDLE k = find(CKO_PRIVATE_KEY, label);
  CK_MECHANISM m = {CKM_RSA_PKCS, NULL, 0};
  CK_RV rv = k == CK_INVALID_HANDLE ? CKR_KEY_HANDLE_INVALID : p11->C_DecryptInit(sess, &m, k);
  if (rv == CKR_OK)
    rv = p11->C_Decrypt(sess, in, (CK_ULONG)n, out, &ol);
  if (rv != CKR_OK) {
    printf("decrypt failed (0x%lx)\n", (unsigned long)rv);
    return;
  }
  printf("decrypt CKR_OK ");
  for (CK_ULONG i = 0; i < ol; i++)
    printf("%02x", out[i]);
  printf("\n");
}

int main(int argc, char **argv)
{
  void *h;
  CK_SLOT_ID slot;
  char line[1024];
  if (argc != 3 || !(p11 = kvps_load(argv[1], &h)))
    return 2;
  CK_C_INITIALIZE_ARGS ia = {.flags = CKF_OS_LOCKING_OK};
  if (p11->C_Initialize(&ia) != CKR_OK || kvps_find_slot(p11, argv[2], &slot) != 0 ||
      p11->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &sess) != CKR_OK) {
    fprintf(stderr, "p11watch: cannot open a session on token '%s'\n", argv[2]);
    return 1;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  printf("READY\n");
  while (fgets(line, sizeof(line), stdin)) {
    line[strcspn(line, "\n")] = '\0';
    char *cmd = strtok(line, " "), *a1 = strtok(NULL, " "), *a2 = strtok(NULL, "");
    if (!cmd)
      continue;
    /* a fresh object search picks up registry changes (C_FindObjectsInit refreshes) */
    if (strcmp(cmd, "objects") == 0)
      objects();
    else if (strcmp(cmd, "sign") == 0 && a1)
      sign(a1);
    else if (strcmp(cmd, "decrypt") == 0 && a1 && a2)
      decrypt(a1, a2);
    else if (strcmp(cmd, "quit") == 0)
      break;
    printf("END\n");
  }
  p11->C_CloseSession(sess);
  p11->C_Finalize(NULL);
  return 0;
}
