"""COCO panoptic (PNG + JSON) by path, with semantic targets derived from the PNGs and cached,
in Detectron2's metadata conventions (all classes, or PanopticFPN's "separated" one)."""

import contextlib
import glob
import hashlib
import json
import os
from typing import Dict, List, Optional

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog

from ..io import InputError, read_json, read_panoptic_png, write_png
from .check_annotations import check_coco_panoptic_json
from .check_files import check_dataset_dicts, check_folder
from .check_instances import check_instances_match_panoptic
from .coco import check_coco_instances, coco_instances_dicts
from .synthetic.meta import IGNORE_LABEL
from .validate import ValidationReport, finish_validation, validation_cache, validation_options
from .validation_cache import file_digest

__all__ = [
    "panoptic_metadata",
    "separated_metadata",
    "load_coco_panoptic",
    "derived_semantic_path",
    "register_coco_panoptic",
    "PANOPTIC_RECORD_KEYS",
]

# The fields of a panoptic record (no instance annotations), for splits that serve only
# panoptic and semantic targets.
PANOPTIC_RECORD_KEYS = (
    "file_name",
    "image_id",
    "height",
    "width",
    "sem_seg_file_name",
    "pan_seg_file_name",
    "segments_info",
)


def panoptic_metadata(categories: List[Dict]) -> Dict:
    """Detectron2's panoptic metadata convention: stuff_* spans ALL classes, things first."""
    cats = sorted(categories, key=lambda c: (not c.get("isthing", 0), c["id"]))
    things = [c for c in cats if c.get("isthing", 0)]
    meta = {
        "thing_classes": [str(c.get("name", c["id"])) for c in things],
        "thing_colors": [c.get("color", [0, 0, 0]) for c in things],
        "stuff_classes": [str(c.get("name", c["id"])) for c in cats],
        "stuff_colors": [c.get("color", [0, 0, 0]) for c in cats],
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(things)},
        "stuff_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(cats)},
        "ignore_label": IGNORE_LABEL,
        "label_divisor": 1000,
    }
    return meta


def separated_metadata(categories: List[Dict]) -> Dict:
    """Detectron2's PanopticFPN metadata: semantic class 0 = all things, stuff 1..N."""
    meta = panoptic_metadata(categories)
    stuff = [c for c in sorted(categories, key=lambda c: c["id"]) if not c.get("isthing", 0)]
    meta.update(
        stuff_classes=["things"] + [c["name"] for c in stuff],
        stuff_colors=[[82, 18, 128]] + [c.get("color", [0, 0, 0]) for c in stuff],
        stuff_dataset_id_to_contiguous_id={c["id"]: i + 1 for i, c in enumerate(stuff)},
    )
    return meta


# Bump when the derivation changes, so cached targets are rebuilt.
_DERIVE_VERSION = 1


def _derive_semantic_png(pan_png: str, labels: Dict[int, int], out_png: str) -> None:
    """Semantic labels from a panoptic PNG (segment id -> label, 255 = void); written atomically."""
    ids = read_panoptic_png(pan_png)
    sem = np.full(ids.shape, IGNORE_LABEL, dtype=np.uint8)
    for segment_id, label in labels.items():
        sem[ids == segment_id] = label
    write_png(sem, out_png)


def derived_semantic_path(folder: str, pan_png: str, labels: Dict[int, int]) -> str:
    """Where the semantic target of ``pan_png`` under ``labels`` is cached: the name carries
    a digest of the PNG's bytes and of the labels (from the JSON), so editing either gives a
    new file instead of a stale one (file times are not trusted)."""
    h = hashlib.sha256(f"v{_DERIVE_VERSION}".encode())
    with open(pan_png, "rb") as f:
        h.update(f.read())
    h.update(json.dumps(sorted(labels.items())).encode())
    stem = os.path.splitext(os.path.basename(pan_png))[0]
    return os.path.join(folder, f"{stem}.{h.hexdigest()[:16]}.png")


def _cached_semantic(folder: str, pan_png: str, labels: Dict[int, int]) -> str:
    out = derived_semantic_path(folder, pan_png, labels)
    if not os.path.isfile(out):
        stem = os.path.splitext(os.path.basename(pan_png))[0]
        for old in glob.glob(os.path.join(glob.escape(folder), glob.escape(stem) + ".*.png")):
            with contextlib.suppress(FileNotFoundError):
                os.remove(old)  # superseded targets of the same PNG
        _derive_semantic_png(pan_png, labels, out)
    return out


def load_coco_panoptic(
    panoptic_json: str,
    image_root: str,
    panoptic_root: str,
    meta: Dict,
    instances_json: Optional[str] = None,
    semantic_root: Optional[str] = None,
    cache_dir: Optional[str] = None,
    dataset_name: Optional[str] = None,
) -> List[Dict]:
    """Load COCO panoptic (PNG + JSON) into Detectron2 dicts, after one validation pass
    (``seg2.data.validate``) over the JSON, the images, the PNGs against ``segments_info``
    and, when given, ``instances_json``; every problem is reported together.

    Each dict has ``file_name``, ``image_id``, ``height``, ``width``, ``pan_seg_file_name``,
    ``segments_info`` (contiguous ``category_id``, ``isthing``, ``iscrowd``) and
    ``sem_seg_file_name``. Semantic targets come from ``semantic_root`` when given, else they
    are derived from the panoptic PNGs into ``cache_dir``, keyed on the content of the PNG and
    of its segments (see :func:`derived_semantic_path`). With ``instances_json`` the dicts also
    carry COCO ``annotations`` for Mask R-CNN; without it the mapper builds instances from the
    panoptic PNG.
    """
    name = dataset_name or panoptic_json
    report = ValidationReport(name)
    report.cache = cache = validation_cache(
        ["coco_panoptic", os.path.abspath(panoptic_json), image_root, panoptic_root, instances_json]
    )
    data = read_json(panoptic_json)
    digest = file_digest(panoptic_json)
    found = cache.json_results(digest)
    if found is None:
        part = ValidationReport(name)
        usable = check_coco_panoptic_json(data, panoptic_json, part)
        found = {"problems": part.problem_rows(), "notes": part.notes, "usable": usable}
        cache.store_json(digest, found)
    report.extend(found["problems"], found["notes"])
    if not found["usable"]:
        cache.save()
        finish_validation(report, [], lambda d: None)
    if "stuff_dataset_id_to_contiguous_id" not in meta:  # registration could not read the file
        cats = [
            c for c in data["categories"] if isinstance(c, dict) and isinstance(c.get("id"), int)
        ]
        meta = {**panoptic_metadata(cats), **meta}
    stuff_map = meta["stuff_dataset_id_to_contiguous_id"]
    thing_map = meta["thing_dataset_id_to_contiguous_id"]
    # Detectron2's "separated" convention (PanopticFPN): stuff ids 1..N, all things one class 0.
    separated = not set(thing_map) <= set(stuff_map)
    images = {im["id"]: im for im in data["images"] if isinstance(im, dict) and "id" in im}
    dicts = []
    for ann in data["annotations"]:
        img = images.get(ann.get("image_id")) if isinstance(ann, dict) else None
        if (
            img is None
            or not isinstance(ann.get("file_name"), str)
            or not isinstance(ann.get("segments_info"), list)
        ):
            continue  # reported by check_coco_panoptic_json
        segments = [  # unknown categories were reported; a None keeps the PNG check exact
            dict(
                s,
                category_id=thing_map.get(
                    s.get("category_id"), stuff_map.get(s.get("category_id"))
                ),
                isthing=s.get("category_id") in thing_map,
                iscrowd=s.get("iscrowd", 0),
                dataset_category_id=s.get("category_id"),
            )
            for s in ann["segments_info"]
            if isinstance(s, dict)
        ]
        record = {
            "file_name": os.path.join(image_root, str(img.get("file_name"))),
            "image_id": img["id"],
            "height": img.get("height"),
            "width": img.get("width"),
            "pan_seg_file_name": os.path.join(panoptic_root, ann["file_name"]),
            "segments_info": segments,
        }
        if semantic_root is not None:
            stem = os.path.splitext(ann["file_name"])[0]
            record["sem_seg_file_name"] = os.path.join(semantic_root, stem + ".png")
        dicts.append(record)
    roots = [("image_root", image_root), ("panoptic_root", panoptic_root)]
    roots += [("semantic_root", semantic_root)] if semantic_root is not None else []
    if all([check_folder(folder, what, report, panoptic_json) for what, folder in roots]):
        check_dataset_dicts(dicts, report, meta, validation_options(), panoptic_json, cache)
    report.num_samples = len(images)
    inst_data = None
    if instances_json:
        inst_data = check_coco_instances(instances_json, None, report, cache)
    cache.save()
    if inst_data is not None:
        check_instances_match_panoptic(
            inst_data, instances_json, data["categories"], panoptic_json, report
        )
    dicts = finish_validation(report, dicts, lambda d: d["image_id"])

    if semantic_root is None:
        cache_dir = cache_dir or os.path.join(os.path.dirname(panoptic_root.rstrip("/")), "cache")
        suffix = "_semseg_separated" if separated else "_semseg"
        folder = os.path.join(cache_dir, os.path.basename(panoptic_root.rstrip("/")) + suffix)
        os.makedirs(folder, exist_ok=True)
        for d in dicts:
            labels = {
                s["id"]: stuff_map.get(s["dataset_category_id"], 0) for s in d["segments_info"]
            }
            d["sem_seg_file_name"] = _cached_semantic(folder, d["pan_seg_file_name"], labels)
    for d in dicts:
        for s in d["segments_info"]:
            s.pop("dataset_category_id")
    if instances_json:
        by_image = {
            d["image_id"]: d["annotations"]
            for d in coco_instances_dicts(
                inst_data, image_root, name, [d["image_id"] for d in dicts], instances_json
            )
        }
        for d in dicts:
            d["annotations"] = by_image.get(d["image_id"], [])
    return dicts


def register_coco_panoptic(
    name: str,
    image_root: str,
    panoptic_root: str,
    panoptic_json: str,
    instances_json: Optional[str] = None,
    semantic_root: Optional[str] = None,
    metadata: Optional[Dict] = None,
) -> None:
    """Register a COCO panoptic dataset (evaluator_type ``coco_panoptic_seg``).

    Categories are read from ``panoptic_json`` (each with ``isthing``) at registration unless
    ``metadata`` (class names and id maps, see ``panoptic_metadata``) is given.
    """
    meta = metadata
    if meta is None:
        try:
            data = read_json(panoptic_json)
            cats = [c for c in data.get("categories", []) if isinstance(c, dict) and "id" in c]
            meta = panoptic_metadata(cats)
        except (InputError, AttributeError, TypeError):
            meta = {}  # the loader reports the file's problems, all together, at first use
    DatasetCatalog.register(
        name,
        lambda: load_coco_panoptic(
            panoptic_json,
            image_root,
            panoptic_root,
            MetadataCatalog.get(name).as_dict(),
            instances_json,
            semantic_root,
            dataset_name=name,
        ),
    )
    extra = {"json_file": instances_json} if instances_json else {}
    MetadataCatalog.get(name).set(
        image_root=image_root,
        panoptic_root=panoptic_root,
        panoptic_json=panoptic_json,
        evaluator_type="coco_panoptic_seg",
        **extra,
        **meta,
    )
