"""seg2: Detectron2 extension for semantic, instance and panoptic segmentation.

Importing seg2 registers its heads, backbones, meta-architectures and datasets.

Layers, each importing only those before it: ``structures`` (panoptic id conventions,
instance maps) -> ``io`` (every file read/written, one ``InputError``) -> ``config``,
``capabilities`` (what a meta-architecture outputs and needs) -> ``data`` -> ``modeling`` ->
``evaluation`` -> ``engine``; ``utils`` holds the command-line helpers and overlays.
"""
import warnings

# Detectron2 (April 2024) still calls torch.jit.script, which torch 2.14 deprecates loudly at
# import time; the call works, so keep the noise out of users' logs.
warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)

from . import data, modeling  # noqa: E402,F401  (registration side effects)
from .config import add_seg2_config  # noqa: E402

__version__ = "0.1.0"
