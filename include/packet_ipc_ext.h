/*
 * packet_ipc_ext.h - the tools beside the transport, installed with packet_ipc.h: the symmetric flow hash that
 * the "flow" distribution uses (so a program can tell which worker, or which JetStream partition, a packet
 * belongs to), and the classic pcap scanner behind the replay fast path. Same library, same conventions and
 * versioning as packet_ipc.h; documented in docs/c-api.md.
 *
 * Flow hash: both directions of a flow (A->B and B->A) hash to the same value. Plain C11, no allocation, no
 * global state, no seed: the same packet gives the same hash in every process on every machine. Link types
 * understood (pcap LINKTYPE_ values): 0 NULL and 108 LOOP (4-byte address family header), 1 Ethernet (any
 * number of 802.1Q / 802.1ad / 0x9100 tags), 12, 14 and 101 raw IP (version nibble), 228 raw IPv4, 229 raw
 * IPv6, 113 Linux SLL, 276 Linux SLL2. See csrc/flowhash.c for the exact rules (fragments, truncated headers,
 * non-IP packets).
 */
#ifndef PACKET_IPC_EXT_H
#define PACKET_IPC_EXT_H

#include <stddef.h>
#include <stdint.h>

#include "packet_ipc.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- flow hash ---- */
struct pipc_flow_key {
    uint8_t family;                  /* 0 = not IP (see pipc_flow_hash for what is hashed then), 4 or 6 */
    uint8_t proto;                   /* IP protocol number of the transport header found (after IPv6
                                        extension headers), 0 if none */
    uint16_t port_a, port_b;         /* host byte order; 0 when no ports (non TCP/UDP/SCTP, non-first or
                                        any fragment, or transport header cut short by caplen) */
    uint8_t addr_a[16], addr_b[16];  /* IPv4 uses the first 4 bytes; rest zero */
    uint8_t is_fragment;             /* 1 if IPv4/IPv6 fragment (then ports are 0 and hashing is by
                                        address pair + proto) */
    uint8_t frag_first;              /* fragment at offset 0: it carries the transport header */
    uint16_t frag_port_a, frag_port_b; /* that first fragment's ports (0 if none or cut short) */
    uint32_t frag_id;                /* IPv4 identification or IPv6 fragment identification */
};

/* Where fragments of a datagram go: pipc_flow_hash_tracked() remembers the hash given to each datagram's
 * first fragment (by addresses, protocol and identification) so that the later fragments follow it to
 * the worker of the datagram's flow. A fixed table (collisions overwrite: a later fragment that misses
 * falls back to the address-pair hash). Zero-initialise it. */
#define PIPC_FRAG_SLOTS 4096
struct pipc_frag_table {
    uint64_t tag[PIPC_FRAG_SLOTS];
    uint32_t hash[PIPC_FRAG_SLOTS];
};

/*
 * Parses the packet `data` (caplen bytes) of pcap link type `linktype` and fills *key with its flow key
 * as seen, not normalised: a = source, b = destination.
 * Returns 0 if an IP flow key was found (the fixed IPv4/IPv6 header is complete), -1 otherwise (not IP,
 * IP header cut short, unknown linktype); on -1 *key is all zero. Never reads past data[caplen - 1].
 */
PIPC_API int pipc_flow_key_parse(uint32_t linktype, const uint8_t *data, uint32_t caplen, struct pipc_flow_key *key);

/*
 * Symmetric hash: pipc_flow_hash(A->B) == pipc_flow_hash(B->A). IP packets hash their canonical key
 * (family, proto, ordered address/port pairs; ports are 0 for fragments). Non-IP Ethernet frames hash
 * the unordered pair of MAC addresses (so ARP between two hosts stays together); any other non-IP
 * packet, or an unknown linktype, hashes to 0.
 */
PIPC_API uint32_t pipc_flow_hash(uint32_t linktype, const uint8_t *data, uint32_t caplen);

/* Like pipc_flow_hash, and fragments go where their datagram's flow goes: a first fragment hashes with its
 * ports, as the unfragmented packets of its flow do, and the later fragments of the same datagram (same
 * addresses, protocol, identification) take the hash recorded for it in *table; a later fragment seen
 * before its first (reordered) falls back to the address-pair hash. */
PIPC_API uint32_t pipc_flow_hash_tracked(uint32_t linktype, const uint8_t *data, uint32_t caplen,
                                struct pipc_frag_table *table);

/* Batch form: out[i] = pipc_flow_hash(linktype, data[i], caplen[i]) for i < n. */
PIPC_API void pipc_flow_hash_batch(uint32_t linktype, const uint8_t *const *data, const uint32_t *caplen, size_t n,
                          uint32_t *out);

/* ---- classic pcap scanner (records of a file held in memory, e.g. an mmap) ---- */
struct pipc_pcap_format {
    int big_endian;          /* the file's byte order differs from little endian */
    uint32_t header_len;     /* record header: 16, or 24 for Kuznetzov's modified format */
    uint64_t ns_per_tick;    /* 1 (nanosecond files) or 1000 (microsecond files) */
    int swapped_lengths;     /* 0 no; 1 swap when caplen > len (version 2.3); 2 always (before 2.3) */
    uint64_t max_caplen;     /* larger caplens are damage, not data */
};

#define PIPC_PCAP_MORE 0      /* stopped at max packets; more may follow */
#define PIPC_PCAP_END 1       /* the buffer ended exactly at a record boundary */
#define PIPC_PCAP_TRUNC_HDR 2 /* a record header is cut short at *pos */
#define PIPC_PCAP_TRUNC_REC 3 /* a record's data is cut short at *pos */
#define PIPC_PCAP_ABSURD 4    /* a record claims caplen > max_caplen at *pos */

/* Scans up to max records from buf[*pos..len). For each: ts_ns, caplen, origlen, and the offset of its data
 * in buf. *pos advances past the records returned; on damage it points at the bad record and *status says
 * what is wrong. Returns the number of records scanned. Every read is bounded by len. */
PIPC_API size_t pipc_pcap_scan(const uint8_t *buf, size_t len, size_t *pos, size_t max, const struct pipc_pcap_format *f,
                      uint64_t *ts_ns, uint32_t *caplen, uint32_t *origlen, uint64_t *data_off, int *status);

#ifdef __cplusplus
}
#endif
#endif /* PACKET_IPC_EXT_H */
