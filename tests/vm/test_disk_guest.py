"""A real Linux guest on the PIIX3 IDE disk, end to end: Debian 12's kernel
loads ata_piix, libata probes the drive through the PCI bus (ACPI PNP0A03,
BAR4 routed by the vCPUs to the ide actor), picks a DMA mode, and dd with
O_DIRECT writes a pseudo-random pattern and reads it back through bus-master
DMA.  After power-off the image on the host holds exactly what the guest
wrote.  Nothing is mocked: real vCPU processes, real actors, the real bus.

The modules (ata_piix, libata, scsi_mod, sd_mod and their dependencies) come
from the kernel's own Debian package through the guest kit
(guestkit.fetch_modules), loaded by this test's own /init.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
import re
import sys

import pytest

from bhive import guestkit
from bhive.guestkit import bootrun, debian
from support import REPO, wait_for

KERNEL = "bookworm-generic"
PATTERN_MIB = 8
DISK_MIB = 64
TIMEOUT = 600
# what libata says when interrupts or DMA go wrong
ATA_ERRORS = re.compile(r"lost interrupt|timeout|exception Emask|hard resetting|soft resetting|SRST failed|"
                        r"failed command|DMA disabled|limiting speed|I/O error|frozen|DISK-INSMOD-FAIL")

INIT = f"""#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
while read -r m; do
	insmod "/lib/modules/$(uname -r)/$m" || echo "DISK-INSMOD-FAIL $m"
done < "/lib/modules/$(uname -r)/modules.bhive"
i=0
while [ ! -b /dev/sda ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
echo "DISK-XFER $(cat /sys/class/ata_device/dev1.0/xfer_mode 2>&1)"
rounds=1
for arg in $(cat /proc/cmdline); do
	case "$arg" in bhive.disk_rounds=*) rounds=${{arg#*=}} ;; esac
done
n=0
while [ $n -lt $rounds ]; do
	dd if=/dev/urandom of=/tmp/pattern bs=1M count={PATTERN_MIB} 2>/dev/null
	w=$(md5sum < /tmp/pattern | cut -d' ' -f1)
	dd if=/tmp/pattern of=/dev/sda bs=1M seek=1 oflag=direct conv=fsync 2>&1
	sync
	echo 3 > /proc/sys/vm/drop_caches
	dd if=/dev/sda of=/tmp/back bs=1M skip=1 count={PATTERN_MIB} iflag=direct 2>&1
	r=$(md5sum < /tmp/back | cut -d' ' -f1)
	echo "DISK-ROUND $n written=$w read=$r"
	n=$((n+1))
done
echo "DISK-SUM-WRITTEN $w"
echo "DISK-SUM-READ $r"
echo "DISK-IRQ14 $(grep '^ *14:' /proc/interrupts)"
dmesg | grep -E "ata[0-9]|ata_piix|sd 0:"
cpus=$(grep -c '^processor' /proc/cpuinfo)
echo "BOOT-OK cpus=$cpus"
cat /proc/interrupts
stty "$(stty -g)"      # TCSADRAIN: the serial driver sends all of the above before the VM ends
/bin/bhive-exit
poweroff -f
"""


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    """The kernel and an initramfs with INIT and the kernel's disk modules
    (ata_piix, libata, scsi_mod, sd_mod and what they need; the guest kit's)."""
    cached = (guestkit.cache_root() / "kernels" / KERNEL / "modules" / "modules.bhive").is_file()
    ok, why = debian.mirror_reachable()
    if not ok and not cached:
        pytest.skip(f"Debian package mirror unreachable and the kernel's modules are not cached: {why}")
    kernel = guestkit.kernel_path(KERNEL)
    initrd = tmp_path_factory.mktemp("initrd") / "initrd.gz"
    initrd.write_bytes(guestkit.initramfs_bytes(guestkit.fetch_busybox(), INIT.encode(),
                                                modules=[guestkit.fetch_modules(KERNEL)]))
    return kernel, initrd


def vm_config(path, kernel, initrd, image, smp: int, append: str = "") -> None:
    platform = (REPO / "configs" / "disk.toml").read_text()
    platform = platform.split("[devices.uart]", 1)[1]
    path.write_text(f"""[vm]
name = "disk-{smp}"
cpus = {smp}
memory = "512M"

[boot]
kernel = "{kernel}"
initrd = "{initrd}"
append = "console=ttyS0 panic=-1 {append}"

[devices.uart]{platform}
[[drive]]
file = "{image}"
""")


@pytest.mark.parametrize("smp", [1, 8])
def test_linux_reads_and_writes_the_ide_disk_with_dma(kit, tmp_path, smp):
    kernel, initrd = kit
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(DISK_MIB << 20)                # sparse
    cfg = tmp_path / "vm.toml"
    vm_config(cfg, kernel, initrd, image, smp)
    run = bootrun.boot_once([sys.executable, "-m", "bhive", "run", str(cfg), "--watchdog", str(TIMEOUT - 30)],
                            timeout=TIMEOUT)
    console = run.console
    tail = console[-4000:]
    assert run.exit_code == bootrun.DEBUG_EXIT_OK, tail
    assert run.cpus == smp, tail
    assert "ata_piix" in console and re.search(r"ata1\.00: ATA-\d+: BHIVE HARDDISK", console), tail
    # a DMA mode: what libata set the drive to (SET FEATURES, then IDENTIFY again)
    assert re.search(r"DISK-XFER XFER_(UDMA|MW_DMA)_\d", console), tail
    assert not ATA_ERRORS.search(console), ATA_ERRORS.findall(console)
    assert run.guest_errors() == [], run.guest_errors()
    written = re.search(r"DISK-SUM-WRITTEN ([0-9a-f]{32})", console).group(1)
    read = re.search(r"DISK-SUM-READ ([0-9a-f]{32})", console).group(1)
    assert written == read
    # interrupt-driven: IRQ 14 arrived (each DMA completion is one)
    irq14 = re.search(r"DISK-IRQ14 +14:((?: +\d+)+)", console)
    assert irq14 and sum(map(int, irq14.group(1).split())) > 0, tail
    # after power-off the image holds what the guest wrote, at 1 MiB
    with open(image, "rb") as f:
        f.seek(1 << 20)
        assert hashlib.md5(f.read(PATTERN_MIB << 20)).hexdigest() == written


def test_dma_survives_the_ide_actor_being_killed(kit, tmp_path, bhive):
    """SIGKILL the ide actor again and again while the guest moves data by
    DMA: each successor finishes or re-runs the access its predecessor did
    not commit (the command in flight is in the committed state), so every
    round reads back what it wrote, libata sees no error, and the image
    holds the last pattern."""
    kernel, initrd = kit
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(DISK_MIB << 20)
    cfg = tmp_path / "vm.toml"
    rounds, kills = 6, 5
    vm_config(cfg, kernel, initrd, image, 2, append=f"bhive.disk_rounds={rounds}")
    name = "disk-2"
    started = bhive.run("run", str(cfg), "--detach", "--watchdog", str(TIMEOUT - 30), timeout=60)
    assert started.returncode == 0, started.stderr
    rd = Path(os.environ["BHIVE_RUN_ROOT"]) / name
    console = rd / "logs" / "console.log"
    wait_for(lambda: console.exists() and b"DISK-XFER" in console.read_bytes(), TIMEOUT, 0.1, "the disk")
    for _ in range(kills):
        killed = bhive.run("kill", name, "ide")
        assert killed.returncode == 0, killed.stderr
        time.sleep(0.7)

    def ended():
        info = json.loads((rd / "supervisor.json").read_text())
        return info if info.get("state") == "stopped" else None
    info = wait_for(ended, TIMEOUT, 0.2, "the VM to finish")
    out = console.read_text(errors="replace")
    assert info["status"] == 1, out[-3000:]
    done = re.findall(r"DISK-ROUND (\d+) written=([0-9a-f]{32}) read=([0-9a-f]{32})", out)
    assert len(done) == rounds, out[-3000:]
    assert all(w == r for _, w, r in done), done
    assert not ATA_ERRORS.search(out), ATA_ERRORS.findall(out)
    restarts = (rd / "logs" / "ide.log").read_text().count(" restored ")
    assert restarts >= kills, restarts
    with open(image, "rb") as f:
        f.seek(1 << 20)
        assert hashlib.md5(f.read(PATTERN_MIB << 20)).hexdigest() == done[-1][1]
