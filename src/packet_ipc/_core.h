/*
 * _core.h - what the files of the CPython binding share: the module state, the objects' structs, and the
 * helpers one file defines for the others. The binding is a client of the public C ABI only
 * (include/packet_ipc.h, packet_ipc_ext.h). Files: _core.c (module, errors, timeouts), _packet.c (Packet and
 * reading packet-like objects), _batch.c (PacketBatch), _server.c (Server: endpoint and server-level sends),
 * _connection.c (Connection), _client.c (Client and the _Lease of received ring space), _fastpath.c (flow
 * hashing and the pcap scanner over batches).
 */
#ifndef PACKET_IPC_CORE_H
#define PACKET_IPC_CORE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "packet_ipc.h" /* the public C ABI: the binding uses nothing else */
#include "packet_ipc_ext.h"

typedef struct {
    PyObject *PacketIpcError, *ConnectError, *ConnectionLostError, *ProtocolError, *TimeoutError,
        *PermissionDeniedError, *ClosedError;
    PyObject *error_from_code; /* packet_ipc.errors.from_code */
    PyTypeObject *PacketType, *LeaseType, *BatchType, *ServerType, *ConnectionType, *ClientType, *PendingType,
        *RegionType, *ReservationType, *ColumnType;
    /* named tuples (struct sequences): fields by name, still indexable */
    PyTypeObject *StatsType, *ConnInfoType, *ClientInfoType;
} core_state;

typedef struct {
    PyObject_HEAD
    PyObject *client; /* ClientObject: keeps the mapping alive */
    uint64_t first, n;
    const uint8_t *data;
    Py_ssize_t nbytes;
} LeaseObject;

/* Threads: the C objects serialise their own calls. The binding counts the threads inside a call that released
 * the GIL (`users`, guarded by the GIL): close() from another thread (or a signal handler) while one is in use
 * shuts the C object down, which wakes that call (ClosedError), and the last user closes it. */
typedef struct {
    PyObject_HEAD
    pipc_client *c;
    int busy_poll;
    int users, close_pending;
    int disconnected; /* close() disconnected it (the mapping stays for the views still alive) */
    int scratch_busy; /* a call is filling or reading scratch; a concurrent call uses a buffer of its own */
    struct pipc_packet *scratch;
    size_t scratch_len;
} ClientObject;

typedef struct {
    PyObject_HEAD
    uint64_t ts;
    uint32_t orig_len, linktype, ifindex, caplen;
    PyObject *owner;   /* owned: the data object; view: the _Lease or a PacketBatch's data owner */
    const uint8_t *ptr; /* view: the bytes (NULL for owned) */
} PacketObject;

typedef struct {
    PyObject_HEAD
    Py_ssize_t n;
    PyObject *columns; /* bytes, 32 * n */
    uint64_t *ts, *offsets;
    uint32_t *caplen, *origlen, *linktype, *ifindex;
    PyObject *owner; /* the _Lease (received), a bytes (from_packets) or a memoryview holding an export of the
                        caller's buffer (from_buffers); packets taken from the batch hold it too. NULL once released */
    const uint8_t *data;
    Py_ssize_t nbytes;
} BatchObject;

typedef struct {
    PyObject_HEAD
    pipc_server *s;
    int distribution;
    int users, close_pending;
} ServerObject;

typedef struct {
    PyObject_HEAD
    pipc_conn *c;
    int overflow;
    int users, close_pending;
} ConnectionObject;


static inline core_state *state_of_type(PyTypeObject *tp) { return (core_state *)PyType_GetModuleState(tp); }

/* Longest single wait handed to C: a thread waiting on another thread's call (which holds the object while it
 * waits) comes back this often to look at signals. */
#define WAIT_SLICE_MS 1000

/* _core.c */
/* Raises the packet_ipc.errors class for a negative error code; `during` is "connect", "accept" or NULL. */
PyObject *raise_code(core_state *st, int code, const char *during);
/* The same, with `sent` (packets written by this call before the error) attached to the exception. */
PyObject *raise_with_sent(core_state *st, int code, Py_ssize_t sent);
/* None -> PIPC_LINKTYPE_DEFAULT (the server's); else a 16-bit LINKTYPE value. */
int linktype_from(PyObject *o, unsigned int *out);
/* seconds (float/int/None) -> ms for the C API (-1: forever); monotonic deadlines in ns and what is left */
int timeout_ms_from(PyObject *o, int *ms);
uint64_t mono_ns(void);
int remaining(uint64_t deadline);

/* _client.c */
extern PyType_Spec lease_spec;
extern PyType_Spec client_spec;
extern PyType_Spec pending_spec;

/* _packet.c */
PyObject *packet_new_view(core_state *st, PyObject *owner, const struct pipc_packet *p);
/* Descriptors of a sequence of packet-like objects; *views_out holds n buffers to release with release_views. */
struct pipc_packet *convert_packets(core_state *st, PyObject *seq, Py_ssize_t *n_out, Py_buffer **views_out);
void release_views(Py_buffer *views, Py_ssize_t n);
extern PyType_Spec packet_spec;

/* _batch.c */
BatchObject *batch_alloc(core_state *st, Py_ssize_t n);
int batch_live(BatchObject *b);
/* The descriptors of batch[idx[k]] (or batch[k]) for k < n, in `local` when it has room (256), else in memory
 * the caller frees with PyMem_Free; NULL with MemoryError. */
struct pipc_packet *batch_to_packets(BatchObject *b, const uint32_t *idx, Py_ssize_t n, struct pipc_packet *local);
/* An optional selection: None (*idx = NULL), or a buffer of uint32 packet positions (*idx, *n), held in view
 * (PyBuffer_Release it when *idx is set). -1 with an exception for a buffer that is not uint32 values. */
int indices_from(PyObject *sel, Py_buffer *view, const uint32_t **idx, Py_ssize_t *n);
extern PyType_Spec batch_spec;
extern PyType_Spec column_spec;
/* A one-dimensional buffer of *count items of *itemsize bytes (struct format `format`) at buf, exported by
 * `exporter` (referenced by the view); shape and strides point at *count and *itemsize, which must live as long
 * as the exporter. Used by the batch's columns and the reservation's regions. */
void fill_typed_buffer(Py_buffer *view, PyObject *exporter, int flags, void *buf, Py_ssize_t *count,
                       Py_ssize_t *itemsize, char *format, int readonly);

/* _server.c */
/* A thread leaves a Connection it used without the GIL; the last one out performs a close asked meanwhile. */
void conn_leave(ConnectionObject *self);
extern PyType_Spec server_spec;

/* _connection.c */
/* struct pipc_stats as the named tuple _core.StatsValues */
PyObject *stats_tuple(core_state *st, const struct pipc_stats *s);
/* a named tuple of `type` from n unsigned values */
PyObject *named_tuple(PyTypeObject *type, const unsigned long long *values, Py_ssize_t n);
extern PyType_Spec conn_spec;

/* _reserve.c: Connection.reserve and its Reservation */
extern PyType_Spec region_spec;
extern PyType_Spec reservation_spec;
PyObject *conn_reserve(ConnectionObject *self, PyObject *args);

/* _fastpath.c */
extern PyMethodDef core_fastpath_methods[];

#endif
