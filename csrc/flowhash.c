/*
 * flowhash.c - flow key parsing and the symmetric flow hash (declared in include/packet_ipc_ext.h).
 *
 * Rules, chosen so that both directions of a flow, and every piece of one datagram, meet in one worker:
 *
 * - Key: family, IP protocol, (address, port) of source and destination. TCP (6), UDP (17) and SCTP
 *   (132) give ports; every other protocol is keyed by address pair + protocol, ports 0.
 * - Symmetry: the two (address, port) endpoints are put in canonical order (address bytes compared
 *   first, then port) before hashing, so A->B and B->A hash the same words.
 * - Fragments: pipc_flow_hash (stateless) hashes them by address pair + protocol only (ports 0), first
 *   fragment included, because only the first fragment carries the ports: every fragment of a datagram
 *   meets on one worker, but maybe not the worker of the datagram's flow. pipc_flow_hash_tracked (what the
 *   server's "flow" distribution uses) does better: the first fragment hashes with its ports, like the
 *   flow's unfragmented packets, and the datagram's later fragments follow it through a small table keyed
 *   by (addresses, protocol, identification); a later fragment arriving before its first falls back to the
 *   address pair. For protocols without ports (ICMP, GRE, ESP, ...) all of these agree.
 *   IPv4 fragment: MF set or offset != 0. IPv6: a Fragment header with M set or offset != 0; an "atomic
 *   fragment" (Fragment header with M = 0 and offset 0, RFC 6946) is a whole datagram, so the parser
 *   walks past it to the ports, the same rule as for IPv4. For an IPv6 fragment, proto is the Fragment
 *   header's Next Header, which is the same in every fragment of a datagram.
 * - IPv6 extension headers skipped: hop-by-hop (0), routing (43), fragment (44, see above),
 *   destination options (60), AH (51). ESP (50) and anything else ends the walk and is the proto.
 * - Cut-short packets: once the fixed IPv4 (20 bytes + options) or IPv6 (40 bytes) header is complete, a
 *   key is returned. If caplen ends inside an extension header, proto is the Next Header value that could
 *   not be walked, ports 0; if it ends before 4 bytes of TCP/UDP/SCTP header, ports are 0. The IP length
 *   field (when nonzero and shorter than what was captured) bounds the walk, so Ethernet padding is never
 *   read as ports; a zero length (TSO, jumbogram) means "up to caplen".
 * - Not IP (or IP header cut short, or unknown linktype): Ethernet hashes the unordered pair of MAC
 *   addresses; everything else hashes to 0.
 * - Hash: the canonical key as 64-bit words, assembled byte by byte (so the result does not depend on
 *   host byte order), each folded in with the murmur3 64-bit finalizer; fixed constants, no seed.
 */
#include "packet_ipc_ext.h"

#include <string.h>

#define LINKTYPE_NULL 0
#define LINKTYPE_ETHERNET 1
#define LINKTYPE_RAW_12 12 /* DLT_RAW on some BSDs, written as is into old pcap files */
#define LINKTYPE_RAW_14 14 /* DLT_RAW on other BSDs / old Linux */
#define LINKTYPE_RAW 101
#define LINKTYPE_LOOP 108
#define LINKTYPE_LINUX_SLL 113
#define LINKTYPE_IPV4 228
#define LINKTYPE_IPV6 229
#define LINKTYPE_LINUX_SLL2 276

#define ETHERTYPE_IPV4 0x0800
#define ETHERTYPE_IPV6 0x86DD
#define ETHERTYPE_8021Q 0x8100
#define ETHERTYPE_8021AD 0x88A8
#define ETHERTYPE_QINQ_OLD 0x9100

#define ETH_HDR_BYTES 14
#define VLAN_TAG_BYTES 4
#define SLL_HDR_BYTES 16
#define SLL2_HDR_BYTES 20
#define NULL_HDR_BYTES 4
#define IPV4_MIN_HDR_BYTES 20
#define IPV6_HDR_BYTES 40
#define IPV6_FRAG_HDR_BYTES 8
#define PORTS_BYTES 4

#define PROTO_HOPOPTS 0
#define PROTO_TCP 6
#define PROTO_UDP 17
#define PROTO_ROUTING 43
#define PROTO_FRAGMENT 44
#define PROTO_AH 51
#define PROTO_DSTOPTS 60
#define PROTO_SCTP 132

static uint16_t read_be16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }

static uint32_t read_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static uint64_t read_le_bytes(const uint8_t *p, size_t n)
{
    uint64_t v = 0;
    for (size_t i = n; i-- > 0;)
        v = (v << 8) | p[i];
    return v;
}

/* The same for 4 and 8 bytes in one load (the hash's hot path: addresses): memcpy is the aligned-safe load. */
static uint64_t read_le64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

static uint64_t read_le32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap32(v);
#endif
    return v;
}

/* memcmp order of two 16-byte addresses (<0, 0, >0) from two big-endian 64-bit compares. */
static int compare_addr16(const uint8_t *a, const uint8_t *b)
{
    uint64_t a0 = __builtin_bswap64(read_le64(a)), b0 = __builtin_bswap64(read_le64(b));
    if (a0 != b0)
        return a0 < b0 ? -1 : 1;
    uint64_t a1 = __builtin_bswap64(read_le64(a + 8)), b1 = __builtin_bswap64(read_le64(b + 8));
    return (a1 > b1) - (a1 < b1);
}

/* Ports of TCP/UDP/SCTP (all three start with source port, destination port). `l4` and `end` are
 * offsets with l4 <= end <= caplen. */
static void parse_ports(const uint8_t *d, uint32_t l4, uint32_t end, struct pipc_flow_key *key)
{
    if (key->proto != PROTO_TCP && key->proto != PROTO_UDP && key->proto != PROTO_SCTP)
        return;
    /* stops: a transport header cut short by caplen or by the IP length (ports stay 0) */
    if (end - l4 < PORTS_BYTES)
        return;
    key->port_a = read_be16(d + l4);
    key->port_b = read_be16(d + l4 + 2);
}

/* IPv4 header at d + off, off <= caplen. */
static int parse_ipv4(const uint8_t *d, uint32_t off, uint32_t caplen, struct pipc_flow_key *key)
{
    const uint8_t *ip = d + off;
    /* stops: a packet cut short inside the fixed 20-byte header */
    if (caplen - off < IPV4_MIN_HDR_BYTES)
        return -1;
    /* stops: an IPv6 (or garbage) header behind an IPv4 ethertype / family */
    if ((ip[0] >> 4) != 4)
        return -1;
    uint32_t ihl = (uint32_t)(ip[0] & 0x0F) * 4;
    /* stops: IHL < 5, which would put the transport header inside the IP header */
    if (ihl < IPV4_MIN_HDR_BYTES)
        return -1;
    /* stops: IHL pointing past caplen (options cut short) */
    if (caplen - off < ihl)
        return -1;

    key->family = 4;
    key->proto = ip[9];
    memcpy(key->addr_a, ip + 12, 4);
    memcpy(key->addr_b, ip + 16, 4);

    uint16_t frag = read_be16(ip + 6);
    uint32_t end = caplen;
    uint32_t total = read_be16(ip + 2);
    /* stops: Ethernet padding after a short datagram being read as ports; a total length shorter than
     * the header leaves no transport bytes (end < l4 is mapped to end = l4); 0 (TSO) means caplen */
    if (total != 0 && total < caplen - off)
        end = off + (total > ihl ? total : ihl);
    if ((frag & 0x2000) || (frag & 0x1FFF)) { /* MF set, or offset != 0 */
        key->is_fragment = 1;
        key->frag_id = read_be16(ip + 4);
        if ((frag & 0x1FFF) == 0) { /* the first fragment carries the ports: kept aside for tracking */
            key->frag_first = 1;
            parse_ports(d, off + ihl, end, key);
            key->frag_port_a = key->port_a;
            key->frag_port_b = key->port_b;
            key->port_a = key->port_b = 0;
        }
        return 0;
    }
    parse_ports(d, off + ihl, end, key);
    return 0;
}

/* IPv6 header at d + off, off <= caplen. */
static int parse_ipv6(const uint8_t *d, uint32_t off, uint32_t caplen, struct pipc_flow_key *key)
{
    const uint8_t *ip = d + off;
    /* stops: a packet cut short inside the fixed 40-byte header */
    if (caplen - off < IPV6_HDR_BYTES)
        return -1;
    /* stops: an IPv4 (or garbage) header behind an IPv6 ethertype / family */
    if ((ip[0] >> 4) != 6)
        return -1;

    key->family = 6;
    memcpy(key->addr_a, ip + 8, 16);
    memcpy(key->addr_b, ip + 24, 16);

    uint32_t cur = off + IPV6_HDR_BYTES;
    uint32_t end = caplen;
    uint32_t payload = read_be16(ip + 4);
    /* stops: Ethernet padding after a short datagram being walked as headers; 0 (jumbogram, TSO)
     * means caplen */
    if (payload != 0 && payload < caplen - cur)
        end = cur + payload;

    uint8_t next = ip[6];
    /* Every pass advances cur by >= 8 bytes and checks it against end, so the walk ends after at most
     * caplen / 8 headers however the chain is crafted (no loop on a header pointing to itself). */
    for (;;) {
        uint32_t len;
        if (next == PROTO_HOPOPTS || next == PROTO_ROUTING || next == PROTO_DSTOPTS || next == PROTO_AH) {
            /* stops: a packet cut short before the Next Header / length bytes */
            if (end - cur < 2)
                break;
            if (next == PROTO_AH)
                len = ((uint32_t)d[cur + 1] + 2) * 4; /* RFC 4302: 4-octet units, minus 2 */
            else
                len = ((uint32_t)d[cur + 1] + 1) * 8; /* RFC 8200: 8-octet units, minus 1 */
        } else if (next == PROTO_FRAGMENT) {
            len = IPV6_FRAG_HDR_BYTES;
        } else {
            key->proto = next;
            parse_ports(d, cur, end, key);
            return 0;
        }
        /* stops: a header length pointing past caplen or past the payload length */
        if (end - cur < len)
            break;
        if (next == PROTO_FRAGMENT) {
            uint16_t frag = read_be16(d + cur + 2);
            if ((frag & 0xFFF8) || (frag & 1)) { /* offset != 0, or M set; else atomic (RFC 6946) */
                key->proto = d[cur];
                key->is_fragment = 1;
                key->frag_id = read_be32(d + cur + 4);
                if ((frag & 0xFFF8) == 0) { /* first fragment: its transport header follows directly */
                    key->frag_first = 1;
                    parse_ports(d, cur + IPV6_FRAG_HDR_BYTES, end, key);
                    key->frag_port_a = key->port_a;
                    key->frag_port_b = key->port_b;
                    key->port_a = key->port_b = 0;
                }
                return 0;
            }
        }
        next = d[cur];
        cur += len;
    }
    key->proto = next; /* cut short inside the extension header chain: ports stay 0 */
    return 0;
}

/* Dispatch on an ethertype found at d + off - 2, skipping VLAN tags; off <= caplen. */
static int parse_ethertype(const uint8_t *d, uint32_t off, uint32_t caplen, uint16_t type,
                           struct pipc_flow_key *key)
{
    /* Each tag consumes 4 bytes, so the number of tags is bounded by caplen. */
    while (type == ETHERTYPE_8021Q || type == ETHERTYPE_8021AD || type == ETHERTYPE_QINQ_OLD) {
        /* stops: a frame cut short inside a VLAN tag (and endless tag stacks) */
        if (caplen - off < VLAN_TAG_BYTES)
            return -1;
        type = read_be16(d + off + 2);
        off += VLAN_TAG_BYTES;
    }
    if (type == ETHERTYPE_IPV4)
        return parse_ipv4(d, off, caplen, key);
    if (type == ETHERTYPE_IPV6)
        return parse_ipv6(d, off, caplen, key);
    return -1;
}

/* IP header of either version at d + off, told apart by the version nibble; off <= caplen. */
static int parse_ip_any(const uint8_t *d, uint32_t off, uint32_t caplen, struct pipc_flow_key *key)
{
    /* stops: an empty packet (no version nibble to read) */
    if (caplen - off < 1)
        return -1;
    switch (d[off] >> 4) {
    case 4: return parse_ipv4(d, off, caplen, key);
    case 6: return parse_ipv6(d, off, caplen, key);
    default: return -1;
    }
}

/* NULL / LOOP: 4-byte address family, in the capturing host's byte order (NULL) or network order
 * (LOOP, though some writers get it wrong, so both orders are accepted for both link types). */
static int parse_null(const uint8_t *d, uint32_t caplen, struct pipc_flow_key *key)
{
    /* stops: a packet shorter than the family header */
    if (caplen < NULL_HDR_BYTES)
        return -1;
    uint32_t family = read_be32(d);
    if (family > 0xFFFF) /* a small number written little endian */
        family = (uint32_t)read_le_bytes(d, 4);
    switch (family) {
    case 2: return parse_ipv4(d, NULL_HDR_BYTES, caplen, key);  /* AF_INET everywhere */
    case 10: case 24: case 28: case 30:  /* AF_INET6: Linux, NetBSD/OpenBSD, FreeBSD, Darwin */
        return parse_ipv6(d, NULL_HDR_BYTES, caplen, key);
    default: return -1;
    }
}

int pipc_flow_key_parse(uint32_t linktype, const uint8_t *data, uint32_t caplen, struct pipc_flow_key *key)
{
    int rc = -1;
    memset(key, 0, sizeof *key);
    /* stops: a NULL data pointer passed with a nonzero caplen by a careless caller */
    if (data == NULL)
        return -1;
    switch (linktype) {
    case LINKTYPE_ETHERNET:
        /* stops: a frame shorter than the Ethernet header */
        if (caplen >= ETH_HDR_BYTES)
            rc = parse_ethertype(data, ETH_HDR_BYTES, caplen, read_be16(data + 12), key);
        break;
    case LINKTYPE_LINUX_SLL:
        /* stops: a packet shorter than the SLL header (protocol at offset 14) */
        if (caplen >= SLL_HDR_BYTES)
            rc = parse_ethertype(data, SLL_HDR_BYTES, caplen, read_be16(data + 14), key);
        break;
    case LINKTYPE_LINUX_SLL2:
        /* stops: a packet shorter than the SLL2 header (protocol at offset 0) */
        if (caplen >= SLL2_HDR_BYTES)
            rc = parse_ethertype(data, SLL2_HDR_BYTES, caplen, read_be16(data), key);
        break;
    case LINKTYPE_RAW: case LINKTYPE_RAW_12: case LINKTYPE_RAW_14:
        rc = parse_ip_any(data, 0, caplen, key);
        break;
    case LINKTYPE_IPV4: rc = parse_ipv4(data, 0, caplen, key); break;
    case LINKTYPE_IPV6: rc = parse_ipv6(data, 0, caplen, key); break;
    case LINKTYPE_NULL: case LINKTYPE_LOOP: rc = parse_null(data, caplen, key); break;
    default: break;
    }
    if (rc != 0)
        memset(key, 0, sizeof *key); /* no half-filled key on failure */
    return rc;
}

/* murmur3 fmix64: a bijection of 64-bit words with full avalanche. */
static uint64_t fmix64(uint64_t k)
{
    k ^= k >> 33;
    k *= UINT64_C(0xff51afd7ed558ccd);
    k ^= k >> 33;
    k *= UINT64_C(0xc4ceb9fe1a85ec53);
    k ^= k >> 33;
    return k;
}

static uint32_t fold32(uint64_t h) { return (uint32_t)(h ^ (h >> 32)); }

/* The hash of one canonical key: family, proto and the two (address, port) endpoints, addresses of 4 (family
 * 4) or 16 bytes. For family 4, comparing the 4 address bytes is the same as comparing the key's zero-padded
 * 16 bytes; the hashed words are the same too (the padding is never read). */
static uint32_t hash_endpoints(uint8_t family, uint8_t proto, const uint8_t *a, const uint8_t *b, uint16_t port_a,
                               uint16_t port_b)
{
    const uint8_t *lo = a, *hi = b;
    uint16_t lo_port = port_a, hi_port = port_b;
    int order; /* as memcmp would order the addresses */
    if (family == 4) {
        uint32_t x = __builtin_bswap32((uint32_t)read_le32(a)), y = __builtin_bswap32((uint32_t)read_le32(b));
        order = (x > y) - (x < y);
    } else {
        order = compare_addr16(a, b);
    }
    if (order > 0 || (order == 0 && port_a > port_b)) {
        lo = b;
        hi = a;
        lo_port = port_b;
        hi_port = port_a;
    }
    /* Fragments carry ports 0 already; is_fragment itself is not hashed (see the top of this file). */
    uint64_t meta = (uint64_t)family | ((uint64_t)proto << 8) | ((uint64_t)lo_port << 16) | ((uint64_t)hi_port << 32);
    uint64_t h = UINT64_C(0x9e3779b97f4a7c15); /* nonzero start: fmix64(0) == 0 */
    if (family == 4) {
        h = fmix64(h ^ (read_le32(lo) | (read_le32(hi) << 32)));
    } else {
        h = fmix64(h ^ read_le64(lo));
        h = fmix64(h ^ read_le64(lo + 8));
        h = fmix64(h ^ read_le64(hi));
        h = fmix64(h ^ read_le64(hi + 8));
    }
    return fold32(fmix64(h ^ meta));
}

static uint32_t hash_key(const struct pipc_flow_key *key)
{
    return hash_endpoints(key->family, key->proto, key->addr_a, key->addr_b, key->port_a, key->port_b);
}

/* Non-IP Ethernet: the unordered pair of MAC addresses (destination at 0, source at 6). */
static uint32_t hash_macs(const uint8_t *d, uint32_t caplen)
{
    /* stops: a frame too short to hold both addresses */
    if (d == NULL || caplen < 12)
        return 0;
    /* each 6-byte address as a little-endian number (4 + 2 bytes: nothing read past byte 12) */
    uint64_t x = read_le32(d) | ((uint64_t)(d[4] | (d[5] << 8)) << 32);
    uint64_t y = read_le32(d + 6) | ((uint64_t)(d[10] | (d[11] << 8)) << 32);
    uint64_t lo = x < y ? x : y, hi = x < y ? y : x;
    uint64_t h = fmix64(UINT64_C(0x2545f4914f6cdd1d) ^ lo); /* distinct start from the IP hash */
    return fold32(fmix64(h ^ hi));
}

/* The common case of live traffic, without building a key: Ethernet with no VLAN tag carrying an unfragmented
 * IPv4 datagram with no options, or IPv6 with no extension header; or any other ethertype that is not IP (the
 * MAC pair). Gives exactly what the general path below gives (the rules at the top of this file, applied to
 * these shapes); every other packet returns 0 and takes the general path. Built with
 * PIPC_FLOWHASH_GENERAL_ONLY, there is no fast path (tests/test_flowhash.py compares both builds). */
static inline __attribute__((always_inline)) int fast_hash(uint32_t linktype, const uint8_t *d, uint32_t caplen,
                                                        uint32_t *out)
{
#ifdef PIPC_FLOWHASH_GENERAL_ONLY
    (void)linktype, (void)d, (void)caplen, (void)out;
    return 0;
#else
#define HAS_PORTS(proto) ((proto) == PROTO_TCP || (proto) == PROTO_UDP || (proto) == PROTO_SCTP)
    if (linktype != LINKTYPE_ETHERNET || d == NULL || caplen < ETH_HDR_BYTES)
        return 0;
    uint16_t type = read_be16(d + 12);
    if (type == ETHERTYPE_IPV4) {
        const uint8_t *ip = d + ETH_HDR_BYTES;
        /* only version 4 with IHL 5, a complete header, and neither MF nor an offset (not a fragment) */
        if (caplen - ETH_HDR_BYTES < IPV4_MIN_HDR_BYTES || ip[0] != 0x45 || (read_be16(ip + 6) & 0x3FFF))
            return 0;
        uint32_t l4 = ETH_HDR_BYTES + IPV4_MIN_HDR_BYTES, end = caplen, total = read_be16(ip + 2);
        if (total != 0 && total < caplen - ETH_HDR_BYTES) /* the IP length bounds the ports, as parse_ipv4 */
            end = ETH_HDR_BYTES + (total > IPV4_MIN_HDR_BYTES ? total : IPV4_MIN_HDR_BYTES);
        uint8_t proto = ip[9];
        uint16_t pa = 0, pb = 0;
        if (HAS_PORTS(proto) && end - l4 >= PORTS_BYTES) {
            pa = read_be16(d + l4);
            pb = read_be16(d + l4 + 2);
        }
        *out = hash_endpoints(4, proto, ip + 12, ip + 16, pa, pb);
        return 1;
    }
    if (type == ETHERTYPE_IPV6) {
        const uint8_t *ip = d + ETH_HDR_BYTES;
        if (caplen - ETH_HDR_BYTES < IPV6_HDR_BYTES || (ip[0] >> 4) != 6)
            return 0;
        uint8_t next = ip[6];
        if (next == PROTO_HOPOPTS || next == PROTO_ROUTING || next == PROTO_FRAGMENT || next == PROTO_AH ||
            next == PROTO_DSTOPTS)
            return 0; /* an extension header to walk */
        uint32_t l4 = ETH_HDR_BYTES + IPV6_HDR_BYTES, end = caplen, payload = read_be16(ip + 4);
        if (payload != 0 && payload < caplen - l4) /* as parse_ipv6 */
            end = l4 + payload;
        uint16_t pa = 0, pb = 0;
        if (HAS_PORTS(next) && end - l4 >= PORTS_BYTES) {
            pa = read_be16(d + l4);
            pb = read_be16(d + l4 + 2);
        }
        *out = hash_endpoints(6, next, ip + 8, ip + 24, pa, pb);
        return 1;
    }
    if (type == ETHERTYPE_8021Q || type == ETHERTYPE_8021AD || type == ETHERTYPE_QINQ_OLD)
        return 0; /* VLAN tags to skip */
    *out = hash_macs(d, caplen); /* not IP: what the general path gives after the parse fails */
    return 1;
#undef HAS_PORTS
#endif
}

uint32_t pipc_flow_hash(uint32_t linktype, const uint8_t *data, uint32_t caplen)
{
    uint32_t fast;
    if (fast_hash(linktype, data, caplen, &fast))
        return fast;
    struct pipc_flow_key key;
    if (pipc_flow_key_parse(linktype, data, caplen, &key) == 0)
        return hash_key(&key);
    if (linktype == LINKTYPE_ETHERNET)
        return hash_macs(data, caplen);
    return 0;
}

/* Direction-specific identity of one datagram (all its fragments share source, destination, protocol, id). */
static uint64_t datagram_tag(const struct pipc_flow_key *key)
{
    uint64_t h = UINT64_C(0x6a09e667f3bcc909) ^ ((uint64_t)key->family << 40) ^ ((uint64_t)key->proto << 32) ^
                 key->frag_id;
    h = fmix64(h ^ read_le_bytes(key->addr_a, 8));
    h = fmix64(h ^ read_le_bytes(key->addr_a + 8, 8));
    h = fmix64(h ^ read_le_bytes(key->addr_b, 8));
    h = fmix64(h ^ read_le_bytes(key->addr_b + 8, 8));
    return h | 1; /* never 0: 0 marks an empty slot */
}

/* pipc_flow_hash_tracked past the fast path; kept out of line so that the fast path's callers do not pay for
 * this one's stack frame (a key and its copy). */
__attribute__((noinline)) static uint32_t hash_tracked_general(uint32_t linktype, const uint8_t *data,
                                                                uint32_t caplen, struct pipc_frag_table *table)
{
    struct pipc_flow_key key;
    if (pipc_flow_key_parse(linktype, data, caplen, &key) != 0)
        return linktype == LINKTYPE_ETHERNET ? hash_macs(data, caplen) : 0;
    if (!key.is_fragment)
        return hash_key(&key);
    uint64_t tag = datagram_tag(&key);
    size_t slot = (size_t)(tag >> 52) & (PIPC_FRAG_SLOTS - 1);
    if (key.frag_first) {
        struct pipc_flow_key whole = key; /* hashed as the unfragmented packets of its flow are */
        whole.port_a = key.frag_port_a;
        whole.port_b = key.frag_port_b;
        uint32_t h = hash_key(&whole);
        table->tag[slot] = tag;
        table->hash[slot] = h;
        return h;
    }
    if (table->tag[slot] == tag)
        return table->hash[slot];
    return hash_key(&key); /* its first fragment was not seen (yet): the address pair */
}

uint32_t pipc_flow_hash_tracked(uint32_t linktype, const uint8_t *data, uint32_t caplen,
                                struct pipc_frag_table *table)
{
    uint32_t fast;
    if (fast_hash(linktype, data, caplen, &fast)) /* never a fragment: nothing to track */
        return fast;
    return hash_tracked_general(linktype, data, caplen, table);
}

void pipc_flow_hash_batch(uint32_t linktype, const uint8_t *const *data, const uint32_t *caplen, size_t n,
                          uint32_t *out)
{
    for (size_t i = 0; i < n; i++)
        out[i] = pipc_flow_hash(linktype, data[i], caplen[i]);
}
