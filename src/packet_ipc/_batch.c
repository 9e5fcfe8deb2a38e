/* _batch.c - PacketBatch: columnar batches (buffer protocol), from buffers or from packets. */
#include "_core.h"

/* ------------------------------------------------------------------------------------------------------ */
/* PacketBatch: columns in one bytes object (ts u64 | offsets u64 | caplen u32 | origlen u32 | linktype u32 |
 * ifindex u32, each n long); data viewed through `owner` (a _Lease, a bytes, or a memoryview export). */


BatchObject *batch_alloc(core_state *st, Py_ssize_t n)
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

int batch_live(BatchObject *b)
{
    if (!b->owner) {
        PyErr_SetString(PyExc_ValueError, "this PacketBatch was released");
        return 0;
    }
    return 1;
}

Py_ssize_t batch_len(BatchObject *self) { return self->n; }

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

/* _Column: one column of a batch as a read-only typed buffer, exported straight to a memoryview (one object
 * and one view instead of a view, a slice and a cast). It holds the batch's columns object, so it outlives the
 * batch and its release, as the columns do. */
typedef struct {
    PyObject_HEAD
    PyObject *columns;
    char *ptr;
    Py_ssize_t count, itemsize;
    char format[2];
} ColumnObject;

static int column_getbuffer(ColumnObject *self, Py_buffer *view, int flags)
{
    if (flags & PyBUF_WRITABLE) {
        PyErr_SetString(PyExc_BufferError, "a PacketBatch's columns are read-only");
        view->obj = NULL;
        return -1;
    }
    fill_typed_buffer(view, (PyObject *)self, flags, self->ptr, &self->count, &self->itemsize, self->format, 1);
    return 0;
}

void fill_typed_buffer(Py_buffer *view, PyObject *exporter, int flags, void *buf, Py_ssize_t *count,
                       Py_ssize_t *itemsize, char *format, int readonly)
{
    view->buf = buf;
    view->len = *count * *itemsize;
    view->readonly = readonly;
    view->itemsize = *itemsize;
    view->format = (flags & PyBUF_FORMAT) ? format : NULL;
    view->ndim = 1;
    view->shape = (flags & PyBUF_ND) ? count : NULL;
    view->strides = (flags & PyBUF_STRIDES) ? itemsize : NULL;
    view->suboffsets = NULL;
    view->internal = NULL;
    view->obj = Py_NewRef(exporter);
}

static void column_dealloc(ColumnObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    Py_XDECREF(self->columns);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyType_Slot column_slots[] = {
    {Py_tp_dealloc, column_dealloc},
    {Py_bf_getbuffer, column_getbuffer},
    {Py_tp_doc, "One column of a PacketBatch (read-only)."},
    {0, NULL},
};
PyType_Spec column_spec = {"packet_ipc._core._Column", sizeof(ColumnObject), 0,
                           Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION, column_slots};

static PyObject *column_view(BatchObject *self, Py_ssize_t offset, Py_ssize_t itemsize, const char *fmt)
{
    if (!batch_live(self))
        return NULL;
    ColumnObject *col = PyObject_New(ColumnObject, state_of_type(Py_TYPE(self))->ColumnType);
    if (!col)
        return NULL;
    col->columns = Py_NewRef(self->columns);
    col->ptr = PyBytes_AS_STRING(self->columns) + offset * self->n;
    col->count = self->n;
    col->itemsize = itemsize;
    col->format[0] = fmt[0];
    col->format[1] = 0;
    PyObject *mv = PyMemoryView_FromObject((PyObject *)col);
    Py_DECREF(col);
    return mv;
}

PyObject *batch_get_ts(BatchObject *s, void *c) { (void)c; return column_view(s, 0, 8, "Q"); }
PyObject *batch_get_offsets(BatchObject *s, void *c) { (void)c; return column_view(s, 8, 8, "Q"); }
PyObject *batch_get_caplens(BatchObject *s, void *c) { (void)c; return column_view(s, 16, 4, "I"); }
PyObject *batch_get_origlens(BatchObject *s, void *c) { (void)c; return column_view(s, 20, 4, "I"); }
PyObject *batch_get_linktypes(BatchObject *s, void *c) { (void)c; return column_view(s, 24, 4, "I"); }
PyObject *batch_get_ifindexes(BatchObject *s, void *c) { (void)c; return column_view(s, 28, 4, "I"); }

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
PyType_Spec batch_spec = {"packet_ipc.PacketBatch", sizeof(BatchObject), 0,
                                 Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
                                 batch_slots};

/* The descriptors of batch[idx[k]] (or batch[k]) for k < n, in `local` when it has room (256), else in
 * memory the caller frees with PyMem_Free; NULL with MemoryError. */
struct pipc_packet *batch_to_packets(BatchObject *b, const uint32_t *idx, Py_ssize_t n, struct pipc_packet *local)
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

int indices_from(PyObject *sel, Py_buffer *view, const uint32_t **idx, Py_ssize_t *n)
{
    *idx = NULL;
    if (sel == Py_None)
        return 0;
    if (PyObject_GetBuffer(sel, view, PyBUF_SIMPLE) < 0)
        return -1;
    if (view->len % 4) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_ValueError, "indices must be uint32 values");
        return -1;
    }
    *idx = view->buf;
    *n = view->len / 4;
    return 0;
}
