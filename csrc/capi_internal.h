/*
 * capi_internal.h - the objects behind the public ABI (include/packet_ipc.h), shared by capi.c, server.c,
 * conn.c, client.c and distribute.c. Not installed: programs, the Python binding included, see only the public headers.
 */
#ifndef PIPC_CAPI_INTERNAL_H
#define PIPC_CAPI_INTERNAL_H

#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <sys/types.h>

#include "atomics.h"
#include "packet_ipc_ext.h"
#include "packet_ipc.h"
#include "ring.h"

#define PIPC_MAX_ALLOWED 16
#define PIPC_FLOW_BUCKETS 4096 /* flow hash -> bucket -> worker: a joining or leaving worker moves only its share */
#define PIPC_LIVENESS_CHECK_NS 50000000ULL /* a server-level send looks for dead workers this often (50 ms) */

/* The server's many-worker state (distribute.c), guarded by its lock. */
struct pipc_distributor {
    pthread_mutex_t lock;     /* held by a server-level send across its waits; joins and checks take it too */
    pthread_mutex_t set_lock; /* short: workers[] and counters, for readers that must never wait for a send */
    int policy;               /* PIPC_DISTRIBUTION_* */
    pipc_conn **workers;      /* live workers in order of acceptance; the server holds a reference to each */
    size_t n_workers, cap_workers;
    uint32_t accepted;        /* connections accepted so far: the next one's index */
    uint16_t table[PIPC_FLOW_BUCKETS]; /* bucket -> position in workers[] */
    struct pipc_frag_table frags;      /* where each datagram's later fragments go */
    uint64_t ring_bytes;      /* payload bytes of every worker's ring, and the snaplen (for the size checks) */
    uint32_t snaplen;
    uint64_t rr;              /* round robin: next worker */
    uint64_t lost_packets;    /* left unread in the rings of workers that died (atomic) */
    uint64_t last_check_ns;
    uint32_t stall_index;     /* the send stopped on this worker's full ring (acceptance index; UINT32_MAX: none) */
    uint64_t stall_need;      /* and the bytes its next packet needs (pipc_server_send_nowait) */
    /* scratch of one send, grown as needed */
    uint32_t *hash, *todo, *retry;
    uint16_t *owner;
    struct pipc_packet *part;
    size_t scratch_n;
    struct pipc_direct_window *windows; /* pipc_direct_*: one per worker, grown as needed */
    size_t cap_windows;
};

struct pipc_server {
    int listen_fd;
    pid_t creator;
    struct pipc_server_options opts;
    char name[108];
    char dir[108]; /* private directory we created (removed on close), or "" */
    uid_t uids[PIPC_MAX_ALLOWED];
    gid_t gids[PIPC_MAX_ALLOWED];
    int n_uids, n_gids;
    uint64_t refused, handshake_failures;
    pthread_mutex_t lock; /* serialises accept (held across its wait); see "thread safety" in capi.c */
    int closing;          /* pipc_server_shutdown: accept fails with -EPIPE (atomic) */
    struct pipc_distributor dist;
    int pending_sock;             /* taken from the backlog, HELLO not yet read when the caller's timeout ran
                                     out: the next accept resumes it (or -1) */
    uint64_t pending_deadline_ns; /* its own handshake bound */
};

struct pipc_conn {
    pthread_mutex_t lock; /* serialises send/end/abort (held across waits for space) */
    int closing;          /* pipc_conn_shutdown: calls fail with -EPIPE (atomic) */
    int refs;             /* the caller's and the server's (while a live worker); freed at 0 (atomic) */
    int closed;           /* pipc_conn_close was called: the server drops it as a worker (atomic) */
    uint32_t index;       /* order of acceptance on its server */
    int sock, memfd, ev_data, ev_space;
    struct pipc_ring ring;
    int overflow;
    int ended;
    int error; /* sticky: -ECONNRESET or -EPROTO (atomic: pipc_conn_alive sets it from any thread) */
    uint32_t linktype, snaplen;
    pid_t peer_pid;
    unsigned generation; /* fork generation that created it */
    uint64_t last_alive_check_ns;
    /* zero-copy send (conn.c: pipc_conn_reserve .. pipc_conn_commit), all under lock; the lock itself is not
     * held in between: other sends wait for the commit (see conn_lock) */
    int reserved;
    const void *reserver; /* the reserving thread's tag: a send on that thread fails rather than wait on itself */
    size_t res_packets;
    uint64_t res_bytes;
    void *res_cols; /* columns of the reservation: ts_ns, then caplen, origlen, ifindex, linktype */
    size_t res_cap;
    struct pipc_stats stats; /* written under lock, read by pipc_conn_stats from any thread (atomic) */
};

struct pipc_client {
    pthread_mutex_t lock;       /* serialises receives (held across waits for packets) */
    pthread_mutex_t state_lock; /* short: the ring's consumer-local state, shared by receive and release (a
                                   release from another thread must never wait for a receive's sleep) */
    int closing;                /* pipc_client_shutdown: receives fail with -EPIPE (atomic) */
    int sock, memfd, ev_data, ev_space;
    int poll_fd; /* epoll over ev_data and sock: pipc_client_fd(), readable on packets and on the server's death */
    struct pipc_ring ring;
    int error; /* sticky: -EPROTO, or -EPIPE once disconnected */
    int peer_gone;
    int armed; /* pipc_client_prepare_wait() left the wake-up armed; the next take disarms it */
    int busy_poll; /* struct pipc_client_options.busy_poll */
    unsigned generation;
    uint64_t spin_ns;
    struct pipc_stats stats;
};

#define SPIN_PAUSE_NS 2000ULL       /* of which the first part with pause only, then yielding between looks */
#define ALIVE_CHECK_NS 10000000ULL  /* how often a never-blocking (drop) sender checks for a dead client */

/* capi.c: fork detection (a forked child's copies must not end or release its parent's rings), fds */
unsigned pipc_fork_generation(void);
void pipc_close_fd(int *fd);

/* Atomics on process-local fields that another thread may read (counters, flags, sticky errors). */
/* SYNC:closing - release/acquire: *_shutdown's flag, seen by the thread it wakes */
static inline int is_closing(const int *closing) { return pipc_load_acquire_int(closing); }
static inline void set_closing(int *closing) { pipc_store_release_int(closing, 1); }
/* SYNC:counters - relaxed: written by the thread holding the object, read by *_stats from any thread */
static inline void count(uint64_t *counter, uint64_t v) { pipc_fetch_add_relaxed64(counter, v); }
static inline uint64_t counted(const uint64_t *counter) { return pipc_load_relaxed64(counter); }
/* SYNC:sticky - relaxed: a connection's sticky error, set by a send or by pipc_conn_alive on any thread */
static inline int sticky_error(const int *error) { return pipc_load_relaxed_int(error); }
static inline void set_sticky_error(int *error, int err) { pipc_store_relaxed_int(error, err); }

static inline void load_stats(const struct pipc_stats *from, struct pipc_stats *to)
{
    to->packets = counted(&from->packets);
    to->bytes = counted(&from->bytes);
    to->dropped_packets = counted(&from->dropped_packets);
    to->dropped_bytes = counted(&from->dropped_bytes);
    to->blocked_ns = counted(&from->blocked_ns);
}

/* capi.c, for distribute.c: an object's lock, waiting until deadline (pipc_deadline; "now": only try) */
int pipc_lock_until(pthread_mutex_t *m, uint64_t deadline, const char *what);
/* conn.c, for distribute.c: a send up to a deadline that reports how many packets it wrote (even on error);
 * `checked`: the caller has already checked the packets' sizes and linktypes against this ring
 * (pipc_ring_check_packets with the same ring size and snaplen), so they are not checked again */
int pipc_conn_send_until(pipc_conn *c, const struct pipc_packet *pk, size_t n, uint64_t deadline, int checked,
                         size_t *written);

/* conn.c, for distribute.c's direct writes: takes the connection's lock without waiting and reads its free
 * space (0), or -EBUSY (another thread sends on it, or holds a reservation) / -EPIPE / the sticky error /
 * -EPROTO without the lock. Between the two calls the holder writes with pipc_ring_put, at most the space
 * read; pipc_conn_direct_close publishes what was written (waking the client if it sleeps), counts it and
 * unlocks. */
int pipc_conn_direct_open(pipc_conn *c, uint64_t *free_slots, uint64_t *free_bytes);
void pipc_conn_direct_close(pipc_conn *c, size_t packets, uint64_t bytes);

/* distribute.c: a server-level send written packet by packet straight into the workers' rings, for the live
 * capture (capture.c), which copies each packet once, from libpcap's ring into a worker's ring, while libpcap's
 * pointer is still valid. One pass: pipc_direct_begin (takes the distributor's lock and each worker's, with
 * no wait: a pass that cannot have them all is off, and its packets are staged), pipc_direct_put per packet,
 * pipc_direct_end (publishes each ring once, wakes sleeping workers, unlocks). A packet that put refuses (its
 * worker's ring has no room left in this pass, or it breaks the size rules) goes to the caller's staging, which
 * is sent afterwards through pipc_server_send_some; so do the same worker's later packets of the pass, which
 * must not overtake it: each flow keeps its order. Flow distribution and round robin (one worker per pass);
 * broadcast always stages. */
struct pipc_direct_window {
    pipc_conn *conn;
    uint64_t slots, bytes; /* room left in this pass */
    size_t packets;        /* written in this pass, and their bytes */
    uint64_t written;
    int open;   /* takes packets: locked, and has refused none in this pass */
    int locked; /* pipc_conn_direct_open succeeded: closed by pipc_direct_end */
};
struct pipc_direct {
    struct pipc_distributor *d;
    int on;          /* the pass is open (begin succeeded) */
    int flow;        /* by flow; otherwise every packet to workers[target] */
    size_t target, n_windows;
    uint32_t default_linktype;
    uint64_t max_caplen; /* pipc_ring_max_packet_bytes of the workers' rings */
    uint64_t packets, bytes; /* written by the pass, added by pipc_direct_end */
};
void pipc_direct_begin(pipc_server *s, struct pipc_direct *dw);
/* 1: written into its worker's ring; 0: refused (the caller stages it). */
int pipc_direct_put(struct pipc_direct *dw, const struct pipc_packet *pk);
void pipc_direct_end(struct pipc_direct *dw);

/* distribute.c, for server.c and conn.c */
int pipc_dist_init(struct pipc_distributor *d, int policy);
int pipc_dist_join(struct pipc_distributor *d, pipc_conn *conn);
void pipc_dist_destroy(struct pipc_distributor *d);
void pipc_conn_unref(pipc_conn *c);

#endif
