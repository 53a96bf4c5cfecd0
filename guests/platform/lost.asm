; lost: see irqcore.asm
%define MODE MODE_LOST

%include "irqcore.asm"
