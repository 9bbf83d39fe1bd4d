"""Checkpoints written atomically, so a run killed mid-save never leaves a torn file that
``--resume`` would then load."""
from typing import Any

from detectron2.checkpoint import DetectionCheckpointer

from ..io import atomic_open
from .weights import summarize_shape_mismatches

__all__ = ["AtomicCheckpointer"]


class _AtomicWrites:
    """A path manager whose ``open`` for writing goes through a temporary file that replaces
    the target only once it is complete; everything else is the wrapped manager's."""

    def __init__(self, path_manager: Any):
        self._inner = path_manager

    def open(self, path: str, mode: str = "r", **kwargs):
        if "w" in mode and "://" not in path:
            return atomic_open(path, mode)
        return self._inner.open(path, mode, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class AtomicCheckpointer(DetectionCheckpointer):
    """Detectron2's checkpointer whose writes (the ``.pth`` file and the ``last_checkpoint``
    tag) go through a temporary file + ``os.replace`` (atomic on POSIX and Windows, within
    one filesystem). Only the path manager is replaced; saving is Detectron2's own code.
    Loading is Detectron2's too; a checkpoint of a model with other class counts (fine-tuning)
    gets one summary line for its re-initialised heads (``seg2.engine.weights``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.path_manager = _AtomicWrites(self.path_manager)

    def load(self, path: str, *args, **kwargs):
        """Detectron2's ``load``; tensors whose shapes do not fit are logged in one line."""
        with summarize_shape_mismatches(self.logger):
            return super().load(path, *args, **kwargs)
