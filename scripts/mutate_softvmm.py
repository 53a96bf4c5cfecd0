"""Mutation check of the CPU test guests: apply one deliberate bug to the
softvmm sources, rebuild, run guests/cpu/{sys32,sys64,modes,opcodes}.asm (opcodes also with
-cpu qemu64) through
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
 "unknown_opcode_exits": ("system.c", "HANDLER(h_unhandled) { raise_ud(c); }", "HANDLER(h_unhandled) { exit_unhandled(c); }"),
 "lea_reg_no_ud": ("decode.c", "(op == 0x8d && mod == 3) || ", ""),
 "null_ss_any_rpl": ("system.c", "!(c->long64 && c->cpl < 3 && (sel & 3) == c->cpl)", "!(c->long64 && c->cpl < 3)"),
 "lgdt_noncanonical": ("system.c", "        if (c->long64 && !canonical(base)) raise_gp(c, 0);   /* SDM Vol 2A LGDT/LIDT */\n", ""),
 "lldt_ltr_noncanonical": ("system.c", "    if ((c->efer & EFER_LMA) && !canonical(base)) raise_gp(c, sel & ~3);", ""),
 "wrmsr_fsbase_noncanonical": ("system.c", "case 0xc0000100: if (!canonical(v)) return 1;", "case 0xc0000100:"),
 "nmi_iret_no_recheck": ("control.c", "    if (__atomic_load_n(&c->lapic->nmi, __ATOMIC_RELAXED)) __atomic_store_n(&c->lapic->event, 1, __ATOMIC_SEQ_CST);\n", ""),
 "apic_disable_keeps_id": ("system.c", "if ((old & 0x800) && !(v & 0x800)) lapic_reset(c->vm, c->vcpuid, 0);", ";"),
 "apic_cpuid_ignores_en": ("cpuid.c", "if (!(c->lapic->apic_base & 0x800)) o[3] &= ~(1u << 9);", ";"),
 "apic_base_any_high_bits": ("system.c", "(((1ULL << MAXPHYADDR_BITS) - 1) & ~0xfffULL)", "0xffffffffff000ULL"),
 "tmict_no_restart": ("lapic.c", "        l->timer_icr = v;\n        timer_start(c, __rdtsc(), v);", "        if (!l->timer_icr || !v) timer_start(c, __rdtsc(), v);\n        l->timer_icr = v;"),
 "mcg_cap_absent": ("system.c", "        *v = 0; return 0;                           /* IA32_MCG_CAP: count 0", "        return 1;                           /* IA32_MCG_CAP: count 0"),
 "no_smep": ("mmu.c", "        if (acc & ACC_X) { if (c->cr4 & CR4_SMEP) goto prot; }", "        if (acc & ACC_X) { }"),
 "smap_ignores_ac_off": ("mmu.c", "((acc & ACC_SYS) || !(c->rflags & F_AC))) goto prot;", "(acc & ACC_SYS)) goto prot;"),
 "smap_clac_keeps_tlb": ("system.c", "    if ((old & ~c->rflags & F_AC) && (c->cr4 & CR4_SMAP) && c->smap_n) tlb_smap_close(c);\n", ""),
 "smap_jit_tag_open": ("mmu.c", "    j->jtag_r = e->tag_r == TLB_INVALID ? JTAG_INVALID : -(int64_t)(e->tag_r >> 12);", "    j->jtag_r = (e->tag_r == TLB_INVALID && !((e->perm & TP_U) && (c->cr4 & CR4_SMAP) && c->cpl < 3)) ? JTAG_INVALID : -(int64_t)(page >> 12);"),
 "no_exec_bp": ("debug.c", "if (bp_enabled(c, n) && bp_rw(c, n) == 0 && c->dr[n] == lin) hits |= 1 << n;", "(void)lin;"),
 "exec_bp_ignores_rf": ("run.c", "if (c->dbg_exec && !(c->rflags & F_RF)) {", "if (c->dbg_exec) {"),
 "data_bp_fast_path": ("mmu.c", "        if (m & 2) w = 0;\n", ""),
 "io_bp_ignored": ("mmu.c", "    if (unlikely(c->dbg_io)) dbg_io_access(c, port, size);\n", ""),
 "no_general_detect": ("debug.c", "    if (c->dr[7] & DR7_GD) {", "    if (0) {"),
 "dr4_no_ud": ("debug.c", "    if ((dr == 4 || dr == 5) && (c->cr4 & 0x8)) raise_ud(c);", ""),
 "tf_and_bp_two_db": ("run.c", "c->dr[6] = (c->dr[6] & ~0xfULL) | c->dbg_hits | (bs ? 0x4000 : 0);", "c->dr[6] = (c->dr[6] & ~0xfULL) | (bs ? 0x4000 : c->dbg_hits);"),
 "cpu_model_not_enforced": ("decode.c", "    if (!feature_ok(vm, map, op, rep, opsz66, is64, d->ext, mod, rex, vex ? vexsub : -1, fn)) fn = h_ud;", "    (void)feature_ok;"),
 "cpu_model_cpuid_unmasked": ("cpuid.c", "    if (leaf == 1) { o[2] &= vm->cpuid_mask[FW_1C]; o[3] &= vm->cpuid_mask[FW_1D]; }", "    if (0) { }"),
 "cpu_model_1g_pages_always": ("mmu.c", "            else if (lvl == 3 && !vm_feat(c->vm, FW_X1D, 26)) rsv |= PTE_PS;", "            else if (0) ;"),
 "rdpmc_reads_zero": ("system.c", "HANDLER(h_rdpmc) { raise_gp(c, 0); }", "HANDLER(h_rdpmc) { c->r[R_RAX] = c->r[R_RDX] = 0; }"),
}
# (config, extra `bhive run` arguments): opcodes again under the qemu64 CPU model
GUESTS = ["sys32", "sys64", "modes", "opcodes", "opcodes -cpu qemu64"]

def run_guest(spec):
    name, *extra = spec.split()
    p = subprocess.run([PY, "-m", "bhive", "run", f"configs/cpu-{name}.toml", "--name", f"mut-{name}", "--watchdog", "15", *extra],
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
