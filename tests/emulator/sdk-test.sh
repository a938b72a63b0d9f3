#!/usr/bin/env bash
# tests/emulator/sdk-test.sh SDK_DIR WORK_DIR — the emulator against the official Azure SDK.
# Installs @azure/keyvault-keys and @azure/identity with npm into SDK_DIR (under the build
# tree, never into the sources) unless they are there already, then runs sdk-test.js.
# Exits 77 (skipped) when node/npm are missing or npm cannot install the packages.
set -u
SDK=$1
WORK=$2
HERE=$(cd "$(dirname "$0")" && pwd)
command -v node >/dev/null 2>&1 || { echo "node not found: skipped"; exit 77; }
if [ ! -f "$SDK/node_modules/@azure/keyvault-keys/package.json" ] ||
   [ ! -f "$SDK/node_modules/@azure/identity/package.json" ]; then
  command -v npm >/dev/null 2>&1 || { echo "npm not found: skipped"; exit 77; }
  mkdir -p "$SDK"
  [ -f "$SDK/package.json" ] || echo '{"name":"kvp11-sdk-test","private":true}' > "$SDK/package.json"
  if ! (cd "$SDK" && timeout 300 npm install --no-audit --no-fund --loglevel=error \
          @azure/keyvault-keys@^4 @azure/identity@^4); then
    echo "npm could not install @azure/keyvault-keys and @azure/identity: skipped"
    exit 77
  fi
fi
NODE_PATH="$SDK/node_modules" exec node "$HERE/sdk-test.js" "$WORK"
