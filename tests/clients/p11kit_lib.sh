# tests/clients/p11kit_lib.sh — sourced (after common.sh) by the tests that
# install kvp11 into the real system so that p11-kit (and p11-kit-proxy.so)
# loads it: p11kit_install.sh and openssl_proxy_*.sh. CTest gives them the
# RESOURCE_LOCK "p11kit_system": only one of them installs at a time.
#
#   p11kit_sys_install    `cmake --install $KVP11_BUILD_DIR --prefix <p11-kit prefix>`,
#                         after backing up every file it is about to replace;
#                         installs an EXIT trap that undoes it
#   p11kit_sys_uninstall  removes exactly the files of install_manifest.txt,
#                         restores the backed-up ones, removes the directories
#                         the install created (if empty); idempotent
# Needs root (p11-kit reads only system configs for root): skips (77) otherwise.
# Environment: KVP11_BUILD_DIR (the build tree whose files are installed).

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

p11kit_sys_install() {
  local stage=$WORK/stage f d
  mkdir -p "$WORK/backup"
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
      mkdir -p "$WORK/backup$(dirname "$f")"
      cp -a "$f" "$WORK/backup$f" || fail "backup of $f"
    fi
    d=$(dirname "$f")
    while [ ! -d "$d" ]; do
      case " ${P11KIT_SYS_DIRS[*]:-} " in *" $d "*) ;; *) P11KIT_SYS_DIRS+=("$d") ;; esac
      d=$(dirname "$d")
    done
  done
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
  local f d rc=0
  for f in "${P11KIT_SYS_FILES[@]}"; do
    rm -f "$f" || rc=1
    if [ -e "$WORK/backup$f" ] || [ -L "$WORK/backup$f" ]; then
      cp -a "$WORK/backup$f" "$f" || { echo "ERROR: could not restore $f" >&2; rc=1; }
    fi
  done
  for d in "${P11KIT_SYS_DIRS[@]}"; do
    rmdir "$d" 2>/dev/null || true
  done
  P11KIT_SYS_INSTALLED=0
  return $rc
}

p11kit_sys_exit() {
  local rc=$?
  if ! p11kit_sys_uninstall; then
    echo "FAIL: uninstall incomplete, check: ${P11KIT_SYS_FILES[*]}" >&2
    rc=1
  fi
  rm -rf "$WORK"
  exit $rc
}
