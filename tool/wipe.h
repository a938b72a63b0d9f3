/*
 * Memory hygiene of the kvp11 command (wipe.c).
 */
#ifndef KVP_TOOL_WIPE_H
#define KVP_TOOL_WIPE_H

/*
 * Install OpenSSL memory functions that wipe every block when it is freed or
 * moved by a realloc, so that OpenSSL's internal buffers (PKCS#12 decryption,
 * PEM/DER decoders, BIGNUM scratch space, TLS records) do not keep key bytes
 * or secrets in freed heap memory. Must be the first thing main() does: OpenSSL
 * accepts new memory functions only before its first allocation. Returns 0
 * when installed, -1 when OpenSSL refused (something allocated already), 1
 * when skipped because KVP11_TEST_NO_WIPE=1 (tests prove their memory scan can
 * find key bytes without it).
 */
int kvp_tool_wipe_init(void);

#endif
