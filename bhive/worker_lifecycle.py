"""What every worker process (a device actor, a vCPU) does first and last.

Each worker is a real process whose command line names its role
(`python -m bhive.devices_worker RUN_DIR ACTOR`, `python -m
bhive.vcpu_worker RUN_DIR N`) and whose process name is `bhive:ROLE`.
The supervisor has a fork server (`bhive.zygote`) fork it, or spawns it
as a fresh interpreter.  A VM starts and ends all of them at once, on few
cores, so both ends are kept short:

* `die_with_supervisor`: the parent-death signal is set by the worker
  itself, not in a `preexec_fn`: a preexec_fn makes `subprocess` fork the
  whole supervisor (~15 ms a process, one after the other) where it can
  otherwise vfork.
* `exit_now`: a worker that is done skips the interpreter's teardown
  (~20-30 ms of CPU a process) once what it must say is said.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading

import zmq

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15


def name_process(role: str) -> None:
    """Name this process `bhive:ROLE` (ps -o comm, top, /proc/PID/comm;
    at most 15 bytes).  Threads started afterwards inherit the name."""
    ctypes.CDLL(None).prctl(PR_SET_NAME, ctypes.c_char_p(f"bhive:{role}".encode()[:15]), 0, 0, 0)


def die_with_supervisor(supervisor_pid: int | None) -> None:
    """SIGKILL this process when its parent, the supervisor, dies, so that
    no worker outlives its VM.  If the supervisor died before this call
    (the signal was not armed yet), exit now."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if supervisor_pid and os.getppid() != supervisor_pid:
        os._exit(1)


def exit_now(status: int) -> None:
    """End the worker with `status`: flush Python's and C's stdio, close
    every ZeroMQ socket (each socket's LINGER still lets what is queued
    out, e.g. a last VmEvent), then _exit without the interpreter's
    teardown.  Sockets are closed only when no other thread is left that
    could be using them."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    if threading.active_count() == 1:
        zmq.Context.instance().destroy()
    ctypes.CDLL(None).fflush(None)
    os._exit(int(status or 0))
