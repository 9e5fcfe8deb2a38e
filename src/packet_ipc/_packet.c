/* _packet.c - Packet (owned, or a view of a received packet) and reading packet-like objects into descriptors. */
#include "_core.h"

/* ------------------------------------------------------------------------------------------------------ */
/* Packet */


PyObject *packet_new_view(core_state *st, PyObject *owner, const struct pipc_packet *p)
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
        if (PyObject_CheckBuffer(data)) /* a buffer, but not one contiguous run of bytes (a strided view) */
            PyErr_Format(PyExc_ValueError, "data must be contiguous bytes; this %.100s is not (copy it: bytes(data))",
                         Py_TYPE(data)->tp_name);
        else
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
        if (!PyLong_Check(orig)) {
            PyErr_Format(PyExc_TypeError, "orig_len must be an int or None, not %.100s", Py_TYPE(orig)->tp_name);
            return NULL;
        }
        ol = PyLong_AsUnsignedLong(orig);
        if ((ol == (unsigned long)-1 && PyErr_Occurred()) || ol > UINT32_MAX || ol < (unsigned long)len) {
            PyErr_Clear(); /* a negative or huge int: a bare OverflowError would not say what is wanted */
            PyErr_Format(PyExc_ValueError, "orig_len must be an int from caplen (%zd) to 2**32 - 1", len);
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

Py_ssize_t packet_len(PacketObject *self) { return self->caplen; }

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
PyType_Spec packet_spec = {"packet_ipc.Packet", sizeof(PacketObject), 0,
                                  Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE, packet_slots};

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
struct pipc_packet *convert_packets(core_state *st, PyObject *seq, Py_ssize_t *n_out, Py_buffer **views_out)
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

void release_views(Py_buffer *views, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++)
        PyBuffer_Release(&views[i]);
    PyMem_Free(views);
}
