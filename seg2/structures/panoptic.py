"""COCO panoptic conventions: segment ids <-> PNG colours, Detectron2's label-divisor encoding,
and the contiguous <-> dataset category-id maps. Everything in seg2 that touches a panoptic
PNG or ``segments_info`` goes through these functions, so the encoding exists once."""
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np

__all__ = [
    "OFFSET",
    "VOID",
    "rgb2id",
    "id2rgb",
    "segments_from_labels",
    "invert_id_map",
    "dataset_category",
]

# Segment id 0 is void (unlabeled) in COCO panoptic PNGs.
VOID = 0
# COCO panoptic ids are < 256^3 (three 8-bit channels); also the joint-id base of PQ.
OFFSET = 256 * 256 * 256


def rgb2id(rgb: np.ndarray) -> np.ndarray:
    """COCO panoptic colour (H, W, 3) uint8 -> segment ids (H, W) int64: R + 256 G + 256^2 B."""
    rgb = np.asarray(rgb).astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id2rgb(ids: np.ndarray) -> np.ndarray:
    """Segment ids (H, W) in [0, 256^3) -> COCO panoptic colour (H, W, 3) uint8."""
    ids = np.asarray(ids).astype(np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= OFFSET):
        raise ValueError(f"panoptic ids must lie in [0, {OFFSET}), got [{ids.min()}, {ids.max()}]")
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)


def segments_from_labels(
    panoptic_img: np.ndarray, label_divisor: int, thing_ids
) -> Tuple[np.ndarray, List[Dict]]:
    """Decode Detectron2's ``segments_info=None`` convention.

    A model may return ``(panoptic_img, None)`` where each pixel is
    ``category * label_divisor + instance`` (contiguous category) and -1 is void. Ids are
    shifted by one so that 0 is void, as COCO panoptic PNGs need.

    Args:
        panoptic_img: (H, W) int labels.
        label_divisor: the metadata's ``label_divisor``.
        thing_ids: contiguous ids of the thing classes (sets ``isthing``).

    Returns:
        ((H, W) int64 segment ids, 0 = void; segments with ``id``, contiguous
        ``category_id`` and ``isthing``).
    """
    panoptic_img = np.asarray(panoptic_img).astype(np.int64)
    thing_ids = set(int(t) for t in thing_ids)
    segments = []
    for label in np.unique(panoptic_img):
        if label == -1:
            continue
        cls = int(label) // label_divisor
        segments.append({"id": int(label) + 1, "category_id": cls, "isthing": cls in thing_ids})
    return panoptic_img + 1, segments


def invert_id_map(dataset_to_contiguous: Optional[Mapping]) -> Dict[int, int]:
    """``{dataset id: contiguous id}`` (Detectron2 metadata) -> ``{contiguous id: dataset id}``."""
    return {int(v): int(k) for k, v in (dataset_to_contiguous or {}).items()}


def dataset_category(
    segment: Mapping,
    thing_to_dataset: Mapping[int, int],
    stuff_to_dataset: Mapping[int, int],
    without_isthing: Optional[Mapping[int, int]] = None,
) -> int:
    """The dataset category id of a predicted segment with a contiguous ``category_id``.

    ``isthing`` picks the table (things and stuff may share contiguous ids). A segment
    without ``isthing`` is mapped through ``without_isthing`` when given (e.g. Cityscapes,
    whose thing and stuff train ids do not overlap), else taken to carry a dataset id already.
    Raises KeyError (with the id) for an id the chosen table lacks.
    """
    cat = int(segment["category_id"])
    isthing = segment.get("isthing", None)
    if isthing is None:
        return int(without_isthing[cat]) if without_isthing is not None else cat
    table = thing_to_dataset if bool(isthing) else stuff_to_dataset
    if cat not in table:
        raise KeyError(cat)
    return table[cat]
