"""Mutation check of the CPU test guests: apply one deliberate bug to the
softvmm sources, rebuild, run guests/cpu/{sys32,sys64,modes}.asm through
`bhive run` and print which checks stop passing; then restore the source.
Every mutation must make at least one guest fail (a FAIL line, a missing
PASS or a crash).  Rebuilds the core once per mutation: slow, run by hand.

    .venv/bin/python scripts/mutate_softvmm.py [MUTATION ...]
"""
import re, subprocess, sys, pathlib
REPO = pathlib.Path(__file__).resolve().parent.parent
CS = REPO / "bhive/accel/softvmm/csrc"
PY = str(REPO / ".venv/bin/python")
MUTS = {
 "seg_check_noop": ("system.c", "    if (sg->access & 0x10000) raise_exc(c, vec, 1, 0);\n    if ((c->cr0", "    return (uint32_t)(c->segbase[s] + off);\n    if (sg->access & 0x10000) raise_exc(c, vec, 1, 0);\n    if ((c->cr0"),
 "no_type_checks": ("system.c", "        if (type & 8) { w = 0; if (!(type & 2)) r = 0; }    /* code: no writes; execute-only: no reads */\n        else if (!(type & 2)) w = 0;", "        ;"),
 "expdown_as_up": ("system.c", "    if (!(type & 8) && (type & 4)) {\n        /* expand-down", "    if (0) {\n        /* expand-down"),
 "noncanon_always_gp": ("mmu.c", "raise_exc(c, ss ? EX_SS : EX_GP, 1, 0);", "raise_exc(c, EX_GP, 1, 0);"),
 "noncanon_no_decoder": ("mmu.c", "((acc & ACC_SEGQ) && insn_mem_seg(c) == S_SS)", "0"),
 "gate_no_param_copy": ("control.c", "    int pc = lma ? 0 : (int)(hi & 0x1f);", "    int pc = 0;"),
 "retf_no_nulling": ("control.c", "    sp_set(c, nsp + imm);                           /* release the caller's parameters */\n    null_inaccessible_segs(c);", "    sp_set(c, nsp + imm);"),
 "retf_no_imm_release": ("control.c", "    sp_set(c, nsp + imm);                           /* release", "    sp_set(c, nsp);                           /* release"),
 "no_tss_stack_check": ("system.c", "    if ((nss & 0xfffc) == 0) raise_exc(c, EX_TS, 1, ext ? 1 : 0);\n    if (desc_read", "    if (desc_read(c, nss, lo, hi)) raise_exc(c, EX_TS, 1, err);\n    return;\n    if (desc_read"),
 "movss_no_db_hold": ("run.c", "c->shadow != SHADOW_MOVSS", "1"),
 "no_sti_shadow": ("system.c", "    if (!(c->rflags & F_IF)) c->shadow = SHADOW_STI;", "    ;"),
 "task_no_reg_save": ("task.c", "        for (int k = 0; k < 8; k++) wr(c, ob + 0x28 + 4 * k, 4, (uint32_t)c->r[k]);", "        ;"),
 "task_no_busy_clear": ("task.c", "    if (reason == TS_JMP || reason == TS_IRET) set_busy(c, osel, 0);", "    ;"),
 "taskgate_no_errcode": ("exceptions.c", "        if (has_err) {\n            int esz", "        if (0) {\n            int esz"),
 "gate16_as_32": ("exceptions.c", "        case 0x6: is_intr = 1; gate32 = 0; break;", "        case 0x6: is_intr = 1; break;"),
 "no_ia32e_align": ("exceptions.c", "        rsp &= ~15ULL;", "        ;"),
 "fwait_no_mf": ("x87.c", "    if (c->fpu.fsw & FSW_ES) raise_exc(c, EX_MF, 0, 0);\n}", "}"),
 "xm_as_ud": ("sse.c", "    if (c->cr4 & CR4_OSXMMEXCPT) raise_exc(c, EX_XM, 0, 0);", "    ;"),
 "nm_x87_no_ts": ("x87.c", "    if (unlikely(c->cr0 & (CR0_EM | CR0_TS))) raise_exc(c, EX_NM, 0, 0);", "    if (unlikely(c->cr0 & CR0_EM)) raise_exc(c, EX_NM, 0, 0);"),
 "bound_never": ("gp_extensions.c", "    if (x < lo || x > hi) raise_exc(c, EX_BR, 0, 0);", "    (void)lo; (void)hi; (void)x;"),
 "into_never": ("control.c", "    else if (i->op == 0xce) { if (!cond(c, 0)) return;", "    else if (i->op == 0xce) { return;"),
 "sysenter_bad_ss": ("system.c", "    set_flat(c, S_SS, (cs & 0xfffc) + 8, 0xc093);", "    set_flat(c, S_SS, (cs & 0xfffc) + 16, 0xc093);"),
 "farjmp_no_priv": ("control.c", "        if ((hi & 0x400) ? dpl > c->cpl : (rpl > c->cpl || dpl != c->cpl)) raise_gp(c, es);", "        ;"),
 "pae_ignore_nx": ("mmu.c", "    if ((acc & ACC_X) && nx) goto prot;", "    ;"),
 "pg_off_keeps_lma": ("system.c", "    if (!(v & CR0_PG) && (old & CR0_PG)) c->efer &= ~(uint64_t)EFER_LMA;", "    ;"),
 "pm_seg_base_real": ("system.c", "    c->seg[s].sel = sel; c->seg[s].base = base; c->seg[s].limit = limit; c->seg[s].access = access;\n    c->segbase[s] = base;", "    base = (uint64_t)sel << 4;\n    c->seg[s].sel = sel; c->seg[s].base = base; c->seg[s].limit = limit; c->seg[s].access = access;\n    c->segbase[s] = base;"),
 "cgate64_no_null_ss": ("control.c", "        c->seg[S_SS].sel = nss; c->seg[S_SS].base = 0; c->seg[S_SS].limit = 0;\n        c->seg[S_SS].access = 0x10000 | ((uint32_t)ncpl << 5);", "        c->seg[S_SS].sel = 0x18; c->seg[S_SS].base = 0; c->seg[S_SS].limit = 0;\n        c->seg[S_SS].access = 0x10000 | ((uint32_t)ncpl << 5);"),
 "real_mode_64k_limits": [("system.c", "    uint64_t end = (uint64_t)sg->limit + 1;", "    uint64_t end = (c->cr0 & CR0_PE) ? (uint64_t)sg->limit + 1 : 0;"),
                          ("system.c", "    } else if (last > sg->limit) raise_exc(c, vec, 1, 0);", "    } else if (last > ((c->cr0 & CR0_PE) ? sg->limit : 0xffff)) raise_exc(c, vec, 1, 0);")],
 "no_cs_limit_branch": ("control.c", "    if (unlikely(target > c->seg[S_CS].limit) && !c->long64) raise_gp(c, 0);", "    ;"),
 "call_pushes_before_check": ("control.c", "    uint64_t t = near_target(c, rd_rm(c, i, sz), sz);\n        push(c, sz, c->nrip);", "    push(c, sz, c->nrip);\n        uint64_t t = near_target(c, rd_rm(c, i, sz), sz);"),
 "ist_noncanon_gp": ("exceptions.c", "            raise_exc(c, EX_SS, 1, ext);\n        uint64_t sp = rsp;", "            raise_exc(c, EX_GP, 1, ext);\n        uint64_t sp = rsp;"),
 "no_frame_limit": ("exceptions.c", "    if (bad) raise_exc(c, EX_SS, 1, err);", "    (void)bad;"),
 "dbl_pf_cr2": ("mmu.c", "    c->exc_cr2 = lin;", "    c->exc_cr2 = lin + 4;"),
}
GUESTS = ["sys32", "sys64", "modes"]

def run_guest(name):
    p = subprocess.run([PY, "-m", "bhive", "run", f"configs/cpu-{name}.toml", "--name", f"mut-{name}", "--watchdog", "15"],
                       cwd=REPO, capture_output=True, timeout=60)
    out = p.stdout.decode(errors="replace")
    fails = re.findall(r"^FAIL (.*?)(?: vec=.*)?\r?$", out, re.M)
    passes = re.findall(r"^PASS (.*?)\r?$", out, re.M)
    return p.returncode, fails, passes

def main(names):
    for name in names:
        edits = MUTS[name] if isinstance(MUTS[name], list) else [MUTS[name]]
        saved = {}
        for f, old, new in edits:
            path = CS / f
            saved.setdefault(path, path.read_text())
            src = path.read_text()
            assert src.count(old) == 1, (name, src.count(old))
            path.write_text(src.replace(old, new))
        try:
            b = subprocess.run([PY, "bhive/accel/softvmm/_build.py"], cwd=REPO, capture_output=True)
            assert b.returncode == 0, b.stderr.decode()[-2000:]
            print(f"== {name}")
            for g in GUESTS:
                rc, fails, passes = run_guest(g)
                if rc != 1 or fails:
                    print(f"  {g}: rc={rc} passes={len(passes)}", *[f"\n    FAIL {x}" for x in fails])
        finally:
            for path, src in saved.items():
                path.write_text(src)
    subprocess.run([PY, "bhive/accel/softvmm/_build.py"], cwd=REPO, capture_output=True)

if __name__ == "__main__":
    main(sys.argv[1:] or list(MUTS))
