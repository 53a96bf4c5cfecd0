/*
 * softvmm public C API (what the cffi wrapper calls).  _build.py feeds this
 * file to cffi's cdef, so keep it to declarations.  None of these functions
 * touch Python objects, so cffi releases the GIL around every call.
 */
#ifndef SOFTVMM_H
#define SOFTVMM_H
#include <stdint.h>
#include <stddef.h>

typedef struct svm_exit {
    int32_t code;            /* bhive ExitCode (FreeBSD vm_exitcode numbers) */
    uint32_t inst_length;
    uint64_t rip;
    uint64_t data;
    uint64_t gpa;
    uint32_t port, size, is_in, is_write;
    uint32_t msr, vector, how, insn_len;
    uint8_t insn[16];
} svm_exit_t;

enum {
    SVM_EXIT_INOUT = 0, SVM_EXIT_BOGUS = 2, SVM_EXIT_RDMSR = 3, SVM_EXIT_WRMSR = 4,
    SVM_EXIT_HLT = 5, SVM_EXIT_PAUSE = 7, SVM_EXIT_INST_EMUL = 9, SVM_EXIT_IOAPIC_EOI = 13,
    SVM_EXIT_SUSPENDED = 14, SVM_EXIT_UNHANDLED = 100
};

/* vm flags */
#define SVM_F_UNKNOWN_MSR_GP 1

struct svm_vm;
struct svm_cpu;

uint64_t svm_shm_size(int ncpus, uint64_t ram_size);
struct svm_vm *svm_vm_open(void *ram, uint64_t ram_size, const uint64_t *slots, int nslots,
                           void *shm, int ncpus, uint32_t flags);
void svm_vm_close(struct svm_vm *vm);
/* the CPU model: vendor (0 GenuineIntel, 1 AuthenticAMD) and 7 AND-masks over
 * the advertised CPUID bits: 1.ECX, 1.EDX, 7.0.EBX, 7.0.ECX, 7.0.EDX,
 * 0x80000001.ECX, 0x80000001.EDX (before any vCPU runs) */
void svm_vm_set_cpu(struct svm_vm *vm, int vendor_amd, const uint32_t *masks);
struct svm_cpu *svm_cpu_open(struct svm_vm *vm, int vcpuid);
void svm_cpu_close(struct svm_cpu *c);
void svm_activate(struct svm_cpu *c);
int svm_run(struct svm_cpu *c, svm_exit_t *exit);
void svm_complete_io(struct svm_cpu *c, uint64_t value);
void svm_complete_msr(struct svm_cpu *c, uint64_t value, int gp);
uint64_t svm_get_reg(struct svm_cpu *c, int reg);
int svm_set_reg(struct svm_cpu *c, int reg, uint64_t value);
int svm_get_desc(struct svm_cpu *c, int reg, uint64_t *base, uint32_t *limit, uint32_t *access, uint16_t *sel);
int svm_set_desc(struct svm_cpu *c, int reg, uint64_t base, uint32_t limit, uint32_t access, uint16_t sel);
int svm_inject_exception(struct svm_cpu *c, int vector, int has_err, uint32_t err);
void svm_lapic_msi(struct svm_vm *vm, uint64_t addr, uint32_t data);
void svm_kick(struct svm_vm *vm, int vcpuid);
void svm_invalidate(struct svm_vm *vm, uint64_t gpa, uint64_t len);
void svm_set_mp_state(struct svm_cpu *c, int runnable);
void svm_stats(struct svm_cpu *c, uint64_t *instructions, uint64_t *exits);
/* Serve ports [base, base+count) without exits (pio_lane.c): OUTs are posted
 * into the device actor's shared-memory channel `ring` (bhive.bus.channel
 * layout, `capacity` slots) as msgpack PioRequests starting with `prefix`,
 * then `doorbell_fd` is rung; 1-byte INs from base+mirror_offset (-1: none)
 * come from the channel's register mirror when valid and no channel in
 * `peers` (every vCPU's channel to this actor) has a pending write that
 * could change it.  Bit n of neutral_writes: a write to base+n cannot
 * change the mirrored register. */
int svm_pio_lane(struct svm_cpu *c, uint16_t base, uint16_t count, void *ring, void **peers,
                 uint32_t npeers, uint32_t capacity, int doorbell_fd, const uint8_t *prefix,
                 uint32_t prefix_len, int mirror_offset, uint32_t neutral_writes);
/* decoded-block cache: out[0] lookups, [1] blocks decoded, [2] arena flushes,
 * [3] arena bytes in use, [4] chain epoch (link invalidations); JIT (jit.c):
 * [5] blocks translated, [6] instructions it handed to the interpreter,
 * [7] code bytes in use */
void svm_cache_stats(struct svm_cpu *c, uint64_t *out);
/* BHIVE_JIT_STATS=1: print the JIT's fallbacks by opcode to stderr */
void svm_jit_report(struct svm_cpu *c);
/* JIT (jit.c) for this vCPU: translate a block after `threshold` interpreted
 * runs (0: at once); threshold < 0 turns it off.  Default: BHIVE_JIT and
 * BHIVE_JIT_THRESHOLD from the environment. */
void svm_jit_config(struct svm_cpu *c, int threshold);
/* Guest-RIP sampling: every `period` retired instructions (at the next block
 * boundary) the RIP goes into buf[count % cap]; returns the count so far.
 * buf = NULL turns it off.  For `bhive profile`: where does guest time go? */
void svm_profile(struct svm_cpu *c, uint64_t *buf, uint32_t cap, uint64_t period);
uint64_t svm_profile_count(struct svm_cpu *c);
void svm_cpuid(struct svm_cpu *c, uint32_t leaf, uint32_t sub, uint32_t *out4);
/* local APIC extras (lapic.c, tsc.c) */
uint32_t svm_lapic_read(struct svm_cpu *c, uint32_t off);
int svm_lapic_write(struct svm_cpu *c, uint32_t off, uint32_t value);
void svm_lapic_local_irq(struct svm_vm *vm, int vcpuid, int pin, int extint_vec);
uint64_t svm_lapic_timer_poll(struct svm_cpu *c);
void svm_lapic_counts(struct svm_cpu *c, uint32_t *accepted256, uint32_t *timer_vector);
/* An accelerator that runs guest code itself (kvm) with this local APIC
 * (lapic.c): what arrived, consumed, as SVM_EV_* bits; vectors[0] = the
 * SIPI vector, vectors[1] = the interrupt accepted when can_intr (IRR ->
 * ISR, or ExtINT).  svm_lapic_wait blocks until an event or the timer
 * (1) or max_ns (0); svm_lapic_nudge wakes a waiter to re-read the timer. */
enum { SVM_EV_KICK = 1, SVM_EV_INIT = 2, SVM_EV_SIPI = 4, SVM_EV_WAIT_SIPI = 8, SVM_EV_NMI = 16,
       SVM_EV_INTR = 32, SVM_EV_PENDING = 64 };
int svm_lapic_next_event(struct svm_cpu *c, int can_intr, uint32_t *vectors);
int svm_lapic_wait(struct svm_cpu *c, int64_t max_ns);
void svm_lapic_nudge(struct svm_cpu *c);
uint64_t svm_host_tsc(void);
uint64_t svm_tsc_hz(struct svm_vm *vm);

#endif
