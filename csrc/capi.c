/*
 * capi.c - what the objects of the public C ABI (include/packet_ipc.h) share: versions, error names, the
 * locks that make every object usable from several threads, and fork detection. The objects themselves are
 * in server.c (the endpoint and its handshake), conn.c (the server's side of one client: sends) and client.c
 * (connect, receive, release); distribute.c spreads a server's sends over its connections. The Python
 * extension calls these same functions, so C and Python programs run one implementation.
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

/* A forked child inherits copies of our objects; it must not end streams or release ring space of its
 * parent's connections when it drops them. Counting forks (pthread_atfork) tells copies from originals
 * without a getpid() system call on the release path. */
static unsigned fork_generation;
static pthread_once_t fork_once = PTHREAD_ONCE_INIT;
/* SYNC:fork - relaxed: only the forked child (one thread) bumps it; every other read is in the same process */
static void on_fork_child(void) { pipc_add_fetch_relaxed_uint(&fork_generation, 1); }
static void register_fork_handler(void) { pthread_atfork(NULL, NULL, on_fork_child); }
unsigned pipc_fork_generation(void)
{
    pthread_once(&fork_once, register_fork_handler);
    return pipc_load_relaxed_uint(&fork_generation); /* SYNC:fork */
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

void pipc_close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}
