#!/usr/bin/env bash
# pkcs11-tool -M lists the mechanisms the kvp11 token offers for its RSA and EC keys.
. "$(dirname "$0")/common.sh"
need pkcs11-tool

run "list mechanisms" p11 --list-mechanisms
cp "$WORK/out" "$WORK/mechs"
mech() { grep -E "^ +$1[ ,]" "$WORK/mechs" | head -n1; }
for m in RSA-PKCS SHA256-RSA-PKCS SHA384-RSA-PKCS SHA512-RSA-PKCS RSA-PKCS-PSS \
         SHA256-RSA-PKCS-PSS SHA384-RSA-PKCS-PSS SHA512-RSA-PKCS-PSS RSA-PKCS-OAEP ECDSA; do
  line=$(mech "$m")
  [ -n "$line" ] || { cat "$WORK/mechs" >&2; fail "mechanism $m not listed"; }
  echo "$line" | grep -q sign || [ "$m" = RSA-PKCS-OAEP ] || fail "$m not flagged sign: $line"
  ok "$m listed"
done
mech RSA-PKCS | grep -q decrypt || fail "RSA-PKCS not flagged decrypt"
mech RSA-PKCS-OAEP | grep -q decrypt || fail "RSA-PKCS-OAEP not flagged decrypt"
ok "RSA-PKCS and RSA-PKCS-OAEP flagged decrypt"
for m in ECDSA-SHA256 ECDSA-SHA384 ECDSA-SHA512; do
  # pkcs11-tool 0.23 prints these names; older versions print hex (CKM 0x1044..0x1046).
  if [ -n "$(mech "$m")" ] || grep -qiE "^ +(mechtype-)?0x0*104[4-6]" "$WORK/mechs"; then
    ok "$m listed"
  else
    fail "mechanism $m not listed"
  fi
done
# No key generation or other key-creating mechanisms: keys live in the HSM / vault.
for m in RSA-PKCS-KEY-PAIR-GEN ECDSA-KEY-PAIR-GEN; do
  [ -z "$(mech "$m")" ] || fail "$m must not be offered"
done
ok "no key generation mechanisms"
pass
