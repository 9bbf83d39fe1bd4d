"""COCO instances by path: validated up front, then Detectron2's own ``load_coco_json``."""
import os
from typing import Dict, List, Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from ..io import InputError, read_json

__all__ = ["load_coco_instances", "register_coco_instances", "require_fields", "check_files_exist"]


def require_fields(obj: Dict, keys: Sequence[str], path: str, where: str) -> None:
    missing = [k for k in keys if k not in obj]
    if missing:
        raise InputError(f"{path}: {where} lacks field(s) {missing}")


def check_files_exist(paths: List[str], what: str, source: str) -> None:
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise InputError(
            f"{source}: {len(missing)} {what} file(s) not found, e.g. {missing[:3]}"
        )


def _validate_coco_instances(path: str) -> Dict:
    data = read_json(path)
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise InputError(f"{path}: top-level field '{key}' missing or not a list")
    for c in data["categories"]:
        require_fields(c, ("id", "name"), path, f"category {c}")
    cat_ids = {c["id"] for c in data["categories"]}
    img_ids = set()
    for img in data["images"]:
        require_fields(img, ("id", "file_name", "height", "width"), path, f"image {img.get('id')}")
        img_ids.add(img["id"])
    for a in data["annotations"]:
        require_fields(a, ("id", "image_id", "category_id", "bbox"), path, f"annotation {a.get('id')}")
        if a["category_id"] not in cat_ids:
            raise InputError(
                f"{path}: annotation {a['id']} has category_id {a['category_id']}, "
                f"not among the categories {sorted(cat_ids)}"
            )
        if a["image_id"] not in img_ids:
            raise InputError(
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
    check_files_exist(
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
