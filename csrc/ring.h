/*
 * ring.h - the shared-memory ring of one connection: layout, producer put/publish, consumer peek/release,
 * and validation of everything read from the peer's half.
 *
 * One memfd holds three regions, each page aligned:
 *
 *   offset 0             header page: struct pipc_ring_header (below)
 *   slots_offset         descriptor ring: `slots` x struct pipc_desc (32 bytes), indexed by sequence & mask
 *   payload_offset       payload region: `payload_bytes` (a power of two), bytes of packets back to back;
 *                        mapped twice in a row so any run of <= payload_bytes bytes is contiguous in memory,
 *                        across the wrap. A received batch's payloads are therefore one contiguous blob.
 *
 * Positions are monotonically increasing 64-bit counters (slot sequence numbers and payload byte
 * positions); the index is position & (size - 1). Producer: writes payload bytes at its payload position,
 * then the descriptors, then publishes write_slot with a release store. Consumer: acquire-loads write_slot,
 * copies and validates each descriptor, and returns space by publishing read_payload then read_slot.
 * Shared memory holds positions and offsets, never pointers.
 */
#ifndef PIPC_RING_H
#define PIPC_RING_H

#include <stddef.h>
#include <stdint.h>

#include "packet_ipc.h"

#define PIPC_CACHE_LINE 64
#define PIPC_PAGE_BYTES 4096
#define PIPC_RING_MAGIC 0x474e495243504950ULL /* "PIPCRING" little endian */
#define PIPC_WIRE_VERSION 1
#define PIPC_MIN_PAYLOAD_BYTES 4096ULL
#define PIPC_MAX_PAYLOAD_BYTES (1ULL << 34) /* 16 GiB */
#define PIPC_MIN_SLOTS 16ULL
#define PIPC_MAX_SLOTS (1ULL << 26)

/* state word, written by the producer */
#define PIPC_STATE_OPEN 0
#define PIPC_STATE_END 1     /* end of stream: no more packets after write_slot */
#define PIPC_STATE_ABORTED 2 /* producer closed without end of stream */

/*
 * Header page. Byte layout:
 *   0  magic u64 | 8 wire_version u32 | 12 header_bytes u32 | 16 slots u64 | 24 slots_offset u64
 *   32 payload_bytes u64 | 40 payload_offset u64 | 48 linktype u32 | 52 snaplen u32 | 56 desc_bytes u32 | 60 -
 *   64  producer line: write_slot u64 | dropped_packets u64 | dropped_bytes u64 | state u32 | producer_waiting u32
 *   128 consumer line: read_slot u64 | read_payload u64 | consumer_waiting u32
 * Line 0 is written once by the server before the fd is passed; the client copies it and never re-reads it.
 */
struct pipc_ring_header {
    uint64_t magic;
    uint32_t wire_version;
    uint32_t header_bytes;
    uint64_t slots;
    uint64_t slots_offset;
    uint64_t payload_bytes;
    uint64_t payload_offset;
    uint32_t linktype;
    uint32_t snaplen;
    uint32_t desc_bytes;
    uint32_t reserved0;

    /* producer's cache line: written by the server only */
    uint64_t write_slot;
    uint64_t dropped_packets;
    uint64_t dropped_bytes;
    uint32_t state;
    uint32_t producer_waiting;
    uint8_t pad1[PIPC_CACHE_LINE - 32];

    /* consumer's cache line: written by the client only */
    uint64_t read_slot;
    uint64_t read_payload;
    uint32_t consumer_waiting;
    uint8_t pad2[PIPC_CACHE_LINE - 20];
};

/* One descriptor: 0 ts_ns u64 | 8 payload_pos u64 | 16 caplen u32 | 20 origlen u32 | 24 ifindex u32 |
 * 28 linktype u16 | 30 flags u16 (must be 0) */
struct pipc_desc {
    uint64_t ts_ns;
    uint64_t payload_pos;
    uint32_t caplen;
    uint32_t origlen;
    uint32_t ifindex;
    uint16_t linktype;
    uint16_t flags;
};

/* Process-local view of a ring (either side). */
struct pipc_ring {
    uint8_t *map;               /* reservation: header + slots + payload + payload mirror */
    size_t map_bytes;
    size_t file_bytes;
    struct pipc_ring_header *hdr;
    struct pipc_desc *slots;
    uint8_t *payload;           /* payload_bytes, then the same bytes again */
    uint64_t slot_count, payload_bytes;
    uint32_t linktype, snaplen;

    /* producer side */
    uint64_t p_write_slot, p_write_payload;       /* next position to write (local until published) */
    uint64_t p_read_slot, p_read_payload;         /* last seen consumer positions (cached) */

    /* consumer side */
    uint64_t c_next_slot, c_next_payload;         /* next descriptor to take, and its expected payload_pos */
    uint64_t c_released_slot, c_released_payload; /* what we published */
    uint64_t c_write_slot;                        /* last seen producer position (cached) */
    uint8_t *c_released;                          /* [slot_count]: taken and released, not yet published */
    uint64_t *c_payload_end;                      /* [slot_count]: payload end of each taken slot */
};

/*
 * "At most half the ring", the one rule that keeps a producer and a consumer from waiting on each other: one
 * take holds at most half the slots and half the payload bytes, and no packet is larger than half the payload
 * bytes. A consumer that still holds its previous batch while it asks for the next (Python's
 * `while (p := receive()) is not None` does) therefore always leaves the producer room for the next packet.
 * Every place that applies the rule calls these two.
 */
static inline uint64_t pipc_ring_half(uint64_t size) { return size / 2; }
/* Largest caplen a sender may put in a ring of payload_bytes when its snaplen is snaplen. */
static inline uint64_t pipc_ring_max_packet_bytes(uint64_t payload_bytes, uint32_t snaplen)
{
    uint64_t half = pipc_ring_half(payload_bytes);
    return half < snaplen ? half : snaplen;
}
/* Checks packets before any is sent to a ring of payload_bytes with this snaplen: 16-bit linktypes (or
 * PIPC_LINKTYPE_DEFAULT) and caplen <= pipc_ring_max_packet_bytes. 0, or -EINVAL / -EMSGSIZE with
 * pipc_last_error() naming the packet. */
int pipc_ring_check_packets(const struct pipc_packet *packets, size_t n, uint64_t payload_bytes, uint32_t snaplen);

/* Sizes: rounds payload_bytes/slots up to powers of two within limits; computes the file size. */
int pipc_ring_geometry(uint64_t *payload_bytes, uint64_t *slots, size_t *file_bytes);
/* Server: creates a sealed memfd with a fresh, pre-faulted ring; *fd_out receives the memfd. */
int pipc_ring_create(struct pipc_ring *ring, int *fd_out, uint64_t payload_bytes, uint64_t slots, uint32_t linktype,
                     uint32_t snaplen);
/* Client: validates and maps a ring received from a server (the fd stays owned by the caller). */
int pipc_ring_attach(struct pipc_ring *ring, int fd);
void pipc_ring_destroy(struct pipc_ring *ring);

/* Producer. Free space as of the consumer's last published positions; -EPROTO if those are impossible. */
int pipc_ring_space(struct pipc_ring *ring, uint64_t *free_slots, uint64_t *free_bytes);
/* Writes packets [0, n) into the ring (space must have been checked); not visible until published. */
void pipc_ring_put(struct pipc_ring *ring, const struct pipc_packet *packets, size_t n, uint32_t default_linktype);
/* Zero-copy producer: where the next packet's bytes go. Any run of up to half the ring from here is contiguous
 * (the mirror), and is not the consumer's until published. */
static inline uint8_t *pipc_ring_write_ptr(const struct pipc_ring *ring)
{
    return ring->payload + (ring->p_write_payload & (ring->payload_bytes - 1));
}
/* Writes the descriptors of n packets whose bytes already lie back to back at pipc_ring_write_ptr, from
 * columns (origlen 0 meaning caplen; origlen, ifindex and linktype may be NULL: caplen, 0, the default); not
 * visible until published. The caller checked space and sizes. */
void pipc_ring_put_columns(struct pipc_ring *ring, size_t n, const uint64_t *ts_ns, const uint32_t *caplen,
                           const uint32_t *origlen, const uint32_t *ifindex, const uint32_t *linktype,
                           uint32_t default_linktype);
/* Publishes what was put; returns 1 if the consumer asked to be woken. */
int pipc_ring_publish(struct pipc_ring *ring);
/* Sets the state word (end of stream, aborted); returns 1 if the consumer asked to be woken. */
int pipc_ring_set_state(struct pipc_ring *ring, uint32_t state);
void pipc_ring_count_drop(struct pipc_ring *ring, uint64_t packets, uint64_t bytes);
/* Producer's Dekker half: arm the waiting flag, then re-check space. 1: sleep; 0: space appeared. */
int pipc_ring_producer_arm(struct pipc_ring *ring, uint64_t need_slots, uint64_t need_bytes);
void pipc_ring_producer_disarm(struct pipc_ring *ring);

/* The shared words either side may read for its statistics, from any thread (a send or receive may be
 * running): positions and drop counters, each read once. */
struct pipc_ring_counters {
    uint64_t write_slot, read_slot, read_payload, dropped_packets, dropped_bytes;
};
void pipc_ring_counters(const struct pipc_ring *ring, struct pipc_ring_counters *out);

/* Consumer. Number of descriptors published and not yet taken (validated), or -EPROTO. */
long pipc_ring_available(struct pipc_ring *ring);
/* Takes up to max packets (validated; data points into the ring); returns n >= 0 or -EPROTO. */
long pipc_ring_take(struct pipc_ring *ring, struct pipc_packet *out, size_t max);
/* pipc_ring_take into columns (cols->ts_ns and cols->caplen set; the other columns may be NULL); sets data,
 * first_id and nbytes. */
long pipc_ring_take_columns(struct pipc_ring *ring, struct pipc_received_columns *cols, size_t max);
/* Marks packets with ids in [first, first + n) released (all must be taken and unreleased). */
int pipc_ring_release_range(struct pipc_ring *ring, uint64_t first, uint64_t n);
int pipc_ring_release_one(struct pipc_ring *ring, uint64_t id);
/* Publishes released space; returns 1 if the producer asked to be woken. */
int pipc_ring_publish_release(struct pipc_ring *ring);
/* Producer's state word, validated (-EPROTO if impossible). */
int pipc_ring_state(struct pipc_ring *ring);
/* Consumer's Dekker half: 1 if the caller may sleep (nothing to take, stream open), 0 otherwise. */
int pipc_ring_consumer_arm(struct pipc_ring *ring);
void pipc_ring_consumer_disarm(struct pipc_ring *ring);

#endif /* PIPC_RING_H */
