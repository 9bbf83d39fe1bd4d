"""Atomic checkpoints: a save that dies midway leaves the previous checkpoint usable."""

import os
import tempfile
import unittest
from unittest import mock

import torch

from seg2.engine import AtomicCheckpointer


class TestAtomicCheckpointer(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.model = torch.nn.Linear(3, 2)
        self.ckpt = AtomicCheckpointer(self.model, save_dir=self.dir)

    def test_save_and_tag(self):
        self.ckpt.save("model_0000009", iteration=9)
        self.assertEqual(
            open(os.path.join(self.dir, "last_checkpoint")).read(), "model_0000009.pth"
        )
        self.assertEqual(sorted(os.listdir(self.dir)), ["last_checkpoint", "model_0000009.pth"])
        data = torch.load(os.path.join(self.dir, "model_0000009.pth"), weights_only=False)
        self.assertEqual(data["iteration"], 9)
        torch.testing.assert_close(data["model"]["weight"], self.model.weight.detach())

    def test_crash_during_save_keeps_previous(self):
        self.ckpt.save("model_0000004", iteration=4)
        before = open(os.path.join(self.dir, "model_0000004.pth"), "rb").read()

        def dying_save(obj, f, *a, **k):
            f.write(b"partial")
            raise KeyboardInterrupt("killed")

        with mock.patch("torch.save", dying_save):
            with self.assertRaises(KeyboardInterrupt):
                self.ckpt.save("model_0000004", iteration=8)  # same name: must not be torn
        self.assertEqual(open(os.path.join(self.dir, "model_0000004.pth"), "rb").read(), before)
        self.assertEqual(
            open(os.path.join(self.dir, "last_checkpoint")).read(), "model_0000004.pth"
        )
        # resume loads the intact one
        fresh = AtomicCheckpointer(torch.nn.Linear(3, 2), save_dir=self.dir)
        self.assertEqual(fresh.resume_or_load("", resume=True)["iteration"], 4)


class TestWhatAKillLeaves(unittest.TestCase):
    """A kill can leave a temporary file, a tag naming a torn file, or a file without its
    tag; the next start copes with each."""

    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.ckpt = AtomicCheckpointer(torch.nn.Linear(3, 2), save_dir=self.dir)
        self.ckpt.save("model_0000004", iteration=4)
        self.ckpt.save("model_0000009", iteration=9)

    def fresh(self):
        return AtomicCheckpointer(torch.nn.Linear(3, 2), save_dir=self.dir)

    def test_truncated_tagged_file_falls_back_to_newest_readable(self):
        path = os.path.join(self.dir, "model_0000009.pth")
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 2])
        with self.assertLogs("seg2", "WARNING") as logs:
            self.assertEqual(self.fresh().resume_or_load("", resume=True)["iteration"], 4)
        self.assertIn("model_0000009.pth", logs.output[0])
        self.assertIn("model_0000004.pth", logs.output[0])

    def test_corrupt_payload_detected(self):
        path = os.path.join(self.dir, "model_0000009.pth")
        data = bytearray(open(path, "rb").read())
        i = data.index(b"data.pkl")  # flip a byte inside the first stored record
        data[i + 200] ^= 0xFF
        open(path, "wb").write(bytes(data))
        self.assertEqual(self.fresh().resume_or_load("", resume=True)["iteration"], 4)

    def test_file_written_but_not_tagged(self):
        os.remove(os.path.join(self.dir, "last_checkpoint"))
        os.utime(os.path.join(self.dir, "model_0000004.pth"), (0, 0))
        self.assertEqual(self.fresh().resume_or_load("", resume=True)["iteration"], 9)

    def test_nothing_readable_is_a_clean_error(self):
        for name in ("model_0000004.pth", "model_0000009.pth"):
            open(os.path.join(self.dir, name), "wb").write(b"PK\x03\x04 torn")
        from seg2.io import InputError

        with self.assertRaisesRegex(InputError, r"last_checkpoint: names .*model_0000009\.pth"):
            self.fresh().resume_or_load("", resume=True)

    def test_stale_temp_files_removed_on_start(self):
        stale = [
            os.path.join(self.dir, n)
            for n in (
                "model_0000014.pth.k2j4_x9a.tmp",
                "last_checkpoint.ab12cd34.tmp",
                "model_0000001.pth.tmp",
            )
        ]
        keep = os.path.join(self.dir, "notes.tmp")
        for p in stale + [keep]:
            open(p, "w").write("partial")
        self.fresh()
        self.assertEqual([p for p in stale if os.path.exists(p)], [])
        self.assertTrue(os.path.exists(keep))

    def test_refuses_to_save_non_finite_weights(self):
        from seg2.engine.divergence import TrainingDivergedError

        model = torch.nn.Linear(3, 2)
        ckpt = AtomicCheckpointer(model, save_dir=self.dir)
        with torch.no_grad():
            model.bias[1] = float("inf")
        with self.assertRaisesRegex(
            TrainingDivergedError,
            r"after iteration 12: non-finite weights in bias.*model_0000009\.pth",
        ):
            ckpt.save("model_0000012", iteration=12)
        self.assertFalse(os.path.exists(os.path.join(self.dir, "model_0000012.pth")))
        self.assertEqual(
            open(os.path.join(self.dir, "last_checkpoint")).read(), "model_0000009.pth"
        )


_SLOW_SAVE = r"""
import sys, time, torch
from seg2.engine import AtomicCheckpointer
real_save = torch.save
def slow_save(obj, f, *a, **k):
    f.write(b"PK\x03\x04 half of a checkpoint")
    f.flush()
    print("writing", flush=True)
    time.sleep(60)
torch.save = slow_save
AtomicCheckpointer(torch.nn.Linear(3, 2), save_dir=sys.argv[1]).save("model_0000019", iteration=19)
"""


class TestKillDuringSave(unittest.TestCase):
    def test_sigkill_mid_save(self):
        import signal
        import subprocess
        import sys

        d = tempfile.mkdtemp()
        AtomicCheckpointer(torch.nn.Linear(3, 2), save_dir=d).save("model_0000009", iteration=9)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        proc = subprocess.Popen(
            [sys.executable, "-c", _SLOW_SAVE, d], stdout=subprocess.PIPE, env=env, text=True
        )
        try:
            self.assertEqual(proc.stdout.readline().strip(), "writing")
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait()
        left = sorted(os.listdir(d))
        self.assertEqual(
            len([n for n in left if n.endswith(".tmp")]), 1, left
        )  # kill -9 skips cleanup
        self.assertNotIn("model_0000019.pth", left)
        fresh = AtomicCheckpointer(torch.nn.Linear(3, 2), save_dir=d)
        self.assertEqual(sorted(os.listdir(d)), ["last_checkpoint", "model_0000009.pth"])
        self.assertEqual(fresh.resume_or_load("", resume=True)["iteration"], 9)
