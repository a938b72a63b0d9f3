#!/usr/bin/env bash
# Mode 2, privilege separation through p11-kit's RPC server (issue 12 item 2).
# The server runs as its own user (here kvp11-test-srv, standing for kvp11),
# started with the ExecStart/ExecStartPost lines of hsm-config's systemd unit
# (paths and names substituted); it alone can read the PIN and the token. A
# client in the clients group signs and decrypts through the socket, with
# p11-kit-client.so and with the shipped client module file (remote:), and can
# read no secret; a user outside the group cannot connect. Through the RPC,
# CKA_ALLOWED_MECHANISMS is absent instead of failing the whole call.
. "$(dirname "$0")/lib.sh"
need_root
command -v p11-kit >/dev/null || skip "p11-kit not found"
command -v pkcs11-tool >/dev/null || skip "pkcs11-tool not found"
CLIENT_SO=$(find /usr/lib -name p11-kit-client.so -path '*pkcs11*' 2>/dev/null | head -1)
PROXY_SO=$(find /usr/lib -name p11-kit-proxy.so 2>/dev/null | head -1)
[ -n "$CLIENT_SO" ] && [ -n "$PROXY_SO" ] || skip "p11-kit-client.so / p11-kit-proxy.so not found"
[ -f "${KVP11_MODULE_SO:-}" ] || fail "KVP11_MODULE_SO not set"
SRV_PID=""
cleanup() { [ -n "$SRV_PID" ] && kill "$SRV_PID" 2>/dev/null; wait 2>/dev/null; cleanup_accounts; }
trap cleanup EXIT
make_group kvp11-test-clients
make_user kvp11-test-srv kvp11-test-clients
make_user kvp11-test-cli kvp11-test-clients
make_user kvp11-test-other

E=$T/env
make_fixture "$E"
chmod 755 "$T" "$E"
cp "$KVP11_MODULE_SO" "$T/libkvp11.so"; chmod 755 "$T/libkvp11.so"
# the server user owns the secrets and the token; the configuration and the registry stay root's
chown -R kvp11-test-srv "$E/tokens" "$E/hsm.pin"
chmod 0600 "$E/hsm.pin"
chmod 0644 "$E/kvp11.conf" "$E/softhsm2.conf" "$E"/registry.db*
sed -i "s|^log_file = .*|log_file = $T/server.log|" "$E/kvp11.conf"
: >"$T/server.log"; chown kvp11-test-srv "$T/server.log"

# the unit's commands, for a runtime directory under $T
UNIT=$KVP11_BUILD_DIR/hsm-config/kvp11-server.service
[ -f "$UNIT" ] || fail "$UNIT not generated"
RUN=$T/run
mkdir -p "$RUN"; chown kvp11-test-srv:kvp11-test-srv "$RUN"; chmod 0750 "$RUN"   # RuntimeDirectory=kvp11, 0750
subst() { sed -e "s|/run/kvp11|$RUN|g" -e "s|kvp11-clients|kvp11-test-clients|g" \
  -e "s|--provider [^ ]*|--provider $T/libkvp11.so|"; }
START=$(sed -n 's/^ExecStart=//p' "$UNIT" | subst)
POST=$(sed -n 's/^ExecStartPost=//p' "$UNIT" | subst)
AS_SRV=(setpriv --reuid=kvp11-test-srv --regid=kvp11-test-srv --groups="$(getent group kvp11-test-clients | cut -d: -f3)" --
  env SOFTHSM2_CONF="$E/softhsm2.conf" KVP11_CONF="$E/kvp11.conf")
# shellcheck disable=SC2086
"${AS_SRV[@]}" $START >"$T/server.out" 2>&1 &
SRV_PID=$!
eval "timeout 20 ${AS_SRV[*]} $POST" || { cat "$T/server.out"; fail "ExecStartPost failed"; }
[ "$(stat -c '%U:%G %a' "$RUN")" = "kvp11-test-srv:kvp11-test-clients 750" ] || fail "runtime directory: $(stat -c '%U:%G %a' "$RUN")"
[ "$(stat -c '%G %a' "$RUN/pkcs11.sock")" = "kvp11-test-clients 660" ] || fail "socket: $(stat -c '%G %a' "$RUN/pkcs11.sock")"
ok "the unit's commands: $RUN 0750 and the socket 0660, group kvp11-test-clients"

ADDR=unix:path=$RUN/pkcs11.sock
CLI=(env P11_KIT_SERVER_ADDRESS="$ADDR" pkcs11-tool --module "$CLIENT_SO" --token-label "kvp11 default")
ID_EC=$(key_id as_user kvp11-test-cli "${CLI[@]}" p256)
ID_RSA=$(key_id as_user kvp11-test-cli "${CLI[@]}" rsa2048)
[ -n "$ID_EC" ] && [ -n "$ID_RSA" ] || { cat "$T/server.out"; fail "the client sees no keys"; }
mkdir -p "$T/out"; chmod 1777 "$T/out"
openssl dgst -sha256 -binary /etc/hostname >"$T/dg"; chmod 644 "$T/dg"
run as_user kvp11-test-cli "${CLI[@]}" --sign --id "$ID_EC" -m ECDSA -i "$T/dg" -o "$T/out/sig"
[ "$RC" -eq 0 ] || { cat "$ERR"; fail "the client cannot sign through the server"; }
python3 - "$T/out/sig" "$T/sig.der" <<'PY'
import sys
raw = open(sys.argv[1], "rb").read(); n = len(raw) // 2
def i(b):
    b = b.lstrip(b"\0") or b"\0"
    if b[0] & 0x80: b = b"\0" + b
    return b"\x02" + bytes([len(b)]) + b
s = i(raw[:n]) + i(raw[n:]); open(sys.argv[2], "wb").write(b"\x30" + bytes([len(s)]) + s)
PY
openssl x509 -in "$E/certs/p256.pem" -pubkey -noout >"$T/p256.pub"
openssl pkeyutl -verify -pubin -inkey "$T/p256.pub" -in "$T/dg" -sigfile "$T/sig.der" >/dev/null ||
  fail "the signature made through the server does not verify"
printf 'secret message' >"$T/msg"
openssl x509 -in "$E/certs/rsa2048.pem" -pubkey -noout >"$T/rsa.pub"
openssl pkeyutl -encrypt -pubin -inkey "$T/rsa.pub" -in "$T/msg" -out "$T/enc"; chmod 644 "$T/enc"
run as_user kvp11-test-cli "${CLI[@]}" --decrypt --id "$ID_RSA" -m RSA-PKCS -i "$T/enc" -o "$T/out/dec"
[ "$RC" -eq 0 ] && cmp -s "$T/out/dec" "$T/msg" || { cat "$ERR"; fail "decrypt through the server"; }
ok "a member of kvp11-test-clients signs (ECDSA, verified) and decrypts (RSA) through the server"

# the shipped client module file, as a user configuration of p11-kit-proxy
H=$T/clihome
mkdir -p "$H/.config/pkcs11/modules"
sed "s|/run/kvp11|$RUN|" "$SRC/hsm-config/kvp11-remote.module" >"$H/.config/pkcs11/modules/kvp11.module"
chown -R kvp11-test-cli "$H"
run as_user kvp11-test-cli env HOME="$H" pkcs11-tool --module "$PROXY_SO" -L
grep -q "kvp11 default" "$OUT" || { cat "$OUT" "$ERR"; fail "p11-kit-proxy with kvp11-remote.module does not show the token"; }
ok "kvp11-remote.module (remote: the socket) works through p11-kit-proxy"

# no secrets for the client, no socket for others
for f in "$E/hsm.pin" "$E/tokens"/*/*; do
  run as_user kvp11-test-cli cat "$f"
  [ "$RC" -ne 0 ] || fail "the client can read $f"
done
ok "the client can read neither the PIN nor the token files"
run as_user kvp11-test-other env P11_KIT_SERVER_ADDRESS="$ADDR" pkcs11-tool --module "$CLIENT_SO" -L
grep -q "kvp11 default" "$OUT" && fail "a user outside kvp11-test-clients reached the server"
ok "a user outside the clients group cannot reach the server"

# CKA_ALLOWED_MECHANISMS: absent through the RPC, not a failed call
run as_user kvp11-test-cli "${CLI[@]}" -O --type privkey
[ "$RC" -eq 0 ] && grep -q "label: *p256" "$OUT" || { cat "$OUT" "$ERR"; fail "pkcs11-tool -O through the server"; }
! grep -q "CKR_DEVICE_ERROR" "$ERR" || { cat "$ERR"; fail "an attribute fails with CKR_DEVICE_ERROR through the RPC"; }
ok "pkcs11-tool -O through the server: no CKR_DEVICE_ERROR (CKA_ALLOWED_MECHANISMS left out)"
echo PASS
