/* _server.c - Server: the endpoint, accept, and the server-level sends of csrc/distribute.c. */
#include "_core.h"

/* ------------------------------------------------------------------------------------------------------ */
/* Server */



static void server_leave(ServerObject *self)
{
    if (--self->users == 0 && self->close_pending) {
        pipc_server_close(self->s);
        self->s = NULL;
    }
}

void conn_leave(ConnectionObject *self)
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
    unsigned int max_packets = 0, linktype = 1, snaplen = PIPC_DEFAULT_SNAPLEN;
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

/* Private: the pipc_server * as an int, for ctypes calls into the same libpacketipc.so.1 that this module
 * links (packet_ipc.capture passes it to pipc_capture_run). Valid until close(); the caller must keep the
 * server open (and not close it from another thread) while C code uses it. */
static PyObject *server_get_handle(ServerObject *self, void *c)
{
    (void)c;
    if (!server_open(self))
        return NULL;
    return PyLong_FromVoidPtr(self->s);
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
        else if (r < 0 && n_unsent > 0) /* failed after writing some: the ones not listed as unsent */
            sent += m - (Py_ssize_t)n_unsent;
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

/* ---- for an event loop (packet_ipc.aio): a send that never waits, and the half-done handshake's socket ---- */

/* The packets of `items` (a PacketBatch or a sequence of packet-like objects) at `idx` (or all of them). */
static struct pipc_packet *select_packets(core_state *st, PyObject *items, const uint32_t *idx, Py_ssize_t n_idx,
                                          Py_ssize_t *n_out, Py_buffer **views, PyObject **hold)
{
    *views = NULL;
    if (Py_TYPE(items) == st->BatchType) {
        BatchObject *b = (BatchObject *)items;
        if (!batch_live(b))
            return NULL;
        Py_ssize_t n = idx ? n_idx : b->n;
        for (Py_ssize_t k = 0; idx && k < n; k++)
            if (idx[k] >= (uint64_t)b->n) {
                PyErr_SetString(PyExc_IndexError, "index out of range of the batch");
                return NULL;
            }
        struct pipc_packet *buf = PyMem_Malloc((size_t)(n ? n : 1) * sizeof(*buf)), *pk;
        if (!buf)
            return (struct pipc_packet *)PyErr_NoMemory();
        if (!(pk = batch_to_packets(b, idx, n, buf)) || pk != buf)
            PyMem_Free(buf); /* more than fit `local`: it made its own (the caller frees pk) */
        if (pk) {
            *n_out = n;
            Py_INCREF(items);
            *hold = items; /* the batch (and its data) stays alive while its descriptors are in use */
        }
        return pk;
    }
    PyObject *seq = items;
    if (idx) { /* the selected items, in that order */
        PyObject *fast = PySequence_Fast(items, "send takes a sequence of packets or a PacketBatch");
        if (!fast)
            return NULL;
        Py_ssize_t len = PySequence_Fast_GET_SIZE(fast);
        seq = PyList_New(n_idx);
        for (Py_ssize_t k = 0; seq && k < n_idx; k++) {
            if (idx[k] >= (uint64_t)len) {
                PyErr_SetString(PyExc_IndexError, "index out of range of the packets");
                Py_CLEAR(seq);
                break;
            }
            PyObject *o = PySequence_Fast_GET_ITEM(fast, idx[k]);
            Py_INCREF(o);
            PyList_SET_ITEM(seq, k, o);
        }
        Py_DECREF(fast);
        if (!seq)
            return NULL;
    } else
        Py_INCREF(seq);
    *hold = seq;
    struct pipc_packet *pk = convert_packets(st, seq, n_out, views);
    if (!pk)
        Py_CLEAR(*hold);
    return pk;
}

/* send_nowait(items, indices=None) -> (sent, unsent, stalled, need_bytes); see pipc_server_send_nowait. unsent
 * is a bytes of uint32 positions in items (pass it back as indices to go on); stalled is the acceptance index
 * of the worker whose full ring stopped the call (-1: none). Errors carry `sent`, and `unsent` when some packets
 * were written before the error. */
static PyObject *server_send_nowait(ServerObject *self, PyObject *args)
{
    PyObject *items, *sel = Py_None, *hold = NULL, *res = NULL;
    if (!PyArg_ParseTuple(args, "O|O:send_nowait", &items, &sel) || !server_open(self))
        return NULL;
    core_state *st = state_of_type(Py_TYPE(self));
    Py_buffer sv = {0};
    const uint32_t *idx;
    Py_ssize_t n_idx = 0, n = 0;
    if (indices_from(sel, &sv, &idx, &n_idx) < 0)
        return NULL;
    Py_buffer *views = NULL;
    struct pipc_packet *pk = select_packets(st, items, idx, n_idx, &n, &views, &hold);
    uint32_t *unsent = pk ? PyMem_Malloc((size_t)(n ? n : 1) * sizeof(uint32_t)) : NULL;
    if (pk && !unsent)
        PyErr_NoMemory();
    if (unsent) {
        size_t n_unsent = 0;
        uint32_t stalled;
        uint64_t need;
        long r = pipc_server_send_nowait(self->s, pk, (size_t)n, unsent, &n_unsent, &stalled, &need);
        for (size_t k = 0; idx && k < n_unsent; k++) /* positions in the caller's items */
            unsent[k] = idx[unsent[k]];
        PyObject *left = PyBytes_FromStringAndSize((const char *)unsent, (Py_ssize_t)(n_unsent * sizeof(uint32_t)));
        Py_ssize_t sent = r >= 0 ? r : (n_unsent ? n - (Py_ssize_t)n_unsent : 0);
        if (left && (r >= 0 || r == -ETIMEDOUT))
            res = Py_BuildValue("(nOlK)", r >= 0 ? (Py_ssize_t)r : 0, left,
                                stalled == UINT32_MAX ? -1L : (long)stalled, (unsigned long long)need);
        else if (left) {
            raise_with_sent(st, (int)r, sent);
            PyObject *et, *ev, *tb;
            PyErr_Fetch(&et, &ev, &tb);
            PyErr_NormalizeException(&et, &ev, &tb);
            /* listed only when some were written (every worker died mid-call); else none was written */
            if (ev && n_unsent && PyObject_SetAttrString(ev, "unsent", left) < 0)
                PyErr_Clear();
            PyErr_Restore(et, ev, tb);
        }
        Py_XDECREF(left);
        PyMem_Free(unsent);
    }
    if (pk) {
        if (views)
            release_views(views, n);
        PyMem_Free(pk);
    }
    Py_XDECREF(hold);
    if (idx)
        PyBuffer_Release(&sv);
    return res;
}

static PyObject *server_pending_fd(ServerObject *self, PyObject *unused)
{
    (void)unused;
    if (!server_open(self))
        return NULL;
    return PyLong_FromLong(pipc_server_pending_fd(self->s));
}

static PyMethodDef server_methods[] = {
    {"send_nowait", (PyCFunction)server_send_nowait, METH_VARARGS,
     "send_nowait(items, indices=None) -> (sent, unsent, stalled, need_bytes): never waits."},
    {"pending_fd", (PyCFunction)server_pending_fd, METH_NOARGS,
     "The socket of a client whose HELLO an accept(0) is waiting for, or -1."},
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
    {"_handle", (getter)server_get_handle, NULL, "Private: the pipc_server * (for ctypes), while open.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};
static PyType_Slot server_slots[] = {
    {Py_tp_new, server_new},       {Py_tp_dealloc, server_dealloc}, {Py_tp_methods, server_methods},
    {Py_tp_getset, server_getset}, {Py_tp_doc, "Low-level server endpoint."}, {0, NULL},
};
PyType_Spec server_spec = {"packet_ipc._core.Server", sizeof(ServerObject), 0, Py_TPFLAGS_DEFAULT, server_slots};
