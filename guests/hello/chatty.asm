; The hello guest, greeting many times per vCPU: long enough to kill
; actors while it prints (tests/test_chaos.py).
%define REPEAT 15000
%include "hello.asm"
