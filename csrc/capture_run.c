/*
 * capture_run.c - pipc_capture_run: the capture loop in C, from libpcap straight into a server's workers.
 *
 * Each turn reads one batch with pipc_capture_next_direct: poll over the interfaces and the break eventfd,
 * then pcap_dispatch, whose callback hashes each packet and copies it once, from libpcap's ring straight into
 * its worker's ring (distribute.c, pipc_direct_*); each ring is published once per pass, and a sleeping
 * worker woken once. No allocation per batch, no per-packet call into the caller.
 *
 * Why from the callback: with TPACKET_V3, one pcap_dispatch goes on from block to block and gives each
 * finished block back to the kernel before it returns, so pointers kept from the callback are not valid once
 * it returns. What a worker's ring cannot take at once (it is full, another thread is sending to it, or the
 * policy is broadcast) is staged in a buffer instead, with that worker's later packets of the pass, and sent
 * after the pass with pipc_server_send_some, which waits or drops as the worker's policy says.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "capture_internal.h"
#include "handshake.h" /* pipc_set_error */
#include "packet_ipc.h"

#define DEFAULT_BATCH 4096u
#define STAGING_MAX (8u << 20) /* staging bytes at most, unless two snaplens need more */

static uint64_t mono_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000u + (uint64_t)t.tv_nsec / 1000000u;
}

/* Hands pk[0..n) to the workers, resuming after signals with exactly the packets not yet dealt with (so each
 * arrives once, in its flow's order). Returns 0, or a negative code with *unsent_left packets not dealt with
 * (compacted to pk[0..*unsent_left)). *written / *bytes count what was dealt with: written, or dropped and
 * counted by a connection whose policy is drop (pipc_server_send_some lists neither as unsent). */
static long deliver(pipc_server *server, struct pipc_packet *pk, size_t n, uint32_t *unsent, uint64_t *written,
                    uint64_t *bytes, size_t *unsent_left)
{
    size_t m = n;
    for (;;) {
        size_t nu = 0;
        long r = pipc_server_send_some(server, pk, m, -1, unsent, &nu);
        int resumable = r >= 0 || r == -EINTR || r == -ETIMEDOUT;
        if (r < 0 && !nu && !resumable) { /* nothing written */
            *unsent_left = m;
            return r;
        }
        if (nu == 0 && r >= 0) { /* all m dealt with */
            *written += m;
            for (size_t i = 0; i < m; i++)
                *bytes += pk[i].caplen;
            return 0;
        }
        if (nu == 0) /* interrupted before writing any: the same packets again */
            continue;
        /* dealt with: every packet not listed in unsent (ascending); keep the unsent ones, in order, at the front */
        size_t k = 0;
        for (size_t i = 0; i < m; i++) {
            if (k < nu && unsent[k] == i) {
                pk[k++] = pk[i];
            } else {
                (*written)++;
                *bytes += pk[i].caplen;
            }
        }
        m = nu;
        if (!resumable) {
            *unsent_left = m;
            return r;
        }
    }
}

static long run(pipc_capture *cap, pipc_server *server, const struct pipc_capture_run_options *options,
               struct pipc_capture_run_result *out)
{
    struct pipc_capture_run_options o = {.struct_bytes = sizeof o};
    if (options) {
        if (options->struct_bytes < sizeof o) {
            pipc_set_error("pipc_capture_run: options->struct_bytes must be sizeof(struct pipc_capture_run_options)");
            return -EINVAL;
        }
        o = *options;
    }
    if (!cap || !server) {
        pipc_set_error("pipc_capture_run: a capture and a server are required");
        return -EINVAL;
    }
    size_t batch = o.batch ? o.batch : DEFAULT_BATCH;
    size_t snaplen = pipc_capture_snaplen_of(cap);
    size_t buf_bytes = batch * 2048 < STAGING_MAX ? batch * 2048 : STAGING_MAX;
    if (buf_bytes < 2 * snaplen)
        buf_bytes = 2 * snaplen;
    struct pipc_packet *pk = malloc(batch * sizeof *pk);
    uint32_t *unsent = malloc(batch * sizeof *unsent);
    uint8_t *buf = malloc(buf_bytes);
    long rc = 0;
    if (!pk || !unsent || !buf) {
        pipc_set_error("pipc_capture_run: out of memory for a batch of %zu packets", batch);
        rc = -ENOMEM;
        goto done;
    }
    uint64_t end = o.duration_ms ? mono_ms() + o.duration_ms : 0;
    /* options->linger_ms, not the capture's: by default no lingering, since libpcap hands over whole kernel
     * blocks (one wake-up each) and a batch costs little in C, so waiting for more would only add wake-ups
     * (measured at 50 k packets/s: 45 % more wake-ups and 20 % more CPU per packet with 30 ms). */
    int linger = pipc_capture_swap_linger(cap, o.linger_ms > 0 ? o.linger_ms : 0);
    pipc_capture_take_break(cap); /* a break consumed by an earlier pipc_capture_next is not this run's */
    while (rc == 0) {
        if (o.count && out->packets >= o.count) {
            rc = PIPC_CAPTURE_STOPPED_COUNT;
            break;
        }
        int wait = -1;
        if (end) {
            uint64_t now = mono_ms();
            if (now >= end) {
                rc = PIPC_CAPTURE_STOPPED_DURATION;
                break;
            }
            wait = end - now > 1000000 ? 1000000 : (int)(end - now);
        }
        size_t want = batch;
        if (o.count && o.count - out->packets < want)
            want = (size_t)(o.count - out->packets);
        uint64_t direct = 0, direct_bytes = 0;
        long n = pipc_capture_next_direct(cap, server, pk, want, buf, buf_bytes, wait, &direct, &direct_bytes);
        out->packets += direct;
        out->bytes += direct_bytes;
        if (n == -ETIMEDOUT)
            continue; /* the duration is checked above */
        if (n == -EINTR) {
            if (pipc_capture_take_break(cap))
                rc = PIPC_CAPTURE_STOPPED_BREAK;
            continue; /* a signal: the caller's handler ran (or will); going on is the caller's to decide */
        }
        if (n < 0) {
            rc = n;
            break;
        }
        if (n == 0) { /* every packet went straight into the workers' rings */
            out->batches += direct > 0;
            continue;
        }
        size_t left = 0;
        uint64_t before = out->packets;
        long r = deliver(server, pk, (size_t)n, unsent, &out->packets, &out->bytes, &left);
        out->staged += out->packets - before;
        if (direct || left < (size_t)n)
            out->batches++;
        if (r < 0) {
            out->not_sent += left;
            rc = r;
        }
    }
    pipc_capture_swap_linger(cap, linger);
done:
    free(pk);
    free(unsent);
    free(buf);
    return rc;
}

long pipc_capture_run(pipc_capture *cap, pipc_server *server, const struct pipc_capture_run_options *options,
                      struct pipc_capture_run_result *out)
{
    struct pipc_capture_run_result r = {.struct_bytes = sizeof r};
    long rc = run(cap, server, options, &r);
    /* A caller built against the first version of the struct (up to not_sent) gets those fields. */
    if (out && out->struct_bytes >= offsetof(struct pipc_capture_run_result, staged)) {
        size_t n = out->struct_bytes < sizeof r ? out->struct_bytes : sizeof r, skip = sizeof r.struct_bytes;
        memcpy((char *)out + skip, (const char *)&r + skip, n - skip);
    }
    return rc;
}
