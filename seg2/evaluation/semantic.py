"""Semantic segmentation metrics from one confusion matrix.

The figures Detectron2's ``SemSegEvaluator`` reports (``mIoU``, ``fwIoU``, ``IoU-*``,
``mACC``, ``pACC``, ``ACC-*``) are computed with its exact conventions, so they are
identical on the same input: pixels whose ground truth is the ignore label count nowhere,
and a class absent from the ground truth gets NaN and is left out of every mean (even when
it is predicted; its false positives still lower the IoU of the classes they cover).
Dice, precision, recall and F1 follow the same conventions. Detectron2's boundary IoU
and its per-pixel RLE dump (``sem_seg_predictions.json``) are not computed, which is most
of why this evaluator is faster. The ``DatasetEvaluator`` over a model's outputs is
:class:`seg2.evaluation.semantic_evaluator.Seg2SemSegEvaluator`.
"""

import csv
import logging
import os
import warnings
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from ..io import InputError, read_label_png
from .offline import check_label_values, match_by_name, pair_error

__all__ = [
    "ConfusionMatrix",
    "argmax_channels",
    "semantic_metrics",
    "save_confusion_csv",
    "save_confusion_png",
    "evaluate_semantic_folders",
]

logger = logging.getLogger(__name__)


def argmax_channels(scores: torch.Tensor, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """``scores.argmax(dim=0)`` as ``dtype``: the same answer (the first maximum on ties) for
    finite scores; a NaN score never wins here, whereas torch's argmax picks it.

    On CPU a running maximum over the K channels is faster than torch's strided argmax
    reduction; on GPU torch's kernel is used.

    Args:
        scores: (K, H, W) scores.
    Returns:
        (H, W) class ids on the device of ``scores``.
    """
    if scores.is_cuda or scores.shape[0] == 1 or not scores.dtype.is_floating_point:
        return scores.argmax(dim=0).to(dtype)
    best = scores[0].clone()
    index = torch.zeros(scores.shape[1:], dtype=dtype)
    for k in range(1, scores.shape[0]):
        index.masked_fill_(scores[k] > best, k)
        torch.maximum(best, scores[k], out=best)
    return index


class ConfusionMatrix:
    """Pixel counts ``matrix[gt, pred]`` of shape (K+1, K+1), accumulated with ``bincount``.

    Row K holds pixels whose ground truth is the ignore label (never scored); column K holds
    pixels predicted as the ignore label, i.e. left without a prediction, which count as
    misses of their ground-truth class (models' argmax never produces them).
    """

    def __init__(self, num_classes: int, ignore_label: Optional[int] = 255):
        if num_classes < 1:
            raise ValueError(f"ConfusionMatrix: num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_label = ignore_label
        self.matrix = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
        self._luts: Dict[np.dtype, np.ndarray] = {}

    def reset(self) -> None:
        self.matrix[:] = 0

    def _lut(self, dtype: np.dtype) -> np.ndarray:
        """Label value -> row/column index (K for ignore, -1 for invalid), per unsigned dtype."""
        lut = self._luts.get(dtype)
        if lut is None:
            size = np.iinfo(dtype).max + 1
            lut = np.full(size, -1, dtype=np.intp)
            k = min(self.num_classes, size)
            lut[:k] = np.arange(k)
            if self.ignore_label is not None and 0 <= self.ignore_label < size:
                lut[self.ignore_label] = self.num_classes
            self._luts[dtype] = lut
        return lut

    def _index(self, labels: np.ndarray, path: str, what: str) -> np.ndarray:
        if labels.dtype in (np.uint8, np.uint16):
            idx = self._lut(labels.dtype)[labels]
            if idx.min(initial=0) < 0:
                check_label_values(labels, self.num_classes, self.ignore_label, path, what)
            return idx
        if labels.dtype.kind not in "iub":
            raise InputError(
                f"{path}: {what} must hold integer class ids, got {labels.dtype}"
            )
        check_label_values(labels, self.num_classes, self.ignore_label, path, what)
        idx = labels.astype(np.intp)
        if self.ignore_label is not None:
            idx[labels == self.ignore_label] = self.num_classes
        return idx

    def update(
        self,
        pred: np.ndarray,
        gt: np.ndarray,
        gt_path: str = "<array>",
        pred_path: str = "<array>",
        pred_is_valid: bool = False,
    ) -> None:
        """Add one image.

        Args:
            pred: (H, W) integer class ids in [0, K), or the ignore label.
            gt: (H, W) integer class ids in [0, K), or the ignore label.
            gt_path, pred_path: file names used in error messages.
            pred_is_valid: skip the value check of ``pred`` (an argmax is always in range).
        """
        if pred.shape != gt.shape:
            raise pair_error(gt_path, pred_path, gt.shape, pred.shape)
        g = self._index(gt, gt_path, "ground-truth label")
        p = pred if pred_is_valid else self._index(pred, pred_path, "predicted label")
        g *= self.num_classes + 1
        g += p
        self.matrix += np.bincount(g.ravel(), minlength=self.matrix.size).reshape(self.matrix.shape)

    def merge(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        """Add another matrix (e.g. from another rank) in place; returns self."""
        if other.matrix.shape != self.matrix.shape:
            raise ValueError(
                f"ConfusionMatrix: cannot merge {other.matrix.shape} into {self.matrix.shape}"
            )
        self.matrix += other.matrix
        return self


def semantic_metrics(conf: np.ndarray, class_names: Sequence[str]) -> "OrderedDict[str, float]":
    """All semantic metrics, in percent, from a confusion matrix.

    Args:
        conf: (K, K) or (K+1, K+1) pixel counts indexed ``[gt, pred]``; in the larger form
            row K (ignored ground truth) is dropped and column K (no prediction) counts as
            misses.
        class_names: K names, used in the per-class keys.

    Returns:
        ``mIoU``, ``fwIoU``, ``IoU-<c>``, ``mACC``, ``pACC``, ``ACC-<c>`` (Detectron2's keys
        and values), then ``Dice-<c>``, ``mDice``, ``Precision-<c>``, ``Recall-<c>``,
        ``F1-<c>``, ``mPrecision``, ``mRecall``, ``mF1``. Classes absent from the ground truth
        are NaN and excluded from the means. Recall equals ACC and F1 equals Dice per class;
        a present class never predicted has precision 0. The macro means average the
        per-class values (scikit-learn's ``average="macro"``).
    """
    k = len(class_names)
    conf = np.asarray(conf)
    if conf.shape not in ((k, k), (k + 1, k + 1)):
        raise ValueError(
            f"semantic_metrics: conf has shape {conf.shape}, "
            f"expected ({k}, {k}) or ({k + 1}, {k + 1})"
        )
    # The same operations in the same order as Detectron2's SemSegEvaluator.evaluate (whose
    # matrix is the transpose), so the shared figures are bit-identical.
    tp = conf.diagonal()[:k].astype(float)
    pos_gt = np.sum(conf[:k, :], axis=1).astype(float)
    if not pos_gt.any():
        logger.warning(
            "semantic metrics: the ground truth has no labelled pixel; every figure is NaN"
        )
    elif not pos_gt.all():
        absent = [class_names[i] for i in np.flatnonzero(pos_gt == 0)]
        logger.warning(
            f"semantic metrics: {len(absent)} of {k} classes have no ground-truth pixel "
            f"({absent[:10]}): NaN, left out of the means"
        )
    pos_pred = np.sum(conf[:k, :k], axis=0).astype(float)
    class_weights = pos_gt / np.sum(pos_gt) if np.sum(pos_gt) > 0 else np.zeros(k)
    valid = pos_gt > 0
    acc = np.full(k, np.nan)
    iou = np.full(k, np.nan)
    acc[valid] = tp[valid] / pos_gt[valid]
    union = pos_gt + pos_pred - tp
    iou_valid = np.logical_and(valid, union > 0)
    iou[iou_valid] = tp[iou_valid] / union[iou_valid]

    dice = np.full(k, np.nan)
    dice[valid] = 2 * tp[valid] / (pos_gt[valid] + pos_pred[valid])
    precision = np.full(k, np.nan)
    predicted = np.logical_and(valid, pos_pred > 0)
    precision[valid] = 0.0
    precision[predicted] = tp[predicted] / pos_pred[predicted]
    recall = acc
    f1 = np.full(k, np.nan)
    pr = precision + recall
    f1[valid] = 0.0
    f1_ok = np.logical_and(valid, pr > 0)
    f1[f1_ok] = 2 * precision[f1_ok] * recall[f1_ok] / pr[f1_ok]

    def mean(values: np.ndarray, mask: np.ndarray) -> float:
        return float(np.sum(values[mask]) / np.sum(mask)) if mask.any() else float("nan")

    res: "OrderedDict[str, float]" = OrderedDict()
    res["mIoU"] = 100 * mean(iou, iou_valid)
    res["fwIoU"] = (
        100 * float(np.sum(iou[iou_valid] * class_weights[iou_valid]))
        if valid.any()
        else float("nan")
    )
    for i, name in enumerate(class_names):
        res[f"IoU-{name}"] = 100 * float(iou[i])
    res["mACC"] = 100 * mean(acc, valid)
    res["pACC"] = 100 * float(np.sum(tp) / np.sum(pos_gt)) if valid.any() else float("nan")
    for i, name in enumerate(class_names):
        res[f"ACC-{name}"] = 100 * float(acc[i])
    for i, name in enumerate(class_names):
        res[f"Dice-{name}"] = 100 * float(dice[i])
    res["mDice"] = 100 * mean(dice, valid)
    for key, values in (("Precision", precision), ("Recall", recall), ("F1", f1)):
        for i, name in enumerate(class_names):
            res[f"{key}-{name}"] = 100 * float(values[i])
    res["mPrecision"] = 100 * mean(precision, valid)
    res["mRecall"] = 100 * mean(recall, valid)
    res["mF1"] = 100 * mean(f1, valid)
    return res


def _labels_with_ignore(class_names: Sequence[str]) -> List[str]:
    return list(class_names) + ["ignore"]


def save_confusion_csv(conf: np.ndarray, class_names: Sequence[str], path: str) -> str:
    """Write the (K+1, K+1) matrix as CSV: rows ground truth, columns prediction, pixel counts;
    the last row/column is the ignore label (ignored ground truth / no prediction)."""
    names = _labels_with_ignore(class_names)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["gt\\pred"] + names)
        for name, row in zip(names, np.asarray(conf)):
            writer.writerow([name] + [int(v) for v in row])
    return path


def save_confusion_png(conf: np.ndarray, class_names: Sequence[str], path: str) -> str:
    """Heat-map of the K x K matrix, each ground-truth row normalised to sum to 1 (pixels
    left without prediction count in the sum), class names on both axes."""
    # Figure + Agg canvas, not pyplot: no global backend switch, safe in any process.
    with warnings.catch_warnings():  # matplotlib's own pyparsing deprecations
        warnings.simplefilter("ignore", DeprecationWarning)
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

    k = len(class_names)
    conf = np.asarray(conf, dtype=float)
    rows = conf[:k, :].sum(axis=1, keepdims=True)
    norm = np.divide(conf[:k, :k], rows, out=np.zeros((k, k)), where=rows > 0)
    side = min(max(4.0, 0.45 * k + 2.0), 40.0)
    fig = Figure(figsize=(side, side), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    im = ax.imshow(norm, cmap="viridis", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(k), labels=list(class_names), rotation=90, fontsize=8)
    ax.set_yticks(range(k), labels=list(class_names), fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if norm[i, j] >= 0.005:
                    colour = "black" if norm[i, j] > 0.5 else "white"
                    ax.text(
                        j,
                        i,
                        f"{norm[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=6,
                        color=colour,
                    )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title("confusion (row-normalised)")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with warnings.catch_warnings():  # matplotlib's own pyparsing deprecations
        warnings.simplefilter("ignore", DeprecationWarning)
        fig.tight_layout()
        fig.savefig(path)
    return path


def write_semantic_outputs(
    conf: np.ndarray, class_names: Sequence[str], output_dir: Optional[str]
) -> None:
    if output_dir:
        save_confusion_csv(conf, class_names, os.path.join(output_dir, "sem_seg_confusion.csv"))
        save_confusion_png(conf, class_names, os.path.join(output_dir, "sem_seg_confusion.png"))


def evaluate_semantic_folders(
    gt_dir: str,
    pred_dir: str,
    num_classes: int,
    ignore_label: Optional[int] = 255,
    class_names: Optional[Sequence[str]] = None,
    output_dir: Optional[str] = None,
) -> "OrderedDict[str, Dict[str, float]]":
    """Score label PNGs on disk: each ``gt_dir/<rel>.png`` against ``pred_dir/<rel>.png``.

    Args:
        gt_dir, pred_dir: folders of single-channel PNGs of class ids (searched recursively,
            matched by relative path). Predictions may use ``ignore_label`` for "no
            prediction".
        num_classes: K; values other than ``0..K-1`` and ``ignore_label`` are an error.
        class_names: K names (default ``"0".."K-1"``).
        output_dir: where ``sem_seg_confusion.csv``/``.png`` go (nothing written if None).

    Returns:
        ``{"sem_seg": semantic_metrics(...)}``.
    """
    names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise InputError(
            f"--class-names: {len(names)} names given for --num-classes {num_classes}"
        )
    conf = ConfusionMatrix(num_classes, ignore_label)
    for gt_path, pred_path in match_by_name(gt_dir, pred_dir):
        gt = read_label_png(gt_path, "ground-truth label")
        pred = read_label_png(pred_path, "predicted label")
        conf.update(pred, gt, gt_path, pred_path)
    write_semantic_outputs(conf.matrix, names, output_dir)
    return OrderedDict(sem_seg=semantic_metrics(conf.matrix, names))
