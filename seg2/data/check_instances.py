"""Checks of COCO instances JSON behind :mod:`.validate`: every annotation's segmentation
(polygons, flat polygon lists, RLE) and box against its image. Each adds every problem it finds
to a :class:`~.validate.ValidationReport` and returns; none raises on bad data.

A polygon's box is checked against the extent of its vertices, which is what a COCO ``bbox``
is; only polygons that may rasterise to few or no pixels (thin, tiny, or crossing the image
border) are rasterised, as training will, to find empty masks and boxes the mask shrinks.
"""

import math
from itertools import chain
from typing import Dict, List, Optional

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

__all__ = [
    "FLAT_POLYGON_NOTE",
    "SHORT_POLYGON_NOTE",
    "BOX_NOTE",
    "all_numbers",
    "check_coco_instances_json",
]

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
            f"disagrees with the mask's box {[round(v, 1) for v in ref]} (a side is {off:.1f} px off); training would use the mask's box, bbox AP the JSON 'bbox'",
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
            path, where, "segmentation", "<empty mask>", "the mask covers no pixel of the image", sample
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
            chain.from_iterable(chain.from_iterable(segs)), np.float64, count=2 * int(poly_len.sum())
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
        np.abs(np.stack([b[:, 0] - x0, b[:, 1] - y0, b[:, 0] + b[:, 2] - x1, b[:, 1] + b[:, 3] - y1])),
        axis=0,
    )
    size = np.maximum(b[:, 2], b[:, 3])
    flagged = off > np.maximum(1.5, 0.1 * size)
    ew, eh = x1 - x0, y1 - y0
    thin = (np.minimum(ew, eh) < 4) | (area < 2 * (ew + eh))
    border = (x0 < 0) | (y0 < 0) | (x1 > hw[:, 1]) | (y1 > hw[:, 0])
    for k in np.flatnonzero(flagged | thin | border).tolist():
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
    or None when the file's structure is unusable.
    """
    if not check_top_level(data, path, report):
        return None
    known, images = check_images_json(data["images"], path, report)
    cats = check_categories(data["categories"], path, report)
    check_ids(
        data["annotations"], path, "annotation", report, sample_of=lambda a: a.get("image_id")
    )
    pending = []  # polygon annotations whose box is checked in one batch
    unverified = []  # the same, numbers not checked yet
    with_seg = sum(1 for a in data["annotations"] if isinstance(a, dict) and "segmentation" in a)
    for i, a in enumerate(data["annotations"]):
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
    verified, coords = _verify_numbers(unverified, path, report) if unverified else ([], None)
    if pending or any(p[1] is None for p in verified):
        pending += [tuple(p) for p in verified if p[1] is not None]
        coords = None
    else:
        pending = verified
    _compare_polygon_boxes(pending, path, report, coords)
    return data
