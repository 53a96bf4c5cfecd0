; route: see irqcore.asm
%define MODE MODE_ROUTE

%include "irqcore.asm"
