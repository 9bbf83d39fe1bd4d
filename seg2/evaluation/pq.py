"""Panoptic quality (Kirillov et al., "Panoptic Segmentation", CVPR 2019): seg2's PQ engine.

``panopticapi`` is not on PyPI, so seg2 scores PQ itself, following the reference rules:

* a ground-truth (GT) and a predicted segment match when they have the same category and
  IoU > 0.5 (strict), which makes matches unique;
* void pixels (GT id 0) are not counted: the part of a prediction lying on void is removed
  from the union;
* crowd GT segments are never matched (nor counted as false negatives);
* an unmatched prediction is not a false positive when more than half of it lies on void or
  on crowd regions of its own category;
* classes with no TP, FP or FN are left out of the means.

:class:`PQBatch` scores a batch of images: each image's *overlaps* (the pixels each
(GT segment, predicted segment) pair shares) are counted in one pass over its pixels, and the
*matches* are found for the whole batch at once. :class:`PQScores` keeps every image's
contribution in image order, so the sums do not depend on how images are split into batches
or processes. :func:`pq_results` turns the accumulators into PQ/SQ/RQ figures. The COCO
panoptic files (PNG + JSON) are read and scored in :mod:`seg2.evaluation.pq_files`; both the
COCO panoptic and the Cityscapes panoptic evaluators go through this engine.
"""

import itertools
import logging
import operator
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..io import InputError
from ..structures.panoptic import OFFSET, VOID

__all__ = [
    "PQStatCat",
    "PQStat",
    "PQScores",
    "PQBatch",
    "pq_compute_single",
    "pq_average",
    "pq_results",
    "PQ_GROUPS",
]

logger = logging.getLogger(__name__)

# (image name for errors, GT segments, predicted segments)
ImageSegments = Tuple[str, Sequence[Mapping], Sequence[Mapping]]


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
        InputError: size mismatch; a segment id in the map but not the list or the reverse;
            duplicate or reserved (0) segment ids; an unknown category id.
    """
    gt_ids = np.asarray(gt_ids)
    pred_ids = np.asarray(pred_ids)
    for ids, what in ((gt_ids, "ground-truth"), (pred_ids, "predicted")):
        if ids.size and (ids.min() < 0 or ids.max() >= OFFSET):
            raise InputError(
                f"{image_name}: {what} segment ids must lie in [0, {OFFSET}), "
                f"got [{ids.min()}, {ids.max()}]"
            )
    batch = PQBatch([(image_name, gt_segments, pred_segments)], categories)
    batch.add(0, gt_ids, pred_ids)
    return batch.scores().to_stat()


# ---- the segment lists


class Segments:
    """The GT or predicted segments of a batch of images as flat arrays sorted by (image, id),
    each image's void (id 0) first: ``start[k]`` is image k's void entry, ``count[k]`` its
    number of segments. Checked for missing fields, duplicate or reserved ids, unknown
    categories, and ids no 24-bit PNG can hold (in that order per image, as the error
    messages of :func:`raise_image_error` give them)."""

    def __init__(
        self, images: Sequence[ImageSegments], is_gt: bool, categories: Mapping[int, Mapping]
    ):
        lists = [im[1] if is_gt else im[2] for im in images]
        self.what = "ground-truth" if is_gt else "predicted"
        parsed = _parse_segments(lists, is_gt, categories)
        if parsed is None:  # odd types or an error: per image, with the error messages
            parsed = self._parse_checked(lists, images, categories)
        count, ids, category, crowd = parsed
        n_img = len(images)
        seg_image = np.repeat(np.arange(n_img), count)
        bad = (ids < 1) | (ids >= OFFSET)
        if bad.any():
            name, gs, ps = images[int(seg_image[bad].min())]
            raise_image_error(name, gs, ps, None, None, categories)
        self.count = count
        self.start = np.zeros(n_img, dtype=np.int64)
        np.cumsum(count[:-1] + 1, out=self.start[1:])
        keys = np.concatenate([np.arange(n_img) * OFFSET, seg_image * OFFSET + ids])
        order = np.argsort(keys, kind="stable")
        if (np.diff(keys[order]) == 0).any():  # a duplicate id: the per-image checks name it
            self._parse_checked(lists, images, categories)
        self.image = np.concatenate([np.arange(n_img), seg_image])[order]
        self.ids = keys[order] - self.image * OFFSET
        self.void = self.ids == VOID
        self.category = np.concatenate([np.full(n_img, -1, np.int64), category])[order]
        self.crowd = np.concatenate([np.ones(n_img, bool), crowd])[order]

    def image_ids(self, k: int) -> np.ndarray:
        """Image k's sorted segment ids, void (0) first."""
        return self.ids[self.start[k] : self.start[k] + self.count[k] + 1]

    def _parse_checked(self, lists, images, categories):
        ids, category, crowd = [], [], []
        for segs, im in zip(lists, images):
            table = segment_table(segs, categories, im[0], self.what)
            ids += table
            category += (int(s["category_id"]) for s in table.values())
            crowd += (bool(s.get("iscrowd", 0)) for s in table.values())
        count = np.array([len(segs) for segs in lists], dtype=np.int64)
        return count, np.array(ids, np.int64), np.array(category, np.int64), np.array(crowd, bool)


_ID = operator.itemgetter("id")
_CATEGORY = operator.itemgetter("category_id")
_ISCROWD = operator.methodcaller("get", "iscrowd", 0)


def _parse_segments(lists, is_gt, categories):
    """(count per image, ids, categories, crowd flags) of well-formed lists, read without a
    Python loop per segment; None when any segment needs the checked, per-image parse."""
    flat = list(itertools.chain.from_iterable(lists))
    n = len(flat)
    try:
        ids = np.fromiter(map(_ID, flat), np.int64, n)
        category = np.fromiter(map(_CATEGORY, flat), np.int64, n)
        crowd = np.fromiter(map(_ISCROWD, flat), bool, n) if is_gt else np.zeros(n, bool)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    known = np.array(sorted(categories), dtype=np.int64)
    if n and not len(known):
        return None
    found = known.searchsorted(category)
    np.minimum(found, len(known) - 1, out=found)
    if (ids == VOID).any() or (known[found] != category).any():
        return None
    return np.fromiter(map(len, lists), np.int64, len(lists)), ids, category, crowd


def segment_table(
    segments: Sequence[Mapping], categories: Mapping[int, Mapping], image_name: str, what: str
) -> Dict[int, Mapping]:
    """id -> segment, refusing duplicate ids, the reserved void id and unknown categories."""
    table: Dict[int, Mapping] = {}
    for seg in segments:
        for key in ("id", "category_id"):
            if key not in seg:
                raise InputError(f"{image_name}: a {what} segment lacks field '{key}': {seg}")
        sid = int(seg["id"])
        if sid == VOID:
            raise InputError(
                f"{image_name}: {what} segment id 0 is reserved for void (unlabeled pixels)"
            )
        if sid in table:
            raise InputError(f"{image_name}: {what} segment id {sid} appears twice in the JSON")
        if seg["category_id"] not in categories:
            raise InputError(
                f"{image_name}: {what} segment {sid} has unknown category_id {seg['category_id']} "
                f"(known: {sorted(categories)})"
            )
        table[sid] = seg
    return table


def raise_image_error(name, gt_segments, pred_segments, gt_ids, pred_ids, categories) -> None:
    """The first error of one image, with a message naming it, the side and the ids.
    ``gt_ids``/``pred_ids``: the ids present in its maps, or None before they were read
    (then only ids no 24-bit PNG can hold are known to be missing from it)."""
    for segs, values, what in (
        (gt_segments, gt_ids, "ground-truth"),
        (pred_segments, pred_ids, "predicted"),
    ):
        keys = set(segment_table(segs, categories, name, what))
        if values is None:
            present = set()
            not_in_png = sorted(k for k in keys if not 0 < k < OFFSET)
        else:
            present = set(np.unique(values).tolist()) - {VOID}
            not_in_png = sorted(keys - present)
        not_in_json = sorted(present - keys)
        if not_in_json:
            raise InputError(
                f"{name}: {what} segment id(s) {not_in_json} are in the PNG but not in the JSON"
            )
        if not_in_png:
            raise InputError(
                f"{name}: {what} segment id(s) {not_in_png} are in the JSON but not in the PNG"
            )
    raise AssertionError(f"{name}: an error was detected but not found again")


# ---- overlaps and matches


def count_overlaps(
    gt_ids: np.ndarray, pred_ids: np.ndarray, gt_table: np.ndarray, pred_table: np.ndarray
) -> Tuple[np.ndarray, bool]:
    """Pixels shared by every (GT segment, predicted segment) pair of one image.

    Segments are spatially coherent, so along the raster the pixels come in few *runs* of
    one (GT id, predicted id) pair: each run's ids are looked up in the image's sorted id
    tables and its length added to that pair's overlap.

    Args:
        gt_ids, pred_ids: (H, W) segment id maps of one image.
        gt_table, pred_table: the image's sorted segment ids, void (0) first.

    Returns:
        (len(gt_table) * len(pred_table),) overlaps, flat by (GT index, predicted index);
        and whether every id in the maps is in its table.
    """
    g = gt_ids.reshape(-1)
    p = pred_ids.reshape(-1)
    n = g.size
    change = np.ones(n + 1, dtype=bool)  # pixel i starts a run; the one past the end too
    np.not_equal(g[1:], g[:-1], out=change[1:n])
    change[1:n] |= p[1:] != p[:-1]
    bounds = change.nonzero()[0]
    starts = bounds[:-1]
    gv, pv = g[starts], p[starts]
    gi = np.minimum(gt_table.searchsorted(gv), len(gt_table) - 1)
    pi = np.minimum(pred_table.searchsorted(pv), len(pred_table) - 1)
    listed = bool((gt_table[gi] == gv).all() and (pred_table[pi] == pv).all())
    overlaps = np.bincount(
        gi * len(pred_table) + pi,
        weights=bounds[1:] - starts,
        minlength=len(gt_table) * len(pred_table),
    )
    return overlaps, listed


@dataclass
class PQScores:
    """What images contribute to PQ, kept as arrays in image order: the category and IoU of
    every true positive, the category of every false positive and false negative.
    :meth:`to_stat` sums the IoUs in that order, so any split of the images into batches,
    chunks or worker processes gives the same sums."""

    tp_cat: np.ndarray
    tp_iou: np.ndarray
    fp_cat: np.ndarray
    fn_cat: np.ndarray

    @classmethod
    def concatenate(cls, parts: Sequence["PQScores"]) -> "PQScores":
        if not parts:
            none = np.zeros(0, dtype=np.int64)
            return cls(none, np.zeros(0), none, none)
        fields = ("tp_cat", "tp_iou", "fp_cat", "fn_cat")
        return cls(*(np.concatenate([getattr(s, f) for s in parts]) for f in fields))

    def to_stat(self) -> PQStat:
        cats, inv = np.unique(
            np.concatenate([self.tp_cat, self.fp_cat, self.fn_cat]), return_inverse=True
        )
        k, n_tp, n_fp = len(cats), len(self.tp_cat), len(self.fp_cat)
        iou = np.bincount(inv[:n_tp], weights=self.tp_iou, minlength=k)  # sequential sums
        tp = np.bincount(inv[:n_tp], minlength=k)
        fp = np.bincount(inv[n_tp : n_tp + n_fp], minlength=k)
        fn = np.bincount(inv[n_tp + n_fp :], minlength=k)
        stat = PQStat()
        for row in zip(cats.tolist(), iou.tolist(), tp.tolist(), fp.tolist(), fn.tolist()):
            stat[row[0]] = PQStatCat(*row[1:])
        return stat


class PQBatch:
    """Scores a batch of images in three steps: the segment lists of all of them are parsed
    and checked together; each image's overlaps are counted as soon as its maps are read
    (:meth:`add`); :meth:`scores` finds the matches of the whole batch at once, so numpy's
    per-call cost is paid per batch, not per segment.

    Args:
        images: (name for errors, GT segments, predicted segments) of each image, segments
            being dicts with ``id``, ``category_id`` and, for GT, optional ``iscrowd``.
        categories: category id -> dict (COCO panoptic ``categories``).
    """

    def __init__(self, images: Sequence[ImageSegments], categories: Mapping[int, Mapping]):
        self.images = list(images)
        self.categories = categories
        self.gt = Segments(self.images, True, categories)
        self.pred = Segments(self.images, False, categories)
        n = len(self.images)
        self._pairs: List[Optional[np.ndarray]] = [None] * n  # flat (GT, pred) index pairs
        self._areas: List[Optional[np.ndarray]] = [None] * n  # their overlaps, in pixels
        self._present: List[Optional[Tuple[np.ndarray, np.ndarray]]] = [None] * n

    def add(self, k: int, gt_ids: np.ndarray, pred_ids: np.ndarray) -> None:
        """Image ``k``'s overlaps from its (H, W) GT and predicted segment id maps."""
        name = self.images[k][0]
        if gt_ids.shape != pred_ids.shape:
            raise InputError(
                f"{name}: prediction size {tuple(pred_ids.shape)} differs from ground truth "
                f"size {tuple(gt_ids.shape)}"
            )
        overlaps, listed = count_overlaps(
            gt_ids, pred_ids, self.gt.image_ids(k), self.pred.image_ids(k)
        )
        if not listed:  # an id in the maps that the JSON does not list
            gt_segments, pred_segments = self.images[k][1:]
            raise_image_error(name, gt_segments, pred_segments, gt_ids, pred_ids, self.categories)
        pairs = overlaps.nonzero()[0]
        self._pairs[k] = pairs
        self._areas[k] = overlaps[pairs]

    def scores(self) -> PQScores:
        """PQ contributions of the batch; every image must have been added. Raises
        :class:`InputError` for the first image whose maps lack a segment its JSON lists."""
        gt, pred = self.gt, self.pred
        n_img = len(self.images)
        if any(c is None for c in self._pairs):
            raise ValueError("PQBatch.scores: not every image was added")
        if n_img == 0:
            return PQScores.concatenate([])
        # The overlaps of the batch, in (image, GT id, pred id) order, as panopticapi's pairs.
        image = np.repeat(np.arange(n_img), [len(c) for c in self._pairs])
        gt_index, pred_index = np.divmod(np.concatenate(self._pairs), pred.count[image] + 1)
        g = gt.start[image] + gt_index  # flat GT segment of each overlap
        p = pred.start[image] + pred_index
        area = np.concatenate(self._areas)

        gt_area = np.bincount(g, weights=area, minlength=len(gt.category))
        pred_area = np.bincount(p, weights=area, minlength=len(pred.category))
        missing = (gt_area == 0) & ~gt.void
        missing_pred = (pred_area == 0) & ~pred.void
        if missing.any() or missing_pred.any():  # ids the maps lack
            first = min(
                gt.image[missing].min(initial=n_img), pred.image[missing_pred].min(initial=n_img)
            )
            self._raise(int(first))

        on_void = gt.void[g] & ~pred.void[p]
        pred_on_void = np.bincount(p[on_void], weights=area[on_void], minlength=len(pred.category))
        same = ~gt.void[g] & ~pred.void[p] & (gt.category[g] == pred.category[p])
        on_crowd = same & gt.crowd[g]
        pred_on_crowd = np.bincount(
            p[on_crowd], weights=area[on_crowd], minlength=len(pred.category)
        )
        same &= ~gt.crowd[g]
        cg, cp, inter = g[same], p[same], area[same]
        iou = inter / np.maximum(gt_area[cg] + pred_area[cp] - inter - pred_on_void[cp], 1)
        match = iou > 0.5  # unique: IoU > 0.5 with two segments would need more than 100%
        gt_matched = gt.void | gt.crowd
        gt_matched[cg[match]] = True
        pred_matched = pred.void.copy()
        pred_matched[cp[match]] = True
        # An unmatched prediction mostly on void or on crowd of its category is ignored.
        fp = ~pred_matched
        fp[fp] = (pred_on_void[fp] + pred_on_crowd[fp]) / pred_area[fp] <= 0.5
        return PQScores(
            gt.category[cg[match]], iou[match], pred.category[fp], gt.category[~gt_matched]
        )

    def _raise(self, k: int) -> None:
        name, gt_segments, pred_segments = self.images[k]
        gt_table, pred_table = self.gt.image_ids(k), self.pred.image_ids(k)
        gt_index, pred_index = np.divmod(self._pairs[k], len(pred_table))
        present = gt_table[gt_index], pred_table[pred_index]
        raise_image_error(name, gt_segments, pred_segments, *present, self.categories)


# ---- figures


# (table row, isthing filter, result-key suffix)
PQ_GROUPS = (("All", None, ""), ("Things", True, "_th"), ("Stuff", False, "_st"))


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
    gt_segments = {c: s.tp + s.fn for c, s in stat.pq_per_cat.items()}
    empty = [c for c in categories if not gt_segments.get(c)]
    if len(empty) == len(categories):
        logger.warning(
            "PQ: the ground truth has no segment of any category; "
            "PQ is NaN (0 for categories with predictions)"
        )
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
    for _, isthing, suffix in PQ_GROUPS:
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
