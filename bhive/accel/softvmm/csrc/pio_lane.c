/*
 * Port I/O that never leaves the vCPU process: the exit path's fast lane.
 *
 * A Linux boot writes ~24,000 console bytes to the UART, each paced by an
 * LSR read.  As exits, each byte costs a trip through Python and, for the
 * read, a round trip to the UART actor.  The lane does the same thing the
 * Python exit path would, in C:
 *
 *   OUT  to a lane port: the PioRequest record goes straight into the
 *        actor's shared-memory channel (bhive/bus/channel.py layout, the
 *        same msgpack message the Python client writes) and the actor's
 *        eventfd doorbell rings.  Posted, exactly as DeviceType.posted_writes
 *        makes the Python path do it; durable and applied exactly once.
 *   IN   from the mirrored port: answered from the register mirror the
 *        actor publishes in the channel header after every commit, but
 *        only while the mirror is valid (the actor says the read has no
 *        side effect and depends on nothing else) and every posted write
 *        that could change it, from any vCPU, has been applied: each vCPU
 *        maps every vCPU's channel to this actor to check that.
 *
 * Records carry the stamp the actor merges channels by (CLOCK_MONOTONIC,
 * as Python's time.monotonic_ns()), so accesses the guest ordered across
 * vCPUs reach the device in that order.
 *
 * Anything else (a full ring, an invalid mirror, a replayed instruction)
 * falls back to an ordinary exit, so the lane is never required.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "mem.h"

/* bhive/bus/channel.py: header words (u64) and slot layout */
#define CH_HEADER 256
#define CH_SLOT 64
#define CH_STAMP (CH_SLOT - 8)
#define CH_PUBLISHED 0
#define CH_NONNEUTRAL 1    /* producer: records below this index may change the mirror */
#define CH_CONSUMED 8
#define CH_MIRROR 9        /* actor: bit 63 = valid, low 32 bits = the mirrored register */
#define MIRROR_VALID (1ULL << 63)

#define LANE_PEERS_MAX 64

struct pio_lane {
    uint8_t *ring;               /* this vCPU's channel */
    uint8_t *peers[LANE_PEERS_MAX];   /* every vCPU's channel to the actor, this one included */
    uint32_t npeers;
    uint32_t capacity;
    int doorbell_fd;
    uint16_t base;
    int8_t mirror_offset;        /* port offset read from the mirror, -1: none */
    uint32_t neutral_writes;     /* bit n: a write to base+n leaves the mirror valid */
    uint8_t prefix[40];          /* msgpack: fixarray(8), TYPE, VERSION, source */
    uint32_t prefix_len;
};

static uint8_t *mp_uint(uint8_t *p, uint64_t v)
{
    if (v < 0x80) { *p++ = (uint8_t)v; return p; }
    if (v <= 0xff) { *p++ = 0xcc; *p++ = (uint8_t)v; return p; }
    if (v <= 0xffff) { *p++ = 0xcd; *p++ = (uint8_t)(v >> 8); *p++ = (uint8_t)v; return p; }
    if (v <= 0xffffffffULL) {
        *p++ = 0xce;
        for (int s = 24; s >= 0; s -= 8) *p++ = (uint8_t)(v >> s);
        return p;
    }
    *p++ = 0xcf;
    for (int s = 56; s >= 0; s -= 8) *p++ = (uint8_t)(v >> s);
    return p;
}

int svm_pio_lane(svm_cpu_t *c, uint16_t base, uint16_t count, void *ring, void **peers, uint32_t npeers,
                 uint32_t capacity, int doorbell_fd, const uint8_t *prefix, uint32_t prefix_len,
                 int mirror_offset, uint32_t neutral_writes)
{
    if (prefix_len > sizeof(((struct pio_lane *)0)->prefix) || c->nlanes >= PIO_LANES_MAX || !count ||
        npeers > LANE_PEERS_MAX)
        return -1;
    if (!c->port_lane) {
        c->port_lane = calloc(0x10000, 1);
        if (!c->port_lane) return -1;
    }
    struct pio_lane *l = calloc(1, sizeof(*l));
    if (!l) return -1;
    l->ring = ring; l->capacity = capacity;
    for (uint32_t k = 0; k < npeers; k++) l->peers[k] = peers[k];
    l->npeers = npeers; l->doorbell_fd = doorbell_fd; l->base = base;
    l->mirror_offset = (int8_t)mirror_offset; l->neutral_writes = neutral_writes;
    memcpy(l->prefix, prefix, prefix_len); l->prefix_len = prefix_len;
    c->lanes[c->nlanes++] = l;
    for (uint32_t p = base; p < (uint32_t)base + count && p < 0x10000; p++) c->port_lane[p] = (uint8_t)c->nlanes;
    return 0;
}

void pio_lanes_free(cpu_t *c)
{
    for (int k = 0; k < c->nlanes; k++) free(c->lanes[k]);
    free(c->port_lane);
    c->nlanes = 0; c->port_lane = NULL;
}

static int lane_post(struct pio_lane *l, uint16_t port, int size, uint64_t data)
{
    volatile uint64_t *w = (volatile uint64_t *)l->ring;
    uint64_t index = w[CH_PUBLISHED];
    if (index - __atomic_load_n(&w[CH_CONSUMED], __ATOMIC_ACQUIRE) >= l->capacity) return 0;
    uint8_t *slot = l->ring + CH_HEADER + (index % l->capacity) * CH_SLOT;
    uint8_t *p = slot + 2;
    memcpy(p, l->prefix, l->prefix_len); p += l->prefix_len;
    p = mp_uint(p, index + 1);           /* req_id: ring position + 1, as ChannelClient.post */
    p = mp_uint(p, port);
    p = mp_uint(p, (uint64_t)size);
    *p++ = 0xc3;                          /* is_write: true */
    p = mp_uint(p, data);
    uint16_t len = (uint16_t)(p - slot - 2);
    memcpy(slot, &len, 2);
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t stamp = (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
    memcpy(slot + CH_STAMP, &stamp, 8);
    if (!((l->neutral_writes >> (port - l->base)) & 1)) w[CH_NONNEUTRAL] = index + 1;
    __atomic_store_n(&w[CH_PUBLISHED], index + 1, __ATOMIC_RELEASE);
    uint64_t one = 1;
    if (write(l->doorbell_fd, &one, sizeof one) < 0) { /* saturated: the actor is awake anyway */ }
    return 1;
}

static int lane_mirror(struct pio_lane *l, uint64_t *val)
{
    /* CONSUMED before MIRROR: the actor stores them in the other order */
    for (uint32_t k = 0; k < l->npeers; k++) {
        volatile uint64_t *pw = (volatile uint64_t *)l->peers[k];
        uint64_t consumed = __atomic_load_n(&pw[CH_CONSUMED], __ATOMIC_ACQUIRE);
        if (pw[CH_NONNEUTRAL] > consumed) return 0;
    }
    volatile uint64_t *w = (volatile uint64_t *)l->ring;
    uint64_t m = __atomic_load_n(&w[CH_MIRROR], __ATOMIC_ACQUIRE);
    if (!(m & MIRROR_VALID)) return 0;
    *val = (uint32_t)m;
    return 1;
}

int pio_lane_try(cpu_t *c, uint16_t port, int size, int is_write, uint64_t *val)
{
    if (c->io_pos < c->io_n) return 0;   /* replaying an exit: the log has the answer */
    struct pio_lane *l = c->lanes[c->port_lane[port] - 1];
    if (is_write) return lane_post(l, port, size, *val & szmask(size));
    if (size == 1 && l->mirror_offset >= 0 && port == l->base + l->mirror_offset) return lane_mirror(l, val);
    return 0;
}
