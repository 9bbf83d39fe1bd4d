from .dataset_mapper import Seg2DatasetMapper
from .datasets import register_from_config, register_synthetic
from .real import register_nuclei

# Built-in splits are registered on import (lazily: nothing is read until first use).
register_synthetic()
register_nuclei()

__all__ = ["Seg2DatasetMapper", "register_from_config", "register_nuclei", "register_synthetic"]
