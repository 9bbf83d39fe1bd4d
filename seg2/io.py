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
from dataclasses import dataclass
from typing import IO, Any, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageOps

try:
    import orjson
except ImportError:  # optional: only faster
    orjson = None

__all__ = [
    "InputError",
    "not_a_file",
    "read_json",
    "open_image",
    "read_image",
    "load_image",
    "read_image_header",
    "BitDepthRule",
    "read_label_png",
    "read_label",
    "read_label_npy",
    "read_panoptic_png",
    "atomic_open",
    "output_folder_problem",
    "write_json",
    "write_png",
]


class InputError(ValueError):
    """Bad user input (a data file, a config value, a path).

    The message names the file and, where known, the field or id. Command-line tools print
    it as one line without a traceback; everything else is an internal error.
    """


def not_a_file(path: str, what: str) -> str:
    """Why ``path`` cannot be read as a file: it is a directory, or it does not exist."""
    if os.path.isdir(path):
        return f"{what} path is a directory, not a file"
    return f"{what} file not found"


# 19 or more digits in a row may be an integer orjson would turn into a float (beyond 64
# bits). Found by mapping every digit to "0" and searching for 19 of them (C speed, unlike
# a regular expression over the whole file).
_DIGITS_TO_ZERO = bytes.maketrans(b"0123456789", b"0" * 10)
_LONG_DIGITS = b"0" * 19


def read_json(path: str, what: str = "JSON") -> Any:
    """Parse a JSON file; a missing, non-UTF-8 or malformed file raises InputError naming it.
    orjson parses when installed (faster); the standard parser takes over for what orjson
    refuses (NaN), for integers beyond 64 bits (orjson reads them as floats, which would
    turn an id into a rounded float) and for the error's line and column."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: {not_a_file(path, what)}")
    with open(path, "rb") as f:
        raw = f.read()
    if orjson is not None and raw.translate(_DIGITS_TO_ZERO).find(_LONG_DIGITS) < 0:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    try:
        return json.loads(raw.decode("utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(
            f"{path}: malformed {what} at line {e.lineno} column {e.colno}: {e.msg}"
        ) from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: {what} is not UTF-8 text ({e.reason})") from None
    except RecursionError:
        raise InputError(f"{path}: {what} is nested too deeply to parse") from None


def _image_error(path: str, what: str, formats: Optional[Sequence[str]], e: Exception):
    """PIL's many error types (UnidentifiedImageError, OSError, SyntaxError, ValueError) as
    one :class:`InputError` naming the file."""
    if isinstance(e, InputError):
        return e
    if isinstance(e, (FileNotFoundError, IsADirectoryError)):
        return InputError(f"{path}: {not_a_file(path, what)}")
    if isinstance(e, Image.UnidentifiedImageError):
        kind = f"a {' or '.join(formats)} file" if formats else "an image format PIL reads"
        return InputError(f"{path}: unreadable {what} (not {kind})")
    return InputError(f"{path}: unreadable {what} ({type(e).__name__}: {e})")


def open_image(path: str, what: str = "image") -> Image.Image:
    """Open and fully decode an image file (a truncated or corrupt payload fails here, not
    as a half-black image later); errors name the file."""
    try:
        img = Image.open(path)
        img.load()
    except Exception as e:
        raise _image_error(path, what, None, e) from None
    return img


# Modes holding more than 8 bits per sample; Detectron2's reader saturates them (a uint16
# aerial tile with values 70-1200 becomes all 255), so they go through a BitDepthRule.
_HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
# What converting each 8-bit mode to RGB does, for the validation report.
_MODE_NOTES = {
    "L": "grayscale (L) image replicated to 3 channels",
    "1": "1-bit image converted to RGB",
    "P": "palette (P) image converted to RGB through its palette",
    "PA": "palette + alpha (PA) image converted to RGB, alpha dropped",
    "LA": "grayscale + alpha (LA) image converted to RGB, alpha dropped",
    "RGBA": "RGBA image converted to RGB, alpha dropped",
    "CMYK": "CMYK image converted to RGB",
    "YCbCr": "YCbCr image converted to RGB",
}


@dataclass(frozen=True)
class BitDepthRule:
    """How an image with more than 8 bits per sample (16-bit PNG/TIFF, 32-bit int or float)
    becomes 8-bit, chosen with ``INPUT.SEG2.BIT_DEPTH.*``:

    * ``"minmax"`` (default): per image, ``(v - min) * 255 / (max - min)``, rounded; a
      constant image becomes 0. Uses the full 8-bit range whatever the sensor's range.
    * ``"percentile"``: the same stretch between the ``percentiles`` (low, high) of the
      image's values, values outside clipped: robust to a few hot pixels.
    * ``"divisor"``: ``floor(v / divisor)`` clipped to 255, the same mapping for every image
      (257 maps 0..65535 onto 0..255; 16 suits 12-bit data).

    The per-image rules change brightness from tile to tile; use ``divisor`` when absolute
    intensity matters across images.
    """

    method: str = "minmax"
    divisor: float = 257.0
    percentiles: Tuple[float, float] = (1.0, 99.0)

    METHODS = ("minmax", "percentile", "divisor")

    def __post_init__(self):
        if self.method not in self.METHODS:
            raise InputError(
                f"INPUT.SEG2.BIT_DEPTH.METHOD: {self.method!r} is not one of {list(self.METHODS)}"
            )
        if self.method == "divisor" and not self.divisor > 0:
            raise InputError(f"INPUT.SEG2.BIT_DEPTH.DIVISOR: must be > 0, got {self.divisor}")
        lo, hi = self.percentiles
        if self.method == "percentile" and not 0 <= lo < hi <= 100:
            raise InputError(
                f"INPUT.SEG2.BIT_DEPTH.PERCENTILES: need 0 <= low < high <= 100, got {[lo, hi]}"
            )

    @classmethod
    def from_cfg(cls, cfg) -> "BitDepthRule":
        """The rule of a config with ``add_seg2_config`` applied."""
        node = cfg.INPUT.SEG2.BIT_DEPTH
        return cls(node.METHOD, float(node.DIVISOR), tuple(float(p) for p in node.PERCENTILES))

    def describe(self) -> str:
        if self.method == "divisor":
            return f"floor(v / {self.divisor:g})"
        if self.method == "percentile":
            low, high = self.percentiles
            return f"per-image stretch between percentiles {low:g}-{high:g}"
        return "per-image min-max stretch"

    def apply(self, values: np.ndarray) -> np.ndarray:
        """(H, W[, C]) array of any numeric dtype -> uint8 of the same shape."""
        v = values.astype(np.float64)
        if self.method == "divisor":
            return np.clip(np.floor(v / self.divisor), 0, 255).astype(np.uint8)
        if self.method == "percentile":
            lo, hi = (float(x) for x in np.percentile(v, self.percentiles))
        else:
            lo, hi = float(v.min()), float(v.max())
        if hi <= lo:
            return np.zeros(v.shape, dtype=np.uint8)
        return np.clip(np.round((v - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


def _read_tiff(path: str, pil_error: Exception) -> np.ndarray:
    """TIFFs PIL cannot decode (e.g. single-band uint16 GeoTIFF tiles), through tifffile."""
    try:
        import tifffile

        return np.asarray(tifffile.imread(path))
    except Exception as e:
        raise InputError(
            f"{path}: unreadable image (PIL: {type(pil_error).__name__}: {pil_error}; "
            f"tifffile: {type(e).__name__}: {e})"
        ) from None


def _array_to_pil(arr: np.ndarray, path: str, rule: BitDepthRule, notes: List[str]) -> Image.Image:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise InputError(
            f"{path}: image has shape {arr.shape}; expected (H, W), (H, W, 3) or (H, W, 4)"
        )
    if arr.dtype != np.uint8:
        notes.append(
            f"{arr.dtype} {'single-band' if arr.ndim == 2 else f'{arr.shape[2]}-band'} "
            f"image scaled to 8 bits by {rule.describe()}"
        )
        arr = rule.apply(arr)
    if arr.ndim == 3 and arr.shape[2] == 4:
        notes.append(_MODE_NOTES["RGBA"])
        arr = arr[:, :, :3]
    return Image.fromarray(np.ascontiguousarray(arr))


def load_image(
    path: str, bit_depth: Optional[BitDepthRule] = None
) -> Tuple[Image.Image, List[str]]:
    """Fully decode an image the way training and evaluation see it, and say what was done.

    EXIF orientation is applied as Detectron2 does; images with more than 8 bits per sample
    are scaled to 8 bits by ``bit_depth`` (default :class:`BitDepthRule`); TIFFs PIL cannot
    decode are read with tifffile.

    Returns:
        (an 8-bit PIL image, notes): one short sentence per conversion, e.g. "uint16
        single-band image scaled to 8 bits by per-image min-max stretch". Mode conversions
        to RGB (grayscale, palette, alpha) are listed too; they happen in :func:`read_image`.
    """
    rule = bit_depth or BitDepthRule()
    notes: List[str] = []
    if not os.path.isfile(path):
        raise InputError(f"{path}: {not_a_file(path, 'image')}")
    try:
        img = open_image(path)
    except InputError as e:
        if os.path.splitext(path)[1].lower() not in (".tif", ".tiff"):
            raise
        return _array_to_pil(_read_tiff(path, e), path, rule, notes), notes
    try:
        exif = img.getexif().get(0x0112, 1) if hasattr(img, "getexif") else 1
        if exif not in (None, 1):  # the transposition Detectron2's reader applies
            img = ImageOps.exif_transpose(img)
    except Exception as e:
        raise InputError(
            f"{path}: cannot apply EXIF orientation ({type(e).__name__}: {e})"
        ) from None
    if exif not in (None, 1):
        notes.append(f"EXIF orientation {exif} applied (as Detectron2 does)")
    if img.mode in _HIGH_BIT_MODES:
        return _array_to_pil(np.asarray(img), path, rule, notes), notes
    if img.mode in _MODE_NOTES:
        notes.append(_MODE_NOTES[img.mode])
    return img, notes


# Chunks after the pixel data that can carry EXIF orientation Detectron2 would apply.
_PNG_LATE_METADATA = (b"eXIf", b"iTXt", b"tEXt", b"zTXt")
# What Detectron2's EXIF transposes do to (height, width): orientations 5-8 swap them.
_EXIF_SWAPS = (5, 6, 7, 8)


def _png_needs_decode(f) -> bool:
    """Walk a PNG's chunk headers (no pixel data is read): True when it does not reach IEND
    (truncated) or has metadata after its pixel data, which only a full read sees."""
    f.seek(8)
    seen_idat = False
    while True:
        head = f.read(8)
        if len(head) < 8:
            return True
        length, kind = int.from_bytes(head[:4], "big"), head[4:]
        if kind == b"IEND":
            return False
        if kind == b"IDAT":
            seen_idat = True
        elif seen_idat and kind in _PNG_LATE_METADATA:
            return True
        f.seek(length + 4, 1)


def _jpeg_needs_decode(f) -> bool:
    """True unless the file ends with the end-of-image marker (else truncated, or data
    appended after the image, which only a full read tells apart)."""
    f.seek(-2, 2)
    return f.read(2) != b"\xff\xd9"


def read_image_header(
    path: str, bit_depth: Optional[BitDepthRule] = None
) -> Tuple[Tuple[int, int], List[str]]:
    """The (height, width) and the notes :func:`load_image` would give, read from the file's
    headers without decoding its pixels: format, size, mode, EXIF orientation; a JPEG or PNG
    that does not end as it should is decoded, as is every other format and any image with
    more than 8 bits per sample, so the answer and the errors are those of a full read."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: {not_a_file(path, 'image')}")
    header = None
    try:
        with open(path, "rb") as f, Image.open(f) as img:
            check = {"JPEG": _jpeg_needs_decode, "PNG": _png_needs_decode}.get(img.format)
            if check is not None and img.mode not in _HIGH_BIT_MODES and not check(f):
                # the base class reads EXIF from the headers; PNG's own method decodes first
                header = Image.Image.getexif(img).get(0x0112, 1), img.size, img.mode
    except Exception:
        header = None
    if header is None:
        img, notes = load_image(path, bit_depth)
        return (img.height, img.width), notes
    exif, (w, h), mode = header
    notes = []
    if exif not in (None, 1):
        notes.append(f"EXIF orientation {exif} applied (as Detectron2 does)")
    if mode in _MODE_NOTES:
        notes.append(_MODE_NOTES[mode])
    return ((w, h) if exif in _EXIF_SWAPS else (h, w)), notes


def read_image(
    path: str, format: Optional[str] = None, bit_depth: Optional[BitDepthRule] = None
) -> np.ndarray:
    """An image as Detectron2's ``read_image`` returns it: EXIF orientation applied, then
    converted to ``format`` ("BGR", "RGB", "L", ... or None for the file's own mode); images
    with more than 8 bits per sample are first scaled by ``bit_depth`` (see
    :class:`BitDepthRule`; Detectron2 would saturate them).

    Returns:
        (H, W, C) uint8 array (C = 1 for "L").
    """
    from detectron2.data.detection_utils import convert_PIL_to_numpy

    img, _ = load_image(path, bit_depth)
    try:
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


def read_label(path: str, what: str = "label") -> np.ndarray:
    """Semantic labels from a label PNG (:func:`read_label_png`) or a ``.npy`` array, the two
    forms a dataset dict's ``sem_seg_file_name`` may name."""
    if path.endswith(".npy"):
        return read_label_npy(path, what)
    return read_label_png(path, what)


def read_label_npy(path: str, what: str = "label") -> np.ndarray:
    """A ``.npy`` label array, held to what a label PNG can hold: (H, W) integer class ids
    (bool read as 0/1). Float labels are refused rather than truncated; value ranges are
    checked against the classes by the dataset validation."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: {not_a_file(path, what + ' array')}")
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise InputError(f"{path}: unreadable {what} array ({type(e).__name__}: {e})") from None
    if not isinstance(arr, np.ndarray) or arr.ndim != 2:
        shape = getattr(arr, "shape", None)
        raise InputError(f"{path}: {what} array has shape {shape}; expected (height, width)")
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise InputError(
            f"{path}: {what} array has dtype {arr.dtype}; class ids must be integers "
            "(as in a label PNG)"
        )
    return arr


def read_panoptic_png(path: str, what: str = "panoptic") -> np.ndarray:
    """A COCO panoptic PNG as (H, W) int64 segment ids (R + 256 G + 256^2 B; 0 = void)."""
    try:
        with Image.open(path, formats=("PNG",)) as img:
            if img.mode not in ("RGB", "RGBA"):
                raise InputError(
                    f"{path}: {what} PNG has mode {img.mode}; COCO panoptic PNGs are RGB "
                    "(id = R + 256 G + 256^2 B)"
                )
            # Each pixel packed into one little-endian 32-bit word: R + 256 G + 256^2 B in the
            # low 24 bits (the fourth byte, padding or alpha, is masked off).
            raw = img.tobytes("raw", "RGBX" if img.mode == "RGB" else "RGBA")
            words = np.frombuffer(raw, dtype="<u4")
            ids = (words & 0xFFFFFF).astype(np.int64).reshape(img.height, img.width)
    except Exception as e:
        raise _image_error(path, f"{what} PNG", ("PNG",), e) from None
    return ids


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file beside ``path`` and move it over ``path`` only once it was
    written completely (flushed and fsynced); on error the temporary file is removed."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the result gets open()'s usual mode
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


def output_folder_problem(path: str) -> Optional[str]:
    """Why ``path`` cannot be (or become) a folder to write into, None if it can: it, or a
    folder it would be created in, is a file, or the nearest existing folder is not
    writable. Checked before a run starts, so it does not fail after its first hour."""
    if not path:
        return "empty path"
    current = os.path.abspath(path)
    while not os.path.exists(current):
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    if not os.path.isdir(current):
        return f"{'' if current == os.path.abspath(path) else current + ' '}is a file"
    if not os.access(current, os.W_OK | os.X_OK):
        return f"{'' if current == os.path.abspath(path) else current + ' '}is not writable"
    return None


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
