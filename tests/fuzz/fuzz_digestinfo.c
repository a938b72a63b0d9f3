/*
 * Fuzz target: the DigestInfo parser (kvp_digestinfo_parse) used by
 * CKM_RSA_PKCS signing, and kvp_ecdsa_fit_digest used by CKM_ECDSA.
 *
 * Input: byte 0 picks a curve for kvp_ecdsa_fit_digest; the rest is the
 * DigestInfo / digest. Oracles: a parsed DigestInfo is exactly what
 * kvp_digestinfo_build makes of its digest, and the digest points into the
 * input (its last bytes); the ECDSA output buffer is sized exactly as documented (so
 * ASan sees any overrun) and a success fills exactly that length.
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/obj_mac.h>

#include "core/util.h"
#include "fuzz_common.h"
#include "pkcs11/mech.h"

static const int curves[] = {NID_X9_62_prime256v1, NID_secp384r1, NID_secp521r1, NID_secp256k1,
                             NID_undef, NID_secp224r1};

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
  const char *dir = fuzz_seed_dir();
  static const kvp_hash hashes[] = {KVP_HASH_SHA1, KVP_HASH_SHA224, KVP_HASH_SHA256,
                                    KVP_HASH_SHA384, KVP_HASH_SHA512};
  unsigned char buf[1 + 128 + 64 + 8];

  if (dir == NULL)
    return 0;
  for (size_t i = 0; i < KVP_ARRAY_SIZE(hashes); i++) {
    unsigned char dg[64];
    size_t dlen = kvp_hash_len(hashes[i]), len = 0;
    char name[64];
    memset(dg, 0xa5, sizeof(dg));
    buf[0] = (unsigned char)(i % KVP_ARRAY_SIZE(curves));
    if (!kvp_digestinfo_build(hashes[i], dg, dlen, buf + 1, sizeof(buf) - 2, &len))
      exit(1);
    snprintf(name, sizeof(name), "digestinfo-%zu", i);
    if (fuzz_seed(dir, name, buf, 1 + len) != 0)
      exit(1);
    /* one trailing byte too many, one digest byte too few */
    buf[1 + len] = 0;
    snprintf(name, sizeof(name), "digestinfo-%zu-trailing", i);
    if (fuzz_seed(dir, name, buf, 2 + len) != 0)
      exit(1);
    snprintf(name, sizeof(name), "digestinfo-%zu-short", i);
    if (fuzz_seed(dir, name, buf, len) != 0)
      exit(1);
  }
  /* bare digests for ECDSA: 20, 32, 48, 64, 66 and 80 bytes on each curve */
  {
    static const size_t lens[] = {1, 20, 32, 48, 64, 66, 80};
    for (size_t c = 0; c < KVP_ARRAY_SIZE(curves); c++)
      for (size_t l = 0; l < KVP_ARRAY_SIZE(lens); l++) {
        char name[64];
        buf[0] = (unsigned char)c;
        memset(buf + 1, 0x80 | (int)l, lens[l]);
        snprintf(name, sizeof(name), "ecdsa-%zu-%zu", c, lens[l]);
        if (fuzz_seed(dir, name, buf, 1 + lens[l]) != 0)
          exit(1);
      }
  }
  exit(0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  const CK_BYTE *in, *digest = NULL;
  CK_ULONG len;
  kvp_hash hash = KVP_HASH_NONE;
  int curve;

  if (size < 1)
    return 0;
  curve = curves[data[0] % KVP_ARRAY_SIZE(curves)];
  len = (CK_ULONG)(size - 1);
  /* a copy of exactly len bytes, so that reading past the end is caught */
  CK_BYTE *copy = malloc(len > 0 ? len : 1);
  if (copy == NULL)
    return 0;
  if (len > 0)
    memcpy(copy, data + 1, len);
  in = copy;

  if (kvp_digestinfo_parse(in, len, &hash, &digest) == 0) {
    unsigned char again[128];
    size_t dlen = kvp_hash_len(hash), alen = 0;
    FUZZ_CHECK(hash != KVP_HASH_NONE && dlen > 0 && len > dlen);
    FUZZ_CHECK(digest == in + (len - dlen));
    FUZZ_CHECK(kvp_digestinfo_build(hash, digest, dlen, again, sizeof(again), &alen));
    FUZZ_CHECK(alen == len && memcmp(again, in, len) == 0);
  }

  {
    CK_ULONG want = kvp_ecdsa_digest_len(curve), out_len = want;
    CK_BYTE *out = malloc(want > 0 ? want : 1);
    CK_RV rv;
    if (out != NULL) {
      rv = kvp_ecdsa_fit_digest(curve, in, len, out, &out_len);
      if (rv == CKR_OK) {
        FUZZ_CHECK(want > 0 && len > 0);
        FUZZ_CHECK(out_len == want);
        if (len >= want) /* the leftmost bytes */
          FUZZ_CHECK(memcmp(out, in, want) == 0);
        else /* left-padded with zeros */
          FUZZ_CHECK(memcmp(out + (want - len), in, len) == 0);
      } else {
        FUZZ_CHECK(rv == CKR_DATA_LEN_RANGE);
      }
      free(out);
    }
  }
  free(copy);
  return 0;
}
