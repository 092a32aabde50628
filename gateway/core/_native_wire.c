/*
 * Native accelerators of the data plane's wire forms (HTTP/1.1 heads, JSON
 * bodies), part of gateway.core._native (gateway/core/_native.c adds these
 * functions to the module). Each has a Python reference that stays the
 * specification:
 *
 *   response_head  the upstream client's parse of a response head,
 *                  ResponseReader._parse_head_reference of
 *                  gateway/upstream/_http.py (the grammar of its _HEAD, the
 *                  fields split, decoded and sorted by what they frame);
 *   request_head   serialize_request_reference of gateway/upstream/_http.py
 *                  (one request head, with every refusal of the reference);
 *   answer_head    the lean server's answer head, serialize_reference of
 *                  gateway/edge/_lean_wire.py;
 *   json_facts     json_facts_reference of gateway/core/jsonlimits.py: what
 *                  loads_limited needs to know of a JSON text before orjson
 *                  parses it (its nesting depth, its members, whether a long
 *                  number makes counting them prove nothing), in one pass
 *                  (a text without a backslash: strings by memchr, long
 *                  digit runs by stride);
 *   json_members   json_members_reference: the members orjson's parse kept.
 *
 * The parse takes untrusted bytes (an upstream's answer): every read is
 * within the block, and a block outside the grammar answers None, which the
 * caller refuses. The two writers take what the gateway built; where their
 * input is anything but plain ASCII (where Python's Unicode rules for
 * lowering, stripping or encoding would matter) they answer None and the
 * caller runs the reference. tests/core/test_native_wire.py compares each
 * with its reference.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* RFC 9110 §5.6.2 tchar. */
static const unsigned char TCHAR[256] = {
    ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['*'] = 1, ['+'] = 1,
    ['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1, ['|'] = 1, ['~'] = 1,
    ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1, ['7'] = 1,
    ['8'] = 1, ['9'] = 1,
    ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1, ['G'] = 1, ['H'] = 1,
    ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1, ['M'] = 1, ['N'] = 1, ['O'] = 1, ['P'] = 1,
    ['Q'] = 1, ['R'] = 1, ['S'] = 1, ['T'] = 1, ['U'] = 1, ['V'] = 1, ['W'] = 1, ['X'] = 1,
    ['Y'] = 1, ['Z'] = 1,
    ['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1, ['g'] = 1, ['h'] = 1,
    ['i'] = 1, ['j'] = 1, ['k'] = 1, ['l'] = 1, ['m'] = 1, ['n'] = 1, ['o'] = 1, ['p'] = 1,
    ['q'] = 1, ['r'] = 1, ['s'] = 1, ['t'] = 1, ['u'] = 1, ['v'] = 1, ['w'] = 1, ['x'] = 1,
    ['y'] = 1, ['z'] = 1,
};

/* A field value's byte in _VALUE of gateway/upstream/_http.py: HTAB, SP, VCHAR,
 * obs-text; no NUL, no CR, no LF, no other control. */
static inline int
value_byte(unsigned char c)
{
    return c == '\t' || (c >= 0x20 && c != 0x7F);
}

/* The reason phrase's bytes in _HEAD: [\t\x20-\x7e\x80-\xff]. The same set. */
#define reason_byte value_byte

/* Two names of n ASCII bytes each are the same, ignoring case (str.lower()
 * of ASCII; a NUL is a byte like any other). */
static int
same_name(const char *a, const char *b, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char x = (unsigned char)a[i], y = (unsigned char)b[i];
        if (x >= 'A' && x <= 'Z') {
            x = (unsigned char)(x + 32);
        }
        if (y >= 'A' && y <= 'Z') {
            y = (unsigned char)(y + 32);
        }
        if (x != y) {
            return 0;
        }
    }
    return 1;
}

/* ``name`` (n bytes) equals the lower-case ASCII ``lower``, ignoring case. */
static int
ascii_ieq(const char *name, Py_ssize_t n, const char *lower)
{
    return (size_t)n == strlen(lower) && same_name(name, lower, n);
}

static PyObject *
decode(const char *s, Py_ssize_t n)
{
    return PyUnicode_DecodeUTF8(s, n, "surrogateescape");
}

/* ---------------------------------------------------------------------------
 * response_head(block) -> None | (http10, status, headers, lengths, codings,
 *                                  connections, content_type, longest)
 *
 * ``block`` is the head up to and including the CRLF that ends its last line
 * (not the empty line). None where _HEAD does not fullmatch it. ``headers``
 * are (name, value) as the reference makes them (decoded with surrogateescape,
 * the value stripped of SP and HTAB), ``lengths``, ``codings`` and
 * ``connections`` the values of Content-Length, Transfer-Encoding and
 * Connection in order, ``content_type`` the first Content-Type's value or
 * None, ``longest`` the length in characters of the longest line, the status
 * line included.
 */
static PyObject *
response_head(PyObject *Py_UNUSED(module), PyObject *arg)
{
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "response_head() takes bytes");
        return NULL;
    }
    const unsigned char *b = (const unsigned char *)PyBytes_AS_STRING(arg);
    const Py_ssize_t n = PyBytes_GET_SIZE(arg);
    /* The status line: HTTP/1.[01] SP [1-5][0-9][0-9] (SP reason)? CRLF */
    if (n < 14 || memcmp(b, "HTTP/1.", 7) != 0 || (b[7] != '0' && b[7] != '1') ||
        b[8] != ' ' || b[9] < '1' || b[9] > '5' || b[10] < '0' || b[10] > '9' ||
        b[11] < '0' || b[11] > '9') {
        Py_RETURN_NONE;
    }
    Py_ssize_t pos = 12;
    int ascii = 1;
    if (b[pos] == ' ') {
        pos++;
        while (pos < n && reason_byte(b[pos])) {
            ascii &= b[pos] < 0x80;
            pos++;
        }
    }
    if (pos + 1 >= n || b[pos] != '\r' || b[pos + 1] != '\n') {
        Py_RETURN_NONE;
    }
    Py_ssize_t longest = pos;
    if (!ascii) {
        PyObject *line = decode((const char *)b, pos);
        if (line == NULL) {
            return NULL;
        }
        longest = PyUnicode_GET_LENGTH(line);
        Py_DECREF(line);
    }
    pos += 2;
    const int http10 = b[7] == '0';
    const long status = (b[9] - '0') * 100 + (b[10] - '0') * 10 + (b[11] - '0');

    /* First pass: the grammar, so that nothing is built for a refused head. */
    Py_ssize_t fields = 0;
    for (Py_ssize_t at = pos; at < n; fields++) {
        Py_ssize_t start = at;
        while (at < n && TCHAR[b[at]]) {
            at++;
        }
        if (at == start || at >= n || b[at] != ':') {
            Py_RETURN_NONE;
        }
        at++;
        while (at < n && value_byte(b[at])) {
            at++;
        }
        if (at + 1 >= n || b[at] != '\r' || b[at + 1] != '\n') {
            Py_RETURN_NONE;
        }
        at += 2;
    }

    PyObject *headers = PyList_New(fields);
    PyObject *lengths = PyList_New(0);
    PyObject *codings = PyList_New(0);
    PyObject *connections = PyList_New(0);
    PyObject *content_type = NULL;
    if (headers == NULL || lengths == NULL || codings == NULL || connections == NULL) {
        goto fail;
    }
    for (Py_ssize_t i = 0; i < fields; i++) {
        Py_ssize_t start = pos;
        while (b[pos] != ':') {
            pos++;
        }
        Py_ssize_t name_len = pos - start;
        Py_ssize_t vstart = ++pos;
        int value_ascii = 1;
        while (b[pos] != '\r') {
            value_ascii &= b[pos] < 0x80;
            pos++;
        }
        Py_ssize_t vend = pos;
        pos += 2;
        Py_ssize_t lo = vstart, hi = vend;
        while (lo < hi && (b[lo] == ' ' || b[lo] == '\t')) {
            lo++;
        }
        while (hi > lo && (b[hi - 1] == ' ' || b[hi - 1] == '\t')) {
            hi--;
        }
        PyObject *name = PyUnicode_DecodeASCII((const char *)b + start, name_len, NULL);
        if (name == NULL) {
            goto fail;
        }
        PyObject *value;
        Py_ssize_t line_len;
        if (value_ascii) {
            value = PyUnicode_DecodeASCII((const char *)b + lo, hi - lo, NULL);
            line_len = vend - start;
        } else {
            /* Stripping SP and HTAB from the ends never splits a character. */
            PyObject *whole = decode((const char *)b + vstart, vend - vstart);
            if (whole == NULL) {
                Py_DECREF(name);
                goto fail;
            }
            line_len = name_len + 1 + PyUnicode_GET_LENGTH(whole);
            Py_ssize_t skip = lo - vstart, cut = vend - hi;
            value = PyUnicode_Substring(whole, skip, PyUnicode_GET_LENGTH(whole) - cut);
            Py_DECREF(whole);
        }
        if (value == NULL) {
            Py_DECREF(name);
            goto fail;
        }
        if (line_len > longest) {
            longest = line_len;
        }
        const char *nm = (const char *)b + start;
        PyObject *into = NULL;
        if (ascii_ieq(nm, name_len, "content-length")) {
            into = lengths;
        } else if (ascii_ieq(nm, name_len, "transfer-encoding")) {
            into = codings;
        } else if (ascii_ieq(nm, name_len, "connection")) {
            into = connections;
        } else if (content_type == NULL && ascii_ieq(nm, name_len, "content-type")) {
            content_type = Py_NewRef(value);
        }
        if (into != NULL && PyList_Append(into, value) < 0) {
            Py_DECREF(name);
            Py_DECREF(value);
            goto fail;
        }
        PyObject *pair = PyTuple_New(2);
        if (pair == NULL) {
            Py_DECREF(name);
            Py_DECREF(value);
            goto fail;
        }
        PyTuple_SET_ITEM(pair, 0, name);
        PyTuple_SET_ITEM(pair, 1, value);
        PyList_SET_ITEM(headers, i, pair);
    }
    return Py_BuildValue("(OlNNNNNn)", http10 ? Py_True : Py_False, status, headers, lengths,
                         codings, connections,
                         content_type != NULL ? content_type : Py_NewRef(Py_None), longest);
fail:
    Py_XDECREF(headers);
    Py_XDECREF(lengths);
    Py_XDECREF(codings);
    Py_XDECREF(connections);
    Py_XDECREF(content_type);
    return NULL;
}

/* ---------------------------------------------------------------------------
 * A growing byte buffer for the two writers.
 */
typedef struct {
    char *data;
    Py_ssize_t len;
    Py_ssize_t cap;
    char small[1024];
} Out;

static void
out_init(Out *o)
{
    o->data = o->small;
    o->len = 0;
    o->cap = (Py_ssize_t)sizeof(o->small);
}

static void
out_free(Out *o)
{
    if (o->data != o->small) {
        PyMem_Free(o->data);
    }
}

static int
out_put(Out *o, const char *s, Py_ssize_t n)
{
    if (n > PY_SSIZE_T_MAX - o->len) {
        PyErr_NoMemory();
        return -1;
    }
    if (o->len + n > o->cap) {
        Py_ssize_t cap = o->cap;
        while (cap < o->len + n) {
            if (cap > PY_SSIZE_T_MAX / 2) {
                PyErr_NoMemory();
                return -1;
            }
            cap *= 2;
        }
        char *grown = PyMem_Malloc((size_t)cap);
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        memcpy(grown, o->data, (size_t)o->len);
        out_free(o);
        o->data = grown;
        o->cap = cap;
    }
    memcpy(o->data + o->len, s, (size_t)n);
    o->len += n;
    return 0;
}

#define OUT_LIT(o, lit) out_put((o), (lit), (Py_ssize_t)(sizeof(lit) - 1))

static int
out_str(Out *o, PyObject *ascii)
{
    return out_put(o, (const char *)PyUnicode_DATA(ascii), PyUnicode_GET_LENGTH(ascii));
}

/* An ASCII str (the flag CPython keeps: no scan), else not ours. */
static inline int
plain(PyObject *s)
{
    return PyUnicode_Check(s) && PyUnicode_IS_ASCII(s);
}

/* ---------------------------------------------------------------------------
 * request_head(method, target, host, headers, body) -> bytes | None
 *
 * serialize_request_reference's result, or its ValueError; None (the caller
 * runs the reference) where a string is not ASCII or ``headers`` is not a
 * dict of str.
 */
#define MAX_REQUEST_FIELDS 256

static const char *const FRAMING[] = {"host", "content-length", "transfer-encoding",
                                      "connection", "expect", "upgrade", NULL};

static PyObject *
refuse_request(void)
{
    PyErr_SetString(PyExc_ValueError, "request target or header field refused");
    return NULL;
}

/* A field value or host of the request (ASCII): its bytes are field-value
 * bytes, no CR, LF or other control. */
static int
request_text_ok(PyObject *text)
{
    const unsigned char *p = (const unsigned char *)PyUnicode_DATA(text);
    const Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    Py_ssize_t i = 0;
    /* Eight bytes at a time: a word with a byte below 0x20 or a DEL (the
     * bit tricks flag every such byte, and now and then another: a tab) has
     * its bytes looked at one by one. */
    const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
    for (; i + 8 <= n; i += 8) {
        uint64_t x;
        memcpy(&x, p + i, 8);
        const uint64_t del = x ^ (ones * 0x7F);
        if ((((x - ones * 0x20) & ~x) | ((del - ones) & ~del)) & highs) {
            for (Py_ssize_t j = i; j < i + 8; j++) {
                if (!value_byte(p[j])) {
                    return 0;
                }
            }
        }
    }
    for (; i < n; i++) {
        if (!value_byte(p[i])) {
            return 0;
        }
    }
    return 1;
}

static PyObject *
request_head(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "request_head() takes 5 arguments");
        return NULL;
    }
    PyObject *method = args[0], *target = args[1], *host = args[2], *headers = args[3];
    PyObject *body = args[4];
    if (!plain(method) || !plain(target) || !plain(host) || !PyDict_CheckExact(headers) ||
        (body != Py_None && !PyBytes_Check(body))) {
        Py_RETURN_NONE;
    }
    Py_ssize_t count = PyDict_GET_SIZE(headers);
    if (count > MAX_REQUEST_FIELDS) {
        Py_RETURN_NONE;
    }
    /* The fields in the reference's order: a name given twice (in any case)
     * is sent once, where it first stood, with its last spelling and value. */
    PyObject *names[MAX_REQUEST_FIELDS], *values[MAX_REQUEST_FIELDS];
    Py_ssize_t kept = 0, it = 0;
    PyObject *key, *val;
    while (PyDict_Next(headers, &it, &key, &val)) {
        if (!plain(key) || !plain(val)) {
            Py_RETURN_NONE;
        }
        const char *k = (const char *)PyUnicode_DATA(key);
        Py_ssize_t kn = PyUnicode_GET_LENGTH(key);
        Py_ssize_t j = 0;
        for (; j < kept; j++) {
            if (PyUnicode_GET_LENGTH(names[j]) == kn &&
                same_name(k, (const char *)PyUnicode_DATA(names[j]), kn)) {
                break;
            }
        }
        names[j] = key;
        values[j] = val;
        if (j == kept) {
            kept++;
        }
    }
    /* The request line: [A-Z]{1,20} SP /[\x21-\x7e]* */
    const char *m = (const char *)PyUnicode_DATA(method);
    Py_ssize_t mn = PyUnicode_GET_LENGTH(method);
    const char *t = (const char *)PyUnicode_DATA(target);
    Py_ssize_t tn = PyUnicode_GET_LENGTH(target);
    if (mn < 1 || mn > 20 || tn < 1 || t[0] != '/') {
        return refuse_request();
    }
    for (Py_ssize_t i = 0; i < mn; i++) {
        if (m[i] < 'A' || m[i] > 'Z') {
            return refuse_request();
        }
    }
    for (Py_ssize_t i = 1; i < tn; i++) {
        if (t[i] < 0x21 || t[i] > 0x7E) {
            return refuse_request();
        }
    }
    for (Py_ssize_t j = 0; j < kept; j++) {
        const char *k = (const char *)PyUnicode_DATA(names[j]);
        Py_ssize_t kn = PyUnicode_GET_LENGTH(names[j]);
        if (kn == 0) {
            return refuse_request();
        }
        for (Py_ssize_t i = 0; i < kn; i++) {
            if (!TCHAR[(unsigned char)k[i]]) {
                return refuse_request();
            }
        }
        for (const char *const *f = FRAMING; *f != NULL; f++) {
            if (ascii_ieq(k, kn, *f)) {
                return refuse_request();
            }
        }
        if (!request_text_ok(values[j])) {
            return refuse_request();
        }
    }
    if (!request_text_ok(host)) {
        return refuse_request();
    }
    Out o;
    out_init(&o);
    char number[32];
    int ok = out_str(&o, method) == 0 && OUT_LIT(&o, " ") == 0 && out_str(&o, target) == 0 &&
             OUT_LIT(&o, " HTTP/1.1\r\nHost: ") == 0 && out_str(&o, host) == 0 &&
             OUT_LIT(&o, "\r\n") == 0;
    for (Py_ssize_t j = 0; ok && j < kept; j++) {
        ok = out_str(&o, names[j]) == 0 && OUT_LIT(&o, ": ") == 0 &&
             out_str(&o, values[j]) == 0 && OUT_LIT(&o, "\r\n") == 0;
    }
    if (ok && body != Py_None) {
        int w = snprintf(number, sizeof(number), "%zd", PyBytes_GET_SIZE(body));
        ok = OUT_LIT(&o, "Content-Length: ") == 0 && out_put(&o, number, w) == 0 &&
             OUT_LIT(&o, "\r\n") == 0;
    } else if (ok && ((mn == 4 && memcmp(m, "POST", 4) == 0) ||
                      (mn == 3 && memcmp(m, "PUT", 3) == 0) ||
                      (mn == 5 && memcmp(m, "PATCH", 5) == 0))) {
        ok = OUT_LIT(&o, "Content-Length: 0\r\n") == 0;
    }
    ok = ok && OUT_LIT(&o, "\r\n") == 0;
    if (ok && body != Py_None) {
        ok = out_put(&o, PyBytes_AS_STRING(body), PyBytes_GET_SIZE(body)) == 0;
    }
    PyObject *result = ok ? PyBytes_FromStringAndSize(o.data, o.len) : NULL;
    out_free(&o);
    return result;
}

/* ---------------------------------------------------------------------------
 * answer_head(major, minor, status, reason, items, method, body_length,
 *             keep_alive, date) -> None | (head, length)
 *
 * serialize_reference's head and the Content-Length it settled on (-1 for
 * none), or its ValueError for a CR or LF in a header. ``items`` are the
 * answer's header fields as (name, value) pairs. None where a string is not
 * ASCII, an item is not a pair of str, or a Content-Length is anything but
 * 1 to 18 digits (the reference reads it with int()).
 */
#define MAX_ANSWER_FIELDS 128

static inline int
empty_body_status(long status)
{
    return status == 204 || status == 304 || (status >= 100 && status < 200);
}

static int
has_crlf(PyObject *s)
{
    const char *p = (const char *)PyUnicode_DATA(s);
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    return memchr(p, '\r', (size_t)n) != NULL || memchr(p, '\n', (size_t)n) != NULL;
}

static PyObject *
answer_head(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 9) {
        PyErr_SetString(PyExc_TypeError, "answer_head() takes 9 arguments");
        return NULL;
    }
    long major = PyLong_AsLong(args[0]);
    long minor = PyLong_AsLong(args[1]);
    long status = PyLong_AsLong(args[2]);
    Py_ssize_t body_length = PyLong_AsSsize_t(args[6]);
    int keep_alive = PyObject_IsTrue(args[7]);
    if (PyErr_Occurred() || keep_alive < 0) {
        return NULL;
    }
    PyObject *reason = args[3], *items = args[4], *method = args[5], *date = args[8];
    if (!plain(reason) || !plain(method) || !plain(date) || !PyList_CheckExact(items) ||
        PyList_GET_SIZE(items) > MAX_ANSWER_FIELDS) {
        Py_RETURN_NONE;
    }
    Py_ssize_t count = PyList_GET_SIZE(items);
    /* "Content-Type" in headers, "Date" in headers, "Connection" in headers:
     * the reference asks the multidict, which finds a field dropped below too. */
    int has_type = 0, has_date = 0, has_connection = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *pair = PyList_GET_ITEM(items, i);
        if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2 ||
            !plain(PyTuple_GET_ITEM(pair, 0)) || !plain(PyTuple_GET_ITEM(pair, 1))) {
            Py_RETURN_NONE;
        }
        PyObject *name = PyTuple_GET_ITEM(pair, 0);
        const char *nm = (const char *)PyUnicode_DATA(name);
        Py_ssize_t nn = PyUnicode_GET_LENGTH(name);
        has_type |= ascii_ieq(nm, nn, "content-type");
        has_date |= ascii_ieq(nm, nn, "date");
        has_connection |= ascii_ieq(nm, nn, "connection");
    }
    const char *m = (const char *)PyUnicode_DATA(method);
    Py_ssize_t mn = PyUnicode_GET_LENGTH(method);
    const int head_method = mn == 4 && memcmp(m, "HEAD", 4) == 0;
    const int connect = mn == 7 && memcmp(m, "CONNECT", 7) == 0;
    const int empty = head_method || empty_body_status(status);
    const int drop_length =
        empty_body_status(status) || (connect && status >= 200 && status < 300);

    Out o;
    out_init(&o);
    char line[64];
    long long length = -1;
    int w = snprintf(line, sizeof(line), "HTTP/%ld.%ld %ld ", major, minor, status);
    int ok = w > 0 && w < (int)sizeof(line) && out_put(&o, line, w) == 0 &&
             out_str(&o, reason) == 0 && OUT_LIT(&o, "\r\n") == 0;
    int crlf = has_crlf(reason);
    for (Py_ssize_t i = 0; ok && i < count; i++) {
        PyObject *pair = PyList_GET_ITEM(items, i);
        PyObject *name = PyTuple_GET_ITEM(pair, 0), *value = PyTuple_GET_ITEM(pair, 1);
        const char *nm = (const char *)PyUnicode_DATA(name);
        Py_ssize_t nn = PyUnicode_GET_LENGTH(name);
        if (ascii_ieq(nm, nn, "content-length")) {
            if (drop_length) {
                continue;
            }
            const char *v = (const char *)PyUnicode_DATA(value);
            Py_ssize_t vn = PyUnicode_GET_LENGTH(value);
            if (vn < 1 || vn > 18) {
                out_free(&o);
                Py_RETURN_NONE;
            }
            long long parsed = 0;
            for (Py_ssize_t k = 0; k < vn; k++) {
                if (v[k] < '0' || v[k] > '9') {
                    out_free(&o);
                    Py_RETURN_NONE;
                }
                parsed = parsed * 10 + (v[k] - '0');
            }
            length = parsed;
        } else if (empty && ascii_ieq(nm, nn, "transfer-encoding")) {
            continue;
        }
        crlf |= has_crlf(name) || has_crlf(value);
        ok = out_str(&o, name) == 0 && OUT_LIT(&o, ": ") == 0 && out_str(&o, value) == 0 &&
             OUT_LIT(&o, "\r\n") == 0;
    }
    if (ok && length < 0 && !drop_length &&
        (body_length > 0 || (status != 304 && !head_method))) {
        length = body_length;
        w = snprintf(line, sizeof(line), "Content-Length: %zd\r\n", body_length);
        ok = w > 0 && w < (int)sizeof(line) && out_put(&o, line, w) == 0;
    }
    if (ok && !empty && length != 0 && !has_type) {
        ok = OUT_LIT(&o, "Content-Type: application/octet-stream\r\n") == 0;
    }
    if (ok && !has_date) {
        crlf |= has_crlf(date);
        ok = OUT_LIT(&o, "Date: ") == 0 && out_str(&o, date) == 0 && OUT_LIT(&o, "\r\n") == 0;
    }
    if (ok && !has_connection) {
        if (keep_alive) {
            if (major == 1 && minor == 0) {
                ok = OUT_LIT(&o, "Connection: keep-alive\r\n") == 0;
            }
        } else if (major == 1 && minor == 1) {
            ok = OUT_LIT(&o, "Connection: close\r\n") == 0;
        }
    }
    ok = ok && OUT_LIT(&o, "\r\n") == 0;
    if (!ok) {
        out_free(&o);
        return NULL;
    }
    if (crlf) {
        out_free(&o);
        PyErr_SetString(PyExc_ValueError, "CR or LF in a response header");
        return NULL;
    }
    PyObject *head = PyBytes_FromStringAndSize(o.data, o.len);
    out_free(&o);
    if (head == NULL) {
        return NULL;
    }
    return Py_BuildValue("(NL)", head, length);
}

/* What a byte is to json_facts: most bytes of a text are J_OTHER. */
enum { J_OTHER, J_DIGIT, J_START, J_COLON, J_BACKSLASH, J_QUOTE, J_OPEN, J_OPEN_START, J_CLOSE };
static const unsigned char JSON_CLASS[256] = {
    ['0'] = J_DIGIT, ['1'] = J_DIGIT, ['2'] = J_DIGIT, ['3'] = J_DIGIT, ['4'] = J_DIGIT,
    ['5'] = J_DIGIT, ['6'] = J_DIGIT, ['7'] = J_DIGIT, ['8'] = J_DIGIT, ['9'] = J_DIGIT,
    /* What a number may follow (has_long_number): [ : , - SP HTAB LF CR. */
    [','] = J_START, ['-'] = J_START, [' '] = J_START, ['\t'] = J_START, ['\n'] = J_START,
    ['\r'] = J_START, [':'] = J_COLON, ['['] = J_OPEN_START,
    ['{'] = J_OPEN, [']'] = J_CLOSE, ['}'] = J_CLOSE, ['"'] = J_QUOTE, ['\\'] = J_BACKSLASH,
};

/* ---------------------------------------------------------------------------
 * json_facts(data) -> None | (depth, members, suspect)
 *
 * None where json.detect_encoding would not read ``data`` as UTF-8 (a NUL in
 * its first bytes, a UTF-16 or UTF-32 byte order mark). Else: the deepest
 * nesting of arrays and objects outside strings (0 for none; a backslash and
 * the byte after it are skipped wherever they stand, a quote opens or closes
 * a string, and a last quote left unpaired stands for nothing), the colons
 * outside strings (a string runs from a quote to the next quote that no
 * backslash escapes, or to the end: in a valid text, one colon per object
 * member), and whether it holds a run of 19 or more digits at its start or
 * after one of [ : , - SP HTAB LF CR.
 *
 * Two ways to the same facts: a text without a backslash (nearly all: a
 * backslash is an escape, and the gateway's own and its upstreams' texts
 * seldom have one) has its strings found by memchr and its digit runs by
 * stride (plain_facts, long_run); any other is read byte by byte (the loop
 * below). tests/core/test_native_wire.py holds both to the reference.
 */
#define LONG_RUN 19 /* digits that may make orjson read a number otherwise */

/* A run of LONG_RUN or more digits at the start of ``b`` or right after a
 * byte a number may follow. Every such run covers an offset of the form
 * LONG_RUN * k + LONG_RUN - 1 (a window of LONG_RUN bytes holds one of each
 * residue), so only those are looked at, and a digit there is widened to
 * its whole run. */
static int
long_run(const unsigned char *b, Py_ssize_t n)
{
    Py_ssize_t j = LONG_RUN - 1;
    while (j < n) {
        if (JSON_CLASS[b[j]] != J_DIGIT) {
            j += LONG_RUN;
            continue;
        }
        Py_ssize_t s = j, e = j + 1;
        while (s > 0 && JSON_CLASS[b[s - 1]] == J_DIGIT) {
            s--;
        }
        while (e < n && JSON_CLASS[b[e]] == J_DIGIT) {
            e++;
        }
        if (e - s >= LONG_RUN) {
            if (s == 0) {
                return 1;
            }
            const unsigned char k = JSON_CLASS[b[s - 1]];
            if (k == J_START || k == J_COLON || k == J_OPEN_START) {
                return 1;
            }
        }
        /* The next run starts past b[e] (not a digit): its window holds
         * the first offset of the same residue past e. */
        j = e + LONG_RUN;
    }
    return 0;
}

/* Depth and members of a text without a backslash, as the byte loop below
 * reads them. A string runs from a quote to the next. Outside strings, every
 * colon is a member and every bracket structure. With an odd number of
 * quotes, the last one opens a string no colon after counts in; to the
 * structure, the brackets after the last bracket outside any string (inside
 * strings or not: the byte loop drops adjacent quotes before it pairs them)
 * are a walk of their own from the depth there, and its deepest point counts
 * as the text's. */
static void
plain_facts(const unsigned char *b, Py_ssize_t n, long *deepest_out, Py_ssize_t *members_out)
{
    long depth = 0, deepest = 0;
    Py_ssize_t members = 0, i = 0, after_outside = 0;
    int odd = 0;
    while (i < n) {
        const unsigned char *q = memchr(b + i, '"', (size_t)(n - i));
        const Py_ssize_t stop = q != NULL ? q - b : n;
        for (; i < stop; i++) {
            switch (JSON_CLASS[b[i]]) {
            case J_COLON:
                members++;
                break;
            case J_OPEN:
            case J_OPEN_START:
                if (++depth > deepest) {
                    deepest = depth;
                }
                after_outside = i + 1;
                break;
            case J_CLOSE:
                depth--;
                after_outside = i + 1;
                break;
            default:
                break;
            }
        }
        if (q == NULL) {
            break;
        }
        const unsigned char *close = memchr(q + 1, '"', (size_t)(n - stop - 1));
        if (close == NULL) {
            odd = 1;
            break;
        }
        i = close - b + 1;
    }
    if (odd) {
        long walk = depth;
        for (Py_ssize_t j = after_outside; j < n; j++) {
            const unsigned char k = JSON_CLASS[b[j]];
            if (k == J_OPEN || k == J_OPEN_START) {
                if (++walk > deepest) {
                    deepest = walk;
                }
            } else if (k == J_CLOSE) {
                walk--;
            }
        }
    }
    *deepest_out = deepest;
    *members_out = members;
}

static PyObject *
json_facts(PyObject *Py_UNUSED(module), PyObject *arg)
{
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "json_facts() takes bytes");
        return NULL;
    }
    const unsigned char *b = (const unsigned char *)PyBytes_AS_STRING(arg);
    const Py_ssize_t n = PyBytes_GET_SIZE(arg);
    if (n >= 2 && ((b[0] == 0xFF && b[1] == 0xFE) || (b[0] == 0xFE && b[1] == 0xFF))) {
        Py_RETURN_NONE;
    }
    if ((n >= 4 || n == 2) && (b[0] == 0 || b[1] == 0)) {
        Py_RETURN_NONE;
    }
    if (memchr(b, '\\', (size_t)n) == NULL) {
        long plain_deepest;
        Py_ssize_t plain_members;
        plain_facts(b, n, &plain_deepest, &plain_members);
        return Py_BuildValue("(lnO)", plain_deepest, plain_members,
                             long_run(b, n) ? Py_True : Py_False);
    }
    long depth = 0, deepest = 0, open_depth = 0, open_deepest = 0;
    Py_ssize_t members = 0, digits = 0;
    int in_string = 0, escaped = 0, held = 0, suspect = 0;
    int in_member_string = 0, member_escaped = 0; /* the strings the member count skips */
    int counting = 1; /* a run of digits counts at the start, and after a number's start */
    for (Py_ssize_t i = 0; i < n; i++) {
        const unsigned char k = JSON_CLASS[b[i]];
        /* Members: the colons outside strings, strings read as JSON reads
         * them (a backslash escapes the next byte inside a string only). */
        if (in_member_string) {
            if (member_escaped) {
                member_escaped = 0;
            } else if (k == J_BACKSLASH) {
                member_escaped = 1;
            } else if (k == J_QUOTE) {
                in_member_string = 0;
            }
        } else if (k == J_QUOTE) {
            in_member_string = 1;
        } else if (k == J_COLON) {
            members++;
        }
        /* Long numbers, over every byte as has_long_number reads them (escapes
         * not skipped): a run of digits right after a number's start. */
        if (k == J_DIGIT) {
            if (counting && ++digits >= 19) {
                suspect = 1;
            }
            escaped = 0;
            continue;
        }
        digits = 0;
        counting = k == J_START || k == J_COLON || k == J_OPEN_START;
        /* The structure, as the reference reads it: escapes (a backslash and
         * the byte after it) dropped, then of the quotes and brackets left
         * every two adjacent quotes dropped, then quotes paired in order; a
         * last quote left unpaired stands for nothing, what follows it is
         * structure. A quote is held until the next quote or bracket says
         * which it is. */
        if (k == J_BACKSLASH) {
            escaped = !escaped;
            continue;
        }
        if (escaped || k == J_OTHER || k == J_START || k == J_COLON) {
            escaped = 0;
            continue;
        }
        if (k == J_QUOTE) {
            held = !held; /* two adjacent quotes: both dropped */
            continue;
        }
        if (held) {
            held = 0;
            in_string = !in_string;
            /* The walk from here, should this string never close. */
            open_depth = depth;
            open_deepest = 0;
        }
        const int step = k == J_CLOSE ? -1 : 1;
        if (!in_string) {
            depth += step;
            if (depth > deepest) {
                deepest = depth;
            }
        } else {
            open_depth += step;
            if (open_depth > open_deepest) {
                open_deepest = open_depth;
            }
        }
    }
    if (held) { /* a quote held to the end opens a string with nothing in it */
        in_string = !in_string;
        open_deepest = 0;
    }
    if (in_string && open_deepest > deepest) {
        deepest = open_deepest;
    }
    return Py_BuildValue("(lnO)", deepest, members, suspect ? Py_True : Py_False);
}

/* The members of ``value``'s objects, nested ones too: json_members_reference
 * of gateway/core/jsonlimits.py (only dict and list are looked into, exactly
 * those types, as a JSON parser makes them). */
#define CONTAINER(o) (PyDict_CheckExact(o) || PyList_CheckExact(o))

static Py_ssize_t count_members(PyObject *value);

/* Adds the members inside ``item`` to ``*count``: 0, or -1 with an error set. */
static int
add_members(PyObject *item, Py_ssize_t *count)
{
    if (!CONTAINER(item)) {
        return 0;
    }
    const Py_ssize_t inner = count_members(item);
    if (inner < 0) {
        return -1;
    }
    *count += inner;
    return 0;
}

static Py_ssize_t
count_members(PyObject *value)
{
    if (!CONTAINER(value)) {
        return 0;
    }
    if (Py_EnterRecursiveCall(" counting JSON members")) {
        return -1;
    }
    Py_ssize_t count = 0;
    int failed = 0;
    if (PyDict_CheckExact(value)) {
        PyObject *key, *item;
        Py_ssize_t pos = 0;
        count = PyDict_GET_SIZE(value);
        while (!failed && PyDict_Next(value, &pos, &key, &item)) {
            failed = add_members(item, &count);
        }
    } else {
        for (Py_ssize_t i = 0; !failed && i < PyList_GET_SIZE(value); i++) {
            failed = add_members(PyList_GET_ITEM(value, i), &count);
        }
    }
    Py_LeaveRecursiveCall();
    return failed ? -1 : count;
}

static PyObject *
json_members(PyObject *Py_UNUSED(module), PyObject *arg)
{
    const Py_ssize_t count = count_members(arg);
    return count < 0 ? NULL : PyLong_FromSsize_t(count);
}

/* Added to the module by PyInit__native (gateway/core/_native.c). */
PyMethodDef native_wire_methods[] = {
    {"response_head", response_head, METH_O,
     "ResponseReader._parse_head_reference's reading of a response head, or None."},
    {"request_head", (PyCFunction)(void (*)(void))request_head, METH_FASTCALL,
     "serialize_request_reference(...), or None where the input is not plain ASCII."},
    {"answer_head", (PyCFunction)(void (*)(void))answer_head, METH_FASTCALL,
     "The lean server's answer head and its Content-Length (-1: none), or None."},
    {"json_facts", json_facts, METH_O,
     "A JSON text's depth, members and whether a long number makes counting them prove nothing."},
    {"json_members", json_members, METH_O,
     "The members of a parsed JSON value's objects, nested ones too."},
    {NULL, NULL, 0, NULL},
};
