/* C shared by the graph's packer (_pack) and the engine's compiled check (_kernel): a
 * growable int64 vector, an overlay's shard lookup, and the interner's object lookup
 * (Interner.oid).
 *
 * The interner keeps `names` (a list of str, index = oid) and `_slots` (array('i') of a
 * power-of-two size, at most half full: oid or -1), probed linearly from hash(name). The
 * GIL is held throughout. (Interleaving the probes of two names, so that their cache misses
 * overlap, measured slower than two lookups in a row at 3*10^6 tuples: not done.)
 */
#ifndef GATEHOUSE_COMMON_H
#define GATEHOUSE_COMMON_H

#include <Python.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    int64_t *v;
    Py_ssize_t n, cap;
} Vec;

/* room for `extra` more items; 0, or -1 with MemoryError */
static inline int vec_reserve(Vec *x, Py_ssize_t extra)
{
    if (x->n + extra <= x->cap)
        return 0;
    Py_ssize_t cap = x->cap ? x->cap : 16;
    while (cap < x->n + extra)
        cap *= 2;
    int64_t *v = PyMem_Realloc(x->v, (size_t)cap * 8);
    if (!v) {
        PyErr_NoMemory();
        return -1;
    }
    x->v = v;
    x->cap = cap;
    return 0;
}

static inline int vec_push(Vec *x, int64_t k)
{
    if (vec_reserve(x, 1) < 0)
        return -1;
    x->v[x->n++] = k;
    return 0;
}

static inline int vec_extend(Vec *x, const int64_t *v, Py_ssize_t n)
{
    if (vec_reserve(x, n) < 0)
        return -1;
    memcpy(x->v + x->n, v, (size_t)n * 8);
    x->n += n;
    return 0;
}

/* `p` (a PyMem array of *cap items of `size` bytes, n of them in use) with room for one
 * more: doubled from 64 when full. The array, or NULL with MemoryError (p left as it was). */
static inline void *grow(void *p, Py_ssize_t n, Py_ssize_t *cap, size_t size)
{
    if (n < *cap)
        return p;
    Py_ssize_t c = *cap ? 2 * *cap : 64;
    void *t = PyMem_Realloc(p, (size_t)c * size);
    if (!t)
        return PyErr_NoMemory();
    *cap = c;
    return t;
}

/* The dict of an overlay's `shards` (Overlay.shards: a list of 2^k dicts, picked by the
 * oid's low k bits) that holds `oid`: borrowed, or NULL with an exception set. */
static inline PyObject *shard_of(PyObject *shards, long long oid)
{
    Py_ssize_t n = PyList_Check(shards) ? PyList_GET_SIZE(shards) : 0;
    PyObject *d = n > 0 && !(n & (n - 1)) ? PyList_GET_ITEM(shards, oid & (n - 1)) : NULL;
    if (!d || !PyDict_Check(d)) {
        PyErr_SetString(PyExc_TypeError, "overlay shards: not a list of 2^k dicts");
        return NULL;
    }
    return d;
}

/* The interner's tables: *b its slot table's buffer (2^k int32 oids or -1; the caller
 * releases it) and *table its names list (a new reference). 0, or -1 with an exception set
 * and nothing held. */
static inline int interner_tables(PyObject *interner, Py_buffer *b, PyObject **table)
{
    static PyObject *s_slots, *s_names;
    if (!s_slots && !(s_slots = PyUnicode_InternFromString("_slots")))
        return -1;
    if (!s_names && !(s_names = PyUnicode_InternFromString("names")))
        return -1;
    PyObject *slots = PyObject_GetAttr(interner, s_slots);
    if (!slots)
        return -1;
    PyObject *names = PyObject_GetAttr(interner, s_names);
    if (!names || !PyList_Check(names) || PyObject_GetBuffer(slots, b, PyBUF_SIMPLE) < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "not an interner: no _slots buffer or names list");
        Py_DECREF(slots);
        Py_XDECREF(names);
        return -1;
    }
    Py_DECREF(slots); /* the buffer holds it */
    Py_ssize_t size = b->len / 4;
    if (b->len % 4 || size == 0 || size & (size - 1)) {
        PyErr_SetString(PyExc_ValueError, "interner: slot table size is not a power of two");
        PyBuffer_Release(b);
        Py_DECREF(names);
        return -1;
    }
    *table = names;
    return 0;
}

#define FIND_MAX 4

/* Looks up names[0:n] (n <= FIND_MAX, exact str) in `interner`; out[i] is the oid or -1.
 * Returns 0, or -1 with an exception set. Several names share the attribute fetches. */
static inline int find_names(PyObject *interner, PyObject *const *names, int n, int64_t *out)
{
    Py_hash_t h[FIND_MAX];
    for (int k = 0; k < n; k++)
        if ((h[k] = PyObject_Hash(names[k])) == -1)
            return -1;
    Py_buffer b;
    PyObject *table;
    if (interner_tables(interner, &b, &table) < 0)
        return -1;
    int rc = -1;
    Py_ssize_t mask = b.len / 4 - 1, count = PyList_GET_SIZE(table);
    const int32_t *sl = b.buf;
    PyObject **items = ((PyListObject *)table)->ob_item;
    for (int k = 0; k < n; k++) {
        PyObject *key = names[k];
        Py_ssize_t i = (Py_ssize_t)((Py_uhash_t)h[k] & (Py_uhash_t)mask);
        out[k] = -1;
        for (Py_ssize_t steps = 0; steps <= mask; steps++) {
            int32_t o = sl[i];
            if (o < 0)
                break;
            if (o >= count) {
                PyErr_SetString(PyExc_IndexError, "find: slot past the names");
                goto done;
            }
            /* names are exact str objects with their hash cached: compare without calling
             * back into Python, and only when the hashes agree */
            PyObject *nm = items[o];
            if (nm == key ||
                (PyUnicode_CheckExact(nm) &&
                 (((PyASCIIObject *)nm)->hash == h[k] || ((PyASCIIObject *)nm)->hash == -1) &&
                 PyUnicode_Compare(nm, key) == 0)) {
                out[k] = o;
                break;
            }
            if (PyErr_Occurred())
                goto done;
            i = (i + 1) & mask;
        }
    }
    rc = 0;
done:
    PyBuffer_Release(&b);
    Py_DECREF(table);
    return rc;
}

#endif
