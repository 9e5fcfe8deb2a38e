/*
 * ring.c - the SPSC ring shared by a server (producer) and one client (consumer). See ring.h for the layout.
 * Synchronisation pairs are tagged SYNC:<name> at both ends.
 */
#define _GNU_SOURCE
#include "ring.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "atomics.h"
#include "handshake.h" /* pipc_set_error */

/* Every shared field pinned to the offset ring.h's byte-layout comment and docs/wire-format.md give it
 * (tests/test_wire_layout.py checks that the document and these lines agree). */
static_assert(sizeof(struct pipc_ring_header) == 3 * PIPC_CACHE_LINE, "header is three cache lines");
static_assert(offsetof(struct pipc_ring_header, magic) == 0, "layout");
static_assert(offsetof(struct pipc_ring_header, wire_version) == 8, "layout");
static_assert(offsetof(struct pipc_ring_header, header_bytes) == 12, "layout");
static_assert(offsetof(struct pipc_ring_header, slots) == 16, "layout");
static_assert(offsetof(struct pipc_ring_header, slots_offset) == 24, "layout");
static_assert(offsetof(struct pipc_ring_header, payload_bytes) == 32, "layout");
static_assert(offsetof(struct pipc_ring_header, payload_offset) == 40, "layout");
static_assert(offsetof(struct pipc_ring_header, linktype) == 48, "layout");
static_assert(offsetof(struct pipc_ring_header, snaplen) == 52, "layout");
static_assert(offsetof(struct pipc_ring_header, desc_bytes) == 56, "layout");
static_assert(offsetof(struct pipc_ring_header, reserved0) == 60, "layout");
static_assert(offsetof(struct pipc_ring_header, write_slot) == 64, "producer line");
static_assert(offsetof(struct pipc_ring_header, dropped_packets) == 72, "layout");
static_assert(offsetof(struct pipc_ring_header, dropped_bytes) == 80, "layout");
static_assert(offsetof(struct pipc_ring_header, state) == 88, "layout");
static_assert(offsetof(struct pipc_ring_header, producer_waiting) == 92, "layout");
static_assert(offsetof(struct pipc_ring_header, read_slot) == 128, "consumer line");
static_assert(offsetof(struct pipc_ring_header, read_payload) == 136, "layout");
static_assert(offsetof(struct pipc_ring_header, consumer_waiting) == 144, "layout");
static_assert(sizeof(struct pipc_desc) == 32, "descriptor is 32 bytes");
static_assert(offsetof(struct pipc_desc, ts_ns) == 0, "layout");
static_assert(offsetof(struct pipc_desc, payload_pos) == 8, "layout");
static_assert(offsetof(struct pipc_desc, caplen) == 16, "layout");
static_assert(offsetof(struct pipc_desc, origlen) == 20, "layout");
static_assert(offsetof(struct pipc_desc, ifindex) == 24, "layout");
static_assert(offsetof(struct pipc_desc, linktype) == 28, "layout");
static_assert(offsetof(struct pipc_desc, flags) == 30, "layout");

static uint64_t round_pow2(uint64_t v)
{
    uint64_t p = 1;
    while (p < v)
        p <<= 1;
    return p;
}

static size_t page_round(size_t v) { return (v + PIPC_PAGE_BYTES - 1) & ~(size_t)(PIPC_PAGE_BYTES - 1); }

int pipc_ring_geometry(uint64_t *payload_bytes, uint64_t *slots, size_t *file_bytes)
{
    uint64_t pb = *payload_bytes ? *payload_bytes : PIPC_DEFAULT_CAPACITY_BYTES;
    if (pb > PIPC_MAX_PAYLOAD_BYTES)
        return -EINVAL;
    pb = round_pow2(pb < PIPC_MIN_PAYLOAD_BYTES ? PIPC_MIN_PAYLOAD_BYTES : pb);
    uint64_t s = *slots ? *slots : pb / 128;
    if (s > PIPC_MAX_SLOTS)
        return -EINVAL;
    s = round_pow2(s < PIPC_MIN_SLOTS ? PIPC_MIN_SLOTS : s);
    *payload_bytes = pb;
    *slots = s;
    *file_bytes = PIPC_PAGE_BYTES + page_round(s * sizeof(struct pipc_desc)) + pb;
    return 0;
}

/* Maps the file: header and slots once, payload twice back to back (the mirror makes wrapped runs
 * contiguous). */
static int ring_map(struct pipc_ring *ring, int fd, size_t file_bytes, uint64_t payload_offset, uint64_t payload_bytes)
{
    size_t total = file_bytes + payload_bytes;
    uint8_t *base = mmap(NULL, total, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED)
        return -errno;
    if (mmap(base, file_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED | MAP_POPULATE, fd, 0) == MAP_FAILED ||
        mmap(base + file_bytes, payload_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED | MAP_POPULATE, fd,
             (off_t)payload_offset) == MAP_FAILED) {
        int err = -errno;
        munmap(base, total);
        return err;
    }
    ring->map = base;
    ring->map_bytes = total;
    ring->file_bytes = file_bytes;
    ring->hdr = (struct pipc_ring_header *)base;
    return 0;
}

static void ring_set_view(struct pipc_ring *ring, uint64_t slots, uint64_t slots_offset, uint64_t payload_bytes,
                          uint64_t payload_offset, uint32_t linktype, uint32_t snaplen)
{
    ring->slots = (struct pipc_desc *)(ring->map + slots_offset);
    ring->payload = ring->map + payload_offset;
    ring->slot_count = slots;
    ring->payload_bytes = payload_bytes;
    ring->linktype = linktype;
    ring->snaplen = snaplen;
}

int pipc_ring_create(struct pipc_ring *ring, int *fd_out, uint64_t payload_bytes, uint64_t slots, uint32_t linktype,
                     uint32_t snaplen)
{
    size_t file_bytes;
    int err = pipc_ring_geometry(&payload_bytes, &slots, &file_bytes);
    if (err)
        return err;
    memset(ring, 0, sizeof(*ring));
    int fd = memfd_create("packet-ipc-ring", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0)
        return -errno;
    /* Sealing the size stops either side from shrinking the file under the other's mapping (SIGBUS). */
    if (ftruncate(fd, (off_t)file_bytes) < 0 ||
        fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0) {
        err = -errno;
        close(fd);
        return err;
    }
    uint64_t payload_offset = file_bytes - payload_bytes;
    err = ring_map(ring, fd, file_bytes, payload_offset, payload_bytes);
    if (err) {
        close(fd);
        return err;
    }
    /* MAP_POPULATE pre-faulted the pages: writes to fresh pages are several times slower than to touched ones. */
    struct pipc_ring_header *h = ring->hdr;
    h->wire_version = PIPC_WIRE_VERSION;
    h->header_bytes = sizeof(*h);
    h->slots = slots;
    h->slots_offset = PIPC_PAGE_BYTES;
    h->payload_bytes = payload_bytes;
    h->payload_offset = payload_offset;
    h->linktype = linktype;
    h->snaplen = snaplen;
    h->desc_bytes = sizeof(struct pipc_desc);
    /* SYNC:magic - release: the layout above is complete before the magic appears (the peer maps only after
     * receiving the fd, but the store keeps the header self-describing for any reader). */
    pipc_store_release64(&h->magic, PIPC_RING_MAGIC);
    ring_set_view(ring, slots, PIPC_PAGE_BYTES, payload_bytes, payload_offset, linktype, snaplen);
    *fd_out = fd;
    return 0;
}

int pipc_ring_attach(struct pipc_ring *ring, int fd)
{
    memset(ring, 0, sizeof(*ring));
    struct stat st;
    if (fstat(fd, &st) < 0)
        return -errno;
    /* Without these seals the peer could shrink the file and turn our reads into SIGBUS. */
    int seals = fcntl(fd, F_GET_SEALS);
    if (seals < 0 || !(seals & F_SEAL_SHRINK))
        return -EPROTO;
    if (st.st_size < (off_t)PIPC_PAGE_BYTES)
        return -EPROTO;
    struct pipc_ring_header h;
    if (pread(fd, &h, sizeof(h), 0) != (ssize_t)sizeof(h))
        return -EPROTO;
    /* SYNC:magic (acquire side is the fd passing itself: the header was complete before sendmsg). */
    if (h.magic != PIPC_RING_MAGIC || h.desc_bytes != sizeof(struct pipc_desc) || h.header_bytes != sizeof(h))
        return -EPROTO;
    if (h.wire_version != PIPC_WIRE_VERSION)
        return -EPROTO;
    /* Each check stops a hostile geometry: non-power-of-two sizes (index masks would be wrong), sizes beyond
     * our limits, regions overlapping each other or extending past the sealed file. */
    uint64_t pb = h.payload_bytes, s = h.slots;
    if (pb < PIPC_MIN_PAYLOAD_BYTES || pb > PIPC_MAX_PAYLOAD_BYTES || (pb & (pb - 1)) || s < PIPC_MIN_SLOTS ||
        s > PIPC_MAX_SLOTS || (s & (s - 1)))
        return -EPROTO;
    if (h.slots_offset != PIPC_PAGE_BYTES || h.payload_offset != PIPC_PAGE_BYTES + page_round(s * sizeof(struct pipc_desc)) ||
        (uint64_t)st.st_size != h.payload_offset + pb)
        return -EPROTO;
    int err = ring_map(ring, fd, (size_t)st.st_size, h.payload_offset, pb);
    if (err)
        return err;
    ring_set_view(ring, s, h.slots_offset, pb, h.payload_offset, h.linktype, h.snaplen);
    ring->c_released = calloc(s, 1);
    ring->c_payload_end = calloc(s, sizeof(uint64_t));
    if (!ring->c_released || !ring->c_payload_end) {
        pipc_ring_destroy(ring);
        return -ENOMEM;
    }
    /* A fresh ring starts at zero; a client never joins a ring that was already used. SYNC:release - acquire,
     * as in pipc_ring_space: pairs with the release stores of pipc_ring_publish_release (a previous client's). */
    if (pipc_load_acquire64(&ring->hdr->read_slot) != 0 || pipc_load_acquire64(&ring->hdr->read_payload) != 0) {
        pipc_ring_destroy(ring);
        return -EPROTO;
    }
    return 0;
}

void pipc_ring_destroy(struct pipc_ring *ring)
{
    if (ring->map)
        munmap(ring->map, ring->map_bytes);
    free(ring->c_released);
    free(ring->c_payload_end);
    memset(ring, 0, sizeof(*ring));
}

/* ---------------- producer ---------------- */

int pipc_ring_space(struct pipc_ring *ring, uint64_t *free_slots, uint64_t *free_bytes)
{
    /* SYNC:release - acquire: the consumer finished reading these slots and bytes before publishing them. */
    uint64_t rs = pipc_load_acquire64(&ring->hdr->read_slot);
    uint64_t rp = pipc_load_acquire64(&ring->hdr->read_payload);
    /* A consumer position that moves backwards or past what we wrote would make us overwrite unread data
     * or compute a huge free space: stop it. */
    if (rs < ring->p_read_slot || rs > ring->p_write_slot || rp < ring->p_read_payload || rp > ring->p_write_payload)
        return -EPROTO;
    ring->p_read_slot = rs;
    ring->p_read_payload = rp;
    *free_slots = ring->slot_count - (ring->p_write_slot - rs);
    *free_bytes = ring->payload_bytes - (ring->p_write_payload - rp);
    return 0;
}

/* Copies n bytes; up to 64 without a call (two overlapping fixed-size moves, reading only [src, src + n)): the
 * libc call and its size dispatch cost as much as the copy of a small packet. */
static inline void copy_bytes(uint8_t *restrict dst, const uint8_t *restrict src, size_t n)
{
    typedef struct { uint64_t a, b; } b16;
    if (n > 64) {
        memcpy(dst, src, n);
    } else if (n > 32) {
        b16 x0, x1, y0, y1;
        memcpy(&x0, src, 16), memcpy(&x1, src + 16, 16), memcpy(&y0, src + n - 32, 16), memcpy(&y1, src + n - 16, 16);
        memcpy(dst, &x0, 16), memcpy(dst + 16, &x1, 16), memcpy(dst + n - 32, &y0, 16), memcpy(dst + n - 16, &y1, 16);
    } else if (n >= 16) {
        b16 x, y;
        memcpy(&x, src, 16), memcpy(&y, src + n - 16, 16);
        memcpy(dst, &x, 16), memcpy(dst + n - 16, &y, 16);
    } else if (n >= 8) {
        uint64_t x, y;
        memcpy(&x, src, 8), memcpy(&y, src + n - 8, 8);
        memcpy(dst, &x, 8), memcpy(dst + n - 8, &y, 8);
    } else {
        for (size_t k = 0; k < n; k++)
            dst[k] = src[k];
    }
}

void pipc_ring_put(struct pipc_ring *ring, const struct pipc_packet *packets, size_t n, uint32_t default_linktype)
{
    uint64_t mask = ring->payload_bytes - 1, smask = ring->slot_count - 1;
    uint64_t pos = ring->p_write_payload, seq = ring->p_write_slot;
    /* Descriptors first, in one plain loop per part of the slot ring before and after its wrap. */
    uint64_t p = pos;
    for (size_t i = 0; i < n;) {
        size_t first = (size_t)(seq & smask), run = n - i;
        if (run > ring->slot_count - first)
            run = (size_t)(ring->slot_count - first);
        struct pipc_desc *restrict d = ring->slots + first;
        const struct pipc_packet *restrict pk = packets + i;
        for (size_t k = 0; k < run; k++) {
            uint32_t len = pk[k].caplen, lt = pk[k].linktype;
            d[k].ts_ns = pk[k].ts_ns;
            d[k].payload_pos = p;
            d[k].caplen = len;
            d[k].origlen = pk[k].origlen;
            d[k].ifindex = pk[k].ifindex;
            d[k].linktype = (uint16_t)(lt == PIPC_LINKTYPE_DEFAULT ? default_linktype : lt);
            d[k].flags = 0;
            p += len;
        }
        i += run;
        seq += run;
    }
    /* Then the bytes: runs of packets adjacent in our memory (a columnar batch) with one copy; the mirror
     * mapping makes the destination contiguous across the wrap. */
    for (size_t i = 0; i < n;) {
        const uint8_t *src = packets[i].data;
        size_t run = packets[i].caplen, j = i + 1;
        while (j < n && packets[j].data == src + run)
            run += packets[j++].caplen;
        if (run)
            copy_bytes(ring->payload + (pos & mask), src, run);
        pos += run;
        i = j;
    }
    ring->p_write_payload = pos;
    ring->p_write_slot = seq;
}

void pipc_ring_put_columns(struct pipc_ring *ring, size_t n, const uint64_t *restrict ts_ns,
                           const uint32_t *restrict caplen, const uint32_t *restrict origlen,
                           const uint32_t *restrict ifindex, const uint32_t *restrict linktype,
                           uint32_t default_linktype)
{
    uint64_t smask = ring->slot_count - 1, pos = ring->p_write_payload, seq = ring->p_write_slot;
    /* Split at the slot ring's wrap so each part is a plain array loop (no masking inside it). */
    size_t i = 0;
    while (i < n) {
        size_t first = (size_t)(seq & smask), run = n - i;
        if (run > ring->slot_count - first)
            run = (size_t)(ring->slot_count - first);
        struct pipc_desc *restrict d = ring->slots + first;
        for (size_t k = 0; k < run; k++, i++) { /* the NULL tests are loop-invariant: predicted, not paid */
            uint32_t len = caplen[i], lt = linktype ? linktype[i] : PIPC_LINKTYPE_DEFAULT;
            uint32_t ol = origlen ? origlen[i] : 0;
            d[k].ts_ns = ts_ns[i];
            d[k].payload_pos = pos;
            d[k].caplen = len;
            d[k].origlen = ol ? ol : len;
            d[k].ifindex = ifindex ? ifindex[i] : 0;
            d[k].linktype = (uint16_t)(lt == PIPC_LINKTYPE_DEFAULT ? default_linktype : lt);
            d[k].flags = 0;
            pos += len;
        }
        seq += run;
    }
    ring->p_write_payload = pos;
    ring->p_write_slot = seq;
}

int pipc_ring_publish(struct pipc_ring *ring)
{
    /* SYNC:write_slot - release: descriptors and payload bytes written above are visible before the new
     * write_slot; pairs with the consumer's acquire load in pipc_ring_available. */
    pipc_store_release64(&ring->hdr->write_slot, ring->p_write_slot);
    /* SYNC:consumer_wait - full fence between our store of write_slot and our load of consumer_waiting;
     * pairs with the fence in pipc_ring_consumer_arm, so one side always sees the other. */
    pipc_fence_seq_cst();
    /* SYNC:consumer_wait - relaxed load after the fence; pairs with the store in pipc_ring_consumer_arm. */
    return pipc_load_relaxed32(&ring->hdr->consumer_waiting) != 0;
}

int pipc_ring_set_state(struct pipc_ring *ring, uint32_t state)
{
    /* SYNC:state - release: every publish before it is visible first; pairs with pipc_ring_state. */
    pipc_store_release32(&ring->hdr->state, state);
    pipc_fence_seq_cst(); /* SYNC:consumer_wait - as in pipc_ring_publish */
    /* SYNC:consumer_wait - relaxed load after the fence; pairs with the store in pipc_ring_consumer_arm. */
    return pipc_load_relaxed32(&ring->hdr->consumer_waiting) != 0;
}

void pipc_ring_count_drop(struct pipc_ring *ring, uint64_t packets, uint64_t bytes)
{
    /* SYNC:drops - relaxed: only the producer writes these, and the consumer reads them for display only
     * (pipc_ring_counters); no other memory is published through them. */
    pipc_store_relaxed64(&ring->hdr->dropped_packets, pipc_load_relaxed64(&ring->hdr->dropped_packets) + packets);
    pipc_store_relaxed64(&ring->hdr->dropped_bytes, pipc_load_relaxed64(&ring->hdr->dropped_bytes) + bytes);
}

int pipc_ring_producer_arm(struct pipc_ring *ring, uint64_t need_slots, uint64_t need_bytes)
{
    /* SYNC:producer_wait - relaxed store of the flag, ordered by the fence below; the consumer's relaxed load
     * in pipc_ring_publish_release comes after its own fence. */
    pipc_store_relaxed32(&ring->hdr->producer_waiting, 1);
    /* SYNC:producer_wait - full fence between our store of the flag and our re-check of the read positions;
     * pairs with the fence in pipc_ring_publish_release. */
    pipc_fence_seq_cst();
    uint64_t fs, fb;
    if (pipc_ring_space(ring, &fs, &fb) < 0)
        return 0; /* the caller's next pipc_ring_space reports the error */
    return fs < need_slots || fb < need_bytes;
}

void pipc_ring_producer_disarm(struct pipc_ring *ring)
{
    /* SYNC:producer_wait - relaxed: clearing the flag only saves the consumer a wake-up; a stale 1 it reads
     * costs one spurious eventfd write, never a lost one (the next arm sets it again, then fences). */
    pipc_store_relaxed32(&ring->hdr->producer_waiting, 0);
}

/* ---------------- either side ---------------- */

void pipc_ring_counters(const struct pipc_ring *ring, struct pipc_ring_counters *out)
{
    const struct pipc_ring_header *h = ring->hdr;
    /* SYNC:write_slot - acquire, as in pipc_ring_available (pairs with pipc_ring_publish). */
    out->write_slot = pipc_load_acquire64(&h->write_slot);
    /* SYNC:release - acquire, as in pipc_ring_space (pairs with pipc_ring_publish_release). */
    out->read_slot = pipc_load_acquire64(&h->read_slot);
    out->read_payload = pipc_load_acquire64(&h->read_payload);
    /* SYNC:drops - relaxed: display counters (pairs with pipc_ring_count_drop). */
    out->dropped_packets = pipc_load_relaxed64(&h->dropped_packets);
    out->dropped_bytes = pipc_load_relaxed64(&h->dropped_bytes);
}

int pipc_ring_check_packets(const struct pipc_packet *pk, size_t n, uint64_t payload_bytes, uint32_t snaplen)
{
    uint64_t limit = pipc_ring_max_packet_bytes(payload_bytes, snaplen);
    /* One branch-free pass (the common case: all good), then the first bad packet named if there is one. */
    uint32_t longest = 0, wide = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t len = pk[i].caplen, lt = pk[i].linktype;
        longest = len > longest ? len : longest;
        wide |= (lt > 0xffff) & (lt != PIPC_LINKTYPE_DEFAULT);
    }
    if (longest <= limit && !wide)
        return 0;
    for (size_t i = 0; i < n; i++) {
        if (pk[i].linktype > 0xffff && pk[i].linktype != PIPC_LINKTYPE_DEFAULT) { /* the descriptor holds 16
                                                                                 * bits, as pcapng's does */
            pipc_set_error("packet %zu has linktype %u; linktypes are 16-bit values", i, pk[i].linktype);
            return -EINVAL;
        }
        if (pk[i].caplen > limit) {
            pipc_set_error("packet %zu has %u bytes, more than the %s (%llu bytes)", i, pk[i].caplen,
                           limit < snaplen ? "ring holds (half its capacity)" : "snaplen", (unsigned long long)limit);
            return -EMSGSIZE;
        }
    }
    return 0;
}

/* ---------------- consumer ---------------- */

long pipc_ring_available(struct pipc_ring *ring)
{
    /* SYNC:write_slot - acquire: pairs with the release in pipc_ring_publish; descriptors and payload up to
     * write_slot are visible after it. */
    uint64_t ws = pipc_load_acquire64(&ring->hdr->write_slot);
    /* Stops a producer position that goes backwards or claims more slots than the ring holds. */
    if (ws < ring->c_next_slot || ws - ring->c_released_slot > ring->slot_count)
        return -EPROTO;
    ring->c_write_slot = ws;
    return (long)(ws - ring->c_next_slot);
}

long pipc_ring_take(struct pipc_ring *ring, struct pipc_packet *out, size_t max)
{
    long avail = pipc_ring_available(ring);
    if (avail <= 0)
        return avail;
    size_t n = (size_t)avail < max ? (size_t)avail : max;
    /* One take is at most half the ring, in slots and in bytes (see pipc_ring_half). */
    uint64_t max_slots = pipc_ring_half(ring->slot_count), max_bytes = pipc_ring_half(ring->payload_bytes);
    if (n > max_slots)
        n = (size_t)max_slots;
    uint64_t smask = ring->slot_count - 1, mask = ring->payload_bytes - 1;
    uint64_t seq = ring->c_next_slot, pos = ring->c_next_payload, start = pos;
    /* A packet must end within one ring's worth of bytes after what we released (stops reads of unwritten or
     * foreign areas; pos only ever grew by validated caplens, so pos + caplen cannot wrap), and after the
     * first packet within max_bytes of the batch's start. */
    uint64_t hard = ring->c_released_payload + ring->payload_bytes, soft = start + max_bytes;
    uint8_t *base = ring->payload + (start & mask);
    for (size_t i = 0; i < n; i++, seq++) {
        /* Copy first, then validate the copy: the producer may rewrite shared memory under us. */
        struct pipc_desc d;
        memcpy(&d, &ring->slots[seq & smask], sizeof(d));
        uint64_t end = pos + d.caplen;
        /* payload_pos must continue where the previous packet ended (stops pointing anywhere else); flags
         * are reserved. */
        if ((d.flags | (d.payload_pos ^ pos)) != 0 || end > hard)
            return -EPROTO;
        if (end > soft && i > 0) {
            n = i;
            break;
        }
        out[i].ts_ns = d.ts_ns;
        out[i].caplen = d.caplen;
        out[i].origlen = d.origlen;
        out[i].linktype = d.linktype;
        out[i].ifindex = d.ifindex;
        /* Relative to the batch's first byte in the mirrored mapping, not pos & mask: a batch that crosses
         * the wrap stays one contiguous region (start & mask plus at most one ring's worth stays inside the
         * double mapping). */
        out[i].data = base + (pos - start);
        out[i].id = seq;
        pos = end;
        /* c_released of this slot is 0 already: pipc_ring_publish_release clears each flag it passes */
        ring->c_payload_end[seq & smask] = pos;
    }
    ring->c_next_slot = seq;
    ring->c_next_payload = pos;
    return (long)n;
}

/* The loop of pipc_ring_take_columns; `every` (a constant where it is inlined) says all columns are set, so the
 * common case runs without the NULL tests. Returns packets taken, or -EPROTO. */
static inline __attribute__((always_inline)) long take_columns_loop(struct pipc_ring *ring,
                                                                    struct pipc_received_columns *cols, size_t n,
                                                                    const int every)
{
    uint64_t smask = ring->slot_count - 1;
    uint64_t seq = ring->c_next_slot, pos = ring->c_next_payload, start = pos;
    uint64_t hard = ring->c_released_payload + ring->payload_bytes, soft = start + pipc_ring_half(ring->payload_bytes);
    uint64_t *restrict ts = cols->ts_ns, *restrict offsets = cols->offsets;
    uint32_t *restrict caplen = cols->caplen, *restrict origlen = cols->origlen, *restrict ifindex = cols->ifindex,
                       *restrict linktype = cols->linktype;
    uint64_t *restrict payload_end = ring->c_payload_end;
    size_t i = 0;
    for (; i < n; i++, seq++) {
        struct pipc_desc d; /* copy first, then validate the copy (see pipc_ring_take) */
        memcpy(&d, &ring->slots[seq & smask], sizeof(d));
        uint64_t end = pos + d.caplen;
        if ((d.flags | (d.payload_pos ^ pos)) != 0 || end > hard)
            return -EPROTO;
        if (end > soft && i > 0)
            break;
        ts[i] = d.ts_ns;
        caplen[i] = d.caplen;
        if (every || offsets)
            offsets[i] = pos - start;
        if (every || origlen)
            origlen[i] = d.origlen;
        if (every || ifindex)
            ifindex[i] = d.ifindex;
        if (every || linktype)
            linktype[i] = d.linktype;
        pos = end;
        payload_end[seq & smask] = pos;
    }
    return (long)i;
}

long pipc_ring_take_columns(struct pipc_ring *ring, struct pipc_received_columns *cols, size_t max)
{
    long avail = pipc_ring_available(ring);
    if (avail <= 0)
        return avail;
    /* The limits and checks of pipc_ring_take, packet for packet; only the output differs. */
    size_t n = (size_t)avail < max ? (size_t)avail : max;
    uint64_t max_slots = pipc_ring_half(ring->slot_count);
    if (n > max_slots)
        n = (size_t)max_slots;
    long got = cols->offsets && cols->origlen && cols->ifindex && cols->linktype ? take_columns_loop(ring, cols, n, 1)
                                                                                 : take_columns_loop(ring, cols, n, 0);
    if (got < 0)
        return got;
    uint64_t start = ring->c_next_payload, end = got ? ring->c_payload_end[(ring->c_next_slot + got - 1) &
                                                                          (ring->slot_count - 1)]
                                                     : start;
    cols->data = ring->payload + (start & (ring->payload_bytes - 1));
    cols->first_id = ring->c_next_slot;
    cols->nbytes = end - start;
    ring->c_next_slot += (uint64_t)got;
    ring->c_next_payload = end;
    return got;
}

int pipc_ring_release_one(struct pipc_ring *ring, uint64_t id)
{
    /* Only ids taken and not yet published may be released; anything else is a caller bug, ignored. */
    if (id < ring->c_released_slot || id >= ring->c_next_slot)
        return -EINVAL;
    uint8_t *flag = &ring->c_released[id & (ring->slot_count - 1)];
    if (*flag)
        return -EINVAL;
    *flag = 1;
    return 0;
}

int pipc_ring_release_range(struct pipc_ring *ring, uint64_t first, uint64_t n)
{
    if (first < ring->c_released_slot || first + n > ring->c_next_slot || first + n < first)
        return -EINVAL;
    /* One memset per part of the flag array before and after its wrap. */
    uint64_t smask = ring->slot_count - 1;
    while (n) {
        uint64_t idx = first & smask, run = n < ring->slot_count - idx ? n : ring->slot_count - idx;
        memset(ring->c_released + idx, 1, (size_t)run);
        first += run;
        n -= run;
    }
    return 0;
}

int pipc_ring_publish_release(struct pipc_ring *ring)
{
    /* Advance over the released prefix, eight flags at a time, clearing them (one memset per stretch). */
    uint64_t smask = ring->slot_count - 1, s = ring->c_released_slot;
    while (s < ring->c_next_slot) {
        uint64_t idx = s & smask, left = ring->c_next_slot - s;
        size_t run = (size_t)(left < ring->slot_count - idx ? left : ring->slot_count - idx), k = 0;
        uint8_t *f = ring->c_released + idx;
        for (uint64_t w; k + 8 <= run && (memcpy(&w, f + k, 8), w == 0x0101010101010101ULL);)
            k += 8;
        while (k < run && f[k])
            k++;
        memset(f, 0, k);
        s += k;
        if (k < run)
            break;
    }
    if (s == ring->c_released_slot)
        return 0;
    ring->c_released_slot = s;
    ring->c_released_payload = ring->c_payload_end[(s - 1) & smask];
    /* SYNC:release - release stores: our reads of these bytes and slots are done; pairs with the producer's
     * acquire loads in pipc_ring_space. Payload first, so a producer never sees slots freed before bytes. */
    pipc_store_release64(&ring->hdr->read_payload, ring->c_released_payload);
    pipc_store_release64(&ring->hdr->read_slot, s);
    /* SYNC:producer_wait - full fence, pairs with pipc_ring_producer_arm. */
    pipc_fence_seq_cst();
    /* SYNC:producer_wait - relaxed load after the fence; pairs with the store in pipc_ring_producer_arm. */
    return pipc_load_relaxed32(&ring->hdr->producer_waiting) != 0;
}

int pipc_ring_state(struct pipc_ring *ring)
{
    /* SYNC:state - acquire: pairs with pipc_ring_set_state; write_slot read after it is final. */
    uint32_t st = pipc_load_acquire32(&ring->hdr->state);
    if (st > PIPC_STATE_ABORTED) /* stops an unknown state value */
        return -EPROTO;
    return (int)st;
}

int pipc_ring_consumer_arm(struct pipc_ring *ring)
{
    /* SYNC:consumer_wait - relaxed store of the flag, ordered by the fence below; the producer's relaxed load
     * in pipc_ring_publish and pipc_ring_set_state comes after its own fence. */
    pipc_store_relaxed32(&ring->hdr->consumer_waiting, 1);
    /* SYNC:consumer_wait - full fence between the flag store and the re-check; pairs with pipc_ring_publish
     * and pipc_ring_set_state. */
    pipc_fence_seq_cst();
    long avail = pipc_ring_available(ring);
    if (avail != 0)
        return 0;
    return pipc_ring_state(ring) == PIPC_STATE_OPEN;
}

void pipc_ring_consumer_disarm(struct pipc_ring *ring)
{
    /* SYNC:consumer_wait - relaxed: as in pipc_ring_producer_disarm, a stale 1 costs one spurious wake-up. */
    pipc_store_relaxed32(&ring->hdr->consumer_waiting, 0);
}
