/*
 * What the parts of gateway.core._native share: the snapshot probe
 * (gateway/core/_native.c) and the function tables of the other files.
 */
#ifndef GATEWAY_CORE_NATIVE_H
#define GATEWAY_CORE_NATIVE_H

#include <Python.h>
#include <stdint.h>

typedef struct {
    PyObject_HEAD
    Py_buffer buffer; /* the whole snapshot */
    Py_buffer slots;  /* this kind's hash table: u32[mask + 1] */
    Py_ssize_t rows_start;
    uint32_t mask;
    int held;         /* which of the two buffers are held (1, 2: both) */
} ProbeObject;

extern PyTypeObject ProbeType;

/* owner_span of gateway/core/push/records.py for the resource ``key``:
   ``owner_rel`` and ``airplane_rel`` are the snapshot's indexes of those
   relation names (-1: not in it), ``wildcard`` the index of the tenant "*"
   (-1: none); ``*lo`` and ``*hi`` come in as the open ends. Every ownership
   or airplane-mode record narrows [*lo, *hi) around ``at``; ``*tenant`` is
   the single owner at ``at``, or -1 when there is none, several or the
   wildcard (SECURITY: fail closed, D1); ``*airplane`` whether an
   airplane-mode record holds at ``at``. A record past the buffer's end
   answers no owner over the open ends. Returns 0. */
int probe_span(ProbeObject *self, const unsigned char *key, Py_ssize_t n, int64_t at,
               long long owner_rel, long long airplane_rel, long long wildcard, int64_t *lo,
               int64_t *hi, long long *tenant, int *airplane);

/* probe_span for ``serial`` (a str of ASCII: a well-formed serial), its
   owner read from ``tenants`` (the snapshot's tenant names): ``*owner``
   borrowed, NULL when there is none. -1 with IndexError set for a tenant
   past the tuple's end, else 0. Both push routers' owner reading. */
int probe_owner(ProbeObject *probe, PyObject *tenants, PyObject *serial, int64_t at,
                long long owner_rel, long long airplane_rel, long long wildcard,
                int64_t *lo, int64_t *hi, PyObject **owner, int *airplane);

/* An exact Python int that fits a long long: 1 and ``*out``; 0 (and no
   error) for anything else. */
int int_value(PyObject *value, long long *out);

/* is_valid_meter_serial of gateway/core/identifiers.py (6 to 20 of 0-9,
   A-Z) for a str: 1 or 0. */
int meter_serial_ok(PyObject *value);

/* The count of its numbers when ``s[0:n]`` is a non-empty JSON array of
   numbers finite as floats (scan.py's finite_number_counts_reference for
   one array), 0 when not, -1 on error. */
Py_ssize_t finite_number_array(const char *s, Py_ssize_t n);

/* Byte tables of gateway/core/_native.c, 1 for: a digit; JSON's white
   space; _CUT's class of scan.py (what a values array of numbers is made
   of: digits . , e E + - and white space). 0 at NUL. */
extern const unsigned char digit_byte[256];
extern const unsigned char json_ws_byte[256];
extern const unsigned char cut_class_byte[256];

/* gateway/core/_native_wire.c: the data plane's wire forms. */
extern PyMethodDef native_wire_methods[];

/* gateway/core/_native_record.c: a one-record JSON answer proven in one pass. */
extern PyMethodDef native_record_methods[];

/* gateway/core/_native_days.c: the columnar push's common meter-days. */
extern PyMethodDef native_days_methods[];
int native_days_init(void);

/* gateway/core/_native_runs.c: the per-record push's meter-by-meter routing. */
extern PyMethodDef native_runs_methods[];

#endif
