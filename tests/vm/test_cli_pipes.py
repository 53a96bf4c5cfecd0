"""Every listing command of the CLI behind a reader that stops early
(`bhive stats VM --json | head -1`): the first line, status 0, no
BrokenPipeError traceback."""

from __future__ import annotations

import os
import subprocess

import pytest


@pytest.mark.parametrize("command", [["stats", "pipe", "--json"], ["stats", "pipe"], ["ps", "-a", "--json"],
                                     ["logs", "pipe"]])
def test_a_closed_pipe_is_no_traceback(bhive, spin, command):
    r = bhive.run("run", spin, "--smp", 2, "--name", "pipe", "--detach")
    assert r.returncode == 0, r.stderr.decode()
    try:
        # A pipe whose reader is gone before the command writes: every write fails.
        reader, writer = os.pipe()
        os.close(reader)
        proc = subprocess.run(bhive.argv(*command), stdout=writer, stderr=subprocess.PIPE, env=bhive.env,
                              timeout=60)
        os.close(writer)
        assert b"Traceback" not in proc.stderr and b"BrokenPipe" not in proc.stderr, proc.stderr.decode()
        assert proc.returncode == 0
    finally:
        bhive.run("stop", "pipe")
