/*
 * _core.c - the thin CPython binding over the public C ABI (it links libpacketipc.so): the module, its state,
 * errors and timeouts. The types live in the files named in _core.h.
 *
 * Types: Packet (owned data, or a view of a received packet in the ring), _Lease (one received region of a
 * ring: returns its space when the last object viewing it is gone, so no use-after-free is possible),
 * PacketBatch (columnar), Server, Connection, Client. Blocking calls release the GIL and retry on EINTR
 * after PyErr_CheckSignals(). Errors are the classes of packet_ipc.errors (OSError subclasses with errno).
 */
#include "_core.h"

static struct PyModuleDef core_module;


/* Raises what packet_ipc.errors.from_code makes of the code (the mapping is policy: it lives in Python). */
PyObject *raise_code(core_state *st, int code, const char *during)
{
    const char *detail = pipc_last_error();
    PyObject *exc = PyObject_CallFunction(st->error_from_code, "isz", code < 0 ? -code : code,
                                          detail && *detail ? detail : pipc_strerror(code), during);
    if (exc) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
    return NULL;
}

/* Raises the error for code with `sent` (packets written by this call before it) as an attribute. */
PyObject *raise_with_sent(core_state *st, int code, Py_ssize_t sent)
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


/* seconds (float/int/None) -> ms for the C API; -1 = forever */
int timeout_ms_from(PyObject *o, int *ms)
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

uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

int remaining(uint64_t deadline)
{
    if (deadline == UINT64_MAX)
        return -1;
    uint64_t now = mono_ns();
    return now >= deadline ? 0 : (int)((deadline - now + 999999) / 1000000);
}

/* None -> PIPC_LINKTYPE_DEFAULT (the server's); else a 16-bit LINKTYPE value (0 is LINKTYPE_NULL). */
int linktype_from(PyObject *o, unsigned int *out)
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

/* Named tuples of the counters and of the objects' facts: read by name (or index, as plain tuples were). */
static PyStructSequence_Field stats_fields[] = {
    {"packets", NULL},    {"bytes", NULL},      {"dropped_packets", NULL}, {"dropped_bytes", NULL},
    {"blocked_ns", NULL}, {"ring_used_bytes", NULL}, {"ring_bytes", NULL}, {"ring_used_slots", NULL},
    {"ring_slots", NULL}, {NULL, NULL},
};
static PyStructSequence_Desc stats_desc = {"packet_ipc._core.StatsValues", "Counters of one side of a connection.",
                                           stats_fields, 9};
static PyStructSequence_Field conn_info_fields[] = {
    {"peer_pid", NULL}, {"overflow", NULL}, {"ended", NULL}, {"ring_bytes", NULL}, {"ring_slots", NULL}, {NULL, NULL},
};
static PyStructSequence_Desc conn_info_desc = {"packet_ipc._core.ConnectionInfo",
                                               "Who and what an accepted connection is.", conn_info_fields, 5};
static PyStructSequence_Field client_info_fields[] = {
    {"linktype", NULL}, {"snaplen", NULL}, {"ring_bytes", NULL}, {"ring_slots", NULL}, {NULL, NULL},
};
static PyStructSequence_Desc client_info_desc = {"packet_ipc._core.ClientInfo", "The server's defaults and the ring.",
                                                 client_info_fields, 4};

static int add_named_tuple(PyObject *m, PyStructSequence_Desc *desc, PyTypeObject **slot, const char *name)
{
    if (!(*slot = PyStructSequence_NewType(desc)))
        return -1;
    Py_INCREF(*slot);
    if (PyModule_AddObject(m, name, (PyObject *)*slot) < 0) {
        Py_DECREF(*slot);
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
    GET(error_from_code, "from_code");
#undef GET
    Py_DECREF(errors);
    if (add_type(m, &packet_spec, &st->PacketType, "Packet") < 0 ||
        add_type(m, &lease_spec, &st->LeaseType, "_Lease") < 0 ||
        add_type(m, &batch_spec, &st->BatchType, "PacketBatch") < 0 ||
        add_type(m, &server_spec, &st->ServerType, "Server") < 0 ||
        add_type(m, &conn_spec, &st->ConnectionType, "Connection") < 0 ||
        add_type(m, &client_spec, &st->ClientType, "Client") < 0 ||
        add_type(m, &region_spec, &st->RegionType, "_ReservedRegion") < 0 ||
        add_type(m, &column_spec, &st->ColumnType, "_Column") < 0 ||
        add_type(m, &reservation_spec, &st->ReservationType, "Reservation") < 0 ||
        add_type(m, &pending_spec, &st->PendingType, "PendingClient") < 0 ||
        add_named_tuple(m, &stats_desc, &st->StatsType, "StatsValues") < 0 ||
        add_named_tuple(m, &conn_info_desc, &st->ConnInfoType, "ConnectionInfo") < 0 ||
        add_named_tuple(m, &client_info_desc, &st->ClientInfoType, "ClientInfo") < 0)
        return -1;
    if (PyModule_AddIntConstant(m, "ABI_VERSION", PACKET_IPC_ABI_VERSION) < 0 ||
        PyModule_AddIntConstant(m, "WIRE_VERSION", pipc_wire_version()) < 0 ||
        PyModule_AddIntConstant(m, "OVERFLOW_BLOCK", PIPC_OVERFLOW_BLOCK) < 0 ||
        PyModule_AddIntConstant(m, "DISTRIBUTION_FLOW", PIPC_DISTRIBUTION_FLOW) < 0 ||
        PyModule_AddIntConstant(m, "DISTRIBUTION_ROUND_ROBIN", PIPC_DISTRIBUTION_ROUND_ROBIN) < 0 ||
        PyModule_AddIntConstant(m, "DISTRIBUTION_BROADCAST", PIPC_DISTRIBUTION_BROADCAST) < 0 ||
        PyModule_AddIntConstant(m, "OVERFLOW_DROP", PIPC_OVERFLOW_DROP) < 0 ||
        PyModule_AddIntConstant(m, "FRAG_TABLE_BYTES", (long)sizeof(struct pipc_frag_table)) < 0 ||
        PyModule_AddIntConstant(m, "DEFAULT_CAPACITY_BYTES", PIPC_DEFAULT_CAPACITY_BYTES) < 0 ||
        PyModule_AddIntConstant(m, "DEFAULT_SNAPLEN", PIPC_DEFAULT_SNAPLEN) < 0 ||
        PyModule_AddIntConstant(m, "HANDSHAKE_MS", PIPC_HANDSHAKE_MS) < 0 ||
        PyModule_AddIntConstant(m, "SPIN_NS", PIPC_SPIN_NS) < 0)
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
    Py_VISIT(st->error_from_code);
    Py_VISIT(st->PacketType);
    Py_VISIT(st->LeaseType);
    Py_VISIT(st->BatchType);
    Py_VISIT(st->ServerType);
    Py_VISIT(st->ConnectionType);
    Py_VISIT(st->ClientType);
    Py_VISIT(st->PendingType);
    Py_VISIT(st->StatsType);
    Py_VISIT(st->ConnInfoType);
    Py_VISIT(st->ClientInfoType);
    Py_VISIT(st->RegionType);
    Py_VISIT(st->ColumnType);
    Py_VISIT(st->ReservationType);
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
    Py_CLEAR(st->error_from_code);
    Py_CLEAR(st->PacketType);
    Py_CLEAR(st->LeaseType);
    Py_CLEAR(st->BatchType);
    Py_CLEAR(st->ServerType);
    Py_CLEAR(st->ConnectionType);
    Py_CLEAR(st->ClientType);
    Py_CLEAR(st->PendingType);
    Py_CLEAR(st->StatsType);
    Py_CLEAR(st->ConnInfoType);
    Py_CLEAR(st->ClientInfoType);
    Py_CLEAR(st->RegionType);
    Py_CLEAR(st->ColumnType);
    Py_CLEAR(st->ReservationType);
    return 0;
}

static PyModuleDef_Slot core_slots[] = {{Py_mod_exec, core_exec}, {0, NULL}};

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT, "packet_ipc._core", "C core binding of packet-ipc.", sizeof(core_state), core_fastpath_methods,
    core_slots, core_traverse, core_clear, NULL,
};

PyMODINIT_FUNC PyInit__core(void) { return PyModuleDef_Init(&core_module); }
