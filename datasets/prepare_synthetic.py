#!/usr/bin/env python
"""Generate the embedded synthetic segmentation dataset (no download, seconds on one core).

Each scene is a stuff background of 2-4 Voronoi cells, each a *texture* class (stripes,
checker, dots, smooth) with random colours, so a model has to learn texture rather than
colour; on top lie 3-8 shapes (circle, square, triangle) with random colours, so it has to
learn shape. Scenes deliberately contain the cases that break naive pipelines: touching and
overlapping instances of one class, a crowd region (``iscrowd=1``) and unlabeled void blobs.

One scene is written in four formats that must agree pixel for pixel: COCO instances,
COCO panoptic, semantic PNGs and a Cityscapes-style tree (see ``datasets/README.md``).

Usage::

    python datasets/prepare_synthetic.py --output datasets/synthetic [--seed 0]
        [--num-train 200] [--num-val 50] [--size 128]
"""
import argparse
import contextlib
import importlib.util
import io
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import pycocotools.mask as mask_util
from PIL import Image

from cityscapesscripts.helpers.labels import name2label
from cityscapesscripts.preparation.createPanopticImgs import convert2panoptic


def _load_meta():
    """``seg2.data.synthetic_meta``, the class table shared with the dataset registration.

    Loaded from this checkout by path first: importing it through ``seg2`` would import
    torch and Detectron2 (seconds) for a table of seven dicts.
    """
    path = os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        "seg2",
        "data",
        "synthetic_meta.py",
    )
    if os.path.isfile(path):
        spec = importlib.util.spec_from_file_location("_seg2_synthetic_meta", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    import seg2.data.synthetic_meta

    return seg2.data.synthetic_meta


_meta = _load_meta()
CATEGORIES, CITY, IGNORE_LABEL, SPLITS = (
    _meta.CATEGORIES,
    _meta.CITY,
    _meta.IGNORE_LABEL,
    _meta.SPLITS,
)

__all__ = ["generate", "main"]

THING_IDX = [i for i, c in enumerate(CATEGORIES) if c["isthing"]]
STUFF_IDX = [i for i, c in enumerate(CATEGORIES) if not c["isthing"]]
SHAPES = ("circle", "square", "triangle")
TEXTURES = ("stripes", "checker", "dots", "smooth")

# Objects whose visible part is smaller than this are not annotated; their pixels become void.
MIN_AREA = 20
# Outer size range (px) of ordinary objects and of the small members of a crowd cluster at
# the reference image size; object geometry scales with the image so that smaller images
# still fit every case (textures keep their pixel scale).
REF_SIZE = 128
OBJ_SIZE = (14, 40)
CROWD_SIZE = (6, 10)
# Per-image probabilities; splits of >= 4 images are forced to contain each case at least once.
P_CROWD, P_VOID, P_TOUCH, P_OVERLAP = 0.2, 1 / 3, 0.5, 0.5
MIN_SIZE = 64


@dataclass
class _Object:
    """One thing instance, or one crowd region when ``iscrowd``."""

    cat: int  # contiguous index into CATEGORIES
    polygons: List[List[float]]  # COCO polygons (flat x, y lists), all in the image
    full: np.ndarray  # (H, W) bool: the rasterised polygons, i.e. the amodal mask
    iscrowd: int = 0
    visible: Optional[np.ndarray] = None  # (H, W) bool, set after occlusion
    kept: bool = True  # False when the visible area fell below MIN_AREA


@dataclass
class _Scene:
    image: np.ndarray  # (H, W, 3) uint8
    regions: np.ndarray  # (H, W) int: Voronoi cell index
    region_cats: List[int]  # contiguous stuff class of each cell
    void: np.ndarray  # (H, W) bool: the void blob (before things are drawn over it)
    objects: List[_Object] = field(default_factory=list)  # in drawing (z) order


# ------------------------------------------------------------------------------ geometry


def _rasterize(polygons: List[List[float]], size: int) -> np.ndarray:
    """Polygons -> (size, size) bool mask with pycocotools, exactly as ``COCO.annToMask`` does."""
    rle = mask_util.merge(mask_util.frPyObjects(polygons, size, size))
    return mask_util.decode(rle).astype(bool)


def _shape_polygon(shape: str, cx: float, cy: float, extent: float, angle: float) -> List[float]:
    """Vertices of a shape of outer size ``extent`` px centred at (cx, cy), flat [x0, y0, ...].

    circle: 32-gon of diameter ``extent``; square: side ``extent``; triangle: equilateral
    with side ``extent``. Coordinates are rounded to 1/100 px so JSON round-trips them exactly.
    """
    if shape == "circle":
        radius, n, angle = extent / 2, 32, 0.0
    elif shape == "square":
        radius, n = extent / np.sqrt(2), 4
    elif shape == "triangle":
        radius, n = extent / np.sqrt(3), 3
    else:
        raise ValueError(f"unknown shape {shape!r}")
    t = angle + 2 * np.pi * np.arange(n) / n
    xy = np.stack([cx + radius * np.cos(t), cy + radius * np.sin(t)], axis=1)
    return [round(float(v), 2) for v in xy.reshape(-1)]


def _circumradius(shape: str, extent: float) -> float:
    return extent / {"circle": 2, "square": np.sqrt(2), "triangle": np.sqrt(3)}[shape]


def _random_centre(rng: np.random.Generator, radius: float, size: int) -> Tuple[float, float]:
    lo, hi = radius + 1, size - radius - 1
    return float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi))


def _make_object(rng, cat: int, size: int, centre=None, extent=None) -> _Object:
    shape = CATEGORIES[cat]["name"]
    extent = float(extent if extent is not None else rng.uniform(*OBJ_SIZE) * size / REF_SIZE)
    angle = float(rng.uniform(0, 2 * np.pi))
    cx, cy = (
        centre if centre is not None else _random_centre(rng, _circumradius(shape, extent), size)
    )
    poly = _shape_polygon(shape, cx, cy, extent, angle)
    return _Object(cat, [poly], _rasterize([poly], size))


def _inside(cx: float, cy: float, radius: float, size: int) -> bool:
    return radius + 1 <= cx <= size - radius - 1 and radius + 1 <= cy <= size - radius - 1


def _union(objects: Sequence[_Object], size: int) -> np.ndarray:
    out = np.zeros((size, size), bool)
    for obj in objects:
        out |= obj.full
    return out


def _dilate4(mask: np.ndarray) -> np.ndarray:
    """Mask grown by one pixel along rows and columns (4-neighbourhood)."""
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def _touching_pair(rng, size: int, avoid: np.ndarray, tries: int = 100) -> List[_Object]:
    """Two same-class objects whose masks are disjoint but 4-adjacent, both clear of ``avoid``.

    B starts clear of A in a direction pointing roughly into the image and is slid towards A
    (bisection on the centre distance) until one more step would make the masks overlap.
    """
    for _ in range(tries):
        cat = int(rng.choice(THING_IDX))
        shape = CATEGORIES[cat]["name"]
        ext_a, ext_b = rng.uniform(16, OBJ_SIZE[1] - 8, size=2) * size / REF_SIZE
        r_a, r_b = _circumradius(shape, ext_a), _circumradius(shape, ext_b)
        a = _make_object(rng, cat, size, extent=ext_a)
        if (a.full & avoid).any():
            continue
        ax, ay = float(np.mean(a.polygons[0][0::2])), float(np.mean(a.polygons[0][1::2]))
        theta = np.arctan2(size / 2 - ay, size / 2 - ax) + rng.uniform(-np.pi / 2, np.pi / 2)
        ang_b = rng.uniform(0, 2 * np.pi)
        direction = np.array([np.cos(theta), np.sin(theta)])

        def place(d: float) -> Tuple[List[float], np.ndarray]:
            cx, cy = ax + d * direction[0], ay + d * direction[1]
            poly = _shape_polygon(shape, cx, cy, ext_b, 0.0 if shape == "circle" else ang_b)
            return poly, _rasterize([poly], size)

        lo, hi = 0.0, r_a + r_b + 2  # overlapping at lo, disjoint at hi
        while hi - lo > 0.02:
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if (place(mid)[1] & a.full).any() else (lo, mid)
        cx, cy = ax + hi * direction[0], ay + hi * direction[1]
        if not _inside(cx, cy, r_b, size):
            continue
        poly, full = place(hi)
        if (full & a.full).any() or not (full & _dilate4(a.full)).any() or (full & avoid).any():
            continue
        return [a, _Object(cat, [poly], full)]
    return []


def _overlapping_pair(rng, size: int, tries: int = 30) -> List[_Object]:
    """Two same-class objects, B drawn over part (not all) of A; A keeps >= 2 MIN_AREA px."""
    for _ in range(tries):
        cat = int(rng.choice(THING_IDX))
        shape = CATEGORIES[cat]["name"]
        ext_a, ext_b = rng.uniform(20, OBJ_SIZE[1], size=2) * size / REF_SIZE
        a = _make_object(rng, cat, size, extent=ext_a)
        ax, ay = float(np.mean(a.polygons[0][0::2])), float(np.mean(a.polygons[0][1::2]))
        d = rng.uniform(0.35, 0.7) * (_circumradius(shape, ext_a) + _circumradius(shape, ext_b))
        theta = rng.uniform(0, 2 * np.pi)
        cx, cy = ax + d * np.cos(theta), ay + d * np.sin(theta)
        if not _inside(cx, cy, _circumradius(shape, ext_b), size):
            continue
        b = _make_object(rng, cat, size, centre=(cx, cy), extent=ext_b)
        hidden = (a.full & b.full).sum()
        if hidden > 0 and (a.full & ~b.full).sum() >= 2 * MIN_AREA:
            return [a, b]
    return []


def _crowd(rng, size: int, avoid: np.ndarray, tries: int = 30) -> List[_Object]:
    """4-8 small same-class shapes in a cluster, annotated as one ``iscrowd=1`` region.

    The cluster keeps clear of ``avoid`` and covers at least 2 MIN_AREA px.
    """
    scale = size / REF_SIZE
    for _ in range(tries):
        cat = int(rng.choice(THING_IDX))
        shape = CATEGORIES[cat]["name"]
        centre = _random_centre(rng, 16 * scale, size)
        polys = []
        for _ in range(int(rng.integers(4, 9))):
            extent = float(rng.uniform(*CROWD_SIZE) * scale)
            offset = rng.uniform(-10, 10, size=2) * scale
            angle = float(rng.uniform(0, 2 * np.pi))
            polys.append(
                _shape_polygon(shape, centre[0] + offset[0], centre[1] + offset[1], extent, angle)
            )
        full = _rasterize(polys, size)
        if full.sum() >= 2 * MIN_AREA and not (full & avoid).any():
            return [_Object(cat, polys, full, iscrowd=1)]
    return []


def _void_blob(rng, size: int, things: np.ndarray, tries: int = 30) -> np.ndarray:
    """(H, W) bool union of 1-3 discs, at least half of it left uncovered by ``things``."""
    scale = size / REF_SIZE
    y, x = np.mgrid[0:size, 0:size]
    for _ in range(tries):
        void = np.zeros((size, size), bool)
        cx, cy = _random_centre(rng, 12 * scale, size)
        for _ in range(int(rng.integers(1, 4))):
            ox, oy = rng.uniform(-6, 6, size=2) * scale
            radius = rng.uniform(4, 9) * scale
            void |= (x - cx - ox) ** 2 + (y - cy - oy) ** 2 <= radius**2
        if (void & ~things).sum() >= 0.5 * void.sum():
            break
    return void


# ------------------------------------------------------------------------------ textures


def _colour_pair(rng, min_dist: float, max_dist: float = 442.0) -> Tuple[np.ndarray, np.ndarray]:
    while True:
        c1, c2 = rng.integers(0, 256, size=(2, 3)).astype(np.float32)
        if min_dist <= np.linalg.norm(c1 - c2) <= max_dist:
            return c1, c2


def _texture(rng, name: str, size: int) -> np.ndarray:
    """A full (size, size, 3) float texture of class ``name`` with random colours and geometry."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    theta = rng.uniform(0, np.pi)
    u = x * np.cos(theta) + y * np.sin(theta)
    v = -x * np.sin(theta) + y * np.cos(theta)
    if name == "smooth":  # gentle gradient: close colours, no high frequencies
        c1, c2 = _colour_pair(rng, 30, 110)
        t = (u - u.min()) / max(float(u.max() - u.min()), 1.0)
    else:
        c1, c2 = _colour_pair(rng, 90)
        if name == "stripes":
            period = rng.uniform(5, 12)
            t = ((u / period + rng.uniform()) % 1.0 < 0.5).astype(np.float32)
        elif name == "checker":
            cell = rng.uniform(4, 10)
            t = (np.floor(u / cell + rng.uniform()) + np.floor(v / cell + rng.uniform())) % 2
        elif name == "dots":
            pitch, radius = rng.uniform(5, 9), rng.uniform(1.0, 2.2)
            du = (u + rng.uniform(0, pitch)) % pitch - pitch / 2
            dv = (v + rng.uniform(0, pitch)) % pitch - pitch / 2
            t = (du**2 + dv**2 <= radius**2).astype(np.float32)
            t = np.maximum(t, (rng.random((size, size)) < 0.03).astype(np.float32))  # speckles
        else:
            raise ValueError(f"no texture for stuff class {name!r}")
    return c1 + t[..., None].astype(np.float32) * (c2 - c1)


# ------------------------------------------------------------------------------ scenes


@dataclass
class _Flags:
    crowd: bool
    void: bool
    touch: bool
    overlap: bool


def _split_flags(rng, n: int) -> List[_Flags]:
    """Per-image cases; a split of >= 4 images gets each case in at least one image."""
    probs = (P_CROWD, P_VOID, P_TOUCH, P_OVERLAP)
    table = rng.random((n, 4)) < np.array(probs)
    if n >= 4:
        forced = rng.permutation(n)[:4]  # distinct images, so no scene gets overcrowded
        for case, img in enumerate(forced):
            if not table[:, case].any():
                table[img, case] = True
    return [_Flags(*map(bool, row)) for row in table]


def _make_scene(rng, size: int, flags: _Flags) -> _Scene:
    # Geometry first, so the special cases can be kept clear of each other. Things are drawn
    # bottom to top: free objects, the overlapping pair, the touching pair, the crowd; each
    # special case avoids the earlier ones, so none of them is hidden by another.
    empty = np.zeros((size, size), bool)
    overlap = _overlapping_pair(rng, size) if flags.overlap else []
    taken = _dilate4(_union(overlap, size))
    touch = _touching_pair(rng, size, taken) if flags.touch else []
    taken = _dilate4(_union(overlap + touch, size))
    crowd = _crowd(rng, size, taken) if flags.crowd else []
    free: List[_Object] = []
    for _ in range(max(int(rng.integers(3, 9)) - len(overlap) - len(touch), 0)):
        for _ in range(20):  # prefer spots that hide little of the other free objects
            obj = _make_object(rng, int(rng.choice(THING_IDX)), size)
            if (obj.full & _union(free, size)).sum() <= 0.3 * obj.full.sum():
                break
        free.append(obj)
    objects = free + overlap + touch + crowd
    things = _union(objects, size)
    void = _void_blob(rng, size, things) if flags.void else empty

    # Stuff: Voronoi cells of 2-4 random seeds, each a random texture class.
    n_regions = int(rng.integers(2, 5))
    seeds = rng.uniform(0, size, size=(n_regions, 2))
    y, x = np.mgrid[0:size, 0:size]
    dist = (x[None] - seeds[:, 0, None, None]) ** 2 + (y[None] - seeds[:, 1, None, None]) ** 2
    regions = dist.argmin(0)
    region_cats = [int(c) for c in rng.choice(STUFF_IDX, size=n_regions)]
    image = np.zeros((size, size, 3), np.float32)
    for r, cat in enumerate(region_cats):
        mask = regions == r
        image[mask] = _texture(rng, CATEGORIES[cat]["name"], size)[mask]
    # Void: random-coloured noise that belongs to no class; things drawn over it stay labelled.
    image[void] = rng.integers(0, 256, size=(int(void.sum()), 3))

    for obj in objects:
        colour = rng.integers(0, 256, size=3).astype(np.float32)
        fill = np.broadcast_to(colour, (size, size, 3)).copy()
        if rng.random() < 0.5:  # slight texture, far weaker than the stuff textures
            period, phase = rng.uniform(3, 8), rng.uniform(0, 2 * np.pi)
            fill += 10 * np.sin(2 * np.pi * (x + y) / period + phase)[..., None]
        image[obj.full] = fill[obj.full]

    covered = empty.copy()
    for obj in reversed(objects):
        obj.visible = obj.full & ~covered
        obj.kept = int(obj.visible.sum()) >= MIN_AREA
        covered |= obj.full

    image += rng.normal(0, 3, size=image.shape)
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    return _Scene(image, regions, region_cats, void, objects)


# ------------------------------------------------------------------------------ encoders


def _rle(mask: np.ndarray) -> Dict:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("utf-8")
    return rle


def _area_bbox(rle: Dict) -> Tuple[int, List[float]]:
    return int(mask_util.area(rle)), [float(v) for v in mask_util.toBbox(rle)]


def _segments(scene: _Scene, rng) -> Tuple[np.ndarray, List[Dict], List[_Object]]:
    """Panoptic id map (H, W) int64, segment dicts (with ``mask``) and the annotated objects.

    Segment ids are distinct random values in [256, 2^24), so no id can be mistaken for a
    category id or a running index.
    """
    size = scene.image.shape[0]
    kept = [o for o in scene.objects if o.kept]
    labelled_stuff = ~scene.void
    for obj in scene.objects:
        labelled_stuff &= ~obj.visible
    segments = []
    for obj in kept:
        segments.append({"cat": obj.cat, "iscrowd": obj.iscrowd, "mask": obj.visible})
    for cat in sorted(set(scene.region_cats)):
        mask = labelled_stuff & np.isin(
            scene.regions, [r for r, c in enumerate(scene.region_cats) if c == cat]
        )
        if mask.any():
            segments.append({"cat": cat, "iscrowd": 0, "mask": mask})
    ids: List[int] = []
    while len(ids) < len(segments):
        new = int(rng.integers(256, 2**24))
        if new not in ids:
            ids.append(new)
    pan = np.zeros((size, size), np.int64)
    for seg, sid in zip(segments, ids):
        seg["id"] = sid
        pan[seg["mask"]] = sid
    return pan, segments, kept


def _id_to_rgb(pan: np.ndarray) -> np.ndarray:
    return np.stack([pan % 256, pan // 256 % 256, pan // 65536], axis=-1).astype(np.uint8)


def _contours(mask: np.ndarray) -> List[List[List[int]]]:
    """Outer contours of a mask as Cityscapes polygons ([[x, y], ...], >= 3 points each)."""
    found, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polys = []
    for c in found:
        pts = c.reshape(-1, 2).tolist()
        # A 1-px dot or line has 1-2 points; a degenerate triangle still draws it in PIL.
        polys.append(pts + pts[-1:] * (3 - len(pts)))
    return polys


def _check_table() -> None:
    """Fail early, naming the file and field, if the class table asks for something unknown."""
    where = _meta.__file__
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


def _cityscapes_labels():
    """Cityscapes label tuples per contiguous class, plus ``unlabeled``."""
    return [name2label[c["cityscapes"]] for c in CATEGORIES], name2label["unlabeled"]


# ------------------------------------------------------------------------------ writer


def _write_json(obj: Dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, separators=(",", ":"))


def _generate_split(out: str, split: str, split_idx: int, seed: int, num: int, size: int) -> str:
    start = time.perf_counter()
    cs_labels, cs_void = _cityscapes_labels()
    dirs = {
        "images": os.path.join(out, "images", split),
        "panoptic": os.path.join(out, f"panoptic_{split}"),
        "semantic": os.path.join(out, f"semantic_{split}"),
        "cs_img": os.path.join(out, "cityscapes", "leftImg8bit", split, CITY),
        "cs_gt": os.path.join(out, "cityscapes", "gtFine", split, CITY),
    }
    # Regenerating in place must not leave files of a larger earlier run behind.
    stale = [
        dirs["images"],
        dirs["panoptic"],
        dirs["semantic"],
        os.path.join(out, "cityscapes", "leftImg8bit", split),
        os.path.join(out, "cityscapes", "gtFine", split),
        os.path.join(out, "cityscapes", "gtFine", f"cityscapes_panoptic_{split}"),
    ]
    for d in stale:
        if os.path.isdir(d):
            shutil.rmtree(d)
    for d in list(dirs.values()) + [os.path.join(out, "annotations")]:
        os.makedirs(d, exist_ok=True)

    flags = _split_flags(np.random.default_rng([seed, split_idx]), num)
    images, annotations, pan_annotations = [], [], []
    n_crowd = n_void = 0
    lut_id = np.zeros(256, np.uint8)  # semantic contiguous id -> Cityscapes id (void -> 0)
    lut_train = np.full(256, 255, np.uint8)
    lut_colour = np.zeros((256, 4), np.uint8)
    lut_colour[:, 3] = 255
    for i, lab in enumerate(cs_labels):
        lut_id[i], lut_train[i], lut_colour[i, :3] = lab.id, lab.trainId, lab.color
    lut_id[IGNORE_LABEL], lut_colour[IGNORE_LABEL, :3] = cs_void.id, cs_void.color

    for idx in range(num):
        # One generator per image: image i does not depend on how many images precede it.
        rng = np.random.default_rng([seed, split_idx, idx])
        scene = _make_scene(rng, size, flags[idx])
        stem = f"{idx:06d}"
        Image.fromarray(scene.image).save(os.path.join(dirs["images"], stem + ".png"))
        images.append({"id": idx, "file_name": stem + ".png", "height": size, "width": size})

        pan, segments, kept = _segments(scene, rng)
        n_void += int((pan == 0).any())
        for seg in segments:
            area, bbox = _area_bbox(_rle(seg["mask"]))
            seg.update(area=area, bbox=[int(v) for v in bbox])
        for obj, seg in zip(kept, segments):  # things come first in `segments`
            rle = _rle(obj.visible)
            area, bbox = _area_bbox(rle)
            unoccluded = not obj.iscrowd and np.array_equal(obj.visible, obj.full)
            n_crowd += obj.iscrowd
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": idx,
                    "category_id": CATEGORIES[obj.cat]["id"],
                    "segmentation": obj.polygons if unoccluded else rle,
                    "area": area,
                    "bbox": bbox,
                    "iscrowd": obj.iscrowd,
                }
            )
        Image.fromarray(_id_to_rgb(pan)).save(os.path.join(dirs["panoptic"], stem + ".png"))
        pan_annotations.append(
            {
                "image_id": idx,
                "file_name": stem + ".png",
                "segments_info": [
                    {
                        "id": s["id"],
                        "category_id": CATEGORIES[s["cat"]]["id"],
                        "iscrowd": s["iscrowd"],
                        "bbox": s["bbox"],
                        "area": s["area"],
                    }
                    for s in segments
                ],
            }
        )
        sem = np.full((size, size), IGNORE_LABEL, np.uint8)
        for s in segments:
            sem[s["mask"]] = s["cat"]
        Image.fromarray(sem, "L").save(os.path.join(dirs["semantic"], stem + ".png"))

        # Cityscapes: things numbered per class in drawing order, as json2instanceImg does.
        cs_stem = f"{CITY}_000000_{idx:06d}"
        shutil.copyfile(
            os.path.join(dirs["images"], stem + ".png"),
            os.path.join(dirs["cs_img"], cs_stem + "_leftImg8bit.png"),
        )
        inst = lut_id[sem].astype(np.uint16)
        counters: Dict[int, int] = {}
        objects_json = [
            {"label": cs_labels[cat].name, "polygon": poly}
            for r, cat in enumerate(scene.region_cats)
            for poly in _contours(scene.regions == r)
        ]
        objects_json += [{"label": cs_void.name, "polygon": p} for p in _contours(scene.void)]
        for obj in scene.objects:
            lab = cs_labels[obj.cat]
            if not obj.kept:
                name, polys = cs_void.name, _contours(obj.full)
            elif obj.iscrowd:
                name, polys = lab.name + "group", _contours(obj.full)
            else:
                k = counters.get(lab.id, 0)
                counters[lab.id] = k + 1
                inst[obj.visible] = lab.id * 1000 + k
                # One polygon per instance, or json2instanceImg would count it twice.
                name, polys = lab.name, [max(_contours(obj.full), key=len)]
            objects_json += [{"label": name, "polygon": p} for p in polys]
        gt = os.path.join(dirs["cs_gt"], cs_stem + "_gtFine_")
        Image.fromarray(lut_id[sem], "L").save(gt + "labelIds.png")
        Image.fromarray(lut_train[sem], "L").save(gt + "labelTrainIds.png")
        Image.fromarray(inst, "I;16").save(gt + "instanceIds.png")
        Image.fromarray(lut_colour[sem], "RGBA").save(gt + "color.png")
        _write_json(
            {"imgHeight": size, "imgWidth": size, "objects": objects_json}, gt + "polygons.json"
        )

    info = {"description": "seg2 synthetic shapes and textures", "version": "1.0", "year": 2024}
    thing_cats = [
        {"id": c["id"], "name": c["name"], "supercategory": "shape"}
        for c in CATEGORIES
        if c["isthing"]
    ]
    _write_json(
        {
            "info": info,
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": thing_cats,
        },
        os.path.join(out, "annotations", f"instances_{split}.json"),
    )
    pan_cats = [
        {
            "id": c["id"],
            "name": c["name"],
            "isthing": c["isthing"],
            "color": c["color"],
            "supercategory": "shape" if c["isthing"] else "texture",
        }
        for c in CATEGORIES
    ]
    _write_json(
        {
            "info": info,
            "licenses": [],
            "images": images,
            "annotations": pan_annotations,
            "categories": pan_cats,
        },
        os.path.join(out, "annotations", f"panoptic_{split}.json"),
    )
    if num:
        # The Cityscapes panoptic files Detectron2's cityscapes_panoptic loader reads, made by
        # cityscapesscripts itself (its progress output is silenced).
        with contextlib.redirect_stdout(io.StringIO()):
            convert2panoptic(os.path.join(out, "cityscapes", "gtFine"), setNames=[split])
    return (
        f"{split}: {num} images, {len(annotations)} instances ({n_crowd} crowd), "
        f"{sum(len(a['segments_info']) for a in pan_annotations)} panoptic segments, "
        f"{n_void} images with void -> {out} ({time.perf_counter() - start:.1f} s)"
    )


def generate(
    output_dir: str, seed: int = 0, num_train: int = 200, num_val: int = 50, size: int = 128
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
    _check_table()
    counts = dict(zip(SPLITS, (num_train, num_val)))
    for split_idx, split in enumerate(SPLITS):
        print(
            _generate_split(output_dir, split, split_idx, int(seed), int(counts[split]), int(size))
        )


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, help="output folder, e.g. datasets/synthetic")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-train", type=int, default=200)
    parser.add_argument("--num-val", type=int, default=50)
    parser.add_argument("--size", type=int, default=128, help="image side in px (>= 64)")
    args = parser.parse_args(argv)
    try:
        generate(args.output, args.seed, args.num_train, args.num_val, args.size)
    except ValueError as e:
        parser.error(str(e))


if __name__ == "__main__":
    main()
