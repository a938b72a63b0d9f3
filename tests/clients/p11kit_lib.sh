# shellcheck shell=bash disable=SC2034
# tests/clients/p11kit_lib.sh — sourced (after common.sh) by p11kit_install.sh,
# openssl_proxy_*.sh, pkcs11tool_test.sh, gnutls_*.sh and java_*.sh.
#
# 1. Key names, so that the same scripts run on another account (e.g. a Key
#    Vault one: CLIENT_TOKEN=..., KVP11_ENV=<dir with env.sh and certs/>):
#      CLIENT_RSA_KEYS  labels of the RSA private keys   (default: common.sh's "rsa2048 rsa3072")
#      CLIENT_EC_KEYS   labels of the EC private keys    (default: "p256 p384")
#      CLIENT_PARTNER   label of a public-only certificate (default: partner)
#    Each label needs certs/<label>.pem in $KVP11_ENV. Derived: RSA1/RSA2 (first/
#    last RSA key), EC1/EC2 (first/last EC key), hash_of LABEL (sha256, or
#    sha384/sha512 for P-384/P-521 keys).
#
# 2. Installing kvp11 into the real system so that p11-kit (and
#    p11-kit-proxy.so) loads it: p11kit_install.sh and openssl_proxy_*.sh. CTest
#    gives them the RESOURCE_LOCK "p11kit_system".
#
#   p11kit_sys_install    `cmake --install $KVP11_BUILD_DIR --prefix <p11-kit prefix>`,
#                         after backing up every file it is about to replace;
#                         installs an EXIT trap that undoes it
#   p11kit_sys_uninstall  removes exactly the files of install_manifest.txt,
#                         restores the backed-up ones, removes the directories
#                         the install created (if empty); idempotent
# Needs root (p11-kit reads only system configs for root): skips (77) otherwise.
# Environment: KVP11_BUILD_DIR (the build tree whose files are installed).
#
# CTest's RESOURCE_LOCK only orders the tests of ONE ctest run; several build
# trees of the same checkout can run these tests at the same time. So the
# install also takes an flock(1) on $P11KIT_SYS_LOCK (default
# /run/lock/kvp11-p11kit-system.lock), held until the script exits, i.e.
# until after the uninstall.

RSA_KEYS=${CLIENT_RSA_KEYS:-$RSA_KEYS}
EC_KEYS=${CLIENT_EC_KEYS:-$EC_KEYS}
ALL_KEYS="$RSA_KEYS $EC_KEYS"
RSA1=${RSA_KEYS%% *} RSA2=${RSA_KEYS##* }
EC1=${EC_KEYS%% *} EC2=${EC_KEYS##* }
PARTNER=${CLIENT_PARTNER-partner}   # empty: the account has no partner certificate
NCERTS=$(echo $ALL_KEYS $PARTNER | wc -w)
# A partner certificate in software: the account's, else a throwaway one.
partner_cert() {
  if [ -n "$PARTNER" ]; then echo "$CERTS/$PARTNER.pem"; return; fi
  [ -f "$WORK/partner.pem" ] || openssl req -x509 -newkey rsa:2048 -nodes -keyout "$WORK/partner.key" \
    -out "$WORK/partner.pem" -days 1 -subj "/CN=kvp11 client test partner" 2>/dev/null
  echo "$WORK/partner.pem"
}
hash_of() {
  case $(openssl x509 -in "$CERTS/$1.pem" -noout -text 2>/dev/null) in
    *"NIST CURVE: P-384"*) echo sha384 ;;
    *"NIST CURVE: P-521"*) echo sha512 ;;
    *) echo sha256 ;;
  esac
}

p11kit_need_system() {
  [ "$(id -u)" -eq 0 ] || skip "not root: the system-wide p11-kit install test needs root"
  need p11-kit pkg-config cmake
  pkg-config --exists p11-kit-1 || skip "p11-kit-1.pc not found (libp11-kit-dev)"
  : "${KVP11_BUILD_DIR:?KVP11_BUILD_DIR must point to the build tree}"
  [ -f "$KVP11_BUILD_DIR/cmake_install.cmake" ] || fail "$KVP11_BUILD_DIR is not a CMake build tree"
  P11KIT_PREFIX=$(pkg-config --variable prefix p11-kit-1)
  P11KIT_MODDIR=$(pkg-config --variable p11_module_path p11-kit-1)
  P11KIT_CONFDIR=$(pkg-config --variable p11_module_configs p11-kit-1)
}

P11KIT_SYS_INSTALLED=0
P11KIT_SYS_FILES=()   # files the install writes (from a DESTDIR dry run)
P11KIT_SYS_DIRS=()    # directories that did not exist before, deepest first
# What is installed and what it replaced is also kept on disk, so that a run
# killed before its cleanup (e.g. a CTest timeout: SIGKILL) is undone by the
# next one instead of its leftovers being taken for the system's own files.
P11KIT_SYS_STATE=${P11KIT_SYS_STATE:-/var/tmp/kvp11-p11kit-system}

p11kit_sys_lock() {
  local lock=${P11KIT_SYS_LOCK:-}
  if [ -z "$lock" ]; then
    lock=/run/lock/kvp11-p11kit-system.lock
    [ -d /run/lock ] || lock=/tmp/kvp11-p11kit-system.lock
  fi
  need flock
  exec {P11KIT_SYS_LOCK_FD}>>"$lock" || fail "cannot open lock file $lock"
  if ! flock -n "$P11KIT_SYS_LOCK_FD"; then
    echo "waiting for $lock (another kvp11 system-install test is running)"
    flock -w "${P11KIT_SYS_LOCK_WAIT:-150}" "$P11KIT_SYS_LOCK_FD" || fail "timed out waiting for $lock"
  fi
}

# p11kit_sys_undo_state: remove the files listed in $P11KIT_SYS_STATE, restore
# their backups, remove the directories the install created; 0 if all went well.
p11kit_sys_undo_state() {
  local st=$P11KIT_SYS_STATE f d rc=0
  [ -f "$st/files" ] || { rm -rf "$st"; return 0; }
  while IFS= read -r f; do
    [ -n "$f" ] || continue
    rm -f "$f" || rc=1
    if [ -e "$st/backup$f" ] || [ -L "$st/backup$f" ]; then
      cp -a "$st/backup$f" "$f" || { echo "ERROR: could not restore $f" >&2; rc=1; }
    fi
  done <"$st/files"
  if [ -f "$st/dirs" ]; then
    while IFS= read -r d; do
      [ -n "$d" ] && { rmdir "$d" 2>/dev/null || true; }
    done <"$st/dirs"
  fi
  [ $rc -eq 0 ] && rm -rf "$st"
  return $rc
}

p11kit_sys_install() {
  local stage=$WORK/stage st=$P11KIT_SYS_STATE f d
  p11kit_sys_lock
  if [ -f "$st/files" ]; then
    echo "NOTE: undoing the system install of an interrupted earlier run ($st)"
    p11kit_sys_undo_state || fail "could not undo the interrupted install recorded in $st"
  fi
  rm -rf "$st"
  mkdir -p "$WORK/backup" "$st/backup"
  chmod 700 "$st"
  # Dry run into a staging DESTDIR: the exact list of files, before touching the system.
  DESTDIR=$stage cmake --install "$KVP11_BUILD_DIR" --prefix "$P11KIT_PREFIX" >"$WORK/stage.log" 2>&1 \
    || { cat "$WORK/stage.log" >&2; fail "cmake --install into a staging DESTDIR"; }
  mapfile -t P11KIT_SYS_FILES < <(cat "$KVP11_BUILD_DIR/install_manifest.txt"; echo)
  local files=()
  for f in "${P11KIT_SYS_FILES[@]}"; do [ -n "$f" ] && files+=("$f"); done
  P11KIT_SYS_FILES=("${files[@]}")
  [ ${#P11KIT_SYS_FILES[@]} -ge 3 ] || fail "install manifest lists only ${#P11KIT_SYS_FILES[@]} files"
  for f in "${P11KIT_SYS_FILES[@]}"; do
    case $f in /*) ;; *) fail "install manifest entry '$f' is not absolute" ;; esac
    if [ -e "$f" ] || [ -L "$f" ]; then
      mkdir -p "$WORK/backup$(dirname "$f")" "$st/backup$(dirname "$f")"
      cp -a "$f" "$st/backup$f" || fail "backup of $f"
      cp -a "$f" "$WORK/backup$f" || fail "backup of $f"
    fi
    d=$(dirname "$f")
    while [ ! -d "$d" ]; do
      case " ${P11KIT_SYS_DIRS[*]:-} " in *" $d "*) ;; *) P11KIT_SYS_DIRS+=("$d") ;; esac
      d=$(dirname "$d")
    done
  done
  printf '%s\n' "${P11KIT_SYS_DIRS[@]}" >"$st/dirs"
  printf '%s\n' "${P11KIT_SYS_FILES[@]}" >"$st/files.tmp" && mv "$st/files.tmp" "$st/files"
  # From here on, always undo.
  trap 'p11kit_sys_exit' EXIT
  trap 'exit 1' INT TERM HUP
  P11KIT_SYS_INSTALLED=1
  cmake --install "$KVP11_BUILD_DIR" --prefix "$P11KIT_PREFIX" >"$WORK/install.log" 2>&1 \
    || { cat "$WORK/install.log" >&2; fail "cmake --install --prefix $P11KIT_PREFIX"; }
  cp "$KVP11_BUILD_DIR/install_manifest.txt" "$WORK/install_manifest.txt"
  # The real install writes no file the dry run did not announce.
  while IFS= read -r f || [ -n "$f" ]; do
    [ -z "$f" ] && continue
    case " ${P11KIT_SYS_FILES[*]} " in *" $f "*) ;; *) fail "install wrote unexpected file $f" ;; esac
  done <"$WORK/install_manifest.txt"
}

p11kit_sys_uninstall() {
  [ "$P11KIT_SYS_INSTALLED" -eq 1 ] || return 0
  p11kit_sys_undo_state || return 1
  P11KIT_SYS_INSTALLED=0
}

p11kit_sys_exit() {
  local rc=$?
  if ! p11kit_sys_uninstall; then
    echo "FAIL: uninstall incomplete, see $P11KIT_SYS_STATE (files: ${P11KIT_SYS_FILES[*]})" >&2
    rc=1
  fi
  rm -rf "$WORK"
  exit $rc
}
