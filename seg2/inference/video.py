"""Annotate a video: frames read with OpenCV, predicted in batches, overlays written to a new
video at the same frame rate."""

import logging
import os
from typing import Callable, Iterator, List, Optional

import numpy as np

from ..io import InputError
from ..utils.visualize import draw_primary
from .predictor import BatchPredictor

__all__ = ["annotate_video", "open_video_writer"]

logger = logging.getLogger(__name__)

# Tried in order; both ship with opencv-python's FFmpeg build (avc1/H.264 does not).
_CODECS = (("mp4v", ".mp4"), ("MJPG", ".avi"))


def open_video_writer(stem_path: str, fps: float, size) -> "tuple":
    """The first codec that opens: returns (cv2.VideoWriter, path written)."""
    import cv2

    for codec, ext in _CODECS:
        path = stem_path + ext
        writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*codec), fps, size)
        if writer.isOpened():
            return writer, path
        writer.release()
    raise RuntimeError(f"{stem_path}: OpenCV can open none of the codecs {[c for c, _ in _CODECS]}")


def _frames(capture, batch_size: int) -> Iterator[List[np.ndarray]]:
    batch = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        batch.append(frame)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def annotate_video(
    predictor: BatchPredictor,
    video_path: str,
    output_dir: str,
    metadata,
    batch_size: int = 1,
    score_thresh: float = 0.5,
    progress: Optional[Callable] = None,
) -> str:
    """Write ``output_dir/<video stem>.mp4`` (or ``.avi``): each frame's overlay (panoptic,
    else semantic with legend, else instances).

    Returns:
        the written path. Raises InputError when OpenCV cannot read the video.
    """
    import cv2

    if not os.path.isfile(video_path):
        raise InputError(f"{video_path}: video file not found (--video-input)")
    capture = cv2.VideoCapture(video_path)
    if not capture.isOpened():
        raise InputError(f"{video_path}: OpenCV cannot read this video (--video-input)")
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    stem = os.path.join(output_dir, os.path.splitext(os.path.basename(video_path))[0])
    os.makedirs(output_dir, exist_ok=True)
    writer, path, n = None, None, 0
    try:
        for frames in _frames(capture, max(1, batch_size)):
            # OpenCV decodes to BGR; the model wants INPUT.FORMAT.
            images = [
                frame if predictor.input_format == "BGR" else frame[:, :, ::-1] for frame in frames
            ]
            for frame, output in zip(frames, predictor(images)):
                picture = draw_primary(frame[:, :, ::-1], output, metadata, score_thresh)
                if writer is None:
                    writer, path = open_video_writer(
                        stem, fps, (picture.shape[1], picture.shape[0])
                    )
                writer.write(np.ascontiguousarray(picture[:, :, ::-1]))
                n += 1
            if progress is not None:
                progress(len(frames))
    finally:
        capture.release()
        if writer is not None:
            writer.release()
    if n == 0:
        raise InputError(f"{video_path}: no frame could be decoded (--video-input)")
    logger.info(f"Wrote {n} annotated frames to {path}")
    return path
