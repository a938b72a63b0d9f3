#!/usr/bin/env bash
# GnuTLS p11tool --provider libkvp11.so lists and exports the registered certificates.
. "$(dirname "$0")/common.sh"
need p11tool openssl

# p11tool reads p11-kit's configuration only without --provider; keep it quiet.
LOGIN_OPT=()
if [ -n "${CLIENT_PIN:-}" ]; then export GNUTLS_PIN=$CLIENT_PIN; LOGIN_OPT=(--login); fi
URL="pkcs11:token=$TOKEN_URI"
run "list tokens" p11tool --provider "$KVP11_MODULE" --list-tokens
grep -q "Label: $TOKEN\$" "$WORK/out" || { cat "$WORK/out" >&2; fail "token '$TOKEN' not listed"; }
ok "--list-tokens shows '$TOKEN'"

run "list certificates" p11tool --provider "$KVP11_MODULE" --list-all-certs "$URL"
cp "$WORK/out" "$WORK/certs.txt"
for k in $ALL_KEYS $PARTNER; do   # (CLIENT_PARTNER empty: no public-only certificate)
  grep -Eq "URL: pkcs11:.*object=$k;.*type=cert" "$WORK/certs.txt" \
    || { cat "$WORK/certs.txt" >&2; fail "certificate $k not listed by --list-all-certs"; }
  ok "--list-all-certs lists $k"
done
want=$(echo $ALL_KEYS $PARTNER | wc -w)
n=$(grep -c 'type=cert' "$WORK/certs.txt")
[ "$n" -eq "$want" ] || fail "expected $want certificates, got $n"
ok "exactly $want certificates"

for k in ${RSA_KEYS%% *} ${EC_KEYS##* } $PARTNER; do
  run "export $k" p11tool --provider "$KVP11_MODULE" --export "$URL;object=$k;type=cert"
  openssl x509 -in "$WORK/out" -outform DER -out "$WORK/a.der" 2>/dev/null || fail "export of $k is not a certificate"
  openssl x509 -in "$CERTS/$k.pem" -outform DER -out "$WORK/b.der"
  cmp -s "$WORK/a.der" "$WORK/b.der" || fail "exported $k differs from certs/$k.pem"
  ok "--export $k returns the registered certificate"
done

# The private keys are listed (as objects; nothing of them is exportable).
run "list private keys" p11tool --provider "$KVP11_MODULE" "${LOGIN_OPT[@]}" --list-all "$URL"
for k in $ALL_KEYS; do
  grep -Eq "URL: pkcs11:.*object=$k;.*type=private" "$WORK/out" || fail "private key $k not listed by --list-all"
done
if [ -n "$PARTNER" ]; then
  grep -Eq "URL: pkcs11:.*object=$PARTNER;.*type=private" "$WORK/out" && fail "$PARTNER must have no private key"
fi
ok "--list-all lists the $(echo $ALL_KEYS | wc -w) private keys${PARTNER:+ and none for $PARTNER}"
pass
