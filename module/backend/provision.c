/* One provisioning path for the tool and the module: see provision.h. */
#include "backend/provision.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/x509.h>

#include "core/log.h"
#include "core/p11names.h"
#include "core/status.h"
#include "core/util.h"

CK_RV kvp_prov_reg_rv(int rc, const char *err)
{
  CK_RV rv;
  switch (rc) {
  case KVP_OK: return CKR_OK;
  case KVP_ENOMEM: rv = CKR_HOST_MEMORY; break;
  case KVP_EPERM: rv = CKR_TOKEN_WRITE_PROTECTED; break;
  case KVP_EEXISTS:
  case KVP_EINVAL: rv = CKR_ATTRIBUTE_VALUE_INVALID; break;
  default: rv = CKR_DEVICE_ERROR; break;
  }
  return kvp_fail(rv, "%s", err && *err ? err : "registry failure");
}

CK_RV kvp_prov_name_free(kvp_registry *reg, const char *account, const char *name)
{
  char err[KVP_ERRLEN] = "";
  kvp_cert_rec old = {0};
  int rc = kvp_registry_get(reg, account, name, &old, err, sizeof(err));
  kvp_cert_rec_clear(&old);
  if (rc == KVP_ENOTFOUND)
    return CKR_OK;
  if (rc == KVP_OK)
    return kvp_fail_at(KVP_LOG_INFO, CKR_ATTRIBUTE_VALUE_INVALID,
                       "account '%s' has an entry named '%s' already", account, name);
  return kvp_prov_reg_rv(rc, err);
}

CK_RV kvp_prov_key_row(const kvp_key *key, const char *account, const char *name,
                       const char *key_ref, const unsigned char *ckid, size_t ckid_len,
                       kvp_cert_rec *rec)
{
  unsigned char *spki = NULL;
  int spki_len = key->pub ? i2d_PUBKEY(key->pub, &spki) : -1;

  memset(rec, 0, sizeof(*rec));
  rec->account = strdup(account);
  rec->name = strdup(name);
  rec->type = KVP_CERT_PRIVATE;
  rec->subject = strdup("");
  rec->issuer = strdup("");
  rec->serial = strdup("");
  rec->key_ref = strdup(key_ref);
  rec->key_version = kvp_strdup0(key->version);
  if (spki_len > 0 && (rec->spki = malloc((size_t)spki_len)) != NULL) {
    memcpy(rec->spki, spki, (size_t)spki_len);
    rec->spki_len = (size_t)spki_len;
  }
  OPENSSL_free(spki);
  if (ckid && ckid_len && (rec->ckid = malloc(ckid_len)) != NULL) {
    memcpy(rec->ckid, ckid, ckid_len);
    rec->ckid_len = ckid_len;
  }
  if (!rec->account || !rec->name || !rec->subject || !rec->issuer || !rec->serial ||
      !rec->key_ref || (key->version && !rec->key_version) || !rec->spki ||
      (ckid && ckid_len && !rec->ckid)) {
    kvp_cert_rec_clear(rec);
    return kvp_fail(spki_len <= 0 ? CKR_GENERAL_ERROR : CKR_HOST_MEMORY,
                    spki_len <= 0 ? "key '%s': no public key to register" : "out of memory", name);
  }
  return CKR_OK;
}

CK_RV kvp_prov_register(kvp_registry *reg, const kvp_cert_rec *rec, int64_t *id)
{
  char err[KVP_ERRLEN] = "";
  kvp_cert_rec got = {0};
  int rc = kvp_registry_add(reg, rec, 0, err, sizeof(err));
  if (rc == KVP_OK && id)
    rc = kvp_registry_get(reg, rec->account, rec->name, &got, err, sizeof(err));
  if (rc != KVP_OK) {
    char why[2 * KVP_ERRLEN];
    snprintf(why, sizeof(why), "registering '%s' failed: %s", rec->name, err);
    return kvp_prov_reg_rv(rc, why);
  }
  if (id)
    *id = got.id;
  kvp_cert_rec_clear(&got);
  return CKR_OK;
}

CK_RV kvp_prov_undo(kvp_backend *be, const char *keyname)
{
  /* the registration's reason, recorded first, stays the one shown */
  CK_RV rv = be->ops->delete_key ? be->ops->delete_key(be, keyname) : CKR_FUNCTION_NOT_SUPPORTED;
  if (rv != CKR_OK)
    KVP_ERROR("key '%s' was made in %s '%s' but could not be registered nor deleted (%s); "
              "remove it with `kvp11 key delete`",
              keyname, be->ops->scheme, be->name, kvp_ckr_name(rv));
  return rv;
}
