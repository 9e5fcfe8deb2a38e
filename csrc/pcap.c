/* pcap.c - the classic pcap scanner (include/packet_ipc_ext.h). Mirrors packet_ipc.pcap's classic-pcap parser rule for rule (its tests compare the
 * two on every capture). */
#include "packet_ipc_ext.h"

#include <string.h>

static uint32_t rd32(const uint8_t *p, int big)
{
    return big ? (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]
               : (uint32_t)p[3] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[1] << 8 | p[0];
}

size_t pipc_pcap_scan(const uint8_t *buf, size_t len, size_t *pos, size_t max, const struct pipc_pcap_format *f,
                      uint64_t *ts_ns, uint32_t *caplen, uint32_t *origlen, uint64_t *data_off, int *status)
{
    size_t p = *pos, n = 0;
    *status = PIPC_PCAP_MORE;
    while (n < max) {
        if (p == len) {
            *status = PIPC_PCAP_END;
            break;
        }
        if (len - p < f->header_len) { /* stops a header read past the end */
            *status = PIPC_PCAP_TRUNC_HDR;
            break;
        }
        uint32_t sec = rd32(buf + p, f->big_endian), frac = rd32(buf + p + 4, f->big_endian);
        uint32_t cap = rd32(buf + p + 8, f->big_endian), orig = rd32(buf + p + 12, f->big_endian);
        if (f->swapped_lengths && (f->swapped_lengths == 2 || cap > orig)) {
            uint32_t t = cap;
            cap = orig;
            orig = t;
        }
        if (cap > f->max_caplen) { /* stops an absurd length from being taken as data */
            *status = PIPC_PCAP_ABSURD;
            break;
        }
        if (len - p - f->header_len < cap) { /* stops a data read past the end */
            *status = PIPC_PCAP_TRUNC_REC;
            break;
        }
        ts_ns[n] = (uint64_t)sec * 1000000000ULL + (uint64_t)frac * f->ns_per_tick; /* < 2^64 for u32 fields */
        caplen[n] = cap;
        origlen[n] = orig;
        data_off[n] = p + f->header_len;
        p += f->header_len + cap;
        n++;
    }
    *pos = p;
    return n;
}
