"""ELF program headers and notes: the decompressed Linux kernel (vmlinux,
ELF64) and the ELF32/ELF64 kernels of the Multiboot and PVH loaders
(bhive.firmware.multiboot, bhive.firmware.pvh)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

PT_LOAD = 1
PT_NOTE = 4
EM_386 = 0x03
EM_X86_64 = 0x3E
XEN_ELFNOTE_PHYS32_ENTRY = 18     # PVH: the 32-bit physical entry point


class ElfError(ValueError):
    pass


@dataclass(frozen=True)
class Phdr:
    type: int
    flags: int
    offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int
    align: int


@dataclass(frozen=True)
class Note:
    name: str
    type: int
    desc: bytes


@dataclass
class Vmlinux:
    data: bytes
    entry: int               # e_entry: phys_startup_64 for x86-64 vmlinux
    phdrs: list[Phdr]
    bits: int = 64           # ELFCLASS: 32 or 64
    machine: int = EM_X86_64

    @property
    def loads(self) -> list[Phdr]:
        return [p for p in self.phdrs if p.type == PT_LOAD]

    @property
    def phys_start(self) -> int:
        return min(p.paddr for p in self.loads)

    @property
    def phys_end(self) -> int:
        return max(p.paddr + p.memsz for p in self.loads)

    @property
    def startup_64(self) -> int:
        """Physical address of startup_64 (the 64-bit entry): e_entry,
        which vmlinux.lds sets to phys_startup_64.  On 6.1 that is the
        start of the first PT_LOAD; on 6.12 .head.text puts other code
        first (Debian 13: +0xc43), so e_entry is the authority."""
        return self.entry

    def notes(self) -> list[Note]:
        out = []
        for p in self.phdrs:
            if p.type != PT_NOTE:
                continue
            pos, end = p.offset, min(p.offset + p.filesz, len(self.data))
            while pos + 12 <= end:
                namesz, descsz, ntype = struct.unpack_from("<III", self.data, pos)
                pos += 12
                name = self.data[pos:pos + namesz].rstrip(b"\0").decode(errors="replace")
                pos += (namesz + 3) & ~3
                desc = self.data[pos:pos + descsz]
                pos += (descsz + 3) & ~3
                out.append(Note(name, ntype, desc))
        return out

    @property
    def pvh_entry(self) -> int | None:
        """XEN_ELFNOTE_PHYS32_ENTRY (CONFIG_PVH): the 32-bit entry of the
        PVH boot protocol, or None."""
        for n in self.notes():
            if n.name == "Xen" and n.type == XEN_ELFNOTE_PHYS32_ENTRY:
                return int.from_bytes(n.desc[:8], "little")
        return None

    def segments(self) -> list[tuple[int, bytes]]:
        """(guest-physical address, bytes) of every PT_LOAD, zero-filled
        to its memsz (the .bss)."""
        out = []
        for p in self.loads:
            body = self.data[p.offset:p.offset + p.filesz]
            if p.memsz > p.filesz:
                body += bytes(p.memsz - p.filesz)
            out.append((p.paddr, body))
        return out


def parse_elf(data: bytes, machines: tuple[int, ...] = (EM_386, EM_X86_64)) -> Vmlinux:
    """An x86 ELF executable of either class: header and program headers,
    every PT_LOAD checked to lie inside the file."""
    if data[:4] != b"\x7fELF":
        raise ElfError("not an ELF file")
    if len(data) < 52 or data[4] not in (1, 2) or data[5] != 1:
        raise ElfError("not a little-endian ELF32 or ELF64 (truncated header?)")
    bits = 32 if data[4] == 1 else 64
    if bits == 32:
        (_t, e_machine, _v, e_entry, e_phoff, _shoff, _flags, _ehsize, e_phentsize,
         e_phnum) = struct.unpack_from("<HHIIIIIHHH", data, 16)
        fmt, want = "<IIIIIIII", 32
    else:
        if len(data) < 64:
            raise ElfError("truncated ELF64 header")
        (_t, e_machine, _v, e_entry, e_phoff, _shoff, _flags, _ehsize, e_phentsize,
         e_phnum) = struct.unpack_from("<HHIQQQIHHH", data, 16)
        fmt, want = "<IIQQQQQQ", 56
    if e_machine not in machines:
        raise ElfError(f"e_machine {e_machine:#x} is not " + " or ".join(
            {EM_386: "i386", EM_X86_64: "x86-64"}.get(m, hex(m)) for m in machines))
    if e_phentsize != want or e_phnum == 0:
        raise ElfError(f"no ELF{bits} program headers")
    if e_phoff + e_phnum * want > len(data):
        raise ElfError("the program headers run past the end of the file (truncated)")
    phdrs = []
    for i in range(e_phnum):
        if bits == 32:
            t, off, va, pa, fs, ms, fl, al = struct.unpack_from(fmt, data, e_phoff + i * want)
        else:
            t, fl, off, va, pa, fs, ms, al = struct.unpack_from(fmt, data, e_phoff + i * want)
        if t in (PT_LOAD, PT_NOTE) and off + fs > len(data):
            raise ElfError(f"{'PT_LOAD' if t == PT_LOAD else 'PT_NOTE'} {i} runs past the end of the "
                           f"file (truncated)")
        if t == PT_LOAD and ms < fs:
            raise ElfError(f"PT_LOAD {i} has p_memsz < p_filesz")
        phdrs.append(Phdr(t, fl, off, va, pa, fs, ms, al))
    v = Vmlinux(data, e_entry, phdrs, bits, e_machine)
    if not v.loads:
        raise ElfError("no PT_LOAD segment")
    return v


def parse_vmlinux(data: bytes) -> Vmlinux:
    if data[:4] == b"\x7fELF" and len(data) > 5 and data[4] != 2:
        raise ElfError("not a little-endian ELF64")
    return parse_elf(data, machines=(EM_X86_64,))
