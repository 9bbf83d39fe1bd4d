"""Data, the ground floor: registration of every format (COCO instances, COCO panoptic,
semantic folders, Cityscapes; built-in synthetic and real samples), the one dataset mapper
and its augmentations, training targets (U-Net's weight map) and the synthetic generator.
Nothing here depends on the model or scoring layers above it; files are read through ``seg2.io``."""
from .dataset_mapper import Seg2DatasetMapper
from .datasets import register_from_config, register_synthetic
from .real import register_nuclei
from .solaris_sample import register_solaris_sample
from .voc_sample import register_voc_sample

# Built-in splits are registered on import (lazily: nothing is read until first use).
register_synthetic()
register_nuclei()
register_voc_sample()
register_solaris_sample()

__all__ = [
    "Seg2DatasetMapper",
    "register_from_config",
    "register_nuclei",
    "register_solaris_sample",
    "register_synthetic",
    "register_voc_sample",
]
