"""The Linux loader's pure parts, on the real Debian kernels of the guest
kit (fetched once, then cached) and on synthetic payloads."""

from __future__ import annotations

import bz2
import gzip
import lzma
import shutil
import struct
import subprocess

import pytest

from bhive import guestkit
from bhive.accel.base import SegDesc, VmReg
from bhive.guestkit import debian
from bhive.linux import (BOOT_PARAMS_ADDR, CMDLINE_ADDR, FIELD_OFFSETS, GDT_ADDR, PML4_ADDR, XLF_KERNEL_64,
                         BzImageError, decompress, e820_table, parse_bzimage, parse_vmlinux, plan_load)
from bhive.linux import bzimage as bz

KERNELS = {"bookworm-cloud": "lz4", "bookworm-generic": "xz", "trixie-generic": "zstd"}
MIB = 1 << 20


@pytest.fixture(scope="module")
def online():
    ok, why = debian.mirror_reachable()
    if not ok:
        pytest.skip(f"Debian package mirror unreachable: {why}")


@pytest.fixture(scope="module", params=list(KERNELS))
def kernel(request, online):
    k = guestkit.fetch_kernel(request.param)
    image = parse_bzimage(k.vmlinuz.read_bytes())
    return request.param, k, image, parse_vmlinux(image.vmlinux())


# -- boot.rst offsets ----------------------------------------------------------

def test_header_offsets_match_boot_rst():
    expect = {"setup_sects": 0x1F1, "syssize": 0x1F4, "boot_flag": 0x1FE, "header": 0x202, "version": 0x206,
              "type_of_loader": 0x210, "loadflags": 0x211, "code32_start": 0x214, "ramdisk_image": 0x218,
              "ramdisk_size": 0x21C, "heap_end_ptr": 0x224, "cmd_line_ptr": 0x228, "initrd_addr_max": 0x22C,
              "kernel_alignment": 0x230, "relocatable_kernel": 0x234, "xloadflags": 0x236,
              "cmdline_size": 0x238, "payload_offset": 0x248, "payload_length": 0x24C, "setup_data": 0x250,
              "pref_address": 0x258, "init_size": 0x260, "handover_offset": 0x264, "kernel_info_offset": 0x268}
    for name, off in expect.items():
        assert FIELD_OFFSETS[name] == off, name


# -- real kernels ------------------------------------------------------------------

def test_header_sane(kernel):
    name, k, image, _ = kernel
    h = image.header
    assert h.header == 0x53726448 and h.boot_flag == 0xAA55
    assert h.version >= 0x020C
    assert 1 <= h.setup_sects <= 64
    assert h.xloadflags & XLF_KERNEL_64 and h.relocatable_kernel
    assert h.pref_address == 0x1000000
    assert h.kernel_alignment >= 2 * MIB and h.kernel_alignment & (h.kernel_alignment - 1) == 0
    # syssize covers the payload; a signed image has its signature after it
    assert h.payload_offset + h.payload_length <= h.syssize * 16 <= len(image.data) - image.setup_size
    assert len(image.kernel) == h.syssize * 16
    assert h.init_size > len(image.kernel)
    assert h.cmdline_size >= 255
    assert image.version_string.startswith(k.release + " ")
    assert bz.compression(image.payload) == KERNELS[name]


def test_payload_is_the_vmlinux(kernel):
    name, k, image, v = kernel
    expect = struct.unpack("<I", image.payload[-4:])[0]
    assert len(v.data) == expect
    assert v.data[:4] == b"\x7fELF"
    assert v.phys_start == 0x1000000 and v.loads[0].vaddr == 0xFFFFFFFF81000000
    # e_entry is phys_startup_64, inside the first (text) PT_LOAD
    first = v.loads[0]
    assert first.paddr <= v.entry < first.paddr + first.filesz
    assert v.startup_64 == v.entry
    if name.startswith("bookworm"):
        assert v.entry == first.paddr          # 6.1: startup_64 opens .text
    # startup_64 opens with `lea ...(%rip), %rsp` (6.1) or `mov %rsi, %r15` (6.12)
    code = v.data[first.offset + v.entry - first.paddr:][:3]
    assert code in (b"\x48\x8d\x25", b"\x49\x89\xf7"), code.hex()
    assert v.phys_end <= v.phys_start + image.header.init_size
    # CONFIG_PVH=y in Debian: the PVH entry note exists and is inside the text
    assert f"CONFIG_PVH=y" in k.config.read_text()
    assert v.pvh_entry is not None and first.paddr <= v.pvh_entry < first.paddr + first.filesz


def _e820_from(bp: bytes) -> list[tuple[int, int, int]]:
    n = bp[0x1E8]
    return [struct.unpack_from("<QQI", bp, 0x2D0 + 20 * i) for i in range(n)]


def test_load_plan(kernel):
    name, k, image, v = kernel
    initrd = b"\x1f\x8b" + bytes(3 * MIB)
    cmdline = "console=ttyS0 panic=-1 bhive.test=1"
    plan = plan_load(image, 1024 * MIB, cmdline, initrd, vmlinux=v)
    segs = dict(plan.segments)
    bp = segs[BOOT_PARAMS_ADDR]
    assert len(bp) == 4096 and plan.boot_params_addr == BOOT_PARAMS_ADDR
    # zero-page.rst / boot.rst offsets
    assert bp[0x1F1:0x1F1 + len(image.header_bytes)][:0x11] == image.data[0x1F1:0x202]
    assert bp[0x202:0x206] == b"HdrS"
    assert bp[0x210] == 0xFF                                  # type_of_loader
    assert bp[0x211] & 0x01                                   # LOADED_HIGH
    assert struct.unpack_from("<I", bp, 0x218)[0] == plan.initrd_addr
    assert struct.unpack_from("<I", bp, 0x21C)[0] == len(initrd)
    assert struct.unpack_from("<I", bp, 0x228)[0] == CMDLINE_ADDR
    assert struct.unpack_from("<III", bp, 0x0C0) == (0, 0, 0)  # ext_ramdisk_image/size, ext_cmd_line_ptr
    assert bp[0x1EF] == 0                                     # sentinel
    assert segs[CMDLINE_ADDR] == cmdline.encode() + b"\0"
    assert segs[plan.initrd_addr] == initrd
    # initrd: page aligned, above the kernel, below initrd_addr_max and RAM end
    assert plan.initrd_addr % 4096 == 0
    assert plan.initrd_addr >= plan.kernel_end
    assert plan.initrd_addr + len(initrd) <= min(1024 * MIB, image.header.initrd_addr_max + 1)
    # e820: sorted, disjoint, all the RAM there, loaded things inside usable RAM
    e820 = _e820_from(bp)
    assert e820 == [(e.addr, e.size, e.type) for e in plan.e820]
    for (a, s, _), (b, _, _) in zip(e820, e820[1:]):
        assert a + s <= b
    ram = [(a, s) for a, s, t in e820 if t == 1]
    assert sum(s for _, s in ram) == 1024 * MIB - 0x60400     # less EBDA..1 MiB
    for gpa, body in plan.segments:
        assert any(a <= gpa and gpa + len(body) <= a + s for a, s in ram), hex(gpa)
    # segments do not overlap
    spans = sorted((gpa, gpa + len(b)) for gpa, b in plan.segments)
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert end <= start
    # the kernel PT_LOADs are there at their physical addresses
    for p in v.loads:
        assert segs[p.paddr][:64] == v.data[p.offset:p.offset + 64]
    # CPU state for the 64-bit entry
    r, d = plan.registers, plan.descriptors
    assert r[VmReg.RIP] == plan.entry == v.entry
    assert r[VmReg.RSI] == BOOT_PARAMS_ADDR
    assert r[VmReg.RFLAGS] & 0x200 == 0
    assert r[VmReg.CR0] & 0x8000_0001 == 0x8000_0001 and r[VmReg.CR4] & 0x20
    assert r[VmReg.EFER] & 0x500 == 0x500 and r[VmReg.CR3] == PML4_ADDR
    assert d[VmReg.CS] == SegDesc(0, 0xFFFFFFFF, 0xA09B, 0x10)
    for s in (VmReg.DS, VmReg.ES, VmReg.SS):
        assert d[s].selector == 0x18 and d[s].access & 0x80
    assert d[VmReg.GDTR].base == GDT_ADDR
    gdt = segs[GDT_ADDR]
    cs = struct.unpack_from("<Q", gdt, 0x10)[0]
    ds = struct.unpack_from("<Q", gdt, 0x18)[0]
    assert (cs >> 53) & 1 and not (cs >> 54) & 1 and (cs >> 47) & 1     # L=1, D=0, P=1
    assert (ds >> 40) & 0x1F == 0x13 and (ds >> 47) & 1                  # data RW, P=1
    # the page tables identity-map the entry, boot_params, cmdline, initrd
    pt = segs[PML4_ADDR]

    def walk(va: int) -> int:
        def entry(table_gpa, idx):
            off = table_gpa - PML4_ADDR + 8 * idx
            return struct.unpack_from("<Q", pt, off)[0]
        e = entry(PML4_ADDR, (va >> 39) & 511)
        assert e & 1
        e = entry(e & ~0xFFF, (va >> 30) & 511)
        assert e & 1
        e = entry(e & ~0xFFF, (va >> 21) & 511)
        assert e & 0x81 == 0x81
        return (e & ~0x1FFFFF & ((1 << 52) - 1)) | (va & 0x1FFFFF)
    for va in (plan.entry, BOOT_PARAMS_ADDR, CMDLINE_ADDR, plan.initrd_addr, plan.kernel_end - 1,
               0xFFFF_F000):
        assert walk(va) == va


def test_bzimage_mode(kernel):
    name, k, image, v = kernel
    plan = plan_load(image, 512 * MIB, "console=ttyS0", mode="bzimage")
    assert plan.entry == 0x1000000 + 0x200
    assert dict(plan.segments)[0x1000000] == image.kernel
    assert plan.initrd_size == 0 and struct.unpack_from("<I", dict(plan.segments)[BOOT_PARAMS_ADDR], 0x218)[0] == 0


def test_plan_refuses_small_ram(kernel):
    name, k, image, v = kernel
    with pytest.raises(BzImageError):
        plan_load(image, 48 * MIB, "console=ttyS0", b"x" * MIB, vmlinux=v)


def test_copy_into(kernel):
    name, k, image, v = kernel
    plan = plan_load(image, 256 * MIB, "x", b"\x1f\x8b" + bytes(100), vmlinux=v)
    ram = bytearray(256 * MIB)
    plan.copy_into(ram, [(0, 256 * MIB, 0)])
    assert ram[BOOT_PARAMS_ADDR + 0x202:BOOT_PARAMS_ADDR + 0x206] == b"HdrS"
    assert ram[plan.entry:plan.entry + 3] in (b"\x48\x8d\x25", b"\x49\x89\xf7")


# -- pure pieces -------------------------------------------------------------------

def test_e820_high_memory_and_reserved():
    t = e820_table([(0, 0xC000_0000), (0x1_0000_0000, 0x4000_0000)], [(0xBFFF_0000, 0x10000)])
    assert [(e.addr, e.size, e.type) for e in t] == [
        (0, 0x9FC00, 1), (0x9FC00, 0x400, 2), (0xF0000, 0x10000, 2), (0x100000, 0xBFFF_0000 - 0x100000, 1),
        (0xBFFF_0000, 0x10000, 2), (0x1_0000_0000, 0x4000_0000, 1)]


def _with_size(comp: bytes, raw: bytes) -> bytes:
    return comp + struct.pack("<I", len(raw))


RAW = (b"bhive " * 5000 + bytes(range(256)) * 40 + b"\x7fELF" * 3000)


@pytest.mark.parametrize("kind,comp", [
    ("gzip", lambda b: gzip.compress(b)),
    ("xz", lambda b: lzma.compress(b, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)),
    ("lzma", lambda b: lzma.compress(b, format=lzma.FORMAT_ALONE)),
    ("bzip2", lambda b: bz2.compress(b)),
])
def test_decompress_stdlib_formats(kind, comp):
    payload = _with_size(comp(RAW), RAW)
    assert bz.compression(payload) == kind
    assert decompress(payload) == RAW


@pytest.mark.skipif(shutil.which("zstd") is None, reason="zstd program not installed")
def test_decompress_zstd():
    comp = subprocess.run(["zstd", "-19", "-c", "-q"], input=RAW, capture_output=True, check=True).stdout
    assert decompress(_with_size(comp, RAW)) == RAW


@pytest.mark.skipif(shutil.which("lz4") is None, reason="lz4 program not installed")
def test_decompress_lz4_legacy_pure_python(monkeypatch):
    raw = RAW * 40                       # > one legacy block? no: 8 MiB; many sequences and overlaps
    comp = subprocess.run(["lz4", "-l", "-9", "-c", "-q"], input=raw, capture_output=True, check=True).stdout
    monkeypatch.setitem(__import__("sys").modules, "lz4", None)     # force the pure-Python decoder
    assert decompress(_with_size(comp, raw)) == raw


def test_lz4_block_decoder_overlap():
    # token: 1 literal, match len 4+3=7 at offset 1 -> "a" * 8; then 2 literals "bc"
    block = bytes([0x13]) + b"a" + b"\x01\x00" + bytes([0x20]) + b"bc"
    out = bytearray()
    bz._lz4_block_into(block, out)
    assert out == b"a" * 8 + b"bc"


def test_bad_images():
    with pytest.raises(BzImageError):
        parse_bzimage(bytes(8192))
    with pytest.raises(BzImageError):
        bz.compression(b"\0\0\0\0")


# -- the cache of decompressed kernels ------------------------------------------

class _Image:
    """What cached_vmlinux asks of a BzImage: the payload and its decompression."""
    def __init__(self, payload: bytes):
        self.payload = payload
        self.decompressions = 0

    def vmlinux(self) -> bytes:
        self.decompressions += 1
        return decompress(self.payload)


def test_decompressed_kernel_is_cached_by_payload_content(tmp_path, monkeypatch):
    from bhive.linux import cached_vmlinux, vmlinux_file
    from bhive.linux.cache import vmlinux_path
    monkeypatch.setenv("BHIVE_CACHE", str(tmp_path))
    xz = _with_size(lzma.compress(RAW, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32), RAW)
    first = _Image(xz)
    assert cached_vmlinux(first) == RAW and first.decompressions == 1
    path = vmlinux_path(first)
    assert path.parent == tmp_path / "vmlinux" and path.read_bytes() == RAW
    again = _Image(xz)                                  # a later launch: same content, no decompression
    assert cached_vmlinux(again) == RAW and again.decompressions == 0
    assert vmlinux_file(again) == path and again.decompressions == 0
    other = _Image(_with_size(gzip.compress(RAW + b"x"), RAW + b"x"))   # other content: its own entry
    assert vmlinux_path(other) != path
    assert cached_vmlinux(other) == RAW + b"x" and other.decompressions == 1
    assert sorted(p.name for p in (tmp_path / "vmlinux").iterdir()) == sorted([path.name, vmlinux_path(other).name])
