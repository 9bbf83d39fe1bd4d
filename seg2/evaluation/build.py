"""Which evaluators run: the dataset's ``evaluator_type`` says what ground truth exists, the
meta-architecture declares what the model predicts (``seg2.capabilities``); every task in both
gets its evaluator."""
import os
from typing import Callable, Dict, List, Optional, Set

from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator, DatasetEvaluators

from ..capabilities import model_capabilities

__all__ = ["build_evaluators", "model_tasks", "dataset_tasks"]

def model_tasks(cfg: CfgNode) -> Set[str]:
    """Output keys the configured model declares (``seg2.capabilities``)."""
    return set(model_capabilities(cfg).outputs)


def _coco(name: str, out: Optional[str], cfg: CfgNode) -> DatasetEvaluator:
    from .coco_evaluator import Seg2COCOEvaluator

    tasks = ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",)
    return Seg2COCOEvaluator(name, tasks=tasks, output_dir=out)


def _semantic(name: str, out: Optional[str], cfg: CfgNode) -> DatasetEvaluator:
    from .semantic_evaluator import Seg2SemSegEvaluator

    return Seg2SemSegEvaluator(name, output_dir=out)


def _boundary(name: str, out: Optional[str], cfg: CfgNode) -> DatasetEvaluator:
    from .boundary import Seg2BoundaryEvaluator

    return Seg2BoundaryEvaluator(name)


def _panoptic(name: str, out: Optional[str], cfg: CfgNode) -> DatasetEvaluator:
    from .panoptic import Seg2PanopticEvaluator

    return Seg2PanopticEvaluator(name, output_dir=out)


def _cityscapes(kind: str) -> Callable:
    def make(name: str, out: Optional[str], cfg: CfgNode) -> DatasetEvaluator:
        from .cityscapes_evaluators import build_cityscapes_evaluator

        return build_cityscapes_evaluator(kind, name, out)

    return make


# evaluator_type -> {task: evaluator factory}
_TABLE: Dict[str, Dict[str, Callable]] = {
    "coco": {"instances": _coco, "boxes": _coco},
    "sem_seg": {"sem_seg": _semantic},
    "coco_panoptic_seg": {
        "instances": _coco,
        "boxes": _coco,
        "sem_seg": _semantic,
        "panoptic_seg": _panoptic,
    },
    "cityscapes_instance": {"instances": _cityscapes("instance")},
    "cityscapes_sem_seg": {"sem_seg": _cityscapes("semantic")},
    "cityscapes_panoptic_seg": {
        "instances": _cityscapes("instance"),
        "sem_seg": _cityscapes("semantic"),
        "panoptic_seg": _cityscapes("panoptic"),
    },
}


def dataset_tasks(dataset_name: str) -> Dict[str, Callable]:
    meta = MetadataCatalog.get(dataset_name)
    etype = meta.get("evaluator_type", None)
    if etype not in _TABLE:
        raise KeyError(
            f"Dataset '{dataset_name}' has evaluator_type {etype!r}; seg2 knows {sorted(_TABLE)}"
        )
    table = dict(_TABLE[etype])
    if etype == "coco_panoptic_seg" and not meta.get("json_file", None):
        table.pop("instances"), table.pop("boxes")  # no instance GT to score against
    return table


def build_evaluators(
    cfg: CfgNode, dataset_name: str, output_folder: Optional[str] = None
) -> DatasetEvaluators:
    """Evaluators for every task the dataset has ground truth for and the model predicts.

    Args:
        cfg: the run's config.
        dataset_name: a registered test dataset.
        output_folder: where evaluators write predictions and figures
            (default ``OUTPUT_DIR/inference/<dataset_name>``).
    """
    output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    table = dataset_tasks(dataset_name)
    wanted = model_tasks(cfg)
    evaluators: List[DatasetEvaluator] = []
    made = set()
    for task, factory in table.items():
        if task in wanted and factory not in made:
            made.add(factory)
            evaluators.append(factory(dataset_name, output_folder, cfg))
    if cfg.TEST.SEG2.BOUNDARY_EVAL and table.get("sem_seg") is _semantic and "sem_seg" in wanted:
        evaluators.append(_boundary(dataset_name, output_folder, cfg))
    if not evaluators:
        raise ValueError(
            f"Nothing to evaluate: dataset '{dataset_name}' has {sorted(table)} ground truth, "
            f"model {cfg.MODEL.META_ARCHITECTURE} predicts {sorted(wanted)}"
        )
    return DatasetEvaluators(evaluators)
