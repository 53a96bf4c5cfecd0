"""Differential CPU testing: softvmm against real hardware (KVM).

The same generated x86-64 instruction sequences run at CPL3 on two
accelerators through the common `bhive.accel` interface, on an identical
guest image (`machine`), and everything they leave behind is compared:
GPRs, RFLAGS (minus the bits the architecture leaves undefined for those
instructions, `gen.UNDEF_FLAGS`), the scratch memory, the FXSAVE image for
x87/SSE cases, and the exception (vector, error code, RIP, CR2) if any.

    python -m bhive.difftest --seed S --cases N --a kvm --b softvmm [--group alu]

Modules: `machine` (guest image and running one case), `gen` (case
generation, deterministic per seed and case index), `runner` (one nasm run
per batch, comparison, divergence reports), `__main__` (the CLI).
"""
