; MIPS benchmark loops (64-bit), selected with -DLOOP=1|2|3 and run
; ITERATIONS times.  Each iteration is a fixed number of instructions so
; both engines' instruction counts are known exactly (benchmarks/mips.py).
%include "rom.inc"
%ifndef ITERATIONS
%define ITERATIONS 1000
%endif
bits 64
body:
        mov rcx, ITERATIONS
        xor eax, eax
        xor ebx, ebx
        xor edx, edx
%if LOOP == 1
        ; integer: 5 instructions per iteration
.l:     add rax, rcx
        xor rdx, rax
        inc rbx
        dec rcx
        jnz .l
%elif LOOP == 2
        ; memory-heavy: 6 instructions per iteration, 256 KiB working set
        mov rsi, 0x100000
        mov rdi, 0x200000
.l:     mov rax, [rsi + rbx * 8]
        add [rdi + rbx * 8], rax
        inc rbx
        and rbx, 0x7fff
        dec rcx
        jnz .l
%elif LOOP == 3
        ; branchy: data-dependent branches on an LCG, 8 instructions on either path
        mov r8, 6364136223846793005
        mov r9, 1442695040888963407
.l:     imul rax, r8
        add rax, r9
        test eax, 0x10000
        jz .a
        inc rbx
        jmp .b
.a:     dec rbx
        nop
.b:     dec rcx
        jnz .l
%endif
        ret
%include "rom_end.inc"
