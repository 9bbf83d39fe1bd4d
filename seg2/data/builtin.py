"""The built-in synthetic splits (written by ``datasets/prepare_synthetic.py``), registered
lazily on import: nothing is read until first use."""
import os
from typing import Dict, List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog

from .cityscapes import register_cityscapes
from .coco import register_coco_instances
from .coco_panoptic import (
    PANOPTIC_RECORD_KEYS,
    load_coco_panoptic,
    panoptic_metadata,
    register_coco_panoptic,
    separated_metadata,
)
from .synthetic.meta import CATEGORIES, IGNORE_LABEL, SPLITS

__all__ = ["register_synthetic"]


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
    return [{k: d[k] for k in PANOPTIC_RECORD_KEYS} for d in pan_dicts]


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
    pan_meta = panoptic_metadata(CATEGORIES)
    thing_keys = ("thing_classes", "thing_colors", "thing_dataset_id_to_contiguous_id")
    thing_meta = {k: pan_meta[k] for k in thing_keys}
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
            metadata=separated_metadata(CATEGORIES),
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
