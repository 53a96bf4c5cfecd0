"""The configuration reference (docs/config.md), generated from the
validator's own constants (`bhive.config`) and the device registry
(`bhive.devices`), so that it cannot drift: tests/boot/test_config_reference.py
checks that the file is what this module renders and that every key the
validator accepts is documented here.

    python -m bhive.config_reference > docs/config.md
"""

from __future__ import annotations

import sys

from . import accel, cpumodel
from . import config as C
from .devices import COMMON_OPTIONS, DEVICE_TYPES, Option


def _mib(n: int) -> str:
    return f"{n >> 30}G" if n >= 1 << 30 and not n % (1 << 30) else f"{n >> 20}M"


# Each table's keys: (default, values or range, what it is).  The key sets
# must equal the validator's (_VM_KEYS, _BOOT_KEYS, _CPU_KEYS, _MSR_KEYS).
SECTIONS = {
    "vm": {
        "name": ("the config file's stem", "1-32 of letters, digits, `.`, `_`, `-`",
                 "the VM's name (`bhive ps`, the run directory); `--name`, `-name`"),
        "cpus": (1, f"1..{C.MAX_CPUS}", "vCPUs, one process each; `--smp`, `-smp`"),
        "memory": ('"128M"', f"{_mib(C.MIN_MEMORY)}..{_mib(C.MAX_MEMORY)}, a multiple of 4 KiB",
                   "guest RAM, with a K/M/G/T suffix (TOML integer: bytes); `-m`"),
        "accel": ('"softvmm"', ", ".join(accel.NAMES), "the CPU accelerator"),
        "exit_transport": ('"shm"', ", ".join(C.EXIT_TRANSPORTS),
                           "how vCPU exits reach device actors: shared-memory channels or ZeroMQ"),
        "watchdog": (0, "seconds >= 0 (0: none)", "end the VM with status 124 after this much wall time"),
        "no_reboot": ("false", "true, false", "a guest reset ends the VM (status 0) instead of rebooting it; "
                      "`-no-reboot`"),
        "serial": ('"stdio"', ", ".join(C.SERIAL_BACKENDS), "COM1's other end; `-serial`"),
        "triple_fault": ('"stop"', ", ".join(C.TRIPLE_FAULT_ACTIONS),
                         "a triple fault ends the VM (status 3), or resets it as a PC's chipset does "
                         "(a reboot; with `no_reboot`, the end, status 0)"),
        "on_vcpu_loss": ('"continue"', ", ".join(C.VCPU_LOSS_POLICIES),
                         "a vCPU process that dies: the others go on, or the VM ends (status 4) naming it"),
    },
    "boot": {
        "kind": ('"kernel" if `kernel` is set, else "flat"', ", ".join(C.BOOT_KINDS),
                 "a flat real-mode image, or a kernel (bzImage, Multiboot, PVH: recognised from its bytes)"),
        "image": ("-", "a path, or an .asm file (assembled)", "flat: the image"),
        "load_address": ("0x8000", "inside guest RAM", "flat: where the image is loaded"),
        "entry": ("`load_address`", "below 1M", "flat: the real-mode entry point"),
        "kernel": ("-", f"a path, or `{C.GUESTKIT_PREFIX}NAME`", "kernel: the image; `--kernel`, `-kernel`"),
        "initrd": ('""', f"a path, or `{C.GUESTKIT_PREFIX}initramfs`; Multiboot/PVH: modules, comma-separated",
                   "`--initrd`, `-initrd`"),
        "append": ('""', "a string", "the kernel command line; `--append`, `-append`"),
    },
    "drive": {                # [[drive]]: one table per disk, as QEMU's -drive
        "file": ("-", "a path (relative to the config file)", "the raw image (required); `-drive file=`, `-hda`..`-hdd`"),
        "format": ('"raw"', ", ".join(C.DRIVE_FORMATS), "the image format"),
        "if": ('"ide"', ", ".join(C.DRIVE_INTERFACES), "the interface: the PIIX IDE controller"),
        "index": ("the lowest free", "0..3", "primary master/slave, secondary master/slave (`-hda`..`-hdd`)"),
        "readonly": ("false", "true, false", "the guest cannot write (the image gets a shared lock)"),
        "snapshot": ("false", "true, false", "writes go to a throw-away overlay in the run directory; `-snapshot`"),
    },
    "cpu": {
        "model": ('"max"', ", ".join(cpumodel.MODELS), "the CPU model, as QEMU names it; `-cpu` wins over this table"),
        "vendor": ("the model's", ", ".join(cpumodel.VENDORS), "the CPUID vendor string"),
        "features": ("[]", "a list (or comma-separated string) of `+name`/`-name` (QEMU's feature names)",
                     "features turned on or off: CPUID and what the CPU allows follow"),
    },
    "chaos": {
        "kill": ('"random"', "actor names (a list or comma-separated), random, all-devices",
                 "what `bhive run` kills while the VM runs (see `bhive chaos`)"),
        "every": ('"200ms"', "a duration > 0", "time between kills"),
        "jitter": (0, "a duration <= every", "uniform +- added to each interval"),
        "for": ("-", "a duration", "stop killing after this long (default: until the VM ends)"),
        "count": ("-", "an integer >= 1", "stop after this many kills"),
        "signal": ('"KILL"', "KILL, TERM, STOP/CONT", "what each kill sends"),
        "seed": ("-", "an integer", "seed of the schedule (targets, intervals): reproducible runs"),
    },
    "msr": {
        "unknown": ('"gp"', ", ".join(C.MSR_POLICIES), "an RDMSR/WRMSR of an MSR bhive does not model: #GP or "
                    "read 0 / ignore the write"),
    },
}


def _values(opt: Option) -> str:
    if opt.choices:
        return ", ".join(hex(c) if isinstance(c, int) and c > 9 else str(c) for c in opt.choices)
    if opt.minimum is not None or opt.maximum is not None:
        lo = "" if opt.minimum is None else (hex(opt.minimum) if opt.minimum > 9 else str(opt.minimum))
        hi = "" if opt.maximum is None else (hex(opt.maximum) if opt.maximum > 9 else str(opt.maximum))
        return f"{lo}..{hi}"
    return {bool: "true, false", str: "a string", int: "an integer"}.get(opt.kind, opt.kind.__name__)


def _default(opt: Option) -> str:
    if opt.default is None:
        return "-"
    if isinstance(opt.default, bool):
        return str(opt.default).lower()
    if isinstance(opt.default, int):
        return hex(opt.default) if opt.default > 9 else str(opt.default)
    return f'"{opt.default}"'


def render() -> str:
    out = ["# Configuration reference", "",
           "Generated by `python -m bhive.config_reference` from the validator (`bhive/config.py`) and the",
           "device registry (`bhive/devices.py`); a test fails if this file and they disagree.",
           "A key not listed here is refused (one line, status 2).", ""]
    for section, keys in SECTIONS.items():
        title = "[[drive]]" if section == "drive" else f"[{section}]"
        out += [f"## {title}", "", "| key | default | values | meaning |", "|---|---|---|---|"]
        for key, (default, values, meaning) in keys.items():
            out.append(f"| `{key}` | {default} | {values} | {meaning} |")
        out.append("")
    out += ["## [devices.NAME]", "",
            "A device table is named by its type (`[devices.uart]`) or names it (`type = \"uart\"`).",
            "Every device table also takes:", "",
            "| key | default | values |", "|---|---|---|"]
    for key, opt in COMMON_OPTIONS.items():
        default = "the table's name" if key == "type" else _default(opt)
        values = "a device type below" if key == "type" else _values(opt)
        out.append(f"| `{key}` | {default} | {values} |")
    out.append("")
    for name, dtype in DEVICE_TYPES.items():
        doc = (sys.modules[dtype.model.__module__].__doc__ or "").strip().splitlines()[0]
        out += [f"### {name}", "", f"{doc} (`bhive/actors/{name}.py`)", ""]
        if dtype.options:
            out += ["| option | default | values |", "|---|---|---|"]
            for key, opt in dtype.options.items():
                out.append(f"| `{key}` | {_default(opt)} | {_values(opt)} |")
            out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(render())
