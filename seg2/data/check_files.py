"""Checks of the files a dataset dict points at (image, semantic label PNG, panoptic PNG),
decoded as training will read them, behind :mod:`.validate`. Each adds every problem it finds
to a :class:`~.validate.ValidationReport` and returns; none raises on bad data."""

import os
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..io import InputError, load_image, not_a_file, read_label, read_panoptic_png

__all__ = [
    "ALL_IGNORE_NOTE",
    "check_image_file",
    "check_label_file",
    "check_panoptic_file",
    "check_dataset_dicts",
    "check_folder",
]

ALL_IGNORE_NOTE = "label with every pixel the ignore label: the image adds no loss and no score"


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


def check_label_file(
    path: str, hw, report, sample, num_classes: int, ignore_label: int
) -> Optional[int]:
    """A semantic label PNG or ``.npy``: one channel (palette = indices) of integers, size,
    values in 0..num_classes-1 or the ignore label. Returns how many pixels carry a class
    (not the ignore label), None if the file is unreadable."""
    try:
        sem = read_label(path)
    except (InputError, OSError, ValueError) as e:
        report.add(
            path,
            f"label of {sample!r}",
            "sem_seg_file_name",
            os.path.basename(path),
            str(e).replace(f"{path}: ", ""),
            sample,
        )
        return None
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
        bad = ((sem >= num_classes) | (sem < 0)) & (sem != ignore_label)
        if bad.any():
            vals = sorted(np.unique(sem[bad]).tolist())
            report.add(
                path,
                f"label of {sample!r}",
                "value",
                vals[:5],
                f"not a class id 0..{num_classes - 1} nor the ignore label {ignore_label}",
                sample,
            )
    labelled = int(np.count_nonzero(sem != ignore_label))
    if labelled == 0:
        report.note(ALL_IGNORE_NOTE, os.path.basename(path))
    return labelled


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
        if "sem_seg_file_name" in d and os.path.isfile(d["sem_seg_file_name"]):
            check_label_file(d["sem_seg_file_name"], hw, report, sample, num_classes, ignore)
        elif "sem_seg_file_name" in d:
            report.add(
                d["sem_seg_file_name"],
                f"image {sample!r}",
                "sem_seg_file_name",
                os.path.basename(d["sem_seg_file_name"]),
                not_a_file(d["sem_seg_file_name"], "label"),
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


def check_folder(folder: str, what: str, report, source: str) -> bool:
    """A root folder the dataset's files are joined to (one line, not one per file)."""
    if os.path.isdir(folder):
        return True
    why = "folder path is a file" if os.path.exists(folder) else "folder not found"
    report.add(source, "", what, folder, why)
    return False
