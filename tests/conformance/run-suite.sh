#!/bin/sh
# Run kvp11-conformance with the environment made by tests/fixtures/mkenv.sh.
# usage: run-suite.sh [--valgrind] ENV_SH SUITE_BINARY [SUITE ...]
# --valgrind: run under valgrind (exit 77 = skipped when valgrind is missing); suppressions from
# $KVP11_VALGRIND_SUPP. Other settings (KVP11_MODULE, KVP11_TEST_*) come from the caller.
set -eu
valgrind=0
if [ "${1:-}" = --valgrind ]; then
  valgrind=1
  shift
fi
if [ $# -lt 2 ]; then
  echo "usage: $0 [--valgrind] ENV_SH SUITE_BINARY [SUITE ...]" >&2
  exit 2
fi
envsh=$1
suite=$2
shift 2
if [ ! -r "$envsh" ]; then
  echo "run-suite.sh: $envsh missing: did the fixture (tests/fixtures/mkenv.sh) run?" >&2
  exit 1
fi
# shellcheck disable=SC1090
. "$envsh"
if [ "$valgrind" = 1 ]; then
  if ! command -v valgrind >/dev/null 2>&1; then
    echo "run-suite.sh: valgrind not installed: skipped" >&2
    exit 77
  fi
  # Forked children inherit the parent's state and cannot free it: their reports are silenced
  # (the fork test judges the child by what it reports through a pipe).
  exec valgrind --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite \
    --show-leak-kinds=definite --child-silent-after-fork=yes --num-callers=40 \
    ${KVP11_VALGRIND_SUPP:+--suppressions="$KVP11_VALGRIND_SUPP"} "$suite" "$@"
fi
exec "$suite" "$@"
