"""Semantic metrics: identical to Detectron2's SemSegEvaluator on the shared keys, hand-worked
Dice/precision/recall/F1/fwIoU, confusion CSV/PNG, and the distributed merge."""

import csv
import math
import os
import tempfile
import unittest
from unittest import mock

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import SemSegEvaluator
from PIL import Image

from seg2.evaluation import semantic as sem_module
from seg2.evaluation import semantic_evaluator as evaluator_module
from seg2.evaluation.semantic import (
    ConfusionMatrix,
    evaluate_semantic_folders,
    semantic_metrics,
)
from seg2.evaluation.semantic_evaluator import Seg2SemSegEvaluator
from seg2.io import InputError

NAMES = ["a", "b", "c", "d", "e"]
SHARED = ["mIoU", "fwIoU", "mACC", "pACC"] + [f"{k}-{n}" for k in ("IoU", "ACC") for n in NAMES]


def _register(name, records, names=NAMES):
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(
        stuff_classes=list(names), ignore_label=255, evaluator_type="sem_seg"
    )


def _same(testcase, a, b, key):
    if math.isnan(a) or math.isnan(b):
        testcase.assertTrue(math.isnan(a) and math.isnan(b), f"{key}: {a} vs {b}")
    else:
        testcase.assertEqual(a, b, key)


class TestAgainstDetectron2(unittest.TestCase):
    """Random logits on 4 images of different sizes, with ignore pixels and class 'd'
    absent from every ground truth (but predicted)."""

    @classmethod
    def setUpClass(cls):
        rng = np.random.default_rng(0)
        cls.tmp = tempfile.mkdtemp(prefix="seg2-sem-")
        cls.records, cls.outputs = [], []
        for i, (h, w) in enumerate([(17, 23), (32, 32), (9, 40), (25, 11)]):
            gt = rng.choice([0, 1, 2, 4], size=(h, w), p=[0.4, 0.3, 0.2, 0.1]).astype(np.uint8)
            gt[rng.random((h, w)) < 0.15] = 255
            path = os.path.join(cls.tmp, f"{i}.png")
            Image.fromarray(gt).save(path)
            cls.records.append(
                {"file_name": f"img{i}.jpg", "sem_seg_file_name": path, "height": h, "width": w}
            )
            cls.outputs.append(
                {"sem_seg": torch.from_numpy(rng.normal(size=(5, h, w)).astype(np.float32))}
            )
        cls.name = f"seg2_test_sem_{id(cls)}"
        _register(cls.name, cls.records)

    def _run(self, evaluator):
        evaluator.reset()
        for r, o in zip(self.records, self.outputs):
            evaluator.process([r], [o])
        return evaluator.evaluate()["sem_seg"]

    def test_shared_keys_identical(self):
        ref = self._run(SemSegEvaluator(self.name, distributed=False))
        ours = self._run(Seg2SemSegEvaluator(self.name, distributed=False))
        self.assertTrue(math.isnan(ref["IoU-d"]))  # the absent class is exercised
        for key in SHARED:
            _same(self, ours[key], ref[key], key)
        self.assertEqual(
            [k for k in ours if k in SHARED], [k for k in ref if k in SHARED]
        )  # same order

    def test_two_streams_merge_like_distributed(self):
        """Two ranks' matrices summed by the gather give the single-process figures."""
        single = self._run(Seg2SemSegEvaluator(self.name, distributed=False))
        halves = []
        for part in (slice(0, 2), slice(2, 4)):
            ev = Seg2SemSegEvaluator(self.name, distributed=True)
            ev.reset()
            ev.process(self.records[part], self.outputs[part])
            halves.append(ev._conf.matrix.copy())
        ev = Seg2SemSegEvaluator(self.name, distributed=True)
        ev.reset()
        with mock.patch.object(evaluator_module, "all_gather", return_value=halves):
            merged = ev.evaluate()["sem_seg"]
        for key in single:
            _same(self, merged[key], single[key], key)
        # A rank other than the main one reports nothing.
        with mock.patch.object(evaluator_module, "all_gather", return_value=halves), mock.patch.object(
            evaluator_module, "is_main_process", return_value=False
        ):
            self.assertIsNone(ev.evaluate())

    @unittest.skipUnless(torch.cuda.is_available(), "needs CUDA")
    def test_cuda_outputs(self):
        ref = self._run(Seg2SemSegEvaluator(self.name, distributed=False))
        ev = Seg2SemSegEvaluator(self.name, distributed=False)
        ev.reset()
        for r, o in zip(self.records, self.outputs):
            ev.process([r], [{"sem_seg": o["sem_seg"].cuda()}])
        ours = ev.evaluate()["sem_seg"]
        for key in ref:
            _same(self, ours[key], ref[key], key)


class TestHandWorked(unittest.TestCase):
    def _metrics(self, gt, pred, names):
        conf = ConfusionMatrix(len(names), 255)
        conf.update(np.array(pred, np.uint8).reshape(1, -1), np.array(gt, np.uint8).reshape(1, -1))
        return conf, semantic_metrics(conf.matrix, names)

    def test_3x3(self):
        # pairs (gt, pred): (0,0)x3 (0,1) (1,1)x3 (2,2) (2,0) and one ignored pixel
        # conf rows gt: [3 1 0] [0 3 0] [1 0 1]; pos_gt 4 3 2; pos_pred 4 4 1; tp 3 3 1
        conf, m = self._metrics(
            [0, 0, 0, 0, 1, 1, 1, 2, 2, 255], [0, 0, 0, 1, 1, 1, 1, 2, 0, 2], "xyz"
        )
        np.testing.assert_array_equal(conf.matrix[:3, :3], [[3, 1, 0], [0, 3, 0], [1, 0, 1]])
        self.assertEqual(conf.matrix[3, 2], 1)  # the ignored pixel, kept out of every metric
        expect = {
            "IoU-x": 3 / 5,
            "IoU-y": 3 / 4,
            "IoU-z": 1 / 2,
            "mIoU": (3 / 5 + 3 / 4 + 1 / 2) / 3,
            "fwIoU": (4 * 3 / 5 + 3 * 3 / 4 + 2 * 1 / 2) / 9,
            "pACC": 7 / 9,
            "mACC": (3 / 4 + 1 + 1 / 2) / 3,
            "Dice-x": 6 / 8,
            "Dice-y": 6 / 7,
            "Dice-z": 2 / 3,
            "mDice": (6 / 8 + 6 / 7 + 2 / 3) / 3,
            "Precision-x": 3 / 4,
            "Precision-y": 3 / 4,
            "Precision-z": 1.0,
            "Recall-x": 3 / 4,
            "Recall-y": 1.0,
            "Recall-z": 1 / 2,
            "F1-x": 3 / 4,
            "F1-y": 6 / 7,
            "F1-z": 2 / 3,
            "mPrecision": 2.5 / 3,
            "mRecall": 2.25 / 3,
            "mF1": (6 / 8 + 6 / 7 + 2 / 3) / 3,
        }
        for key, value in expect.items():
            self.assertAlmostEqual(m[key], 100 * value, places=10, msg=key)

    def test_absent_and_never_predicted(self):
        # class z absent from gt but predicted once: NaN and out of the means
        _, m = self._metrics([0, 0, 1, 1], [0, 2, 1, 1], "xyz")
        self.assertTrue(
            all(
                math.isnan(m[f"{k}-z"]) for k in ("IoU", "ACC", "Dice", "Precision", "Recall", "F1")
            )
        )
        self.assertAlmostEqual(m["mIoU"], 100 * (1 / 2 + 1) / 2)
        self.assertAlmostEqual(m["mDice"], 100 * (2 / 3 + 1) / 2)
        self.assertAlmostEqual(m["fwIoU"], 100 * 0.75)
        self.assertAlmostEqual(m["Precision-x"], 100.0)
        # class y present but never predicted: precision, recall, F1 and IoU are 0
        _, m = self._metrics([0, 0, 1, 1], [0, 0, 0, 0], "xy")
        for key in ("IoU-y", "Precision-y", "Recall-y", "F1-y", "Dice-y"):
            self.assertEqual(m[key], 0.0, key)
        self.assertAlmostEqual(m["Precision-x"], 50.0)

    def test_void_prediction_is_a_miss(self):
        # pred 255 = no prediction: a false negative of x, no false positive anywhere
        _, m = self._metrics([0, 0, 1, 1], [0, 255, 1, 1], "xy")
        self.assertAlmostEqual(m["IoU-x"], 50.0)
        self.assertAlmostEqual(m["Precision-x"], 100.0)
        self.assertAlmostEqual(m["IoU-y"], 100.0)

    def test_bad_labels_name_the_file(self):
        conf = ConfusionMatrix(3, 255)
        with self.assertRaisesRegex(InputError, r"gt\.png.*\[7\]"):
            conf.update(np.zeros((2, 2), np.uint8), np.full((2, 2), 7, np.uint8), "gt.png", "p.png")
        with self.assertRaisesRegex(InputError, r"p\.png.*\(2, 3\)"):
            conf.update(np.zeros((2, 3), np.uint8), np.zeros((2, 2), np.uint8), "gt.png", "p.png")
        self.assertEqual(conf.matrix.sum(), 0)


class TestArgmax(unittest.TestCase):
    def test_equals_torch_argmax_with_ties(self):
        g = torch.Generator().manual_seed(0)
        for k in (1, 2, 7, 300):
            scores = torch.randint(0, 3, (k, 9, 13), generator=g).float()  # many ties
            expect = scores.argmax(dim=0)
            dtype = torch.uint8 if k < 256 else torch.int32
            self.assertTrue(
                torch.equal(sem_module.argmax_channels(scores, dtype).long(), expect), k
            )


class TestOutputs(unittest.TestCase):
    def test_csv_png_and_folders(self):
        tmp = tempfile.mkdtemp(prefix="seg2-semout-")
        gt_dir, pred_dir, out = (os.path.join(tmp, d) for d in ("gt", "pred", "out"))
        os.makedirs(gt_dir), os.makedirs(pred_dir)
        Image.fromarray(np.array([[0, 0, 0, 0, 1], [1, 1, 2, 2, 255]], np.uint8)).save(
            os.path.join(gt_dir, "i.png")
        )
        Image.fromarray(np.array([[0, 0, 0, 1, 1], [1, 1, 2, 0, 2]], np.uint8)).save(
            os.path.join(pred_dir, "i.png")
        )
        res = evaluate_semantic_folders(gt_dir, pred_dir, 3, 255, ["x", "y", "z"], out)["sem_seg"]
        self.assertAlmostEqual(res["IoU-y"], 75.0)
        with open(os.path.join(out, "sem_seg_confusion.csv")) as f:
            rows = list(csv.reader(f))
        self.assertEqual(rows[0], ["gt\\pred", "x", "y", "z", "ignore"])
        self.assertEqual([r[0] for r in rows[1:]], ["x", "y", "z", "ignore"])
        table = np.array([[int(v) for v in r[1:]] for r in rows[1:]])
        np.testing.assert_array_equal(
            table, [[3, 1, 0, 0], [0, 3, 0, 0], [1, 0, 1, 0], [0, 0, 1, 0]]
        )
        png = Image.open(os.path.join(out, "sem_seg_confusion.png"))
        self.assertGreater(min(png.size), 200)
        self.assertGreater(np.asarray(png.convert("L")).std(), 1.0)  # not a blank canvas


if __name__ == "__main__":
    unittest.main()
