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
    qsort(fv, (size_t)k, 16, cmp_pair);
    qsort(rv, (size_t)k, 16, cmp_pair);
    Py_DECREF(shift);
    return Py_BuildValue("(NN)", f, r);
fail:
    Py_XDECREF(f);
    Py_XDECREF(r);
    Py_DECREF(shift);
    return NULL;
}

/* Appends pending entries out[0:n] to chunk `c` (an array('q')). */
static int flush(PyObject *c, const int64_t *out, Py_ssize_t n)
{
    if (!n)
        return 0;
    PyObject *r = PyObject_CallMethod(c, "frombytes", "y#", (const char *)out, n * 8);
    Py_XDECREF(r);
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

/* append(ovl, ov, off, dat, nbase, cur, edits, ver, chunk, start, step)
 *   -> (refs, entries, net, next):
 * GraphStore.apply's writes to one index, from edit `start` on. `edits` are as edits()
 * makes them. Each object's group is read as the snapshot at version `cur` sees it (the
 * newest overlay region not newer than `cur`, else the base off/dat, whose first `nbase`
 * objects it holds), edited, and appended as a region of version `ver` to the overlay
 * chunks `ovl` (a new chunk when one would pass `chunk` entries). A group whose edits
 * change nothing is not written. It stops at the first group boundary after `step` edits
 * and returns where to go on (`next`): the caller loops, so the GIL can change hands
 * between calls (readers wait for one call at most). Also returns the (object, ref) pairs
 * to link, the entries written and the net change in entries. On error the chunks may
 * hold unreferenced regions: unreachable, as nothing was linked. */
static PyObject *pack_append(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 11 || !PyList_Check(args[0]) || !PyDict_Check(args[1]) ||
        !PyBytes_Check(args[6]) || PyBytes_GET_SIZE(args[6]) % 16 ||
        PyList_GET_SIZE(args[0]) < 1) {
        PyErr_SetString(PyExc_TypeError,
                        "append(ovl: list, ov: dict, off, dat, nbase, cur, edits: bytes, ver, "
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
    Py_buffer ob, db;
    if (PyObject_GetBuffer(args[2], &ob, PyBUF_SIMPLE) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[3], &db, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&ob);
        return NULL;
    }
    PyObject *refs = PyList_New(0), *result = NULL;
    Vec out = {0};
    Py_ssize_t nc = PyBytes_GET_SIZE(args[6]) / 16, written = 0, net = 0;
    const uint32_t *off = ob.buf;
    const int64_t *dat = db.buf;
    if (!refs)
        goto done;
    if (ob.len % 4 || db.len % 8 || nbase < 0 || nbase + 1 > ob.len / 4) {
        PyErr_SetString(PyExc_ValueError, "append: base arrays of the wrong sizes");
        goto done;
    }
    PyObject *last = PyList_GET_ITEM(ovl, PyList_GET_SIZE(ovl) - 1);
    Py_ssize_t clen = PyObject_Size(last); /* the last chunk's length, pending included */
    if (clen < 0)
        goto done;
    Py_ssize_t i = start;
    while (i < nc && i - start < step) {
        /* this object's edits: [i, j) */
        long long oid = ed[2 * i];
        Py_ssize_t j = i + 1;
        while (j < nc && ed[2 * j] == oid)
            j++;
        if (oid < 0 || oid > (long long)UINT32_MAX) {
            PyErr_SetString(PyExc_ValueError, "append: object id out of range");
            goto done;
        }
        PyObject *obj = PyLong_FromLongLong(oid);
        if (!obj)
            goto done;
        /* the group as the snapshot at `cur` reads it */
        PyObject *ref = PyDict_GetItemWithError(ov, obj);
        if (!ref && PyErr_Occurred()) {
            Py_DECREF(obj);
            goto done;
        }
        long long prev = ref ? PyLong_AsLongLong(ref) : -1;
        if (prev == -1 && PyErr_Occurred()) {
            Py_DECREF(obj);
            goto done;
        }
        const int64_t *g = NULL;
        Py_ssize_t gn = 0;
        Py_buffer hold = {0};
        int found = 0;
        for (long long r = prev; r >= 0 && !found;) {
            const int64_t *reg;
            if (open_region(ovl, r, &hold, &reg) < 0) {
                Py_DECREF(obj);
                goto done;
            }
            if (reg[0] <= cur) {
                g = reg + 3;
                gn = (Py_ssize_t)reg[2];
                found = 1;
            } else {
                r = reg[1];
                PyBuffer_Release(&hold);
            }
        }
        if (!found && oid < nbase) {
            Py_ssize_t a = off[oid], z = off[oid + 1];
            if (a > z || z > db.len / 8) {
                PyErr_SetString(PyExc_IndexError, "append: offsets past the entries");
                Py_DECREF(obj);
                goto done;
            }
            g = dat + a;
            gn = z - a;
        }
        /* merge: removals and additions arrive in entry order (entries are unique) */
        const int64_t *ch = ed + 2 * i;
        Py_ssize_t nch = j - i;
        if (vec_reserve(&out, 3 + gn + nch) < 0) {
            if (found)
                PyBuffer_Release(&hold);
            Py_DECREF(obj);
            goto done;
        }
        Py_ssize_t w0 = out.n, w = w0 + 3, a = 0, k = 0, delta = 0, edits = 0;
        int64_t *o = out.v;
        for (; a < gn || k < nch;) {
            int64_t e = k < nch ? ch[2 * k + 1] >> 1 : 0;
            if (k == nch || (a < gn && g[a] < e)) {
                o[w++] = g[a++];
            } else if (a < gn && g[a] == e) {
                if (ch[2 * k + 1] & 1) {
                    o[w++] = e; /* already present */
                } else {
                    delta--, edits++; /* removed */
                }
                a++, k++;
            } else {
                if (ch[2 * k + 1] & 1) {
                    o[w++] = e;
                    delta++, edits++;
                }
                k++;
            }
        }
        if (found)
            PyBuffer_Release(&hold);
        if (!edits) {
            Py_DECREF(obj);
            i = j;
            continue;
        }
        o[w0] = ver;
        o[w0 + 1] = prev;
        o[w0 + 2] = w - w0 - 3;
        Py_ssize_t L = w - w0;
        if (clen > 0 && clen + L > chunk) { /* a region never spans chunks */
            if (flush(last, o, w0) < 0) {
                Py_DECREF(obj);
                goto done;
            }
            memmove(o, o + w0, (size_t)L * 8);
            w0 = 0;
            last = PyObject_CallFunction((PyObject *)Py_TYPE(last), "s", "q");
            int bad = !last || PyList_Append(ovl, last) < 0;
            Py_XDECREF(last); /* the list holds it */
            if (bad) {
                Py_DECREF(obj);
                goto done;
            }
            clen = 0;
        }
        out.n = w0 + L;
        long long nref = (long long)(PyList_GET_SIZE(ovl) - 1) << 32 | clen;
        clen += L;
        written += L;
        net += delta;
        PyObject *pair = Py_BuildValue("(NL)", obj, nref); /* steals obj */
        if (!pair || PyList_Append(refs, pair) < 0) {
            Py_XDECREF(pair);
            goto done;
        }
        Py_DECREF(pair);
        i = j;
    }
    if (flush(last, out.v, out.n) < 0)
        goto done;
    result = Py_BuildValue("(Onnn)", refs, written, net, i);
done:
    Py_XDECREF(refs);
    PyMem_Free(out.v);
    PyBuffer_Release(&ob);
    PyBuffer_Release(&db);
    return result;
}

/* shifted(dst, src, a, b, shift): dst.extend(x + shift for x in src[a:b]), for arrays of
 * 4-byte unsigned offsets ('I'). A compaction copies runs of the old base's offsets this
 * way: the same loop in Python (map(add, ...)) held the GIL ~1 ms per 16,384 offsets, this
 * ~20 µs. OverflowError, with dst unchanged, if a result leaves 0..2**32 - 1. */
static PyObject *pack_shifted(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "shifted(dst, src, a, b, shift)");
        return NULL;
    }
    Py_ssize_t a = PyLong_AsSsize_t(args[2]), b = PyLong_AsSsize_t(args[3]);
    long long shift = PyLong_AsLongLong(args[4]);
    if (PyErr_Occurred())
        return NULL;
    Py_buffer sb;
    if (PyObject_GetBuffer(args[1], &sb, PyBUF_FORMAT) < 0)
        return NULL;
    PyObject *out = NULL, *tmp = NULL;
    if (sb.itemsize != 4 || !sb.format || strcmp(sb.format, "I") != 0) {
        PyErr_SetString(PyExc_TypeError, "shifted: src must be an array('I')");
        goto done;
    }
    Py_ssize_t n = sb.len / 4;
    if (a < 0 || b < a || b > n) {
        PyErr_SetString(PyExc_IndexError, "shifted: a..b out of range");
        goto done;
    }
    if (!(tmp = PyBytes_FromStringAndSize(NULL, (b - a) * 4)))
        goto done;
    const uint32_t *src = (const uint32_t *)sb.buf + a;
    uint32_t *d = (uint32_t *)PyBytes_AS_STRING(tmp);
    for (Py_ssize_t i = 0; i < b - a; i++) {
        long long v = (long long)src[i] + shift;
        if (v < 0 || v > 0xffffffffLL) {
            PyErr_SetString(PyExc_OverflowError, "shifted: an offset leaves 0..2**32 - 1");
            goto done;
        }
        d[i] = (uint32_t)v;
    }
    PyObject *r = PyObject_CallMethod(args[0], "frombytes", "O", tmp);
    if (!r)
        goto done;
    Py_DECREF(r);
    out = Py_NewRef(Py_None);
done:
    Py_XDECREF(tmp);
    PyBuffer_Release(&sb);
    return out;
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

/* presized(n) -> an empty dict with room for n entries. An overlay dict that grows by
 * doubling rebuilds its table, in fresh pages, in one call holding the GIL: ~2 ms at 2^16
 * entries here (page faults cost ~2 us each). One sized for the most the overlay holds
 * before a compaction never does. */
static PyObject *pack_presized(PyObject *mod, PyObject *arg)
{
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    return _PyDict_NewPresized(n < 0 ? 0 : n);
}

/* carry(ov, ovl, oids, since, chunk[, new_ov, new_ovl]) -> (new_ov, new_ovl, entries): a
 * fresh overlay holding the newest region of each group of `oids` (references through `ov`
 * into the chunks `ovl`) that is newer than version `since`, as its only region (prev -1),
 * in new chunks of at most `chunk` entries (one region may exceed it alone). Given the
 * `new_ov` and `new_ovl` of an earlier call, it goes on filling them, so the caller can
 * carry many groups in several short calls. An oid already in `new_ov` is skipped (the
 * deltas' record of what they changed repeats oids). What a compaction keeps of the deltas
 * that landed while it ran; the caller holds the write lock. */
static PyObject *pack_carry(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    int more = nargs == 7 && args[5] != Py_None;
    if ((nargs != 5 && nargs != 7) || !PyDict_Check(args[0]) || !PyList_Check(args[1]) ||
        PyList_GET_SIZE(args[1]) < 1 ||
        (more && (!PyDict_Check(args[5]) || !PyList_Check(args[6]) ||
                  PyList_GET_SIZE(args[6]) < 1))) {
        PyErr_SetString(PyExc_TypeError,
                        "carry(ov: dict, ovl: list, oids, since, chunk[, new_ov, new_ovl])");
        return NULL;
    }
    PyObject *ov = args[0], *ovl = args[1];
    long long since = PyLong_AsLongLong(args[3]), chunk = PyLong_AsLongLong(args[4]);
    if (PyErr_Occurred())
        return NULL;
    PyObject *it = PyObject_GetIter(args[2]);
    if (!it)
        return NULL;
    PyObject *atype = (PyObject *)Py_TYPE(PyList_GET_ITEM(ovl, 0));
    PyObject *new_ov, *new_ovl, *last, *result = NULL;
    Vec out = {0};
    Py_ssize_t clen = 0, size = 0;
    if (more) {
        new_ov = Py_NewRef(args[5]);
        new_ovl = Py_NewRef(args[6]);
        last = PyList_GET_ITEM(new_ovl, PyList_GET_SIZE(new_ovl) - 1);
        if ((clen = PyObject_Length(last)) < 0)
            goto done;
    } else {
        new_ov = PyDict_New();
        new_ovl = PyList_New(0);
        last = new_ov && new_ovl ? PyObject_CallFunction(atype, "s", "q") : NULL;
        if (!last || PyList_Append(new_ovl, last) < 0) {
            Py_XDECREF(last);
            goto done;
        }
        Py_DECREF(last); /* the list holds it */
    }
    PyObject *oid;
    while ((oid = PyIter_Next(it))) {
        int seen = PyDict_Contains(new_ov, oid); /* oids may repeat: the first carries it */
        if (seen) {
            Py_DECREF(oid);
            if (seen < 0)
                goto done;
            continue;
        }
        PyObject *ref = PyDict_GetItemWithError(ov, oid);
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
        int bad = !nref || PyDict_SetItem(new_ov, oid, nref) < 0;
        Py_XDECREF(nref);
        Py_DECREF(oid);
        if (bad)
            goto done;
        clen += L;
        size += L;
    }
    if (PyErr_Occurred() || flush(last, out.v, out.n) < 0)
        goto done;
    result = Py_BuildValue("(OOn)", new_ov, new_ovl, size);
done:
    Py_DECREF(it);
    Py_XDECREF(new_ov);
    Py_XDECREF(new_ovl);
    PyMem_Free(out.v);
    return result;
}

static PyMethodDef pack_methods[] = {
    {"build", (PyCFunction)(void (*)(void))pack_build, METH_FASTCALL,
     "build(keys, ents, off, dat) -> entries kept: a packed index from (object, entry) pairs"},
    {"append", (PyCFunction)(void (*)(void))pack_append, METH_FASTCALL,
     "append(ovl, ov, off, dat, nbase, cur, edits, ver, chunk, start, step)"
     " -> (refs, entries, net, next)"},
    {"find", (PyCFunction)(void (*)(void))pack_find, METH_FASTCALL,
     "find(interner, name) -> the oid of name, or -1"},
    {"shifted", (PyCFunction)(void (*)(void))pack_shifted, METH_FASTCALL,
     "shifted(dst, src, a, b, shift): dst.extend(x + shift for x in src[a:b]), arrays of 'I'"},
    {"carry", (PyCFunction)(void (*)(void))pack_carry, METH_FASTCALL,
     "carry(ov, ovl, oids, since, chunk[, new_ov, new_ovl]) -> (new_ov, new_ovl, entries)"},
    {"presized", (PyCFunction)pack_presized, METH_O,
     "presized(n) -> an empty dict with room for n entries"},
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
    return m;
}
