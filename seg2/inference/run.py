"""The prediction loop of ``tools/predict.py``: read each input, predict in batches, write
overlays and result files; a file that cannot be read is reported, skipped and counted."""

import logging
import os
from dataclasses import dataclass, field
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from ..io import BitDepthRule, InputError, atomic_open, load_image
from ..utils.visualize import draw_outputs
from .predictor import BatchPredictor
from .writers import ResultWriter

__all__ = ["PredictionSummary", "predict_images", "to_rgb"]

logger = logging.getLogger(__name__)


@dataclass
class PredictionSummary:
    """What a run did: images predicted, files skipped (path, reason), notes per kind."""

    predicted: int = 0
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    converted: dict = field(default_factory=dict)
    written: List[str] = field(default_factory=list)

    def format(self) -> str:
        lines = [f"{self.predicted} image(s) predicted, {len(self.skipped)} skipped"]
        for note, count in sorted(self.converted.items()):
            lines.append(f"  {count} x {note}")
        for path, reason in self.skipped:
            lines.append(f"  skipped {path}: {reason}")
        return "\n".join(lines)


def to_rgb(image: np.ndarray, input_format: str) -> np.ndarray:
    """An image in ``INPUT.FORMAT`` ("BGR", "RGB", "L"...) as RGB for drawing."""
    from detectron2.data.detection_utils import convert_image_to_rgb

    return np.asarray(convert_image_to_rgb(image, input_format))


def _read(path: str, fmt: str, bit_depth: BitDepthRule) -> Tuple[np.ndarray, List[str]]:
    """:func:`seg2.io.read_image`, keeping :func:`seg2.io.load_image`'s conversion notes
    (read_image drops them) so the run can report them."""
    from detectron2.data.detection_utils import convert_PIL_to_numpy

    img, notes = load_image(path, bit_depth)
    try:
        return convert_PIL_to_numpy(img, fmt), notes
    except Exception as e:
        raise InputError(f"{path}: cannot convert image ({type(e).__name__}: {e})") from None


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def predict_images(
    predictor: BatchPredictor,
    paths: Sequence[str],
    stems: Sequence[str],
    image_ids: Sequence[int],
    output_dir: str,
    metadata,
    batch_size: int = 1,
    score_thresh: float = 0.5,
    progress: Optional[Callable] = None,
) -> PredictionSummary:
    """Predict every image and write ``vis/<stem>.jpg`` plus the result files
    (:class:`ResultWriter`) under ``output_dir``.

    Args:
        predictor: the model.
        paths, stems, image_ids: one entry per input file (see :mod:`.inputs`).
        metadata: the training dataset's metadata, with colours (``with_class_colors``).
        batch_size: images per forward pass.
        score_thresh: smallest instance score drawn in the overlays.
        progress: called with the number of images finished after each batch (a progress
            bar's ``update``).

    Returns:
        the run's :class:`PredictionSummary`.
    """
    summary = PredictionSummary()
    writer = ResultWriter(output_dir, metadata)
    fmt = predictor.input_format
    for batch in _batches(list(zip(paths, stems, image_ids)), max(1, batch_size)):
        images, kept = [], []
        for path, stem, image_id in batch:
            try:
                image, notes = _read(path, fmt, predictor.bit_depth)
            except InputError as e:
                logger.error(f"skipping {path}: {e}")
                summary.skipped.append((path, str(e)))
                continue
            images.append(image)
            for note in notes:
                logger.info(f"{path}: {note}")
                summary.converted[note] = summary.converted.get(note, 0) + 1
            kept.append((path, stem, image_id))
        outputs = predictor(images) if images else []
        for image, (path, stem, image_id), output in zip(images, kept, outputs):
            writer.add(image_id, path, stem, output)
            picture = draw_outputs(to_rgb(image, fmt), output, metadata, score_thresh)
            vis_path = os.path.join(output_dir, "vis", stem + ".jpg")
            with atomic_open(vis_path, "wb") as f:
                Image.fromarray(picture).save(f, format="JPEG", quality=90)
        summary.predicted += len(kept)
        if progress is not None:
            progress(len(batch))
    summary.written = writer.close()
    return summary
