"""Training and evaluation runs: Detectron2's DefaultTrainer extended through its public
builders (mapper, evaluators, atomic checkpoints, CPU DDP), and the run's setup and results."""
from .checkpoint import AtomicCheckpointer
from .trainer import Seg2Trainer, create_ddp_model

__all__ = ["AtomicCheckpointer", "Seg2Trainer", "create_ddp_model"]
