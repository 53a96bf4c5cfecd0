#!/usr/bin/env bash
# Installs the Debian packages bhive needs, only those that are missing.
# Usage: scripts/install-deps.sh [--bench]   (--bench adds QEMU, the peer)
set -euo pipefail

need=()
command -v nasm >/dev/null || need+=(nasm)
command -v cc >/dev/null || need+=(gcc)
command -v make >/dev/null || need+=(make)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
python3 - <<'PY' 2>/dev/null || need+=(python3-dev)
import sysconfig, os, sys
sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else 1)
PY
if [ "${1:-}" = "--bench" ]; then
  command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
fi

if [ ${#need[@]} -gt 0 ]; then
  echo "installing Debian packages: ${need[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
