/*
 * Mechanism helpers with no session state, unit-tested on their own.
 */
#ifndef KVP_PKCS11_MECH_H
#define KVP_PKCS11_MECH_H

#include <p11-kit/pkcs11.h>

#include "backend/backend.h"

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
