/*
 * kvp11 public header: identity strings and the limits applications may rely on.
 */
#ifndef KVP11_KVP11_H
#define KVP11_KVP11_H

#define KVP11_MANUFACTURER "kvp11"
#define KVP11_LIBRARY_DESCRIPTION "kvp11 Key Vault and HSM bridge"
#define KVP11_MODEL "kvp11"
#define KVP11_VERSION_MAJOR 0
#define KVP11_VERSION_MINOR 1

/* Default configuration path when KVP11_CONF is not set. */
#define KVP11_DEFAULT_CONF "/etc/kvp11/kvp11.conf"
/* Default registry path when [global] registry is not set. */
#define KVP11_DEFAULT_REGISTRY "/var/lib/kvp11/registry.db"

#endif
