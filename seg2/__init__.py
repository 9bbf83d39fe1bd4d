"""seg2: Detectron2 extension for semantic, instance and panoptic segmentation.

Importing seg2 registers its heads, backbones, meta-architectures and datasets.

Layers, each importing only those below it (the contract in ``.importlinter``): ``io`` and
``config`` -> ``structures``, ``capabilities`` -> ``data`` -> ``modeling`` -> ``evaluation`` ->
``utils`` (overlays, command-line plumbing) -> ``inference``, ``export`` -> ``engine``.
"""
import warnings

# Detectron2 (April 2024) still calls torch.jit.script, which torch 2.14 deprecates loudly at
# import time; the call works, so keep the noise out of users' logs.
warnings.filterwarnings(
    "ignore", message="`torch.jit.script` is deprecated", category=FutureWarning
)
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)

from . import data, modeling  # noqa: E402,F401  (registration side effects)
from .config import add_seg2_config  # noqa: E402

__all__ = ["add_seg2_config"]

__version__ = "0.1.0"
