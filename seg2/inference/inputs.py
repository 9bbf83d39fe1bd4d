"""Which files a prediction run reads, the output stem of each, and the image ids results
carry (so written results match a ground-truth JSON when the user has one)."""

import glob
import logging
import os
from typing import Dict, List, Optional, Sequence, Tuple

from ..io import InputError, read_json

__all__ = ["IMAGE_EXTENSIONS", "expand_inputs", "unique_stems", "assign_image_ids"]

logger = logging.getLogger(__name__)

# Extensions picked up when a folder is given (a file named explicitly is always tried).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def _folder_images(folder: str) -> List[str]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        found += [
            os.path.join(root, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)
        ]
    return found


def expand_inputs(patterns: Sequence[str]) -> Tuple[List[str], List[str]]:
    """Files named by ``--input``: image files, folders (searched recursively for
    :data:`IMAGE_EXTENSIONS`) and globs (``**`` allowed), in the given order, each once.

    Returns:
        (paths, unmatched patterns). Raises InputError when nothing at all was found.
    """
    paths: List[str] = []
    missing: List[str] = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            found = _folder_images(pattern)
        elif os.path.isfile(pattern):
            found = [pattern]
        else:
            found = []
            for match in sorted(glob.glob(pattern, recursive=True)):
                found += _folder_images(match) if os.path.isdir(match) else [match]
        if not found:
            missing.append(pattern)
        paths += found
    seen, unique = set(), []
    for p in paths:
        key = os.path.abspath(p)
        if key not in seen:
            seen.add(key)
            unique.append(p)
    if not unique:
        raise InputError(f"--input {' '.join(patterns)}: no image files found")
    return unique, missing


def unique_stems(paths: Sequence[str]) -> List[str]:
    """Output stem per input: the file name without extension; a repeated stem (same name in
    two folders, or ``a.jpg`` and ``a.png``) gets ``_2``, ``_3``... in input order."""
    used: Dict[str, int] = {}
    stems = []
    for p in paths:
        stem = os.path.splitext(os.path.basename(p))[0]
        if stem in used:
            used[stem] += 1
            new = f"{stem}_{used[stem]}"
            while new in used:
                used[stem] += 1
                new = f"{stem}_{used[stem]}"
            logger.warning(f"{p}: output name '{stem}' is taken, writing it as '{new}'")
            stem = new
        used.setdefault(stem, 1)
        stems.append(stem)
    return stems


def assign_image_ids(paths: Sequence[str], id_json: Optional[str] = None) -> List[int]:
    """Image id per input: from a COCO JSON's ``images`` (matched by file name, as the
    ground truth names them) when ``id_json`` is given, else 1..N in input order. Inputs the
    JSON lacks get fresh ids above its largest, with a warning."""
    if not id_json:
        return list(range(1, len(paths) + 1))
    data = read_json(id_json, "COCO")
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise InputError(f"{id_json}: field 'images' missing or not a list (--image-ids)")
    by_name: Dict[str, int] = {}
    for i, im in enumerate(images):
        if not isinstance(im, dict) or "id" not in im or "file_name" not in im:
            raise InputError(f"{id_json}: images[{i}] lacks field 'id' or 'file_name'")
        by_name[os.path.basename(str(im["file_name"]))] = im["id"]
    next_id = max([i for i in by_name.values() if isinstance(i, int)], default=0) + 1
    ids = []
    for p in paths:
        name = os.path.basename(p)
        if name in by_name:
            ids.append(by_name[name])
        else:
            logger.warning(f"{p}: not among the images of {id_json}; image_id {next_id}")
            ids.append(next_id)
            next_id += 1
    return ids
