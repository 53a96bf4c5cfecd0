"""FreeBSD's vmm ABI as cffi declarations (ABI mode: no compiler, no headers).

Everything here was written by reading FreeBSD 14/15's headers, not copied:

* sys/amd64/include/vmm.h: enum vm_reg_name, enum vm_exitcode, enum
  vm_cap_type, enum vm_suspend_how, struct seg_desc, struct
  vm_guest_paging, struct vie (with its _Static_asserts: sizeof 64,
  disp_bytes at 22, scale at 24, base_register at 28), struct vm_inout,
  struct vm_inout_str, struct vm_exit and its union;
* sys/amd64/include/vmm_dev.h (FreeBSD 14.0 and later): struct vm_run
  {cpuid; cpuset_t *cpuset; size_t cpusetsize; struct vm_exit *vm_exit}
  (13.x embedded the vm_exit instead: not supported), VM_MAX_NAMELEN;
* lib/libvmmapi/vmmapi.h (14.0 and later, VMMAPI_VERSION >= 0200): the
  `struct vcpu *` API (vm_vcpu_open, vm_run(vcpu, vmrun), ...).

Bit-fields (struct vm_inout's bytes/in/string/rep, struct vie's prefix and
ModRM bits) are declared as the bytes that hold them and decoded in
Python (`inout_bits`, `vie_fields`), with the SysV x86-64 allocation the
FreeBSD compiler uses: the first bit-field at bit 0, a field that does not
fit in what is left of its unit starts the next one.

`LAYOUT` lists sizes and offsets worked out by hand from those headers;
tests/cpu/test_bhyve_accel.py asserts that cffi's layout of CDEF agrees, so a
typo in CDEF cannot silently shift a field.
"""

from __future__ import annotations

CDEF = r"""
struct seg_desc {                 /* vmm.h: VMX access-rights format */
    uint64_t base;
    uint32_t limit;
    uint32_t access;
};

struct vm_guest_paging {          /* vmm.h */
    uint64_t cr3;
    int cpl;
    int cpu_mode;                 /* enum vm_cpu_mode */
    int paging_mode;              /* enum vm_paging_mode */
};

struct vie_op {                   /* vmm.h: sizeof 4, alignof 2 */
    uint8_t op_byte;
    uint8_t op_type;
    uint16_t op_flags;
};

struct vie {                      /* vmm.h: sizeof 64 */
    uint8_t inst[15];
    uint8_t num_valid;
    uint8_t num_processed;
    uint8_t size_bits;            /* addrsize:4, opsize:4 */
    uint8_t prefix_bits[2];       /* rex_w..opsize_override; addrsize_override, segment_override, mod:2, reg:4 */
    uint8_t modrm_bits[2];        /* rm:4, ss:2, vex_present, vex_l; index:4, base:4 */
    uint8_t disp_bytes;
    uint8_t imm_bytes;
    uint8_t scale;
    uint8_t vex_bits;             /* vex_reg:4, vex_pp:2 */
    uint8_t _sparebytes[2];
    int base_register;
    int index_register;
    int segment_register;
    int64_t displacement;
    int64_t immediate;
    uint8_t decoded;
    uint8_t _sparebyte;
    struct vie_op op;
};

struct vm_inout {                 /* vmm.h: bytes:3, in:1, string:1, rep:1 in the first uint16_t */
    uint16_t bits;
    uint16_t port;
    uint32_t eax;
};

struct vm_inout_str {             /* vmm.h */
    struct vm_inout inout;
    struct vm_guest_paging paging;
    uint64_t rflags;
    uint64_t cr0;
    uint64_t index;
    uint64_t count;
    int addrsize;
    int seg_name;                 /* enum vm_reg_name */
    struct seg_desc seg_desc;
};

struct vm_exit_inst_emul {
    uint64_t gpa;
    uint64_t gla;
    uint64_t cs_base;
    int cs_d;
    struct vm_guest_paging paging;
    struct vie vie;
};

struct vm_exit_vmx {
    int status;
    uint32_t exit_reason;
    uint64_t exit_qualification;
    int inst_type;
    int inst_error;
};

struct vm_exit_svm { uint64_t exitcode; uint64_t exitinfo1; uint64_t exitinfo2; };
struct vm_exit_msr { uint32_t code; uint64_t wval; };
struct vm_exit_spinup_ap { int vcpu; uint64_t rip; };
struct vm_exit_hlt { uint64_t rflags; uint64_t intr_status; };
struct vm_exit_ioapic_eoi { int vector; };
struct vm_exit_suspended { int how; };
struct vm_exit_ipi { uint32_t mode; uint8_t vector; };
struct vm_exit_dbg { int trace_trap; int pushf_intercept; int tf_shadow_val; struct vm_guest_paging paging; };

struct vm_task_switch {
    uint16_t tsssel;
    int ext;
    uint32_t errcode;
    int errcode_valid;
    int reason;
    struct vm_guest_paging paging;
};

struct vm_exit {                  /* vmm.h */
    int exitcode;                 /* enum vm_exitcode */
    int inst_length;              /* 0 means unknown */
    uint64_t rip;
    union {
        struct vm_inout inout;
        struct vm_inout_str inout_str;
        struct { uint64_t gpa; int fault_type; } paging;
        struct vm_exit_inst_emul inst_emul;
        struct vm_exit_vmx vmx;
        struct vm_exit_svm svm;
        struct { int inst_length; } bpt;
        struct vm_exit_dbg dbg;
        struct vm_exit_msr msr;
        struct vm_exit_spinup_ap spinup_ap;
        struct vm_exit_hlt hlt;
        struct vm_exit_ioapic_eoi ioapic_eoi;
        struct vm_exit_suspended suspended;
        struct vm_exit_ipi ipi;
        struct vm_task_switch task_switch;
    } u;
};

struct vm_run {                   /* vmm_dev.h, FreeBSD >= 14.0 */
    int cpuid;
    void *cpuset;                 /* cpuset_t *: where SPINUP/IPI exits put their CPU set */
    size_t cpusetsize;
    struct vm_exit *vm_exit;
};

struct iovec { void *iov_base; size_t iov_len; };

struct vmctx;
struct vcpu;

/* lib/libvmmapi/vmmapi.h (FreeBSD >= 14.0) */
int vm_create(const char *name);
struct vmctx *vm_open(const char *name);
void vm_close(struct vmctx *ctx);
void vm_destroy(struct vmctx *ctx);
struct vcpu *vm_vcpu_open(struct vmctx *ctx, int vcpuid);
void vm_vcpu_close(struct vcpu *vcpu);
int vm_setup_memory(struct vmctx *ctx, size_t len, int style);
void *vm_map_gpa(struct vmctx *ctx, uint64_t gaddr, size_t len);
int vm_get_device_fd(struct vmctx *ctx);
int vm_set_desc(struct vcpu *vcpu, int reg, uint64_t base, uint32_t limit, uint32_t access);
int vm_get_desc(struct vcpu *vcpu, int reg, uint64_t *base, uint32_t *limit, uint32_t *access);
int vm_set_register(struct vcpu *vcpu, int reg, uint64_t val);
int vm_get_register(struct vcpu *vcpu, int reg, uint64_t *retval);
int vm_run(struct vcpu *vcpu, struct vm_run *vmrun);
int vm_suspend(struct vmctx *ctx, int how);
int vm_inject_exception(struct vcpu *vcpu, int vector, int errcode_valid, uint32_t errcode,
                        int restart_instruction);
int vm_lapic_msi(struct vmctx *ctx, uint64_t addr, uint64_t msg);
int vm_inject_nmi(struct vcpu *vcpu);
int vm_set_capability(struct vcpu *vcpu, int cap, int val);
int vm_get_capability(struct vcpu *vcpu, int cap, int *retval);
int vcpu_reset(struct vcpu *vcpu);
int vm_activate_cpu(struct vcpu *vcpu);
int vm_suspend_cpu(struct vcpu *vcpu);
int vm_resume_cpu(struct vcpu *vcpu);
int vm_restart_instruction(struct vcpu *vcpu);
int vm_set_topology(struct vmctx *ctx, uint16_t sockets, uint16_t cores, uint16_t threads,
                    uint16_t maxcpus);
int vm_copy_setup(struct vcpu *vcpu, struct vm_guest_paging *pg, uint64_t gla, size_t len, int prot,
                  struct iovec *iov, int iovcnt, int *fault);
void vm_copyin(struct iovec *guest_iov, void *host_dst, size_t len);
void vm_copyout(const void *host_src, struct iovec *guest_iov, size_t len);
"""

# Sizes and offsets from reading the headers (SysV x86-64 alignment rules).
LAYOUT = {
    ("struct seg_desc", None): 16,
    ("struct vm_guest_paging", None): 24,
    ("struct vie", None): 64,                   # vmm.h _Static_assert
    ("struct vie", "disp_bytes"): 22,           # vmm.h _Static_assert
    ("struct vie", "scale"): 24,                # vmm.h _Static_assert
    ("struct vie", "base_register"): 28,        # vmm.h _Static_assert
    ("struct vie", "displacement"): 40,
    ("struct vie", "immediate"): 48,
    ("struct vie", "op"): 58,
    ("struct vm_inout", None): 8,
    ("struct vm_inout", "port"): 2,
    ("struct vm_inout", "eax"): 4,
    ("struct vm_inout_str", "paging"): 8,
    ("struct vm_inout_str", "index"): 48,
    ("struct vm_inout_str", "count"): 56,
    ("struct vm_inout_str", "seg_desc"): 72,
    ("struct vm_inout_str", None): 88,
    ("struct vm_exit_inst_emul", "paging"): 32,
    ("struct vm_exit_inst_emul", "vie"): 56,
    ("struct vm_exit_inst_emul", None): 120,    # the largest member: the union's size
    ("struct vm_exit_msr", "wval"): 8,
    ("struct vm_exit_spinup_ap", "rip"): 8,
    ("struct vm_task_switch", "paging"): 24,
    ("struct vm_task_switch", None): 48,
    ("struct vm_exit", "rip"): 8,
    ("struct vm_exit", "u"): 16,
    ("struct vm_exit", None): 136,
    ("struct vm_run", "cpuset"): 8,
    ("struct vm_run", "vm_exit"): 24,
    ("struct vm_run", None): 32,
}

# enum vm_exitcode (vmm.h), in order.
EXITCODES = ("INOUT", "VMX", "BOGUS", "RDMSR", "WRMSR", "HLT", "MTRAP", "PAUSE", "PAGING", "INST_EMUL",
             "SPINUP_AP", "DEPRECATED1", "RENDEZVOUS", "IOAPIC_EOI", "SUSPENDED", "INOUT_STR",
             "TASK_SWITCH", "MONITOR", "MWAIT", "SVM", "REQIDLE", "DEBUG", "VMINSN", "BPT", "IPI", "DB")
EXIT = {name: n for n, name in enumerate(EXITCODES)}

# enum vm_reg_name (vmm.h): base.VmReg covers 0..45; these follow.
VM_REG_GUEST_GS_BASE = 46
VM_REG_GUEST_KGS_BASE = 47
VM_REG_GUEST_TPR = 48
VM_REG_LAST = 49

# enum vm_cap_type (vmm.h)
VM_CAP_HALT_EXIT, VM_CAP_MTRAP_EXIT, VM_CAP_PAUSE_EXIT, VM_CAP_UNRESTRICTED_GUEST = 0, 1, 2, 3
VM_CAP_IPI_EXIT = 8

# enum vm_mmap_style (vmmapi.h)
VM_MMAP_NONE, VM_MMAP_ALL, VM_MMAP_SPARSE = 0, 1, 2

# VIE_OP_TYPE_* (sys/amd64/vmm/vmm_instruction_emul.c: the op_type values the
# kernel's decoder stores in vie.op.op_type).
VIE_OP_TYPE_NONE, VIE_OP_TYPE_MOV, VIE_OP_TYPE_MOVSX, VIE_OP_TYPE_MOVZX = 0, 1, 2, 3

# vmm.h: VM_MAX_NAMELEN = SPECNAMELEN - VM_MAX_PREFIXLEN - VM_MAX_SUFFIXLEN - 1,
# with SPECNAMELEN 255 (sys/param.h, FreeBSD >= 13): 229 bytes.  A longer
# name fails in the kernel with ENAMETOOLONG (what the seed hit).
SPECNAMELEN = 255
VM_MAX_PREFIXLEN = 10
VM_MAX_SUFFIXLEN = 15
VM_MAX_NAMELEN = SPECNAMELEN - VM_MAX_PREFIXLEN - VM_MAX_SUFFIXLEN - 1


def inout_bits(bits: int) -> dict[str, int]:
    """struct vm_inout's first uint16_t: bytes:3, in:1, string:1, rep:1."""
    return {"bytes": bits & 7, "in": (bits >> 3) & 1, "string": (bits >> 4) & 1, "rep": (bits >> 5) & 1}


def make_inout_bits(*, bytes: int, is_in: bool, string: bool = False, rep: bool = False) -> int:
    return (bytes & 7) | int(is_in) << 3 | int(string) << 4 | int(rep) << 5


def vie_fields(vie) -> dict[str, int]:
    """The bit-fields of a decoded struct vie (see CDEF for the bytes)."""
    p0, p1 = vie.prefix_bits[0], vie.prefix_bits[1]
    return {"addrsize": vie.size_bits & 0xF, "opsize": vie.size_bits >> 4,
            "rex_w": p0 & 1, "rex_r": (p0 >> 1) & 1, "rex_present": (p0 >> 4) & 1,
            "mod": (p1 >> 2) & 3, "reg": (p1 >> 4) & 0xF, "rm": vie.modrm_bits[0] & 0xF}
