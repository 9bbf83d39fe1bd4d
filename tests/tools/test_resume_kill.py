"""Exact resume through the real entry point: a training run killed with SIGKILL and
restarted with --resume ends with the same weights, bit for bit, as an uninterrupted run
with the same seed (CPU). The reference loads data in the main process, the killed and
resumed runs with two loader workers: the data stream must not depend on either."""

import glob
import os
import signal
import subprocess
import sys
import tempfile
import time
import unittest

import torch

from seg2.data.synthetic import generate
from seg2_testing import REPO_ROOT

CFG = "configs/Synthetic-InstanceSegmentation/mask_rcnn_R_18_FPN_synthetic.yaml"
# STEPS (6,) puts an LR drop after the resume point: the scheduler must be restored too.
ARGS = [
    "SEED",
    "7",
    "SOLVER.MAX_ITER",
    "10",
    "SOLVER.CHECKPOINT_PERIOD",
    "3",
    "SOLVER.IMS_PER_BATCH",
    "2",
    "SOLVER.WARMUP_ITERS",
    "2",
    "SOLVER.STEPS",
    "(6,)",
    "DATASETS.TEST",
    "()",
    "TEST.SEG2.NUM_VIS",
    "0",
    "MODEL.DEVICE",
    "cpu",
    "INPUT.MIN_SIZE_TRAIN",
    "(64,)",
    "INPUT.MAX_SIZE_TRAIN",
    "96",
]


def _cmd(out, workers, *extra):
    return [
        sys.executable,
        "tools/train_net.py",
        "--config-file",
        CFG,
        *extra,
        "OUTPUT_DIR",
        out,
        "DATALOADER.NUM_WORKERS",
        str(workers),
        *ARGS,
    ]


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


class TestKillAndResume(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="seg2-resume-")
        generate(os.path.join(cls.tmp, "synthetic"), seed=0, num_train=8, num_val=2, size=64)
        cls.env = dict(os.environ, DETECTRON2_DATASETS=cls.tmp, OMP_NUM_THREADS="1")

    def _run(self, cmd):
        p = subprocess.run(
            cmd, cwd=REPO_ROOT, env=self.env, capture_output=True, text=True, timeout=600
        )
        self.assertEqual(p.returncode, 0, p.stderr[-4000:])
        return p.stdout + p.stderr

    def test_sigkill_then_resume_is_bit_identical(self):
        ref = os.path.join(self.tmp, "ref")
        self._run(_cmd(ref, 0))

        out = os.path.join(self.tmp, "killed")
        proc = subprocess.Popen(
            _cmd(out, 2),
            cwd=REPO_ROOT,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.time() + 300
            while (
                not os.path.exists(os.path.join(out, "model_0000002.pth")) and proc.poll() is None
            ):
                self.assertLess(time.time(), deadline)
                time.sleep(0.02)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait()
        self.assertEqual(proc.returncode, -signal.SIGKILL, "finished before it could be killed")
        self.assertFalse(os.path.exists(os.path.join(out, "model_final.pth")))

        log = self._run(_cmd(out, 2, "--resume"))
        start = int(log.split("Starting training from iteration ")[1].split()[0])
        self.assertIn(start, (3, 6, 9))
        self.assertEqual(glob.glob(os.path.join(out, "*.tmp")), [])

        a, b = _weights(os.path.join(ref, "model_final.pth")), _weights(
            os.path.join(out, "model_final.pth")
        )
        self.assertEqual(a.keys(), b.keys())
        differing = [k for k in a if not torch.equal(a[k], b[k])]
        self.assertEqual(differing, [], f"resumed from iteration {start}")
        # and the run really trained: the weights moved away from the first checkpoint
        first = _weights(os.path.join(ref, "model_0000002.pth"))
        self.assertTrue(any(not torch.equal(first[k], a[k]) for k in a if a[k].is_floating_point()))


if __name__ == "__main__":
    unittest.main()
