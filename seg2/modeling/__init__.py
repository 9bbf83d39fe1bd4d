"""Importing this package registers seg2's heads, backbones, meta-architectures and ops."""
from . import fusion, meta_arch_panoptic  # noqa: F401
from .fusion import FUSION_REGISTRY, build_fusion
from .meta_arch_panoptic import Seg2PanopticRCNN

__all__ = ["FUSION_REGISTRY", "build_fusion", "Seg2PanopticRCNN"]
