"""Checkpoints written atomically, so a run killed mid-save never leaves a torn file that
``--resume`` would then load; what a kill can still leave (a temporary file, a tag naming an
unreadable file) is cleaned up or skipped on the next start."""

import logging
import os
import pickle
import re
import zipfile
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.checkpoint import DetectionCheckpointer

from ..io import InputError, atomic_open
from .divergence import TrainingDivergedError

__all__ = [
    "AtomicCheckpointer",
    "CONFIG_KEY",
    "METADATA_KEY",
    "checkpoint_problem",
    "format_shape_mismatches",
    "shape_mismatch_error",
]

logger = logging.getLogger("seg2")

# Temporary files of seg2.io.atomic_open ("<name>.<random>.tmp") for the checkpointer's own
# files, and the "<name>.pth.tmp" of older versions.
_STALE_TMP = re.compile(r"^(?:.+\.pth|last_checkpoint)\.(?:[A-Za-z0-9_]+\.)?tmp$")

# Extra entries of seg2's checkpoint dict, beside Detectron2's "model" and checkpointables:
# the config a model was trained with (``cfg.dump()`` text) and its training dataset's class
# metadata, so that the file alone rebuilds the model and names its outputs.
CONFIG_KEY = "seg2_config"
METADATA_KEY = "seg2_metadata"


def checkpoint_problem(path: str) -> Optional[str]:
    """Why ``path`` cannot be a checkpoint (None if it looks readable), from its directory
    and first bytes only: missing, a torch zip archive without its end record (truncated)
    or without ``data.pkl``, or neither zip nor pickle. A payload that is corrupt further in
    fails in ``torch.load``, and :meth:`AtomicCheckpointer.load` names the file then."""
    if not os.path.exists(path):
        return "file not found"
    if not os.path.isfile(path):
        return "not a file"
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                if not any(n.endswith("data.pkl") for n in z.namelist()):
                    return "a zip archive, but not a torch checkpoint (no data.pkl)"
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            return f"unreadable checkpoint ({e})"
        return None
    with open(path, "rb") as f:
        head = f.read(2)
    if head[:1] != b"\x80":  # pickle protocol 2+: legacy torch files and Detectron2's .pkl
        if head[:2] == b"PK":
            return "truncated checkpoint (zip archive without its end record)"
        return "not a checkpoint (neither a torch zip archive nor a pickle)"
    return None


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
    the last checkpoint written is always a usable one, and adds ``extra_data`` (the run's
    config and class metadata, :mod:`seg2.engine.trained_model`) to every file. Loading is
    Detectron2's too; a checkpoint of a model with other class counts gets one summary line
    for its re-initialised heads when fine-tuning, and is an :class:`InputError` naming the
    tensors and both class counts with ``strict_shapes`` (inference, evaluation, export) and
    when resuming, where a mismatch means the wrong config.
    """

    def __init__(
        self,
        *args,
        extra_data: Optional[Dict[str, Any]] = None,
        strict_shapes: bool = False,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.extra_data = dict(extra_data or {})
        self.strict_shapes = strict_shapes
        self._resuming = False
        self._loading = ""  # the file being loaded, for messages
        self.path_manager = _AtomicWrites(self.path_manager)
        self._fallbacks: List[str] = []  # checkpoints to try next while resuming
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
        """The checkpoint ``last_checkpoint`` names if it looks readable; otherwise, with a
        warning, the newest ``model_*.pth`` in the folder that does (by modification time)."""
        candidates = self._resume_candidates()
        return candidates[0] if candidates else ""

    def _resume_candidates(self) -> List[str]:
        """Checkpoints to resume from, best first: the tagged one, then the others newest
        first, each passing :func:`checkpoint_problem`'s cheap checks."""
        tag = os.path.join(self.save_dir, "last_checkpoint")
        tagged = super().get_checkpoint_file() if super().has_checkpoint() else ""
        problem = checkpoint_problem(tagged) if tagged else "missing"
        others = [
            p
            for p in self._saved_checkpoints()
            if os.path.abspath(p) != os.path.abspath(tagged) and checkpoint_problem(p) is None
        ]
        if problem is None:
            return [tagged] + others
        if others:
            said = f"names {tagged}: {problem}" if tagged else "is missing"
            logger.warning(
                f"{tag} {said}; resuming from the newest readable checkpoint, {others[0]}"
            )
            return others
        if not tagged:
            return []
        raise InputError(
            f"{tag}: names {tagged}: {problem}, and no other readable checkpoint is in that "
            "folder (delete last_checkpoint to start over)"
        )

    def resume_or_load(self, path: str, *, resume: bool = True):
        """Detectron2's ``resume_or_load``; when resuming, a checkpoint that ``torch.load``
        cannot read (corrupt further in than the cheap checks look) is skipped, with a
        warning, for the next newest."""
        resuming = resume and self.has_checkpoint()
        self._fallbacks = self._resume_candidates()[1:] if resuming else []
        self._resuming = resuming
        try:
            return super().resume_or_load(path, resume=resume)
        finally:
            self._fallbacks = []
            self._resuming = False

    def load(self, path: str, *args, **kwargs):
        self._loading = path
        try:
            return super().load(path, *args, **kwargs)
        finally:
            self._loading = ""

    # ---- never save a diverged model

    def save(self, name: str, **kwargs: Any) -> None:
        self.check_finite_weights(kwargs.get("iteration"))
        super().save(name, **{**self.extra_data, **kwargs})

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

    def _load_file(self, filename: str):
        """Detectron2's reader; a file ``torch.load`` cannot read is an :class:`InputError`
        naming it, or, when resuming, is skipped for the next newest checkpoint."""
        unreadable = (RuntimeError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile)
        try:
            return super()._load_file(filename)
        except unreadable as e:
            error = f"{filename}: unreadable checkpoint ({type(e).__name__})"
        while self._fallbacks:
            other = self._fallbacks.pop(0)
            logger.warning(f"{error}; resuming from the next newest, {other}")
            self._loading = other
            try:
                return super()._load_file(other)
            except unreadable as e:
                error = f"{other}: unreadable checkpoint ({type(e).__name__})"
        raise InputError(error)

    def _load_model(self, checkpoint: Any):
        """Detectron2's loading; the tensors whose shapes do not fit this model (it leaves
        them out, so they keep their fresh initialisation) are logged as one line, or, in
        strict mode, raise an :class:`InputError`."""
        stores_config = isinstance(checkpoint, dict) and CONFIG_KEY in checkpoint
        incompatible = super()._load_model(checkpoint)
        if incompatible is not None and incompatible.incorrect_shapes:
            if self.strict_shapes or self._resuming:
                raise InputError(
                    shape_mismatch_error(
                        self._loading,
                        incompatible.incorrect_shapes,
                        self._resuming,
                        stores_config,
                    )
                )
            self.logger.warning(format_shape_mismatches(incompatible.incorrect_shapes))
            incompatible = incompatible._replace(incorrect_shapes=[])
        return incompatible


def format_shape_mismatches(mismatches: Sequence[Tuple[str, tuple, tuple]]) -> str:
    """
    One line naming every re-initialised tensor, grouped by module, e.g.
    ``... re-initialised: roi_heads.box_predictor.cls_score.{weight (81, 1024)->(4, 1024),
    bias (81,)->(4,)}; ...``.

    Args:
        mismatches: ``(name, shape in checkpoint, shape in model)`` triples.
    """
    grouped, num_modules = _group_by_module(mismatches)
    return (
        f"Fine-tuning: {len(mismatches)} tensors in {num_modules} modules do not fit this "
        "model's shapes (checkpoint->model), so they were not loaded and keep their fresh "
        "initialisation; every other matching tensor was loaded. Re-initialised: " + grouped
    )


def _group_by_module(mismatches: Sequence[Tuple[str, tuple, tuple]]) -> Tuple[str, int]:
    """``"m.{weight (a)->(b), bias (c)->(d)}; ..."`` and the number of modules."""
    modules: "OrderedDict[str, List[str]]" = OrderedDict()
    for name, ckpt, model in mismatches:
        module, _, leaf = name.rpartition(".")
        modules.setdefault(module, []).append(f"{leaf} {ckpt}->{model}")
    parts = [
        f"{m}.{{{', '.join(leaves)}}}" if m else ", ".join(leaves) for m, leaves in modules.items()
    ]
    return "; ".join(parts), len(modules)


# Tensors whose first dimension counts a head's classes, and the rows that are not classes
# (Detectron2's box classifier has a background row). The first one present is used.
_CLASS_ROWS = (
    ("roi_heads.box_predictor.cls_score.weight", "thing", 1),
    ("roi_heads.mask_head.predictor.weight", "thing", 0),
    ("sem_seg_head.predictor.weight", "semantic", 0),
)


def shape_mismatch_error(
    path: str,
    mismatches: Sequence[Tuple[str, tuple, tuple]],
    resuming: bool = False,
    stores_config: bool = True,
) -> str:
    """One line for a checkpoint that does not fit the model built from the config: the
    tensors with both shapes and, from the class layers' shapes, both class counts."""
    counts: "OrderedDict[str, Tuple[int, int]]" = OrderedDict()
    shapes = {name: (ckpt, model) for name, ckpt, model in mismatches}
    for name, kind, extra_rows in _CLASS_ROWS:
        if name in shapes and kind not in counts:
            ckpt, model = shapes[name]
            counts[kind] = (ckpt[0] - extra_rows, model[0] - extra_rows)
    grouped, _ = _group_by_module(mismatches)
    classes = ""
    if counts:
        classes = (
            "; the checkpoint has "
            + " and ".join(f"{c} {kind} classes" for kind, (c, _) in counts.items())
            + ", the config's model "
            + " and ".join(f"{m} {kind} classes" for kind, (_, m) in counts.items())
        )
    if resuming:
        what, advice = "--resume", (
            "resume with the config this run was trained with (OUTPUT_DIR/config.yaml), or "
            "train in a new OUTPUT_DIR"
        )
    else:
        what, advice = "MODEL.WEIGHTS", (
            "pass the config the checkpoint was trained with"
            + (
                " (it carries it: give MODEL.WEIGHTS without --config-file)"
                if stores_config
                else " and the class counts it has"
            )
        )
    return (
        f"{what} {path or '(checkpoint)'}: {len(mismatches)} tensors do not fit the model of "
        f"this config (checkpoint->model): {grouped}{classes}; {advice}"
    )
