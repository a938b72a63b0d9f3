#!/usr/bin/env bash
# kvp11 key create|list|show|delete on an own SoftHSM2 token and, when the kv
# tests' emulator runs, on Key Vault (tests/tool/keylib.sh): usage errors,
# create then list/show, an existing key name or a taken registry name refused
# with nothing changed, delete refused without --yes and while a registered
# certificate points at the key, the HSM PIN given by the tool.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/keylib.sh"

# --- usage errors: no configuration or store needed ---
expect_fail "no store" 2 "exactly one of --vault or --hsm" key create --key x --type rsa --size 2048
expect_fail "two stores" 2 "exactly one of --vault or --hsm" key create --hsm tk --vault emu --key x --type ec --curve p256
expect_fail "no --key" 2 "--key is required" key create --hsm tk --type rsa --size 2048
expect_fail "no --type" 2 "--type rsa or --type ec is required" key create --hsm tk --key x
expect_fail "bad type" 2 "bad --type 'dsa'" key create --hsm tk --key x --type dsa
expect_fail "rsa 1024" 2 "--size 2048, 3072 or 4096" key create --hsm tk --key x --type rsa --size 1024
expect_fail "rsa with curve" 2 "--curve applies to --type ec only" key create --hsm tk --key x --type rsa --size 2048 --curve p256
expect_fail "ec secp256k1" 2 "--curve p256, p384 or p521" key create --hsm tk --key x --type ec --curve p256k
expect_fail "ec decrypt" 2 "an EC key cannot decrypt" key create --hsm tk --key x --type ec --curve p256 --ops sign,decrypt
expect_fail "bad ops" 2 "bad --ops 'wrap'" key create --hsm tk --key x --type ec --curve p256 --ops wrap
expect_fail "no-register with name" 2 "--no-register takes no --name" key create --hsm tk --key x --type ec --curve p256 --no-register --name y
expect_fail "key with slash" 2 "bad --key 'a/b'" key create --hsm tk --key a/b --type ec --curve p256
expect_fail "delete without --yes" 2 "destructive.*--yes" key delete --hsm tk --key x
expect_fail "pin-file on a vault" 2 "--pin-file applies to --hsm only" key list --vault emu --pin-file "$T/user.pin"
expect_fail "option of another command" 2 "option '--pfx' does not apply here" key create --hsm tk --key x --pfx f
expect_fail "unknown subcommand" 2 "unknown command 'frob'" key frob
expect_fail "unknown hsm" 1 "hsm 'nope' is not configured in $CONF" key create --hsm nope --key x --type ec --curve p256
expect_fail "unknown vault" 1 "vault 'nope' is not configured in $CONF" key list --vault nope
expect_ok "help" key --help
grep -q 'key import (--vault V | --hsm H) --key NAME' "$OUT" || fail "key --help: $(cat "$OUT")"
expect_ok "key list --help" key list --help
grep -q -- '--key' "$OUT" && fail "key list --help lists --key: $(cat "$OUT")"
ok "key list --help does not list --key"

TESTED=0
for S in "${STORES[@]}"; do
  supported "$S" || continue
  TESTED=$((TESTED + 1))
  is_kv=0; case "$S" in --vault*) is_kv=1 ;; esac
  # shellcheck disable=SC2086
  set -- $S
  tag=${S:2:1}; KR=krsa$R$tag; KE=kec$R$tag; KF=kfree$R$tag; KN=knew$R$tag

  # --- create, registered as key pairs ---
  expect_ok "$S create rsa" key create "$@" --key "$KR" --type rsa --size 2048
  grep -qx "created key $(ref_of "$S" "$KR")" "$OUT" || fail "create message: $(cat "$OUT")"
  grep -qx 'type: RSA 2048' "$OUT" || fail "create type: $(cat "$OUT")"
  grep -qx "registered: '$KR' in account 'default' (a key pair; no certificate yet)" "$OUT" || fail "create registered: $(cat "$OUT")"
  SPKI_R=$(sed -n 's/^spki: //p' "$OUT")
  [[ $SPKI_R == sha256:* ]] || fail "create spki: $(cat "$OUT")"
  VER_R=$(sed -n 's/^version: //p' "$OUT")
  [ "$is_kv" = 1 ] && { [ ${#VER_R} -ge 8 ] || fail "Key Vault version: '$VER_R'"; }
  expect_ok "$S create ec" key create "$@" --key "$KE" --type ec --curve p384 --ops sign --name "ec name $R$tag" --account other
  grep -qx 'type: EC P-384' "$OUT" || fail "create ec type: $(cat "$OUT")"
  SPKI_E=$(sed -n 's/^spki: //p' "$OUT")
  expect_ok "$S create --json" key create "$@" --key "kj$R$tag" --type ec --curve p256 --no-register --json
  json "j['action'] == 'created' and j['key_ref'] == '$(ref_of "$S" "kj$R$tag")' and j['type'] == 'EC P-256' and j['registered'] is None and j['spki'].startswith('sha256:')"
  expect_ok "$S delete --json" key delete "$@" --key "kj$R$tag" --yes --json
  json "j['action'] == 'deleted' and j['key_ref'] == '$(ref_of "$S" "kj$R$tag")'"

  expect_ok "$S registry row" cert list --json
  # a key-only row: private, no certificate (shown as type "key" by cert list)
  json "[(r['key_ref'], r['type'] in ('key', 'private'), bool(r.get('subject'))) for r in j if r['name'] == '$KR'] == [('$(ref_of "$S" "$KR")', True, False)]"
  expect_ok "$S registry row (other)" cert list --json --account other
  json "[r['key_ref'] for r in j if r['name'] == 'ec name $R$tag'] == ['$(ref_of "$S" "$KE")']"

  # --- show and list ---
  expect_ok "$S show --json" key show "$@" --key "$KR" --json
  json "j['type'] == 'rsa' and j['size'] == 2048 and j['spki'] == '$SPKI_R' and j['enabled'] and 'sign' in j['ops']"
  json "j['certificates'] == ['default/$KR'] and j['key_ref'] == '$(ref_of "$S" "$KR")'"
  [ "$is_kv" = 1 ] && json "j['version'] == '$VER_R' and j['kty'] in ('RSA', 'RSA-HSM')"
  expect_ok "$S show text" key show "$@" --key "$KE"
  grep -qx 'curve: P-384' "$OUT" && grep -qx "certificates: other/ec name $R$tag" "$OUT" && grep -qx 'ops: sign' "$OUT" ||
    fail "show text: $(cat "$OUT")"
  expect_ok "$S show --pem" key show "$@" --key "$KE" --pem
  [ "sha256:$(openssl pkey -pubin -in "$OUT" -outform DER | sha256sum | cut -d' ' -f1)" = "$SPKI_E" ] ||
    fail "show --pem is not the created public key"
  expect_ok "$S list --json" key list "$@" --json
  json "{k['name']: k['certificates'] for k in j if k['name'] in ('$KR', '$KE')} == {'$KR': ['default/$KR'], '$KE': ['other/ec name $R$tag']}"
  json "[(k['type'], k['curve']) for k in j if k['name'] == '$KE'] == [('ec', 'P-384')]"
  expect_ok "$S list" key list "$@"
  grep -Eq "^$KR +RSA[-A-Z]* +2048 +sign,decrypt +yes .* default/$KR\$" "$OUT" || fail "list row: $(cat "$OUT")"
  expect_fail "$S show unknown" 1 "has no key 'nokey$R'" key show "$@" --key "nokey$R"

  # --- an existing key name is refused; nothing changes ---
  [ "$is_kv" = 1 ] && n0=$(emu_count create)
  expect_fail "$S create over an existing key" 1 "has a key named '$KR' already" \
    key create "$@" --key "$KR" --type ec --curve p256 --name "other$R"
  expect_ok "$S existing key unchanged" key show "$@" --key "$KR" --json
  json "j['spki'] == '$SPKI_R' and j['size'] == 2048"
  [ "$is_kv" = 1 ] && { [ "$(emu_count create)" = "$n0" ] || fail "a create request reached the vault"; }

  # --- a taken registry name: the key is not created ---
  expect_fail "$S registry name taken" 1 "account 'default' has a certificate named '$KR' already" \
    key create "$@" --key "$KN" --type ec --curve p256 --name "$KR"
  expect_fail "$S not created" 1 "has no key '$KN'" key show "$@" --key "$KN"
  [ "$is_kv" = 1 ] && { [ "$(emu_count create)" = "$n0" ] || fail "a create request reached the vault"; }

  # --- --no-register ---
  expect_ok "$S create --no-register" key create "$@" --key "$KF" --type ec --curve p521 --no-register
  grep -q '^registered' "$OUT" && fail "--no-register registered: $(cat "$OUT")"
  expect_ok "$S no row" cert list --json
  json "'$KF' not in [r['name'] for r in j]"

  # --- delete ---
  expect_fail "$S delete without --yes" 2 "destructive" key delete "$@" --key "$KR"
  expect_fail "$S delete while registered" 1 "registered certificates point at $(ref_of "$S" "$KR"): default/$KR \(remove them first" \
    key delete "$@" --key "$KR" --yes
  expect_ok "$S still there" key show "$@" --key "$KR"
  expect_fail "$S cert remove of a private certificate needs --yes" 2 \
    "'$KR' is a private certificate: .*its key .* stays in its store.*confirm with --yes" cert remove "$KR"
  expect_ok "$S cert remove" cert remove "$KR" --yes
  expect_ok "$S delete" key delete "$@" --key "$KR" --yes
  grep -q "^deleted key $(ref_of "$S" "$KR")" "$OUT" || fail "delete message: $(cat "$OUT")"
  expect_fail "$S deleted" 1 "has no key '$KR'" key show "$@" --key "$KR"
  expect_fail "$S delete again" 1 "has no key '$KR'" key delete "$@" --key "$KR" --yes
  expect_ok "$S delete unregistered" key delete "$@" --key "$KF" --yes
  expect_ok "$S list after" key list "$@" --json
  json "'$KR' not in [k['name'] for k in j] and '$KE' in [k['name'] for k in j]"
done

# --- an HSM without pin_file: the tool gives the PIN ---
if KVP11_PIN=1234 supported "--hsm tknopin"; then
  expect_fail "no PIN" 1 "hsm 'tknopin' has no pin_file or pin_env: give the user PIN with --pin-file F or KVP11_PIN" \
    key list --hsm tknopin
  expect_ok "PIN from --pin-file" key create --hsm tknopin --pin-file "$T/user.pin" --key "kpin$R" --type ec --curve p256 --no-register
  KVP11_PIN=1234 expect_ok "PIN from KVP11_PIN" key show --hsm tknopin --key "kpin$R" --json
  json "j['type'] == 'ec'"
  KVP11_PIN=9999 expect_fail "wrong PIN" 1 "hsm 'tknopin': login failed" key list --hsm tknopin
  chmod 644 "$T/user.pin"
  expect_fail "PIN file readable by others" 1 "user.pin" key list --hsm tknopin --pin-file "$T/user.pin"
  chmod 600 "$T/user.pin"
fi
[ "$TESTED" -gt 0 ] || skip "no key store supports provisioning yet"
echo "all key tests passed ($TESTED key stores)"
