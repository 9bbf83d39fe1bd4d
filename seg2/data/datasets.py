"""Dataset loaders and registration: the built-in synthetic splits and user data by path.

Every loader validates its input up front, so a malformed file fails here with a message
that names the file and the field instead of deep inside a training iteration.
"""
import logging
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from ..io import InputError, read_json, read_panoptic_png, write_png
from .cityscapes import cityscapes_root, register_cityscapes
from .synthetic.meta import CATEGORIES, IGNORE_LABEL, SPLITS

logger = logging.getLogger(__name__)

__all__ = [
    "DatasetFormatError",
    "load_json",
    "load_coco_instances",
    "load_coco_panoptic",
    "load_semantic",
    "register_coco_instances",
    "register_coco_panoptic",
    "register_semantic",
    "register_synthetic",
    "register_from_config",
]


# One input-error type for the whole package (seg2.io.InputError); the old name stays.
DatasetFormatError = InputError


def load_json(path: str) -> Dict:
    """Read a dataset JSON; a missing or malformed file raises InputError naming it."""
    return read_json(path)


def _require(obj: Dict, keys: Sequence[str], path: str, where: str) -> None:
    missing = [k for k in keys if k not in obj]
    if missing:
        raise DatasetFormatError(f"{path}: {where} lacks field(s) {missing}")


def _check_files_exist(paths: List[str], what: str, source: str) -> None:
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise DatasetFormatError(
            f"{source}: {len(missing)} {what} file(s) not found, e.g. {missing[:3]}"
        )


def _validate_coco_instances(path: str) -> Dict:
    data = load_json(path)
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetFormatError(f"{path}: top-level field '{key}' missing or not a list")
    for c in data["categories"]:
        _require(c, ("id", "name"), path, f"category {c}")
    cat_ids = {c["id"] for c in data["categories"]}
    img_ids = set()
    for img in data["images"]:
        _require(img, ("id", "file_name", "height", "width"), path, f"image {img.get('id')}")
        img_ids.add(img["id"])
    for a in data["annotations"]:
        _require(a, ("id", "image_id", "category_id", "bbox"), path, f"annotation {a.get('id')}")
        if a["category_id"] not in cat_ids:
            raise DatasetFormatError(
                f"{path}: annotation {a['id']} has category_id {a['category_id']}, "
                f"not among the categories {sorted(cat_ids)}"
            )
        if a["image_id"] not in img_ids:
            raise DatasetFormatError(
                f"{path}: annotation {a['id']} refers to image_id {a['image_id']}, not in 'images'"
            )
    return data


def load_coco_instances(json_file: str, image_root: str, dataset_name: str) -> List[Dict]:
    """Detectron2's ``load_coco_json`` behind a validator.

    Non-contiguous category ids are mapped to contiguous ones and the map is stored in the
    metadata (``thing_dataset_id_to_contiguous_id``), which the COCO evaluator inverts when
    writing results, so predictions carry the dataset's original ids.
    """
    data = _validate_coco_instances(json_file)
    _check_files_exist(
        [os.path.join(image_root, im["file_name"]) for im in data["images"]], "image", json_file
    )
    return load_coco_json(json_file, image_root, dataset_name)


def _coco_instances_metadata(json_file: str) -> Dict:
    """Thing classes and id map read from the JSON header, so they exist before loading."""
    cats = sorted(_validate_coco_instances(json_file)["categories"], key=lambda c: c["id"])
    return {
        "thing_classes": [c["name"] for c in cats],
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(cats)},
    }


def register_coco_instances(
    name: str, json_file: str, image_root: str, metadata: Optional[Dict] = None
) -> None:
    """Register a COCO instances dataset (evaluator_type ``coco``)."""
    meta = dict(metadata or {})
    if not meta.get("thing_classes") and os.path.isfile(json_file):
        meta.update(_coco_instances_metadata(json_file))
    DatasetCatalog.register(name, lambda: load_coco_instances(json_file, image_root, name))
    MetadataCatalog.get(name).set(
        json_file=json_file, image_root=image_root, evaluator_type="coco", **meta
    )


def _panoptic_metadata(categories: List[Dict]) -> Dict:
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


def _separated_metadata(categories: List[Dict]) -> Dict:
    """Detectron2's PanopticFPN metadata: semantic class 0 = all things, stuff 1..N."""
    meta = _panoptic_metadata(categories)
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
    data = load_json(panoptic_json)
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetFormatError(f"{panoptic_json}: top-level field '{key}' missing or not a list")
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
        _require(ann, ("image_id", "file_name", "segments_info"), panoptic_json, "annotation")
        if ann["image_id"] not in images:
            raise DatasetFormatError(
                f"{panoptic_json}: annotation {ann['file_name']} refers to image_id "
                f"{ann['image_id']}, not in 'images'"
            )
        img = images[ann["image_id"]]
        segments = []
        for s in ann["segments_info"]:
            _require(s, ("id", "category_id"), panoptic_json, f"segment of {ann['file_name']}")
            if s["category_id"] not in stuff_map and s["category_id"] not in thing_map:
                raise DatasetFormatError(
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
            raise DatasetFormatError(f"{panoptic_json}: panoptic PNG {pan_png} not found")
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
    _check_files_exist([d["file_name"] for d in dicts], "image", panoptic_json)
    _check_files_exist([d["sem_seg_file_name"] for d in dicts], "semantic PNG", panoptic_json)
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
    ``metadata`` (class names and id maps, see ``_panoptic_metadata``) is given.
    """
    meta = metadata
    if meta is None:
        meta = _panoptic_metadata(load_json(panoptic_json)["categories"]) if os.path.isfile(
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


def load_semantic(image_root: str, label_root: str) -> List[Dict]:
    """Image/label pairs matched by file stem (labels are PNGs of contiguous ids, 255 = ignore)."""
    if not os.path.isdir(label_root):
        raise DatasetFormatError(f"{label_root}: label folder not found")
    images = {os.path.splitext(f)[0]: f for f in sorted(os.listdir(image_root))}
    dicts = []
    for label in sorted(os.listdir(label_root)):
        stem = os.path.splitext(label)[0]
        if stem not in images:
            raise DatasetFormatError(f"{os.path.join(label_root, label)}: no image '{stem}.*' in {image_root}")
        dicts.append(
            {
                "file_name": os.path.join(image_root, images[stem]),
                "sem_seg_file_name": os.path.join(label_root, label),
            }
        )
    if not dicts:
        raise DatasetFormatError(f"{label_root}: no label PNGs")
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


# ---------------------------------------------------------------------------- built-ins


def _synthetic_root() -> str:
    return os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "synthetic")


def _synthetic_semantic(root: str, split: str, meta: Dict) -> List[Dict]:
    """The panoptic split minus instances: semantic labels plus the panoptic PNG, from which
    the mapper can build U-Net's border weight map."""
    pan_dicts = load_coco_panoptic(
        os.path.join(root, "annotations", f"panoptic_{split}.json"),
        os.path.join(root, "images", split),
        os.path.join(root, f"panoptic_{split}"),
        meta,
        semantic_root=os.path.join(root, f"semantic_{split}"),
    )
    keep = ("file_name", "image_id", "height", "width", "sem_seg_file_name", "pan_seg_file_name", "segments_info")
    return [{k: d[k] for k in keep} for d in pan_dicts]


def register_synthetic(root: Optional[str] = None, prefix: str = "synthetic") -> None:
    """Register the embedded synthetic splits (``datasets/prepare_synthetic.py`` writes them).

    Names: ``{prefix}_{split}`` (COCO instances), ``{prefix}_{split}_sem`` (semantic, all
    classes), ``{prefix}_{split}_panoptic`` (COCO panoptic + instances) and
    ``{prefix}_{split}_panoptic_separated`` (the same with Detectron2's PanopticFPN semantic
    convention: things = 0, stuff 1..N), split in ``train``/``val``. The root defaults to
    ``$DETECTRON2_DATASETS/synthetic`` (``datasets/``). The Cityscapes-style copy is registered
    as ``{prefix}_cityscapes_{split}_{instance_seg,sem_seg,panoptic}``.
    """
    root = root or _synthetic_root()
    register_cityscapes(os.path.join(root, "cityscapes"), prefix=f"{prefix}_cityscapes")
    pan_meta = _panoptic_metadata(CATEGORIES)
    thing_meta = {k: pan_meta[k] for k in ("thing_classes", "thing_colors", "thing_dataset_id_to_contiguous_id")}
    for split in SPLITS:
        images = os.path.join(root, "images", split)
        instances = os.path.join(root, "annotations", f"instances_{split}.json")
        register_coco_instances(f"{prefix}_{split}", instances, images, thing_meta)

        pan_json = os.path.join(root, "annotations", f"panoptic_{split}.json")
        pan_root = os.path.join(root, f"panoptic_{split}")
        sem_root = os.path.join(root, f"semantic_{split}")
        register_coco_panoptic(
            f"{prefix}_{split}_panoptic", images, pan_root, pan_json, instances, sem_root, pan_meta
        )
        register_coco_panoptic(
            f"{prefix}_{split}_panoptic_separated", images, pan_root, pan_json, instances,
            metadata=_separated_metadata(CATEGORIES),
        )

        name = f"{prefix}_{split}_sem"
        DatasetCatalog.register(name, lambda s=split: _synthetic_semantic(root, s, pan_meta))
        MetadataCatalog.get(name).set(
            image_root=images,
            sem_seg_root=sem_root,
            evaluator_type="sem_seg",
            stuff_classes=pan_meta["stuff_classes"],
            stuff_colors=pan_meta["stuff_colors"],
            ignore_label=IGNORE_LABEL,
        )


def register_from_config(cfg) -> None:
    """Register the datasets listed under ``DATASETS.SEG2`` (user data by path, no Python).

    Also registers Cityscapes from ``DATASETS.SEG2.CITYSCAPES_ROOT`` (default
    ``$DETECTRON2_DATASETS/cityscapes``) as ``cityscapes_{split}_{instance_seg,sem_seg,panoptic}``.
    Already-registered names are skipped, so calling this twice (e.g. in each worker) is safe.
    """
    register_cityscapes(cityscapes_root(cfg))

    def entries(key: str, lengths: Sequence[int]):
        for entry in getattr(cfg.DATASETS.SEG2, key):
            if isinstance(entry, str) or len(entry) not in lengths:
                raise DatasetFormatError(
                    f"DATASETS.SEG2.{key}: each entry must be a list of {lengths} items, got {entry!r}"
                )
            if entry[0] not in DatasetCatalog.list():
                yield entry

    for name, json_file, image_root in entries("COCO_INSTANCES", (3,)):
        register_coco_instances(name, json_file, image_root)
    for entry in entries("COCO_PANOPTIC", (4, 5)):
        register_coco_panoptic(*entry)
    for name, image_root, label_root, class_names in entries("SEMANTIC", (4,)):
        register_semantic(name, image_root, label_root, [c.strip() for c in class_names.split(",")])
