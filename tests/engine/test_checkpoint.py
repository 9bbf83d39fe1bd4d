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
        self.assertEqual(open(os.path.join(self.dir, "last_checkpoint")).read(), "model_0000009.pth")
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
        self.assertEqual(open(os.path.join(self.dir, "last_checkpoint")).read(), "model_0000004.pth")
        # resume loads the intact one
        fresh = AtomicCheckpointer(torch.nn.Linear(3, 2), save_dir=self.dir)
        self.assertEqual(fresh.resume_or_load("", resume=True)["iteration"], 4)
