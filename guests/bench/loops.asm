; MIPS benchmark loops, selected with -DLOOP=1|2|3 and run ITERATIONS
; times, in the CPU mode chosen by -DMODE (rom.inc).  Each iteration is a
; fixed number of instructions, the same in every mode, so both engines'
; instruction counts are known exactly (benchmarks/mips.py).
%include "rom.inc"
%ifndef ITERATIONS
%define ITERATIONS 1000
%endif
body:
%if MODE == 64
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
%elif MODE == 16
        ; real mode: 16-bit operations, a 32-bit iteration count
        mov ecx, ITERATIONS
        xor ax, ax
        xor bx, bx
        xor dx, dx
%if LOOP == 1
.l:     add ax, cx
        xor dx, ax
        inc bx
        dec ecx
        jnz .l
%elif LOOP == 2
        ; 2 x 32 KiB: DS = 0x1000 (0x10000), ES = 0x2000 (0x20000)
        push ds
        push es
        mov ax, 0x1000
        mov ds, ax
        mov ax, 0x2000
        mov es, ax
        xor si, si
        xor di, di
.l:     mov ax, [si + bx]
        add [es:di + bx], ax
        add bx, 2
        and bx, 0x7ffe
        dec ecx
        jnz .l
        pop es
        pop ds
%elif LOOP == 3
        mov di, 25173
        mov si, 13849
.l:     imul ax, di
        add ax, si
        test ax, 0x100
        jz .a
        inc bx
        jmp .b
.a:     dec bx
        nop
.b:     dec ecx
        jnz .l
%endif
%else
        ; 32-bit code (protected mode, flat or paged, or compatibility mode)
        mov ecx, ITERATIONS
        xor eax, eax
        xor ebx, ebx
        xor edx, edx
%if LOOP == 1
.l:     add eax, ecx
        xor edx, eax
        inc ebx
        dec ecx
        jnz .l
%elif LOOP == 2
        mov esi, 0x100000
        mov edi, 0x200000
.l:     mov eax, [esi + ebx * 4]
        add [edi + ebx * 4], eax
        inc ebx
        and ebx, 0xffff
        dec ecx
        jnz .l
%elif LOOP == 3
        mov edi, 1103515245
        mov esi, 12345
.l:     imul eax, edi
        add eax, esi
        test eax, 0x10000
        jz .a
        inc ebx
        jmp .b
.a:     dec ebx
        nop
.b:     dec ecx
        jnz .l
%endif
%endif
        ret
%include "rom_end.inc"
