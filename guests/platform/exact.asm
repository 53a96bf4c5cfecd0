; exact: see irqcore.asm
%define MODE MODE_EXACT

%include "irqcore.asm"
