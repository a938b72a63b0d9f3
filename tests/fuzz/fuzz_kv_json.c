/*
 * Fuzz target: the Key Vault backend's response parsers (kv_json.c): key
 * bundles (kv_key_bundle_parse, kv_jwk_to_pkey, kv_kid_split), key list pages
 * with nextLink (kv_list_page_parse), error bodies (kv_error_parse) and token
 * responses (kv_token_parse).
 *
 * The input is a JSON document. Every parser sees the document itself and,
 * when it is a REST API example of ../shared/kv-examples (an object with
 * "responses": {"200": {"body": ...}}), every response body in it, so those
 * files serve as seeds unchanged. Built-in seeds add token responses, errors
 * and the shapes the examples lack.
 */
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "backend/keyvault/kv.h"
#include "core/util.h"
#include "fuzz_common.h"

static const char *const seeds[][2] = {
  {"token-aad.json",
   "{\"token_type\":\"Bearer\",\"expires_in\":3599,\"ext_expires_in\":3599,"
   "\"access_token\":\"eyJ0eXAiOiJKV1QifQ.eyJhdWQiOiJodHRwczovL3ZhdWx0LmF6dXJlLm5ldCJ9.c2ln\"}"},
  {"token-imds.json",
   "{\"access_token\":\"tok\",\"refresh_token\":\"\",\"expires_in\":\"86399\","
   "\"expires_on\":\"1700000000\",\"not_before\":\"1699913300\","
   "\"resource\":\"https://vault.azure.net\",\"token_type\":\"Bearer\"}"},
  {"token-appservice.json",
   "{\"access_token\":\"tok\",\"expires_on\":1900000000,\"resource\":\"https://vault.azure.net\","
   "\"token_type\":\"Bearer\",\"client_id\":\"x\",\"refresh_in\":1800}"},
  {"token-bad-type.json", "{\"access_token\":\"tok\",\"token_type\":\"MAC\",\"expires_in\":1}"},
  {"token-real-expiry.json", "{\"access_token\":\"tok\",\"expires_in\":3599.5,\"refresh_in\":-7}"},
  {"error-kv.json",
   "{\"error\":{\"code\":\"Forbidden\",\"message\":\"The user, group or application does not "
   "have keys sign permission\",\"innererror\":{\"code\":\"ForbiddenByPolicy\"}}}"},
  {"error-aad.json",
   "{\"error\":\"invalid_client\",\"error_description\":\"AADSTS7000215: Invalid client secret "
   "provided.  Trace ID: 0\\r\\nCorrelation ID: 1\",\"error_codes\":[7000215]}"},
  {"error-throttled.json", "{\"error\":{\"code\":\"Throttled\",\"message\":\"\\u0001\\n\"}}"},
  {"list-next.json",
   "{\"value\":[{\"kid\":\"https://v.vault.azure.net/keys/a\",\"attributes\":{\"enabled\":true}},"
   "{\"kid\":\"https://v.vault.azure.net/keys/b/0123\"},{\"kid\":7},{}],"
   "\"nextLink\":\"https://v.vault.azure.net/keys?api-version=7.5&$skiptoken=abc&maxresults=2\"}"},
  {"list-last.json", "{\"value\":[],\"nextLink\":null}"},
  {"bundle-ec.json",
   "{\"key\":{\"kid\":\"https://v.vault.azure.net/keys/ec/1f2e\",\"kty\":\"EC-HSM\","
   "\"crv\":\"P-256\",\"key_ops\":[\"sign\",\"verify\"],"
   "\"x\":\"axfR8uEsQkf4vOblY6RA8ncDfYEt6zOg9KE5RdiYwpY\","
   "\"y\":\"T-NC4v4af5uO5-tKfA-eFivOM1drMV7Oy7ZAaDe_UfU\"},"
   "\"attributes\":{\"enabled\":false,\"nbf\":\"1700000000\",\"exp\":1.9e9},\"managed\":true}"},
  {"bundle-ec-p521.json",
   "{\"key\":{\"kid\":\"https://v.vault.azure.net/keys/ec5/v\",\"kty\":\"EC\",\"crv\":\"P-521\","
   "\"x\":\"AA\",\"y\":\"AQ\"}}"},
  {"bundle-rsa-short.json",
   "{\"key\":{\"kid\":\"https://v.vault.azure.net/keys/r/v\",\"kty\":\"RSA\",\"n\":\"AQAB\","
   "\"e\":\"AQAB\"}}"},
};

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
  const char *dir = fuzz_seed_dir();
  if (dir != NULL) {
    for (size_t i = 0; i < KVP_ARRAY_SIZE(seeds); i++)
      if (fuzz_seed_str(dir, seeds[i][0], seeds[i][1]) != 0)
        exit(1);
    exit(0);
  }
  return 0;
}

static void parse_all(json_t *j, const char *text, size_t len)
{
  char err[KVP_ERRLEN];
  kv_key_info ki;
  kv_token_info ti;
  kv_error_info ei;
  kv_resp resp;
  char **names = NULL, *next = NULL;
  size_t n = 0;
  EVP_PKEY *pk = NULL;

  err[0] = '\0';
  if (kv_key_bundle_parse(j, &ki, err, sizeof(err)) == 0) {
    FUZZ_CHECK(ki.kid != NULL && ki.name != NULL && ki.version != NULL && ki.pub != NULL);
    kv_key_info_clear(&ki);
  } else {
    FUZZ_CHECK(err[0] != '\0' && ki.kid == NULL && ki.pub == NULL);
  }

  err[0] = '\0';
  if (kv_jwk_to_pkey(json_object_get(j, "key"), &pk, err, sizeof(err)) == 0)
    FUZZ_CHECK(pk != NULL);
  else
    FUZZ_CHECK(pk == NULL && err[0] != '\0');
  EVP_PKEY_free(pk);

  {
    char *name = NULL, *ver = NULL;
    if (kv_kid_split(json_string_value(json_object_get(j, "kid")), &name, &ver) == 0)
      FUZZ_CHECK(name != NULL && name[0] != '\0' && strchr(name, '/') == NULL);
    free(name);
    free(ver);
  }

  if (kv_list_page_parse(j, &names, &n, &next) == 0)
    FUZZ_CHECK(n == 0 || names != NULL);
  for (size_t i = 0; i < n; i++) {
    FUZZ_CHECK(names[i] != NULL);
    free(names[i]);
  }
  free(names);
  free(next);

  err[0] = '\0';
  if (kv_token_parse(j, 1700000000, &ti, err, sizeof(err)) == 0) {
    FUZZ_CHECK(ti.access_token != NULL && ti.access_token[0] != '\0' && ti.expires_in_s > 0);
    kv_free_wipe(ti.access_token);
  } else {
    FUZZ_CHECK(err[0] != '\0' || ti.access_token == NULL);
    kv_free_wipe(ti.access_token);
  }

  memset(&resp, 0, sizeof(resp));
  resp.status = 400;
  resp.body = (char *)text;
  resp.len = len;
  resp.retry_after_ms = -1;
  resp.json = j;
  memcpy(resp.request_id, "-", 2);
  kv_error_parse(&resp, &ei);
  FUZZ_CHECK(memchr(ei.code, '\0', sizeof(ei.code)) != NULL && ei.code[0] != '\0');
  FUZZ_CHECK(memchr(ei.message, '\0', sizeof(ei.message)) != NULL);
  FUZZ_CHECK(memchr(ei.inner, '\0', sizeof(ei.inner)) != NULL);
  for (const char *c = ei.message; *c; c++)
    FUZZ_CHECK((unsigned char)*c >= 0x20); /* one log line */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  char *text = fuzz_strndup(data, size);
  json_error_t jerr;
  json_t *j, *responses, *r;
  const char *code;

  if (text == NULL)
    return 0;
  j = json_loadb(text, size, JSON_DECODE_ANY, &jerr);
  parse_all(j, text, size); /* NULL (not JSON) too: that is the "body is not JSON" path */
  responses = json_object_get(j, "responses");
  json_object_foreach(responses, code, r) {
    json_t *body = json_object_get(r, "body");
    if (body != NULL) {
      char *btext = json_dumps(body, JSON_ENCODE_ANY);
      parse_all(body, btext != NULL ? btext : "", btext != NULL ? strlen(btext) : 0);
      free(btext);
    }
  }
  json_decref(j);
  free(text);
  return 0;
}
