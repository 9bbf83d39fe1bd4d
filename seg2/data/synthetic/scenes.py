"""Random scenes of the synthetic dataset: textured stuff cells (Voronoi), shapes on top with
touching, overlapping and crowd cases and void blobs, and their panoptic segments.

Each scene is a stuff background of 2-4 Voronoi cells, each a *texture* class (stripes,
checker, dots, smooth) with random colours, so a model has to learn texture rather than
colour; on top lie 3-8 shapes (circle, square, triangle) with random colours, so it has to
learn shape. Scenes deliberately contain the cases that break naive pipelines: touching and
overlapping instances of one class, a crowd region (``iscrowd=1``) and unlabeled void blobs.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import cv2
import numpy as np
import pycocotools.mask as mask_util

from .meta import CATEGORIES
from .shapes import (
    MIN_AREA,
    THING_IDX,
    SceneObject,
    dilate4,
    make_crowd,
    make_object,
    overlapping_pair,
    touching_pair,
    union_mask,
    void_blob,
)

STUFF_IDX = [i for i, c in enumerate(CATEGORIES) if not c["isthing"]]
SHAPES = ("circle", "square", "triangle")
TEXTURES = ("stripes", "checker", "dots", "smooth")

# Per-image probabilities; splits of >= 4 images are forced to contain each case at least once.
P_CROWD, P_VOID, P_TOUCH, P_OVERLAP = 0.2, 1 / 3, 0.5, 0.5
MIN_SIZE = 64


@dataclass
class _Scene:
    image: np.ndarray  # (H, W, 3) uint8
    regions: np.ndarray  # (H, W) int: Voronoi cell index
    region_cats: List[int]  # contiguous stuff class of each cell
    void: np.ndarray  # (H, W) bool: the void blob (before things are drawn over it)
    objects: List[SceneObject] = field(default_factory=list)  # in drawing (z) order


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


def split_flags(rng, n: int) -> List[_Flags]:
    """Per-image cases; a split of >= 4 images gets each case in at least one image."""
    probs = (P_CROWD, P_VOID, P_TOUCH, P_OVERLAP)
    table = rng.random((n, 4)) < np.array(probs)
    if n >= 4:
        forced = rng.permutation(n)[:4]  # distinct images, so no scene gets overcrowded
        for case, img in enumerate(forced):
            if not table[:, case].any():
                table[img, case] = True
    return [_Flags(*map(bool, row)) for row in table]


def make_scene(rng, size: int, flags: _Flags) -> _Scene:
    # Geometry first, so the special cases can be kept clear of each other. Things are drawn
    # bottom to top: free objects, the overlapping pair, the touching pair, the crowd; each
    # special case avoids the earlier ones, so none of them is hidden by another.
    empty = np.zeros((size, size), bool)
    overlap = overlapping_pair(rng, size) if flags.overlap else []
    taken = dilate4(union_mask(overlap, size))
    touch = touching_pair(rng, size, taken) if flags.touch else []
    taken = dilate4(union_mask(overlap + touch, size))
    crowd = make_crowd(rng, size, taken) if flags.crowd else []
    free: List[SceneObject] = []
    for _ in range(max(int(rng.integers(3, 9)) - len(overlap) - len(touch), 0)):
        for _ in range(20):  # prefer spots that hide little of the other free objects
            obj = make_object(rng, int(rng.choice(THING_IDX)), size)
            if (obj.full & union_mask(free, size)).sum() <= 0.3 * obj.full.sum():
                break
        free.append(obj)
    objects = free + overlap + touch + crowd
    things = union_mask(objects, size)
    void = void_blob(rng, size, things) if flags.void else empty

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


def mask_rle(mask: np.ndarray) -> Dict:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("utf-8")
    return rle


def area_bbox(rle: Dict) -> Tuple[int, List[float]]:
    return int(mask_util.area(rle)), [float(v) for v in mask_util.toBbox(rle)]


def scene_segments(scene: _Scene, rng) -> Tuple[np.ndarray, List[Dict], List[SceneObject]]:
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


def mask_polygons(mask: np.ndarray) -> List[List[List[int]]]:
    """Outer contours of a mask as Cityscapes polygons ([[x, y], ...], >= 3 points each)."""
    found, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polys = []
    for c in found:
        pts = c.reshape(-1, 2).tolist()
        # A 1-px dot or line has 1-2 points; a degenerate triangle still draws it in PIL.
        polys.append(pts + pts[-1:] * (3 - len(pts)))
    return polys
