/*
 * The per-record push's run-wise routing in C, part of gateway.core._native.
 *
 *   route_runs(context, records) -> (runs, parts) | None
 *
 * Its specification is route_runs_reference of gateway/core/push/readings.py:
 * for every list of Reading structs, the same answer, None where it declines
 * and the same runs and parts (tenants in the same order) where it takes the
 * batch. tests/core/push/test_readings_runs.py runs its cases on both and
 * compares the two on generated batches.
 *
 * A batch is taken when it is meter after meter and no reading of it would be
 * quarantined: no EAN (null is none), every instant one the router accepts and
 * each spelt one way only, every OBIS code a known one spelt one way, each
 * unit its code's (D5), no register of a meter read twice at one instant, a
 * well-formed serial with one owner over all its readings and not in airplane
 * mode (D5), the routing hints alike over a meter's readings, a label naming
 * the owner (D1), a carrier well formed and not in airplane mode over them
 * (D5). Anything else answers None and the loop (route_each) decides reading
 * by reading: C never quarantines.
 *
 * The work is done in three passes, so that no Python code runs while a
 * member read from a record is held without a reference:
 *   1. each reading's instant and OBIS code, through the router's own
 *      functions (``instant``, ``obis``) once per distinct spelling;
 *   2. meter by meter: the checks above, each owner's part created in the
 *      order the loop creates it (a carrier's owner included, part or none);
 *   3. the parts filled, in batch order, a hinted run's readings through
 *      ``strip`` (the HES's routing hints never reach a tenant, D1).
 *
 * A member is read at its slot's offset, taken from the member descriptor the
 * context names, once that descriptor is proven an object slot of exactly the
 * context's type and the record an instance of exactly that type.
 *
 * context is the tuple built by ``_native_context`` in readings.py: (type,
 * UNSET, descriptors of ean, meter, obis, operator, timestamp, unit and via,
 * instant, obis, MALFORMED, strip, probe, owner relation, airplane relation,
 * wildcard, lo, hi, tenants).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "structmember.h"

#include "_native.h"

enum { F_EAN, F_METER, F_OBIS, F_OPERATOR, F_STAMP, F_UNIT, F_VIA, F_COUNT };

typedef struct {
    PyTypeObject *type;
    PyObject *unset;
    Py_ssize_t offset[F_COUNT];
    PyObject *instant, *obis, *strip;
    long long malformed;
    ProbeObject *probe;
    long long owner_rel, airplane_rel, wildcard, lo, hi;
    PyObject *tenants;
} Runs;

#define CONTEXT_SIZE 14

static int
runs_context(PyObject *t, Runs *c)
{
    if (!PyTuple_CheckExact(t) || PyTuple_GET_SIZE(t) != CONTEXT_SIZE) {
        PyErr_SetString(PyExc_TypeError, "route_runs: context must be a 14-tuple");
        return -1;
    }
    PyObject **i = &PyTuple_GET_ITEM(t, 0);
    if (!PyType_Check(i[0]) || !PyTuple_CheckExact(i[2]) || PyTuple_GET_SIZE(i[2]) != F_COUNT ||
        !PyCallable_Check(i[3]) || !PyCallable_Check(i[4]) || !PyCallable_Check(i[6]) ||
        !PyObject_TypeCheck(i[7], &ProbeType) || !PyTuple_CheckExact(i[13])) {
        PyErr_SetString(PyExc_TypeError, "route_runs: a context member of the wrong type");
        return -1;
    }
    c->type = (PyTypeObject *)i[0];
    c->unset = i[1];
    for (int f = 0; f < F_COUNT; f++) {
        PyObject *d = PyTuple_GET_ITEM(i[2], f);
        PyMemberDef *m = Py_IS_TYPE(d, &PyMemberDescr_Type)
                             ? ((PyMemberDescrObject *)d)->d_member : NULL;
        /* SECURITY: a slot of this very type holding an object, within the
           instance: the only offsets ever read from a record. */
        if (m == NULL || PyDescr_TYPE(d) != c->type || m->type != T_OBJECT_EX ||
            m->offset < (Py_ssize_t)sizeof(PyObject) ||
            m->offset + (Py_ssize_t)sizeof(PyObject *) > c->type->tp_basicsize) {
            PyErr_SetString(PyExc_TypeError, "route_runs: a member that is not an object slot");
            return -1;
        }
        c->offset[f] = m->offset;
    }
    c->instant = i[3];
    c->obis = i[4];
    c->strip = i[6];
    c->probe = (ProbeObject *)i[7];
    c->tenants = i[13];
    long long *numbers[] = {&c->malformed, &c->owner_rel, &c->airplane_rel, &c->wildcard,
                            &c->lo, &c->hi};
    const int at[] = {5, 8, 9, 10, 11, 12};
    for (int j = 0; j < 6; j++) {
        *numbers[j] = PyLong_AsLongLong(i[at[j]]);
        if (*numbers[j] == -1 && PyErr_Occurred()) {
            return -1;
        }
    }
    if (c->lo > c->hi) {
        PyErr_SetString(PyExc_ValueError, "route_runs: open ends out of order");
        return -1;
    }
    return 0;
}

/* A member of a record of the context's type (borrowed; NULL when unset). */
static inline PyObject *
field(const Runs *c, PyObject *record, int f)
{
    return *(PyObject **)((char *)record + c->offset[f]);
}

/* Two str with the same characters. */
static inline int
same_text(PyObject *a, PyObject *b)
{
    if (a == b) {
        return 1;
    }
    Py_ssize_t n = PyUnicode_GET_LENGTH(a);
    int kind = PyUnicode_KIND(a);
    return n == PyUnicode_GET_LENGTH(b) && kind == PyUnicode_KIND(b) &&
           memcmp(PyUnicode_DATA(a), PyUnicode_DATA(b), (size_t)n * (size_t)kind) == 0;
}

/* A routing hint as the parse leaves it: str, None or UNSET. */
static inline int
hint_ok(const Runs *c, PyObject *v)
{
    return v == c->unset || v == Py_None || PyUnicode_CheckExact(v);
}

/* Two hints alike, as ``==`` compares them (str, None, UNSET). */
static inline int
same_hint(PyObject *a, PyObject *b)
{
    return a == b || (a != NULL && b != NULL && PyUnicode_CheckExact(a) &&
                      PyUnicode_CheckExact(b) && same_text(a, b));
}

/* owner_span of records.py for ``serial`` (ASCII: a well-formed serial) at
   ``at``: the span's ends, the owner (borrowed, NULL for none) and airplane
   mode. -1 with an error set, else 0. */
static int
span_of(const Runs *c, PyObject *serial, int64_t at, int64_t *lo, int64_t *hi,
        PyObject **owner, int *airplane)
{
    *lo = c->lo;
    *hi = c->hi;
    if (probe_owner(c->probe, c->tenants, serial, at, c->owner_rel, c->airplane_rel,
                    c->wildcard, lo, hi, owner, airplane) < 0) {
        return -1;
    }
    if (*owner != NULL && !PyUnicode_CheckExact(*owner)) {
        PyErr_SetString(PyExc_TypeError, "route_runs: a tenant that is not a str");
        return -1;
    }
    return 0;
}

/* The part of ``owner`` in ``parts``, created (empty) where it is not yet:
   the router's setdefault. */
static int
part_of(PyObject *parts, PyObject *owner)
{
    PyObject *empty = PyList_New(0);
    if (empty == NULL) {
        return -1;
    }
    PyObject *had = PyDict_SetDefault(parts, owner, empty);
    Py_DECREF(empty);
    return had == NULL ? -1 : 0;
}

typedef struct {
    int64_t at, code;
} Key;

static int
key_order(const void *a, const void *b)
{
    const Key *x = a, *y = b;
    if (x->at != y->at) {
        return x->at < y->at ? -1 : 1;
    }
    return (x->code > y->code) - (x->code < y->code);
}

/* Whether the keys of a meter's readings are all distinct (no register read
   twice at one instant). In batch order they mostly rise: then it is known
   without sorting. */
static int
distinct(const Key *keys, Py_ssize_t n, Key *scratch)
{
    Py_ssize_t k = 1;
    while (k < n && key_order(&keys[k - 1], &keys[k]) < 0) {
        k++;
    }
    if (k >= n) {
        return 1;
    }
    memcpy(scratch, keys, (size_t)n * sizeof(Key));
    qsort(scratch, (size_t)n, sizeof(Key), key_order);
    for (k = 1; k < n; k++) {
        if (key_order(&scratch[k - 1], &scratch[k]) == 0) {
            return 0;
        }
    }
    return 1;
}

/* After a call into Python, which may have set a record's members: its
   code and unit read again (``*code``, ``*unit``, borrowed), and whether
   they, and the member ``f`` the call was given (``asked``), are still what
   the parse gives: str, ``asked`` unchanged. 0 where not: the batch is
   declined rather than routed on what the call saw. */
static int
read_again(const Runs *c, PyObject *r, int f, PyObject *asked, PyObject **code, PyObject **unit)
{
    PyObject *now = field(c, r, f);
    *code = field(c, r, F_OBIS);
    *unit = field(c, r, F_UNIT);
    return now != NULL && *code != NULL && *unit != NULL && PyUnicode_CheckExact(now) &&
           PyUnicode_CheckExact(*code) && PyUnicode_CheckExact(*unit) && same_text(now, asked);
}

/* Pass 1: each reading's key (its instant and its code's id), through the
   router's functions once per distinct spelling, and the unit checked against
   its code's (D5). 1: every reading passed, 0: one did not, -1: an error. */
static int
read_keys(const Runs *c, PyObject *records, Key *keys)
{
    PyObject *instants = PyDict_New(), *codes = PyDict_New(), *ids = PyDict_New();
    PyObject *values = PySet_New(NULL);
    int result = -1;
    if (instants == NULL || codes == NULL || ids == NULL || values == NULL) {
        goto done;
    }
    PyObject *last_code = NULL, *last_unit = NULL; /* borrowed, within the records */
    int64_t last_id = 0;
    Py_ssize_t count = PyTuple_GET_SIZE(records);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *r = PyTuple_GET_ITEM(records, i);
        if (!Py_IS_TYPE(r, c->type)) {
            result = 0;
            goto done;
        }
        PyObject *ean = field(c, r, F_EAN), *meter = field(c, r, F_METER);
        PyObject *stamp = field(c, r, F_STAMP), *code = field(c, r, F_OBIS);
        PyObject *unit = field(c, r, F_UNIT), *via = field(c, r, F_VIA);
        PyObject *label = field(c, r, F_OPERATOR);
        if (ean == NULL || meter == NULL || stamp == NULL || code == NULL || unit == NULL ||
            via == NULL || label == NULL || (ean != c->unset && ean != Py_None) ||
            !PyUnicode_CheckExact(meter) || !PyUnicode_CheckExact(stamp) ||
            !PyUnicode_CheckExact(code) || !PyUnicode_CheckExact(unit) || !hint_ok(c, via) ||
            !hint_ok(c, label)) {
            result = 0; /* an EAN is paired reading by reading, by the loop (D1) */
            goto done;
        }
        PyObject *at = PyDict_GetItemWithError(instants, stamp);
        if (at == NULL) {
            if (PyErr_Occurred()) {
                goto done;
            }
            Py_INCREF(stamp);
            at = PyObject_CallOneArg(c->instant, stamp);
            int failed = at == NULL || PyDict_SetItem(instants, stamp, at) < 0 ||
                         PySet_Add(values, at) < 0;
            Py_XDECREF(at); /* the dict holds it */
            /* The call ran Python code: what was read of the records before
               it is read again (the record itself is the tuple's). */
            last_code = last_unit = NULL;
            int same = !failed && read_again(c, r, F_STAMP, stamp, &code, &unit);
            Py_DECREF(stamp);
            if (failed) {
                goto done;
            }
            if (!same) {
                result = 0;
                goto done;
            }
        }
        long long micros;
        if (!int_value(at, &micros)) {
            result = 0; /* unparsable, no offset, or in the future */
            goto done;
        }
        keys[i].at = micros;
        if (last_code != NULL && same_text(code, last_code) && same_text(unit, last_unit)) {
            keys[i].code = last_id;
            continue;
        }
        PyObject *coded = PyDict_GetItemWithError(codes, code);
        if (coded == NULL) {
            if (PyErr_Occurred()) {
                goto done;
            }
            PyObject *asked = Py_NewRef(code);
            coded = PyObject_CallFunctionObjArgs(c->obis, asked, ids, NULL);
            int failed = coded == NULL || PyDict_SetItem(codes, asked, coded) < 0;
            Py_XDECREF(coded); /* the dict holds it */
            int same = !failed && read_again(c, r, F_OBIS, asked, &code, &unit);
            Py_DECREF(asked);
            if (failed) {
                goto done;
            }
            if (!same) {
                result = 0;
                goto done;
            }
        }
        long long id;
        if (!PyTuple_CheckExact(coded) || PyTuple_GET_SIZE(coded) != 2 ||
            !int_value(PyTuple_GET_ITEM(coded, 0), &id) || id == c->malformed ||
            !PyAnySet_Check(PyTuple_GET_ITEM(coded, 1))) {
            result = 0;
            goto done;
        }
        /* D5: a volume in kWh or an energy in m3 is no reading of that quantity */
        int fits = PySet_Contains(PyTuple_GET_ITEM(coded, 1), unit);
        if (fits <= 0) {
            result = fits;
            goto done;
        }
        keys[i].code = id;
        last_code = code;
        last_unit = unit;
        last_id = id;
    }
    /* Each distinct spelling a distinct instant and a distinct code, so a key
       twice is one register read twice at one instant. */
    result = PySet_GET_SIZE(values) == PyDict_GET_SIZE(instants) &&
             PyDict_GET_SIZE(ids) == PyDict_GET_SIZE(codes);
done:
    Py_XDECREF(instants);
    Py_XDECREF(codes);
    Py_XDECREF(ids);
    Py_XDECREF(values);
    return result;
}

/* Pass 2 for the meter's run [start, end): its checks, and the parts of its
   owner and its carrier's owner created. 1: taken (``*owner`` borrowed from
   the tenants, ``*stripped``), 0: the loop's, -1: an error. No Python code
   runs here: the members read stay the records'. */
static int
check_run(const Runs *c, PyObject *records, Py_ssize_t start, Py_ssize_t end, const Key *keys,
          Key *scratch, PyObject *meters, PyObject *parts, PyObject **owner, int *stripped)
{
    PyObject *first_record = PyTuple_GET_ITEM(records, start);
    PyObject *meter = field(c, first_record, F_METER);
    int known = PySet_Contains(meters, meter);
    if (known != 0) {
        return known < 0 ? -1 : 0; /* a meter's readings are not all together */
    }
    if (PySet_Add(meters, meter) < 0) {
        return -1;
    }
    if (!meter_serial_ok(meter)) {
        return 0;
    }
    int64_t first = keys[start].at, earliest = first, latest = first;
    for (Py_ssize_t i = start + 1; i < end; i++) {
        earliest = keys[i].at < earliest ? keys[i].at : earliest;
        latest = keys[i].at > latest ? keys[i].at : latest;
    }
    int64_t lo, hi;
    int airplane;
    if (span_of(c, meter, first, &lo, &hi, owner, &airplane) < 0) {
        return -1;
    }
    if (*owner == NULL) {
        return 0; /* SECURITY: D1, no owner, several, or the wildcard */
    }
    if (part_of(parts, *owner) < 0) {
        return -1;
    }
    if (airplane || earliest < lo || latest >= hi) {
        return 0; /* D5 airplane mode; an owner that changes within the readings */
    }
    if (!distinct(keys + start, end - start, scratch)) {
        return 0; /* a duplicate: one register at one instant, twice */
    }
    PyObject *via = field(c, first_record, F_VIA), *label = field(c, first_record, F_OPERATOR);
    if (via == NULL || label == NULL || !hint_ok(c, via) || !hint_ok(c, label)) {
        return 0;
    }
    for (Py_ssize_t i = start + 1; i < end; i++) {
        PyObject *r = PyTuple_GET_ITEM(records, i);
        if (!same_hint(field(c, r, F_VIA), via) || !same_hint(field(c, r, F_OPERATOR), label)) {
            return 0; /* hints that differ within a meter's readings */
        }
    }
    if (PyUnicode_CheckExact(label) && !same_text(label, *owner)) {
        return 0; /* SECURITY: D1, the HES meant it for someone else */
    }
    if (PyUnicode_CheckExact(via)) {
        if (!meter_serial_ok(via)) {
            return 0;
        }
        int64_t carrier_lo, carrier_hi;
        PyObject *carrier;
        int silent;
        if (span_of(c, via, first, &carrier_lo, &carrier_hi, &carrier, &silent) < 0 ||
            (carrier != NULL && part_of(parts, carrier) < 0)) {
            return -1;
        }
        /* D5: what a carrier in airplane mode carries is not delivered. */
        if (silent || earliest < carrier_lo || latest >= carrier_hi) {
            return 0;
        }
    }
    *stripped = via != c->unset || label != c->unset;
    return 1;
}

/* Pass 3: the run's readings appended to its owner's part, without their
   routing hints where it carries any (D1: they never reach a tenant). */
static int
fill_run(const Runs *c, PyObject *records, PyObject *run, PyObject *parts)
{
    PyObject *owner = PyTuple_GET_ITEM(run, 0);
    Py_ssize_t start = PyLong_AsSsize_t(PyTuple_GET_ITEM(run, 1));
    Py_ssize_t end = PyLong_AsSsize_t(PyTuple_GET_ITEM(run, 2));
    int stripped = PyTuple_GET_ITEM(run, 3) == Py_True;
    PyObject *part = PyDict_GetItemWithError(parts, owner);
    if (part == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_KeyError, "route_runs: a run without its part");
        }
        return -1;
    }
    for (Py_ssize_t i = start; i < end; i++) {
        PyObject *r = PyTuple_GET_ITEM(records, i);
        int failed;
        if (stripped) {
            PyObject *bare = PyObject_CallOneArg(c->strip, r);
            failed = bare == NULL || PyList_Append(part, bare) < 0;
            Py_XDECREF(bare);
        } else {
            failed = PyList_Append(part, r) < 0;
        }
        if (failed) {
            return -1;
        }
    }
    return 0;
}

static PyObject *
route_runs(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 2 || !PyList_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "route_runs(context, records: list)");
        return NULL;
    }
    Runs c;
    if (runs_context(args[0], &c) < 0) {
        return NULL;
    }
    if (PyList_GET_SIZE(args[1]) == 0) {
        Py_RETURN_NONE;
    }
    /* The records held for the call: a list could change under it. */
    PyObject *records = PyList_AsTuple(args[1]);
    if (records == NULL) {
        return NULL;
    }
    Py_ssize_t count = PyTuple_GET_SIZE(records);
    PyObject *result = NULL, *runs = NULL, *parts = NULL, *meters = NULL;
    Key *keys = (size_t)count > PY_SSIZE_T_MAX / (2 * sizeof(Key))
                    ? NULL : PyMem_Malloc((size_t)count * 2 * sizeof(Key));
    if (keys == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    int taken = read_keys(&c, records, keys);
    if (taken <= 0) {
        result = taken < 0 ? NULL : Py_NewRef(Py_None);
        goto done;
    }
    runs = PyList_New(0);
    parts = PyDict_New();
    meters = PySet_New(NULL);
    if (runs == NULL || parts == NULL || meters == NULL) {
        goto done;
    }
    for (Py_ssize_t start = 0, end; start < count; start = end) {
        /* Each member read here is checked again: pass 1 ran Python code. */
        PyObject *meter = field(&c, PyTuple_GET_ITEM(records, start), F_METER);
        for (end = start + 1; end < count && meter != NULL && PyUnicode_CheckExact(meter); end++) {
            PyObject *next = field(&c, PyTuple_GET_ITEM(records, end), F_METER);
            if (next == NULL || !PyUnicode_CheckExact(next)) {
                meter = NULL;
            } else if (!same_text(next, meter)) {
                break;
            }
        }
        if (meter == NULL || !PyUnicode_CheckExact(meter)) {
            result = Py_NewRef(Py_None);
            goto done;
        }
        PyObject *owner;
        int stripped = 0;
        taken = check_run(&c, records, start, end, keys, keys + count, meters, parts, &owner,
                          &stripped);
        if (taken <= 0) {
            result = taken < 0 ? NULL : Py_NewRef(Py_None);
            goto done;
        }
        PyObject *run = Py_BuildValue("(OnnO)", owner, start, end,
                                      stripped ? Py_True : Py_False);
        int failed = run == NULL || PyList_Append(runs, run) < 0;
        Py_XDECREF(run);
        if (failed) {
            goto done;
        }
    }
    for (Py_ssize_t k = 0; k < PyList_GET_SIZE(runs); k++) {
        if (fill_run(&c, records, PyList_GET_ITEM(runs, k), parts) < 0) {
            goto done;
        }
    }
    result = PyTuple_Pack(2, runs, parts);
done:
    PyMem_Free(keys);
    Py_XDECREF(runs);
    Py_XDECREF(parts);
    Py_XDECREF(meters);
    Py_DECREF(records);
    return result;
}

PyMethodDef native_runs_methods[] = {
    {"route_runs", (PyCFunction)(void (*)(void))route_runs, METH_FASTCALL,
     "route_runs_reference of gateway/core/push/readings.py for a list of Reading structs."},
    {NULL, NULL, 0, NULL},
};
