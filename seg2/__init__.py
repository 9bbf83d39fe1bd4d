"""seg2: Detectron2 extension for semantic, instance and panoptic segmentation.

Importing seg2 registers its heads, backbones, meta-architectures and datasets.

Layers, each importing only those below it (the contract in ``.importlinter``): ``io`` and
``config`` -> ``structures``, ``capabilities`` -> ``data`` -> ``modeling`` -> ``evaluation`` ->
``utils`` (overlays, command-line plumbing) -> ``inference``, ``export`` -> ``engine``.
"""
import warnings

# Detectron2 (April 2024) calls torch.jit.script at import, which torch 2.14 deprecates
# loudly; the call works. Kept quiet while seg2 imports it, not for the rest of the process.
with warnings.catch_warnings():
    warnings.filterwarnings(
        "ignore", message="`torch.jit.script` is deprecated", category=FutureWarning
    )
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
    from . import data, modeling  # noqa: F401  (registration side effects)
from .config import add_seg2_config  # noqa: E402

__all__ = ["add_seg2_config"]

__version__ = "0.1.0"
