"""The bzImage setup header and its compressed payload.

References: Documentation/arch/x86/boot.rst ("THE REAL-MODE KERNEL
HEADER", "DETAILS OF HEADER FIELDS") and arch/x86/boot/header.S.  The
setup header starts at file offset 0x1F1; the protected-mode kernel starts
at (setup_sects + 1) * 512; the compressed vmlinux ("payload") is at
payload_offset inside the protected-mode kernel and ends with the
uncompressed size as 4 little-endian bytes (scripts/Makefile.lib,
size_append).
"""

from __future__ import annotations

import bz2
import lzma
import shutil
import struct
import subprocess
import zlib
from dataclasses import dataclass

HDR_OFFSET = 0x1F1
HDRS_MAGIC = 0x53726448          # "HdrS"
BOOT_FLAG = 0xAA55
MIN_VERSION = 0x020C             # 2.12: xloadflags, 64-bit entry

# loadflags
LOADED_HIGH = 0x01
KASLR_FLAG = 0x02
QUIET_FLAG = 0x20
KEEP_SEGMENTS = 0x40
CAN_USE_HEAP = 0x80
# xloadflags
XLF_KERNEL_64 = 0x01
XLF_CAN_BE_LOADED_ABOVE_4G = 0x02
XLF_EFI_HANDOVER_32 = 0x04
XLF_EFI_HANDOVER_64 = 0x08
XLF_EFI_KEXEC = 0x10
XLF_5LEVEL = 0x20
XLF_5LEVEL_ENABLED = 0x40

# name, offset, struct format: the setup header as boot.rst tabulates it
HEADER_FIELDS = (
    ("setup_sects", 0x1F1, "B"), ("root_flags", 0x1F2, "H"), ("syssize", 0x1F4, "I"),
    ("ram_size", 0x1F8, "H"), ("vid_mode", 0x1FA, "H"), ("root_dev", 0x1FC, "H"),
    ("boot_flag", 0x1FE, "H"), ("jump", 0x200, "H"), ("header", 0x202, "I"),
    ("version", 0x206, "H"), ("realmode_swtch", 0x208, "I"), ("start_sys_seg", 0x20C, "H"),
    ("kernel_version", 0x20E, "H"), ("type_of_loader", 0x210, "B"), ("loadflags", 0x211, "B"),
    ("setup_move_size", 0x212, "H"), ("code32_start", 0x214, "I"), ("ramdisk_image", 0x218, "I"),
    ("ramdisk_size", 0x21C, "I"), ("bootsect_kludge", 0x220, "I"), ("heap_end_ptr", 0x224, "H"),
    ("ext_loader_ver", 0x226, "B"), ("ext_loader_type", 0x227, "B"), ("cmd_line_ptr", 0x228, "I"),
    ("initrd_addr_max", 0x22C, "I"), ("kernel_alignment", 0x230, "I"),
    ("relocatable_kernel", 0x234, "B"), ("min_alignment", 0x235, "B"), ("xloadflags", 0x236, "H"),
    ("cmdline_size", 0x238, "I"), ("hardware_subarch", 0x23C, "I"),
    ("hardware_subarch_data", 0x240, "Q"), ("payload_offset", 0x248, "I"),
    ("payload_length", 0x24C, "I"), ("setup_data", 0x250, "Q"), ("pref_address", 0x258, "Q"),
    ("init_size", 0x260, "I"), ("handover_offset", 0x264, "I"), ("kernel_info_offset", 0x268, "I"),
)
FIELD_OFFSETS = {name: off for name, off, _ in HEADER_FIELDS}


class BzImageError(ValueError):
    pass


@dataclass
class SetupHeader:
    setup_sects: int
    root_flags: int
    syssize: int
    ram_size: int
    vid_mode: int
    root_dev: int
    boot_flag: int
    jump: int
    header: int
    version: int
    realmode_swtch: int
    start_sys_seg: int
    kernel_version: int
    type_of_loader: int
    loadflags: int
    setup_move_size: int
    code32_start: int
    ramdisk_image: int
    ramdisk_size: int
    bootsect_kludge: int
    heap_end_ptr: int
    ext_loader_ver: int
    ext_loader_type: int
    cmd_line_ptr: int
    initrd_addr_max: int
    kernel_alignment: int
    relocatable_kernel: int
    min_alignment: int
    xloadflags: int
    cmdline_size: int
    hardware_subarch: int
    hardware_subarch_data: int
    payload_offset: int
    payload_length: int
    setup_data: int
    pref_address: int
    init_size: int
    handover_offset: int
    kernel_info_offset: int

    @property
    def end(self) -> int:
        """File offset just past the header: 0x202 + the byte at 0x201."""
        return 0x202 + (self.jump >> 8)


@dataclass
class BzImage:
    data: bytes
    header: SetupHeader

    @property
    def setup_size(self) -> int:
        """Bytes of the real-mode setup, boot sector included."""
        return (self.header.setup_sects or 4) * 512 + 512

    @property
    def kernel(self) -> bytes:
        """The protected-mode kernel (what goes at the load address):
        syssize 16-byte units; a signed (EFI-stub) image carries its
        signature after that, which is not loaded."""
        end = self.setup_size + self.header.syssize * 16
        return self.data[self.setup_size:end if self.header.syssize else None]

    @property
    def version_string(self) -> str:
        """The kernel version string the header's kernel_version points to."""
        off = self.header.kernel_version + 0x200
        if not self.header.kernel_version or off >= len(self.data):
            return ""
        return self.data[off:self.data.index(b"\0", off)].decode(errors="replace")

    @property
    def payload(self) -> bytes:
        h = self.header
        start = self.setup_size + h.payload_offset
        return self.data[start:start + h.payload_length]

    @property
    def header_bytes(self) -> bytes:
        """The setup header as it goes into boot_params at 0x1F1."""
        return self.data[HDR_OFFSET:self.header.end]

    def vmlinux(self) -> bytes:
        """The decompressed kernel ELF."""
        return decompress(self.payload)


def parse_bzimage(data: bytes) -> BzImage:
    if len(data) < 0x1000:
        raise BzImageError(f"{len(data)} bytes: too small for a bzImage")
    vals = {name: struct.unpack_from("<" + fmt, data, off)[0] for name, off, fmt in HEADER_FIELDS}
    h = SetupHeader(**vals)
    if h.boot_flag != BOOT_FLAG:
        raise BzImageError(f"boot_flag {h.boot_flag:#x}, not {BOOT_FLAG:#x}")
    if h.header != HDRS_MAGIC:
        raise BzImageError(f"no HdrS magic at 0x202 ({h.header:#x})")
    if h.version < MIN_VERSION:
        raise BzImageError(f"boot protocol {h.version >> 8}.{h.version & 0xff} < 2.12")
    if not h.loadflags & LOADED_HIGH:
        raise BzImageError("not a bzImage (LOADED_HIGH clear)")
    img = BzImage(bytes(data), h)
    if h.payload_length == 0 or img.setup_size + h.payload_offset + h.payload_length > len(data):
        raise BzImageError("payload_offset/payload_length point outside the file")
    return img


# -- decompression ----------------------------------------------------------

MAGICS = (
    (b"\x1f\x8b", "gzip"), (b"\xfd7zXZ\x00", "xz"), (b"\x5d\x00\x00", "lzma"), (b"BZh", "bzip2"),
    (b"\x02\x21\x4c\x18", "lz4"), (b"\x28\xb5\x2f\xfd", "zstd"), (b"\x89LZO", "lzo"),
)


def compression(payload: bytes) -> str:
    for magic, name in MAGICS:
        if payload.startswith(magic):
            return name
    raise BzImageError(f"unknown payload compression, magic {payload[:6].hex()}")


def decompress(payload: bytes) -> bytes:
    """Decompress a kernel payload, detected by magic.  The 4-byte size the
    kernel build appends is checked against the result."""
    kind = compression(payload)
    expect = struct.unpack_from("<I", payload, len(payload) - 4)[0]
    if kind == "gzip":
        d = zlib.decompressobj(wbits=31)
        out = d.decompress(payload)
    elif kind == "xz":
        out = lzma.LZMADecompressor(lzma.FORMAT_XZ).decompress(payload)
    elif kind == "lzma":
        out = lzma.LZMADecompressor(lzma.FORMAT_ALONE).decompress(payload)
    elif kind == "bzip2":
        out = bz2.BZ2Decompressor().decompress(payload)
    elif kind == "lz4":
        out = lz4_legacy_decompress(payload)
    elif kind == "zstd":
        out = zstd_decompress(payload[:-4], expect)
    else:
        raise BzImageError(f"{kind} payloads are not supported")
    if len(out) != expect:
        raise BzImageError(f"{kind} payload gave {len(out)} bytes, the kernel says {expect}")
    return out


LZ4_LEGACY_MAGIC = 0x184C2102
LZ4_LEGACY_BLOCK = 8 << 20


def lz4_legacy_decompress(data: bytes) -> bytes:
    """LZ4 legacy frames (`lz4 -l`): magic, then blocks of
    [u32 compressed size][block], each block up to 8 MiB decompressed.
    Stops at the end of input, at the appended size field (too short to
    be a block), or at a new magic (concatenated frames)."""
    try:
        import lz4.block as lz4block          # PyPI lz4: fast when present
    except ImportError:
        lz4block = None
    out = bytearray()                            # the pure-Python decoder's output
    parts = []                                   # lz4.block's, joined once at the end
    view = memoryview(data)
    pos = 0
    n = len(data)
    while pos + 4 <= n:
        word = struct.unpack_from("<I", data, pos)[0]
        if word == LZ4_LEGACY_MAGIC:
            pos += 4
            continue
        if pos + 4 + word > n or n - pos <= 4:
            break                                # the appended size
        block = view[pos + 4:pos + 4 + word]
        pos += 4 + word
        if lz4block is not None:
            parts.append(lz4block.decompress(block, uncompressed_size=LZ4_LEGACY_BLOCK))
        else:
            _lz4_block_into(block, out)
    return b"".join(parts) if lz4block is not None else bytes(out)


def _lz4_block_into(src: bytes, out: bytearray) -> None:
    """Pure-Python LZ4 block decoder (the block format: sequences of a
    token, literals, a 2-byte offset and a match of >= 4 bytes)."""
    i, n = 0, len(src)
    while i < n:
        token = src[i]
        i += 1
        lit = token >> 4
        if lit == 15:
            while True:
                b = src[i]
                i += 1
                lit += b
                if b != 255:
                    break
        if lit:
            out += src[i:i + lit]
            i += lit
        if i >= n:
            break                                 # the last sequence has no match
        off = src[i] | (src[i + 1] << 8)
        i += 2
        mlen = token & 15
        if mlen == 15:
            while True:
                b = src[i]
                i += 1
                mlen += b
                if b != 255:
                    break
        mlen += 4
        start = len(out) - off
        if off >= mlen:
            out += out[start:start + mlen]
        else:                                     # overlapping: repeat the period
            chunk = out[start:]
            q, r = divmod(mlen, off)
            out += chunk * q + chunk[:r]


def zstd_decompress(data: bytes, size_hint: int = 0) -> bytes:
    """zstd via the PyPI `zstandard` module, else the `zstd` program."""
    try:
        import zstandard
    except ImportError:
        zstandard = None
    if zstandard is not None:
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    if shutil.which("zstd"):
        p = subprocess.run(["zstd", "-d", "-c", "-q"], input=data, capture_output=True)
        if p.returncode == 0:
            return p.stdout
        raise BzImageError(f"zstd -d failed: {p.stderr.decode(errors='replace').strip()}")
    raise BzImageError("a zstd payload needs the `zstandard` Python module or the `zstd` program "
                       "(make deps installs it)")
