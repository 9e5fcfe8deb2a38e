/*
 * capi.c - the public C ABI (include/packet_ipc.h): server, connection and client objects over the ring
 * (ring.c), the control plane (handshake.c) and waiting (wait.c). The Python extension uses these same
 * functions, so C and Python programs run one implementation.
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

#define SPIN_NS 20000ULL            /* spin at most this long before sleeping on the eventfd */
#define SPIN_PAUSE_NS 2000ULL       /* of which the first part with pause only, then yielding between looks */
#define ALIVE_CHECK_NS 10000000ULL  /* how often a never-blocking (drop) sender checks for a dead client */

/* A forked child inherits copies of our objects; it must not end streams or release ring space of its
 * parent's connections when it drops them. Counting forks (pthread_atfork) tells copies from originals
 * without a getpid() system call on the release path. */
static unsigned fork_generation;
static pthread_once_t fork_once = PTHREAD_ONCE_INIT;
static void on_fork_child(void) { __atomic_add_fetch(&fork_generation, 1, __ATOMIC_RELAXED); }
static void register_fork_handler(void) { pthread_atfork(NULL, NULL, on_fork_child); }
static unsigned current_generation(void)
{
    pthread_once(&fork_once, register_fork_handler);
    return __atomic_load_n(&fork_generation, __ATOMIC_RELAXED);
}

/* ---------------- thread safety ----------------
 * Every object may be used from several threads. Each has one lock that serialises its calls and is held
 * across their waits, so a send (or receive) that completes in one call is never interleaved with another
 * thread's, and each thread's packets stay in order. A call with timeout 0 only tries the lock (-ETIMEDOUT if another thread holds
 * it: nothing could be done without waiting); otherwise waiting for the lock counts against the timeout.
 * pipc_*_shutdown wakes a thread blocked in a call on the object, which then fails with -EPIPE; closing is
 * the one call that must not race with others (like close(2) on an fd another thread is using). */
int pipc_lock_until(pthread_mutex_t *m, uint64_t deadline, const char *what)
{
    int r = pthread_mutex_trylock(m);
    if (r == 0)
        return 0;
    if (deadline != UINT64_MAX && pipc_now_ns() >= deadline) {
        pipc_set_error("another thread is using this %s", what);
        return -ETIMEDOUT;
    }
    if (deadline == UINT64_MAX) {
        r = pthread_mutex_lock(m);
    } else {
        /* pthread_mutex_timedlock takes CLOCK_REALTIME (clocklock needs glibc 2.30; wheels target older) */
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        uint64_t mono = pipc_now_ns(), left = deadline > mono ? deadline - mono : 0;
        uint64_t at = (uint64_t)now.tv_sec * 1000000000ULL + (uint64_t)now.tv_nsec + left;
        struct timespec ts = {.tv_sec = (time_t)(at / 1000000000ULL), .tv_nsec = (long)(at % 1000000000ULL)};
        r = pthread_mutex_timedlock(m, &ts);
    }
    if (r == 0)
        return 0;
    pipc_set_error("another thread kept this %s busy past the timeout", what);
    return -ETIMEDOUT;
}

#define lock_call pipc_lock_until

static int is_closing(const int *closing) { return __atomic_load_n(closing, __ATOMIC_ACQUIRE); }
static void set_closing(int *closing) { __atomic_store_n(closing, 1, __ATOMIC_RELEASE); }
/* Counters: written by the thread holding the object's lock, read by *_stats from any thread. */
static void count(uint64_t *counter, uint64_t v) { __atomic_fetch_add(counter, v, __ATOMIC_RELAXED); }
static uint64_t counted(const uint64_t *counter) { return __atomic_load_n(counter, __ATOMIC_RELAXED); }
static int sticky_error(const int *error) { return __atomic_load_n(error, __ATOMIC_RELAXED); }
static void set_sticky_error(int *error, int err) { __atomic_store_n(error, err, __ATOMIC_RELAXED); }

static void load_stats(const struct pipc_stats *from, struct pipc_stats *to)
{
    to->packets = counted(&from->packets);
    to->bytes = counted(&from->bytes);
    to->dropped_packets = counted(&from->dropped_packets);
    to->dropped_bytes = counted(&from->dropped_bytes);
    to->blocked_ns = counted(&from->blocked_ns);
}

int pipc_abi_version(void) { return PACKET_IPC_ABI_VERSION; }
int pipc_wire_version(void) { return PIPC_WIRE_VERSION; }

const char *pipc_version(void) { return PACKET_IPC_VERSION; }

const char *pipc_strerror(int code)
{
    switch (code < 0 ? -code : code) {
    case 0: return "success";
    case ETIMEDOUT: return "timed out";
    case ECONNRESET: return "peer vanished without end of stream";
    case EPROTO: return "protocol error (version mismatch, corrupt ring or wrong peer)";
    case EMSGSIZE: return "packet larger than the ring or the snaplen";
    case EACCES: return "peer credentials refused";
    case ENOENT: return "no server at that name";
    case ECONNREFUSED: return "connection refused (server gone?)";
    case ENAMETOOLONG: return "name too long for a unix socket address";
    case EINTR: return "interrupted by a signal";
    case EINVAL: return "invalid argument";
    case ENOMEM: return "out of memory";
    case EPIPE: return "stream already ended";
    default: return strerror(code < 0 ? -code : code);
    }
}

static void close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

/* ---------------- server ---------------- */

/* Once the server admits peers other than its own uid, SO_PEERCRED (peer_allowed) is the fence that decides,
 * and the file modes must not stop those peers before it: the socket becomes 0666 and our private directory
 * 0711 (others may reach the socket by its name, not list the directory). Without this an allowed uid could
 * never connect to a path name. A directory the caller chose is left as the caller made it. */
static int open_to_other_uids(pipc_server *s)
{
    if (s->name[0] == '@') /* abstract: no file, no mode */
        return 0;
    if (chmod(s->name, 0666) < 0 || (s->dir[0] && chmod(s->dir, 0711) < 0))
        return -errno;
    return 0;
}

int pipc_server_create(const char *name, const struct pipc_server_options *options, pipc_server **out)
{
    struct pipc_server_options o = {sizeof(o), 0, 0, 1, 262144, PIPC_OVERFLOW_BLOCK, 0, PIPC_DISTRIBUTION_FLOW};
    if (options) {
        size_t n = options->struct_bytes < sizeof(o) ? options->struct_bytes : sizeof(o);
        if (n < sizeof(size_t))
            return -EINVAL;
        memcpy(&o, options, n);
        o.struct_bytes = sizeof(o);
    }
    if (!o.snaplen)
        o.snaplen = 262144;
    if (o.overflow != PIPC_OVERFLOW_BLOCK && o.overflow != PIPC_OVERFLOW_DROP)
        return -EINVAL;
    uint64_t pb = o.capacity_bytes, slots = o.max_packets;
    size_t file_bytes;
    if (pipc_ring_geometry(&pb, &slots, &file_bytes) < 0) {
        pipc_set_error("ring capacity out of range");
        return -EINVAL;
    }
    pipc_server *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    if (pipc_dist_init(&s->dist, o.distribution) < 0) {
        free(s);
        return -EINVAL;
    }
    pthread_mutex_init(&s->lock, NULL);
    s->opts = o;
    s->creator = getpid();
    s->listen_fd = -1;
    s->pending_sock = -1;
    if (!name) {
        const char *tmp = getenv("TMPDIR");
        if (!tmp || !*tmp)
            tmp = "/tmp";
        if (snprintf(s->dir, sizeof(s->dir), "%s/packet-ipc-XXXXXX", tmp) >= (int)sizeof(s->dir) || !mkdtemp(s->dir)) {
            int err = errno ? -errno : -ENAMETOOLONG;
            pipc_set_error("cannot create a private directory in %s", tmp);
            free(s);
            return err;
        }
        if (snprintf(s->name, sizeof(s->name), "%s/socket", s->dir) >= (int)sizeof(s->name)) {
            pipc_set_error("TMPDIR is too long for a unix socket address: %s", tmp);
            rmdir(s->dir);
            free(s);
            return -ENAMETOOLONG;
        }
    } else {
        if (strlen(name) >= sizeof(s->name)) {
            free(s);
            pipc_set_error("name too long for a unix socket address (%zu bytes, at most 107)", strlen(name));
            return -ENAMETOOLONG;
        }
        strcpy(s->name, name);
    }
    int fd = pipc_listen_at(s->name, o.allow_any_uid);
    if (fd < 0) {
        if (fd == -ENAMETOOLONG)
            pipc_set_error("name too long for a unix socket address (%zu bytes, at most 107): %s", strlen(s->name),
                           s->name);
        else
            pipc_set_error("cannot listen at %s: %s", s->name, strerror(-fd));
        if (s->dir[0])
            rmdir(s->dir);
        free(s);
        return fd;
    }
    s->listen_fd = fd;
    int err;
    if (o.allow_any_uid && (err = open_to_other_uids(s)) < 0) {
        pipc_set_error("cannot open %s to other uids: %s", s->dir, strerror(-err));
        pipc_server_close(s);
        return err;
    }
    *out = s;
    return 0;
}

const char *pipc_server_name(const pipc_server *server) { return server->name; }
int pipc_server_fd(const pipc_server *server) { return server->listen_fd; }

int pipc_server_allow_peer(pipc_server *server, int64_t uid, int64_t gid)
{
    if (uid >= 0) {
        if (server->n_uids >= PIPC_MAX_ALLOWED)
            return -ENOSPC;
        server->uids[server->n_uids++] = (uid_t)uid;
    }
    if (gid >= 0) {
        if (server->n_gids >= PIPC_MAX_ALLOWED)
            return -ENOSPC;
        server->gids[server->n_gids++] = (gid_t)gid;
    }
    return open_to_other_uids(server);
}

static int peer_allowed(const pipc_server *s, const struct ucred *cr)
{
    if (s->opts.allow_any_uid || cr->uid == geteuid() || cr->uid == 0)
        return 1;
    for (int i = 0; i < s->n_uids; i++)
        if (s->uids[i] == cr->uid)
            return 1;
    for (int i = 0; i < s->n_gids; i++)
        if (s->gids[i] == cr->gid)
            return 1;
    return 0;
}

static int refuse(int sock, int status, const char *fmt, const char *arg)
{
    struct pipc_welcome w = {.magic = PIPC_WELCOME_MAGIC, .wire_version = PIPC_WIRE_VERSION, .status = status};
    snprintf(w.message, sizeof(w.message), fmt, arg);
    pipc_set_error("%s", w.message);
    pipc_send_msg(sock, &w, sizeof(w), NULL, 0);
    return status;
}

/* One client's handshake on an accepted socket; on success fills *conn_out. */
static int server_handshake(pipc_server *s, int sock, uint64_t deadline, pipc_conn **conn_out)
{
    struct ucred cr;
    socklen_t crlen = sizeof(cr);
    if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cr, &crlen) < 0)
        return -errno;
    /* Read the HELLO before judging the peer, even one we refuse: closing a socket that still holds an unread
     * message resets it, and the peer's recv then fails with ECONNRESET ahead of our queued WELCOME, so a
     * refused client would report "connection reset" instead of our reason. */
    struct pipc_hello h;
    int fds[3];
    int r = pipc_recv_msg(sock, &h, sizeof(h), fds, 3, deadline);
    for (int i = 0; i < r; i++) /* a client has no business sending fds */
        close(fds[i]);
    if (r == -ECONNRESET || r == -ETIMEDOUT || r == -EINTR)
        return r;
    if (!peer_allowed(s, &cr)) {
        char who[64];
        snprintf(who, sizeof(who), "uid %u gid %u", (unsigned)cr.uid, (unsigned)cr.gid);
        count(&s->refused, 1);
        return refuse(sock, -EACCES, "client refused: %s is not allowed to connect", who);
    }
    if (r > 0)
        return refuse(sock, -EPROTO, "client refused: %s", "unexpected file descriptors in HELLO");
    if (r == -EPROTO || (r == 0 && h.magic != PIPC_HELLO_MAGIC))
        return refuse(sock, -EPROTO, "client refused: %s", "not a packet-ipc HELLO");
    if (r < 0)
        return r;
    if (h.wire_version != PIPC_WIRE_VERSION) {
        char v[64];
        snprintf(v, sizeof(v), "%u (this server speaks %u)", h.wire_version, PIPC_WIRE_VERSION);
        return refuse(sock, -EPROTO, "client refused: unsupported wire version %s", v);
    }
    pipc_conn *c = calloc(1, sizeof(*c));
    if (!c)
        return refuse(sock, -ENOMEM, "server out of memory%s", "");
    pthread_mutex_init(&c->lock, NULL);
    c->refs = 1; /* the caller's; pipc_dist_join adds the server's */
    c->sock = c->memfd = c->ev_data = c->ev_space = -1;
    int err = pipc_ring_create(&c->ring, &c->memfd, s->opts.capacity_bytes, s->opts.max_packets, s->opts.linktype,
                               s->opts.snaplen);
    if (err) {
        pthread_mutex_destroy(&c->lock);
        free(c);
        return refuse(sock, err, "server cannot create a ring: %s", strerror(-err));
    }
    c->ev_data = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    c->ev_space = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (c->ev_data < 0 || c->ev_space < 0) {
        err = -errno;
        c->sock = -1;
        pipc_conn_close(c);
        return refuse(sock, err, "server cannot create eventfds: %s", strerror(-err));
    }
    struct pipc_welcome w = {.magic = PIPC_WELCOME_MAGIC, .wire_version = PIPC_WIRE_VERSION, .status = 0};
    int send_fds[3] = {c->memfd, c->ev_data, c->ev_space};
    err = pipc_send_msg(sock, &w, sizeof(w), send_fds, 3);
    if (err) {
        c->sock = -1;
        pipc_conn_close(c);
        return err;
    }
    c->sock = sock;
    c->overflow = s->opts.overflow;
    if (h.flags & PIPC_HELLO_WANT_DROP) /* the client chose; a worker that may fall behind asks for drop */
        c->overflow = PIPC_OVERFLOW_DROP;
    else if (h.flags & PIPC_HELLO_WANT_BLOCK)
        c->overflow = PIPC_OVERFLOW_BLOCK;
    c->linktype = s->opts.linktype;
    c->snaplen = s->opts.snaplen;
    c->peer_pid = cr.pid;
    c->generation = current_generation();
    *conn_out = c;
    return 0;
}

static int server_accept_locked(pipc_server *server, uint64_t deadline, pipc_conn **out);

int pipc_server_accept(pipc_server *server, int timeout_ms, pipc_conn **out)
{
    uint64_t deadline = pipc_deadline(timeout_ms);
    int r = lock_call(&server->lock, deadline, "server");
    if (r)
        return r;
    r = server_accept_locked(server, deadline, out);
    pthread_mutex_unlock(&server->lock);
    if (r == 0 && (r = pipc_dist_join(&server->dist, *out)) < 0) {
        pipc_conn_close(*out);
        *out = NULL;
    }
    return r;
}

void pipc_server_stats(pipc_server *server, struct pipc_server_stats *stats)
{
    struct pipc_server_stats st = {.struct_bytes = sizeof(st)};
    /* Short locks and counters only: an accept or a send may be waiting on another thread. */
    pthread_mutex_lock(&server->dist.set_lock);
    st.workers = server->dist.n_workers;
    st.accepted = server->dist.accepted;
    pthread_mutex_unlock(&server->dist.set_lock);
    st.lost_packets = counted(&server->dist.lost_packets);
    st.refused = counted(&server->refused);
    st.handshake_failures = counted(&server->handshake_failures);
    size_t n = stats->struct_bytes < sizeof(st) ? stats->struct_bytes : sizeof(st);
    memcpy(stats, &st, n);
    stats->struct_bytes = n;
}

void pipc_server_shutdown(pipc_server *server)
{
    set_closing(&server->closing);
    /* Wakes a poll on the listening socket (it reports read hang-up); accept then sees `closing`. */
    if (server->listen_fd >= 0)
        shutdown(server->listen_fd, SHUT_RD);
}

static int server_accept_locked(pipc_server *server, uint64_t deadline, pipc_conn **out)
{
    for (;;) {
        if (is_closing(&server->closing)) {
            pipc_set_error("server closed by another thread");
            return -EPIPE;
        }
        int sock, r;
        uint64_t hs_deadline;
        if (server->pending_sock >= 0) { /* a handshake the previous call's timeout interrupted */
            sock = server->pending_sock;
            hs_deadline = server->pending_deadline_ns;
            server->pending_sock = -1;
            goto handshake;
        }
        struct pollfd p = {.fd = server->listen_fd, .events = POLLIN};
        uint64_t now = pipc_now_ns();
        int ms = deadline == UINT64_MAX ? -1 : now >= deadline ? 0 : (int)((deadline - now + 999999) / 1000000);
        r = poll(&p, 1, ms);
        if (r < 0)
            return errno == EINTR ? -EINTR : -errno;
        if (is_closing(&server->closing))
            continue;
        if (r == 0) {
            pipc_set_error("no client connected in time");
            return -ETIMEDOUT;
        }
        sock = accept4(server->listen_fd, NULL, NULL, SOCK_CLOEXEC);
        if (sock < 0) {
            if (errno == EINTR || errno == EAGAIN || errno == ECONNABORTED)
                continue;
            pipc_set_error("accept failed: %s", strerror(errno));
            return -errno; /* EMFILE and friends: the caller sees it, the server stays usable */
        }
        /* A client gets a bounded time for its HELLO; one that dies or stalls in the handshake is dropped and
         * we go on waiting for the next, within the caller's deadline. */
        hs_deadline = pipc_now_ns() + PIPC_HANDSHAKE_MS * 1000000ULL;
    handshake:
        r = server_handshake(server, sock, hs_deadline < deadline ? hs_deadline : deadline, out);
        if (r == 0)
            return 0;
        /* The caller's timeout (or a signal), not the client's bound, ended the wait for its HELLO: keep the
         * socket for the next call. Dropping it would reset a client that did nothing wrong; a server polling
         * accept() with short timeouts did so to most clients whose HELLO lagged the connect by a moment. */
        if ((r == -ETIMEDOUT || r == -EINTR) && pipc_now_ns() < hs_deadline) {
            server->pending_sock = sock;
            server->pending_deadline_ns = hs_deadline;
            if (r == -ETIMEDOUT)
                pipc_set_error("no client completed its handshake in time");
            return r;
        }
        close(sock);
        if (r == -ECONNRESET || r == -ETIMEDOUT || r == -EPIPE) {
            count(&server->handshake_failures, 1);
            continue;
        }
        return r;
    }
}

void pipc_server_close(pipc_server *server)
{
    if (!server)
        return;
    close_fd(&server->listen_fd);
    close_fd(&server->pending_sock);
    pipc_dist_destroy(&server->dist); /* the connections stay usable: their callers hold them */
    pthread_mutex_destroy(&server->lock);
    /* Only the process that created the endpoint removes it (a forked child's close must not). */
    if (server->creator == getpid()) {
        if (server->name[0] != '@')
            unlink(server->name);
        if (server->dir[0])
            rmdir(server->dir);
    }
    free(server);
}

/* ---------------- connection (producer) ---------------- */

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
            if (now - start > SPIN_NS || now >= deadline || is_closing(&c->closing))
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

static long conn_send_locked(pipc_conn *c, const struct pipc_packet *pk, size_t n, uint64_t deadline,
                             size_t *written_out);

long pipc_conn_send(pipc_conn *c, const struct pipc_packet *pk, size_t n, int timeout_ms)
{
    uint64_t deadline = pipc_deadline(timeout_ms);
    size_t written = 0;
    int err = pipc_conn_send_until(c, pk, n, deadline, &written);
    if (!err || (written && (err == -ETIMEDOUT || err == -EINTR || err == -EPIPE)))
        return (long)written;
    return err;
}

int pipc_conn_send_until(pipc_conn *c, const struct pipc_packet *pk, size_t n, uint64_t deadline, size_t *written)
{
    *written = 0;
    int err = lock_call(&c->lock, deadline, "connection");
    if (err)
        return err;
    long r = conn_send_locked(c, pk, n, deadline, written);
    pthread_mutex_unlock(&c->lock);
    return (int)r;
}

/* Returns 0 with *written == n, or the error that stopped it with *written packets written before it. */
static long conn_send_locked(pipc_conn *c, const struct pipc_packet *pk, size_t n, uint64_t deadline,
                             size_t *written_out)
{
    int err = conn_check(c);
    if (err)
        return err;
    /* Half the ring at most: see pipc_ring_take (a consumer holding one batch must never stall us). */
    uint64_t half = c->ring.payload_bytes / 2;
    uint64_t limit = half < c->snaplen ? half : c->snaplen;
    for (size_t i = 0; i < n; i++) {
        if (pk[i].linktype > 0xffff && pk[i].linktype != PIPC_LINKTYPE_DEFAULT) { /* the descriptor holds 16 bits,
                                                                                 * as pcapng's link type does */
            pipc_set_error("packet %zu has linktype %u; linktypes are 16-bit values", i, pk[i].linktype);
            return -EINVAL;
        }
        if (pk[i].caplen > limit) {
            pipc_set_error("packet %zu has %u bytes, more than the %s (%llu bytes)", i, pk[i].caplen,
                           half < c->snaplen ? "ring holds (half its capacity)" : "snaplen",
                           (unsigned long long)limit);
            return -EMSGSIZE;
        }
    }
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
            if (pipc_ring_publish(&c->ring))
                pipc_wake(c->ev_data);
            count(&c->stats.packets, j - i);
            count(&c->stats.bytes, bytes);
            written += j - i;
            i = j;
            continue;
        }
        if (c->overflow == PIPC_OVERFLOW_DROP) {
            uint64_t dropped_bytes = 0;
            for (j = i; j < n; j++)
                dropped_bytes += pk[j].caplen;
            pipc_ring_count_drop(&c->ring, n - i, dropped_bytes);
            count(&c->stats.dropped_packets, n - i);
            count(&c->stats.dropped_bytes, dropped_bytes);
            uint64_t now = pipc_now_ns();
            if (now - c->last_alive_check_ns > ALIVE_CHECK_NS) {
                c->last_alive_check_ns = now;
                if (pipc_peer_gone(c->sock))
                    err = conn_fail(c, -ECONNRESET);
            }
            break;
        }
        err = conn_wait_space(c, 1, pk[i].caplen, deadline);
        if (err == -ETIMEDOUT)
            pipc_set_error("ring full: no space within the timeout");
        else if (err && err != -EINTR && err != -EPIPE)
            err = conn_fail(c, err);
        if (err)
            break;
    }
    *written_out = written;
    return err;
}

/* End of stream (PIPC_STATE_END) or abort: after the sends in progress on other threads. */
static int conn_finish(pipc_conn *c, uint32_t state)
{
    lock_call(&c->lock, UINT64_MAX, "connection");
    int err = sticky_error(&c->error);
    if (!err && !c->ended) { /* after end of stream, an abort is too late to say otherwise */
        c->ended = 1;
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
                               .ended = __atomic_load_n(&c->ended, __ATOMIC_RELAXED), .index = c->index};
    size_t n = info->struct_bytes < sizeof(i) ? info->struct_bytes : sizeof(i);
    memcpy(info, &i, n);
    info->struct_bytes = n;
}

int pipc_conn_alive(pipc_conn *c)
{
    if (sticky_error(&c->error) == -ECONNRESET || __atomic_load_n(&c->closed, __ATOMIC_ACQUIRE) || c->sock < 0)
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
        uint64_t ws = pipc_load_acquire64(&r->hdr->write_slot);
        uint64_t rs = pipc_load_acquire64(&r->hdr->read_slot), rp = pipc_load_acquire64(&r->hdr->read_payload);
        st->ring_used_slots = rs <= ws ? ws - rs : 0;
        st->ring_used_bytes = rp <= st->bytes ? st->bytes - rp : 0;
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
    close_fd(&c->sock);
    close_fd(&c->memfd);
    close_fd(&c->ev_data);
    close_fd(&c->ev_space);
}

void pipc_conn_close(pipc_conn *c)
{
    if (!c)
        return;
    /* A send waiting for space on it (a server-level send, say) gives up at once rather than hold us. */
    pipc_conn_shutdown(c);
    lock_call(&c->lock, UINT64_MAX, "connection");
    /* A close without send(None) still ends the stream cleanly: the client drains, then sees the end. A
     * forked child's copy must not end its parent's stream. */
    if (c->ring.hdr && !sticky_error(&c->error) && !c->ended && c->generation == current_generation() &&
        pipc_ring_set_state(&c->ring, PIPC_STATE_END) && c->ev_data >= 0)
        pipc_wake(c->ev_data);
    c->ended = 1;
    __atomic_store_n(&c->closed, 1, __ATOMIC_RELEASE); /* the server drops it from its workers */
    conn_release_resources(c); /* now, even while the server still holds the object */
    pthread_mutex_unlock(&c->lock);
    pipc_conn_unref(c);
}

/* Drops one reference (the caller's, or the server's when the worker leaves); the last frees everything. */
void pipc_conn_unref(pipc_conn *c)
{
    if (__atomic_sub_fetch(&c->refs, 1, __ATOMIC_ACQ_REL) > 0)
        return;
    conn_release_resources(c);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

/* ---------------- client (consumer) ---------------- */

static int client_connect(const char *name, int timeout_ms, uint32_t flags, pipc_client **out);

int pipc_client_connect(const char *name, int timeout_ms, pipc_client **out)
{
    return client_connect(name, timeout_ms, 0, out);
}

int pipc_client_connect_with(const char *name, int timeout_ms, const struct pipc_client_options *options,
                             pipc_client **out)
{
    struct pipc_client_options o = {.struct_bytes = sizeof(o), .use_server_overflow = 1};
    if (options) {
        size_t n = options->struct_bytes < sizeof(o) ? options->struct_bytes : sizeof(o);
        if (n < sizeof(size_t))
            return -EINVAL;
        memcpy(&o, options, n);
    }
    uint32_t flags = 0; /* the HELLO says which policy this client wants (the server's when it says none) */
    if (!o.use_server_overflow && o.overflow == PIPC_OVERFLOW_DROP)
        flags = PIPC_HELLO_WANT_DROP;
    else if (!o.use_server_overflow && o.overflow == PIPC_OVERFLOW_BLOCK)
        flags = PIPC_HELLO_WANT_BLOCK;
    else if (!o.use_server_overflow && o.overflow != -1) {
        pipc_set_error("overflow must be PIPC_OVERFLOW_BLOCK, PIPC_OVERFLOW_DROP or -1, not %d", o.overflow);
        return -EINVAL;
    }
    int err = client_connect(name, timeout_ms, flags, out);
    if (!err)
        (*out)->busy_poll = o.busy_poll != 0;
    return err;
}

static int client_connect(const char *name, int timeout_ms, uint32_t flags, pipc_client **out)
{
    struct sockaddr_un addr;
    socklen_t len;
    int err = pipc_name_to_addr(name, &addr, &len);
    if (err) {
        pipc_set_error(err == -ENAMETOOLONG ? "name too long for a unix socket address: %s" : "invalid name: '%s'",
                       name);
        return err;
    }
    int sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (sock < 0)
        return -errno;
    while (connect(sock, (struct sockaddr *)&addr, len) < 0) {
        if (errno == EINTR)
            continue;
        err = -errno;
        pipc_set_error("cannot connect to %s: %s", name, strerror(errno));
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
    struct pipc_welcome w;
    int fds[3] = {-1, -1, -1};
    int nfds = pipc_recv_msg(sock, &w, sizeof(w), fds, 3, pipc_deadline(timeout_ms));
    if (nfds < 0) {
        close(sock);
        if (nfds == -ECONNRESET) {
            pipc_set_error("server at %s closed the connection during the handshake", name);
            return -ECONNREFUSED;
        }
        if (nfds == -ETIMEDOUT)
            pipc_set_error("server at %s did not accept in time", name);
        else if (nfds == -EPROTO)
            pipc_set_error("server at %s does not speak packet-ipc (bad WELCOME)", name);
        return nfds;
    }
    err = 0;
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
    c->spin_ns = SPIN_NS;
    c->generation = current_generation();
    *out = c;
    return 0;
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

static long client_take_locked(pipc_client *c, struct pipc_packet *pk, size_t max, uint64_t deadline,
                               int busy_poll);

static long client_take(pipc_client *c, struct pipc_packet *pk, size_t max, int timeout_ms, int busy_poll)
{
    int err = sticky_error(&c->error);
    if (err)
        return err;
    if (max == 0)
        return -EINVAL;
    uint64_t deadline = pipc_deadline(timeout_ms);
    if ((err = lock_call(&c->lock, deadline, "client")))
        return err;
    long r = client_take_locked(c, pk, max, deadline, busy_poll);
    pthread_mutex_unlock(&c->lock);
    return r;
}

/* One look at the ring under the state lock: n > 0 packets taken, or (n == 0) *idle from client_idle_state. */
static long client_look(pipc_client *c, struct pipc_packet *pk, size_t max, int *idle)
{
    pthread_mutex_lock(&c->state_lock);
    long n = pipc_ring_take(&c->ring, pk, max);
    if (n == 0)
        *idle = client_idle_state(c);
    pthread_mutex_unlock(&c->state_lock);
    return n;
}

static long client_take_locked(pipc_client *c, struct pipc_packet *pk, size_t max, uint64_t deadline, int busy_poll)
{
    if (c->armed) { /* left armed by pipc_client_prepare_wait: else the server would write the eventfd on every
                     * publish from now on */
        c->armed = 0;
        pipc_ring_consumer_disarm(&c->ring);
    }
    uint64_t start = 0, now = 0;
    for (unsigned k = 0;; k++) {
        int idle = 1;
        long n = client_look(c, pk, max, &idle);
        if (n < 0)
            return client_fail(c, (int)n);
        if (n > 0) {
            uint64_t bytes = 0;
            for (long i = 0; i < n; i++)
                bytes += pk[i].caplen;
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
    return (int)client_take(c, pk, max, timeout_ms, c->busy_poll);
}

int pipc_client_release_range(pipc_client *c, uint64_t first, uint64_t n)
{
    if (c->generation != current_generation()) /* a forked copy: the ring belongs to the parent */
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
    if (c->generation != current_generation())
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
        st->dropped_packets = pipc_load_relaxed64(&r->hdr->dropped_packets);
        st->dropped_bytes = pipc_load_relaxed64(&r->hdr->dropped_bytes);
        uint64_t ws = pipc_load_acquire64(&r->hdr->write_slot);
        st->ring_used_slots = ws >= r->c_released_slot ? ws - r->c_released_slot : 0;
        st->ring_used_bytes = r->c_next_payload - r->c_released_payload; /* taken and unreleased */
    }
    pthread_mutex_unlock((pthread_mutex_t *)&c->state_lock);
    st->ring_bytes = r->payload_bytes;
    st->ring_slots = r->slot_count;
}

void pipc_client_disconnect(pipc_client *c)
{
    close_fd(&c->poll_fd);
    close_fd(&c->sock);
    close_fd(&c->ev_data);
    close_fd(&c->ev_space);
    close_fd(&c->memfd);
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
