"""Datasets by path from the config (``DATASETS.SEG2.*``), and the loaders' public names.

Every loader validates its input up front, so a malformed file fails at registration or
first load with a message that names the file and the field, instead of deep inside a
training iteration. The formats live in their own modules: :mod:`.coco`,
:mod:`.coco_panoptic`, :mod:`.semantic`, :mod:`.cityscapes`; the built-in splits in
:mod:`.builtin`.
"""
from typing import Dict, Sequence

from detectron2.data import DatasetCatalog

from ..io import InputError, read_json
from .builtin import register_synthetic
from .cityscapes import cityscapes_root, register_cityscapes
from .coco import load_coco_instances, register_coco_instances
from .coco_panoptic import load_coco_panoptic, register_coco_panoptic
from .semantic import load_semantic, register_semantic
from .validate import configure_validation, validate_datasets

__all__ = [
    "load_json",
    "load_coco_instances",
    "load_coco_panoptic",
    "load_semantic",
    "register_coco_instances",
    "register_coco_panoptic",
    "register_semantic",
    "register_synthetic",
    "register_from_config",
    "validate_datasets",
]


def load_json(path: str) -> Dict:
    """Read a dataset JSON; a missing or malformed file raises InputError naming it."""
    return read_json(path)


def register_from_config(cfg) -> None:
    """Register the datasets listed under ``DATASETS.SEG2`` (user data by path, no Python).

    Also registers Cityscapes from ``DATASETS.SEG2.CITYSCAPES_ROOT`` (default
    ``$DETECTRON2_DATASETS/cityscapes``) as ``cityscapes_{split}_{instance_seg,sem_seg,panoptic}``
    (instance masks from polygon files with ``DATASETS.SEG2.CITYSCAPES_POLYGONS``).
    Already-registered names are skipped, so calling this twice (e.g. in each worker) is safe.
    """
    configure_validation(cfg)
    register_cityscapes(cityscapes_root(cfg), polygons=cfg.DATASETS.SEG2.CITYSCAPES_POLYGONS)

    def entries(key: str, lengths: Sequence[int]):
        for entry in getattr(cfg.DATASETS.SEG2, key):
            if isinstance(entry, str) or len(entry) not in lengths:
                raise InputError(
                    f"DATASETS.SEG2.{key}: each entry must be a list of {lengths} items, "
                    f"got {entry!r}"
                )
            if entry[0] not in DatasetCatalog.list():
                yield entry

    for name, json_file, image_root in entries("COCO_INSTANCES", (3,)):
        register_coco_instances(name, json_file, image_root)
    for entry in entries("COCO_PANOPTIC", (4, 5)):
        register_coco_panoptic(*entry)
    for name, image_root, label_root, class_names in entries("SEMANTIC", (4,)):
        register_semantic(name, image_root, label_root, [c.strip() for c in class_names.split(",")])
