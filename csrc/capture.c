/*
 * capture.c - live capture through libpcap, loaded at run time (dlopen), into caller-supplied packet arrays.
 *
 * libpcap does the capturing (TPACKET_V3 rings, every link type, BPF); this file opens one pcap_t per
 * interface in non-blocking mode, polls their selectable fds together, and copies each packet once, from
 * libpcap's ring into the caller's buffer, with no allocation per packet. Under pipc_capture_run that one
 * copy goes straight into the packet's worker's ring (pipc_direct_*, distribute.c), from libpcap's callback
 * while its pointer is valid; only what a worker's ring cannot take at once is staged in the buffer.
 * libpcap is loaded with dlopen so the package builds without its headers; the few types and prototypes
 * used are declared here (they are part of libpcap's stable ABI).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <net/if.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "capi_internal.h" /* pipc_direct_*: the one-copy path of pipc_capture_run */
#include "capture_internal.h"
#include "handshake.h" /* pipc_set_error */
#include "packet_ipc.h"

/* ---- the part of libpcap's ABI we use (pcap/pcap.h) ---- */
typedef struct pcap pcap_t;
struct pcap_pkthdr {
    struct timeval ts; /* tv_usec holds nanoseconds under PCAP_TSTAMP_PRECISION_NANO */
    uint32_t caplen;
    uint32_t len;
};
struct pcap_stat {
    unsigned int ps_recv, ps_drop, ps_ifdrop;
};
struct bpf_program {
    unsigned int bf_len;
    void *bf_insns;
};
typedef void (*pcap_handler)(unsigned char *, const struct pcap_pkthdr *, const unsigned char *);
#define PCAP_ERRBUF_SIZE 256
#define PCAP_TSTAMP_PRECISION_NANO 1
#define PCAP_NETMASK_UNKNOWN 0xffffffffu

static struct {
    int loaded;
    pcap_t *(*create)(const char *, char *);
    int (*set_snaplen)(pcap_t *, int);
    int (*set_promisc)(pcap_t *, int);
    int (*set_timeout)(pcap_t *, int);
    int (*set_buffer_size)(pcap_t *, int);
    int (*set_immediate_mode)(pcap_t *, int);
    int (*set_tstamp_precision)(pcap_t *, int);
    int (*get_tstamp_precision)(pcap_t *);
    int (*activate)(pcap_t *);
    int (*compile)(pcap_t *, struct bpf_program *, const char *, int, uint32_t);
    int (*setfilter)(pcap_t *, struct bpf_program *);
    void (*freecode)(struct bpf_program *);
    int (*setnonblock)(pcap_t *, int, char *);
    int (*get_selectable_fd)(pcap_t *);
    int (*dispatch)(pcap_t *, int, pcap_handler, unsigned char *);
    int (*stats)(pcap_t *, struct pcap_stat *);
    int (*datalink)(pcap_t *);
    int (*snapshot)(pcap_t *);
    char *(*geterr)(pcap_t *);
    const char *(*statustostr)(int);
    void (*close)(pcap_t *);
} pc;

/* Loads libpcap once. PACKET_IPC_LIBPCAP names the library to load instead of the usual names (a test hook:
 * a name that does not exist simulates a machine without libpcap). */
static int load_libpcap(void)
{
    if (pc.loaded)
        return 0;
    const char *forced = getenv("PACKET_IPC_LIBPCAP");
    const char *names[] = {"libpcap.so.0.8", "libpcap.so.1", "libpcap.so"};
    void *h = NULL;
    if (forced && *forced)
        h = dlopen(forced, RTLD_NOW | RTLD_LOCAL);
    else
        for (size_t i = 0; i < sizeof names / sizeof names[0] && !h; i++)
            h = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        pipc_set_error("live capture needs libpcap, which cannot be loaded (%s): install libpcap0.8 "
                       "(apt-get install libpcap0.8)",
                       forced && *forced ? forced : "libpcap.so.0.8");
        return -ELIBACC;
    }
#define SYM(field, name)                                                                                        \
    do {                                                                                                         \
        *(void **)(&pc.field) = dlsym(h, name);                                                                 \
        if (!pc.field) {                                                                                         \
            pipc_set_error("the libpcap found lacks %s: install libpcap0.8 1.5 or later", name);                 \
            dlclose(h);                                                                                          \
            return -ELIBACC;                                                                                     \
        }                                                                                                        \
    } while (0)
    SYM(create, "pcap_create");
    SYM(set_snaplen, "pcap_set_snaplen");
    SYM(set_promisc, "pcap_set_promisc");
    SYM(set_timeout, "pcap_set_timeout");
    SYM(set_buffer_size, "pcap_set_buffer_size");
    SYM(set_immediate_mode, "pcap_set_immediate_mode");
    SYM(set_tstamp_precision, "pcap_set_tstamp_precision");
    SYM(get_tstamp_precision, "pcap_get_tstamp_precision");
    SYM(activate, "pcap_activate");
    SYM(compile, "pcap_compile");
    SYM(setfilter, "pcap_setfilter");
    SYM(freecode, "pcap_freecode");
    SYM(setnonblock, "pcap_setnonblock");
    SYM(get_selectable_fd, "pcap_get_selectable_fd");
    SYM(dispatch, "pcap_dispatch");
    SYM(stats, "pcap_stats");
    SYM(datalink, "pcap_datalink");
    SYM(snapshot, "pcap_snapshot");
    SYM(geterr, "pcap_geterr");
    SYM(statustostr, "pcap_statustostr");
    SYM(close, "pcap_close");
#undef SYM
    pc.loaded = 1; /* the handle stays loaded for the life of the process */
    return 0;
}

/* ---- the capture ---- */

struct iface {
    pcap_t *p;
    char name[IF_NAMESIZE + 32];
    uint32_t ifindex, linktype;
    int nano;
    uint64_t captured;
};

struct pipc_capture {
    struct iface *ifs;
    size_t n, next_if; /* next_if: where the next read starts, so one busy interface cannot starve another */
    int wake_fd;       /* eventfd: pipc_capture_breakloop() */
    uint32_t snaplen;
    int linger_ms;
    /* Packets libpcap handed over when the caller's buffer was full: returned first by the next read. */
    struct pipc_packet *carry;
    size_t n_carry, cap_carry;
    uint8_t *carry_buf;
    size_t carry_used, carry_bytes;
    struct pipc_packet *cols; /* pipc_capture_next_columns' packets */
    size_t cap_cols;
    int broke;              /* a pipc_capture_breakloop() was consumed (pipc_capture_take_break) */
    pthread_mutex_t lock;   /* libpcap's handles are not thread-safe: held around each pcap_dispatch and
                               pcap_stats, so stats can be read from another thread during a read or a run */
};

/* Where the callback writes (one pcap_dispatch call). */
struct sink {
    pipc_capture *cap;
    struct iface *ifc;
    struct pipc_packet *out;
    size_t n, max;
    uint8_t *buf;
    size_t used, bytes;
    int nomem;
    struct pipc_direct *direct; /* pipc_capture_run: the pass open on the server's workers, or NULL */
    size_t n_direct;            /* packets written straight into the workers' rings (not in out[]) */
};

static int push_carry(pipc_capture *c, const struct pipc_packet *pk, const uint8_t *data)
{
    if (c->n_carry == c->cap_carry) {
        size_t cap = c->cap_carry ? 2 * c->cap_carry : 64;
        void *m = realloc(c->carry, cap * sizeof *c->carry);
        if (!m)
            return -ENOMEM;
        c->carry = m;
        c->cap_carry = cap;
    }
    if (c->carry_used + pk->caplen > c->carry_bytes) {
        size_t cap = c->carry_bytes ? 2 * c->carry_bytes : 1 << 20;
        while (cap < c->carry_used + pk->caplen)
            cap *= 2;
        void *m = realloc(c->carry_buf, cap);
        if (!m)
            return -ENOMEM;
        c->carry_buf = m;
        c->carry_bytes = cap;
    }
    memcpy(c->carry_buf + c->carry_used, data, pk->caplen);
    c->carry[c->n_carry] = *pk;
    c->carry[c->n_carry].data = NULL;
    c->carry[c->n_carry].id = c->carry_used; /* offset in carry_buf while carried */
    c->n_carry++;
    c->carry_used += pk->caplen;
    return 0;
}

static void on_packet(unsigned char *user, const struct pcap_pkthdr *h, const unsigned char *bytes)
{
    struct sink *s = (struct sink *)user;
    struct iface *ifc = s->ifc;
    uint64_t frac = (uint64_t)h->ts.tv_usec * (ifc->nano ? 1u : 1000u);
    struct pipc_packet pk = {(uint64_t)h->ts.tv_sec * 1000000000u + frac, h->caplen, h->len, ifc->linktype,
                             ifc->ifindex, NULL, 0};
    ifc->captured++;
    if (s->direct && s->direct->on && s->cap->n_carry == 0) {
        pk.data = bytes;
        if (pipc_direct_put(s->direct, &pk)) {
            s->n_direct++;
            return;
        }
    }
    /* Once one packet is carried, the ones after it are carried too, so that a later packet small enough for the
     * space left never overtakes it: packets are returned in the order they came. */
    if (s->cap->n_carry == 0 && s->n < s->max && h->caplen <= s->bytes - s->used) {
        memcpy(s->buf + s->used, bytes, h->caplen);
        pk.data = s->buf + s->used;
        s->used += h->caplen;
        s->out[s->n++] = pk;
    } else if (push_carry(s->cap, &pk, bytes) < 0) {
        s->nomem = 1;
    }
}

static void close_ifaces(pipc_capture *c)
{
    for (size_t i = 0; i < c->n; i++)
        if (c->ifs[i].p)
            pc.close(c->ifs[i].p);
}

void pipc_capture_close(pipc_capture *c)
{
    if (!c)
        return;
    close_ifaces(c);
    if (c->wake_fd >= 0)
        close(c->wake_fd);
    pthread_mutex_destroy(&c->lock);
    free(c->ifs);
    free(c->carry);
    free(c->carry_buf);
    free(c->cols);
    free(c);
}

/* Maps libpcap's activation status to an errno-style code. */
static int activate_code(int status)
{
    switch (status) {
    case -5: /* PCAP_ERROR_NO_SUCH_DEVICE */
        return -ENODEV;
    case -8: /* PCAP_ERROR_PERM_DENIED */
    case -11: /* PCAP_ERROR_PROMISC_PERM_DENIED */
        return -EPERM;
    case -9: /* PCAP_ERROR_IFACE_NOT_UP */
        return -ENETDOWN;
    default:
        return -EINVAL;
    }
}

static int open_iface(struct iface *ifc, const char *name, const struct pipc_capture_options *o, uint32_t snaplen)
{
    char err[PCAP_ERRBUF_SIZE] = "";
    snprintf(ifc->name, sizeof ifc->name, "%s", name);
    ifc->p = pc.create(name, err);
    if (!ifc->p) {
        pipc_set_error("cannot capture on '%s': %s", name, err);
        return -ENODEV;
    }
    pcap_t *p = ifc->p;
    pc.set_snaplen(p, (int)snaplen);
    pc.set_promisc(p, o->promisc ? 1 : 0);
    pc.set_timeout(p, o->timeout_ms > 0 ? o->timeout_ms : 100);
    pc.set_buffer_size(p, o->buffer_bytes ? (int)o->buffer_bytes : 8 << 20);
    if (o->immediate)
        pc.set_immediate_mode(p, 1);
    pc.set_tstamp_precision(p, PCAP_TSTAMP_PRECISION_NANO); /* falls back to microseconds where unsupported */
    int st = pc.activate(p);
    if (st < 0) {
        char detail[PCAP_ERRBUF_SIZE];
        snprintf(detail, sizeof detail, "%s", pc.geterr(p));
        if (!strcmp(detail, pc.statustostr(st)))
            detail[0] = 0;
        pipc_set_error("cannot capture on '%s': %s%s%s%s", name, pc.statustostr(st), *detail ? " (" : "", detail,
                       *detail ? ")" : "");
        return activate_code(st);
    }
    ifc->nano = pc.get_tstamp_precision(p) == PCAP_TSTAMP_PRECISION_NANO;
    ifc->linktype = (uint32_t)pc.datalink(p);
    ifc->ifindex = if_nametoindex(name); /* 0 for "any" and other pseudo-devices */
    if (o->filter && *o->filter) {
        struct bpf_program prog;
        if (pc.compile(p, &prog, o->filter, 1, PCAP_NETMASK_UNKNOWN) < 0) {
            pipc_set_error("bad capture filter '%s' on '%s': %s", o->filter, name, pc.geterr(p));
            return -EINVAL;
        }
        int rc = pc.setfilter(p, &prog);
        pc.freecode(&prog);
        if (rc < 0) {
            pipc_set_error("cannot set capture filter '%s' on '%s': %s", o->filter, name, pc.geterr(p));
            return -EINVAL;
        }
    }
    if (pc.setnonblock(p, 1, err) < 0) {
        pipc_set_error("cannot capture on '%s': %s", name, err);
        return -EINVAL;
    }
    if (pc.get_selectable_fd(p) < 0) {
        pipc_set_error("cannot capture on '%s': it has no pollable descriptor", name);
        return -EINVAL;
    }
    return 0;
}

int pipc_capture_open(const struct pipc_capture_options *o, pipc_capture **out)
{
    *out = NULL;
    if (!o || o->struct_bytes < sizeof(struct pipc_capture_options) || !o->interfaces || o->n_interfaces == 0) {
        pipc_set_error("capture options: struct_bytes and at least one interface are required");
        return -EINVAL;
    }
    uint32_t snaplen = o->snaplen ? o->snaplen : PIPC_DEFAULT_SNAPLEN;
    if (snaplen > PIPC_DEFAULT_SNAPLEN) {
        pipc_set_error("snaplen %u is out of range (1 to 262144)", snaplen);
        return -EINVAL;
    }
    int rc = load_libpcap();
    if (rc < 0)
        return rc;
    pipc_capture *c = calloc(1, sizeof *c);
    if (!c || !(c->ifs = calloc(o->n_interfaces, sizeof *c->ifs))) {
        free(c);
        return -ENOMEM;
    }
    pthread_mutex_init(&c->lock, NULL);
    c->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    c->snaplen = snaplen;
    c->linger_ms = o->linger_ms > 0 ? o->linger_ms : 0;
    c->n = o->n_interfaces;
    if (c->wake_fd < 0) {
        rc = -errno;
        pipc_set_error("eventfd: %s", strerror(errno));
        goto fail;
    }
    for (size_t i = 0; i < c->n; i++)
        if ((rc = open_iface(&c->ifs[i], o->interfaces[i], o, snaplen)) < 0)
            goto fail;
    *out = c;
    return 0;
fail:
    pipc_capture_close(c);
    return rc;
}

size_t pipc_capture_count(const pipc_capture *c) { return c->n; }

int pipc_capture_info(const pipc_capture *c, size_t i, struct pipc_capture_stats *info)
{
    if (i >= c->n)
        return -EINVAL;
    memset(info, 0, sizeof *info);
    info->ifindex = c->ifs[i].ifindex;
    info->linktype = c->ifs[i].linktype;
    info->nanosecond = c->ifs[i].nano;
    info->captured = c->ifs[i].captured;
    snprintf(info->name, sizeof info->name, "%s", c->ifs[i].name);
    return 0;
}

int pipc_capture_stats(pipc_capture *c, size_t i, struct pipc_capture_stats *st)
{
    if (i >= c->n)
        return -EINVAL;
    struct pcap_stat ps;
    pthread_mutex_lock(&c->lock); /* captured is counted under it too, during pcap_dispatch */
    pipc_capture_info(c, i, st);
    int rc = pc.stats(c->ifs[i].p, &ps);
    pthread_mutex_unlock(&c->lock);
    if (rc < 0) {
        pipc_set_error("pcap_stats on '%s': %s", c->ifs[i].name, pc.geterr(c->ifs[i].p));
        return -EIO;
    }
    st->received = ps.ps_recv;
    st->dropped = ps.ps_drop;
    st->if_dropped = ps.ps_ifdrop;
    return 0;
}

int pipc_capture_fd(const pipc_capture *c) { return c->wake_fd; }

int pipc_capture_breakloop(pipc_capture *c)
{
    uint64_t one = 1;
    return write(c->wake_fd, &one, sizeof one) == sizeof one ? 0 : -errno; /* async-signal-safe */
}

/* Moves carried packets into the caller's arrays, as many as fit. */
static void take_carry(pipc_capture *c, struct sink *s)
{
    size_t i = 0;
    for (; i < c->n_carry && s->n < s->max; i++) {
        struct pipc_packet *pk = &c->carry[i];
        if (pk->caplen > s->bytes - s->used)
            break;
        memcpy(s->buf + s->used, c->carry_buf + pk->id, pk->caplen);
        s->out[s->n] = *pk;
        s->out[s->n].data = s->buf + s->used;
        s->out[s->n].id = 0;
        s->n++;
        s->used += pk->caplen;
    }
    if (i == 0)
        return;
    size_t shift = i < c->n_carry ? c->carry[i].id : c->carry_used;
    memmove(c->carry, c->carry + i, (c->n_carry - i) * sizeof *c->carry);
    c->n_carry -= i;
    memmove(c->carry_buf, c->carry_buf + shift, c->carry_used - shift);
    c->carry_used -= shift;
    for (size_t k = 0; k < c->n_carry; k++)
        c->carry[k].id -= shift;
}

/* One non-blocking pass over every interface. Returns 0 or a negative code. */
static int read_pass(pipc_capture *c, struct sink *s)
{
    for (size_t k = 0; k < c->n && s->n + s->n_direct < s->max && s->used < s->bytes; k++) {
        size_t i = (c->next_if + k) % c->n;
        s->ifc = &c->ifs[i];
        int want = (int)(s->max - s->n - s->n_direct);
        pthread_mutex_lock(&c->lock);
        int got = pc.dispatch(c->ifs[i].p, want, on_packet, (unsigned char *)s);
        pthread_mutex_unlock(&c->lock);
        if (got < 0 && got != -2 /* PCAP_ERROR_BREAK */) {
            pipc_set_error("capture on '%s' failed: %s", c->ifs[i].name, pc.geterr(c->ifs[i].p));
            return -EIO;
        }
        if (s->nomem) {
            pipc_set_error("out of memory holding captured packets");
            return -ENOMEM;
        }
    }
    c->next_if = (c->next_if + 1) % c->n;
    return 0;
}

static int64_t now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* pipc_capture_next, and with a server pipc_capture_next_direct (capture_internal.h). Returns the packets in
 * out[] (0 is possible when every packet went straight to a worker), or a negative code. */
static long capture_next(pipc_capture *c, struct pipc_packet *out, size_t max, uint8_t *buf, size_t buf_bytes,
                         int timeout_ms, pipc_server *server, struct pipc_direct *direct)
{
    struct sink s = {c, NULL, out, 0, max, buf, 0, buf_bytes, 0, NULL, 0};
    int64_t deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
    struct pollfd fds[c->n + 1];
    for (size_t i = 0; i < c->n; i++)
        fds[i] = (struct pollfd){pc.get_selectable_fd(c->ifs[i].p), POLLIN, 0};
    fds[c->n] = (struct pollfd){c->wake_fd, POLLIN, 0};
    int64_t linger_end = -1; /* set once the first packets are in: how long to wait for more */
    for (;;) {
        take_carry(c, &s);
        /* Straight into the rings while nothing is staged: a staged packet (carried over, or refused by its
         * worker's ring) goes out after this call returns, so no packet of a later pass may overtake it. */
        s.direct = server && s.n == 0 && c->n_carry == 0 ? direct : NULL;
        if (s.direct)
            pipc_direct_begin(server, s.direct);
        int rc = read_pass(c, &s);
        if (s.direct)
            pipc_direct_end(s.direct); /* published, workers woken */
        size_t got = s.n + s.n_direct;
        if (rc < 0)
            return got ? (long)s.n : rc;
        int64_t now = now_ms();
        if (got) {
            if (got == s.max || s.used + c->snaplen > s.bytes || c->linger_ms == 0)
                return (long)s.n;
            if (linger_end < 0)
                linger_end = now + c->linger_ms;
            else if (now >= linger_end)
                return (long)s.n;
        }
        int wait = -1;
        if (got) {
            wait = (int)(linger_end - now);
        } else if (deadline >= 0) {
            int64_t left = deadline - now;
            if (left <= 0) {
                pipc_set_error("no packet within the timeout");
                return -ETIMEDOUT;
            }
            wait = left > 1000000 ? 1000000 : (int)left;
        }
        int r = poll(fds, c->n + 1, wait);
        if (r < 0 && errno == EINTR) {
            if (got)
                return (long)s.n; /* the caller sees the signal on return */
            pipc_set_error("interrupted by a signal");
            return -EINTR;
        }
        if (r < 0) {
            if (got)
                return (long)s.n;
            pipc_set_error("poll: %s", strerror(errno));
            return -errno;
        }
        if (fds[c->n].revents & POLLIN) {
            if (got)
                return (long)s.n; /* the break stays pending: the next call returns -EINTR */
            uint64_t v;
            if (read(c->wake_fd, &v, sizeof v) > 0) /* consumed: one break per call */
                c->broke = 1;
            pipc_set_error("pipc_capture_breakloop() was called");
            return -EINTR;
        }
        for (size_t i = 0; i < c->n; i++)
            if (fds[i].revents & (POLLERR | POLLNVAL)) {
                if (got)
                    return (long)s.n;
                pipc_set_error("capture on '%s' failed: the interface went away or failed", c->ifs[i].name);
                return -ENETDOWN;
            }
    }
}

long pipc_capture_next(pipc_capture *c, struct pipc_packet *out, size_t max, uint8_t *buf, size_t buf_bytes,
                       int timeout_ms)
{
    if (!c || !out || !buf || max == 0 || buf_bytes < c->snaplen) {
        pipc_set_error("pipc_capture_next: need max > 0 and a buffer of at least snaplen (%u) bytes",
                       c ? c->snaplen : 0);
        return -EINVAL;
    }
    return capture_next(c, out, max, buf, buf_bytes, timeout_ms, NULL, NULL);
}

long pipc_capture_next_direct(pipc_capture *c, pipc_server *server, struct pipc_packet *out, size_t max,
                              uint8_t *buf, size_t buf_bytes, int timeout_ms, uint64_t *direct_packets,
                              uint64_t *direct_bytes)
{
    struct pipc_direct dw = {0};
    long n = capture_next(c, out, max, buf, buf_bytes, timeout_ms, server, &dw);
    *direct_packets = dw.packets;
    *direct_bytes = dw.bytes;
    return n;
}

long pipc_capture_next_columns(pipc_capture *c, size_t max, uint64_t *ts_ns, uint32_t *caplen, uint32_t *origlen,
                               uint32_t *linktype, uint32_t *ifindex, uint8_t *buf, size_t buf_bytes,
                               size_t *used, int timeout_ms)
{
    *used = 0;
    if (c && max > c->cap_cols) {
        void *m = realloc(c->cols, max * sizeof *c->cols);
        if (!m)
            return -ENOMEM;
        c->cols = m;
        c->cap_cols = max;
    }
    long n = pipc_capture_next(c, c ? c->cols : NULL, max, buf, buf_bytes, timeout_ms);
    for (long i = 0; i < n; i++) {
        const struct pipc_packet *pk = &c->cols[i];
        ts_ns[i] = pk->ts_ns;
        caplen[i] = pk->caplen;
        origlen[i] = pk->origlen;
        linktype[i] = pk->linktype;
        ifindex[i] = pk->ifindex;
        *used += pk->caplen;
    }
    return n;
}

int pipc_capture_take_break(pipc_capture *c)
{
    int broke = c->broke;
    c->broke = 0;
    return broke;
}

uint32_t pipc_capture_snaplen_of(const pipc_capture *c) { return c->snaplen; }

int pipc_capture_swap_linger(pipc_capture *c, int linger_ms)
{
    int old = c->linger_ms;
    c->linger_ms = linger_ms;
    return old;
}
