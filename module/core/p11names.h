/*
 * Names of PKCS#11 constants, for log lines and tool output.
 */
#ifndef KVP_CORE_P11NAMES_H
#define KVP_CORE_P11NAMES_H

#include <p11-kit/pkcs11.h>

/* "CKR_PIN_INCORRECT"; unknown values give "CKR_0x%lx" from a thread-local buffer. */
const char *kvp_ckr_name(CK_RV rv);
/* "CKM_SHA256_RSA_PKCS"; unknown values as above with CKM_. */
const char *kvp_ckm_name(CK_MECHANISM_TYPE m);
/* "CKA_LABEL"; unknown values as above with CKA_. */
const char *kvp_cka_name(CK_ATTRIBUTE_TYPE a);

#endif
