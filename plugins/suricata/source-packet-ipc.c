/* source-packet-ipc.c - a Suricata 7.0 capture plugin that reads packets from a packet-ipc server.
 *
 *   suricata -c suricata.yaml --set plugins.0=/path/packet-ipc.so \
 *            --capture-plugin=packet-ipc --capture-plugin-args=SERVER_NAME
 *
 * or with `packet-ipc: {server: NAME, threads: K}` in the yaml (see docs/suricata.md).
 *
 * Each receive thread is one packet-ipc client (pipc_client_connect to the server name); the server spreads
 * packets over its clients (e.g. by symmetric flow hash), which is what Suricata's "workers" runmode needs.
 * Packets reach Suricata with no copy: Packet data points into the shared ring (PacketSetData ->
 * PKT_ZERO_COPY) and the ring slot is handed back (pipc_client_release, any order) from p->ReleasePacket,
 * i.e. when Suricata is done with the packet. Linktype and timestamp come from each packet (Suricata 7's
 * SCTime_t holds microseconds: the nanoseconds the packet carries are truncated to microseconds there).
 *
 * Thread safety of releases. A packet-ipc client is not thread-safe. In the runmodes this plugin registers
 * ("workers" and "single") a packet is finished by the thread that received it, so ReleasePacket normally
 * runs on the owning thread and releases directly, with no lock. If it ever runs on another thread (a packet
 * kept by some other part of the engine), the release is not done there: the packet's ring handle is
 * appended to a small mutex-protected hand-back list of the owning receive thread, which that thread drains
 * (releases) on its next loop iteration (at most one idle timeout later) and at thread exit. The client
 * itself is only ever touched by its owning thread.
 *
 * End of stream: a thread whose stream ended keeps idling (flow timeouts, counters) until every receive
 * thread has reached end of stream; the last one calls EngineStop(): a clean shutdown, exit status 0.
 * A server that vanishes without ending the stream (-ECONNRESET after the ring was drained) or a corrupt
 * ring (-EPROTO) is logged ("packet-ipc: server ... vanished ...") and stops the engine; everything already
 * received is still processed and logged, and Suricata then exits with status 1.
 */
#include "suricata-common.h"
#include "suricata-plugin.h"
#include "suricata.h"
#include "conf.h"
#include "decode.h"
#include "runmodes.h"
#include "util-runmodes.h"
#include "util-device.h"
#include "util-time.h"
#include "util-checksum.h"
#include "util-affinity.h"
#include "util-cpu.h"
#include "tm-modules.h"
#include "tm-threads.h"
#include "tm-threads-common.h"
#include "tmqh-packetpool.h"
#include "counters.h"

#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>

#include "packet_ipc.h"

#define PLUGIN_NAME "packet-ipc"
#define IPC_DEFAULT_BATCH 64
#define IPC_MAX_BATCH 1024
#define IPC_IDLE_MS 50 /* longest block in a receive: bounds the reaction to engine stop and hand-backs */

typedef struct IpcConf_ {
    char server[256];
    int threads;
    int batch;
    int connect_timeout_ms;
    int offline_time;  /* 1: packet timestamps drive the engine clock (as with -r); 0: wall clock */
    int checksum_mode; /* CHECKSUM_VALIDATION_ENABLE / _DISABLE / _AUTO */
} IpcConf;

typedef struct IpcThreadVars_ {
    ThreadVars *tv;
    TmSlot *slot;
    const IpcConf *conf;
    LiveDevice *livedev;
    pipc_client *client;
    pthread_t owner;
    struct pipc_packet *batch;
    uint64_t pkts, bytes, released, handed_back, drops_seen;
    uint64_t first_ns, last_ns; /* CLOCK_MONOTONIC of the first and the last packet received */
    uint32_t default_linktype;
    /* hand-back list: releases requested from threads other than the owner */
    SCMutex hb_lock;
    struct pipc_packet *hb;
    size_t hb_len, hb_cap;
    atomic_int hb_pending;
    /* counters */
    uint16_t cnt_pkts, cnt_drops, cnt_ring_used;
} IpcThreadVars;

/* per-packet private data in p->plugin_v */
typedef struct IpcPacketVars_ {
    IpcThreadVars *ptv;
    struct pipc_packet pk; /* as received: what pipc_client_release() needs */
} IpcPacketVars;

_Static_assert(sizeof(IpcPacketVars) <= PLUGIN_VAR_SIZE, "per-packet data must fit Packet.plugin_v");

static char *g_args;                /* --capture-plugin-args */
static IpcConf *g_conf;             /* one server per Suricata instance */
static atomic_int g_threads_started;
static atomic_int g_threads_ended;  /* reached end of stream */
static atomic_int g_failed;         /* a server vanished / protocol error: exit status 1 */
static atomic_int g_time_ready;     /* offline time: thread timestamps initialised */
static atomic_int g_exit_hook;
static _Atomic uint64_t g_first_ns;  /* first packet of any thread (CLOCK_MONOTONIC) */
static _Atomic uint64_t g_packets;   /* packets of the threads that reached end of stream */

static uint64_t IpcNowNs(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- exit status ---- */

/* Suricata 7 always leaves main() with exit(EXIT_SUCCESS) after a shutdown. When the stream was cut
 * (server vanished), we let the normal shutdown run (so everything received is processed and logged) and turn
 * the final status into a failure here. */
static void IpcAtExit(void)
{
    if (atomic_load(&g_failed)) {
        fflush(NULL);
        _exit(EXIT_FAILURE);
    }
}

/* ---- configuration ---- */

static IpcConf *IpcLoadConfig(void)
{
    if (g_conf != NULL)
        return g_conf;
    IpcConf *c = SCCalloc(1, sizeof(*c));
    if (c == NULL)
        FatalError("out of memory");
    const char *server = NULL;
    if (g_args != NULL && *g_args)
        server = g_args;
    else if (ConfGet("packet-ipc.server", &server) != 1 || server == NULL || !*server)
        FatalError("no server name: give --capture-plugin-args=NAME or set packet-ipc.server");
    if (strlcpy(c->server, server, sizeof(c->server)) >= sizeof(c->server))
        FatalError("server name too long: %s", server);

    intmax_t v = 0;
    c->threads = 1;
    if (ConfGetInt("packet-ipc.threads", &v) == 1) {
        if (v < 1 || v > 1024)
            FatalError("packet-ipc.threads must be 1..1024, not %jd", v);
        c->threads = (int)v;
    }
    c->batch = IPC_DEFAULT_BATCH;
    if (ConfGetInt("packet-ipc.batch", &v) == 1) {
        if (v < 1 || v > IPC_MAX_BATCH)
            FatalError("packet-ipc.batch must be 1..%d, not %jd", IPC_MAX_BATCH, v);
        c->batch = (int)v;
    }
    c->connect_timeout_ms = 30000;
    if (ConfGetInt("packet-ipc.connect-timeout", &v) == 1) /* seconds */
        c->connect_timeout_ms = v < 0 ? -1 : (int)(v * 1000);

    const char *tm = NULL;
    c->offline_time = 1;
    if (ConfGet("packet-ipc.time-mode", &tm) == 1 && tm != NULL) {
        if (strcmp(tm, "offline") == 0 || strcmp(tm, "packet") == 0)
            c->offline_time = 1;
        else if (strcmp(tm, "live") == 0)
            c->offline_time = 0;
        else
            FatalError("packet-ipc.time-mode must be 'offline' or 'live', not '%s'", tm);
    }
    const char *cs = NULL;
    c->checksum_mode = CHECKSUM_VALIDATION_AUTO;
    if (ConfGet("packet-ipc.checksum-checks", &cs) == 1 && cs != NULL) {
        if (strcmp(cs, "auto") == 0)
            c->checksum_mode = CHECKSUM_VALIDATION_AUTO;
        else if (ConfValIsTrue(cs))
            c->checksum_mode = CHECKSUM_VALIDATION_ENABLE;
        else if (ConfValIsFalse(cs))
            c->checksum_mode = CHECKSUM_VALIDATION_DISABLE;
        else
            FatalError("packet-ipc.checksum-checks must be yes, no or auto, not '%s'", cs);
    }
    g_conf = c;
    return c;
}

/* ---- runmodes ---- */

/* Like RunModeSetLiveCaptureWorkersForDevice(), but creates exactly the configured number of threads: the
 * server waits for that many clients, so silently capping at the CPU count (as Suricata does for
 * interfaces) would leave it waiting. */
static int IpcCreateWorkers(int nthreads)
{
    IpcConf *conf = IpcLoadConfig();
    const char *short_name = LiveGetShortName(conf->server);
    uint16_t cpus = UtilCpuGetNumProcessorsOnline();
    if (nthreads > 1 && cpus > 0 && nthreads > cpus)
        SCLogInfo("%d receive threads on %u CPUs", nthreads, cpus);
    SCLogInfo("server %s: creating %d receive thread%s", conf->server, nthreads,
            nthreads > 1 ? "s" : "");
    for (int i = 0; i < nthreads; i++) {
        char tname[TM_THREAD_NAME_MAX];
        snprintf(tname, sizeof(tname), "W#%02d-%s", i + 1, short_name);
        size_t plen = strlen(conf->server) + 16;
        char *printable = SCMalloc(plen);
        if (printable == NULL)
            FatalError("out of memory");
        snprintf(printable, plen, "W#%02d-%s", i + 1, conf->server);
        ThreadVars *tv = TmThreadCreatePacketHandler(
                tname, "packetpool", "packetpool", "packetpool", "packetpool", "pktacqloop");
        if (tv == NULL)
            FatalError("TmThreadCreatePacketHandler failed");
        tv->printable_name = printable;
        static const char *const modules[] = { "ReceivePacketIpc", "DecodePacketIpc", "FlowWorker",
            "RespondReject" };
        for (size_t m = 0; m < sizeof(modules) / sizeof(modules[0]); m++) {
            TmModule *tm = TmModuleGetByName(modules[m]);
            if (tm == NULL)
                FatalError("no thread module %s", modules[m]);
            TmSlotSetFuncAppend(tv, tm, m == 0 ? (const void *)conf : NULL);
        }
        TmThreadSetCPU(tv, WORKER_CPU_SET);
        if (TmThreadSpawn(tv) != TM_ECODE_OK)
            FatalError("TmThreadSpawn failed");
    }
    return 0;
}

static void IpcSetTimeMode(const IpcConf *conf)
{
    if (conf->offline_time)
        TimeModeSetOffline();
    else
        TimeModeSetLive();
}

static int IpcRunModeSingle(void)
{
    IpcConf *conf = IpcLoadConfig();
    IpcSetTimeMode(conf);
    if (conf->threads != 1)
        SCLogWarning("runmode single: using 1 receive thread (packet-ipc.threads is %d)",
                conf->threads);
    return IpcCreateWorkers(1);
}

static int IpcRunModeWorkers(void)
{
    IpcConf *conf = IpcLoadConfig();
    IpcSetTimeMode(conf);
    return IpcCreateWorkers(conf->threads);
}

/* ---- release ---- */

static void IpcHandBackDrain(IpcThreadVars *ptv)
{
    if (atomic_load_explicit(&ptv->hb_pending, memory_order_acquire) == 0)
        return;
    SCMutexLock(&ptv->hb_lock);
    if (ptv->hb_len > 0) {
        pipc_client_release(ptv->client, ptv->hb, ptv->hb_len);
        ptv->released += ptv->hb_len;
        ptv->handed_back += ptv->hb_len;
        ptv->hb_len = 0;
    }
    atomic_store_explicit(&ptv->hb_pending, 0, memory_order_release);
    SCMutexUnlock(&ptv->hb_lock);
}

static void IpcReleasePacket(Packet *p)
{
    IpcPacketVars *pv = (IpcPacketVars *)p->plugin_v;
    IpcThreadVars *ptv = pv->ptv;
    if (ptv != NULL) {
        if (pthread_equal(pthread_self(), ptv->owner)) {
            pipc_client_release(ptv->client, &pv->pk, 1);
            ptv->released++;
        } else {
            SCMutexLock(&ptv->hb_lock);
            if (ptv->hb_len == ptv->hb_cap) {
                size_t cap = ptv->hb_cap ? ptv->hb_cap * 2 : 256;
                struct pipc_packet *n = SCRealloc(ptv->hb, cap * sizeof(*n));
                if (n == NULL)
                    FatalError("out of memory for a released packet");
                ptv->hb = n;
                ptv->hb_cap = cap;
            }
            ptv->hb[ptv->hb_len++] = pv->pk;
            atomic_store_explicit(&ptv->hb_pending, 1, memory_order_release);
            SCMutexUnlock(&ptv->hb_lock);
        }
        pv->ptv = NULL;
    }
    PacketFreeOrRelease(p);
}

/* ---- receive module ---- */

static TmEcode ReceiveIpcThreadInit(ThreadVars *tv, const void *initdata, void **data)
{
    const IpcConf *conf = initdata;
    if (conf == NULL)
        return TM_ECODE_FAILED;
    IpcThreadVars *ptv = SCCalloc(1, sizeof(*ptv));
    if (ptv == NULL)
        return TM_ECODE_FAILED;
    ptv->tv = tv;
    ptv->conf = conf;
    ptv->owner = pthread_self();
    SCMutexInit(&ptv->hb_lock, NULL);
    ptv->batch = SCCalloc((size_t)conf->batch, sizeof(struct pipc_packet));
    if (ptv->batch == NULL) {
        SCFree(ptv);
        return TM_ECODE_FAILED;
    }
    ptv->livedev = LiveGetDevice(conf->server);

    /* connect; the server may not be up yet: retry until connect-timeout */
    struct timespec t0, now;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int r;
    for (;;) {
        r = pipc_client_connect(conf->server, 1000, &ptv->client);
        if (r == 0)
            break;
        clock_gettime(CLOCK_MONOTONIC, &now);
        long waited = (now.tv_sec - t0.tv_sec) * 1000 + (now.tv_nsec - t0.tv_nsec) / 1000000;
        int retry = (r == -ENOENT || r == -ECONNREFUSED || r == -ETIMEDOUT || r == -EINTR);
        if (!retry || (conf->connect_timeout_ms >= 0 && waited >= conf->connect_timeout_ms) ||
                (suricata_ctl_flags & SURICATA_STOP)) {
            SCLogError("%s: cannot connect to server %s: %s (%s)", tv->name, conf->server,
                    pipc_strerror(r), pipc_last_error());
            SCFree(ptv->batch);
            SCFree(ptv);
            return TM_ECODE_FAILED;
        }
        usleep(100 * 1000);
    }
    ptv->default_linktype = pipc_client_linktype(ptv->client);
    ptv->cnt_pkts = StatsRegisterCounter("capture.kernel_packets", tv);
    ptv->cnt_drops = StatsRegisterCounter("capture.kernel_drops", tv);
    ptv->cnt_ring_used = StatsRegisterCounter("capture.packet_ipc.ring_used_bytes", tv);
    atomic_fetch_add(&g_threads_started, 1);
    SCLogInfo("%s: connected to server %s (linktype %u, snaplen %u)", tv->name, conf->server,
            ptv->default_linktype, pipc_client_snaplen(ptv->client));
    *data = ptv;
    return TM_ECODE_OK;
}

static void IpcSyncStats(IpcThreadVars *ptv)
{
    struct pipc_stats st;
    pipc_client_stats(ptv->client, &st);
    StatsSetUI64(ptv->tv, ptv->cnt_pkts, ptv->pkts);
    StatsSetUI64(ptv->tv, ptv->cnt_ring_used, st.ring_used_bytes);
    if (st.dropped_packets != ptv->drops_seen) {
        if (ptv->livedev != NULL)
            (void)SC_ATOMIC_ADD(ptv->livedev->drop, st.dropped_packets - ptv->drops_seen);
        ptv->drops_seen = st.dropped_packets;
    }
    StatsSetUI64(ptv->tv, ptv->cnt_drops, ptv->drops_seen);
}

static inline SCTime_t IpcTime(uint64_t ts_ns)
{
    struct timespec ts = { .tv_sec = (time_t)(ts_ns / 1000000000u), .tv_nsec = (long)(ts_ns % 1000000000u) };
    return SCTIME_FROM_TIMESPEC(&ts);
}

/* Offline time: the flow manager waits until every packet thread has a timestamp. Seed them all with the
 * first packet's time (as pcap-file does), or with the wall clock if nothing arrives for a second. */
static void IpcInitTime(uint64_t ts_ns)
{
    int expected = 0;
    if (atomic_compare_exchange_strong(&g_time_ready, &expected, 1)) {
        if (ts_ns == 0) {
            struct timespec now;
            clock_gettime(CLOCK_REALTIME, &now);
            ts_ns = (uint64_t)now.tv_sec * 1000000000u + (uint64_t)now.tv_nsec;
        }
        TmThreadsInitThreadsTimestamp(IpcTime(ts_ns));
    }
}

static void IpcIdle(IpcThreadVars *ptv, ThreadVars *tv)
{
    TmThreadsCaptureHandleTimeout(tv, NULL);
    StatsSyncCountersIfSignalled(tv);
}

static TmEcode ReceiveIpcLoop(ThreadVars *tv, void *data, void *slot)
{
    IpcThreadVars *ptv = data;
    const IpcConf *conf = ptv->conf;
    ptv->slot = ((TmSlot *)slot)->slot_next;
    int at_end = 0;
    struct timespec t0, now;
    clock_gettime(CLOCK_MONOTONIC, &t0);

    /* Suricata 7: the acquisition loop itself flags the thread running */
    TmThreadsSetFlag(tv, THV_RUNNING);

    for (;;) {
        if (suricata_ctl_flags & SURICATA_STOP)
            break;
        IpcHandBackDrain(ptv);

        if (at_end) {
            /* our stream ended; others still run: keep handling flow timeouts until the engine stops */
            IpcIdle(ptv, tv);
            usleep(IPC_IDLE_MS * 1000 / 5);
            continue;
        }

        PacketPoolWait();
        int n = pipc_client_receive(ptv->client, ptv->batch, (size_t)conf->batch, IPC_IDLE_MS);
        if (n > 0) {
            ptv->last_ns = IpcNowNs();
            if (ptv->first_ns == 0) {
                ptv->first_ns = ptv->last_ns;
                uint64_t zero = 0;
                atomic_compare_exchange_strong(&g_first_ns, &zero, ptv->first_ns);
            }
            if (conf->offline_time && !atomic_load_explicit(&g_time_ready, memory_order_relaxed))
                IpcInitTime(ptv->batch[0].ts_ns);
            for (int i = 0; i < n; i++) {
                const struct pipc_packet *pk = &ptv->batch[i];
                Packet *p = PacketGetFromQueueOrAlloc();
                if (unlikely(p == NULL)) {
                    /* cannot even allocate: give the rest back and let the engine breathe */
                    pipc_client_release(ptv->client, pk, (size_t)(n - i));
                    ptv->released += (uint64_t)(n - i);
                    SCLogWarning("%s: no packet available, %d packets lost", tv->name, n - i);
                    break;
                }
                PKT_SET_SRC(p, PKT_SRC_WIRE);
                p->ts = IpcTime(pk->ts_ns);
                p->datalink = (int)pk->linktype; /* always concrete on receive (0 is LINKTYPE_NULL) */
                p->livedev = ptv->livedev;
                IpcPacketVars *pv = (IpcPacketVars *)p->plugin_v;
                pv->ptv = ptv;
                pv->pk = *pk;
                p->ReleasePacket = IpcReleasePacket;
                ptv->pkts++;
                ptv->bytes += pk->caplen;
                if (unlikely(PacketSetData(p, pk->data, pk->caplen) == -1)) {
                    TmqhOutputPacketpool(tv, p); /* releases the ring slot through IpcReleasePacket */
                    continue;
                }
                if (conf->checksum_mode == CHECKSUM_VALIDATION_DISABLE) {
                    p->flags |= PKT_IGNORE_CHECKSUM;
                } else if (conf->checksum_mode == CHECKSUM_VALIDATION_AUTO && ptv->livedev != NULL) {
                    if (ChecksumAutoModeCheck(ptv->pkts, SC_ATOMIC_GET(ptv->livedev->pkts),
                                SC_ATOMIC_GET(ptv->livedev->invalid_checksums))) {
                        ((IpcConf *)conf)->checksum_mode = CHECKSUM_VALIDATION_DISABLE;
                        p->flags |= PKT_IGNORE_CHECKSUM;
                    }
                }
                if (ptv->livedev != NULL)
                    (void)SC_ATOMIC_ADD(ptv->livedev->pkts, 1);
                if (TmThreadsSlotProcessPkt(tv, ptv->slot, p) != TM_ECODE_OK) {
                    /* the packets not yet handed to the engine still hold ring space */
                    if (i + 1 < n) {
                        pipc_client_release(ptv->client, pk + 1, (size_t)(n - i - 1));
                        ptv->released += (uint64_t)(n - i - 1);
                    }
                    return TM_ECODE_FAILED;
                }
            }
            StatsSyncCountersIfSignalled(tv);
            if ((ptv->pkts & 0x3ff) < (uint64_t)n)
                IpcSyncStats(ptv);
            continue;
        }
        if (n == -ETIMEDOUT || n == -EINTR) {
            if (conf->offline_time && !atomic_load_explicit(&g_time_ready, memory_order_relaxed)) {
                clock_gettime(CLOCK_MONOTONIC, &now);
                if (now.tv_sec - t0.tv_sec >= 2)
                    IpcInitTime(0);
            }
            IpcSyncStats(ptv);
            IpcIdle(ptv, tv);
            continue;
        }
        IpcSyncStats(ptv);
        if (n == 0) {
            at_end = 1;
            uint64_t total = atomic_fetch_add(&g_packets, ptv->pkts) + ptv->pkts;
            int ended = atomic_fetch_add(&g_threads_ended, 1) + 1;
            int started = atomic_load(&g_threads_started);
            SCLogInfo("%s: end of stream after %" PRIu64 " packets (%d of %d receive threads done)",
                    tv->name, ptv->pkts, ended, started);
            if (ended >= started) {
                uint64_t first = atomic_load(&g_first_ns);
                double secs = first ? (double)(IpcNowNs() - first) / 1e9 : 0.0;
                SCLogNotice("server %s ended the stream on all %d receive threads: %" PRIu64
                            " packets in %.3f s from first packet to end of stream (%.0f packets/s); stopping",
                        conf->server, started, total, secs, secs > 0 ? (double)total / secs : 0.0);
                EngineStop();
                break;
            }
            continue;
        }
        /* -ECONNRESET: the server vanished without ending the stream (everything it committed was
         * processed); -EPROTO: corrupt ring. Either way the stream is cut: stop with an error. */
        atomic_store(&g_failed, 1);
        if (n == -ECONNRESET)
            SCLogError("server %s vanished without ending the stream, after %" PRIu64 " packets on %s (%s): "
                       "stopping the engine, exit status 1",
                    conf->server, ptv->pkts, tv->name, pipc_last_error());
        else
            SCLogError("server %s: receive failed on %s: %s (%s): stopping the engine",
                    conf->server, tv->name, pipc_strerror(n), pipc_last_error());
        EngineStop();
        break;
    }
    IpcHandBackDrain(ptv);
    IpcSyncStats(ptv);
    StatsSyncCounters(tv);
    return TM_ECODE_DONE;
}

static void ReceiveIpcExitStats(ThreadVars *tv, void *data)
{
    IpcThreadVars *ptv = data;
    IpcHandBackDrain(ptv);
    struct pipc_stats st;
    pipc_client_stats(ptv->client, &st);
    double secs = ptv->last_ns > ptv->first_ns ? (double)(ptv->last_ns - ptv->first_ns) / 1e9 : 0.0;
    SCLogInfo("%s: packets %" PRIu64 ", bytes %" PRIu64 ", released %" PRIu64
              " (%" PRIu64 " handed back from other threads), dropped by the server %" PRIu64
              "; %.3f s from first to last packet (%.0f packets/s)",
            tv->name, ptv->pkts, ptv->bytes, ptv->released, ptv->handed_back, st.dropped_packets, secs,
            secs > 0 ? (double)ptv->pkts / secs : 0.0);
}

static TmEcode ReceiveIpcThreadDeinit(ThreadVars *tv, void *data)
{
    IpcThreadVars *ptv = data;
    if (ptv == NULL)
        return TM_ECODE_OK;
    IpcHandBackDrain(ptv);
    if (ptv->released != ptv->pkts)
        SCLogDebug("packet-ipc: %s: %" PRIu64 " packets not released at exit", tv->name,
                ptv->pkts - ptv->released);
    pipc_client_close(ptv->client);
    ptv->client = NULL;
    SCMutexDestroy(&ptv->hb_lock);
    SCFree(ptv->hb);
    SCFree(ptv->batch);
    SCFree(ptv);
    return TM_ECODE_OK;
}

/* ---- decode module ---- */

static TmEcode DecodeIpc(ThreadVars *tv, Packet *p, void *data)
{
    DecodeThreadVars *dtv = data;
    BUG_ON(PKT_IS_PSEUDOPKT(p));
    DecodeUpdatePacketCounters(tv, dtv, p);
    const uint8_t *pkt = GET_PKT_DATA(p);
    uint32_t len = GET_PKT_LEN(p);
    switch (p->datalink) {
        case LINKTYPE_ETHERNET:
            DecodeEthernet(tv, dtv, p, pkt, len);
            break;
        case LINKTYPE_LINUX_SLL:
            DecodeSll(tv, dtv, p, pkt, len);
            break;
        case LINKTYPE_PPP:
            DecodePPP(tv, dtv, p, pkt, len);
            break;
        case LINKTYPE_RAW:  /* DLT_RAW (12 on Linux) */
        case LINKTYPE_RAW2: /* LINKTYPE_RAW (101) as stored in capture files */
        case 14:            /* DLT_RAW on OpenBSD */
        case LINKTYPE_IPV4:
        case LINKTYPE_IPV6:
        case LINKTYPE_GRE_OVER_IP:
            DecodeRaw(tv, dtv, p, pkt, len);
            break;
        case LINKTYPE_NULL:
            DecodeNull(tv, dtv, p, pkt, len);
            break;
        case LINKTYPE_CISCO_HDLC:
            DecodeCHDLC(tv, dtv, p, pkt, len);
            break;
        default: {
            /* count and warn once per thread, not once per packet */
            static __thread int warned = -1;
            if (warned != p->datalink) {
                SCLogWarning("%s: linktype %d not supported by Suricata's decoders: such packets "
                             "are counted (decoder.pkts) but not decoded",
                        tv->name, p->datalink);
                warned = p->datalink;
            }
            break;
        }
    }
    PacketDecodeFinalize(tv, dtv, p);
    return TM_ECODE_OK;
}

static TmEcode DecodeIpcThreadInit(ThreadVars *tv, const void *initdata, void **data)
{
    DecodeThreadVars *dtv = DecodeThreadVarsAlloc(tv);
    if (dtv == NULL)
        return TM_ECODE_FAILED;
    DecodeRegisterPerfCounters(dtv, tv);
    *data = dtv;
    return TM_ECODE_OK;
}

static TmEcode DecodeIpcThreadDeinit(ThreadVars *tv, void *data)
{
    if (data != NULL)
        DecodeThreadVarsFree(tv, data);
    return TM_ECODE_OK;
}

/* ---- registration ---- */

static void IpcCaptureInit(const char *args, int plugin_slot, int receive_slot, int decode_slot)
{
    if (pipc_abi_version() != PACKET_IPC_ABI_VERSION)
        FatalError("libpacketipc ABI %d, plugin built for ABI %d: rebuild the plugin",
                pipc_abi_version(), PACKET_IPC_ABI_VERSION);
    if (args != NULL && *args)
        g_args = SCStrdup(args);
    IpcConf *conf = IpcLoadConfig();
    LiveRegisterDeviceName(conf->server); /* becomes a live device at LiveDeviceFinalize() */
    if (!atomic_exchange(&g_exit_hook, 1))
        atexit(IpcAtExit);

    RunModeRegisterNewRunMode(plugin_slot, "workers",
            "packet-ipc: each thread is one client of the server and runs the whole pipeline",
            IpcRunModeWorkers, NULL);
    RunModeRegisterNewRunMode(plugin_slot, "single", "packet-ipc: one client, one thread",
            IpcRunModeSingle, NULL);

    TmModule *r = &tmm_modules[receive_slot];
    r->name = "ReceivePacketIpc";
    r->ThreadInit = ReceiveIpcThreadInit;
    r->PktAcqLoop = ReceiveIpcLoop;
    r->PktAcqBreakLoop = NULL;
    r->ThreadExitPrintStats = ReceiveIpcExitStats;
    r->ThreadDeinit = ReceiveIpcThreadDeinit;
    r->cap_flags = 0;
    r->flags = TM_FLAG_RECEIVE_TM;

    TmModule *d = &tmm_modules[decode_slot];
    d->name = "DecodePacketIpc";
    d->ThreadInit = DecodeIpcThreadInit;
    d->Func = DecodeIpc;
    d->ThreadDeinit = DecodeIpcThreadDeinit;
    d->cap_flags = 0;
    d->flags = TM_FLAG_DECODE_TM;
}

static const char *IpcGetDefaultMode(void)
{
    return "workers";
}

static SCCapturePlugin ipc_capture = {
    .name = PLUGIN_NAME,
    .Init = IpcCaptureInit,
    .GetDefaultMode = IpcGetDefaultMode,
};

static void IpcPluginInit(void)
{
    SCPluginRegisterCapture(&ipc_capture);
}

static SCPlugin ipc_plugin = {
    .name = PLUGIN_NAME,
    .author = "packet-ipc",
    .license = "GPLv2",
    .Init = IpcPluginInit,
};

__attribute__((visibility("default"))) SCPlugin *SCPluginRegister(void)
{
    return &ipc_plugin;
}
