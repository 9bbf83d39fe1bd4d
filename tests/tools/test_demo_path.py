"""The panoptic train-and-evaluate path of ``make demo`` (same config and command, a few
iterations on tiny images): the evaluators chosen for a panoptic dataset, the results file's
shape and keys (Detectron2's metric names for each task), Detectron2's iteration log left
intact in metrics.json, and fine-tuning from the run's weights loading them exactly."""

import json
import os
import tempfile
import unittest

import torch
from detectron2.data import MetadataCatalog

from seg2.data.builtin import register_synthetic
from seg2.data.synthetic import generate
from seg2.engine import Seg2Trainer
from seg2.evaluation.coco_evaluator import Seg2COCOEvaluator
from seg2.evaluation.panoptic import Seg2PanopticEvaluator
from seg2.evaluation.semantic_evaluator import Seg2SemSegEvaluator
from seg2_testing import get_seg2_cfg, run_tool, subprocess_env

DEMO_CFG = (
    "Synthetic-PanopticSegmentation/fcn8s_rcnn_R_18_FPN_demo_synthetic.yaml"  # Makefile's DEMO_CFG
)
SMALL = [
    "SOLVER.MAX_ITER",
    "3",
    "SOLVER.IMS_PER_BATCH",
    "2",
    "SOLVER.WARMUP_ITERS",
    "1",
    "SOLVER.STEPS",
    "()",
    "DATALOADER.NUM_WORKERS",
    "0",
    "MODEL.DEVICE",
    "cpu",
    "INPUT.MIN_SIZE_TRAIN",
    "(64,)",
    "INPUT.MIN_SIZE_TEST",
    "64",
    "TEST.SEG2.NUM_VIS",
    "1",
    "SEED",
    "3",
]


class TestDemoPath(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="seg2-demo-")
        root = os.path.join(cls.tmp, "synthetic")
        generate(root, seed=0, num_train=4, num_val=2, size=64)
        register_synthetic(root, prefix="demopath")
        cls.out = os.path.join(cls.tmp, "demo")
        cls.proc = run_tool(
            [
                "tools/train_net.py",
                "--config-file",
                os.path.join("configs", DEMO_CFG),
                *SMALL,
                "OUTPUT_DIR",
                cls.out,
            ],
            env=subprocess_env(DETECTRON2_DATASETS=cls.tmp),
        )

    def test_results_file(self):
        self.assertEqual(self.proc.returncode, 0, self.proc.stderr[-4000:])
        results = json.load(open(os.path.join(self.out, "eval_results.json")))
        self.assertEqual(list(results), ["synthetic_val_panoptic"])
        tasks = results["synthetic_val_panoptic"]
        self.assertEqual(sorted(tasks), ["bbox", "panoptic_seg", "segm", "sem_seg"])
        meta = MetadataCatalog.get("demopath_val_panoptic")
        # Detectron2's names: COCOEvaluator, SemSegEvaluator, COCOPanopticEvaluator
        for iou in ("bbox", "segm"):
            self.assertEqual(
                set(tasks[iou]),
                {"AP", "AP50", "AP75", "APs", "APm", "APl"}
                | {f"AP-{c}" for c in meta.thing_classes},
            )
        self.assertLessEqual(
            {"mIoU", "fwIoU", "mACC", "pACC"}
            | {f"IoU-{c}" for c in meta.stuff_classes}
            | {f"ACC-{c}" for c in meta.stuff_classes},
            set(tasks["sem_seg"]),
        )
        self.assertLessEqual(
            {f"{m}{s}" for m in ("PQ", "SQ", "RQ") for s in ("", "_th", "_st")},
            set(tasks["panoptic_seg"]),
        )
        for metrics in tasks.values():
            self.assertTrue(all(isinstance(v, float) for v in metrics.values()))
        inference = os.path.join(self.out, "inference", "synthetic_val_panoptic")
        self.assertTrue(os.path.isfile(os.path.join(inference, "coco_instances_results.json")))
        self.assertTrue(os.path.isfile(os.path.join(self.out, "vis", "overview.png")))

    def test_training_log_kept(self):
        self.assertEqual(self.proc.returncode, 0, self.proc.stderr[-4000:])
        records = [json.loads(line) for line in open(os.path.join(self.out, "metrics.json"))]
        self.assertEqual([r["iteration"] for r in records if "total_loss" in r], [2])
        self.assertIn("loss_sem_seg_ce", records[0])
        self.assertIn("synthetic_val_panoptic/panoptic_seg/PQ", records[-1])

    def test_evaluators_for_a_panoptic_dataset(self):
        cfg = get_seg2_cfg(DEMO_CFG)
        cfg.OUTPUT_DIR = self.tmp
        evaluators = Seg2Trainer.build_evaluator(cfg, "demopath_val_panoptic")._evaluators
        self.assertEqual(
            [type(e) for e in evaluators],
            [Seg2COCOEvaluator, Seg2SemSegEvaluator, Seg2PanopticEvaluator],
        )

    def test_fine_tune_from_model_weights(self):
        self.assertEqual(self.proc.returncode, 0, self.proc.stderr[-4000:])
        weights = os.path.join(self.out, "model_final.pth")
        cfg = get_seg2_cfg(DEMO_CFG)
        cfg.merge_from_list(
            SMALL
            + [
                "MODEL.WEIGHTS",
                weights,
                "OUTPUT_DIR",
                os.path.join(self.tmp, "ft"),
                "DATASETS.TRAIN",
                "('demopath_train_panoptic',)",
                "DATASETS.TEST",
                "()",
            ]
        )
        trainer = Seg2Trainer(cfg)
        trainer.resume_or_load(resume=False)
        saved = torch.load(weights, map_location="cpu", weights_only=True)["model"]
        loaded = trainer.model.state_dict()
        self.assertEqual(set(saved), set(loaded))
        self.assertEqual([k for k in saved if not torch.equal(saved[k], loaded[k])], [])
        self.assertEqual(trainer.start_iter, 0)


if __name__ == "__main__":
    unittest.main()
