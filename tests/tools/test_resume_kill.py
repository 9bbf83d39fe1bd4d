"""Exact resume through the real entry point: a training run killed with SIGKILL, or stopped
with SIGTERM (as SLURM, Kubernetes and spot instances do before they kill), and restarted
with --resume ends with the same weights, bit for bit, as an uninterrupted run with the same
seed (CPU), with one and with two processes (all at the same thread count). The reference
loads data in the main process, the interrupted and resumed runs with two loader workers:
the data stream must not depend on either. While a run is alive its OUTPUT_DIR is refused to
another run."""

import glob
import os
import re
import signal
import tempfile
import time
import unittest

import torch

from seg2.data.synthetic import generate
from seg2.engine.run_lock import LOCK_FILE
from seg2.utils.cli import PREEMPTED_EXIT
from seg2_testing import run_tool, start_tool, subprocess_env

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
        cls.env = subprocess_env(DETECTRON2_DATASETS=cls.tmp)
        cls.references = {}

    def _run(self, cmd, status=0):
        p = run_tool(cmd, env=self.env)
        self.assertEqual(p.returncode, status, p.stderr[-4000:])
        return p.stdout + p.stderr

    def _reference(self, *extra):
        """model_final.pth of an uninterrupted run (once per class and process count)."""
        if extra not in self.references:
            ref = os.path.join(self.tmp, "ref" + "".join(extra).replace("-", "_"))
            self._run(_cmd(ref, 0, *extra))
            self.references[extra] = os.path.join(ref, "model_final.pth")
        return self.references[extra]

    def _wait_for(self, proc, path):
        deadline = time.time() + 300
        while not os.path.exists(path) and proc.poll() is None:
            self.assertLess(time.time(), deadline)
            time.sleep(0.02)

    def _assert_same_weights(self, ref_final, out, start):
        a, b = _weights(ref_final), _weights(os.path.join(out, "model_final.pth"))
        self.assertEqual(a.keys(), b.keys())
        differing = [k for k in a if not torch.equal(a[k], b[k])]
        self.assertEqual(differing, [], f"resumed from iteration {start}")

    def test_sigkill_then_resume_is_bit_identical(self):
        ref = os.path.dirname(self._reference())

        out = os.path.join(self.tmp, "killed")
        proc = start_tool(_cmd(out, 2), env=self.env)
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

        self._assert_same_weights(os.path.join(ref, "model_final.pth"), out, start)
        # and the run really trained: the weights moved away from the first checkpoint
        a = _weights(os.path.join(ref, "model_final.pth"))
        first = _weights(os.path.join(ref, "model_0000002.pth"))
        self.assertTrue(any(not torch.equal(first[k], a[k]) for k in a if a[k].is_floating_point()))

    def _stop_with_sigterm(self, out, extra, signal_group):
        """Start a run, SIGTERM it once it has trained a few iterations (with signal_group,
        every process of the run, SLURM's way; else only the started process, as Kubernetes
        and docker stop do); check what it leaves; returns the iteration it stopped after."""
        log_path = out + ".log"
        proc = start_tool(
            _cmd(out, 2, *extra),
            env=self.env,
            stdout=log_path,
            stderr="stdout",
            new_session=True,  # its own process group, signalled below
        )
        try:
            self._wait_for(proc, os.path.join(out, "model_0000002.pth"))
            if proc.poll() is not None:
                self.fail(f"ended ({proc.returncode}) before it could be stopped:\n"
                          + open(log_path).read()[-4000:])
            if not extra:
                # a second run on the live run's folder is refused, --resume too; the live
                # run is paused meanwhile so it cannot finish first
                os.killpg(proc.pid, signal.SIGSTOP)
                try:
                    second = self._run(_cmd(out, 0, "--resume"), status=2)
                finally:
                    os.killpg(proc.pid, signal.SIGCONT)
                errors = [line for line in second.splitlines() if line.startswith("error: ")]
                self.assertEqual(len(errors), 1, second[-3000:])
                self.assertIn(f"OUTPUT_DIR {out} is in use by another run (PID {proc.pid}", errors[0])
                self.assertNotIn("Traceback", second)
            if signal_group:
                os.killpg(proc.pid, signal.SIGTERM)
            else:
                os.kill(proc.pid, signal.SIGTERM)
            proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log = open(log_path).read()
        self.assertEqual(proc.returncode, PREEMPTED_EXIT, log[-4000:])
        self.assertNotIn("Traceback", log)
        lines = [line for line in log.splitlines() if "Stopped by SIGTERM after iteration" in line]
        self.assertEqual(len(lines), 1, log[-4000:])
        stopped = int(lines[0].split("after iteration ")[1].split(":")[0])
        name = "model_final.pth" if stopped == 9 else f"model_{stopped:07d}.pth"
        self.assertIn(os.path.join(out, name), lines[0])
        self.assertEqual(open(os.path.join(out, "last_checkpoint")).read(), name)
        saved = torch.load(os.path.join(out, name), map_location="cpu", weights_only=True)
        self.assertEqual(saved["iteration"], stopped)
        world = 2 if extra else 1
        self.assertEqual(saved["training_state"]["world_size"], world)
        saved_at = [int(f[6:13]) for f in os.listdir(out) if re.fullmatch(r"model_\d{7}\.pth", f)]
        self.assertEqual(max(saved_at), min(stopped, 8))  # it did stop there (9: final only)
        self.assertFalse(os.path.exists(os.path.join(out, LOCK_FILE)))  # released
        return stopped

    def _check_sigterm(self, extra, signal_group):
        ref_final = self._reference(*extra)
        out = os.path.join(self.tmp, "terminated" + "".join(extra).replace("-", "_"))
        stopped = self._stop_with_sigterm(out, extra, signal_group)
        log = self._run(_cmd(out, 2, *extra, "--resume"))
        self.assertIn(f"Starting training from iteration {stopped + 1}", log)
        self.assertNotIn("start afresh", log)
        self.assertNotIn("not exactly", log)
        self._assert_same_weights(ref_final, out, stopped + 1)

    def test_sigterm_saves_then_resume_is_bit_identical(self):
        self._check_sigterm((), signal_group=True)

    def test_sigterm_two_processes(self):
        self._check_sigterm(("--num-gpus", "2", "--dist-url", "auto"), signal_group=False)

if __name__ == "__main__":
    unittest.main()
