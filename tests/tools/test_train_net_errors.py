"""User errors through the real entry point end with one line naming the source, exit status
2 and no traceback, in one process and in two (gloo) processes; SEG2_DEBUG=1 brings the
traceback back. Detailed messages are tested in-process (tests/engine/test_config_check.py)."""

import glob
import os
import tempfile
import unittest

from seg2.data.synthetic import generate
from seg2_testing import REPO_ROOT, run_tool, subprocess_env

INSTANCE = os.path.join(
    REPO_ROOT, "configs", "Synthetic-InstanceSegmentation", "mask_rcnn_R_18_FPN_synthetic.yaml"
)
PANOPTIC = os.path.join(
    REPO_ROOT, "configs", "Synthetic-PanopticSegmentation", "fcn8s_rcnn_R_18_FPN_synthetic.yaml"
)
SMALL = [
    "SOLVER.IMS_PER_BATCH",
    "2",
    "DATALOADER.NUM_WORKERS",
    "0",
    "TEST.SEG2.NUM_VIS",
    "0",
    "MODEL.DEVICE",
    "cpu",
    "INPUT.MIN_SIZE_TRAIN",
    "(64,)",
    "INPUT.MIN_SIZE_TEST",
    "64",
    "SOLVER.MAX_ITER",
    "3",
]


class TestTrainNetErrors(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="seg2-errors-")
        generate(os.path.join(cls.tmp, "synthetic"), seed=0, num_train=4, num_val=2, size=64)
        cls.mid = os.path.join(cls.tmp, "mid.yaml")
        with open(cls.mid, "w") as f:
            f.write(f'_BASE_: "{INSTANCE}"\nMODEL:\n  ROI_HEADS:\n    NUM_CLASES: 3\n')
        cls.leaf = os.path.join(cls.tmp, "leaf.yaml")
        with open(cls.leaf, "w") as f:
            f.write('_BASE_: "mid.yaml"\n')

    def run_tool(self, *args, debug=False):
        env = subprocess_env(DETECTRON2_DATASETS=self.tmp, SEG2_DEBUG="1" if debug else "")
        out = os.path.join(self.tmp, f"out{len(os.listdir(self.tmp))}")
        p = run_tool(["tools/train_net.py", *args, "OUTPUT_DIR", out], env=env)
        return (
            p.returncode,
            p.stdout + p.stderr,
            p.stderr.strip().splitlines()[-1] if p.stderr.strip() else "",
            out,
        )

    def test_unknown_key_in_base_yaml(self):
        code, log, last, _ = self.run_tool("--config-file", self.leaf)
        self.assertEqual(code, 2)
        self.assertNotIn("Traceback", log)
        self.assertEqual(
            last,
            f"error: {self.mid}: unknown config key MODEL.ROI_HEADS.NUM_CLASES; "
            "did you mean MODEL.ROI_HEADS.NUM_CLASSES?",
        )
        code, log, _, _ = self.run_tool("--config-file", self.leaf, debug=True)
        self.assertEqual(code, 1)
        self.assertIn("Traceback", log)
        self.assertIn("ConfigError", log)

    def test_two_processes(self):
        code, log, _, _ = self.run_tool(
            "--num-gpus",
            "2",
            "--dist-url",
            "auto",
            "--config-file",
            INSTANCE,
            *SMALL,
            "MODEL.ROI_HEADS.NUM_CLASSES",
            "2",
        )
        self.assertEqual(code, 2, log[-3000:])
        self.assertNotIn("Traceback", log)
        self.assertRegex(
            log,
            r"\[rank [01]\] error: MODEL\.ROI_HEADS\.NUM_CLASSES = 2 is too small: .*set MODEL\.ROI_HEADS\.NUM_CLASSES 3",
        )

    def test_non_finite_loss(self):
        # 1e999 parses as inf: the semantic loss term is infinite from the first iteration
        code, log, last, out = self.run_tool(
            "--config-file",
            PANOPTIC,
            *SMALL,
            "MODEL.SEM_SEG_HEAD.LOSS_WEIGHT",
            "1e999",
            "SOLVER.CHECKPOINT_PERIOD",
            "1",
        )
        self.assertEqual(code, 2, log[-3000:])
        self.assertNotIn("Traceback", log)
        self.assertTrue(
            last.startswith(
                "error: training stopped at iteration 0: non-finite loss terms loss_sem_seg_ce=inf (of "
            ),
            last,
        )
        self.assertIn("none (no checkpoint written yet)", last)
        self.assertEqual(glob.glob(os.path.join(out, "*.pth")), [])


if __name__ == "__main__":
    unittest.main()
