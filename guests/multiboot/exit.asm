; exit: QEMU's isa-debug-exit convention.  Writes code=<V> from the command
; line to port=<P> (decimal, default 0xF4) with an OUT of size=<1|2|4>
; bytes (default 4); the VM must end with status (V << 1) | 1.  If the VM
; still runs 10 seconds after the write, says so and halts with interrupts off.
%define TEST_NAME "exit"
%include "../lib/kernel32.inc"

main:
        mov ebx, [boot_ebx]
        mov eax, [ebx + 16]             ; the command line
        mov [cmdline], eax
        mov esi, key_code
        call arg_dec
        jc .nocode
        mov ebx, eax                    ; EBX = V
        mov esi, key_size
        call arg_dec
        jnc .size
        mov eax, 4
.size:  mov ecx, eax                    ; ECX = access size
        mov esi, key_port
        call arg_dec
        jnc .port
        mov eax, DEBUG_EXIT
.port:  mov edx, eax                    ; EDX = port
        call lock_acquire
        mov esi, msg_exit
        call puts
        mov eax, ebx
        call putdec
        mov esi, msg_size
        call puts
        mov eax, ecx
        call putdec
        mov esi, msg_port
        call puts
        mov eax, edx
        call puthex
        call newline
        call lock_release
        mov eax, ebx
        cmp ecx, 1
        je .b
        cmp ecx, 2
        je .w
        out dx, eax
        jmp .after
.b:     out dx, al
        jmp .after
.w:     out dx, ax
.after: mov edi, never                  ; the VMM ends the VM at its own pace:
        xor eax, eax                    ; give it 10 seconds before saying it did not
        mov ecx, 10
        call wait_ne_secs
        mov esi, msg_alive
        call fail
.stop:  cli
        hlt
        jmp .stop
.nocode:
        mov esi, msg_nocode
        call fail
        ret

        section .data
key_code:   db "code=", 0
key_size:   db "size=", 0
key_port:   db "port=", 0
msg_exit:   db "EXIT code=", 0
msg_size:   db " size=", 0
msg_port:   db " port=", 0
msg_alive:  db "the VM still runs after the isa-debug-exit write", 0
msg_nocode: db "no code= on the command line", 0
        align 4
never:      dd 0
