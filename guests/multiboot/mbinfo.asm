; mbinfo: what a Multiboot v1 loader hands the kernel (Multiboot 0.6.96 §3.2,
; §3.3).  Checks the entry state itself (EAX magic, flat 32-bit segments,
; paging off, IF clear) and the structure's invariants (flags, page-aligned
; modules inside RAM, the kernel and the structure inside type-1 memory),
; and prints what the host must compare with what it asked for:
;   CMDLINE <string>
;   MEM lower=<KiB> upper=<KiB>
;   MMAP <base> <length> <type>          one line per entry
;   MODULE <i> size=<n> fnv=<hash> page_aligned=<0|1> string=<string>
;   LOADER <name>
%define TEST_NAME "mbinfo"
%include "../lib/kernel32.inc"
        extern _end                     ; the linker script's end of the image

%define MBI_FLAGS       0
%define MBI_MEM_LOWER   4
%define MBI_MEM_UPPER   8
%define MBI_CMDLINE     16
%define MBI_MODS_COUNT  20
%define MBI_MODS_ADDR   24
%define MBI_MMAP_LENGTH 44
%define MBI_MMAP_ADDR   48
%define MBI_LOADER_NAME 64
%define WANT_FLAGS      (1 << 0) | (1 << 2) | (1 << 3) | (1 << 6) | (1 << 9)

main:
        CHECK_EQ [boot_eax], MB_BOOT_MAGIC, "EAX = 0x2BADB002 at entry"
        ; the entry state: PE set, PG clear; IF clear; flat segments
        mov eax, cr0
        and eax, 0x80000001
        CHECK_EQ eax, 1, "CR0.PE set and CR0.PG clear at entry"
        pushfd
        pop eax
        and eax, 0x00020200             ; VM, IF
        CHECK_EQ eax, 0, "EFLAGS.IF and EFLAGS.VM clear at entry"
        mov ebx, [boot_ebx]
        mov eax, [ebx + MBI_FLAGS]
        and eax, WANT_FLAGS
        CHECK_EQ eax, WANT_FLAGS, "info flags: memory, cmdline, mods, mmap, loader name"

        mov eax, [ebx + MBI_CMDLINE]
        mov [cmdline], eax
        call lock_acquire
        mov esi, msg_cmdline
        call puts
        mov esi, [cmdline]
        call puts
        call newline
        mov esi, msg_mem
        call puts
        mov eax, [ebx + MBI_MEM_LOWER]
        call putdec
        mov esi, msg_upper
        call puts
        mov eax, [ebx + MBI_MEM_UPPER]
        call putdec
        call newline
        call lock_release

        mov esi, key_token              ; the append string reached the kernel
        call arg_dec
        CHECK nc, "token= found in the command line"
        CHECK_EQ eax, 4242, "token=4242 parsed from the command line"

        ; the memory map
        mov esi, [ebx + MBI_MMAP_ADDR]
        mov edi, esi
        add edi, [ebx + MBI_MMAP_LENGTH]
        xor ebp, ebp                    ; bit 0: kernel inside RAM, bit 1: info inside RAM
.mmap:  cmp esi, edi
        jae .mmap_done
        push edi
        push esi
        lea edi, [esi + 4]              ; the entry after its size field
        mov esi, msg_mmap
        call put_mmap_entry
        pop esi
        pop edi
        cmp dword [esi + 20], 1
        jne .next
        cmp dword [esi + 8], 0          ; below 4 GiB?
        jne .next
        mov eax, _start
        call in_entry
        jnc .k
        or ebp, 1
.k:     mov eax, ebx
        call in_entry
        jnc .next
        or ebp, 2
.next:  add esi, [esi]
        add esi, 4
        jmp .mmap
.mmap_done:
        CHECK_EQ ebp, 3, "the kernel and the info structure lie in type-1 memory"

        ; the modules
        mov ecx, [ebx + MBI_MODS_COUNT]
        mov esi, [ebx + MBI_MODS_ADDR]
        xor edi, edi
.mod:   cmp edi, ecx
        jae .mods_done
        push ecx
        push esi
        mov eax, [esi]
        mov edx, [esi + 4]
        sub edx, eax                    ; size
        call lock_acquire
        push esi
        mov esi, msg_module
        call puts
        mov eax, edi
        call putdec
        mov esi, msg_size
        call puts
        mov eax, edx
        call putdec
        mov esi, msg_fnv
        call puts
        pop esi
        push esi
        mov ecx, edx
        mov esi, [esi]
        call fnv1a
        call puthex
        pop esi
        push esi
        mov eax, [esi]
        test eax, 0xfff
        setz al
        movzx eax, al
        mov esi, msg_aligned
        call puts
        call putdec
        pop esi
        push esi
        mov esi, [esi + 8]
        push esi
        mov esi, msg_string
        call puts
        pop esi
        call puts
        call newline
        pop esi
        call lock_release
        mov eax, [esi]
        test eax, 0xfff
        CHECK z, "module page aligned (header flag 0)"
        cmp dword [esi + 4], _end       ; above the kernel's end
        CHECK ae, "module above the kernel image"
        pop esi
        pop ecx
        add esi, 16
        inc edi
        jmp .mod
.mods_done:

        call lock_acquire
        mov esi, msg_loader
        call puts
        mov esi, [ebx + MBI_LOADER_NAME]
        call puts
        call newline
        call lock_release
        ret

in_entry:                               ; CF=1 if EAX lies in the mmap entry at ESI
        push edx
        mov edx, [esi + 4]
        cmp eax, edx
        jb .no
        add edx, [esi + 12]
        jc .yes                         ; reaches 4 GiB
        cmp eax, edx
        jae .no
.yes:   pop edx
        stc
        ret
.no:    pop edx
        clc
        ret

        section .data
msg_cmdline:    db "CMDLINE ", 0
msg_mem:        db "MEM lower=", 0
msg_upper:      db " upper=", 0
msg_mmap:       db "MMAP ", 0
msg_module:     db "MODULE ", 0
msg_size:       db " size=", 0
msg_fnv:        db " fnv=", 0
msg_aligned:    db " page_aligned=", 0
msg_string:     db " string=", 0
msg_loader:     db "LOADER ", 0
key_token:      db "token=", 0
