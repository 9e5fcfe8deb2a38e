/*
 * flow_producer.c - serve a capture file to several workers by flow, from C: the server-level send of the
 * C ABI (pipc_server_send) hashes each packet's 5-tuple symmetrically, so both directions of every flow
 * reach the same worker, fragments follow their datagram, and a worker that dies has its flows moved.
 *
 *   cc -std=c11 -O2 flow_producer.c -o flow_producer $(packet-ipc config --cflags --libs)
 *   ./flow_producer [--workers N] [--batch N] [--distribution flow|round_robin|broadcast] [--timeout MS]
 *                   FILE.pcap [NAME]
 *
 * Line 1 of stdout is the name workers connect to (flushed at once). It waits for N workers (4), sends every
 * record of FILE (classic pcap, micro- or nanosecond, either byte order) in batches, ends every stream, and
 * prints one line per worker and a total:
 *
 *   worker=0 packets=P bytes=B dropped=D
 *   packets=N workers=W lost=L
 *
 * Exit status: 0 once every packet was sent and the streams ended; 1 on an error; 2 on bad usage.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <packet_ipc.h>

#define MAX_BATCH 4096
#define MAX_WORKERS 256

struct capture {
    FILE *f;
    int swapped, nanoseconds;
    uint32_t linktype, snaplen;
};

static uint32_t u32(const uint8_t *p, int swapped)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return swapped ? __builtin_bswap32(v) : v;
}

/* Reads the global header: magic (either byte order, us or ns), version, snaplen, linktype. */
static int open_capture(const char *path, struct capture *c)
{
    uint8_t h[24];
    if (!(c->f = fopen(path, "rb"))) {
        fprintf(stderr, "flow_producer: cannot open %s: %s\n", path, strerror(errno));
        return -1;
    }
    if (fread(h, 1, sizeof(h), c->f) != sizeof(h)) {
        fprintf(stderr, "flow_producer: %s: too short for a pcap header\n", path);
        return -1;
    }
    uint32_t magic;
    memcpy(&magic, h, 4);
    c->swapped = magic == 0xd4c3b2a1u || magic == 0x4d3cb2a1u;
    magic = c->swapped ? __builtin_bswap32(magic) : magic;
    if (magic != 0xa1b2c3d4u && magic != 0xa1b23c4du) {
        fprintf(stderr, "flow_producer: %s: not a classic pcap file (magic 0x%08x)\n", path, magic);
        return -1;
    }
    c->nanoseconds = magic == 0xa1b23c4du;
    c->snaplen = u32(h + 16, c->swapped);
    c->linktype = u32(h + 20, c->swapped) & 0xffff; /* the upper bits carry FCS flags */
    return 0;
}

/* Reads one record into buf (room for 262144 bytes); 1 = a packet, 0 = end of file, -1 = damaged. */
static int next_record(struct capture *c, struct pipc_packet *p, uint8_t *buf)
{
    uint8_t h[16];
    size_t got = fread(h, 1, sizeof(h), c->f);
    if (got == 0)
        return 0;
    if (got != sizeof(h))
        return -1;
    uint64_t sec = u32(h, c->swapped), frac = u32(h + 4, c->swapped);
    uint32_t caplen = u32(h + 8, c->swapped), origlen = u32(h + 12, c->swapped);
    if (caplen > 262144 || fread(buf, 1, caplen, c->f) != caplen) /* stops a length past the file or buffer */
        return -1;
    p->ts_ns = sec * 1000000000ULL + (c->nanoseconds ? frac : frac * 1000ULL);
    p->caplen = caplen;
    p->origlen = origlen < caplen ? caplen : origlen;
    p->linktype = c->linktype;
    p->ifindex = 0;
    p->data = buf;
    return 1;
}

static int fail(const char *what, int err)
{
    fprintf(stderr, "flow_producer: %s: %s (%s)\n", what, pipc_strerror(err), pipc_last_error());
    return 1;
}

int main(int argc, char **argv)
{
    long workers = 4, batch = 256, timeout_ms = 30000;
    int distribution = PIPC_DISTRIBUTION_FLOW;
    const char *path = NULL, *name = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--workers") && i + 1 < argc)
            workers = strtol(argv[++i], NULL, 10);
        else if (!strcmp(a, "--batch") && i + 1 < argc)
            batch = strtol(argv[++i], NULL, 10);
        else if (!strcmp(a, "--timeout") && i + 1 < argc)
            timeout_ms = strtol(argv[++i], NULL, 10);
        else if (!strcmp(a, "--distribution") && i + 1 < argc) {
            const char *d = argv[++i];
            distribution = !strcmp(d, "flow")          ? PIPC_DISTRIBUTION_FLOW
                           : !strcmp(d, "round_robin") ? PIPC_DISTRIBUTION_ROUND_ROBIN
                           : !strcmp(d, "broadcast")   ? PIPC_DISTRIBUTION_BROADCAST
                                                       : -1;
        } else if (a[0] == '-' && a[1] == '-')
            workers = -1; /* unknown option: usage below */
        else if (!path)
            path = a;
        else
            name = a;
    }
    if (!path || workers < 1 || workers > MAX_WORKERS || batch < 1 || batch > MAX_BATCH || distribution < 0) {
        fprintf(stderr, "usage: %s [--workers 1..%d] [--batch 1..%d] [--distribution flow|round_robin|broadcast] "
                        "[--timeout MS] FILE.pcap [NAME]\n", argv[0], MAX_WORKERS, MAX_BATCH);
        return 2;
    }
    struct capture cap;
    if (open_capture(path, &cap) < 0)
        return 1;

    struct pipc_server_options opts;
    memset(&opts, 0, sizeof(opts));
    opts.struct_bytes = sizeof(opts);
    opts.linktype = cap.linktype;
    opts.distribution = distribution;
    pipc_server *server;
    int err = pipc_server_create(name, &opts, &server);
    if (err)
        return fail("cannot create the server", err);
    printf("%s\n", pipc_server_name(server));
    fflush(stdout);

    pipc_conn *conns[MAX_WORKERS];
    for (long w = 0; w < workers; w++)
        if ((err = pipc_server_accept(server, (int)timeout_ms, &conns[w])))
            return fail("waiting for workers", err);

    /* A batch's packets lie back to back in one slab until the batch is sent (one memcpy per run into each
     * ring); a batch ends early when the slab could not take a largest record. */
    const size_t slab_bytes = 8u << 20;
    uint8_t *slab = malloc(slab_bytes);
    struct pipc_packet *pk = malloc((size_t)batch * sizeof(*pk));
    if (!slab || !pk)
        return fail("allocating the batch", -ENOMEM);
    unsigned long long total = 0;
    int r = 1;
    do {
        long n = 0;
        size_t used = 0;
        while (n < batch && used + 262144 <= slab_bytes && (r = next_record(&cap, &pk[n], slab + used)) == 1)
            used += pk[n++].caplen;
        if (r < 0) {
            fprintf(stderr, "flow_producer: %s: damaged record after %llu packets; aborting the streams\n", path,
                    total + (unsigned long long)n);
            pipc_server_abort(server);
            return 1;
        }
        if (n > 0) {
            long sent = pipc_server_send(server, pk, (size_t)n, (int)timeout_ms);
            if (sent < 0)
                return fail("sending", (int)sent);
            total += (unsigned long long)n;
        }
    } while (r == 1);
    pipc_server_end(server);

    struct pipc_server_stats st;
    memset(&st, 0, sizeof(st));
    st.struct_bytes = sizeof(st);
    pipc_server_stats(server, &st);
    for (long w = 0; w < workers; w++) {
        struct pipc_stats cs;
        pipc_conn_stats(conns[w], &cs);
        printf("worker=%ld packets=%llu bytes=%llu dropped=%llu\n", w, (unsigned long long)cs.packets,
               (unsigned long long)cs.bytes, (unsigned long long)cs.dropped_packets);
        pipc_conn_close(conns[w]);
    }
    printf("packets=%llu workers=%llu lost=%llu\n", total, (unsigned long long)st.workers,
           (unsigned long long)st.lost_packets);
    pipc_server_close(server);
    fclose(cap.f);
    free(slab);
    free(pk);
    return 0;
}
