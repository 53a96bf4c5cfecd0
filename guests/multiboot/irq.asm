; irq: pc-testdev's 0x2000+n lines, through the IOAPIC, to the CPU and the
; vector its RTE names.  The APs are started (INIT + SIPI to all but self)
; and wait with interrupts on.  For every CPU and every line n of the list
; the BSP programs the RTE of n's pin (ISA line 0 is pin 2, the MADT's
; override; the others pin n) with a vector and that CPU as the physical
; destination, then:
;   edge:  OUT 1 then OUT 0 to 0x2000+n; vector 0x40+n must run on the CPU
;   level: OUT 1 to 0x2000+n; vector 0x80+n must run on the CPU, whose
;          handler lowers the line before its EOI (else the IOAPIC would
;          deliver again)
; Any other vector lands in the "unexpected" stub, which fails the test.
; Lines: 0 3 5 10 11 14, and the GSIs 16 19 23 with gsi=1 on the command
; line (QEMU's pc-testdev asserts on lines above 15; bhive's has 24).
;   IRQ line=<n> pin=<p> vector=<hex> mode=<edge|level> want_cpu=<c> got_cpu=<c>
%define TEST_NAME "irq"
%define SMP
%include "../lib/kernel32.inc"
%include "../lib/fwcfg32.inc"

%define EDGE_VECTORS    0x40
%define LEVEL_VECTORS   0x80
%define NO_CPU          0xff

main:
        mov ebx, [boot_ebx]
        mov eax, [ebx + 16]
        mov [cmdline], eax
        mov esi, key_gsi
        call arg_dec
        jc .isa_only
        test eax, eax
        jz .isa_only
        mov dword [nlines], NLINES_ALL
.isa_only:
        mov al, 0xff                    ; both 8259As masked: the IOAPIC alone
        out 0x21, al
        out 0xa1, al
        mov al, 0x30                    ; PIT channel 0: mode 0, no count: quiet
        out 0x43, al
        xor eax, eax
.gates: lea edx, [eax + eax * 4]
        lea edx, [edge_stubs + edx * 2]
        push eax
        add eax, EDGE_VECTORS
        call set_gate
        pop eax
        lea edx, [eax + eax * 4]
        lea edx, [level_stubs + edx * 2]
        push eax
        add eax, LEVEL_VECTORS
        call set_gate
        pop eax
        inc eax
        cmp eax, 24
        jb .gates
        mov ax, K_NB_CPUS
        call fw_select
        call fw_read16
        cmp eax, MAX_CPUS
        jbe .n
        mov eax, MAX_CPUS
.n:     mov [ncpus], eax
        call smp_start                  ; also software-enables our local APIC
        mov eax, [ncpus]
        dec eax
        push eax
        call smp_wait
        pop edx
        mov esi, msg_aps
        call expect_eq
        sti

        xor ebp, ebp                    ; EBP: 0 edge, 1 level
.mode:  xor ecx, ecx                    ; ECX: destination CPU
.cpu:   xor edi, edi                    ; EDI: index in lines
.line:  movzx ebx, byte [lines + edi]
        call route_one
        inc edi
        cmp edi, [nlines]
        jb .line
        inc ecx
        cmp ecx, [ncpus]
        jb .cpu
        inc ebp
        cmp ebp, 2
        jb .mode

        ; nothing more may arrive: exactly one interrupt per OUT sequence
        mov edi, total
        mov eax, [total]
        push ecx
        mov ecx, 1
        call wait_ne_secs
        pop ecx
        mov eax, [ncpus]
        imul eax, [nlines]
        shl eax, 1
        CHECK_EQ [total], eax, "one interrupt per raised line, none spurious"
        ret

route_one:                              ; EBX line, ECX cpu, EBP mode
        pushad
        mov eax, ebx                    ; pin: ISA IRQ0 -> GSI2
        test eax, eax
        jnz .pin
        mov eax, 2
.pin:   mov [pin], eax
        mov eax, ebx
        add eax, EDGE_VECTORS
        test ebp, ebp
        jz .v
        add eax, LEVEL_VECTORS - EDGE_VECTORS
        or eax, 1 << 15                 ; level triggered
.v:     mov [rte_lo], eax
        mov byte [who + ebx], NO_CPU
        ; RTE: destination first, then the unmasked low half
        mov eax, [pin]
        lea eax, [0x11 + eax * 2]
        mov dword [IOAPIC], eax
        mov eax, ecx
        shl eax, 24
        mov dword [IOAPIC + 0x10], eax
        mov eax, [pin]
        lea eax, [0x10 + eax * 2]
        mov dword [IOAPIC], eax
        mov eax, [rte_lo]
        mov dword [IOAPIC + 0x10], eax
        mov eax, [count + ebx * 4]
        lea edx, [0x2000 + ebx]
        push eax
        mov al, 1
        out dx, al                      ; raise line n
        test ebp, ebp
        jnz .wait
        xor eax, eax
        out dx, al                      ; edge: and lower it
.wait:  pop eax
        lea edi, [count + ebx * 4]
        call wait_ne
        ; mask the RTE again
        mov eax, [pin]
        lea eax, [0x10 + eax * 2]
        mov dword [IOAPIC], eax
        mov dword [IOAPIC + 0x10], 1 << 16
        call lock_acquire
        mov esi, msg_irq
        call puts
        mov eax, ebx
        call putdec
        mov esi, msg_pin
        call puts
        mov eax, [pin]
        call putdec
        mov esi, msg_vector
        call puts
        mov eax, [rte_lo]
        and eax, 0xff
        call puthex
        mov esi, msg_edge
        test ebp, ebp
        jz .m
        mov esi, msg_level
.m:     call puts
        mov esi, msg_wantcpu
        call puts
        mov eax, ecx
        call putdec
        mov esi, msg_gotcpu
        call puts
        movzx eax, byte [who + ebx]
        call putdec
        call newline
        call lock_release
        movzx eax, byte [who + ebx]
        mov edx, ecx
        mov esi, msg_route
        call expect_eq
        popad
        ret

edge_common:                            ; [esp] = line, then the interrupt frame
        pushad
        mov ebx, [esp + 32]
        call cpu_id
        mov [who + ebx], al
        lock inc dword [count + ebx * 4]
        lock inc dword [total]
        mov dword [APIC + APIC_EOI], 0
        popad
        add esp, 4
        iret

level_common:
        pushad
        mov ebx, [esp + 32]
        call cpu_id
        mov [who + ebx], al
        lea edx, [0x2000 + ebx]
        xor eax, eax
        out dx, al                      ; lower the line, then EOI
        lock inc dword [count + ebx * 4]
        lock inc dword [total]
        mov dword [APIC + APIC_EOI], 0
        popad
        add esp, 4
        iret

edge_stubs:                             ; 24 x 10 bytes: push line, jmp
%assign n 0
%rep 24
        push strict dword n
        jmp strict near edge_common
%assign n n + 1
%endrep
level_stubs:
%assign n 0
%rep 24
        push strict dword n
        jmp strict near level_common
%assign n n + 1
%endrep

ap_main:
        mov dword [APIC + APIC_SVR], 0x1ff
        sti
.idle:  hlt
        jmp .idle

        section .data
lines:  db 0, 3, 5, 10, 11, 14
NLINES_ISA equ $ - lines
        db 16, 19, 23
NLINES_ALL equ $ - lines
        align 4
nlines: dd NLINES_ISA
ncpus:  dd 1
pin:    dd 0
rte_lo: dd 0
total:  dd 0
count:  times 24 dd 0
who:    times 24 db NO_CPU
key_gsi:    db "gsi=", 0
msg_aps:    db "all APs started", 0
msg_irq:    db "IRQ line=", 0
msg_pin:    db " pin=", 0
msg_vector: db " vector=", 0
msg_edge:   db " mode=edge", 0
msg_level:  db " mode=level", 0
msg_wantcpu: db " want_cpu=", 0
msg_gotcpu: db " got_cpu=", 0
msg_route:  db "interrupt on the CPU its RTE names", 0
