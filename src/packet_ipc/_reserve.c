/* _reserve.c - Connection.reserve: a zero-copy send. The packets are built in place, in the client's ring,
 * through writable memoryviews (payload and columns), then published by Reservation.commit(n).
 *
 * Memory safety: each view exports a _ReservedRegion, which keeps the Connection in use (`users`), so the ring
 * stays mapped while any view of it is alive, even past a close(). Correctness: commit() refuses (BufferError)
 * while a view other than the reservation's own is alive (a slice, a NumPy array over it): bytes written after
 * the commit would change packets the client may already be reading. */
#include "_core.h"

/* ------------------------------------------------------------------------------------------------------ */
/* _ReservedRegion: one writable, typed buffer in the reservation (payload bytes or one column) */

typedef struct {
    PyObject_HEAD
    ConnectionObject *conn; /* in use while the region lives: the mapping stays */
    char *ptr;
    Py_ssize_t count, itemsize, exports;
    char format[2];
    int valid; /* 0 once committed or abandoned: no new views */
} RegionObject;

static int region_getbuffer(RegionObject *self, Py_buffer *view, int flags)
{
    if (!self->valid) {
        PyErr_SetString(PyExc_BufferError, "the reservation was committed or abandoned");
        view->obj = NULL;
        return -1;
    }
    fill_typed_buffer(view, (PyObject *)self, flags, self->ptr, &self->count, &self->itemsize, self->format, 0);
    self->exports++;
    return 0;
}

static void region_releasebuffer(RegionObject *self, Py_buffer *view)
{
    (void)view;
    self->exports--;
}

static void region_dealloc(RegionObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    if (self->conn) {
        conn_leave(self->conn);
        Py_DECREF(self->conn);
    }
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyType_Slot region_slots[] = {
    {Py_tp_dealloc, region_dealloc},
    {Py_bf_getbuffer, region_getbuffer},
    {Py_bf_releasebuffer, region_releasebuffer},
    {Py_tp_doc, "Writable memory of a reservation (payload or one column)."},
    {0, NULL},
};
PyType_Spec region_spec = {"packet_ipc._core._ReservedRegion", sizeof(RegionObject), 0,
                           Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION, region_slots};

/* ------------------------------------------------------------------------------------------------------ */
/* Reservation */

enum { R_DATA, R_TS, R_CAPLEN, R_ORIGLEN, R_IFINDEX, R_LINKTYPE, R_N };

typedef struct {
    PyObject_HEAD
    ConnectionObject *conn;
    RegionObject *regions[R_N];
    PyObject *views[R_N];
    void *ptrs[R_N]; /* the payload and the columns; their region and view are made on first use */
    Py_ssize_t n_packets, n_bytes;
    int open;
} ReservationObject;

static RegionObject *region_new(core_state *st, ConnectionObject *conn, void *ptr, Py_ssize_t count,
                                Py_ssize_t itemsize, char format)
{
    RegionObject *r = PyObject_New(RegionObject, st->RegionType);
    if (!r)
        return NULL;
    r->conn = (ConnectionObject *)Py_NewRef((PyObject *)conn);
    conn->users++;
    r->ptr = ptr;
    r->count = count;
    r->itemsize = itemsize;
    r->exports = 0;
    r->format[0] = format;
    r->format[1] = 0;
    r->valid = 1;
    return r;
}

/* Makes again the views released by a commit that did not happen. */
static int reservation_remake_views(ReservationObject *self)
{
    for (int i = 0; i < R_N; i++) {
        if (!self->views[i])
            continue;
        PyObject *v = PyMemoryView_FromObject((PyObject *)self->regions[i]);
        if (!v)
            return -1;
        Py_SETREF(self->views[i], v);
    }
    return 0;
}

/* Releases the reservation's own views; 0 if no other view of it is alive (then it may end), else -1 with
 * BufferError and the views made again. */
static int reservation_drop_views(ReservationObject *self)
{
    int busy = 0;
    for (int i = 0; i < R_N; i++) {
        if (!self->views[i])
            continue;
        PyObject *r = PyObject_CallMethod(self->views[i], "release", NULL);
        if (!r) { /* the view itself is exported (np.frombuffer of it, say) */
            PyErr_Clear();
            busy = 1;
        }
        Py_XDECREF(r);
        busy |= self->regions[i]->exports > 0;
    }
    if (!busy)
        return 0;
    if (reservation_remake_views(self) < 0)
        return -1;
    PyErr_SetString(PyExc_BufferError, "views of the reservation are still alive (slices, NumPy arrays over "
                                       "it): delete or release them before commit");
    return -1;
}

static void reservation_end(ReservationObject *self)
{
    self->open = 0;
    for (int i = 0; i < R_N; i++) {
        if (self->regions[i])
            self->regions[i]->valid = 0;
        Py_CLEAR(self->views[i]);
        Py_CLEAR(self->regions[i]); /* the last one lets a pending close of the connection complete */
    }
    conn_leave(self->conn);
}

static PyObject *reservation_commit(ReservationObject *self, PyObject *args)
{
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "n:commit", &n))
        return NULL;
    core_state *st = state_of_type(Py_TYPE(self));
    if (!self->open) {
        PyErr_SetString(st->ClosedError, "the reservation was committed or abandoned");
        return NULL;
    }
    if (n < 0 || n > self->n_packets) {
        PyErr_Format(PyExc_ValueError, "commit takes 0 to %zd packets, not %zd", self->n_packets, n);
        return NULL;
    }
    if (reservation_drop_views(self) < 0)
        return NULL;
    long r = pipc_conn_commit(self->conn->c, (size_t)n);
    if (r == -EMSGSIZE || r == -EINVAL) { /* still open: make the views again so the caller can fix it */
        if (reservation_remake_views(self) < 0)
            return NULL;
        return raise_code(st, (int)r, NULL);
    }
    reservation_end(self);
    if (r < 0)
        return raise_code(st, (int)r, NULL);
    return PyLong_FromLong(r);
}

static PyObject *reservation_abandon(ReservationObject *self, PyObject *unused)
{
    (void)unused;
    if (!self->open)
        Py_RETURN_NONE;
    PyObject *args = Py_BuildValue("(i)", 0), *r = reservation_commit(self, args);
    Py_DECREF(args);
    if (!r && PyErr_ExceptionMatches(state_of_type(Py_TYPE(self))->ClosedError)) {
        PyErr_Clear(); /* the connection was shut down meanwhile: abandoned anyway */
        Py_RETURN_NONE;
    }
    if (!r)
        return NULL;
    Py_DECREF(r);
    Py_RETURN_NONE;
}

static PyObject *reservation_enter(PyObject *self, PyObject *unused)
{
    (void)unused;
    return Py_NewRef(self);
}

static PyObject *reservation_exit(ReservationObject *self, PyObject *args)
{
    (void)args;
    return reservation_abandon(self, NULL);
}

static void reservation_dealloc(ReservationObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    if (self->open) { /* dropped without a commit: abandoned; views still alive keep the ring mapped */
        pipc_conn_commit(self->conn->c, 0);
        reservation_end(self);
    }
    for (int i = 0; i < R_N; i++) {
        Py_XDECREF(self->views[i]);
        Py_XDECREF(self->regions[i]);
    }
    Py_XDECREF(self->conn);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyObject *reservation_view(ReservationObject *self, void *which)
{
    core_state *st = state_of_type(Py_TYPE(self));
    if (!self->open) {
        PyErr_SetString(st->ClosedError, "the reservation was committed or abandoned");
        return NULL;
    }
    int i = (int)(intptr_t)which;
    if (!self->views[i]) {
        int is_data = i == R_DATA, is_ts = i == R_TS;
        if (!self->regions[i] &&
            !(self->regions[i] = region_new(st, self->conn, self->ptrs[i], is_data ? self->n_bytes : self->n_packets,
                                            is_data ? 1 : is_ts ? 8 : 4, is_data ? 'B' : is_ts ? 'Q' : 'I')))
            return NULL;
        if (!(self->views[i] = PyMemoryView_FromObject((PyObject *)self->regions[i])))
            return NULL;
    }
    return Py_NewRef(self->views[i]);
}

static PyObject *reservation_get_n_packets(ReservationObject *self, void *c)
{
    (void)c;
    return PyLong_FromSsize_t(self->n_packets);
}

static PyObject *reservation_get_n_bytes(ReservationObject *self, void *c)
{
    (void)c;
    return PyLong_FromSsize_t(self->n_bytes);
}

static PyObject *reservation_get_open(ReservationObject *self, void *c)
{
    (void)c;
    return PyBool_FromLong(self->open);
}

static PyMethodDef reservation_methods[] = {
    {"commit", (PyCFunction)reservation_commit, METH_VARARGS,
     "commit(n) -> int: publishes the first n packets and ends the reservation (0: abandons it)."},
    {"abandon", (PyCFunction)reservation_abandon, METH_NOARGS, "Ends the reservation, publishing nothing."},
    {"__enter__", (PyCFunction)reservation_enter, METH_NOARGS, "The reservation itself."},
    {"__exit__", (PyCFunction)reservation_exit, METH_VARARGS, "Abandons it unless committed."},
    {NULL, NULL, 0, NULL},
};
static PyGetSetDef reservation_getset[] = {
    {"data", (getter)reservation_view, NULL, "Payload bytes (memoryview 'B'); packet i's follow packet i-1's.",
     (void *)(intptr_t)R_DATA},
    {"ts_ns", (getter)reservation_view, NULL, "Timestamps, ns since the epoch (memoryview 'Q').",
     (void *)(intptr_t)R_TS},
    {"caplen", (getter)reservation_view, NULL, "Captured lengths (memoryview 'I').", (void *)(intptr_t)R_CAPLEN},
    {"origlen", (getter)reservation_view, NULL, "Original lengths, 0 meaning caplen (memoryview 'I').",
     (void *)(intptr_t)R_ORIGLEN},
    {"ifindex", (getter)reservation_view, NULL, "Interface indices (memoryview 'I').", (void *)(intptr_t)R_IFINDEX},
    {"linktype", (getter)reservation_view, NULL, "Linktypes, 0xffffffff meaning the server's (memoryview 'I').",
     (void *)(intptr_t)R_LINKTYPE},
    {"n_packets", (getter)reservation_get_n_packets, NULL, "Packets reserved.", NULL},
    {"n_bytes", (getter)reservation_get_n_bytes, NULL, "Payload bytes reserved.", NULL},
    {"open", (getter)reservation_get_open, NULL, "True until committed or abandoned.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};
static PyType_Slot reservation_slots[] = {
    {Py_tp_dealloc, reservation_dealloc},
    {Py_tp_methods, reservation_methods},
    {Py_tp_getset, reservation_getset},
    {Py_tp_doc, "Space reserved in a client's ring by Connection.reserve (zero-copy send)."},
    {0, NULL},
};
PyType_Spec reservation_spec = {"packet_ipc._core.Reservation", sizeof(ReservationObject), 0,
                                Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION, reservation_slots};

/* Connection.reserve(n_packets, n_bytes, timeout=None) -> Reservation | None (None: dropped, overflow drop) */
PyObject *conn_reserve(ConnectionObject *self, PyObject *args)
{
    Py_ssize_t n_packets, n_bytes;
    PyObject *t = Py_None;
    int ms;
    if (!PyArg_ParseTuple(args, "nn|O:reserve", &n_packets, &n_bytes, &t) || timeout_ms_from(t, &ms) < 0)
        return NULL;
    core_state *st = state_of_type(Py_TYPE(self));
    if (!self->c || self->close_pending) {
        PyErr_SetString(st->ClosedError, "connection is closed");
        return NULL;
    }
    if (n_packets < 1 || n_bytes < 0) {
        PyErr_SetString(PyExc_ValueError, "reserve takes n_packets >= 1 and n_bytes >= 0");
        return NULL;
    }
    pipc_conn *c = self->c;
    struct pipc_reservation res;
    uint64_t deadline = ms < 0 ? UINT64_MAX : mono_ns() + (uint64_t)ms * 1000000ULL;
    self->users++;
    int r = pipc_conn_reserve(c, (size_t)n_packets, (uint64_t)n_bytes, 0, &res); /* with the GIL: no wait */
    while (r == -ETIMEDOUT || r == -EINTR) {
        if (r == -ETIMEDOUT && ms >= 0 && remaining(deadline) == 0)
            break;
        if (PyErr_CheckSignals() < 0) {
            conn_leave(self);
            return NULL;
        }
        int left = remaining(deadline);
        if (left < 0 || left > WAIT_SLICE_MS)
            left = WAIT_SLICE_MS;
        Py_BEGIN_ALLOW_THREADS
        r = pipc_conn_reserve(c, (size_t)n_packets, (uint64_t)n_bytes, left, &res);
        Py_END_ALLOW_THREADS
    }
    if (r == -ENOBUFS) { /* overflow drop: what the caller would have built was counted as dropped */
        conn_leave(self);
        Py_RETURN_NONE;
    }
    if (r < 0) {
        conn_leave(self);
        return raise_code(st, r, NULL);
    }
    ReservationObject *o = PyObject_New(ReservationObject, st->ReservationType);
    if (!o) {
        pipc_conn_commit(c, 0);
        conn_leave(self);
        return NULL;
    }
    o->conn = (ConnectionObject *)Py_NewRef((PyObject *)self); /* its `users` count, taken above */
    o->n_packets = n_packets;
    o->n_bytes = n_bytes;
    o->open = 1;
    void *ptrs[R_N] = {res.data, res.ts_ns, res.caplen, res.origlen, res.ifindex, res.linktype};
    for (int i = 0; i < R_N; i++) {
        o->ptrs[i] = ptrs[i];
        o->regions[i] = NULL;
        o->views[i] = NULL;
    }
    return (PyObject *)o;
}
