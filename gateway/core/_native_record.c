/*
 * record_strings: the response check's proof of a one-record answer without
 * making it into Python objects, part of gateway.core._native
 * (gateway/core/_native.c adds it to the module). Its specification is
 * record_strings_reference of gateway/core/jsonlimits.py;
 * tests/core/test_native_record.py holds the two to each other.
 *
 * record_strings(data, names, max_depth) -> None | {name: str}
 * records_strings(data, items, names, max_depth) -> None | {} | {items: [{name: str}]}
 *
 * The top-level object's members named in ``names`` whose values are
 * strings, decoded, where ``data`` is provably a JSON text the standard
 * library reads as a dict with every key once per object, nested no deeper
 * than ``max_depth``. None wherever that is not proven here, and so for
 * every text outside a plain subset, which the caller then parses in full
 * (loads_limited: its verdict and its errors):
 *
 * - bytes that are not strict UTF-8 (an overlong form, a surrogate, past
 *   U+10FFFF), a byte order mark, a backslash anywhere (so no escape, and a
 *   key is its bytes), a control character in a string;
 * - anything outside RFC 8259's grammar, and NaN, Infinity, -Infinity
 *   (which the standard library takes);
 * - a top-level value that is not an object, a key twice in one object, an
 *   object of more than MAX_KEYS members (their pairwise comparison stays
 *   bounded), nesting deeper than ``max_depth``;
 * - a member named in ``names`` whose value is not a string.
 *
 * records_strings is the same proof for a list answer: the top-level
 * object's member ``items`` an array of objects, and of each of them the
 * members named in ``names`` (strings, as above), in the array's order; {}
 * when there is no such member. Not proven besides: ``items`` anything but
 * an array, an element anything but an object. Its specification is
 * records_strings_reference, beside the other.
 *
 * The text is untrusted (an upstream's answer): every read is within the
 * block, and the nesting is bounded by ``max_depth`` before any recursion.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "_native.h"

#define MAX_KEYS 64  /* members of one object compared pairwise */
#define MAX_NAMES 8  /* names asked for: a route's record fields */
#define MAX_RECURSION 512 /* the deepest max_depth taken: one C frame a level */

typedef struct {
    const unsigned char *b;
    Py_ssize_t n, i;
    long max_depth;
    /* The names asked for, in UTF-8, and where each was found at the top level. */
    Py_ssize_t names;
    const char *name[MAX_NAMES];
    Py_ssize_t name_len[MAX_NAMES];
    Py_ssize_t found_at[MAX_NAMES], found_len[MAX_NAMES];
    PyObject *name_obj[MAX_NAMES]; /* the names as given: the dicts' keys */
    /* records_strings: the list member's name, and its records as read. */
    const char *items;
    Py_ssize_t items_len;
    PyObject *list;
    int failed; /* a Python error is set (no memory): not "unproven" */
} Reader;

/* Where an object's named members are read: nowhere (a nested value), the
 * top-level object (record_strings), the top-level object of a list answer
 * (its ``items`` member read by records()), an element of that list. */
enum level { PLAIN, TOP, LIST_TOP, ELEMENT };

/* 0: proven so far; -1: not proven (the caller answers None). */
typedef int status;

static inline void
skip_space(Reader *r)
{
    if (r->i < r->n && r->b[r->i] > ' ') {
        return; /* the common case: no white space here */
    }
    while (r->i < r->n) {
        const unsigned char c = r->b[r->i];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') {
            return;
        }
        r->i++;
    }
}

/* One UTF-8 character of 2 to 4 bytes at r->i (its lead byte >= 0x80) and
 * before ``end``, strict
 * as Python's "utf-8" codec is: no overlong form, no surrogate, nothing past
 * U+10FFFF. */
static status
utf8_char(Reader *r, Py_ssize_t end)
{
    const unsigned char *b = r->b;
    const Py_ssize_t i = r->i;
    const unsigned char c = b[i];
    Py_ssize_t len;
    unsigned char lo = 0x80, hi = 0xBF; /* the second byte's range */
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0) {
            lo = 0xA0; /* overlong below */
        } else if (c == 0xED) {
            hi = 0x9F; /* U+D800..U+DFFF, surrogates */
        }
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0) {
            lo = 0x90;
        } else if (c == 0xF4) {
            hi = 0x8F; /* past U+10FFFF */
        }
    } else {
        return -1;
    }
    if (end - i < len || b[i + 1] < lo || b[i + 1] > hi) {
        return -1;
    }
    for (Py_ssize_t k = 2; k < len; k++) {
        if (b[i + k] < 0x80 || b[i + k] > 0xBF) {
            return -1;
        }
    }
    r->i += len;
    return 0;
}

/* Eight bytes of a string at once, as one little-endian word: a flag (its
 * high bit) in every byte that may end the plain run (a quote, a control
 * character below 0x20, a byte of 0x80 and up). A flag above a flagged byte
 * may be false (a borrow), the lowest one never is: the first flagged byte
 * is looked at on its own. */
#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL

static inline uint64_t
special_bytes(const unsigned char *p)
{
    uint64_t w;
    memcpy(&w, p, sizeof w);
    const uint64_t q = w ^ (0x22 * ONES); /* a quote: a zero byte here */
    return (((q - ONES) & ~q) | ((w - 0x20 * ONES) & ~w) | w) & HIGHS;
}

/* A string at r->i (its opening quote); its content's span out. It ends at
 * the next quote (no backslash in the text: no escaped quote); in between,
 * no control character, and strict UTF-8. */
static status
string(Reader *r, Py_ssize_t *at, Py_ssize_t *len)
{
    const unsigned char *b = r->b;
    const Py_ssize_t n = r->n, start = r->i + 1;
    Py_ssize_t i = start;
    for (;;) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        while (n - i >= 8) {
            const uint64_t found = special_bytes(b + i);
            if (found) {
                i += __builtin_ctzll(found) >> 3;
                break;
            }
            i += 8;
        }
#endif
        if (i >= n) {
            return -1; /* unterminated */
        }
        const unsigned char c = b[i];
        if (c == '"') {
            *at = start;
            *len = i - start;
            r->i = i + 1;
            return 0;
        }
        if (c < 0x20) {
            return -1; /* a control character: refused in a string */
        }
        if (c < 0x80) {
            i++; /* a plain byte: the word loop's tail, or a false flag */
            continue;
        }
        r->i = i;
        if (utf8_char(r, n) < 0) {
            return -1;
        }
        i = r->i;
    }
}

static status
digits(Reader *r)
{
    const unsigned char *b = r->b;
    const Py_ssize_t n = r->n, start = r->i;
    Py_ssize_t i = start;
    while (i < n && b[i] >= '0' && b[i] <= '9') {
        i++;
    }
    r->i = i;
    return i > start ? 0 : -1;
}

/* RFC 8259 §6: -? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)? */
static status
number(Reader *r)
{
    if (r->b[r->i] == '-') {
        r->i++;
    }
    if (r->i >= r->n) {
        return -1;
    }
    if (r->b[r->i] == '0') {
        r->i++;
    } else if (digits(r) < 0) {
        return -1; /* "-" alone, "-Infinity", anything but a digit */
    }
    if (r->i < r->n && r->b[r->i] == '.') {
        r->i++;
        if (digits(r) < 0) {
            return -1;
        }
    }
    if (r->i < r->n && (r->b[r->i] == 'e' || r->b[r->i] == 'E')) {
        r->i++;
        if (r->i < r->n && (r->b[r->i] == '+' || r->b[r->i] == '-')) {
            r->i++;
        }
        if (digits(r) < 0) {
            return -1;
        }
    }
    return 0;
}

static status
literal(Reader *r, const char *word, Py_ssize_t len)
{
    if (r->n - r->i < len || memcmp(r->b + r->i, word, (size_t)len) != 0) {
        return -1;
    }
    r->i += len;
    return 0;
}

static status value(Reader *r, long depth, enum level level);
static status records(Reader *r, long depth);

/* Past the '{' or '[' at r->i: 1 when ``close`` ends the container at once
 * (read), else 0 (a member or an element follows). */
static int
opened(Reader *r, unsigned char close)
{
    r->i++;
    skip_space(r);
    if (r->i < r->n && r->b[r->i] == close) {
        r->i++;
        return 1;
    }
    return 0;
}

/* After a member or an element: 1 when ``close`` ends the container, 0 when
 * a comma says another follows (either read), -1 for anything else. */
static int
after_item(Reader *r, unsigned char close)
{
    skip_space(r);
    if (r->i >= r->n) {
        return -1;
    }
    const unsigned char c = r->b[r->i++];
    if (c == close) {
        return 1;
    }
    if (c != ',') {
        return -1;
    }
    skip_space(r);
    return 0;
}

/* An object at r->i ('{'), ``depth`` its own nesting (the top level is 1). */
static status
object(Reader *r, long depth, enum level level)
{
    Py_ssize_t key_at[MAX_KEYS], key_len[MAX_KEYS];
    Py_ssize_t keys = 0;
    if (opened(r, '}')) {
        return 0;
    }
    for (;;) {
        if (r->i >= r->n || r->b[r->i] != '"' || keys == MAX_KEYS) {
            return -1;
        }
        Py_ssize_t at, len;
        if (string(r, &at, &len) < 0) {
            return -1;
        }
        /* SECURITY: D1. A key twice in one object is not proven here: the
         * full parse refuses it (DuplicateKey). Without escapes, equal keys
         * are equal bytes. */
        for (Py_ssize_t k = 0; k < keys; k++) {
            if (key_len[k] == len && memcmp(r->b + key_at[k], r->b + at, (size_t)len) == 0) {
                return -1;
            }
        }
        key_at[keys] = at;
        key_len[keys] = len;
        keys++;
        skip_space(r);
        if (r->i >= r->n || r->b[r->i] != ':') {
            return -1;
        }
        r->i++;
        skip_space(r);
        if (r->i >= r->n) {
            return -1;
        }
        if (level == LIST_TOP && len == r->items_len &&
            memcmp(r->items, r->b + at, (size_t)len) == 0) {
            /* The list's records (read once: a second such key is a key twice). */
            if (r->b[r->i] != '[' || records(r, depth) < 0) {
                return -1;
            }
            const int next = after_item(r, '}');
            if (next != 0) {
                return next > 0 ? 0 : -1;
            }
            continue;
        }
        const Py_ssize_t value_start = r->i;
        if (value(r, depth, PLAIN) < 0) {
            return -1;
        }
        if (level == TOP || level == ELEMENT) {
            for (Py_ssize_t k = 0; k < r->names; k++) {
                if (r->name_len[k] == len && memcmp(r->name[k], r->b + at, (size_t)len) == 0) {
                    if (r->b[value_start] != '"') {
                        return -1; /* a record field that is not a string */
                    }
                    /* Its content: past the opening quote, before the closing. */
                    r->found_at[k] = value_start + 1;
                    r->found_len[k] = r->i - value_start - 2;
                }
            }
        }
        const int next = after_item(r, '}');
        if (next != 0) {
            return next > 0 ? 0 : -1;
        }
    }
}

static status
array(Reader *r, long depth)
{
    if (opened(r, ']')) {
        return 0;
    }
    for (;;) {
        if (r->i >= r->n || value(r, depth, PLAIN) < 0) {
            return -1;
        }
        const int next = after_item(r, ']');
        if (next != 0) {
            return next > 0 ? 0 : -1;
        }
    }
}

/* A value at r->i (< r->n, not white space); ``depth`` the nesting around it. */
static status
value(Reader *r, long depth, enum level level)
{
    switch (r->b[r->i]) {
    case '{':
        if (depth + 1 > r->max_depth) {
            return -1;
        }
        return object(r, depth + 1, level);
    case '[':
        if (depth + 1 > r->max_depth) {
            return -1;
        }
        return array(r, depth + 1);
    case '"': {
        Py_ssize_t at, len;
        return string(r, &at, &len);
    }
    case 't':
        return literal(r, "true", 4);
    case 'f':
        return literal(r, "false", 5);
    case 'n':
        return literal(r, "null", 4);
    default:
        return number(r);
    }
}

/* The named members found, as a new dict of str; NULL with an error set. */
static PyObject *
found_dict(Reader *r)
{
    PyObject *out = PyDict_New();
    if (out == NULL) {
        return NULL;
    }
    for (Py_ssize_t k = 0; k < r->names; k++) {
        if (r->found_at[k] < 0) {
            continue;
        }
        PyObject *text = PyUnicode_DecodeUTF8((const char *)r->b + r->found_at[k],
                                              r->found_len[k], NULL);
        if (text == NULL || PyDict_SetItem(out, r->name_obj[k], text) < 0) {
            Py_XDECREF(text);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(text);
    }
    return out;
}

/* The list answer's records: an array at r->i ('[') in the top-level object
 * (``depth`` 1), each element an object whose named strings become a dict
 * appended to r->list. */
static status
records(Reader *r, long depth)
{
    if (r->list != NULL || depth + 1 > r->max_depth) {
        return -1; /* the array nests one deeper than the object around it */
    }
    r->list = PyList_New(0);
    if (r->list == NULL) {
        r->failed = 1;
        return -1;
    }
    if (opened(r, ']')) {
        return 0;
    }
    for (;;) {
        if (r->i >= r->n || r->b[r->i] != '{' || depth + 2 > r->max_depth) {
            return -1; /* a record that is no object: the full parse's verdict */
        }
        for (Py_ssize_t k = 0; k < r->names; k++) {
            r->found_at[k] = -1;
        }
        if (object(r, depth + 2, ELEMENT) < 0) {
            return -1;
        }
        PyObject *rec = found_dict(r);
        if (rec == NULL || PyList_Append(r->list, rec) < 0) {
            Py_XDECREF(rec);
            r->failed = 1;
            return -1;
        }
        Py_DECREF(rec);
        const int next = after_item(r, ']');
        if (next != 0) {
            return next > 0 ? 0 : -1;
        }
    }
}

/* The arguments both functions share read into ``r``: the text (bytes,
   checked by the caller), the names and max_depth; -1 with an error set. */
static int
take_args(Reader *r, PyObject *data, PyObject *names, PyObject *max_depth, const char *fn)
{
    r->b = (const unsigned char *)PyBytes_AS_STRING(data);
    r->n = PyBytes_GET_SIZE(data);
    if (!PyTuple_Check(names)) {
        PyErr_Format(PyExc_TypeError, "%s() names are a tuple of str", fn);
        return -1;
    }
    r->names = PyTuple_GET_SIZE(names);
    if (r->names > MAX_NAMES) {
        PyErr_Format(PyExc_ValueError, "%s() reads at most 8 names", fn);
        return -1;
    }
    for (Py_ssize_t k = 0; k < r->names; k++) {
        PyObject *name = PyTuple_GET_ITEM(names, k);
        if (!PyUnicode_Check(name)) {
            PyErr_Format(PyExc_TypeError, "%s() names are str", fn);
            return -1;
        }
        r->name[k] = PyUnicode_AsUTF8AndSize(name, &r->name_len[k]);
        if (r->name[k] == NULL) {
            return -1;
        }
        r->name_obj[k] = name;
        r->found_at[k] = -1;
    }
    if (!PyLong_Check(max_depth)) {
        PyErr_Format(PyExc_TypeError, "%s() max_depth is an int", fn);
        return -1;
    }
    r->max_depth = PyLong_AsLong(max_depth);
    if (r->max_depth == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (r->max_depth < 0 || r->max_depth > MAX_RECURSION) {
        PyErr_Format(PyExc_ValueError, "%s() max_depth is 0 to 512", fn);
        return -1;
    }
    return 0;
}

/* The whole text proven as one object read at ``level``: 0, or -1 (not
 * proven, or r->failed). */
static status
whole(Reader *r, enum level level)
{
    /* A backslash anywhere: an escape somewhere, read by the full parse. */
    if (memchr(r->b, '\\', (size_t)r->n) != NULL) {
        return -1;
    }
    skip_space(r);
    if (r->i >= r->n || r->b[r->i] != '{' || value(r, 0, level) < 0) {
        return -1;
    }
    skip_space(r);
    return r->i == r->n ? 0 : -1; /* anything after the value: not proven */
}

static PyObject *
records_strings(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyBytes_Check(args[0]) || !PyUnicode_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError,
                        "records_strings() takes (bytes, str, tuple of str, int)");
        return NULL;
    }
    Reader r = {0};
    if (take_args(&r, args[0], args[2], args[3], "records_strings") < 0) {
        return NULL;
    }
    r.items = PyUnicode_AsUTF8AndSize(args[1], &r.items_len);
    if (r.items == NULL) {
        return NULL;
    }
    const status proven = whole(&r, LIST_TOP);
    if (r.failed) {
        Py_XDECREF(r.list);
        return NULL;
    }
    if (proven < 0) {
        Py_XDECREF(r.list);
        Py_RETURN_NONE;
    }
    PyObject *out = PyDict_New();
    if (out != NULL && r.list != NULL && PyDict_SetItem(out, args[1], r.list) < 0) {
        Py_CLEAR(out);
    }
    Py_XDECREF(r.list);
    return out;
}

static PyObject *
record_strings(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "record_strings() takes (bytes, tuple of str, int)");
        return NULL;
    }
    Reader r = {0};
    if (take_args(&r, args[0], args[1], args[2], "record_strings") < 0) {
        return NULL;
    }
    if (whole(&r, TOP) < 0) {
        Py_RETURN_NONE;
    }
    return found_dict(&r);
}

/* Added to the module by PyInit__native (gateway/core/_native.c). */
PyMethodDef native_record_methods[] = {
    {"record_strings", (PyCFunction)(void (*)(void))record_strings, METH_FASTCALL,
     "A one-record JSON answer's named string members, where its parse is proven; else None."},
    {"records_strings", (PyCFunction)(void (*)(void))records_strings, METH_FASTCALL,
     "A list answer's records' named string members, where its parse is proven; else None."},
    {NULL, NULL, 0, NULL},
};
