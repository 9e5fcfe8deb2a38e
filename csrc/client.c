/*
 * client.c - the consumer: connecting (the client half of the handshake: in one blocking call, or in steps that
 * never block for an event loop), receiving packets with no copy,
 * releasing them in any order, waiting (spin, then the eventfd; or an external event loop), counters.
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

/* A connect in steps (pipc_client_connect_start/_fd/_finish): the socket, HELLO sent, WELCOME awaited. */
struct pipc_client_pending {
    int sock;
    int busy_poll;
    char name[110]; /* for messages: a path (< 108 bytes) or "@" and up to 108 bytes */
};

/* The HELLO flags and busy_poll of a client's options (NULL: the defaults). */
static int client_options(const struct pipc_client_options *options, uint32_t *flags, int *busy_poll)
{
    struct pipc_client_options o = {.struct_bytes = sizeof(o), .use_server_overflow = 1};
    if (options) {
        size_t n = options->struct_bytes < sizeof(o) ? options->struct_bytes : sizeof(o);
        if (n < sizeof(size_t))
            return -EINVAL;
        memcpy(&o, options, n);
    }
    *flags = 0; /* the HELLO says which policy this client wants (the server's when it says none) */
    if (!o.use_server_overflow && o.overflow == PIPC_OVERFLOW_DROP)
        *flags = PIPC_HELLO_WANT_DROP;
    else if (!o.use_server_overflow && o.overflow == PIPC_OVERFLOW_BLOCK)
        *flags = PIPC_HELLO_WANT_BLOCK;
    else if (!o.use_server_overflow && o.overflow != -1) {
        pipc_set_error("overflow must be PIPC_OVERFLOW_BLOCK, PIPC_OVERFLOW_DROP or -1, not %d", o.overflow);
        return -EINVAL;
    }
    *busy_poll = o.busy_poll != 0;
    return 0;
}

/* Connects to name and sends the HELLO; the socket in *sock_out. `nowait`: -EAGAIN rather than wait for room in
 * a full backlog (a unix socket gives no readiness for it). */
static int connect_begin(const char *name, uint32_t flags, int nowait, int *sock_out)
{
    struct sockaddr_un addr;
    socklen_t len;
    int err = pipc_name_to_addr(name, &addr, &len);
    if (err) {
        pipc_set_error(err == -ENAMETOOLONG ? "name too long for a unix socket address: %s" : "invalid name: '%s'",
                       name);
        return err;
    }
    int sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | (nowait ? SOCK_NONBLOCK : 0), 0);
    if (sock < 0)
        return -errno;
    while (connect(sock, (struct sockaddr *)&addr, len) < 0) {
        if (errno == EINTR)
            continue;
        err = -errno;
        if (err == -EAGAIN)
            pipc_set_error("server at %s is busy (its backlog is full): try again", name);
        else
            pipc_set_error("cannot connect to %s: %s", name, strerror(errno));
        close(sock);
        return err;
    }
    if (nowait && fcntl(sock, F_SETFL, 0) < 0) { /* the connection's socket blocks, as the sync path's does */
        err = -errno;
        close(sock);
        return err;
    }
    struct pipc_hello h = {.magic = PIPC_HELLO_MAGIC, .wire_version = PIPC_WIRE_VERSION,
                           .abi_version = PACKET_IPC_ABI_VERSION, .flags = flags};
    if ((err = pipc_send_msg(sock, &h, sizeof(h), NULL, 0)) < 0) {
        pipc_set_error("server at %s closed the connection during the handshake", name);
        close(sock);
        return err == -ECONNRESET ? -ECONNREFUSED : err;
    }
    *sock_out = sock;
    return 0;
}

/* Waits for the WELCOME until deadline and builds the client. -ETIMEDOUT (nothing arrived yet) and -EINTR leave
 * sock open for the caller; on any other return it is consumed (closed, or the client's). */
static int connect_end(const char *name, int sock, uint64_t deadline, int busy_poll, pipc_client **out)
{
    struct pipc_welcome w;
    int fds[3] = {-1, -1, -1};
    int nfds = pipc_recv_msg(sock, &w, sizeof(w), fds, 3, deadline);
    if (nfds == -ETIMEDOUT || nfds == -EINTR)
        return nfds;
    if (nfds < 0) {
        close(sock);
        if (nfds == -ECONNRESET) {
            pipc_set_error("server at %s closed the connection during the handshake", name);
            return -ECONNREFUSED;
        }
        if (nfds == -EPROTO)
            pipc_set_error("server at %s does not speak packet-ipc (bad WELCOME)", name);
        return nfds;
    }
    int err = 0;
    if (w.magic != PIPC_WELCOME_MAGIC) {
        pipc_set_error("server at %s does not speak packet-ipc (bad WELCOME magic)", name);
        err = -EPROTO;
    } else if (w.status != 0) {
        w.message[sizeof(w.message) - 1] = 0;
        pipc_set_error("%s", w.message);
        /* Only statuses we know; stops a peer from making us report arbitrary values. */
        err = (w.status == -EACCES || w.status == -EPROTO || w.status == -ENOMEM) ? w.status : -EPROTO;
    } else if (w.wire_version != PIPC_WIRE_VERSION) {
        pipc_set_error("server speaks wire version %u, this client %u", w.wire_version, PIPC_WIRE_VERSION);
        err = -EPROTO;
    } else if (nfds != 3) {
        pipc_set_error("server sent %d file descriptors, expected 3", nfds);
        err = -EPROTO;
    }
    pipc_client *c = NULL;
    if (!err && !(c = calloc(1, sizeof(*c))))
        err = -ENOMEM;
    if (c) {
        pthread_mutex_init(&c->lock, NULL);
        pthread_mutex_init(&c->state_lock, NULL);
    }
    if (!err) {
        err = pipc_ring_attach(&c->ring, fds[0]);
        if (err == -EPROTO)
            pipc_set_error("server sent a ring that fails validation");
    }
    /* Our wake-ups must never block, whatever flags the peer's fds came with. */
    if (!err && (fcntl(fds[1], F_SETFL, O_NONBLOCK) < 0 || fcntl(fds[2], F_SETFL, O_NONBLOCK) < 0))
        err = -errno;
    /* The one fd a C event loop polls (pipc_client_fd): the eventfd alone would not wake it when the server
     * is killed (nobody writes the eventfd then), so an epoll set also watches the socket's hang-up. */
    int poll_fd = -1;
    if (!err) {
        struct epoll_event ev_in = {.events = EPOLLIN}, ev_sock = {.events = EPOLLIN | EPOLLRDHUP};
        if ((poll_fd = epoll_create1(EPOLL_CLOEXEC)) < 0 || epoll_ctl(poll_fd, EPOLL_CTL_ADD, fds[1], &ev_in) < 0 ||
            epoll_ctl(poll_fd, EPOLL_CTL_ADD, sock, &ev_sock) < 0)
            err = -errno;
    }
    if (err) {
        for (int i = 0; i < nfds; i++)
            close(fds[i]);
        if (poll_fd >= 0)
            close(poll_fd);
        if (c) {
            pipc_ring_destroy(&c->ring);
            pthread_mutex_destroy(&c->lock);
            pthread_mutex_destroy(&c->state_lock);
        }
        free(c);
        close(sock);
        return err;
    }
    c->sock = sock;
    c->memfd = fds[0];
    c->ev_data = fds[1];
    c->ev_space = fds[2];
    c->poll_fd = poll_fd;
    c->spin_ns = PIPC_SPIN_NS;
    c->generation = pipc_fork_generation();
    c->busy_poll = busy_poll;
    *out = c;
    return 0;
}

static int client_connect(const char *name, int timeout_ms, const struct pipc_client_options *options,
                          pipc_client **out)
{
    uint32_t flags;
    int busy_poll, sock;
    int err = client_options(options, &flags, &busy_poll);
    if (err || (err = connect_begin(name, flags, 0, &sock)))
        return err;
    err = connect_end(name, sock, pipc_deadline(timeout_ms), busy_poll, out);
    if (err == -ETIMEDOUT || err == -EINTR) {
        close(sock);
        if (err == -ETIMEDOUT)
            pipc_set_error("server at %s did not accept in time", name);
    }
    return err;
}

int pipc_client_connect(const char *name, int timeout_ms, pipc_client **out)
{
    return client_connect(name, timeout_ms, NULL, out);
}

int pipc_client_connect_with(const char *name, int timeout_ms, const struct pipc_client_options *options,
                             pipc_client **out)
{
    return client_connect(name, timeout_ms, options, out);
}

int pipc_client_connect_start(const char *name, const struct pipc_client_options *options,
                              pipc_client_pending **out)
{
    uint32_t flags;
    int busy_poll, sock;
    if (strlen(name) >= sizeof((*out)->name)) {
        pipc_set_error("name too long for a unix socket address: %s", name);
        return -ENAMETOOLONG;
    }
    int err = client_options(options, &flags, &busy_poll);
    if (err || (err = connect_begin(name, flags, 1, &sock)))
        return err;
    pipc_client_pending *p = calloc(1, sizeof(*p));
    if (!p) {
        close(sock);
        return -ENOMEM;
    }
    p->sock = sock;
    p->busy_poll = busy_poll;
    strcpy(p->name, name);
    *out = p;
    return 0;
}

int pipc_client_connect_fd(const pipc_client_pending *pending) { return pending->sock; }

int pipc_client_connect_finish(pipc_client_pending *pending, pipc_client **out)
{
    int err = connect_end(pending->name, pending->sock, pipc_deadline(0), pending->busy_poll, out);
    if (err == -ETIMEDOUT || err == -EINTR)
        return -EAGAIN; /* no answer yet: the socket stays open, the caller polls it again */
    free(pending);
    return err;
}

void pipc_client_connect_cancel(pipc_client_pending *pending)
{
    if (!pending)
        return;
    close(pending->sock);
    free(pending);
}

static int client_fail(pipc_client *c, int err)
{
    if (err == -EPROTO) {
        set_sticky_error(&c->error, err);
        pipc_set_error("corrupt ring: the server's positions or descriptors are impossible");
    }
    return err;
}

/* Nothing available right now: end of stream (0), peer gone (-ECONNRESET), or 1 (still open). */
static int client_idle_state(pipc_client *c)
{
    int st = pipc_ring_state(&c->ring);
    if (st < 0)
        return client_fail(c, st);
    long avail = pipc_ring_available(&c->ring); /* after the state's acquire: final if the stream ended */
    if (avail < 0)
        return client_fail(c, (int)avail);
    if (avail > 0)
        return 2;
    if (st == PIPC_STATE_END)
        return 0;
    if (st == PIPC_STATE_ABORTED) {
        pipc_set_error("the server aborted the stream (it failed before the end)");
        return -ECONNRESET;
    }
    if (c->peer_gone) {
        pipc_set_error("server vanished without end of stream");
        return -ECONNRESET;
    }
    return 1;
}

/* Where a take goes: descriptors (pk) or columns (cols). */
struct take_out {
    struct pipc_packet *pk;
    struct pipc_received_columns *cols;
};

static long client_take_locked(pipc_client *c, const struct take_out *out, size_t max, uint64_t deadline,
                               int busy_poll);

static long client_take(pipc_client *c, const struct take_out *out, size_t max, int timeout_ms, int busy_poll)
{
    int err = sticky_error(&c->error);
    if (err)
        return err;
    if (max == 0)
        return -EINVAL;
    uint64_t deadline = pipc_deadline(timeout_ms);
    if ((err = pipc_lock_until(&c->lock, deadline, "client")))
        return err;
    long r = client_take_locked(c, out, max, deadline, busy_poll);
    pthread_mutex_unlock(&c->lock);
    return r;
}

/* One look at the ring under the state lock: n > 0 packets taken, or (n == 0) *idle from client_idle_state. */
static long client_look(pipc_client *c, const struct take_out *out, size_t max, int *idle)
{
    pthread_mutex_lock(&c->state_lock);
    long n = out->cols ? pipc_ring_take_columns(&c->ring, out->cols, max) : pipc_ring_take(&c->ring, out->pk, max);
    if (n == 0)
        *idle = client_idle_state(c);
    pthread_mutex_unlock(&c->state_lock);
    return n;
}

static long client_take_locked(pipc_client *c, const struct take_out *out, size_t max, uint64_t deadline,
                               int busy_poll)
{
    if (c->armed) { /* left armed by pipc_client_prepare_wait: else the server would write the eventfd on every
                     * publish from now on */
        c->armed = 0;
        pipc_ring_consumer_disarm(&c->ring);
    }
    uint64_t start = 0, now = 0;
    for (unsigned k = 0;; k++) {
        int idle = 1;
        long n = client_look(c, out, max, &idle);
        if (n < 0)
            return client_fail(c, (int)n);
        if (n > 0) {
            uint64_t bytes = 0;
            if (out->cols)
                bytes = out->cols->nbytes;
            else
                for (long i = 0; i < n; i++)
                    bytes += out->pk[i].caplen;
            count(&c->stats.bytes, bytes);
            count(&c->stats.packets, (uint64_t)n);
            if (start)
                count(&c->stats.blocked_ns, pipc_now_ns() - start);
            return n;
        }
        if (idle == 2)
            continue;
        if (idle <= 0)
            return idle;
        if (is_closing(&c->closing)) {
            pipc_set_error("client closed by another thread");
            return -EPIPE;
        }
        if (!start)
            start = now = pipc_now_ns();
        else if ((k & 63) == 0 || now - start >= SPIN_PAUSE_NS) /* while pausing, the clock every 64 turns (each
                                                                 * turn was a tenth of a worker's time); while
                                                                 * yielding, every turn: a yield can be long */
            now = pipc_now_ns();
        if (now >= deadline) {
            count(&c->stats.blocked_ns, now - start);
            pipc_set_error("no packet arrived within the timeout");
            return -ETIMEDOUT;
        }
        if (busy_poll || now - start < c->spin_ns) {
            /* Spin with pause for a couple of microseconds, then yield between looks: on an idle core
             * sched_yield returns at once, but when workers outnumber cores it hands the CPU to the producer
             * (or another worker) instead of burning it. Only while waiting: never on the path with data. */
            if (now - start < SPIN_PAUSE_NS)
                pipc_cpu_relax();
            else
                sched_yield();
            if (busy_poll && (k & 0xfff) == 0 && pipc_peer_gone(c->sock))
                c->peer_gone = 1;
            continue;
        }
        pthread_mutex_lock(&c->state_lock);
        int sleep = pipc_ring_consumer_arm(&c->ring);
        pthread_mutex_unlock(&c->state_lock);
        int r = sleep ? pipc_wait(c->ev_data, c->sock, deadline) : PIPC_WAIT_EVENT;
        pipc_ring_consumer_disarm(&c->ring);
        now = pipc_now_ns();
        if (r == PIPC_WAIT_PEER) {
            if (pipc_peer_gone(c->sock))
                c->peer_gone = 1;
            else {
                set_sticky_error(&c->error, -EPROTO);
                pipc_set_error("unexpected message from the server after the handshake");
                return -EPROTO;
            }
        } else if (r < 0 && r != -ETIMEDOUT) {
            count(&c->stats.blocked_ns, pipc_now_ns() - start);
            return r;
        }
    }
}

int pipc_client_receive(pipc_client *c, struct pipc_packet *pk, size_t max, int timeout_ms)
{
    if (max > (size_t)0x7fffffff)
        max = 0x7fffffff;
    struct take_out out = {.pk = pk};
    return (int)client_take(c, &out, max, timeout_ms, c->busy_poll);
}

int pipc_client_receive_columns(pipc_client *c, struct pipc_received_columns *cols, size_t max, int timeout_ms)
{
    if (!cols || cols->struct_bytes < sizeof(*cols) || !cols->ts_ns || !cols->caplen) {
        pipc_set_error("pipc_client_receive_columns: struct_bytes must be sizeof(struct pipc_received_columns), "
                       "and ts_ns and caplen set");
        return -EINVAL;
    }
    if (max > (size_t)0x7fffffff)
        max = 0x7fffffff;
    struct take_out out = {.cols = cols};
    return (int)client_take(c, &out, max, timeout_ms, c->busy_poll);
}

int pipc_client_release_range(pipc_client *c, uint64_t first, uint64_t n)
{
    if (c->generation != pipc_fork_generation()) /* a forked copy: the ring belongs to the parent */
        return -EINVAL;
    pthread_mutex_lock(&c->state_lock);
    int err = pipc_ring_release_range(&c->ring, first, n) < 0 ? -EINVAL : 0;
    int wake = !err && pipc_ring_publish_release(&c->ring);
    pthread_mutex_unlock(&c->state_lock);
    if (wake && c->ev_space >= 0)
        pipc_wake(c->ev_space);
    return err;
}

void pipc_client_release(pipc_client *c, const struct pipc_packet *pk, size_t n)
{
    if (c->generation != pipc_fork_generation())
        return;
    pthread_mutex_lock(&c->state_lock);
    for (size_t i = 0; i < n; i++)
        pipc_ring_release_one(&c->ring, pk[i].id);
    int wake = pipc_ring_publish_release(&c->ring);
    pthread_mutex_unlock(&c->state_lock);
    if (wake && c->ev_space >= 0)
        pipc_wake(c->ev_space);
}

void pipc_client_shutdown(pipc_client *c)
{
    set_closing(&c->closing);
    if (c->ev_data >= 0)
        pipc_wake(c->ev_data); /* our own sleeper waits on it for packets */
}

int pipc_client_fd(const pipc_client *c) { return c->poll_fd; }
int pipc_client_socket(const pipc_client *c) { return c->sock; }
int pipc_client_ring_fd(const pipc_client *c) { return c->memfd; }

int pipc_client_prepare_wait(pipc_client *c)
{
    if (sticky_error(&c->error) || is_closing(&c->closing))
        return 0;
    if (c->sock >= 0 && !c->peer_gone && pipc_peer_gone(c->sock))
        c->peer_gone = 1;
    if (c->peer_gone)
        return 0;
    /* Drain wake-ups already consumed (the eventfd is level-triggered: a stale count would keep the caller's
     * poll returning at once, a busy loop). A wake-up written after this read stays pending: no lost wake-up. */
    uint64_t v;
    if (read(c->ev_data, &v, sizeof(v)) < 0) {
        /* EAGAIN: nothing pending */
    }
    pthread_mutex_lock(&c->state_lock);
    int sleep = pipc_ring_consumer_arm(&c->ring);
    pthread_mutex_unlock(&c->state_lock);
    if (!sleep) {
        pipc_ring_consumer_disarm(&c->ring); /* packets or the end are there: the caller will not sleep */
        return 0;
    }
    c->armed = 1;
    return 1;
}

void pipc_client_finish_wait(pipc_client *c)
{
    uint64_t v;
    c->armed = 0;
    pipc_ring_consumer_disarm(&c->ring);
    if (c->ev_data >= 0 && read(c->ev_data, &v, sizeof(v)) < 0) {
    }
}

uint32_t pipc_client_linktype(const pipc_client *c) { return c->ring.linktype; }
uint32_t pipc_client_snaplen(const pipc_client *c) { return c->ring.snaplen; }

void pipc_client_stats(const pipc_client *c, struct pipc_stats *st)
{
    memset(st, 0, sizeof(*st));
    load_stats(&c->stats, st);
    const struct pipc_ring *r = &c->ring;
    pthread_mutex_lock((pthread_mutex_t *)&c->state_lock); /* a receive or release may run on another thread */
    if (r->hdr) {
        struct pipc_ring_counters rc;
        pipc_ring_counters(r, &rc);
        st->dropped_packets = rc.dropped_packets;
        st->dropped_bytes = rc.dropped_bytes;
        st->ring_used_slots = rc.write_slot >= r->c_released_slot ? rc.write_slot - r->c_released_slot : 0;
        st->ring_used_bytes = r->c_next_payload - r->c_released_payload; /* taken and unreleased */
    }
    pthread_mutex_unlock((pthread_mutex_t *)&c->state_lock);
    st->ring_bytes = r->payload_bytes;
    st->ring_slots = r->slot_count;
}

void pipc_client_disconnect(pipc_client *c)
{
    pipc_close_fd(&c->poll_fd);
    pipc_close_fd(&c->sock);
    pipc_close_fd(&c->ev_data);
    pipc_close_fd(&c->ev_space);
    pipc_close_fd(&c->memfd);
    if (!sticky_error(&c->error))
        set_sticky_error(&c->error, -EPIPE);
}

void pipc_client_close(pipc_client *c)
{
    if (!c)
        return;
    pipc_client_disconnect(c);
    pipc_ring_destroy(&c->ring);
    pthread_mutex_destroy(&c->lock);
    pthread_mutex_destroy(&c->state_lock);
    free(c);
}
