"""Tests of ``seg2._C.pq_overlaps``, the compiled pass behind the PQ evaluator, against a
per-pixel reference written here: every pixel's ranks counted as "table entries below its
word", added one pixel at a time (no runs, no search). Every instruction set this machine has
is checked, on sizes around the vector width and the kernel's chunk of 1024 pixels."""

import os
import shutil
import sysconfig
import unittest

import numpy as np

try:
    from seg2 import _C
except ImportError:  # seg2 installed without a C compiler: the numpy path is tested elsewhere
    _C = None

HIGH = np.uint32(0xFF000000)


def table(ids):
    """[id - 1, id] per id (sorted), as PQBatch builds it, in words."""
    ids = np.sort(np.asarray(ids, np.uint32) | HIGH)
    return np.stack([ids - 1, ids], 1).reshape(-1).astype(np.uint32)


def reference(g, p, gt_table, pred_table):
    """Counts, runs and unknown pixels, one pixel at a time."""
    width = len(pred_table) + 1
    counts = np.zeros((len(gt_table) + 1) * width, np.int64)
    rg = (gt_table[None, :] < g[:, None]).sum(1)
    rp = (pred_table[None, :] < p[:, None]).sum(1)
    np.add.at(counts, rg * width + rp, 1)
    runs = int(g.size > 0) + int(((g[1:] != g[:-1]) | (p[1:] != p[:-1])).sum())
    unknown = int(((rg % 2 == 0) | (rp % 2 == 0)).sum())
    return counts, runs, unknown


def isas():
    order = ["scalar", "sse2", "avx2", "avx512"]
    best = _C.pq_isa()
    return [i for i in order[: order.index(best) + 1] if _try(i)]


def _try(isa):
    try:
        _C.pq_overlaps(*(np.zeros(1, np.uint32),) * 2, table([1]), table([1]),
                       np.zeros(9, np.int64), isa=isa)
        return True
    except ValueError:  # not compiled in this build
        return False


@unittest.skipIf(_C is None, "seg2._C was not built (no C compiler at install)")
class TestPQOverlaps(unittest.TestCase):
    def check(self, g, p, gt_table, pred_table):
        expected = reference(g, p, gt_table, pred_table)
        for isa in isas():
            counts = np.full(len(expected[0]), 7, np.int64)  # zeroed by the kernel
            runs, unknown = _C.pq_overlaps(g, p, gt_table, pred_table, counts, isa=isa)
            np.testing.assert_array_equal(counts, expected[0], err_msg=isa)
            self.assertEqual((runs, unknown), expected[1:], msg=isa)

    def test_sizes_around_vectors_and_chunks(self):
        rng = np.random.default_rng(0)
        ids = rng.choice(np.arange(1, 1 << 24), 12, replace=False)
        gt_table, pred_table = table(np.r_[0, ids[:6]]), table(np.r_[0, ids[4:10]])
        for n in (1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 1023, 1024, 1025, 1026, 1033, 2049, 5000):
            # Runs of random lengths of random ids (some in no table: ids[10:]).
            lengths = rng.integers(1, 40, n)
            g = np.repeat(rng.choice(np.r_[0, ids], n), lengths)[:n] | HIGH
            p = np.repeat(rng.choice(np.r_[0, ids], n), lengths[::-1])[:n] | HIGH
            self.check(g.astype(np.uint32), p.astype(np.uint32), gt_table, pred_table)

    def test_every_pixel_a_run(self):
        # The most run starts a chunk can have: every offset is stored.
        rng = np.random.default_rng(1)
        n = 3 * 1024 + 5
        g = (np.arange(n) % 2 + 1).astype(np.uint32) | HIGH
        p = rng.integers(1, 4, n).astype(np.uint32) | HIGH
        self.check(g, p, table([0, 1, 2]), table([0, 1, 2, 3]))

    def test_many_ids_share_the_rank_cache(self):
        # 3000 ids in 256 cache slots: slots are taken over again and again, listed ids and
        # unlisted ones alternate in them.
        rng = np.random.default_rng(2)
        ids = rng.choice(np.arange(1, 1 << 24), 3000, replace=False)
        g = np.repeat(rng.choice(ids, 2000), 3).astype(np.uint32) | HIGH
        p = np.repeat(rng.choice(ids, 1500), 4).astype(np.uint32) | HIGH
        self.check(g, p, table(np.r_[0, ids[:2000]]), table(np.r_[0, ids[1000:]]))

    def test_one_run_and_empty_image(self):
        g = np.full(4099, 5, np.uint32) | HIGH
        self.check(g, g.copy(), table([0, 5]), table([0, 5]))
        empty = np.zeros(0, np.uint32)
        self.check(empty, empty, table([0]), table([0]))

    def test_words_below_above_and_between_entries(self):
        # Words at and beside every entry, and 0 / 0xFFFFFFFF: ranks at both ends of a table.
        t = table([0, 10, 11, 300, 1 << 23])
        probes = np.unique(np.concatenate([t - 1, t, t + 1, [0, 0xFFFFFFFF]]).astype(np.uint32))
        g = np.repeat(probes, 3)
        p = np.roll(g, 5)
        self.check(g, p, t, t)

    def test_bad_arguments_are_refused(self):
        w = np.zeros(16, np.uint32)
        t = table([0])
        with self.assertRaisesRegex(ValueError, "need 9 counts, got 8"):
            _C.pq_overlaps(w, w, t, t, np.zeros(8, np.int64))
        with self.assertRaisesRegex(ValueError, "16 GT pixels but 15 predicted"):
            _C.pq_overlaps(w, w[:15], t, t, np.zeros(9, np.int64))
        with self.assertRaisesRegex(TypeError, "gt_words must have 4-byte items, got 8"):
            _C.pq_overlaps(w.astype(np.int64), w, t, t, np.zeros(9, np.int64))
        with self.assertRaisesRegex(TypeError, "counts must have 8-byte items"):
            _C.pq_overlaps(w, w, t, t, np.zeros(9, np.int32))
        with self.assertRaisesRegex((BufferError, ValueError), "not C-contiguous"):
            _C.pq_overlaps(w[::2], w[::2], t, t, np.zeros(9, np.int64))
        counts = np.zeros(9, np.int64)
        counts.flags.writeable = False
        with self.assertRaises((BufferError, ValueError)):
            _C.pq_overlaps(w, w, t, t, counts)
        with self.assertRaisesRegex(ValueError, "isa 'neon' is not available"):
            _C.pq_overlaps(w, w, t, t, np.zeros(9, np.int64), isa="neon")

    def test_the_evaluator_uses_it(self):
        from seg2.evaluation.pq_overlaps import pq_engine

        self.assertEqual(pq_engine(), f"C ({_C.pq_isa()})")


class TestBuilt(unittest.TestCase):
    def test_built_where_a_compiler_is(self):
        """``make setup`` builds seg2._C when the C compiler Python was built with and
        Python's headers are here; the fallback must not hide a broken build."""
        cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
        if shutil.which(cc) is None:
            self.skipTest(f"no C compiler ({cc}): seg2 runs its numpy path")
        headers = os.path.join(sysconfig.get_paths()["include"], "Python.h")
        if not os.path.exists(headers):
            self.skipTest(f"no {headers}: seg2 runs its numpy path")
        self.assertIsNotNone(_C, f"{cc} and Python.h are here but seg2._C was not built")


if __name__ == "__main__":
    unittest.main()
