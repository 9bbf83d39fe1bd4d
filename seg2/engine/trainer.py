"""Seg2Trainer: Detectron2's DefaultTrainer with seg2's mapper, evaluators and checkpointer,
and DistributedDataParallel that also works on CPU (gloo)."""
import contextlib
from unittest import mock

import torch
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer, hooks
from detectron2.engine import defaults as d2_defaults
from detectron2.utils import comm
from torch.nn.parallel import DistributedDataParallel

from ..data.dataset_mapper import Seg2DatasetMapper
from ..evaluation.build import build_evaluators
from .checkpoint import AtomicCheckpointer

__all__ = ["Seg2Trainer", "create_ddp_model"]


def create_ddp_model(model: torch.nn.Module, **kwargs) -> torch.nn.Module:
    """Wrap in DDP when there are several processes. Detectron2's version always passes
    ``device_ids=[local_rank]``, which DDP rejects for CPU modules; CPU needs None."""
    if comm.get_world_size() == 1:
        return model
    on_cuda = next(model.parameters()).is_cuda
    kwargs.setdefault("device_ids", [comm.get_local_rank()] if on_cuda else None)
    return DistributedDataParallel(model, **kwargs)


class Seg2Trainer(DefaultTrainer):
    """DefaultTrainer overriding only its public builders: data mapper, evaluators and
    (in :meth:`build_hooks`, before the checkpoint hook takes it) an atomic checkpointer."""

    def __init__(self, cfg):
        # Detectron2 builds DDP with device_ids=[local_rank], which CPU modules reject, and
        # offers no hook for it: only for several CPU processes is its helper swapped, for
        # the constructor call alone (a rename upstream fails loudly here, not silently).
        cpu_ddp = comm.get_world_size() > 1 and not cfg.MODEL.DEVICE.startswith("cuda")
        with mock.patch.object(d2_defaults, "create_ddp_model", create_ddp_model) if cpu_ddp else (
            contextlib.nullcontext()
        ):
            super().__init__(cfg)

    def build_hooks(self):
        """Detectron2's hooks, with the atomic checkpointer and an evaluation hook that keeps
        its results in :attr:`eval_results`."""
        self.checkpointer = AtomicCheckpointer(
            self.checkpointer.model, self.cfg.OUTPUT_DIR, **self.checkpointer.checkpointables
        )
        self.eval_results = None
        return [
            hooks.EvalHook(self.cfg.TEST.EVAL_PERIOD, self._evaluate)
            if isinstance(h, hooks.EvalHook)
            else h
            for h in super().build_hooks()
        ]

    def _evaluate(self):
        self.eval_results = self.test(self.cfg, self.model)
        return self.eval_results

    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(cfg, mapper=Seg2DatasetMapper(cfg, True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(cfg, dataset_name, mapper=Seg2DatasetMapper(cfg, False))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluators(cfg, dataset_name, output_folder)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """DefaultTrainer.test, but results are always keyed by dataset name (Detectron2
        unwraps a single dataset), so the results file has one shape for one or many."""
        results = super().test(cfg, model, evaluators)
        if len(cfg.DATASETS.TEST) == 1 and results:
            results = {cfg.DATASETS.TEST[0]: results}
        return results
