"""`available()` of the kvm accelerator explains why it cannot run (no KVM needed)."""

from __future__ import annotations

from bhive.accel import get
from bhive.accel.kvm import accel as kvm_accel


def test_missing_device_is_reported(monkeypatch, tmp_path):
    missing = tmp_path / "kvm"
    monkeypatch.setattr(kvm_accel, "KVM_DEV", str(missing))
    ok, why = get("kvm").available()
    assert not ok and str(missing) in why and "does not exist" in why


def test_unusable_device_is_reported(monkeypatch, tmp_path):
    not_kvm = tmp_path / "kvm"
    not_kvm.write_bytes(b"")                 # a regular file: the ioctls fail
    monkeypatch.setattr(kvm_accel, "KVM_DEV", str(not_kvm))
    ok, why = get("kvm").available()
    assert not ok and "unusable" in why
