"""The catalogue of device types: what each claims and what it may be told.

One entry per device type.  `bhive.config` validates a VM's `[devices.*]`
tables against it, and `bhive.devices_worker` builds the model from it, so
a new device is added here once.

A device claims I/O ports (`port_count` consecutive ports from its `port`
option, plus `fixed_ports` that the PC puts at fixed addresses, e.g. the
slave PIC at 0xA0 and the ELCR at 0x4D0) and MMIO windows (`mmio_size`
bytes from its `mmio` option).  Overlaps are config errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Option:
    kind: type                # int, str or bool
    default: object
    choices: tuple = ()
    minimum: int | None = None
    maximum: int | None = None


@dataclass(frozen=True)
class DeviceType:
    name: str
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


# Keys every device table accepts.
COMMON_OPTIONS = {
    "type": Option(str, None),
    "restart": Option(str, "always", choices=("always", "never")),
    "max_restarts": Option(int, 10, minimum=0, maximum=1000),
}

IOAPIC_BASE = 0xFEC00000
ACPI_PM_BASE = 0x600          # PM1a_EVT_BLK; PM1a_CNT_BLK +4; PM_TMR_BLK +8 (the FADT says so)
TESTDEV_IRQ_BASE = 0x2000     # pc-testdev: 0x2000 + n drives line n
TESTDEV_LINES = 24
TESTDEV_IOMEM = 0xFF000000    # pc-testdev: 64 KiB of plain MMIO
FW_CFG_PORT = 0x510           # QEMU fw_cfg: selector 0x510, data 0x511

DEVICE_TYPES: dict[str, DeviceType] = {
    # Posted writes: THR output needs no answer, and the LSR read that
    # paces it comes after the writes on the same channel.  LSR is
    # mirrored; writes to THR/DLL (offset 0) leave it alone.
    "uart": DeviceType("uart", 8, {
        "port": Option(int, 0x3F8, minimum=0, maximum=0xFFF8),
        "irq": Option(int, 4, minimum=0, maximum=23),
        "console": Option(bool, True),
    }, posted_writes=True, mirror_offset=5, neutral_writes=(0,)),
    "debug_exit": DeviceType("debug_exit", 0, {
        "port": Option(int, 0xF4, minimum=0, maximum=0xFFFF),
        "iosize": Option(int, 4, choices=(1, 2, 4)),
    }),
    # Intel 82093AA, 24 pins; GSI n = pin n.  Its MSIs go to the vCPU processes.
    "ioapic": DeviceType("ioapic", 0, {
        "mmio": Option(int, IOAPIC_BASE, minimum=0xFEC00000, maximum=0xFEDFF000),
        "id": Option(int, 0, minimum=0, maximum=15),
    }, mmio_size=0x1000, irq_controller=True),
    # Master 8259A at `port` (0x20), slave at 0xA0, PIIX ELCR at 0x4D0.
    "pic": DeviceType("pic", 2, {
        "port": Option(int, 0x20, choices=(0x20,)),
    }, fixed_ports=((0xA0, 2), (0x4D0, 2)), irq_controller=True),
    # 8254 at 0x40-0x43 (OUT0 drives IRQ0), port B at 0x61.
    "pit": DeviceType("pit", 4, {
        "port": Option(int, 0x40, choices=(0x40,)),
        "irq": Option(int, 0, minimum=0, maximum=23),
    }, fixed_ports=((0x61, 1),)),
    "rtc": DeviceType("rtc", 2, {
        "port": Option(int, 0x70, minimum=0, maximum=0xFFFE),
        "irq": Option(int, 8, minimum=0, maximum=23),
    }),
    # Keyboard controller: data 0x60, status/command 0x64; 0xFE resets the VM.
    # `irq` is the keyboard's line (IRQ1), `aux_irq` the AUX port's (IRQ12).
    "i8042": DeviceType("i8042", 1, {
        "port": Option(int, 0x60, choices=(0x60,)),
        "irq": Option(int, 1, minimum=0, maximum=23),
        "aux_irq": Option(int, 12, minimum=0, maximum=23),
    }, fixed_ports=((0x64, 1),)),
    # ACPI PM1a event/control blocks and the PM timer (12 ports from `port`).
    "acpi_pm": DeviceType("acpi_pm", 12, {
        "port": Option(int, ACPI_PM_BASE, minimum=0x100, maximum=0xFFF0),
        "sci": Option(int, 9, minimum=0, maximum=23),
    }),
    # QEMU's pc-testdev: OUT 1/0 to 0x2000+n raises/lowers line n; a
    # 4-byte latch at 0xE0 (and byte-wide at 0xE8), page flush at 0xE4;
    # 64 KiB of plain MMIO at 0xFF000000.
    "testdev": DeviceType("testdev", TESTDEV_LINES, {
        "port": Option(int, TESTDEV_IRQ_BASE, minimum=0, maximum=0xFFFF - TESTDEV_LINES),
        "mmio": Option(int, TESTDEV_IOMEM, minimum=0xC0000000, maximum=0xFFFF0000),
    }, fixed_ports=((0xE0, 12),), mmio_size=0x10000),
    # QEMU's firmware configuration interface (selector and data ports):
    # signature, ID, CPU count, RAM size, max CPUs, the file directory.
    "fw_cfg": DeviceType("fw_cfg", 2, {
        "port": Option(int, FW_CFG_PORT, minimum=0, maximum=0xFFFE),
        "max_cpus": Option(int, 0, minimum=0, maximum=255),   # 0: the VM's vCPU count
    }),
    # i440FX host bridge: configuration mechanism #1 at 0xCF8/0xCFC (and the
    # PIIX3 reset control register at 0xCF9); bus 0's config spaces.
    "pci": DeviceType("pci", 8, {
        "port": Option(int, 0xCF8, choices=(0xCF8,)),
    }),
    # PIIX3 IDE (PCI 00:01.1): both channels in compatibility mode, the
    # bus-master registers behind BAR4; drives come from [[drive]] (vm.drives).
    "ide": DeviceType("ide", 0, {}, fixed_ports=((0x1F0, 8), (0x3F6, 1), (0x170, 8), (0x376, 1))),
}


def port_ranges(dtype: DeviceType, opts: dict) -> list[range]:
    """The I/O port ranges a configured device claims."""
    out = []
    if "port" in opts:
        count = dtype.port_count or opts.get("iosize", 1)
        out.append(range(opts["port"], opts["port"] + count))
    out += [range(first, first + count) for first, count in dtype.fixed_ports]
    return out


def port_range(dtype: DeviceType, opts: dict) -> range:
    """The main I/O port range (kept for callers that want one range)."""
    return port_ranges(dtype, opts)[0]


def mmio_ranges(dtype: DeviceType, opts: dict) -> list[tuple[int, int]]:
    """The MMIO windows (base, size) a configured device claims."""
    if dtype.mmio_size and "mmio" in opts:
        return [(opts["mmio"], dtype.mmio_size)]
    return []
