; testdev: the rest of QEMU's pc-testdev (hw/misc/pc-testdev.c):
;   0xE0-0xE3  a 4-byte latch; an access of n bytes at 0xE0+k is bytes k..
;              (an access not aligned to its size is invalid, as in QEMU)
;   0xE8-0xEB  the same latch, byte by byte (wider accesses are split)
;   0xE4       flush page: a 4-byte write of an address; reads 0
;   0xFF000000 64 KiB of plain MMIO memory, little-endian, any width
%define TEST_NAME "testdev"
%include "../lib/kernel32.inc"

%define IOMEM 0xff000000

main:
        mov dx, 0xe0
        mov eax, 0x12345678
        out dx, eax
        in eax, dx
        CHECK_EQ eax, 0x12345678, "latch 0xE0: dword written reads back"
        mov dx, 0xe2
        mov ax, 0xbeef
        out dx, ax
        mov dx, 0xe0
        in eax, dx
        CHECK_EQ eax, 0xbeef5678, "latch 0xE2: a word write lands in bytes 2-3"
        mov dx, 0xe1
        in al, dx
        movzx eax, al
        CHECK_EQ eax, 0x56, "latch 0xE1: a byte read returns byte 1"
        mov dx, 0xe8                    ; the byte port is the same latch
        in eax, dx
        CHECK_EQ eax, 0xbeef5678, "byte port 0xE8: a dword read assembles the latch"
        mov dx, 0xeb
        mov al, 0x9a
        out dx, al
        mov dx, 0xe0
        in eax, dx
        CHECK_EQ eax, 0x9aef5678, "byte port 0xEB: a byte write changes latch byte 3"
        mov dx, 0xea
        mov ax, 0x3412
        out dx, ax
        mov dx, 0xe8
        in eax, dx
        CHECK_EQ eax, 0x34125678, "byte port 0xEA: a word write changes bytes 2-3"
        mov dx, 0xe9
        mov ax, 0xffff
        out dx, ax
        mov dx, 0xe8
        in eax, dx
        CHECK_EQ eax, 0x34125678, "byte port 0xE9: an unaligned word write is dropped"

        mov dx, 0xe4
        mov eax, page
        out dx, eax                     ; flush our own data page: nothing may change
        in eax, dx
        CHECK_EQ eax, 0, "flush port 0xE4 reads 0"
        CHECK_EQ [page], 0x600dd00d, "a flushed page keeps its contents"

        mov dword [IOMEM], 0x11223344
        CHECK_EQ [IOMEM], 0x11223344, "iomem: dword written reads back"
        movzx eax, byte [IOMEM + 1]
        CHECK_EQ eax, 0x33, "iomem: a byte read returns byte 1 (little-endian)"
        mov word [IOMEM + 2], 0xaabb
        CHECK_EQ [IOMEM], 0xaabb3344, "iomem: a word write lands in bytes 2-3"
        mov dword [IOMEM + 0xfffc], 0xcafef00d
        CHECK_EQ [IOMEM + 0xfffc], 0xcafef00d, "iomem: the last dword of 64 KiB"
        CHECK_EQ [IOMEM + 0x8000], 0, "iomem: a dword never written reads 0"
        ; a string copy through it, as memcpy-style tests do
        mov esi, pattern
        mov edi, IOMEM + 0x100
        mov ecx, 16
        rep movsb
        mov esi, IOMEM + 0x100
        mov ecx, 16
        call fnv1a
        push eax
        mov esi, pattern
        mov ecx, 16
        call fnv1a
        pop edx
        xchg eax, edx
        mov esi, msg_movs
        call expect_eq
        ret

        section .data
        align 4
page:   dd 0x600dd00d
pattern: db "pc-testdev iomem"
msg_movs: db "iomem: REP MOVSB in and back out", 0
