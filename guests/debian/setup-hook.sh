#!/bin/sh
# mmdebstrap --setup-hook for the guest-kit Debian images (bhive/guestkit/images.py):
# runs before any package is installed; $1 is the target root.
# The initramfs-tools configuration goes in first, so that the initramfs
# the kernel's postinst builds is already the one we want: only the modules
# listed (MODULES=list) plus what the hook below adds, instead of every
# storage and filesystem driver (MODULES=most, ~36 MB): a smaller initrd is
# faster to unpack and probe on an emulated CPU, and it does not depend on
# the build host's hardware (MODULES=dep would).
set -eu
root="$1"
mkdir -p "$root/etc/initramfs-tools/conf.d" "$root/etc/initramfs-tools/hooks"
cat > "$root/etc/initramfs-tools/conf.d/bhive" <<'CONF'
MODULES=list
CONF
cat > "$root/etc/initramfs-tools/hooks/bhive-disk" <<'HOOK'
#!/bin/sh
# bhive guest kit: the root disk is PIIX IDE (ata_piix) -> SCSI disk -> ext4
PREREQ=""
prereqs() { echo "$PREREQ"; }
case "$1" in prereqs) prereqs; exit 0 ;; esac
. /usr/share/initramfs-tools/hook-functions
manual_add_modules ata_piix ata_generic sd_mod ext4 crc32c_generic
HOOK
chmod 755 "$root/etc/initramfs-tools/hooks/bhive-disk"
