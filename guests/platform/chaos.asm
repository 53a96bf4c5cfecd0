; chaos: see irqcore.asm
%define MODE MODE_CHAOS
%define ITER 1500
%include "irqcore.asm"
