"""The CPU model a VM's vCPUs present, spelled as QEMU's ``-cpu``:
``MODEL[,vendor=VENDOR][,+FEATURE|-FEATURE|FEATURE=on|off ...]``, or the
``[cpu]`` config table (``model``, ``vendor``, ``features``).

softvmm advertises only what it implements (its ``cpuid.c``), so a model is a
set of CPUID feature bits masked *off* from that: ``max`` is everything,
``qemu64`` is what QEMU's qemu64 model offers of it (AMD vendor, no POPCNT,
MOVBE, BMI, SMEP/SMAP, RDTSCP, 1G pages, TSC-deadline).  A masked-off feature
is gone from CPUID and its instructions raise #UD (its control-register bits
and MSRs #GP).  ``+FEATURE`` of something softvmm does not implement is an
error, as is an unknown model, feature or vendor.
"""

from __future__ import annotations

from dataclasses import dataclass

# feature words, in svm_vm_set_cpu's order (csrc/softvmm.h)
WORDS = ("1.ecx", "1.edx", "7.ebx", "7.ecx", "7.edx", "80000001.ecx", "80000001.edx")

# QEMU's feature names (target/i386/cpu.c feature_word_info) -> (word, bit),
# for every bit softvmm advertises
FEATURES: dict[str, tuple[int, int]] = {
    "sse3": (0, 0), "pni": (0, 0), "cx16": (0, 13), "sse4.2": (0, 20), "movbe": (0, 22), "popcnt": (0, 23),
    "tsc-deadline": (0, 24), "hypervisor": (0, 31),
    "fpu": (1, 0), "pse": (1, 3), "tsc": (1, 4), "msr": (1, 5), "pae": (1, 6), "mce": (1, 7), "cx8": (1, 8),
    "apic": (1, 9), "sep": (1, 11), "mtrr": (1, 12), "pge": (1, 13), "mca": (1, 14), "cmov": (1, 15),
    "pat": (1, 16), "pse36": (1, 17), "clflush": (1, 19), "mmx": (1, 23), "fxsr": (1, 24), "sse": (1, 25),
    "sse2": (1, 26), "ht": (1, 28),
    "tsc-adjust": (2, 1), "bmi1": (2, 3), "smep": (2, 7), "bmi2": (2, 8), "adx": (2, 19), "smap": (2, 20),
    "spec-ctrl": (4, 26), "stibp": (4, 27), "arch-capabilities": (4, 29), "ssbd": (4, 31),
    "lahf-lm": (5, 0), "abm": (5, 5),
    "syscall": (6, 11), "nx": (6, 20), "pdpe1gb": (6, 26), "rdtscp": (6, 27), "lm": (6, 29),
}
# what softvmm implements, word by word (a superset check for "+feature")
IMPLEMENTED = [0] * len(WORDS)
for _w, _b in FEATURES.values():
    IMPLEMENTED[_w] |= 1 << _b
# sse4.2: softvmm implements its CRC32 but does not advertise SSE4.2, so the
# bit never shows in CPUID; "-sse4.2" still makes CRC32 raise #UD

VENDORS = {"GenuineIntel": 0, "AuthenticAMD": 1}

MODELS: dict[str, tuple[str, set[str]]] = {
    # name: (vendor, features masked off)
    "max": ("GenuineIntel", set()),
    "qemu64": ("AuthenticAMD", {"movbe", "popcnt", "tsc-deadline", "bmi1", "bmi2", "adx", "smep", "smap",
                                "abm", "pdpe1gb", "rdtscp", "tsc-adjust", "spec-ctrl", "stibp",
                                "arch-capabilities", "ssbd"}),
}


class CpuModelError(ValueError):
    pass


@dataclass
class CpuModel:
    model: str
    vendor: str
    masks: list[int]

    def has(self, feature: str) -> bool:
        w, b = FEATURES[feature]
        return bool(self.masks[w] >> b & 1)

    def to_json(self) -> dict:
        return {"model": self.model, "vendor": self.vendor, "masks": self.masks}

    @classmethod
    def from_json(cls, data: dict) -> "CpuModel":
        return cls(data["model"], data["vendor"], list(data["masks"]))


def build(model: str = "max", vendor: str | None = None, features: list[str] | tuple[str, ...] = ()) -> CpuModel:
    """A model from its name, an optional vendor and +f/-f/f=on/f=off edits."""
    if model not in MODELS:
        raise CpuModelError(f"unknown CPU model {model!r} (known: {', '.join(MODELS)})")
    base_vendor, off = MODELS[model]
    vendor = vendor or base_vendor
    if vendor not in VENDORS:
        raise CpuModelError(f"unknown vendor {vendor!r} (known: {', '.join(VENDORS)})")
    masks = [0xFFFFFFFF] * len(WORDS)
    for name in off:
        w, b = FEATURES[name]
        masks[w] &= ~(1 << b)
    for edit in features:
        edit = edit.strip()
        if edit.startswith(("+", "-")):
            name, on = edit[1:], edit[0] == "+"
        elif edit.endswith(("=on", "=off")):
            name, _, value = edit.rpartition("=")
            on = value == "on"
        else:
            raise CpuModelError(f"bad CPU feature {edit!r} (expected +name, -name, name=on or name=off)")
        name = name.replace("_", "-")
        if name not in FEATURES:
            raise CpuModelError(f"CPU feature {name!r} is unknown or not implemented by softvmm")
        w, b = FEATURES[name]
        masks[w] = masks[w] | (1 << b) if on else masks[w] & ~(1 << b)
    return CpuModel(model, vendor, masks)


def parse(spec: str) -> CpuModel:
    """QEMU's -cpu syntax: ``qemu64,vendor=GenuineIntel,+popcnt,-nx``."""
    parts = [p.strip() for p in spec.split(",")]
    if not parts[0]:
        raise CpuModelError("-cpu: missing the model name")
    vendor, edits = None, []
    for p in parts[1:]:
        if p.startswith("vendor="):
            vendor = p[len("vendor="):]
        elif p:
            edits.append(p)
    return build(parts[0], vendor, edits)
