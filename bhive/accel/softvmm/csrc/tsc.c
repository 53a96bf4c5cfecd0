/*
 * The one clock of the VM.  Guest RDTSC is the host TSC (+ the per-vCPU
 * IA32_TIME_STAMP_COUNTER offset, 0 unless the guest writes it), which is
 * invariant and synchronised across host CPUs, so every vCPU process, device
 * actor and test reading svm_host_tsc() sees the same clock.  Its frequency
 * is calibrated once against CLOCK_MONOTONIC_RAW by the first process that
 * opens the VM and kept in the platform shm header, so every process
 * converts LAPIC timer counts to TSC ticks with the same factor.
 */
#include <time.h>
#include <x86intrin.h>
#include "cpu.h"

uint64_t tsc_calibrate(void)
{
    static uint64_t cached;
    if (cached) return cached;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC_RAW, &a);
    uint64_t t0 = __rdtsc();
    int64_t ns;
    do {
        clock_gettime(CLOCK_MONOTONIC_RAW, &b);
        ns = (b.tv_sec - a.tv_sec) * 1000000000LL + (b.tv_nsec - a.tv_nsec);
    } while (ns < 10000000);    /* 10 ms: ~1e-4 relative error */
    uint64_t t1 = __rdtsc();
    uint64_t hz = (uint64_t)((unsigned __int128)(t1 - t0) * 1000000000u / (uint64_t)ns);
    if (hz < 1000000) hz = 1000000;
    cached = hz;
    return hz;
}

uint64_t host_tsc_hz(svm_vm_t *vm)
{
    shm_hdr_t *h = (shm_hdr_t *)vm->shm;
    uint64_t hz = __atomic_load_n(&h->tsc_hz, __ATOMIC_RELAXED);
    if (unlikely(!hz)) {
        hz = tsc_calibrate();
        uint64_t zero = 0;
        if (!__atomic_compare_exchange_n(&h->tsc_hz, &zero, hz, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
            hz = zero;
    }
    return hz;
}

/* public: the clock the guest's RDTSC reads (with a zero TSC offset) */
uint64_t svm_host_tsc(void) { return __rdtsc(); }
uint64_t svm_tsc_hz(struct svm_vm *vm) { return host_tsc_hz(vm); }
