/*
 * Login rules of the front (login.c); kvp_login / kvp_logout are declared
 * with the rest of the front in internal.h.
 */
#ifndef KVP_PKCS11_LOGIN_H
#define KVP_PKCS11_LOGIN_H

#include <p11-kit/pkcs11.h>

/* 1 when the slot's account uses a key store that takes the application's
 * PIN (CKF_LOGIN_REQUIRED). Takes g.reg_lock and g.lock: call with neither held. */
int kvp_slot_login_required(CK_SLOT_ID id);

#endif
