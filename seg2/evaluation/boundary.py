"""Boundary and object-separation quality of semantic maps: what mIoU cannot see.

* **Boundary F-score** (Csurka et al., BMVC 2013; the F measure of the DAVIS benchmark):
  for each image and each class present in the ground truth or the prediction, the boundary
  of a binary mask is its pixels with a 4-neighbour outside it (the image border is not a
  boundary); boundary pixels within one pixel (8-neighbourhood) of an ignored ground-truth
  pixel are dropped from both sides. Precision is the fraction of predicted boundary pixels
  within Euclidean distance ``tolerance`` of a ground-truth boundary pixel, recall the
  converse, ``F_c = 2PR / (P + R)`` (0 if exactly one side has no boundary; skipped if
  neither has). ``BF`` = mean over classes of the mean of ``F_c`` over images.
* **Separation** of ground-truth thing instances (not crowd) by a semantic map, which can
  only show them apart through a gap: predicted objects are the 8-connected components of
  each class. An instance ``g`` is *separated* when one component covers more than half of
  ``g`` and that component covers no other instance of the class by more than half.
  *Touching* instances are 8-adjacent to another instance of the same class; the ground
  truth's own semantic map separates none of them. Object F1 matches a component and an
  instance of its class when their IoU > 0.5 (such matches are unique).

The same definitions serve the semantic-heads benchmark, the nuclei example and, through
:class:`Seg2BoundaryEvaluator`, ``tools/train_net.py`` (``TEST.SEG2.BOUNDARY_EVAL``).
"""
import logging
from collections import OrderedDict, defaultdict
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from scipy import ndimage

from ..io import read_label_png, read_panoptic_png
from ..structures.instances import touching_instances

__all__ = [
    "class_boundary",
    "BoundaryFScore",
    "instance_separation",
    "separation_summary",
    "Seg2BoundaryEvaluator",
]

logger = logging.getLogger(__name__)

_CROSS = ndimage.generate_binary_structure(2, 1)
_EIGHT = np.ones((3, 3), dtype=bool)
_COUNTS = ("instances", "pred_components", "touching", "touching_separated", "separated", "matches")


def class_boundary(mask: np.ndarray) -> np.ndarray:
    """Inner boundary of a (H, W) bool mask: its pixels with a 4-neighbour outside it (the
    image border is not a boundary). Returns (H, W) bool."""
    mask = np.asarray(mask, dtype=bool)
    inner = ndimage.binary_erosion(mask, structure=_CROSS, border_value=1)
    return mask & ~inner


def _matched(src: np.ndarray, dst: np.ndarray, tolerance: float) -> int:
    """Number of ``src`` pixels within ``tolerance`` (Euclidean) of a ``dst`` pixel."""
    if not src.any() or not dst.any():
        return 0
    dist = ndimage.distance_transform_edt(~dst)
    return int((dist[src] <= tolerance).sum())


class BoundaryFScore:
    """Accumulates the per-class, per-image boundary F-score (see the module docstring)."""

    def __init__(self, num_classes: int, ignore_label: int = 255, tolerance: float = 2):
        """
        Args:
            num_classes: K.
            ignore_label: ground-truth label of ignored pixels.
            tolerance: matching distance in pixels.
        """
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.tolerance = tolerance
        self.scores: Dict[int, List[float]] = defaultdict(list)

    def update(self, pred: np.ndarray, gt: np.ndarray) -> Dict[int, float]:
        """
        Args:
            pred: (H, W) predicted labels in [0, K).
            gt: (H, W) ground-truth labels in [0, K) or ``ignore_label``.

        Returns:
            ``{class: F_c}`` for this image (classes with a boundary on either side).
        """
        if pred.shape != gt.shape:
            raise ValueError(
                f"BoundaryFScore: prediction {pred.shape} and ground truth {gt.shape} differ"
            )
        ignored = gt == self.ignore_label
        keep = ~ndimage.binary_dilation(ignored, structure=_EIGHT)
        image_scores = {}
        for c in np.union1d(np.unique(pred), np.unique(gt[~ignored])):
            c = int(c)
            b_pred = class_boundary(pred == c) & keep
            b_gt = class_boundary(gt == c) & keep
            n_pred, n_gt = int(b_pred.sum()), int(b_gt.sum())
            if n_pred == 0 and n_gt == 0:
                continue
            if n_pred == 0 or n_gt == 0:
                f = 0.0
            else:
                p = _matched(b_pred, b_gt, self.tolerance) / n_pred
                r = _matched(b_gt, b_pred, self.tolerance) / n_gt
                f = 2 * p * r / (p + r) if p + r > 0 else 0.0
            image_scores[c] = f
            self.scores[c].append(f)
        return image_scores

    def merge(self, other: "BoundaryFScore") -> "BoundaryFScore":
        for c, v in other.scores.items():
            self.scores[c].extend(v)
        return self

    def evaluate(self, class_names: Optional[Sequence[str]] = None) -> Dict[str, float]:
        """``{"BF": mean over classes of the mean F_c over images, "BF-<class>": ...}`` (%)."""
        per_class = {c: 100.0 * float(np.mean(v)) for c, v in sorted(self.scores.items())}
        out = {"BF": float(np.mean(list(per_class.values()))) if per_class else float("nan")}
        for c, v in per_class.items():
            name = class_names[c] if class_names is not None and c < len(class_names) else c
            out[f"BF-{name}"] = v
        return out


def _separation_one_class(pred_mask: np.ndarray, instance_ids: np.ndarray) -> Dict[str, int]:
    """Separation counts of one class: ``pred_mask`` (H, W) bool, ``instance_ids`` (H, W) int
    holding only this class's instances (0 elsewhere)."""
    comps, num_pred = ndimage.label(pred_mask, structure=_EIGHT)
    gt_ids, gt_index = np.unique(instance_ids, return_inverse=True)
    gt_index = gt_index.reshape(instance_ids.shape)
    if gt_ids[0] != 0:  # no background pixel: shift so column 0 stays "background"
        gt_ids, gt_index = np.concatenate([[0], gt_ids]), gt_index + 1
    num_gt = len(gt_ids) - 1
    # overlap[p, g]: pixels of component p in instance g (background rows/columns dropped).
    overlap = np.bincount(
        (comps * (num_gt + 1) + gt_index).ravel(), minlength=(num_pred + 1) * (num_gt + 1)
    ).reshape(num_pred + 1, num_gt + 1)[1:, 1:]
    gt_area = np.bincount(gt_index.ravel(), minlength=num_gt + 1)[1:]
    pred_area = np.bincount(comps.ravel(), minlength=num_pred + 1)[1:]
    covers = 2 * overlap > gt_area[None, :]  # (P, G): more than half of the instance
    separated = np.zeros(num_gt, dtype=bool)
    if num_pred:
        best = overlap.argmax(axis=0)
        separated = covers[best, np.arange(num_gt)] & (covers.sum(axis=1)[best] == 1)
    touching = np.isin(gt_ids[1:], touching_instances(instance_ids))
    union = pred_area[:, None] + gt_area[None, :] - overlap
    return {
        "instances": int(num_gt),
        "pred_components": int(num_pred),
        "touching": int(touching.sum()),
        "touching_separated": int((separated & touching).sum()),
        "separated": int(separated.sum()),
        "matches": int((2 * overlap > union).sum()),
    }


def instance_separation(
    pred: np.ndarray, instance_ids: np.ndarray, instance_classes: Mapping[int, int]
) -> Dict[str, int]:
    """Separation counts of a semantic map against instance ground truth (module docstring).

    Args:
        pred: (H, W) predicted labels.
        instance_ids: (H, W) int, 0 = no instance, k > 0 = instance k.
        instance_classes: instance id -> its class (instances of classes absent here, e.g.
            crowd regions, are ignored).

    Returns:
        counts summed over classes: ``instances``, ``pred_components`` (of the instances'
        classes), ``touching``, ``touching_separated``, ``separated``, ``matches`` (IoU > 0.5).
    """
    pred, instance_ids = np.asarray(pred), np.asarray(instance_ids)
    if pred.shape != instance_ids.shape or pred.ndim != 2:
        raise ValueError(
            f"instance_separation: prediction {pred.shape} and ground truth "
            f"{instance_ids.shape} must be (H, W) arrays of the same shape"
        )
    total = dict.fromkeys(_COUNTS, 0)
    by_class = defaultdict(list)
    for k, c in instance_classes.items():
        by_class[int(c)].append(int(k))
    for c, ids in by_class.items():
        of_class = np.where(np.isin(instance_ids, ids), instance_ids, 0)
        counts = _separation_one_class(pred == c, of_class)
        for key in _COUNTS:
            total[key] += counts[key]
    return total


def separation_summary(counts: Mapping[str, int]) -> "OrderedDict[str, float]":
    """Counts -> the reported figures: counts, ``touching_separated_pct``,
    ``separated_pct`` and ``object_F1`` (IoU > 0.5), percentages NaN over nothing."""

    def pct(a: int, b: int) -> float:
        return 100.0 * a / b if b else float("nan")

    out: "OrderedDict[str, float]" = OrderedDict((k, counts[k]) for k in _COUNTS if k != "matches")
    out["touching_separated_pct"] = pct(counts["touching_separated"], counts["touching"])
    out["separated_pct"] = pct(counts["separated"], counts["instances"])
    out["object_F1"] = pct(2 * counts["matches"], counts["pred_components"] + counts["instances"])
    return out


class Seg2BoundaryEvaluator(DatasetEvaluator):
    """Boundary F-score and instance separation of a model's ``sem_seg`` on a dataset with
    semantic labels (``sem_seg_file_name``) and, for separation, panoptic instances
    (``pan_seg_file_name`` + ``segments_info`` with contiguous ``category_id``). Returns
    ``{"boundary": {BF, BF-<class>, touching, touching_separated, ..., object_F1}}``."""

    def __init__(self, dataset_name: str, tolerance: float = 2, distributed: bool = True):
        meta = MetadataCatalog.get(dataset_name)
        self._dataset_name = dataset_name
        self._class_names = meta.get("stuff_classes", None)
        self._ignore = meta.get("ignore_label", 255)
        self._tolerance = tolerance
        self._distributed = distributed
        self.reset()

    def reset(self) -> None:
        self._bf = BoundaryFScore(len(self._class_names or ()), self._ignore, self._tolerance)
        self._counts = dict.fromkeys(_COUNTS, 0)
        self._records: Optional[Dict[str, Dict]] = None

    def _record(self, inp: Dict) -> Dict:
        """The dataset dict of an input (test mappers drop the ground-truth file names)."""
        if "sem_seg_file_name" in inp:
            return inp
        if self._records is None:
            self._records = {d["file_name"]: d for d in DatasetCatalog.get(self._dataset_name)}
        return self._records[inp["file_name"]]

    def process(self, inputs: List[Dict], outputs: List[Dict]) -> None:
        for inp, out in zip(inputs, outputs):
            inp = self._record(inp)
            pred = out["sem_seg"].argmax(dim=0).cpu().numpy()
            gt = read_label_png(inp["sem_seg_file_name"]).astype(np.int64)
            self._bf.update(pred, gt)
            if "pan_seg_file_name" in inp:
                ids = read_panoptic_png(inp["pan_seg_file_name"])
                classes = {
                    s["id"]: s["category_id"]
                    for s in inp["segments_info"]
                    if s.get("isthing") and not s.get("iscrowd", 0)
                }
                counts = instance_separation(pred, ids, classes)
                for key in _COUNTS:
                    self._counts[key] += counts[key]

    def evaluate(self):
        bf, counts = self._bf, self._counts
        if self._distributed:
            comm.synchronize()
            parts = comm.gather((bf, counts), dst=0)
            if not comm.is_main_process():
                return None
            bf = BoundaryFScore(bf.num_classes, self._ignore, self._tolerance)
            counts = dict.fromkeys(_COUNTS, 0)
            for part_bf, part_counts in parts:
                bf.merge(part_bf)
                for key in _COUNTS:
                    counts[key] += part_counts[key]
        res = bf.evaluate(self._class_names)
        res.update(separation_summary(counts))
        return OrderedDict(boundary=res)
