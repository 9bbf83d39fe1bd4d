"""Panoptic quality (Kirillov et al., "Panoptic Segmentation", CVPR 2019), our own implementation.

``panopticapi`` is not on PyPI, so seg2 scores PQ itself, following the reference rules:

* a ground-truth (GT) and a predicted segment match when they have the same category and
  IoU > 0.5 (strict), which makes matches unique;
* void pixels (GT id 0) are not counted: the part of a prediction lying on void is removed
  from the union;
* crowd GT segments are never matched (nor counted as false negatives);
* an unmatched prediction is not a false positive when more than half of it lies on void or
  on crowd regions of its own category;
* classes with no TP, FP or FN are left out of the means.

The core (:func:`pq_compute_single`) is a pure function of two id maps and their segment lists:
a few vectorised passes find the runs of one (gt, pred) id pair along the pixels, one bincount
over the runs gives every overlap, and the matching itself is plain Python over the overlapping
pairs. :func:`pq_compute_words` takes the PNGs' 4-byte pixels as they are read, with no id
conversion. :func:`seg2.evaluation.pq_files.pq_compute_files` reads the COCO panoptic format
(PNG + JSON) with a worker pool over images. This is seg2's only PQ engine:
``Seg2PanopticEvaluator`` (COCO panoptic) and the Cityscapes panoptic scoring both call it.
The accumulators become PQ/SQ/RQ figures and tables in :mod:`seg2.evaluation.pq_summary`.
"""

from dataclasses import dataclass
from typing import Dict, Mapping, Sequence

import numpy as np

from ..io import InputError
from ..structures.panoptic import OFFSET, VOID

# Kept as a name for callers that catch panoptic input errors specifically.
PanopticInputError = InputError

__all__ = [
    "PanopticInputError",
    "PQStatCat",
    "PQStat",
    "pq_compute_single",
    "pq_compute_words",
]

@dataclass
class PQStatCat:
    """Accumulators of one category: matched IoU sum, true/false positives, false negatives."""

    iou: float = 0.0
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def __iadd__(self, other: "PQStatCat") -> "PQStatCat":
        self.iou += other.iou
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        return self


class PQStat:
    """Per-category :class:`PQStatCat`; ``+=`` merges images, chunks of images or ranks."""

    def __init__(self):
        self.pq_per_cat: Dict[int, PQStatCat] = {}

    def __getitem__(self, category_id: int) -> PQStatCat:
        if category_id not in self.pq_per_cat:
            self.pq_per_cat[category_id] = PQStatCat()
        return self.pq_per_cat[category_id]

    def __setitem__(self, category_id: int, value: PQStatCat) -> None:
        self.pq_per_cat[category_id] = value

    def __iadd__(self, other: "PQStat") -> "PQStat":
        for cat, stat in other.pq_per_cat.items():
            mine = self[cat]  # never alias ``other``'s accumulators
            mine += stat
        return self

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PQStat):
            return NotImplemented
        empty = PQStatCat()
        cats = set(self.pq_per_cat) | set(other.pq_per_cat)
        return all(self.pq_per_cat.get(c, empty) == other.pq_per_cat.get(c, empty) for c in cats)

    def __repr__(self) -> str:
        return f"PQStat({dict(sorted(self.pq_per_cat.items()))})"


def _segment_table(
    segments: Sequence[Mapping], categories: Mapping[int, Mapping], image_name: str, what: str
) -> Dict[int, Mapping]:
    """id -> segment, refusing duplicate ids, the reserved void id and unknown categories."""
    table: Dict[int, Mapping] = {}
    for seg in segments:
        for key in ("id", "category_id"):
            if key not in seg:
                raise PanopticInputError(
                    f"{image_name}: a {what} segment lacks field '{key}': {seg}"
                )
        sid = int(seg["id"])
        if sid == VOID:
            raise PanopticInputError(
                f"{image_name}: {what} segment id 0 is reserved for void (unlabeled pixels)"
            )
        if sid in table:
            raise PanopticInputError(
                f"{image_name}: {what} segment id {sid} appears twice in the JSON"
            )
        if seg["category_id"] not in categories:
            raise PanopticInputError(
                f"{image_name}: {what} segment {sid} has unknown category_id {seg['category_id']} "
                f"(known: {sorted(categories)})"
            )
        table[sid] = seg
    return table


def pq_compute_single(
    gt_ids: np.ndarray,
    gt_segments: Sequence[Mapping],
    pred_ids: np.ndarray,
    pred_segments: Sequence[Mapping],
    categories: Mapping[int, Mapping],
    image_name: str = "<image>",
) -> PQStat:
    """PQ accumulators of one image.

    Args:
        gt_ids: (H, W) int GT segment ids; 0 = void. Every other id must be in ``gt_segments``.
        gt_segments: GT segments, dicts with ``id``, ``category_id`` and optional ``iscrowd``.
        pred_ids: (H, W) int predicted segment ids; 0 = void (no prediction).
        pred_segments: predicted segments, dicts with ``id`` and ``category_id``.
        categories: category id -> dict with ``isthing`` (COCO panoptic ``categories``).
        image_name: used in error messages.

    Returns:
        PQStat with tp, fp, fn and the IoU sum of matched pairs per category.

    Raises:
        PanopticInputError: size mismatch; a segment id in the PNG but not the JSON or the
            reverse; duplicate or reserved (0) segment ids; an unknown category id.
    """
    gt_ids = np.asarray(gt_ids)
    pred_ids = np.asarray(pred_ids)
    _check_sizes(gt_ids, pred_ids, image_name)
    for ids, what in ((gt_ids, "ground-truth"), (pred_ids, "predicted")):
        if ids.size and (ids.min() < 0 or ids.max() >= OFFSET):
            raise PanopticInputError(
                f"{image_name}: {what} segment ids must lie in [0, {OFFSET}), "
                f"got [{ids.min()}, {ids.max()}]"
            )
    return _pq_image(gt_ids, gt_segments, pred_ids, pred_segments, categories, image_name, False)


def pq_compute_words(
    gt_words: np.ndarray,
    gt_segments: Sequence[Mapping],
    pred_words: np.ndarray,
    pred_segments: Sequence[Mapping],
    categories: Mapping[int, Mapping],
    image_name: str = "<image>",
) -> PQStat:
    """:func:`pq_compute_single` on (H, W) uint32 words whose low 24 bits are the ids (as
    :func:`seg2.io.read_panoptic_words` returns them): no int64 conversion, and no range check,
    since 24-bit ids are always in range."""
    _check_sizes(gt_words, pred_words, image_name)
    return _pq_image(gt_words, gt_segments, pred_words, pred_segments, categories, image_name, True)


def _check_sizes(gt_ids: np.ndarray, pred_ids: np.ndarray, image_name: str) -> None:
    if gt_ids.shape != pred_ids.shape:
        raise PanopticInputError(
            f"{image_name}: prediction size {tuple(pred_ids.shape)} differs from ground truth "
            f"size {tuple(gt_ids.shape)}"
        )


def _pq_image(gt_ids, gt_segments, pred_ids, pred_segments, categories, image_name, words):
    gt_table = _segment_table(gt_segments, categories, image_name, "ground-truth")
    pred_table = _segment_table(pred_segments, categories, image_name, "predicted")
    gt_keys = sorted(gt_table)
    pred_keys = sorted(pred_table)

    # Segments are spatially coherent, so the pixels come in few runs of one (gt, pred) id
    # pair (~2% of the pixels at 256 px): four passes over the pixels find the runs, and
    # all the rest works on the runs, then on the overlapping pairs in plain Python (the
    # per-call cost of numpy on ~10 x 10 tables outweighed its speed).
    g = gt_ids.ravel()
    p = pred_ids.ravel()
    n = g.size
    change = np.empty(n + 1, dtype=bool)
    change[0] = change[n] = True
    np.not_equal(g[1:], g[:-1], out=change[1:n])
    change[1:n] |= p[1:] != p[:-1]
    bounds = change.nonzero()[0]
    starts = bounds[:-1]
    lengths = bounds[1:] - starts
    gv = g.take(starts)
    pv = p.take(starts)
    if words:
        np.bitwise_and(gv, _LOW24, out=gv)
        np.bitwise_and(pv, _LOW24, out=pv)
    ncols = 2 * len(pred_keys) + 3
    cell = _rank(gv, gt_keys)
    cell *= ncols
    cell += _rank(pv, pred_keys)
    counts = np.bincount(cell, weights=lengths)
    cells = counts.nonzero()[0]
    pixels = counts.take(cells).tolist()

    # Odd rank 2i+1: the i-th of [void, sorted JSON ids]; even: an id the JSON lacks.
    # Cells come in row-major order, i.e. sorted by (gt id, pred id), as panopticapi's pairs.
    gt_area = [0] * (len(gt_keys) + 1)  # [0]: void
    pred_area = [0] * (len(pred_keys) + 1)
    pred_void = [0] * (len(pred_keys) + 1)
    overlaps = []
    gt_bad = pred_bad = False
    for c, a in zip(cells.tolist(), pixels):
        r, q = divmod(c, ncols)
        a = int(a)
        if r & 1:
            gt_area[r >> 1] += a
        else:
            gt_bad = True
        if q & 1:
            pred_area[q >> 1] += a
        else:
            pred_bad = True
        if r & q & 1 and q > 1:
            if r == 1:
                pred_void[q >> 1] += a
            else:
                overlaps.append((r >> 1, q >> 1, a))
    _check_ids(gt_bad, gv, gt_keys, gt_area, image_name, "ground-truth")
    _check_ids(pred_bad, pv, pred_keys, pred_area, image_name, "predicted")

    gt_cat = [None] + [int(gt_table[k]["category_id"]) for k in gt_keys]
    gt_crowd = [True] + [bool(gt_table[k].get("iscrowd", 0)) for k in gt_keys]
    pred_cat = [None] + [int(pred_table[k]["category_id"]) for k in pred_keys]
    gt_matched = [False] * len(gt_cat)
    pred_matched = [False] * len(pred_cat)
    # Pixels of each prediction on crowd regions of its own category (panopticapi keeps one
    # crowd segment per category, as COCO has; we sum them all, which agrees there).
    pred_crowd = [0] * len(pred_cat)
    stat = PQStat()
    for i, j, inter in overlaps:
        cat = gt_cat[i]
        if cat != pred_cat[j]:
            continue
        if gt_crowd[i]:
            pred_crowd[j] += inter
            continue
        iou = inter / max(gt_area[i] + pred_area[j] - inter - pred_void[j], 1)
        if iou > 0.5:  # unique: IoU > 0.5 with two segments would need more than 100%
            s = stat[cat]
            s.tp += 1
            s.iou += iou
            gt_matched[i] = pred_matched[j] = True
    for i in range(1, len(gt_cat)):
        if not gt_matched[i] and not gt_crowd[i]:
            stat[gt_cat[i]].fn += 1
    # An unmatched prediction mostly on void or on crowd of its category is ignored.
    for j in range(1, len(pred_cat)):
        if not pred_matched[j] and not (pred_void[j] + pred_crowd[j]) / pred_area[j] > 0.5:
            stat[pred_cat[j]].fp += 1
    return stat


_LOW24 = np.uint32(OFFSET - 1)


def _rank(values: np.ndarray, keys: Sequence[int]) -> np.ndarray:
    """2i+1 for a value equal to the i-th of [void, *keys] (sorted), an even number for any
    other value: one searchsorted finds both the row and the unknown ids."""
    bounds = [VOID, VOID + 1]
    for k in keys:
        bounds += (k, k + 1)
    # uint32 words search uint32 bounds (ids + 1 <= 2^24) without a cast
    dtype = np.uint32 if values.dtype == np.uint32 else np.int64
    return np.array(bounds, dtype=dtype).searchsorted(values, side="right")


def _check_ids(bad: bool, values, keys, areas, image_name: str, what: str) -> None:
    """PNG and JSON must list the same segments."""
    if bad:
        unknown = values[_rank(values, keys) % 2 == 0]
        not_in_json = sorted(int(i) for i in np.unique(unknown))
        raise PanopticInputError(
            f"{image_name}: {what} segment id(s) {not_in_json} are in the PNG but not in the JSON"
        )
    not_in_png = [k for k, a in zip(keys, areas[1:]) if a == 0]
    if not_in_png:
        raise PanopticInputError(
            f"{image_name}: {what} segment id(s) {not_in_png} are in the JSON but not in the PNG"
        )
