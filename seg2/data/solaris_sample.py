"""The building footprints that ``solaris==0.4.0`` ships: a real COCO export of aerial tiles.

``solaris/data/coco_sample_3.json`` annotates 100 tiles of 90x90 pixels (single-band uint16
GeoTIFFs in ``solaris/data/rastertile_test_expected/``, values ~100-2500) with 89 building
polygons of one category (id 1, named "other" by the export). It is messy the way real
exports are, which is why it is here: every polygon is written as one flat list of numbers
instead of a list of polygons, a few boxes differ from their polygon's extent, one polygon
is a sub-pixel sliver, and PIL cannot decode the TIFFs (Detectron2's reader would saturate
them to 255 anyway). It goes through seg2's normal path: the validation pass notes each of
these with a count, the TIFFs are read with tifffile and scaled to 8 bits by
``INPUT.SEG2.BIT_DEPTH`` (default per-image min-max), the flat polygons are read as one
polygon each.

Registered as ``solaris_buildings_train`` (80 images) and ``solaris_buildings_val`` (20: the
images whose id is a multiple of 5), evaluator ``coco``. The split files are filtered copies
of the export (annotations untouched) written once under
``$DETECTRON2_DATASETS/cache/solaris`` and rebuilt when the export's content changes; the
images are read in place. Files are found with :func:`importlib.util.find_spec`, so no
solaris code runs. Install with ``pip install --no-deps solaris==0.4.0``.
"""

import hashlib
import importlib.util
import logging
import os
from typing import Dict, List, Optional, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..io import read_json, write_json
from .coco import load_coco_instances
from .real import cache_is_current

__all__ = [
    "SOLARIS_SPLITS",
    "solaris_files",
    "solaris_split",
    "prepare_solaris_sample",
    "register_solaris_sample",
]

logger = logging.getLogger(__name__)

_INSTALL_HINT = "pip install --no-deps solaris==0.4.0"
_JSON = "data/coco_sample_3.json"
_IMAGES = "data/rastertile_test_expected"
_CACHE_VERSION = 1
SOLARIS_SPLITS = ("train", "val")


def solaris_files() -> Tuple[str, str]:
    """(COCO JSON, image folder) inside the installed solaris package, found without
    importing it; FileNotFoundError with the install line if absent."""
    spec = importlib.util.find_spec("solaris")
    roots = list(spec.submodule_search_locations or []) if spec else []
    for root in roots:
        json_file, images = os.path.join(root, _JSON), os.path.join(root, _IMAGES)
        if os.path.isfile(json_file) and os.path.isdir(images):
            return json_file, images
    raise FileNotFoundError(
        f"solaris' COCO sample ({_JSON}, {_IMAGES}) is not installed (searched "
        f"{roots or 'no solaris package'}); install it with: {_INSTALL_HINT}"
    )


def solaris_split(image_id: int) -> str:
    """``val`` for image ids that are multiples of 5 (20 of the 100), else ``train``."""
    return "val" if image_id % 5 == 0 else "train"


def _default_cache() -> str:
    return os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "cache", "solaris")


def prepare_solaris_sample(cache_dir: Optional[str] = None) -> Dict[str, str]:
    """Write ``instances_{train,val}.json`` (the export filtered by image, nothing else
    changed) under ``cache_dir`` unless its manifest matches the export's content.

    Returns:
        ``{"image_root", "train", "val"}`` (the split JSON paths).
    """
    root = cache_dir or _default_cache()
    json_file, image_root = solaris_files()
    with open(json_file, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:16]
    paths = {s: os.path.join(root, f"instances_{s}.json") for s in SOLARIS_SPLITS}
    manifest = {"version": _CACHE_VERSION, "source": f"solaris==0.4.0 {_JSON}", "sha256": digest}
    manifest_path = os.path.join(root, "manifest.json")
    if not cache_is_current(manifest_path, manifest, list(paths.values())):
        logger.info(f"Splitting solaris' COCO sample into {root}")
        data = read_json(json_file)
        for split, path in paths.items():
            ids = {im["id"] for im in data["images"] if solaris_split(im["id"]) == split}
            write_json(
                dict(
                    data,
                    images=[im for im in data["images"] if im["id"] in ids],
                    annotations=[a for a in data["annotations"] if a["image_id"] in ids],
                ),
                path,
                indent=None,
            )
        write_json(manifest, manifest_path)
    return dict(paths, image_root=image_root)


def register_solaris_sample(
    cache_dir: Optional[str] = None, prefix: str = "solaris_buildings"
) -> None:
    """Register ``{prefix}_train`` and ``{prefix}_val``; nothing is read until first use,
    and names already registered are left alone."""
    root = cache_dir or _default_cache()
    registered = DatasetCatalog.list()
    for split in SOLARIS_SPLITS:
        name = f"{prefix}_{split}"
        if name in registered:
            continue

        def load(split=split, name=name) -> List[Dict]:
            p = prepare_solaris_sample(root)
            return load_coco_instances(p[split], p["image_root"], name)

        DatasetCatalog.register(name, load)
        MetadataCatalog.get(name).set(
            json_file=os.path.join(root, f"instances_{split}.json"),
            evaluator_type="coco",
            thing_classes=["other"],
            thing_dataset_id_to_contiguous_id={1: 0},
        )
