"""Plain data conventions shared by data, evaluation, tools and the generator: the one copy of
each (panoptic ids <-> colours, segment decoding, category-id remapping)."""
from .panoptic import (
    OFFSET,
    VOID,
    dataset_category,
    id2rgb,
    invert_id_map,
    rgb2id,
    segments_from_labels,
)

__all__ = [
    "OFFSET",
    "VOID",
    "dataset_category",
    "id2rgb",
    "invert_id_map",
    "rgb2id",
    "segments_from_labels",
]
