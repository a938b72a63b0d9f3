/*
 * Internals of the Key Vault backend (not a contract of the project).
 *
 *   kv_http.c   libcurl: global init, share handle, pool of easy handles,
 *               capped bodies, header capture, retry with backoff
 *   kv_json.c   base64url, JWK -> EVP_PKEY, KeyBundle / error / token
 *               parsing, WWW-Authenticate parsing and resource check
 *   kv_auth.c   access tokens: client secret, client certificate (JWT
 *               assertion), managed identity, workload identity; cache
 *   kv_keys.c   key cache, open (with the registry's hint: no request),
 *               live key state (enabled, nbf, exp, key_ops) and refusal causes
 *   kv_sign.c   sign and decrypt
 *   kv_verify.c prepared local verification of every signature
 *   keyvault.c  the backend object, the data-plane call (challenge, 401,
 *               error mapping) and the kvp_backend_ops table
 */
#ifndef KVP_BACKEND_KEYVAULT_KV_H
#define KVP_BACKEND_KEYVAULT_KV_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include <curl/curl.h>
#include <jansson.h>
#include <openssl/evp.h>

#include "backend/backend.h"
#include "core/config.h"

/* Largest response body accepted (bytes). */
#define KV_BODY_CAP (1024 * 1024)
/* How long an opened key's public part and attributes are reused. */
#define KV_KEY_TTL_MS (10L * 60L * 1000L)

/* ---- time ---- */
int64_t kv_now_ms(void);  /* monotonic */
int64_t kv_wall_s(void);  /* Unix seconds */
void kv_sleep_ms(int64_t ms);

/* ---- HTTP (kv_http.c) ---- */
typedef struct kv_http kv_http;

typedef struct kv_req {
  const char *method;       /* GET, POST, PUT, PATCH, DELETE */
  const char *url;
  const char *body;         /* NULL: no body */
  size_t body_len;
  const char *content_type; /* default application/json when there is a body */
  const char *auth_header;  /* "Authorization: Bearer ..." (secret) or NULL */
  const char *extra_header; /* e.g. "Metadata: true" or NULL */
  int no_proxy;             /* IMDS: never through a proxy */
  int retry_404_410;        /* IMDS: 404 and 410 (upgrading) are transient too */
} kv_req;

typedef struct kv_resp {
  long status;              /* 0 when no HTTP response arrived */
  CURLcode cc;
  char curl_err[CURL_ERROR_SIZE];
  char *body;               /* NUL-terminated, may be NULL */
  size_t len;
  int capped;               /* body larger than KV_BODY_CAP */
  char request_id[96];      /* x-ms-request-id, "-" when absent */
  char *www_auth;           /* WWW-Authenticate, or NULL */
  long retry_after_ms;      /* -1 when absent */
  json_t *json;             /* parsed body when it is a JSON object */
} kv_resp;

/* Retry policy of one logical call. */
typedef struct kv_retry {
  int64_t deadline_ms;      /* kv_now_ms() based */
  long attempt_ms;          /* one attempt at most this long (and half the time left); 0: no cap */
  int max_retries;
  long unit_ms;             /* first backoff step; 1000 in production */
  const char *what;         /* for log lines: "vault prod: key k1: sign" */
} kv_retry;

kv_http *kv_http_new(const char *ca_file);
void kv_http_free(kv_http *h, int forked);
/* One request. Returns 0 when an HTTP response arrived (any status). */
int kv_http_do(kv_http *h, const kv_req *req, long timeout_ms, kv_resp *resp);
/*
 * The request with retries on transport errors, 408, 429, 500, 502, 503,
 * 504 and (json_2xx) 2xx bodies that are not a JSON object. Honours
 * Retry-After; otherwise backs off unit, 2*unit, 4*unit ... with +-20%
 * jitter; never sleeps past the deadline. resp holds the last answer.
 */
void kv_http_do_retry(kv_http *h, const kv_req *req, const kv_retry *rt, int json_2xx,
                      kv_resp *resp);
/* Free (and wipe, when wipe != 0) everything a response holds. */
void kv_resp_clear(kv_resp *r, int wipe);
/* Wipe and free a curl_easy_escape()d or malloc'd secret string. */
void kv_free_wipe(char *s);
/* URL-escape (malloc'd, free with free()/kv_free_wipe). */
char *kv_escape(const char *s);

/* ---- JSON, JWK, headers (kv_json.c) ---- */
char *kv_b64url_encode(const unsigned char *in, size_t len);
/* Lenient: accepts base64url or base64, with or without padding. */
int kv_b64url_decode(const char *in, unsigned char **out, size_t *outlen);

typedef struct kv_error_info {
  char code[64];
  char inner[64];
  char message[256];
} kv_error_info;
/* Extract {"error":{"code","message","innererror":{"code"}}} or the token
 * endpoint's {"error","error_description"}. Always fills with something. */
void kv_error_parse(const kv_resp *r, kv_error_info *ei);

typedef struct kv_challenge {
  char *authorization; /* authorization / authorization_uri / authorization_url */
  char *resource;
  char *scope;
} kv_challenge;
int kv_challenge_parse(const char *header, kv_challenge *c);
void kv_challenge_clear(kv_challenge *c);
/* host of an https URL, lower case, without port; NULL when not https. */
char *kv_url_host(const char *url);
/* Resource (or scope) acceptable for vault_host: https, and host equal to
 * or a dot-suffix of vault_host. Writes the resource ("https://host") to *resource. */
int kv_resource_check(const kv_challenge *c, const char *vault_host, char **resource);

#define KV_OP_ENCRYPT 0x01
#define KV_OP_DECRYPT 0x02
#define KV_OP_SIGN 0x04
#define KV_OP_VERIFY 0x08
#define KV_OP_WRAP 0x10
#define KV_OP_UNWRAP 0x20

typedef struct kv_key_info {
  char *kid;        /* versioned id */
  char *name;
  char *version;
  EVP_PKEY *pub;
  unsigned ops;     /* KV_OP_* from key_ops */
  int enabled;
  int64_t nbf, exp; /* 0 when absent */
  int managed;
} kv_key_info;
/* Parse a KeyBundle. Returns 0, or -1 with err filled. */
int kv_key_bundle_parse(json_t *bundle, kv_key_info *ki, char *err, size_t errlen);
void kv_key_info_clear(kv_key_info *ki);
/* JWK (RSA n/e, EC crv/x/y) -> public EVP_PKEY. */
int kv_jwk_to_pkey(json_t *jwk, EVP_PKEY **out, char *err, size_t errlen);
/* "https://h/keys/NAME/VERSION" -> name and version (malloc'd; version may be NULL). */
int kv_kid_split(const char *kid, char **name, char **version);

typedef struct kv_token_info {
  char *access_token; /* secret */
  int64_t expires_in_s; /* seconds from receipt */
  int64_t refresh_in_s; /* 0 when absent */
} kv_token_info;
/* Token endpoint / IMDS / App Service responses: expires_in (number or
 * string), expires_on (Unix seconds as number or string), refresh_in. */
int kv_token_parse(json_t *j, int64_t now_s, kv_token_info *ti, char *err, size_t errlen);

/* Keys listing page: names appended to *names; *next set to nextLink or NULL. */
int kv_list_page_parse(json_t *j, char ***names, size_t *n, char **next);

/* ---- auth (kv_auth.c) ---- */
typedef struct kv_auth kv_auth;
kv_auth *kv_auth_new(const kvp_vault_conf *conf, kv_http *http);
void kv_auth_free(kv_auth *a, int forked);
/*
 * A malloc'd "Authorization: Bearer <token>" for resource (e.g.
 * "https://vault.azure.net"); free with kv_free_wipe(). stale: the header
 * that just got a 401 (forces a new token unless another thread already
 * replaced it), or NULL.
 */
CK_RV kv_auth_header(kv_auth *a, const char *resource, const char *stale, const kv_retry *rt,
                     char **hdr);
/* Attempts to get a token so far (tests, debug, kvp11 check): requests made, and attempts
 * answered at once because the token endpoint refused the credential moments ago. */
unsigned long kv_auth_token_requests(kv_auth *a);

/* ---- the backend (keyvault.c) ---- */
typedef struct kv_backend kv_backend;

/* Why the vault refuses (or would refuse) an operation with a key. */
typedef enum {
  KV_CAUSE_NONE = 0,
  KV_CAUSE_DISABLED,
  KV_CAUSE_NOT_YET_VALID, /* nbf in the future */
  KV_CAUSE_EXPIRED,       /* exp passed */
  KV_CAUSE_KEY_OPS,       /* the key's key_ops lack the operation */
  KV_CAUSE_PERMISSION,    /* the principal lacks the permission */
  KV_CAUSE_FIREWALL,
  KV_CAUSE_OTHER,
} kv_cause;

/* Classify a 403 answer's error (Key Vault error and inner codes). */
kv_cause kv_forbidden_cause(const kv_error_info *ei);
/* "the key is disabled", "the key expired at 2026-...Z", ... (perm: "sign"/"decrypt") */
void kv_cause_text(kv_cause c, const char *perm, int64_t t, char *buf, size_t len);

/* A prepared verifier: contexts made once per key and algorithm (kv_verify.c). */
typedef struct kv_verifier kv_verifier;
kv_verifier *kv_verifier_new(EVP_PKEY *pub);
void kv_verifier_free(kv_verifier *v);
/* 1 when sig is a valid signature of digest under alg. Thread-safe. */
int kv_verifier_check(kv_verifier *v, const kvp_sig_alg *alg, const unsigned char *digest,
                      size_t dlen, const unsigned char *sig, size_t slen);

/*
 * One key version known to the backend, shared by every kvp_key opened on it
 * (reference counted under the backend's lock). Its state (enabled, nbf, exp,
 * key_ops) is a cache: see kv_keys.c.
 */
typedef struct kv_cached_key {
  struct kv_cached_key *next;
  int refs;           /* the list's reference + one per opened kvp_key */
  char *ref;          /* cache key: NAME/VERSION, or NAME for an unversioned open */
  char *name;
  char *version;
  EVP_PKEY *pub;
  kv_verifier *verifier;
  kvp_key_type type;
  unsigned bits;
  int curve_nid;
  int64_t fetched_ms; /* unversioned refs: when "latest" was resolved */
  /* live state, guarded by the backend's lock */
  int state_known;    /* 0: opened from the registry, nothing read from the vault yet */
  unsigned ops;       /* KV_OP_* */
  int enabled;
  int64_t nbf, exp;   /* Unix seconds, 0: none */
  int64_t checked_ms; /* the state (or a refusal) was last learned from the vault */
  kv_cause refused[2];    /* [0] sign, [1] decrypt: the vault's last 403 cause */
  int64_t refused_ms[2];
  kv_cause logged[2];     /* last cause logged at error level (once per change) */
  int64_t logged_t[2];
} kv_cached_key;

/* A key version this backend created or imported (delete_key checks it). */
typedef struct kv_created {
  struct kv_created *next;
  char *name;
  char *version;
} kv_created;

struct kv_backend {
  kvp_backend base;
  kvp_vault_conf conf;  /* deep copy */
  char *base_url;       /* conf.url without trailing slash */
  char *host;           /* vault host, lower case */
  kv_http *http;
  kv_auth *auth;
  long unit_ms;         /* backoff unit */
  long attempt_ms;      /* one attempt's timeout (attempt_timeout_ms) */
  pthread_mutex_t lock; /* resource, key cache; never held across I/O */
  char *resource;       /* configured, from the cloud suffix, or from a challenge */
  kv_cached_key *keys;
  long key_ttl_ms;      /* KV_KEY_TTL_MS: unversioned refs re-resolved after this */
  int64_t state_ms;     /* key_cache_s: a local refusal is re-checked after this */
  int no_get;           /* the principal lacks 'get': state comes from 403s only */
  kv_created *created;  /* keys made by this backend (lock) */
};

typedef enum {
  KV_CALL_GET, KV_CALL_LIST, KV_CALL_SIGN, KV_CALL_DECRYPT,
  /* provisioning (kv_provision.c): permissions 'create', 'import', 'delete';
   * PROBE is a 'get' whose 404 is an expected answer (logged at debug only) */
  KV_CALL_CREATE, KV_CALL_IMPORT, KV_CALL_DELETE, KV_CALL_PROBE,
  /* a 'get' of a key's state whose 403 is expected (sign-only principals) */
  KV_CALL_STATE
} kv_call_kind;

/*
 * One data-plane call: challenge if needed, token, request with retries,
 * one token refresh on 401, error mapping and logging. On CKR_OK, resp holds
 * the 2xx response with resp->json set. key: for messages (may be NULL).
 */
CK_RV kv_call(kv_backend *b, kv_call_kind kind, const char *key, const char *method,
              const char *url, const char *body, kv_resp *resp);
void kv_retry_init(kv_backend *b, kv_retry *rt, const char *what);

/* The token resource a vault host's cloud suffix implies ("https://vault.azure.net"
 * for NAME.vault.azure.net), or NULL for a host of no known cloud. */
const char *kv_cloud_resource(const char *host);

/* kv_keys.c */
CK_RV kv_open_key(kvp_backend *be, const char *name, kvp_key **out);
CK_RV kv_open_key_hint(kvp_backend *be, const char *name, const kvp_key_ref_hint *hint,
                       kvp_key **out);
/* Before an operation (op KV_OP_SIGN / KV_OP_DECRYPT): CKR_OK to go to the vault, or
 * CKR_KEY_FUNCTION_NOT_PERMITTED with the cause logged. */
CK_RV kv_state_gate(kv_backend *b, kvp_key *key, unsigned op);
/* After the operation: rv and, for a 403, the vault's answer. */
void kv_state_after(kv_backend *b, kvp_key *key, unsigned op, CK_RV rv, const kv_resp *resp);
void kv_close_key(kvp_backend *be, kvp_key *key);
CK_RV kv_sign(kvp_backend *be, kvp_key *key, const kvp_sig_alg *alg, const CK_BYTE *digest,
              CK_ULONG digest_len, CK_BYTE *sig, CK_ULONG *sig_len);
CK_RV kv_decrypt(kvp_backend *be, kvp_key *key, const kvp_dec_alg *alg, const CK_BYTE *in,
                 CK_ULONG in_len, CK_BYTE *out, CK_ULONG *out_len);
void kv_key_cache_free(kv_backend *b, int forked);
/* Forget every cached version of key name (after a 404, delete or create). */
void kv_cache_drop(kv_backend *b, const char *name);


/* kv_provision.c: the provisioning ops of kvp_backend_ops (see backend.h) */
CK_RV kv_prov_create_key(kvp_backend *be, const char *name, const kvp_key_spec *spec,
                         kvp_key **out);
CK_RV kv_prov_import_key(kvp_backend *be, const char *name, EVP_PKEY *priv,
                         const kvp_key_spec *spec, kvp_key **out);
CK_RV kv_prov_delete_key(kvp_backend *be, const char *name);
CK_RV kv_prov_list_keys(kvp_backend *be, kvp_key_info **out, size_t *n);
CK_RV kv_prov_key_info(kvp_backend *be, const char *name, kvp_key_info *out);
void kv_created_free(kv_backend *b);

/* ---- vault-wide pacing (kv_http.c) ---- */
/* The pacer of a kv_http (tests, debug). */
typedef struct kv_pace_stats {
  double rate;             /* requests/s it paces at; 0: not pacing */
  unsigned long throttled; /* 429s received */
  unsigned long waits;     /* requests that waited for the pacer or a 429's pause */
  int64_t blocked_ms;      /* the vault is paused for this much longer */
} kv_pace_stats;
void kv_http_pace_stats(kv_http *h, kv_pace_stats *st);

#endif
