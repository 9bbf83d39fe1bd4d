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

The core (:func:`pq_compute_single`) is a pure function of two id maps and their segment lists,
vectorised with one bincount over compact (gt, pred) index pairs per image. :func:`seg2.evaluation.pq_files.pq_compute_files`
reads the COCO panoptic format (PNG + JSON) with a worker pool over images. This is seg2's only PQ engine:
``Seg2PanopticEvaluator`` (COCO panoptic) and the Cityscapes panoptic scoring both call it.
"""

import logging
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
from tabulate import tabulate

from ..io import InputError
from ..structures.panoptic import OFFSET, VOID

# Kept as a name for callers that catch panoptic input errors specifically.
PanopticInputError = InputError

logger = logging.getLogger(__name__)

__all__ = [
    "PanopticInputError",
    "PQStatCat",
    "PQStat",
    "pq_compute_single",
    "pq_average",
    "pq_results",
    "format_pq_table",
]

_GROUPS = (("All", None, ""), ("Things", True, "_th"), ("Stuff", False, "_st"))


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
    if gt_ids.shape != pred_ids.shape:
        raise PanopticInputError(
            f"{image_name}: prediction size {tuple(pred_ids.shape)} differs from ground truth "
            f"size {tuple(gt_ids.shape)}"
        )
    for ids, what in ((gt_ids, "ground-truth"), (pred_ids, "predicted")):
        if ids.size and (ids.min() < 0 or ids.max() >= OFFSET):
            raise PanopticInputError(
                f"{image_name}: {what} segment ids must lie in [0, {OFFSET}), "
                f"got [{ids.min()}, {ids.max()}]"
            )
    gt_table = _segment_table(gt_segments, categories, image_name, "ground-truth")
    pred_table = _segment_table(pred_segments, categories, image_name, "predicted")

    # Every (gt, pred) pair that overlaps, with its intersection, from one bincount over
    # hashed (gt, pred) slot pairs; rows/columns are then put in id order (0 = void), so
    # pairs come in the order of a sort by (gt id, pred id).
    gt_keys, gt_h, gt_slots, gt_bits, gt_bad = _hash_ids(gt_ids, gt_table)
    pred_keys, pred_h, pred_slots, pred_bits, pred_bad = _hash_ids(pred_ids, pred_table)
    gt_h <<= pred_bits
    gt_h |= pred_h
    counts = np.bincount(gt_h.ravel(), minlength=1 << (gt_bits + pred_bits))
    counts = counts.reshape(1 << gt_bits, 1 << pred_bits)[np.ix_(gt_slots, pred_slots)]
    gt_area = counts[1:].sum(axis=1)
    pred_area = counts[:, 1:].sum(axis=0)
    _check_hashed_ids(gt_ids, gt_bad, gt_area, gt_keys, image_name, "ground-truth")
    _check_hashed_ids(pred_ids, pred_bad, pred_area, pred_keys, image_name, "predicted")

    inter = counts[1:, 1:]
    pred_void = counts[0, 1:]
    gt_cat = np.array([gt_table[g]["category_id"] for g in gt_keys])
    gt_crowd = np.array([bool(gt_table[g].get("iscrowd", 0)) for g in gt_keys], dtype=bool)
    pred_cat = np.array([pred_table[p]["category_id"] for p in pred_keys])

    same = (gt_cat[:, None] == pred_cat[None, :]) & (inter > 0)
    union = gt_area[:, None] + pred_area[None, :] - inter - pred_void[None, :]
    iou = inter / np.maximum(union, 1)
    matched = same & ~gt_crowd[:, None] & (iou > 0.5)

    stat = PQStat()
    for g, p in zip(*np.nonzero(matched)):
        s = stat[int(gt_cat[g])]
        s.tp += 1
        s.iou += float(iou[g, p])
    gt_matched = matched.any(axis=1)
    pred_matched = matched.any(axis=0)

    for g in np.flatnonzero(~gt_matched & ~gt_crowd):
        stat[int(gt_cat[g])].fn += 1

    # Ignored part of a prediction: void plus crowd regions of its own category (panopticapi
    # keeps one crowd segment per category, as COCO has; we sum them all, which agrees there).
    ignored = pred_void + (inter * (same & gt_crowd[:, None])).sum(axis=0)
    for p in np.flatnonzero(~pred_matched & ~(ignored / pred_area > 0.5)):
        stat[int(pred_cat[p])].fp += 1
    return stat


# Odd 32-bit multipliers for Fibonacci hashing (the first is 2^32 / golden ratio).
_MULTIPLIERS = (2654435769, 2246822519, 3266489917, 668265263, 374761393, 3323198485)


def _hash_ids(ids: np.ndarray, table: Mapping[int, Mapping]):
    """Hash an (H, W) id map into a small slot table, in a few vectorised passes instead of
    a sort of the pixels.

    Ids (< 2^24) go to the top ``bits`` bits of a 32-bit product (multiplicative hashing),
    with a multiplier under which void and the JSON's ids do not collide; a pixel whose id
    differs from the id owning its slot is unknown to the JSON.

    Returns:
        (sorted JSON ids, (H, W) intp slot map, slot of void and of each sorted id, bits,
        a callable returning the (H, W) mask of pixels with ids unknown to the JSON, or
        None when there are none).
    """
    keys = sorted(table)
    known = np.array([VOID] + keys, dtype=np.uint32)
    bits = max(len(known).bit_length() + 1, 3)
    while True:
        for mult in _MULTIPLIERS:
            slots = (known * np.uint32(mult)) >> np.uint32(32 - bits)
            if len(set(slots.tolist())) == len(known):
                break
        else:
            bits += 1
            continue
        break
    owner = np.zeros(1 << bits, dtype=np.uint32)  # a free slot is owned by void (id 0)
    owner[slots] = known
    u = ids.astype(np.uint32)
    h = u * np.uint32(mult)
    h >>= np.uint32(32 - bits)
    h = h.astype(np.intp)
    unknown = owner.take(h) != u
    return keys, h, slots.astype(np.intp), bits, unknown if unknown.any() else None


def _check_hashed_ids(ids, unknown, areas, keys, image_name: str, what: str) -> None:
    """PNG and JSON must list the same segments."""
    if unknown is not None:
        not_in_json = sorted(int(i) for i in np.unique(ids[unknown]))
        raise PanopticInputError(
            f"{image_name}: {what} segment id(s) {not_in_json} are in the PNG but not in the JSON"
        )
    not_in_png = [k for k, a in zip(keys, areas) if a == 0]
    if not_in_png:
        raise PanopticInputError(
            f"{image_name}: {what} segment id(s) {not_in_png} are in the JSON but not in the PNG"
        )


def pq_average(
    stat: PQStat, categories: Mapping[int, Mapping], isthing: Optional[bool] = None
) -> Tuple[Dict[str, float], Dict[int, Dict[str, float]]]:
    """Mean PQ, SQ, RQ (fractions) over the categories that have any TP, FP or FN.

    PQ_c = sum IoU / (TP + FP/2 + FN/2), SQ_c = sum IoU / TP (0 without TP),
    RQ_c = TP / (TP + FP/2 + FN/2).

    Args:
        stat: accumulators of the whole dataset.
        categories: category id -> dict with ``isthing``.
        isthing: True / False restricts to things / stuff; None takes all.

    Returns:
        ``{"pq", "sq", "rq", "n"}`` (means are NaN when n == 0) and, per category id taken
        into the mean, ``{"pq", "sq", "rq"}``.
    """
    per_class: Dict[int, Dict[str, float]] = {}
    for cat, info in categories.items():
        if isthing is not None and bool(info.get("isthing", 0)) != isthing:
            continue
        s = stat.pq_per_cat.get(cat, PQStatCat())
        if s.tp + s.fp + s.fn == 0:
            continue
        denom = s.tp + 0.5 * s.fp + 0.5 * s.fn
        per_class[cat] = {
            "pq": s.iou / denom,
            "sq": s.iou / s.tp if s.tp else 0.0,
            "rq": s.tp / denom,
        }
    n = len(per_class)
    mean = {
        k: (sum(r[k] for r in per_class.values()) / n if n else float("nan"))
        for k in ("pq", "sq", "rq")
    }
    mean["n"] = n
    return mean, per_class


def _note_missing_ground_truth(stat: PQStat, categories: Mapping[int, Mapping]) -> None:
    """Say which categories have no ground-truth segment: their PQ is NaN without
    predictions, 0 with (false positives only), never silently."""
    empty = [c for c in categories if stat.pq_per_cat.get(c, PQStatCat()).tp + stat.pq_per_cat.get(c, PQStatCat()).fn == 0]
    if len(empty) == len(categories):
        logger.warning("PQ: the ground truth has no segment of any category; PQ is NaN (0 for categories with predictions)")
    elif empty:
        logger.warning(
            f"PQ: {len(empty)} of {len(categories)} categories have no ground-truth segment "
            f"(ids {sorted(empty)[:10]}): NaN without predictions, 0 with false positives only"
        )


def pq_results(stat: PQStat, categories: Mapping[int, Mapping]) -> Dict[str, float]:
    """Detectron2's panoptic keys, in percent.

    Args:
        stat: accumulators of the whole dataset.
        categories: category id -> dict with ``isthing`` and ``name``.

    Returns:
        ``PQ, SQ, RQ`` (all classes), ``PQ_th, SQ_th, RQ_th`` (things), ``PQ_st, SQ_st,
        RQ_st`` (stuff), and ``PQ-<name>, SQ-<name>, RQ-<name>`` per class. A figure over no
        class (e.g. things of a stuff-only dataset, or a class absent from both GT and
        predictions) is NaN, as Detectron2 reports absent classes.
    """
    _note_missing_ground_truth(stat, categories)
    res: Dict[str, float] = OrderedDict()
    per_class: Dict[int, Dict[str, float]] = {}
    for _, isthing, suffix in _GROUPS:
        mean, pc = pq_average(stat, categories, isthing)
        for k in ("pq", "sq", "rq"):
            res[k.upper() + suffix] = 100 * mean[k]
        if isthing is None:
            per_class = pc
    for cat, info in categories.items():
        name = info.get("name", str(cat))
        for k in ("pq", "sq", "rq"):
            res[f"{k.upper()}-{name}"] = (
                100 * per_class[cat][k] if cat in per_class else float("nan")
            )
    return res


def format_pq_table(
    results: Mapping[str, float], categories: Optional[Mapping[int, Mapping]] = None
) -> str:
    """The summary (All / Things / Stuff) and per-class tables, as Detectron2 logs them.

    Args:
        results: output of :func:`pq_results` / :func:`pq_compute_files`.
        categories: category id -> dict with ``isthing`` and ``name``; when given, the summary
            gets Detectron2's ``#categories`` column (classes taken into each mean).

    Returns:
        Two tables in Markdown "pipe" format.
    """
    headers = ["", "PQ", "SQ", "RQ"] + (["#categories"] if categories is not None else [])
    rows = []
    for name, isthing, suffix in _GROUPS:
        row = [name] + [results.get(k + suffix, float("nan")) for k in ("PQ", "SQ", "RQ")]
        if categories is not None:
            row.append(
                sum(
                    1
                    for c in categories.values()
                    if (isthing is None or bool(c.get("isthing", 0)) == isthing)
                    and not math.isnan(results.get(f"PQ-{c.get('name')}", float("nan")))
                )
            )
        rows.append(row)
    fmt = dict(tablefmt="pipe", floatfmt=".3f", stralign="center", numalign="center")
    table = tabulate(rows, headers=headers, **fmt)
    names = [k[3:] for k in results if k.startswith("PQ-")]
    if names:
        per_class = [[n] + [results[f"{k}-{n}"] for k in ("PQ", "SQ", "RQ")] for n in names]
        table += "\n\n" + tabulate(per_class, headers=["category", "PQ", "SQ", "RQ"], **fmt)
    return table
