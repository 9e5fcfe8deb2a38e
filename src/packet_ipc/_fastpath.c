/* _fastpath.c - flow hashing of batches, the classic pcap scanner and the NATS record gather, for the Python
 * layers above. */
#include "_core.h"

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

/* pcap_write(batch, nanosecond, snaplen, linktype) -> (bytes, count, status): little-endian pcap records of the
 * batch's packets, stopping before the first one pcap cannot hold as it is (status: see pipc_pcap_write). */
static PyObject *core_pcap_write(PyObject *m, PyObject *args)
{
    PyObject *bo;
    int nano;
    unsigned int snaplen, linktype;
    if (!PyArg_ParseTuple(args, "OpII:pcap_write", &bo, &nano, &snaplen, &linktype))
        return NULL;
    core_state *st = (core_state *)PyModule_GetState(m);
    if (Py_TYPE(bo) != st->BatchType) {
        PyErr_SetString(PyExc_TypeError, "pcap_write takes a PacketBatch");
        return NULL;
    }
    BatchObject *b = (BatchObject *)bo;
    if (!batch_live(b))
        return NULL;
    size_t need = 0;
    for (Py_ssize_t i = 0; i < b->n; i++)
        need += 16 + (size_t)b->caplen[i];
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)need);
    if (!out)
        return NULL;
    size_t len;
    int status;
    size_t count = pipc_pcap_write((uint8_t *)PyBytes_AS_STRING(out), (size_t)b->n, b->ts, b->caplen, b->origlen,
                                   b->linktype, b->offsets, b->data, nano, snaplen, linktype, &len, &status);
    if (len != need && _PyBytes_Resize(&out, (Py_ssize_t)len) < 0)
        return NULL;
    return Py_BuildValue("(Nni)", out, (Py_ssize_t)count, status);
}

/* Appends the packets of a batch at indices[start:] (uint32) to six bytearrays - ts (u64), caplen, origlen,
 * linktype, ifindex (u32) and data - as many as fit in `room` bytes (`overhead` + caplen each), at least one when
 * `first` is true. The columnar records of packet_ipc.nats.wire, gathered in one copy with no Python object per
 * packet. Returns (next start, data bytes appended). */
static PyObject *core_gather_records(PyObject *m, PyObject *args)
{
    PyObject *bo, *col[6];
    Py_buffer iv;
    Py_ssize_t start, room, overhead;
    int first;
    if (!PyArg_ParseTuple(args, "Oy*nnnp(O!O!O!O!O!O!):gather_records", &bo, &iv, &start, &room, &overhead, &first,
                          &PyByteArray_Type, &col[0], &PyByteArray_Type, &col[1], &PyByteArray_Type, &col[2],
                          &PyByteArray_Type, &col[3], &PyByteArray_Type, &col[4], &PyByteArray_Type, &col[5]))
        return NULL;
    core_state *st = (core_state *)PyModule_GetState(m);
    PyObject *result = NULL;
    BatchObject *b = (BatchObject *)bo;
    const uint32_t *idx = iv.buf;
    Py_ssize_t n_idx = iv.len / 4;
    if (Py_TYPE(bo) != st->BatchType) {
        PyErr_SetString(PyExc_TypeError, "gather_records takes a PacketBatch");
        goto out;
    }
    if (!batch_live(b))
        goto out;
    if (iv.len % 4 || start < 0 || start > n_idx || overhead < 0) {
        PyErr_SetString(PyExc_ValueError, "gather_records: indices must be uint32 and 0 <= start <= len, overhead >= 0");
        goto out;
    }
    Py_ssize_t end = start, used = 0, nbytes = 0;
    for (; end < n_idx; end++) {
        if (idx[end] >= (uint32_t)b->n) {
            PyErr_SetString(PyExc_ValueError, "gather_records: an index is out of the batch");
            goto out;
        }
        Py_ssize_t rec = overhead + (Py_ssize_t)b->caplen[idx[end]];
        if (used + rec > room && !(first && end == start))
            break;
        used += rec;
        nbytes += b->caplen[idx[end]];
    }
    Py_ssize_t count = end - start, width[6] = {8, 4, 4, 4, 4, 0}, old[6];
    uint8_t *dst[6];
    for (int c = 0; c < 6; c++) {
        old[c] = PyByteArray_GET_SIZE(col[c]);
        if (PyByteArray_Resize(col[c], old[c] + (c < 5 ? count * width[c] : nbytes)) < 0)
            goto out; /* the columns already resized stay longer: the caller drops the builder on error */
        dst[c] = (uint8_t *)PyByteArray_AS_STRING(col[c]) + old[c];
    }
    for (Py_ssize_t j = start; j < end; j++) {
        uint32_t i = idx[j];
        memcpy(dst[0], &b->ts[i], 8), dst[0] += 8;
        memcpy(dst[1], &b->caplen[i], 4), dst[1] += 4;
        memcpy(dst[2], &b->origlen[i], 4), dst[2] += 4;
        memcpy(dst[3], &b->linktype[i], 4), dst[3] += 4;
        memcpy(dst[4], &b->ifindex[i], 4), dst[4] += 4;
        memcpy(dst[5], b->data + b->offsets[i], b->caplen[i]), dst[5] += b->caplen[i];
    }
    result = Py_BuildValue("(nn)", end, nbytes);
out:
    PyBuffer_Release(&iv);
    return result;
}

PyMethodDef core_fastpath_methods[] = {
    {"gather_records", core_gather_records, METH_VARARGS,
     "gather_records(batch, indices, start, room, overhead, first, (ts, caplen, origlen, linktype, ifindex, data)) "
     "-> (next start, data bytes): appends the packets at indices[start:] that fit in room bytes to six bytearrays."},
    {"pcap_batch", core_pcap_batch, METH_VARARGS,
     "pcap_batch(buffer, pos, max_packets, big_endian, header_len, ns_per_tick, swapped_lengths, max_caplen, "
     "linktype) -> (PacketBatch | None, next_pos, status)."},
    {"pcap_write", core_pcap_write, METH_VARARGS,
     "pcap_write(batch, nanosecond, snaplen, linktype) -> (bytes, count, status): pcap records of a batch."},
    {"partition_by_flow", core_partition_by_flow, METH_VARARGS,
     "partition_by_flow(batch, table, workers, linktype=0) -> list of bytes (uint32 indices per worker)."},
    {"flow_hash", core_flow_hash, METH_VARARGS, "flow_hash(linktype, data) -> int: symmetric 5-tuple hash."},
    {"flow_key", core_flow_key, METH_VARARGS,
     "flow_key(linktype, data) -> (family, proto, addr_a, port_a, addr_b, port_b, is_fragment) or None."},
    {"flow_hash_batch", core_flow_hash_batch, METH_VARARGS,
     "flow_hash_batch(batch, linktype=0) -> bytes of uint32 hashes."},
    {NULL, NULL, 0, NULL},
};
