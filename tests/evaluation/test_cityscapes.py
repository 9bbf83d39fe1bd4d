"""Cityscapes: the official scripts on the synthetic Cityscapes-style tree. Ground truth scored
against itself gives 100; hand-perturbed predictions give the figures worked out by hand."""

import contextlib
import glob
import io
import json
import os
import shutil
import tempfile
import unittest

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, Instances
from PIL import Image

from seg2.data.cityscapes import ensure_panoptic_gt, ensure_train_id_labels, register_cityscapes
from seg2.evaluation.cityscapes import (
    evaluate_cityscapes_folder,
    evaluate_cityscapes_instances,
    evaluate_cityscapes_panoptic,
    evaluate_cityscapes_semantic,
)
from seg2.evaluation.cityscapes_evaluators import build_cityscapes_evaluator
from seg2.io import InputError
from seg2_testing import tiny_synthetic_root

# Cityscapes label ids (cityscapesscripts' labels.py), written here independently.
THING_IDS = {24: "person", 26: "car", 33: "bicycle"}
LABEL_TO_TRAIN = {7: 0, 11: 2, 21: 8, 23: 10, 24: 11, 26: 13, 33: 18}
# Panoptic contiguous ids: things (label ids) 0-7, then stuff (label ids) 8-18.
PANOPTIC_THINGS = {24: 0, 25: 1, 26: 2, 27: 3, 28: 4, 31: 5, 32: 6, 33: 7}
PANOPTIC_STUFF = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23]
MIN_REGION = 100  # evalInstanceLevelSemanticLabeling: smaller GT instances are ignored


def _copy_tree():
    """A private copy of the synthetic Cityscapes val split (tests write into it)."""
    src = os.path.join(tiny_synthetic_root(), "cityscapes")
    root = os.path.join(tempfile.mkdtemp(prefix="seg2-cs-"), "cityscapes")
    for sub in ("leftImg8bit/val", "gtFine/val"):
        shutil.copytree(os.path.join(src, sub), os.path.join(root, sub))
    return root


def _stem(path):
    return "_".join(os.path.basename(path).split("_")[:3])


def _write_instance_preds(gt_dir, pred_dir, drop=None):
    """One mask PNG per GT instance (id >= 1000), score 1; ``drop`` = (stem, instance id)."""
    os.makedirs(pred_dir, exist_ok=True)
    for f in sorted(glob.glob(os.path.join(gt_dir, "*", "*_instanceIds.png"))):
        inst, stem, lines = np.array(Image.open(f)), _stem(f), []
        for v in np.unique(inst):
            if v < 1000 or (stem, int(v)) == drop:
                continue
            name = f"{stem}_{v}.png"
            Image.fromarray(((inst == v) * 255).astype(np.uint8)).save(os.path.join(pred_dir, name))
            lines.append(f"{name} {v // 1000} 1.0")
        with open(os.path.join(pred_dir, stem + "_pred.txt"), "w") as fh:
            fh.write("".join(line + "\n" for line in lines))


class TestSemantic(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.root = _copy_tree()
        cls.gt_dir = os.path.join(cls.root, "gtFine", "val")
        cls.gt_files = sorted(glob.glob(os.path.join(cls.gt_dir, "*", "*_labelIds.png")))

    def _preds(self, name, edit=None):
        pred_dir = os.path.join(self.root, name)
        os.makedirs(pred_dir)
        for i, f in enumerate(self.gt_files):
            ids = np.array(Image.open(f))
            if edit is not None and i == 0:
                ids = edit(ids)
            Image.fromarray(ids).save(os.path.join(pred_dir, _stem(f) + "_pred.png"))
        return pred_dir

    def test_gt_against_itself(self):
        res = evaluate_cityscapes_semantic(self.gt_dir, self._preds("self"))
        self.assertEqual(res["IoU"], 100.0)
        self.assertEqual(res["iIoU"], 100.0)
        self.assertGreaterEqual(len([k for k in res if k.startswith("IoU-")]), 4)

    def test_relabelled_block(self):
        gts = [np.array(Image.open(f)) for f in self.gt_files]
        counts = {c: sum(int((g == c).sum()) for g in gts) for c in LABEL_TO_TRAIN}
        present = [c for c in LABEL_TO_TRAIN if counts[c]]
        block = (slice(10, 70), slice(20, 90))
        a = int(np.bincount(gts[0][block].ravel(), minlength=256)[list(LABEL_TO_TRAIN)].argmax())
        a = list(LABEL_TO_TRAIN)[a]
        b = next(c for c in present if c != a)
        k = int((gts[0][block] == a).sum())
        self.assertGreater(k, 0)

        def edit(ids):
            sub = ids[block]
            sub[sub == a] = b
            return ids

        res = evaluate_cityscapes_semantic(self.gt_dir, self._preds("block", edit))
        # A loses k pixels (false negatives), B gains them (false positives); others untouched.
        iou_a = (counts[a] - k) / counts[a]
        iou_b = counts[b] / (counts[b] + k)
        expect = 100 * (iou_a + iou_b + len(present) - 2) / len(present)
        names = {
            7: "road",
            11: "building",
            21: "vegetation",
            23: "sky",
            24: "person",
            26: "car",
            33: "bicycle",
        }
        self.assertAlmostEqual(res[f"IoU-{names[a]}"], 100 * iou_a, places=9)
        self.assertAlmostEqual(res[f"IoU-{names[b]}"], 100 * iou_b, places=9)
        self.assertAlmostEqual(res["IoU"], expect, places=9)

    def test_bad_predictions_name_the_file(self):
        pred_dir = self._preds("bad")
        first = os.path.join(pred_dir, _stem(self.gt_files[0]) + "_pred.png")
        Image.fromarray(np.zeros((5, 5), np.uint8)).save(first)
        with self.assertRaisesRegex(InputError, f"{first}.*\\(5, 5\\)"):
            evaluate_cityscapes_semantic(self.gt_dir, pred_dir)
        Image.fromarray(np.full(Image.open(self.gt_files[0]).size[::-1], 200, np.uint8)).save(first)
        with self.assertRaisesRegex(InputError, f"{first}.*\\[200\\].*label ids"):
            evaluate_cityscapes_semantic(self.gt_dir, pred_dir)
        os.remove(first)
        with self.assertRaisesRegex(InputError, f"{self.gt_files[0]}: no prediction"):
            evaluate_cityscapes_semantic(self.gt_dir, pred_dir)


class TestInstance(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.root = _copy_tree()
        cls.gt_dir = os.path.join(cls.root, "gtFine", "val")

    def _scored_instances(self):
        """{label id: [(stem, instance id), ...]} of GT instances the script scores."""
        out = {}
        for f in sorted(glob.glob(os.path.join(self.gt_dir, "*", "*_instanceIds.png"))):
            inst = np.array(Image.open(f))
            for v in np.unique(inst):
                if v >= 1000 and (inst == v).sum() >= MIN_REGION:
                    out.setdefault(int(v) // 1000, []).append((_stem(f), int(v)))
        return out

    def test_gt_against_itself(self):
        pred = os.path.join(self.root, "inst_self")
        _write_instance_preds(self.gt_dir, pred)
        res = evaluate_cityscapes_instances(self.gt_dir, pred)
        self.assertEqual((res["AP"], res["AP50"]), (100.0, 100.0))

    def test_one_instance_dropped(self):
        scored = self._scored_instances()
        cls_id = max(scored, key=lambda c: len(scored[c]))
        n = len(scored[cls_id])
        self.assertGreaterEqual(n, 2)
        pred = os.path.join(self.root, "inst_drop")
        _write_instance_preds(self.gt_dir, pred, drop=scored[cls_id][0])
        res = evaluate_cityscapes_instances(self.gt_dir, pred)
        # Equal scores: one PR point (recall (n-1)/n, precision 1), step integral = recall.
        ap_c = (n - 1) / n
        self.assertAlmostEqual(res[f"AP-{THING_IDS[cls_id]}"], 100 * ap_c, places=9)
        expect = 100 * (ap_c + len(scored) - 1) / len(scored)
        self.assertAlmostEqual(res["AP"], expect, places=9)
        self.assertAlmostEqual(res["AP50"], expect, places=9)

    def test_bad_txt_names_file_and_line(self):
        pred = os.path.join(self.root, "inst_bad")
        _write_instance_preds(self.gt_dir, pred)
        txt = sorted(glob.glob(os.path.join(pred, "*_pred.txt")))[0]
        with open(txt, "a") as fh:
            fh.write("nothing.png 24\n")
        n = len(open(txt).read().splitlines())
        with self.assertRaisesRegex(InputError, f"{txt} line {n}"):
            evaluate_cityscapes_instances(self.gt_dir, pred)


class TestPanoptic(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.root = _copy_tree()  # without panoptic GT: ensure_panoptic_gt makes it
        cls.gt_json, cls.gt_folder = ensure_panoptic_gt(cls.root, "val")

    def test_generated_and_self(self):
        self.assertTrue(os.path.isfile(self.gt_json))
        pngs = glob.glob(os.path.join(self.gt_folder, "*_gtFine_panoptic.png"))
        self.assertEqual(
            len(pngs),
            len(glob.glob(os.path.join(self.root, "gtFine", "val", "*", "*_instanceIds.png"))),
        )
        res = evaluate_cityscapes_panoptic(
            self.gt_json, self.gt_folder, self.gt_json, self.gt_folder
        )
        self.assertEqual(
            (res["PQ"], res["SQ"], res["RQ"], res["PQ_th"], res["PQ_st"]), (100.0,) * 5
        )

    def test_one_segment_missing(self):
        gt = json.load(open(self.gt_json))
        pred_dir = os.path.join(self.root, "pan_missing")
        shutil.copytree(self.gt_folder, pred_dir)
        ann = gt["annotations"][0]
        victim = next(
            s for s in ann["segments_info"] if s["category_id"] in THING_IDS and not s["iscrowd"]
        )
        c = victim["category_id"]
        png = os.path.join(pred_dir, ann["file_name"])
        rgb = np.array(Image.open(png)).astype(np.int64)
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
        rgb[ids == victim["id"]] = 0
        Image.fromarray(rgb.astype(np.uint8)).save(png)
        pred = json.loads(json.dumps(gt))
        pred["annotations"][0]["segments_info"] = [
            s for s in ann["segments_info"] if s["id"] != victim["id"]
        ]
        pred_json = os.path.join(self.root, "pan_missing.json")
        json.dump(pred, open(pred_json, "w"))

        n_c = sum(
            1
            for a in gt["annotations"]
            for s in a["segments_info"]
            if s["category_id"] == c and not s["iscrowd"]
        )
        classes = {
            s["category_id"]
            for a in gt["annotations"]
            for s in a["segments_info"]
            if not s["iscrowd"]
        }
        things = classes & set(THING_IDS)
        pq_c = (n_c - 1) / (n_c - 1 + 0.5)  # tp = n_c - 1 (IoU 1 each), fn = 1
        res = evaluate_cityscapes_panoptic(self.gt_json, self.gt_folder, pred_json, pred_dir)
        self.assertAlmostEqual(res["PQ"], 100 * (len(classes) - 1 + pq_c) / len(classes), places=9)
        self.assertAlmostEqual(res["PQ_th"], 100 * (len(things) - 1 + pq_c) / len(things), places=9)
        self.assertAlmostEqual(res["SQ"], 100.0, places=9)
        self.assertEqual(res["PQ_st"], 100.0)
        parallel = evaluate_cityscapes_panoptic(
            self.gt_json, self.gt_folder, pred_json, pred_dir, num_workers=2
        )
        self.assertEqual(parallel, res)

    def test_equals_official_script_on_perturbed_predictions(self):
        """seg2's PQ engine against cityscapesscripts' evalPanopticSemanticLabeling (the
        reference implementation) on predictions with dropped, shifted and relabelled segments."""
        import cityscapesscripts.evaluation.evalPanopticSemanticLabeling as cs_eval

        gt = json.load(open(self.gt_json))
        pred_dir = os.path.join(self.root, "pan_perturbed")
        os.makedirs(pred_dir, exist_ok=True)
        rng = np.random.default_rng(0)
        stuff = [c["id"] for c in gt["categories"] if not c["isthing"]]
        pred = json.loads(json.dumps(gt))
        for ann in pred["annotations"]:
            rgb = np.array(Image.open(os.path.join(self.gt_folder, ann["file_name"]))).astype(np.int64)
            ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
            segs = list(ann["segments_info"])
            for s in segs[:: max(1, len(segs) // 3)]:
                mask = ids == s["id"]
                shift = tuple(int(v) for v in rng.integers(-3, 4, size=2))
                ids[mask] = 0
                ids[np.roll(mask, shift, axis=(0, 1))] = s["id"]
            if len(segs) > 2:
                segs[1] = dict(segs[1], category_id=stuff[0] if segs[1]["category_id"] != stuff[0] else stuff[1])
                segs = segs[:-1]  # its pixels stay in the PNG: drop them to void
                ids[~np.isin(ids, [s["id"] for s in segs])] = 0
            present = set(np.unique(ids).tolist())
            ann["segments_info"] = [s for s in segs if s["id"] in present]
            rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
            Image.fromarray(rgb).save(os.path.join(pred_dir, ann["file_name"]))
        pred_json = os.path.join(self.root, "pan_perturbed.json")
        json.dump(pred, open(pred_json, "w"))

        ours = evaluate_cityscapes_panoptic(self.gt_json, self.gt_folder, pred_json, pred_dir)
        pairs = [(g, p) for g, p in zip(gt["annotations"], pred["annotations"])]
        categories = {c["id"]: c for c in gt["categories"]}
        with contextlib.redirect_stdout(io.StringIO()):
            stat = cs_eval.pq_compute_single_core(0, pairs, self.gt_folder, pred_dir, categories)
        for suffix, isthing in (("", None), ("_th", True), ("_st", False)):
            ref, _ = stat.pq_average(categories, isthing=isthing)
            for key in ("pq", "sq", "rq"):
                self.assertAlmostEqual(ours[key.upper() + suffix], 100 * ref[key], places=9)
        self.assertLess(ours["PQ"], 99.0)  # the perturbation did change the figures

    def test_missing_image_names_the_json(self):
        gt = json.load(open(self.gt_json))
        pred = {"annotations": gt["annotations"][1:]}
        path = os.path.join(self.root, "pan_short.json")
        json.dump(pred, open(path, "w"))
        with self.assertRaisesRegex(
            InputError, f"{path}: no prediction for .*{gt['annotations'][0]['image_id']}"
        ):
            evaluate_cityscapes_panoptic(self.gt_json, self.gt_folder, path, self.gt_folder)


class TestRegistrationAndEvaluators(unittest.TestCase):
    """register_cityscapes + the model-facing evaluators, fed outputs made from the GT."""

    @classmethod
    def setUpClass(cls):
        cls.root = _copy_tree()
        for f in glob.glob(os.path.join(cls.root, "gtFine", "val", "*", "*_labelTrainIds.png")):
            os.remove(f)  # regenerated by the semantic loader
        cls.prefix = f"seg2_test_cs{id(cls)}"
        cls.names = register_cityscapes(cls.root, prefix=cls.prefix, splits=("val",))
        cls.out = tempfile.mkdtemp(prefix="seg2-cs-out-")

    def test_names_and_train_ids(self):
        self.assertEqual(
            sorted(self.names),
            sorted(f"{self.prefix}_val_{t}" for t in ("instance_seg", "sem_seg", "panoptic")),
        )
        self.assertEqual(
            MetadataCatalog.get(f"{self.prefix}_val_sem_seg").evaluator_type, "cityscapes_sem_seg"
        )
        dicts = DatasetCatalog.get(f"{self.prefix}_val_sem_seg")
        ref_root = os.path.join(tiny_synthetic_root(), "cityscapes", "gtFine", "val")
        for d in dicts:  # our label-id -> train-id map equals the generator's own train-id files
            ref = os.path.join(ref_root, *d["sem_seg_file_name"].split(os.sep)[-2:])
            np.testing.assert_array_equal(
                np.array(Image.open(d["sem_seg_file_name"])), np.array(Image.open(ref))
            )
        self.assertEqual(ensure_train_id_labels(os.path.join(self.root, "gtFine", "val")), 0)

    def test_semantic_evaluator(self):
        name = f"{self.prefix}_val_sem_seg"
        ev = build_cityscapes_evaluator("semantic", name, self.out)
        ev.reset()
        for d in DatasetCatalog.get(name):
            train = torch.from_numpy(np.array(Image.open(d["sem_seg_file_name"])).astype(np.int64))
            logits = torch.nn.functional.one_hot(train.clamp(max=18), 19).permute(2, 0, 1).float()
            logits[:, train == 255] = 0  # void: argmax 0 (road) there, which the GT ignores
            ev.process([d], [{"sem_seg": logits}])
        res = ev.evaluate()["sem_seg"]
        self.assertEqual(res["IoU"], 100.0)
        # The written results are in the official format: the CLI re-scores them identically.
        again = evaluate_cityscapes_folder(
            "semantic", self.root, os.path.join(self.out, "cityscapes_semantic_results")
        )
        self.assertEqual(again, res)

    def test_semantic_evaluator_on_the_panoptic_split(self):
        """The panoptic split's semantic targets (things first) map back to label ids: the
        targets as predictions score 100."""
        name = f"{self.prefix}_val_panoptic"
        ev = build_cityscapes_evaluator("semantic", name)
        ev.reset()
        for d in DatasetCatalog.get(name):
            target = torch.from_numpy(np.array(Image.open(d["sem_seg_file_name"])).astype(np.int64))
            self.assertLessEqual(set(target.unique().tolist()), {0, 2, 7, 8, 10, 16, 18, 255})
            logits = torch.nn.functional.one_hot(target.clamp(max=18), 19).permute(2, 0, 1).float()
            logits[:, target == 255] = 0
            ev.process([d], [{"sem_seg": logits}])
        self.assertEqual(ev.evaluate()["sem_seg"]["IoU"], 100.0)

    def test_instance_evaluator(self):
        name = f"{self.prefix}_val_instance_seg"
        meta = MetadataCatalog.get(name)
        ev = build_cityscapes_evaluator("instance", name)
        ev.reset()
        for d in DatasetCatalog.get(name):
            city = os.path.basename(os.path.dirname(d["file_name"]))
            inst_png = os.path.join(
                meta.gt_dir, city, _stem(d["file_name"]) + "_gtFine_instanceIds.png"
            )
            inst = np.array(Image.open(inst_png))
            ids = [v for v in np.unique(inst) if v >= 1000]
            out = Instances(inst.shape)
            out.pred_masks = torch.from_numpy(
                np.stack([inst == v for v in ids]).reshape(-1, *inst.shape)
            )
            out.pred_classes = torch.tensor(
                [meta.thing_classes.index(THING_IDS[v // 1000]) for v in ids]
            )
            out.scores = torch.ones(len(ids))
            out.pred_boxes = Boxes(torch.zeros(len(ids), 4))
            ev.process([d], [{"instances": out}])
        res = ev.evaluate()["segm"]
        self.assertEqual((res["AP"], res["AP50"]), (100.0, 100.0))

    def test_panoptic_evaluator(self):
        name = f"{self.prefix}_val_panoptic"
        meta = MetadataCatalog.get(name)
        dicts = DatasetCatalog.get(name)  # generates the panoptic GT of this copy
        ev = build_cityscapes_evaluator("panoptic", name, self.out)
        ev.reset()
        for d in dicts:
            rgb = np.array(Image.open(d["pan_seg_file_name"])).astype(np.int64)
            ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
            seg = np.zeros_like(ids)
            info = []
            for k, s in enumerate(d["segments_info"], start=1):  # contiguous ids
                seg[ids == s["id"]] = k
                info.append({"id": k, "category_id": s["category_id"], "isthing": s["isthing"]})
            ev.process([d], [{"panoptic_seg": (torch.from_numpy(seg), info)}])
        res = ev.evaluate()["panoptic_seg"]
        self.assertEqual((res["PQ"], res["PQ_th"], res["PQ_st"]), (100.0, 100.0, 100.0))
        # One class order for the panoptic data: the 8 instance classes (label-id order), then
        # the 11 stuff classes (cityscapesscripts' labels.py, written here independently).
        self.assertEqual(meta.thing_dataset_id_to_contiguous_id, PANOPTIC_THINGS)
        self.assertEqual(
            meta.stuff_dataset_id_to_contiguous_id,
            {**PANOPTIC_THINGS, **{c: 8 + i for i, c in enumerate(PANOPTIC_STUFF)}},
        )


if __name__ == "__main__":
    unittest.main()
