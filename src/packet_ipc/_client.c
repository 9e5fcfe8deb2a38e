/* _client.c - Client: receives (zero copy, GIL released while waiting) and the _Lease that returns ring space. */
#include "_core.h"

/* ------------------------------------------------------------------------------------------------------ */
/* _Lease: one received region [first, first + n) of a client's ring */



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
PyType_Spec lease_spec = {"packet_ipc._core._Lease", sizeof(LeaseObject), 0,
                                 Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION, lease_slots};

/* Where one receive puts its descriptors: the client's scratch array, or (while another thread's receive is
 * using it) an array of this call's own. */
/* Where a take lands: descriptors in pk, or (columns set) columns carved out of the same memory (32 bytes per
 * packet: ts_ns and offsets, then caplen, origlen, linktype, ifindex; a descriptor takes 40). */
typedef struct {
    struct pipc_packet *pk;
    int own;
    int columns;
    struct pipc_received_columns cols;
} take_buffer;

static long take_into(pipc_client *c, take_buffer *b, size_t max, int ms)
{
    if (!b->columns)
        return pipc_client_receive(c, b->pk, max, ms);
    return pipc_client_receive_columns(c, &b->cols, max, ms);
}
/* ------------------------------------------------------------------------------------------------------ */
/* Client */

/* A Client object owning c (closed if the object cannot be made). */
static PyObject *client_wrap(PyTypeObject *tp, pipc_client *c, int busy_poll)
{
    ClientObject *self = (ClientObject *)tp->tp_alloc(tp, 0);
    if (!self) {
        pipc_client_close(c);
        return NULL;
    }
    self->c = c;
    self->busy_poll = busy_poll;
    return (PyObject *)self;
}

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
    return client_wrap(tp, c, busy);
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
    if (b->columns) {
        char *base = (char *)b->pk;
        size_t m = (size_t)max;
        b->cols = (struct pipc_received_columns){
            .struct_bytes = sizeof(b->cols), .ts_ns = (uint64_t *)base, .offsets = (uint64_t *)(base + 8 * m),
            .caplen = (uint32_t *)(base + 16 * m), .origlen = (uint32_t *)(base + 20 * m),
            .linktype = (uint32_t *)(base + 24 * m), .ifindex = (uint32_t *)(base + 28 * m)};
    }
    pipc_client *c = self->c;
    /* Fast path with the GIL held: no system call while packets are waiting. */
    size_t take_max = (size_t)max < INT_MAX ? (size_t)max : INT_MAX;
    long r = take_into(c, b, take_max, 0);
    if (r == -ETIMEDOUT && ms != 0) {
        uint64_t deadline = ms < 0 ? UINT64_MAX : mono_ns() + (uint64_t)ms * 1000000ULL;
        self->users++;
        for (;;) {
            int left = remaining(deadline);
            if (left < 0 || left > WAIT_SLICE_MS)
                left = WAIT_SLICE_MS; /* come back for signals even while another thread holds the client */
            Py_BEGIN_ALLOW_THREADS
            r = take_into(c, b, take_max, left);
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

/* The lease of n received packets with ids from `first`, whose bytes lie at data (nbytes in all). */
static LeaseObject *make_lease_range(core_state *st, ClientObject *self, uint64_t first, long n, const uint8_t *data,
                                     uint64_t nbytes)
{
    LeaseObject *l = PyObject_New(LeaseObject, st->LeaseType);
    if (!l) {
        pipc_client_release_range(self->c, first, (uint64_t)n);
        return NULL;
    }
    Py_INCREF(self);
    l->client = (PyObject *)self;
    l->first = first;
    l->n = (uint64_t)n;
    l->data = data;
    l->nbytes = (Py_ssize_t)nbytes;
    return l;
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
    take_buffer tb = {.columns = 1};
    if (!PyArg_ParseTuple(args, "|nO:receive_batch", &max, &t) || timeout_ms_from(t, &ms) < 0)
        return NULL;
    long n = client_take(self, max, ms, &tb);
    if (n <= 0) {
        if (n == 0)
            Py_RETURN_NONE;
        return NULL;
    }
    core_state *st = state_of_type(Py_TYPE(self));
    const struct pipc_received_columns *k = &tb.cols;
    LeaseObject *l = make_lease_range(st, self, k->first_id, n, k->data, k->nbytes);
    BatchObject *b = l ? batch_alloc(st, n) : NULL;
    if (!b) {
        Py_XDECREF(l);
        take_buffer_done(self, &tb);
        return NULL;
    }
    /* Columns taken straight from the descriptors (validated there), copied whole into the batch. */
    memcpy(b->ts, k->ts_ns, (size_t)n * 8);
    memcpy(b->offsets, k->offsets, (size_t)n * 8);
    memcpy(b->caplen, k->caplen, (size_t)n * 4);
    memcpy(b->origlen, k->origlen, (size_t)n * 4);
    memcpy(b->linktype, k->linktype, (size_t)n * 4);
    memcpy(b->ifindex, k->ifindex, (size_t)n * 4);
    take_buffer_done(self, &tb);
    b->owner = (PyObject *)l;
    b->data = k->data;
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
    take_buffer tb = {.columns = 0};
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
    return stats_tuple(state_of_type(Py_TYPE(self)), &s);
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
    const unsigned long long v[] = {pipc_client_linktype(self->c), pipc_client_snaplen(self->c), st.ring_bytes,
                                    st.ring_slots};
    return named_tuple(state_of_type(Py_TYPE(self))->ClientInfoType, v, 4);
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
PyType_Spec client_spec = {"packet_ipc._core.Client", sizeof(ClientObject), 0, Py_TPFLAGS_DEFAULT, client_slots};

/* ------------------------------------------------------------------------------------------------------ */
/* PendingClient: a connect in steps for an event loop (pipc_client_connect_start/_fd/_finish); never blocks */

typedef struct {
    PyObject_HEAD
    pipc_client_pending *p;
    int busy_poll;
} PendingObject;

static PyObject *pending_new(PyTypeObject *tp, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"name", "busy_poll", "overflow", NULL};
    const char *name;
    int busy = 0, overflow = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "s|pi:PendingClient", kwlist, &name, &busy, &overflow))
        return NULL;
    struct pipc_client_options o = {.struct_bytes = sizeof(o), .overflow = overflow, .busy_poll = busy};
    o.use_server_overflow = overflow != PIPC_OVERFLOW_BLOCK && overflow != PIPC_OVERFLOW_DROP;
    pipc_client_pending *p;
    int r = pipc_client_connect_start(name, &o, &p);
    if (r == -EAGAIN)
        Py_RETURN_NONE; /* the server's backlog is full: the caller tries again a little later */
    if (r < 0)
        return raise_code(state_of_type(tp), r, "connect");
    PendingObject *self = (PendingObject *)tp->tp_alloc(tp, 0);
    if (!self) {
        pipc_client_connect_cancel(p);
        return NULL;
    }
    self->p = p;
    self->busy_poll = busy;
    return (PyObject *)self;
}

static void pending_dealloc(PendingObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    pipc_client_connect_cancel(self->p);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyObject *pending_fileno(PendingObject *self, PyObject *unused)
{
    (void)unused;
    if (!self->p) {
        PyErr_SetString(state_of_type(Py_TYPE(self))->ClosedError, "this connect has finished");
        return NULL;
    }
    return PyLong_FromLong(pipc_client_connect_fd(self->p));
}

static PyObject *pending_finish(PendingObject *self, PyObject *unused)
{
    (void)unused;
    core_state *st = state_of_type(Py_TYPE(self));
    if (!self->p) {
        PyErr_SetString(st->ClosedError, "this connect has finished");
        return NULL;
    }
    pipc_client *c;
    int r = pipc_client_connect_finish(self->p, &c);
    if (r == -EAGAIN)
        Py_RETURN_NONE;
    self->p = NULL; /* consumed */
    if (r < 0)
        return raise_code(st, r, "connect");
    return client_wrap(st->ClientType, c, self->busy_poll);
}

static PyObject *pending_cancel(PendingObject *self, PyObject *unused)
{
    (void)unused;
    pipc_client_connect_cancel(self->p);
    self->p = NULL;
    Py_RETURN_NONE;
}

static PyMethodDef pending_methods[] = {
    {"fileno", (PyCFunction)pending_fileno, METH_NOARGS, "The socket to wait on (readable when the server answered)."},
    {"finish", (PyCFunction)pending_finish, METH_NOARGS, "The connected Client, or None while the answer is not there."},
    {"cancel", (PyCFunction)pending_cancel, METH_NOARGS, "Drops the connect (closes its socket)."},
    {NULL, NULL, 0, NULL},
};
static PyType_Slot pending_slots[] = {
    {Py_tp_new, pending_new},
    {Py_tp_dealloc, pending_dealloc},
    {Py_tp_methods, pending_methods},
    {Py_tp_doc, "PendingClient(name, busy_poll=False, overflow=-1): a connect that never blocks (None: retry)."},
    {0, NULL},
};
PyType_Spec pending_spec = {"packet_ipc._core.PendingClient", sizeof(PendingObject), 0, Py_TPFLAGS_DEFAULT,
                            pending_slots};
