"""COCO instances by path: validated up front, then turned into Detectron2's dataset dicts
from the same parse of the file (the records of Detectron2's ``load_coco_json``)."""

import functools
import json
import logging
import os
import re
from typing import Dict, List, Optional, Sequence

import pycocotools.mask as mask_util
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from ..io import InputError, read_json
from .check_annotations import is_int
from .check_files import check_folder, image_facts, image_kind, images_per_chunk, report_image
from .check_instances import check_coco_instances_json
from .validate import (
    ValidationReport,
    finish_validation,
    validation_cache,
    validation_options,
)
from .validation_cache import file_digest

__all__ = [
    "check_coco_instances",
    "coco_instances_dicts",
    "load_coco_instances",
    "read_coco_categories",
    "register_coco_instances",
    "require_fields",
    "check_files_exist",
]

logger = logging.getLogger(__name__)


def require_fields(obj: Dict, keys: Sequence[str], path: str, where: str) -> None:
    missing = [k for k in keys if k not in obj]
    if missing:
        raise InputError(f"{path}: {where} lacks field(s) {missing}")


def check_files_exist(paths: List[str], what: str, source: str) -> None:
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise InputError(f"{source}: {len(missing)} {what} file(s) not found, e.g. {missing[:3]}")


def check_coco_instances(
    json_file: str, image_root: Optional[str], report: ValidationReport, cache=None
) -> Optional[Dict]:
    """Check a COCO instances file and, with ``image_root``, its images (headers, or a full
    decode with ``DATASETS.SEG2.CHECK_FILES``) into ``report``; returns the parsed file, None
    when its structure is unusable. ``cache`` (:func:`.validate.validation_cache`) replays
    the results of an unchanged JSON and of unchanged image files."""
    cache = cache or validation_cache(None)
    data = read_json(json_file)
    digest = file_digest(json_file)
    found = cache.json_results(digest)
    if found is None:
        part = ValidationReport(report.dataset)
        usable = check_coco_instances_json(data, json_file, part) is not None
        found = {"problems": part.problem_rows(), "notes": part.notes, "usable": usable}
        cache.store_json(digest, found)
    report.extend(found["problems"], found["notes"])
    if not found["usable"]:
        return None
    report.num_samples = len(data["images"])
    if image_root is None or not check_folder(image_root, "image_root", report, json_file):
        return data
    opts = validation_options()
    named = [
        im for im in data["images"] if isinstance(im, dict) and isinstance(im.get("file_name"), str)
    ]
    paths = [os.path.join(image_root, im["file_name"]) for im in named]
    read = functools.partial(image_facts, opts=opts)
    facts = cache.facts(image_kind(opts), paths, read, images_per_chunk(opts))
    for im, path in zip(named, paths):
        hw = (im.get("height"), im.get("width"))
        if not all(is_int(v) and v > 0 for v in hw):
            hw = None  # reported by check_coco_instances_json; no second line on the size
        report_image(facts[path], path, hw, report, im.get("id"), json_file)
    return data


def coco_instances_dicts(
    data: Dict,
    image_root: str,
    dataset_name: Optional[str] = None,
    image_ids=None,
    json_file: str = "",
) -> List[Dict]:
    """Detectron2's dataset dicts of a parsed, validated COCO instances file: the records of
    Detectron2's ``load_coco_json`` (images sorted by id; ``iscrowd``, ``bbox``,
    ``category_id``, ``segmentation``, ``bbox_mode``, but no ``keypoints``; invalid polygons
    dropped; contiguous category ids with the map in the metadata of ``dataset_name``), with
    flat polygon lists read as one polygon. ``image_ids``: keep only these images."""
    cats = sorted(data["categories"], key=lambda c: c["id"])
    id_map = None
    if dataset_name is not None:
        meta = MetadataCatalog.get(dataset_name)
        meta.thing_classes = [c["name"] for c in cats]
        cat_ids = [c["id"] for c in cats]
        contiguous = not cat_ids or (min(cat_ids) == 1 and max(cat_ids) == len(cat_ids))
        if not contiguous and "coco" not in dataset_name:
            logger.warning(
                "Category ids in annotations are not in [1, #categories]! "
                "We'll apply a mapping for you."
            )
        id_map = {v: i for i, v in enumerate(cat_ids)}
        meta.thing_dataset_id_to_contiguous_id = id_map
    images = {im["id"]: im for im in data["images"]}
    if image_ids is not None:
        keep = set(image_ids)
        images = {k: im for k, im in images.items() if k in keep}
    anns: Dict = {k: [] for k in images}
    for a in data["annotations"]:
        if a["image_id"] in anns:
            anns[a["image_id"]].append(a)
    # no "keypoints": no seg2 model has a keypoint head (noted by the check)
    ann_keys = ("iscrowd", "bbox", "category_id")
    dicts, dropped = [], 0
    for image_id in sorted(images):
        im = images[image_id]
        objs = []
        for a in anns[image_id]:
            if a.get("ignore", 0) != 0:
                raise InputError(
                    f"{json_file}: annotation {a.get('id')}: field 'ignore' = {a['ignore']!r}: "
                    "not supported (Detectron2 refuses it)"
                )
            obj = {key: a[key] for key in ann_keys if key in a}
            segm = a.get("segmentation")
            if segm:
                if isinstance(segm, dict):
                    if isinstance(segm["counts"], list):
                        segm = mask_util.frPyObjects(segm, *segm["size"])
                else:
                    if not isinstance(segm[0], list):
                        segm = [segm]  # a flat polygon list (noted by the check)
                    segm = [p for p in segm if len(p) % 2 == 0 and len(p) >= 6]
                    if not segm:
                        dropped += 1
                        continue
                obj["segmentation"] = segm
            obj["bbox_mode"] = BoxMode.XYWH_ABS
            if id_map:
                obj["category_id"] = id_map[obj["category_id"]]
            objs.append(obj)
        dicts.append(
            {
                "file_name": os.path.join(image_root, im["file_name"]),
                "height": im["height"],
                "width": im["width"],
                "image_id": image_id,
                "annotations": objs,
            }
        )
    if dropped:
        logger.warning(f"Filtered out {dropped} instances without valid segmentation.")
    return dicts


def load_coco_instances(json_file: str, image_root: str, dataset_name: str) -> List[Dict]:
    """COCO instances behind one validation pass (``seg2.data.validate``): every problem of
    the file and its images is reported together, flat polygon lists are converted with a
    note, and broken images stop the run or are skipped by policy. The file is parsed once;
    the checks' results are cached between starts.

    Non-contiguous category ids are mapped to contiguous ones and the map is stored in the
    metadata (``thing_dataset_id_to_contiguous_id``), which the COCO evaluator inverts when
    writing results, so predictions carry the dataset's original ids.
    """
    report = ValidationReport(dataset_name)
    cache = validation_cache(["coco_instances", os.path.abspath(json_file), image_root])
    data = check_coco_instances(json_file, image_root, report, cache)
    cache.save()
    report.cache = cache
    if data is None:
        finish_validation(report, [], lambda im: None)
    images = [im for im in data["images"] if isinstance(im, dict)]
    kept = finish_validation(report, images, lambda im: im.get("id"))
    ids = [im["id"] for im in kept] if len(kept) != len(data["images"]) else None
    return coco_instances_dicts(data, image_root, dataset_name, ids, json_file)


# A top-level-looking "categories" key; in JSON a quoted word followed by ':' is a key.
_CATEGORIES_KEY = re.compile(rb'"categories"\s*:\s*(?=\[)')


def read_coco_categories(json_file: str) -> Optional[List[Dict]]:
    """The ``categories`` of a COCO file without parsing its images and annotations (they
    usually close the file, sometimes open it); None if not found this way."""
    try:
        size = os.path.getsize(json_file)
        with open(json_file, "rb") as f:
            for start, length in ((max(0, size - (1 << 20)), 1 << 20), (0, 1 << 20), (0, size)):
                f.seek(start)
                raw = f.read(length)
                for m in reversed(list(_CATEGORIES_KEY.finditer(raw))):
                    try:
                        cats, _ = json.JSONDecoder().raw_decode(raw[m.end():].decode("utf-8"))
                    except (ValueError, UnicodeDecodeError):
                        continue
                    if isinstance(cats, list) and all(isinstance(c, dict) for c in cats):
                        return cats
                if length >= size:
                    break
    except OSError:
        return None
    return None


def coco_instances_metadata(cats: List) -> Dict:
    """Thing classes and the contiguous id map of a COCO file's categories (malformed ones
    are left to the validation pass, which reports them all)."""
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
    """Register a COCO instances dataset (evaluator_type ``coco``); the classes are read
    from the file's ``categories`` (not the whole file) so they exist before loading."""
    meta = dict(metadata or {})
    if not meta.get("thing_classes"):
        cats = read_coco_categories(json_file)
        if cats is not None:
            meta.update(coco_instances_metadata(cats))
    DatasetCatalog.register(name, lambda: load_coco_instances(json_file, image_root, name))
    MetadataCatalog.get(name).set(
        json_file=json_file, image_root=image_root, evaluator_type="coco", **meta
    )
