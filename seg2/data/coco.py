"""COCO instances by path: validated up front, then Detectron2's own ``load_coco_json``."""

import os
import tempfile
from typing import Dict, List, Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from ..io import InputError, not_a_file, read_json, write_json
from .check_files import check_folder, check_image_file
from .check_instances import AMENDING_NOTES, check_coco_instances_json
from .validate import ValidationReport, finish_validation, validation_options

__all__ = [
    "check_coco_instances",
    "load_coco_instances",
    "register_coco_instances",
    "require_fields",
    "check_files_exist",
]


def require_fields(obj: Dict, keys: Sequence[str], path: str, where: str) -> None:
    missing = [k for k in keys if k not in obj]
    if missing:
        raise InputError(f"{path}: {where} lacks field(s) {missing}")


def check_files_exist(paths: List[str], what: str, source: str) -> None:
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise InputError(f"{source}: {len(missing)} {what} file(s) not found, e.g. {missing[:3]}")


def check_coco_instances(json_file: str, image_root: Optional[str], report: ValidationReport):
    """Check a COCO instances file (and its images, unless ``DATASETS.SEG2.CHECK_FILES`` is
    off) into ``report``; returns the data to load (see ``check_coco_instances_json``)."""
    data = read_json(json_file)
    fixed = check_coco_instances_json(data, json_file, report)
    if fixed is None:
        return None
    opts = validation_options()
    report.num_samples = len(fixed["images"])
    if image_root is not None and not check_folder(image_root, "image_root", report, json_file):
        return fixed
    for im in fixed["images"]:
        if (
            not (isinstance(im, dict) and isinstance(im.get("file_name"), str))
            or image_root is None
        ):
            continue
        path = os.path.join(image_root, im["file_name"])
        hw = (im.get("height"), im.get("width"))
        if not all(isinstance(v, int) and v > 0 for v in hw):
            hw = None  # reported by check_coco_instances_json; no second line on the size
        if opts.check_files:
            check_image_file(path, hw, report, im.get("id"), opts, json_file)
        elif not os.path.isfile(path):
            report.add(
                path,
                f"image {im.get('id')!r}",
                "file_name",
                im["file_name"],
                not_a_file(path, "image"),
                im.get("id"),
            )
    return fixed


def keep_images(data: Dict, image_ids) -> Dict:
    """``data`` restricted to the given images and their annotations."""
    keep = set(image_ids)
    return dict(
        data,
        images=[im for im in data["images"] if im.get("id") in keep],
        annotations=[
            a for a in data["annotations"] if isinstance(a, dict) and a.get("image_id") in keep
        ],
    )


def load_coco_dicts(
    data: Optional[Dict], json_file: str, image_root: str, dataset_name: str
) -> List[Dict]:
    """Detectron2's ``load_coco_json`` on ``json_file``, or on ``data``, an amended copy of
    it (``load_coco_json`` reads a path, so the copy goes through a temporary file)."""
    if data is not None:
        with tempfile.TemporaryDirectory(prefix="seg2-coco-") as tmp:
            path = write_json(data, os.path.join(tmp, os.path.basename(json_file)), indent=None)
            dicts = load_coco_json(path, image_root, dataset_name)
    else:
        dicts = load_coco_json(json_file, image_root, dataset_name)
    return dicts


def load_coco_instances(json_file: str, image_root: str, dataset_name: str) -> List[Dict]:
    """Detectron2's ``load_coco_json`` behind one validation pass (``seg2.data.validate``):
    every problem of the file and its images is reported together, flat polygon lists are
    converted with a note, and broken images stop the run or are skipped by policy.

    Non-contiguous category ids are mapped to contiguous ones and the map is stored in the
    metadata (``thing_dataset_id_to_contiguous_id``), which the COCO evaluator inverts when
    writing results, so predictions carry the dataset's original ids.
    """
    report = ValidationReport(dataset_name)
    data = check_coco_instances(json_file, image_root, report)
    if data is None:
        finish_validation(report, [], lambda im: None)
    images = [im for im in data["images"] if isinstance(im, dict)]
    kept = finish_validation(report, images, lambda im: im.get("id"))
    amended = len(kept) != len(data["images"]) or any(report.notes.get(n) for n in AMENDING_NOTES)
    if len(kept) != len(data["images"]):
        data = keep_images(data, [im["id"] for im in kept])
    return load_coco_dicts(data if amended else None, json_file, image_root, dataset_name)


def _coco_instances_metadata(json_file: str) -> Dict:
    """Thing classes and id map read from the JSON header, so they exist before loading
    (malformed categories are left to the validation pass, which reports them all)."""
    try:
        data = read_json(json_file)
    except InputError:  # the loader reports it, with everything else, at first use
        return {}
    cats = data.get("categories", []) if isinstance(data, dict) else []
    cats = sorted(
        (c for c in cats if isinstance(c, dict) and isinstance(c.get("id"), int)),
        key=lambda c: c["id"],
    )
    return {
        "thing_classes": [str(c.get("name", c["id"])) for c in cats],
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(cats)},
    }


def register_coco_instances(
    name: str, json_file: str, image_root: str, metadata: Optional[Dict] = None
) -> None:
    """Register a COCO instances dataset (evaluator_type ``coco``)."""
    meta = dict(metadata or {})
    if not meta.get("thing_classes"):
        meta.update(_coco_instances_metadata(json_file))
    DatasetCatalog.register(name, lambda: load_coco_instances(json_file, image_root, name))
    MetadataCatalog.get(name).set(
        json_file=json_file, image_root=image_root, evaluator_type="coco", **meta
    )
