"""Checks of COCO JSON behind :mod:`.validate`: what instances and panoptic files share (ids,
top-level fields, images, categories) and the panoptic ``segments_info``; instance
segmentations and boxes are in :mod:`.check_instances`. Each adds every problem it finds to a
:class:`~.validate.ValidationReport` and returns; none raises on bad data."""

import math
import numbers
from collections import Counter
from typing import Dict, List, Tuple

__all__ = [
    "is_int",
    "is_num",
    "check_ids",
    "check_top_level",
    "check_images_json",
    "report_unknown_image",
    "check_categories",
    "check_coco_panoptic_json",
    "check_not_empty",
    "check_stuff_not_crowd",
]


def is_int(v) -> bool:
    """A JSON integer (booleans are not)."""
    return type(v) is int or (isinstance(v, numbers.Integral) and not isinstance(v, bool))


# COCO ids end up in int64 arrays (pycocotools, Detectron2, torch).
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def is_num(v) -> bool:
    """A finite JSON number (booleans are not)."""
    t = type(v)
    if t is int:
        return True
    if t is float:
        return math.isfinite(v)
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def check_ids(items: List, path: str, kind: str, report, sample_of=None) -> set:
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
        if not is_int(v) or not INT64_MIN <= v <= INT64_MAX:
            report.add(
                path,
                f"{kind} #{i}",
                "id",
                v,
                "id must be an integer" if not is_int(v) else "id does not fit in 64 bits",
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


def check_top_level(data, path: str, report) -> bool:
    """A JSON object with the lists 'images', 'annotations' and 'categories'."""
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
    return ok and check_not_empty(data, path, report)


def check_not_empty(data: Dict, path: str, report) -> bool:
    """A COCO file with no image has nothing to train on or score (Detectron2 would stop on
    an assertion); False if so. Files without annotations are refused only for training
    (see ``check_trainable``): scoring them gives NaN with a warning."""
    if not data["images"]:
        report.add(path, "", "images", [], "no images: nothing to train on or score")
        return False
    return True


def check_images_json(images: List, path: str, report) -> Tuple[Dict, Dict]:
    """({id: image} of every image with a valid id, {id: image} of those also usable: size
    fields positive integers and a file name)."""
    ids = check_ids(images, path, "image", report, sample_of=lambda im: im.get("id"))
    known, usable = {}, {}
    for im in images:
        if isinstance(im, dict) and (
            isinstance(im.get("id"), (str, float))
            or (is_int(im.get("id")) and im["id"] not in ids)
        ):
            known.setdefault(im["id"], im)  # reported; references to it are not reported again
        if not isinstance(im, dict) or im.get("id") not in ids or im["id"] in known:
            continue
        known[im["id"]] = im
        where, ok = f"image {im['id']}", True
        for key in ("height", "width"):
            if not (is_int(im.get(key)) and im[key] > 0):
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


def report_unknown_image(img_id, known, path: str, where: str, report) -> None:
    """An annotation's image_id that no image has (ids already reported as malformed in
    'images' are in ``known`` and not reported twice)."""
    if img_id not in known:
        sample = img_id if isinstance(img_id, (int, str)) else None
        report.add(path, where, "image_id", img_id, "not the id of an image in 'images'", sample)


def check_categories(cats: List, path: str, report, panoptic: bool = False) -> Dict:
    """{id: category} of the categories with a valid id; names (and, for panoptic,
    ``isthing``) checked."""
    ids = check_ids(cats, path, "category", report)
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


def check_coco_panoptic_json(data, path: str, report) -> bool:
    """COCO panoptic JSON: image/category ids, one annotation per image, segment ids and
    categories. The PNGs are checked by :func:`check_panoptic_file`. False if unusable."""
    if not check_top_level(data, path, report):
        return False
    known, images = check_images_json(data["images"], path, report)
    cats = check_categories(data["categories"], path, report, panoptic=True)
    seen = Counter()
    for i, a in enumerate(data["annotations"]):
        if not isinstance(a, dict):
            report.add(path, f"annotation #{i}", "", a, "annotation is not a JSON object")
            continue
        img_id = a.get("image_id")
        where = f"annotation of image {img_id!r}"
        if img_id not in images:
            report_unknown_image(img_id, known, path, where, report)
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
        dup_reported = set()
        for s in segs:
            if not isinstance(s, dict):
                report.add(path, where, "segments_info", s, "segment is not a JSON object", img_id)
                continue
            sw = f"segment {s.get('id')!r} of image {img_id}"
            if not (is_int(s.get("id")) and 0 < s["id"] < 256**3):
                report.add(
                    path,
                    sw,
                    "id",
                    s.get("id", "<missing>"),
                    "must be an integer in 1..256^3-1 (R + 256 G + 256^2 B)",
                    img_id,
                )
            elif ids[s["id"]] > 1:
                if s["id"] not in dup_reported:
                    report.add(
                        path, sw, "id", s["id"], f"{ids[s['id']]} segments share this id", img_id
                    )
                dup_reported.add(s["id"])
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
            else:
                check_stuff_not_crowd(s, cats, path, sw, report, img_id)
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


def check_stuff_not_crowd(seg: Dict, cats: Dict, path: str, where: str, report, sample) -> None:
    """COCO panoptic marks only thing segments as crowd: PQ drops crowd segments from
    matching, so a crowd stuff segment would silently vanish from the score."""
    cat = cats.get(seg.get("category_id"))
    if seg.get("iscrowd") and cat is not None and not cat.get("isthing"):
        report.add(
            path,
            where,
            "iscrowd",
            seg["iscrowd"],
            f"category {seg['category_id']} is stuff (isthing 0); only thing segments can be crowd",
            sample,
        )
