#!/usr/bin/env bash
# Java (OpenJDK) through the JDK's SunPKCS11 provider on libkvp11.so:
#   keytool -list -storetype PKCS11 with a config naming libkvp11.so: the 4 private
#     keys as PrivateKeyEntry with the fingerprints of the registered certificates
#   java/Kvp11Jca.java, compiled here with javac and run ONCE (JVM start-up is
#     slow): signs with SHA256withRSA (rsa2048, rsa3072), SHA256withECDSA (p256),
#     SHA384withECDSA (p384) and decrypts RSA/ECB/PKCS1Padding (rsa2048);
#     every signature verified with `openssl dgst -verify` (and not over other data).
# Env: CLIENT_PIN (KeyStore password / C_Login PIN, default 1234, the fixture's),
#      CLIENT_SLOT_INDEX (SunPKCS11 slotListIndex; default: the index of $TOKEN
#      in `pkcs11-tool -L`, else 0).
. "$(dirname "$0")/common.sh"
. "$(dirname "$0")/p11kit_lib.sh"
need java javac keytool openssl
JSRC=$(cd "$(dirname "$0")/java" && pwd)
PIN=${CLIENT_PIN:-1234}
JOPT=(-XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Xshare:auto)

slot_index() {
  if [ -n "${CLIENT_SLOT_INDEX:-}" ]; then echo "$CLIENT_SLOT_INDEX"; return; fi
  command -v pkcs11-tool >/dev/null 2>&1 || { echo 0; return; }
  pkcs11-tool --module "$KVP11_MODULE" -L 2>/dev/null | awk -v t="$TOKEN" '
    /^Slot [0-9]+/ { i++ }
    /token label/ { sub(/^[^:]*:[ \t]*/, ""); sub(/[ \t]+$/, ""); if ($0 == t) { print i - 1; found = 1; exit } }
    END { if (!found) print 0 }'
}
cat >"$WORK/kvp11-java.cfg" <<EOF
name = kvp11
library = $KVP11_MODULE
slotListIndex = $(slot_index)
EOF

# keytool -list: one line "<alias>, PrivateKeyEntry," then the SHA-256 fingerprint.
run "keytool -list" keytool -J-XX:TieredStopAtLevel=1 -list -keystore NONE -storetype PKCS11 \
  -providerClass sun.security.pkcs11.SunPKCS11 -providerArg "$WORK/kvp11-java.cfg" -storepass "$PIN"
cp "$WORK/out" "$WORK/keytool.txt"
for k in $ALL_KEYS; do
  fp=$(openssl x509 -in "$CERTS/$k.pem" -noout -fingerprint -sha256 | sed 's/^[^=]*=//')
  awk -v a="$k, PrivateKeyEntry," '$0 ~ "^" a { getline; print; exit }' "$WORK/keytool.txt" >"$WORK/fp"
  grep -q "$fp" "$WORK/fp" || { cat "$WORK/keytool.txt" >&2; fail "keytool -list: no PrivateKeyEntry $k with fingerprint $fp"; }
done
grep -q "^$PARTNER, PrivateKeyEntry" "$WORK/keytool.txt" && fail "keytool lists a private key for $PARTNER"
ok "keytool -list (SunPKCS11): $(echo $ALL_KEYS | wc -w) PrivateKeyEntry with the registered certificates' fingerprints"

mkdir -p "$WORK/classes" "$WORK/jout"
run "javac" javac -J-XX:TieredStopAtLevel=1 -d "$WORK/classes" "$JSRC/Kvp11Jca.java"
mkdata
D=$WORK/data.txt
head -c 32 /dev/urandom >"$WORK/secret"
run "encrypt for $RSA1" openssl pkeyutl -encrypt -pubin -inkey "$(pubkey $RSA1)" \
  -in "$WORK/secret" -out "$WORK/jout/$RSA1.enc"
PAIRS=""
for k in $RSA_KEYS; do PAIRS="$PAIRS $k:SHA256withRSA"; done
for k in $EC_KEYS; do PAIRS="$PAIRS $k:$(hash_of "$k" | tr a-z A-Z)withECDSA"; done
# shellcheck disable=SC2086
run "java Kvp11Jca" java "${JOPT[@]}" -cp "$WORK/classes" Kvp11Jca "$WORK/kvp11-java.cfg" "$PIN" \
  "$WORK/jout" "$D" $PAIRS
sed 's/^/    /' "$WORK/out"

for k in $ALL_KEYS; do
  grep -qx "$k key" "$WORK/jout/aliases.txt" || { cat "$WORK/jout/aliases.txt" >&2; fail "JCA KeyStore: no key entry $k"; }
  openssl x509 -in "$CERTS/$k.pem" -outform DER | cmp -s - "$WORK/jout/$k.der" || fail "JCA certificate $k differs"
done
ok "JCA KeyStore: $(echo $ALL_KEYS | wc -w) key entries, certificates equal to the registered ones"

for pair in $PAIRS; do
  k=${pair%%:*} alg=${pair#*:}
  case $alg in SHA384*) h=sha384 ;; SHA512*) h=sha512 ;; *) h=sha256 ;; esac
  sig=$WORK/jout/$k.$alg.sig
  [ -s "$sig" ] || fail "no signature from Java for $k ($alg)"
  run "openssl verifies $k $alg" openssl dgst "-$h" -verify "$(pubkey "$k")" -signature "$sig" "$D"
  grep -q '^Verified OK' "$WORK/out" || fail "$k ($alg): Java signature not verified by openssl"
  { echo tampered; cat "$D"; } >"$WORK/d2"
  must_fail "Java signature $k over other data" openssl dgst "-$h" -verify "$(pubkey "$k")" -signature "$sig" "$WORK/d2"
  ok "Java $alg with $k through SunPKCS11, verified by openssl"
done

cmp -s "$WORK/secret" "$WORK/jout/$RSA1.dec" || fail "Java RSA/ECB/PKCS1Padding decryption with $RSA1 differs"
ok "Java Cipher RSA/ECB/PKCS1Padding decrypt with $RSA1 through SunPKCS11"
pass
