; chaos_long: chaos.asm with 4x the pulses, so that a chaos run of 60 kills
; lands mid-run on a fast host too (tests/vm/test_chaos_workload.py)
%define MODE MODE_CHAOS
%define ITER 6000
%include "irqcore.asm"
