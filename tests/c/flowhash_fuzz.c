/*
 * flowhash_fuzz.c - runs csrc/flowhash.c over hostile inputs, to be built with
 * -fsanitize=address,undefined (tests/test_flowhash.py does). Reads records from stdin:
 *   u32 linktype (little endian) | u32 length (little endian) | length bytes
 * and for every record calls the parser and the hash on every prefix of the bytes (lengths 0..length),
 * each prefix copied into a heap buffer of exactly that size, so reading one byte past caplen is an
 * ASan report. Also checks the invariants of a key and that the batch form agrees. Prints "runs=N".
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../include/packet_ipc_ext.h"

static uint32_t read_le32(const unsigned char *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static int check_key(const struct pipc_flow_key *k, int rc)
{
    static const uint8_t zero[sizeof *k];
    if (rc != 0)
        return rc == -1 && memcmp(k, zero, sizeof *k) == 0;
    if (k->family != 4 && k->family != 6)
        return 0;
    if (k->is_fragment > 1 || (k->is_fragment && (k->port_a || k->port_b)))
        return 0;
    if (k->family == 4) {
        for (int i = 4; i < 16; i++)
            if (k->addr_a[i] || k->addr_b[i])
                return 0;
    }
    return 1;
}

int main(void)
{
    unsigned char hdr[8];
    unsigned long long runs = 0;
    while (fread(hdr, 1, sizeof hdr, stdin) == sizeof hdr) {
        uint32_t linktype = read_le32(hdr), len = read_le32(hdr + 4);
        if (len > (1u << 20)) {
            fprintf(stderr, "record too long: %u\n", len);
            return 2;
        }
        unsigned char *rec = malloc(len ? len : 1);
        if (rec == NULL || fread(rec, 1, len, stdin) != len) {
            fprintf(stderr, "short record\n");
            return 2;
        }
        for (uint32_t n = 0; n <= len; n++) {
            /* exact size: malloc(0) may return NULL, so a 0-byte prefix is passed as a NULL pointer too */
            uint8_t *buf = n ? malloc(n) : NULL;
            if (n && buf == NULL)
                return 2;
            if (n)
                memcpy(buf, rec, n);
            struct pipc_flow_key key;
            int rc = pipc_flow_key_parse(linktype, buf, n, &key);
            if (!check_key(&key, rc)) {
                fprintf(stderr, "bad key: linktype %u length %u rc %d\n", linktype, n, rc);
                return 1;
            }
            uint32_t h = pipc_flow_hash(linktype, buf, n), hb = 0;
            const uint8_t *const ptrs[1] = {buf};
            pipc_flow_hash_batch(linktype, ptrs, &n, 1, &hb);
            if (h != hb) {
                fprintf(stderr, "batch differs: linktype %u length %u\n", linktype, n);
                return 1;
            }
            free(buf);
            runs++;
        }
        free(rec);
    }
    printf("runs=%llu\n", runs);
    return 0;
}
