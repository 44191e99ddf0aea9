/* The compiled check of gatehouse.engine.evaluator, in C.
 *
 * The Python compiler (Evaluator._program) lowers every plan the fast path covers to a list
 * of node specs; this module runs them over a snapshot's packed forward index. It mirrors the
 * Python nodes (_rel_node, _union_node, _arrow_node, _multi_arrow_node) exactly, so the two
 * give the same answer and the same reason; the Python nodes remain the reference and the
 * fallback when this module is not built. Errors propagate as exceptions (the caller turns
 * them into a deny); the GIL is held throughout.
 *
 * Memory safety: the packed base arrays of a snapshot are never resized, so their buffers
 * are held while a snapshot is cached. Overlay chunks and the interner's type array may be
 * appended to by a writer thread whenever Python code runs (the members and subject_str
 * callbacks), so they are read through a buffer taken and released around each access, and
 * an overlay region is copied before it is walked.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "_common.h" /* Vec, shard_of, find_names: from src/gatehouse/graph */

#define REL_BITS 12
#define REL_MASK ((1LL << REL_BITS) - 1)
#define F_US (1LL << 43)
#define SK_MASK (F_US - 1)
#define OID_MASK ((1LL << 32) - 1)

enum { K_NIL, K_REL, K_UNION, K_ARROW, K_MULTI };

typedef struct {
    int kind;
    int64_t base, ubase, end;
    PyObject *s1; /* rel: "direct key"; arrow, multi: tupleset */
    PyObject *s2; /* rel: "wildcard key" */
    int *kids;    /* union: children; multi: the single arrows */
    int nkids;
    int *targets; /* arrow, multi: per type id, the entry node or -1 (skip the edge) */
    int ntargets;
} Node;

/* One packed index of a snapshot as the program caches it (buffers held on the base). */
typedef struct {
    Py_buffer off, dat;
    int have_buf;
    PyObject *ov, *ovl;
    int64_t n;
} Index;

/* The same index as one run reads it: plain pointers, valid while the run holds the
 * snapshot (another thread may rebind the program while this run waits in a callback). */
typedef struct {
    const uint32_t *off;
    const int64_t *dat;
    Py_ssize_t ndat;
    PyObject *ov, *ovl; /* borrowed: the run holds the snapshot; ov is Overlay.shards */
    int64_t n;
} View;

typedef struct {
    PyObject_HEAD
    Node *nodes;
    int nnodes;
    PyObject *names;       /* interner.names (list, grows) */
    PyObject *obj_type;    /* interner.obj_type (array('H'), grows) */
    PyObject *subject_str; /* interner.subject_str */
    PyObject *rel_parts;   /* per rid: the relation name after '#' ("" for rid 0) */
    PyObject *fallback;    /* exception class: use the general walk */
    PyObject *depth_exc;   /* exception class: nesting too deep */
    PyObject *depth_msg;   /* its message */
    unsigned char *relkind; /* per rid: 1 closed userset, 2 other userset, 0 neither */
    Py_ssize_t nrel;
    int64_t *closure_rids; /* relations whose usersets are pure reachability */
    Py_ssize_t nclosure;
    int max_depth;
    /* what check() needs besides the nodes (set by bind) */
    PyObject *it;        /* the interner the nodes were compiled against */
    PyObject *entries;   /* dict: resource type -> dict: permission -> entry node */
    PyObject *types;     /* the schema's types: plain subjects the compiled check covers */
    PyObject *wildcards; /* interner.wildcards: type -> oid of "type:*" */
    PyObject *decision;  /* the Decision class (a tuple subclass) */
    PyObject *no_path;   /* the deny reason */
    Py_ssize_t nkeys;    /* len(interner.rel_names) when compiled */
    /* the snapshot last run on */
    PyObject *snap;
    Index f, r;
    int64_t ver;
} Program;

typedef struct {
    int64_t key;
    PyObject *val; /* borrowed from the memo's own references */
} Memo;

typedef struct {
    Program *p;
    View f, r;
    int64_t ver;
    int64_t sk, wk;
    PyObject *members_fn;
    PyObject *cache;   /* dict (sk, wk) -> (set, truncated) the members_fn fills, or None */
    PyObject *members; /* set, once computed */
    int truncated;
    Memo *memo;
    Py_ssize_t cap, n;
} Query;

static PyObject *run_node(Query *q, int idx, const int64_t *arr, Py_ssize_t lo, Py_ssize_t hi);
static PyObject *through(Program *p, int64_t uk);

/* ---- small helpers ------------------------------------------------------------------- */

static Py_ssize_t bisect(const int64_t *a, int64_t x, Py_ssize_t lo, Py_ssize_t hi)
{
    while (lo < hi) {
        Py_ssize_t mid = (lo + hi) >> 1;
        if (a[mid] < x)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static int get_buf(PyObject *o, Py_buffer *b, Py_ssize_t itemsize)
{
    if (PyObject_GetBuffer(o, b, PyBUF_SIMPLE) < 0)
        return -1;
    if (b->len % itemsize) {
        PyBuffer_Release(b);
        PyErr_SetString(PyExc_TypeError, "kernel: array of the wrong item size");
        return -1;
    }
    return 0;
}

static int type_of(Program *p, int64_t oid, long *tid)
{
    Py_buffer b;
    if (get_buf(p->obj_type, &b, 2) < 0)
        return -1;
    if (oid < 0 || oid >= b.len / 2) {
        PyBuffer_Release(&b);
        PyErr_SetString(PyExc_IndexError, "kernel: object id out of range");
        return -1;
    }
    *tid = ((const uint16_t *)b.buf)[oid];
    PyBuffer_Release(&b);
    return 0;
}

static PyObject *name_of(Program *p, int64_t oid)
{
    if (oid < 0 || oid >= PyList_GET_SIZE(p->names)) {
        PyErr_SetString(PyExc_IndexError, "kernel: object id out of range");
        return NULL;
    }
    PyObject *s = PyList_GET_ITEM(p->names, oid);
    Py_INCREF(s);
    return s;
}

static void memo_clear(Query *q)
{
    for (Py_ssize_t i = 0; i < q->cap; i++)
        if (q->memo[i].val)
            Py_DECREF(q->memo[i].val);
    PyMem_Free(q->memo);
    q->memo = NULL;
    q->cap = q->n = 0;
}

static Memo *memo_slot(Query *q, int64_t key)
{
    uint64_t h = (uint64_t)key * 0x9E3779B97F4A7C15ULL;
    Py_ssize_t mask = q->cap - 1;
    Py_ssize_t i = (Py_ssize_t)(h >> 32) & mask;
    while (q->memo[i].val && q->memo[i].key != key)
        i = (i + 1) & mask;
    return &q->memo[i];
}

/* a new reference to the memoised result, or NULL (not found, no error) */
static PyObject *memo_get(Query *q, int64_t key)
{
    if (!q->cap)
        return NULL;
    Memo *m = memo_slot(q, key);
    if (!m->val)
        return NULL;
    Py_INCREF(m->val);
    return m->val;
}

static int memo_put(Query *q, int64_t key, PyObject *val)
{
    if (2 * (q->n + 1) > q->cap) {
        Py_ssize_t cap = q->cap ? 2 * q->cap : 16;
        Memo *old = q->memo;
        Py_ssize_t ocap = q->cap;
        q->memo = PyMem_Calloc((size_t)cap, sizeof(Memo));
        if (!q->memo) {
            q->memo = old;
            PyErr_NoMemory();
            return -1;
        }
        q->cap = cap;
        for (Py_ssize_t i = 0; i < ocap; i++)
            if (old[i].val)
                *memo_slot(q, old[i].key) = old[i];
        PyMem_Free(old);
    }
    Memo *m = memo_slot(q, key);
    Py_INCREF(val);
    m->key = key;
    m->val = val;
    q->n++;
    return 0;
}

static PyObject *members(Query *q)
{
    if (q->members)
        return q->members;
    PyObject *r = NULL;
    if (PyDict_Check(q->cache)) {
        /* a hit in the Python-side table skips the call */
        PyObject *key = Py_BuildValue("(LL)", (long long)q->sk, (long long)q->wk);
        if (!key)
            return NULL;
        r = PyDict_GetItemWithError(q->cache, key);
        Py_DECREF(key);
        if (!r && PyErr_Occurred())
            return NULL;
        Py_XINCREF(r);
    }
    if (!r)
        r = PyObject_CallFunction(q->members_fn, "LL", (long long)q->sk, (long long)q->wk);
    if (!r)
        return NULL;
    if (!PyTuple_Check(r) || PyTuple_GET_SIZE(r) != 2 || !PyAnySet_Check(PyTuple_GET_ITEM(r, 0))) {
        Py_DECREF(r);
        PyErr_SetString(PyExc_TypeError, "kernel: members() must return (set, bool)");
        return NULL;
    }
    q->truncated = PyObject_IsTrue(PyTuple_GET_ITEM(r, 1));
    q->members = PyTuple_GET_ITEM(r, 0);
    Py_INCREF(q->members);
    Py_DECREF(r);
    if (q->truncated < 0)
        return NULL;
    return q->members;
}

/* ---- the object's group, then a node over it ------------------------------------------- */

/* Object `oid`'s group in index `v` at version `ver`: *arr[*lo:*hi]. An overlay region is
 * copied into *copy (the caller frees it): a writer may resize its chunk once Python code
 * runs. Returns 0, or -1 with an exception set. */
static int group(const View *v, int64_t ver, int64_t oid, const int64_t **arr, Py_ssize_t *lo,
                 Py_ssize_t *hi, int64_t **copy)
{
    *arr = NULL;
    *lo = *hi = 0;
    *copy = NULL;
    if (oid < 0 || oid > OID_MASK)
        return 0;
    PyObject *key = PyLong_FromLongLong(oid);
    if (!key)
        return -1;
    PyObject *d = shard_of(v->ov, oid);
    PyObject *ref = d ? PyDict_GetItemWithError(d, key) : NULL;
    Py_DECREF(key);
    if (!ref && PyErr_Occurred())
        return -1;
    if (ref) {
        /* overlay: the newest region not newer than the snapshot */
        int64_t r = PyLong_AsLongLong(ref);
        if (r == -1 && PyErr_Occurred())
            return -1;
        while (r >= 0) {
            int64_t ci = r >> 32, s = r & OID_MASK;
            if (ci >= PyList_GET_SIZE(v->ovl)) {
                PyErr_SetString(PyExc_IndexError, "kernel: overlay chunk out of range");
                return -1;
            }
            Py_buffer b;
            if (get_buf(PyList_GET_ITEM(v->ovl, ci), &b, 8) < 0)
                return -1;
            const int64_t *c = b.buf;
            Py_ssize_t len = b.len / 8;
            if (s + 3 > len || c[s + 2] < 0 || s + 3 + c[s + 2] > len) {
                PyBuffer_Release(&b);
                PyErr_SetString(PyExc_IndexError, "kernel: overlay region out of range");
                return -1;
            }
            if (c[s] <= ver) {
                Py_ssize_t n = (Py_ssize_t)c[s + 2];
                if (n) {
                    *copy = PyMem_Malloc((size_t)n * 8);
                    if (!*copy) {
                        PyBuffer_Release(&b);
                        PyErr_NoMemory();
                        return -1;
                    }
                    memcpy(*copy, c + s + 3, (size_t)n * 8);
                    *arr = *copy;
                    *hi = n;
                }
                PyBuffer_Release(&b);
                return 0;
            }
            r = c[s + 1];
            PyBuffer_Release(&b);
        }
    }
    if (oid >= v->n)
        return 0;
    Py_ssize_t a = v->off[oid], z = v->off[oid + 1];
    if (a > z || z > v->ndat) {
        PyErr_SetString(PyExc_IndexError, "kernel: offsets past the entries");
        return -1;
    }
    *arr = v->dat;
    *lo = a;
    *hi = z;
    return 0;
}

static PyObject *enter(Query *q, int idx, int64_t oid)
{
    const int64_t *arr;
    Py_ssize_t lo, hi;
    int64_t *copy;
    if (group(&q->f, q->ver, oid, &arr, &lo, &hi, &copy) < 0)
        return NULL;
    if (lo == hi) {
        PyMem_Free(copy);
        Py_RETURN_NONE;
    }
    PyObject *r = run_node(q, idx, arr, lo, hi);
    PyMem_Free(copy);
    return r;
}

/* ---- nodes -------------------------------------------------------------------------- */

static PyObject *run_rel(Query *q, Node *nd, const int64_t *arr, Py_ssize_t lo, Py_ssize_t hi)
{
    Program *p = q->p;
    Py_ssize_t i = bisect(arr, nd->base, lo, hi);
    if (i == hi || arr[i] >= nd->end)
        Py_RETURN_NONE;
    int64_t x = q->sk >= 0 ? (nd->base | q->sk) : -1;
    int64_t xw = q->wk >= 0 ? (nd->base | q->wk) : -1;
    if (arr[i] < nd->ubase) {
        /* plain subjects: the subject itself, then the wildcard */
        Py_ssize_t u = bisect(arr, nd->ubase, i, hi);
        if (x >= 0) {
            Py_ssize_t j = bisect(arr, x, i, u);
            if (j < u && arr[j] == x)
                return Py_NewRef(nd->s1);
        }
        if (xw >= 0) {
            Py_ssize_t j = bisect(arr, xw, i, u);
            if (j < u && arr[j] == xw)
                return Py_NewRef(nd->s2);
        }
        i = u;
        if (i == hi || arr[i] >= nd->end)
            Py_RETURN_NONE;
    }
    PyObject *mem = members(q);
    if (!mem)
        return NULL;
    for (; i < hi; i++) {
        int64_t v = arr[i];
        if (v >= nd->end)
            break;
        int64_t uk = v & SK_MASK;
        PyObject *k = PyLong_FromLongLong(uk);
        if (!k)
            return NULL;
        int in = PySet_Contains(mem, k);
        Py_DECREF(k);
        if (in < 0)
            return NULL;
        if (in)
            return through(p, uk);
        int64_t r = uk & REL_MASK;
        unsigned char kind = r < p->nrel ? p->relkind[r] : 2;
        if (kind == 1) {
            if (q->truncated) {
                PyErr_SetObject(p->depth_exc, p->depth_msg);
                return NULL;
            }
        } else if (kind == 2) {
            PyErr_SetNone(p->fallback);
            return NULL;
        }
    }
    Py_RETURN_NONE;
}

/* Reasons are built on every allowed check: pieces of ASCII text are copied into one new
 * str, several times cheaper than PyUnicode_FromFormat; a piece that is not ASCII takes the
 * formatting path instead. */
typedef struct {
    const char *s;
    Py_ssize_t n;
} Piece;

#define LIT(x) ((Piece){(x), (Py_ssize_t)sizeof(x) - 1})

/* 1 with *pc set when `u` is an ASCII str, else 0 */
static int ascii_piece(PyObject *u, Piece *pc)
{
    if (!PyUnicode_CheckExact(u) || !PyUnicode_IS_ASCII(u))
        return 0;
    pc->s = (const char *)PyUnicode_DATA(u);
    pc->n = PyUnicode_GET_LENGTH(u);
    return 1;
}

static PyObject *cat_ascii(const Piece *pc, int n)
{
    Py_ssize_t len = 0;
    for (int i = 0; i < n; i++)
        len += pc[i].n;
    PyObject *out = PyUnicode_New(len, 127);
    if (!out)
        return NULL;
    char *d = (char *)PyUnicode_DATA(out);
    for (int i = 0; i < n; i++) {
        memcpy(d, pc[i].s, (size_t)pc[i].n);
        d += pc[i].n;
    }
    return out;
}

/* "through <subject>": Interner.subject_str without the call when the relation is known */
static PyObject *through(Program *p, int64_t uk)
{
    int64_t rid = uk & REL_MASK, oid = uk >> REL_BITS;
    if (rid < PyList_GET_SIZE(p->rel_parts) && oid < PyList_GET_SIZE(p->names)) {
        PyObject *name = PyList_GET_ITEM(p->names, oid);
        PyObject *rel = rid ? PyList_GET_ITEM(p->rel_parts, rid) : NULL;
        Piece pc[4] = {LIT("through "), {NULL, 0}, LIT("#"), {NULL, 0}};
        if (ascii_piece(name, &pc[1]) && (!rel || ascii_piece(rel, &pc[3])))
            return cat_ascii(pc, rel ? 4 : 2);
        if (!rel)
            return PyUnicode_FromFormat("through %U", name);
        return PyUnicode_FromFormat("through %U#%U", name, rel);
    }
    PyObject *s = PyObject_CallFunction(p->subject_str, "L", (long long)uk);
    if (!s)
        return NULL;
    PyObject *r = PyUnicode_FromFormat("through %U", s);
    Py_DECREF(s);
    return r;
}

/* one arrow edge to `toid` through entry `target`, memoised; new ref or NULL */
static PyObject *follow(Query *q, Node *nd, int64_t toid, int target)
{
    int64_t mk = toid << 20 | target;
    PyObject *r = memo_get(q, mk);
    if (!r) {
        r = enter(q, target, toid);
        if (!r || memo_put(q, mk, r) < 0) {
            Py_XDECREF(r);
            return NULL;
        }
    }
    if (r == Py_None)
        return r;
    PyObject *name = name_of(q->p, toid);
    if (!name) {
        Py_DECREF(r);
        return NULL;
    }
    Piece pc[5] = {{NULL, 0}, LIT("->"), {NULL, 0}, LIT(" > "), {NULL, 0}};
    PyObject *out = ascii_piece(nd->s1, &pc[0]) && ascii_piece(name, &pc[2]) &&
                            ascii_piece(r, &pc[4])
                        ? cat_ascii(pc, 5)
                        : PyUnicode_FromFormat("%U->%U > %U", nd->s1, name, r);
    Py_DECREF(name);
    Py_DECREF(r);
    return out;
}

/* the entry node for type `tid`: >= 0, -1 skip, -2 fall back (error set) */
static int target_of(Query *q, Node *nd, int64_t toid)
{
    long tid;
    if (type_of(q->p, toid, &tid) < 0)
        return -2;
    if (tid >= nd->ntargets) {
        PyErr_SetNone(q->p->fallback); /* a type interned after compilation */
        return -2;
    }
    int t = nd->targets[tid];
    if (t == -2)
        PyErr_SetNone(q->p->fallback);
    return t;
}

/* the children in order: the first answer (or error) wins */
static PyObject *run_kids(Query *q, Node *nd, const int64_t *arr, Py_ssize_t lo, Py_ssize_t hi)
{
    for (int k = 0; k < nd->nkids; k++) {
        PyObject *r = run_node(q, nd->kids[k], arr, lo, hi);
        if (r != Py_None)
            return r;
        Py_DECREF(r);
    }
    Py_RETURN_NONE;
}

static PyObject *run_arrow(Query *q, Node *nd, const int64_t *arr, Py_ssize_t lo, Py_ssize_t hi)
{
    Py_ssize_t a = bisect(arr, nd->base, lo, hi);
    if (a == hi || arr[a] >= nd->ubase)
        Py_RETURN_NONE;
    Py_ssize_t b = bisect(arr, nd->ubase, a, hi);
    for (Py_ssize_t i = a; i < b; i++) {
        int64_t toid = (arr[i] & SK_MASK) >> REL_BITS;
        int t = target_of(q, nd, toid);
        if (t == -2)
            return NULL;
        if (t == -1)
            continue;
        PyObject *r = follow(q, nd, toid, t);
        if (r != Py_None)
            return r; /* an answer or an error */
        Py_DECREF(r);
    }
    Py_RETURN_NONE;
}

static PyObject *run_multi(Query *q, Node *nd, const int64_t *arr, Py_ssize_t lo, Py_ssize_t hi)
{
    Py_ssize_t a = bisect(arr, nd->base, lo, hi);
    if (a == hi || arr[a] >= nd->ubase)
        Py_RETURN_NONE;
    if (a + 1 < hi && arr[a + 1] < nd->ubase)
        return run_kids(q, nd, arr, lo, hi); /* several targets: each arrow in turn */
    int64_t toid = (arr[a] & SK_MASK) >> REL_BITS;
    int t = target_of(q, nd, toid);
    if (t == -2)
        return NULL;
    if (t == -1)
        Py_RETURN_NONE;
    return follow(q, nd, toid, t);
}

static PyObject *run_node(Query *q, int idx, const int64_t *arr, Py_ssize_t lo, Py_ssize_t hi)
{
    Node *nd = &q->p->nodes[idx];
    switch (nd->kind) {
    case K_REL:
        return run_rel(q, nd, arr, lo, hi);
    case K_UNION:
        return run_kids(q, nd, arr, lo, hi);
    case K_ARROW:
        return run_arrow(q, nd, arr, lo, hi);
    case K_MULTI:
        return run_multi(q, nd, arr, lo, hi);
    default:
        Py_RETURN_NONE;
    }
}

/* ---- the subject's userset closure ----------------------------------------------------- */

/* keys are >= 0; -1 marks an empty slot. 1 added, 0 present, -1 error */
static int set_add(Vec *t, Py_ssize_t *count, int64_t k)
{
    if (2 * (*count + 1) > t->cap) {
        Py_ssize_t cap = t->cap ? 2 * t->cap : 32;
        int64_t *old = t->v;
        Py_ssize_t ocap = t->cap;
        t->v = PyMem_Malloc((size_t)cap * 8);
        if (!t->v) {
            t->v = old;
            PyErr_NoMemory();
            return -1;
        }
        memset(t->v, 0xff, (size_t)cap * 8);
        t->cap = cap;
        *count = 0;
        for (Py_ssize_t i = 0; i < ocap; i++)
            if (old[i] >= 0)
                set_add(t, count, old[i]);
        PyMem_Free(old);
    }
    Py_ssize_t mask = t->cap - 1;
    Py_ssize_t i = (Py_ssize_t)(((uint64_t)k * 0x9E3779B97F4A7C15ULL) >> 32) & mask;
    while (t->v[i] >= 0) {
        if (t->v[i] == k)
            return 0;
        i = (i + 1) & mask;
    }
    t->v[i] = k;
    (*count)++;
    return 1;
}

/* Every userset key the subject (sk, wildcard wk) belongs to through the closure relations,
 * breadth-first over the reverse index (so cycles end), as `_closure_packed` computes it;
 * more than max_depth levels sets *truncated. A new set, or NULL. */
static PyObject *closure_of(Program *p, const View *r, int64_t ver, int64_t sk, int64_t wk,
                            int *truncated)
{
    Vec front = {0}, next = {0}, keys = {0};
    Py_ssize_t count = 0;
    PyObject *out = NULL;
    int level = 0;
    if ((sk >= 0 && vec_push(&front, sk) < 0) || (wk >= 0 && vec_push(&front, wk) < 0))
        goto done;
    while (front.n && level < p->max_depth) {
        next.n = 0;
        for (Py_ssize_t f = 0; f < front.n; f++) {
            int64_t k = front.v[f];
            const int64_t *arr;
            Py_ssize_t lo, hi;
            int64_t *copy;
            if (group(r, ver, k >> REL_BITS, &arr, &lo, &hi, &copy) < 0)
                goto done;
            int64_t srid = (k & REL_MASK) << REL_BITS;
            for (Py_ssize_t j = 0; lo < hi && j < p->nclosure; j++) {
                int64_t rid = p->closure_rids[j];
                int64_t start = (srid | rid) << 32, stop = start + (1LL << 32);
                Py_ssize_t a = bisect(arr, start, lo, hi);
                if (a == hi || arr[a] >= stop)
                    continue;
                Py_ssize_t b = bisect(arr, stop, a, hi);
                for (Py_ssize_t i = a; i < b; i++) {
                    int64_t uk = (arr[i] - start) << REL_BITS | rid;
                    int added = set_add(&keys, &count, uk);
                    if (added < 0 || (added && vec_push(&next, uk) < 0)) {
                        PyMem_Free(copy);
                        goto done;
                    }
                }
            }
            PyMem_Free(copy);
        }
        Vec t = front;
        front = next;
        next = t;
        level++;
    }
    *truncated = front.n > 0;
    out = PySet_New(NULL);
    for (Py_ssize_t i = 0; out && i < keys.cap; i++) {
        if (keys.v[i] < 0)
            continue;
        PyObject *k = PyLong_FromLongLong(keys.v[i]);
        if (!k || PySet_Add(out, k) < 0)
            Py_CLEAR(out);
        Py_XDECREF(k);
    }
done:
    PyMem_Free(front.v);
    PyMem_Free(next.v);
    PyMem_Free(keys.v);
    return out;
}

/* ---- the Program type ------------------------------------------------------------------ */

static void release_index(Index *x)
{
    if (x->have_buf) {
        PyBuffer_Release(&x->off);
        PyBuffer_Release(&x->dat);
        x->have_buf = 0;
    }
    Py_CLEAR(x->ov);
    Py_CLEAR(x->ovl);
}

static void release_snap(Program *p)
{
    release_index(&p->f);
    release_index(&p->r);
    Py_CLEAR(p->snap);
}

static int attr_i64(PyObject *o, const char *name, int64_t *out)
{
    PyObject *v = PyObject_GetAttrString(o, name);
    if (!v)
        return -1;
    *out = PyLong_AsLongLong(v);
    Py_DECREF(v);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

/* attributes <c>_off, <c>_dat, <c>_ov, <c>_ovl and n<c> of a snapshot */
static int bind_index(Index *x, PyObject *snap, char c)
{
    char name[8];
    PyOS_snprintf(name, sizeof name, "%c_off", c);
    PyObject *off = PyObject_GetAttrString(snap, name);
    PyOS_snprintf(name, sizeof name, "%c_dat", c);
    PyObject *dat = off ? PyObject_GetAttrString(snap, name) : NULL;
    int ok = off && dat && get_buf(off, &x->off, 4) == 0;
    if (ok && get_buf(dat, &x->dat, 8) < 0) {
        PyBuffer_Release(&x->off);
        ok = 0;
    }
    Py_XDECREF(off);
    Py_XDECREF(dat);
    if (!ok)
        return -1;
    x->have_buf = 1;
    PyOS_snprintf(name, sizeof name, "%c_ov", c);
    PyObject *ov = PyObject_GetAttrString(snap, name);
    x->ov = ov ? PyObject_GetAttrString(ov, "shards") : NULL;
    Py_XDECREF(ov);
    PyOS_snprintf(name, sizeof name, "%c_ovl", c);
    x->ovl = x->ov ? PyObject_GetAttrString(snap, name) : NULL;
    PyOS_snprintf(name, sizeof name, "n%c", c);
    Py_ssize_t ns = x->ov && PyList_Check(x->ov) ? PyList_GET_SIZE(x->ov) : 0;
    if (!x->ov || !x->ovl || ns < 1 || (ns & (ns - 1)) || !PyList_Check(x->ovl) ||
        attr_i64(snap, name, &x->n) < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "kernel: not a snapshot");
        return -1;
    }
    if (x->n < 0 || x->n + 1 > x->off.len / 4) {
        PyErr_SetString(PyExc_ValueError, "kernel: offsets shorter than the object count");
        return -1;
    }
    return 0;
}

static int bind_snap(Program *p, PyObject *snap)
{
    if (p->snap == snap)
        return 0;
    release_snap(p);
    if (bind_index(&p->f, snap, 'f') < 0 || bind_index(&p->r, snap, 'r') < 0 ||
        attr_i64(snap, "ver", &p->ver) < 0) {
        release_snap(p);
        return -1;
    }
    p->snap = Py_NewRef(snap);
    return 0;
}

static View view_of(const Index *x)
{
    View v = {x->off.buf, x->dat.buf, x->dat.len / 8, x->ov, x->ovl, x->n};
    return v;
}

static void free_nodes(Program *p)
{
    for (int i = 0; i < p->nnodes; i++) {
        Py_XDECREF(p->nodes[i].s1);
        Py_XDECREF(p->nodes[i].s2);
        PyMem_Free(p->nodes[i].kids);
        PyMem_Free(p->nodes[i].targets);
    }
    PyMem_Free(p->nodes);
    p->nodes = NULL;
    p->nnodes = 0;
}

static int read_ints(PyObject *seq, int **out, int *n, int limit)
{
    PyObject *fast = PySequence_Fast(seq, "kernel: expected a sequence");
    if (!fast)
        return -1;
    Py_ssize_t len = PySequence_Fast_GET_SIZE(fast);
    *out = PyMem_Calloc((size_t)(len ? len : 1), sizeof(int));
    *n = (int)len;
    if (!*out) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < len; i++) {
        long v = PyLong_AsLong(PySequence_Fast_GET_ITEM(fast, i));
        if ((v == -1 && PyErr_Occurred()) || v < -2 || v >= limit) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "kernel: node reference out of range");
            Py_DECREF(fast);
            return -1;
        }
        (*out)[i] = (int)v;
    }
    Py_DECREF(fast);
    return 0;
}

/* spec: (kind, base, ubase, end, s1, s2, kids, targets) */
static int parse_node(Node *nd, PyObject *spec, int nnodes)
{
    int kind;
    long long base, ubase, end;
    PyObject *s1, *s2, *kids, *targets;
    if (!PyArg_ParseTuple(spec, "iLLLOOOO", &kind, &base, &ubase, &end, &s1, &s2, &kids, &targets))
        return -1;
    if (kind < K_NIL || kind > K_MULTI) {
        PyErr_SetString(PyExc_ValueError, "kernel: unknown node kind");
        return -1;
    }
    nd->kind = kind;
    nd->base = base;
    nd->ubase = ubase;
    nd->end = end;
    nd->s1 = Py_NewRef(s1);
    nd->s2 = Py_NewRef(s2);
    if ((kind == K_REL && (!PyUnicode_Check(s1) || !PyUnicode_Check(s2))) ||
        ((kind == K_ARROW || kind == K_MULTI) && !PyUnicode_Check(s1))) {
        PyErr_SetString(PyExc_TypeError, "kernel: reason parts must be str");
        return -1;
    }
    if (read_ints(kids, &nd->kids, &nd->nkids, nnodes) < 0)
        return -1;
    if (read_ints(targets, &nd->targets, &nd->ntargets, nnodes) < 0)
        return -1;
    return 0;
}

static int Program_init(Program *self, PyObject *args, PyObject *kw)
{
    PyObject *specs, *names, *obj_type, *subject_str, *rel_parts, *fallback, *depth_exc,
        *depth_msg, *rids;
    Py_buffer relkind;
    int max_depth;
    static char *kwlist[] = {"nodes",       "relkind",       "names",         "obj_type",
                             "subject_str", "rel_parts",     "fallback",      "depth_error",
                             "depth_message", "closure_rids", "max_depth",   NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Oy*OOOOOOUOi", kwlist, &specs, &relkind,
                                     &names, &obj_type, &subject_str, &rel_parts, &fallback,
                                     &depth_exc, &depth_msg, &rids, &max_depth))
        return -1;
    int rc = -1;
    PyObject *rfast = PySequence_Fast(rids, "kernel: closure_rids must be a sequence");
    if (!rfast)
        goto done;
    PyMem_Free(self->closure_rids);
    self->nclosure = PySequence_Fast_GET_SIZE(rfast);
    self->closure_rids = PyMem_Malloc((size_t)(self->nclosure ? self->nclosure : 1) * 8);
    if (!self->closure_rids) {
        Py_DECREF(rfast);
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < self->nclosure; i++) {
        long long v = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(rfast, i));
        if ((v == -1 && PyErr_Occurred()) || v < 0 || v > REL_MASK) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "kernel: relation id out of range");
            Py_DECREF(rfast);
            self->nclosure = 0;
            goto done;
        }
        self->closure_rids[i] = v;
    }
    Py_DECREF(rfast);
    self->max_depth = max_depth;
    if (!PyList_Check(names) || !PyCallable_Check(subject_str) || !PyList_Check(rel_parts) ||
        !PyExceptionClass_Check(fallback) || !PyExceptionClass_Check(depth_exc)) {
        PyErr_SetString(PyExc_TypeError, "kernel: bad Program arguments");
        goto done;
    }
    PyObject *fast = PySequence_Fast(specs, "kernel: nodes must be a sequence");
    if (!fast)
        goto done;
    release_snap(self);
    free_nodes(self);
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    self->nodes = PyMem_Calloc((size_t)(n ? n : 1), sizeof(Node));
    if (!self->nodes) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        goto done;
    }
    self->nnodes = (int)n;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (parse_node(&self->nodes[i], PySequence_Fast_GET_ITEM(fast, i), (int)n) < 0) {
            Py_DECREF(fast);
            free_nodes(self);
            goto done;
        }
    }
    Py_DECREF(fast);
    PyMem_Free(self->relkind);
    self->relkind = PyMem_Malloc(relkind.len ? (size_t)relkind.len : 1);
    if (!self->relkind) {
        PyErr_NoMemory();
        goto done;
    }
    memcpy(self->relkind, relkind.buf, (size_t)relkind.len);
    self->nrel = relkind.len;
    Py_XSETREF(self->names, Py_NewRef(names));
    Py_XSETREF(self->obj_type, Py_NewRef(obj_type));
    Py_XSETREF(self->subject_str, Py_NewRef(subject_str));
    Py_XSETREF(self->rel_parts, Py_NewRef(rel_parts));
    Py_XSETREF(self->fallback, Py_NewRef(fallback));
    Py_XSETREF(self->depth_exc, Py_NewRef(depth_exc));
    Py_XSETREF(self->depth_msg, Py_NewRef(depth_msg));
    rc = 0;
done:
    PyBuffer_Release(&relkind);
    return rc;
}

static int Program_traverse(Program *self, visitproc visit, void *arg)
{
    Py_VISIT(self->names);
    Py_VISIT(self->obj_type);
    Py_VISIT(self->subject_str);
    Py_VISIT(self->rel_parts);
    Py_VISIT(self->fallback);
    Py_VISIT(self->depth_exc);
    Py_VISIT(self->depth_msg);
    Py_VISIT(self->snap);
    Py_VISIT(self->it);
    Py_VISIT(self->entries);
    Py_VISIT(self->types);
    Py_VISIT(self->wildcards);
    Py_VISIT(self->decision);
    Py_VISIT(self->no_path);
    Py_VISIT(self->f.ov);
    Py_VISIT(self->f.ovl);
    Py_VISIT(self->r.ov);
    Py_VISIT(self->r.ovl);
    return 0;
}

static int Program_clear(Program *self)
{
    release_snap(self);
    Py_CLEAR(self->names);
    Py_CLEAR(self->obj_type);
    Py_CLEAR(self->subject_str);
    Py_CLEAR(self->rel_parts);
    Py_CLEAR(self->fallback);
    Py_CLEAR(self->depth_exc);
    Py_CLEAR(self->depth_msg);
    Py_CLEAR(self->it);
    Py_CLEAR(self->entries);
    Py_CLEAR(self->types);
    Py_CLEAR(self->wildcards);
    Py_CLEAR(self->decision);
    Py_CLEAR(self->no_path);
    return 0;
}

static void Program_dealloc(Program *self)
{
    PyObject_GC_UnTrack(self);
    Program_clear(self);
    free_nodes(self);
    PyMem_Free(self->relkind);
    PyMem_Free(self->closure_rids);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Program_closure(Program *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "closure(snap, sk, wk)");
        return NULL;
    }
    long long sk = PyLong_AsLongLong(args[1]);
    long long wk = PyLong_AsLongLong(args[2]);
    if (PyErr_Occurred())
        return NULL;
    if (bind_snap(self, args[0]) < 0)
        return NULL;
    PyObject *snap = Py_NewRef(self->snap);
    View r = view_of(&self->r);
    int truncated = 0;
    PyObject *set = closure_of(self, &r, self->ver, sk, wk, &truncated);
    Py_DECREF(snap);
    if (!set)
        return NULL;
    return Py_BuildValue("(NO)", set, truncated ? Py_True : Py_False);
}

/* ---- list-allowed: oid sets as bytes of sorted, distinct native int64 ------------------- */

/* Sort v[0:n] (values in [0, 2^33)) and drop repeats; tmp has room for n. The new length. */
static Py_ssize_t sort_unique(int64_t *v, Py_ssize_t n, int64_t *tmp)
{
    Py_ssize_t i = 1;
    while (i < n && v[i - 1] <= v[i])
        i++;
    if (i < n && n < 48) {
        for (i = 1; i < n; i++) {
            int64_t x = v[i];
            Py_ssize_t j = i;
            for (; j > 0 && v[j - 1] > x; j--)
                v[j] = v[j - 1];
            v[j] = x;
        }
    } else if (i < n) {
        /* LSD radix sort, three passes of 11 bits: linear, where qsort would be n log n
         * calls through a comparator */
        Py_ssize_t cnt[2048];
        int64_t *src = v, *dst = tmp;
        for (int shift = 0; shift < 33; shift += 11) {
            memset(cnt, 0, sizeof cnt);
            for (i = 0; i < n; i++)
                cnt[(src[i] >> shift) & 2047]++;
            Py_ssize_t at = 0;
            for (int d = 0; d < 2048; d++) {
                Py_ssize_t c = cnt[d];
                cnt[d] = at;
                at += c;
            }
            for (i = 0; i < n; i++)
                dst[cnt[(src[i] >> shift) & 2047]++] = src[i];
            int64_t *t = src;
            src = dst;
            dst = t;
        }
        if (src != v)
            memcpy(v, src, (size_t)n * 8);
    }
    Py_ssize_t m = 0;
    for (i = 0; i < n; i++)
        if (m == 0 || v[m - 1] != v[i])
            v[m++] = v[i];
    return m;
}

/* The set in vec x (sorted and deduplicated here) as bytes; frees x. */
static PyObject *vec_bytes(Vec *x)
{
    PyObject *out = NULL;
    int64_t *tmp = x->n >= 48 ? PyMem_Malloc((size_t)x->n * 8) : NULL;
    if (x->n >= 48 && !tmp)
        PyErr_NoMemory();
    else
        out = PyBytes_FromStringAndSize((const char *)x->v, sort_unique(x->v, x->n, tmp) * 8);
    PyMem_Free(tmp);
    PyMem_Free(x->v);
    x->v = NULL;
    x->n = x->cap = 0;
    return out;
}

/* Appends to x the oids of the resources holding relation `rid` to subject key
 * (oid << REL_BITS | srel): one run of the subject's reverse group. */
static int rev_run(const View *r, int64_t ver, int64_t oid, int64_t srel, int64_t rid, Vec *x)
{
    const int64_t *arr;
    Py_ssize_t lo, hi;
    int64_t *copy;
    if (group(r, ver, oid, &arr, &lo, &hi, &copy) < 0)
        return -1;
    int64_t start = ((srel << REL_BITS) | rid) << 32, stop = start + (1LL << 32);
    Py_ssize_t a = bisect(arr, start, lo, hi);
    Py_ssize_t b = a < hi && arr[a] < stop ? bisect(arr, stop, a, hi) : a;
    int rc = 0;
    if (b > a) {
        Py_ssize_t n0 = x->n;
        rc = vec_extend(x, arr + a, b - a);
        for (Py_ssize_t i = n0; rc == 0 && i < x->n; i++)
            x->v[i] -= start;
    }
    PyMem_Free(copy);
    return rc;
}

static int read_set(PyObject *o, Py_buffer *b)
{
    if (!PyBytes_Check(o)) {
        PyErr_SetString(PyExc_TypeError, "kernel: an oid set is bytes");
        return -1;
    }
    return get_buf(o, b, 8);
}

/* a relation id argument */
static int rel_arg(PyObject *o, long long *out)
{
    *out = PyLong_AsLongLong(o);
    if (*out == -1 && PyErr_Occurred())
        return -1;
    if (*out < 0 || *out > REL_MASK) {
        PyErr_SetString(PyExc_ValueError, "kernel: relation id out of range");
        return -1;
    }
    return 0;
}

/* revs() and nested(): read the oid set `set` into *in and bind `snap`; a reference that
 * keeps the snapshot for the call, or NULL */
static PyObject *set_call(Program *self, PyObject *snap, PyObject *set, Py_buffer *in)
{
    if (read_set(set, in) < 0)
        return NULL;
    if (bind_snap(self, snap) < 0) {
        PyBuffer_Release(in);
        return NULL;
    }
    return Py_NewRef(self->snap);
}

/* revs(snap, oids, srel, rid) -> bytes: every resource holding `rid` to a subject
 * (o << REL_BITS | srel) for o in the set `oids`. */
static PyObject *Program_revs(Program *self, PyObject *const *args, Py_ssize_t nargs)
{
    long long srel, rid;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "revs(snap, oids, srel, rid)");
        return NULL;
    }
    Py_buffer in;
    PyObject *snap;
    if (rel_arg(args[2], &srel) < 0 || rel_arg(args[3], &rid) < 0 ||
        !(snap = set_call(self, args[0], args[1], &in)))
        return NULL;
    View r = view_of(&self->r);
    const int64_t *oids = in.buf;
    Vec x = {0};
    PyObject *out = NULL;
    Py_ssize_t i = 0, n = in.len / 8;
    for (; i < n; i++)
        if (rev_run(&r, self->ver, oids[i], srel, rid, &x) < 0)
            break;
    if (i == n)
        out = vec_bytes(&x);
    PyMem_Free(x.v);
    PyBuffer_Release(&in);
    Py_DECREF(snap);
    return out;
}

/* closure(snap, seeds, rid) -> bytes: the seeds and every group reached from them through
 * the nested userset `rid` (group:g#rel holding rel), breadth-first so cycles end; more
 * than max_depth levels raises the depth error. */
static PyObject *Program_nested(Program *self, PyObject *const *args, Py_ssize_t nargs)
{
    long long rid;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "nested(snap, seeds, rid)");
        return NULL;
    }
    Py_buffer in;
    PyObject *snap;
    if (rel_arg(args[2], &rid) < 0 || !(snap = set_call(self, args[0], args[1], &in)))
        return NULL;
    View r = view_of(&self->r);
    Vec all = {0}, front = {0}, got = {0}, seen = {0};
    Py_ssize_t count = 0, n = in.len / 8;
    PyObject *out = NULL;
    const int64_t *seeds = in.buf;
    int level = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        if (set_add(&seen, &count, seeds[i]) < 0)
            goto done;
    if (vec_extend(&all, seeds, n) < 0 || vec_extend(&front, seeds, n) < 0)
        goto done;
    while (front.n) {
        if (++level > self->max_depth) {
            PyErr_SetObject(self->depth_exc, self->depth_msg);
            goto done;
        }
        got.n = 0;
        for (Py_ssize_t i = 0; i < front.n; i++)
            if (rev_run(&r, self->ver, front.v[i], rid, rid, &got) < 0)
                goto done;
        front.n = 0;
        for (Py_ssize_t i = 0; i < got.n; i++) {
            int added = set_add(&seen, &count, got.v[i]);
            if (added < 0 || (added && (vec_push(&front, got.v[i]) < 0 ||
                                        vec_push(&all, got.v[i]) < 0)))
                goto done;
        }
    }
    out = vec_bytes(&all);
done:
    PyMem_Free(all.v);
    PyMem_Free(front.v);
    PyMem_Free(got.v);
    PyMem_Free(seen.v);
    PyBuffer_Release(&in);
    Py_DECREF(snap);
    return out;
}

/* Merges sorted, distinct a[0:na] and b[0:nb] into out (room for na + nb); its length. */
static Py_ssize_t merge2(const int64_t *a, Py_ssize_t na, const int64_t *b, Py_ssize_t nb,
                         int64_t *out)
{
    Py_ssize_t i = 0, j = 0, m = 0;
    while (i < na && j < nb) {
        int64_t x = a[i], y = b[j];
        out[m++] = x < y ? x : y;
        i += x <= y;
        j += y <= x;
    }
    memcpy(out + m, a + i, (size_t)(na - i) * 8);
    m += na - i;
    memcpy(out + m, b + j, (size_t)(nb - j) * 8);
    return m + nb - j;
}

/* union(sets) -> bytes: the sets merged shortest first, so a large set is walked once
 * per merge it takes part in (usually one: a few small sets beside one large). */
static PyObject *kernel_union(PyObject *mod, PyObject *arg)
{
    PyObject *fast = PySequence_Fast(arg, "union: expected a sequence of oid sets");
    if (!fast)
        return NULL;
    Py_ssize_t k = PySequence_Fast_GET_SIZE(fast), nonempty = 0, total = 0;
    PyObject *only = NULL;
    for (Py_ssize_t i = 0; i < k; i++) {
        PyObject *s = PySequence_Fast_GET_ITEM(fast, i);
        if (!PyBytes_Check(s) || PyBytes_GET_SIZE(s) % 8) {
            Py_DECREF(fast);
            PyErr_SetString(PyExc_TypeError, "union: an oid set is bytes of int64");
            return NULL;
        }
        if (PyBytes_GET_SIZE(s)) {
            nonempty++;
            total += PyBytes_GET_SIZE(s) / 8;
            only = s;
        }
    }
    if (nonempty <= 1) { /* already a set: share it */
        PyObject *r = only ? Py_NewRef(only) : PyBytes_FromStringAndSize(NULL, 0);
        Py_DECREF(fast);
        return r;
    }
    PyObject **parts = PyMem_Malloc((size_t)nonempty * sizeof(PyObject *));
    int64_t *acc = PyMem_Malloc((size_t)total * 8), *tmp = PyMem_Malloc((size_t)total * 8);
    PyObject *r = NULL;
    if (!parts || !acc || !tmp) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t np = 0;
    for (Py_ssize_t i = 0; i < k; i++) {
        PyObject *s = PySequence_Fast_GET_ITEM(fast, i);
        if (PyBytes_GET_SIZE(s)) { /* insertion by size: k is small */
            Py_ssize_t j = np++;
            for (; j > 0 && PyBytes_GET_SIZE(parts[j - 1]) > PyBytes_GET_SIZE(s); j--)
                parts[j] = parts[j - 1];
            parts[j] = s;
        }
    }
    Py_ssize_t m = PyBytes_GET_SIZE(parts[0]) / 8;
    memcpy(acc, PyBytes_AS_STRING(parts[0]), (size_t)m * 8);
    for (Py_ssize_t i = 1; i < np; i++) {
        m = merge2(acc, m, (const int64_t *)PyBytes_AS_STRING(parts[i]),
                   PyBytes_GET_SIZE(parts[i]) / 8, tmp);
        int64_t *t = acc;
        acc = tmp;
        tmp = t;
    }
    r = PyBytes_FromStringAndSize((const char *)acc, m * 8);
done:
    PyMem_Free(parts);
    PyMem_Free(acc);
    PyMem_Free(tmp);
    Py_DECREF(fast);
    return r;
}

/* intersect(a, b) -> bytes: merge, or binary search in the longer when much shorter */
static PyObject *kernel_intersect(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyBytes_Check(args[0]) || !PyBytes_Check(args[1]) ||
        PyBytes_GET_SIZE(args[0]) % 8 || PyBytes_GET_SIZE(args[1]) % 8) {
        PyErr_SetString(PyExc_TypeError, "intersect(a: bytes, b: bytes)");
        return NULL;
    }
    PyObject *sa = args[0], *sb = args[1];
    if (PyBytes_GET_SIZE(sa) > PyBytes_GET_SIZE(sb)) {
        PyObject *t = sa;
        sa = sb;
        sb = t;
    }
    const int64_t *a = (const int64_t *)PyBytes_AS_STRING(sa);
    const int64_t *b = (const int64_t *)PyBytes_AS_STRING(sb);
    Py_ssize_t na = PyBytes_GET_SIZE(sa) / 8, nb = PyBytes_GET_SIZE(sb) / 8, m = 0;
    int64_t *out = PyMem_Malloc((size_t)(na ? na : 1) * 8);
    if (!out)
        return PyErr_NoMemory();
    if (na * 16 < nb) {
        Py_ssize_t lo = 0;
        for (Py_ssize_t i = 0; i < na; i++) {
            lo = bisect(b, a[i], lo, nb);
            if (lo < nb && b[lo] == a[i])
                out[m++] = a[i];
        }
    } else {
        for (Py_ssize_t i = 0, j = 0; i < na && j < nb;) {
            if (a[i] < b[j])
                i++;
            else if (a[i] > b[j])
                j++;
            else {
                out[m++] = a[i];
                i++;
                j++;
            }
        }
    }
    PyObject *r = PyBytes_FromStringAndSize((const char *)out, m * 8);
    PyMem_Free(out);
    return r;
}

/* names(names, oids, cut) -> list[str]: names[o] for o in the set, sorted as str sorts,
 * each without its first `cut` characters */
static PyObject *kernel_names(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t cut = nargs == 3 ? PyLong_AsSsize_t(args[2]) : -1;
    if (cut == -1 && PyErr_Occurred())
        return NULL;
    if (nargs != 3 || cut < 0 || !PyList_Check(args[0]) || !PyBytes_Check(args[1]) ||
        PyBytes_GET_SIZE(args[1]) % 8) {
        PyErr_SetString(PyExc_TypeError, "names(names: list[str], oids: bytes, cut: int)");
        return NULL;
    }
    const int64_t *o = (const int64_t *)PyBytes_AS_STRING(args[1]);
    Py_ssize_t n = PyBytes_GET_SIZE(args[1]) / 8, size = PyList_GET_SIZE(args[0]);
    PyObject *out = PyList_New(n);
    if (!out)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (o[i] < 0 || o[i] >= size) {
            Py_DECREF(out);
            PyErr_SetString(PyExc_IndexError, "names: object id out of range");
            return NULL;
        }
        PyList_SET_ITEM(out, i, Py_NewRef(PyList_GET_ITEM(args[0], o[i])));
    }
    /* list.sort itself: its str comparison is specialised and it finds presorted runs */
    if (PyList_Sort(out) < 0) {
        Py_DECREF(out);
        return NULL;
    }
    for (Py_ssize_t i = 0; cut && i < n; i++) {
        PyObject *nm = PyList_GET_ITEM(out, i);
        if (!PyUnicode_Check(nm)) {
            Py_DECREF(out);
            PyErr_SetString(PyExc_TypeError, "names: a name is not a str");
            return NULL;
        }
        PyObject *id = PyUnicode_Substring(nm, cut, PY_SSIZE_T_MAX);
        if (!id) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, id);
        Py_DECREF(nm);
    }
    return out;
}

/* ---- check: the whole compiled check in one call ----------------------------------- */

static PyObject *s_interner, *s_names, *s_rel_names, *s_type, *s_id, *s_relation, *s_revision;
static PyObject *s_one;

/* bind(interner, nkeys, entries, types, decision): what check() needs; nkeys is the
 * interner's relation key count the nodes were compiled at (the names table is the one
 * given to __init__). */
static PyObject *Program_bind(Program *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5 || !PyDict_Check(args[2]) || !PyAnySet_Check(args[3]) ||
        !PyType_Check(args[4]) || !PyType_IsSubtype((PyTypeObject *)args[4], &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError,
                        "bind(interner, nkeys, entries: dict, types: set, decision: tuple type)");
        return NULL;
    }
    Py_ssize_t nkeys = PyLong_AsSsize_t(args[1]);
    if (nkeys == -1 && PyErr_Occurred())
        return NULL;
    PyObject *wild = PyObject_GetAttrString(args[0], "wildcards");
    if (!wild)
        return NULL;
    if (!PyDict_Check(wild)) {
        Py_DECREF(wild);
        PyErr_SetString(PyExc_TypeError, "bind: not an interner");
        return NULL;
    }
    self->nkeys = nkeys;
    Py_XSETREF(self->wildcards, wild);
    Py_XSETREF(self->it, Py_NewRef(args[0]));
    Py_XSETREF(self->entries, Py_NewRef(args[2]));
    Py_XSETREF(self->types, Py_NewRef(args[3]));
    Py_XSETREF(self->decision, Py_NewRef(args[4]));
    if (!self->no_path && !(self->no_path = PyUnicode_InternFromString("no_path")))
        return NULL;
    Py_RETURN_NONE;
}

/* "type:id" (the interner's object name) */
static PyObject *join_name(PyObject *type, PyObject *id)
{
    if (PyUnicode_IS_ASCII(type) && PyUnicode_IS_ASCII(id)) {
        Py_ssize_t a = PyUnicode_GET_LENGTH(type), b = PyUnicode_GET_LENGTH(id);
        PyObject *s = PyUnicode_New(a + 1 + b, 127);
        if (!s)
            return NULL;
        char *d = (char *)PyUnicode_DATA(s);
        memcpy(d, PyUnicode_DATA(type), (size_t)a);
        d[a] = ':';
        memcpy(d + a + 1, PyUnicode_DATA(id), (size_t)b);
        return s;
    }
    return PyUnicode_FromFormat("%U:%U", type, id);
}

static PyObject *make_decision(Program *p, int allowed, PyObject *rev, PyObject *reason)
{
    PyTypeObject *t = (PyTypeObject *)p->decision;
    PyObject *d = t->tp_alloc(t, 3); /* as tuple.__new__ does for a subclass */
    if (!d)
        return NULL;
    PyTuple_SET_ITEM(d, 0, Py_NewRef(allowed ? Py_True : Py_False));
    PyTuple_SET_ITEM(d, 1, Py_NewRef(rev));
    PyTuple_SET_ITEM(d, 2, Py_NewRef(reason));
    return d;
}

/* attribute `name` of o if it is a str, else NULL; *out gets a new reference */
static int str_attr(PyObject *o, PyObject *name, PyObject **out)
{
    *out = PyObject_GetAttr(o, name);
    if (!*out)
        return -1;
    if (!PyUnicode_CheckExact(*out)) {
        Py_CLEAR(*out);
        return 1;
    }
    return 0;
}

/* The compiled check of "sname" (a plain subject "stype:id") against "rname" (a resource
 * "rtype:id"): 1 when answered, with *reason (a new reference, Py_None for a deny) and *rev
 * (the snapshot's revision, a new reference) set; 0 when the compiled check does not cover
 * the query (the caller takes the general path): a subject type or a (type, permission)
 * without a compiled entry, a program compiled for another interner state or a closure
 * table for another snapshot, data the compiled plan does not cover (the nodes raise the
 * fallback exception); -1 on error. */
static int check_names(Program *self, PyObject *snap, PyObject *held, PyObject *perm,
                       PyObject *rtype, PyObject *stype, PyObject *rname, PyObject *sname,
                       PyObject **reason, PyObject **rev)
{
    *reason = *rev = NULL;
    if (!self->it || !self->nodes)
        return 0;
    if (!PyTuple_Check(held) || PyTuple_GET_SIZE(held) != 3 || PyTuple_GET_ITEM(held, 0) != snap)
        return 0;
    /* compiled for this interner, at its current relation count and names table */
    PyObject *it = PyObject_GetAttr(snap, s_interner);
    if (!it)
        return -1;
    int same = it == self->it;
    Py_DECREF(it);
    if (!same)
        return 0;
    PyObject *names = PyObject_GetAttr(self->it, s_names);
    PyObject *rel = names ? PyObject_GetAttr(self->it, s_rel_names) : NULL;
    same = rel && names == self->names && PyList_Check(rel) && PyList_GET_SIZE(rel) == self->nkeys;
    Py_XDECREF(names);
    Py_XDECREF(rel);
    if (!rel)
        return -1;
    if (!same || !PyUnicode_CheckExact(perm))
        return 0;
    PyObject *perms = PyDict_GetItemWithError(self->entries, rtype);
    PyObject *entry = perms && PyDict_Check(perms) ? PyDict_GetItemWithError(perms, perm) : NULL;
    if (!entry)
        return PyErr_Occurred() ? -1 : 0;
    int known = PySet_Contains(self->types, stype);
    if (known <= 0)
        return known;
    long idx = PyLong_AsLong(entry);
    if (idx == -1 && PyErr_Occurred())
        return -1;
    if (idx < 0 || idx >= self->nnodes) {
        PyErr_SetString(PyExc_ValueError, "kernel: entry out of range");
        return -1;
    }
    PyObject *names2[2] = {rname, sname};
    int64_t found[2];
    if (find_names(self->it, names2, 2, found) < 0)
        return -1;
    if (!(*rev = PyObject_GetAttr(snap, s_revision)))
        return -1;
    int64_t oid = found[0], so = found[1];
    if (oid < 0) {
        *reason = Py_NewRef(Py_None);
        return 1;
    }
    PyObject *w = PyDict_GetItemWithError(self->wildcards, stype);
    if (!w && PyErr_Occurred())
        goto fail;
    long long wo = w ? PyLong_AsLongLong(w) : -1;
    if (wo == -1 && PyErr_Occurred())
        goto fail;
    if (bind_snap(self, snap) < 0)
        goto fail;
    /* The run holds its snapshot, so its base arrays (never resized) stay valid even if
     * another thread rebinds the program meanwhile (the members callback runs Python). */
    PyObject *held_snap = Py_NewRef(self->snap);
    Query q = {self,
               view_of(&self->f),
               view_of(&self->r),
               self->ver,
               so < 0 ? -1 : so << REL_BITS,
               wo < 0 ? -1 : wo << REL_BITS,
               PyTuple_GET_ITEM(held, 2),
               PyTuple_GET_ITEM(held, 1),
               NULL,
               0,
               NULL,
               0,
               0};
    PyObject *r = enter(&q, (int)idx, oid);
    Py_DECREF(held_snap);
    memo_clear(&q);
    Py_XDECREF(q.members);
    if (!r) {
        if (!PyErr_ExceptionMatches(self->fallback))
            goto fail;
        PyErr_Clear();
        Py_CLEAR(*rev);
        return 0;
    }
    *reason = r;
    return 1;
fail:
    Py_CLEAR(*rev);
    return -1;
}

/* check(snap, subject, permission, resource, closures) -> Decision, or None when the
 * compiled check does not cover the query (see check_names; also a subject with a
 * relation). */
static PyObject *Program_check(Program *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "check(snap, subject, permission, resource, closures)");
        return NULL;
    }
    PyObject *snap = args[0], *subject = args[1], *perm = args[2], *res = args[3];
    PyObject *rtype = NULL, *rid = NULL, *stype = NULL, *sid = NULL, *srel = NULL;
    PyObject *rname = NULL, *sname = NULL, *reason = NULL, *rev = NULL, *out = NULL;
    int rc;
    if (!self->it || !self->nodes)
        Py_RETURN_NONE;
    if ((rc = str_attr(res, s_type, &rtype)) || (rc = str_attr(res, s_id, &rid)) ||
        (rc = str_attr(subject, s_type, &stype)) || (rc = str_attr(subject, s_id, &sid)))
        goto unusual;
    if (!(srel = PyObject_GetAttr(subject, s_relation)))
        goto done;
    if (srel != Py_None)
        goto unusual_ok;
    if (!(rname = join_name(rtype, rid)) || !(sname = join_name(stype, sid)))
        goto done;
    rc = check_names(self, snap, args[4], perm, rtype, stype, rname, sname, &reason, &rev);
    if (rc < 0)
        goto done;
    if (rc == 0)
        goto unusual_ok;
    out = reason == Py_None ? make_decision(self, 0, rev, self->no_path)
                            : make_decision(self, 1, rev, reason);
    goto done;
unusual:
    if (rc < 0)
        goto done;
unusual_ok:
    out = Py_NewRef(Py_None);
done:
    Py_XDECREF(rtype);
    Py_XDECREF(rid);
    Py_XDECREF(stype);
    Py_XDECREF(sid);
    Py_XDECREF(srel);
    Py_XDECREF(rname);
    Py_XDECREF(sname);
    Py_XDECREF(reason);
    Py_XDECREF(rev);
    return out;
}

/* A CheckRequest's fields as read off the wire by read_check_request. */
typedef struct {
    const char *str[3]; /* subject, permission, resource */
    Py_ssize_t len[3];
} WireCheck;

static int read_varint(const unsigned char **p, const unsigned char *end, uint64_t *out)
{
    uint64_t v = 0;
    for (int shift = 0; shift < 64 && *p < end; shift += 7) {
        unsigned char b = *(*p)++;
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *out = v;
            return 0;
        }
    }
    return -1;
}

/* 1 when `buf` is a CheckRequest this path takes: subject, permission and resource each
 * given once and not empty, no at_least_revision other than 0, no other field; 0 for
 * anything else (the caller decodes the request the usual way, and reports what is
 * wrong with it). */
static int read_check_request(const unsigned char *p, Py_ssize_t n, WireCheck *w)
{
    const unsigned char *end = p + n;
    int seen = 0;
    memset(w, 0, sizeof *w);
    while (p < end) {
        uint64_t key, v;
        if (read_varint(&p, end, &key) < 0)
            return 0;
        uint64_t field = key >> 3, wt = key & 7;
        if (field >= 1 && field <= 3 && wt == 2) {
            if (seen & (1 << field) || read_varint(&p, end, &v) < 0 || v == 0 ||
                v > (uint64_t)(end - p))
                return 0;
            seen |= 1 << field;
            w->str[field - 1] = (const char *)p;
            w->len[field - 1] = (Py_ssize_t)v;
            p += v;
        } else if (field == 4 && wt == 0) {
            if (read_varint(&p, end, &v) < 0 || v != 0)
                return 0;
        } else {
            return 0;
        }
    }
    return seen == 0xe;
}

static unsigned char *put_varint(unsigned char *d, uint64_t v)
{
    while (v >= 0x80) {
        *d++ = (unsigned char)(v | 0x80);
        v >>= 7;
    }
    *d++ = (unsigned char)v;
    return d;
}

/* A serialized CheckResponse, fields in number order and defaults left out, as protobuf
 * serializes it. */
static PyObject *check_response(int allowed, long long rev, PyObject *reason, long long prev)
{
    Py_ssize_t rlen = 0;
    const char *r = NULL;
    if (reason != Py_None && !(r = PyUnicode_AsUTF8AndSize(reason, &rlen)))
        return NULL;
    if (rlen > 1 << 20) {
        PyErr_SetString(PyExc_ValueError, "kernel: reason too long");
        return NULL;
    }
    unsigned char head[40], *d = head;
    if (allowed) {
        *d++ = 0x08;
        *d++ = 1;
    }
    if (rev) {
        *d++ = 0x10;
        d = put_varint(d, (uint64_t)rev);
    }
    if (rlen) {
        *d++ = 0x1a;
        d = put_varint(d, (uint64_t)rlen);
    }
    unsigned char tail[12], *t = tail;
    if (prev) {
        *t++ = 0x20;
        t = put_varint(t, (uint64_t)prev);
    }
    Py_ssize_t nh = d - head, nt = t - tail;
    PyObject *out = PyBytes_FromStringAndSize(NULL, nh + rlen + nt);
    if (!out)
        return NULL;
    char *o = PyBytes_AS_STRING(out);
    memcpy(o, head, (size_t)nh);
    if (rlen)
        memcpy(o + nh, r, (size_t)rlen);
    memcpy(o + nh + rlen, tail, (size_t)nt);
    return out;
}

/* cells[i] += 1 (a metrics.Tally row: a list of numbers this thread alone writes) */
static int bump(PyObject *cells, Py_ssize_t i)
{
    if (cells == Py_None)
        return 0;
    if (!PyList_CheckExact(cells) || PyList_GET_SIZE(cells) <= i) {
        PyErr_SetString(PyExc_TypeError, "kernel: cells must be a list of counts");
        return -1;
    }
    PyObject *n = PyNumber_Add(PyList_GET_ITEM(cells, i), s_one);
    if (!n)
        return -1;
    PyList_SetItem(cells, i, n);
    return 0;
}

/* check_wire(payload, snap, closures, subjects, resources, policy_revision, cells) ->
 * the serialized CheckResponse, or None.
 *
 * Check from the request's bytes to the response's, for the server's hot path. Only a
 * request whose subject and resource texts are keys of `subjects` and `resources` (the
 * server's caches of references its parser accepted, so the texts are valid "type:id"
 * names) is taken, and only when the subject has no relation; anything else, and any
 * query the compiled check does not cover, is None: the caller then decodes the request
 * and answers as usual. `cells[0]` (allowed) or `cells[1]` (denied) counts the answer;
 * `cells` may be None. */
static PyObject *Program_check_wire(Program *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "check_wire(payload, snap, closures, subjects, "
                                         "resources, policy_revision, cells)");
        return NULL;
    }
    PyObject *subjects = args[3], *resources = args[4], *cells = args[6];
    if (!PyBytes_CheckExact(args[0]) || !PyDict_CheckExact(subjects) ||
        !PyDict_CheckExact(resources)) {
        PyErr_SetString(PyExc_TypeError, "check_wire: bytes, ..., dict, dict, ...");
        return NULL;
    }
    long long prev = PyLong_AsLongLong(args[5]);
    if (prev == -1 && PyErr_Occurred())
        return NULL;
    WireCheck w;
    if (!self->it || !self->nodes ||
        !read_check_request((const unsigned char *)PyBytes_AS_STRING(args[0]),
                            PyBytes_GET_SIZE(args[0]), &w))
        Py_RETURN_NONE;
    /* a relation, or a text no cache holds (also a text that is not UTF-8): not here */
    if (memchr(w.str[0], '#', (size_t)w.len[0]))
        Py_RETURN_NONE;
    const char *sc = memchr(w.str[0], ':', (size_t)w.len[0]);
    const char *rc_ = memchr(w.str[2], ':', (size_t)w.len[2]);
    if (!sc || !rc_)
        Py_RETURN_NONE;
    PyObject *sname = NULL, *rname = NULL, *perm = NULL, *stype = NULL, *rtype = NULL;
    PyObject *reason = NULL, *rev = NULL, *out = NULL;
    sname = PyUnicode_DecodeUTF8(w.str[0], w.len[0], NULL);
    rname = sname ? PyUnicode_DecodeUTF8(w.str[2], w.len[2], NULL) : NULL;
    perm = rname ? PyUnicode_DecodeUTF8(w.str[1], w.len[1], NULL) : NULL;
    if (!perm) {
        if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
            PyErr_Clear();
            out = Py_NewRef(Py_None);
        }
        goto done;
    }
    int hit = PyDict_Contains(subjects, sname);
    if (hit > 0)
        hit = PyDict_Contains(resources, rname);
    if (hit <= 0) {
        if (hit == 0)
            out = Py_NewRef(Py_None);
        goto done;
    }
    stype = PyUnicode_DecodeUTF8(w.str[0], sc - w.str[0], NULL);
    rtype = stype ? PyUnicode_DecodeUTF8(w.str[2], rc_ - w.str[2], NULL) : NULL;
    if (!rtype)
        goto done;
    int rc = check_names(self, args[1], args[2], perm, rtype, stype, rname, sname, &reason, &rev);
    if (rc <= 0) {
        if (rc == 0)
            out = Py_NewRef(Py_None);
        goto done;
    }
    long long r = PyLong_AsLongLong(rev);
    if (r == -1 && PyErr_Occurred())
        goto done;
    int allowed = reason != Py_None;
    out = check_response(allowed, r, allowed ? reason : self->no_path, prev);
    if (out && bump(cells, allowed ? 0 : 1) < 0)
        Py_CLEAR(out);
done:
    Py_XDECREF(sname);
    Py_XDECREF(rname);
    Py_XDECREF(perm);
    Py_XDECREF(stype);
    Py_XDECREF(rtype);
    Py_XDECREF(reason);
    Py_XDECREF(rev);
    return out;
}

static PyMethodDef Program_methods[] = {
    {"closure", (PyCFunction)(void (*)(void))Program_closure, METH_FASTCALL,
     "closure(snap, sk, wk) -> (userset keys, truncated)"},
    {"bind", (PyCFunction)(void (*)(void))Program_bind, METH_FASTCALL,
     "bind(interner, nkeys, entries, types, decision): what check() needs"},
    {"check", (PyCFunction)(void (*)(void))Program_check, METH_FASTCALL,
     "check(snap, subject, permission, resource, closures) -> Decision, or None"},
    {"check_wire", (PyCFunction)(void (*)(void))Program_check_wire, METH_FASTCALL,
     "check_wire(payload, snap, closures, subjects, resources, policy_revision, cells) -> "
     "the serialized CheckResponse, or None"},
    {"revs", (PyCFunction)(void (*)(void))Program_revs, METH_FASTCALL,
     "revs(snap, oids, srel, rid) -> the resources holding rid to any (oid, srel)"},
    {"nested", (PyCFunction)(void (*)(void))Program_nested, METH_FASTCALL,
     "nested(snap, seeds, rid) -> the seeds and the groups nested in them through rid"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ProgramType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "gatehouse.engine._kernel.Program",
    .tp_basicsize = sizeof(Program),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Compiled check nodes run over a snapshot's packed forward index.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Program_init,
    .tp_dealloc = (destructor)Program_dealloc,
    .tp_traverse = (traverseproc)Program_traverse,
    .tp_clear = (inquiry)Program_clear,
    .tp_methods = Program_methods,
};

static PyMethodDef kernel_methods[] = {
    {"union", (PyCFunction)kernel_union, METH_O, "union(sets) -> their union"},
    {"intersect", (PyCFunction)(void (*)(void))kernel_intersect, METH_FASTCALL,
     "intersect(a, b) -> their intersection"},
    {"names", (PyCFunction)(void (*)(void))kernel_names, METH_FASTCALL,
     "names(names, oids, cut) -> the names of the oids, sorted, less cut characters"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef kernel_module = {
    PyModuleDef_HEAD_INIT, "_kernel", "The compiled check, in C.", -1, kernel_methods,
};

PyMODINIT_FUNC PyInit__kernel(void)
{
    if (PyType_Ready(&ProgramType) < 0)
        return NULL;
    s_interner = PyUnicode_InternFromString("interner");
    s_names = PyUnicode_InternFromString("names");
    s_rel_names = PyUnicode_InternFromString("rel_names");
    s_type = PyUnicode_InternFromString("type");
    s_id = PyUnicode_InternFromString("id");
    s_relation = PyUnicode_InternFromString("relation");
    s_revision = PyUnicode_InternFromString("revision");
    s_one = PyLong_FromLong(1);
    if (!s_interner || !s_names || !s_rel_names || !s_type || !s_id || !s_relation ||
        !s_revision || !s_one)
        return NULL;
    PyObject *m = PyModule_Create(&kernel_module);
    if (!m)
        return NULL;
    if (PyModule_AddObjectRef(m, "Program", (PyObject *)&ProgramType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
