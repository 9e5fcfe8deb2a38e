/*
 * ring_stress.c - the C core under load through the public ABI, in one process, for the sanitizers.
 *
 *   cc -std=c11 -O1 -g -pthread -fsanitize=address,undefined -Iinclude -Icsrc csrc/[a-z]*.c tests/c/ring_stress.c
 *   ./a.out [COUNT [SEED]]          (tests/test_c_sanitizers.py builds and runs it with ASan+UBSan and TSan)
 *
 * A server accepts in one thread while a client connects in another; then a producer thread sends COUNT
 * packets and a consumer thread checks every one of them: order (ts_ns is the sequence number), lengths,
 * linktype and every byte. The ring is small (64 KiB, 256 descriptors) so it wraps constantly and both
 * sides block and wake each other all the time. Sizes are random from a seeded generator both threads run:
 * 0-byte packets, typical ones, and large ones up to the largest accepted (half the ring), so packets
 * straddle the wrap through the mirror mapping. The producer mixes scattered packets with batches whose
 * payloads lie back to back (the one-memcpy run path) and finite timeouts with partial sends, and builds a third
 * of its batches in place (pipc_conn_reserve / pipc_conn_commit of a random prefix, the rest abandoned with
 * junk in it), and sends half of its back-to-back batches as columns (pipc_conn_send_columns). The consumer mixes blocking receives with the pollable-fd protocol (prepare_wait + poll +
 * receive with timeout 0) and receives into columns (pipc_client_receive_columns),
 * releases every batch in a random order in random chunks, and sometimes takes another batch (without
 * blocking) while part of the previous one is still held.
 *
 * Prints "ok packets=N bytes=B" and exits 0, or prints what went wrong and exits 1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "packet_ipc.h"

#define RING_BYTES 65536
#define RING_SLOTS 256
#define LARGEST (RING_BYTES / 2) /* the largest packet a ring accepts: half its capacity */
#define POOL_WINDOW 65536
#define MAX_BATCH 128
#define WAIT_MS 20000 /* any single wait longer than this is a deadlock */
#define TS_BASE UINT64_C(1000000000)

static uint8_t pool[POOL_WINDOW + LARGEST];
static uint64_t count = 2000000, seed = 1;

static uint64_t xorshift(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545f4914f6cdd1dULL;
}

/* The size of the next packet: both threads draw the same sequence from their own copy of the state. */
static uint32_t next_size(uint64_t *s)
{
    uint64_t r = xorshift(s);
    switch (r & 63) {
    case 0: case 1: case 2: case 3: return 0;
    case 4: return LARGEST;                              /* exactly the limit */
    case 5: return LARGEST - 1 - (uint32_t)((r >> 8) % 64);
    case 6: case 7: return (uint32_t)((r >> 8) % LARGEST); /* large: most cross the wrap */
    default: return (uint32_t)((r >> 8) % 1519);
    }
}

static const uint8_t *packet_bytes(uint64_t seq) { return pool + ((seq * 4099) & (POOL_WINDOW - 1)); }
static uint32_t packet_origlen(uint64_t seq, uint32_t caplen) { return caplen + (uint32_t)(seq % 3); }

#define FAIL(...)                                                                                                \
    do {                                                                                                         \
        fprintf(stderr, "ring_stress: " __VA_ARGS__);                                                           \
        fprintf(stderr, " (last error: %s)\n", pipc_last_error());                                             \
        exit(1);                                                                                                 \
    } while (0)

/* ---------------- setup: accept in one thread, connect in another ---------------- */

struct accept_job {
    pipc_server *server;
    pipc_conn *conn;
    int err;
};

static void *accept_thread(void *arg)
{
    struct accept_job *job = arg;
    job->err = pipc_server_accept(job->server, WAIT_MS, &job->conn);
    return NULL;
}

/* ---------------- producer ---------------- */

/* Packets [0, n) of a back-to-back batch sent as columns: pipc_conn_send's contract, another path. */
static long send_as_columns(pipc_conn *conn, const struct pipc_packet *pk, size_t n, int timeout_ms)
{
    static uint64_t ts[MAX_BATCH];
    static uint32_t caplen[MAX_BATCH], origlen[MAX_BATCH], ifindex[MAX_BATCH], linktype[MAX_BATCH];
    for (size_t i = 0; i < n; i++) {
        ts[i] = pk[i].ts_ns;
        caplen[i] = pk[i].caplen;
        origlen[i] = pk[i].origlen;
        ifindex[i] = pk[i].ifindex;
        linktype[i] = pk[i].linktype;
    }
    struct pipc_columns k = {.struct_bytes = sizeof(k), .ts_ns = ts, .caplen = caplen, .origlen = origlen,
                             .ifindex = ifindex, .linktype = (n & 1) ? linktype : NULL, .data = pk[0].data};
    return pipc_conn_send_columns(conn, &k, n, timeout_ms);
}

static void *producer_thread(void *arg)
{
    pipc_conn *conn = arg;
    static struct pipc_packet batch[MAX_BATCH];
    static uint8_t scratch[MAX_BATCH * LARGEST];
    uint64_t sizes = seed, choices = seed ^ 0x5555555555555555ULL, seq = 0;
    while (seq < count) {
        uint64_t r = xorshift(&choices);
        size_t n = 1 + (size_t)(r % MAX_BATCH);
        if (n > count - seq)
            n = (size_t)(count - seq);
        int contiguous = (r >> 8) & 1; /* payloads back to back: pipc_ring_put copies runs with one memcpy */
        size_t off = 0;
        for (size_t i = 0; i < n; i++) {
            struct pipc_packet *p = &batch[i];
            p->ts_ns = TS_BASE + seq + i;
            p->caplen = next_size(&sizes);
            p->origlen = packet_origlen(seq + i, p->caplen);
            p->linktype = PIPC_LINKTYPE_DEFAULT;
            p->ifindex = (uint32_t)(seq + i) & 7;
            p->data = packet_bytes(seq + i);
            if (contiguous) {
                memcpy(scratch + off, p->data, p->caplen);
                p->data = scratch + off;
                off += p->caplen;
            }
        }
        static const int timeouts[] = {-1, -1, 0, 1, 5};
        int timeout_ms = timeouts[(r >> 9) % 5];
        size_t done = 0;
        /* A third of the batches go zero-copy: reserve, build in place, commit a random prefix (0 abandons),
         * with junk written past it that must never show; what a reservation does not take is sent. */
        while ((r >> 12) % 3 == 0 && done < n) {
            uint64_t need = 0;
            for (size_t i = done; i < n; i++)
                need += batch[i].caplen;
            struct pipc_reservation res;
            int err = pipc_conn_reserve(conn, n - done, need, timeout_ms, &res);
            if (err == -EMSGSIZE)
                break; /* more than half the ring: sent below */
            if (err == -ETIMEDOUT && timeout_ms >= 0)
                continue;
            if (err)
                FAIL("reserve at packet %" PRIu64 " failed: %s", seq + done, pipc_strerror(err));
            if (res.n_packets != n - done || res.n_bytes != need)
                FAIL("reservation of %zu packets / %" PRIu64 " bytes", res.n_packets, res.n_bytes);
            size_t k = (size_t)(xorshift(&choices) % (n - done + 1)), off = 0;
            for (size_t i = 0; i < n - done; i++) {
                const struct pipc_packet *p = &batch[done + i];
                if (i < k)
                    memcpy(res.data + off, p->data, p->caplen);
                else
                    memset(res.data + off, 0xa5, p->caplen);
                off += p->caplen;
                res.ts_ns[i] = p->ts_ns;
                res.caplen[i] = p->caplen;
                res.origlen[i] = p->origlen;
                res.ifindex[i] = p->ifindex;
            }
            long committed = pipc_conn_commit(conn, k);
            if (committed != (long)k)
                FAIL("commit of %zu returned %ld", k, committed);
            done += k;
        }
        while (done < n) {
            long sent = contiguous && (r >> 14) % 2 ? send_as_columns(conn, batch + done, n - done, timeout_ms)
                                                    : pipc_conn_send(conn, batch + done, n - done, timeout_ms);
            if (sent == -ETIMEDOUT && timeout_ms >= 0)
                continue; /* ring full within a short timeout: nothing was written, try again */
            if (sent < 0)
                FAIL("send of packet %" PRIu64 " failed: %s", seq + done, pipc_strerror((int)sent));
            if ((size_t)sent > n - done)
                FAIL("send returned %ld for %zu packets", sent, n - done);
            done += (size_t)sent;
        }
        seq += n;
    }
    int err = pipc_conn_end(conn);
    if (err)
        FAIL("end of stream failed: %s", pipc_strerror(err));
    struct pipc_stats st;
    pipc_conn_stats(conn, &st);
    if (st.packets != count || st.dropped_packets)
        FAIL("server counted %" PRIu64 " packets sent, %" PRIu64 " dropped", st.packets, st.dropped_packets);
    pipc_conn_close(conn); /* before the consumer drains: what was committed must still arrive */
    return NULL;
}

/* ---------------- consumer ---------------- */

struct checker {
    uint64_t sizes, seq, bytes;
};

static void check(struct checker *k, const struct pipc_packet *p, int n)
{
    for (int i = 0; i < n; i++, k->seq++) {
        uint32_t caplen = next_size(&k->sizes);
        if (k->seq >= count)
            FAIL("packet beyond the %" PRIu64 " sent", count);
        if (p[i].ts_ns != TS_BASE + k->seq)
            FAIL("packet %" PRIu64 ": ts_ns %" PRIu64 " (out of order or lost)", k->seq, p[i].ts_ns - TS_BASE);
        if (p[i].caplen != caplen || p[i].origlen != packet_origlen(k->seq, caplen))
            FAIL("packet %" PRIu64 ": caplen %u origlen %u, expected %u", k->seq, p[i].caplen, p[i].origlen, caplen);
        if (p[i].linktype != 1 || p[i].ifindex != ((uint32_t)k->seq & 7))
            FAIL("packet %" PRIu64 ": linktype %u ifindex %u", k->seq, p[i].linktype, p[i].ifindex);
        if (caplen && memcmp(p[i].data, packet_bytes(k->seq), caplen) != 0)
            FAIL("packet %" PRIu64 ": data differ", k->seq);
        k->bytes += caplen;
    }
}

/* Waits as an event loop does: prepare_wait, poll the fd, receive with timeout 0. */
static int receive_polling(pipc_client *client, struct pipc_packet *pk, size_t max)
{
    for (;;) {
        int n = pipc_client_receive(client, pk, max, 0);
        if (n != -ETIMEDOUT)
            return n;
        if (!pipc_client_prepare_wait(client))
            continue;
        struct pollfd p = {.fd = pipc_client_fd(client), .events = POLLIN};
        int r = poll(&p, 1, WAIT_MS);
        if (r == 0)
            return -ETIMEDOUT;
        if (r < 0 && errno != EINTR)
            return -errno;
    }
}

/* A blocking receive into columns (pipc_client_receive_columns), turned back into descriptors for the checks
 * and the releases: ids are consecutive from first_id, bytes at data + offsets[i], every column filled. */
static int receive_as_columns(pipc_client *client, struct pipc_packet *pk, size_t max)
{
    static uint64_t ts[MAX_BATCH], offsets[MAX_BATCH];
    static uint32_t caplen[MAX_BATCH], origlen[MAX_BATCH], ifindex[MAX_BATCH], linktype[MAX_BATCH];
    struct pipc_received_columns k = {.struct_bytes = sizeof(k), .ts_ns = ts, .offsets = offsets,
                                      .caplen = caplen, .origlen = origlen, .ifindex = ifindex,
                                      .linktype = linktype};
    int n = pipc_client_receive_columns(client, &k, max, WAIT_MS);
    uint64_t total = 0;
    for (int i = 0; i < n; i++) {
        if (offsets[i] != total)
            FAIL("columns: packet %d at offset %" PRIu64 ", expected %" PRIu64, i, offsets[i], total);
        pk[i] = (struct pipc_packet){.ts_ns = ts[i], .caplen = caplen[i], .origlen = origlen[i],
                                     .linktype = linktype[i], .ifindex = ifindex[i], .data = k.data + offsets[i],
                                     .id = k.first_id + (uint64_t)i};
        total += caplen[i];
    }
    if (n > 0 && total != k.nbytes)
        FAIL("columns: nbytes %" PRIu64 ", the packets hold %" PRIu64, k.nbytes, total);
    return n;
}

static void shuffle(struct pipc_packet *p, size_t n, uint64_t *s)
{
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)(xorshift(s) % i);
        struct pipc_packet t = p[i - 1];
        p[i - 1] = p[j];
        p[j] = t;
    }
}

/* Releases packets [0, n) in random chunks. */
static void release_in_chunks(pipc_client *client, const struct pipc_packet *p, size_t n, uint64_t *s)
{
    while (n) {
        size_t k = 1 + (size_t)(xorshift(s) % n);
        pipc_client_release(client, p, k);
        p += k;
        n -= k;
    }
}

static void *consumer_thread(void *arg)
{
    pipc_client *client = arg;
    static struct pipc_packet a[MAX_BATCH], b[2 * MAX_BATCH];
    struct checker k = {.sizes = seed};
    uint64_t choices = seed ^ 0xaaaaaaaaaaaaaaaaULL;
    for (;;) {
        uint64_t r = xorshift(&choices);
        size_t max = 1 + (size_t)(r % MAX_BATCH);
        int n = (r >> 8) & 1    ? receive_polling(client, a, max)
                : (r >> 10) & 1 ? receive_as_columns(client, a, max)
                                : pipc_client_receive(client, a, max, WAIT_MS);
        if (n == 0)
            break;
        if (n < 0)
            FAIL("receive after %" PRIu64 " packets failed: %s", k.seq, pipc_strerror(n));
        if ((size_t)n > max)
            FAIL("receive returned %d packets for %zu", n, max);
        check(&k, a, n);
        shuffle(a, (size_t)n, &choices);
        size_t now = (size_t)(xorshift(&choices) % ((size_t)n + 1));
        release_in_chunks(client, a, now, &choices);
        size_t held = (size_t)n - now;
        if ((r >> 9) & 1) {
            /* Take more while part of the previous batch is still held. Without blocking: a consumer that
             * sleeps while holding more than one batch could wait for a producer that waits for space. */
            int m = pipc_client_receive(client, b, MAX_BATCH, 0);
            if (m < 0 && m != -ETIMEDOUT)
                FAIL("receive after %" PRIu64 " packets failed: %s", k.seq, pipc_strerror(m));
            if (m > 0) {
                check(&k, b, m);
                memcpy(b + m, a + now, held * sizeof(*a));
                held += (size_t)m;
                shuffle(b, held, &choices);
                release_in_chunks(client, b, held, &choices);
                continue;
            }
        }
        release_in_chunks(client, a + now, held, &choices);
    }
    if (k.seq != count)
        FAIL("end of stream after %" PRIu64 " of %" PRIu64 " packets", k.seq, count);
    struct pipc_packet extra;
    int again = pipc_client_receive(client, &extra, 1, 0);
    if (again != 0)
        FAIL("receive after end of stream returned %d (%s), not 0 again", again, pipc_strerror(again));
    struct pipc_stats st;
    pipc_client_stats(client, &st);
    if (st.packets != count || st.bytes != k.bytes || st.ring_used_slots || st.ring_used_bytes)
        FAIL("client stats: %" PRIu64 " packets %" PRIu64 " bytes, %" PRIu64 " slots %" PRIu64 " bytes held",
             st.packets, st.bytes, st.ring_used_slots, st.ring_used_bytes);
    printf("ok packets=%" PRIu64 " bytes=%" PRIu64 "\n", k.seq, k.bytes);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc > 1)
        count = strtoull(argv[1], NULL, 0);
    if (argc > 2)
        seed = strtoull(argv[2], NULL, 0) | 1; /* xorshift needs a non-zero state */
    uint64_t s = 0x9e3779b97f4a7c15ULL;
    for (size_t i = 0; i < sizeof(pool); i++)
        pool[i] = (uint8_t)(xorshift(&s) >> 56);
    if (pipc_abi_version() != PACKET_IPC_ABI_VERSION)
        FAIL("library ABI %d, header %d", pipc_abi_version(), PACKET_IPC_ABI_VERSION);

    struct pipc_server_options opts = {
        .struct_bytes = sizeof(opts), .capacity_bytes = RING_BYTES, .max_packets = RING_SLOTS, .linktype = 1};
    struct accept_job job = {0};
    int err = pipc_server_create(NULL, &opts, &job.server);
    if (err)
        FAIL("cannot create a server: %s", pipc_strerror(err));
    pthread_t acceptor, producer, consumer;
    pthread_create(&acceptor, NULL, accept_thread, &job);
    pipc_client *client;
    err = pipc_client_connect(pipc_server_name(job.server), WAIT_MS, &client);
    pthread_join(acceptor, NULL);
    if (err || job.err)
        FAIL("connect: %s; accept: %s", pipc_strerror(err), pipc_strerror(job.err));
    pipc_server_close(job.server);
    if (pipc_client_linktype(client) != 1)
        FAIL("client sees linktype %u", pipc_client_linktype(client));

    pthread_create(&producer, NULL, producer_thread, job.conn);
    pthread_create(&consumer, NULL, consumer_thread, client);
    pthread_join(producer, NULL);
    pthread_join(consumer, NULL);
    pipc_client_close(client);
    return 0;
}
