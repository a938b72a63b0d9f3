/* The counting / error-injecting PKCS#11 module of the HSM tests: see p11shim.h. */
#include <dlfcn.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <p11-kit/pkcs11.h>

#include "p11shim.h"

#define EXPORT __attribute__((visibility("default")))

static kvp11_shim_ctl g_ctl;
static CK_FUNCTION_LIST g_list;
static CK_FUNCTION_LIST_PTR g_real;
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;

EXPORT kvp11_shim_ctl *kvp11_shim(void) { return &g_ctl; }

static void noise(void) {
  if (__atomic_load_n(&g_ctl.push_ossl_error, __ATOMIC_RELAXED))
    ERR_raise_data(ERR_LIB_USER, 77, "p11shim: an error the HSM module left behind");
}

static CK_RV shim_Initialize(CK_VOID_PTR args) {
  __atomic_add_fetch(&g_ctl.initializes, 1, __ATOMIC_SEQ_CST);
  noise();
  if (g_ctl.init_fail_rv != CKR_OK)
    return g_ctl.init_fail_rv;
  return g_real->C_Initialize(args);
}

static CK_RV shim_GetTokenInfo(CK_SLOT_ID slot, CK_TOKEN_INFO_PTR ti) {
  noise();
  CK_RV rv = g_real->C_GetTokenInfo(slot, ti);
  if (rv == CKR_OK) {
    ti->flags |= g_ctl.add_flags;
    if (g_ctl.max_sessions > 0)
      ti->ulMaxSessionCount = g_ctl.max_sessions;
  }
  return rv;
}

static CK_RV shim_OpenSession(CK_SLOT_ID slot, CK_FLAGS flags, CK_VOID_PTR app, CK_NOTIFY cb,
                              CK_SESSION_HANDLE_PTR out) {
  noise();
  pthread_mutex_lock(&g_lock);
  g_ctl.opens++;
  if (g_ctl.max_sessions > 0 && (unsigned long)g_ctl.open_now >= g_ctl.max_sessions) {
    pthread_mutex_unlock(&g_lock);
    return CKR_SESSION_COUNT;
  }
  CK_RV rv = g_real->C_OpenSession(slot, flags, app, cb, out);
  if (rv == CKR_OK && ++g_ctl.open_now > g_ctl.open_max)
    g_ctl.open_max = g_ctl.open_now;
  pthread_mutex_unlock(&g_lock);
  return rv;
}

static CK_RV shim_CloseSession(CK_SESSION_HANDLE s) {
  pthread_mutex_lock(&g_lock);
  g_ctl.closes++;
  if (g_ctl.stale_session != 0 && s == g_ctl.stale_session)
    g_ctl.closed_stale++;
  CK_RV rv = g_real->C_CloseSession(s);
  if (rv == CKR_OK)
    g_ctl.open_now--;
  pthread_mutex_unlock(&g_lock);
  return rv;
}

static CK_RV shim_CloseAllSessions(CK_SLOT_ID slot) {
  pthread_mutex_lock(&g_lock);
  CK_RV rv = g_real->C_CloseAllSessions(slot);
  if (rv == CKR_OK)
    g_ctl.open_now = 0;
  pthread_mutex_unlock(&g_lock);
  return rv;
}

static CK_RV shim_Login(CK_SESSION_HANDLE s, CK_USER_TYPE u, CK_UTF8CHAR_PTR pin, CK_ULONG len) {
  __atomic_add_fetch(&g_ctl.logins, 1, __ATOMIC_SEQ_CST);
  noise();
  return g_real->C_Login(s, u, pin, len);
}

static CK_RV shim_Sign(CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR sig,
                       CK_ULONG_PTR sig_len) {
  noise();
  if (__atomic_load_n(&g_ctl.sign_fail_count, __ATOMIC_SEQ_CST) > 0 &&
      __atomic_sub_fetch(&g_ctl.sign_fail_count, 1, __ATOMIC_SEQ_CST) >= 0) {
    g_ctl.stale_session = s;
    return g_ctl.sign_fail_rv;
  }
  return g_real->C_Sign(s, in, in_len, sig, sig_len);
}

static CK_RV shim_GenerateKeyPair(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_ATTRIBUTE_PTR pub,
                                  CK_ULONG n_pub, CK_ATTRIBUTE_PTR priv, CK_ULONG n_priv,
                                  CK_OBJECT_HANDLE_PTR hpub, CK_OBJECT_HANDLE_PTR hpriv) {
  for (CK_ULONG i = 0; g_ctl.refuse_pub_usage && i < n_pub; i++)
    if (pub[i].type == CKA_VERIFY || pub[i].type == CKA_ENCRYPT)
      return CKR_DEVICE_ERROR; /* tpm2-pkcs11 1.9: "attr mismatch" */
  return g_real->C_GenerateKeyPair(s, m, pub, n_pub, priv, n_priv, hpub, hpriv);
}

EXPORT CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR out) {
  if (out == NULL)
    return CKR_ARGUMENTS_BAD;
  pthread_mutex_lock(&g_lock);
  if (g_real == NULL) {
    const char *target = getenv("KVP11_SHIM_TARGET");
    void *dl = target ? dlopen(target, RTLD_NOW | RTLD_LOCAL) : NULL;
    void *sym = dl ? dlsym(dl, "C_GetFunctionList") : NULL;
    CK_C_GetFunctionList gfl;
    memcpy(&gfl, &sym, sizeof(gfl));
    if (gfl == NULL || gfl(&g_real) != CKR_OK) {
      g_real = NULL;
      pthread_mutex_unlock(&g_lock);
      return CKR_GENERAL_ERROR;
    }
    g_list = *g_real;
    g_list.C_Initialize = shim_Initialize;
    g_list.C_GetTokenInfo = shim_GetTokenInfo;
    g_list.C_OpenSession = shim_OpenSession;
    g_list.C_CloseSession = shim_CloseSession;
    g_list.C_CloseAllSessions = shim_CloseAllSessions;
    g_list.C_Login = shim_Login;
    g_list.C_Sign = shim_Sign;
    g_list.C_GenerateKeyPair = shim_GenerateKeyPair;
  }
  pthread_mutex_unlock(&g_lock);
  *out = &g_list;
  return CKR_OK;
}
