; fwcfg: QEMU's fw_cfg through its I/O ports (docs/specs/fw_cfg.rst): a
; 16-bit write of a key to the selector (0x510), then byte reads of the
; data port (0x511).  Checks the signature, rewinding, reads past the end,
; and the ID's traditional-interface bit itself; prints for the host:
;   FWCFG id=<hex> cpus=<n> max_cpus=<n> ram=<hex64>
;   FILE <select> <size> <name>          the file directory, in order
;   E820 <base> <length> <type>          etc/e820, read through its selector
;   CMDLINE <size> <string>              FW_CFG_CMDLINE_SIZE / _DATA
%define TEST_NAME "fwcfg"
%include "../lib/kernel32.inc"
%include "../lib/fwcfg32.inc"

main:
        mov ax, K_SIGNATURE
        call fw_select
        call fw_read32
        CHECK_EQ eax, 'QEMU', "signature reads QEMU"
        call fw_read8
        CHECK_EQ eax, 0, "a read past the end of an item returns 0"
        mov ax, K_SIGNATURE
        call fw_select
        call fw_read8
        CHECK_EQ eax, 'Q', "selecting again rewinds to the first byte"
        mov ax, 0x3ff0                  ; a key that holds nothing
        call fw_select
        call fw_read8
        CHECK_EQ eax, 0, "an empty key reads 0"

        mov ax, K_ID
        call fw_select
        call fw_read32
        mov ebx, eax
        test eax, 1
        CHECK nz, "ID has the traditional-interface bit"

        call lock_acquire
        mov esi, msg_id
        call puts
        mov eax, ebx
        call puthex
        mov esi, msg_cpus
        call puts
        mov ax, K_NB_CPUS
        call fw_select
        call fw_read16
        call putdec
        mov esi, msg_max
        call puts
        mov ax, K_MAX_CPUS
        call fw_select
        call fw_read16
        call putdec
        mov esi, msg_ram
        call puts
        mov ax, K_RAM_SIZE
        call fw_select
        call fw_read32
        push eax
        call fw_read32
        mov edx, eax
        pop eax
        call puthex64
        call newline
        call lock_release

        ; the file directory: u32 count (big-endian), then 64-byte entries
        mov ax, K_FILE_DIR
        call fw_select
        call fw_read32
        bswap eax
        mov ecx, eax
        xor ebp, ebp                    ; etc/e820: select << 16 | 1 once found
.file:  test ecx, ecx
        jz .files_done
        push ecx
        mov edi, entry
        mov ecx, 64
        call fw_read
        pop ecx
        mov eax, [entry]
        bswap eax
        mov [e_size], eax
        movzx eax, word [entry + 4]
        xchg al, ah
        mov [e_select], eax
        call lock_acquire
        mov esi, msg_file
        call puts
        mov eax, [e_select]
        call puthex
        mov al, ' '
        call putc
        mov eax, [e_size]
        call putdec
        mov al, ' '
        call putc
        mov esi, entry + 8
        call puts
        call newline
        call lock_release
        cmp dword [e_select], 0x20
        CHECK ae, "file selectors start at FW_CFG_FILE_FIRST"
        mov esi, entry + 8
        mov edi, name_e820
        call streq
        jne .not
        mov ebp, [e_select]
        mov eax, [e_size]
        mov [e820_size], eax
.not:   dec ecx
        jmp .file
.files_done:
        test ebp, ebp
        CHECK nz, "etc/e820 is in the directory"
        jz .cmdline

        ; etc/e820 through its selector: {u64 address, u64 length, u32 type}
        mov eax, ebp
        call fw_select
        mov ecx, [e820_size]
        xor ebx, ebx                    ; KiB of RAM listed
.e820:  cmp ecx, 20
        jb .e820_done
        push ecx
        mov edi, entry
        mov ecx, 20
        call fw_read
        pop ecx
        sub ecx, 20
        call lock_acquire
        mov esi, msg_e820
        call puts
        mov eax, [entry]
        mov edx, [entry + 4]
        call puthex64
        mov al, ' '
        call putc
        mov eax, [entry + 8]
        mov edx, [entry + 12]
        call puthex64
        mov al, ' '
        call putc
        mov eax, [entry + 16]
        call putdec
        call newline
        call lock_release
        cmp dword [entry + 16], 1
        jne .e820
        mov eax, [entry + 8]
        mov edx, [entry + 12]
        shrd eax, edx, 10
        add ebx, eax
        jmp .e820
.e820_done:
        CHECK_EQ ecx, 0, "etc/e820 is a whole number of 20-byte entries"
        mov ax, K_RAM_SIZE
        call fw_select
        call fw_read32
        push eax
        call fw_read32
        mov edx, eax
        pop eax
        shrd eax, edx, 10               ; KiB of RAM
        cmp ebx, eax
        CHECK be, "etc/e820 lists no more RAM than FW_CFG_RAM_SIZE"
        shr eax, 1
        cmp ebx, eax
        CHECK a, "etc/e820 lists more than half of FW_CFG_RAM_SIZE as RAM"

.cmdline:
        mov ax, K_CMDLINE_SIZE
        call fw_select
        call fw_read32
        mov ecx, eax
        call lock_acquire
        mov esi, msg_cmdline
        call puts
        call putdec
        mov al, ' '
        call putc
        mov ax, K_CMDLINE_DATA
        call fw_select
.cmd:   jecxz .cmd_done
        call fw_read8
        test al, al
        jz .cmd_done
        call putc
        dec ecx
        jmp .cmd
.cmd_done:
        call newline
        call lock_release
        ret

        section .data
msg_id:         db "FWCFG id=", 0
msg_cpus:       db " cpus=", 0
msg_max:        db " max_cpus=", 0
msg_ram:        db " ram=", 0
msg_file:       db "FILE ", 0
msg_e820:       db "E820 ", 0
msg_cmdline:    db "CMDLINE ", 0
name_e820:      db "etc/e820", 0
        align 4
e_size:         dd 0
e_select:       dd 0
e820_size:      dd 0
entry:          times 68 db 0
