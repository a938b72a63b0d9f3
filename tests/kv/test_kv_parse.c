/*
 * Unit tests of the Key Vault backend's parsers, fed with the real example
 * payloads of ../shared/kv-examples (KVP11_SHARED_DIR; skipped when absent).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <CUnit/Basic.h>
#include <openssl/evp.h>

#include "backend/keyvault/kv.h"

static char g_dir[1024];

/* responses.200.body of an example file (new reference) */
static json_t *example_body(const char *ver, const char *file)
{
  char path[1400];
  json_error_t err;
  json_t *root, *body;
  snprintf(path, sizeof(path), "%s/kv-examples/%s/%s", g_dir, ver, file);
  root = json_load_file(path, 0, &err);
  if (root == NULL) {
    fprintf(stderr, "%s: %s\n", path, err.text);
    return NULL;
  }
  body = json_object_get(json_object_get(json_object_get(root, "responses"), "200"), "body");
  json_incref(body);
  json_decref(root);
  return body;
}

static void test_b64url(void)
{
  const unsigned char in[] = {0xfb, 0xff, 0x00, 0x3e, 0x3f};
  unsigned char *out = NULL;
  size_t n = 0;
  char *s = kv_b64url_encode(in, sizeof(in));
  CU_ASSERT_PTR_NOT_NULL_FATAL(s);
  CU_ASSERT_STRING_EQUAL(s, "-_8APj8");
  CU_ASSERT_EQUAL(kv_b64url_decode(s, &out, &n), 0);
  CU_ASSERT_EQUAL(n, sizeof(in));
  CU_ASSERT(out != NULL && memcmp(out, in, sizeof(in)) == 0);
  free(out);
  /* standard alphabet and padding are accepted too */
  CU_ASSERT_EQUAL(kv_b64url_decode("+/8APj8=", &out, &n), 0);
  CU_ASSERT(n == sizeof(in) && memcmp(out, in, n) == 0);
  free(out);
  CU_ASSERT_EQUAL(kv_b64url_decode("", &out, &n), 0);
  CU_ASSERT_EQUAL(n, 0);
  free(out);
  CU_ASSERT_EQUAL(kv_b64url_decode("ab.c", &out, &n), -1);
  CU_ASSERT_EQUAL(kv_b64url_decode("abcde", &out, &n), -1);
  CU_ASSERT_EQUAL(kv_b64url_decode(NULL, &out, &n), -1);
  free(s);
}

static void check_bundle(const char *file, const char *name, const char *version, unsigned bits)
{
  json_t *b = example_body("7.5", file);
  kv_key_info ki;
  char err[256] = "";
  CU_ASSERT_PTR_NOT_NULL_FATAL(b);
  CU_ASSERT_EQUAL_FATAL(kv_key_bundle_parse(b, &ki, err, sizeof(err)), 0);
  CU_ASSERT_STRING_EQUAL(ki.name, name);
  CU_ASSERT_STRING_EQUAL(ki.version, version);
  CU_ASSERT_EQUAL((unsigned)EVP_PKEY_get_bits(ki.pub), bits);
  CU_ASSERT_EQUAL(EVP_PKEY_get_base_id(ki.pub), EVP_PKEY_RSA);
  CU_ASSERT_EQUAL(ki.ops, KV_OP_ENCRYPT | KV_OP_DECRYPT | KV_OP_SIGN | KV_OP_VERIFY | KV_OP_WRAP |
                              KV_OP_UNWRAP);
  CU_ASSERT_EQUAL(ki.enabled, 1);
  kv_key_info_clear(&ki);
  json_decref(b);
}

static void test_key_bundles(void)
{
  check_bundle("GetKey-example.json", "CreateSoftKeyTest", "78deebed173b48e48f55abf87ed4cf71", 2048);
  check_bundle("CreateKey-example.json", "CreateSoftKeyTest", "78deebed173b48e48f55abf87ed4cf71",
               2048);
  check_bundle("ImportKey-example.json", "ImportSoftKeyTest", "2eb4a15d74184c6f84159c3ca90f0f4b",
               2048);
  check_bundle("DeleteKey-example.json", "CreateSoftKeyTest", "78deebed173b48e48f55abf87ed4cf71",
               2048);
}

static void test_key_bundle_bad(void)
{
  kv_key_info ki;
  char err[256];
  json_t *b;
  /* no key object */
  b = json_pack("{s:{s:b}}", "attributes", "enabled", 1);
  CU_ASSERT_EQUAL(kv_key_bundle_parse(b, &ki, err, sizeof(err)), -1);
  json_decref(b);
  /* unversioned kid */
  b = json_pack("{s:{s:s, s:s, s:s, s:s}}", "key", "kid", "https://v.vault.azure.net/keys/k1",
                "kty", "RSA", "n", "AQAB", "e", "AQAB");
  CU_ASSERT_EQUAL(kv_key_bundle_parse(b, &ki, err, sizeof(err)), -1);
  json_decref(b);
  /* EC point that is not on the curve */
  b = json_pack("{s:{s:s, s:s, s:s, s:s, s:s}, s:{s:b, s:I}}", "key", "kid",
                "https://v.vault.azure.net/keys/k1/0123", "kty", "EC-HSM", "crv", "P-256", "x",
                "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "y",
                "AgAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "attributes", "enabled", 0, "exp",
                (json_int_t)1700000000);
  CU_ASSERT_EQUAL(kv_key_bundle_parse(b, &ki, err, sizeof(err)), -1);
  CU_ASSERT(strstr(err, "EC") != NULL);
  json_decref(b);
  /* unsupported curve */
  b = json_pack("{s:{s:s, s:s, s:s, s:s, s:s}}", "key", "kid",
                "https://v.vault.azure.net/keys/k1/0123", "kty", "EC", "crv", "P-192", "x", "AQ",
                "y", "AQ");
  CU_ASSERT_EQUAL(kv_key_bundle_parse(b, &ki, err, sizeof(err)), -1);
  json_decref(b);
}

static void test_ec_jwk(void)
{
  /* a real P-256 point (the generator) with enabled:false and exp */
  json_t *b = json_pack(
      "{s:{s:s, s:s, s:[s,s], s:s, s:s, s:s}, s:{s:b, s:I}, s:b}", "key", "kid",
      "https://v.vault.azure.net/keys/ec1/abcdef", "kty", "EC-HSM", "key_ops", "sign", "verify",
      "crv", "P-256", "x", "axfR8uEsQkf4vOblY6RA8ncDfYEt6zOg9KE5RdiYwpY", "y",
      "T-NC4v4af5uO5-tKfA-eFivOM1drMV7Oy7ZAaDe_UfU", "attributes", "enabled", 0, "exp",
      (json_int_t)1700000000, "managed", 1);
  kv_key_info ki;
  char err[256];
  CU_ASSERT_EQUAL_FATAL(kv_key_bundle_parse(b, &ki, err, sizeof(err)), 0);
  CU_ASSERT_EQUAL(EVP_PKEY_get_base_id(ki.pub), EVP_PKEY_EC);
  CU_ASSERT_EQUAL(EVP_PKEY_get_bits(ki.pub), 256);
  CU_ASSERT_EQUAL(ki.ops, KV_OP_SIGN | KV_OP_VERIFY);
  CU_ASSERT_EQUAL(ki.enabled, 0);
  CU_ASSERT_EQUAL(ki.exp, 1700000000);
  CU_ASSERT_EQUAL(ki.managed, 1);
  kv_key_info_clear(&ki);
  json_decref(b);
}

static void test_lists(void)
{
  char **names = NULL, *next = NULL;
  size_t n = 0;
  json_t *b = example_body("7.5", "GetKeys-example.json");
  CU_ASSERT_PTR_NOT_NULL_FATAL(b);
  CU_ASSERT_EQUAL(kv_list_page_parse(b, &names, &n, &next), 0);
  CU_ASSERT_EQUAL_FATAL(n, 1);
  CU_ASSERT_STRING_EQUAL(names[0], "sdktestkey");
  CU_ASSERT(next != NULL && strstr(next, "$skiptoken=") != NULL);
  free(next);
  json_decref(b);
  b = example_body("7.5", "GetKeyVersions-example.json");
  CU_ASSERT_PTR_NOT_NULL_FATAL(b);
  CU_ASSERT_EQUAL(kv_list_page_parse(b, &names, &n, &next), 0);
  CU_ASSERT_EQUAL_FATAL(n, 2);
  CU_ASSERT_STRING_EQUAL(names[1], "listkeyversionstest");
  CU_ASSERT_PTR_NOT_NULL(next);
  free(next);
  json_decref(b);
  /* last page: nextLink null */
  b = json_pack("{s:[], s:n}", "value", "nextLink");
  CU_ASSERT_EQUAL(kv_list_page_parse(b, &names, &n, &next), 0);
  CU_ASSERT_PTR_NULL(next);
  json_decref(b);
  b = json_pack("{s:s}", "value", "x");
  CU_ASSERT_EQUAL(kv_list_page_parse(b, &names, &n, &next), -1);
  json_decref(b);
  while (n > 0)
    free(names[--n]);
  free(names);
}

static void test_op_results(void)
{
  json_t *b = example_body("7.5", "sign-example.json");
  unsigned char *v = NULL;
  size_t n = 0;
  char *name = NULL, *ver = NULL;
  CU_ASSERT_PTR_NOT_NULL_FATAL(b);
  CU_ASSERT_EQUAL(kv_b64url_decode(json_string_value(json_object_get(b, "value")), &v, &n), 0);
  CU_ASSERT_EQUAL(n, 256);
  free(v);
  CU_ASSERT_EQUAL(kv_kid_split(json_string_value(json_object_get(b, "kid")), &name, &ver), 0);
  CU_ASSERT_STRING_EQUAL(name, "testkey");
  CU_ASSERT_STRING_EQUAL(ver, "9885aa558e8d448789683188f8c194b0");
  free(name);
  free(ver);
  json_decref(b);
  b = example_body("7.5", "decrypt-example.json");
  CU_ASSERT_PTR_NOT_NULL_FATAL(b);
  CU_ASSERT_EQUAL(kv_b64url_decode(json_string_value(json_object_get(b, "value")), &v, &n), 0);
  CU_ASSERT_EQUAL(n, 10);
  free(v);
  json_decref(b);
  /* 7.6 quirk: a wrapKey value in standard base64 damaged with a '.' */
  b = example_body("7.6-partial", "wrapKey-example.json");
  if (b != NULL) {
    const char *s = json_string_value(json_object_get(b, "value"));
    if (s != NULL && strchr(s, '.') != NULL)
      CU_ASSERT_EQUAL(kv_b64url_decode(s, &v, &n), -1);
    json_decref(b);
  }
  CU_ASSERT_EQUAL(kv_kid_split("https://h/secrets/x/1", &name, &ver), -1);
  CU_ASSERT_EQUAL(kv_kid_split("https://h/keys/k1", &name, &ver), 0);
  CU_ASSERT_STRING_EQUAL(name, "k1");
  CU_ASSERT_PTR_NULL(ver);
  free(name);
  /* names and versions from a vault's answer go into URLs: the admin's rules apply */
  CU_ASSERT_EQUAL(kv_kid_split("https://h/keys/..%2F..%2Fsecrets/1", &name, &ver), -1);
  CU_ASSERT_EQUAL(kv_kid_split("https://h/keys/k1/ver?x=1&y", &name, &ver), 0);
  free(name);
  free(ver);
  CU_ASSERT_EQUAL(kv_kid_split("https://h/keys/k1/v%2F2", &name, &ver), -1);
  CU_ASSERT_EQUAL(kv_kid_split("https://h/keys/k_1/abc", &name, &ver), -1);
  CU_ASSERT_PTR_NULL(name);
  CU_ASSERT_PTR_NULL(ver);
}

static void test_errors(void)
{
  kv_resp r;
  kv_error_info ei;
  memset(&r, 0, sizeof(r));
  r.json = json_loads("{\"error\":{\"code\":\"Forbidden\",\"message\":\"no\\r\\nway\","
                      "\"innererror\":{\"code\":\"ForbiddenByPolicy\"}}}",
                      0, NULL);
  kv_error_parse(&r, &ei);
  CU_ASSERT_STRING_EQUAL(ei.code, "Forbidden");
  CU_ASSERT_STRING_EQUAL(ei.inner, "ForbiddenByPolicy");
  CU_ASSERT_STRING_EQUAL(ei.message, "no  way");
  json_decref(r.json);
  r.json = json_loads("{\"error\":\"invalid_client\",\"error_description\":\"AADSTS7000215: "
                      "Invalid client secret.\\r\\nTrace ID: 1\"}",
                      0, NULL);
  kv_error_parse(&r, &ei);
  CU_ASSERT_STRING_EQUAL(ei.code, "invalid_client");
  CU_ASSERT_STRING_EQUAL(ei.message, "AADSTS7000215: Invalid client secret.");
  json_decref(r.json);
  r.json = NULL;
  kv_error_parse(&r, &ei);
  CU_ASSERT_STRING_EQUAL(ei.code, "-");
  CU_ASSERT_STRING_EQUAL(ei.message, "empty body");
}

/* 403 answers classified by cause (issue 11: KeyNotYetValid was "lacks the 'sign' permission") */
static void test_forbidden_causes(void)
{
  static const struct {
    const char *inner, *message;
    kv_cause want;
  } cases[] = {
      {"KeyNotYetValid", "Operation sign is not allowed on a key that is not yet valid.",
       KV_CAUSE_NOT_YET_VALID},
      {"KeyExpired", "Operation sign is not allowed on an expired key.", KV_CAUSE_EXPIRED},
      {"KeyDisabled", "Operation sign is not allowed on a disabled key.", KV_CAUSE_DISABLED},
      {"KeyOperationForbidden", "Operation sign is not permitted on this key.", KV_CAUSE_KEY_OPS},
      {"ForbiddenByPolicy", "does not have keys sign permission", KV_CAUSE_PERMISSION},
      {"ForbiddenByRbac", "Caller is not authorized", KV_CAUSE_PERMISSION},
      {"ForbiddenByFirewall", "Client address is not authorized", KV_CAUSE_FIREWALL},
      {"", "The key is not yet valid", KV_CAUSE_NOT_YET_VALID},
      {"", "Operation not allowed on a disabled key", KV_CAUSE_DISABLED},
  };
  size_t i;
  char buf[160];
  for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    kv_error_info ei;
    memset(&ei, 0, sizeof(ei));
    snprintf(ei.code, sizeof(ei.code), "Forbidden");
    snprintf(ei.inner, sizeof(ei.inner), "%s", cases[i].inner);
    snprintf(ei.message, sizeof(ei.message), "%s", cases[i].message);
    CU_ASSERT_EQUAL(kv_forbidden_cause(&ei), cases[i].want);
  }
  kv_cause_text(KV_CAUSE_NOT_YET_VALID, "sign", 1796000000, buf, sizeof(buf));
  CU_ASSERT_STRING_EQUAL(buf, "the key is not valid before 2026-11-30T00:53:20Z (nbf)");
  kv_cause_text(KV_CAUSE_PERMISSION, "decrypt", 0, buf, sizeof(buf));
  CU_ASSERT_STRING_EQUAL(buf, "the application lacks the 'decrypt' permission");
}

static void test_challenge(void)
{
  kv_challenge c;
  char *res = NULL;
  CU_ASSERT_EQUAL_FATAL(
      kv_challenge_parse("Bearer authorization=\"https://login.windows.net/72f988bf-86f1-41af-91ab-"
                         "2d7cd011db47\", resource=\"https://vault.azure.net\"",
                         &c),
      0);
  CU_ASSERT_STRING_EQUAL(c.authorization,
                         "https://login.windows.net/72f988bf-86f1-41af-91ab-2d7cd011db47");
  CU_ASSERT_STRING_EQUAL(c.resource, "https://vault.azure.net");
  CU_ASSERT_EQUAL(kv_resource_check(&c, "myvault.vault.azure.net", &res), 0);
  CU_ASSERT_STRING_EQUAL(res, "https://vault.azure.net");
  free(res);
  CU_ASSERT_EQUAL(kv_resource_check(&c, "myvault.vault.azure.net.evil.com", &res), -1);
  CU_ASSERT_EQUAL(kv_resource_check(&c, "evilvault.azure.net", &res), -1);
  CU_ASSERT_EQUAL(kv_resource_check(&c, "vault.azure.net", &res), 0);
  free(res);
  kv_challenge_clear(&c);

  /* Managed HSM; scope instead of resource; authorization_uri spelling */
  CU_ASSERT_EQUAL_FATAL(kv_challenge_parse("Bearer authorization_uri=\"https://login.microsoftonline."
                                           "com/t\",scope=\"https://managedhsm.azure.net/.default\"",
                                           &c),
                        0);
  CU_ASSERT_STRING_EQUAL(c.authorization, "https://login.microsoftonline.com/t");
  CU_ASSERT_EQUAL(kv_resource_check(&c, "myhsm.managedhsm.azure.net", &res), 0);
  CU_ASSERT_STRING_EQUAL(res, "https://managedhsm.azure.net");
  free(res);
  CU_ASSERT_EQUAL(kv_resource_check(&c, "myvault.vault.azure.net", &res), -1);
  kv_challenge_clear(&c);

  /* the emulator: resource host == vault host */
  CU_ASSERT_EQUAL_FATAL(kv_challenge_parse("Bearer authorization=\"https://127.0.0.1:4443/t\", "
                                           "resource=\"https://127.0.0.1\"",
                                           &c),
                        0);
  CU_ASSERT_EQUAL(kv_resource_check(&c, "127.0.0.1", &res), 0);
  free(res);
  CU_ASSERT_EQUAL(kv_resource_check(&c, "127.0.0.2", &res), -1);
  kv_challenge_clear(&c);

  /* not https: refused */
  CU_ASSERT_EQUAL_FATAL(kv_challenge_parse("Bearer resource=\"http://vault.azure.net\"", &c), 0);
  CU_ASSERT_EQUAL(kv_resource_check(&c, "myvault.vault.azure.net", &res), -1);
  kv_challenge_clear(&c);
  /* userinfo trick */
  CU_ASSERT_EQUAL_FATAL(kv_challenge_parse("Bearer resource=\"https://evil@vault.azure.net\"", &c), 0);
  CU_ASSERT_EQUAL(kv_resource_check(&c, "myvault.vault.azure.net", &res), -1);
  kv_challenge_clear(&c);

  CU_ASSERT_EQUAL(kv_challenge_parse("Basic realm=\"x\"", &c), -1);
  CU_ASSERT_EQUAL(kv_challenge_parse("Bearer authorization=\"https://x/t\"", &c), -1);
  CU_ASSERT_EQUAL(kv_challenge_parse("Bearer resource=\"unterminated", &c), -1);
  CU_ASSERT_EQUAL(kv_challenge_parse(NULL, &c), -1);
  CU_ASSERT_EQUAL(kv_challenge_parse("Bearer", &c), -1);
}

static void test_url_host(void)
{
  char *h = kv_url_host("https://MyVault.Vault.Azure.NET:443/keys");
  CU_ASSERT_STRING_EQUAL(h, "myvault.vault.azure.net");
  free(h);
  h = kv_url_host("https://127.0.0.1:8443");
  CU_ASSERT_STRING_EQUAL(h, "127.0.0.1");
  free(h);
  CU_ASSERT_PTR_NULL(kv_url_host("http://x"));
  CU_ASSERT_PTR_NULL(kv_url_host("https://"));
  CU_ASSERT_PTR_NULL(kv_url_host("https://a@b"));
}

static void test_tokens(void)
{
  kv_token_info ti;
  char err[256];
  json_t *j = json_loads("{\"token_type\":\"Bearer\",\"expires_in\":3599,\"ext_expires_in\":3599,"
                         "\"access_token\":\"eyJ0eXAi\"}",
                         0, NULL);
  CU_ASSERT_EQUAL(kv_token_parse(j, 1000, &ti, err, sizeof(err)), 0);
  CU_ASSERT_STRING_EQUAL(ti.access_token, "eyJ0eXAi");
  CU_ASSERT_EQUAL(ti.expires_in_s, 3599);
  kv_free_wipe(ti.access_token);
  json_decref(j);
  /* IMDS: strings */
  j = json_loads("{\"access_token\":\"t\",\"expires_in\":\"86399\",\"expires_on\":\"1700086399\","
                 "\"resource\":\"https://vault.azure.net\",\"token_type\":\"Bearer\"}",
                 0, NULL);
  CU_ASSERT_EQUAL(kv_token_parse(j, 1700000000, &ti, err, sizeof(err)), 0);
  CU_ASSERT_EQUAL(ti.expires_in_s, 86399);
  kv_free_wipe(ti.access_token);
  json_decref(j);
  /* App Service: expires_on only */
  j = json_loads("{\"access_token\":\"t\",\"expires_on\":\"1700000600\",\"token_type\":\"Bearer\"}",
                 0, NULL);
  CU_ASSERT_EQUAL(kv_token_parse(j, 1700000000, &ti, err, sizeof(err)), 0);
  CU_ASSERT_EQUAL(ti.expires_in_s, 600);
  kv_free_wipe(ti.access_token);
  json_decref(j);
  /* refresh_in */
  j = json_loads("{\"access_token\":\"t\",\"expires_in\":7200,\"refresh_in\":3600}", 0, NULL);
  CU_ASSERT_EQUAL(kv_token_parse(j, 0, &ti, err, sizeof(err)), 0);
  CU_ASSERT_EQUAL(ti.refresh_in_s, 3600);
  kv_free_wipe(ti.access_token);
  json_decref(j);
  /* bad ones */
  j = json_loads("{\"expires_in\":3599}", 0, NULL);
  CU_ASSERT_EQUAL(kv_token_parse(j, 0, &ti, err, sizeof(err)), -1);
  json_decref(j);
  j = json_loads("{\"access_token\":\"t\"}", 0, NULL);
  CU_ASSERT_EQUAL(kv_token_parse(j, 0, &ti, err, sizeof(err)), -1);
  json_decref(j);
  j = json_loads("{\"access_token\":\"t\",\"expires_in\":5,\"token_type\":\"pop\"}", 0, NULL);
  CU_ASSERT_EQUAL(kv_token_parse(j, 0, &ti, err, sizeof(err)), -1);
  json_decref(j);
}

int main(void)
{
  const char *d = getenv("KVP11_SHARED_DIR");
  struct stat st;
  CU_pSuite s;
  unsigned fails;
  char probe[1100];

  if (d == NULL || d[0] == '\0') {
    fprintf(stderr, "KVP11_SHARED_DIR not set: skipped\n");
    return 77;
  }
  snprintf(g_dir, sizeof(g_dir), "%s", d);
  snprintf(probe, sizeof(probe), "%s/kv-examples/7.5/GetKey-example.json", g_dir);
  if (stat(probe, &st) != 0) {
    fprintf(stderr, "%s missing: skipped\n", probe);
    return 77;
  }
  if (CU_initialize_registry() != CUE_SUCCESS)
    return 1;
  s = CU_add_suite("kv_parse", NULL, NULL);
  CU_add_test(s, "base64url", test_b64url);
  CU_add_test(s, "key bundles from kv-examples", test_key_bundles);
  CU_add_test(s, "bad key bundles", test_key_bundle_bad);
  CU_add_test(s, "EC JWK and attributes", test_ec_jwk);
  CU_add_test(s, "list pages", test_lists);
  CU_add_test(s, "operation results", test_op_results);
  CU_add_test(s, "error bodies", test_errors);
  CU_add_test(s, "403 causes", test_forbidden_causes);
  CU_add_test(s, "WWW-Authenticate and resource check", test_challenge);
  CU_add_test(s, "url host", test_url_host);
  CU_add_test(s, "token responses", test_tokens);
  CU_basic_set_mode(CU_BRM_VERBOSE);
  CU_basic_run_tests();
  fails = CU_get_number_of_failures() + CU_get_number_of_tests_failed();
  CU_cleanup_registry();
  return fails == 0 ? 0 : 1;
}
