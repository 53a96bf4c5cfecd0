; chaos: see irqcore.asm
%define MODE MODE_CHAOS
%define ITER 400
%include "irqcore.asm"
