"""Detectron2 evaluators for Cityscapes: they write a model's outputs in the official result
formats (see :mod:`seg2.evaluation.cityscapes`) into a folder every rank shares, and the main
process scores it with the functions there."""
import os
import shutil
import tempfile
from collections import OrderedDict
from typing import Dict, List, Optional

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

from ..data.cityscapes import ensure_panoptic_gt, semantic_metadata
from ..io import write_json, write_png
from ..structures.panoptic import dataset_category, id2rgb, invert_id_map, segments_from_labels
from .cityscapes import (
    cityscapes_stem,
    evaluate_cityscapes_instances,
    evaluate_cityscapes_panoptic,
    evaluate_cityscapes_semantic,
)

__all__ = [
    "Seg2CityscapesInstanceEvaluator",
    "Seg2CityscapesSemSegEvaluator",
    "Seg2CityscapesPanopticEvaluator",
    "build_cityscapes_evaluator",
]



class _CityscapesResultsEvaluator(DatasetEvaluator):
    """Writes one result file set per image into a folder every rank shares
    (``output_dir/<subdir>``, kept for re-scoring, or a temporary folder), which the main
    process scores in :meth:`evaluate`. Needs metadata ``gt_dir`` and the class names."""

    _subdir = "cityscapes_results"

    def __init__(self, dataset_name: str, output_dir: Optional[str] = None):
        self._dataset_name = dataset_name
        self._metadata = MetadataCatalog.get(dataset_name)
        self._output_dir = output_dir
        self._folder: Optional[str] = None
        self._is_temp = False

    def reset(self) -> None:
        if self._output_dir:
            folder = os.path.join(self._output_dir, self._subdir)
            if comm.is_main_process() and os.path.isdir(folder):
                shutil.rmtree(folder)  # stale files would count as extra predictions
        else:  # one temporary folder for all ranks (they share a file system, as in Detectron2)
            folder = tempfile.mkdtemp(prefix="seg2_cityscapes_") if comm.is_main_process() else None
            folder = comm.all_gather(folder)[0]
        comm.synchronize()
        os.makedirs(folder, exist_ok=True)
        self._folder, self._is_temp = folder, not self._output_dir

    @staticmethod
    def _stem(inp: Dict) -> str:
        return os.path.splitext(os.path.basename(inp["file_name"]))[0]

    def _score(self) -> Dict:
        raise NotImplementedError

    def evaluate(self):
        comm.synchronize()
        if comm.get_rank() > 0:
            return None
        try:
            return self._score()
        finally:
            if self._is_temp:
                shutil.rmtree(self._folder, ignore_errors=True)


class Seg2CityscapesInstanceEvaluator(_CityscapesResultsEvaluator):
    """Instance masks in the official format (``<stem>_pred.txt`` + one PNG per instance),
    scored by :func:`evaluate_cityscapes_instances`; returns ``{"segm": {AP, AP50,
    AP-<class>, ...}}``. Needs metadata ``thing_classes`` (Cityscapes names) and ``gt_dir``."""

    _subdir = "cityscapes_instance_results"

    def process(self, inputs: List[Dict], outputs: List[Dict]) -> None:
        from cityscapesscripts.helpers.labels import name2label

        for inp, out in zip(inputs, outputs):
            stem = self._stem(inp)
            lines = []
            if "instances" in out:
                inst = out["instances"].to("cpu")
                for i in range(len(inst)):
                    name = self._metadata.thing_classes[int(inst.pred_classes[i])]
                    png = f"{stem}_{i}_{name}.png"
                    mask = inst.pred_masks[i].numpy().astype(np.uint8) * 255
                    write_png(mask, os.path.join(self._folder, png))
                    lines.append(f"{png} {name2label[name].id} {float(inst.scores[i])}\n")
            with open(os.path.join(self._folder, stem + "_pred.txt"), "w") as f:
                f.writelines(lines)

    def _score(self) -> Dict:
        return OrderedDict(segm=evaluate_cityscapes_instances(self._metadata.gt_dir, self._folder))


class Seg2CityscapesSemSegEvaluator(_CityscapesResultsEvaluator):
    """Argmax classes written as label-id PNGs (``<stem>_pred.png``), scored by
    :func:`evaluate_cityscapes_semantic`; returns ``{"sem_seg": {IoU, iIoU, ..., IoU-<class>,
    iIoU-<class>}}``. The model's ``sem_seg`` channels are the dataset's contiguous ids, mapped
    back with its metadata's ``stuff_dataset_id_to_contiguous_id`` (train ids for the
    ``*_sem_seg`` datasets, things-first ids for ``*_panoptic``)."""

    _subdir = "cityscapes_semantic_results"

    def __init__(self, dataset_name: str, output_dir: Optional[str] = None):
        super().__init__(dataset_name, output_dir)
        # Metadata without the table (Detectron2's cityscapes_fine_sem_seg_*) uses train ids.
        table = self._metadata.get("stuff_dataset_id_to_contiguous_id", None) or (
            semantic_metadata()["stuff_dataset_id_to_contiguous_id"]
        )
        self._lut = np.zeros(256, dtype=np.uint8)  # an id out of the table: "unlabeled" (0)
        for label_id, contiguous in table.items():
            self._lut[contiguous] = label_id

    def process(self, inputs: List[Dict], outputs: List[Dict]) -> None:
        for inp, out in zip(inputs, outputs):
            classes = out["sem_seg"].argmax(dim=0).cpu().numpy()
            pred = self._lut[np.clip(classes, 0, 255).astype(np.uint8)]
            write_png(pred, os.path.join(self._folder, self._stem(inp) + "_pred.png"))

    def _score(self) -> Dict:
        scores = evaluate_cityscapes_semantic(self._metadata.gt_dir, self._folder)
        return OrderedDict(sem_seg=scores)


class Seg2CityscapesPanopticEvaluator(_CityscapesResultsEvaluator):
    """Writes ``outputs[i]["panoptic_seg"]`` in the official format and scores it with
    :func:`evaluate_cityscapes_panoptic`; returns ``{"panoptic_seg": {PQ, SQ, RQ, ...}}``.

    Contiguous category ids are mapped back to Cityscapes label ids with the metadata's
    ``thing_/stuff_dataset_id_to_contiguous_id`` (as Detectron2's ``COCOPanopticEvaluator``
    does); outputs without ``segments_info`` are decoded with ``label_divisor``.
    """

    _subdir = "cityscapes_panoptic_results"

    def __init__(self, dataset_name: str, output_dir: Optional[str] = None):
        super().__init__(dataset_name, output_dir)
        meta = self._metadata
        self._thing_ids = invert_id_map(meta.thing_dataset_id_to_contiguous_id)
        self._stuff_ids = invert_id_map(meta.stuff_dataset_id_to_contiguous_id)
        # Segments without ``isthing``: seg2's panoptic metadata maps every class (things
        # first) in the stuff table, where a thing's id is its thing id.
        self._any_ids = {**self._stuff_ids, **self._thing_ids}
        self._name = os.path.splitext(os.path.basename(meta.panoptic_json))[0]

    def reset(self) -> None:
        super().reset()
        self._annotations: List[Dict] = []
        os.makedirs(os.path.join(self._folder, self._name), exist_ok=True)

    def process(self, inputs: List[Dict], outputs: List[Dict]) -> None:
        """
        Args:
            inputs: records with ``file_name`` (``<city>_<seq>_<frame>_leftImg8bit.png``).
            outputs: each with ``panoptic_seg``: ((H, W) int segment ids, 0 = void, and
                ``segments_info`` with contiguous ``category_id`` and ``isthing``; or None
                with ids ``category * label_divisor + instance`` and -1 = void).
        """
        for inp, out in zip(inputs, outputs):
            seg, segments_info = out["panoptic_seg"]
            seg = seg.cpu().numpy().astype(np.int64)
            if segments_info is None:
                seg, segments_info = segments_from_labels(
                    seg, self._metadata.label_divisor, self._thing_ids
                )
            image_id = cityscapes_stem(inp["file_name"])
            file_name = image_id + "_panoptic.png"
            write_png(id2rgb(seg), os.path.join(self._folder, self._name, file_name))
            present = set(np.unique(seg).tolist())
            segments = [
                {
                    "id": int(s["id"]),
                    "category_id": dataset_category(
                        s, self._thing_ids, self._stuff_ids, self._any_ids
                    ),
                }
                for s in segments_info
                if s["id"] in present  # else fully covered by later segments
            ]
            self._annotations.append(
                {"image_id": image_id, "file_name": file_name, "segments_info": segments}
            )

    def evaluate(self):
        comm.synchronize()
        parts = comm.gather(self._annotations, dst=0)
        if comm.is_main_process():
            write_json(
                {"annotations": [a for part in parts for a in part]},
                os.path.join(self._folder, self._name + ".json"),
                indent=None,
            )
        return super().evaluate()

    def _score(self) -> Dict:
        pred_json = os.path.join(self._folder, self._name + ".json")
        meta = self._metadata
        gt_json, gt_folder = meta.panoptic_json, meta.panoptic_root
        if not os.path.isfile(gt_json):
            root = os.path.dirname(os.path.dirname(gt_json.rstrip("/")))
            gt_json, gt_folder = ensure_panoptic_gt(
                root, self._name.replace("cityscapes_panoptic_", "")
            )
        res = evaluate_cityscapes_panoptic(
            gt_json, gt_folder, pred_json, os.path.join(self._folder, self._name)
        )
        return OrderedDict(panoptic_seg=res)


_EVALUATORS = {
    "instance": Seg2CityscapesInstanceEvaluator,
    "semantic": Seg2CityscapesSemSegEvaluator,
    "panoptic": Seg2CityscapesPanopticEvaluator,
}


def build_cityscapes_evaluator(
    kind: str, dataset_name: str, output_dir: Optional[str] = None
) -> DatasetEvaluator:
    """The Cityscapes evaluator for ``kind`` in ("instance", "semantic", "panoptic")."""
    if kind not in _EVALUATORS:
        raise ValueError(
            f"Unknown Cityscapes evaluator {kind!r}; choose from {sorted(_EVALUATORS)}"
        )
    return _EVALUATORS[kind](dataset_name, output_dir=output_dir)
