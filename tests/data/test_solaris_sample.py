"""solaris' real COCO export, registered as solaris_buildings_{train,val}: loaded against
pycocotools on the raw file, images against tifffile + the documented min-max rule, and
scored by Seg2COCOEvaluator (perfect masks 100 segm AP, no detections 0 AP)."""

import importlib.util
import json
import os
import tempfile
import unittest

import numpy as np
import pycocotools.mask as mask_util
import torch
from detectron2.data import DatasetCatalog
from detectron2.structures import Boxes, BoxMode, Instances

from seg2.data.solaris_sample import prepare_solaris_sample, register_solaris_sample, solaris_files
from seg2.data.validate import last_report
from seg2.evaluation.coco_evaluator import Seg2COCOEvaluator
from seg2.io import read_image


@unittest.skipUnless(importlib.util.find_spec("solaris"), "pip install --no-deps solaris==0.4.0")
class TestSolarisSample(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.cache = tempfile.mkdtemp(prefix="seg2-solaris-")
        cls.prefix = f"solaris_test_{os.getpid()}"
        register_solaris_sample(cls.cache, prefix=cls.prefix)
        json_file, cls.image_root = solaris_files()
        cls.raw = json.load(open(json_file))
        cls.dicts = {s: DatasetCatalog.get(f"{cls.prefix}_{s}") for s in ("train", "val")}

    def test_split_and_annotations_match_pycocotools(self):
        ids = {s: {d["image_id"] for d in self.dicts[s]} for s in self.dicts}
        self.assertEqual(ids["val"], {im["id"] for im in self.raw["images"] if im["id"] % 5 == 0})
        self.assertEqual(ids["train"] | ids["val"], {im["id"] for im in self.raw["images"]})
        self.assertFalse(ids["train"] & ids["val"])
        raw_by_image = {}
        for a in self.raw["annotations"]:
            raw_by_image.setdefault(a["image_id"], []).append(a)
        for d in self.dicts["train"] + self.dicts["val"]:
            raw = sorted(raw_by_image.get(d["image_id"], []), key=lambda a: a["bbox"])
            got = sorted(d["annotations"], key=lambda a: a["bbox"])
            self.assertEqual(len(got), len(raw))
            for g, r in zip(got, raw):
                self.assertEqual(g["category_id"], 0)
                self.assertEqual(g["bbox_mode"], BoxMode.XYWH_ABS)
                np.testing.assert_allclose(g["bbox"], r["bbox"])
                # pycocotools on the raw flat list (one polygon) vs what the loader made of it
                ref = mask_util.decode(mask_util.frPyObjects([r["segmentation"]], 90, 90)).max(
                    axis=2
                )
                out = mask_util.decode(
                    mask_util.merge(mask_util.frPyObjects(g["segmentation"], 90, 90))
                )
                np.testing.assert_array_equal(out, ref)
        report = last_report(f"{self.prefix}_val")
        self.assertTrue(report.ok)
        self.assertEqual(
            len(
                report.notes[
                    "flat polygon list (one list of numbers instead of a list of polygons) read as one polygon"
                ]
            ),
            25,
        )

    def test_16_bit_tiles_scaled_by_min_max(self):
        import tifffile

        d = self.dicts["val"][0]
        raw = tifffile.imread(d["file_name"]).astype(np.float64)
        expected = np.round((raw - raw.min()) * 255 / (raw.max() - raw.min())).astype(np.uint8)
        got = read_image(d["file_name"], "BGR")
        self.assertEqual(got.shape, (90, 90, 3))
        for c in range(3):
            np.testing.assert_array_equal(got[:, :, c], expected)

    def evaluate(self, perfect: bool):
        name = f"{self.prefix}_val"
        prepare_solaris_sample(self.cache)
        ev = Seg2COCOEvaluator(name, tasks=("segm",), distributed=False)
        ev.reset()
        for d in self.dicts["val"]:
            inst = Instances((90, 90))
            masks = (
                [
                    mask_util.decode(
                        mask_util.merge(mask_util.frPyObjects(a["segmentation"], 90, 90))
                    ).astype(bool)
                    for a in d["annotations"]
                ]
                if perfect
                else []
            )
            n = len(masks)
            inst.pred_masks = (
                torch.from_numpy(np.stack(masks))
                if n
                else torch.zeros((0, 90, 90), dtype=torch.bool)
            )
            inst.pred_boxes = Boxes(
                torch.tensor(
                    [
                        BoxMode.convert(a["bbox"], BoxMode.XYWH_ABS, BoxMode.XYXY_ABS)
                        for a in d["annotations"]
                    ],
                    dtype=torch.float32,
                ).reshape(-1, 4)
                if n
                else torch.zeros(0, 4)
            )
            inst.scores = torch.ones(n)
            inst.pred_classes = torch.zeros(n, dtype=torch.int64)
            ev.process([{"image_id": d["image_id"]}], [{"instances": inst}])
        return ev.evaluate()["segm"]

    def test_evaluator_perfect_and_empty(self):
        self.assertAlmostEqual(self.evaluate(perfect=True)["AP"], 100.0, places=6)
        self.assertEqual(self.evaluate(perfect=False)["AP"], 0.0)


if __name__ == "__main__":
    unittest.main()
