/*
 * producer.c - a packet-ipc server in C: create an endpoint, accept one client, send generated packets in
 * batches, end the stream.
 *
 *   cc -std=c11 -O2 producer.c -o producer $(packet-ipc config --cflags --libs)
 *   ./producer [--count N] [--sizes 64,1518,...] [--batch N] [--capacity BYTES] [--timeout MS] [--json] [--no-checksum]
 *              [--pool BATCHES] [NAME]
 *
 * Line 1 of stdout is the name clients connect to (flushed at once, so a parent process can read it and
 * start a client); NAME defaults to a fresh private path. After the client has been fed and the stream
 * ended, the last line is the same summary the consumer example prints, for what was sent:
 *
 *   packets=N bytes=B checksum=0x0123456789abcdef
 *
 * The packets are deterministic, so another program can regenerate them:
 *  - packet i has caplen sizes[i % number of sizes], origlen caplen + (i % 4 == 3 ? 4 : 0) (a few look
 *    truncated), ts_ns 1700000000000000000 + 1000 * i, linktype 1 (Ethernet);
 *  - its data are caplen bytes of a pool, from offset (i * 977) & 0xffff. The pool is 65536 + largest size
 *    bytes; byte k is the top byte of xorshift64* step k + 1 from the seed 0x9e3779b97f4a7c15
 *    (x ^= x >> 12; x ^= x << 25; x ^= x >> 27; byte = (x * 0x2545f4914f6cdd1d) >> 56).
 * Pointing into one pool costs nothing per packet, which keeps this producer fast enough to benchmark with
 * (--no-checksum also skips hashing: checksum=0x0000000000000000).
 *
 * --pool BATCHES measures the library rather than this generator, the way a producer holding ready batches
 * (a capture block, a decoder's output) sends: the first BATCHES batches are built once, as columns with their
 * payloads back to back, and the stream cycles over them (packet i is packet i % (BATCHES * batch) of the
 * list above, timestamps included), sent with pipc_conn_send_columns.
 *
 * Exit status: 0 once every packet was sent and the stream ended; 1 on an error; 2 on bad usage.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <packet_ipc.h>

#define MAX_BATCH 4096
#define MAX_SIZES 64
#define POOL_WINDOW 65536

#define FNV_OFFSET 0xcbf29ce484222325ULL
#define FNV_PRIME 0x100000001b3ULL

static uint64_t fnv1a(uint64_t h, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= FNV_PRIME;
    }
    return h;
}

static uint64_t fnv1a_le(uint64_t h, uint64_t v, int bytes)
{
    for (int i = 0; i < bytes; i++) {
        h ^= (uint8_t)(v >> (8 * i));
        h *= FNV_PRIME;
    }
    return h;
}

static int usage(const char *argv0)
{
    fprintf(stderr,
            "usage: %s [--count N] [--sizes S1,S2,...] [--batch N (1..%d)] [--capacity BYTES] [--timeout MS] "
            "[--json] [--no-checksum] [--pool BATCHES] [NAME]\n",
            argv0, MAX_BATCH);
    return 2;
}

static int parse_sizes(char *list, uint32_t *sizes, size_t *n, uint32_t *largest)
{
    *n = 0;
    *largest = 0;
    for (char *tok = strtok(list, ","); tok; tok = strtok(NULL, ",")) {
        char *end;
        unsigned long v = strtoul(tok, &end, 0);
        if (*end || *n == MAX_SIZES || v > 262144)
            return -1;
        sizes[(*n)++] = (uint32_t)v;
        if (v > *largest)
            *largest = (uint32_t)v;
    }
    return *n ? 0 : -1;
}

/* --pool: builds pool_batches batches of the packets above as columns, payloads back to back, then sends count
 * packets cycling over them with pipc_conn_send_columns. 0, or -1 after printing why. */
static int send_pool(pipc_conn *conn, const uint8_t *pool, const uint32_t *sizes, size_t n_sizes, size_t batch,
                     size_t pool_batches, uint64_t count, int timeout_ms, int checksum_on, uint64_t *h,
                     uint64_t *bytes)
{
    size_t total = pool_batches * batch;
    uint64_t *ts = malloc(total * sizeof(*ts)), blob_bytes = 0;
    uint32_t *caplen = malloc(total * sizeof(*caplen)), *origlen = malloc(total * sizeof(*origlen));
    uint64_t *start = malloc((pool_batches + 1) * sizeof(*start)); /* each pool batch's first byte in blob */
    if (!ts || !caplen || !origlen || !start) {
        fprintf(stderr, "producer: out of memory\n");
        return -1;
    }
    for (size_t seq = 0; seq < total; seq++) {
        caplen[seq] = sizes[seq % n_sizes];
        origlen[seq] = caplen[seq] + (seq % 4 == 3 ? 4 : 0);
        ts[seq] = 1700000000000000000ULL + 1000ULL * seq;
        blob_bytes += caplen[seq];
    }
    uint8_t *blob = malloc(blob_bytes ? blob_bytes : 1);
    if (!blob) {
        fprintf(stderr, "producer: out of memory\n");
        return -1;
    }
    uint64_t off = 0;
    for (size_t seq = 0; seq < total; seq++) {
        if (seq % batch == 0)
            start[seq / batch] = off;
        memcpy(blob + off, pool + ((seq * 977) & (POOL_WINDOW - 1)), caplen[seq]);
        off += caplen[seq];
    }
    start[pool_batches] = off;
    for (uint64_t i = 0; i < count;) {
        size_t b = (size_t)((i / batch) % pool_batches), first = b * batch;
        size_t n = count - i < batch ? (size_t)(count - i) : batch;
        struct pipc_columns cols = {.struct_bytes = sizeof(cols), .ts_ns = ts + first, .caplen = caplen + first,
                                    .origlen = origlen + first, .data = blob + start[b]};
        if (checksum_on) {
            const uint8_t *d = cols.data;
            for (size_t k = 0; k < n; k++) {
                *h = fnv1a_le(*h, ts[first + k], 8);
                *h = fnv1a_le(*h, origlen[first + k], 4);
                *h = fnv1a_le(*h, caplen[first + k], 4);
                *h = fnv1a(*h, d, caplen[first + k]);
                d += caplen[first + k];
            }
        }
        size_t done = 0;
        while (done < n) { /* as in main: a timeout after some were written leaves the rest to resend */
            uint64_t skip = 0;
            for (size_t k = 0; k < done; k++)
                skip += caplen[first + k];
            struct pipc_columns rest = cols;
            rest.ts_ns += done, rest.caplen += done, rest.origlen += done, rest.data += skip;
            long r = pipc_conn_send_columns(conn, &rest, n - done, timeout_ms);
            if (r < 0) {
                fprintf(stderr, "producer: send failed after %" PRIu64 " packets: %s (%s)\n", i + done,
                        pipc_strerror((int)r), pipc_last_error());
                return -1;
            }
            done += (size_t)r;
        }
        for (size_t k = 0; k < n; k++)
            *bytes += caplen[first + k];
        i += n;
    }
    free(ts), free(caplen), free(origlen), free(start), free(blob);
    return 0;
}

int main(int argc, char **argv)
{
    uint64_t count = 100000, capacity = 0;
    size_t batch = 256, n_sizes;
    int timeout_ms = 10000, json = 0, checksum_on = 1;
    size_t pool_batches = 0;
    const char *name = NULL;
    char default_sizes[] = "64,1518,0,60,590,9000,1";
    char *sizes_arg = default_sizes;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--count") && i + 1 < argc)
            count = strtoull(argv[++i], NULL, 0);
        else if (!strcmp(argv[i], "--sizes") && i + 1 < argc)
            sizes_arg = argv[++i];
        else if (!strcmp(argv[i], "--batch") && i + 1 < argc)
            batch = strtoul(argv[++i], NULL, 0);
        else if (!strcmp(argv[i], "--capacity") && i + 1 < argc)
            capacity = strtoull(argv[++i], NULL, 0);
        else if (!strcmp(argv[i], "--timeout") && i + 1 < argc)
            timeout_ms = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--pool") && i + 1 < argc)
            pool_batches = strtoul(argv[++i], NULL, 0);
        else if (!strcmp(argv[i], "--json"))
            json = 1;
        else if (!strcmp(argv[i], "--no-checksum"))
            checksum_on = 0;
        else if (argv[i][0] == '-' || name)
            return usage(argv[0]);
        else
            name = argv[i];
    }
    uint32_t sizes[MAX_SIZES], largest;
    if (batch < 1 || batch > MAX_BATCH || pool_batches > 4096 || parse_sizes(sizes_arg, sizes, &n_sizes, &largest) < 0)
        return usage(argv[0]);

    /* The data pool (see the top of the file). */
    size_t pool_bytes = POOL_WINDOW + largest;
    uint8_t *pool = malloc(pool_bytes);
    if (!pool) {
        fprintf(stderr, "producer: out of memory\n");
        return 1;
    }
    uint64_t x = 0x9e3779b97f4a7c15ULL;
    for (size_t k = 0; k < pool_bytes; k++) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        pool[k] = (uint8_t)((x * 0x2545f4914f6cdd1dULL) >> 56);
    }

    /* struct_bytes first: a library built with a larger options struct knows which fields we filled. */
    struct pipc_server_options opts = {.struct_bytes = sizeof(opts), .capacity_bytes = capacity, .linktype = 1};
    pipc_server *server;
    int err = pipc_server_create(name, &opts, &server);
    if (err < 0) {
        fprintf(stderr, "producer: cannot create the server: %s (%s)\n", pipc_strerror(err), pipc_last_error());
        return 1;
    }
    printf("%s\n", pipc_server_name(server));
    fflush(stdout); /* whoever started us is waiting for the name */

    pipc_conn *conn;
    err = pipc_server_accept(server, timeout_ms, &conn);
    pipc_server_close(server); /* one client only: stop listening; the connection stays usable */
    if (err < 0) {
        fprintf(stderr, "producer: no client: %s (%s)\n", pipc_strerror(err), pipc_last_error());
        return 1;
    }

    static struct pipc_packet packets[MAX_BATCH];
    uint64_t h = FNV_OFFSET, bytes = 0, i = 0;
    if (pool_batches) {
        int r = send_pool(conn, pool, sizes, n_sizes, batch, pool_batches, count, timeout_ms, checksum_on, &h, &bytes);
        if (r < 0) {
            pipc_conn_close(conn);
            return 1;
        }
        i = count;
    }
    while (i < count) { /* without --pool: each batch built here */
        size_t n = count - i < batch ? (size_t)(count - i) : batch;
        for (size_t k = 0; k < n; k++) {
            uint64_t seq = i + k;
            struct pipc_packet *p = &packets[k];
            p->caplen = sizes[seq % n_sizes];
            p->origlen = p->caplen + (seq % 4 == 3 ? 4 : 0);
            p->ts_ns = 1700000000000000000ULL + 1000ULL * seq;
            p->linktype = PIPC_LINKTYPE_DEFAULT; /* the server's (1, Ethernet) */
            p->ifindex = 0;
            p->data = pool + ((seq * 977) & (POOL_WINDOW - 1));
            if (checksum_on) {
                h = fnv1a_le(h, p->ts_ns, 8);
                h = fnv1a_le(h, p->origlen, 4);
                h = fnv1a_le(h, p->caplen, 4);
                h = fnv1a(h, p->data, p->caplen);
            }
            bytes += p->caplen;
        }
        /* A send may return fewer than n when its timeout expires after some were written: resend the rest. */
        size_t done = 0;
        while (done < n) {
            long r = pipc_conn_send(conn, packets + done, n - done, timeout_ms);
            if (r < 0) {
                fprintf(stderr, "producer: send failed after %" PRIu64 " packets: %s (%s)\n", i + done,
                        pipc_strerror((int)r), pipc_last_error());
                pipc_conn_close(conn);
                return 1;
            }
            done += (size_t)r;
        }
        i += n;
    }
    err = pipc_conn_end(conn); /* the client drains what was sent, then receives 0 */
    if (err < 0) {
        fprintf(stderr, "producer: end of stream failed: %s\n", pipc_strerror(err));
        pipc_conn_close(conn);
        return 1;
    }
    struct pipc_stats st;
    pipc_conn_stats(conn, &st);
    if (!checksum_on)
        h = 0;
    if (json)
        printf("{\"packets\": %" PRIu64 ", \"bytes\": %" PRIu64 ", \"checksum\": \"0x%016" PRIx64
               "\", \"blocked_ns\": %" PRIu64 "}\n",
               count, bytes, h, st.blocked_ns);
    else
        printf("packets=%" PRIu64 " bytes=%" PRIu64 " checksum=0x%016" PRIx64 "\n", count, bytes, h);
    pipc_conn_close(conn);
    free(pool);
    return 0;
}
