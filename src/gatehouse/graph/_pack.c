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
#include <sys/mman.h>
#include <unistd.h>

#include "_common.h"

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

/* The entry layout of gatehouse.graph.store (the store checks LAYOUT before using this). */
#define REL_BITS 12
#define REL_MASK ((1LL << REL_BITS) - 1)
#define F_REL 44
#define F_US (1LL << 43)
#define SK_MASK (F_US - 1)
#define R_REL 32
#define FE_BITS 56
#define FE_MASK ((1ULL << FE_BITS) - 1)

static int cmp_pair(const void *a, const void *b)
{
    const int64_t *x = a, *y = b;
    if (x[0] != y[0])
        return (x[0] > y[0]) - (x[0] < y[0]);
    return (x[1] > y[1]) - (x[1] < y[1]);
}

/* edits(net) -> (forward, reverse): a delta's net changes (keys `oid << 56 | forward entry`,
 * values present or not) as each index's edits, bytes of (object, entry << 1 | present)
 * int64 pairs sorted: grouped by object, in entry order within a group. */
static PyObject *pack_edits(PyObject *mod, PyObject *net)
{
    if (!PyDict_Check(net)) {
        PyErr_SetString(PyExc_TypeError, "edits(net: dict)");
        return NULL;
    }
    Py_ssize_t n = PyDict_GET_SIZE(net), pos = 0, k = 0;
    PyObject *key, *val, *f = NULL, *r = NULL, *shift = PyLong_FromLong(FE_BITS);
    if (!shift)
        return NULL;
    f = PyBytes_FromStringAndSize(NULL, n * 16);
    r = f ? PyBytes_FromStringAndSize(NULL, n * 16) : NULL;
    if (!r)
        goto fail;
    int64_t *fv = (int64_t *)PyBytes_AS_STRING(f), *rv = (int64_t *)PyBytes_AS_STRING(r);
    while (PyDict_Next(net, &pos, &key, &val)) {
        unsigned long long low = PyLong_AsUnsignedLongLongMask(key);
        if (low == (unsigned long long)-1 && PyErr_Occurred())
            goto fail;
        PyObject *hi = PyNumber_Rshift(key, shift);
        if (!hi)
            goto fail;
        long long oid = PyLong_AsLongLong(hi);
        Py_DECREF(hi);
        int present = PyObject_IsTrue(val);
        if ((oid == -1 && PyErr_Occurred()) || present < 0)
            goto fail;
        if (oid < 0 || oid > (long long)UINT32_MAX) {
            PyErr_SetString(PyExc_ValueError, "edits: object id out of range");
            goto fail;
        }
        int64_t e = (int64_t)(low & FE_MASK), sk = e & SK_MASK;
        fv[2 * k] = oid;
        fv[2 * k + 1] = e << 1 | present;
        rv[2 * k] = sk >> REL_BITS;
        rv[2 * k + 1] = ((((sk & REL_MASK) << REL_BITS | (e >> F_REL)) << R_REL) | oid) << 1 | present;
        k++;
    }
    Py_BEGIN_ALLOW_THREADS /* the buffers are new and ours alone */
    qsort(fv, (size_t)k, 16, cmp_pair);
    qsort(rv, (size_t)k, 16, cmp_pair);
    Py_END_ALLOW_THREADS
    Py_DECREF(shift);
    return Py_BuildValue("(NN)", f, r);
fail:
    Py_XDECREF(f);
    Py_XDECREF(r);
    Py_DECREF(shift);
    return NULL;
}

/* Appends pending entries out[0:n] to chunk `c` (an array('q')), through a memoryview of
 * them (no intermediate bytes copy). */
static int flush(PyObject *c, const int64_t *out, Py_ssize_t n)
{
    if (!n)
        return 0;
    PyObject *mv = PyMemoryView_FromMemory((char *)out, n * 8, PyBUF_READ);
    PyObject *r = mv ? PyObject_CallMethod(c, "frombytes", "O", mv) : NULL;
    Py_XDECREF(r);
    Py_XDECREF(mv);
    return r ? 0 : -1;
}

/* The region `ref` (chunk << 32 | start) of the overlay chunks `ovl`: *b holds its chunk's
 * buffer (the caller releases it), *region points at its header [version, prev, n].
 * Returns 0, or -1 with an exception set (and nothing held). */
static int open_region(PyObject *ovl, long long ref, Py_buffer *b, const int64_t **region)
{
    long long ci = ref >> 32, st = ref & 0xffffffffLL;
    if (ci < 0 || ci >= PyList_GET_SIZE(ovl)) {
        PyErr_SetString(PyExc_IndexError, "overlay chunk out of range");
        return -1;
    }
    if (PyObject_GetBuffer(PyList_GET_ITEM(ovl, ci), b, PyBUF_SIMPLE) < 0)
        return -1;
    const int64_t *c = b->buf;
    Py_ssize_t len = b->len / 8;
    if (st + 3 > len || c[st + 2] < 0 || st + 3 + c[st + 2] > len) {
        PyBuffer_Release(b);
        PyErr_SetString(PyExc_IndexError, "overlay region out of range");
        return -1;
    }
    *region = c + st;
    return 0;
}

/* One object's group in a step of append(): where it is read from, and where its new region
 * landed in the step's output. */
typedef struct {
    PyObject *obj;        /* the oid as an int (owned) */
    long long oid, prev;  /* prev: the ref of its newest region, -1 if none */
    const int64_t *g;     /* its overlay region's entries, or NULL: the base (read unlocked) */
    Py_ssize_t gn;        /* entries at g */
    Py_ssize_t i, j;      /* its edits: [i, j) */
    Py_ssize_t w0, L;     /* its new region: out[w0 : w0 + L], header included; L 0: unchanged */
    Py_ssize_t delta;     /* net change in entries */
} Grp;

/* append(ovl, shards, off, dat, nbase, cur, edits, ver, chunk, start, step)
 *   -> (refs, entries, net, next):
 * GraphStore.apply's writes to one index, from edit `start` on. `edits` are as edits()
 * makes them. Each object's group is read as the snapshot at version `cur` sees it (the
 * newest overlay region not newer than `cur`, else the base off/dat, whose first `nbase`
 * objects it holds), edited, and appended as a region of version `ver` to the overlay
 * chunks `ovl` (a new chunk when one would pass `chunk` entries). A group whose edits
 * change nothing is not written. It stops at the first group boundary after `step` edits
 * and returns where to go on (`next`): the caller loops. Also returns the (object, ref)
 * pairs to link, the entries written and the net change in entries. On error the chunks
 * may hold unreferenced regions: unreachable, as nothing was linked.
 *
 * Three phases: find each group (dict lookups, with the GIL); read and edit them (without
 * it: at 10^7 tuples this waited ~1 ms per call on memory, a page not read for a while
 * being slow to read here, while readers waited for the GIL); then write the regions to
 * the chunks and make the refs (with it). The base never changes, and the chunks read are
 * held (no resize) until the edits are done; only the writer holding the turn appends. */
static PyObject *pack_append(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 11 || !PyList_Check(args[0]) || !PyList_Check(args[1]) ||
        !PyBytes_Check(args[6]) || PyBytes_GET_SIZE(args[6]) % 16 ||
        PyList_GET_SIZE(args[0]) < 1) {
        PyErr_SetString(PyExc_TypeError,
                        "append(ovl: list, shards: list, off, dat, nbase, cur, edits: bytes, ver, "
                        "chunk, start, step)");
        return NULL;
    }
    PyObject *ovl = args[0], *ov = args[1];
    const int64_t *ed = (const int64_t *)PyBytes_AS_STRING(args[6]);
    long long nbase = PyLong_AsLongLong(args[4]), cur = PyLong_AsLongLong(args[5]);
    long long ver = PyLong_AsLongLong(args[7]), chunk = PyLong_AsLongLong(args[8]);
    Py_ssize_t start = PyLong_AsSsize_t(args[9]), step = PyLong_AsSsize_t(args[10]);
    if (PyErr_Occurred())
        return NULL;
    if (start < 0 || start > PyBytes_GET_SIZE(args[6]) / 16 || step < 1) {
        PyErr_SetString(PyExc_ValueError, "append: bad start or step");
        return NULL;
    }
    Py_buffer ob = {0}, db = {0};
    Py_buffer *held = NULL; /* the chunks of the regions read */
    Grp *gs = NULL;
    Py_ssize_t nheld = 0, hcap = 0, ng = 0, gcap = 0;
    int64_t *out = NULL; /* raw-allocated: grown without the GIL */
    Py_ssize_t nout = 0;
    PyObject *refs = NULL, *result = NULL;
    if (PyObject_GetBuffer(args[2], &ob, PyBUF_SIMPLE) < 0 ||
        PyObject_GetBuffer(args[3], &db, PyBUF_SIMPLE) < 0)
        goto done;
    Py_ssize_t nc = PyBytes_GET_SIZE(args[6]) / 16, written = 0, net = 0;
    const uint32_t *off = ob.buf;
    const int64_t *dat = db.buf;
    if (ob.len % 4 || db.len % 8 || nbase < 0 || nbase + 1 > ob.len / 4) {
        PyErr_SetString(PyExc_ValueError, "append: base arrays of the wrong sizes");
        goto done;
    }
    /* 1. each object's group: its newest region not newer than `cur`, or the base */
    Py_ssize_t i = start;
    while (i < nc && i - start < step) {
        long long oid = ed[2 * i];
        Py_ssize_t j = i + 1;
        while (j < nc && ed[2 * j] == oid)
            j++;
        if (oid < 0 || oid > (long long)UINT32_MAX) {
            PyErr_SetString(PyExc_ValueError, "append: object id out of range");
            goto done;
        }
        Grp *more = grow(gs, ng, &gcap, sizeof *gs);
        if (!more)
            goto done;
        gs = more;
        Grp *x = &gs[ng];
        memset(x, 0, sizeof *x);
        x->oid = oid, x->i = i, x->j = j, x->prev = -1;
        if (!(x->obj = PyLong_FromLongLong(oid)))
            goto done;
        ng++;
        PyObject *d = shard_of(ov, oid);
        PyObject *ref = d ? PyDict_GetItemWithError(d, x->obj) : NULL;
        if (!ref && PyErr_Occurred())
            goto done;
        x->prev = ref ? PyLong_AsLongLong(ref) : -1;
        if (x->prev == -1 && PyErr_Occurred())
            goto done;
        for (long long r = x->prev; r >= 0;) {
            Py_buffer *room = grow(held, nheld, &hcap, sizeof *held);
            if (!room)
                goto done;
            held = room;
            const int64_t *reg;
            if (open_region(ovl, r, &held[nheld], &reg) < 0)
                goto done;
            if (reg[0] <= cur) {
                nheld++;
                x->g = reg + 3;
                x->gn = (Py_ssize_t)reg[2];
                break;
            }
            r = reg[1];
            PyBuffer_Release(&held[nheld]);
        }
        i = j;
    }
    /* 2. read and edit, without the GIL */
    int err = 0; /* 1: offsets past the entries, 2: no memory */
    PyThreadState *unlocked = ng ? PyEval_SaveThread() : NULL;
    Py_ssize_t cap = 0;
    for (Py_ssize_t k = 0; k < ng && !err; k++) {
        Grp *x = &gs[k];
        const int64_t *g = x->g;
        Py_ssize_t gn = x->gn;
        if (!g && x->oid < nbase) {
            Py_ssize_t a = off[x->oid], z = off[x->oid + 1];
            if (a > z || z > db.len / 8) {
                err = 1;
                break;
            }
            g = dat + a;
            gn = z - a;
        }
        /* merge: removals and additions arrive in entry order (entries are unique) */
        const int64_t *ch = ed + 2 * x->i;
        Py_ssize_t nch = x->j - x->i;
        if (nout + 3 + gn + nch > cap) {
            Py_ssize_t c = cap ? cap : 1024;
            while (c < nout + 3 + gn + nch)
                c *= 2;
            int64_t *t = PyMem_RawRealloc(out, (size_t)c * 8);
            if (!t) {
                err = 2;
                break;
            }
            out = t, cap = c;
        }
        Py_ssize_t w0 = nout, w = w0 + 3, a = 0, e_i = 0, delta = 0, edits = 0;
        int64_t *o = out;
        for (; a < gn || e_i < nch;) {
            int64_t e = e_i < nch ? ch[2 * e_i + 1] >> 1 : 0;
            if (e_i == nch || (a < gn && g[a] < e)) {
                o[w++] = g[a++];
            } else if (a < gn && g[a] == e) {
                if (ch[2 * e_i + 1] & 1) {
                    o[w++] = e; /* already present */
                } else {
                    delta--, edits++; /* removed */
                }
                a++, e_i++;
            } else {
                if (ch[2 * e_i + 1] & 1) {
                    o[w++] = e;
                    delta++, edits++;
                }
                e_i++;
            }
        }
        if (!edits)
            continue; /* unchanged: not written */
        o[w0] = ver;
        o[w0 + 1] = x->prev;
        o[w0 + 2] = w - w0 - 3;
        x->w0 = w0, x->L = w - w0, x->delta = delta;
        nout = w;
    }
    if (unlocked)
        PyEval_RestoreThread(unlocked);
    for (Py_ssize_t k = 0; k < nheld; k++) /* before the chunks are appended to */
        PyBuffer_Release(&held[k]);
    nheld = 0;
    if (err) {
        if (err == 1)
            PyErr_SetString(PyExc_IndexError, "append: offsets past the entries");
        else
            PyErr_NoMemory();
        goto done;
    }
    /* 3. the regions into the chunks (a region never spans chunks), and their refs */
    if (!(refs = PyList_New(0)))
        goto done;
    PyObject *last = PyList_GET_ITEM(ovl, PyList_GET_SIZE(ovl) - 1);
    Py_ssize_t clen = PyObject_Size(last); /* the last chunk's length, pending included */
    if (clen < 0)
        goto done;
    Py_ssize_t pending = 0; /* out[pending : ...] is not in a chunk yet */
    for (Py_ssize_t k = 0; k < ng; k++) {
        Grp *x = &gs[k];
        if (!x->L)
            continue;
        if (clen > 0 && clen + x->L > chunk) {
            if (flush(last, out + pending, x->w0 - pending) < 0)
                goto done;
            pending = x->w0;
            last = PyObject_CallFunction((PyObject *)Py_TYPE(last), "s", "q");
            int bad = !last || PyList_Append(ovl, last) < 0;
            Py_XDECREF(last); /* the list holds it */
            if (bad)
                goto done;
            clen = 0;
        }
        long long nref = (long long)(PyList_GET_SIZE(ovl) - 1) << 32 | clen;
        clen += x->L;
        written += x->L;
        net += x->delta;
        PyObject *pair = Py_BuildValue("(OL)", x->obj, nref);
        if (!pair || PyList_Append(refs, pair) < 0) {
            Py_XDECREF(pair);
            goto done;
        }
        Py_DECREF(pair);
    }
    if (flush(last, out + pending, nout - pending) < 0)
        goto done;
    result = Py_BuildValue("(Onnn)", refs, written, net, i);
done:
    for (Py_ssize_t k = 0; k < nheld; k++)
        PyBuffer_Release(&held[k]);
    PyMem_Free(held);
    for (Py_ssize_t k = 0; k < ng; k++)
        Py_DECREF(gs[k].obj);
    PyMem_Free(gs);
    PyMem_RawFree(out);
    Py_XDECREF(refs);
    if (ob.obj)
        PyBuffer_Release(&ob);
    if (db.obj)
        PyBuffer_Release(&db);
    return result;
}

/* find(interner, name) -> oid or -1: Interner.oid without the interpreter's per-step cost */
static PyObject *pack_find(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyUnicode_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "find(interner, name: str)");
        return NULL;
    }
    int64_t oid;
    if (find_names(args[0], args + 1, 1, &oid) < 0)
        return NULL;
    return PyLong_FromLongLong(oid);
}

/* visible(shards, ovl, oids, ver) -> (bytes of (oid, ref) int64 pairs, entries): for each
 * of `oids`, the newest region of its group (ref into the chunks `ovl`, through the overlay
 * `shards`) not
 * newer than version `ver`, if any: what a snapshot at `ver` reads from the overlay instead
 * of the base; and the entries of those regions. One step of a compaction: the caller
 * passes a slice of the overlay's keys. */
static PyObject *pack_visible(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyList_Check(args[0]) || !PyList_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "visible(shards: list, ovl: list, oids, ver)");
        return NULL;
    }
    long long ver = PyLong_AsLongLong(args[3]);
    if (ver == -1 && PyErr_Occurred())
        return NULL;
    PyObject *it = PyObject_GetIter(args[2]), *oid, *out = NULL;
    if (!it)
        return NULL;
    Vec v = {0};
    long long entries = 0;
    while ((oid = PyIter_Next(it))) {
        long long o = PyLong_AsLongLong(oid);
        PyObject *d = o == -1 && PyErr_Occurred() ? NULL : shard_of(args[0], o);
        PyObject *ref = d ? PyDict_GetItemWithError(d, oid) : NULL;
        Py_DECREF(oid);
        long long r = ref ? PyLong_AsLongLong(ref) : -1;
        if (!ref || (r == -1 && PyErr_Occurred())) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_KeyError, "visible: an oid not in the overlay");
            goto done;
        }
        while (r >= 0) {
            Py_buffer b;
            const int64_t *reg;
            if (open_region(args[1], r, &b, &reg) < 0)
                goto done;
            long long rv = reg[0], prev = reg[1], k = reg[2];
            PyBuffer_Release(&b);
            if (rv <= ver) {
                if (vec_push(&v, o) < 0 || vec_push(&v, r) < 0)
                    goto done;
                entries += k;
                break;
            }
            r = prev;
        }
    }
    if (!PyErr_Occurred())
        out = Py_BuildValue("(y#L)", v.v ? (const char *)v.v : "", v.n * 8, entries);
done:
    Py_DECREF(it);
    PyMem_Free(v.v);
    return out;
}

/* sort_pairs(pairs: array('q')): sorts its (oid, ref) pairs by oid, in place, with the GIL
 * released (a compaction's overlay holds up to ~10^5 groups: milliseconds of sorting that
 * readers need not wait for). The caller owns `pairs`: nothing else may touch it meanwhile. */
static PyObject *pack_sort_pairs(PyObject *mod, PyObject *arg)
{
    Py_buffer b;
    if (PyObject_GetBuffer(arg, &b, PyBUF_WRITABLE) < 0)
        return NULL;
    if (b.len % 16) {
        PyBuffer_Release(&b);
        PyErr_SetString(PyExc_ValueError, "sort_pairs: not a whole number of pairs");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    qsort(b.buf, (size_t)(b.len / 16), 16, cmp_pair);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&b);
    Py_RETURN_NONE;
}

/* The fields of an array.array object (Modules/arraymodule.c), which has no C API. Only
 * `sized` writes them, and only after the import-time check below found this layout in a
 * live array (ARRAYS_SIZED); otherwise it refuses, and the store repacks in Python. */
typedef struct {
    PyObject_VAR_HEAD
    char *ob_item;
    Py_ssize_t allocated;
    const void *ob_descr;
    PyObject *weakreflist;
    Py_ssize_t ob_exports;
} ArrayFields;

static int arrays_sized; /* array_layout_matches() at import */

static int array_layout_matches(void)
{
    PyObject *mod = PyImport_ImportModule("array"), *a = NULL;
    int ok = 0;
    if (mod)
        a = PyObject_CallMethod(mod, "array", "sy#", "q", "\1\0\0\0\0\0\0\0\2\0\0\0\0\0\0\0\3\0\0\0\0\0\0\0",
                                (Py_ssize_t)24);
    if (a && Py_TYPE(a)->tp_basicsize == (Py_ssize_t)sizeof(ArrayFields)) {
        ArrayFields *x = (ArrayFields *)a;
        Py_buffer b;
        if (PyObject_GetBuffer(a, &b, PyBUF_SIMPLE) == 0) {
            ok = Py_SIZE(a) == 3 && x->ob_item == b.buf && x->allocated >= 3 &&
                 x->ob_exports == 1 && x->weakreflist == NULL;
            PyBuffer_Release(&b);
            ok = ok && x->ob_exports == 0;
        }
    }
    Py_XDECREF(a);
    Py_XDECREF(mod);
    PyErr_Clear();
    return ok;
}

/* sized(template, n) -> an array of the template's type and typecode holding n items, not
 * initialised. Its memory is allocated but not touched: a large one is fresh pages, faulted
 * in as they are first written (~2 us each here), so a caller filling it in steps pays for
 * its pages a step at a time, and never for growing (realloc) a large array. */
static PyObject *pack_sized(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "sized(template: array, n)");
        return NULL;
    }
    if (!arrays_sized) {
        PyErr_SetString(PyExc_TypeError, "sized: array objects are not laid out as expected");
        return NULL;
    }
    Py_ssize_t n = PyLong_AsSsize_t(args[1]);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    Py_buffer b;
    if (PyObject_GetBuffer(args[0], &b, PyBUF_FORMAT) < 0)
        return NULL;
    Py_ssize_t item = b.itemsize;
    PyObject *tc = b.format ? PyUnicode_FromString(b.format) : NULL;
    PyBuffer_Release(&b);
    if (!tc)
        return NULL;
    if (n < 0 || (item && n > PY_SSIZE_T_MAX / item)) {
        Py_DECREF(tc);
        PyErr_SetString(PyExc_ValueError, "sized: bad size");
        return NULL;
    }
    PyObject *a = PyObject_CallOneArg((PyObject *)Py_TYPE(args[0]), tc);
    Py_DECREF(tc);
    if (!a)
        return NULL;
    ArrayFields *x = (ArrayFields *)a;
    if (Py_SIZE(a) != 0 || x->ob_item != NULL) {
        Py_DECREF(a);
        PyErr_SetString(PyExc_TypeError, "sized: not an array type");
        return NULL;
    }
    if (n) {
        char *mem = PyMem_Malloc((size_t)(n * item));
        if (!mem) {
            Py_DECREF(a);
            return PyErr_NoMemory();
        }
        x->ob_item = mem;
        x->allocated = n;
        Py_SET_SIZE(a, n);
    }
    return a;
}

/* Whether a buffer (asked with PyBUF_FORMAT) holds 4-byte offsets, as array('I') does. */
static int is_u32(const Py_buffer *b)
{
    return b->itemsize == 4 && b->format && strcmp(b->format, "I") == 0;
}

/* kept(off, n, pairs) -> the base's entries (off: 'I' offsets) outside the groups of the
 * paired objects, which `merge` replaces by their regions. Pairs past the base replace
 * nothing; an oid past n is an error. */
static PyObject *pack_kept(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "kept(off, n, pairs)");
        return NULL;
    }
    long long n = PyLong_AsLongLong(args[1]);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    Py_buffer ob, pb;
    if (PyObject_GetBuffer(args[0], &ob, PyBUF_FORMAT) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[2], &pb, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&ob);
        return NULL;
    }
    PyObject *out = NULL;
    const uint32_t *off = ob.buf;
    const int64_t *pairs = pb.buf;
    long long nb = ob.len / 4 - 1;
    if (!is_u32(&ob) || nb < 0 || pb.len % 16) {
        PyErr_SetString(PyExc_TypeError, "kept: off must be an array('I'), pairs 'q' pairs");
        goto done;
    }
    long long total = off[nb];
    for (Py_ssize_t k = 0; k < pb.len / 16; k++) {
        long long o = pairs[2 * k];
        if (o < 0 || o >= n) {
            PyErr_SetString(PyExc_ValueError, "kept: an oid past n");
            goto done;
        }
        if (o < nb)
            total -= (long long)off[o + 1] - (long long)off[o];
    }
    out = PyLong_FromLongLong(total);
done:
    PyBuffer_Release(&ob);
    PyBuffer_Release(&pb);
    return out;
}

/* One copy a merge step plans with the GIL held and runs without it: objects a..b-1 get
 * `n` entries from `src` (a base run, whose offsets come from `off`; or one region), or
 * none (objects past the base). */
typedef struct {
    const int64_t *src;
    Py_ssize_t n;
    long long a, b;
    int base;
} Copy;

/* merge(new_off, new_dat, off, dat, n, ovl, pairs, i, pos, budget) -> (i, pos): one step of
 * a compaction's repack into arrays made by `sized`: new_off ('I') of n + 1 offsets with
 * new_off[0..pos] written, new_dat ('q') of `kept` + the regions' entries. Objects pos, pos + 1,
 * ... are written: an object with a pair (pairs[i], its ref; pairs sorted by oid) gets its
 * overlay region, any other its base group (off/dat; empty past the base's objects). It
 * stops once all n objects are written or about `budget` entries and objects have been (a
 * base run is cut to fit, a region is not), and returns where to go on.
 *
 * The copy runs with the GIL released: readers go on meanwhile, and the new arrays' fresh
 * pages are faulted in without holding them up. It reads the base (never resized) and
 * overlay chunks through buffers held for the copy, so a chunk cannot be resized under it
 * (a resize would fail: the store's writers hold the turn anyway); the new arrays belong to
 * the caller alone. */
static PyObject *pack_merge(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 10 || !PyList_Check(args[5])) {
        PyErr_SetString(PyExc_TypeError,
                        "merge(new_off, new_dat, off, dat, n, ovl: list, pairs, i, pos, budget)");
        return NULL;
    }
    long long n = PyLong_AsLongLong(args[4]);
    Py_ssize_t i = PyLong_AsSsize_t(args[7]), budget = PyLong_AsSsize_t(args[9]);
    long long pos = PyLong_AsLongLong(args[8]);
    if (PyErr_Occurred())
        return NULL;
    Py_buffer nob = {0}, ndb = {0}, ob = {0}, db = {0}, pb = {0};
    Py_buffer *held = NULL; /* the chunks of this step's regions */
    Copy *plan = NULL;
    Py_ssize_t nheld = 0, hcap = 0, nplan = 0, cap = 0;
    PyObject *result = NULL;
    if (PyObject_GetBuffer(args[0], &nob, PyBUF_WRITABLE | PyBUF_FORMAT) < 0 ||
        PyObject_GetBuffer(args[1], &ndb, PyBUF_WRITABLE) < 0 ||
        PyObject_GetBuffer(args[2], &ob, PyBUF_FORMAT) < 0 ||
        PyObject_GetBuffer(args[3], &db, PyBUF_SIMPLE) < 0 ||
        PyObject_GetBuffer(args[6], &pb, PyBUF_SIMPLE) < 0)
        goto done;
    if (!is_u32(&ob) || !is_u32(&nob) || db.len % 8 || ndb.len % 8 || pb.len % 16) {
        PyErr_SetString(PyExc_TypeError, "merge: offsets must be arrays of 'I', entries 'q'");
        goto done;
    }
    const uint32_t *off = ob.buf;
    uint32_t *noff = nob.buf;
    const int64_t *dat = db.buf, *pairs = pb.buf;
    int64_t *ndat = ndb.buf;
    long long nb = ob.len / 4 - 1, nd = db.len / 8, cap_d = ndb.len / 8;
    Py_ssize_t np = pb.len / 16;
    if (nb < 0 || i < 0 || i > np || pos < 0 || pos > n || budget < 1 || nob.len / 4 != n + 1) {
        PyErr_SetString(PyExc_ValueError, "merge: bad arguments");
        goto done;
    }
    long long w = noff[pos]; /* where the next entries go */
    Py_ssize_t work = 0;
    while (pos < n && work < budget) {
        long long next = i < np ? pairs[2 * i] : n;
        if (i < np && (next < pos || next >= n)) {
            PyErr_SetString(PyExc_ValueError, "merge: pairs unsorted or past n");
            goto done;
        }
        Copy c = {NULL, 0, pos, 0, 0};
        if (pos < next) {
            c.b = next;
            if (pos < nb) { /* base groups, cut so their entries fit the budget */
                if (c.b > nb)
                    c.b = nb;
                long long lim = (long long)off[pos] + (budget - work);
                if ((long long)off[c.b] > lim) {
                    long long lo = pos + 1, hi = c.b; /* first object ending past lim */
                    while (lo < hi) {
                        long long mid = lo + (hi - lo) / 2;
                        if ((long long)off[mid] > lim)
                            hi = mid;
                        else
                            lo = mid + 1;
                    }
                    c.b = lo > pos + 1 ? lo - 1 : pos + 1;
                }
                if (off[pos] > off[c.b] || off[c.b] > nd) {
                    PyErr_SetString(PyExc_IndexError, "merge: offsets past the entries");
                    goto done;
                }
                c.src = dat + off[pos];
                c.n = (Py_ssize_t)(off[c.b] - off[pos]);
                c.base = 1;
            } else if (c.b - pos > budget - work) {
                c.b = pos + (budget - work); /* empty groups of objects past the base */
            }
        } else { /* pos == next: its overlay region, its chunk held until the copy is done */
            Py_buffer *room = grow(held, nheld, &hcap, sizeof *held);
            if (!room)
                goto done;
            held = room;
            const int64_t *reg;
            if (open_region(args[5], pairs[2 * i + 1], &held[nheld], &reg) < 0)
                goto done;
            nheld++;
            c.src = reg + 3;
            c.n = (Py_ssize_t)reg[2];
            c.b = pos + 1;
            i++;
        }
        if (w + c.n > cap_d) {
            PyErr_SetString(PyExc_IndexError, "merge: more entries than new_dat holds");
            goto done;
        }
        Copy *more = grow(plan, nplan, &cap, sizeof *plan);
        if (!more)
            goto done;
        plan = more;
        plan[nplan++] = c;
        w += c.n;
        work += (Py_ssize_t)(c.b - c.a) + c.n;
        pos = c.b;
    }
    if (pos >= n && i < np) { /* pairs left over: out of order, or repeated */
        PyErr_SetString(PyExc_ValueError, "merge: pairs unsorted or past n");
        goto done;
    }
    if (w > 0xffffffffLL) {
        PyErr_SetString(PyExc_OverflowError, "merge: an offset passes 2**32 - 1");
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    long long at = noff[plan ? plan[0].a : pos];
    for (Py_ssize_t k = 0; k < nplan; k++) {
        const Copy *c = &plan[k];
        if (c->n)
            memcpy(ndat + at, c->src, (size_t)c->n * 8);
        if (c->base) { /* the run's offsets, shifted to where its entries landed */
            long long shift = at - (long long)off[c->a];
            for (long long o = c->a + 1; o <= c->b; o++)
                noff[o] = (uint32_t)((long long)off[o] + shift);
        } else {
            for (long long o = c->a + 1; o <= c->b; o++)
                noff[o] = (uint32_t)(at + c->n);
        }
        at += c->n;
    }
    /* The offsets the next step plans from, read now: planning holds the GIL, and a page
     * not read for a while can take up to ~1 ms to read here. */
    volatile uint32_t sink = 0;
    for (long long o = pos; o <= nb && o <= pos + budget; o += 1024)
        sink += off[o];
    (void)sink;
    Py_END_ALLOW_THREADS
    result = Py_BuildValue("(nL)", i, pos);
done:
    for (Py_ssize_t k = 0; k < nheld; k++)
        PyBuffer_Release(&held[k]);
    PyMem_Free(held);
    PyMem_Free(plan);
    Py_buffer *all[] = {&nob, &ndb, &ob, &db, &pb};
    for (size_t k = 0; k < sizeof all / sizeof *all; k++)
        if (all[k]->obj)
            PyBuffer_Release(all[k]);
    return result;
}

/* release(arr, start, stop): hands the whole pages of arr's items start..stop-1 back to
 * the OS (madvise MADV_DONTNEED), with the GIL released; they read as zeros afterwards.
 * For an array about to be freed that nothing else holds: freeing 80 MB at once holds the
 * GIL ~7 ms here, and shrinking an array by slices reallocates it whole at every step
 * (array keeps 1/16 spare), so its pages are returned a slice at a time instead. */
static PyObject *pack_release(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "release(arr, start, stop)");
        return NULL;
    }
    Py_ssize_t a = PyLong_AsSsize_t(args[1]), z = PyLong_AsSsize_t(args[2]);
    if (PyErr_Occurred())
        return NULL;
    Py_buffer b;
    if (PyObject_GetBuffer(args[0], &b, PyBUF_WRITABLE | PyBUF_FORMAT) < 0)
        return NULL;
    Py_ssize_t n = b.itemsize ? b.len / b.itemsize : 0;
    if (a < 0 || z < a || z > n) {
        PyBuffer_Release(&b);
        PyErr_SetString(PyExc_IndexError, "release: start..stop out of range");
        return NULL;
    }
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t lo = ((uintptr_t)b.buf + (uintptr_t)(a * b.itemsize) + page - 1) & ~(page - 1);
    uintptr_t hi = ((uintptr_t)b.buf + (uintptr_t)(z * b.itemsize)) & ~(page - 1);
    int rc = 0;
    if (hi > lo) {
        Py_BEGIN_ALLOW_THREADS
        rc = madvise((void *)lo, hi - lo, MADV_DONTNEED);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&b);
    if (rc != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

/* warm(nbytes): allocates nbytes in blocks of 512 KB (under the mmap threshold: heap, not
 * mappings), touches every page and frees them, with the GIL released. Freed heap memory
 * stays in this thread's arena (map_large_allocations keeps it) and adjacent blocks merge,
 * so the blocks this thread allocates next with the GIL held (dict tables, overlay chunks)
 * reuse pages already faulted in: a fresh page costs ~2 us here. */
static PyObject *pack_warm(PyObject *mod, PyObject *arg)
{
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    enum { BLOCK = 512 * 1024, MOST = 256 };
    Py_ssize_t k = (n + BLOCK - 1) / BLOCK;
    if (k > MOST)
        k = MOST;
    if (k > 0) {
        Py_BEGIN_ALLOW_THREADS
        char *held[MOST];
        Py_ssize_t got = 0;
        for (; got < k; got++) {
            if (!(held[got] = malloc(BLOCK)))
                break;
            memset(held[got], 0, BLOCK);
        }
        while (got > 0)
            free(held[--got]);
        Py_END_ALLOW_THREADS
    }
    Py_RETURN_NONE;
}

/* carry(shards, ovl, oids, since, chunk, new_shards, new_ovl) -> entries: fills the overlay
 * new_shards / new_ovl (Overlay.shards, and a list of at least one chunk) with the newest
 * region of each group of `oids` (references through `shards` into the chunks `ovl`) that
 * is newer than version
 * `since`, as its only region (prev -1), in chunks of at most `chunk` entries (one region
 * may exceed it alone); returns the entries written. The caller carries many groups in
 * several short calls into the same overlay. An oid already in `new_shards` is skipped (the
 * deltas' record of what they changed repeats oids). What a compaction keeps of the deltas
 * that landed while it ran; the caller holds the write lock. */
static PyObject *pack_carry(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 7 || !PyList_Check(args[0]) || !PyList_Check(args[1]) ||
        PyList_GET_SIZE(args[1]) < 1 || !PyList_Check(args[5]) || !PyList_Check(args[6]) ||
        PyList_GET_SIZE(args[6]) < 1) {
        PyErr_SetString(PyExc_TypeError,
                        "carry(shards: list, ovl: list, oids, since, chunk, new_shards: list, "
                        "new_ovl: list)");
        return NULL;
    }
    PyObject *ov = args[0], *ovl = args[1], *new_ov = args[5], *new_ovl = args[6];
    long long since = PyLong_AsLongLong(args[3]), chunk = PyLong_AsLongLong(args[4]);
    if (PyErr_Occurred())
        return NULL;
    PyObject *it = PyObject_GetIter(args[2]);
    if (!it)
        return NULL;
    PyObject *atype = (PyObject *)Py_TYPE(PyList_GET_ITEM(ovl, 0)), *result = NULL;
    PyObject *last = PyList_GET_ITEM(new_ovl, PyList_GET_SIZE(new_ovl) - 1);
    Vec out = {0};
    Py_ssize_t clen = PyObject_Length(last), size = 0;
    if (clen < 0)
        goto done;
    PyObject *oid;
    while ((oid = PyIter_Next(it))) {
        long long o = PyLong_AsLongLong(oid);
        PyObject *nd = o == -1 && PyErr_Occurred() ? NULL : shard_of(new_ov, o);
        PyObject *d = nd ? shard_of(ov, o) : NULL;
        /* oids may repeat: the first carries it */
        int seen = d ? PyDict_Contains(nd, oid) : -1;
        if (seen) {
            Py_DECREF(oid);
            if (seen < 0)
                goto done;
            continue;
        }
        PyObject *ref = PyDict_GetItemWithError(d, oid);
        long long r = ref ? PyLong_AsLongLong(ref) : -1;
        if (!ref || (r == -1 && PyErr_Occurred())) {
            if (!PyErr_Occurred())
                PyErr_SetObject(PyExc_KeyError, oid);
            Py_DECREF(oid);
            goto done;
        }
        Py_buffer b;
        const int64_t *reg;
        if (open_region(ovl, r, &b, &reg) < 0) {
            Py_DECREF(oid);
            goto done;
        }
        if (reg[0] <= since) { /* already in the new base */
            PyBuffer_Release(&b);
            Py_DECREF(oid);
            continue;
        }
        Py_ssize_t n = (Py_ssize_t)reg[2], L = n + 3;
        if (clen > 0 && clen + L > chunk) { /* a region never spans chunks */
            if (flush(last, out.v, out.n) < 0) {
                PyBuffer_Release(&b);
                Py_DECREF(oid);
                goto done;
            }
            out.n = 0;
            last = PyObject_CallFunction(atype, "s", "q");
            int bad = !last || PyList_Append(new_ovl, last) < 0;
            Py_XDECREF(last);
            if (bad) {
                PyBuffer_Release(&b);
                Py_DECREF(oid);
                goto done;
            }
            clen = 0;
        }
        if (vec_reserve(&out, L) < 0) {
            PyBuffer_Release(&b);
            Py_DECREF(oid);
            goto done;
        }
        out.v[out.n] = reg[0];
        out.v[out.n + 1] = -1;
        out.v[out.n + 2] = n;
        memcpy(out.v + out.n + 3, reg + 3, (size_t)n * 8);
        PyBuffer_Release(&b);
        out.n += L;
        PyObject *nref = PyLong_FromLongLong((long long)(PyList_GET_SIZE(new_ovl) - 1) << 32 | clen);
        int bad = !nref || PyDict_SetItem(nd, oid, nref) < 0;
        Py_XDECREF(nref);
        Py_DECREF(oid);
        if (bad)
            goto done;
        clen += L;
        size += L;
    }
    if (PyErr_Occurred() || flush(last, out.v, out.n) < 0)
        goto done;
    result = PyLong_FromSsize_t(size);
done:
    Py_DECREF(it);
    PyMem_Free(out.v);
    return result;
}

/* touch_names(interner, names): reads, with the GIL released, what Interner.oid will read to
 * find each of `names` (exact str): the slots along its probe run, and the names they point
 * to. At 10^7 tuples those tables are ~100 MB read at random, and on this machine memory
 * that has not been read for a while can take up to ~1 ms a page to read again
 * (bench/cold_pages.py); a delta's lookups that follow hold the GIL. The caller holds the
 * interner's lock, so its tables do not change meanwhile. */
static PyObject *pack_touch_names(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyList_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "touch_names(interner, names: list)");
        return NULL;
    }
    PyObject *names = args[1], *table = NULL;
    Py_ssize_t n = PyList_GET_SIZE(names);
    Py_hash_t *h = PyMem_Malloc((size_t)(n ? n : 1) * sizeof(Py_hash_t));
    Py_buffer b = {0};
    if (!h)
        return PyErr_NoMemory();
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *nm = PyList_GET_ITEM(names, k);
        if (!PyUnicode_CheckExact(nm)) {
            PyErr_SetString(PyExc_TypeError, "touch_names: names must be str");
            PyMem_Free(h);
            return NULL;
        }
        if ((h[k] = PyObject_Hash(nm)) == -1) { /* cached in the str: find() reuses it */
            PyMem_Free(h);
            return NULL;
        }
    }
    if (interner_tables(args[0], &b, &table) < 0) {
        PyMem_Free(h);
        return NULL;
    }
    Py_ssize_t mask = b.len / 4 - 1, count = PyList_GET_SIZE(table);
    const int32_t *sl = b.buf;
    PyObject **items = ((PyListObject *)table)->ob_item;
    volatile Py_hash_t sink;
    Py_hash_t acc = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t k = 0; k < n; k++) {
        Py_ssize_t i = (Py_ssize_t)((Py_uhash_t)h[k] & (Py_uhash_t)mask);
        for (int steps = 0; steps < 64; steps++) {
            int32_t o = sl[i];
            if (o < 0 || o >= count)
                break;
            const PyASCIIObject *nm = (const PyASCIIObject *)items[o];
            acc += nm->hash;
            if (nm->hash == h[k]) {
                acc += ((const volatile char *)nm)[sizeof(PyASCIIObject)]; /* its text */
                break;
            }
            i = (i + 1) & mask;
        }
    }
    Py_END_ALLOW_THREADS
    sink = acc;
    (void)sink;
    PyBuffer_Release(&b);
    Py_DECREF(table);
    PyMem_Free(h);
    Py_RETURN_NONE;
}

/* link(shards, refs) -> olds: points the overlay `shards` (Overlay.shards) at each (oid,
 * ref) of the list `refs`, in order; returns what each oid held before (None: absent). All
 * or nothing: on an error it restores what it changed, then raises. One call per index of a
 * delta (~1,000 groups, ~0.1 ms): a Python loop over the shards took ~1 ms. */
static PyObject *pack_link(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyList_Check(args[0]) || !PyList_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "link(shards: list, refs: list)");
        return NULL;
    }
    PyObject *refs = args[1];
    Py_ssize_t n = PyList_GET_SIZE(refs), i = 0;
    PyObject *olds = PyList_New(n);
    if (!olds)
        return NULL;
    for (; i < n; i++) {
        PyObject *pair = PyList_GET_ITEM(refs, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_SetString(PyExc_TypeError, "link: refs must be (oid, ref) pairs");
            break;
        }
        PyObject *oid = PyTuple_GET_ITEM(pair, 0), *ref = PyTuple_GET_ITEM(pair, 1);
        long long o = PyLong_AsLongLong(oid);
        PyObject *d = o == -1 && PyErr_Occurred() ? NULL : shard_of(args[0], o);
        if (!d)
            break;
        PyObject *old = PyDict_GetItemWithError(d, oid);
        if (!old && PyErr_Occurred())
            break;
        PyList_SET_ITEM(olds, i, Py_NewRef(old ? old : Py_None));
        if (PyDict_SetItem(d, oid, ref) < 0)
            break;
    }
    if (i == n)
        return olds;
    /* undo, newest first (an oid may repeat), keeping the error being raised */
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    for (Py_ssize_t k = i; k >= 0; k--) {
        PyObject *old = k < n ? PyList_GET_ITEM(olds, k) : NULL;
        if (!old)
            continue; /* the failing pair, if it failed before its old was read */
        PyObject *oid = PyTuple_GET_ITEM(PyList_GET_ITEM(refs, k), 0);
        PyObject *d = shard_of(args[0], PyLong_AsLongLong(oid));
        if (!d || (old == Py_None ? PyDict_DelItem(d, oid) : PyDict_SetItem(d, oid, old)) < 0)
            PyErr_Clear(); /* the absent key of a failed set: nothing to undo */
    }
    PyErr_Restore(et, ev, tb);
    Py_DECREF(olds);
    return NULL;
}

static PyMethodDef pack_methods[] = {
    {"build", (PyCFunction)(void (*)(void))pack_build, METH_FASTCALL,
     "build(keys, ents, off, dat) -> entries kept: a packed index from (object, entry) pairs"},
    {"append", (PyCFunction)(void (*)(void))pack_append, METH_FASTCALL,
     "append(ovl, shards, off, dat, nbase, cur, edits, ver, chunk, start, step)"
     " -> (refs, entries, net, next)"},
    {"find", (PyCFunction)(void (*)(void))pack_find, METH_FASTCALL,
     "find(interner, name) -> the oid of name, or -1"},
    {"touch_names", (PyCFunction)(void (*)(void))pack_touch_names, METH_FASTCALL,
     "touch_names(interner, names): reads what finding names will, GIL released"},
    {"link", (PyCFunction)(void (*)(void))pack_link, METH_FASTCALL,
     "link(shards, refs) -> what each oid held before (None: absent)"},
    {"carry", (PyCFunction)(void (*)(void))pack_carry, METH_FASTCALL,
     "carry(shards, ovl, oids, since, chunk, new_shards, new_ovl) -> entries written"},
    {"visible", (PyCFunction)(void (*)(void))pack_visible, METH_FASTCALL,
     "visible(shards, ovl, oids, ver) -> (bytes of (oid, ref) pairs a snapshot at ver reads, "
     "their entries)"},
    {"sort_pairs", (PyCFunction)pack_sort_pairs, METH_O,
     "sort_pairs(pairs: array('q')): sort its (oid, ref) pairs by oid, GIL released"},
    {"sized", (PyCFunction)(void (*)(void))pack_sized, METH_FASTCALL,
     "sized(template, n) -> an array like template of n items, not initialised"},
    {"kept", (PyCFunction)(void (*)(void))pack_kept, METH_FASTCALL,
     "kept(off, n, pairs) -> the base's entries outside the paired objects' groups"},
    {"merge", (PyCFunction)(void (*)(void))pack_merge, METH_FASTCALL,
     "merge(new_off, new_dat, off, dat, n, ovl, pairs, i, pos, budget) -> (i, pos)"},
    {"release", (PyCFunction)(void (*)(void))pack_release, METH_FASTCALL,
     "release(arr, start, stop): return the whole pages of arr[start:stop] to the OS"},
    {"warm", (PyCFunction)pack_warm, METH_O,
     "warm(nbytes): fault in and free nbytes of heap, GIL released"},
    {"edits", (PyCFunction)pack_edits, METH_O,
     "edits(net) -> (forward, reverse): a delta's net changes as sorted edits per index"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef pack_module = {
    PyModuleDef_HEAD_INIT, "_pack", "Packing a graph load, in C.", -1, pack_methods,
};

PyMODINIT_FUNC PyInit__pack(void)
{
    PyObject *m = PyModule_Create(&pack_module);
    PyObject *layout = m ? Py_BuildValue("(iiii)", REL_BITS, F_REL, R_REL, FE_BITS) : NULL;
    if (!layout || PyModule_AddObjectRef(m, "LAYOUT", layout) < 0)
        Py_CLEAR(m);
    Py_XDECREF(layout);
    /* the array layout `sized` writes, as found in a live array at import */
    arrays_sized = m ? array_layout_matches() : 0;
    if (m && PyModule_AddObjectRef(m, "ARRAYS_SIZED", arrays_sized ? Py_True : Py_False) < 0)
        Py_CLEAR(m);
    return m;
}
