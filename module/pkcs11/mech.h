/*
 * Mechanism helpers with no session state, unit-tested on their own.
 */
#ifndef KVP_PKCS11_MECH_H
#define KVP_PKCS11_MECH_H

#include <p11-kit/pkcs11.h>

#include "backend/backend.h"

/*
 * Parse a DER DigestInfo (RFC 8017 9.2) for SHA-1/224/256/384/512. On success
 * sets *hash and points *digest into in. Returns 0 on success, -1 if the input
 * is not exactly one DigestInfo of a supported hash (trailing bytes, wrong
 * lengths, unknown OID, non-NULL parameters are all refused).
 */
int kvp_digestinfo_parse(const CK_BYTE *in, CK_ULONG len, kvp_hash *hash, const CK_BYTE **digest);

/* The DER DigestInfo prefix of a hash (the bytes before the digest). */
const CK_BYTE *kvp_digestinfo_prefix(kvp_hash hash, CK_ULONG *len);

/* CKM_SHA256 -> KVP_HASH_SHA256 etc.; KVP_HASH_NONE for anything else. */
kvp_hash kvp_hash_from_ckm(CK_MECHANISM_TYPE m);
/* CKG_MGF1_SHA256 -> KVP_HASH_SHA256 etc.; KVP_HASH_NONE for anything else. */
kvp_hash kvp_hash_from_mgf(CK_RSA_PKCS_MGF_TYPE mgf);

/* Digest length an ECDSA signature on this curve takes (32 for P-256, 48 for
 * P-384, 64 for P-521, 32 for secp256k1); 0 for an unknown curve. */
CK_ULONG kvp_ecdsa_digest_len(int curve_nid);
/* Bytes of one of r or s for the curve (32, 48, 66). */
CK_ULONG kvp_ec_field_len(unsigned bits);

/*
 * Size a digest for an ECDSA signature on the curve: a longer digest keeps its
 * leftmost bytes (as ECDSA truncates), a shorter one is left-padded with
 * zeros (the same integer). out must hold kvp_ecdsa_digest_len() bytes.
 * Returns CKR_DATA_LEN_RANGE for an empty input or one that cannot be sized.
 */
CK_RV kvp_ecdsa_fit_digest(int curve_nid, const CK_BYTE *in, CK_ULONG len, CK_BYTE *out,
                           CK_ULONG *out_len);


#endif
