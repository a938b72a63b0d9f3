/*
 * kvp11 conformance suite: module loading, environment, object lookup, OpenSSL verification and
 * assertion helpers shared by every area file.
 */
#include "common.h"

#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/objects.h>
#include <openssl/rsa.h>

kvpt_env KVPT;
CK_FUNCTION_LIST_PTR P11;
CK_C_GetFunctionList KVPT_GFL;
CK_SLOT_ID KVPT_SLOT;
kvpt_cert KVPT_CERTS[KVPT_MAX_CERTS];
size_t KVPT_NCERTS;

static void *module_handle;

/* ---------------------------------------------------------------- environment and loading */

static size_t split_words(char *s, char **out, size_t max)
{
  size_t n = 0;
  for (char *save = NULL, *w = strtok_r(s, " \t,", &save); w && n < max;
       w = strtok_r(NULL, " \t,", &save))
    out[n++] = w;
  return n;
}

static char *env_dup(const char *name)
{
  const char *v = getenv(name);
  return strdup(v ? v : "");
}

static char *keys_buf, *publics_buf;

bool kvpt_setup(void)
{
  memset(&KVPT, 0, sizeof KVPT);
  KVPT.module_path = getenv("KVP11_MODULE");
  KVPT.token = getenv("KVP11_TEST_TOKEN");
  KVPT.pin = getenv("KVP11_TEST_PIN");
  if (KVPT.pin && !*KVPT.pin)
    KVPT.pin = NULL;
  if (!KVPT.module_path || !*KVPT.module_path || !KVPT.token || !*KVPT.token) {
    fprintf(stderr, "kvp11-conformance: set KVP11_MODULE and KVP11_TEST_TOKEN\n");
    return false;
  }
  keys_buf = env_dup("KVP11_TEST_KEYS");
  publics_buf = env_dup("KVP11_TEST_PUBLIC");
  KVPT.features = env_dup("KVP11_TEST_FEATURES");
  if (!keys_buf || !publics_buf || !KVPT.features)
    return false;
  KVPT.nkeys = split_words(keys_buf, KVPT.keys, KVPT_MAX_CERTS / 2);
  KVPT.npublics = split_words(publics_buf, KVPT.publics, KVPT_MAX_CERTS / 2);
  const char *q = getenv("KVP11_TEST_QUICK");
  KVPT.quick = q && *q && strcmp(q, "0") != 0;

  module_handle = dlopen(KVPT.module_path, RTLD_NOW | RTLD_LOCAL);
  if (!module_handle) {
    fprintf(stderr, "kvp11-conformance: dlopen %s: %s\n", KVPT.module_path, dlerror());
    return false;
  }
  void *sym = dlsym(module_handle, "C_GetFunctionList");
  if (!sym) {
    fprintf(stderr, "kvp11-conformance: %s has no C_GetFunctionList\n", KVPT.module_path);
    return false;
  }
  memcpy(&KVPT_GFL, &sym, sizeof KVPT_GFL);
  CK_RV rv = KVPT_GFL(&P11);
  if (rv != CKR_OK || !P11) {
    fprintf(stderr, "kvp11-conformance: C_GetFunctionList: %s\n", kvpt_rv_name(rv));
    return false;
  }
  /* every call goes through the OpenSSL error queue check (errqueue.c) */
  P11 = kvpt_errqueue_wrap(P11);
  return true;
}

void kvpt_teardown(void)
{
  /* Under valgrind keep the module mapped so leak reports still have symbols. */
  if (module_handle && !getenv("KVP11_TEST_NO_DLCLOSE"))
    dlclose(module_handle);
  module_handle = NULL;
  free(keys_buf);
  free(publics_buf);
  free(KVPT.features);
  keys_buf = publics_buf = KVPT.features = NULL;
}

bool kvpt_has_feature(const char *name)
{
  size_t n = strlen(name);
  for (const char *p = KVPT.features; p && (p = strstr(p, name)) != NULL; p += n) {
    bool start = p == KVPT.features || p[-1] == ' ' || p[-1] == ',';
    bool end = p[n] == '\0' || p[n] == ' ' || p[n] == ',';
    if (start && end)
      return true;
  }
  return false;
}

/* ---------------------------------------------------------------- module state */

CK_RV kvpt_initialize(void)
{
  CK_C_INITIALIZE_ARGS args;
  memset(&args, 0, sizeof args);
  args.flags = CKF_OS_LOCKING_OK;
  return P11->C_Initialize(&args);
}

bool kvpt_find_slot(CK_SLOT_ID *slot)
{
  CK_SLOT_ID slots[64];
  CK_ULONG n = KVPT_ARRAY_LEN(slots);
  if (P11->C_GetSlotList(CK_TRUE, slots, &n) != CKR_OK)
    return false;
  size_t want = strlen(KVPT.token);
  for (CK_ULONG i = 0; i < n; i++) {
    CK_TOKEN_INFO ti;
    if (P11->C_GetTokenInfo(slots[i], &ti) != CKR_OK)
      continue;
    size_t len = sizeof ti.label;
    while (len > 0 && ti.label[len - 1] == ' ')
      len--;
    if (len == want && memcmp(ti.label, KVPT.token, len) == 0) {
      *slot = slots[i];
      return true;
    }
  }
  return false;
}

static void free_certs(void)
{
  for (size_t i = 0; i < KVPT_NCERTS; i++) {
    X509_free(KVPT_CERTS[i].x509);
    EVP_PKEY_free(KVPT_CERTS[i].pkey);
  }
  memset(KVPT_CERTS, 0, sizeof KVPT_CERTS);
  KVPT_NCERTS = 0;
}

/* Quietly fills KVPT_CERTS; the object tests assert the details. */
static void load_cert(CK_SESSION_HANDLE h, const char *name, bool is_private)
{
  kvpt_cert *c = &KVPT_CERTS[KVPT_NCERTS++];
  size_t n;
  c->name = name;
  c->is_private = is_private;
  c->cert = kvpt_find_one(h, CKO_CERTIFICATE, name, &n);
  c->pub = kvpt_find_one(h, CKO_PUBLIC_KEY, name, &n);
  c->priv = kvpt_find_one(h, CKO_PRIVATE_KEY, name, &n);
  if (c->cert == CK_INVALID_HANDLE)
    return;
  CK_ULONG len;
  CK_RV rv;
  unsigned char *der = kvpt_attr(h, c->cert, CKA_VALUE, &len, &rv);
  if (!der)
    return;
  const unsigned char *p = der;
  c->x509 = d2i_X509(NULL, &p, (long)len);
  free(der);
  if (!c->x509)
    return;
  c->pkey = X509_get_pubkey(c->x509);
  if (!c->pkey)
    return;
  c->bits = EVP_PKEY_get_bits(c->pkey);
  if (EVP_PKEY_is_a(c->pkey, "RSA")) {
    c->is_rsa = true;
    c->sig_len = (size_t)EVP_PKEY_get_size(c->pkey);
  } else if (EVP_PKEY_is_a(c->pkey, "EC")) {
    c->is_ec = true;
    c->sig_len = 2 * (((size_t)c->bits + 7) / 8);
    c->ec_md = c->bits <= 256 ? EVP_sha256() : c->bits <= 384 ? EVP_sha384() : EVP_sha512();
    c->ec_mech = c->bits <= 256   ? CKM_ECDSA_SHA256
                 : c->bits <= 384 ? CKM_ECDSA_SHA384
                                  : CKM_ECDSA_SHA512;
  }
}

static CK_SESSION_HANDLE suite_session = CK_INVALID_HANDLE;

int kvpt_suite_init(void)
{
  CK_RV rv = kvpt_initialize();
  if (rv != CKR_OK) {
    fprintf(stderr, "suite init: C_Initialize: %s\n", kvpt_rv_name(rv));
    return 1;
  }
  if (!kvpt_find_slot(&KVPT_SLOT)) {
    fprintf(stderr, "suite init: no token labelled \"%s\"\n", KVPT.token);
    P11->C_Finalize(NULL);
    return 1;
  }
  /* One session stays open for the whole suite so a login made here lasts. */
  rv = P11->C_OpenSession(KVPT_SLOT, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL,
                          &suite_session);
  if (rv != CKR_OK) {
    fprintf(stderr, "suite init: C_OpenSession: %s\n", kvpt_rv_name(rv));
    P11->C_Finalize(NULL);
    return 1;
  }
  if (KVPT.pin) {
    rv = P11->C_Login(suite_session, CKU_USER, (CK_UTF8CHAR_PTR)KVPT.pin, strlen(KVPT.pin));
    if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN)
      fprintf(stderr, "suite init: C_Login: %s\n", kvpt_rv_name(rv));
  }
  free_certs();
  for (size_t i = 0; i < KVPT.nkeys && KVPT_NCERTS < KVPT_MAX_CERTS; i++)
    load_cert(suite_session, KVPT.keys[i], true);
  for (size_t i = 0; i < KVPT.npublics && KVPT_NCERTS < KVPT_MAX_CERTS; i++)
    load_cert(suite_session, KVPT.publics[i], false);
  return 0;
}

int kvpt_suite_cleanup(void)
{
  free_certs();
  suite_session = CK_INVALID_HANDLE;
  CK_RV rv = P11->C_Finalize(NULL);
  if (rv != CKR_OK)
    fprintf(stderr, "suite cleanup: C_Finalize: %s\n", kvpt_rv_name(rv));
  return rv == CKR_OK ? 0 : 1;
}

/* ---------------------------------------------------------------- sessions and objects */

CK_SESSION_HANDLE kvpt_open(bool rw)
{
  CK_SESSION_HANDLE h = CK_INVALID_HANDLE;
  CK_FLAGS flags = CKF_SERIAL_SESSION | (rw ? CKF_RW_SESSION : 0);
  CHECK_RV(P11->C_OpenSession(KVPT_SLOT, flags, NULL, NULL, &h), CKR_OK);
  return h;
}

void kvpt_close(CK_SESSION_HANDLE h)
{
  if (h != CK_INVALID_HANDLE)
    CHECK_RV(P11->C_CloseSession(h), CKR_OK);
}

void kvpt_login(CK_SESSION_HANDLE h)
{
  if (!KVPT.pin)
    return;
  CK_RV rv = P11->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR)KVPT.pin, strlen(KVPT.pin));
  CHECK(rv == CKR_OK || rv == CKR_USER_ALREADY_LOGGED_IN, "C_Login: %s", kvpt_rv_name(rv));
}

void kvpt_end_ops(CK_SESSION_HANDLE h)
{
  unsigned char in[64] = {0}, out[2048];
  CK_ULONG len = sizeof out;
  (void)P11->C_Sign(h, in, 32, out, &len);
  (void)P11->C_Verify(h, in, 32, out, 256);
  len = sizeof out;
  (void)P11->C_Decrypt(h, in, 64, out, &len);
  len = sizeof out;
  (void)P11->C_Encrypt(h, in, 16, out, &len);
  len = sizeof out;
  (void)P11->C_Digest(h, in, 16, out, &len);
  (void)P11->C_FindObjectsFinal(h);
}

size_t kvpt_find(CK_SESSION_HANDLE h, CK_ATTRIBUTE *tmpl, CK_ULONG n, CK_OBJECT_HANDLE *out,
                 size_t max)
{
  size_t total = 0;
  if (!CHECK_RV(P11->C_FindObjectsInit(h, tmpl, n), CKR_OK))
    return 0;
  for (;;) {
    CK_OBJECT_HANDLE buf[16];
    CK_ULONG got = 0;
    if (!CHECK_RV(P11->C_FindObjects(h, buf, KVPT_ARRAY_LEN(buf), &got), CKR_OK))
      break;
    if (got == 0)
      break;
    CHECK(got <= KVPT_ARRAY_LEN(buf), "C_FindObjects returned %lu > ulMaxObjectCount",
          (unsigned long)got);
    for (CK_ULONG i = 0; i < got && i < KVPT_ARRAY_LEN(buf); i++, total++)
      if (out && total < max)
        out[total] = buf[i];
    if (total > 100000)
      break;
  }
  CHECK_RV(P11->C_FindObjectsFinal(h), CKR_OK);
  return total;
}

CK_OBJECT_HANDLE kvpt_find_one(CK_SESSION_HANDLE h, CK_OBJECT_CLASS cls, const char *label,
                               size_t *count)
{
  CK_ATTRIBUTE t[] = {
      KVPT_ATTR(CKA_CLASS, &cls, sizeof cls),
      KVPT_ATTR(CKA_LABEL, (void *)label, strlen(label)),
  };
  CK_OBJECT_HANDLE o[4];
  *count = kvpt_find(h, t, 2, o, 4);
  return *count == 1 ? o[0] : CK_INVALID_HANDLE;
}

unsigned char *kvpt_attr(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE t,
                         CK_ULONG *len, CK_RV *rv)
{
  CK_ATTRIBUTE a = KVPT_ATTR(t, NULL, 0);
  *len = 0;
  *rv = P11->C_GetAttributeValue(h, o, &a, 1);
  if (*rv != CKR_OK || a.ulValueLen == CK_UNAVAILABLE_INFORMATION || a.ulValueLen > (1UL << 24))
    return NULL;
  unsigned char *buf = calloc(1, a.ulValueLen + 1);
  if (!buf)
    return NULL;
  a.pValue = buf;
  *rv = P11->C_GetAttributeValue(h, o, &a, 1);
  if (*rv != CKR_OK) {
    free(buf);
    return NULL;
  }
  *len = a.ulValueLen;
  return buf;
}

bool kvpt_attr_bool(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE t, CK_BBOOL *v)
{
  CK_ATTRIBUTE a = KVPT_ATTR(t, v, sizeof *v);
  return P11->C_GetAttributeValue(h, o, &a, 1) == CKR_OK && a.ulValueLen == sizeof *v;
}

bool kvpt_attr_ulong(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE t, CK_ULONG *v)
{
  CK_ATTRIBUTE a = KVPT_ATTR(t, v, sizeof *v);
  return P11->C_GetAttributeValue(h, o, &a, 1) == CKR_OK && a.ulValueLen == sizeof *v;
}

bool kvpt_mech_listed(CK_MECHANISM_TYPE t)
{
  CK_MECHANISM_TYPE list[256];
  CK_ULONG n = KVPT_ARRAY_LEN(list);
  if (P11->C_GetMechanismList(KVPT_SLOT, list, &n) != CKR_OK)
    return false;
  for (CK_ULONG i = 0; i < n && i < KVPT_ARRAY_LEN(list); i++)
    if (list[i] == t)
      return true;
  return false;
}

const kvpt_cert *kvpt_first_rsa(int bits)
{
  for (size_t i = 0; i < KVPT_NCERTS; i++)
    if (KVPT_CERTS[i].is_private && KVPT_CERTS[i].is_rsa &&
        KVPT_CERTS[i].priv != CK_INVALID_HANDLE && (bits == 0 || KVPT_CERTS[i].bits == bits))
      return &KVPT_CERTS[i];
  return NULL;
}

const kvpt_cert *kvpt_first_ec(int bits)
{
  for (size_t i = 0; i < KVPT_NCERTS; i++)
    if (KVPT_CERTS[i].is_private && KVPT_CERTS[i].is_ec &&
        KVPT_CERTS[i].priv != CK_INVALID_HANDLE && (bits == 0 || KVPT_CERTS[i].bits == bits))
      return &KVPT_CERTS[i];
  return NULL;
}

/* ---------------------------------------------------------------- crypto helpers */

size_t kvpt_digest_info(const EVP_MD *md, const unsigned char *dgst, size_t dlen,
                        unsigned char *out, size_t outlen)
{
  size_t ret = 0;
  X509_SIG *sig = X509_SIG_new();
  X509_ALGOR *alg = NULL;
  ASN1_OCTET_STRING *os = NULL;
  unsigned char *der = NULL;
  if (!sig)
    return 0;
  X509_SIG_getm(sig, &alg, &os);
  if (!X509_ALGOR_set0(alg, OBJ_nid2obj(EVP_MD_get_type(md)), V_ASN1_NULL, NULL) ||
      !ASN1_OCTET_STRING_set(os, dgst, (int)dlen))
    goto out;
  int len = i2d_X509_SIG(sig, &der);
  if (len > 0 && (size_t)len <= outlen) {
    memcpy(out, der, (size_t)len);
    ret = (size_t)len;
  }
out:
  OPENSSL_free(der);
  X509_SIG_free(sig);
  return ret;
}

size_t kvpt_hash(const EVP_MD *md, const unsigned char *msg, size_t len, unsigned char *out)
{
  unsigned int n = 0;
  if (!EVP_Digest(msg, len, out, &n, md, NULL))
    return 0;
  return n;
}

CK_MECHANISM_TYPE kvpt_hash_mech(const EVP_MD *md)
{
  switch (EVP_MD_get_type(md)) {
  case NID_sha1:
    return CKM_SHA_1;
  case NID_sha224:
    return CKM_SHA224;
  case NID_sha256:
    return CKM_SHA256;
  case NID_sha384:
    return CKM_SHA384;
  case NID_sha512:
    return CKM_SHA512;
  default:
    return CKM_VENDOR_DEFINED;
  }
}

CK_RSA_PKCS_MGF_TYPE kvpt_mgf(const EVP_MD *md)
{
  switch (EVP_MD_get_type(md)) {
  case NID_sha1:
    return CKG_MGF1_SHA1;
  case NID_sha224:
    return CKG_MGF1_SHA224;
  case NID_sha256:
    return CKG_MGF1_SHA256;
  case NID_sha384:
    return CKG_MGF1_SHA384;
  case NID_sha512:
    return CKG_MGF1_SHA512;
  default:
    return 0;
  }
}

/* r||s (each half of the buffer) to a DER ECDSA-Sig-Value. */
static unsigned char *ecdsa_raw_to_der(const unsigned char *sig, size_t slen, int *derlen)
{
  unsigned char *der = NULL;
  if (slen == 0 || slen % 2)
    return NULL;
  ECDSA_SIG *es = ECDSA_SIG_new();
  BIGNUM *r = BN_bin2bn(sig, (int)(slen / 2), NULL);
  BIGNUM *s = BN_bin2bn(sig + slen / 2, (int)(slen / 2), NULL);
  if (!es || !r || !s || !ECDSA_SIG_set0(es, r, s)) {
    BN_free(r);
    BN_free(s);
    ECDSA_SIG_free(es);
    return NULL;
  }
  *derlen = i2d_ECDSA_SIG(es, &der);
  ECDSA_SIG_free(es);
  return *derlen > 0 ? der : NULL;
}

bool kvpt_verify_digest(const kvpt_cert *c, char kind, const EVP_MD *md, const unsigned char *dgst,
                        size_t dlen, const unsigned char *sig, size_t slen)
{
  bool ok = false;
  unsigned char *der = NULL;
  if (!c || !c->pkey)
    return false;
  EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(c->pkey, NULL);
  if (!ctx)
    return false;
  if (kind == 'r') {
    unsigned char rec[1024];
    size_t rlen = sizeof rec;
    if (EVP_PKEY_verify_recover_init(ctx) <= 0 ||
        EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) <= 0 ||
        EVP_PKEY_verify_recover(ctx, rec, &rlen, sig, slen) <= 0)
      goto out;
    ok = rlen == dlen && memcmp(rec, dgst, dlen) == 0;
    goto out;
  }
  if (EVP_PKEY_verify_init(ctx) <= 0)
    goto out;
  if (kind == 'p') {
    if (EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) <= 0 ||
        EVP_PKEY_CTX_set_signature_md(ctx, md) <= 0)
      goto out;
  } else if (kind == 's') {
    if (EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PSS_PADDING) <= 0 ||
        EVP_PKEY_CTX_set_signature_md(ctx, md) <= 0 || EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, md) <= 0 ||
        EVP_PKEY_CTX_set_rsa_pss_saltlen(ctx, EVP_MD_get_size(md)) <= 0)
      goto out;
  } else if (kind == 'e') {
    if (!c->is_ec || slen != c->sig_len)
      goto out;
    int derlen = 0;
    der = ecdsa_raw_to_der(sig, slen, &derlen);
    if (!der)
      goto out;
    sig = der;
    slen = (size_t)derlen;
  } else {
    goto out;
  }
  ok = EVP_PKEY_verify(ctx, sig, slen, dgst, dlen) == 1;
out:
  OPENSSL_free(der);
  EVP_PKEY_CTX_free(ctx);
  return ok;
}

bool kvpt_verify_msg(const kvpt_cert *c, char kind, const EVP_MD *md, const unsigned char *msg,
                     size_t mlen, const unsigned char *sig, size_t slen)
{
  unsigned char d[EVP_MAX_MD_SIZE];
  size_t dlen = kvpt_hash(md, msg, mlen, d);
  return dlen > 0 && kvpt_verify_digest(c, kind, md, d, dlen, sig, slen);
}

size_t kvpt_rsa_encrypt(const kvpt_cert *c, char kind, const EVP_MD *md, const unsigned char *in,
                        size_t inlen, unsigned char *out, size_t outlen)
{
  size_t ret = 0;
  EVP_PKEY_CTX *ctx = c && c->pkey ? EVP_PKEY_CTX_new(c->pkey, NULL) : NULL;
  if (!ctx || EVP_PKEY_encrypt_init(ctx) <= 0)
    goto out;
  if (kind == 'p') {
    if (EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) <= 0)
      goto out;
  } else {
    if (EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING) <= 0 ||
        EVP_PKEY_CTX_set_rsa_oaep_md(ctx, md) <= 0 || EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, md) <= 0)
      goto out;
  }
  size_t n = outlen;
  if (EVP_PKEY_encrypt(ctx, out, &n, in, inlen) > 0)
    ret = n;
out:
  EVP_PKEY_CTX_free(ctx);
  return ret;
}

/* ---------------------------------------------------------------- assertions */

/* CUnit asserts only inside a test; suite init/cleanup just print what went wrong. */
static void record(bool ok, unsigned line, const char *msg, const char *file, const char *func)
{
  if (CU_get_current_test())
    CU_assertImplementation(ok ? CU_TRUE : CU_FALSE, line, msg, file, func, CU_FALSE);
  else if (!ok)
    fprintf(stderr, "%s:%u: %s\n", file, line, msg);
}

#define RV(x)                                                                                      \
  {                                                                                                \
    x, #x                                                                                          \
  }
static const struct {
  CK_RV rv;
  const char *name;
} rv_names[] = {
    RV(CKR_OK),
    RV(CKR_CANCEL),
    RV(CKR_HOST_MEMORY),
    RV(CKR_SLOT_ID_INVALID),
    RV(CKR_GENERAL_ERROR),
    RV(CKR_FUNCTION_FAILED),
    RV(CKR_ARGUMENTS_BAD),
    RV(CKR_NO_EVENT),
    RV(CKR_NEED_TO_CREATE_THREADS),
    RV(CKR_CANT_LOCK),
    RV(CKR_ATTRIBUTE_READ_ONLY),
    RV(CKR_ATTRIBUTE_SENSITIVE),
    RV(CKR_ATTRIBUTE_TYPE_INVALID),
    RV(CKR_ATTRIBUTE_VALUE_INVALID),
    RV(CKR_ACTION_PROHIBITED),
    RV(CKR_DATA_INVALID),
    RV(CKR_DATA_LEN_RANGE),
    RV(CKR_DEVICE_ERROR),
    RV(CKR_DEVICE_MEMORY),
    RV(CKR_DEVICE_REMOVED),
    RV(CKR_ENCRYPTED_DATA_INVALID),
    RV(CKR_ENCRYPTED_DATA_LEN_RANGE),
    RV(CKR_FUNCTION_CANCELED),
    RV(CKR_FUNCTION_NOT_PARALLEL),
    RV(CKR_FUNCTION_NOT_SUPPORTED),
    RV(CKR_KEY_HANDLE_INVALID),
    RV(CKR_KEY_SIZE_RANGE),
    RV(CKR_KEY_TYPE_INCONSISTENT),
    RV(CKR_KEY_NOT_NEEDED),
    RV(CKR_KEY_CHANGED),
    RV(CKR_KEY_NEEDED),
    RV(CKR_KEY_INDIGESTIBLE),
    RV(CKR_KEY_FUNCTION_NOT_PERMITTED),
    RV(CKR_KEY_NOT_WRAPPABLE),
    RV(CKR_KEY_UNEXTRACTABLE),
    RV(CKR_MECHANISM_INVALID),
    RV(CKR_MECHANISM_PARAM_INVALID),
    RV(CKR_OBJECT_HANDLE_INVALID),
    RV(CKR_OPERATION_ACTIVE),
    RV(CKR_OPERATION_NOT_INITIALIZED),
    RV(CKR_PIN_INCORRECT),
    RV(CKR_PIN_INVALID),
    RV(CKR_PIN_LEN_RANGE),
    RV(CKR_PIN_EXPIRED),
    RV(CKR_PIN_LOCKED),
    RV(CKR_SESSION_CLOSED),
    RV(CKR_SESSION_COUNT),
    RV(CKR_SESSION_HANDLE_INVALID),
    RV(CKR_SESSION_PARALLEL_NOT_SUPPORTED),
    RV(CKR_SESSION_READ_ONLY),
    RV(CKR_SESSION_EXISTS),
    RV(CKR_SESSION_READ_ONLY_EXISTS),
    RV(CKR_SESSION_READ_WRITE_SO_EXISTS),
    RV(CKR_SIGNATURE_INVALID),
    RV(CKR_SIGNATURE_LEN_RANGE),
    RV(CKR_TEMPLATE_INCOMPLETE),
    RV(CKR_TEMPLATE_INCONSISTENT),
    RV(CKR_TOKEN_NOT_PRESENT),
    RV(CKR_TOKEN_NOT_RECOGNIZED),
    RV(CKR_TOKEN_WRITE_PROTECTED),
    RV(CKR_UNWRAPPING_KEY_HANDLE_INVALID),
    RV(CKR_UNWRAPPING_KEY_SIZE_RANGE),
    RV(CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT),
    RV(CKR_USER_ALREADY_LOGGED_IN),
    RV(CKR_USER_NOT_LOGGED_IN),
    RV(CKR_USER_PIN_NOT_INITIALIZED),
    RV(CKR_USER_TYPE_INVALID),
    RV(CKR_USER_ANOTHER_ALREADY_LOGGED_IN),
    RV(CKR_USER_TOO_MANY_TYPES),
    RV(CKR_WRAPPED_KEY_INVALID),
    RV(CKR_WRAPPED_KEY_LEN_RANGE),
    RV(CKR_WRAPPING_KEY_HANDLE_INVALID),
    RV(CKR_WRAPPING_KEY_SIZE_RANGE),
    RV(CKR_WRAPPING_KEY_TYPE_INCONSISTENT),
    RV(CKR_RANDOM_SEED_NOT_SUPPORTED),
    RV(CKR_RANDOM_NO_RNG),
    RV(CKR_DOMAIN_PARAMS_INVALID),
    RV(CKR_CURVE_NOT_SUPPORTED),
    RV(CKR_BUFFER_TOO_SMALL),
    RV(CKR_SAVED_STATE_INVALID),
    RV(CKR_INFORMATION_SENSITIVE),
    RV(CKR_STATE_UNSAVEABLE),
    RV(CKR_CRYPTOKI_NOT_INITIALIZED),
    RV(CKR_CRYPTOKI_ALREADY_INITIALIZED),
    RV(CKR_MUTEX_BAD),
    RV(CKR_MUTEX_NOT_LOCKED),
    RV(CKR_FUNCTION_REJECTED),
};
#undef RV

const char *kvpt_rv_name(CK_RV rv)
{
  static _Thread_local char buf[32];
  for (size_t i = 0; i < KVPT_ARRAY_LEN(rv_names); i++)
    if (rv_names[i].rv == rv)
      return rv_names[i].name;
  snprintf(buf, sizeof buf, "0x%08lx", (unsigned long)rv);
  return buf;
}

bool kvpt_check_rv(CK_RV got, CK_RV want, const char *expr, unsigned line, const char *file,
                   const char *func)
{
  char msg[768];
  snprintf(msg, sizeof msg, "%s: expected %s, got %s", expr, kvpt_rv_name(want), kvpt_rv_name(got));
  record(got == want, line, msg, file, func);
  return got == want;
}

bool kvpt_check_rv_in(CK_RV got, const CK_RV *set, size_t n, const char *expr, unsigned line,
                      const char *file, const char *func)
{
  bool ok = false;
  char msg[1024];
  size_t off = (size_t)snprintf(msg, sizeof msg, "%s: expected one of {", expr);
  for (size_t i = 0; i < n; i++) {
    if (set[i] == got)
      ok = true;
    if (off < sizeof msg)
      off += (size_t)snprintf(msg + off, sizeof msg - off, "%s%s", i ? ", " : "",
                              kvpt_rv_name(set[i]));
  }
  if (off < sizeof msg)
    snprintf(msg + off, sizeof msg - off, "}, got %s", kvpt_rv_name(got));
  record(ok, line, msg, file, func);
  return ok;
}

bool kvpt_check(bool cond, unsigned line, const char *file, const char *func, const char *fmt, ...)
{
  char msg[768];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  record(cond, line, msg, file, func);
  return cond;
}

void kvpt_add_suite(const char *name, CU_InitializeFunc init, CU_CleanupFunc cleanup,
                    const kvpt_test *tests, size_t n)
{
  CU_pSuite s = CU_add_suite(name, init, cleanup);
  if (!s) {
    fprintf(stderr, "CU_add_suite %s: %s\n", name, CU_get_error_msg());
    return;
  }
  for (size_t i = 0; i < n; i++)
    if (!CU_add_test(s, tests[i].name, tests[i].fn))
      fprintf(stderr, "CU_add_test %s: %s\n", tests[i].name, CU_get_error_msg());
}
