"""VM configuration: TOML, validated up front into a `VmConfig`.

Every mistake becomes one `ConfigError` whose message is a single line
naming the key at fault; the CLI prints it and exits with status 2 before
any process starts.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from . import accel
from .devices import COMMON_OPTIONS, DEVICE_TYPES, mmio_ranges, port_ranges


class ConfigError(Exception):
    """A configuration that cannot run; str() is one line."""


_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(i?B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}

MIN_MEMORY = 1 << 20
MAX_MEMORY = 64 << 30
MAX_CPUS = 64
# "flat": a raw image entered in real mode; "kernel": a kernel image whose
# format (Linux bzImage, Multiboot) the loader recognises from its bytes.
BOOT_KINDS = ("flat", "kernel")
# A [boot] kernel/initrd of "guestkit:NAME" is fetched (and cached) by
# bhive.guestkit: a Debian kernel name, "initramfs" for the busybox one, or
# a disk image's kernel, initrd or disk (debian-13, debian-13-initrd, debian-13-disk).
GUESTKIT_PREFIX = "guestkit:"
MSR_POLICIES = ("gp", "ignore")
# Drives ([[drive]] tables; -drive/-hda.. on the command line), as QEMU's pc
# machine has them: index 0/1 primary master/slave, 2/3 secondary.
DRIVE_FORMATS = ("raw",)
DRIVE_INTERFACES = ("ide",)
# QEMU's other interfaces and image formats: named as "not supported yet"
# rather than "unknown", so a QEMU user knows the spelling was right.
QEMU_DRIVE_INTERFACES = ("virtio", "scsi", "floppy", "pflash", "mtd", "sd", "none", "xen")
QEMU_DRIVE_FORMATS = ("qcow2", "qcow", "qed", "vmdk", "vdi", "vhdx", "vpc", "dmg", "parallels", "luks")
IDE_INDEXES = range(4)
_DRIVE_KEYS = {"file", "format", "if", "index", "readonly", "snapshot"}


_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value, what: str) -> float:
    """'200ms', '10s', '1.5m', 3 or 0.25 (seconds) -> seconds (>= 0)."""
    if isinstance(value, bool):
        raise ConfigError(f"{what}: bad duration {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise ConfigError(f"{what}: bad duration {value!r} (use e.g. 200ms, 10s or 1m)")
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    if seconds < 0:
        raise ConfigError(f"{what}: duration {value!r} is negative")
    return seconds


def parse_size(value, what: str) -> int:
    """'512M', '1G', '65536' or an int -> bytes."""
    if isinstance(value, bool):
        raise ConfigError(f"{what}: bad size {value!r}")
    if isinstance(value, int):
        n = value
    else:
        m = _SIZE.match(str(value))
        if not m:
            raise ConfigError(f"{what}: bad size {value!r} (use e.g. 512M or 1G)")
        n = int(m.group(1)) * _UNITS[m.group(2).upper()]
    if n < MIN_MEMORY or n > MAX_MEMORY or n % 4096:
        raise ConfigError(f"{what}: size {value!r} must be a multiple of 4K between 1M and 64G")
    return n


@dataclass
class DeviceConfig:
    name: str
    type: str
    options: dict
    ports: list[int]                      # every I/O port it claims
    mmio: list[tuple[int, int]] = field(default_factory=list)   # (base, size) windows

    @property
    def port_spans(self) -> list[list[int]]:
        """The ports as [start, stop) spans (compact, for JSON)."""
        spans: list[list[int]] = []
        for p in self.ports:
            if spans and spans[-1][1] == p:
                spans[-1][1] = p + 1
            else:
                spans.append([p, p + 1])
        return spans


@dataclass
class DriveConfig:
    file: Path                  # absolute
    format: str = "raw"
    interface: str = "ide"
    index: int = 0              # IDE: 0/1 primary master/slave, 2/3 secondary master/slave
    readonly: bool = False
    snapshot: bool = False      # writes go to a throw-away overlay in the run directory


@dataclass
class VmConfig:
    name: str
    cpus: int
    memory: int
    accel: str
    boot_kind: str
    image: Path
    load_address: int
    entry: int
    unknown_msr: str
    kernel: Path | None = None
    initrd: list[Path] = field(default_factory=list)   # Linux: one; Multiboot/PVH: modules
    initrd_args: list[str] = field(default_factory=list)   # per module: what followed its path
    append: str = ""
    devices: dict[str, DeviceConfig] = field(default_factory=dict)
    exit_transport: str = "shm"
    source: Path | None = None
    watchdog: float = 0.0       # seconds of wall time before the VM is ended (0: never)
    cpu: dict = field(default_factory=lambda: {"model": "max"})   # bhive.cpumodel.CpuModel.to_json()
    no_reboot: bool = False     # QEMU's -no-reboot: a guest reset ends the VM
    serial: str = "stdio"       # COM1's other end: stdio, null, file:PATH, unix:PATH,server[,nowait], pty
    on_vcpu_loss: str = "continue"
    triple_fault: str = "stop"  # "stop": the VM ends (status 3); "reset": the PC's reset line, as QEMU
    chaos: dict | None = None   # a [chaos] table (bhive.chaos.Plan as JSON): `bhive run` starts a chaos run
    drives: list[DriveConfig] = field(default_factory=list)   # by index

    def port_owners(self) -> dict[int, str]:
        return {p: d.name for d in self.devices.values() for p in d.ports}

    def devices_of(self, dtype: str) -> list["DeviceConfig"]:
        return [d for d in self.devices.values() if d.type == dtype]


_TOP = {"vm", "boot", "msr", "devices", "drive", "cpu", "chaos"}
_VM_KEYS = {"name", "cpus", "memory", "accel", "exit_transport", "watchdog", "no_reboot", "serial", "on_vcpu_loss",
            "triple_fault"}
TRIPLE_FAULT_ACTIONS = ("stop", "reset")
_CPU_KEYS = {"model", "vendor", "features"}
# What a vCPU process that dies does to the VM ([vm] on_vcpu_loss):
# "continue" (a SIGKILLed vCPU is a dead core, the others go on; any
# other death ends the VM), "stop" (any vCPU death ends the VM, status 4,
# naming the vCPU and its last exit).  "restart" (resuming the vCPU from
# state in shared memory) is not implemented: softvmm keeps a vCPU's
# architectural state in the process that dies.
VCPU_LOSS_POLICIES = ("continue", "stop")
# How port/MMIO exits reach actors: "shm" (default), the shared-memory channels
# of bhive.bus.channel, or "zmq", a ZeroMQ round trip per exit (slower; kept
# for comparison and debugging).  Either is safe because a device's IRQ line
# change is acknowledged by the controllers before the access that caused it
# completes (bhive.actors.interrupts.IrqBus).
EXIT_TRANSPORTS = ("shm", "zmq")
_BOOT_KEYS = {"kind", "image", "load_address", "entry", "kernel", "initrd", "append"}
_MSR_KEYS = {"unknown"}


def _reject_unknown(table: dict, allowed: set, where: str) -> None:
    for key in table:
        if key not in allowed:
            raise ConfigError(f"{where}: unknown key {key!r} (allowed: {', '.join(sorted(allowed))})")


def _typed(value, opt_kind: type, where: str):
    if opt_kind is int and (not isinstance(value, int) or isinstance(value, bool)):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if opt_kind is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if opt_kind is str and not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if opt_kind is float:          # a duration: seconds, or a string such as "10s"
        return parse_duration(value, where)
    return value


SERIAL_BACKENDS = ("stdio", "null", "file:PATH", "unix:PATH,server,nowait", "pty")


def check_serial(spec: str, base_dir: Path) -> str:
    """A -serial backend as QEMU spells it; a path in it made absolute."""
    kind, _, rest = spec.partition(":")
    if spec in ("stdio", "null", "pty"):
        return spec
    if kind == "file" and rest:
        return f"file:{(base_dir / Path(rest).expanduser()).absolute()}"
    if kind == "unix" and rest:
        path, *flags = rest.split(",")
        bad = [f for f in flags if f not in ("server", "nowait", "server=on", "wait=off")]
        if path and ("server" in flags or "server=on" in flags):
            if bad:
                raise ConfigError(f"serial: {spec!r}: unknown option(s) {', '.join(bad)}")
            return f"unix:{(base_dir / Path(path).expanduser()).absolute()},server,nowait"
        raise ConfigError(f"serial: {spec!r}: only a listening socket is supported (unix:PATH,server,nowait)")
    raise ConfigError(f"serial: {spec!r} is not one of {', '.join(SERIAL_BACKENDS)}")


def _asset(spec: str, base_dir: Path, where: str) -> Path:
    """A file named by the config: a path (relative to the config's
    directory) or guestkit:NAME, fetched and cached on first use."""
    spec = spec.strip()
    if spec.startswith(GUESTKIT_PREFIX):
        from . import guestkit
        name = spec[len(GUESTKIT_PREFIX):]
        try:
            if name == "initramfs":
                return guestkit.build_initramfs()
            image_file = guestkit.image_asset(name)     # debian-13, debian-13-initrd, debian-13-disk
            if image_file is not None:
                return image_file
            if name not in guestkit.KERNELS:
                raise ConfigError(f"{where}: unknown guest-kit asset {name!r} (known: initramfs, "
                                  f"{', '.join(list(guestkit.KERNELS) + guestkit.image_asset_names())})")
            return guestkit.fetch_kernel(name).vmlinuz
        except guestkit.FetchError as exc:
            raise ConfigError(f"{where}: {spec}: {exc}") from None
    return _file(spec, base_dir, where)


def _file(spec: str, base_dir: Path, where: str) -> Path:
    """An existing regular file, relative to `base_dir`."""
    path = Path(spec).expanduser()
    if not path.is_absolute():
        path = (base_dir / path).resolve()
    if path.is_dir():
        raise ConfigError(f"{where}: {path}: is a directory")
    if not path.is_file():
        raise ConfigError(f"{where}: {path}: no such file" if not path.exists() else
                          f"{where}: {path}: not a regular file")
    return path


def _drives(tables: list[tuple[str, dict, Path]], snapshot_all: bool) -> list[DriveConfig]:
    """Validate drive tables, each (where, table, base directory): explicit
    indexes first, then the others on the lowest free index in order."""
    parsed: list[tuple[str, DriveConfig, int | None]] = []
    for where, table, base_dir in tables:
        if not isinstance(table, dict):
            raise ConfigError(f"{where} must be a table")
        _reject_unknown(table, _DRIVE_KEYS, where)
        if "file" not in table:
            raise ConfigError(f"{where}: file: missing (the disk image to attach)")
        file = _file(_typed(table["file"], str, f"{where} file"), base_dir, f"{where} file")
        fmt = _typed(table.get("format", "raw"), str, f"{where} format")
        if fmt not in DRIVE_FORMATS:
            raise ConfigError(f"{where} format: {fmt!r} is " +
                              ("not supported (bhive reads raw images only; qemu-img convert -O raw makes one)"
                               if fmt in QEMU_DRIVE_FORMATS else
                               f"unknown (known: {', '.join(DRIVE_FORMATS)})"))
        interface = _typed(table.get("if", "ide"), str, f"{where} if")
        if interface not in DRIVE_INTERFACES:
            raise ConfigError(f"{where} if: {interface!r} is " +
                              ("not supported yet (bhive has ide only)" if interface in QEMU_DRIVE_INTERFACES
                               else f"unknown (known: {', '.join(DRIVE_INTERFACES)})"))
        index = table.get("index")
        if index is not None:
            index = _typed(index, int, f"{where} index")
            if index not in IDE_INDEXES:
                raise ConfigError(f"{where} index: {index} is outside {IDE_INDEXES[0]}..{IDE_INDEXES[-1]} "
                                  f"(primary master, slave, secondary master, slave)")
        drive = DriveConfig(file=file, format=fmt, interface=interface,
                            readonly=_typed(table.get("readonly", False), bool, f"{where} readonly"),
                            snapshot=_typed(table.get("snapshot", False), bool, f"{where} snapshot") or snapshot_all)
        parsed.append((where, drive, index))
    taken: dict[int, str] = {}
    for where, drive, index in sorted(parsed, key=lambda p: p[2] is None):
        if index is None:
            free = [i for i in IDE_INDEXES if i not in taken]
            if not free:
                raise ConfigError(f"{where}: no IDE index is free (there are {len(IDE_INDEXES)})")
            index = free[0]
        elif index in taken:
            raise ConfigError(f"{where} index: {index} is already used by {taken[index]}")
        taken[index] = where
        drive.index = index
    drives = sorted((d for _, d, _ in parsed), key=lambda d: d.index)
    for i, a in enumerate(drives):
        for b in drives[i + 1:]:
            if os.path.samefile(a.file, b.file) and not all(d.readonly or d.snapshot for d in (a, b)):
                raise ConfigError(f"{taken[b.index]} file: {b.file} is also attached by {taken[a.index]} "
                                  f"(drives may share an image only read-only or with snapshot)")
    return drives


def load(path: str | Path, overrides: dict | None = None, boot_overrides: dict | None = None,
         **cli) -> VmConfig:
    """Read and validate a config file.  `overrides` are CLI settings
    (``{"name": ..., "cpus": ..., "memory": ...}``) that win over the file;
    `boot_overrides` likewise for [boot] (``kernel``, ``initrd``, ``append``);
    `cli` the other command-line additions from_dict takes."""
    import tomllib      # here: every worker imports this module, only `bhive run` parses TOML
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file") from None
    return from_dict(raw, base_dir=path.parent, default_name=path.stem, overrides=overrides, source=path,
                     boot_overrides=boot_overrides, **cli)


def from_dict(raw: dict, base_dir: Path, default_name: str = "vm",
              overrides: dict | None = None, source: Path | None = None,
              boot_overrides: dict | None = None,
              drives: list[tuple[str, dict]] | None = None, snapshot: bool = False,
              device_overrides: list[tuple[str, dict]] | None = None) -> VmConfig:
    """`drives`: drives from the command line, each (the flag that gave it,
    a [[drive]]-shaped table with an absolute file); `snapshot`: -snapshot,
    for every drive; `device_overrides`: (device type, options) that win
    over the options of the config's device of that type (added if it has
    none), e.g. -device isa-debug-exit,iobase=0xf4."""
    _reject_unknown(raw, _TOP, "config")
    vm = raw.get("vm", {})
    boot = raw.get("boot", {})
    msr = raw.get("msr", {})
    devices = raw.get("devices", {})
    for name, table in (("vm", vm), ("boot", boot), ("msr", msr), ("devices", devices)):
        if not isinstance(table, dict):
            raise ConfigError(f"[{name}] must be a table")
    _reject_unknown(vm, _VM_KEYS, "[vm]")
    _reject_unknown(boot, _BOOT_KEYS, "[boot]")
    _reject_unknown(msr, _MSR_KEYS, "[msr]")
    drive_tables = raw.get("drive", [])
    if not isinstance(drive_tables, list):
        raise ConfigError("[drive] must be an array of tables: write [[drive]]")
    if device_overrides:
        devices = {n: dict(t) if isinstance(t, dict) else t for n, t in devices.items()}
        for dtype, opts in device_overrides:
            names = [n for n, t in devices.items() if isinstance(t, dict) and t.get("type", n) == dtype]
            target = names[0] if names else dtype
            devices[target] = {**devices.get(target, {}), **opts}
    vm = {**vm, **{k: v for k, v in (overrides or {}).items() if v is not None}}

    name = vm.get("name", default_name)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}", name):
        raise ConfigError(f"[vm] name: {name!r} must be 1-32 characters of letters, digits, '.', '_' or '-'")
    cpus = _typed(vm.get("cpus", 1), int, "[vm] cpus")
    if not 1 <= cpus <= MAX_CPUS:
        raise ConfigError(f"[vm] cpus: {cpus} is outside 1..{MAX_CPUS}")
    memory = parse_size(vm.get("memory", "128M"), "[vm] memory")
    accel_name = _typed(vm.get("accel", "softvmm"), str, "[vm] accel")
    if accel_name not in accel.NAMES:
        raise ConfigError(f"[vm] accel: unknown accelerator {accel_name!r} (known: {', '.join(accel.NAMES)})")
    if accel_name == "bhyve":          # a host without vmm.ko is a config error, before anything starts
        ok, why = accel.get("bhyve").available()
        if not ok:
            raise ConfigError(f"[vm] accel: bhyve is not available here: {why}")

    boot = {**boot, **{k: v for k, v in (boot_overrides or {}).items() if v is not None}}
    kind = _typed(boot.get("kind", "kernel" if "kernel" in boot else "flat"), str, "[boot] kind")
    if kind not in BOOT_KINDS:
        raise ConfigError(f"[boot] kind: {kind!r} is not one of {', '.join(BOOT_KINDS)}")
    kernel, initrd, initrd_args = None, [], []
    append = _typed(boot.get("append", ""), str, "[boot] append")
    load_address = entry = 0
    if kind == "kernel":
        if "kernel" not in boot:
            raise ConfigError("[boot] kernel: missing (the kernel image to boot)")
        kernel = _asset(_typed(boot["kernel"], str, "[boot] kernel"), base_dir, "[boot] kernel")
        # "a.bin,b.bin arg=1": comma-separated modules, each a path and,
        # after the first blank, its arguments (QEMU's -initrd for Multiboot)
        spec = _typed(boot.get("initrd", ""), str, "[boot] initrd")
        parts = [part.strip().split(None, 1) for part in spec.split(",") if part.strip()]
        initrd = [_asset(p[0], base_dir, "[boot] initrd") for p in parts]
        initrd_args = [p[1] if len(p) > 1 else "" for p in parts]
        image = kernel
    else:
        if "image" not in boot:
            raise ConfigError("[boot] image: missing (the guest image to load)")
        image = _asset(_typed(boot["image"], str, "[boot] image"), base_dir, "[boot] image")
        load_address = _typed(boot.get("load_address", 0x8000), int, "[boot] load_address")
        entry = _typed(boot.get("entry", load_address), int, "[boot] entry")
        if not 0 <= load_address < memory:
            raise ConfigError(f"[boot] load_address: {load_address:#x} is outside guest RAM")
        if not 0 <= entry < 0x100000:
            raise ConfigError(f"[boot] entry: {entry:#x} is not reachable in real mode (below 1M)")

    exit_transport = _typed(vm.get("exit_transport", "shm"), str, "[vm] exit_transport")
    if exit_transport not in EXIT_TRANSPORTS:
        raise ConfigError(f"[vm] exit_transport: {exit_transport!r} is not one of {', '.join(EXIT_TRANSPORTS)}")
    watchdog = vm.get("watchdog", 0)
    if isinstance(watchdog, bool) or not isinstance(watchdog, (int, float)) or watchdog < 0:
        raise ConfigError(f"[vm] watchdog: {watchdog!r} must be a number of seconds (0: none)")
    no_reboot = _typed(vm.get("no_reboot", False), bool, "[vm] no_reboot")
    triple_fault = _typed(vm.get("triple_fault", "stop"), str, "[vm] triple_fault")
    if triple_fault not in TRIPLE_FAULT_ACTIONS:
        raise ConfigError(f"[vm] triple_fault: {triple_fault!r} is not one of {', '.join(TRIPLE_FAULT_ACTIONS)}")
    serial = check_serial(_typed(vm.get("serial", "stdio"), str, "[vm] serial"), base_dir)
    on_vcpu_loss = _typed(vm.get("on_vcpu_loss", "continue"), str, "[vm] on_vcpu_loss")
    if on_vcpu_loss == "restart":
        raise ConfigError("[vm] on_vcpu_loss: \"restart\" is not supported yet (a vCPU's state lives in its "
                          "process); use \"continue\" or \"stop\"")
    if on_vcpu_loss not in VCPU_LOSS_POLICIES:
        raise ConfigError(f"[vm] on_vcpu_loss: {on_vcpu_loss!r} is not one of {', '.join(VCPU_LOSS_POLICIES)}")
    unknown_msr = _typed(msr.get("unknown", "gp"), str, "[msr] unknown")
    if unknown_msr not in MSR_POLICIES:
        raise ConfigError(f"[msr] unknown: {unknown_msr!r} is not one of {', '.join(MSR_POLICIES)}")

    cpu = _cpu_model(raw.get("cpu", {}), (overrides or {}).get("cpu"))
    cfg = VmConfig(name=name, cpus=cpus, memory=memory, accel=accel_name, boot_kind=kind, cpu=cpu,
                   image=image, load_address=load_address, entry=entry,
                   unknown_msr=unknown_msr, source=source, exit_transport=exit_transport,
                   kernel=kernel, initrd=initrd, initrd_args=initrd_args, append=append,
                   watchdog=float(watchdog), no_reboot=no_reboot, serial=serial, on_vcpu_loss=on_vcpu_loss,
                   triple_fault=triple_fault)
    cfg.drives = _drives([(f"[[drive]] #{n}", t, base_dir) for n, t in enumerate(drive_tables, 1)] +
                         [(where, t, base_dir) for where, t in drives or []], snapshot)
    owners: dict[int, str] = {}
    windows: list[tuple[int, int, str]] = []
    for dev_name, table in devices.items():
        where = f"[devices.{dev_name}]"
        if not isinstance(table, dict):
            raise ConfigError(f"{where} must be a table")
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,23}", dev_name) or dev_name.startswith("vcpu"):
            raise ConfigError(f"{where}: bad device name (lower-case letters, digits, '_'; not vcpuN)")
        dtype_name = table.get("type", dev_name)
        dtype = DEVICE_TYPES.get(dtype_name)
        if dtype is None:
            raise ConfigError(f"{where} type: unknown device type {dtype_name!r} "
                              f"(known: {', '.join(sorted(DEVICE_TYPES))})")
        allowed = {**COMMON_OPTIONS, **dtype.options}
        _reject_unknown(table, set(allowed), where)
        opts = {}
        for key, opt in allowed.items():
            if key == "type":
                continue
            value = _typed(table.get(key, opt.default), opt.kind, f"{where} {key}")
            if opt.choices and value not in opt.choices:
                raise ConfigError(f"{where} {key}: {value!r} is not one of {', '.join(map(str, opt.choices))}")
            if opt.minimum is not None and value < opt.minimum or opt.maximum is not None and value > opt.maximum:
                raise ConfigError(f"{where} {key}: {value!r} is outside {opt.minimum}..{opt.maximum}")
            opts[key] = value
        ports = sorted(p for r in port_ranges(dtype, opts) for p in r)
        for port in ports:
            if port in owners:
                raise ConfigError(f"{where} port: {port:#x} is already claimed by [devices.{owners[port]}]")
            owners[port] = dev_name
        mmio = mmio_ranges(dtype, opts)
        for base, size in mmio:
            if base % 0x1000:
                raise ConfigError(f"{where} mmio: {base:#x} is not 4 KiB aligned")
            if base < min(cfg.memory, 0xC000_0000) or base + size > 0xFEE00000 > base:
                raise ConfigError(f"{where} mmio: {base:#x} overlaps guest RAM or the local APIC")
            for obase, osize, other in windows:
                if base < obase + osize and obase < base + size:
                    raise ConfigError(f"{where} mmio: {base:#x} overlaps [devices.{other}]")
            windows.append((base, size, dev_name))
        cfg.devices[dev_name] = DeviceConfig(dev_name, dtype_name, opts, ports, mmio)
    singletons = ("ioapic", "pic", "pit", "rtc", "i8042", "acpi_pm", "testdev", "fw_cfg")
    if len([d for d in cfg.devices.values() if d.type in singletons]) != \
            len({d.type for d in cfg.devices.values() if d.type in singletons}):
        raise ConfigError(f"[devices]: a platform device type ({', '.join(singletons)}) may appear only once")
    for d in cfg.devices_of("fw_cfg"):
        if d.options["max_cpus"] and d.options["max_cpus"] < cfg.cpus:
            raise ConfigError(f"[devices.{d.name}] max_cpus: {d.options['max_cpus']} is below the "
                              f"{cfg.cpus} vCPUs of the VM")
    if "chaos" in raw:
        from . import chaos
        if not isinstance(raw["chaos"], dict):
            raise ConfigError("[chaos] must be a table")
        plan = chaos.parse_plan(raw["chaos"])
        chaos.check_targets(plan, list(cfg.devices), cfg.cpus)
        cfg.chaos = plan.to_json()
    return cfg


def _cpu_model(table, spec: str | None) -> dict:
    """[cpu] model / vendor / features, or the CLI's -cpu (which wins)."""
    from . import cpumodel
    if not isinstance(table, dict):
        raise ConfigError("[cpu] must be a table")
    _reject_unknown(table, _CPU_KEYS, "[cpu]")
    try:
        if spec is not None:
            return cpumodel.parse(spec).to_json()
        feats = table.get("features", [])
        if isinstance(feats, str):
            feats = [f for f in feats.split(",") if f.strip()]
        if not isinstance(feats, list) or not all(isinstance(f, str) for f in feats):
            raise ConfigError(f"[cpu] features: expected a list of \"+name\" / \"-name\", got {feats!r}")
        return cpumodel.build(_typed(table.get("model", "max"), str, "[cpu] model"),
                              _typed(table["vendor"], str, "[cpu] vendor") if "vendor" in table else None,
                              feats).to_json()
    except cpumodel.CpuModelError as exc:
        raise ConfigError(f"{'-cpu' if spec is not None else '[cpu]'}: {exc}") from None


def to_json(cfg: VmConfig) -> dict:
    """The validated config as plain JSON, for the run directory: every
    process of the VM reads this instead of re-parsing the TOML."""
    return {
        "name": cfg.name, "cpus": cfg.cpus, "memory": cfg.memory, "accel": cfg.accel,
        "boot_kind": cfg.boot_kind, "image": str(cfg.image), "load_address": cfg.load_address,
        "entry": cfg.entry, "unknown_msr": cfg.unknown_msr, "exit_transport": cfg.exit_transport,
        "source": str(cfg.source) if cfg.source else None,
        "kernel": str(cfg.kernel) if cfg.kernel else None, "initrd": [str(p) for p in cfg.initrd],
        "initrd_args": cfg.initrd_args,
        "append": cfg.append, "watchdog": cfg.watchdog, "cpu": cfg.cpu, "no_reboot": cfg.no_reboot,
        "serial": cfg.serial, "on_vcpu_loss": cfg.on_vcpu_loss, "chaos": cfg.chaos,
        "triple_fault": cfg.triple_fault,
        "drives": [{"file": str(d.file), "format": d.format, "interface": d.interface, "index": d.index,
                    "readonly": d.readonly, "snapshot": d.snapshot} for d in cfg.drives],
        "devices": {n: {"type": d.type, "options": d.options, "ports": d.port_spans,
                        "mmio": [list(w) for w in d.mmio]}
                    for n, d in cfg.devices.items()},
    }


def from_json(data: dict) -> VmConfig:
    devices = {n: DeviceConfig(n, d["type"], d["options"],
                               [p for a, b in d["ports"] for p in range(a, b)],
                               [tuple(w) for w in d.get("mmio", [])])
               for n, d in data["devices"].items()}
    return VmConfig(name=data["name"], cpus=data["cpus"], memory=data["memory"], accel=data["accel"],
                    boot_kind=data["boot_kind"], image=Path(data["image"]),
                    load_address=data["load_address"], entry=data["entry"],
                    unknown_msr=data["unknown_msr"], devices=devices,
                    exit_transport=data["exit_transport"],
                    source=Path(data["source"]) if data["source"] else None,
                    kernel=Path(data["kernel"]) if data.get("kernel") else None,
                    initrd=[Path(p) for p in data.get("initrd", [])],
                    initrd_args=data.get("initrd_args", []), append=data.get("append", ""),
                    watchdog=data.get("watchdog", 0.0), cpu=data.get("cpu", {"model": "max"}),
                    no_reboot=data.get("no_reboot", False), serial=data.get("serial", "stdio"),
                    on_vcpu_loss=data.get("on_vcpu_loss", "continue"), chaos=data.get("chaos"),
                    triple_fault=data.get("triple_fault", "stop"),
                    drives=[DriveConfig(**{**d, "file": Path(d["file"])}) for d in data.get("drives", [])])
