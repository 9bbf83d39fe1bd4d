"""Evaluation: pure scoring functions (``pq``, ``semantic``'s confusion matrix, ``coco``'s
COCOeval wrapper, Cityscapes' official scripts) and thin Detectron2 ``DatasetEvaluator``
classes over them; ``build_evaluators`` picks them from the dataset's ground truth and what
the model declares it predicts. Offline scoring of saved files shares the same functions."""
from ..io import InputError
from .build import build_evaluators
from .cityscapes_evaluators import (
    Seg2CityscapesInstanceEvaluator,
    Seg2CityscapesPanopticEvaluator,
    Seg2CityscapesSemSegEvaluator,
    build_cityscapes_evaluator,
)
from .coco import evaluate_coco_files
from .coco_evaluator import Seg2COCOEvaluator
from .panoptic import Seg2PanopticEvaluator
from .pq_files import pq_compute_files
from .semantic import ConfusionMatrix, evaluate_semantic_folders, semantic_metrics
from .semantic_evaluator import Seg2SemSegEvaluator

__all__ = [
    "build_evaluators",
    "ConfusionMatrix",
    "InputError",
    "Seg2COCOEvaluator",
    "Seg2CityscapesInstanceEvaluator",
    "Seg2CityscapesPanopticEvaluator",
    "Seg2CityscapesSemSegEvaluator",
    "Seg2PanopticEvaluator",
    "Seg2SemSegEvaluator",
    "build_cityscapes_evaluator",
    "evaluate_coco_files",
    "evaluate_semantic_folders",
    "pq_compute_files",
    "semantic_metrics",
]
