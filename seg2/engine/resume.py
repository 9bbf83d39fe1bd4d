"""Exact resume: the training data stream and the random state live in the checkpoint.

Every training sample is a pure function of ``(seed, rank, position in the stream)``: the
sampler's index sequence is fixed by the seed, and the mapper's augmentations run under RNGs
seeded from the position (the process's own RNGs are left untouched). So the stream does not
depend on the number of loader workers, on prefetching, or on where a run was killed, and a
checkpoint needs only the position, the positions still waiting in the aspect-ratio buckets,
the seed, and the main process's RNG states (model-side randomness such as ROI sampling).
"""

import contextlib
import itertools
import logging
import random
import weakref
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch
from detectron2.data.common import DatasetFromList
from detectron2.engine import HookBase
from detectron2.utils import comm
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..data.parallel import worker_context
from ..io import InputError
from .preemption import ignore_stop_signals

__all__ = [
    "ResumableTrainLoader",
    "TrainingState",
    "CaptureTrainingState",
    "preserved_rng",
    "get_rng_states",
    "set_rng_states",
]

logger = logging.getLogger("seg2")


# ---- RNG states as plain data (loadable with torch.load(weights_only=True))


def get_rng_states() -> Dict[str, Any]:
    """Python, NumPy and torch (CPU, and CUDA when initialised) RNG states of this process."""
    np_state = np.random.get_state(legacy=False)
    states = {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(np.array(np_state["state"]["key"], dtype=np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: Dict[str, Any]) -> None:
    random.setstate(_as_tuples(states["python"]))
    n = states["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
            "has_gauss": n["has_gauss"],
            "gauss": n["gauss"],
        }
    )
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _as_tuples(x):
    """random.setstate needs tuples; a round trip through some serialisers gives lists."""
    return tuple(_as_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


@contextlib.contextmanager
def preserved_rng():
    """Run a block (evaluation, a seeded mapper call) without changing this process's RNGs."""
    saved = get_rng_states()
    try:
        yield
    finally:
        set_rng_states(saved)


def sample_seed(seed: int, rank: int, position: int) -> int:
    return int(np.random.SeedSequence([seed, rank, position]).generate_state(1)[0])


@contextlib.contextmanager
def _seeded(seed: int):
    with preserved_rng():
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        yield


# ---- the stream of mapped samples


class _Raised:
    """A user error raised while mapping in a worker, re-raised as itself in the main
    process (PyTorch would re-raise it with the worker's traceback pasted into the message)."""

    def __init__(self, exc: BaseException):
        self.exc = exc


def _identity(x):
    return x


class _SampleStream(IterableDataset):
    """(position, mapped sample) for positions ``start, start + 1, ...`` of this rank's
    sampler stream. Worker k of n maps positions ``start + k + i n``; the DataLoader collects
    from its workers in turn, so the main process receives them in order."""

    def __init__(self, dataset, mapper: Callable, sampler, seed: int, rank: int, start: int):
        self.dataset, self.mapper, self.sampler = dataset, mapper, sampler
        self.seed, self.rank, self.start = seed, rank, start

    def map_at(self, position: int, index: int):
        with _seeded(sample_seed(self.seed, self.rank, position)):
            try:
                return self.mapper(self.dataset[index])
            except InputError as e:
                return _Raised(e)

    def __iter__(self) -> Iterator:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        first = self.start + wid
        for k, index in enumerate(itertools.islice(iter(self.sampler), first, None, nw)):
            yield first + k * nw, self.map_at(first + k * nw, index)


class ResumableTrainLoader:
    """Infinite iterable of training batches (lists of mapped dicts, Detectron2's train
    loader contract) whose position is checkpointable (:meth:`state_dict`).

    Args:
        dataset: list of dataset dicts, or a ``DatasetFromList`` of them (kept as it is).
        mapper: dataset dict -> model input dict (None = skip the sample).
        sampler_factory: seed -> an infinite index sampler for this rank (Detectron2's
            ``TrainingSampler`` and friends); called in the main process at each ``iter``.
        batch_size: images per batch on this process.
        seed: data seed (shuffling and augmentations).
        aspect_ratio_grouping: batch landscape and portrait images separately (Detectron2's
            rule: width > height or not).
        num_workers: loader processes; the batches do not depend on it.
    """

    def __init__(
        self,
        dataset: Sequence[Dict],
        mapper: Callable,
        sampler_factory: Callable[[int], Any],
        batch_size: int,
        seed: int,
        aspect_ratio_grouping: bool = True,
        num_workers: int = 0,
    ):
        self._dataset = (
            dataset
            if isinstance(dataset, DatasetFromList)
            else DatasetFromList(dataset, copy=False, serialize=True)
        )
        self._mapper = mapper
        self._sampler_factory = sampler_factory
        self.batch_size = batch_size
        self.seed = int(seed)
        self._grouping = aspect_ratio_grouping
        self._num_workers = num_workers
        self._next = 0  # first stream position not yet received
        self._pending: List[List[int]] = [[], []]  # received, not yet batched, per bucket
        self._skipped = 0
        self._open = weakref.WeakSet()  # iterations in progress (generators)

    def state_dict(self) -> Dict[str, Any]:
        return {
            "seed": self.seed,
            "next": self._next,
            "pending": [list(p) for p in self._pending],
            "batch_size": self.batch_size,
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state["batch_size"] != self.batch_size:
            logger.warning(
                f"Batch size changed ({state['batch_size']} -> {self.batch_size}); the data "
                "stream continues from the saved position, but not as the original run would"
            )
        self.seed = int(state["seed"])
        self._next = int(state["next"])
        self._pending = [list(p) for p in state["pending"]]

    def _bucket(self, d: Dict) -> int:
        return int(not d["width"] > d["height"]) if self._grouping else 0

    def __iter__(self) -> Iterator[List[Dict]]:
        batches = self._batches()
        self._open.add(batches)
        return batches

    def close(self) -> None:
        """End the iterations in progress, shutting their loader workers down now. Left to
        garbage collection, that can come after multiprocessing's exit handler, which would
        then wait for workers that ignore SIGTERM (:func:`ignore_stop_signals`)."""
        for batches in list(self._open):
            batches.close()

    def _batches(self) -> Iterator[List[Dict]]:
        sampler = self._sampler_factory(self.seed)
        stream = _SampleStream(
            self._dataset, self._mapper, sampler, self.seed, comm.get_rank(), self._next
        )
        buckets: List[List] = [[], []]
        waiting = sorted(p for b in self._pending for p in b)
        if waiting:  # samples a previous run had received but not yet batched
            indices = itertools.islice(iter(sampler), waiting[0], self._next)
            index_at = dict(zip(range(waiting[0], self._next), indices))
            for b, positions in enumerate(self._pending):
                buckets[b] = [(p, stream.map_at(p, index_at[p])) for p in positions]
        generator = torch.Generator()  # else DataLoader draws its base seed from torch's RNG
        generator.manual_seed(self.seed)
        loader = DataLoader(
            stream,
            batch_size=None,
            num_workers=self._num_workers,
            collate_fn=_identity,
            generator=generator,
            worker_init_fn=ignore_stop_signals if self._num_workers else None,
            multiprocessing_context=worker_context() if self._num_workers else None,
        )
        for position, item in loader:
            self._next = position + 1
            if isinstance(item, _Raised):
                raise item.exc
            if item is None:
                self._skipped += 1
                logger.warning(
                    f"Mapper skipped stream position {position} ({self._skipped} so far)"
                )
                continue
            b = self._bucket(item)
            buckets[b].append((position, item))
            if len(buckets[b]) == self.batch_size:
                batch = [it for _, it in buckets[b]]
                buckets[b] = []
                self._pending = [[p for p, _ in bk] for bk in buckets]
                yield batch
            else:
                self._pending[b].append(position)


def build_sampler_factory(cfg, dataset: Sequence[Dict]) -> Callable[[int], Any]:
    """seed -> the sampler ``DATALOADER.SAMPLER_TRAIN`` names, seeded with it. What the
    samplers need of ``dataset`` (its length, repeat factors) is taken now: the factory
    keeps no reference to it, except for a sampler Detectron2 builds that seg2 does not
    know (then give the serialized dataset the loader holds)."""
    from detectron2.data import build_detection_train_loader
    from detectron2.data.samplers import (
        RandomSubsetTrainingSampler,
        RepeatFactorTrainingSampler,
        TrainingSampler,
    )

    name, size = cfg.DATALOADER.SAMPLER_TRAIN, len(dataset)
    if name == "TrainingSampler":
        return lambda seed: TrainingSampler(size, seed=seed)
    if name == "RepeatFactorTrainingSampler":
        factors = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(
            dataset, cfg.DATALOADER.REPEAT_THRESHOLD, sqrt=cfg.DATALOADER.REPEAT_SQRT
        )
        return lambda seed: RepeatFactorTrainingSampler(factors, seed=seed)
    if name == "RandomSubsetTrainingSampler":
        ratio = cfg.DATALOADER.RANDOM_SUBSET_RATIO
        return lambda seed: RandomSubsetTrainingSampler(
            size, ratio, seed_shuffle=seed, seed_subset=seed
        )

    def make(seed: int):
        # Other samplers draw their seeds from the global RNGs: seed those, for this call only.
        with _seeded(seed):
            return build_detection_train_loader.from_config(cfg, mapper=_identity, dataset=dataset)[
                "sampler"
            ]

    return make


def data_seed(cfg) -> int:
    """``SEED`` when fixed, else one random seed shared by all processes (saved with the
    checkpoint, so a resumed run continues the same stream)."""
    return cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()


# ---- the checkpointable and the hook that fills it


class TrainingState:
    """Checkpointable (``state_dict``/``load_state_dict``) holding, per process, the train
    loader's position and the RNG states. Captured on every process (a collective) by
    :class:`CaptureTrainingState` at checkpoint iterations, or by the stop-on-signal hook; only
    the main process writes the file. A capture serves every save until :meth:`discard` (the
    next iteration): Detectron2 saves ``model_NNNNNNN`` and ``model_final`` after the same
    iteration when ``MAX_ITER`` is a multiple of ``CHECKPOINT_PERIOD``."""

    def __init__(self, loader: Optional[ResumableTrainLoader]):
        self.loader = loader
        self.restored = False
        self._snapshot: Optional[List[Dict]] = None

    def _local(self) -> Dict[str, Any]:
        return {
            "loader": self.loader.state_dict() if self.loader is not None else None,
            "rng": get_rng_states(),
        }

    def capture(self) -> None:
        local = self._local()
        self._snapshot = comm.all_gather(local) if comm.get_world_size() > 1 else [local]

    def discard(self) -> None:
        self._snapshot = None

    def state_dict(self) -> Dict[str, Any]:
        ranks = self._snapshot if self._snapshot is not None else [self._local()]
        return {"world_size": len(ranks), "ranks": ranks}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        world = comm.get_world_size()
        if state["world_size"] != world:
            logger.warning(
                f"Checkpoint was written by {state['world_size']} processes, this run has "
                f"{world}: data order and random state start afresh (exact resume needs the "
                "same number of processes)"
            )
            return
        mine = state["ranks"][comm.get_rank()]
        if self.loader is not None and mine["loader"] is not None:
            self.loader.load_state_dict(mine["loader"])
        set_rng_states(mine["rng"])
        self.restored = True


class CaptureTrainingState(HookBase):
    """Snapshot :class:`TrainingState` after the iterations whose checkpoint Detectron2's
    ``PeriodicCheckpointer`` writes (every ``period`` and the last), on all processes; runs
    just before that hook, after the optimizer step and PreciseBN. The snapshot is dropped
    when the next iteration starts, so no later save can write a stale one."""

    def __init__(self, state: TrainingState, period: int):
        self._state = state
        self._period = period

    def before_step(self):
        self._state.discard()

    def after_step(self):
        it = self.trainer.iter
        if (it + 1) % self._period == 0 or it >= self.trainer.max_iter - 1:
            self._state.capture()
