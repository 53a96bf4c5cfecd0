"""`bhive run` with QEMU's spellings beside bhive's own: each spelling
against the VmConfig it makes (the library the CLI calls), a few through
the real CLI, and every QEMU option bhive does not have, or a bad value,
as one line and exit status 2."""

from __future__ import annotations

from pathlib import Path

import sys

import pytest

from bhive import cli, config
from bhive.rundir import RunDir

HELLO = Path(__file__).resolve().parents[2] / "configs" / "hello.toml"
MiB = 1 << 20


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("qemu")
    (d / "kernel.bin").write_bytes(b"\0" * 512)
    (d / "initrd.img").write_bytes(b"\0" * 512)
    with open(d / "disk.img", "wb") as f:
        f.truncate(MiB)
    return {"k": d / "kernel.bin", "i": d / "initrd.img", "img": d / "disk.img", "dir": d}


def run_config(argv: list[str]) -> config.VmConfig:
    return cli.load_config(cli.parser().parse_args(["run", str(HELLO), *argv]))


BASE = config.load(HELLO)

# (argv, {VmConfig attribute: expected}); "{k}" etc. are the module's files
SPELLINGS = [
    (["-m", "512"], {"memory": 512 * MiB}),                 # a bare number is MiB, as QEMU reads it
    (["-m", "1G"], {"memory": 1 << 30}),
    (["-m", "256M"], {"memory": 256 * MiB}),
    (["-m", "size=96M"], {"memory": 96 * MiB}),
    (["--memory", "64M"], {"memory": 64 * MiB}),
    (["--memory", "128"], {"memory": 128 * MiB}),
    (["-smp", "4"], {"cpus": 4}),
    (["-smp", "cpus=3"], {"cpus": 3}),
    (["-smp", "4,sockets=1,cores=2,threads=2"], {"cpus": 4}),
    (["-smp", "sockets=2,cores=3"], {"cpus": 6}),
    (["-smp", "2,maxcpus=2"], {"cpus": 2}),
    (["--smp", "8"], {"cpus": 8}),
    (["-kernel", "{k}"], {"kernel": "{k}", "boot_kind": "kernel", "initrd": []}),
    (["--kernel", "{k}", "-initrd", "{i}", "-append", "console=ttyS0 quiet"],
     {"kernel": "{k}", "initrd": ["{i}"], "append": "console=ttyS0 quiet"}),
    (["-kernel", "{k}", "--initrd", "{i}", "--append", "x=1"], {"initrd": ["{i}"], "append": "x=1"}),
    (["-nographic"], {}),
    (["--nographic"], {}),
    (["-serial", "stdio"], {}),
    (["-no-reboot"], {"no_reboot": True}),
    (["--no-reboot"], {"no_reboot": True}),
    ([], {"no_reboot": False}),
    (["-name", "qvm"], {"name": "qvm"}),
    (["-name", "guest=qvm2,debug-threads=on"], {"name": "qvm2"}),
    (["--name", "qvm3"], {"name": "qvm3"}),
    (["-accel", "kvm"], {"accel": "kvm"}),
    (["--accel", "softvmm"], {"accel": "softvmm"}),
    (["-enable-kvm"], {"accel": "kvm"}),
    (["-device", "isa-debug-exit,iobase=0x501,iosize=0x02"],
     {"devices.debug_exit": {"port": 0x501, "iosize": 2}, "ports": {0x501: "debug_exit", 0x502: "debug_exit"}}),
    (["-device", "isa-debug-exit,iobase=244,iosize=4"],
     {"devices.debug_exit": {"port": 0xF4, "iosize": 4}, "ports": {0xF7: "debug_exit"}}),
    (["-hda", "{img}", "-snapshot"], {"drives": [("{img}", 0, False, True)]}),
    (["-drive", "file={img},format=raw,if=ide,readonly=on,index=1"], {"drives": [("{img}", 1, True, False)]}),
    (["-m", "64", "-smp", "2", "-name", "all", "-nographic", "-no-reboot", "-serial", "stdio",
      "-kernel", "{k}", "-append", "a=b", "-hdb", "{img}"],
     {"memory": 64 * MiB, "cpus": 2, "name": "all", "no_reboot": True, "kernel": "{k}", "append": "a=b",
      "drives": [("{img}", 1, False, False)]}),
]


def _fill(value, files):
    if isinstance(value, str):
        return value.format(**files)
    if isinstance(value, (list, tuple)):
        return type(value)(_fill(v, files) for v in value)
    return value


@pytest.mark.parametrize("argv,expected", SPELLINGS, ids=[" ".join(a) or "none" for a, _ in SPELLINGS])
def test_spelling(files, argv, expected):
    cfg = run_config(_fill(argv, files))
    changed = set()
    for key, want in expected.items():
        want = _fill(want, files)
        if key == "drives":
            assert [(str(d.file), d.index, d.readonly, d.snapshot) for d in cfg.drives] == want
        elif key.startswith("devices."):
            dev = cfg.devices[key.split(".", 1)[1]]
            assert {k: dev.options[k] for k in want} == want
            changed.add("devices")
        elif key == "ports":
            owners = cfg.port_owners()
            assert {p: owners.get(p) for p in want} == want
        elif key in ("kernel", "image"):
            assert str(getattr(cfg, key)) == want
        elif key == "initrd":
            assert [str(p) for p in cfg.initrd] == want
        else:
            assert getattr(cfg, key) == want, key
        changed.add(key)
    # nothing else moved from the config file's values
    for key in ("name", "cpus", "memory", "accel", "no_reboot", "append"):
        if key not in changed:
            assert getattr(cfg, key) == getattr(BASE, key), key
    if "devices" not in changed:
        assert cfg.devices == BASE.devices


def test_version(bhive):
    proc = bhive.run("--version", timeout=30)
    assert proc.returncode == 0
    assert proc.stdout.decode().strip() == "bhive 0.1.0"


def test_spellings_through_the_cli(bhive, files):
    """The hello guest under QEMU's spellings: it runs (isa-debug-exit
    where -device put it), and the run directory's config says what the
    flags said."""
    proc = bhive.run("run", HELLO, "-name", "qemu-spell", "-m", "64", "-smp", "cpus=2", "-nographic",
                     "-no-reboot", "-device", "isa-debug-exit,iobase=0xf4,iosize=4", "-hda", files["img"],
                     "-snapshot", timeout=60)
    assert proc.returncode == 1, proc.stderr        # hello writes 0 to isa-debug-exit: (0 << 1) | 1
    assert b"hello: all 2 vCPUs reported" in proc.stdout, proc.stdout
    cfg = config.from_json(RunDir("qemu-spell").read_json("supervisor.json")["config"])
    assert (cfg.cpus, cfg.memory, cfg.no_reboot) == (2, 64 * MiB, True)
    assert [(d.file, d.index, d.snapshot) for d in cfg.drives] == [(files["img"], 0, True)]


CLI_ERRORS = [
    (["-vga", "std"], "-vga: a QEMU option bhive does not have"),
    (["-netdev", "user,id=n0"], "-netdev: a QEMU option bhive does not have"),
    (["-cdrom", "x.iso"], "-cdrom: a QEMU option bhive does not have"),
    (["-bios", "bios.bin"], "-bios: a QEMU option bhive does not have"),
    (["-machine", "q35"], "-machine: a QEMU option bhive does not have"),
    (["-cpu", "pentium9"], "-cpu: unknown CPU model 'pentium9' (known: max, qemu64)"),
    (["-S"], "-S: a QEMU option bhive does not have"),
    (["-no-shutdown"], "-no-shutdown: a QEMU option bhive does not have"),
    (["-frobnicate"], "unrecognized arguments: -frobnicate"),
    (["-accel", "tcg"], "[vm] accel: unknown accelerator 'tcg'"),
    (["-accel", "kvm,thread=multi"], "-accel kvm,thread=multi: accelerator options are not supported"),
    (["-accel", "softvmm", "-enable-kvm"], "-enable-kvm and -accel softvmm disagree"),
    (["--kernel", "/tmp"], "[boot] kernel: /tmp: is a directory"),
    (["-kernel", "/nonexistent/vmlinuz"], "[boot] kernel: /nonexistent/vmlinuz: no such file"),
    (["-m", "lots"], "[vm] memory: bad size 'lots'"),
    (["-m", "512M,slots=2"], "-m 512M,slots=2: 'slots' is not supported"),
    (["-smp", "many"], "-smp cpus=many: not a number"),
    (["-smp", ""], "-smp : empty option"),
    (["-smp", "4,sockets=3"], "-smp 4,sockets=3: the topology makes 3 CPUs, not 4"),
    (["-smp", "2,maxcpus=4"], "maxcpus must equal cpus"),
    (["-smp", "99"], "[vm] cpus: 99 is outside"),
    (["-name", "bad name!"], "[vm] name: 'bad name!'"),
    (["-device", "e1000"], "-device e1000: bhive has no device 'e1000'"),
    (["-device", "isa-debug-exit,iobase=0xf4,color=red"], "isa-debug-exit has no property 'color'"),
    (["-serial", "tcp:1234"], "serial: 'tcp:1234' is not one of stdio, null"),
    (["-m"], "argument -m/--memory: expected one argument"),
]


@pytest.mark.parametrize("argv,expected", CLI_ERRORS, ids=[" ".join(a) for a, _ in CLI_ERRORS])
def test_cli_errors(bhive, argv, expected):
    proc = bhive.run("run", HELLO, *argv, timeout=30)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("bhive: error: ") and expected in lines[0], lines
    assert proc.stdout == b""


def test_bhyve_without_vmm(bhive, tmp_path):
    """accel = "bhyve" needs FreeBSD's vmm; here it is one line, not a traceback."""
    cfg = tmp_path / "bhyve.toml"
    cfg.write_text(HELLO.read_text().replace('accel = "softvmm"', 'accel = "bhyve"'))
    proc = bhive.run("run", cfg, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.decode().strip().splitlines() == [
        f"bhive: error: [vm] accel: bhyve is not available here: vmm.ko is FreeBSD's hypervisor and this host "
        f"runs {sys.platform}"]
