#!/usr/bin/env bash
# tests/kv/signonly.sh KV_DIR HOST MODULE — issue 11 through PKCS#11: a principal holding only
# 'sign' and 'decrypt' signs with a registered (versioned, SPKI) Key Vault certificate, and a
# fresh process's first signature costs 2 requests (token, sign), no get and no list.
# Uses the kv_registry fixture (fixture-register.sh) and kv-unload-host (first private key of
# every slot, one C_Sign each).
set -euo pipefail
die() { echo "signonly.sh: error: $*" >&2; exit 1; }
[ $# -eq 3 ] || die "usage: $0 KV_DIR HOST MODULE"
KV=$1 HOST=$2 MODULE=$3
[ -f "$KV/registry.db" ] || die "$KV/registry.db missing (kv/register)"
URL=https://127.0.0.1:$(cat "$KV/port")
emu() { curl -sf --noproxy '*' --cacert "$KV/ca.pem" -X "$1" "$URL$2" -H 'Content-Type: application/json' ${3:+-d "$3"}; }
OUT=$(mktemp -d /tmp/kvp11-signonly.XXXXXX)
trap 'emu POST /_emu/policy "{\"clientId\":\"app-nosign\",\"permissions\":[\"get\",\"list\"]}" >/dev/null || true; rm -rf "$OUT"' EXIT
sed -e 's/^client_id = .*/client_id = app-nosign/' \
    -e "s|^client_secret_file = .*|client_secret_file = $KV/app-nosign.secret|" \
    -e 's|^max_retries = .*|&\nresource = https://127.0.0.1|' \
    -e "s|^log_file = .*|log_file = $OUT/kvp11.log|" "$KV/kvp11.conf" >"$OUT/kvp11.conf"
chmod 600 "$OUT/kvp11.conf"
emu POST /_emu/policy '{"clientId":"app-nosign","permissions":["sign","decrypt"]}' >/dev/null
emu POST /_emu/reset '{}' >/dev/null
KVP11_CONF=$OUT/kvp11.conf "$HOST" "$MODULE" "$URL/_emu/health" "$KV/ca.pem" 1 \
  || { cat "$OUT/kvp11.log" >&2; die "signing as a sign-only principal failed"; }
c=$(emu GET /_emu/counters)
echo "emulator counters: $c"
n() { node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{const j=JSON.parse(s);console.log(process.argv[1]==="total"?j.total:(j.counters[process.argv[1]]||0))})' "$1" <<<"$c"; }
# the host's own two health requests are not counted (/_emu/ is the control API)
[ "$(n get)" = 0 ] || die "the module read the key (get) although the registry holds it"
[ "$(n list)" = 0 ] || die "the module listed keys"
[ "$(n token)" = 1 ] && [ "$(n sign)" = 1 ] || die "expected 1 token request and 1 sign"
[ "$(n total)" = 2 ] || die "a fresh process's first signature took $(n total) requests, not 2"
echo "signonly.sh: sign-only principal, first signature in 2 requests: ok"
