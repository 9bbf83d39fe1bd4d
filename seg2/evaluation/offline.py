"""Matching and checking predictions saved on disk, for evaluation without a model.

Files are read through :mod:`seg2.io`; every check raises :class:`~seg2.io.InputError`
with a message that names the offending file
(and the field or id), so ``tools/evaluate.py`` can print one line instead of a traceback
from deep inside numpy, pycocotools or cityscapesscripts.
"""

import os
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..io import InputError, open_image

__all__ = [
    "read_rgb_png",
    "list_pngs",
    "match_by_name",
    "check_label_values",
    "pair_error",
    "format_results",
]



def read_rgb_png(path: str, what: str = "panoptic") -> np.ndarray:
    """An RGB PNG as an (H, W, 3) uint8 array (Cityscapes' panoptic colours)."""
    img = open_image(path, f"{what} PNG")
    if img.mode != "RGB":
        raise InputError(f"{path}: {what} PNG must be RGB, got mode {img.mode!r}")
    return np.asarray(img)


def list_pngs(folder: str, what: str) -> List[str]:
    """Relative paths of every ``*.png`` under ``folder`` (recursive, sorted)."""
    if not os.path.isdir(folder):
        raise InputError(f"{folder}: {what} folder not found")
    found = []
    for root, _, files in os.walk(folder):
        for f in files:
            if f.lower().endswith(".png"):
                found.append(os.path.relpath(os.path.join(root, f), folder))
    found.sort()
    if not found:
        raise InputError(f"{folder}: no {what} PNGs found")
    return found


def match_by_name(gt_dir: str, pred_dir: str) -> List[Tuple[str, str]]:
    """Pair every ground-truth PNG with the prediction PNG of the same relative path.

    Returns:
        list of (gt_path, pred_path); a ground truth without prediction raises
        InputError naming the ground-truth file and the expected prediction path.
    """
    gt_files = list_pngs(gt_dir, "ground-truth")
    if not os.path.isdir(pred_dir):
        raise InputError(f"{pred_dir}: prediction folder not found")
    pairs = []
    for rel in gt_files:
        pred = os.path.join(pred_dir, rel)
        if not os.path.isfile(pred):
            raise InputError(
                f"{os.path.join(gt_dir, rel)}: no prediction for this ground truth "
                f"(expected {pred})"
            )
        pairs.append((os.path.join(gt_dir, rel), pred))
    return pairs


def check_label_values(
    labels: np.ndarray, num_classes: int, ignore_label: Optional[int], path: str, what: str
) -> None:
    """Raise if ``labels`` holds values outside ``[0, num_classes)`` other than ``ignore_label``."""
    if labels.size == 0:
        return
    values = (
        np.unique(labels)
        if labels.dtype.itemsize > 2
        else np.flatnonzero(np.bincount(labels.ravel().astype(np.int64, copy=False)))
    )
    bad = [int(v) for v in values if (v < 0 or v >= num_classes) and v != ignore_label]
    if bad:
        allowed = f"0..{num_classes - 1}" + (
            f" or {ignore_label}" if ignore_label is not None else ""
        )
        raise InputError(
            f"{path}: {what} value(s) {bad[:10]} outside the class range {allowed}"
        )


def pair_error(gt_path: str, pred_path: str, gt_shape: Sequence[int], pred_shape: Sequence[int]):
    """The size-mismatch error, naming the prediction file."""
    return InputError(
        f"{pred_path}: prediction is {tuple(pred_shape)} (H, W) but its ground truth "
        f"{gt_path} is {tuple(gt_shape)}"
    )


def format_results(results: Mapping[str, Mapping[str, float]]) -> str:
    """Readable tables of ``{task: {metric: value}}``: per task one row of the summary
    metrics, then one row per class of the ``<metric>-<class>`` entries (pipe format)."""
    from tabulate import tabulate

    blocks = []
    for task, metrics in results.items():
        summary = {k: v for k, v in metrics.items() if "-" not in k}
        per_class: "OrderedDict[str, Dict[str, float]]" = OrderedDict()
        columns: List[str] = []
        for key, value in metrics.items():
            if "-" in key:
                metric, name = key.split("-", 1)
                if metric not in columns:
                    columns.append(metric)
                per_class.setdefault(name, {})[metric] = value
        fmt = dict(tablefmt="pipe", floatfmt=".3f", numalign="right")
        text = f"{task}:\n" + tabulate([list(summary.values())], headers=list(summary), **fmt)
        if per_class:
            rows = [
                [name] + [m.get(c, float("nan")) for c in columns] for name, m in per_class.items()
            ]
            text += "\n\n" + tabulate(rows, headers=["class"] + columns, **fmt)
        blocks.append(text)
    return "\n\n".join(blocks)
