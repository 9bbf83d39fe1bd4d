"""Checks of COCO instances JSON behind :mod:`.validate`: every annotation's segmentation
(polygons, flat polygon lists, RLE) and box against its image. Each adds every problem it finds
to a :class:`~.validate.ValidationReport` and returns; none raises on bad data.

A polygon's box is checked against the extent of its vertices, which is what a COCO ``bbox``
is; only polygons that may rasterise to few or no pixels (thin, tiny, or crossing the image
border) are rasterised, as training will, to find empty masks and boxes the mask shrinks.
"""

import math
import os
from itertools import chain
from typing import Dict, List, Optional, Tuple

import numpy as np
import pycocotools.mask as mask_util

from .check_annotations import (
    check_categories,
    check_ids,
    check_images_json,
    check_top_level,
    is_int,
    is_num,
    report_unknown_image,
)
from .parallel import map_chunks
from .validate import ValidationReport

__all__ = [
    "FLAT_POLYGON_NOTE",
    "SHORT_POLYGON_NOTE",
    "BOX_NOTE",
    "all_numbers",
    "check_coco_instances_json",
    "KEYPOINTS_NOTE",
    "AREA_NOTE",
    "POLYGON_MARGIN",
    "check_polygon_extent",
    "outline_limit",
    "check_rle_total",
    "check_area",
    "check_loader_fields",
    "segmentation_area",
    "check_instances_match_panoptic",
]

# Annotations per chunk of the JSON check (about half a second of work each).
CHUNK = 20000
# How far (pixels) a polygon point may lie outside its image: COCO's own polygons reach a
# pixel or two past the border, and rasterising clips them as training and evaluation do.
POLYGON_MARGIN = 4.0
# 'area' further than this factor (beyond the rasterisation slack) from the mask's area.
AREA_FACTOR = 2.0
AREA_NOTE = (
    "'area' differs from the mask's area by more than a factor of 2: training ignores it, "
    "COCO evaluation reads it (small/medium/large ranges)"
)
KEYPOINTS_NOTE = "'keypoints' dropped: seg2's models have no keypoint head"

FLAT_POLYGON_NOTE = (
    "flat polygon list (one list of numbers instead of a list of polygons) read as one polygon"
)
BOX_NOTE = (
    "'bbox' differs from the box of the mask by more than a pixel: training uses the mask's "
    "box, bbox AP evaluation uses the JSON 'bbox'"
)
SHORT_POLYGON_NOTE = (
    "polygon of fewer than 3 points beside valid ones: dropped (as Detectron2's loader "
    "does), the annotation's other polygons kept"
)
SLIVER_NOTE = (
    "sub-pixel segmentation (area < 1) covers no pixel: training drops it, "
    "COCO evaluation keeps it as ground truth"
)
BOX_CLIP_NOTE = (
    "'bbox' extends past the image border: training clips it to the image, "
    "bbox AP evaluation uses the JSON 'bbox' as written"
)


_NUMBER_TYPES = {int, float}


def all_numbers(values: List) -> bool:
    """Every item a finite number (booleans are not): one pass at C speed for the usual
    list of ints and floats, the item-by-item test otherwise."""
    try:
        if set(map(type, values)) <= _NUMBER_TYPES and math.isfinite(sum(values)):
            return True
    except TypeError:
        pass
    return all(is_num(v) for v in values)


def _plain_polygons(seg) -> bool:
    """A list of lists of an even number (>= 6) of items: the usual shape, whose numbers
    are then checked for all annotations at once (:func:`_verify_numbers`)."""
    if not seg or type(seg[0]) is not list:
        return False
    for poly in seg:
        if type(poly) is not list or len(poly) % 2 or len(poly) < 6:
            return False
    return True


def _verify_numbers(unverified: List, path: str, report):
    """(the entries of ``unverified`` (annotation, box, image, polygons, where, sample) whose
    polygons hold only finite numbers, their coordinates or None), checked in one pass;
    the others are reported by the item-by-item check."""
    values = chain.from_iterable(chain.from_iterable(p[3] for p in unverified))
    if set(map(type, values)) <= _NUMBER_TYPES:
        coords = np.fromiter(
            chain.from_iterable(chain.from_iterable(p[3] for p in unverified)), np.float64
        )
        if np.isfinite(coords).all():
            return unverified, coords
    return [p for p in unverified if _check_polygons(p[3], path, p[4], report, p[5])], None


def _check_polygons(seg: List, path: str, where: str, report, sample) -> Optional[List]:
    """Polygons as a list of lists (a flat list is converted, with a note); None if bad.
    A polygon of fewer than 3 points beside valid ones is dropped with a note, as
    Detectron2's loader drops it; alone, it is a problem (the instance would vanish)."""
    if not seg:
        report.add(path, where, "segmentation", seg, "empty segmentation", sample)
        return None
    if not isinstance(seg[0], list) and all_numbers(seg):
        report.note(FLAT_POLYGON_NOTE, where)
        seg = [list(seg)]
    problems, short, valid = [], [], []
    for k, poly in enumerate(seg):
        if not isinstance(poly, list) or not all_numbers(poly):
            problems.append(
                (f"segmentation[{k}]", poly, "a polygon must be a list of finite numbers")
            )
        elif len(poly) % 2:
            problems.append((f"segmentation[{k}]", len(poly), "odd number of coordinates"))
        elif len(poly) < 6:
            short.append((f"segmentation[{k}]", poly, "a polygon needs at least 3 points"))
        else:
            valid.append(poly)
    if short and valid and not problems:
        report.note(SHORT_POLYGON_NOTE, where)
        return valid
    for fld, value, message in problems + short:
        report.add(path, where, fld, value, message, sample)
    return None if problems or short else seg


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
        if not all(is_int(c) and c >= 0 for c in counts) or sum(counts) != hw[0] * hw[1]:
            report.add(
                path,
                where,
                "segmentation.counts",
                f"{len(counts)} runs",
                "uncompressed RLE runs must be non-negative and sum to height*width = "
                f"{hw[0] * hw[1]}",
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
    """The box of the mask training rasterises (None if it covers no pixel)."""
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


def _box_off(box, ref) -> float:
    """The largest distance between a side of ``box`` and the same side of ``ref`` (xywh)."""
    return max(
        abs(box[0] - ref[0]),
        abs(box[1] - ref[1]),
        abs(box[0] + box[2] - ref[0] - ref[2]),
        abs(box[1] + box[3] - ref[1] - ref[3]),
    )


def _is_error(off: float, box) -> bool:
    return off > max(3.0, 0.5 * max(box[2], box[3]))


def _is_note(off: float, box) -> bool:
    return off > max(1.5, 0.1 * max(box[2], box[3]))


def _report_box(box, ref, path: str, where: str, report, sample) -> None:
    """The JSON box against the mask's (``ref``): a side off by more than max(3 px, 50%) of
    the box's larger side is a problem, by more than max(1.5 px, 10%) a note."""
    off = _box_off(box, ref)
    if _is_error(off, box):
        report.add(
            path,
            where,
            "bbox",
            [round(v, 1) for v in box],
            f"disagrees with the mask's box {[round(v, 1) for v in ref]} (a side is {off:.1f} px "
            "off); training would use the mask's box, bbox AP the JSON 'bbox'",
            sample,
        )
    elif _is_note(off, box):
        report.note(BOX_NOTE, where)


def _report_empty_mask(ann: Dict, path: str, where: str, report, sample) -> None:
    area = ann.get("area")
    if is_num(area) and area < 1:
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


def _compare_mask_box(box, seg, ann: Dict, im: Dict, path: str, where: str, report, sample):
    """The JSON box against the rasterised mask's (RLE: exact without rasterising)."""
    mbox = _mask_box(seg, im)
    if mbox is None:
        _report_empty_mask(ann, path, where, report, sample)
    else:
        _report_box(box, mbox, path, where, report, sample)


def _compare_polygon_boxes(pending: List, path: str, report, coords=None) -> None:
    """Boxes of polygon annotations against their vertex extents, all at once.

    ``pending``: (annotation, box, image, polygons, where, sample). A box off its extent is
    reported as :func:`_report_box` says. Polygons that may cover few or no pixels (a side
    under 4 px, an average thickness under 2 px, or crossing the image border) are also
    rasterised: an empty mask is a problem (or, below 1 px of area, a note), and a mask box
    that shrank away from an agreeing JSON box is a note, since training uses the mask's.
    ``coords``: all their coordinates in order, when already read.
    """
    if not pending:
        return
    segs = [p[3] for p in pending]
    poly_len = np.fromiter((len(q) // 2 for seg in segs for q in seg), np.int64)
    if coords is None:
        coords = np.fromiter(
            chain.from_iterable(chain.from_iterable(segs)),
            np.float64,
            count=2 * int(poly_len.sum()),
        )
    x, y = coords[0::2], coords[1::2]
    pstart = np.concatenate([[0], np.cumsum(poly_len)[:-1]])
    pend = pstart + poly_len - 1
    xn, yn = np.roll(x, -1), np.roll(y, -1)
    xn[pend], yn[pend] = x[pstart], y[pstart]
    poly_area = 0.5 * np.abs(np.add.reduceat(x * yn - xn * y, pstart))
    npoly = np.fromiter((len(seg) for seg in segs), np.int64, count=len(segs))
    astart = np.concatenate([[0], np.cumsum(npoly)[:-1]])
    vstart = pstart[astart]
    x0, x1 = np.minimum.reduceat(x, vstart), np.maximum.reduceat(x, vstart)
    y0, y1 = np.minimum.reduceat(y, vstart), np.maximum.reduceat(y, vstart)
    area = np.maximum.reduceat(poly_area, astart)
    b = np.array([p[1] for p in pending], np.float64)
    hw = np.array([(p[2]["height"], p[2]["width"]) for p in pending], np.float64)
    off = np.max(
        np.abs(
            np.stack([b[:, 0] - x0, b[:, 1] - y0, b[:, 0] + b[:, 2] - x1, b[:, 1] + b[:, 3] - y1])
        ),
        axis=0,
    )
    size = np.maximum(b[:, 2], b[:, 3])
    flagged = off > np.maximum(1.5, 0.1 * size)
    ew, eh = x1 - x0, y1 - y0
    thin = (np.minimum(ew, eh) < 4) | (area < 2 * (ew + eh))
    border = (x0 < 0) | (y0 < 0) | (x1 > hw[:, 1]) | (y1 > hw[:, 0])
    # what rasterising would cost, before anything is rasterised; 'area' against the outline
    safe = _check_polygon_costs(pending, path, report, x, y, xn, yn, pstart, astart, poly_area)
    for k in np.flatnonzero((flagged | thin | border) & safe).tolist():
        ann, box, im, seg, where, sample = pending[k]
        ext = [float(x0[k]), float(y0[k]), float(ew[k]), float(eh[k])]
        if thin[k] or border[k]:
            mbox = _mask_box(seg, im)
            if mbox is None:
                _report_empty_mask(ann, path, where, report, sample)
                continue
            if not flagged[k] and _is_note(_box_off(box, mbox), box):
                report.note(BOX_NOTE, where)
                continue
        if flagged[k]:
            _report_box(box, ext, path, where, report, sample)


def check_coco_instances_json(data, path: str, report) -> Optional[Dict]:
    """COCO instances: ids, references, segmentations, boxes, areas.

    Returns ``data`` (unchanged: a flat polygon list is noted here and wrapped by the loader)
    or None when the file's structure is unusable. The annotations are checked in chunks of
    ``CHUNK``, over the cores (:func:`.parallel.map_chunks`).
    """
    if not check_top_level(data, path, report):
        return None
    known, images = check_images_json(data["images"], path, report)
    cats = check_categories(data["categories"], path, report)
    anns = data["annotations"]
    check_ids(anns, path, "annotation", report, sample_of=lambda a: a.get("image_id"))
    with_seg = sum(1 for a in anns if isinstance(a, dict) and "segmentation" in a)
    job = (anns, images, known, cats, with_seg, path)
    for rows, notes in map_chunks(_check_annotations, job, len(anns), CHUNK):
        report.extend(rows, notes)
    return data


def _check_annotations(job: Tuple, lo: int, hi: int) -> Tuple[List, Dict]:
    """Annotations ``lo:hi`` of ``job`` (annotations, images by id, known image ids,
    categories, how many have a segmentation, path): (problem rows, notes)."""
    anns, images, known, cats, with_seg, path = job
    report = ValidationReport("")
    pending = []  # polygon annotations whose box is checked in one batch
    unverified = []  # the same, numbers not checked yet
    for i, a in enumerate(anns[lo:hi], lo):
        if not isinstance(a, dict):
            continue
        where = f"annotation {a.get('id', '#' + str(i))}"
        img_id = a.get("image_id")
        im = images.get(img_id)
        if im is None:
            report_unknown_image(img_id, known, path, where, report)
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
        check_loader_fields(a, path, where, report, img_id)
        seg, plain = a.get("segmentation"), None
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
            if _plain_polygons(seg):
                plain = [a, None, im, seg, where, img_id]  # the box is set if it is valid
                unverified.append(plain)
            else:
                seg = _check_polygons(seg, path, where, report, img_id)
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
        if not (type(box) is list and len(box) == 4 and all(map(is_num, box))):
            report.add(
                path,
                where,
                "bbox",
                box if box is not None else "<missing>",
                "must be [x, y, width, height] of 4 finite numbers",
                img_id,
            )
        elif box[2] < 0 or box[3] < 0 or (seg is None and (box[2] == 0 or box[3] == 0)):
            # a zero side beside a segmentation is for the mask to judge (COCO train2017 has
            # zero-height boxes on sub-pixel slivers)
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
            if plain is not None:
                plain[1] = box
            elif isinstance(seg, list):
                pending.append((a, box, im, seg, where, img_id))
            elif seg is not None:
                _compare_mask_box(box, seg, a, im, path, where, report, img_id)
        area = a.get("area", None)
        if not is_num(area) or area < 0:
            report.add(
                path,
                where,
                "area",
                a.get("area", "<missing>"),
                "must be a non-negative number (COCO evaluation reads it)",
                img_id,
            )
        elif isinstance(seg, dict):
            check_area(area, seg, im, path, where, report, img_id)  # polygons: in the batch
    verified, coords = _verify_numbers(unverified, path, report) if unverified else ([], None)
    if pending or any(p[1] is None for p in verified):
        pending += [tuple(p) for p in verified if p[1] is not None]
        coords = None
    else:
        pending = verified
    _compare_polygon_boxes(pending, path, report, coords)
    return report.problem_rows(), dict(report.notes)


def _check_polygon_costs(pending, path, report, x, y, xn, yn, pstart, astart, poly_area):
    """Per pending polygon annotation, at once: every point within ``POLYGON_MARGIN`` of the
    image and the outline within ``outline_limit`` (else reported by
    :func:`check_polygon_extent`, and never rasterised), and its 'area' against the polygons'
    (:func:`check_area`). Returns which annotations are safe to rasterise."""
    hw = np.array([(p[2]["height"], p[2]["width"]) for p in pending], np.float64)
    vstart = pstart[astart]
    far = np.maximum(
        np.maximum(-np.minimum.reduceat(x, vstart), -np.minimum.reduceat(y, vstart)),
        np.maximum(
            np.maximum.reduceat(x, vstart) - hw[:, 1], np.maximum.reduceat(y, vstart) - hw[:, 0]
        ),
    )
    walk = np.add.reduceat(np.maximum(np.abs(xn - x), np.abs(yn - y)), vstart)
    limit = np.minimum(np.maximum(hw[:, 0] * hw[:, 1] / 8, 32 * (hw[:, 0] + hw[:, 1])), 2**22)
    safe = (far <= POLYGON_MARGIN) & (walk <= limit)
    for k in np.flatnonzero(~safe).tolist():
        ann, box, im, seg, where, sample = pending[k]
        check_polygon_extent(seg, im, path, where, report, sample)
    area = np.add.reduceat(poly_area, astart)
    slack = 0.5 * np.add.reduceat(np.hypot(xn - x, yn - y), vstart) + 1.0
    for k in range(len(pending)):
        ann = pending[k][0]
        given = ann.get("area")
        if not safe[k] or not is_num(given) or given < 0:
            continue
        if given * AREA_FACTOR < area[k] - slack[k] or given > AREA_FACTOR * (area[k] + slack[k]):
            _report_area(given, float(area[k]), path, pending[k][4], report, pending[k][5])
    return safe


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
    others (see ``ValidationReport.add_scored``). Polygons are checked in one batch by
    :func:`_check_polygon_costs`, with the same rule."""
    ref, slack = segmentation_area(seg, im)
    slack += 1.0
    if area * AREA_FACTOR < ref - slack or area > AREA_FACTOR * (ref + slack):
        _report_area(area, ref, path, where, report, sample)


def _report_area(area: float, ref: float, path: str, where: str, report, sample) -> None:
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
    refuses anything but 0) and ``keypoints`` (no seg2 model has a keypoint head; Detectron2's
    mapper would transform them and stop at the first flip without flip indices), which the
    loader drops, noted here. Returns the annotation without them."""
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
