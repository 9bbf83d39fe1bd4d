"""Prediction results in the standard formats, readable as they are by ``tools/evaluate.py``,
pycocotools and panopticapi-style tools:

* ``sem_seg/<stem>.png``: 8-bit (16-bit past 255 classes) label PNG of contiguous class ids,
  the ids of ``stuff_classes``; 255 is the ignore label and never predicted.
* ``panoptic/<stem>.png`` + ``panoptic.json``: COCO panoptic (``file_name`` = ``<stem>.png``,
  ``segments_info`` with the dataset's category ids, ``isthing``, ``area``, ``bbox``).
* ``instances.json``: a COCO results list (``image_id``, dataset ``category_id``, ``bbox``
  XYWH, RLE ``segmentation``, ``score``), the file pycocotools' ``loadRes`` takes.
* ``images.json``: ``{"images": [{id, file_name (the input path), height, width}]}``, the
  map from image ids to input files (COCO results lists have no room for it; the same list
  is ``panoptic.json``'s ``images``).
"""

import os
from typing import Dict, List, Optional

import numpy as np
import torch

from ..io import write_json, write_png
from ..structures.panoptic import (
    VOID,
    dataset_category,
    id2rgb,
    invert_id_map,
    segments_from_labels,
)

__all__ = ["ResultWriter", "dataset_categories"]


def dataset_categories(metadata) -> List[Dict]:
    """COCO ``categories`` (``id``, ``name``, ``isthing``, ``color``) from Detectron2 metadata:
    things from ``thing_dataset_id_to_contiguous_id``, stuff from
    ``stuff_dataset_id_to_contiguous_id`` (which may also list the things)."""
    things = invert_id_map(metadata.get("thing_dataset_id_to_contiguous_id", None))
    stuff = invert_id_map(metadata.get("stuff_dataset_id_to_contiguous_id", None))
    cats: Dict[int, Dict] = {}
    for table, names_key, colors_key, isthing in (
        (stuff, "stuff_classes", "stuff_colors", 0),
        (things, "thing_classes", "thing_colors", 1),
    ):
        names = metadata.get(names_key, None) or []
        colors = metadata.get(colors_key, None) or []
        for contiguous, dataset_id in table.items():
            cat = {
                "id": dataset_id,
                "name": names[contiguous] if contiguous < len(names) else str(dataset_id),
                "isthing": isthing,
            }
            if contiguous < len(colors):
                cat["color"] = [int(c) for c in colors[contiguous]]
            cats[dataset_id] = cat
    return [cats[k] for k in sorted(cats)]


def _bbox_xywh(mask: np.ndarray) -> List[int]:
    ys, xs = np.nonzero(mask)
    return [
        int(xs.min()),
        int(ys.min()),
        int(xs.max() - xs.min() + 1),
        int(ys.max() - ys.min() + 1),
    ]


class ResultWriter:
    """Writes the per-image result files as predictions come in and the JSON files on
    :meth:`close`. Only what the model predicts is written."""

    def __init__(self, output_dir: str, metadata):
        """
        Args:
            output_dir: the run's output folder.
            metadata: the training dataset's metadata (class names, category-id maps,
                ``label_divisor``).
        """
        self.output_dir = output_dir
        self.metadata = metadata
        self._thing_to_dataset = invert_id_map(
            metadata.get("thing_dataset_id_to_contiguous_id", None)
        )
        self._stuff_to_dataset = invert_id_map(
            metadata.get("stuff_dataset_id_to_contiguous_id", None)
        )
        self.images: List[Dict] = []
        self.instances: List[Dict] = []
        self.panoptic: List[Dict] = []
        self._predicts_instances = False

    def add(self, image_id: int, path: str, stem: str, output: Dict) -> None:
        """Record one image's model output (Detectron2's keys, at the image's size)."""
        height = width = None
        if "sem_seg" in output:
            labels = output["sem_seg"].argmax(dim=0).cpu().numpy()
            height, width = labels.shape
            dtype = np.uint8 if output["sem_seg"].shape[0] <= 255 else np.uint16
            write_png(labels.astype(dtype), os.path.join(self.output_dir, "sem_seg", stem + ".png"))
        if "instances" in output:
            self._predicts_instances = True
            inst = output["instances"].to("cpu")
            height, width = inst.image_size
            self.instances += self._coco_results(inst, image_id)
        if "panoptic_seg" in output:
            seg, info = output["panoptic_seg"]
            height, width = seg.shape[-2:]
            self.panoptic.append(self._panoptic(seg, info, image_id, stem))
        self.images.append(
            {"id": image_id, "file_name": path, "height": int(height), "width": int(width)}
        )

    def _coco_results(self, inst, image_id: int) -> List[Dict]:
        from detectron2.evaluation.coco_evaluation import instances_to_coco_json

        results = instances_to_coco_json(inst, image_id)
        for r in results:
            if self._thing_to_dataset:
                r["category_id"] = self._thing_to_dataset[r["category_id"]]
        return results

    def _panoptic(
        self, seg: torch.Tensor, info: Optional[List[Dict]], image_id: int, stem: str
    ) -> Dict:
        ids = seg.cpu().numpy().astype(np.int64)
        if info is None:  # Detectron2's category * label_divisor + instance convention
            ids, info = segments_from_labels(
                ids, self.metadata.label_divisor, self._thing_to_dataset.keys()
            )
        segments = []
        for s in info:
            mask = ids == int(s["id"])
            area = int(mask.sum())
            if area == 0 or int(s["id"]) == VOID:
                continue
            out = {
                "id": int(s["id"]),
                "category_id": dataset_category(s, self._thing_to_dataset, self._stuff_to_dataset),
                "isthing": int(bool(s.get("isthing", False))),
                "iscrowd": 0,
                "area": area,
                "bbox": _bbox_xywh(mask),
            }
            if "score" in s:
                out["score"] = float(s["score"])
            segments.append(out)
        listed = {s["id"] for s in segments}
        ids[~np.isin(ids, list(listed))] = VOID  # pixels of unlisted/empty segments are void
        write_png(id2rgb(ids), os.path.join(self.output_dir, "panoptic", stem + ".png"))
        return {"image_id": image_id, "file_name": stem + ".png", "segments_info": segments}

    def close(self) -> List[str]:
        """Write the JSON files; returns their paths."""
        written = [
            write_json({"images": self.images}, os.path.join(self.output_dir, "images.json"))
        ]
        if self.panoptic:
            written.append(
                write_json(
                    {
                        "images": self.images,
                        "annotations": self.panoptic,
                        "categories": dataset_categories(self.metadata),
                    },
                    os.path.join(self.output_dir, "panoptic.json"),
                )
            )
        if self._predicts_instances:  # also when nothing was detected: an empty list
            written.append(
                write_json(
                    self.instances, os.path.join(self.output_dir, "instances.json"), indent=None
                )
            )
        return written
