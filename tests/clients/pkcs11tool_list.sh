#!/usr/bin/env bash
# pkcs11-tool (OpenSC) lists the kvp11 token and, per registered certificate,
# its certificate, public key and (private certificates) private key objects.
. "$(dirname "$0")/common.sh"
need pkcs11-tool openssl

# -L: the account's token is listed.
run "list slots" pkcs11-tool --module "$KVP11_MODULE" --list-token-slots
grep -Eq "token label +: $TOKEN\$" "$WORK/out" || { cat "$WORK/out" >&2; fail "token '$TOKEN' not listed by -L"; }
ok "-L lists token '$TOKEN'"
grep -A8 -E "token label +: $TOKEN\$" "$WORK/out" | grep -Eq 'token flags +:.*token initialized' \
  || fail "token '$TOKEN' is not flagged initialized"
ok "token is initialized"

# -O: objects with their class, label and ID.
run "list objects" p11 --list-objects
cp "$WORK/out" "$WORK/objects.txt"
awk '
  /^Certificate Object/ { t = "cert" }
  /^Public Key Object/ { t = "pub" }
  /^Private Key Object/ { t = "priv" }
  /^[A-Za-z].*Object/ && !/^(Certificate|Public Key|Private Key) Object/ { t = "other" }
  $1 == "label:" { sub(/^[ \t]*label:[ \t]*/, ""); lab = $0 }
  $1 == "ID:" { print t, lab, $2 }
  $1 == "Access:" && t == "priv" { acc[lab] = $0 }
  END { for (l in acc) print "access", l, acc[l] }' "$WORK/objects.txt" >"$WORK/objs"

has() { grep -q "^$1 $2 " "$WORK/objs"; }
for k in $ALL_KEYS; do
  for t in cert pub priv; do
    has "$t" "$k" || { cat "$WORK/objects.txt" >&2; fail "no $t object labelled $k"; }
  done
  ids=$(awk -v l="$k" '$2 == l && $1 != "access" { print $3 }' "$WORK/objs" | sort -u)
  [ "$(echo "$ids" | wc -l)" -eq 1 ] || fail "objects of $k do not share one CKA_ID: $ids"
  ok "$k: certificate, public key and private key with one CKA_ID ($ids)"
  grep "^access $k " "$WORK/objs" | grep -q 'sensitive' || fail "private key $k not sensitive"
  grep "^access $k " "$WORK/objs" | grep -q 'never extractable' || fail "private key $k not never-extractable"
  ok "$k: private key is sensitive and never extractable"
done
# (CLIENT_PARTNER empty: the account has no public-only certificate, e.g. the Key Vault fixture's.)
if [ -n "$PARTNER" ]; then
  has cert "$PARTNER" || fail "no certificate object labelled $PARTNER"
  has pub "$PARTNER" || fail "no public key object labelled $PARTNER"
  has priv "$PARTNER" && fail "public certificate $PARTNER must not have a private key object"
  ok "$PARTNER: certificate and public key, no private key"
fi

# The IDs differ between certificates: one per key, plus the partner's.
want=$(echo $ALL_KEYS $PARTNER | wc -w)
n=$(awk '$1 == "cert" { print $3 }' "$WORK/objs" | sort -u | wc -l)
[ "$n" -eq "$want" ] || fail "expected $want distinct certificate IDs, got $n"
ok "$want distinct certificate IDs"

# The certificate object holds the registered certificate.
id=$(key_id rsa2048)
run "read certificate" p11 --read-object --type cert --id "$id" -o "$WORK/rsa2048.der"
openssl x509 -inform DER -in "$WORK/rsa2048.der" -outform DER -out "$WORK/a.der" || fail "certificate object is not DER X.509"
openssl x509 -in "$CERTS/rsa2048.pem" -outform DER -out "$WORK/b.der"
cmp -s "$WORK/a.der" "$WORK/b.der" || fail "certificate object rsa2048 differs from certs/rsa2048.pem"
ok "certificate object rsa2048 equals the registered certificate"
pass
