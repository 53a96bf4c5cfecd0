"""python -m bhive.guestkit fetch|build|path ...

  fetch [NAME ...|all] [--refresh]   fetch kernels (default: all) and busybox
  build [--init FILE] [--raw] [-o OUT]   build the initramfs, print its path
  path kernel NAME | path config NAME | path initramfs | path busybox
  image debian-12|debian-13 [--rebuild]   build (or reuse) a Debian disk image, print its path
  path image IMAGE | path kernel IMAGE | path initrd IMAGE
                                     an image's disk, its kernel and its initramfs-tools
                                     initrd (extracted for --kernel/--initrd); built if needed
  list                               the known kernels, images and what is cached

In configs: guestkit:debian-13 (kernel), guestkit:debian-13-initrd (initrd),
guestkit:debian-13-disk (the image; attach it with snapshot).
"""

from __future__ import annotations

import argparse
import sys

from . import (KERNELS, FetchError, _kernel_from_info, build_initramfs, cache_root, fetch_busybox,
               fetch_kernel)
from .images import IMAGES, build_image, cached_image


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bhive.guestkit", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch")
    f.add_argument("names", nargs="*")
    f.add_argument("--refresh", action="store_true")
    b = sub.add_parser("build")
    b.add_argument("--init")
    b.add_argument("--raw", action="store_true", help="uncompressed cpio")
    b.add_argument("-o", "--output")
    p = sub.add_parser("path")
    p.add_argument("what", choices=["kernel", "config", "initramfs", "busybox", "image", "initrd"])
    p.add_argument("name", nargs="?")
    im = sub.add_parser("image")
    im.add_argument("name", choices=list(IMAGES))
    im.add_argument("--rebuild", action="store_true")
    sub.add_parser("list")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "fetch":
            names = list(KERNELS) if not a.names or a.names == ["all"] else a.names
            for n in names:
                k = fetch_kernel(n, refresh=a.refresh)
                print(f"{n}: {k.package} {k.version} -> {k.vmlinuz}")
            print(f"busybox: {fetch_busybox(refresh=a.refresh)}")
        elif a.cmd == "build":
            print(build_initramfs(a.init, compress=not a.raw, out=a.output))
        elif a.cmd == "image":
            print(build_image(a.name, rebuild=a.rebuild).disk)
        elif a.cmd == "path" and (a.what in ("image", "initrd") or a.name in IMAGES):
            if a.name not in IMAGES or a.what not in ("image", "kernel", "initrd"):
                ap.error(f"path {a.what} takes an image name: {', '.join(IMAGES)}")
            img = build_image(a.name)
            print({"image": img.disk, "kernel": img.vmlinuz, "initrd": img.initrd}[a.what])
        elif a.cmd == "path":
            if a.what in ("kernel", "config"):
                if not a.name:
                    ap.error(f"path {a.what} needs a kernel name: {', '.join(KERNELS)}")
                k = fetch_kernel(a.name)
                print(k.vmlinuz if a.what == "kernel" else k.config)
            elif a.what == "initramfs":
                print(build_initramfs())
            else:
                print(fetch_busybox())
        elif a.cmd == "list":
            for n, (suite, meta) in KERNELS.items():
                k = _kernel_from_info(cache_root() / "kernels" / n)
                print(f"{n:18} {suite}/{meta:24} {'cached: ' + k.release if k else 'not fetched'}")
            for n, suite in IMAGES.items():
                img = cached_image(n)
                print(f"{n:18} {suite} disk image{'':14} {'built: ' + str(img.disk) if img else 'not built'}")
    except FetchError as exc:
        print(f"guestkit: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
