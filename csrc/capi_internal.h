/*
 * capi_internal.h - the objects behind the public ABI, and the few extra entry points the Python binding
 * uses (taking with busy polling, releasing by id range, arming waits for an event loop). Not installed.
 */
#ifndef PIPC_CAPI_INTERNAL_H
#define PIPC_CAPI_INTERNAL_H

#include <limits.h>
#include <poll.h>
#include <sys/types.h>

#include "packet_ipc.h"
#include "ring.h"

#define PIPC_MAX_ALLOWED 16

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
    int pending_sock;             /* taken from the backlog, HELLO not yet read when the caller's timeout ran
                                     out: the next accept resumes it (or -1) */
    uint64_t pending_deadline_ns; /* its own handshake bound */
};

struct pipc_conn {
    int sock, memfd, ev_data, ev_space;
    struct pipc_ring ring;
    int overflow;
    int ended;
    int error; /* sticky: -ECONNRESET or -EPROTO */
    uint32_t linktype, snaplen;
    pid_t peer_pid;
    unsigned generation; /* fork generation that created it */
    uint64_t last_alive_check_ns;
    struct pipc_stats stats;
};

struct pipc_client {
    int sock, memfd, ev_data, ev_space;
    int poll_fd; /* epoll over ev_data and sock: pipc_client_fd(), readable on packets and on the server's death */
    struct pipc_ring ring;
    int error; /* sticky: -EPROTO, or -EPIPE once disconnected */
    int peer_gone;
    int armed; /* pipc_client_prepare_wait() left the wake-up armed; the next take disarms it */
    unsigned generation;
    uint64_t spin_ns;
    struct pipc_stats stats;
};

int pipc_server_allow_peer(pipc_server *server, int64_t uid, int64_t gid);
int pipc_client_connect_flags(const char *name, int timeout_ms, uint32_t flags, pipc_client **out);
long pipc_client_take(pipc_client *c, struct pipc_packet *pk, size_t max, int timeout_ms, int busy_poll);
int pipc_client_release_ids(pipc_client *c, uint64_t first, uint64_t n);
int pipc_client_socket(const pipc_client *c);
int pipc_client_ring_fd(const pipc_client *c);
void pipc_client_finish_wait(pipc_client *c);
void pipc_client_disconnect(pipc_client *c);
int pipc_conn_fd(const pipc_conn *c);
int pipc_conn_socket(const pipc_conn *c);
int pipc_conn_prepare_wait(pipc_conn *c, uint64_t need_bytes);
void pipc_conn_finish_wait(pipc_conn *c);

#endif
