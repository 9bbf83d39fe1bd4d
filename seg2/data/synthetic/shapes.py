"""The things of the synthetic scenes: shapes rasterised from COCO polygons, placed at random,
and the hard cases built from them (touching and overlapping pairs, crowd clusters) plus void
blobs; their geometry scales with the image size."""
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import pycocotools.mask as mask_util

from .meta import CATEGORIES

THING_IDX = [i for i, c in enumerate(CATEGORIES) if c["isthing"]]

# Objects whose visible part is smaller than this are not annotated; their pixels become void.
MIN_AREA = 20
# Outer size range (px) of ordinary objects and of the small members of a crowd cluster at
# the reference image size; object geometry scales with the image so that smaller images
# still fit every case (textures keep their pixel scale).
REF_SIZE = 128
OBJ_SIZE = (14, 40)
CROWD_SIZE = (6, 10)


@dataclass
class SceneObject:
    """One thing instance, or one crowd region when ``iscrowd``."""

    cat: int  # contiguous index into CATEGORIES
    polygons: List[List[float]]  # COCO polygons (flat x, y lists), all in the image
    full: np.ndarray  # (H, W) bool: the rasterised polygons, i.e. the amodal mask
    iscrowd: int = 0
    visible: Optional[np.ndarray] = None  # (H, W) bool, set after occlusion
    kept: bool = True  # False when the visible area fell below MIN_AREA



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


def make_object(rng, cat: int, size: int, centre=None, extent=None) -> SceneObject:
    shape = CATEGORIES[cat]["name"]
    extent = float(extent if extent is not None else rng.uniform(*OBJ_SIZE) * size / REF_SIZE)
    angle = float(rng.uniform(0, 2 * np.pi))
    cx, cy = (
        centre if centre is not None else _random_centre(rng, _circumradius(shape, extent), size)
    )
    poly = _shape_polygon(shape, cx, cy, extent, angle)
    return SceneObject(cat, [poly], _rasterize([poly], size))


def _inside(cx: float, cy: float, radius: float, size: int) -> bool:
    return radius + 1 <= cx <= size - radius - 1 and radius + 1 <= cy <= size - radius - 1


def union_mask(objects: Sequence[SceneObject], size: int) -> np.ndarray:
    out = np.zeros((size, size), bool)
    for obj in objects:
        out |= obj.full
    return out


def dilate4(mask: np.ndarray) -> np.ndarray:
    """Mask grown by one pixel along rows and columns (4-neighbourhood)."""
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def touching_pair(rng, size: int, avoid: np.ndarray, tries: int = 100) -> List[SceneObject]:
    """Two same-class objects whose masks are disjoint but 4-adjacent, both clear of ``avoid``.

    B starts clear of A in a direction pointing roughly into the image and is slid towards A
    (bisection on the centre distance) until one more step would make the masks overlap.
    """
    for _ in range(tries):
        cat = int(rng.choice(THING_IDX))
        shape = CATEGORIES[cat]["name"]
        ext_a, ext_b = rng.uniform(16, OBJ_SIZE[1] - 8, size=2) * size / REF_SIZE
        r_a, r_b = _circumradius(shape, ext_a), _circumradius(shape, ext_b)
        a = make_object(rng, cat, size, extent=ext_a)
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
        if (full & a.full).any() or not (full & dilate4(a.full)).any() or (full & avoid).any():
            continue
        return [a, SceneObject(cat, [poly], full)]
    return []


def overlapping_pair(rng, size: int, tries: int = 30) -> List[SceneObject]:
    """Two same-class objects, B drawn over part (not all) of A; A keeps >= 2 MIN_AREA px."""
    for _ in range(tries):
        cat = int(rng.choice(THING_IDX))
        shape = CATEGORIES[cat]["name"]
        ext_a, ext_b = rng.uniform(20, OBJ_SIZE[1], size=2) * size / REF_SIZE
        a = make_object(rng, cat, size, extent=ext_a)
        ax, ay = float(np.mean(a.polygons[0][0::2])), float(np.mean(a.polygons[0][1::2]))
        d = rng.uniform(0.35, 0.7) * (_circumradius(shape, ext_a) + _circumradius(shape, ext_b))
        theta = rng.uniform(0, 2 * np.pi)
        cx, cy = ax + d * np.cos(theta), ay + d * np.sin(theta)
        if not _inside(cx, cy, _circumradius(shape, ext_b), size):
            continue
        b = make_object(rng, cat, size, centre=(cx, cy), extent=ext_b)
        hidden = (a.full & b.full).sum()
        if hidden > 0 and (a.full & ~b.full).sum() >= 2 * MIN_AREA:
            return [a, b]
    return []


def make_crowd(rng, size: int, avoid: np.ndarray, tries: int = 30) -> List[SceneObject]:
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
            return [SceneObject(cat, polys, full, iscrowd=1)]
    return []


def void_blob(rng, size: int, things: np.ndarray, tries: int = 30) -> np.ndarray:
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
