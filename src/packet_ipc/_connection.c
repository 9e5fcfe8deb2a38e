/* _connection.c - Connection: the server side of one client (sends, end, abort, waits for an event loop). */
#include "_core.h"

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

static PyObject *conn_send_using(ConnectionObject *self, struct pipc_packet *pk, const struct pipc_columns *k,
                                 Py_ssize_t n, int ms);

/* Sends packets given as descriptors (pk) or, when k is set, as columns. */
static PyObject *conn_send_packets(ConnectionObject *self, struct pipc_packet *pk, const struct pipc_columns *k,
                                   Py_ssize_t n, int ms)
{
    if (n == 0)
        return PyLong_FromLong(0);
    self->users++;
    PyObject *res = conn_send_using(self, pk, k, n, ms);
    conn_leave(self);
    return res;
}

/* Packets [from, n) of pk or of the columns k (a resumed send starts at packet `from`'s bytes). */
static long send_from(pipc_conn *c, struct pipc_packet *pk, const struct pipc_columns *k, Py_ssize_t from,
                      Py_ssize_t n, int ms)
{
    if (!k)
        return pipc_conn_send(c, pk + from, (size_t)(n - from), ms);
    if (from == 0)
        return pipc_conn_send_columns(c, k, (size_t)n, ms);
    uint64_t off = 0;
    for (Py_ssize_t i = 0; i < from; i++)
        off += k->caplen[i];
    struct pipc_columns rest = {
        .struct_bytes = sizeof(rest), .ts_ns = k->ts_ns + from, .caplen = k->caplen + from,
        .origlen = k->origlen ? k->origlen + from : NULL, .ifindex = k->ifindex ? k->ifindex + from : NULL,
        .linktype = k->linktype ? k->linktype + from : NULL, .data = k->data + off};
    return pipc_conn_send_columns(c, &rest, (size_t)(n - from), ms);
}

static PyObject *conn_send_using(ConnectionObject *self, struct pipc_packet *pk, const struct pipc_columns *k,
                                 Py_ssize_t n, int ms)
{
    core_state *st = state_of_type(Py_TYPE(self));
    pipc_conn *c = self->c;
    uint64_t deadline = ms < 0 ? UINT64_MAX : mono_ns() + (uint64_t)ms * 1000000ULL;
    uint64_t before = conn_packets_sent(c);
    Py_ssize_t sent = 0;
    /* Fast path with the GIL held: nothing blocks while there is space (and no other thread is sending). */
    long r = send_from(c, pk, k, 0, n, 0);
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
        r = send_from(c, pk, k, sent, n, left);
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
    PyObject *res = conn_send_packets(self, pk, NULL, n, ms);
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
    const uint32_t *idx;
    Py_ssize_t n = b->n;
    if (indices_from(sel, &sv, &idx, &n) < 0)
        return NULL;
    if (idx) {
        for (Py_ssize_t k = 0; k < n; k++)
            if (idx[k] >= (uint64_t)b->n) { /* stops an index past the batch */
                PyBuffer_Release(&sv);
                PyErr_SetString(PyExc_IndexError, "index out of range of the batch");
                return NULL;
            }
    }
    if (!idx) { /* the whole batch: straight from its columns (its payloads lie back to back) */
        struct pipc_columns k = {.struct_bytes = sizeof(k), .ts_ns = b->ts, .caplen = b->caplen,
                                 .origlen = b->origlen, .ifindex = b->ifindex, .linktype = b->linktype,
                                 .data = b->data};
        Py_INCREF(bo);
        PyObject *res = conn_send_packets(self, NULL, &k, n, ms);
        Py_DECREF(bo);
        return res;
    }
    struct pipc_packet local[256];
    struct pipc_packet *pk = batch_to_packets(b, idx, n, local);
    if (!pk) {
        if (idx)
            PyBuffer_Release(&sv);
        return NULL;
    }
    Py_INCREF(bo); /* the batch (and its data) stays alive while the GIL is released */
    PyObject *res = conn_send_packets(self, pk, NULL, n, ms);
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

PyObject *named_tuple(PyTypeObject *type, const unsigned long long *values, Py_ssize_t n)
{
    PyObject *t = PyStructSequence_New(type);
    for (Py_ssize_t i = 0; t && i < n; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(values[i]);
        if (!v)
            Py_CLEAR(t);
        else
            PyStructSequence_SetItem(t, i, v);
    }
    return t;
}

PyObject *stats_tuple(core_state *st, const struct pipc_stats *s)
{
    const unsigned long long v[] = {s->packets,         s->bytes,      s->dropped_packets,
                                    s->dropped_bytes,   s->blocked_ns, s->ring_used_bytes,
                                    s->ring_bytes,      s->ring_used_slots, s->ring_slots};
    return named_tuple(st->StatsType, v, 9);
}

static PyObject *conn_stats(ConnectionObject *self, PyObject *unused)
{
    (void)unused;
    if (!conn_open(self))
        return NULL;
    struct pipc_stats s;
    pipc_conn_stats(self->c, &s);
    return stats_tuple(state_of_type(Py_TYPE(self)), &s);
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
    const unsigned long long v[] = {(unsigned long long)info.peer_pid, (unsigned long long)info.overflow,
                                    (unsigned long long)info.ended, st.ring_bytes, st.ring_slots};
    return named_tuple(state_of_type(Py_TYPE(self))->ConnInfoType, v, 5);
}

static PyObject *conn_get_closed(ConnectionObject *self, void *c)
{
    (void)c;
    return PyBool_FromLong(self->c == NULL || self->close_pending);
}

static PyMethodDef conn_methods[] = {
    {"send", (PyCFunction)conn_send, METH_VARARGS, "send(packets | None, timeout=None) -> int"},
    {"send_batch", (PyCFunction)conn_send_batch, METH_VARARGS, "send_batch(batch, timeout=None) -> int"},
    {"reserve", (PyCFunction)conn_reserve, METH_VARARGS,
     "reserve(n_packets, n_bytes, timeout=None) -> Reservation | None (zero-copy send)"},
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
PyType_Spec conn_spec = {"packet_ipc._core.Connection", sizeof(ConnectionObject), 0,
                                Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION, conn_slots};
