"""python -m bhive.difftest: differential CPU testing (see bhive.difftest)."""

from __future__ import annotations

import argparse
import os
import sys

from .gen import group_names, make_case
from .runner import DiffTester, Stats


def _job(a):
    args, seed, ranges = a
    t = DiffTester(args.a, args.b, batch=args.batch)
    total = Stats()
    for lo, hi in ranges:
        st = t.run(seed, hi - lo, args.group, start=lo,
                   max_reports=max(0, args.max_reports - len(total.reports)))
        total.cases += st.cases
        total.divergences += st.divergences
        total.skipped += st.skipped
        total.reports += st.reports
        for g, k in st.by_group.items():
            total.by_group[g] = total.by_group.get(g, 0) + k
    t.close()
    return total


def run_parallel(args, seed: int, start: int, n: int) -> Stats:
    """Split the case range into batches dealt round-robin to `--jobs`
    processes (each opens its own VMs: a KVM VM belongs to one process)."""
    import multiprocessing as mp
    import time
    batches = [(i, min(i + args.batch, start + n)) for i in range(start, start + n, args.batch)]
    work = [(args, seed, batches[j::args.jobs]) for j in range(args.jobs)]
    t0 = time.perf_counter()
    with mp.get_context("fork").Pool(args.jobs) as pool:
        parts = pool.map(_job, work)
    st = Stats(seconds=time.perf_counter() - t0)
    for p in parts:
        st.cases += p.cases
        st.divergences += p.divergences
        st.skipped += p.skipped
        for g, k in p.by_group.items():
            st.by_group[g] = st.by_group.get(g, 0) + k
    return st


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bhive.difftest",
                                description="Run random x86-64 CPL3 cases on two accelerators and compare.")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random; always printed)")
    p.add_argument("--cases", type=int, default=10000, help="number of cases (default 10000)")
    p.add_argument("--case", type=int, default=None, help="run only case number CASE of the seed (replay)")
    p.add_argument("--start", type=int, default=0, help="first case index (default 0)")
    p.add_argument("--a", default="kvm", help="reference accelerator (default kvm)")
    p.add_argument("--b", default="softvmm", help="accelerator under test (default softvmm)")
    p.add_argument("--group", default="all", choices=group_names(), help="instruction group (default all)")
    p.add_argument("--batch", type=int, default=1000, help="cases per nasm run (default 1000)")
    p.add_argument("--max-reports", type=int, default=10, help="divergences printed in full (default 10; per worker with --jobs)")
    p.add_argument("--show", action="store_true", help="print the generated cases and exit")
    p.add_argument("--progress", action="store_true", help="print progress after every batch")
    p.add_argument("--jobs", type=int, default=0,
                   help="worker processes, each with its own VMs (default: one per CPU "
                        "for 20000 cases or more, else 1)")
    p.add_argument("--mask-flags", type=lambda x: int(x, 0), default=0,
                   help="extra RFLAGS bits to ignore in every case, e.g. 0x10000 to look past "
                        "a known RF bug (default 0)")
    args = p.parse_args(argv)
    from . import runner
    runner.EXTRA_FLAG_MASK = args.mask_flags

    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    print(f"seed {seed}", flush=True)
    start, n = (args.case, 1) if args.case is not None else (args.start, args.cases)
    if args.jobs <= 0:
        args.jobs = (os.cpu_count() or 1) if n >= 20000 else 1
    if args.show:
        for i in range(start, start + n):
            c = make_case(seed, i, args.group)
            print(f"; case {i} group {c.group} undef-flags {c.flags_undef:#x}\n{c.text}")
        return 0
    try:
        if args.jobs > 1 and n > args.batch:
            st = run_parallel(args, seed, start, n)
        else:
            t = DiffTester(args.a, args.b, batch=args.batch)
            st = t.run(seed, n, args.group, start=start, max_reports=args.max_reports,
                       progress=args.progress)
            t.close()
    except (RuntimeError, ImportError, AttributeError) as e:
        print(f"difftest: {e}", file=sys.stderr)
        return 2
    groups = ", ".join(f"{g}={k}" for g, k in sorted(st.by_group.items()))
    print(f"{args.a} vs {args.b}: seed {seed}, {st.cases} cases, {st.divergences} divergences"
          f"{' (' + groups + ')' if groups else ''}, {st.skipped} skipped, "
          f"{st.seconds:.1f}s, {st.rate:.0f} cases/s")
    return 1 if st.divergences or st.skipped else 0


if __name__ == "__main__":
    sys.exit(main())
