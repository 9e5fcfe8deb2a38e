/*
 * pcap.h - the classic pcap fast path: scan records of a file held in memory (an mmap) without Python
 * objects per packet. Used by packet_ipc.pcap for replay (files and streams); pcapng stays on the Python reader.
 */
#ifndef PIPC_PCAP_H
#define PIPC_PCAP_H

#include <stddef.h>
#include <stdint.h>

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
size_t pipc_pcap_scan(const uint8_t *buf, size_t len, size_t *pos, size_t max, const struct pipc_pcap_format *f,
                      uint64_t *ts_ns, uint32_t *caplen, uint32_t *origlen, uint64_t *data_off, int *status);

#define PIPC_PCAP_WRITE_OK 0       /* every record written */
#define PIPC_PCAP_WRITE_SNAPLEN 1  /* stopped at a packet longer than the snaplen */
#define PIPC_PCAP_WRITE_LINKTYPE 2 /* stopped at a packet of another link type */
#define PIPC_PCAP_WRITE_TIME 3     /* stopped at a time beyond pcap's 32-bit seconds (2106) */

/* Writes little-endian pcap records (microsecond or nanosecond fraction) for up to n packets given as columns,
 * into out (at least sum of 16 + caplen bytes). Stops before the first packet that pcap cannot hold as it
 * is (*status says why). *out_len is the bytes written; returns the number of records written. */
size_t pipc_pcap_write(uint8_t *out, size_t n, const uint64_t *ts_ns, const uint32_t *caplen, const uint32_t *origlen,
                       const uint32_t *linktype, const uint64_t *data_off, const uint8_t *data, int nanosecond,
                       uint32_t snaplen, uint32_t want_linktype, size_t *out_len, int *status);

#endif
