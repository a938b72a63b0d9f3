#!/usr/bin/env bash
# kvp11 smime on a 50 MB message (the streaming paths): round trips with
# `openssl cms` in both directions (text and --binary, opaque and detached,
# CBC and GCM, RSA and EC signers) comparing bytes, with the peak RSS of every
# kvp11 command under 64 MiB (/usr/bin/time %M: a bound on behaviour, memory
# independent of the message size, not a timing). Then the failures of a
# stream: a tampered message (exit 1, one line, no --out file left), a
# truncated one, one ending in the middle of a base64 line, an empty one.
# The SoftHSM2 fixture as in test_smime.sh; our keys through libkvp11.so.
. "$(dirname "$0")/lib.sh"

[ -x /usr/bin/time ] || skip "/usr/bin/time not found"
. "$(dirname "$0")/smime_env.sh"
sed -i 's/^log_level = .*/log_level = info/' "$CONF"
LIMIT_KB=$((64 * 1024))

# 50 MB of text (base64 lines, LF) and 50 MB of bytes
head -c 37500000 /dev/urandom | base64 >"$T/msg.txt"
sed 's/$/\r/' "$T/msg.txt" >"$T/msg.crlf"
head -c 50000000 /dev/urandom >"$T/msg.bin"

same() { cmp -s "$1" "$2" || fail "$3: the content differs"; }

# big WHAT ARGS...: run kvp11 (output in $OUT, unless ARGS has --out), exit 0,
# stderr empty, peak RSS under LIMIT_KB.
big() {
  local what=$1 kb; shift
  RC=0
  /usr/bin/time -f '%M' -o "$T/rss" "$KVP11_TOOL" -c "$CONF" "$@" >"$OUT" 2>"$ERR" || RC=$?
  [ "$RC" -eq 0 ] || { cat "$ERR" >&2; fail "$what: exit $RC: $*"; }
  [ ! -s "$ERR" ] || { cat "$ERR" >&2; fail "$what: unexpected stderr"; }
  kb=$(tail -1 "$T/rss")
  [ "$kb" -lt "$LIMIT_KB" ] || fail "$what: peak RSS $kb KB (limit $LIMIT_KB KB)"
  ok "$what (peak RSS $((kb / 1024)) MiB)"
}

# ossl_open FILE SIGNERCERT OUT [-binary]: openssl decrypts with the partner's key and verifies.
ossl_open() {
  openssl cms -decrypt ${4:-} -inkey "$PK" -in "$1" 2>"$T/ossl.err" |
    openssl cms -verify ${4:-} -CAfile "$2" -purpose any -out "$3" 2>>"$T/ossl.err" ||
    { cat "$T/ossl.err" >&2; fail "openssl cannot open $1"; }
}

# --- kvp11 sends, openssl receives ---
big "sign, text, opaque, RSA" smime sign --cert rsa2048 --in "$T/msg.txt" --out "$T/s1"
openssl cms -verify -CAfile "$C/rsa2048.pem" -purpose any -in "$T/s1" -out "$T/v" 2>"$T/ossl.err" ||
  { cat "$T/ossl.err" >&2; fail "openssl verify s1"; }
same "$T/v" "$T/msg.crlf" "sign text"
big "sign --binary --detached, ECDSA P-256" smime sign --cert p256 --binary --detached --in "$T/msg.bin" --out "$T/s2"
openssl cms -verify -binary -CAfile "$C/p256.pem" -purpose any -in "$T/s2" -out "$T/v" 2>"$T/ossl.err" ||
  { cat "$T/ossl.err" >&2; fail "openssl verify s2"; }
same "$T/v" "$T/msg.bin" "sign binary detached"
big "encrypt, text, GCM, stdin to stdout" smime encrypt --to partner --cipher aes-256-gcm <"$T/msg.txt"
openssl cms -decrypt -inkey "$PK" -in "$OUT" -out "$T/v" 2>"$T/ossl.err" || { cat "$T/ossl.err" >&2; fail "openssl decrypt"; }
same "$T/v" "$T/msg.crlf" "encrypt gcm"
big "encrypt --binary, CBC, DER" smime encrypt --to partner --binary --outform der --in "$T/msg.bin" --out "$T/e2"
openssl cms -decrypt -binary -inform DER -inkey "$PK" -in "$T/e2" -out "$T/v" 2>"$T/ossl.err" ||
  { cat "$T/ossl.err" >&2; fail "openssl decrypt der"; }
same "$T/v" "$T/msg.bin" "encrypt binary der"
big "seal --binary --detached, RSA, CBC" smime seal --cert rsa2048 --to partner --binary --detached \
  --in "$T/msg.bin" --out "$T/z1"
ossl_open "$T/z1" "$C/rsa2048.pem" "$T/v" -binary
same "$T/v" "$T/msg.bin" "seal binary detached"
big "seal, text, opaque, P-256, GCM, OAEP" smime seal --cert p256 --to partner --cipher aes-256-gcm --oaep \
  --in "$T/msg.txt" --out "$T/z2"
ossl_open "$T/z2" "$C/p256.pem" "$T/v"
same "$T/v" "$T/msg.crlf" "seal text gcm"
rm -f "$T/s1" "$T/s2" "$T/e2" "$T/z1" "$T/z2"

# --- openssl sends, kvp11 receives ---
openssl cms -sign -stream -signer "$PC" -inkey "$PK" -nodetach -in "$T/msg.txt" |
  openssl cms -encrypt -stream -aes-256-cbc -out "$T/o1" "$C/rsa2048.pem" || fail "openssl seal o1"
big "open, text, opaque, CBC" smime open --cert rsa2048 --from partner --in "$T/o1" --out "$T/v"
same "$T/v" "$T/msg.crlf" "open text"
openssl cms -sign -stream -binary -signer "$PC" -inkey "$PK" -in "$T/msg.bin" |
  openssl cms -encrypt -stream -binary -aes-256-gcm -out "$T/o2" "$C/rsa3072.pem" || fail "openssl seal o2"
big "open --binary, multipart/signed, GCM, recipient found" smime open --binary --in "$T/o2" --out "$T/v"
same "$T/v" "$T/msg.bin" "open binary detached gcm"
openssl cms -encrypt -stream -binary -aes-256-cbc -outform DER -in "$T/msg.bin" -out "$T/o3" "$C/rsa2048.pem" ||
  fail "openssl encrypt o3"
big "decrypt DER, stdin to stdout" smime decrypt --cert rsa2048 <"$T/o3"
same "$OUT" "$T/msg.bin" "decrypt der"
openssl cms -sign -stream -binary -signer "$PC" -inkey "$PK" -in "$T/msg.bin" -out "$T/o4" || fail "openssl sign o4"
big "verify --binary, multipart/signed" smime verify --binary --in "$T/o4" --out "$T/v"
same "$T/v" "$T/msg.bin" "verify multipart"
openssl cms -sign -stream -nodetach -signer "$PC" -inkey "$PK" -md sha512 -outform PEM -in "$T/msg.txt" -out "$T/o5" ||
  fail "openssl sign o5"
big "verify, opaque PEM, SHA-512" smime verify --cert partner --in "$T/o5" --out "$T/v"
same "$T/v" "$T/msg.crlf" "verify pem"
openssl cms -sign -binary -signer "$PC" -inkey "$PK" -outform DER -in "$T/msg.bin" -out "$T/o6" || fail "openssl sign o6"
big "verify DER --content" smime verify --binary --inform der --content "$T/msg.bin" --in "$T/o6" --out "$T/v"
same "$T/v" "$T/msg.bin" "verify --content"
# an EC partner (software P-256 key, registered public certificate) signs
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$T/ecp.key" 2>/dev/null || fail "ec key"
openssl req -new -x509 -key "$T/ecp.key" -subj "/CN=ec partner" -days 30 -out "$T/ecp.pem" 2>/dev/null || fail "ec cert"
expect_ok "register an EC partner" cert add --name ecpartner --type public --cert "$T/ecp.pem"
openssl cms -sign -stream -signer "$T/ecp.pem" -inkey "$T/ecp.key" -md sha384 -in "$T/msg.txt" -out "$T/o7" ||
  fail "openssl sign o7"
big "verify, multipart/signed text, ECDSA signer" smime verify --cert ecpartner --in "$T/o7" --out "$T/v"
same "$T/v" "$T/msg.crlf" "verify ecdsa"
rm -f "$T/o3" "$T/o4" "$T/o5" "$T/o6" "$T/o7" "$T/v"

# --- failures: exit 1, one line, nothing written with --out ---
# fail_out WHAT REGEX ARGS...: with --out $T/dest: no dest, no temporary file beside it.
fail_out() {
  local what=$1 re=$2; shift 2
  rm -f "$T/dest"
  kvp "$@" --out "$T/dest"
  [ "$RC" -eq 1 ] || { cat "$ERR" >&2; fail "$what: exit $RC (want 1)"; }
  one_line "$what"
  grep -Eq -- "$re" "$ERR" || { cat "$ERR" >&2; fail "$what: stderr does not match '$re'"; }
  [ ! -e "$T/dest" ] || fail "$what: $T/dest was left behind"
  ls -A "$T" | grep -q '^\.dest\.' && fail "$what: a temporary file was left behind"
  ok "$what ($(cat "$ERR"))"
}
# the content changed after signing (a detached signature): the digest differs at the end
sed '1000s/^./#/' "$T/msg.txt" >"$T/msg.tampered"
openssl cms -sign -stream -signer "$PC" -inkey "$PK" -in "$T/msg.txt" >"$T/signed.smime" || fail "openssl sign"
python3 - "$T/signed.smime" "$T/msg.txt" <<'PY' || fail "tamper the signed content"
import sys
p = sys.argv[1]
d = open(p, 'rb').read()
line = open(sys.argv[2], 'rb').read().split(b'\n')[999]
i = d.find(line)
assert i > 0
d = d[:i] + (b'#' if line[:1] != b'#' else b'$') + d[i + 1:]
open(p, 'wb').write(d)
PY
openssl cms -encrypt -stream -aes-256-cbc -in "$T/signed.smime" -out "$T/tampered1" "$C/rsa2048.pem" || fail "openssl encrypt"
fail_out "open: tampered 50 MB (signature)" "the signature does not verify" smime open --cert rsa2048 --in "$T/tampered1"
# a changed ciphertext, GCM: the tag fails at the end
python3 - "$T/o2" "$T/tampered2" <<'PY' || fail "tamper o2"
import sys
d = bytearray(open(sys.argv[1], 'rb').read())
i = len(d) // 2
while d[i] in b'\r\n':
    i += 1
d[i] = ord('A') if d[i] != ord('A') else ord('B')
open(sys.argv[2], 'wb').write(d)
PY
fail_out "open: tampered 50 MB (GCM ciphertext)" "does not decrypt or authenticate" \
  smime open --binary --cert rsa3072 --in "$T/tampered2"
fail_out "decrypt: tampered 50 MB (GCM ciphertext)" "does not decrypt or authenticate" \
  smime decrypt --cert rsa3072 --in "$T/tampered2"
# the same to a stdout that is a file: truncated back, nothing left
kvp smime open --binary --cert rsa3072 --in "$T/tampered2"
[ "$RC" -eq 1 ] && [ ! -s "$OUT" ] || fail "open to a stdout file: exit $RC, $(stat -c %s "$OUT") bytes left"
ok "open: a failed open leaves a stdout file empty"

# truncated: half of the message; ending in the middle of a base64 line; empty
SIZE=$(stat -c %s "$T/o1")
head -c $((SIZE / 2)) "$T/o1" >"$T/half"
head -c $((SIZE / 2 - 40)) "$T/o1" >"$T/midline" # not at a line end (lines are 65 bytes)
tail -c 1 "$T/midline" | grep -q '[A-Za-z0-9+/]' || fail "the cut is not inside a base64 line"
fail_out "open: truncated 50 MB" "stdin: the message is truncated|ends in the middle" \
  smime open --cert rsa2048 <"$T/half"
fail_out "decrypt: truncated" "$T/half: the message is truncated|ends in the middle" smime decrypt --cert rsa2048 --in "$T/half"
fail_out "open: ends in the middle of a base64 line" "truncated|ends in the middle of a 4-character group" \
  smime open --cert rsa2048 --in "$T/midline"
head -c $((SIZE / 2 - 41)) "$T/o1" >"$T/midline2"
fail_out "decrypt: ends in the middle of a base64 line (other cut)" "truncated|ends in the middle" \
  smime decrypt --in "$T/midline2"
for c in "open --cert rsa2048" "decrypt" "verify"; do
  # shellcheck disable=SC2086
  fail_out "$c: empty input" "stdin is empty" smime $c </dev/null
done
head -c $(( $(stat -c %s "$T/o2") / 3 )) "$T/o2" >"$T/o2.cut"
fail_out "open --binary: truncated GCM" "truncated|ends in the middle" smime open --binary --cert rsa3072 --in "$T/o2.cut"
openssl cms -sign -stream -binary -signer "$PC" -inkey "$PK" -in "$T/msg.bin" -out "$T/o4" || fail "openssl sign o4"
head -c $(( $(stat -c %s "$T/o4") - 300 )) "$T/o4" >"$T/o4.cut"
fail_out "verify: multipart/signed cut inside its signature" "truncated|ends in the middle|the signature" \
  smime verify --binary --in "$T/o4.cut"
head -c 30000000 "$T/o4" >"$T/o4.cut"
fail_out "verify: multipart/signed cut inside its content" "ends inside its content" smime verify --binary --in "$T/o4.cut"
fail_out "sign: unknown certificate (nothing written)" "no certificate named 'nobody'" \
  smime sign --cert nobody --in "$T/msg.txt"
fail_out "--in missing" "cannot open $T/none" smime encrypt --to partner --in "$T/none"
echo "all large smime tests passed"
