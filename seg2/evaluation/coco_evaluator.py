"""Seg2COCOEvaluator: exact COCO box and mask AP (:mod:`seg2.evaluation.coco`) of a model's
``instances``, as a Detectron2 ``DatasetEvaluator``."""
import itertools
import logging
import os
from typing import Dict, List, Optional, Sequence

import torch
from detectron2.evaluation import DatasetEvaluator

from ..io import InputError, atomic_open, read_json, write_json
from ..structures.panoptic import invert_id_map
from .coco import (
    COCO_METRICS,
    default_backend,
    evaluate_coco_results,
    load_coco_gt,
)
from .gather import gather_on_main

__all__ = ["Seg2COCOEvaluator"]

logger = logging.getLogger(__name__)


class Seg2COCOEvaluator(DatasetEvaluator):
    """COCO box and mask AP of a model's ``instances``, computed exactly by
    :func:`evaluate_coco_results` (faster-coco-eval, or pycocotools).

    Same constructor, outputs (``coco_instances_results.json`` with the dataset's original
    category ids, ``instances_predictions.pth``) and result keys as Detectron2's
    ``COCOEvaluator``, built on Detectron2's public pieces (``instances_to_coco_json``,
    ``convert_to_coco_json``) instead of its private evaluation method. Every rank must call
    :meth:`evaluate` (it gathers); results come on the main process only.
    """

    def __init__(
        self,
        dataset_name: str,
        tasks: Optional[Sequence[str]] = None,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        *,
        max_dets_per_image: Optional[int] = None,
        use_fast_impl: bool = True,
        **_ignored,
    ):
        """
        Args:
            dataset_name: a registered dataset; its metadata's ``json_file`` is the ground
                truth (written from the dataset dicts when missing, as Detectron2 does).
            tasks: ("bbox",), ("segm",) or both; default: what the predictions carry.
            distributed: gather predictions from all ranks before scoring.
            output_dir: where the results JSON and predictions are written.
            max_dets_per_image: COCOeval's largest ``maxDets`` (default 100).
            use_fast_impl: faster-coco-eval when installed (exact); False = pycocotools.
        """
        from detectron2.data import MetadataCatalog

        self._dataset_name = dataset_name
        self._metadata = MetadataCatalog.get(dataset_name)
        self._tasks = tuple(tasks) if tasks else None
        self._distributed = distributed
        self._output_dir = output_dir
        self._max_dets = None if max_dets_per_image is None else [1, 10, max_dets_per_image]
        self._backend = default_backend() if use_fast_impl else "pycocotools"
        self._coco_gt = None
        self._predictions: List[Dict] = []

    def reset(self) -> None:
        self._predictions = []

    def process(self, inputs: List[Dict], outputs: List[Dict]) -> None:
        from detectron2.evaluation.coco_evaluation import instances_to_coco_json

        for inp, out in zip(inputs, outputs):
            if "instances" in out:
                inst = out["instances"].to("cpu")
                self._predictions.append(
                    {
                        "image_id": inp["image_id"],
                        "instances": instances_to_coco_json(inst, inp["image_id"]),
                    }
                )

    def _ground_truth(self):
        if self._coco_gt is None:
            json_file = self._metadata.get("json_file", None)
            if not json_file or not os.path.isfile(json_file):
                from detectron2.data.datasets.coco import convert_to_coco_json

                name = f"{self._dataset_name}_coco_format.json"
                json_file = os.path.join(self._output_dir or ".", name)
                convert_to_coco_json(self._dataset_name, json_file)
            self._coco_gt = load_coco_gt(read_json(json_file, "COCO ground-truth"), self._backend)
        return self._coco_gt

    def evaluate(self, img_ids: Optional[Sequence[int]] = None):
        predictions = gather_on_main(self._predictions, self._distributed)
        if predictions is None:
            return None
        if not predictions:
            raise InputError(
                f"[Seg2COCOEvaluator] dataset '{self._dataset_name}': no image was evaluated "
                "(the dataset is empty)"
            )
        if self._output_dir:
            os.makedirs(self._output_dir, exist_ok=True)
            path = os.path.join(self._output_dir, "instances_predictions.pth")
            with atomic_open(path, "wb") as f:
                torch.save(predictions, f)

        results = list(itertools.chain(*[p["instances"] for p in predictions]))
        reverse = invert_id_map(self._metadata.get("thing_dataset_id_to_contiguous_id", None))
        if reverse:
            for r in results:
                if r["category_id"] not in reverse:
                    raise ValueError(
                        f"A prediction has class {r['category_id']}, but dataset "
                        f"classes are 0..{len(reverse) - 1}"
                    )
                r["category_id"] = reverse[r["category_id"]]
        if self._output_dir:
            path = os.path.join(self._output_dir, "coco_instances_results.json")
            logger.info(f"Saving results to {path}")
            write_json(results, path, indent=None)

        gt = self._ground_truth()
        with_masks = any("segmentation" in r for r in results) or (
            not results and any("segmentation" in a for a in gt.dataset["annotations"])
        )
        tasks = self._tasks or (("bbox", "segm") if with_masks else ("bbox",))
        if img_ids is None:  # the images run, so skipped or chunked sets score what was seen
            img_ids = sorted({p["image_id"] for p in predictions})
        logger.info(f"Evaluating predictions with {self._backend} (exact COCO AP) ...")
        per_task = evaluate_coco_results(
            gt,
            results,
            tasks,
            class_names=self._metadata.get("thing_classes", None),
            backend=self._backend,
            max_dets_per_image=self._max_dets,
            img_ids=img_ids,
        )
        for task, res in per_task.items():
            logger.info(
                f"Evaluation results for {task}: "
                + ", ".join(f"{k}={v:.3f}" for k, v in res.items() if k in COCO_METRICS)
            )
        return per_task
