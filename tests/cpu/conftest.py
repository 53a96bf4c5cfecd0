"""The softvmm CPU core driven directly, in-process, through
`bhive.accel.softvmm.harness.Machine`: no actors, no bus.  The whole
folder is skipped, with the reason, where softvmm cannot run."""

from __future__ import annotations

from support import require_softvmm

require_softvmm()
