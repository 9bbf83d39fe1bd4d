"""Seg2Trainer's training-state handling on a toy model (seconds): resume restores model,
optimizer, LR scheduler, data position and RNG state so the result equals an uninterrupted
run; a non-finite loss stops training with the iteration and the terms, and nothing of the
bad state is checkpointed or evaluated; MODEL.WEIGHTS is loaded as the file holds it."""

import os
import random
import shutil
import tempfile
import unittest

import numpy as np
import torch
from detectron2.modeling import META_ARCH_REGISTRY

from seg2.capabilities import ModelCapabilities
from seg2.engine import Seg2Trainer
from seg2.engine.divergence import TrainingDivergedError
from seg2.engine.resume import ResumableTrainLoader, build_sampler_factory, data_seed
from seg2_testing import get_seg2_cfg

NAN_AT = {"iteration": None}


@META_ARCH_REGISTRY.register()
class ToyTrainerTestModel(torch.nn.Module):
    """Least squares with model-side randomness (like ROI sampling) and a switchable NaN."""

    seg2_capabilities = ModelCapabilities(frozenset({"sem_seg"}), sem_seg=True)

    def __init__(self, cfg):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(3))
        self.calls = 0

    def forward(self, batched_inputs):
        x = torch.tensor([d["x"] for d in batched_inputs], dtype=torch.float32)
        noise = torch.rand(len(batched_inputs), 3)  # model-side RNG
        pred = ((x + noise) * self.w).sum(1)
        loss_b = (self.w**2).sum() * 0.1
        if self.calls == NAN_AT["iteration"]:
            loss_b = loss_b * float("nan")
        self.calls += 1
        return {"loss_a": ((pred - 1.0) ** 2).mean(), "loss_b": loss_b}


def augment(d):
    return {
        "x": [d["x"][0] * np.random.uniform(0.5, 1.5), d["x"][1] + random.random(), d["x"][2]],
        "width": 1,
        "height": 1,
    }


DICTS = [{"x": [float(i), float(i % 3), 1.0], "width": 1, "height": 1} for i in range(5)]


class ToyTrainer(Seg2Trainer):
    evaluated = 0

    @classmethod
    def build_train_loader(cls, cfg):
        return ResumableTrainLoader(
            DICTS, augment, build_sampler_factory(cfg, DICTS), 2, data_seed(cfg)
        )

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        cls.evaluated += 1
        return {}


def toy_cfg(out, max_iter=8, period=3):
    cfg = get_seg2_cfg()
    cfg.MODEL.META_ARCHITECTURE = "ToyTrainerTestModel"
    cfg.MODEL.DEVICE = "cpu"
    cfg.SEED = 5
    cfg.OUTPUT_DIR = out
    cfg.DATASETS.TRAIN = ()
    cfg.DATASETS.TEST = ()
    cfg.SOLVER.BASE_LR = 0.01
    cfg.SOLVER.MOMENTUM = 0.9
    cfg.SOLVER.WARMUP_ITERS = 2
    cfg.SOLVER.STEPS = (5,)
    cfg.SOLVER.MAX_ITER = max_iter
    cfg.SOLVER.CHECKPOINT_PERIOD = period
    cfg.SOLVER.IMS_PER_BATCH = 2
    return cfg


def train(cfg, resume=False):
    torch.manual_seed(cfg.SEED), np.random.seed(cfg.SEED), random.seed(cfg.SEED)  # as default_setup
    trainer = ToyTrainer(cfg)
    trainer.resume_or_load(resume=resume)
    trainer.train()
    return trainer


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


class TestResume(unittest.TestCase):
    def setUp(self):
        NAN_AT["iteration"] = None
        self.tmp = tempfile.mkdtemp()

    def test_resume_equals_uninterrupted(self):
        ref = os.path.join(self.tmp, "ref")
        train(toy_cfg(ref))
        final = load(os.path.join(ref, "model_final.pth"))

        # as if killed after the iteration-2 checkpoint: keep only that one
        out = os.path.join(self.tmp, "resumed")
        os.makedirs(out)
        shutil.copy(os.path.join(ref, "model_0000002.pth"), out)
        open(os.path.join(out, "last_checkpoint"), "w").write("model_0000002.pth")
        trainer = train(toy_cfg(out), resume=True)
        self.assertEqual(trainer.start_iter, 3)
        self.assertTrue(trainer.training_state.restored)
        resumed = load(os.path.join(out, "model_final.pth"))

        self.assertTrue(torch.equal(final["model"]["w"], resumed["model"]["w"]))
        opt_a, opt_b = (
            final["trainer"]["_trainer"]["optimizer"],
            resumed["trainer"]["_trainer"]["optimizer"],
        )
        self.assertEqual(opt_a["param_groups"], opt_b["param_groups"])  # LR after the step at 5
        for k, v in opt_a["state"].items():
            self.assertTrue(torch.equal(v["momentum_buffer"], opt_b["state"][k]["momentum_buffer"]))
        self.assertEqual(final["trainer"]["hooks"], resumed["trainer"]["hooks"])  # LR scheduler
        self.assertEqual(
            final["training_state"]["ranks"][0]["loader"],
            resumed["training_state"]["ranks"][0]["loader"],
        )
        self.assertTrue(
            torch.equal(
                final["training_state"]["ranks"][0]["rng"]["torch"],
                resumed["training_state"]["ranks"][0]["rng"]["torch"],
            )
        )

    def test_without_the_state_the_run_differs(self):
        """The comparison above can fail: drop the saved state and the result changes."""
        ref = os.path.join(self.tmp, "ref")
        train(toy_cfg(ref))
        out = os.path.join(self.tmp, "stateless")
        os.makedirs(out)
        ckpt = load(os.path.join(ref, "model_0000002.pth"))
        del ckpt["training_state"]
        torch.save(ckpt, os.path.join(out, "model_0000002.pth"))
        open(os.path.join(out, "last_checkpoint"), "w").write("model_0000002.pth")
        with self.assertLogs("seg2", "WARNING"):
            train(toy_cfg(out), resume=True)
        a = load(os.path.join(ref, "model_final.pth"))["model"]["w"]
        b = load(os.path.join(out, "model_final.pth"))["model"]["w"]
        self.assertFalse(torch.equal(a, b))

    def test_weights_from_model_weights(self):
        src = os.path.join(self.tmp, "weights.pth")
        torch.save({"model": {"w": torch.tensor([0.25, -1.5, 3.0])}}, src)
        cfg = toy_cfg(os.path.join(self.tmp, "ft"))
        cfg.MODEL.WEIGHTS = src
        trainer = ToyTrainer(cfg)
        trainer.resume_or_load(resume=False)
        self.assertTrue(torch.equal(trainer.model.w.detach(), torch.tensor([0.25, -1.5, 3.0])))
        self.assertEqual(trainer.start_iter, 0)


class TestNonFinite(unittest.TestCase):
    def setUp(self):
        self.out = tempfile.mkdtemp()
        ToyTrainer.evaluated = 0

    def tearDown(self):
        NAN_AT["iteration"] = None

    def test_stops_naming_iteration_and_terms(self):
        NAN_AT["iteration"] = 7  # the last iteration: Detectron2 would also evaluate after it
        cfg = toy_cfg(self.out, max_iter=8, period=2)
        with self.assertRaises(TrainingDivergedError) as ctx:
            train(cfg)
        msg = str(ctx.exception)
        self.assertIn("iteration 7", msg)
        self.assertIn("loss_b=nan", msg)
        self.assertNotIn("loss_a=", msg)
        self.assertIn("model_0000005.pth", msg)
        files = sorted(f for f in os.listdir(self.out) if f.endswith(".pth"))
        self.assertEqual(files, ["model_0000001.pth", "model_0000003.pth", "model_0000005.pth"])
        self.assertEqual(
            open(os.path.join(self.out, "last_checkpoint")).read(), "model_0000005.pth"
        )
        self.assertEqual(ToyTrainer.evaluated, 0)

    def test_finite_run_evaluates_and_saves_final(self):
        train(toy_cfg(self.out, max_iter=4, period=2))
        self.assertEqual(open(os.path.join(self.out, "last_checkpoint")).read(), "model_final.pth")
        self.assertEqual(ToyTrainer.evaluated, 1)


if __name__ == "__main__":
    unittest.main()


class TestOptimizer(unittest.TestCase):
    def test_cpu_optimizer_updates_equal_detectron2s(self):
        """On CPU Seg2Trainer's SGD runs the plain per-tensor loop (Detectron2 asks for
        foreach); with momentum, weight decay and a norm layer's own decay, its updates must
        equal Detectron2's own optimizer's bit for bit."""
        from detectron2.solver import build_optimizer

        cfg = get_seg2_cfg()
        cfg.MODEL.DEVICE = "cpu"
        cfg.SOLVER.MOMENTUM, cfg.SOLVER.WEIGHT_DECAY, cfg.SOLVER.WEIGHT_DECAY_NORM = 0.9, 1e-3, 0.0
        torch.manual_seed(0)
        ours = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8))
        theirs = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8))
        theirs.load_state_dict(ours.state_dict())
        start = ours[0].weight.detach().clone()
        opt_ours = Seg2Trainer.build_optimizer(cfg, ours)
        opt_theirs = build_optimizer(cfg, theirs)
        self.assertTrue(all(g["foreach"] is False for g in opt_ours.param_groups))
        self.assertTrue(all(g["foreach"] is True for g in opt_theirs.param_groups))
        x = torch.randn(2, 3, 9, 9)
        for _ in range(4):
            for model, opt in ((ours, opt_ours), (theirs, opt_theirs)):
                opt.zero_grad()
                model(x).square().mean().backward()
                opt.step()
        for a, b in zip(ours.parameters(), theirs.parameters()):
            self.assertTrue(torch.equal(a, b))
        self.assertFalse(torch.equal(ours[0].weight, start))  # the steps did move it
