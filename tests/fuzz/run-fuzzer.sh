#!/bin/sh
# Run one fuzz target over its seeds (CTest tests fuzz/<name> and fuzz-replay/<name>).
# usage: run-fuzzer.sh fuzz|replay BINARY WORKDIR SECONDS SEED_DIR...
#   fuzz    libFuzzer for SECONDS; new inputs go to WORKDIR/corpus, crashes to
#           WORKDIR/artifacts/ (the test fails and prints the reproducer path)
#   replay  every seed once through the target (builds without libFuzzer)
# A SEED_DIR "shared:SUB" is SUB under $KVP11_SHARED_DIR (else
# $KVP11_SHARED_DIR_DEFAULT); seed directories that do not exist are left out.
# Extra libFuzzer flags: $KVP11_FUZZ_FLAGS.
set -eu
mode=$1 bin=$2 work=$3 secs=$4
shift 4
dirs=""
for d in "$@"; do
  case $d in
    shared:*)
      base=${KVP11_SHARED_DIR:-${KVP11_SHARED_DIR_DEFAULT:-}}
      d=$base/${d#shared:} ;;
  esac
  if [ -d "$d" ]; then
    dirs="$dirs $d"
  fi
done
mkdir -p "$work"
# Stacks for UBSan findings; every finding stops the run.
UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export UBSAN_OPTIONS
case $mode in
  replay)
    # shellcheck disable=SC2086
    exec "$bin" $dirs ;;
  fuzz)
    mkdir -p "$work/corpus" "$work/artifacts"
    echo "run-fuzzer.sh: $bin for ${secs}s; corpus $work/corpus; seeds:$dirs"
    # shellcheck disable=SC2086
    if "$bin" -max_total_time="$secs" -timeout=25 -print_final_stats=1 \
        -artifact_prefix="$work/artifacts/" ${KVP11_FUZZ_FLAGS:-} "$work/corpus" $dirs; then
      exit 0
    fi
    echo "run-fuzzer.sh: FINDING: reproducer(s) in $work/artifacts:" >&2
    ls -l "$work/artifacts" >&2
    exit 1 ;;
  *)
    echo "usage: $0 fuzz|replay BINARY WORKDIR SECONDS SEED_DIR..." >&2
    exit 2 ;;
esac
