/*
 * The columnar push's common meter-day in C, part of gateway.core._native.
 *
 *   route_days(context, days, index) -> (index, readings)
 *   route_posted(context, body, max_depth, max_days, leave) -> (batch_id, days, readings) | None
 *   join_texts(texts) -> bytes | None
 *
 * route_posted reads the batch as posted (bytes) in one pass and routes each
 * meter-day in its turn: what route_days takes, the same way (route_fields,
 * shared), anything else handed to ``leave`` (posted.py's route_posted_days:
 * the meter-day parsed alone, then _route_day). See its comment below.
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
 * context is the tuple built by ``_native_context`` in days.py: (members,
 * starts, obis, qualities, seen, parts, readings, latest, max_values,
 * max_interval, probe, owner relation, airplane relation, wildcard, lo, hi,
 * tenants). tests/core/push/test_days_native.py routes
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
static const size_t key_lengths[K_COUNT] = {6, 5, 5, 8, 4, 4, 7, 8, 3, 3};
static PyObject *keys[K_COUNT];

static void plain_init(void);

int
native_days_init(void)
{
    plain_init();
    for (int i = 0; i < K_COUNT; i++) {
        keys[i] = PyUnicode_InternFromString(key_names[i]);
        if (keys[i] == NULL) {
            return -1;
        }
    }
    return 0;
}

typedef struct {
    PyObject *members, *starts, *obis, *qualities, *seen, *parts, *readings;
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

/* A piece of the text known at compile time: copied without a strlen. */
#define PUT_C(at, literal)                               \
    do {                                                 \
        memcpy((at), (literal), sizeof(literal) - 1);    \
        (at) += sizeof(literal) - 1;                     \
    } while (0)

/* The decimal digits of 0 <= v (at most 20), written at the end of
   ``buf``: their start. */
static char *
decimal(long long v, char *end)
{
    unsigned long long u = (unsigned long long)v;
    do {
        *--end = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    return end;
}

/* _emit's text of a whole meter-day (no ean): every piece plain ASCII.
   ``interval`` is positive (route_fields checks it first). */
static PyObject *
day_text(PyObject *meter, PyObject *stamp, long long interval, PyObject *obis, PyObject *unit,
         PyObject *codes, const char *raw, Py_ssize_t raw_len)
{
    char buf[24];
    char *digits = decimal(interval, buf + sizeof buf);
    Py_ssize_t nd = buf + sizeof buf - digits;
    static const char pieces[] = "{\"meter\":\"\",\"start\":,\"interval\":,\"obis\":\"\",\"unit\":\"\","
                                 "\"quality\":\"\",\"values\":}";
    Py_ssize_t total = (Py_ssize_t)sizeof pieces - 1 + nd + PyUnicode_GET_LENGTH(meter) +
                       PyUnicode_GET_LENGTH(stamp) + PyUnicode_GET_LENGTH(obis) +
                       PyUnicode_GET_LENGTH(unit) + PyUnicode_GET_LENGTH(codes) + raw_len;
    PyObject *text = PyUnicode_New(total, 127);
    if (text == NULL) {
        return NULL;
    }
    char *at = (char *)PyUnicode_1BYTE_DATA(text);
    PUT_C(at, "{\"meter\":\"");
    put(&at, meter);
    PUT_C(at, "\",\"start\":");
    put(&at, stamp);
    PUT_C(at, ",\"interval\":");
    memcpy(at, digits, (size_t)nd);
    at += nd;
    PUT_C(at, ",\"obis\":\"");
    put(&at, obis);
    PUT_C(at, "\",\"unit\":\"");
    put(&at, unit);
    PUT_C(at, "\",\"quality\":\"");
    put(&at, codes);
    PUT_C(at, "\",\"values\":");
    memcpy(at, raw, (size_t)raw_len);
    at += raw_len;
    PUT_C(at, "}");
    assert(at == (char *)PyUnicode_1BYTE_DATA(text) + total);
    return text;
}

/* A tuple of ``n`` new ints (and NULL with an error when one is not made). */
static PyObject *
ints(int n, const long long *v)
{
    PyObject *t = PyTuple_New(n);
    for (int i = 0; t != NULL && i < n; i++) {
        PyObject *x = PyLong_FromLongLong(v[i]);
        if (x == NULL) {
            Py_CLEAR(t);
            break;
        }
        PyTuple_SET_ITEM(t, i, x);
    }
    return t;
}

/* The owner of ``meter`` at ``first`` (``*owner``: borrowed, Py_None when
   there is none), the end of its span (``*hi``) and whether airplane mode
   holds (``*airplane``), read from the snapshot: what owner_span of
   records.py answers. -1 with an error set, else 0. The router's owners
   cache is neither read nor filled: the probe costs less than the cache's
   tuple, and _route_day, which reads the cache, probes what it misses. */
static int
owner_at(Context *c, PyObject *meter, long long first, long long *hi, PyObject **owner,
         int *airplane)
{
    int64_t slo = c->lo, shi = c->hi;
    if (probe_owner(c->probe, c->tenants, meter, first, c->owner_rel, c->airplane_rel,
                    c->wildcard, &slo, &shi, owner, airplane) < 0) {
        return -1;
    }
    *hi = shi;
    if (*owner == NULL) {
        *owner = Py_None;
    }
    return 0;
}

/* A meter-day's members as the router reads them: borrowed str (``label``
   NULL when there is none), the values array as posted (ASCII) and its
   count of finite numbers. */
typedef struct {
    PyObject *meter, *stamp, *obis, *unit, *quality, *label;
    const char *raw;
    Py_ssize_t raw_len;
    long long n, interval;
} Day;

static int route_fields(Context *c, const Day *d, long long *taken);

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
    PyObject *values = m[K_VALUES];
    Day d = {.meter = m[K_METER], .stamp = m[K_START], .obis = m[K_OBIS], .unit = m[K_UNIT],
             .quality = m[K_QUALITY], .label = m[K_OPERATOR]};
    if ((m[K_VIA] != NULL && m[K_VIA] != Py_None) || (m[K_EAN] != NULL && m[K_EAN] != Py_None)) {
        return 0;
    }
    if (d.label == Py_None) {
        d.label = NULL;
    }
    if (d.label != NULL && !PyUnicode_CheckExact(d.label)) {
        return 0;
    }
    /* values: scan_days' (text as posted, count of finite numbers) */
    if (values == NULL || !PyTuple_CheckExact(values) || PyTuple_GET_SIZE(values) != 2) {
        return 0;
    }
    PyObject *raw = PyTuple_GET_ITEM(values, 0);
    if (!PyUnicode_CheckExact(raw) || !PyUnicode_IS_ASCII(raw) ||
        !int_value(PyTuple_GET_ITEM(values, 1), &d.n)) {
        return 0;
    }
    d.raw = (const char *)PyUnicode_1BYTE_DATA(raw);
    d.raw_len = PyUnicode_GET_LENGTH(raw);
    if (d.meter == NULL || !PyUnicode_CheckExact(d.meter) || m[K_INTERVAL] == NULL ||
        !int_value(m[K_INTERVAL], &d.interval) || d.stamp == NULL ||
        !PyUnicode_CheckExact(d.stamp) || d.obis == NULL || !PyUnicode_CheckExact(d.obis) ||
        d.quality == NULL || !PyUnicode_CheckExact(d.quality) || d.unit == NULL ||
        !PyUnicode_CheckExact(d.unit)) {
        return 0;
    }
    return route_fields(c, &d, taken);
}

/* route_one's decision and effects, on a meter-day's members (both readers'). */
static int
route_fields(Context *c, const Day *d, long long *taken)
{
    long long n = d->n, interval = d->interval;
    PyObject *meter = d->meter, *stamp = d->stamp, *obis = d->obis, *unit = d->unit;
    PyObject *quality = d->quality, *label = d->label;
    if (n < 1 || n > c->max_values || !meter_serial_ok(meter) || interval < 1 ||
        interval > c->max_interval) {
        return 0;
    }
    /* the caches _route_day fills: start, OBIS code, quality string */
    if (!PyUnicode_IS_ASCII(obis) || PyUnicode_GET_LENGTH(quality) != 2 * n ||
        !PyUnicode_IS_ASCII(unit)) {
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
        !int_value(PyTuple_GET_ITEM(start, 0), &first) ||
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
    /* the key of meter and register: meter + " " + the code's one spelling */
    PyObject *code = PyTuple_GET_ITEM(coded_obis, 0);
    if (!PyUnicode_IS_ASCII(code)) {
        return 0;
    }
    Py_ssize_t mn = PyUnicode_GET_LENGTH(meter), cn = PyUnicode_GET_LENGTH(code);
    PyObject *key = PyUnicode_New(mn + 1 + cn, 127);
    if (key == NULL) {
        return -1;
    }
    char *kd = (char *)PyUnicode_1BYTE_DATA(key);
    memcpy(kd, PyUnicode_1BYTE_DATA(meter), (size_t)mn);
    kd[mn] = ' ';
    memcpy(kd + mn + 1, PyUnicode_1BYTE_DATA(code), (size_t)cn);
    int seen = PyDict_Contains(c->seen, key);
    if (seen != 0) {
        Py_DECREF(key);
        return seen < 0 ? -1 : 0;
    }
    long long hi;
    PyObject *owner;
    int airplane;
    if (owner_at(c, meter, first, &hi, &owner, &airplane) < 0) {
        Py_DECREF(key);
        return -1;
    }
    if (hi <= last || owner == Py_None || !PyUnicode_CheckExact(owner) || airplane) {
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
    long long seen_mark[3] = {first, step, n};
    PyObject *mark = ints(3, seen_mark);
    int failed = mark == NULL || PyDict_SetItem(c->seen, key, mark) < 0;
    Py_XDECREF(mark);
    Py_DECREF(key);
    if (failed) {
        return -1;
    }
    PyObject *text = day_text(meter, PyTuple_GET_ITEM(start, 2), interval, obis, unit,
                              PyTuple_GET_ITEM(coded, 0), d->raw, d->raw_len);
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
    if (!PyTuple_CheckExact(t) || PyTuple_GET_SIZE(t) != 17) {
        PyErr_SetString(PyExc_TypeError, "route_days: context must be a 17-tuple");
        return -1;
    }
    PyObject **i = &PyTuple_GET_ITEM(t, 0);
    c->members = i[0];
    c->starts = i[1];
    c->obis = i[2];
    c->qualities = i[3];
    c->seen = i[4];
    c->parts = i[5];
    c->readings = i[6];
    if (!PyAnySet_Check(c->members) || !PyDict_CheckExact(c->starts) ||
        !PyDict_CheckExact(c->obis) || !PyDict_CheckExact(c->qualities) ||
        !PyDict_CheckExact(c->seen) || !PyDict_CheckExact(c->parts) ||
        !PyDict_CheckExact(c->readings) || !PyObject_TypeCheck(i[10], &ProbeType) ||
        !PyTuple_CheckExact(i[16])) {
        PyErr_SetString(PyExc_TypeError, "route_days: a context member of the wrong type");
        return -1;
    }
    c->probe = (ProbeObject *)i[10];
    c->tenants = i[16];
    long long *numbers[] = {&c->latest, &c->max_values, &c->max_interval, &c->owner_rel,
                            &c->airplane_rel, &c->wildcard, &c->lo, &c->hi};
    const int at[] = {7, 8, 9, 11, 12, 13, 14, 15};
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

/* --- a posted batch, read and routed in one pass ------------------------ */

/* route_posted(context, body, max_depth, max_days, leave) -> (batch_id, days,
   readings) | None

   The columnar batch as posted (bytes), read in one pass and routed as
   ``route_meter_days`` routes what ``scan_days`` makes of it: each meter-day
   route_fields takes goes whole to its owner here; every other one is handed,
   in its turn, to ``leave(index, start, end, values_start, values_end,
   count)`` (days.py parses it and gives it to ``_route_day``; it answers the
   readings it counted, or None when the text is not what it must be). None:
   not taken, the caller parses and routes the body as before and its answer
   or error stands (the router's state is then thrown away).

   What it takes is the common spelling only: a top-level object of unique
   keys whose values are strings but ``"meter_days"``, an array of objects
   whose members are strings, numbers, true, false, null or flat arrays of
   those; ``"format"`` exactly ``"meter-days/v1"``, a string ``batch_id``;
   every string printable ASCII with no backslash; no member of a meter-day
   twice. Anything else (an escape, a byte past ASCII, deeper nesting, a
   syntax error, too many meter-days) is not taken. A ``values`` array of
   numbers only is "cut" as scan_days cuts it (its span is handed over) and
   counted by finite_number_array. */

/* A byte a string may hold as it stands (ASCII from the space on, but the
   quote and the backslash). It, and the tables of _native.c read here
   (digit_byte, json_ws_byte, cut_class_byte), are 0 at the body's
   terminating NUL (a bytes object has one), so no scan runs past the end. */
static unsigned char plain_byte[256];

typedef struct {
    const unsigned char *b;
    Py_ssize_t n, i;
} Text;

/* A values array of plain numbers, read in one pass by an automaton (its
   states below, its table built by plain_init): what finite_number_array
   and the cut's class scan prove together, for numbers without an exponent
   and with at most 16 integer digits (finite as they stand). Anything else
   (an exponent, a longer integer part, a syntax error) stops it in SLOW or
   FAIL, and the array is read the general way. */
enum {
    V_START,  /* after '[' or ',': white space or a number */
    V_MINUS,
    V_ZERO,   /* a leading 0 */
    V_INT,    /* V_INT + k - 1: k integer digits, 1 <= k <= 16 */
    V_DOT = V_INT + 16,
    V_FRAC,
    V_AFTER,  /* white space after a number */
    V_END,    /* the closing bracket; every state from here on stops the scan */
    V_FAIL,
    V_SLOW,
    V_STATES
};
static unsigned char values_next[V_STATES][256];

static void
plain_init(void)
{
    for (int b = 0x20; b <= 0x7f; b++) {
        plain_byte[b] = b != '"' && b != '\\';
    }
    for (int st = 0; st < V_STATES; st++) {
        for (int b = 0; b < 256; b++) {
            int digit = b >= '0' && b <= '9', ws = json_ws_byte[b], next = V_FAIL;
            int number_end = st == V_ZERO || (st >= V_INT && st < V_DOT) || st == V_FRAC;
            if (st == V_SLOW || st == V_END) {
                next = st == V_SLOW ? V_SLOW : V_FAIL;
            }
            else if (st == V_START && ws) {
                next = V_START;
            }
            else if ((st == V_START && b == '-')) {
                next = V_MINUS;
            }
            else if ((st == V_START || st == V_MINUS) && digit) {
                next = b == '0' ? V_ZERO : V_INT;
            }
            else if (st >= V_INT && st < V_DOT && digit) {
                next = st + 1 < V_DOT ? st + 1 : V_SLOW; /* a 17th digit */
            }
            else if ((st == V_DOT || st == V_FRAC) && digit) {
                next = V_FRAC;
            }
            else if (number_end && b == '.' && st != V_FRAC) {
                next = V_DOT;
            }
            else if (number_end && (b == 'e' || b == 'E')) {
                next = V_SLOW; /* an exponent: read as Python reads a float */
            }
            else if ((number_end || st == V_AFTER) && ws) {
                next = V_AFTER;
            }
            else if ((number_end || st == V_AFTER) && b == ',') {
                next = V_START;
            }
            else if ((number_end || st == V_AFTER) && b == ']') {
                next = V_END;
            }
            values_next[st][b] = (unsigned char)next;
        }
    }
}

/* At '[' of a values array: its end (after ']') and its count of numbers
   when the automaton reads it to V_END, else 0. */
static inline Py_ssize_t
plain_values(const Text *t, Py_ssize_t *end)
{
    const unsigned char *b = t->b;
    Py_ssize_t j = t->i + 1, commas = 0;
    unsigned int st = V_START;
    while (st < V_END) {
        unsigned char c = b[j++];
        st = values_next[st][c];
        commas += c == ',';
    }
    if (st != V_END) {
        return 0;
    }
    *end = j;
    return commas + 1;
}

static inline void
skip(Text *t)
{
    while (json_ws_byte[t->b[t->i]]) {
        t->i++;
    }
}

/* At a quote: a plain string, its content [*s, *e); 0 for anything else. */
static inline int
string_at(Text *t, Py_ssize_t *s, Py_ssize_t *e)
{
    if (t->b[t->i] != '"') {
        return 0;
    }
    Py_ssize_t j = t->i + 1;
    while (plain_byte[t->b[j]]) {
        j++;
    }
    if (t->b[j] != '"') {
        return 0; /* an escape, a control character, past ASCII, or the end */
    }
    *s = t->i + 1;
    *e = j;
    t->i = j + 1;
    return 1;
}

/* After a value: 1 at a comma (passed, and the white space after it: the
   next member or element follows), 0 at ``close`` (passed), -1 at anything
   else. */
static inline int
after_value(Text *t, unsigned char close)
{
    skip(t);
    if (t->b[t->i] == ',') {
        t->i++;
        skip(t);
        return 1;
    }
    if (t->b[t->i] != close) {
        return -1;
    }
    t->i++;
    return 0;
}

/* A JSON number (RFC 8259's grammar); ``*integer``: 1 with its value when
   it is an integer of at most 18 digits (Python reads an int). */
static int
number_at(Text *t, int *integer, long long *value)
{
    const unsigned char *b = t->b;
    Py_ssize_t j = t->i;
    int negative = b[j] == '-';
    j += negative;
    Py_ssize_t digits = j;
    if (b[j] == '0') {
        j++;
    }
    else if (b[j] >= '1' && b[j] <= '9') {
        while (digit_byte[b[j]]) {
            j++;
        }
    }
    else {
        return 0;
    }
    Py_ssize_t int_end = j;
    *integer = 1;
    if (b[j] == '.') {
        j++;
        if (!digit_byte[b[j]]) {
            return 0;
        }
        while (digit_byte[b[j]]) {
            j++;
        }
        *integer = 0;
    }
    if (b[j] == 'e' || b[j] == 'E') {
        j++;
        if (b[j] == '+' || b[j] == '-') {
            j++;
        }
        if (!digit_byte[b[j]]) {
            return 0;
        }
        while (digit_byte[b[j]]) {
            j++;
        }
        *integer = 0;
    }
    if (*integer && int_end - digits <= 18) {
        long long v = 0;
        for (Py_ssize_t k = digits; k < int_end; k++) {
            v = v * 10 + (b[k] - '0');
        }
        *value = negative ? -v : v;
    }
    else {
        *integer = 0;
    }
    t->i = j;
    return 1;
}

/* true, false or null; ``*null`` which. */
static int
literal_at(Text *t, int *null)
{
    static const char *const words[] = {"true", "false", "null"};
    for (int w = 0; w < 3; w++) {
        size_t len = strlen(words[w]);
        if ((size_t)(t->n - t->i) >= len && memcmp(t->b + t->i, words[w], len) == 0) {
            t->i += (Py_ssize_t)len;
            *null = w == 2;
            return 1;
        }
    }
    return 0;
}

/* A flat value: a string, a number or a literal. ``*kind``: 'S', 'I' (an
   int read into ``*value``), 'N' (null), 'O' (any other). */
static int
scalar_at(Text *t, unsigned char *kind, Py_ssize_t *s, Py_ssize_t *e, long long *value)
{
    unsigned char c = t->b[t->i];
    int integer, null;
    if (c == '"') {
        *kind = 'S';
        return string_at(t, s, e);
    }
    if (c == '-' || digit_byte[c]) {
        if (!number_at(t, &integer, value)) {
            return 0;
        }
        *kind = integer ? 'I' : 'O';
        return 1;
    }
    if (!literal_at(t, &null)) {
        return 0;
    }
    *kind = null ? 'N' : 'O';
    return 1;
}

/* At '[': an array of flat values (no array or object inside). */
static int
flat_array_at(Text *t)
{
    t->i++;
    skip(t);
    if (t->b[t->i] == ']') {
        t->i++;
        return 1;
    }
    for (;;) {
        unsigned char kind;
        Py_ssize_t s, e;
        long long value;
        if (!scalar_at(t, &kind, &s, &e, &value)) {
            return 0;
        }
        int more = after_value(t, ']');
        if (more <= 0) {
            return more + 1; /* closed: 1; anything else: 0 */
        }
    }
}

/* One meter-day's members as read: kind 0 (absent), 'S' (a string, its
   content's span), 'I' (an int), 'N' (null), 'A' (values: an array of the
   cut class, its span and count: <= 0 not proven), 'O' (anything else). */
typedef struct {
    unsigned char kind[K_COUNT];
    Py_ssize_t s[K_COUNT], e[K_COUNT];
    long long interval;
    Py_ssize_t count;
    int unknown; /* a member the format does not define */
} Fields;

/* At '{': a meter-day object, read into ``f``. 1: read (flat, no known
   member twice); 0: not taken; -1: an error. */
static int
day_at(Text *t, Fields *f)
{
    memset(f->kind, 0, sizeof f->kind);
    f->unknown = 0;
    f->count = 0;
    t->i++;
    skip(t);
    if (t->b[t->i] == '}') {
        t->i++;
        return 1;
    }
    for (;;) {
        Py_ssize_t ks, ke;
        if (!string_at(t, &ks, &ke)) {
            return 0;
        }
        int k = -1;
        for (int j = 0; j < K_COUNT; j++) {
            size_t len = key_lengths[j];
            if ((size_t)(ke - ks) == len && memcmp(t->b + ks, key_names[j], len) == 0) {
                k = j;
                break;
            }
        }
        if (k >= 0 && f->kind[k] != 0) {
            return 0; /* a member twice: the parse refuses it (D1) */
        }
        f->unknown |= k < 0;
        skip(t);
        if (t->b[t->i] != ':') {
            return 0;
        }
        t->i++;
        skip(t);
        unsigned char kind;
        Py_ssize_t s = 0, e = 0;
        long long value = 0;
        if (t->b[t->i] == '[') {
            kind = 'O';
            Py_ssize_t plain_end = 0, plain = k == K_VALUES ? plain_values(t, &plain_end) : 0;
            if (plain > 0) { /* numbers only, each finite: cut and counted at once */
                kind = 'A';
                s = t->i;
                e = plain_end;
                f->count = plain;
                t->i = e;
            }
            else if (k == K_VALUES) {
                Py_ssize_t j = t->i + 1;
                while (cut_class_byte[t->b[j]]) {
                    j++;
                }
                if (t->b[j] == ']') { /* as scan_days cuts it */
                    kind = 'A';
                    s = t->i;
                    e = j + 1;
                    f->count = finite_number_array((const char *)t->b + s, e - s);
                    if (f->count < 0) {
                        return -1;
                    }
                    t->i = e;
                }
            }
            if (kind == 'O' && !flat_array_at(t)) {
                return 0;
            }
        }
        else if (!scalar_at(t, &kind, &s, &e, &value)) {
            return 0;
        }
        if (k >= 0) {
            f->kind[k] = kind;
            f->s[k] = s;
            f->e[k] = e;
            if (k == K_INTERVAL) {
                f->interval = value;
            }
        }
        int more = after_value(t, '}');
        if (more <= 0) {
            return more + 1;
        }
    }
}

/* A str of the body's bytes [s, e) (printable ASCII), kept while the next
   one asked for is spelt the same (the start, OBIS code, unit, quality and
   label of a batch's meter-days mostly are). */
typedef struct {
    Py_ssize_t s, e;
    PyObject *text;
} Memo;

static PyObject *
ascii_of(const unsigned char *b, Py_ssize_t s, Py_ssize_t e)
{
    PyObject *text = PyUnicode_New(e - s, 127);
    if (text != NULL) {
        memcpy(PyUnicode_1BYTE_DATA(text), b + s, (size_t)(e - s));
    }
    return text;
}

static PyObject *
remembered(Memo *m, const unsigned char *b, Py_ssize_t s, Py_ssize_t e)
{
    if (m->text == NULL || m->e - m->s != e - s || memcmp(b + m->s, b + s, (size_t)(e - s))) {
        PyObject *text = ascii_of(b, s, e);
        if (text == NULL) {
            return NULL;
        }
        Py_XSETREF(m->text, text);
    }
    m->s = s;
    m->e = e;
    return m->text;
}

enum { M_START, M_OBIS, M_UNIT, M_QUALITY, M_LABEL, M_COUNT };

/* Route the meter-day read into ``f``: route_fields when it has the
   common form, else ``leave``. 1, 0 (leave answered None), -1. */
static int
route_read(Context *c, Text *t, const Fields *f, Memo *memo, PyObject *leave,
           Py_ssize_t index, Py_ssize_t start, long long *readings)
{
    const unsigned char *k = f->kind;
    int common = !f->unknown && k[K_VALUES] == 'A' && f->count > 0 && k[K_METER] == 'S' &&
                 k[K_START] == 'S' && k[K_INTERVAL] == 'I' && k[K_OBIS] == 'S' &&
                 k[K_UNIT] == 'S' && k[K_QUALITY] == 'S' &&
                 (k[K_OPERATOR] == 0 || k[K_OPERATOR] == 'N' || k[K_OPERATOR] == 'S') &&
                 (k[K_VIA] == 0 || k[K_VIA] == 'N') && (k[K_EAN] == 0 || k[K_EAN] == 'N');
    if (common) {
        static const int of[M_COUNT] = {K_START, K_OBIS, K_UNIT, K_QUALITY, K_OPERATOR};
        PyObject *got[M_COUNT] = {NULL};
        for (int m = 0; m < M_COUNT; m++) {
            if (k[of[m]] != 'S') {
                continue; /* no label */
            }
            got[m] = remembered(&memo[m], t->b, f->s[of[m]], f->e[of[m]]);
            if (got[m] == NULL) {
                return -1;
            }
        }
        PyObject *meter = ascii_of(t->b, f->s[K_METER], f->e[K_METER]);
        if (meter == NULL) {
            return -1;
        }
        Day d = {.meter = meter, .stamp = got[M_START], .obis = got[M_OBIS],
                 .unit = got[M_UNIT], .quality = got[M_QUALITY], .label = got[M_LABEL],
                 .raw = (const char *)t->b + f->s[K_VALUES],
                 .raw_len = f->e[K_VALUES] - f->s[K_VALUES], .n = f->count,
                 .interval = f->interval};
        long long taken = 0;
        int routed = route_fields(c, &d, &taken);
        Py_DECREF(meter);
        if (routed != 0) {
            *readings += taken;
            return routed;
        }
    }
    Py_ssize_t vs = -1, ve = -1;
    if (k[K_VALUES] == 'A') {
        vs = f->s[K_VALUES];
        ve = f->e[K_VALUES];
    }
    PyObject *got = PyObject_CallFunction(leave, "nnnnnn", index, start, t->i, vs, ve,
                                          f->count);
    if (got == NULL) {
        return -1;
    }
    if (got == Py_None) {
        Py_DECREF(got);
        return 0;
    }
    long long more = PyLong_AsLongLong(got);
    Py_DECREF(got);
    if (more == -1 && PyErr_Occurred()) {
        return -1;
    }
    *readings += more;
    return 1;
}

/* At '[': the meter_days array, each element routed in its turn. */
static int
days_at(Context *c, Text *t, Memo *memo, PyObject *leave, Py_ssize_t max_days,
        Py_ssize_t *days, long long *readings)
{
    t->i++;
    skip(t);
    if (t->b[t->i] == ']') {
        t->i++;
        return 1;
    }
    for (Py_ssize_t index = 0;; index++) {
        if (index >= max_days || t->b[t->i] != '{') {
            return 0; /* too many (413) or not an object: the general path */
        }
        Py_ssize_t start = t->i;
        Fields f;
        int read = day_at(t, &f);
        if (read <= 0) {
            return read;
        }
        int routed = route_read(c, t, &f, memo, leave, index, start, readings);
        if (routed <= 0) {
            return routed;
        }
        int more = after_value(t, ']');
        if (more <= 0) {
            *days = index + 1;
            return more + 1;
        }
    }
}

static int
posted(Context *c, Text *t, Memo *memo, PyObject *leave, Py_ssize_t max_days,
       PyObject **batch_id, Py_ssize_t *days, long long *readings)
{
    enum { TOP = 8 };
    Py_ssize_t ks[TOP], ke[TOP];
    int keys = 0, format = 0, listed = 0;
    skip(t);
    if (t->b[t->i] != '{') {
        return 0;
    }
    t->i++;
    skip(t);
    for (;;) {
        if (keys == TOP || !string_at(t, &ks[keys], &ke[keys])) {
            return 0;
        }
        const unsigned char *key = t->b + ks[keys];
        Py_ssize_t len = ke[keys] - ks[keys];
        for (int j = 0; j < keys; j++) {
            if (ke[j] - ks[j] == len && memcmp(t->b + ks[j], key, (size_t)len) == 0) {
                return 0; /* a key twice: the parse refuses it */
            }
        }
        keys++;
        skip(t);
        if (t->b[t->i] != ':') {
            return 0;
        }
        t->i++;
        skip(t);
        if (len == 10 && memcmp(key, "meter_days", 10) == 0) {
            if (t->b[t->i] != '[') {
                return 0;
            }
            int read = days_at(c, t, memo, leave, max_days, days, readings);
            if (read <= 0) {
                return read;
            }
            listed = 1;
        }
        else {
            Py_ssize_t s, e;
            if (!string_at(t, &s, &e)) {
                return 0;
            }
            if (len == 6 && memcmp(key, "format", 6) == 0) {
                format = e - s == 13 && memcmp(t->b + s, "meter-days/v1", 13) == 0;
                if (!format) {
                    return 0;
                }
            }
            else if (len == 8 && memcmp(key, "batch_id", 8) == 0) {
                PyObject *id = ascii_of(t->b, s, e);
                if (id == NULL) {
                    return -1;
                }
                Py_XSETREF(*batch_id, id);
            }
        }
        int more = after_value(t, '}');
        if (more < 0) {
            return 0;
        }
        if (more == 0) {
            skip(t);
            return t->i == t->n && format && listed && *batch_id != NULL;
        }
    }
}

static PyObject *
route_posted(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 5 || !PyBytes_CheckExact(args[1]) || !PyCallable_Check(args[4])) {
        PyErr_SetString(PyExc_TypeError,
                        "route_posted(context, body: bytes, max_depth, max_days, leave)");
        return NULL;
    }
    Context c;
    if (context_of(args[0], &c) < 0) {
        return NULL;
    }
    Py_ssize_t max_depth = PyLong_AsSsize_t(args[2]);
    Py_ssize_t max_days = max_depth == -1 && PyErr_Occurred() ? -1 : PyLong_AsSsize_t(args[3]);
    if (max_days == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (max_depth < 4) {
        Py_RETURN_NONE; /* object, array, meter-day, values: four levels */
    }
    Text t = {.b = (const unsigned char *)PyBytes_AS_STRING(args[1]),
              .n = PyBytes_GET_SIZE(args[1]), .i = 0};
    Memo memo[M_COUNT] = {{0}};
    PyObject *batch_id = NULL;
    Py_ssize_t days = 0;
    long long readings = 0;
    int read = posted(&c, &t, memo, args[4], max_days, &batch_id, &days, &readings);
    for (int m = 0; m < M_COUNT; m++) {
        Py_XDECREF(memo[m].text);
    }
    if (read <= 0) {
        Py_XDECREF(batch_id);
        if (read < 0) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    return Py_BuildValue("(NnL)", batch_id, days, readings);
}

/* join_texts(texts) -> bytes | None: b"[" + b",".join(texts) + b"]" of a
   list or tuple of ASCII strs (a part's meter-day texts, JSON already),
   written once into the bytes it returns, where Python's join, the
   brackets' concatenations and the encoding copied a part four times.
   None when an item is not an exact ASCII str: the caller joins in Python. */
static PyObject *
join_texts(PyObject *module, PyObject *texts)
{
    (void)module;
    if (!PyList_CheckExact(texts) && !PyTuple_CheckExact(texts)) {
        PyErr_SetString(PyExc_TypeError, "join_texts: a list or a tuple of str");
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(texts);
    PyObject **items = PySequence_Fast_ITEMS(texts);
    Py_ssize_t total = n > 0 ? n + 1 : 2; /* the brackets and the commas */
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = items[i];
        if (!PyUnicode_CheckExact(item) || !PyUnicode_IS_ASCII(item)) {
            Py_RETURN_NONE;
        }
        Py_ssize_t len = PyUnicode_GET_LENGTH(item);
        if (len > PY_SSIZE_T_MAX - total) {
            return PyErr_NoMemory();
        }
        total += len;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, total);
    if (out == NULL) {
        return NULL;
    }
    char *at = PyBytes_AS_STRING(out);
    *at++ = '[';
    for (Py_ssize_t i = 0; i < n; i++) {
        if (i > 0) {
            *at++ = ',';
        }
        Py_ssize_t len = PyUnicode_GET_LENGTH(items[i]);
        memcpy(at, PyUnicode_1BYTE_DATA(items[i]), (size_t)len);
        at += len;
    }
    *at++ = ']';
    assert(at == PyBytes_AS_STRING(out) + total);
    return out;
}

PyMethodDef native_days_methods[] = {
    {"join_texts", join_texts, METH_O,
     "join_texts(texts) -> bytes | None: b'[' + b','.join(texts) + b']' of ASCII strs, "
     "written once; None when one is not an ASCII str."},
    {"route_days", (PyCFunction)(void (*)(void))route_days, METH_FASTCALL,
     "route_days(context, days, index) -> (index, readings): the common meter-days of "
     "gateway/core/push/days.py's _route_day."},
    {"route_posted", (PyCFunction)(void (*)(void))route_posted, METH_FASTCALL,
     "route_posted(context, body, max_depth, max_days, leave) -> (batch_id, days, readings) "
     "| None: a columnar batch as posted, read and routed in one pass."},
    {NULL, NULL, 0, NULL},
};
