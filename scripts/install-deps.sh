#!/usr/bin/env bash
# Installs the Debian packages bhive's build, tests and benchmarks need,
# only those that are missing:
#   nasm, a C compiler, make, venv + Python headers  build softvmm and test guests
#   binutils (ld)                                    links the ELF32 test kernels (Multiboot, PVH)
#   cpio, dpkg-deb, zstd, debian-archive-keyring     the guest kit (Debian kernels, busybox)
#   qemu-system-x86                                  the peer: QEMU TCG, for comparisons
#   acpica-tools                                     iasl, to check our ACPI tables
#   mmdebstrap, fakechroot, e2fsprogs, fdisk         the guest kit's Debian disk images (mmdebstrap,
#                                                    mkfs.ext4 -d, sfdisk; fakechroot where nothing may mount)
set -euo pipefail

need=()
command -v nasm >/dev/null || need+=(nasm)
command -v cc >/dev/null || need+=(gcc)
command -v make >/dev/null || need+=(make)
command -v ld >/dev/null || need+=(binutils)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
python3 - <<'PY' 2>/dev/null || need+=(python3-dev)
import sysconfig, os, sys
sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else 1)
PY
command -v cpio >/dev/null || need+=(cpio)
command -v dpkg-deb >/dev/null || need+=(dpkg)
command -v zstd >/dev/null || need+=(zstd)
# bookworm's debian-archive-keyring >= 2023.3+deb12u2 carries trixie's key
[ -e /usr/share/keyrings/debian-archive-trixie-automatic.gpg ] || need+=(debian-archive-keyring)
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v iasl >/dev/null || need+=(acpica-tools)   # disassembles our DSDT in tests
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v fakechroot >/dev/null || need+=(fakechroot fakeroot)   # mmdebstrap where nothing may mount
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v sfdisk >/dev/null || need+=(fdisk)

if [ ${#need[@]} -gt 0 ]; then
  echo "installing Debian packages: ${need[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
