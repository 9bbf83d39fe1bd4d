"""The resumable train loader and training state, in-process: the batch stream is a pure
function of the seed and the position (not of the worker count), a loader restored from
``state_dict`` continues exactly where the original was, and the process RNGs round-trip."""

import itertools
import multiprocessing
import os
import random
import signal
import sys
import unittest

import numpy as np
import torch
from detectron2.data.samplers import TrainingSampler

from seg2.engine.resume import ResumableTrainLoader, TrainingState, get_rng_states, preserved_rng
from seg2.io import InputError

# Landscape and portrait images, so Detectron2's aspect-ratio grouping keeps samples waiting.
DICTS = [{"id": i, "width": 96 if i % 3 else 64, "height": 64 if i % 3 else 96} for i in range(7)]


def augment(d):
    """A mapper drawing from every RNG an augmentation might use."""
    return dict(d, aug=(random.random(), float(np.random.rand()), float(torch.rand(1))))


def refuse_five(d):
    if d["id"] == 5:
        raise InputError(f"image {d['id']}: bad field 'segmentation'")
    return d


# Set in a process before it starts loader workers: a forked worker inherits it, a spawned one
# imports this module afresh and sees None.
_MARK = [None]


def parent_mark(d):
    return dict(d, mark=_MARK[0])


def marks_in_spawned_process(queue):
    """In a process started the way Detectron2's ``launch`` starts training processes
    (spawn): put the marks that a loader worker sees."""
    _MARK[0] = "set before the workers started"
    batches = loader(1, mapper=parent_mark)
    queue.put([d["mark"] for batch in itertools.islice(iter(batches), 2) for d in batch])


def loader(workers=0, grouping=True, mapper=augment, seed=3):
    return ResumableTrainLoader(
        DICTS,
        mapper,
        lambda s: TrainingSampler(len(DICTS), seed=s),
        batch_size=2,
        seed=seed,
        aspect_ratio_grouping=grouping,
        num_workers=workers,
    )


def take(it, n):
    return [[(d["id"], d.get("aug")) for d in batch] for batch in itertools.islice(it, n)]


class TestResumableTrainLoader(unittest.TestCase):
    def test_order_is_detectron2_training_sampler(self):
        ids = [i for batch in take(iter(loader(grouping=False)), 6) for i, _ in batch]
        self.assertEqual(ids, list(itertools.islice(iter(TrainingSampler(len(DICTS), seed=3)), 12)))

    def test_same_batches_with_and_without_workers(self):
        self.assertEqual(take(iter(loader(0)), 8), take(iter(loader(2)), 8))

    def test_seed_changes_the_stream(self):
        self.assertNotEqual(take(iter(loader(seed=3)), 4), take(iter(loader(seed=4)), 4))

    def test_restored_loader_continues_exactly(self):
        expected = take(iter(loader()), 12)
        for k in range(1, 8):
            first = loader()
            it = iter(first)
            self.assertEqual(take(it, k), expected[:k])
            state = first.state_dict()
            resumed = loader(workers=2 if k % 2 else 0)
            resumed.load_state_dict(state)
            self.assertEqual(take(iter(resumed), 12 - k), expected[k:], f"after {k} batches")
        # the grouping did keep samples waiting at some point, so that part of the state is used
        pending = []
        it = iter(loader())
        for _ in range(8):
            next(it)
        first = loader()
        it = iter(first)
        for _ in range(8):
            next(it)
            pending.append(sum(map(len, first.state_dict()["pending"])))
        self.assertTrue(any(pending))

    def test_process_rngs_untouched_by_loading(self):
        def draws():
            return float(torch.rand(1)), float(np.random.rand()), random.random()

        torch.manual_seed(0), np.random.seed(0), random.seed(0)
        expected = draws()
        torch.manual_seed(0), np.random.seed(0), random.seed(0)
        take(iter(loader(0)), 3)
        self.assertEqual(draws(), expected)

    def test_workers_outlive_sigterm_and_end_with_close(self):
        """A scheduler that signals every process must not kill the loader's workers before
        the training process has finished its iteration; close() then ends them."""
        expected = take(iter(loader(0)), 4)
        before = set(multiprocessing.active_children())
        first = loader(2)
        it = iter(first)
        got = take(it, 2)
        workers = set(multiprocessing.active_children()) - before
        self.assertEqual(len(workers), 2)
        for w in workers:
            os.kill(w.pid, signal.SIGTERM)
        got += take(it, 2)
        self.assertEqual(got, expected)
        first.close()
        for w in workers:
            w.join(30)
            self.assertEqual(w.exitcode, 0)

    @unittest.skipUnless(sys.platform == "linux", "fork is the default start method on Linux")
    def test_workers_are_forked_in_a_spawned_training_process(self):
        # Spawned workers would import torch, Detectron2 and seg2 again (seconds each) and get
        # a pickled copy of the dataset; forked ones inherit the process as it is.
        spawn = multiprocessing.get_context("spawn")
        queue = spawn.Queue()
        proc = spawn.Process(target=marks_in_spawned_process, args=(queue,))
        proc.start()
        try:
            marks = queue.get(timeout=120)
        finally:
            proc.join(timeout=60)
        self.assertEqual(marks, ["set before the workers started"] * 4)

    def test_user_error_in_worker_arrives_as_itself(self):
        for workers in (0, 2):
            with self.assertRaises(InputError) as ctx:
                take(iter(loader(workers, mapper=refuse_five)), 20)
            self.assertEqual(str(ctx.exception), "image 5: bad field 'segmentation'")


class TestTrainingState(unittest.TestCase):
    def test_rng_and_loader_round_trip(self):
        first = loader()
        it = iter(first)
        take(it, 3)
        state = TrainingState(first)
        saved = state.state_dict()
        draws = (float(torch.rand(1)), float(np.random.rand()), random.random())
        after = take(it, 2)

        fresh = loader()
        restored = TrainingState(fresh)
        torch.manual_seed(99), np.random.seed(99), random.seed(99)
        restored.load_state_dict(saved)
        self.assertTrue(restored.restored)
        self.assertEqual((float(torch.rand(1)), float(np.random.rand()), random.random()), draws)
        self.assertEqual(take(iter(fresh), 2), after)

    def test_state_loads_with_weights_only(self):
        import io

        buf = io.BytesIO()
        torch.save(TrainingState(loader()).state_dict(), buf)
        buf.seek(0)
        torch.load(buf, weights_only=True)  # Detectron2's checkpointer loads this way

    def test_preserved_rng(self):
        before = get_rng_states()
        with preserved_rng():
            torch.rand(3), np.random.rand(3), random.random()
        after = get_rng_states()
        self.assertTrue(torch.equal(before["torch"], after["torch"]))
        self.assertTrue(torch.equal(before["numpy"]["key"], after["numpy"]["key"]))
        self.assertEqual(before["python"], after["python"])


if __name__ == "__main__":
    unittest.main()
