#!/usr/bin/env bash
# scripts/install-deps.sh — install the Debian 12 packages kvp11 needs to
# build, test and run its demo. Run as root (or through sudo). Packages that
# are already installed are left alone; when nothing is missing apt is not
# touched at all, so repeated runs take well under a second.
set -euo pipefail

PACKAGES=(
  build-essential cmake pkg-config                  # toolchain
  libssl-dev libp11-kit-dev libsqlite3-dev libinih-dev
  libjansson-dev libcurl4-openssl-dev libcunit1-dev # build dependencies
  p11-kit sqlite3 openssl ca-certificates           # runtime tools
  softhsm2 opensc gnutls-bin libengine-pkcs11-openssl # HSM + PKCS#11 clients (tests, demo)
  valgrind clang python3                            # memory checks, fuzzing, helpers
)
# Node.js runs the local Key Vault emulator; any node already on PATH will do.
command -v node >/dev/null 2>&1 || PACKAGES+=(nodejs)

missing=()
for p in "${PACKAGES[@]}"; do
  case "$p" in \#*) continue ;; esac
  status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
  [ "$status" = installed ] || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || {
    echo "install-deps: error: missing packages (${missing[*]}) and not root; run as root" >&2
    exit 1
  }
  SUDO=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -q
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
echo "install-deps: done"
