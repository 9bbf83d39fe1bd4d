"""The checks behind :mod:`.validate`: COCO instances and panoptic JSON, and the files a
dataset dict points at (image, semantic label PNG, panoptic PNG). Each adds every problem it
finds to a :class:`~.validate.ValidationReport` and returns; none raises on bad data."""

import math
import numbers
import os
from collections import Counter
from typing import Dict, List, Optional, Tuple

import numpy as np
import pycocotools.mask as mask_util

from ..io import InputError, load_image, read_label_png, read_panoptic_png

__all__ = [
    "check_coco_instances_json",
    "check_coco_panoptic_json",
    "check_image_file",
    "check_label_file",
    "check_panoptic_file",
    "check_dataset_dicts",
]

FLAT_POLYGON_NOTE = (
    "flat polygon list (one list of numbers instead of a list of polygons) read as one polygon"
)
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


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _check_ids(items: List, path: str, kind: str, report, sample_of=None) -> set:
    """Integer ids, each used once (a duplicate is reported once, with its count); returns
    every integer id, so references to a duplicated id are not reported again."""
    counts = Counter(x.get("id") for x in items if isinstance(x, dict))
    ids, reported = set(), set()
    for i, x in enumerate(items):
        if not isinstance(x, dict):
            report.add(path, f"{kind} #{i}", "", x, f"{kind} is not a JSON object")
            continue
        v = x.get("id")
        sample = sample_of(x) if sample_of else None
        if not _is_int(v):
            report.add(
                path,
                f"{kind} #{i}",
                "id",
                v,
                "id must be an integer",
                sample if isinstance(sample, (str, int, float)) else None,
            )
            continue
        ids.add(v)
        if counts[v] > 1 and (v not in reported or sample_of):
            if v not in reported:
                report.add(
                    path, f"{kind} {v}", "id", v, f"{counts[v]} {kind}s share this id", sample
                )
            reported.add(v)
    return ids


def _top_level(data, path: str, report) -> bool:
    if not isinstance(data, dict):
        report.add(path, "", "", type(data).__name__, "a COCO file must be a JSON object")
        return False
    ok = True
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            report.add(
                path, "", key, data.get(key, "<missing>"), "top-level field missing or not a list"
            )
            ok = False
    return ok


def _check_images_json(images: List, path: str, report) -> Tuple[Dict, Dict]:
    """({id: image} of every image with a valid id, {id: image} of those also usable: size
    fields positive integers and a file name)."""
    ids = _check_ids(images, path, "image", report, sample_of=lambda im: im.get("id"))
    known, usable = {}, {}
    for im in images:
        if isinstance(im, dict) and isinstance(im.get("id"), (str, float)):
            known.setdefault(im["id"], im)  # reported; references to it are not reported again
        if not isinstance(im, dict) or im.get("id") not in ids or im["id"] in known:
            continue
        known[im["id"]] = im
        where, ok = f"image {im['id']}", True
        for key in ("height", "width"):
            if not (_is_int(im.get(key)) and im[key] > 0):
                report.add(
                    path,
                    where,
                    key,
                    im.get(key, "<missing>"),
                    "must be a positive integer",
                    im["id"],
                )
                ok = False
        if not isinstance(im.get("file_name"), str) or not im.get("file_name"):
            report.add(
                path,
                where,
                "file_name",
                im.get("file_name", "<missing>"),
                "must be a file name",
                im["id"],
            )
            ok = False
        if ok:
            usable[im["id"]] = im
    return known, usable


def _check_categories(cats: List, path: str, report, panoptic: bool = False) -> Dict:
    ids = _check_ids(cats, path, "category", report)
    out = {}
    for c in cats:
        if not isinstance(c, dict) or c.get("id") not in ids or c["id"] in out:
            continue
        if not isinstance(c.get("name"), str):
            report.add(
                path, f"category {c['id']}", "name", c.get("name", "<missing>"), "must be a string"
            )
        if panoptic and c.get("isthing") not in (0, 1, True, False):
            report.add(
                path,
                f"category {c['id']}",
                "isthing",
                c.get("isthing", "<missing>"),
                "must be 0 or 1",
            )
        out[c["id"]] = c
    return out


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
            if img_id not in known:
                report.add(
                    path,
                    where,
                    "image_id",
                    img_id,
                    "not the id of an image in 'images'",
                    img_id if isinstance(img_id, (int, str)) else None,
                )
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
        fixed_anns.append(a)
    if not changed:
        return data
    return dict(
        data, annotations=fixed_anns + [a for a in data["annotations"] if not isinstance(a, dict)]
    )


def check_coco_panoptic_json(data, path: str, report) -> bool:
    """COCO panoptic JSON: image/category ids, one annotation per image, segment ids and
    categories. The PNGs are checked by :func:`check_panoptic_file`. False if unusable."""
    if not _top_level(data, path, report):
        return False
    known, images = _check_images_json(data["images"], path, report)
    cats = _check_categories(data["categories"], path, report, panoptic=True)
    seen = Counter()
    for i, a in enumerate(data["annotations"]):
        if not isinstance(a, dict):
            report.add(path, f"annotation #{i}", "", a, "annotation is not a JSON object")
            continue
        img_id = a.get("image_id")
        where = f"annotation of image {img_id!r}"
        if img_id not in images:
            if img_id not in known:
                report.add(
                    path,
                    where,
                    "image_id",
                    img_id,
                    "not the id of an image in 'images'",
                    img_id if isinstance(img_id, (int, str)) else None,
                )
            continue
        seen[img_id] += 1
        if seen[img_id] == 2:
            report.add(
                path,
                where,
                "image_id",
                img_id,
                "more than one panoptic annotation for this image",
                img_id,
            )
        if not isinstance(a.get("file_name"), str):
            report.add(
                path,
                where,
                "file_name",
                a.get("file_name", "<missing>"),
                "must be the PNG's file name",
                img_id,
            )
        segs = a.get("segments_info")
        if not isinstance(segs, list):
            report.add(
                path,
                where,
                "segments_info",
                segs if segs is not None else "<missing>",
                "must be a list",
                img_id,
            )
            continue
        ids = Counter(s.get("id") for s in segs if isinstance(s, dict))
        for s in segs:
            if not isinstance(s, dict):
                report.add(path, where, "segments_info", s, "segment is not a JSON object", img_id)
                continue
            sw = f"segment {s.get('id')!r} of image {img_id}"
            if not (_is_int(s.get("id")) and 0 < s["id"] < 256**3):
                report.add(
                    path,
                    sw,
                    "id",
                    s.get("id", "<missing>"),
                    "must be an integer in 1..256^3-1 (R + 256 G + 256^2 B)",
                    img_id,
                )
            elif ids[s["id"]] > 1:
                report.add(path, sw, "id", s["id"], "two segments share this id", img_id)
            if s.get("category_id") not in cats:
                report.add(
                    path,
                    sw,
                    "category_id",
                    s.get("category_id", "<missing>"),
                    f"not among the category ids {sorted(cats)}",
                    img_id,
                )
            elif "isthing" in s and bool(s["isthing"]) != bool(
                cats[s["category_id"]].get("isthing")
            ):
                report.add(
                    path,
                    sw,
                    "isthing",
                    s["isthing"],
                    f"disagrees with category {s['category_id']}'s isthing",
                    img_id,
                )
            if s.get("iscrowd", 0) not in (0, 1, True, False):
                report.add(path, sw, "iscrowd", s.get("iscrowd"), "must be 0 or 1", img_id)
    for img_id in images:
        if img_id not in seen:
            report.add(
                path,
                f"image {img_id}",
                "annotations",
                "<none>",
                "no panoptic annotation for this image (it would be dropped)",
                img_id,
            )
    return True


def check_image_file(
    path: str, hw: Optional[Tuple[int, int]], report, sample, opts, source: str = ""
) -> Optional[Tuple[int, int]]:
    """Decode fully (as training will, 16-bit rule included) and compare the size with the
    JSON's; returns the decoded (height, width), None if unreadable."""
    try:
        img, notes = load_image(path, opts.bit_depth)
    except InputError as e:
        report.add(
            path,
            f"image {sample!r}" if sample is not None else "",
            "file_name",
            os.path.basename(path),
            str(e).replace(f"{path}: ", ""),
            sample,
        )
        return None
    for n in notes:
        report.note(n, os.path.basename(path))
    if hw is not None and None not in hw and (img.height, img.width) != tuple(hw):
        report.add(
            source or path,
            f"image {sample!r}",
            "height/width",
            list(hw),
            f"{path} is {img.height}x{img.width} (height x width, after EXIF orientation)",
            sample,
        )
    return img.height, img.width


def check_label_file(path: str, hw, report, sample, num_classes: int, ignore_label: int) -> None:
    """A semantic label PNG: one channel (palette = indices), size, values < num_classes."""
    try:
        sem = np.load(path) if path.endswith(".npy") else read_label_png(path)
    except (InputError, OSError, ValueError) as e:
        report.add(
            path,
            f"label of {sample!r}",
            "sem_seg_file_name",
            os.path.basename(path),
            str(e).replace(f"{path}: ", ""),
            sample,
        )
        return
    if hw is not None and tuple(sem.shape[:2]) != tuple(hw):
        report.add(
            path,
            f"label of {sample!r}",
            "size",
            list(sem.shape[:2]),
            f"differs from the image's {list(hw)} (height, width)",
            sample,
        )
    if num_classes:
        bad = (sem >= num_classes) & (sem != ignore_label)
        if bad.any():
            vals = sorted(np.unique(sem[bad]).tolist())
            report.add(
                path,
                f"label of {sample!r}",
                "value",
                vals[:5],
                f">= the {num_classes} classes and not the ignore label {ignore_label}",
                sample,
            )


def check_panoptic_file(path: str, hw, segments: List[Dict], report, sample, source: str) -> None:
    """A panoptic PNG against its ``segments_info``: RGB mode, size, the same segment ids."""
    try:
        ids = read_panoptic_png(path)
    except InputError as e:
        report.add(
            path,
            f"image {sample!r}",
            "pan_seg_file_name",
            os.path.basename(path),
            str(e).replace(f"{path}: ", ""),
            sample,
        )
        return
    if hw is not None and tuple(ids.shape) != tuple(hw):
        report.add(
            path,
            f"image {sample!r}",
            "size",
            list(ids.shape),
            f"differs from the image's {list(hw)} (height, width)",
            sample,
        )
    in_png = set(np.unique(ids).tolist()) - {0}
    in_json = {s.get("id") for s in segments if isinstance(s, dict)}
    only_png, only_json = sorted(in_png - in_json), sorted(in_json - in_png)
    if only_png:
        report.add(
            source,
            f"image {sample!r}",
            "segments_info",
            only_png[:5],
            f"segment id(s) in {os.path.basename(path)} but not in the JSON",
            sample,
        )
    if only_json:
        report.add(
            source,
            f"image {sample!r}",
            "segments_info",
            only_json[:5],
            f"segment id(s) in the JSON but not in {os.path.basename(path)} (no pixels)",
            sample,
        )


def check_dataset_dicts(dicts: List[Dict], report, meta, opts, source: str = "") -> None:
    """The files of Detectron2 dataset dicts: image, ``sem_seg_file_name`` (values checked
    against the metadata's ``stuff_classes``), ``pan_seg_file_name`` + ``segments_info``."""
    report.num_samples = len(dicts)
    if not dicts:
        report.add(source or report.dataset, "", "", 0, "the dataset has no samples")
        return
    if not opts.check_files:
        return
    num_classes = len(meta.get("stuff_classes", []) or [])
    ignore = meta.get("ignore_label", 255)
    for d in dicts:
        sample = d.get("image_id", d.get("file_name"))
        hw = (d["height"], d["width"]) if "height" in d and "width" in d else None
        hw = (
            check_image_file(d["file_name"], hw, report, sample, opts, source)
            if hw is None
            else (check_image_file(d["file_name"], hw, report, sample, opts, source) and hw)
        )
        if "sem_seg_file_name" in d and os.path.exists(d["sem_seg_file_name"]):
            check_label_file(d["sem_seg_file_name"], hw, report, sample, num_classes, ignore)
        elif "sem_seg_file_name" in d:
            report.add(
                d["sem_seg_file_name"],
                f"image {sample!r}",
                "sem_seg_file_name",
                os.path.basename(d["sem_seg_file_name"]),
                "label file not found",
                sample,
            )
        if "pan_seg_file_name" in d:
            check_panoptic_file(
                d["pan_seg_file_name"],
                hw,
                d.get("segments_info", []),
                report,
                sample,
                source or d["pan_seg_file_name"],
            )
