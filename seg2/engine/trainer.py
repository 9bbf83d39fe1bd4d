"""Seg2Trainer: Detectron2's DefaultTrainer with seg2's mapper, evaluators and checkpointer,
DistributedDataParallel that also works on CPU (gloo), an exactly resumable train loader, a
clean stop on non-finite losses and a checkpointed stop on SIGTERM."""

import logging
import weakref

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.data.common import DatasetFromList
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase, hooks
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch.nn.parallel import DistributedDataParallel

from ..data.dataset_mapper import Seg2DatasetMapper
from ..data.parallel import worker_context
from ..evaluation.build import build_evaluators
from ..io import InputError
from ..modeling.roi_align import use_fast_roi_align
from .checkpoint import AtomicCheckpointer
from .divergence import TrainingDivergedError, stop_on_non_finite_losses
from .preemption import StopOnSignal
from .resume import (
    CaptureTrainingState,
    ResumableTrainLoader,
    TrainingState,
    build_sampler_factory,
    data_seed,
    preserved_rng,
)
from .trained_model import describe_training

__all__ = ["Seg2Trainer", "create_ddp_model"]

logger = logging.getLogger("seg2")


def create_ddp_model(model: torch.nn.Module, **kwargs) -> torch.nn.Module:
    """Wrap in DDP when there are several processes. Detectron2's version always passes
    ``device_ids=[local_rank]``, which DDP rejects for CPU modules; CPU needs None."""
    if comm.get_world_size() == 1:
        return model
    on_cuda = next(model.parameters()).is_cuda
    kwargs.setdefault("device_ids", [comm.get_local_rank()] if on_cuda else None)
    return DistributedDataParallel(model, **kwargs)


class Seg2Trainer(DefaultTrainer):
    """DefaultTrainer overriding only its public builders and hooks: data mapper and a
    resumable train loader, evaluators, an atomic checkpointer that also saves the loader
    position and RNG states (:mod:`seg2.engine.resume`), a check that stops at the first
    non-finite loss (:mod:`seg2.engine.divergence`) without checkpointing the bad state, and
    a stop on SIGTERM after the current iteration with a checkpoint at it
    (:mod:`seg2.engine.preemption`)."""

    def __init__(self, cfg):
        # DefaultTrainer's constructor, step by step, with seg2's create_ddp_model: Detectron2's
        # passes device_ids=[local_rank], which DDP rejects for CPU modules, and the
        # constructor has no hook for it.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = self.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(model, broadcast_buffers=False)
        loop = AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer
        self._trainer = loop(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        trainer = weakref.proxy(self)
        self.checkpointer = DetectionCheckpointer(model, cfg.OUTPUT_DIR, trainer=trainer)
        self.start_iter, self.max_iter, self.cfg = 0, cfg.SOLVER.MAX_ITER, cfg
        self.register_hooks(self.build_hooks())
        self.failed = False
        stop_on_non_finite_losses(self.model, lambda: self.iter, self._newest_checkpoint)

    def _newest_checkpoint(self) -> str:
        c = self.checkpointer
        try:
            return (
                c.get_checkpoint_file()
                if c.has_checkpoint()
                else "none (no checkpoint written yet)"
            )
        except InputError:  # only unreadable ones: the message being built is the news
            return "none readable"

    def build_hooks(self):
        """Detectron2's hooks, with the atomic checkpointer (also saving
        :class:`TrainingState`), a state capture just before the checkpoint hook, a stop on
        SIGTERM before evaluation, and an evaluation hook that keeps its results in
        :attr:`eval_results`."""
        loader = self.data_loader if isinstance(self.data_loader, ResumableTrainLoader) else None
        self.training_state = TrainingState(loader)
        self.checkpointer = AtomicCheckpointer(
            self.checkpointer.model,
            self.cfg.OUTPUT_DIR,
            **self.checkpointer.checkpointables,
            training_state=self.training_state,
            extra_data=describe_training(self.cfg),  # the file alone rebuilds the model
        )
        self.eval_results = None
        period = self.cfg.SOLVER.CHECKPOINT_PERIOD
        capture = CaptureTrainingState(self.training_state, period)
        self.stop_on_signal = StopOnSignal(self.checkpointer, self.training_state, period)
        ret = []
        for h in super().build_hooks():
            # the capture runs on every process, right before the (main-only) checkpointer
            if isinstance(h, (hooks.PeriodicCheckpointer, hooks.EvalHook)) and capture not in ret:
                ret.append(capture)
            if isinstance(h, hooks.EvalHook):
                ret.append(self.stop_on_signal)  # after any checkpoint, before evaluating
                h = hooks.EvalHook(self.cfg.TEST.EVAL_PERIOD, self._evaluate)
            ret.append(h)
        return ret

    def train(self):
        try:
            return super().train()
        finally:  # loader workers end with training, not at garbage collection
            if isinstance(self.data_loader, ResumableTrainLoader):
                self.data_loader.close()

    def run_step(self):
        try:
            super().run_step()
        except FloatingPointError as e:  # Detectron2's own divergence checks (RPN, summed loss)
            self.failed = True
            raise TrainingDivergedError(
                f"training stopped at iteration {self.iter}: {str(e).splitlines()[0]} The newest "
                f"checkpoint, {self._newest_checkpoint()}, is from before; lower SOLVER.BASE_LR, "
                "lengthen SOLVER.WARMUP_ITERS or enable SOLVER.CLIP_GRADIENTS, then --resume"
            ) from e
        except BaseException:
            self.failed = True  # keeps the end-of-training evaluation off a failed run
            raise

    def resume_or_load(self, resume=True):
        super().resume_or_load(resume=resume)
        if resume and self.checkpointer.has_checkpoint() and not self.training_state.restored:
            logger.warning(
                "The checkpoint holds no data-loader position or RNG state (older seg2 or a "
                "different number of processes): training continues, but not exactly as an "
                "uninterrupted run would"
            )

    def _evaluate(self):
        if self.failed or self.stop_on_signal.stopped_at is not None:
            return {}
        with preserved_rng():  # evaluating must not change the training run's randomness
            self.eval_results = self.test(self.cfg, self.model)
        return self.eval_results

    @classmethod
    def build_model(cls, cfg):
        """Detectron2's model, with seg2's ROIAlign in its poolers when
        ``MODEL.SEG2.FAST_ROI_ALIGN`` (same outputs and parameters; a faster CPU backward)."""
        model = super().build_model(cfg)
        if cfg.MODEL.SEG2.FAST_ROI_ALIGN:
            use_fast_roi_align(model)
        return model

    @classmethod
    def build_optimizer(cls, cfg, model):
        """Detectron2's SGD, without ``foreach`` off CUDA: Detectron2 turns it on everywhere,
        but torch's CPU foreach ops still loop per tensor and cost more than the plain loop.
        The updates are the same."""
        optimizer = super().build_optimizer(cfg, model)
        if not str(cfg.MODEL.DEVICE).startswith("cuda"):
            for group in optimizer.param_groups:
                group["foreach"] = False
        return optimizer

    @classmethod
    def build_train_loader(cls, cfg):
        """A :class:`ResumableTrainLoader` over Detectron2's dataset dicts and samplers."""
        mapper = Seg2DatasetMapper(cfg, True)
        # Detectron2's own config reading (datasets, filtering, batch size); a placeholder
        # sampler keeps it from drawing a seed we would not use.
        args = build_detection_train_loader.from_config(cfg, mapper=mapper, sampler=object())
        world = comm.get_world_size()
        if args["total_batch_size"] % world:
            from .config_check import ConfigError

            raise ConfigError(
                f"SOLVER.IMS_PER_BATCH = {args['total_batch_size']} is not divisible by the "
                f"{world} processes"
            )
        # The dicts live on serialized, as in Detectron2's loader; the list goes now.
        sampler_factory = build_sampler_factory(cfg, args["dataset"])
        dataset = DatasetFromList(args.pop("dataset"), copy=False, serialize=True)
        return ResumableTrainLoader(
            dataset,
            mapper,
            sampler_factory,
            batch_size=args["total_batch_size"] // world,
            seed=data_seed(cfg),
            aspect_ratio_grouping=args["aspect_ratio_grouping"],
            num_workers=args["num_workers"],
        )

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        mapper = Seg2DatasetMapper(cfg, False)
        loader = build_detection_test_loader(cfg, dataset_name, mapper=mapper)
        if loader.num_workers:
            loader.multiprocessing_context = worker_context()
        return loader

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
