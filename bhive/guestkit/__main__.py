"""python -m bhive.guestkit fetch|build|path ...

  fetch [NAME ...|all] [--refresh]   fetch kernels (default: all) and busybox
  build [--init FILE] [--raw] [-o OUT]   build the initramfs, print its path
  path kernel NAME | path config NAME | path initramfs | path busybox
  list                               the known kernels and what is cached
"""

from __future__ import annotations

import argparse
import sys

from . import (KERNELS, FetchError, _kernel_from_info, build_initramfs, cache_root, fetch_busybox,
               fetch_kernel)


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
    p.add_argument("what", choices=["kernel", "config", "initramfs", "busybox"])
    p.add_argument("name", nargs="?")
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
    except FetchError as exc:
        print(f"guestkit: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
