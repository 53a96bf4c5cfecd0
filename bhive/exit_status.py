"""Exit statuses of `bhive run` (and of the processes that decide them).

    0           the guest halted, powered off or was stopped
    (V<<1)|1    the guest wrote V to isa-debug-exit (QEMU's convention)
    2           bad config or image (nothing was started)
    3           the guest crashed (triple fault, unhandled instruction,
                a kernel panic on the console)
    4           bhive itself failed (a process died, an actor gave up)
    124         the watchdog ([vm] watchdog, --watchdog) expired first

A vCPU process exits with STATUS_GUEST_CRASH or STATUS_INTERNAL too, and
the supervisor passes them on.
"""

STATUS_STOPPED = 0
STATUS_CONFIG = 2
STATUS_GUEST_CRASH = 3
STATUS_INTERNAL = 4
STATUS_WATCHDOG = 124     # as timeout(1) says it
