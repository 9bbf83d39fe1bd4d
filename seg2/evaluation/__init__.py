"""Evaluators (Detectron2's DatasetEvaluator interface) and offline scoring of saved predictions."""
from .build import build_evaluators
from .cityscapes import (
    Seg2CityscapesInstanceEvaluator,
    Seg2CityscapesPanopticEvaluator,
    Seg2CityscapesSemSegEvaluator,
    build_cityscapes_evaluator,
    register_cityscapes,
)
from .coco import Seg2COCOEvaluator, evaluate_coco_files
from .offline import EvaluationInputError
from .panoptic import Seg2PanopticEvaluator, pq_compute_files
from .semantic import ConfusionMatrix, Seg2SemSegEvaluator, evaluate_semantic_folders, semantic_metrics

__all__ = [
    "build_evaluators",
    "ConfusionMatrix",
    "EvaluationInputError",
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
    "register_cityscapes",
    "semantic_metrics",
]
