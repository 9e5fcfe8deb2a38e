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
 *  - Objects are not thread-safe: use one object from one thread at a time (distinct objects are independent).
 *  - Build: cc prog.c $(packet-ipc config --cflags --libs)
 *
 * Versioning: PACKET_IPC_ABI_VERSION changes only when this ABI changes incompatibly; pipc_abi_version()
 * reports the library's. Option structs begin with their own size so they can grow compatibly.
 */
#ifndef PACKET_IPC_H
#define PACKET_IPC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PACKET_IPC_ABI_VERSION 1

#if defined(PIPC_BUILD_SHARED) && defined(__GNUC__)
#define PIPC_API __attribute__((visibility("default")))
#else
#define PIPC_API
#endif

/* On send, a packet whose linktype is this takes the server's default linktype. (0 is LINKTYPE_NULL.) */
#define PIPC_LINKTYPE_DEFAULT 0xffffffffu

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
};

typedef struct pipc_server pipc_server;
typedef struct pipc_conn pipc_conn;
typedef struct pipc_client pipc_client;

/* Library's ABI version (PACKET_IPC_ABI_VERSION it was built with). */
PIPC_API int pipc_abi_version(void);
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
/* Waits up to timeout_ms for one client and performs the handshake. Errors about one client (-EPROTO,
 * -EACCES, ...) leave the server usable: call again. */
PIPC_API int pipc_server_accept(pipc_server *server, int timeout_ms, pipc_conn **out);
/* Closes the endpoint and removes its socket (and its private directory). Open connections stay usable. */
PIPC_API void pipc_server_close(pipc_server *server);

/* Sends n packets in order. Blocks while the ring is full (PIPC_OVERFLOW_BLOCK) up to timeout_ms in total.
 * Returns the number of packets written to the ring (n on success; under PIPC_OVERFLOW_DROP those that did
 * not fit are counted as dropped and not included); if a wait times out or is interrupted after some were
 * written, returns that count, and otherwise -ETIMEDOUT / -EINTR. -ECONNRESET: the client is gone.
 * -EMSGSIZE (nothing sent): a packet is larger than the ring or the snaplen. */
PIPC_API long pipc_conn_send(pipc_conn *conn, const struct pipc_packet *packets, size_t n, int timeout_ms);
/* Signals end of stream: the client drains what was sent, then receives 0. */
PIPC_API int pipc_conn_end(pipc_conn *conn);
/* Aborts the stream (the server failed mid-way): the client drains what was sent, then gets -ECONNRESET with
 * "the server aborted the stream", never a clean end. Further sends fail with -EPIPE. */
PIPC_API int pipc_conn_abort(pipc_conn *conn);
/* Counters of this connection. */
PIPC_API void pipc_conn_stats(const pipc_conn *conn, struct pipc_stats *stats);
/* 1 while the client is connected, 0 once it has gone (does not block). */
PIPC_API int pipc_conn_alive(pipc_conn *conn);
/* Closes the connection (without end of stream, the client sees -ECONNRESET after draining). */
PIPC_API void pipc_conn_close(pipc_conn *conn);

/* ---- Client side (consumer) ---- */

/* Connects to the server named name, waiting up to timeout_ms for it to accept. */
PIPC_API int pipc_client_connect(const char *name, int timeout_ms, pipc_client **out);
/* Receives up to max packets with no copy. Returns n > 0; 0 at end of stream once everything was drained;
 * -ETIMEDOUT if nothing arrived in time; -ECONNRESET when the server vanished and everything committed
 * was drained; -EPROTO if the ring is corrupt (the connection is then unusable). Received packets stay
 * valid until released; while unreleased they hold ring space. */
PIPC_API int pipc_client_receive(pipc_client *client, struct pipc_packet *packets, size_t max, int timeout_ms);
/* Returns received packets' ring space. Any order; each packet exactly once. */
PIPC_API void pipc_client_release(pipc_client *client, const struct pipc_packet *packets, size_t n);
/* An fd that is readable when packets may be available or the server has gone (for poll/epoll; level
 * triggered; only poll it, never read it). Protocol: pipc_client_prepare_wait(); if it returned 1, poll this
 * fd; then pipc_client_receive with timeout 0 (it may still return -ETIMEDOUT: a spurious wake-up). Valid
 * until pipc_client_close. */
PIPC_API int pipc_client_fd(const pipc_client *client);
/* Arms the wake-up before an external poll on pipc_client_fd(); returns 1 if the caller may sleep, 0 if
 * packets, end of stream or the server's death are already there (receive now). Does not block. The next
 * pipc_client_receive disarms it. */
PIPC_API int pipc_client_prepare_wait(pipc_client *client);
/* The server's default linktype and snaplen. */
PIPC_API uint32_t pipc_client_linktype(const pipc_client *client);
PIPC_API uint32_t pipc_client_snaplen(const pipc_client *client);
/* Counters of this client. */
PIPC_API void pipc_client_stats(const pipc_client *client, struct pipc_stats *stats);
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

#ifdef __cplusplus
}
#endif
#endif /* PACKET_IPC_H */
