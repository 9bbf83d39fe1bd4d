"""Two-process CPU evaluation (``tools/train_net.py --num-gpus 2 --eval-only``, gloo) gives
exactly the one-process figures for every evaluator: COCO (bbox, segm), semantic and PQ on
the synthetic panoptic split, and the official Cityscapes instance, semantic and panoptic
scores on the synthetic Cityscapes tree.

The weights are an untrained model whose semantic head is biased to one stuff class
(``checker``, Cityscapes ``building``): box AP, mIoU, PQ and the Cityscapes IoU are then
non-zero (asserted), so an image dropped or counted twice by the cross-process gathering
changes them. Untrained masks score 0 on mask AP and on the Cityscapes instance and panoptic
scores: there only the keys and the zeros are compared.

Exact equality holds because each image is computed the same way on both sides: one image per
forward pass (Detectron2's test loader), at the same thread count (the in-process side runs
under ``subprocess_threads``)."""

import json
import math
import os
import tempfile
import unittest

import torch

from seg2.data.builtin import register_synthetic
from seg2.data.synthetic import generate
from seg2.engine import AtomicCheckpointer, Seg2Trainer
from seg2_testing import get_seg2_cfg, run_tool, subprocess_env, subprocess_threads

PANOPTIC_CFG = "Synthetic-PanopticSegmentation/fcn8s_rcnn_R_18_FPN_synthetic.yaml"
COMMON = [
    "MODEL.DEVICE",
    "cpu",
    "INPUT.MIN_SIZE_TEST",
    "64",
    "TEST.SEG2.NUM_VIS",
    "0",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
    "0.05",
    "MODEL.SEG2.FUSION.INSTANCES_SCORE_THRESH",
    "0.9",
    "DATALOADER.NUM_WORKERS",
    "0",
    "TEST.DETECTIONS_PER_IMAGE",
    "20",
]
SETUPS = {
    # name: (extra config, test splits, semantic class the head is biased to)
    "synthetic": ([], ["val_panoptic"], 4),
    "cityscapes": (
        ["MODEL.ROI_HEADS.NUM_CLASSES", "8", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "19"],
        ["cityscapes_val_instance_seg", "cityscapes_val_sem_seg", "cityscapes_val_panoptic"],
        2,
    ),
}
# Figures that are non-zero for these weights (untrained masks score 0 mask AP; on the
# Cityscapes panoptic split, whose things come first, the biased class is "car", so no stuff).
# (cityscapesscripts' semantic score is "IoU", seg2's own "mIoU").
INFORMATIVE = {"bbox": ["AP"], "sem_seg": ["mIoU", "IoU"], "panoptic_seg": ["PQ"]}


def _same(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    return a == b


class TestTwoProcessEvaluation(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="seg2-eval2-")
        root = os.path.join(cls.tmp, "synthetic")
        generate(root, seed=0, num_train=2, num_val=5, size=64)
        register_synthetic(root, prefix="evaltwo")  # the same files under other names, in-process
        cls.env = subprocess_env(DETECTRON2_DATASETS=cls.tmp)

    def _cfg(self, name, prefix):
        extra, splits, _ = SETUPS[name]
        cfg = get_seg2_cfg(PANOPTIC_CFG)
        cfg.merge_from_list(COMMON + extra)
        cfg.DATASETS.TEST = tuple(f"{prefix}_{s}" for s in splits)
        return cfg

    def _weights(self, name):
        cfg = self._cfg(name, "evaltwo")
        torch.manual_seed(0)
        model = Seg2Trainer.build_model(cfg)
        with torch.no_grad():
            model.sem_seg_head.predictor.bias[SETUPS[name][2]] += 50.0
        path = os.path.join(self.tmp, f"{name}.pth")
        torch.save({"model": model.state_dict()}, path)
        return cfg, model, path

    def _check(self, name):
        cfg, model, weights = self._weights(name)
        cfg.OUTPUT_DIR = os.path.join(self.tmp, name + "_1")
        AtomicCheckpointer(model).load(weights)
        with subprocess_threads():  # each of the two processes runs at this count
            one = Seg2Trainer.test(cfg, model)
        one = {k.replace("evaltwo_", "synthetic_"): v for k, v in one.items()}

        out = os.path.join(self.tmp, name + "_2")
        tests = "(" + "".join(f"'synthetic_{s}'," for s in SETUPS[name][1]) + ")"
        proc = run_tool(
            [
                "tools/train_net.py",
                "--num-gpus",
                "2",
                "--dist-url",
                "auto",
                "--eval-only",
                "--config-file",
                os.path.join("configs", PANOPTIC_CFG),
                *COMMON,
                *SETUPS[name][0],
                "DATASETS.TEST",
                tests,
                "MODEL.WEIGHTS",
                weights,
                "OUTPUT_DIR",
                out,
            ],
            env=self.env,
        )
        self.assertEqual(proc.returncode, 0, proc.stderr[-4000:])
        two = json.load(open(os.path.join(out, "eval_results.json")))

        self.assertEqual(sorted(one), sorted(two))
        for dataset, tasks in one.items():
            for task, metrics in tasks.items():
                self.assertTrue(
                    _same(metrics, two[dataset][task]),
                    f"{dataset}/{task}:\n{metrics}\n{two[dataset][task]}",
                )
                headline = [metrics[k] for k in INFORMATIVE.get(task, ()) if k in metrics]
                if headline and not dataset.endswith("cityscapes_val_panoptic"):
                    self.assertGreater(headline[0], 0, f"{dataset}/{task} is not informative")
        return one

    def test_synthetic_panoptic(self):
        one = self._check("synthetic")
        self.assertEqual(
            sorted(one["synthetic_val_panoptic"]), ["bbox", "panoptic_seg", "segm", "sem_seg"]
        )

    def test_cityscapes(self):
        one = self._check("cityscapes")
        self.assertEqual(
            {k: sorted(v) for k, v in one.items()},
            {
                "synthetic_cityscapes_val_instance_seg": ["segm"],
                "synthetic_cityscapes_val_sem_seg": ["sem_seg"],
                "synthetic_cityscapes_val_panoptic": ["panoptic_seg", "segm", "sem_seg"],
            },
        )


if __name__ == "__main__":
    unittest.main()
