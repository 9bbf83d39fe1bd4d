"""What a meta-architecture outputs and needs from the data, declared once on its class.

A seg2 meta-architecture sets ``seg2_capabilities = ModelCapabilities(...)``; the dataset
mapper (which targets to build), the augmentations (which crop) and the evaluator builder
(which metrics) read it through :func:`model_capabilities` instead of keeping their own
tables of architecture names. Detectron2's own meta-architectures cannot carry the attribute,
so theirs are declared here, once.
"""
from dataclasses import dataclass, replace
from typing import FrozenSet

from detectron2.config import CfgNode
from detectron2.modeling import META_ARCH_REGISTRY

__all__ = ["ModelCapabilities", "model_capabilities"]


@dataclass(frozen=True)
class ModelCapabilities:
    """
    Attributes:
        outputs: Detectron2 output keys the model predicts in inference, a subset of
            ``{"instances", "sem_seg", "panoptic_seg"}``; ``"boxes"`` stands for instances
            without masks.
        instances: training needs ``instances`` targets (boxes, classes, masks).
        sem_seg: training needs ``sem_seg`` targets over all classes.
        category_area_crop: random crops keep one class from filling the crop
            (``INPUT.SEG2.CROP_SINGLE_CATEGORY_MAX_AREA``), the semantic recipe.
        pixel_weights: the model passes ``sem_seg_weights`` (U-Net's map) to its loss.
    """

    outputs: FrozenSet[str]
    instances: bool = False
    sem_seg: bool = False
    category_area_crop: bool = False
    pixel_weights: bool = False


SEMANTIC = ModelCapabilities(frozenset({"sem_seg"}), sem_seg=True, category_area_crop=True)

# Detectron2's meta-architectures (their classes cannot declare seg2's attribute).
# PanopticFPN's sem_seg merges all things into one class, so it is not scored as sem_seg.
_DETECTRON2 = {
    "GeneralizedRCNN": ModelCapabilities(frozenset({"instances"}), instances=True),
    "SemanticSegmentor": SEMANTIC,
    "PanopticFPN": ModelCapabilities(
        frozenset({"instances", "panoptic_seg"}), instances=True, sem_seg=True
    ),
}


def model_capabilities(cfg: CfgNode) -> ModelCapabilities:
    """The capabilities of ``cfg.MODEL.META_ARCHITECTURE`` under this config.

    Raises:
        KeyError: the architecture is neither registered with a ``seg2_capabilities``
            attribute nor one of Detectron2's known ones.
    """
    name = cfg.MODEL.META_ARCHITECTURE
    caps = _DETECTRON2.get(name)
    if caps is None:
        caps = getattr(META_ARCH_REGISTRY.get(name), "seg2_capabilities", None)
    if caps is None:
        raise KeyError(
            f"MODEL.META_ARCHITECTURE {name!r} declares no seg2_capabilities "
            "(set the class attribute to a seg2.capabilities.ModelCapabilities)"
        )
    if "instances" in caps.outputs and not cfg.MODEL.MASK_ON:
        caps = replace(caps, outputs=(caps.outputs - {"instances"}) | {"boxes"})
    return caps
