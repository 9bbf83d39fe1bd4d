"""Seg2PanopticEvaluator: PQ of a model's ``panoptic_seg`` outputs on a COCO panoptic dataset,
scored by seg2's PQ engine (:mod:`seg2.evaluation.pq`)."""
import contextlib
import copy
import io
import json
import logging
import os
import tempfile
from collections import OrderedDict
from typing import Dict, List, Optional

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from PIL import Image

from ..io import InputError
from ..structures.panoptic import (
    VOID,
    dataset_category,
    id2rgb,
    invert_id_map,
    segments_from_labels,
)
from .gather import gather_on_main
from .pq_files import format_pq_table, load_panoptic_json, panoptic_categories, pq_compute_files

__all__ = ["Seg2PanopticEvaluator"]

logger = logging.getLogger(__name__)


class Seg2PanopticEvaluator(DatasetEvaluator):
    """PQ of a model's ``panoptic_seg`` outputs on a COCO panoptic dataset.

    Like Detectron2's ``COCOPanopticEvaluator`` but with seg2's PQ (no panopticapi), and the
    predictions are kept: PNGs and ``predictions.json`` in COCO panoptic format are written to
    ``output_dir/panoptic_predictions/``, so ``tools/evaluate.py panoptic`` can re-score them.
    Every rank must call :meth:`evaluate` (it gathers); results come on the main process only.
    """

    def __init__(
        self,
        dataset_name: str,
        output_dir: Optional[str] = None,
        distributed: bool = True,
        num_workers: Optional[int] = None,
    ):
        """
        Args:
            dataset_name: a registered dataset whose metadata has ``panoptic_json``,
                ``panoptic_root``, ``thing_dataset_id_to_contiguous_id``,
                ``stuff_dataset_id_to_contiguous_id`` and ``label_divisor``.
            output_dir: where ``panoptic_predictions/`` goes; None = a temporary folder.
            distributed: gather predictions from all ranks before scoring.
            num_workers: see :func:`pq_compute_files`.
        """
        self._dataset_name = dataset_name
        self._metadata = MetadataCatalog.get(dataset_name)
        for key in ("panoptic_json", "panoptic_root"):
            if not self._metadata.get(key, None):
                raise KeyError(f"Dataset '{dataset_name}' metadata lacks '{key}', needed for PQ")
        self._thing_to_dataset = invert_id_map(
            self._metadata.get("thing_dataset_id_to_contiguous_id", {})
        )
        self._stuff_to_dataset = invert_id_map(
            self._metadata.get("stuff_dataset_id_to_contiguous_id", {})
        )
        self._output_dir = output_dir
        self._distributed = distributed
        self._num_workers = num_workers
        self._predictions: List[Dict] = []

    def reset(self) -> None:
        self._predictions = []

    def _to_dataset_category(self, seg: Dict, image_name: str) -> int:
        try:
            return dataset_category(seg, self._thing_to_dataset, self._stuff_to_dataset)
        except KeyError:
            kind = "thing" if bool(seg.get("isthing")) else "stuff"
            raise InputError(
                f"{image_name}: predicted segment {seg['id']} has {kind} category "
                f"{seg['category_id']}, not a contiguous {kind} id of dataset "
                f"'{self._dataset_name}'"
            ) from None

    def process(self, inputs: List[Dict], outputs: List[Dict]) -> None:
        """
        Args:
            inputs: dataset dicts with ``file_name`` and ``image_id``.
            outputs: dicts with ``panoptic_seg = (panoptic_img, segments_info)``: a (H, W) int
                tensor of segment ids (0 = void) and a list of dicts with ``id``,
                ``category_id`` (contiguous), ``isthing`` [and ``score``]; or ``segments_info``
                None and pixels ``category * label_divisor + instance`` (-1 = void).
        """
        for inp, out in zip(inputs, outputs):
            panoptic_img, segments_info = out["panoptic_seg"]
            panoptic_img = panoptic_img.cpu().numpy().astype(np.int64)
            image_name = os.path.basename(inp["file_name"])
            if segments_info is None:
                panoptic_img, segments_info = segments_from_labels(
                    panoptic_img, self._metadata.label_divisor, self._thing_to_dataset
                )
            ids, areas = np.unique(panoptic_img, return_counts=True)
            area_of = dict(zip(ids.tolist(), areas.tolist()))
            listed = {int(s["id"]) for s in segments_info}
            unlisted = sorted(set(area_of) - listed - {VOID})
            if unlisted:
                raise InputError(
                    f"{image_name}: predicted segment id(s) {unlisted} are in panoptic_seg's "
                    "image but not in its segments_info"
                )
            segments = []
            for seg in segments_info:
                sid = int(seg["id"])
                if sid not in area_of:  # listed but fully covered: nothing to score
                    logger.debug(f"{image_name}: dropping empty predicted segment {sid}")
                    continue
                s = {
                    "id": sid,
                    "category_id": self._to_dataset_category(seg, image_name),
                    "area": int(area_of[sid]),
                }
                if "score" in seg:
                    s["score"] = float(seg["score"])
                segments.append(s)
            with io.BytesIO() as buf:
                Image.fromarray(id2rgb(panoptic_img)).save(buf, format="PNG")
                png = buf.getvalue()
            self._predictions.append(
                {
                    "image_id": inp["image_id"],
                    "file_name": os.path.splitext(image_name)[0] + ".png",
                    "png_string": png,
                    "segments_info": segments,
                }
            )

    def evaluate(self) -> Optional[Dict[str, Dict[str, float]]]:
        """
        Returns:
            ``{"panoptic_seg": {PQ, SQ, RQ, PQ_th, ..., RQ_st, PQ-<class>, ...}}`` (percent) on
            the main process, None elsewhere.
        """
        predictions = gather_on_main(self._predictions, self._distributed)
        if predictions is None:
            return None
        if not predictions:
            raise InputError(
                f"[Seg2PanopticEvaluator] dataset '{self._dataset_name}': no image was "
                "evaluated (the dataset is empty)"
            )
        predictions = copy.copy(predictions)

        names = [p["file_name"] for p in predictions]
        if len(set(names)) != len(names):  # same basename in different folders
            predictions = [dict(p, file_name=f"{p['image_id']}.png") for p in predictions]

        gt_json = self._metadata.panoptic_json
        gt = load_panoptic_json(gt_json, "ground-truth")
        image_ids = [p["image_id"] for p in predictions]
        if len(set(image_ids)) != len(image_ids):
            raise InputError(f"'{self._dataset_name}': some images were predicted twice")
        n_gt = len(gt["annotations"])
        if len(image_ids) < n_gt:
            logger.warning(
                f"[Seg2PanopticEvaluator] scoring {len(image_ids)} of the {n_gt} images of "
                f"{gt_json}: the others were not predicted"
            )

        with contextlib.ExitStack() as stack:
            if self._output_dir:
                pred_dir = os.path.join(self._output_dir, "panoptic_predictions")
                os.makedirs(pred_dir, exist_ok=True)
            else:
                pred_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="panoptic_eval"))
            for p in predictions:
                with open(os.path.join(pred_dir, p["file_name"]), "wb") as f:
                    f.write(p["png_string"])
            wanted = set(image_ids)
            pred_json = os.path.join(pred_dir, "predictions.json")
            with open(pred_json, "w") as f:
                json.dump(
                    {
                        "images": [i for i in gt.get("images", []) if i.get("id") in wanted],
                        "categories": gt.get("categories", []),
                        "annotations": [
                            {k: v for k, v in p.items() if k != "png_string"} for p in predictions
                        ],
                    },
                    f,
                )
            logger.info(f"Panoptic predictions written to {pred_dir}")
            results = pq_compute_files(
                gt_json,
                self._metadata.panoptic_root,
                pred_json,
                pred_dir,
                num_workers=self._num_workers,
                image_ids=image_ids,
            )
        logger.info(
            "Panoptic Evaluation Results:\n"
            + format_pq_table(results, panoptic_categories(gt, gt_json))
        )
        return OrderedDict({"panoptic_seg": results})
