/*
 * _core.c - the thin CPython binding over csrc/ (the same code as libpacketipc.so).
 *
 * Types: Packet (owned data, or a view of a received packet in the ring), _Lease (one received region of a
 * ring: returns its space when the last object viewing it is gone, so no use-after-free is possible),
 * PacketBatch (columnar), Server, Connection, Client. Blocking calls release the GIL and retry on EINTR
 * after PyErr_CheckSignals(). Errors are the classes of packet_ipc.errors (OSError subclasses with errno).
 */
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

/* ------------------------------------------------------------------------------------------------------ */
/* module state and errors */

typedef struct {
    PyObject *PacketIpcError, *ConnectError, *ConnectionLostError, *ProtocolError, *TimeoutError,
        *PermissionDeniedError, *ClosedError;
    PyTypeObject *PacketType, *LeaseType, *BatchType, *ServerType, *ConnectionType, *ClientType;
} core_state;

static struct PyModuleDef core_module;

static core_state *state_of_type(PyTypeObject *tp) { return (core_state *)PyType_GetModuleState(tp); }

/* Raises the packet_ipc.errors class for a negative error code; `during` is "connect", "accept" or NULL. */
static PyObject *raise_code(core_state *st, int code, const char *during)
{
    int e = code < 0 ? -code : code;
    const char *detail = pipc_last_error();
    char msg[400];
    snprintf(msg, sizeof(msg), "%s", detail && *detail ? detail : pipc_strerror(code));
    PyObject *cls;
    switch (e) {
    case ETIMEDOUT: cls = st->TimeoutError; break;
    case EPROTO: cls = st->ProtocolError; break;
    case EACCES:
    case EPERM: cls = st->PermissionDeniedError; break;
    case EMSGSIZE:
    case ENAMETOOLONG:
    case EINVAL: PyErr_SetString(PyExc_ValueError, msg); return NULL;
    case ENOMEM: PyErr_SetString(PyExc_MemoryError, msg); return NULL; /* keeps the reason (e.g. no ring) */
    case EPIPE: cls = st->ClosedError; break;
    case ECONNRESET:
    case ENOENT:
    case ECONNREFUSED: cls = during ? st->ConnectError : st->ConnectionLostError; break;
    default: cls = (during && strcmp(during, "connect") == 0) ? st->ConnectError : st->PacketIpcError; break;
    }
    PyObject *args = Py_BuildValue("(is)", e, msg);
    if (args) {
        PyErr_SetObject(cls, args);
        Py_DECREF(args);
    }
    return NULL;
}

/* Raises the error for code with `sent` (packets written by this call before it) as an attribute. */
static PyObject *raise_with_sent(core_state *st, int code, Py_ssize_t sent)
{
    raise_code(st, code, NULL);
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    PyErr_NormalizeException(&et, &ev, &tb);
    PyObject *v = PyLong_FromSsize_t(sent);
    if (v && ev && PyObject_SetAttrString(ev, "sent", v) < 0)
        PyErr_Clear(); /* an exception type without a __dict__: the count is then just not attached */
    Py_XDECREF(v);
    PyErr_Restore(et, ev, tb);
    return NULL;
}

/* Longest single wait handed to C: a thread waiting on another thread's call (which holds the connection
 * while it waits for space) comes back this often to look at signals. */
#define WAIT_SLICE_MS 1000

/* seconds (float/int/None) -> ms for the C API; -1 = forever */
static int timeout_ms_from(PyObject *o, int *ms)
{
    if (o == NULL || o == Py_None) {
        *ms = -1;
        return 0;
    }
    double s = PyFloat_AsDouble(o);
    if (s == -1.0 && PyErr_Occurred())
        return -1;
    if (!(s >= 0)) {
        PyErr_SetString(PyExc_ValueError, "timeout must be None or a number of seconds >= 0");
        return -1;
    }
    double m = s * 1000.0;
    *ms = m > 2e9 ? 2000000000 : (int)(m + 0.999);
    return 0;
}

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static int remaining(uint64_t deadline)
{
    if (deadline == UINT64_MAX)
        return -1;
    uint64_t now = mono_ns();
    return now >= deadline ? 0 : (int)((deadline - now + 999999) / 1000000);
}

/* None -> PIPC_LINKTYPE_DEFAULT (the server's); else a 16-bit LINKTYPE value (0 is LINKTYPE_NULL). */
static int linktype_from(PyObject *o, unsigned int *out)
{
    if (o == NULL || o == Py_None) {
        *out = PIPC_LINKTYPE_DEFAULT;
        return 0;
    }
    long v = PyLong_AsLong(o);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (v < 0 || v > 0xffff) {
        PyErr_Format(PyExc_ValueError, "linktype must be None or a 16-bit LINKTYPE value, not %ld", v);
        return -1;
    }
    *out = (unsigned int)v;
    return 0;
}

/* ------------------------------------------------------------------------------------------------------ */
/* _Lease: one received region [first, first + n) of a client's ring */

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

static void lease_dealloc(LeaseObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    ClientObject *cl = (ClientObject *)self->client;
    if (cl && cl->c && self->n)
        pipc_client_release_range(cl->c, self->first, self->n);
    Py_XDECREF(self->client);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static int lease_getbuffer(LeaseObject *self, Py_buffer *view, int flags)
{
    return PyBuffer_FillInfo(view, (PyObject *)self, (void *)self->data, self->nbytes, 1, flags);
}

static PyType_Slot lease_slots[] = {
    {Py_tp_dealloc, lease_dealloc},
    {Py_bf_getbuffer, lease_getbuffer},
    {Py_tp_doc, "A received region of a ring; its space returns to the server when the last view is gone."},
    {0, NULL},
};
static PyType_Spec lease_spec = {"packet_ipc._core._Lease", sizeof(LeaseObject), 0,
                                 Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION, lease_slots};

/* ------------------------------------------------------------------------------------------------------ */
/* Packet */

typedef struct {
    PyObject_HEAD
    uint64_t ts;
    uint32_t orig_len, linktype, ifindex, caplen;
    PyObject *owner;   /* owned: the data object; view: the _Lease or a PacketBatch's data owner */
    const uint8_t *ptr; /* view: the bytes (NULL for owned) */
} PacketObject;

static PyObject *packet_new_view(core_state *st, PyObject *owner, const struct pipc_packet *p)
{
    PacketObject *o = PyObject_New(PacketObject, st->PacketType);
    if (!o)
        return NULL;
    o->ts = p->ts_ns;
    o->orig_len = p->origlen;
    o->linktype = p->linktype;
    o->ifindex = p->ifindex;
    o->caplen = p->caplen;
    o->ptr = p->data;
    Py_INCREF(owner);
    o->owner = owner;
    return (PyObject *)o;
}

static PyObject *packet_new(PyTypeObject *tp, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"timestamp", "data", "orig_len", "linktype", "ifindex", NULL};
    PyObject *ts, *data, *orig = Py_None, *lt = Py_None;
    unsigned int ifindex = 0, linktype;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|OOI:Packet", kwlist, &ts, &data, &orig, &lt, &ifindex) ||
        linktype_from(lt, &linktype) < 0)
        return NULL;
    if (!PyLong_Check(ts)) {
        PyErr_Format(PyExc_TypeError, "timestamp must be an int (ns since the Unix epoch), not %.100s",
                     Py_TYPE(ts)->tp_name);
        return NULL;
    }
    uint64_t t = PyLong_AsUnsignedLongLong(ts);
    if (t == (uint64_t)-1 && PyErr_Occurred()) {
        PyErr_SetString(PyExc_ValueError, "timestamp must be an int in [0, 2**64)");
        return NULL;
    }
    Py_buffer v;
    if (PyObject_GetBuffer(data, &v, PyBUF_SIMPLE) < 0) {
        PyErr_Format(PyExc_TypeError, "data must support the buffer protocol, not %.100s", Py_TYPE(data)->tp_name);
        return NULL;
    }
    Py_ssize_t len = v.len;
    PyBuffer_Release(&v);
    if (len > (Py_ssize_t)UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "data longer than 4 GiB");
        return NULL;
    }
    unsigned long ol = (unsigned long)len;
    if (orig != Py_None) {
        ol = PyLong_AsUnsignedLong(orig);
        if (ol == (unsigned long)-1 && PyErr_Occurred())
            return NULL;
        if (ol > UINT32_MAX) {
            PyErr_SetString(PyExc_ValueError, "orig_len must fit in 32 bits");
            return NULL;
        }
    }
    PacketObject *o = (PacketObject *)tp->tp_alloc(tp, 0);
    if (!o)
        return NULL;
    o->ts = t;
    o->orig_len = (uint32_t)ol;
    o->caplen = (uint32_t)len;
    o->linktype = linktype;
    o->ifindex = ifindex;
    o->ptr = NULL;
    Py_INCREF(data);
    o->owner = data;
    return (PyObject *)o;
}

static void packet_dealloc(PacketObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    Py_XDECREF(self->owner);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static int packet_getbuffer(PacketObject *self, Py_buffer *view, int flags)
{
    if (!self->ptr) /* owned: the data object exports its own buffer */
        return PyObject_GetBuffer(self->owner, view, flags);
    return PyBuffer_FillInfo(view, (PyObject *)self, (void *)self->ptr, self->caplen, 1, flags);
}

static PyObject *packet_get_data(PacketObject *self, void *c)
{
    (void)c;
    if (!self->ptr) {
        Py_INCREF(self->owner);
        return self->owner;
    }
    return PyMemoryView_FromObject((PyObject *)self);
}

/* Plain fields as read-only attributes (ts is uint64: T_ULONGLONG; the others uint32: T_UINT). */
static PyMemberDef packet_members[] = {
    {"timestamp", T_ULONGLONG, offsetof(PacketObject, ts), READONLY, "Capture time, int nanoseconds since the Unix epoch."},
    {"orig_len", T_UINT, offsetof(PacketObject, orig_len), READONLY, "Length on the wire (>= caplen when the capture was truncated)."},
    {"caplen", T_UINT, offsetof(PacketObject, caplen), READONLY, "Number of captured bytes (len(data))."},
    {"ifindex", T_UINT, offsetof(PacketObject, ifindex), READONLY, "Capture interface index (0 if unknown)."},
    {NULL, 0, 0, 0, NULL},
};

static PyObject *packet_bytes(PacketObject *self, PyObject *unused)
{
    (void)unused;
    if (self->ptr)
        return PyBytes_FromStringAndSize((const char *)self->ptr, self->caplen);
    return PyBytes_FromObject(self->owner);
}

static PyObject *packet_reduce(PacketObject *self, PyObject *unused)
{
    (void)unused;
    PyObject *data = packet_bytes(self, NULL);
    if (!data)
        return NULL;
    PyObject *r = Py_BuildValue("O(KNkkk)", (PyObject *)Py_TYPE(self), (unsigned long long)self->ts, data,
                                (unsigned long)self->orig_len, (unsigned long)self->linktype,
                                (unsigned long)self->ifindex);
    return r;
}

static PyObject *packet_repr(PacketObject *self)
{
    return PyUnicode_FromFormat("Packet(timestamp=%llu, caplen=%u, orig_len=%u, linktype=%u)",
                                (unsigned long long)self->ts, self->caplen, self->orig_len, self->linktype);
}

static PyObject *packet_richcompare(PyObject *a, PyObject *b, int op)
{
    if ((op != Py_EQ && op != Py_NE) || Py_TYPE(b) != Py_TYPE(a))
        Py_RETURN_NOTIMPLEMENTED;
    PacketObject *x = (PacketObject *)a, *y = (PacketObject *)b;
    int eq = x->ts == y->ts && x->orig_len == y->orig_len && x->caplen == y->caplen;
    if (eq) {
        Py_buffer va, vb;
        if (PyObject_GetBuffer(a, &va, PyBUF_SIMPLE) < 0)
            return NULL;
        if (PyObject_GetBuffer(b, &vb, PyBUF_SIMPLE) < 0) {
            PyBuffer_Release(&va);
            return NULL;
        }
        eq = va.len == vb.len && memcmp(va.buf, vb.buf, (size_t)va.len) == 0;
        PyBuffer_Release(&va);
        PyBuffer_Release(&vb);
    }
    if (op == Py_NE)
        eq = !eq;
    return PyBool_FromLong(eq);
}

static PyObject *packet_get_linktype(PacketObject *self, void *c)
{
    (void)c;
    if (self->linktype == PIPC_LINKTYPE_DEFAULT)
        Py_RETURN_NONE;
    return PyLong_FromUnsignedLong(self->linktype);
}

static PyGetSetDef packet_getset[] = {
    {"linktype", (getter)packet_get_linktype, NULL,
     "pcap LINKTYPE_* of the packet; None on a packet built without one (it is sent with the server's).", NULL},
    {"data", (getter)packet_get_data, NULL,
     "The captured bytes. For a received packet a read-only memoryview into the shared ring (no copy), valid "
     "as long as this packet or any view of it is alive.",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef packet_methods[] = {
    {"tobytes", (PyCFunction)packet_bytes, METH_NOARGS, "A copy of the data as bytes (outlives the ring space)."},
    {"__reduce__", (PyCFunction)packet_reduce, METH_NOARGS, "Pickles as an owned packet (the data is copied)."},
    {NULL, NULL, 0, NULL},
};

static Py_ssize_t packet_len(PacketObject *self) { return self->caplen; }

static PyType_Slot packet_slots[] = {
    {Py_tp_new, packet_new},
    {Py_tp_dealloc, packet_dealloc},
    {Py_tp_getset, packet_getset},
    {Py_tp_members, packet_members},
    {Py_tp_methods, packet_methods},
    {Py_tp_repr, packet_repr},
    {Py_tp_richcompare, packet_richcompare},
    {Py_bf_getbuffer, packet_getbuffer},
    {Py_sq_length, packet_len},
    {Py_tp_doc, "Packet(timestamp, data, orig_len=None, linktype=None, ifindex=0)\n\n"
                "One packet: timestamp (int ns since the Unix epoch), data (any buffer), orig_len (wire length, "
                "default len(data)). Received packets view the shared ring without a copy; the ring space is "
                "returned when the last packet (and view) of its batch is gone."},
    {0, NULL},
};
static PyType_Spec packet_spec = {"packet_ipc.Packet", sizeof(PacketObject), 0,
                                  Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE, packet_slots};

/* ------------------------------------------------------------------------------------------------------ */
/* PacketBatch: columns in one bytes object (ts u64 | offsets u64 | caplen u32 | origlen u32 | linktype u32 |
 * ifindex u32, each n long); data viewed through `owner` (a _Lease, a bytes, or a memoryview export). */

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

static BatchObject *batch_alloc(core_state *st, Py_ssize_t n)
{
    BatchObject *b = (BatchObject *)st->BatchType->tp_alloc(st->BatchType, 0);
    if (!b)
        return NULL;
    b->n = n;
    b->columns = PyBytes_FromStringAndSize(NULL, n ? 32 * n : 0);
    if (!b->columns) {
        Py_DECREF(b);
        return NULL;
    }
    char *base = PyBytes_AS_STRING(b->columns);
    b->ts = (uint64_t *)base;
    b->offsets = (uint64_t *)(base + 8 * n);
    b->caplen = (uint32_t *)(base + 16 * n);
    b->origlen = (uint32_t *)(base + 20 * n);
    b->linktype = (uint32_t *)(base + 24 * n);
    b->ifindex = (uint32_t *)(base + 28 * n);
    return b;
}

static void batch_drop(BatchObject *b)
{
    Py_CLEAR(b->owner);
    b->data = NULL;
}

static void batch_dealloc(BatchObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    batch_drop(self);
    Py_XDECREF(self->columns);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static int batch_live(BatchObject *b)
{
    if (!b->owner) {
        PyErr_SetString(PyExc_ValueError, "this PacketBatch was released");
        return 0;
    }
    return 1;
}

static Py_ssize_t batch_len(BatchObject *self) { return self->n; }

static PyObject *batch_item(BatchObject *self, Py_ssize_t i)
{
    if (!batch_live(self))
        return NULL;
    if (i < 0 || i >= self->n) {
        PyErr_SetString(PyExc_IndexError, "PacketBatch index out of range");
        return NULL;
    }
    struct pipc_packet p = {self->ts[i], self->caplen[i], self->origlen[i], self->linktype[i], self->ifindex[i],
                            self->data + self->offsets[i], 0};
    /* The packet keeps the batch's data owner (lease or data object) alive, not the batch itself. */
    return packet_new_view(state_of_type(Py_TYPE(self)), self->owner, &p);
}

static PyObject *column_view(BatchObject *self, Py_ssize_t offset, Py_ssize_t itemsize, const char *fmt)
{
    if (!batch_live(self))
        return NULL;
    PyObject *mv = PyMemoryView_FromObject(self->columns);
    if (!mv)
        return NULL;
    PyObject *slice = PySequence_GetSlice(mv, offset * self->n, (offset + itemsize) * self->n);
    Py_DECREF(mv);
    if (!slice)
        return NULL;
    PyObject *cast = PyObject_CallMethod(slice, "cast", "s", fmt);
    Py_DECREF(slice);
    return cast;
}

static PyObject *batch_get_ts(BatchObject *s, void *c) { (void)c; return column_view(s, 0, 8, "Q"); }
static PyObject *batch_get_offsets(BatchObject *s, void *c) { (void)c; return column_view(s, 8, 8, "Q"); }
static PyObject *batch_get_caplens(BatchObject *s, void *c) { (void)c; return column_view(s, 16, 4, "I"); }
static PyObject *batch_get_origlens(BatchObject *s, void *c) { (void)c; return column_view(s, 20, 4, "I"); }
static PyObject *batch_get_linktypes(BatchObject *s, void *c) { (void)c; return column_view(s, 24, 4, "I"); }
static PyObject *batch_get_ifindexes(BatchObject *s, void *c) { (void)c; return column_view(s, 28, 4, "I"); }

static PyObject *batch_get_data(BatchObject *self, void *c)
{
    (void)c;
    if (!batch_live(self))
        return NULL;
    return PyMemoryView_FromObject(self->owner);
}

static PyObject *batch_get_nbytes(BatchObject *self, void *c)
{
    (void)c;
    return PyLong_FromSsize_t(self->nbytes);
}

static PyObject *batch_get_released(BatchObject *self, void *c)
{
    (void)c;
    return PyBool_FromLong(self->owner == NULL);
}

static PyObject *batch_release(BatchObject *self, PyObject *unused)
{
    (void)unused;
    batch_drop(self);
    Py_RETURN_NONE;
}

static PyObject *batch_enter(PyObject *self, PyObject *unused)
{
    (void)unused;
    Py_INCREF(self);
    return self;
}

static PyObject *batch_exit(BatchObject *self, PyObject *args)
{
    (void)args;
    batch_drop(self);
    Py_RETURN_FALSE;
}

/* Fills a u64 or u32 column from any buffer of n items (itemsize 8/4, or 4 widened to 8 for timestamps). */
static int fill_column(PyObject *src, Py_ssize_t n, int width, void *dst, const char *what)
{
    Py_buffer v;
    if (PyObject_GetBuffer(src, &v, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0) {
        PyErr_Clear();
        if (PyObject_GetBuffer(src, &v, PyBUF_C_CONTIGUOUS) < 0)
            return -1;
    }
    int ok = 0;
    if (v.itemsize == 1 && v.len == n * width) /* raw bytes, native order */
        memcpy(dst, v.buf, (size_t)v.len), ok = 1;
    else if (v.itemsize == width && v.len == n * width)
        memcpy(dst, v.buf, (size_t)v.len), ok = 1;
    else if (width == 8 && v.itemsize == 4 && v.len == n * 4) {
        for (Py_ssize_t i = 0; i < n; i++)
            ((uint64_t *)dst)[i] = ((uint32_t *)v.buf)[i];
        ok = 1;
    }
    PyBuffer_Release(&v);
    if (!ok)
        PyErr_Format(PyExc_ValueError, "%s must hold %zd unsigned %d-byte integers", what, n, width * 8);
    return ok ? 0 : -1;
}

static PyObject *batch_from_buffers(PyObject *cls, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"timestamps", "lengths", "data", "origlens", "linktype", "linktypes", "ifindexes", NULL};
    PyObject *ts, *lens, *data, *origlens = Py_None, *lt = Py_None, *lts = Py_None, *ifs = Py_None;
    unsigned int linktype;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|OO$OO:from_buffers", kwlist, &ts, &lens, &data, &origlens, &lt,
                                     &lts, &ifs) ||
        linktype_from(lt, &linktype) < 0)
        return NULL;
    core_state *st = state_of_type((PyTypeObject *)cls);
    Py_buffer lv;
    if (PyObject_GetBuffer(lens, &lv, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
        return NULL;
    Py_ssize_t itemsize = lv.itemsize == 1 ? 4 : lv.itemsize;
    Py_ssize_t n = itemsize ? lv.len / itemsize : 0;
    PyBuffer_Release(&lv);
    BatchObject *b = batch_alloc(st, n);
    if (!b)
        return NULL;
    if (fill_column(lens, n, 4, b->caplen, "lengths") < 0 || fill_column(ts, n, 8, b->ts, "timestamps") < 0)
        goto fail;
    if (origlens != Py_None) {
        if (fill_column(origlens, n, 4, b->origlen, "origlens") < 0)
            goto fail;
    } else
        memcpy(b->origlen, b->caplen, (size_t)n * 4);
    /* A memoryview holds an export of the caller's buffer for as long as it (and so any packet) lives. */
    PyObject *mv = PyMemoryView_FromObject(data);
    if (!mv)
        goto fail;
    b->owner = mv;
    if (!PyBuffer_IsContiguous(PyMemoryView_GET_BUFFER(mv), 'C')) {
        PyErr_SetString(PyExc_ValueError, "data must be a contiguous buffer");
        goto fail;
    }
    if (PyMemoryView_GET_BUFFER(mv)->itemsize != 1 || PyMemoryView_GET_BUFFER(mv)->ndim != 1) {
        PyObject *flat = PyObject_CallMethod(mv, "cast", "s", "B");
        if (!flat)
            goto fail;
        Py_SETREF(b->owner, flat);
    }
    Py_buffer *dv = PyMemoryView_GET_BUFFER(b->owner);
    uint64_t off = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        b->offsets[i] = off;
        b->linktype[i] = linktype;
        b->ifindex[i] = 0;
        off += b->caplen[i];
    }
    if (off != (uint64_t)dv->len) {
        PyErr_Format(PyExc_ValueError, "lengths add up to %llu bytes but data has %zd", (unsigned long long)off,
                     dv->len);
        goto fail;
    }
    if ((lts != Py_None && fill_column(lts, n, 4, b->linktype, "linktypes") < 0) ||
        (ifs != Py_None && fill_column(ifs, n, 4, b->ifindex, "ifindexes") < 0))
        goto fail;
    b->data = dv->buf;
    b->nbytes = dv->len;
    return (PyObject *)b;
fail:
    Py_DECREF(b);
    return NULL;
}

/* Which optional attributes objects of one type have (bit 0 orig_len, 1 linktype, 2 ifindex). */
struct attr_cache {
    PyTypeObject *type;
    int has;
};

/* Reads one AsIpcPacket-like object. On success *view holds its data (release it). */
static int read_packet(core_state *st, PyObject *item, Py_ssize_t i, struct pipc_packet *p, Py_buffer *view,
                       struct attr_cache *cache)
{
    if (Py_TYPE(item) == st->PacketType) {
        PacketObject *po = (PacketObject *)item;
        if (PyObject_GetBuffer(item, view, PyBUF_SIMPLE) < 0)
            return -1;
        p->ts_ns = po->ts;
        p->origlen = po->orig_len;
        p->linktype = po->linktype;
        p->ifindex = po->ifindex;
    } else {
        PyObject *ts = PyObject_GetAttrString(item, "timestamp");
        if (!ts) {
            PyErr_Format(PyExc_TypeError,
                         "packet %zd (%.100s) has no .timestamp: packets need .timestamp (int ns) and .data (buffer)",
                         i, Py_TYPE(item)->tp_name);
            return -1;
        }
        if (!PyLong_Check(ts)) {
            PyErr_Format(PyExc_TypeError, "packet %zd: .timestamp must be an int of nanoseconds, not %.100s", i,
                         Py_TYPE(ts)->tp_name);
            Py_DECREF(ts);
            return -1;
        }
        p->ts_ns = PyLong_AsUnsignedLongLong(ts);
        Py_DECREF(ts);
        if (p->ts_ns == (uint64_t)-1 && PyErr_Occurred()) {
            PyErr_Format(PyExc_ValueError, "packet %zd: .timestamp must be in [0, 2**64)", i);
            return -1;
        }
        PyObject *data = PyObject_GetAttrString(item, "data");
        if (!data) {
            PyErr_Format(PyExc_TypeError, "packet %zd (%.100s) has no .data", i, Py_TYPE(item)->tp_name);
            return -1;
        }
        int r = PyObject_GetBuffer(data, view, PyBUF_SIMPLE);
        Py_DECREF(data);
        if (r < 0) {
            PyErr_Format(PyExc_TypeError, "packet %zd: .data must support the buffer protocol", i);
            return -1;
        }
        p->origlen = (uint32_t)view->len;
        p->linktype = PIPC_LINKTYPE_DEFAULT;
        p->ifindex = 0;
        /* Optional attributes. A failed lookup costs an exception, so for a type without an instance __dict__
         * (slots, dataclass(slots=True), C types: its attributes can only come from the type) which ones it
         * has is learnt on its first object. Objects with a __dict__ may differ one from the next: every
         * object is asked. */
        if (cache->type != Py_TYPE(item) || Py_TYPE(item)->tp_dictoffset != 0) {
            cache->type = Py_TYPE(item);
            cache->has = 7;
        }
        static const char *names[3] = {"orig_len", "linktype", "ifindex"};
        for (int a = 0; a < 3; a++) {
            if (!(cache->has & (1 << a)))
                continue;
            PyObject *o = PyObject_GetAttrString(item, names[a]);
            if (!o) {
                if (!PyErr_ExceptionMatches(PyExc_AttributeError)) {
                    PyBuffer_Release(view);
                    return -1;
                }
                PyErr_Clear();
                cache->has &= ~(1 << a);
                continue;
            }
            if (o != Py_None) {
                unsigned long v = PyLong_AsUnsignedLong(o);
                if ((v == (unsigned long)-1 && PyErr_Occurred()) || v > (a == 1 ? 0xffffUL : UINT32_MAX)) {
                    PyErr_Clear();
                    PyErr_Format(PyExc_ValueError, "packet %zd: .%s must be an int in [0, %s)", i, names[a],
                                 a == 1 ? "2**16" : "2**32");
                    Py_DECREF(o);
                    PyBuffer_Release(view);
                    return -1;
                }
                if (a == 0)
                    p->origlen = (uint32_t)v;
                else if (a == 1)
                    p->linktype = (uint32_t)v;
                else
                    p->ifindex = (uint32_t)v;
            }
            Py_DECREF(o);
        }
    }
    if (view->len > (Py_ssize_t)UINT32_MAX) {
        PyBuffer_Release(view);
        PyErr_Format(PyExc_ValueError, "packet %zd is larger than 4 GiB", i);
        return -1;
    }
    p->caplen = (uint32_t)view->len;
    p->data = view->buf;
    p->id = 0;
    return 0;
}

/* Converts a sequence of packets; on success *views holds n buffers to release with release_views. */
static struct pipc_packet *convert_packets(core_state *st, PyObject *seq, Py_ssize_t *n_out, Py_buffer **views_out)
{
    PyObject *fast = PySequence_Fast(seq, "packets must be a sequence (list or tuple) of packets, or None");
    if (!fast)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    struct pipc_packet *pk = PyMem_Malloc((size_t)(n ? n : 1) * sizeof(*pk));
    Py_buffer *views = PyMem_Malloc((size_t)(n ? n : 1) * sizeof(*views));
    if (!pk || !views) {
        PyMem_Free(pk);
        PyMem_Free(views);
        Py_DECREF(fast);
        PyErr_NoMemory();
        return NULL;
    }
    PyObject **items = PySequence_Fast_ITEMS(fast);
    struct attr_cache cache = {NULL, 0};
    for (Py_ssize_t i = 0; i < n; i++) {
        if (read_packet(st, items[i], i, &pk[i], &views[i], &cache) < 0) {
            for (Py_ssize_t k = 0; k < i; k++)
                PyBuffer_Release(&views[k]);
            PyMem_Free(pk);
            PyMem_Free(views);
            Py_DECREF(fast);
            return NULL;
        }
    }
    Py_DECREF(fast); /* each view holds a reference to its exporter */
    *n_out = n;
    *views_out = views;
    return pk;
}

static void release_views(Py_buffer *views, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++)
        PyBuffer_Release(&views[i]);
    PyMem_Free(views);
}

static PyObject *batch_from_packets(PyObject *cls, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"packets", "linktype", NULL};
    PyObject *seq, *lt = Py_None;
    unsigned int linktype;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|O:from_packets", kwlist, &seq, &lt) || linktype_from(lt, &linktype) < 0)
        return NULL;
    core_state *st = state_of_type((PyTypeObject *)cls);
    Py_ssize_t n;
    Py_buffer *views;
    struct pipc_packet *pk = convert_packets(st, seq, &n, &views);
    if (!pk)
        return NULL;
    BatchObject *b = batch_alloc(st, n);
    PyObject *blob = NULL;
    if (!b)
        goto done;
    uint64_t total = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        total += pk[i].caplen;
    blob = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    if (!blob) {
        Py_CLEAR(b);
        goto done;
    }
    uint8_t *dst = (uint8_t *)PyBytes_AS_STRING(blob);
    uint64_t off = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        memcpy(dst + off, pk[i].data, pk[i].caplen);
        b->ts[i] = pk[i].ts_ns;
        b->offsets[i] = off;
        b->caplen[i] = pk[i].caplen;
        b->origlen[i] = pk[i].origlen;
        b->linktype[i] = pk[i].linktype == PIPC_LINKTYPE_DEFAULT ? linktype : pk[i].linktype;
        b->ifindex[i] = pk[i].ifindex;
        off += pk[i].caplen;
    }
    b->data = dst;
    b->nbytes = (Py_ssize_t)total;
    b->owner = blob;
    blob = NULL;
done:
    Py_XDECREF(blob);
    release_views(views, n);
    PyMem_Free(pk);
    return (PyObject *)b;
}

static PyObject *batch_repr(BatchObject *self)
{
    return PyUnicode_FromFormat("<PacketBatch %zd packets, %zd bytes%s>", self->n, self->nbytes,
                                self->owner ? "" : ", released");
}

static PyGetSetDef batch_getset[] = {
    {"timestamps", (getter)batch_get_ts, NULL, "memoryview of uint64 ns timestamps ('Q').", NULL},
    {"offsets", (getter)batch_get_offsets, NULL, "memoryview of uint64 offsets of each packet in data ('Q').", NULL},
    {"caplens", (getter)batch_get_caplens, NULL, "memoryview of uint32 captured lengths ('I').", NULL},
    {"origlens", (getter)batch_get_origlens, NULL, "memoryview of uint32 wire lengths ('I').", NULL},
    {"linktypes", (getter)batch_get_linktypes, NULL, "memoryview of uint32 linktypes ('I').", NULL},
    {"ifindexes", (getter)batch_get_ifindexes, NULL, "memoryview of uint32 interface indexes ('I').", NULL},
    {"data", (getter)batch_get_data, NULL,
     "Read-only memoryview of every payload back to back (for a received batch: the shared ring, no copy).", NULL},
    {"nbytes", (getter)batch_get_nbytes, NULL, "Total payload bytes.", NULL},
    {"released", (getter)batch_get_released, NULL, "True once release() was called.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef batch_methods[] = {
    {"release", (PyCFunction)batch_release, METH_NOARGS,
     "Drops this batch's hold on its data. A received batch's ring space returns to the server as soon as no "
     "packet or view taken from it is alive (views keep it safe until then)."},
    {"__enter__", (PyCFunction)batch_enter, METH_NOARGS, "Returns self."},
    {"__exit__", (PyCFunction)batch_exit, METH_VARARGS, "Calls release()."},
    {"from_buffers", (PyCFunction)(void (*)(void))batch_from_buffers, METH_VARARGS | METH_KEYWORDS | METH_CLASS,
     "from_buffers(timestamps, lengths, data, origlens=None, linktype=None, *, linktypes=None, ifindexes=None) "
     "-> PacketBatch\n\n"
     "Builds a batch over existing buffers: timestamps (uint64 ns), lengths (uint32 caplens) and data (the "
     "payloads back to back). data is referenced, not copied (a bytearray cannot be resized meanwhile). "
     "linktypes / ifindexes (uint32 per packet) override linktype and the ifindex 0."},
    {"from_packets", (PyCFunction)(void (*)(void))batch_from_packets, METH_VARARGS | METH_KEYWORDS | METH_CLASS,
     "from_packets(packets, linktype=None) -> PacketBatch\n\nCopies packets (AsIpcPacket objects) into one batch; "
     "linktype is given to packets that carry none (None: the server's, at send time)."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot batch_slots[] = {
    {Py_tp_dealloc, batch_dealloc},
    {Py_tp_getset, batch_getset},
    {Py_tp_methods, batch_methods},
    {Py_tp_repr, batch_repr},
    {Py_sq_length, batch_len},
    {Py_sq_item, batch_item},
    {Py_tp_doc, "A columnar batch of packets: columns through the buffer protocol, payloads in one buffer.\n\n"
                "len(batch), batch[i] and iteration give Packet objects viewing the batch's data."},
    {0, NULL},
};
static PyType_Spec batch_spec = {"packet_ipc.PacketBatch", sizeof(BatchObject), 0,
                                 Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
                                 batch_slots};

/* The descriptors of batch[idx[k]] (or batch[k]) for k < n, in `local` when it has room (256), else in
 * memory the caller frees with PyMem_Free; NULL with MemoryError. */
static struct pipc_packet *batch_to_packets(BatchObject *b, const uint32_t *idx, Py_ssize_t n, struct pipc_packet *local)
{
    struct pipc_packet *pk = n <= 256 ? local : PyMem_Malloc((size_t)n * sizeof(*pk));
    if (!pk) {
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t k = 0; k < n; k++) {
        Py_ssize_t i = idx ? (Py_ssize_t)idx[k] : k;
        pk[k].ts_ns = b->ts[i];
        pk[k].caplen = b->caplen[i];
        pk[k].origlen = b->origlen[i];
        pk[k].linktype = b->linktype[i];
        pk[k].ifindex = b->ifindex[i];
        pk[k].data = b->data + b->offsets[i];
    }
    return pk;
}

/* ------------------------------------------------------------------------------------------------------ */
/* Server */

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

static void server_leave(ServerObject *self)
{
    if (--self->users == 0 && self->close_pending) {
        pipc_server_close(self->s);
        self->s = NULL;
    }
}

static void conn_leave(ConnectionObject *self)
{
    if (--self->users == 0 && self->close_pending) {
        pipc_conn_close(self->c);
        self->c = NULL;
    }
}

static PyObject *server_new(PyTypeObject *tp, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"name",     "capacity",      "max_packets",  "linktype", "snaplen",
                             "overflow", "allow_any_uid", "distribution", NULL};
    PyObject *name = Py_None;
    unsigned long long capacity = 0;
    unsigned int max_packets = 0, linktype = 1, snaplen = 262144;
    int overflow = 0, allow_any = 0, distribution = PIPC_DISTRIBUTION_FLOW;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|OKIIIipi:Server", kwlist, &name, &capacity, &max_packets, &linktype,
                                     &snaplen, &overflow, &allow_any, &distribution))
        return NULL;
    const char *cname = NULL;
    if (name != Py_None) {
        cname = PyUnicode_AsUTF8(name);
        if (!cname)
            return NULL;
    }
    struct pipc_server_options o = {sizeof(o), capacity, max_packets, linktype, snaplen, overflow, allow_any,
                                    distribution};
    pipc_server *s;
    int r = pipc_server_create(cname, &o, &s);
    if (r < 0)
        return raise_code(state_of_type(tp), r, "listen");
    ServerObject *self = (ServerObject *)tp->tp_alloc(tp, 0);
    if (!self) {
        pipc_server_close(s);
        return NULL;
    }
    self->s = s;
    self->distribution = distribution;
    return (PyObject *)self;
}

static void server_dealloc(ServerObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    pipc_server_close(self->s);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static int server_open(ServerObject *self)
{
    if (!self->s || self->close_pending) {
        core_state *st = state_of_type(Py_TYPE(self));
        PyErr_SetString(st->ClosedError, "server is closed");
        return 0;
    }
    return 1;
}

static PyObject *server_accept(ServerObject *self, PyObject *args)
{
    PyObject *t = Py_None;
    int ms;
    if (!PyArg_ParseTuple(args, "|O:accept", &t) || timeout_ms_from(t, &ms) < 0 || !server_open(self))
        return NULL;
    core_state *st = state_of_type(Py_TYPE(self));
    uint64_t deadline = ms < 0 ? UINT64_MAX : mono_ns() + (uint64_t)ms * 1000000ULL;
    pipc_conn *c;
    int r;
    self->users++;
    for (;;) {
        pipc_server *s = self->s;
        Py_BEGIN_ALLOW_THREADS
        r = pipc_server_accept(s, remaining(deadline), &c);
        Py_END_ALLOW_THREADS
        if (r != -EINTR)
            break;
        if (PyErr_CheckSignals() < 0) {
            server_leave(self);
            return NULL;
        }
    }
    server_leave(self);
    if (r == -EPIPE) {
        PyErr_SetString(st->ClosedError, "server was closed while accepting");
        return NULL;
    }
    if (r < 0)
        return raise_code(st, r, "accept");
    ConnectionObject *co = (ConnectionObject *)st->ConnectionType->tp_alloc(st->ConnectionType, 0);
    if (!co) {
        pipc_conn_close(c);
        return NULL;
    }
    struct pipc_conn_info info = {.struct_bytes = sizeof(info)};
    pipc_conn_info(c, &info);
    co->c = c;
    co->overflow = info.overflow;
    return (PyObject *)co;
}

static PyObject *server_allow_peer(ServerObject *self, PyObject *args)
{
    long long uid = -1, gid = -1;
    if (!PyArg_ParseTuple(args, "LL:allow_peer", &uid, &gid) || !server_open(self))
        return NULL;
    int r = pipc_server_allow_peer(self->s, uid, gid);
    if (r == -ENOSPC) {
        PyErr_SetString(PyExc_ValueError, "too many allowed uids/gids (at most 16 each)");
        return NULL;
    }
    if (r < 0) /* the socket's mode could not be opened to other uids */
        return PyErr_SetFromErrnoWithFilename(PyExc_OSError, pipc_server_name(self->s));
    Py_RETURN_NONE;
}

static PyObject *server_close(ServerObject *self, PyObject *unused)
{
    (void)unused;
    if (self->users > 0 && self->s) { /* another thread is in accept(): wake it; it closes on its way out */
        if (!self->close_pending)
            pipc_server_shutdown(self->s);
        self->close_pending = 1;
        Py_RETURN_NONE;
    }
    pipc_server_close(self->s);
    self->s = NULL;
    Py_RETURN_NONE;
}

static PyObject *server_fileno(ServerObject *self, PyObject *unused)
{
    (void)unused;
    if (!server_open(self))
        return NULL;
    return PyLong_FromLong(pipc_server_fd(self->s));
}

static PyObject *server_get_name(ServerObject *self, void *c)
{
    (void)c;
    if (!server_open(self))
        return NULL;
    return PyUnicode_FromString(pipc_server_name(self->s));
}

static PyObject *server_get_counters(ServerObject *self, void *c)
{
    (void)c;
    if (!server_open(self))
        return NULL;
    struct pipc_server_stats st = {.struct_bytes = sizeof(st)};
    pipc_server_stats(self->s, &st);
    return Py_BuildValue("(KK)", (unsigned long long)st.refused, (unsigned long long)st.handshake_failures);
}

static PyObject *server_get_closed(ServerObject *self, void *c)
{
    (void)c;
    return PyBool_FromLong(self->s == NULL || self->close_pending);
}

/* Distributes pk[0..n) (see pipc_server_send_some): releases the GIL, comes back for signals, and after an
 * early stop sends on exactly the packets not yet written, so none is sent twice or lost. */
static PyObject *server_send_packets(ServerObject *self, struct pipc_packet *pk, Py_ssize_t n, int ms)
{
    core_state *st = state_of_type(Py_TYPE(self));
    uint64_t deadline = ms < 0 ? UINT64_MAX : mono_ns() + (uint64_t)ms * 1000000ULL;
    uint32_t *unsent = PyMem_Malloc((size_t)(n ? n : 1) * sizeof(uint32_t));
    struct pipc_packet *rest = PyMem_Malloc((size_t)(n ? n : 1) * sizeof(*rest));
    if (!unsent || !rest) {
        PyMem_Free(unsent);
        PyMem_Free(rest);
        return PyErr_NoMemory();
    }
    PyObject *res = NULL;
    Py_ssize_t sent = 0, m = n;
    pipc_server *s = self->s;
    self->users++;
    for (;;) {
        long r;
        size_t n_unsent = 0;
        int left = remaining(deadline);
        /* broadcast cannot resume a part (the workers would hold different prefixes): no slices there */
        if (self->distribution != PIPC_DISTRIBUTION_BROADCAST && (left < 0 || left > WAIT_SLICE_MS))
            left = WAIT_SLICE_MS;
        Py_BEGIN_ALLOW_THREADS
        r = pipc_server_send_some(s, pk, (size_t)m, left, unsent, &n_unsent);
        Py_END_ALLOW_THREADS
        if (r > 0)
            sent += r;
        int early = r == -EINTR || r == -ETIMEDOUT || (r >= 0 && n_unsent > 0);
        if (!early && r < 0) {
            raise_with_sent(st, (int)r, sent);
            break;
        }
        if (!early) {
            res = PyLong_FromSsize_t(sent);
            break;
        }
        if (PyErr_CheckSignals() < 0)
            break;
        if ((r == -ETIMEDOUT || n_unsent) && remaining(deadline) == 0 && ms >= 0) {
            raise_with_sent(st, -ETIMEDOUT, sent);
            break;
        }
        if (r >= 0 || r == -ETIMEDOUT || r == -EINTR) { /* go on with what was not written */
            if (n_unsent == 0 && r < 0)
                continue; /* nothing was written: the same packets again */
            for (size_t k = 0; k < n_unsent; k++)
                rest[k] = pk[unsent[k]];
            memcpy(pk, rest, n_unsent * sizeof(*pk));
            m = (Py_ssize_t)n_unsent;
        }
    }
    server_leave(self);
    PyMem_Free(unsent);
    PyMem_Free(rest);
    return res;
}

static PyObject *server_send(ServerObject *self, PyObject *args)
{
    PyObject *seq, *t = Py_None;
    int ms;
    if (!PyArg_ParseTuple(args, "O|O:send", &seq, &t) || timeout_ms_from(t, &ms) < 0 || !server_open(self))
        return NULL;
    core_state *st = state_of_type(Py_TYPE(self));
    Py_ssize_t n;
    Py_buffer *views;
    struct pipc_packet *pk = convert_packets(st, seq, &n, &views);
    if (!pk)
        return NULL;
    PyObject *res = server_send_packets(self, pk, n, ms);
    release_views(views, n);
    PyMem_Free(pk);
    return res;
}

static PyObject *server_send_batch(ServerObject *self, PyObject *args)
{
    PyObject *bo, *t = Py_None;
    int ms;
    if (!PyArg_ParseTuple(args, "O|O:send_batch", &bo, &t) || timeout_ms_from(t, &ms) < 0 || !server_open(self))
        return NULL;
    core_state *st = state_of_type(Py_TYPE(self));
    if (Py_TYPE(bo) != st->BatchType) {
        PyErr_Format(PyExc_TypeError, "send_batch takes a PacketBatch, not %.100s", Py_TYPE(bo)->tp_name);
        return NULL;
    }
    BatchObject *b = (BatchObject *)bo;
    if (!batch_live(b))
        return NULL;
    struct pipc_packet local[256];
    struct pipc_packet *pk = batch_to_packets(b, NULL, b->n, local);
    if (!pk)
        return NULL;
    Py_INCREF(bo); /* the batch (and its data) stays alive while the GIL is released */
    PyObject *res = server_send_packets(self, pk, b->n, ms);
    Py_DECREF(bo);
    if (pk != local)
        PyMem_Free(pk);
    return res;
}

/* End of stream (or abort) for every live worker: waits for sends in progress, so without the GIL. */
static PyObject *server_finish(ServerObject *self, int abort)
{
    if (!server_open(self))
        return NULL;
    pipc_server *s = self->s;
    self->users++;
    Py_BEGIN_ALLOW_THREADS
    if (abort)
        pipc_server_abort(s);
    else
        pipc_server_end(s);
    Py_END_ALLOW_THREADS
    server_leave(self);
    Py_RETURN_NONE;
}

static PyObject *server_end(ServerObject *self, PyObject *unused)
{
    (void)unused;
    return server_finish(self, 0);
}

static PyObject *server_abort(ServerObject *self, PyObject *unused)
{
    (void)unused;
    return server_finish(self, 1);
}

static PyObject *server_check_workers(ServerObject *self, PyObject *unused)
{
    (void)unused;
    if (!server_open(self))
        return NULL;
    pipc_server *s = self->s;
    int dropped;
    self->users++;
    Py_BEGIN_ALLOW_THREADS
    dropped = pipc_server_check_workers(s);
    Py_END_ALLOW_THREADS
    server_leave(self);
    return PyLong_FromLong(dropped);
}

static PyObject *server_workers(ServerObject *self, PyObject *unused)
{
    (void)unused;
    if (!server_open(self))
        return NULL;
    uint32_t local[64], *idx = local;
    size_t cap = 64, n = pipc_server_workers(self->s, idx, cap);
    while (n > cap) { /* more workers than fit: a larger snapshot (the set may grow meanwhile) */
        if (idx != local)
            PyMem_Free(idx);
        cap = n + 16;
        if (!(idx = PyMem_Malloc(cap * sizeof(uint32_t))))
            return PyErr_NoMemory();
        n = pipc_server_workers(self->s, idx, cap);
    }
    PyObject *list = PyList_New((Py_ssize_t)n);
    for (size_t i = 0; list && i < n; i++) {
        PyObject *v = PyLong_FromUnsignedLong(idx[i]);
        if (!v)
            Py_CLEAR(list);
        else
            PyList_SET_ITEM(list, (Py_ssize_t)i, v);
    }
    if (idx != local)
        PyMem_Free(idx);
    return list;
}

static PyObject *server_stats(ServerObject *self, PyObject *unused)
{
    (void)unused;
    if (!server_open(self))
        return NULL;
    struct pipc_server_stats st = {.struct_bytes = sizeof(st)};
    pipc_server_stats(self->s, &st);
    return Py_BuildValue("{sKsKsKsKsK}", "workers", (unsigned long long)st.workers, "accepted",
                         (unsigned long long)st.accepted, "lost_packets", (unsigned long long)st.lost_packets,
                         "refused", (unsigned long long)st.refused, "handshake_failures",
                         (unsigned long long)st.handshake_failures);
}

static PyMethodDef server_methods[] = {
    {"accept", (PyCFunction)server_accept, METH_VARARGS, "accept(timeout=None) -> Connection"},
    {"send", (PyCFunction)server_send, METH_VARARGS, "send(packets, timeout=None) -> int: distributes"},
    {"send_batch", (PyCFunction)server_send_batch, METH_VARARGS, "send_batch(batch, timeout=None) -> int"},
    {"end", (PyCFunction)server_end, METH_NOARGS, "Ends every live worker's stream."},
    {"abort", (PyCFunction)server_abort, METH_NOARGS, "Aborts every live worker's stream."},
    {"check_workers", (PyCFunction)server_check_workers, METH_NOARGS, "Drops dead workers; returns how many."},
    {"workers", (PyCFunction)server_workers, METH_NOARGS, "Acceptance indices of the live workers."},
    {"stats", (PyCFunction)server_stats, METH_NOARGS, "Distribution counters (dict)."},
    {"allow_peer", (PyCFunction)server_allow_peer, METH_VARARGS, "allow_peer(uid, gid): -1 for none."},
    {"close", (PyCFunction)server_close, METH_NOARGS, "Closes the endpoint and removes its socket."},
    {"fileno", (PyCFunction)server_fileno, METH_NOARGS, "The listening socket (readable when a client waits)."},
    {NULL, NULL, 0, NULL},
};
static PyGetSetDef server_getset[] = {
    {"name", (getter)server_get_name, NULL, "Name clients connect to.", NULL},
    {"closed", (getter)server_get_closed, NULL, "True after close().", NULL},
    {"counters", (getter)server_get_counters, NULL, "(refused clients, failed handshakes).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};
static PyType_Slot server_slots[] = {
    {Py_tp_new, server_new},       {Py_tp_dealloc, server_dealloc}, {Py_tp_methods, server_methods},
    {Py_tp_getset, server_getset}, {Py_tp_doc, "Low-level server endpoint."}, {0, NULL},
};
static PyType_Spec server_spec = {"packet_ipc._core.Server", sizeof(ServerObject), 0, Py_TPFLAGS_DEFAULT, server_slots};

/* ------------------------------------------------------------------------------------------------------ */
/* Connection (server side of one client) */

static void conn_dealloc(ConnectionObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    pipc_conn_close(self->c);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static int conn_open(ConnectionObject *self)
{
    if (!self->c || self->close_pending) {
        PyErr_SetString(state_of_type(Py_TYPE(self))->ClosedError, "connection is closed");
        return 0;
    }
    return 1;
}

/* Sends pk[0..n) honouring the timeout; returns packets written or NULL with an exception whose `sent`
 * counts the packets this call wrote before the error (the caller can tell what reached the ring). */
static uint64_t conn_packets_sent(pipc_conn *c)
{
    struct pipc_stats st;
    pipc_conn_stats(c, &st);
    return st.packets;
}

static PyObject *conn_send_packets_using(ConnectionObject *self, struct pipc_packet *pk, Py_ssize_t n, int ms);

static PyObject *conn_send_packets(ConnectionObject *self, struct pipc_packet *pk, Py_ssize_t n, int ms)
{
    if (n == 0)
        return PyLong_FromLong(0);
    self->users++;
    PyObject *res = conn_send_packets_using(self, pk, n, ms);
    conn_leave(self);
    return res;
}

static PyObject *conn_send_packets_using(ConnectionObject *self, struct pipc_packet *pk, Py_ssize_t n, int ms)
{
    core_state *st = state_of_type(Py_TYPE(self));
    pipc_conn *c = self->c;
    uint64_t deadline = ms < 0 ? UINT64_MAX : mono_ns() + (uint64_t)ms * 1000000ULL;
    uint64_t before = conn_packets_sent(c);
    Py_ssize_t sent = 0;
    /* Fast path with the GIL held: nothing blocks while there is space (and no other thread is sending). */
    long r = pipc_conn_send(c, pk, (size_t)n, 0);
    for (;;) {
        if (r > 0)
            sent += r;
        else if (r == -EINTR || r == -ETIMEDOUT) {
            if (r == -ETIMEDOUT && remaining(deadline) == 0 && ms >= 0)
                return raise_with_sent(st, (int)r, sent);
            if (PyErr_CheckSignals() < 0)
                return NULL;
        } else if (r < 0) /* written packets are counted even when the call fails (client gone mid-batch) */
            return raise_with_sent(st, (int)r, (Py_ssize_t)(conn_packets_sent(c) - before));
        /* Under drop, one pass is the whole send (what did not fit was dropped); a timeout there only meant
         * another thread held the connection. */
        if (sent >= n || (self->overflow == PIPC_OVERFLOW_DROP && r >= 0))
            break;
        int left = remaining(deadline);
        if (left < 0 || left > WAIT_SLICE_MS)
            left = WAIT_SLICE_MS;
        Py_BEGIN_ALLOW_THREADS
        r = pipc_conn_send(c, pk + sent, (size_t)(n - sent), left);
        Py_END_ALLOW_THREADS
    }
    return PyLong_FromSsize_t(sent);
}

static PyObject *conn_send(ConnectionObject *self, PyObject *args)
{
    PyObject *seq, *t = Py_None;
    int ms;
    if (!PyArg_ParseTuple(args, "O|O:send", &seq, &t) || timeout_ms_from(t, &ms) < 0 || !conn_open(self))
        return NULL;
    core_state *st = state_of_type(Py_TYPE(self));
    if (seq == Py_None) { /* waits for sends in progress on other threads: without the GIL */
        int r;
        pipc_conn *c = self->c;
        self->users++;
        Py_BEGIN_ALLOW_THREADS
        r = pipc_conn_end(c);
        Py_END_ALLOW_THREADS
        conn_leave(self);
        if (r < 0)
            return raise_code(st, r, NULL);
        return PyLong_FromLong(0);
    }
    Py_ssize_t n;
    Py_buffer *views;
    struct pipc_packet *pk = convert_packets(st, seq, &n, &views);
    if (!pk)
        return NULL;
    PyObject *res = conn_send_packets(self, pk, n, ms);
    release_views(views, n);
    PyMem_Free(pk);
    return res;
}

static PyObject *conn_send_batch(ConnectionObject *self, PyObject *args)
{
    PyObject *bo, *t = Py_None, *sel = Py_None;
    int ms;
    if (!PyArg_ParseTuple(args, "O|OO:send_batch", &bo, &t, &sel) || timeout_ms_from(t, &ms) < 0 || !conn_open(self))
        return NULL;
    core_state *st = state_of_type(Py_TYPE(self));
    if (Py_TYPE(bo) != st->BatchType) {
        PyErr_Format(PyExc_TypeError, "send_batch takes a PacketBatch, not %.100s", Py_TYPE(bo)->tp_name);
        return NULL;
    }
    BatchObject *b = (BatchObject *)bo;
    if (!batch_live(b))
        return NULL;
    /* Optional selection: a buffer of uint32 packet indices (the share of one worker, in order). */
    Py_buffer sv = {0};
    const uint32_t *idx = NULL;
    Py_ssize_t n = b->n;
    if (sel != Py_None) {
        if (PyObject_GetBuffer(sel, &sv, PyBUF_SIMPLE) < 0)
            return NULL;
        if (sv.len % 4) {
            PyBuffer_Release(&sv);
            PyErr_SetString(PyExc_ValueError, "indices must be uint32 values");
            return NULL;
        }
        idx = sv.buf;
        n = sv.len / 4;
        for (Py_ssize_t k = 0; k < n; k++)
            if (idx[k] >= (uint64_t)b->n) { /* stops an index past the batch */
                PyBuffer_Release(&sv);
                PyErr_SetString(PyExc_IndexError, "index out of range of the batch");
                return NULL;
            }
    }
    struct pipc_packet local[256];
    struct pipc_packet *pk = batch_to_packets(b, idx, n, local);
    if (!pk) {
        if (idx)
            PyBuffer_Release(&sv);
        return NULL;
    }
    Py_INCREF(bo); /* the batch (and its data) stays alive while the GIL is released */
    PyObject *res = conn_send_packets(self, pk, n, ms);
    Py_DECREF(bo);
    if (idx)
        PyBuffer_Release(&sv);
    if (pk != local)
        PyMem_Free(pk);
    return res;
}

static PyObject *conn_close(ConnectionObject *self, PyObject *unused)
{
    (void)unused;
    if (self->users > 0 && self->c) { /* another thread is sending: wake it; it closes on its way out */
        if (!self->close_pending)
            pipc_conn_shutdown(self->c);
        self->close_pending = 1;
        Py_RETURN_NONE;
    }
    pipc_conn_close(self->c);
    self->c = NULL;
    Py_RETURN_NONE;
}

static PyObject *conn_abort(ConnectionObject *self, PyObject *unused)
{
    (void)unused;
    if (!conn_open(self))
        return NULL;
    int r;
    pipc_conn *c = self->c;
    self->users++;
    Py_BEGIN_ALLOW_THREADS
    r = pipc_conn_abort(c);
    Py_END_ALLOW_THREADS
    conn_leave(self);
    if (r < 0)
        return raise_code(state_of_type(Py_TYPE(self)), r, NULL);
    Py_RETURN_NONE;
}

static PyObject *conn_alive(ConnectionObject *self, PyObject *unused)
{
    (void)unused;
    return PyBool_FromLong(self->c && !self->close_pending && pipc_conn_alive(self->c));
}

static PyObject *stats_tuple(const struct pipc_stats *s)
{
    return Py_BuildValue("(KKKKKKKKK)", (unsigned long long)s->packets, (unsigned long long)s->bytes,
                         (unsigned long long)s->dropped_packets, (unsigned long long)s->dropped_bytes,
                         (unsigned long long)s->blocked_ns, (unsigned long long)s->ring_used_bytes,
                         (unsigned long long)s->ring_bytes, (unsigned long long)s->ring_used_slots,
                         (unsigned long long)s->ring_slots);
}

static PyObject *conn_stats(ConnectionObject *self, PyObject *unused)
{
    (void)unused;
    if (!conn_open(self))
        return NULL;
    struct pipc_stats s;
    pipc_conn_stats(self->c, &s);
    return stats_tuple(&s);
}

static PyObject *conn_fds(ConnectionObject *self, PyObject *unused)
{
    (void)unused;
    if (!conn_open(self))
        return NULL;
    return Py_BuildValue("(ii)", pipc_conn_fd(self->c), pipc_conn_socket(self->c));
}

static PyObject *conn_prepare_wait(ConnectionObject *self, PyObject *args)
{
    unsigned long long need = 0;
    if (!PyArg_ParseTuple(args, "|K", &need) || !conn_open(self))
        return NULL;
    return PyBool_FromLong(pipc_conn_prepare_wait(self->c, need));
}

static PyObject *conn_finish_wait(ConnectionObject *self, PyObject *unused)
{
    (void)unused;
    if (self->c)
        pipc_conn_finish_wait(self->c);
    Py_RETURN_NONE;
}

static PyObject *conn_get_info(ConnectionObject *self, void *c)
{
    (void)c;
    if (!conn_open(self))
        return NULL;
    struct pipc_conn_info info = {.struct_bytes = sizeof(info)};
    struct pipc_stats st;
    pipc_conn_info(self->c, &info);
    pipc_conn_stats(self->c, &st);
    return Py_BuildValue("(iiiKK)", (int)info.peer_pid, info.overflow, info.ended, (unsigned long long)st.ring_bytes,
                         (unsigned long long)st.ring_slots);
}

static PyObject *conn_get_closed(ConnectionObject *self, void *c)
{
    (void)c;
    return PyBool_FromLong(self->c == NULL || self->close_pending);
}

static PyMethodDef conn_methods[] = {
    {"send", (PyCFunction)conn_send, METH_VARARGS, "send(packets | None, timeout=None) -> int"},
    {"send_batch", (PyCFunction)conn_send_batch, METH_VARARGS, "send_batch(batch, timeout=None) -> int"},
    {"close", (PyCFunction)conn_close, METH_NOARGS, "Closes (the client sees end of stream after draining)."},
    {"alive", (PyCFunction)conn_alive, METH_NOARGS, "True while the client is connected."},
    {"abort", (PyCFunction)conn_abort, METH_NOARGS, "Aborts the stream: the client drains, then ConnectionLostError."},
    {"stats", (PyCFunction)conn_stats, METH_NOARGS, "Counters tuple."},
    {"fds", (PyCFunction)conn_fds, METH_NOARGS, "(space eventfd, control socket)."},
    {"prepare_wait", (PyCFunction)conn_prepare_wait, METH_VARARGS, "Arms the space wake-up; True: may sleep."},
    {"finish_wait", (PyCFunction)conn_finish_wait, METH_NOARGS, "Disarms the wake-up and drains the eventfd."},
    {NULL, NULL, 0, NULL},
};
static PyGetSetDef conn_getset[] = {
    {"info", (getter)conn_get_info, NULL, "(peer pid, overflow, ended, ring bytes, ring slots).", NULL},
    {"closed", (getter)conn_get_closed, NULL, "True after close().", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};
static PyType_Slot conn_slots[] = {
    {Py_tp_dealloc, conn_dealloc}, {Py_tp_methods, conn_methods}, {Py_tp_getset, conn_getset},
    {Py_tp_doc, "Low-level server side of one client."}, {0, NULL},
};
static PyType_Spec conn_spec = {"packet_ipc._core.Connection", sizeof(ConnectionObject), 0,
                                Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION, conn_slots};

/* ------------------------------------------------------------------------------------------------------ */
/* Client */

static PyObject *client_new(PyTypeObject *tp, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"name", "timeout", "busy_poll", "overflow", NULL};
    const char *name;
    PyObject *t = Py_None;
    int busy = 0, ms, overflow = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "s|Opi:Client", kwlist, &name, &t, &busy, &overflow) ||
        timeout_ms_from(t, &ms) < 0)
        return NULL;
    struct pipc_client_options o = {.struct_bytes = sizeof(o), .overflow = overflow, .busy_poll = busy};
    o.use_server_overflow = overflow != PIPC_OVERFLOW_BLOCK && overflow != PIPC_OVERFLOW_DROP;
    core_state *st = state_of_type(tp);
    uint64_t deadline = ms < 0 ? UINT64_MAX : mono_ns() + (uint64_t)ms * 1000000ULL;
    pipc_client *c;
    int r;
    for (;;) {
        Py_BEGIN_ALLOW_THREADS
        r = pipc_client_connect_with(name, remaining(deadline), &o, &c);
        Py_END_ALLOW_THREADS
        if (r != -EINTR)
            break;
        if (PyErr_CheckSignals() < 0)
            return NULL;
    }
    if (r < 0)
        return raise_code(st, r, "connect");
    ClientObject *self = (ClientObject *)tp->tp_alloc(tp, 0);
    if (!self) {
        pipc_client_close(c);
        return NULL;
    }
    self->c = c;
    self->busy_poll = busy;
    return (PyObject *)self;
}

static void client_dealloc(ClientObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    /* Leases hold references to us, so by now no view of the ring is alive: unmapping is safe. */
    pipc_client_close(self->c);
    PyMem_Free(self->scratch);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static void client_leave(ClientObject *self)
{
    if (--self->users == 0 && self->close_pending && self->c) {
        pipc_client_disconnect(self->c); /* the mapping stays until the last view is gone (dealloc) */
        self->disconnected = 1;
    }
}

/* Where one receive puts its descriptors: the client's scratch array, or (while another thread's receive is
 * using it) an array of this call's own. */
typedef struct {
    struct pipc_packet *pk;
    int own;
} take_buffer;

static void take_buffer_done(ClientObject *self, take_buffer *b)
{
    if (b->own)
        PyMem_Free(b->pk);
    else
        self->scratch_busy = 0;
}

/* Takes up to max packets into b. Returns n > 0, 0 at end of stream, or -1 with an exception; on n > 0 the
 * caller must call take_buffer_done once it has read them. */
static long client_take(ClientObject *self, Py_ssize_t max, int ms, take_buffer *b)
{
    core_state *st = state_of_type(Py_TYPE(self));
    if (max <= 0) {
        PyErr_SetString(PyExc_ValueError, "max_packets must be >= 1");
        return -1;
    }
    if (self->close_pending || self->disconnected) {
        PyErr_SetString(st->ClosedError, "client is closed");
        return -1;
    }
    if (!self->scratch_busy && (size_t)max > self->scratch_len) {
        struct pipc_packet *p = PyMem_Realloc(self->scratch, (size_t)max * sizeof(*p));
        if (!p) {
            PyErr_NoMemory();
            return -1;
        }
        self->scratch = p;
        self->scratch_len = (size_t)max;
    }
    b->own = self->scratch_busy;
    b->pk = b->own ? PyMem_Malloc((size_t)max * sizeof(struct pipc_packet)) : self->scratch;
    if (!b->pk) {
        PyErr_NoMemory();
        return -1;
    }
    if (!b->own)
        self->scratch_busy = 1;
    pipc_client *c = self->c;
    /* Fast path with the GIL held: no system call while packets are waiting. */
    size_t take_max = (size_t)max < INT_MAX ? (size_t)max : INT_MAX;
    long r = pipc_client_receive(c, b->pk, take_max, 0);
    if (r == -ETIMEDOUT && ms != 0) {
        uint64_t deadline = ms < 0 ? UINT64_MAX : mono_ns() + (uint64_t)ms * 1000000ULL;
        self->users++;
        for (;;) {
            int left = remaining(deadline);
            if (left < 0 || left > WAIT_SLICE_MS)
                left = WAIT_SLICE_MS; /* come back for signals even while another thread holds the client */
            Py_BEGIN_ALLOW_THREADS
            r = pipc_client_receive(c, b->pk, take_max, left);
            Py_END_ALLOW_THREADS
            if (r != -EINTR && !(r == -ETIMEDOUT && remaining(deadline) != 0))
                break;
            if (PyErr_CheckSignals() < 0) {
                client_leave(self);
                take_buffer_done(self, b);
                return -1;
            }
        }
        client_leave(self);
    }
    if (r <= 0)
        take_buffer_done(self, b);
    if (r == -EPIPE && self->close_pending) {
        PyErr_SetString(st->ClosedError, "client was closed while receiving");
        return -1;
    }
    if (r < 0) {
        raise_code(st, (int)r, NULL);
        return -1;
    }
    return r;
}

static LeaseObject *make_lease(core_state *st, ClientObject *self, const struct pipc_packet *pk, long n)
{
    LeaseObject *l = PyObject_New(LeaseObject, st->LeaseType);
    if (!l) {
        pipc_client_release_range(self->c, pk[0].id, (uint64_t)n);
        return NULL;
    }
    Py_INCREF(self);
    l->client = (PyObject *)self;
    l->first = pk[0].id;
    l->n = (uint64_t)n;
    l->data = pk[0].data;
    uint64_t total = 0;
    for (long i = 0; i < n; i++)
        total += pk[i].caplen;
    l->nbytes = (Py_ssize_t)total;
    return l;
}

static PyObject *client_receive_batch(ClientObject *self, PyObject *args)
{
    Py_ssize_t max = 1024;
    PyObject *t = Py_None;
    int ms;
    take_buffer tb;
    if (!PyArg_ParseTuple(args, "|nO:receive_batch", &max, &t) || timeout_ms_from(t, &ms) < 0)
        return NULL;
    long n = client_take(self, max, ms, &tb);
    if (n <= 0) {
        if (n == 0)
            Py_RETURN_NONE;
        return NULL;
    }
    core_state *st = state_of_type(Py_TYPE(self));
    const struct pipc_packet *pk = tb.pk;
    LeaseObject *l = make_lease(st, self, pk, n);
    BatchObject *b = l ? batch_alloc(st, n) : NULL;
    if (!b) {
        Py_XDECREF(l);
        take_buffer_done(self, &tb);
        return NULL;
    }
    const uint8_t *base = pk[0].data;
    for (long i = 0; i < n; i++) {
        const struct pipc_packet *p = &pk[i];
        b->ts[i] = p->ts_ns;
        b->offsets[i] = (uint64_t)(p->data - base); /* contiguous: validated positions + mirror mapping */
        b->caplen[i] = p->caplen;
        b->origlen[i] = p->origlen;
        b->linktype[i] = p->linktype;
        b->ifindex[i] = p->ifindex;
    }
    take_buffer_done(self, &tb);
    b->owner = (PyObject *)l;
    b->data = base;
    b->nbytes = l->nbytes;
    return (PyObject *)b;
}

static PyObject *client_receive_packets(ClientObject *self, PyObject *args)
{
    Py_ssize_t max = 1024;
    PyObject *t = Py_None;
    int ms;
    if (!PyArg_ParseTuple(args, "|nO:receive_packets", &max, &t) || timeout_ms_from(t, &ms) < 0)
        return NULL;
    take_buffer tb;
    long n = client_take(self, max, ms, &tb);
    if (n <= 0) {
        if (n == 0)
            Py_RETURN_NONE;
        return NULL;
    }
    core_state *st = state_of_type(Py_TYPE(self));
    LeaseObject *l = make_lease(st, self, tb.pk, n);
    PyObject *list = l ? PyList_New(n) : NULL;
    for (long i = 0; list && i < n; i++) {
        PyObject *p = packet_new_view(st, (PyObject *)l, &tb.pk[i]);
        if (!p)
            Py_CLEAR(list);
        else
            PyList_SET_ITEM(list, i, p);
    }
    take_buffer_done(self, &tb);
    Py_XDECREF(l); /* the packets hold it now */
    return list;
}

static PyObject *client_close(ClientObject *self, PyObject *unused)
{
    (void)unused;
    if (self->users > 0 && self->c) { /* another thread is receiving: wake it; it disconnects on its way out */
        if (!self->close_pending)
            pipc_client_shutdown(self->c);
        self->close_pending = 1;
        Py_RETURN_NONE;
    }
    /* Disconnect now; the mapping lives until the last received view is gone (then dealloc unmaps). */
    if (self->c) {
        pipc_client_disconnect(self->c);
        self->disconnected = 1;
    }
    Py_RETURN_NONE;
}

static PyObject *client_stats(ClientObject *self, PyObject *unused)
{
    (void)unused;
    struct pipc_stats s;
    pipc_client_stats(self->c, &s);
    return stats_tuple(&s);
}

static PyObject *client_fds(ClientObject *self, PyObject *unused)
{
    (void)unused;
    return Py_BuildValue("(iii)", pipc_client_fd(self->c), pipc_client_socket(self->c), pipc_client_ring_fd(self->c));
}

static PyObject *client_prepare_wait(ClientObject *self, PyObject *unused)
{
    (void)unused;
    return PyBool_FromLong(pipc_client_prepare_wait(self->c));
}

static PyObject *client_finish_wait(ClientObject *self, PyObject *unused)
{
    (void)unused;
    pipc_client_finish_wait(self->c);
    Py_RETURN_NONE;
}

static PyObject *client_get_info(ClientObject *self, void *c)
{
    (void)c;
    struct pipc_stats st;
    pipc_client_stats(self->c, &st);
    return Py_BuildValue("(IIKK)", pipc_client_linktype(self->c), pipc_client_snaplen(self->c),
                         (unsigned long long)st.ring_bytes, (unsigned long long)st.ring_slots);
}

static PyObject *client_get_closed(ClientObject *self, void *c)
{
    (void)c;
    return PyBool_FromLong(self->disconnected || self->close_pending);
}

static PyMethodDef client_methods[] = {
    {"receive_batch", (PyCFunction)client_receive_batch, METH_VARARGS, "receive_batch(max_packets, timeout)"},
    {"receive_packets", (PyCFunction)client_receive_packets, METH_VARARGS, "receive_packets(max_packets, timeout)"},
    {"close", (PyCFunction)client_close, METH_NOARGS, "Disconnects."},
    {"stats", (PyCFunction)client_stats, METH_NOARGS, "Counters tuple."},
    {"fds", (PyCFunction)client_fds, METH_NOARGS, "(data eventfd, control socket, ring memfd)."},
    {"prepare_wait", (PyCFunction)client_prepare_wait, METH_NOARGS, "Arms the data wake-up; True: may sleep."},
    {"finish_wait", (PyCFunction)client_finish_wait, METH_NOARGS, "Disarms the wake-up and drains the eventfd."},
    {NULL, NULL, 0, NULL},
};
static PyGetSetDef client_getset[] = {
    {"info", (getter)client_get_info, NULL, "(linktype, snaplen, ring bytes, ring slots).", NULL},
    {"closed", (getter)client_get_closed, NULL, "True after close().", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};
static PyType_Slot client_slots[] = {
    {Py_tp_new, client_new},       {Py_tp_dealloc, client_dealloc}, {Py_tp_methods, client_methods},
    {Py_tp_getset, client_getset}, {Py_tp_doc, "Low-level client."}, {0, NULL},
};
static PyType_Spec client_spec = {"packet_ipc._core.Client", sizeof(ClientObject), 0, Py_TPFLAGS_DEFAULT, client_slots};

/* ------------------------------------------------------------------------------------------------------ */
/* flow hashing */

static PyObject *core_flow_hash(PyObject *m, PyObject *args)
{
    (void)m;
    unsigned int linktype;
    Py_buffer v;
    if (!PyArg_ParseTuple(args, "Iy*:flow_hash", &linktype, &v))
        return NULL;
    uint32_t h = pipc_flow_hash(linktype, v.buf, (uint32_t)(v.len > UINT32_MAX ? UINT32_MAX : v.len));
    PyBuffer_Release(&v);
    return PyLong_FromUnsignedLong(h);
}

static PyObject *core_flow_key(PyObject *m, PyObject *args)
{
    (void)m;
    unsigned int linktype;
    Py_buffer v;
    if (!PyArg_ParseTuple(args, "Iy*:flow_key", &linktype, &v))
        return NULL;
    struct pipc_flow_key k;
    int r = pipc_flow_key_parse(linktype, v.buf, (uint32_t)(v.len > UINT32_MAX ? UINT32_MAX : v.len), &k);
    PyBuffer_Release(&v);
    if (r < 0)
        Py_RETURN_NONE;
    int alen = k.family == 4 ? 4 : 16;
    return Py_BuildValue("(iiy#Hy#Hi)", k.family, k.proto, (const char *)k.addr_a, (Py_ssize_t)alen, k.port_a,
                         (const char *)k.addr_b, (Py_ssize_t)alen, k.port_b, k.is_fragment);
}

/* Hashes every packet of a batch; returns a bytes object of uint32 hashes (one per packet). */
static PyObject *core_flow_hash_batch(PyObject *m, PyObject *args)
{
    PyObject *bo;
    unsigned int linktype = 0;
    if (!PyArg_ParseTuple(args, "O|I:flow_hash_batch", &bo, &linktype))
        return NULL;
    core_state *st = (core_state *)PyModule_GetState(m);
    if (Py_TYPE(bo) != st->BatchType) {
        PyErr_SetString(PyExc_TypeError, "flow_hash_batch takes a PacketBatch");
        return NULL;
    }
    BatchObject *b = (BatchObject *)bo;
    if (!batch_live(b))
        return NULL;
    PyObject *out = PyBytes_FromStringAndSize(NULL, b->n * 4);
    if (!out)
        return NULL;
    uint32_t *h = (uint32_t *)PyBytes_AS_STRING(out);
    for (Py_ssize_t i = 0; i < b->n; i++)
        h[i] = pipc_flow_hash(b->linktype[i] == PIPC_LINKTYPE_DEFAULT ? linktype : b->linktype[i], b->data + b->offsets[i],
                              b->caplen[i]);
    return out;
}

/* Splits a batch over workers by flow: bucket = flow_hash & (len(table) - 1), worker = table[bucket].
 * Returns a list of n_workers bytes objects, each the uint32 indices of that worker's packets in order. */
static PyObject *core_partition_by_flow(PyObject *m, PyObject *args)
{
    PyObject *bo;
    Py_buffer tv, fv = {0};
    Py_ssize_t workers;
    unsigned int linktype = 0;
    if (!PyArg_ParseTuple(args, "Oy*n|Iw*:partition_by_flow", &bo, &tv, &workers, &linktype, &fv))
        return NULL;
    /* Optional: a writable buffer holding the server's fragment table (see pipc_flow_hash_tracked). */
    struct pipc_frag_table *frags = NULL;
    if (fv.obj) {
        if (fv.len != (Py_ssize_t)sizeof(struct pipc_frag_table) || ((uintptr_t)fv.buf & 7)) {
            PyBuffer_Release(&fv);
            PyBuffer_Release(&tv);
            PyErr_Format(PyExc_ValueError, "fragment table must be an 8-byte aligned buffer of %zu bytes",
                         sizeof(struct pipc_frag_table));
            return NULL;
        }
        frags = fv.buf;
    }
    core_state *st = (core_state *)PyModule_GetState(m);
    PyObject *result = NULL;
    uint32_t *counts = NULL;
    uint16_t *owner = NULL;
    if (Py_TYPE(bo) != st->BatchType) {
        PyErr_SetString(PyExc_TypeError, "partition_by_flow takes a PacketBatch");
        goto out;
    }
    BatchObject *b = (BatchObject *)bo;
    Py_ssize_t buckets = tv.len / 2;
    if (!batch_live(b))
        goto out;
    if (workers < 1 || workers > 65535 || buckets < 1 || (buckets & (buckets - 1))) {
        PyErr_SetString(PyExc_ValueError, "need 1..65535 workers and a uint16 table of a power-of-two length");
        goto out;
    }
    const uint16_t *table = tv.buf;
    counts = PyMem_Calloc((size_t)workers, sizeof(uint32_t));
    owner = PyMem_Malloc((size_t)(b->n ? b->n : 1) * sizeof(uint16_t));
    if (!counts || !owner) {
        PyErr_NoMemory();
        goto out;
    }
    for (Py_ssize_t i = 0; i < b->n; i++) {
        uint32_t lt = b->linktype[i] == PIPC_LINKTYPE_DEFAULT ? linktype : b->linktype[i];
        uint32_t h = frags ? pipc_flow_hash_tracked(lt, b->data + b->offsets[i], b->caplen[i], frags)
                           : pipc_flow_hash(lt, b->data + b->offsets[i], b->caplen[i]);
        uint16_t w = table[h & (uint32_t)(buckets - 1)];
        if (w >= workers) { /* stops a table naming a worker that does not exist */
            PyErr_SetString(PyExc_ValueError, "table names a worker index >= workers");
            goto out;
        }
        owner[i] = w;
        counts[w]++;
    }
    result = PyList_New(workers);
    if (!result)
        goto out;
    for (Py_ssize_t w = 0; w < workers; w++) {
        PyObject *part = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)counts[w] * 4);
        if (!part) {
            Py_CLEAR(result);
            goto out;
        }
        PyList_SET_ITEM(result, w, part);
        counts[w] = 0;
    }
    for (Py_ssize_t i = 0; i < b->n; i++) {
        uint32_t *dst = (uint32_t *)PyBytes_AS_STRING(PyList_GET_ITEM(result, owner[i]));
        dst[counts[owner[i]]++] = (uint32_t)i;
    }
out:
    PyBuffer_Release(&tv);
    if (fv.obj)
        PyBuffer_Release(&fv);
    PyMem_Free(counts);
    PyMem_Free(owner);
    return result;
}

/* pcap_batch(buffer, pos, max_packets, big_endian, header_len, ns_per_tick, swapped_lengths, max_caplen,
 *            linktype) -> (PacketBatch | None, next_pos, status): classic pcap records straight into a batch
 * (columns, and the payloads copied back to back into one bytes object), no Python object per packet. */
static PyObject *core_pcap_batch(PyObject *m, PyObject *args)
{
    Py_buffer v;
    Py_ssize_t pos, max;
    int big, swapped;
    unsigned int header_len, linktype;
    unsigned long long ns_per_tick, max_caplen;
    if (!PyArg_ParseTuple(args, "y*nniIKiKI:pcap_batch", &v, &pos, &max, &big, &header_len, &ns_per_tick, &swapped,
                          &max_caplen, &linktype))
        return NULL;
    core_state *st = (core_state *)PyModule_GetState(m);
    PyObject *result = NULL, *blob = NULL;
    BatchObject *b = NULL;
    if (pos < 0 || pos > v.len || max < 1 || (header_len != 16 && header_len != 24)) {
        PyErr_SetString(PyExc_ValueError, "bad pcap_batch arguments");
        goto out;
    }
    b = batch_alloc(st, max);
    if (!b)
        goto out;
    struct pipc_pcap_format f = {big, header_len, ns_per_tick, swapped, max_caplen};
    size_t p = (size_t)pos;
    int status;
    size_t n = pipc_pcap_scan(v.buf, (size_t)v.len, &p, (size_t)max, &f, b->ts, b->caplen, b->origlen, b->offsets,
                              &status);
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += b->caplen[i];
    blob = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    if (!blob)
        goto out;
    uint8_t *dst = (uint8_t *)PyBytes_AS_STRING(blob);
    uint64_t off = 0;
    for (size_t i = 0; i < n; i++) {
        memcpy(dst + off, (const uint8_t *)v.buf + b->offsets[i], b->caplen[i]);
        b->offsets[i] = off;
        b->linktype[i] = linktype;
        b->ifindex[i] = 0;
        off += b->caplen[i];
    }
    if (n == 0) {
        result = Py_BuildValue("(Onn)", Py_None, (Py_ssize_t)p, (Py_ssize_t)status);
        goto out;
    }
    if ((Py_ssize_t)n < max) { /* the columns were laid out for max packets: repack them for n */
        BatchObject *exact = batch_alloc(st, (Py_ssize_t)n);
        if (!exact)
            goto out;
        memcpy(exact->ts, b->ts, n * 8);
        memcpy(exact->offsets, b->offsets, n * 8);
        memcpy(exact->caplen, b->caplen, n * 4);
        memcpy(exact->origlen, b->origlen, n * 4);
        memcpy(exact->linktype, b->linktype, n * 4);
        memcpy(exact->ifindex, b->ifindex, n * 4);
        Py_SETREF(b, exact);
    }
    b->data = dst;
    b->nbytes = (Py_ssize_t)total;
    b->owner = blob;
    blob = NULL;
    result = Py_BuildValue("(Onn)", (PyObject *)b, (Py_ssize_t)p, (Py_ssize_t)status);
out:
    Py_XDECREF(b);
    Py_XDECREF(blob);
    PyBuffer_Release(&v);
    return result;
}

static PyMethodDef core_methods[] = {
    {"pcap_batch", core_pcap_batch, METH_VARARGS,
     "pcap_batch(buffer, pos, max_packets, big_endian, header_len, ns_per_tick, swapped_lengths, max_caplen, "
     "linktype) -> (PacketBatch | None, next_pos, status)."},
    {"partition_by_flow", core_partition_by_flow, METH_VARARGS,
     "partition_by_flow(batch, table, workers, linktype=0) -> list of bytes (uint32 indices per worker)."},
    {"flow_hash", core_flow_hash, METH_VARARGS, "flow_hash(linktype, data) -> int: symmetric 5-tuple hash."},
    {"flow_key", core_flow_key, METH_VARARGS,
     "flow_key(linktype, data) -> (family, proto, addr_a, port_a, addr_b, port_b, is_fragment) or None."},
    {"flow_hash_batch", core_flow_hash_batch, METH_VARARGS,
     "flow_hash_batch(batch, linktype=0) -> bytes of uint32 hashes."},
    {NULL, NULL, 0, NULL},
};

/* ------------------------------------------------------------------------------------------------------ */
/* module */

static int add_type(PyObject *m, PyType_Spec *spec, PyTypeObject **slot, const char *name)
{
    PyObject *t = PyType_FromModuleAndSpec(m, spec, NULL);
    if (!t)
        return -1;
    *slot = (PyTypeObject *)t;
    Py_INCREF(t);
    if (PyModule_AddObject(m, name, t) < 0) {
        Py_DECREF(t);
        return -1;
    }
    return 0;
}

static int core_exec(PyObject *m)
{
    core_state *st = (core_state *)PyModule_GetState(m);
    PyObject *errors = PyImport_ImportModule("packet_ipc.errors");
    if (!errors)
        return -1;
#define GET(field, name)                                                                                               \
    if (!(st->field = PyObject_GetAttrString(errors, name))) {                                                         \
        Py_DECREF(errors);                                                                                             \
        return -1;                                                                                                     \
    }
    GET(PacketIpcError, "PacketIpcError");
    GET(ConnectError, "ConnectError");
    GET(ConnectionLostError, "ConnectionLostError");
    GET(ProtocolError, "ProtocolError");
    GET(TimeoutError, "TimeoutError");
    GET(PermissionDeniedError, "PermissionDeniedError");
    GET(ClosedError, "ClosedError");
#undef GET
    Py_DECREF(errors);
    if (add_type(m, &packet_spec, &st->PacketType, "Packet") < 0 ||
        add_type(m, &lease_spec, &st->LeaseType, "_Lease") < 0 ||
        add_type(m, &batch_spec, &st->BatchType, "PacketBatch") < 0 ||
        add_type(m, &server_spec, &st->ServerType, "Server") < 0 ||
        add_type(m, &conn_spec, &st->ConnectionType, "Connection") < 0 ||
        add_type(m, &client_spec, &st->ClientType, "Client") < 0)
        return -1;
    if (PyModule_AddIntConstant(m, "ABI_VERSION", PACKET_IPC_ABI_VERSION) < 0 ||
        PyModule_AddIntConstant(m, "WIRE_VERSION", pipc_wire_version()) < 0 ||
        PyModule_AddIntConstant(m, "OVERFLOW_BLOCK", PIPC_OVERFLOW_BLOCK) < 0 ||
        PyModule_AddIntConstant(m, "DISTRIBUTION_FLOW", PIPC_DISTRIBUTION_FLOW) < 0 ||
        PyModule_AddIntConstant(m, "DISTRIBUTION_ROUND_ROBIN", PIPC_DISTRIBUTION_ROUND_ROBIN) < 0 ||
        PyModule_AddIntConstant(m, "DISTRIBUTION_BROADCAST", PIPC_DISTRIBUTION_BROADCAST) < 0 ||
        PyModule_AddIntConstant(m, "OVERFLOW_DROP", PIPC_OVERFLOW_DROP) < 0 ||
        PyModule_AddIntConstant(m, "FRAG_TABLE_BYTES", (long)sizeof(struct pipc_frag_table)) < 0)
        return -1;
    return 0;
}

static int core_traverse(PyObject *m, visitproc visit, void *arg)
{
    core_state *st = (core_state *)PyModule_GetState(m);
    Py_VISIT(st->PacketIpcError);
    Py_VISIT(st->ConnectError);
    Py_VISIT(st->ConnectionLostError);
    Py_VISIT(st->ProtocolError);
    Py_VISIT(st->TimeoutError);
    Py_VISIT(st->PermissionDeniedError);
    Py_VISIT(st->ClosedError);
    Py_VISIT(st->PacketType);
    Py_VISIT(st->LeaseType);
    Py_VISIT(st->BatchType);
    Py_VISIT(st->ServerType);
    Py_VISIT(st->ConnectionType);
    Py_VISIT(st->ClientType);
    return 0;
}

static int core_clear(PyObject *m)
{
    core_state *st = (core_state *)PyModule_GetState(m);
    Py_CLEAR(st->PacketIpcError);
    Py_CLEAR(st->ConnectError);
    Py_CLEAR(st->ConnectionLostError);
    Py_CLEAR(st->ProtocolError);
    Py_CLEAR(st->TimeoutError);
    Py_CLEAR(st->PermissionDeniedError);
    Py_CLEAR(st->ClosedError);
    Py_CLEAR(st->PacketType);
    Py_CLEAR(st->LeaseType);
    Py_CLEAR(st->BatchType);
    Py_CLEAR(st->ServerType);
    Py_CLEAR(st->ConnectionType);
    Py_CLEAR(st->ClientType);
    return 0;
}

static PyModuleDef_Slot core_slots[] = {{Py_mod_exec, core_exec}, {0, NULL}};

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT, "packet_ipc._core", "C core binding of packet-ipc.", sizeof(core_state), core_methods,
    core_slots, core_traverse, core_clear, NULL,
};

PyMODINIT_FUNC PyInit__core(void) { return PyModuleDef_Init(&core_module); }
