"""Semantic segmentation folders by path: images and label PNGs matched by file stem."""

import os
from typing import Dict, List, Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..io import InputError
from .check_files import check_dataset_dicts
from .synthetic.meta import IGNORE_LABEL
from .validate import ValidationReport, finish_validation, validation_cache, validation_options

__all__ = ["load_semantic", "register_semantic", "IMAGE_EXTENSIONS"]

# Files of an image folder taken as images (anything else there is ignored).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")


def load_semantic(
    image_root: str,
    label_root: str,
    class_names: Optional[Sequence[str]] = None,
    dataset_name: Optional[str] = None,
    ignore_label: int = IGNORE_LABEL,
) -> List[Dict]:
    """Image/label pairs matched by file stem (labels: PNGs of contiguous ids, palette PNGs
    read as their indices, ``ignore_label`` = void), after one validation pass: an image
    without a label, a label without an image, unreadable files, size mismatches and label
    values >= ``len(class_names)`` are all reported together (``seg2.data.validate``)."""
    for folder, what in ((image_root, "image"), (label_root, "label")):
        if not os.path.isdir(folder):
            why = "folder path is a file" if os.path.exists(folder) else "folder not found"
            raise InputError(f"{folder}: {what} {why}")
    report = ValidationReport(dataset_name or label_root)
    images = {
        os.path.splitext(f)[0]: f
        for f in sorted(os.listdir(image_root))
        if f.lower().endswith(IMAGE_EXTENSIONS)
    }
    labels = {
        os.path.splitext(f)[0]: f
        for f in sorted(os.listdir(label_root))
        if f.lower().endswith((".png", ".npy"))
    }
    for stem in sorted(set(images) - set(labels)):
        path = os.path.join(image_root, images[stem])
        report.add(
            path,
            f"image '{stem}'",
            "sem_seg_file_name",
            f"{stem}.png",
            f"no label in {label_root}",
            path,
        )
    for stem in sorted(set(labels) - set(images)):
        path = os.path.join(label_root, labels[stem])
        report.add(
            path, f"label '{stem}'", "file_name", f"{stem}.*", f"no image in {image_root}", path
        )
    dicts = [
        {
            "file_name": os.path.join(image_root, images[stem]),
            "sem_seg_file_name": os.path.join(label_root, labels[stem]),
        }
        for stem in sorted(set(images) & set(labels))
    ]
    meta = {"stuff_classes": list(class_names or []), "ignore_label": ignore_label}
    roots = [os.path.abspath(image_root), os.path.abspath(label_root)]
    report.cache = validation_cache(["semantic", *roots])
    check_dataset_dicts(dicts, report, meta, validation_options(), label_root, report.cache)
    report.cache.save()
    report.num_samples = len(set(images) | set(labels))
    return finish_validation(report, dicts, lambda d: d["file_name"])


def register_semantic(
    name: str, image_root: str, label_root: str, class_names: List[str], **metadata
) -> None:
    """Register a semantic segmentation dataset (evaluator_type ``sem_seg``)."""
    metadata.setdefault("ignore_label", IGNORE_LABEL)
    ignore = metadata["ignore_label"]
    DatasetCatalog.register(
        name, lambda: load_semantic(image_root, label_root, class_names, name, ignore)
    )
    MetadataCatalog.get(name).set(
        image_root=image_root,
        sem_seg_root=label_root,
        stuff_classes=list(class_names),
        evaluator_type="sem_seg",
        **metadata,
    )
