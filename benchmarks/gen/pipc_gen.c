/*
 * pipc_gen.c - a packet generator for the capture benchmark: writes the frames of a classic pcap file to an
 * interface, looped, as fast as it can or at a given rate, with sendmmsg() on an AF_PACKET socket that
 * bypasses the qdisc. It offers more than tcpreplay --topspeed (one sendmmsg per 64 frames instead of one
 * send per frame).
 *
 *   cc -O2 -o pipc_gen pipc_gen.c
 *   pipc_gen IFACE FILE.pcap [--loop N | --count N] [--rate PPS] [--max-bytes N]
 *
 * Frames longer than --max-bytes (default 1514: an MTU of 1500) are skipped. Prints one JSON line:
 * {"sent": N, "failed": N, "seconds": S, "pps": R}.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s IFACE FILE.pcap [--loop N | --count N] [--rate PPS] [--max-bytes N]\n", argv[0]);
        return 2;
    }
    long loops = 1, max_bytes = 1514, count = 0;
    double rate = 0;
    for (int i = 3; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--loop"))
            loops = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--rate"))
            rate = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--count"))
            count = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--max-bytes"))
            max_bytes = atol(argv[i + 1]);
        else {
            fprintf(stderr, "unknown option %s\n", argv[i]);
            return 2;
        }
    }
    FILE *f = fopen(argv[2], "rb");
    if (!f) {
        perror(argv[2]);
        return 1;
    }
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    rewind(f);
    uint8_t *file = malloc((size_t)size);
    if (!file || fread(file, 1, (size_t)size, f) != (size_t)size || size < 24) {
        fprintf(stderr, "cannot read %s\n", argv[2]);
        return 1;
    }
    fclose(f);
    uint32_t magic;
    memcpy(&magic, file, 4);
    if (magic != 0xa1b2c3d4 && magic != 0xa1b23c4d) {
        fprintf(stderr, "%s: only little-endian classic pcap files\n", argv[2]);
        return 1;
    }
    /* Frames: pointers into the file. */
    size_t n = 0, cap = 1024;
    struct iovec *frames = malloc(cap * sizeof *frames);
    for (long pos = 24; pos + 16 <= size;) {
        uint32_t caplen;
        memcpy(&caplen, file + pos + 8, 4);
        if (pos + 16 + (long)caplen > size)
            break;
        if ((long)caplen <= max_bytes && caplen >= 14) {
            if (n == cap)
                frames = realloc(frames, (cap *= 2) * sizeof *frames);
            frames[n++] = (struct iovec){file + pos + 16, caplen};
        }
        pos += 16 + (long)caplen;
    }
    if (n == 0) {
        fprintf(stderr, "%s: no frame to send\n", argv[2]);
        return 1;
    }
    int s = socket(AF_PACKET, SOCK_RAW, 0);
    if (s < 0) {
        perror("socket(AF_PACKET)");
        return 1;
    }
    int one = 1;
    setsockopt(s, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof one);
    struct sockaddr_ll addr = {.sll_family = AF_PACKET, .sll_ifindex = (int)if_nametoindex(argv[1])};
    if (!addr.sll_ifindex || bind(s, (struct sockaddr *)&addr, sizeof addr) < 0) {
        perror(argv[1]);
        return 1;
    }
    struct mmsghdr msgs[BATCH];
    memset(msgs, 0, sizeof msgs);
    uint64_t total = count > 0 ? (uint64_t)count : (uint64_t)n * (uint64_t)loops, sent = 0, failed = 0;
    size_t next = 0;
    double start = now();
    while (sent + failed < total) {
        size_t k = 0;
        for (; k < BATCH && sent + failed + k < total; k++) {
            msgs[k].msg_hdr.msg_iov = &frames[next];
            msgs[k].msg_hdr.msg_iovlen = 1;
            next = next + 1 == n ? 0 : next + 1;
        }
        if (rate > 0) { /* pace: this batch may start once the previous ones' share of time has passed */
            double due = start + (double)(sent + failed) / rate;
            double wait = due - now();
            if (wait > 0) {
                struct timespec ts = {(time_t)wait, (long)((wait - (double)(time_t)wait) * 1e9)};
                nanosleep(&ts, NULL);
            }
        }
        size_t done = 0;
        while (done < k) {
            int r = sendmmsg(s, msgs + done, (unsigned)(k - done), 0);
            if (r < 0) {
                if (errno == ENOBUFS || errno == EAGAIN)
                    continue; /* the device is busy: offer the same frames again */
                failed++;     /* this frame is refused (e.g. too long): count it and go on */
                done++;
                continue;
            }
            done += (size_t)r;
            sent += (uint64_t)r;
        }
    }
    double seconds = now() - start;
    printf("{\"sent\": %llu, \"failed\": %llu, \"seconds\": %.6f, \"pps\": %.0f}\n", (unsigned long long)sent,
           (unsigned long long)failed, seconds, seconds > 0 ? (double)sent / seconds : 0.0);
    return 0;
}
