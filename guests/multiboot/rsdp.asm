; rsdp: find the ACPI tables the way legacy software does (ACPI 6.5
; §5.2.5.1): scan the first KiB of the EBDA (segment at 0x40E) and then
; 0xE0000-0xFFFFF on 16-byte boundaries for "RSD PTR " with a valid
; checksum; follow the RSDT (and the XSDT, revision >= 2) to the MADT and
; count its enabled processors, which must be the CPU count fw_cfg gives.
; Also the MP floating pointer "_MP_" (MP spec 1.4 §4: EBDA, then
; 0xF0000-0xFFFFF).
;   RSDP <address> revision=<n> rsdt=<hex> xsdt=<hex>
;   MADT cpus=<n> ioapic=<hex>
;   MPFP <address>
%define TEST_NAME "rsdp"
%include "../lib/kernel32.inc"
%include "../lib/fwcfg32.inc"

main:
        ; the EBDA's first KiB, then the BIOS area
        movzx esi, word [0x40e]
        shl esi, 4
        lea edi, [esi + 1024]
        call find_rsdp
        jnc .found
        mov esi, 0xe0000
        mov edi, 0x100000
        call find_rsdp
.found: CHECK nc, "RSDP found by scanning (EBDA, 0xE0000-0xFFFFF)"
        jc .mp
        mov ebx, esi                    ; EBX = RSDP
        call lock_acquire
        mov esi, msg_rsdp
        call puts
        mov eax, ebx
        call puthex
        mov esi, msg_rev
        call puts
        movzx eax, byte [ebx + 15]
        call putdec
        mov esi, msg_rsdt
        call puts
        mov eax, [ebx + 16]
        call puthex
        mov esi, msg_xsdt
        call puts
        mov eax, [ebx + 24]
        mov edx, [ebx + 28]
        cmp byte [ebx + 15], 2
        jae .x
        xor eax, eax
        xor edx, edx
.x:     call puthex64
        call newline
        call lock_release
        cmp byte [ebx + 15], 2
        jb .rsdt
        mov esi, ebx
        mov ecx, [ebx + 20]             ; ACPI 2.0+: Length
        call sum8
        CHECK z, "RSDP extended checksum (whole structure) is 0"
        mov esi, [ebx + 24]
        mov eax, 'XSDT'
        call check_sdt
        CHECK z, "XSDT signature and checksum"
.rsdt:  mov esi, [ebx + 16]
        mov eax, 'RSDT'
        call check_sdt
        CHECK z, "RSDT signature and checksum"
        jnz .mp
        ; the RSDT's entries: 32-bit pointers after the 36-byte header
        mov ecx, [esi + 4]
        sub ecx, 36
        shr ecx, 2
        lea edi, [esi + 36]
        xor ebp, ebp
.entry: jecxz .entries_done
        mov esi, [edi]
        cmp dword [esi], 'APIC'
        jne .next
        mov ebp, esi
.next:  add edi, 4
        dec ecx
        jmp .entry
.entries_done:
        test ebp, ebp
        CHECK nz, "the RSDT lists a MADT (APIC)"
        jz .mp
        mov esi, ebp
        mov eax, 'APIC'
        call check_sdt
        CHECK z, "MADT checksum"
        ; count enabled processor local APICs (type 0, flags bit 0)
        mov ecx, [ebp + 4]
        lea edi, [ebp + 44]
        lea ecx, [ebp + ecx]
        xor ebx, ebx                    ; processors
        xor edx, edx                    ; IOAPIC address
.madt:  cmp edi, ecx
        jae .madt_done
        cmp byte [edi], 0
        jne .io
        test byte [edi + 4], 1
        jz .skip
        inc ebx
        jmp .skip
.io:    cmp byte [edi], 1
        jne .skip
        mov edx, [edi + 4]
.skip:  movzx eax, byte [edi + 1]
        test eax, eax
        jz .madt_done
        add edi, eax
        jmp .madt
.madt_done:
        call lock_acquire
        mov esi, msg_madt
        call puts
        mov eax, ebx
        call putdec
        mov esi, msg_ioapic
        call puts
        mov eax, edx
        call puthex
        call newline
        call lock_release
        mov ax, K_NB_CPUS
        call fw_select
        call fw_read16
        mov edx, eax
        mov eax, ebx
        mov esi, msg_cpus
        call expect_eq

.mp:    movzx esi, word [0x40e]
        shl esi, 4
        lea edi, [esi + 1024]
        call find_mp
        jnc .mp_found
        mov esi, 0xf0000
        mov edi, 0x100000
        call find_mp
.mp_found:
        CHECK nc, "MP floating pointer found by scanning (EBDA, 0xF0000-0xFFFFF)"
        jc .done
        call lock_acquire
        mov eax, esi
        mov esi, msg_mpfp
        call puts
        call puthex
        call newline
        call lock_release
.done:  ret

find_rsdp:                              ; ESI..EDI -> ESI, CF clear if found
.scan:  cmp esi, edi
        jae .no
        cmp dword [esi], 'RSD '
        jne .next
        cmp dword [esi + 4], 'PTR '
        jne .next
        push esi
        mov ecx, 20                     ; ACPI 1.0 checksum: the first 20 bytes
        call sum8
        pop esi
        jz .yes
.next:  add esi, 16
        jmp .scan
.yes:   clc
        ret
.no:    stc
        ret

find_mp:                                ; ESI..EDI -> ESI, CF clear if found
.scan:  cmp esi, edi
        jae .no
        cmp dword [esi], '_MP_'
        jne .next
        movzx ecx, byte [esi + 8]       ; length in 16-byte units
        shl ecx, 4
        push esi
        call sum8
        pop esi
        jz .yes
.next:  add esi, 16
        jmp .scan
.yes:   clc
        ret
.no:    stc
        ret

check_sdt:                              ; ESI table, EAX signature -> ZF
        cmp [esi], eax
        jne .out
        push ecx
        push esi
        mov ecx, [esi + 4]
        call sum8
        pop esi
        pop ecx
.out:   ret

sum8:                                   ; ESI, ECX bytes -> ZF if the byte sum is 0
        push eax
        push ecx
        push esi
        xor eax, eax
.b:     add al, [esi]
        inc esi
        loop .b
        test al, al
        pop esi
        pop ecx
        pop eax
        ret

        section .data
msg_rsdp:   db "RSDP ", 0
msg_rev:    db " revision=", 0
msg_rsdt:   db " rsdt=", 0
msg_xsdt:   db " xsdt=", 0
msg_madt:   db "MADT cpus=", 0
msg_ioapic: db " ioapic=", 0
msg_mpfp:   db "MPFP ", 0
msg_cpus:   db "the MADT has one enabled processor per CPU fw_cfg counts", 0
