"""Semantic-heads benchmark: its two home-made metrics on hand-worked maps, and a tiny
end-to-end run through tools/benchmark.py."""

import importlib.util
import json
import os
import tempfile
import unittest

import numpy as np

from benchmarks.semantic_heads import (
    BoundaryFScore,
    benchmark_cfg,
    class_boundary,
    touching_separation,
)
from seg2_testing import REPO_ROOT, tiny_synthetic_root


def load_cli():
    spec = importlib.util.spec_from_file_location(
        "benchmark_cli", REPO_ROOT / "tools" / "benchmark.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def square(size, top, left, side):
    m = np.zeros((size, size), bool)
    m[top : top + side, left : left + side] = True
    return m


class TestClassBoundary(unittest.TestCase):
    def test_square_ring_and_image_border(self):
        m = square(8, 2, 2, 4)
        b = class_boundary(m)
        self.assertEqual(b.sum(), 12)  # 4x4 square: 16 pixels minus the 2x2 interior
        self.assertFalse(b[3:5, 3:5].any())
        # a mask filling the image has no boundary: the border does not count
        self.assertFalse(class_boundary(np.ones((5, 5), bool)).any())


class TestBoundaryFScore(unittest.TestCase):
    def test_perfect_prediction(self):
        gt = square(20, 5, 5, 8).astype(np.uint8)
        bf = BoundaryFScore(2)
        self.assertEqual(bf.update(gt.copy(), gt), {0: 1.0, 1: 1.0})
        self.assertEqual(bf.evaluate()["BF"], 100.0)

    def test_shift_within_and_beyond_tolerance(self):
        gt = square(30, 10, 10, 8).astype(np.uint8)
        # shifted by 2 columns: every boundary pixel is within 2 px of the other boundary
        self.assertEqual(BoundaryFScore(2).update(np.roll(gt, 2, axis=1), gt), {0: 1.0, 1: 1.0})
        # shifted by 3 columns, hand count on the square's ring (28 px): GT ring rows 10/17 x
        # columns 10..17 plus columns 10/17 x rows 11..16; predicted ring = same, columns 13..20.
        # Predicted pixels within 2 px of the GT ring: top and bottom rows at x = 13..19
        # (x = 18, 19 are 1, 2 px from the GT corner) -> 14; left column x = 13 at y = 11, 12,
        # 15, 16 (1-2 px from the GT top/bottom rows; y = 13, 14 are 3 px from everything)
        # -> 4; right column x = 20 is 3 px from x = 17 -> 0. P = 18/28 and, the layout being
        # mirror-symmetric, R = 18/28, so F = 9/14.
        scores = BoundaryFScore(2).update(np.roll(gt, 3, axis=1), gt)
        self.assertAlmostEqual(scores[1], 9 / 14)

    def test_missing_class_scores_zero_and_ignore_border_is_dropped(self):
        gt = np.zeros((20, 20), np.uint8)
        gt[5:12, 5:12] = 1
        pred = np.zeros_like(gt)
        bf = BoundaryFScore(2)
        self.assertEqual(bf.update(pred, gt), {0: 0.0, 1: 0.0})  # no predicted boundary at all
        # the same square entirely next to ignored pixels: its boundary is dropped, nothing left
        gt_void = gt.copy()
        gt_void[4:13, 4:13][~np.pad(np.ones((7, 7), bool), 1)] = 255
        self.assertEqual(BoundaryFScore(2).update(pred, gt_void), {})

    def test_per_class_then_mean(self):
        bf = BoundaryFScore(3)
        bf.scores = {0: [1.0, 0.0], 2: [0.5]}
        out = bf.evaluate()
        self.assertAlmostEqual(out["BF-0"], 50.0)
        self.assertAlmostEqual(out["BF"], 50.0)


class TestTouchingSeparation(unittest.TestCase):
    def setUp(self):
        # two same-class 4x4 squares sharing an edge (ids 1, 2), a third class-0 square far
        # away (id 3), and a touching square of another class (id 4, not counted).
        self.pan = np.zeros((16, 16), np.int64)
        self.pan[2:6, 2:6] = 1
        self.pan[2:6, 6:10] = 2
        self.pan[11:15, 11:15] = 3
        self.pan[6:10, 2:6] = 4
        self.segments = [
            {"id": 1, "category_id": 0, "isthing": True},
            {"id": 2, "category_id": 0, "isthing": True},
            {"id": 3, "category_id": 0, "isthing": True},
            {"id": 4, "category_id": 1, "isthing": True},
        ]
        self.sem = np.full((16, 16), 5)
        for s in self.segments:
            self.sem[self.pan == s["id"]] = s["category_id"]

    def test_ground_truth_semantic_map_merges_touching_instances(self):
        self.assertEqual(touching_separation(self.sem, self.pan, self.segments), (2, 0))

    def test_a_predicted_gap_separates_them(self):
        pred = self.sem.copy()
        pred[2:6, 6] = 5  # one background column on instance 2's first column
        self.assertEqual(touching_separation(pred, self.pan, self.segments), (2, 2))

    def test_a_missed_instance_is_not_separated(self):
        pred = self.sem.copy()
        pred[2:6, 6:10] = 5  # instance 2 not predicted: 1 is alone, 2 is not recovered
        self.assertEqual(touching_separation(pred, self.pan, self.segments), (2, 1))

    def test_crowd_is_not_an_instance(self):
        segments = [dict(s, iscrowd=1) if s["id"] == 2 else s for s in self.segments]
        self.assertEqual(touching_separation(self.sem, self.pan, segments), (0, 0))


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
