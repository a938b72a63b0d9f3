/*
 * The fixture of the front's provisioning tests (test_front_provision.c,
 * test_front_sessobj.c): a SoftHSM2 token, a registry and a kvp11.conf in a
 * directory of the test's own, the module's function list, and helpers.
 * Included by one test program each: everything is static. Certificates and
 * registry rows come from front_util.h.
 */
#ifndef KVP_TEST_FRONT_FIXTURE_H
#define KVP_TEST_FRONT_FIXTURE_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CUnit/Basic.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/x509.h>

#include "core/cert.h"
#include "core/registry.h"
#include "core/util.h"
#include "pkcs11/internal.h"

#include "front_util.h"
#include "unit_util.h"

#define TOKEN "kvp11-prov"
#define PIN "1234"

static char dir[512], regpath[600];
static const char *softhsm;
static CK_FUNCTION_LIST_PTR f;
static CK_SLOT_ID slot_keys, slot_plain;

static __attribute__((unused)) int count_rows(void)
{
  char err[KVP_ERRLEN];
  kvp_registry *reg = NULL;
  kvp_cert_rec *recs = NULL;
  size_t n = 0;

  if (kvp_registry_open(regpath, 1, &reg, err, sizeof(err)) != KVP_OK)
    return 0;
  if (kvp_registry_list(reg, NULL, &recs, &n, err, sizeof(err)) != KVP_OK)
    n = 0;
  kvp_cert_rec_free_array(recs, n);
  kvp_registry_close(reg);
  return (int)n;
}

static __attribute__((unused)) CK_SLOT_ID slot_by_label(const char *label)
{
  CK_SLOT_ID slots[8];
  CK_ULONG n = 8;
  /* also used by suite_init: no CUnit asserts here */
  if (f->C_GetSlotList(CK_TRUE, slots, &n) != CKR_OK)
    return (CK_SLOT_ID)-1;
  for (CK_ULONG i = 0; i < n; i++) {
    CK_TOKEN_INFO ti;
    char padded[32];
    memset(padded, ' ', 32);
    memcpy(padded, label, strlen(label));
    if (f->C_GetTokenInfo(slots[i], &ti) == CKR_OK && memcmp(ti.label, padded, 32) == 0)
      return slots[i];
  }
  return (CK_SLOT_ID)-1;
}

/* A SoftHSM2 token of the test's own, the accounts "keys" (default_store =
 * hsm:box) and "plain" plus extra_conf, and C_Initialize. 77 without SoftHSM2. */
static __attribute__((unused)) int fixture_init(const char *tag, const char *extra_conf)
{
  char path[600];

  softhsm = getenv("KVP11_SOFTHSM_MODULE");
  if (softhsm == NULL || access(softhsm, R_OK) != 0)
    exit(77);
  if (front_test_dir(tag, dir, sizeof(dir)) != 0 || front_softhsm_conf(dir) != 0)
    return 1;
  if (!unit_sh("softhsm2-util --init-token --free --label " TOKEN " --pin " PIN
           " --so-pin 12345678 >/dev/null"))
    return 1;
  snprintf(path, sizeof(path), "%s/pin", dir);
  FILE *fp = fopen(path, "w");
  if (fp == NULL)
    return 1;
  fputs(PIN "\n", fp);
  fclose(fp);
  chmod(path, 0600);
  snprintf(regpath, sizeof(regpath), "%s/registry.db", dir);
  if (front_write_conf(dir, NULL, 0,
                       "[global]\nregistry = %s\nlog_level = error\n\n"
                       "[hsm box]\nmodule = %s\ntoken_label = " TOKEN "\npin_file = %s/pin\n\n"
                       "[account keys]\nlabel = keys\ndefault_store = hsm:box\n\n"
                       "[account plain]\nlabel = plain\n\n%s",
                       regpath, softhsm, dir, extra_conf) != 0)
    return 1;
  unsetenv("KVP11_REGISTRY");
  if (C_GetFunctionList(&f) != CKR_OK || f->C_Initialize(NULL) != CKR_OK)
    return 1;
  slot_keys = slot_by_label("keys");
  slot_plain = slot_by_label("plain");
  return slot_keys == (CK_SLOT_ID)-1 || slot_plain == (CK_SLOT_ID)-1;
}

static __attribute__((unused)) int fixture_clean(void)
{
  f->C_Finalize(NULL);
  unit_sh("rm -rf '%s'", dir);
  return 0;
}

static __attribute__((unused)) EVP_PKEY *public_of(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h)
{
  CK_BYTE buf[1024];
  CK_ATTRIBUTE a = {CKA_PUBLIC_KEY_INFO, buf, sizeof(buf)};
  const unsigned char *p = buf;
  if (f->C_GetAttributeValue(s, h, &a, 1) != CKR_OK)
    return NULL;
  return d2i_PUBKEY(NULL, &p, (long)a.ulValueLen);
}

static __attribute__((unused)) void sign_and_verify(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE priv, CK_OBJECT_HANDLE pub,
                            CK_MECHANISM_TYPE mt, const EVP_MD *md)
{
  CK_MECHANISM m = {mt, NULL, 0};
  CK_BYTE data[] = "an EDI message", sig[1024];
  CK_ULONG sig_len = sizeof(sig);
  EVP_PKEY *k = public_of(s, pub);
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  unsigned char der_sig[1100];
  size_t der_len = 0;

  CU_ASSERT_FATAL(k != NULL);
  CU_ASSERT_EQUAL_FATAL(f->C_SignInit(s, &m, priv), CKR_OK);
  CU_ASSERT_EQUAL_FATAL(f->C_Sign(s, data, sizeof(data) - 1, sig, &sig_len), CKR_OK);
  if (EVP_PKEY_get_base_id(k) == EVP_PKEY_EC) {
    /* r||s to DER for OpenSSL */
    ECDSA_SIG *es = ECDSA_SIG_new();
    unsigned char *p = der_sig;
    ECDSA_SIG_set0(es, BN_bin2bn(sig, (int)sig_len / 2, NULL),
                   BN_bin2bn(sig + sig_len / 2, (int)sig_len / 2, NULL));
    der_len = (size_t)i2d_ECDSA_SIG(es, &p);
    ECDSA_SIG_free(es);
  } else {
    memcpy(der_sig, sig, sig_len);
    der_len = sig_len;
  }
  CU_ASSERT_EQUAL(EVP_DigestVerifyInit(ctx, NULL, md, NULL, k), 1);
  CU_ASSERT_EQUAL(EVP_DigestVerify(ctx, der_sig, der_len, data, sizeof(data) - 1), 1);
  EVP_MD_CTX_free(ctx);
  EVP_PKEY_free(k);
}

#endif
