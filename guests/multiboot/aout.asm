; aout: a Multiboot kernel in the "a.out kludge" form (Multiboot 0.6.96
; §3.1.3): a flat binary (nasm -f bin) whose header, with flag 16 set,
; gives the addresses itself: load_addr, load_end_addr (the file beyond it
; is not loaded), bss_end_addr (zeroed up to there) and entry_addr.  The
; file carries a trailer after load_end_addr whose address lies in the
; .bss: the loader must zero it, not copy it.
%define TEST_NAME "aout"
%define NO_MULTIBOOT
%define LOAD 0x100000
        org LOAD
        section .text
header: dd 0x1BADB002
        dd 0x00010003                   ; page align, memory info, address fields valid
        dd -(0x1BADB002 + 0x00010003)
        dd header                       ; header_addr
        dd LOAD                         ; load_addr
        dd load_end                     ; load_end_addr: the end of .data
        dd bss_end                      ; bss_end_addr
        dd _start                       ; entry_addr
%include "../lib/kernel32.inc"

main:
        CHECK_EQ [boot_eax], MB_BOOT_MAGIC, "EAX = 0x2BADB002 at entry"
        mov ebx, [boot_ebx]
        test dword [ebx], 1 << 6
        CHECK nz, "info flags: a memory map"
        mov eax, trailer
        cmp eax, load_end
        CHECK ae, "the trailer lies past load_end_addr"
        mov eax, trailer
        cmp eax, bss_end
        CHECK b, "the trailer lies inside the bss"
        mov esi, trailer
        mov ecx, trailer_end - trailer
        xor eax, eax
.z:     or al, [esi]
        inc esi
        loop .z
        movzx eax, al
        CHECK_EQ eax, 0, "bytes past load_end_addr are zeroed bss, not loaded"
        ret

        section .data
load_end:                               ; the last of the loaded image
        section .trailer progbits follows=.data
trailer:
        times 64 db 0xa5                ; in the file, never in memory
trailer_end:
        section .bss
        resb 64
bss_end:
