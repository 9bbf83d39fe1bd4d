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

The engine (:class:`PQBatch`) scores a batch of images: one pass over each image's pixels
sums them into the image's overlaps (:mod:`seg2.evaluation.pq_overlaps`: compiled, or numpy
passes where seg2 was installed without a C compiler), and the matching is vectorised over the
whole batch (the segment lists are parsed and checked in :mod:`seg2.evaluation.pq_segments`).
Its output (:class:`PQScores`) keeps every image's contribution in image order, so sums do not
depend on how images are split into batches or processes.
:func:`pq_compute_single` scores one image's id maps, :func:`pq_compute_words` the PNGs' 4-byte
pixels as they are read (no id conversion), and
:func:`seg2.evaluation.pq_files.pq_compute_files` the COCO panoptic format (PNG + JSON) with a
worker pool over images. This is seg2's only PQ engine: ``Seg2PanopticEvaluator`` (COCO
panoptic) and the Cityscapes panoptic scoring both call it. The accumulators become PQ/SQ/RQ
figures and tables in :mod:`seg2.evaluation.pq_summary`.
"""

from dataclasses import dataclass
from typing import Dict, List, Mapping, Sequence

import numpy as np

from ..io import WORD_HIGH, InputError
from ..structures.panoptic import OFFSET
from .pq_overlaps import OverlapCounter
from .pq_segments import ImageSegments, Segments, raise_image_error

# Kept as a name for callers that catch panoptic input errors specifically.
PanopticInputError = InputError

__all__ = [
    "PanopticInputError",
    "PQStatCat",
    "PQStat",
    "pq_compute_single",
    "pq_compute_words",
    "PQBatch",
    "PQScores",
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
    # Ids that fit in 24 bits are words (with a high byte of 0).
    return pq_compute_words(gt_ids, gt_segments, pred_ids, pred_segments, categories, image_name)


def pq_compute_words(
    gt_words: np.ndarray,
    gt_segments: Sequence[Mapping],
    pred_words: np.ndarray,
    pred_segments: Sequence[Mapping],
    categories: Mapping[int, Mapping],
    image_name: str = "<image>",
) -> PQStat:
    """:func:`pq_compute_single` on (H, W) uint32 words whose low 24 bits are the ids, the
    high byte being anything (as :func:`seg2.io.read_panoptic_words` returns them): no int64
    conversion, and no range check, since 24-bit ids are always in range."""
    batch = PQBatch([(image_name, gt_segments, pred_segments)], categories)
    batch.add(0, _as_words(gt_words), _as_words(pred_words))
    return batch.scores().to_stat()


def _as_words(a) -> np.ndarray:
    """C-contiguous uint32 words with the high byte PQBatch expects."""
    return np.bitwise_or(np.asarray(a, dtype=np.uint32), np.uint32(WORD_HIGH), order="C")


def _check_sizes(gt_ids: np.ndarray, pred_ids: np.ndarray, image_name: str) -> None:
    if gt_ids.shape != pred_ids.shape:
        raise PanopticInputError(
            f"{image_name}: prediction size {tuple(pred_ids.shape)} differs from ground truth "
            f"size {tuple(gt_ids.shape)}"
        )


_LOW24 = np.uint32(OFFSET - 1)


@dataclass
class PQScores:
    """What images contribute to PQ, kept as arrays in image order: the category and IoU of
    every true positive, the category of every false positive and false negative.
    :meth:`to_stat` sums the IoUs in that order, so any split of the images into batches,
    chunks or worker processes gives bit-identical sums."""

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
    and checked together; each image's pixels are reduced to its overlaps as soon as they are
    read (:meth:`add`); :meth:`scores` matches the whole batch at once. Per image there is one
    pass over the pixels and a few numpy calls on small arrays, so numpy's per-call cost is
    not paid for every segment and every pair.

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
        self._ncols = 2 * self.pred.count + 3  # per image: the width of its overlap table
        self._tables = list(
            zip(self._split(self.gt), self._split(self.pred), self._ncols.tolist())
        )
        n = len(self.images)
        self._cells: List = [None] * n
        self._areas: List = [None] * n
        self._ids: List = [None] * n  # run ids of the images with ids no JSON lists (errors)
        self._counter = OverlapCounter()

    @staticmethod
    def _split(segs: Segments) -> List[np.ndarray]:
        """Each image's search table: ``[id - 1, id]`` for its void and sorted JSON ids, as
        words (0xFF in the high byte, as the maps have it: no mask over the pixels). Searching
        a run's word (left side) gives 2i+1 for the image's i-th entry and an even rank for an
        id it does not list."""
        ids = segs.ids + WORD_HIGH
        table = np.empty(2 * len(ids), dtype=np.uint32)
        table[0::2] = ids - 1
        table[1::2] = ids
        ends = (2 * (segs.start + segs.count + 1)).tolist()
        return [table[a:b] for a, b in zip([0] + ends, ends)]

    def add(self, k: int, gt_words: np.ndarray, pred_words: np.ndarray) -> None:
        """Image ``k``'s overlaps from its id maps: (H, W) C-contiguous uint32 words, the ids
        in the low 24 bits and 0xFF in the high byte (:func:`seg2.io.read_panoptic_words`)."""
        if gt_words.shape != pred_words.shape:
            _check_sizes(gt_words, pred_words, self.images[k][0])
        gt_tab, pred_tab, width = self._tables[k]
        counts, self._ids[k] = self._counter.count(gt_words, pred_words, gt_tab, pred_tab, width)
        cells = counts.nonzero()[0]
        self._cells[k] = cells
        self._areas[k] = counts[cells]

    def scores(self) -> PQScores:
        """PQ contributions of the batch; every image must have been added. Raises
        :class:`PanopticInputError` for the first image whose PNG and JSON disagree."""
        gt, pred = self.gt, self.pred
        n_img = len(self.images)
        if any(c is None for c in self._cells):
            raise ValueError("PQBatch.scores: not every image was added")
        if n_img == 0:
            return PQScores.concatenate([])
        # The overlaps of the batch, in (image, GT id, pred id) order, as panopticapi's pairs.
        img = np.repeat(np.arange(n_img), [len(c) for c in self._cells])
        row, col = np.divmod(np.concatenate(self._cells), self._ncols[img])
        unknown = (row & col & 1) == 0
        if unknown.any():  # ids the JSON lacks
            self._raise(int(img[unknown].min()))
        gi = gt.start[img] + (row >> 1)
        pj = pred.start[img] + (col >> 1)
        area = np.concatenate(self._areas)

        gt_area = np.bincount(gi, weights=area, minlength=len(gt.cat))
        pred_area = np.bincount(pj, weights=area, minlength=len(pred.cat))
        missing = (gt_area == 0) & ~gt.void
        missing_pred = (pred_area == 0) & ~pred.void
        if missing.any() or missing_pred.any():  # ids the PNG lacks
            first = gt.img[missing].min(initial=n_img), pred.img[missing_pred].min(initial=n_img)
            self._raise(int(min(first)))

        g_void = gt.void[gi]
        p_void = pred.void[pj]
        on_void = g_void & ~p_void
        pred_void = np.bincount(pj[on_void], weights=area[on_void], minlength=len(pred.cat))
        same = ~g_void & ~p_void
        same &= gt.cat[gi] == pred.cat[pj]
        crowd = same & gt.crowd[gi]
        pred_crowd = np.bincount(pj[crowd], weights=area[crowd], minlength=len(pred.cat))
        same &= ~gt.crowd[gi]
        ci, cj, inter = gi[same], pj[same], area[same]
        iou = inter / np.maximum(gt_area[ci] + pred_area[cj] - inter - pred_void[cj], 1)
        match = iou > 0.5  # unique: IoU > 0.5 with two segments would need more than 100%
        gt_matched = gt.void | gt.crowd
        gt_matched[ci[match]] = True
        pred_matched = pred.void.copy()
        pred_matched[cj[match]] = True
        # An unmatched prediction mostly on void or on crowd of its category is ignored.
        fp = ~pred_matched
        fp[fp] = (pred_void[fp] + pred_crowd[fp]) / pred_area[fp] <= 0.5
        return PQScores(gt.cat[ci[match]], iou[match], pred.cat[fp], gt.cat[~gt_matched])

    def _raise(self, k: int) -> None:
        name, gt_segments, pred_segments = self.images[k]
        ids = self._ids[k]
        if ids is None:  # every id in the PNGs is listed: they are those of the image's cells
            gt_tab, pred_tab, width = self._tables[k]
            rows, cols = np.divmod(self._cells[k], width)
            ids = gt_tab[rows], pred_tab[cols]
        gt_ids, pred_ids = (v & _LOW24 for v in ids)
        raise_image_error(name, gt_segments, pred_segments, gt_ids, pred_ids, self.categories)
