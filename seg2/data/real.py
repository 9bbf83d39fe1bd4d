"""Real annotated data that PyPI packages ship, converted into seg2's standard formats.

``stardist==0.9.2`` ships one 512x512 fluorescence image from the 2018 Data Science Bowl
(Caicedo et al., Nature Methods 2019) with its instance mask: 125 nuclei, 42 of them
touching another (8-neighbourhood). Only ``tifffile`` is needed to read it: the files are
located with :func:`importlib.util.find_spec`, which does not execute ``stardist``'s
``__init__`` (and so none of its heavy dependencies). Install with
``pip install --no-deps stardist==0.9.2 tifffile==2024.8.30``.

:func:`prepare_nuclei` writes the image once into a cache folder as the files seg2 reads
for any dataset, and :func:`register_nuclei` registers them, so the nuclei go through the
normal dataset path (loader, ``Seg2DatasetMapper``, evaluators) with no special case in
model code. The split is by rows: the **top half (rows 0-255) is ``train``, the bottom
half (rows 256-511) is ``val``**; a nucleus cut by the split line keeps only its part in
each half. Rows rather than columns because both halves then hold touching nuclei to learn
and score separation on (top: 64 nuclei, 17 touching; bottom: 67 nuclei, 26 touching;
a left/right split leaves only 11 touching nuclei on the right).

Touching nuclei in the mask share a boundary with no background between them, so a
semantic target of ``mask > 0`` merges them and no semantic model can learn to separate
them. With ``separate_touching=True`` (default) the conversion does what the U-Net paper's
data has (Ronneberger et al. 2015, Fig. 3): a one-pixel background line between touching
nuclei. Of two 8-adjacent pixels of different nuclei, the one with the smaller mask id
becomes background, which leaves no two nuclei 8-adjacent; those pixels are background in
the semantic *and* panoptic PNGs, so the mapper's U-Net weight map puts its border weight
on them. ``separate_touching=False`` keeps ``semantic == (mask > 0)`` exactly.
"""

import hashlib
import importlib.util
import json
import logging
import os
from typing import Dict, List, Optional, Tuple

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from scipy import ndimage

from ..io import InputError, write_json, write_png
from ..structures.instances import separation_lines, touching_instances  # noqa: F401
from ..structures.panoptic import id2rgb
from .coco_panoptic import PANOPTIC_RECORD_KEYS
from .datasets import load_coco_panoptic
from .synthetic.meta import IGNORE_LABEL

__all__ = [
    "NUCLEI_CLASSES",
    "NUCLEI_SPLITS",
    "stardist_nuclei_files",
    "read_stardist_nuclei",
    "touching_instances",
    "separation_lines",
    "prepare_nuclei",
    "load_nuclei",
    "register_nuclei",
    "default_nuclei_cache",
]

logger = logging.getLogger(__name__)

NUCLEI_CLASSES = ["background", "nucleus"]
# COCO panoptic categories: dataset id -> contiguous id = semantic label (background 0).
_CATEGORIES = [
    {"id": 1, "name": "background", "isthing": 0, "color": [0, 0, 0]},
    {"id": 2, "name": "nucleus", "isthing": 1, "color": [255, 96, 64]},
]
_META = {
    "stuff_dataset_id_to_contiguous_id": {1: 0, 2: 1},
    "thing_dataset_id_to_contiguous_id": {2: 1},
}
# Image rows of each split (the source image is 512 x 512).
NUCLEI_SPLITS: Dict[str, Tuple[int, int]] = {"train": (0, 256), "val": (256, 512)}
# Bump when the conversion changes, so existing caches are rebuilt.
_CACHE_VERSION = 1
_STARDIST_FILES = ("data/images/img2d.tif", "data/images/mask2d.tif")
_INSTALL_HINT = "pip install --no-deps stardist==0.9.2 tifffile==2024.8.30"


def default_nuclei_cache() -> str:
    """``$DETECTRON2_DATASETS/cache/nuclei`` (``datasets/cache/nuclei`` by default)."""
    return os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "cache", "nuclei")


def stardist_nuclei_files() -> Tuple[str, str]:
    """Paths of stardist's 2D nuclei image and instance mask (TIFF), found without
    importing stardist; FileNotFoundError with the install line if absent."""
    spec = importlib.util.find_spec("stardist")
    roots = list(spec.submodule_search_locations or []) if spec else []
    for root in roots:
        paths = tuple(os.path.join(root, f) for f in _STARDIST_FILES)
        if all(os.path.isfile(p) for p in paths):
            return paths
    raise FileNotFoundError(
        f"stardist's nuclei test image ({', '.join(_STARDIST_FILES)}) is not installed "
        f"(searched {roots or 'no stardist package'}); install it with: {_INSTALL_HINT}"
    )


def read_stardist_nuclei() -> Tuple[np.ndarray, np.ndarray]:
    """The image and instance mask, as (512, 512) uint16 and (512, 512) int32 (0 = none)."""
    try:
        import tifffile
    except ImportError as e:
        raise ImportError(f"reading stardist's nuclei data needs tifffile: {_INSTALL_HINT}") from e
    img_path, mask_path = stardist_nuclei_files()
    image, mask = tifffile.imread(img_path), tifffile.imread(mask_path)
    if image.ndim != 2 or mask.shape != image.shape:
        raise InputError(
            f"{img_path}, {mask_path}: expected one 2D image and a mask of the same shape, "
            f"got {image.shape} and {mask.shape}"
        )
    return image, mask.astype(np.int32)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    """Linear min-max stretch of the whole image (one mapping for both halves)."""
    image = image.astype(np.float64)
    lo, hi = float(image.min()), float(image.max())
    scaled = (image - lo) * (255.0 / max(hi - lo, 1e-12))
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def cache_is_current(manifest_path: str, manifest: Dict, files: List[str]) -> bool:
    """True when every file exists and the stored manifest equals ``manifest``."""
    if not (os.path.isfile(manifest_path) and all(os.path.isfile(p) for p in files)):
        return False
    with open(manifest_path) as f:
        try:
            return json.load(f) == manifest
        except json.JSONDecodeError:
            return False


def _segments(pan: np.ndarray, background_id: int) -> List[Dict]:
    """COCO panoptic ``segments_info`` (dataset category ids) of a segment-id map."""
    segments = []
    objects = ndimage.find_objects(pan)
    for seg_id in np.unique(pan):
        if seg_id == 0:
            continue
        box = objects[seg_id - 1]
        segments.append(
            {
                "id": int(seg_id),
                "category_id": 1 if seg_id == background_id else 2,
                "iscrowd": 0,
                "area": int((pan[box] == seg_id).sum()),
                "bbox": [
                    box[1].start,
                    box[0].start,
                    box[1].stop - box[1].start,
                    box[0].stop - box[0].start,
                ],
            }
        )
    return segments


def _source_digest(paths: Tuple[str, ...]) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:16]


def prepare_nuclei(cache_dir: Optional[str] = None, separate_touching: bool = True) -> Dict:
    """Convert stardist's nuclei image into seg2's formats under ``cache_dir`` (once).

    Written per split ``s`` (see the module doc for the split and the separation lines):

    * ``images/nuclei_<s>.png``: 8-bit image, gray replicated to 3 channels.
    * ``semantic/nuclei_<s>.png``: uint8 labels, 0 background, 1 nucleus (255 = ignore
      is valid but unused: every pixel is annotated).
    * ``panoptic/nuclei_<s>.png`` + ``annotations/panoptic_<s>.json``: COCO panoptic, each
      nucleus a thing segment whose id is its id in the source mask, the background one
      stuff segment (id = largest mask id + 1).
    * ``instances/nuclei_<s>.npy``: the source mask of the half, without separation lines
      (int32, 0 = none), for object-level scoring.

    The cache is reused while its ``manifest.json`` matches the source files and options.

    Args:
        cache_dir: output folder; default :func:`default_nuclei_cache`.
        separate_touching: draw one-pixel background lines between touching nuclei.

    Returns:
        ``{"root", "image_root", "semantic_root", "panoptic_root", "train": {...},
        "val": {...}}``; each split holds the paths ``image``, ``sem_seg``, ``pan_seg``,
        ``panoptic_json``, ``instances``.
    """
    root = cache_dir or default_nuclei_cache()
    dirs = {
        k: os.path.join(root, k)
        for k in ("images", "semantic", "panoptic", "annotations", "instances")
    }
    paths: Dict = {
        "root": root,
        "image_root": dirs["images"],
        "semantic_root": dirs["semantic"],
        "panoptic_root": dirs["panoptic"],
    }
    for split in NUCLEI_SPLITS:
        stem = f"nuclei_{split}"
        paths[split] = {
            "image": os.path.join(dirs["images"], stem + ".png"),
            "sem_seg": os.path.join(dirs["semantic"], stem + ".png"),
            "pan_seg": os.path.join(dirs["panoptic"], stem + ".png"),
            "panoptic_json": os.path.join(dirs["annotations"], f"panoptic_{split}.json"),
            "instances": os.path.join(dirs["instances"], stem + ".npy"),
        }
    sources = stardist_nuclei_files()
    manifest = {
        "version": _CACHE_VERSION,
        "source": "stardist==0.9.2 " + " ".join(_STARDIST_FILES),
        "source_sha256": _source_digest(sources),
        "separate_touching": bool(separate_touching),
        "splits": {k: list(v) for k, v in NUCLEI_SPLITS.items()},
    }
    manifest_path = os.path.join(root, "manifest.json")
    files = [p for s in NUCLEI_SPLITS for p in paths[s].values()]
    if cache_is_current(manifest_path, manifest, files):
        return paths

    logger.info(f"Converting stardist's nuclei image into {root}")
    for d in dirs.values():
        os.makedirs(d, exist_ok=True)
    image, mask = read_stardist_nuclei()
    if image.shape[0] < max(stop for _, stop in NUCLEI_SPLITS.values()):
        raise InputError(f"{sources[0]}: expected 512 rows, got shape {image.shape}")
    gray = _to_uint8(image)
    for image_id, (split, (start, stop)) in enumerate(NUCLEI_SPLITS.items(), start=1):
        p = paths[split]
        inst = np.ascontiguousarray(mask[start:stop])
        kept = inst.copy()
        if separate_touching:
            kept[separation_lines(inst)] = 0
        background_id = int(mask.max()) + 1
        pan = np.where(kept > 0, kept, background_id)
        write_png(np.repeat(gray[start:stop, :, None], 3, axis=2), p["image"])
        write_png((kept > 0).astype(np.uint8), p["sem_seg"])
        write_png(id2rgb(pan), p["pan_seg"])
        np.save(p["instances"], inst)
        h, w = inst.shape
        name = os.path.basename(p["image"])
        panoptic = {
            "info": {"description": f"stardist 2D nuclei (DSB 2018), rows {start}-{stop - 1}"},
            "images": [{"id": image_id, "file_name": name, "height": h, "width": w}],
            "annotations": [
                {
                    "image_id": image_id,
                    "file_name": name,
                    "segments_info": _segments(pan, background_id),
                }
            ],
            "categories": _CATEGORIES,
        }
        write_json(panoptic, p["panoptic_json"], indent=None)
    write_json(manifest, manifest_path, indent=2)
    return paths


def load_nuclei(
    split: str, cache_dir: Optional[str] = None, separate_touching: bool = True
) -> List[Dict]:
    """Detectron2 dicts of one split (converting on first use), as seg2's semantic
    datasets have them: ``file_name``, ``image_id``, ``height``, ``width``,
    ``sem_seg_file_name``, ``pan_seg_file_name`` and ``segments_info`` (contiguous
    ``category_id``, ``isthing``), so ``INPUT.SEG2.WEIGHT_MAP`` can build U-Net's weights.

    The training split is a single image: Detectron2's infinite ``TrainingSampler`` repeats
    it and ``INPUT.CROP`` draws a new random crop each time.
    """
    if split not in NUCLEI_SPLITS:
        raise KeyError(f"nuclei split must be one of {list(NUCLEI_SPLITS)}, got {split!r}")
    paths = prepare_nuclei(cache_dir, separate_touching)
    dicts = load_coco_panoptic(
        paths[split]["panoptic_json"],
        paths["image_root"],
        paths["panoptic_root"],
        _META,
        semantic_root=paths["semantic_root"],
    )
    return [{k: d[k] for k in PANOPTIC_RECORD_KEYS} for d in dicts]


def register_nuclei(
    cache_dir: Optional[str] = None, separate_touching: bool = True, prefix: str = "nuclei"
) -> None:
    """Register ``{prefix}_train_sem`` and ``{prefix}_val_sem`` (evaluator_type ``sem_seg``,
    classes ``["background", "nucleus"]``).

    Cheap: nothing is read or converted until a dataset is first loaded. Names already
    registered are left alone, so calling it again is safe.
    """
    root = cache_dir or default_nuclei_cache()
    for split in NUCLEI_SPLITS:
        name = f"{prefix}_{split}_sem"
        if name in DatasetCatalog.list():
            continue
        DatasetCatalog.register(name, lambda s=split: load_nuclei(s, root, separate_touching))
        MetadataCatalog.get(name).set(
            image_root=os.path.join(root, "images"),
            sem_seg_root=os.path.join(root, "semantic"),
            panoptic_root=os.path.join(root, "panoptic"),
            instances_file=os.path.join(root, "instances", f"nuclei_{split}.npy"),
            evaluator_type="sem_seg",
            stuff_classes=list(NUCLEI_CLASSES),
            stuff_colors=[c["color"] for c in _CATEGORIES],
            ignore_label=IGNORE_LABEL,
            separate_touching=bool(separate_touching),
        )
