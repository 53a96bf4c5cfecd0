"""`/bin/bhive-exit`: a 170-byte static x86-64 ELF that ends the VM
through isa-debug-exit (one `out 0xf4, al` with AL=0, so QEMU and bhive
exit with status (0 << 1) | 1 = 1).

Why: busybox has no outb applet, and /dev/port is missing from Debian's
cloud kernel (CONFIG_DEVPORT is off there).  The helper calls
ioperm(0xf4, 4, 1) and then writes the port; it exits 0 if the write
returned (no device: the write is ignored) and 1 if ioperm failed.
Made from bytes here so the kit needs neither nasm nor a C compiler;
tests/boot/test_guestkit.py checks the code against its source below with nasm
when nasm is present.
"""

from __future__ import annotations

import struct

SOURCE = """\
bits 64
mov eax, 173        ; ioperm(0xf4, 4, 1)
mov edi, 0xf4
mov esi, 4
mov edx, 1
syscall
test rax, rax
jnz fail
mov edx, 0xf4
xor eax, eax
out dx, al          ; isa-debug-exit
xor edi, edi
jmp done
fail: mov edi, 1
done: mov eax, 60   ; exit(edi)
syscall
"""

CODE = bytes.fromhex(
    "b8ad000000bff4000000be04000000ba010000000f054885c0750cbaf400"
    "000031c0ee31ffeb05bf01000000b83c0000000f05")

BASE = 0x400000


def elf() -> bytes:
    """A minimal ELF64 executable: header, one PT_LOAD (R+X), the code."""
    ehsize, phsize = 64, 56
    entry = BASE + ehsize + phsize
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    ehdr = ident + struct.pack("<HHIQQQIHHHHHH", 2, 0x3E, 1, entry, ehsize, 0, 0,
                               ehsize, phsize, 1, 0, 0, 0)
    total = ehsize + phsize + len(CODE)
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0, BASE, BASE, total, total, 0x1000)
    return ehdr + phdr + CODE
