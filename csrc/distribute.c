/*
 * distribute.c - many workers behind one server: the server-level send (include/packet_ipc.h,
 * pipc_server_send) spreads packets over the live connections by flow, round robin or broadcast.
 *
 * Flow: the symmetric flow hash (flowhash.c) picks one of PIPC_FLOW_BUCKETS buckets, and the bucket table
 * names the worker. A joining worker takes every n-th bucket of each worker (1/n of everyone's flows, no
 * more); a leaving worker's buckets go round robin to the survivors, and no other flow moves. Fragments
 * follow their datagram's first fragment (the fragment table). Each worker's packets are written in their
 * order, one pipc_conn_send per worker, so each flow keeps its order.
 *
 * A worker found dead (its socket hung up, or a send to it failed with -ECONNRESET) leaves at once: the
 * packets of the call not yet written to it go to the survivors; what sat unread in its ring is counted as
 * lost. A worker that was closed or ended by the caller leaves without loss. Liveness is looked at every
 * PIPC_LIVENESS_CHECK_NS and whenever a wait fails, so the fast path makes no system call per batch.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "atomics.h"
#include "capi_internal.h"
#include "handshake.h"
#include "wait.h"

int pipc_dist_init(struct pipc_distributor *d, int policy)
{
    memset(d, 0, sizeof(*d));
    if (policy != PIPC_DISTRIBUTION_FLOW && policy != PIPC_DISTRIBUTION_ROUND_ROBIN &&
        policy != PIPC_DISTRIBUTION_BROADCAST) {
        pipc_set_error("unknown distribution policy %d", policy);
        return -EINVAL;
    }
    d->policy = policy;
    pthread_mutex_init(&d->lock, NULL);
    pthread_mutex_init(&d->set_lock, NULL);
    return 0;
}

void pipc_dist_destroy(struct pipc_distributor *d)
{
    for (size_t i = 0; i < d->n_workers; i++)
        pipc_conn_unref(d->workers[i]);
    free(d->workers);
    free(d->hash);
    free(d->todo);
    free(d->retry);
    free(d->owner);
    free(d->part);
    free(d->windows);
    pthread_mutex_destroy(&d->lock);
    pthread_mutex_destroy(&d->set_lock);
    memset(d, 0, sizeof(*d));
}

/* A joining worker takes every n-th bucket of each existing worker: 1/n of everyone's flows, no more. */
static void rebalance_join(struct pipc_distributor *d)
{
    size_t n = d->n_workers;
    if (n == 1) {
        memset(d->table, 0, sizeof(d->table));
        return;
    }
    uint32_t seen[65536 / 64]; /* bounded: at most 65535 workers share one table of 16-bit entries */
    uint32_t *count = n <= sizeof(seen) / sizeof(seen[0]) ? seen : calloc(n, sizeof(uint32_t));
    if (!count)
        return; /* out of memory: the newcomer gets no flows until the next change; nothing is lost */
    memset(count, 0, (n <= sizeof(seen) / sizeof(seen[0]) ? n : 0) * sizeof(uint32_t));
    for (size_t b = 0; b < PIPC_FLOW_BUCKETS; b++) {
        uint16_t w = d->table[b];
        if (++count[w] % n == 0)
            d->table[b] = (uint16_t)(n - 1);
    }
    if (count != seen)
        free(count);
}

/* The worker at `position` has left: its buckets go round robin to the survivors; indices above shift. */
static void rebalance_leave(struct pipc_distributor *d, size_t position)
{
    size_t n = d->n_workers, k = 0;
    for (size_t b = 0; b < PIPC_FLOW_BUCKETS; b++) {
        uint16_t w = d->table[b];
        if (w == position)
            d->table[b] = (uint16_t)(n ? k++ % n : 0);
        else if (w > position)
            d->table[b] = (uint16_t)(w - 1);
    }
}

int pipc_dist_join(struct pipc_distributor *d, pipc_conn *conn)
{
    pthread_mutex_lock(&d->lock);
    int err = 0;
    if (d->n_workers >= 65535) {
        pipc_set_error("a server distributes over at most 65535 workers");
        err = -ENOSPC;
    } else if (d->n_workers == d->cap_workers) {
        size_t cap = d->cap_workers ? 2 * d->cap_workers : 8;
        pipc_conn **w = realloc(d->workers, cap * sizeof(*w));
        if (!w)
            err = -ENOMEM;
        else {
            d->workers = w;
            d->cap_workers = cap;
        }
    }
    if (!err) {
        pipc_add_fetch_relaxed_int(&conn->refs, 1); /* SYNC:refs - the server's reference */
        pthread_mutex_lock(&d->set_lock);
        d->ring_bytes = conn->ring.payload_bytes; /* the same for every ring of a server */
        d->snaplen = conn->snaplen;
        conn->index = d->accepted++;
        d->workers[d->n_workers++] = conn;
        pthread_mutex_unlock(&d->set_lock);
        rebalance_join(d);
    }
    pthread_mutex_unlock(&d->lock);
    return err;
}

/* Drops workers[position]; `dead`: it vanished, so what sat unread in its ring is lost. */
static void leave(struct pipc_distributor *d, size_t position, int dead)
{
    pipc_conn *c = d->workers[position];
    if (dead) {
        struct pipc_stats st;
        pthread_mutex_lock(&c->lock); /* its caller may be closing it (unmapping the ring) meanwhile */
        pipc_conn_stats(c, &st);
        pthread_mutex_unlock(&c->lock);
        count(&d->lost_packets, st.ring_used_slots); /* SYNC:counters */
    }
    pthread_mutex_lock(&d->set_lock);
    memmove(d->workers + position, d->workers + position + 1, (d->n_workers - position - 1) * sizeof(*d->workers));
    d->n_workers--;
    pthread_mutex_unlock(&d->set_lock);
    rebalance_leave(d, position);
    pipc_conn_unref(c);
}

/* 0: live; 1: dead (its client vanished); 2: closed or ended by the caller (leaves without loss). */
static int worker_state(pipc_conn *c)
{
    if (pipc_load_acquire_int(&c->closed)) /* SYNC:closed - pairs with the release in pipc_conn_close */
        return 2;
    if (pthread_mutex_trylock(&c->lock) != 0)
        return 0; /* its caller is sending on it right now: looked at again next time */
    int state = pipc_load_acquire_int(&c->closed) ? 2 : pipc_conn_alive(c) ? 0 : 1; /* SYNC:closed */
    pthread_mutex_unlock(&c->lock);
    return state;
}

static int check_workers(struct pipc_distributor *d)
{
    int dropped = 0;
    d->last_check_ns = pipc_now_ns();
    for (size_t i = d->n_workers; i-- > 0;) {
        int state = worker_state(d->workers[i]);
        if (state) {
            leave(d, i, state == 1);
            dropped++;
        }
    }
    return dropped;
}

static int grow_scratch(struct pipc_distributor *d, size_t n)
{
    if (n <= d->scratch_n)
        return 0;
    uint32_t *hash = realloc(d->hash, n * sizeof(uint32_t));
    if (hash)
        d->hash = hash;
    uint32_t *todo = realloc(d->todo, n * sizeof(uint32_t));
    if (todo)
        d->todo = todo;
    uint32_t *retry = realloc(d->retry, n * sizeof(uint32_t));
    if (retry)
        d->retry = retry;
    uint16_t *owner = realloc(d->owner, n * sizeof(uint16_t));
    if (owner)
        d->owner = owner;
    struct pipc_packet *part = realloc(d->part, n * sizeof(struct pipc_packet));
    if (part)
        d->part = part;
    if (!hash || !todo || !retry || !owner || !part)
        return -ENOMEM;
    d->scratch_n = n;
    return 0;
}

/* Writes the packets todo[0..m) (or pk[0..m)) to worker w. On return *done counts those dealt with (a prefix:
 * written, or dropped and counted under the worker's drop policy) and *written those written. Returns 0, or
 * the error that stopped it. A worker that failed for good has left when this sets *left (then its packets
 * not dealt with must go elsewhere). */
static int send_part(struct pipc_distributor *d, size_t w, const struct pipc_packet *pk, const uint32_t *todo,
                     size_t m, uint64_t deadline, size_t *done, size_t *written, int *left)
{
    pipc_conn *c = d->workers[w];
    const struct pipc_packet *src = pk;
    if (todo && !pk) { /* send_flow's first pass put the packets of todo[] in d->part, at the same places */
        src = d->part + (todo - d->todo);
    } else if (todo) {
        for (size_t k = 0; k < m; k++)
            d->part[k] = pk[todo[k]];
        src = d->part;
    }
    int err = pipc_conn_send_until(c, src, m, deadline, 1, written); /* sizes: checked by send_locked */
    *done = err ? *written : m; /* without an error, what was not written was dropped (and counted) */
    *left = 0;
    if (err == -ECONNRESET || err == -EPROTO || (err == -EPIPE && worker_state(c))) {
        leave(d, w, err != -EPIPE);
        *left = 1;
        return 0;
    }
    if (err == -EPIPE) { /* ended by the caller through the connection itself: it takes no more */
        pipc_store_release_int(&c->closed, 1); /* SYNC:closed */
        leave(d, w, 0);
        *left = 1;
        return 0;
    }
    return err;
}

/* Every packet must fit a ring: checked once for all workers (they share the server's ring size). */
static int check_sizes(struct pipc_distributor *d, const struct pipc_packet *pk, size_t n)
{
    return pipc_ring_check_packets(pk, n, d->ring_bytes, d->snaplen);
}

static long no_worker(void)
{
    pipc_set_error("no live worker is connected to this server");
    return -ECONNRESET;
}

/* Every worker died during the call: an error, never a short count, with what was not written listed in
 * unsent (the caller's exception says how many were). */
static long all_gone(size_t sent, size_t n)
{
    pipc_set_error("every worker has gone: %zu of %zu packets written", sent, n);
    return -ECONNRESET;
}

/* Stops early: lists what was not written (todo[from..m) and everything in rest[0..r)), ascending. */
static void report_unsent(const uint32_t *todo, size_t from, size_t m, uint32_t *unsent, size_t *n_unsent)
{
    if (!unsent)
        return;
    for (size_t k = from; k < m; k++)
        unsent[(*n_unsent)++] = todo[k];
}

/* The worker at `position` has no room for the next packet (caplen bytes): for pipc_server_send_nowait. */
static void note_stall(struct pipc_distributor *d, size_t position, uint32_t caplen)
{
    d->stall_index = d->workers[position]->index;
    d->stall_need = caplen ? caplen : 1;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

static long send_flow(struct pipc_distributor *d, uint32_t default_linktype, const struct pipc_packet *pk,
                      size_t n, uint64_t deadline, uint32_t *unsent, size_t *n_unsent)
{
    size_t m = n, sent = 0;
    int first_pass = 1; /* hashes are computed on the first pass (and kept for the passes after a worker left) */
    int gathered = 0;   /* this pass's packets are in d->part already, in todo's order */
    while (m > 0) {
        size_t nw = d->n_workers;
        if (nw == 0) {
            if (first_pass) /* (the caller sends with two workers or more: not reached) */
                for (size_t i = 0; i < n; i++)
                    d->todo[i] = (uint32_t)i;
            report_unsent(d->todo, 0, m, unsent, n_unsent);
            if (unsent)
                qsort(unsent, *n_unsent, sizeof(uint32_t), cmp_u32);
            return sent ? all_gone(sent, n) : no_worker();
        }
        /* Counting sort of todo by owner: each worker's packets stay in their order. */
        uint32_t counts[65536 / 64 + 1];
        uint32_t *start = nw < sizeof(counts) / sizeof(counts[0]) ? counts : calloc(nw + 1, sizeof(uint32_t));
        if (!start)
            return sent ? (long)sent : -ENOMEM;
        memset(start, 0, (nw + 1) * sizeof(uint32_t));
        if (first_pass) { /* hash (once per packet: the fragment table remembers first fragments) and count */
            for (size_t i = 0; i < n; i++) {
                uint32_t lt = pk[i].linktype == PIPC_LINKTYPE_DEFAULT ? default_linktype : pk[i].linktype;
                uint32_t h = pipc_flow_hash_tracked(lt, pk[i].data, pk[i].caplen, &d->frags);
                uint16_t w = d->table[h & (PIPC_FLOW_BUCKETS - 1)];
                d->hash[i] = h;
                d->owner[i] = w;
                start[w + 1]++;
            }
            for (size_t w = 0; w < nw; w++)
                start[w + 1] += start[w];
            for (size_t i = 0; i < n; i++) { /* todo is 0..n-1 on the first pass; the packets go in order too */
                uint32_t at = start[d->owner[i]]++;
                d->retry[at] = (uint32_t)i;
                d->part[at] = pk[i];
            }
            gathered = 1;
            first_pass = 0;
        } else {
            for (size_t k = 0; k < m; k++) {
                d->owner[k] = d->table[d->hash[d->todo[k]] & (PIPC_FLOW_BUCKETS - 1)];
                start[d->owner[k] + 1]++;
            }
            for (size_t w = 0; w < nw; w++)
                start[w + 1] += start[w];
            for (size_t k = 0; k < m; k++)
                d->retry[start[d->owner[k]]++] = d->todo[k];
        }
        /* start[w] is now the end of worker w's run in retry[]; swap so todo holds the sorted order */
        uint32_t *sorted = d->retry;
        d->retry = d->todo;
        d->todo = sorted;
        size_t n_retry = 0, begin = 0, workers_before = nw;
        int err = 0;
        for (size_t w = 0, pos = 0; w < workers_before; w++) {
            size_t end = start[w], count = end - begin, done = 0, written = 0;
            if (count) {
                int left;
                err = send_part(d, pos, gathered ? NULL : pk, d->todo + begin, count, deadline, &done, &written,
                                &left);
                sent += written;
                if (err) { /* timeout or signal: report everything not written, stop */
                    if (err == -ETIMEDOUT)
                        note_stall(d, pos, pk[d->todo[begin + done]].caplen);
                    report_unsent(d->todo, begin + done, m, unsent, n_unsent);
                    report_unsent(d->retry, 0, n_retry, unsent, n_unsent);
                    break;
                }
                if (left) { /* its unwritten packets go to the survivors on the next pass */
                    memcpy(d->retry + n_retry, d->todo + begin + done, (count - done) * sizeof(uint32_t));
                    n_retry += count - done;
                    begin = end;
                    continue; /* workers after it moved down one place */
                }
            }
            pos++;
            begin = end;
        }
        if (start != counts)
            free(start);
        if (err) {
            if (unsent)
                qsort(unsent, *n_unsent, sizeof(uint32_t), cmp_u32);
            return sent ? (long)sent : err;
        }
        gathered = 0; /* later passes gather in send_part, worker by worker */
        /* the retried packets keep their order within each flow: ascending index */
        qsort(d->retry, n_retry, sizeof(uint32_t), cmp_u32);
        uint32_t *t = d->todo;
        d->todo = d->retry;
        d->retry = t;
        m = n_retry;
    }
    return (long)sent;
}

static long send_round_robin(struct pipc_distributor *d, const struct pipc_packet *pk, size_t n, uint64_t deadline,
                             uint32_t *unsent, size_t *n_unsent)
{
    size_t from = 0, sent = 0;
    while (from < n) { /* the whole call to the next live worker; if it dies mid-way, the rest to the next */
        if (!d->n_workers) {
            for (size_t i = from; unsent && i < n; i++)
                unsent[(*n_unsent)++] = (uint32_t)i;
            return sent ? all_gone(sent, n) : no_worker();
        }
        size_t w = d->rr++ % d->n_workers, done = 0, written = 0;
        int left;
        int err = send_part(d, w, pk + from, NULL, n - from, deadline, &done, &written, &left);
        from += done;
        sent += written;
        if (err) {
            if (err == -ETIMEDOUT && from < n)
                note_stall(d, w, pk[from].caplen);
            for (size_t i = from; unsent && i < n; i++)
                unsent[(*n_unsent)++] = (uint32_t)i;
            return sent ? (long)sent : err;
        }
    }
    return (long)sent;
}

static long send_broadcast(struct pipc_distributor *d, const struct pipc_packet *pk, size_t n, uint64_t deadline)
{
    /* Each worker gets every packet. A signal does not stop it (the workers would hold different prefixes
     * that no resend could mend): the wait goes on; a timeout returns -ETIMEDOUT with the workers apart. */
    for (size_t w = 0; w < d->n_workers;) {
        size_t from = 0;
        int left = 0, err;
        do {
            size_t done = 0, written = 0;
            err = send_part(d, w, pk + from, NULL, n - from, deadline, &done, &written, &left);
            from += done;
        } while (err == -EINTR && !left);
        if (err)
            return err;
        if (!left)
            w++;
    }
    return d->n_workers ? (long)n : no_worker();
}

/* The send itself, under d->lock. */
static long send_locked(pipc_server *s, const struct pipc_packet *pk, size_t n, uint64_t deadline, uint32_t *unsent,
                        size_t *n_unsent)
{
    struct pipc_distributor *d = &s->dist;
    long r;
    d->stall_index = UINT32_MAX;
    if (pipc_now_ns() - d->last_check_ns >= PIPC_LIVENESS_CHECK_NS)
        check_workers(d);
    if (!d->n_workers)
        r = no_worker();
    else if (n == 0)
        r = 0;
    else if ((r = check_sizes(d, pk, n)) == 0 && (r = grow_scratch(d, n)) == 0) {
        if (d->policy == PIPC_DISTRIBUTION_BROADCAST)
            r = send_broadcast(d, pk, n, deadline);
        else if (d->policy == PIPC_DISTRIBUTION_ROUND_ROBIN)
            r = send_round_robin(d, pk, n, deadline, unsent, n_unsent);
        else if (d->n_workers == 1) /* one worker owns every flow: no hashing */
            r = send_round_robin(d, pk, n, deadline, unsent, n_unsent);
        else
            r = send_flow(d, s->opts.linktype, pk, n, deadline, unsent, n_unsent);
    }
    return r;
}

long pipc_server_send_some(pipc_server *s, const struct pipc_packet *pk, size_t n, int timeout_ms, uint32_t *unsent,
                           size_t *n_unsent)
{
    struct pipc_distributor *d = &s->dist;
    uint64_t deadline = pipc_deadline(timeout_ms);
    size_t ignored;
    if (!n_unsent)
        n_unsent = &ignored;
    *n_unsent = 0;
    if (n > UINT32_MAX)
        return -EINVAL;
    long r = pipc_lock_until(&d->lock, deadline, "server");
    if (r)
        return r;
    r = send_locked(s, pk, n, deadline, unsent, n_unsent);
    pthread_mutex_unlock(&d->lock);
    return r;
}

long pipc_server_send_nowait(pipc_server *s, const struct pipc_packet *pk, size_t n, uint32_t *unsent,
                             size_t *n_unsent, uint32_t *stalled, uint64_t *need_bytes)
{
    struct pipc_distributor *d = &s->dist;
    *n_unsent = 0;
    *stalled = UINT32_MAX;
    *need_bytes = 0;
    if (n > UINT32_MAX)
        return -EINVAL;
    if (d->policy == PIPC_DISTRIBUTION_BROADCAST) {
        pipc_set_error("a broadcast cannot be sent in parts: send to each connection instead");
        return -EOPNOTSUPP;
    }
    uint64_t now = pipc_deadline(0);
    if (pipc_lock_until(&d->lock, now, "server"))
        return -EBUSY; /* another thread is inside a send, an accept's join or a check on this server */
    long r = send_locked(s, pk, n, now, unsent, n_unsent);
    if (d->stall_index != UINT32_MAX && (r == -ETIMEDOUT || (r >= 0 && *n_unsent > 0))) {
        *stalled = d->stall_index;
        *need_bytes = d->stall_need;
    }
    pthread_mutex_unlock(&d->lock);
    return r;
}

long pipc_server_send(pipc_server *s, const struct pipc_packet *pk, size_t n, int timeout_ms)
{
    return pipc_server_send_some(s, pk, n, timeout_ms, NULL, NULL);
}

/* End of stream or abort for every live worker; the dead ones found on the way are dropped (their loss
 * counted) rather than ended. */
static int finish_all(pipc_server *s, int abort)
{
    struct pipc_distributor *d = &s->dist;
    pthread_mutex_lock(&d->lock);
    check_workers(d);
    for (size_t i = d->n_workers; i-- > 0;) {
        int err = abort ? pipc_conn_abort(d->workers[i]) : pipc_conn_end(d->workers[i]);
        if (err == -ECONNRESET || err == -EPROTO)
            leave(d, i, 1);
    }
    pthread_mutex_unlock(&d->lock);
    return 0;
}

int pipc_server_end(pipc_server *s) { return finish_all(s, 0); }
int pipc_server_abort(pipc_server *s) { return finish_all(s, 1); }

int pipc_server_check_workers(pipc_server *s)
{
    pthread_mutex_lock(&s->dist.lock);
    int dropped = check_workers(&s->dist);
    pthread_mutex_unlock(&s->dist.lock);
    return dropped;
}

size_t pipc_server_workers(pipc_server *s, uint32_t *indices, size_t max)
{
    pthread_mutex_lock(&s->dist.set_lock); /* never waits for a send in progress */
    size_t n = s->dist.n_workers;
    for (size_t i = 0; i < n && i < max; i++)
        indices[i] = s->dist.workers[i]->index;
    pthread_mutex_unlock(&s->dist.set_lock);
    return n;
}

/* ---------------- direct writes: the live capture's one copy (capi_internal.h) ---------------- */

void pipc_direct_begin(pipc_server *s, struct pipc_direct *dw)
{
    struct pipc_distributor *d = &s->dist;
    dw->on = 0;
    dw->n_windows = 0;
    if (pthread_mutex_trylock(&d->lock) != 0) /* an accept or a send of another thread: stage this pass */
        return;
    if (pipc_now_ns() - d->last_check_ns >= PIPC_LIVENESS_CHECK_NS)
        check_workers(d);
    size_t nw = d->n_workers;
    if (nw == 0 || d->policy == PIPC_DISTRIBUTION_BROADCAST) {
        pthread_mutex_unlock(&d->lock);
        return;
    }
    if (nw > d->cap_windows) {
        void *m = realloc(d->windows, nw * sizeof(*d->windows));
        if (!m) {
            pthread_mutex_unlock(&d->lock);
            return;
        }
        d->windows = m;
        d->cap_windows = nw;
    }
    dw->d = d;
    dw->flow = d->policy == PIPC_DISTRIBUTION_FLOW && nw > 1;
    /* round robin: this pass's packets to one worker; the next worker's turn comes once it wrote (end) */
    dw->target = dw->flow ? 0 : d->policy == PIPC_DISTRIBUTION_ROUND_ROBIN ? (size_t)(d->rr % nw) : 0;
    dw->n_windows = nw;
    dw->default_linktype = s->opts.linktype;
    dw->max_caplen = pipc_ring_max_packet_bytes(d->ring_bytes, d->snaplen);
    for (size_t w = 0; w < nw; w++) {
        struct pipc_direct_window *win = &d->windows[w];
        memset(win, 0, sizeof(*win));
        win->conn = d->workers[w];
        if (!dw->flow && w != dw->target)
            continue;
        if (pipc_conn_direct_open(win->conn, &win->slots, &win->bytes) == 0)
            win->open = win->locked = 1;
    }
    dw->on = 1;
}

int pipc_direct_put(struct pipc_direct *dw, const struct pipc_packet *pk)
{
    struct pipc_distributor *d = dw->d;
    size_t w = dw->target;
    if (dw->flow) {
        uint32_t lt = pk->linktype == PIPC_LINKTYPE_DEFAULT ? dw->default_linktype : pk->linktype;
        w = d->table[pipc_flow_hash_tracked(lt, pk->data, pk->caplen, &d->frags) & (PIPC_FLOW_BUCKETS - 1)];
    }
    struct pipc_direct_window *win = &d->windows[w];
    if (!win->open)
        return 0;
    if (win->slots == 0 || win->bytes < pk->caplen || pk->caplen > dw->max_caplen ||
        (pk->linktype > 0xffff && pk->linktype != PIPC_LINKTYPE_DEFAULT)) {
        win->open = 0; /* staged: so are this worker's later packets of the pass, which must not overtake it */
        return 0;
    }
    pipc_ring_put(&win->conn->ring, pk, 1, win->conn->linktype);
    win->slots--;
    win->bytes -= pk->caplen;
    win->packets++;
    win->written += pk->caplen;
    return 1;
}

void pipc_direct_end(struct pipc_direct *dw)
{
    if (!dw->on)
        return;
    struct pipc_distributor *d = dw->d;
    for (size_t w = 0; w < dw->n_windows; w++) {
        struct pipc_direct_window *win = &d->windows[w];
        if (!win->locked)
            continue;
        pipc_conn_direct_close(win->conn, win->packets, win->written);
        dw->packets += win->packets;
        dw->bytes += win->written;
        if (win->packets && d->policy == PIPC_DISTRIBUTION_ROUND_ROBIN)
            d->rr++;
    }
    pthread_mutex_unlock(&d->lock);
    dw->on = 0;
}
