; realmode: what legacy real-mode code finds when a test kernel drops back
; to real mode (as kvm-unit-tests' realmode test does): the BIOS data area,
; an interrupt vector table whose default entries IRET, and the 8259A pair
; as a BIOS leaves it, IRQ0-7 at vectors 0x08-0x0F and IRQ8-15 at 0x70-0x77.
; A 16-bit blob copied to 0x8000 runs in real mode with the IVT at 0
; (IDTR 0/0x3FF): `int 0x81` must come back; with our handlers in the IVT
; at 0x0B and 0x72, pc-testdev's line 3 and line 10 (0x2003, 0x200A, an
; edge each, through the PIC since every IOAPIC RTE is masked) must arrive
; there (each raised, and lowered by its handler before the EOI, so it
; works whether the ELCR makes the line edge- or level-triggered).  Then
; back to protected mode to report.
;   BDA com1=<hex> ebda=<hex> basemem=<KiB>
;   IVT iret_entries=<n>             entries whose target byte is IRET (0xCF)
;   PIC imr=<master> <slave>         the masks the BIOS left
%define TEST_NAME "realmode"
%include "../lib/kernel32.inc"

%define BLOB    0x8000                  ; real-mode CS = 0x0800
%define R(x)    (BLOB + (x) - rm_blob)  ; a blob label's linear address

main:
        ; the BIOS data area
        movzx eax, word [0x400]
        CHECK_EQ eax, 0x3f8, "BDA: COM1 base at 0x400 is 0x3F8"
        movzx eax, word [0x413]
        shl eax, 10
        cmp eax, 0xa0000
        CHECK be, "BDA: base memory at 0x413 is at most 640 KiB"
        movzx edx, word [0x40e]
        shl edx, 4
        cmp edx, eax
        CHECK ae, "BDA: the EBDA (segment at 0x40E) lies above base memory"
        call lock_acquire
        mov esi, msg_bda
        call puts
        movzx eax, word [0x400]
        call puthex
        mov esi, msg_ebda
        call puts
        movzx eax, word [0x40e]
        call puthex
        mov esi, msg_basemem
        call puts
        movzx eax, word [0x413]
        call putdec
        call newline
        call lock_release
        ; the IVT: count entries whose target is an IRET
        xor ecx, ecx
        xor ebx, ebx
.ivt:   movzx eax, word [ecx * 4 + 2]   ; segment
        shl eax, 4
        movzx edx, word [ecx * 4]       ; offset
        add eax, edx
        cmp byte [eax], 0xcf
        jne .n
        inc ebx
.n:     inc ecx
        cmp ecx, 256
        jb .ivt
        call lock_acquire
        mov esi, msg_ivt
        call puts
        mov eax, ebx
        call putdec
        call newline
        call lock_release
        movzx eax, word [0x81 * 4 + 2]
        shl eax, 4
        movzx edx, word [0x81 * 4]
        add eax, edx
        movzx eax, byte [eax]
        CHECK_EQ eax, 0xcf, "IVT: vector 0x81 points at an IRET"

        ; down to real mode and back
        mov esi, rm_blob
        mov edi, BLOB
        mov ecx, rm_blob_end - rm_blob
        rep movsb
        mov [saved_esp], esp
        cli
        lidt [real_idt]
        jmp 0x18:R(rm16)
pm_back:
        mov ax, 0x10
        mov ds, ax
        mov es, ax
        mov fs, ax
        mov gs, ax
        mov ss, ax
        mov esp, [saved_esp]
        lidt [idt_desc]

        movzx eax, byte [R(r_int)]
        CHECK_EQ eax, 1, "real mode: INT 0x81 through the default IVT entry returns"
        call lock_acquire
        mov esi, msg_pic
        call puts
        movzx eax, byte [R(r_imr_m)]
        call puthex
        mov al, ' '
        call putc
        movzx eax, byte [R(r_imr_s)]
        call puthex
        call newline
        call lock_release
        movzx eax, byte [R(r_0b)]
        CHECK_EQ eax, 1, "real mode: ISA line 3 arrives at vector 0x0B (master PIC base 0x08)"
        movzx eax, byte [R(r_72)]
        CHECK_EQ eax, 1, "real mode: ISA line 10 arrives at vector 0x72 (slave PIC base 0x70)"
        movzx eax, byte [R(r_other)]
        CHECK_EQ eax, 0, "real mode: neither line reached another vector"
        ret

        section .data
        align 4
real_idt:
        dw 0x3ff
        dd 0
saved_esp:  dd 0
msg_bda:    db "BDA com1=", 0
msg_ebda:   db " ebda=", 0
msg_basemem: db " basemem=", 0
msg_ivt:    db "IVT iret_entries=", 0
msg_pic:    db "PIC imr=", 0

        section .text
        bits 16
rm_blob:                                ; copied to BLOB; offsets are from here
rm16:   mov ax, 0x20                    ; 16-bit protected mode: 64 KiB data segments
        mov ds, ax
        mov es, ax
        mov ss, ax
        mov eax, cr0
        and al, 0xfe
        mov cr0, eax
        jmp (BLOB >> 4):(rm_real - rm_blob)
rm_real:
        xor ax, ax
        mov ds, ax
        mov es, ax
        mov ss, ax
        mov sp, 0x7000
        sti
        int 0x81                        ; the default entry: IRET
        mov byte [cs:r_int - rm_blob], 1
        ; our handlers at 0x0B (IRQ3) and 0x72 (IRQ10); a catch-all for the
        ; vector either would reach with another PIC base
        cli
        mov dword [0x0b * 4], ((BLOB >> 4) << 16) | (h0b - rm_blob)
        mov dword [0x72 * 4], ((BLOB >> 4) << 16) | (h72 - rm_blob)
        mov dword [0x53 * 4], ((BLOB >> 4) << 16) | (hother - rm_blob)  ; IRQ3 at base 0x50
        mov dword [0x23 * 4], ((BLOB >> 4) << 16) | (hother - rm_blob)  ; IRQ3 at base 0x20
        mov dword [0x2a * 4], ((BLOB >> 4) << 16) | (hother - rm_blob)  ; IRQ10 at base 0x28
        in al, 0x21
        mov [cs:r_imr_m - rm_blob], al
        and al, ~((1 << 3) | (1 << 2))  ; IRQ3, and the cascade
        out 0x21, al
        in al, 0xa1
        mov [cs:r_imr_s - rm_blob], al
        and al, ~(1 << 2)               ; IRQ10
        out 0xa1, al
        sti
        mov dx, 0x2003                  ; raise line 3; the handler lowers it
        mov al, 1                       ; (so it works edge- or level-triggered)
        out dx, al
        mov si, r_0b - rm_blob
        call wait_flag
.l10:   mov dx, 0x200a                  ; IRQ10: level-triggered in a PC's ELCR
        mov al, 1
        out dx, al
        mov si, r_72 - rm_blob
        call wait_flag
.done:  cli
        xor al, al                      ; both lines low, whatever happened
        mov dx, 0x2003
        out dx, al
        mov dx, 0x200a
        out dx, al
        mov al, [cs:r_imr_m - rm_blob]
        out 0x21, al
        mov al, [cs:r_imr_s - rm_blob]
        out 0xa1, al
        mov eax, cr0
        or al, 1
        mov cr0, eax
        jmp dword 0x08:pm_back

wait_flag:                              ; until [cs:si] or r_other is set, at most 5 s
        push ax                         ; (RTC seconds; works under any VMM)
        push bx
        push cx
        mov cx, 5
        xor al, al
        out 0x70, al
        in al, 0x71
        mov bl, al
.poll:  cmp byte [cs:si], 0
        jne .out
        cmp byte [cs:r_other - rm_blob], 0
        jne .out
        xor al, al
        out 0x70, al
        in al, 0x71
        cmp al, bl
        je .poll
        mov bl, al
        loop .poll
.out:   pop cx
        pop bx
        pop ax
        ret

h0b:    inc byte [cs:r_0b - rm_blob]
        push ax
        push dx
        mov dx, 0x2003                  ; lower the line, then EOI
        xor al, al
        out dx, al
        mov al, 0x20
        out 0x20, al
        pop dx
        pop ax
        iret
h72:    inc byte [cs:r_72 - rm_blob]
        push ax
        push dx
        mov dx, 0x200a
        xor al, al
        out dx, al
        mov al, 0x20
        out 0xa0, al
        out 0x20, al
        pop dx
        pop ax
        iret
hother: inc byte [cs:r_other - rm_blob]
        push ax
        push dx
        xor al, al
        mov dx, 0x2003
        out dx, al
        mov dx, 0x200a
        out dx, al
        mov al, 0x20
        out 0xa0, al
        out 0x20, al
        pop dx
        pop ax
        iret

r_int:   db 0
r_0b:    db 0
r_72:    db 0
r_other: db 0
r_imr_m: db 0
r_imr_s: db 0
rm_blob_end:
        bits 32
