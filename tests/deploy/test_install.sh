#!/usr/bin/env bash
# make install / make uninstall (issue 12 item 6), into a DESTDIR: uninstall
# removes exactly what install placed, keeps an edited configuration and the
# registry, and says what it left.
. "$(dirname "$0")/lib.sh"
B=${KVP11_BUILD_DIR:?}
R=$T/root
run env DESTDIR="$R" cmake --install "$B"
[ "$RC" -eq 0 ] || { cat "$OUT" "$ERR"; fail "cmake --install"; }
man=$(find "$R" -name kvp11.1.gz); conf5=$(find "$R" -name kvp11.conf.5.gz)
for f in "$R/etc/kvp11/kvp11.conf" "$R/etc/kvp11/kvp11.conf.example" "$man" "$conf5" \
  "$(find "$R" -name libkvp11.so)" "$(find "$R" -path '*/bin/kvp11')" \
  "$(find "$R" -name kvp11-server.service)" "$(find "$R" -path '*/completions/kvp11')" \
  "$(find "$R" -path '*/p11-kit/modules/kvp11.module')" "$(find "$R" -name kvp11-remote.module)"; do
  [ -n "$f" ] && [ -f "$f" ] || fail "not installed: $f"
done
grep -q "^ExecStart=.* server --foreground --name /run/kvp11/pkcs11.sock --provider /.*libkvp11.so pkcs11:model=kvp11" \
  "$(find "$R" -name kvp11-server.service)" || fail "the unit does not run p11-kit server on libkvp11.so"
ok "installed: module, tool, p11-kit module files, unit, man pages, completion, configuration"

# a second install keeps the administrator's configuration
echo "# edited by the admin" >>"$R/etc/kvp11/kvp11.conf"
run env DESTDIR="$R" cmake --install "$B"
grep -q "edited by the admin" "$R/etc/kvp11/kvp11.conf" || fail "install overwrote an edited configuration"
printf 'registry' >"$R/var/lib/kvp11/registry.db"
before=$(find "$R" -type f | sort)

run env DESTDIR="$R" cmake --build "$B" --target uninstall
[ "$RC" -eq 0 ] || { cat "$OUT" "$ERR"; fail "make uninstall"; }
left=$(find "$R" -type f | sort)
[ "$left" = "$(printf '%s\n' "$R/etc/kvp11/kvp11.conf" "$R/var/lib/kvp11/registry.db" | sort)" ] ||
  { echo "$left"; fail "uninstall left other files, or removed the edited configuration or the registry"; }
grep -q "Left in place:" "$OUT" && grep -q "kvp11.conf (edited configuration)" "$OUT" &&
  grep -q "var/lib/kvp11/ (not empty" "$OUT" || { cat "$OUT"; fail "uninstall does not list what it left"; }
ok "uninstall removed $(($(echo "$before" | wc -l) - 2)) files, kept the edited configuration and the registry, and said so"

# the shipped configuration unchanged is removed
rm -rf "$R"
env DESTDIR="$R" cmake --install "$B" >/dev/null 2>&1 || fail "install"
env DESTDIR="$R" cmake --build "$B" --target uninstall >"$OUT" 2>&1 || fail "uninstall"
[ -z "$(find "$R" -type f)" ] || { find "$R" -type f; fail "files left after installing and uninstalling"; }
[ ! -d "$R/etc/kvp11" ] && [ ! -d "$R/var/lib/kvp11" ] || fail "empty kvp11 directories left"
ok "install + uninstall leaves no file"
echo PASS
