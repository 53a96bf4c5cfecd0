; starve: see irqcore.asm
%define MODE MODE_STARVE

%include "irqcore.asm"
