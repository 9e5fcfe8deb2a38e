/* event_loop.c - one thread, one poll loop, both sides: a server accepts two clients and distributes packets to
 * them by flow while the clients connect and receive in the same loop. Exercises the C ABI for event loops:
 * pipc_client_connect_start/_fd/_finish, pipc_server_fd + pipc_server_pending_fd + pipc_server_accept(.., 0, ..),
 * pipc_server_send_nowait + pipc_conn_prepare_wait/_fd/_socket/_finish_wait, pipc_client_prepare_wait/_fd.
 * Checks every packet arrives exactly once and each flow in order, and that a stalled send names the worker
 * whose ring is full; prints "ok packets=A+B stalls=K threads=T".
 * Usage: event_loop [packets]   (tests/test_c_event_loop.py) */
#include <packet_ipc.h>

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FLOWS 64
#define FRAME 60

static int fail(const char *what, long err)
{
    fprintf(stderr, "event_loop: %s: %s (%s)\n", what, pipc_strerror((int)err), pipc_last_error());
    return 1;
}

/* An Ethernet/IPv4/UDP frame of flow f carrying sequence number seq (both directions alternate). */
static void frame(uint8_t *b, unsigned f, uint32_t seq)
{
    static const uint8_t head[] = {2, 2, 2, 2, 2, 2, 4, 4, 4, 4, 4, 4, 8, 0, 0x45, 0, 0, 46, 0, 0, 0, 0, 64, 17, 0, 0};
    memset(b, 0, FRAME);
    memcpy(b, head, sizeof(head));
    uint8_t a[4] = {10, 0, 0, (uint8_t)f}, c[4] = {192, 168, 1, 1};
    int fwd = seq % 2 == 0;
    memcpy(b + 26, fwd ? a : c, 4);
    memcpy(b + 30, fwd ? c : a, 4);
    uint16_t p1 = (uint16_t)(1024 + f), p2 = 80, s = fwd ? p1 : p2, d = fwd ? p2 : p1;
    b[34] = (uint8_t)(s >> 8), b[35] = (uint8_t)s, b[36] = (uint8_t)(d >> 8), b[37] = (uint8_t)d;
    memcpy(b + 42, &seq, 4);
}

struct worker {
    pipc_client_pending *pending;
    pipc_client *client;
    uint32_t last[FLOWS]; /* last sequence number seen per flow, + 1 */
    long got;
    int ended;
};

/* Receives what is there without waiting; checks order per flow and marks each sequence number. */
static int drain(struct worker *w, uint8_t *seen, uint32_t n)
{
    struct pipc_packet pk[256];
    for (;;) {
        int r = pipc_client_receive(w->client, pk, 256, 0);
        if (r == -ETIMEDOUT)
            return 0;
        if (r == 0) {
            w->ended = 1;
            return 0;
        }
        if (r < 0)
            return fail("receive", r);
        for (int i = 0; i < r; i++) {
            uint32_t seq;
            memcpy(&seq, pk[i].data + 42, 4);
            unsigned f = pk[i].data[29] == 1 ? pk[i].data[33] : pk[i].data[29];
            if (seq >= n || seen[seq]++ || (w->last[f % FLOWS] && seq < w->last[f % FLOWS])) {
                fprintf(stderr, "event_loop: packet %u twice, out of its flow's order or unknown\n", seq);
                return 1;
            }
            w->last[f % FLOWS] = seq + 1;
        }
        w->got += r;
        pipc_client_release(w->client, pk, (size_t)r);
    }
}

int main(int argc, char **argv)
{
    uint32_t n = argc > 1 ? (uint32_t)strtoul(argv[1], NULL, 10) : 20000;
    struct pipc_server_options so = {sizeof(so), 1 << 14, 0, 1, 0, PIPC_OVERFLOW_BLOCK, 0, PIPC_DISTRIBUTION_FLOW};
    pipc_server *s;
    long r = pipc_server_create(NULL, &so, &s);
    if (r < 0)
        return fail("create", r);
    struct worker w[2];
    memset(w, 0, sizeof(w));
    pipc_conn *conns[2] = {NULL, NULL};
    int accepted = 0, connected = 0;
    pipc_client_pending *dropped;
    if ((r = pipc_client_connect_start("/nonexistent-dir/packet-ipc", NULL, &dropped)) != -ENOENT)
        return fail("connect_start to no server gave", r);
    /* A connect dropped before the server answered: the server counts a failed handshake and goes on. */
    if ((r = pipc_client_connect_start(pipc_server_name(s), NULL, &dropped)) < 0)
        return fail("connect_start", r);
    pipc_client_connect_cancel(dropped);
    for (int i = 0; i < 2; i++)
        if ((r = pipc_client_connect_start(pipc_server_name(s), NULL, &w[i].pending)) < 0)
            return fail("connect_start", r);
    while (accepted < 2 || connected < 2) { /* both handshakes, interleaved in one loop */
        struct pollfd p[3];
        int np = 0;
        int pending = pipc_server_pending_fd(s);
        p[np++] = (struct pollfd){pending >= 0 ? pending : pipc_server_fd(s), POLLIN, 0};
        for (int i = 0; i < 2; i++)
            if (w[i].pending)
                p[np++] = (struct pollfd){pipc_client_connect_fd(w[i].pending), POLLIN, 0};
        if (poll(p, (nfds_t)np, 5000) <= 0)
            return fail("poll (handshakes)", -ETIMEDOUT);
        if (accepted < 2 && (r = pipc_server_accept(s, 0, &conns[accepted])) == 0)
            accepted++;
        else if (r < 0 && r != -ETIMEDOUT)
            return fail("accept", r);
        for (int i = 0; i < 2; i++) {
            if (!w[i].pending)
                continue;
            r = pipc_client_connect_finish(w[i].pending, &w[i].client);
            if (r == 0) {
                w[i].pending = NULL;
                connected++;
            } else if (r != -EAGAIN)
                return fail("connect_finish", r);
        }
    }
    struct pipc_server_stats ss = {.struct_bytes = sizeof(ss)};
    pipc_server_stats(s, &ss);
    if (ss.accepted != 2 || ss.handshake_failures != 1)
        return fail("the dropped connect was not counted as one failed handshake", -EINVAL);
    struct pipc_packet *pk = calloc(n, sizeof(*pk));
    uint8_t *frames = calloc(n, FRAME), *seen = calloc(n, 1);
    uint32_t *unsent = calloc(n, sizeof(uint32_t)), *todo = calloc(n, sizeof(uint32_t));
    struct pipc_packet *part = calloc(n, sizeof(*part));
    if (!pk || !frames || !seen || !unsent || !todo || !part)
        return fail("calloc", -ENOMEM);
    for (uint32_t i = 0; i < n; i++) {
        frame(frames + (size_t)i * FRAME, i % FLOWS, i);
        pk[i] = (struct pipc_packet){.ts_ns = i, .caplen = FRAME, .origlen = FRAME, .linktype = PIPC_LINKTYPE_DEFAULT,
                                     .data = frames + (size_t)i * FRAME};
        todo[i] = i;
    }
    size_t m = n;
    long stalls = 0;
    while (m > 0) { /* send what fits; when a worker's ring is full, wait on that worker and on the receivers */
        for (size_t k = 0; k < m; k++)
            part[k] = pk[todo[k]];
        size_t n_unsent = 0;
        uint32_t stalled;
        uint64_t need;
        r = pipc_server_send_nowait(s, part, m, unsent, &n_unsent, &stalled, &need);
        if (r < 0 && r != -ETIMEDOUT)
            return fail("send_nowait", r);
        for (size_t k = 0; k < n_unsent; k++)
            unsent[k] = todo[unsent[k]];
        memcpy(todo, unsent, n_unsent * sizeof(uint32_t));
        m = n_unsent;
        if (m == 0)
            break;
        /* A worker's ring is full: it must be the one named, with no room for `need` bytes (its client has not
         * read yet: in this one thread nothing reads while we send). Arm its wake-up, let both clients read,
         * and its space eventfd must have become readable: the wake-up an event loop would sleep on. */
        stalls++;
        if (stalled >= 2 || !need)
            return fail("send_nowait named no stalled worker", -EINVAL);
        pipc_conn *c = conns[stalled];
        if (!pipc_conn_prepare_wait(c, need))
            return fail("the stalled worker had room after all", -EINVAL);
        for (int i = 0; i < 2; i++)
            if (drain(&w[i], seen, n))
                return 1;
        struct pollfd p = {pipc_conn_fd(c), POLLIN, 0};
        if (poll(&p, 1, 0) != 1)
            return fail("no wake-up on the stalled worker's fd after its client read", -EINVAL);
        pipc_conn_finish_wait(c);
    }
    pipc_server_end(s);
    while (!w[0].ended || !w[1].ended)
        for (int i = 0; i < 2; i++)
            if (!w[i].ended && drain(&w[i], seen, n))
                return 1;
    for (uint32_t i = 0; i < n; i++)
        if (seen[i] != 1) {
            fprintf(stderr, "event_loop: packet %u arrived %u times\n", i, seen[i]);
            return 1;
        }
    char line[256];
    int threads = 0;
    FILE *st = fopen("/proc/self/status", "r");
    while (st && fgets(line, sizeof(line), st))
        if (sscanf(line, "Threads: %d", &threads) == 1)
            break;
    if (st)
        fclose(st);
    printf("ok packets=%ld+%ld stalls=%ld threads=%d\n", w[0].got, w[1].got, stalls, threads);
    for (int i = 0; i < 2; i++) {
        pipc_client_close(w[i].client);
        pipc_conn_close(conns[i]);
    }
    pipc_server_close(s);
    free(pk), free(frames), free(seen), free(unsent), free(todo), free(part);
    return 0;
}
