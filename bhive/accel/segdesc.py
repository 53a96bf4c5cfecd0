"""Segment descriptors <-> the VMX access-rights format, in one place.

Every accelerator speaks VMX access rights (`SegDesc.access`, bhyve's
`struct seg_desc.access`, softvmm's svm_get_desc): SDM Vol. 3C 24.4.1
"Guest Register State", Table 24-2 "Format of Access Rights":

    bits 3:0 type, 4 S, 6:5 DPL, 7 P, 11:8 reserved, 12 AVL, 13 L (64-bit
    code), 14 D/B, 15 G, 16 segment unusable, 31:17 reserved.

A GDT/LDT descriptor (SDM Vol. 3A 3.4.5, Figure 3-8) keeps the same bits
in its high dword at 8..23 (type..P at 8..15, limit 19:16 at 16..19, AVL
L D/B G at 20..23): the access rights are `(high >> 8) & 0xF0FF`.  The
seed's QEMU bhyve accelerator got exactly this conversion wrong (the
"segment descriptor sync" bug), so it lives here, once, tested by
round-tripping every descriptor type.
"""

from __future__ import annotations

AR_TYPE = 0x000F
AR_S = 0x0010            # 1: code/data, 0: system
AR_DPL = 0x0060
AR_P = 0x0080
AR_AVL = 0x1000
AR_L = 0x2000
AR_DB = 0x4000
AR_G = 0x8000
AR_UNUSABLE = 0x10000    # VMX only: a null selector loaded, or never loaded
AR_VALID = AR_TYPE | AR_S | AR_DPL | AR_P | AR_AVL | AR_L | AR_DB | AR_G | AR_UNUSABLE


def descriptor_to_ar(raw: int) -> tuple[int, int, int]:
    """An 8-byte GDT/LDT descriptor (as a little-endian integer) ->
    (base, limit in bytes, VMX access rights).  The limit is expanded by G
    (4 KiB units, low 12 bits set) as VMX's guest limit field holds it.
    A descriptor with P clear is still described; only `unusable_ar` makes
    a segment unusable."""
    lo, hi = raw & 0xFFFFFFFF, raw >> 32
    base = (lo >> 16) | ((hi & 0xFF) << 16) | (hi & 0xFF000000)
    limit = (lo & 0xFFFF) | (hi & 0x000F0000)
    access = (hi >> 8) & 0xF0FF
    if access & AR_G:
        limit = (limit << 12) | 0xFFF
    return base, limit, access


def ar_to_descriptor(base: int, limit: int, access: int) -> int:
    """The inverse of `descriptor_to_ar`: (base, limit in bytes, VMX access
    rights) -> the 8-byte descriptor.  With G set the limit must have its
    low 12 bits set (what the CPU would have expanded); the unusable bit
    has no descriptor encoding and is refused."""
    if access & ~AR_VALID or access & 0x0F00:
        raise ValueError(f"access rights {access:#x}: reserved bits set")
    if access & AR_UNUSABLE:
        raise ValueError("an unusable segment has no descriptor")
    if access & AR_G:
        if limit & 0xFFF != 0xFFF:
            raise ValueError(f"limit {limit:#x} with G=1 must end in 0xFFF")
        limit >>= 12
    if limit > 0xFFFFF or base > 0xFFFFFFFF:
        raise ValueError(f"base {base:#x} / limit {limit:#x} do not fit a descriptor")
    lo = (limit & 0xFFFF) | ((base & 0xFFFF) << 16)
    hi = (((base >> 16) & 0xFF) | ((access & 0xF0FF) << 8) | (limit & 0xF0000)
          | (base & 0xFF000000))
    return lo | (hi << 32)


def fields_to_ar(*, type: int, s: int, dpl: int, present: int, avl: int, l: int, db: int, g: int,
                 unusable: int) -> int:
    """Separate fields (KVM's struct kvm_segment) -> VMX access rights."""
    return ((type & 0xF) | (s & 1) << 4 | (dpl & 3) << 5 | (present & 1) << 7 | (avl & 1) << 12
            | (l & 1) << 13 | (db & 1) << 14 | (g & 1) << 15 | (unusable & 1) << 16)


def ar_to_fields(access: int) -> dict[str, int]:
    """VMX access rights -> separate fields (the inverse of `fields_to_ar`)."""
    return {"type": access & 0xF, "s": (access >> 4) & 1, "dpl": (access >> 5) & 3,
            "present": (access >> 7) & 1, "avl": (access >> 12) & 1, "l": (access >> 13) & 1,
            "db": (access >> 14) & 1, "g": (access >> 15) & 1, "unusable": (access >> 16) & 1}


def real_mode_ar(code: bool) -> int:
    """Access rights of a real-mode segment after a selector load (or SIPI):
    present, S=1, accessed; read/write data or execute/read code."""
    return AR_P | AR_S | (0xB if code else 0x3)
