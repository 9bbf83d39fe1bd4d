"""Prediction overlays: ground truth beside prediction, per image and as one overview grid."""

import logging
import os
from typing import Dict, List

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.catalog import Metadata
from detectron2.utils.visualizer import ColorMode, Visualizer

from ..data.dataset_mapper import Seg2DatasetMapper
from ..io import BitDepthRule, read_image, read_panoptic_png, write_png

__all__ = [
    "draw_prediction",
    "save_prediction_overlays",
    "with_class_colors",
    "draw_legend",
    "draw_outputs",
    "draw_primary",
]

logger = logging.getLogger(__name__)


def _label(canvas: np.ndarray, text: str) -> np.ndarray:
    """Put a caption strip above a panel so the overview explains itself."""
    import cv2

    strip = np.full((18, canvas.shape[1], 3), 255, dtype=np.uint8)
    cv2.putText(strip, text, (3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([strip, canvas], axis=0)


def draw_prediction(
    image_rgb: np.ndarray,
    record: Dict,
    output: Dict,
    metadata,
    scale: float = 2.0,
    score_thresh: float = 0.5,
) -> np.ndarray:
    """Panels [ground truth, one per predicted output key] side by side.

    Args:
        image_rgb: (H, W, 3) uint8.
        record: the dataset dict (ground truth is drawn from it).
        output: the model's output for the image (``instances``/``sem_seg``/``panoptic_seg``).
        metadata: the dataset's metadata (class names and colours).
    Returns:
        (H', W', 3) uint8 picture.
    """
    mode = ColorMode.IMAGE
    vis = Visualizer(image_rgb, metadata, scale=scale, instance_mode=mode)
    if "pan_seg_file_name" in record and metadata.get("thing_classes", None) is not None:
        # Detectron2's draw_dataset_dict needs panopticapi for this; decode the PNG ourselves.
        ids = read_panoptic_png(record["pan_seg_file_name"])
        gt = vis.draw_panoptic_seg(
            torch.from_numpy(ids), [dict(s) for s in record["segments_info"]]
        )
    else:  # semantic-only metadata: draw the label PNG
        gt = vis.draw_dataset_dict({k: v for k, v in record.items() if k != "pan_seg_file_name"})
    panels = [_label(gt.get_image(), "ground truth")]
    if "panoptic_seg" in output:
        seg, info = output["panoptic_seg"]
        vis = Visualizer(image_rgb, metadata, scale=scale, instance_mode=mode)
        panels.append(_label(vis.draw_panoptic_seg(seg.cpu(), info).get_image(), "panoptic"))
    if "sem_seg" in output:
        vis = Visualizer(image_rgb, metadata, scale=scale, instance_mode=mode)
        sem = output["sem_seg"].argmax(dim=0).cpu()
        panels.append(_label(vis.draw_sem_seg(sem, alpha=0.6).get_image(), "semantic"))
    if "instances" in output:
        inst = output["instances"].to("cpu")
        inst = inst[inst.scores >= score_thresh]
        vis = Visualizer(image_rgb, metadata, scale=scale, instance_mode=mode)
        panels.append(
            _label(
                vis.draw_instance_predictions(inst).get_image(),
                f"instances (score>={score_thresh})",
            )
        )
    h = max(p.shape[0] for p in panels)
    panels = [np.pad(p, ((0, h - p.shape[0]), (0, 4), (0, 0)), constant_values=255) for p in panels]
    return np.concatenate(panels, axis=1)


@torch.no_grad()
def save_prediction_overlays(
    cfg: CfgNode, model: torch.nn.Module, dataset_name: str, output_dir: str, num: int
) -> List[str]:
    """Run the model on the first ``num`` images of a dataset and save overlays.

    Writes ``<output_dir>/<stem>.png`` per image and ``<output_dir>/overview.png`` (all rows).
    Returns the written paths.
    """
    if num <= 0:
        return []
    os.makedirs(output_dir, exist_ok=True)
    metadata = MetadataCatalog.get(dataset_name)
    mapper = Seg2DatasetMapper(cfg, False)
    was_training = model.training
    model.eval()
    rows, paths = [], []
    for record in DatasetCatalog.get(dataset_name)[:num]:
        output = model([mapper(record)])[0]
        # seg2's reader, as in training: 16-bit tiles are scaled by INPUT.SEG2.BIT_DEPTH.
        image = read_image(record["file_name"], "RGB", BitDepthRule.from_cfg(cfg))
        picture = draw_prediction(image, record, output, metadata)
        path = os.path.join(
            output_dir, os.path.splitext(os.path.basename(record["file_name"]))[0] + ".png"
        )
        write_png(picture, path)
        rows.append(picture)
        paths.append(path)
    model.train(was_training)
    width = max(r.shape[1] for r in rows)
    grid = np.concatenate(
        [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    )
    overview = os.path.join(output_dir, "overview.png")
    write_png(grid, overview)
    logger.info(f"Wrote {len(paths)} prediction overlays and {overview}")
    return paths + [overview]


# ---------------------------------------------------------------------------------------------
# Overlays of predictions on the user's own images (tools/predict.py): no ground truth.


def with_class_colors(metadata) -> Metadata:
    """``metadata`` with ``stuff_colors``/``thing_colors`` filled in (Detectron2's colormap)
    where the dataset gives none, so a legend shows the colours the Visualizer paints."""
    from detectron2.utils.colormap import colormap

    values = metadata.as_dict()
    palette = colormap(rgb=True, maximum=255).astype(int).tolist()
    for names, colors in (("stuff_classes", "stuff_colors"), ("thing_classes", "thing_colors")):
        n = len(values.get(names) or [])
        if n and len(values.get(colors) or []) < n:
            values[colors] = [palette[i % len(palette)] for i in range(n)]
    return Metadata(**values)


def draw_legend(width: int, names: List[str], colors: List, font_scale: float = 0.4) -> np.ndarray:
    """A white strip of ``width`` pixels listing a colour swatch and name per class,
    wrapped into rows; (H, width, 3) uint8."""
    import cv2

    row_h, swatch, pad = 16, 10, 6
    rows: List[List] = [[]]
    x = pad
    for name, color in zip(names, colors):
        w = swatch + 4 + cv2.getTextSize(name, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)[0][0] + pad
        if x + w > width and rows[-1]:
            rows.append([])
            x = pad
        rows[-1].append((x, name, color))
        x += w
    strip = np.full((row_h * len(rows) + 4, width, 3), 255, dtype=np.uint8)
    for r, row in enumerate(rows):
        y = 2 + r * row_h
        for x, name, color in row:
            c = tuple(int(v) for v in color)
            cv2.rectangle(strip, (x, y + 3), (x + swatch, y + 3 + swatch), c, -1)
            cv2.putText(
                strip,
                name,
                (x + swatch + 4, y + 12),
                cv2.FONT_HERSHEY_SIMPLEX,
                font_scale,
                (0, 0, 0),
                1,
                cv2.LINE_AA,
            )
    return strip


def _panel(
    kind: str, image_rgb: np.ndarray, output: Dict, metadata, score_thresh: float
) -> np.ndarray:
    vis = Visualizer(image_rgb, metadata, scale=1.0, instance_mode=ColorMode.IMAGE)
    if kind == "panoptic_seg":
        seg, info = output["panoptic_seg"]
        return vis.draw_panoptic_seg(seg.cpu(), info).get_image()
    if kind == "sem_seg":
        labels = output["sem_seg"].argmax(dim=0).cpu()
        picture = vis.draw_sem_seg(labels, alpha=0.6).get_image()
        legend = draw_legend(picture.shape[1], metadata.stuff_classes, metadata.stuff_colors)
        return np.concatenate([picture, legend], axis=0)
    inst = output["instances"].to("cpu")
    inst = inst[inst.scores >= score_thresh]
    return vis.draw_instance_predictions(inst).get_image()


_ORDER = ("panoptic_seg", "sem_seg", "instances")
_TITLES = {"panoptic_seg": "panoptic", "sem_seg": "semantic", "instances": "instances"}


def draw_outputs(
    image_rgb: np.ndarray, output: Dict, metadata, score_thresh: float = 0.5
) -> np.ndarray:
    """One captioned panel per output the model gave, side by side: panoptic (things and
    stuff), semantic (class colours + legend), instances (masks, boxes, class, score >=
    ``score_thresh``). ``metadata`` should come from :func:`with_class_colors`.

    Returns:
        (H', W', 3) uint8 RGB picture.
    """
    panels = []
    for kind in _ORDER:
        if kind in output:
            title = _TITLES[kind] + (f" >={score_thresh:g}" if kind == "instances" else "")
            panels.append(_label(_panel(kind, image_rgb, output, metadata, score_thresh), title))
    h = max(p.shape[0] for p in panels)
    panels = [np.pad(p, ((0, h - p.shape[0]), (0, 4), (0, 0)), constant_values=255) for p in panels]
    return np.concatenate(panels, axis=1)[:, :-4]


def draw_primary(
    image_rgb: np.ndarray, output: Dict, metadata, score_thresh: float = 0.5
) -> np.ndarray:
    """The one most complete overlay (panoptic, else semantic with legend, else instances),
    uncaptioned: a video frame. Its size depends only on the frame size and the classes."""
    kind = next(k for k in _ORDER if k in output)
    return _panel(kind, image_rgb, output, metadata, score_thresh)
