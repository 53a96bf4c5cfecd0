#!/usr/bin/env bash
# The guest kit: Debian kernels + a busybox initramfs (see bhive/guestkit).
#   scripts/guestkit.sh fetch            # all kernels and busybox
#   scripts/guestkit.sh build            # the initramfs; prints its path
#   scripts/guestkit.sh path kernel bookworm-cloud
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
py="$repo/.venv/bin/python"
[ -x "$py" ] || py=python3
cd "$repo"
exec "$py" -m bhive.guestkit "$@"
