/*
 * capture_run_check.c - pipc_capture_run end to end (run as root by tests/test_capture_run.py):
 *   capture_run_check IFACE SERVER_PATH COUNT
 * opens a capture on IFACE (UDP to port 7777 only), creates a flow-distributing server at SERVER_PATH,
 * prints "listening", accepts 2 workers, prints "ready", then:
 *   1. runs with count = COUNT (the test sends the frames now): must stop by count with COUNT packets written;
 *   2. runs with no limit while another thread calls pipc_capture_breakloop: must stop by break;
 *   3. runs with no limit while a SIGALRM handler calls pipc_capture_breakloop: must stop by break;
 * and checks the argument errors. Then ends the stream, prints "ok PACKETS BYTES" and exits 0, or names the
 * first failed check and exits 1. That each frame reached exactly one worker, by flow, is the test's check.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <stddef.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <packet_ipc.h>

#define CHECK(cond)                                                                                              \
    do {                                                                                                         \
        if (!(cond)) {                                                                                           \
            printf("check failed at line %d: %s (last error: %s)\n", __LINE__, #cond, pipc_last_error());       \
            return 1;                                                                                            \
        }                                                                                                        \
    } while (0)

static pipc_capture *cap;

static void *break_later(void *arg)
{
    (void)arg;
    struct timespec t = {0, 300 * 1000000L};
    nanosleep(&t, NULL);
    pipc_capture_breakloop(cap);
    return NULL;
}

static void on_alarm(int sig)
{
    (void)sig;
    pipc_capture_breakloop(cap); /* async-signal-safe */
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: capture_run_check IFACE SERVER_PATH COUNT\n");
        return 2;
    }
    uint64_t count = strtoull(argv[3], NULL, 10);
    const char *ifs[] = {argv[1]};
    struct pipc_capture_options co = {.struct_bytes = sizeof co, .interfaces = ifs, .n_interfaces = 1,
                                      .filter = "udp dst port 7777", .linger_ms = 5};
    CHECK(pipc_capture_open(&co, &cap) == 0);
    struct pipc_server_options so = {.struct_bytes = sizeof so, .linktype = 1,
                                     .distribution = PIPC_DISTRIBUTION_FLOW};
    pipc_server *server;
    CHECK(pipc_server_create(argv[2], &so, &server) == 0);

    struct pipc_capture_run_options ro = {.struct_bytes = sizeof ro, .count = count, .batch = 64};
    struct pipc_capture_run_result res = {.struct_bytes = sizeof res};
    /* bad arguments, and no worker yet */
    CHECK(pipc_capture_run(NULL, server, &ro, &res) == -EINVAL);
    struct pipc_capture_run_options short_opts = ro;
    short_opts.struct_bytes = sizeof ro - 1;
    CHECK(pipc_capture_run(cap, server, &short_opts, &res) == -EINVAL);

    printf("listening\n");
    fflush(stdout);
    pipc_conn *conns[2];
    for (int i = 0; i < 2; i++)
        CHECK(pipc_server_accept(server, 30000, &conns[i]) == 0);
    printf("ready\n");
    fflush(stdout);

    /* 1. count */
    long why = pipc_capture_run(cap, server, &ro, &res);
    CHECK(why == PIPC_CAPTURE_STOPPED_COUNT);
    CHECK(res.packets == count && res.not_sent == 0 && res.batches >= 1 && res.bytes >= 60 * count);
    CHECK(res.staged <= res.packets);
    uint64_t packets = res.packets, bytes = res.bytes;

    /* 2. pipc_capture_breakloop from another thread */
    pthread_t t;
    CHECK(pthread_create(&t, NULL, break_later, NULL) == 0);
    why = pipc_capture_run(cap, server, NULL, &res);
    pthread_join(t, NULL);
    CHECK(why == PIPC_CAPTURE_STOPPED_BREAK);
    packets += res.packets;

    /* 3. from a signal handler (the signal itself does not stop a run; the handler's break does) */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    CHECK(sigaction(SIGALRM, &sa, NULL) == 0);
    struct itimerval it = {{0, 0}, {0, 300000}};
    CHECK(setitimer(ITIMER_REAL, &it, NULL) == 0);
    why = pipc_capture_run(cap, server, NULL, &res);
    CHECK(why == PIPC_CAPTURE_STOPPED_BREAK);
    packets += res.packets;

    /* a duration alone, into the result struct as first published (it ended at not_sent): those fields are
     * set, nothing after them is written */
    struct pipc_capture_run_options dur = {.struct_bytes = sizeof dur, .duration_ms = 100};
    res = (struct pipc_capture_run_result){.struct_bytes = offsetof(struct pipc_capture_run_result, staged),
                                           .batches = 99, .staged = 12345};
    CHECK(pipc_capture_run(cap, server, &dur, &res) == PIPC_CAPTURE_STOPPED_DURATION);
    CHECK(res.batches == 0 && res.staged == 12345);
    packets += res.packets;

    CHECK(pipc_server_end(server) == 0);
    for (int i = 0; i < 2; i++)
        pipc_conn_close(conns[i]);
    pipc_server_close(server);
    pipc_capture_close(cap);
    printf("ok %llu %llu\n", (unsigned long long)packets, (unsigned long long)bytes);
    return 0;
}
