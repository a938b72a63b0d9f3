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
  p11-kit sqlite3 openssl ca-certificates curl      # runtime tools (curl: emulator health checks)
  softhsm2 opensc gnutls-bin libengine-pkcs11-openssl # HSM + PKCS#11 clients (tests, demo)
  valgrind clang libclang-rt-14-dev python3         # memory checks, fuzzing (libFuzzer runtime), helpers
  nginx lintian dpkg-dev fakeroot                   # deployment tests: nginx end to end, the .deb (tests/deploy)
  swtpm swtpm-tools tpm2-tools tpm2-abrmd dbus      # TPM 2.0 tests (tests/tpm): software TPM, resource manager
  libtpm2-pkcs11-1 libtpm2-pkcs11-tools             # tpm2-pkcs11 module and tpm2_ptool
  libtss2-tcti-tabrmd0 libtss2-tcti-swtpm0          # TCTIs: through tpm2-abrmd, straight to swtpm
)
# Node.js runs the local Key Vault emulator; any node already on PATH will do.
command -v node >/dev/null 2>&1 || PACKAGES+=(nodejs)

# Optional: the OpenSSL 3 pkcs11-provider (tests/clients/openssl_proxy_provider.sh)
# is only in <codename>-backports on Debian 12. When no backports source is
# configured, one is derived from the machine's own Debian source (same URI and
# keyring, never a hard-coded host) and added if its InRelease is reachable.
# Any failure here only prints a warning.
backports_provider() {
  dpkg-query -W -f='${db:Status-Status}' pkcs11-provider 2>/dev/null | grep -qx installed && return 0
  local code uri key f src=/etc/apt/sources.list.d/kvp11-backports.sources
  code=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  [ -n "$code" ] || return 0
  local SUDO=(); [ "$(id -u)" -eq 0 ] || SUDO=(sudo)
  if ! grep -rqs -- "$code-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    for f in /etc/apt/sources.list.d/*.sources; do   # deb822: the stanza with Suites: $code
      [ -f "$f" ] || continue
      uri=$(awk -v c="$code" 'BEGIN{RS=""} $0 ~ "Suites:[^\n]*[ \t]" c "([ \t]|$|\n)" {
              if (match($0, /URIs:[ \t]*[^ \t\n]+/)) { s = substr($0, RSTART, RLENGTH); sub(/URIs:[ \t]*/, "", s); print s; exit } }' "$f")
      key=$(awk -v c="$code" 'BEGIN{RS=""} $0 ~ "Suites:[^\n]*[ \t]" c "([ \t]|$|\n)" {
              if (match($0, /Signed-By:[ \t]*[^ \t\n]+/)) { s = substr($0, RSTART, RLENGTH); sub(/Signed-By:[ \t]*/, "", s); print s; exit } }' "$f")
      [ -n "$uri" ] && break
    done
    [ -n "${uri:-}" ] || uri=$(awk -v c="$code" '$1 == "deb" && $3 == c { print $2; exit }' /etc/apt/sources.list 2>/dev/null || true)
    [ -n "${uri:-}" ] || { echo "install-deps: no Debian source for $code found; pkcs11-provider skipped"; return 0; }
    if ! /usr/lib/apt/apt-helper download-file "$uri/dists/$code-backports/InRelease" /tmp/kvp11-bpo.$$ >/dev/null 2>&1; then
      rm -f /tmp/kvp11-bpo.$$
      echo "install-deps: $uri/dists/$code-backports not reachable; pkcs11-provider skipped"
      return 0
    fi
    rm -f /tmp/kvp11-bpo.$$
    echo "install-deps: adding $code-backports from $uri ($src)"
    printf 'Types: deb\nURIs: %s\nSuites: %s-backports\nComponents: main\n%s' "$uri" "$code" \
      "${key:+Signed-By: $key
}" | "${SUDO[@]}" tee "$src" >/dev/null || return 0
  fi
  "${SUDO[@]}" apt-get update -q >/dev/null || { echo "install-deps: warning: apt-get update failed"; return 0; }
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    -t "$code-backports" pkcs11-provider || echo "install-deps: warning: pkcs11-provider not installed"
}

# libtpm2-pkcs11-1 registers tpm2-pkcs11 with p11-kit (/usr/share/p11-kit/modules/
# tpm2_pkcs11.module): every p11-kit user (p11tool, p11-kit-proxy.so, the tests that install
# kvp11 system-wide) would then probe for a TPM at each start, print TCTI errors and create
# ~/.tpm2_pkcs11. The tests load tpm2-pkcs11 by path only, so an override of the same name in
# /etc/pkcs11/modules with an empty "module:" keeps it out of p11-kit's list (remove the file to
# let p11-kit load it again). An existing override is left alone.
tpm2_pkcs11_p11kit_off() {
  local f=/etc/pkcs11/modules/tpm2_pkcs11.module
  [ -f /usr/share/p11-kit/modules/tpm2_pkcs11.module ] && [ ! -e "$f" ] || return 0
  local SUDO=(); [ "$(id -u)" -eq 0 ] || SUDO=(sudo)
  "${SUDO[@]}" mkdir -p /etc/pkcs11/modules &&
    printf '%s\n' "# scripts/install-deps.sh (kvp11): tpm2-pkcs11 is loaded by path in the tests," \
      "# not through p11-kit. Remove this file to let p11-kit load it." "module:" |
    "${SUDO[@]}" tee "$f" >/dev/null || echo "install-deps: warning: could not write $f"
}

missing=()
for p in "${PACKAGES[@]}"; do
  case "$p" in \#*) continue ;; esac
  status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
  [ "$status" = installed ] || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
  backports_provider
  tpm2_pkcs11_p11kit_off
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
backports_provider
tpm2_pkcs11_p11kit_off
echo "install-deps: done"
