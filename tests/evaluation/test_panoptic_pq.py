"""Tests of seg2's PQ evaluator against hand-worked figures and independent implementations.

Conventions of the hand-built cases: images are small id maps written out row by row; GT id 0
is void; categories 1, 2 are things, 3, 4 stuff. Expected figures are worked out in comments.
"""

import json
import os
import tempfile
import unittest
import uuid
from collections import OrderedDict
from unittest import mock

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from PIL import Image

from seg2.evaluation.panoptic import Seg2PanopticEvaluator
from seg2.evaluation.pq import PQStat, PQStatCat, pq_average, pq_compute_single, pq_results
from seg2.evaluation.pq_files import format_pq_table, pq_compute_files
from seg2.io import InputError

CATS = OrderedDict(
    [
        (1, {"id": 1, "name": "a", "isthing": 1}),
        (2, {"id": 2, "name": "b", "isthing": 1}),
        (3, {"id": 3, "name": "s", "isthing": 0}),
        (4, {"id": 4, "name": "t", "isthing": 0}),
    ]
)


def seg(sid, cat, crowd=0):
    return {"id": sid, "category_id": cat, "iscrowd": crowd}


def row(*runs):
    """One-row id map from (id, length) runs: row((1, 4), (0, 2)) = [[1, 1, 1, 1, 0, 0]]."""
    return np.array([[i for i, n in runs for _ in range(n)]], dtype=np.int64)


def single(gt, gs, pred, ps):
    return pq_compute_single(gt, gs, pred, ps, CATS, "img.png")


def same(a, b):
    """Results dicts are equal, keys in the same order, NaN == NaN (absent classes)."""
    assert list(a) == list(b), (list(a), list(b))
    np.testing.assert_equal(dict(a), dict(b))


def encode(ids):
    """COCO panoptic colour, written here independently of the module: R + 256 G + 256^2 B."""
    ids = np.asarray(ids, dtype=np.int64)
    return np.stack([ids % 256, (ids // 256) % 256, ids // (256 * 256)], -1).astype(np.uint8)


def decode(path):
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def write_case(root, images, categories=CATS):
    """images: list of (file_name, gt_ids, gt_segments, pred_ids, pred_segments).
    Returns (gt_json, gt_dir, pred_json, pred_dir)."""
    gt_dir, pred_dir = os.path.join(root, "gt"), os.path.join(root, "pred")
    os.makedirs(gt_dir, exist_ok=True)
    os.makedirs(pred_dir, exist_ok=True)
    gt_anns, pred_anns, imgs = [], [], []
    for k, (name, gt, gs, pred, ps) in enumerate(images):
        Image.fromarray(encode(gt)).save(os.path.join(gt_dir, name))
        Image.fromarray(encode(pred)).save(os.path.join(pred_dir, name))
        imgs.append(
            {
                "id": k + 1,
                "file_name": name.replace(".png", ".jpg"),
                "height": gt.shape[0],
                "width": gt.shape[1],
            }
        )
        gt_anns.append({"image_id": k + 1, "file_name": name, "segments_info": gs})
        pred_anns.append({"image_id": k + 1, "file_name": name, "segments_info": ps})
    gt_json, pred_json = os.path.join(root, "gt.json"), os.path.join(root, "pred.json")
    with open(gt_json, "w") as f:
        json.dump(
            {"images": imgs, "annotations": gt_anns, "categories": list(categories.values())}, f
        )
    with open(pred_json, "w") as f:
        json.dump({"annotations": pred_anns}, f)
    return gt_json, gt_dir, pred_json, pred_dir


class TestMatchingRules(unittest.TestCase):
    def test_perfect_match(self):
        gt = row((1, 4), (2, 3), (3, 5))
        pred = row((7, 4), (8, 3), (9, 5))  # same masks, other ids
        stat = single(
            gt, [seg(1, 1), seg(2, 2), seg(3, 3)], pred, [seg(7, 1), seg(8, 2), seg(9, 3)]
        )
        for c in (1, 2, 3):
            self.assertEqual(stat[c], PQStatCat(iou=1.0, tp=1, fp=0, fn=0))
        res = pq_results(stat, CATS)
        for k in ("PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st"):
            self.assertAlmostEqual(res[k], 100.0, msg=k)
        self.assertTrue(np.isnan(res["PQ-t"]))  # class 4 absent everywhere

    def test_iou_exactly_half_is_not_a_match(self):
        # GT area 4, prediction its first 2 pixels: IoU = 2 / 4 = 0.5, not > 0.5.
        gt = row((1, 4), (0, 4))
        pred = row((5, 2), (0, 6))
        stat = single(gt, [seg(1, 1)], pred, [seg(5, 1)])
        self.assertEqual(stat[1], PQStatCat(iou=0.0, tp=0, fp=1, fn=1))
        res = pq_results(stat, CATS)
        self.assertEqual((res["PQ"], res["SQ"], res["RQ"]), (0.0, 0.0, 0.0))

    def test_iou_just_above_half_is_a_match(self):
        # GT area 100, prediction 51 of its pixels: IoU = 51 / 100 = 0.51 > 0.5.
        # PQ = SQ = 0.51 / 1 = 51 %, RQ = 1 / 1 = 100 %.
        gt = row((1, 100))
        pred = row((5, 51), (0, 49))
        stat = single(gt, [seg(1, 1)], pred, [seg(5, 1)])
        self.assertEqual((stat[1].tp, stat[1].fp, stat[1].fn), (1, 0, 0))
        res = pq_results(stat, CATS)
        self.assertAlmostEqual(res["PQ"], 51.0)
        self.assertAlmostEqual(res["SQ"], 51.0)
        self.assertAlmostEqual(res["RQ"], 100.0)

    def test_different_categories_never_match(self):
        gt = row((1, 6))
        pred = row((5, 6))  # identical mask, category 2 instead of 1
        stat = single(gt, [seg(1, 1)], pred, [seg(5, 2)])
        self.assertEqual(stat[1], PQStatCat(tp=0, fp=0, fn=1))
        self.assertEqual(stat[2], PQStatCat(tp=0, fp=1, fn=0))
        mean, per_class = pq_average(stat, CATS)
        self.assertEqual(mean, {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 2})

    def test_void_is_removed_from_union_and_flips_the_match(self):
        # GT: segment 1 = pixels 0-3, void 4-7. Prediction = pixels 0-2 and 4-7 (area 7).
        # Plain IoU = 3 / (4 + 7 - 3) = 3/8 -> no match. Without the 4 void pixels:
        # union = 8 - 4 = 4, IoU = 3/4 -> match. PQ = SQ = 75 %, RQ = 100 %.
        gt = row((1, 4), (0, 4))
        pred = row((5, 3), (0, 1), (5, 4))
        stat = single(gt, [seg(1, 1)], pred, [seg(5, 1)])
        self.assertEqual((stat[1].tp, stat[1].fp, stat[1].fn), (1, 0, 0))
        self.assertAlmostEqual(stat[1].iou, 0.75)
        res = pq_results(stat, CATS)
        self.assertAlmostEqual(res["PQ"], 75.0)
        self.assertAlmostEqual(res["RQ"], 100.0)

    def test_void_in_prediction_is_not_removed(self):
        # Prediction void (id 0) is not ignored: GT 1 = pixels 0-9; prediction covers 0-4 only.
        # IoU = 5 / 10 = 0.5 -> no match (the uncovered GT pixels count in the union).
        gt = row((1, 10))
        pred = row((5, 5), (0, 5))
        stat = single(gt, [seg(1, 1)], pred, [seg(5, 1)])
        self.assertEqual(stat[1], PQStatCat(tp=0, fp=1, fn=1))

    def test_crowd_is_not_matched_and_covering_prediction_is_not_fp(self):
        # GT: crowd of class 1 = pixels 0-9, ordinary class-1 segment 2 = pixels 10-13.
        # Prediction 5 (class 1) equals the crowd (IoU 1 but crowd is never matched), and is
        # 10/10 on a crowd of its class -> not FP. Prediction 6 equals segment 2 -> TP.
        # Class 1: TP 1, FP 0, FN 0 (crowd is no FN) -> PQ 100.
        gt = row((1, 10), (2, 4))
        pred = row((5, 10), (6, 4))
        stat = single(gt, [seg(1, 1, crowd=1), seg(2, 1)], pred, [seg(5, 1), seg(6, 1)])
        self.assertEqual(stat[1], PQStatCat(iou=1.0, tp=1, fp=0, fn=0))
        self.assertAlmostEqual(pq_results(stat, CATS)["PQ"], 100.0)

    def test_crowd_alone_yields_no_counts(self):
        gt = row((1, 10))
        pred = row((5, 10))
        stat = single(gt, [seg(1, 1, crowd=1)], pred, [seg(5, 1)])
        self.assertEqual(stat[1], PQStatCat())
        mean, _ = pq_average(stat, CATS)
        self.assertEqual(mean["n"], 0)
        self.assertTrue(np.isnan(pq_results(stat, CATS)["PQ"]))

    def test_prediction_over_crowd_of_other_class_is_fp(self):
        # Crowd of class 1 = pixels 0-9; prediction of class 2 on it: a false positive of 2.
        gt = row((1, 10))
        pred = row((5, 10))
        stat = single(gt, [seg(1, 1, crowd=1)], pred, [seg(5, 2)])
        self.assertEqual(stat[2], PQStatCat(fp=1))
        self.assertEqual(stat[1], PQStatCat())

    def test_void_and_crowd_add_up(self):
        # Prediction of class 1, area 10: 3 px void, 3 px class-1 crowd, 4 px on stuff 3.
        # Ignored = (3 + 3) / 10 = 0.6 > 0.5 -> not FP. Stuff 3 (area 6) unmatched -> FN.
        gt = row((0, 3), (1, 3), (2, 6))
        pred = row((5, 10), (6, 2))
        stat = single(gt, [seg(1, 1, crowd=1), seg(2, 3)], pred, [seg(5, 1), seg(6, 3)])
        self.assertEqual(stat[1], PQStatCat())
        # Prediction 6 (stuff 3, area 2) vs GT 2 (area 6): IoU 2/6 -> FN and FP for class 3.
        self.assertEqual(stat[3], PQStatCat(fp=1, fn=1))

    def test_prediction_mostly_on_void_is_not_fp(self):
        # GT 1 = pixels 0-19 (class 1), void 20-25. Prediction 5 (class 1): 4 px on GT 1 and
        # 6 px on void. IoU = 4 / (20 + 10 - 4 - 6) = 0.2 -> no match; 6/10 > 0.5 -> not FP.
        gt = row((1, 20), (0, 6))
        pred = row((0, 16), (5, 10))
        stat = single(gt, [seg(1, 1)], pred, [seg(5, 1)])
        self.assertEqual(stat[1], PQStatCat(tp=0, fp=0, fn=1))

    def test_prediction_exactly_half_on_void_is_fp(self):
        # 5 of 10 px on void: 0.5 is not > 0.5 -> FP. IoU = 5 / (20 + 10 - 5 - 5) = 0.25.
        gt = row((1, 20), (0, 5))
        pred = row((0, 15), (5, 10))
        stat = single(gt, [seg(1, 1)], pred, [seg(5, 1)])
        self.assertEqual(stat[1], PQStatCat(tp=0, fp=1, fn=1))


class TestAveraging(unittest.TestCase):
    def test_class_without_tp_fp_fn_is_left_out(self):
        # Class 1 perfect (PQ 100), class 3 only an FN (PQ 0), classes 2 and 4 absent.
        # Mean over 2 classes = 50 %, not 100/4 or 100/3.
        gt = row((1, 4), (2, 4))
        pred = row((5, 4), (0, 4))
        stat = single(gt, [seg(1, 1), seg(2, 3)], pred, [seg(5, 1)])
        res = pq_results(stat, CATS)
        self.assertAlmostEqual(res["PQ"], 50.0)
        self.assertAlmostEqual(res["PQ_th"], 100.0)
        self.assertAlmostEqual(res["PQ_st"], 0.0)
        self.assertTrue(np.isnan(res["PQ-b"]) and np.isnan(res["PQ-t"]))
        self.assertEqual(pq_average(stat, CATS)[0]["n"], 2)

    def test_things_stuff_split(self):
        # a (thing): TP iou .8            -> PQ 80,     SQ 80,  RQ 100
        # b (thing): TP iou 1, FP 1       -> PQ 1/1.5,  SQ 100, RQ 1/1.5   (66.667)
        # s (stuff): TP iou .6, FN 1      -> PQ .6/1.5, SQ 60,  RQ 1/1.5   (40, 60, 66.667)
        stat = PQStat()
        stat[1] += PQStatCat(iou=0.8, tp=1)
        stat[2] += PQStatCat(iou=1.0, tp=1, fp=1)
        stat[3] += PQStatCat(iou=0.6, tp=1, fn=1)
        res = pq_results(stat, CATS)
        expected = {
            "PQ_th": (80 + 200 / 3) / 2,
            "SQ_th": 90.0,
            "RQ_th": (100 + 200 / 3) / 2,
            "PQ_st": 40.0,
            "SQ_st": 60.0,
            "RQ_st": 200 / 3,
            "PQ": (80 + 200 / 3 + 40) / 3,
            "SQ": 80.0,
            "RQ": (100 + 400 / 3) / 3,
            "PQ-a": 80.0,
            "SQ-b": 100.0,
            "RQ-s": 200 / 3,
        }
        for k, v in expected.items():
            self.assertAlmostEqual(res[k], v, msg=k)
        table = format_pq_table(res, CATS)
        self.assertIn("Things", table)
        self.assertIn("73.333", table)  # PQ_th
        self.assertRegex(table, r"\|\s*All\s*\|.*\|\s*3\s*\|")  # 3 categories in the mean

    def test_multi_image_accumulation_is_over_counts(self):
        # Image 1: class 1 TP with IoU 1. Image 2: three class-1 FNs.
        # Dataset: iou 1, TP 1, FN 3 -> PQ = 1 / (1 + 1.5) = 40 %; SQ 100 %, RQ 40 %.
        # (the mean of per-image PQs would be 50 %.)
        s1 = single(row((1, 4)), [seg(1, 1)], row((5, 4)), [seg(5, 1)])
        s2 = single(row((1, 2), (2, 2), (3, 2)), [seg(1, 1), seg(2, 1), seg(3, 1)], row((0, 6)), [])
        total = PQStat()
        total += s1
        total += s2
        self.assertEqual(total[1], PQStatCat(iou=1.0, tp=1, fp=0, fn=3))
        res = pq_results(total, CATS)
        self.assertAlmostEqual(res["PQ"], 40.0)
        self.assertAlmostEqual(res["SQ"], 100.0)
        self.assertAlmostEqual(res["RQ"], 40.0)
        with tempfile.TemporaryDirectory() as d:
            files = write_case(
                d,
                [
                    ("x.png", row((1, 4)), [seg(1, 1)], row((5, 4)), [seg(5, 1)]),
                    (
                        "y.png",
                        row((1, 2), (2, 2), (3, 2)),
                        [seg(1, 1), seg(2, 1), seg(3, 1)],
                        row((0, 6)),
                        [],
                    ),
                ],
            )
            same(pq_compute_files(*files, num_workers=0), res)


# ---------------------------------------------------------------------------------------------
# Random cases and independent references


def random_image(rng, h=24, w=32, crowd=True, pred_void=True):
    """A GT / prediction pair: two stuff bands, thing rectangles, void; the prediction jitters
    every region, sometimes changes a category, adds spurious things, and renumbers ids."""

    def paint(jitter):
        ids = np.zeros((h, w), np.int64)
        segs = []
        cut = h // 2 + (rng.integers(-3, 4) if jitter else 0)
        ids[:cut], ids[cut:] = 1, 2
        segs += [seg(1, 3), seg(2, 4)]
        return ids, segs, cut

    gt, gs, _ = paint(False)
    rects = []
    for k in range(int(rng.integers(2, 6))):
        y, x = int(rng.integers(0, h - 4)), int(rng.integers(0, w - 4))
        hh, ww = int(rng.integers(3, 10)), int(rng.integers(3, 10))
        cat = int(rng.integers(1, 3))
        is_crowd = int(crowd and rng.random() < 0.2)
        rects.append((y, x, hh, ww, cat))
        gt[y : y + hh, x : x + ww] = 10 + k
        gs.append(seg(10 + k, cat, is_crowd))
    y, x = int(rng.integers(0, h - 4)), int(rng.integers(0, w - 4))
    gt[y : y + 4, x : x + 5] = 0  # void

    pred, ps, _ = paint(True)
    for k, (y, x, hh, ww, cat) in enumerate(rects):
        if rng.random() < 0.15:
            continue  # missed
        dy, dx, dh, dw = (int(v) for v in rng.integers(-2, 3, size=4))
        c = cat if rng.random() > 0.15 else 3 - cat
        pred[max(y + dy, 0) : y + dy + hh + dh, max(x + dx, 0) : x + dx + ww + dw] = 10 + k
        ps.append(seg(10 + k, c))
    for k in range(int(rng.integers(0, 3))):  # spurious
        y, x = int(rng.integers(0, h - 3)), int(rng.integers(0, w - 3))
        pred[y : y + 3, x : x + int(rng.integers(2, 6))] = 50 + k
        ps.append(seg(50 + k, int(rng.integers(1, 3))))
    if pred_void and rng.random() < 0.5:
        y, x = int(rng.integers(0, h - 3)), int(rng.integers(0, w - 3))
        pred[y : y + 3, x : x + 3] = 0

    def prune(ids, segs, offset):
        present = set(np.unique(ids).tolist())
        segs = [dict(s) for s in segs if s["id"] in present]
        remap = np.arange(ids.max() + 1)
        for s in segs:  # ids > 255 use the G and B channels of the PNG too
            remap[s["id"]] = s["id"] * offset + 7
            s["id"] = int(remap[s["id"]])
        return remap[ids], segs

    gt, gs = prune(gt, gs, 1)
    pred, ps = prune(pred, ps, 1031)
    return gt, gs, pred, ps


def reference_pq(images, categories):
    """PQ straight from the paper's definitions and panopticapi's void / crowd rules, with
    explicit per-segment mask loops (no code shared with seg2)."""
    acc = {c: {"iou": 0.0, "tp": 0, "fp": 0, "fn": 0} for c in categories}
    for gt, gs, pred, ps in images:
        void = gt == 0
        gt_matched, pred_matched = set(), set()
        for g in gs:
            if g.get("iscrowd", 0):
                continue
            gm = gt == g["id"]
            for p in ps:
                if p["category_id"] != g["category_id"]:
                    continue
                pm = pred == p["id"]
                inter = np.logical_and(gm, pm).sum()
                union = np.logical_or(gm, pm).sum() - np.logical_and(pm, void).sum()
                if inter / union > 0.5:
                    acc[g["category_id"]]["tp"] += 1
                    acc[g["category_id"]]["iou"] += inter / union
                    gt_matched.add(g["id"])
                    pred_matched.add(p["id"])
        for g in gs:
            if g["id"] not in gt_matched and not g.get("iscrowd", 0):
                acc[g["category_id"]]["fn"] += 1
        for p in ps:
            if p["id"] in pred_matched:
                continue
            pm = pred == p["id"]
            crowd = np.zeros_like(void)
            for g in gs:
                if g.get("iscrowd", 0) and g["category_id"] == p["category_id"]:
                    crowd |= gt == g["id"]
            if np.logical_and(pm, void | crowd).sum() / pm.sum() > 0.5:
                continue
            acc[p["category_id"]]["fp"] += 1
    out = {}
    for suffix, keep in (
        ("", lambda c: True),
        ("_th", lambda c: c["isthing"]),
        ("_st", lambda c: not c["isthing"]),
    ):
        pqs, sqs, rqs = [], [], []
        for cid, c in categories.items():
            a = acc[cid]
            if not keep(c) or a["tp"] + a["fp"] + a["fn"] == 0:
                continue
            pqs.append(a["iou"] / (a["tp"] + 0.5 * a["fp"] + 0.5 * a["fn"]))
            sqs.append(a["iou"] / a["tp"] if a["tp"] else 0.0)
            rqs.append(a["tp"] / (a["tp"] + 0.5 * a["fp"] + 0.5 * a["fn"]))
        out["PQ" + suffix] = 100 * np.mean(pqs)
        out["SQ" + suffix] = 100 * np.mean(sqs)
        out["RQ" + suffix] = 100 * np.mean(rqs)
    return out, acc


class TestAgainstReferences(unittest.TestCase):
    def test_random_case_matches_loop_reference(self):
        rng = np.random.default_rng(0)
        images = [random_image(rng) for _ in range(12)]
        expected, acc = reference_pq(images, CATS)
        stat = PQStat()
        for k, (gt, gs, pred, ps) in enumerate(images):
            stat += pq_compute_single(gt, gs, pred, ps, CATS, f"{k}.png")
        for c in CATS:
            a = acc[c]
            s = stat[c]
            self.assertEqual((s.tp, s.fp, s.fn), (a["tp"], a["fp"], a["fn"]), msg=c)
            self.assertAlmostEqual(s.iou, a["iou"], places=9)
        # The case must exercise every rule, or the comparison proves little.
        self.assertTrue(all(acc[c]["tp"] and acc[c]["fp"] and acc[c]["fn"] for c in (1, 2)))
        self.assertTrue(any(s.get("iscrowd") for _, gs, _, _ in images for s in gs))
        res = pq_results(stat, CATS)
        for k, v in expected.items():
            self.assertAlmostEqual(res[k], v, places=9, msg=k)

    def test_random_case_matches_torchmetrics(self):
        try:
            from torchmetrics.detection import PanopticQuality
        except ImportError:
            self.skipTest("torchmetrics not installed")
        # torchmetrics has no crowd and no void in predictions; GT void = category 255.
        rng = np.random.default_rng(1)
        images = [random_image(rng, crowd=False, pred_void=False) for _ in range(8)]

        def pairs(ids, segs):
            out = np.zeros(ids.shape + (2,), np.int64)
            out[..., 0] = 255
            for s in segs:
                m = ids == s["id"]
                out[m, 0] = s["category_id"]
                out[m, 1] = s["id"] if CATS[s["category_id"]]["isthing"] else 0
            return out

        preds = torch.as_tensor(np.stack([pairs(p, ps) for _, _, p, ps in images]))
        target = torch.as_tensor(np.stack([pairs(g, gs) for g, gs, _, _ in images]))
        metric = PanopticQuality(things={1, 2}, stuffs={3, 4}, return_sq_and_rq=True)
        pq, sq, rq = (100 * float(v) for v in metric(preds, target))
        stat = PQStat()
        for gt, gs, pred, ps in images:
            stat += pq_compute_single(gt, gs, pred, ps, CATS)
        res = pq_results(stat, CATS)
        self.assertAlmostEqual(res["PQ"], pq, places=4)
        self.assertAlmostEqual(res["SQ"], sq, places=4)
        self.assertAlmostEqual(res["RQ"], rq, places=4)


class TestPanopticPNG(unittest.TestCase):
    """COCO panoptic PNGs are read as int64 ids, R + 256 G + 256^2 B; ids use all three bytes."""

    def test_read_panoptic_png_equals_rgb2id(self):
        from seg2.io import read_panoptic_png
        from seg2.structures.panoptic import rgb2id

        rng = np.random.default_rng(3)
        rgb = rng.integers(0, 256, (17, 23, 3), dtype=np.uint8)  # ids up to 2^24 - 1
        alpha = rng.integers(0, 256, (17, 23, 1), dtype=np.uint8)
        with tempfile.TemporaryDirectory() as root:
            for mode, pixels in (("RGB", rgb), ("RGBA", np.concatenate([rgb, alpha], -1))):
                path = os.path.join(root, f"{mode}.png")
                Image.fromarray(pixels, mode).save(path)
                ids = read_panoptic_png(path)
                self.assertEqual((ids.dtype, ids.shape), (np.dtype(np.int64), (17, 23)))
                np.testing.assert_array_equal(ids, rgb2id(rgb))
                self.assertGreaterEqual(ids.max(), 1 << 16)

    def test_unreadable_panoptic_pngs_are_named(self):
        from seg2.io import InputError, read_panoptic_png

        with tempfile.TemporaryDirectory() as root:
            jpeg = os.path.join(root, "a.png")
            Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(jpeg, format="JPEG")
            with self.assertRaisesRegex(InputError, r"a\.png: unreadable panoptic PNG \(not a PNG"):
                read_panoptic_png(jpeg)
            png = os.path.join(root, "b.png")
            Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 7).save(png)
            with open(png, "rb") as f:
                data = f.read()
            with open(png, "wb") as f:
                f.write(data[: len(data) // 2])
            with self.assertRaisesRegex(InputError, r"b\.png: unreadable panoptic PNG \("):
                read_panoptic_png(png)
            with self.assertRaisesRegex(InputError, r"c\.png: panoptic PNG file not found"):
                read_panoptic_png(os.path.join(root, "c.png"))
            gray = os.path.join(root, "d.png")
            Image.fromarray(np.zeros((4, 4), np.uint8)).save(gray)
            with self.assertRaisesRegex(InputError, r"d\.png: panoptic PNG has mode L"):
                read_panoptic_png(gray)

    def test_large_ids_in_maps_and_lists(self):
        rng = np.random.default_rng(4)
        for _ in range(6):
            gt, gs, pred, ps = random_image(rng)
            big = {0: 0}
            for i in sorted((set(np.unique(gt).tolist()) | set(np.unique(pred).tolist())) - {0}):
                big[i] = int(rng.integers(1, 1 << 24))
            remap = np.vectorize(big.get)
            big_gs = [dict(s, id=big[s["id"]]) for s in gs]
            big_ps = [dict(s, id=big[s["id"]]) for s in ps]
            expected = repr(pq_compute_single(gt, gs, pred, ps, CATS))
            self.assertEqual(
                repr(pq_compute_single(remap(gt), big_gs, remap(pred), big_ps, CATS)), expected
            )
            with self.assertRaisesRegex(InputError, rf"\[{big_gs[-1]['id']}\] are in the PNG"):
                pq_compute_single(remap(gt), big_gs[:-1], remap(pred), big_ps, CATS)

    def test_a_thousand_segments(self):
        # The former hash table grew until collision-free: 1000 ids asked for 2 TiB.
        ids = np.random.default_rng(5).choice(np.arange(1, 1 << 24), 1000, replace=False)
        gt = np.repeat(ids, 3)[None, :].repeat(4, axis=0)
        segs = [seg(int(i), 1 + k % 2) for k, i in enumerate(ids)]
        stat = pq_compute_single(gt, segs, gt, segs, CATS)
        self.assertEqual((stat[1].tp, stat[2].tp, stat[1].fp, stat[1].fn), (500, 500, 0, 0))


# ---------------------------------------------------------------------------------------------
# Files


class TestFiles(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.root = self._tmp.name

    def tearDown(self):
        self._tmp.cleanup()

    def _valid(self):
        # img1: thing a (id 300, uses the G channel) exactly predicted; stuff s half-covered.
        gt = np.array([[300, 300, 2, 2], [300, 300, 2, 2]])
        pred = np.array([[70000, 70000, 9, 9], [70000, 70000, 0, 0]])
        return ["img1.png", gt, [seg(300, 1), seg(2, 3)], pred, [seg(70000, 1), seg(9, 3)]]

    def test_round_trip_through_files(self):
        # a: IoU 1 -> PQ 100. s: GT area 4, pred area 2 inside -> IoU 0.5 -> FN + FP, PQ 0.
        files = write_case(self.root, [self._valid()])
        res = pq_compute_files(*files, num_workers=0)
        self.assertAlmostEqual(res["PQ-a"], 100.0)
        self.assertAlmostEqual(res["PQ-s"], 0.0)
        self.assertAlmostEqual(res["PQ"], 50.0)
        self.assertAlmostEqual(res["PQ_th"], 100.0)
        self.assertAlmostEqual(res["RQ_st"], 0.0)

    def test_worker_pool_equals_in_process(self):
        rng = np.random.default_rng(2)
        images = [(f"{k}.png",) + random_image(rng) for k in range(8)]
        files = write_case(self.root, images)
        same(pq_compute_files(*files, num_workers=2), pq_compute_files(*files, num_workers=0))

    def test_batches_of_any_size_give_the_same_figures(self):
        """Images are scored by batches (PQBatch); the figures must not depend on where the
        batches split, and must equal the independent per-pixel loop reference. Sizes vary
        from image to image."""
        from seg2.evaluation import pq_files

        rng = np.random.default_rng(6)
        shapes = [(24, 32), (24, 32), (30, 20), (24, 32), (20, 30), (20, 30)] + [(24, 32)] * 4
        images = [random_image(rng, h, w) for h, w in shapes]
        files = write_case(self.root, [(f"{k}.png",) + im for k, im in enumerate(images)])
        results = []
        for size in (1, 3, 256):
            with mock.patch.object(pq_files, "_BATCH_IMAGES", size):
                results.append(pq_compute_files(*files, num_workers=0))
        same(results[0], results[1])
        same(results[0], results[2])
        expected, _ = reference_pq(images, CATS)
        for k, v in expected.items():
            self.assertAlmostEqual(results[0][k], v, places=9, msg=k)

    def test_error_names_the_image_of_the_batch_at_fault(self):
        rng = np.random.default_rng(7)
        images = [[f"{k}.png", *random_image(rng)] for k in range(4)]
        images[2][3] = images[2][3].copy()
        images[2][3][0, 0] = 4242  # a predicted id the JSON lacks, in the third image
        self._expect(images, "2.png", "[4242] are in the PNG but not in the JSON")
        images = [[f"{k}.png", *random_image(rng)] for k in range(4)]
        images[3][2] = images[3][2] + [seg(4243, 1)]  # a GT id the PNG lacks, in the last
        self._expect(images, "3.png", "ground-truth segment id(s) [4243] are in the JSON but not")

    def _expect(self, images, *patterns, workers=0):
        files = write_case(self.root, images)
        with self.assertRaises(InputError) as ctx:
            pq_compute_files(*files, num_workers=workers)
        for p in patterns:
            self.assertIn(p, str(ctx.exception))

    def test_pred_png_segment_missing_from_json(self):
        case = self._valid()
        case[3] = case[3].copy()
        case[3][1, 3] = 11
        self._expect([case], "img1.png", "[11]", "in the PNG but not in the JSON")

    def test_pred_json_segment_missing_from_png(self):
        case = self._valid()
        case[4] = case[4] + [seg(12, 4)]
        self._expect([case], "img1.png", "[12]", "in the JSON but not in the PNG")

    def test_gt_png_segment_missing_from_json(self):
        case = self._valid()
        case[2] = [seg(300, 1)]
        self._expect([case], "img1.png", "ground-truth", "[2]", "in the PNG but not in the JSON")

    def test_gt_json_segment_missing_from_png(self):
        case = self._valid()
        case[2] = case[2] + [seg(5, 2)]
        self._expect([case], "img1.png", "ground-truth", "[5]", "in the JSON but not in the PNG")

    def test_unknown_category(self):
        case = self._valid()
        case[4] = [seg(70000, 1), seg(9, 99)]
        self._expect([case], "img1.png", "segment 9", "unknown category_id 99")

    def test_duplicate_segment_id(self):
        case = self._valid()
        case[4] = case[4] + [seg(9, 4)]
        self._expect([case], "img1.png", "segment id 9 appears twice")

    def test_reserved_void_id(self):
        case = self._valid()
        case[4] = case[4] + [seg(0, 4)]
        self._expect([case], "img1.png", "segment id 0 is reserved")

    def test_size_mismatch(self):
        case = self._valid()
        case[3] = case[3][:, :3]
        self._expect([case], "img1.png", "(2, 3)", "(2, 4)")

    def test_image_missing_from_predictions(self):
        files = write_case(self.root, [self._valid(), ["img2.png"] + self._valid()[1:]])
        pred_json = files[2]
        with open(pred_json) as f:
            data = json.load(f)
        data["annotations"] = data["annotations"][:1]
        with open(pred_json, "w") as f:
            json.dump(data, f)
        with self.assertRaisesRegex(InputError, r"no prediction for image img2\.png"):
            pq_compute_files(*files, num_workers=0)

    def test_missing_and_non_rgb_png(self):
        files = write_case(self.root, [self._valid()])
        png = os.path.join(files[3], "img1.png")
        Image.fromarray(np.zeros((2, 4), np.uint8)).save(png)  # grayscale: ids would be wrong
        with self.assertRaisesRegex(InputError, r"img1\.png.*mode L"):
            pq_compute_files(*files, num_workers=0)
        os.remove(png)
        with self.assertRaisesRegex(InputError, r"img1\.png.*not found"):
            pq_compute_files(*files, num_workers=0)

    def test_error_in_worker_names_image(self):
        good = self._valid()
        bad = ["img2.png"] + self._valid()[1:]
        bad[4] = [seg(70000, 1), seg(9, 99)]
        self._expect([good, bad], "img2.png", "unknown category_id 99", workers=2)


# ---------------------------------------------------------------------------------------------
# Detectron2 evaluator


class TestEvaluator(unittest.TestCase):
    # Dataset ids are non-contiguous, as in COCO: things 3, 7; stuff 20. Contiguous ids: 0, 1
    # (things) and 0, 1, 2 (stuff_* spans all classes, Detectron2's convention).
    CATS = [
        {"id": 3, "name": "circle", "isthing": 1},
        {"id": 7, "name": "square", "isthing": 1},
        {"id": 20, "name": "stripes", "isthing": 0},
    ]

    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        root = self._tmp.name
        # GT (dataset ids): 1 = circle (4 px), 2 = square (8 px), 3 = stripes (10 px), 0 = void.
        gt = np.array(
            [[1, 1, 2, 2, 2, 2], [1, 1, 2, 2, 2, 2], [3, 3, 3, 3, 3, 3], [3, 3, 3, 3, 0, 0]]
        )
        os.makedirs(os.path.join(root, "gt"))
        Image.fromarray(encode(gt)).save(os.path.join(root, "gt", "im.png"))
        self.gt_json = os.path.join(root, "gt.json")
        with open(self.gt_json, "w") as f:
            json.dump(
                {
                    "images": [{"id": 42, "file_name": "im.jpg", "height": 4, "width": 6}],
                    "annotations": [
                        {
                            "image_id": 42,
                            "file_name": "im.png",
                            "segments_info": [seg(1, 3), seg(2, 7), seg(3, 20)],
                        }
                    ],
                    "categories": self.CATS,
                },
                f,
            )
        self.name = f"seg2_test_pq_{uuid.uuid4().hex}"
        MetadataCatalog.get(self.name).set(
            panoptic_json=self.gt_json,
            panoptic_root=os.path.join(root, "gt"),
            thing_dataset_id_to_contiguous_id={3: 0, 7: 1},
            stuff_dataset_id_to_contiguous_id={3: 0, 7: 1, 20: 2},
            label_divisor=1000,
        )
        self.out = os.path.join(root, "out")
        # Prediction: circle exact (IoU 1); square = 6 of its 8 px (IoU 6/8); stripes = its
        # 10 px + the 2 void px (IoU 10 / (10 + 12 - 10 - 2) = 1).
        # PQ = (100 + 75 + 100) / 3 = 91.667, SQ the same, RQ 100; PQ_th 87.5, PQ_st 100.
        self.pred = np.array(
            [[5, 5, 6, 6, 6, 0], [5, 5, 6, 6, 6, 0], [8, 8, 8, 8, 8, 8], [8, 8, 8, 8, 8, 8]]
        )
        self.segments = [
            {"id": 5, "category_id": 0, "isthing": True, "score": 0.9},
            {"id": 6, "category_id": 1, "isthing": True, "score": 0.8},
            {"id": 8, "category_id": 2, "isthing": False},
            {"id": 13, "category_id": 1, "isthing": True, "score": 0.1},  # no pixels: dropped
        ]
        self.inputs = [{"file_name": "/data/images/im.jpg", "image_id": 42}]

    def tearDown(self):
        MetadataCatalog.remove(self.name)
        self._tmp.cleanup()

    def _check(self, res):
        res = res["panoptic_seg"]
        self.assertAlmostEqual(res["PQ"], 275 / 3)
        self.assertAlmostEqual(res["SQ"], 275 / 3)
        self.assertAlmostEqual(res["RQ"], 100.0)
        self.assertAlmostEqual(res["PQ_th"], 87.5)
        self.assertAlmostEqual(res["PQ_st"], 100.0)
        self.assertAlmostEqual(res["SQ-square"], 75.0)

    def _run(self, panoptic_seg, output_dir):
        ev = Seg2PanopticEvaluator(
            self.name, output_dir=output_dir, distributed=False, num_workers=0
        )
        ev.reset()
        ev.process(self.inputs, [{"panoptic_seg": panoptic_seg}])
        return ev.evaluate()

    def test_evaluate_writes_coco_panoptic_predictions(self):
        res = self._run((torch.as_tensor(self.pred, dtype=torch.int32), self.segments), self.out)
        self._check(res)
        pred_dir = os.path.join(self.out, "panoptic_predictions")
        with open(os.path.join(pred_dir, "predictions.json")) as f:
            data = json.load(f)
        ann = data["annotations"][0]
        self.assertEqual((ann["image_id"], ann["file_name"]), (42, "im.png"))
        # Contiguous ids went back to dataset ids; the empty segment was dropped.
        self.assertEqual(
            [(s["id"], s["category_id"]) for s in ann["segments_info"]], [(5, 3), (6, 7), (8, 20)]
        )
        np.testing.assert_array_equal(decode(os.path.join(pred_dir, "im.png")), self.pred)
        # The saved files re-score to the same figures.
        again = pq_compute_files(
            self.gt_json,
            os.path.join(self._tmp.name, "gt"),
            os.path.join(pred_dir, "predictions.json"),
            pred_dir,
            num_workers=0,
        )
        same(again, res["panoptic_seg"])

    def test_segments_info_none_uses_label_divisor(self):
        # Pixel = contiguous category * 1000 + instance, -1 = void (Detectron2's convention).
        lab = np.select([self.pred == 5, self.pred == 6, self.pred == 8], [1, 1001, 2000], -1)
        self._check(self._run((torch.as_tensor(lab), None), None))

    def test_unknown_contiguous_category(self):
        segments = [dict(s) for s in self.segments[:3]]
        segments[1]["category_id"] = 5
        ev = Seg2PanopticEvaluator(self.name, output_dir=None, distributed=False)
        ev.reset()
        with self.assertRaisesRegex(InputError, r"im\.jpg: predicted segment 6 .* 5"):
            ev.process(self.inputs, [{"panoptic_seg": (torch.as_tensor(self.pred), segments)}])


if __name__ == "__main__":
    unittest.main()


class TestEdgeCases(unittest.TestCase):
    """Ground truth without segments is a logged note (not a silent NaN); an empty ground
    truth is an error naming the file and the field."""

    def test_ground_truth_without_segments(self):
        # GT all void: the predicted segment lies on void, so COCO ignores it (not a FP);
        # every figure is NaN, and the note says why.
        gt = row((0, 4))
        pred = row((5, 2), (0, 2))
        stat = single(gt, [], pred, [seg(5, 1)])
        with self.assertLogs("seg2.evaluation.pq", "WARNING") as logs:
            res = pq_results(stat, CATS)
        self.assertTrue(all(np.isnan(res[k]) for k in ("PQ", "PQ-a", "PQ-b", "PQ_st")))
        self.assertIn("the ground truth has no segment of any category", "\n".join(logs.output))

        stat = single(row((1, 2), (0, 2)), [seg(1, 1)], row((1, 2), (0, 2)), [seg(1, 1)])
        with self.assertLogs("seg2.evaluation.pq", "WARNING") as logs:
            pq_results(stat, CATS)
        self.assertIn("3 of 4 categories have no ground-truth segment (ids [2, 3, 4])", "\n".join(logs.output))

    def test_empty_ground_truth_is_an_error(self):
        with tempfile.TemporaryDirectory() as root:
            gt_json, gt_dir, pred_json, pred_dir = write_case(root, [])
            with self.assertRaisesRegex(InputError, "gt.json: field 'annotations' is empty"):
                pq_compute_files(gt_json, gt_dir, pred_json, pred_dir, num_workers=0)
