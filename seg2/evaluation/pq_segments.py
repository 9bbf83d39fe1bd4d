"""The segment lists of a batch of panoptic images (COCO panoptic ``segments_info``, GT and
predicted) as flat sorted arrays for :class:`seg2.evaluation.pq.PQBatch`, with their checks,
and the error message naming the image, the side and the ids when a PNG and its JSON disagree.
"""

import itertools
import operator
from typing import Dict, Mapping, Sequence, Tuple

import numpy as np

from ..io import InputError
from ..structures.panoptic import OFFSET, VOID

__all__ = ["ImageSegments", "Segments", "raise_image_error"]

# (image name for errors, GT segments, predicted segments)
ImageSegments = Tuple[str, Sequence[Mapping], Sequence[Mapping]]


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
        parsed = self._fast(lists, is_gt, categories)
        if parsed is None:  # odd types or an error: per image, with the error messages
            parsed = self._slow(lists, images, categories)
        count, ids, cats, crowd = parsed
        n_img = len(images)
        seg_img = np.repeat(np.arange(n_img), count)
        bad = (ids < 1) | (ids >= OFFSET)
        if bad.any():
            name, gs, ps = images[int(seg_img[bad].min())]
            raise_image_error(name, gs, ps, None, None, categories)
        self.count = count
        self.start = np.zeros(n_img, dtype=np.int64)
        np.cumsum(count[:-1] + 1, out=self.start[1:])
        keys = np.concatenate([np.arange(n_img) * OFFSET, seg_img * OFFSET + ids])
        order = np.argsort(keys, kind="stable")
        if (np.diff(keys[order]) == 0).any():  # a duplicate id: the per-image checks name it
            self._slow(lists, images, categories)
        self.img = np.concatenate([np.arange(n_img), seg_img])[order]
        self.ids = keys[order] - self.img * OFFSET
        self.void = self.ids == VOID
        self.cat = np.concatenate([np.full(n_img, -1, np.int64), cats])[order]
        self.crowd = np.concatenate([np.ones(n_img, bool), crowd])[order]

    @staticmethod
    def _fast(lists, is_gt, categories):
        flat = list(itertools.chain.from_iterable(lists))
        n = len(flat)
        try:
            ids = np.fromiter(map(_ID, flat), np.int64, n)
            cats = np.fromiter(map(_CATEGORY, flat), np.int64, n)
            crowd = np.fromiter(map(_ISCROWD, flat), bool, n) if is_gt else np.zeros(n, bool)
        except (KeyError, TypeError, ValueError, AttributeError):
            return None
        known = np.array(sorted(categories), dtype=np.int64)
        if n and not len(known):
            return None
        found = known.searchsorted(cats)
        np.minimum(found, len(known) - 1, out=found)
        if (ids == VOID).any() or (known[found] != cats).any():
            return None
        return np.fromiter(map(len, lists), np.int64, len(lists)), ids, cats, crowd

    def _slow(self, lists, images, categories):
        ids, cats, crowd = [], [], []
        for segs, im in zip(lists, images):
            table = _segment_table(segs, categories, im[0], self.what)
            ids += table
            cats += (int(s["category_id"]) for s in table.values())
            crowd += (bool(s.get("iscrowd", 0)) for s in table.values())
        count = np.array([len(segs) for segs in lists], dtype=np.int64)
        return count, np.array(ids, np.int64), np.array(cats, np.int64), np.array(crowd, bool)


_ID = operator.itemgetter("id")
_CATEGORY = operator.itemgetter("category_id")
_ISCROWD = operator.methodcaller("get", "iscrowd", 0)


def _segment_table(
    segments: Sequence[Mapping], categories: Mapping[int, Mapping], image_name: str, what: str
) -> Dict[int, Mapping]:
    """id -> segment, refusing duplicate ids, the reserved void id and unknown categories."""
    table: Dict[int, Mapping] = {}
    for seg in segments:
        for key in ("id", "category_id"):
            if key not in seg:
                raise InputError(
                    f"{image_name}: a {what} segment lacks field '{key}': {seg}"
                )
        sid = int(seg["id"])
        if sid == VOID:
            raise InputError(
                f"{image_name}: {what} segment id 0 is reserved for void (unlabeled pixels)"
            )
        if sid in table:
            raise InputError(
                f"{image_name}: {what} segment id {sid} appears twice in the JSON"
            )
        if seg["category_id"] not in categories:
            raise InputError(
                f"{image_name}: {what} segment {sid} has unknown category_id {seg['category_id']} "
                f"(known: {sorted(categories)})"
            )
        table[sid] = seg
    return table


def raise_image_error(name, gt_segments, pred_segments, gt_ids, pred_ids, categories) -> None:
    """The first error of one image, with a message naming it, the side and the ids.
    ``gt_ids``/``pred_ids``: the ids on the image's runs, or None before its PNGs were read
    (then only ids no 24-bit PNG can hold are known to be missing from it)."""
    for segs, values, what in (
        (gt_segments, gt_ids, "ground-truth"),
        (pred_segments, pred_ids, "predicted"),
    ):
        keys = set(_segment_table(segs, categories, name, what))
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
