"""seg2's backbones, registered in Detectron2's ``BACKBONE_REGISTRY`` on import."""

from .unet import UNetEncoder, build_unet_backbone

__all__ = ["UNetEncoder", "build_unet_backbone"]
