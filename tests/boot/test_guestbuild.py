"""Test guests are built at test time and cached by content, includes too."""

from __future__ import annotations

from bhive.guestbuild import build_nasm


def test_editing_an_included_file_rebuilds_the_guest(tmp_path, monkeypatch):
    monkeypatch.setenv("BHIVE_CACHE", str(tmp_path / "cache"))
    (tmp_path / "lib").mkdir()
    inc = tmp_path / "lib" / "value.inc"
    src = tmp_path / "guest.asm"
    src.write_text('bits 16\n%include "lib/value.inc"\n')
    inc.write_text("db 1\n")
    assert build_nasm(src).read_bytes() == b"\x01"
    inc.write_text("db 2\n")
    assert build_nasm(src).read_bytes() == b"\x02", "a stale build was reused"


def test_defines_key_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BHIVE_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "guest.asm"
    src.write_text("bits 16\ndb N\n")
    assert build_nasm(src, defines={"N": 3}).read_bytes() == b"\x03"
    assert build_nasm(src, defines={"N": 4}).read_bytes() == b"\x04"
