"""Checks of the files a dataset dict points at (image, semantic label PNG, panoptic PNG),
behind :mod:`.validate`. Each adds every problem it finds to a
:class:`~.validate.ValidationReport` and returns; none raises on bad data.

Each check is two steps: what is read from the file (its *facts*: size, error, notes,
values; plain data, kept by :class:`~.validation_cache.ValidationCache` between starts) and
what those facts mean against the annotations, worked out at every start. Images are read
from their headers unless ``DATASETS.SEG2.CHECK_FILES`` asks for a full decode; label and
panoptic PNGs, which are annotations, are always decoded.
"""

import os
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..io import InputError, load_image, read_image_header, read_label, read_panoptic_png

__all__ = [
    "image_facts",
    "image_kind",
    "images_per_chunk",
    "label_facts",
    "panoptic_facts",
    "report_image",
    "report_label",
    "report_panoptic",
    "check_image_file",
    "check_label_file",
    "check_panoptic_file",
    "check_dataset_dicts",
    "check_folder",
    "ALL_IGNORE_NOTE",
]

ALL_IGNORE_NOTE = "label with every pixel the ignore label: the image adds no loss and no score"


def _error(path: str, e: Exception) -> str:
    return str(e).replace(f"{path}: ", "")


def image_facts(path: str, opts) -> Dict:
    """{"hw", "error", "notes"} of an image: decoded fully when ``opts.check_files``, else
    read from its headers (:func:`seg2.io.read_image_header`)."""
    try:
        if opts.check_files:
            img, notes = load_image(path, opts.bit_depth)
            hw = [img.height, img.width]
        else:
            (h, w), notes = read_image_header(path, opts.bit_depth)
            hw = [h, w]
    except InputError as e:
        return {"hw": None, "error": _error(path, e), "notes": []}
    return {"hw": hw, "error": None, "notes": notes}


def image_kind(opts) -> str:
    """What :func:`image_facts` reads under ``opts`` (cache entries of one kind)."""
    return "image-full" if opts.check_files else "image-header"


def images_per_chunk(opts) -> int:
    """Images per chunk of reading (:meth:`.validation_cache.ValidationCache.facts`): a
    header takes a fraction of a millisecond to read, a decode tens of milliseconds."""
    return 4 if opts.check_files else 1000


def report_image(
    facts: Dict, path: str, hw, report, sample, source: str = ""
) -> Optional[Tuple[int, int]]:
    """An image's facts against the JSON's (height, width) ``hw``; returns the file's
    (height, width) after EXIF orientation, None if unreadable."""
    if facts["error"] is not None:
        report.add(
            path,
            f"image {sample!r}" if sample is not None else "",
            "file_name",
            os.path.basename(path),
            facts["error"],
            sample,
        )
        return None
    for n in facts["notes"]:
        report.note(n, os.path.basename(path))
    h, w = facts["hw"]
    if hw is not None and None not in hw and (h, w) != tuple(hw):
        report.add(
            source or path,
            f"image {sample!r}",
            "height/width",
            list(hw),
            f"{path} is {h}x{w} (height x width, after EXIF orientation)",
            sample,
        )
    return h, w


def check_image_file(
    path: str, hw: Optional[Tuple[int, int]], report, sample, opts, source: str = ""
) -> Optional[Tuple[int, int]]:
    """Read an image (see :func:`image_facts`) and compare its size with the JSON's; returns
    its (height, width), None if unreadable."""
    return report_image(image_facts(path, opts), path, hw, report, sample, source)


def label_facts(path: str) -> Dict:
    """{"shape", "error", "values"} of a semantic label PNG (its distinct values)."""
    try:
        sem = read_label(path)
    except (InputError, OSError, ValueError) as e:
        return {"shape": None, "error": _error(path, e), "values": []}
    if sem.dtype == np.uint8:  # counting is several times faster than sorting
        values = np.flatnonzero(np.bincount(sem.ravel(), minlength=256))
    else:
        values = np.unique(sem)
    return {"shape": list(sem.shape[:2]), "error": None, "values": values.tolist()}


def report_label(facts: Dict, path: str, hw, report, sample, num_classes: int, ignore_label: int):
    """A label's facts: one channel (palette = indices) of integers, size, values in
    0..num_classes-1 or the ignore label; a label all ignore is a note."""
    where = f"label of {sample!r}"
    if facts["error"] is not None:
        report.add(
            path, where, "sem_seg_file_name", os.path.basename(path), facts["error"], sample
        )
        return
    if hw is not None and tuple(facts["shape"]) != tuple(hw):
        report.add(
            path,
            where,
            "size",
            list(facts["shape"]),
            f"differs from the image's {list(hw)} (height, width)",
            sample,
        )
    if num_classes:
        vals = [
            v for v in facts["values"] if (v >= num_classes or v < 0) and v != ignore_label
        ]
        if vals:
            report.add(
                path,
                where,
                "value",
                vals[:5],
                f"not a class id 0..{num_classes - 1} nor the ignore label {ignore_label}",
                sample,
            )
    if not [v for v in facts["values"] if v != ignore_label]:
        report.note(ALL_IGNORE_NOTE, os.path.basename(path))


def check_label_file(path: str, hw, report, sample, num_classes: int, ignore_label: int) -> None:
    """A semantic label PNG: one channel (palette = indices), size, values < num_classes."""
    report_label(label_facts(path), path, hw, report, sample, num_classes, ignore_label)


def panoptic_facts(path: str) -> Dict:
    """{"shape", "error", "ids"} of a panoptic PNG (its segment ids, 0 excluded)."""
    try:
        ids = read_panoptic_png(path)
    except InputError as e:
        return {"shape": None, "error": _error(path, e), "ids": []}
    found = np.unique(ids)
    return {"shape": list(ids.shape), "error": None, "ids": found[found != 0].tolist()}


def report_panoptic(facts: Dict, path: str, hw, segments: List[Dict], report, sample, source):
    """A panoptic PNG's facts against its ``segments_info``: size, the same segment ids."""
    if facts["error"] is not None:
        report.add(
            path,
            f"image {sample!r}",
            "pan_seg_file_name",
            os.path.basename(path),
            facts["error"],
            sample,
        )
        return
    if hw is not None and tuple(facts["shape"]) != tuple(hw):
        report.add(
            path,
            f"image {sample!r}",
            "size",
            list(facts["shape"]),
            f"differs from the image's {list(hw)} (height, width)",
            sample,
        )
    in_png = set(facts["ids"])
    in_json = {s.get("id") for s in segments if isinstance(s, dict)}
    only_png = sorted(in_png - in_json)
    only_json = sorted(in_json - in_png)
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


def check_panoptic_file(path: str, hw, segments: List[Dict], report, sample, source: str) -> None:
    """A panoptic PNG against its ``segments_info``: RGB mode, size, the same segment ids."""
    report_panoptic(panoptic_facts(path), path, hw, segments, report, sample, source)


def check_dataset_dicts(
    dicts: List[Dict], report, meta, opts, source: str = "", cache=None
) -> None:
    """The files of Detectron2 dataset dicts: image, ``sem_seg_file_name`` (values checked
    against the metadata's ``stuff_classes``), ``pan_seg_file_name`` + ``segments_info``.
    ``cache`` (a :class:`~.validation_cache.ValidationCache`) keeps what was read."""
    from .validation_cache import ValidationCache

    report.num_samples = len(dicts)
    if not dicts:
        report.add(source or report.dataset, "", "", 0, "the dataset has no samples")
        return
    cache = cache or ValidationCache(None, [])
    num_classes = len(meta.get("stuff_classes", []) or [])
    ignore = meta.get("ignore_label", 255)
    images = cache.facts(
        image_kind(opts),
        [d["file_name"] for d in dicts],
        lambda p: image_facts(p, opts),
        images_per_chunk(opts),
    )
    labels = cache.facts(
        "label",
        [d["sem_seg_file_name"] for d in dicts if os.path.exists(d.get("sem_seg_file_name", ""))],
        label_facts,
    )
    panoptic = cache.facts(
        "panoptic", [d["pan_seg_file_name"] for d in dicts if "pan_seg_file_name" in d],
        panoptic_facts,
    )
    for d in dicts:
        sample = d.get("image_id", d.get("file_name"))
        hw = (d["height"], d["width"]) if "height" in d and "width" in d else None
        found = report_image(images[d["file_name"]], d["file_name"], hw, report, sample, source)
        hw = found if hw is None else (found and hw)
        if "sem_seg_file_name" in d and d["sem_seg_file_name"] in labels:
            path = d["sem_seg_file_name"]
            report_label(labels[path], path, hw, report, sample, num_classes, ignore)
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
            path = d["pan_seg_file_name"]
            report_panoptic(
                panoptic[path], path, hw, d.get("segments_info", []), report, sample,
                source or path,
            )


def check_folder(folder: str, what: str, report, source: str) -> bool:
    """A root folder the dataset's files are joined to (one line, not one per file)."""
    if os.path.isdir(folder):
        return True
    why = "folder path is a file" if os.path.exists(folder) else "folder not found"
    report.add(source, "", what, folder, why)
    return False
