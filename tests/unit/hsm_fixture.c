/* The SoftHSM2 fixture of the HSM backend's unit tests (hsm_fixture.h). */
#include "hsm_fixture.h"
#include "unit_util.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/x509.h>

char hsm_dir[1024];
char hsm_module[1024];
char hsm_pinfile[1100];

int hsm_write_file(const char *path, const char *text)
{
  FILE *f = fopen(path, "w");
  if (f == NULL)
    return -1;
  int ok = fputs(text, f) >= 0;
  ok = fclose(f) == 0 && ok;
  return ok && chmod(path, 0600) == 0 ? 0 : -1;
}

static int have_tool(const char *name)
{
  char cmd[256];
  snprintf(cmd, sizeof(cmd), "command -v %s >/dev/null 2>&1", name);
  return system(cmd) == 0;
}

/* softhsm2.conf, the PIN file and the tokens under hsm_dir. */
static int make_tokens(const char *const *tokens)
{
  char path[1200], conf[2048];
  if (!unit_sh("rm -rf '%s' && mkdir -p '%s/tokens'", hsm_dir, hsm_dir))
    return -1;
  snprintf(path, sizeof(path), "%s/softhsm2.conf", hsm_dir);
  snprintf(conf, sizeof(conf),
           "directories.tokendir = %s/tokens\nobjectstore.backend = file\n"
           "log.level = ERROR\nslots.removable = false\n",
           hsm_dir);
  if (hsm_write_file(path, conf) != 0)
    return -1;
  setenv("SOFTHSM2_CONF", path, 1);
  snprintf(hsm_pinfile, sizeof(hsm_pinfile), "%s/hsm.pin", hsm_dir);
  if (hsm_write_file(hsm_pinfile, HSM_PIN "\n") != 0)
    return -1;
  for (size_t i = 0; tokens[i] != NULL; i++)
    if (!unit_sh("softhsm2-util --init-token --free --label '%s' --pin " HSM_PIN
                 " --so-pin " HSM_SOPIN " >/dev/null",
                 tokens[i]))
      return -1;
  return 0;
}

int hsm_fixture_init(const char *tag, const char *const *tokens, int need_pkcs11_tool)
{
  const char *mod = getenv("KVP11_SOFTHSM_MODULE");
  const char *tmp = getenv("KVP11_TEST_TMP");
  snprintf(hsm_module, sizeof(hsm_module), "%s",
           mod && *mod ? mod : "/usr/lib/softhsm/libsofthsm2.so");
  if (access(hsm_module, R_OK) != 0 || !have_tool("softhsm2-util") ||
      (need_pkcs11_tool && !have_tool("pkcs11-tool"))) {
    fprintf(stderr, "SoftHSM2 (%s) or its tools not installed: skipped\n", hsm_module);
    return 77;
  }
  if (tmp && *tmp)
    snprintf(hsm_dir, sizeof(hsm_dir), "%s/%s", tmp, tag);
  else
    snprintf(hsm_dir, sizeof(hsm_dir), "/tmp/kvp11-test-%s-%ld", tag, (long)getpid());
  if (make_tokens(tokens) != 0) {
    fprintf(stderr, "cannot create the SoftHSM2 test tokens in %s\n", hsm_dir);
    return 1;
  }
  return 0;
}

int hsm_keygen(const char *token, const char *label, const char *id, const char *type, int decrypt)
{
  return unit_sh("pkcs11-tool --module '%s' --token-label '%s' --login --pin " HSM_PIN
                 " --keypairgen --key-type %s --label '%s' --id %s --usage-sign %s >/dev/null 2>&1",
                 hsm_module, token, type, label, id, decrypt ? "--usage-decrypt" : "")
             ? 0
             : -1;
}

int hsm_delete(const char *token, const char *type, const char *label)
{
  return unit_sh("pkcs11-tool --module '%s' --token-label '%s' --login --pin " HSM_PIN
                 " --delete-object --type %s --label '%s' >/dev/null 2>&1",
                 hsm_module, token, type, label)
             ? 0
             : -1;
}

EVP_PKEY *hsm_token_pubkey(const char *token, const char *label)
{
  char out[1200];
  snprintf(out, sizeof(out), "%s/%s-%s.pub.der", hsm_dir, token, label);
  if (!unit_sh("pkcs11-tool --module '%s' --token-label '%s' --read-object --type pubkey "
               "--label '%s' -o '%s' >/dev/null 2>&1",
               hsm_module, token, label, out))
    return NULL;
  FILE *f = fopen(out, "rb");
  if (f == NULL)
    return NULL;
  EVP_PKEY *pk = d2i_PUBKEY_fp(f, NULL);
  fclose(f);
  return pk;
}

kvp_hsm_conf hsm_conf(const char *name, const char *module, const char *token, const char *pin_file)
{
  kvp_hsm_conf c;
  memset(&c, 0, sizeof(c));
  c.name = (char *)name;
  c.module = (char *)module;
  c.token_label = (char *)token;
  c.pin_file = (char *)pin_file;
  c.line = 1;
  return c;
}

CK_FUNCTION_LIST_PTR hsm_functions(const char *path, void **dl)
{
  CK_FUNCTION_LIST_PTR fl = NULL;
  CK_C_GetFunctionList gfl;
  *dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (*dl == NULL)
    return NULL;
  void *sym = dlsym(*dl, "C_GetFunctionList");
  memcpy(&gfl, &sym, sizeof(gfl)); /* object pointer -> function pointer, ISO C safe */
  return gfl != NULL && gfl(&fl) == CKR_OK ? fl : NULL;
}

CK_SLOT_ID hsm_slot_of(CK_FUNCTION_LIST_PTR fl, const char *token)
{
  CK_SLOT_ID slots[64];
  CK_ULONG n = 64;
  char want[33];
  snprintf(want, sizeof(want), "%-32s", token);
  if (fl->C_GetSlotList(CK_TRUE, slots, &n) != CKR_OK)
    return (CK_SLOT_ID)-1;
  for (CK_ULONG i = 0; i < n; i++) {
    CK_TOKEN_INFO ti;
    if (fl->C_GetTokenInfo(slots[i], &ti) == CKR_OK && memcmp(ti.label, want, 32) == 0)
      return slots[i];
  }
  return (CK_SLOT_ID)-1;
}
