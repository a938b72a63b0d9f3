/*
 * Parsers for what Key Vault and the token endpoints send: base64url, JWK,
 * KeyBundle, key listings, error bodies, token responses and the
 * WWW-Authenticate challenge. Everything here treats its input as hostile.
 */
#include "backend/keyvault/kv.h"
#include "backend/keyvault/keyvault.h"

#include <ctype.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>

#include "core/cert.h"
#include "core/util.h"

char *kv_b64url_encode(const unsigned char *in, size_t len)
{
  size_t cap = 4 * ((len + 2) / 3) + 1, i, n;
  char *out;
  if (len > INT_MAX / 2)
    return NULL;
  out = malloc(cap);
  if (out == NULL)
    return NULL;
  n = (size_t)EVP_EncodeBlock((unsigned char *)out, in, (int)len);
  while (n > 0 && out[n - 1] == '=')
    n--;
  out[n] = '\0';
  for (i = 0; i < n; i++) {
    if (out[i] == '+')
      out[i] = '-';
    else if (out[i] == '/')
      out[i] = '_';
  }
  return out;
}

int kv_b64url_decode(const char *in, unsigned char **out, size_t *outlen)
{
  size_t n, i, pad, padded;
  char *tmp;
  unsigned char *buf;
  int r;

  *out = NULL;
  *outlen = 0;
  if (in == NULL)
    return -1;
  n = strlen(in);
  while (n > 0 && in[n - 1] == '=')
    n--;
  if (n % 4 == 1 || n > INT_MAX / 2)
    return -1;
  pad = (4 - n % 4) % 4;
  padded = n + pad;
  tmp = malloc(padded + 1);
  buf = malloc(padded / 4 * 3 + 1);
  if (tmp == NULL || buf == NULL) {
    free(tmp);
    free(buf);
    return -1;
  }
  for (i = 0; i < n; i++) {
    char c = in[i];
    if (c == '-')
      c = '+';
    else if (c == '_')
      c = '/';
    else if (!(isalnum((unsigned char)c) || c == '+' || c == '/'))
      goto bad;
    tmp[i] = c;
  }
  for (i = n; i < padded; i++)
    tmp[i] = '=';
  tmp[padded] = '\0';
  if (padded == 0) {
    free(tmp);
    *out = buf;
    return 0;
  }
  r = EVP_DecodeBlock(buf, (unsigned char *)tmp, (int)padded);
  if (r < 0)
    goto bad;
  kvp_wipe(tmp, padded);
  free(tmp);
  *out = buf;
  *outlen = (size_t)r - pad;
  return 0;
bad:
  kvp_wipe(tmp, padded);
  free(tmp);
  free(buf);
  return -1;
}

static void kv_copy(char *dst, size_t dlen, const char *src)
{
  size_t i, j = 0;
  if (src == NULL) {
    dst[0] = '\0';
    return;
  }
  /* one line: control characters become spaces */
  for (i = 0; src[i] != '\0' && j + 1 < dlen; i++)
    dst[j++] = (unsigned char)src[i] < 0x20 ? ' ' : src[i];
  dst[j] = '\0';
}

void kv_error_parse(const kv_resp *r, kv_error_info *ei)
{
  json_t *e;
  memset(ei, 0, sizeof(*ei));
  if (r->json == NULL) {
    snprintf(ei->code, sizeof(ei->code), "-");
    snprintf(ei->message, sizeof(ei->message), "%s",
             r->len == 0 ? "empty body" : "body is not JSON");
    return;
  }
  e = json_object_get(r->json, "error");
  if (json_is_object(e)) {
    json_t *inner = json_object_get(e, "innererror");
    kv_copy(ei->code, sizeof(ei->code), json_string_value(json_object_get(e, "code")));
    kv_copy(ei->message, sizeof(ei->message), json_string_value(json_object_get(e, "message")));
    if (json_is_object(inner))
      kv_copy(ei->inner, sizeof(ei->inner), json_string_value(json_object_get(inner, "code")));
  } else if (json_is_string(e)) {
    /* token endpoint: {"error":"invalid_client","error_description":"AADSTS..."} */
    kv_copy(ei->code, sizeof(ei->code), json_string_value(e));
    kv_copy(ei->message, sizeof(ei->message),
            json_string_value(json_object_get(r->json, "error_description")));
    {
      /* keep the first line only (the rest is trace ids and a timestamp) */
      char *cut = strstr(ei->message, "  ");
      if (cut != NULL)
        *cut = '\0';
    }
  }
  if (ei->code[0] == '\0')
    snprintf(ei->code, sizeof(ei->code), "-");
}

/* ---- WWW-Authenticate ---- */

void kv_challenge_clear(kv_challenge *c)
{
  free(c->authorization);
  free(c->resource);
  free(c->scope);
  memset(c, 0, sizeof(*c));
}

int kv_challenge_parse(const char *header, kv_challenge *c)
{
  const char *p = header;
  memset(c, 0, sizeof(*c));
  if (header == NULL)
    return -1;
  while (*p == ' ' || *p == '\t')
    p++;
  if (strncasecmp(p, "Bearer", 6) != 0 || (p[6] != ' ' && p[6] != '\t'))
    return -1;
  p += 6;
  for (;;) {
    const char *ks, *vs;
    size_t klen, vlen;
    char *val;
    while (*p == ' ' || *p == '\t' || *p == ',')
      p++;
    if (*p == '\0')
      break;
    ks = p;
    while (*p != '\0' && *p != '=' && *p != ' ' && *p != ',')
      p++;
    klen = (size_t)(p - ks);
    if (*p != '=') {
      /* a bare token: skip it */
      while (*p != '\0' && *p != ',')
        p++;
      continue;
    }
    p++;
    if (*p == '"') {
      p++;
      vs = p;
      while (*p != '\0' && *p != '"')
        p++;
      if (*p != '"')
        goto bad;
      vlen = (size_t)(p - vs);
      p++;
    } else {
      vs = p;
      while (*p != '\0' && *p != ',' && *p != ' ')
        p++;
      vlen = (size_t)(p - vs);
    }
    val = strndup(vs, vlen);
    if (val == NULL)
      goto bad;
    if ((klen == 13 && strncasecmp(ks, "authorization", 13) == 0) ||
        (klen == 17 && (strncasecmp(ks, "authorization_uri", 17) == 0 ||
                        strncasecmp(ks, "authorization_url", 17) == 0))) {
      free(c->authorization);
      c->authorization = val;
    } else if (klen == 8 && strncasecmp(ks, "resource", 8) == 0) {
      free(c->resource);
      c->resource = val;
    } else if (klen == 5 && strncasecmp(ks, "scope", 5) == 0) {
      free(c->scope);
      c->scope = val;
    } else {
      free(val);
    }
  }
  if (c->resource == NULL && c->scope == NULL)
    goto bad;
  return 0;
bad:
  kv_challenge_clear(c);
  return -1;
}

char *kv_url_host(const char *url)
{
  const char *p, *e;
  char *h;
  size_t i;
  if (url == NULL || strncasecmp(url, "https://", 8) != 0)
    return NULL;
  p = url + 8;
  e = p;
  if (*e == '[') { /* IPv6 literal */
    while (*e != '\0' && *e != ']')
      e++;
    if (*e == ']')
      e++;
  } else {
    while (*e != '\0' && *e != ':' && *e != '/' && *e != '?' && *e != '#')
      e++;
  }
  if (e == p || memchr(p, '@', (size_t)(e - p)) != NULL)
    return NULL;
  h = strndup(p, (size_t)(e - p));
  if (h == NULL)
    return NULL;
  for (i = 0; h[i] != '\0'; i++)
    h[i] = (char)tolower((unsigned char)h[i]);
  /* a trailing dot names the same host */
  if (i > 0 && h[i - 1] == '.')
    h[i - 1] = '\0';
  return h;
}

int kv_resource_check(const kv_challenge *c, const char *vault_host, char **resource)
{
  char *src, *host, *res;
  size_t hl, vl;
  int ok = 0;

  *resource = NULL;
  if (c->resource != NULL) {
    src = strdup(c->resource);
  } else if (c->scope != NULL) {
    /* scope "https://vault.azure.net/.default" -> resource */
    size_t n = strlen(c->scope);
    src = strdup(c->scope);
    if (src != NULL && n > 9 && strcmp(src + n - 9, "/.default") == 0)
      src[n - 9] = '\0';
  } else {
    return -1;
  }
  if (src == NULL)
    return -1;
  host = kv_url_host(src);
  free(src);
  if (host == NULL)
    return -1;
  hl = strlen(host);
  vl = strlen(vault_host);
  if (hl > 0 && strcmp(host, vault_host) == 0)
    ok = 1;
  else if (hl > 0 && vl > hl + 1 && vault_host[vl - hl - 1] == '.' &&
           strcmp(vault_host + vl - hl, host) == 0)
    ok = 1;
  if (ok) {
    res = malloc(hl + 9);
    if (res == NULL) {
      free(host);
      return -1;
    }
    snprintf(res, hl + 9, "https://%s", host);
    *resource = res;
  }
  free(host);
  return ok ? 0 : -1;
}

/* ---- keys ---- */

int kv_kid_split(const char *kid, char **name, char **version)
{
  const char *p, *n, *ne, *v;
  *name = NULL;
  *version = NULL;
  if (kid == NULL)
    return -1;
  p = strstr(kid, "://");
  if (p == NULL)
    return -1;
  p = strchr(p + 3, '/');
  if (p == NULL || strncmp(p, "/keys/", 6) != 0)
    return -1;
  n = p + 6;
  ne = n;
  while (*ne != '\0' && *ne != '/' && *ne != '?')
    ne++;
  if (ne == n)
    return -1;
  *name = strndup(n, (size_t)(ne - n));
  if (*ne == '/') {
    v = ne + 1;
    ne = v;
    while (*ne != '\0' && *ne != '/' && *ne != '?')
      ne++;
    if (ne > v)
      *version = strndup(v, (size_t)(ne - v));
  }
  /* a name or version from a vault's answer goes into URLs: the admin's rules apply */
  if (*name == NULL || !kvp_keyvault_name_valid(*name) ||
      (*version != NULL && !kvp_keyvault_version_valid(*version))) {
    free(*name);
    free(*version);
    *name = NULL;
    *version = NULL;
    return -1;
  }
  return 0;
}

/*
 * Keys are built with kvp_pubkey_from_rsa/ec (core/cert.h), through a DER
 * SubjectPublicKeyInfo: EVP_PKEY_fromdata fails inside applications that made
 * an ENGINE their default for RSA and EC (openssl -engine pkcs11). Decoding
 * the point also checks that it is on the curve.
 */
int kv_jwk_to_pkey(json_t *jwk, EVP_PKEY **out, char *err, size_t errlen)
{
  const char *kty = json_string_value(json_object_get(jwk, "kty"));
  unsigned char *n = NULL, *e = NULL, *x = NULL, *y = NULL, *pt = NULL;
  size_t nl = 0, el = 0, xl = 0, yl = 0;
  int rc = -1;

  *out = NULL;
  if (!json_is_object(jwk) || kty == NULL) {
    kvp_seterr(err, errlen, KVP_EINVAL, "no JWK with a kty");
    return -1;
  }
  if (strcmp(kty, "RSA") == 0 || strcmp(kty, "RSA-HSM") == 0) {
    size_t skip = 0;
    if (kv_b64url_decode(json_string_value(json_object_get(jwk, "n")), &n, &nl) != 0 ||
        kv_b64url_decode(json_string_value(json_object_get(jwk, "e")), &e, &el) != 0) {
      kvp_seterr(err, errlen, KVP_EINVAL, "RSA JWK with a missing or bad n/e");
      goto out;
    }
    while (skip < nl && n[skip] == 0)
      skip++;
    if (nl - skip < 128 || nl - skip > 1024 || el == 0 || !(e[el - 1] & 1)) {
      kvp_seterr(err, errlen, KVP_EINVAL, "RSA JWK with a missing or bad n/e");
      goto out;
    }
    *out = kvp_pubkey_from_rsa(n + skip, nl - skip, e, el);
  } else if (strcmp(kty, "EC") == 0 || strcmp(kty, "EC-HSM") == 0) {
    const char *crv = json_string_value(json_object_get(jwk, "crv"));
    int nid = NID_undef;
    size_t cl = 0;
    if (crv != NULL && strcmp(crv, "P-256") == 0) {
      nid = NID_X9_62_prime256v1;
      cl = 32;
    } else if (crv != NULL && strcmp(crv, "P-384") == 0) {
      nid = NID_secp384r1;
      cl = 48;
    } else if (crv != NULL && strcmp(crv, "P-521") == 0) {
      nid = NID_secp521r1;
      cl = 66;
    } else if (crv != NULL && (strcmp(crv, "P-256K") == 0 || strcmp(crv, "SECP256K1") == 0)) {
      nid = NID_secp256k1;
      cl = 32;
    } else {
      kvp_seterr(err, errlen, KVP_EINVAL, "EC JWK with an unsupported curve '%s'",
                 crv != NULL ? crv : "(none)");
      goto out;
    }
    if (kv_b64url_decode(json_string_value(json_object_get(jwk, "x")), &x, &xl) != 0 ||
        kv_b64url_decode(json_string_value(json_object_get(jwk, "y")), &y, &yl) != 0 || xl == 0 ||
        yl == 0 || xl > cl || yl > cl) {
      kvp_seterr(err, errlen, KVP_EINVAL, "EC JWK with a missing or bad x/y");
      goto out;
    }
    pt = calloc(1, 1 + 2 * cl);
    if (pt == NULL)
      goto out;
    pt[0] = 0x04; /* uncompressed; short coordinates are left-padded */
    memcpy(pt + 1 + cl - xl, x, xl);
    memcpy(pt + 1 + 2 * cl - yl, y, yl);
    *out = kvp_pubkey_from_ec(nid, pt, 1 + 2 * cl);
    if (*out == NULL) {
      kvp_seterr(err, errlen, KVP_EINVAL, "the JWK's EC point is not on the curve");
      goto out;
    }
  } else {
    kvp_seterr(err, errlen, KVP_EINVAL, "unsupported key type '%s'", kty);
    goto out;
  }
  if (*out == NULL) {
    kvp_seterr(err, errlen, KVP_EINVAL, "the JWK is not a valid %s public key", kty);
    goto out;
  }
  rc = 0;
out:
  if (rc != 0 && err != NULL && err[0] == '\0')
    kvp_seterr(err, errlen, KVP_ERR, "cannot build the public key");
  free(n);
  free(e);
  free(x);
  free(y);
  free(pt);
  return rc;
}

void kv_key_info_clear(kv_key_info *ki)
{
  free(ki->kid);
  free(ki->name);
  free(ki->version);
  EVP_PKEY_free(ki->pub);
  memset(ki, 0, sizeof(*ki));
}

/*
 * A time or duration in seconds from JSON (integer, real or numeric string),
 * clamped to +-2^40 s (about 34,000 years) so that later arithmetic on it
 * (now + expires_in) cannot overflow, and a huge real is not cast to int64
 * (undefined behaviour; found by fuzzing).
 */
#define KV_JSON_INT_LIMIT ((int64_t)1 << 40)
static int64_t kv_clamp_s(double d)
{
  if (d != d)
    return 0; /* NaN */
  if (d > (double)KV_JSON_INT_LIMIT)
    return KV_JSON_INT_LIMIT;
  if (d < -(double)KV_JSON_INT_LIMIT)
    return -KV_JSON_INT_LIMIT;
  return (int64_t)d;
}

static int64_t kv_json_int(json_t *j)
{
  if (json_is_integer(j))
    return kv_clamp_s((double)json_integer_value(j));
  if (json_is_real(j))
    return kv_clamp_s(json_real_value(j));
  if (json_is_string(j)) {
    char *end;
    long long v = strtoll(json_string_value(j), &end, 10);
    if (end != json_string_value(j) && *end == '\0')
      return kv_clamp_s((double)v);
  }
  return 0;
}

int kv_key_bundle_parse(json_t *bundle, kv_key_info *ki, char *err, size_t errlen)
{
  json_t *key, *attrs, *ops, *v;
  size_t i;
  const char *kid;

  memset(ki, 0, sizeof(*ki));
  if (err != NULL)
    err[0] = '\0';
  key = json_object_get(bundle, "key");
  if (!json_is_object(key)) {
    kvp_seterr(err, errlen, KVP_EINVAL, "KeyBundle without a key object");
    return -1;
  }
  kid = json_string_value(json_object_get(key, "kid"));
  if (kid == NULL || kv_kid_split(kid, &ki->name, &ki->version) != 0 || ki->version == NULL) {
    kvp_seterr(err, errlen, KVP_EINVAL, "KeyBundle without a versioned kid");
    goto bad;
  }
  ki->kid = strdup(kid);
  if (kv_jwk_to_pkey(key, &ki->pub, err, errlen) != 0)
    goto bad;
  ops = json_object_get(key, "key_ops");
  if (!json_is_array(ops))
    ki->ops = 0xff; /* no key_ops: the service allows what the key type allows */
  json_array_foreach(ops, i, v) {
    const char *o = json_string_value(v);
    if (o == NULL)
      continue;
    if (strcmp(o, "encrypt") == 0)
      ki->ops |= KV_OP_ENCRYPT;
    else if (strcmp(o, "decrypt") == 0)
      ki->ops |= KV_OP_DECRYPT;
    else if (strcmp(o, "sign") == 0)
      ki->ops |= KV_OP_SIGN;
    else if (strcmp(o, "verify") == 0)
      ki->ops |= KV_OP_VERIFY;
    else if (strcmp(o, "wrapKey") == 0)
      ki->ops |= KV_OP_WRAP;
    else if (strcmp(o, "unwrapKey") == 0)
      ki->ops |= KV_OP_UNWRAP;
  }
  ki->enabled = 1;
  attrs = json_object_get(bundle, "attributes");
  if (json_is_object(attrs)) {
    json_t *en = json_object_get(attrs, "enabled");
    if (json_is_boolean(en))
      ki->enabled = json_is_true(en);
    ki->nbf = kv_json_int(json_object_get(attrs, "nbf"));
    ki->exp = kv_json_int(json_object_get(attrs, "exp"));
  }
  ki->managed = json_is_true(json_object_get(bundle, "managed"));
  if (ki->kid == NULL)
    goto bad;
  return 0;
bad:
  kv_key_info_clear(ki);
  if (err != NULL && err[0] == '\0')
    kvp_seterr(err, errlen, KVP_EINVAL, "bad KeyBundle");
  return -1;
}

int kv_list_page_parse(json_t *j, char ***names, size_t *n, char **next)
{
  json_t *val = json_object_get(j, "value"), *it, *nl;
  size_t i;
  *next = NULL;
  if (!json_is_array(val))
    return -1;
  json_array_foreach(val, i, it) {
    char *name = NULL, *ver = NULL, **nn;
    if (kv_kid_split(json_string_value(json_object_get(it, "kid")), &name, &ver) != 0)
      continue;
    free(ver);
    nn = realloc(*names, (*n + 1) * sizeof(char *));
    if (nn == NULL) {
      free(name);
      return -1;
    }
    *names = nn;
    (*names)[(*n)++] = name;
  }
  nl = json_object_get(j, "nextLink");
  if (json_is_string(nl) && json_string_length(nl) > 0)
    *next = strdup(json_string_value(nl));
  return 0;
}

/* ---- tokens ---- */

int kv_token_parse(json_t *j, int64_t now_s, kv_token_info *ti, char *err, size_t errlen)
{
  const char *tok = json_string_value(json_object_get(j, "access_token"));
  const char *tt = json_string_value(json_object_get(j, "token_type"));
  int64_t ein = kv_json_int(json_object_get(j, "expires_in"));
  int64_t eon = kv_json_int(json_object_get(j, "expires_on"));

  memset(ti, 0, sizeof(*ti));
  if (tok == NULL || tok[0] == '\0') {
    kvp_seterr(err, errlen, KVP_EINVAL, "token response without access_token");
    return -1;
  }
  if (tt != NULL && strcasecmp(tt, "Bearer") != 0) {
    kvp_seterr(err, errlen, KVP_EINVAL, "token type '%s' is not Bearer", tt);
    return -1;
  }
  if (ein <= 0 && eon > 0)
    ein = eon - now_s;
  if (ein <= 0) {
    kvp_seterr(err, errlen, KVP_EINVAL, "token response without a usable expiry");
    return -1;
  }
  ti->expires_in_s = ein;
  ti->refresh_in_s = kv_json_int(json_object_get(j, "refresh_in"));
  ti->access_token = strdup(tok);
  if (ti->access_token == NULL)
    return -1;
  return 0;
}
