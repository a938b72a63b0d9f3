#!/usr/bin/env bash
# nginx end to end (issue 12 item 3): Debian's nginx, master as root, two
# workers as www-data (reuseport spreads connections over both), TLS 1.2 and
# 1.3 with an RSA and an ECDSA key, on the HSM backend (SoftHSM2) and on the
# Key Vault emulator; in mode 1 (libkvp11.so in-process, www-data in the group
# kvp11 with 0640 root:kvp11 files) and in mode 2 (p11-kit server as its own
# user, www-data only in the clients group and unable to read any secret).
# Per mode: 200 handshakes with curl from the start of nginx, 0 failures,
# both workers served, each worker's first handshake included.
. "$(dirname "$0")/lib.sh"
need_root
command -v nginx >/dev/null || skip "nginx not installed (scripts/install-deps.sh installs it)"
getent passwd www-data >/dev/null || skip "no user www-data"
command -v curl >/dev/null || skip "curl not found"
command -v node >/dev/null || skip "node not found (Key Vault emulator)"
ENGINE=$(openssl version -e | sed -n 's/^ENGINESDIR: "\(.*\)"$/\1/p')/pkcs11.so
[ -f "$ENGINE" ] || skip "libp11 engine not found"
CLIENT_SO=$(find /usr/lib -name p11-kit-client.so -path '*pkcs11*' 2>/dev/null | head -1)
[ -n "$CLIENT_SO" ] || skip "p11-kit-client.so not found"
[ -f "${KVP11_MODULE_SO:-}" ] || fail "KVP11_MODULE_SO not set"
N=${NGINX_HANDSHAKES:-200}

NGINX_PID="" SRV_PID="" WWW_ADDED=""
cleanup() {
  [ -n "$NGINX_PID" ] && kill "$NGINX_PID" 2>/dev/null
  [ -n "$SRV_PID" ] && kill "$SRV_PID" 2>/dev/null
  wait 2>/dev/null
  bash "$SRC/tests/kv/fixture-cleanup.sh" "$T/kv" >/dev/null 2>&1
  [ -n "$WWW_ADDED" ] && gpasswd -d www-data kvp11 >/dev/null 2>&1
  cleanup_accounts
}
trap cleanup EXIT
make_group kvp11
make_group kvp11-test-clients
make_user kvp11-test-srv kvp11-test-clients

# key stores: the SoftHSM2 fixture and the Key Vault emulator, in one configuration
E=$T/env
make_fixture "$E"
bash "$SRC/tests/kv/fixture-setup.sh" "$T/kv" "$SRC/tests/emulator/kv-emulator.js" >"$T/kv.log" 2>&1 ||
  { cat "$T/kv.log"; fail "Key Vault emulator"; }
sed -i '/^log_/d' "$E/kvp11.conf"
{ echo; sed -n '/^\[vault emu\]/,/^$/p' "$T/kv/kvp11.conf"; printf '[account kv]\nlabel = kvp11 kv\n'; } >>"$E/kvp11.conf"
cp "$T/kv/app-full.secret" "$E/vault.secret"
sed -i "s|^client_secret_file = .*|client_secret_file = $E/vault.secret|; s|^ca_file = .*|ca_file = $E/kv-ca.pem|" "$E/kvp11.conf"
cp "$T/kv/ca.pem" "$E/kv-ca.pem"
for k in rsa2048 p256; do
  cp "$T/kv/certs/$k.pem" "$E/certs/kv-$k.pem"
  "$KVP11_TOOL" -c "$E/kvp11.conf" cert add --name "$k" --type private --cert "$E/certs/kv-$k.pem" \
    --account kv --vault emu --key "$k" >/dev/null || fail "registering the vault key $k"
done
chmod 755 "$T"
cp "$KVP11_MODULE_SO" "$T/libkvp11.so"; chmod 755 "$T/libkvp11.so"

# nginx: 4 servers (HSM/vault x RSA/ECDSA), each answering with the worker's pid
nginx_conf() { # nginx_conf MODULE
  sed -e "s|@KVP11_MODULE@|$1|" -e "s|@PKCS11_ENGINE@|$ENGINE|" "$SRC/hsm-config/openssl-engine.cnf" >"$T/engine.cnf"
  mkdir -p "$T/ngx/logs"
  {
    echo "user www-data; worker_processes 2; pid $T/ngx/nginx.pid; error_log $T/ngx/logs/error.log warn;"
    echo "ssl_engine pkcs11; env KVP11_CONF; env SOFTHSM2_CONF; env P11_KIT_SERVER_ADDRESS; env OPENSSL_CONF;"
    echo "events { worker_connections 64; }"
    echo "http { access_log off; client_body_temp_path $T/ngx/cb; proxy_temp_path $T/ngx/px;"
    echo " fastcgi_temp_path $T/ngx/fc; uwsgi_temp_path $T/ngx/uw; scgi_temp_path $T/ngx/sc;"
    local i=0 tok key
    for s in "kvp11%20default p256" "kvp11%20default rsa2048" "kvp11%20kv p256" "kvp11%20kv rsa2048"; do
      read -r tok key <<<"$s"
      local pem=$E/certs/$key.pem
      [ "$tok" = "kvp11%20kv" ] && pem=$E/certs/kv-$key.pem
      echo " server { listen 127.0.0.1:$((PORT0 + i)) ssl reuseport; ssl_protocols TLSv1.2 TLSv1.3;"
      echo "  ssl_certificate $pem;"
      echo "  ssl_certificate_key \"engine:pkcs11:pkcs11:token=$tok;object=$key;type=private\";"
      echo "  location / { return 200 \"\$pid\\n\"; } }"
      i=$((i + 1))
    done
    echo "}"
  } >"$T/ngx/nginx.conf"
}
start_nginx() { # start_nginx ENV...
  rm -f "$T/ngx/nginx.pid"
  env "$@" OPENSSL_CONF="$T/engine.cnf" nginx -p "$T/ngx" -c "$T/ngx/nginx.conf" -g 'daemon off;' >"$T/ngx/out" 2>&1 &
  NGINX_PID=$!
  for _ in $(seq 100); do
    [ -f "$T/ngx/nginx.pid" ] && [ "$(pgrep -P "$NGINX_PID" -u www-data | wc -l)" -ge 2 ] && return
    kill -0 "$NGINX_PID" 2>/dev/null || break
    sleep 0.1
  done
  cat "$T/ngx/out" "$T/ngx/logs/error.log" >&2
  fail "nginx did not start"
}
stop_nginx() { # the master and its workers gone, their ports free
  local w; w=$(pgrep -P "$NGINX_PID" | tr '\n' ' ')
  kill "$NGINX_PID" 2>/dev/null; wait "$NGINX_PID" 2>/dev/null; NGINX_PID=""
  for _ in $(seq 100); do
    # shellcheck disable=SC2086
    [ -z "$w" ] || ! kill -0 $w 2>/dev/null && return
    sleep 0.1
  done
}
free_ports() { # PORT0 with PORT0..PORT0+3 free
  python3 - <<'PY'
import socket
while True:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close()
    try:
        for i in range(4):
            t = socket.socket(); t.bind(("127.0.0.1", p + i)); t.close()
        print(p); break
    except OSError:
        pass
PY
}
# handshakes MODE: N curl handshakes over the 4 servers x TLS 1.2/1.3, from the start
handshakes() {
  local mode=$1 fails=0 i port tls out
  : >"$T/pids.$mode"
  local workers; workers=$(pgrep -P "$NGINX_PID" -u www-data | sort | tr '\n' ' ')
  for ((i = 0; i < N; i++)); do
    port=$((PORT0 + i % 4)); tls=$(( (i / 4) % 2 ))
    if [ $tls = 0 ]; then tls=(--tlsv1.2 --tls-max 1.2); else tls=(--tlsv1.3); fi
    if out=$(curl -sS -k "${tls[@]}" --max-time 20 "https://127.0.0.1:$port/" 2>&1); then
      echo "$out" >>"$T/pids.$mode"
    else
      fails=$((fails + 1)); echo "handshake $i (port $port ${tls[*]}): $out" >&2
    fi
  done
  local served; served=$(sort -u "$T/pids.$mode" | tr '\n' ' ')
  [ "$fails" -eq 0 ] || { tail -20 "$T/ngx/logs/error.log" >&2; fail "$mode: $fails of $N handshakes failed"; }
  for w in $workers; do grep -qx "$w" "$T/pids.$mode" || fail "$mode: worker $w served no handshake (served: $served)"; done
  ok "$mode: $N handshakes (TLS 1.2 and 1.3; RSA and ECDSA; HSM and Key Vault), 0 failures, workers $served each served"
}

# ---- mode 1: in-process, www-data in the group kvp11 ---------------------------------
chown -R root:kvp11 "$E"; chmod 0750 "$E"; chmod 0640 "$E/kvp11.conf" "$E/hsm.pin" "$E/vault.secret" "$E"/registry.db*
chmod 0644 "$E/softhsm2.conf" "$E/kv-ca.pem"
chgrp -R kvp11 "$E/tokens"; chmod -R g+rwX "$E/tokens"
if ! id -nG www-data | tr ' ' '\n' | grep -qx kvp11; then usermod -aG kvp11 www-data; WWW_ADDED=1; fi
PORT0=$(free_ports)
nginx_conf "$T/libkvp11.so"
start_nginx SOFTHSM2_CONF="$E/softhsm2.conf" KVP11_CONF="$E/kvp11.conf"
handshakes mode1
stop_nginx
[ -n "$WWW_ADDED" ] && gpasswd -d www-data kvp11 >/dev/null && WWW_ADDED=""

# ---- mode 2: p11-kit server as kvp11-test-srv; www-data in the clients group only -----
chown -R root:root "$E"; chmod 0755 "$E"; chmod 0644 "$E/kvp11.conf" "$E"/registry.db*
chown -R kvp11-test-srv "$E/tokens" "$E/hsm.pin" "$E/vault.secret"
chmod 0600 "$E/hsm.pin" "$E/vault.secret"; chmod -R go-rwx "$E/tokens"
RUN=$T/run; mkdir -p "$RUN"; chown kvp11-test-srv "$RUN"; chmod 0750 "$RUN"
setpriv --reuid=kvp11-test-srv --regid=kvp11-test-srv --groups="$(getent group kvp11-test-clients | cut -d: -f3)" -- \
  env SOFTHSM2_CONF="$E/softhsm2.conf" KVP11_CONF="$E/kvp11.conf" \
  p11-kit server --foreground --name "$RUN/pkcs11.sock" --provider "$T/libkvp11.so" pkcs11:model=kvp11 >"$T/server.out" 2>&1 &
SRV_PID=$!
for _ in $(seq 50); do [ -S "$RUN/pkcs11.sock" ] && break; sleep 0.1; done
chgrp kvp11-test-clients "$RUN" "$RUN/pkcs11.sock" && chmod 0660 "$RUN/pkcs11.sock" || fail "server socket"
usermod -aG kvp11-test-clients www-data
for f in "$E/hsm.pin" "$E/vault.secret" "$E"/tokens/*/*; do
  run as_user www-data cat "$f"
  [ "$RC" -ne 0 ] || fail "mode2: www-data can read $f"
done
ok "mode2: www-data cannot read the PIN, the client secret or the token files"
PORT0=$(free_ports)
nginx_conf "$CLIENT_SO"
start_nginx P11_KIT_SERVER_ADDRESS="unix:path=$RUN/pkcs11.sock"
handshakes mode2
stop_nginx
gpasswd -d www-data kvp11-test-clients >/dev/null 2>&1
echo PASS
