#!/usr/bin/env bash
# The Debian package (issue 12 item 6): build it (CPack), lintian reports no
# error, install it with dpkg, sign through the installed module as an
# unprivileged user in the group kvp11 (pkcs11-tool on libkvp11.so and through
# p11-kit-proxy with the installed kvp11.module), `dpkg -r` keeps the edited
# conffile, `dpkg --purge` leaves the system as it was before: no kvp11 files,
# accounts or p11-kit module registration. Changes system state, and undoes it
# on every exit; takes the same lock as the other system-install tests.
. "$(dirname "$0")/lib.sh"
need_root
for c in dpkg dpkg-deb cpack pkcs11-tool flock; do command -v "$c" >/dev/null || skip "$c not found"; done
B=${KVP11_BUILD_DIR:?}
lock=/run/lock/kvp11-p11kit-system.lock; [ -d /run/lock ] || lock=/tmp/kvp11-p11kit-system.lock
exec {LOCKFD}>>"$lock"; flock -w 150 "$LOCKFD" || fail "timed out waiting for $lock"
dpkg-query -W -f='${Status}' kvp11 2>/dev/null | grep -q "installed" && skip "a kvp11 package is installed already"
MODDIR=$(pkg-config --variable=p11_module_path p11-kit-1 2>/dev/null || echo /usr/lib/x86_64-linux-gnu/pkcs11)
# an empty /var/lib/kvp11 left by an earlier install is put back as it was afterwards
VARLIB=""
if [ -d /var/lib/kvp11 ] && [ -z "$(ls -A /var/lib/kvp11)" ]; then VARLIB=$(stat -c '%u:%g %a' /var/lib/kvp11); fi
restore_varlib() {
  [ -n "$VARLIB" ] && [ ! -e /var/lib/kvp11 ] || return 0
  mkdir /var/lib/kvp11 && chown "${VARLIB% *}" /var/lib/kvp11 && chmod "${VARLIB#* }" /var/lib/kvp11
}
[ -n "$VARLIB" ] && rmdir /var/lib/kvp11
for f in /etc/kvp11 /var/lib/kvp11 /usr/bin/kvp11 "$MODDIR/libkvp11.so" /usr/share/p11-kit/modules/kvp11.module; do
  [ -e "$f" ] && { restore_varlib; skip "$f exists (kvp11 installed by other means): not mixing a package into it"; }
done

state() { # the system state the package may touch
  for a in kvp11; do getent passwd "$a" || echo "no user $a"; done
  for g in kvp11 kvp11-clients; do getent group "$g" || echo "no group $g"; done
  ls -d /etc/kvp11 /var/lib/kvp11 /usr/bin/kvp11 "$MODDIR/libkvp11.so" /usr/share/p11-kit/modules/kvp11.module \
    /usr/share/man/man1/kvp11.1.gz /usr/share/bash-completion/completions/kvp11 /usr/share/doc/kvp11 2>&1 | sort
  dpkg-query -W -f='${Status}\n' kvp11 2>&1
}
state >"$T/state.before"
trap 'dpkg --purge kvp11 >/dev/null 2>&1; cleanup_accounts; restore_varlib' EXIT

run cpack --config "$B/CPackConfig.cmake" -B "$T/pkg"
DEB=$(ls "$T"/pkg/kvp11_*.deb 2>/dev/null | head -1)
[ -n "$DEB" ] || { cat "$OUT" "$ERR"; fail "cpack made no .deb"; }
if command -v lintian >/dev/null; then
  lintian --fail-on error "$DEB" >"$T/lintian.out" 2>&1 || { cat "$T/lintian.out"; fail "lintian reports errors"; }
  ok "lintian: no errors ($(grep -c '^W:' "$T/lintian.out") warnings)"
fi
dpkg-deb -I "$DEB" conffiles | grep -qx /etc/kvp11/kvp11.conf || fail "kvp11.conf is not a conffile"

run dpkg -i "$DEB"
[ "$RC" -eq 0 ] || { cat "$OUT" "$ERR"; fail "dpkg -i"; }
getent group kvp11 >/dev/null && getent group kvp11-clients >/dev/null && getent passwd kvp11 >/dev/null ||
  fail "the package did not create the kvp11 group, user and kvp11-clients"
[ "$(stat -c '%U:%G %a' /var/lib/kvp11)" = "root:kvp11 750" ] || fail "/var/lib/kvp11: $(stat -c '%U:%G %a' /var/lib/kvp11)"
man -w kvp11 >/dev/null 2>&1 && man -w 5 kvp11.conf >/dev/null 2>&1 || fail "man pages not found"
p11-kit list-modules 2>/dev/null | grep -q "kvp11" || fail "p11-kit does not list the installed module"
ok "installed: accounts, /var/lib/kvp11 root:kvp11 0750, man pages, p11-kit module"

# sign as an unprivileged user in the group kvp11, through the installed module
make_user kvp11-test-deb kvp11
E=$T/env
KVP11_TOOL=/usr/bin/kvp11 make_fixture "$E"
chmod 755 "$T"; chown -R root:kvp11 "$E"; chmod 0750 "$E"
chmod 0640 "$E/kvp11.conf" "$E/hsm.pin" "$E"/registry.db*; chmod 0644 "$E/softhsm2.conf"
chgrp -R kvp11 "$E/tokens"; chmod -R g+rwX "$E/tokens"
mkdir -p "$T/out"; chmod 1777 "$T/out"
openssl dgst -sha256 -binary /etc/hostname >"$T/dg"; chmod 644 "$T/dg"
ENVV=(env SOFTHSM2_CONF="$E/softhsm2.conf" KVP11_CONF="$E/kvp11.conf")
P11=(pkcs11-tool --module "$MODDIR/libkvp11.so" --token-label "kvp11 default")
ID=$(key_id as_user kvp11-test-deb "${ENVV[@]}" "${P11[@]}" p256)
[ -n "$ID" ] || fail "the installed module shows no key to kvp11-test-deb"
run as_user kvp11-test-deb "${ENVV[@]}" "${P11[@]}" --sign --id "$ID" -m ECDSA -i "$T/dg" -o "$T/out/sig"
[ "$RC" -eq 0 ] && [ -s "$T/out/sig" ] || { cat "$ERR"; fail "signing through the installed module"; }
PROXY=$(find /usr/lib -name p11-kit-proxy.so 2>/dev/null | head -1)
if [ -n "$PROXY" ]; then
  run as_user kvp11-test-deb "${ENVV[@]}" pkcs11-tool --module "$PROXY" --token-label "kvp11 default" \
    --sign --id "$ID" -m ECDSA -i "$T/dg" -o "$T/out/sig2"
  [ "$RC" -eq 0 ] && [ -s "$T/out/sig2" ] || { cat "$ERR"; fail "signing through p11-kit-proxy and kvp11.module"; }
fi
ok "kvp11-test-deb (group kvp11) signs through the installed module and through p11-kit-proxy"

# dpkg -r keeps the edited conffile; --purge leaves the system as before
echo "# edited" >>/etc/kvp11/kvp11.conf
run dpkg -r kvp11
[ "$RC" -eq 0 ] || { cat "$OUT" "$ERR"; fail "dpkg -r"; }
grep -q "# edited" /etc/kvp11/kvp11.conf 2>/dev/null || fail "dpkg -r removed the edited configuration"
[ ! -e "$MODDIR/libkvp11.so" ] && [ ! -e /usr/share/p11-kit/modules/kvp11.module ] && [ ! -e /usr/bin/kvp11 ] ||
  fail "dpkg -r left the module, its p11-kit registration or the tool"
ok "dpkg -r: program files gone, the edited /etc/kvp11/kvp11.conf kept"
cleanup_accounts; CREATED_USERS=""   # the test's own user, before comparing
run dpkg --purge kvp11
[ "$RC" -eq 0 ] || { cat "$OUT" "$ERR"; fail "dpkg --purge"; }
state >"$T/state.after"
diff "$T/state.before" "$T/state.after" || fail "the system differs after dpkg --purge"
p11-kit list-modules 2>/dev/null | grep -q kvp11 && fail "a kvp11 p11-kit module is still registered"
ok "dpkg --purge: the system is as before (accounts, files, p11-kit modules)"
echo PASS
