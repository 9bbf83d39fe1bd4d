"""Checkpoints written atomically, so a run killed mid-save never leaves a torn file that
``--resume`` would then load; what a kill can still leave (a temporary file, a tag naming an
unreadable file) is cleaned up or skipped on the next start."""

import logging
import os
import re
from typing import Any, List

import torch
from detectron2.checkpoint import DetectionCheckpointer

from ..config_check import checkpoint_problem
from ..io import InputError, atomic_open
from .divergence import TrainingDivergedError
from .weights import summarize_shape_mismatches

__all__ = ["AtomicCheckpointer"]

logger = logging.getLogger("seg2")

# Temporary files of seg2.io.atomic_open ("<name>.<random>.tmp") for the checkpointer's own
# files, and the "<name>.pth.tmp" of older versions.
_STALE_TMP = re.compile(r"^(?:.+\.pth|last_checkpoint)\.(?:[A-Za-z0-9_]+\.)?tmp$")


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

    Also: temporary files a killed run left behind are removed when it is created (main
    process); :meth:`get_checkpoint_file` skips a tagged file that is unreadable, falling back
    to the newest readable checkpoint; :meth:`save` refuses a model with non-finite weights, so
    the last checkpoint written is always a usable one. Loading is Detectron2's too; a
    checkpoint of a model with other class counts (fine-tuning) gets one summary line for its
    re-initialised heads (``seg2.engine.weights``).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.path_manager = _AtomicWrites(self.path_manager)
        if self.save_to_disk and self.save_dir and os.path.isdir(self.save_dir):
            self.remove_stale_temp_files()

    # ---- what a kill leaves behind

    def remove_stale_temp_files(self) -> List[str]:
        """Delete temporary checkpoint files of an earlier, killed run; returns their paths."""
        removed = []
        for name in sorted(os.listdir(self.save_dir)):
            path = os.path.join(self.save_dir, name)
            if _STALE_TMP.match(name) and os.path.isfile(path):
                os.remove(path)
                removed.append(path)
        if removed:
            logger.warning(
                f"Removed {len(removed)} partial file(s) of an interrupted save: {removed}"
            )
        return removed

    def _saved_checkpoints(self) -> List[str]:
        """This checkpointer's periodic/final files (``model_*.pth``), newest first."""
        files = [
            p for p in self.get_all_checkpoint_files() if os.path.basename(p).startswith("model_")
        ]
        return sorted(files, key=os.path.getmtime, reverse=True)

    def has_checkpoint(self) -> bool:
        """Also True when a kill came between writing a checkpoint and tagging it."""
        return super().has_checkpoint() or any(
            checkpoint_problem(p) is None for p in self._saved_checkpoints()
        )

    def get_checkpoint_file(self) -> str:
        """The checkpoint ``last_checkpoint`` names if it is readable; otherwise, with a
        warning, the newest readable ``model_*.pth`` in the folder (by modification time)."""
        tag = os.path.join(self.save_dir, "last_checkpoint")
        tagged = super().get_checkpoint_file() if super().has_checkpoint() else ""
        problem = checkpoint_problem(tagged) if tagged else "missing"
        if problem is None:
            return tagged
        for path in self._saved_checkpoints():
            if (
                os.path.abspath(path) != os.path.abspath(tagged)
                and checkpoint_problem(path) is None
            ):
                said = f"names {tagged}: {problem}" if tagged else "is missing"
                logger.warning(
                    f"{tag} {said}; resuming from the newest readable checkpoint, {path}"
                )
                return path
        if not tagged:
            return ""
        raise InputError(
            f"{tag}: names {tagged}: {problem}, and no other readable checkpoint is in that "
            "folder (delete last_checkpoint to start over)"
        )

    # ---- never save a diverged model

    def save(self, name: str, **kwargs: Any) -> None:
        self.check_finite_weights(kwargs.get("iteration"))
        super().save(name, **kwargs)

    def check_finite_weights(self, iteration=None) -> None:
        """Raise :class:`TrainingDivergedError` if any floating-point weight is NaN/Inf."""
        bad = [
            k
            for k, v in self.model.state_dict().items()
            if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())
        ]
        if bad:
            at = f" after iteration {iteration}" if iteration is not None else ""
            shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            raise TrainingDivergedError(
                f"training diverged{at}: non-finite weights in {shown}; not saving this "
                f"state (newest checkpoint: {self._newest_or_none()})"
            )

    def _newest_or_none(self) -> str:
        return super().get_checkpoint_file() if super().has_checkpoint() else "none yet"

    # ---- fine-tuning: one line for the heads that do not fit

    def load(self, path: str, *args, **kwargs):
        """Detectron2's ``load``; tensors whose shapes do not fit are logged in one line."""
        with summarize_shape_mismatches(self.logger):
            return super().load(path, *args, **kwargs)
