/*
 * packet_ipc.h - the stable C ABI of packet-ipc.
 *
 * A server (the producer, e.g. a capture or replay process) creates an endpoint with a name; each client
 * (a worker) connects by that name and gets its own shared-memory ring. The server sends batches of
 * packets; the client receives them with no copy: `struct pipc_packet.data` points into the shared ring and
 * stays valid until the client releases that packet (packets may be released in any order).
 *
 * Conventions:
 *  - Functions returning `int` return 0 (or a count) on success and a negative errno-style code on error;
 *    `pipc_strerror()` names it. The codes used: -ETIMEDOUT (timeout), -ECONNRESET (peer vanished without
 *    end of stream), -EPROTO (protocol violation: version mismatch, corrupt ring, wrong peer), -EMSGSIZE (a
 *    packet larger than the ring), -EACCES (peer credentials refused), -ENOENT / -ECONNREFUSED (no server
 *    at that name), -ENAMETOOLONG, -EINTR (a signal interrupted a wait; call again), -EPIPE (send after end
 *    of stream), -EINVAL, -ENOMEM.
 *  - Timeouts are in milliseconds; a negative timeout waits forever, 0 does not block.
 *  - Thread safety: every object may be used from several threads. Calls on one object are serialised: each
 *    packet is written or received exactly once and each thread's packets stay in order (a call holds the
 *    object while it waits, so a call that returns complete was not interleaved; a release may run while
 *    another thread waits in a receive). With timeout 0 a call only tries: -ETIMEDOUT if another thread is inside a
 *    call on the same object. Only *_close must not race with other calls on its object: call *_shutdown
 *    first to wake a thread blocked in it (that call then fails with -EPIPE), and close once it has left.
 *  - Build: cc prog.c $(packet-ipc config --cflags --libs)
 *
 * Versioning: PACKET_IPC_ABI_VERSION changes only when this ABI changes incompatibly; pipc_abi_version()
 * reports the library's; PACKET_IPC_VERSION and pipc_version() name the release. Option structs begin with their own size so they can grow compatibly.
 */
#ifndef PACKET_IPC_H
#define PACKET_IPC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PACKET_IPC_ABI_VERSION 1
/* The release of packet-ipc this header belongs to: the one place the version is written (setup.py reads it for
 * the Python package). pipc_version() reports the library's. */
#define PACKET_IPC_VERSION "0.1.0"

#if defined(PIPC_BUILD_SHARED) && defined(__GNUC__)
#define PIPC_API __attribute__((visibility("default")))
#else
#define PIPC_API
#endif

/* On send, a packet whose linktype is this takes the server's default linktype. (0 is LINKTYPE_NULL.) */
#define PIPC_LINKTYPE_DEFAULT 0xffffffffu

/* Defaults and bounds, written once: the library uses these, and the Python package reads them from its
 * binding (packet_ipc._core). */
#define PIPC_DEFAULT_CAPACITY_BYTES (4u << 20) /* payload bytes of a ring when capacity_bytes is 0 (4 MiB) */
#define PIPC_DEFAULT_SNAPLEN 262144u           /* a server's snaplen when 0; the largest snaplen of a capture */
#define PIPC_HANDSHAKE_MS 2000                 /* how long a server waits for a connecting client's HELLO */
#define PIPC_SPIN_NS 20000                     /* how long a blocking receive or send spins before it sleeps */

/* How a server-level send (pipc_server_send) spreads packets over the server's live workers. */
#define PIPC_DISTRIBUTION_FLOW 0        /* symmetric 5-tuple hash: both directions of a flow to one worker */
#define PIPC_DISTRIBUTION_ROUND_ROBIN 1 /* each call's packets to the next worker */
#define PIPC_DISTRIBUTION_BROADCAST 2   /* every packet to every worker */

/* Overflow policy of one connection (what a send does when that client's ring is full). */
#define PIPC_OVERFLOW_BLOCK 0 /* wait for space: lossless (default) */
#define PIPC_OVERFLOW_DROP 1  /* drop what does not fit and count it; never blocks */

/* One packet. On receive, `data` points into shared memory (read-only) and `id` identifies the packet for
 * pipc_client_release(). On send, fill ts_ns, caplen, origlen, data (and ifindex/linktype if needed;
 * linktype PIPC_LINKTYPE_DEFAULT means "the server's linktype"; 0 is LINKTYPE_NULL, BSD loopback); id is ignored.
 * Received packets always carry their concrete linktype (a 16-bit value). */
struct pipc_packet {
    uint64_t ts_ns;       /* capture time, nanoseconds since the Unix epoch */
    uint32_t caplen;      /* bytes at data */
    uint32_t origlen;     /* length on the wire (>= caplen for truncated captures) */
    uint32_t linktype;    /* pcap LINKTYPE_* value */
    uint32_t ifindex;     /* interface index of the capture (0 if unknown) */
    const uint8_t *data;  /* caplen bytes */
    uint64_t id;          /* receive side: opaque handle for pipc_client_release() */
};

/* Counters of one side of a connection. */
struct pipc_stats {
    uint64_t packets;         /* sent (server side) or received (client side) */
    uint64_t bytes;           /* captured bytes, as above */
    uint64_t dropped_packets; /* dropped by the server under PIPC_OVERFLOW_DROP (both sides see it) */
    uint64_t dropped_bytes;
    uint64_t blocked_ns;      /* time spent waiting for space (server) or for packets (client) */
    uint64_t ring_used_bytes; /* payload bytes committed but not yet released, at the time of the call */
    uint64_t ring_bytes;      /* payload capacity of the ring */
    uint64_t ring_used_slots; /* descriptors committed but not yet released */
    uint64_t ring_slots;      /* descriptor capacity of the ring */
};

struct pipc_server_options {
    size_t struct_bytes;     /* sizeof(struct pipc_server_options): set it, for compatible growth */
    uint64_t capacity_bytes; /* payload bytes per client ring (rounded up to a power of two; 0: 4 MiB) */
    uint32_t max_packets;    /* descriptors per client ring (power of two; 0: capacity_bytes / 128) */
    uint32_t linktype;       /* default linktype of packets (0 is LINKTYPE_NULL; Ethernet is 1) */
    uint32_t snaplen;        /* largest caplen accepted (0: 262144) */
    int overflow;            /* PIPC_OVERFLOW_BLOCK or PIPC_OVERFLOW_DROP, for every connection */
    int allow_any_uid;       /* 0: only clients of this process's uid (or root) may connect; else any uid
                                (the socket is then 0666 and the private directory 0711) */
    int distribution;        /* PIPC_DISTRIBUTION_* for pipc_server_send (0: flow) */
};

/* Options of a client (pipc_client_connect_with). Zero fields take defaults. */
struct pipc_client_options {
    size_t struct_bytes; /* sizeof(struct pipc_client_options): set it, for compatible growth */
    int overflow;        /* what the server does when this client's ring is full: PIPC_OVERFLOW_BLOCK or
                            PIPC_OVERFLOW_DROP, chosen by the client; -1 (or 0 with use_server_overflow): the
                            server's policy */
    int use_server_overflow; /* 1: ignore overflow, take the server's policy */
    int busy_poll;       /* 1: receives spin on the ring instead of sleeping (one core per client, lowest latency) */
};

/* One accepted connection, as the server sees it (pipc_conn_info). */
struct pipc_conn_info {
    size_t struct_bytes; /* sizeof(struct pipc_conn_info): set it, for compatible growth */
    int64_t peer_pid;    /* the client's process id (SO_PEERCRED at accept) */
    int overflow;        /* PIPC_OVERFLOW_BLOCK or PIPC_OVERFLOW_DROP (the client may have chosen it) */
    int ended;           /* 1 once the stream was ended or aborted */
    uint32_t index;      /* order of acceptance on its server (0, 1, ...) */
};

/* Counters of a server's distribution (pipc_server_stats). */
struct pipc_server_stats {
    size_t struct_bytes;        /* sizeof(struct pipc_server_stats): set it, for compatible growth */
    uint64_t workers;           /* live workers now */
    uint64_t accepted;          /* connections accepted so far */
    uint64_t lost_packets;      /* left unread in the rings of workers that died */
    uint64_t refused;           /* clients refused by the uid/gid check */
    uint64_t handshake_failures; /* clients that died or stalled during the handshake */
};

typedef struct pipc_server pipc_server;
typedef struct pipc_conn pipc_conn;
typedef struct pipc_client pipc_client;

/* Library's ABI version (PACKET_IPC_ABI_VERSION it was built with). */
PIPC_API int pipc_abi_version(void);
/* Version of the shared-memory layout and handshake this library speaks (docs/wire-format.md); a client and a
 * server of different wire versions refuse each other with -EPROTO. */
PIPC_API int pipc_wire_version(void);
/* Library's release (the PACKET_IPC_VERSION string it was built with, e.g. "0.1.0"); static, never NULL. */
PIPC_API const char *pipc_version(void);
/* A static, readable description of an error code returned by this library (negative) or of an errno. */
PIPC_API const char *pipc_strerror(int code);
/* A readable sentence about the last error this thread got from the library (names, sizes, reasons). Read it
 * right after a call failed: it is not cleared by calls that succeed. */
PIPC_API const char *pipc_last_error(void);

/* ---- Server side (producer) ---- */

/* Creates an endpoint. name == NULL picks a fresh path in a private (0700) directory; otherwise name is the
 * filesystem path of the socket to create (it must not exist). options may be NULL for defaults. */
PIPC_API int pipc_server_create(const char *name, const struct pipc_server_options *options, pipc_server **out);
/* The name clients connect to (valid until pipc_server_close). */
PIPC_API const char *pipc_server_name(const pipc_server *server);
/* The listening socket: readable when a client is waiting to be accepted (for poll/epoll). */
PIPC_API int pipc_server_fd(const pipc_server *server);
/* Lets clients of this uid (uid >= 0) or of this gid (gid >= 0) connect too (besides this process's uid and
 * root); pass -1 for the other. At most 16 of each (-ENOSPC). Opens the socket's mode to other uids. */
PIPC_API int pipc_server_allow_peer(pipc_server *server, int64_t uid, int64_t gid);
/* Waits up to timeout_ms for one client and performs the handshake. Errors about one client (-EPROTO,
 * -EACCES, ...) leave the server usable: call again. The connection is also one of the server's workers
 * (see pipc_server_send); close it with pipc_conn_close whether or not the server is still open. */
PIPC_API int pipc_server_accept(pipc_server *server, int timeout_ms, pipc_conn **out);
/* The socket of a client whose handshake a pipc_server_accept with a short timeout left half done (its HELLO
 * had not arrived), or -1 (none, or another thread is inside an accept). An event loop polls it (readable when
 * the HELLO arrives or the client hangs up) instead of the listening socket, then calls pipc_server_accept
 * with timeout 0 again, which resumes that handshake. Poll it only; valid until that next accept. */
PIPC_API int pipc_server_pending_fd(pipc_server *server);
/* ---- Many workers: server-level sends over every live connection ----
 * Every accepted connection is also one of the server's workers until it dies or is closed. A joining
 * worker takes 1/n of each worker's flow buckets; a dead worker's buckets go to the survivors (the other
 * flows never move) and packets not yet written to it go to them instead; what was left unread in its
 * ring is counted as lost. Each connection keeps its own overflow policy (block, or drop and count). */

/* Distributes n packets by the server's distribution policy. Blocks like pipc_conn_send (up to timeout_ms in
 * total) on a worker whose policy is block. Returns the number of packets written (under broadcast, counted
 * once per packet); -ECONNRESET when no worker is connected, or when every worker died during the call
 * (then pipc_server_send_some lists the packets not written: never a short count without an error); -EMSGSIZE/-EINVAL (nothing sent)
 * for a packet no ring takes. If a wait times out or is interrupted, returns the count written so far, or
 * -ETIMEDOUT / -EINTR if none: which packets were written is then reported by pipc_server_send_some. */
PIPC_API long pipc_server_send(pipc_server *server, const struct pipc_packet *packets, size_t n, int timeout_ms);
/* As pipc_server_send, and when it stops early (timeout, signal) it lists the indices of the packets it did
 * not write in unsent[0 .. *n_unsent), ascending (unsent has room for n): call again with just those to go
 * on, and every packet still arrives exactly once and in its flow's order. */
PIPC_API long pipc_server_send_some(pipc_server *server, const struct pipc_packet *packets, size_t n,
                                   int timeout_ms, uint32_t *unsent, size_t *n_unsent);
/* The non-blocking form of pipc_server_send_some, for an event loop: never waits. When a worker's full ring
 * (block policy) stops it, it returns the count written (or -ETIMEDOUT if none), lists the unsent packets as
 * pipc_server_send_some does, and sets *stalled to that worker's acceptance index and *need_bytes to what its
 * next packet needs: wait on that connection (pipc_conn_prepare_wait(conn, *need_bytes), pipc_conn_fd,
 * pipc_conn_socket, pipc_conn_finish_wait), then call again with the unsent packets. *stalled is UINT32_MAX
 * when no worker stalled. -EBUSY (nothing sent): another thread is inside a call on this server's workers;
 * -EOPNOTSUPP under broadcast (a part of a broadcast cannot be resumed: send to each connection). */
PIPC_API long pipc_server_send_nowait(pipc_server *server, const struct pipc_packet *packets, size_t n,
                                     uint32_t *unsent, size_t *n_unsent, uint32_t *stalled, uint64_t *need_bytes);
/* Ends every live worker's stream (after looking for dead workers: what they held is counted as lost). */
PIPC_API int pipc_server_end(pipc_server *server);
/* Aborts every live worker's stream (see pipc_conn_abort). */
PIPC_API int pipc_server_abort(pipc_server *server);
/* Looks at every worker now and drops the dead ones (sends do it every 50 ms and when a wait fails). Returns
 * how many were dropped. */
PIPC_API int pipc_server_check_workers(pipc_server *server);
/* The acceptance indices (0, 1, ... in order of pipc_server_accept) of the live workers, in order; returns
 * how many there are (fills at most max). */
PIPC_API size_t pipc_server_workers(pipc_server *server, uint32_t *indices, size_t max);
/* Counters of the server (stats->struct_bytes must be set). */
PIPC_API void pipc_server_stats(pipc_server *server, struct pipc_server_stats *stats);

/* Wakes a thread blocked in pipc_server_accept (it returns -EPIPE), and makes later accepts fail so. Any thread.
 * The server must still be closed with pipc_server_close once no thread uses it. */
PIPC_API void pipc_server_shutdown(pipc_server *server);
/* Closes the endpoint and removes its socket (and its private directory). Open connections stay usable. */
PIPC_API void pipc_server_close(pipc_server *server);

/* Sends n packets in order. Blocks while the ring is full (PIPC_OVERFLOW_BLOCK) up to timeout_ms in total.
 * Returns the number of packets written to the ring (n on success; under PIPC_OVERFLOW_DROP those that did
 * not fit are counted as dropped and not included); if a wait times out or is interrupted after some were
 * written, returns that count, and otherwise -ETIMEDOUT / -EINTR. -ECONNRESET: the client is gone.
 * -EMSGSIZE (nothing sent): a packet is larger than the ring or the snaplen. */
PIPC_API long pipc_conn_send(pipc_conn *conn, const struct pipc_packet *packets, size_t n, int timeout_ms);
/* n packets given as columns (a columnar batch): packet i has ts_ns[i], caplen[i], origlen[i] (NULL or 0:
 * caplen), ifindex[i] (NULL: 0), linktype[i] (NULL or PIPC_LINKTYPE_DEFAULT: the server's), and its bytes at
 * data + caplen[0] + ... + caplen[i-1] (all payloads back to back). Set struct_bytes to sizeof(struct
 * pipc_columns). */
struct pipc_columns {
    size_t struct_bytes;
    const uint64_t *ts_ns;
    const uint32_t *caplen, *origlen, *ifindex, *linktype;
    const uint8_t *data;
};
/* Sends n packets given as columns, in order: the same waits, drops, errors and return value as
 * pipc_conn_send, with descriptors written in one pass over the columns and the payloads in one copy per ring
 * space found. -EINVAL also for struct_bytes too small or a NULL ts_ns, caplen or data. */
PIPC_API long pipc_conn_send_columns(pipc_conn *conn, const struct pipc_columns *cols, size_t n, int timeout_ms);
/* Zero-copy send: the packets are built in place, in the ring, and each byte is written once.
 * pipc_conn_reserve waits (as pipc_conn_send) until n_packets descriptors and n_bytes payload bytes are free,
 * at most half the ring, and fills *res: data (n_bytes writable bytes in the ring; packet i's bytes start where
 * packet i-1's end) and the columns ts_ns, caplen, origlen (0: caplen), ifindex, linktype
 * (PIPC_LINKTYPE_DEFAULT: the server's), n_packets entries each, preset to 0 / PIPC_LINKTYPE_DEFAULT. Nothing is
 * visible to the client until pipc_conn_commit(conn, n) publishes the first n packets (n == 0 abandons the
 * reservation). One reservation per connection at a time; other sends wait for its commit, which any thread
 * may make. Returns 0, or -ETIMEDOUT/-EINTR/-ECONNRESET/-EPIPE/-EPROTO as pipc_conn_send, -EMSGSIZE (more
 * than half the ring), -EINVAL (n_packets 0), -ENOBUFS (PIPC_OVERFLOW_DROP and no room: counted as dropped),
 * -EBUSY (this thread already holds one). */
struct pipc_reservation {
    size_t n_packets;   /* entries of each column */
    uint64_t n_bytes;   /* writable bytes at data */
    uint8_t *data;      /* in the ring: valid until the commit (or the connection's close) */
    uint64_t *ts_ns;
    uint32_t *caplen, *origlen, *ifindex, *linktype;
};
PIPC_API int pipc_conn_reserve(pipc_conn *conn, size_t n_packets, uint64_t n_bytes, int timeout_ms,
                               struct pipc_reservation *res);
/* Publishes the first n packets of the open reservation and closes it; returns n. -EINVAL (no reservation, or
 * n larger than it), -EMSGSIZE (a caplen above the snaplen or half the ring, or the packets' bytes beyond
 * n_bytes) leave it open; -EPIPE/-ECONNRESET/-EPROTO (the connection ended or failed meanwhile) abandon it. */
PIPC_API long pipc_conn_commit(pipc_conn *conn, size_t n);
/* Signals end of stream: the client drains what was sent, then receives 0. */
PIPC_API int pipc_conn_end(pipc_conn *conn);
/* Aborts the stream (the server failed mid-way): the client drains what was sent, then gets -ECONNRESET with
 * "the server aborted the stream", never a clean end. Further sends fail with -EPIPE. */
PIPC_API int pipc_conn_abort(pipc_conn *conn);
/* Counters of this connection. */
PIPC_API void pipc_conn_stats(const pipc_conn *conn, struct pipc_stats *stats);
/* 1 while the client is connected, 0 once it has gone (does not block). */
PIPC_API int pipc_conn_alive(pipc_conn *conn);
/* Who and what this connection is (info->struct_bytes must be set). */
PIPC_API void pipc_conn_info(const pipc_conn *conn, struct pipc_conn_info *info);
/* For an event loop that waits for ring space itself (a send with timeout 0 returned -ETIMEDOUT):
 * pipc_conn_prepare_wait(conn, bytes the next packet needs) arms the wake-up and returns 1 if the caller may
 * sleep (0: space appeared meanwhile: send now). Then poll pipc_conn_fd (readable when the client freed space)
 * and pipc_conn_socket (readable when the client has gone), and call pipc_conn_finish_wait before sending. */
PIPC_API int pipc_conn_prepare_wait(pipc_conn *conn, uint64_t need_bytes);
PIPC_API void pipc_conn_finish_wait(pipc_conn *conn);
PIPC_API int pipc_conn_fd(const pipc_conn *conn);
PIPC_API int pipc_conn_socket(const pipc_conn *conn);
/* Wakes a thread blocked in pipc_conn_send (it returns what it wrote, or -EPIPE) and makes later sends fail
 * with -EPIPE. Any thread. The connection must still be closed with pipc_conn_close. */
PIPC_API void pipc_conn_shutdown(pipc_conn *conn);
/* Closes the connection (a stream not ended or aborted is ended: the client drains, then sees the end). */
PIPC_API void pipc_conn_close(pipc_conn *conn);

/* ---- Client side (consumer) ---- */

/* Connects to the server named name, waiting up to timeout_ms for it to accept. */
PIPC_API int pipc_client_connect(const char *name, int timeout_ms, pipc_client **out);
/* As pipc_client_connect, with options (NULL: defaults, as pipc_client_connect). */
PIPC_API int pipc_client_connect_with(const char *name, int timeout_ms, const struct pipc_client_options *options,
                                      pipc_client **out);
/* Connecting from an event loop, in steps that never block: pipc_client_connect_start connects and sends the
 * HELLO (-EAGAIN: the server's backlog is full, try again later; other errors as pipc_client_connect);
 * pipc_client_connect_fd is the socket to poll (readable when the server answered or went away);
 * pipc_client_connect_finish returns -EAGAIN while the answer has not arrived (pending is kept: poll again),
 * and otherwise consumes pending: 0 with *out connected, or the error pipc_client_connect would give.
 * pipc_client_connect_cancel drops a pending connect (NULL is accepted). The caller keeps the time. */
typedef struct pipc_client_pending pipc_client_pending;
PIPC_API int pipc_client_connect_start(const char *name, const struct pipc_client_options *options,
                                       pipc_client_pending **out);
PIPC_API int pipc_client_connect_fd(const pipc_client_pending *pending);
PIPC_API int pipc_client_connect_finish(pipc_client_pending *pending, pipc_client **out);
PIPC_API void pipc_client_connect_cancel(pipc_client_pending *pending);
/* Receives up to max packets with no copy. Returns n > 0; 0 at end of stream once everything was drained;
 * -ETIMEDOUT if nothing arrived in time; -ECONNRESET when the server vanished and everything committed
 * was drained; -EPROTO if the ring is corrupt (the connection is then unusable). Received packets stay
 * valid until released; while unreleased they hold ring space. */
PIPC_API int pipc_client_receive(pipc_client *client, struct pipc_packet *packets, size_t max, int timeout_ms);
/* A receive into columns: the caller's arrays of at least max entries (offsets, origlen, ifindex and linktype
 * may be NULL: not filled); set struct_bytes to sizeof(struct pipc_received_columns). The call sets data
 * (packet i's bytes are at data + offsets[i], all back to back in the ring), first_id (the packets' ids are
 * first_id, first_id + 1, ...: release them with pipc_client_release_range) and nbytes (their total). */
struct pipc_received_columns {
    size_t struct_bytes;
    uint64_t *ts_ns, *offsets;
    uint32_t *caplen, *origlen, *ifindex, *linktype;
    const uint8_t *data;
    uint64_t first_id;
    uint64_t nbytes;
};
/* pipc_client_receive, with the packets written as columns: the same waits, return values and errors, and the
 * same validation of every descriptor. -EINVAL also for struct_bytes too small or a NULL ts_ns or caplen. */
PIPC_API int pipc_client_receive_columns(pipc_client *client, struct pipc_received_columns *cols, size_t max,
                                         int timeout_ms);
/* Returns received packets' ring space. Any order; each packet exactly once. */
PIPC_API void pipc_client_release(pipc_client *client, const struct pipc_packet *packets, size_t n);
/* Releases n packets by id: first_id, first_id + 1, ... (the packets of one receive have consecutive ids, in
 * order). -EINVAL if any of them was not received or was released already (then nothing is released). */
PIPC_API int pipc_client_release_range(pipc_client *client, uint64_t first_id, uint64_t n);
/* An fd that is readable when packets may be available or the server has gone (for poll/epoll; level
 * triggered; only poll it, never read it). Protocol: pipc_client_prepare_wait(); if it returned 1, poll this
 * fd; then pipc_client_receive with timeout 0 (it may still return -ETIMEDOUT: a spurious wake-up). Valid
 * until pipc_client_close. */
PIPC_API int pipc_client_fd(const pipc_client *client);
/* Arms the wake-up before an external poll on pipc_client_fd(); returns 1 if the caller may sleep, 0 if
 * packets, end of stream or the server's death are already there (receive now). Does not block. The next
 * pipc_client_receive disarms it. */
PIPC_API int pipc_client_prepare_wait(pipc_client *client);
/* Disarms the wake-up armed by pipc_client_prepare_wait (after the poll, whatever woke it) and drains the
 * eventfd; the next receive does it too. */
PIPC_API void pipc_client_finish_wait(pipc_client *client);
/* The control socket (readable, or hung up, when the server has gone) and the ring's memfd (diagnostics). */
PIPC_API int pipc_client_socket(const pipc_client *client);
PIPC_API int pipc_client_ring_fd(const pipc_client *client);
/* The server's default linktype and snaplen. */
PIPC_API uint32_t pipc_client_linktype(const pipc_client *client);
PIPC_API uint32_t pipc_client_snaplen(const pipc_client *client);
/* Counters of this client. */
PIPC_API void pipc_client_stats(const pipc_client *client, struct pipc_stats *stats);
/* Wakes a thread blocked in pipc_client_receive (it returns -EPIPE) and makes later receives fail so. Any
 * thread. The client must still be closed with pipc_client_close. */
PIPC_API void pipc_client_shutdown(pipc_client *client);
/* Disconnects from the server now (receives then fail with -EPIPE) but keeps the ring mapped, so received and
 * unreleased packets stay valid until pipc_client_close. */
PIPC_API void pipc_client_disconnect(pipc_client *client);
/* Closes the connection. Unreleased packets become invalid. */
PIPC_API void pipc_client_close(pipc_client *client);

/* ---- Live capture (libpcap, loaded at run time) ----
 *
 * Captures from one or more interfaces through libpcap (loaded with dlopen: "libpcap.so.0.8", then
 * "libpcap.so.1", "libpcap.so"; the environment variable PACKET_IPC_LIBPCAP names another file instead, a
 * test hook). Each interface is a pcap_t in non-blocking mode (pcap_create, pcap_set_snaplen/promisc/
 * timeout/buffer_size/immediate_mode, nanosecond timestamps where the kernel gives them, pcap_activate,
 * pcap_compile + pcap_setfilter); pipc_capture_next() polls them together and copies each packet once, into
 * the caller's buffer. When libpcap cannot be loaded, pipc_capture_open returns -ELIBACC and
 * pipc_last_error() says to install libpcap0.8. */

struct pipc_capture_options {
    size_t struct_bytes;            /* sizeof(struct pipc_capture_options): set it, for compatible growth */
    const char *const *interfaces;  /* names of the interfaces to capture on (at least one) */
    size_t n_interfaces;
    uint32_t snaplen;               /* bytes kept per packet, 1 to 262144 (0: 262144) */
    int promisc;                    /* non-zero: promiscuous mode */
    const char *filter;             /* BPF filter in tcpdump syntax, applied to every interface (NULL: none) */
    uint32_t buffer_bytes;          /* libpcap's kernel ring per interface (0: 8 MiB) */
    int immediate;                  /* non-zero: deliver each packet at once (more CPU per packet) */
    int timeout_ms;                 /* without immediate: how long the kernel holds a partly filled block (0: 100) */
    int linger_ms;                  /* once pipc_capture_next has packets, how long it may wait for more to fill
                                       max (fewer, larger batches: less work per packet; 0: return at once) */
};

/* One interface of a capture: identity and counters. */
struct pipc_capture_stats {
    char name[48];        /* interface name as given */
    uint32_t ifindex;     /* its index (0 for pseudo-devices such as "any") */
    uint32_t linktype;    /* pcap LINKTYPE_* of its packets */
    int nanosecond;       /* 1 if its timestamps have nanosecond resolution, 0 for microseconds */
    uint64_t captured;    /* packets libpcap handed to packet-ipc from it */
    uint64_t received;    /* pcap_stats ps_recv: packets the kernel's filter accepted (Linux: includes drops) */
    uint64_t dropped;     /* pcap_stats ps_drop: dropped by the kernel, no room in the capture buffer */
    uint64_t if_dropped;  /* pcap_stats ps_ifdrop: dropped by the interface or its driver */
};

typedef struct pipc_capture pipc_capture;

/* Opens every interface of options (all or nothing). Errors: -ENODEV (no such interface), -EPERM (no
 * permission: capturing needs CAP_NET_RAW), -EINVAL (bad snaplen, or a filter libpcap cannot compile),
 * -ENETDOWN (interface not up), -ELIBACC (libpcap missing). pipc_last_error() names the interface/filter. */
PIPC_API int pipc_capture_open(const struct pipc_capture_options *options, pipc_capture **out);
/* Reads up to max packets from any of the interfaces, copying their bytes back to back into buf (buf_bytes
 * must be at least the snaplen); out[i].data points into buf. Waits up to timeout_ms for the first packet.
 * With linger_ms, once it has packets it waits up to that long for more, until max or the buffer is full.
 * Returns the count (> 0); -ETIMEDOUT if nothing arrived; -EINTR if a signal interrupted the wait or
 * pipc_capture_breakloop() was called; -ENETDOWN / -EIO if an interface failed. Packets libpcap delivers
 * beyond what fits are kept and returned first by the next call: nothing is lost between calls. */
PIPC_API long pipc_capture_next(pipc_capture *cap, struct pipc_packet *out, size_t max, uint8_t *buf,
                                size_t buf_bytes, int timeout_ms);
/* As pipc_capture_next, but into columns (for bindings building columnar batches): packet i's fields go to
 * ts_ns[i], caplen[i], origlen[i], linktype[i], ifindex[i] (arrays of max); its bytes follow packet i-1's in
 * buf; *used receives the bytes filled. */
PIPC_API long pipc_capture_next_columns(pipc_capture *cap, size_t max, uint64_t *ts_ns, uint32_t *caplen,
                                        uint32_t *origlen, uint32_t *linktype, uint32_t *ifindex, uint8_t *buf,
                                        size_t buf_bytes, size_t *used, int timeout_ms);
/* Number of interfaces of the capture. */
PIPC_API size_t pipc_capture_count(const pipc_capture *cap);
/* Identity of interface i (name, ifindex, linktype, precision, captured); the libpcap counters stay 0. */
PIPC_API int pipc_capture_info(const pipc_capture *cap, size_t i, struct pipc_capture_stats *info);
/* As pipc_capture_info, plus libpcap's counters (pcap_stats) of interface i. */
PIPC_API int pipc_capture_stats(pipc_capture *cap, size_t i, struct pipc_capture_stats *stats);
/* Makes a pending or the next pipc_capture_next return -EINTR (async-signal-safe; from any thread). */
PIPC_API int pipc_capture_breakloop(pipc_capture *cap);
/* The descriptor pipc_capture_breakloop() writes to (an eventfd; poll it only). */
PIPC_API int pipc_capture_fd(const pipc_capture *cap);
/* Closes every interface. */
PIPC_API void pipc_capture_close(pipc_capture *cap);

/* ---- Capturing straight into a server's workers ---- */

/* Why pipc_capture_run returned (its positive return values). */
#define PIPC_CAPTURE_STOPPED_COUNT 1    /* options->count packets were captured and handed over */
#define PIPC_CAPTURE_STOPPED_DURATION 2 /* options->duration_ms passed */
#define PIPC_CAPTURE_STOPPED_BREAK 3    /* pipc_capture_breakloop() was called */

struct pipc_capture_run_options {
    size_t struct_bytes;  /* sizeof(struct pipc_capture_run_options): set it, for compatible growth */
    uint64_t count;       /* stop once this many packets were captured and handed over (0: no limit) */
    uint64_t duration_ms; /* stop after this long (0: no limit) */
    uint32_t batch;       /* packets read and distributed together at most (0: 4096) */
    int linger_ms;        /* once a read has packets, how long it may wait for more (0: not at all, which suits
                             libpcap's delivery of whole kernel blocks; the capture's own linger_ms is not used) */
};

struct pipc_capture_run_result {
    size_t struct_bytes;  /* sizeof(struct pipc_capture_run_result): set it */
    uint64_t packets;     /* packets captured and handed to the workers: written (once under broadcast), or
                             dropped and counted by a connection whose policy is drop */
    uint64_t bytes;       /* their captured bytes */
    uint64_t batches;     /* reads whose packets were written or dropped (straight, or sent after staging) */
    uint64_t not_sent;    /* packets captured but not written because an error stopped the run */
    uint64_t staged;      /* of packets, those staged and sent by pipc_server_send_some instead of written
                             straight from libpcap's ring (a full ring, broadcast); added after not_sent: a
                             caller whose struct_bytes ends at not_sent gets the fields it knows */
};

/* Captures from cap into server's workers until options->count packets, options->duration_ms, or
 * pipc_capture_breakloop(): each packet is copied once, from libpcap's ring straight into its worker's ring,
 * by the server's distribution; what a worker's ring cannot take at once is staged and sent after the read with
 * pipc_server_send_some, by each connection's overflow policy (a batch being written is finished, under block,
 * before a stop takes effect); signals do not stop
 * it. options may be NULL (no limit). Returns the PIPC_CAPTURE_STOPPED_* reason, or -ECONNRESET (no worker
 * left), -ENETDOWN / -EIO (an interface failed), -EINVAL, -ENOMEM; *out (may be NULL) counts what was done
 * either way. Does not end the stream: call pipc_server_end after. No other thread may read cap meanwhile. */
PIPC_API long pipc_capture_run(pipc_capture *cap, pipc_server *server, const struct pipc_capture_run_options *options,
                               struct pipc_capture_run_result *out);

#ifdef __cplusplus
}
#endif
#endif /* PACKET_IPC_H */
