"""Semantic heads, registered in Detectron2's ``SEM_SEG_HEADS_REGISTRY`` on import."""

from .base import BaseSemSegHead, crop_or_pad
from .deconvnet import DeconvNetSemSegHead
from .fcn import FCNSemSegHead
from .unet import UNetSemSegHead, center_crop

__all__ = [
    "BaseSemSegHead",
    "FCNSemSegHead",
    "UNetSemSegHead",
    "DeconvNetSemSegHead",
    "crop_or_pad",
    "center_crop",
]
