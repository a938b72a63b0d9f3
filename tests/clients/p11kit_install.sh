#!/usr/bin/env bash
# `cmake --install` into the real system (as root, as CI runs) registers kvp11
# with p11-kit: `p11-kit list-modules` shows the module and its token, and
# `p11tool --list-all` (no --provider: through p11-kit) finds the registered
# certificates. Everything installed is removed again (and any file it
# replaced restored) on every exit, and kvp11 is then gone from p11-kit.
. "$(dirname "$0")/common.sh"
. "$(dirname "$0")/p11kit_lib.sh"
p11kit_need_system
need p11tool openssl

p11kit_sys_install
# The installed files are where p11-kit looks, and the module is the one built here.
[ -f "$P11KIT_MODDIR/libkvp11.so" ] || fail "libkvp11.so not installed in $P11KIT_MODDIR"
cmp -s "$P11KIT_MODDIR/libkvp11.so" "$KVP11_MODULE" || fail "installed libkvp11.so differs from $KVP11_MODULE"
[ -f "$P11KIT_CONFDIR/kvp11.module" ] || fail "kvp11.module not installed in $P11KIT_CONFDIR"
[ -x "$P11KIT_PREFIX/bin/kvp11" ] || fail "tool not installed in $P11KIT_PREFIX/bin"
[ -f /etc/kvp11/kvp11.conf ] || fail "/etc/kvp11/kvp11.conf missing after install"
if [ -e "$WORK/backup/etc/kvp11/kvp11.conf" ]; then
  cmp -s /etc/kvp11/kvp11.conf "$WORK/backup/etc/kvp11/kvp11.conf" || fail "install replaced an existing /etc/kvp11/kvp11.conf"
else
  cmp -s /etc/kvp11/kvp11.conf "$KVP11_SOURCE_DIR/hsm-config/kvp11.conf" || fail "/etc/kvp11/kvp11.conf is not the starting configuration"
  cmp -s /etc/kvp11/kvp11.conf.example "$KVP11_SOURCE_DIR/hsm-config/kvp11.conf.example" || fail "/etc/kvp11/kvp11.conf.example not installed"
  # the starting configuration loads: a module that fails C_Initialize would be skipped by p11-kit
  KVP11_CONF=/etc/kvp11/kvp11.conf "$P11KIT_PREFIX/bin/kvp11" cert list >/dev/null 2>&1 || fail "the installed /etc/kvp11/kvp11.conf does not load"
  case $(stat -c %a /etc/kvp11/kvp11.conf) in 644) ;; *) fail "/etc/kvp11/kvp11.conf is not mode 0644" ;; esac
fi
ok "installed: $P11KIT_MODDIR/libkvp11.so, $P11KIT_CONFDIR/kvp11.module, bin/kvp11, /etc/kvp11/kvp11.conf"

# A second install keeps the (now existing) configuration and writes nothing else.
echo "# local change $$" >>/etc/kvp11/kvp11.conf
run "second install" cmake --install "$KVP11_BUILD_DIR" --prefix "$P11KIT_PREFIX"
grep -q "^# local change $$\$" /etc/kvp11/kvp11.conf || fail "a second install overwrote /etc/kvp11/kvp11.conf"
grep -q '^/etc/kvp11/kvp11.conf$' "$KVP11_BUILD_DIR/install_manifest.txt" \
  && fail "a second install lists the kept /etc/kvp11/kvp11.conf in its manifest"
ok "a second install keeps an existing /etc/kvp11/kvp11.conf"

# KVP11_CONF (from env.sh) reaches the module through p11-kit.
run "p11-kit list-modules" p11-kit list-modules
cp "$WORK/out" "$WORK/modules.txt"
awk '/^[^ \t]/ { m = $1 } m == "kvp11:" { print }' "$WORK/modules.txt" >"$WORK/kvp11.txt"
[ -s "$WORK/kvp11.txt" ] || { cat "$WORK/modules.txt" >&2; fail "p11-kit list-modules does not show kvp11"; }
grep -Eq "^kvp11: .*libkvp11\.so\$" "$WORK/kvp11.txt" || { cat "$WORK/kvp11.txt" >&2; fail "kvp11 entry does not name libkvp11.so"; }
grep -Eq "^[[:space:]]+token: $TOKEN\$" "$WORK/kvp11.txt" \
  || { cat "$WORK/kvp11.txt" >&2; fail "p11-kit list-modules shows no token '$TOKEN' for kvp11"; }
ok "p11-kit list-modules shows kvp11 and its token '$TOKEN'"

# Through p11-kit (no --provider): all certificates, and the private keys.
export GNUTLS_PIN=${CLIENT_PIN:-}
run "p11tool --list-all" p11tool --list-all "pkcs11:token=$TOKEN_URI"
cp "$WORK/out" "$WORK/all.txt"
for k in $ALL_KEYS $PARTNER; do
  grep -Eq "URL: pkcs11:.*token=$TOKEN_URI;.*object=$k;.*type=cert" "$WORK/all.txt" \
    || { cat "$WORK/all.txt" >&2; fail "p11tool --list-all (through p11-kit) does not find certificate $k"; }
done
ok "p11tool --list-all through p11-kit finds the $NCERTS certificates"
run "p11tool --list-tokens" p11tool --list-tokens
grep -Eq "URL: pkcs11:model=kvp11;.*token=$TOKEN_URI\$" "$WORK/out" \
  || { cat "$WORK/out" >&2; fail "p11tool --list-tokens (through p11-kit) misses kvp11's token"; }
run "p11tool --export" p11tool --export "pkcs11:token=$TOKEN_URI;object=$EC1;type=cert"
openssl x509 -in "$WORK/out" -outform DER -out "$WORK/a.der" 2>/dev/null || fail "export of $EC1 is not a certificate"
openssl x509 -in "$CERTS/$EC1.pem" -outform DER -out "$WORK/b.der"
cmp -s "$WORK/a.der" "$WORK/b.der" || fail "$EC1 exported through p11-kit differs from certs/$EC1.pem"
ok "p11tool through p11-kit: token listed, $EC1 exported byte for byte"

# Uninstall now and check the system is as before.
p11kit_sys_uninstall || fail "uninstall"
for f in "${P11KIT_SYS_FILES[@]}"; do
  if [ -e "$WORK/backup$f" ]; then
    cmp -s "$f" "$WORK/backup$f" || fail "$f not restored"
  else
    [ ! -e "$f" ] || fail "$f left behind"
  fi
done
run "p11-kit list-modules after uninstall" p11-kit list-modules
grep -q '^kvp11:' "$WORK/out" && fail "kvp11 still listed by p11-kit after uninstall"
ok "uninstalled: ${#P11KIT_SYS_FILES[@]} files removed or restored, p11-kit no longer lists kvp11"
pass
