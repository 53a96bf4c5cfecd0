"""The device registry: every device type, what it claims and what it may be told.

One entry per device type, and nothing else lists devices: `bhive.config`
validates a VM's `[devices.*]` tables against it, the vCPU processes route
exits with it, and `bhive.devices_worker` hosts the device it names.  An
entry names the device's model (`bhive/actors/NAME.py`), the host that
glues the model to its actor process (a `bhive.actors.host.DeviceHost`,
beside the model in the same file) and the options with their defaults.
A new device is its model file and one entry here.

A device claims I/O ports (`port_count` consecutive ports from its `port`
option, plus `fixed_ports` that the PC puts at fixed addresses, e.g. the
slave PIC at 0xA0 and the ELCR at 0x4D0) and MMIO windows (`mmio_size`
bytes from its `mmio` option).  Overlaps are config errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .actors import acpi_pm, debug_exit, fw_cfg, i8042, ide, ioapic, pci, pic, pit, port92, rtc, testdev, uart
from .actors.host import DeviceHost


@dataclass(frozen=True)
class Option:
    kind: type                # int, str, bool or float (a duration: seconds or "10s")
    default: object
    choices: tuple = ()
    minimum: int | None = None
    maximum: int | None = None


@dataclass(frozen=True)
class DeviceType:
    name: str
    model: type                         # the device model class (read/write/state/from_state)
    host: type[DeviceHost]              # its glue in the actor process
    port_count: int                     # consecutive I/O ports from `port` (0: `iosize`)
    options: dict[str, Option] = field(default_factory=dict)
    fixed_ports: tuple = ()             # (first, count) claimed whatever `port` says
    mmio_size: int = 0                  # bytes of MMIO from the `mmio` option
    irq_controller: bool = False        # receives IrqLineLevel messages
    posted_writes: bool = False         # port writes need no completion: the vCPU goes on at once
    # A port (offset from `port`) whose reads the vCPU may answer from the
    # actor's register mirror (bhive.bus.channel MIRROR), and the offsets
    # whose writes cannot change that register.  With posted writes, this
    # lets softvmm serve the device's hot ports without exits.
    mirror_offset: int = -1
    neutral_writes: tuple = ()
    # A function on PCI bus 0: () -> bhive.actors.pci.FunctionSpec, its
    # config header; the pci actor puts it on the bus, owned by this actor.
    pci_function: object = None


# Keys every device table accepts.
COMMON_OPTIONS = {
    "type": Option(str, None),
    "restart": Option(str, "always", choices=("always", "never")),
    # The restart budget: at most `max_restarts` restarts within any
    # `restart_window` (a sliding window), so a chaos run that kills the
    # actor now and then goes on forever while a crash loop still ends the
    # VM.  restart_window = 0: `max_restarts` over the VM's whole life.
    "max_restarts": Option(int, 10, minimum=0, maximum=100000),
    "restart_window": Option(float, 10.0, minimum=0, maximum=86400),
}

DEVICE_TYPES: dict[str, DeviceType] = {
    # Posted writes: THR output needs no answer, and the LSR read that
    # paces it comes after the writes on the same channel.  LSR is
    # mirrored; writes to THR/DLL (offset 0) leave it alone.
    "uart": DeviceType("uart", uart.Serial16550, uart.UartHost, uart.REGISTER_COUNT, {
        "port": Option(int, 0x3F8, minimum=0, maximum=0xFFF8),
        "irq": Option(int, 4, minimum=0, maximum=23),
        "console": Option(bool, True),
    }, posted_writes=True, mirror_offset=5, neutral_writes=(0,)),
    "debug_exit": DeviceType("debug_exit", debug_exit.DebugExit, debug_exit.DebugExitHost, 0, {
        "port": Option(int, 0xF4, minimum=0, maximum=0xFFFF),
        "iosize": Option(int, 4, choices=(1, 2, 4)),
    }),
    # Intel 82093AA, 24 pins; GSI n = pin n.  Its MSIs go to the vCPU processes.
    "ioapic": DeviceType("ioapic", ioapic.IoApic, ioapic.IoApicHost, 0, {
        "mmio": Option(int, ioapic.MMIO_BASE, minimum=ioapic.MMIO_BASE, maximum=0xFEDFF000),
        "id": Option(int, 0, minimum=0, maximum=15),
    }, mmio_size=0x1000, irq_controller=True),
    # Master 8259A at `port` (0x20), slave at 0xA0, PIIX ELCR at 0x4D0.
    "pic": DeviceType("pic", pic.DualPic, pic.PicHost, 2, {
        "port": Option(int, pic.MASTER_BASE, choices=(pic.MASTER_BASE,)),
    }, fixed_ports=((pic.SLAVE_BASE, 2), (pic.ELCR_BASE, 2)), irq_controller=True),
    # 8254 at 0x40-0x43 (OUT0 drives IRQ0), port B at 0x61.
    "pit": DeviceType("pit", pit.Pit8254, pit.PitHost, 4, {
        "port": Option(int, 0x40, choices=(0x40,)),
        "irq": Option(int, 0, minimum=0, maximum=23),
    }, fixed_ports=((pit.PORTB_PORT, 1),)),
    "rtc": DeviceType("rtc", rtc.Rtc, rtc.RtcHost, 2, {
        "port": Option(int, 0x70, minimum=0, maximum=0xFFFE),
        "irq": Option(int, 8, minimum=0, maximum=23),
    }),
    # Keyboard controller: data 0x60, status/command 0x64; 0xFE resets the VM.
    # `irq` is the keyboard's line (IRQ1), `aux_irq` the AUX port's (IRQ12).
    "i8042": DeviceType("i8042", i8042.I8042, i8042.I8042Host, 1, {
        "port": Option(int, 0x60, choices=(0x60,)),
        "irq": Option(int, 1, minimum=0, maximum=23),
        "aux_irq": Option(int, 12, minimum=0, maximum=23),
    }, fixed_ports=((0x64, 1),)),
    # System Control Port A: fast A20 gate and fast reset (bit 0).
    "port92": DeviceType("port92", port92.SystemControlPortA, port92.Port92Host, 1, {
        "port": Option(int, port92.PORT, choices=(port92.PORT,)),
    }),
    # ACPI PM1a event/control blocks and the PM timer (12 ports from `port`).
    "acpi_pm": DeviceType("acpi_pm", acpi_pm.AcpiPm, acpi_pm.AcpiPmHost, acpi_pm.PORT_COUNT, {
        "port": Option(int, acpi_pm.PM_BASE, minimum=0x100, maximum=0xFFF0),
        "sci": Option(int, 9, minimum=0, maximum=23),
    }),
    # QEMU's pc-testdev: OUT 1/0 to 0x2000+n raises/lowers line n; a
    # 4-byte latch at 0xE0 (and byte-wide at 0xE8), page flush at 0xE4;
    # 64 KiB of plain MMIO at 0xFF000000.
    "testdev": DeviceType("testdev", testdev.TestDev, testdev.TestDevHost, testdev.NUM_LINES, {
        "port": Option(int, testdev.IRQ_BASE, minimum=0, maximum=0xFFFF - testdev.NUM_LINES),
        "mmio": Option(int, testdev.IOMEM_BASE, minimum=0xC0000000, maximum=0xFFFF0000),
    }, fixed_ports=(testdev.LEGACY_PORTS,), mmio_size=testdev.IOMEM_SIZE),
    # QEMU's firmware configuration interface (selector and data ports):
    # signature, ID, CPU count, RAM size, max CPUs, the file directory.
    "fw_cfg": DeviceType("fw_cfg", fw_cfg.FwCfg, fw_cfg.FwCfgHost, fw_cfg.PORT_COUNT, {
        "port": Option(int, fw_cfg.PORT_BASE, minimum=0, maximum=0xFFFE),
        "max_cpus": Option(int, 0, minimum=0, maximum=255),   # 0: the VM's vCPU count
    }),
    # i440FX host bridge: configuration mechanism #1 at 0xCF8/0xCFC (and the
    # PIIX3 reset control register at 0xCF9); bus 0's config spaces, in
    # shared memory for the functions' own actors and the vCPUs.
    "pci": DeviceType("pci", pci.PciHost, pci.PciHostDevice, pci.PORT_COUNT, {
        "port": Option(int, pci.PORT_BASE, choices=(pci.PORT_BASE,)),
    }),
    # PIIX3 IDE (PCI 00:01.1): both channels in compatibility mode (IRQ 14
    # and 15), the bus-master registers behind BAR4 (routed by the vCPUs);
    # drives come from [[drive]] (vm.drives).
    "ide": DeviceType("ide", ide.PiixIde, ide.IdeHost, 0, {},
                      fixed_ports=tuple((cmd, ide.CMD_BLOCK_SIZE) for cmd, _, _ in ide.CHANNELS) +
                      tuple((ctl, 1) for _, ctl, _ in ide.CHANNELS),
                      pci_function=ide.pci_function),
}


def port_ranges(dtype: DeviceType, opts: dict) -> list[range]:
    """The I/O port ranges a configured device claims."""
    out = []
    if "port" in opts:
        count = dtype.port_count or opts.get("iosize", 1)
        out.append(range(opts["port"], opts["port"] + count))
    out += [range(first, first + count) for first, count in dtype.fixed_ports]
    return out


def mmio_ranges(dtype: DeviceType, opts: dict) -> list[tuple[int, int]]:
    """The MMIO windows (base, size) a configured device claims."""
    if dtype.mmio_size and "mmio" in opts:
        return [(opts["mmio"], dtype.mmio_size)]
    return []
