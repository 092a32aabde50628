/*
 * Native accelerators of the per-decision path: gateway.core._native.
 *
 * Optional. Each function here has a Python reference that stays the
 * specification and runs wherever this module was not built (the editable
 * install compiles it when a C compiler is there and goes on without it when
 * not):
 *
 *   Probe, Holds   the relation snapshot's lookup, ``holds()`` of
 *                  gateway/core/relations/index.py (_holds_function), and a
 *                  meter's owner over time, ``owner_span()`` of
 *                  gateway/core/push/records.py;
 *   is_valid_gsrn, is_valid_ean, is_valid_meter_serial
 *                  gateway/core/identifiers.py (the GS1 check digit, a
 *                  meter's serial);
 *   cut_values, finite_number_counts
 *                  gateway/core/push/scan.py (the columnar push's values
 *                  arrays cut out of a batch, and their numbers checked);
 *   response_head, request_head, answer_head
 *                  the data plane's HTTP/1.1 wire forms, in
 *                  gateway/core/_native_wire.c (its header says whose);
 *   record_strings, records_strings
 *                  the response check's proof of an answer, in
 *                  gateway/core/_native_record.c (record_strings_reference,
 *                  records_strings_reference of gateway/core/jsonlimits.py);
 *   route_days     the columnar push's common meter-day, _route_day of
 *                  gateway/core/push/days.py, in gateway/core/_native_days.c.
 *
 * tests/core/test_native.py compares each with its reference on generated
 * input. Nothing here trusts its input to be well formed: every read of a
 * snapshot is bounds-checked, a slot, row or record past the end answers "no
 * relation" (fail closed, D1), and a probe visits each slot at most once.
 *
 * Snapshot layout (gateway/core/relations/snapshot.py): a slot is a u32, 0
 * empty, else (row offset from rows_start) / 8 + 1; a row is kind u8, id
 * length u8, id, count u8 (255: a u32 count follows), then count records of
 * tenant u16, relation u16, valid_from i64, valid_to i64, little-endian.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <datetime.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "_native.h"

#define LONG_COUNT 0xFF
#define ID_MAX 255 /* bytes: snapshot.ID_MAX */
#define RECORD_SIZE 20
#define HEAD_RECORD (1 + RECORD_SIZE) /* the count byte and a first record, after the id */

static uint32_t crc_table[256];

static void
crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) {
            c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        }
        crc_table[i] = c;
    }
}

static uint32_t
crc32_of(const unsigned char *p, Py_ssize_t n)
{
    uint32_t c = 0xFFFFFFFFu;
    for (Py_ssize_t i = 0; i < n; i++) {
        c = crc_table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
    }
    return c ^ 0xFFFFFFFFu;
}

static inline uint16_t
le16(const unsigned char *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static inline uint32_t
le32(const unsigned char *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}

static inline int64_t
le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) {
        v = (v << 8) | p[i];
    }
    return (int64_t)v;
}


static void
Probe_dealloc(ProbeObject *self)
{
    if (self->held >= 2) {
        PyBuffer_Release(&self->slots);
    }
    if (self->held >= 1) {
        PyBuffer_Release(&self->buffer);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
Probe_init(ProbeObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"buffer", "slots", "rows_start", NULL};
    PyObject *buffer, *slots;
    Py_ssize_t rows_start;
    if (self->held) {
        PyErr_SetString(PyExc_TypeError, "a Probe is initialised once");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOn", kwlist, &buffer, &slots,
                                     &rows_start)) {
        return -1;
    }
    if (PyObject_GetBuffer(buffer, &self->buffer, PyBUF_SIMPLE) < 0) {
        return -1;
    }
    self->held = 1;
    if (PyObject_GetBuffer(slots, &self->slots, PyBUF_SIMPLE) < 0) {
        return -1;
    }
    self->held = 2;
    Py_ssize_t n = self->slots.len / 4;
    if (self->slots.len % 4 || n < 1 || (n & (n - 1)) || n > ((Py_ssize_t)1 << 32)) {
        PyErr_SetString(PyExc_ValueError, "slots: not a power of two of u32");
        return -1;
    }
    if (rows_start < 0 || rows_start > self->buffer.len) {
        PyErr_SetString(PyExc_ValueError, "rows_start outside the buffer");
        return -1;
    }
    self->mask = (uint32_t)(n - 1);
    self->rows_start = rows_start;
    return 0;
}

/* The offset of the row of ``key`` in the buffer, -1 for none: the hash
   probe of holds() (a row whose id, count and first record do not fit in the
   buffer is passed over, as in the reference). */
static int64_t
probe_row(ProbeObject *self, const unsigned char *key, Py_ssize_t n)
{
    const unsigned char *buf = (const unsigned char *)self->buffer.buf;
    const unsigned char *slots = (const unsigned char *)self->slots.buf;
    int64_t len = (int64_t)self->buffer.len;
    uint32_t mask = self->mask;
    uint32_t h = crc32_of(key, n) & mask;

    for (uint64_t probes = 0; probes <= (uint64_t)mask; probes++, h = (h + 1) & mask) {
        uint32_t s = le32(slots + 4 * (Py_ssize_t)h);
        if (s == 0) {
            return -1;
        }
        /* The row's offset: rows_start + 8 (s - 1), in 64 bits. */
        int64_t row = (int64_t)self->rows_start + 8 * ((int64_t)s - 1);
        if (row + 1 >= len) {
            return -1; /* a slot past the end: fail closed */
        }
        if (row + 2 + (int64_t)n + HEAD_RECORD > len) {
            /* The id, its count and a first record do not fit: as in the
               reference, only an empty id with an empty length matches (and
               has no record); anything else probes on. */
            if (n == 0 && buf[row + 1] == 0) {
                return -1;
            }
            continue;
        }
        /* SECURITY: the full id decides, never the hash alone. */
        if (buf[row + 1] == n && memcmp(buf + row + 2, key, (size_t)n) == 0) {
            return row;
        }
    }
    return -1;
}

/* Where the records of the row at ``off`` (id length n) start, and how many
   there are; -1 when the count runs past the buffer. */
static int
row_records(ProbeObject *self, int64_t off, Py_ssize_t n, int64_t *first, uint32_t *count)
{
    const unsigned char *buf = (const unsigned char *)self->buffer.buf;
    int64_t len = (int64_t)self->buffer.len;
    int64_t p = off + 2 + n;
    *count = buf[p];
    p += 1;
    if (*count == LONG_COUNT) {
        if (p + 4 > len) {
            return -1;
        }
        *count = le32(buf + p);
        p += 4;
    }
    *first = p;
    return 0;
}

/* The relation's name index of the first record of ``key`` for ``tenant``
   with a relation in ``wanted`` that holds at ``us``; -1 for none. */
static long
probe_find(ProbeObject *self, const unsigned char *key, Py_ssize_t n, long tenant,
           uint64_t wanted, int64_t us)
{
    const unsigned char *buf = (const unsigned char *)self->buffer.buf;
    int64_t len = (int64_t)self->buffer.len;
    int64_t off = probe_row(self, key, n);
    if (off < 0) {
        return -1;
    }
    int64_t p;
    uint32_t count;
    if (row_records(self, off, n, &p, &count) < 0 || count == 0) {
        return -1;
    }
    int64_t end = p + (int64_t)RECORD_SIZE * (int64_t)count;
    do { /* count >= 1 */
        if (p + RECORD_SIZE > len) {
            return -1;
        }
        uint16_t rt = le16(buf + p);
        uint16_t rn = le16(buf + p + 2);
        if (rt == tenant && rn < 64 && ((wanted >> rn) & 1)) {
            int64_t start = le64(buf + p + 4);
            int64_t stop = le64(buf + p + 12);
            if ((start == INT64_MIN && stop == INT64_MAX) || (start <= us && us < stop)) {
                return rn;
            }
        }
        p += RECORD_SIZE;
    } while (p < end);
    return -1;
}

/* find(key: bytes, tenant: int, wanted: int, us: int) -> int */
static PyObject *
Probe_find(ProbeObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "find(key, tenant, wanted, us)");
        return NULL;
    }
    if (!PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "find: key must be bytes");
        return NULL;
    }
    long tenant = PyLong_AsLong(args[1]);
    if (tenant == -1 && PyErr_Occurred()) {
        return NULL;
    }
    unsigned long long wanted = PyLong_AsUnsignedLongLong(args[2]);
    if (wanted == (unsigned long long)-1 && PyErr_Occurred()) {
        return NULL;
    }
    long long us = PyLong_AsLongLong(args[3]);
    if (us == -1 && PyErr_Occurred()) {
        return NULL;
    }
    return PyLong_FromLong(probe_find(self, (const unsigned char *)PyBytes_AS_STRING(args[0]),
                                      PyBytes_GET_SIZE(args[0]), tenant, wanted, us));
}

/* span(key, at, owner, airplane, wildcard, lo, hi) -> (lo, hi, tenant, airplane):
   owner_span of gateway/core/push/records.py for one meter. ``owner`` and
   ``airplane`` are the snapshot's indexes of those relation names (-1: not
   in it), ``wildcard`` the index of the tenant "*" (-1: none), ``lo`` and
   ``hi`` the open ends. Every ownership or airplane-mode record narrows
   [lo, hi) around ``at``; tenant is the single owner at ``at``, or -1 when
   there is none, several or the wildcard (SECURITY: fail closed, D1). A
   record past the buffer's end answers no owner. */
int
probe_span(ProbeObject *self, const unsigned char *key, Py_ssize_t n, int64_t at,
           long long owner_rel, long long airplane_rel, long long wildcard, int64_t *lo,
           int64_t *hi, long long *tenant, int *airplane)
{
    const int64_t open_lo = *lo, open_hi = *hi;
    const unsigned char *buf = (const unsigned char *)self->buffer.buf;
    int64_t len = (int64_t)self->buffer.len;
    long long first_owner = -1;
    int several = 0, lies = 0;
    int64_t off = probe_row(self, key, n);
    int64_t p = 0;
    uint32_t count = 0;
    *airplane = 0;
    if (off >= 0) {
        lies = row_records(self, off, n, &p, &count) < 0;
    }
    for (uint32_t i = 0; !lies && i < count; i++, p += RECORD_SIZE) {
        if (p + RECORD_SIZE > len) {
            lies = 1;
            break;
        }
        long long rn = le16(buf + p + 2);
        if (rn != owner_rel && rn != airplane_rel) {
            continue;
        }
        int64_t start = le64(buf + p + 4), stop = le64(buf + p + 12);
        /* an open bound (INT64_MIN, INT64_MAX) narrows nothing */
        if (start <= at) {
            *lo = start > *lo ? start : *lo;
        }
        else {
            *hi = start < *hi ? start : *hi;
        }
        if (stop <= at) {
            *lo = stop > *lo ? stop : *lo;
        }
        else {
            *hi = stop < *hi ? stop : *hi;
        }
        if (start <= at && at < stop) {
            if (rn == owner_rel) {
                long long t = le16(buf + p);
                if (t == wildcard || (first_owner >= 0 && t != first_owner)) {
                    several = 1;
                }
                else {
                    first_owner = t;
                }
            }
            else {
                *airplane = 1; /* D5: any airplane-mode tuple silences the meter */
            }
        }
    }
    if (lies) {
        /* A row that lies about its count: nothing is known of the meter, so
           no owner (SECURITY: fail closed, D1). */
        *lo = open_lo;
        *hi = open_hi;
        *tenant = -1;
        *airplane = 0;
        return 0;
    }
    *tenant = several ? -1 : first_owner;
    return 0;
}

int
probe_owner(ProbeObject *probe, PyObject *tenants, PyObject *serial, int64_t at,
            long long owner_rel, long long airplane_rel, long long wildcard,
            int64_t *lo, int64_t *hi, PyObject **owner, int *airplane)
{
    long long t;
    probe_span(probe, PyUnicode_1BYTE_DATA(serial), PyUnicode_GET_LENGTH(serial), at,
               owner_rel, airplane_rel, wildcard, lo, hi, &t, airplane);
    *owner = NULL;
    if (t < 0) {
        return 0;
    }
    if (t >= PyTuple_GET_SIZE(tenants)) {
        /* A tenant past the snapshot's list: the reference's IndexError. */
        PyErr_SetString(PyExc_IndexError, "push router: tenant index out of range");
        return -1;
    }
    *owner = PyTuple_GET_ITEM(tenants, t);
    return 0;
}

int
int_value(PyObject *value, long long *out)
{
    if (!PyLong_CheckExact(value)) {
        return 0;
    }
    int overflow = 0;
    *out = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (overflow || (*out == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return 0;
    }
    return 1;
}

/* span(key, at, owner, airplane, wildcard, lo, hi) -> (lo, hi, tenant, airplane):
   probe_span (see _native.h) for one meter, from Python. */
static PyObject *
Probe_span(ProbeObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 7 || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError,
                        "span(key: bytes, at, owner, airplane, wildcard, lo, hi)");
        return NULL;
    }
    long long v[6];
    for (int i = 0; i < 6; i++) {
        v[i] = PyLong_AsLongLong(args[i + 1]);
        if (v[i] == -1 && PyErr_Occurred()) {
            return NULL;
        }
    }
    int64_t lo = v[4], hi = v[5];
    long long tenant;
    int airplane;
    probe_span(self, (const unsigned char *)PyBytes_AS_STRING(args[0]),
               PyBytes_GET_SIZE(args[0]), v[0], v[1], v[2], v[3], &lo, &hi, &tenant, &airplane);
    return Py_BuildValue("(LLLO)", (long long)lo, (long long)hi, tenant,
                         airplane ? Py_True : Py_False);
}

static PyMethodDef Probe_methods[] = {
    {"find", (PyCFunction)(void (*)(void))Probe_find, METH_FASTCALL,
     "find(key, tenant, wanted, us) -> the relation's name index, or -1"},
    {"span", (PyCFunction)(void (*)(void))Probe_span, METH_FASTCALL,
     "span(key, at, owner, airplane, wildcard, lo, hi) -> (lo, hi, tenant or -1, airplane)"},
    {NULL, NULL, 0, NULL},
};

PyTypeObject ProbeType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "gateway.core._native.Probe",
    .tp_doc = "Probe(buffer, slots, rows_start): one kind's lookups in a relation snapshot",
    .tp_basicsize = sizeof(ProbeObject),
    .tp_itemsize = 0,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Probe_init,
    .tp_dealloc = (destructor)Probe_dealloc,
    .tp_methods = Probe_methods,
};

/* Holds(probes, tenant_of, names, micros, tenant_kind, self_name): holds() of
   gateway/core/relations/index.py in one C call. probes maps a resource kind
   to its Probe, tenant_of a tenant id to its index in the snapshot, names is
   the snapshot's relation names (at most 64), micros turns an instant into
   microseconds since the epoch (snapshot.micros; a datetime in UTC, as
   parse_instant and the clock give them, is counted here: utc_micros). */
typedef struct {
    PyObject_HEAD
    PyObject *probes;
    PyObject *tenant_of;
    PyObject *names;
    PyObject *micros;
    PyObject *tenant_kind;
    PyObject *self_name;
    PyObject *masks;   /* name set -> its bit set over names, for the few sets asked */
    PyObject *last_at; /* the last instant asked about, and its microseconds */
    int64_t last_us;
    vectorcallfunc vectorcall;
} HoldsObject;

#define MAX_MASKS 1024

/* Days from 1970-01-01 to the proleptic Gregorian date y-m-d (any year of a
   datetime, 1 to 9999): H. Hinnant's days_from_civil, for years from 1 on
   (a year counted from March is 0 or more, so its era is a plain quotient). */
static int64_t
days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    const int64_t era = y / 400;
    const int64_t yoe = y - era * 400;                           /* [0, 399] */
    const int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1; /* [0, 365] */
    const int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;   /* [0, 146096] */
    return era * 146097 + doe - 719468;
}

/* snapshot.micros(at) without a Python call where ``at`` is a datetime (not
   a subclass) whose tzinfo is datetime.UTC: its fields are the instant.
   0 with *us set; 1 where it is anything else (the caller asks micros). */
static int
utc_micros(PyObject *at, int64_t *us)
{
    if (!PyDateTime_CheckExact(at) || !((PyDateTime_DateTime *)at)->hastzinfo ||
        PyDateTime_DATE_GET_TZINFO(at) != PyDateTime_TimeZone_UTC) {
        return 1;
    }
    const int64_t days = days_from_civil(PyDateTime_GET_YEAR(at), PyDateTime_GET_MONTH(at),
                                         PyDateTime_GET_DAY(at));
    const int64_t seconds = days * 86400 + PyDateTime_DATE_GET_HOUR(at) * 3600 +
                            PyDateTime_DATE_GET_MINUTE(at) * 60 +
                            PyDateTime_DATE_GET_SECOND(at);
    *us = seconds * 1000000 + PyDateTime_DATE_GET_MICROSECOND(at);
    return 0;
}

static void
Holds_dealloc(HoldsObject *self)
{
    Py_XDECREF(self->probes);
    Py_XDECREF(self->tenant_of);
    Py_XDECREF(self->names);
    Py_XDECREF(self->micros);
    Py_XDECREF(self->tenant_kind);
    Py_XDECREF(self->self_name);
    Py_XDECREF(self->masks);
    Py_XDECREF(self->last_at);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The bit set of the snapshot's names that are in ``names``; -1 on error. */
static int
wanted_of(HoldsObject *self, PyObject *names, uint64_t *wanted)
{
    PyObject *known = PyDict_GetItemWithError(self->masks, names);
    if (known != NULL) {
        *wanted = PyLong_AsUnsignedLongLong(known);
        return (*wanted == (uint64_t)-1 && PyErr_Occurred()) ? -1 : 0;
    }
    int hashable = 1;
    if (PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_TypeError)) {
            return -1;
        }
        PyErr_Clear(); /* an unhashable set: answered, not remembered */
        hashable = 0;
    }
    uint64_t bits = 0;
    Py_ssize_t count = PyTuple_GET_SIZE(self->names);
    for (Py_ssize_t i = 0; i < count && i < 64; i++) {
        int in = PySequence_Contains(names, PyTuple_GET_ITEM(self->names, i));
        if (in < 0) {
            return -1;
        }
        if (in) {
            bits |= (uint64_t)1 << i;
        }
    }
    if (hashable && PyDict_GET_SIZE(self->masks) < MAX_MASKS) {
        PyObject *value = PyLong_FromUnsignedLongLong(bits);
        if (value == NULL) {
            return -1;
        }
        int failed = PyDict_SetItem(self->masks, names, value);
        Py_DECREF(value);
        if (failed) {
            return -1;
        }
    }
    *wanted = bits;
    return 0;
}

static PyObject *
Holds_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    HoldsObject *self = (HoldsObject *)callable;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs != 5 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0)) {
        PyErr_SetString(PyExc_TypeError, "holds(kind, resource_id, tenant, names, at)");
        return NULL;
    }
    PyObject *kind = args[0], *rid = args[1], *tenant = args[2], *names = args[3];
    PyObject *at = args[4];

    PyObject *probe = PyDict_GetItemWithError(self->probes, kind);
    if (probe == NULL) {
        if (PyErr_Occurred()) {
            return NULL;
        }
        int is_tenant = PyObject_RichCompareBool(kind, self->tenant_kind, Py_EQ);
        if (is_tenant <= 0) {
            if (is_tenant < 0) {
                return NULL;
            }
            Py_RETURN_NONE;
        }
        /* ("tenant", id) has relation "self" for the tenant itself only. */
        int same = PyObject_RichCompareBool(rid, tenant, Py_EQ);
        if (same < 0) {
            return NULL;
        }
        int granted = same ? PySequence_Contains(names, self->self_name) : 0;
        if (granted < 0) {
            return NULL;
        }
        if (granted) {
            return Py_NewRef(self->self_name);
        }
        Py_RETURN_NONE;
    }
    PyObject *index = PyDict_GetItemWithError(self->tenant_of, tenant);
    if (index == NULL) {
        if (PyErr_Occurred()) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    long t = PyLong_AsLong(index);
    if (t == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (!PyUnicode_Check(rid)) {
        PyErr_SetString(PyExc_TypeError, "holds: resource_id must be str");
        return NULL;
    }
    PyObject *encoded = NULL;
    Py_ssize_t n;
    const char *key = PyUnicode_AsUTF8AndSize(rid, &n);
    if (key == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) {
            return NULL;
        }
        /* A lone surrogate: the snapshot's own encoding (encode_id). */
        PyErr_Clear();
        encoded = PyUnicode_AsEncodedString(rid, "utf-8", "surrogatepass");
        if (encoded == NULL) {
            return NULL;
        }
        key = PyBytes_AS_STRING(encoded);
        n = PyBytes_GET_SIZE(encoded);
    }
    long found = -1;
    uint64_t wanted;
    if (n > ID_MAX) {
        goto done;
    }
    if (wanted_of(self, names, &wanted) < 0) {
        Py_XDECREF(encoded);
        return NULL;
    }
    /* Every check of one request asks with the same now; each record of a
       list at its own instant, in UTC (counted here, no call of micros). */
    if (at != self->last_at) {
        int64_t value;
        if (utc_micros(at, &value) != 0) {
            PyObject *us = PyObject_CallOneArg(self->micros, at);
            if (us == NULL) {
                Py_XDECREF(encoded);
                return NULL;
            }
            value = PyLong_AsLongLong(us);
            Py_DECREF(us);
            if (value == -1 && PyErr_Occurred()) {
                Py_XDECREF(encoded);
                return NULL;
            }
        }
        Py_XSETREF(self->last_at, Py_NewRef(at));
        self->last_us = value;
    }
    found = probe_find((ProbeObject *)probe, (const unsigned char *)key, n, t, wanted,
                       self->last_us);
done:
    Py_XDECREF(encoded);
    if (found < 0) {
        Py_RETURN_NONE;
    }
    return Py_NewRef(PyTuple_GET_ITEM(self->names, found));
}

static int
Holds_init(HoldsObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"probes", "tenant_of", "names", "micros", "tenant_kind",
                             "self_name", NULL};
    PyObject *probes, *tenant_of, *names, *micros, *tenant_kind, *self_name;
    if (self->probes != NULL) {
        PyErr_SetString(PyExc_TypeError, "a Holds is initialised once");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!O!O!OUU", kwlist, &PyDict_Type, &probes,
                                     &PyDict_Type, &tenant_of, &PyTuple_Type, &names, &micros,
                                     &tenant_kind, &self_name)) {
        return -1;
    }
    if (PyTuple_GET_SIZE(names) > 64) {
        PyErr_SetString(PyExc_ValueError, "Holds: more than 64 relation names");
        return -1;
    }
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(probes, &pos, &key, &value)) {
        if (!PyObject_TypeCheck(value, &ProbeType)) {
            PyErr_SetString(PyExc_TypeError, "Holds: probes must map kinds to Probe");
            return -1;
        }
    }
    /* Copies: what the lookup reads cannot change under it. */
    self->probes = PyDict_Copy(probes);
    self->tenant_of = PyDict_Copy(tenant_of);
    self->masks = PyDict_New();
    if (self->probes == NULL || self->tenant_of == NULL || self->masks == NULL) {
        return -1;
    }
    self->names = Py_NewRef(names);
    self->micros = Py_NewRef(micros);
    self->tenant_kind = Py_NewRef(tenant_kind);
    self->self_name = Py_NewRef(self_name);
    self->last_at = NULL;
    self->vectorcall = Holds_vectorcall;
    return 0;
}

static PyTypeObject HoldsType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "gateway.core._native.Holds",
    .tp_doc = "Holds(probes, tenant_of, names, micros, tenant_kind, self_name): "
              "holds(kind, resource_id, tenant, names, at) in C",
    .tp_basicsize = sizeof(HoldsObject),
    .tp_itemsize = 0,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(HoldsObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Holds_init,
    .tp_dealloc = (destructor)Holds_dealloc,
};

/* 1 when ``value`` is 18 ASCII digits whose GS1 check digit is right, 0 when
   not, -1 on error (not a str): is_valid_gsrn of gateway/core/identifiers.py. */
static int
gsrn_ok(PyObject *value)
{
    if (!PyUnicode_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "a GSRN is a str");
        return -1;
    }
    if (PyUnicode_GET_LENGTH(value) != 18 || !PyUnicode_IS_ASCII(value)) {
        return 0;
    }
    const unsigned char *d = PyUnicode_1BYTE_DATA(value);
    unsigned int sum = 0;
    for (int i = 0; i < 18; i++) {
        if (d[i] < '0' || d[i] > '9') {
            return 0;
        }
        /* weight 1 for the check digit (the last) and every other one from it */
        sum += (unsigned int)(d[i] - '0') * ((17 - i) % 2 ? 3u : 1u);
    }
    return sum % 10 == 0;
}

static PyObject *
is_valid_gsrn(PyObject *module, PyObject *value)
{
    (void)module;
    int ok = gsrn_ok(value);
    if (ok < 0) {
        return NULL;
    }
    return PyBool_FromLong(ok);
}

static PyObject *
is_valid_ean(PyObject *module, PyObject *value)
{
    (void)module;
    int ok = gsrn_ok(value);
    if (ok < 0) {
        return NULL;
    }
    /* GS1 Belgium and Luxembourg's prefix (D2) */
    const unsigned char *d = ok ? PyUnicode_1BYTE_DATA(value) : NULL;
    return PyBool_FromLong(ok && d[0] == '5' && d[1] == '4');
}

int
meter_serial_ok(PyObject *value)
{
    Py_ssize_t n = PyUnicode_GET_LENGTH(value);
    if (n < 6 || n > 20 || !PyUnicode_IS_ASCII(value)) {
        return 0;
    }
    const unsigned char *d = PyUnicode_1BYTE_DATA(value);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!((d[i] >= '0' && d[i] <= '9') || (d[i] >= 'A' && d[i] <= 'Z'))) {
            return 0;
        }
    }
    return 1;
}

/* is_valid_meter_serial of gateway/core/identifiers.py: 6 to 20 of 0-9, A-Z. */
static PyObject *
is_valid_meter_serial(PyObject *module, PyObject *value)
{
    (void)module;
    if (!PyUnicode_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "a meter serial is a str");
        return NULL;
    }
    return PyBool_FromLong(meter_serial_ok(value));
}

/* --- the columnar push's values arrays (gateway/core/push/scan.py) -------- */

static inline int
is_json_ws(Py_UCS4 c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* _CUT's class: what numbers, commas and JSON's white space are made of,
   by a table (the scan of a values array, hundreds of characters a
   meter-day, is cut_values' inner loop). */
const unsigned char cut_class_byte[256] = {
    ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1,
    ['7'] = 1, ['8'] = 1, ['9'] = 1, ['.'] = 1, [','] = 1, ['e'] = 1, ['E'] = 1,
    ['+'] = 1, ['-'] = 1, [' '] = 1, ['\t'] = 1, ['\n'] = 1, ['\r'] = 1,
};

static inline int
in_cut_class(Py_UCS4 c)
{
    return c < 256 && cut_class_byte[c];
}

/* cut_values(text) -> list: _CUT.split(text) of scan.py, where _CUT is
   '"values"[ \t\n\r]*:[ \t\n\r]*(\[[0-9.,eE+\- \t\n\r]*\])': the text between
   the matches and each match's array, alternately, leftmost matches first. */
static PyObject *
cut_values(PyObject *module, PyObject *text)
{
    (void)module;
    if (!PyUnicode_Check(text)) {
        PyErr_SetString(PyExc_TypeError, "cut_values: text must be str");
        return NULL;
    }
    int kind = PyUnicode_KIND(text);
    const void *data = PyUnicode_DATA(text);
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    static const char needle[] = "\"values\"";
    const Py_ssize_t m = 8;
    PyObject *out = PyList_New(0);
    if (out == NULL) {
        return NULL;
    }
    Py_ssize_t last = 0, i = 0;
    while (i + m <= n) {
        if (kind == PyUnicode_1BYTE_KIND) {
            /* The needle starts with a quote: jump to the next one. */
            const char *q = memchr((const char *)data + i, '"', (size_t)(n - m + 1 - i));
            if (q == NULL) {
                break;
            }
            i = q - (const char *)data;
        }
        Py_ssize_t k;
        for (k = 0; k < m && PyUnicode_READ(kind, data, i + k) == (Py_UCS4)needle[k]; k++) {
        }
        if (k < m) {
            i++;
            continue;
        }
        Py_ssize_t j = i + m;
        while (j < n && is_json_ws(PyUnicode_READ(kind, data, j))) {
            j++;
        }
        if (j >= n || PyUnicode_READ(kind, data, j) != ':') {
            i++;
            continue;
        }
        j++;
        while (j < n && is_json_ws(PyUnicode_READ(kind, data, j))) {
            j++;
        }
        if (j >= n || PyUnicode_READ(kind, data, j) != '[') {
            i++;
            continue;
        }
        Py_ssize_t e = j + 1;
        if (kind == PyUnicode_1BYTE_KIND) {
            const unsigned char *bytes = (const unsigned char *)data;
            while (e < n && cut_class_byte[bytes[e]]) {
                e++;
            }
        }
        else {
            while (e < n && in_cut_class(PyUnicode_READ(kind, data, e))) {
                e++;
            }
        }
        if (e >= n || PyUnicode_READ(kind, data, e) != ']') {
            i++;
            continue;
        }
        PyObject *before = PyUnicode_Substring(text, last, i);
        PyObject *array = before ? PyUnicode_Substring(text, j, e + 1) : NULL;
        if (array == NULL || PyList_Append(out, before) < 0 || PyList_Append(out, array) < 0) {
            Py_XDECREF(before);
            Py_XDECREF(array);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(before);
        Py_DECREF(array);
        last = i = e + 1;
    }
    PyObject *after = PyUnicode_Substring(text, last, n);
    if (after == NULL || PyList_Append(out, after) < 0) {
        Py_XDECREF(after);
        Py_DECREF(out);
        return NULL;
    }
    Py_DECREF(after);
    return out;
}

/* A digit, JSON's white space: the runs of a values array, by a table. */
const unsigned char digit_byte[256] = {
    ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1,
    ['7'] = 1, ['8'] = 1, ['9'] = 1,
};
const unsigned char json_ws_byte[256] = {[' '] = 1, ['\t'] = 1, ['\n'] = 1, ['\r'] = 1};

/* The count of its numbers when ``s[0:n]`` is a non-empty JSON array (RFC
   8259) of numbers that are finite as floats, 0 when not, -1 on error. A number without an exponent
   and with at most 308 digits before its point is below 1e309 and finite as
   it stands; any other is read as Python reads a float (correctly rounded,
   whatever the locale) and must not overflow.

   The text ends with ']' (checked first), and every step below passes only
   bytes that are not ']' (a digit, white space, '-', '.', 'e', '+', ','):
   so no read reaches past s[n - 1], and no run needs a bound of its own. */
Py_ssize_t
finite_number_array(const char *s, Py_ssize_t n)
{
    const unsigned char *b = (const unsigned char *)s;
    Py_ssize_t i = 0, count = 0;
    if (n < 2 || b[0] != '[' || b[n - 1] != ']') {
        return 0;
    }
    i = 1;
    for (;; count++) {
        while (json_ws_byte[b[i]]) {
            i++;
        }
        Py_ssize_t start = i;
        if (b[i] == '-') {
            i++;
        }
        Py_ssize_t int_start = i;
        if (b[i] == '0') {
            i++;
        }
        else if (b[i] >= '1' && b[i] <= '9') {
            i++;
            while (digit_byte[b[i]]) {
                i++;
            }
        }
        else {
            return 0; /* no number where one must be (an empty array too) */
        }
        Py_ssize_t int_digits = i - int_start;
        if (b[i] == '.') {
            i++;
            Py_ssize_t frac = i;
            while (digit_byte[b[i]]) {
                i++;
            }
            if (i == frac) {
                return 0;
            }
        }
        int exponent = 0;
        if (b[i] == 'e' || b[i] == 'E') {
            exponent = 1;
            i++;
            if (b[i] == '+' || b[i] == '-') {
                i++;
            }
            Py_ssize_t digits = i;
            while (digit_byte[b[i]]) {
                i++;
            }
            if (i == digits) {
                return 0;
            }
        }
        if (exponent || int_digits > 308) {
            PyObject *number = PyBytes_FromStringAndSize(s + start, i - start);
            if (number == NULL) {
                return -1;
            }
            double value = PyOS_string_to_double(PyBytes_AS_STRING(number), NULL, NULL);
            Py_DECREF(number);
            if (value == -1.0 && PyErr_Occurred()) {
                return -1;
            }
            if (Py_IS_INFINITY(value)) {
                return 0;
            }
        }
        while (json_ws_byte[b[i]]) {
            i++;
        }
        if (b[i] == ',') {
            i++;
            continue;
        }
        /* The closing bracket, and the text's last byte (s[n - 1] is one). */
        return i == n - 1 ? count + 1 : 0;
    }
}

/* finite_number_counts(arrays) -> list | None: finite_number_counts_reference
   of scan.py, each array's count of values when every one is a non-empty
   JSON array of numbers finite as floats (finite_number_array), else None. */
static PyObject *
finite_number_counts(PyObject *module, PyObject *arrays)
{
    (void)module;
    if (!PyList_Check(arrays)) {
        PyErr_SetString(PyExc_TypeError, "finite_number_counts: a list of str");
        return NULL;
    }
    Py_ssize_t total = PyList_GET_SIZE(arrays);
    PyObject *counts = PyList_New(total);
    if (counts == NULL) {
        return NULL;
    }
    for (Py_ssize_t k = 0; k < total; k++) {
        PyObject *array = PyList_GET_ITEM(arrays, k);
        if (!PyUnicode_Check(array)) {
            Py_DECREF(counts);
            PyErr_SetString(PyExc_TypeError, "finite_number_counts: a list of str");
            return NULL;
        }
        Py_ssize_t found = 0;
        if (PyUnicode_IS_ASCII(array)) {
            found = finite_number_array((const char *)PyUnicode_1BYTE_DATA(array),
                                        PyUnicode_GET_LENGTH(array));
        }
        if (found <= 0) {
            Py_DECREF(counts);
            if (found < 0) {
                return NULL;
            }
            Py_RETURN_NONE;
        }
        PyObject *count = PyLong_FromSsize_t(found);
        if (count == NULL) {
            Py_DECREF(counts);
            return NULL;
        }
        PyList_SET_ITEM(counts, k, count);
    }
    return counts;
}

static PyMethodDef module_methods[] = {
    {"cut_values", cut_values, METH_O, "_CUT.split(text) of gateway/core/push/scan.py."},
    {"finite_number_counts", finite_number_counts, METH_O,
     "Each array's count of values, when every one is a non-empty JSON array of numbers "
     "finite as floats; else None."},
    {"is_valid_meter_serial", is_valid_meter_serial, METH_O,
     "A meter serial: 6 to 20 of 0-9 and A-Z."},
    {"is_valid_gsrn", is_valid_gsrn, METH_O, "An 18-digit GSRN with a correct check digit."},
    {"is_valid_ean", is_valid_ean, METH_O, "A Belgian access point's EAN (prefix 54)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "gateway.core._native",
    .m_doc = "Native accelerators of the per-decision path (each has a Python reference).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC
PyInit__native(void)
{
    crc_init();
    PyDateTime_IMPORT;
    if (PyDateTimeAPI == NULL) {
        return NULL;
    }
    if (native_days_init() < 0 || PyType_Ready(&ProbeType) < 0 ||
        PyType_Ready(&HoldsType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&native_module);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(m, "Probe", (PyObject *)&ProbeType) < 0 ||
        PyModule_AddObjectRef(m, "Holds", (PyObject *)&HoldsType) < 0 ||
        PyModule_AddIntConstant(m, "ID_MAX", ID_MAX) < 0 ||
        PyModule_AddFunctions(m, native_wire_methods) < 0 ||
        PyModule_AddFunctions(m, native_record_methods) < 0 ||
        PyModule_AddFunctions(m, native_days_methods) < 0 ||
        PyModule_AddFunctions(m, native_runs_methods) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
