"""Bare-metal test kernels written the way kernels for QEMU's `-kernel` are
(guests/multiboot/*.asm: Multiboot v1 ELF32, an a.out-kludge image and a
PVH ELF), booted by the real `bhive run --kernel` on the default platform,
nothing mocked.  Each kernel checks what it can itself (PASS/FAIL lines
over COM1, then isa-debug-exit with its failure count) and prints what
only the host can check (what it was asked to pass: command line, modules,
CPU count, RAM size, memory map).

The same kernels also run under QEMU (TCG, pc-testdev, isa-debug-exit) and
pass there: they encode QEMU's conventions, not ours.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from bhive.firmware import tables
from bhive.guestbuild import build_elf32, build_nasm

MIB = 1 << 20
WATCHDOG = 90
QEMU = "qemu-system-x86_64"


def kernel(name: str):
    if name == "aout":
        return build_nasm("multiboot/aout.asm")
    return build_elf32(f"multiboot/{name}.asm")


def run(bhive, name, *extra, smp=1, memory="64M", append=None, initrd=None, config=None):
    args = ["run"] + ([config] if config else []) + ["--kernel", kernel(name), "--name", f"mb-{name}",
                                                     "--smp", smp, "-m", memory, "--watchdog", WATCHDOG]
    if append is not None:
        args += ["--append", append]
    if initrd is not None:
        args += ["--initrd", initrd]
    proc = bhive.run(*args, *extra, timeout=WATCHDOG + 60)
    return proc, proc.stdout.decode(errors="replace")


def assert_passed(proc, out, name):
    fails = re.findall(r"^FAIL .*$", out, re.M)
    assert not fails, out
    assert f"{name}: failures=0" in out, (out, proc.stderr)
    assert proc.returncode == 1, (proc.returncode, out, proc.stderr)    # (0 << 1) | 1


def lines(out, tag):
    return re.findall(rf"^{tag} (.*?)\r?$", out, re.M)


def e820_lines(memory):
    return [f"0x{e.addr:016x} 0x{e.size:016x} {e.type}" for e in tables.e820(memory)]


def fnv1a(data: bytes) -> int:
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


# -- Multiboot information: command line, memory, memory map, modules ---------------

def test_multiboot_info_cmdline_memory_map_and_modules(bhive, tmp_path):
    one = tmp_path / "one.bin"
    one.write_bytes(bytes((i * 7 + 3) & 0xFF for i in range(10000)))
    two = tmp_path / "two.txt"
    two.write_bytes(b"the second module\n")
    proc, out = run(bhive, "mbinfo", append="token=4242 quiet", initrd=f"{one},{two} arg=1 b")
    assert_passed(proc, out, "mbinfo")
    assert lines(out, "CMDLINE") == [f"{kernel('mbinfo')} token=4242 quiet"]
    assert lines(out, "MEM") == [f"lower=639 upper={(64 * MIB - MIB) // 1024}"]
    assert lines(out, "MMAP") == e820_lines(64 * MIB)
    assert lines(out, "MODULE") == [
        f"0 size=10000 fnv=0x{fnv1a(one.read_bytes()):08x} page_aligned=1 string={one}",
        f"1 size=18 fnv=0x{fnv1a(two.read_bytes()):08x} page_aligned=1 string={two} arg=1 b",
    ]
    assert lines(out, "LOADER") == ["bhive"]


def test_multiboot_memory_map_above_4g(bhive):
    """RAM above 3 GiB is remapped above 4 GiB; the map says so."""
    proc, out = run(bhive, "mbinfo", memory="3584M", append="token=4242")
    assert_passed(proc, out, "mbinfo")
    assert lines(out, "MMAP") == e820_lines(3584 * MIB)
    assert "0x0000000100000000 0x0000000020000000 1" in lines(out, "MMAP")


# -- fw_cfg -------------------------------------------------------------------------------

def test_fw_cfg_keys_read_back(bhive):
    proc, out = run(bhive, "fwcfg", smp=3, memory="96M", append="hello fw")
    assert_passed(proc, out, "fwcfg")
    assert lines(out, "FWCFG") == ["id=0x00000001 cpus=3 max_cpus=3 ram=0x0000000006000000"]
    n = len(tables.e820(96 * MIB))
    assert lines(out, "FILE") == ["0x00000020 4 etc/boot-fail-wait", f"0x00000021 {20 * n} etc/e820"]
    assert lines(out, "E820") == e820_lines(96 * MIB)
    assert lines(out, "CMDLINE") == ["9 hello fw"]


def test_fw_cfg_max_cpus_from_the_config(bhive, tmp_path):
    from support import REPO
    cfg = tmp_path / "maxcpus.toml"
    cfg.write_text((REPO / "configs" / "default.toml").read_text().replace(
        "[devices.fw_cfg]\nport = 0x510\n", "[devices.fw_cfg]\nport = 0x510\nmax_cpus = 8\n"))
    proc, out = run(bhive, "fwcfg", smp=2, config=cfg)
    assert_passed(proc, out, "fwcfg")
    assert lines(out, "FWCFG") == ["id=0x00000001 cpus=2 max_cpus=8 ram=0x0000000004000000"]


# -- isa-debug-exit ------------------------------------------------------------------------

@pytest.mark.parametrize("code,size", [(0, 4), (1, 1), (42, 2), (100, 4)])
def test_exit_status_is_value_shifted_left_or_1(bhive, code, size):
    proc, out = run(bhive, "exit", append=f"code={code} size={size}")
    assert f"EXIT code={code} size={size} port=0x000000f4" in out, out
    assert "FAIL" not in out, out
    assert proc.returncode == ((code << 1) | 1) & 0xFF, (proc.returncode, out, proc.stderr)
    assert f"isa-debug-exit: status {(code << 1) | 1}" in proc.stderr.decode()


def test_exit_port_and_width_are_configurable(bhive, tmp_path):
    from support import REPO
    cfg = tmp_path / "exit501.toml"
    cfg.write_text((REPO / "configs" / "default.toml").read_text().replace(
        "[devices.debug_exit]\nport = 0xf4\niosize = 4\n", "[devices.debug_exit]\nport = 0x501\niosize = 2\n"))
    proc, out = run(bhive, "exit", config=cfg, append="code=5 size=2 port=1281")
    assert proc.returncode == 11, (proc.returncode, out, proc.stderr)
    # 0xF4 is nobody's port now: the write vanishes and the guest halts (status 0)
    proc, out = run(bhive, "exit", config=cfg, append="code=5 size=4")
    assert "FAIL the VM still runs after the isa-debug-exit write" in out, out
    assert proc.returncode == 0, (proc.returncode, out, proc.stderr)


# -- SMP start and interrupt routing --------------------------------------------------------

@pytest.mark.parametrize("smp", [2, 4])
def test_init_sipi_all_but_self_back_to_back(bhive, smp):
    proc, out = run(bhive, "smp", smp=smp)
    assert_passed(proc, out, "smp")
    mask = ((1 << smp) - 1) & ~1
    assert lines(out, "SMP") == [f"cpus={smp} arrived={smp - 1} mask=0x{mask:08x}"]


def test_testdev_lines_reach_the_vector_and_cpu_the_ioapic_names(bhive):
    smp = 4
    proc, out = run(bhive, "irq", smp=smp, append="gsi=1")
    assert_passed(proc, out, "irq")
    got = lines(out, "IRQ")
    pins = {0: 2}
    want = [f"line={n} pin={pins.get(n, n)} vector=0x{base + n:08x} mode={mode} want_cpu={c} got_cpu={c}"
            for mode, base in (("edge", 0x40), ("level", 0x80)) for c in range(smp)
            for n in (0, 3, 5, 10, 11, 14, 16, 19, 23)]
    assert got == want, out


# -- the rest of pc-testdev, ACPI, real mode -------------------------------------------------

def test_testdev_latch_flush_and_iomem(bhive):
    proc, out = run(bhive, "testdev")
    assert_passed(proc, out, "testdev")
    assert len(lines(out, "PASS")) == 15, out


def test_rsdp_found_by_scanning_the_bios_area(bhive):
    proc, out = run(bhive, "rsdp", smp=3)
    assert_passed(proc, out, "rsdp")
    assert lines(out, "RSDP")[0].startswith(f"0x{tables.RSDP_ADDR:08x} revision=2 ")
    assert lines(out, "MADT") == ["cpus=3 ioapic=0xfec00000"]
    assert lines(out, "MPFP") == [f"0x{tables.MP_FLOAT_ADDR:08x}"]


def test_real_mode_bios_state(bhive):
    proc, out = run(bhive, "realmode")
    assert_passed(proc, out, "realmode")
    assert lines(out, "BDA") == ["com1=0x000003f8 ebda=0x00009fc0 basemem=639"]
    assert lines(out, "IVT") == ["iret_entries=256"]
    assert lines(out, "PIC") == ["imr=0x000000fb 0x000000ff"]     # all masked but the cascade


# -- other image formats ------------------------------------------------------------------------

def test_aout_kludge_kernel(bhive):
    proc, out = run(bhive, "aout")
    assert_passed(proc, out, "aout")


def test_pvh_kernel_start_info(bhive, tmp_path):
    mod = tmp_path / "initrd.img"
    mod.write_bytes(b"PVH module " * 300)
    proc, out = run(bhive, "pvh", append="pvh args=1", initrd=str(mod))
    assert_passed(proc, out, "pvh")
    assert lines(out, "CMDLINE") == ["pvh args=1"]
    assert lines(out, "MODULE") == [f"0 size={len(mod.read_bytes())} fnv=0x{fnv1a(mod.read_bytes()):08x} "
                                    f"string={mod}"]
    assert lines(out, "MEMMAP") == e820_lines(64 * MIB)


# -- the peer: the same kernels under QEMU ------------------------------------------------------

QEMU_CASES = {
    "mbinfo": ["-append", "token=4242"],
    "fwcfg": ["-smp", "2,maxcpus=4", "-append", "x"],
    "smp": ["-smp", "4"],
    "irq": ["-smp", "2"],
    "testdev": [],
    "rsdp": ["-smp", "3"],
    "realmode": [],
    "aout": [],
    "pvh": ["-append", "pvh"],
}


@pytest.mark.parametrize("name", list(QEMU_CASES))
def test_kernel_passes_under_qemu_too(name, tmp_path):
    if shutil.which(QEMU) is None:
        pytest.skip(f"{QEMU} is not installed (make deps installs it)")
    argv = [QEMU, "-accel", "tcg", "-m", "64", "-nic", "none", "-display", "none", "-monitor", "none",
            "-serial", "stdio", "-no-reboot", "-device", "pc-testdev",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=4", "-kernel", str(kernel(name)), *QEMU_CASES[name]]
    proc = subprocess.run(argv, capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
    out = proc.stdout.decode(errors="replace")
    assert_passed(proc, out, name)


def test_qemu_exit_status_matches(tmp_path):
    if shutil.which(QEMU) is None:
        pytest.skip(f"{QEMU} is not installed (make deps installs it)")
    argv = [QEMU, "-accel", "tcg", "-m", "64", "-nic", "none", "-display", "none", "-monitor", "none",
            "-serial", "stdio", "-no-reboot", "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
            "-kernel", str(kernel("exit")), "-append", "code=42 size=2"]
    proc = subprocess.run(argv, capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 85, proc.stdout.decode(errors="replace")
