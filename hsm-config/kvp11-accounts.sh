#!/bin/sh
# kvp11-accounts.sh create STATE_DIR: the system group kvp11, the system user
# kvp11 (runs kvp11-server.service) and the group kvp11-clients, each only if
# missing; then STATE_DIR (the registry's directory) root:kvp11 0750.
# Prints what it created ("group:kvp11 user:kvp11 ..."), so that the Debian
# package's postrm can remove exactly those on purge. Used by `make install`
# and the package's postinst (as /usr/libexec/kvp11/kvp11-accounts). Idempotent.
set -eu
[ "${1:-}" = create ] || { echo "usage: $0 create STATE_DIR" >&2; exit 2; }
state=${2:-/var/lib/kvp11}
created=""
for g in kvp11 kvp11-clients; do
  if ! getent group "$g" >/dev/null; then
    groupadd --system "$g"
    created="$created group:$g"
  fi
done
if ! getent passwd kvp11 >/dev/null; then
  useradd --system --gid kvp11 --groups kvp11-clients --home-dir "$state" --no-create-home \
    --shell /usr/sbin/nologin --comment "kvp11 PKCS#11 server" kvp11
  created="$created user:kvp11"
fi
mkdir -p "$state"
chown root:kvp11 "$state"
chmod 0750 "$state"
echo "${created# }"
