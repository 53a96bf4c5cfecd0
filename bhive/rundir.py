"""The run directory of a VM: sockets, logs, shared memory and state.

    <root>/<vm>/supervisor.json   who supervises, with what config
    <root>/<vm>/procs.json        the process table `bhive ps` shows
    <root>/<vm>/sock/*.ipc        ZeroMQ endpoints
    <root>/<vm>/logs/<role>.log   one structured log per actor
    <root>/<vm>/shm/*             guest RAM, platform and actor state
    <root>/<vm>/shm/snapshot/driveN/   drive N's -snapshot overlay (bhive.block)

The root is on tmpfs (/dev/shm) so guest RAM is never written to disk.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path


def root() -> Path:
    env = os.environ.get("BHIVE_RUN_ROOT")
    if env:
        return Path(env)
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path("/tmp")
    return base / f"bhive-{os.getuid()}"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunDir:
    def __init__(self, name: str, base: Path | None = None):
        self.name = name
        self.path = (base or root()) / name

    # Layout -----------------------------------------------------------
    @property
    def sock(self) -> Path:
        return self.path / "sock"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    @property
    def shm(self) -> Path:
        return self.path / "shm"

    def snapshot_dir(self, index: int) -> Path:
        """Where drive `index`'s -snapshot overlay lives (block.open_image's
        snapshot_dir): under shm/, so it goes when the VM ends, with guest RAM."""
        return self.shm / "snapshot" / f"drive{index}"

    def endpoint(self, role: str) -> str:
        return f"ipc://{self.sock / role}.ipc"

    def log_path(self, role: str) -> Path:
        return self.logs / f"{role}.log"

    # Lifecycle --------------------------------------------------------
    def create(self, keep_logs: bool = False) -> None:
        """A fresh run directory; `keep_logs` (a reboot): only shared memory
        is made afresh, the logs and the sockets' directory stay."""
        if keep_logs:
            shutil.rmtree(self.shm, ignore_errors=True)
        elif self.path.exists():
            shutil.rmtree(self.path)
        for d in (self.sock, self.logs, self.shm):
            d.mkdir(parents=True, exist_ok=keep_logs)

    def write_json(self, name: str, data) -> None:
        tmp = self.path / f".{name}.tmp"
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, self.path / name)

    def read_json(self, name: str):
        try:
            return json.loads((self.path / name).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def supervisor_pid(self) -> int | None:
        info = self.read_json("supervisor.json")
        return info.get("pid") if info else None

    def is_live(self) -> bool:
        pid = self.supervisor_pid()
        return bool(pid) and pid_alive(pid)

    def drop_shared_memory(self) -> None:
        """Free guest RAM and the other big regions once the VM is gone."""
        shutil.rmtree(self.shm, ignore_errors=True)


def all_vms(base: Path | None = None) -> list[RunDir]:
    r = base or root()
    if not r.is_dir():
        return []
    return [RunDir(p.name, r) for p in sorted(r.iterdir()) if (p / "supervisor.json").exists()]
