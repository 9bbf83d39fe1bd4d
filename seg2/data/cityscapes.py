"""Cityscapes in its standard layout: registration for the three tasks and the ground truth
Detectron2's loaders and the official scripts need (train-id labels, panoptic PNG + JSON),
generated with ``cityscapesscripts`` when missing.

Layout (``root`` = ``$DETECTRON2_DATASETS/cityscapes`` or ``DATASETS.SEG2.CITYSCAPES_ROOT``)::

    root/leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    root/gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_{labelIds,instanceIds,polygons}...
    root/gtFine/cityscapes_panoptic_{train,val}{.json,/}   (generated when missing)
"""
import contextlib
import glob
import io
import logging
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog

from ..io import InputError, read_label_png, write_png

__all__ = [
    "cityscapes_root",
    "cityscapes_split_dirs",
    "require_dir",
    "register_cityscapes",
    "ensure_train_id_labels",
    "ensure_panoptic_gt",
    "run_official",
]

logger = logging.getLogger(__name__)


def run_official(fn: Callable, *args, source: str = "", **kwargs):
    """Call an official evaluation or preparation function quietly.

    cityscapesscripts print progress to stdout and report bad input with ``sys.exit``;
    both are captured here, and an exit becomes :class:`~seg2.io.InputError` with the
    script's message (which names the file), prefixed by ``source``.
    """
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            return fn(*args, **kwargs)
    except SystemExit:
        errors = [line for line in out.getvalue().splitlines() if "ERROR" in line]
        message = errors[-1].replace("ERROR: ", "") if errors else out.getvalue()[-500:]
        raise InputError(f"{source}: {message}" if source else message) from None


def cityscapes_root(cfg=None) -> str:
    """``cfg.DATASETS.SEG2.CITYSCAPES_ROOT`` if set, else ``$DETECTRON2_DATASETS/cityscapes``
    (``datasets/cityscapes``), Detectron2's convention."""
    root = cfg.DATASETS.SEG2.CITYSCAPES_ROOT if cfg is not None else ""
    return root or os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "cityscapes")


def cityscapes_split_dirs(root: str, split: str) -> Tuple[str, str]:
    return os.path.join(root, "leftImg8bit", split), os.path.join(root, "gtFine", split)


def require_dir(path: str, what: str) -> None:
    if not os.path.isdir(path):
        raise InputError(f"{path}: Cityscapes {what} folder not found")


def ensure_train_id_labels(gt_dir: str) -> int:
    """Write ``*_gtFine_labelTrainIds.png`` next to each ``*_gtFine_labelIds.png`` lacking one.

    Mapping label ids through cityscapesscripts' ``labels`` table gives the same pixels as
    its ``createTrainIdLabelImgs`` (which redraws the polygons) without needing the polygons.

    Returns:
        the number of files written.
    """
    from cityscapesscripts.helpers.labels import labels

    lut = np.full(256, 255, dtype=np.uint8)
    for lab in labels:
        if 0 <= lab.id < 256 and 0 <= lab.trainId < 255:
            lut[lab.id] = lab.trainId
    written = 0
    for path in sorted(glob.glob(os.path.join(gt_dir, "*", "*_gtFine_labelIds.png"))):
        out = path.replace("_gtFine_labelIds.png", "_gtFine_labelTrainIds.png")
        if os.path.isfile(out):
            continue
        ids = read_label_png(path, "Cityscapes labelIds")
        write_png(lut[np.clip(ids, 0, 255).astype(np.uint8)], out)
        written += 1
    return written


def ensure_panoptic_gt(root: str, split: str) -> Tuple[str, str]:
    """Panoptic ground truth ``(json, png folder)`` under ``root/gtFine``, generated from the
    ``*_instanceIds.png`` with cityscapesscripts' ``createPanopticImgs`` when missing."""
    gt_fine = os.path.join(root, "gtFine")
    gt_json = os.path.join(gt_fine, f"cityscapes_panoptic_{split}.json")
    gt_folder = os.path.join(gt_fine, f"cityscapes_panoptic_{split}")
    if not (os.path.isfile(gt_json) and os.path.isdir(gt_folder)):
        require_dir(os.path.join(gt_fine, split), f"gtFine/{split}")
        from cityscapesscripts.preparation.createPanopticImgs import convert2panoptic

        logger.info(f"Generating Cityscapes panoptic ground truth {gt_json} ...")
        run_official(convert2panoptic, gt_fine, setNames=[split], source=gt_fine)
    return gt_json, gt_folder


# ------------------------------------------------------------------------------ registration


def _cityscapes_meta() -> Dict:
    from detectron2.data.datasets.builtin_meta import _get_builtin_metadata

    return _get_builtin_metadata("cityscapes")


def _panoptic_meta() -> Dict:
    """Detectron2's ``register_all_cityscapes_panoptic`` metadata: contiguous id = train id."""
    from detectron2.data.datasets.builtin_meta import CITYSCAPES_CATEGORIES

    names = [k["name"] for k in CITYSCAPES_CATEGORIES]
    colors = [k["color"] for k in CITYSCAPES_CATEGORIES]
    return {
        "thing_classes": names,
        "thing_colors": colors,
        "stuff_classes": names,
        "stuff_colors": colors,
        "thing_dataset_id_to_contiguous_id": {
            k["id"]: k["trainId"] for k in CITYSCAPES_CATEGORIES if k["isthing"]
        },
        "stuff_dataset_id_to_contiguous_id": {
            k["id"]: k["trainId"] for k in CITYSCAPES_CATEGORIES if not k["isthing"]
        },
    }


def _load_instances(image_dir: str, gt_dir: str) -> List[Dict]:
    from detectron2.data.datasets.cityscapes import load_cityscapes_instances

    require_dir(image_dir, "image")
    require_dir(gt_dir, "gtFine")
    # From the instanceIds PNGs (the pixels the official evaluation uses); the polygon
    # path needs shapely, which Detectron2 does not require.
    return load_cityscapes_instances(image_dir, gt_dir, from_json=False, to_polygons=True)


def _load_semantic(image_dir: str, gt_dir: str) -> List[Dict]:
    from detectron2.data.datasets.cityscapes import load_cityscapes_semantic

    require_dir(image_dir, "image")
    require_dir(gt_dir, "gtFine")
    ensure_train_id_labels(gt_dir)
    return load_cityscapes_semantic(image_dir, gt_dir)


def _load_panoptic(root: str, split: str, meta: Dict) -> List[Dict]:
    from detectron2.data.datasets.cityscapes_panoptic import load_cityscapes_panoptic

    image_dir, gt_dir = cityscapes_split_dirs(root, split)
    require_dir(image_dir, "image")
    ensure_train_id_labels(gt_dir)
    gt_json, gt_folder = ensure_panoptic_gt(root, split)
    return load_cityscapes_panoptic(image_dir, gt_folder, gt_json, meta)


def register_cityscapes(
    root: Optional[str] = None, prefix: str = "cityscapes", splits: Sequence[str] = ("train", "val")
) -> List[str]:
    """Register Cityscapes (or a tree in its layout) for the three tasks.

    Names are ``{prefix}_{split}_instance_seg`` (evaluator_type ``cityscapes_instance``),
    ``{prefix}_{split}_sem_seg`` (``cityscapes_sem_seg``, train-id labels, generated from
    label ids when missing) and ``{prefix}_{split}_panoptic`` (``cityscapes_panoptic_seg``,
    ground truth generated by cityscapesscripts when missing), with Detectron2's Cityscapes
    metadata. Nothing is read until a dataset is first loaded; names already registered are
    skipped.

    Args:
        root: the folder holding ``leftImg8bit/`` and ``gtFine/`` (default
            :func:`cityscapes_root`).
        prefix: name prefix, e.g. ``"synthetic_cityscapes"``.
        splits: splits to register.

    Returns:
        the names registered by this call.
    """
    root = root or cityscapes_root()
    names = []
    pan_meta = _panoptic_meta()
    for split in splits:
        image_dir, gt_dir = cityscapes_split_dirs(root, split)
        entries = [
            (
                f"{prefix}_{split}_instance_seg",
                lambda i=image_dir, g=gt_dir: _load_instances(i, g),
                dict(
                    image_dir=image_dir,
                    gt_dir=gt_dir,
                    evaluator_type="cityscapes_instance",
                    **_cityscapes_meta(),
                ),
            ),
            (
                f"{prefix}_{split}_sem_seg",
                lambda i=image_dir, g=gt_dir: _load_semantic(i, g),
                dict(
                    image_dir=image_dir,
                    gt_dir=gt_dir,
                    evaluator_type="cityscapes_sem_seg",
                    ignore_label=255,
                    **_cityscapes_meta(),
                ),
            ),
            (
                f"{prefix}_{split}_panoptic",
                lambda r=root, s=split: _load_panoptic(r, s, pan_meta),
                dict(
                    image_root=image_dir,
                    panoptic_root=os.path.join(root, "gtFine", f"cityscapes_panoptic_{split}"),
                    panoptic_json=os.path.join(root, "gtFine", f"cityscapes_panoptic_{split}.json"),
                    gt_dir=gt_dir,
                    evaluator_type="cityscapes_panoptic_seg",
                    ignore_label=255,
                    label_divisor=1000,
                    **pan_meta,
                ),
            ),
        ]
        for name, loader, meta in entries:
            if name in DatasetCatalog.list():
                continue
            DatasetCatalog.register(name, loader)
            MetadataCatalog.get(name).set(**meta)
            names.append(name)
    return names
