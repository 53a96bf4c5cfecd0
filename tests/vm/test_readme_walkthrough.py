"""The README's walkthrough, run line by line as written (with `bhive`
being this checkout's CLI): every line exits 0.  Two lines need a person:
`grep BOOT-OK` is repeated until the guest has booted (the README says so),
and `bhive console demo` is given a command to type, then Ctrl-A d."""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import time

from support import REPO, run_dir
from test_linux_boot import BOOT_TIMEOUT, kit  # noqa: F401  (the fixture)


def walkthrough_lines() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("### Walkthrough", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def shell(line: str, **kw) -> subprocess.Popen:
    prelude = f'bhive() {{ "{sys.executable}" -m bhive "$@"; }}\n'
    return subprocess.Popen(["bash", "-c", prelude + line], cwd=REPO, env=os.environ, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **kw)


def test_the_readme_walkthrough_works_as_written(kit):  # noqa: F811
    lines = walkthrough_lines()
    assert lines[0].startswith("bhive run --detach --name demo") and len(lines) >= 10
    outputs = {}
    try:
        for line in lines:
            if "bhive console" in line:
                proc = shell(line, stdin=subprocess.PIPE)
                time.sleep(1.0)
                proc.stdin.write(b"echo walk-$((6 * 7))\r")
                proc.stdin.flush()
                seen = b""
                deadline = time.monotonic() + 60
                while b"walk-42" not in seen.replace(b"walk-$((6 * 7))", b""):
                    assert time.monotonic() < deadline, seen
                    r, _, _ = select.select([proc.stdout], [], [], 1)
                    if r:
                        seen += os.read(proc.stdout.fileno(), 4096)
                proc.stdin.write(b"\x01d")
                proc.stdin.close()
                proc.stdin = None                           # (communicate would flush it)
                out, err = proc.communicate(timeout=30)
                assert proc.returncode == 0 and b"detached" in err, (line, err)
                continue
            deadline = time.monotonic() + (BOOT_TIMEOUT if "grep BOOT-OK" in line else 0)
            while True:
                proc = shell(line, stdin=subprocess.DEVNULL)
                out, err = proc.communicate(timeout=120)
                if proc.returncode == 0 or time.monotonic() > deadline:
                    break
                time.sleep(1)
            assert proc.returncode == 0, (line, out.decode(errors="replace"), err.decode(errors="replace"))
            outputs[line.split("#")[0].strip()] = out.decode(errors="replace")
    finally:
        subprocess.run([sys.executable, "-m", "bhive", "stop", "demo"], cwd=REPO, capture_output=True)
    assert "BOOT-OK cpus=2" in outputs["bhive logs demo console | grep BOOT-OK"]
    assert re.search(r"demo .* exited +status 0", outputs["bhive ps -a"]), outputs["bhive ps -a"]
    assert not run_dir("demo").exists()                     # bhive rm
