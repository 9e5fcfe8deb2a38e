/* handshake.c - see handshake.h. */
#define _GNU_SOURCE
#include "handshake.h"

#include <assert.h>
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "packet_ipc.h" /* declares pipc_last_error() PIPC_API: without it -fvisibility=hidden keeps it out of
                           * libpacketipc.so and C programs fail to link */
#include "wait.h"

/* The two messages pinned to the byte layout of handshake.h's comments and docs/wire-format.md
 * (tests/test_wire_layout.py checks that the document and these lines agree). */
static_assert(sizeof(struct pipc_hello) == 32, "HELLO is 32 bytes");
static_assert(offsetof(struct pipc_hello, magic) == 0, "layout");
static_assert(offsetof(struct pipc_hello, wire_version) == 8, "layout");
static_assert(offsetof(struct pipc_hello, abi_version) == 12, "layout");
static_assert(offsetof(struct pipc_hello, flags) == 16, "layout");
static_assert(offsetof(struct pipc_hello, reserved) == 20, "layout");
static_assert(sizeof(struct pipc_welcome) == 256, "WELCOME is 256 bytes");
static_assert(offsetof(struct pipc_welcome, magic) == 0, "layout");
static_assert(offsetof(struct pipc_welcome, wire_version) == 8, "layout");
static_assert(offsetof(struct pipc_welcome, status) == 12, "layout");
static_assert(offsetof(struct pipc_welcome, message) == 16, "layout");

static _Thread_local char last_error[256];

void pipc_set_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof(last_error), fmt, ap);
    va_end(ap);
}

const char *pipc_last_error(void) { return last_error; }

int pipc_name_to_addr(const char *name, struct sockaddr_un *addr, socklen_t *len)
{
    memset(addr, 0, sizeof(*addr));
    addr->sun_family = AF_UNIX;
    size_t n = strlen(name);
    if (n == 0)
        return -EINVAL;
    if (name[0] == '@') { /* abstract namespace: no file at all, gone with the socket */
        if (n > sizeof(addr->sun_path))
            return -ENAMETOOLONG;
        memcpy(addr->sun_path + 1, name + 1, n - 1);
        *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
        return 0;
    }
    if (n >= sizeof(addr->sun_path))
        return -ENAMETOOLONG;
    memcpy(addr->sun_path, name, n);
    *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
    return 0;
}

int pipc_listen_at(const char *name, int world)
{
    struct sockaddr_un addr;
    socklen_t len;
    int err = pipc_name_to_addr(name, &addr, &len);
    if (err)
        return err;
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (bind(fd, (struct sockaddr *)&addr, len) < 0 || listen(fd, SOMAXCONN) < 0) {
        err = -errno;
        close(fd);
        return err;
    }
    /* The directory is what keeps others out (0700); the mode is a second fence, SO_PEERCRED the third. */
    if (name[0] != '@' && chmod(name, world ? 0666 : 0600) < 0) {
        err = -errno;
        unlink(name);
        close(fd);
        return err;
    }
    return fd;
}

int pipc_send_msg(int sock, const void *msg, size_t len, const int *fds, int nfds)
{
    struct iovec iov = {.iov_base = (void *)msg, .iov_len = len};
    union {
        char buf[CMSG_SPACE(3 * sizeof(int))];
        struct cmsghdr align;
    } ctl;
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    if (nfds > 0) {
        memset(&ctl, 0, sizeof(ctl));
        mh.msg_control = ctl.buf;
        mh.msg_controllen = CMSG_SPACE((size_t)nfds * sizeof(int));
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN((size_t)nfds * sizeof(int));
        memcpy(CMSG_DATA(c), fds, (size_t)nfds * sizeof(int));
    }
    for (;;) {
        ssize_t r = sendmsg(sock, &mh, MSG_NOSIGNAL);
        if (r == (ssize_t)len)
            return 0;
        if (r < 0 && errno == EINTR)
            continue;
        return r < 0 ? (errno == EPIPE ? -ECONNRESET : -errno) : -EPROTO;
    }
}

int pipc_recv_msg(int sock, void *msg, size_t len, int *fds, int max_fds, uint64_t deadline_ns)
{
    for (;;) {
        struct pollfd p = {.fd = sock, .events = POLLIN};
        int r = poll(&p, 1, pipc_remaining_ms(deadline_ns));
        if (r < 0)
            return errno == EINTR ? -EINTR : -errno;
        if (r == 0)
            return -ETIMEDOUT;
        break;
    }
    union {
        char buf[CMSG_SPACE(3 * sizeof(int))];
        struct cmsghdr align;
    } ctl;
    char extra[8]; /* one byte more than expected lets us see an oversized message as MSG_TRUNC */
    struct iovec iov[2] = {{.iov_base = msg, .iov_len = len}, {.iov_base = extra, .iov_len = sizeof(extra)}};
    struct msghdr mh = {.msg_iov = iov, .msg_iovlen = 2, .msg_control = ctl.buf, .msg_controllen = sizeof(ctl.buf)};
    ssize_t r;
    do
        r = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
    while (r < 0 && errno == EINTR);
    if (r < 0)
        return errno == ECONNRESET ? -ECONNRESET : -errno;
    int nfds = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        int k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        int *in = (int *)CMSG_DATA(c);
        for (int i = 0; i < k; i++) {
            if (nfds < max_fds)
                fds[nfds++] = in[i];
            else
                close(in[i]); /* stops a peer from leaking fds into us */
        }
    }
    if (r == 0)
        return -ECONNRESET;
    /* Wrong size, truncation, or more fds than expected: not our protocol. */
    if ((size_t)r != len || (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC))) {
        for (int i = 0; i < nfds; i++)
            close(fds[i]);
        return -EPROTO;
    }
    return nfds;
}
