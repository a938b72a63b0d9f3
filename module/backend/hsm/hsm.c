/*
 * The "hsm" backend: a proxy to another PKCS#11 module (SoftHSM2 in tests,
 * tpm2-pkcs11 on a TPM, a Luna / YubiHSM module on appliances), loaded with
 * dlopen(). This file holds the ops table, the constructor, destroy and the
 * sign / decrypt entry points (mechanism parameters); the rest is split by
 * concern (hsm_internal.h lists the files, README.md the rules).
 *
 * Life cycle
 *   kvp_hsm_backend_new() only copies the configuration. The first open_key()
 *   (or login()) loads the module, C_Initialize()s it with CKF_OS_LOCKING_OK,
 *   finds the token by label or serial (slot ids are not stable), opens one
 *   "anchor" session that lives as long as the backend (PKCS#11 drops the
 *   login state when the last session of the application closes) and, with
 *   a configured PIN, logs in on it (hsm_module.c, hsm_login.c).
 *
 * Locks (none of the front's is held while a backend function runs)
 *   init_lock  the lazy initialization, and every C_Login / C_Logout /
 *              C_GetTokenInfo of a login (rare); held across those HSM calls.
 *   sess_lock  every C_OpenSession / C_CloseSession of ours; held across
 *              those HSM calls (some modules open sessions without a lock).
 *   pool_lock  a few instructions: pop / push an idle session, the counts
 *              (with pool_cond to wait at the token's session limit).
 *   prov_lock  one provisioning call at a time; held across its HSM calls,
 *              never taken by open_key, sign, decrypt, login or logout.
 *   g_mods_lock, g_login_lock  process-wide tables, a few instructions.
 *   C_SignInit / C_Sign / C_DecryptInit / C_Decrypt run with no lock held:
 *   N threads have N operations in flight in the HSM. Keys: the cached
 *   private handle, its login generation and "checked" are atomics.
 *
 * Fork
 *   destroy(be, forked != 0) frees memory only; see hsm_module.c for the
 *   child's re-initialization.
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/x509.h>

#include "backend/backend.h"
#include "backend/hsm/hsm_internal.h"
#include "core/config.h"
#include "core/log.h"
#include "core/p11names.h"
#include "core/status.h"
#include "core/util.h"

/* Arguments are checked, and the error queue kept, by kvp_backend_sign(). */
static CK_RV hsm_sign(kvp_backend *bep, kvp_key *key, const kvp_sig_alg *alg, const CK_BYTE *digest,
                      CK_ULONG digest_len, CK_BYTE *sig, CK_ULONG *sig_len)
{
  kvp_hsm_backend *be = kvp_hsm_of(bep);
  kvp_hsm_key *k = key->impl;
  CK_MECHANISM mech = {CKM_RSA_PKCS, NULL, 0};
  CK_RSA_PKCS_PSS_PARAMS pss;
  unsigned char buf[128];
  const CK_BYTE *in = digest;
  CK_ULONG in_len = digest_len;
  size_t di_len = 0;

  switch (alg->scheme) {
  case KVP_SIG_RSA_PKCS1:
    if (k->key.type != KVP_KEY_RSA)
      return CKR_KEY_TYPE_INCONSISTENT;
    if (alg->hash == KVP_HASH_NONE) {
      if (digest_len + 11 > k->out_len) /* PKCS#1 v1.5 needs 11 bytes of padding */
        return CKR_DATA_LEN_RANGE;
    } else {
      if (kvp_hash_md(alg->hash) == NULL)
        return CKR_MECHANISM_PARAM_INVALID;
      if (!kvp_digestinfo_build(alg->hash, digest, digest_len, buf, sizeof(buf), &di_len))
        return CKR_DATA_LEN_RANGE;
      in = buf;
      in_len = (CK_ULONG)di_len;
    }
    break;
  case KVP_SIG_RSA_PSS:
    if (k->key.type != KVP_KEY_RSA)
      return CKR_KEY_TYPE_INCONSISTENT;
    pss.hashAlg = kvp_hash_ckm(alg->hash);
    pss.mgf = kvp_hash_mgf(alg->mgf1);
    pss.sLen = (CK_ULONG)alg->salt_len;
    if (pss.hashAlg == CK_UNAVAILABLE_INFORMATION || pss.mgf == 0)
      return CKR_MECHANISM_PARAM_INVALID;
    mech.mechanism = CKM_RSA_PKCS_PSS;
    mech.pParameter = &pss;
    mech.ulParameterLen = sizeof(pss);
    break;
  case KVP_SIG_ECDSA:
    if (k->key.type != KVP_KEY_EC)
      return CKR_KEY_TYPE_INCONSISTENT;
    mech.mechanism = CKM_ECDSA;
    break;
  default:
    return CKR_MECHANISM_INVALID;
  }
  *sig_len = k->out_len;
  CK_RV rv = kvp_hsm_run_op(be, k, KVP_HSM_OP_SIGN, &mech, in, in_len, sig, sig_len, 0);
  if (rv == CKR_OK)
    rv = kvp_hsm_check_sig(be, k, alg, digest, digest_len, sig, *sig_len);
  if (rv != CKR_OK)
    OPENSSL_cleanse(sig, k->out_len);
  return rv;
}

/* Arguments are checked, and the error queue kept, by kvp_backend_decrypt(). */
static CK_RV hsm_decrypt(kvp_backend *bep, kvp_key *key, const kvp_dec_alg *alg, const CK_BYTE *in,
                         CK_ULONG in_len, CK_BYTE *out, CK_ULONG *out_len)
{
  kvp_hsm_backend *be = kvp_hsm_of(bep);
  kvp_hsm_key *k = key->impl;
  CK_MECHANISM mech = {CKM_RSA_PKCS, NULL, 0};
  CK_RSA_PKCS_OAEP_PARAMS oaep;

  if (k->key.type != KVP_KEY_RSA)
    return CKR_KEY_TYPE_INCONSISTENT;
  if (in_len != k->out_len) /* RSA ciphertexts are exactly the modulus length */
    return CKR_ENCRYPTED_DATA_LEN_RANGE;
  switch (alg->scheme) {
  case KVP_DEC_RSA_PKCS1:
    break;
  case KVP_DEC_RSA_OAEP:
    oaep.hashAlg = kvp_hash_ckm(alg->hash);
    oaep.mgf = kvp_hash_mgf(alg->mgf1);
    oaep.source = CKZ_DATA_SPECIFIED;
    oaep.pSourceData = NULL;
    oaep.ulSourceDataLen = 0;
    if (oaep.hashAlg == CK_UNAVAILABLE_INFORMATION || oaep.mgf == 0)
      return CKR_MECHANISM_PARAM_INVALID;
    mech.mechanism = CKM_RSA_PKCS_OAEP;
    mech.pParameter = &oaep;
    mech.ulParameterLen = sizeof(oaep);
    break;
  default:
    return CKR_MECHANISM_INVALID;
  }
  if (alg->scheme == KVP_DEC_RSA_OAEP &&
      (atomic_load(&be->oaep_local) & (1u << (unsigned)alg->hash)) != 0)
    return kvp_hsm_decrypt_oaep_local(be, k, alg, in, in_len, out, out_len);
  *out_len = k->out_len;
  CK_RV rv = kvp_hsm_run_op(be, k, KVP_HSM_OP_DECRYPT, &mech, in, in_len, out, out_len,
                            alg->scheme == KVP_DEC_RSA_OAEP);
  if (rv != KVP_HSM_REFUSED)
    return rv;
  KVP_INFO("hsm %s: the HSM refuses CKM_RSA_PKCS_OAEP with %s; decoding OAEP locally over "
           "CKM_RSA_X_509",
           be->base.name, kvp_hash_name(alg->hash));
  atomic_fetch_or(&be->oaep_local, 1u << (unsigned)alg->hash);
  return kvp_hsm_decrypt_oaep_local(be, k, alg, in, in_len, out, out_len);
}

/* The front passes the registered certificate's public key: it picks the
 * key pair among objects that share a label, and refuses a pair that is
 * another key (hsm_key.c). */
static CK_RV hsm_open_key_hint(kvp_backend *bep, const char *name, const kvp_key_ref_hint *hint,
                               kvp_key **out)
{
  EVP_PKEY *want = NULL;
  if (hint != NULL && hint->spki != NULL && hint->spki_len > 0) {
    const unsigned char *p = hint->spki;
    want = d2i_PUBKEY(NULL, &p, (long)hint->spki_len);
    if (want == NULL || p != hint->spki + hint->spki_len)
      KVP_WARN("hsm %s: key '%s': the registered public key does not parse; not compared",
               bep->name, name ? name : "?");
  }
  CK_RV rv = kvp_hsm_open_key_want(bep, name, want, out);
  EVP_PKEY_free(want);
  return rv;
}

static int hsm_needs_login(kvp_backend *bep)
{
  return kvp_hsm_of(bep)->has_pin ? 0 : 1;
}

static void hsm_destroy(kvp_backend *bep, int forked)
{
  kvp_hsm_backend *be = kvp_hsm_of(bep);
  if (be == NULL)
    return;
  if (!forked && atomic_load(&be->ready)) {
    ERR_set_mark();
    kvp_hsm_pool_close_all(be);
    kvp_hsm_unload_locked(be);
    ERR_pop_to_mark();
  }
  /* forked: the module, its sessions and its init record belong to the
   * parent's HSM state; leave them alone (no dlclose either: the child's next
   * backend finds the module still mapped and re-initializes it). Our mutexes
   * may have been copied in a locked state (another parent thread was inside
   * them at fork time): they are not touched, only freed with the struct. */
  if (!forked) {
    pthread_mutex_destroy(&be->pool_lock);
    pthread_cond_destroy(&be->pool_cond);
    pthread_mutex_destroy(&be->sess_lock);
    pthread_mutex_destroy(&be->init_lock);
    pthread_mutex_destroy(&be->prov_lock);
  }
  KVP_FREE_ALL(be->busy, be->base.name, be->module, be->token_label, be->serial, be->pin_file,
               be->pin_env, be);
}

static const kvp_backend_ops hsm_ops = {
    .scheme = "hsm",
    .open_key = kvp_hsm_open_key,
    .close_key = kvp_hsm_close_key,
    .open_key_hint = hsm_open_key_hint,
    .sign = hsm_sign,
    .decrypt = hsm_decrypt,
    .needs_login = hsm_needs_login,
    .login = kvp_hsm_login,
    .logout = kvp_hsm_logout,
    .create_key = kvp_hsm_create_key,
    .create_session_key = kvp_hsm_create_session_key,
    .import_key = kvp_hsm_import_key,
    .delete_key = kvp_hsm_delete_key,
    .list_keys = kvp_hsm_list_keys,
    .key_info = kvp_hsm_key_info,
    .destroy = hsm_destroy,
};

static int dup_field(char **dst, const char *src)
{
  if (src == NULL)
    return 1;
  *dst = strdup(src);
  return *dst != NULL;
}

CK_RV kvp_hsm_backend_new(const kvp_hsm_conf *conf, kvp_backend **out)
{
  if (conf == NULL || out == NULL || conf->module == NULL ||
      (conf->token_label == NULL && conf->serial == NULL))
    return CKR_ARGUMENTS_BAD;
  *out = NULL;
  kvp_hsm_mods_once();
  kvp_hsm_backend *be = calloc(1, sizeof(*be));
  if (be == NULL)
    return CKR_HOST_MEMORY;
  be->base.ops = &hsm_ops;
  be->conf_line = conf->line;
  be->has_pin = conf->pin_file != NULL || conf->pin_env != NULL;
  be->anchor = CK_INVALID_HANDLE;
  atomic_init(&be->ready, 0);
  atomic_init(&be->logged_in, 0);
  atomic_init(&be->login_gen, 1);
  atomic_init(&be->oaep_local, 0);
  pthread_mutex_init(&be->init_lock, NULL);
  pthread_mutex_init(&be->pool_lock, NULL);
  pthread_cond_init(&be->pool_cond, NULL);
  pthread_mutex_init(&be->sess_lock, NULL);
  pthread_mutex_init(&be->prov_lock, NULL);
  if (!dup_field(&be->base.name, conf->name ? conf->name : "hsm") ||
      !dup_field(&be->module, conf->module) || !dup_field(&be->token_label, conf->token_label) ||
      !dup_field(&be->serial, conf->serial) || !dup_field(&be->pin_file, conf->pin_file) ||
      !dup_field(&be->pin_env, conf->pin_env) || !kvp_hsm_login_setup(be)) {
    hsm_destroy(&be->base, 0); /* not initialized: no HSM calls */
    return CKR_HOST_MEMORY;
  }
  *out = &be->base;
  return CKR_OK;
}
