"""The load benchmark on a small set: one pass through every evaluator gives exactly the
figures of chunked evaluation (summed confusion matrices and PQ statistics; COCO re-scored
by pycocotools)."""

import unittest

from benchmarks.load import format_load_table, run_load_benchmark


class TestLoadBenchmark(unittest.TestCase):
    def test_chunk_sums_equal_one_pass(self):
        res = run_load_benchmark(num_images=24, base=5, size=64, chunk=7, seed=1)
        self.assertEqual(
            [r["evaluator"] for r in res["rows"]],
            ["Seg2SemSegEvaluator", "Seg2COCOEvaluator", "Seg2PanopticEvaluator"],
        )
        for row in res["rows"]:
            self.assertLess(row["max_abs_diff"], 1e-9, row)
            self.assertTrue(0 < row["value"] < 100, row)  # perturbed predictions: not trivial
        self.assertEqual(len(res["rss_mb"]), 24 // 7 + 1 + 2)
        self.assertIn("chunks of 7", format_load_table(res))


if __name__ == "__main__":
    unittest.main()
