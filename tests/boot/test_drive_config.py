"""Drives in the config ([[drive]] tables) and on the command line (-drive,
-hda..-hdd, -snapshot): the validated VmConfig's `drives`, and every
mistake as one line and exit status 2 through the real CLI."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from bhive import cli, config
from bhive.config import DriveConfig

HELLO = Path(__file__).resolve().parents[2] / "configs" / "hello.toml"
IMAGE = (HELLO.parent.parent / "guests" / "hello" / "hello.asm").resolve()

BASE = f"""
[boot]
image = "{IMAGE}"
[devices.uart]
port = 0x3f8
"""


@pytest.fixture
def vmdir(tmp_path) -> Path:
    d = tmp_path / "vms"
    d.mkdir()
    for name in ("a.img", "b.img", "c.img"):
        with open(d / name, "wb") as f:
            f.truncate(1 << 20)
    (d / "images").mkdir()
    return d


def write(vmdir: Path, drives: str) -> Path:
    p = vmdir / "vm.toml"
    p.write_text(BASE + textwrap.dedent(drives))
    return p


def test_drive_tables(vmdir):
    cfg = config.load(write(vmdir, """
        [[drive]]
        file = "b.img"          # relative: to the config's directory
        index = 2
        readonly = true
        [[drive]]
        file = "a.img"
        format = "raw"
        if = "ide"
        [[drive]]
        file = "c.img"
        snapshot = true
    """))
    assert cfg.drives == [
        DriveConfig(vmdir / "a.img", "raw", "ide", 0, False, False),     # the lowest free index
        DriveConfig(vmdir / "c.img", "raw", "ide", 1, False, True),
        DriveConfig(vmdir / "b.img", "raw", "ide", 2, True, False),
    ]
    assert all(d.file.is_absolute() for d in cfg.drives)
    assert config.from_json(config.to_json(cfg)) == cfg
    assert config.load(write(vmdir, "")).drives == []


def test_snapshot_flag_covers_config_drives(vmdir):
    path = write(vmdir, '[[drive]]\nfile = "a.img"\n')
    cfg = config.load(path, drives=[("-hdb x", {"file": str(vmdir / "b.img"), "index": 1})], snapshot=True)
    assert [(d.index, d.snapshot) for d in cfg.drives] == [(0, True), (1, True)]


def test_shared_image_only_readonly_or_snapshot(vmdir):
    cfg = config.load(write(vmdir, """
        [[drive]]
        file = "a.img"
        readonly = true
        [[drive]]
        file = "images/../a.img"
        snapshot = true
    """))
    assert [d.index for d in cfg.drives] == [0, 1]


DRIVE_ERRORS = {
    "no-file": ('[[drive]]\nindex = 1\n', "[[drive]] #1: file: missing"),
    "missing-file": ('[[drive]]\nfile = "nope.img"\n', "[[drive]] #1 file: {d}/nope.img: no such file"),
    "directory": ('[[drive]]\nfile = "images"\n', "[[drive]] #1 file: {d}/images: is a directory"),
    "qcow2": ('[[drive]]\nfile = "a.img"\nformat = "qcow2"\n',
              "[[drive]] #1 format: 'qcow2' is not supported (bhive reads raw images only"),
    "unknown-format": ('[[drive]]\nfile = "a.img"\nformat = "rawr"\n',
                       "[[drive]] #1 format: 'rawr' is unknown (known: raw)"),
    "virtio": ('[[drive]]\nfile = "a.img"\nif = "virtio"\n',
               "[[drive]] #1 if: 'virtio' is not supported yet (bhive has ide only)"),
    "unknown-if": ('[[drive]]\nfile = "a.img"\nif = "sata"\n', "[[drive]] #1 if: 'sata' is unknown (known: ide)"),
    "duplicate-index": ('[[drive]]\nfile = "a.img"\nindex = 1\n[[drive]]\nfile = "b.img"\nindex = 1\n',
                        "[[drive]] #2 index: 1 is already used by [[drive]] #1"),
    "index-range": ('[[drive]]\nfile = "a.img"\nindex = 4\n', "[[drive]] #1 index: 4 is outside 0..3"),
    "index-type": ('[[drive]]\nfile = "a.img"\nindex = "0"\n', "[[drive]] #1 index: expected an integer"),
    "bad-key": ('[[drive]]\nfile = "a.img"\ncache = "none"\n', "[[drive]] #1: unknown key 'cache'"),
    "readonly-type": ('[[drive]]\nfile = "a.img"\nreadonly = "on"\n', "[[drive]] #1 readonly: expected true or false"),
    "not-an-array": ('[drive]\nfile = "a.img"\n', "[drive] must be an array of tables: write [[drive]]"),
    "five-drives": ('[[drive]]\nfile = "a.img"\nreadonly = true\n' * 5,
                    "[[drive]] #5: no IDE index is free (there are 4)"),
    "writable-twice": ('[[drive]]\nfile = "a.img"\n[[drive]]\nfile = "a.img"\nsnapshot = true\n',
                       "[[drive]] #2 file: {d}/a.img is also attached by [[drive]] #1"),
}


@pytest.mark.parametrize("case", sorted(DRIVE_ERRORS))
def test_drive_config_error_library(vmdir, case):
    body, expected = DRIVE_ERRORS[case]
    with pytest.raises(config.ConfigError) as exc:
        config.load(write(vmdir, body))
    assert expected.format(d=vmdir) in str(exc.value)
    assert "\n" not in str(exc.value)


def one_line_error(proc, expected: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("bhive: error: ") and expected in lines[0], lines
    assert proc.stdout == b""


@pytest.mark.parametrize("case", sorted(DRIVE_ERRORS))
def test_drive_config_error_cli(vmdir, bhive, case):
    body, expected = DRIVE_ERRORS[case]
    one_line_error(bhive.run("run", write(vmdir, body), timeout=30), expected.format(d=vmdir))


# -- the command line's drives ------------------------------------------------------------

def run_config(*argv) -> config.VmConfig:
    """What `bhive run ARGV` would run (the library the CLI calls)."""
    return cli.load_config(cli.parser().parse_args(["run", str(HELLO), *map(str, argv)]))


def drives(cfg) -> list[tuple]:
    return [(d.file.name, d.index, d.readonly, d.snapshot) for d in cfg.drives]


@pytest.mark.parametrize("argv,expected", [
    (["-hda", "{a}"], [("a.img", 0, False, False)]),
    (["-hdb", "{a}"], [("a.img", 1, False, False)]),
    (["-hdc", "{a}"], [("a.img", 2, False, False)]),
    (["-hdd", "{a}"], [("a.img", 3, False, False)]),
    (["--hda", "{a}"], [("a.img", 0, False, False)]),
    (["-drive", "file={a},format=raw,if=ide"], [("a.img", 0, False, False)]),
    (["-drive", "file={a},format=raw,if=ide,readonly=on,index=2"], [("a.img", 2, True, False)]),
    (["-drive", "file={a},readonly,media=disk"], [("a.img", 0, True, False)]),
    (["-drive", "file={a},snapshot=on"], [("a.img", 0, False, True)]),
    (["--drive", "file={a},index=3"], [("a.img", 3, False, False)]),
    (["-drive", "file={a}", "-hda", "{b}"], [("b.img", 0, False, False), ("a.img", 1, False, False)]),
    (["-hda", "{a}", "-hdb", "{b}", "-snapshot"], [("a.img", 0, False, True), ("b.img", 1, False, True)]),
    (["-drive", "file={a},readonly=on", "-drive", "file={a},readonly=on"],
     [("a.img", 0, True, False), ("a.img", 1, True, False)]),
    (["-drive", "file=a.img"], [("a.img", 0, False, False)]),            # relative to the working directory
    (["-drive", "file=a,,b.img"], [("a,b.img", 0, False, False)]),       # QEMU's ",," is a comma
])
def test_drive_flags(vmdir, monkeypatch, argv, expected):
    (vmdir / "a,b.img").write_bytes(b"")
    monkeypatch.chdir(vmdir)
    cfg = run_config(*[a.format(a=vmdir / "a.img", b=vmdir / "b.img") for a in argv])
    assert drives(cfg) == expected
    assert all(d.file.is_absolute() and d.file.parent == vmdir for d in cfg.drives)


@pytest.mark.parametrize("argv,expected", [
    (["-drive", "file={a},cache=none"], "-drive file={a},cache=none: 'cache' is not supported"),
    (["-drive", "format=raw"], "-drive format=raw: file=IMAGE is missing"),
    (["-drive", "file={a},readonly=maybe"], "-drive readonly=maybe: expected on or off"),
    (["-drive", "file={a},index=one"], "-drive index=one: not a number"),
    (["-drive", "file={a},media=cdrom"], "media=cdrom is not supported yet"),
    (["-drive", "file={a},if=virtio"], "if: 'virtio' is not supported yet"),
    (["-hda", "{d}"], "-hda {d} file: {d}: is a directory"),
    (["-hda", "{d}/none.img"], "-hda {d}/none.img file: {d}/none.img: no such file"),
    (["-hda", "{a}", "-drive", "file={b},index=0"], "index: 0 is already used by -hda {a}"),
    (["-hda", "{a}", "-hdb", "{a}"], "-hdb {a} file: {a} is also attached by -hda {a}"),
    (["-drive"], "argument --drive/-drive: expected one argument"),
])
def test_drive_flag_errors_cli(vmdir, bhive, argv, expected):
    fmt = dict(a=vmdir / "a.img", b=vmdir / "b.img", d=vmdir)
    proc = bhive.run("run", HELLO, *[a.format(**fmt) for a in argv], timeout=30)
    one_line_error(proc, expected.format(**fmt))
