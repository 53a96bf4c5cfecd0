"""Entry point of every device actor process.

    python -m bhive.devices_worker RUN_DIR ACTOR

Reads the VM's validated config from the run directory, looks the device
named ACTOR up in the registry (`bhive.devices`), and runs the host its
entry names (the model and its glue, `bhive/actors/TYPE.py`) on the
shared actor runtime (`bhive.actors.runtime`).  One process per device: a
crash or a `bhive kill` takes out that device alone, and the supervisor
restarts it from the state it committed.
"""

from __future__ import annotations

import sys
from pathlib import Path

from . import config as config_mod
from . import worker_lifecycle
from .actors.runtime import ActorRuntime
from .devices import DEVICE_TYPES
from .rundir import RunDir


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m bhive.devices_worker RUN_DIR ACTOR", file=sys.stderr)
        return 2
    run_path, role = Path(argv[0]), argv[1]
    worker_lifecycle.name_process(role)
    rundir = RunDir(run_path.name, run_path.parent)
    vm = config_mod.from_json(rundir.read_json("supervisor.json")["config"])
    dev_cfg = vm.devices[role]
    dtype = DEVICE_TYPES[dev_cfg.type]
    runtime = ActorRuntime(rundir, role)
    return runtime.run(lambda rt: dtype.host(rt, dtype, dev_cfg, vm))


if __name__ == "__main__":
    worker_lifecycle.exit_now(main())     # without the interpreter's teardown
