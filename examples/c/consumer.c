/*
 * consumer.c - a packet-ipc client in C: connect by name, receive batches with no copy, release them.
 *
 *   cc -std=c11 -O2 consumer.c -o consumer $(packet-ipc config --cflags --libs)
 *   ./consumer [--poll | --columns] [--json] [--batch N] [--timeout MS] [--no-checksum [--touch]] NAME
 *
 * Prints one line when the server ends the stream:
 *
 *   packets=N bytes=B checksum=0x0123456789abcdef
 *
 * bytes counts captured bytes (caplen). checksum is FNV-1a 64 (offset basis 0xcbf29ce484222325, prime
 * 0x100000001b3) over, for each packet in order: ts_ns (8 bytes little endian), origlen (4 bytes little
 * endian), caplen (4 bytes little endian), then the caplen data bytes. It is order sensitive, so it checks
 * that every packet arrived, intact and in order (the producer example prints the same line for what it
 * sent). --no-checksum skips it (checksum=0x0000000000000000) to measure the transport alone; --touch then
 * still reads every payload byte (an XOR of 8-byte words, about memory speed), as an inspecting consumer would.
 *
 * --columns receives each batch as columns (pipc_client_receive_columns: timestamps, lengths and offsets in
 * arrays, the payloads one contiguous view of the ring) and gives each batch back whole, in order
 * (pipc_client_release_range): the cheapest way to consume, and what Python's receive_batch does.
 *
 * --poll shows how to plug a client into an event loop (poll/epoll/libevent...): arm the wake-up with
 * pipc_client_prepare_wait(), poll pipc_client_fd(), then receive with timeout 0.
 *
 * Exit status: 0 at a clean end of stream; 1 on an error (the line on stderr names it); 2 on bad usage.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <packet_ipc.h>

#define MAX_BATCH 4096

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

/* Hashes an integer as `bytes` little-endian bytes, whatever the host's byte order. */
static uint64_t fnv1a_le(uint64_t h, uint64_t v, int bytes)
{
    for (int i = 0; i < bytes; i++) {
        h ^= (uint8_t)(v >> (8 * i));
        h *= FNV_PRIME;
    }
    return h;
}

static uint64_t xor_words(const uint8_t *p, size_t n)
{
    uint64_t x = 0, w;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        memcpy(&w, p + i, 8); /* data has no alignment guarantee */
        x ^= w;
    }
    for (; i < n; i++)
        x ^= p[i];
    return x;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static int usage(const char *argv0)
{
    fprintf(stderr, "usage: %s [--poll | --columns] [--json] [--batch N (1..%d)] [--timeout MS] [--no-checksum [--touch]] NAME\n", argv0,
            MAX_BATCH);
    return 2;
}

/* Waits as an event loop would: returns n > 0 packets, 0 at end of stream, or a negative error code. */
static int receive_with_poll(pipc_client *client, struct pipc_packet *packets, size_t max, int timeout_ms)
{
    for (;;) {
        int n = pipc_client_receive(client, packets, max, 0); /* never blocks */
        if (n != -ETIMEDOUT)
            return n;
        /* Nothing there. Arm the wake-up; 0 means packets (or the end) arrived meanwhile: receive again.
         * Arming before polling is what makes the sleep race-free: the server writes the fd only for a client
         * that announced it is going to sleep. */
        if (pipc_client_prepare_wait(client) == 0)
            continue;
        struct pollfd p = {.fd = pipc_client_fd(client), .events = POLLIN};
        int r = poll(&p, 1, timeout_ms);
        if (r < 0 && errno != EINTR)
            return -errno;
        if (r == 0)
            return -ETIMEDOUT; /* an event loop would do other work here and come back */
    }
}

int main(int argc, char **argv)
{
    int use_poll = 0, use_columns = 0, json = 0, checksum_on = 1, touch = 0, timeout_ms = 10000;
    size_t batch = 256;
    const char *name = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--poll"))
            use_poll = 1;
        else if (!strcmp(argv[i], "--columns"))
            use_columns = 1;
        else if (!strcmp(argv[i], "--json"))
            json = 1;
        else if (!strcmp(argv[i], "--no-checksum"))
            checksum_on = 0;
        else if (!strcmp(argv[i], "--touch"))
            touch = 1;
        else if (!strcmp(argv[i], "--batch") && i + 1 < argc)
            batch = strtoul(argv[++i], NULL, 0);
        else if (!strcmp(argv[i], "--timeout") && i + 1 < argc)
            timeout_ms = atoi(argv[++i]);
        else if (argv[i][0] == '-' || name)
            return usage(argv[0]);
        else
            name = argv[i];
    }
    if (!name || batch < 1 || batch > MAX_BATCH || (use_poll && use_columns))
        return usage(argv[0]);
    if (pipc_abi_version() != PACKET_IPC_ABI_VERSION) {
        fprintf(stderr, "consumer: built for ABI %d, library has ABI %d\n", PACKET_IPC_ABI_VERSION, pipc_abi_version());
        return 1;
    }

    pipc_client *client;
    int err = pipc_client_connect(name, timeout_ms, &client);
    if (err < 0) {
        fprintf(stderr, "consumer: cannot connect to %s: %s (%s)\n", name, pipc_strerror(err), pipc_last_error());
        return 1;
    }

    static struct pipc_packet packets[MAX_BATCH];
    uint64_t count = 0, bytes = 0, h = FNV_OFFSET, start = 0, batches = 0, touched = 0;
    int n = 0;
    static uint64_t ts[MAX_BATCH], offsets[MAX_BATCH];
    static uint32_t caplen[MAX_BATCH], origlen[MAX_BATCH];
    struct pipc_received_columns cols = {.struct_bytes = sizeof(cols), .ts_ns = ts, .offsets = offsets,
                                         .caplen = caplen, .origlen = origlen}; /* ifindex, linktype: not wanted */
    while (use_columns) {
        n = pipc_client_receive_columns(client, &cols, batch, timeout_ms);
        if (n == -EINTR)
            continue;
        if (n <= 0)
            break;
        if (!start)
            start = now_ns();
        if (checksum_on)
            for (int i = 0; i < n; i++) {
                h = fnv1a_le(h, ts[i], 8);
                h = fnv1a_le(h, origlen[i], 4);
                h = fnv1a_le(h, caplen[i], 4);
                h = fnv1a(h, cols.data + offsets[i], caplen[i]);
            }
        else if (touch)
            touched ^= xor_words(cols.data, cols.nbytes); /* the whole batch is one contiguous view */
        bytes += cols.nbytes;
        count += (uint64_t)n;
        pipc_client_release_range(client, cols.first_id, (uint64_t)n); /* the whole batch, at once */
    }
    while (!use_columns) {
        n = use_poll ? receive_with_poll(client, packets, batch, timeout_ms)
                     : pipc_client_receive(client, packets, batch, timeout_ms);
        if (n == -EINTR)
            continue; /* a signal interrupted the wait: nothing was lost */
        if (n <= 0)
            break; /* 0: end of stream, everything drained; < 0: an error */
        if (!start)
            start = now_ns();
        for (int i = 0; i < n; i++) {
            const struct pipc_packet *p = &packets[i];
            if (checksum_on) {
                h = fnv1a_le(h, p->ts_ns, 8);
                h = fnv1a_le(h, p->origlen, 4);
                h = fnv1a_le(h, p->caplen, 4);
                h = fnv1a(h, p->data, p->caplen); /* reads the shared ring in place: no copy */
            } else if (touch) {
                touched ^= xor_words(p->data, p->caplen);
            }
            bytes += p->caplen;
        }
        count += (uint64_t)n;
        /* Give the ring space back. Packets may be released in any order; every other batch goes back in
         * reverse, one packet at a time, to show it (a real consumer releases each packet when it is done
         * with it, e.g. after a worker thread's verdict). */
        if (batches++ % 2)
            for (int i = n - 1; i >= 0; i--)
                pipc_client_release(client, &packets[i], 1);
        else
            pipc_client_release(client, packets, (size_t)n);
    }
    uint64_t elapsed = start ? now_ns() - start : 0;
    struct pipc_stats st;
    pipc_client_stats(client, &st);
    if (n < 0) {
        fprintf(stderr, "consumer: receive failed after %" PRIu64 " packets: %s (%s)\n", count, pipc_strerror(n),
                pipc_last_error());
        pipc_client_close(client);
        return 1;
    }
    if (!checksum_on)
        h = 0;
    if (json)
        printf("{\"packets\": %" PRIu64 ", \"bytes\": %" PRIu64 ", \"checksum\": \"0x%016" PRIx64
               "\", \"elapsed_ns\": %" PRIu64 ", \"dropped_packets\": %" PRIu64 ", \"blocked_ns\": %" PRIu64
               ", \"touch\": %" PRIu64 "}\n",
               count, bytes, h, elapsed, st.dropped_packets, st.blocked_ns, touched);
    else
        printf("packets=%" PRIu64 " bytes=%" PRIu64 " checksum=0x%016" PRIx64 "\n", count, bytes, h);
    pipc_client_close(client);
    return 0;
}
