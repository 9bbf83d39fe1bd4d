from .dataset_mapper import Seg2DatasetMapper
from .datasets import register_from_config, register_synthetic

# Built-in splits are registered on import (lazily: nothing is read until first use).
register_synthetic()

__all__ = ["Seg2DatasetMapper", "register_from_config", "register_synthetic"]
