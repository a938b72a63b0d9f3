#!/usr/bin/env bash
# What the configuration trusts (issue 10 item 3, issue 13 item 3): every
# refusal is one line naming the file and the fix.
. "$(dirname "$0")/lib.sh"

conf() { # conf FILE [lines...]: a valid configuration with the registry in $T/reg
  local f=$1; shift
  mkdir -p "$T/reg"
  { printf '[global]\nregistry = %s/reg/registry.db\n' "$T"; printf '%s\n' "$@"; } >"$f"
  chmod 644 "$f"
}
list() { "$KVP11_TOOL" -c "$1" cert list; }

conf "$T/ok.conf"
run list "$T/ok.conf"
[ "$RC" -eq 0 ] || { cat "$ERR" >&2; fail "a valid configuration is refused"; }
ok "a root-owned 0644 configuration is accepted"

# configuration file
conf "$T/gw.conf"; chmod 664 "$T/gw.conf"
expect_refused "group-writable configuration" "gw.conf: the configuration is group-writable (mode 0664)" list "$T/gw.conf"
grep -qF "chmod go-w $T/gw.conf" "$ERR" || fail "the fix is not named"
conf "$T/ow.conf"; chmod 646 "$T/ow.conf"
expect_refused "world-writable configuration" "world-writable" list "$T/ow.conf"
if [ "$(id -u)" -eq 0 ]; then
  conf "$T/foreign.conf"; chown 65534 "$T/foreign.conf"
  expect_refused "configuration owned by another user" "owned by uid 65534, neither root nor this process's user" list "$T/foreign.conf"
fi

# registry file and its directory
conf "$T/r.conf"
mkdir -p "$T/reg"; : >"$T/reg/registry.db"; chmod 664 "$T/reg/registry.db"
expect_refused "group-writable registry" "registry.db: the registry is group-writable" list "$T/r.conf"
rm -f "$T/reg/registry.db"
chmod 777 "$T/reg"
expect_refused "world-writable registry directory" "the registry directory is world-writable" list "$T/r.conf"
chmod 755 "$T/reg"
KVP11_REGISTRY=/tmp/kvp11-trust-$$.db run list "$T/ok.conf"
[ "$RC" -eq 1 ] && grep -qF "/tmp: the registry directory is world-writable" "$ERR" ||
  { cat "$ERR" >&2; fail "KVP11_REGISTRY in /tmp is accepted"; }
ok "KVP11_REGISTRY in a world-writable directory is refused"

# HSM module
conf "$T/m.conf" "[hsm h]" "module = libsofthsm2.so" "token_label = t"
expect_refused "relative module path" "key 'module': 'libsofthsm2.so' is not an absolute path" list "$T/m.conf"
cp "$SOFTHSM" "$T/hsm.so" 2>/dev/null || : >"$T/hsm.so"
chmod 775 "$T/hsm.so"
conf "$T/m2.conf" "[hsm h]" "module = $T/hsm.so" "token_label = t"
expect_refused "group-writable HSM module" "HSM module $T/hsm.so is writable by its group (mode 0775); fix: chmod go-w $T/hsm.so" list "$T/m2.conf"
chmod 755 "$T/hsm.so"
run list "$T/m2.conf"
[ "$RC" -eq 0 ] || { cat "$ERR" >&2; fail "a 0755 HSM module is refused"; }
ok "a 0755 HSM module is accepted"

# quoted values
conf "$T/q.conf" "[hsm h]" "module = $SOFTHSM" 'token_label = "b2b"'
expect_refused "quoted token_label" "key 'token_label': quoted value \"b2b\"" list "$T/q.conf"
conf "$T/q2.conf" "[account a]" "label = 'B2B default'"
expect_refused "single-quoted label" "quoted value" list "$T/q2.conf"

# log_file and audit destinations
conf "$T/l1.conf" "log_file = syslog"
run list "$T/l1.conf"
[ "$RC" -eq 0 ] && [ ! -e "$T/syslog" ] || fail "log_file = syslog is not syslog"
ok "log_file = syslog is accepted and creates no file"
conf "$T/l2.conf" "log_file = kvp11.log"
expect_refused "relative log_file" "key 'log_file': 'kvp11.log' is not an absolute path" list "$T/l2.conf"
conf "$T/l3.conf" "log_file = /dev/log"
expect_refused "log_file in /dev" "/dev/log is not a place for a regular file" list "$T/l3.conf"
conf "$T/l4.conf" "log_file = $T"
expect_refused "log_file a directory" "exists and is not a regular file" list "$T/l4.conf"
conf "$T/a1.conf" "audit = relative.log"
expect_refused "relative audit file" "key 'audit': 'relative.log' is not an absolute path" list "$T/a1.conf"

# secret files: 0640 is accepted for root's group (or kvp11), never group write or others
printf '1234' >"$T/pin"
conf "$T/s.conf" "[hsm h]" "module = $SOFTHSM" "token_label = t" "pin_file = $T/pin"
chmod 660 "$T/pin"
expect_refused "group-writable PIN file" "mode 0660 lets the group write this secret" list "$T/s.conf"
chmod 604 "$T/pin"
expect_refused "PIN file others can read" "mode 0604 lets others access this secret" list "$T/s.conf"
if [ "$(id -u)" -eq 0 ]; then
  chgrp 0 "$T/pin"; chmod 640 "$T/pin"
  run list "$T/s.conf"
  [ "$RC" -eq 0 ] || { cat "$ERR" >&2; fail "a 0640 root:root PIN file is refused"; }
  ok "a 0640 PIN file of root's group is accepted"
  other=$(getent group users | cut -d: -f3)
  if [ -n "$other" ]; then
    chgrp "$other" "$T/pin"
    expect_refused "0640 PIN file of another group" "only the group 'kvp11' (or root's) may" list "$T/s.conf"
  fi
fi

# setuid/setgid: the environment is ignored
[ -x "${KVP11_ENV_PROBE:-}" ] || fail "KVP11_ENV_PROBE not built"
run env KVP11_CONF=/x.conf KVP11_REGISTRY=/x.db KVP11_DEBUG=debug AZURE_CLIENT_ID=c "$KVP11_ENV_PROBE"
grep -qx "conf=/x.conf" "$OUT" && grep -qx "debug=debug" "$OUT" || { cat "$OUT"; fail "the environment is not read"; }
if ldd "$KVP11_ENV_PROBE" 2>/dev/null | grep -q libasan; then
  echo "note: sanitizer build: the setuid check runs in the normal build (LeakSanitizer cannot run setuid)"
elif [ "$(id -u)" -eq 0 ]; then
  cp "$KVP11_ENV_PROBE" "$T/probe"
  chown 65534 "$T/probe"; chmod 4755 "$T/probe"
  run env KVP11_CONF=/x.conf KVP11_REGISTRY=/x.db KVP11_DEBUG=debug AZURE_CLIENT_ID=c "$T/probe"
  grep -qx "conf=/etc/kvp11/kvp11.conf" "$OUT" && grep -qx "registry=(ignored)" "$OUT" &&
    grep -qx "debug=(ignored)" "$OUT" && grep -qx "azure=(ignored)" "$OUT" ||
    { cat "$OUT"; fail "a setuid process reads the environment"; }
  ok "a setuid process ignores KVP11_CONF, KVP11_REGISTRY, KVP11_DEBUG, AZURE_*"
fi
echo "PASS"
