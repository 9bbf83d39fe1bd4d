"""Every file seg2 reads or writes goes through here, so training, evaluation, tools and the
generator read one file the same way, and every bad input raises one error type whose
message names the file (and the field).

Readers: :func:`read_json`, :func:`read_image` (Detectron2's conventions: EXIF orientation,
``INPUT.FORMAT`` modes), :func:`read_label_png` (class ids; palette PNGs give their indices,
never a luminance), :func:`read_panoptic_png` (COCO panoptic ids). Writers are atomic
(temporary file + ``os.replace``), so a killed process never leaves a torn file behind.
"""
import contextlib
import json
import os
import tempfile
from typing import IO, Any, Iterator, Optional

import numpy as np
from PIL import Image

from .structures.panoptic import rgb2id

__all__ = [
    "InputError",
    "read_json",
    "open_image",
    "read_image",
    "read_label_png",
    "read_panoptic_png",
    "atomic_open",
    "write_json",
    "write_png",
    "image_conversion_note",
]


class InputError(ValueError):
    """Bad user input (a data file, a config value, a path).

    The message names the file and, where known, the field or id. Command-line tools print
    it as one line without a traceback; everything else is an internal error.
    """


def read_json(path: str, what: str = "JSON") -> Any:
    """Parse a JSON file; a missing, non-UTF-8 or malformed file raises InputError naming it."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: {what} file not found")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise InputError(
            f"{path}: malformed {what} at line {e.lineno} column {e.colno}: {e.msg}"
        ) from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: {what} is not UTF-8 text ({e.reason})") from None


def open_image(path: str, what: str = "image") -> Image.Image:
    """Open and fully decode an image file (a truncated or corrupt payload fails here, not
    as a half-black image later); errors name the file."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: {what} file not found")
    try:
        img = Image.open(path)
        img.load()
    except Exception as e:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError)
        raise InputError(f"{path}: unreadable {what} ({type(e).__name__}: {e})") from None
    return img


def read_image(path: str, format: Optional[str] = None) -> np.ndarray:
    """An image as Detectron2's ``read_image`` returns it: EXIF orientation applied, then
    converted to ``format`` ("BGR", "RGB", "L", ... or None for the file's own mode).

    Returns:
        (H, W, C) uint8 array (C = 1 for "L").
    """
    from detectron2.data.detection_utils import _apply_exif_orientation, convert_PIL_to_numpy

    img = open_image(path)
    try:
        img = _apply_exif_orientation(img)
        return convert_PIL_to_numpy(img, format)
    except Exception as e:
        raise InputError(f"{path}: cannot convert image ({type(e).__name__}: {e})") from None


def read_label_png(path: str, what: str = "label") -> np.ndarray:
    """A single-channel label image (8- or 16-bit) as an (H, W) integer array of class ids.

    Palette (P-mode) PNGs give their indices, which is how label maps are usually stored;
    a multi-channel (RGB/RGBA) file is refused rather than guessed at.
    """
    img = open_image(path, f"{what} PNG")
    if img.mode not in ("L", "P", "I;16", "I;16B", "I;16L", "I", "1"):
        raise InputError(
            f"{path}: {what} PNG must have one channel of class ids, got mode {img.mode!r}"
        )
    arr = np.asarray(img)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    return arr


def read_panoptic_png(path: str, what: str = "panoptic") -> np.ndarray:
    """A COCO panoptic PNG as (H, W) int64 segment ids (R + 256 G + 256^2 B; 0 = void)."""
    img = open_image(path, f"{what} PNG")
    if img.mode not in ("RGB", "RGBA"):
        raise InputError(
            f"{path}: {what} PNG has mode {img.mode}; COCO panoptic PNGs are RGB "
            "(id = R + 256 G + 256^2 B)"
        )
    return rgb2id(np.asarray(img.convert("RGB")))


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file beside ``path`` and move it over ``path`` only once it was
    written completely (flushed and fsynced); on error the temporary file is removed."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_json(obj: Any, path: str, indent: Optional[int] = 2) -> str:
    """Write JSON atomically (numpy scalars become floats); returns ``path``."""
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=indent, default=float)
    return path


def write_png(array: np.ndarray, path: str) -> str:
    """Write an array as a PNG atomically; returns ``path``."""
    with atomic_open(path, "wb") as f:
        Image.fromarray(np.asarray(array)).save(f, format="PNG")
    return path


# ---- hook for tools/predict.py (issue 11): which conversion read_image will apply, so the
# caller can log it. Reads the header only; read_image stays the one place that converts.
_MODE_NOTES = {
    "1": "1-bit",
    "L": "grayscale",
    "LA": "grayscale with alpha",
    "P": "palette",
    "PA": "palette with alpha",
    "RGBA": "RGBA (alpha dropped)",
    "CMYK": "CMYK",
    "I;16": "16-bit grayscale",
    "I;16B": "16-bit grayscale",
    "I;16L": "16-bit grayscale",
    "I": "32-bit integer",
    "F": "32-bit float",
}


def image_conversion_note(path: str) -> Optional[str]:
    """A short note ("16-bit grayscale (I;16)") when ``path`` is not plain 8-bit RGB and
    :func:`read_image` will convert it; None for RGB or an unreadable header (the read that
    follows reports that)."""
    try:
        with Image.open(path) as img:
            mode = img.mode
    except Exception:
        return None
    if mode in ("RGB", "YCbCr"):
        return None
    return f"{_MODE_NOTES.get(mode, 'non-RGB')} ({mode})"
