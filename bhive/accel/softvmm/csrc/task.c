/*
 * Hardware task switches (SDM Vol 3A 7.3): far JMP/CALL to a TSS or a
 * task gate, a task gate in the IDT, IRET with EFLAGS.NT.  Only 32-bit
 * kernels use them.
 */
#include "mem.h"

void task_switch(cpu_t *c, uint16_t sel, uint32_t lo, uint32_t hi, int reason, uint64_t ret_eip)
{
    (void)sel; (void)lo; (void)hi; (void)reason; (void)ret_eip;
    exit_unhandled(c);   /* not implemented: the run ends as "unhandled" */
}
