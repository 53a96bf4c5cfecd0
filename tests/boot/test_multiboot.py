"""The Multiboot v1 and PVH loaders' pure parts (bhive.firmware.multiboot,
bhive.firmware.pvh), format detection, the real-mode BIOS data, and bad
images refused by `bhive run` with one error line and status 2."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from bhive import config as config_mod
from bhive import loader
from bhive.accel.base import VmReg
from bhive.firmware import bios, entry32, multiboot, pvh, tables
from bhive.guestbuild import build_elf32, build_nasm
from bhive.linux.elf import parse_elf
from support import REPO

MIB = 1 << 20
E820 = tables.e820(64 * MIB)
LOW_END = 64 * MIB


def elf32(segments, entry, notes=b"", machine=3, bits=32):
    """A minimal ELF executable: one PT_LOAD per (vaddr, paddr, data, memsz),
    plus a PT_NOTE with `notes` when given."""
    phnum = len(segments) + (1 if notes else 0)
    if bits == 32:
        ehsize, phsize = 52, 32
    else:
        ehsize, phsize = 64, 56
    data_off = ehsize + phnum * phsize
    body = b""
    phdrs = b""
    for vaddr, paddr, data, memsz in segments:
        off = data_off + len(body)
        if bits == 32:
            phdrs += struct.pack("<8I", 1, off, vaddr, paddr, len(data), memsz, 7, 0x1000)
        else:
            phdrs += struct.pack("<IIQQQQQQ", 1, 7, off, vaddr, paddr, len(data), memsz, 0x1000)
        body += data
    if notes:
        off = data_off + len(body)
        if bits == 32:
            phdrs += struct.pack("<8I", 4, off, 0, 0, len(notes), len(notes), 4, 4)
        else:
            phdrs += struct.pack("<IIQQQQQQ", 4, 4, off, 0, 0, len(notes), len(notes), 4)
        body += notes
    ident = b"\x7fELF" + bytes([1 if bits == 32 else 2, 1, 1]) + bytes(9)
    if bits == 32:
        hdr = ident + struct.pack("<HHIIIIIHHHHHH", 2, machine, 1, entry, ehsize, 0, 0, ehsize, phsize,
                                  phnum, 40, 0, 0)
    else:
        hdr = ident + struct.pack("<HHIQQQIHHHHHH", 2, machine, 1, entry, ehsize, 0, 0, ehsize, phsize,
                                  phnum, 64, 0, 0)
    return hdr + phdrs + body


def mb_header(flags=0x3, extra=b"", checksum=None):
    if checksum is None:
        checksum = -(multiboot.HEADER_MAGIC + flags) & 0xFFFFFFFF
    return struct.pack("<III", multiboot.HEADER_MAGIC, flags, checksum) + extra


def pvh_note(entry):
    return struct.pack("<III", 4, 4, 18) + b"Xen\0" + struct.pack("<I", entry)


def mb_kernel(paddr=0x100000, vaddr=None, size=0x2000, bss=0x1000, flags=0x3, checksum=None):
    code = (mb_header(flags, checksum=checksum) + b"\xf4" * 16).ljust(size, b"\x90")
    return elf32([(vaddr if vaddr is not None else paddr, paddr, code, size + bss)],
                 (vaddr if vaddr is not None else paddr) + 12)


def plan(data, cmdline="k a=1", modules=(), low_end=LOW_END):
    return multiboot.plan(data, low_end=low_end, e820=E820, cmdline=cmdline, modules=list(modules))


def image(p, gpa, size):
    """Bytes at gpa from a plan's segments (the last write wins, as in RAM)."""
    ram = bytearray(size)
    for seg_gpa, body in p.segments:
        lo, hi = max(seg_gpa, gpa), min(seg_gpa + len(body), gpa + size)
        if lo < hi:
            ram[lo - gpa:hi - gpa] = body[lo - seg_gpa:hi - seg_gpa]
    return bytes(ram)


def cstr(p, addr):
    data = image(p, addr, 4096)
    return data[:data.index(b"\0")].decode()


# -- the header ------------------------------------------------------------------

def test_header_found_4_byte_aligned_in_the_first_8k():
    assert multiboot.find_header(bytes(64) + mb_header()).offset == 64
    assert multiboot.find_header(bytes(66) + mb_header()) is None            # not aligned
    assert multiboot.find_header(bytes(8192) + mb_header()) is None          # too far
    assert multiboot.find_header(bytes(8180) + mb_header()).offset == 8180   # last slot


def test_wrong_checksum_is_an_error_naming_it():
    with pytest.raises(multiboot.MultibootError, match="checksum is wrong"):
        multiboot.find_header(mb_header(checksum=0x12345678))


def test_unknown_required_flags_refused():
    with pytest.raises(multiboot.MultibootError, match="require features"):
        plan(mb_kernel(flags=0x3 | 0x8))
    assert plan(mb_kernel(flags=0x3 | 0x4 | 0x20000)).entry == 0x10000C  # video (ignored), bit 17 optional


# -- ELF kernels -----------------------------------------------------------------------

def test_elf_segments_entry_and_bss():
    p = plan(mb_kernel(size=0x2000, bss=0x3000))
    assert p.format == "elf" and p.entry == 0x10000C
    assert p.kernel_start == 0x100000 and p.kernel_end == 0x105000
    kernel = image(p, 0x100000, 0x5000)
    assert kernel[:4] == struct.pack("<I", multiboot.HEADER_MAGIC) and kernel[0x2000:] == bytes(0x3000)


def test_higher_half_entry_is_translated_to_its_physical_address():
    p = plan(mb_kernel(paddr=0x200000, vaddr=0xC0200000))
    assert p.entry == 0x20000C and p.registers[VmReg.RIP] == 0x20000C


def test_entry_state_is_32_bit_protected_mode_paging_off():
    p = plan(mb_kernel())
    r, d = p.registers, p.descriptors
    assert r[VmReg.RAX] == 0x2BADB002 and r[VmReg.RBX] == multiboot.MB_INFO_ADDR
    assert r[VmReg.CR0] & 1 and not r[VmReg.CR0] & 0x8000_0000 and r[VmReg.EFER] == 0
    assert not r[VmReg.RFLAGS] & (1 << 9) and not r[VmReg.RFLAGS] & (1 << 17)
    cs, ds = d[VmReg.CS], d[VmReg.DS]
    assert (cs.base, cs.limit, cs.access) == (0, 0xFFFFFFFF, entry32.AR_CODE32)      # D=1, G=1
    assert all(d[s] == ds for s in (VmReg.ES, VmReg.SS, VmReg.FS, VmReg.GS))
    assert (ds.base, ds.limit, ds.access) == (0, 0xFFFFFFFF, entry32.AR_DATA32)
    gdt = image(p, entry32.GDT_ADDR, 24)
    assert struct.unpack_from("<Q", gdt, cs.selector)[0] == 0x00CF9B000000FFFF
    assert struct.unpack_from("<Q", gdt, ds.selector)[0] == 0x00CF93000000FFFF


def test_info_structure_cmdline_memory_map_and_modules():
    mods = [multiboot.Module("/m/one.bin", b"\x01" * 5000), multiboot.Module("/m/two.bin x=1", b"two")]
    p = plan(mb_kernel(), cmdline="/k/kernel.elf token=1", modules=mods)
    mbi = image(p, p.info_addr, multiboot.MBI_SIZE)
    flags, lower, upper, bootdev, cmdline, count, mods_addr = struct.unpack_from("<7I", mbi)
    want = (multiboot.MBI_MEMORY | multiboot.MBI_BOOT_DEVICE | multiboot.MBI_CMDLINE | multiboot.MBI_MODS
            | multiboot.MBI_MMAP | multiboot.MBI_LOADER_NAME)
    assert flags == want
    assert (lower, upper) == (639, (64 * MIB - MIB) // 1024)
    assert cstr(p, cmdline) == "/k/kernel.elf token=1"
    assert cstr(p, struct.unpack_from("<I", mbi, multiboot.MBI_LOADER_NAME_OFF)[0]) == "bhive"
    mmap_len, mmap_addr = struct.unpack_from("<II", mbi, multiboot.MBI_MMAP_LENGTH)
    raw = image(p, mmap_addr, mmap_len)
    entries = [struct.unpack_from("<IQQI", raw, off) for off in range(0, mmap_len, 24)]
    assert entries == [(20, e.addr, e.size, e.type) for e in E820]
    assert count == 2 and mods_addr >= p.kernel_end
    table = image(p, mods_addr, 32)
    prev_end = p.kernel_end
    for i, m in enumerate(mods):
        start, end, string, _ = struct.unpack_from("<4I", table, 16 * i)
        assert start % 4096 == 0 and start >= prev_end and end - start == len(m.data)
        assert image(p, start, end - start) == m.data
        assert cstr(p, string) == m.string
        prev_end = end
    # nothing of ours overlaps the kernel
    for gpa, body in p.segments[2:]:
        assert gpa + len(body) <= p.kernel_start or gpa >= p.kernel_end


def test_loader_gives_qemu_style_cmdline_and_module_strings(tmp_path):
    """cfg -> plan: "KERNEL APPEND", modules as "PATH ARGS" (QEMU's -initrd)."""
    kernel = tmp_path / "k.elf"
    kernel.write_bytes(mb_kernel())
    (tmp_path / "a.bin").write_bytes(b"A" * 100)
    (tmp_path / "b.bin").write_bytes(b"B" * 10)
    cfg = config_mod.load(REPO / "configs" / "default.toml", {"memory": "64M", "cpus": 1},
                          {"kind": "kernel", "kernel": str(kernel), "append": "x=1 y",
                           "initrd": f"{tmp_path}/a.bin,{tmp_path}/b.bin arg=2 z"})
    assert cfg.initrd_args == ["", "arg=2 z"]
    mods = loader.modules(cfg)
    assert [m.string for m in mods] == [f"{tmp_path}/a.bin", f"{tmp_path}/b.bin arg=2 z"]
    ram = bytearray(cfg.memory)
    state = loader.load(cfg, memoryview(ram))
    ebx = state.registers[VmReg.RBX]
    assert state.registers[VmReg.RAX] == 0x2BADB002
    cmd = struct.unpack_from("<I", ram, ebx + 16)[0]
    assert ram[cmd:ram.index(b"\0", cmd)].decode() == f"{kernel} x=1 y"
    # the platform's firmware is there too: ACPI RSDP, the real-mode IVT
    assert ram[tables.RSDP_ADDR:tables.RSDP_ADDR + 8] == b"RSD PTR "
    assert ram[0:4] == struct.pack("<HH", bios.IRET_OFFSET, bios.IRET_SEGMENT)


@pytest.mark.parametrize("cut", ["segment", "phdrs", "phentsize"])
def test_broken_elf_refused(cut):
    """The Multiboot header is there, the ELF around it is not whole."""
    data = bytearray(mb_kernel())
    if cut == "segment":
        data = data[:-0x100]                                  # PT_LOAD runs past the end
    elif cut == "phdrs":
        struct.pack_into("<H", data, 44, 0xFFFF)              # e_phnum: past the end
    else:
        struct.pack_into("<H", data, 42, 20)                  # e_phentsize
    with pytest.raises(multiboot.MultibootError, match="truncated|program headers"):
        plan(bytes(data))


def test_a_kernel_loaded_over_the_gdt_keeps_its_bytes():
    p = plan(mb_kernel(paddr=0x0, size=0x2000))
    assert image(p, 0, 4) == struct.pack("<I", multiboot.HEADER_MAGIC)


def test_segment_outside_ram_refused():
    with pytest.raises(multiboot.MultibootError, match="outside RAM"):
        plan(mb_kernel(paddr=0x100000, size=0x2000), low_end=0x101000)
    with pytest.raises(multiboot.MultibootError, match="BIOS area"):
        plan(mb_kernel(paddr=0xF0000))


def test_modules_that_do_not_fit_refused():
    with pytest.raises(multiboot.MultibootError, match="modules need RAM"):
        plan(mb_kernel(), modules=[multiboot.Module("big", bytes(2 * MIB))], low_end=2 * MIB)


def test_elf64_needs_the_aout_kludge():
    data = elf32([(0x100000, 0x100000, mb_header() + bytes(64), 0x1000)], 0x100000, machine=0x3E, bits=64)
    with pytest.raises(multiboot.MultibootError, match="ELF64"):
        plan(data)


# -- the a.out kludge --------------------------------------------------------------------

def test_aout_kludge_uses_the_header_addresses():
    data = build_nasm("multiboot/aout.asm").read_bytes()
    hdr = multiboot.find_header(data)
    assert hdr.flags & multiboot.MB_AOUT_KLUDGE
    p = plan(data)
    assert p.format == "aout-kludge" and p.entry == hdr.entry_addr
    (gpa, body), = p.segments[1:2]          # after the GDT
    assert gpa == hdr.load_addr and len(body) == hdr.bss_end_addr - hdr.load_addr
    loaded = hdr.load_end_addr - hdr.load_addr
    assert body[:loaded] == data[:loaded] and body[loaded:] == bytes(len(body) - loaded)
    assert len(data) > loaded                    # the trailer is in the file, not in memory


def aout(load=0x100000, header_addr=None, load_end=0, bss_end=0, entry=None, size=0x100):
    header_addr = load if header_addr is None else header_addr
    fields = struct.pack("<5I", header_addr, load, load_end, bss_end,
                         load + 0x20 if entry is None else entry)
    return (mb_header(0x10003, fields)).ljust(size, b"\xf4")


def test_aout_kludge_bad_fields_refused():
    with pytest.raises(multiboot.MultibootError, match="above header_addr"):
        plan(aout(load=0x100010, header_addr=0x100000))
    with pytest.raises(multiboot.MultibootError, match="truncated"):
        plan(aout(load_end=0x100000 + 0x1000))
    with pytest.raises(multiboot.MultibootError, match="bss_end_addr"):
        plan(aout(load_end=0x100080, bss_end=0x100040))
    with pytest.raises(multiboot.MultibootError, match="entry point"):
        plan(aout(entry=0x300000))
    with pytest.raises(multiboot.MultibootError, match="cut off"):
        multiboot.find_header(mb_header(0x10003, b"\0" * 8))


# -- PVH -----------------------------------------------------------------------------------

def test_pvh_start_info(tmp_path):
    data = elf32([(0x100000, 0x100000, b"\xf4" * 64, 0x2000)], 0x100000, notes=pvh_note(0x100010))
    assert pvh.pvh_entry(data) == 0x100010 and loader.kernel_format(data) == "pvh"
    mods = [pvh.Module("/m/initrd", b"\x07" * 3000)]
    p = pvh.plan(data, low_end=LOW_END, e820=E820, cmdline="console=ttyS0", modules=mods, rsdp=0xE0000)
    r = p.registers
    assert r[VmReg.RIP] == 0x100010 and r[VmReg.RBX] == pvh.START_INFO_ADDR
    assert r[VmReg.CR0] == entry32.CR0_PE | entry32.CR0_ET and r[VmReg.CR4] == 0
    assert p.descriptors[VmReg.TR].limit == 0x67
    info = image(p, pvh.START_INFO_ADDR, pvh.START_INFO.size)
    magic, version, flags, nmods, modlist, cmdline, rsdp, memmap, nmemmap, res = pvh.START_INFO.unpack(info)
    assert (magic, version, flags, nmods, rsdp, res) == (0x336EC578, 1, 0, 1, 0xE0000, 0)
    assert cstr(p, cmdline) == "console=ttyS0"
    paddr, size, mod_cmd, _ = pvh.MODLIST_ENTRY.unpack(image(p, modlist, 32))
    assert paddr % 4096 == 0 and paddr + size <= LOW_END and paddr >= p.kernel_end
    assert image(p, paddr, size) == mods[0].data and cstr(p, mod_cmd) == "/m/initrd"
    raw = image(p, memmap, 24 * nmemmap)
    assert [pvh.MEMMAP_ENTRY.unpack_from(raw, 24 * i)[:3] for i in range(nmemmap)] == \
        [(e.addr, e.size, e.type) for e in E820]


def test_pvh_errors():
    no_note = elf32([(0x100000, 0x100000, b"\xf4" * 64, 0x2000)], 0x100000)
    with pytest.raises(pvh.PvhError, match="XEN_ELFNOTE_PHYS32_ENTRY"):
        pvh.plan(no_note, low_end=LOW_END, e820=E820, cmdline="")
    outside = elf32([(0x100000, 0x100000, b"\xf4" * 64, 0x2000)], 0x100000, notes=pvh_note(0x100000))
    with pytest.raises(pvh.PvhError, match="outside RAM"):
        pvh.plan(outside, low_end=0x101000, e820=E820, cmdline="")
    bad_entry = elf32([(0x100000, 0x100000, b"\xf4" * 64, 0x2000)], 0x100000, notes=pvh_note(0x500000))
    with pytest.raises(pvh.PvhError, match="not inside"):
        pvh.plan(bad_entry, low_end=LOW_END, e820=E820, cmdline="")


def test_pvh_guest_elf_has_its_note():
    elf = parse_elf(build_elf32("multiboot/pvh.asm").read_bytes())
    assert elf.bits == 32 and elf.pvh_entry == elf.entry


# -- format detection --------------------------------------------------------------------------

def test_format_from_the_image_bytes_in_qemus_order():
    assert loader.kernel_format(build_elf32("multiboot/mbinfo.asm").read_bytes()) == "multiboot"
    assert loader.kernel_format(build_nasm("multiboot/aout.asm").read_bytes()) == "multiboot"
    assert loader.kernel_format(build_elf32("multiboot/pvh.asm").read_bytes()) == "pvh"
    both = elf32([(0x100000, 0x100000, mb_header() + b"\xf4" * 64, 0x2000)], 0x10000C,
                 notes=pvh_note(0x10000C))
    assert loader.kernel_format(both) == "multiboot"          # QEMU tries Multiboot before PVH
    fake_bz = bytearray(0x300)
    fake_bz[0x202:0x206] = b"HdrS"
    fake_bz[0x40:0x4C] = mb_header()
    assert loader.kernel_format(bytes(fake_bz)) == "linux"
    assert loader.kernel_format(b"\x7fELF" + bytes(100)) == "unknown"
    assert loader.kernel_format(b"hello") == "unknown"


# -- real-mode BIOS data ----------------------------------------------------------------------

def test_flat_boot_gets_the_ivt_and_bios_data_area(tmp_path):
    cfg = config_mod.load(REPO / "configs" / "platform.toml")
    ram = bytearray(cfg.memory)
    loader.load(cfg, memoryview(ram))
    ivt = struct.unpack_from("<512H", ram, 0)
    assert all((ivt[2 * v], ivt[2 * v + 1]) == (0xFF53, 0xF000) for v in range(256))
    assert ram[0xFFF53] == 0xCF                                   # IRET
    com1, _, _, _ = struct.unpack_from("<4H", ram, 0x400)
    assert com1 == 0x3F8
    assert struct.unpack_from("<H", ram, 0x40E)[0] == 0x9FC0      # EBDA segment
    assert struct.unpack_from("<H", ram, 0x413)[0] == 639         # KiB of base memory
    assert ram[0x8000:0x8002] != b"\0\0"                           # and the image itself


# -- bad images through the CLI: one line, status 2, nothing started -------------------------

def bad_images(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    good = build_elf32("multiboot/mbinfo.asm").read_bytes()
    out = {}
    def put(name, data, why):
        p = tmp_path / name
        p.write_bytes(data)
        out[name] = (p, why)
    put("truncated.elf", good[:0x1100], "truncated")
    bad_sum = bytearray(good)
    off = multiboot.find_header(good).offset
    bad_sum[off + 8] ^= 0x55
    put("checksum.elf", bytes(bad_sum), "checksum is wrong")
    put("outside.elf", mb_kernel(paddr=0x7000000), "outside RAM")
    put("garbage.bin", b"\x00junk" * 100, "not a Linux bzImage, a Multiboot image or a PVH ELF")
    return out


@pytest.mark.parametrize("name", ["truncated.elf", "checksum.elf", "outside.elf", "garbage.bin"])
def test_bad_image_is_one_error_line_and_status_2(tmp_path, bhive, name):
    path, why = bad_images(tmp_path)[name]
    proc = bhive.run("run", "--kernel", path, "-m", "64M", "--name", "bad-image", timeout=60)
    err = proc.stderr.decode()
    assert proc.returncode == 2, (proc.returncode, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bhive: error: [boot] kernel:") and why in lines[0], err
    assert proc.stdout == b""
