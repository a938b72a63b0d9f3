/*
 * What the front's unit tests (test_front_*.c) share: a directory of the
 * test's own, the kvp11.conf and softhsm2.conf written there, certificates
 * and the registry rows made of them, object searches. front_fixture.h (the SoftHSM2
 * provisioning fixture) builds on these.
 */
#ifndef KVP_TEST_FRONT_UTIL_H
#define KVP_TEST_FRONT_UTIL_H

#include <stddef.h>

#include <openssl/evp.h>
#include <p11-kit/pkcs11.h>

#include "core/registry.h"

/* $KVP11_TEST_TMP/TAG.PID (/tmp without KVP11_TEST_TMP), made with mode 0700, into dir.
 * 0, or -1 when it cannot be made (or exists). */
int front_test_dir(const char *tag, char *dir, size_t size);
/* dir/kvp11.conf from a printf format; KVP11_CONF points at it; its path into path (may be
 * NULL). 0, or -1. */
int front_write_conf(const char *dir, char *path, size_t size, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* dir/softhsm2.conf keeping the tokens in dir; SOFTHSM2_CONF points at it. 0, or -1. */
int front_softhsm_conf(const char *dir);

/* A certificate (DER, OPENSSL_free it) for pub: subject CN=cn, serial serial, issuer
 * CN=Test CA signed with ca (NULL: a throwaway P-256 key; pass pub's private key for a
 * self-signed one). kvp11 does not check who signed a certificate, only whose key it
 * certifies. NULL (and *len 0) when it cannot be made. */
unsigned char *front_cert(EVP_PKEY *pub, const char *cn, long serial, EVP_PKEY *ca, size_t *len);
/* The registry row of certificate der: account, name, type and key_ref (NULL: none) set.
 * rec is cleared first; kvp_cert_rec_clear it. KVP_OK, or kvp_cert_fill_rec's error. */
int front_row(const unsigned char *der, size_t len, const char *account, const char *name,
              kvp_cert_type type, const char *key_ref, kvp_cert_rec *rec);
/* Adds rec to the registry at path (made when absent). 1 when added. No CUnit assertion
 * (for suite set-ups). */
int front_add_row(const char *path, const kvp_cert_rec *rec);
/* The same inside a test: asserts that the registry opens (fatal) and that rec is added. */
void front_register_row(const char *path, const kvp_cert_rec *rec);
/* Removes account/name from the registry at path: asserts that the registry opens (fatal)
 * and that the row is removed. */
void front_unregister_row(const char *path, const char *account, const char *name);

/* The objects of session s that tmpl[0..n) finds, up to max handles into out: their number.
 * Asserts that C_FindObjectsInit (fatal), C_FindObjects and C_FindObjectsFinal succeed. */
CK_ULONG front_find(CK_FUNCTION_LIST_PTR f, CK_SESSION_HANDLE s, CK_ATTRIBUTE *tmpl, CK_ULONG n,
                    CK_OBJECT_HANDLE *out, CK_ULONG max);

#endif
