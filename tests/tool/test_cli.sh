#!/usr/bin/env bash
# kvp11 command line: version, help, and every usage error (exit 2, one line,
# registry unchanged). Needs no HSM.
. "$(dirname "$0")/lib.sh"

write_conf '[account default]'
mkcert pub

# version and help go to stdout, exit 0
expect_ok "--version" --version
grep -Eq '^kvp11 [0-9]+\.[0-9]+' "$OUT" || fail "--version output: $(cat "$OUT")"
for h in --help -h help; do
  expect_ok "$h" $h
  grep -q 'cert add --name NAME --type public|private --cert FILE' "$OUT" || fail "$h lacks cert add"
  grep -q 'cert remove NAME' "$OUT" || fail "$h lacks cert remove"
done
for h in "cert --help" "cert help" "cert -h"; do
  expect_ok "$h" $h
  for c in add list show remove; do grep -q "cert $c" "$OUT" || fail "$h lacks cert $c"; done
done
for c in add list show remove; do
  expect_ok "cert $c --help" cert $c --help
  grep -q "^usage: kvp11 \[-c FILE\] cert $c" "$OUT" || fail "cert $c --help: $(cat "$OUT")"
done

# Usage errors: exit 2, one line, nothing changed.
P=(--name p --type public --cert "$T/pub.pem")
expect_fail "no command" 2 'no command' 
expect_fail "unknown command" 2 "unknown command 'frob'" frob
expect_fail "unknown global option" 2 "unknown option '--frob'" --frob cert list
expect_fail "-c without a file" 2 "option '-c' needs an argument" -c
expect_fail "no cert command" 2 'no cert command' cert
expect_fail "unknown cert command" 2 "kvp11: cert: unknown command 'frob'" cert frob
expect_fail "unknown cert option" 2 "kvp11: cert list: unknown option '--frob'" cert list --frob
expect_fail "option missing its value" 2 "option '--name' needs an argument" cert add --name
expect_fail "option not for this command" 2 "option '--pem' does not apply" cert add --pem "${P[@]}"
expect_fail "option given twice" 2 "option '--name' given twice" cert add "${P[@]}" --name q
expect_fail "add without --name" 2 'are required' cert add --type public --cert "$T/pub.pem"
expect_fail "add without --type" 2 'are required' cert add --name p --cert "$T/pub.pem"
expect_fail "add without --cert" 2 'are required' cert add --name p --type public
expect_fail "add with an operand" 2 "unexpected argument 'extra'" cert add "${P[@]}" extra
expect_fail "bad --type" 2 "bad --type 'secret'" cert add --name p --type secret --cert "$T/pub.pem"
expect_fail "empty --name" 2 "bad --name" cert add --name "" --type public --cert "$T/pub.pem"
expect_fail "control character in --name" 2 "bad --name" cert add --name "$(printf 'a\tb')" --type public --cert "$T/pub.pem"
expect_fail "public with --key" 2 'public certificate takes no' cert add "${P[@]}" --key k
expect_fail "public with --hsm" 2 'public certificate takes no' cert add "${P[@]}" --hsm h
expect_fail "public with --vault" 2 'public certificate takes no' cert add "${P[@]}" --vault v
expect_fail "private without a store" 2 'exactly one of --hsm or --vault' \
  cert add --name p --type private --cert "$T/pub.pem" --key k
expect_fail "private without --key" 2 'exactly one of --hsm or --vault' \
  cert add --name p --type private --cert "$T/pub.pem" --hsm h
expect_fail "private with --hsm and --vault" 2 'exactly one of --hsm or --vault' \
  cert add --name p --type private --cert "$T/pub.pem" --hsm h --vault v --key k
expect_fail "show without NAME" 2 'NAME is missing' cert show
expect_fail "show with two names" 2 "unexpected argument 'b'" cert show a b
expect_fail "show --json --pem" 2 'exclude each other' cert show a --json --pem
expect_fail "remove without NAME" 2 'NAME is missing' cert remove
expect_fail "list with an operand" 2 "unexpected argument 'x'" cert list x

# Usage errors win over a bad configuration: no file is read.
kvp -c /nonexistent/kvp11.conf cert add "${P[@]}" --key k
[ "$RC" -eq 2 ] || fail "usage error with a missing config: exit $RC"
echo "all cli tests passed"
