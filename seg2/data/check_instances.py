"""Checks of COCO instances JSON behind :mod:`.validate`: every annotation's segmentation
(polygons, flat polygon lists, RLE) and box against its image. Each adds every problem it finds
to a :class:`~.validate.ValidationReport` and returns; none raises on bad data."""

import os
from typing import Dict, List, Optional, Tuple

import numpy as np
import pycocotools.mask as mask_util

from .check_annotations import (
    _check_categories,
    _check_ids,
    _check_images_json,
    _is_int,
    _is_num,
    _report_unknown_image,
    _top_level,
)

__all__ = [
    "FLAT_POLYGON_NOTE",
    "KEYPOINTS_NOTE",
    "AMENDING_NOTES",
    "AREA_NOTE",
    "POLYGON_MARGIN",
    "check_coco_instances_json",
    "check_polygon_extent",
    "outline_limit",
    "check_rle_total",
    "check_area",
    "check_loader_fields",
    "segmentation_area",
    "check_instances_match_panoptic",
]

# How far (pixels) a polygon point may lie outside its image: COCO's own polygons reach a
# pixel or two past the border, and rasterising clips them as training and evaluation do.
POLYGON_MARGIN = 4.0
# 'area' further than this factor (beyond the rasterisation slack) from the mask's area.
AREA_FACTOR = 2.0
AREA_NOTE = (
    "'area' differs from the mask's area by more than a factor of 2: training ignores it, "
    "COCO evaluation reads it (small/medium/large ranges)"
)

FLAT_POLYGON_NOTE = (
    "flat polygon list (one list of numbers instead of a list of polygons) read as one polygon"
)
KEYPOINTS_NOTE = "'keypoints' dropped: seg2's models have no keypoint head"
# Notes of conversions made in the data handed to Detectron2's loader.
AMENDING_NOTES = (FLAT_POLYGON_NOTE, KEYPOINTS_NOTE)
BOX_NOTE = (
    "'bbox' differs from the box of the mask by more than a pixel: training uses the mask's "
    "box, bbox AP evaluation uses the JSON 'bbox'"
)
SLIVER_NOTE = (
    "sub-pixel segmentation (area < 1) covers no pixel: training drops it, "
    "COCO evaluation keeps it as ground truth"
)
BOX_CLIP_NOTE = (
    "'bbox' extends past the image border: training clips it to the image, "
    "bbox AP evaluation uses the JSON 'bbox' as written"
)


def _check_polygons(seg: List, path: str, where: str, report, sample) -> Optional[List]:
    """Polygons as a list of lists (a flat list is converted, with a note); None if bad."""
    if not seg:
        report.add(path, where, "segmentation", seg, "empty segmentation", sample)
        return None
    if all(_is_num(v) for v in seg):
        report.note(FLAT_POLYGON_NOTE, where)
        seg = [list(seg)]
    ok = True
    for k, poly in enumerate(seg):
        if not isinstance(poly, list) or not all(_is_num(v) for v in poly):
            report.add(
                path,
                where,
                f"segmentation[{k}]",
                poly,
                "a polygon must be a list of finite numbers",
                sample,
            )
            ok = False
        elif len(poly) % 2:
            report.add(
                path, where, f"segmentation[{k}]", len(poly), "odd number of coordinates", sample
            )
            ok = False
        elif len(poly) < 6:
            report.add(
                path, where, f"segmentation[{k}]", poly, "a polygon needs at least 3 points", sample
            )
            ok = False
    return seg if ok else None


def _check_rle(seg: Dict, im: Dict, path: str, where: str, report, sample) -> Optional[Dict]:
    size, counts = seg.get("size"), seg.get("counts")
    hw = [im["height"], im["width"]]
    if not (isinstance(size, list) and len(size) == 2) or list(size) != hw:
        report.add(
            path,
            where,
            "segmentation.size",
            size,
            f"RLE size must be the image's [height, width] {hw}",
            sample,
        )
        return None
    if isinstance(counts, list):
        if not all(_is_int(c) and c >= 0 for c in counts) or sum(counts) != hw[0] * hw[1]:
            report.add(
                path,
                where,
                "segmentation.counts",
                f"{len(counts)} runs",
                f"uncompressed RLE runs must be non-negative and sum to height*width = {hw[0] * hw[1]}",
                sample,
            )
            return None
    elif not isinstance(counts, str):
        report.add(
            path,
            where,
            "segmentation.counts",
            type(counts).__name__,
            "RLE counts must be a string or a list",
            sample,
        )
        return None
    try:
        rle = (
            mask_util.frPyObjects(seg, *hw)
            if isinstance(counts, list)
            else dict(seg, counts=counts.encode())
        )
        mask_util.area(rle)
    except Exception as e:
        report.add(
            path, where, "segmentation.counts", counts[:20], f"undecodable RLE ({e})", sample
        )
        return None
    return seg


def _mask_box(seg, im: Dict) -> Optional[List[float]]:
    h, w = im["height"], im["width"]
    if isinstance(seg, list):
        rle = mask_util.merge(mask_util.frPyObjects(seg, h, w))
    elif isinstance(seg["counts"], list):
        rle = mask_util.frPyObjects(seg, h, w)
    else:
        rle = dict(seg, counts=seg["counts"].encode())
    if mask_util.area(rle) == 0:
        return None
    return [float(v) for v in mask_util.toBbox(rle)]


def _compare_box(box, mbox, ann: Dict, path: str, where: str, report, sample) -> None:
    """The JSON box against the rasterised mask's. Rasterising moves a polygon's edges by up
    to a pixel, so only a side off by more than max(1.5 px, 10%) is a note and by more than
    max(3 px, 50%) of the box's larger side a problem."""
    if mbox is None:
        area = ann.get("area")
        if _is_num(area) and area < 1:
            report.note(SLIVER_NOTE, where)
        else:
            report.add(
                path,
                where,
                "segmentation",
                "<empty mask>",
                "the mask covers no pixel of the image",
                sample,
            )
        return
    sides = lambda b: (b[0], b[1], b[0] + b[2], b[1] + b[3])  # noqa: E731
    off = max(abs(u - v) for u, v in zip(sides(box), sides(mbox)))
    size = max(box[2], box[3])
    if off > max(3.0, 0.5 * size):
        report.add(
            path,
            where,
            "bbox",
            [round(v, 1) for v in box],
            f"disagrees with the mask's box {[round(v, 1) for v in mbox]} (a side is {off:.1f} px off); training would use the mask's box, bbox AP the JSON 'bbox'",
            sample,
        )
    elif off > max(1.5, 0.1 * size):
        report.note(BOX_NOTE, where)


def check_coco_instances_json(data, path: str, report) -> Optional[Dict]:
    """COCO instances: ids, references, segmentations, boxes, areas.

    Returns the data to load: the input, or a copy with flat polygon lists wrapped into a
    list of polygons; None when the file's structure is unusable.
    """
    if not _top_level(data, path, report):
        return None
    known, images = _check_images_json(data["images"], path, report)
    cats = _check_categories(data["categories"], path, report)
    _check_ids(
        data["annotations"], path, "annotation", report, sample_of=lambda a: a.get("image_id")
    )
    fixed_anns, changed = [], False
    with_seg = sum(1 for a in data["annotations"] if isinstance(a, dict) and "segmentation" in a)
    for i, a in enumerate(data["annotations"]):
        if not isinstance(a, dict):
            continue
        where = f"annotation {a.get('id', '#' + str(i))}"
        img_id = a.get("image_id")
        im = images.get(img_id)
        if im is None:
            _report_unknown_image(img_id, known, path, where, report)
            continue
        if a.get("category_id") not in cats:
            report.add(
                path,
                where,
                "category_id",
                a.get("category_id", "<missing>"),
                f"not among the category ids {sorted(cats)}",
                img_id,
            )
        if a.get("iscrowd", 0) not in (0, 1, True, False):
            report.add(path, where, "iscrowd", a.get("iscrowd"), "must be 0 or 1", img_id)
        kept = check_loader_fields(a, path, where, report, img_id)
        if kept is not a:
            a, changed = kept, True
        seg = a.get("segmentation")
        if seg is None:
            if with_seg:
                report.add(
                    path,
                    where,
                    "segmentation",
                    "<missing>",
                    f"missing while {with_seg} other annotation(s) have one",
                    img_id,
                )
        elif isinstance(seg, list):
            new = _check_polygons(seg, path, where, report, img_id)
            if new is not None and new is not seg:
                a, changed = dict(a, segmentation=new), True
            seg = new
            if seg is not None and not check_polygon_extent(seg, im, path, where, report, img_id):
                seg = None  # never rasterised: the error says why
        elif isinstance(seg, dict):
            seg = _check_rle(seg, im, path, where, report, img_id)
            if seg is not None and not check_rle_total(seg, im, path, where, report, img_id):
                seg = None
        else:
            report.add(
                path,
                where,
                "segmentation",
                type(seg).__name__,
                "must be polygons (list) or RLE (object)",
                img_id,
            )
            seg = None
        box = a.get("bbox")
        if not (isinstance(box, list) and len(box) == 4 and all(_is_num(v) for v in box)):
            report.add(
                path,
                where,
                "bbox",
                box if box is not None else "<missing>",
                "must be [x, y, width, height] of 4 finite numbers",
                img_id,
            )
        elif box[2] <= 0 or box[3] <= 0:
            report.add(path, where, "bbox", box, "width and height must be > 0", img_id)
        elif (
            box[0] >= im["width"]
            or box[1] >= im["height"]
            or box[0] + box[2] <= 0
            or box[1] + box[3] <= 0
        ):
            report.add(
                path,
                where,
                "bbox",
                box,
                f"lies entirely outside the {im['width']}x{im['height']} image",
                img_id,
            )
        else:
            if (
                box[0] < -0.5
                or box[1] < -0.5
                or box[0] + box[2] > im["width"] + 0.5
                or box[1] + box[3] > im["height"] + 0.5
            ):
                report.note(BOX_CLIP_NOTE, where)
            if seg is not None:
                _compare_box(box, _mask_box(seg, im), a, path, where, report, img_id)
        if not _is_num(a.get("area", None)) or a.get("area", 0) < 0:
            report.add(
                path,
                where,
                "area",
                a.get("area", "<missing>"),
                "must be a non-negative number (COCO evaluation reads it)",
                img_id,
            )
        elif seg is not None:
            check_area(a["area"], seg, im, path, where, report, img_id)
        fixed_anns.append(a)
    if not changed:
        return data
    return dict(
        data, annotations=fixed_anns + [a for a in data["annotations"] if not isinstance(a, dict)]
    )


def check_polygon_extent(polys: List, im: Dict, path: str, where: str, report, sample) -> bool:
    """What rasterising a polygon costs, checked before anything is rasterised: every point
    within ``POLYGON_MARGIN`` of the image, and the outline's pixel walk (pycocotools steps
    along every edge pixel by pixel, allocating as it goes) at most ``outline_limit`` of
    the image. One point at 1e12, or a zigzag of many long edges, would otherwise allocate
    without bound. False (each such polygon reported) otherwise."""
    h, w, ok = im["height"], im["width"], True
    walked, limit = 0.0, outline_limit(h, w)
    for k, poly in enumerate(polys):
        pts = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        if max(-lo[0], -lo[1], hi[0] - w, hi[1] - h) > POLYGON_MARGIN:
            outside = np.maximum(
                np.maximum(-pts[:, 0], pts[:, 0] - w), np.maximum(-pts[:, 1], pts[:, 1] - h)
            )
            j = int(np.argmax(outside))
            report.add(
                path,
                where,
                f"segmentation[{k}]",
                [poly[2 * j], poly[2 * j + 1]],
                f"point {j} lies {outside[j]:.6g} px outside the {w}x{h} image "
                f"(more than {POLYGON_MARGIN:g} px)",
                sample,
            )
            ok = False
            continue
        walked += float(np.abs(np.diff(pts, axis=0, append=pts[:1])).max(axis=1).sum())
        if ok and walked > limit:
            report.add(
                path,
                where,
                f"segmentation[{k}]",
                f"{len(pts)} points",
                f"the outline runs {walked:.0f} px, more than {limit} px for a {w}x{h} image "
                "(edges crossing the image over and over)",
                sample,
            )
            ok = False
    return ok


def outline_limit(h: int, w: int) -> int:
    """The longest polygon outline (pixels walked, all polygons of an annotation) taken for
    an image: an eighth of its pixels, at least 16 times around it, and never more than
    2^22 pixels (over 30 times around a 30,000 x 30,000 image), which also bounds what a
    JSON height/width larger than the real image can make rasterising allocate; far beyond
    any real outline."""
    return int(min(max(h * w / 8, 32 * (h + w)), 2**22))


def rle_string_total(counts: str) -> int:
    """Sum of the runs of a compressed COCO RLE string (the pixels it spans), decoded as
    pycocotools' ``rleFrString`` does (5 bits a character, runs after the second stored as
    differences), without allocating a mask."""
    total = runs = x = k = prev2 = prev1 = 0
    for c in counts.encode():
        c -= 48
        x |= (c & 0x1F) << (5 * k)
        k += 1
        if c & 0x20:
            continue  # the run goes on in the next character
        if c & 0x10:
            x |= -1 << (5 * k)
        if runs > 2:
            x += prev2
        prev2, prev1 = prev1, x
        total, runs, x, k = total + x, runs + 1, 0, 0
    return total


def check_rle_total(seg: Dict, im: Dict, path: str, where: str, report, sample) -> bool:
    """A compressed RLE's runs must cover exactly height*width pixels (pycocotools decodes
    other counts into a wrong mask or refuses them mid-training)."""
    if not isinstance(seg.get("counts"), str):
        return True  # uncompressed runs are summed by _check_rle
    n, total = im["height"] * im["width"], rle_string_total(seg["counts"])
    if total != n:
        report.add(
            path,
            where,
            "segmentation.counts",
            f"runs summing to {total}",
            f"RLE runs must sum to height*width = {n}",
            sample,
        )
        return False
    return True


def segmentation_area(seg, im: Dict) -> Tuple[float, float]:
    """(area, slack) of a checked segmentation without rasterising: polygons by the shoelace
    formula (slack: half the perimeter, what rasterisation can add or remove at the
    border), RLE exactly (slack 0)."""
    if isinstance(seg, dict):
        h, w = im["height"], im["width"]
        if isinstance(seg["counts"], list):
            rle = mask_util.frPyObjects(seg, h, w)
        else:
            rle = dict(seg, counts=seg["counts"].encode())
        return float(mask_util.area(rle)), 0.0
    area, perimeter = 0.0, 0.0
    for poly in seg:
        pts = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
        nxt = np.concatenate((pts[1:], pts[:1]))
        area += abs(float(np.dot(pts[:, 0], nxt[:, 1]) - np.dot(nxt[:, 0], pts[:, 1]))) / 2
        d = nxt - pts
        perimeter += float(np.sqrt(np.einsum("ij,ij->i", d, d)).sum())
    return area, perimeter / 2


def check_area(area: float, seg, im: Dict, path: str, where: str, report, sample) -> None:
    """The JSON 'area' against the segmentation's: COCO evaluation reads 'area' (ranges
    small/medium/large), training ignores it. Off by more than ``AREA_FACTOR`` beyond the
    rasterisation slack is a problem of the datasets that are scored and a note for the
    others (see ``ValidationReport.add_scored``)."""
    ref, slack = segmentation_area(seg, im)
    slack += 1.0
    if area * AREA_FACTOR >= ref - slack and area <= AREA_FACTOR * (ref + slack):
        return
    report.add_scored(
        AREA_NOTE,
        path,
        where,
        "area",
        area,
        f"the segmentation covers about {ref:.0f} px (COCO evaluation reads 'area' for its "
        "small/medium/large ranges)",
        sample,
    )


def check_loader_fields(a: Dict, path: str, where: str, report, sample) -> Dict:
    """Fields Detectron2's COCO loader reads beyond what seg2 uses: ``ignore`` (its loader
    asserts it is 0) and ``keypoints`` (no seg2 model has a keypoint head; Detectron2 would
    transform them and stop at the first flip without flip indices), dropped with a note.
    Returns the annotation to load."""
    if a.get("ignore", 0) not in (0, False):
        report.add(
            path,
            where,
            "ignore",
            a["ignore"],
            "Detectron2 does not read 'ignore'; mark the region 'iscrowd': 1 instead",
            sample,
        )
    if "keypoints" in a:
        report.note(KEYPOINTS_NOTE, where)
        a = {k: v for k, v in a.items() if k != "keypoints"}
    return a


def check_instances_match_panoptic(
    inst: Dict, inst_path: str, pan_cats: List, pan_path: str, report
) -> bool:
    """A panoptic dataset's instances JSON must describe its thing classes: the same
    category ids and names as the panoptic categories with ``isthing`` 1, and no instance
    of a stuff category (that category is then stuff in one file, a thing in the other).
    False if the categories disagree: Detectron2's metadata cannot hold both."""
    things = {
        c["id"]: c for c in pan_cats if isinstance(c, dict) and c.get("isthing") and "id" in c
    }
    stuff = {
        c["id"]: c for c in pan_cats if isinstance(c, dict) and not c.get("isthing") and "id" in c
    }
    cats = {c["id"]: c for c in inst["categories"] if isinstance(c, dict) and "id" in c}
    ok = True
    for cid in sorted(set(cats) | set(things), key=str):
        if cid in stuff:
            report.add(
                pan_path,
                f"category {cid}",
                "isthing",
                stuff[cid].get("isthing", "<missing>"),
                f"stuff here, but a thing category of {os.path.basename(inst_path)}",
            )
        elif cid not in things:
            report.add(
                inst_path,
                f"category {cid}",
                "id",
                cid,
                f"not a thing category of {os.path.basename(pan_path)}",
            )
        elif cid not in cats:
            report.add(
                pan_path,
                f"category {cid}",
                "isthing",
                things[cid].get("isthing"),
                f"a thing here, but not a category of {os.path.basename(inst_path)}",
            )
        elif str(cats[cid].get("name")) != str(things[cid].get("name", cid)):
            report.add(
                inst_path,
                f"category {cid}",
                "name",
                cats[cid].get("name"),
                f"is {things[cid].get('name')!r} in {os.path.basename(pan_path)}",
            )
        else:
            continue
        ok = False
    return ok
