/*
 * kv-unload-host: a host program that uses libkvp11.so and libcurl itself
 * (issue 10 item 4). It dlopen()s the module, signs with the first private key
 * of every slot (Key Vault and HSM accounts), C_Finalize()s, dlclose()s it, and
 * then makes its own libcurl requests (a fresh curl_global_init, an HTTPS GET).
 * libkvp11.so installs libcurl's global allocators: had the dlclose() unmapped
 * them, the requests would call into unmapped code. Run under valgrind by
 * unload.sh.
 *
 *   kv-unload-host MODULE URL CAFILE EXPECTED_SIGNS
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <p11-kit/pkcs11.h>

static size_t discard(char *p, size_t s, size_t n, void *u)
{
  (void)p;
  (void)u;
  return s * n;
}

/* Sign with the first private key of the slot; 1 when it signed. */
static int sign_in_slot(CK_FUNCTION_LIST_PTR f, CK_SLOT_ID slot)
{
  CK_SESSION_HANDLE s;
  CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
  CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}};
  CK_OBJECT_HANDLE key;
  CK_ULONG n = 0, sl;
  CK_KEY_TYPE kt;
  CK_ATTRIBUTE a[] = {{CKA_KEY_TYPE, &kt, sizeof(kt)}};
  CK_MECHANISM m = {CKM_SHA256_RSA_PKCS, NULL, 0};
  CK_BYTE msg[] = "unload", sig[1024];
  int ok = 0;

  if (f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s) != CKR_OK)
    return 0;
  if (f->C_FindObjectsInit(s, t, 1) == CKR_OK && f->C_FindObjects(s, &key, 1, &n) == CKR_OK &&
      f->C_FindObjectsFinal(s) == CKR_OK && n == 1 &&
      f->C_GetAttributeValue(s, key, a, 1) == CKR_OK) {
    if (kt == CKK_EC)
      m.mechanism = CKM_ECDSA_SHA256;
    sl = sizeof(sig);
    ok = f->C_SignInit(s, &m, key) == CKR_OK && f->C_Sign(s, msg, 6, sig, &sl) == CKR_OK;
  }
  f->C_CloseSession(s);
  return ok;
}

int main(int argc, char **argv)
{
  void *mod;
  CK_C_GetFunctionList gfl;
  CK_FUNCTION_LIST_PTR f;
  CK_SLOT_ID slots[16];
  CK_ULONG ns = 16, i;
  int signs = 0, round;
  CURL *c;
  CURLcode cc;

  if (argc != 5) {
    fprintf(stderr, "usage: kv-unload-host MODULE URL CAFILE EXPECTED_SIGNS\n");
    return 2;
  }
  mod = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (mod == NULL) {
    fprintf(stderr, "dlopen %s: %s\n", argv[1], dlerror());
    return 1;
  }
  *(void **)&gfl = dlsym(mod, "C_GetFunctionList");
  if (gfl == NULL || gfl(&f) != CKR_OK || f->C_Initialize(NULL) != CKR_OK ||
      f->C_GetSlotList(CK_TRUE, slots, &ns) != CKR_OK) {
    fprintf(stderr, "module initialisation failed\n");
    return 1;
  }
  for (i = 0; i < ns; i++)
    signs += sign_in_slot(f, slots[i]);
  f->C_Finalize(NULL);
  dlclose(mod);
  printf("kv-unload-host: %d signatures in %lu slots, module closed\n", signs,
         (unsigned long)ns);
  if (signs != atoi(argv[4])) {
    fprintf(stderr, "expected %s signatures\n", argv[4]);
    return 1;
  }
  /* the program's own libcurl use, twice through init and cleanup */
  for (round = 0; round < 2; round++) {
    curl_global_init(CURL_GLOBAL_DEFAULT);
    c = curl_easy_init();
    curl_easy_setopt(c, CURLOPT_URL, argv[2]);
    curl_easy_setopt(c, CURLOPT_CAINFO, argv[3]);
    curl_easy_setopt(c, CURLOPT_NOPROXY, "*");
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard);
    cc = curl_easy_perform(c);
    curl_easy_cleanup(c);
    curl_global_cleanup();
    if (cc != CURLE_OK) {
      fprintf(stderr, "own request failed: %s\n", curl_easy_strerror(cc));
      return 1;
    }
  }
  printf("kv-unload-host: own libcurl requests after unloading: ok\n");
  return 0;
}
