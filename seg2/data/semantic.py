"""Semantic segmentation folders by path: images and label PNGs matched by file stem."""
import os
from typing import Dict, List

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..io import InputError
from .synthetic.meta import IGNORE_LABEL

__all__ = ["load_semantic", "register_semantic"]


def load_semantic(image_root: str, label_root: str) -> List[Dict]:
    """Image/label pairs matched by file stem (labels are PNGs of contiguous ids, 255 = ignore)."""
    if not os.path.isdir(label_root):
        raise InputError(f"{label_root}: label folder not found")
    images = {os.path.splitext(f)[0]: f for f in sorted(os.listdir(image_root))}
    dicts = []
    for label in sorted(os.listdir(label_root)):
        stem = os.path.splitext(label)[0]
        if stem not in images:
            raise InputError(f"{os.path.join(label_root, label)}: no image '{stem}.*' in {image_root}")
        dicts.append(
            {
                "file_name": os.path.join(image_root, images[stem]),
                "sem_seg_file_name": os.path.join(label_root, label),
            }
        )
    if not dicts:
        raise InputError(f"{label_root}: no label PNGs")
    return dicts


def register_semantic(
    name: str, image_root: str, label_root: str, class_names: List[str], **metadata
) -> None:
    """Register a semantic segmentation dataset (evaluator_type ``sem_seg``)."""
    DatasetCatalog.register(name, lambda: load_semantic(image_root, label_root))
    metadata.setdefault("ignore_label", IGNORE_LABEL)
    MetadataCatalog.get(name).set(
        image_root=image_root,
        sem_seg_root=label_root,
        stuff_classes=list(class_names),
        evaluator_type="sem_seg",
        **metadata,
    )
