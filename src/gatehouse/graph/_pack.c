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

static PyMethodDef pack_methods[] = {
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
