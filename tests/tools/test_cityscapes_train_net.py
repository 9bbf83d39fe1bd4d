"""The shipped Cityscapes configs through ``tools/train_net.py`` on a tree laid out as users
download it (found through ``DETECTRON2_DATASETS``): city sub-folders, Cityscapes file names
and label ids, ``labelIds`` + ``instanceIds`` only (no ``labelTrainIds``, no panoptic files:
derived), once without and once with ``*_gtFine_polygons.json``. Each task trains 2
iterations at 64 px, then ``--eval-only`` loads the checkpoint; both runs give the same
figures, and those equal cityscapesscripts run directly (in its own process) on the results
the evaluators wrote."""

import glob
import json
import os
import shutil
import tempfile
import textwrap
import unittest

import numpy as np
import pycocotools.mask as mask_util
import torch
from detectron2.data import DatasetCatalog
from PIL import Image

from seg2.data.cityscapes import load_cityscapes_instances, register_cityscapes
from seg2.data.dataset_mapper import Seg2DatasetMapper
from seg2.data.synthetic import generate
from seg2.io import InputError
from seg2_testing import get_seg2_cfg, run_tool, subprocess_env

# cityscapesscripts' labels.py, written here independently.
THING_LABEL_IDS = [24, 25, 26, 27, 28, 31, 32, 33]
EVALUATED_LABEL_IDS = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23] + THING_LABEL_IDS
LABEL_TO_TRAIN = {7: 0, 11: 2, 21: 8, 23: 10, 24: 11, 26: 13, 33: 18}  # the generator's classes

SEMANTIC = "Cityscapes-SemanticSegmentation/fcn8s_R_50_cityscapes.yaml"
INSTANCE = "Cityscapes-InstanceSegmentation/mask_rcnn_R_50_FPN.yaml"
PANOPTIC = "Cityscapes-PanopticSegmentation/fcn8s_rcnn_R_50_FPN_cityscapes.yaml"
PANOPTIC_BRANCHES = [
    PANOPTIC,
    "Cityscapes-PanopticSegmentation/unet_rcnn_R_50_FPN_cityscapes.yaml",
    "Cityscapes-PanopticSegmentation/deconvnet_rcnn_R_50_FPN_cityscapes.yaml",
]
TINY = [
    "MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", "SEED", "1",
    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2", "SOLVER.WARMUP_ITERS", "1",
    "SOLVER.STEPS", "()", "SOLVER.CHECKPOINT_PERIOD", "1000", "DATALOADER.NUM_WORKERS", "0",
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "128",
    "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "128", "TEST.SEG2.NUM_VIS", "1",
    # Keep every detection of the barely trained models, so instance results are written
    # (from random weights, the recipes' learning rates leave the RPN without proposals after
    # two steps; a small one keeps it proposing).
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "TEST.DETECTIONS_PER_IMAGE", "20",
    "SOLVER.BASE_LR", "0.0001", "MODEL.SEG2.FUSION.STUFF_AREA_LIMIT", "16",
]
SEMANTIC_TINY = ["INPUT.CROP.SIZE", "(64, 64)"]
CITIES = ("aachen", "zurich")
TMP = None


def _user_tree(src: str, dst: str, polygons: bool) -> None:
    """Copy the generator's Cityscapes tree into the standard layout, images spread over two
    cities (renamed accordingly), keeping only what a download has."""
    keep = ["labelIds", "instanceIds"] + (["polygons"] if polygons else [])
    for split in ("train", "val"):
        images = sorted(glob.glob(os.path.join(src, "leftImg8bit", split, "*", "*.png")))
        for i, image in enumerate(images):
            stem = os.path.basename(image)[: -len("_leftImg8bit.png")]
            city = CITIES[i % 2]
            new = city + stem[stem.index("_"):]
            os.makedirs(os.path.join(dst, "leftImg8bit", split, city), exist_ok=True)
            os.makedirs(os.path.join(dst, "gtFine", split, city), exist_ok=True)
            shutil.copy(image, os.path.join(dst, "leftImg8bit", split, city, new + "_leftImg8bit.png"))
            gt = os.path.join(os.path.dirname(image.replace("leftImg8bit", "gtFine", 1)), stem)
            for kind in keep:
                ext = ".json" if kind == "polygons" else ".png"
                shutil.copy(
                    f"{gt}_gtFine_{kind}{ext}",
                    os.path.join(dst, "gtFine", split, city, f"{new}_gtFine_{kind}{ext}"),
                )


def setUpModule():
    global TMP
    TMP = tempfile.mkdtemp(prefix="seg2-cs-train-")
    synthetic = os.path.join(TMP, "synthetic")
    generate(synthetic, seed=0, num_train=2, num_val=3, size=64)
    for name, polygons in (("plain", False), ("polygons", True)):
        _user_tree(os.path.join(synthetic, "cityscapes"), os.path.join(TMP, name, "cityscapes"), polygons)


def _root(tree: str) -> str:
    return os.path.join(TMP, tree, "cityscapes")


def train_net(tree, config, out, *args, check=True):
    env = subprocess_env(DETECTRON2_DATASETS=os.path.join(TMP, tree))
    env.pop("SEG2_DEBUG", None)
    proc = run_tool(
        ["tools/train_net.py", "--config-file", os.path.join("configs", config),
         *args, "OUTPUT_DIR", out],
        env=env,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"train_net failed ({proc.returncode}):\n{proc.stderr[-5000:]}")
    return proc


# The official scripts, run in a process of their own (their ground-truth cache and match
# dump go to its working folder), on the files seg2's evaluators wrote.
_REFERENCE = textwrap.dedent(
    """
    import contextlib, glob, io, json, os, sys
    task, gt_dir, pred, extra = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    out = {}
    with contextlib.redirect_stdout(io.StringIO()):
        if task == "semantic":
            import cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling as ev
            ev.args.predictionPath, ev.args.JSONOutput, ev.args.quiet = pred, False, True
            gts = sorted(glob.glob(os.path.join(gt_dir, "*", "*_gtFine_labelIds.png")))
            res = ev.evaluateImgLists([ev.getPrediction(ev.args, g) for g in gts], gts, ev.args)
            out = {"IoU": res["averageScoreClasses"], "iIoU": res["averageScoreInstClasses"],
                   "IoU_sup": res["averageScoreCategories"],
                   "iIoU_sup": res["averageScoreInstCategories"],
                   "class": res["classScores"], "inst": res["classInstScores"]}
        elif task == "instance":
            import cityscapesscripts.evaluation.evalInstanceLevelSemanticLabeling as ev
            ev.args.predictionPath, ev.args.JSONOutput, ev.args.quiet = pred, False, True
            ev.args.gtInstancesFile = os.path.abspath("gtInstances.json")
            gts = sorted(glob.glob(os.path.join(gt_dir, "*", "*_gtFine_instanceIds.png")))
            res = ev.evaluateImgLists([ev.getPrediction(g, ev.args) for g in gts], gts, ev.args)
            avg = res["averages"]
            out = {"AP": avg["allAp"], "AP50": avg["allAp50%"],
                   "class": {k: v["ap"] for k, v in avg["classes"].items()}}
        else:
            import cityscapesscripts.evaluation.evalPanopticSemanticLabeling as ev
            res = ev.evaluatePanoptic(*extra, pred, os.path.abspath("panoptic.json"))
            out = {k: res[k] for k in ("All", "Things", "Stuff")}
    print(json.dumps(out))
    """
)


def official(task, gt_dir, pred, *extra):
    work = tempfile.mkdtemp(dir=TMP)
    proc = run_tool(
        ["-c", _REFERENCE, task, gt_dir, pred, *extra], env=subprocess_env(), cwd=work, timeout=300
    )
    if proc.returncode != 0:
        raise AssertionError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


class CityscapesCase(unittest.TestCase):
    def _train_and_eval(self, tree, config, *extra):
        """Train 2 iterations (no evaluation: the subprocesses are the cost of this file),
        then --eval-only from the checkpoint; returns (results, eval-only OUTPUT_DIR)."""
        out = tempfile.mkdtemp(dir=TMP)
        train_net(tree, config, os.path.join(out, "train"), *TINY, *extra, "DATASETS.TEST", "()")
        weights = os.path.join(out, "train", "model_final.pth")
        self.assertTrue(os.path.isfile(weights))
        train_net(tree, config, os.path.join(out, "eval"), "--eval-only", *TINY, *extra,
                  "MODEL.WEIGHTS", weights)
        evaluated = json.load(open(os.path.join(out, "eval", "eval_results.json")))
        self.assertTrue(os.path.isfile(os.path.join(out, "eval", "vis", "overview.png")))
        return evaluated, os.path.join(out, "eval")

    def _assert_semantic_official(self, res, pred_dir, gt_dir):
        ref = official("semantic", gt_dir, pred_dir)
        for key in ("IoU", "iIoU", "IoU_sup", "iIoU_sup"):
            self.assertAlmostEqual(res[key], 100 * ref[key], places=9, msg=key)
        for name, score in ref["class"].items():
            self.assertEqual(f"IoU-{name}" in res, not np.isnan(score), name)
            if not np.isnan(score):
                self.assertAlmostEqual(res[f"IoU-{name}"], 100 * score, places=9, msg=name)
        for name, score in ref["inst"].items():
            if not np.isnan(score):
                self.assertAlmostEqual(res[f"iIoU-{name}"], 100 * score, places=9, msg=name)
        for png in glob.glob(os.path.join(pred_dir, "*.png")):  # label ids, not train ids
            self.assertLessEqual(set(np.unique(np.array(Image.open(png))).tolist()), set(EVALUATED_LABEL_IDS))

    def _assert_instance_official(self, res, pred_dir, gt_dir):
        ref = official("instance", gt_dir, pred_dir)
        self.assertAlmostEqual(res["AP"], 100 * ref["AP"], places=9)
        self.assertAlmostEqual(res["AP50"], 100 * ref["AP50"], places=9)
        for name, ap in ref["class"].items():
            self.assertEqual(f"AP-{name}" in res, not np.isnan(ap), name)
        lines = [
            line.split() for txt in glob.glob(os.path.join(pred_dir, "*_pred.txt"))
            for line in open(txt).read().splitlines()
        ]
        self.assertTrue(lines, "no instance was written")
        self.assertLessEqual({int(f[1]) for f in lines}, set(THING_LABEL_IDS))


class TestSemantic(CityscapesCase):
    def test_fcn8s_train_eval(self):
        res, out = self._train_and_eval("plain", SEMANTIC, *SEMANTIC_TINY)
        res = res["cityscapes_val_sem_seg"]["sem_seg"]
        self.assertGreater(res["IoU"], 0)
        gt_dir = os.path.join(_root("plain"), "gtFine", "val")
        pred = os.path.join(out, "inference", "cityscapes_val_sem_seg", "cityscapes_semantic_results")
        self._assert_semantic_official(res, pred, gt_dir)
        # Train ids were derived from the label ids (the generator's mapping, written here).
        for label_ids in glob.glob(os.path.join(gt_dir, "*", "*_gtFine_labelIds.png")):
            ids = np.array(Image.open(label_ids))
            expect = np.full(ids.shape, 255, np.uint8)
            for label, train in LABEL_TO_TRAIN.items():
                expect[ids == label] = train
            derived = label_ids.replace("labelIds", "labelTrainIds")
            np.testing.assert_array_equal(np.array(Image.open(derived)), expect)


class TestInstance(CityscapesCase):
    def test_mask_rcnn_train_eval(self):
        res, out = self._train_and_eval("plain", INSTANCE)
        res = res["cityscapes_val_instance_seg"]["segm"]
        pred = os.path.join(out, "inference", "cityscapes_val_instance_seg", "cityscapes_instance_results")
        self._assert_instance_official(res, pred, os.path.join(_root("plain"), "gtFine", "val"))


class TestPanoptic(CityscapesCase):
    def _check(self, tree, config, *extra):
        res, out = self._train_and_eval(tree, config, *extra)
        res = res["cityscapes_val_panoptic"]
        self.assertEqual(sorted(res), ["panoptic_seg", "segm", "sem_seg"])
        self.assertGreater(res["sem_seg"]["IoU"], 0)
        inference = os.path.join(out, "inference", "cityscapes_val_panoptic")
        gt_dir = os.path.join(_root(tree), "gtFine", "val")
        self._assert_semantic_official(
            res["sem_seg"], os.path.join(inference, "cityscapes_semantic_results"), gt_dir
        )
        self._assert_instance_official(
            res["segm"], os.path.join(inference, "cityscapes_instance_results"), gt_dir
        )
        pan = os.path.join(inference, "cityscapes_panoptic_results")
        gt_json = os.path.join(_root(tree), "gtFine", "cityscapes_panoptic_val.json")
        ref = official("panoptic", gt_dir, os.path.join(pan, "cityscapes_panoptic_val"),
                       gt_json, os.path.join(_root(tree), "gtFine", "cityscapes_panoptic_val"),
                       os.path.join(pan, "cityscapes_panoptic_val.json"))
        for suffix, part in (("", "All"), ("_th", "Things"), ("_st", "Stuff")):
            for key in ("pq", "sq", "rq"):
                self.assertAlmostEqual(
                    res["panoptic_seg"][key.upper() + suffix], 100 * ref[part][key], places=9
                )
        # One class order end to end: every predicted segment carries an evaluated label id,
        # things among the instance classes, and the image is covered by segments.
        pred = json.load(open(os.path.join(pan, "cityscapes_panoptic_val.json")))
        cats = [s["category_id"] for a in pred["annotations"] for s in a["segments_info"]]
        self.assertTrue(cats)
        self.assertLessEqual(set(cats), set(EVALUATED_LABEL_IDS))
        return res

    def test_unet_branch_from_polygons(self):
        """Instances drawn from the polygon files (the instance and semantic runs read the
        PNGs of the tree without them)."""
        self._check("polygons", PANOPTIC_BRANCHES[1], "DATASETS.SEG2.CITYSCAPES_POLYGONS", "True")


class TestDataInProcess(unittest.TestCase):
    def test_polygon_instances_match_instance_ids(self):
        """The polygon files are the generator's contours of the masks in instanceIds: drawn
        as json2instanceImg does, they give the same instances up to boundary pixels."""
        root = _root("polygons")
        from_png = load_cityscapes_instances(root, "val")
        from_json = load_cityscapes_instances(root, "val", polygons=True)
        self.assertEqual([d["file_name"] for d in from_png], [d["file_name"] for d in from_json])
        n = 0
        for a, b in zip(from_png, from_json):
            self.assertEqual(
                [(x["category_id"], x["iscrowd"]) for x in a["annotations"]],
                [(x["category_id"], x["iscrowd"]) for x in b["annotations"]],
            )
            for x, y in zip(a["annotations"], b["annotations"]):
                iou = mask_util.iou([x["segmentation"]], [y["segmentation"]], [0])[0, 0]
                self.assertGreater(iou, 0.9)
                n += 1
        self.assertGreater(n, 3)

    def test_panoptic_targets_share_one_class_order(self):
        """The mapper's instances (from the panoptic PNG, or drawn from the polygon files) and
        semantic targets of the panoptic split use one order: instance class c is semantic
        class c (0-7); the generator's stuff (road, building, vegetation, sky) is 8-18."""
        cfg = get_seg2_cfg(PANOPTIC)
        cfg.merge_from_list(TINY)
        mapper = Seg2DatasetMapper(cfg, is_train=True)
        for tree, polygons in (("plain", False), ("polygons", True)):
            prefix = f"cstest_order_{tree}"
            register_cityscapes(_root(tree), prefix=prefix, splits=("train",), polygons=polygons)
            dicts = DatasetCatalog.get(f"{prefix}_train_panoptic")
            self.assertEqual(all("annotations" in d for d in dicts), polygons)
            n = 0
            for d in dicts:
                b = mapper(d)
                sem, inst = b["sem_seg"], b["instances"]
                labels = set(sem.unique().tolist()) - {255}
                self.assertLessEqual(labels, {0, 2, 7, 8, 10, 16, 18})  # person car bicycle road building vegetation sky
                self.assertTrue(labels & {8, 10, 16, 18})
                for c, m in zip(inst.gt_classes.tolist(), inst.gt_masks.tensor):
                    self.assertIn(c, (0, 2, 7))
                    self.assertEqual(int(sem[m].mode().values), c)
                    n += 1
            self.assertGreater(n, 2)

    def test_bad_trees_name_the_file(self):
        root = os.path.join(tempfile.mkdtemp(dir=TMP), "cityscapes")
        shutil.copytree(_root("plain"), root)
        gt = os.path.join(root, "gtFine", "val", "zurich")
        stem = os.path.basename(sorted(glob.glob(os.path.join(gt, "*_labelIds.png")))[0])[:-len("_gtFine_labelIds.png")]
        image = os.path.join(root, "leftImg8bit", "val", "zurich", stem + "_leftImg8bit.png")

        def load(kind, split="val", polygons=False):
            name = f"cstest_bad{len(DatasetCatalog.list())}"
            register_cityscapes(root, prefix=name, splits=(split,), polygons=polygons)
            return DatasetCatalog.get(f"{name}_{split}_{kind}")

        with self.assertRaisesRegex(InputError, f"{root}/gtFine/val/aachen/aachen_\\d+_\\d+_gtFine_polygons.json: polygon file not found"):
            load("instance_seg", polygons=True)
        os.remove(os.path.join(gt, stem + "_gtFine_instanceIds.png"))
        with self.assertRaisesRegex(InputError, f"{stem}_gtFine_instanceIds.png: gtFine file not found \\(labels of {image}\\)"):
            load("panoptic")
        self.assertEqual(len(load("sem_seg")), 3)  # semantic needs only the label ids
        os.remove(os.path.join(gt, stem + "_gtFine_labelIds.png"))
        with self.assertRaisesRegex(InputError, f"{image}: image without labels"):
            load("sem_seg")
        shutil.rmtree(os.path.join(root, "leftImg8bit", "train"))
        with self.assertRaisesRegex(InputError, f"{root}/leftImg8bit/train: Cityscapes leftImg8bit/train folder not found"):
            load("instance_seg", split="train")

    def test_train_net_error_is_one_line_exit_2(self):
        """--eval-only needs only the val split (train is gone here) and stops, exit 2, on
        polygons asked for but absent."""
        tree = tempfile.mkdtemp(dir=TMP)
        shutil.copytree(_root("plain"), os.path.join(tree, "cityscapes"))
        shutil.rmtree(os.path.join(tree, "cityscapes", "leftImg8bit", "train"))
        weights = os.path.join(tree, "model.pth")  # evaluating needs weights; never loaded here
        torch.save({"model": {}}, weights)
        proc = train_net(os.path.relpath(tree, TMP), INSTANCE, os.path.join(tree, "out"),
                         "--eval-only", *TINY, "MODEL.WEIGHTS", weights,
                         "DATASETS.SEG2.CITYSCAPES_POLYGONS", "True", check=False)
        self.assertEqual(proc.returncode, 2, proc.stderr[-3000:])
        last = proc.stderr.strip().splitlines()[-1]
        self.assertRegex(last, r"^error: .*/gtFine/val/aachen/aachen_\d+_\d+_gtFine_polygons\.json: polygon file not found")
        self.assertNotIn("Traceback", proc.stderr)


if __name__ == "__main__":
    unittest.main()
