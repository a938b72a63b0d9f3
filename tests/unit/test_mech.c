/*
 * Unit tests of the mechanism helpers: DigestInfo parsing, hash and MGF
 * tables, ECDSA digest sizing and r||s conversion.
 */
#include <string.h>

#include <CUnit/Basic.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/obj_mac.h>
#include <openssl/rsa.h>

#include "pkcs11/mech.h"
#include "unit_util.h"

static void test_digestinfo_roundtrip(void)
{
  const kvp_hash hashes[] = {KVP_HASH_SHA1, KVP_HASH_SHA224, KVP_HASH_SHA256, KVP_HASH_SHA384,
                             KVP_HASH_SHA512};
  for (size_t i = 0; i < sizeof(hashes) / sizeof(hashes[0]); i++) {
    CK_BYTE buf[128], dg[64];
    size_t len = 0, hlen = kvp_hash_len(hashes[i]);
    const CK_BYTE *digest = NULL;
    kvp_hash got = KVP_HASH_NONE;

    for (size_t j = 0; j < hlen; j++)
      dg[j] = (CK_BYTE)(j * 7 + i);
    CU_ASSERT_FATAL(kvp_digestinfo_build(hashes[i], dg, hlen, buf, sizeof(buf) - 1, &len));
    CU_ASSERT_EQUAL(kvp_digestinfo_build(hashes[i], dg, hlen - 1, buf, sizeof(buf), &len), 0);
    CU_ASSERT_EQUAL(kvp_digestinfo_parse(buf, len, &got, &digest), 0);
    CU_ASSERT_EQUAL(got, hashes[i]);
    CU_ASSERT_PTR_EQUAL(digest, buf + len - hlen);
    CU_ASSERT(memcmp(digest, dg, hlen) == 0);
    /* one byte short, one byte long */
    CU_ASSERT_EQUAL(kvp_digestinfo_parse(buf, len - 1, &got, &digest), -1);
    buf[len] = 0;
    CU_ASSERT_EQUAL(kvp_digestinfo_parse(buf, len + 1, &got, &digest), -1);
  }
}

/* The DigestInfo prefixes must be what OpenSSL itself produces. */
static void test_digestinfo_matches_openssl(void)
{
  EVP_PKEY *pkey = EVP_RSA_gen(2048);
  EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(pkey, NULL);
  unsigned char digest[32], sig[256], recovered[256];
  size_t siglen = sizeof(sig), reclen = sizeof(recovered);
  const CK_BYTE *d = NULL;
  kvp_hash h = KVP_HASH_NONE;

  CU_ASSERT_PTR_NOT_NULL_FATAL(pkey);
  memset(digest, 0xab, sizeof(digest));
  CU_ASSERT_EQUAL_FATAL(EVP_PKEY_sign_init(ctx), 1);
  EVP_PKEY_CTX_set_signature_md(ctx, EVP_sha256());
  CU_ASSERT_EQUAL_FATAL(EVP_PKEY_sign(ctx, sig, &siglen, digest, sizeof(digest)), 1);
  EVP_PKEY_CTX_free(ctx);
  /* recover the DigestInfo with a raw PKCS#1 verify-recover */
  ctx = EVP_PKEY_CTX_new(pkey, NULL);
  CU_ASSERT_EQUAL_FATAL(EVP_PKEY_verify_recover_init(ctx), 1);
  CU_ASSERT_EQUAL_FATAL(EVP_PKEY_verify_recover(ctx, recovered, &reclen, sig, siglen), 1);
  CU_ASSERT_EQUAL(kvp_digestinfo_parse(recovered, reclen, &h, &d), 0);
  CU_ASSERT_EQUAL(h, KVP_HASH_SHA256);
  CU_ASSERT(d != NULL && memcmp(d, digest, sizeof(digest)) == 0);
  EVP_PKEY_CTX_free(ctx);
  EVP_PKEY_free(pkey);
}

static void test_digestinfo_rejects(void)
{
  CK_BYTE buf[64] = {0}, dg[32] = {0};
  const CK_BYTE *d;
  kvp_hash h;
  size_t len = 0;
  /* SHA-256 with the parameters left out (allowed by some verifiers): not
   * the encoding kvp11 would sign, so not taken for a DigestInfo */
  static const CK_BYTE no_params[] = {0x30, 0x2f, 0x30, 0x0b, 0x06, 0x09, 0x60, 0x86, 0x48,
                                      0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x04, 0x20};
  /* the same with a long-form length (BER, not DER) */
  static const CK_BYTE ber_len[] = {0x30, 0x81, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48,
                                    0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20};

  CU_ASSERT_EQUAL(kvp_digestinfo_parse(NULL, 0, &h, &d), -1);
  CU_ASSERT_EQUAL(kvp_digestinfo_parse(buf, 32, &h, &d), -1); /* a bare digest */
  CU_ASSERT_FATAL(kvp_digestinfo_build(KVP_HASH_SHA256, dg, 32, buf, sizeof(buf), &len));
  buf[8] ^= 0x01; /* OID changed */
  CU_ASSERT_EQUAL(kvp_digestinfo_parse(buf, len, &h, &d), -1);
  CU_ASSERT_FATAL(kvp_digestinfo_build(KVP_HASH_SHA256, dg, 32, buf, sizeof(buf), &len));
  buf[15] = 0x06; /* parameters not NULL */
  CU_ASSERT_EQUAL(kvp_digestinfo_parse(buf, len, &h, &d), -1);
  memset(buf, 0, sizeof(buf));
  memcpy(buf, no_params, sizeof(no_params));
  CU_ASSERT_EQUAL(kvp_digestinfo_parse(buf, sizeof(no_params) + 32, &h, &d), -1);
  memcpy(buf, ber_len, sizeof(ber_len));
  memset(buf + sizeof(ber_len), 0, 32);
  CU_ASSERT_EQUAL(kvp_digestinfo_parse(buf, sizeof(ber_len) + 32, &h, &d), -1);
}

static void test_hash_tables(void)
{
  CU_ASSERT_EQUAL(kvp_hash_from_ckm(CKM_SHA256), KVP_HASH_SHA256);
  CU_ASSERT_EQUAL(kvp_hash_from_ckm(CKM_SHA_1), KVP_HASH_SHA1);
  CU_ASSERT_EQUAL(kvp_hash_from_ckm(CKM_MD5), KVP_HASH_NONE);
  CU_ASSERT_EQUAL(kvp_hash_from_mgf(CKG_MGF1_SHA384), KVP_HASH_SHA384);
  CU_ASSERT_EQUAL(kvp_hash_from_mgf(0), KVP_HASH_NONE);
  CU_ASSERT_EQUAL(kvp_hash_len(KVP_HASH_SHA512), 64);
  CU_ASSERT_EQUAL(kvp_hash_len(KVP_HASH_NONE), 0);
  CU_ASSERT_PTR_EQUAL(kvp_hash_md(KVP_HASH_SHA384), EVP_sha384());
}

static void test_ecdsa_fit(void)
{
  CK_BYTE in[66], out[64];
  CK_ULONG out_len = 0;

  for (size_t i = 0; i < sizeof(in); i++)
    in[i] = (CK_BYTE)(i + 1);
  /* exact */
  CU_ASSERT_EQUAL(kvp_ecdsa_fit_digest(NID_X9_62_prime256v1, in, 32, out, &out_len), CKR_OK);
  CU_ASSERT_EQUAL(out_len, 32);
  CU_ASSERT_EQUAL(memcmp(out, in, 32), 0);
  /* longer: leftmost bytes */
  CU_ASSERT_EQUAL(kvp_ecdsa_fit_digest(NID_X9_62_prime256v1, in, 48, out, &out_len), CKR_OK);
  CU_ASSERT_EQUAL(out_len, 32);
  CU_ASSERT_EQUAL(memcmp(out, in, 32), 0);
  /* shorter: left padded */
  CU_ASSERT_EQUAL(kvp_ecdsa_fit_digest(NID_secp384r1, in, 20, out, &out_len), CKR_OK);
  CU_ASSERT_EQUAL(out_len, 48);
  CU_ASSERT_EQUAL(out[27], 0);
  CU_ASSERT_EQUAL(memcmp(out + 28, in, 20), 0);
  /* P-521 takes 64 bytes at most */
  CU_ASSERT_EQUAL(kvp_ecdsa_fit_digest(NID_secp521r1, in, 64, out, &out_len), CKR_OK);
  CU_ASSERT_EQUAL(out_len, 64);
  CU_ASSERT_EQUAL(kvp_ecdsa_fit_digest(NID_secp521r1, in, 66, out, &out_len), CKR_DATA_LEN_RANGE);
  CU_ASSERT_EQUAL(kvp_ecdsa_fit_digest(NID_X9_62_prime256v1, in, 0, out, &out_len),
                  CKR_DATA_LEN_RANGE);
  CU_ASSERT_EQUAL(kvp_ecdsa_fit_digest(NID_sect163k1, in, 32, out, &out_len), CKR_DATA_LEN_RANGE);
  CU_ASSERT_EQUAL(kvp_ec_field_len(521), 66);
  CU_ASSERT_EQUAL(kvp_ec_field_len(256), 32);
}

/* A truncated digest signs the same as OpenSSL's own truncation. */
static void test_ecdsa_raw_der(void)
{
  EVP_PKEY *pkey = EVP_EC_gen("P-256");
  EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(pkey, NULL);
  unsigned char digest[32], der[80];
  size_t der_len = sizeof(der), conv_len = 0;
  const unsigned char *p = der;
  ECDSA_SIG *sig;
  CK_BYTE raw[64];
  unsigned char *conv;

  memset(digest, 0x5a, sizeof(digest));
  CU_ASSERT_EQUAL_FATAL(EVP_PKEY_sign_init(ctx), 1);
  CU_ASSERT_EQUAL_FATAL(EVP_PKEY_sign(ctx, der, &der_len, digest, sizeof(digest)), 1);
  sig = d2i_ECDSA_SIG(NULL, &p, (long)der_len);
  CU_ASSERT_PTR_NOT_NULL_FATAL(sig);
  BN_bn2binpad(ECDSA_SIG_get0_r(sig), raw, 32);
  BN_bn2binpad(ECDSA_SIG_get0_s(sig), raw + 32, 32);
  conv = kvp_ecdsa_raw_to_der(raw, sizeof(raw), &conv_len);
  CU_ASSERT_PTR_NOT_NULL_FATAL(conv);
  CU_ASSERT_EQUAL(conv_len, der_len);
  CU_ASSERT_EQUAL(memcmp(conv, der, der_len), 0);
  CU_ASSERT_PTR_NULL(kvp_ecdsa_raw_to_der(raw, 63, &conv_len));
  OPENSSL_free(conv);
  ECDSA_SIG_free(sig);
  EVP_PKEY_CTX_free(ctx);
  EVP_PKEY_free(pkey);
}

int main(void)
{
  static CU_TestInfo tests[] = {
      {"digestinfo round trip", test_digestinfo_roundtrip},
      {"digestinfo equals OpenSSL's", test_digestinfo_matches_openssl},
      {"digestinfo rejects", test_digestinfo_rejects},
      {"hash tables", test_hash_tables},
      {"ecdsa digest sizing", test_ecdsa_fit},
      {"ecdsa r||s to DER", test_ecdsa_raw_der},
      CU_TEST_INFO_NULL,
  };
  return unit_run_suite("mech", NULL, NULL, tests);
}
