/*
 * Login rules of the front (login.c); kvp_login / kvp_logout are declared
 * with the rest of the front in internal.h.
 */
#ifndef KVP_PKCS11_LOGIN_H
#define KVP_PKCS11_LOGIN_H

#include <p11-kit/pkcs11.h>

#include "pkcs11/internal.h"

/* 1 when the slot's account uses a key store that takes the application's
 * PIN (CKF_LOGIN_REQUIRED). Takes g.reg_lock and g.lock: call with neither held. */
int kvp_slot_login_required(CK_SLOT_ID id);

/* The slot was logged out (slot->logged_in already 0): log out its HSMs that
 * no other logged-in slot uses. C_Logout calls it; closing a slot's last
 * session should too (state.c logs out every HSM only when no slot is
 * logged in any more). Takes g.reg_lock and g.lock: call with neither held. */
void kvp_slot_backends_logout(const kvp_slot *slot);

#endif
