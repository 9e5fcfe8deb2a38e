/*
 * capture_check.c - the live-capture C ABI end to end on the loopback interface (run as root by
 * tests/test_c_capture.py): bad inputs fail with the documented codes and messages; a UDP datagram this
 * program sends to itself is captured once, byte-exact, with lo's ifindex and linktype and a timestamp inside
 * the send window; pcap_stats counters add up; pipc_capture_breakloop makes the next read return -EINTR.
 * Prints "ok" and exits 0, or names the first failed check and exits 1.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
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

static uint64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

int main(int argc, char **argv)
{
    int port = argc > 1 ? atoi(argv[1]) : 47111;
    const char *nosuch[] = {"pipc14-nosuch"};
    const char *lo[] = {"lo"};
    pipc_capture *cap = NULL;
    struct pipc_capture_options o = {.struct_bytes = sizeof o, .interfaces = nosuch, .n_interfaces = 1};

    CHECK(pipc_capture_open(&o, &cap) == -ENODEV && cap == NULL);
    CHECK(strstr(pipc_last_error(), "cannot capture on 'pipc14-nosuch'") != NULL);

    o.interfaces = lo;
    o.snaplen = 262145;
    CHECK(pipc_capture_open(&o, &cap) == -EINVAL && strstr(pipc_last_error(), "snaplen") != NULL);
    o.snaplen = 0;
    o.filter = "udp port (";
    CHECK(pipc_capture_open(&o, &cap) == -EINVAL && strstr(pipc_last_error(), "bad capture filter 'udp port ('"));
    o.struct_bytes = sizeof o - 1;
    CHECK(pipc_capture_open(&o, &cap) == -EINVAL);
    o.struct_bytes = sizeof o;

    char filter[64];
    snprintf(filter, sizeof filter, "udp dst port %d", port);
    o.filter = filter;
    o.immediate = 1;
    CHECK(pipc_capture_open(&o, &cap) == 0 && cap != NULL);
    CHECK(pipc_capture_count(cap) == 1);
    struct pipc_capture_stats info;
    CHECK(pipc_capture_info(cap, 0, &info) == 0 && info.ifindex == if_nametoindex("lo") && info.linktype == 1);
    CHECK(strcmp(info.name, "lo") == 0 && pipc_capture_info(cap, 1, &info) == -EINVAL);

    struct pipc_packet pk[8];
    static uint8_t buf[1 << 19];
    CHECK(pipc_capture_next(cap, pk, 8, buf, 100, 0) == -EINVAL); /* smaller than the snaplen */
    CHECK(pipc_capture_next(cap, pk, 8, buf, sizeof buf, 0) == -ETIMEDOUT);

    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    const char payload[] = "packet-ipc capture check";
    uint64_t start = now_ns();
    CHECK(sendto(s, payload, sizeof payload, 0, (struct sockaddr *)&to, sizeof to) == (ssize_t)sizeof payload);
    uint64_t end = now_ns();
    close(s);

    long n = pipc_capture_next(cap, pk, 8, buf, sizeof buf, 5000);
    CHECK(n == 1);
    CHECK(pk[0].caplen == 14 + 20 + 8 + sizeof payload && pk[0].origlen == pk[0].caplen);
    CHECK(memcmp(pk[0].data + 42, payload, sizeof payload) == 0 && pk[0].data == buf);
    CHECK(pk[0].ifindex == if_nametoindex("lo") && pk[0].linktype == 1);
    CHECK(pk[0].ts_ns >= start && pk[0].ts_ns <= end);

    struct pipc_capture_stats st;
    CHECK(pipc_capture_stats(cap, 0, &st) == 0);
    CHECK(st.captured == 1 && st.received >= 1 && st.dropped == 0);

    /* A buffer of only the snaplen: packets that do not fit are carried over to the next calls, none lost. */
    pipc_capture_close(cap);
    o.snaplen = 200;
    CHECK(pipc_capture_open(&o, &cap) == 0);
    s = socket(AF_INET, SOCK_DGRAM, 0);
    char big[150];
    for (int i = 0; i < 3; i++) {
        memset(big, 'a' + i, sizeof big);
        CHECK(sendto(s, big, sizeof big, 0, (struct sockaddr *)&to, sizeof to) == (ssize_t)sizeof big);
    }
    close(s);
    usleep(100000); /* all three in libpcap's ring before the first read */
    for (int i = 0; i < 3; i++) {
        n = pipc_capture_next(cap, pk, 8, buf, 200, 5000);
        CHECK(n == 1 && pk[0].caplen == 42 + sizeof big && pk[0].data[42] == 'a' + i);
        if (i == 0) /* libpcap handed over all three at once: two were carried */
            CHECK(pipc_capture_info(cap, 0, &info) == 0 && info.captured == 3);
    }
    CHECK(pipc_capture_next(cap, pk, 8, buf, 200, 0) == -ETIMEDOUT);
    CHECK(pipc_capture_stats(cap, 0, &st) == 0 && st.captured == 3);

    /* Order: once a packet is carried, a later one that would still fit the space left is carried too (it
     * never overtakes it). 192 + 192 bytes do not fit 250, 192 + 52 do. */
    s = socket(AF_INET, SOCK_DGRAM, 0);
    for (int i = 0; i < 3; i++) {
        size_t len = i < 2 ? sizeof big : 10;
        memset(big, 'x' + i, sizeof big);
        CHECK(sendto(s, big, len, 0, (struct sockaddr *)&to, sizeof to) == (ssize_t)len);
    }
    close(s);
    usleep(100000); /* all three in libpcap's ring before the first read */
    n = pipc_capture_next(cap, pk, 8, buf, 250, 5000);
    CHECK(n == 1 && pk[0].data[42] == 'x');
    n = pipc_capture_next(cap, pk, 8, buf, 250, 5000);
    CHECK(n == 2 && pk[0].data[42] == 'y' && pk[1].data[42] == 'z' && pk[1].caplen == 42 + 10);
    CHECK(pipc_capture_next(cap, pk, 8, buf, 250, 0) == -ETIMEDOUT);

    CHECK(pipc_capture_breakloop(cap) == 0 && pipc_capture_fd(cap) >= 0);
    CHECK(pipc_capture_next(cap, pk, 8, buf, sizeof buf, 5000) == -EINTR);
    CHECK(pipc_capture_next(cap, pk, 8, buf, sizeof buf, 0) == -ETIMEDOUT); /* the break was consumed */
    pipc_capture_close(cap);
    pipc_capture_close(NULL);
    printf("ok\n");
    return 0;
}
