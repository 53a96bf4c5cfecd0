; seed #7 with -DHOLD: the BSP holds after the wake rounds (test_seed_cpu kills a vCPU then)
%define HOLD 1
%include "seed7_halt_wake.asm"
