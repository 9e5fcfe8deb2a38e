/*
 * conn.c - the server's side of one client: writing packets into its ring, waiting for space (spin, then
 * the eventfd), overflow policies, end of stream and abort, and the connection's life (shared by its caller
 * and, while it is a worker, its server).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "atomics.h"
#include "capi_internal.h"
#include "handshake.h"
#include "packet_ipc.h"
#include "ring.h"
#include "wait.h"

#include <pthread.h>
#include <sched.h>
#include <time.h>

static int conn_fail(pipc_conn *c, int err)
{
    if (err == -EPROTO || err == -ECONNRESET)
        set_sticky_error(&c->error, err);
    if (err == -EPROTO)
        pipc_set_error("client corrupted the ring's consumer positions");
    else if (err == -ECONNRESET)
        pipc_set_error("client has gone");
    return err;
}

/* Waits until need_slots/need_bytes are free. 0, or -ETIMEDOUT/-EINTR/-ECONNRESET/-EPROTO. */
static int conn_wait_space(pipc_conn *c, uint64_t need_slots, uint64_t need_bytes, uint64_t deadline)
{
    uint64_t start = pipc_now_ns(), fs, fb;
    int err, r;
    for (unsigned k = 0;; k++) {
        if ((err = pipc_ring_space(&c->ring, &fs, &fb)) < 0)
            return err;
        if (fs >= need_slots && fb >= need_bytes)
            goto done;
        pipc_cpu_relax();
        if ((k & 63) == 63) {
            uint64_t now = pipc_now_ns();
            if (now - start > PIPC_SPIN_NS || now >= deadline || is_closing(&c->closing))
                break;
        }
    }
    if (pipc_now_ns() >= deadline) { /* timeout 0: never sleep */
        r = -ETIMEDOUT;
        goto out;
    }
    for (;;) {
        int sleep = pipc_ring_producer_arm(&c->ring, need_slots, need_bytes);
        r = sleep ? pipc_wait(c->ev_space, c->sock, deadline) : PIPC_WAIT_EVENT;
        pipc_ring_producer_disarm(&c->ring);
        if (is_closing(&c->closing)) {
            pipc_set_error("connection closed by another thread");
            r = -EPIPE;
            goto out;
        }
        if (r == PIPC_WAIT_PEER) {
            r = pipc_peer_gone(c->sock) ? -ECONNRESET : -EPROTO;
            goto out;
        }
        if (r < 0)
            goto out;
        if ((err = pipc_ring_space(&c->ring, &fs, &fb)) < 0)
            return err;
        if (fs >= need_slots && fb >= need_bytes)
            goto done;
        if (pipc_now_ns() >= deadline) {
            r = -ETIMEDOUT;
            goto out;
        }
    }
done:
    count(&c->stats.blocked_ns, pipc_now_ns() - start);
    return 0;
out:
    count(&c->stats.blocked_ns, pipc_now_ns() - start);
    return r;
}

static int conn_check(pipc_conn *c)
{
    int err = sticky_error(&c->error);
    if (err)
        return err;
    if (is_closing(&c->closing)) {
        pipc_set_error("connection closed by another thread");
        return -EPIPE;
    }
    if (c->ended) {
        pipc_set_error("send after end of stream");
        return -EPIPE;
    }
    return 0;
}

/* Publishes what was put in the ring (waking the client if it sleeps) and counts it as sent. */
static void conn_publish(pipc_conn *c, uint64_t packets, uint64_t bytes)
{
    if (pipc_ring_publish(&c->ring))
        pipc_wake(c->ev_data);
    count(&c->stats.packets, packets);
    count(&c->stats.bytes, bytes);
}

/* This thread's tag: the address of a thread-local byte, distinct among live threads. */
static _Thread_local char thread_tag;

/* Takes the connection's lock for a send, end or abort, also waiting (up to deadline) while another thread
 * holds a reservation (pipc_conn_reserve does not keep the lock between reserve and commit, so a commit may
 * come from any thread). -EBUSY if this very thread holds it: it would wait for itself. */
static int conn_lock(pipc_conn *c, uint64_t deadline)
{
    for (unsigned k = 0;; k++) {
        int err = pipc_lock_until(&c->lock, deadline, "connection");
        if (err || !c->reserved)
            return err;
        int mine = c->reserver == &thread_tag;
        pthread_mutex_unlock(&c->lock);
        if (mine) {
            pipc_set_error("this thread holds a reservation on the connection: commit it first");
            return -EBUSY;
        }
        if (is_closing(&c->closing)) {
            pipc_set_error("connection closed by another thread");
            return -EPIPE;
        }
        if (deadline != UINT64_MAX && pipc_now_ns() >= deadline) {
            pipc_set_error("another thread holds a reservation on the connection past the timeout");
            return -ETIMEDOUT;
        }
        if (k < 64) {
            sched_yield();
        } else {
            struct timespec ts = {0, 20000}; /* 20 us: a reservation is held while its packets are built */
            nanosleep(&ts, NULL);
        }
    }
}

static long conn_send_locked(pipc_conn *c, const struct pipc_packet *pk, size_t n, uint64_t deadline,
                             int checked, size_t *written_out);

/* Under PIPC_OVERFLOW_DROP, the rest of a send did not fit: counted as dropped (ring and connection), and now and
 * then a look whether the client is still there. 0, or the connection's failure. */
static int conn_drop_rest(pipc_conn *c, uint64_t packets, uint64_t bytes)
{
    pipc_ring_count_drop(&c->ring, packets, bytes);
    count(&c->stats.dropped_packets, packets);
    count(&c->stats.dropped_bytes, bytes);
    uint64_t now = pipc_now_ns();
    if (now - c->last_alive_check_ns > ALIVE_CHECK_NS) {
        c->last_alive_check_ns = now;
        if (pipc_peer_gone(c->sock))
            return conn_fail(c, -ECONNRESET);
    }
    return 0;
}

/* Under PIPC_OVERFLOW_BLOCK, waits for room for the next packet (one descriptor, `bytes`). 0, -ETIMEDOUT (with
 * its message), -EINTR / -EPIPE, or the connection's failure. */
static int conn_wait_room(pipc_conn *c, uint64_t bytes, uint64_t deadline)
{
    int err = conn_wait_space(c, 1, bytes, deadline);
    if (err == -ETIMEDOUT)
        pipc_set_error("ring full: no space within the timeout");
    else if (err && err != -EINTR && err != -EPIPE)
        err = conn_fail(c, err);
    return err;
}

long pipc_conn_send(pipc_conn *c, const struct pipc_packet *pk, size_t n, int timeout_ms)
{
    uint64_t deadline = pipc_deadline(timeout_ms);
    size_t written = 0;
    int err = pipc_conn_send_until(c, pk, n, deadline, 0, &written);
    if (!err || (written && (err == -ETIMEDOUT || err == -EINTR || err == -EPIPE)))
        return (long)written;
    return err;
}

int pipc_conn_send_until(pipc_conn *c, const struct pipc_packet *pk, size_t n, uint64_t deadline, int checked,
                         size_t *written)
{
    *written = 0;
    int err = conn_lock(c, deadline);
    if (err)
        return err;
    long r = conn_send_locked(c, pk, n, deadline, checked, written);
    pthread_mutex_unlock(&c->lock);
    return (int)r;
}

/* Returns 0 with *written == n, or the error that stopped it with *written packets written before it. */
static long conn_send_locked(pipc_conn *c, const struct pipc_packet *pk, size_t n, uint64_t deadline,
                             int checked, size_t *written_out)
{
    int err = conn_check(c);
    if (err)
        return err;
    /* Half the ring at most (see pipc_ring_take: a consumer holding one batch must never stall us), 16-bit
     * linktypes: checked before anything is written (by the server-level send, once for all its workers). */
    if (!checked && (err = pipc_ring_check_packets(pk, n, c->ring.payload_bytes, c->snaplen)) < 0)
        return err;
    size_t i = 0, written = 0;
    while (i < n) {
        uint64_t fs, fb;
        if ((err = pipc_ring_space(&c->ring, &fs, &fb)) < 0) {
            err = conn_fail(c, err);
            break;
        }
        size_t j = i;
        uint64_t bytes = 0;
        while (j < n && j - i < fs && bytes + pk[j].caplen <= fb)
            bytes += pk[j++].caplen;
        if (j > i) {
            pipc_ring_put(&c->ring, pk + i, j - i, c->linktype);
            conn_publish(c, j - i, bytes);
            written += j - i;
            i = j;
            continue;
        }
        if (c->overflow == PIPC_OVERFLOW_DROP) {
            uint64_t dropped_bytes = 0;
            for (j = i; j < n; j++)
                dropped_bytes += pk[j].caplen;
            err = conn_drop_rest(c, n - i, dropped_bytes);
            break;
        }
        if ((err = conn_wait_room(c, pk[i].caplen, deadline)))
            break;
    }
    *written_out = written;
    return err;
}

/* ---------------- columnar send ---------------- */

/* The checks pipc_ring_check_packets makes, over columns: one branch-free pass (it vectorises), and the
 * per-packet pass only to name the first bad packet ("packet 3 has ...", or for a commit "reserved packet 3:
 * has ..."). *total: the packets' bytes. 0 or -EINVAL / -EMSGSIZE. */
static int check_columns(const pipc_conn *c, const struct pipc_columns *k, size_t n, uint64_t *total, int reserved)
{
    uint32_t largest = 0, wide = 0;
    uint64_t sum = 0;
    for (size_t i = 0; i < n; i++) {
        largest = k->caplen[i] > largest ? k->caplen[i] : largest;
        sum += k->caplen[i];
    }
    *total = sum;
    if (k->linktype)
        for (size_t i = 0; i < n; i++)
            wide |= (k->linktype[i] > 0xffff) & (k->linktype[i] != PIPC_LINKTYPE_DEFAULT);
    if (!wide && largest <= pipc_ring_max_packet_bytes(c->ring.payload_bytes, c->snaplen))
        return 0;
    for (size_t i = 0; i < n; i++) {
        struct pipc_packet p = {.caplen = k->caplen[i], .linktype = k->linktype ? k->linktype[i] : PIPC_LINKTYPE_DEFAULT};
        int err = pipc_ring_check_packets(&p, 1, c->ring.payload_bytes, c->snaplen);
        if (err < 0) {
            char why[256];
            snprintf(why, sizeof(why), "%s", pipc_last_error());
            pipc_set_error(reserved ? "reserved packet %zu: %s" : "packet %zu %s", i,
                           why + (strncmp(why, "packet 0 ", 9) ? 0 : 9));
            return err;
        }
    }
    return 0;
}

static long conn_send_columns_locked(pipc_conn *c, const struct pipc_columns *k, size_t n, uint64_t deadline,
                                     size_t *written_out)
{
    uint64_t total;
    int err = conn_check(c);
    if (err || (err = check_columns(c, k, n, &total, 0)) < 0)
        return err;
    size_t i = 0;
    uint64_t off = 0; /* where packet i's bytes start in k->data */
    while (i < n) {
        uint64_t fs, fb;
        if ((err = pipc_ring_space(&c->ring, &fs, &fb)) < 0) {
            err = conn_fail(c, err);
            break;
        }
        size_t j = i, stop = n - i < fs ? n : i + (size_t)fs;
        uint64_t bytes = 0;
        if (stop == n && total - off <= fb) /* the rest fits: no scan */
            j = n, bytes = total - off;
        while (j < stop && bytes + k->caplen[j] <= fb)
            bytes += k->caplen[j++];
        if (j > i) {
            memcpy(pipc_ring_write_ptr(&c->ring), k->data + off, bytes); /* the mirror: contiguous */
            pipc_ring_put_columns(&c->ring, j - i, k->ts_ns + i, k->caplen + i, k->origlen ? k->origlen + i : NULL,
                                  k->ifindex ? k->ifindex + i : NULL, k->linktype ? k->linktype + i : NULL,
                                  c->linktype);
            conn_publish(c, j - i, bytes);
            off += bytes;
            i = j;
            continue;
        }
        if (c->overflow == PIPC_OVERFLOW_DROP) {
            uint64_t dropped_bytes = 0;
            for (j = i; j < n; j++)
                dropped_bytes += k->caplen[j];
            err = conn_drop_rest(c, n - i, dropped_bytes);
            break;
        }
        if ((err = conn_wait_room(c, k->caplen[i], deadline)))
            break;
    }
    *written_out = i;
    return err;
}

long pipc_conn_send_columns(pipc_conn *c, const struct pipc_columns *k, size_t n, int timeout_ms)
{
    if (!k || k->struct_bytes < sizeof(*k) || (n && (!k->ts_ns || !k->caplen || !k->data))) {
        pipc_set_error("pipc_conn_send_columns: struct_bytes must be sizeof(struct pipc_columns), and ts_ns, caplen "
                       "and data set");
        return -EINVAL;
    }
    uint64_t deadline = pipc_deadline(timeout_ms);
    size_t written = 0;
    int err = conn_lock(c, deadline);
    if (err)
        return err;
    err = (int)conn_send_columns_locked(c, k, n, deadline, &written);
    pthread_mutex_unlock(&c->lock);
    if (!err || (written && (err == -ETIMEDOUT || err == -EINTR || err == -EPIPE)))
        return (long)written;
    return err;
}

/* ---------------- direct writes (distribute.c: the live capture's one copy) ---------------- */

int pipc_conn_direct_open(pipc_conn *c, uint64_t *free_slots, uint64_t *free_bytes)
{
    if (pthread_mutex_trylock(&c->lock) != 0)
        return -EBUSY; /* another thread is sending on it: this pass stages its packets instead */
    int err = c->reserved ? -EBUSY : conn_check(c);
    if (!err)
        err = pipc_ring_space(&c->ring, free_slots, free_bytes); /* -EPROTO: left to the staged path to report */
    if (err)
        pthread_mutex_unlock(&c->lock);
    return err;
}

void pipc_conn_direct_close(pipc_conn *c, size_t packets, uint64_t bytes)
{
    if (packets)
        conn_publish(c, packets, bytes);
    pthread_mutex_unlock(&c->lock);
}

/* ---------------- zero-copy send: reserve, build in place, commit ---------------- */

int pipc_conn_reserve(pipc_conn *c, size_t n_packets, uint64_t n_bytes, int timeout_ms, struct pipc_reservation *res)
{
    uint64_t deadline = pipc_deadline(timeout_ms);
    memset(res, 0, sizeof(*res));
    int err = conn_lock(c, deadline);
    if (err)
        return err;
    if ((err = conn_check(c)))
        goto out;
    /* At most half the ring, as for one take (pipc_ring_half): a consumer holding its previous batch never
     * keeps the space from us. */
    uint64_t max_slots = pipc_ring_half(c->ring.slot_count), max_bytes = pipc_ring_half(c->ring.payload_bytes);
    if (n_packets == 0 || n_packets > max_slots || n_bytes > max_bytes) {
        pipc_set_error("a reservation takes 1 to %llu packets and at most %llu bytes (half the ring)",
                       (unsigned long long)max_slots, (unsigned long long)max_bytes);
        err = n_packets == 0 ? -EINVAL : -EMSGSIZE;
        goto out;
    }
    if (c->res_cap < n_packets) {
        void *cols = realloc(c->res_cols, n_packets * (sizeof(uint64_t) + 4 * sizeof(uint32_t)));
        if (!cols) {
            err = -ENOMEM;
            goto out;
        }
        c->res_cols = cols;
        c->res_cap = n_packets;
    }
    uint64_t fs, fb;
    if ((err = pipc_ring_space(&c->ring, &fs, &fb)) < 0) {
        err = conn_fail(c, err);
        goto out;
    }
    if (fs < n_packets || fb < n_bytes) {
        if (c->overflow == PIPC_OVERFLOW_DROP) { /* never waits: what the caller had to send is dropped */
            pipc_ring_count_drop(&c->ring, n_packets, n_bytes);
            count(&c->stats.dropped_packets, n_packets);
            count(&c->stats.dropped_bytes, n_bytes);
            pipc_set_error("ring full: the reservation's %zu packets were counted as dropped", n_packets);
            err = -ENOBUFS;
            goto out;
        }
        err = conn_wait_space(c, n_packets, n_bytes, deadline);
        if (err == -ETIMEDOUT)
            pipc_set_error("ring full: no space within the timeout");
        else if (err && err != -EINTR && err != -EPIPE)
            err = conn_fail(c, err);
        if (err)
            goto out;
    }
    /* Columns start as "nothing set": zero times, lengths and interfaces, the server's linktype. */
    uint64_t *ts = c->res_cols;
    uint32_t *cols = (uint32_t *)(ts + c->res_cap);
    memset(ts, 0, n_packets * sizeof(*ts));
    memset(cols, 0, 3 * c->res_cap * sizeof(*cols));
    memset(cols + 3 * c->res_cap, 0xff, n_packets * sizeof(*cols)); /* PIPC_LINKTYPE_DEFAULT */
    res->n_packets = n_packets;
    res->n_bytes = n_bytes;
    res->data = pipc_ring_write_ptr(&c->ring);
    res->ts_ns = ts;
    res->caplen = cols;
    res->origlen = cols + c->res_cap;
    res->ifindex = cols + 2 * c->res_cap;
    res->linktype = cols + 3 * c->res_cap;
    c->reserved = 1;
    c->reserver = &thread_tag;
    c->res_packets = n_packets;
    c->res_bytes = n_bytes;
out:
    pthread_mutex_unlock(&c->lock);
    return err;
}

long pipc_conn_commit(pipc_conn *c, size_t n)
{
    pthread_mutex_lock(&c->lock);
    long r;
    if (!c->reserved) {
        pipc_set_error("no reservation is open on this connection");
        r = -EINVAL;
        goto out;
    }
    if (n == 0) { /* abandoned: nothing was published, the bytes written are overwritten by the next send */
        c->reserved = 0;
        r = 0;
        goto out;
    }
    uint64_t *ts = c->res_cols;
    uint32_t *cols = (uint32_t *)(ts + c->res_cap);
    const uint32_t *caplen = cols, *linktype = cols + 3 * c->res_cap;
    if (n > c->res_packets) {
        pipc_set_error("commit of %zu packets, the reservation holds %zu", n, c->res_packets);
        r = -EINVAL;
        goto out;
    }
    /* Checked as a send checks its packets; the reservation stays open when they fail (fix, or commit 0). */
    const struct pipc_columns k = {.struct_bytes = sizeof(k), .ts_ns = ts, .caplen = caplen, .linktype = linktype};
    uint64_t bytes;
    if ((r = check_columns(c, &k, n, &bytes, 1)) < 0)
        goto out;
    if (bytes > c->res_bytes) {
        pipc_set_error("the %zu packets hold %llu bytes, the reservation %llu", n, (unsigned long long)bytes,
                       (unsigned long long)c->res_bytes);
        r = -EMSGSIZE;
        goto out;
    }
    c->reserved = 0;
    if ((r = conn_check(c)) < 0) /* shut down, ended or failed meanwhile: abandoned */
        goto out;
    pipc_ring_put_columns(&c->ring, n, ts, caplen, cols + c->res_cap, cols + 2 * c->res_cap, linktype, c->linktype);
    conn_publish(c, n, bytes);
    r = (long)n;
out:
    pthread_mutex_unlock(&c->lock);
    return r;
}

/* End of stream (PIPC_STATE_END) or abort: after the sends in progress on other threads. */
static int conn_finish(pipc_conn *c, uint32_t state)
{
    int err = conn_lock(c, UINT64_MAX);
    if (err == -EBUSY)
        return err;
    if (err) /* -EPIPE: shut down while another thread held a reservation; the close ends the stream */
        pipc_lock_until(&c->lock, UINT64_MAX, "connection");
    err = sticky_error(&c->error);
    if (!err && !c->ended) { /* after end of stream, an abort is too late to say otherwise */
        pipc_store_relaxed_int(&c->ended, 1); /* SYNC:ended - read by pipc_conn_info from any thread */
        if (pipc_ring_set_state(&c->ring, state))
            pipc_wake(c->ev_data);
    }
    pthread_mutex_unlock(&c->lock);
    return err;
}

int pipc_conn_end(pipc_conn *c) { return conn_finish(c, PIPC_STATE_END); }
int pipc_conn_abort(pipc_conn *c) { return conn_finish(c, PIPC_STATE_ABORTED); }

void pipc_conn_shutdown(pipc_conn *c)
{
    set_closing(&c->closing);
    if (c->ev_space >= 0)
        pipc_wake(c->ev_space); /* our own sleeper waits on it for space */
}

void pipc_conn_info(const pipc_conn *c, struct pipc_conn_info *info)
{
    struct pipc_conn_info i = {.struct_bytes = sizeof(i), .peer_pid = c->peer_pid, .overflow = c->overflow,
                               .ended = pipc_load_relaxed_int(&c->ended) /* SYNC:ended */, .index = c->index};
    size_t n = info->struct_bytes < sizeof(i) ? info->struct_bytes : sizeof(i);
    memcpy(info, &i, n);
    info->struct_bytes = n;
}

int pipc_conn_alive(pipc_conn *c)
{
    /* SYNC:closed - acquire: pairs with the release in pipc_conn_close */
    if (sticky_error(&c->error) == -ECONNRESET || pipc_load_acquire_int(&c->closed) || c->sock < 0)
        return 0;
    if (pipc_peer_gone(c->sock)) {
        set_sticky_error(&c->error, -ECONNRESET);
        return 0;
    }
    return 1;
}

void pipc_conn_stats(const pipc_conn *c, struct pipc_stats *st)
{
    memset(st, 0, sizeof(*st));
    load_stats(&c->stats, st);
    const struct pipc_ring *r = &c->ring;
    if (r->hdr) {
        /* From shared positions and counters only: a send may be running on another thread. Payload
         * positions start at 0, so the bytes sent are the producer's payload position. */
        struct pipc_ring_counters rc;
        pipc_ring_counters(r, &rc);
        st->ring_used_slots = rc.read_slot <= rc.write_slot ? rc.write_slot - rc.read_slot : 0;
        st->ring_used_bytes = rc.read_payload <= st->bytes ? st->bytes - rc.read_payload : 0;
    }
    st->ring_bytes = r->payload_bytes;
    st->ring_slots = r->slot_count;
}

int pipc_conn_fd(const pipc_conn *c) { return c->ev_space; }
int pipc_conn_socket(const pipc_conn *c) { return c->sock; }

int pipc_conn_prepare_wait(pipc_conn *c, uint64_t need_bytes)
{
    return pipc_ring_producer_arm(&c->ring, 1, need_bytes);
}

void pipc_conn_finish_wait(pipc_conn *c)
{
    uint64_t v;
    pipc_ring_producer_disarm(&c->ring);
    if (read(c->ev_space, &v, sizeof(v)) < 0) {
    }
}

/* The ring and the fds (idempotent). Under the connection's lock when others may still reach it. */
static void conn_release_resources(pipc_conn *c)
{
    pipc_ring_destroy(&c->ring);
    pipc_close_fd(&c->sock);
    pipc_close_fd(&c->memfd);
    pipc_close_fd(&c->ev_data);
    pipc_close_fd(&c->ev_space);
    free(c->res_cols);
    c->res_cols = NULL;
    c->res_cap = 0;
}

void pipc_conn_close(pipc_conn *c)
{
    if (!c)
        return;
    /* A send waiting for space on it (a server-level send, say) gives up at once rather than hold us. */
    pipc_conn_shutdown(c);
    pipc_lock_until(&c->lock, UINT64_MAX, "connection");
    c->reserved = 0; /* an open reservation is abandoned: nothing of it was published */
    /* A close without send(None) still ends the stream cleanly: the client drains, then sees the end. A
     * forked child's copy must not end its parent's stream. */
    if (c->ring.hdr && !sticky_error(&c->error) && !c->ended && c->generation == pipc_fork_generation() &&
        pipc_ring_set_state(&c->ring, PIPC_STATE_END) && c->ev_data >= 0)
        pipc_wake(c->ev_data);
    pipc_store_relaxed_int(&c->ended, 1); /* SYNC:ended - read by pipc_conn_info from any thread */
    pipc_store_release_int(&c->closed, 1); /* SYNC:closed - the server drops it from its workers */
    conn_release_resources(c); /* now, even while the server still holds the object */
    pthread_mutex_unlock(&c->lock);
    pipc_conn_unref(c);
}

/* Drops one reference (the caller's, or the server's when the worker leaves); the last frees everything. */
void pipc_conn_unref(pipc_conn *c)
{
    if (pipc_sub_fetch_acq_rel_int(&c->refs, 1) > 0) /* SYNC:refs - the last one out sees the others' writes */
        return;
    conn_release_resources(c);
    pthread_mutex_destroy(&c->lock);
    free(c);
}
