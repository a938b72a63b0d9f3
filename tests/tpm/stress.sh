#!/usr/bin/env bash
# tests/tpm/stress.sh STRESS_BINARY: 8 threads through libkvp11.so on the TPM fixture, each
# iteration: open a session, sign with rsa2048 and p256 (every signature verified with OpenSSL),
# decrypt with rsa2048 (plaintext compared), find the certificates; meanwhile the tool adds and
# removes a certificate. Fails on any error (tests/stress/stress_threads.c).
. "$(dirname "$0")/common.sh"
[ $# -eq 1 ] || { echo "usage: $0 kvp11-stress-threads" >&2; exit 2; }
export KVP11_STRESS_TOKEN="kvp11 default" KVP11_STRESS_KEYS="rsa2048 p256" \
  KVP11_STRESS_THREADS=8 KVP11_STRESS_ITERS=${KVP11_STRESS_ITERS:-30} KVP11_STRESS_TIMEOUT=100 \
  KVP11_STRESS_LIVE=stress-live-tpm
exec "$1"
