; pvh: a PVH kernel (Xen docs/misc/pvh.pandoc): an ELF with the note
; XEN_ELFNOTE_PHYS32_ENTRY and no Multiboot header, entered in 32-bit
; protected mode with paging off and EBX = hvm_start_info (start_info.h).
; Checks the entry state, the magic and version, and that rsdp_paddr
; points at an RSDP; prints for the host:
;   CMDLINE <string>
;   MODULE <i> size=<n> fnv=<hash> string=<string>
;   MEMMAP <base> <length> <type>
%define TEST_NAME "pvh"
%define NO_MULTIBOOT
%include "../lib/kernel32.inc"

%define SI_MAGIC        0
%define SI_VERSION      4
%define SI_NR_MODULES   12
%define SI_MODLIST      16
%define SI_CMDLINE      24
%define SI_RSDP         32
%define SI_MEMMAP       40
%define SI_MEMMAP_N     48

        section .note.Xen note alloc noexec nowrite align=4
        dd 4                            ; namesz
        dd 4                            ; descsz
        dd 18                           ; XEN_ELFNOTE_PHYS32_ENTRY
        db "Xen", 0
        dd _start

        section .text
main:
        mov ebx, [boot_ebx]
        CHECK_EQ [ebx + SI_MAGIC], 0x336ec578, "hvm_start_info magic"
        mov eax, [ebx + SI_VERSION]
        cmp eax, 1
        CHECK ae, "hvm_start_info version >= 1 (has the memory map)"
        mov eax, cr0
        and eax, 0x80000001
        CHECK_EQ eax, 1, "CR0.PE set and CR0.PG clear at entry"
        pushfd
        pop eax
        and eax, 0x00020300             ; VM, IF, TF
        CHECK_EQ eax, 0, "EFLAGS.IF, TF and VM clear at entry"

        call lock_acquire
        mov esi, msg_cmdline
        call puts
        mov esi, [ebx + SI_CMDLINE]
        call puts
        call newline
        call lock_release

        mov esi, [ebx + SI_RSDP]
        cmp dword [esi], 'RSD '
        CHECK e, "rsdp_paddr points at an RSDP"

        ; modules: {u64 paddr, u64 size, u64 cmdline_paddr, u64 reserved}
        mov ecx, [ebx + SI_NR_MODULES]
        mov esi, [ebx + SI_MODLIST]
        xor edi, edi
.mod:   cmp edi, ecx
        jae .mods_done
        push ecx
        call lock_acquire
        push esi
        mov esi, msg_module
        call puts
        mov eax, edi
        call putdec
        mov esi, msg_size
        call puts
        pop esi
        mov eax, [esi + 8]
        call putdec
        push esi
        mov esi, msg_fnv
        call puts
        pop esi
        push esi
        mov ecx, [esi + 8]
        mov esi, [esi]
        call fnv1a
        call puthex
        mov esi, msg_string
        call puts
        pop esi
        push esi
        mov esi, [esi + 16]
        test esi, esi                   ; (QEMU leaves it 0)
        jz .nostr
        call puts
.nostr: call newline
        pop esi
        call lock_release
        pop ecx
        add esi, 32
        inc edi
        jmp .mod
.mods_done:

        ; the memory map: {u64 addr, u64 size, u32 type, u32 reserved}
        mov ecx, [ebx + SI_MEMMAP_N]
        mov esi, [ebx + SI_MEMMAP]
.mm:    jecxz .mm_done
        push edi
        push esi
        mov edi, esi
        mov esi, msg_memmap
        call put_mmap_entry
        pop esi
        pop edi
        add esi, 24
        dec ecx
        jmp .mm
.mm_done:
        ret

        section .data
msg_cmdline:    db "CMDLINE ", 0
msg_module:     db "MODULE ", 0
msg_size:       db " size=", 0
msg_fnv:        db " fnv=", 0
msg_string:     db " string=", 0
msg_memmap:     db "MEMMAP ", 0
