#!/usr/bin/env bash
# No imported key bytes survive in the kvp11 process: `kvp11 key import` of an
# RSA-2048 PFX runs under gdb, on the own SoftHSM2 token and (when the kv tests'
# emulator runs) on Key Vault; a breakpoint on _exit (after main returned and
# OpenSSL cleaned up, just before the process ends) takes a core, and the core
# is searched for the key's private parts: d, p and q as big-endian bytes (DER,
# PKCS#11 templates), as little-endian bytes (BIGNUM limbs on this machine),
# as base64url (the JWK sent to Key Vault), and the private key's PEM lines.
# Zero hits are required. So that the search cannot pass vacuously, a core taken
# while the key is live (breakpoint on kvp_pubkey_equal, called by import right
# after the key is decoded) must show hits. With KVP11_TEST_NO_WIPE=1 (tool/wipe.c
# does not install its wiping allocator) the hits at _exit are reported, for
# information. Skipped (77) without gdb or when ptrace is not allowed.
. "$(dirname "$0")/lib.sh"
command -v gdb >/dev/null 2>&1 || skip "gdb not installed"
. "$(dirname "$0")/keylib.sh"
KEYLIB_CLEANUP='rm -f "$T"/core.*' # the dumps hold the test key: never leave them behind
gdb -nx -batch -q -ex run --args /bin/true >"$T/gdb-probe.log" 2>&1 ||
  skip "gdb cannot run a program here (ptrace not permitted?): $(tail -1 "$T/gdb-probe.log")"
grep -qi 'ptrace\|not permitted\|cannot' "$T/gdb-probe.log" && skip "gdb: $(grep -i -m1 'ptrace\|not permitted\|cannot' "$T/gdb-probe.log")"

umask 077
printf 'memscan-pass\n' >"$T/pass"
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$T/k.key" 2>/dev/null || fail "key"
openssl req -new -x509 -key "$T/k.key" -subj "/CN=memscan/O=kvp11 key test" -days 30 -out "$T/k.pem" 2>/dev/null ||
  fail "certificate"
openssl pkcs12 -export -inkey "$T/k.key" -in "$T/k.pem" -passout "file:$T/pass" -out "$T/k.pfx" 2>/dev/null || fail "pkcs12"
openssl pkey -in "$T/k.key" -text -noout >"$T/k.txt" 2>/dev/null || fail "openssl pkey -text"

# Needles (hex, one "NAME HEX" a line; never printed): d, p, q in each form; PEM lines 8.. of the
# key; the PFX password as given and as PKCS#12's BMPString.
python3 - "$T/k.txt" "$T/k.key" >"$T/needles" <<'PY' || fail "needles"
import base64, re, sys
txt = open(sys.argv[1]).read()
def field(name):
    m = re.search(r'^%s:\s*\n((?:\s+[0-9a-f:]+\n)+)' % name, txt, re.M)
    return bytes.fromhex(re.sub(r'[\s:]', '', m.group(1))).lstrip(b'\0')
for n in ('privateExponent', 'prime1', 'prime2'):
    v = field(n)
    short = {'privateExponent': 'd', 'prime1': 'p', 'prime2': 'q'}[n]
    print('%s-be %s' % (short, v.hex()))
    print('%s-le %s' % (short, v[::-1].hex()))
    print('%s-b64u %s' % (short, base64.urlsafe_b64encode(v).rstrip(b'=').hex()))
pw = b'memscan-pass'
print('pass %s' % pw.hex())                                        # as given
print('pass-bmp %s' % pw.decode().encode('utf-16-be').hex())      # PKCS#12 BMPString
lines = [l for l in open(sys.argv[2]).read().splitlines() if not l.startswith('-----')]
for i, l in enumerate(lines[8:-1]):
    print('pem%02d %s' % (i + 8, l.encode().hex()))
PY
umask 022

# scan CORE: "NAME COUNT" for every needle with hits; exit 0 when none.
scan() {
  python3 - "$T/needles" "$1" <<'PY'
import mmap, sys
needles = [l.split() for l in open(sys.argv[1]) if l.strip()]
with open(sys.argv[2], 'rb') as f:
    m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    hits = 0
    for name, hx in needles:
        b = bytes.fromhex(hx); n = 0; i = m.find(b)
        while i >= 0:
            n += 1; i = m.find(b, i + 1)
        if n:
            print('%s %d' % (name, n)); hits += n
sys.exit(1 if hits else 0)
PY
}

# core_at BREAK CORE ARGS...: run kvp11 ARGS under gdb, take CORE at the first stop on BREAK.
core_at() {
  local brk=$1 core=$2 args='' a; shift 2
  for a in -c "$CONF" "$@"; do args+=" '$a'"; done
  rm -f "$core"
  gdb -nx -batch -q -ex 'set pagination off' -ex 'set confirm off' -ex 'set breakpoint pending on' \
    -ex "break $brk" -ex "run $args >'$T/gdb.out' 2>'$T/gdb.err'" -ex "generate-core-file $core" -ex kill \
    --args "$KVP11_TOOL" >"$T/gdb.log" 2>&1
  [ -s "$core" ] || { cat "$T/gdb.log" >&2; fail "gdb: no core at $brk"; }
}

# core_each BREAK PREFIX MAX ARGS...: run kvp11 ARGS under gdb, a core PREFIX.N at each of
# the first MAX stops on BREAK; prints the number of cores.
core_each() {
  local brk=$1 prefix=$2 max=$3 args='' a; shift 3
  for a in -c "$CONF" "$@"; do args+=" '$a'"; done
  rm -f "$prefix".*
  cat >"$T/gdb.cmds" <<GDB
set pagination off
set confirm off
set breakpoint pending on
set \$n = 0
break $brk
commands
silent
set \$n = \$n + 1
if \$n <= $max
eval "generate-core-file $prefix.%d", \$n
end
continue
end
run $args >'$T/gdb.out' 2>'$T/gdb.err'
GDB
  gdb -nx -batch -q -x "$T/gdb.cmds" --args "$KVP11_TOOL" >"$T/gdb.log" 2>&1
  ls "$prefix".* 2>/dev/null | wc -l
}
# found_in PREFIX NEEDLE: NEEDLE (a needle name) has hits in one of the cores PREFIX.*
found_in() {
  local c
  for c in "$1".*; do
    [ -f "$c" ] || continue
    scan "$c" >"$T/hits.way"
    grep -q "^$2 " "$T/hits.way" && return 0
  done
  return 1
}

# Before the store: the decoded key and the password are found (the scan works). Both
# points come before any store is asked, so the SoftHSM2 token serves for both stores.

core_at kvp_pubkey_equal "$T/core.live" key import --hsm tk --key "mlive${R}" --pfx "$T/k.pfx" --pass-file "$T/pass"
scan "$T/core.live" >"$T/hits.live" && fail "the live core has no trace of the key: the scan cannot see it"
ok "the scan finds the live key ($(tr '\n' ' ' <"$T/hits.live"))"
rm -f "$T/core.live"
core_at PKCS12_parse "$T/core.pass" key import --hsm tk --key "mpass${R}" --pfx "$T/k.pfx" --pass-file "$T/pass"
scan "$T/core.pass" >"$T/hits.pass"
grep -q '^pass ' "$T/hits.pass" || fail "the core at PKCS12_parse has no trace of the password: the scan cannot see it"
ok "the scan finds the password before PKCS12_parse"
rm -f "$T/core.pass"
# The wiping allocator is installed (OpenSSL frees through tool/wipe.c), and not with
# KVP11_TEST_NO_WIPE=1.
gdb -nx -batch -q -ex 'set breakpoint pending on' -ex 'break wipe_free' -ex 'run -c '"'$CONF'"' key list --hsm tk >/dev/null' \
  -ex 'bt 1' -ex kill --args "$KVP11_TOOL" >"$T/gdb.log" 2>&1
grep -q 'in wipe_free\|wipe_free (' "$T/gdb.log" || { cat "$T/gdb.log" >&2; fail "OpenSSL does not free through tool/wipe.c"; }
KVP11_TEST_NO_WIPE=1 gdb -nx -batch -q -ex 'set breakpoint pending on' -ex 'break wipe_free' \
  -ex 'run -c '"'$CONF'"' key list --hsm tk >/dev/null' -ex 'bt 1' -ex kill --args "$KVP11_TOOL" >"$T/gdb.log" 2>&1
grep -q 'in wipe_free\|wipe_free (' "$T/gdb.log" && fail "KVP11_TEST_NO_WIPE=1 did not switch tool/wipe.c off"
ok "OpenSSL frees through tool/wipe.c (and KVP11_TEST_NO_WIPE=1 switches it off)"

# forget STORE-OPTS KEY: remove an imported key and its entry, so that the same
# key can be imported again (a key already in the store is refused).
forget() {
  local store=$1 key=$2
  "$KVP11_TOOL" -c "$CONF" cert remove "$key" --yes >/dev/null 2>&1 || true
  # shellcheck disable=SC2086
  "$KVP11_TOOL" -c "$CONF" key delete $store --key "$key" --yes >/dev/null 2>&1 || true
}

TESTED=0
for S in "${STORES[@]}"; do
  supported "$S" || continue
  TESTED=$((TESTED + 1))
  tag=${S:2:1}
  # shellcheck disable=SC2086
  set -- $S
  # the key on its way into the store is found: HSM templates (big-endian), Key Vault JWK (base64url)
  if [ "${S:2:1}" = h ]; then brk=C_CreateObject need=d-be; else brk=curl_easy_perform need=d-b64u; fi
  n=$(core_each "$brk" "$T/core.way" 8 key import "$@" --key "mway$R$tag" --pfx "$T/k.pfx" --pass-file "$T/pass")
  [ "$n" -gt 0 ] || { cat "$T/gdb.log" >&2; fail "$S: gdb took no core at $brk"; }
  found_in "$T/core.way" "$need" || fail "$S: no $need in the $n cores taken at $brk: the scan cannot see the key"
  ok "$S: the scan finds the key as $need at $brk ($n cores)"
  rm -f "$T"/core.way.*
  forget "$S" "mway$R$tag"

  # after a complete import: nothing
  core_at _exit "$T/core.exit" key import "$@" --key "mscan$R$tag" --pfx "$T/k.pfx" --pass-file "$T/pass"
  grep -q "^imported key $(ref_of "$S" "mscan$R$tag")" "$T/gdb.out" || { cat "$T/gdb.err" >&2; fail "$S: import under gdb failed"; }
  if scan "$T/core.exit" >"$T/hits.exit"; then
    ok "$S: no byte of the imported key in the process at exit"
  else
    fail "$S: the imported key's bytes are in the core at exit: $(tr '\n' ' ' <"$T/hits.exit")"
  fi
  rm -f "$T/core.exit"
  forget "$S" "mscan$R$tag"

  # a PEM key file (not encrypted): its text goes through OpenSSL's PEM and DER decoders
  core_at _exit "$T/core.exit" key import "$@" --key "mpem$R$tag" --key-file "$T/k.key" --cert "$T/k.pem" --name "mpem$R$tag"
  grep -q "^imported key $(ref_of "$S" "mpem$R$tag")" "$T/gdb.out" || { cat "$T/gdb.err" >&2; fail "$S: PEM import under gdb failed"; }
  if scan "$T/core.exit" >"$T/hits.exit"; then
    ok "$S: no byte of the imported PEM key in the process at exit"
  else
    fail "$S: the imported PEM key's bytes are in the core at exit: $(tr '\n' ' ' <"$T/hits.exit")"
  fi
  rm -f "$T/core.exit"
  forget "$S" "mpem$R$tag"

  # without the wiping allocator (information only)
  KVP11_TEST_NO_WIPE=1 core_at _exit "$T/core.nowipe" key import "$@" --key "mnowipe$R$tag" --pfx "$T/k.pfx" --pass-file "$T/pass"
  scan "$T/core.nowipe" >"$T/hits.nowipe" && echo "info: $S: without tool/wipe.c: no hits" ||
    echo "info: $S: without tool/wipe.c the core at exit holds: $(tr '\n' ' ' <"$T/hits.nowipe")"
  rm -f "$T/core.nowipe"
  forget "$S" "mnowipe$R$tag"
done
[ "$TESTED" -gt 0 ] || skip "no key store supports importing yet"

# what the command prints, and its log, at the highest log level: nothing of the key either
LOGF=$(sed -n 's/^log_file *= *//p' "$CONF" | head -1)
for S in "${STORES[@]}"; do
  supported "$S" || continue
  tag=${S:2:1}
  # shellcheck disable=SC2086
  set -- $S
  KVP11_DEBUG=debug "$KVP11_TOOL" -v -c "$CONF" key import "$@" --key "mlog$R$tag" --pfx "$T/k.pfx" \
    --pass-file "$T/pass" >"$T/dbg.out" 2>"$T/dbg.err" || { cat "$T/dbg.err" >&2; fail "$S: debug import failed"; }
  grep -q "DEBUG" "$T/dbg.err" ${LOGF:+"$LOGF"} || fail "$S: no debug line: the log level was not raised"
  cat "$T/dbg.out" "$T/dbg.err" ${LOGF:+"$LOGF"} >"$T/dbg.all" 2>/dev/null
  if scan "$T/dbg.all" >"$T/hits.log"; then
    ok "$S: no byte of the key or the password in stdout, stderr and the log at debug level"
  else
    fail "$S: key material in the output or log: $(tr '\n' ' ' <"$T/hits.log")"
  fi
done
echo "memory scan passed ($TESTED key stores)"
