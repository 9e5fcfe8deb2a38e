/*
 * handshake.h - the control plane: naming (a path, or "@name" for Linux's abstract namespace), the listening
 * AF_UNIX SOCK_SEQPACKET socket, and the two handshake messages. The client sends HELLO; the server checks
 * the peer's credentials (SO_PEERCRED) and version, and answers WELCOME with the ring's memfd and the two
 * eventfds over SCM_RIGHTS, or with an error status and a message. The socket then stays open, silent, as
 * the liveness signal: its hang-up means the peer is gone.
 */
#ifndef PIPC_HANDSHAKE_H
#define PIPC_HANDSHAKE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "packet_ipc.h" /* PIPC_HANDSHAKE_MS, the bound on one client's handshake */

#define PIPC_HELLO_MAGIC 0x4f4c454843504950ULL   /* "PIPCHELO" */
#define PIPC_WELCOME_MAGIC 0x434c455743504950ULL /* "PIPCWELC" */

/* HELLO flags: the client's choice of overflow policy for its own ring (else the server's default). */
#define PIPC_HELLO_WANT_DROP 1u
#define PIPC_HELLO_WANT_BLOCK 2u

/* 32 bytes: 0 magic | 8 wire_version | 12 abi_version | 16 flags | 20..31 reserved (0) */
struct pipc_hello {
    uint64_t magic;
    uint32_t wire_version;
    uint32_t abi_version;
    uint32_t flags;
    uint32_t reserved[3];
};

/* 256 bytes: 0 magic | 8 wire_version | 12 status (0 or -errno) | 16 message (NUL-terminated) */
struct pipc_welcome {
    uint64_t magic;
    uint32_t wire_version;
    int32_t status;
    char message[240];
};

/* Fills addr from a name; returns its length or -ENAMETOOLONG / -EINVAL. */
int pipc_name_to_addr(const char *name, struct sockaddr_un *addr, socklen_t *len);
/* Creates the listening socket at name (mode 0600, or 0666 when any uid may connect). */
int pipc_listen_at(const char *name, int world);
/* Sends msg with up to 3 fds; returns 0 or -errno. */
int pipc_send_msg(int sock, const void *msg, size_t len, const int *fds, int nfds);
/* Receives one message of exactly len bytes (with up to 3 fds) before the deadline; returns the number of
 * fds received (>= 0), -ECONNRESET on EOF, -EPROTO on a message of the wrong size or truncated fds,
 * -ETIMEDOUT, -EINTR. Received fds are close-on-exec. */
int pipc_recv_msg(int sock, void *msg, size_t len, int *fds, int max_fds, uint64_t deadline_ns);

/* Thread-local text of the last error this library reported (for pipc_last_error). */
void pipc_set_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
