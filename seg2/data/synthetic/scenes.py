"""Random scenes of the synthetic dataset: textured stuff cells (Voronoi), shapes on top with
touching, overlapping and crowd cases and void blobs, and their panoptic segments.

Each scene is a stuff background of 2-4 Voronoi cells, each a *texture* class (stripes,
checker, dots, smooth) with random colours, so a model has to learn texture rather than
colour; on top lie 3-8 shapes (circle, square, triangle) with random colours, so it has to
learn shape. Scenes deliberately contain the cases that break naive pipelines: touching and
overlapping instances of one class, a crowd region (``iscrowd=1``) and unlabeled void blobs.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import pycocotools.mask as mask_util

from .meta import CATEGORIES

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


def _contours(mask: np.ndarray) -> List[List[List[int]]]:
    """Outer contours of a mask as Cityscapes polygons ([[x, y], ...], >= 3 points each)."""
    found, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polys = []
    for c in found:
        pts = c.reshape(-1, 2).tolist()
        # A 1-px dot or line has 1-2 points; a degenerate triangle still draws it in PIL.
        polys.append(pts + pts[-1:] * (3 - len(pts)))
    return polys
