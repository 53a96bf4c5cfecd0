"""The guest kit: cpio writer, /init, the exit helper, apt source parsing,
and (when the package mirror answers) real fetches of the Debian packages."""

from __future__ import annotations

import gzip
import re
import shutil
import stat
import struct
import subprocess

import pytest

from bhive import guestkit
from bhive.guestkit import cpio, debian, exithelper, kmod

from support import REPO

INIT = REPO / "guests" / "initramfs" / "init"


# -- cpio -------------------------------------------------------------------

def sample_archive() -> bytes:
    w = cpio.CpioWriter(mtime=1234)
    w.dir("bin")
    w.file("bin/busybox", b"\x7fELF" + bytes(range(256)) * 3, 0o755)
    w.symlink("bin/sh", "busybox")
    w.chardev("dev/console", 5, 1)
    w.file("init", b"#!/bin/sh\necho hi\n", 0o755)
    w.file("e", b"")                         # empty file
    w.file("odd", b"x" * 5)                  # data needing padding
    return w.getvalue()


def test_cpio_roundtrip():
    raw = sample_archive()
    entries = cpio.parse(raw)
    by = {e.name: e for e in entries}
    assert [e.name for e in entries] == ["bin", "bin/busybox", "bin/sh", "dev/console", "init", "e", "odd"]
    assert by["bin"].kind == "dir" and stat.S_IMODE(by["bin"].mode) == 0o755
    assert by["bin/busybox"].kind == "file" and by["bin/busybox"].data == b"\x7fELF" + bytes(range(256)) * 3
    assert stat.S_IMODE(by["bin/busybox"].mode) == 0o755
    assert by["bin/sh"].kind == "symlink" and by["bin/sh"].data == b"busybox"
    assert by["dev/console"].kind == "chr" and (by["dev/console"].rdevmajor, by["dev/console"].rdevminor) == (5, 1)
    assert by["odd"].data == b"xxxxx" and by["e"].data == b""
    assert all(e.mtime == 1234 for e in entries)
    assert len({e.ino for e in entries}) == len(entries)


def test_cpio_newc_layout():
    raw = sample_archive()
    assert raw.startswith(b"070701") and len(raw) % 4 == 0
    # the first header, field by field: 13 eight-digit hex numbers
    fields = [int(raw[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
    namesize = fields[11]
    assert raw[110:110 + namesize] == b"bin\0"
    assert (110 + namesize) % 4 == 2 or raw[110 + namesize:(110 + namesize + 3) & ~3] == b"\0" * ((-(110 + namesize)) % 4)
    assert b"TRAILER!!!\0" in raw[-128:]
    # every header starts 4-byte aligned
    for m in re.finditer(rb"070701[0-9A-F]{104}", raw):
        assert m.start() % 4 == 0
    # gzip form parses the same
    assert [e.name for e in cpio.parse(gzip.compress(raw))] == [e.name for e in cpio.parse(raw)]


@pytest.mark.skipif(shutil.which("cpio") is None, reason="host cpio not installed (only a cross-check)")
def test_cpio_host_tool_reads_it(tmp_path):
    p = subprocess.run(["cpio", "-t", "-v"], input=sample_archive(), capture_output=True)
    assert p.returncode == 0, p.stderr
    assert b"bin/busybox" in p.stdout and b"bin/sh -> busybox" in p.stdout


def test_cpio_rejects_garbage_and_duplicates():
    with pytest.raises(ValueError):
        cpio.parse(b"070702" + b"0" * 200)
    with pytest.raises(ValueError):
        cpio.parse(sample_archive()[:300])
    w = cpio.CpioWriter()
    w.dir("a")
    with pytest.raises(ValueError):
        w.dir("a")


# -- /init --------------------------------------------------------------------

def test_init_script_content():
    text = INIT.read_text()
    assert text.startswith("#!/bin/sh\n")
    for needle in ("mount -t proc proc /proc", "mount -t sysfs sysfs /sys", "devtmpfs",
                   "/sys/devices/system/cpu/online", "/proc/cpuinfo", 'echo "BOOT-OK cpus=$cpus"',
                   "cat /proc/interrupts", "bhive.test=1", "/bin/bhive-exit", "poweroff -f", "reboot -f",
                   "setsid cttyhack sh"):
        assert needle in text, needle
    # BOOT-OK comes before the /proc/interrupts dump and the power-off
    assert text.index('echo "BOOT-OK') < text.index("\ncat /proc/interrupts") < text.index("\tpoweroff -f")


@pytest.mark.parametrize("ranges,count", [("0", 1), ("0-1", 2), ("0-7", 8), ("0-3,6,8-9", 7), ("0,2", 2)])
def test_init_counts_cpu_ranges(ranges, count):
    text = INIT.read_text()
    func = re.search(r"count_ranges\(\) \{.*?\n\}\n", text, re.S).group(0)
    out = subprocess.run(["sh", "-c", func + f'count_ranges "{ranges}"'], capture_output=True, text=True)
    assert out.stdout.strip() == str(count), out.stderr


# -- /bin/bhive-exit ----------------------------------------------------------

def test_exit_helper_elf():
    elf = exithelper.elf()
    assert elf[:4] == b"\x7fELF" and elf[4] == 2
    e_type, e_machine, _v, e_entry, e_phoff = struct.unpack_from("<HHIQQ", elf, 16)
    assert (e_type, e_machine) == (2, 0x3E)
    ptype, flags, off, vaddr, _p, filesz, memsz, _a = struct.unpack_from("<IIQQQQQQ", elf, e_phoff)
    assert ptype == 1 and flags == 5 and off == 0 and filesz == memsz == len(elf)
    assert elf[e_entry - vaddr:] == exithelper.CODE
    assert b"\xee" in exithelper.CODE                  # out dx, al


@pytest.mark.skipif(shutil.which("nasm") is None, reason="nasm not installed")
def test_exit_helper_code_matches_source(tmp_path):
    src = tmp_path / "exit.asm"
    src.write_text(exithelper.SOURCE)
    subprocess.run(["nasm", "-f", "bin", str(src), "-o", str(tmp_path / "exit.bin")], check=True)
    assert (tmp_path / "exit.bin").read_bytes() == exithelper.CODE


def test_exit_helper_runs_on_host(tmp_path):
    """On the host (no isa-debug-exit, maybe no ioperm right) it just exits 0 or 1."""
    p = tmp_path / "bhive-exit"
    p.write_bytes(exithelper.elf())
    p.chmod(0o755)
    assert subprocess.run([str(p)], timeout=10).returncode in (0, 1)


# -- initramfs from a stand-in busybox ----------------------------------------

def test_initramfs_layout(tmp_path, monkeypatch):
    fake = tmp_path / "busybox"
    fake.write_bytes(b"not really busybox")            # cannot run: the fallback applet list is used
    data = guestkit.initramfs_bytes(fake, INIT.read_bytes())
    assert data[:2] == b"\x1f\x8b"
    by = {e.name: e for e in cpio.parse(data)}
    assert by["init"].kind == "file" and by["init"].mode & 0o111 and by["init"].data == INIT.read_bytes()
    assert by["bin/busybox"].data == b"not really busybox"
    assert by["bin/sh"].kind == "symlink" and by["bin/sh"].data == b"busybox"
    assert by["sbin/poweroff"].data == b"/bin/busybox"
    assert by["usr/bin/setsid"].data == b"/bin/busybox"
    assert by["bin/bhive-exit"].data == exithelper.elf()
    assert by["dev/console"].kind == "chr"
    for d in ("proc", "sys", "dev", "tmp"):
        assert by[d].kind == "dir"
    raw = guestkit.initramfs_bytes(fake, INIT.read_bytes(), compress=False)
    assert raw.startswith(b"070701")
    assert guestkit.initramfs_bytes(fake, b"x") == guestkit.initramfs_bytes(fake, b"x")   # reproducible


# -- mirror discovery ---------------------------------------------------------

def test_host_mirrors_parsing(tmp_path):
    etc = tmp_path / "apt"
    (etc / "sources.list.d").mkdir(parents=True)
    (etc / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\n# a comment\nURIs: http://mirror.invalid/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        "Types: deb\nURIs: http://mirror.invalid/debian-security\nSuites: bookworm-security\nComponents: main\n")
    (etc / "sources.list").write_text(
        "# old style\ndeb [arch=amd64 signed-by=/k.gpg] http://other.invalid/debian bookworm main\n"
        "deb http://other.invalid/debian-security bookworm-security main\n")
    ms = debian.host_mirrors(str(etc))
    assert [m.uri for m in ms] == ["http://mirror.invalid/debian", "http://other.invalid/debian"]
    assert ms[0].keyring == "/usr/share/keyrings/debian-archive-keyring.gpg" and ms[1].keyring == "/k.gpg"


def test_mirror_env_override(monkeypatch):
    monkeypatch.setenv(debian.MIRROR_ENV, "http://mirror.invalid/debian/")
    assert debian.mirror().uri == "http://mirror.invalid/debian"


def test_unknown_kernel_name():
    with pytest.raises(guestkit.FetchError):
        guestkit.fetch_kernel("sid-generic")


# -- real fetches ---------------------------------------------------------------

@pytest.fixture(scope="module")
def online():
    ok, why = debian.mirror_reachable()
    if not ok:
        pytest.skip(f"Debian package mirror unreachable: {why}")


def test_fetch_busybox_and_build(online):
    bb = guestkit.fetch_busybox()
    assert bb.read_bytes()[:4] == b"\x7fELF"
    path = guestkit.build_initramfs()
    assert path == guestkit.build_initramfs()              # cached
    by = {e.name: e for e in cpio.parse(path.read_bytes())}
    assert by["bin/busybox"].data == bb.read_bytes()
    for applet in ("bin/sh", "sbin/poweroff", "bin/mount", "bin/cttyhack", "usr/bin/setsid"):
        assert by[applet].kind == "symlink", applet


@pytest.mark.parametrize("name,compressed", [("bookworm-cloud", "LZ4"), ("bookworm-generic", "XZ"),
                                             ("trixie-generic", "ZSTD")])
def test_fetch_kernel(online, name, compressed):
    k = guestkit.fetch_kernel(name)
    assert k.vmlinuz.is_file() and k.vmlinuz.name == f"vmlinuz-{k.release}"
    assert k.config.name == f"config-{k.release}"
    assert f"CONFIG_KERNEL_{compressed}=y" in k.config.read_text()
    assert k.package == f"linux-image-{k.release}"
    assert k.release.startswith("6.12." if name.startswith("trixie") else "6.1.0-")
    assert ("cloud" in k.release) == name.endswith("cloud")
    assert guestkit.kernel_path(name) == k.vmlinuz
    out = subprocess.run([str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv").is_dir() else "python3",
                          "-m", "bhive.guestkit", "path", "kernel", name], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == str(k.vmlinuz)


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="QEMU not installed")
def test_kit_boots_under_qemu(online):
    """End to end: the kit's cloud kernel and initramfs reach BOOT-OK on 2 CPUs
    and the guest ends QEMU through isa-debug-exit."""
    from bhive.guestkit import bootrun
    r = bootrun.boot_once(bootrun.qemu_argv(guestkit.kernel_path("bookworm-cloud"), guestkit.build_initramfs(),
                                            smp=2), timeout=120)
    assert r.cpus == 2
    assert r.exit_code == bootrun.DEBUG_EXIT_OK, r.console[-2000:]
    assert "CPU0" in r.console and "CPU1" in r.console           # the /proc/interrupts dump


# -- the disk modules -----------------------------------------------------------

def test_module_load_order_and_modules_dep():
    ms = kmod.ModuleSet("6.0-test", {p: b"" for p in ("k/ata_piix.ko", "k/libata.ko", "k/scsi_mod.ko",
                                                         "k/scsi_common.ko", "k/sd_mod.ko")},
                        {"k/ata_piix.ko": ["k/libata.ko", "k/scsi_mod.ko"], "k/libata.ko": ["k/scsi_mod.ko"],
                         "k/scsi_mod.ko": ["k/scsi_common.ko"], "k/scsi_common.ko": [],
                         "k/sd_mod.ko": ["k/scsi_mod.ko", "k/scsi_common.ko"]})
    order = ms.load_order()
    assert sorted(order) == sorted(ms.files)
    for p, ds in ms.deps.items():
        assert all(order.index(d) < order.index(p) for d in ds), (p, order)
    dep = dict(l.split(":", 1) for l in ms.modules_dep().splitlines())
    # depmod's format: the whole closure, the module to load first last
    assert dep["k/ata_piix.ko"].split() == ["k/libata.ko", "k/scsi_mod.ko", "k/scsi_common.ko"]
    assert dep["k/scsi_common.ko"] == ""
    assert kmod.module_name("kernel/block/t10-pi.ko.xz") == "t10_pi"


def test_init_loads_the_module_list_in_order(tmp_path):
    """/init's load_modules, run by the host's sh with insmod and uname
    stubbed: every line of modules.bhive is insmod'ed, in the file's order."""
    text = INIT.read_text()
    func = re.search(r"load_modules\(\) \{.*?\n\}\n", text, re.S).group(0)
    root = tmp_path / "lib" / "modules" / "6.0-test"
    root.mkdir(parents=True)
    (root / "modules.bhive").write_text("kernel/a.ko\nkernel/b.ko\nkernel/c.ko\n")
    script = (f'uname() {{ echo 6.0-test; }}\ninsmod() {{ echo "insmod $1" >> {tmp_path}/calls; }}\n'
              + func.replace("/lib/modules", f"{tmp_path}/lib/modules").replace("/tmp/insmod.err", f"{tmp_path}/err")
              + "load_modules\n")
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    calls = (tmp_path / "calls").read_text().split("\n")[:-1]
    assert calls == [f"insmod {root}/kernel/{m}.ko" for m in "abc"]
    assert "bhive: modules loaded: a b c" in out.stdout


def test_initramfs_carries_each_kit_kernels_disk_modules(online):
    """The built initramfs has, for every kit kernel, ata_piix, libata,
    scsi_mod, sd_mod (and ext4 with jbd2, mbcache, crc16 and crc32c where the
    kernel builds them as modules), real ELF modules named as their modinfo
    says, and a load list in which every module follows all its modinfo
    dependencies."""
    by = {e.name: e for e in cpio.parse(guestkit.build_initramfs().read_bytes())}
    for name in guestkit.KERNELS:
        k = guestkit.fetch_kernel(name)
        base = f"lib/modules/{k.release}"
        order = by[f"{base}/modules.bhive"].data.decode().split()
        names = [kmod.module_name(p) for p in order]
        want = {"ata_piix", "libata", "scsi_mod", "sd_mod"}
        if "CONFIG_EXT4_FS=m" in k.config.read_text():
            want |= {"ext4", "jbd2", "mbcache", "crc16", "crc32c_generic"}
        assert want <= set(names), (name, names)
        dep = dict(l.split(":", 1) for l in by[f"{base}/modules.dep"].data.decode().splitlines())
        assert set(dep) == set(order)
        for i, p in enumerate(order):
            info = kmod.modinfo(by[f"{base}/{p}"].data)
            assert info["name"] == [kmod.module_name(p)]
            for d in kmod.depends(info):
                assert d in names[:i], f"{name}: {p} needs {d} loaded before it: {names}"
            assert set(dep[p].split()) <= set(order[:i])


@pytest.mark.parametrize("cmdline,loads", [("console=ttyS0", True), ("console=ttyS0 bhive.test=1", False),
                                           ("console=ttyS0 bhive.test=1 bhive.modules=1", True),
                                           ("console=ttyS0 bhive.modules=0", False)])
def test_init_decides_when_to_load_modules(cmdline, loads):
    """Interactive boots load the disk modules; BOOT-OK-and-power-off test
    boots only when asked (bhive.modules=1); bhive.modules=0 never."""
    text = INIT.read_text()
    block = re.search(r'case " \$\(cat /proc/cmdline\) " in\n.*?\nesac\n', text, re.S).group(0)
    script = "load_modules() { echo load; }\n" + block.replace("$(cat /proc/cmdline)", cmdline)
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True)
    assert (out.stdout.strip() == "load") == loads, out
