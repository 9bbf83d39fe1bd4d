"""COCO panoptic (PNG + JSON) by path, with semantic targets derived from the PNGs and cached,
in Detectron2's metadata conventions (all classes, or PanopticFPN's "separated" one)."""
import os
from typing import Dict, List, Optional

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog

from ..io import InputError, read_json, read_panoptic_png, write_png
from .coco import check_files_exist, load_coco_instances, require_fields
from .synthetic.meta import IGNORE_LABEL

__all__ = [
    "panoptic_metadata",
    "separated_metadata",
    "load_coco_panoptic",
    "register_coco_panoptic",
]


def panoptic_metadata(categories: List[Dict]) -> Dict:
    """Detectron2's panoptic metadata convention: stuff_* spans ALL classes, things first."""
    cats = sorted(categories, key=lambda c: (not c.get("isthing", 0), c["id"]))
    things = [c for c in cats if c.get("isthing", 0)]
    meta = {
        "thing_classes": [c["name"] for c in things],
        "thing_colors": [c.get("color", [0, 0, 0]) for c in things],
        "stuff_classes": [c["name"] for c in cats],
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


def _derive_semantic_png(pan_png: str, labels: Dict[int, int], out_png: str) -> None:
    """Semantic labels from a panoptic PNG (segment id -> label, 255 = void); written atomically."""
    ids = read_panoptic_png(pan_png)
    sem = np.full(ids.shape, IGNORE_LABEL, dtype=np.uint8)
    for segment_id, label in labels.items():
        sem[ids == segment_id] = label
    write_png(sem, out_png)


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
    """Load COCO panoptic (PNG + JSON) into Detectron2 dicts.

    Each dict has ``file_name``, ``image_id``, ``height``, ``width``, ``pan_seg_file_name``,
    ``segments_info`` (contiguous ``category_id``, ``isthing``, ``iscrowd``) and
    ``sem_seg_file_name``. Semantic targets come from ``semantic_root`` when given, else they
    are derived from the panoptic PNGs once into ``cache_dir`` (reused while newer than the
    PNG). With ``instances_json`` the dicts also carry COCO ``annotations`` for Mask R-CNN;
    without it the mapper builds instances from the panoptic PNG.
    """
    data = read_json(panoptic_json)
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise InputError(f"{panoptic_json}: top-level field '{key}' missing or not a list")
    stuff_map = meta["stuff_dataset_id_to_contiguous_id"]
    thing_map = meta["thing_dataset_id_to_contiguous_id"]
    # Detectron2's "separated" convention (PanopticFPN): stuff ids 1..N, all things one class 0.
    separated = not set(thing_map) <= set(stuff_map)
    images = {im["id"]: im for im in data["images"]}
    instances_by_image = {}
    if instances_json:
        for d in load_coco_instances(instances_json, image_root, dataset_name or "panoptic"):
            instances_by_image[d["image_id"]] = d["annotations"]
    derive = semantic_root is None
    if derive:
        cache_dir = cache_dir or os.path.join(os.path.dirname(panoptic_root.rstrip("/")), "cache")
        semantic_root = os.path.join(cache_dir, os.path.basename(panoptic_root.rstrip("/")) + ("_semseg_separated" if separated else "_semseg"))
        os.makedirs(semantic_root, exist_ok=True)

    dicts = []
    for ann in data["annotations"]:
        require_fields(ann, ("image_id", "file_name", "segments_info"), panoptic_json, "annotation")
        if ann["image_id"] not in images:
            raise InputError(
                f"{panoptic_json}: annotation {ann['file_name']} refers to image_id "
                f"{ann['image_id']}, not in 'images'"
            )
        img = images[ann["image_id"]]
        segments = []
        for s in ann["segments_info"]:
            require_fields(s, ("id", "category_id"), panoptic_json, f"segment of {ann['file_name']}")
            if s["category_id"] not in stuff_map and s["category_id"] not in thing_map:
                raise InputError(
                    f"{panoptic_json}: segment {s['id']} of {ann['file_name']} has unknown "
                    f"category_id {s['category_id']}"
                )
            segments.append(
                dict(
                    s,
                    category_id=thing_map.get(s["category_id"], stuff_map.get(s["category_id"])),
                    isthing=s["category_id"] in thing_map,
                    iscrowd=s.get("iscrowd", 0),
                )
            )
        pan_png = os.path.join(panoptic_root, ann["file_name"])
        if not os.path.isfile(pan_png):
            raise InputError(f"{panoptic_json}: panoptic PNG {pan_png} not found")
        sem_png = os.path.join(semantic_root, os.path.splitext(ann["file_name"])[0] + ".png")
        if derive and (
            not os.path.isfile(sem_png) or os.path.getmtime(sem_png) < os.path.getmtime(pan_png)
        ):
            labels = {s["id"]: stuff_map.get(s["category_id"], 0) for s in ann["segments_info"]}
            _derive_semantic_png(pan_png, labels, sem_png)
        record = {
            "file_name": os.path.join(image_root, img["file_name"]),
            "image_id": img["id"],
            "height": img["height"],
            "width": img["width"],
            "pan_seg_file_name": pan_png,
            "segments_info": segments,
            "sem_seg_file_name": sem_png,
        }
        if instances_json:
            record["annotations"] = instances_by_image.get(img["id"], [])
        dicts.append(record)
    check_files_exist([d["file_name"] for d in dicts], "image", panoptic_json)
    check_files_exist([d["sem_seg_file_name"] for d in dicts], "semantic PNG", panoptic_json)
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
        meta = panoptic_metadata(read_json(panoptic_json)["categories"]) if os.path.isfile(
            panoptic_json
        ) else {}
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
