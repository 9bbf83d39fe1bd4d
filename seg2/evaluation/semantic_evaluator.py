"""Seg2SemSegEvaluator: the semantic metrics of :mod:`seg2.evaluation.semantic` over a model's
``sem_seg`` outputs, as a Detectron2 ``DatasetEvaluator`` (distributed: confusion matrices
are summed on the main process)."""
import logging
from collections import OrderedDict
from typing import Dict, List, Optional

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils.comm import all_gather, is_main_process, synchronize

from ..io import read_label_png
from .semantic import (
    ConfusionMatrix,
    argmax_channels,
    semantic_metrics,
    write_semantic_outputs,
)

__all__ = ["Seg2SemSegEvaluator"]

logger = logging.getLogger(__name__)


class Seg2SemSegEvaluator(DatasetEvaluator):
    """Detectron2's semantic evaluator with Dice, precision/recall/F1 and a confusion matrix.

    Reads ground truth from each record's ``sem_seg_file_name`` and the model's
    ``outputs[i]["sem_seg"]`` (K, H, W) scores; class names (``stuff_classes``) and the
    ignore label (``ignore_label``) come from the dataset metadata. Writes
    ``sem_seg_confusion.csv`` and ``sem_seg_confusion.png`` to ``output_dir``.
    """

    def __init__(
        self,
        dataset_name: str,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        *,
        num_classes: Optional[int] = None,
        ignore_label: Optional[int] = None,
    ):
        """
        Args:
            dataset_name: a registered dataset whose records have ``sem_seg_file_name``.
            distributed: gather the confusion matrices of all ranks and report on rank 0.
            output_dir: where the confusion CSV/PNG go (None: nothing written).
            num_classes: K, only needed when the metadata lacks ``stuff_classes``; must
                agree with it otherwise.
            ignore_label: overrides the metadata's ``ignore_label`` (default 255).
        """
        self._dataset_name = dataset_name
        self._distributed = distributed
        self._output_dir = output_dir
        meta = MetadataCatalog.get(dataset_name)
        names = meta.get("stuff_classes", None)
        if names is None:
            if num_classes is None:
                raise ValueError(
                    f"Seg2SemSegEvaluator: dataset '{dataset_name}' has no 'stuff_classes' "
                    "metadata; pass num_classes"
                )
            names = [str(i) for i in range(num_classes)]
        elif num_classes is not None and num_classes != len(names):
            raise ValueError(
                f"Seg2SemSegEvaluator: num_classes={num_classes} but dataset '{dataset_name}' "
                f"has {len(names)} stuff_classes"
            )
        self._class_names = list(names)
        self._num_classes = len(names)
        self._ignore_label = (
            ignore_label if ignore_label is not None else meta.get("ignore_label", 255)
        )
        self._gt_files = {
            d["file_name"]: d["sem_seg_file_name"] for d in DatasetCatalog.get(dataset_name)
        }
        # Smallest dtype that holds every class id: less to copy off the GPU.
        self._pred_dtype = torch.uint8 if self._num_classes <= 255 else torch.int32
        self._conf = ConfusionMatrix(self._num_classes, self._ignore_label)

    def reset(self) -> None:
        self._conf.reset()

    def process(self, inputs: List[Dict], outputs: List[Dict]) -> None:
        """
        Args:
            inputs: dataset records, each with ``file_name``.
            outputs: model outputs, each with ``sem_seg``: (K, H, W) scores on any device.
        """
        for inp, out in zip(inputs, outputs):
            scores = out["sem_seg"]
            if scores.dim() != 3 or scores.shape[0] != self._num_classes:
                raise ValueError(
                    f"Seg2SemSegEvaluator: sem_seg output for {inp['file_name']} has shape "
                    f"{tuple(scores.shape)}, expected ({self._num_classes}, H, W)"
                )
            pred = argmax_channels(scores, self._pred_dtype).cpu().numpy()
            gt_path = self._gt_files.get(inp["file_name"])
            if gt_path is None:
                raise KeyError(
                    f"Seg2SemSegEvaluator: {inp['file_name']} is not in dataset "
                    f"'{self._dataset_name}'"
                )
            gt = read_label_png(gt_path, "ground-truth label")
            self._conf.update(
                pred, gt, gt_path, f"sem_seg output for {inp['file_name']}", pred_is_valid=True
            )

    def evaluate(self) -> Optional["OrderedDict[str, Dict[str, float]]"]:
        """Returns ``{"sem_seg": semantic_metrics(...)}`` on the main process, else None."""
        conf = self._conf.matrix
        if self._distributed:
            synchronize()
            matrices = all_gather(conf)
            if not is_main_process():
                return None
            conf = np.sum(matrices, axis=0)
        write_semantic_outputs(conf, self._class_names, self._output_dir)
        results = OrderedDict(sem_seg=semantic_metrics(conf, self._class_names))
        logger.info(
            f"Semantic segmentation metrics of {self._dataset_name}: "
            f"mIoU={results['sem_seg']['mIoU']:.2f}"
        )
        return results
