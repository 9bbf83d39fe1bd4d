"""Evaluators benchmark, PQ part: figures equal to the reference algorithm and the
decode-only floor row (timings are not asserted: benchmarks, not tests, hold speed targets)."""

import unittest

from benchmarks.evaluators import format_benchmark_table, run_evaluator_benchmark
from seg2_testing import tiny_synthetic_root


class TestPanopticBenchmark(unittest.TestCase):
    def test_rows(self):
        rows = run_evaluator_benchmark(tiny_synthetic_root(), repeats=1, include=["panoptic"])
        by_peer = {r["peer"]: r for r in rows}
        ref = by_peer["panopticapi algorithm (cityscapesscripts)"]
        self.assertTrue(ref["identical"])
        floor = by_peer["decode only (floor)"]
        self.assertEqual(floor["images"], ref["images"])
        self.assertGreater(floor["peer_s"], 0)
        self.assertAlmostEqual(floor["speedup"], floor["peer_s"] / floor["seg2_s"])
        self.assertRegex(floor["note"], r"decode [0-9.]+ ms .*, overlaps and matching [0-9.]+ ms")
        self.assertIn("decode only (floor)", format_benchmark_table(rows))
