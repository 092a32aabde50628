/*
 * The columnar push's common meter-day in C, part of gateway.core._native.
 *
 *   route_days(context, days, index) -> (index, readings)
 *
 * From ``days[index]`` on, each meter-day that ``_route_day`` of
 * gateway/core/push/days.py (the specification) would send whole to its
 * owner is sent the same way here, with the same effects on the router's
 * state (its key marked seen, the owner's span kept, the meter-day's text
 * appended to the owner's part, the part's readings counted). The first
 * meter-day that is anything else is left to ``_route_day``: the answer is
 * its index and the readings of those before it.
 *
 * "Anything else" is decided before any effect but the span's cache (which
 * ``_route_day`` would fill the same way): a member the format does not
 * define, a ``values`` that is not scan_days' pair of its text and count, a
 * malformed meter serial, an instant, OBIS code or quality string that the
 * router's caches do not hold yet (``_route_day`` reads and keeps it), a
 * bad quality code, a unit that is not the code's, an interval or count out
 * of range, a reading in the future, a ``via`` or an ``ean``, a key
 * (meter and register) seen before in the batch, an owner that changes
 * within the day, no owner, a label naming another, airplane mode, or text
 * that is not plain ASCII. So every outcome but "the whole day to its
 * owner" is reached in Python only; C never quarantines.
 *
 * context is the tuple built by ``_native_days`` in days.py: (members,
 * starts, obis, qualities, seen, owners, parts, readings, latest,
 * max_values, max_interval, probe, owner relation, airplane relation,
 * wildcard, lo, hi, tenants). tests/core/push/test_days_native.py routes
 * generated batches both ways and compares everything.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "_native.h"

enum { K_VALUES, K_METER, K_START, K_INTERVAL, K_OBIS, K_UNIT, K_QUALITY, K_OPERATOR, K_VIA,
       K_EAN, K_COUNT };
static const char *key_names[K_COUNT] = {"values", "meter", "start", "interval", "obis",
                                         "unit", "quality", "operator", "via", "ean"};
static PyObject *keys[K_COUNT];

int
native_days_init(void)
{
    for (int i = 0; i < K_COUNT; i++) {
        keys[i] = PyUnicode_InternFromString(key_names[i]);
        if (keys[i] == NULL) {
            return -1;
        }
    }
    return 0;
}

typedef struct {
    PyObject *members, *starts, *obis, *qualities, *seen, *owners, *parts, *readings;
    long long latest, max_values, max_interval;
    ProbeObject *probe;
    long long owner_rel, airplane_rel, wildcard, lo, hi;
    PyObject *tenants;
} Context;

/* The member ``k`` of ``day`` (borrowed), NULL when absent (or on error:
   the caller checks PyErr_Occurred where it matters). */
static inline PyObject *
member(PyObject *day, int k)
{
    return PyDict_GetItemWithError(day, keys[k]);
}

/* A Python int that fits, or 0 (and no error) where it does not. */
static int
as_ll(PyObject *value, long long *out)
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

/* An empty tuple or frozenset: _quality's "no bad code". */
static int
empty(PyObject *value)
{
    return (PyTuple_CheckExact(value) && PyTuple_GET_SIZE(value) == 0) ||
           (PyFrozenSet_CheckExact(value) && PySet_GET_SIZE(value) == 0);
}

static void
put(char **at, PyObject *text)
{
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    memcpy(*at, PyUnicode_1BYTE_DATA(text), (size_t)n);
    *at += n;
}

static void
put_c(char **at, const char *text)
{
    size_t n = strlen(text);
    memcpy(*at, text, n);
    *at += n;
}

/* _emit's text of a whole meter-day (no ean): every piece plain ASCII. */
static PyObject *
day_text(PyObject *meter, PyObject *stamp, long long interval, PyObject *obis, PyObject *unit,
         PyObject *codes, PyObject *raw)
{
    char digits[24];
    int nd = snprintf(digits, sizeof digits, "%lld", interval);
    if (nd < 0 || (size_t)nd >= sizeof digits) {
        PyErr_SetString(PyExc_ValueError, "route_days: interval");
        return NULL;
    }
    static const char *const fixed[] = {"{\"meter\":\"", "\",\"start\":", ",\"interval\":",
                                        ",\"obis\":\"", "\",\"unit\":\"", "\",\"quality\":\"",
                                        "\",\"values\":", "}"};
    Py_ssize_t total = nd + PyUnicode_GET_LENGTH(meter) + PyUnicode_GET_LENGTH(stamp) +
                       PyUnicode_GET_LENGTH(obis) + PyUnicode_GET_LENGTH(unit) +
                       PyUnicode_GET_LENGTH(codes) + PyUnicode_GET_LENGTH(raw);
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) {
        total += (Py_ssize_t)strlen(fixed[i]);
    }
    PyObject *text = PyUnicode_New(total, 127);
    if (text == NULL) {
        return NULL;
    }
    char *at = (char *)PyUnicode_1BYTE_DATA(text);
    put_c(&at, fixed[0]);
    put(&at, meter);
    put_c(&at, fixed[1]);
    put(&at, stamp);
    put_c(&at, fixed[2]);
    memcpy(at, digits, (size_t)nd);
    at += nd;
    put_c(&at, fixed[3]);
    put(&at, obis);
    put_c(&at, fixed[4]);
    put(&at, unit);
    put_c(&at, fixed[5]);
    put(&at, codes);
    put_c(&at, fixed[6]);
    put(&at, raw);
    put_c(&at, fixed[7]);
    return text;
}

/* The owner's span of ``meter`` around ``first`` (borrowed from the owners
   cache, which it fills as _route_day does), or NULL with an error set. */
static PyObject *
owner_span(Context *c, PyObject *meter, long long first)
{
    PyObject *span = PyDict_GetItemWithError(c->owners, meter);
    if (span == NULL && PyErr_Occurred()) {
        return NULL;
    }
    long long lo, hi;
    if (span != NULL && PyTuple_CheckExact(span) && PyTuple_GET_SIZE(span) == 4 &&
        as_ll(PyTuple_GET_ITEM(span, 0), &lo) && as_ll(PyTuple_GET_ITEM(span, 1), &hi) &&
        lo <= first && first < hi) {
        return span;
    }
    int64_t slo = c->lo, shi = c->hi;
    long long t;
    int airplane;
    probe_span(c->probe, PyUnicode_1BYTE_DATA(meter), PyUnicode_GET_LENGTH(meter), first,
               c->owner_rel, c->airplane_rel, c->wildcard, &slo, &shi, &t, &airplane);
    PyObject *owner = Py_None;
    if (t >= 0) {
        if (t >= PyTuple_GET_SIZE(c->tenants)) {
            /* A tenant past the snapshot's list: the reference's IndexError. */
            PyErr_SetString(PyExc_IndexError, "route_days: tenant index out of range");
            return NULL;
        }
        owner = PyTuple_GET_ITEM(c->tenants, t);
    }
    PyObject *made = Py_BuildValue("(LLOO)", (long long)slo, (long long)shi, owner,
                                   airplane ? Py_True : Py_False);
    if (made == NULL || PyDict_SetItem(c->owners, meter, made) < 0) {
        Py_XDECREF(made);
        return NULL;
    }
    Py_DECREF(made); /* the cache holds it */
    return made;
}

/* 1: meter-day ``day`` went whole to its owner (``*taken`` readings), 0:
   left to _route_day, -1: an error. */
static int
route_one(Context *c, PyObject *day, long long *taken)
{
    if (!PyDict_CheckExact(day)) {
        return 0;
    }
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    while (PyDict_Next(day, &pos, &k, &v)) {
        if (!PyUnicode_CheckExact(k)) {
            return 0;
        }
        int in = PySet_Contains(c->members, k);
        if (in <= 0) {
            return in; /* SECURITY: D1, only the format's members reach a tenant */
        }
    }
    PyObject *m[K_COUNT];
    for (int i = 0; i < K_COUNT; i++) {
        m[i] = member(day, i);
        if (m[i] == NULL && PyErr_Occurred()) {
            return -1;
        }
    }
    PyObject *values = m[K_VALUES], *meter = m[K_METER], *stamp = m[K_START];
    PyObject *obis = m[K_OBIS], *unit = m[K_UNIT], *quality = m[K_QUALITY];
    PyObject *label = m[K_OPERATOR];
    if ((m[K_VIA] != NULL && m[K_VIA] != Py_None) || (m[K_EAN] != NULL && m[K_EAN] != Py_None)) {
        return 0;
    }
    if (label == Py_None) {
        label = NULL;
    }
    if (label != NULL && !PyUnicode_CheckExact(label)) {
        return 0;
    }
    /* values: scan_days' (text as posted, count of finite numbers) */
    long long n, interval;
    if (values == NULL || !PyTuple_CheckExact(values) || PyTuple_GET_SIZE(values) != 2) {
        return 0;
    }
    PyObject *raw = PyTuple_GET_ITEM(values, 0);
    if (!PyUnicode_CheckExact(raw) || !PyUnicode_IS_ASCII(raw) ||
        !as_ll(PyTuple_GET_ITEM(values, 1), &n) || n < 1 || n > c->max_values) {
        return 0;
    }
    if (meter == NULL || !PyUnicode_CheckExact(meter) || !meter_serial_ok(meter)) {
        return 0;
    }
    if (m[K_INTERVAL] == NULL || !as_ll(m[K_INTERVAL], &interval) || interval < 1 ||
        interval > c->max_interval) {
        return 0;
    }
    /* the caches _route_day fills: start, OBIS code, quality string */
    if (stamp == NULL || !PyUnicode_CheckExact(stamp) || obis == NULL ||
        !PyUnicode_CheckExact(obis) || !PyUnicode_IS_ASCII(obis) || quality == NULL ||
        !PyUnicode_CheckExact(quality) || PyUnicode_GET_LENGTH(quality) != 2 * n ||
        unit == NULL || !PyUnicode_CheckExact(unit) || !PyUnicode_IS_ASCII(unit)) {
        return 0;
    }
    PyObject *start = PyDict_GetItemWithError(c->starts, stamp);
    PyObject *coded_obis = start ? PyDict_GetItemWithError(c->obis, obis) : NULL;
    PyObject *coded = coded_obis ? PyDict_GetItemWithError(c->qualities, quality) : NULL;
    if (coded == NULL) {
        return PyErr_Occurred() ? -1 : 0;
    }
    long long first;
    if (!PyTuple_CheckExact(start) || PyTuple_GET_SIZE(start) != 3 ||
        !as_ll(PyTuple_GET_ITEM(start, 0), &first) ||
        !PyUnicode_CheckExact(PyTuple_GET_ITEM(start, 2)) ||
        !PyUnicode_IS_ASCII(PyTuple_GET_ITEM(start, 2)) || !PyTuple_CheckExact(coded_obis) ||
        PyTuple_GET_SIZE(coded_obis) != 2 || !PyUnicode_CheckExact(PyTuple_GET_ITEM(coded_obis, 0)) ||
        !PyAnySet_Check(PyTuple_GET_ITEM(coded_obis, 1)) ||
        !PyTuple_CheckExact(coded) || PyTuple_GET_SIZE(coded) != 2 ||
        !PyUnicode_CheckExact(PyTuple_GET_ITEM(coded, 0)) ||
        !PyUnicode_IS_ASCII(PyTuple_GET_ITEM(coded, 0)) || !empty(PyTuple_GET_ITEM(coded, 1))) {
        return 0;
    }
    /* D5: a unit of the code's quantity (each of obis_units' is one of UNITS) */
    int fits = PySet_Contains(PyTuple_GET_ITEM(coded_obis, 1), unit);
    if (fits <= 0) {
        return fits;
    }
    long long step = interval * 1000000LL;
    long long last = first + (n - 1) * step; /* |first| < 2**62, (n - 1) * step < 2**47 */
    if (first < -(1LL << 62) || first > (1LL << 62) || last > c->latest) {
        return 0;
    }
    PyObject *key = PyUnicode_FromFormat("%U %U", meter, PyTuple_GET_ITEM(coded_obis, 0));
    if (key == NULL) {
        return -1;
    }
    int seen = PyDict_Contains(c->seen, key);
    if (seen != 0) {
        Py_DECREF(key);
        return seen < 0 ? -1 : 0;
    }
    PyObject *span = owner_span(c, meter, first);
    if (span == NULL) {
        Py_DECREF(key);
        return -1;
    }
    long long hi;
    PyObject *owner = PyTuple_GET_ITEM(span, 2);
    if (!as_ll(PyTuple_GET_ITEM(span, 1), &hi) || hi <= last || owner == Py_None ||
        !PyUnicode_CheckExact(owner) || PyTuple_GET_ITEM(span, 3) != Py_False) {
        Py_DECREF(key); /* cut within the day, no owner, airplane mode (D5) */
        return 0;
    }
    if (label != NULL) {
        int same = PyUnicode_Compare(label, owner);
        if (same == -1 && PyErr_Occurred()) {
            Py_DECREF(key);
            return -1;
        }
        if (same != 0) {
            Py_DECREF(key); /* SECURITY: D1, the HES meant it for someone else */
            return 0;
        }
    }
    /* The whole day to its owner. */
    PyObject *mark = Py_BuildValue("(LLL)", first, step, n);
    int failed = mark == NULL || PyDict_SetItem(c->seen, key, mark) < 0;
    Py_XDECREF(mark);
    Py_DECREF(key);
    if (failed) {
        return -1;
    }
    PyObject *text = day_text(meter, PyTuple_GET_ITEM(start, 2), interval, obis, unit,
                              PyTuple_GET_ITEM(coded, 0), raw);
    if (text == NULL) {
        return -1;
    }
    PyObject *part = PyDict_GetItemWithError(c->parts, owner);
    PyObject *count = NULL;
    if (part == NULL) {
        PyObject *zero = PyLong_FromLong(0);
        part = PyErr_Occurred() || zero == NULL ? NULL : PyList_New(0);
        failed = part == NULL || PyDict_SetItem(c->parts, owner, part) < 0 ||
                 PyDict_SetItem(c->readings, owner, zero) < 0;
        Py_XDECREF(part); /* the dict holds it */
        Py_XDECREF(zero);
        if (failed) {
            Py_DECREF(text);
            return -1;
        }
    }
    failed = PyList_Append(part, text) < 0;
    Py_DECREF(text);
    PyObject *had = failed ? NULL : PyDict_GetItemWithError(c->readings, owner);
    PyObject *more = had == NULL ? NULL : PyLong_FromLongLong(n);
    count = more == NULL ? NULL : PyNumber_Add(had, more);
    Py_XDECREF(more);
    if (count == NULL || PyDict_SetItem(c->readings, owner, count) < 0) {
        Py_XDECREF(count);
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_KeyError, "route_days: a part without its readings");
        }
        return -1;
    }
    Py_DECREF(count);
    *taken = n;
    return 1;
}

static int
context_of(PyObject *t, Context *c)
{
    if (!PyTuple_CheckExact(t) || PyTuple_GET_SIZE(t) != 18) {
        PyErr_SetString(PyExc_TypeError, "route_days: context must be an 18-tuple");
        return -1;
    }
    PyObject **i = &PyTuple_GET_ITEM(t, 0);
    c->members = i[0];
    c->starts = i[1];
    c->obis = i[2];
    c->qualities = i[3];
    c->seen = i[4];
    c->owners = i[5];
    c->parts = i[6];
    c->readings = i[7];
    if (!PyAnySet_Check(c->members) || !PyDict_CheckExact(c->starts) ||
        !PyDict_CheckExact(c->obis) || !PyDict_CheckExact(c->qualities) ||
        !PyDict_CheckExact(c->seen) || !PyDict_CheckExact(c->owners) ||
        !PyDict_CheckExact(c->parts) || !PyDict_CheckExact(c->readings) ||
        !PyObject_TypeCheck(i[11], &ProbeType) || !PyTuple_CheckExact(i[17])) {
        PyErr_SetString(PyExc_TypeError, "route_days: a context member of the wrong type");
        return -1;
    }
    c->probe = (ProbeObject *)i[11];
    c->tenants = i[17];
    long long *numbers[] = {&c->latest, &c->max_values, &c->max_interval, &c->owner_rel,
                            &c->airplane_rel, &c->wildcard, &c->lo, &c->hi};
    const int at[] = {8, 9, 10, 12, 13, 14, 15, 16};
    for (int j = 0; j < 8; j++) {
        *numbers[j] = PyLong_AsLongLong(i[at[j]]);
        if (*numbers[j] == -1 && PyErr_Occurred()) {
            return -1;
        }
    }
    return 0;
}

static PyObject *
route_days(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 3 || !PyList_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "route_days(context, days: list, index)");
        return NULL;
    }
    Context c;
    if (context_of(args[0], &c) < 0) {
        return NULL;
    }
    Py_ssize_t index = PyLong_AsSsize_t(args[2]);
    if (index == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (index < 0) {
        PyErr_SetString(PyExc_ValueError, "route_days: a negative index");
        return NULL;
    }
    PyObject *days = args[1];
    long long readings = 0;
    while (index < PyList_GET_SIZE(days)) {
        PyObject *day = PyList_GET_ITEM(days, index);
        long long taken = 0;
        Py_INCREF(day);
        int routed = route_one(&c, day, &taken);
        Py_DECREF(day);
        if (routed < 0) {
            return NULL;
        }
        if (routed == 0) {
            break;
        }
        readings += taken;
        index++;
    }
    return Py_BuildValue("(nL)", index, readings);
}

PyMethodDef native_days_methods[] = {
    {"route_days", (PyCFunction)(void (*)(void))route_days, METH_FASTCALL,
     "route_days(context, days, index) -> (index, readings): the common meter-days of "
     "gateway/core/push/days.py's _route_day."},
    {NULL, NULL, 0, NULL},
};
