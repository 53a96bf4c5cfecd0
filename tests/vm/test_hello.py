"""The hello guest end to end: real processes, real guest code, real bus."""

from __future__ import annotations

import json
import re

import pytest

from support import run_dir, wait_for

GREETING = re.compile(rb"Hello from bhive vCPU (\d+) of (\d+)\r?\n")


@pytest.mark.parametrize("cpus", [1, 4])
def test_hello_greets_from_every_vcpu(bhive, cpus):
    name = f"hello-{cpus}"
    proc = bhive.run("run", "configs/hello.toml", "--smp", cpus, "--name", name, timeout=180)
    out = proc.stdout
    assert proc.returncode == 1, (proc.returncode, out, proc.stderr)  # (0 << 1) | 1
    greeted = sorted(int(m.group(1)) for m in GREETING.finditer(out))
    assert greeted == list(range(cpus)), out
    assert all(int(m.group(2)) == cpus for m in GREETING.finditer(out))
    assert f"hello: all {cpus} vCPUs reported".encode() in out
    assert b"isa-debug-exit: status 1" in proc.stderr
    # Every vCPU ran in its own process and stopped cleanly.
    table = json.loads((run_dir(name) / "procs.json").read_text())
    roles = {row["role"]: row for row in table}
    assert {f"vcpu{i}" for i in range(cpus)} <= set(roles)
    pids = [row["pid"] for row in table]
    assert len(set(pids)) == len(pids)


def test_exit_status_follows_isa_debug_exit(bhive, tmp_path, vm_config):
    """A guest that writes V exits `bhive run` with (V << 1) | 1."""
    src = tmp_path / "exit42.asm"
    src.write_text("bits 16\norg 0x8000\nmov dx, 0xf4\nmov eax, 42\nout dx, eax\nhlt\n")
    cfg = vm_config(src, devices=("debug_exit",))
    proc = bhive.run("run", cfg, timeout=60)
    assert proc.returncode == (42 << 1) | 1, proc.stderr


def test_unclaimed_port_reads_all_ones(bhive, tmp_path, vm_config):
    """A port nobody owns answers like an empty ISA bus (0xFF..) and is logged."""
    src = tmp_path / "float.asm"
    src.write_text("bits 16\norg 0x8000\nmov dx, 0x2e8\nin ax, dx\nmov dx, 0xf4\n"
                   "mov ebx, 7\nmov ecx, 0x55\ncmp ax, 0xffff\ncmovne ebx, ecx\n"
                   "mov eax, ebx\nout dx, eax\nhlt\n")
    cfg = vm_config(src, devices=("debug_exit",))
    proc = bhive.run("run", cfg, "--name", "float", timeout=60)
    assert proc.returncode == (7 << 1) | 1, proc.stderr  # 0x55 if not 0xFFFF
    log = (run_dir("float") / "logs" / "vcpu0.log").read_text()
    assert "unclaimed-port port=0x2e8" in log


def test_triple_fault_resets_the_vm_when_configured(bhive, tmp_path, vm_config):
    """[vm] triple_fault = "reset": the shutdown cycle becomes the reset
    line, as a PC's chipset makes it: the VM reboots (the guest starts over:
    its banner again), and with -no-reboot it ends with status 0."""
    src = tmp_path / "crashloop.asm"
    src.write_text("bits 16\norg 0x8000\nmov dx, 0x3f8\nmov al, 'B'\nout dx, al\n"
                   "lidt [idt]\nud2\nidt: dw 0\ndd 0\n")
    cfg = vm_config(src, devices=("uart",))
    cfg.write_text(cfg.read_text().replace("[vm]\n", '[vm]\ntriple_fault = "reset"\n', 1))
    proc = bhive.run("run", cfg, "--name", "tf-once", "-no-reboot", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert b"guest reset (no reboot): triple fault at rip=" in proc.stderr, proc.stderr
    assert bhive.run("run", cfg, "--name", "tf-loop", "--detach").returncode == 0
    console = run_dir("tf-loop") / "logs" / "console.log"
    wait_for(lambda: console.exists() and console.read_bytes().count(b"B") >= 3, 60, what="three boots")
    assert bhive.run("stop", "tf-loop").returncode == 0
    assert "reboot" in (run_dir("tf-loop") / "logs" / "supervisor.log").read_text()


def test_triple_fault_ends_the_run(bhive, tmp_path, vm_config):
    src = tmp_path / "crash.asm"
    # An empty IDT and a #UD: no handler, #DF has none either -> triple fault.
    src.write_text("bits 16\norg 0x8000\nlidt [idt]\nud2\nidt: dw 0\ndd 0\n")
    cfg = vm_config(src, devices=())
    proc = bhive.run("run", cfg, "--name", "crash", timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert b"triple fault" in proc.stderr
