"""The embedded synthetic dataset: one set of random scenes written in every standard format
at once (COCO instances, COCO panoptic, semantic PNGs, a Cityscapes tree), byte-identical for
a given seed, in seconds on one core and without any download.

``datasets/prepare_synthetic.py`` is its command line; :func:`generate` is the API.
"""
import os
import time

import numpy as np
from PIL import Image

from . import meta
from .meta import CATEGORIES, IGNORE_LABEL, SPLITS
from .scenes import (
    MIN_SIZE,
    SHAPES,
    STUFF_IDX,
    TEXTURES,
    THING_IDX,
    area_bbox,
    make_scene,
    mask_rle,
    scene_segments,
    split_flags,
)
from .writers import (
    CityscapesWriter,
    CocoInstancesWriter,
    CocoPanopticWriter,
    SemanticWriter,
    clear_split,
)

__all__ = ["generate", "check_table", "CATEGORIES", "IGNORE_LABEL", "SPLITS"]


def check_table() -> None:
    """Fail early, naming the file and field, if the class table asks for something unknown."""
    from cityscapesscripts.helpers.labels import name2label

    where = meta.__file__
    for i, c in enumerate(CATEGORIES):
        for key in ("id", "name", "isthing", "color", "cityscapes"):
            if key not in c:
                raise ValueError(f"{where}: CATEGORIES[{i}] lacks field '{key}'")
        known = SHAPES if c["isthing"] else TEXTURES
        if c["name"] not in known:
            raise ValueError(
                f"{where}: CATEGORIES[{i}].name = {c['name']!r} (isthing={c['isthing']}) has "
                f"no generator; known: {known}"
            )
        if c["cityscapes"] not in name2label:
            raise ValueError(
                f"{where}: CATEGORIES[{i}].cityscapes = {c['cityscapes']!r} is not a Cityscapes "
                "label name (cityscapesscripts.helpers.labels)"
            )
    if not THING_IDX or not STUFF_IDX:
        raise ValueError(f"{where}: CATEGORIES needs at least one thing and one stuff class")
    ids = [c["id"] for c in CATEGORIES]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{where}: CATEGORIES ids are not unique: {ids}")


def _generate_split(out: str, split: str, split_idx: int, seed: int, num: int, size: int) -> str:
    start = time.perf_counter()
    clear_split(out, split)
    image_dir = os.path.join(out, "images", split)
    for d in (image_dir, os.path.join(out, "annotations")):
        os.makedirs(d, exist_ok=True)
    writers = [
        CocoInstancesWriter(out, split),
        CocoPanopticWriter(out, split),
        SemanticWriter(out, split),
        CityscapesWriter(out, split),
    ]
    flags = split_flags(np.random.default_rng([seed, split_idx]), num)
    images = []
    n_void = n_segments = 0
    for idx in range(num):
        # One generator per image: image i does not depend on how many images precede it.
        rng = np.random.default_rng([seed, split_idx, idx])
        scene = make_scene(rng, size, flags[idx])
        stem = f"{idx:06d}"
        Image.fromarray(scene.image).save(os.path.join(image_dir, stem + ".png"))
        images.append({"id": idx, "file_name": stem + ".png", "height": size, "width": size})
        pan, segments, kept = scene_segments(scene, rng)
        n_void += int((pan == 0).any())
        n_segments += len(segments)
        for seg in segments:
            area, bbox = area_bbox(mask_rle(seg["mask"]))
            seg.update(area=area, bbox=[int(v) for v in bbox])
        for w in writers:
            w.add(idx, stem, scene, pan, segments, kept)
    for w in writers:
        w.finish(images)
    inst = writers[0]
    return (
        f"{split}: {num} images, {len(inst.annotations)} instances ({inst.n_crowd} crowd), "
        f"{n_segments} panoptic segments, "
        f"{n_void} images with void -> {out} ({time.perf_counter() - start:.1f} s)"
    )


def generate(
    output_dir: str, seed: int = 0, num_train: int = 200, num_val: int = 300, size: int = 128
) -> None:
    """Write the synthetic dataset under ``output_dir``; byte-identical for a given seed.

    Args:
        output_dir: root folder; the split folders in it are replaced, nothing else is touched.
        seed: seed of every random choice (``numpy.random.Generator``).
        num_train, num_val: number of images per split (>= 0).
        size: side of the square images in px (>= 64); object sizes scale with it.
    """
    for name, value in (("num_train", num_train), ("num_val", num_val), ("seed", seed)):
        if not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"prepare_synthetic: {name} must be an integer >= 0, got {value!r}")
    if not isinstance(size, (int, np.integer)) or size < MIN_SIZE:
        raise ValueError(f"prepare_synthetic: size must be an integer >= {MIN_SIZE}, got {size!r}")
    check_table()
    counts = dict(zip(SPLITS, (num_train, num_val)))
    for split_idx, split in enumerate(SPLITS):
        print(
            _generate_split(output_dir, split, split_idx, int(seed), int(counts[split]), int(size))
        )
