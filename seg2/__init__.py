"""seg2: Detectron2 extension for semantic, instance and panoptic segmentation.

Importing seg2 registers its heads, backbones, meta-architectures and datasets.
"""
from . import data, modeling  # noqa: F401  (registration side effects)
from .config import add_seg2_config

__version__ = "0.1.0"
