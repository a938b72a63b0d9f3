#!/usr/bin/env bash
# Logging on a shared machine (issue 12 item 4): a process that cannot open the
# configured log file says nothing on stderr (unless KVP11_DEBUG) and logs to
# syslog; log_file = syslog sends there; every line carries the pid.
# Runs in a private mount namespace with a stand-in logger on /dev/log.
. "$(dirname "$0")/lib.sh"
need_root
command -v unshare >/dev/null || skip "unshare not found"
command -v pkcs11-tool >/dev/null || skip "pkcs11-tool not found"
[ -f "${KVP11_MODULE_SO:-}" ] || fail "KVP11_MODULE_SO not set"
private_devlog "$@"
chmod 755 "$T"
cat >"$T/kvp11.conf" <<CONF
[global]
registry = $T/registry.db
log_level = info
log_file = $T/kvp11.log
CONF
chmod 644 "$T/kvp11.conf"
: >"$T/kvp11.log"; chmod 600 "$T/kvp11.log"   # as after a first run by root
list_slots() { KVP11_CONF=$T/kvp11.conf pkcs11-tool --module "$KVP11_MODULE_SO" -L; }

run as_user nobody env KVP11_CONF="$T/kvp11.conf" pkcs11-tool --module "$KVP11_MODULE_SO" -L
[ "$RC" -eq 0 ] || { cat "$ERR"; fail "pkcs11-tool -L as nobody failed"; }
[ ! -s "$ERR" ] || { cat "$ERR"; fail "stderr is not empty for a user who cannot open the log file"; }
ok "nobody: nothing on stderr"
sleep 0.3
grep -q "kvp11\[[0-9]*\] INFO .*initialized" "$SINK" || { cat "$SINK"; fail "the lines did not go to syslog"; }
grep -q "cannot open log file $T/kvp11.log: Permission denied; logging to syslog" "$SINK" ||
  { cat "$SINK"; fail "syslog does not say why"; }
ok "nobody: the lines went to syslog with the pid"

run as_user nobody env KVP11_CONF="$T/kvp11.conf" KVP11_DEBUG=info pkcs11-tool --module "$KVP11_MODULE_SO" -L
grep -q "kvp11\[[0-9]*\] INFO" "$ERR" || { cat "$ERR"; fail "KVP11_DEBUG=info shows nothing on stderr"; }
ok "KVP11_DEBUG=info: lines on stderr"

: >"$SINK"
sed -i "s|^log_file = .*|log_file = syslog|" "$T/kvp11.conf"
run list_slots
[ "$RC" -eq 0 ] && [ ! -s "$ERR" ] || { cat "$ERR"; fail "log_file = syslog wrote to stderr"; }
sleep 0.3
grep -q "kvp11\[[0-9]*\] INFO .*initialized" "$SINK" || { cat "$SINK"; fail "log_file = syslog: nothing in syslog"; }
[ ! -e "$T/syslog" ] || fail "a file named syslog was created"
ok "log_file = syslog"

# a user outside the group kvp11 (registry directory root:kvp11 0750): the
# module loads with an empty token, quietly (p11-kit list-modules as nobody)
mkdir -p "$T/lib"; chmod 0750 "$T/lib"
sed -i "s|^registry = .*|registry = $T/lib/registry.db|" "$T/kvp11.conf"
run as_user nobody env KVP11_CONF="$T/kvp11.conf" pkcs11-tool --module "$KVP11_MODULE_SO" -L
[ "$RC" -eq 0 ] && [ ! -s "$ERR" ] || { cat "$ERR"; fail "a user who cannot read the registry's directory gets stderr output or an error"; }
ok "nobody, registry directory closed to it: the module loads quietly"

# the default level is warn: no INFO line without log_level
sed -i '/^log_level/d' "$T/kvp11.conf"
: >"$SINK"
run list_slots
sleep 0.3
! grep -q "INFO" "$SINK" || { cat "$SINK"; fail "INFO lines at the default level"; }
ok "default level warn"
echo PASS
