"""Wiring for driving device models directly in unit tests."""

from __future__ import annotations


class RecordingLine:
    """An IrqLine that records every level driven onto it."""

    def __init__(self) -> None:
        self.levels: list[bool] = []

    def set_level(self, asserted: bool) -> None:
        self.levels.append(asserted)

    @property
    def level(self) -> bool:
        return bool(self.levels) and self.levels[-1]

    @property
    def pulses(self) -> int:
        """Completed high-then-low pulses."""
        return sum(1 for a, b in zip(self.levels, self.levels[1:]) if a and not b)


class StandInRuntime:
    """What a `DeviceHost` uses of the actor runtime, for driving a host
    in-process: its log and VM events are recorded, nothing is sent."""

    def __init__(self, role: str) -> None:
        self.role = role
        self.logged: list[tuple[str, dict]] = []
        self.events: list = []

    def log(self, event: str, **fields) -> None:
        self.logged.append((event, fields))

    def event(self, msg) -> None:
        self.events.append(msg)

    def commit(self) -> None:
        pass
