/*
 * Key provisioning in Key Vault: create (POST /keys/NAME/create), import
 * (PUT /keys/NAME with the private JWK), delete (DELETE /keys/NAME, soft
 * delete), list (GET /keys with nextLink, then one GET per key) and show.
 *
 * kvp11 never replaces a key: create and import first GET the name and stop
 * when it exists (Key Vault itself would add a new version). Requests go
 * through kv_call(), so retries, token refresh and the mapping of Key Vault's
 * answers to CK_RV stay in one place.
 *
 * Import handles private key material. Every buffer that holds some of it
 * (BIGNUMs, their big-endian bytes, the base64url text, the JSON body) is
 * owned here and wiped before it is freed; the body is written with
 * snprintf, not jansson, so no copy goes to an allocator kvp11 does not
 * control. kv_http.c hands the body to libcurl with CURLOPT_POSTFIELDS (no
 * copy of ours); what libcurl copies into its request buffer goes through
 * the wiping allocator of kv_http.c.
 */
#include "backend/keyvault/kv.h"
#include "backend/keyvault/keyvault.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/obj_mac.h>

#include "core/cert.h"
#include "core/log.h"
#include "core/status.h"
#include "core/util.h"

static CK_RV kv_name_check(kv_backend *b, const char *name, const char *what)
{
  if (kvp_keyvault_name_valid(name))
    return CKR_OK;
  return kvp_fail(CKR_ATTRIBUTE_VALUE_INVALID,
                  "vault %s: %s: '%.140s%s' is not a valid Key Vault key name (1 to 127 letters, "
                  "digits and '-')",
                  b->conf.name, what, name != NULL ? name : "",
                  name != NULL && strlen(name) > 140 ? "..." : "");
}

/* "<base>/keys/NAME<suffix>?api-version=V" (malloc'd) */
static char *kv_key_url(kv_backend *b, const char *name, const char *suffix)
{
  size_t len =
      strlen(b->base_url) + strlen(name) + strlen(suffix) + strlen(b->conf.api_version) + 32;
  char *url = malloc(len);
  if (url != NULL)
    snprintf(url, len, "%s/keys/%s%s?api-version=%s", b->base_url, name, suffix,
             b->conf.api_version);
  return url;
}

/* GET /keys/NAME. CKR_OK with *exists set (and resp holding the bundle when
 * it exists), or the error of the call. */
static CK_RV kv_probe(kv_backend *b, const char *name, int *exists, kv_resp *resp)
{
  char *url = kv_key_url(b, name, "");
  CK_RV rv;

  *exists = 0;
  if (url == NULL)
    return CKR_HOST_MEMORY;
  rv = kv_call(b, KV_CALL_PROBE, name, "GET", url, NULL, resp);
  free(url);
  if (rv == CKR_OK) {
    *exists = 1;
  } else if (rv == CKR_KEY_HANDLE_INVALID) {
    kv_resp_clear(resp, 0);
    rv = CKR_OK;
  }
  return rv;
}

/* The refusal to replace a key, or the error of the existence check. */
static CK_RV kv_refuse_existing(kv_backend *b, const char *name)
{
  kv_resp resp;
  int exists = 0;
  CK_RV rv;

  memset(&resp, 0, sizeof(resp));
  kv_resp_clear(&resp, 0);
  rv = kv_probe(b, name, &exists, &resp);
  kv_resp_clear(&resp, 0);
  if (rv != CKR_OK)
    return rv;
  if (exists) {
    KVP_ERROR("vault %s: key %s exists already; kvp11 does not replace keys", b->conf.name, name);
    return CKR_ATTRIBUTE_VALUE_INVALID;
  }
  return CKR_OK;
}

/* The outcome of a failed create/import is unknown when no usable answer
 * arrived: connection lost or timed out (perhaps after the request went out),
 * a truncated, oversized or non-JSON 2xx answer, or a gateway timeout. */
static int kv_outcome_unknown(const kv_resp *r)
{
  return r->status == 0 || r->capped || (r->status >= 200 && r->status < 300) || r->status == 408 ||
         r->status == 502 || r->status == 504;
}

/* key_ops as a JSON array: sign -> sign, verify; decrypt -> decrypt, encrypt.
 * 0: sign + decrypt for RSA, sign for EC. */
static CK_RV kv_ops_json(kv_backend *b, const char *name, kvp_key_type type, unsigned ops,
                         char *out, size_t outlen)
{
  if (ops == 0)
    ops = type == KVP_KEY_RSA ? (KVP_KEYOP_SIGN | KVP_KEYOP_DECRYPT) : KVP_KEYOP_SIGN;
  if ((ops & ~(KVP_KEYOP_SIGN | KVP_KEYOP_DECRYPT)) != 0) {
    return kvp_fail(CKR_TEMPLATE_INCONSISTENT,
                    "vault %s: key %s: unknown key operations 0x%x requested", b->conf.name, name,
                    ops);
  }
  if (type == KVP_KEY_EC && (ops & KVP_KEYOP_DECRYPT)) {
    return kvp_fail(CKR_TEMPLATE_INCONSISTENT,
                    "vault %s: key %s: an EC key cannot decrypt (only sign)", b->conf.name, name);
  }
  snprintf(out, outlen, "[%s%s%s]", (ops & KVP_KEYOP_SIGN) ? "\"sign\",\"verify\"" : "",
           (ops & KVP_KEYOP_SIGN) && (ops & KVP_KEYOP_DECRYPT) ? "," : "",
           (ops & KVP_KEYOP_DECRYPT) ? "\"decrypt\",\"encrypt\"" : "");
  return CKR_OK;
}

/* Drop any cached public key of name and open the key as open_key does;
 * check that it has the expected shape (and public key, when given). */
static CK_RV kv_open_new(kv_backend *b, const char *name, kvp_key_type type, unsigned bits,
                         int curve_nid, EVP_PKEY *expect_pub, kvp_key **out)
{
  CK_RV rv;
  kvp_key *k = NULL;

  kv_cache_drop(b, name);
  rv = kv_open_key(&b->base, name, &k);
  if (rv != CKR_OK)
    return rv;
  if (k->type != type || (type == KVP_KEY_RSA && k->bits != bits) ||
      (type == KVP_KEY_EC && k->curve_nid != curve_nid) ||
      (expect_pub != NULL && !kvp_pubkey_equal(k->pub, expect_pub))) {
    KVP_ERROR("vault %s: key %s: the vault holds a different key than the one just %s "
              "(%s %u bits)",
              b->conf.name, name, expect_pub != NULL ? "imported" : "created",
              k->type == KVP_KEY_RSA ? "RSA" : "EC", k->bits);
    kv_close_key(&b->base, k);
    return CKR_DEVICE_ERROR;
  }
  *out = k;
  return CKR_OK;
}

/* ---- what this backend made ---- */

static void kv_created_note(kv_backend *b, const char *name, const char *version)
{
  kv_created *c = calloc(1, sizeof(*c));
  if (c == NULL || (c->name = strdup(name)) == NULL || (c->version = strdup(version)) == NULL) {
    if (c != NULL)
      free(c->name);
    free(c);
    return;
  }
  pthread_mutex_lock(&b->lock);
  c->next = b->created;
  b->created = c;
  pthread_mutex_unlock(&b->lock);
}

/* The version of name this backend made (malloc'd), or NULL; forgotten with forget. */
static char *kv_created_version(kv_backend *b, const char *name, int forget)
{
  kv_created **pp, *c;
  char *v = NULL;
  pthread_mutex_lock(&b->lock);
  for (pp = &b->created; (c = *pp) != NULL; pp = &c->next) {
    if (strcasecmp(c->name, name) == 0) {
      v = forget ? c->version : strdup(c->version);
      if (forget) {
        *pp = c->next;
        free(c->name);
        free(c);
      }
      break;
    }
  }
  pthread_mutex_unlock(&b->lock);
  return v;
}

void kv_created_free(kv_backend *b)
{
  kv_created *c, *n;
  for (c = b->created; c != NULL; c = n) {
    n = c->next;
    free(c->name);
    free(c->version);
    free(c);
  }
  b->created = NULL;
}

/*
 * Before a key this backend created is deleted again (the undo of a create or
 * import whose registration failed): its only version must be the one made
 * here. Another creator may have added a version at the same moment (Key
 * Vault adds a version to an existing name); such a key is never deleted.
 */
static CK_RV kv_only_our_version(kv_backend *b, const char *name, const char *ours)
{
  kv_resp resp;
  char *url = kv_key_url(b, name, "/versions");
  json_t *val, *it;
  size_t i;
  CK_RV rv;

  if (url == NULL)
    return CKR_HOST_MEMORY;
  memset(&resp, 0, sizeof(resp));
  kv_resp_clear(&resp, 0);
  rv = kv_call(b, KV_CALL_LIST, name, "GET", url, NULL, &resp);
  val = rv == CKR_OK ? json_object_get(resp.json, "value") : NULL;
  if (rv == CKR_OK && !json_is_array(val))
    rv = kvp_fail(CKR_DEVICE_ERROR, "vault %s: key %s: versions: no value array", b->conf.name,
                  name);
  json_array_foreach(val, i, it) {
    char *n = NULL, *v = NULL;
    int mine = kv_kid_split(json_string_value(json_object_get(it, "kid")), &n, &v) == 0 &&
               v != NULL && strcmp(v, ours) == 0;
    free(n);
    free(v);
    if (!mine || i > 0) {
      rv = kvp_fail(CKR_ATTRIBUTE_VALUE_INVALID,
                    "vault %s: key %s has versions kvp11 did not create; it is not deleted",
                    b->conf.name, name);
      break;
    }
  }
  if (rv == CKR_OK && json_is_string(json_object_get(resp.json, "nextLink")))
    rv = kvp_fail(CKR_ATTRIBUTE_VALUE_INVALID,
                  "vault %s: key %s has versions kvp11 did not create; it is not deleted",
                  b->conf.name, name);
  kv_resp_clear(&resp, 0);
  free(url);
  return rv;
}

/* ---- create ---- */

CK_RV kv_prov_create_key(kvp_backend *be, const char *name, const kvp_key_spec *spec, kvp_key **out)
{
  kv_backend *b = (kv_backend *)be;
  kv_resp resp;
  char ops[80], body[256], *url = NULL;
  const char *crv = NULL;
  CK_RV rv;

  if (out == NULL || spec == NULL)
    return CKR_ARGUMENTS_BAD;
  *out = NULL;
  memset(&resp, 0, sizeof(resp));
  kv_resp_clear(&resp, 0);
  rv = kv_name_check(b, name, "create key");
  if (rv != CKR_OK)
    return rv;
  if (spec->type == KVP_KEY_RSA) {
    if (spec->bits != 2048 && spec->bits != 3072 && spec->bits != 4096) {
      KVP_ERROR("vault %s: key %s: RSA keys of %u bits cannot be created; Key Vault makes "
                "2048, 3072 or 4096 bits",
                b->conf.name, name, spec->bits);
      return CKR_KEY_SIZE_RANGE;
    }
  } else if (spec->type == KVP_KEY_EC) {
    if (spec->curve_nid == NID_X9_62_prime256v1 || spec->curve_nid == NID_secp384r1 ||
        spec->curve_nid == NID_secp521r1)
      crv = kvp_curve_name(spec->curve_nid);
    if (crv == NULL) {
      KVP_ERROR("vault %s: key %s: curve %s is not supported; use P-256, P-384 or P-521",
                b->conf.name, name,
                spec->curve_nid != NID_undef ? OBJ_nid2sn(spec->curve_nid) : "(none)");
      return CKR_CURVE_NOT_SUPPORTED;
    }
  } else {
    return kvp_fail(CKR_KEY_TYPE_INCONSISTENT,
                    "vault %s: key %s: only RSA and EC keys can be created", b->conf.name, name);
  }
  rv = kv_ops_json(b, name, spec->type, spec->ops, ops, sizeof(ops));
  if (rv != CKR_OK)
    return rv;
  if (spec->type == KVP_KEY_RSA)
    snprintf(body, sizeof(body), "{\"kty\":\"%s\",\"key_size\":%u,\"key_ops\":%s}",
             spec->hsm_protected ? "RSA-HSM" : "RSA", spec->bits, ops);
  else
    snprintf(body, sizeof(body), "{\"kty\":\"%s\",\"crv\":\"%s\",\"key_ops\":%s}",
             spec->hsm_protected ? "EC-HSM" : "EC", crv, ops);

  rv = kv_refuse_existing(b, name);
  if (rv != CKR_OK)
    goto out;
  url = kv_key_url(b, name, "/create");
  if (url == NULL) {
    rv = CKR_HOST_MEMORY;
    goto out;
  }
  rv = kv_call(b, KV_CALL_CREATE, name, "POST", url, body, &resp);
  if (rv != CKR_OK) {
    int exists = 0;
    kv_resp probe;
    if (resp.status == 409) {
      /* e.g. ObjectIsDeletedButRecoverable: the name is taken by a deleted key */
      rv = CKR_ATTRIBUTE_VALUE_INVALID;
      goto out;
    }
    if (!kv_outcome_unknown(&resp))
      goto out;
    /* the name was free a moment ago: a key there now is the one we made */
    memset(&probe, 0, sizeof(probe));
    kv_resp_clear(&probe, 0);
    if (kv_probe(b, name, &exists, &probe) == CKR_OK && exists) {
      KVP_WARN("vault %s: key %s: the answer to create was lost, but the key exists now; "
               "using it",
               b->conf.name, name);
      rv = CKR_OK;
    }
    kv_resp_clear(&probe, 0);
    if (rv != CKR_OK)
      goto out;
  }
  rv = kv_open_new(b, name, spec->type, spec->bits, spec->curve_nid, NULL, out);
  if (rv == CKR_OK) {
    kv_created_note(b, name, (*out)->version);
    KVP_INFO("vault %s: key %s created (%s, version %s)", b->conf.name, name,
             spec->type == KVP_KEY_RSA ? "RSA" : crv, (*out)->version);
  }
out:
  kv_resp_clear(&resp, 0);
  free(url);
  return rv;
}

/* ---- import ---- */

/* One JWK member: base64url of bn, left-padded to pad bytes (0: minimal).
 * The intermediate bytes are wiped; the result is wiped by the caller. */
static char *kv_bn_b64(const BIGNUM *bn, size_t pad)
{
  size_t len = (size_t)BN_num_bytes(bn);
  unsigned char *buf;
  char *s;

  if (pad > 0) {
    if (len > pad)
      return NULL;
    len = pad;
  }
  if (len == 0)
    len = 1;
  buf = malloc(len);
  if (buf == NULL)
    return NULL;
  if (BN_bn2binpad(bn, buf, (int)len) < 0) {
    OPENSSL_cleanse(buf, len);
    free(buf);
    return NULL;
  }
  s = kv_b64url_encode(buf, len);
  OPENSSL_cleanse(buf, len);
  free(buf);
  return s;
}

#define KV_JWK_MAX 8

typedef struct kv_jwk_parts {
  const char *names[KV_JWK_MAX];
  char *vals[KV_JWK_MAX]; /* base64url; secret for the private members */
  size_t n;
} kv_jwk_parts;

static void kv_jwk_parts_clear(kv_jwk_parts *p)
{
  size_t i;
  for (i = 0; i < p->n; i++)
    kv_free_wipe(p->vals[i]);
  memset(p, 0, sizeof(*p));
}

/* Read param from priv into the JWK member jname. 0 on success. */
static int kv_jwk_add(kv_jwk_parts *p, EVP_PKEY *priv, const char *param, const char *jname,
                      size_t pad)
{
  BIGNUM *bn = NULL;
  char *s;

  if (p->n >= KV_JWK_MAX || EVP_PKEY_get_bn_param(priv, param, &bn) != 1 || bn == NULL)
    return -1;
  s = kv_bn_b64(bn, pad);
  BN_clear_free(bn);
  if (s == NULL)
    return -1;
  p->names[p->n] = jname;
  p->vals[p->n] = s;
  p->n++;
  return 0;
}

/*
 * The body of PUT /keys/NAME:
 * {"key":{"kty":"RSA","key_ops":[...],"n":..,"e":..,"d":..,...},"Hsm":false}
 * (malloc'd; a secret: wipe with kvp_wipe before free).
 */
static char *kv_import_body(const char *kty, const char *crv, const char *ops,
                            const kv_jwk_parts *p, int hsm)
{
  size_t len = 128 + strlen(ops) + (crv != NULL ? strlen(crv) : 0), i, off;
  char *body;
  int w;

  for (i = 0; i < p->n; i++)
    len += strlen(p->names[i]) + strlen(p->vals[i]) + 8;
  body = malloc(len);
  if (body == NULL)
    return NULL;
  w = snprintf(body, len, "{\"key\":{\"kty\":\"%s\",%s%s%s\"key_ops\":%s", kty,
               crv != NULL ? "\"crv\":\"" : "", crv != NULL ? crv : "", crv != NULL ? "\"," : "",
               ops);
  if (w < 0 || (size_t)w >= len)
    goto bad;
  off = (size_t)w;
  for (i = 0; i < p->n; i++) {
    w = snprintf(body + off, len - off, ",\"%s\":\"%s\"", p->names[i], p->vals[i]);
    if (w < 0 || (size_t)w >= len - off)
      goto bad;
    off += (size_t)w;
  }
  w = snprintf(body + off, len - off, "},\"Hsm\":%s}", hsm ? "true" : "false");
  if (w < 0 || (size_t)w >= len - off)
    goto bad;
  return body;
bad:
  OPENSSL_cleanse(body, len);
  free(body);
  return NULL;
}

/* The JWK members of an RSA or EC private key; fills type, bits, curve. */
static CK_RV kv_jwk_from_priv(kv_backend *b, const char *name, EVP_PKEY *priv, kv_jwk_parts *p,
                              kvp_key_type *type, unsigned *bits, int *curve_nid)
{
  int id = EVP_PKEY_get_base_id(priv);

  memset(p, 0, sizeof(*p));
  if (id == EVP_PKEY_RSA) {
    BIGNUM *extra = NULL;
    int nb = EVP_PKEY_get_bits(priv);
    *type = KVP_KEY_RSA;
    *bits = nb > 0 ? (unsigned)nb : 0;
    if (nb != 2048 && nb != 3072 && nb != 4096) {
      KVP_ERROR("vault %s: key %s: an RSA key of %d bits cannot be imported; Key Vault takes "
                "2048, 3072 or 4096 bits",
                b->conf.name, name, nb);
      return CKR_KEY_SIZE_RANGE;
    }
    if (EVP_PKEY_get_bn_param(priv, OSSL_PKEY_PARAM_RSA_FACTOR3, &extra) == 1) {
      BN_clear_free(extra);
      return kvp_fail(CKR_KEY_TYPE_INCONSISTENT,
                      "vault %s: key %s: a multi-prime RSA key cannot be imported", b->conf.name,
                      name);
    }
    if (kv_jwk_add(p, priv, OSSL_PKEY_PARAM_RSA_N, "n", 0) != 0 ||
        kv_jwk_add(p, priv, OSSL_PKEY_PARAM_RSA_E, "e", 0) != 0 ||
        kv_jwk_add(p, priv, OSSL_PKEY_PARAM_RSA_D, "d", 0) != 0 ||
        kv_jwk_add(p, priv, OSSL_PKEY_PARAM_RSA_FACTOR1, "p", 0) != 0 ||
        kv_jwk_add(p, priv, OSSL_PKEY_PARAM_RSA_FACTOR2, "q", 0) != 0 ||
        kv_jwk_add(p, priv, OSSL_PKEY_PARAM_RSA_EXPONENT1, "dp", 0) != 0 ||
        kv_jwk_add(p, priv, OSSL_PKEY_PARAM_RSA_EXPONENT2, "dq", 0) != 0 ||
        kv_jwk_add(p, priv, OSSL_PKEY_PARAM_RSA_COEFFICIENT1, "qi", 0) != 0)
      goto unreadable;
    return CKR_OK;
  }
  if (id == EVP_PKEY_EC) {
    char group[64] = "";
    size_t glen = 0, fl;
    int nid;
    *type = KVP_KEY_EC;
    if (EVP_PKEY_get_utf8_string_param(priv, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group),
                                       &glen) != 1)
      group[0] = '\0';
    nid = kvp_curve_nid(group);
    if (nid == NID_undef && group[0] != '\0')
      nid = OBJ_sn2nid(group);
    switch (nid) {
    case NID_X9_62_prime256v1:
      fl = 32;
      *bits = 256;
      break;
    case NID_secp384r1:
      fl = 48;
      *bits = 384;
      break;
    case NID_secp521r1:
      fl = 66;
      *bits = 521;
      break;
    default:
      KVP_ERROR("vault %s: key %s: an EC key on curve %s cannot be imported; use P-256, P-384 "
                "or P-521",
                b->conf.name, name, group[0] ? group : "(unnamed)");
      return CKR_KEY_TYPE_INCONSISTENT;
    }
    *curve_nid = nid;
    if (kv_jwk_add(p, priv, OSSL_PKEY_PARAM_EC_PUB_X, "x", fl) != 0 ||
        kv_jwk_add(p, priv, OSSL_PKEY_PARAM_EC_PUB_Y, "y", fl) != 0 ||
        kv_jwk_add(p, priv, OSSL_PKEY_PARAM_PRIV_KEY, "d", fl) != 0)
      goto unreadable;
    return CKR_OK;
  }
  KVP_ERROR("vault %s: key %s: a %s key cannot be imported; Key Vault takes RSA and EC keys",
            b->conf.name, name,
            EVP_PKEY_get0_type_name(priv) != NULL ? EVP_PKEY_get0_type_name(priv) : "unknown");
  return CKR_KEY_TYPE_INCONSISTENT;
unreadable:
  kv_jwk_parts_clear(p);
  return kvp_fail(CKR_KEY_UNEXTRACTABLE,
                  "vault %s: key %s: the private key's components cannot be read (a key held by an "
                  "ENGINE or a hardware provider cannot be imported)",
                  b->conf.name, name);
}

/* After a lost answer: 1 when the key exists now with priv's public key,
 * 0 when it does not, -1 when the vault could not tell (logged by kv_call). */
static int kv_import_landed(kv_backend *b, const char *name, EVP_PKEY *priv)
{
  kv_resp resp;
  kv_key_info ki;
  char err[KVP_ERRLEN];
  int exists = 0, same = 0;

  memset(&resp, 0, sizeof(resp));
  kv_resp_clear(&resp, 0);
  if (kv_probe(b, name, &exists, &resp) != CKR_OK) {
    same = -1;
    goto out;
  }
  if (!exists)
    goto out;
  if (kv_key_bundle_parse(resp.json, &ki, err, sizeof(err)) != 0) {
    KVP_ERROR("vault %s: key %s: %s (x-ms-request-id %s)", b->conf.name, name, err,
              resp.request_id);
    same = -1;
    goto out;
  }
  same = kvp_pubkey_equal(ki.pub, priv);
  if (!same)
    KVP_ERROR("vault %s: key %s exists now, but with another public key than the one imported",
              b->conf.name, name);
  kv_key_info_clear(&ki);
out:
  kv_resp_clear(&resp, 0);
  return same;
}

CK_RV kv_prov_import_key(kvp_backend *be, const char *name, EVP_PKEY *priv,
                         const kvp_key_spec *spec, kvp_key **out)
{
  kv_backend *b = (kv_backend *)be;
  kv_resp resp;
  kv_jwk_parts parts;
  kvp_key_type type = KVP_KEY_RSA;
  unsigned bits = 0, ops = spec != NULL ? spec->ops : 0;
  int curve_nid = NID_undef;
  char opsj[80], *url = NULL, *body = NULL;
  CK_RV rv;

  if (out == NULL || priv == NULL)
    return CKR_ARGUMENTS_BAD;
  *out = NULL;
  memset(&resp, 0, sizeof(resp));
  kv_resp_clear(&resp, 0);
  memset(&parts, 0, sizeof(parts));
  rv = kv_name_check(b, name, "import key");
  if (rv != CKR_OK)
    return rv;
  rv = kv_jwk_from_priv(b, name, priv, &parts, &type, &bits, &curve_nid);
  if (rv != CKR_OK)
    goto out;
  rv = kv_ops_json(b, name, type, ops, opsj, sizeof(opsj));
  if (rv != CKR_OK)
    goto out;
  rv = kv_refuse_existing(b, name);
  if (rv != CKR_OK)
    goto out;
  body = kv_import_body(type == KVP_KEY_RSA ? "RSA" : "EC",
                        type == KVP_KEY_EC ? kvp_curve_name(curve_nid) : NULL, opsj, &parts,
                        spec != NULL && spec->hsm_protected);
  /* the members are in the body now: wipe them at once */
  kv_jwk_parts_clear(&parts);
  url = kv_key_url(b, name, "");
  if (body == NULL || url == NULL) {
    rv = CKR_HOST_MEMORY;
    goto out;
  }
  rv = kv_call(b, KV_CALL_IMPORT, name, "PUT", url, body, &resp);
  OPENSSL_cleanse(body, strlen(body));
  free(body);
  body = NULL;
  if (rv != CKR_OK) {
    if (resp.status == 409) {
      rv = CKR_ATTRIBUTE_VALUE_INVALID;
      goto out;
    }
    if (!kv_outcome_unknown(&resp))
      goto out;
    switch (kv_import_landed(b, name, priv)) {
    case 1:
      break;
    case 0:
      KVP_ERROR("vault %s: key %s: the import's outcome was unknown and the key is not in the "
                "vault",
                b->conf.name, name);
      goto out;
    default:
      KVP_ERROR("vault %s: key %s: the import's outcome is unknown: check with 'kvp11 key show' "
                "before importing again",
                b->conf.name, name);
      goto out;
    }
    KVP_WARN("vault %s: key %s: the answer to import was lost, but the key exists now with the "
             "imported public key",
             b->conf.name, name);
  }
  rv = kv_open_new(b, name, type, bits, curve_nid, priv, out);
  if (rv == CKR_OK) {
    kv_created_note(b, name, (*out)->version);
    KVP_INFO("vault %s: key %s imported (%s %u bits, version %s)", b->conf.name, name,
             type == KVP_KEY_RSA ? "RSA" : "EC", bits, (*out)->version);
  }
out:
  kv_resp_clear(&resp, 0);
  kv_jwk_parts_clear(&parts);
  if (body != NULL) {
    OPENSSL_cleanse(body, strlen(body));
    free(body);
  }
  free(url);
  return rv;
}

/* ---- delete ---- */

CK_RV kv_prov_delete_key(kvp_backend *be, const char *name)
{
  kv_backend *b = (kv_backend *)be;
  kv_resp resp;
  char *url, *ours;
  CK_RV rv;

  rv = kv_name_check(b, name, "delete key");
  if (rv != CKR_OK)
    return rv;
  ours = kv_created_version(b, name, 0);
  if (ours != NULL) {
    rv = kv_only_our_version(b, name, ours);
    free(ours);
    if (rv != CKR_OK)
      return rv;
  }
  url = kv_key_url(b, name, "");
  if (url == NULL)
    return CKR_HOST_MEMORY;
  memset(&resp, 0, sizeof(resp));
  kv_resp_clear(&resp, 0);
  rv = kv_call(b, KV_CALL_DELETE, name, "DELETE", url, NULL, &resp);
  if (rv == CKR_OK || rv == CKR_KEY_HANDLE_INVALID)
    kv_cache_drop(b, name);
  if (rv == CKR_OK) {
    free(kv_created_version(b, name, 1));
    KVP_INFO("vault %s: key %s deleted (soft delete: recoverable until purged)", b->conf.name,
             name);
  }
  kv_resp_clear(&resp, 0);
  free(url);
  return rv;
}

/* ---- list / show ---- */

static long long kv_attr_time(json_t *attrs, const char *what)
{
  json_t *j = json_object_get(attrs, what);
  double d;
  if (json_is_integer(j))
    return (long long)json_integer_value(j);
  if (!json_is_real(j))
    return 0;
  d = json_real_value(j);
  if (!(d > -1e12 && d < 1e12))
    return 0;
  return (long long)d;
}

/* A KeyBundle into info. Keys whose public part kvp11 cannot use (other key
 * types, curves) are described with pub NULL and type 0. */
static CK_RV kv_info_from_bundle(kv_backend *b, const char *name, json_t *bundle,
                                 kvp_key_info *info, const char *request_id)
{
  json_t *key = json_object_get(bundle, "key"), *attrs = json_object_get(bundle, "attributes");
  json_t *ops, *v, *en;
  const char *kid = json_string_value(json_object_get(key, "kid"));
  const char *kty = json_string_value(json_object_get(key, "kty"));
  char err[KVP_ERRLEN] = "";
  size_t i;
  long long now = (long long)kv_wall_s(), nbf;

  memset(info, 0, sizeof(*info));
  if (!json_is_object(key) || kid == NULL || kty == NULL ||
      kv_kid_split(kid, &info->name, &info->version) != 0 || info->version == NULL) {
    KVP_ERROR("vault %s: key %s: the answer is not a KeyBundle with a versioned kid "
              "(x-ms-request-id %s)",
              b->conf.name, name, request_id);
    kvp_key_info_clear(info);
    return CKR_DEVICE_ERROR;
  }
  info->kty = strdup(kty);
  if (info->kty == NULL) {
    kvp_key_info_clear(info);
    return CKR_HOST_MEMORY;
  }
  info->hsm_protected = strlen(kty) > 4 && strcasecmp(kty + strlen(kty) - 4, "-HSM") == 0;
  if (kv_jwk_to_pkey(key, &info->pub, err, sizeof(err)) == 0) {
    kvp_spki k;
    if (kvp_spki_from_pkey(info->pub, &k) == KVP_OK) {
      info->type = k.type == 1 ? KVP_KEY_RSA : KVP_KEY_EC;
      info->bits = k.bits;
      info->curve_nid = k.type == 2 ? k.curve_nid : NID_undef;
      kvp_spki_clear(&k);
    }
  } else {
    KVP_DEBUG("vault %s: key %s: %s", b->conf.name, name, err);
  }
  ops = json_object_get(key, "key_ops");
  if (!json_is_array(ops)) {
    info->ops = KVP_KEYOP_SIGN | (strncasecmp(kty, "RSA", 3) == 0 ? KVP_KEYOP_DECRYPT : 0);
  }
  json_array_foreach(ops, i, v)
  {
    const char *o = json_string_value(v);
    if (o != NULL && strcmp(o, "sign") == 0)
      info->ops |= KVP_KEYOP_SIGN;
    else if (o != NULL && strcmp(o, "decrypt") == 0)
      info->ops |= KVP_KEYOP_DECRYPT;
  }
  en = json_object_get(attrs, "enabled");
  nbf = kv_attr_time(attrs, "nbf");
  info->expires = kv_attr_time(attrs, "exp");
  info->created = kv_attr_time(attrs, "created");
  info->enabled = (!json_is_boolean(en) || json_is_true(en)) && (nbf == 0 || now >= nbf) &&
                  (info->expires == 0 || now < info->expires);
  return CKR_OK;
}

/* GET /keys/NAME into info; kind KV_CALL_PROBE: a 404 is not logged. */
static CK_RV kv_info_fetch(kv_backend *b, const char *name, kv_call_kind kind, kvp_key_info *info)
{
  kv_resp resp;
  char *url = kv_key_url(b, name, "");
  CK_RV rv;

  memset(info, 0, sizeof(*info));
  if (url == NULL)
    return CKR_HOST_MEMORY;
  memset(&resp, 0, sizeof(resp));
  kv_resp_clear(&resp, 0);
  rv = kv_call(b, kind, name, "GET", url, NULL, &resp);
  if (rv == CKR_OK)
    rv = kv_info_from_bundle(b, name, resp.json, info, resp.request_id);
  else if (rv == CKR_KEY_HANDLE_INVALID)
    kv_cache_drop(b, name);
  kv_resp_clear(&resp, 0);
  free(url);
  return rv;
}

CK_RV kv_prov_key_info(kvp_backend *be, const char *name, kvp_key_info *out)
{
  kv_backend *b = (kv_backend *)be;
  CK_RV rv;

  if (out == NULL)
    return CKR_ARGUMENTS_BAD;
  memset(out, 0, sizeof(*out));
  rv = kv_name_check(b, name, "key info");
  if (rv != CKR_OK)
    return rv;
  return kv_info_fetch(b, name, KV_CALL_GET, out);
}

CK_RV kv_prov_list_keys(kvp_backend *be, kvp_key_info **out, size_t *n)
{
  kv_backend *b = (kv_backend *)be;
  char **names = NULL;
  size_t count = 0, i, got = 0;
  kvp_key_info *infos = NULL;
  CK_RV rv;

  if (out == NULL || n == NULL)
    return CKR_ARGUMENTS_BAD;
  *out = NULL;
  *n = 0;
  rv = kvp_keyvault_list_keys(be, &names, &count);
  if (rv != CKR_OK)
    return rv;
  infos = calloc(count > 0 ? count : 1, sizeof(*infos));
  if (infos == NULL) {
    rv = CKR_HOST_MEMORY;
    goto out;
  }
  for (i = 0; i < count; i++) {
    rv = kv_info_fetch(b, names[i], KV_CALL_PROBE, &infos[got]);
    if (rv == CKR_KEY_HANDLE_INVALID) {
      /* deleted between the listing and the get */
      KVP_DEBUG("vault %s: key %s: gone since the listing", b->conf.name, names[i]);
      continue;
    }
    if (rv != CKR_OK)
      goto out;
    got++;
  }
  *out = infos;
  *n = got;
  infos = NULL;
  rv = CKR_OK;
out:
  kvp_key_info_free_array(infos, got);
  kvp_keyvault_free_names(names, count);
  return rv;
}
