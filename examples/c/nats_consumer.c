/*
 * nats_consumer.c - reads one partition of a packet-ipc stream from NATS JetStream with the NATS C client
 * (libnats-dev) and writes its packets to a nanosecond pcap file: the message format of docs/wire-format.md
 * ("Across hosts") read from C, with nothing of packet-ipc linked in.
 *
 *   cc -std=c11 -Wall -Wextra -O2 nats_consumer.c -o nats_consumer -lnats -lz
 *   ./nats_consumer nats://127.0.0.1:4222 PREFIX PARTITION out.pcap
 *
 * It pulls from the durable consumer "c-reader" of stream PREFIX-<PARTITION>, checks every message strictly
 * (magic, version, lengths, CRC-32; a bad one is counted, terminated and skipped), writes the records, acks
 * each message after writing it, and stops at the first end-of-stream marker. Prints "packets N corrupt M".
 */
#include <nats/nats.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#define HDR_LEN 32u
#define REC_OVERHEAD 24u
#define MAX_CAPLEN 262144u

static uint32_t rd32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; } /* little-endian hosts */
static uint64_t rd64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }

/* Returns 1 for packets (written), 2 for an end-of-stream marker, 0 for a corrupt or foreign message. */
static int handle(const unsigned char *m, size_t len, uint32_t partition, FILE *out, uint64_t *packets, int *header_done)
{
    if (len < HDR_LEN || memcmp(m, "PIPN", 4) != 0 || m[4] != 1)
        return 0;
    uint32_t kind = m[5], hdr_len = (uint32_t)m[6] | ((uint32_t)m[7] << 8), count = rd32(m + 8);
    uint32_t body_len = rd32(m + 24), crc = rd32(m + 28);
    if (hdr_len < HDR_LEN || (uint64_t)hdr_len + body_len != len || rd32(m + 12) != partition)
        return 0;
    const unsigned char *body = m + hdr_len;
    if ((uint32_t)crc32(0L, body, body_len) != crc)
        return 0;
    if (kind == 2)
        return count == 0 && body_len >= 24 ? 2 : 0;
    if (kind != 1 || count == 0 || (uint64_t)REC_OVERHEAD * count > body_len)
        return 0;
    const unsigned char *ts = body, *cap = body + 8ull * count, *orig = cap + 4ull * count, *lt = orig + 4ull * count;
    const unsigned char *data = body + (uint64_t)REC_OVERHEAD * count;
    uint64_t total = 0;
    for (uint32_t i = 0; i < count; i++) {
        uint32_t c = rd32(cap + 4ull * i);
        if (c > MAX_CAPLEN || c > rd32(orig + 4ull * i))
            return 0;
        total += c;
    }
    if (total != body_len - (uint64_t)REC_OVERHEAD * count)
        return 0;
    if (!*header_done) { /* pcap, nanosecond magic, linktype of the first record */
        uint32_t hdr[6] = {0xa1b23c4du, 2u | (4u << 16), 0, 0, MAX_CAPLEN, rd32(lt) & 0xffffu};
        fwrite(hdr, sizeof hdr, 1, out);
        *header_done = 1;
    }
    for (uint32_t i = 0; i < count; i++) {
        uint64_t t = rd64(ts + 8ull * i);
        uint32_t rec[4] = {(uint32_t)(t / 1000000000u), (uint32_t)(t % 1000000000u), rd32(cap + 4ull * i),
                           rd32(orig + 4ull * i)};
        fwrite(rec, sizeof rec, 1, out);
        fwrite(data, rec[2], 1, out);
        data += rec[2];
    }
    *packets += count;
    return 1;
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: %s NATS_URL PREFIX PARTITION OUT.pcap\n", argv[0]);
        return 2;
    }
    char subject[256], stream[256];
    uint32_t partition = (uint32_t)strtoul(argv[3], NULL, 10);
    snprintf(subject, sizeof subject, "%s.%u", argv[2], partition);
    snprintf(stream, sizeof stream, "%s-%u", argv[2], partition);
    FILE *out = fopen(argv[4], "wb");
    if (!out) {
        perror(argv[4]);
        return 1;
    }
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    natsSubscription *sub = NULL;
    jsErrCode jerr = 0;
    jsSubOptions so;
    natsStatus s = natsConnection_ConnectTo(&nc, argv[1]);
    if (s == NATS_OK)
        s = natsConnection_JetStream(&js, nc, NULL);
    if (s == NATS_OK)
        s = jsSubOptions_Init(&so);
    if (s == NATS_OK) {
        so.Stream = stream;
        s = js_PullSubscribe(&sub, js, subject, "c-reader", NULL, &so, &jerr);
    }
    uint64_t packets = 0, corrupt = 0;
    int header_done = 0, ended = 0, idle = 0;
    while (s == NATS_OK && !ended && idle < 30) {
        natsMsgList list = {0};
        natsStatus f = natsSubscription_Fetch(&list, sub, 16, 1000, &jerr);
        if (f == NATS_TIMEOUT) {
            idle++;
            continue;
        }
        if (f != NATS_OK) {
            s = f;
            break;
        }
        idle = 0;
        for (int i = 0; i < list.Count; i++) {
            natsMsg *msg = list.Msgs[i];
            int r = ended ? 3 : handle((const unsigned char *)natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg),
                                       partition, out, &packets, &header_done);
            if (r == 0) {
                corrupt++;
                natsMsg_Term(msg, NULL);
            } else if (r != 3) {
                natsMsg_Ack(msg, NULL);
            }
            if (r == 2)
                ended = 1;
        }
        natsMsgList_Destroy(&list);
    }
    fclose(out);
    printf("packets %llu corrupt %llu\n", (unsigned long long)packets, (unsigned long long)corrupt);
    if (s != NATS_OK || !ended) {
        fprintf(stderr, "nats_consumer: %s\n", s != NATS_OK ? natsStatus_GetText(s) : "no end-of-stream marker");
        natsSubscription_Destroy(sub);
        jsCtx_Destroy(js);
        natsConnection_Destroy(nc);
        return 1;
    }
    natsSubscription_Destroy(sub);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    nats_Close();
    return 0;
}
