"""QEMU's command-line spellings, turned into what bhive's config takes.

`bhive run` accepts QEMU's own flags beside its double-dash ones
(bhive.cli registers both); this module parses their values, in QEMU's
syntax (QemuOpts: ``key=value,key=value``, ``,,`` for a comma inside a
value, a bare boolean key meaning ``on``), and lists the QEMU options bhive
does not have, so that each is refused by name.  Errors are ConfigErrors
(one line, exit status 2).
"""

from __future__ import annotations


def _error(msg: str) -> Exception:
    """A ConfigError, imported only when there is one: the CLI builds its
    parser from this module's tables without loading the config module."""
    from .config import ConfigError
    return ConfigError(msg)


# QEMU's booleans (qapi's parse_option_bool, plus the yes/no it also takes)
_TRUE = ("on", "yes", "true", "y")
_FALSE = ("off", "no", "false", "n")


def split(text: str, flag: str, implied: str | None = None) -> list[tuple[str, str]]:
    """'a=1,b=x,,y,c' -> [('a', '1'), ('b', 'x,y'), ('c', 'on')]; a first
    item without '=' is the value of `implied` if there is one."""
    items, cur, i = [], "", 0
    while i < len(text):
        ch = text[i]
        if ch == "," and text[i + 1:i + 2] == ",":
            cur += ","
            i += 2
            continue
        if ch == ",":
            items.append(cur)
            cur = ""
        else:
            cur += ch
        i += 1
    items.append(cur)
    out = []
    for n, item in enumerate(items):
        if not item:
            raise _error(f"{flag} {text}: empty option")
        key, eq, value = item.partition("=")
        if not eq:
            if n == 0 and implied is not None:
                key, value = implied, item
            else:
                value = "on"
        out.append((key, value))
    return out


def boolean(value: str, flag: str, key: str) -> bool:
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise _error(f"{flag} {key}={value}: expected on or off")


def number(value: str, flag: str, key: str) -> int:
    try:
        return int(value, 0)
    except ValueError:
        raise _error(f"{flag} {key}={value}: not a number") from None


def memory(value: str) -> str:
    """-m: '512' is MiB, as QEMU reads a bare number; '1G', '512M', also
    'size=1G'.  Returns what config.parse_size takes."""
    items = split(value, "-m", implied="size")
    for key, _ in items:
        if key != "size":
            raise _error(f"-m {value}: {key!r} is not supported (bhive takes the size only)")
    size = items[-1][1].strip()
    return f"{size}M" if size.isdigit() else size


def smp(value: str) -> int:
    """-smp 4, -smp cpus=4, -smp 4,sockets=1,cores=4,threads=1 ->
    the number of vCPUs (the topology must multiply to it)."""
    opts: dict[str, int] = {}
    for key, val in split(value, "-smp", implied="cpus"):
        if key not in ("cpus", "maxcpus", "sockets", "dies", "clusters", "cores", "threads"):
            raise _error(f"-smp {value}: unknown option {key!r}")
        opts[key] = number(val, "-smp", key)
    topo = [opts[k] for k in ("sockets", "dies", "clusters", "cores", "threads") if k in opts]
    product = 1
    for n in topo:
        product *= n
    cpus = opts.get("cpus", product if topo else None)
    if cpus is None:
        raise _error(f"-smp {value}: no CPU count")
    if topo and product != cpus:
        raise _error(f"-smp {value}: the topology makes {product} CPUs, not {cpus}")
    if opts.get("maxcpus", cpus) != cpus:
        raise _error(f"-smp {value}: maxcpus must equal cpus (bhive has no CPU hotplug)")
    return cpus


def name(value: str) -> str:
    """-name NAME or -name guest=NAME[,debug-threads=on] (the latter has
    no effect: every bhive process is named already)."""
    out = None
    for key, val in split(value, "-name", implied="guest"):
        if key == "guest":
            out = val
        elif key != "debug-threads":
            raise _error(f"-name {value}: {key!r} is not supported")
    if out is None:
        raise _error(f"-name {value}: no name")
    return out


# -drive keys bhive takes (the [[drive]] table's), and QEMU's media=disk
_DRIVE_KEYS = ("file", "format", "if", "index", "readonly", "snapshot", "media")


def drive(value: str) -> dict:
    """-drive file=IMG,format=raw,if=ide[,readonly=on][,index=N][,snapshot=on]
    -> a [[drive]] table (file as given: the CLI makes it absolute)."""
    table: dict = {}
    for key, val in split(value, "-drive"):
        if key not in _DRIVE_KEYS:
            raise _error(f"-drive {value}: {key!r} is not supported "
                              f"(bhive takes {', '.join(_DRIVE_KEYS)})")
        if key == "media":
            if val != "disk":
                raise _error(f"-drive {value}: media={val} is not supported yet (disks only)")
            continue
        if key in ("readonly", "snapshot"):
            table[key] = boolean(val, "-drive", key)
        elif key == "index":
            table[key] = number(val, "-drive", key)
        else:
            table[key] = val
    if "file" not in table:
        raise _error(f"-drive {value}: file=IMAGE is missing")
    return table


# -device types bhive has, as QEMU names them -> (config device type, {QEMU property: config key})
DEVICES = {
    "isa-debug-exit": ("debug_exit", {"iobase": "port", "iosize": "iosize"}),
}


def device(value: str) -> tuple[str, dict]:
    """-device isa-debug-exit,iobase=0xf4,iosize=4 -> ('debug_exit', {'port': 0xf4, 'iosize': 4})."""
    items = split(value, "-device", implied="driver")
    driver = items[0][1] if items[0][0] == "driver" else None
    if driver not in DEVICES:
        raise _error(f"-device {value}: bhive has no device {driver!r} "
                          f"(-device knows: {', '.join(DEVICES)}; the PC platform's devices are in the config)")
    dtype, props = DEVICES[driver]
    options = {}
    for key, val in items[1:]:
        if key not in props:
            raise _error(f"-device {value}: {driver} has no property {key!r} (known: {', '.join(props)})")
        options[props[key]] = number(val, "-device", key)
    return dtype, options


def accelerator(value: str) -> str:
    """-accel NAME (bhive's accelerators: softvmm, kvm, bhyve); the
    config check names an unknown one, such as QEMU's tcg."""
    items = split(value, "-accel", implied="accel")
    if len(items) > 1:
        raise _error(f"-accel {value}: accelerator options are not supported")
    return items[0][1]


# QEMU system-emulator options bhive does not have: option -> takes a value.
# Each is refused by name (bhive.cli) instead of argparse's "unrecognized".
UNSUPPORTED = {
    "-machine": True, "-M": True, "-boot": True, "-bios": True, "-L": True,
    "-vga": True, "-display": True, "-vnc": True, "-spice": True, "-full-screen": False,
    "-curses": False, "-sdl": False, "-g": True,
    "-netdev": True, "-net": True, "-nic": True,
    "-cdrom": True, "-fda": True, "-fdb": True, "-mtdblock": True, "-sd": True, "-pflash": True,
    "-blockdev": True, "-fsdev": True, "-virtfs": True, "-iscsi": True,
    "-chardev": True, "-monitor": True, "-qmp": True, "-qmp-pretty": True, "-mon": True,
    "-parallel": True, "-debugcon": True, "-gdb": True, "-s": False, "-S": False,
    "-D": True, "-dfilter": True, "-trace": True, "-plugin": True, "-icount": True, "-rtc": True,
    "-object": True, "-global": True, "-set": True, "-numa": True, "-k": True,
    "-audiodev": True, "-audio": True, "-soundhw": True, "-usb": False, "-usbdevice": True,
    "-incoming": True, "-loadvm": True, "-option-rom": True, "-pidfile": True, "-smbios": True,
    "-acpitable": True, "-fw_cfg": True, "-add-fd": True, "-tpmdev": True, "-watchdog-action": True,
    "-action": True, "-semihosting": False, "-semihosting-config": True, "-overcommit": True,
    "-mem-path": True, "-mem-prealloc": False, "-uuid": True, "-msg": True, "-run-with": True,
    "-sandbox": True, "-readconfig": True, "-writeconfig": True, "-seed": True, "-runas": True,
    "-chroot": True, "-daemonize": False, "-nodefaults": False, "-no-user-config": False,
    "-no-shutdown": False, "-no-acpi": False, "-no-hpet": False, "-win2k-hack": False,
    "-no-fd-bootchk": False, "-only-migratable": False, "-preconfig": False, "-xen-domid": True,
    "-device-help": False, "-compat": True, "-async-teardown": False, "-enable-sync-profile": False,
}
