"""Semantic-heads benchmark: its budget and a tiny end-to-end run through tools/benchmark.py
(its metrics are seg2.evaluation.boundary's, tested in tests/evaluation/test_boundary.py)."""

import importlib.util
import json
import os
import tempfile
import unittest

from benchmarks.semantic_heads import benchmark_cfg
from seg2_testing import REPO_ROOT, tiny_synthetic_root


def load_cli():
    spec = importlib.util.spec_from_file_location(
        "benchmark_cli", REPO_ROOT / "tools" / "benchmark.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module





class TestBenchmarkConfig(unittest.TestCase):
    def test_budget_is_applied(self):
        cfg = benchmark_cfg("fcn8s", "/tmp/x", 40, "p", ims_per_batch=2)
        self.assertEqual(cfg.SOLVER.MAX_ITER, 40)
        self.assertEqual(cfg.SOLVER.IMS_PER_BATCH, 2)
        self.assertLessEqual(cfg.SOLVER.WARMUP_ITERS, 4)
        self.assertEqual(cfg.DATASETS.TRAIN, ("p_train_sem",))
        self.assertEqual(cfg.DATASETS.TEST, ())
        with self.assertRaisesRegex(KeyError, "nope"):
            benchmark_cfg("nope", "/tmp/x", 1, "p")


class TestHeadsBenchmarkSmoke(unittest.TestCase):
    def test_two_variants_through_the_cli(self):
        root = tiny_synthetic_root()
        with tempfile.TemporaryDirectory() as out:
            args = (
                f"heads --output {out} --iters 2 --variants fcn8s sliding_window "
                f"--ims-per-batch 2 --eval-images 2 --data-root {root} --no-isolate -- "
                "MODEL.SEG2.SLIDING_WINDOW.WINDOW 9 MODEL.SEG2.SLIDING_WINDOW.CONV_CHANNELS [4,8] "
                "MODEL.SEG2.SLIDING_WINDOW.BATCH 4096"
            )
            rows = load_cli().main(args.split())
            self.assertEqual([r["variant"] for r in rows], ["fcn8s", "sliding_window"])
            for r in rows:
                self.assertEqual(r["eval_images"], 2)
                self.assertTrue(0 <= r["mIoU"] <= 100 and 0 <= r["pACC"] <= 100)
                self.assertGreater(r["s_per_iter"], 0)
                self.assertGreater(r["ms_per_image"], 0)
            with open(os.path.join(out, "heads_benchmark.json")) as f:
                self.assertEqual(len(json.load(f)), 2)
            with open(os.path.join(out, "heads_benchmark.md")) as f:
                table = f.read()
            self.assertIn("| sliding_window", table)
            self.assertIn("BF (2 px)", table)


if __name__ == "__main__":
    unittest.main()
