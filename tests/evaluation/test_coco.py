"""COCO AP: identical to pycocotools' COCOeval run directly on the same files, original
category ids in the written results, and clear errors for results that do not fit the GT."""

import contextlib
import copy
import io
import json
import math
import os
import tempfile
import unittest

import numpy as np
import pycocotools.mask as mask_util
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, Instances
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from seg2.evaluation.coco import (
    evaluate_coco_files,
    evaluate_coco_results,
    load_coco_gt,
)
from seg2.evaluation.coco_evaluator import Seg2COCOEvaluator
from seg2.io import InputError
from seg2_testing import tiny_synthetic_root

METRICS = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
CATS = [{"id": 5, "name": "cat5"}, {"id": 9, "name": "cat9"}, {"id": 17, "name": "cat17"}]


def _rle(mask):
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _disc(h, w, cy, cx, r):
    y, x = np.mgrid[:h, :w]
    return (y - cy) ** 2 + (x - cx) ** 2 <= r * r


def _make_gt(path):
    """4 images, non-contiguous category ids, RLE and polygon masks, one crowd region,
    objects of every COCO size range (the 128 px image holds a 'large' one)."""
    rng = np.random.default_rng(1)
    images, anns = [], []
    sizes = [(48, 64), (40, 40), (64, 56), (128, 128)]
    for img_id, (h, w) in enumerate(sizes, start=10):
        images.append({"id": img_id, "file_name": f"{img_id}.jpg", "height": h, "width": w})
        for _ in range(rng.integers(2, 5)):
            r = int(rng.integers(3, min(h, w) // 4))
            cy, cx = int(rng.integers(r, h - r)), int(rng.integers(r, w - r))
            m = _disc(h, w, cy, cx, r)
            rle = _rle(m)
            anns.append(
                {
                    "image_id": img_id,
                    "category_id": int(rng.choice([5, 9, 17])),
                    "segmentation": rle,
                    "area": float(mask_util.area(rle)),
                    "bbox": list(mask_util.toBbox(rle)),
                    "iscrowd": 0,
                }
            )
    big = _disc(128, 128, 64, 64, 60)
    anns.append(
        {
            "image_id": 13,
            "category_id": 9,
            "segmentation": _rle(big),
            "area": float(big.sum()),
            "bbox": list(mask_util.toBbox(_rle(big))),
            "iscrowd": 0,
        }
    )
    poly = [[2.0, 2.0, 20.0, 2.0, 20.0, 14.0, 2.0, 14.0]]  # a polygon annotation
    anns.append(
        {
            "image_id": 10,
            "category_id": 17,
            "segmentation": poly,
            "area": 216.0,
            "bbox": [2.0, 2.0, 18.0, 12.0],
            "iscrowd": 0,
        }
    )
    crowd = np.zeros((40, 40), bool)
    crowd[25:39, 2:20] = True
    anns.append(
        {
            "image_id": 11,
            "category_id": 5,
            "segmentation": _rle(crowd),
            "area": float(crowd.sum()),
            "bbox": [2.0, 25.0, 18.0, 14.0],
            "iscrowd": 1,
        }
    )
    for i, a in enumerate(anns, start=1):
        a["id"] = i
    gt = {"images": images, "annotations": anns, "categories": CATS}
    with open(path, "w") as f:
        json.dump(gt, f)
    return gt


def _make_results(gt_json, seed=0):
    """Shifted/eroded copies of the GT, duplicates, wrong classes, misses and false positives."""
    rng = np.random.default_rng(seed)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(gt_json)
    cat_ids = sorted(coco.getCatIds())
    res = []
    for ann in coco.dataset["annotations"]:
        if rng.random() < 0.15:
            continue  # a miss
        img = coco.imgs[ann["image_id"]]
        m = coco.annToMask(ann).astype(bool)
        m = np.roll(m, tuple(int(v) for v in rng.integers(-2, 3, size=2)), axis=(0, 1))
        if rng.random() < 0.3:
            m[:, : int(rng.integers(0, img["width"] // 2))] = False
        if not m.any():
            m[0, 0] = True
        rle = _rle(m)
        box = [float(v + rng.normal(0, 1)) for v in mask_util.toBbox(rle)]
        cat = ann["category_id"] if rng.random() > 0.15 else int(rng.choice(cat_ids))
        res.append(
            {
                "image_id": ann["image_id"],
                "category_id": cat,
                "bbox": box,
                "score": float(rng.random()),
                "segmentation": rle,
            }
        )
        if rng.random() < 0.25:
            res.append(dict(res[-1], score=float(rng.random())))  # duplicate
    for img in coco.dataset["images"]:
        for _ in range(int(rng.integers(0, 3))):
            m = _disc(
                img["height"],
                img["width"],
                int(rng.integers(0, img["height"])),
                int(rng.integers(0, img["width"])),
                int(rng.integers(2, 8)),
            )
            rle = _rle(m)
            res.append(
                {
                    "image_id": img["id"],
                    "category_id": int(rng.choice(cat_ids)),
                    "bbox": list(mask_util.toBbox(rle)),
                    "score": float(rng.random()),
                    "segmentation": rle,
                }
            )
    return res


def _pycocotools(gt_json, res_json, iou_type):
    """COCOeval exactly as its README runs it; for segm the boxes are dropped first, so the
    detections' area is their mask area (Detectron2's convention)."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_json)
        with open(res_json) as f:
            dts = json.load(f)
        if iou_type == "segm":
            for d in dts:
                d.pop("bbox", None)
        ev = COCOeval(gt, gt.loadRes(dts), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


class _Reference:
    def assert_matches_pycocotools(self, gt_json, res_json, out, names):
        for iou_type in ("bbox", "segm"):
            ev = _pycocotools(gt_json, res_json, iou_type)
            for i, key in enumerate(METRICS):
                expect = ev.stats[i] * 100 if ev.stats[i] >= 0 else float("nan")
                got = out[iou_type][key]
                if math.isnan(expect):
                    self.assertTrue(math.isnan(got), f"{iou_type} {key}")
                else:
                    self.assertAlmostEqual(got, expect, delta=1e-9, msg=f"{iou_type} {key}")
            prec = ev.eval[
                "precision"
            ]  # per category: mean over IoU and recall, all areas, 100 dets
            for k, name in enumerate(names):
                p = prec[:, :, k, 0, -1]
                p = p[p > -1]
                expect = 100 * float(np.mean(p)) if p.size else float("nan")
                got = out[iou_type][f"AP-{name}"]
                if math.isnan(expect):
                    self.assertTrue(math.isnan(got))
                else:
                    self.assertAlmostEqual(got, expect, delta=1e-9, msg=f"{iou_type} AP-{name}")


class TestAgainstPycocotools(_Reference, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="seg2-coco-")
        cls.gt_json = os.path.join(cls.tmp, "gt.json")
        cls.gt = _make_gt(cls.gt_json)
        cls.res_json = os.path.join(cls.tmp, "res.json")
        with open(cls.res_json, "w") as f:
            json.dump(_make_results(cls.gt_json), f)

    def test_both_backends_equal_pycocotools(self):
        for backend in ("faster_coco_eval", "pycocotools"):
            with self.subTest(backend=backend):
                out = evaluate_coco_files(self.gt_json, self.res_json, backend=backend)
                self.assert_matches_pycocotools(
                    self.gt_json, self.res_json, out, [c["name"] for c in CATS]
                )

    def test_synthetic_dataset(self):
        gt_json = os.path.join(tiny_synthetic_root(), "annotations", "instances_train.json")
        res_json = os.path.join(self.tmp, "synthetic_res.json")
        with open(res_json, "w") as f:
            json.dump(_make_results(gt_json, seed=3), f)
        with open(gt_json) as f:
            names = [c["name"] for c in sorted(json.load(f)["categories"], key=lambda c: c["id"])]
        self.assert_matches_pycocotools(
            gt_json, res_json, evaluate_coco_files(gt_json, res_json), names
        )

    def test_results_not_modified(self):
        results = _make_results(self.gt_json, seed=2)
        before = copy.deepcopy(results)
        for backend in ("faster_coco_eval", "pycocotools"):
            first = evaluate_coco_results(load_coco_gt(self.gt, backend), results, backend=backend)
            second = evaluate_coco_results(load_coco_gt(self.gt, backend), results, backend=backend)
            self.assertEqual(results, before)
            self.assertEqual(first["segm"]["AP"], second["segm"]["AP"])

    def test_no_predictions_score_zero_where_ground_truth_exists(self):
        """No detections: AP 0 (not NaN) for every area range holding non-crowd ground
        truth, NaN for ranges holding none (COCO's definition: recall 0 on every GT)."""
        path = os.path.join(self.tmp, "empty.json")
        with open(path, "w") as f:
            json.dump([], f)
        anns = [a for a in self.gt["annotations"] if not a.get("iscrowd", 0)]
        ranges = {"APs": (0, 32**2), "APm": (32**2, 96**2), "APl": (96**2, 1e10)}
        for backend in ("faster_coco_eval", "pycocotools"):
            out = evaluate_coco_files(self.gt_json, path, backend=backend)
            for task in ("bbox", "segm"):
                for key in ("AP", "AP50", "AP75"):
                    self.assertEqual(out[task][key], 0.0, (backend, task, key))
                for key, (lo, hi) in ranges.items():
                    has_gt = any(lo <= a["area"] < hi for a in anns)
                    if has_gt:
                        self.assertEqual(out[task][key], 0.0, (backend, task, key))
                    else:
                        self.assertTrue(math.isnan(out[task][key]), (backend, task, key))

    def test_no_ground_truth_is_nan_and_noted(self):
        gt = dict(self.gt, annotations=[])
        gt_json = os.path.join(self.tmp, "gt_empty.json")
        with open(gt_json, "w") as f:
            json.dump(gt, f)
        with self.assertLogs("seg2.evaluation.coco", "WARNING") as logs:
            out = evaluate_coco_files(gt_json, self.res_json)
        self.assertTrue(all(math.isnan(v) for t in out.values() for v in t.values()))
        self.assertIn("no (non-crowd) annotations", "\n".join(logs.output))

    def test_empty_ground_truth_images_is_an_error(self):
        gt_json = os.path.join(self.tmp, "gt_noimages.json")
        with open(gt_json, "w") as f:
            json.dump(dict(self.gt, images=[], annotations=[]), f)
        with self.assertRaisesRegex(ValueError, "gt_noimages.json: field 'images' is empty"):
            evaluate_coco_files(gt_json, self.res_json)

    def test_bad_results_name_the_file_and_id(self):
        base = _make_results(self.gt_json)
        cases = [
            (lambda r: r[0].update(image_id=999), r"image_id 999"),
            (lambda r: r[0].update(category_id=1), r"category_id 1\b.*\[5, 9, 17\]"),
            (lambda r: r[0].pop("score"), r"lacks field 'score'"),
            (lambda r: r[0]["segmentation"].update(size=[3, 3]), r"segmentation size \[3, 3\]"),
        ]
        for i, (edit, pattern) in enumerate(cases):
            res = copy.deepcopy(base)
            edit(res)
            path = os.path.join(self.tmp, f"bad{i}.json")
            with open(path, "w") as f:
                json.dump(res, f)
            with self.subTest(pattern=pattern), self.assertRaisesRegex(
                InputError, f"bad{i}.json.*{pattern}"
            ):
                evaluate_coco_files(self.gt_json, path)
        path = os.path.join(self.tmp, "notjson.json")
        with open(path, "w") as f:
            f.write("[{")
        with self.assertRaisesRegex(InputError, "notjson.json: malformed"):
            evaluate_coco_files(self.gt_json, path)


class TestEvaluator(_Reference, unittest.TestCase):
    """Model outputs with contiguous classes -> results with original ids -> same AP."""

    def test_category_ids_round_trip(self):
        tmp = tempfile.mkdtemp(prefix="seg2-cocoev-")
        gt_json = os.path.join(tmp, "gt.json")
        gt = _make_gt(gt_json)
        name = f"seg2_test_coco_{id(self)}"
        DatasetCatalog.register(name, lambda: [])
        MetadataCatalog.get(name).set(
            json_file=gt_json,
            thing_classes=[c["name"] for c in CATS],
            thing_dataset_id_to_contiguous_id={5: 0, 9: 1, 17: 2},
            evaluator_type="coco",
        )
        results = _make_results(gt_json, seed=5)
        to_contiguous = {5: 0, 9: 1, 17: 2}
        ev = Seg2COCOEvaluator(name, tasks=("bbox", "segm"), distributed=False, output_dir=tmp)
        ev.reset()
        for img in gt["images"]:
            mine = [r for r in results if r["image_id"] == img["id"]]
            inst = Instances((img["height"], img["width"]))
            boxes = [[b[0], b[1], b[0] + b[2], b[1] + b[3]] for b in (r["bbox"] for r in mine)]
            inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4))
            inst.scores = torch.tensor([r["score"] for r in mine], dtype=torch.float64)
            inst.pred_classes = torch.tensor(
                [to_contiguous[r["category_id"]] for r in mine], dtype=torch.int64
            )
            masks = [mask_util.decode(r["segmentation"]).astype(bool) for r in mine]
            inst.pred_masks = torch.from_numpy(
                np.stack(masks) if masks else np.zeros((0, img["height"], img["width"]), bool)
            )
            ev.process([{"image_id": img["id"]}], [{"instances": inst}])
        out = ev.evaluate()
        written = os.path.join(tmp, "coco_instances_results.json")
        with open(written) as f:
            dumped = json.load(f)
        self.assertEqual(
            sorted(r["category_id"] for r in dumped), sorted(r["category_id"] for r in results)
        )
        self.assertTrue({r["category_id"] for r in dumped} <= {5, 9, 17})
        self.assert_matches_pycocotools(gt_json, written, out, [c["name"] for c in CATS])
        offline = evaluate_coco_files(gt_json, written)
        for task in ("bbox", "segm"):
            self.assertEqual(list(out[task]), list(offline[task]))
            for key, value in out[task].items():
                self.assertTrue(
                    value == offline[task][key]
                    or (math.isnan(value) and math.isnan(offline[task][key])),
                    key,
                )


if __name__ == "__main__":
    unittest.main()
