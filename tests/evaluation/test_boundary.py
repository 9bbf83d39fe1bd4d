"""Boundary F-score and instance separation (seg2.evaluation.boundary) on hand-worked maps,
and Seg2BoundaryEvaluator through train_net's evaluator builder on the synthetic data."""
import unittest

import numpy as np
import torch
from detectron2.data import DatasetCatalog

from seg2.data.builtin import register_synthetic
from seg2.evaluation.boundary import BoundaryFScore, class_boundary, instance_separation
from seg2.evaluation.build import build_evaluators
from seg2_testing import get_seg2_cfg, tiny_synthetic_root


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

    def sep(self, pred, segments=None):
        segments = self.segments if segments is None else segments
        classes = {s["id"]: s["category_id"] for s in segments if not s.get("iscrowd", 0)}
        c = instance_separation(pred, self.pan, classes)
        return c["touching"], c["touching_separated"]

    def test_ground_truth_semantic_map_merges_touching_instances(self):
        self.assertEqual(self.sep(self.sem), (2, 0))

    def test_a_predicted_gap_separates_them(self):
        pred = self.sem.copy()
        pred[2:6, 6] = 5  # one background column on instance 2's first column
        self.assertEqual(self.sep(pred), (2, 2))

    def test_a_missed_instance_is_not_separated(self):
        pred = self.sem.copy()
        pred[2:6, 6:10] = 5  # instance 2 not predicted: 1 is alone, 2 is not recovered
        self.assertEqual(self.sep(pred), (2, 1))

    def test_crowd_is_not_an_instance(self):
        segments = [dict(s, iscrowd=1) if s["id"] == 2 else s for s in self.segments]
        self.assertEqual(self.sep(self.sem, segments), (0, 0))


class TestEvaluatorOnSynthetic(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.prefix = "boundary_test"
        register_synthetic(tiny_synthetic_root(), prefix=cls.prefix)

    def _run(self, outputs_of):
        name = f"{self.prefix}_val_panoptic"
        cfg = get_seg2_cfg("Synthetic-PanopticSegmentation/fcn8s_rcnn_R_18_FPN_synthetic.yaml")
        cfg.TEST.SEG2.BOUNDARY_EVAL = True
        evs = build_evaluators(cfg, name)
        boundary = [e for e in evs._evaluators if type(e).__name__ == "Seg2BoundaryEvaluator"]
        self.assertEqual(len(boundary), 1)
        ev = boundary[0]
        ev.reset()
        for d in DatasetCatalog.get(name):
            inp = {"file_name": d["file_name"], "image_id": d["image_id"]}  # as a test mapper gives
            ev.process([inp], [{"sem_seg": outputs_of(d)}])
        return ev.evaluate()["boundary"]

    def test_ground_truth_scores_full_boundaries_and_separates_nothing_touching(self):
        from PIL import Image

        def one_hot(d):
            sem = torch.from_numpy(np.array(Image.open(d["sem_seg_file_name"])).astype(np.int64))
            logits = torch.nn.functional.one_hot(sem.clamp(max=6), 7).permute(2, 0, 1).float()
            logits[:, sem == 255] = 0
            return logits

        res = self._run(one_hot)
        self.assertEqual(res["BF"], 100.0)
        self.assertGreater(res["touching"], 0)  # the generator makes touching pairs
        self.assertEqual(res["touching_separated"], 0)  # a semantic map merges them
        self.assertLess(res["separated"], res["instances"])

    def test_constant_prediction_finds_no_objects(self):
        res = self._run(lambda d: torch.zeros(7, d["height"], d["width"]))
        self.assertEqual((res["separated"], res["object_F1"]), (0, 0.0))


if __name__ == "__main__":
    unittest.main()
