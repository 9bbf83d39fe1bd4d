"""Stopping on SIGTERM and resuming, on the toy trainer of test_trainer (seconds): the run
stops after the iteration the signal arrived in, with a checkpoint at it, one log line and
TrainingPreempted (exit status 143 in the tools), the previous handler back; --resume then
ends with the weights of an uninterrupted run. With two processes (Detectron2's launch, gloo)
a signal to one process stops both at the same iteration, and the final checkpoint of a
finished run holds both processes' state (a run whose MAX_ITER is a multiple of
CHECKPOINT_PERIOD saves model_NNNNNNN and model_final after the same iteration)."""

import os
import random
import signal
import tempfile
import unittest

import numpy as np
import torch
from detectron2.engine import HookBase, launch
from detectron2.utils import comm
from test_trainer import ToyTrainer, load, toy_cfg
from torch.multiprocessing import ProcessExitedException

from seg2.engine.preemption import PREEMPTED_EXIT, TrainingPreempted
from seg2.utils.cli import user_errors


class SignalAt(HookBase):
    """Send this process a signal at the start of one iteration (it arrives mid-iteration)."""

    def __init__(self, iteration: int, signum: int = signal.SIGTERM):
        self.iteration, self.signum = iteration, signum

    def before_step(self):
        if self.trainer.iter == self.iteration:
            os.kill(os.getpid(), self.signum)


def run(out, max_iter, resume=False, stop_at=None, stop_rank=0, period=3):
    """One toy run in this process (or in one of launch's); returns the trainer."""
    cfg = toy_cfg(out, max_iter=max_iter, period=period)
    cfg.SOLVER.STEPS = (7,)  # an LR drop after the resume points below
    torch.manual_seed(cfg.SEED), np.random.seed(cfg.SEED), random.seed(cfg.SEED)  # as train()
    trainer = ToyTrainer(cfg)
    if stop_at is not None and comm.get_rank() == stop_rank:
        trainer.register_hooks([SignalAt(stop_at)])
    trainer.resume_or_load(resume=resume)
    trainer.train()
    return trainer


def weights(out):
    return load(os.path.join(out, "model_final.pth"))["model"]["w"]


class TestStopOnSignal(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp()

    def test_stop_saves_and_resume_is_exact(self):
        ref = os.path.join(self.tmp, "ref")
        run(ref, 12)
        # 4: between checkpoints (saved by the stop); 5: a periodic checkpoint (not saved twice)
        for stop_at in (4, 5):
            with self.subTest(stop_at=stop_at):
                out = os.path.join(self.tmp, f"stop{stop_at}")
                before = signal.getsignal(signal.SIGTERM)
                with self.assertLogs("seg2", "WARNING") as logs:
                    with self.assertRaises(TrainingPreempted) as ctx:
                        run(out, 12, stop_at=stop_at)
                self.assertIs(signal.getsignal(signal.SIGTERM), before)
                self.assertEqual(ctx.exception.exit_status, PREEMPTED_EXIT)
                name = f"model_{stop_at:07d}.pth"
                lines = [r.getMessage() for r in logs.records if "Stopped by" in r.getMessage()]
                self.assertEqual(len(lines), 1, logs.output)
                self.assertIn(f"Stopped by SIGTERM after iteration {stop_at}", lines[0])
                self.assertIn(os.path.join(out, name), lines[0])
                self.assertEqual(open(os.path.join(out, "last_checkpoint")).read(), name)
                saved = load(os.path.join(out, name))
                self.assertEqual(saved["iteration"], stop_at)
                self.assertEqual(saved["training_state"]["world_size"], 1)
                self.assertFalse(os.path.exists(os.path.join(out, "model_final.pth")))
                self.assertFalse(os.path.exists(os.path.join(out, f"model_{stop_at + 1:07d}.pth")))

                trainer = run(out, 12, resume=True)
                self.assertEqual(trainer.start_iter, stop_at + 1)
                self.assertTrue(trainer.training_state.restored)
                self.assertTrue(torch.equal(weights(out), weights(ref)))
        # and the stop did cut the runs short: the state at 4 is not the final one
        self.assertFalse(
            torch.equal(load(os.path.join(self.tmp, "stop4", "model_0000004.pth"))["model"]["w"], weights(ref))
        )

    def test_signal_after_the_last_check_is_not_swallowed(self):
        """A signal that arrives after the loop's last check (here: late in the last
        iteration) goes, after training, to the handler that was there before."""
        received = []

        class LateSignal(HookBase):  # registered last: runs after the stop hook's check
            def after_step(self):
                if self.trainer.iter == self.trainer.max_iter - 1:
                    os.kill(os.getpid(), signal.SIGTERM)

        previous = signal.signal(signal.SIGTERM, lambda s, f: received.append(s))
        try:
            trainer = ToyTrainer(toy_cfg(os.path.join(self.tmp, "late"), max_iter=2, period=3))
            trainer.register_hooks([LateSignal()])
            trainer.train()  # no TrainingPreempted: the last check came before the signal
            self.assertEqual(received, [signal.SIGTERM])
        finally:
            signal.signal(signal.SIGTERM, previous)


# ---- two processes


@user_errors  # as tools/train_net.py's main: a stop ends the process with PREEMPTED_EXIT
def _two_process_run(out, max_iter, resume, stop_at, stop_rank, period, result):
    trainer = run(out, max_iter, resume, stop_at, stop_rank, period)
    if comm.is_main_process():
        torch.save({"start_iter": trainer.start_iter}, result)
    assert trainer.training_state.restored == resume, "state not restored on every process"


def _launch(out, max_iter, resume=False, stop_at=None, stop_rank=1, period=3):
    result = os.path.join(out + ".result.pt")
    launch(
        _two_process_run,
        2,
        dist_url="auto",
        args=(out, max_iter, resume, stop_at, stop_rank, period, result),
    )
    return torch.load(result)


@unittest.skipIf(torch.cuda.is_available(), "launch picks NCCL when CUDA is present")
class TestTwoProcesses(unittest.TestCase):
    def test_final_checkpoint_then_stop(self):
        """Each step is checked against an uninterrupted run that saved every iteration: the
        state a checkpoint holds (weights, and per process the data position and RNGs) must
        be that run's state at the same iteration, so --resume continues exactly."""
        tmp = tempfile.mkdtemp()
        ref = os.path.join(tmp, "ref")
        _launch(ref, 12, period=1)

        def check_same_as_ref(name, iteration):
            ours, theirs = (load(os.path.join(d, name)) for d in (out, ref))
            self.assertEqual(ours["iteration"], iteration)
            self.assertTrue(torch.equal(ours["model"]["w"], theirs["model"]["w"]), name)
            self.assertEqual(ours["training_state"]["world_size"], 2, name)
            for a, b in zip(ours["training_state"]["ranks"], theirs["training_state"]["ranks"]):
                self.assertEqual(a["loader"], b["loader"], name)
                self.assertTrue(torch.equal(a["rng"]["torch"], b["rng"]["torch"]), name)

        # a finished run: MAX_ITER 6 is a multiple of the period 3
        out = os.path.join(tmp, "run")
        _launch(out, 6)
        self.assertEqual(open(os.path.join(out, "last_checkpoint")).read(), "model_final.pth")
        final = load(os.path.join(out, "model_final.pth"))
        ref_5 = load(os.path.join(ref, "model_0000005.pth"))
        self.assertEqual(final["iteration"], 5)
        self.assertEqual(final["training_state"]["world_size"], 2)
        for a, b in zip(final["training_state"]["ranks"], ref_5["training_state"]["ranks"]):
            self.assertEqual(a["loader"], b["loader"])
            self.assertTrue(torch.equal(a["rng"]["torch"], b["rng"]["torch"]))

        # resumed to 12 from that final checkpoint; SIGTERM to rank 1 only, in iteration 7
        with self.assertRaises(ProcessExitedException) as ctx:
            _launch(out, 12, resume=True, stop_at=7, stop_rank=1)
        self.assertEqual(ctx.exception.exit_code, PREEMPTED_EXIT)
        self.assertEqual(open(os.path.join(out, "last_checkpoint")).read(), "model_0000007.pth")
        check_same_as_ref("model_0000007.pth", 7)  # both stopped after 7, with their state
        self.assertFalse(os.path.exists(os.path.join(out, "model_0000008.pth")))

if __name__ == "__main__":
    unittest.main()
