from .checkpoint import AtomicCheckpointer
from .trainer import Seg2Trainer, create_ddp_model

__all__ = ["AtomicCheckpointer", "Seg2Trainer", "create_ddp_model"]
