/*
 * server.c - the endpoint (include/packet_ipc.h, "Server side"): a SEQPACKET socket in a private directory,
 * the handshake that hands each client its ring (memfd, eventfds), access control by SO_PEERCRED.
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
    struct pipc_server_options o = {sizeof(o), 0, 0, 1, PIPC_DEFAULT_SNAPLEN, PIPC_OVERFLOW_BLOCK, 0, PIPC_DISTRIBUTION_FLOW};
    if (options) {
        size_t n = options->struct_bytes < sizeof(o) ? options->struct_bytes : sizeof(o);
        if (n < sizeof(size_t))
            return -EINVAL;
        memcpy(&o, options, n);
        o.struct_bytes = sizeof(o);
    }
    if (!o.snaplen)
        o.snaplen = PIPC_DEFAULT_SNAPLEN;
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

int pipc_server_pending_fd(pipc_server *server)
{
    if (pthread_mutex_trylock(&server->lock) != 0) /* an accept is running: it owns the pending socket */
        return -1;
    int fd = server->pending_sock;
    pthread_mutex_unlock(&server->lock);
    return fd;
}

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
    c->generation = pipc_fork_generation();
    *conn_out = c;
    return 0;
}

static int server_accept_locked(pipc_server *server, uint64_t deadline, pipc_conn **out);

int pipc_server_accept(pipc_server *server, int timeout_ms, pipc_conn **out)
{
    uint64_t deadline = pipc_deadline(timeout_ms);
    int r = pipc_lock_until(&server->lock, deadline, "server");
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
    pipc_close_fd(&server->listen_fd);
    pipc_close_fd(&server->pending_sock);
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
