"""Structured per-actor logs: one line per event, timestamped.

    2026-11-25T15:31:02.123456Z uart[4242] restored commits=17

`bhive logs` reads these files; lines sort by time because the timestamp
leads and has a fixed width.
"""

from __future__ import annotations

import os
import time
from datetime import datetime, timezone


def timestamp(t: float | None = None) -> str:
    t = time.time() if t is None else t
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# Fields that hypervisor developers read in hex: addresses, ports, MSRs, registers.
HEX_FIELDS = {"rip", "rsp", "gpa", "addr", "port", "msr", "vector", "value", "data",
              "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rflags", "cr0", "cr2", "cr3", "cr4", "efer"}


def _fmt(key: str, value) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return hex(value) if key in HEX_FIELDS else str(value)
    text = str(value)
    if not text or any(c in text for c in " \t\n\"="):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


class EventLog:
    """Appends event lines to one actor's log file."""

    def __init__(self, path: str | os.PathLike, role: str):
        self.role = role
        self.pid = os.getpid()
        self._file = open(path, "a", buffering=1)

    def __call__(self, event: str, **fields) -> None:
        self.event(event, **fields)

    def event(self, event: str, **fields) -> None:
        parts = [timestamp(), f"{self.role}[{self.pid}]", event]
        parts += [f"{k}={_fmt(k, v)}" for k, v in fields.items()]
        self._file.write(" ".join(parts) + "\n")

    def close(self) -> None:
        self._file.close()
