"""Models: semantic heads, the upsampling-op registry, losses, meta-architectures (each
declaring its ``seg2_capabilities``) and things/stuff fusion. Importing this package
registers seg2's heads, backbones, meta-architectures and ops."""
from . import (  # noqa: F401
    backbone,
    fusion,
    losses,
    meta_arch_panoptic,
    meta_arch_semantic,
    sem_seg,
    sliding_window,
    upsample,
)
from .fusion import FUSION_REGISTRY, build_fusion
from .meta_arch_panoptic import Seg2PanopticRCNN
from .meta_arch_semantic import Seg2SemanticSegmentor
from .sliding_window import SlidingWindowSegmentor
from .upsample import UPSAMPLE_REGISTRY, build_upsample

__all__ = [
    "FUSION_REGISTRY",
    "build_fusion",
    "Seg2PanopticRCNN",
    "Seg2SemanticSegmentor",
    "SlidingWindowSegmentor",
    "UPSAMPLE_REGISTRY",
    "build_upsample",
]
