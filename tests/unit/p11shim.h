/*
 * A PKCS#11 module for the HSM backend's tests: it forwards every call to
 * the module named by $KVP11_SHIM_TARGET (SoftHSM2) and counts or changes a
 * few of them, so a test can see what the backend asked of the HSM (how many
 * C_Login attempts, how many sessions at once) and play an HSM with other
 * habits (a session limit, PIN counter flags, errors left in the OpenSSL
 * queue, stale sessions, templates it refuses). The test reaches the control
 * block through dlsym(dlopen(shim), "kvp11_shim").
 */
#ifndef KVP11_TEST_P11SHIM_H
#define KVP11_TEST_P11SHIM_H

typedef struct kvp11_shim_ctl {
  /* counters (atomic) */
  long initializes;    /* C_Initialize calls */
  long logins;         /* C_Login calls */
  long opens, closes;  /* C_OpenSession / C_CloseSession calls */
  long open_now, open_max; /* sessions open through the shim, and the most at once */
  long closed_stale;   /* C_CloseSession of a handle the shim declared invalid */
  /* knobs */
  unsigned long add_flags;       /* ORed into CK_TOKEN_INFO.flags */
  unsigned long max_sessions;    /* >0: ulMaxSessionCount, enforced (CKR_SESSION_COUNT) */
  unsigned long sign_fail_rv;    /* C_Sign answers this ... */
  long sign_fail_count;          /* ... this many times (without signing) */
  unsigned long init_fail_rv;    /* C_Initialize answers this when set */
  int push_ossl_error;           /* every forwarded call leaves an OpenSSL error */
  int refuse_pub_usage;          /* C_GenerateKeyPair refuses CKA_VERIFY / CKA_ENCRYPT */
  unsigned long stale_session;   /* the handle of the last injected session error */
} kvp11_shim_ctl;

/* The control block (exported by the shim; tests find it with dlsym). */
kvp11_shim_ctl *kvp11_shim(void);
typedef kvp11_shim_ctl *(*kvp11_shim_fn)(void);

#endif
