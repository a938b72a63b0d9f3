#!/usr/bin/env bash
# Mode 1, in-process through a group (issue 12 item 1): the configuration,
# registry and PIN file are root:kvp11 0640 (directories 0750); a service user
# in the group kvp11 (and in the HSM's group for SoftHSM2's token store) signs
# and decrypts; a user outside the group cannot use the module and cannot read
# the PIN.
. "$(dirname "$0")/lib.sh"
need_root
command -v pkcs11-tool >/dev/null || skip "pkcs11-tool not found"
[ -f "${KVP11_MODULE_SO:-}" ] || fail "KVP11_MODULE_SO not set"
trap cleanup_accounts EXIT
make_group kvp11
make_group kvp11-test-hsm   # stands for SoftHSM2's group (softhsm on Debian)
make_user kvp11-test-svc kvp11,kvp11-test-hsm
make_user kvp11-test-other

E=$T/env
make_fixture "$E"
chmod 755 "$T"
cp "$KVP11_MODULE_SO" "$T/libkvp11.so"; chmod 755 "$T/libkvp11.so"   # the build dir may be private
# the kvp11 layout: configuration, registry and PIN readable by the group only
chown -R root:kvp11 "$E"
chmod 0750 "$E"
chmod 0640 "$E/kvp11.conf" "$E/hsm.pin" "$E"/registry.db*
chmod 0644 "$E/softhsm2.conf"
sed -i '/^log_/d' "$E/kvp11.conf"
# SoftHSM2's own rule: its token store belongs to the HSM's group, read-write
chgrp -R kvp11-test-hsm "$E/tokens"; chmod -R g+rwX "$E/tokens"; find "$E/tokens" -type d -exec chmod g+s {} +
chmod 0751 "$E"   # the token store below must be reachable (x only)
ENVV=(env SOFTHSM2_CONF="$E/softhsm2.conf" KVP11_CONF="$E/kvp11.conf")
P11=(pkcs11-tool --module "$T/libkvp11.so" --token-label "kvp11 default")
ID=$(key_id "${ENVV[@]}" "${P11[@]}" p256)
[ -n "$ID" ] || fail "no key id"
openssl dgst -sha256 -binary /etc/hostname >"$T/dg"; chmod 644 "$T/dg"
mkdir -p "$T/out"; chmod 1777 "$T/out"   # where the service users write their results

run as_user kvp11-test-svc "${ENVV[@]}" "${P11[@]}" --sign --id "$ID" -m ECDSA -i "$T/dg" -o "$T/out/sig"
[ "$RC" -eq 0 ] || { cat "$ERR"; fail "a member of kvp11 cannot sign"; }
verify_p256 "$T/out/sig" "$E/certs/p256.pem" "$T/dg" ||
  fail "the signature does not verify"
ok "kvp11-test-svc (group kvp11) signs in-process with 0640 root:kvp11 files; the signature verifies"

run as_user kvp11-test-svc cat "$E/hsm.pin"
[ "$RC" -eq 0 ] || fail "the group cannot read the 0640 PIN file"
run as_user kvp11-test-other "${ENVV[@]}" "${P11[@]}" --sign --id "$ID" -m ECDSA -i "$T/dg" -o "$T/out/sig2"
[ "$RC" -ne 0 ] || fail "a user outside kvp11 could sign"
run as_user kvp11-test-other cat "$E/hsm.pin"
[ "$RC" -ne 0 ] || fail "a user outside kvp11 reads the PIN"
ok "a user outside the group can neither use the module nor read the PIN"

# group write is refused, naming the file and the fix
chmod 0660 "$E/hsm.pin"
run as_user kvp11-test-svc "${ENVV[@]}" KVP11_DEBUG=error "${P11[@]}" -L
grep -q "hsm.pin: mode 0660 lets the group write this secret; fix: chmod 600" "$ERR" ||
  { cat "$ERR"; fail "a group-writable PIN file is not refused with its fix"; }
chmod 0640 "$E/hsm.pin"
ok "a group-writable PIN file is refused: $(grep -o 'hsm.pin: mode 0660[^;]*' "$ERR" | head -1)"

# a token directory the service user may not read: the reason, not "no token with label"
find "$E/tokens" -mindepth 1 -maxdepth 1 -type d -exec chmod g-rwx {} +
run as_user kvp11-test-svc "${ENVV[@]}" KVP11_DEBUG=error "${P11[@]}" --sign --id "$ID" -m ECDSA -i "$T/dg" -o "$T/out/sig3"
find "$E/tokens" -mindepth 1 -maxdepth 1 -type d -exec chmod g+rwx {} +
[ "$RC" -ne 0 ] || fail "signed without access to the token directory"
grep -q "shows no initialized token to this process" "$ERR" && ! grep -q "no token with label" "$ERR" ||
  { cat "$ERR"; fail "an unreadable token directory is not reported as such"; }
ok "an unreadable token directory is named as the cause"
echo PASS
