"""End-to-end smoke runs of tools/train_net.py: train a few iterations, resume, eval-only,
and a 2-process (gloo) run, on a tiny synthetic dataset."""
import json
import os
import tempfile
import unittest

from seg2_testing import run_tool, subprocess_env, tiny_synthetic_root

CFG = "configs/Synthetic-InstanceSegmentation/mask_rcnn_R_18_FPN_synthetic.yaml"
SMALL = [
    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", "()",
    "DATALOADER.NUM_WORKERS", "0", "TEST.SEG2.NUM_VIS", "2", "MODEL.DEVICE", "cpu",
    # A 4-iteration model scores below the default 0.05: keep every detection so the
    # results file has predictions whose ids can be checked; a fixed seed makes it repeatable.
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "SEED", "1",
]


def run(args, env_root):
    proc = run_tool(
        ["tools/train_net.py", "--config-file", CFG, *args],
        env=subprocess_env(DETECTRON2_DATASETS=os.path.dirname(env_root)),
    )
    if proc.returncode != 0:
        raise AssertionError(f"train_net failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc.stdout + proc.stderr


class TestTrainNet(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.root = tiny_synthetic_root()
        cls.out = tempfile.mkdtemp(prefix="seg2-train-")

    def test_train_resume_eval(self):
        out = self.out
        log = run(["OUTPUT_DIR", out, "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2", *SMALL], self.root)
        self.assertIn("eta:", log)  # progress with ETA
        metrics = json.load(open(os.path.join(out, "eval_results.json")))
        self.assertEqual(set(metrics["synthetic_val"]), {"bbox", "segm"})
        self.assertIn("AP", metrics["synthetic_val"]["segm"])
        # metrics.json stays Detectron2's JSON-lines training log, one record per logged iteration
        records = [json.loads(line) for line in open(os.path.join(out, "metrics.json"))]
        self.assertEqual([r["iteration"] for r in records if "total_loss" in r], [3])
        self.assertIn("synthetic_val/segm/AP", records[-1])  # EvalHook's scalars, Detectron2's way
        self.assertTrue(os.path.isfile(os.path.join(out, "vis", "overview.png")))
        self.assertEqual(open(os.path.join(out, "last_checkpoint")).read(), "model_final.pth")
        # predictions carry the dataset's original (non-contiguous) category ids
        preds = json.load(open(os.path.join(out, "inference", "synthetic_val", "coco_instances_results.json")))
        self.assertTrue(preds and {p["category_id"] for p in preds} <= {3, 7, 12})

        # --resume continues from the last checkpoint's iteration, not from 0
        log = run(["--resume", "OUTPUT_DIR", out, "SOLVER.MAX_ITER", "6", *SMALL], self.root)
        self.assertIn("Starting training from iteration 4", log)

        # --eval-only with MODEL.WEIGHTS
        eval_out = os.path.join(out, "eval")
        run(["--eval-only", "MODEL.WEIGHTS", os.path.join(out, "model_final.pth"), "OUTPUT_DIR", eval_out, *SMALL], self.root)
        self.assertIn("segm", json.load(open(os.path.join(eval_out, "eval_results.json")))["synthetic_val"])

    def test_two_process_gloo(self):
        out = os.path.join(self.out, "ddp")
        log = run(["--num-gpus", "2", "--dist-url", "auto", "OUTPUT_DIR", out, "SOLVER.MAX_ITER", "2", "TEST.SEG2.NUM_VIS", "0",
                   *SMALL], self.root)
        self.assertIn("world size: 2", log.lower().replace("world_size", "world size"))
        self.assertTrue(os.path.isfile(os.path.join(out, "eval_results.json")))
