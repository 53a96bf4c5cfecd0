#!/bin/sh
# mmdebstrap --customize-hook for the guest-kit Debian images (bhive/guestkit/images.py):
# runs after every package is installed; $1 is the target root, $2 the host name.
set -eu
root="$1"
# root logs in with no password (an empty password field; Debian's
# pam_unix has nullok), at `login:` on the serial console
sed -i 's/^root:[^:]*:/root::/' "$root/etc/shadow"
# a getty on ttyS0 whether or not the kernel command line names it
mkdir -p "$root/etc/systemd/system/getty.target.wants"
ln -sf /lib/systemd/system/serial-getty@.service \
	"$root/etc/systemd/system/getty.target.wants/serial-getty@ttyS0.service"
# the root file system: the image's one partition; no fsck (passno 0: the
# image carries no e2fsprogs, and a test image is rebuilt, not repaired)
printf '/dev/sda1\t/\text4\trw,errors=remount-ro\t0\t0\n' > "$root/etc/fstab"
echo "$2" > "$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n' "$2" > "$root/etc/hosts"
# each boot gets its machine id on first start (an empty file means "not yet")
: > "$root/etc/machine-id"
