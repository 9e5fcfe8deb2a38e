/* wait.c - see wait.h. */
#define _GNU_SOURCE
#include "wait.h"

#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

uint64_t pipc_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

uint64_t pipc_deadline(int timeout_ms)
{
    if (timeout_ms < 0)
        return UINT64_MAX;
    return pipc_now_ns() + (uint64_t)timeout_ms * 1000000ULL;
}

int pipc_remaining_ms(uint64_t deadline_ns)
{
    if (deadline_ns == UINT64_MAX)
        return -1;
    uint64_t now = pipc_now_ns();
    if (now >= deadline_ns)
        return 0;
    uint64_t ms = (deadline_ns - now + 999999) / 1000000;
    return ms > 1000000000 ? 1000000000 : (int)ms;
}

int pipc_wait(int evfd, int sock, uint64_t deadline_ns)
{
    struct pollfd fds[2] = {{.fd = evfd, .events = POLLIN}, {.fd = sock, .events = POLLIN}};
    int ms = pipc_remaining_ms(deadline_ns);
    int r = poll(fds, 2, ms);
    if (r < 0)
        return errno == EINTR ? -EINTR : -errno;
    if (fds[0].revents & POLLIN) {
        uint64_t v;
        /* Non-blocking eventfd: resets the counter; a racing write just causes one spurious wake-up. */
        if (read(evfd, &v, sizeof(v)) < 0) {
            /* EAGAIN: another reader drained it; harmless. */
        }
        return PIPC_WAIT_EVENT;
    }
    if (fds[1].revents)
        return PIPC_WAIT_PEER;
    if (r == 0 && ms >= 0)
        return -ETIMEDOUT;
    return PIPC_WAIT_EVENT;
}

void pipc_wake(int evfd)
{
    uint64_t one = 1;
    /* EAGAIN only if the counter would overflow: the peer has a wake-up pending anyway. */
    if (write(evfd, &one, sizeof(one)) < 0) {
    }
}

int pipc_peer_gone(int sock)
{
    char b;
    ssize_t r = recv(sock, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    if (r == 0)
        return 1;
    if (r < 0)
        return !(errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR);
    return 0; /* unexpected data after the handshake: not "gone"; the protocol has no such messages */
}
