/*
 * seg2._C.pq_overlaps: the overlap table of one panoptic image in one pass over its pixels.
 *
 * Why compiled: the numpy path (seg2/evaluation/pq_overlaps.py, OverlapCounter) makes four
 * passes over the pixels and a dozen calls per image, and on freshly decoded PNGs much of its
 * time went to branch mispredictions inside numpy's nonzero and searchsorted (~75 us per 256 px
 * image, against ~16 us here with AVX-512 and ~20 with AVX2). The cells are exactly the numpy
 * path's, which stays as the fallback where no C compiler was found at install; the tests
 * check both against references.
 *
 * Words are a PNG's 4-byte pixels (native uint32; the segment id in the low 24 bits). A table
 * holds [id - 1, id] for each listed id, sorted; an id's rank (its first entry >= the id) is
 * odd when the id is listed and even when not. A run of pixels with GT rank rg and predicted
 * rank rp adds its length to counts[rg * width + rp], width = len(pred_table) + 1.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#if defined(__SSE2__) || defined(_M_X64) || (defined(_M_IX86_FP) && _M_IX86_FP >= 2)
#include <emmintrin.h>
#define SEG2_SSE2 1
#endif
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>
#define SEG2_AVX 1 /* AVX2 and AVX-512 steps (target attributes), used when the CPU has them */
#endif

typedef enum { ISA_SCALAR, ISA_SSE2, ISA_AVX2, ISA_AVX512 } Isa;
static const char *isa_names[] = {"scalar", "sse2", "avx2", "avx512"};

/* Whether this build has the code for `isa`. */
static int compiled(Isa isa) {
#ifndef SEG2_SSE2
    if (isa == ISA_SSE2)
        return 0;
#endif
#ifndef SEG2_AVX
    if (isa == ISA_AVX2 || isa == ISA_AVX512)
        return 0;
#endif
    return 1;
}

/* The widest instruction set both compiled in and offered by this CPU. */
static Isa best_isa(void) {
#ifdef SEG2_AVX
    if (__builtin_cpu_supports("avx512f"))
        return ISA_AVX512;
    if (__builtin_cpu_supports("avx2"))
        return ISA_AVX2;
#endif
#ifdef SEG2_SSE2
    return ISA_SSE2;
#else
    return ISA_SCALAR;
#endif
}

/* First index of t[0..n) (n >= 1) holding a value >= v; n when none. Arithmetic instead of a
 * branch per step: on fresh data each would be a coin toss. */
static inline Py_ssize_t lower_bound(const uint32_t *t, Py_ssize_t n, uint32_t v) {
    const uint32_t *base = t;
    Py_ssize_t len = n;
    while (len > 1) {
        Py_ssize_t half = len >> 1;
        base += (Py_ssize_t)(base[half - 1] < v) * half;
        len -= half;
    }
    return (base - t) + (*base < v);
}

/* ---------------------------------------------------------------- finding the run starts */

/* The pass goes by chunks of pixels (L1-sized): it first finds where the chunk's runs start,
 * without a branch on the data, then adds the runs. Done together, each start mispredicted. */
enum { CHUNK = 1024 };

/* Appends to pos[cnt..] the offsets from `origin` of the pixels k in [i, end) (i >= 1) where
 * the GT or the predicted id differs from pixel k - 1; returns the new count. */
static Py_ssize_t starts_scalar(const uint32_t *g, const uint32_t *p, Py_ssize_t origin,
                                Py_ssize_t i, Py_ssize_t end, int32_t *pos, Py_ssize_t cnt) {
    for (Py_ssize_t k = i; k < end; k++) {
        pos[cnt] = (int32_t)(k - origin);
        cnt += (g[k] != g[k - 1]) | (p[k] != p[k - 1]);
    }
    return cnt;
}

/* For an 8-bit mask: the positions of its set bits in order, and how many (compress by table). */
static uint8_t set_bits[256][8];
static uint8_t bit_count[256];

static void init_tables(void) {
    for (int m = 0; m < 256; m++) {
        int c = 0;
        for (int j = 0; j < 8; j++)
            if (m >> j & 1)
                set_bits[m][c++] = (uint8_t)j;
        bit_count[m] = (uint8_t)c;
    }
}

#ifdef SEG2_SSE2
/* 4 pixels a step: one compare per side, the changed pixels' offsets stored from the table. */
static Py_ssize_t starts_sse2(const uint32_t *g, const uint32_t *p, Py_ssize_t i,
                              Py_ssize_t end, int32_t *pos) {
    Py_ssize_t k = i, cnt = 0;
    for (; k + 4 <= end; k += 4) {
        __m128i eq = _mm_and_si128(
            _mm_cmpeq_epi32(_mm_loadu_si128((const __m128i *)(g + k)),
                            _mm_loadu_si128((const __m128i *)(g + k - 1))),
            _mm_cmpeq_epi32(_mm_loadu_si128((const __m128i *)(p + k)),
                            _mm_loadu_si128((const __m128i *)(p + k - 1))));
        unsigned m = ~(unsigned)_mm_movemask_ps(_mm_castsi128_ps(eq)) & 0xFu;
        int32_t base = (int32_t)(k - i);
        for (int j = 0; j < 4; j++)
            pos[cnt + j] = base + set_bits[m][j];
        cnt += bit_count[m];
    }
    return starts_scalar(g, p, i, k, end, pos, cnt);
}
#endif

#ifdef SEG2_AVX
/* 8 pixels a step: one compare per side, the offsets widened from the table in one vector. */
__attribute__((target("avx2"))) static Py_ssize_t starts_avx2(
    const uint32_t *g, const uint32_t *p, Py_ssize_t i, Py_ssize_t end, int32_t *pos) {
    Py_ssize_t k = i, cnt = 0;
    for (; k + 8 <= end; k += 8) {
        __m256i eq = _mm256_and_si256(
            _mm256_cmpeq_epi32(_mm256_loadu_si256((const __m256i *)(g + k)),
                               _mm256_loadu_si256((const __m256i *)(g + k - 1))),
            _mm256_cmpeq_epi32(_mm256_loadu_si256((const __m256i *)(p + k)),
                               _mm256_loadu_si256((const __m256i *)(p + k - 1))));
        unsigned m = ~(unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(eq)) & 0xFFu;
        __m256i offs = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)set_bits[m]));
        _mm256_storeu_si256((__m256i *)(pos + cnt),
                            _mm256_add_epi32(offs, _mm256_set1_epi32((int32_t)(k - i))));
        cnt += bit_count[m];
    }
    return starts_scalar(g, p, i, k, end, pos, cnt);
}
#endif

#ifdef SEG2_AVX
/* 16 pixels a step: compares into a mask, the previous pixels shifted in from the block before
 * (not loaded again, across cache lines); the changed pixels' offsets compressed in a register
 * (compressing into memory is slow on some CPUs) and stored as one vector. */
__attribute__((target("avx512f,popcnt"))) static Py_ssize_t starts_avx512(
    const uint32_t *g, const uint32_t *p, Py_ssize_t i, Py_ssize_t end, int32_t *pos) {
    Py_ssize_t k = i, cnt = 0;
    __m512i offs = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i step = _mm512_set1_epi32(16);
    /* A block's previous pixels: the last of the block before, then its own first 15. */
    __m512i gl = _mm512_set1_epi32((int)g[k - 1]), pl = _mm512_set1_epi32((int)p[k - 1]);
    for (; k + 16 <= end; k += 16) {
        __m512i gc = _mm512_loadu_si512(g + k), pc = _mm512_loadu_si512(p + k);
        __mmask16 changed = _mm512_cmpneq_epi32_mask(gc, _mm512_alignr_epi32(gc, gl, 15)) |
                            _mm512_cmpneq_epi32_mask(pc, _mm512_alignr_epi32(pc, pl, 15));
        gl = gc;
        pl = pc;
        _mm512_storeu_si512(pos + cnt, _mm512_maskz_compress_epi32(changed, offs));
        cnt += __builtin_popcount((unsigned)changed);
        offs = _mm512_add_epi32(offs, step);
    }
    return starts_scalar(g, p, i, k, end, pos, cnt);
}
#endif

/* ---------------------------------------------------------------- adding the runs */

/* The ranks of the words met last, by a multiplicative hash of the word: an image's runs
 * share few ids (~1000 runs, ~20 ids at 256 px), so most ranks are looked up, not searched.
 * An empty slot holds word 0 with its true rank: no valid flag is needed. */
enum { SLOTS = 256 };
typedef struct {
    uint32_t word[SLOTS];
    Py_ssize_t rank[SLOTS];
} RankCache;

static void cache_init(RankCache *c, const uint32_t *t, Py_ssize_t n) {
    Py_ssize_t r0 = lower_bound(t, n, 0);
    memset(c->word, 0, sizeof c->word);
    for (int k = 0; k < SLOTS; k++)
        c->rank[k] = r0;
}

static inline Py_ssize_t rank_of(RankCache *c, const uint32_t *t, Py_ssize_t n, uint32_t v) {
    unsigned slot = (uint32_t)(v * 2654435761u) >> 24;
    if (c->word[slot] == v)
        return c->rank[slot];
    c->word[slot] = v;
    return c->rank[slot] = lower_bound(t, n, v);
}

typedef struct {
    const uint32_t *g, *p; /* the image's GT and predicted words */
    const uint32_t *gt_table, *pred_table;
    Py_ssize_t gt_n, pred_n, width;
    RankCache gt_cache, pred_cache;
    int64_t *counts;
    Py_ssize_t cell;      /* the current run's cell */
    int64_t cell_unknown; /* -1 when an id of the current run is in no table (even rank) */
    Py_ssize_t start;     /* where the current run began */
    Py_ssize_t runs;
    int64_t unknown; /* pixels whose GT or predicted id is in no table */
} Walk;

/* Ends the current run at pixel i (its pixels added to its cell) and starts one there. */
static inline void run_at(Walk *w, Py_ssize_t i) {
    Py_ssize_t rg = rank_of(&w->gt_cache, w->gt_table, w->gt_n, w->g[i]);
    Py_ssize_t rp = rank_of(&w->pred_cache, w->pred_table, w->pred_n, w->p[i]);
    int64_t len = (int64_t)(i - w->start);
    w->counts[w->cell] += len;
    w->unknown += len & w->cell_unknown;
    w->cell = rg * w->width + rp;
    w->cell_unknown = -(int64_t)((rg & rp & 1) == 0);
    w->start = i;
    w->runs++;
}

static void walk(Walk *w, Py_ssize_t n, Isa isa) {
    int32_t pos[CHUNK + 16]; /* a vector step may store up to 16 offsets past the count */
    cache_init(&w->gt_cache, w->gt_table, w->gt_n);
    cache_init(&w->pred_cache, w->pred_table, w->pred_n);
    w->cell = 0;            /* an empty run before pixel 0 */
    w->cell_unknown = 0;
    w->start = 0;
    w->runs = 0;
    w->unknown = 0;
    run_at(w, 0);
    for (Py_ssize_t i = 1; i < n; i += CHUNK) {
        Py_ssize_t end = n - i > CHUNK ? i + CHUNK : n, cnt;
        switch (isa) {
#ifdef SEG2_AVX
        case ISA_AVX512:
            cnt = starts_avx512(w->g, w->p, i, end, pos);
            break;
        case ISA_AVX2:
            cnt = starts_avx2(w->g, w->p, i, end, pos);
            break;
#endif
#ifdef SEG2_SSE2
        case ISA_SSE2:
            cnt = starts_sse2(w->g, w->p, i, end, pos);
            break;
#endif
        default:
            cnt = starts_scalar(w->g, w->p, i, i, end, pos, 0);
        }
        for (Py_ssize_t r = 0; r < cnt; r++)
            run_at(w, i + pos[r]);
    }
    int64_t len = (int64_t)(n - w->start); /* the last run */
    w->counts[w->cell] += len;
    w->unknown += len & w->cell_unknown;
}

/* ---------------------------------------------------------------- Python functions */

/* A C-contiguous buffer with `itemsize`-byte items; `what` names it in errors. */
static int get_buffer(PyObject *obj, Py_buffer *view, Py_ssize_t itemsize, int writable,
                      const char *what) {
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0)
        return -1;
    if (view->itemsize != itemsize) {
        PyErr_Format(PyExc_TypeError, "pq_overlaps: %s must have %zd-byte items, got %zd",
                     what, itemsize, view->itemsize);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(pq_overlaps_doc,
"pq_overlaps(gt_words, pred_words, gt_table, pred_table, counts, isa=None)\n"
"    -> (runs, unknown_pixels)\n\n"
"Fills counts (int64, (len(gt_table) + 1) * (len(pred_table) + 1) items; zeroed first) with\n"
"the pixels of each (GT rank, predicted rank) cell of one image. gt_words, pred_words: its\n"
"pixels, uint32 of equal length; tables: sorted uint32 [id - 1, id] pairs, at least one.\n"
"isa: 'avx512', 'avx2', 'sse2' or 'scalar' (tests); default: the best here (pq_isa()).\n"
"Returns the number of runs and of pixels whose GT or predicted id is in no table.");

static PyObject *pq_overlaps(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"gt_words", "pred_words", "gt_table", "pred_table", "counts",
                             "isa", NULL};
    static const Py_ssize_t sizes[5] = {4, 4, 4, 4, 8};
    PyObject *objs[5];
    const char *isa_name = NULL;
    Py_buffer v[5];
    int got = 0;
    PyObject *result = NULL;
    Isa isa = best_isa();
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOO|z:pq_overlaps", kwlist, &objs[0],
                                     &objs[1], &objs[2], &objs[3], &objs[4], &isa_name))
        return NULL;
    if (isa_name != NULL) {
        int found = -1;
        for (int k = 0; k <= (int)isa; k++)
            if (compiled((Isa)k) && strcmp(isa_name, isa_names[k]) == 0)
                found = k;
        if (found < 0) {
            PyErr_Format(PyExc_ValueError, "pq_overlaps: isa '%s' is not available here (best: %s)",
                         isa_name, isa_names[isa]);
            return NULL;
        }
        isa = (Isa)found;
    }
    for (; got < 5; got++)
        if (get_buffer(objs[got], &v[got], sizes[got], got == 4, kwlist[got]) < 0)
            goto done;
    Py_ssize_t n = v[0].len / 4, gt_n = v[2].len / 4, pred_n = v[3].len / 4;
    Py_ssize_t width = pred_n + 1, cells = (gt_n + 1) * width;
    if (v[1].len / 4 != n) {
        PyErr_Format(PyExc_ValueError, "pq_overlaps: %zd GT pixels but %zd predicted", n,
                     v[1].len / 4);
        goto done;
    }
    if (gt_n < 1 || pred_n < 1 || v[4].len / 8 != cells) {
        PyErr_Format(PyExc_ValueError,
                     "pq_overlaps: tables of %zd and %zd entries need %zd counts, got %zd",
                     gt_n, pred_n, cells, v[4].len / 8);
        goto done;
    }
    Walk w;
    w.g = (const uint32_t *)v[0].buf;
    w.p = (const uint32_t *)v[1].buf;
    w.gt_table = (const uint32_t *)v[2].buf;
    w.pred_table = (const uint32_t *)v[3].buf;
    w.gt_n = gt_n;
    w.pred_n = pred_n;
    w.width = width;
    w.counts = (int64_t *)v[4].buf;
    w.runs = 0;
    w.unknown = 0;
    memset(w.counts, 0, (size_t)cells * sizeof(int64_t));
    if (n > 0) {
        Py_BEGIN_ALLOW_THREADS
        walk(&w, n, isa);
        Py_END_ALLOW_THREADS
    }
    result = Py_BuildValue("(nL)", w.runs, (long long)w.unknown);
done:
    while (got-- > 0)
        PyBuffer_Release(&v[got]);
    return result;
}

static PyObject *pq_isa(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    return PyUnicode_FromString(isa_names[best_isa()]);
}

static PyMethodDef methods[] = {
    {"pq_overlaps", (PyCFunction)(void (*)(void))pq_overlaps, METH_VARARGS | METH_KEYWORDS,
     pq_overlaps_doc},
    {"pq_isa", pq_isa, METH_NOARGS,
     "The instruction set pq_overlaps uses by default here: 'avx512', 'avx2', 'sse2' or 'scalar'."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "seg2._C",
    "seg2's compiled kernels. Optional: without them seg2 runs its numpy paths (same results).",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__C(void) {
    init_tables();
    return PyModule_Create(&module);
}
