/* Packing a graph load into the CSR layout of gatehouse.graph.store, in C.
 *
 * GraphStore.load collects one (object id, entry) pair per tuple and index in two flat
 * arrays; build() turns them into the offsets and entries of a packed index with a counting
 * sort by object, then sorts and dedupes each object's group. No Python object per tuple or
 * per object, so a load's peak memory is a few flat arrays. The store keeps a pure-Python
 * path with the same result for installs without this module.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* build(keys: array('i'), ents: array('q'), off: array('I') of n + 1 zeros,
 *       dat: array('q') as long as ents) -> entries kept (groups sorted and deduped) */
static PyObject *pack_build(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "build(keys, ents, off, dat)");
        return NULL;
    }
    Py_buffer kb, eb, ob, db;
    if (PyObject_GetBuffer(args[0], &kb, PyBUF_SIMPLE) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[1], &eb, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&kb);
        return NULL;
    }
    if (PyObject_GetBuffer(args[2], &ob, PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&kb);
        PyBuffer_Release(&eb);
        return NULL;
    }
    if (PyObject_GetBuffer(args[3], &db, PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&kb);
        PyBuffer_Release(&eb);
        PyBuffer_Release(&ob);
        return NULL;
    }
    PyObject *result = NULL;
    uint32_t *cur = NULL;
    Py_ssize_t m = eb.len / 8, nk = kb.len / 4, n1 = ob.len / 4;
    const int32_t *keys = kb.buf;
    const int64_t *ents = eb.buf;
    uint32_t *off = ob.buf;
    int64_t *dat = db.buf;
    if (kb.len % 4 || eb.len % 8 || ob.len % 4 || db.len % 8 || nk != m || db.len / 8 != m ||
        n1 < 1 || m > (Py_ssize_t)UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "build: arrays of the wrong sizes");
        goto done;
    }
    Py_ssize_t n = n1 - 1;
    memset(off, 0, (size_t)n1 * 4);
    for (Py_ssize_t i = 0; i < m; i++) {
        int32_t k = keys[i];
        if (k < 0 || k >= n) {
            PyErr_SetString(PyExc_ValueError, "build: object id out of range");
            goto done;
        }
        off[k + 1]++;
    }
    for (Py_ssize_t o = 0; o < n; o++)
        off[o + 1] += off[o];
    cur = PyMem_Malloc((size_t)(n ? n : 1) * 4);
    if (!cur) {
        PyErr_NoMemory();
        goto done;
    }
    memcpy(cur, off, (size_t)n * 4);
    for (Py_ssize_t i = 0; i < m; i++)
        dat[cur[keys[i]]++] = ents[i];
    /* sort and dedupe each group, compacting towards the front */
    Py_ssize_t w = 0;
    for (Py_ssize_t o = 0; o < n; o++) {
        Py_ssize_t lo = off[o], hi = off[o + 1], start = w;
        off[o] = (uint32_t)w;
        if (hi - lo > 1)
            qsort(dat + lo, (size_t)(hi - lo), 8, cmp_i64);
        for (Py_ssize_t i = lo; i < hi; i++)
            if (w == start || dat[i] != dat[w - 1])
                dat[w++] = dat[i];
    }
    off[n] = (uint32_t)w;
    result = PyLong_FromSsize_t(w);
done:
    PyMem_Free(cur);
    PyBuffer_Release(&kb);
    PyBuffer_Release(&eb);
    PyBuffer_Release(&ob);
    PyBuffer_Release(&db);
    return result;
}

/* region(arr, lo, hi, ver, prev, changes, i, j) -> bytes: an overlay region, the header
 * [ver, prev, n] then arr[lo:hi] edited by changes[i:j]. Each change is an int whose low 64
 * bits are `entry << 1 | present` (higher bits: the object, equal within i..j), sorted, so
 * removals and additions arrive in entry order; the result is sorted and unique. */
static PyObject *pack_region(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 8 || !PyList_Check(args[5])) {
        PyErr_SetString(PyExc_TypeError, "region(arr, lo, hi, ver, prev, changes: list, i, j)");
        return NULL;
    }
    Py_ssize_t lo = PyLong_AsSsize_t(args[1]), hi = PyLong_AsSsize_t(args[2]);
    long long ver = PyLong_AsLongLong(args[3]), prev = PyLong_AsLongLong(args[4]);
    Py_ssize_t ci = PyLong_AsSsize_t(args[6]), cj = PyLong_AsSsize_t(args[7]);
    if (PyErr_Occurred())
        return NULL;
    PyObject *changes = args[5];
    if (ci < 0 || cj < ci || cj > PyList_GET_SIZE(changes)) {
        PyErr_SetString(PyExc_ValueError, "region: bad change bounds");
        return NULL;
    }
    Py_ssize_t nc = cj - ci;
    int64_t *adds = PyMem_Malloc((size_t)(nc ? nc : 1) * 8);
    int64_t *rem = PyMem_Malloc((size_t)(nc ? nc : 1) * 8);
    PyObject *out = NULL;
    Py_ssize_t na = 0, nr = 0;
    if (!adds || !rem) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t c = ci; c < cj; c++) {
        unsigned long long v = PyLong_AsUnsignedLongLongMask(PyList_GET_ITEM(changes, c));
        if (v == (unsigned long long)-1 && PyErr_Occurred())
            goto done;
        if (v & 1)
            adds[na++] = (int64_t)(v >> 1);
        else
            rem[nr++] = (int64_t)(v >> 1);
    }
    Py_buffer b;
    if (PyObject_GetBuffer(args[0], &b, PyBUF_SIMPLE) < 0)
        goto done;
    if (b.len % 8 || lo < 0 || hi < lo || hi > b.len / 8) {
        PyErr_SetString(PyExc_ValueError, "region: bad group bounds");
        PyBuffer_Release(&b);
        goto done;
    }
    const int64_t *g = (const int64_t *)b.buf;
    out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(3 + (hi - lo) + na) * 8);
    if (!out) {
        PyBuffer_Release(&b);
        goto done;
    }
    int64_t *o = (int64_t *)PyBytes_AS_STRING(out);
    Py_ssize_t w = 3, i = lo, j = 0, k = 0;
    while (i < hi || j < na) {
        int64_t x;
        if (j == na || (i < hi && g[i] < adds[j])) {
            x = g[i++];
            while (k < nr && rem[k] < x)
                k++;
            if (k < nr && rem[k] == x)
                continue; /* removed */
        } else if (i < hi && g[i] == adds[j]) {
            x = g[i++]; /* removals come first, then adds: present either way */
            j++;
        } else {
            x = adds[j++];
        }
        if (w == 3 || o[w - 1] != x)
            o[w++] = x;
    }
    PyBuffer_Release(&b);
    o[0] = ver;
    o[1] = prev;
    o[2] = w - 3;
    if (_PyBytes_Resize(&out, w * 8) < 0)
        out = NULL;
done:
    PyMem_Free(adds);
    PyMem_Free(rem);
    return out;
}

static PyMethodDef pack_methods[] = {
    {"region", (PyCFunction)(void (*)(void))pack_region, METH_FASTCALL,
     "region(arr, lo, hi, ver, prev, changes, i, j) -> the bytes of an overlay region"},
    {"build", (PyCFunction)(void (*)(void))pack_build, METH_FASTCALL,
     "build(keys, ents, off, dat) -> entries kept: a packed index from (object, entry) pairs"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef pack_module = {
    PyModuleDef_HEAD_INIT, "_pack", "Packing a graph load, in C.", -1, pack_methods,
};

PyMODINIT_FUNC PyInit__pack(void)
{
    return PyModule_Create(&pack_module);
}
